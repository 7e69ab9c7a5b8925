"""Run the project's binaries of another CPU architecture under an emulator.

MEB_EXEC_WRAPPER is a command prefix, e.g. "qemu-aarch64-static" (called
directly: binfmt_misc is not available on the CI machines). Once this
module is imported, every process a test starts through subprocess (Popen,
run, check_output...) whose program is an ELF file for another machine
than this Python gets the prefix; native programs (mosquitto, openssl, a
prefix already given) start as they are. tests/lib/harness.py and
tests/lib/tap_runner.py import it, so the integration, tools, systemd and
firmware suites all see it without each test knowing.

Unset or empty: nothing changes.
"""

import os
import shlex
import shutil
import subprocess

EXEC_WRAPPER = shlex.split(os.environ.get("MEB_EXEC_WRAPPER", ""))
# Waits in the harness get this much longer (they still end as soon as
# their condition holds): emulated TLS and fork are several times slower.
TIMEOUT_SCALE = float(os.environ.get("MEB_TIMEOUT_SCALE") or (3 if EXEC_WRAPPER else 1))


def _elf_machine(path):
    """e_machine of an ELF file (ELF header, offset 18), None otherwise."""
    try:
        with open(path, "rb") as f:
            h = f.read(20)
    except OSError:
        return None
    if len(h) < 20 or h[:4] != b"\x7fELF":
        return None
    return int.from_bytes(h[18:20], "little" if h[5] == 1 else "big")


_NATIVE = _elf_machine("/proc/self/exe")


def wrap_argv(argv):
    """argv with the wrapper in front if argv[0] is a foreign ELF binary."""
    if not EXEC_WRAPPER or isinstance(argv, (str, bytes)) or not argv:
        return argv
    argv = list(argv)
    prog = os.fspath(argv[0])
    path = prog if os.sep in prog else (shutil.which(prog) or prog)
    machine = _elf_machine(path)
    if machine is None or machine == _NATIVE:
        return argv
    return EXEC_WRAPPER + argv


class _WrappedPopen(subprocess.Popen):
    def __init__(self, args, *rest, **kwargs):
        if kwargs.get("executable") is None and not kwargs.get("shell"):
            args = wrap_argv(args)
        super().__init__(args, *rest, **kwargs)


if EXEC_WRAPPER and subprocess.Popen.__name__ != "_WrappedPopen":
    # subprocess.run() and friends look Popen up in the module at call time.
    subprocess.Popen = _WrappedPopen
