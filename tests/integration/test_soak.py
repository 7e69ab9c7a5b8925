"""Fault soak (issue 12): QoS 1 both ways through the bridge while, in
turn, the bridge is killed -9 ten times and the broker is stopped
(SIGTERM, persistence on) ten times, with devices dropping off and coming
back at random moments.

Every MQTT client is raw MQTT 3.1.1 over TLS from Python (rawmqtt), one
thread each, with a persistent session (clean session 0) and its own
in-flight state, like a real client: after every reconnect it resends what
was not acknowledged, with DUP and the original packet id (§4.4).

  3 devices      through the bridge; each publishes "<dev> <seq>" (QoS 1)
                 on soak/dev/<dev> and subscribes (QoS 1) to soak/cmd/<dev>
  commander      on the main broker; publishes "<dev> <seq>" (QoS 1) on
                 soak/cmd/<dev> for each device in turn
  collector      on the main broker; subscribed (QoS 1) to soak/dev/#

At the end everything is brought up, the sources stop, and the test waits
(bounded) until every in-flight message is acknowledged and the counts stop
changing. For each direction it prints sent, acknowledged (PUBACKs the
sender got), received (distinct), lost (acknowledged, never received) and
duplicates; lost must be 0. A loss is printed with the broker's and the
bridge's log lines for it, to tell a loss of mosquitto's (2.0.11 drops a
few QoS 1 messages under maximum load; the rates here are moderate) from
one of the bridge's.

SOAK_SEED=N repeats a run's schedule (the seed is printed); SOAK_FAULTS=N
changes the number of faults of each kind (10).
"""

import collections
import os
import random
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from harness import Bridge, Mosquitto, TestPki, VALGRIND_ERROR, wait_for  # noqa: E402
import rawmqtt as m  # noqa: E402
from rawmqtt import Closed, RawClient  # noqa: E402

DEVICES = ["sensor-1", "sensor-2", "sensor-3"]
USERS = {"observer": "observer-pw", "sensor-1": "pw-1", "sensor-2": "pw-2", "sensor-3": "pw-3"}
FAULTS = int(os.environ.get("SOAK_FAULTS", "10"))
DEVICE_INTERVAL = 0.05     # 20 messages/s per device
COMMAND_INTERVAL = 0.1     # 10 commands/s per device
WINDOW = 10                # QoS 1 messages in flight per client (bridge: 20)
KEEPALIVE = 30
HARD_LIMIT = 330.0         # seconds: every loop of the test ends by then


class ProtocolError(Exception):
    pass


class Soak:
    """What every client thread shares: the switches and the clock."""

    def __init__(self, seed):
        self.t0 = time.monotonic()
        self.seed = seed
        self.done = threading.Event()       # threads end
        self.publishing = threading.Event()  # sources publish new messages
        self.publishing.set()
        self.drops = threading.Event()       # devices drop off now and then
        self.drops.set()
        self.lock = threading.Lock()
        self.events = []                     # (t, what): faults, for the report

    def now(self):
        return time.monotonic() - self.t0

    def event(self, what):
        with self.lock:
            self.events.append((self.now(), time.time(), what))
        print("# %7.2fs %s" % (self.now(), what), flush=True)

    def expired(self):
        return self.now() > HARD_LIMIT


