/* SPDX-License-Identifier: MIT */
/*
 * Unit tests for config: defaults, the shipped file, and every kind of bad
 * input with the exact FILE:LINE: [section] key it must name.
 *
 * The certificate/key files are empty placeholders made at run time in a
 * mkdtemp() directory: config only checks they are readable.
 */

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <openssl/ssl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"

static char dir[64];
static char p_crt[128], p_key[128], p_ca[128], p_crl[128], p_upca[128], p_capath[128], p_cli_crt[128],
        p_cli_key[128], p_missing[128];

/* The lines every "good" text starts with: a valid [listener] (lines 1-4);
 * test-specific lines follow from line 5. */
static char base[1024];

static void touch(const char *path)
{
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);

        assert_true(fd >= 0);
        close(fd);
}

static int setup(void **state)
{
        (void) state;
        strcpy(dir, "/tmp/test-config-XXXXXX");
        if (!mkdtemp(dir))
                return -1;
        snprintf(p_crt, sizeof(p_crt), "%s/listener.crt", dir);
        snprintf(p_key, sizeof(p_key), "%s/listener.key", dir);
        snprintf(p_ca, sizeof(p_ca), "%s/ca.crt", dir);
        snprintf(p_crl, sizeof(p_crl), "%s/crl.pem", dir);
        snprintf(p_upca, sizeof(p_upca), "%s/upstream-ca.crt", dir);
        snprintf(p_capath, sizeof(p_capath), "%s/capath", dir);
        snprintf(p_cli_crt, sizeof(p_cli_crt), "%s/client.crt", dir);
        snprintf(p_cli_key, sizeof(p_cli_key), "%s/client.key", dir);
        snprintf(p_missing, sizeof(p_missing), "%s/missing.pem", dir);
        touch(p_crt);
        touch(p_key);
        touch(p_ca);
        touch(p_crl);
        touch(p_upca);
        touch(p_cli_crt);
        touch(p_cli_key);
        if (mkdir(p_capath, 0700) < 0)
                return -1;
        snprintf(base, sizeof(base), "[listener]\ncertfile = %s\nkeyfile = %s\ncafile = %s\n", p_crt, p_key,
                 p_ca);
        return 0;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
        (void) sb;
        (void) flag;
        (void) ftw;
        return remove(path);
}

