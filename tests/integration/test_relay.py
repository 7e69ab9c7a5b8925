"""The relay (issue 10): acknowledgements end to end, sessions bound to
the certificate, strings checked at the door.

Each case was a way the libmosquitto-based bridge lost or cross-wired
messages; each runs against a real mosquitto with the real daemon, over
raw MQTT from Python's ssl module (so the test controls every packet and
every acknowledgement), with a second good device where a case could
disturb others.
"""

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from harness import BRIDGE_WRAPPER, BridgeTestCase, wait_for  # noqa: E402
import rawmqtt as m  # noqa: E402
from rawmqtt import RawClient, Witness, daemon_rss_kb  # noqa: E402

SANITIZED = bool(os.environ.get("MEB_SANITIZED")) or bool(BRIDGE_WRAPPER)


class RelayBase(BridgeTestCase):
    """Helpers; no tests here."""

    def raw(self, name="sensor-1", **kw):
        return RawClient(self.bridge.port, self.pki.ca.ca_crt, self.pki.device(name), **kw)

    def raw_connected(self, client_id, name="sensor-1", clean=True, **kw):
        c = self.raw(name)
        sp, rc = c.connect(client_id, name, self.users[name], clean=clean, **kw)
        self.assertEqual(rc, 0, "CONNACK %d for %s" % (rc, client_id))
        return c

    def subscribe(self, c, topic, qos=1, pid=1):
        c.send(m.subscribe(pid, [(topic, qos)]))
        p = c.expect(m.SUBACK)
        self.assertEqual(p.body[2], qos, "SUBACK %r" % p)

    def publishes(self, c, n, timeout=10):
        """Read n PUBLISH packets (acknowledging nothing)."""
        got = []
        deadline = time.monotonic() + timeout
        while len(got) < n:
            p = c.read(max(0.05, deadline - time.monotonic()))
            if p.type == m.PUBLISH:
                got.append(p.publish_fields())
        return got

    def drain(self, c, timeout=1.0):
        """Whatever arrives within timeout."""
        got = []
        try:
            while True:
                got.append(c.read(timeout))
        except socket.timeout:
            return got

    def bridge_fd0(self):
        return os.readlink("/proc/%d/fd/0" % self.bridge.proc.pid)

    def restart_bridge(self, kill=False):
        if kill:
            self.bridge.kill()
        else:
            self.assertIn(self.bridge.stop(), (0, None))
        self.bridge.start()

    def witness(self, tag, count=20, interval_ms=100):
        return Witness(self, "sensor-3", "witness/" + tag, count=count, interval_ms=interval_ms,
                       creds=self.creds("sensor-3"))


class TestAtTheDoor(RelayBase):
    """Control characters are refused where mosquitto refuses them, and
    refusing one device never touches another."""

    def test_control_characters_refused(self):
        fd0 = self.bridge_fd0()
        with self.witness("door", count=40, interval_ms=100):
            # client id: CONNACK 2, nothing accepted "offline"
            c = self.raw("sensor-1")
            sp, rc = c.connect("x\x01a", "sensor-1", self.users["sensor-1"])
            self.assertEqual(rc, 2)
            c.close()
            # username
            c = self.raw("sensor-1")
            sp, rc = c.connect("sensor-1", "sen\x1bsor-1", "pw-1")
            self.assertEqual(rc, 4)
            c.close()
            # will topic
            c = self.raw("sensor-1")
            c.send(m.connect("sensor-1", username="sensor-1", password="pw-1",
                             will=("w/\x7f", b"x", 0, False)))
            p = c.expect(m.CONNACK)
            self.assertNotEqual(p.body[1], 0)
            c.close()
            # topic name (C1 control, U+0085): the connection is closed
            c = self.raw_connected("sensor-1")
            c.send(m.publish("t/\u0085x", b"no", qos=1, pid=3))
            self.assertTrue(c.wait_closed(5), "PUBLISH with a control character was not refused")
            self.assertFalse([p for p in c.before_close if p.type == m.PUBACK],
                             "a PUBLISH with a control character was acknowledged")
            # filter
            c = self.raw_connected("sensor-1")
            c.send(m.subscribe(5, [("a/\x02/#", 1)]))
            self.assertTrue(c.wait_closed(5))
        self.assertEqual(self.bridge_fd0(), fd0, "the bridge's fd 0 changed")
        self.assertEqual(fd0, "/dev/null")
        self.assertBridgeAlive()
        # Logged escaped: no raw control character in any log line.
        self.assertNotIn("\x01", self.bridge.text())
        self.assertNotIn("\x1b", self.bridge.text())

    def test_offline_refuses_bad_strings_too(self):
        self.mosquitto.stop()
        try:
            c = self.raw("sensor-1")
            sp, rc = c.connect("y\x01", "sensor-1", "pw-1")
            self.assertEqual(rc, 2, "a bad client id was accepted offline")
            c.close()
            c = self.raw_connected("sensor-1")
            c.send(m.publish("t/\x03", b"x", qos=1, pid=1))
            self.assertTrue(c.wait_closed(5))
            spool = os.path.join(self.tmp, "spool")
            for f in os.listdir(spool):
                with open(os.path.join(spool, f), "rb") as fh:
                    self.assertNotIn(b"t/\x03", fh.read(), "a bad topic reached the spool")
        finally:
            self.mosquitto.start()


