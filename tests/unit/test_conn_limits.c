/* SPDX-License-Identifier: MIT */
/* conn_limits: the counts behind max_connections, max_handshakes and
 * max_connections_per_address (issue 12). */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "conn_limits.h"

static struct sockaddr_storage v4(const char *ip, uint16_t port)
{
        struct sockaddr_storage ss = { 0 };
        struct sockaddr_in *in = (struct sockaddr_in *) &ss;
        in->sin_family = AF_INET;
        in->sin_port = htons(port);
        assert_int_equal(inet_pton(AF_INET, ip, &in->sin_addr), 1);
        return ss;
}

static struct sockaddr_storage v6(const char *ip, uint16_t port)
{
        struct sockaddr_storage ss = { 0 };
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *) &ss;
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(port);
        assert_int_equal(inet_pton(AF_INET6, ip, &in6->sin6_addr), 1);
        return ss;
}

#define SA(x) ((const struct sockaddr *) &(x))

static void test_per_address_cap_ignores_port_and_other_addresses(void **state)
{
        struct conn_limits *cl;
        struct conn_limits_config c = { .max_per_address = 3 };
        struct sockaddr_storage a = v4("127.0.0.3", 1000), a2 = v4("127.0.0.3", 2000),
                                b = v4("127.0.0.2", 1000);
        (void) state;

        assert_int_equal(conn_limits_new(42, &cl), 0);
        for (int fd = 10; fd < 13; fd++) {
                assert_int_equal(conn_limits_check(cl, &c, SA(a)), CONN_ADMIT);
                assert_int_equal(conn_limits_add(cl, fd, SA(a)), 0);
        }
        assert_int_equal(conn_limits_from(cl, SA(a2)), 3);
        assert_int_equal(conn_limits_check(cl, &c, SA(a2)), CONN_REFUSE_PER_ADDRESS);
        assert_string_equal(conn_verdict_to_string(CONN_REFUSE_PER_ADDRESS), "max_connections_per_address");
        assert_int_equal(conn_limits_check(cl, &c, SA(b)), CONN_ADMIT);
        /* Closing one frees a slot for that address. */
        conn_limits_remove(cl, 11);
        assert_int_equal(conn_limits_check(cl, &c, SA(a)), CONN_ADMIT);
        assert_int_equal(conn_limits_connections(cl), 2);
        conn_limits_free(cl);
}

static void test_handshakes_counted_until_done_or_closed(void **state)
{
        struct conn_limits *cl;
        struct conn_limits_config c = { .max_handshakes = 2, .max_connections = 3 };
        struct sockaddr_storage a = v4("192.0.2.1", 1);
        (void) state;

        assert_int_equal(conn_limits_new(1, &cl), 0);
        assert_int_equal(conn_limits_add(cl, 5, SA(a)), 0);
        assert_int_equal(conn_limits_add(cl, 6, SA(a)), 0);
        assert_int_equal(conn_limits_handshakes(cl), 2);
        assert_int_equal(conn_limits_check(cl, &c, SA(a)), CONN_REFUSE_MAX_HANDSHAKES);
        conn_limits_handshake_done(cl, 5);
        conn_limits_handshake_done(cl, 5); /* idempotent */
        assert_int_equal(conn_limits_handshakes(cl), 1);
        assert_int_equal(conn_limits_check(cl, &c, SA(a)), CONN_ADMIT);
        assert_int_equal(conn_limits_add(cl, 7, SA(a)), 0);
        /* Three open: max_connections now, whatever the handshakes. */
        conn_limits_handshake_done(cl, 6);
        conn_limits_handshake_done(cl, 7);
        assert_int_equal(conn_limits_handshakes(cl), 0);
        assert_int_equal(conn_limits_check(cl, &c, SA(a)), CONN_REFUSE_MAX_CONNECTIONS);
        /* A close during the handshake gives both counts back. */
        conn_limits_remove(cl, 7);
        assert_int_equal(conn_limits_add(cl, 7, SA(a)), 0);
        conn_limits_remove(cl, 7);
        conn_limits_remove(cl, 7); /* idempotent */
        assert_int_equal(conn_limits_handshakes(cl), 0);
        assert_int_equal(conn_limits_connections(cl), 2);
        conn_limits_free(cl);
}