static int teardown(void **state)
{
        (void) state;
        return nftw(dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
}

/* config_init + config_load_string(name "t.ini"); cfg must be freed. */
static int load(struct config *cfg, char *err, size_t errlen, const char *text)
{
        assert_int_equal(config_init(cfg), 0);
        return config_load_string(cfg, "t.ini", text, err, errlen);
}

/* base + extra must load. */
static void load_ok(struct config *cfg, const char *extra)
{
        char text[4096], err[512] = "";
        int r;

        snprintf(text, sizeof(text), "%s%s", base, extra);
        r = load(cfg, err, sizeof(err), text);
        if (r != 0)
                fail_msg("unexpected error %d: %s", r, err);
}

/* text (with base prepended when with_base) must fail with r and a message
 * starting with want. */
static void load_bad_text(const char *text, int want_r, const char *want)
{
        struct config cfg;
        char err[512] = "";
        int r;

        r = load(&cfg, err, sizeof(err), text);
        if (r != want_r || strncmp(err, want, strlen(want)) != 0)
                fail_msg("got %d '%s', want %d '%s...'", r, err, want_r, want);
        config_free(&cfg);
}

static void load_bad(const char *extra, int want_r, const char *want)
{
        char text[4096];

        snprintf(text, sizeof(text), "%s%s", base, extra);
        load_bad_text(text, want_r, want);
}

static void assert_defaults(const struct config *c, bool files_set)
{
        assert_int_equal(c->listener.n_bind, 1);
        assert_string_equal(c->listener.bind_address[0], "0.0.0.0");
        assert_null(c->listener.bind_address[1]);
        assert_int_equal(c->listener.port, 8884);
        if (!files_set) {
                assert_null(c->listener.certfile);
                assert_null(c->listener.keyfile);
                assert_null(c->listener.cafile);
        }
        assert_null(c->listener.crlfile);
        assert_true(c->listener.require_certificate);
        assert_true(c->listener.revoke_connected);
        assert_int_equal(c->listener.tls_version_min, TLS1_2_VERSION);
        assert_null(c->listener.ciphers);
        assert_null(c->listener.ciphersuites);
        assert_int_equal(c->listener.handshake_timeout, 10);
        assert_int_equal(c->listener.first_byte_timeout, 3);
        assert_int_equal(c->listener.session_cache_size, 1024);
        assert_int_equal(c->listener.session_timeout, 86400);

        assert_string_equal(c->upstream.host, "127.0.0.1");
        assert_int_equal(c->upstream.port, 8883);
        assert_null(c->upstream.cafile);
        assert_null(c->upstream.capath);
        assert_null(c->upstream.certfile);
        assert_null(c->upstream.keyfile);
        assert_int_equal(c->upstream.tls_version_min, TLS1_2_VERSION);
        assert_null(c->upstream.ciphers);
        assert_null(c->upstream.bind_address);
        assert_int_equal(c->upstream.connect_timeout, 10);

        assert_string_equal(c->bridge.client_id_prefix, "");
        assert_int_equal(c->bridge.username_mode, USERNAME_FROM_DEVICE);
        assert_null(c->bridge.username);
        assert_int_equal(c->bridge.password_mode, PASSWORD_FROM_DEVICE);
        assert_null(c->bridge.password);
        assert_null(c->bridge.mountpoint);
        assert_false(c->bridge.clientid_must_match_cn);
        assert_string_equal(c->bridge.user, "mqtt-edge-bridge");

        assert_int_equal(c->limits.max_connections, 1024);
        assert_int_equal(c->limits.max_handshakes, 64);
        assert_int_equal(c->limits.max_connections_per_address, 32);
        assert_int_equal(c->limits.max_packet_size, 262144);
        assert_int_equal(c->limits.max_inflight_messages, 20);
        assert_int_equal(c->limits.max_queued_bytes, 1048576);
        assert_int_equal(c->limits.max_keepalive, 65535);
        assert_int_equal(c->limits.max_subscriptions, 1000);

        assert_false(c->metrics.enabled);
        assert_string_equal(c->metrics.bind_address, "127.0.0.1");
        assert_int_equal(c->metrics.port, 9883);

        assert_int_equal(c->log.level, LOG_LEVEL_INFO);
        assert_int_equal(c->log.target, LOG_TARGET_AUTO);
}

static void test_defaults(void **state)
{
        struct config cfg;

        (void) state;
        assert_int_equal(config_init(&cfg), 0);
        assert_defaults(&cfg, false);
        assert_null(cfg.upstream.server_name);
        assert_null(cfg.path);
        config_free(&cfg);
        /* zeroed, so a second free is harmless; NULL is fine too */
        assert_null(cfg.upstream.host);
        config_free(&cfg);
        config_free(NULL);
}

static void test_minimal(void **state)
{
        struct config cfg;

        (void) state;
        load_ok(&cfg, "");
        assert_defaults(&cfg, true);
        assert_string_equal(cfg.path, "t.ini");
        assert_string_equal(cfg.listener.certfile, p_crt);
        assert_string_equal(cfg.listener.keyfile, p_key);
        assert_string_equal(cfg.listener.cafile, p_ca);
        /* server_name defaults to host: the name checked against the SAN */
        assert_string_equal(cfg.upstream.server_name, "127.0.0.1");
        assert_false(config_upstream_is_socket(&cfg.upstream));
        assert_false(config_upstream_uses_tls(&cfg.upstream));
        config_free(&cfg);
}

static void test_every_key(void **state)
{
        struct config cfg;
        char extra[3072];

        (void) state;
        snprintf(extra, sizeof(extra),
                 "bind_address = 0.0.0.0, ::1 192.168.1.10\n"
                 "port = 8885\n"
                 "crlfile = %s\n"
                 "require_certificate = yes\n"
                 "revoke_connected = no\n"
                 "tls_version = tlsv1\n"
                 "ciphers = ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256\n"
                 "ciphersuites = TLS_AES_128_GCM_SHA256\n"
                 "handshake_timeout = 5\n"
                 "first_byte_timeout = 2\n"
                 "session_cache_size = 0\n"
                 "session_timeout = 600\n"
                 "[upstream]\n"
                 "host = broker.example\n"
                 "port = 18883\n"
                 "cafile = %s\n"
                 "capath = %s\n"
                 "certfile = %s\n"
                 "keyfile = %s\n"
                 "server_name = raspberry\n"
                 "tls_version = tlsv1.3\n"
                 "ciphers = HIGH\n"
                 "bind_address = ::1\n"
                 "connect_timeout = 30\n"
                 "[bridge]\n"
                 "client_id_prefix = edge-\n"
                 "username_mode = fixed\n"
                 "username = bridge\n"
                 "password_mode = fixed\n"
                 "password = s3cret\n"
                 "mountpoint = devices/%%c/\n"
                 "clientid_must_match_cn = on\n"
                 "[limits]\n"
                 "max_connections = 0\n"
                 "max_handshakes = 0\n"
                 "max_connections_per_address = 5\n"
                 "max_packet_size = 1024\n"
                 "max_inflight_messages = 65535\n"
                 "max_queued_bytes = 4096\n"
                 "max_keepalive = 120\n"
                 "[log]\n"
                 "level = debug\n"
                 "target = stderr\n",
                 p_crl, p_upca, p_capath, p_cli_crt, p_cli_key);
        load_ok(&cfg, extra);
        assert_int_equal(cfg.listener.n_bind, 3);
        assert_string_equal(cfg.listener.bind_address[0], "0.0.0.0");
        assert_string_equal(cfg.listener.bind_address[1], "::1");
        assert_string_equal(cfg.listener.bind_address[2], "192.168.1.10");
        assert_null(cfg.listener.bind_address[3]);
        assert_int_equal(cfg.listener.port, 8885);
        assert_string_equal(cfg.listener.crlfile, p_crl);
        assert_true(cfg.listener.require_certificate);
        assert_false(cfg.listener.revoke_connected);
        assert_int_equal(cfg.listener.tls_version_min, TLS1_VERSION);
        assert_string_equal(cfg.listener.ciphers, "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256");
        assert_string_equal(cfg.listener.ciphersuites, "TLS_AES_128_GCM_SHA256");
        assert_int_equal(cfg.listener.handshake_timeout, 5);
        assert_int_equal(cfg.listener.first_byte_timeout, 2);
        assert_int_equal(cfg.listener.session_cache_size, 0);
        assert_int_equal(cfg.listener.session_timeout, 600);
        assert_string_equal(cfg.upstream.host, "broker.example");
        assert_int_equal(cfg.upstream.port, 18883);
        assert_string_equal(cfg.upstream.cafile, p_upca);
        assert_string_equal(cfg.upstream.capath, p_capath);
        assert_string_equal(cfg.upstream.certfile, p_cli_crt);
        assert_string_equal(cfg.upstream.keyfile, p_cli_key);
        assert_string_equal(cfg.upstream.server_name, "raspberry");
        assert_int_equal(cfg.upstream.tls_version_min, TLS1_3_VERSION);
        assert_string_equal(cfg.upstream.ciphers, "HIGH");
        assert_string_equal(cfg.upstream.bind_address, "::1");
        assert_int_equal(cfg.upstream.connect_timeout, 30);
        assert_true(config_upstream_uses_tls(&cfg.upstream));
        assert_string_equal(cfg.bridge.client_id_prefix, "edge-");
        assert_int_equal(cfg.bridge.username_mode, USERNAME_FIXED);
        assert_string_equal(cfg.bridge.username, "bridge");
        assert_int_equal(cfg.bridge.password_mode, PASSWORD_FIXED);
        assert_string_equal(cfg.bridge.password, "s3cret");
        assert_string_equal(cfg.bridge.mountpoint, "devices/%c/");
        assert_true(cfg.bridge.clientid_must_match_cn);
        assert_int_equal(cfg.limits.max_connections, 0);
        assert_int_equal(cfg.limits.max_handshakes, 0);
        assert_int_equal(cfg.limits.max_connections_per_address, 5);
        assert_int_equal(cfg.limits.max_packet_size, 1024);
        assert_int_equal(cfg.limits.max_inflight_messages, 65535);
        assert_int_equal(cfg.limits.max_queued_bytes, 4096);
        assert_int_equal(cfg.limits.max_keepalive, 120);
        assert_int_equal(cfg.log.level, LOG_LEVEL_DEBUG);
        assert_int_equal(cfg.log.target, LOG_TARGET_STDERR);
        config_free(&cfg);
}

static void test_syntax_variants(void **state)
{
        struct config cfg;
        char text[2048];

        (void) state;
        /* indented keys are keys (never a continuation of the line above),
         * inline " ;" comments, '#' and ';' comment lines, ':' separator,
         * blank lines, CRLF, no final newline */
        snprintf(text, sizeof(text),
                 "\xef\xbb\xbf# comment\r\n"
                 "; another\r\n"
                 "\r\n"
                 "  [listener]\r\n"
                 "    certfile = %s\r\n"
                 "\tkeyfile: %s\r\n"
                 "  cafile = %s ; the device CA\r\n"
                 "  port=1884\r\n"
                 "require_certificate = FALSE\r\n"
                 "[bridge]\r\n"
                 "client_id_prefix =\r\n"
                 "mountpoint = d/%%%%/%%i/\r\n"
                 "clientid_must_match_cn = true\r\n"
                 "[log]\r\n"
                 "level = warning",
                 p_crt, p_key, p_ca);
        assert_int_equal(load(&cfg, NULL, 0, text), 0);
        assert_string_equal(cfg.listener.keyfile, p_key);
        assert_string_equal(cfg.listener.cafile, p_ca);
        assert_int_equal(cfg.listener.port, 1884);
        assert_false(cfg.listener.require_certificate);
        assert_string_equal(cfg.bridge.client_id_prefix, "");
        assert_string_equal(cfg.bridge.mountpoint, "d/%%/%i/");
        assert_int_equal(cfg.log.level, LOG_LEVEL_WARNING);
        config_free(&cfg);

        /* an empty text is the defaults, and then certfile is missing */
        load_bad_text("", -EINVAL, "t.ini: [listener] certfile: required");
        load_bad_text("# nothing\n", -EINVAL, "t.ini: [listener] certfile: required");
}

static void test_bools(void **state)
{
        static const char *const t[] = { "true", "yes", "on", "1", "TRUE", "Yes", "ON" };
        static const char *const f[] = { "false", "no", "off", "0", "False", "NO", "Off" };

        (void) state;
        for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
                struct config cfg;
                char extra[128];

                snprintf(extra, sizeof(extra), "[bridge]\nclientid_must_match_cn = %s\n", t[i]);
                load_ok(&cfg, extra);
                assert_true(cfg.bridge.clientid_must_match_cn);
                config_free(&cfg);
                snprintf(extra, sizeof(extra), "require_certificate = %s\n", f[i]);
                load_ok(&cfg, extra);
                assert_false(cfg.listener.require_certificate);
                config_free(&cfg);
        }
        load_bad("require_certificate = maybe\n", -EINVAL,
                 "t.ini:5: [listener] require_certificate: 'maybe' is not a boolean");
        load_bad("require_certificate = 2\n", -EINVAL, "t.ini:5: [listener] require_certificate: '2' is not");
        load_bad("require_certificate =\n", -EINVAL, "t.ini:5: [listener] require_certificate: '' is not");
}