class Client(threading.Thread):
    """One MQTT client with a persistent session, reconnecting for ever
    (bounded by Soak.done). publish_to: [(dev, topic)] published to in
    turn, one message every interval; subscribe: a filter (QoS 1),
    subscribed after every CONNECT as a real client does; drops: a
    random.Random that decides when the client drops off (close without
    DISCONNECT) and for how long."""

    def __init__(self, soak, name, port, ca, cert, client_id, username, password,
                 publish_to=(), interval=1.0, subscribe=None, drops=None):
        super().__init__(name=name, daemon=True)
        self.soak = soak
        self.port = port
        self.ca = ca
        self.cert = cert
        self.client_id = client_id
        self.username = username
        self.password = password
        self.publish_to = list(publish_to)
        self.interval = interval
        self.subscribe_filter = subscribe
        self.rng = drops
        self.lock = threading.Lock()
        self.seq = {dev: 0 for dev, _ in self.publish_to}          # sent = highest seq
        self.acked = {dev: {} for dev, _ in self.publish_to}       # seq -> wall time of PUBACK
        self.pids = {dev: {} for dev, _ in self.publish_to}        # seq -> packet ids used
        self.inflight = collections.OrderedDict()                  # pid -> (dev, seq, topic, payload)
        self.received = collections.defaultdict(list)              # dev -> [seq] in arrival order
        self.connects = 0
        self.dropped = 0
        self.resent = 0
        self.stray_acks = 0
        self.subscribed = threading.Event()
        self.drop_now = threading.Event()  # the schedule's: drop off now
        self.connected = False
        self.errors = []
        self._turn = 0
        self._next_pid = 0

    # -- what the main thread reads --------------------------------------

    def snapshot(self):
        with self.lock:
            return ({d: s for d, s in self.seq.items()},
                    {d: dict(a) for d, a in self.acked.items()},
                    {d: list(r) for d, r in self.received.items()},
                    len(self.inflight))

    def received_count(self, dev):
        with self.lock:
            return len(self.received.get(dev, ()))

    def inflight_count(self):
        with self.lock:
            return len(self.inflight)

    # -- the thread --------------------------------------------------------

    def run(self):
        backoff = 0.05
        while not self.soak.done.is_set() and not self.soak.expired():
            c = None
            try:
                c = RawClient(self.port, self.ca, self.cert, timeout=3.0)
                sp, rc = c.connect(self.client_id, self.username, self.password, clean=False,
                                   keepalive=KEEPALIVE)
                if rc != 0:
                    raise ProtocolError("CONNACK %d" % rc)
                backoff = 0.05
                with self.lock:
                    self.connects += 1
                self.connected = True
                self._session(c)
            except (OSError, Closed, ProtocolError, AssertionError) as e:
                # the bridge or the broker went away (or refused for now)
                if isinstance(e, ProtocolError) and "CONNACK" not in str(e):
                    self.errors.append("%.2fs %s" % (self.soak.now(), e))
            except Exception as e:  # a bug of the test: keep it for the report
                self.errors.append("%.2fs %r" % (self.soak.now(), e))
                raise
            finally:
                self.connected = False
                if c:
                    c.close()
            if self.soak.done.is_set():
                break
            # reconnect: a real client's backoff, short and bounded
            self.soak.done.wait(backoff)
            backoff = min(backoff * 2, 0.5)

    def _pid(self):
        for _ in range(65536):
            self._next_pid = self._next_pid % 65535 + 1
            if self._next_pid not in self.inflight:
                return self._next_pid
        raise ProtocolError("no packet id free")

    def _send(self, c, data):
        c.send(data)
        self.last_send = time.monotonic()

    def _publish(self, c):
        dev, topic = self.publish_to[self._turn % len(self.publish_to)]
        self._turn += 1
        pid = self._pid()
        with self.lock:
            self.seq[dev] += 1
            seq = self.seq[dev]
            payload = "%s %d" % (dev, seq)
            self.inflight[pid] = (dev, seq, topic, payload)
            self.pids[dev].setdefault(seq, []).append(pid)
        self._send(c, m.publish(topic, payload, qos=1, pid=pid))

    def _session(self, c):
        self.last_send = time.monotonic()
        # §4.4: resend every unacknowledged PUBLISH, in order, with DUP and
        # its original packet id
        with self.lock:
            pending = list(self.inflight.items())
            self.resent += len(pending)
        for pid, (dev, seq, topic, payload) in pending:
            self._send(c, m.publish(topic, payload, qos=1, pid=pid, dup=True))
        sub_pid = None
        if self.subscribe_filter:
            sub_pid = self._pid()
            self._send(c, m.subscribe(sub_pid, [(self.subscribe_filter, 1)]))
        now = time.monotonic()
        next_pub = now
        drop_at = now + self.rng.uniform(3.0, 10.0) if self.rng else None
        while not self.soak.done.is_set():
            now = time.monotonic()
            if self.soak.expired():
                return
            if drop_at and (now >= drop_at or self.drop_now.is_set()) and self.soak.drops.is_set():
                # drop off: no DISCONNECT, the socket just goes (the
                # bridge sees a network loss: §3.1.2.5, the will and the
                # session stay); away for a random while
                c.close()
                with self.lock:
                    self.dropped += 1
                # now and then away long enough for a replayer to take
                # its spool (and to come back while it replays)
                away = self.rng.uniform(1.5, 4.0) if self.drop_now.is_set() or self.rng.random() < 0.25 \
                    else self.rng.uniform(0.1, 1.5)
                self.drop_now.clear()
                self.soak.done.wait(away)
                return
            if (self.publish_to and self.soak.publishing.is_set() and now >= next_pub
                    and len(self.inflight) < WINDOW):
                self._publish(c)
                next_pub = max(next_pub + self.interval, now - 1.0)
            if now - self.last_send > KEEPALIVE / 3:
                self._send(c, m.PINGREQ_PKT)
            wait = 0.1
            if self.publish_to and self.soak.publishing.is_set() and len(self.inflight) < WINDOW:
                wait = min(wait, max(0.002, next_pub - now))
            try:
                p = c.read(wait)
            except socket.timeout:
                continue
            self._handle(c, p, sub_pid)

    def _handle(self, c, p, sub_pid):
        if p.type == m.PUBACK:
            with self.lock:
                entry = self.inflight.pop(p.pid, None)
                if entry is None:
                    self.stray_acks += 1
                    return
                dev, seq = entry[0], entry[1]
                self.acked[dev].setdefault(seq, time.time())
        elif p.type == m.PUBLISH:
            topic, payload, qos, pid, retain, dup = p.publish_fields()
            parts = payload.decode(errors="replace").split()
            if len(parts) != 2 or not parts[1].isdigit():
                raise ProtocolError("unexpected message %r on %s" % (payload, topic))
            with self.lock:
                self.received[parts[0]].append(int(parts[1]))
            if qos == 1:
                self._send(c, m.ack(m.PUBACK, pid))
            elif qos:
                raise ProtocolError("QoS %d message on %s" % (qos, topic))
        elif p.type == m.SUBACK:
            if p.pid != sub_pid or p.body[2:] != b"\x01":
                raise ProtocolError("SUBACK %r for %r" % (p, sub_pid))
            self.subscribed.set()
        elif p.type == m.PINGRESP:
            pass
        else:
            raise ProtocolError("unexpected packet %r" % p)