class TestIdentity(RelayBase):
    """Identity is the certificate: another certificate cannot kick a
    device off, nor reach its session, by claiming its client id."""

    def test_takeover_by_another_certificate_refused(self):
        victim = self.raw_connected("sensor-1", "sensor-1", clean=False)
        self.subscribe(victim, "cmd/sensor-1", qos=1)
        # The attacker has a valid certificate of its own (CN=sensor-2).
        att = self.raw("sensor-2")
        sp, rc = att.connect("sensor-1", "sensor-2", self.users["sensor-2"], clean=False)
        self.assertEqual(rc, 2, "another certificate took the client id over")
        att.close()
        # The victim is still connected and still gets its messages.
        self.mosquitto.pub("cmd/sensor-1", "for-victim", qos=1)
        got = self.publishes(victim, 1)
        self.assertEqual(got[0][:2], ("cmd/sensor-1", b"for-victim"))
        victim.send(m.ack(m.PUBACK, got[0][3]))
        victim.send(m.DISCONNECT_PKT)
        victim.close()

    def test_takeover_with_wrong_password_leaves_victim(self):
        victim = self.raw_connected("sensor-1", "sensor-1", clean=False)
        self.subscribe(victim, "cmd/s1-pw", qos=1)
        # Same certificate, wrong password: the broker refuses it, and
        # only the broker's acceptance could have taken the id over.
        c = self.raw("sensor-1")
        sp, rc = c.connect("sensor-1", "sensor-1", "wrong", clean=False)
        self.assertIn(rc, (4, 5))
        c.close()
        self.mosquitto.pub("cmd/s1-pw", "still-here", qos=1)
        got = self.publishes(victim, 1)
        self.assertEqual(got[0][1], b"still-here")
        victim.send(m.ack(m.PUBACK, got[0][3]))
        # A good takeover (same certificate, right password) does happen.
        new = self.raw_connected("sensor-1", "sensor-1", clean=False)
        self.assertTrue(victim.wait_closed(10), "the older connection was not taken over")
        new.send(m.DISCONNECT_PKT)
        new.close()


class TestPassThrough(RelayBase):
    """Broker → device: nothing is acknowledged before the device does."""

    persistence = True

    def five_unacked(self, topic):
        c = self.raw_connected("sensor-2", "sensor-2", clean=False)
        self.subscribe(c, topic, qos=1)
        for i in range(5):
            self.mosquitto.pub(topic, "m%d" % i, qos=1)
        got = self.publishes(c, 5)
        self.assertEqual([g[1] for g in got], [b"m%d" % i for i in range(5)])
        return c

    def redelivered(self, topic):
        c = self.raw_connected("sensor-2", "sensor-2", clean=False)
        got = self.publishes(c, 5, timeout=15)
        self.assertEqual(sorted(g[1] for g in got), [b"m%d" % i for i in range(5)])
        self.assertTrue(all(g[5] for g in got), "redelivered without DUP (§4.4)")
        for g in got:
            c.send(m.ack(m.PUBACK, g[3]))
        self.assertFalse([p for p in self.drain(c, 1.0) if p.type == m.PUBLISH], "more than 5")
        c.send(m.DISCONNECT_PKT)
        c.close()

    def test_a_reconnect(self):
        c = self.five_unacked("q1/reconnect")
        c.close()  # no acknowledgement, no DISCONNECT
        self.redelivered("q1/reconnect")

    def test_b_bridge_sigkill(self):
        c = self.five_unacked("q1/sigkill")
        self.restart_bridge(kill=True)
        c.close()
        self.redelivered("q1/sigkill")

    def test_c_bridge_sigterm(self):
        c = self.five_unacked("q1/sigterm")
        self.restart_bridge(kill=False)
        c.close()
        self.redelivered("q1/sigterm")

    def test_qos2_down_exactly_once(self):
        c = self.raw_connected("sensor-2", "sensor-2", clean=False)
        self.subscribe(c, "q2/down", qos=2)
        self.mosquitto.pub("q2/down", "two", qos=2)
        t, payload, qos, pid, retain, dup = self.publishes(c, 1)[0]
        self.assertEqual((payload, qos), (b"two", 2))
        c.send(m.ack(m.PUBREC, pid))
        rel = c.expect(m.PUBREL)
        self.assertEqual(rel.pid, pid)
        c.send(m.ack(m.PUBCOMP, pid))
        self.assertFalse([p for p in self.drain(c, 1.0) if p.type == m.PUBLISH])
        c.send(m.DISCONNECT_PKT)
        c.close()


