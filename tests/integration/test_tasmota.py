"""Issue 11: a Tasmota-like device on a listener with
require_certificate = false.

Tasmota's TLS build offers one suite (ECDHE-RSA-AES128-GCM-SHA256), asks
for a 1024-byte Maximum Fragment Length, has no client certificate and
logs in with a username and password that the main broker checks. The
BearSSL device (edge-device) is configured exactly so; the bridge's name
check still protects it (the CA is compiled in). Its identity is then its
username.
"""

import json
import os
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from harness import BRIDGE_BIN, EDGE_DEVICE, BridgeTestCase, DeviceResult, free_port  # noqa: E402


class TestTasmota(BridgeTestCase):
    metrics_port = free_port()
    bridge_sections = {"listener": {"require_certificate": "false"},
                       "metrics": {"enabled": "true", "port": str(metrics_port)}}
    users = dict(BridgeTestCase.users, **{"tasmota-1": "tasmota-pw"})

    def tasmota(self, *extra, password="tasmota-pw", timeout=20):
        args = [EDGE_DEVICE, "--host", "127.0.0.1", "--port", str(self.bridge.port), "--server-name", "127.0.0.1",
                "--ca", self.pki.ca.ca_crt, "--suite", "ECDHE_RSA_WITH_AES_128_GCM_SHA256", "--mfl", "1024",
                "--recv-buf", "1024", "--client-id", "DVES_12AB34", "--username", "tasmota-1",
                "--password", password] + list(extra)
        r = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)
        return DeviceResult(r.returncode, r.stdout, r.stderr)

    def test_connects_and_publishes(self):
        sub = self.mosquitto.sub("tele/tasmota/#", 1)
        r = self.tasmota("--pub", "tele/tasmota/STATE={\"POWER\":\"ON\"}", "--qos", "1")
        self.assertEqual(r.rc, 0, r)
        tls = r.events("tls")[0]
        self.assertEqual(tls["suite"], "ECDHE_RSA_WITH_AES_128_GCM_SHA256", r)
        self.assertEqual(tls["mfl"], "1024", r)
        self.assertEqual(r.events("connack")[0]["rc"], "0")
        self.assertEqual(sub.result(), ['tele/tasmota/STATE {"POWER":"ON"}'])
        self.assertRegex(self.bridge.text(), r'TLS established: TLSv1.2 ECDHE-RSA-AES128-GCM-SHA256, full '
                                             r'handshake, max fragment 1024')

    def test_identity_is_the_username(self):
        p = subprocess.Popen([EDGE_DEVICE, "--host", "127.0.0.1", "--port", str(self.bridge.port),
                              "--ca", self.pki.ca.ca_crt, "--suite", "ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                              "--mfl", "1024", "--client-id", "DVES_12AB34", "--username", "tasmota-1",
                              "--password", "tasmota-pw", "--sub", "cmnd/tasmota/POWER:1", "--expect", "1",
                              "--timeout", "15"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            from harness import wait_for

            def listed():
                out = subprocess.run([BRIDGE_BIN, "--status", "--json", "--config", self.bridge.conf],
                                     stdout=subprocess.PIPE, text=True, timeout=10).stdout
                return [d for d in json.loads(out or "{}").get("devices", []) if d["connected"]]
            devs = wait_for(listed, 10, "the device in --status")
            self.assertEqual(devs[0]["cn"], "tasmota-1")
            self.assertIsNone(devs[0]["certificate_expiry"])
            self.assertEqual(devs[0]["max_fragment_length"], 1024)
            self.mosquitto.pub("cmnd/tasmota/POWER", "TOGGLE", qos=1)
            out, err = p.communicate(timeout=20)
            self.assertEqual(p.returncode, 0, out + err)
            self.assertIn("payload=TOGGLE", out)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()

    def test_wrong_password_is_refused_by_the_broker(self):
        r = self.tasmota(password="wrong", timeout=20)
        self.assertEqual(r.rc, 3, r)
        self.assertIn(r.events("connack")[0]["rc"], ("4", "5"))
        self.assertBridgeAlive()


if __name__ == "__main__":
    unittest.main()
