"""Issue 11: certificates that warn before they expire, and the device
inventory of --status.

A device whose client certificate expires in 10 days (BearSSL,
edge-device) connects: the bridge logs a warning and exports the expiry
as mqtt_edge_bridge_certificate_expiry_timestamp_seconds{kind="device"};
the listener certificate and the CA are exported too. --status lists the
connected device with its TLS facts and counters, and the device that
failed its handshake with the reason; --json says the same for scripts.
"""

import json
import os
import subprocess
import sys
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from harness import BRIDGE_BIN, BridgeTestCase, free_port, wait_for  # noqa: E402
from test_metrics import parse  # noqa: E402

METRIC = "mqtt_edge_bridge_certificate_expiry_timestamp_seconds"


class TestInventory(BridgeTestCase):
    metrics_port = free_port()
    bridge_sections = {"metrics": {"enabled": "true", "bind_address": "127.0.0.1", "port": str(metrics_port)},
                       "listener": {"expiry_warning_days": "20"}}
    users = dict(BridgeTestCase.users, **{"sensor-exp": "pw-exp"})

    def scrape(self):
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.metrics_port, timeout=10) as r:
            return parse(r.read().decode())[0]

    def status(self, *extra):
        r = subprocess.run([BRIDGE_BIN, "--status", "--config", self.bridge.conf] + list(extra),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout

    def test_device_certificate_expiring_in_10_days(self):
        crt, key = self.pki.device("sensor-exp", days=10)
        before = self.bridge.log_size()
        r = self.device("sensor-exp", cert=(crt, key)).run(*self.creds("sensor-exp"), "--pub", "exp/t=1")
        self.assertEqual(r.rc, 0, r)
        line = self.bridge.wait_log(r'device certificate "sensor-exp" expires in (9|10) days', since=before)
        self.assertTrue(line)
        # once a day, not per connection
        before = self.bridge.log_size()
        self.assertEqual(self.device("sensor-exp", cert=(crt, key)).run(*self.creds("sensor-exp")).rc, 0)
        self.bridge.wait_log(r'TLS established.*cn="sensor-exp"', since=before)
        self.assertNotIn("expires in", self.bridge.text()[before:])

        s = self.scrape()
        v = s['%s{kind="device",name="sensor-exp"}' % METRIC]
        self.assertAlmostEqual(v, time.time() + 10 * 86400, delta=2 * 86400)
        # the listener certificate (CN=127.0.0.1, 30 days) and the CA too;
        # the test CA's 30 days are beyond the 20-day window: no warning
        self.assertIn('%s{kind="listener",name="127.0.0.1"}' % METRIC, s)
        self.assertIn('%s{kind="ca",name="Test CA ca"}' % METRIC, s)
        self.assertNotIn('ca certificate "Test CA ca"', self.bridge.text())

    def test_status_lists_devices_and_failures(self):
        # a device that fails: a certificate from a CA the bridge does not trust
        fcrt, fkey = self.pki.foreign_device("intruder")
        bad = self.device("intruder", cert=(fcrt, fkey)).run("--timeout", "5")
        self.assertNotEqual(bad.rc, 0, bad)
        # a device that stays connected while --status runs
        dev = self.device("sensor-1").start(*self.creds("sensor-1"), "--pub", "inv/t=1", "--qos", "1",
                                            "--sub", "inv/cmd:1", "--expect", "1", "--timeout", "20")
        try:
            wait_for(lambda: any(d["cn"] == "sensor-1" and d["connected"] and d["messages_from_device"] >= 1
                                 for d in json.loads(self.status("--json"))["devices"]), 10, "sensor-1 in --status")
            js = json.loads(self.status("--json"))
            d = next(d for d in js["devices"] if d["cn"] == "sensor-1")
            self.assertEqual(d["client_id"], "sensor-1")
            self.assertTrue(d["address"].startswith("127.0.0.1:"))
            self.assertEqual(d["tls_version"], "TLSv1.2")
            self.assertTrue(d["cipher"].startswith("ECDHE-"), d)
            self.assertEqual(d["max_fragment_length"], 512)
            self.assertEqual(d["sni"], "127.0.0.1")
            self.assertIn(d["resumed"], (True, False))
            self.assertGreater(d["certificate_expiry"], time.time())
            self.assertLessEqual(abs(d["since"] - time.time()), 60)
            self.assertGreaterEqual(d["last_activity"], d["since"])
            fails = [f for f in js["handshake_failures"] if "intruder" in (f["subject"] or "")]
            self.assertTrue(fails, js["handshake_failures"])
            self.assertIn("unable to get local issuer certificate", fails[0]["reason"])
            self.assertIn({"kind": "listener", "name": "127.0.0.1"},
                          [{k: c[k] for k in ("kind", "name")} for c in js["certificates"]])
            text = self.status()
            self.assertIn("devices (times UTC):", text)
            self.assertRegex(text, r"sensor-1\s+sensor-1\s+127\.0\.0\.1:\d+ .* TLSv1\.2 +ECDHE-\S+ +512 ")
            self.assertIn("recent TLS handshake failures:", text)
            self.assertRegex(text, r"127\.0\.0\.1:\d+ +\S*CN ?= ?intruder.*: unable to get local issuer")
            self.mosquitto.pub("inv/cmd", "go", qos=1)
            out, err = dev.communicate(timeout=20)
            self.assertEqual(dev.returncode, 0, out + err)
        finally:
            if dev.poll() is None:
                dev.kill()
                dev.wait()


if __name__ == "__main__":
    unittest.main()
