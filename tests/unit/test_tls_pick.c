/* SPDX-License-Identifier: MIT */
/* tls_server_pick_cert: which listener certificate serves an SNI name. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "tls_server.h"

static char *n_ip[] = { "192.168.0.52" };
static char *n_host[] = { "raspberry" };
static char *n_san[] = { "raspberry.local", "edge.lan" };

static struct tls_server_cert v[] = {
        { .cn = "192.168.0.52", .names = n_ip, .n_names = 1 },
        { .cn = "raspberry", .names = n_host, .n_names = 1 },
        { .cn = "ignored-with-a-san", .names = n_san, .n_names = 2 },
};

static void test_pick(void **state)
{
        struct tls_server_certs cs = { .v = v, .n = 3, .default_index = 1 };

        (void) state;
        /* BearSSL sends the IP it dials as SNI (RFC 6066 §3 says not to) */
        assert_int_equal(tls_server_pick_cert(&cs, "192.168.0.52"), 0);
        assert_int_equal(tls_server_pick_cert(&cs, "raspberry"), 1);
        /* DNS names compare without case */
        assert_int_equal(tls_server_pick_cert(&cs, "RaspBerry"), 1);
        /* a certificate with a SAN serves its dNSNames, never its CN
         * (BearSSL ignores the CN once a SAN exists) */
        assert_int_equal(tls_server_pick_cert(&cs, "edge.lan"), 2);
        assert_int_equal(tls_server_pick_cert(&cs, "raspberry.local"), 2);
        assert_int_equal(tls_server_pick_cert(&cs, "ignored-with-a-san"), 1);
        /* no SNI, or a name nothing is for: the default */
        assert_int_equal(tls_server_pick_cert(&cs, NULL), 1);
        assert_int_equal(tls_server_pick_cert(&cs, ""), 1);
        assert_int_equal(tls_server_pick_cert(&cs, "192.168.0.5"), 1);
        assert_int_equal(tls_server_pick_cert(&cs, "raspberry.local."), 1);
        cs.default_index = 0;
        assert_int_equal(tls_server_pick_cert(&cs, "other"), 0);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_pick),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