static void test_zero_is_unlimited_and_bad_input(void **state)
{
        struct conn_limits *cl;
        struct conn_limits_config c = { 0 };
        struct sockaddr_storage a = v6("2001:db8::1", 1), b = v6("2001:db8::2", 1);
        struct sockaddr_storage unix_sa = { .ss_family = AF_UNIX };
        (void) state;

        assert_int_equal(conn_limits_new(7, &cl), 0);
        for (int fd = 0; fd < 1000; fd++)
                assert_int_equal(conn_limits_add(cl, fd, SA(a)), 0);
        assert_int_equal(conn_limits_check(cl, &c, SA(a)), CONN_ADMIT);
        assert_int_equal(conn_limits_from(cl, SA(a)), 1000);
        assert_int_equal(conn_limits_from(cl, SA(b)), 0);
        assert_int_equal(conn_limits_add(cl, 3, SA(b)), -EEXIST);
        assert_int_equal(conn_limits_add(cl, -1, SA(b)), -EINVAL);
        assert_int_equal(conn_limits_add(cl, 5000, SA(unix_sa)), -EAFNOSUPPORT);
        conn_limits_remove(cl, 99999);          /* unknown: ignored */
        conn_limits_handshake_done(cl, -3);
        conn_limits_handshake_done(NULL, 3);    /* NULL-safe */
        conn_limits_remove(NULL, 3);
        assert_int_equal(conn_limits_add(NULL, 3, SA(a)), 0);
        assert_int_equal(conn_limits_check(NULL, &c, SA(a)), CONN_ADMIT);
        for (int fd = 0; fd < 1000; fd++)
                conn_limits_remove(cl, fd);
        assert_int_equal(conn_limits_connections(cl), 0);
        assert_int_equal(conn_limits_from(cl, SA(a)), 0);
        conn_limits_free(cl);
        conn_limits_free(NULL);
}

/* Many distinct addresses: the table grows and every count stays right. */
static void test_many_addresses(void **state)
{
        struct conn_limits *cl;
        struct conn_limits_config c = { .max_per_address = 2 };
        (void) state;

        assert_int_equal(conn_limits_new(0xdeadbeef, &cl), 0);
        for (int i = 0; i < 5000; i++) {
                struct sockaddr_storage ss = { 0 };
                struct sockaddr_in *in = (struct sockaddr_in *) &ss;
                in->sin_family = AF_INET;
                in->sin_addr.s_addr = htonl(0x0a000000u + (uint32_t) (i / 2));
                assert_int_equal(conn_limits_add(cl, i, SA(ss)), 0);
        }
        for (int i = 0; i < 2500; i++) {
                struct sockaddr_storage ss = { 0 };
                struct sockaddr_in *in = (struct sockaddr_in *) &ss;
                in->sin_family = AF_INET;
                in->sin_addr.s_addr = htonl(0x0a000000u + (uint32_t) i);
                assert_int_equal(conn_limits_from(cl, SA(ss)), 2);
                assert_int_equal(conn_limits_check(cl, &c, SA(ss)), CONN_REFUSE_PER_ADDRESS);
        }
        /* IPv4 10.0.0.1 and an IPv6 address with the same first bytes are
         * different addresses. */
        struct sockaddr_storage six = v6("a00:1::", 1);
        assert_int_equal(conn_limits_from(cl, SA(six)), 0);
        for (int i = 0; i < 5000; i += 2)
                conn_limits_remove(cl, i);
        assert_int_equal(conn_limits_connections(cl), 2500);
        conn_limits_free(cl); /* frees what is left */
}

/* Behind a balancer (PROXY protocol): a connection counted under the
 * balancer's address moves to the device's, keeping its handshake state. */
static void test_readdress(void **state)
{
        struct conn_limits *cl;
        struct sockaddr_storage lb = v4("127.0.0.1", 40000), dev = v4("127.0.0.23", 1000),
                                dev6 = v6("2001:db8::1", 1);
        (void) state;

        assert_int_equal(conn_limits_new(7, &cl), 0);
        assert_int_equal(conn_limits_add(cl, 5, SA(lb)), 0);
        assert_int_equal(conn_limits_add(cl, 6, SA(lb)), 0);
        conn_limits_handshake_done(cl, 6);
        assert_int_equal(conn_limits_readdress(cl, 5, SA(dev)), 0);
        assert_int_equal(conn_limits_readdress(cl, 6, SA(dev6)), 0);
        assert_int_equal(conn_limits_from(cl, SA(lb)), 0);
        assert_int_equal(conn_limits_from(cl, SA(dev)), 1);
        assert_int_equal(conn_limits_from(cl, SA(dev6)), 1);
        assert_int_equal(conn_limits_connections(cl), 2);
        assert_int_equal(conn_limits_handshakes(cl), 1);  /* 5 still, 6 done */
        assert_int_equal(conn_limits_readdress(cl, 9, SA(dev)), -ENOENT);
        conn_limits_remove(cl, 5);
        conn_limits_remove(cl, 6);
        assert_int_equal(conn_limits_connections(cl), 0);
        assert_int_equal(conn_limits_handshakes(cl), 0);
        assert_int_equal(conn_limits_from(cl, SA(dev)), 0);
        assert_int_equal(conn_limits_readdress(NULL, 5, SA(dev)), 0);
        conn_limits_free(cl);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_readdress),
                cmocka_unit_test(test_per_address_cap_ignores_port_and_other_addresses),
                cmocka_unit_test(test_handshakes_counted_until_done_or_closed),
                cmocka_unit_test(test_zero_is_unlimited_and_bad_input),
                cmocka_unit_test(test_many_addresses),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
