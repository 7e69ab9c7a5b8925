#!/usr/bin/env python3
"""mqtt-edge-bridge benchmarks (issues 6 and 13), every scenario in one invocation.

On 127.0.0.1 only. Starts, per invocation:
  M     the main mosquitto: mutual-TLS listener (+ password file), a plain
        TCP listener and a Unix socket listener
  (a) direct      devices -> M's mutual-TLS listener (the baseline)
  (b) stunnel     devices -> stunnel (mutual TLS) -> M's plain port
  (c) mosq-bridge devices -> a second mosquitto (mutual TLS), bridged
                  into M's plain port (mosquitto's own bridge)
  (d) edge-tls    devices -> mqtt-edge-bridge -> M over TLS
      edge-unix   devices -> mqtt-edge-bridge -> M over the Unix socket
Subscribers always sit on M's mutual-TLS listener.

Then, with fresh processes: N idle device sessions (RSS per session), a
reconnect storm of BearSSL edge-device processes (full vs resumed),
instructions per message under callgrind and allocations per message
(tests/lib/alloc_count.so, LD_PRELOAD) -- these two for the bridge, for
mosquitto's own bridge and for mosquitto direct, the same way.

Results: bench/results/latest.md (and latest.json with every raw figure).
Every wait is bounded; every process started here is stopped here.
"""

import argparse
import datetime
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "lib"))
from harness import free_port, wait_for, write_ini  # noqa: E402
from pki import Pki  # noqa: E402
import alloc_count  # noqa: E402

USER, PASSWORD = "bench", "bench-pw"
SCENARIOS = ["direct", "stunnel", "mosq-bridge", "edge-tls", "edge-unix"]
SCENARIO_TITLE = {
    "direct": "(a) direct to mosquitto (mutual TLS)",
    "stunnel": "(b) stunnel -> mosquitto plain",
    "mosq-bridge": "(c) mosquitto bridged into mosquitto",
    "edge-tls": "(d) mqtt-edge-bridge, TLS upstream",
    "edge-unix": "(d) mqtt-edge-bridge, Unix-socket upstream",
    "alt-tls": "(d') candidate build (--alt-bridge), TLS upstream",
    "alt-unix": "(d') candidate build (--alt-bridge), Unix-socket upstream",
}
NODELAY = [True]  # mosquitto's set_tcp_nodelay (--mosquitto-nagle turns it off)
PROCS = []  # every Popen we started, for the final cleanup


def log(msg):
    print("[%s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def start(args, logpath, **kw):
    f = open(logpath, "ab")
    p = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kw)
    p._logf = f
    PROCS.append(p)
    return p


def stop(p, sig=signal.SIGTERM, timeout=20):
    if p is None:
        return None
    if p.poll() is None:
        try:
            p.send_signal(sig)
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if getattr(p, "_logf", None):
        p._logf.close()
        p._logf = None
    if p in PROCS:
        PROCS.remove(p)
    return p.returncode


def stop_all():
    for p in list(PROCS):
        stop(p, timeout=10)


