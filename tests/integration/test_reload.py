"""Live reload (SIGHUP, systemctl reload): issue 5.

- The listener certificate is rotated under a connected device: the device
  stays connected and keeps receiving; a new connection gets the new
  certificate (its serial, read with openssl s_client).
- A device is revoked through a CRL added by a reload: its next connection
  is refused with a log line; other devices carry on. If it is connected,
  it is disconnected (unless revoke_connected = false).
- A broken new configuration is rejected with a log line naming the
  problem, and the daemon keeps serving with the old one.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from harness import BridgeTestCase, read_until, wait_for  # noqa: E402


def set_key(conf, section, key, value):
    """Set (or with value None, remove) key in [section] of an INI file."""
    with open(conf) as f:
        lines = f.read().splitlines()
    out, cur, done = [], None, False
    for line in lines:
        m = re.match(r"\[(\w+)\]$", line)
        if m:
            if cur == section and not done and value is not None:
                out.append("%s = %s" % (key, value))
                done = True
            cur = m.group(1)
        elif cur == section and re.match(r"%s\s*=" % re.escape(key), line):
            if value is not None and not done:
                out.append("%s = %s" % (key, value))
                done = True
            continue
        out.append(line)
    if cur == section and not done and value is not None:
        out.append("%s = %s" % (key, value))
    with open(conf, "w") as f:
        f.write("\n".join(out) + "\n")


def served_serial(port, pki):
    """The serial of the certificate a new connection to the listener gets."""
    crt, key = pki.observer
    s = subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, "-cert", crt, "-key", key,
                        "-CAfile", pki.ca.ca_crt, "-showcerts"],
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=20)
    m = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", s.stdout, re.S)
    if not m:
        raise AssertionError("no certificate from s_client:\n" + s.stdout + s.stderr)
    x = subprocess.run(["openssl", "x509", "-noout", "-serial"], input=m.group(0), stdout=subprocess.PIPE,
                       text=True, check=True)
    return x.stdout.strip().split("=", 1)[1].upper()


def file_serial(crt):
    x = subprocess.run(["openssl", "x509", "-noout", "-serial", "-in", crt], stdout=subprocess.PIPE, text=True,
                       check=True)
    return x.stdout.strip().split("=", 1)[1].upper()


class ReloadCase(BridgeTestCase):
    def setUp(self):
        # Each test starts from the configuration the class started with,
        # whatever an earlier (maybe failed) test left in the file.
        if not hasattr(type(self), "good_conf"):
            with open(self.bridge.conf) as f:
                type(self).good_conf = f.read()
        with open(self.bridge.conf, "w") as f:
            f.write(self.good_conf)

    def reload(self, expect=r"configuration reloaded"):
        """SIGHUP, then wait for the outcome's log line (only lines after
        this reload count)."""
        before = len(self.bridge.text())
        self.bridge.proc.send_signal(signal.SIGHUP)
        rx = re.compile(expect)
        wait_for(lambda: rx.search(self.bridge.text()[before:]), 20, "bridge log /%s/ after SIGHUP" % expect)
        self.assertBridgeAlive()
        return self.bridge.text()[before:]

    def start_listening_device(self, name, topic, expect):
        dev = self.device(name).start(*self.creds(name), "--sub", "%s:1" % topic, "--expect", str(expect),
                                      "--timeout", "40")
        self.bridge.wait_log(r'client_id="%s"' % name, 10)
        # its SUBSCRIBE reached the broker once it has the SUBACK; what it
        # printed until then goes back in front of its output
        dev.early_out = read_until(dev, r"^suback ", 10)
        return dev

    def finish(self, dev):
        out, err = dev.communicate(timeout=60)
        out = getattr(dev, "early_out", "") + out
        self.assertEqual(dev.returncode, 0, out + err)
        return out


class TestRotateCertificate(ReloadCase):
    def test_rotate_listener_certificate_under_a_connected_device(self):
        crt, key = self.pki.listener
        old_serial = served_serial(self.bridge.port, self.pki)
        self.assertEqual(old_serial, file_serial(crt))

        dev = self.start_listening_device("sensor-1", "rot/sensor-1", 2)
        self.mosquitto.pub("rot/sensor-1", "before", qos=1)

        # Rotate: a new key and certificate, same CN, written over the
        # configured paths as certbot-style tooling would.
        ncrt, nkey = self.pki.ca.issue("listener-next", "127.0.0.1")
        shutil.copy(ncrt, crt)
        shutil.copy(nkey, key)
        log = self.reload()
        new_serial = file_serial(crt)
        self.assertNotEqual(new_serial, old_serial)
        self.assertIn("serial %s" % new_serial, log)

        # The connected device did not notice and still receives.
        self.mosquitto.pub("rot/sensor-1", "after", qos=1)
        out = self.finish(dev)
        self.assertIn("payload=before", out)
        self.assertIn("payload=after", out)
        self.assertEqual(out.count("connack rc=0"), 1, out)

        # A new connection gets the new certificate, and BearSSL accepts it.
        self.assertEqual(served_serial(self.bridge.port, self.pki), new_serial)
        sub = self.mosquitto.sub("rot/fresh", 1)
        r = self.device("sensor-2").run(*self.creds("sensor-2"), "--pub", "rot/fresh=1", "--qos", "1")
        self.assertEqual(r.rc, 0, r)
        self.assertEqual(sub.result(), ["rot/fresh 1"])


class TestRevokeByCrl(ReloadCase):
    def test_revoked_device_is_refused_after_reload(self):
        crt, _ = self.pki.device("sensor-3")
        ok = self.device("sensor-3").run(*self.creds("sensor-3"), "--pub", "crl/x=1")
        self.assertEqual(ok.rc, 0, ok)

        # One device, connected, stays connected through the reload.
        dev = self.start_listening_device("sensor-1", "crl/sensor-1", 1)

        self.pki.ca.revoke(crt)
        crl = self.pki.ca.crl()
        set_key(self.bridge.conf, "listener", "crlfile", crl)
        log = self.reload()
        self.assertIn(crl, log)

        before = len(self.bridge.text())
        refused = self.device("sensor-3").run(*self.creds("sensor-3"), "--pub", "crl/x=2", "--timeout", "10")
        self.assertNotEqual(refused.rc, 0, refused)
        self.assertEqual(refused.events("connack"), [], refused)
        wait_for(lambda: re.search(r"TLS handshake failed.*certificate revoked",
                                   self.bridge.text()[before:]), 10, "the refusal's log line")

        self.mosquitto.pub("crl/sensor-1", "still here", qos=1)
        self.assertIn("payload=still here", self.finish(dev))
        r = self.device("sensor-2").run(*self.creds("sensor-2"), "--pub", "crl/y=1")
        self.assertEqual(r.rc, 0, r)


def revoke_and_reload(case, name):
    """Revoke name's certificate, point the listener at the new CRL, reload."""
    crt, _ = case.pki.device(name)
    case.pki.ca.revoke(crt)
    set_key(case.bridge.conf, "listener", "crlfile", case.pki.ca.crl())
    # the trust line comes after "configuration reloaded": wait for it
    return case.reload(expect=r"reload: CA or CRL changed; .*\n")