class TestQos2Up(RelayBase):
    """Device → broker QoS 2 across a reconnect: a PUBLISH resent with DUP
    reaches subscribers once (§4.3.3, §4.4)."""

    def test_dup_resend_after_reconnect(self):
        sub = self.mosquitto.sub("q2/up", 2, timeout=15, qos=2)
        c = self.raw_connected("sensor-1", "sensor-1", clean=False)
        c.send(m.publish("q2/up", b"once", qos=2, pid=7))
        self.assertEqual(c.expect(m.PUBREC).pid, 7)
        c.close()  # before PUBREL
        c = self.raw_connected("sensor-1", "sensor-1", clean=False)
        c.send(m.publish("q2/up", b"once", qos=2, pid=7, dup=True))
        self.assertEqual(c.expect(m.PUBREC).pid, 7)
        c.send(m.ack(m.PUBREL, 7))
        self.assertEqual(c.expect(m.PUBCOMP).pid, 7)
        c.send(m.DISCONNECT_PKT)
        c.close()
        got = sub.result(15)
        self.assertEqual(got, ["q2/up once"], "QoS 2 not delivered exactly once")

    def test_pubrel_after_reconnect(self):
        sub = self.mosquitto.sub("q2/rel", 2, timeout=15, qos=2)
        c = self.raw_connected("sensor-1", "sensor-1", clean=False)
        c.send(m.publish("q2/rel", b"rel", qos=2, pid=9))
        self.assertEqual(c.expect(m.PUBREC).pid, 9)
        c.close()
        # §4.4: the client resends PUBREL; the broker holds the state.
        c = self.raw_connected("sensor-1", "sensor-1", clean=False)
        c.send(m.ack(m.PUBREL, 9))
        self.assertEqual(c.expect(m.PUBCOMP).pid, 9)
        c.send(m.DISCONNECT_PKT)
        c.close()
        self.assertEqual(sub.result(15), ["q2/rel rel"])


class TestOrder(RelayBase):
    """[MQTT-4.6.0-2]: PUBACKs in the order of the PUBLISHes, a refused one
    in the middle included."""

    bridge_sections = {"bridge": {"mountpoint": "devices/%c/"}}

    def test_puback_order_with_refused_publish(self):
        sub = self.mosquitto.sub("devices/sensor-1/order/#", 2, timeout=40)
        c = self.raw_connected("sensor-1")
        # pid 2 leaves the mountpoint: refused (acknowledged and dropped)
        c.send(m.publish("order/a", b"1", qos=1, pid=1) + m.publish("$SYS/x", b"2", qos=1, pid=2) +
               m.publish("order/b", b"3", qos=1, pid=3))
        pids = [c.expect(m.PUBACK).pid for _ in range(3)]
        self.assertEqual(pids, [1, 2, 3])
        c.send(m.DISCONNECT_PKT)
        c.close()
        self.assertEqual(sub.result(15), ["devices/sensor-1/order/a 1", "devices/sensor-1/order/b 3"])