static void test_numbers(void **state)
{
        (void) state;
        load_bad("port = abc\n", -EINVAL, "t.ini:5: [listener] port: 'abc' is not a number");
        load_bad("port = -1\n", -EINVAL, "t.ini:5: [listener] port: '-1' is not a number");
        load_bad("port = +1\n", -EINVAL, "t.ini:5: [listener] port: '+1' is not a number");
        load_bad("port = 88 84\n", -EINVAL, "t.ini:5: [listener] port: '88 84' is not a number");
        load_bad("port = 8884x\n", -EINVAL, "t.ini:5: [listener] port: '8884x' is not a number");
        load_bad("port = 0x10\n", -EINVAL, "t.ini:5: [listener] port: '0x10' is not a number");
        load_bad("port =\n", -EINVAL, "t.ini:5: [listener] port: '' is not a number");
        load_bad("port = 0\n", -ERANGE, "t.ini:5: [listener] port: 0 is out of range (1..65535)");
        load_bad("port = 65536\n", -ERANGE, "t.ini:5: [listener] port: 65536 is out of range (1..65535)");
        load_bad("port = 99999999999999999999999\n", -ERANGE,
                 "t.ini:5: [listener] port: 99999999999999999999999 is out of range");
        load_bad("first_byte_timeout = 0\n", -ERANGE,
                 "t.ini:5: [listener] first_byte_timeout: 0 is out of range (1..3600)");
        load_bad("[limits]\nmax_handshakes = 1000001\n", -ERANGE,
                 "t.ini:6: [limits] max_handshakes: 1000001 is out of range");
        load_bad("[limits]\nmax_connections_per_address = many\n", -EINVAL,
                 "t.ini:6: [limits] max_connections_per_address: 'many' is not a number");
        load_bad("\n\n[limits]\nmax_keepalive = 0\n", -ERANGE,
                 "t.ini:8: [limits] max_keepalive: 0 is out of range (1..65535)");
        load_bad("[limits]\nmax_inflight_messages = 65536\n", -ERANGE,
                 "t.ini:6: [limits] max_inflight_messages: 65536 is out of range");
        load_bad("[limits]\nmax_packet_size = 268435461\n", -ERANGE,
                 "t.ini:6: [limits] max_packet_size: 268435461 is out of range (64..268435460)");
        load_bad("[upstream]\nconnect_timeout = 0\n", -ERANGE, "t.ini:6: [upstream] connect_timeout: 0 is out");
        load_bad("handshake_timeout = 4294967296\n", -ERANGE, "t.ini:5: [listener] handshake_timeout: 4294967296");

        struct config cfg;
        if (SIZE_MAX < 1099511627776ull) {
                /* 32-bit size_t (armhf): the byte limits end at SIZE_MAX. */
                load_bad("[limits]\nmax_queued_bytes = 1099511627776\n", -ERANGE,
                         "t.ini:6: [limits] max_queued_bytes: 1099511627776 is out of range (64..4294967295)");
                load_ok(&cfg, "port = 00065535\n[limits]\nmax_packet_size = 268435460\nmax_queued_bytes = 4294967295\n");
                assert_int_equal(cfg.limits.max_queued_bytes, SIZE_MAX);
        } else {
                load_ok(&cfg, "port = 00065535\n[limits]\nmax_packet_size = 268435460\nmax_queued_bytes = 1099511627776\n");
                assert_int_equal(cfg.limits.max_queued_bytes, 1099511627776ull);
        }
        assert_int_equal(cfg.listener.port, 65535);
        assert_int_equal(cfg.limits.max_packet_size, 268435460);
        config_free(&cfg);
}

static void test_enums(void **state)
{
        struct config cfg;

        (void) state;
        load_bad("tls_version = tls1.2\n", -EINVAL,
                 "t.ini:5: [listener] tls_version: 'tls1.2' is not a TLS version (tlsv1, tlsv1.1, tlsv1.2 or tlsv1.3)");
        load_bad("tls_version = TLSv1.2\n", -EINVAL, "t.ini:5: [listener] tls_version: 'TLSv1.2' is not");
        load_bad("[upstream]\ntls_version = sslv3\n", -EINVAL, "t.ini:6: [upstream] tls_version: 'sslv3'");
        load_bad("[bridge]\nusername_mode = client\n", -EINVAL,
                 "t.ini:6: [bridge] username_mode: 'client' is not one of device, cn, fixed");
        load_bad("[bridge]\npassword_mode = cn\n", -EINVAL,
                 "t.ini:6: [bridge] password_mode: 'cn' is not one of device, fixed, none");
        load_bad("[log]\nlevel = verbose\n", -EINVAL, "t.ini:6: [log] level: 'verbose' is not one of");
        load_bad("[log]\ntarget = syslog\n", -EINVAL, "t.ini:6: [log] target: 'syslog' is not one of");

        load_ok(&cfg, "tls_version = tlsv1.1\n[bridge]\nusername_mode = cn\npassword_mode = none\n"
                      "[log]\nlevel = error\ntarget = journal\n");
        assert_int_equal(cfg.listener.tls_version_min, TLS1_1_VERSION);
        assert_int_equal(cfg.bridge.username_mode, USERNAME_FROM_CN);
        assert_int_equal(cfg.bridge.password_mode, PASSWORD_NONE);
        assert_int_equal(cfg.log.level, LOG_LEVEL_ERR);
        assert_int_equal(cfg.log.target, LOG_TARGET_JOURNAL);
        config_free(&cfg);

        assert_int_equal(config_parse_tls_version("tlsv1"), TLS1_VERSION);
        assert_int_equal(config_parse_tls_version("tlsv1.1"), TLS1_1_VERSION);
        assert_int_equal(config_parse_tls_version("tlsv1.2"), TLS1_2_VERSION);
        assert_int_equal(config_parse_tls_version("tlsv1.3"), TLS1_3_VERSION);
        assert_int_equal(config_parse_tls_version("tlsv1.4"), -EINVAL);
        assert_int_equal(config_parse_tls_version(""), -EINVAL);
        assert_int_equal(config_parse_tls_version(NULL), -EINVAL);
}

