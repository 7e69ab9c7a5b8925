"""Hostile and broken input (issue 7): bad input costs the sender only.

Every test runs while a second, good BearSSL device (the witness) publishes
numbered QoS 1 messages, and asserts that all of them reach the main
broker in order; the hostile connection must be closed, the bridge log
must say why, and the daemon must stay alive.

Raw MQTT goes over Python's ssl module with a device certificate
(tests/lib/rawmqtt.py), so packets can be built wrong on purpose.
"""

import contextlib
import os
import re
import shutil
import socket
import ssl
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from harness import Bridge, BridgeTestCase, Device, Mosquitto, TestPki, free_port, wait_for  # noqa: E402
import rawmqtt as m  # noqa: E402
from rawmqtt import RawClient, Witness  # noqa: E402

MAX_PACKET = 2048


class HostileBase(BridgeTestCase):
    """Helpers; no tests here."""

    def raw(self, name="sensor-1", cert=None, **kw):
        return RawClient(self.bridge.port, self.pki.ca.ca_crt,
                         cert or self.pki.device(name), **kw)

    def raw_connected(self, client_id, name="sensor-1", **kw):
        c = self.raw(name)
        sp, rc = c.connect(client_id, name, self.users[name], **kw)
        self.assertEqual(rc, 0, "CONNACK %d for %s" % (rc, client_id))
        return c

    def witness(self, tag, count=20, interval_ms=100):
        return Witness(self, "sensor-3", "witness/" + tag, count=count, interval_ms=interval_ms,
                       creds=self.creds("sensor-3"))

    @contextlib.contextmanager
    def case(self, *label, **kw):
        """Like subTest, but a failure fails the test (tap_runner.py does
        not report subtests) and names the case."""
        try:
            yield
        except AssertionError as e:
            raise AssertionError("[case %s] %s" % (" ".join(map(str, label + tuple(
                "%s=%s" % kv for kv in kw.items()))), e)) from None

    def metric(self, name):
        """A counter from the bridge's Prometheus endpoint (sum over labels
        matching name, which may include a {label="..."} part)."""
        import urllib.request
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.metrics_port, timeout=5) as r:
            text = r.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + " ") or (line.startswith(name + "{") and "{" not in name):
                total += float(line.rsplit(" ", 1)[1])
        return total

    @staticmethod
    def peer_of(c):
        return "127.0.0.1:%d" % c.sock.getsockname()[1]

    def assert_dropped(self, c, reason_rx, timeout=5, what="device disconnected"):
        """c is closed by the bridge within timeout, and the bridge logs
        `what` for this peer with a reason matching reason_rx."""
        peer = self.peer_of(c)
        try:
            closed = c.wait_closed(timeout)
        finally:
            c.close()
        self.assertTrue(closed, "the bridge kept the connection open")
        self.bridge.wait_log(r"%s.*peer=%s\b.*reason=\"[^\"]*%s" % (what, re.escape(peer), reason_rx), 5)
        self.assertBridgeAlive()

    def _tls_rejected(self, cert, tls_max, reason_rx):
        raw = socket.create_connection(("127.0.0.1", self.bridge.port), timeout=5)
        peer = "127.0.0.1:%d" % raw.getsockname()[1]
        ctx = m.client_context(self.pki.ca.ca_crt, cert, tls_max)
        try:
            with self.assertRaises((ssl.SSLError, ConnectionError, m.Closed)):
                s = ctx.wrap_socket(raw)
                # TLS 1.3: the client finishes first and hears the
                # rejection on its first read.
                s.sendall(m.connect("h-tls", username="sensor-1", password="pw-1"))
                d = s.recv(10)
                if not d:
                    raise m.Closed("EOF")
                self.fail("the bridge answered: %r" % d)
        finally:
            raw.close()
        self.bridge.wait_log(r"TLS handshake failed.*peer=%s\b.*reason=\"[^\"]*(%s)" % (re.escape(peer), reason_rx))
        self.assertBridgeAlive()