class TestSlowDevice(RelayBase):
    """A device that stops reading slows its own uplink: nothing lost, the
    bridge's memory bounded."""

    N = 10000
    mosquitto_extra = ("max_queued_messages 20000", "max_inflight_messages 20")
    bridge_sections = {"limits": {"max_queued_bytes": "262144"}}

    def test_stalled_reader_loses_nothing(self):
        # keepalive 0: the device is silent while the broker sends
        c = self.raw_connected("sensor-2", "sensor-2", clean=False, keepalive=0)
        self.subscribe(c, "slow/#", qos=1)
        rss0 = daemon_rss_kb(self.bridge.proc.pid)
        payload = "x" * 500
        lines = "\n".join("%d %s" % (i, payload) for i in range(self.N)) + "\n"
        subprocess.run(["mosquitto_pub"] + self.mosquitto.client_args() +
                       ["-t", "slow/t", "-q", "1", "-l"], input=lines, text=True, check=True,
                       timeout=300)
        rss1 = daemon_rss_kb(self.bridge.proc.pid)
        seen = set()
        deadline = time.monotonic() + (600 if SANITIZED else 180)
        while len(seen) < self.N and time.monotonic() < deadline:
            try:
                p = c.read(10)
            except socket.timeout:
                break
            if p.type == m.PUBLISH:
                t, payload_b, qos, pid, retain, dup = p.publish_fields()
                seen.add(int(payload_b.split()[0]))
                c.send(m.ack(m.PUBACK, pid))
            elif p.type == m.PINGRESP:
                pass
        c.send(m.DISCONNECT_PKT)
        c.close()
        self.assertEqual(len(seen), self.N, "lost %d of %d" % (self.N - len(seen), self.N))
        if not SANITIZED:
            # 10,000 × 500 B = 5 MB went through; the bridge held at most
            # its output limit and socket buffers of it.
            self.assertLess(rss1 - rss0, 4096, "the bridge buffered the stalled device's messages")


class TestSubscriptionLimit(RelayBase):
    """max_subscriptions: one over the bound is refused in place (0x80),
    the others work; bookkeeping is hashed, so many filters are cheap."""

    bridge_sections = {"limits": {"max_subscriptions": "3"}}

    def test_over_the_limit_refused_in_place(self):
        c = self.raw_connected("sensor-1")
        c.send(m.subscribe(4, [("lim/a", 1), ("lim/b", 0), ("lim/c", 1), ("lim/d", 1), ("lim/a", 0)]))
        p = c.expect(m.SUBACK)
        self.assertEqual(p.pid, 4)
        # a, b, c granted; d over the limit; a again is an update, not new
        self.assertEqual(list(p.body[2:]), [1, 0, 1, 0x80, 0])
        self.bridge.wait_log(r'subscription to "lim/d" refused.*max_subscriptions', 5)
        self.mosquitto.pub("lim/c", "in", qos=1)
        got = self.publishes(c, 1)
        self.assertEqual(got[0][:2], ("lim/c", b"in"))
        c.send(m.ack(m.PUBACK, got[0][3]))
        c.send(m.DISCONNECT_PKT)
        c.close()


class TestRejectedRecord(RelayBase):
    """A spooled message the broker closes the connection over, every time,
    is moved aside after five tries; the messages behind it go on."""

    mosquitto_extra = ("max_packet_size 1500",)
    persistence = True

    def test_poison_message_moved_aside(self):
        # Persistent: the subscription and its queue survive the restart.
        sub = self.mosquitto.sub("poison/#", 2, timeout=150, extra=["-c", "-i", "obs-poison"])
        self.mosquitto.stop()
        try:
            c = self.raw_connected("sensor-1", "sensor-1", clean=False)
            c.send(m.publish("poison/a", b"A", qos=1, pid=1))
            c.send(m.publish("poison/b", b"B" * 3000, qos=1, pid=2))
            c.send(m.publish("poison/c", b"C", qos=1, pid=3))
            self.assertEqual([c.expect(m.PUBACK).pid for _ in range(3)], [1, 2, 3])
            c.close()
        finally:
            self.mosquitto.start()
        # five links with back-off 1, 2, 4, 8 s in between
        self.bridge.wait_log(r'message \d+ \(topic "poison/b"\) was sent; it is moved to \S+\.rejected', 120)
        self.assertEqual(sub.result(60), ["poison/a A", "poison/c C"])
        rejected = [f for f in os.listdir(os.path.join(self.tmp, "spool")) if f.endswith(".rejected")]
        self.assertEqual(len(rejected), 1)
        self.assertBridgeAlive()


