"""Scale-out (issue 14): two bridge instances behind haproxy, in front of
one broker, as docs/SCALING.md describes.

haproxy (TCP mode, send-proxy-v2, health checks with check-send-proxy,
balance leastconn) on 127.0.0.1 in front of bridges A and B: their own
configs, spool directories, ports and metrics, the same listener
certificate, both with [listener] proxy_protocol = v2. Devices are raw
MQTT/TLS clients, each bound to its own loopback source address
127.0.0.(10+i), as separate hosts would be.

Checks, in order (one test: each step needs the state the last one left):
  1. the devices spread over both instances;
  2. the bridges' logs show the devices' own addresses, never haproxy's;
  3. a device on A and one on B exchange QoS 1 messages through the broker;
  4. broker stopped: the devices' QoS 1 messages are acknowledged and
     spooled by their own instance;
  5. A is killed -9: its devices reconnect through haproxy to B and carry
     on (their next messages are acknowledged by B);
  6. broker back: B's spool reaches it;
  7. A restarted: the messages A acknowledged and spooled before it died
     are delivered; lost = 0 over everything any instance acknowledged.
Figures (failover time, drain time) are printed as TAP comments.

Bounded: every wait has a limit; the whole test takes well under a minute.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from harness import Bridge, Mosquitto, TestPki, free_port, wait_for, wait_port  # noqa: E402
import rawmqtt as m  # noqa: E402
from rawmqtt import Closed, RawClient  # noqa: E402

N_DEVICES = 8
PER_PHASE = 5
DEVICE_PW = "dev-pw"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


def metrics(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


class Dev:
    """A device: reconnects (through haproxy) when its connection drops and
    resends what was not acknowledged, like a real MQTT client would."""

    def __init__(self, test, i):
        self.t = test
        self.i = i
        self.name = "dev-%d" % i
        self.source = "127.0.0.%d" % (10 + i)
        self.c = None
        self.next_pid = 1
        self.acked = []            # payloads some instance acknowledged
        self.reconnects = 0

    def connect(self, deadline=20.0):
        end = time.monotonic() + deadline
        last = None
        while time.monotonic() < end:
            try:
                c = RawClient(self.t.haproxy_port, self.t.pki.ca.ca_crt, self.t.pki.device(self.name),
                              source=self.source, timeout=5)
                sp, rc = c.connect(self.name, clean=False)
                if rc == 0:
                    self.c = c
                    return
                c.close()
                last = "CONNACK %d" % rc
            except (OSError, Closed, AssertionError) as e:
                last = str(e)
            time.sleep(0.1)  # bounded retry, as a device's back-off
        raise AssertionError("%s could not connect through haproxy: %s" % (self.name, last))

    def publish(self, payload):
        """QoS 1 until some instance acknowledges it (reconnecting if the
        connection drops)."""
        for attempt in range(20):
            if self.c is None:
                self.connect()
                self.reconnects += 1
            pid = self.next_pid
            self.next_pid = self.next_pid % 65535 + 1
            try:
                self.c.send(m.publish("scale/%s" % self.name, payload.encode(), qos=1, pid=pid,
                                      dup=attempt > 0))
                while True:
                    p = self.c.read(10)
                    if p.type == m.PUBACK and p.pid == pid:
                        self.acked.append(payload)
                        return
                    if p.type == m.PUBLISH:
                        _, _, qos, ppid, _, _ = p.publish_fields()
                        if qos == 1:
                            self.c.send(m.ack(m.PUBACK, ppid))
            except (Closed, OSError):
                self.c.close()
                self.c = None
        raise AssertionError("%s: %r never acknowledged" % (self.name, payload))

    def close(self):
        if self.c:
            self.c.close()
            self.c = None


class TestScaleOut(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not os.path.exists(HAPROXY):
            raise unittest.SkipTest("haproxy is not installed (scripts/deps.sh)")
        if os.environ.get("MEB_SANITIZED") or os.environ.get("BRIDGE_WRAPPER"):
            raise unittest.SkipTest("plain build only: it runs several daemons and measures")
        cls.tmp = tempfile.mkdtemp(prefix="meb-scale-")
        os.chmod(cls.tmp, 0o755)
        cls.pki = TestPki(os.path.join(cls.tmp, "pki"))
        users = {"observer": "observer-pw"}
        users.update({"dev-%d" % i: DEVICE_PW for i in range(N_DEVICES)})
        for d in ("broker", "a", "b"):
            os.makedirs(os.path.join(cls.tmp, d))
        cls.broker = Mosquitto(cls.pki, os.path.join(cls.tmp, "broker"), users, persistence=True)
        cls.bridges = {}
        for name in ("a", "b"):
            mport = free_port()
            br = Bridge(cls.pki, os.path.join(cls.tmp, name), cls.broker, {
                "listener": {"proxy_protocol": "v2", "proxy_from": "127.0.0.1/32"},
                # Replays after a restart need credentials from the
                # configuration: passwords are never written to disk.
                "bridge": {"username_mode": "cn", "password_mode": "fixed", "password": DEVICE_PW},
                "metrics": {"enabled": "true", "port": str(mport)},
            })
            br.metrics_port = mport
            cls.bridges[name] = br
        cls.haproxy_port = free_port()
        cls.haproxy_cfg = os.path.join(cls.tmp, "haproxy.cfg")
        with open(cls.haproxy_cfg, "w") as f:
            f.write(HAPROXY_CFG % {
                "front": cls.haproxy_port,
                "a": cls.bridges["a"].port,
                "b": cls.bridges["b"].port,
            })
        cls.haproxy = None
        cls.sub = None
        try:
            cls.broker.start()
            # The observer's persistent session keeps what arrives while it
            # is away (the broker restarts in the test).
            cls.sub_out = open(os.path.join(cls.tmp, "sub.out"), "w")
            cls.sub = subprocess.Popen(["mosquitto_sub"] + cls.broker.client_args() +
                                       ["-t", "scale/#", "-q", "1", "-v", "-c", "-i", "scale-observer"],
                                       stdout=cls.sub_out, stderr=subprocess.DEVNULL)
            wait_for(lambda: "scale-observer" in open(cls.broker.log).read(), 10, "the observer connected")
            for br in cls.bridges.values():
                br.start()
            cls.haproxy = subprocess.Popen([HAPROXY, "-db", "-f", cls.haproxy_cfg],
                                           stdout=open(os.path.join(cls.tmp, "haproxy.log"), "w"),
                                           stderr=subprocess.STDOUT)
            wait_port(cls.haproxy_port)
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        if cls.haproxy and cls.haproxy.poll() is None:
            cls.haproxy.terminate()
            cls.haproxy.wait(10)
        for br in cls.bridges.values():
            br.stop()
        if cls.sub:
            cls.sub.terminate()
            cls.sub.wait(10)
        cls.broker.stop()
        if not os.environ.get("KEEP_TEST_DIR"):
            shutil.rmtree(cls.tmp, ignore_errors=True)
        else:
            print("# test files kept in", cls.tmp)

    def received(self):
        with open(os.path.join(self.tmp, "sub.out")) as f:
            return [l.split(" ", 1)[1] for l in f.read().splitlines() if " " in l]

    def devices_on(self, name):
        return int(metrics(self.bridges[name].metrics_port)["mqtt_edge_bridge_devices_connected"])

    def where(self, dev):
        """Which instance's log shows this device's address last."""
        best, at = None, -1
        for name, br in self.bridges.items():
            if not os.path.exists(br.log):
                continue
            pos = br.text().rfind("peer=%s:" % dev.source)
            if pos > at:
                best, at = name, pos
        return best

    def test_scale_out(self):
        a, b = self.bridges["a"], self.bridges["b"]
        devs = [Dev(self, i) for i in range(N_DEVICES)]
        try:
            self._run(devs, a, b)
        finally:
            for d in devs:
                d.close()

    def _run(self, devs, a, b):
        # 1. Spread: leastconn alternates long-lived connections.
        for d in devs:
            d.connect()
        wait_for(lambda: self.devices_on("a") + self.devices_on("b") == N_DEVICES, 10, "all devices connected")
        on_a, on_b = self.devices_on("a"), self.devices_on("b")
        print("# spread: %d devices on A, %d on B" % (on_a, on_b))
        self.assertGreaterEqual(on_a, 2)
        self.assertGreaterEqual(on_b, 2)

        # 2. The devices' own addresses, not haproxy's (127.0.0.1).
        for d in devs:
            self.assertIsNotNone(self.where(d), "no bridge logged %s" % d.source)
        for br in (a, b):
            established = [l for l in br.text().splitlines() if "TLS established" in l]
            self.assertTrue(established)
            for line in established:
                self.assertRegex(line, r"peer=127\.0\.0\.(1\d):\d+", line)
            self.assertGreater(metrics(br.metrics_port)["mqtt_edge_bridge_proxy_headers_total"], 0)

        # 3. A device on A and one on B talk QoS 1 through the broker.
        da = next(d for d in devs if self.where(d) == "a")
        db = next(d for d in devs if self.where(d) == "b")
        for rx, tx in ((da, db), (db, da)):
            rx.c.send(m.subscribe(1, [("scale/%s" % tx.name, 1)]))
            rx.c.expect(m.SUBACK, 10)
            tx.publish("%s:hello" % tx.name)
            got = rx.c.read(10)
            self.assertEqual(got.type, m.PUBLISH)
            topic, payload, qos, ppid, _, _ = got.publish_fields()
            self.assertEqual((topic, payload, qos), ("scale/%s" % tx.name, ("%s:hello" % tx.name).encode(), 1))
            rx.c.send(m.ack(m.PUBACK, ppid))
            rx.c.send(m.unsubscribe(2, ["scale/%s" % tx.name]))
            rx.c.expect(m.UNSUBACK, 10)

        for d in devs:
            for k in range(PER_PHASE):
                d.publish("%s:up-%d" % (d.name, k))

        # 4. Broker down: each instance acknowledges and spools.
        self.broker.stop()
        for d in devs:
            for k in range(PER_PHASE):
                d.publish("%s:spooled-%d" % (d.name, k))
        spooled_a = metrics(a.metrics_port)["mqtt_edge_bridge_spool_messages"]
        self.assertGreater(spooled_a, 0)

        # 5. A dies without a word; its devices come back through B.
        moved = [d for d in devs if self.where(d) == "a"]
        t0 = time.monotonic()
        a.kill()
        for d in moved:
            for k in range(PER_PHASE):
                d.publish("%s:after-kill-%d" % (d.name, k))
        failover = time.monotonic() - t0
        for d in moved:
            self.assertEqual(self.where(d), "b", "%s did not move to B" % d.name)
        print("# failover: %d devices from A (killed -9, %d messages in its spool) to B in %.2f s, "
              "their next messages acknowledged by B" % (len(moved), spooled_a, failover))
        self.assertEqual(self.devices_on("b"), N_DEVICES)

        # 6. Broker back: B's spool drains into it.
        t0 = time.monotonic()
        self.broker.start()
        expect_b = set()
        for d in devs:
            expect_b |= {p for p in d.acked if ":after-kill-" in p or
                         (d not in moved and (":spooled-" in p or ":up-" in p))}
        wait_for(lambda: expect_b <= set(self.received()), 60, "B's spool at the broker")
        print("# broker back: B's spool delivered in %.2f s" % (time.monotonic() - t0))

        # 7. A restarts: it replays what it acknowledged before it died.
        t0 = time.monotonic()
        a.start()
        everything = set(p for d in devs for p in d.acked)
        wait_for(lambda: everything <= set(self.received()), 60, "A's spool at the broker after its restart")
        got = self.received()
        lost = everything - set(got)
        dups = len([p for p in got if p.startswith("dev-")]) - len(set(p for p in got if p.startswith("dev-")))
        print("# A restarted: its spool delivered in %.2f s; %d messages acknowledged, lost = %d, "
              "duplicates = %d" % (time.monotonic() - t0, len(everything), len(lost), dups))
        self.assertEqual(lost, set())
        wait_for(lambda: metrics(a.metrics_port)["mqtt_edge_bridge_spool_messages"] == 0, 30, "A's spool empty")
        # The devices that moved are still connected (on B) and working.
        for d in moved:
            d.publish("%s:final" % d.name)
        self.assertTrue(a.alive() and b.alive())


HAPROXY_CFG = """\
# As docs/SCALING.md: TCP mode, the device's address in a PROXY v2 header,
# health checks that send one too (LOCAL), least connections.
global
    maxconn 512

defaults
    mode tcp
    timeout connect 2s
    timeout client 120s
    timeout server 120s
    retries 2
    option redispatch

frontend devices
    bind 127.0.0.1:%(front)d
    default_backend bridges

backend bridges
    balance leastconn
    default-server send-proxy-v2 check check-send-proxy inter 300ms fall 1 rise 2
    server a 127.0.0.1:%(a)d
    server b 127.0.0.1:%(b)d
"""


if __name__ == "__main__":
    unittest.main()