static void test_structure(void **state)
{
        (void) state;
        load_bad_text("[listner]\n", -EINVAL, "t.ini:1: unknown section [listner] (known: [listener]");
        load_bad("\n[Listener]\nport = 1\n", -EINVAL, "t.ini:6: unknown section [Listener]");
        load_bad("[ listener ]\n", -EINVAL, "t.ini:5: unknown section [ listener ]");
        load_bad("[]\n", -EINVAL, "t.ini:5: unknown section []");
        load_bad_text("\xef\xbb\xbf[nope]\n", -EINVAL, "t.ini:1: unknown section [nope]");
        load_bad("[listener\n", -EINVAL, "t.ini:5: section header without a closing ']'");
        load_bad("prot = 1\n", -EINVAL, "t.ini:5: [listener] prot: unknown key");
        load_bad("[upstream]\nrequire_certificate = true\n", -EINVAL,
                 "t.ini:6: [upstream] require_certificate: unknown key (it belongs in [listener])");
        load_bad("[bridge]\nmax_connections = 1\n", -EINVAL,
                 "t.ini:6: [bridge] max_connections: unknown key (it belongs in [limits])");
        load_bad("Port = 1\n", -EINVAL, "t.ini:5: [listener] Port: unknown key");
        load_bad_text("port = 1\n[listener]\n", -EINVAL, "t.ini:1: 'port' is outside any [section]");
        load_bad("port = 1\nport = 2\n", -EINVAL, "t.ini:6: [listener] port: set twice (first on line 5)");
        load_bad("[listener]\ncertfile = /x\n", -EINVAL,
                 "t.ini:6: [listener] certfile: certfile #2 has no keyfile");
        load_bad("[listener]\nkeyfile = /x\n", -EINVAL,
                 "t.ini:6: [listener] keyfile: keyfile #2 has no certfile");
        load_bad("[listener]\nmax_send_fragment = 100\n", -ERANGE,
                 "t.ini:6: [listener] max_send_fragment: 100 is out of range (0 = off, or 512..16384)");
        load_bad("[listener]\ncertdir = /nonexistent-dir\n", -ENOENT,
                 "t.ini:6: [listener] certdir: '/nonexistent-dir': No such file");
        load_bad("[log]\nlevel = info\n[upstream]\n[log]\nlevel = debug\n", -EINVAL,
                 "t.ini:9: [log] level: set twice (first on line 6)");
        load_bad("this is not ini\n", -EINVAL, "t.ini:5: syntax error");
        load_bad("port 8884\n", -EINVAL, "t.ini:5: syntax error");
        /* the first error wins: a syntax error before a bad value ... */
        load_bad("junk\nport = x\n", -EINVAL, "t.ini:5: syntax error");
        /* ... and a bad value before a syntax error */
        load_bad("port = x\njunk\n", -EINVAL, "t.ini:5: [listener] port: 'x' is not a number");
        load_bad("junk\n[nope]\n", -EINVAL, "t.ini:5: syntax error");
        load_bad("[nope]\njunk\n", -EINVAL, "t.ini:5: unknown section [nope]");
        /* a key may be given both before and after an unrelated section */
        struct config cfg;
        load_ok(&cfg, "[log]\nlevel = debug\n[listener]\nport = 1\n");
        assert_int_equal(cfg.listener.port, 1);
        config_free(&cfg);
}

static void test_long_line(void **state)
{
        char extra[600];

        (void) state;
        /* inih's buffer is 200 bytes; a longer line must not be split and
         * its tail parsed as a line of its own. */
        strcpy(extra, "ciphers = ");
        memset(extra + strlen(extra), 'A', 300);
        strcpy(extra + 310, "\nport = 1\n");
        load_bad(extra, -EINVAL, "t.ini:5: line too long");

        /* just under the limit is fine */
        struct config cfg;
        char ok[256];
        strcpy(ok, "ciphers = ");
        memset(ok + 10, 'B', 188);
        strcpy(ok + 198, "\n");
        load_ok(&cfg, ok);
        assert_int_equal(strlen(cfg.listener.ciphers), 188);
        config_free(&cfg);
}

static void test_bind_address(void **state)
{
        struct config cfg;

        (void) state;
        load_ok(&cfg, "bind_address = ::\n");
        assert_int_equal(cfg.listener.n_bind, 1);
        assert_string_equal(cfg.listener.bind_address[0], "::");
        config_free(&cfg);
        load_ok(&cfg, "bind_address = 127.0.0.1,::1,,10.0.0.1 fe80::1\n");
        assert_int_equal(cfg.listener.n_bind, 4);
        assert_string_equal(cfg.listener.bind_address[3], "fe80::1");
        config_free(&cfg);
        load_bad("bind_address = localhost\n", -EINVAL,
                 "t.ini:5: [listener] bind_address: 'localhost' is not an IPv4 or IPv6 address");
        load_bad("bind_address = 0.0.0.0 1.2.3\n", -EINVAL, "t.ini:5: [listener] bind_address: '1.2.3' is not");
        load_bad("bind_address = 1.1.1.1 2.2.2.2 3.3.3.3 4.4.4.4 5.5.5.5\n", -EINVAL,
                 "t.ini:5: [listener] bind_address: more than 4 addresses");
        load_bad("bind_address = ::1 ::1\n", -EINVAL, "t.ini:5: [listener] bind_address: '::1' is listed twice");
        load_bad("bind_address =\n", -EINVAL, "t.ini:5: [listener] bind_address: empty");
        load_bad("bind_address = , ,\n", -EINVAL, "t.ini:5: [listener] bind_address: empty");
        load_bad("[upstream]\nbind_address = eth0\n", -EINVAL,
                 "t.ini:6: [upstream] bind_address: 'eth0' is not an IPv4 or IPv6 address");
}

static void test_proxy_protocol(void **state)
{
        struct config cfg;
        struct sockaddr_in lb = { .sin_family = AF_INET };

        (void) state;
        load_ok(&cfg, "");
        assert_int_equal(cfg.listener.proxy_protocol, PROXY_NONE);
        assert_int_equal(cfg.listener.n_proxy_from, 0);
        config_free(&cfg);
        load_ok(&cfg, "proxy_protocol = v2\nproxy_from = 127.0.0.1, 10.0.0.0/24 ::1\n");
        assert_int_equal(cfg.listener.proxy_protocol, PROXY_V2);
        assert_int_equal(cfg.listener.n_proxy_from, 3);
        inet_pton(AF_INET, "10.0.0.77", &lb.sin_addr);
        assert_true(proxy_net_match(cfg.listener.proxy_from, cfg.listener.n_proxy_from, (struct sockaddr *) &lb));
        config_free(&cfg);
        load_ok(&cfg, "proxy_protocol = v1\nproxy_from = 0.0.0.0/0\n");
        assert_int_equal(cfg.listener.proxy_protocol, PROXY_V1);
        config_free(&cfg);
        load_bad("proxy_protocol = v3\n", -EINVAL,
                 "t.ini:5: [listener] proxy_protocol: 'v3' is not one of off, v1, v2");
        load_bad("proxy_protocol = v2\n", -EINVAL, "t.ini:5: [listener] proxy_protocol: v2 needs proxy_from");
        load_bad("proxy_from = 127.0.0.1\n", -EINVAL,
                 "t.ini:5: [listener] proxy_from: set, but only used with proxy_protocol = v1 or v2");
        load_bad("proxy_protocol = v2\nproxy_from = 127.0.0.1 10.0.0.1/8\n", -EINVAL,
                 "t.ini:6: [listener] proxy_from: '10.0.0.1/8': bits set below the prefix length");
        load_bad("proxy_protocol = v2\nproxy_from = haproxy.lan\n", -EINVAL,
                 "t.ini:6: [listener] proxy_from: 'haproxy.lan': not an IPv4 or IPv6 address");
        load_bad("proxy_protocol = v2\nproxy_from = ,\n", -EINVAL, "t.ini:6: [listener] proxy_from: empty");
        load_bad("proxy_protocol = v2\nproxy_from = 1.0.0.0/8 2.0.0.0/8 3.0.0.0/8 4.0.0.0/8 5.0.0.0/8 "
                 "6.0.0.0/8 7.0.0.0/8 8.0.0.0/8 9.0.0.0/8 10.0.0.0/8 11.0.0.0/8 12.0.0.0/8 13.0.0.0/8 "
                 "14.0.0.0/8 15.0.0.0/8 16.0.0.0/8 17.0.0.0/8\n", -EINVAL,
                 "t.ini:6: [listener] proxy_from: more than 16 networks");
}

