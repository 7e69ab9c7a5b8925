"""Issue 11: one listener port, a CN-only certificate per name (SNI).

The BearSSL device (edge-device, configured like the ESP8266 core) dials
127.0.0.1 each time, but checks a different server name: the IP itself
(which BearSSL sends as SNI although RFC 6066 forbids IP literals there),
the host name, the .local name, and no name at all (connect(IPAddress):
no SNI, name check off). Each handshake is validated by BearSSL with the
name check on, so a wrong certificate would fail with 56.
"""

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from harness import Bridge, BridgeTestCase, Mosquitto, TestPki, wait_for  # noqa: E402

DOCTOR = os.environ.get("DOCTOR", "mqtt-edge-bridge-doctor")


def served_cn(port, sni, pki, device):
    """The CN of the certificate the bridge presents for this SNI (None =
    no SNI sent), read with Python's ssl, name check off."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(pki.ca.ca_crt)
    ctx.load_cert_chain(*device)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=sni) as s:
            subject = dict(x[0] for x in s.getpeercert()["subject"])
            return subject.get("commonName")


class TestSni(BridgeTestCase):
    @classmethod
    def setUpClass(cls):
        import tempfile
        cls.tmp = tempfile.mkdtemp(prefix="meb-test-")
        os.chmod(cls.tmp, 0o755)
        cls.pki = TestPki(os.path.join(cls.tmp, "pki"))
        cls.certdir = os.path.join(cls.tmp, "listener.d")
        os.makedirs(cls.certdir)
        for name in ("raspberry", "raspberry.local"):
            crt, key = cls.pki.ca.issue("sni-" + name, name)  # CN only
            os.rename(crt, os.path.join(cls.certdir, name + ".crt"))
            os.rename(key, os.path.join(cls.certdir, name + ".key"))
        cls.mosquitto = Mosquitto(cls.pki, cls.tmp, cls.users, unix_socket=True)
        # certfile is CN=127.0.0.1; the default (no SNI, unknown name) is
        # "raspberry", so that the IP name is only served by matching SNI.
        cls.bridge = Bridge(cls.pki, cls.tmp, cls.mosquitto, {
            "listener": {"certdir": cls.certdir, "default_name": "raspberry"},
        })
        try:
            cls.mosquitto.start()
            cls.bridge.start()
        except BaseException:
            cls.bridge.stop()
            cls.mosquitto.stop()
            raise

    def _dial(self, server_name, **kw):
        dev = self.device("sensor-1", server_name=server_name)
        return dev.run(*self.creds("sensor-1"), "--pub", "sni/t=%s" % (server_name or "none"),
                       "--qos", "1", **kw)

    def test_ip_literal_sni_with_name_check(self):
        # The default certificate is CN=raspberry: BearSSL checking
        # "127.0.0.1" succeeds only if the SNI "127.0.0.1" picked the
        # CN=127.0.0.1 one. (Python never sends an IP literal as SNI, so
        # it cannot show this.)
        r = self._dial("127.0.0.1")
        self.assertEqual(r.rc, 0, r)
        self.assertEqual(r.events("connack")[0]["rc"], "0")

    def test_host_name_with_name_check(self):
        r = self._dial("raspberry")
        self.assertEqual(r.rc, 0, r)
        self.assertEqual(r.events("connack")[0]["rc"], "0")

    def test_dot_local_name_with_name_check(self):
        r = self._dial("raspberry.local")
        self.assertEqual(r.rc, 0, r)
        self.assertEqual(served_cn(self.bridge.port, "raspberry.local", self.pki,
                                   self.pki.device("sensor-1")), "raspberry.local")

    def test_no_sni_gets_the_default(self):
        # connect(IPAddress): no SNI, no name check.
        r = self._dial("")
        self.assertEqual(r.rc, 0, r)
        self.assertEqual(served_cn(self.bridge.port, None, self.pki, self.pki.device("sensor-1")), "raspberry")

    def test_unknown_name_gets_the_default_not_a_refusal(self):
        # The bridge does not refuse the ClientHello; the device's own name
        # check then fails (56), as it would against any wrong certificate.
        r = self._dial("other.example", timeout=15)
        self.assertEqual(r.rc, 2, r)
        self.assertEqual(r.events("tls")[0].get("code"), "56", r)
        self.assertEqual(served_cn(self.bridge.port, "other.example", self.pki,
                                   self.pki.device("sensor-1")), "raspberry")

    def test_resumption_across_names(self):
        # One session cache and one session id context for every name.
        for name in ("127.0.0.1", "raspberry.local"):
            r = self.device("sensor-2", server_name=name).run(*self.creds("sensor-2"), "--reconnects", "1")
            self.assertEqual(r.rc, 0, r)
            tls = r.events("tls")
            self.assertEqual([t["resumed"] for t in tls], ["0", "1"], r)

    def test_doctor_checks_every_name(self):
        crt, key = self.pki.device("sensor-3")
        r = subprocess.run([DOCTOR, "connect", "127.0.0.1:%d" % self.bridge.port, "--ca", self.pki.ca.ca_crt,
                            "--cert", crt, "--key", key, "--username", "sensor-3", "--password", "pw-3",
                            "--name", "127.0.0.1", "--name", "raspberry", "--name", "raspberry.local",
                            "--name", "", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        reps = [json.loads(line) for line in r.stdout.splitlines()]
        self.assertEqual([x["name"] for x in reps], ["127.0.0.1", "raspberry", "raspberry.local", None])
        self.assertTrue(all(x["device_ok"] and x["resumption"]["resumed"] for x in reps), reps)
        # a name without a certificate makes the whole run fail
        r = subprocess.run([DOCTOR, "connect", "127.0.0.1:%d" % self.bridge.port, "--ca", self.pki.ca.ca_crt,
                            "--cert", crt, "--key", key, "--tls-only", "--name", "raspberry", "--name", "nope"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn("BR_ERR_X509_BAD_SERVER_NAME", r.stdout)

    def test_zz_reload_reads_every_certificate_again(self):
        # A new name appears in certdir: SIGHUP serves it, nothing restarts.
        crt, key = self.pki.ca.issue("sni-new", "edge.lan")
        os.rename(crt, os.path.join(self.certdir, "edge.lan.crt"))
        os.rename(key, os.path.join(self.certdir, "edge.lan.key"))
        self.assertEqual(self._dial("edge.lan", timeout=15).rc, 2)
        before = self.bridge.log_size()
        self.bridge.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "configuration reloaded" in self.bridge.text()[before:], 20, "reload")
        r = self._dial("edge.lan")
        self.assertEqual(r.rc, 0, r)
        # a certdir pair without its key is refused, the running set stays
        os.rename(os.path.join(self.certdir, "edge.lan.key"), os.path.join(self.tmp, "moved.key"))
        before = self.bridge.log_size()
        self.bridge.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload rejected" in self.bridge.text()[before:], 20, "reload rejected")
        self.assertIn("edge.lan.crt has no key", self.bridge.text()[before:])
        self.assertEqual(self._dial("edge.lan").rc, 0)
        self.assertBridgeAlive()


if __name__ == "__main__":
    unittest.main()
