/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * proxy_proto — the PROXY protocol header a TCP load balancer (haproxy's
 * send-proxy / send-proxy-v2) puts in front of a connection, so that the
 * bridge learns the device's own address rather than the balancer's.
 * Spec: haproxy's "The PROXY protocol", versions 1 and 2
 * (doc/proxy-protocol.txt). Pure: parsing on a buffer, no sockets.
 *
 * The listener peeks at the start of a new connection, calls
 * proxy_parse() on what is there, and consumes exactly the header's
 * length: the TLS ClientHello that follows stays in the socket.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* The most any header may take. v1: 107 bytes, CRLF included (spec §2.1).
 * v2: the 16-byte fixed part plus addresses and TLVs; 536 is the size the
 * spec recommends a receiver read at once (§2.2: it holds a v2 header
 * with Unix addresses), and anything longer is refused. */
#define PROXY_V1_MAX 107
#define PROXY_V2_FIXED 16
#define PROXY_HEADER_MAX 536

enum proxy_version {
        PROXY_NONE = 0,
        PROXY_V1 = 1,
        PROXY_V2 = 2,
};

struct proxy_header {
        enum proxy_version version;
        /* No client address to use: v2 LOCAL (the balancer's own health
         * check), v2 UNSPEC or AF_UNIX, v1 UNKNOWN. The spec says to use
         * the connection's own endpoints then (§2.1, §2.2). */
        bool local;
        /* The client (source) and the address it connected to
         * (destination); AF_INET or AF_INET6 with the port, when !local. */
        struct sockaddr_storage src, dst;
        socklen_t src_len, dst_len;
};

/*
 * Do the len bytes at buf start like a PROXY header (of the version
 * returned), as far as they go? PROXY_NONE when they cannot be one (a TLS
 * record starts with 0x16) or len is 0. For a listener with the protocol
 * off, to say clearly why a connection fails.
 */
enum proxy_version proxy_detect(const uint8_t *buf, size_t len);

/*
 * Parse a header at the start of buf (len bytes available).
 * Returns the header's length (> 0; consume exactly that many bytes) and
 * fills *out; 0 when the bytes are a valid beginning and more are needed
 * (never more than PROXY_HEADER_MAX in all); -EBADMSG when they are not a
 * valid header; -EMSGSIZE when a v2 header says it is longer than
 * PROXY_HEADER_MAX. On failure *why (if why is not NULL) is a static,
 * human-readable reason.
 */
int proxy_parse(const uint8_t *buf, size_t len, struct proxy_header *out, const char **why);

/* "v1", "v2", "off" for PROXY_NONE. */
const char *proxy_version_to_string(enum proxy_version v);

/* One trusted network: [listener] proxy_from = ADDR/PREFIX. */
struct proxy_net {
        int family;             /* AF_INET or AF_INET6 */
        uint8_t addr[16];       /* network order; 4 bytes used for AF_INET */
        uint8_t prefix;         /* 0..32 or 0..128 */
};

/*
 * Parse "192.0.2.0/24", "2001:db8::/32" or a lone address (a /32 or
 * /128). Bits below the prefix must be zero ("10.0.0.1/8" is refused as a
 * likely typo). Returns 0 or -EINVAL with a static reason in *why.
 */
int proxy_net_parse(const char *s, struct proxy_net *out, const char **why);

/*
 * Is sa (AF_INET or AF_INET6; an IPv4-mapped IPv6 address counts as its
 * IPv4 address) inside one of the n networks? False for other families.
 */
bool proxy_net_match(const struct proxy_net *nets, size_t n, const struct sockaddr *sa);
