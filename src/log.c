/* SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <systemd/sd-journal.h>

#include "log.h"

static enum log_level log_threshold = LOG_LEVEL_INFO;
static int log_to_journal;

static const char *const level_names[] = {
        [LOG_LEVEL_ERR] = "error",     [LOG_LEVEL_WARNING] = "warning",
        [LOG_LEVEL_NOTICE] = "notice", [LOG_LEVEL_INFO] = "info",
        [LOG_LEVEL_DEBUG] = "debug",
};

void log_setup(enum log_level level, enum log_target target)
{
        log_threshold = level;
        if (target == LOG_TARGET_AUTO)
                log_to_journal = getenv("JOURNAL_STREAM") != NULL;
        else
                log_to_journal = target == LOG_TARGET_JOURNAL;
}

int log_enabled(enum log_level level)
{
        return level <= log_threshold;
}

int log_level_from_string(const char *s)
{
        for (int i = LOG_LEVEL_ERR; i <= LOG_LEVEL_DEBUG; i++)
                if (strcasecmp(s, level_names[i]) == 0)
                        return i;
        if (strcasecmp(s, "err") == 0)
                return LOG_LEVEL_ERR;
        return -EINVAL;
}

size_t log_escape(char *dst, size_t cap, const char *src, size_t len, bool quotes)
{
        static const char hex[] = "0123456789abcdef";
        size_t o = 0;

        if (cap == 0)
                return 0;
        for (size_t i = 0; i < len && src[i]; i++) {
                unsigned char c = (unsigned char) src[i];
                bool esc = c < 0x20 || c == 0x7f || (quotes && (c == '"' || c == '\\'));
                /* C1 controls (U+0080..U+009F, UTF-8 C2 80..C2 9F): some
                 * terminals take U+009B as CSI. */
                if (c == 0xc2 && i + 1 < len && (unsigned char) src[i + 1] >= 0x80 &&
                    (unsigned char) src[i + 1] <= 0x9f) {
                        if (o + 8 >= cap)
                                break;
                        memcpy(dst + o, "\\xc2\\x", 6);
                        dst[o + 6] = hex[(unsigned char) src[i + 1] >> 4];
                        dst[o + 7] = hex[(unsigned char) src[i + 1] & 15];
                        o += 8;
                        i++;
                        continue;
                }
                if (esc) {
                        if (o + 4 >= cap)
                                break;
                        dst[o++] = '\\';
                        dst[o++] = 'x';
                        dst[o++] = hex[c >> 4];
                        dst[o++] = hex[c & 15];
                        continue;
                }
                if (o + 1 >= cap)
                        break;
                dst[o++] = (char) c;
        }
        dst[o] = 0;
        return o;
}

void log_msg(enum log_level level, const struct log_fields *f, const char *fmt, ...)
{
        char raw[1024], msg[1024];
        va_list ap;

        if (!log_enabled(level))
                return;

        va_start(ap, fmt);
        vsnprintf(raw, sizeof raw, fmt, ap);
        va_end(ap);
        /* Whatever a device sent (a client id, a topic) reaches the log
         * escaped: no control character can forge or hide a line. */
        log_escape(msg, sizeof msg, raw, sizeof raw, false);
        char cn[300] = "", cid[300] = "", reason[300] = "";
        struct log_fields esc = { 0 };
        if (f) {
                esc.peer = f->peer;
                if (f->cn)
                        log_escape(cn, sizeof cn, f->cn, strlen(f->cn), true), esc.cn = cn;
                if (f->client_id)
                        log_escape(cid, sizeof cid, f->client_id, strlen(f->client_id), true), esc.client_id = cid;
                if (f->reason)
                        log_escape(reason, sizeof reason, f->reason, strlen(f->reason), true), esc.reason = reason;
                f = &esc;
        }

        if (log_to_journal) {
                /* Empty fields are harmless in the journal, and keep this one
                 * call instead of 16 combinations. */
                sd_journal_send("MESSAGE=%s", msg, "PRIORITY=%d", (int) level,
                                "PEER_ADDRESS=%s", f && f->peer ? f->peer : "",
                                "DEVICE_CN=%s", f && f->cn ? f->cn : "",
                                "CLIENT_ID=%s", f && f->client_id ? f->client_id : "",
                                "REASON=%s", f && f->reason ? f->reason : "",
                                "SYSLOG_IDENTIFIER=mqtt-edge-bridge", NULL);
                return;
        }

        /* stderr: the same facts, key=value after the message so a test or
         * a person can grep for them. */
        char extra[512] = "";
        if (f) {
                size_t n = 0;
                if (f->peer)
                        n += (size_t) snprintf(extra + n, sizeof extra - n, " peer=%s", f->peer);
                if (f->cn && n < sizeof extra)
                        n += (size_t) snprintf(extra + n, sizeof extra - n, " cn=\"%s\"", f->cn);
                if (f->client_id && n < sizeof extra)
                        n += (size_t) snprintf(extra + n, sizeof extra - n, " client_id=\"%s\"", f->client_id);
                if (f->reason && n < sizeof extra)
                        snprintf(extra + n, sizeof extra - n, " reason=\"%s\"", f->reason);
        }
        fprintf(stderr, "mqtt-edge-bridge[%s]: %s%s\n", level_names[level], msg, extra);
}

void log_format_peer(char *buf, size_t len, const struct sockaddr *sa)
{
        char host[INET6_ADDRSTRLEN] = "?";

        if (sa->sa_family == AF_INET) {
                const struct sockaddr_in *in = (const struct sockaddr_in *) sa;
                inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
                snprintf(buf, len, "%s:%u", host, (unsigned) ntohs(in->sin_port));
        } else if (sa->sa_family == AF_INET6) {
                const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *) sa;
                inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
                snprintf(buf, len, "[%s]:%u", host, (unsigned) ntohs(in6->sin6_port));
        } else {
                snprintf(buf, len, "?");
        }
}
