"""The headline of issue 2, and messages both ways through the bridge.

A real mosquitto (SAN IP:127.0.0.1, DNS:raspberry, client certificates
required, password file) is the main broker; a real BearSSL client
(edge-device, configured like the ESP8266 core) is the device.
"""

import json
import os
import socket
import ssl
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from harness import BridgeTestCase, Device, read_until, wait_for  # noqa: E402


class TestHeadline(BridgeTestCase):
    def test_bearssl_fails_on_broker_and_works_through_bridge(self):
        # The problem: BearSSL dialing "127.0.0.1" against the SAN-only
        # broker certificate fails with BR_ERR_X509_BAD_SERVER_NAME (56).
        direct = Device(self.pki, "sensor-1", self.mosquitto.port).run(
            *self.creds("sensor-1"), "--timeout", "5")
        self.assertEqual(direct.rc, 2, direct)
        err = direct.events("tls")
        self.assertTrue(err and err[0].get("code") == "56", direct)
        self.assertIn("BR_ERR_X509_BAD_SERVER_NAME", direct.out)

        # The fix: the same device, same name check, dials the bridge.
        sub = self.mosquitto.sub("headline/#", 1)
        r = self.device("sensor-1").run(*self.creds("sensor-1"), "--pub", "headline/t=21.5",
                                        "--qos", "1")
        self.assertEqual(r.rc, 0, r)
        tls = r.events("tls")[0]
        self.assertIn("ok", tls)
        self.assertEqual(r.events("connack")[0]["rc"], "0")
        self.assertEqual(sub.result(), ["headline/t 21.5"])
        self.assertBridgeAlive()

    def test_command_from_main_broker_reaches_device(self):
        dev = self.device("sensor-2").start(*self.creds("sensor-2"), "--sub", "cmd/sensor-2:1",
                                            "--expect", "1", "--timeout", "30")
        # the broker has the subscription once the device has its SUBACK
        early = read_until(dev, r"^suback ", 20)
        self.mosquitto.pub("cmd/sensor-2", "led=on", qos=1)
        out, err = dev.communicate(timeout=40)
        out = early + out
        self.assertEqual(dev.returncode, 0, out + err)
        self.assertIn("message topic=cmd/sensor-2 qos=1 retain=0 dup=0 payload=led=on", out)


class TestQos(BridgeTestCase):
    def _device_to_broker(self, qos):
        topic = "qos%d/up" % qos
        sub = self.mosquitto.sub(topic, 3, qos=2)
        r = self.device("sensor-1").run(*self.creds("sensor-1"), "--count", "3", "--topic", topic,
                                        "--qos", str(qos))
        self.assertEqual(r.rc, 0, r)
        got = sub.result()
        self.assertEqual(len(got), 3, got)
        seqs = [int(line.split()[1]) for line in got]
        self.assertEqual(seqs, [1, 2, 3])
        if qos == 1:
            self.assertEqual(len(r.events("puback")), 3, r)
        if qos == 2:
            self.assertEqual(len(r.events("pubcomp")), 3, r)

    def test_qos0_device_to_broker(self):
        self._device_to_broker(0)

    def test_qos1_device_to_broker(self):
        self._device_to_broker(1)

    def test_qos2_device_to_broker(self):
        self._device_to_broker(2)

    def _broker_to_device(self, qos):
        topic = "down%d/x" % qos
        dev = self.device("sensor-3").start(*self.creds("sensor-3"), "--sub", "%s:2" % topic,
                                            "--expect", "2", "--timeout", "30")
        # publish once the subscription is in place: the device has its
        # SUBACK, which the bridge sends after the broker's (§3.8.4)
        early = read_until(dev, r"^suback ", 20)
        self.mosquitto.pub(topic, "a", qos=qos)
        self.mosquitto.pub(topic, "b", qos=qos)
        out, err = dev.communicate(timeout=40)
        out = early + out
        self.assertEqual(dev.returncode, 0, out + err)
        msgs = [l for l in out.splitlines() if l.startswith("message ")]
        self.assertEqual(len(msgs), 2, out)
        self.assertIn("qos=%d" % qos, msgs[0])
        self.assertTrue(msgs[0].endswith("payload=a") and msgs[1].endswith("payload=b"), out)

    def test_qos0_broker_to_device(self):
        self._broker_to_device(0)

    def test_qos1_broker_to_device(self):
        self._broker_to_device(1)

    def test_qos2_broker_to_device(self):
        self._broker_to_device(2)


