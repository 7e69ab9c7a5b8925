"""The same relay behaviour against two broker implementations (issue 14):
mosquitto 2.0 (the reference) and RabbitMQ 3.10 with its MQTT plugin.

One test class per broker (the class attribute BROKER chooses), the same
tests, and where RabbitMQ differs the test says so and checks what RabbitMQ
promises instead (README.md, "Tested brokers"):
- QoS 1 both ways, ordered, acknowledged end to end;
- QoS 2 from a device: mosquitto completes PUBREC/PUBREL/PUBCOMP;
  RabbitMQ downgrades QoS 2 to 1 (it answers a QoS 2 PUBLISH with PUBACK,
  not PUBREC as §4.3.3 wants); the device still gets its QoS 2 flow, from
  the bridge, and nothing behind it is held up;
- QoS 2 subscription: granted 2 by mosquitto, 1 by RabbitMQ (SUBACK);
- a persistent session (clean session 0): messages for an absent device
  are delivered when it comes back, session present = 1;
- a retained message reaches a later subscriber;
- a device's will is published when its connection is cut.

RabbitMQ runs as a process of the test (tests/lib/rabbitmq.py): the class
is skipped when it is not installed (scripts/deps.sh installs it).
"""

import os
import shutil
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from harness import Bridge, Mosquitto, TestPki, VALGRIND_ERROR  # noqa: E402
import rabbitmq  # noqa: E402
import rawmqtt as m  # noqa: E402
from rawmqtt import RawClient  # noqa: E402

USER, PASSWORD = "meb", "meb-pw"


