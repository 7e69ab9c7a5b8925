/* SPDX-License-Identifier: MIT */
/*
 * session.c — a device session's life and death, its timers, the TLS
 * handshake and the device's wire: reading, framing and dispatching whole
 * MQTT packets, and writing what the other session files queued.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>
#include <openssl/crypto.h>

#include "conn_limits.h"
#include "outbox.h"
#include "inventory.h"
#include "session_internal.h"
#include "tls_server.h"

static void session_process_input(struct session *s);

const struct config *session_cfg(const struct session *s)
{
        return &s->b->cfg;
}

struct log_fields session_fields(const struct session *s, const char *reason)
{
        return (struct log_fields){
                .peer = s->peer,
                .cn = s->cn[0] ? s->cn : NULL,
                .client_id = s->client_id,
                .reason = reason,
        };
}

uint64_t session_now(const struct session *s)
{
        uint64_t t = 0;
        sd_event_now(s->b->event, CLOCK_MONOTONIC, &t);
        return t;
}

static uint64_t realtime_usec(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (uint64_t) ts.tv_sec * 1000000ULL + (uint64_t) ts.tv_nsec / 1000;
}

void session_set_deadline(struct session *s, uint64_t usec_from_now)
{
        if (usec_from_now == 0) {
                sd_event_source_set_enabled(s->timer, SD_EVENT_OFF);
                return;
        }
        sd_event_source_set_time(s->timer, session_now(s) + usec_from_now);
        sd_event_source_set_enabled(s->timer, SD_EVENT_ONESHOT);
}

/* §3.1.2.10: the server disconnects a client that sends nothing for one
 * and a half times its keepalive. Armed once; each packet only records
 * its time (session_on_timer moves the deadline on), so the hot path does
 * not reschedule a timer per packet. */
void session_arm_keepalive(struct session *s)
{
        s->last_packet = session_now(s);
        if (s->keepalive == 0)
                session_set_deadline(s, 0);
        else
                session_set_deadline(s, (uint64_t) s->keepalive * 1500000ULL);
}

/* ---- buffers only while data moves ---- */

/* A session that read or wrote holds buffers: its input buffer, its
 * output buffer, OpenSSL's record buffers (~34 kB), the outbox's spare
 * message blocks, its uplink's. They stay while it is busy, so a message
 * costs no allocation, and go once it has been quiet for a whole sweep
 * (1-2 s): idle devices, most of them, hold none. The sweep visits only
 * the busy list. */
#define SESSION_TRIM_PERIOD_USEC (1000 * 1000ULL)

void session_mark_busy(struct session *s)
{
        s->busy_now = true;
        if (s->on_busy_list || s->state == S_CLOSED)
                return;
        s->on_busy_list = true;
        LIST_PREPEND(busy, s->b->busy, s);
        if (s->b->trim_timer && sd_event_source_get_enabled(s->b->trim_timer, NULL) == 0) {
                uint64_t now = session_now(s);
                sd_event_source_set_time(s->b->trim_timer, now + SESSION_TRIM_PERIOD_USEC);
                sd_event_source_set_enabled(s->b->trim_timer, SD_EVENT_ONESHOT);
        }
}

static void session_unmark_busy(struct session *s)
{
        if (!s->on_busy_list)
                return;
        LIST_REMOVE(busy, s->b->busy, s);
        s->on_busy_list = false;
}

/* Free the input buffer when it holds nothing and has room for more than
 * keep bytes (as bytebuf_trim does). */
static void session_release_in(struct session *s, size_t keep)
{
        if (s->in_len == 0 && s->in_cap > keep) {
                free(s->in);
                s->in = NULL;
                s->in_cap = 0;
        }
}

/* The same for the output buffer: nothing left unsent, room over keep. */
static void session_release_out(struct session *s, size_t keep)
{
        if (s->out_off == s->out_len && s->out_cap > keep) {
                free(s->out);
                s->out = NULL;
                s->out_off = s->out_len = s->out_cap = 0;
        }
}

/* Release what an idle session does not need; what is half done (a
 * partial packet, unsent bytes, a TLS record) stays. */
static void session_trim(struct session *s)
{
        session_release_in(s, 0);
        session_release_out(s, 0);
        tls_conn_trim(&s->tls);
        outbox_trim(s->outbox);
        uplink_trim(s->up);
}

