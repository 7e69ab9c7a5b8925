#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The firmware on the real ESP8266 Arduino core (issue 15).

Builds firmware/ for nodemcuv2 and d1_mini with the esp8266-build kit
(../shared/esp8266-sdk beside the source tree, or $ESP8266_SDK), with the
sources, include folders and -D flags that firmware/platformio.ini gives
PlatformIO (parsed here, so the two cannot drift), an edge_config.h made by
`mqtt-edge-bridge-certs firmware-config` for an RSA and an EC device key,
and -Wall -Wextra -Werror on the project's own sources. Then it checks the
heap budget the link implies (see heap_budget()), and builds the installed
tree (meson install --destdir) the same way.

Figures go to the TAP log and to $BUILD_DIR/firmware-realcore.json.
"""

import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
import unittest

SOURCE_ROOT = os.environ.get("SOURCE_ROOT", os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD_DIR = os.environ.get("BUILD_DIR", os.getcwd())
CERTS = os.environ.get("CERTS", "mqtt-edge-bridge-certs")
SDK = os.environ.get("ESP8266_SDK") or os.path.join(SOURCE_ROOT, "..", "shared", "esp8266-sdk")
DRIVER = os.path.join(SDK, "bin", "esp8266-build")
CACHE = os.path.join(BUILD_DIR, "esp8266-core-cache")
BOARDS = ("nodemcuv2", "d1_mini")
KEYS = ("rsa", "ec")
# The heap left after the TLS handshake must be at least this (issue 15).
HEAP_MIN_AFTER_HANDSHAKE = 20 * 1024
SOURCE_EXT = (".c", ".cpp", ".cc", ".S")

RESULTS = {}


def note(msg):
    for line in msg.splitlines():
        print("# " + line, flush=True)


def run(cmd, timeout=600, cwd=None):
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
                          cwd=cwd)


# ---- platformio.ini: the one place that says how the firmware is built ----

def pio_read(path):
    """Sections of a platformio.ini as {section: {key: [lines]}}: values
    continue on indented lines, ';' starts a comment (PlatformIO's INI)."""
    sections, cur, key = {}, None, None
    with open(path) as f:
        for raw in f:
            line = raw.split(";", 1)[0].rstrip()
            if not line.strip():
                continue
            m = re.match(r"^\[(.+)\]$", line)
            if m:
                cur, key = sections.setdefault(m.group(1), {}), None
                continue
            if raw[0] in " \t" and key is not None:
                cur[key].append(line.strip())
                continue
            k, _, v = line.partition("=")
            key = k.strip()
            cur[key] = [v.strip()] if v.strip() else []
    return sections


def pio_env(project, env):
    """What PlatformIO would compile for [env:ENV]: (sources, -I dirs,
    -D macros), paths absolute. [env:X] inherits [env]'s keys."""
    ini = pio_read(os.path.join(project, "platformio.ini"))
    opts = dict(ini.get("env", {}))
    opts.update(ini.get("env:" + env, {}))
    pio = ini.get("platformio", {})
    src_dir = os.path.join(project, (pio.get("src_dir") or ["src"])[0])
    include_dir = os.path.join(project, (pio.get("include_dir") or ["include"])[0])

    includes, defines = [], []
    tokens = " ".join(opts.get("build_flags", [])).split()
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if t in ("-I", "-D"):
            arg, i = tokens[i + 1], i + 2
        elif t[:2] in ("-I", "-D"):
            arg, t, i = t[2:], t[:2], i + 1
        else:
            raise AssertionError("platformio.ini build_flags: %r is not -I/-D; teach the test about it" % t)
        if t == "-I":
            includes.append(os.path.normpath(os.path.join(project, arg)))
        else:
            defines.append(arg)
    # PlatformIO adds include_dir and src_dir to the include path itself.
    includes += [include_dir, src_dir]

    sources = set()
    for entry in re.findall(r"([+-])<([^>]*)>", " ".join(opts.get("build_src_filter", ["+<*>"]))):
        sign, pat = entry
        if pat == "*":
            found = {os.path.join(d, f) for d, _, fs in os.walk(src_dir) for f in fs}
        else:
            import glob
            found = set(glob.glob(os.path.join(src_dir, pat)))
        found = {os.path.normpath(p) for p in found if p.endswith(SOURCE_EXT)}
        sources = sources | found if sign == "+" else sources - found
    return sorted(sources), includes, defines


# ---- the device configuration, as a user makes it ----

def make_config(tmp, key):
    """edge_config.h from `mqtt-edge-bridge-certs firmware-config` for a
    device with an RSA or EC key; the Wi-Fi placeholders filled in the way
    the README tells the user to."""
    d = os.path.join(tmp, key)
    os.makedirs(d)

    def certs(*args):
        r = run([CERTS] + list(args), cwd=d, timeout=120)
        if r.returncode:
            raise AssertionError("mqtt-edge-bridge-certs %s failed:\n%s" % (args[0], r.stdout))

    certs("ca", "--out-cert", "ca.crt", "--out-key", "ca.key")
    certs("listener", "--ca", "ca.crt", "--ca-key", "ca.key", "--address", "192.168.0.52",
          "--out-cert", "listener.crt", "--out-key", "listener.key")
    certs("device", "dev-" + key, "--ca", "ca.crt", "--ca-key", "ca.key", "--listener", "listener.crt",
          *(["--ec"] if key == "ec" else []))
    certs("firmware-config", "dev-" + key, "--address", "192.168.0.52", "--port", "8884", "--ca", "ca.crt",
          "--cert", "dev-%s.crt" % key, "--key", "dev-%s.key" % key, "--out", "edge_config.h")
    path = os.path.join(d, "edge_config.h")
    with open(path) as f:
        text = f.read()
    text = text.replace('"CHANGE-ME-SSID"', '"test-ssid"').replace('"CHANGE-ME-PASSWORD"', '"test-password"')
    text = re.sub(r"(?m)^#define EDGE_WIFI_PLACEHOLDERS.*\n", "", text)
    with open(path, "w") as f:
        f.write(text)
    return d, text


def pem_der_sizes(config_text):
    """DER bytes of EDGE_CA_PEM, EDGE_CERT_PEM and EDGE_KEY_PEM."""
    sizes = {}
    for name in ("EDGE_CA_PEM", "EDGE_CERT_PEM", "EDGE_KEY_PEM"):
        m = re.search(r"#define %s((?:.*\\\n)*.*)" % name, config_text)
        body = "".join(re.findall(r'"([^"]*)"', m.group(1))).replace("\\n", "\n")
        b64 = "".join(l for l in body.splitlines() if l and not l.startswith("-----"))
        sizes[name] = len(base64.b64decode(b64))
    return sizes


# ---- figures from the core's sources and the build ----

def core_constants():
    """Numbers the heap budget needs, read from the kit's core sources."""
    core = os.path.join(SDK, "core")
    wifi = os.path.join(core, "libraries", "ESP8266WiFi", "src")

    def grab(path, pattern):
        with open(path) as f:
            m = re.search(pattern, f.read())
        if not m:
            raise AssertionError("%s: %r not found (core changed?)" % (path, pattern))
        return m.group(1)

    c = {}
    c["heap_end"] = int(grab(os.path.join(core, "cores", "esp8266", "umm_malloc", "umm_malloc_cfgport.h"),
                             r"#define UMM_HEAP_END_ADDR\s+(0x[0-9A-Fa-f]+)"), 16)
    # "#define _stackSize (6200/4)": words of 4 bytes
    c["bearssl_stack"] = int(grab(os.path.join(core, "cores", "esp8266", "StackThunk.cpp"),
                                  r"#define _stackSize \((\d+)/4\)")) // 4 * 4
    src = os.path.join(wifi, "WiFiClientSecureBearSSL.cpp")
    c["in_overhead"] = int(grab(src, r"MAX_IN_OVERHEAD = (\d+)"))
    c["out_overhead"] = int(grab(src, r"MAX_OUT_OVERHEAD = (\d+)"))
    return c


def probe_sizes(tmp, board):
    """sizeof() of the TLS objects the core allocates on the heap, as the
    lx106 compiler lays them out (a probe compiled with the board's flags)."""
    probe = os.path.join(tmp, "probe.cpp")
    names = {"br_ssl_client_context": "br_ssl_client_context",
             "br_x509_minimal_context": "br_x509_minimal_context",
             "WiFiClientSecureCtx": "BearSSL::WiFiClientSecureCtx"}
    with open(probe, "w") as f:
        f.write("#include <Arduino.h>\n#include <WiFiClientSecureBearSSL.h>\n")
        for k, t in names.items():
            f.write("char probe_%s[sizeof(%s)];\n" % (k, t))
    out = os.path.join(tmp, "probe-" + board)
    r = run([DRIVER, "--board", board, "--out", out, "--cache", CACHE, "--compile-only", probe])
    if r.returncode:
        raise AssertionError("sizeof probe failed:\n" + r.stdout)
    nm = run(["xtensa-lx106-elf-nm", "-S", os.path.join(out, "obj", "probe.cpp.o")]).stdout
    sizes = {}
    for k in names:
        m = re.search(r"^\S+ ([0-9a-f]+) \S probe_%s$" % k, nm, re.M)
        sizes[k] = int(m.group(1), 16)
    return sizes


def build(project, board, config_dir, out):
    """esp8266-build with what platformio.ini says; returns the figures."""
    sources, includes, defines = pio_env(project, board)
    cmd = [DRIVER, "--board", board, "--out", out, "--cache", CACHE, "-I", config_dir]
    for d in includes:
        cmd += ["-I", d]
    for d in defines:
        cmd += ["-D", d]
    # The project's own sources only: the core keeps its own flags.
    cmd += ["--cflags", "-Wall -Wextra -Werror"] + sources
    r = run(cmd, timeout=900)
    if r.returncode or not re.search(r"(?m)^OK ", r.stdout):
        raise AssertionError("esp8266-build %s failed:\n%s" % (board, r.stdout))
    fig = {"sources": [os.path.relpath(s, project) for s in sources]}
    m = re.search(r"(?m)^RAM used=(\d+) of (\d+) \(\d+%\) data=(\d+) rodata=(\d+) bss=(\d+)", r.stdout)
    fig.update(ram=int(m.group(1)), data=int(m.group(3)), rodata=int(m.group(4)), bss=int(m.group(5)))
    m = re.search(r"(?m)^IRAM used=(\d+) of (\d+)", r.stdout)
    fig["iram"], fig["iram_max"] = int(m.group(1)), int(m.group(2))
    m = re.search(r"(?m)^FLASH used=(\d+) of (\d+)", r.stdout)
    fig["flash_irom"] = int(m.group(1))
    m = re.search(r"(?m)^PIO ram=(\d+) of \d+ \(\S+\) flash=(\d+) of (\d+)", r.stdout)
    fig["pio_flash"], fig["pio_flash_max"] = int(m.group(2)), int(m.group(3))
    m = re.search(r"(?m)^BIN bytes=(\d+)", r.stdout)
    fig["bin"] = int(m.group(1))
    nm = run(["xtensa-lx106-elf-nm", os.path.join(out, "firmware.elf")]).stdout
    fig["heap_start"] = int(re.search(r"(?m)^([0-9a-f]+) \S _heap_start$", nm).group(1), 16)
    warnings = [l for l in r.stdout.splitlines() if "warning:" in l]
    if warnings:
        raise AssertionError("warnings in the project's sources:\n" + "\n".join(warnings))
    return fig


def heap_budget(fig, consts, sizes, der):
    """The heap left once TLS is up, computed from the link (not measured):

      heap at boot  = UMM_HEAP_END_ADDR - _heap_start     (umm_malloc's region;
                      static RAM = .data + .rodata + .bss lies below it, the
                      core's 4 KB loop stack is on the SYS stack above it)
      credentials   = 2 x DER(CA) + 2 x DER(device cert) + DER(key)
                      (X509List keeps each certificate's DER and a trust
                      anchor made from it; the key's parts fit in its DER:
                      an upper bound)
      TLS, kept     = BearSSL stack (StackThunk 6200) + br_ssl_client_context
                      + WiFiClientSecureCtx + I/O buffers (512 + 325 in,
                      512 + 85 out: setBufferSizes(512, 512) + the core's
                      MAX_IN/OUT_OVERHEAD)
      handshake     = br_x509_minimal_context (freed once connected)
      after         = heap at boot - credentials - TLS, kept

    Not in it: what the Wi-Fi SDK and lwIP allocate at run time, and
    umm_malloc's 8 bytes per block; only a device can measure those."""
    b = {}
    b["heap_at_boot"] = consts["heap_end"] - fig["heap_start"]
    b["credentials"] = 2 * der["EDGE_CA_PEM"] + 2 * der["EDGE_CERT_PEM"] + der["EDGE_KEY_PEM"]
    b["iobuf"] = 512 + consts["in_overhead"] + 512 + consts["out_overhead"]
    b["bearssl_stack"] = consts["bearssl_stack"]
    b["ssl_client_ctx"] = sizes["br_ssl_client_context"]
    b["client_secure_ctx"] = sizes["WiFiClientSecureCtx"]
    b["x509_ctx"] = sizes["br_x509_minimal_context"]
    b["tls_kept"] = b["bearssl_stack"] + b["ssl_client_ctx"] + b["client_secure_ctx"] + b["iobuf"]
    b["after_handshake"] = b["heap_at_boot"] - b["credentials"] - b["tls_kept"]
    b["during_handshake"] = b["after_handshake"] - b["x509_ctx"]
    return b


def build_tree(project, board, key, tmp, config=None):
    """Build project (a firmware folder) for board with a key-type device
    configuration; returns the figures with the heap budget in "budget"."""
    cfg_dir, cfg_text = config or make_config(tmp, key)
    fig = build(project, board, cfg_dir, os.path.join(tmp, "fw-%s-%s" % (board, key)))
    fig["budget"] = heap_budget(fig, core_constants(), probe_sizes(tmp, board), pem_der_sizes(cfg_text))
    return fig


def have_kit():
    if not os.path.isfile(DRIVER):
        return "ESP8266 build kit not found at %s (set ESP8266_SDK)" % os.path.abspath(SDK)
    r = run([DRIVER, "--check"], timeout=60)
    if r.returncode:
        return "ESP8266 build kit present but its Debian packages are missing:\n" + r.stdout
    return None


class RealCore(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.skip = have_kit()
        if cls.skip and os.path.isfile(DRIVER):
            # The kit is there but cannot run: that is a broken CI machine,
            # not an absent kit (scripts/deps.sh installs the packages).
            raise AssertionError(cls.skip)
        if cls.skip:
            return
        cls.tmp = tempfile.mkdtemp(prefix="fw-realcore-")
        cls.configs = {k: make_config(cls.tmp, k) for k in KEYS}
        cls.consts = core_constants()
        cls.project = os.path.join(SOURCE_ROOT, "firmware")

    @classmethod
    def tearDownClass(cls):
        if getattr(cls, "tmp", None):
            shutil.rmtree(cls.tmp, ignore_errors=True)
            with open(os.path.join(BUILD_DIR, "firmware-realcore.json"), "w") as f:
                json.dump(RESULTS, f, indent=1, sort_keys=True)

    def setUp(self):
        if self.skip:
            self.skipTest(self.skip)

    def check_build(self, project, board, key, label):
        out = os.path.join(self.tmp, label)
        os.makedirs(out, exist_ok=True)
        fig = build_tree(project, board, key, out, self.configs[key])
        b = fig["budget"]
        RESULTS["%s/%s/%s" % (label, board, key)] = fig
        note("%s %s %s-key: flash %d B (image %d B), IRAM %d of %d B, static RAM %d B "
             "(data %d + rodata %d + bss %d)" % (label, board, key, fig["pio_flash"], fig["bin"], fig["iram"],
                                                  fig["iram_max"], fig["ram"], fig["data"], fig["rodata"],
                                                  fig["bss"]))
        note("  heap at boot %d = 0x%x - _heap_start 0x%x; credentials %d; TLS kept %d (stack %d + ssl ctx %d + "
             "WiFiClientSecureCtx %d + buffers %d); x509 ctx %d" % (
                 b["heap_at_boot"], self.consts["heap_end"], fig["heap_start"], b["credentials"], b["tls_kept"],
                 b["bearssl_stack"], b["ssl_client_ctx"], b["client_secure_ctx"], b["iobuf"], b["x509_ctx"]))
        note("  heap after handshake %d B (during %d B), budget >= %d B" % (
            b["after_handshake"], b["during_handshake"], HEAP_MIN_AFTER_HANDSHAKE))
        self.assertLessEqual(fig["iram"], fig["iram_max"])
        self.assertLessEqual(fig["pio_flash"], fig["pio_flash_max"])
        self.assertGreaterEqual(b["after_handshake"], HEAP_MIN_AFTER_HANDSHAKE,
                                "heap after the TLS handshake below budget: %r" % b)
        return fig

    def test_0_platformio_ini_is_what_is_built(self):
        sources, includes, defines = pio_env(self.project, "nodemcuv2")
        rel = [os.path.relpath(s, SOURCE_ROOT) for s in sources]
        for want in ("firmware/src/main.cpp", "firmware/core/mqtt_client.c", "lib/mqtt_codec.c",
                     "lib/br_errors.c"):
            self.assertIn(want, rel)
        self.assertIn(os.path.join(SOURCE_ROOT, "lib"), [os.path.normpath(i) for i in includes])
        self.assertIn("MQTT_CLIENT_RX_BUF=1024", defines)

    def test_1_nodemcuv2_rsa(self):
        self.check_build(self.project, "nodemcuv2", "rsa", "source")

    def test_2_nodemcuv2_ec(self):
        self.check_build(self.project, "nodemcuv2", "ec", "source")

    def test_3_d1_mini_rsa(self):
        self.check_build(self.project, "d1_mini", "rsa", "source")

    def test_4_d1_mini_ec(self):
        self.check_build(self.project, "d1_mini", "ec", "source")

    def test_5_installed_tree(self):
        """/usr/share/mqtt-edge-bridge/firmware builds on its own: from the
        files meson installs, nothing of the source tree."""
        meson = shutil.which("meson")
        if not meson:
            self.skipTest("meson not in PATH")
        dest = os.path.join(self.tmp, "dest")
        r = run([meson, "install", "-C", BUILD_DIR, "--destdir", dest, "--no-rebuild", "--quiet"], timeout=300)
        self.assertEqual(r.returncode, 0, r.stdout)
        share = dest + os.environ.get("FIRMWARE_SHARE", "/usr/local/share/mqtt-edge-bridge")
        project = os.path.join(share, "firmware")
        self.assertTrue(os.path.isfile(os.path.join(project, "platformio.ini")), project)
        sources, _, _ = pio_env(project, "nodemcuv2")
        for s in sources:
            self.assertTrue(s.startswith(share + os.sep), "%s is outside the installed tree" % s)
        self.assertFalse(os.path.exists(os.path.join(project, "include", "edge_config.h")))
        fig = self.check_build(project, "nodemcuv2", "rsa", "installed")
        src = RESULTS.get("source/nodemcuv2/rsa")
        if src:
            self.assertEqual(fig["sources"], src["sources"])


if __name__ == "__main__":
    unittest.main()
