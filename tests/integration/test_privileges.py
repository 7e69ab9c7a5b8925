"""Privileges outside the packaged unit (issue 12): started as root, the
daemon fails closed on a [bridge] user that does not exist, and hands the
spool directory to its user without following anything planted there.

Needs root (skipped otherwise); drops to the system's `nobody`.
"""

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from harness import BRIDGE_BIN, BRIDGE_WRAPPER, IS_ROOT, Bridge, Mosquitto, TestPki, write_ini  # noqa: E402


@unittest.skipUnless(IS_ROOT, "needs root: the daemon drops privileges only when started as root")
class TestPrivileges(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="meb-priv-")
        os.chmod(cls.tmp, 0o755)
        cls.pki = TestPki(os.path.join(cls.tmp, "pki"))
        # Never started: the bridge needs no broker to start.
        cls.mosquitto = Mosquitto(cls.pki, cls.tmp, {"observer": "observer-pw"})
        cls.nobody = pwd.getpwnam("nobody")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        self.work = tempfile.mkdtemp(dir=self.tmp)
        os.chmod(self.work, 0o755)
        self.spool = os.path.join(self.work, "spool")
        self.bridge = None

    def tearDown(self):
        if self.bridge:
            self.bridge.stop()

    def make_bridge(self, user, spool=None):
        return Bridge(self.pki, self.work, self.mosquitto,
                      {"bridge": {"user": user}, "spool": {"directory": spool or self.spool}})

    def run_fails(self, user, spool=None):
        """Start the daemon; it must exit 1 by itself without ever being ready."""
        b = self.make_bridge(user, spool)
        r = subprocess.run(BRIDGE_WRAPPER + [BRIDGE_BIN, "--config", b.conf], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=60)
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertNotIn("ready", r.stdout)
        return r.stdout

    def test_user_that_does_not_exist_fails_closed(self):
        os.makedirs(self.spool, mode=0o700)
        out = self.run_fails("no-such-user-meb")
        self.assertRegex(out, r'\[bridge\] user: no user "no-such-user-meb" on this system; not running as root')
        self.assertNotIn("listening for devices", out)  # stopped before binding anything

    def test_spool_handed_over_without_following_planted_links(self):
        os.makedirs(self.spool, mode=0o700)
        victim = os.path.join(self.work, "victim")       # root's, outside the spool
        hard_victim = os.path.join(self.work, "hard-victim")
        for p in (victim, hard_victim):
            with open(p, "w") as f:
                f.write("root's\n")
        os.symlink(victim, os.path.join(self.spool, "planted-symlink"))
        os.link(hard_victim, os.path.join(self.spool, "planted-hardlink"))
        os.mkdir(os.path.join(self.spool, "planted-dir"))
        os.mkfifo(os.path.join(self.spool, "planted-fifo"))
        own = os.path.join(self.spool, "left-by-root.txt")
        with open(own, "w") as f:
            f.write("x")

        self.bridge = self.make_bridge("nobody").start()
        self.assertRegex(self.bridge.text(), r"running as nobody")
        self.bridge.stop()
        log = self.bridge.text()
        self.bridge = None

        uid = self.nobody.pw_uid
        self.assertEqual(os.stat(self.spool).st_uid, uid)
        self.assertEqual(os.stat(own).st_uid, uid)
        for p in (victim, hard_victim):
            self.assertEqual(os.stat(p).st_uid, 0, "%s was handed over through a planted link" % p)
        self.assertEqual(os.lstat(os.path.join(self.spool, "planted-symlink")).st_uid, 0)
        self.assertEqual(os.stat(os.path.join(self.spool, "planted-dir")).st_uid, 0)
        self.assertEqual(os.stat(os.path.join(self.spool, "planted-fifo")).st_uid, 0)
        for name in ("planted-symlink", "planted-hardlink", "planted-dir", "planted-fifo"):
            self.assertRegex(log, r"spool \S+/%s: not a spool file.*left as it is" % name)

    def test_spool_directory_writable_by_others_refused(self):
        os.makedirs(self.spool)
        os.chmod(self.spool, 0o777)
        out = self.run_fails("nobody")
        self.assertRegex(out, r"\[spool\] directory: %s is writable by every user \(mode 0777\)" % self.spool)
        # Group-writable by a group that is neither root's nor the user's.
        os.chmod(self.spool, 0o770)
        os.chown(self.spool, 0, 100)  # "users" on Debian; any gid but 0 and nogroup
        out = self.run_fails("nobody")
        self.assertRegex(out, r"\[spool\] directory: %s is writable by other users" % self.spool)
        self.assertEqual(os.stat(self.spool).st_uid, 0)

    def test_spool_directory_that_is_a_symlink_refused(self):
        real = os.path.join(self.work, "real-spool")
        os.makedirs(real, mode=0o700)
        os.symlink(real, self.spool)
        out = self.run_fails("nobody")
        self.assertRegex(out, r"\[spool\] directory: %s is a symbolic link" % self.spool)
        self.assertEqual(os.stat(real).st_uid, 0)


if __name__ == "__main__":
    unittest.main()
