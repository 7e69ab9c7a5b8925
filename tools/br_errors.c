/* SPDX-License-Identifier: MIT */
#include "br_errors.h"

#include <stdio.h>

#include <bearssl.h>

#include "tool_common.h"

struct br_error_entry {
        int code;
        const char *name;
        const char *text;
};

#define E(n, t) { n, #n, t }
static const struct br_error_entry table[] = {
        E(BR_ERR_BAD_PARAM, "caller-provided parameter is incorrect"),
        E(BR_ERR_BAD_STATE, "operation not possible in the current state"),
        E(BR_ERR_UNSUPPORTED_VERSION, "incoming protocol or record version is unsupported"),
        E(BR_ERR_BAD_VERSION, "incoming record version does not match the expected version"),
        E(BR_ERR_BAD_LENGTH, "incoming record length is invalid"),
        E(BR_ERR_TOO_LARGE, "incoming record is too large for the buffer"),
        E(BR_ERR_BAD_MAC, "record MAC or padding is wrong"),
        E(BR_ERR_NO_RANDOM, "no entropy available"),
        E(BR_ERR_UNKNOWN_TYPE, "incoming record type is unknown"),
        E(BR_ERR_UNEXPECTED, "unexpected record or message"),
        E(BR_ERR_BAD_CCS, "invalid ChangeCipherSpec"),
        E(BR_ERR_BAD_ALERT, "invalid alert message"),
        E(BR_ERR_BAD_HANDSHAKE, "handshake message decoding failed"),
        E(BR_ERR_OVERSIZED_ID, "session ID larger than 32 bytes"),
        E(BR_ERR_BAD_CIPHER_SUITE, "server chose a cipher suite the client did not offer"),
        E(BR_ERR_BAD_COMPRESSION, "server chose a compression the client did not offer"),
        E(BR_ERR_BAD_FRAGLEN, "server's max fragment length does not match the client's"),
        E(BR_ERR_BAD_SECRENEG, "secure renegotiation failed"),
        E(BR_ERR_EXTRA_EXTENSION, "server sent an extension the client did not ask for"),
        E(BR_ERR_BAD_SNI, "invalid Server Name Indication"),
        E(BR_ERR_BAD_HELLO_DONE, "invalid ServerHelloDone"),
        E(BR_ERR_LIMIT_EXCEEDED, "internal limit exceeded (e.g. server key too large)"),
        E(BR_ERR_BAD_FINISHED, "Finished message does not match"),
        E(BR_ERR_RESUME_MISMATCH, "session resumption with a different version or suite"),
        E(BR_ERR_INVALID_ALGORITHM, "unsupported or invalid algorithm"),
        E(BR_ERR_BAD_SIGNATURE, "invalid signature in ServerKeyExchange or CertificateVerify"),
        E(BR_ERR_WRONG_KEY_USAGE, "the server's key may not be used for the chosen key exchange"),
        E(BR_ERR_NO_CLIENT_AUTH, "client certificate missing or not validated"),
        E(BR_ERR_IO, "I/O error or connection closed by the peer"),
        E(BR_ERR_X509_INVALID_VALUE, "invalid value in an ASN.1 structure"),
        E(BR_ERR_X509_TRUNCATED, "truncated certificate"),
        E(BR_ERR_X509_EMPTY_CHAIN, "empty certificate chain"),
        E(BR_ERR_X509_INNER_TRUNC, "inner element extends beyond outer element"),
        E(BR_ERR_X509_BAD_TAG_CLASS, "unsupported ASN.1 tag class"),
        E(BR_ERR_X509_BAD_TAG_VALUE, "unsupported ASN.1 tag value"),
        E(BR_ERR_X509_INDEFINITE_LENGTH, "indefinite ASN.1 length"),
        E(BR_ERR_X509_EXTRA_ELEMENT, "extraneous ASN.1 element"),
        E(BR_ERR_X509_UNEXPECTED, "unexpected ASN.1 element"),
        E(BR_ERR_X509_NOT_CONSTRUCTED, "expected a constructed ASN.1 element"),
        E(BR_ERR_X509_NOT_PRIMITIVE, "expected a primitive ASN.1 element"),
        E(BR_ERR_X509_PARTIAL_BYTE, "BIT STRING length is not a multiple of 8"),
        E(BR_ERR_X509_BAD_BOOLEAN, "invalid BOOLEAN"),
        E(BR_ERR_X509_OVERFLOW, "value out of range"),
        E(BR_ERR_X509_BAD_DN, "invalid distinguished name"),
        E(BR_ERR_X509_BAD_TIME, "invalid date/time"),
        E(BR_ERR_X509_UNSUPPORTED, "certificate uses an unsupported feature"),
        E(BR_ERR_X509_LIMIT_EXCEEDED, "key or signature size exceeds BearSSL's limits"),
        E(BR_ERR_X509_WRONG_KEY_TYPE, "key type does not match the expected one"),
        E(BR_ERR_X509_BAD_SIGNATURE, "certificate signature is invalid"),
        E(BR_ERR_X509_TIME_UNKNOWN, "validation time is unknown"),
        E(BR_ERR_X509_EXPIRED, "certificate is expired or not yet valid"),
        E(BR_ERR_X509_DN_MISMATCH, "issuer/subject DN mismatch in the chain"),
        E(BR_ERR_X509_BAD_SERVER_NAME, "expected server name was not found in the chain"),
        E(BR_ERR_X509_CRITICAL_EXTENSION, "unknown critical extension"),
        E(BR_ERR_X509_NOT_CA, "not a CA, or path length constraint violated"),
        E(BR_ERR_X509_FORBIDDEN_KEY_USAGE, "key usage extension forbids this use"),
        E(BR_ERR_X509_WEAK_PUBLIC_KEY, "public key too small"),
        E(BR_ERR_X509_NOT_TRUSTED, "chain could not be linked to a trust anchor"),
};
#undef E