def cpu_ticks(pid):
    """utime+stime of a process, in seconds."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def nfds(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return -1


# ---------------------------------------------------------------- setup ----

class Env:
    def __init__(self, work, bins):
        self.work = work
        self.bins = bins
        pkidir = os.path.join(work, "pki")
        log("making the test PKI in %s" % pkidir)
        self.ca = Pki(pkidir, "ca")
        self.broker = self.ca.issue("broker", "raspberry", san="IP:127.0.0.1,DNS:raspberry")
        self.listener = self.ca.issue("listener", "127.0.0.1")  # CN only: what BearSSL needs
        self.bridge_client = self.ca.issue("bridge-client", "mqtt-edge-bridge", client=True)
        self.observer = self.ca.issue("observer", "observer", client=True)
        self.device = self.ca.issue("device", "bench-device", client=True, ec=True)
        self.passwd = os.path.join(work, "passwd")
        open(self.passwd, "w").close()
        subprocess.run(["mosquitto_passwd", "-b", self.passwd, USER, PASSWORD], check=True)

    def loadgen_common(self):
        return ["--ca", self.ca.ca_crt, "--cert", self.device[0], "--key", self.device[1],
                "--sub-cert", self.observer[0], "--sub-key", self.observer[1],
                "--username", USER, "--password", PASSWORD]


class Mosquitto:
    """The main broker M. wrapper (valgrind ...) and child_env (LD_PRELOAD)
    are for measuring M itself: callgrind and allocations of "direct"."""

    def __init__(self, env, name="main", wrapper=(), child_env=None):
        self.env = env
        self.wrapper = list(wrapper)
        self.child_env = child_env
        self.dir = os.path.join(env.work, name)
        os.makedirs(self.dir, exist_ok=True)
        self.tls_port = free_port()
        self.plain_port = free_port()
        self.sock = os.path.join(self.dir, "mqtt.sock")
        self.conf = os.path.join(self.dir, "mosquitto.conf")
        lines = [
            "per_listener_settings true",
            "log_dest file %s" % os.path.join(self.dir, "mosquitto.log"),
            "log_type error", "log_type warning",
            "persistence false",
            "max_keepalive 65535",
            "set_tcp_nodelay %s" % ("true" if NODELAY[0] else "false"),
            "listener %d 127.0.0.1" % self.tls_port,
            "cafile %s" % env.ca.ca_crt,
            "certfile %s" % env.broker[0],
            "keyfile %s" % env.broker[1],
            "require_certificate true",
            "tls_version tlsv1.2",
            "allow_anonymous false",
            "password_file %s" % env.passwd,
            "listener %d 127.0.0.1" % self.plain_port,
            "allow_anonymous true",
            "listener 0 %s" % self.sock,
            "allow_anonymous true",
        ]
        if os.geteuid() == 0:
            lines.insert(0, "user root")
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.proc = None

    def start(self, timeout=10):
        if os.path.exists(self.sock):
            os.unlink(self.sock)
        self.proc = start(self.wrapper + ["mosquitto", "-c", self.conf], os.path.join(self.dir, "stdout.log"),
                          env=self.child_env)
        wait_for(lambda: port_open(self.tls_port) and os.path.exists(self.sock), timeout, "mosquitto")
        return self

    def stop(self):
        stop(self.proc)
        self.proc = None


class Stunnel:
    def __init__(self, env, m):
        self.dir = os.path.join(env.work, "stunnel")
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port()
        self.conf = os.path.join(self.dir, "stunnel.conf")
        with open(self.conf, "w") as f:
            f.write("\n".join([
                "foreground = yes", "pid =", "debug = 3",
                "output = %s" % os.path.join(self.dir, "stunnel.log"),
                "socket = l:TCP_NODELAY=1", "socket = r:TCP_NODELAY=1",
                "[mqtts]",
                "accept = 127.0.0.1:%d" % self.port,
                "connect = 127.0.0.1:%d" % m.plain_port,
                "cert = %s" % env.listener[0], "key = %s" % env.listener[1],
                "CAfile = %s" % env.ca.ca_crt,
                "verifyChain = yes", "requireCert = yes",
                "sslVersionMin = TLSv1.2",
            ]) + "\n")
        self.proc = None

    def start(self):
        self.proc = start(["stunnel4", self.conf], os.path.join(self.dir, "stdout.log"))
        wait_for(lambda: port_open(self.port), 10, "stunnel")
        return self

    def stop(self):
        stop(self.proc)


class MosqBridge:
    """A second mosquitto with its own mutual-TLS listener, bridged into M."""

    def __init__(self, env, m, name="mosq-bridge", wrapper=(), child_env=None):
        self.wrapper = list(wrapper)
        self.child_env = child_env
        self.dir = os.path.join(env.work, name)
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port()
        self.conf = os.path.join(self.dir, "mosquitto.conf")
        lines = [
            "log_dest file %s" % os.path.join(self.dir, "mosquitto.log"),
            "log_type error", "log_type warning",
            "persistence false",
            "max_keepalive 65535",
            "set_tcp_nodelay %s" % ("true" if NODELAY[0] else "false"),
            "listener %d 127.0.0.1" % self.port,
            "cafile %s" % env.ca.ca_crt,
            "certfile %s" % env.listener[0],
            "keyfile %s" % env.listener[1],
            "require_certificate true",
            "tls_version tlsv1.2",
            "allow_anonymous true",
            "connection main",
            "address 127.0.0.1:%d" % m.plain_port,
            "topic bench/# out 1",
            "cleansession true",
            "notifications false",
            "try_private false",
            "bridge_protocol_version mqttv311",
        ]
        if os.geteuid() == 0:
            lines.insert(0, "user root")
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.proc = None

    def start(self, timeout=10):
        self.proc = start(self.wrapper + ["mosquitto", "-c", self.conf], os.path.join(self.dir, "stdout.log"),
                          env=self.child_env)
        wait_for(lambda: port_open(self.port), timeout, "mosquitto (bridge)")
        # Let its bridge connection come up (slower under valgrind).
        time.sleep(3.0 if self.wrapper else 0.5)
        return self

    def stop(self):
        stop(self.proc)


class EdgeBridge:
    def __init__(self, env, m, upstream, name=None, wrapper=(), level="info", extra=None, binary=None,
                 child_env=None):
        name = name or "edge-" + upstream
        self.dir = os.path.join(env.work, name)
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port()
        self.conf = os.path.join(self.dir, "bridge.ini")
        self.log = os.path.join(self.dir, "bridge.log")
        self.wrapper = list(wrapper)
        self.child_env = child_env
        self.bin = binary or env.bins["bridge"]
        cfg = {
            "listener": {"bind_address": "127.0.0.1", "port": str(self.port),
                         "certfile": env.listener[0], "keyfile": env.listener[1],
                         "cafile": env.ca.ca_crt, "handshake_timeout": "30"},
            "upstream": ({"host": "127.0.0.1", "port": str(m.tls_port), "cafile": env.ca.ca_crt,
                          "certfile": env.bridge_client[0], "keyfile": env.bridge_client[1]}
                         if upstream == "tls" else {"host": m.sock}),
            # The benchmark's files are root's, like mosquitto's "user root".
            "bridge": {"user": ""} if os.geteuid() == 0 else {},
            "limits": {"max_connections": "0", "max_handshakes": "0", "max_connections_per_address": "0"},
            "spool": {"directory": os.path.join(self.dir, "spool")},
            "log": {"level": level, "target": "stderr"},
        }
        os.makedirs(os.path.join(self.dir, "spool"), exist_ok=True)
        for sec, kv in (extra or {}).items():
            cfg.setdefault(sec, {}).update(kv)
        write_ini(self.conf, cfg)
        self.cfg = cfg
        self.proc = None

    def text(self):
        with open(self.log, errors="replace") as f:
            return f.read()

    def start(self, timeout=15):
        # An older build (--alt-bridge, the baseline of a before/after)
        # may not know a [limits] key this one writes: it says so and
        # exits; drop that key for it and start again (bounded).
        for _ in range(8):
            size = os.path.getsize(self.log) if os.path.exists(self.log) else 0
            self.proc = start(self.wrapper + [self.bin, "--config", self.conf], self.log, env=self.child_env)
            wait_for(lambda: re.search(r"mqtt-edge-bridge \S+ ready", self.text()[size:]) or
                     self.proc.poll() is not None, timeout, "mqtt-edge-bridge ready")
            if self.proc.poll() is None:
                return self
            m = re.search(r"\[(\w+)\] (\w+): unknown key", self.text()[size:])
            if not m or m.group(2) not in self.cfg.get(m.group(1), {}):
                break
            log("%s does not know [%s] %s: started without it" % (self.bin, m.group(1), m.group(2)))
            del self.cfg[m.group(1)][m.group(2)]
            write_ini(self.conf, self.cfg)
        raise RuntimeError("the bridge did not start:\n" + self.text()[-2000:])

    def stop(self):
        return stop(self.proc, timeout=60)


# ------------------------------------------------------------- loadgen ----

def run_loadgen(env, args, timeout):
    """Run bench-loadgen; return (json result, its own CPU seconds)."""
    cmd = [env.bins["loadgen"], "run"] + env.loadgen_common() + args
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    PROCS.append(p)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    finally:
        PROCS.remove(p)
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = None
    for line in out.splitlines():
        if line.startswith("{"):
            res = json.loads(line)
    if res is None:
        res = {"error": "no result", "stderr": err[-800:]}
    elif err.strip():
        res["stderr"] = err.strip()[-400:]
    return res, ru


class Scenario:
    def __init__(self, name, pub_port, procs):
        self.name = name
        self.pub_port = pub_port
        self.procs = procs  # server processes on the path (CPU accounting)


def one_run(env, m, sc, test, opts):
    pids = [p.pid for p in sc.procs if p is not None]
    cpu0 = {pid: cpu_ticks(pid) for pid in pids}
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    prefix = "bench/%s-%d" % (sc.name, int(time.monotonic() * 1000))
    args = ["--pub-port", str(sc.pub_port), "--sub-port", str(m.tls_port),
            "--pubs", str(opts.pubs), "--subs", str(opts.subs), "--qos", str(test["qos"]),
            "--size", str(opts.size), "--rate", str(test["rate"]), "--window", str(opts.window),
            "--warmup", str(opts.warmup), "--duration", str(opts.duration), "--drain", "3",
            "--topic-prefix", prefix, "--label", sc.name, "--connect-timeout", "20"]
    res, ru1 = run_loadgen(env, args, timeout=opts.warmup + opts.duration + 40)
    cpu = sum(cpu_ticks(pid) - cpu0[pid] for pid in pids)
    lg_cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    elapsed = opts.warmup + opts.duration
    res["server_cpu_s"] = round(cpu, 3)
    res["loadgen_cpu_s"] = round(lg_cpu, 3)
    delivered = res.get("msgs_per_s", 0) * res.get("seconds", 0)
    # CPU of every server process on the path, per delivered message, over
    # warmup + window (publishing time) -- an approximation good to ~10 %.
    res["server_cpu_us_per_msg"] = round(cpu * 1e6 / (res.get("msgs_per_s", 0) * elapsed), 2) \
        if delivered else None
    return res


class MessageServers:
    """M, stunnel, the bridging mosquitto and both bridges, all at once."""

    def __init__(self, env):
        self.env = env
        self.all = []

    def start(self):
        env = self.env
        self.m = Mosquitto(env).start()
        self.st = Stunnel(env, self.m).start()
        self.mb = MosqBridge(env, self.m).start()
        self.et = EdgeBridge(env, self.m, "tls").start()
        self.eu = EdgeBridge(env, self.m, "unix").start()
        self.all = [self.eu, self.et, self.mb, self.st, self.m]
        self.names = ["edge-unix", "edge-tls", "mosq-bridge", "stunnel", "mosquitto"]
        m = self.m
        if env.bins.get("alt"):
            # A second build of the bridge (a candidate fix), measured in
            # the same invocation, interleaved with everything else.
            self.au = EdgeBridge(env, m, "unix", name="alt-unix", binary=env.bins["alt"]).start()
            self.at = EdgeBridge(env, m, "tls", name="alt-tls", binary=env.bins["alt"]).start()
            self.all = [self.au, self.at] + self.all
            self.names = ["alt-unix", "alt-tls"] + self.names
        self.scen = {
            "direct": Scenario("direct", m.tls_port, [m.proc]),
            "stunnel": Scenario("stunnel", self.st.port, [m.proc, self.st.proc]),
            "mosq-bridge": Scenario("mosq-bridge", self.mb.port, [m.proc, self.mb.proc]),
            "edge-tls": Scenario("edge-tls", self.et.port, [m.proc, self.et.proc]),
            "edge-unix": Scenario("edge-unix", self.eu.port, [m.proc, self.eu.proc]),
        }
        if env.bins.get("alt"):
            self.scen["alt-unix"] = Scenario("alt-unix", self.au.port, [m.proc, self.au.proc])
            self.scen["alt-tls"] = Scenario("alt-tls", self.at.port, [m.proc, self.at.proc])
        return self

    def dead(self):
        return ["%s (exit %s)" % (n, x.proc.returncode) for n, x in zip(self.names, self.all)
                if x.proc.poll() is not None]

    def stop(self):
        for x in self.all:
            x.stop()
        self.all = []


def bench_messages(env, opts, results):
    tests = []
    for q in opts.qos:
        tests.append({"name": "throughput", "qos": q, "rate": 0})
    for q in opts.qos:
        tests.append({"name": "latency", "qos": q, "rate": opts.rate})
    srv = MessageServers(env).start()
    restarts = 0
    try:
        # Repetitions interleaved across scenarios, so a slow spell of the
        # machine hits every scenario alike.
        for rep in range(opts.reps):
            for test in tests:
                for name in opts.scenarios:
                    key = "%s-q%d" % (test["name"], test["qos"])
                    for attempt in range(2):
                        r = one_run(env, srv.m, srv.scen[name], test, opts)
                        dead = srv.dead()
                        if not dead:
                            break
                        # A server died under us (or was killed from outside):
                        # the figure is void; start everything again, once.
                        log("servers died: %s; restarting them" % ", ".join(dead))
                        restarts += 1
                        results.setdefault("restarts", []).append({"run": key, "scenario": name, "dead": dead})
                        srv.stop()
                        srv.start()
                        if restarts > 3:
                            raise RuntimeError("servers keep dying: %s" % dead)
                    results.setdefault(key, {}).setdefault(name, []).append(r)
                    log("rep %d %-14s %-11s %s" % (rep + 1, key, name, short(r)))
    finally:
        srv.stop()


def short(r):
    if "error" in r:
        return "ERROR %s" % r
    return ("%8.0f msg/s  p50 %7.0f us  p99 %7.0f us  max %7.0f us  lost %d dup %d  cpu %.1f us/msg" %
            (r["msgs_per_s"], r["p50_us"], r["p99_us"], r["max_us"], r["lost"], r["dup"],
             r["server_cpu_us_per_msg"] or 0))


# ---------------------------------------------------------------- idle ----

def idle_run(env, target_port, n, procs, binds, hold_label):
    """Connect n idle device sessions; returns {pid: (rss_before, rss_after, fds)} plus stats."""
    time.sleep(1.0)
    before = {p.pid: rss_kb(p.pid) for p in procs}
    fd_before = {p.pid: nfds(p.pid) for p in procs}
    cmd = [env.bins["loadgen"], "idle"] + env.loadgen_common() + [
        "--pub-port", str(target_port), "--n", str(n), "--concurrency", "32", "--keepalive", "900",
        "--hold", "300", "--connect-timeout", "240", "--label", hold_label]
    if binds:
        cmd += ["--bind", ",".join(binds)]
    errf = open(os.path.join(env.work, "idle-%s.err" % hold_label), "w")
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errf, text=True)
    PROCS.append(p)
    info = {"n": n}
    try:
        line = ""
        end = time.monotonic() + 300
        while time.monotonic() < end:
            line = p.stdout.readline()
            if not line or line.startswith("READY"):
                break
        mm = re.search(r"connected=(\d+) failed=(\d+) seconds=([\d.]+)", line or "")
        if not mm:
            raise RuntimeError("idle loadgen gave no READY line")
        info["connected"], info["failed"], info["connect_s"] = int(mm[1]), int(mm[2]), float(mm[3])
        # Let upstream sessions finish (the bridge connects upstream after
        # the device's CONNECT) and allocator caches settle.
        time.sleep(3.0)
        cpu0 = {q.pid: cpu_ticks(q.pid) for q in procs}
        time.sleep(5.0)
        info["procs"] = {}
        for q in procs:
            after = rss_kb(q.pid)
            info["procs"][q.pid] = {
                "rss_before_kb": before[q.pid], "rss_after_kb": after,
                "fds_before": fd_before[q.pid], "fds_after": nfds(q.pid),
                "per_session_kb": round((after - before[q.pid]) / max(1, info["connected"]), 2),
                "idle_cpu_pct": round((cpu_ticks(q.pid) - cpu0[q.pid]) / 5.0 * 100, 1),
            }
    finally:
        stop(p, timeout=30)
        errf.close()
    return info


IDLE_SETUPS = ["direct", "mosq-bridge", "edge-unix", "edge-tls"]


def bench_idle(env, opts, results):
    n = opts.idle
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    # Spread the devices over several source addresses: one address gives
    # ~28k ephemeral ports towards one listener, and the bridge's upstream
    # connections (TCP/TLS variants) take ports of their own.
    binds = ["127.0.0.%d" % i for i in range(2, 2 + max(1, (n + 19999) // 20000))]

    def fits(proc, per_session):
        # What this process's descriptor limit fits, from the descriptors
        # it holds already (listeners, epoll, timers, log) plus a margin
        # for the odd file it opens later. The bridge holds 2 per device
        # session (device socket + upstream socket, --bridge-fds-per-session);
        # mosquitto and the load generator 1 per connection.
        k = min(n, (nofile - max(0, nfds(proc.pid)) - 16) // per_session)
        if k < n:
            log("idle: ulimit -n %d fits %d sessions at %d fds each (of %d asked)" % (nofile, k, per_session, n))
        return k

    setups = list(opts.idle_setups) + (["alt-unix"] if env.bins.get("alt") else [])
    out = {}
    for name in setups:
        m = Mosquitto(env, "idle-" + name).start()
        front = None
        try:
            if name == "direct":
                port, k, procs = m.tls_port, fits(m.proc, 1), [m.proc]
            elif name == "mosq-bridge":
                front = MosqBridge(env, m, name="idle-mosq-bridge").start()
                port, k, procs = front.port, fits(front.proc, 1), [front.proc, m.proc]
            else:
                alt = name.startswith("alt-")
                front = EdgeBridge(env, m, name.split("-", 1)[1], name="idle-" + name, level="notice",
                                   binary=env.bins["alt"] if alt else None).start()
                port = front.port
                k = fits(front.proc, opts.alt_fds_per_session if alt else opts.bridge_fds_per_session)
                procs = [front.proc, m.proc]
            info = idle_run(env, port, k, procs, binds, name)
            info["asked"] = n
            info["capped_by_nofile"] = k < n
            if front:
                info["bridge"] = info["procs"][front.proc.pid]
                info["mosquitto"] = info["procs"][m.proc.pid]
            else:
                info["mosquitto"] = info["procs"][m.proc.pid]
            out[name] = info
            log("idle %s: %s" % (name, json.dumps(info)))
        finally:
            if front:
                front.stop()
            m.stop()
    results["idle"] = out


# --------------------------------------------------------------- storm ----

def storm_once(env, b, d, no_resume, concurrency, linger_ms):
    base = b.text()
    cpu0 = cpu_ticks(b.proc.pid)
    t0 = time.monotonic()
    running, done, codes = [], 0, {}
    nxt = 0
    deadline = t0 + 240
    while (nxt < d or running) and time.monotonic() < deadline:
        while nxt < d and len(running) < concurrency:
            args = [env.bins["edge"], "--host", "127.0.0.1", "--port", str(b.port),
                    "--server-name", "127.0.0.1", "--ca", env.ca.ca_crt,
                    "--cert", env.device[0], "--key", env.device[1],
                    "--client-id", "storm-%d-%d" % (int(no_resume), nxt),
                    "--username", USER, "--password", PASSWORD,
                    "--reconnects", "1", "--linger-ms", str(linger_ms), "--timeout", "60",
                    "--connect-timeout-ms", "30000", "--quiet"]
            if no_resume:
                args.append("--no-resume")
            p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            PROCS.append(p)
            running.append(p)
            nxt += 1
        still = []
        for p in running:
            rc = p.poll()
            if rc is None:
                still.append(p)
            else:
                PROCS.remove(p)
                codes[rc] = codes.get(rc, 0) + 1
                done += 1
        running = still
        time.sleep(0.01)
    for p in running:
        stop(p, signal.SIGKILL)
        codes["killed"] = codes.get("killed", 0) + 1
    secs = time.monotonic() - t0
    time.sleep(0.5)
    cpu = cpu_ticks(b.proc.pid) - cpu0
    text = b.text()[len(base):]
    full = len(re.findall(r"full handshake", text))
    resumed = len(re.findall(r"resumed handshake", text))
    refused = len(re.findall(r"device refused with CONNACK", text))
    upstream_eagain = len(re.findall(r"cannot start the upstream connection.*Resource temporarily unavailable", text))
    return {"devices": d, "no_resume": no_resume, "seconds": round(secs, 2), "exit_codes": codes,
            "full": full, "resumed": resumed, "connack_refused": refused, "upstream_eagain": upstream_eagain,
            "bridge_cpu_s": round(cpu, 3),
            "resumed_pct_of_reconnects": round(100.0 * resumed / max(1, full + resumed - d), 1),
            "bridge_cpu_ms_per_connection": round(cpu * 1000 / max(1, full + resumed), 3)}


def bench_storm(env, opts, results):
    m = Mosquitto(env, "storm").start()
    b = None
    try:
        b = EdgeBridge(env, m, "unix", name="storm-edge").start()
        res = {}
        # Devices connect, hold the session linger_ms, drop and reconnect at
        # once with the TLS session they kept (session ID, as BearSSL does).
        res["resume"] = storm_once(env, b, opts.storm, False, opts.storm_concurrency, 3000)
        log("storm (resume): %s" % json.dumps(res["resume"]))
        res["no_resume"] = storm_once(env, b, opts.storm, True, opts.storm_concurrency, 3000)
        log("storm (no resume): %s" % json.dumps(res["no_resume"]))
        # CPU per full and per resumed connection (TLS + MQTT + upstream
        # session): the no-resume storm is all full handshakes.
        full_ms = res["no_resume"]["bridge_cpu_s"] * 1000 / max(1, res["no_resume"]["full"])
        r = res["resume"]
        resumed_ms = (r["bridge_cpu_s"] * 1000 - r["full"] * full_ms) / max(1, r["resumed"])
        res["cpu_ms_full"] = round(full_ms, 3)
        res["cpu_ms_resumed"] = round(max(0.0, resumed_ms), 3)
        results["storm"] = res
    finally:
        if b:
            b.stop()
        m.stop()


# ------------------------------------------- one server on its own -----

# The servers measured one at a time (callgrind, allocations), each with
# a plain M behind it when it is a bridge. "direct" is M itself: publisher
# and subscriber both on its mutual-TLS listener.
SUBJECTS = ["edge-unix", "edge-tls", "mosq-bridge", "direct"]
SUBJECT_TITLE = {
    "edge-unix": "mqtt-edge-bridge, Unix upstream",
    "edge-tls": "mqtt-edge-bridge, TLS upstream",
    "alt-unix": "candidate build (--alt-bridge), Unix upstream",
    "mosq-bridge": "mosquitto's own bridge (the second mosquitto)",
    "direct": "mosquitto direct (M itself)",
}
SUBJECT_FILE = {"edge-unix": "unix", "edge-tls": "tls"}  # callgrind-*.txt names, as before


class Subject:
    """One server under measurement (wrapper: valgrind; child_env: the
    allocation counter), with what it needs behind it, unmeasured."""

    def __init__(self, env, key, tag):
        self.env, self.key, self.tag = env, key, tag
        self.m = self.front = None

    def start(self, wrapper=(), child_env=None, timeout=120):
        env, key, tag = self.env, self.key, self.tag
        try:
            if key == "direct":
                self.m = Mosquitto(env, tag, wrapper=wrapper, child_env=child_env).start(timeout=timeout)
                self.proc, self.pub_port = self.m.proc, self.m.tls_port
            else:
                self.m = Mosquitto(env, tag + "-m").start()
                if key == "mosq-bridge":
                    self.front = MosqBridge(env, self.m, name=tag, wrapper=wrapper,
                                            child_env=child_env).start(timeout=timeout)
                else:
                    self.front = EdgeBridge(env, self.m, key.split("-", 1)[1], name=tag, wrapper=wrapper,
                                            child_env=child_env, level="notice",
                                            binary=env.bins["alt"] if key.startswith("alt-") else None
                                            ).start(timeout=timeout)
                self.proc, self.pub_port = self.front.proc, self.front.port
        except BaseException:
            self.stop()
            raise
        self.sub_port = self.m.tls_port
        return self

    def stop(self):
        if self.front:
            self.front.stop()
            self.front = None
        if self.m:
            self.m.stop()
            self.m = None


def subjects(env, opts):
    keys = list(opts.subjects)
    if env.bins.get("alt") and "alt-unix" not in keys:
        keys.append("alt-unix")
    return keys


def subject_args(s, qos, count, opts, prefix):
    """One device, one subscriber on M, a fixed rate: steady, not saturated."""
    return ["--pub-port", str(s.pub_port), "--sub-port", str(s.sub_port), "--pubs", "1", "--subs", "1",
            "--qos", str(qos), "--size", str(opts.size), "--rate", str(opts.subject_rate),
            "--count", str(count), "--drain", "20", "--topic-prefix", prefix, "--connect-timeout", "60"]


# ----------------------------------------------------------- callgrind ----

def callgrind_total(path):
    with open(path) as f:
        for line in f:
            if line.startswith("summary:") or line.startswith("totals:"):
                return int(line.split()[1])
    return None


def callgrind_functions(path, inclusive):
    """{function: Ir} from callgrind_annotate."""
    r = subprocess.run(["callgrind_annotate", "--inclusive=%s" % ("yes" if inclusive else "no"),
                        "--threshold=100", path], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = {}
    rx = re.compile(r"^\s*([\d,]+) \([ \d.]+%\)\s+(.*?)\s*$")
    for line in r.stdout.splitlines():
        mm = rx.match(line)
        if mm and "PROGRAM TOTALS" not in mm[2]:
            name = re.sub(r"\s*\[[^\]]*\]$", "", mm[2])          # drop "[object]"
            name = re.sub(r"^.*/([^/]+:)", r"\1", name)          # shorten the file path
            obj = re.search(r"\[([^\]]*)\]$", mm[2])
            if obj and name.startswith("???:"):
                name += " [%s]" % os.path.basename(obj[1])
            out[name] = out.get(name, 0) + int(mm[1].replace(",", ""))
    return out


def callgrind_diff(small, big, n, path, title):
    """Per-message profile: (big - small) / n, exclusive and inclusive."""
    with open(path, "w") as f:
        f.write("# %s\n# instructions per message = (Ir(bigger run) - Ir(smaller run)) / %d messages\n" % (title, n))
        for inclusive in (False, True):
            a, b = callgrind_functions(small, inclusive), callgrind_functions(big, inclusive)
            d = sorted(((b.get(k, 0) - a.get(k, 0)) / n, k) for k in set(a) | set(b))
            d.reverse()
            f.write("\n## %s, top 40\n" % ("inclusive (function and its callees)" if inclusive else "exclusive (self)"))
            for v, k in d[:40]:
                if v <= 0:
                    break
                f.write("%10.0f  %s\n" % (v, k))


def bench_callgrind(env, opts, results):
    """Instructions per message of one server under callgrind: two runs of
    K1 and K2 messages, (Ir(K2) - Ir(K1)) / (K2 - K1), so start-up and
    connection costs cancel out. The same for the bridge, for mosquitto's
    own bridge and for mosquitto direct."""
    if not shutil.which("valgrind"):
        log("valgrind missing: callgrind skipped")
        return
    out = results.setdefault("callgrind", {})
    k1, k2 = opts.cg_counts
    for key in subjects(env, opts):
        for qos in (0, 1):
            totals, files = {}, {}
            for k in (k1, k2):
                tag = "cg-%s-q%d-%d" % (key, qos, k)
                cgout = os.path.join(env.work, "callgrind-%s-q%d-%d.out" % (key, qos, k))
                s = Subject(env, key, tag)
                try:
                    s.start(wrapper=["valgrind", "--tool=callgrind", "--callgrind-out-file=" + cgout])
                    r, _ = run_loadgen(env, subject_args(s, qos, k, opts, "bench/cg"), timeout=120 + k / 100)
                    if r.get("lost") or "error" in r:
                        log("callgrind run %s q%d %d: %s" % (key, qos, k, short(r)))
                finally:
                    s.stop()
                totals[k] = callgrind_total(cgout) if os.path.exists(cgout) else None
                files[k] = cgout
            if totals.get(k1) and totals.get(k2):
                per = (totals[k2] - totals[k1]) / (k2 - k1)
                out["%s-q%d" % (key, qos)] = {"instr_per_msg": round(per), "totals": totals}
                log("callgrind %s q%d: %.0f instructions per message" % (key, qos, per))
                os.makedirs(opts.results, exist_ok=True)
                callgrind_diff(files[k1], files[k2], k2 - k1,
                               os.path.join(opts.results, "callgrind-%s-q%d.txt" % (SUBJECT_FILE.get(key, key), qos)),
                               "%s, QoS %d, %d-byte payload, %d msg/s" % (SUBJECT_TITLE[key], qos, opts.size,
                                                                       opts.subject_rate))


# --------------------------------------------------------- allocations ----

def run_loadgen_marks(env, args, on_mark, timeout):
    """bench-loadgen run --marks ...: at every "MARK i" it pauses with the
    path drained; on_mark(i, fields) runs, then the generator goes on."""
    cmd = [env.bins["loadgen"], "run"] + env.loadgen_common() + args
    errpath = os.path.join(env.work, "loadgen-marks.err")
    res = None
    with open(errpath, "a") as errf:
        p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errf, text=True, bufsize=1)
        PROCS.append(p)
        watchdog = threading.Timer(timeout, p.kill)  # bounds every read below
        watchdog.start()
        try:
            for line in p.stdout:
                mm = re.match(r"MARK (\d+) sent=(\d+) delivered=(\d+) drained=(\d)", line)
                if mm:
                    on_mark(int(mm[1]), {"sent": int(mm[2]), "delivered": int(mm[3]), "drained": mm[4] == "1"})
                    p.stdin.write("go\n")
                    p.stdin.flush()
                elif line.startswith("{"):
                    res = json.loads(line)
            p.wait(timeout=30)
        except (BrokenPipeError, subprocess.TimeoutExpired):
            pass
        finally:
            watchdog.cancel()
            stop(p)
    if res is None:
        with open(errpath, errors="replace") as f:
            res = {"error": "no result", "stderr": f.read()[-800:]}
    return res


def bench_alloc(env, opts, results):
    """Allocations per message of one server in steady state: the process
    runs with LD_PRELOAD=alloc_count.so; one device publishes at a fixed
    rate; the generator pauses (path drained) after W warm-up messages and
    again after W + K; the counters read at the two pauses give
    (allocs(W+K) - allocs(W)) / K. At the second pause the counters are
    also read opts.alloc_idle seconds later: allocations of an idle process
    (timers, and none from giving buffers back), per second, to tell them
    from the messages' own. (Idle first would measure the buffers a quiet
    device gives back coming back with the first message after it.)"""
    lib = env.bins.get("alloc")
    if not lib:
        log("allocation counter not available: allocations skipped")
        return
    out = results.setdefault("alloc", {})
    w, k = opts.alloc_counts
    for key in subjects(env, opts):
        for qos in (0, 1):
            cnt = os.path.join(env.work, "alloc-%s-q%d.cnt" % (key, qos))
            snaps = {}

            def on_mark(i, fields):
                snaps[i] = alloc_count.read_counts(cnt)
                snaps["fields%d" % i] = fields
                if i == 2:
                    time.sleep(opts.alloc_idle)
                    snaps["2b"] = alloc_count.read_counts(cnt)

            s = Subject(env, key, "alloc-%s-q%d" % (key, qos))
            try:
                s.start(child_env=alloc_count.preload_env(lib, cnt), timeout=20)
                args = subject_args(s, qos, w + k, opts, "bench/al") + ["--marks", "%d,%d" % (w, w + k)]
                r = run_loadgen_marks(env, args, on_mark, timeout=120 + (w + k) / max(1, opts.subject_rate))
            finally:
                s.stop()
            if "error" in r or not all(x in snaps for x in (1, 2, "2b")):
                log("allocations %s q%d: no figure (%s)" % (key, qos, r.get("error") or "marks missing"))
                continue
            steady = alloc_count.delta(snaps[1], snaps[2])
            idle = alloc_count.delta(snaps[2], snaps["2b"])
            out["%s-q%d" % (key, qos)] = {
                "messages": k, "allocs": steady["allocs"], "frees": steady["frees"],
                "allocs_per_msg": round(steady["allocs"] / k, 3), "frees_per_msg": round(steady["frees"] / k, 3),
                "bytes_per_msg": round(steady["bytes"] / k, 1),
                "tls_allocs": steady["tls_allocs"], "own_allocs": steady["allocs"] - steady["tls_allocs"],
                "own_allocs_per_msg": round((steady["allocs"] - steady["tls_allocs"]) / k, 3),
                "idle_allocs_per_s": round(idle["allocs"] / opts.alloc_idle, 2),
                "steady": steady, "idle": idle, "at_warmup_end": snaps[1],
                "drained": [snaps["fields1"]["drained"], snaps["fields2"]["drained"]],
                "lost": r.get("lost"), "rate": opts.subject_rate,
            }
            log("allocations %s q%d: %.3f per message (%d in %d), idle %.1f/s, lost %s" % (
                key, qos, steady["allocs"] / k, steady["allocs"], k, idle["allocs"] / opts.alloc_idle,
                r.get("lost")))


# --------------------------------------------------------------- report ----

def fmt(x, nd=0):
    if x is None:
        return "-"
    return ("{:,.%df}" % nd).format(x)


def mmm(vals, nd=0):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    return "%s / **%s** / %s" % (fmt(min(vals), nd), fmt(statistics.median(vals), nd), fmt(max(vals), nd))


def med(rs, key):
    vals = [r.get(key) for r in rs if r.get(key) is not None and "error" not in r]
    return statistics.median(vals) if vals else None


def ratio(a, b):
    if a is None or not b:
        return None
    return a / b


def cand(up):
    return up.replace("alt-", "") + " (candidate build)" if up.startswith("alt-") else up


def report(results, opts, meta):
    L = []
    L.append("# mqtt-edge-bridge benchmark results")
    L.append("")
    L.append("Generated by `bench/run.py` on %s. Machine: %s, %d CPUs, %s. "
             "Everything on 127.0.0.1 in one invocation; %d repetitions (min / **median** / max). "
             "Source tree: `%s`; whole run: %s s; `ulimit -n` %s; mosquitto `set_tcp_nodelay %s`."
             % (meta["date"], meta["cpu"], os.cpu_count(), meta["kernel"], opts.reps, meta.get("rev", "?"),
                meta.get("seconds", "?"), "%s%s" % (meta.get("nofile", "?"),
                                                    " (%s)" % meta["nofile_note"] if meta.get("nofile_note") else ""),
                "true" if NODELAY[0] else "false"))
    L.append("")
    L.append("Load average (1/5/15 min) at the start: %s, at the end: %s (other work on the machine shows "
             "up here)." % (" ".join(meta.get("loadavg_start", [])), " ".join(meta.get("loadavg_end", []))))
    L.append("")
    L.append("Load: %d publishing devices (libmosquitto, mutual TLS 1.2, one connection each), "
             "%d subscriber(s) on the main broker's mutual-TLS listener, %d-byte payloads. "
             "Throughput: closed loop, %d messages in flight per device end to end, %gs window after "
             "%gs warm-up. Latency: fixed %d msg/s in total. Instructions and allocations per message: "
             "one server at a time, one device at %d msg/s, one subscriber on M." %
             (opts.pubs, opts.subs, opts.size, opts.window, opts.duration, opts.warmup, opts.rate,
              opts.subject_rate))
    L.append("")

    # Targets first: issue 13's (round 2; issue 6's were looser).
    L.append("## Targets (issue 13)")
    L.append("")
    L.append("Every row also gives mosquitto's own bridge (scenario (c), the second mosquitto) on the same "
             "figure where it was measured; the last row says whether it is beaten in all of them.")
    L.append("")
    L.append("| target | mqtt-edge-bridge | status | mosquitto's bridge | beaten |")
    L.append("|---|---|---|---|---|")
    rows = []

    def beat(ours, theirs, higher_better):
        if ours is None or theirs is None:
            return "-"
        if ours == theirs:
            return "tie"
        return "yes" if (ours > theirs) == higher_better else "**no**"

    def scen(up):
        return up if up.startswith("alt") else "edge-" + up

    tp_lim = {"unix": 1.00, "tls": 0.90, "alt-unix": 1.00, "alt-tls": 0.90}
    for q in sorted(opts.qos, reverse=True):
        tp = results.get("throughput-q%d" % q, {})
        d = med(tp.get("direct", []), "msgs_per_s")
        mb = ratio(med(tp.get("mosq-bridge", []), "msgs_per_s"), d)
        for up in ("unix", "tls", "alt-unix", "alt-tls"):
            r = ratio(med(tp.get(scen(up), []), "msgs_per_s"), d)
            if r is not None:
                rows.append(("throughput >= %.2fx direct, QoS %d, %s upstream" % (tp_lim[up], q, cand(up)),
                             "%.2fx" % r, "met" if r >= tp_lim[up] else "**missed**",
                             fmt(mb, 2) + ("x" if mb is not None else ""), beat(r, mb, True)))
    for q in sorted(opts.qos, reverse=True):
        lt = results.get("latency-q%d" % q, {})
        for up in ("unix", "tls", "alt-unix", "alt-tls"):
            for key, lim in (("p50_us", 1.30), ("p99_us", 1.50)):
                dd = med(lt.get("direct", []), key)
                r = ratio(med(lt.get(scen(up), []), key), dd)
                mb = ratio(med(lt.get("mosq-bridge", []), key), dd)
                if r is not None:
                    rows.append(("latency %s <= %.2fx direct at %d msg/s, QoS %d, %s upstream" %
                                 (key[:3], lim, opts.rate, q, cand(up)), "%.2fx" % r,
                                 "met" if r <= lim else "**missed**",
                                 fmt(mb, 2) + ("x" if mb is not None else ""), beat(r, mb, False)))
    idle = results.get("idle", {})
    mbi = idle.get("mosq-bridge", {}).get("bridge")
    di = idle.get("direct", {}).get("mosquitto")
    for up, lim in (("unix", 16), ("tls", 32), ("alt-unix", 16)):
        i = idle.get(scen(up))
        if not i:
            continue
        kb = i["bridge"]["per_session_kb"]
        if kb > lim or i["failed"]:
            status = "**missed**"
        elif i["connected"] < 10000:
            status = "**not at 10,000** (%d)" % i["connected"]
        else:
            status = "met"
        rows.append(("bridge RSS per idle device session <= %d kB at 10,000 sessions, %s upstream" % (lim, cand(up)),
                     "%.1f kB (%d connected%s%s)" % (kb, i["connected"],
                                                     ", capped by ulimit -n" if i.get("capped_by_nofile") else "",
                                                     "; mosquitto direct %.1f kB" % di["per_session_kb"] if di else ""),
                     status, "%.1f kB" % mbi["per_session_kb"] if mbi else "-",
                     beat(kb, mbi["per_session_kb"] if mbi else None, False)))
    cg = results.get("callgrind", {})
    al = results.get("alloc", {})
    for q in (1, 0):
        dcg = cg.get("direct-q%d" % q, {}).get("instr_per_msg")
        mcg = cg.get("mosq-bridge-q%d" % q, {}).get("instr_per_msg")
        for key in ("edge-unix", "edge-tls", "alt-unix"):
            v = cg.get("%s-q%d" % (key, q), {}).get("instr_per_msg")
            if v is None:
                continue
            capped = key != "edge-tls" and q == 1
            up = key.split("-", 1)[1] if not key.startswith("alt") else "alt-unix"
            rows.append(("instructions per message%s, QoS %d, %s upstream (ratio to mosquitto direct)" %
                         (" <= 10,000" if capped else "", q, cand(up)),
                         "%s (%.2fx direct's %s)" % (fmt(v), v / dcg, fmt(dcg)) if dcg else fmt(v),
                         ("met" if v <= 10000 else "**missed**") if capped else "(reported)",
                         fmt(mcg), beat(v, mcg, False)))
    for q in (1, 0):
        dal = al.get("direct-q%d" % q, {}).get("allocs_per_msg")
        mal = al.get("mosq-bridge-q%d" % q, {}).get("allocs_per_msg")
        for key in ("edge-unix", "edge-tls", "alt-unix"):
            a = al.get("%s-q%d" % (key, q))
            if not a:
                continue
            up = key.split("-", 1)[1] if not key.startswith("alt") else "alt-unix"
            rows.append(("0 allocations per message in steady state, QoS %d, %s upstream" % (q, cand(up)),
                         "%s (%d in %s msgs, of them %d by OpenSSL itself; mosquitto direct %s)"
                         % (fmt(a["allocs_per_msg"], 3), a["allocs"], fmt(a["messages"]),
                            a.get("tls_allocs", 0), fmt(dal, 2)),
                         "met" if a["allocs"] == 0 else
                         ("met by the bridge's own code; **missed** by OpenSSL's" if a.get("own_allocs") == 0
                          else "**missed**"),
                         fmt(mal, 2), beat(a["allocs_per_msg"], mal, False)))
    verdicts = [r[4] for r in rows if r[4] != "-"]
    if verdicts:
        lost = sum(1 for v in verdicts if v != "yes" and v != "tie")
        rows.append(("mosquitto's own bridge beaten in every row", "%d of %d rows" % (len(verdicts) - lost,
                                                                                     len(verdicts)),
                     "met" if not lost else "**missed**", "", ""))
    for t in rows:
        L.append("| %s | %s | %s | %s | %s |" % t)
    L.append("")
    st = results.get("storm", {}).get("resume")
    if st:
        L.append("Issue 6's resumption target (>= 95 %% of reconnections resumed): %.1f %% of %d devices, "
                 "see the storm below." % (st["resumed_pct_of_reconnects"], st["devices"]))
        L.append("")

    for q in opts.qos:
        key = "throughput-q%d" % q
        if key not in results:
            continue
        L.append("## Throughput, QoS %d (closed loop)" % q)
        L.append("")
        L.append("| scenario | delivered msg/s | ratio to (a) | lost | dup | server CPU us/msg | loadgen CPU s |")
        L.append("|---|---|---|---|---|---|---|")
        d = med(results[key].get("direct", []), "msgs_per_s")
        for name in opts.scenarios:
            rs = results[key].get(name, [])
            if not rs:
                continue
            L.append("| %s | %s | %s | %s | %s | %s | %s |" % (
                SCENARIO_TITLE[name], mmm([r.get("msgs_per_s") for r in rs]),
                fmt(ratio(med(rs, "msgs_per_s"), d), 2),
                sum(r.get("lost", 0) for r in rs), sum(r.get("dup", 0) for r in rs),
                fmt(med(rs, "server_cpu_us_per_msg"), 1), fmt(med(rs, "loadgen_cpu_s"), 1)))
        L.append("")
    for q in opts.qos:
        key = "latency-q%d" % q
        if key not in results:
            continue
        L.append("## Latency, QoS %d, %d msg/s fixed rate (microseconds)" % (q, opts.rate))
        L.append("")
        L.append("| scenario | p50 | p90 | p99 | max | p50 / (a) | p99 / (a) | delivered msg/s | lost | dup | server CPU us/msg |")
        L.append("|---|---|---|---|---|---|---|---|---|---|---|")
        dr = results[key].get("direct", [])
        for name in opts.scenarios:
            rs = results[key].get(name, [])
            if not rs:
                continue
            L.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                SCENARIO_TITLE[name], mmm([r.get("p50_us") for r in rs]), mmm([r.get("p90_us") for r in rs]),
                mmm([r.get("p99_us") for r in rs]), mmm([r.get("max_us") for r in rs]),
                fmt(ratio(med(rs, "p50_us"), med(dr, "p50_us")), 2),
                fmt(ratio(med(rs, "p99_us"), med(dr, "p99_us")), 2),
                fmt(med(rs, "msgs_per_s")), sum(r.get("lost", 0) for r in rs),
                sum(r.get("dup", 0) for r in rs), fmt(med(rs, "server_cpu_us_per_msg"), 1)))
        L.append("")

    if idle:
        L.append("## Idle device sessions (%d requested)" % opts.idle)
        L.append("")
        L.append("| setup | connected | connect time s | process | RSS before MB | RSS after MB | "
                 "kB per session | fds after | idle CPU % |")
        L.append("|---|---|---|---|---|---|---|---|---|")
        for name in ("direct", "mosq-bridge", "edge-unix", "edge-tls", "alt-unix"):
            i = idle.get(name)
            if not i:
                continue
            for proc in ("bridge", "mosquitto"):
                if proc not in i:
                    continue
                x = i[proc]
                L.append("| %s | %d | %.1f | %s | %.1f | %.1f | **%.1f** | %d | %.1f |" % (
                    name, i["connected"], i["connect_s"], proc, x["rss_before_kb"] / 1024,
                    x["rss_after_kb"] / 1024, x["per_session_kb"], x["fds_after"], x["idle_cpu_pct"]))
        L.append("")
    if results.get("storm"):
        s = results["storm"]
        L.append("## Reconnect storm (edge-device, BearSSL, session-ID resumption)")
        L.append("")
        L.append("| run | devices | seconds | full | resumed | resumed % of reconnects | CONNACK refused "
                 "(upstream EAGAIN) | bridge CPU s | bridge CPU ms per connection | edge-device exit codes |")
        L.append("|---|---|---|---|---|---|---|---|---|---|")
        for k in ("resume", "no_resume"):
            r = s.get(k)
            if r:
                L.append("| %s | %d | %.1f | %d | %d | %.1f | %d (%d) | %.2f | %.3f | %s |" % (
                    "with resumption" if k == "resume" else "--no-resume", r["devices"], r["seconds"],
                    r["full"], r["resumed"], r["resumed_pct_of_reconnects"], r["connack_refused"],
                    r["upstream_eagain"], r["bridge_cpu_s"],
                    r["bridge_cpu_ms_per_connection"], json.dumps(r["exit_codes"])))
        L.append("")
        L.append("Bridge CPU per connection (TLS handshake + CONNECT + upstream session): "
                 "full %.3f ms, resumed %.3f ms." % (s.get("cpu_ms_full", 0), s.get("cpu_ms_resumed", 0)))
        L.append("")
    cg, al = results.get("callgrind", {}), results.get("alloc", {})
    if cg or al:
        L.append("## Per message: instructions (callgrind) and allocations (alloc_count.so)")
        L.append("")
        L.append("One server measured at a time, one device publishing %d-byte payloads at %d msg/s, one "
                 "subscriber on M; a bridge's row is the bridge process only (M behind it not counted), "
                 "mosquitto direct's is M carrying the publisher and the subscriber itself." %
                 (opts.size, opts.subject_rate))
        L.append("")
        L.append("- **instructions**: (Ir(%d msgs) - Ir(%d msgs)) / %d under `valgrind --tool=callgrind`, two "
                 "runs: start-up and connection costs cancel out; user-space instructions only (no system "
                 "calls, no wake-ups)." % (opts.cg_counts[1], opts.cg_counts[0],
                                          opts.cg_counts[1] - opts.cg_counts[0]))
        L.append("- **allocations**: `LD_PRELOAD=tests/lib/alloc_count.so` (malloc, calloc, memalign family, "
                 "realloc from NULL or growing past the block); the load generator pauses with the path "
                 "drained after %d warm-up messages and after %d more; allocations between the two pauses / "
                 "%d; **of them OpenSSL's**: those whose caller is inside libssl/libcrypto (e.g. the "
                 "two 40-byte WPACKET_SUB blocks OpenSSL 3.0's record layer allocates and frees in every "
                 "SSL_write). **idle/s**: allocations per second while paused (timers), %g s." %
                 (opts.alloc_counts[0], opts.alloc_counts[1], opts.alloc_counts[1], opts.alloc_idle))
        L.append("")
        L.append("| server | QoS | instructions / msg | / direct | allocations / msg | of them OpenSSL's | "
                 "frees / msg | bytes / msg | / direct | idle allocations / s |")
        L.append("|---|---|---|---|---|---|---|---|---|---|")
        keys = [k for k in ("edge-unix", "edge-tls", "alt-unix", "mosq-bridge", "direct")
                if any(("%s-q%d" % (k, q)) in cg or ("%s-q%d" % (k, q)) in al for q in (0, 1))]
        for q in (1, 0):
            dcg = cg.get("direct-q%d" % q, {}).get("instr_per_msg")
            dal = al.get("direct-q%d" % q, {}).get("allocs_per_msg")
            for k in keys:
                c = cg.get("%s-q%d" % (k, q), {})
                a = al.get("%s-q%d" % (k, q), {})
                if not c and not a:
                    continue
                tls_pm = a["tls_allocs"] / a["messages"] if a.get("messages") and "tls_allocs" in a else None
                L.append("| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                    SUBJECT_TITLE[k], q, fmt(c.get("instr_per_msg")),
                    fmt(ratio(c.get("instr_per_msg"), dcg), 2) if k != "direct" else "",
                    fmt(a.get("allocs_per_msg"), 3), fmt(tls_pm, 3),
                    fmt(a.get("frees_per_msg"), 3), fmt(a.get("bytes_per_msg"), 0),
                    fmt(ratio(a.get("allocs_per_msg"), dal), 2) if k != "direct" else "",
                    fmt(a.get("idle_allocs_per_s"), 1)))
        L.append("")
        if cg:
            L.append("Top functions per message: `bench/results/callgrind-*.txt`.")
            L.append("")
    return "\n".join(L) + "\n"


def raise_nofile(idle):
    """Descriptors for --idle sessions; children inherit the limit. The
    bridge needs 2 per session, mosquitto and the load generator 1 per
    connection: 2 * idle plus room for the rest. As root, raise soft and
    hard up to /proc/sys/fs/nr_open (needs CAP_SYS_RESOURCE: a container
    may not grant it); otherwise soft up to hard."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(65536, idle * 2 + 4096)
    try:
        with open("/proc/sys/fs/nr_open") as f:
            want = min(want, int(f.read()))
    except (OSError, ValueError):
        pass
    note = ""
    if os.geteuid() == 0 and hard != resource.RLIM_INFINITY and hard < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
        except (ValueError, OSError) as e:
            note = "hard limit %d not raisable: %s, no CAP_SYS_RESOURCE?" % (hard, e)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want and soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard == resource.RLIM_INFINITY else min(want, hard),
                                                        hard))
        except (ValueError, OSError):
            pass
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if nofile < idle * 2 + 64:
        log("warning: ulimit -n is %d; %d idle bridge sessions need about %d%s"
            % (nofile, idle, idle * 2 + 64, ": " + note if note else " (run as root or raise the hard limit)"))
    return nofile, note


