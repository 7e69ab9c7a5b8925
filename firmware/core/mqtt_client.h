/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * mqtt_client — the firmware's MQTT 3.1.1 client state machine.
 *
 * Portable C11 with no Arduino, no allocation and no I/O of its own: all
 * memory is inside struct mqtt_client (buffers sized by the macros below),
 * bytes move through a struct edge_transport, packets are built and
 * checked by the shared codec (lib/mqtt_codec.h, lib/mqtt_codec.c).
 *
 * What it does:
 *   - connects through transport->connect(), sends CONNECT (with the will,
 *     §3.1.2.5), waits for CONNACK (§3.2), then publishes the retained
 *     birth message if one is configured;
 *   - QoS 0, 1 and 2 publish. QoS 1/2 messages live in a fixed outbox ring
 *     until PUBACK / PUBCOMP: they are resent with DUP=1 after retry_ms
 *     and after every reconnect (§4.4), PUBREL likewise. A message the
 *     outbox accepted is never dropped by the client (only a reboot loses
 *     RAM);
 *   - QoS 0, 1 and 2 receive (§4.3; QoS 2 by "method B": deliver on
 *     PUBLISH, remember the id until PUBREL so a resent PUBLISH is not
 *     delivered twice);
 *   - SUBSCRIBE / UNSUBSCRIBE (results reported as events);
 *   - keepalive: PINGREQ after keepalive seconds without sending anything
 *     (§3.1.2.10), connection dropped when PINGRESP does not come back
 *     within ping_timeout_ms;
 *   - reconnect with exponential backoff and jitter after any failure;
 *   - anything malformed or out of place from the server closes the
 *     connection (§4.8: "the receiver MUST close the Network Connection")
 *     and reconnects.
 *
 * Threading: none. Call everything from one thread/loop. Events are
 * delivered synchronously from inside mqtt_client_poll() (and from
 * mqtt_client_abort()); an event handler may call mqtt_client_publish(),
 * _subscribe(), _unsubscribe(), _disconnect() and _abort().
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "edge_transport.h"
#include "mqtt_codec.h"

/* Buffer sizes (bytes / entries). Override with -D at build time. The
 * defaults keep struct mqtt_client near 6 KB, sized for an ESP8266 with
 * ~40 KB free heap and 512-byte TLS fragments. */
#ifndef MQTT_CLIENT_RX_BUF
#define MQTT_CLIENT_RX_BUF 1024       /* largest packet we accept */
#endif
#ifndef MQTT_CLIENT_TX_BUF
#define MQTT_CLIENT_TX_BUF 1024       /* staging for outgoing packets */
#endif
#ifndef MQTT_CLIENT_OUTBOX
#define MQTT_CLIENT_OUTBOX 8          /* QoS 1/2 messages in flight */
#endif
#ifndef MQTT_CLIENT_OUTBOX_PACKET
#define MQTT_CLIENT_OUTBOX_PACKET 384 /* largest encoded QoS 1/2 PUBLISH */
#endif
#ifndef MQTT_CLIENT_QOS2_RX
#define MQTT_CLIENT_QOS2_RX 16        /* inbound QoS 2 ids awaiting PUBREL */
#endif

enum mqtt_client_state {
        MQTT_CLIENT_STOPPED = 0,  /* not started, or after disconnect/abort */
        MQTT_CLIENT_WAITING,      /* closed; connects when the backoff ends */
        MQTT_CLIENT_CONNECTING,   /* CONNECT sent, CONNACK pending */
        MQTT_CLIENT_CONNECTED,    /* CONNACK 0 received */
        MQTT_CLIENT_DISCONNECTING,/* DISCONNECT queued, draining */
};

struct mqtt_client_config {
        uint8_t protocol_level;   /* MQTT_PROTOCOL_LEVEL_311 (default if 0) or _31 */
        const char *client_id;    /* NUL-terminated; "" lets the server pick (needs clean_session) */
        const char *username;     /* NULL = none */
        const char *password;     /* NULL = none */
        bool clean_session;
        uint16_t keepalive;       /* seconds; 0 = no keepalive */

        const char *will_topic;   /* NULL = no will */
        const uint8_t *will_payload;
        size_t will_payload_len;
        uint8_t will_qos;
        bool will_retain;

        const char *birth_topic;  /* NULL = none; else retained QoS 1 birth_payload after each CONNACK */
        const char *birth_payload;/* NULL = "online" */