class TestFaultSoak(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="meb-soak-")
        os.chmod(self.tmp, 0o755)
        self.pki = TestPki(os.path.join(self.tmp, "pki"))
        # Nothing may be dropped by the broker for queue length while a
        # client is away (mosquitto's default is 1000 messages).
        self.mosquitto = Mosquitto(self.pki, self.tmp, USERS, persistence=True,
                                   extra=["max_queued_messages 100000", "max_queued_bytes 0"])
        self.bridge = Bridge(self.pki, self.tmp, self.mosquitto)
        self.clients = []
        self.soak = None

    def tearDown(self):
        if self.soak:
            self.soak.done.set()
        for cl in self.clients:
            cl.join(5)
        rc = self.bridge.stop()
        self.mosquitto.stop()
        if os.environ.get("KEEP_TEST_DIR"):
            print("# test files kept in", self.tmp)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
        self.assertIn(rc, (0, None), "the bridge exited with status %s (valgrind errors: %s)"
                      % (rc, rc == VALGRIND_ERROR))

    def assertBridgeAlive(self):
        self.assertTrue(self.bridge.alive(),
                        "the bridge died by itself:\n" + self.bridge.text()[-4000:])

    def progress(self):
        """Per device: (messages at the collector, commands at the device)."""
        return [(self.collector.received_count(d), dev.received_count(d))
                for d, dev in zip(DEVICES, self.devices)]

    def wait_recovered(self, what):
        """Every device's messages reach the collector and its commands
        reach it again, after a fault."""
        before = self.progress()
        wait_for(lambda: all(a[0] > b[0] and a[1] > b[1] for a, b in zip(self.progress(), before)),
                 60, "traffic both ways for every device after %s" % what)

    def test_fault_soak(self):
        seed = int(os.environ.get("SOAK_SEED", "0")) or random.SystemRandom().randrange(1, 2 ** 31)
        print("# seed %d (SOAK_SEED=%d repeats the schedule)" % (seed, seed), flush=True)
        rng = random.Random(seed)
        self.soak = soak = Soak(seed)
        ca = self.pki.ca.ca_crt
        self.mosquitto.start()
        self.bridge.start()

        self.collector = Client(soak, "collector", self.mosquitto.port, ca, self.pki.observer,
                                "soak-collector", "observer", USERS["observer"],
                                subscribe="soak/dev/#")
        self.commander = Client(soak, "commander", self.mosquitto.port, ca, self.pki.observer,
                                "soak-commander", "observer", USERS["observer"],
                                publish_to=[(d, "soak/cmd/" + d) for d in DEVICES],
                                interval=COMMAND_INTERVAL / len(DEVICES))
        self.devices = [Client(soak, d, self.bridge.port, ca, self.pki.device(d), d, d, USERS[d],
                               publish_to=[(d, "soak/dev/" + d)], interval=DEVICE_INTERVAL,
                               subscribe="soak/cmd/" + d, drops=random.Random(seed * 10 + i))
                        for i, d in enumerate(DEVICES)]
        self.clients = [self.collector] + self.devices + [self.commander]
        # subscribed before anyone publishes to them
        self.collector.start()
        wait_for(self.collector.subscribed.is_set, 10, "the collector's SUBACK")
        for d in self.devices:
            d.start()
        wait_for(lambda: all(d.subscribed.is_set() for d in self.devices), 20, "the devices' SUBACKs")
        self.commander.start()
        self.wait_recovered("the start")

        # -- the faults, in turn ------------------------------------------
        # kill, stop, kill, stop...; now and then a kill falls inside the
        # broker's outage (the spool, acknowledged and fsync'd, must survive
        # the crash and be replayed by the next process)
        schedule = ["kill" if i % 2 == 0 else "stop" for i in range(2 * FAULTS)]
        i = 1
        while i < len(schedule):
            if schedule[i] == "stop" and i + 1 < len(schedule) and rng.random() < 0.3:
                schedule[i:i + 2] = ["stop+kill"]
            i += 1
        n = 0
        for kind in schedule:
            self.assertLess(soak.now(), HARD_LIMIT - 90, "the faults took too long")
            soak.done.wait(rng.uniform(0.3, 5.0))  # the schedule, not a check
            self.assertBridgeAlive()
            if kind == "kill":
                n += 1
                soak.event("fault %d: bridge killed (-9)" % n)
                self.bridge.kill()
                soak.done.wait(rng.uniform(0.05, 1.0))
                self.bridge.start()
                soak.event("bridge restarted")
            else:
                n += 1
                soak.event("fault %d: broker stopped (SIGTERM)" % n)
                self.mosquitto.stop(signal.SIGTERM)
                if rng.random() < 0.5:  # a device leaves its spool behind
                    rng.choice(self.devices).drop_now.set()
                soak.done.wait(rng.uniform(0.2, 3.0))
                if kind == "stop+kill":
                    self.assertBridgeAlive()
                    n += 1
                    soak.event("fault %d: bridge killed (-9) while the broker is away" % n)
                    self.bridge.kill()
                    soak.done.wait(rng.uniform(0.05, 1.0))
                    self.bridge.start()
                    soak.event("bridge restarted")
                    # the devices reconnect to it, offline, and spool again
                    soak.done.wait(rng.uniform(0.2, 2.0))
                self.mosquitto.start()
                soak.event("broker restarted")
            self.wait_recovered("fault %d" % n)
            for cl in self.clients:
                self.assertFalse(cl.errors, "%s: %s" % (cl.name, cl.errors))

        # -- drain ------------------------------------------------------------
        soak.event("drain: sources stop, devices stay")
        soak.drops.clear()
        soak.publishing.clear()
        self.assertBridgeAlive()
        wait_for(lambda: all(cl.connected for cl in self.clients), 30, "every client connected")
        try:
            wait_for(lambda: all(cl.inflight_count() == 0 for cl in self.clients), 60,
                     "every message in flight acknowledged")
        except TimeoutError:
            pass  # reported below
        self.wait_stable()
        soak.event("drained")
        self.assertBridgeAlive()
        soak.done.set()
        for cl in self.clients:
            cl.join(10)
        self.report()

    def counts(self):
        _, _, col, _ = self.collector.snapshot()
        cmd = {d: dev.snapshot()[2].get(d, []) for d, dev in zip(DEVICES, self.devices)}
        return col, cmd

    def complete(self):
        col, cmd = self.counts()
        _, cacked, _, _ = self.commander.snapshot()
        for d, dev in zip(DEVICES, self.devices):
            _, acked, _, _ = dev.snapshot()
            if not set(acked[d]) <= set(col.get(d, [])):
                return False
            if not set(cacked[d]) <= set(cmd[d]):
                return False
        return True

    def wait_stable(self):
        """Until everything acknowledged was received, or nothing changed
        for 5 s (bounded: 90 s)."""
        state = {"last": None, "since": time.monotonic()}

        def settled():
            if self.complete():
                return True
            col, cmd = self.counts()
            now = (sorted((k, len(v)) for k, v in col.items()), sorted((k, len(v)) for k, v in cmd.items()))
            if now != state["last"]:
                state["last"], state["since"] = now, time.monotonic()
            return time.monotonic() - state["since"] > 5
        try:
            wait_for(settled, 90, "the counts to stop changing")
        except TimeoutError:
            pass

    def report(self):
        soak = self.soak
        col, cmd = self.counts()
        csent, cacked, _, cinflight = self.commander.snapshot()
        up = collections.Counter()
        down = collections.Counter()
        losses = []
        for d, dev in zip(DEVICES, self.devices):
            sent, acked, _, inflight = dev.snapshot()
            got = col.get(d, [])
            lost = sorted(set(acked[d]) - set(got))
            up.update(sent=sent[d], acked=len(acked[d]), received=len(set(got)), lost=len(lost),
                      dup=len(got) - len(set(got)), inflight=inflight,
                      unacked_received=len(set(got) - set(acked[d])))
            losses += [("up", d, s, dev.pids[d].get(s), acked[d][s]) for s in lost]
            got = cmd[d]
            lost = sorted(set(cacked[d]) - set(got))
            down.update(sent=csent[d], acked=len(cacked[d]), received=len(set(got)), lost=len(lost),
                        dup=len(got) - len(set(got)),
                        unacked_received=len(set(got) - set(cacked[d])))
            losses += [("down", d, s, self.commander.pids[d].get(s), cacked[d][s]) for s in lost]
            print("# %s: up sent=%d acked=%d received=%d dup=%d | down sent=%d acked=%d received=%d "
                  "dup=%d | connects=%d drops=%d resent=%d"
                  % (d, sent[d], len(acked[d]), len(set(col.get(d, []))),
                     len(col.get(d, [])) - len(set(col.get(d, []))), csent[d], len(cacked[d]),
                     len(set(got)), len(got) - len(set(got)), dev.connects, dev.dropped, dev.resent),
                  flush=True)
        down["inflight"] = cinflight
        fmt = ("# %s sent=%d acknowledged=%d received=%d lost=%d duplicates=%d "
               "(in flight at the end %d; received but not acknowledged %d)")
        print(fmt % ("device->broker", up["sent"], up["acked"], up["received"], up["lost"], up["dup"],
                     up["inflight"], up["unacked_received"]), flush=True)
        print(fmt % ("broker->device", down["sent"], down["acked"], down["received"], down["lost"],
                     down["dup"], down["inflight"], down["unacked_received"]), flush=True)
        nkill = sum(1 for e in soak.events if "bridge killed" in e[2])
        nstop = sum(1 for e in soak.events if "broker stopped" in e[2])
        print("# faults: bridge kill -9 x%d, broker SIGTERM x%d, device drops x%d; "
              "commander connects %d, collector connects %d; wall %.1fs; seed %d"
              % (nkill, nstop, sum(d.dropped for d in self.devices), self.commander.connects,
                 self.collector.connects, soak.now(), soak.seed), flush=True)
        self.bridge_figures()
        if losses:
            self.explain(losses)
        self.assertEqual(up["lost"], 0, "device->broker: acknowledged messages lost (seed %d)" % soak.seed)
        self.assertEqual(down["lost"], 0, "broker->device: acknowledged commands lost (seed %d)" % soak.seed)
        self.assertEqual(up["inflight"] + down["inflight"], 0, "messages never acknowledged after the drain")
        self.assertEqual(nkill, FAULTS)
        self.assertEqual(nstop, FAULTS)

    def bridge_figures(self):
        """What the faults made the bridge do, from its log: the paths of
        store and forward this run went through."""
        log = self.bridge.text()
        restored = [int(n) for n in re.findall(r"upstream connection restored, (\d+) spooled", log)]
        print("# bridge: devices accepted offline %d, uplinks lost with the device staying %d, "
              "uplinks restored %d (%d spooled messages to send), replays of absent devices %d "
              "(taken back by the device %d), "
              "warnings %d, errors %d"
              % (log.count("device accepted, QoS 1/2 messages spooled"),
                 log.count("uplink lost; the device stays connected"), len(restored), sum(restored),
                 len(re.findall(r"replaying \d+ spooled messages? of .* while the device is away", log)),
                 log.count("is back: it takes its spool over"), len(re.findall(r"\[warning\]", log)),
                 len(re.findall(r"\[error\]", log))), flush=True)
        kinds = collections.Counter(re.sub(r"\d+", "N", l.split("]: ", 1)[-1])[:150]
                                    for l in log.splitlines() if re.search(r"\[(warning|error)\]", l))
        for text, n in kinds.most_common(8):
            print("#   %dx %s" % (n, text), flush=True)

    def explain(self, losses):
        """For each loss: when it was acknowledged, the fault before, and
        the broker's and the bridge's log lines for its packet id, so a
        loss of mosquitto's can be told from one of the bridge's."""
        with open(self.mosquitto.log, errors="replace") as f:
            mlog = f.read().splitlines()
        blog = self.bridge.text().splitlines()
        for line in mlog:
            if "dropped" in line or "queue" in line.lower():
                print("# mosquitto: " + line)
        for direction, dev, seq, pids, acked_at in losses[:10]:
            before = [e for e in self.soak.events if e[1] <= acked_at]
            print("# LOST %s %s seq=%d packet ids %s, acknowledged at %.3f, after: %s"
                  % (direction, dev, seq, pids, acked_at, before[-1][2] if before else "-"), flush=True)
            # the broker's side of it: the PUBLISH it received under that
            # packet id and its PUBACK (every use of the id: it is reused)
            sender = dev if direction == "up" else "soak-commander"
            topic = ("soak/dev/" if direction == "up" else "soak/cmd/") + dev
            for pid in pids or ():
                rx = re.compile(r"Received PUBLISH from %s \(d\d, q\d, r\d, m%d, '%s'|Sending PUBACK to %s \(m%d,"
                                % (re.escape(sender), pid, re.escape(topic), re.escape(sender), pid))
                # ids are reused: only the lines near the acknowledgement
                hits = [l for l in mlog if rx.search(l) and l.split(":", 1)[0].isdigit()
                        and abs(int(l.split(":", 1)[0]) - acked_at) < 30]
                if not hits:
                    print("# mosquitto: nothing under m%d near it (a spooled message goes upstream "
                          "under an id of the bridge's, counted down from 65535)" % pid)
                for l in hits[-8:]:
                    print("# mosquitto: " + l)
            near = [l for l in blog if dev in l and "expires in" not in l
                    and re.search(r"warn|error|spool|replay|lost", l)]
            for l in near[-15:]:
                print("# bridge: " + l)
        if len(losses) > 10:
            print("# ... %d more losses" % (len(losses) - 10))


if __name__ == "__main__":
    unittest.main(verbosity=2)
