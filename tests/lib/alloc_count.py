"""Read the counters of tests/lib/alloc_count.c (an LD_PRELOAD allocation
counter) from outside the counted process, at any moment.

    env = dict(os.environ, LD_PRELOAD=lib, ALLOC_COUNT_FILE=path)
    ... start the process with env, do things ...
    before = read_counts(path); ...; after = read_counts(path)
    delta(before, after)["allocs"]

The layout (version 2) is documented in alloc_count.c: native-endian
uint64_t fields at fixed offsets after the 8-byte magic "ALLOCCNT".
"""

import os
import struct

MAGIC = b"ALLOCCNT"
FIELDS = ("version", "pid", "allocs", "frees", "bytes", "mallocs", "callocs", "reallocs", "memaligns",
          "tls_allocs")
_FMT = "=8s%dQ" % len(FIELDS)
_SIZE = struct.calcsize(_FMT)


def lib_path(build_dir):
    """Where meson puts the module in a build directory."""
    return os.path.join(build_dir, "tests", "lib", "alloc_count.so")


def read_counts(path):
    """{field: int} of the counter file; raises ValueError if the file is
    not (yet) set up by the library."""
    with open(path, "rb") as f:
        data = f.read(_SIZE)
    if len(data) < _SIZE or data[:8] != MAGIC:
        raise ValueError("%s: not an alloc_count file (yet)" % path)
    vals = struct.unpack(_FMT, data)
    out = dict(zip(FIELDS, vals[1:]))
    if out["version"] != 2:
        raise ValueError("%s: alloc_count layout version %d, this reader knows 2" % (path, out["version"]))
    return out


def delta(before, after):
    """after - before for every counter (version and pid kept from after)."""
    return {k: (after[k] if k in ("version", "pid") else after[k] - before[k]) for k in FIELDS}


def preload_env(lib, path, base=None):
    """An environment that loads the counter into a child and names its file."""
    env = dict(os.environ if base is None else base)
    env["LD_PRELOAD"] = (lib + " " + env["LD_PRELOAD"]) if env.get("LD_PRELOAD") else lib
    env["ALLOC_COUNT_FILE"] = path
    return env
