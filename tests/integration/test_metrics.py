"""The Prometheus endpoint and --status (issue 5).

The endpoint is scraped while real devices (edge-device, BearSSL) send and
receive through the bridge, and the counters must move as the traffic
does. The HTTP side is checked for the bounds metrics.h promises.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time
import unittest
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from harness import BRIDGE_BIN, BridgeTestCase, free_port, wait_for  # noqa: E402

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[a-zA-Z_][a-zA-Z0-9_]*="[^"\\]*"'
                    r'(,[a-zA-Z_][a-zA-Z0-9_]*="[^"\\]*")*\})? (-?[0-9.e+]+)$')


def parse(text):
    samples, types, helps = {}, {}, set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helps.add(line.split()[2])
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            types[name] = kind
        elif line:
            m = SAMPLE.match(line)
            if not m:
                raise AssertionError("not a Prometheus sample: %r" % line)
            samples[m.group(1) + (m.group(2) or "")] = float(m.group(4))
    return samples, types, helps


class TestMetrics(BridgeTestCase):
    metrics_port = free_port()
    bridge_sections = {"metrics": {"enabled": "true", "bind_address": "127.0.0.1",
                                   "port": str(metrics_port)}}

    def url(self, path="/metrics"):
        return "http://127.0.0.1:%d%s" % (self.metrics_port, path)

    def scrape(self):
        with urllib.request.urlopen(self.url(), timeout=10) as r:
            self.assertEqual(r.status, 200)
            self.assertEqual(r.headers["Content-Type"], "text/plain; version=0.0.4; charset=utf-8")
            return parse(r.read().decode())[0]

    def raw(self, data, shut=True):
        """Send raw bytes, return everything the server sends until it closes."""
        with socket.create_connection(("127.0.0.1", self.metrics_port), timeout=10) as s:
            s.sendall(data)
            if shut:
                s.shutdown(socket.SHUT_WR)
            out = b""
            while True:
                b = s.recv(65536)
                if not b:
                    return out.decode(errors="replace")
                out += b

    def test_format_follows_prometheus_conventions(self):
        with urllib.request.urlopen(self.url(), timeout=10) as r:
            samples, types, helps = parse(r.read().decode())
        for key in samples:
            name = key.split("{")[0]
            self.assertIn(name, types, key)
            self.assertIn(name, helps, key)
            if types[name] == "counter":
                self.assertTrue(name.endswith("_total"), name)
            else:
                self.assertFalse(name.endswith("_total"), name)
        for needed in ("mqtt_edge_bridge_devices_connected", "process_start_time_seconds",
                       'mqtt_edge_bridge_tls_handshakes_total{type="resumed"}',
                       'mqtt_edge_bridge_tls_handshakes_failed_total{reason="certificate"}',
                       'mqtt_edge_bridge_messages_total{direction="to_device",qos="2"}',
                       'mqtt_edge_bridge_bytes_total{direction="from_device"}',
                       'mqtt_edge_bridge_upstream_sessions{state="connected"}',
                       'mqtt_edge_bridge_connections_refused_total{reason="max_connections"}',
                       "mqtt_edge_bridge_spool_messages"):
            self.assertIn(needed, samples)
        self.assertLessEqual(abs(samples["process_start_time_seconds"] - time.time()), 3600)

    def test_counters_move_with_traffic(self):
        m0 = self.scrape()

        # A listening device: counted as connected, with an upstream session.
        dev = self.device("sensor-3").start(*self.creds("sensor-3"), "--sub", "met/down:1", "--expect", "1",
                                            "--timeout", "20")
        wait_for(lambda: self.scrape()["mqtt_edge_bridge_devices_connected"] >= 1, 10, "device counted")
        m1 = self.scrape()
        self.assertGreaterEqual(m1['mqtt_edge_bridge_upstream_sessions{state="connected"}'], 1)
        time.sleep(0.7)

        # Up: 3 QoS 1 and 2 QoS 0 messages, each run with a full handshake.
        r = self.device("sensor-1").run(*self.creds("sensor-1"), "--count", "3", "--topic", "met/up", "--qos", "1")
        self.assertEqual(r.rc, 0, r)
        r = self.device("sensor-2").run(*self.creds("sensor-2"), "--count", "2", "--topic", "met/up", "--qos", "0")
        self.assertEqual(r.rc, 0, r)
        # Down: one QoS 1 message to the listening device.
        self.mosquitto.pub("met/down", "x" * 100, qos=1)
        out, err = dev.communicate(timeout=30)
        self.assertEqual(dev.returncode, 0, out + err)
        # A device from a CA nobody trusts: a failed handshake.
        bad = self.device("sensor-1", cert=self.pki.foreign_device("sensor-1")).run("--timeout", "5")
        self.assertNotEqual(bad.rc, 0, bad)

        def moved():
            m = self.scrape()
            return m if m['mqtt_edge_bridge_messages_total{direction="to_device",qos="1"}'] > \
                m0['mqtt_edge_bridge_messages_total{direction="to_device",qos="1"}'] else None
        m2 = wait_for(moved, 10, "the to_device counter")

        def d(key):
            return m2[key] - m0[key]
        self.assertEqual(d('mqtt_edge_bridge_messages_total{direction="from_device",qos="1"}'), 3)
        self.assertEqual(d('mqtt_edge_bridge_messages_total{direction="from_device",qos="0"}'), 2)
        self.assertEqual(d('mqtt_edge_bridge_messages_total{direction="to_device",qos="1"}'), 1)
        self.assertGreater(d('mqtt_edge_bridge_bytes_total{direction="from_device"}'), 5 * len("met/up"))
        self.assertGreater(d('mqtt_edge_bridge_bytes_total{direction="to_device"}'), 100)
        self.assertGreaterEqual(d('mqtt_edge_bridge_tls_handshakes_total{type="full"}') +
                                d('mqtt_edge_bridge_tls_handshakes_total{type="resumed"}'), 3)
        self.assertGreaterEqual(d("mqtt_edge_bridge_connections_accepted_total"), 4)
        failed = sum(d('mqtt_edge_bridge_tls_handshakes_failed_total{reason="%s"}' % k)
                     for k in ("certificate", "timeout", "other"))
        self.assertGreaterEqual(failed, 1)

        # Everyone gone: the gauges come back down.
        wait_for(lambda: self.scrape()["mqtt_edge_bridge_devices_connected"] == 0, 10, "devices gone")

    def test_status_prints_the_same_for_a_person(self):
        r = subprocess.run([BRIDGE_BIN, "--status", "--config", self.bridge.conf], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, timeout=20)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"^mqtt-edge-bridge \S+, running since ")
        for word in ("devices connected", "upstream sessions", "TLS handshakes", "messages from devices",
                     "messages to devices", "refused", "spool", "reloads"):
            self.assertIn(word, r.stdout)

    def test_status_when_unreachable_or_off(self):
        conf = os.path.join(self.tmp, "status-off.ini")
        with open(self.bridge.conf) as f:
            text = f.read()
        with open(conf, "w") as f:
            f.write(text.replace("enabled = true", "enabled = false"))
        r = subprocess.run([BRIDGE_BIN, "--status", "--config", conf], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, timeout=20)
        self.assertEqual(r.returncode, 1)
        self.assertIn("enabled = true", r.stderr)
        with open(conf, "w") as f:
            f.write(text.replace("port = %d" % self.metrics_port, "port = %d" % free_port()))
        r = subprocess.run([BRIDGE_BIN, "--status", "--config", conf], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, timeout=20)
        self.assertEqual(r.returncode, 3, r.stderr)
        self.assertIn("Connection refused", r.stderr)

    def test_http_bounds(self):
        self.assertTrue(self.raw(b"GET / HTTP/1.0\r\n\r\n").startswith("HTTP/1.0 404 "))
        self.assertTrue(self.raw(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n").startswith("HTTP/1.0 200 "))
        r = self.raw(b"POST /metrics HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc")
        self.assertTrue(r.startswith("HTTP/1.0 405 "), r)
        self.assertIn("Allow: GET", r)
        self.assertTrue(self.raw(b"hello\r\n\r\n").startswith("HTTP/1.0 400 "))
        self.assertTrue(self.raw(b"GET /metrics HTTP/1.0\r\nX: " + b"a" * 5000 + b"\r\n\r\n")
                        .startswith("HTTP/1.0 431 "))
        # A request that never ends is cut off after the deadline.
        t0 = time.monotonic()
        self.assertEqual(self.raw(b"GET /metr", shut=False), "")
        self.assertLess(time.monotonic() - t0, 9)
        # More scrapers at once than allowed: the extra ones are closed,
        # and the endpoint still answers afterwards.
        socks = [socket.create_connection(("127.0.0.1", self.metrics_port), timeout=5) for _ in range(24)]
        time.sleep(0.3)
        for s in socks:
            s.close()
        self.scrape()
        self.assertBridgeAlive()

    def test_idle_connections_do_not_stop_a_scrape(self):
        # Issue 12: 16 idle local connections used to stop the endpoint.
        # 32 (and then more than METRICS_MAX_CLIENTS = 64) held open
        # without a request: a real scrape still gets its answer at once,
        # because the oldest idle one is closed to make room.
        for n in (32, 80):
            socks = [socket.create_connection(("127.0.0.1", self.metrics_port), timeout=5)
                     for _ in range(n)]
            try:
                t0 = time.monotonic()
                samples = self.scrape()
                self.assertIn("mqtt_edge_bridge_devices_connected", samples)
                self.assertLess(time.monotonic() - t0, 1.5, "%d idle: the scrape waited for a slot" % n)
                # And the idle ones are cut off by the read timeout
                # (2 s), not left holding a slot.
                t0 = time.monotonic()
                for s in socks:
                    s.settimeout(max(0.1, t0 + 5 - time.monotonic()))
                    try:
                        self.assertEqual(s.recv(1), b"")
                    except ConnectionError:
                        pass
                self.assertLess(time.monotonic() - t0, 5, "%d idle: not closed by the read timeout" % n)
            finally:
                for s in socks:
                    s.close()
        self.assertBridgeAlive()

    def test_reload_turns_the_endpoint_off_and_on(self):
        with open(self.bridge.conf) as f:
            good = f.read()
        try:
            with open(self.bridge.conf, "w") as f:
                f.write(good.replace("enabled = true", "enabled = false"))
            self.bridge.proc.send_signal(signal.SIGHUP)
            self.bridge.wait_log(r"metrics: endpoint closed")
            with self.assertRaises(urllib.error.URLError):
                urllib.request.urlopen(self.url(), timeout=5)
        finally:
            with open(self.bridge.conf, "w") as f:
                f.write(good)
        n = self.bridge.text().count("metrics: serving")
        self.bridge.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: self.bridge.text().count("metrics: serving") > n, 10, "endpoint back")
        m = self.scrape()
        self.assertGreaterEqual(m['mqtt_edge_bridge_config_reloads_total{result="success"}'], 2)
        self.assertEqual(m["mqtt_edge_bridge_config_last_reload_successful"], 1)


if __name__ == "__main__":
    unittest.main()