class TestSessions(BridgeTestCase):
    def test_retained_message_passes_both_ways(self):
        r = self.device("sensor-1").run(*self.creds("sensor-1"), "--pub", "ret/state=online",
                                        "--qos", "1", "--retain")
        self.assertEqual(r.rc, 0, r)
        sub = self.mosquitto.sub("ret/state", 1)
        self.assertEqual(sub.result(), ["ret/state online"])
        # and a retained message on the broker reaches a device that
        # subscribes later, with the retain flag set (§3.3.1.3)
        self.mosquitto.pub("ret/cfg", "interval=5", qos=1, retain=True)
        r = self.device("sensor-2").run(*self.creds("sensor-2"), "--sub", "ret/cfg:1",
                                        "--expect", "1")
        self.assertEqual(r.rc, 0, r)
        m = r.events("message")[0]
        self.assertEqual(m["retain"], "1")
        self.assertEqual(m["payload"], "interval=5")
        self.mosquitto.pub("ret/cfg", "", qos=1, retain=True)
        self.mosquitto.pub("ret/state", "", qos=1, retain=True)

    def test_will_on_abrupt_close(self):
        sub = self.mosquitto.sub("will/abrupt", 1)
        r = self.device("sensor-1").run(*self.creds("sensor-1"), "--will-topic", "will/abrupt",
                                        "--will-payload", "gone", "--end", "abrupt")
        self.assertEqual(r.rc, 0, r)
        self.assertEqual(sub.result(), ["will/abrupt gone"])

    def test_will_on_keepalive_timeout(self):
        sub = self.mosquitto.sub("will/silent", 1, timeout=15)
        t0 = time.monotonic()
        self.device("sensor-2").run(*self.creds("sensor-2"), "--will-topic", "will/silent",
                                    "--will-payload", "timeout", "--keepalive", "2",
                                    "--end", "silent", "--timeout", "8", timeout=20)
        self.assertEqual(sub.result(), ["will/silent timeout"])
        # 1.5 x 2 s after the last packet, not the device's own 8 s timeout
        self.assertLess(time.monotonic() - t0, 8.5)
        self.assertIn("keepalive timeout", self.bridge.text())

    def test_no_will_after_disconnect(self):
        sub = self.mosquitto.sub("will/clean", 1, timeout=3)
        r = self.device("sensor-3").run(*self.creds("sensor-3"), "--will-topic", "will/clean",
                                        "--will-payload", "should-not-appear", "--end", "disconnect")
        self.assertEqual(r.rc, 0, r)
        self.assertEqual(sub.result(), [])

    def test_persistent_session_queues_offline_messages(self):
        d = self.device("sensor-1")
        r = d.run(*self.creds("sensor-1"), "--no-clean", "--sub", "persist/q:1")
        self.assertEqual(r.rc, 0, r)
        self.mosquitto.pub("persist/q", "while-away", qos=1)
        r = d.run(*self.creds("sensor-1"), "--no-clean", "--expect", "1")
        self.assertEqual(r.rc, 0, r)
        self.assertEqual(r.events("connack")[0]["session_present"], "1")
        self.assertEqual(r.events("message")[0]["payload"], "while-away")
        # clean up the persistent session
        d.run(*self.creds("sensor-1"))

    def test_unsubscribe(self):
        dev = self.device("sensor-2").start(*self.creds("sensor-2"), "--sub", "uns/a:1",
                                            "--unsub", "uns/a", "--sub", "uns/b:1", "--expect", "1",
                                            "--timeout", "10")
        time.sleep(1.5)
        self.mosquitto.pub("uns/a", "not-for-you", qos=1)
        self.mosquitto.pub("uns/b", "for-you", qos=1)
        out, err = dev.communicate(timeout=15)
        self.assertEqual(dev.returncode, 0, out + err)
        self.assertIn("unsuback", out)
        msgs = [l for l in out.splitlines() if l.startswith("message ")]
        self.assertEqual(len(msgs), 1, out)
        self.assertTrue(msgs[0].endswith("payload=for-you"))


class TestRefusedSubscription(BridgeTestCase):
    # mosquitto refuses a subscription the ACL forbids with 0x80 in 2.0;
    # the bridge refuses one outside the mountpoint itself. Both must reach
    # the device as 0x80 in the right position.
    bridge_sections = {"bridge": {"mountpoint": "devices/%c/"}}

    def test_refused_subscription_is_0x80(self):
        r = self.device("sensor-1").run(*self.creds("sensor-1"), "--sub", "ok/x:1",
                                        "--sub", "$SYS/broker/uptime:0", "--sub", "other:2")
        self.assertEqual(r.rc, 0, r)
        self.assertEqual(r.events("suback")[0]["codes"].split(","), ["1", "128", "2"])

    def test_mountpoint_both_ways(self):
        sub = self.mosquitto.sub("devices/sensor-2/#", 1)
        dev = self.device("sensor-2").start(*self.creds("sensor-2"), "--sub", "cmd:1",
                                            "--pub", "temp=20", "--qos", "1", "--expect", "1",
                                            "--timeout", "10")
        self.assertEqual(sub.result(), ["devices/sensor-2/temp 20"])
        time.sleep(0.3)
        self.mosquitto.pub("devices/sensor-2/cmd", "go", qos=1)
        out, err = dev.communicate(timeout=15)
        self.assertEqual(dev.returncode, 0, out + err)
        self.assertIn("message topic=cmd qos=1", out)