class TestHostileInput(HostileBase):
    metrics_port = free_port()
    bridge_sections = {"limits": {"max_packet_size": str(MAX_PACKET)},
                       "metrics": {"enabled": "true", "port": str(metrics_port)}}

    def test_protocol_errors_counted(self):
        before = self.metric("mqtt_edge_bridge_protocol_errors_total")
        with self.witness("counted"):
            for i in range(3):
                c = self.raw_connected("h-count")
                c.send(m.publish("a/#", b"x"))
                self.assert_dropped(c, "wildcard")
        self.assertEqual(self.metric("mqtt_edge_bridge_protocol_errors_total") - before, 3)

    # -- framing ---------------------------------------------------------

    def test_remaining_length_over_4_bytes(self):
        with self.witness("rl5"):
            c = self.raw_connected("h-rl5")
            # five length bytes, all with the continuation bit but the last (§2.2.3)
            c.send(b"\x30\xff\xff\xff\xff\x01")
            self.assert_dropped(c, "remaining length over 4 bytes")

    def test_remaining_length_over_4_bytes_before_connect(self):
        with self.witness("rl5pre"):
            c = self.raw()
            c.send(b"\x10\x80\x80\x80\x80\x01")
            self.assert_dropped(c, "remaining length|max_packet_size")

    def test_remaining_length_over_max_packet_size_header_only(self):
        # The header alone announces too much: the bridge must not wait
        # for (or buffer) the body.
        with self.witness("big-hdr"):
            c = self.raw_connected("h-bighdr")
            c.send(b"\x30" + m.rl(MAX_PACKET * 4))
            self.assert_dropped(c, "max_packet_size", timeout=3)

    def test_packet_over_max_packet_size(self):
        with self.witness("big"):
            c = self.raw_connected("h-big")
            sub = self.mosquitto.sub("hostile/big", 1, timeout=3)
            try:
                c.send(m.publish("hostile/big", b"x" * (MAX_PACKET + 100), qos=0))
            except (ssl.SSLError, OSError):
                pass  # the bridge may close while we still write
            self.assert_dropped(c, "max_packet_size")
        self.assertEqual(sub.result(), [], "an oversized PUBLISH went upstream")

    def test_packet_exactly_max_packet_size_accepted(self):
        # The limit is inclusive: a packet of exactly max_packet_size bytes passes.
        with self.witness("edge"):
            c = self.raw_connected("h-edge")
            topic = "hostile/edge"
            fixed = 1 + len(m.rl(MAX_PACKET)) + 2 + len(topic) + 2
            pkt = m.publish(topic, b"y" * (MAX_PACKET - fixed), qos=1, pid=9)
            self.assertEqual(len(pkt), MAX_PACKET)
            sub = self.mosquitto.sub(topic, 1)
            c.send(pkt)
            self.assertEqual(c.expect(m.PUBACK).pid, 9)
            got = sub.result()
            self.assertEqual(len(got), 1)
            c.close()

    # -- PUBLISH content -------------------------------------------------

    def test_invalid_utf8_in_topic(self):
        bad = {
            "invalid byte": b"a/\xff\xfe",
            "overlong": b"a/\xc0\xaf",
            "surrogate": b"a/\xed\xa0\x80",
            "truncated": b"a/\xe2\x82",
            "U+0000": b"a/\x00b",
        }
        with self.witness("utf8", count=40):
            for label, topic in bad.items():
                with self.case(label):
                    c = self.raw_connected("h-utf8")
                    c.send(m.publish(topic, b"bad", qos=1, pid=3))
                    self.assert_dropped(c, "not UTF-8|UTF-8")

    def test_wildcards_in_publish_topic(self):
        with self.witness("wild", count=40):
            sub = self.mosquitto.sub("hostile/#", 1, timeout=4)
            for topic in ("hostile/+", "hostile/#", "hostile/a+b", "#"):
                with self.case(topic):
                    c = self.raw_connected("h-wild")
                    c.send(m.publish(topic, b"wild", qos=1, pid=4))
                    self.assert_dropped(c, "wildcard")
        self.assertEqual(sub.result(), [])

    def test_qos3(self):
        with self.witness("qos3"):
            c = self.raw_connected("h-qos3")
            c.send(bytes([0x36]) + m.rl(6) + m.s16("a") + b"\x00\x01" + b"x")
            self.assert_dropped(c, "QoS 3")

    def test_zero_length_topic(self):
        with self.witness("empty-topic"):
            for qos in (0, 1):
                with self.case(qos=qos):
                    c = self.raw_connected("h-empty")
                    c.send(m.publish(b"", b"x", qos=qos, pid=5))
                    self.assert_dropped(c, "topic name empty")

    # -- fixed header flags (§2.2.2) -------------------------------------

    def test_reserved_flag_bits(self):
        cases = {
            "SUBSCRIBE flags 0000": m.packet(0x80, b"\x00\x01" + m.s16("a") + b"\x00"),
            "UNSUBSCRIBE flags 0000": m.packet(0xA0, b"\x00\x01" + m.s16("a")),
            "PUBREL flags 0000": m.packet(0x60, b"\x00\x01"),
            "PUBACK flags 0010": m.packet(0x42, b"\x00\x01"),
            "PINGREQ flags 0001": b"\xc1\x00",
            "DISCONNECT flags 1000": b"\xe8\x00",
            "PUBLISH DUP on QoS 0": m.publish("hostile/dup", b"x", qos=0, dup=True),
            "SUBSCRIBE QoS byte reserved bits": m.packet(0x82, b"\x00\x01" + m.s16("a") + b"\x04"),
        }
        with self.witness("flags", count=50):
            for label, pkt in cases.items():
                with self.case(label):
                    c = self.raw_connected("h-flags")
                    c.send(pkt)
                    self.assert_dropped(c, "flags|DUP|QoS|reserved")

    def test_connect_reserved_flag(self):
        with self.witness("cflags"):
            c = self.raw()
            c.send(m.connect("h-cflags", username="sensor-1", password="pw-1", flags_extra=0x01))
            self.assert_dropped(c, "reserved flag")

    def test_reserved_packet_types(self):
        with self.witness("types"):
            for first in (0x00, 0xF0):
                with self.case(first=first):
                    c = self.raw_connected("h-types")
                    c.send(bytes([first, 0]))
                    self.assert_dropped(c, "reserved control packet type")

    def test_server_only_packets_from_device(self):
        cases = {
            "CONNACK": b"\x20\x02\x00\x00",
            "SUBACK": m.packet(0x90, b"\x00\x01\x00"),
            "UNSUBACK": m.packet(0xB0, b"\x00\x01"),
            "PINGRESP": b"\xd0\x00",
        }
        with self.witness("srv", count=40):
            for label, pkt in cases.items():
                with self.case(label):
                    c = self.raw_connected("h-srv")
                    c.send(pkt)
                    self.assert_dropped(c, "must not send")

    # -- CONNECT order ---------------------------------------------------

    def test_packet_before_connect(self):
        cases = {
            "PINGREQ": m.PINGREQ_PKT,
            "PUBLISH": m.publish("hostile/early", b"x", qos=1, pid=1),
            "SUBSCRIBE": m.subscribe(1, [("#", 0)]),
        }
        with self.witness("preconnect", count=40):
            sub = self.mosquitto.sub("hostile/early", 1, timeout=3)
            for label, pkt in cases.items():
                with self.case(label):
                    c = self.raw()
                    c.send(pkt)
                    self.assert_dropped(c, "first packet is not CONNECT")
        self.assertEqual(sub.result(), [])

    def test_second_connect(self):
        with self.witness("second"):
            c = self.raw_connected("h-second")
            c.send(m.connect("h-second", username="sensor-1", password="pw-1"))
            self.assert_dropped(c, "second CONNECT")

    def test_second_connect_pipelined(self):
        # Both CONNECTs in one write: the second arrives while the bridge
        # still waits for the upstream CONNACK.
        with self.witness("second2"):
            c = self.raw()
            pkt = m.connect("h-second2", username="sensor-1", password="pw-1")
            c.send(pkt + pkt)
            self.assert_dropped(c, "second CONNECT")
            self.assertTrue(all(p.type == m.CONNACK for p in c.before_close), c.before_close)

    def test_malformed_connect(self):
        cases = {
            "will topic with wildcard": m.connect("h-mc", username="sensor-1", password="pw-1",
                                                   will=("a/#", "x", 0, False)),
            "will QoS 3": m.connect("h-mc", username="sensor-1", password="pw-1",
                                    will=("a/b", "x", 3, False)),
            "password without user name": m.connect("h-mc", password="pw-1"),
            "user name not UTF-8": m.connect("h-mc", username=b"\xff\xfe", password="pw-1"),
            "client id not UTF-8": m.connect(b"\xc0\x80", username="sensor-1", password="pw-1"),
            "protocol name wrong": m.connect("h-mc", username="sensor-1", password="pw-1",
                                             proto=b"MQTX"),
            "trailing bytes": m.packet(0x10, m.connect("h-mc")[2:] + b"zz"),
            "truncated": m.packet(0x10, b"\x00\x04MQTT\x04"),
        }
        with self.witness("badconnect", count=50):
            for label, pkt in cases.items():
                with self.case(label):
                    c = self.raw()
                    c.send(pkt)
                    self.assert_dropped(c, "CONNECT")
                    self.assertEqual([p for p in c.before_close if p.type == m.CONNACK and p.body[1] == 0],
                                     [], "a malformed CONNECT was accepted")

    # -- time ------------------------------------------------------------

    def test_partial_packet_then_silence_hits_keepalive(self):
        with self.witness("partial", count=40):
            c = self.raw_connected("h-partial", keepalive=2)
            c.send(b"\x30\x10\x00")  # the start of a PUBLISH, then nothing
            t0 = time.monotonic()
            self.assert_dropped(c, "keepalive timeout", timeout=6)
            self.assertLess(time.monotonic() - t0, 5.5)

    def test_connect_dribbled_byte_by_byte_hits_deadline(self):
        # A slowloris CONNECT: bytes keep coming, the packet never ends.
        # The CONNECT deadline (handshake_timeout = 3) still applies.
        with self.witness("dribble-connect", count=60):
            c = self.raw()
            pkt = m.connect("h-dribble", username="sensor-1", password="pw-1")
            t0 = time.monotonic()
            closed = False
            for b in pkt[:-1]:
                try:
                    c.send(bytes([b]))
                except (ssl.SSLError, OSError):
                    closed = True
                    break
                if c.wait_closed(0.4):
                    closed = True
                    break
            self.assertTrue(closed or c.wait_closed(3), "still open after dribbling a CONNECT")
            self.assertLess(time.monotonic() - t0, 6)
            self.assert_dropped(c, "no CONNECT within handshake_timeout", timeout=1)

    # Regression: the keepalive counts whole control packets (§3.1.2.10),
    # so a device dribbling a packet byte by byte still times out.
    def test_packet_dribbled_after_connect_hits_keepalive(self):
        with self.witness("dribble", count=60):
            c = self.raw_connected("h-dribble2", keepalive=2)
            c.send(b"\x30" + m.rl(1000))  # a PUBLISH that will never be complete
            t0 = time.monotonic()
            closed = False
            while time.monotonic() - t0 < 5.5:
                try:
                    c.send(b"x")
                except (ssl.SSLError, OSError):
                    closed = True
                    break
                if c.wait_closed(0.5):
                    closed = True
                    break
            c.close()
            self.assertTrue(closed, "a dribbled packet kept the connection past 1.5 x keepalive")

    def test_tls_but_no_connect(self):
        with self.witness("noconnect", count=50):
            c = self.raw()
            t0 = time.monotonic()
            self.assert_dropped(c, "no CONNECT within handshake_timeout", timeout=8)
            self.assertLess(time.monotonic() - t0, 6)

    # -- TLS -------------------------------------------------------------

    def test_plain_tcp_to_tls_port(self):
        with self.witness("plain"):
            with socket.create_connection(("127.0.0.1", self.bridge.port), timeout=5) as s:
                peer = "127.0.0.1:%d" % s.getsockname()[1]
                s.sendall(m.connect("h-plain", username="sensor-1", password="pw-1"))
                data = b""
                try:
                    while True:
                        d = s.recv(100)
                        if not d:
                            break
                        data += d
                except (ConnectionError, socket.timeout):
                    pass
                # no MQTT answer: at most a TLS alert record (content type 21)
                self.assertTrue(data == b"" or data[0] == 21, data)
            self.bridge.wait_log(r"TLS handshake failed.*peer=%s\b.*reason=" % re.escape(peer))
            self.assertBridgeAlive()

    def test_handshake_never_finished(self):
        # handshake_timeout = 3 in the harness
        with self.witness("slowtls", count=90):
            for label, first in (("partial record", b"\x16\x03\x01"), ("silent", b"")):
                with self.case(label):
                    s = socket.create_connection(("127.0.0.1", self.bridge.port), timeout=10)
                    peer = "127.0.0.1:%d" % s.getsockname()[1]
                    try:
                        if first:
                            s.sendall(first)
                        t0 = time.monotonic()
                        try:
                            data = s.recv(100)
                        except ConnectionError:
                            data = b""
                        self.assertEqual(data, b"")
                        self.assertGreater(time.monotonic() - t0, 2.0)
                        self.assertLess(time.monotonic() - t0, 6)
                    finally:
                        s.close()
                    # Silent: not one TLS byte, so first_byte_timeout (capped
                    # by handshake_timeout) closes it before any TLS state.
                    self.bridge.wait_log(r"peer=%s\b.*%s" % (re.escape(peer), "TLS handshake timeout" if first
                                                              else 'reason="first_byte_timeout"'))
            self.assertBridgeAlive()

    def test_no_client_certificate(self):
        with self.witness("nocert"):
            for v in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
                with self.case(tls=v.name):
                    self._tls_rejected(None, v, "certificate")

    def test_certificate_from_another_ca(self):
        with self.witness("otherca"):
            for v in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
                with self.case(tls=v.name):
                    self._tls_rejected(self.pki.foreign_device("intruder"), v, "issuer|unable")

    def test_expired_certificate(self):
        cert = self.pki.device("sensor-old", startdate="20200101000000Z", enddate="20200201000000Z")
        with self.witness("expired"):
            self._tls_rejected(cert, ssl.TLSVersion.TLSv1_2, "expired")

    def test_not_yet_valid_certificate(self):
        cert = self.pki.device("sensor-future", startdate="20400101000000Z", enddate="20410101000000Z")
        with self.witness("future"):
            self._tls_rejected(cert, ssl.TLSVersion.TLSv1_2, "not yet valid")

    def test_server_certificate_as_client_certificate(self):
        # The listener's own certificate has extendedKeyUsage serverAuth
        # only: it must not pass as a device certificate.
        with self.witness("eku"):
            self._tls_rejected(self.pki.listener, ssl.TLSVersion.TLSv1_2, "purpose|unsupported")


