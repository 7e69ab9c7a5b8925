"""Issue 13: a steady stream of messages allocates nothing in the bridge.

The daemon runs with tests/lib/alloc_count.so preloaded (an LD_PRELOAD
counter of malloc, calloc, realloc growth and the memalign family, readable
from outside at any moment). One device on a Unix-socket upstream publishes
to a topic it subscribes to, one message at a time, so every message goes
both ways through the bridge (device PUBLISH, broker PUBACK, broker PUBLISH,
device PUBACK for QoS 1). After a warm-up the counters are read before and
after a window of messages:

- allocations by the bridge's own code (and by libc or sd-event on its
  behalf): none per message. A stall of more than a second on a busy
  machine lets the idle sweep give the buffers back, and they come back
  with the next message (a handful of allocations once), hence the bound
  of 1 % rather than exactly 0; without the design (buffers freed per
  read, a copy of every topic and message) it is 2-8 per message;
- allocations inside OpenSSL: OpenSSL 3.0's record layer allocates two
  small blocks per SSL_write (WPACKET_SUB), nothing per SSL_read unless
  its record buffers are released: at most 2 per record written, at most
  2 records per message (a PUBACK and a PUBLISH may go in one or two).

Skipped where the counter cannot be loaded: sanitizer builds (ASan has its
own allocator) and runs under valgrind (BRIDGE_WRAPPER).
"""

import os
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from harness import BRIDGE_WRAPPER, BridgeTestCase, wait_for  # noqa: E402
import alloc_count  # noqa: E402
import rawmqtt as m  # noqa: E402
from rawmqtt import RawClient  # noqa: E402

LIB = os.environ.get("ALLOC_COUNT_LIB")
WARMUP = 200
WINDOW = 1000
SKIP = None
if not LIB or not os.path.exists(LIB):
    SKIP = "alloc_count.so not built for this build (sanitizers)"
elif BRIDGE_WRAPPER:
    SKIP = "the daemon runs under a wrapper (valgrind), whose allocator the counter would not see"


@unittest.skipIf(SKIP, SKIP or "")
class TestSteadyStateAllocations(BridgeTestCase):
    upstream_unix = True

    @classmethod
    def setUpClass(cls):
        cls.counter = os.path.join(os.environ.get("TMPDIR", "/tmp"), "meb-alloc-%d.cnt" % os.getpid())
        cls.bridge_env = alloc_count.preload_env(LIB, cls.counter)
        super().setUpClass()

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        try:
            os.unlink(cls.counter)
        except OSError:
            pass

    def device(self, client_id):
        # TLS 1.2, as BearSSL on the devices speaks it.
        c = RawClient(self.bridge.port, self.pki.ca.ca_crt, self.pki.device("sensor-1"), timeout=10)
        sp, rc = c.connect(client_id, "sensor-1", self.users["sensor-1"])
        self.assertEqual(rc, 0)
        return c

    def one_round_trip(self, c, topic, qos, pid):
        """Publish one message and wait for it to come back; ack what needs it."""
        c.send(m.publish(topic, b"x" * 100, qos=qos, pid=pid if qos else None))
        acked, back = qos == 0, False
        deadline = time.monotonic() + 10
        while not (acked and back):
            self.assertLess(time.monotonic(), deadline, "message %d did not come back" % pid)
            p = c.read(10)
            if p.type == m.PUBACK and p.pid == pid:
                acked = True
            elif p.type == m.PUBLISH:
                f = p.publish_fields()
                self.assertEqual(f[0], topic)
                if f[2] == 1:
                    c.send(m.ack(m.PUBACK, f[3]))
                back = True

    def measure(self, qos):
        topic = "alloc/q%d" % qos
        c = self.device("alloc-q%d" % qos)
        try:
            c.send(m.subscribe(1, [(topic, qos)]))
            self.assertEqual(c.expect(m.SUBACK).pid, 1)
            pid = 1
            for _ in range(WARMUP):
                pid = pid % 60000 + 1
                self.one_round_trip(c, topic, qos, pid)
            before = alloc_count.read_counts(self.counter)
            for _ in range(WINDOW):
                pid = pid % 60000 + 1
                self.one_round_trip(c, topic, qos, pid)
            after = alloc_count.read_counts(self.counter)
        finally:
            c.close()
        d = alloc_count.delta(before, after)
        own, tls = d["allocs"] - d["tls_allocs"], d["tls_allocs"]
        print("# QoS %d, %d messages each way: %d allocations by the bridge, %d inside OpenSSL (%.3f / message)"
              % (qos, WINDOW, own, tls, tls / WINDOW))
        return own, tls

    def test_counter_sees_the_daemon(self):
        # The preload worked: the daemon's start-up allocated (config,
        # TLS contexts), and the file belongs to the daemon's process.
        counts = wait_for(lambda: alloc_count.read_counts(self.counter), 10, "counter file")
        self.assertEqual(counts["pid"], self.bridge.proc.pid)
        self.assertGreater(counts["allocs"] - counts["tls_allocs"], 10)
        self.assertGreater(counts["tls_allocs"], 10)

    def test_qos0_no_allocation_per_message(self):
        own, tls = self.measure(0)
        self.assertLessEqual(own, WINDOW // 100, "the bridge allocates on the QoS 0 message path")
        self.assertLessEqual(tls, 2 * 1 * WINDOW + WINDOW // 100, "OpenSSL allocates more than per record")

    def test_qos1_no_allocation_per_message(self):
        own, tls = self.measure(1)
        self.assertLessEqual(own, WINDOW // 100, "the bridge allocates on the QoS 1 message path")
        self.assertLessEqual(tls, 2 * 2 * WINDOW + WINDOW // 100, "OpenSSL allocates more than per record")


if __name__ == "__main__":
    unittest.main()
