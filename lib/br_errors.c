/* SPDX-License-Identifier: MIT */
/*
 * br_errors — BearSSL error names and texts (see br_errors.h). One table
 * for the firmware, edge-device and the doctor.
 */
#include "br_errors.h"

#include <stdint.h>
#include <string.h>

/* The ESP8266 core ships BearSSL's headers in tools/sdk/include/bearssl/. */
#if defined(ARDUINO_ARCH_ESP8266)
#include <bearssl/bearssl.h>
#else
#include <bearssl.h>
#endif

/* On the ESP8266 .rodata sits in RAM; PROGMEM puts the table in flash,
 * where only aligned 32-bit loads work: strings are copied out with
 * strncpy_P, and the entries (int + two pointers) are read as words. */
#if defined(ARDUINO_ARCH_ESP8266)
#include <sys/pgmspace.h>
#define BR_FLASH PROGMEM
#define br_copy(dst, src, n) strncpy_P((dst), (src), (n))
#else
#define BR_FLASH
#define br_copy(dst, src, n) strncpy((dst), (src), (n))
#endif

struct br_error_entry {
        int32_t code;
        const char *name;
        const char *text;
};

/* Each name and text is its own flash object (a PROGMEM array cannot hold
 * pointers to string literals that would themselves land in RAM). */
#define S(id, n, t)                                                                                                    \
        static const char name_##id[] BR_FLASH = #n;                                                                   \
        static const char text_##id[] BR_FLASH = t;
#define BR_ERROR_LIST(X)                                                                                               \
        X(1, BR_ERR_BAD_PARAM, "caller-provided parameter is incorrect")                                              \
        X(2, BR_ERR_BAD_STATE, "operation not possible in the current state")                                         \
        X(3, BR_ERR_UNSUPPORTED_VERSION, "incoming protocol or record version is unsupported")                        \
        X(4, BR_ERR_BAD_VERSION, "incoming record version does not match the expected version")                       \
        X(5, BR_ERR_BAD_LENGTH, "incoming record length is invalid")                                                  \
        X(6, BR_ERR_TOO_LARGE, "incoming record is too large for the buffer")                                         \
        X(7, BR_ERR_BAD_MAC, "record MAC or padding is wrong")                                                        \
        X(8, BR_ERR_NO_RANDOM, "no entropy available")                                                                \
        X(9, BR_ERR_UNKNOWN_TYPE, "incoming record type is unknown")                                                  \
        X(10, BR_ERR_UNEXPECTED, "unexpected record or message")                                                      \
        X(12, BR_ERR_BAD_CCS, "invalid ChangeCipherSpec")                                                             \
        X(13, BR_ERR_BAD_ALERT, "invalid alert message")                                                              \
        X(14, BR_ERR_BAD_HANDSHAKE, "handshake message decoding failed")                                              \
        X(15, BR_ERR_OVERSIZED_ID, "session ID larger than 32 bytes")                                                 \
        X(16, BR_ERR_BAD_CIPHER_SUITE, "server chose a cipher suite the client did not offer")                        \
        X(17, BR_ERR_BAD_COMPRESSION, "server chose a compression the client did not offer")                          \
        X(18, BR_ERR_BAD_FRAGLEN, "server's max fragment length does not match the client's")                         \
        X(19, BR_ERR_BAD_SECRENEG, "secure renegotiation failed")                                                     \
        X(20, BR_ERR_EXTRA_EXTENSION, "server sent an extension the client did not ask for")                          \
        X(21, BR_ERR_BAD_SNI, "invalid Server Name Indication")                                                       \
        X(22, BR_ERR_BAD_HELLO_DONE, "invalid ServerHelloDone")                                                       \
        X(23, BR_ERR_LIMIT_EXCEEDED, "internal limit exceeded (e.g. server key too large)")                           \
        X(24, BR_ERR_BAD_FINISHED, "Finished message does not match")                                                 \
        X(25, BR_ERR_RESUME_MISMATCH, "session resumption with a different version or suite")                         \
        X(26, BR_ERR_INVALID_ALGORITHM, "unsupported or invalid algorithm")                                           \
        X(27, BR_ERR_BAD_SIGNATURE, "invalid signature in ServerKeyExchange or CertificateVerify")                    \
        X(28, BR_ERR_WRONG_KEY_USAGE, "the server's key may not be used for the chosen key exchange")                 \
        X(29, BR_ERR_NO_CLIENT_AUTH, "client certificate missing or not validated")                                   \
        X(31, BR_ERR_IO, "I/O error or connection closed by the peer")                                                \
        X(33, BR_ERR_X509_INVALID_VALUE, "invalid value in an ASN.1 structure")                                       \
        X(34, BR_ERR_X509_TRUNCATED, "truncated certificate")                                                         \
        X(35, BR_ERR_X509_EMPTY_CHAIN, "empty certificate chain")                                                     \
        X(36, BR_ERR_X509_INNER_TRUNC, "inner element extends beyond outer element")                                  \
        X(37, BR_ERR_X509_BAD_TAG_CLASS, "unsupported ASN.1 tag class")                                               \
        X(38, BR_ERR_X509_BAD_TAG_VALUE, "unsupported ASN.1 tag value")                                               \
        X(39, BR_ERR_X509_INDEFINITE_LENGTH, "indefinite ASN.1 length")                                               \
        X(40, BR_ERR_X509_EXTRA_ELEMENT, "extraneous ASN.1 element")                                                  \
        X(41, BR_ERR_X509_UNEXPECTED, "unexpected ASN.1 element")                                                     \
        X(42, BR_ERR_X509_NOT_CONSTRUCTED, "expected a constructed ASN.1 element")                                    \
        X(43, BR_ERR_X509_NOT_PRIMITIVE, "expected a primitive ASN.1 element")                                        \
        X(44, BR_ERR_X509_PARTIAL_BYTE, "BIT STRING length is not a multiple of 8")                                   \
        X(45, BR_ERR_X509_BAD_BOOLEAN, "invalid BOOLEAN")                                                             \
        X(46, BR_ERR_X509_OVERFLOW, "value out of range")                                                             \
        X(47, BR_ERR_X509_BAD_DN, "invalid distinguished name")                                                       \
        X(48, BR_ERR_X509_BAD_TIME, "invalid date/time")                                                              \
        X(49, BR_ERR_X509_UNSUPPORTED, "certificate uses an unsupported feature")                                     \
        X(50, BR_ERR_X509_LIMIT_EXCEEDED, "key or signature size exceeds BearSSL's limits")                           \
        X(51, BR_ERR_X509_WRONG_KEY_TYPE, "key type does not match the expected one")                                 \
        X(52, BR_ERR_X509_BAD_SIGNATURE, "certificate signature is invalid")                                          \
        X(53, BR_ERR_X509_TIME_UNKNOWN, "validation time is unknown")                                                 \
        X(54, BR_ERR_X509_EXPIRED, "certificate is expired or not yet valid")                                         \
        X(55, BR_ERR_X509_DN_MISMATCH, "issuer/subject DN mismatch in the chain")                                     \
        X(56, BR_ERR_X509_BAD_SERVER_NAME, "expected server name was not found in the chain")                         \
        X(57, BR_ERR_X509_CRITICAL_EXTENSION, "unknown critical extension")                                           \
        X(58, BR_ERR_X509_NOT_CA, "not a CA, or path length constraint violated")                                     \
        X(59, BR_ERR_X509_FORBIDDEN_KEY_USAGE, "key usage extension forbids this use")                                \
        X(60, BR_ERR_X509_WEAK_PUBLIC_KEY, "public key too small")                                                    \
        X(62, BR_ERR_X509_NOT_TRUSTED, "chain could not be linked to a trust anchor")