class TestResetWhilePublishing(HostileBase):
    def test_reset_in_the_middle_of_forwarding(self):
        # Regression: a device that resets its connection right behind a
        # PINGREQ + PUBLISH: libmosquitto reports the QoS 0 publish from
        # inside mosquitto_publish, the PINGRESP write to the device fails
        # there and closes the session while its outbox is still working
        # (a use-after-free under ASan before the outbox was only
        # detached at close).
        import struct
        for i in range(100):
            c = self.raw_connected("h-rst-%d" % i)
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.send(m.PINGREQ_PKT + m.publish("sensor-1/rst", b"p" * 10, qos=0) +
                   m.publish("sensor-1/rst", b"q" * 10, qos=1, pid=1))
            os.close(c.sock.detach())
            if not self.bridge.alive():
                break
        time.sleep(0.5)
        self.assertBridgeAlive()


class TestMaxConnections(HostileBase):
    metrics_port = free_port()
    bridge_sections = {"limits": {"max_connections": "3"},
                       "metrics": {"enabled": "true", "port": str(metrics_port)}}

    def test_connections_beyond_max_refused_and_logged(self):
        refused = 'mqtt_edge_bridge_connections_refused_total{reason="max_connections"}'
        before = self.metric(refused)
        with self.witness("maxconn", count=40):
            held = [self.raw_connected("h-held-%d" % i) for i in range(2)]  # witness + 2 = 3
            try:
                for i in range(3):
                    with self.case(extra=i):
                        raw = socket.create_connection(("127.0.0.1", self.bridge.port), timeout=5)
                        peer = "127.0.0.1:%d" % raw.getsockname()[1]
                        try:
                            with self.assertRaises((ssl.SSLError, ConnectionError, OSError)):
                                m.client_context(self.pki.ca.ca_crt, self.pki.device("sensor-1")).wrap_socket(raw)
                        finally:
                            raw.close()
                        self.bridge.wait_log(r"connection refused.*peer=%s\b.*max_connections" % re.escape(peer))
                # the held ones still work
                for c in held:
                    c.send(m.PINGREQ_PKT)
                    c.expect(m.PINGRESP)
            finally:
                for c in held:
                    c.close()
            self.assertEqual(self.metric(refused) - before, 3, "refusals not counted")
            # a slot freed is a slot usable again
            c = wait_for(lambda: self._try_connect("h-after"), 5, "a free connection slot")
            c.close()
            self.assertBridgeAlive()

    def _try_connect(self, cid):
        try:
            return self.raw_connected(cid)
        except (ssl.SSLError, OSError, m.Closed):
            return None


