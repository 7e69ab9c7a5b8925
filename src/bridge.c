/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <systemd/sd-daemon.h>

#include "bridge.h"
#include "conn_limits.h"
#include "inventory.h"
#include "listener.h"
#include "log.h"
#include "metrics.h"
#include "replayer.h"
#include "session.h"
#include "spool.h"
#include "tls_server.h"
#include "uplink.h"

static int bridge_on_reap(sd_event_source *s, void *userdata)
{
        struct bridge *b = userdata;
        struct session *dead;

        while ((dead = session_reap_next(b)))
                session_free(dead);
        return 0;
}

void bridge_schedule_reap(struct bridge *b)
{
        sd_event_source_set_enabled(b->reaper, SD_EVENT_ONESHOT);
}

void bridge_notify_status(struct bridge *b)
{
        unsigned open = 0, connected = 0;

        if (b->uplinks)
                uplink_pool_count(b->uplinks, &open, &connected);
        sd_notifyf(0, "STATUS=%u device%s connected, %u upstream session%s up, %u TLS connection%s",
                   b->n_devices, b->n_devices == 1 ? "" : "s", connected, connected == 1 ? "" : "s",
                   b->n_sessions, b->n_sessions == 1 ? "" : "s");
}

/* The spool directory must exist and be ours (systemd's StateDirectory=
 * makes it); what a crash left in it is sent upstream. */
static int bridge_start_spool(struct bridge *b)
{
        const char *dir = b->cfg.spool.directory;
        unsigned files;

        if (!dir) {
                log_notice("no spool: devices are refused (CONNACK 3) while the upstream broker is away");
                return 0;
        }
        if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
                log_error("[spool] directory: cannot create %s: %s", dir, strerror(errno));
                return -errno;
        }
        /* Anyone who can write there can plant a spool file that would be
         * replayed upstream in a device's name (or a link root follows). */
        struct stat st;
        if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
                log_error("[spool] directory: %s is not a directory", dir);
                return -ENOTDIR;
        }
        if (st.st_mode & S_IWOTH) {
                log_error("[spool] directory: %s is writable by every user (mode %04o); chmod o-w it (0700)",
                          dir, (unsigned) (st.st_mode & 07777));
                return -EPERM;
        }
        if (access(dir, R_OK | W_OK | X_OK) < 0) {
                log_error("[spool] directory: %s is not writable: %s", dir, strerror(errno));
                return -errno;
        }
        files = replayer_start_all(b);
        if (files > 0)
                log_notice("spool %s: %u device%s with messages from before the restart, sending them upstream",
                           dir, files, files == 1 ? "" : "s");
        return 0;
}

/* Descriptors one device can hold: its TLS socket, its uplink, its spool
 * file, and a replayer's uplink while it is away (an idle device: 2). */
#define BRIDGE_FDS_PER_DEVICE 4
#define BRIDGE_FDS_BASE 64

/* Running out of descriptors shows as refused accepts much later. The
 * soft limit is raised to what max_connections needs, as far as the hard
 * limit allows (systemd's default soft limit, 1024, is for select(), which
 * the daemon does not use; the unit's LimitNOFILE= gives the hard one);
 * past that, say it at start, while someone is looking. */
static void bridge_check_nofile(const struct bridge *b)
{
        struct rlimit rl;
        unsigned long long need = (unsigned long long) b->cfg.limits.max_connections * BRIDGE_FDS_PER_DEVICE +
                                  BRIDGE_FDS_BASE;

        if (!b->cfg.limits.max_connections || getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY)
                return;
        if ((unsigned long long) rl.rlim_cur < need) {
                struct rlimit want = rl;
                want.rlim_cur = rl.rlim_max == RLIM_INFINITY || (unsigned long long) rl.rlim_max >= need
                                        ? (rlim_t) need
                                        : rl.rlim_max;
                if (want.rlim_cur > rl.rlim_cur && setrlimit(RLIMIT_NOFILE, &want) == 0) {
                        log_info("file descriptor limit raised from %llu to %llu for max_connections = %u",
                                 (unsigned long long) rl.rlim_cur, (unsigned long long) want.rlim_cur,
                                 b->cfg.limits.max_connections);
                        rl = want;
                }
        }
        if ((unsigned long long) rl.rlim_cur < need)
                log_warning("[limits] max_connections = %u needs up to %llu file descriptors, the limit is %llu: "
                            "raise LimitNOFILE= (ulimit -n) or lower max_connections",
                            b->cfg.limits.max_connections, need, (unsigned long long) rl.rlim_cur);
}

/* "listener certificates (by SNI): 192.168.0.52 (default), raspberry, ..." */
static void log_listener_certs(SSL_CTX *ctx)
{
        const struct tls_server_certs *cs = tls_server_ctx_certs(ctx);
        char line[1024] = "";
        size_t at = 0;

        if (!cs || cs->n < 2)
                return;
        for (size_t i = 0; i < cs->n && at < sizeof line; i++)
                for (size_t j = 0; j < cs->v[i].n_names && at < sizeof line; j++)
                        at += (size_t) snprintf(line + at, sizeof line - at, "%s%s%s", at ? ", " : "",
                                                cs->v[i].names[j], i == cs->default_index ? " (default)" : "");
        log_notice("listener certificates, chosen by SNI: %s", line);
}

