/* SPDX-License-Identifier: MIT */
/*
 * proxy_proto — parse the PROXY protocol header (haproxy's
 * doc/proxy-protocol.txt, versions 1 and 2). See proxy_proto.h.
 *
 * Strict where the spec is strict (one space between v1 fields, CRLF, the
 * v2 signature, version and command nibbles, a TLV area that adds up),
 * because a header that is not exactly right means the sender is not the
 * balancer we trust, and a lenient parser is an address-spoofing tool.
 */

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy_proto.h"

static const char v1_sig[] = "PROXY ";
#define V1_SIG_LEN 6
/* §2.2: "\r\n\r\n\0\r\nQUIT\n", chosen never to start a valid HTTP, TLS
 * or other common request. */
static const uint8_t v2_sig[12] = { 0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A };

static bool prefix_matches(const uint8_t *buf, size_t len, const uint8_t *sig, size_t sig_len)
{
        size_t n = len < sig_len ? len : sig_len;

        return n > 0 && memcmp(buf, sig, n) == 0;
}

enum proxy_version proxy_detect(const uint8_t *buf, size_t len)
{
        if (!buf || len == 0)
                return PROXY_NONE;
        if (prefix_matches(buf, len, (const uint8_t *) v1_sig, V1_SIG_LEN))
                return PROXY_V1;
        if (prefix_matches(buf, len, v2_sig, sizeof v2_sig))
                return PROXY_V2;
        return PROXY_NONE;
}

const char *proxy_version_to_string(enum proxy_version v)
{
        switch (v) {
        case PROXY_V1:
                return "v1";
        case PROXY_V2:
                return "v2";
        default:
                return "off";
        }
}

static int bad(const char **why, const char *reason, int r)
{
        if (why)
                *why = reason;
        return r;
}

/* A decimal port, 1 to 5 digits, at most 65535. */
static bool v1_port(const char *s, uint16_t *out)
{
        unsigned long v = 0;
        size_t n = strlen(s);

        if (n == 0 || n > 5)
                return false;
        for (size_t i = 0; i < n; i++) {
                if (s[i] < '0' || s[i] > '9')
                        return false;
                v = v * 10 + (unsigned long) (s[i] - '0');
        }
        if (v > 65535)
                return false;
        *out = (uint16_t) v;
        return true;
}

static void set_addr(struct sockaddr_storage *ss, socklen_t *len, int family, const void *addr, uint16_t port_be)
{
        memset(ss, 0, sizeof *ss);
        if (family == AF_INET) {
                struct sockaddr_in *in = (struct sockaddr_in *) ss;
                in->sin_family = AF_INET;
                memcpy(&in->sin_addr, addr, 4);
                in->sin_port = port_be;
                *len = sizeof *in;
        } else {
                struct sockaddr_in6 *in6 = (struct sockaddr_in6 *) ss;
                in6->sin6_family = AF_INET6;
                memcpy(&in6->sin6_addr, addr, 16);
                in6->sin6_port = port_be;
                *len = sizeof *in6;
        }
}

/* §2.1: "PROXY" SP ("TCP4" | "TCP6" | "UNKNOWN") SP src SP dst SP sport SP
 * dport CRLF, 107 bytes at most; after UNKNOWN anything may follow up to
 * the CRLF, and the receiver ignores it. */
