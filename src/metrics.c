/* SPDX-License-Identifier: MIT */
/*
 * metrics — Prometheus text exposition format 0.0.4 over a minimal
 * HTTP/1.0 server, and --status.
 *
 * Why not a library: the endpoint answers one fixed request. Every scrape
 * is bounded (request size, connection count, a deadline) so a stuck or
 * hostile scraper costs a file descriptor for at most a few seconds and
 * never blocks the loop the devices run on.
 *
 * Names follow https://prometheus.io/docs/practices/naming/: a
 * mqtt_edge_bridge_ prefix, _total on counters, base units (bytes,
 * seconds), and one metric with a label where the parts add up to a whole
 * (direction, qos, reason), so sum() means something.
 */

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "build-config.h"
#include "bridge.h"
#include "conn_limits.h"
#include "inventory.h"
#include "list.h"
#include "log.h"
#include "metrics.h"
#include "status.h"
#include "uplink.h"

#define STATUS_TIMEOUT_SEC 3
#define STATUS_MAX_REPLY (1024 * 1024)

struct metrics_client;

struct metrics {
        struct bridge *b;
        int fd;
        uint16_t port;
        sd_event_source *io;
        struct metrics_client *clients;
        unsigned n_clients;
};

struct metrics_client {
        struct metrics *m;
        LIST_FIELDS(struct metrics_client, clients);
        int fd;
        sd_event_source *io;
        sd_event_source *timer;
        bool responded;          /* response queued: write it, then drain until EOF */
        uint64_t accepted_usec;  /* CLOCK_MONOTONIC, to find the oldest */
        size_t req_len;
        char req[METRICS_MAX_REQUEST + 1];
        char *resp;
        size_t resp_len, resp_off;
};

/* ---- rendering ---- */

/* A label value: backslash, double quote and newline escaped (exposition
 * format 0.0.4); a CN is the device's to choose. */
static void label_value(FILE *f, const char *v)
{
        for (; *v; v++) {
                if (*v == '\\' || *v == '"')
                        fprintf(f, "\\%c", *v);
                else if (*v == '\n')
                        fputs("\\n", f);
                else
                        fputc(*v, f);
        }
}

static void expiry_line(enum inventory_kind kind, const char *name, time_t not_after, void *u)
{
        FILE *f = u;

        fprintf(f, "mqtt_edge_bridge_certificate_expiry_timestamp_seconds{kind=\"%s\",name=\"",
                inventory_kind_name(kind));
        label_value(f, name);
        fprintf(f, "\"} %lld\n", (long long) not_after);
}

