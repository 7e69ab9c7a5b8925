"""Issue 11: mqtt-edge-bridge-setup on the seed's situation, end to end.

A mosquitto like the one in the field (per_listener_settings, a TLS
listener with the SAN certificate IP:127.0.0.1 + DNS:raspberry, client
certificates required, a password file, its configuration split with
include_dir), a CA whose key is at hand, and a device certificate issued
by it before setup. Setup runs in a temporary root on a copy of the
package's own ini; the test then starts the bridge on what setup wrote,
and the device, with the certificate it had before, connects by IP; its
message reaches a subscriber on the main broker and a command comes back.
"""

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from harness import (BRIDGE_BIN, IS_ROOT, BRIDGE_WRAPPER, VALGRIND_ERROR, Device, free_port,  # noqa: E402
                     wait_for, wait_port)
from pki import Pki  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.normpath(os.path.join(HERE, "..", ".."))
SETUP = os.environ.get("SETUP", os.path.join(SRC, "tools", "mqtt-edge-bridge-setup.py"))
# The setup script starts the project's binaries itself: under an emulator
# (MEB_EXEC_WRAPPER, the arm64 run in CI) it must get the same wrapper as
# the tests, so it runs with tests/lib/exec_wrapper imported.
LIB = os.path.join(HERE, "..", "lib")
SETUP_CMD = [sys.executable, "-c",
             "import runpy, sys; sys.path.insert(0, sys.argv[1]); import exec_wrapper; "
             "sys.argv = sys.argv[2:]; runpy.run_path(sys.argv[0], run_name='__main__')", LIB, SETUP]
CERTS = os.environ.get("CERTS", "mqtt-edge-bridge-certs")
DOCTOR = os.environ.get("DOCTOR", "mqtt-edge-bridge-doctor")


def tree_sums(*dirs):
    out = {}
    for d in dirs:
        for base, _, files in os.walk(d):
            for f in files:
                p = os.path.join(base, f)
                if f.endswith(".log") or f.endswith(".db") or "/spool" in p:
                    continue
                st = os.lstat(p)
                with open(p, "rb") as fh:
                    out[p] = (hashlib.sha256(fh.read()).hexdigest(), st.st_mode, st.st_mtime_ns)
    return out