def alloc_unusable(lib, bridge):
    """Why the LD_PRELOAD counter cannot measure this build, or None."""
    if not os.path.exists(lib):
        return "%s missing (configure the build with -Dtests=true)" % lib
    try:
        ldd = subprocess.run(["ldd", bridge], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        ldd = ""
    if "libasan" in ldd or "libtsan" in ldd:
        return "%s is a sanitizer build (its allocator is not glibc's)" % bridge
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(ROOT, "build-bench"), help="meson build directory")
    ap.add_argument("--bridge", help="mqtt-edge-bridge binary (default: BUILD/src/mqtt-edge-bridge)")
    ap.add_argument("--alt-bridge", help="a second mqtt-edge-bridge binary (a candidate fix): adds the "
                    "scenarios alt-unix and alt-tls to --scenarios")
    ap.add_argument("--loadgen", help="bench-loadgen binary (default: BUILD/bench/bench-loadgen)")
    ap.add_argument("--edge-device", help="edge-device binary (default: BUILD/firmware/edge-device)")
    ap.add_argument("--alloc-lib", help="the allocation counter (default: BUILD/tests/lib/alloc_count.so)")
    ap.add_argument("--only", default="messages,idle,storm,callgrind,alloc",
                    help="comma list of: messages, idle, storm, callgrind, alloc")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--pubs", type=int, default=10)
    ap.add_argument("--subs", type=int, default=1)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--window", type=int, default=20)
    ap.add_argument("--qos", default="0,1")
    ap.add_argument("--rate", type=int, default=2000, help="latency runs: total msg/s")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--idle", type=int, default=10000, help="idle device sessions")
    ap.add_argument("--idle-setups", default=",".join(IDLE_SETUPS),
                    help="idle: which setups, of " + ", ".join(IDLE_SETUPS))
    ap.add_argument("--bridge-fds-per-session", type=int, default=2,
                    help="descriptors the bridge holds per device session: device socket + upstream socket "
                         "(caps --idle by ulimit -n)")
    ap.add_argument("--alt-fds-per-session", type=int, default=2,
                    help="the same for the --alt-bridge build")
    ap.add_argument("--storm", type=int, default=1000, help="devices in the reconnect storm")
    ap.add_argument("--storm-concurrency", type=int, default=1000)
    ap.add_argument("--subjects", default=",".join(SUBJECTS),
                    help="callgrind and alloc: which servers, of " + ", ".join(SUBJECTS))
    ap.add_argument("--subject-rate", type=int, default=500,
                    help="callgrind and alloc: msg/s of the one publishing device")
    ap.add_argument("--cg-counts", default="500,2500", help="callgrind: messages in the two runs")
    ap.add_argument("--alloc-counts", default="500,2000",
                    help="alloc: W warm-up messages, then K counted")
    ap.add_argument("--alloc-idle", type=float, default=2.0,
                    help="alloc: seconds of idle counting after the warm-up")
    ap.add_argument("--results", default=os.path.join(HERE, "results"))
    ap.add_argument("--mosquitto-nagle", action="store_true",
                    help="leave mosquitto's set_tcp_nodelay at its default (false): Nagle's algorithm on "
                         "the broker's sockets (see README)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    opts = ap.parse_args()
    opts.qos = [int(x) for x in opts.qos.split(",")]
    opts.scenarios = [s for s in opts.scenarios.split(",") if s]
    opts.cg_counts = [int(x) for x in opts.cg_counts.split(",")]
    opts.alloc_counts = [int(x) for x in opts.alloc_counts.split(",")]
    opts.subjects = [x for x in opts.subjects.split(",") if x]
    opts.idle_setups = [x for x in opts.idle_setups.split(",") if x]
    for x in opts.idle_setups:
        if x not in IDLE_SETUPS:
            sys.exit("--idle-setups: unknown %s (of %s)" % (x, ", ".join(IDLE_SETUPS)))
    for x in opts.subjects:
        if x not in SUBJECTS:
            sys.exit("--subjects: unknown %s (of %s)" % (x, ", ".join(SUBJECTS)))
    only = set(opts.only.split(","))
    NODELAY[0] = not opts.mosquitto_nagle
    bins = {
        "bridge": opts.bridge or os.path.join(opts.build, "src", "mqtt-edge-bridge"),
        "loadgen": opts.loadgen or os.path.join(opts.build, "bench", "bench-loadgen"),
        "edge": opts.edge_device or os.path.join(opts.build, "firmware", "edge-device"),
    }
    if opts.alt_bridge:
        bins["alt"] = opts.alt_bridge
        for a in ("alt-tls", "alt-unix"):
            if a not in opts.scenarios:
                opts.scenarios.append(a)
    for k, v in bins.items():
        if not os.access(v, os.X_OK):
            sys.exit("missing %s binary: %s (build with meson first)" % (k, v))
    for tool in ("mosquitto", "mosquitto_passwd", "openssl") + (("stunnel4",) if "stunnel" in opts.scenarios else ()):
        if not shutil.which(tool):
            sys.exit("missing %s (scripts/deps.sh installs it)" % tool)
    if "alloc" in only:
        lib = opts.alloc_lib or alloc_count.lib_path(opts.build)
        why = alloc_unusable(lib, bins["bridge"])
        if why:
            log("allocations per message skipped: %s" % why)
        else:
            bins["alloc"] = lib

    nofile, nofile_note = raise_nofile(opts.idle)

    work = tempfile.mkdtemp(prefix="meb-bench-")
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        rev = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = "?"
    meta = {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "cpu": cpu, "rev": rev,
            "bridge": bins["bridge"],
            "kernel": platform.release(), "nofile": nofile, "nofile_note": nofile_note}
    results = {}
    with open("/proc/loadavg") as f:
        meta["loadavg_start"] = f.read().split()[:3]
    t0 = time.monotonic()
    signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        env = Env(work, bins)
        if "messages" in only:
            bench_messages(env, opts, results)
        if "idle" in only and opts.idle > 0:
            bench_idle(env, opts, results)
        if "storm" in only and opts.storm > 0:
            bench_storm(env, opts, results)
        if "callgrind" in only:
            bench_callgrind(env, opts, results)
        if "alloc" in only:
            bench_alloc(env, opts, results)
    finally:
        stop_all()
        meta["seconds"] = round(time.monotonic() - t0)
        with open("/proc/loadavg") as f:
            meta["loadavg_end"] = f.read().split()[:3]
        os.makedirs(opts.results, exist_ok=True)
        md = report(results, opts, meta)
        with open(os.path.join(opts.results, "latest.md"), "w") as f:
            f.write(md)
        with open(os.path.join(opts.results, "latest.json"), "w") as f:
            json.dump({"meta": meta, "options": vars(opts), "results": results}, f, indent=1, default=str)
        if opts.keep:
            log("work directory kept: %s" % work)
        else:
            shutil.rmtree(work, ignore_errors=True)
        log("done in %ds; %s" % (meta["seconds"], os.path.join(opts.results, "latest.md")))
    sys.stdout.write(md)


if __name__ == "__main__":
    main()
