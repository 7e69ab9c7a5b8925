"""Test harness: a real mosquitto, the real bridge, a BearSSL device.

Everything listens on 127.0.0.1 on ports picked at run time. Every wait is
bounded. Processes are stopped in tearDown even when a test fails.

Environment (set by tests/integration/meson.build):
  BRIDGE_BIN       the mqtt-edge-bridge binary
  EDGE_DEVICE      the edge-device binary (BearSSL simulated ESP8266)
  BRIDGE_WRAPPER   optional command prefix for the bridge, e.g. valgrind
  MEB_EXEC_WRAPPER command prefix for every binary of another CPU
                   architecture a test starts, e.g. qemu-aarch64-static
                   (exec_wrapper.py); it also stands in for BRIDGE_WRAPPER
  MEB_TIMEOUT_SCALE factor for every wait (wait_for, wait_port, wait_log);
                   3 under an emulator unless set
"""

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

import exec_wrapper
from pki import Pki

BRIDGE_BIN = os.environ.get("BRIDGE_BIN", "mqtt-edge-bridge")
EDGE_DEVICE = os.environ.get("EDGE_DEVICE", "edge-device")
# Under an emulator the bridge is wrapped like under valgrind: slower start,
# and its RSS is the emulator's (tests skip what they cannot measure).
BRIDGE_WRAPPER = shlex.split(os.environ.get("BRIDGE_WRAPPER", "")) or exec_wrapper.EXEC_WRAPPER
VALGRIND_ERROR = 99
IS_ROOT = os.geteuid() == 0


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10.0, host="127.0.0.1"):
    timeout *= exec_wrapper.TIMEOUT_SCALE
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("nothing listening on %s:%d after %.0fs" % (host, port, timeout))


def wait_for(predicate, timeout=10.0, what="condition"):
    # Under an emulator everything the bridge does takes longer; a wait
    # still ends as soon as its condition holds.
    timeout *= exec_wrapper.TIMEOUT_SCALE
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = predicate()
        if v:
            return v
        time.sleep(0.05)
    raise TimeoutError("timed out after %.0fs waiting for %s" % (timeout, what))


def write_ini(path, sections):
    """Write {section: {key: value}} as the daemon's INI file."""
    with open(path, "w") as f:
        for sec, kv in sections.items():
            f.write("[%s]\n" % sec)
            for k, v in kv.items():
                f.write("%s = %s\n" % (k, v))


class TestPki:
    """The setup of issue 2: a CA; the main broker with SAN IP:127.0.0.1,
    DNS:raspberry; the bridge's listener CN-only (CN=127.0.0.1); the
    bridge's own client certificate for the broker; devices; an observer
    client for mosquitto_sub/pub; and a second CA nobody trusts."""

    def __init__(self, directory):
        self.dir = directory
        self.ca = Pki(directory, "ca")
        self.broker = self.ca.issue("broker", "raspberry", san="IP:127.0.0.1,DNS:raspberry")
        self.listener = self.ca.issue("listener", "127.0.0.1")  # CN only, no SAN
        self.bridge_client = self.ca.issue("bridge-client", "mqtt-edge-bridge", client=True)
        self.observer = self.ca.issue("observer", "observer", client=True)
        self.devices = {}
        self.other_ca = None

    def device(self, name, ec=True, **kw):
        key = (name, tuple(sorted(kw.items())))
        if key not in self.devices:
            fname = "dev-%s-%d" % (re.sub(r"[^A-Za-z0-9]", "_", name), len(self.devices))
            self.devices[key] = self.ca.issue(fname, name, client=True, ec=ec, **kw)
        return self.devices[key]

    def foreign_device(self, name):
        if self.other_ca is None:
            self.other_ca = Pki(os.path.join(self.dir, "other"), "other")
        return self.other_ca.issue("foreign-" + name, name, client=True, ec=True)


class BrokerCli:
    """mosquitto_pub / mosquitto_sub against a broker; the broker class
    gives client_args() (address, TLS, credentials)."""

    def pub(self, topic, payload, qos=0, retain=False):
        args = ["mosquitto_pub"] + self.client_args() + ["-t", topic, "-m", payload, "-q", str(qos)]
        if retain:
            args.append("-r")
        subprocess.run(args, check=True, timeout=10)

    def sub(self, topic, count, timeout=10, qos=1, extra=()):
        """Start mosquitto_sub in the background; .result() waits for it."""
        return Subscriber(["mosquitto_sub"] + self.client_args() +
                          ["-t", topic, "-q", str(qos), "-v", "-C", str(count), "-W", str(timeout)]
                          + list(extra))