class TestSetupSeed(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="meb-setup-")
        os.chmod(cls.tmp, 0o755)
        t = cls.tmp
        # The user's existing PKI: CA with key, broker SAN cert, a device.
        cls.pkidir = os.path.join(t, "mosquitto", "certs")
        cls.ca = Pki(cls.pkidir, "ca")
        cls.broker = cls.ca.issue("broker", "raspberry", san="IP:127.0.0.1,DNS:raspberry")
        cls.device_cert = cls.ca.issue("sensor-1", "sensor-1", client=True, ec=True)
        cls.observer = cls.ca.issue("observer", "observer", client=True)
        cls.passwd = os.path.join(t, "mosquitto", "passwd")
        open(cls.passwd, "w").close()
        for u, p in (("sensor-1", "pw-1"), ("observer", "observer-pw")):
            subprocess.run(["mosquitto_passwd", "-b", cls.passwd, u, p], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cls.mq_port = free_port()
        confd = os.path.join(t, "mosquitto", "conf.d")
        os.makedirs(confd)
        cls.mq_conf = os.path.join(t, "mosquitto", "mosquitto.conf")
        with open(cls.mq_conf, "w") as f:
            f.write("per_listener_settings true\npersistence false\nlog_dest file %s/mosquitto.log\n"
                    "%sinclude_dir %s\n" % (t, "user root\n" if IS_ROOT else "", confd))
        with open(os.path.join(confd, "tls.conf"), "w") as f:
            f.write("listener %d 127.0.0.1\ncafile %s\ncertfile %s\nkeyfile %s\nrequire_certificate true\n"
                    "allow_anonymous false\npassword_file %s\n"
                    % (cls.mq_port, cls.ca.ca_crt, cls.broker[0], cls.broker[1], cls.passwd))
        cls.mq = subprocess.Popen(["mosquitto", "-c", cls.mq_conf], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        wait_port(cls.mq_port)
        # The target root, with the package's ini as the conffile.
        cls.root = os.path.join(t, "root")
        os.makedirs(os.path.join(cls.root, "etc"))
        shutil.copy(os.path.join(SRC, "etc", "mqtt-edge-bridge.ini"), os.path.join(cls.root, "etc"))
        cls.ini = os.path.join(cls.root, "etc", "mqtt-edge-bridge.ini")
        cls.port = free_port()
        cls.metrics_port = free_port()
        while cls.metrics_port in (cls.port, cls.mq_port):
            cls.metrics_port = free_port()
        cls.bridge = None

    @classmethod
    def tearDownClass(cls):
        rc = None
        if cls.bridge and cls.bridge.poll() is None:
            cls.bridge.send_signal(signal.SIGTERM)
            try:
                rc = cls.bridge.wait(30)
            except subprocess.TimeoutExpired:
                cls.bridge.kill()
        cls.mq.terminate()
        cls.mq.wait(10)
        if not os.environ.get("KEEP_TEST_DIR"):
            shutil.rmtree(cls.tmp, ignore_errors=True)
        if rc not in (0, None):
            raise AssertionError("bridge exited with status %s (valgrind errors: %s)" % (rc, rc == VALGRIND_ERROR))

    def setup(self, *extra):
        argv = SETUP_CMD + ["--yes", "--ca-key", self.ca.ca_key, "--root", self.root, "--no-start",
                "--mosquitto-conf", self.mq_conf, "--address", "127.0.0.1", "--hostname", "raspberry",
                "--port", str(self.port), "--set", "bridge.user=", "--set", "listener.bind_address=127.0.0.1", "--set",
                "spool.directory=%s/spool" % self.root, "--set", "log.target=stderr", "--set", "log.level=debug",
                "--set", "metrics.port=%d" % self.metrics_port, "--certs-tool", CERTS, "--doctor-tool", DOCTOR,
                "--bridge-tool", BRIDGE_BIN] + list(extra)
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
        return r

    def test_1_dry_run_changes_nothing(self):
        before = tree_sums(self.root, os.path.join(self.tmp, "mosquitto"))
        r = self.setup("--dry-run")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("would issue CN=127.0.0.1", r.stdout)
        self.assertIn("would write %s" % self.ini, r.stdout)
        self.assertEqual(tree_sums(self.root, os.path.join(self.tmp, "mosquitto")), before)

    def test_2_setup_end_to_end(self):
        pwfile = os.path.join(self.tmp, "sensor-1.pw")
        with open(pwfile, "w") as f:
            f.write("pw-1\n")
        os.chmod(pwfile, 0o600)
        r = self.setup("--check-cn", "sensor-1", "--check-username", "sensor-1", "--check-password-file", pwfile)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        out = r.stdout
        # 1. what it found
        self.assertIn("per_listener_settings true", out)
        self.assertIn("port %d on 127.0.0.1: TLS" % self.mq_port, out)
        self.assertIn("client certificates required", out)
        # 2. what an ESP8266 sees on the broker, in plain words
        self.assertIn("dialling 127.0.0.1: BR_ERR_X509_BAD_SERVER_NAME (56)", out)
        self.assertIn("dialling raspberry: OK", out)
        self.assertIn("dialling raspberry.local: BR_ERR_X509_BAD_SERVER_NAME (56)", out)
        # 3./4. upstream by TLS with the bridge's own certificate; the CA reused
        self.assertIn("the broker's CA", out)
        self.assertIn("client certificate for the broker", out)
        # 5. CN-only certificates per name, validated
        for n in ("127.0.0.1", "raspberry", "raspberry.local"):
            crt = os.path.join(self.root, "etc", "mqtt-edge-bridge", "listener.d", n + ".crt")
            self.assertTrue(os.path.exists(crt), out)
            self.assertEqual(os.stat(crt[:-4] + ".key").st_mode & 0o077 & ~0o040, 0)
        self.assertIn("--check-config: OK", out)
        # the broker as the device will reach it through the bridge
        self.assertIn("mqtt-edge-bridge-doctor upstream: OK", out)
        self.assertTrue(any(f.startswith("mqtt-edge-bridge.ini.setup-")
                            for f in os.listdir(os.path.join(self.root, "etc"))), "no backup")
        # 6. the exact next step: the port, the name, nothing else
        self.assertIn("const uint16_t mqtt_port = %d;" % self.port, out)
        self.assertIn('mqtt_server = "127.0.0.1"', out)
        with open(self.ini) as f:
            text = f.read()
        self.assertIn("\nport = %d\n" % self.port, text)
        self.assertIn("# The TLS listener the devices connect to.", text)  # comments kept

        # The bridge on what setup wrote, the device with its old certificate.
        log = open(os.path.join(self.tmp, "bridge.log"), "w")
        type(self).bridge = subprocess.Popen(BRIDGE_WRAPPER + [BRIDGE_BIN, "--config", self.ini],
                                             stdout=log, stderr=log)
        wait_for(lambda: re.search(r"mqtt-edge-bridge \S+ ready|\[error\]", open(log.name).read()),
                 60 if BRIDGE_WRAPPER else 10, "bridge ready")
        self.assertRegex(open(log.name).read(), r"mqtt-edge-bridge \S+ ready", "the bridge did not start")
        obs = ["-h", "127.0.0.1", "-p", str(self.mq_port), "--cafile", self.ca.ca_crt, "--cert",
               self.observer[0], "--key", self.observer[1], "-u", "observer", "-P", "observer-pw"]
        sub = subprocess.Popen(["mosquitto_sub"] + obs + ["-t", "seed/#", "-v", "-C", "1", "-W", "15"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)  # mosquitto_sub cannot say when it has subscribed
        dev = Device(None, "sensor-1", self.port, server_name="127.0.0.1", cert=self.device_cert,
                     ca=self.ca.ca_crt)
        creds = ["--username", "sensor-1", "--password", "pw-1"]
        r = dev.run(*creds, "--pub", "seed/temperature=21.5", "--qos", "1")
        self.assertEqual(r.rc, 0, "%r\n%s" % (r, open(log.name).read()[-3000:]))
        got, _ = sub.communicate(timeout=20)
        self.assertEqual(got.split("\n")[0], "seed/temperature 21.5")
        # a command back from the main broker (retained, so that it does
        # not matter when the device's SUBSCRIBE arrives)
        subprocess.run(["mosquitto_pub"] + obs + ["-t", "cmd/sensor-1", "-m", "led=on", "-q", "1", "-r"],
                       check=True, timeout=10)
        r = dev.run(*creds, "--sub", "cmd/sensor-1:1", "--expect", "1", "--timeout", "15")
        self.assertEqual(r.rc, 0, r)
        self.assertIn("message topic=cmd/sensor-1 qos=1 retain=1 dup=0 payload=led=on", r.out)

    def test_3_second_run_changes_nothing(self):
        before = tree_sums(self.root)
        r = self.setup()
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("Nothing to change", r.stdout)
        self.assertEqual(tree_sums(self.root), before)
        r = self.setup("--dry-run")
        self.assertNotIn("would ", r.stdout.replace("would run: mqtt-edge-bridge --check-config", ""))
        self.assertEqual(tree_sums(self.root), before)

    def test_4_renew_reissues_what_is_due(self):
        before = tree_sums(self.root)
        r = self.setup("--renew")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("Listener certificates are current", r.stdout)
        self.assertEqual(tree_sums(self.root), before)
        # the machine got a new address: renew issues it and drops nothing
        # still current
        r = self.setup("--renew", "--address", "127.0.0.1", "--address", "127.0.0.2")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("issue CN=127.0.0.2", r.stdout)
        d = os.path.join(self.root, "etc", "mqtt-edge-bridge", "listener.d")
        self.assertTrue(os.path.exists(os.path.join(d, "127.0.0.2.crt")))
        # and then it is gone again: its certificate goes too
        r = self.setup("--renew")
        self.assertIn("remove", r.stdout)
        self.assertFalse(os.path.exists(os.path.join(d, "127.0.0.2.crt")))


class TestSetupSocketNoCaKey(unittest.TestCase):
    """A broker with a Unix-socket listener as well (no per-listener
    settings, anonymous allowed there) and no CA key given: the socket is
    the upstream, a new CA is made for the devices, and the next step is a
    new edge_config.h."""

    def test_socket_upstream_and_new_ca(self):
        t = tempfile.mkdtemp(prefix="meb-setup2-")
        try:
            ca = Pki(os.path.join(t, "pki"), "ca")
            broker = ca.issue("broker", "raspberry", san="IP:127.0.0.1,DNS:raspberry")
            conf = os.path.join(t, "mosquitto.conf")
            with open(conf, "w") as f:
                f.write("allow_anonymous true\nlistener 8883\ncafile %s\ncertfile %s\nkeyfile %s\n"
                        "require_certificate true\nlistener 0 /run/mosquitto/mqtt.sock\n"
                        % (ca.ca_crt, broker[0], broker[1]))
            root = os.path.join(t, "root")
            os.makedirs(os.path.join(root, "etc"))
            argv = SETUP_CMD + ["--yes", "--root", root, "--no-start", "--mosquitto-conf", conf,
                    "--address", "192.0.2.10", "--hostname", "edge", "--set", "bridge.user=", "--set", "listener.bind_address=127.0.0.1",
                    "--set", "spool.directory=%s/spool" % root, "--certs-tool", CERTS, "--doctor-tool", DOCTOR,
                    "--bridge-tool", BRIDGE_BIN]
            r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertIn("Unix socket /run/mosquitto/mqtt.sock", r.stdout)
            self.assertIn("the local Unix socket /run/mosquitto/mqtt.sock", r.stdout)
            self.assertIn("a new CA for the devices", r.stdout)
            self.assertIn("mqtt-edge-bridge-certs firmware-config sensor-1 --address 192.0.2.10 --port 8884",
                          r.stdout)
            with open(os.path.join(root, "etc", "mqtt-edge-bridge.ini")) as f:
                ini = f.read()
            self.assertIn("host = /run/mosquitto/mqtt.sock\n", ini)
            self.assertIn("cafile = %s/etc/mqtt-edge-bridge/ca.crt\n" % root, ini)
            self.assertNotIn("\ncertfile =", ini)
            for n in ("192.0.2.10", "edge", "edge.local"):
                self.assertTrue(os.path.exists(os.path.join(root, "etc", "mqtt-edge-bridge", "listener.d",
                                                            n + ".crt")))
            # idempotent here too
            before = tree_sums(root)
            r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertIn("Nothing to change", r.stdout)
            self.assertEqual(tree_sums(root), before)
        finally:
            shutil.rmtree(t, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