/* TLS alert descriptions (RFC 5246 §7.2) that a server plausibly sends. */
static const char *alert_name(int a) {
        switch (a) {
        case 0: return "close_notify";
        case 10: return "unexpected_message";
        case 20: return "bad_record_mac";
        case 22: return "record_overflow";
        case 40: return "handshake_failure";
        case 42: return "bad_certificate";
        case 43: return "unsupported_certificate";
        case 44: return "certificate_revoked";
        case 45: return "certificate_expired";
        case 46: return "certificate_unknown";
        case 47: return "illegal_parameter";
        case 48: return "unknown_ca";
        case 49: return "access_denied";
        case 50: return "decode_error";
        case 51: return "decrypt_error";
        case 70: return "protocol_version";
        case 71: return "insufficient_security";
        case 80: return "internal_error";
        case 112: return "unrecognized_name";
        case 116: return "certificate_required";
        default: return "alert";
        }
}

int br_error_is_ok(int err) {
        return err == BR_ERR_OK || err == BR_ERR_X509_OK;
}

const char *br_error_name(int err) {
        static char buf[64];

        if (br_error_is_ok(err))
                return "OK";
        for (size_t i = 0; i < ELEMENTSOF(table); i++)
                if (table[i].code == err)
                        return table[i].name;
        if (err >= BR_ERR_SEND_FATAL_ALERT && err < BR_ERR_SEND_FATAL_ALERT + 256)
                snprintf(buf, sizeof buf, "BR_ERR_SEND_FATAL_ALERT+%d", err - BR_ERR_SEND_FATAL_ALERT);
        else if (err >= BR_ERR_RECV_FATAL_ALERT && err < BR_ERR_RECV_FATAL_ALERT + 256)
                snprintf(buf, sizeof buf, "BR_ERR_RECV_FATAL_ALERT+%d", err - BR_ERR_RECV_FATAL_ALERT);
        else
                snprintf(buf, sizeof buf, "BR_ERR_UNKNOWN_%d", err);
        return buf;
}

const char *br_error_text(int err) {
        static char buf[96];

        if (br_error_is_ok(err))
                return "the chain validated";
        for (size_t i = 0; i < ELEMENTSOF(table); i++)
                if (table[i].code == err)
                        return table[i].text;
        if (err >= BR_ERR_SEND_FATAL_ALERT && err < BR_ERR_SEND_FATAL_ALERT + 256) {
                snprintf(buf, sizeof buf, "the client sent a fatal alert (%s)",
                         alert_name(err - BR_ERR_SEND_FATAL_ALERT));
                return buf;
        }
        if (err >= BR_ERR_RECV_FATAL_ALERT && err < BR_ERR_RECV_FATAL_ALERT + 256) {
                snprintf(buf, sizeof buf, "the server sent a fatal alert (%s)",
                         alert_name(err - BR_ERR_RECV_FATAL_ALERT));
                return buf;
        }
        return "unknown error code";
}
