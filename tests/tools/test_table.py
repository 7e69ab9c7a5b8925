#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Regenerates the BEARSSL-FACTS.md table at test time.

For each server certificate variant, by IP (127.0.0.1) and by name:
  * `doctor cert --json`'s BearSSL verdict must equal a live BearSSL
    handshake (`doctor connect --tls-only`, the ESP8266 core's client
    configuration) against `openssl s_server` serving that certificate;
  * its OpenSSL verdict must equal a real OpenSSL client's (Python ssl);
  * and both must be what the table says.
"""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import toolslib as T  # noqa: E402

IP = "127.0.0.1"
NAME = "raspberry"

# variant: (description, issuing CA, CN, extension lines, by-name name,
#           expected (BearSSL by IP, BearSSL by name, OpenSSL by IP, OpenSSL by name))
SERVER_EXT = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment",
              "extendedKeyUsage=serverAuth"]
EC_EXT = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature",
          "extendedKeyUsage=serverAuth"]
VARIANTS = {
    "cn-ip": ("CN=IP, no SAN", "ca", IP, SERVER_EXT, NAME, (0, 56, "mismatch", "mismatch")),
    "san-ip": ("SAN IP only", "ca", NAME, SERVER_EXT + ["subjectAltName=IP:" + IP], NAME,
               (56, 56, "ok", "ok")),
    "san-ip-dns": ("SAN IP + DNS:name", "ca", NAME, SERVER_EXT + ["subjectAltName=IP:%s,DNS:%s" % (IP, NAME)],
                   NAME, (56, 0, "ok", "ok")),
    "san-dns-ip": ("SAN DNS:<IP>", "ca", IP, SERVER_EXT + ["subjectAltName=DNS:" + IP], NAME,
                   (0, 56, "mismatch", "mismatch")),
    "cn-name": ("CN=name, no SAN", "ca", NAME, SERVER_EXT, NAME, (56, 0, "mismatch", "ok")),
    "dual": ("SAN IP:<ip>, DNS:<ip>, DNS:name", "ca", NAME,
             SERVER_EXT + ["subjectAltName=IP:%s,DNS:%s,DNS:%s" % (IP, IP, NAME)], NAME, (0, 0, "ok", "ok")),
    "expired": ("expired (dual)", "ca", NAME,
                SERVER_EXT + ["subjectAltName=IP:%s,DNS:%s,DNS:%s" % (IP, IP, NAME)], NAME,
                (54, 54, "expired", "expired")),
    "v1-ca": ("CA without basicConstraints (v1 CA)", "v1ca", NAME,
              SERVER_EXT + ["subjectAltName=IP:%s,DNS:%s,DNS:%s" % (IP, IP, NAME)], NAME, (62, 62, "ok", "ok")),
    "ec": ("EC P-256 (dual, EC CA)", "ecca", NAME,
           EC_EXT + ["subjectAltName=IP:%s,DNS:%s,DNS:%s" % (IP, IP, NAME)], NAME, (0, 0, "ok", "ok")),
    "wild-ip": ("wildcard DNS:*.0.0.1", "ca", "wild", SERVER_EXT + ["subjectAltName=DNS:*.0.0.1"], NAME,
                (0, 56, "mismatch", "mismatch")),
    "wild-lan": ("wildcard DNS:*.lan (name raspberry.lan)", "ca", "wild", SERVER_EXT + ["subjectAltName=DNS:*.lan"],
                 NAME + ".lan", (56, 0, "mismatch", "mismatch")),
}


class BearSSLFactsTable(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pki = T.Pki()
        p = cls.pki
        p.ca("ca", "Test CA")
        p.ca("v1ca", "Test v1 CA", v1=True)
        p.ca("ecca", "Test EC CA", ec=True)
        # Device side: its own CA, and a client certificate for mutual TLS.
        p.ca("devca", "Device CA")
        p.leaf("dev", "devca", "sensor-1", ["extendedKeyUsage=clientAuth"])
        for v, (_, ca, cn, ext, _, _) in VARIANTS.items():
            if v == "expired":
                p.leaf(v, ca, cn, ext, startdate="20200101000000Z", enddate="20210101000000Z")
            else:
                p.leaf(v, ca, cn, ext, ec=(v == "ec"))
        cls.rows = []

    @classmethod
    def tearDownClass(cls):
        if cls.rows:
            # "# " keeps the table a TAP comment in the test log
            print("# | server certificate | BearSSL by IP | BearSSL by name | OpenSSL by IP | OpenSSL by name |")
            print("# |---|---|---|---|---|")
            for r in cls.rows:
                print("# | %s | %s | %s | %s | %s |" % r)
        cls.pki.cleanup()

    def check_variant(self, v):
        desc, ca, _, _, name, expected = VARIANTS[v]
        p = self.pki
        ca_crt = p.path(ca + ".crt")
        got = []
        with T.SServer(p, p.path(v + ".crt"), p.path(v + ".key"), p.path("devca.crt")) as srv:
            for dial in (IP, name):
                rc, pred = T.doctor_json(["cert", p.path(v + ".crt"), "--ca", ca_crt, "--name", dial])
                live_rc, live = T.doctor_json(["connect", "127.0.0.1:%d" % srv.port, "--ca", ca_crt,
                                               "--cert", p.path("dev.crt"), "--key", p.path("dev.key"),
                                               "--name", dial, "--tls-only", "--no-resume", "--timeout", "10"])
                self.assertTrue(live["tcp"]["ok"], live)
                self.assertEqual(pred["bearssl"]["code"], live["handshake"]["code"],
                                 "%s by %s: doctor cert predicts %s, live BearSSL handshake says %s"
                                 % (v, dial, pred["bearssl"]["error"], live["handshake"]["error"]))
                self.assertEqual(rc, live_rc, "%s by %s: exit status of cert vs connect" % (v, dial))
                word, code = T.openssl_client_verdict(srv.port, ca_crt, p.path("dev.crt"), p.path("dev.key"), dial)
                self.assertEqual(pred["openssl"]["code"], code,
                                 "%s by %s: doctor's OpenSSL column says %s, Python ssl says %s (%d)"
                                 % (v, dial, pred["openssl"]["result"], word, code))
                self.assertEqual(pred["openssl"]["result"], word)
                got.append((live["handshake"]["code"], word))
        br_ip, br_name = got[0][0], got[1][0]
        os_ip, os_name = got[0][1], got[1][1]
        self.rows.append((desc, br_ip or "ok", br_name or "ok", os_ip, os_name))
        self.assertEqual((br_ip, br_name, os_ip, os_name), expected, "%s: the table row changed" % desc)


def _make(v):
    def test(self):
        self.check_variant(v)
    test.__name__ = "test_" + v.replace("-", "_")
    return test


for _v in VARIANTS:
    setattr(BearSSLFactsTable, "test_" + _v.replace("-", "_"), _make(_v))


if __name__ == "__main__":
    unittest.main(verbosity=2)