class TestRevokeConnected(ReloadCase):
    """Issue 12: a device revoked by a CRL reload used to stay connected
    and keep publishing. Now it is disconnected, with a log line naming
    the reason, while another device carries on publishing."""

    def test_revoked_connected_device_is_disconnected(self):
        revoked = self.start_listening_device("sensor-3", "rev/sensor-3", 1)
        # The other device publishes 60 numbered QoS 1 messages, 100 ms
        # apart, across the reload.
        count = 60
        sub = self.mosquitto.sub("rev/witness", count, timeout=40)
        pub = self.device("sensor-2").start(*self.creds("sensor-2"), "--count", str(count), "--topic",
                                            "rev/witness", "--qos", "1", "--interval-ms", "100",
                                            "--timeout", "30", "--quiet")
        self.bridge.wait_log(r'CONNECT received.*client_id="sensor-2"', 10)
        time.sleep(0.5)  # a few of its messages are through
        log = revoke_and_reload(self, "sensor-3")
        self.assertIsNone(pub.poll(), "the publishing device finished before the reload: raise count")
        self.assertRegex(log, r"CA or CRL changed; connected devices checked again, 1 disconnected")
        self.assertRegex(log, r"device disconnected.*cn=\"sensor-3\".*"
                              r"reason=\"certificate no longer verifies after reload: certificate revoked\"")
        # Really gone: edge-device saw the connection end.
        out, err = revoked.communicate(timeout=30)
        out = revoked.early_out + out
        self.assertNotEqual(revoked.returncode, 0, out + err)
        self.assertNotIn("payload=", out)
        # The other one (same CA, not revoked) published all of them, in order.
        out, err = pub.communicate(timeout=40)
        self.assertEqual(pub.returncode, 0, out + err)
        self.assertEqual([int(l.split()[1]) for l in sub.result(timeout=30)], list(range(1, count + 1)))
        self.assertNotRegex(self.bridge.text(), r"device disconnected.*cn=\"sensor-2\".*reason=\"certificate")
        # And the revoked one cannot come back.
        r = self.device("sensor-3").run(*self.creds("sensor-3"), "--pub", "rev/x=1", "--timeout", "10")
        self.assertNotEqual(r.rc, 0, r)
        self.assertEqual(r.events("connack"), [], r)