class TestTransport(BridgeTestCase):
    def test_several_packets_in_one_tls_record(self):
        sub = self.mosquitto.sub("coalesce/#", 2)
        r = self.device("sensor-1").run(*self.creds("sensor-1"), "--coalesce",
                                        "--sub", "coalesce/echo:1",
                                        "--pub", "coalesce/a=1", "--pub", "coalesce/b=2",
                                        "--qos", "1")
        self.assertEqual(r.rc, 0, r)
        self.assertEqual(len(r.events("suback")), 1, r)
        got = sub.result()
        self.assertIn("coalesce/a 1", got)
        self.assertIn("coalesce/b 2", got)

    def test_session_resumption_and_max_fragment_length(self):
        r = self.device("sensor-2").run(*self.creds("sensor-2"), "--reconnects", "2", "--mfl", "512")
        self.assertEqual(r.rc, 0, r)
        tls = r.events("tls")
        self.assertEqual(len(tls), 3, r)
        self.assertEqual(tls[0]["resumed"], "0")
        self.assertEqual(tls[1]["resumed"], "1", r)
        self.assertEqual(tls[2]["resumed"], "1", r)
        self.assertEqual(tls[0]["mfl"], "512", r)
        self.assertIn("resumed handshake", self.bridge.text())
        self.assertIn("max fragment 512", self.bridge.text())


class TestDoctorAgainstBridge(BridgeTestCase):
    """Issue 3: the doctor's live check, exactly as a device would connect,
    succeeds against the bridge's listener, session resumption included."""

    def test_doctor_connect(self):
        doctor = os.environ.get("DOCTOR", "mqtt-edge-bridge-doctor")
        crt, key = self.pki.device("sensor-1")
        r = subprocess.run([doctor, "connect", "127.0.0.1:%d" % self.bridge.port, "--ca", self.pki.ca.ca_crt,
                            "--cert", crt, "--key", key, "--name", "127.0.0.1", "--json",
                            "--client-id", "sensor-1"] + self.creds("sensor-1"),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        rep = json.loads(r.stdout)
        self.assertTrue(rep["device_ok"], rep)
        self.assertTrue(rep["mfl"]["accepted"], rep)
        self.assertTrue(rep["resumption"]["resumed"], rep)
        self.assertEqual(rep["mqtt"]["connack"], 0, rep)

    def test_doctor_cert_on_listener_certificate(self):
        doctor = os.environ.get("DOCTOR", "mqtt-edge-bridge-doctor")
        r = subprocess.run([doctor, "cert", self.pki.listener[0], "--ca", self.pki.ca.ca_crt,
                            "--name", "127.0.0.1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        # and the broker's SAN certificate is the one a device would refuse
        r = subprocess.run([doctor, "cert", self.pki.broker[0], "--ca", self.pki.ca.ca_crt,
                            "--name", "127.0.0.1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, timeout=30)
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn("BR_ERR_X509_BAD_SERVER_NAME", r.stdout)


class TestIPv6Listener(BridgeTestCase):
    bridge_sections = {"listener": {"bind_address": "127.0.0.1 ::1"}}

    @unittest.skipUnless(socket.has_ipv6, "no IPv6")
    def test_device_over_ipv6_loopback(self):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(self.pki.ca.ca_crt)
        ctx.check_hostname = False  # CN-only certificate: BearSSL's case, not OpenSSL's
        crt, key = self.pki.device("sensor-1")
        ctx.load_cert_chain(crt, key)
        try:
            raw = socket.create_connection(("::1", self.bridge.port), timeout=5)
        except OSError as e:
            self.skipTest("no IPv6 loopback: %s" % e)
        with raw, ctx.wrap_socket(raw) as s:
            cid, user, pw = b"sensor-1", b"sensor-1", self.users["sensor-1"].encode()
            var = b"\x00\x04MQTT\x04\xc2\x00\x3c"
            payload = (len(cid).to_bytes(2, "big") + cid + len(user).to_bytes(2, "big") + user
                       + len(pw).to_bytes(2, "big") + pw)
            s.sendall(bytes([0x10, len(var) + len(payload)]) + var + payload)
            self.assertEqual(s.recv(4), b"\x20\x02\x00\x00")
        self.bridge.wait_log(r"peer=\[::1\]:\d+")


class TestUnixSocketUpstream(BridgeTestCase):
    upstream_unix = True

    def test_device_to_broker_over_unix_socket(self):
        sub = self.mosquitto.sub("unix/#", 1)
        r = self.device("sensor-1").run("--pub", "unix/t=1", "--qos", "1")
        self.assertEqual(r.rc, 0, r)
        self.assertEqual(sub.result(), ["unix/t 1"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
