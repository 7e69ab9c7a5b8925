#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""mqtt-edge-bridge-setup: from an existing mosquitto to working devices.

Reads the broker's configuration, says what an ESP8266 will make of the
broker's certificate for every name it may dial, chooses the upstream,
issues CN-only listener certificates per name (SNI), writes
/etc/mqtt-edge-bridge.ini key by key (with a backup), validates it and
starts the unit. See mqtt-edge-bridge-setup(8).

Python 3 standard library only. Every change goes through Plan, so that
--dry-run prints exactly what a real run would do, and a second run that
finds nothing to do changes nothing.
"""

import argparse
import datetime
import difflib
import glob
import grp
import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

PROG = "mqtt-edge-bridge-setup"
GROUP = "mqtt-edge-bridge"
# Re-issue a listener certificate this long before it expires.
RENEW_DAYS = 30
INI_HEADER = """# mqtt-edge-bridge configuration, written by mqtt-edge-bridge-setup.
# Every key, with its default: man mqtt-edge-bridge.ini
# Check it: mqtt-edge-bridge --check-config
"""


class SetupError(Exception):
    pass


def say(*a):
    print(*a, flush=True)


def note(msg):
    say("  " + msg)


# ---------------------------------------------------------------- paths

class Paths:
    def __init__(self, root):
        self.root = os.path.abspath(root or "/")

    def sys(self, p):
        """A system path (absolute, as on the target) inside --root."""
        if self.root == "/":
            return p
        return os.path.join(self.root, p.lstrip("/"))

    def resolve(self, p):
        """A path named by a configuration file: as given if it exists,
        else the same inside --root (a copied-over configuration)."""
        if p is None:
            return None
        if os.path.exists(p) or self.root == "/":
            return p
        q = self.sys(p)
        return q if os.path.exists(q) else p


# ------------------------------------------------------------ mosquitto

class Listener:
    def __init__(self, port, address=None):
        self.port = port
        self.address = address      # bind address, or a socket path when port == 0
        self.opts = {}

    @property
    def socket_path(self):
        return self.address if self.port == 0 and self.address else None

    @property
    def tls(self):
        return bool(self.opts.get("certfile"))

    def get(self, key, default=None):
        return self.opts.get(key, default)

    def flag(self, key, default=False):
        v = self.opts.get(key)
        if v is None:
            return default
        return v.lower() in ("true", "yes", "on", "1")

    def describe(self):
        if self.socket_path:
            where = "Unix socket %s" % self.socket_path
        else:
            where = "port %d%s" % (self.port, " on %s" % self.address if self.address else " (all addresses)")
        bits = ["TLS" if self.tls else "plain"]
        if self.tls:
            bits.append("certfile %s" % self.get("certfile"))
            if self.get("cafile"):
                bits.append("cafile %s" % self.get("cafile"))
            bits.append("client certificates %s" % ("required" if self.flag("require_certificate") else "not required"))
        if self.get("password_file"):
            bits.append("password_file %s" % self.get("password_file"))
        if self.flag("use_identity_as_username"):
            bits.append("use_identity_as_username")
        if self.get("allow_anonymous") is not None:
            bits.append("allow_anonymous %s" % self.get("allow_anonymous"))
        return "%s: %s" % (where, ", ".join(bits))


# Options that belong to a listener (after a "listener" line) in mosquitto
# 2.0; the security ones only with per_listener_settings true.
LISTENER_OPTS = {"cafile", "capath", "certfile", "keyfile", "require_certificate", "crlfile",
                 "use_identity_as_username", "use_subject_as_username", "tls_version", "ciphers",
                 "protocol", "socket_domain", "bind_interface", "max_connections", "mount_point"}
SECURITY_OPTS = {"password_file", "allow_anonymous", "acl_file", "psk_file", "auth_plugin", "plugin"}


class MosquittoConf:
    def __init__(self, path, paths):
        self.path = path
        self.paths = paths
        self.files = []
        self.per_listener_settings = False
        self.listeners = []
        self.globals = {}
        self.default = None  # the "port" listener, if any
        self._read(path, depth=0)
        self._finish()

    def _read(self, path, depth):
        if depth > 4:
            raise SetupError("%s: include_dir nested too deeply" % path)
        try:
            with open(path) as f:
                lines = f.readlines()
        except OSError as e:
            raise SetupError("cannot read the broker's configuration %s: %s (give --mosquitto-conf FILE)"
                             % (path, e.strerror))
        self.files.append(path)
        cur = None
        for raw in lines:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(None, 1)
            key, val = parts[0], (parts[1].strip() if len(parts) > 1 else "")
            if key == "include_dir":
                d = self.paths.resolve(val)
                for inc in sorted(glob.glob(os.path.join(d, "*.conf"))):
                    self._read(inc, depth + 1)
                cur = None
                continue
            if key == "per_listener_settings":
                self.per_listener_settings = val.lower() == "true"
            elif key == "listener":
                a = val.split(None, 1)
                try:
                    port = int(a[0])
                except ValueError:
                    continue
                cur = Listener(port, a[1].strip() if len(a) > 1 else None)
                self.listeners.append(cur)
            elif key == "port":
                try:
                    self.default = Listener(int(val), self.globals.get("bind_address"))
                except ValueError:
                    pass
            elif cur is not None and (key in LISTENER_OPTS or key in SECURITY_OPTS):
                cur.opts[key] = val
            else:
                self.globals[key] = val

    def _finish(self):
        if self.default:
            self.listeners.insert(0, self.default)
            for k, v in self.globals.items():
                if k in LISTENER_OPTS or k in SECURITY_OPTS:
                    self.default.opts.setdefault(k, v)
        if not self.listeners:
            # mosquitto 2.0 with no listener: local only, plain 1883.
            lo = Listener(1883, "127.0.0.1")
            lo.opts["allow_anonymous"] = "true"
            self.listeners.append(lo)
        # Without per_listener_settings the security options are global.
        if not self.per_listener_settings:
            for l in self.listeners:
                for k in SECURITY_OPTS:
                    if k in self.globals:
                        l.opts.setdefault(k, self.globals[k])
        for l in self.listeners:
            if l.get("allow_anonymous") is None:
                # mosquitto 2.0: anonymous only when no password file.
                l.opts["allow_anonymous_default"] = "false"

    def tls_listener(self):
        ls = [l for l in self.listeners if l.tls]
        # The one devices would have used: 8883 first.
        ls.sort(key=lambda l: (l.port != 8883, l.port))
        return ls[0] if ls else None


# ---------------------------------------------------------------- tools

class Tools:
    def __init__(self, args):
        def find(flag, name, env):
            p = flag or os.environ.get(env) or shutil.which(name)
            if not p:
                for d in ("/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"):
                    if os.access(os.path.join(d, name), os.X_OK):
                        return os.path.join(d, name)
            return p
        self.certs = find(args.certs_tool, "mqtt-edge-bridge-certs", "MEB_CERTS")
        self.doctor = find(args.doctor_tool, "mqtt-edge-bridge-doctor", "MEB_DOCTOR")
        self.bridge = find(args.bridge_tool, "mqtt-edge-bridge", "MEB_BRIDGE")
        self.systemctl = args.systemctl or shutil.which("systemctl")

    def run(self, argv, check=True):
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
        if check and r.returncode != 0:
            raise SetupError("%s failed (%d): %s" % (" ".join(argv), r.returncode, (r.stderr or r.stdout).strip()))
        return r

    def doctor_has(self, command):
        if not self.doctor:
            return False
        r = self.run([self.doctor, "--help"], check=False)
        return re.search(r"mqtt-edge-bridge-doctor %s\b" % re.escape(command), r.stdout + r.stderr) is not None


# ---------------------------------------------------------- certificates

def cert_info(path):
    """subject CN, notAfter (epoch), issuer hash of a PEM certificate, or None."""
    r = subprocess.run(["openssl", "x509", "-in", path, "-noout", "-subject", "-enddate", "-nameopt", "multiline"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        return None
    cn = None
    m = re.search(r"commonName\s*=\s*(.+)", r.stdout)
    if m:
        cn = m.group(1).strip()
    m = re.search(r"notAfter=(.+)", r.stdout)
    end = None
    if m:
        end = datetime.datetime.strptime(m.group(1).strip(), "%b %d %H:%M:%S %Y %Z").replace(
            tzinfo=datetime.timezone.utc).timestamp()
    return {"cn": cn, "not_after": end}


def cert_has_san(path):
    r = subprocess.run(["openssl", "x509", "-in", path, "-noout", "-ext", "subjectAltName"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return r.returncode == 0 and "Alternative Name" in r.stdout


def cert_signed_by(path, ca):
    r = subprocess.run(["openssl", "verify", "-CAfile", ca, "-partial_chain", path],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return r.returncode == 0


def key_matches_cert(key, crt):
    a = subprocess.run(["openssl", "pkey", "-in", key, "-pubout"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    b = subprocess.run(["openssl", "x509", "-in", crt, "-noout", "-pubkey"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    return a.returncode == 0 and b.returncode == 0 and a.stdout.strip() == b.stdout.strip()


def file_name_for(name):
    # IPv6 literals have ':' which is fine on Linux; '/' never occurs.
    return re.sub(r"[^A-Za-z0-9.:_-]", "_", name)


# --------------------------------------------------------------- names

def machine_addresses(link_local):
    try:
        r = subprocess.run(["ip", "-j", "addr", "show"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, timeout=10)
        data = json.loads(r.stdout) if r.returncode == 0 else []
    except (OSError, ValueError, subprocess.TimeoutExpired):
        data = []
    v4, v6 = [], []
    for ifc in data:
        if "LOOPBACK" in ifc.get("flags", []):
            continue
        for a in ifc.get("addr_info", []):
            try:
                ip = ipaddress.ip_address(a.get("local", ""))
            except ValueError:
                continue
            if ip.is_loopback or (ip.is_link_local and not link_local):
                continue
            (v4 if ip.version == 4 else v6).append(str(ip))
    return v4 + v6


# ------------------------------------------------------------------ ini

class Ini:
    """The daemon's INI, edited line by line so comments and order stay."""

    def __init__(self, text):
        self.lines = text.splitlines(keepends=True) if text else []

    def text(self):
        return "".join(self.lines)

    def _section_range(self, section):
        start = None
        for i, l in enumerate(self.lines):
            m = re.match(r"\s*\[([^\]]*)\]", l)
            if m:
                if start is not None:
                    return start, i
                if m.group(1) == section:
                    start = i + 1
        if start is None:
            return None
        return start, len(self.lines)

    def _find(self, section, key, commented=False):
        rng = self._section_range(section)
        if not rng:
            return []
        rx = re.compile(r"\s*%s%s\s*=" % (r"[;#]\s*" if commented else "", re.escape(key)))
        return [i for i in range(*rng) if rx.match(self.lines[i])]

    def get(self, section, key):
        for i in self._find(section, key):
            return self.lines[i].split("=", 1)[1].strip()
        return None

    def set(self, section, key, value):
        """Set key (the first occurrence; further ones are commented out,
        as a repeated key means something else). Returns True if changed."""
        new = "%s = %s\n" % (key, value)
        found = self._find(section, key)
        if found:
            changed = self.lines[found[0]] != new
            self.lines[found[0]] = new
            for i in found[1:]:
                self.lines[i] = "# " + self.lines[i]
                changed = True
            return changed
        rng = self._section_range(section)
        if rng is None:
            if self.lines and not self.lines[-1].endswith("\n"):
                self.lines[-1] += "\n"
            if self.lines and self.lines[-1].strip():
                self.lines.append("\n")
            self.lines += ["[%s]\n" % section, new]
            return True
        commented = self._find(section, key, commented=True)
        # The shipped file shows each default as ";key = default": when
        # that is the value wanted, the file already says it.
        if any(re.sub(r"^\s*;\s*", "", self.lines[i]).rstrip("\n").rstrip() == new.rstrip("\n").rstrip()
               for i in commented if self.lines[i].lstrip().startswith(";")):
            return False
        if commented:
            self.lines.insert(commented[-1] + 1, new)
            return True
        end = rng[1]
        while end > rng[0] and not self.lines[end - 1].strip():
            end -= 1
        self.lines.insert(end, new)
        return True

    def unset(self, section, key, why):
        changed = False
        for i in self._find(section, key):
            self.lines[i] = "# %s: %s" % (why, self.lines[i])
            changed = True
        return changed


