"""Issue 11: [listener] max_send_fragment caps the TLS records the bridge
sends, for devices with small receive buffers that do not negotiate a
Maximum Fragment Length (RFC 6066 §4).

A BearSSL device with 16 KB buffers (so no MFL extension) receives a
1000-byte message through a small TCP relay that reads the TLS record
headers (RFC 5246 §6.2) the bridge sends: with max_send_fragment = 512,
every record's plaintext fits in 512 bytes, the handshake's included.
"""

import os
import socket
import sys
import threading
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from harness import BridgeTestCase  # noqa: E402

CAP = 512
# An AEAD record (the default suites) adds an 8-byte explicit nonce and a
# 16-byte tag; a CBC one at most IV + MAC + padding: 16 + 48 + 256.
OVERHEAD = 16 + 48 + 256


class RecordRelay:
    """127.0.0.1:port → the bridge; notes the length of every TLS record
    in the bridge-to-device direction."""

    def __init__(self, target_port):
        self.target = target_port
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(1)
        self.lsock.settimeout(20)
        self.port = self.lsock.getsockname()[1]
        self.records = []  # (content type, length)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _pipe(self, src, dst, parse):
        buf = b""
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
                if parse:
                    buf += data
                    while len(buf) >= 5:
                        n = int.from_bytes(buf[3:5], "big")
                        if len(buf) < 5 + n:
                            break
                        self.records.append((buf[0], n))
                        buf = buf[5 + n:]
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _run(self):
        try:
            c, _ = self.lsock.accept()
        except OSError:
            return
        u = socket.create_connection(("127.0.0.1", self.target), timeout=20)
        c.settimeout(30)
        u.settimeout(30)
        t = threading.Thread(target=self._pipe, args=(c, u, False), daemon=True)
        t.start()
        self._pipe(u, c, True)
        t.join(30)
        c.close()
        u.close()

    def close(self):
        self.lsock.close()
        self.thread.join(30)


class TestMaxSendFragment(BridgeTestCase):
    bridge_sections = {"listener": {"max_send_fragment": str(CAP)}}

    def test_records_from_the_bridge_fit_the_cap(self):
        payload = "x" * 1000  # edge-device takes MQTT packets up to 1024 bytes
        self.mosquitto.pub("frag/big", payload, qos=1, retain=True)
        relay = RecordRelay(self.bridge.port)
        try:
            dev = self.device("sensor-1")
            dev.port = relay.port
            r = dev.run(*self.creds("sensor-1"), "--mfl", "0", "--sub", "frag/big:1", "--expect", "1",
                        "--timeout", "15")
        finally:
            relay.close()
            self.mosquitto.pub("frag/big", "", qos=1, retain=True)
        self.assertEqual(r.rc, 0, r)
        self.assertIn("mfl=0", r.out)  # the device asked for no fragment length
        self.assertIn("payload=" + payload, r.out)
        app = [n for t, n in relay.records if t == 23]
        self.assertGreaterEqual(len(app), 3, relay.records)  # CONNACK, SUBACK, 1000 bytes in two
        self.assertLessEqual(max(n for _, n in relay.records), CAP + OVERHEAD, relay.records)
        # the pieces are cut at the cap, not smaller
        self.assertGreater(max(app), CAP, relay.records)


if __name__ == "__main__":
    unittest.main()