static int parse_v1(const uint8_t *buf, size_t len, struct proxy_header *out, const char **why)
{
        char line[PROXY_V1_MAX + 1];
        char *tok[7];
        size_t n_tok = 0, end = 0;
        bool found = false;
        size_t scan = len < PROXY_V1_MAX ? len : PROXY_V1_MAX;

        for (size_t i = 0; i < scan; i++) {
                if (buf[i] == '\r') {
                        if (i + 1 >= len)
                                return 0;               /* the LF may be next */
                        if (buf[i + 1] != '\n')
                                return bad(why, "v1 header: CR without LF", -EBADMSG);
                        if (i + 2 > PROXY_V1_MAX)
                                break;
                        end = i;
                        found = true;
                        break;
                }
                if (buf[i] == '\n')
                        return bad(why, "v1 header: LF without CR", -EBADMSG);
                /* US-ASCII text only: a NUL or a control byte is no header. */
                if (buf[i] < 0x20 || buf[i] > 0x7e)
                        return bad(why, "v1 header: a byte that is not printable ASCII", -EBADMSG);
        }
        if (!found) {
                if (len >= PROXY_V1_MAX)
                        return bad(why, "v1 header: no CRLF within 107 bytes", -EBADMSG);
                return 0;
        }

        memcpy(line, buf, end);
        line[end] = '\0';
        for (char *p = line;;) {
                if (n_tok == sizeof tok / sizeof tok[0])
                        break;
                tok[n_tok++] = p;
                char *sp = strchr(p, ' ');
                if (!sp)
                        break;
                *sp = '\0';
                p = sp + 1;
        }
        if (n_tok < 2 || strcmp(tok[0], "PROXY") != 0)
                return bad(why, "v1 header: does not start with \"PROXY \"", -EBADMSG);

        memset(out, 0, sizeof *out);
        out->version = PROXY_V1;
        if (strcmp(tok[1], "UNKNOWN") == 0) {
                out->local = true;
                return (int) end + 2;
        }
        int family;
        if (strcmp(tok[1], "TCP4") == 0)
                family = AF_INET;
        else if (strcmp(tok[1], "TCP6") == 0)
                family = AF_INET6;
        else
                return bad(why, "v1 header: protocol is not TCP4, TCP6 or UNKNOWN", -EBADMSG);
        if (n_tok != 6)
                return bad(why, "v1 header: not exactly 6 fields separated by single spaces", -EBADMSG);

        uint8_t src[16], dst[16];
        uint16_t sport, dport;
        if (inet_pton(family, tok[2], src) != 1 || inet_pton(family, tok[3], dst) != 1)
                return bad(why, family == AF_INET ? "v1 header: TCP4 with an address that is not IPv4"
                                                  : "v1 header: TCP6 with an address that is not IPv6",
                           -EBADMSG);
        if (!v1_port(tok[4], &sport) || !v1_port(tok[5], &dport))
                return bad(why, "v1 header: a port that is not a number from 0 to 65535", -EBADMSG);
        set_addr(&out->src, &out->src_len, family, src, htons(sport));
        set_addr(&out->dst, &out->dst_len, family, dst, htons(dport));
        return (int) end + 2;
}

/* §2.2.7: type (1 byte), length (2 bytes, network order), value. The area
 * must add up exactly; the values themselves are of no use to us. */
static bool v2_tlvs_valid(const uint8_t *p, size_t n)
{
        while (n > 0) {
                if (n < 3)
                        return false;
                size_t l = ((size_t) p[1] << 8) | p[2];
                if (l > n - 3)
                        return false;
                p += 3 + l;
                n -= 3 + l;
        }
        return true;
}

/* §2.2: 12-byte signature, version/command, family/transport, length
 * (network order), then the address block and TLVs. */
static int parse_v2(const uint8_t *buf, size_t len, struct proxy_header *out, const char **why)
{
        if (len < PROXY_V2_FIXED) {
                /* Say no as early as the bytes allow. */
                if (len > 12 && (buf[12] & 0xF0) != 0x20)
                        return bad(why, "v2 header: version is not 2", -EBADMSG);
                return 0;
        }
        uint8_t ver_cmd = buf[12], fam = buf[13];
        size_t body = ((size_t) buf[14] << 8) | buf[15];
        size_t total = PROXY_V2_FIXED + body;

        if ((ver_cmd & 0xF0) != 0x20)
                return bad(why, "v2 header: version is not 2", -EBADMSG);
        if ((ver_cmd & 0x0F) > 1)
                return bad(why, "v2 header: command is neither LOCAL nor PROXY", -EBADMSG);
        if ((fam >> 4) > 3 || (fam & 0x0F) > 2)
                return bad(why, "v2 header: unknown address family or transport", -EBADMSG);
        if (total > PROXY_HEADER_MAX)
                return bad(why, "v2 header: longer than 536 bytes", -EMSGSIZE);
        if (len < total)
                return 0;

        memset(out, 0, sizeof *out);
        out->version = PROXY_V2;
        const uint8_t *a = buf + PROXY_V2_FIXED;
        size_t addr_len;

        if ((ver_cmd & 0x0F) == 0) {
                /* LOCAL: the balancer speaks for itself (a health check);
                 * the family and the block are to be ignored (§2.2). */
                out->local = true;
                return (int) total;
        }
        switch (fam >> 4) {
        case 0x1:
                addr_len = 12;
                break;
        case 0x2:
                addr_len = 36;
                break;
        case 0x3:
                addr_len = 216;
                break;
        default:
                /* UNSPEC: the sender did not know; use the connection's. */
                out->local = true;
                return (int) total;
        }
        if (body < addr_len)
                return bad(why, "v2 header: address block shorter than its family needs", -EBADMSG);
        if (!v2_tlvs_valid(a + addr_len, body - addr_len))
                return bad(why, "v2 header: TLVs after the addresses do not add up", -EBADMSG);
        if ((fam & 0x0F) == 0x2)
                return bad(why, "v2 header: a datagram (UDP) connection on a stream listener", -EBADMSG);
        if ((fam >> 4) == 0x3 || (fam & 0x0F) == 0) {
                /* A Unix socket has no address the limits could count;
                 * an unspecified transport no port to believe. */
                out->local = true;
                return (int) total;
        }
        if ((fam >> 4) == 0x1) {
                uint16_t sp, dp;
                memcpy(&sp, a + 8, 2);
                memcpy(&dp, a + 10, 2);
                set_addr(&out->src, &out->src_len, AF_INET, a, sp);
                set_addr(&out->dst, &out->dst_len, AF_INET, a + 4, dp);
        } else {
                uint16_t sp, dp;
                memcpy(&sp, a + 32, 2);
                memcpy(&dp, a + 34, 2);
                set_addr(&out->src, &out->src_len, AF_INET6, a, sp);
                set_addr(&out->dst, &out->dst_len, AF_INET6, a + 16, dp);
        }
        return (int) total;
}

