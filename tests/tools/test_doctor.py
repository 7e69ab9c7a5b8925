#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""`mqtt-edge-bridge-doctor cert`: the extra reports (CA without
basicConstraints, RSA over 2048 bits, not yet valid / expired, wrong chain
order, key not matching) and the plain-words explanations and exit codes."""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import toolslib as T  # noqa: E402

DUAL = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment",
        "extendedKeyUsage=serverAuth", "subjectAltName=IP:127.0.0.1,DNS:127.0.0.1,DNS:raspberry"]


def ids(j):
    return {f["id"] for f in j["findings"]}


class Doctor(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        p = cls.pki = T.Pki()
        p.ca("ca", "Test CA")
        p.ca("v1ca", "Test v1 CA", v1=True)
        p.leaf("dual", "ca", "raspberry", DUAL)
        p.leaf("big", "ca", "raspberry", DUAL, bits=4096)
        p.leaf("v1leaf", "v1ca", "raspberry", DUAL)
        p.leaf("sanip", "ca", "raspberry", DUAL[:3] + ["subjectAltName=IP:127.0.0.1"])
        p.leaf("device", "ca", "sensor-1", ["extendedKeyUsage=clientAuth"])
        # An intermediate CA, for chain order.
        p.leaf("int", "ca", "Test Intermediate", ["basicConstraints=critical,CA:TRUE",
                                                  "keyUsage=critical,keyCertSign,cRLSign"])
        p.leaf("viaint", "int", "raspberry", DUAL)
        for name, parts in (("good-chain", ("viaint", "int")), ("bad-chain", ("int", "viaint"))):
            with open(p.path(name + ".pem"), "w") as out:
                for part in parts:
                    with open(p.path(part + ".crt")) as f:
                        out.write(f.read())
        p.key("other")

    @classmethod
    def tearDownClass(cls):
        cls.pki.cleanup()

    def cert(self, chain, ca="ca", name="127.0.0.1", *extra):
        return T.doctor_json(["cert", self.pki.path(chain), "--ca", self.pki.path(ca + ".crt"),
                              "--name", name] + list(extra))

    def test_ok(self):
        rc, j = self.cert("dual.crt", "ca", "raspberry", "--key", self.pki.path("dual.key"))
        self.assertEqual(rc, 0)
        self.assertTrue(j["device_ok"])
        self.assertEqual(j["bearssl"]["error"], "OK")

    def test_v1_ca(self):
        rc, j = self.cert("v1leaf.crt", "v1ca")
        self.assertEqual(rc, 1)
        self.assertEqual(j["bearssl"]["code"], 62)
        self.assertEqual(j["bearssl"]["error"], "BR_ERR_X509_NOT_TRUSTED")
        self.assertIn("ca-not-ca", ids(j))
        self.assertTrue(j["openssl"]["ok"])
        text = T.run([T.DOCTOR, "cert", self.pki.path("v1leaf.crt"), "--ca", self.pki.path("v1ca.crt"),
                      "--name", "127.0.0.1"], check=False)
        self.assertEqual(text.returncode, 1)
        self.assertIn("basicConstraints CA:TRUE", text.stdout)
        self.assertIn("fix:", text.stdout)

    def test_rsa_4096(self):
        rc, j = self.cert("big.crt")
        self.assertEqual(rc, 0)
        self.assertIn("rsa-large", ids(j))

    def test_time(self):
        rc, j = self.cert("dual.crt", "ca", "127.0.0.1", "--time", "2099-01-01")
        self.assertEqual((rc, j["bearssl"]["code"]), (1, 54))
        self.assertIn("expired", ids(j))
        self.assertEqual(j["openssl"]["result"], "expired")
        # A device without SNTP thinks it is 1970.
        rc, j = self.cert("dual.crt", "ca", "127.0.0.1", "--time", "@0")
        self.assertEqual((rc, j["bearssl"]["code"]), (1, 54))
        self.assertIn("not-yet-valid", ids(j))
        self.assertIn("1970", " ".join(f["message"] for f in j["findings"]))

    def test_chain_order(self):
        rc, j = self.cert("good-chain.pem")
        self.assertEqual(rc, 0, j)
        self.assertNotIn("chain-order", ids(j))
        rc, j = self.cert("bad-chain.pem")
        self.assertEqual(rc, 1)
        self.assertNotEqual(j["bearssl"]["code"], 0)
        self.assertIn("chain-order", ids(j))

    def test_key_mismatch(self):
        rc, j = self.cert("dual.crt", "ca", "127.0.0.1", "--key", self.pki.path("other.key"))
        self.assertEqual(rc, 1)
        self.assertTrue(j["bearssl"]["ok"])
        self.assertIn("key-mismatch", ids(j))
        self.assertFalse(j["device_ok"])

    def test_san_ip_only_explained(self):
        p = T.run([T.DOCTOR, "cert", self.pki.path("sanip.crt"), "--ca", self.pki.path("ca.crt"),
                   "--name", "127.0.0.1"], check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("BR_ERR_X509_BAD_SERVER_NAME (56)", p.stdout)
        self.assertIn("only iPAddress entries", p.stdout)
        self.assertIn("--profile dual", p.stdout)

    def test_name_check_off_accepts_device_cert(self):
        # BearSSL ignores extendedKeyUsage: with no name, a client cert passes.
        rc, j = self.cert("device.crt", "ca", "")
        self.assertEqual(rc, 0)
        self.assertTrue(j["bearssl"]["ok"])
        self.assertFalse(j["openssl"]["ok"])
        self.assertIn("name-check-off", ids(j))
        self.assertIn("eku-no-server-auth", ids(j))

    def test_usage_errors(self):
        p = T.run([T.DOCTOR, "cert", self.pki.path("dual.crt"), "--ca", self.pki.path("ca.crt")], check=False)
        self.assertEqual(p.returncode, 2)
        self.assertIn("--name", p.stderr)
        p = T.run([T.DOCTOR, "cert", self.pki.path("missing.crt"), "--ca", self.pki.path("ca.crt"),
                   "--name", "x"], check=False)
        self.assertEqual(p.returncode, 2)
        self.assertIn("No such file", p.stderr)
        p = T.run([T.DOCTOR, "cert", self.pki.path("other.key"), "--ca", self.pki.path("ca.crt"),
                   "--name", "x"], check=False)
        self.assertEqual(p.returncode, 2)
        self.assertIn("no certificate", p.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
