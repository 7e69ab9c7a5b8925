#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""`mqtt-edge-bridge-doctor upstream` against a real mosquitto 2.0 (mutual
TLS, password file, ACL file, Unix socket), configured by the daemon's own
INI file: TLS verification (name, CA), CONNACK, the ACL verdict on the test
publish and subscribe under the mountpoint, the JSON report and the exit
status. PKI is made at run time (tests/lib/pki.py)."""

import base64
import glob
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import toolslib as T  # noqa: E402
from harness import Mosquitto, TestPki, write_ini  # noqa: E402

USERS = {"sensor-1": "pw-1", "sensor-2": "pw-2", "observer": "observer-pw"}
# Read-only for sensor-1 under its mountpoint, nothing at all for sensor-2;
# clients/<client id>/ for everyone.
ACL = "pattern readwrite clients/%c/#\n\nuser sensor-1\ntopic read devices/sensor-1/#\n\nuser sensor-2\n"
EXIT_UNREACHABLE, EXIT_USAGE, EXIT_REFUSED, EXIT_DENIED = 1, 2, 3, 4
# mosquitto's acl_file accepts every SUBSCRIBE (it checks read access on
# delivery); the dynamic security plugin checks SUBSCRIBE and answers 0x80.
DYNSEC = (glob.glob("/usr/lib/*/mosquitto_dynamic_security.so") + [None])[0]


def dynsec_config(path, users):
    """A dynamic-security.json in which nobody may subscribe: clients with
    the plugin's PBKDF2-SHA512 password hashes and no roles."""
    clients = []
    for user, pw in users.items():
        salt = os.urandom(12)
        h = hashlib.pbkdf2_hmac("sha512", pw.encode(), salt, 101, 64)
        clients.append({"username": user, "password": base64.b64encode(h).decode(),
                        "salt": base64.b64encode(salt).decode(), "iterations": 101, "roles": []})
    with open(path, "w") as f:
        json.dump({"defaultACLAccess": {"publishClientSend": True, "publishClientReceive": True,
                                        "subscribe": False, "unsubscribe": True},
                   "clients": clients, "groups": [], "roles": []}, f)


