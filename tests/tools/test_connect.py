#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""`mqtt-edge-bridge-doctor connect` against a small TLS MQTT server
(Python ssl, i.e. OpenSSL, mutual TLS): handshake, version, suite, 512-byte
fragments, session resumption, CONNACK, and exit status. The same command
runs against the bridge's listener once the daemon lands."""

import os
import socket
import ssl
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import toolslib as T  # noqa: E402

DUAL = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment",
        "extendedKeyUsage=serverAuth", "subjectAltName=IP:127.0.0.1,DNS:127.0.0.1,DNS:raspberry"]


class MiniBroker(threading.Thread):
    """Accepts TLS connections one at a time, answers CONNECT with CONNACK
    `rc`, records what it saw. Every socket operation has a timeout and the
    loop ends when stop() is called."""

    def __init__(self, cert, key, client_ca, rc=0):
        super().__init__(daemon=True)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.ctx.load_verify_locations(client_ca)
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.rc = rc
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopping = threading.Event()
        self.client_ids = []
        self.reused = []
        self.start()

    @staticmethod
    def read_exact(s, n):
        buf = b""
        while len(buf) < n:
            chunk = s.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    def serve_one(self, conn):
        conn.settimeout(5)
        try:
            tls = self.ctx.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            conn.close()
            return
        with tls:
            self.reused.append(tls.session_reused)
            try:
                hdr = self.read_exact(tls, 2)
                if hdr[0] != 0x10:
                    return
                rem, mult, b = 0, 1, hdr[1]
                for _ in range(4):              # §2.2.3: at most 4 bytes
                    rem += (b & 0x7f) * mult
                    if not b & 0x80:
                        break
                    mult *= 128
                    b = self.read_exact(tls, 1)[0]
                body = self.read_exact(tls, rem)
                cid_len = int.from_bytes(body[10:12], "big")
                self.client_ids.append(body[12:12 + cid_len].decode())
                tls.sendall(bytes([0x20, 0x02, 0x00, self.rc]))
                self.read_exact(tls, 2)         # DISCONNECT, or EOF
            except (EOFError, OSError, ssl.SSLError):
                pass
            # Without a clean SSL_shutdown OpenSSL drops the session from
            # its cache (ssl_clear_bad_session), and nothing could resume.
            try:
                tls.unwrap()
            except (OSError, ssl.SSLError, ValueError):
                pass

    def run(self):
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            self.serve_one(conn)

    def stop(self):
        self.stopping.set()
        self.join(timeout=10)
        self.sock.close()


class Connect(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        p = cls.pki = T.Pki()
        p.ca("ca", "Test CA")
        p.ca("other", "Other CA")
        p.leaf("server", "ca", "raspberry", DUAL)
        p.leaf("dev", "ca", "sensor-1", ["extendedKeyUsage=clientAuth"])

    @classmethod
    def tearDownClass(cls):
        cls.pki.cleanup()

    def broker(self, rc=0):
        b = MiniBroker(self.pki.path("server.crt"), self.pki.path("server.key"), self.pki.path("ca.crt"), rc)
        self.addCleanup(b.stop)
        return b

    def connect(self, port, *extra, ca="ca"):
        return T.doctor_json(["connect", "127.0.0.1:%d" % port, "--ca", self.pki.path(ca + ".crt"),
                              "--cert", self.pki.path("dev.crt"), "--key", self.pki.path("dev.key"),
                              "--timeout", "10"] + list(extra))

    def test_device_succeeds(self):
        b = self.broker()
        rc, j = self.connect(b.port)
        self.assertEqual(rc, 0, j)
        self.assertTrue(j["device_ok"])
        self.assertEqual(j["handshake"]["error"], "OK")
        self.assertEqual(j["version"], "TLS 1.2")
        self.assertTrue(j["suite"])
        self.assertTrue(j["mfl"]["accepted"], j)
        self.assertTrue(j["resumption"]["tried"])
        self.assertTrue(j["resumption"]["resumed"], j)
        self.assertEqual(j["mqtt"]["connack"], 0)
        self.assertEqual(b.client_ids, ["sensor-1"])
        # The broker thread records the second handshake after the doctor
        # may already have returned: wait for it (bounded).
        deadline = time.monotonic() + 10
        while len(b.reused) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertEqual(b.reused[:2], [False, True])

    def test_by_name(self):
        b = self.broker()
        rc, j = self.connect(b.port, "--name", "raspberry", "--client-id", "probe-x", "--no-resume")
        self.assertEqual(rc, 0, j)
        self.assertFalse(j["resumption"]["tried"])
        self.assertEqual(b.client_ids, ["probe-x"])

    def test_connack_refused(self):
        b = self.broker(rc=5)
        rc, j = self.connect(b.port)
        self.assertEqual(rc, 1)
        self.assertEqual(j["mqtt"]["connack"], 5)
        self.assertTrue(j["handshake"]["ok"])
        self.assertFalse(j["device_ok"])

    def test_wrong_ca(self):
        b = self.broker()
        rc, j = self.connect(b.port, ca="other")
        self.assertEqual(rc, 1)
        self.assertEqual(j["handshake"]["code"], 62)
        self.assertEqual(j["handshake"]["error"], "BR_ERR_X509_NOT_TRUSTED")

    def test_wrong_name(self):
        b = self.broker()
        rc, j = self.connect(b.port, "--name", "elsewhere")
        self.assertEqual(rc, 1)
        self.assertEqual(j["handshake"]["code"], 56)

    def test_tls_only_text(self):
        b = self.broker()
        p = T.run([T.DOCTOR, "connect", "127.0.0.1:%d" % b.port, "--ca", self.pki.path("ca.crt"),
                   "--cert", self.pki.path("dev.crt"), "--key", self.pki.path("dev.key"), "--tls-only"])
        self.assertIn("TLS handshake: OK", p.stdout)
        self.assertIn("512-byte fragments (RFC 6066): accepted", p.stdout)
        self.assertIn("session resumption: yes", p.stdout)
        self.assertNotIn("CONNACK", p.stdout)
        self.assertEqual(b.client_ids, [])

    def test_nothing_listening(self):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()                               # a port nobody listens on
        rc, j = self.connect(port)
        self.assertEqual(rc, 1)
        self.assertFalse(j["tcp"]["ok"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