static void head(FILE *f, const char *name, const char *type, const char *help)
{
        fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void one(FILE *f, const char *name, const char *type, const char *help, uint64_t v)
{
        head(f, name, type, help);
        fprintf(f, "%s %llu\n", name, (unsigned long long) v);
}

int metrics_render(const struct bridge *b, char **out, size_t *len)
{
        static const char *const dir_label[2] = { "from_device", "to_device" };
        static const char *const connack_reason[BRIDGE_CONNACK_CODES] = {
                NULL, "protocol_version", "identifier_rejected", "server_unavailable",
                "bad_credentials", "not_authorized",
        };
        const struct bridge_stats *st = &b->stats;
        unsigned open = 0, connected = 0;
        char *buf = NULL;
        size_t size = 0;
        FILE *f;

        f = open_memstream(&buf, &size);
        if (!f)
                return -ENOMEM;

        head(f, "mqtt_edge_bridge_build_info", "gauge", "Version of the running daemon (value is always 1).");
        fprintf(f, "mqtt_edge_bridge_build_info{version=\"%s\"} 1\n", PACKAGE_VERSION);
        head(f, "process_start_time_seconds", "gauge", "Start time of the process since the Unix epoch in seconds.");
        fprintf(f, "process_start_time_seconds %llu.%06llu\n",
                (unsigned long long) (b->start_time_usec / 1000000ULL),
                (unsigned long long) (b->start_time_usec % 1000000ULL));

        one(f, "mqtt_edge_bridge_devices_connected", "gauge",
            "Devices past CONNACK 0, each with its own upstream session.", b->n_devices);
        one(f, "mqtt_edge_bridge_tls_connections", "gauge",
            "Device TCP/TLS connections open, in any state (handshake included).", b->n_sessions);
        one(f, "mqtt_edge_bridge_connections_accepted_total", "counter",
            "Device TCP connections accepted.", st->connections_accepted);

        head(f, "mqtt_edge_bridge_connections_refused_total", "counter",
             "Device connections refused: over max_connections, or with a refusing CONNACK, by reason.");
        fprintf(f, "mqtt_edge_bridge_connections_refused_total{reason=\"max_connections\"} %llu\n",
                (unsigned long long) st->refused_max_connections);
        fprintf(f, "mqtt_edge_bridge_connections_refused_total{reason=\"max_handshakes\"} %llu\n",
                (unsigned long long) st->refused_max_handshakes);
        fprintf(f, "mqtt_edge_bridge_connections_refused_total{reason=\"max_connections_per_address\"} %llu\n",
                (unsigned long long) st->refused_per_address);
        fprintf(f, "mqtt_edge_bridge_connections_refused_total{reason=\"accept_error\"} %llu\n",
                (unsigned long long) st->refused_accept_errors);
        for (int i = 1; i < BRIDGE_CONNACK_CODES; i++)
                fprintf(f, "mqtt_edge_bridge_connections_refused_total{reason=\"%s\"} %llu\n",
                        connack_reason[i], (unsigned long long) st->refused_connack[i]);
        fprintf(f, "mqtt_edge_bridge_connections_refused_total{reason=\"proxy_untrusted\"} %llu\n",
                (unsigned long long) st->refused_proxy_untrusted);
        fprintf(f, "mqtt_edge_bridge_connections_refused_total{reason=\"proxy_header\"} %llu\n",
                (unsigned long long) st->refused_proxy_header);
        fprintf(f, "mqtt_edge_bridge_connections_refused_total{reason=\"proxy_unexpected\"} %llu\n",
                (unsigned long long) st->refused_proxy_unexpected);
        one(f, "mqtt_edge_bridge_proxy_headers_total", "counter",
            "PROXY protocol headers accepted from the load balancer ([listener] proxy_protocol).",
            st->proxy_headers);

        one(f, "mqtt_edge_bridge_tls_handshakes_in_progress", "gauge",
            "Device connections not past the TLS handshake yet (waiting for the first byte included).",
            conn_limits_handshakes(b->conn_limits));
        head(f, "mqtt_edge_bridge_idle_connections_closed_total", "counter",
             "Device connections closed before their first TLS byte, by reason.");
        fprintf(f, "mqtt_edge_bridge_idle_connections_closed_total{reason=\"first_byte_timeout\"} %llu\n",
                (unsigned long long) st->closed_first_byte_timeout);
        fprintf(f, "mqtt_edge_bridge_idle_connections_closed_total{reason=\"evicted\"} %llu\n",
                (unsigned long long) st->closed_idle_evicted);

        head(f, "mqtt_edge_bridge_tls_handshakes_total", "counter",
             "Device TLS handshakes completed, full or resumed (by session ID).");
        fprintf(f, "mqtt_edge_bridge_tls_handshakes_total{type=\"full\"} %llu\n",
                (unsigned long long) st->handshakes_full);
        fprintf(f, "mqtt_edge_bridge_tls_handshakes_total{type=\"resumed\"} %llu\n",
                (unsigned long long) st->handshakes_resumed);

        /* The total is counted at every failure; the reasons that are told
         * apart are split out and the rest is "other", so the labels
         * always add up to the total. */
        uint64_t told = st->handshakes_failed_certificate + st->handshakes_failed_timeout;
        head(f, "mqtt_edge_bridge_tls_handshakes_failed_total", "counter",
             "Device TLS handshakes that failed, by reason.");
        fprintf(f, "mqtt_edge_bridge_tls_handshakes_failed_total{reason=\"certificate\"} %llu\n",
                (unsigned long long) st->handshakes_failed_certificate);
        fprintf(f, "mqtt_edge_bridge_tls_handshakes_failed_total{reason=\"timeout\"} %llu\n",
                (unsigned long long) st->handshakes_failed_timeout);
        fprintf(f, "mqtt_edge_bridge_tls_handshakes_failed_total{reason=\"other\"} %llu\n",
                (unsigned long long) (st->handshakes_failed > told ? st->handshakes_failed - told : 0));

        one(f, "mqtt_edge_bridge_devices_revoked_total", "counter",
            "Devices disconnected because their certificate no longer verified after a reload (CA or CRL).",
            st->revoked_on_reload);

        head(f, "mqtt_edge_bridge_messages_total", "counter",
             "PUBLISH packets between devices and the bridge, by direction and QoS.");
        for (int d = 0; d < 2; d++)
                for (int q = 0; q < 3; q++)
                        fprintf(f, "mqtt_edge_bridge_messages_total{direction=\"%s\",qos=\"%d\"} %llu\n",
                                dir_label[d], q,
                                (unsigned long long) (d ? st->msgs_to_devices[q] : st->msgs_from_devices[q]));
        head(f, "mqtt_edge_bridge_payload_bytes_total", "counter",
             "PUBLISH payload bytes between devices and the bridge, by direction and QoS.");
        for (int d = 0; d < 2; d++)
                for (int q = 0; q < 3; q++)
                        fprintf(f, "mqtt_edge_bridge_payload_bytes_total{direction=\"%s\",qos=\"%d\"} %llu\n",
                                dir_label[d], q,
                                (unsigned long long) (d ? st->payload_bytes_to_devices[q]
                                                        : st->payload_bytes_from_devices[q]));
        head(f, "mqtt_edge_bridge_bytes_total", "counter",
             "MQTT bytes (every packet, inside TLS) between devices and the bridge, by direction.");
        fprintf(f, "mqtt_edge_bridge_bytes_total{direction=\"from_device\"} %llu\n",
                (unsigned long long) st->bytes_from_devices);
        fprintf(f, "mqtt_edge_bridge_bytes_total{direction=\"to_device\"} %llu\n",
                (unsigned long long) st->bytes_to_devices);

        one(f, "mqtt_edge_bridge_messages_dropped_total", "counter",
            "Messages for a device dropped: queue full (max_queued_bytes) or over max_packet_size.",
            st->msgs_dropped);
        one(f, "mqtt_edge_bridge_publishes_denied_total", "counter",
            "Device PUBLISH or SUBSCRIBE refused by the topic policy (mountpoint).", st->publishes_denied);
        one(f, "mqtt_edge_bridge_protocol_errors_total", "counter",
            "Device connections closed for an MQTT protocol error.", st->protocol_errors);
        one(f, "mqtt_edge_bridge_keepalive_timeouts_total", "counter",
            "Device connections closed after 1.5 x keepalive of silence.", st->keepalive_timeouts);

        if (b->uplinks)
                uplink_pool_count(b->uplinks, &open, &connected);
        head(f, "mqtt_edge_bridge_upstream_sessions", "gauge",
             "Upstream client sessions, one per device, by state (connecting includes closing).");
        fprintf(f, "mqtt_edge_bridge_upstream_sessions{state=\"connected\"} %u\n", connected);
        fprintf(f, "mqtt_edge_bridge_upstream_sessions{state=\"connecting\"} %u\n",
                open > connected ? open - connected : 0);

        one(f, "mqtt_edge_bridge_spool_messages", "gauge",
            "Messages held in the store-and-forward spool.", st->spool_messages);
        one(f, "mqtt_edge_bridge_spool_bytes", "gauge", "Bytes of the spool files.", st->spool_bytes);
        one(f, "mqtt_edge_bridge_spooled_messages_total", "counter",
            "Device QoS 1/2 messages written to the spool while the broker was away.", st->msgs_spooled);
        one(f, "mqtt_edge_bridge_replayed_messages_total", "counter",
            "Spooled messages sent upstream (QoS 1 redeliveries after a loss included).", st->msgs_replayed);

        head(f, "mqtt_edge_bridge_config_reloads_total", "counter",
             "Configuration reloads (SIGHUP), by result.");
        fprintf(f, "mqtt_edge_bridge_config_reloads_total{result=\"success\"} %llu\n",
                (unsigned long long) st->reloads_ok);
        fprintf(f, "mqtt_edge_bridge_config_reloads_total{result=\"failure\"} %llu\n",
                (unsigned long long) st->reloads_failed);
        one(f, "mqtt_edge_bridge_config_last_reload_successful", "gauge",
            "1 unless the last reload was rejected (the previous configuration is still in use).",
            !st->last_reload_failed);

        head(f, "mqtt_edge_bridge_certificate_expiry_timestamp_seconds", "gauge",
             "notAfter of the listener certificates, the CA and the device certificates seen since start.");
        inventory_foreach_cert(b->inventory, expiry_line, f);

        if (fclose(f) != 0 || !buf) {
                free(buf);
                return -ENOMEM;
        }
        *out = buf;
        *len = size;
        return 0;
}

/* ---- one scrape ---- */

static void client_free(struct metrics_client *c)
{
        if (!c)
                return;
        LIST_REMOVE(clients, c->m->clients, c);
        c->m->n_clients--;
        sd_event_source_disable_unref(c->io);
        sd_event_source_disable_unref(c->timer);
        if (c->fd >= 0)
                close(c->fd);
        free(c->resp);
        free(c);
}

#define CONTENT_TYPE_METRICS "text/plain; version=0.0.4; charset=utf-8"
#define CONTENT_TYPE_TEXT "text/plain; charset=utf-8"

/* Queue the whole response (headers + a copy of body) and switch to writing. */
static int client_respond(struct metrics_client *c, const char *status, const char *content_type,
                          const char *extra_headers, const char *body, size_t body_len)
{
        char hdr[256];
        int n;

        n = snprintf(hdr, sizeof hdr,
                     "HTTP/1.0 %s\r\n"
                     "Content-Type: %s\r\n"
                     "Content-Length: %zu\r\n"
                     "%s"
                     "Connection: close\r\n\r\n",
                     status, content_type, body_len, extra_headers ? extra_headers : "");
        if (n < 0 || (size_t) n >= sizeof hdr)
                return -EINVAL;
        char *out = malloc((size_t) n + body_len);
        if (!out)
                return -ENOMEM;
        memcpy(out, hdr, (size_t) n);
        memcpy(out + n, body, body_len);
        free(c->resp);
        c->resp = out;
        c->resp_len = (size_t) n + body_len;
        c->resp_off = 0;
        c->responded = true;
        sd_event_source_set_io_events(c->io, EPOLLOUT);
        /* The request came in time; the reader gets longer for the
         * response (a few hundred kB at most). */
        (void) sd_event_source_set_time_relative(c->timer, METRICS_TIMEOUT_USEC);
        return 0;
}

static int client_error(struct metrics_client *c, const char *status, const char *extra_headers)
{
        char body[128];
        int n = snprintf(body, sizeof body, "%s\n", status);

        return client_respond(c, status, CONTENT_TYPE_TEXT, extra_headers, body, (size_t) n);
}

/* The request is complete (or too big): decide the one response. */
static int client_handle(struct metrics_client *c, bool too_big)
{
        char *line_end, *method, *target, *version, *save = NULL;

        if (too_big)
                return client_error(c, "431 Request Header Fields Too Large", NULL);

        line_end = strpbrk(c->req, "\r\n");
        if (line_end)
                *line_end = '\0';
        method = strtok_r(c->req, " ", &save);
        target = method ? strtok_r(NULL, " ", &save) : NULL;
        version = target ? strtok_r(NULL, " ", &save) : NULL;
        if (!version || strncmp(version, "HTTP/", 5) != 0 || strtok_r(NULL, " ", &save))
                return client_error(c, "400 Bad Request", NULL);
        if (strcmp(method, "GET") != 0)
                return client_error(c, "405 Method Not Allowed", "Allow: GET\r\n");
        /* A query string changes nothing: Prometheus may add one. */
        target[strcspn(target, "?")] = '\0';
        char *text = NULL;
        size_t len = 0;
        const char *type;
        int r;
        if (strcmp(target, "/metrics") == 0) {
                r = metrics_render(c->m->b, &text, &len);
                type = CONTENT_TYPE_METRICS;
        } else if (strcmp(target, "/status") == 0) {
                r = status_render(c->m->b, false, &text, &len);
                type = CONTENT_TYPE_TEXT;
        } else if (strcmp(target, "/status.json") == 0) {
                r = status_render(c->m->b, true, &text, &len);
                type = "application/json";
        } else
                return client_error(c, "404 Not Found", NULL);
        if (r < 0)
                return client_error(c, "500 Internal Server Error", NULL);
        r = client_respond(c, "200 OK", type, NULL, text, len);
        free(text);
        return r;
}

static bool request_complete(const char *req, size_t len)
{
        /* HTTP/1.0 ends the header block with an empty line; accept a bare
         * LF too, as curl never sends it but people typing do. */
        return memmem(req, len, "\r\n\r\n", 4) || memmem(req, len, "\n\n", 2);
}

static int client_on_io(sd_event_source *src, int fd, uint32_t revents, void *userdata)
{
        struct metrics_client *c = userdata;

        if (!c->responded) {
                ssize_t n = recv(fd, c->req + c->req_len, METRICS_MAX_REQUEST - c->req_len, 0);
                if (n < 0 && (errno == EAGAIN || errno == EINTR))
                        return 0;
                if (n <= 0) {
                        client_free(c);
                        return 0;
                }
                c->req_len += (size_t) n;
                c->req[c->req_len] = '\0';
                bool full = c->req_len == METRICS_MAX_REQUEST;
                if (!request_complete(c->req, c->req_len) && !full)
                        return 0;
                if (client_handle(c, full && !request_complete(c->req, c->req_len)) < 0)
                        client_free(c);
                return 0;
        }

        if (c->resp_off < c->resp_len) {
                if (!(revents & EPOLLOUT))
                        return 0;
                ssize_t n = send(fd, c->resp + c->resp_off, c->resp_len - c->resp_off, MSG_NOSIGNAL);
                if (n < 0 && (errno == EAGAIN || errno == EINTR))
                        return 0;
                if (n < 0) {
                        client_free(c);
                        return 0;
                }
                c->resp_off += (size_t) n;
                if (c->resp_off < c->resp_len)
                        return 0;
                /* All written. Closing now, with unread request bytes in
                 * the socket, would send a RST that can destroy the
                 * response in flight: half-close and wait for the peer's
                 * EOF (bounded by the deadline) instead. */
                shutdown(fd, SHUT_WR);
                sd_event_source_set_io_events(c->io, EPOLLIN);
                return 0;
        }

        char sink[512];
        ssize_t n = recv(fd, sink, sizeof sink, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
                client_free(c);
        return 0;
}

static int client_on_timer(sd_event_source *src, uint64_t usec, void *userdata)
{
        client_free(userdata);
        return 0;
}

/* Every slot is taken: close the oldest connection that has not sent a
 * whole request yet (an idle or slow one; a real scraper sends its request
 * at once). Returns false when every slot is busy sending a response. */
static bool metrics_evict_idle(struct metrics *m)
{
        struct metrics_client *oldest = NULL;

        for (struct metrics_client *c = m->clients; c; c = c->clients_next)
                if (!c->responded && (!oldest || c->accepted_usec <= oldest->accepted_usec))
                        oldest = c;
        if (!oldest)
                return false;
        log_debug("metrics: %u connections open, closing the oldest one without a request", m->n_clients);
        client_free(oldest);
        return true;
}

static int metrics_on_accept(sd_event_source *src, int fd, uint32_t revents, void *userdata)
{
        struct metrics *m = userdata;

        for (int i = 0; i < 16; i++) {
                int cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (cfd < 0) {
                        if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
                                log_warning("metrics: accept: %s", strerror(errno));
                        return 0;
                }
                if (m->n_clients >= METRICS_MAX_CLIENTS && !metrics_evict_idle(m)) {
                        /* Every slot is sending a response: more than this
                         * is a fault or an attack, and the devices come first. */
                        log_debug("metrics: %u scrapes open already, connection closed", m->n_clients);
                        close(cfd);
                        continue;
                }
                struct metrics_client *c = calloc(1, sizeof *c);
                if (!c) {
                        close(cfd);
                        return 0;
                }
                c->m = m;
                c->fd = cfd;
                sd_event_now(m->b->event, CLOCK_MONOTONIC, &c->accepted_usec);
                LIST_PREPEND(clients, m->clients, c);
                m->n_clients++;
                if (sd_event_add_io(m->b->event, &c->io, cfd, EPOLLIN, client_on_io, c) < 0 ||
                    sd_event_add_time_relative(m->b->event, &c->timer, CLOCK_MONOTONIC, METRICS_READ_TIMEOUT_USEC,
                                               100 * 1000, client_on_timer, c) < 0) {
                        client_free(c);
                        continue;
                }
        }
        return 0;
}

int metrics_new(struct bridge *b, const char *address, uint16_t port, struct metrics **out)
{
        struct sockaddr_storage ss = { 0 };
        socklen_t len;
        struct metrics *m;
        int fd, r, one = 1;

        if (inet_pton(AF_INET6, address, &((struct sockaddr_in6 *) &ss)->sin6_addr) == 1) {
                ((struct sockaddr_in6 *) &ss)->sin6_family = AF_INET6;
                ((struct sockaddr_in6 *) &ss)->sin6_port = htons(port);
                len = sizeof(struct sockaddr_in6);
        } else if (inet_pton(AF_INET, address, &((struct sockaddr_in *) &ss)->sin_addr) == 1) {
                ((struct sockaddr_in *) &ss)->sin_family = AF_INET;
                ((struct sockaddr_in *) &ss)->sin_port = htons(port);
                len = sizeof(struct sockaddr_in);
        } else {
                log_error("[metrics] bind_address: \"%s\" is not an IPv4 or IPv6 address", address);
                return -EINVAL;
        }

        fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
                r = -errno;
                log_error("metrics: socket: %s", strerror(errno));
                return r;
        }
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, (struct sockaddr *) &ss, len) < 0 || listen(fd, METRICS_MAX_CLIENTS) < 0) {
                r = -errno;
                log_error("metrics: cannot listen on %s port %u: %s", address, port, strerror(errno));
                close(fd);
                return r;
        }
        m = calloc(1, sizeof *m);
        if (!m) {
                close(fd);
                return -ENOMEM;
        }
        m->b = b;
        m->fd = fd;
        len = sizeof ss;
        getsockname(fd, (struct sockaddr *) &ss, &len);
        m->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *) &ss)->sin6_port
                                                 : ((struct sockaddr_in *) &ss)->sin_port);
        r = sd_event_add_io(b->event, &m->io, fd, EPOLLIN, metrics_on_accept, m);
        if (r < 0) {
                log_error("metrics: cannot watch the socket: %s", strerror(-r));
                metrics_free(m);
                return r;
        }
        log_notice("metrics: serving http://%s%s%s:%u/metrics", strchr(address, ':') ? "[" : "", address,
                   strchr(address, ':') ? "]" : "", m->port);
        *out = m;
        return 0;
}