static int session_on_trim_timer(sd_event_source *src, uint64_t usec, void *userdata)
{
        struct bridge *b = userdata;
        struct session *s, *next;

        LIST_FOREACH_SAFE(busy, s, next, b->busy) {
                if (s->busy_now) {
                        s->busy_now = false;
                        continue;
                }
                session_trim(s);
                session_unmark_busy(s);
        }
        if (b->busy) {
                sd_event_source_set_time(src, usec + SESSION_TRIM_PERIOD_USEC);
                sd_event_source_set_enabled(src, SD_EVENT_ONESHOT);
        }
        return 0;
}

int session_trim_start(struct bridge *b)
{
        int r = sd_event_add_time(b->event, &b->trim_timer, CLOCK_MONOTONIC, 0, SESSION_TRIM_PERIOD_USEC / 4,
                                  session_on_trim_timer, b);
        if (r < 0)
                return r;
        return sd_event_source_set_enabled(b->trim_timer, SD_EVENT_OFF);
}

/* ---- output to the device ---- */

/* Reserve n bytes at the end of the output buffer. NULL if over the limit
 * (max_queued_bytes, counted on top of one packet so a single large
 * message still fits) or out of memory. */
uint8_t *session_out_reserve(struct session *s, size_t n, bool limited)
{
        size_t used = s->out_len - s->out_off;

        if (limited && used > 0 && used + n > session_cfg(s)->limits.max_queued_bytes)
                return NULL;
        if (s->out_off > 0 && s->out_len + n > s->out_cap) {
                memmove(s->out, s->out + s->out_off, used);
                s->out_len = used;
                s->out_off = 0;
        }
        if (s->out_len + n > s->out_cap) {
                size_t cap = s->out_cap ? s->out_cap : 256;
                while (cap < s->out_len + n)
                        cap *= 2;
                uint8_t *p = realloc(s->out, cap);
                if (!p)
                        return NULL;
                s->out = p;
                s->out_cap = cap;
        }
        uint8_t *p = s->out + s->out_len;
        s->out_len += n;
        return p;
}

/* A device that does not read its answers must not make them pile up:
 * over max_queued_bytes of output, stop taking its input and stop reading
 * its uplink. */
bool session_out_full(const struct session *s)
{
        return s->out_len - s->out_off > session_cfg(s)->limits.max_queued_bytes;
}

void session_send_ack(struct session *s, enum mqtt_type type, uint16_t pid)
{
        if (s->state == S_CLOSED)
                return;
        uint8_t *p = session_out_reserve(s, 4, false);
        if (!p) {
                session_close(s, LOG_LEVEL_ERR, "out of memory");
                return;
        }
        mqtt_encode_ack(p, 4, type, pid);
}

static void session_send_empty(struct session *s, enum mqtt_type type)
{
        uint8_t *p = session_out_reserve(s, 2, false);
        if (!p) {
                session_close(s, LOG_LEVEL_ERR, "out of memory");
                return;
        }
        mqtt_encode_empty(p, 2, type);
}

void session_send_connack(struct session *s, bool session_present, uint8_t rc)
{
        if (rc > 0 && rc < BRIDGE_CONNACK_CODES)
                s->b->stats.refused_connack[rc]++;
        uint8_t *p = session_out_reserve(s, 4, false);
        if (!p) {
                session_close(s, LOG_LEVEL_ERR, "out of memory");
                return;
        }
        mqtt_encode_connack(p, 4, session_present, rc);
}

/* Write what is queued, as far as the socket takes it. Returns 0, or a
 * negative errno with why set. Never closes the session. */
static int session_write_out(struct session *s, char *why, size_t whylen)
{
        while (s->out_off < s->out_len) {
                ssize_t n = tls_conn_write(&s->tls, s->out + s->out_off, s->out_len - s->out_off, why, whylen);
                if (n == -EAGAIN)
                        return 0;
                if (n < 0)
                        return (int) n;
                s->out_off += (size_t) n;
                s->b->stats.bytes_to_devices += (uint64_t) n;
                session_mark_busy(s);
        }
        /* Idle devices are most of them: keep no big buffer around. */
        s->out_off = s->out_len = 0;
        session_release_out(s, 4096);
        return 0;
}

