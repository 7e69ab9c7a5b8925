"""Run one unittest module and report in TAP, one line per test case.

meson's TAP protocol then sees every case, and scripts/test.sh counts
them: `python3 tap_runner.py path/to/test_x.py [-k pattern]`.
"""

import importlib.util
import os
import sys
import time
import traceback
import unittest


class TapResult(unittest.TestResult):
    def __init__(self):
        super().__init__()
        self.n = 0

    def _line(self, ok, test, directive="", err=None):
        self.n += 1
        name = test.id() if hasattr(test, "id") else str(test)
        print("%s %d - %s%s" % ("ok" if ok else "not ok", self.n, name, directive), flush=True)
        if err:
            for line in self._exc_info_to_string(err, test).splitlines():
                print("# " + line, flush=True)

    def startTest(self, test):
        super().startTest(test)
        self._t0 = time.monotonic()
        print("# running %s" % test.id(), flush=True)

    def addSuccess(self, test):
        super().addSuccess(test)
        self._line(True, test, " # %.1fs" % (time.monotonic() - self._t0))

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._line(False, test, err=err)

    def addError(self, test, err):
        super().addError(test, err)
        self._line(False, test, err=err)

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._line(True, test, " # SKIP %s" % reason)

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        # TAP: a failing TODO test is "not ok # TODO" (meson: expected fail)
        self._line(False, test, " # TODO expected failure")

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._line(False, test, " # unexpected success")


def main():
    # MEB_EXEC_WRAPPER (qemu-user for a cross build) for every test module,
    # including those that do not use harness.py.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import exec_wrapper  # noqa: F401
    path = sys.argv[1]
    pattern = sys.argv[3] if len(sys.argv) > 3 and sys.argv[2] == "-k" else None
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    loader = unittest.TestLoader()
    if pattern:
        loader.testNamePatterns = ["*%s*" % pattern]
    suite = loader.loadTestsFromModule(mod)
    result = TapResult()
    try:
        suite.run(result)
    except Exception:  # a harness crash is a failed test, not a silent one
        result.n += 1
        print("not ok %d - harness" % result.n)
        for line in traceback.format_exc().splitlines():
            print("# " + line)
        result.errors.append((None, "harness"))
    print("1..%d" % result.n, flush=True)
    sys.exit(0 if result.wasSuccessful() and result.n > 0 else 1)


if __name__ == "__main__":
    main()
