/* SPDX-License-Identifier: MIT */
/* proxy_proto: the PROXY protocol header, v1 and v2 (haproxy's
 * doc/proxy-protocol.txt), and the trusted-network match (issue 14). */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "proxy_proto.h"

static const uint8_t SIG[12] = { 0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A };

static void assert_addr(const struct sockaddr_storage *ss, const char *ip, uint16_t port)
{
        char buf[INET6_ADDRSTRLEN];

        if (ss->ss_family == AF_INET) {
                const struct sockaddr_in *in = (const struct sockaddr_in *) ss;
                inet_ntop(AF_INET, &in->sin_addr, buf, sizeof buf);
                assert_int_equal(ntohs(in->sin_port), port);
        } else {
                const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *) ss;
                assert_int_equal(ss->ss_family, AF_INET6);
                inet_ntop(AF_INET6, &in6->sin6_addr, buf, sizeof buf);
                assert_int_equal(ntohs(in6->sin6_port), port);
        }
        assert_string_equal(buf, ip);
}

static int parse_str(const char *s, struct proxy_header *h, const char **why)
{
        return proxy_parse((const uint8_t *) s, strlen(s), h, why);
}

static void test_v1_tcp4_and_following_bytes(void **state)
{
        struct proxy_header h;
        const char *why;
        const char hdr[] = "PROXY TCP4 192.0.2.7 127.0.0.1 51234 8884\r\n";
        char buf[128];
        (void) state;

        /* The ClientHello behind it is not part of the header. */
        snprintf(buf, sizeof buf, "%s\x16\x03\x01", hdr);
        assert_int_equal(parse_str(buf, &h, &why), (int) strlen(hdr));
        assert_int_equal(h.version, PROXY_V1);
        assert_false(h.local);
        assert_addr(&h.src, "192.0.2.7", 51234);
        assert_addr(&h.dst, "127.0.0.1", 8884);
        assert_int_equal(h.src_len, sizeof(struct sockaddr_in));
}

static void test_v1_tcp6_unknown(void **state)
{
        struct proxy_header h;
        const char *why;
        (void) state;

        assert_int_equal(parse_str("PROXY TCP6 2001:db8::7 ::1 65535 0\r\n", &h, &why), 36);
        assert_addr(&h.src, "2001:db8::7", 65535);
        assert_addr(&h.dst, "::1", 0);
        /* §2.1: UNKNOWN, and whatever follows it, means: use the real ones. */
        assert_int_equal(parse_str("PROXY UNKNOWN\r\n", &h, &why), 15);
        assert_true(h.local);
        assert_int_equal(parse_str("PROXY UNKNOWN ffff::1 ::1 1 2\r\n", &h, &why), 31);
        assert_true(h.local);
}

static void test_v1_incomplete(void **state)
{
        struct proxy_header h;
        const char *why;
        const char full[] = "PROXY TCP4 192.0.2.7 127.0.0.1 51234 8884\r\n";
        (void) state;

        /* Every proper prefix asks for more, none is mistaken for a header. */
        for (size_t n = 1; n < strlen(full); n++)
                assert_int_equal(proxy_parse((const uint8_t *) full, n, &h, &why), 0);
        assert_int_equal(proxy_parse((const uint8_t *) full, 0, &h, &why), 0);
}