class TestRevokedCertificate(HostileBase):
    """[listener] crlfile: a revoked device certificate is refused."""

    @classmethod
    def setUpClass(cls):
        # The CRL must exist before the bridge starts, and the PKI is made
        # in BridgeTestCase.setUpClass: build it here the same way.
        cls.tmp = tempfile.mkdtemp(prefix="meb-crl-")
        os.chmod(cls.tmp, 0o755)
        cls.pki = TestPki(os.path.join(cls.tmp, "pki"))
        cls.revoked = cls.pki.device("sensor-revoked")
        cls.pki.device("sensor-3")
        cls.pki.ca.revoke(cls.revoked[0])
        crl = cls.pki.ca.crl()
        cls.mosquitto = Mosquitto(cls.pki, cls.tmp, cls.users, unix_socket=True)
        cls.bridge = Bridge(cls.pki, cls.tmp, cls.mosquitto, {"listener": {"crlfile": crl}})
        try:
            cls.mosquitto.start()
            cls.bridge.start()
        except BaseException:
            cls.bridge.stop()
            cls.mosquitto.stop()
            shutil.rmtree(cls.tmp, ignore_errors=True)
            raise

    def test_revoked_certificate_refused(self):
        with self.witness("revoked"):
            for v in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
                with self.case(tls=v.name):
                    self._tls_rejected_revoked(v)
            # and the BearSSL device with that certificate fails too
            r = Device(self.pki, "sensor-revoked", self.bridge.port, cert=self.revoked).run("--timeout", "5")
            self.assertNotEqual(r.rc, 0, r)

    def _tls_rejected_revoked(self, v):
        self._tls_rejected(self.revoked, v, "revoked")

    def test_unrevoked_certificate_still_accepted(self):
        c = self.raw_connected("h-crl-ok")
        c.send(m.PINGREQ_PKT)
        c.expect(m.PINGRESP)
        c.close()