static void test_listener_files(void **state)
{
        char text[2048], want[512];
        struct config cfg;

        (void) state;
        /* required */
        load_bad_text("[listener]\nport = 1\n", -EINVAL,
                      "t.ini: [listener] certfile: required (the listener's certificate chain");
        snprintf(text, sizeof(text), "[listener]\ncertfile = %s\n", p_crt);
        load_bad_text(text, -EINVAL, "t.ini: [listener] keyfile: required");
        snprintf(text, sizeof(text), "[listener]\ncertfile = %s\nkeyfile = %s\n", p_crt, p_key);
        load_bad_text(text, -EINVAL, "t.ini: [listener] cafile: required when require_certificate is true");
        snprintf(text, sizeof(text), "[listener]\ncertfile = %s\nkeyfile = %s\ncafile =\n", p_crt, p_key);
        load_bad_text(text, -EINVAL, "t.ini:4: [listener] cafile: required when require_certificate is true");
        /* ... but not without require_certificate */
        snprintf(text, sizeof(text), "[listener]\ncertfile = %s\nkeyfile = %s\nrequire_certificate = no\n", p_crt,
                 p_key);
        assert_int_equal(load(&cfg, NULL, 0, text), 0);
        assert_null(cfg.listener.cafile);
        config_free(&cfg);

        /* several pairs for SNI, and a certificate directory */
        snprintf(text, sizeof(text), "%scertfile = %s\nkeyfile = %s\ncertfile = %s\nkeyfile = %s\n"
                 "certdir = %s\ndefault_name = raspberry\nmax_send_fragment = 1024\n", base, p_crt, p_key,
                 p_crt, p_key, dir);
        assert_int_equal(load(&cfg, NULL, 0, text), 0);
        assert_int_equal(cfg.listener.n_extra, 2);
        assert_string_equal(cfg.listener.extra_keyfile[1], p_key);
        assert_string_equal(cfg.listener.certdir, dir);
        assert_string_equal(cfg.listener.default_name, "raspberry");
        assert_int_equal(cfg.listener.max_send_fragment, 1024);
        assert_int_equal(cfg.listener.expiry_warning_days, 30);
        config_free(&cfg);
        /* certdir alone is enough */
        snprintf(text, sizeof(text), "[listener]\ncertdir = %s\ncafile = %s\n", dir, p_ca);
        assert_int_equal(load(&cfg, NULL, 0, text), 0);
        assert_null(cfg.listener.certfile);
        config_free(&cfg);
        snprintf(text, sizeof(text), "[listener]\ncertfile = %s\nkeyfile = %s\ncertfile = %s\nkeyfile = %s\n",
                 p_crt, p_key, p_missing, p_key);
        snprintf(want, sizeof(want), "t.ini:4: [listener] certfile: '%s': No such file", p_missing);
        load_bad_text(text, -ENOENT, want);

        /* missing, a directory */
        snprintf(text, sizeof(text), "[listener]\n\ncertfile = %s\nkeyfile = %s\ncafile = %s\n", p_missing, p_key,
                 p_ca);
        snprintf(want, sizeof(want), "t.ini:3: [listener] certfile: '%s': No such file or directory", p_missing);
        load_bad_text(text, -ENOENT, want);
        snprintf(text, sizeof(text), "[listener]\ncertfile = %s\nkeyfile = %s\ncafile = %s\n", p_crt, dir, p_ca);
        snprintf(want, sizeof(want), "t.ini:3: [listener] keyfile: '%s' is a directory, not a file", dir);
        load_bad_text(text, -EISDIR, want);
        snprintf(text, sizeof(text), "%scrlfile = %s\n", base, p_missing);
        snprintf(want, sizeof(want), "t.ini:5: [listener] crlfile: '%s': No such file", p_missing);
        load_bad_text(text, -ENOENT, want);
        snprintf(text, sizeof(text), "[listener]\ncertfile = %s\nkeyfile = %s\ncafile = %s/nodir/ca.crt\n", p_crt,
                 p_key, dir);
        snprintf(want, sizeof(want), "t.ini:4: [listener] cafile: '%s/nodir/ca.crt': No such file", dir);
        load_bad_text(text, -ENOENT, want);
}

static void test_unreadable(void **state)
{
        char want[512];

        (void) state;
        assert_int_equal(chmod(p_key, 0), 0);
        if (geteuid() == 0) {
                /* root reads anything: check as nobody, in a child that
                 * reports by exit status (cmocka's asserts stay here). */
                pid_t pid = fork();
                assert_true(pid >= 0);
                if (pid == 0) {
                        struct config cfg;
                        char err[512] = "";
                        /* Everything but the key readable for nobody. */
                        const char *open_files[] = { p_crt, p_ca, p_crl, p_upca, p_cli_crt, p_cli_key };
                        if (chmod(dir, 0755) < 0)
                                _exit(3);
                        for (size_t i = 0; i < sizeof(open_files) / sizeof(open_files[0]); i++)
                                (void) chmod(open_files[i], 0644);
                        if (setresgid(65534, 65534, 65534) < 0 || setresuid(65534, 65534, 65534) < 0)
                                _exit(2);
                        int r = load(&cfg, err, sizeof(err), base);
                        config_free(&cfg);
                        _exit(r == -EACCES && strstr(err, "t.ini:3: [listener] keyfile: ") &&
                              strstr(err, "is not readable by uid 65534: Permission denied") ? 0 : 1);
                }
                int status = 0;
                assert_int_equal(waitpid(pid, &status, 0), pid);
                assert_true(WIFEXITED(status));
                assert_int_equal(WEXITSTATUS(status), 0);
        } else {
                snprintf(want, sizeof(want), "t.ini:3: [listener] keyfile: '%s' is not readable by uid %u: Permission denied",
                         p_key, (unsigned) getuid());
                load_bad_text(base, -EACCES, want);
        }
        assert_int_equal(chmod(p_key, 0600), 0);
}