/* Write what is queued; close on a write error, or when a refusal
 * (S_FLUSHING) has gone out completely. */
void session_flush(struct session *s)
{
        char why[256] = "";

        if (s->state == S_CLOSED || s->state == S_HANDSHAKE)
                return;
        if (session_write_out(s, why, sizeof why) < 0) {
                session_close(s, LOG_LEVEL_INFO, why[0] ? why : "write failed");
                return;
        }
        if (s->out_len == 0 && s->state == S_FLUSHING) {
                session_close(s, LOG_LEVEL_DEBUG, NULL);
                return;
        }
        if (!session_out_full(s)) {
                if (s->paused_backlog) {
                        s->paused_backlog = false;
                        session_kick_input(s);
                }
                session_down_output_drained(s);
        }
}

/* Process input again on the next loop turn (after a pause ended). */
void session_kick_input(struct session *s)
{
        if (s->state != S_CLOSED)
                sd_event_source_set_enabled(s->resume, SD_EVENT_ONESHOT);
}

/* ---- input from the device ---- */

/* One whole packet from the device. */
static void session_handle_packet(struct session *s, const uint8_t *pkt, size_t len)
{
        struct mqtt_packet p;
        const char *why = NULL;
        int r;

        r = mqtt_parse(pkt, len, &p, &why);

        /* §3.1.2.10: the keepalive counts control packets, not bytes: a
         * device dribbling one byte at a time still times out. */
        if (s->state == S_ACTIVE || s->state == S_UPLINK_CONNECTING)
                s->last_packet = session_now(s);

        if (s->state == S_WAIT_CONNECT) {
                if (r == -EPROTONOSUPPORT) {
                        /* §3.1.2.2: unacceptable protocol level → CONNACK 1. */
                        session_send_connack(s, false, MQTT_CONNACK_BAD_PROTOCOL);
                        s->state = S_FLUSHING;
                        session_set_deadline(s, SESSION_FLUSH_TIMEOUT_USEC);
                        struct log_fields f = session_fields(s, why ? why : "protocol level not supported");
                        log_msg(LOG_LEVEL_NOTICE, &f, "device refused with CONNACK 1");
                        return;
                }
                if (r < 0) {
                        s->b->stats.protocol_errors++;
                        session_close(s, LOG_LEVEL_NOTICE, why ? why : "malformed CONNECT");
                        return;
                }
                if (p.type != MQTT_CONNECT) {
                        /* [MQTT-3.1.0-1]: the first packet must be CONNECT. */
                        s->b->stats.protocol_errors++;
                        session_close(s, LOG_LEVEL_NOTICE, "first packet is not CONNECT");
                        return;
                }
                session_on_connect(s, &p.u.connect);
                return;
        }

        if (r < 0) {
                /* §4.8: a malformed packet or protocol violation closes the
                 * connection; without DISCONNECT the will is published. */
                s->b->stats.protocol_errors++;
                session_close(s, LOG_LEVEL_NOTICE, why ? why : "malformed packet");
                return;
        }

        switch (p.type) {
        case MQTT_PUBLISH:
                session_on_publish(s, &p.u.publish);
                break;
        case MQTT_PUBREL:
                session_on_pubrel(s, p.u.packet_id);
                break;
        case MQTT_PUBACK:
        case MQTT_PUBREC:
        case MQTT_PUBCOMP:
                session_down_on_device_ack(s, p.type, p.u.packet_id);
                break;
        case MQTT_SUBSCRIBE:
                session_on_subscribe(s, &p.u.list);
                break;
        case MQTT_UNSUBSCRIBE:
                session_on_unsubscribe(s, &p.u.list);
                break;
        case MQTT_PINGREQ:
                /* §3.12: the device's keepalive is with the bridge; the
                 * uplink keeps its own with the broker. */
                session_send_empty(s, MQTT_PINGRESP);
                break;
        case MQTT_DISCONNECT:
                /* §3.14.4: discard the will; end upstream with DISCONNECT. */
                s->clean_disconnect = true;
                session_close(s, LOG_LEVEL_INFO, "DISCONNECT");
                break;
        case MQTT_CONNECT:
                s->b->stats.protocol_errors++;
                session_close(s, LOG_LEVEL_NOTICE, "second CONNECT [MQTT-3.1.0-2]");
                break;
        default:
                s->b->stats.protocol_errors++;
                session_close(s, LOG_LEVEL_NOTICE, "packet type a client must not send");
                break;
        }
}

