# SPDX-License-Identifier: MIT
"""Helpers for the tools tests: a throw-away PKI made with the openssl CLI
(independent of mqtt-edge-bridge-certs), openssl s_server on a free port,
and running the two tools. Python 3 stdlib only."""

import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time

BUILD_DIR = os.environ.get("BUILD_DIR", "")
CERTS = os.environ.get("CERTS") or os.path.join(BUILD_DIR, "tools", "mqtt-edge-bridge-certs")
DOCTOR = os.environ.get("DOCTOR") or os.path.join(BUILD_DIR, "tools", "mqtt-edge-bridge-doctor")
OPENSSL = shutil.which("openssl") or "openssl"

# Every wait in these tests is bounded by one of these.
SERVER_START_TIMEOUT = 10.0
TOOL_TIMEOUT = 60


def run(cmd, cwd=None, check=True, timeout=TOOL_TIMEOUT):
    p = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError("%s failed (%d):\n%s%s" % (" ".join(cmd), p.returncode, p.stdout, p.stderr))
    return p


def doctor_json(args, cwd=None):
    p = run([DOCTOR] + args + ["--json"], cwd=cwd, check=False)
    if p.returncode not in (0, 1):
        raise AssertionError("doctor %s exited %d:\n%s%s" % (args, p.returncode, p.stdout, p.stderr))
    return p.returncode, json.loads(p.stdout)


class Pki:
    """Certificates in a temporary folder, made with the openssl CLI."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="meb-tools-")

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def path(self, name):
        return os.path.join(self.dir, name)

    def _openssl(self, *args):
        run([OPENSSL] + list(args), cwd=self.dir)

    def key(self, name, ec=False, bits=2048):
        if ec:
            self._openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                          "-out", name + ".key")
        else:
            self._openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:%d" % bits,
                          "-out", name + ".key")
        return self.path(name + ".key")

    def ca(self, name, cn, ec=False, v1=False, ext=None):
        """A self-signed CA: v3 with basicConstraints critical CA:TRUE, or a
        v1 CA (no extensions at all) as `openssl x509 -req -signkey` makes it."""
        self.key(name, ec=ec)
        if v1:
            self._openssl("req", "-new", "-key", name + ".key", "-subj", "/CN=" + cn, "-out", name + ".csr")
            self._openssl("x509", "-req", "-in", name + ".csr", "-signkey", name + ".key",
                          "-days", "30", "-out", name + ".crt")
        else:
            self._openssl("req", "-x509", "-new", "-key", name + ".key", "-subj", "/CN=" + cn,
                          "-days", "30", "-out", name + ".crt",
                          "-addext", ext or "basicConstraints=critical,CA:TRUE",
                          "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        return self.path(name + ".crt")

    def leaf(self, name, ca, cn, ext_lines, ec=False, bits=2048, startdate=None, enddate=None):
        """A certificate signed by CA `ca` (file stem) with the given
        extension lines. startdate/enddate (YYYYMMDDHHMMSSZ) go through
        `openssl ca`, the only 3.0 command that backdates."""
        self.key(name, ec=ec, bits=bits)
        self._openssl("req", "-new", "-key", name + ".key", "-subj", "/CN=" + cn, "-out", name + ".csr")
        with open(self.path(name + ".ext"), "w") as f:
            f.write("[ext]\n" + "\n".join(ext_lines) + "\n")
        if startdate is None:
            self._openssl("x509", "-req", "-in", name + ".csr", "-CA", ca + ".crt", "-CAkey", ca + ".key",
                          "-set_serial", str(int(time.time() * 1000) % 10**12 + len(name)),
                          "-days", "10", "-out", name + ".crt", "-extfile", name + ".ext", "-extensions", "ext")
        else:
            db = self.path(name + "-db")
            os.makedirs(db, exist_ok=True)
            open(os.path.join(db, "index.txt"), "w").close()
            with open(os.path.join(db, "serial"), "w") as f:
                f.write("1000\n")
            with open(self.path(name + "-ca.cnf"), "w") as f:
                f.write("[ca]\ndefault_ca = d\n[d]\ndatabase = %s/index.txt\nnew_certs_dir = %s\n"
                        "serial = %s/serial\ndefault_md = sha256\npolicy = p\nunique_subject = no\n"
                        "[p]\ncommonName = supplied\n" % (db, db, db))
            self._openssl("ca", "-batch", "-config", name + "-ca.cnf", "-cert", ca + ".crt",
                          "-keyfile", ca + ".key", "-in", name + ".csr", "-out", name + ".crt",
                          "-startdate", startdate, "-enddate", enddate, "-notext",
                          "-extfile", name + ".ext", "-extensions", "ext")
        return self.path(name + ".crt")


class SServer:
    """openssl s_server on 127.0.0.1, port chosen by the kernel (port 0),
    requiring a client certificate like the bridge. Context manager; the
    process is always killed."""

    def __init__(self, pki, cert, key, client_ca, chain=None):
        self.log = open(pki.path("s_server-%d.log" % id(self)), "w+")
        cmd = [OPENSSL, "s_server", "-accept", "127.0.0.1:0", "-cert", cert, "-key", key,
               "-CAfile", client_ca, "-Verify", "1"]
        if chain:
            cmd += ["-cert_chain", chain]
        # stdin stays open: s_server quits at EOF on stdin.
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=self.log, stderr=subprocess.STDOUT)
        self.port = None
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline and self.port is None:
            if self.proc.poll() is not None:
                break
            self.log.seek(0)
            for line in self.log.read().splitlines():
                if line.startswith("ACCEPT ") and ":" in line:
                    self.port = int(line.rsplit(":", 1)[1])
            time.sleep(0.05)
        if self.port is None:
            self.close()
            raise AssertionError("openssl s_server did not start")

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        if self.proc.stdin:
            self.proc.stdin.close()
        self.log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def openssl_client_verdict(port, ca, cert, key, name):
    """What a real OpenSSL client (Python's ssl) says: ("ok", 0) or
    (word, X509_V_ERR code) from SSLCertVerificationError."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca)
    ctx.load_cert_chain(cert, key)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            with ctx.wrap_socket(sock, server_hostname=name):
                return ("ok", 0)
        except ssl.SSLCertVerificationError as e:
            code = e.verify_code
            word = {62: "mismatch", 64: "mismatch", 10: "expired", 9: "not-yet-valid"}.get(code, "untrusted")
            return (word, code)
