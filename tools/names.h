/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * names — what a server name looks like, and how BearSSL's x509_minimal
 * matches one (src/x509/x509_minimal.t0, "eqname"), so the tools can
 * explain a verdict in terms of the certificate's own entries.
 */

#include <stdbool.h>

/* A literal IPv4 or IPv6 address (inet_pton). */
bool name_is_ip(const char *s);

/* Anything a person might mean as an address: a literal IP, or only digits
 * and dots / hex digits and colons ("192.168.0", "10.1"). Device names
 * like that are refused, a device cert must never pass as a server. */
bool name_looks_like_ip(const char *s);

/* BearSSL's comparison of an expected server name with one dNSName (or,
 * without SAN, the CN): ASCII case-insensitive; a leading "*." matches
 * exactly one non-empty label, whatever the rest looks like. */
bool name_bearssl_match(const char *pattern, const char *name);

/* Case-insensitive equality, for comparing names a person typed. */
bool name_equal(const char *a, const char *b);
