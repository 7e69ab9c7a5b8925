"""Bad input costs the sender only: rejected devices are logged with their
address, certificate subject and reason, and a good device keeps working."""

import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from harness import (BRIDGE_BIN, Bridge, BridgeTestCase, Device, Mosquitto,  # noqa: E402
                     TestPki, wait_for)


class TestRejectedDevices(BridgeTestCase):
    def good_device_still_works(self, tag):
        sub = self.mosquitto.sub("alive/" + tag, 1)
        r = self.device("sensor-3").run(*self.creds("sensor-3"), "--pub", "alive/%s=ok" % tag,
                                        "--qos", "1")
        self.assertEqual(r.rc, 0, r)
        self.assertEqual(sub.result(), ["alive/%s ok" % tag])
        self.assertBridgeAlive()

    def test_no_client_certificate(self):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_verify_locations(self.pki.ca.ca_crt)
        ctx.check_hostname = False
        with socket.create_connection(("127.0.0.1", self.bridge.port), timeout=5) as raw:
            with self.assertRaises((ssl.SSLError, ConnectionError)):
                with ctx.wrap_socket(raw) as s:
                    s.recv(1)
        self.bridge.wait_log(r'TLS handshake failed.*reason="[^"]*(certificate|no client)')
        self.good_device_still_works("nocert")

    def test_certificate_from_another_ca(self):
        d = Device(self.pki, "intruder", self.bridge.port, cert=self.pki.foreign_device("intruder"))
        r = d.run("--timeout", "5")
        self.assertNotEqual(r.rc, 0, r)
        self.bridge.wait_log(r'TLS handshake failed.*cn="[^"]*intruder[^"]*".*reason="[^"]*(issuer|unable)')
        self.good_device_still_works("otherca")

    def test_expired_certificate(self):
        cert = self.pki.device("sensor-old", startdate="20200101000000Z", enddate="20200201000000Z")
        d = Device(self.pki, "sensor-old", self.bridge.port, cert=cert)
        r = d.run("--timeout", "5")
        self.assertNotEqual(r.rc, 0, r)
        self.bridge.wait_log(r'TLS handshake failed.*cn="[^"]*sensor-old[^"]*".*reason="certificate has expired"')
        self.good_device_still_works("expired")

    def test_plain_tcp_to_tls_port(self):
        with socket.create_connection(("127.0.0.1", self.bridge.port), timeout=5) as s:
            # An MQTT CONNECT in clear text.
            s.sendall(bytes([0x10, 0x0c, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 60, 0, 0]))
            s.settimeout(5)
            try:
                data = s.recv(100)
            except ConnectionError:
                data = b""
            # no MQTT answer: at most a TLS alert (content type 21)
            self.assertTrue(data == b"" or data[0] == 21, data)
        self.bridge.wait_log(r"TLS handshake failed")
        self.good_device_still_works("plain")

    def test_handshake_never_finished(self):
        s = socket.create_connection(("127.0.0.1", self.bridge.port), timeout=10)
        try:
            s.sendall(b"\x16\x03\x01")  # the start of a record, then nothing
            t0 = time.monotonic()
            s.settimeout(10)
            try:
                data = s.recv(100)
            except ConnectionError:
                data = b""
            self.assertEqual(data, b"")
            # handshake_timeout = 3 in the harness
            self.assertLess(time.monotonic() - t0, 8)
        finally:
            s.close()
        self.bridge.wait_log(r"TLS handshake timeout")
        self.good_device_still_works("slow")

    def test_garbage_after_connect_closes_only_that_device(self):
        # A device sending QoS 3 is disconnected; another keeps working.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(self.pki.ca.ca_crt)
        ctx.check_hostname = False
        crt, key = self.pki.device("sensor-1")
        ctx.load_cert_chain(crt, key)
        with socket.create_connection(("127.0.0.1", self.bridge.port), timeout=5) as raw:
            with ctx.wrap_socket(raw) as s:
                cid = b"sensor-1"
                user, pw = b"sensor-1", self.users["sensor-1"].encode()
                var = b"\x00\x04MQTT\x04\xc2\x00\x3c"
                payload = (len(cid).to_bytes(2, "big") + cid + len(user).to_bytes(2, "big") + user
                           + len(pw).to_bytes(2, "big") + pw)
                s.sendall(bytes([0x10, len(var) + len(payload)]) + var + payload)
                self.assertEqual(s.recv(4), b"\x20\x02\x00\x00")
                s.sendall(bytes([0x36, 0x05, 0x00, 0x01, ord("a"), 0x00, 0x01]))  # QoS 3
                s.settimeout(5)
                try:
                    self.assertEqual(s.recv(10), b"")
                except (ConnectionError, ssl.SSLError):
                    pass
        self.bridge.wait_log(r"device disconnected.*client_id=\"sensor-1\".*reason=\"[^\"]*QoS")
        self.good_device_still_works("qos3")