class BrokerMatrix:
    BROKER = None

    @classmethod
    def setUpClass(cls):
        if cls.BROKER == "rabbitmq" and not (rabbitmq.AVAILABLE and rabbitmq.plugin_available()):
            raise unittest.SkipTest("rabbitmq-server with rabbitmq_mqtt is not installed")
        cls.tmp = tempfile.mkdtemp(prefix="meb-brokers-")
        os.chmod(cls.tmp, 0o755)
        cls.pki = TestPki(os.path.join(cls.tmp, "pki"))
        sections = {
            # One broker account for every device (the broker's ACLs are
            # not what this test is about).
            "bridge": {"username_mode": "fixed", "username": USER, "password_mode": "fixed",
                       "password": PASSWORD},
        }
        if cls.BROKER == "rabbitmq":
            cls.broker = rabbitmq.RabbitMQ(cls.tmp, "m", USER, PASSWORD)
            sections["upstream"] = cls.broker.upstream_section()
        else:
            cls.broker = Mosquitto(cls.pki, cls.tmp, {USER: PASSWORD, "observer": "observer-pw"})
        bdir = os.path.join(cls.tmp, "bridge")
        os.makedirs(bdir)
        cls.bridge = None
        try:
            cls.broker.start()
            # The bridge's port is picked once the broker runs: Erlang's
            # tools take ephemeral ports of their own while it starts.
            cls.bridge = Bridge(cls.pki, bdir, cls.broker, sections)
            cls.bridge.start()
        except BaseException:
            if cls.bridge:
                cls.bridge.stop()
            cls.broker.stop()
            if cls.BROKER == "rabbitmq":
                cls.broker.cluster.kill_epmd()
            raise

    @classmethod
    def tearDownClass(cls):
        rc = cls.bridge.stop()
        cls.broker.stop()
        if cls.BROKER == "rabbitmq":
            cls.broker.cluster.kill_epmd()
        if not os.environ.get("KEEP_TEST_DIR"):
            shutil.rmtree(cls.tmp, ignore_errors=True)
        if rc not in (0, None):
            raise AssertionError("bridge exited with status %s (valgrind errors: %s)"
                                 % (rc, rc == VALGRIND_ERROR))

    def client(self, name):
        return RawClient(self.bridge.port, self.pki.ca.ca_crt, self.pki.device(name))

    def topic(self, what):
        return "brokers/%s/%s" % (self.BROKER, what)

    def test_qos1_both_ways(self):
        t_up, t_down = self.topic("up"), self.topic("down")
        sub = self.broker.sub(t_up, 5, timeout=15)
        with self.client("sensor-1") as c:
            self.assertEqual(c.connect("b-sensor-1"), (0, 0))
            c.send(m.subscribe(1, [(t_down, 1)]))
            self.assertEqual(c.expect(m.SUBACK).body[2:], b"\x01")
            for i in range(5):
                c.send(m.publish(t_up, b"u%d" % i, qos=1, pid=10 + i))
            acks = [c.expect(m.PUBACK, 10).pid for _ in range(5)]
            self.assertEqual(acks, list(range(10, 15)))
            self.broker.pub(t_down, "d0", qos=1)
            p = c.expect(m.PUBLISH, 10)
            topic, payload, qos, pid, _, _ = p.publish_fields()
            self.assertEqual((topic, payload, qos), (t_down, b"d0", 1))
            c.send(m.ack(m.PUBACK, pid))
        self.assertEqual(sub.result(), ["%s u%d" % (t_up, i) for i in range(5)])

    def test_qos2_from_device(self):
        t = self.topic("qos2")
        sub = self.broker.sub(t, 2, timeout=15, qos=2)
        with self.client("sensor-1") as c:
            self.assertEqual(c.connect("b-sensor-1-q2"), (0, 0))
            c.send(m.publish(t, b"exactly-once", qos=2, pid=7))
            # The device gets the whole QoS 2 flow from either broker. RabbitMQ
            # answers the bridge's QoS 2 PUBLISH with PUBACK (it downgrades
            # QoS 2 to 1: at least once, not exactly once, from the broker
            # on); the bridge then sends PUBREC itself and completes the
            # device's PUBREL with its own PUBCOMP.
            self.assertEqual(c.expect(m.PUBREC, 10).pid, 7)
            c.send(m.ack(m.PUBREL, 7))
            self.assertEqual(c.expect(m.PUBCOMP, 10).pid, 7)
            # Nothing held up behind it: a QoS 1 message is acknowledged.
            c.send(m.publish(t, b"after", qos=1, pid=8))
            self.assertEqual(c.expect(m.PUBACK, 10).pid, 8)
            c.send(m.packet(0xC0))
            c.expect(m.PINGRESP, 5)
        # §4.6 orders messages of one QoS only: the two may arrive either way.
        self.assertEqual(sorted(sub.result()), sorted(["%s exactly-once" % t, "%s after" % t]))

    def test_qos2_subscription_granted(self):
        with self.client("sensor-1") as c:
            self.assertEqual(c.connect("b-sensor-1-s2"), (0, 0))
            c.send(m.subscribe(3, [(self.topic("s2"), 2)]))
            granted = c.expect(m.SUBACK, 10).body[2]
        # RabbitMQ: "QoS 2 subscriptions are treated as QoS 1" (grants 1).
        self.assertEqual(granted, 2 if self.BROKER == "mosquitto" else 1)

    def test_persistent_session_for_an_absent_device(self):
        t = self.topic("persist")
        with self.client("sensor-2") as c:
            self.assertEqual(c.connect("b-sensor-2", clean=False)[1], 0)
            c.send(m.subscribe(1, [(t, 1)]))
            c.expect(m.SUBACK)
            c.send(m.packet(0xE0))  # DISCONNECT
        for i in range(3):
            self.broker.pub(t, "p%d" % i, qos=1)
        with self.client("sensor-2") as c:
            self.assertEqual(c.connect("b-sensor-2", clean=False), (1, 0))
            got = []
            for _ in range(3):
                p = c.expect(m.PUBLISH, 10)
                topic, payload, qos, pid, _, _ = p.publish_fields()
                got.append(payload)
                c.send(m.ack(m.PUBACK, pid))
        self.assertEqual(got, [b"p0", b"p1", b"p2"])

    def test_retained(self):
        t = self.topic("retained")
        with self.client("sensor-3") as c:
            self.assertEqual(c.connect("b-sensor-3"), (0, 0))
            c.send(m.publish(t, b"last-value", qos=1, pid=1, retain=True))
            c.expect(m.PUBACK, 10)
        # A later subscriber gets it. (RabbitMQ keeps retained messages per
        # node: in a cluster, only subscribers on the node that stored it.)
        self.assertEqual(self.broker.sub(t, 1, timeout=10).result(), ["%s last-value" % t])

    def test_will_on_a_cut_connection(self):
        t = self.topic("will")
        sub = self.broker.sub(t, 1, timeout=15)
        c = self.client("sensor-1")
        self.assertEqual(c.send(m.connect("b-sensor-1-will", username=None,
                                          will=(t, b"gone", 1, False))), None)
        self.assertEqual(c.expect(m.CONNACK, 10).body[1], 0)
        c.sock.close()   # no DISCONNECT: the bridge cuts the uplink, the broker publishes the will
        self.assertEqual(sub.result(), ["%s gone" % t])


class TestMosquitto(BrokerMatrix, unittest.TestCase):
    BROKER = "mosquitto"


class TestRabbitMQ(BrokerMatrix, unittest.TestCase):
    BROKER = "rabbitmq"


if __name__ == "__main__":
    unittest.main()
