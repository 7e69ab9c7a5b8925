/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for proxy_proto: the PROXY protocol header parser and
 * the trusted-network parser. Besides not crashing, it aborts when one of
 * these breaks:
 *   - a header's length is within what was given and PROXY_HEADER_MAX;
 *   - "need more" is said only while fewer than PROXY_HEADER_MAX bytes
 *     are there (the listener never peeks more);
 *   - a header does not depend on the bytes after it, and every proper
 *     prefix of it asks for more (the listener may see it in pieces);
 *   - an address comes back in the family of its version's field, with a
 *     matching length, and a local header carries none;
 *   - a parsed network matches its own address.
 */

#include <arpa/inet.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy_proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_header(const struct proxy_header *h)
{
        if (h->version != PROXY_V1 && h->version != PROXY_V2)
                abort();
        if (h->local) {
                if (h->src_len || h->dst_len)
                        abort();
                return;
        }
        if (h->src.ss_family != h->dst.ss_family)
                abort();
        if (h->src.ss_family == AF_INET) {
                if (h->src_len != sizeof(struct sockaddr_in))
                        abort();
        } else if (h->src.ss_family == AF_INET6) {
                if (h->src_len != sizeof(struct sockaddr_in6))
                        abort();
        } else
                abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        struct proxy_header h, h2;
        const char *why = NULL;
        int r = proxy_parse(data, size, &h, &why);

        if (r > 0) {
                if ((size_t) r > size || r > PROXY_HEADER_MAX)
                        abort();
                check_header(&h);
                if (proxy_parse(data, (size_t) r, &h2, &why) != r || h2.version != h.version ||
                    h2.local != h.local || memcmp(&h2.src, &h.src, sizeof h.src) != 0)
                        abort();
                /* A few proper prefixes (all of them would be slow). */
                for (size_t k = 0; k < (size_t) r; k += 1 + (size_t) r / 16)
                        if (proxy_parse(data, k, &h2, &why) != 0)
                                abort();
        } else if (r == 0) {
                if (size >= PROXY_HEADER_MAX)
                        abort();
        } else {
                if (r != -EBADMSG && r != -EMSGSIZE)
                        abort();
                if (!why)
                        abort();
        }
        if (proxy_detect(data, size) == PROXY_NONE && size > 0 && r >= 0)
                abort();

        /* The same bytes as a proxy_from entry. */
        char s[64];
        size_t n = size < sizeof s - 1 ? size : sizeof s - 1;
        memcpy(s, data, n);
        s[n] = '\0';
        struct proxy_net net;
        if (proxy_net_parse(s, &net, &why) == 0) {
                struct sockaddr_storage ss = { 0 };
                if (net.family == AF_INET) {
                        struct sockaddr_in *in = (struct sockaddr_in *) &ss;
                        in->sin_family = AF_INET;
                        memcpy(&in->sin_addr, net.addr, 4);
                } else {
                        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *) &ss;
                        in6->sin6_family = AF_INET6;
                        memcpy(&in6->sin6_addr, net.addr, 16);
                }
                if (!proxy_net_match(&net, 1, (struct sockaddr *) &ss))
                        abort();
        }
        return 0;
}
