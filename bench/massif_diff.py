#!/usr/bin/env python3
"""Heap per idle session by allocation site, from two massif snapshots.

Run the bridge under massif, take a detailed snapshot before and after N
idle sessions connect, and diff them:

  valgrind --tool=massif --threshold=0 --depth=40 mqtt-edge-bridge --config ...
  vgdb --pid=PID detailed_snapshot before.ms
  bench-loadgen idle --n 1000 ...          # wait for READY, then a few s
  vgdb --pid=PID detailed_snapshot after.ms
  bench/massif_diff.py before.ms after.ms 1000 [--by site] [--show TEXT]

Prints bytes per session by group (bench/README.md, "Memory per idle
session"), or by finer category with --by site; --show TEXT lists the
allocation stacks of the categories containing TEXT. A stack is told
apart by the daemon's own frames (session side or uplink side), then by
the OpenSSL, libsystemd and daemon functions on it. Release builds do
not inline the event handlers, so their names are there; OpenSSL's
internal functions show as ??? without debug symbols, the exported ones
by name.
"""
import argparse
import re
from collections import defaultdict

NODE = re.compile(r"^( *)n(\d+): (\d+) (.*)$")


def parse(path):
    """({allocation stack: bytes}, heap bytes, massif's extra bytes)."""
    leaves = defaultdict(int)
    heap = extra = 0
    stack = []
    with open(path) as f:
        for line in f:
            if line.startswith("mem_heap_B="):
                heap = int(line.split("=")[1])
            elif line.startswith("mem_heap_extra_B="):
                extra = int(line.split("=")[1])
            m = NODE.match(line.rstrip("\n"))
            if not m:
                continue
            depth, nkids, nbytes, rest = len(m[1]), int(m[2]), int(m[3]), m[4]
            del stack[depth:]
            if depth == 0:
                stack.append("ROOT")
                continue
            mm = re.match(r"0x([0-9A-F]+): (.*)$", rest)
            frame = ("%s@%s" % (re.sub(r" \(in .*/([^/]+)\)$", r" [\1]", mm[2]), mm[1])) if mm else rest
            stack.append(frame)
            if nkids == 0:
                leaves[tuple(stack[1:])] += nbytes
    return leaves, heap, extra


def fname(frame):
    return frame.split("@")[0]


PEER_CERT = ("d2i_X509", "X509_new", "d2i_X509_AUX", "ASN1_item_d2i", "X509_PUBKEY_get0", "X509_PUBKEY_get",
             "X509_get0_pubkey", "X509_get_pubkey", "d2i_PUBKEY", "X509_check_purpose", "X509_up_ref",
             "ASN1_item_d2i_ex", "X509_new_ex", "OSSL_DECODER_from_data", "d2i_EC_PUBKEY", "d2i_RSA_PUBKEY",
             "EVP_PKEY_new", "ASN1_item_ex_d2i", "ASN1_item_new_ex")
CIPHER = ("EVP_CipherInit_ex", "EVP_CIPHER_CTX_new", "EVP_MD_CTX_new", "EVP_DigestInit_ex", "EVP_MAC_CTX_new",
          "EVP_MAC_init", "EVP_EncryptInit_ex", "EVP_DecryptInit_ex", "EVP_CIPHER_CTX_copy")