static void test_v1_bad(void **state)
{
        static const char *const bad[] = {
                "PROXY TCP4 192.0.2.7 127.0.0.1 51234 8884\n",      /* LF without CR */
                "PROXY TCP4 192.0.2.7 127.0.0.1 51234 8884\rX",     /* CR without LF */
                "PROXY TCP4 2001:db8::7 127.0.0.1 1 2\r\n",         /* family mismatch */
                "PROXY TCP6 192.0.2.7 ::1 1 2\r\n",
                "PROXY TCP4 192.0.2.7 127.0.0.1 65536 2\r\n",       /* port range */
                "PROXY TCP4 192.0.2.7 127.0.0.1 -1 2\r\n",
                "PROXY TCP4 192.0.2.7 127.0.0.1 1\r\n",             /* too few fields */
                "PROXY TCP4 192.0.2.7 127.0.0.1 1 2 3\r\n",         /* too many */
                "PROXY TCP4  192.0.2.7 127.0.0.1 1 2\r\n",          /* double space */
                "PROXY UDP4 192.0.2.7 127.0.0.1 1 2\r\n",
                "PROXY tcp4 192.0.2.7 127.0.0.1 1 2\r\n",
                "PROXY TCP4 192.0.2.7 127.0.0.1 1 2\x01\r\n",       /* control byte */
                "PROXY \r\n",
                "\x16\x03\x01\x02\x00",                              /* TLS: no header */
                "GET / HTTP/1.1\r\n",
        };
        struct proxy_header h;
        const char *why;
        (void) state;

        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
                why = NULL;
                int r = parse_str(bad[i], &h, &why);
                if (r != -EBADMSG)
                        fail_msg("case %zu: got %d", i, r);
                assert_non_null(why);
        }
        /* No CRLF within 107 bytes. */
        char longer[200];
        memset(longer, 'A', sizeof longer);
        memcpy(longer, "PROXY UNKNOWN ", 14);
        assert_int_equal(proxy_parse((const uint8_t *) longer, sizeof longer, &h, &why), -EBADMSG);
        /* Exactly 107 with CRLF is allowed; 108 is not. */
        longer[105] = '\r';
        longer[106] = '\n';
        assert_int_equal(proxy_parse((const uint8_t *) longer, 107, &h, &why), 107);
        longer[105] = 'A';
        longer[106] = '\r';
        longer[107] = '\n';
        assert_int_equal(proxy_parse((const uint8_t *) longer, 108, &h, &why), -EBADMSG);
}

/* A v2 header: command, family/transport, body. */
static size_t v2(uint8_t *out, uint8_t ver_cmd, uint8_t fam, const uint8_t *body, size_t len)
{
        memcpy(out, SIG, 12);
        out[12] = ver_cmd;
        out[13] = fam;
        out[14] = (uint8_t) (len >> 8);
        out[15] = (uint8_t) len;
        if (len)
                memcpy(out + 16, body, len);
        return 16 + len;
}

static void test_v2_tcp4_tcp6(void **state)
{
        uint8_t buf[PROXY_HEADER_MAX + 64], body[64];
        struct proxy_header h;
        const char *why;
        size_t n;
        (void) state;

        /* TCP4: src, dst, sport, dport, all in network order. */
        inet_pton(AF_INET, "127.0.0.23", body);
        inet_pton(AF_INET, "127.0.0.1", body + 4);
        body[8] = 0xC8; body[9] = 0x00;  /* 51200 */
        body[10] = 0x22; body[11] = 0xB4; /* 8884 */
        n = v2(buf, 0x21, 0x11, body, 12);
        buf[n] = 0x16; /* the ClientHello that follows */
        assert_int_equal(proxy_parse(buf, n + 1, &h, &why), 28);
        assert_int_equal(h.version, PROXY_V2);
        assert_false(h.local);
        assert_addr(&h.src, "127.0.0.23", 51200);
        assert_addr(&h.dst, "127.0.0.1", 8884);
        /* Every proper prefix asks for more. */
        for (size_t i = 1; i < n; i++)
                assert_int_equal(proxy_parse(buf, i, &h, &why), 0);

        /* TCP6, with TLVs after the addresses (haproxy's unique-id, say). */
        inet_pton(AF_INET6, "2001:db8::23", body);
        inet_pton(AF_INET6, "::1", body + 16);
        body[32] = 0; body[33] = 80;
        body[34] = 0; body[35] = 81;
        body[36] = 0x05; body[37] = 0; body[38] = 3; body[39] = 'a'; body[40] = 'b'; body[41] = 'c';
        body[42] = 0x04; body[43] = 0; body[44] = 0; /* PP2_TYPE_NOOP, empty */
        n = v2(buf, 0x21, 0x21, body, 45);
        assert_int_equal(proxy_parse(buf, n, &h, &why), 61);
        assert_addr(&h.src, "2001:db8::23", 80);
        assert_addr(&h.dst, "::1", 81);
        /* A TLV that runs past the end. */
        body[44] = 1;
        n = v2(buf, 0x21, 0x21, body, 45);
        assert_int_equal(proxy_parse(buf, n, &h, &why), -EBADMSG);
}