BR_ERROR_LIST(S)
#undef S

/* The id in the list is the code itself; checked at compile time. */
#define E(id, n, t) { n, name_##id, text_##id },
static const struct br_error_entry table[] BR_FLASH = { BR_ERROR_LIST(E) };
#undef E
#define A(id, n, t) _Static_assert(n == id, #n " changed value");
BR_ERROR_LIST(A)
#undef A

struct br_alert_entry {
        int32_t alert;
        const char *name;
};

/* TLS AlertDescription values (RFC 5246 §7.2; 112 RFC 6066 §3; 116 RFC
 * 8446 §6.2) that a server plausibly sends a device. */
#define ALERT_LIST(X)                                                                                                  \
        X(0, close_notify)                                                                                             \
        X(10, unexpected_message)                                                                                      \
        X(20, bad_record_mac)                                                                                          \
        X(22, record_overflow)                                                                                         \
        X(40, handshake_failure)                                                                                       \
        X(42, bad_certificate)                                                                                         \
        X(43, unsupported_certificate)                                                                                 \
        X(44, certificate_revoked)                                                                                     \
        X(45, certificate_expired)                                                                                     \
        X(46, certificate_unknown)                                                                                     \
        X(47, illegal_parameter)                                                                                       \
        X(48, unknown_ca)                                                                                              \
        X(49, access_denied)                                                                                           \
        X(50, decode_error)                                                                                            \
        X(51, decrypt_error)                                                                                           \
        X(70, protocol_version)                                                                                        \
        X(71, insufficient_security)                                                                                   \
        X(80, internal_error)                                                                                          \
        X(90, user_canceled)                                                                                           \
        X(100, no_renegotiation)                                                                                       \
        X(110, unsupported_extension)                                                                                  \
        X(112, unrecognized_name)                                                                                      \
        X(116, certificate_required)

#define S(n, name) static const char alert_##n[] BR_FLASH = #name;
ALERT_LIST(S)
#undef S
#define E(n, name) { n, alert_##n },
static const struct br_alert_entry alerts[] BR_FLASH = { ALERT_LIST(E) };
#undef E

