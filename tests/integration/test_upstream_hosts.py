"""Several upstream hosts (issue 14): [upstream] host = a b, tried in
order, for a clustered broker without a balancer of its own.

Two independent mosquittos stand in for two broker nodes (127.0.0.1 with
two ports, "host:port"). Checks:
- with the first host down, a device still connects (through the second);
- a device connected through the first host stays connected when that
  host stops: its QoS 1 messages are spooled meanwhile and arrive at the
  second host once its upstream link reconnects there; lost = 0; the log
  says which host new links try first.
"""

import os
import shutil
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from harness import Bridge, BridgeTestCase, Mosquitto, TestPki, VALGRIND_ERROR, free_port  # noqa: E402
import rawmqtt as m  # noqa: E402
from rawmqtt import RawClient  # noqa: E402


class TestUpstreamHosts(unittest.TestCase):
    users = BridgeTestCase.users

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="meb-hosts-")
        os.chmod(cls.tmp, 0o755)
        cls.pki = TestPki(os.path.join(cls.tmp, "pki"))
        dirs = [os.path.join(cls.tmp, n) for n in ("a", "b", "bridge")]
        for d in dirs:
            os.makedirs(d)
        cls.a = Mosquitto(cls.pki, dirs[0], cls.users)
        cls.b = Mosquitto(cls.pki, dirs[1], cls.users)
        cls.bridge = Bridge(cls.pki, dirs[2], cls.a, {
            "upstream": {"host": "127.0.0.1:%d 127.0.0.1:%d" % (cls.a.port, cls.b.port),
                         "connect_timeout": "3"},
        })
        try:
            cls.b.start()
            cls.bridge.start()
        except BaseException:
            cls.bridge.stop()
            cls.b.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        rc = cls.bridge.stop()
        cls.a.stop()
        cls.b.stop()
        if not os.environ.get("KEEP_TEST_DIR"):
            shutil.rmtree(cls.tmp, ignore_errors=True)
        if rc not in (0, None):
            raise AssertionError("bridge exited with status %s (valgrind errors: %s)"
                                 % (rc, rc == VALGRIND_ERROR))

    def client(self, name):
        return RawClient(self.bridge.port, self.pki.ca.ca_crt, self.pki.device(name))

    def test_1_first_host_down_second_used(self):
        # a is not running: the dialer goes on to b within one attempt.
        sub = self.b.sub("t/hosts/1", 1, timeout=15)
        with self.client("sensor-1") as c:
            self.assertEqual(c.connect("sensor-1", "sensor-1", "pw-1"), (0, 0))
            c.send(m.publish("t/hosts/1", b"via-b", qos=1, pid=1))
            c.expect(m.PUBACK, 10)
        self.assertEqual(sub.result(), ["t/hosts/1 via-b"])
        self.bridge.wait_log(r"upstream host 127\.0\.0\.1 port %d works" % self.b.port)

    def test_2_failover_keeps_the_device_and_its_messages(self):
        # Both up; new links prefer b now (it worked last). Stop b, so the
        # device's link fails over to a.
        self.a.start()
        n = 20
        sub = self.a.sub("t/hosts/2", n, timeout=40)
        with self.client("sensor-2") as c:
            self.assertEqual(c.connect("sensor-2", "sensor-2", "pw-2", clean=False), (0, 0))
            since = self.bridge.log_size()
            self.b.stop()
            t0 = time.monotonic()
            for i in range(n):
                c.send(m.publish("t/hosts/2", b"m%d" % i, qos=1, pid=i + 1))
                c.expect(m.PUBACK, 10)   # spooled or forwarded: acknowledged either way
            # The device was never cut off; its link is back, through a.
            self.bridge.wait_log(r"upstream host 127\.0\.0\.1 port %d works" % self.a.port, timeout=20,
                                 since=since)
            got = sub.result(timeout=40)
            elapsed = time.monotonic() - t0
            c.send(m.packet(0xC0))        # PINGREQ: still connected
            c.expect(m.PINGRESP, 5)
        self.assertEqual(sorted(got), sorted("t/hosts/2 m%d" % i for i in range(n)),
                         "lost: %s" % (set("t/hosts/2 m%d" % i for i in range(n)) - set(got)))
        print("# failover: %d messages, all delivered via the second host in %.1f s" % (n, elapsed))


if __name__ == "__main__":
    unittest.main()