void metrics_free(struct metrics *m)
{
        if (!m)
                return;
        while (m->clients)
                client_free(m->clients);
        sd_event_source_disable_unref(m->io);
        if (m->fd >= 0)
                close(m->fd);
        free(m);
}

uint16_t metrics_port(const struct metrics *m)
{
        return m->port;
}

/* ---- --status ---- */

/* GET path; *body points into the malloc'ed *reply, which must contain
 * marker (so that another program's port is not taken for ours). */
static int fetch(const char *address, uint16_t port, const char *path, const char *marker, char **reply,
                 const char **body)
{
        struct sockaddr_storage ss = { 0 };
        struct timeval tv = { .tv_sec = STATUS_TIMEOUT_SEC };
        socklen_t len;
        char req[256];

        snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nUser-Agent: mqtt-edge-bridge --status\r\n\r\n", path);
        char *buf = NULL;
        size_t n = 0, cap = 0;
        int fd, r;

        /* A wildcard address listens on every address, loopback included. */
        if (strcmp(address, "0.0.0.0") == 0)
                address = "127.0.0.1";
        else if (strcmp(address, "::") == 0)
                address = "::1";
        if (inet_pton(AF_INET6, address, &((struct sockaddr_in6 *) &ss)->sin6_addr) == 1) {
                ((struct sockaddr_in6 *) &ss)->sin6_family = AF_INET6;
                ((struct sockaddr_in6 *) &ss)->sin6_port = htons(port);
                len = sizeof(struct sockaddr_in6);
        } else if (inet_pton(AF_INET, address, &((struct sockaddr_in *) &ss)->sin_addr) == 1) {
                ((struct sockaddr_in *) &ss)->sin_family = AF_INET;
                ((struct sockaddr_in *) &ss)->sin_port = htons(port);
                len = sizeof(struct sockaddr_in);
        } else {
                return -EINVAL;
        }
        fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        /* Linux applies SO_SNDTIMEO to connect() too. */
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        if (connect(fd, (struct sockaddr *) &ss, len) < 0 ||
            send(fd, req, strlen(req), MSG_NOSIGNAL) != (ssize_t) strlen(req)) {
                r = errno == EINPROGRESS ? -ETIMEDOUT : -errno;
                goto out;
        }
        for (;;) {
                if (cap - n < 4096) {
                        if (cap >= STATUS_MAX_REPLY) {
                                r = -EPROTO;
                                goto out;
                        }
                        cap = cap ? cap * 2 : 16384;
                        char *p = realloc(buf, cap + 1);
                        if (!p) {
                                r = -ENOMEM;
                                goto out;
                        }
                        buf = p;
                }
                ssize_t got = recv(fd, buf + n, cap - n, 0);
                if (got < 0 && errno == EINTR)
                        continue;
                if (got < 0) {
                        r = errno == EAGAIN ? -ETIMEDOUT : -errno;
                        goto out;
                }
                if (got == 0)
                        break;
                n += (size_t) got;
        }
        if (!buf) {
                r = -EPROTO;
                goto out;
        }
        buf[n] = '\0';
        char *sep = strstr(buf, "\r\n\r\n");
        if (strncmp(buf, "HTTP/1.0 200 ", 13) != 0 || !sep || !strstr(sep, marker)) {
                r = -EPROTO;
                goto out;
        }
        *body = sep + 4;
        *reply = buf;
        buf = NULL;
        r = 0;
out:
        free(buf);
        close(fd);
        return r;
}

