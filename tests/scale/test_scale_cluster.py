"""Scale-out onto a clustered broker (issue 14): haproxy in front of two
bridge instances, which republish onto a RabbitMQ cluster of nodes on
this machine (joined with rabbitmqctl join_cluster, MQTT listeners on
each), each bridge to a different node first ([upstream] host = own node,
then the others).

Checks:
  1. a device on instance A (node 1) and one on instance B (node 2)
     exchange QoS 1 messages through the cluster;
  2. node 1 stops: A's upstream links reconnect to another node (the host
     list), the devices stay connected meanwhile (store and forward: their
     QoS 1 messages are acknowledged throughout), lost = 0.

Skipped when rabbitmq-server (with rabbitmq_mqtt) or haproxy is missing.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
sys.path.insert(0, os.path.dirname(__file__))
from harness import Bridge, TestPki, free_port, wait_for, wait_port  # noqa: E402
import rabbitmq  # noqa: E402
import rawmqtt as m  # noqa: E402
from test_scaleout import HAPROXY, HAPROXY_CFG, Dev, metrics  # noqa: E402

USER, PASSWORD = "meb", "meb-pw"
N_DEVICES = 4
N_NODES = int(os.environ.get("MEB_RABBIT_NODES", "2"))


class TestScaleOutCluster(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not os.path.exists(HAPROXY):
            raise unittest.SkipTest("haproxy is not installed (scripts/deps.sh)")
        if not (rabbitmq.AVAILABLE and rabbitmq.plugin_available()):
            raise unittest.SkipTest("rabbitmq-server with rabbitmq_mqtt is not installed")
        if os.environ.get("MEB_SANITIZED") or os.environ.get("BRIDGE_WRAPPER"):
            raise unittest.SkipTest("plain build only")
        cls.tmp = tempfile.mkdtemp(prefix="meb-cluster-")
        os.chmod(cls.tmp, 0o755)
        cls.pki = TestPki(os.path.join(cls.tmp, "pki"))
        cls.cluster = rabbitmq.Cluster()
        cls.nodes = [rabbitmq.RabbitMQ(cls.tmp, "n%d" % i, USER, PASSWORD, cls.cluster)
                     for i in range(1, N_NODES + 1)]
        cls.bridges = {}
        cls.haproxy = None
        cls.sub = None
        try:
            t0 = time.monotonic()
            for n in cls.nodes:
                n.start()
            for n in cls.nodes[1:]:
                n.join_cluster(cls.nodes[0])
            cls.cluster_secs = time.monotonic() - t0
            # The observer on the last node, which stays up.
            cls.obs = cls.nodes[-1]
            cls.sub_out = open(os.path.join(cls.tmp, "sub.out"), "w")
            cls.sub = subprocess.Popen(["mosquitto_sub"] + cls.obs.client_args() +
                                       ["-t", "scale/#", "-q", "1", "-v", "-c", "-i", "cluster-observer"],
                                       stdout=cls.sub_out, stderr=subprocess.DEVNULL)
            time.sleep(0.5)  # mosquitto_sub has no "subscribed" signal
            for name, first in (("a", 0), ("b", 1)):
                d = os.path.join(cls.tmp, name)
                os.makedirs(d)
                order = [cls.nodes[first]] + [n for i, n in enumerate(cls.nodes) if i != first]
                mport = free_port()
                br = Bridge(cls.pki, d, order[0], {
                    "listener": {"proxy_protocol": "v2", "proxy_from": "127.0.0.1/32"},
                    "upstream": dict(order[0].upstream_section(*order[1:]), connect_timeout="3"),
                    "bridge": {"username_mode": "fixed", "username": USER, "password_mode": "fixed",
                               "password": PASSWORD},
                    "metrics": {"enabled": "true", "port": str(mport)},
                })
                br.metrics_port = mport
                cls.bridges[name] = br
                br.start()
            cls.haproxy_port = free_port()
            cfg = os.path.join(cls.tmp, "haproxy.cfg")
            with open(cfg, "w") as f:
                f.write(HAPROXY_CFG % {"front": cls.haproxy_port, "a": cls.bridges["a"].port,
                                       "b": cls.bridges["b"].port})
            cls.haproxy = subprocess.Popen([HAPROXY, "-db", "-f", cfg], stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL)
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
        for n in reversed(cls.nodes):
            n.stop()
        cls.cluster.kill_epmd()
        if not os.environ.get("KEEP_TEST_DIR"):
            shutil.rmtree(cls.tmp, ignore_errors=True)

    def received(self):
        with open(os.path.join(self.tmp, "sub.out")) as f:
            return [l.split(" ", 1)[1] for l in f.read().splitlines() if " " in l]

    def where(self, dev):
        best, at = None, -1
        for name, br in self.bridges.items():
            pos = br.text().rfind("peer=%s:" % dev.source)
            if pos > at:
                best, at = name, pos
        return best

    def test_cluster(self):
        print("# %d-node RabbitMQ cluster up and joined in %.1f s" % (N_NODES, self.cluster_secs))
        a, b = self.bridges["a"], self.bridges["b"]
        devs = [Dev(self, i) for i in range(N_DEVICES)]
        try:
            for d in devs:
                d.connect()
            wait_for(lambda: sum(int(metrics(br.metrics_port)["mqtt_edge_bridge_devices_connected"])
                                 for br in (a, b)) == N_DEVICES, 15, "devices connected")
            da = next(d for d in devs if self.where(d) == "a")
            db = next(d for d in devs if self.where(d) == "b")

            # 1. A (node 1) and B (node 2) talk through the cluster.
            for rx, tx in ((da, db), (db, da)):
                rx.c.send(m.subscribe(1, [("scale/%s" % tx.name, 1)]))
                rx.c.expect(m.SUBACK, 10)
                tx.publish("%s:hello" % tx.name)
                got = rx.c.read(10)
                self.assertEqual(got.type, m.PUBLISH)
                topic, payload, qos, ppid, _, _ = got.publish_fields()
                self.assertEqual((topic, payload), ("scale/%s" % tx.name, ("%s:hello" % tx.name).encode()))
                rx.c.send(m.ack(m.PUBACK, ppid))
                rx.c.send(m.unsubscribe(2, ["scale/%s" % tx.name]))
                rx.c.expect(m.UNSUBACK, 10)

            # 2. Node 1 stops; A's links move to another node.
            since = a.log_size()
            t0 = time.monotonic()
            self.nodes[0].stop()
            stop_secs = time.monotonic() - t0
            for k in range(5):
                for d in devs:
                    d.publish("%s:during-%d" % (d.name, k))
            a.wait_log(r"upstream host 127\.0\.0\.1 port (%s) works" %
                       "|".join(str(n.port) for n in self.nodes[1:]), timeout=40, since=since)
            failover = time.monotonic() - t0
            for d in devs:
                d.publish("%s:after" % d.name)
            everything = set(p for d in devs for p in d.acked)
            wait_for(lambda: everything <= set(self.received()), 60, "every acknowledged message at the observer")
            lost = everything - set(self.received())
            reconnects = sum(d.reconnects for d in devs)
            print("# node 1 stopped (%.1f s): A's upstream links on another node %.1f s after the stop; "
                  "%d messages acknowledged, lost = %d, device reconnects = %d"
                  % (stop_secs, failover, len(everything), len(lost), reconnects))
            self.assertEqual(lost, set())
            self.assertEqual(reconnects, 0, "the devices were cut off")
        finally:
            for d in devs:
                d.close()


if __name__ == "__main__":
    unittest.main()
