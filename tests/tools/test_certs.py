#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""mqtt-edge-bridge-certs: what it issues passes `doctor cert` (and
OpenSSL where the profile is meant for it), keys are 0600, and each
refusal prints its reason and exits non-zero."""

import os
import re
import shutil
import stat
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import toolslib as T  # noqa: E402


def slurp(path):
    with open(path) as f:
        return f.read()


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


class Certs(unittest.TestCase):
    def setUp(self):
        self.pki = T.Pki()
        self.d = self.pki.dir

    def tearDown(self):
        self.pki.cleanup()

    def certs(self, *args, check=True):
        return T.run([T.CERTS] + list(args), cwd=self.d, check=check)

    def new_ca(self, *extra):
        self.certs("ca", *extra)
        return self.pki.path("ca.crt"), self.pki.path("ca.key")

    def doctor(self, chain, name, *extra):
        return T.doctor_json(["cert", chain, "--ca", self.pki.path("ca.crt"), "--name", name] + list(extra),
                             cwd=self.d)

    def openssl_text(self, crt):
        return T.run([T.OPENSSL, "x509", "-in", crt, "-noout", "-text"]).stdout

    def test_ca(self):
        self.new_ca()
        self.assertEqual(mode(self.pki.path("ca.key")), 0o600)
        text = self.openssl_text(self.pki.path("ca.crt"))
        self.assertRegex(text, r"Basic Constraints: critical\s+CA:TRUE")
        self.assertIn("rsaEncryption", text)
        self.assertIn("Public-Key: (2048 bit)", text)

    def test_listener_cn_only(self):
        self.new_ca()
        self.certs("listener", "--ca", "ca.crt", "--ca-key", "ca.key", "--address", "127.0.0.1")
        crt = self.pki.path("listener.crt")
        self.assertEqual(mode(self.pki.path("listener.key")), 0o600)
        text = self.openssl_text(crt)
        self.assertIn("Subject: CN = 127.0.0.1", text)
        self.assertNotIn("Subject Alternative Name", text)
        rc, j = self.doctor(crt, "127.0.0.1", "--key", self.pki.path("listener.key"))
        self.assertEqual(rc, 0, j)
        self.assertTrue(j["bearssl"]["ok"])
        # By design OpenSSL refuses it by IP: that is what the broker profile is for.
        self.assertEqual(j["openssl"]["result"], "mismatch")

    def test_listener_dual_and_broker_ec(self):
        self.new_ca()
        self.certs("listener", "--ca", "ca.crt", "--ca-key", "ca.key", "--address", "127.0.0.1",
                   "--name", "raspberry", "--profile", "dual")
        self.certs("broker", "--ca", "ca.crt", "--ca-key", "ca.key", "--address", "127.0.0.1",
                   "--name", "raspberry", "--ec")
        for stem in ("listener", "broker"):
            crt = self.pki.path(stem + ".crt")
            text = self.openssl_text(crt)
            self.assertIn("IP Address:127.0.0.1, DNS:127.0.0.1, DNS:raspberry", text)
            self.assertIn("TLS Web Server Authentication", text)
            for name in ("127.0.0.1", "raspberry"):
                rc, j = self.doctor(crt, name, "--key", self.pki.path(stem + ".key"))
                self.assertEqual(rc, 0, j)
                self.assertTrue(j["bearssl"]["ok"] and j["openssl"]["ok"], j)
                self.assertEqual([f for f in j["findings"] if f["severity"] == "error"], [])
        self.assertIn("id-ecPublicKey", self.openssl_text(self.pki.path("broker.crt")))
        self.assertIn("prime256v1", self.openssl_text(self.pki.path("broker.crt")))

    def test_device(self):
        self.new_ca()
        self.certs("listener", "--ca", "ca.crt", "--ca-key", "ca.key", "--address", "127.0.0.1")
        self.certs("device", "sensor-1", "--ca", "ca.crt", "--ca-key", "ca.key", "--listener", "listener.crt")
        self.assertEqual(mode(self.pki.path("sensor-1.key")), 0o600)
        text = self.openssl_text(self.pki.path("sensor-1.crt"))
        self.assertIn("Subject: CN = sensor-1", text)
        self.assertIn("TLS Web Client Authentication", text)
        T.run([T.OPENSSL, "verify", "-CAfile", "ca.crt", "-purpose", "sslclient", "sensor-1.crt"], cwd=self.d)

    def test_refuse_ca_without_basic_constraints(self):
        for v1, ext in ((True, None), (False, "basicConstraints=critical,CA:FALSE")):
            self.pki.ca("bad", "Bad CA", v1=v1, ext=ext)
            p = self.certs("listener", "--ca", "bad.crt", "--ca-key", "bad.key", "--address", "127.0.0.1",
                           check=False)
            self.assertNotEqual(p.returncode, 0)
            self.assertIn("refusing CA certificate", p.stderr)
            self.assertIn("CA:TRUE", p.stderr)
            self.assertIn("62", p.stderr)
            self.assertFalse(os.path.exists(self.pki.path("listener.key")))
            p = self.certs("device", "sensor-1", "--ca", "bad.crt", "--ca-key", "bad.key", check=False)
            self.assertNotEqual(p.returncode, 0)
            self.assertIn("refusing CA certificate", p.stderr)

    def test_refuse_ca_key_mismatch(self):
        self.new_ca()
        self.pki.key("other")
        p = self.certs("device", "sensor-1", "--ca", "ca.crt", "--ca-key", "other.key", check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("does not belong", p.stderr)

    def test_refuse_device_names(self):
        self.new_ca()
        self.certs("listener", "--ca", "ca.crt", "--ca-key", "ca.key", "--address", "192.168.0.52",
                   "--name", "raspberry", "--profile", "dual")
        cases = [
            (["192.168.0.52"], "looks like an IP address"),
            (["10.0.0.1"], "looks like an IP address"),
            (["192.168.0"], "looks like an IP address"),
            (["fe80::1"], "looks like an IP address"),
            (["*.lan"], "wildcard"),
            (["raspberry", "--listener", "listener.crt"], "the listener answers to \"raspberry\""),
            (["RASPBERRY", "--listener", "listener.crt"], "the listener answers to"),
            (["mqtt", "--listener-names", "mqtt,broker"], "the listener answers to \"mqtt\""),
            (["../x"], "'/'"),
        ]
        for args, msg in cases:
            p = self.certs("device", *args, "--ca", "ca.crt", "--ca-key", "ca.key", check=False)
            self.assertNotEqual(p.returncode, 0, args)
            self.assertIn(msg, p.stderr, args)
            self.assertIn("refusing device name", p.stderr)
        self.assertEqual(sorted(f for f in os.listdir(self.d) if f.endswith(".key")), ["ca.key", "listener.key"])

    def test_refuse_existing_files(self):
        self.new_ca()
        before = slurp(self.pki.path("ca.crt"))
        for args in (["ca"],
                     ["listener", "--ca", "ca.crt", "--ca-key", "ca.key", "--address", "127.0.0.1",
                      "--out-cert", "ca.crt"],
                     ["device", "sensor-1", "--ca", "ca.crt", "--ca-key", "ca.key", "--out-key", "ca.key"]):
            p = self.certs(*args, check=False)
            self.assertNotEqual(p.returncode, 0, args)
            self.assertIn("refusing to overwrite", p.stderr)
            self.assertIn("--force", p.stderr)
        self.assertEqual(slurp(self.pki.path("ca.crt")), before)
        self.certs("ca", "--force", "--ec")
        self.assertNotEqual(slurp(self.pki.path("ca.crt")), before)
        self.assertEqual(mode(self.pki.path("ca.key")), 0o600)

    def test_missing_input(self):
        p = self.certs("listener", "--ca", "nope.crt", "--ca-key", "nope.key", "--address", "127.0.0.1",
                       check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("nope.crt", p.stderr)
        self.assertIn("No such file", p.stderr)

    def test_firmware_config(self):
        self.new_ca()
        self.certs("listener", "--ca", "ca.crt", "--ca-key", "ca.key", "--address", "192.168.0.52")
        self.certs("device", "sensor-1", "--ca", "ca.crt", "--ca-key", "ca.key", "--ec",
                   "--listener", "listener.crt")
        self.certs("firmware-config", "sensor-1", "--address", "192.168.0.52", "--port", "8884",
                   "--topic-prefix", "home/")
        hdr = self.pki.path("edge_config.h")
        self.assertEqual(mode(hdr), 0o600)
        text = slurp(hdr)
        for macro in ("EDGE_WIFI_SSID", "EDGE_WIFI_PASSWORD", "EDGE_MQTT_HOST", "EDGE_MQTT_PORT",
                      "EDGE_SERVER_NAME", "EDGE_CLIENT_ID", "EDGE_TOPIC_PREFIX", "EDGE_CA_PEM",
                      "EDGE_CERT_PEM", "EDGE_KEY_PEM"):
            self.assertRegex(text, r"#define %s\b" % macro)
        self.assertIn("PLACEHOLDER", text)
        self.assertIn('#define EDGE_MQTT_PORT 8884', text)
        self.assertIn('#define EDGE_SERVER_NAME "192.168.0.52"', text)
        self.assertRegex(text, re.escape('#define EDGE_WIFI_SSID "') + r".*PLACEHOLDER")
        p = self.certs("firmware-config", "sensor-1", "--address", "192.168.0.52", "--port", "8884", check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("refusing to overwrite", p.stderr)

        cc = shutil.which("cc") or shutil.which("gcc")
        if not cc:
            self.skipTest("no C compiler to check the header with")
        src = self.pki.path("dump.c")
        with open(src, "w") as f:
            f.write('#include <stdio.h>\n#include "edge_config.h"\n'
                    'int main(void) { fputs(EDGE_CA_PEM, stdout); fputs(EDGE_CERT_PEM, stdout);'
                    ' fputs(EDGE_KEY_PEM, stdout); printf("%s %d %s %s %s\\n", EDGE_MQTT_HOST, EDGE_MQTT_PORT,'
                    ' EDGE_SERVER_NAME, EDGE_CLIENT_ID, EDGE_TOPIC_PREFIX); return 0; }\n')
        T.run([cc, "-std=c11", "-Wall", "-Werror", "-o", self.pki.path("dump"), src], cwd=self.d)
        out = subprocess.run([self.pki.path("dump")], stdout=subprocess.PIPE, text=True, timeout=10).stdout
        want = "".join(slurp(self.pki.path(f)) for f in ("ca.crt", "sensor-1.crt", "sensor-1.key"))
        self.assertEqual(out, want + "192.168.0.52 8884 192.168.0.52 sensor-1 home/\n")


if __name__ == "__main__":
    unittest.main(verbosity=2)
