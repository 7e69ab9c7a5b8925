"""Raw MQTT 3.1.1 over TLS for hostile and conformance tests.

Builds packets byte by byte (so tests can also build wrong ones), talks to
the bridge over Python's ssl module with a device certificate, and reads
packets back with bounded waits. Also: Witness, a second good device that
publishes throughout a test and must be unaffected by it.

Python 3 standard library only; everything on 127.0.0.1.
"""

import re
import socket
import ssl
import subprocess
import time

# Control packet types (§2.2.1)
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14


def rl(n):
    """§2.2.3 variable byte integer (any n; > 268435455 gives 5+ bytes,
    which is what a hostile test wants)."""
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def s16(b):
    if isinstance(b, str):
        b = b.encode()
    return len(b).to_bytes(2, "big") + b


def packet(first, body=b""):
    return bytes([first]) + rl(len(body)) + body


def connect(client_id="", clean=True, keepalive=60, username=None, password=None,
            will=None, level=4, proto=b"MQTT", flags_extra=0):
    """will = (topic, payload, qos, retain)."""
    flags = flags_extra
    if clean:
        flags |= 0x02
    payload = s16(client_id)
    if will:
        topic, msg, qos, retain = will
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        payload += s16(topic) + s16(msg)
    if username is not None:
        flags |= 0x80
        payload += s16(username)
    if password is not None:
        flags |= 0x40
        payload += s16(password)
    var = s16(proto) + bytes([level, flags]) + keepalive.to_bytes(2, "big")
    return packet(0x10, var + payload)


def publish(topic, payload=b"", qos=0, pid=None, retain=False, dup=False):
    if isinstance(payload, str):
        payload = payload.encode()
    first = 0x30 | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
    body = s16(topic)
    if qos:
        body += (pid or 1).to_bytes(2, "big")
    return packet(first, body + payload)


def ack(ptype, pid):
    return packet((ptype << 4) | (0x02 if ptype == PUBREL else 0), pid.to_bytes(2, "big"))


def subscribe(pid, filters):
    body = pid.to_bytes(2, "big")
    for f, q in filters:
        body += s16(f) + bytes([q])
    return packet(0x82, body)


def unsubscribe(pid, filters):
    body = pid.to_bytes(2, "big")
    for f in filters:
        body += s16(f)
    return packet(0xA2, body)


PINGREQ_PKT = b"\xc0\x00"
DISCONNECT_PKT = b"\xe0\x00"


class Closed(Exception):
    pass


class Packet:
    def __init__(self, first, body):
        self.first = first
        self.type = first >> 4
        self.flags = first & 0x0F
        self.body = body

    @property
    def pid(self):
        return int.from_bytes(self.body[:2], "big")

    def publish_fields(self):
        """(topic, payload, qos, pid, retain, dup) of a PUBLISH."""
        tl = int.from_bytes(self.body[:2], "big")
        topic = self.body[2:2 + tl].decode("utf-8", "replace")
        qos = (self.flags >> 1) & 3
        off = 2 + tl
        pid = None
        if qos:
            pid = int.from_bytes(self.body[off:off + 2], "big")
            off += 2
        return topic, self.body[off:], qos, pid, bool(self.flags & 1), bool(self.flags & 8)

    def __repr__(self):
        return "Packet(type=%d flags=%#x body=%r)" % (self.type, self.flags, self.body[:40])


def client_context(ca, cert=None, tls_max=ssl.TLSVersion.TLSv1_2):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if tls_max is not None:
        ctx.maximum_version = tls_max
    ctx.load_verify_locations(ca)
    # The listener certificate is CN-only (BearSSL's way); Python would
    # want a SAN. The chain is still verified.
    ctx.check_hostname = False
    if cert:
        ctx.load_cert_chain(*cert)
    return ctx