static void test_v2_local_unspec_unix(void **state)
{
        uint8_t buf[PROXY_HEADER_MAX + 64], body[256] = { 0 };
        struct proxy_header h;
        const char *why;
        size_t n;
        (void) state;

        /* LOCAL: haproxy's health check; the block is ignored whatever it is. */
        n = v2(buf, 0x20, 0x00, NULL, 0);
        assert_int_equal(proxy_parse(buf, n, &h, &why), 16);
        assert_true(h.local);
        n = v2(buf, 0x20, 0x11, body, 5);
        assert_int_equal(proxy_parse(buf, n, &h, &why), 21);
        assert_true(h.local);
        /* PROXY with UNSPEC family: use the connection's addresses. */
        n = v2(buf, 0x21, 0x00, NULL, 0);
        assert_int_equal(proxy_parse(buf, n, &h, &why), 16);
        assert_true(h.local);
        /* AF_UNIX: no address the limits could count either. */
        n = v2(buf, 0x21, 0x31, body, 216);
        assert_int_equal(proxy_parse(buf, n, &h, &why), 232);
        assert_true(h.local);
}

static void test_v2_bad(void **state)
{
        uint8_t buf[PROXY_HEADER_MAX + 64], body[64] = { 0 };
        struct proxy_header h;
        const char *why;
        size_t n;
        (void) state;

        n = v2(buf, 0x11, 0x11, body, 12);            /* version 1 in a v2 header */
        assert_int_equal(proxy_parse(buf, n, &h, &why), -EBADMSG);
        assert_int_equal(proxy_parse(buf, 13, &h, &why), -EBADMSG); /* said as early as byte 13 */
        n = v2(buf, 0x22, 0x11, body, 12);            /* command 2 */
        assert_int_equal(proxy_parse(buf, n, &h, &why), -EBADMSG);
        n = v2(buf, 0x21, 0x41, body, 12);            /* family 4 */
        assert_int_equal(proxy_parse(buf, n, &h, &why), -EBADMSG);
        n = v2(buf, 0x21, 0x13, body, 12);            /* transport 3 */
        assert_int_equal(proxy_parse(buf, n, &h, &why), -EBADMSG);
        n = v2(buf, 0x21, 0x12, body, 12);            /* UDP */
        assert_int_equal(proxy_parse(buf, n, &h, &why), -EBADMSG);
        n = v2(buf, 0x21, 0x11, body, 11);            /* short address block */
        assert_int_equal(proxy_parse(buf, n, &h, &why), -EBADMSG);
        n = v2(buf, 0x21, 0x21, body, 35);
        assert_int_equal(proxy_parse(buf, n, &h, &why), -EBADMSG);
        /* Longer than the bound: refused from the fixed part alone. */
        v2(buf, 0x21, 0x11, body, 0);
        buf[14] = 0x02;
        buf[15] = 0x09; /* 521 + 16 = 537 */
        assert_int_equal(proxy_parse(buf, 16, &h, &why), -EMSGSIZE);
        buf[15] = 0x08; /* 536: allowed, so more is needed */
        assert_int_equal(proxy_parse(buf, 16, &h, &why), 0);
        /* A signature that breaks off. */
        memcpy(buf, SIG, 12);
        buf[11] = 'X';
        assert_int_equal(proxy_parse(buf, 12, &h, &why), -EBADMSG);
}