class TestSpoolTotal(RelayBase):
    """[spool] max_bytes covers every file, also one that waits for its
    device after a restart (its password is not on disk)."""

    bridge_sections = {"spool": {"max_bytes": "6000"}}

    def test_waiting_spool_still_counted(self):
        self.mosquitto.stop()
        try:
            c = self.raw_connected("sensor-1", "sensor-1", clean=False)
            c.send(m.publish("total/a", b"x" * 4000, qos=1, pid=1))
            self.assertEqual(c.expect(m.PUBACK).pid, 1)
            c.close()
            self.restart_bridge()
            self.bridge.wait_log(r'spool of "sensor-1" \(1 messages\) waits for its device', 10,
                                 since=self.bridge.log_offset)
            c = self.raw_connected("sensor-2", "sensor-2", clean=False)
            c.send(m.publish("total/b", b"y" * 4000, qos=1, pid=1))
            self.assertTrue(c.wait_closed(10), "a spool over [spool] max_bytes took the message")
            self.assertFalse([p for p in c.before_close if p.type == m.PUBACK])
            self.bridge.wait_log(r"spool full", 5, since=self.bridge.log_offset)
        finally:
            self.mosquitto.start()


class TestReplayIdentity(RelayBase):
    """Replay for an absent device as the device itself: a %c ACL applies,
    a persistent session survives (also with use_username_as_clientid),
    and no password reaches the disk."""

    acl = None
    persistence = True
    mosquitto_listener_extra = ()

    @classmethod
    def setUpClass(cls):
        import tempfile
        d = tempfile.mkdtemp(prefix="meb-acl-")
        os.chmod(d, 0o755)
        cls.acl = os.path.join(d, "acl")
        with open(cls.acl, "w") as f:
            f.write("user observer\ntopic readwrite #\n\npattern readwrite sensors/%c/#\n")
        os.chmod(cls.acl, 0o644)
        # use_username_as_clientid: a replay under any other client id, or
        # with a clean session, would take the device's session over.
        cls.mosquitto_listener_extra = ("acl_file %s" % cls.acl, "use_username_as_clientid true")
        super().setUpClass()

    def spool_files(self):
        d = os.path.join(self.tmp, "spool")
        return [os.path.join(d, f) for f in os.listdir(d) if f.endswith(".spool")]

    def test_replay_with_acl_and_no_password_on_disk(self):
        # A persistent subscriber: it keeps its queue across the restart.
        sub = self.mosquitto.sub("sensors/sensor-1/#", 3, timeout=40,
                                 extra=["-c", "-i", "obs-replay"])
        self.mosquitto.stop()
        try:
            c = self.raw_connected("sensor-1", "sensor-1", clean=False)
            for i in range(1, 4):
                c.send(m.publish("sensors/sensor-1/r", b"r%d" % i, qos=1, pid=i))
                self.assertEqual(c.expect(m.PUBACK).pid, i)
            c.close()  # the device goes to sleep
            files = self.spool_files()
            self.assertTrue(files, "nothing spooled")
            for f in files:
                with open(f, "rb") as fh:
                    data = fh.read()
                self.assertNotIn(self.users["sensor-1"].encode(), data, "a password in the spool")
        finally:
            self.mosquitto.start()
        got = sub.result(60)
        self.assertEqual(got, ["sensors/sensor-1/r r%d" % i for i in range(1, 4)],
                         "replay denied by the %c ACL or lost")
        wait_for(lambda: not any(os.path.getsize(f) for f in self.spool_files()), 20,
                 "the spool emptied after delivery")

    def test_persistent_session_survives_replay(self):
        # The device has a persistent session with a subscription.
        c = self.raw_connected("sensor-2", "sensor-2", clean=False)
        self.subscribe(c, "sensors/sensor-2/cmd", qos=1)
        c.send(m.DISCONNECT_PKT)
        c.close()
        self.mosquitto.stop(sig=__import__("signal").SIGTERM)
        try:
            c = self.raw_connected("sensor-2", "sensor-2", clean=False)
            c.send(m.publish("sensors/sensor-2/r", b"off", qos=1, pid=1))
            self.assertEqual(c.expect(m.PUBACK).pid, 1)
            c.close()
        finally:
            self.mosquitto.start()
        self.bridge.wait_log(r'spool of "sensor-2" delivered', timeout=40)
        # Published for the device while it sleeps: its session keeps it.
        self.mosquitto.pub("sensors/sensor-2/cmd", "queued", qos=1)
        c = self.raw_connected("sensor-2", "sensor-2", clean=False)
        got = self.publishes(c, 1, timeout=10)
        self.assertEqual(got[0][:2], ("sensors/sensor-2/cmd", b"queued"))
        c.send(m.ack(m.PUBACK, got[0][3]))
        c.send(m.DISCONNECT_PKT)
        c.close()


if __name__ == "__main__":
    unittest.main()
