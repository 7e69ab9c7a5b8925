/* SPDX-License-Identifier: MIT */
#include "tls_sniff.h"

#include <string.h>

enum {
        REC_CHANGE_CIPHER_SPEC = 20,
        REC_HANDSHAKE = 22,
        HS_SERVER_HELLO = 2,
        EXT_MAX_FRAGMENT_LENGTH = 1,    /* RFC 6066 §4 */
};

void tls_sniff_init(struct tls_sniff *s) {
        memset(s, 0, sizeof *s);
}

static uint16_t get16(const unsigned char *p) {
        return (uint16_t) (p[0] << 8 | p[1]);
}

/* RFC 5246 §7.4.1.3 ServerHello body. */
static void parse_server_hello(struct tls_sniff *s, const unsigned char *p, size_t len) {
        size_t off = 0, ext_end;

        if (len < 2 + 32 + 1)
                return;
        s->version = get16(p);
        off = 2 + 32;
        s->sid_len = p[off++];
        if (s->sid_len > 32 || off + s->sid_len + 3 > len)
                return;
        memcpy(s->sid, p + off, s->sid_len);
        off += s->sid_len;
        s->suite = get16(p + off);
        off += 3;               /* suite + compression method */
        s->server_hello = true;
        if (off + 2 > len)
                return;         /* no extensions at all */
        ext_end = off + 2 + get16(p + off);
        off += 2;
        if (ext_end > len)
                return;
        while (off + 4 <= ext_end) {
                uint16_t type = get16(p + off), elen = get16(p + off + 2);

                off += 4;
                if (off + elen > ext_end)
                        return;
                if (type == EXT_MAX_FRAGMENT_LENGTH && elen == 1) {
                        s->mfl_echoed = true;
                        s->mfl_code = p[off];
                }
                off += elen;
        }
}

static void handshake_bytes(struct tls_sniff *s, const unsigned char *p, size_t n) {
        size_t body;

        if (n > sizeof s->hs - s->hs_len)
                n = sizeof s->hs - s->hs_len;
        memcpy(s->hs + s->hs_len, p, n);
        s->hs_len += n;
        if (s->hs_len < 4)
                return;
        if (s->hs[0] != HS_SERVER_HELLO) {
                s->done = true;
                return;
        }
        body = (size_t) s->hs[1] << 16 | (size_t) s->hs[2] << 8 | s->hs[3];
        if (4 + body > sizeof s->hs) {
                s->done = true;         /* absurd ServerHello: give up, report nothing */
                return;
        }
        if (s->hs_len >= 4 + body) {
                parse_server_hello(s, s->hs + 4, body);
                s->done = true;
        }
}

void tls_sniff_feed(struct tls_sniff *s, const unsigned char *p, size_t n) {
        while (n > 0 && !s->done) {
                if (s->hdr_have < 5) {
                        size_t k = 5 - s->hdr_have < n ? 5 - s->hdr_have : n;

                        memcpy(s->hdr + s->hdr_have, p, k);
                        s->hdr_have += k;
                        p += k;
                        n -= k;
                        if (s->hdr_have == 5) {
                                s->rec_type = s->hdr[0];
                                s->rec_left = get16(s->hdr + 3);
                                if (s->rec_type == REC_CHANGE_CIPHER_SPEC)
                                        s->done = true;
                        }
                        continue;
                }
                size_t k = s->rec_left < n ? s->rec_left : n;

                if (s->rec_type == REC_HANDSHAKE)
                        handshake_bytes(s, p, k);
                p += k;
                n -= k;
                s->rec_left -= k;
                if (s->rec_left == 0)
                        s->hdr_have = 0;
        }
}