static void test_detect(void **state)
{
        (void) state;
        assert_int_equal(proxy_detect((const uint8_t *) "PROXY TCP4", 10), PROXY_V1);
        assert_int_equal(proxy_detect((const uint8_t *) "PRO", 3), PROXY_V1);
        assert_int_equal(proxy_detect(SIG, 12), PROXY_V2);
        assert_int_equal(proxy_detect(SIG, 1), PROXY_V2);
        assert_int_equal(proxy_detect((const uint8_t *) "\x16\x03\x01", 3), PROXY_NONE);
        assert_int_equal(proxy_detect((const uint8_t *) "PROXX", 5), PROXY_NONE);
        assert_int_equal(proxy_detect(NULL, 0), PROXY_NONE);
        assert_string_equal(proxy_version_to_string(PROXY_V2), "v2");
        assert_string_equal(proxy_version_to_string(PROXY_NONE), "off");
}

static struct sockaddr_storage sa(const char *ip)
{
        struct sockaddr_storage ss = { 0 };

        if (inet_pton(AF_INET, ip, &((struct sockaddr_in *) &ss)->sin_addr) == 1)
                ss.ss_family = AF_INET;
        else {
                assert_int_equal(inet_pton(AF_INET6, ip, &((struct sockaddr_in6 *) &ss)->sin6_addr), 1);
                ss.ss_family = AF_INET6;
        }
        return ss;
}

static void test_nets(void **state)
{
        struct proxy_net nets[4];
        const char *why;
        (void) state;

        assert_int_equal(proxy_net_parse("10.1.0.0/16", &nets[0], &why), 0);
        assert_int_equal(proxy_net_parse("127.0.0.1", &nets[1], &why), 0);
        assert_int_equal(nets[1].prefix, 32);
        assert_int_equal(proxy_net_parse("2001:db8:80::/41", &nets[2], &why), 0);
        assert_int_equal(proxy_net_parse("0.0.0.0/0", &nets[3], &why), 0);

        struct sockaddr_storage a = sa("10.1.255.3"), b = sa("10.2.0.1"), c = sa("127.0.0.1"),
                                d = sa("127.0.0.2"), e = sa("2001:db8:80::1"), f = sa("2001:db8:100::1"),
                                g = sa("::ffff:10.1.0.9"), h = sa("::1");
        const struct sockaddr *A = (void *) &a, *B = (void *) &b, *C = (void *) &c, *D = (void *) &d,
                              *E = (void *) &e, *F = (void *) &f, *G = (void *) &g, *H = (void *) &h;
        assert_true(proxy_net_match(nets, 3, A));
        assert_false(proxy_net_match(nets, 3, B));
        assert_true(proxy_net_match(nets, 3, C));
        assert_false(proxy_net_match(nets, 3, D));
        assert_true(proxy_net_match(nets, 3, E));
        assert_false(proxy_net_match(nets, 3, F));
        assert_true(proxy_net_match(nets, 3, G));     /* IPv4-mapped counts as IPv4 */
        assert_false(proxy_net_match(nets, 3, H));
        assert_true(proxy_net_match(nets, 4, B));     /* /0 is everyone (of IPv4) */
        assert_false(proxy_net_match(nets, 4, H));
        assert_false(proxy_net_match(nets, 0, C));
        assert_false(proxy_net_match(NULL, 0, C));

        static const char *const bad[] = { "10.1.0.1/16", "10.0.0.0/33", "::/129", "10.0.0.0/", "10.0.0.0/08",
                                           "localhost", "", "/8", "10.0.0.0/x", "10.0.0.0/8/8" };
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
                why = NULL;
                if (proxy_net_parse(bad[i], &nets[0], &why) != -EINVAL)
                        fail_msg("'%s' accepted", bad[i]);
                assert_non_null(why);
        }
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_v1_tcp4_and_following_bytes),
                cmocka_unit_test(test_v1_tcp6_unknown),
                cmocka_unit_test(test_v1_incomplete),
                cmocka_unit_test(test_v1_bad),
                cmocka_unit_test(test_v2_tcp4_tcp6),
                cmocka_unit_test(test_v2_local_unspec_unix),
                cmocka_unit_test(test_v2_bad),
                cmocka_unit_test(test_detect),
                cmocka_unit_test(test_nets),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