        uint32_t retry_ms;        /* resend unacknowledged QoS 1/2 after this; 0 = only on reconnect */
        uint32_t connack_timeout_ms; /* 0 = 10000 */
        uint32_t ping_timeout_ms; /* PINGRESP wait; 0 = keepalive/2 (at least 1000) */
        uint32_t backoff_base_ms; /* first retry delay; 0 = 1000 */
        uint32_t backoff_max_ms;  /* cap; 0 = 60000 */
        uint32_t seed;            /* jitter seed (e.g. ESP.random(), getrandom()) */
};

enum mqtt_client_event_type {
        MQTT_CLIENT_EV_TRANSPORT_UP,  /* connect() ok, CONNECT queued: a handler may queue more (§3.1.4 allows it) */
        MQTT_CLIENT_EV_CONNECT_FAILED,/* connect() failed: err, retry_in_ms */
        MQTT_CLIENT_EV_CONNACK,       /* return_code, session_present (rc != 0: connection is then closed) */
        MQTT_CLIENT_EV_MESSAGE,       /* publish (points into the client's rx buffer: valid during the call only) */
        MQTT_CLIENT_EV_PUBACK,        /* packet_id, internal: a QoS 1 publish is acknowledged */
        MQTT_CLIENT_EV_PUBCOMP,       /* packet_id, internal: a QoS 2 publish is complete */
        MQTT_CLIENT_EV_SUBACK,        /* packet_id, codes[n_codes] */
        MQTT_CLIENT_EV_UNSUBACK,      /* packet_id */
        MQTT_CLIENT_EV_DROPPED,       /* incoming packet over MQTT_CLIENT_RX_BUF, skipped: err = -EMSGSIZE */
        MQTT_CLIENT_EV_CONNECTION_LOST,/* err, why; retry_in_ms (0 when stopped) */
        MQTT_CLIENT_EV_CLOSED,        /* after mqtt_client_disconnect() completed or mqtt_client_abort() */
};

struct mqtt_client_event {
        enum mqtt_client_event_type type;
        int err;                  /* negative errno; see the lost-reasons below */
        const char *why;          /* static text or NULL */
        uint32_t retry_in_ms;
        uint16_t packet_id;
        bool internal;            /* PUBACK/PUBCOMP of the birth message */
        bool session_present;
        uint8_t return_code;
        const struct mqtt_publish *publish;
        const uint8_t *codes;
        size_t n_codes;
};
/*
 * CONNECTION_LOST err values:
 *   -ECONNRESET  the transport ended (peer closed, TCP reset, TLS closed)
 *   -EBADMSG / -EPROTO  the server sent a malformed or out-of-place packet
 *   -ETIMEDOUT   no CONNACK in time, or no PINGRESP in time
 *   -ECONNREFUSED CONNACK with a non-zero return code
 *   other        whatever transport->read/write returned
 */

typedef void (*mqtt_client_event_fn)(void *user, const struct mqtt_client_event *ev);

enum mqtt_outbox_state {
        MQTT_OUTBOX_FREE = 0,
        MQTT_OUTBOX_PUBLISH,      /* waiting for PUBACK (QoS 1) / PUBREC (QoS 2) */
        MQTT_OUTBOX_PUBREL,       /* QoS 2: PUBREC seen, waiting for PUBCOMP */
};

struct mqtt_outbox_slot {
        uint8_t state;            /* enum mqtt_outbox_state */
        bool pending;             /* needs (re)transmission */
        bool sent;                /* transmitted at least once: resend with DUP=1 */
        bool internal;            /* the birth message */
        uint8_t qos;
        uint16_t packet_id;
        uint16_t len;             /* encoded PUBLISH */
        uint32_t sent_at;
        uint8_t packet[MQTT_CLIENT_OUTBOX_PACKET];
};

/* Everything the client owns. Treat as opaque; the fields are public only
 * so the struct can be a static or stack object (no malloc). */
struct mqtt_client {
        struct mqtt_client_config cfg;
        const struct edge_transport *tp;
        mqtt_client_event_fn on_event;
        void *user;

        enum mqtt_client_state state;
        bool muted;
        bool connack_seen;
        bool ping_outstanding;
        uint32_t attempt;         /* consecutive failed attempts */
        uint32_t next_attempt_at;
        uint32_t connect_sent_at;
        uint32_t last_tx_at;
        uint32_t ping_sent_at;
        uint32_t rng;
        uint16_t next_packet_id;

        size_t rx_len;
        size_t rx_skip;           /* bytes of an oversized packet still to discard */
        size_t tx_len;
        uint8_t rx[MQTT_CLIENT_RX_BUF];
        uint8_t tx[MQTT_CLIENT_TX_BUF];

