"""The Debian package, end to end (issue 5): the user's path.

Build the .deb from a clean copy of the tree (dpkg-buildpackage -us -uc -b),
lintian it (no errors), `apt-get install ./....deb`, check that a fresh
install skips the start with a hint instead of failing, configure it against
test certificates and a local mosquitto, run the installed daemon the way
the unit runs it (its ExecCondition= and ExecStart= command lines, as its
User=/Group=), pass a smoke test (a BearSSL device's message reaches the
main broker; a reload works), then `apt-get purge` and check that nothing
the package installed or made is left.

This installs and removes packages on the machine, so it runs only as root
with CI=true or PACKAGE_TEST=1, and never when mqtt-edge-bridge is already
installed; otherwise it reports itself skipped (TAP "1..0 # SKIP").
"""

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))

PACKAGE = "mqtt-edge-bridge"
USER = "mqtt-edge-bridge"
SRCDIR = os.environ.get("SOURCE_ROOT", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
UNIT = "/lib/systemd/system/mqtt-edge-bridge.service"
CONF = "/etc/mqtt-edge-bridge.ini"


def skip_reason():
    if os.geteuid() != 0:
        return "installs packages: needs root"
    if os.environ.get("CI") != "true" and os.environ.get("PACKAGE_TEST") != "1":
        return "installs packages on this machine: set PACKAGE_TEST=1 (CI=true does too)"
    if subprocess.run(["dpkg-query", "-W", "-f=${Status}", PACKAGE], stdout=subprocess.PIPE,
                      stderr=subprocess.DEVNULL, text=True).stdout.strip() not in ("", "unknown ok not-installed"):
        return "%s is installed on this machine: not touching it" % PACKAGE
    for tool in ("dpkg-buildpackage", "apt-get", "setpriv"):
        if not shutil.which(tool):
            return "%s not installed (scripts/deps.sh installs it)" % tool
    return None


_why = skip_reason()
if _why:
    print("1..0 # SKIP %s" % _why, flush=True)
    sys.exit(0)

from harness import Device, Mosquitto, TestPki, free_port, wait_for  # noqa: E402


def run(args, timeout=300, check=True, **kw):
    r = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError("%s exited %d:\n%s" % (" ".join(args), r.returncode, r.stdout[-4000:]))
    return r


def unit_directives():
    d = {}
    with open(UNIT) as f:
        for line in f:
            line = line.strip()
            if line and line[0] not in "#;[" and "=" in line:
                k, v = line.split("=", 1)
                d.setdefault(k, []).append(v)
    return d


def as_unit_user(argv):
    """The command as the unit's User=/Group= would run it (no capabilities,
    no new privileges), minus the namespaces systemd would add."""
    return ["setpriv", "--reuid", USER, "--regid", USER, "--init-groups", "--no-new-privs",
            "--inh-caps=-all", "--bounding-set=-all", "--"] + argv


class TestPackage(unittest.TestCase):
    """Steps in order; each needs the ones before it."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="meb-pkg-")
        os.chmod(cls.tmp, 0o755)  # the daemon's user reads the test certificates
        cls.deb = None
        cls.installed_files = []
        cls.mosquitto = None
        cls.daemon = None

    @classmethod
    def tearDownClass(cls):
        if cls.daemon and cls.daemon.poll() is None:
            cls.daemon.kill()
            cls.daemon.wait()
        if cls.mosquitto:
            cls.mosquitto.stop()
        # Whatever failed, do not leave the package on the machine.
        if subprocess.run(["dpkg-query", "-W", PACKAGE], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode == 0:
            subprocess.run(["apt-get", "purge", "-y", "-q", PACKAGE], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def need(self, attr):
        if not getattr(type(self), attr):
            self.fail("an earlier step failed")

    def test_1_build_from_a_clean_copy(self):
        # The source tree stays as it is: build in a copy holding only
        # what git knows (tracked and not ignored), as a fresh clone would.
        src = os.path.join(self.tmp, "src")
        os.makedirs(src)
        files = run(["git", "-C", SRCDIR, "ls-files", "-co", "--exclude-standard", "-z"]).stdout
        subprocess.run(["tar", "--null", "-T", "-", "-cf", "-"], input=files.encode(), cwd=SRCDIR,
                       stdout=open(os.path.join(self.tmp, "src.tar"), "wb"), check=True)
        run(["tar", "-xf", os.path.join(self.tmp, "src.tar"), "-C", src])
        t0 = time.monotonic()
        run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=src, timeout=600)
        print("# dpkg-buildpackage: %.0fs" % (time.monotonic() - t0))
        debs = [f for f in os.listdir(self.tmp) if re.match(r"mqtt-edge-bridge_.*\.deb$", f)]
        self.assertEqual(len(debs), 1, os.listdir(self.tmp))
        type(self).deb = os.path.join(self.tmp, debs[0])

    def test_2_lintian_no_errors(self):
        self.need("deb")
        if not shutil.which("lintian"):
            self.skipTest("lintian not installed")
        r = run(["lintian", "--fail-on", "error", "--info", self.deb], check=False, timeout=300)
        for line in r.stdout.splitlines():
            print("# " + line)
        self.assertEqual(r.returncode, 0, r.stdout)
        self.assertNotRegex(r.stdout, r"(?m)^E: ")

    def test_3_install(self):
        self.need("deb")
        run(["apt-get", "install", "-y", "-q", "--no-install-recommends", self.deb], timeout=300,
            env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        type(self).installed_files = [f for f in run(["dpkg-query", "-L", PACKAGE]).stdout.splitlines()
                                      if os.path.isfile(f)]
        for f in ("/usr/sbin/mqtt-edge-bridge", "/usr/bin/mqtt-edge-bridge-certs", "/usr/bin/mqtt-edge-bridge-doctor",
                  UNIT, "/usr/lib/sysusers.d/mqtt-edge-bridge.conf", CONF,
                  "/usr/share/man/man8/mqtt-edge-bridge.8.gz", "/usr/share/man/man5/mqtt-edge-bridge.ini.5.gz",
                  "/usr/share/mqtt-edge-bridge/firmware/platformio.ini",
                  "/usr/share/mqtt-edge-bridge/lib/mqtt_codec.c",
                  "/usr/sbin/mqtt-edge-bridge-setup", "/usr/share/man/man8/mqtt-edge-bridge-setup.8.gz",
                  os.path.join(os.path.dirname(UNIT), "mqtt-edge-bridge-renew.timer"),
                  os.path.join(os.path.dirname(UNIT), "mqtt-edge-bridge-renew.service")):
            self.assertIn(f, self.installed_files)
        self.assertNotIn("/usr/bin/edge-device", self.installed_files)
        conffiles = run(["dpkg-query", "-W", "-f=${Conffiles}", PACKAGE]).stdout
        self.assertIn(CONF, conffiles)
        run(["getent", "passwd", USER])
        st = os.stat("/etc/mqtt-edge-bridge")
        self.assertEqual(oct(st.st_mode & 0o777), "0o750")
        self.assertEqual(run(["stat", "-c", "%U:%G", "/etc/mqtt-edge-bridge"]).stdout.strip(),
                         "root:" + USER)
        # The installed unit passes verify (man pages now installed too).
        if shutil.which("systemd-analyze"):
            r = run(["systemd-analyze", "verify", UNIT], check=False)
            self.assertEqual(r.returncode, 0, r.stdout)

    def test_3a_firmware_builds_from_the_package(self):
        """/usr/share/mqtt-edge-bridge/firmware, as installed, builds on the
        real ESP8266 core with a configuration from the installed
        mqtt-edge-bridge-certs (tests/firmware/test_realcore.py)."""
        self.need("installed_files")
        sys.path.insert(0, os.path.join(SRCDIR, "tests", "firmware"))
        os.environ["CERTS"] = "/usr/bin/mqtt-edge-bridge-certs"
        import test_realcore as F
        why = F.have_kit()
        if why:
            self.skipTest(why)
        project = "/usr/share/mqtt-edge-bridge/firmware"
        with tempfile.TemporaryDirectory(prefix="meb-pkg-fw-") as tmp:
            fig = F.build_tree(project, "nodemcuv2", "ec", tmp)
        for s in fig["sources"]:
            self.assertTrue(os.path.isfile(os.path.join(project, s)), s)
        print("# installed firmware: flash %d B, static RAM %d B, heap after handshake %d B"
              % (fig["pio_flash"], fig["ram"], fig["budget"]["after_handshake"]), flush=True)
        self.assertGreaterEqual(fig["budget"]["after_handshake"], F.HEAP_MIN_AFTER_HANDSHAKE)

    def test_4_fresh_install_is_skipped_not_failed(self):
        self.need("installed_files")
        cond = shlex.split(unit_directives()["ExecCondition"][0])
        r = run(as_unit_user(cond), check=False)
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn("not configured yet", r.stdout)
        if os.path.isdir("/run/systemd/system"):
            # With systemd running, the postinst started the unit: skipped.
            state = run(["systemctl", "is-failed", "mqtt-edge-bridge"], check=False).stdout.strip()
            self.assertNotEqual(state, "failed")

    def test_5_configure_and_smoke(self):
        self.need("installed_files")
        pki = TestPki(os.path.join(self.tmp, "pki"))
        os.chmod(pki.ca.dir, 0o755)
        for _, key in (pki.listener, pki.bridge_client):
            shutil.chown(key, "root", USER)
            os.chmod(key, 0o640)
        users = {"observer": "observer-pw", "sensor-1": "pw-1"}
        type(self).mosquitto = Mosquitto(pki, self.tmp, users).start()
        port = free_port()
        with open(CONF) as f:
            shipped = f.read()
        # Edit the shipped file as a person would: set values, keep the rest.
        conf = shipped
        conf = conf.replace("certfile = /etc/mqtt-edge-bridge/listener.crt", "certfile = " + pki.listener[0])
        conf = conf.replace("keyfile = /etc/mqtt-edge-bridge/listener.key", "keyfile = " + pki.listener[1])
        conf = conf.replace("cafile = /etc/mqtt-edge-bridge/ca.crt", "cafile = " + pki.ca.ca_crt)
        conf = conf.replace(";bind_address = 0.0.0.0", "bind_address = 127.0.0.1")
        conf = conf.replace(";port = 8884", "port = %d" % port)
        conf = conf.replace(";port = 8883", "port = %d\ncertfile = %s\nkeyfile = %s"
                            % (self.mosquitto.port, pki.bridge_client[0], pki.bridge_client[1]))
        conf = conf.replace(";cafile = /etc/mqtt-edge-bridge/upstream-ca.crt", "cafile = " + pki.ca.ca_crt)
        self.assertNotEqual(conf, shipped)
        with open(CONF, "w") as f:
            f.write(conf)

        # StateDirectory=: systemd would make it, owned by the user.
        run(["install", "-d", "-o", USER, "-g", USER, "-m", "0750", "/var/lib/mqtt-edge-bridge"])
        d = unit_directives()
        self.assertEqual(d["User"], [USER])
        run(["runuser", "-u", USER, "--", "/usr/sbin/mqtt-edge-bridge", "--check-config"])
        self.assertEqual(run(as_unit_user(shlex.split(d["ExecCondition"][0])), check=False).returncode, 0)

        log = os.path.join(self.tmp, "daemon.log")
        logf = open(log, "w")
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
        type(self).daemon = subprocess.Popen(as_unit_user(shlex.split(d["ExecStart"][0])), stdout=logf,
                                             stderr=logf, env=env)

        def text():
            with open(log) as f:
                return f.read()
        try:
            wait_for(lambda: "ready" in text() or self.daemon.poll() is not None, 15, "the daemon")
            self.assertIsNone(self.daemon.poll(), text())

            sub = self.mosquitto.sub("pkg/#", 1)
            dev = Device(pki, "sensor-1", port)
            r = dev.run("--username", "sensor-1", "--password", "pw-1", "--pub", "pkg/hello=from-bearssl",
                        "--qos", "1")
            self.assertEqual(r.rc, 0, "%r\n%s" % (r, text()))
            self.assertEqual(sub.result(), ["pkg/hello from-bearssl"])

            # ExecReload=
            self.assertIn("kill -HUP $MAINPID", d["ExecReload"][0])
            self.daemon.send_signal(signal.SIGHUP)
            wait_for(lambda: "configuration reloaded" in text(), 10, "the reload")
            self.daemon.send_signal(signal.SIGTERM)
            self.assertEqual(self.daemon.wait(30), 0, text())
        finally:
            for line in text().splitlines()[-40:]:
                print("# daemon: " + line)
            logf.close()

    def test_6_purge_leaves_nothing_behind(self):
        self.need("installed_files")
        run(["apt-get", "purge", "-y", "-q", PACKAGE], timeout=300,
            env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        r = run(["dpkg-query", "-W", "-f=${Status}", PACKAGE], check=False)
        self.assertTrue(r.returncode != 0 or "not-installed" in r.stdout, r.stdout)
        left = [f for f in self.installed_files if os.path.lexists(f)]
        self.assertEqual(left, [])
        for d in ("/etc/mqtt-edge-bridge", "/var/lib/mqtt-edge-bridge", "/usr/share/mqtt-edge-bridge",
                  "/usr/share/doc/mqtt-edge-bridge"):
            self.assertFalse(os.path.lexists(d), d)
        type(self).installed_files = []


if __name__ == "__main__":
    unittest.main()