static void test_upstream(void **state)
{
        struct config cfg;
        char extra[1024], want[512];

        (void) state;
        load_ok(&cfg, "[upstream]\nhost = /run/mosquitto/mqtt.sock\nport = 1\n");
        assert_true(config_upstream_is_socket(&cfg.upstream));
        assert_string_equal(cfg.upstream.host, "/run/mosquitto/mqtt.sock");
        assert_null(cfg.upstream.server_name); /* no name to check on a socket */
        config_free(&cfg);

        snprintf(extra, sizeof(extra), "[upstream]\nhost = 192.0.2.1\ncafile = %s\n", p_upca);
        load_ok(&cfg, extra);
        assert_true(config_upstream_uses_tls(&cfg.upstream));
        assert_string_equal(cfg.upstream.server_name, "192.0.2.1");
        config_free(&cfg);

        snprintf(extra, sizeof(extra), "[upstream]\ncapath = %s\n", p_capath);
        load_ok(&cfg, extra);
        assert_true(config_upstream_uses_tls(&cfg.upstream));
        config_free(&cfg);

        load_bad("[upstream]\nhost =\n", -EINVAL, "t.ini:6: [upstream] host: empty");

        /* Several hosts (issue 14): each with [upstream] port unless it
         * says host:port, each checked against its own name unless
         * server_name is set. */
        snprintf(extra, sizeof(extra), "[upstream]\nhost = node-a  192.0.2.2:18883 [2001:db8::3]:1884 ::4 [::5]\n"
                 "port = 8884\ncafile = %s\n", p_upca);
        load_ok(&cfg, extra);
        assert_int_equal(cfg.upstream.n_hosts, 5);
        assert_string_equal(cfg.upstream.host, "node-a");
        assert_string_equal(cfg.upstream.hosts[0].name, "node-a");
        assert_int_equal(cfg.upstream.hosts[0].port, 8884);
        assert_string_equal(cfg.upstream.hosts[0].server_name, "node-a");
        assert_string_equal(cfg.upstream.hosts[1].name, "192.0.2.2");
        assert_int_equal(cfg.upstream.hosts[1].port, 18883);
        assert_string_equal(cfg.upstream.hosts[1].server_name, "192.0.2.2");
        assert_string_equal(cfg.upstream.hosts[2].name, "2001:db8::3");
        assert_int_equal(cfg.upstream.hosts[2].port, 1884);
        assert_string_equal(cfg.upstream.hosts[3].name, "::4");
        assert_int_equal(cfg.upstream.hosts[3].port, 8884);
        assert_string_equal(cfg.upstream.hosts[4].name, "::5");
        assert_string_equal(cfg.upstream.server_name, "node-a");
        config_free(&cfg);
        load_ok(&cfg, "[upstream]\nhost = a b\nserver_name = broker.example\n");
        assert_int_equal(cfg.upstream.n_hosts, 2);
        assert_string_equal(cfg.upstream.hosts[1].server_name, "broker.example");
        assert_int_equal(cfg.upstream.hosts[1].port, 8883);
        config_free(&cfg);
        load_ok(&cfg, "");
        assert_int_equal(cfg.upstream.n_hosts, 1);
        assert_string_equal(cfg.upstream.hosts[0].name, "127.0.0.1");
        assert_int_equal(cfg.upstream.hosts[0].port, 8883);
        config_free(&cfg);
        load_bad("[upstream]\nhost = a a\n", -EINVAL, "t.ini:6: [upstream] host: 'a' is listed twice");
        load_bad("[upstream]\nhost = a /run/m.sock\n", -EINVAL,
                 "t.ini:6: [upstream] host: a Unix socket path must be the only host");
        load_bad("[upstream]\nhost = a:0\n", -EINVAL,
                 "t.ini:6: [upstream] host: 'a:0': the port after ':' is not a number from 1 to 65535");
        load_bad("[upstream]\nhost = a:x\n", -EINVAL, "t.ini:6: [upstream] host: 'a:x': the port");
        load_bad("[upstream]\nhost = :1883\n", -EINVAL, "t.ini:6: [upstream] host: ':1883': empty host name");
        load_bad("[upstream]\nhost = [192.0.2.1]:1\n", -EINVAL,
                 "t.ini:6: [upstream] host: '[192.0.2.1]:1' is not an IPv6 address in brackets");
        load_bad("[upstream]\nhost = [::1]x\n", -EINVAL, "t.ini:6: [upstream] host: '[::1]x': expected");
        load_bad("[upstream]\nhost = a b c d e f g h i\n", -EINVAL, "t.ini:6: [upstream] host: more than 8 hosts");
        char longpath[200] = "host = /";
        memset(longpath + 8, 'x', 120);
        strcpy(longpath + 128, "\n");
        snprintf(extra, sizeof(extra), "[upstream]\n%s", longpath);
        load_bad(extra, -EINVAL, "t.ini:6: [upstream] host: socket path longer than 107 bytes");

        snprintf(extra, sizeof(extra), "[upstream]\ncapath = %s\n", p_upca);
        snprintf(want, sizeof(want), "t.ini:6: [upstream] capath: '%s' is not a directory", p_upca);
        load_bad(extra, -ENOTDIR, want);
        snprintf(extra, sizeof(extra), "[upstream]\ncafile = %s\n", p_missing);
        snprintf(want, sizeof(want), "t.ini:6: [upstream] cafile: '%s': No such file or directory", p_missing);
        load_bad(extra, -ENOENT, want);
        snprintf(extra, sizeof(extra), "[upstream]\ncafile = %s\nkeyfile = %s\n", p_upca, p_missing);
        snprintf(want, sizeof(want), "t.ini:7: [upstream] keyfile: '%s': No such file", p_missing);
        load_bad(extra, -ENOENT, want);
        snprintf(extra, sizeof(extra), "[upstream]\ncafile = %s\ncertfile = %s\n", p_upca, p_cli_crt);
        load_bad(extra, -EINVAL, "t.ini:7: [upstream] certfile: set without keyfile (give both or neither)");
        snprintf(extra, sizeof(extra), "[upstream]\ncafile = %s\n\nkeyfile = %s\n", p_upca, p_cli_key);
        load_bad(extra, -EINVAL, "t.ini:8: [upstream] keyfile: set without certfile");
        snprintf(extra, sizeof(extra), "[upstream]\ncertfile = %s\nkeyfile = %s\n", p_cli_crt, p_cli_key);
        load_bad(extra, -EINVAL, "t.ini:6: [upstream] certfile: a client certificate needs TLS upstream");
}