#define ELEMENTS(x) (sizeof(x) / sizeof((x)[0]))

/* Tiny appender: no snprintf on the device side. pos counts what fits. */
struct out {
        char *buf;
        size_t len, pos;
};

static void out_ram(struct out *o, const char *s)
{
        while (*s && o->pos + 1 < o->len)
                o->buf[o->pos++] = *s++;
        if (o->len)
                o->buf[o->pos] = '\0';
}

static void out_flash(struct out *o, const char *s)
{
        if (o->pos + 1 >= o->len)
                return;
        br_copy(o->buf + o->pos, s, o->len - o->pos - 1);
        o->buf[o->len - 1] = '\0';
        o->pos += strlen(o->buf + o->pos);
}

static void out_int(struct out *o, int v)
{
        char d[12];
        size_t n = 0;
        unsigned u = v < 0 ? 0u - (unsigned)v : (unsigned)v;

        do {
                d[n++] = (char)('0' + u % 10);
                u /= 10;
        } while (u && n < sizeof(d));
        if (v < 0)
                out_ram(o, "-");
        while (n) {
                char c[2] = { d[--n], '\0' };

                out_ram(o, c);
        }
}

static const struct br_error_entry *lookup(int code)
{
        for (size_t i = 0; i < ELEMENTS(table); i++)
                if (table[i].code == code)
                        return &table[i];
        return NULL;
}

/* 1 for an alert the peer sent, 2 for one we sent, 0 otherwise. */
static int alert_kind(int code, int *alert)
{
        if (code >= BR_ERR_SEND_FATAL_ALERT && code < BR_ERR_SEND_FATAL_ALERT + 256) {
                *alert = code - BR_ERR_SEND_FATAL_ALERT;
                return 2;
        }
        if (code >= BR_ERR_RECV_FATAL_ALERT && code < BR_ERR_RECV_FATAL_ALERT + 256) {
                *alert = code - BR_ERR_RECV_FATAL_ALERT;
                return 1;
        }
        return 0;
}

bool br_error_is_ok(int code)
{
        return code == BR_ERR_OK || code == BR_ERR_X509_OK;
}

const char *br_alert_name(int alert, char *buf, size_t len)
{
        struct out o = { buf, len, 0 };

        if (len)
                buf[0] = '\0';
        for (size_t i = 0; i < ELEMENTS(alerts); i++)
                if (alerts[i].alert == alert) {
                        out_flash(&o, alerts[i].name);
                        return buf;
                }
        out_ram(&o, "alert_");
        out_int(&o, alert);
        return buf;
}

const char *br_error_name(int code, char *buf, size_t len)
{
        struct out o = { buf, len, 0 };
        const struct br_error_entry *e;
        int alert, kind;

        if (len)
                buf[0] = '\0';
        if (br_error_is_ok(code)) {
                out_ram(&o, "OK");
                return buf;
        }
        e = lookup(code);
        if (e) {
                out_flash(&o, e->name);
                return buf;
        }
        kind = alert_kind(code, &alert);
        out_ram(&o, kind == 1 ? "BR_ERR_RECV_FATAL_ALERT+" : kind == 2 ? "BR_ERR_SEND_FATAL_ALERT+" : "BR_ERR_UNKNOWN_");
        out_int(&o, kind ? alert : code);
        return buf;
}

const char *br_error_text(int code, char *buf, size_t len)
{
        struct out o = { buf, len, 0 };
        const struct br_error_entry *e;
        char an[32];
        int alert, kind;

        if (len)
                buf[0] = '\0';
        if (br_error_is_ok(code)) {
                out_ram(&o, "the chain validated");
                return buf;
        }
        e = lookup(code);
        if (e) {
                out_flash(&o, e->text);
                return buf;
        }
        kind = alert_kind(code, &alert);
        if (!kind) {
                out_ram(&o, "unknown error code");
                return buf;
        }
        out_ram(&o, kind == 1 ? "the peer sent a fatal alert (" : "we sent a fatal alert (");
        out_ram(&o, br_alert_name(alert, an, sizeof(an)));
        out_ram(&o, ")");
        return buf;
}

/* Compares a RAM string with a literal prefix (the core's messages are
 * formatted into RAM by snprintf, so plain strncmp works). */
static bool has_prefix(const char *s, const char *prefix)
{
        return strncmp(s, prefix, strlen(prefix)) == 0;
}

int br_error_from_esp8266(int err, const char *msg)
{
        if (!msg || err < 0 || err >= 256)
                return err;
        /* WiFiClientSecureCtx::getLastSSLError(), core 3.1.x and 3.2.0-dev. */
        if (has_prefix(msg, "SSL received fatal alert"))
                return BR_ERR_RECV_FATAL_ALERT + err;
        if (has_prefix(msg, "SSL sent fatal alert"))
                return BR_ERR_SEND_FATAL_ALERT + err;
        return err;
}
