"""PROXY protocol on the device listener (issue 14): behind a TCP load
balancer, the device's own address is what the log, the metrics and
max_connections_per_address see.

- proxy_protocol = v2: a header from the trusted balancer (127.0.0.1)
  names the device; a BearSSL-like TLS client then connects as usual and
  the log shows the device's address; the per-address cap counts the
  device's address, not the balancer's; a header that comes in pieces
  works; a LOCAL header (a health check) is accepted.
- refused, logged and counted: no header, a v1 header, a broken one, a
  connection from outside proxy_from, a header that never completes
  (first_byte_timeout).
- proxy_protocol = off: a connection that starts with a header is refused
  with a log line that says so, not a puzzling TLS error.
"""

import os
import socket
import struct
import subprocess
import sys
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from harness import BridgeTestCase, free_port, wait_for  # noqa: E402
import rawmqtt as m  # noqa: E402
from rawmqtt import RawClient, closed_by_peer  # noqa: E402

SIG = b"\r\n\r\n\x00\r\nQUIT\n"
PER_ADDRESS = 2


def v2_header(src, sport, dst="127.0.0.1", dport=8884, command=1):
    """haproxy's send-proxy-v2 for TCP over IPv4 (doc/proxy-protocol.txt §2.2)."""
    if command == 0:
        return SIG + bytes([0x20, 0x00]) + struct.pack("!H", 0)
    body = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    return SIG + bytes([0x21, 0x11]) + struct.pack("!H", len(body)) + body


def v1_header(src, sport, dst="127.0.0.1", dport=8884):
    return ("PROXY TCP4 %s %s %d %d\r\n" % (src, dst, sport, dport)).encode()


class Scrape:
    def scrape(self):
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.metrics_port, timeout=5) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                out[k] = float(v)
        return out

    def refused(self, reason):
        return self.scrape().get('mqtt_edge_bridge_connections_refused_total{reason="%s"}' % reason, 0)