/* May input be handled now? Records why not, to resume later. */
static bool session_may_process(struct session *s)
{
        if (s->state != S_WAIT_CONNECT && s->state != S_ACTIVE)
                return false; /* e.g. waiting for the broker's CONNACK */
        if (session_out_full(s)) {
                s->paused_backlog = true;
                return false;
        }
        if (s->state == S_ACTIVE &&
            (outbox_full(s->outbox) || (s->up_connected && !uplink_writable(s->up)))) {
                /* Back-pressure: read no further until the broker
                 * acknowledges or takes its bytes; TCP then slows the
                 * device down. */
                s->input_paused = true;
                return false;
        }
        return true;
}

/* Handle every whole packet in the input buffer that may be handled now. */
static void session_process_input(struct session *s)
{
        size_t off = 0;

        s->input_paused = false;
        while (off < s->in_len && session_may_process(s)) {
                size_t plen = 0;
                int r = mqtt_frame(s->in + off, s->in_len - off, session_cfg(s)->limits.max_packet_size, &plen);
                if (r == 0)
                        break;
                if (r < 0) {
                        s->b->stats.protocol_errors++;
                        session_close(s, LOG_LEVEL_NOTICE, r == -EMSGSIZE ? "packet over max_packet_size" :
                                                           "remaining length over 4 bytes");
                        return;
                }
                session_handle_packet(s, s->in + off, plen);
                off += plen;
                if (s->state == S_CLOSED)
                        return;
        }
        if (off > 0) {
                memmove(s->in, s->in + off, s->in_len - off);
                s->in_len -= off;
        }
        /* One fsync for every message of this batch, then their acks. */
        if (s->outbox && outbox_commit(s->outbox) < 0) {
                session_close(s, LOG_LEVEL_ERR, "cannot write the spool (fsync failed)");
                return;
        }
        /* The batch upstream in one write, now rather than from a deferred
         * event (one dispatch less per message, and no wait for the rest
         * of the loop turn). */
        uplink_push(s->up);
        if (s->state == S_CLOSED)
                return;
        session_release_in(s, SESSION_READ_CHUNK);
        session_flush(s);
}

static bool session_wants_input(const struct session *s)
{
        if (s->paused_backlog || session_out_full(s))
                return false;
        if (s->state == S_WAIT_CONNECT || s->state == S_ACTIVE)
                return !s->input_paused;
        /* While the uplink connects, take a little more (packets pipelined
         * behind CONNECT) but not without bound. */
        if (s->state == S_UPLINK_CONNECTING)
                return s->in_len < SESSION_READ_CHUNK * 4;
        return false;
}

/* Read everything OpenSSL and the socket have (SSL_pending drained). */
static void session_read(struct session *s)
{
        char why[256] = "";

        while (session_wants_input(s)) {
                if (s->in_cap - s->in_len < SESSION_READ_CHUNK) {
                        size_t cap = s->in_cap ? s->in_cap * 2 : SESSION_READ_CHUNK;
                        size_t limit = session_cfg(s)->limits.max_packet_size + 2 * SESSION_READ_CHUNK;
                        if (cap > limit && s->in_cap >= limit)
                                break;
                        uint8_t *p = realloc(s->in, cap);
                        if (!p) {
                                session_close(s, LOG_LEVEL_ERR, "out of memory");
                                return;
                        }
                        s->in = p;
                        s->in_cap = cap;
                }
                ssize_t n = tls_conn_read(&s->tls, s->in + s->in_len, s->in_cap - s->in_len, why, sizeof why);
                if (n == -EAGAIN)
                        break;
                if (n == 0) {
                        session_close(s, LOG_LEVEL_INFO, "connection closed by the device");
                        return;
                }
                if (n < 0) {
                        session_close(s, LOG_LEVEL_INFO, why[0] ? why : "read error");
                        return;
                }
                s->in_len += (size_t) n;
                s->b->stats.bytes_from_devices += (uint64_t) n;
                s->last_activity = realtime_usec();
                session_mark_busy(s);
                session_process_input(s);
                if (s->state == S_CLOSED)
                        return;
                /* Nothing held in OpenSSL: the socket's rest (if any) is
                 * epoll's to report (level-triggered), so no read(2) that
                 * only says EAGAIN, one system call and ~2,000
                 * instructions per message saved. */
                if (!tls_conn_pending(&s->tls))
                        break;
        }
}

