/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * The device session's state, shared by the files that make it up — each
 * one job, each calling only into the ones below it and into the layers
 * under the session:
 *
 *   session.c          life and death, timers, the TLS handshake, the
 *                      device's wire (read, frame, dispatch, write)
 *   session_connect.c  CONNECT: checks, identity and takeover, the uplink's
 *                      CONNECT and CONNACK, offline acceptance, reconnects
 *   session_up.c       device → broker: PUBLISH, PUBREL, SUBSCRIBE,
 *                      UNSUBSCRIBE (and their answers from the broker)
 *   session_down.c     broker → device: PUBLISH, PUBREL, and the device's
 *                      acknowledgements going back to the broker
 *
 * Not part of the daemon's API: only session*.c include this.
 */

#include <stdbool.h>
#include <stdint.h>
#include <arpa/inet.h>
#include <systemd/sd-event.h>

#include "bridge.h"
#include "list.h"
#include "log.h"
#include "mqtt_codec.h"
#include "session.h"
#include "device_info.h"
#include "sub_table.h"
#include "tls_conn.h"
#include "uplink.h"

#define SESSION_READ_CHUNK 4096
#define SESSION_FLUSH_TIMEOUT_USEC (5 * 1000 * 1000ULL)

enum session_state {
        S_HANDSHAKE,            /* TLS handshake running */
        S_WAIT_CONNECT,         /* TLS up, waiting for CONNECT */
        S_UPLINK_CONNECTING,    /* CONNECT received, waiting for the broker's CONNACK */
        S_ACTIVE,               /* CONNACK 0 sent */
        S_FLUSHING,             /* last packets (a refusing CONNACK) going out, then close */
        S_CLOSED,               /* on the reap list */
};

/* A SUBSCRIBE or UNSUBSCRIBE in flight upstream. dev_pid 0: the bridge's
 * own (a resubscription), whose answer goes nowhere. */
struct pending_req {
        struct pending_req *next;
        enum mqtt_type type;    /* MQTT_SUBSCRIBE or MQTT_UNSUBSCRIBE */
        uint16_t up_pid;
        uint16_t dev_pid;
        size_t count;           /* device's entries */
        size_t sent;            /* of those, sent upstream */
        uint8_t codes[];        /* SUBSCRIBE: per entry, 0x80 if refused here, else 0xff (from the broker) */
};

struct session {
        struct bridge *b;
        LIST_FIELDS(struct session, sessions);
        LIST_FIELDS(struct session, busy); /* b->busy: holds buffers (session_mark_busy) */
        bool on_busy_list;
        bool busy_now;            /* I/O since the last trim sweep */
        struct session *reap_next;
        enum session_state state;
        int fd;
        sd_event_source *io;
        sd_event_source *timer;   /* handshake / CONNECT / keepalive / flush deadline */
        sd_event_source *resume;  /* deferred input processing */
        sd_event_source *reconnect;
        uint32_t events;
        struct tls_conn tls;
        struct device_info info;  /* TLS facts for --status (device_info.h), set at handshake end */
        uint64_t since;           /* CLOCK_REALTIME usec of the accept */

        char peer[INET6_ADDRSTRLEN + 8];
        char cn[256];             /* the identity: certificate CN (username without a certificate) */
        char *client_id;          /* as the device sent it */
        char *mountpoint;         /* expanded, or NULL */
        uint16_t keepalive;
        uint64_t last_packet;     /* CLOCK_MONOTONIC usec of the last whole packet */
        uint8_t protocol_level;
        bool counted_device;      /* in b->n_devices */
        bool clean_session;
        bool clean_disconnect;    /* DISCONNECT received: no will */
        bool input_paused;        /* in-flight limit or uplink backlog: not reading */
        bool paused_backlog;      /* output over max_queued_bytes: not reading */
        bool uplink_paused;       /* device output full: uplink not read */
        bool superseded;          /* a newer connection of this identity takes the client id over */

        uint8_t *in;
        size_t in_len, in_cap;
        uint8_t *out;
        size_t out_len, out_off, out_cap;

        struct uplink *up;
        bool up_connected;        /* CONNACK 0 on the current uplink */
        bool up_session;          /* the broker holds a session for us (not clean) */
        struct uplink_params up_params; /* to connect again; buffers owned below */
        char *up_client_id, *will_topic;
        uint8_t *up_user, *up_pass, *will_payload;
        size_t up_user_len, up_pass_len;
        unsigned backoff_sec;
        struct outbox *outbox;    /* device → broker, with the spool */
        char *spool_path;

        struct sub_table subs;    /* upstream form, to make again when the broker lost them */
        char **unsent_unsubs;     /* UNSUBSCRIBEs made while the uplink was away */
        unsigned n_unsent_unsubs;
        struct pending_req *reqs;

        uint64_t msgs_in, msgs_out; /* PUBLISHes from / to the device */
        uint64_t last_activity;   /* CLOCK_REALTIME usec */
};

/* session.c */
const struct config *session_cfg(const struct session *s);
struct log_fields session_fields(const struct session *s, const char *reason);
uint64_t session_now(const struct session *s);
void session_close(struct session *s, enum log_level level, const char *reason);
void session_set_deadline(struct session *s, uint64_t usec_from_now);
void session_arm_keepalive(struct session *s);
uint8_t *session_out_reserve(struct session *s, size_t n, bool limited);
bool session_out_full(const struct session *s);
void session_send_ack(struct session *s, enum mqtt_type type, uint16_t pid);
void session_send_connack(struct session *s, bool session_present, uint8_t rc);
void session_flush(struct session *s);
void session_update_events(struct session *s);
void session_kick_input(struct session *s);
void session_mark_busy(struct session *s);

/* session_connect.c */
void session_on_connect(struct session *s, const struct mqtt_connect *c);
int session_connect_uplink(struct session *s, const char **why);
void session_close_uplink(struct session *s, bool graceful);
void session_release_outbox(struct session *s);
void session_takeover_failed(struct session *s);

/* session_up.c */
extern const struct outbox_ops session_outbox_ops;
void session_on_publish(struct session *s, const struct mqtt_publish *p);
void session_on_pubrel(struct session *s, uint16_t pid);
void session_on_subscribe(struct session *s, const struct mqtt_list *l);
void session_on_unsubscribe(struct session *s, const struct mqtt_list *l);
bool session_up_on_answer(struct session *s, const struct mqtt_packet *pkt);
void session_up_resync(struct session *s, bool session_present);
void session_up_lost(struct session *s);
void session_up_free(struct session *s);
bool session_pid_busy(void *ud, uint16_t pid);

/* session_down.c */
void session_down_on_packet(struct session *s, const struct mqtt_packet *pkt);
void session_down_on_device_ack(struct session *s, enum mqtt_type type, uint16_t pid);
void session_down_output_drained(struct session *s);