/* The value of the sample named exactly key (labels included), 0 if absent. */
static double sample(const char *text, const char *key)
{
        size_t kl = strlen(key);

        for (const char *p = text; p && *p;) {
                if (strncmp(p, key, kl) == 0 && p[kl] == ' ')
                        return strtod(p + kl + 1, NULL);
                p = strchr(p, '\n');
                if (p)
                        p++;
        }
        return 0;
}

static unsigned long long u(const char *text, const char *key)
{
        double v = sample(text, key);
        return v > 0 ? (unsigned long long) v : 0;
}

static void print_duration(FILE *f, unsigned long long s)
{
        if (s >= 86400)
                fprintf(f, "%llud %lluh", s / 86400, s % 86400 / 3600);
        else if (s >= 3600)
                fprintf(f, "%lluh %llum", s / 3600, s % 3600 / 60);
        else
                fprintf(f, "%llum %llus", s / 60, s % 60);
}

int metrics_print_status(FILE *f, const char *address, uint16_t port, bool json)
{
        char *reply = NULL, when[64] = "?";
        const char *t = NULL;
        int r;

        if (json) {
                r = fetch(address, port, "/status.json", "\"devices\":", &reply, &t);
                if (r == 0)
                        fputs(t, f);
                free(reply);
                return r;
        }
        r = fetch(address, port, "/metrics", "mqtt_edge_bridge_build_info", &reply, &t);
        if (r < 0)
                return r;

        const char *v = strstr(t, "mqtt_edge_bridge_build_info{version=\"");
        int vlen = 0;
        if (v) {
                v += strlen("mqtt_edge_bridge_build_info{version=\"");
                vlen = (int) strcspn(v, "\"");
        }
        double start = sample(t, "process_start_time_seconds");
        time_t st = (time_t) start, now = time(NULL);
        struct tm tm;
        if (localtime_r(&st, &tm))
                strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S %Z", &tm);

#define M(k) u(t, "mqtt_edge_bridge_" k)
        fprintf(f, "mqtt-edge-bridge %.*s, running since %s (", vlen, v ? v : "?", when);
        print_duration(f, now > st ? (unsigned long long) (now - st) : 0);
        fprintf(f, ")\n");
        fprintf(f, "  devices connected      %llu (%llu TLS connections open, %llu accepted since start)\n",
                M("devices_connected"), M("tls_connections"), M("connections_accepted_total"));
        fprintf(f, "  upstream sessions      %llu connected, %llu connecting or closing\n",
                M("upstream_sessions{state=\"connected\"}"), M("upstream_sessions{state=\"connecting\"}"));
        fprintf(f, "  TLS handshakes         %llu full, %llu resumed; failed: %llu certificate, %llu timeout, %llu other\n",
                M("tls_handshakes_total{type=\"full\"}"), M("tls_handshakes_total{type=\"resumed\"}"),
                M("tls_handshakes_failed_total{reason=\"certificate\"}"),
                M("tls_handshakes_failed_total{reason=\"timeout\"}"),
                M("tls_handshakes_failed_total{reason=\"other\"}"));
        for (int d = 0; d < 2; d++) {
                const char *dir = d ? "to_device" : "from_device";
                char k[3][128];
                for (int q = 0; q < 3; q++)
                        snprintf(k[q], sizeof k[q], "mqtt_edge_bridge_messages_total{direction=\"%s\",qos=\"%d\"}", dir, q);
                char kb[128];
                snprintf(kb, sizeof kb, "mqtt_edge_bridge_bytes_total{direction=\"%s\"}", dir);
                fprintf(f, "  messages %-14sQoS 0: %llu, QoS 1: %llu, QoS 2: %llu (%llu bytes of MQTT)\n",
                        d ? "to devices" : "from devices", u(t, k[0]), u(t, k[1]), u(t, k[2]), u(t, kb));
        }
        fprintf(f, "  refused                %llu max_connections, %llu not authorized, %llu bad credentials, "
                   "%llu client id, %llu upstream unavailable, %llu protocol version\n",
                M("connections_refused_total{reason=\"max_connections\"}"),
                M("connections_refused_total{reason=\"not_authorized\"}"),
                M("connections_refused_total{reason=\"bad_credentials\"}"),
                M("connections_refused_total{reason=\"identifier_rejected\"}"),
                M("connections_refused_total{reason=\"server_unavailable\"}"),
                M("connections_refused_total{reason=\"protocol_version\"}"));
        fprintf(f, "  listener limits        %llu handshakes in progress; refused %llu max_handshakes, "
                   "%llu max_connections_per_address; idle closed %llu first_byte_timeout, %llu evicted\n",
                M("tls_handshakes_in_progress"),
                M("connections_refused_total{reason=\"max_handshakes\"}"),
                M("connections_refused_total{reason=\"max_connections_per_address\"}"),
                M("idle_connections_closed_total{reason=\"first_byte_timeout\"}"),
                M("idle_connections_closed_total{reason=\"evicted\"}"));
        fprintf(f, "  PROXY protocol         %llu headers accepted; refused %llu untrusted address, "
                   "%llu bad or missing header, %llu header while off\n",
                M("proxy_headers_total"),
                M("connections_refused_total{reason=\"proxy_untrusted\"}"),
                M("connections_refused_total{reason=\"proxy_header\"}"),
                M("connections_refused_total{reason=\"proxy_unexpected\"}"));
        fprintf(f, "  problems               %llu messages dropped, %llu publishes denied, %llu protocol errors, "
                   "%llu keepalive timeouts\n",
                M("messages_dropped_total"), M("publishes_denied_total"), M("protocol_errors_total"),
                M("keepalive_timeouts_total"));
        fprintf(f, "  spool                  %llu messages, %llu bytes\n", M("spool_messages"), M("spool_bytes"));
        fprintf(f, "  reloads                %llu ok, %llu rejected%s\n",
                M("config_reloads_total{result=\"success\"}"), M("config_reloads_total{result=\"failure\"}"),
                sample(t, "mqtt_edge_bridge_config_last_reload_successful") < 0.5
                        ? " (the last one: the previous configuration is still in use, see the log)" : "");
#undef M
        free(reply);
        /* The devices, their TLS and the recent failures. */
        if (fetch(address, port, "/status", "devices", &reply, &t) == 0)
                fputs(t, f);
        free(reply);
        return 0;
}