class TestProxyV2(BridgeTestCase, Scrape):
    metrics_port = free_port()
    bridge_sections = {
        "listener": {"proxy_protocol": "v2", "proxy_from": "127.0.0.1/32 10.0.0.0/8",
                     "first_byte_timeout": "1"},
        "limits": {"max_connections_per_address": str(PER_ADDRESS)},
        "metrics": {"enabled": "true", "port": str(metrics_port)},
    }

    def client(self, name, header, source=None):
        return RawClient(self.bridge.port, self.pki.ca.ca_crt, self.pki.device(name), preamble=header,
                         source=source)

    def test_device_address_in_log_and_connack(self):
        since = self.bridge.log_size()
        before = self.scrape()["mqtt_edge_bridge_proxy_headers_total"]
        with self.client("sensor-1", v2_header("192.0.2.7", 40001)) as c:
            self.assertEqual(c.connect("sensor-1", *self.creds("sensor-1")[1::2]), (0, 0))
            self.bridge.wait_log(r'TLS established.*192\.0\.2\.7:40001|192\.0\.2\.7:40001.*TLS established',
                                 since=since)
            c.send(m.publish("t/proxy", b"hello", qos=1, pid=1))
            c.expect(m.PUBACK)
            # --status lists the device by its own address, as does GET /status.
            st = subprocess.run([os.environ.get("BRIDGE_BIN", "mqtt-edge-bridge"), "--status", "--config",
                                 self.bridge.conf], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, timeout=20)
            self.assertEqual(st.returncode, 0, st.stdout)
            self.assertRegex(st.stdout, r"sensor-1 +sensor-1 +192\.0\.2\.7:40001 ")
            self.assertRegex(st.stdout, r"PROXY protocol +\d+ headers accepted")
            with urllib.request.urlopen("http://127.0.0.1:%d/status" % self.metrics_port, timeout=5) as r:
                self.assertIn("192.0.2.7:40001", r.read().decode())
        self.assertEqual(self.scrape()["mqtt_edge_bridge_proxy_headers_total"], before + 1)
        # The balancer's own address named nowhere for this device.
        text = self.bridge.text()[since:]
        self.assertNotRegex(text, r"PEER_ADDRESS=127\.0\.0\.1|peer=127\.0\.0\.1:\d+.*sensor-1")

    def test_per_address_limit_counts_the_device(self):
        since = self.bridge.log_size()
        held = []
        try:
            for i in range(PER_ADDRESS):
                c = self.client("sensor-2", v2_header("198.51.100.1", 41000 + i))
                held.append(c)
                self.assertEqual(c.connect("sensor-2-%d" % i, *self.creds("sensor-2")[1::2])[1], 0)
            # One more from that device address: refused, logged with it.
            refused = self.refused("max_connections_per_address")
            s = socket.create_connection(("127.0.0.1", self.bridge.port), timeout=5)
            s.sendall(v2_header("198.51.100.1", 41999))
            self.assertTrue(closed_by_peer(s, 5))
            s.close()
            self.bridge.wait_log(r"198\.51\.100\.1:41999.*max_connections_per_address|"
                                 r"max_connections_per_address.*198\.51\.100\.1:41999", since=since)
            self.assertEqual(self.refused("max_connections_per_address"), refused + 1)
            # Another device behind the same balancer is not affected.
            with self.client("sensor-3", v2_header("198.51.100.2", 42000)) as c:
                self.assertEqual(c.connect("sensor-3", *self.creds("sensor-3")[1::2]), (0, 0))
        finally:
            for c in held:
                c.close()

    def test_header_in_pieces(self):
        h = v2_header("203.0.113.9", 43000)
        raw = socket.create_connection(("127.0.0.1", self.bridge.port), timeout=5)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            since = self.bridge.log_size()
            for piece in (h[:5], h[5:14], h[14:20], h[20:]):
                raw.sendall(piece)
                time.sleep(0.05)  # separate segments: the listener sees the header in parts
            ctx = m.client_context(self.pki.ca.ca_crt, self.pki.device("sensor-1"))
            tls = ctx.wrap_socket(raw)
            tls.sendall(m.connect("sensor-1-pieces", username="sensor-1", password="pw-1"))
            data = tls.recv(4)
            self.assertEqual(data[:1], b"\x20")
            self.assertEqual(data[3], 0)
            self.bridge.wait_log(r"203\.0\.113\.9:43000", since=since)
            tls.close()
        finally:
            raw.close()

    def test_local_header_is_a_health_check(self):
        before = self.scrape()["mqtt_edge_bridge_proxy_headers_total"]
        with self.client("sensor-1", v2_header(None, 0, command=0)) as c:
            self.assertEqual(c.connect("sensor-1-local", *self.creds("sensor-1")[1::2]), (0, 0))
        self.assertEqual(self.scrape()["mqtt_edge_bridge_proxy_headers_total"], before + 1)

    def test_refused_without_a_valid_header(self):
        cases = [
            (b"\x16\x03\x01\x00\x05hello", r"no valid PROXY header.*TLS record"),
            (v1_header("192.0.2.8", 1), r"PROXY v1 header.*proxy_protocol = v2"),
            (SIG + bytes([0x21, 0x11, 0x00, 0x04]) + b"\x00" * 4, r"address block shorter"),
        ]
        for data, pattern in cases:
            with self.subTest(pattern=pattern):
                since = self.bridge.log_size()
                refused = self.refused("proxy_header")
                s = socket.create_connection(("127.0.0.1", self.bridge.port), timeout=5)
                s.sendall(data)
                self.assertTrue(closed_by_peer(s, 5))
                s.close()
                self.bridge.wait_log(pattern, since=since)
                self.assertEqual(self.refused("proxy_header"), refused + 1)
        self.assertBridgeAlive()

    def test_untrusted_source_refused(self):
        since = self.bridge.log_size()
        refused = self.refused("proxy_untrusted")
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.5", 0))
        s.settimeout(5)
        s.connect(("127.0.0.1", self.bridge.port))
        s.sendall(v2_header("192.0.2.1", 1))
        self.assertTrue(closed_by_peer(s, 5))
        s.close()
        self.bridge.wait_log(r"127\.0\.0\.5:\d+.*not in proxy_from|not in proxy_from.*127\.0\.0\.5", since=since)
        self.assertEqual(self.refused("proxy_untrusted"), refused + 1)

    def test_incomplete_header_times_out(self):
        since = self.bridge.log_size()
        s = socket.create_connection(("127.0.0.1", self.bridge.port), timeout=5)
        s.sendall(v2_header("192.0.2.1", 1)[:20])
        t0 = time.monotonic()
        self.assertTrue(closed_by_peer(s, 5))
        self.assertLess(time.monotonic() - t0, 4)
        s.close()
        self.bridge.wait_log(r"no complete PROXY header within first_byte_timeout", since=since)


class TestProxyOff(BridgeTestCase, Scrape):
    metrics_port = free_port()
    bridge_sections = {"metrics": {"enabled": "true", "port": str(metrics_port)}}

    def test_header_while_off_is_named(self):
        for header in (v2_header("192.0.2.7", 1), v1_header("192.0.2.7", 1)):
            since = self.bridge.log_size()
            refused = self.refused("proxy_unexpected")
            s = socket.create_connection(("127.0.0.1", self.bridge.port), timeout=5)
            s.sendall(header)
            self.assertTrue(closed_by_peer(s, 5))
            s.close()
            self.bridge.wait_log(r"starts with a PROXY protocol header, but \[listener\] proxy_protocol = off",
                                 since=since)
            self.assertEqual(self.refused("proxy_unexpected"), refused + 1)
        # A device without a balancer is unaffected.
        with RawClient(self.bridge.port, self.pki.ca.ca_crt, self.pki.device("sensor-1")) as c:
            self.assertEqual(c.connect("sensor-1", "sensor-1", "pw-1"), (0, 0))


if __name__ == "__main__":
    unittest.main()