static void test_bridge(void **state)
{
        struct config cfg;

        (void) state;
        load_bad("[bridge]\nusername_mode = fixed\n", -EINVAL,
                 "t.ini: [bridge] username: required when username_mode = fixed");
        load_bad("[bridge]\nusername_mode = fixed\nusername =\n", -EINVAL,
                 "t.ini:7: [bridge] username: required when username_mode = fixed");
        load_bad("[bridge]\nusername = u\n", -EINVAL,
                 "t.ini:6: [bridge] username: set, but only used with username_mode = fixed");
        load_bad("[bridge]\npassword_mode = fixed\n", -EINVAL,
                 "t.ini: [bridge] password: required when password_mode = fixed");
        load_bad("[bridge]\npassword_mode = none\npassword = x\n", -EINVAL,
                 "t.ini:7: [bridge] password: set, but only used with password_mode = fixed");
        load_bad("[bridge]\nmountpoint = devices/%c\n", -EINVAL,
                 "t.ini:6: [bridge] mountpoint: 'devices/%c': mountpoint must end with '/'");
        load_bad("[bridge]\nmountpoint = devices/+/%c/\n", -EINVAL,
                 "t.ini:6: [bridge] mountpoint: 'devices/+/%c/': mountpoint contains a wildcard");
        load_bad("[bridge]\nmountpoint = %x/\n", -EINVAL, "t.ini:6: [bridge] mountpoint: '%x/': mountpoint has an unknown");
        load_bad("[bridge]\nmountpoint = a/../\n", -EINVAL, "t.ini:6: [bridge] mountpoint: 'a/../': mountpoint contains a '..'");
        load_ok(&cfg, "[bridge]\nmountpoint = devices/%c/%i/\nusername_mode = fixed\nusername = b\n"
                      "password_mode = fixed\npassword = p ; inline comment\n");
        assert_string_equal(cfg.bridge.mountpoint, "devices/%c/%i/");
        assert_string_equal(cfg.bridge.password, "p");
        config_free(&cfg);
        /* identity is the certificate: %c binds client ids to the CN by
         * default, %i needs them bound, "%%i" is a literal and does not */
        load_ok(&cfg, "[bridge]\nmountpoint = devices/%c/\n");
        assert_true(cfg.bridge.clientid_must_match_cn);
        assert_false(cfg.bridge.allow_clientid_takeover);
        config_free(&cfg);
        load_ok(&cfg, "[bridge]\nmountpoint = devices/%c/\nclientid_must_match_cn = false\n");
        assert_false(cfg.bridge.clientid_must_match_cn);
        config_free(&cfg);
        load_ok(&cfg, "[bridge]\nmountpoint = devices/%%i/\n");
        assert_false(cfg.bridge.clientid_must_match_cn);
        config_free(&cfg);
        load_bad("[bridge]\nmountpoint = devices/%i/\n", -EINVAL,
                 "t.ini:6: [bridge] mountpoint: 'devices/%i/': %i (the client id) needs clientid_must_match_cn = true");
        load_bad("[bridge]\nmountpoint = d/%c/%i/\nclientid_must_match_cn = false\n", -EINVAL,
                 "t.ini:6: [bridge] mountpoint: 'd/%c/%i/': %i (the client id) needs");
        load_ok(&cfg, "[bridge]\nallow_clientid_takeover = true\n");
        assert_true(cfg.bridge.allow_clientid_takeover);
        config_free(&cfg);
        /* an empty mountpoint is none */
        load_ok(&cfg, "[bridge]\nmountpoint =\n");
        assert_null(cfg.bridge.mountpoint);
        config_free(&cfg);
        /* a password is never echoed (it has no parse error; check the one
         * message that could carry it) */
        char err[512];
        char text[2048];
        snprintf(text, sizeof(text), "%s[bridge]\npassword = hunter2\n", base);
        assert_int_equal(load(&cfg, err, sizeof(err), text), -EINVAL);
        assert_null(strstr(err, "hunter2"));
        config_free(&cfg);
}

static void test_limits(void **state)
{
        (void) state;
        load_bad("[limits]\nmax_queued_bytes = 1000\n", -EINVAL,
                 "t.ini:6: [limits] max_queued_bytes: max_queued_bytes (1000) is smaller than max_packet_size (262144)");
        load_bad("[limits]\nmax_packet_size = 2000000\n", -EINVAL,
                 "t.ini:6: [limits] max_packet_size: max_queued_bytes (1048576) is smaller than max_packet_size (2000000)");
}

static void test_metrics(void **state)
{
        struct config cfg;

        (void) state;
        load_ok(&cfg, "[metrics]\nenabled = yes\nbind_address = ::1\nport = 19883\n");
        assert_true(cfg.metrics.enabled);
        assert_string_equal(cfg.metrics.bind_address, "::1");
        assert_int_equal(cfg.metrics.port, 19883);
        config_free(&cfg);

        /* off, an empty address is just unused */
        load_ok(&cfg, "[metrics]\nbind_address =\n");
        assert_false(cfg.metrics.enabled);
        assert_null(cfg.metrics.bind_address);
        config_free(&cfg);

        load_bad("[metrics]\nenabled = true\nbind_address =\n", -EINVAL,
                 "t.ini:7: [metrics] bind_address: empty while enabled is true");
        load_bad("[metrics]\nbind_address = localhost\n", -EINVAL,
                 "t.ini:6: [metrics] bind_address: 'localhost' is not an IPv4 or IPv6 address");
        load_bad("[metrics]\nport = 0\n", -ERANGE, "t.ini:6: [metrics] port: 0 is out of range (1..65535)");
        load_bad("[metrics]\nenabled = maybe\n", -EINVAL, "t.ini:6: [metrics] enabled: 'maybe' is not a boolean");
        load_bad("[log]\nport = 1\n", -EINVAL, "t.ini:6: [log] port: unknown key (it belongs in [");
}

/* config_load_settings: the same parse and checks, but the files it names
 * need not exist (--status, --condition). */
static void test_load_settings(void **state)
{
        struct config cfg;
        char path[128], err[512];
        FILE *f;

        (void) state;
        snprintf(path, sizeof(path), "%s/settings.ini", dir);
        f = fopen(path, "w");
        assert_non_null(f);
        fprintf(f, "[listener]\ncertfile = %s/missing.crt\nkeyfile = %s/missing.key\ncafile = %s/x\n"
                   "[metrics]\nenabled = true\nport = 1234\n", dir, dir, dir);
        fclose(f);

        assert_int_equal(config_init(&cfg), 0);
        assert_int_equal(config_load(&cfg, path, err, sizeof(err)), -ENOENT);
        assert_non_null(strstr(err, "missing.crt"));
        config_free(&cfg);

        assert_int_equal(config_init(&cfg), 0);
        if (config_load_settings(&cfg, path, err, sizeof(err)) != 0)
                fail_msg("%s", err);
        assert_true(cfg.metrics.enabled);
        assert_int_equal(cfg.metrics.port, 1234);
        config_free(&cfg);

        /* a bad value or a missing required key is still an error */
        f = fopen(path, "w");
        assert_non_null(f);
        fprintf(f, "[listener]\nkeyfile = /nope\n");
        fclose(f);
        assert_int_equal(config_init(&cfg), 0);
        assert_int_equal(config_load_settings(&cfg, path, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "[listener] certfile: required"));
        config_free(&cfg);
        unlink(path);
}

