"""Listener limits that hold (issue 12): unauthenticated sockets cannot
lock out a device with a valid certificate.

- Idle TCP connections that never send a TLS byte get first_byte_timeout,
  and when max_handshakes is reached the oldest of them is closed to make
  room: a real BearSSL device (edge-device) still connects and publishes.
- max_connections_per_address: an address over its cap is refused (log
  line + metric) while another loopback address is not.
"""

import os
import re
import socket
import subprocess
import sys
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from harness import BRIDGE_WRAPPER, BridgeTestCase, free_port, wait_for  # noqa: E402
import rawmqtt as m  # noqa: E402
from rawmqtt import RawClient, closed_by_peer, daemon_rss_kb  # noqa: E402

MAX_HANDSHAKES = 3
PER_ADDRESS = 3


def idle_from(source, port):
    """A TCP connection from source that never sends a byte."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((source, 0))
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    return s


class TestListenerLimits(BridgeTestCase):
    metrics_port = free_port()
    bridge_sections = {
        "listener": {"first_byte_timeout": "2"},  # handshake_timeout = 3 in the harness
        "limits": {"max_connections": "20", "max_handshakes": str(MAX_HANDSHAKES),
                   "max_connections_per_address": str(PER_ADDRESS)},
        "metrics": {"enabled": "true", "port": str(metrics_port)},
    }

    def scrape(self):
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.metrics_port, timeout=5) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                out[k] = float(v)
        return out

    def test_idle_sockets_do_not_lock_out_a_device(self):
        m0 = self.scrape()
        # Twice max_handshakes idle sockets, from addresses of their own
        # (so the per-address cap does not come into it).
        idle = [idle_from("127.0.0.%d" % (10 + i), self.bridge.port) for i in range(2 * MAX_HANDSHAKES)]
        try:
            wait_for(lambda: self.scrape()["mqtt_edge_bridge_tls_handshakes_in_progress"] == MAX_HANDSHAKES,
                     5, "max_handshakes idle sockets held")
            # The oldest were closed to make room for the newer ones.
            evicted = [s for s in idle[:MAX_HANDSHAKES] if closed_by_peer(s, 2)]
            self.assertEqual(len(evicted), MAX_HANDSHAKES)
            self.bridge.wait_log(r"no TLS byte yet, and max_handshakes reached")
            # A real BearSSL device with a valid certificate gets in anyway.
            sub = self.mosquitto.sub("limits/idle", 1)
            r = self.device("sensor-1").run(*self.creds("sensor-1"), "--pub", "limits/idle=ok",
                                            "--qos", "1", "--timeout", "10")
            self.assertEqual(r.rc, 0, r)
            self.assertEqual(r.events("connack")[0]["rc"], "0")
            self.assertEqual(sub.result(), ["limits/idle ok"])
            # The idle ones that were left get first_byte_timeout, not the
            # whole handshake_timeout, and are told apart in the log.
            t0 = time.monotonic()
            for s in idle[MAX_HANDSHAKES:]:
                self.assertTrue(closed_by_peer(s, 4), "idle socket still open after first_byte_timeout")
            self.assertLess(time.monotonic() - t0, 4)
            self.bridge.wait_log(r"no TLS byte within first_byte_timeout.*reason=\"first_byte_timeout\"")
        finally:
            for s in idle:
                s.close()
        m1 = wait_for(lambda: (lambda x: x if x["mqtt_edge_bridge_tls_handshakes_in_progress"] == 0 else None)(
            self.scrape()), 5, "no handshake left in progress")

        def d(k):
            return m1[k] - m0.get(k, 0)
        self.assertGreaterEqual(d('mqtt_edge_bridge_idle_connections_closed_total{reason="evicted"}'),
                                MAX_HANDSHAKES + 1)  # the device's own connection made room too
        self.assertGreaterEqual(d('mqtt_edge_bridge_idle_connections_closed_total{reason="first_byte_timeout"}'),
                                1)
        self.assertBridgeAlive()

    def test_address_over_its_cap_refused_other_address_not(self):
        m0 = self.scrape()
        held = []
        # One real device connection from 127.0.0.3: past the handshake it
        # still counts for its address.
        dev = RawClient(self.bridge.port, self.pki.ca.ca_crt, self.pki.device("sensor-2"), source="127.0.0.3")
        try:
            sp, rc = dev.connect("lim-a", "sensor-2", self.users["sensor-2"])
            self.assertEqual(rc, 0)
            # Then idle ones up to the cap (opened now, so that none has
            # reached first_byte_timeout yet), and one more.
            held = [idle_from("127.0.0.3", self.bridge.port) for _ in range(PER_ADDRESS - 1)]
            over = idle_from("127.0.0.3", self.bridge.port)
            peer = "127.0.0.3:%d" % over.getsockname()[1]
            try:
                self.assertTrue(closed_by_peer(over, 2), "connection over the per-address cap not closed")
            finally:
                over.close()
            self.bridge.wait_log(r"connection refused.*peer=%s\b.*max_connections_per_address"
                                 % re.escape(peer))
            # Another address is not affected: a full TLS + MQTT session.
            with RawClient(self.bridge.port, self.pki.ca.ca_crt, self.pki.device("sensor-1"),
                           source="127.0.0.2") as other:
                sp, rc = other.connect("lim-b", "sensor-1", self.users["sensor-1"])
                self.assertEqual(rc, 0)
                other.send(m.PINGREQ_PKT)
                other.expect(m.PINGRESP)
            # The established one still works.
            dev.send(m.PINGREQ_PKT)
            dev.expect(m.PINGRESP)
        finally:
            dev.close()
            for s in held:
                s.close()
        # A slot freed is a slot usable again.
        wait_for(lambda: self.scrape()["mqtt_edge_bridge_tls_connections"] == 0, 5, "connections closed")
        with RawClient(self.bridge.port, self.pki.ca.ca_crt, self.pki.device("sensor-2"),
                       source="127.0.0.3") as again:
            self.assertEqual(again.connect("lim-a", "sensor-2", self.users["sensor-2"])[1], 0)
        m1 = self.scrape()
        self.assertEqual(m1['mqtt_edge_bridge_connections_refused_total{reason="max_connections_per_address"}'] -
                         m0['mqtt_edge_bridge_connections_refused_total{reason="max_connections_per_address"}'], 1)
        self.assertBridgeAlive()


# The ESP8266 profile of mqtt-edge-bridge.ini(5), MEMORY, and its figure
# there for one device driven to every limit at once.
PROFILE = {"max_packet_size": "16384", "max_queued_bytes": "65536", "max_inflight_messages": "10",
           "max_subscriptions": "32"}
PROFILE_WORST_KB = 1266  # ~1.2 MiB: the table's "per connected device"


class TestMemoryBound(BridgeTestCase):
    """Issue 12: the configuration bounds add up. One device drives the
    buffers it can reach to their limits at once (its subscriptions at the
    longest filters that fit, its output while it does not read, a packet
    of maximum size half sent); the bridge's RSS must grow by less than
    the man page's worst case for that configuration."""

    bridge_sections = {"limits": dict(PROFILE)}

    def setUp(self):
        if BRIDGE_WRAPPER or os.environ.get("MEB_SANITIZED"):
            self.skipTest("RSS is the wrapper's, or kept in ASan's quarantine")

    def test_one_device_at_every_limit_stays_under_the_table(self):
        P = int(PROFILE["max_packet_size"])
        c = RawClient(self.bridge.port, self.pki.ca.ca_crt, self.pki.device("sensor-1"), rcvbuf=4096)
        try:
            sp, rc = c.connect("mem-1", "sensor-1", self.users["sensor-1"], keepalive=0)
            self.assertEqual(rc, 0)
            # One short subscription for the flood, the rest as long as a
            # packet of max_packet_size allows.
            c.send(m.subscribe(1, [("mem/out", 1)]))
            c.expect(m.SUBACK)
            time.sleep(0.3)
            rss0 = daemon_rss_kb(self.bridge.proc.pid)
            flen = P - 64
            for i in range(int(PROFILE["max_subscriptions"]) - 1):
                f = ("mem/%02d/" % i) + "f" * (flen - 7)
                c.send(m.subscribe(2 + i, [(f, 0)]))
                p = c.expect(m.SUBACK, 10)
                self.assertEqual(p.body[2], 0, "SUBACK %r" % p)
            # The broker sends it more than it reads: 200 messages of
            # nearly P bytes (3 MB); the socket buffer is 4 kB.
            line = "z" * (P - 200)
            subprocess.run(["mosquitto_pub"] + self.mosquitto.client_args() +
                           ["-t", "mem/out", "-q", "1", "-l"], input="".join(line + "\n" for _ in range(200)),
                           text=True, check=True, timeout=60)
            # And a PUBLISH of nearly P bytes, half sent.
            body = m.s16("mem/in") + b"\x00\x01" + b"p" * (P - 200)
            half = m.packet(0x32, body)[: P // 2]
            c.send(half)
            time.sleep(1.0)
            rss1 = daemon_rss_kb(self.bridge.proc.pid)
            print("# RSS %d kB -> %d kB: %+d kB for one device at its limits (table: %d kB)"
                  % (rss0, rss1, rss1 - rss0, PROFILE_WORST_KB))
            self.assertLess(rss1 - rss0, PROFILE_WORST_KB,
                            "one device cost more than mqtt-edge-bridge.ini(5) says it can")
            self.assertBridgeAlive()
        finally:
            c.close()


if __name__ == "__main__":
    unittest.main()