        size_t ob_head;           /* oldest slot of the ring */
        size_t ob_count;          /* slots between head and tail (free ones included) */
        struct mqtt_outbox_slot outbox[MQTT_CLIENT_OUTBOX];

        uint16_t qos2_rx[MQTT_CLIENT_QOS2_RX]; /* 0 = free */
};

/*
 * Exponential backoff with jitter, a pure function.
 * cap = min(max_ms, base_ms * 2^attempt); the result is uniformly spread
 * over [cap/2, cap] by rnd ("equal jitter": the delay keeps growing, and
 * a fleet that lost the broker at the same moment does not come back in
 * step). attempt 0 is the first retry.
 */
uint32_t mqtt_backoff_delay_ms(uint32_t attempt, uint32_t base_ms, uint32_t max_ms, uint32_t rnd);

/* Set up c (any previous content is discarded). cfg is copied, but the
 * strings and payloads it points to must outlive c. tp and user are kept.
 * The client starts STOPPED: call mqtt_client_start(). */
void mqtt_client_init(struct mqtt_client *c, const struct mqtt_client_config *cfg,
                      const struct edge_transport *tp, mqtt_client_event_fn on_event, void *user);

/* STOPPED → WAITING with an immediate first attempt (the backoff counter
 * is reset). No effect in other states. The outbox is kept. */
void mqtt_client_start(struct mqtt_client *c);

/*
 * Do all pending work without blocking (except inside transport->connect):
 * connect when due, read and handle packets, run timers, (re)send, write.
 * Call it whenever the transport may have data and at least every
 * mqtt_client_next_timeout_ms(). Returns 0, or -ENOTCONN when STOPPED.
 */
int mqtt_client_poll(struct mqtt_client *c);

/* Milliseconds until the client next needs mqtt_client_poll() for a timer
 * (0 = now; UINT32_MAX = no timer pending, e.g. when STOPPED). */
uint32_t mqtt_client_next_timeout_ms(const struct mqtt_client *c);

/*
 * Publish. Copies topic and payload (caller keeps ownership).
 * QoS 0: queued for sending only while CONNECTING/CONNECTED; returns 0, or
 *        -ENOTCONN / -ENOBUFS (no room in the tx buffer now: try later).
 * QoS 1/2: stored in the outbox, sent now if connected, otherwise after
 *        the next CONNECT; returns the packet identifier (> 0), or
 *        -ENOBUFS (outbox full: poll and try later) or -EMSGSIZE (encoded
 *        packet over MQTT_CLIENT_OUTBOX_PACKET). Completion is reported by
 *        an EV_PUBACK / EV_PUBCOMP event with that id.
 * -EINVAL for an invalid topic name (§4.7) or qos > 2.
 */
int mqtt_client_publish(struct mqtt_client *c, const char *topic, const void *payload, size_t len,
                        uint8_t qos, bool retain);

/* SUBSCRIBE (§3.8) to n filters in one packet, or UNSUBSCRIBE (§3.10).
 * Only while CONNECTING/CONNECTED; not retransmitted (a lost connection
 * loses it; resubscribe on the next EV_CONNACK). Returns the packet
 * identifier (> 0), -ENOTCONN, -ENOBUFS or -EINVAL. */
int mqtt_client_subscribe(struct mqtt_client *c, const char *const *filters, const uint8_t *qos, size_t n);
int mqtt_client_unsubscribe(struct mqtt_client *c, const char *const *filters, size_t n);

/* Queue DISCONNECT (§3.14: the server then discards the will), drain it,
 * close gracefully, go STOPPED and report EV_CLOSED, all from later
 * mqtt_client_poll() calls. Unconnected: goes STOPPED at once. */
void mqtt_client_disconnect(struct mqtt_client *c);

/* Drop the connection now without DISCONNECT (the server publishes the
 * will) and go STOPPED; reports EV_CLOSED if it was open. */
void mqtt_client_abort(struct mqtt_client *c);

/* Stop sending anything at all (no PINGREQ, no acknowledgements) while
 * still reading, so the server's keepalive timer expires (§3.1.2.10,
 * 1.5 × keepalive). When the server then closes, the client goes STOPPED
 * instead of reconnecting. For tests of the server side. */
void mqtt_client_mute(struct mqtt_client *c);

enum mqtt_client_state mqtt_client_get_state(const struct mqtt_client *c);
/* QoS 1/2 messages still awaiting their acknowledgement. */
size_t mqtt_client_inflight(const struct mqtt_client *c);
/* Bytes queued in the client not yet accepted by the transport. */
size_t mqtt_client_tx_pending(const struct mqtt_client *c);