def category(path):
    names = [fname(f) for f in path]  # innermost first
    ours = [n.split(" ")[0] for n in names if "[mqtt-edge-bridge" in n or "[bridge" in n]
    if len(ours) > 1 and ours[0].startswith("bytebuf"):
        ours = ours[1:]                     # a buffer: whose it is
    up = bool(ours) and (ours[0].startswith(("uplink", "tls_conn_init_client")) or
                         (ours[0].startswith("tls_conn") and len(ours) > 1 and ours[1].startswith("uplink")))
    side = "up" if up else "dev"

    def has(*fs):
        return any(any(n.startswith(f + " ") for n in names) for f in fs)

    if has("SSL_new", "CRYPTO_set_ex_data", "SSL_set_fd"):
        return side + ": SSL_new"
    if has("SSL_do_handshake", "SSL_read_ex", "SSL_write_ex", "SSL_shutdown") or \
            any(o.startswith("tls_conn_handshake") for o in ours):
        if has(*PEER_CERT):
            return side + ": peer certificate"
        if has("X509_verify_cert", "X509_STORE_CTX_new", "X509_STORE_CTX_get1_chain"):
            return side + ": chain verification"
        if has("SSL_SESSION_new", "SSL_CTX_add_session"):
            return side + ": SSL_SESSION"
        if has(*CIPHER):
            return side + ": cipher contexts"
        if has("BUF_MEM_grow", "BUF_MEM_new", "BUF_MEM_grow_clean"):
            return side + ": handshake buffer"
        return side + ": other TLS state"
    if has("sd_event_add_io", "sd_event_add_time", "sd_event_add_defer", "sd_event_add_time_relative"):
        return "sd-event sources"
    if ours and ours[0].startswith(("uplink_connect", "uplink_on_connect")):
        return "up: uplink struct and buffers"
    if ours and ours[0].startswith("tls_conn_init"):
        return side + ": SSL_new"           # the socket BIO and ex_data
    if ours:
        return side + ": " + ours[0]
    return "other: " + " | ".join(names[:3])


GROUPS = [
    ("SSL object (SSL_new, its BIO, ex_data)", lambda c: c == "dev: SSL_new"),
    ("handshake: peer certificate (parsed, with its key)", lambda c: c == "dev: peer certificate"),
    ("handshake: SSL_SESSION", lambda c: c == "dev: SSL_SESSION"),
    ("handshake: the rest kept in the SSL", lambda c: c in ("dev: other TLS state", "dev: handshake buffer",
                                                           "dev: chain verification")),
    ("cipher contexts", lambda c: c == "dev: cipher contexts"),
    ("struct session", lambda c: c == "dev: session_new"),
    ("session: outbox, spool path, ids, credentials", lambda c: c.startswith("dev: ") and c[5:].startswith(
        ("outbox", "spool", "policy", "session_", "inventory"))),
    ("sd-event sources (session 4, uplink 3)", lambda c: c == "sd-event sources"),
    ("uplink struct and its buffers", lambda c: c == "up: uplink struct and buffers"),
    ("upstream TLS: SSL object", lambda c: c == "up: SSL_new"),
    ("upstream TLS: broker certificate (parsed)", lambda c: c in ("up: peer certificate", "up: chain verification")),
    ("upstream TLS: cipher contexts", lambda c: c == "up: cipher contexts"),
    ("upstream TLS: the rest (session, ticket, buffers)", lambda c: c.startswith("up: ")),
    ("other", lambda c: True),
]


def group(c):
    for name, match in GROUPS:
        if match(c):
            return name


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("sessions", type=int)
    ap.add_argument("--by", choices=("group", "site"), default="group")
    ap.add_argument("--show", metavar="TEXT", help="list the stacks of the categories containing TEXT")
    o = ap.parse_args()
    n = max(1, o.sessions)
    la, ha, ea = parse(o.before)
    lb, hb, eb = parse(o.after)
    sums = defaultdict(int)
    stacks = defaultdict(int)
    for p in set(la) | set(lb):
        d = lb.get(p, 0) - la.get(p, 0)
        if d:
            c = category(p)
            k = c if o.by == "site" else group(c)
            sums[k] += d
            stacks[(c, p)] += d
    keys = sorted(sums, key=lambda k: -sums[k]) if o.by == "site" else [g for g, _ in GROUPS if g in sums]
    for k in keys:
        print("%9.0f  %s" % (sums[k] / n, k))
    print("%9.0f  heap, total" % ((hb - ha) / n))
    print("%9.0f  malloc overhead as massif counts it (8 bytes a block, alignment)" % ((eb - ea) / n))
    if o.show:
        for (c, p), d in sorted(stacks.items(), key=lambda x: -x[1]):
            if o.show in c and d / n >= 1:
                print("%8.0f  %s: %s" % (d / n, c, " <- ".join(fname(f) for f in p[:14])))


if __name__ == "__main__":
    main()