class TestUpstreamVerification(unittest.TestCase):
    """The bridge verifies the broker: a certificate that does not carry
    the configured name in its SAN is refused, and nothing reaches it. The
    device is accepted for store and forward (its messages wait in the
    spool), or, without a spool, refused with CONNACK 3."""

    def test_wrong_upstream_name_refused(self):
        tmp = tempfile.mkdtemp(prefix="meb-up-")
        os.chmod(tmp, 0o755)
        pki = TestPki(os.path.join(tmp, "pki"))
        users = {"sensor-1": "pw-1", "observer": "observer-pw"}
        mosq = Mosquitto(pki, tmp, users).start()
        bridge = Bridge(pki, tmp, mosq, {"upstream": {"server_name": "not-the-broker.example"}})
        bridge.start()
        try:
            sub = mosq.sub("wrongname/#", 1, timeout=3)
            r = Device(pki, "sensor-1", bridge.port).run("--username", "sensor-1", "--password", "pw-1",
                                                         "--pub", "wrongname/x=1", "--qos", "1",
                                                         "--timeout", "15")
            self.assertEqual(r.rc, 0, r)
            self.assertEqual(r.events("connack")[0]["rc"], "0")
            bridge.wait_log(r"certificate verify failed|upstream certificate rejected")
            self.assertEqual(sub.result(), [])  # nothing went to the impostor
            self.assertTrue(bridge.alive())
        finally:
            rc = bridge.stop()
            mosq.stop()
        self.assertEqual(rc, 0)

    def test_upstream_down_gives_connack_3(self):
        tmp = tempfile.mkdtemp(prefix="meb-down-")
        os.chmod(tmp, 0o755)
        pki = TestPki(os.path.join(tmp, "pki"))
        mosq = Mosquitto(pki, tmp, {"sensor-1": "pw-1"})  # never started
        bridge = Bridge(pki, tmp, mosq, {"spool": {"directory": ""}}).start()
        try:
            r = Device(pki, "sensor-1", bridge.port).run("--timeout", "10")
            self.assertEqual(r.rc, 3, r)
            self.assertEqual(r.events("connack")[0]["rc"], "3")
            bridge.wait_log(r"upstream broker unreachable")
        finally:
            rc = bridge.stop()
        self.assertEqual(rc, 0)


class TestPrivileges(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="meb-priv-")
        os.chmod(self.tmp, 0o755)
        self.pki = TestPki(os.path.join(self.tmp, "pki"))
        self.mosq = Mosquitto(self.pki, self.tmp, {"sensor-1": "pw-1"})

    def test_world_readable_key_refused(self):
        os.chmod(self.pki.listener[1], 0o644)
        b = Bridge(self.pki, self.tmp, self.mosq)
        r = subprocess.run([BRIDGE_BIN, "--check-config", "--config", b.conf],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=10)
        self.assertEqual(r.returncode, 1)
        self.assertIn(self.pki.listener[1], r.stderr)
        self.assertIn("readable by every user", r.stderr)

    @unittest.skipUnless(os.geteuid() == 0, "needs root to drop privileges")
    def test_drops_privileges_after_start(self):
        self.mosq.start()
        b = Bridge(self.pki, self.tmp, self.mosq, {"bridge": {"user": "nobody"}})
        b.start()
        try:
            b.wait_log(r"running as nobody")
            with open("/proc/%d/status" % b.proc.pid) as f:
                uid_line = [l for l in f if l.startswith("Uid:")][0]
            self.assertEqual(set(uid_line.split()[1:]), {"65534"})
            # and it still works: keys were read, the spool is its own
            r = Device(self.pki, "sensor-1", b.port).run("--username", "sensor-1", "--password", "pw-1",
                                                         "--pub", "priv/x=1", "--qos", "1")
            self.assertEqual(r.rc, 0, r)
            self.assertEqual(os.stat(os.path.join(self.tmp, "spool")).st_uid, 65534)
        finally:
            rc = b.stop()
            self.mosq.stop()
        self.assertEqual(rc, 0)


class TestConfigErrors(unittest.TestCase):
    def test_unknown_key_names_file_line_and_key(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "bad.ini")
            with open(path, "w") as f:
                f.write("[listener]\nport = 8884\nprot = 1\n")
            r = subprocess.run([BRIDGE_BIN, "--check-config", "--config", path],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=10)
            self.assertEqual(r.returncode, 1)
            self.assertRegex(r.stderr, re.escape(path) + r":3:.*prot")

    def test_missing_file(self):
        r = subprocess.run([BRIDGE_BIN, "--check-config", "--config", "/nonexistent/x.ini"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=10)
        self.assertEqual(r.returncode, 1)
        self.assertIn("/nonexistent/x.ini", r.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