class Mosquitto(BrokerCli):
    """mosquitto 2.0 with a mutual-TLS listener and a password file, like
    the Raspberry Pi in issue 2, plus an optional Unix socket listener."""

    def __init__(self, pki, workdir, users, unix_socket=False, persistence=False, extra=(),
                 listener_extra=()):
        """extra: lines for the broker as a whole; listener_extra: lines
        for its TLS listener (per_listener_settings is on)."""
        self.persistence = persistence
        self.pki = pki
        self.dir = workdir
        self.port = free_port()
        self.unix_path = os.path.join(workdir, "mosquitto.sock") if unix_socket else None
        self.passwd = os.path.join(workdir, "passwd")
        open(self.passwd, "w").close()
        for user, password in users.items():
            subprocess.run(["mosquitto_passwd", "-b", self.passwd, user, password], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.conf = os.path.join(workdir, "mosquitto.conf")
        self.log = os.path.join(workdir, "mosquitto.log")
        lines = [
            "per_listener_settings true",
            "log_dest file %s" % self.log,
            "log_type all",
            "persistence %s" % ("true" if persistence else "false"),
            "persistence_location %s/" % workdir,
        ] + list(extra)
        if IS_ROOT:
            lines.append("user root")
        lines += [
            "listener %d 127.0.0.1" % self.port,
            "cafile %s" % pki.ca.ca_crt,
            "certfile %s" % pki.broker[0],
            "keyfile %s" % pki.broker[1],
            "require_certificate true",
            "allow_anonymous false",
            "password_file %s" % self.passwd,
        ] + list(listener_extra)
        if self.unix_path:
            lines += ["listener 0 %s" % self.unix_path, "allow_anonymous true"]
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(["mosquitto", "-c", self.conf], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_port(self.port)
        if self.unix_path:
            wait_for(lambda: os.path.exists(self.unix_path), 5, "mosquitto's Unix socket")
        return self

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def client_args(self, user="observer", password="observer-pw"):
        crt, key = self.pki.observer
        return ["-h", "127.0.0.1", "-p", str(self.port), "--cafile", self.pki.ca.ca_crt,
                "--cert", crt, "--key", key, "-u", user, "-P", password]


class Subscriber:
    def __init__(self, args):
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # mosquitto_sub has no "subscribed" signal; give its SUBSCRIBE time
        # to reach the broker before the test publishes.
        time.sleep(0.4)

    def result(self, timeout=15):
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        return [l for l in out.splitlines() if l]


class Bridge:
    def __init__(self, pki, workdir, mosquitto, sections=None, upstream_unix=False, env=None):
        self.pki = pki
        self.env = env  # the daemon's environment (None: the tests' own)
        self.dir = workdir
        self.port = free_port()
        self.conf = os.path.join(workdir, "bridge.ini")
        self.log = os.path.join(workdir, "bridge.log")
        crt, key = pki.listener
        bcrt, bkey = pki.bridge_client
        cfg = {
            "listener": {
                "bind_address": "127.0.0.1",
                "port": str(self.port),
                "certfile": crt,
                "keyfile": key,
                "cafile": pki.ca.ca_crt,
                "handshake_timeout": "3",
            },
            "upstream": {
                "host": "127.0.0.1",
                "port": str(mosquitto.port),
                "cafile": pki.ca.ca_crt,
                "certfile": bcrt,
                "keyfile": bkey,
            },
            "bridge": {"user": ""},  # the tests' files are root's
            "limits": {},
            "spool": {"directory": os.path.join(workdir, "spool")},
            "log": {"level": "debug", "target": "stderr"},
        }
        os.makedirs(os.path.join(workdir, "spool"), exist_ok=True)
        if upstream_unix:
            cfg["upstream"] = {"host": mosquitto.unix_path}
        for sec, kv in (sections or {}).items():
            cfg.setdefault(sec, {}).update(kv)
        write_ini(self.conf, cfg)
        self.proc = None
        self.logf = None

    def start(self):
        self.logf = open(self.log, "a")
        self.log_offset = os.path.getsize(self.log)
        self.proc = subprocess.Popen(BRIDGE_WRAPPER + [BRIDGE_BIN, "--config", self.conf],
                                     stdout=self.logf, stderr=self.logf, env=self.env)
        # The daemon says "ready" once it listens (after READY=1); waiting
        # for that rather than probing the port keeps the log clean.
        try:
            self.wait_log(r"mqtt-edge-bridge \S+ ready", timeout=60 if BRIDGE_WRAPPER else 10,
                          since=self.log_offset)
        except TimeoutError:
            raise RuntimeError("the bridge did not start:\n" + self.text()[-3000:])
        return self

    def stop(self):
        """SIGTERM; returns the exit status (VALGRIND_ERROR if valgrind saw
        errors or leaks)."""
        rc = None
        if self.proc:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = self.proc.wait()
            self.proc = None
        if self.logf:
            self.logf.close()
            self.logf = None
        return rc

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def text(self):
        with open(self.log) as f:
            return f.read()

    def wait_log(self, pattern, timeout=10, since=0):
        """Wait for pattern in the log, looking only past offset since."""
        rx = re.compile(pattern)
        return wait_for(lambda: rx.search(self.text()[since:]), timeout, "bridge log /%s/" % pattern)

    def log_size(self):
        return os.path.getsize(self.log)

    def kill(self):
        """SIGKILL, as a crash would."""
        if self.proc:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
        if self.logf:
            self.logf.close()
            self.logf = None


class Device:
    """Runs edge-device (BearSSL, configured like the ESP8266 core)."""

    def __init__(self, pki, name, port, server_name="127.0.0.1", cert=None, ca=None):
        self.pki = pki
        self.name = name
        self.port = port
        self.server_name = server_name
        self.cert = cert or pki.device(name)
        self.ca = ca or pki.ca.ca_crt

    def args(self, *extra):
        crt, key = self.cert
        return [EDGE_DEVICE, "--host", "127.0.0.1", "--port", str(self.port),
                "--server-name", self.server_name, "--ca", self.ca, "--cert", crt, "--key", key,
                "--client-id", self.name] + list(extra)

    def run(self, *extra, timeout=20):
        r = subprocess.run(self.args(*extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, timeout=timeout)
        return DeviceResult(r.returncode, r.stdout, r.stderr)

    def start(self, *extra):
        return subprocess.Popen(self.args(*extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)


def read_until(proc, pattern, timeout=10.0):
    """Read a started device's stdout until a line matches pattern (or it
    ends); returns what was read, to be put before what communicate()
    returns later. Bounded by timeout (scaled under an emulator)."""
    import select
    rx = re.compile(pattern, re.M)
    fd = proc.stdout.fileno()
    got = b""
    deadline = time.monotonic() + timeout * exec_wrapper.TIMEOUT_SCALE
    while not rx.search(got.decode(errors="replace")):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out after %.0fs waiting for /%s/ from the device; got:\n%s"
                               % (timeout, pattern, got.decode(errors="replace")))
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            got += chunk
    return got.decode(errors="replace")


class DeviceResult:
    def __init__(self, rc, out, err):
        self.rc = rc
        self.out = out
        self.err = err

    def events(self, kind):
        """Lines starting with kind, parsed as key=value (payload= takes the rest)."""
        res = []
        for line in self.out.splitlines():
            if not line.startswith(kind + " ") and line != kind:
                continue
            d = {}
            rest = line[len(kind):].strip()
            m = re.search(r"(?:^| )payload=(.*)$", rest)
            if m:
                d["payload"] = m.group(1)
                rest = rest[:m.start()]
            for tok in rest.split():
                if "=" in tok:
                    k, v = tok.split("=", 1)
                    d[k] = v
                else:
                    d[tok] = True
            res.append(d)
        return res

    def __repr__(self):
        return "rc=%d\nstdout:\n%s\nstderr:\n%s" % (self.rc, self.out, self.err)


class BridgeTestCase(unittest.TestCase):
    """One PKI, mosquitto and bridge for the whole class."""

    bridge_sections = None
    upstream_unix = False
    persistence = False
    mosquitto_extra = ()
    mosquitto_listener_extra = ()
    bridge_env = None  # the daemon's environment, if not the tests' own
    users = {
        "observer": "observer-pw",
        "sensor-1": "pw-1",
        "sensor-2": "pw-2",
        "sensor-3": "pw-3",
        "mqtt-edge-bridge": "bridge-pw",
    }

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="meb-test-")
        os.chmod(cls.tmp, 0o755)
        cls.pki = TestPki(os.path.join(cls.tmp, "pki"))
        cls.mosquitto = Mosquitto(cls.pki, cls.tmp, cls.users, unix_socket=True,
                                  persistence=cls.persistence, extra=cls.mosquitto_extra,
                                  listener_extra=cls.mosquitto_listener_extra)
        cls.bridge = Bridge(cls.pki, cls.tmp, cls.mosquitto, cls.bridge_sections, cls.upstream_unix,
                            env=cls.bridge_env)
        try:
            cls.mosquitto.start()
            cls.bridge.start()
        except BaseException:
            # tearDownClass does not run after a failed setUpClass
            cls.bridge.stop()
            cls.mosquitto.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        rc = cls.bridge.stop()
        cls.mosquitto.stop()
        keep = os.environ.get("KEEP_TEST_DIR")
        if not keep:
            shutil.rmtree(cls.tmp, ignore_errors=True)
        else:
            print("test files kept in", cls.tmp)
        if rc not in (0, None):
            raise AssertionError("bridge exited with status %s (valgrind errors: %s)"
                                 % (rc, rc == VALGRIND_ERROR))

    def device(self, name="sensor-1", **kw):
        return Device(self.pki, name, self.bridge.port, **kw)

    def creds(self, name):
        return ["--username", name, "--password", self.users[name]]

    def assertBridgeAlive(self):
        self.assertTrue(self.bridge.alive(), "the bridge died:\n" + self.bridge.text()[-3000:])