static void test_config_load_file(void **state)
{
        struct config cfg;
        char path[128], err[512], want[256];
        FILE *f;

        (void) state;
        snprintf(path, sizeof(path), "%s/good.ini", dir);
        f = fopen(path, "w");
        assert_non_null(f);
        fprintf(f, "%s[limits]\nmax_connections = 7\n", base);
        fclose(f);
        assert_int_equal(config_init(&cfg), 0);
        assert_int_equal(config_load(&cfg, path, err, sizeof(err)), 0);
        assert_string_equal(cfg.path, path);
        assert_int_equal(cfg.limits.max_connections, 7);
        config_free(&cfg);

        /* the message names the file path */
        f = fopen(path, "w");
        assert_non_null(f);
        fprintf(f, "%s[limits]\nmax_connections = seven\n", base);
        fclose(f);
        assert_int_equal(config_init(&cfg), 0);
        assert_int_equal(config_load(&cfg, path, err, sizeof(err)), -EINVAL);
        snprintf(want, sizeof(want), "%s:6: [limits] max_connections: 'seven' is not a number", path);
        assert_string_equal(err, want);
        config_free(&cfg);

        /* a NUL byte */
        f = fopen(path, "w");
        assert_non_null(f);
        fwrite("[listener]\0x\n", 1, 13, f);
        fclose(f);
        assert_int_equal(config_init(&cfg), 0);
        assert_int_equal(config_load(&cfg, path, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "NUL byte"));
        config_free(&cfg);

        /* missing file, a directory */
        snprintf(path, sizeof(path), "%s/nope.ini", dir);
        assert_int_equal(config_init(&cfg), 0);
        assert_int_equal(config_load(&cfg, path, err, sizeof(err)), -ENOENT);
        snprintf(want, sizeof(want), "%s: cannot open: No such file or directory", path);
        assert_string_equal(err, want);
        config_free(&cfg);
        assert_int_equal(config_init(&cfg), 0);
        assert_int_equal(config_load(&cfg, dir, err, sizeof(err)), -EISDIR);
        snprintf(want, sizeof(want), "%s: not a regular file", dir);
        assert_string_equal(err, want);
        config_free(&cfg);

        /* loading twice over one cfg replaces values, leaks nothing */
        assert_int_equal(config_init(&cfg), 0);
        snprintf(path, sizeof(path), "%s/good.ini", dir);
        f = fopen(path, "w");
        assert_non_null(f);
        fprintf(f, "%sbind_address = ::1\n[bridge]\nmountpoint = a/\n", base);
        fclose(f);
        assert_int_equal(config_load(&cfg, path, err, sizeof(err)), 0);
        assert_int_equal(config_load_string(&cfg, "second", base, NULL, 0), 0);
        assert_string_equal(cfg.path, "second");
        config_free(&cfg);
        /* a tiny error buffer truncates, never overflows */
        assert_int_equal(config_init(&cfg), 0);
        assert_int_equal(config_load_string(&cfg, "t.ini", "[x]\n", err, 5), -EINVAL);
        assert_string_equal(err, "t.in");
        config_free(&cfg);
}

/* Read the shipped etc/mqtt-edge-bridge.ini. */
static char *read_shipped(char *path, size_t pathlen)
{
        const char *srcdir = getenv("TESTS_SRCDIR");
        char *text;
        long n;
        FILE *f;

        snprintf(path, pathlen, "%s/../../etc/mqtt-edge-bridge.ini", srcdir ? srcdir : "tests/unit");
        f = fopen(path, "r");
        assert_non_null(f);
        assert_int_equal(fseek(f, 0, SEEK_END), 0);
        n = ftell(f);
        assert_true(n > 0);
        rewind(f);
        text = calloc(1, (size_t) n + 1);
        assert_non_null(text);
        assert_int_equal(fread(text, 1, (size_t) n, f), (size_t) n);
        fclose(f);
        return text;
}

static int line_of(const char *text, const char *needle)
{
        const char *p = strstr(text, needle);
        int line = 1;

        assert_non_null(p);
        for (const char *q = text; q < p; q++)
                line += *q == '\n';
        return line;
}

/* Replace every "/etc/mqtt-edge-bridge/" with dir + "/"; optionally
 * uncomment every ";key = value" line (but the upstream cafile example). */
static char *rewrite(const char *text, bool uncomment)
{
        size_t cap = strlen(text) * 2 + 4096, n = 0;
        char *out = malloc(cap);
        const char *p = text;

        assert_non_null(out);
        while (*p) {
                const char *nl = strchr(p, '\n');
                size_t len = nl ? (size_t) (nl - p + 1) : strlen(p);
                char line[512];

                assert_true(len < sizeof(line));
                memcpy(line, p, len);
                line[len] = '\0';
                p += len;
                if (uncomment && line[0] == ';' && strstr(line, " =") &&
                    !strstr(line, "upstream-ca.crt"))
                        memmove(line, line + 1, len);
                for (const char *q = line; *q;) {
                        static const char etc[] = "/etc/mqtt-edge-bridge/";

                        if (strncmp(q, etc, sizeof(etc) - 1) == 0) {
                                n += (size_t) snprintf(out + n, cap - n, "%s/", dir);
                                q += sizeof(etc) - 1;
                        } else
                                out[n++] = *q++;
                }
        }
        out[n] = '\0';
        return out;
}

static void test_shipped(void **state)
{
        struct config cfg;
        char path[512], err[1024], want[1024];
        char *text, *t;
        int r;

        (void) state;
        text = read_shipped(path, sizeof(path));

        /* As shipped, on a machine without the package's certificates: the
         * first missing file is named with its line. */
        assert_int_equal(config_init(&cfg), 0);
        r = config_load(&cfg, path, err, sizeof(err));
        if (access("/etc/mqtt-edge-bridge/listener.crt", R_OK) < 0) {
                assert_int_equal(r, -ENOENT);
                snprintf(want, sizeof(want),
                         "%s:%d: [listener] certfile: '/etc/mqtt-edge-bridge/listener.crt': No such file or directory",
                         path, line_of(text, "\ncertfile = /etc/mqtt-edge-bridge/listener.crt") + 1);
                assert_string_equal(err, want);
        }
        config_free(&cfg);

        /* With the paths pointed at real files it loads, and what it loads
         * is exactly the documented defaults. */
        t = rewrite(text, false);
        assert_int_equal(config_init(&cfg), 0);
        r = config_load_string(&cfg, "shipped.ini", t, err, sizeof(err));
        if (r != 0)
                fail_msg("%s", err);
        assert_defaults(&cfg, true);
        assert_string_equal(cfg.listener.certfile, p_crt);
        assert_string_equal(cfg.listener.keyfile, p_key);
        assert_string_equal(cfg.listener.cafile, p_ca);
        config_free(&cfg);
        free(t);

        /* Every commented-out key, uncommented, gives the defaults too: the
         * comments do not lie. */
        t = rewrite(text, true);
        assert_non_null(strstr(t, "\nmax_keepalive = 65535\n"));
        assert_int_equal(config_init(&cfg), 0);
        r = config_load_string(&cfg, "uncommented.ini", t, err, sizeof(err));
        if (r != 0)
                fail_msg("%s", err);
        assert_defaults(&cfg, true);
        config_free(&cfg);
        free(t);

        /* ... and the upstream cafile example works when uncommented. */
        t = rewrite(text, false);
        char *c = strstr(t, ";cafile = ");
        assert_non_null(c);
        *c = ' ';
        assert_int_equal(config_init(&cfg), 0);
        r = config_load_string(&cfg, "tls.ini", t, err, sizeof(err));
        if (r != 0)
                fail_msg("%s", err);
        assert_string_equal(cfg.upstream.cafile, p_upca);
        assert_true(config_upstream_uses_tls(&cfg.upstream));
        config_free(&cfg);
        free(t);

        free(text);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_defaults),
                cmocka_unit_test(test_minimal),
                cmocka_unit_test(test_every_key),
                cmocka_unit_test(test_syntax_variants),
                cmocka_unit_test(test_bools),
                cmocka_unit_test(test_numbers),
                cmocka_unit_test(test_enums),
                cmocka_unit_test(test_structure),
                cmocka_unit_test(test_long_line),
                cmocka_unit_test(test_bind_address),
                cmocka_unit_test(test_listener_files),
                cmocka_unit_test(test_proxy_protocol),
                cmocka_unit_test(test_unreadable),
                cmocka_unit_test(test_upstream),
                cmocka_unit_test(test_bridge),
                cmocka_unit_test(test_limits),
                cmocka_unit_test(test_metrics),
                cmocka_unit_test(test_load_settings),
                cmocka_unit_test(test_config_load_file),
                cmocka_unit_test(test_shipped),
        };

        return cmocka_run_group_tests(tests, setup, teardown);
}
