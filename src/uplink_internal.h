/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * uplink_internal — what uplink.c (the link's life: transport, TLS,
 * buffers, the owner's API) and uplink_wire.c (what it says and hears in
 * MQTT: CONNACK, the broker's packets, keepalive) share. Not for other
 * modules: they use uplink.h.
 */

#include <stdbool.h>
#include <stdint.h>

#include "bytebuf.h"
#include "dialer.h"
#include "list.h"
#include "log.h"
#include "tls_conn.h"
#include "uplink.h"

#define USEC_PER_SEC 1000000ULL
#define UPLINK_HIGH_WATER (64u * 1024u)  /* uplink_writable() false from here */
#define UPLINK_LOW_WATER (16u * 1024u)   /* on_writable below this */
#define UPLINK_LINGER_USEC (5 * USEC_PER_SEC) /* a detached link's last words */
#define UPLINK_READ_CHUNK (16u * 1024u)  /* one read(2) / SSL_read: one TLS record */
#define UPLINK_READS_PER_EVENT 16        /* then let other links have the loop */
#define UPLINK_TIMER_ACCURACY_USEC (50 * 1000ULL)
#define UPLINK_DEFAULT_CONNECT_TIMEOUT 10
/* A broker's TLS session is offered again for at most this long after the
 * full handshake that verified its certificate: resumption skips the
 * check, so a broker certificate revoked or replaced (or a capath
 * changed on disk) is seen again within this time. A reload forgets
 * every session at once. */
#define UPLINK_TLS_SESSION_MAX_AGE_USEC (3600 * USEC_PER_SEC)
/* The default cap on a packet from the broker: [limits] max_packet_size's
 * default. The owner sets the configured value with
 * uplink_pool_set_max_packet(); §2.2.3 allows up to 268435460 bytes, far
 * more than any device here could take. */
#define UPLINK_MAX_PACKET_DEFAULT (256u * 1024u)

enum uplink_state {
        UPLINK_TCP_CONNECTING,  /* non-blocking connect(2) under way */
        UPLINK_TLS_HANDSHAKE,
        UPLINK_WAIT_CONNACK,    /* transport up; CONNECT queued or sent */
        UPLINK_CONNECTED,       /* CONNACK 0 received */
        UPLINK_DEAD,            /* transport closed */
};

struct uplink {
        struct uplink_pool *pool;
        LIST_FIELDS(struct uplink, all);
        const struct uplink_ops *ops;   /* NULL once the owner closed it */
        void *ud;
        enum uplink_state state;

        int fd;                         /* ours; -1 once closed */
        SSL_CTX *ctx;                   /* the pool's at connect time; NULL: no TLS */
        bool tls;
        struct tls_conn tc;             /* when tls */
        sd_event_source *io, *timer, *defer;
        uint32_t events;

        unsigned busy;                  /* our handlers running on the stack */
        bool doomed;                    /* free once busy drops to 0 */
        bool paused;                    /* uplink_pause_input(true) */
        bool input_pass;                /* the defer must look at the input */
        bool write_blocked;             /* write(2) said EAGAIN: wait for EPOLLOUT */
        bool over_high;                 /* reached the high-water mark: on_writable owed */
        bool draining;                  /* closed gracefully: DISCONNECT, then EOF */
        bool write_shut;                /* DISCONNECT written, SHUT_WR done */
        bool tls_resume_offered;        /* the pool's session for this host went into the ClientHello */

        struct bytebuf out;             /* queued for the broker */
        size_t reserved;                /* what uplink_reserve gave room for */
        struct bytebuf in;              /* a partial packet, or input held while paused */

        uint64_t t_sent, t_recv;        /* CLOCK_MONOTONIC usec of the last write / read */
        uint64_t deadline;              /* connect timeout, or the linger limit */
        uint64_t redial_at;             /* a full Unix listen queue: dial again then (0: not waiting) */
        uint16_t keepalive;
        unsigned connect_timeout;

        struct dialer dialer;           /* the broker's addresses; .peer is the current one */
        char *tls_name;                 /* verified against the SAN; NULL: the context's */
        char *name, *client_id;         /* for log lines */
};

/* The TLS session of the last full handshake with one [upstream] host,
 * offered by every new link to that host (TLS resumption: no certificate
 * chain to send, parse and verify again; the parsed certificate is shared
 * instead of held by each link). */
struct uplink_tls_session {
        SSL_SESSION *sess;              /* NULL: none yet */
        char *name;                     /* the name it was verified for; "" = the context's */
        uint64_t since;                 /* CLOCK_MONOTONIC usec it was stored */
};

struct uplink_pool {
        sd_event *event;
        const struct config_upstream *cfg;
        SSL_CTX *ctx;
        size_t max_packet;
        struct uplink *all;
        unsigned n_open, n_connected;
        unsigned host_pref;             /* [upstream] host tried first: the one that worked last */
        struct uplink_tls_session tls_sessions[CONFIG_MAX_HOSTS]; /* by [upstream] host; for ctx only */
        char why[256];                  /* uplink_connect's reason */
        uint8_t scratch[UPLINK_READ_CHUNK]; /* handlers never nest: one read buffer for all */
};

static inline bool uplink_alive(const struct uplink *u)
{
        return !u->doomed && u->state != UPLINK_DEAD;
}

static inline struct log_fields uplink_fields(const struct uplink *u, const char *reason)
{
        return (struct log_fields) { .cn = u->name, .client_id = u->client_id, .reason = reason };
}

/* ---- uplink.c ---- */

/* CLOCK_MONOTONIC now, as the loop sees it (usec). */
uint64_t uplink_now(const struct uplink_pool *p);
/* The link failed: close the transport, tell the owner (on_lost) or, when
 * detached, log it and free it. No-op on a dead link. */
void uplink_lost(struct uplink *u, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Close the transport now: no DISCONNECT, no close_notify. */
void uplink_teardown(struct uplink *u);
/* Tear down; free now, or when the handler on the stack returns. */
void uplink_doom(struct uplink *u);
/* Bracket every event handler: a link closed meanwhile is freed on leave. */
void uplink_enter(struct uplink *u);
void uplink_leave(struct uplink *u);
/* Run the defer handler this loop turn (write the output, look at input). */
void uplink_schedule(struct uplink *u);

/* Which of several [upstream] hosts new links try first: the one that
 * last got a CONNACK 0 (sticky, so links do not flap between nodes), moved
 * to the next host when the preferred one fails before CONNACK. Log a
 * line when the preference changes. */
void uplink_pool_host_failed(struct uplink_pool *p, unsigned host, const char *why);
void uplink_pool_host_worked(struct uplink_pool *p, unsigned host);

/* ---- uplink_wire.c ---- */

/* Re-arm the link's one timer for what is due next. */
void uplink_arm_timer(struct uplink *u, uint64_t now);
/* The timer's handler: connect timeout, linger limit, keepalive. */
int uplink_on_timer(sd_event_source *s, uint64_t usec, void *userdata);
void uplink_redial(struct uplink *u, uint64_t now);
/* Queue a PINGREQ or DISCONNECT. Returns 0 or -ENOMEM. */
int uplink_queue_empty_packet(struct uplink *u, enum mqtt_type type);
/* Deliver the whole packets at the start of buf; returns the bytes used.
 * Stops early when the link is paused, closed or lost. */
size_t uplink_feed(struct uplink *u, const uint8_t *buf, size_t len);
/* The same for the input held in u->in. */
void uplink_feed_held(struct uplink *u);
