"""No acknowledged message lost (issue 7): store and forward while the
broker is away, broker restarts mid-stream, a crash of the bridge.

Devices publish numbered QoS 1 messages ("<seq> <ns>"); a subscriber with a
persistent session on the main broker (mosquitto with persistence, so a
SIGTERM restart keeps its queue) collects them. Every message a device saw
acknowledged (a "puback id=" line) must reach the subscriber; duplicates
are allowed (QoS 1) and reported.
"""

import os
import re
import signal
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from harness import BridgeTestCase, wait_for  # noqa: E402


class Collector:
    """mosquitto_sub with a persistent session, reconnecting by itself
    across broker restarts."""

    def __init__(self, mosquitto, topic, client_id):
        self.mosquitto = mosquitto
        self.topic = topic
        self.client_id = client_id
        self.out = os.path.join(mosquitto.dir, client_id + ".out")
        self.proc = None

    def start(self):
        f = open(self.out, "a")
        self.proc = subprocess.Popen(
            ["mosquitto_sub"] + self.mosquitto.client_args() +
            ["-t", self.topic, "-q", "1", "-v", "-c", "-i", self.client_id, "-k", "5"],
            stdout=f, stderr=subprocess.DEVNULL)
        f.close()
        time.sleep(0.5)
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def received(self):
        """{topic: [seq, ...]} in arrival order."""
        got = {}
        with open(self.out) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[1].isdigit():
                    got.setdefault(parts[0], []).append(int(parts[1]))
        return got


class ReliabilityCase(BridgeTestCase):
    persistence = True

    def collector(self, topic, client_id):
        c = Collector(self.mosquitto, topic, client_id).start()
        self.addCleanup(c.stop)
        return c

    def start_devices(self, n, count, prefix, interval_ms=5, timeout=90):
        procs = []
        self.addCleanup(lambda: [p.kill() for _, p in procs if p.poll() is None])
        for i in range(n):
            name = "sensor-%d" % (i + 1)
            d = self.device(name)
            procs.append((name, d.start(*self.creds(name), "--count", str(count), "--topic",
                                        "%s/%s" % (prefix, name), "--qos", "1", "--interval-ms",
                                        str(interval_ms), "--timeout", str(timeout),
                                        "--linger-ms", "500")))
        return procs

    def finish_devices(self, procs, timeout=120):
        results = {}
        for name, p in procs:
            out, err = p.communicate(timeout=timeout)
            results[name] = (p.returncode, out, err)
        return results

    def check_no_loss(self, collector, results, prefix, count):
        lost = dup = 0
        for name, (rc, out, err) in results.items():
            self.assertEqual(rc, 0, "%s: %s %s" % (name, out[-2000:], err[-2000:]))
            self.assertIn("done sent=%d acked=%d" % (count, count), out)
        topics = ["%s/%s" % (prefix, name) for name in results]

        def all_there():
            got = collector.received()
            return all(set(got.get(t, [])) >= set(range(1, count + 1)) for t in topics)
        try:
            wait_for(all_there, 60, "every acknowledged message on the main broker")
        except TimeoutError:
            pass
        got = collector.received()
        for t in topics:
            seqs = got.get(t, [])
            lost += len(set(range(1, count + 1)) - set(seqs))
            dup += len(seqs) - len(set(seqs))
        print("# lost=%d duplicated=%d (of %d acknowledged)" % (lost, dup, count * len(results)),
              flush=True)
        self.assertEqual(lost, 0, "acknowledged messages lost")


class TestStoreAndForward(ReliabilityCase):
    def test_device_accepted_and_spooled_while_broker_down(self):
        col = self.collector("sf/#", "collector-sf")
        col.stop()  # its session (and queue) stays on the broker
        self.mosquitto.stop()
        try:
            # a device that only listens, subscribing while the broker is away
            offline_since = self.bridge.log_size()
            listener = self.device("sensor-2").start(*self.creds("sensor-2"), "--sub", "sf-cmd/2:1",
                                                     "--expect", "1", "--timeout", "40")
            # ...and is connected before the broker comes back (under
            # qemu-user it can take longer to start than sensor-1 to run)
            self.bridge.wait_log(r'upstream broker unreachable: device accepted.*cn="sensor-2"',
                                 since=offline_since)
            r = self.device("sensor-1").run(*self.creds("sensor-1"), "--count", "5", "--topic",
                                            "sf/sensor-1", "--qos", "1", timeout=30)
            self.assertEqual(r.rc, 0, r)
            self.assertEqual(r.events("connack")[0]["rc"], "0")
            self.assertIn("done sent=5 acked=5", r.out)
            self.bridge.wait_log(r"upstream broker unreachable: device accepted")
        finally:
            since = self.bridge.log_size()
            self.mosquitto.start()
        # the bridge reconnects by itself (backoff <= 30 s) and replays
        self.bridge.wait_log(r"upstream connection restored", timeout=40, since=since)
        col.start()
        wait_for(lambda: len(col.received().get("sf/sensor-1", [])) >= 5, 20, "replayed messages")
        col.stop()
        self.assertEqual(sorted(set(col.received()["sf/sensor-1"])), [1, 2, 3, 4, 5])
        # the subscription made during the outage now works
        self.mosquitto.pub("sf-cmd/2", "hello", qos=1)
        out, err = listener.communicate(timeout=40)
        self.assertEqual(listener.returncode, 0, out + err)
        self.assertIn("payload=hello", out)

    def test_broker_restarts_midstream(self):
        count = 300
        col = self.collector("restart/#", "collector-restart")
        procs = self.start_devices(3, count, "restart", interval_ms=8)
        for _ in range(3):
            time.sleep(0.7)
            # the way a package upgrade restarts it: SIGTERM, then start
            self.mosquitto.stop(signal.SIGTERM)
            time.sleep(0.3)
            self.mosquitto.start()
        results = self.finish_devices(procs)
        self.check_no_loss(col, results, "restart", count)
        col.stop()
        self.assertBridgeAlive()