/* The listener admitted a device: its session starts the TLS handshake. */
static int bridge_on_accept(void *ud, int fd, const struct sockaddr *peer, socklen_t peer_len)
{
        return session_new(ud, fd, peer, peer_len);
}

int bridge_start(struct bridge *b, sd_event *event, struct config *cfg)
{
        char err[512] = "";
        SSL_CTX *up_ctx = NULL;
        int r;

        memset(b, 0, sizeof *b);
        b->event = sd_event_ref(event);
        b->cfg = *cfg;
        memset(cfg, 0, sizeof *cfg);
        b->nonce = (uint32_t) time(NULL) ^ ((uint32_t) getpid() << 16);
        {
                struct timespec ts;
                clock_gettime(CLOCK_REALTIME, &ts);
                b->start_time_usec = (uint64_t) ts.tv_sec * 1000000ULL + (uint64_t) ts.tv_nsec / 1000;
        }

        r = tls_server_ctx_new(&b->cfg.listener, &b->device_ctx, err, sizeof err);
        if (r < 0) {
                log_error("%s", err);
                return r;
        }
        log_listener_certs(b->device_ctx);
        r = inventory_new(b, &b->inventory);
        if (r < 0)
                return r;
        r = tls_client_ctx_new(&b->cfg.upstream, &up_ctx, err, sizeof err);
        if (r < 0) {
                log_error("%s", err);
                return r;
        }
        r = uplink_pool_new(event, &b->cfg.upstream, up_ctx, &b->uplinks);
        SSL_CTX_free(up_ctx);
        if (r < 0) {
                log_error("cannot set up the upstream pool: %s", strerror(-r));
                return r;
        }
        /* A broker packet larger than a device may take ends its link. */
        uplink_pool_set_max_packet(b->uplinks, b->cfg.limits.max_packet_size);
        r = sd_event_add_defer(event, &b->reaper, bridge_on_reap, b);
        if (r < 0)
                return r;
        sd_event_source_set_enabled(b->reaper, SD_EVENT_OFF);
        r = session_trim_start(b);
        if (r < 0)
                return r;

        r = conn_limits_new(((uint64_t) b->nonce << 32) ^ (uint64_t) b->start_time_usec, &b->conn_limits);
        if (r < 0)
                return r;
        for (size_t i = 0; i < b->cfg.listener.n_bind; i++) {
                r = listener_new(b, b->cfg.listener.bind_address[i], b->cfg.listener.port, bridge_on_accept, b,
                                 &b->listeners[i]);
                if (r < 0)
                        return r;
                b->n_listeners++;
                log_notice("listening for devices on %s port %u", b->cfg.listener.bind_address[i],
                           listener_port(b->listeners[i]));
        }
        bridge_check_nofile(b);
        if (b->cfg.metrics.enabled) {
                r = metrics_new(b, b->cfg.metrics.bind_address, b->cfg.metrics.port, &b->metrics);
                if (r < 0)
                        return r;
        }
        r = bridge_start_spool(b);
        if (r < 0)
                return r;
        if (b->cfg.upstream.host[0] == '/')
                log_notice("upstream broker: Unix socket %s", b->cfg.upstream.host);
        else {
                char list[512] = "";
                size_t at = 0;
                for (size_t i = 0; i < b->cfg.upstream.n_hosts && at < sizeof list; i++) {
                        const struct config_upstream_host *h = &b->cfg.upstream.hosts[i];
                        at += (size_t) snprintf(list + at, sizeof list - at, "%s%s port %u", i ? ", then " : "",
                                                h->name, h->port);
                }
                log_notice("upstream broker: %s, %s", list,
                           b->cfg.upstream.cafile || b->cfg.upstream.capath ? "TLS, certificate verified"
                                                                           : "plain TCP");
        }
        return 0;
}

void bridge_stop(struct bridge *b)
{
        struct session *s;

        b->stopping = true;
        for (size_t i = 0; i < b->n_listeners; i++)
                listener_free(b->listeners[i]);
        b->n_listeners = 0;
        metrics_free(b->metrics);
        b->metrics = NULL;
        while ((s = session_reap_next(b)))
                session_free(s);
        while (b->sessions)
                session_shutdown(b->sessions);
        replayer_stop_all(b);
        uplink_pool_free(b->uplinks);
        b->uplinks = NULL;
        sd_event_source_disable_unref(b->reaper);
        sd_event_source_disable_unref(b->trim_timer);
        sd_event_source_disable_unref(b->status_timer);
        conn_limits_free(b->conn_limits); /* after every session and listener let go of theirs */
        inventory_free(b->inventory);
        SSL_CTX_free(b->device_ctx);
        config_free(&b->cfg);
        sd_event_unref(b->event);
        memset(b, 0, sizeof *b);
}
