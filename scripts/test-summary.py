#!/usr/bin/env python3
"""Count test cases over meson's test logs: each TAP line of a TAP test,
one case per test otherwise. Prints 'N passed, N failed, N skipped'."""
import glob
import json
import os
import re
import sys

passed = failed = skipped = 0
for d in sys.argv[1:]:
    logs = glob.glob(os.path.join(d, "meson-logs", "testlog*.json"))
    if not logs:
        failed += 1  # a build that produced no test log failed to build
        continue
    # one testlog-<setup>.json per test setup, each the last run of it
    for line in (l for log in logs for l in open(log)):
        t = json.loads(line)
        res = t.get("result")
        out = t.get("stdout") or ""
        tap = [l for l in out.splitlines() if re.match(r"^(not )?ok\b", l)]
        if tap and res != "TIMEOUT":
            for l in tap:
                if re.search(r"#\s*(SKIP|TODO)", l, re.I):
                    skipped += 1  # skipped, or a known bug marked expected-failure
                elif l.startswith("ok"):
                    passed += 1
                else:
                    failed += 1
            if res not in ("OK", "SKIP") and not any(l.startswith("not ok") for l in tap):
                failed += 1  # crashed after its last ok line, or bad plan
        elif res == "OK":
            passed += 1
        elif res == "SKIP":
            skipped += 1
        else:
            failed += 1
print("%d passed, %d failed, %d skipped" % (passed, failed, skipped))
sys.exit(1 if failed or passed == 0 else 0)