class TestMountpoint(HostileBase):
    """[bridge] mountpoint = devices/%c/ and clientid_must_match_cn: a device
    stays inside devices/<cn>/ and cannot take another device's id."""

    bridge_sections = {"bridge": {"mountpoint": "devices/%c/", "clientid_must_match_cn": "true"}}

    def witness(self, tag, count=20, interval_ms=100):
        # sensor-3 publishes "witness/<tag>", which lands in devices/sensor-3/.
        return Witness(self, "sensor-3", "witness/" + tag, count=count, interval_ms=interval_ms,
                       creds=self.creds("sensor-3"), sub_topic="devices/sensor-3/witness/" + tag)

    def test_publish_outside_mountpoint_goes_nowhere(self):
        everything = self.mosquitto.sub("#", 1000, timeout=6)
        sys_sub = self.mosquitto.sub("$SYS/hostile/#", 10, timeout=6)
        with self.witness("mp-pub", count=40):
            c = self.raw_connected("sensor-1")
            outside = ["../sensor-2/steal", "../../x", "a/../../sensor-2/x", "..", "$SYS/hostile/x",
                       "x/..", "$share/g/x"]
            pid = 1
            for t in outside:
                c.send(m.publish(t, b"escape", qos=1, pid=pid))
                # MQTT 3.1.1 has no negative PUBACK: acknowledged and dropped
                self.assertEqual(c.expect(m.PUBACK).pid, pid)
                pid += 1
            c.send(m.publish("inside/ok", b"fine", qos=1, pid=pid))
            self.assertEqual(c.expect(m.PUBACK).pid, pid)
            c.send(m.DISCONNECT_PKT)
            c.close()
        got = everything.result()
        self.assertEqual(sys_sub.result(), [])
        topics = [line.split(" ", 1)[0] for line in got]
        leaked = [t for t in topics if not re.match(r"devices/sensor-[13]/", t)]
        self.assertEqual(leaked, [], "messages outside the mountpoint on the main broker")
        self.assertIn("devices/sensor-1/inside/ok", topics)
        self.assertNotIn("escape", " ".join(l for l in got if not l.startswith("devices/sensor-1/$SYS")))
        for t in outside:
            self.bridge.wait_log(r'PUBLISH to "%s" denied' % re.escape(t), 3)

    def test_subscribe_outside_mountpoint_refused(self):
        with self.witness("mp-sub", count=60):
            c = self.raw_connected("sensor-1")
            filters = [("#", 1), ("../#", 1), ("$SYS/#", 0), ("../sensor-2/#", 1), ("+/../x", 0),
                       ("x/..", 0), ("mine/+", 2)]
            c.send(m.subscribe(11, filters))
            p = c.expect(m.SUBACK)
            self.assertEqual(p.pid, 11)
            self.assertEqual(list(p.body[2:]), [1, 0x80, 0x80, 0x80, 0x80, 0x80, 2])
            time.sleep(0.3)
            for t, payload in (("devices/sensor-2/secret", "s2"), ("outside/secret", "out"),
                               ("devices/sensor-1", "parent"), ("devices/sensor-1/mine/a", "mine")):
                self.mosquitto.pub(t, payload, qos=1)
            got = []
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                try:
                    p = c.read(max(0.05, deadline - time.monotonic()))
                except socket.timeout:
                    break
                if p.type == m.PUBLISH:
                    topic, payload, qos, pid, _, _ = p.publish_fields()
                    got.append((topic, payload))
                    if qos == 1:
                        c.send(m.ack(m.PUBACK, pid))
                    elif qos == 2:
                        c.send(m.ack(m.PUBREC, pid))
            c.close()
            # "#" and "mine/+" both match mine/a: one copy per matching
            # subscription is allowed (§3.3.5), nothing from outside.
            self.assertTrue(got and all(t == "mine/a" and pl == b"mine" for t, pl in got), got)
        # What went upstream: only filters under devices/sensor-1/.
        log = open(self.mosquitto.log).read()
        filters_up = re.findall(r"(?m)^\d+: sensor-1 \d (\S+)$", log)
        self.assertTrue(filters_up, "no SUBSCRIBE from sensor-1 in the broker log")
        self.assertEqual([f for f in filters_up if not f.startswith("devices/sensor-1/")], [], filters_up)

    def test_will_outside_mountpoint_refused(self):
        with self.witness("mp-will"):
            c = self.raw()
            c.send(m.connect("sensor-1", username="sensor-1", password="pw-1",
                             will=("../sensor-2/cmd", "evil", 0, False)))
            p = c.expect(m.CONNACK)
            self.assertNotEqual(p.body[1], 0)
            self.assertTrue(c.wait_closed(5))
            c.close()

    def _refused_id(self, cid):
        c = self.raw()
        sp, rc = c.connect(cid, "sensor-1", "pw-1")
        self.assertEqual((sp, rc), (0, 2), "client id %r" % cid)
        self.assertTrue(c.wait_closed(5), "not closed after CONNACK 2")
        c.close()

    # Regression: with clientid_must_match_cn an empty client id is
    # refused with CONNACK 2 (a generated id would not be the CN either).
    def test_empty_client_id_refused_when_it_must_match_cn(self):
        self._refused_id("")
        self.assertBridgeAlive()

    def test_client_id_of_another_device_refused(self):
        # sensor-3 (the witness) is connected; sensor-1's certificate asks
        # for client id "sensor-3", which upstream would kick the witness.
        with self.witness("mp-id", count=40):
            for cid in ("sensor-3", "sensor-2", "sensor-1x", "sensor-"):
                with self.case(client_id=cid):
                    self._refused_id(cid)
            self.bridge.wait_log(r"CONNACK 2.*cn=\"sensor-1\".*client id does not match")
        self.assertBridgeAlive()

    def test_own_client_id_accepted(self):
        c = self.raw_connected("sensor-1")
        c.send(m.PINGREQ_PKT)
        c.expect(m.PINGRESP)
        c.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
