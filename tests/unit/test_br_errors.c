/* SPDX-License-Identifier: MIT */
/* Unit tests for lib/br_errors: the one BearSSL error table. */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include <bearssl.h>

#include "br_errors.h"

static const char *name(int code)
{
        static char buf[BR_ERROR_NAME_MAX];

        return br_error_name(code, buf, sizeof(buf));
}

static const char *text(int code)
{
        static char buf[BR_ERROR_TEXT_MAX];

        return br_error_text(code, buf, sizeof(buf));
}

static void test_names(void **state)
{
        (void) state;
        assert_string_equal(name(0), "OK");
        assert_string_equal(name(BR_ERR_X509_OK), "OK");
        assert_string_equal(name(56), "BR_ERR_X509_BAD_SERVER_NAME");
        assert_string_equal(name(BR_ERR_X509_NOT_TRUSTED), "BR_ERR_X509_NOT_TRUSTED");
        assert_string_equal(name(BR_ERR_IO), "BR_ERR_IO");
        assert_string_equal(name(49), "BR_ERR_X509_UNSUPPORTED");
        assert_string_equal(name(BR_ERR_RECV_FATAL_ALERT + 48), "BR_ERR_RECV_FATAL_ALERT+48");
        assert_string_equal(name(BR_ERR_SEND_FATAL_ALERT + 40), "BR_ERR_SEND_FATAL_ALERT+40");
        assert_string_equal(name(11), "BR_ERR_UNKNOWN_11");
        assert_string_equal(name(-1000), "BR_ERR_UNKNOWN_-1000");
        assert_true(br_error_is_ok(0));
        assert_true(br_error_is_ok(BR_ERR_X509_OK));
        assert_false(br_error_is_ok(56));
}

static void test_texts(void **state)
{
        (void) state;
        assert_string_equal(text(56), "expected server name was not found in the chain");
        assert_string_equal(text(BR_ERR_RECV_FATAL_ALERT + 48), "the peer sent a fatal alert (unknown_ca)");
        assert_string_equal(text(BR_ERR_SEND_FATAL_ALERT + 116), "we sent a fatal alert (certificate_required)");
        assert_string_equal(text(BR_ERR_RECV_FATAL_ALERT + 7), "the peer sent a fatal alert (alert_7)");
        assert_string_equal(text(999), "unknown error code");
}

static void test_truncation(void **state)
{
        char buf[8];

        (void) state;
        memset(buf, 'x', sizeof(buf));
        assert_string_equal(br_error_name(56, buf, sizeof(buf)), "BR_ERR_");
        memset(buf, 'x', sizeof(buf));
        assert_string_equal(br_error_name(BR_ERR_RECV_FATAL_ALERT + 48, buf, 3), "BR");
        assert_string_equal(br_error_name(11, buf, 1), "");
        /* len 0 writes nothing */
        buf[0] = 'q';
        br_error_name(56, buf, 0);
        assert_int_equal(buf[0], 'q');
}

/* The ESP8266 core's getLastSSLError() returns the alert without its bit
 * and says which one in the message (WiFiClientSecureBearSSL.cpp). */
static void test_from_esp8266(void **state)
{
        (void) state;
        assert_int_equal(br_error_from_esp8266(48, "SSL received fatal alert - Unknown error code."),
                         BR_ERR_RECV_FATAL_ALERT + 48);
        assert_int_equal(br_error_from_esp8266(49, "SSL received fatal alert - Certificate is unsupported."),
                         BR_ERR_RECV_FATAL_ALERT + 49);
        assert_int_equal(br_error_from_esp8266(40, "SSL sent fatal alert - Unknown error code."),
                         BR_ERR_SEND_FATAL_ALERT + 40);
        assert_int_equal(br_error_from_esp8266(56, "Expected server name was not found in the chain."), 56);
        assert_int_equal(br_error_from_esp8266(-1000, "Unable to allocate memory for SSL structures and buffers."),
                         -1000);
        assert_int_equal(br_error_from_esp8266(49, NULL), 49);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_names),
                cmocka_unit_test(test_texts),
                cmocka_unit_test(test_truncation),
                cmocka_unit_test(test_from_esp8266),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