static void session_handshake(struct session *s)
{
        char why[256] = "";
        int r = tls_conn_handshake(&s->tls, why, sizeof why);

        if (r == 0)
                return;
        if (r < 0 && BIO_number_read(SSL_get_rbio(s->tls.ssl)) == 0) {
                /* A port probe or health check: nothing was ever sent. */
                struct log_fields f = { .peer = s->peer, .reason = "no data" };
                log_msg(LOG_LEVEL_DEBUG, &f, "connection closed before the TLS handshake began");
                session_close(s, LOG_LEVEL_DEBUG, NULL);
                return;
        }
        if (r < 0) {
                struct log_fields f = {
                        .peer = s->peer,
                        .cn = s->tls.verify.subject[0] ? s->tls.verify.subject : NULL,
                        .reason = why[0] ? why : "handshake failed",
                };
                s->b->stats.handshakes_failed++;
                inventory_handshake_failed(s->b->inventory, s->peer, s->tls.verify.subject, f.reason);
                if (s->tls.verify.reason[0])
                        s->b->stats.handshakes_failed_certificate++;
                log_msg(LOG_LEVEL_NOTICE, &f, "TLS handshake failed, device rejected%s",
                        s->tls.verify.subject[0] ? "" : " (no certificate seen)");
                session_close(s, LOG_LEVEL_DEBUG, NULL);
                return;
        }

        conn_limits_handshake_done(s->b->conn_limits, s->fd); /* no longer counts against max_handshakes */
        r = tls_server_peer_cn(s->tls.ssl, s->cn, sizeof s->cn);
        if (r == -EINVAL) {
                session_close(s, LOG_LEVEL_NOTICE, "client certificate subject has no usable CN");
                return;
        }
        bool resumed = SSL_session_reused(s->tls.ssl);
        device_info_from_ssl(&s->info, s->tls.ssl);
        inventory_device_seen(s->b->inventory, s->cn, s->info.cert_not_after);
        if (resumed)
                s->b->stats.handshakes_resumed++;
        else
                s->b->stats.handshakes_full++;
        s->state = S_WAIT_CONNECT;
        session_mark_busy(s); /* the handshake's buffers go once it is quiet */
        {
                struct log_fields f = session_fields(s, NULL);
                SSL_SESSION *sess = SSL_get_session(s->tls.ssl);
                unsigned mfl = SSL_SESSION_get_max_fragment_length(sess);
                log_msg(LOG_LEVEL_INFO, &f, "TLS established: %s %s, %s handshake, max fragment %u",
                        SSL_get_version(s->tls.ssl), SSL_get_cipher_name(s->tls.ssl),
                        resumed ? "resumed" : "full", mfl ? 256u << mfl : 0u);
        }
        /* The deadline for CONNECT is the handshake timeout again. */
        session_set_deadline(s, (uint64_t) session_cfg(s)->listener.handshake_timeout * 1000000ULL);
        session_read(s);
}

static int session_io(sd_event_source *src, int fd, uint32_t revents, void *userdata)
{
        struct session *s = userdata;

        if (s->state == S_HANDSHAKE) {
                session_handshake(s);
        } else {
                if (revents & (EPOLLIN | EPOLLHUP | EPOLLERR) || s->tls.read_wants_write)
                        session_read(s);
                if (s->state != S_CLOSED && (revents & EPOLLOUT || s->tls.write_wants_read))
                        session_flush(s);
                if (s->state != S_CLOSED && (revents & (EPOLLERR | EPOLLHUP))) {
                        /* epoll keeps reporting these whatever we ask for:
                         * with input paused, nothing else would end it. */
                        session_close(s, LOG_LEVEL_INFO, "connection reset by the device");
                        return 0;
                }
                if (s->state == S_CLOSED)
                        return 0;
                /* A write can need a read (write_wants_read) and data may be
                 * sitting decrypted in OpenSSL: epoll won't say so. */
                if (session_wants_input(s) && tls_conn_pending(&s->tls))
                        session_kick_input(s);
        }
        if (s->state != S_CLOSED)
                session_update_events(s);
        return 0;
}