int proxy_parse(const uint8_t *buf, size_t len, struct proxy_header *out, const char **why)
{
        if (why)
                *why = NULL;
        if (!buf || !out)
                return bad(why, "no buffer", -EINVAL);
        if (len == 0)
                return 0;
        switch (proxy_detect(buf, len)) {
        case PROXY_V1:
                if (len < V1_SIG_LEN)
                        return 0;
                return parse_v1(buf, len, out, why);
        case PROXY_V2:
                if (len < sizeof v2_sig)
                        return 0;
                return parse_v2(buf, len, out, why);
        default:
                if (buf[0] == 0x16)
                        return bad(why, "no PROXY header: the connection starts with a TLS record", -EBADMSG);
                return bad(why, "no PROXY header: neither the v1 nor the v2 signature", -EBADMSG);
        }
}

int proxy_net_parse(const char *s, struct proxy_net *out, const char **why)
{
        char addr[INET6_ADDRSTRLEN + 1];
        const char *slash;
        size_t alen;
        unsigned long prefix;
        unsigned max;

        if (!s || !out)
                return bad(why, "no value", -EINVAL);
        slash = strchr(s, '/');
        alen = slash ? (size_t) (slash - s) : strlen(s);
        if (alen == 0 || alen >= sizeof addr)
                return bad(why, "not an IPv4 or IPv6 address", -EINVAL);
        memcpy(addr, s, alen);
        addr[alen] = '\0';
        memset(out, 0, sizeof *out);
        if (inet_pton(AF_INET, addr, out->addr) == 1) {
                out->family = AF_INET;
                max = 32;
        } else if (inet_pton(AF_INET6, addr, out->addr) == 1) {
                out->family = AF_INET6;
                max = 128;
        } else
                return bad(why, "not an IPv4 or IPv6 address (host names are not accepted)", -EINVAL);

        prefix = max;
        if (slash) {
                const char *p = slash + 1;
                size_t n = strlen(p);
                if (n == 0 || n > 3 || strspn(p, "0123456789") != n || (n > 1 && p[0] == '0'))
                        return bad(why, "the prefix length after '/' is not a number", -EINVAL);
                prefix = strtoul(p, NULL, 10);
                if (prefix > max)
                        return bad(why, max == 32 ? "the prefix length is more than 32"
                                                  : "the prefix length is more than 128", -EINVAL);
        }
        out->prefix = (uint8_t) prefix;
        for (unsigned bit = (unsigned) prefix; bit < max; bit++)
                if (out->addr[bit / 8] & (0x80u >> (bit % 8)))
                        return bad(why, "bits set below the prefix length (write the network address, "
                                        "e.g. 10.0.0.0/8)", -EINVAL);
        return 0;
}

static bool net_contains(const struct proxy_net *net, int family, const uint8_t *addr)
{
        unsigned full = net->prefix / 8, rest = net->prefix % 8;

        if (net->family != family)
                return false;
        if (memcmp(net->addr, addr, full) != 0)
                return false;
        if (rest == 0)
                return true;
        uint8_t mask = (uint8_t) (0xFFu << (8 - rest));
        return (net->addr[full] & mask) == (addr[full] & mask);
}

bool proxy_net_match(const struct proxy_net *nets, size_t n, const struct sockaddr *sa)
{
        uint8_t a[16];
        int family;

        if (!nets || !sa)
                return false;
        if (sa->sa_family == AF_INET) {
                memcpy(a, &((const struct sockaddr_in *) sa)->sin_addr, 4);
                family = AF_INET;
        } else if (sa->sa_family == AF_INET6) {
                const struct in6_addr *in6 = &((const struct sockaddr_in6 *) sa)->sin6_addr;
                if (IN6_IS_ADDR_V4MAPPED(in6)) {
                        memcpy(a, in6->s6_addr + 12, 4);
                        family = AF_INET;
                } else {
                        memcpy(a, in6->s6_addr, 16);
                        family = AF_INET6;
                }
        } else
                return false;
        for (size_t i = 0; i < n; i++)
                if (net_contains(&nets[i], family, a))
                        return true;
        return false;
}