class Upstream(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="meb-upstream-")
        cls.pki = TestPki(os.path.join(cls.dir, "pki"))
        cls.brokers = []
        cls.broker = cls.mosquitto("plain", unix_socket=True)
        acl = os.path.join(cls.dir, "acl.conf")
        with open(acl, "w") as f:
            f.write(ACL)
        cls.acl_broker = cls.mosquitto("acl", listener_extra=("acl_file %s" % acl,))
        cls.dynsec_broker = None
        if DYNSEC:
            conf = os.path.join(cls.dir, "dynamic-security.json")
            dynsec_config(conf, USERS)
            cls.dynsec_broker = cls.mosquitto("dynsec", listener_extra=(
                "plugin %s" % DYNSEC, "plugin_opt_config_file %s" % conf))

    @classmethod
    def mosquitto(cls, name, **kw):
        d = os.path.join(cls.dir, name)
        os.makedirs(d)
        m = Mosquitto(cls.pki, d, USERS, **kw)
        cls.brokers.append(m)
        return m.start()

    @classmethod
    def tearDownClass(cls):
        for m in cls.brokers:
            m.stop()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def ini(self, broker=None, upstream=None, bridge=None):
        """The daemon's configuration file for this broker; upstream/bridge
        override keys (None removes one)."""
        broker = broker or self.broker
        crt, key = self.pki.listener
        bcrt, bkey = self.pki.bridge_client
        up = {"host": "127.0.0.1", "port": str(broker.port), "cafile": self.pki.ca.ca_crt,
              "certfile": bcrt, "keyfile": bkey}
        br = {"mountpoint": "devices/%c/", "user": ""}
        for d, o in ((up, upstream), (br, bridge)):
            for k, v in (o or {}).items():
                if v is None:
                    d.pop(k, None)
                else:
                    d[k] = v
        path = os.path.join(self.dir, "bridge-%s.ini" % self.id().rsplit(".", 1)[-1])
        write_ini(path, {"listener": {"port": "8884", "certfile": crt, "keyfile": key, "cafile": self.pki.ca.ca_crt},
                         "upstream": up, "bridge": br})
        return path

    def doctor(self, ini, *extra, json_out=True):
        args = [T.DOCTOR, "upstream", "--config", ini, "--timeout", "3"] + list(extra)
        if json_out:
            args.append("--json")
        p = T.run(args, check=False)
        if not json_out:
            return p.returncode, p.stdout, p.stderr
        try:
            return p.returncode, json.loads(p.stdout)
        except ValueError:
            raise AssertionError("no JSON (exit %d):\n%s%s" % (p.returncode, p.stdout, p.stderr))

    def sensor1(self, ini, *extra, json_out=True):
        return self.doctor(ini, "--cn", "sensor-1", "--username", "sensor-1", "--password", "pw-1", *extra,
                           json_out=json_out)

    def ids(self, j):
        return [f["id"] for f in j["findings"]]

    def test_all_ok_tls_client_cert_password(self):
        rc, j = self.sensor1(self.ini())
        self.assertEqual(rc, 0, j)
        self.assertTrue(j["ok"])
        self.assertEqual(j["status"], 0)
        t = j["transport"]
        self.assertEqual((t["kind"], t["host"], t["port"], t["ok"]), ("tls-tcp", "127.0.0.1", self.broker.port, True))
        self.assertTrue(t["local"].startswith("127.0.0.1:"), t)
        tls = j["tls"]
        self.assertTrue(tls["ok"], tls)
        self.assertTrue(tls["version"].startswith("TLSv1."), tls)
        self.assertTrue(tls["cipher"])
        self.assertEqual(tls["expected_name"], "127.0.0.1")
        self.assertIsNone(tls["sni"])           # RFC 6066 §3: no IP literal in SNI
        self.assertTrue(tls["name_matched"])
        self.assertEqual(tls["peer"]["subject"], "CN = raspberry")
        self.assertEqual(tls["peer"]["san_ip"], ["127.0.0.1"])
        self.assertEqual(tls["peer"]["san_dns"], ["raspberry"])
        self.assertEqual((tls["verify"]["code"], tls["verify"]["result"]), (0, "ok"))
        self.assertIsNone(tls["alert"])
        m = j["mqtt"]
        self.assertEqual((m["connack"], m["username"], m["password_sent"]), (0, "sensor-1", True))
        self.assertEqual(m["connack_text"], "connection accepted")
        # An empty device client id: the bridge makes one from the CN, so a
        # live sensor-1's session is left alone.
        self.assertRegex(m["client_id"], r"^sensor-1-[0-9a-f]{8}$")
        self.assertEqual(j["mountpoint"], "devices/sensor-1/")
        self.assertRegex(j["topic"], r"^devices/sensor-1/mqtt-edge-bridge-doctor/[0-9a-f]{16}$")
        self.assertEqual(j["subscribe"], {"suback": 1, "allowed": True})
        self.assertEqual(j["publish"], {"puback": True, "echoed": True, "allowed": True})
        self.assertEqual(j["findings"], [])

    def test_text_report(self):
        rc, out, err = self.sensor1(self.ini(bridge={"client_id_prefix": "edge-"}), "--client-id", "sensor-1",
                                    json_out=False)
        self.assertEqual(rc, 0, out + err)
        self.assertIn("TLS over TCP", out)
        self.assertIn("TLS:           OK TLSv1.", out)
        self.assertIn("certificate: CN = raspberry (issuer CN = Test CA ca)", out)
        self.assertIn("SAN:         DNS:raspberry, IP:127.0.0.1", out)
        self.assertIn("\"127.0.0.1\" ([upstream] server_name, default host): matched", out)
        self.assertIn("SNI:         (none)", out)
        self.assertIn("client id:   \"edge-sensor-1\"", out)
        self.assertIn("MQTT CONNACK:  0 (connection accepted)", out)
        self.assertIn("subscribe:     allowed", out)
        self.assertIn("publish:       allowed", out)
        self.assertIn("The bridge can use the broker for this device.", out)

    def test_wrong_server_name(self):
        rc, j = self.sensor1(self.ini(upstream={"server_name": "elsewhere.example"}))
        self.assertEqual(rc, EXIT_UNREACHABLE, j)
        tls = j["tls"]
        self.assertFalse(tls["ok"])
        self.assertEqual(tls["expected_name"], "elsewhere.example")
        self.assertEqual(tls["sni"], "elsewhere.example")
        self.assertEqual(tls["verify"]["code"], 62)           # X509_V_ERR_HOSTNAME_MISMATCH
        self.assertEqual(tls["verify"]["result"], "mismatch")
        self.assertEqual(tls["verify"]["error"], "hostname mismatch")
        self.assertFalse(tls["name_matched"])
        self.assertEqual(tls["peer"]["subject"], "CN = raspberry")   # shown even though refused
        self.assertIsNone(j["mqtt"]["connack"])
        self.assertIn("tls-name-mismatch", self.ids(j))

    def test_server_name_in_san(self):
        rc, j = self.sensor1(self.ini(upstream={"server_name": "raspberry"}))
        self.assertEqual(rc, 0, j)
        self.assertEqual((j["tls"]["sni"], j["tls"]["name_matched"]), ("raspberry", True))

    def test_unknown_ca(self):
        self.pki.foreign_device("x")            # makes the CA nobody trusts
        rc, out, err = self.sensor1(self.ini(upstream={"cafile": self.pki.other_ca.ca_crt}), json_out=False)
        self.assertEqual(rc, EXIT_UNREACHABLE, out + err)
        # mosquitto sends its CA along: OpenSSL meets a self-signed
        # certificate it does not trust (19), or no issuer at all (20).
        self.assertRegex(out, r"certificate verify failed: (self-signed certificate in certificate chain|"
                              r"unable to get local issuer certificate) \(X509_V_ERR (19|20), depth [01]\)")
        self.assertIn("error [tls-untrusted]", out)
        self.assertIn("The bridge can NOT use the broker", out)

    def test_no_client_certificate(self):
        rc, j = self.sensor1(self.ini(upstream={"certfile": None, "keyfile": None}))
        self.assertEqual(rc, EXIT_UNREACHABLE, j)
        self.assertIsNone(j["mqtt"]["connack"])
        # The broker's alert says why, unless the reset that follows it
        # (our CONNECT met the closed socket) threw it away.
        self.assertTrue(j["tls"]["alert"] or j["tls"]["version"] == "TLSv1.3", j)
        self.assertIn(self.ids(j)[0], ("tls-alert", "tls-closed"), j)

    def test_wrong_password(self):
        rc, j = self.doctor(self.ini(), "--cn", "sensor-1", "--password", "wrong")
        self.assertEqual(rc, EXIT_REFUSED, j)
        self.assertTrue(j["tls"]["ok"])
        self.assertIn(j["mqtt"]["connack"], (4, 5))
        self.assertEqual(j["mqtt"]["username"], "sensor-1")     # the CN, as the bridge sends it
        self.assertIn("connack-refused", self.ids(j))
        self.assertIsNone(j["subscribe"]["allowed"])

    def test_fixed_password_file(self):
        pw = os.path.join(self.dir, "pw")
        with open(pw, "w") as f:
            f.write("pw-1\n")
        rc, j = self.doctor(self.ini(bridge={"username_mode": "cn"}), "--cn", "sensor-1", "--password-file", pw)
        self.assertEqual(rc, 0, j)
        ini = self.ini(bridge={"username_mode": "fixed", "username": "sensor-2", "password_mode": "fixed",
                               "password": "pw-2", "mountpoint": "devices/sensor-2/"})
        rc, j = self.doctor(ini, "--password", "ignored")
        self.assertEqual(rc, 0, j)
        self.assertEqual((j["mqtt"]["username"], j["mqtt"]["cn"]), ("sensor-2", "mqtt-edge-bridge-doctor"))
        self.assertTrue(j["topic"].startswith("devices/sensor-2/"), j)

    def test_acl_denies_publish(self):
        rc, j = self.sensor1(self.ini(self.acl_broker))
        self.assertEqual(rc, EXIT_DENIED, j)
        self.assertEqual(j["mqtt"]["connack"], 0)
        self.assertTrue(j["subscribe"]["allowed"], j)
        # mosquitto 2.0 acknowledges the denied publish; it just never arrives.
        self.assertEqual(j["publish"], {"puback": True, "echoed": False, "allowed": False})
        self.assertIn("acl-publish-denied", self.ids(j))

    def test_acl_denies_everything(self):
        rc, j = self.doctor(self.ini(self.acl_broker), "--cn", "sensor-2", "--username", "sensor-2",
                            "--password", "pw-2")
        self.assertEqual(rc, EXIT_DENIED, j)
        self.assertEqual(j["subscribe"], {"suback": 1, "allowed": True})     # acl_file: see DYNSEC
        self.assertFalse(j["publish"]["allowed"])
        self.assertEqual(self.ids(j), ["acl-publish-denied", "generated-client-id"])

    def test_acl_pattern_client_id(self):
        # A %c pattern sees the client id: the doctor's own one is denied,
        # the device's (--client-id, for a device that is offline) allowed.
        ini = self.ini(self.acl_broker, bridge={"mountpoint": "clients/%c/"})
        rc, j = self.sensor1(ini)
        self.assertEqual(rc, EXIT_DENIED, j)
        self.assertIn("generated-client-id", self.ids(j))
        rc, j = self.sensor1(ini, "--client-id", "sensor-1")
        self.assertEqual(rc, 0, j)
        self.assertEqual(j["mqtt"]["client_id"], "sensor-1")
        self.assertTrue(j["topic"].startswith("clients/sensor-1/"), j)

    @unittest.skipUnless(DYNSEC, "mosquitto's dynamic security plugin is not installed")
    def test_subscribe_denied(self):
        rc, j = self.sensor1(self.ini(self.dynsec_broker))
        self.assertEqual(rc, EXIT_DENIED, j)
        self.assertEqual(j["mqtt"]["connack"], 0)
        self.assertEqual(j["subscribe"], {"suback": 0x80, "allowed": False})
        self.assertTrue(j["publish"]["puback"])
        self.assertIsNone(j["publish"]["allowed"])      # it cannot come back: unknown
        self.assertEqual(self.ids(j), ["acl-subscribe-denied", "acl-publish-unknown", "generated-client-id"])
        rc, out, err = self.doctor(self.ini(self.dynsec_broker), "--cn", "sensor-1", "--password", "pw-1",
                                   json_out=False)
        self.assertEqual(rc, EXIT_DENIED, out + err)
        self.assertIn("subscribe:     DENIED (SUBACK 0x80)", out)
        self.assertIn("publish:       unknown", out)

    def test_unix_socket(self):
        ini = self.ini(upstream={"host": self.broker.unix_path, "port": None, "cafile": None,
                                 "certfile": None, "keyfile": None})
        rc, j = self.doctor(ini, "--cn", "sensor-1")
        self.assertEqual(rc, 0, j)
        self.assertEqual(j["transport"]["kind"], "unix")
        self.assertIsNone(j["transport"]["port"])
        self.assertEqual(j["transport"]["peer"], self.broker.unix_path)
        self.assertIsNone(j["tls"])
        self.assertTrue(j["publish"]["allowed"])

    def test_nothing_listening(self):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        rc, j = self.sensor1(self.ini(upstream={"port": str(port)}))
        self.assertEqual(rc, EXIT_UNREACHABLE)
        self.assertFalse(j["transport"]["ok"])
        self.assertIn("refused", j["transport"]["error"])
        self.assertEqual(self.ids(j), ["connect-failed"])

    def test_usage(self):
        # The mountpoint uses %c: the device's CN is needed.
        rc, out, err = self.doctor(self.ini(), json_out=False)
        self.assertEqual(rc, EXIT_USAGE)
        self.assertIn("--cn NAME is needed", err)
        rc, out, err = self.doctor(os.path.join(self.dir, "missing.ini"), "--cn", "x", json_out=False)
        self.assertEqual(rc, EXIT_USAGE)
        self.assertIn("missing.ini", err)
        rc, out, err = self.doctor(self.ini(), "--cn", "x", "--ca", "ca.crt", json_out=False)
        self.assertEqual(rc, EXIT_USAGE)


if __name__ == "__main__":
    unittest.main(verbosity=2)