class TestRevokeConnectedOff(ReloadCase):
    bridge_sections = {"listener": {"revoke_connected": "false"}}

    def test_revoke_connected_false_keeps_todays_behaviour(self):
        dev = self.start_listening_device("sensor-3", "revoff/sensor-3", 1)
        log = revoke_and_reload(self, "sensor-3")
        self.assertIn("revoke_connected = false, connected devices stay", log)
        self.mosquitto.pub("revoff/sensor-3", "still here", qos=1)
        self.assertIn("payload=still here", self.finish(dev))


class TestBrokenConfig(ReloadCase):
    def test_broken_config_is_rejected_and_the_old_one_kept(self):
        dev = self.start_listening_device("sensor-1", "bad/sensor-1", 3)
        with open(self.bridge.conf) as f:
            good = f.read()

        # A syntax error: named with file and line.
        set_key(self.bridge.conf, "limits", "max_connections", "lots")
        log = self.reload(r"reload rejected")
        self.assertRegex(log, r"reload rejected.*%s:\d+: \[limits\] max_connections: 'lots' is not a number"
                         % re.escape(self.bridge.conf))
        self.mosquitto.pub("bad/sensor-1", "one", qos=1)

        # Valid syntax, but a key that does not match its certificate.
        with open(self.bridge.conf, "w") as f:
            f.write(good)
        set_key(self.bridge.conf, "listener", "keyfile", self.pki.observer[1])
        log = self.reload(r"reload rejected")
        self.assertRegex(log, r"reload rejected.*observer\.key.*(key values mismatch|does not match)")
        self.mosquitto.pub("bad/sensor-1", "two", qos=1)

        # Still serving: new devices get in with the running configuration.
        r = self.device("sensor-2").run(*self.creds("sensor-2"), "--pub", "bad/y=1")
        self.assertEqual(r.rc, 0, r)

        # Fixed, a reload goes through, and the device never noticed.
        with open(self.bridge.conf, "w") as f:
            f.write(good)
        self.reload()
        self.mosquitto.pub("bad/sensor-1", "three", qos=1)
        out = self.finish(dev)
        for p in ("one", "two", "three"):
            self.assertIn("payload=%s" % p, out)
        self.assertEqual(out.count("connack rc=0"), 1, out)

    def test_listener_port_change_needs_a_restart(self):
        set_key(self.bridge.conf, "listener", "port", "1")
        log = self.reload()
        self.assertIn("restart mqtt-edge-bridge", log)
        # still on the old port
        r = self.device("sensor-3").run(*self.creds("sensor-3"), "--pub", "bad/z=1")
        self.assertEqual(r.rc, 0, r)
        set_key(self.bridge.conf, "listener", "port", str(self.bridge.port))
        self.reload()


if __name__ == "__main__":
    unittest.main()