class RawClient:
    """One TLS connection to the bridge, speaking raw bytes."""

    def __init__(self, port, ca, cert=None, tls_max=ssl.TLSVersion.TLSv1_2, timeout=5.0,
                 rcvbuf=None, source=None, preamble=None):
        self.buf = b""
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        raw.settimeout(timeout)
        if source:  # another loopback address (127.0.0.0/8), as another host would be
            raw.bind((source, 0))
        raw.connect(("127.0.0.1", port))
        if preamble:  # bytes before TLS: a load balancer's PROXY header
            raw.sendall(preamble)
        try:
            self.sock = client_context(ca, cert, tls_max).wrap_socket(raw)
        except BaseException:
            raw.close()
            raise
        self.closed = False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self, deadline):
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("no data")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                raise
            except (ConnectionError, ssl.SSLError, OSError) as e:
                self.closed = True
                raise Closed(str(e))
            if not data:
                self.closed = True
                raise Closed("EOF")
            self.buf += data
            return

    def read(self, timeout=5.0):
        """Next whole packet. Raises Closed on EOF, socket.timeout on none."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 2:
                n, mult, i = 0, 1, 1
                complete = False
                while i < len(self.buf) and i <= 4:
                    b = self.buf[i]
                    n += (b & 0x7F) * mult
                    mult *= 128
                    i += 1
                    if not b & 0x80:
                        complete = True
                        break
                if complete and len(self.buf) >= i + n:
                    p = Packet(self.buf[0], self.buf[i:i + n])
                    self.buf = self.buf[i + n:]
                    return p
            self._fill(deadline)

    def expect(self, ptype, timeout=5.0):
        p = self.read(timeout)
        if p.type != ptype:
            raise AssertionError("expected packet type %d, got %r" % (ptype, p))
        return p

    def wait_closed(self, timeout=5.0):
        """True if the bridge closes the connection within timeout; the
        packets that came before the close are in self.before_close."""
        self.before_close = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.before_close.append(self.read(max(0.01, deadline - time.monotonic())))
            except Closed:
                return True
            except socket.timeout:
                return False

    def connect(self, client_id, username=None, password=None, clean=True, keepalive=60, **kw):
        """CONNECT and return the CONNACK (session_present, return_code)."""
        self.send(connect(client_id, clean=clean, keepalive=keepalive, username=username,
                          password=password, **kw))
        p = self.expect(CONNACK, 10)
        return p.body[0], p.body[1]


def closed_by_peer(s, timeout):
    """True if the bridge closes s within timeout (EOF or reset)."""
    s.settimeout(timeout)
    try:
        return s.recv(1) == b""
    except socket.timeout:
        return False
    except ConnectionError:
        return True


def daemon_rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Witness:
    """A good BearSSL device (edge-device) that publishes `count` numbered
    QoS 1 messages every `interval_ms` on `topic` while a test does its
    worst, and a mosquitto_sub on the main broker that must receive all
    of them. Use as a context manager; check() asserts."""

    def __init__(self, test, name, topic, count=30, interval_ms=100, creds=None, sub_topic=None):
        self.test = test
        self.topic = topic
        self.count = count
        self.name = name
        self._connected_before = self._connects()
        self.sub = test.mosquitto.sub(sub_topic or topic, count,
                                      timeout=int(count * interval_ms / 1000) + 20)
        extra = list(creds or [])
        self.proc = test.device(name).start(*extra, "--count", str(count), "--topic", topic,
                                            "--qos", "1", "--interval-ms", str(interval_ms),
                                            "--timeout", str(int(count * interval_ms / 1000) + 20),
                                            "--quiet")

    def _connects(self):
        return len(re.findall(r'client_id="%s".*device connected|device connected.*client_id="%s"'
                              % (re.escape(self.name), re.escape(self.name)), self.test.bridge.text()))

    def running(self):
        return self.proc.poll() is None

    def __enter__(self):
        # Wait (bounded) until the witness is connected and publishing, so
        # the hostile part really happens while it is at work.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.running():
            if self._connects() > self._connected_before:
                break
            time.sleep(0.05)
        time.sleep(0.3)
        return self

    def check(self):
        """Assert the witness was unaffected: exit 0, every message on the
        main broker, in order."""
        try:
            out, err = self.proc.communicate(timeout=self.count * 1 + 30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        got = self.sub.result(timeout=30)
        self.test.assertEqual(self.proc.returncode, 0, "witness device failed:\n%s\n%s" % (out, err))
        seqs = [int(line.split()[1]) for line in got]
        self.test.assertEqual(seqs, list(range(1, self.count + 1)),
                              "witness messages lost or reordered on the main broker")

    def __exit__(self, et, ev, tb):
        if et is not None:
            if self.running():
                self.proc.kill()
            self.proc.communicate()
            self.sub.proc.kill()
            self.sub.result()
            return False
        still = self.running()
        self.check()
        self.test.assertTrue(still, "the witness finished before the hostile part did: "
                                    "give it a larger count")
        return False