static int session_on_resume(sd_event_source *src, void *userdata)
{
        struct session *s = userdata;

        session_process_input(s);
        if (s->state == S_CLOSED)
                return 0;
        session_read(s);
        if (s->state != S_CLOSED)
                session_update_events(s);
        return 0;
}

static int session_on_timer(sd_event_source *src, uint64_t usec, void *userdata)
{
        struct session *s = userdata;

        switch (s->state) {
        case S_HANDSHAKE:
                s->b->stats.handshakes_failed++;
                s->b->stats.handshakes_failed_timeout++;
                inventory_handshake_failed(s->b->inventory, s->peer, s->tls.verify.subject, "TLS handshake timeout");
                session_close(s, LOG_LEVEL_NOTICE, "TLS handshake timeout");
                break;
        case S_WAIT_CONNECT:
                session_close(s, LOG_LEVEL_NOTICE, "no CONNECT within handshake_timeout");
                break;
        case S_FLUSHING:
                session_close(s, LOG_LEVEL_DEBUG, NULL);
                break;
        default: {
                /* §3.1.2.10: 1.5 × keepalive without a packet. Not while the
                 * bridge itself stopped reading (back-pressure): the device's
                 * PINGREQ may be waiting in the socket. */
                if (s->input_paused || s->paused_backlog)
                        s->last_packet = session_now(s);
                uint64_t deadline = s->last_packet + (uint64_t) s->keepalive * 1500000ULL;
                if (session_now(s) < deadline) {
                        /* A packet came since the timer was set. */
                        sd_event_source_set_time(s->timer, deadline);
                        sd_event_source_set_enabled(s->timer, SD_EVENT_ONESHOT);
                        break;
                }
                s->b->stats.keepalive_timeouts++;
                session_close(s, LOG_LEVEL_NOTICE, "keepalive timeout");
                break;
        }
        }
        return 0;
}

void session_update_events(struct session *s)
{
        uint32_t ev;

        if (s->state == S_CLOSED)
                return;
        ev = tls_conn_poll_events(&s->tls, s->out_off < s->out_len, session_wants_input(s));
        if (ev != s->events) {
                sd_event_source_set_io_events(s->io, ev);
                s->events = ev;
        }
}

/* ---- life and death ---- */

void session_close(struct session *s, enum log_level level, const char *reason)
{
        if (s->state == S_CLOSED)
                return;
        if (reason) {
                struct log_fields f = session_fields(s, reason);
                log_msg(level, &f, "device disconnected");
        }
        if (s->state == S_ACTIVE || s->state == S_FLUSHING) {
                char why[256];
                (void) session_write_out(s, why, sizeof why);
        }
        tls_conn_shutdown(&s->tls);
        /* Gone before the broker accepted it: an older connection of the
         * device that it was to take over carries on. */
        if (s->state == S_UPLINK_CONNECTING || s->state == S_FLUSHING)
                session_takeover_failed(s);
        s->state = S_CLOSED;
        /* The uplink goes now, not when reaped: with DISCONNECT after the
         * device's own, without it otherwise (the will fires, §3.1.2.5, and
         * the broker keeps what the device did not acknowledge, §4.4). */
        session_close_uplink(s, s->clean_disconnect);
        session_release_outbox(s);
        sd_event_source_set_enabled(s->io, SD_EVENT_OFF);
        sd_event_source_set_enabled(s->timer, SD_EVENT_OFF);
        sd_event_source_set_enabled(s->resume, SD_EVENT_OFF);
        sd_event_source_set_enabled(s->reconnect, SD_EVENT_OFF);
        LIST_REMOVE(sessions, s->b->sessions, s);
        session_unmark_busy(s);
        s->reap_next = s->b->reap;
        s->b->reap = s;
        bridge_schedule_reap(s->b);
}