# ----------------------------------------------------------------- plan

class Plan:
    """Every change, recorded first; applied unless --dry-run."""

    def __init__(self, dry_run):
        self.dry = dry_run
        self.changes = []

    def change(self, what, fn):
        self.changes.append(what)
        say(("  would " if self.dry else "  ") + what)
        if not self.dry:
            fn()


def write_atomic(path, data, mode, gid=None):
    d = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".setup-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(data)
        os.chmod(tmp, mode)
        if gid is not None:
            os.chown(tmp, 0, gid)
        os.rename(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def group_id():
    try:
        return grp.getgrnam(GROUP).gr_gid
    except KeyError:
        return None


# ----------------------------------------------------------------- setup

class Setup:
    def __init__(self, args):
        self.a = args
        self.p = Paths(args.root)
        self.tools = Tools(args)
        self.plan = Plan(args.dry_run)
        self.ini_path = self.p.sys(args.config)
        self.etc = self.p.sys(args.etc_dir)
        self.certdir = os.path.join(self.etc, "listener.d")
        self.state_path = os.path.join(self.etc, "setup.conf")
        self.gid = group_id()
        self.restart_needed = False
        self.need_client_cert = False
        self.upstream_cert = None
        self.broker_leaf = None
        self.addresses, self.host = [], None

    # --- 1. the broker
    def read_broker(self):
        conf = self.a.mosquitto_conf or self.p.sys("/etc/mosquitto/mosquitto.conf")
        say("The main broker (%s):" % conf)
        self.mq = MosquittoConf(conf, self.p)
        if len(self.mq.files) > 1:
            note("read %s" % ", ".join(self.mq.files))
        note("per_listener_settings %s" % ("true" if self.mq.per_listener_settings else "false"))
        for l in self.mq.listeners:
            note("listener " + l.describe())
        self.tls = self.mq.tls_listener()
        if not self.tls:
            note("no TLS listener: the devices' CA has to be created here")

    # --- 2. what an ESP8266 sees
    def names(self):
        addrs = self.a.address or machine_addresses(self.a.link_local)
        host = self.a.hostname or socket.gethostname().split(".")[0]
        names = []
        for n in addrs + [host, host + ".local"]:
            if n and n not in names:
                names.append(n)
        if not addrs:
            note("no network address found (give --address)")
        self.addresses = addrs
        self.host = host
        return names

    def diagnose_broker(self, names):
        if not self.tls:
            return
        crt = self.p.resolve(self.tls.get("certfile"))
        ca = self.p.resolve(self.tls.get("cafile"))
        say("")
        say("What an ESP8266 (BearSSL) sees on the broker's port %d (%s):" % (self.tls.port, crt))
        self.broker_leaf = None
        if not self.tools.doctor or not ca:
            note("(skipped: %s)" % ("no mqtt-edge-bridge-doctor" if not self.tools.doctor else "no cafile"))
            return
        for n in names:
            r = self.tools.run([self.tools.doctor, "cert", crt, "--ca", ca, "--name", n, "--json"], check=False)
            try:
                d = json.loads(r.stdout)
            except ValueError:
                note("%s: the doctor could not read the certificate: %s" % (n, r.stderr.strip()))
                continue
            self.broker_leaf = d.get("leaf")
            br = d.get("bearssl", {})
            if br.get("ok"):
                note("dialling %s: OK" % n)
            else:
                why = "; ".join(f["message"] for f in d.get("findings", []) if f.get("severity") == "error")
                note("dialling %s: %s (%s)%s" % (n, br.get("error"), br.get("code"),
                                                  ": " + why if why else ": " + br.get("text", "")))
        note("The bridge gives the devices a CN-only certificate for each of these names instead.")

    # --- 3. upstream
    def choose_upstream(self):
        say("")
        say("Upstream (the main broker as the bridge reaches it):")
        up = {}
        sock = [l for l in self.mq.listeners if l.socket_path]
        plain = [l for l in self.mq.listeners if not l.tls and not l.socket_path and
                 (l.address in (None, "127.0.0.1", "::1", "localhost", "0.0.0.0", "::"))]

        def allows(l):
            return l.flag("allow_anonymous") or bool(l.get("password_file"))

        chosen = None
        if self.a.upstream in ("auto", "socket"):
            chosen = next((l for l in sock if allows(l)), None)
        if not chosen and self.a.upstream in ("auto", "plain"):
            chosen = next((l for l in plain if allows(l)), None)
        if chosen and chosen.socket_path:
            up = {"host": chosen.socket_path}
            note("the local Unix socket %s (no TLS needed on the same machine)" % chosen.socket_path)
        elif chosen:
            up = {"host": "127.0.0.1" if chosen.address in (None, "0.0.0.0", "localhost") else
                  ("::1" if chosen.address == "::" else chosen.address), "port": str(chosen.port)}
            note("the plain listener on port %d, on loopback" % chosen.port)
        elif self.tls and self.a.upstream in ("auto", "tls"):
            l = self.tls
            chosen = l
            host = l.address if l.address and l.address not in ("0.0.0.0", "::") else "127.0.0.1"
            up = {"host": host, "port": str(l.port), "cafile": self.p.resolve(l.get("cafile") or l.get("capath"))}
            leaf = self.broker_leaf or {}
            sans_ip, sans_dns = leaf.get("san_ip", []), leaf.get("san_dns", [])
            if host in sans_ip or host in sans_dns:
                name = host
            elif self.host in sans_dns:
                name = self.host
            else:
                name = (sans_dns or sans_ip or [leaf.get("cn")])[0]
            if name and name != host:
                up["server_name"] = name
            note("the TLS listener on %s port %d, certificate verified as \"%s\"" % (host, l.port, name or host))
            if l.flag("require_certificate"):
                self.need_client_cert = True
        else:
            raise SetupError("no usable upstream listener in the broker's configuration (--upstream %s)"
                             % self.a.upstream)
        if chosen.get("password_file"):
            note("the broker has a password file: each device's username and password are passed through")
        if chosen.flag("use_identity_as_username"):
            note("WARNING: use_identity_as_username is on there: every device would reach the broker under "
                 "the bridge's own certificate CN; prefer a password file or turn it off for this listener")
        self.upstream = up

    # --- 4./5. CA and certificates
    def choose_ca(self):
        say("")
        say("The devices' CA:")
        self.reused_ca = False
        ca_crt = self.a.ca or (self.tls and self.p.resolve(self.tls.get("cafile")))
        if self.a.ca_key:
            if not ca_crt:
                raise SetupError("--ca-key given but no CA certificate: give --ca FILE")
            if not key_matches_cert(self.a.ca_key, ca_crt):
                raise SetupError("--ca-key %s is not the key of %s" % (self.a.ca_key, ca_crt))
            self.ca_crt, self.ca_key = ca_crt, os.path.abspath(self.a.ca_key)
            self.reused_ca = True
            note("the broker's CA %s (key %s): the devices' certificates and compiled-in trust anchor "
                 "keep working" % (ca_crt, self.ca_key))
            return
        st = self.read_state()
        if st.get("ca_key") and os.path.exists(st["ca_key"]):
            self.ca_crt, self.ca_key = st["ca_cert"], st["ca_key"]
            self.reused_ca = st.get("reused_ca") == "yes"
            note("as set up before: %s" % self.ca_crt)
            return
        self.ca_crt = os.path.join(self.etc, "ca.crt")
        self.ca_key = os.path.join(self.etc, "ca.key")
        if os.path.exists(self.ca_crt) and os.path.exists(self.ca_key):
            note("the bridge's own CA %s" % self.ca_crt)
            return
        note("no CA key given (--ca-key): a new CA for the devices; each device then needs a new "
             "edge_config.h")
        self.ensure_dir(self.etc, 0o755)
        self.plan.change("create the CA %s" % self.ca_crt, lambda: self.tools.run(
            [self.tools.certs, "ca", "--cn", "mqtt-edge-bridge devices", "--out-cert", self.ca_crt,
             "--out-key", self.ca_key]))

    def ensure_dir(self, d, mode):
        if not os.path.isdir(d):
            self.plan.change("create the directory %s" % d, lambda: os.makedirs(d, mode))

    def protect_key(self, key):
        """root:mqtt-edge-bridge 0640, so the daemon (User=) can read it."""
        if self.gid is not None:
            os.chown(key, 0, self.gid)
            os.chmod(key, 0o640)
        else:
            os.chmod(key, 0o600)

    def cert_ok(self, crt, key, cn):
        if not (os.path.exists(crt) and os.path.exists(key)):
            return "missing"
        info = cert_info(crt)
        if not info or info["cn"] != cn:
            return "has another name"
        if cert_has_san(crt):
            return "has a subjectAltName (BearSSL would ignore its CN)"
        if not cert_signed_by(crt, self.ca_crt):
            return "is from another CA"
        if info["not_after"] and info["not_after"] - time.time() < RENEW_DAYS * 86400:
            return "expires within %d days" % RENEW_DAYS
        return None

    def issue_listener_certs(self, names, renew=False):
        say("")
        say("Listener certificates (one CN-only certificate per name, chosen by SNI) in %s:" % self.certdir)
        self.ensure_dir(self.certdir, 0o755)
        changed = False
        for n in names:
            base = os.path.join(self.certdir, file_name_for(n))
            crt, key = base + ".crt", base + ".key"
            why = self.cert_ok(crt, key, n)
            if why is None:
                note("%s: up to date" % n)
                continue
            changed = True

            def issue(crt=crt, key=key, n=n):
                self.tools.run([self.tools.certs, "listener", "--ca", self.ca_crt, "--ca-key", self.ca_key,
                                "--address", n, "--profile", "cn-only", "--out-cert", crt, "--out-key", key,
                                "--force"])
                self.protect_key(key)
            self.plan.change("issue CN=%s (%s): %s" % (n, why, crt), issue)
        if os.path.isdir(self.certdir):
            want = {file_name_for(n) for n in names}
            for f in sorted(os.listdir(self.certdir)):
                stem, ext = os.path.splitext(f)
                if ext == ".crt" and stem not in want:
                    if renew or self.a.prune:
                        changed = True
                        path = os.path.join(self.certdir, stem)
                        self.plan.change("remove %s.crt/.key (no longer an address or name of this machine)"
                                         % path, lambda p=path: [os.unlink(p + e) for e in (".crt", ".key")
                                                                 if os.path.exists(p + e)])
                    else:
                        note("%s: kept (not a current name; --renew or --prune removes it)" % f)
        self.restart_needed |= changed
        return changed

    def issue_upstream_cert(self):
        self.upstream_cert = None
        if not self.need_client_cert:
            return
        crt = os.path.join(self.etc, "upstream-client.crt")
        key = os.path.join(self.etc, "upstream-client.key")
        if self.a.upstream_cert:
            self.upstream_cert = (self.a.upstream_cert, self.a.upstream_key)
            return
        broker_ca = self.p.resolve(self.tls.get("cafile"))
        if not (self.reused_ca and broker_ca and os.path.samefile(broker_ca, self.ca_crt)):
            say("  WARNING: the broker requires a client certificate and its CA key was not given: "
                "run again with --ca-key, or give --upstream-cert/--upstream-key")
            return
        if os.path.exists(crt) and os.path.exists(key) and cert_signed_by(crt, self.ca_crt):
            info = cert_info(crt)
            if info and info["not_after"] - time.time() > RENEW_DAYS * 86400:
                self.upstream_cert = (crt, key)
                return

        def issue():
            self.tools.run([self.tools.certs, "device", "mqtt-edge-bridge", "--ca", self.ca_crt, "--ca-key",
                            self.ca_key, "--out-cert", crt, "--out-key", key, "--force"])
            self.protect_key(key)
        self.ensure_dir(self.etc, 0o755)
        self.plan.change("issue the bridge's own client certificate for the broker (CN=mqtt-edge-bridge): %s"
                         % crt, issue)
        self.upstream_cert = (crt, key)
        self.restart_needed = True

    # --- state, for --renew
    def read_state(self):
        st = {}
        try:
            with open(self.state_path) as f:
                for line in f:
                    if "=" in line and not line.startswith("#"):
                        k, v = line.split("=", 1)
                        st[k.strip()] = v.strip()
        except OSError:
            pass
        return st

    def write_state(self):
        data = ("# Written by mqtt-edge-bridge-setup; read by mqtt-edge-bridge-setup --renew.\n"
                "ca_cert = %s\nca_key = %s\nreused_ca = %s\nport = %d\nlink_local = %s\n"
                "addresses = %s\nhostname = %s\n" %
                (self.ca_crt, self.ca_key, "yes" if self.reused_ca else "no", self.a.port,
                 "yes" if self.a.link_local else "no", " ".join(self.a.address or []), self.a.hostname or ""))
        old = None
        if os.path.exists(self.state_path):
            with open(self.state_path) as f:
                old = f.read()
        if old != data:
            self.plan.change("write %s" % self.state_path, lambda: write_atomic(self.state_path, data, 0o644))

    # --- the ini
    def ini_settings(self, names):
        default_name = self.addresses[0] if self.addresses else names[0]
        s = [
            ("listener", "port", str(self.a.port)),
            ("listener", "certdir", self.certdir_target()),
            ("listener", "default_name", default_name),
            ("listener", "cafile", self.target(self.ca_crt)),
            ("listener", "require_certificate", "true"),
            ("metrics", "enabled", "true"),
        ]
        up = self.upstream
        s.append(("upstream", "host", up["host"]))
        unset = [("listener", "certfile"), ("listener", "keyfile")]
        for k in ("port", "cafile", "server_name"):
            if k in up:
                s.append(("upstream", k, up[k]))
            else:
                unset.append(("upstream", k))
        if up.get("cafile") and self.upstream_cert:
            s.append(("upstream", "certfile", self.target(self.upstream_cert[0])))
            s.append(("upstream", "keyfile", self.target(self.upstream_cert[1])))
        else:
            unset += [("upstream", "certfile"), ("upstream", "keyfile")]
        if "cafile" not in up:
            unset.append(("upstream", "capath"))
        for kv in self.a.set or []:
            m = re.match(r"([a-z]+)\.([a-z_]+)=(.*)$", kv)
            if not m:
                raise SetupError("--set %s: expected SECTION.KEY=VALUE" % kv)
            s = [x for x in s if (x[0], x[1]) != (m.group(1), m.group(2))]
            unset = [x for x in unset if x != (m.group(1), m.group(2))]
            s.append((m.group(1), m.group(2), m.group(3)))
        return s, unset

    def target(self, path):
        """A path as written into the ini: the real one, --root included,
        so that a test can start the daemon on what was written."""
        return path

    def certdir_target(self):
        return self.target(self.certdir)

    def write_ini(self, names):
        say("")
        say("Configuration %s:" % self.ini_path)
        old = None
        if os.path.exists(self.ini_path):
            with open(self.ini_path) as f:
                old = f.read()
        ini = Ini(old if old is not None else INI_HEADER)
        settings, unset = self.ini_settings(names)
        for sec, key in unset:
            ini.unset(sec, key, "unset by mqtt-edge-bridge-setup")
        for sec, key, val in settings:
            ini.set(sec, key, val)
        new = ini.text()
        if new == old:
            note("up to date")
            self.ini_changed = False
            return
        self.ini_changed = True
        self.restart_needed = True
        diff = difflib.unified_diff((old or "").splitlines(True), new.splitlines(True),
                                    self.ini_path + (" (old)" if old else " (new file)"), self.ini_path)
        for line in diff:
            say("    " + line.rstrip("\n"))
        self.backup = None
        if old is not None:
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
            self.backup = "%s.setup-%s.bak" % (self.ini_path, stamp)
            self.plan.change("back up the old file as %s" % self.backup,
                             lambda: shutil.copy2(self.ini_path, self.backup))
        mode = os.stat(self.ini_path).st_mode & 0o777 if old is not None else 0o644
        self.plan.change("write %s" % self.ini_path, lambda: write_atomic(self.ini_path, new, mode))

    def validate(self):
        say("")
        say("Checking:")
        if self.plan.dry:
            note("would run: mqtt-edge-bridge --check-config --config %s" % self.target(self.ini_path))
            return
        if not self.tools.bridge:
            note("mqtt-edge-bridge not found: --check-config skipped")
            return
        r = self.tools.run([self.tools.bridge, "--check-config", "--config", self.ini_path], check=False)
        if r.returncode != 0:
            msg = (r.stderr or r.stdout).strip()
            if getattr(self, "ini_changed", False) and getattr(self, "backup", None):
                shutil.copy2(self.backup, self.ini_path)
                msg += "\n(the previous %s is back in place)" % self.ini_path
            raise SetupError("the new configuration does not validate:\n" + msg)
        note("mqtt-edge-bridge --check-config: OK")
        if self.tools.doctor_has("upstream"):
            # The broker is checked as one device would reach it: its CN
            # (and username/password when the broker has a password file).
            argv = [self.tools.doctor, "upstream", "--config", self.ini_path]
            if self.a.check_cn:
                argv += ["--cn", self.a.check_cn]
            if self.a.check_username:
                argv += ["--username", self.a.check_username]
            if self.a.check_password_file:
                argv += ["--password-file", self.a.check_password_file]
            r = self.tools.run(argv, check=False)
            out = (r.stdout + r.stderr).strip()
            if r.returncode == 2 and not self.a.check_cn and "--cn" in out:
                note("mqtt-edge-bridge-doctor upstream: skipped, it needs a device to check as: run again with "
                     "--check-cn CN [--check-username U --check-password-file F], or run "
                     "mqtt-edge-bridge-doctor upstream --cn CN yourself")
            else:
                note("mqtt-edge-bridge-doctor upstream: %s" % ("OK" if r.returncode == 0 else
                                                                "FAILED (exit %d)" % r.returncode))
                for line in out.splitlines():
                    note("  " + line)
        else:
            note("mqtt-edge-bridge-doctor upstream: not in this version, skipped")

    def start(self):
        if self.a.no_start or self.p.root != "/":
            note("not starting the unit (%s)" % ("--no-start" if self.a.no_start else "--root"))
            return
        if not self.tools.systemctl:
            note("systemctl not found: start mqtt-edge-bridge yourself")
            return
        sc = self.tools.systemctl
        enabled = self.tools.run([sc, "is-enabled", "mqtt-edge-bridge"], check=False).stdout.strip() == "enabled"
        active = self.tools.run([sc, "is-active", "mqtt-edge-bridge"], check=False).stdout.strip() == "active"
        if not enabled:
            self.plan.change("enable mqtt-edge-bridge.service",
                             lambda: self.tools.run([sc, "enable", "mqtt-edge-bridge"]))
        if not active:
            self.plan.change("start mqtt-edge-bridge.service",
                             lambda: self.tools.run([sc, "start", "mqtt-edge-bridge"]))
        elif self.restart_needed:
            # A new port needs a restart; certificates and the rest reload.
            self.plan.change("restart mqtt-edge-bridge.service",
                             lambda: self.tools.run([sc, "restart", "mqtt-edge-bridge"]))

    def next_step(self):
        say("")
        ip = self.addresses[0] if self.addresses else self.host
        port = self.a.port
        dial = ", ".join('"%s"' % n for n in self.names_used)
        say("Next step for the device:")
        if self.reused_ca:
            old = self.tls.port if self.tls else 8883
            say("  In your sketch, change the port and keep everything else (CA, client certificate, key):")
            say("      const uint16_t mqtt_port = %d;          // was %d (the broker)" % (port, old))
            say('      const char *mqtt_server = "%s";   // or any of %s' % (ip, dial))
            say("  The device then dials %s:%d and gets a certificate made for that name." % (ip, port))
        else:
            ca = self.target(self.ca_crt)
            key = self.target(self.ca_key)
            say("  For each device (here sensor-1), issue its certificate and its edge_config.h:")
            say("      sudo mqtt-edge-bridge-certs device sensor-1 --ca %s --ca-key %s \\" % (ca, key))
            say("              --out-cert sensor-1.crt --out-key sensor-1.key")
            say("      mqtt-edge-bridge-certs firmware-config sensor-1 --address %s --port %d \\" % (ip, port))
            say("              --ca %s --cert sensor-1.crt --key sensor-1.key --out edge_config.h" % ca)
            say("  then flash the firmware with that edge_config.h (firmware/README.md).")

    # ------------------------------------------------------------ runs
    def run(self):
        if self.a.dry_run:
            say("Dry run: nothing is changed.\n")
        self.read_broker()
        names = self.names()
        self.names_used = names
        self.diagnose_broker(names)
        self.choose_upstream()
        if not self.a.yes and not self.a.dry_run and sys.stdin.isatty():
            ans = input("\nIssue certificates and write %s? [y/N] " % self.ini_path)
            if ans.strip().lower() not in ("y", "yes"):
                say("nothing changed")
                return 1
        self.choose_ca()
        self.issue_listener_certs(names)
        self.issue_upstream_cert()
        self.write_ini(names)
        self.write_state()
        self.validate()
        self.start()
        if not self.plan.changes:
            say("\nNothing to change: already set up.")
        self.next_step()
        return 0

    def renew(self):
        st = self.read_state()
        if not st.get("ca_key"):
            return self.renew_warn_only()
        self.ca_crt, self.ca_key = st["ca_cert"], st["ca_key"]
        if not os.path.exists(self.ca_key):
            say("%s: CA key %s is gone; cannot renew" % (PROG, self.ca_key))
            return self.renew_warn_only()
        self.a.address = self.a.address or (st.get("addresses") or "").split() or None
        self.a.hostname = self.a.hostname or st.get("hostname") or None
        self.a.link_local = self.a.link_local or st.get("link_local") == "yes"
        names = self.names()
        changed = self.issue_listener_certs(names, renew=True)
        if changed and not self.plan.dry:
            ini = Ini(open(self.ini_path).read()) if os.path.exists(self.ini_path) else None
            if ini and self.addresses and ini.get("listener", "default_name") not in names:
                self.names_used = names
                old = ini.text()
                ini.set("listener", "default_name", self.addresses[0])
                if ini.text() != old:
                    write_atomic(self.ini_path, ini.text(), os.stat(self.ini_path).st_mode & 0o777)
        if changed and not self.a.no_start and self.p.root == "/" and self.tools.systemctl:
            sc = self.tools.systemctl
            if self.tools.run([sc, "is-active", "mqtt-edge-bridge"], check=False).stdout.strip() == "active":
                self.plan.change("reload mqtt-edge-bridge.service (new certificates)",
                                 lambda: self.tools.run([sc, "reload", "mqtt-edge-bridge"]))
        if not changed:
            say("Listener certificates are current.")
        return 0

    def renew_warn_only(self):
        """No CA key known: say which listener certificates are due."""
        say("%s --renew: no CA key configured (run %s --ca-key ... once): checking only" % (PROG, PROG))
        ini = Ini(open(self.ini_path).read()) if os.path.exists(self.ini_path) else Ini("")
        files = []
        if ini.get("listener", "certfile"):
            files.append(self.p.resolve(ini.get("listener", "certfile")))
        d = ini.get("listener", "certdir")
        if d:
            files += sorted(glob.glob(os.path.join(self.p.resolve(d), "*.crt")))
        due = 0
        for f in files:
            info = cert_info(f)
            if info and info["not_after"] - time.time() < RENEW_DAYS * 86400:
                say("WARNING: %s (CN=%s) expires %s: re-issue it" % (
                    f, info["cn"], time.strftime("%Y-%m-%d", time.gmtime(info["not_after"]))))
                due += 1
        if not due:
            say("Listener certificates are current.")
        return 0


def main(argv=None):
    ap = argparse.ArgumentParser(prog=PROG, description="Set up mqtt-edge-bridge next to an existing mosquitto.")
    ap.add_argument("--mosquitto-conf", metavar="FILE", help="the broker's configuration "
                    "(default /etc/mosquitto/mosquitto.conf)")
    ap.add_argument("--ca-key", metavar="FILE", help="the key of the broker's CA: reuse that CA for the devices")
    ap.add_argument("--ca", metavar="FILE", help="the CA certificate of --ca-key (default: the broker's cafile)")
    ap.add_argument("--port", type=int, default=8884, help="the device listener's port (default 8884)")
    ap.add_argument("--address", action="append", metavar="ADDR",
                    help="an address the devices dial (repeatable; default: every address of the machine)")
    ap.add_argument("--hostname", metavar="NAME", help="the host name (default: this machine's)")
    ap.add_argument("--link-local", action="store_true", help="include link-local addresses")
    ap.add_argument("--upstream", choices=("auto", "socket", "plain", "tls"), default="auto",
                    help="which broker listener the bridge uses (default auto: a local socket or plain "
                    "listener if one allows it, else the TLS one)")
    ap.add_argument("--upstream-cert", metavar="FILE", help="the bridge's client certificate for the broker")
    ap.add_argument("--upstream-key", metavar="FILE")
    ap.add_argument("--check-cn", metavar="CN",
                    help="check the upstream as this device (mqtt-edge-bridge-doctor upstream --cn)")
    ap.add_argument("--check-username", metavar="U", help="its MQTT username, for that check")
    ap.add_argument("--check-password-file", metavar="F", help="its password (first line of F), for that check")
    ap.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                    help="set any other key of the ini (repeatable)")
    ap.add_argument("--config", default="/etc/mqtt-edge-bridge.ini", help=argparse.SUPPRESS)
    ap.add_argument("--etc-dir", default="/etc/mqtt-edge-bridge", help=argparse.SUPPRESS)
    ap.add_argument("--root", metavar="DIR", help="work inside DIR (tests): /etc/... means DIR/etc/...")
    ap.add_argument("--prune", action="store_true", help="remove listener certificates of names no longer here")
    ap.add_argument("--renew", action="store_true",
                    help="re-issue the listener certificates that are due or whose names changed, then reload")
    ap.add_argument("--dry-run", action="store_true", help="print every change and change nothing")
    ap.add_argument("-y", "--yes", action="store_true", help="ask nothing")
    ap.add_argument("--no-start", action="store_true", help="do not enable or start the unit")
    ap.add_argument("--certs-tool", help=argparse.SUPPRESS)
    ap.add_argument("--doctor-tool", help=argparse.SUPPRESS)
    ap.add_argument("--bridge-tool", help=argparse.SUPPRESS)
    ap.add_argument("--systemctl", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if bool(a.upstream_cert) != bool(a.upstream_key):
        ap.error("--upstream-cert and --upstream-key go together")
    if not 1 <= a.port <= 65535:
        ap.error("--port: 1..65535")
    if a.root is None and os.geteuid() != 0 and not a.dry_run:
        print("%s: run it as root (sudo), or with --dry-run" % PROG, file=sys.stderr)
        return 1
    s = Setup(a)
    try:
        if not s.tools.certs:
            raise SetupError("mqtt-edge-bridge-certs not found")
        return s.renew() if a.renew else s.run()
    except SetupError as e:
        print("%s: %s" % (PROG, e), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