class TestStoreAndForwardUnixSocket(ReliabilityCase):
    """The broker on a Unix socket that is down: connect() fails at once,
    not asynchronously; the device must be accepted all the same."""
    upstream_unix = True

    def test_unix_socket_broker_down(self):
        col = self.collector("sfu/#", "collector-sfu")
        col.stop()
        self.mosquitto.stop()
        try:
            r = self.device("sensor-1").run("--sub", "sfu-cmd/a:0", "--sub", "sfu-cmd/b:1", "--count", "3",
                                            "--topic", "sfu/sensor-1", "--qos", "1", timeout=30)
            self.assertEqual(r.rc, 0, r)
            self.assertEqual(r.events("connack")[0]["rc"], "0")
            # granted as requested while the broker is away (§3.9.3), not 0x80
            self.assertEqual(r.events("suback")[0]["codes"], "0,1", r)
            self.assertIn("done sent=3 acked=3", r.out)
            self.assertNotIn("second CONNECT", self.bridge.text())
        finally:
            self.mosquitto.start()
        col.start()
        wait_for(lambda: len(set(col.received().get("sfu/sensor-1", []))) >= 3, 40, "replay over the socket")
        col.stop()


class TestBridgeCrash(ReliabilityCase):
    def test_bridge_killed_midstream(self):
        count = 300
        col = self.collector("crash/#", "collector-crash")
        procs = self.start_devices(3, count, "crash", interval_ms=8)
        for _ in range(2):
            time.sleep(0.8)
            self.bridge.kill()
            time.sleep(0.2)
            self.bridge.start()
        results = self.finish_devices(procs)
        self.check_no_loss(col, results, "crash", count)
        col.stop()

    def test_spool_survives_a_crash(self):
        # messages spooled during an outage, then the bridge is killed
        # before the broker returns: replayed when the device reconnects
        col = self.collector("crashspool/#", "collector-cs")
        col.stop()
        self.mosquitto.stop()
        r = self.device("sensor-3").run(*self.creds("sensor-3"), "--count", "4", "--topic",
                                        "crashspool/sensor-3", "--qos", "1", timeout=30)
        self.assertIn("done sent=4 acked=4", r.out)
        self.bridge.kill()
        self.mosquitto.start()
        self.bridge.start()
        r = self.device("sensor-3").run(*self.creds("sensor-3"), "--linger-ms", "1500", timeout=30)
        self.assertEqual(r.rc, 0, r)
        self.bridge.wait_log(r"4 spooled messages .* will be sent upstream first")
        col.start()
        wait_for(lambda: len(set(col.received().get("crashspool/sensor-3", []))) >= 4, 20,
                 "messages spooled before the crash")
        col.stop()
        self.assertEqual(sorted(set(col.received()["crashspool/sensor-3"])), [1, 2, 3, 4])


class TestBrokerKilled(ReliabilityCase):
    def test_broker_killed_midstream(self):
        """kill -9 loses what mosquitto held only in memory (its own loss);
        the bridge's half is checked against the broker's log: every
        message acknowledged to a device was acknowledged by the broker,
        before the kill or when the bridge sent it again afterwards."""
        count = 300
        col = self.collector("kill9/#", "collector-kill9")
        procs = self.start_devices(3, count, "kill9", interval_ms=8)
        time.sleep(0.8)
        self.mosquitto.stop(signal.SIGKILL)
        time.sleep(0.3)
        self.mosquitto.start()
        results = self.finish_devices(procs)
        with open(self.mosquitto.log) as f:
            log = f.read()
        got = {}
        try:
            wait_for(lambda: all(len(set(col.received().get("kill9/" + n, []))) >= count for n in results),
                     20, "delivery")
        except TimeoutError:
            pass  # the broker's own losses are counted below
        got = col.received()
        broker_lost = 0
        for name, (rc, out, err) in results.items():
            self.assertEqual(rc, 0, out[-2000:] + err[-2000:])
            device_acked = len(re.findall(r"^puback id=", out, re.M))
            self.assertEqual(device_acked, count)
            # the bridge acknowledges a device only after the broker did
            # (or after the spool's fsync, and then the broker acknowledges
            # the replay): PUBACKs to this client and to its replayer
            broker_acked = len(re.findall(r"Sending PUBACK to %s(?:/replay)? " % re.escape(name), log))
            self.assertGreaterEqual(broker_acked, device_acked,
                                    "%s: acknowledged to the device but never to the broker" % name)
            broker_lost += count - len(set(got.get("kill9/" + name, [])))
        print("# broker's own losses (held only in its memory at kill -9): %d of %d"
              % (broker_lost, count * len(results)), flush=True)


if __name__ == "__main__":
    unittest.main(verbosity=2)