unsigned session_revalidate_all(struct bridge *b, SSL_CTX *ctx)
{
        struct session *s, *next;
        unsigned closed = 0;

        LIST_FOREACH_SAFE(sessions, s, next, b->sessions) {
                char why[128], reason[192];
                if (s->state == S_HANDSHAKE) {
                        session_close(s, LOG_LEVEL_NOTICE, "TLS handshake under the previous CA/CRL, cut by a reload");
                        closed++;
                        continue;
                }
                if (s->state == S_CLOSED || tls_server_peer_reverify(s->tls.ssl, ctx, why, sizeof why) != -EPERM)
                        continue;
                snprintf(reason, sizeof reason, "certificate no longer verifies after reload: %s", why);
                session_close(s, LOG_LEVEL_WARNING, reason);
                b->stats.revoked_on_reload++;
                closed++;
        }
        return closed;
}

struct session *session_reap_next(struct bridge *b)
{
        struct session *s = b->reap;
        if (s)
                b->reap = s->reap_next;
        return s;
}

void session_free(struct session *s)
{
        if (!s)
                return;
        if (s->state != S_CLOSED)
                LIST_REMOVE(sessions, s->b->sessions, s);
        session_unmark_busy(s);
        session_close_uplink(s, s->clean_disconnect);
        if (s->counted_device) {
                s->b->n_devices--;
                bridge_notify_status(s->b);
        }
        s->b->n_sessions--;
        sd_event_source_disable_unref(s->io);
        sd_event_source_disable_unref(s->timer);
        sd_event_source_disable_unref(s->resume);
        sd_event_source_disable_unref(s->reconnect);
        tls_conn_done(&s->tls);
        conn_limits_remove(s->b->conn_limits, s->fd); /* before close: the number is reused */
        if (s->fd >= 0)
                close(s->fd);
        session_release_outbox(s);
        outbox_free(s->outbox);
        session_up_free(s);
        free(s->spool_path);
        free(s->up_client_id);
        free(s->up_user);
        if (s->up_pass)
                OPENSSL_cleanse(s->up_pass, s->up_pass_len);
        free(s->up_pass);
        free(s->will_topic);
        free(s->will_payload);
        free(s->in);
        free(s->out);
        free(s->client_id);
        free(s->mountpoint);
        free(s);
}

void session_shutdown(struct session *s)
{
        if (s->state != S_HANDSHAKE && s->state != S_CLOSED) {
                char why[256];
                (void) session_write_out(s, why, sizeof why);
                tls_conn_shutdown(&s->tls);
        }
        session_free(s);
}

int session_new(struct bridge *b, int fd, const struct sockaddr *peer, socklen_t peer_len)
{
        struct session *s;
        int r;

        s = calloc(1, sizeof *s);
        if (!s) {
                close(fd);
                return -ENOMEM;
        }
        s->b = b;
        s->fd = fd;
        s->state = S_HANDSHAKE;
        s->since = s->last_activity = realtime_usec();
        log_format_peer(s->peer, sizeof s->peer, peer);
        LIST_PREPEND(sessions, b->sessions, s);
        b->n_sessions++;

        r = tls_conn_init(&s->tls, b->device_ctx, fd);
        if (r < 0)
                goto fail;
        s->events = EPOLLIN;
        r = sd_event_add_io(b->event, &s->io, fd, s->events, session_io, s);
        if (r < 0)
                goto fail;
        r = sd_event_add_time(b->event, &s->timer, CLOCK_MONOTONIC, 0, 100 * 1000, session_on_timer, s);
        if (r < 0)
                goto fail;
        r = sd_event_add_defer(b->event, &s->resume, session_on_resume, s);
        if (r < 0)
                goto fail;
        sd_event_source_set_enabled(s->resume, SD_EVENT_OFF);
        session_set_deadline(s, (uint64_t) b->cfg.listener.handshake_timeout * 1000000ULL);
        return 0;
fail:
        session_free(s);
        return r;
}

void session_foreach_device(struct bridge *b, void (*fn)(const struct device_view *v, void *u), void *u)
{
        for (struct session *s = b->sessions; s; s = s->sessions_next) {
                if (s->state == S_HANDSHAKE || s->state == S_CLOSED)
                        continue;
                struct device_view v = {
                        .cn = s->cn,
                        .client_id = s->client_id,
                        .peer = s->peer,
                        .connected = s->counted_device,
                        .since = (time_t) (s->since / 1000000),
                        .last_activity = (time_t) (s->last_activity / 1000000),
                        .msgs_from_device = s->msgs_in,
                        .msgs_to_device = s->msgs_out,
                        .info = &s->info,
                };
                fn(&v, u);
        }
}
