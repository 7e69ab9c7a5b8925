/* SPDX-License-Identifier: MIT */
/*
 * reload — see reload.h for what a reload changes and what it keeps.
 *
 * Why swapping b->cfg in place is safe: sessions reach the configuration
 * only through their struct bridge (cfg_of(s) → &b->cfg) at the moment
 * they use it, and keep copies of what must outlive that (the expanded
 * mountpoint, the client id); the upstream pool keeps &b->cfg.upstream,
 * whose address does not change; libmosquitto copies host and bind
 * address at connect time. So the old strings can be freed as soon as
 * the new struct is in place. Established TLS connections hold their own
 * reference to the SSL_CTX they were made from, so freeing the bridge's
 * reference to the old one leaves them untouched.
 */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <openssl/bn.h>
#include <openssl/x509.h>
#include <systemd/sd-daemon.h>

#include "bridge.h"
#include "config.h"
#include "inventory.h"
#include "log.h"
#include "metrics.h"
#include "reload.h"
#include "session.h"
#include "tls_server.h"
#include "uplink.h"

#define SWAP(a, b)                      \
        do {                            \
                __typeof__(a) t_ = (a); \
                (a) = (b);              \
                (b) = t_;               \
        } while (0)

static bool str_eq(const char *a, const char *b)
{
        return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static bool listener_sockets_equal(const struct config_listener *a, const struct config_listener *b)
{
        if (a->port != b->port || a->n_bind != b->n_bind)
                return false;
        for (size_t i = 0; i < a->n_bind; i++)
                if (!str_eq(a->bind_address[i], b->bind_address[i]))
                        return false;
        return true;
}

static bool spool_equal(const struct config_spool *a, const struct config_spool *b)
{
        return str_eq(a->directory, b->directory) && a->max_bytes == b->max_bytes &&
               a->max_bytes_per_device == b->max_bytes_per_device;
}

static bool metrics_equal(const struct config_metrics *a, const struct config_metrics *b)
{
        if (a->enabled != b->enabled)
                return false;
        return !a->enabled || (a->port == b->port && str_eq(a->bind_address, b->bind_address));
}

/* "CN=..., serial 1003, valid until 2025-07-01" for the log. */
static void describe_cert(SSL_CTX *ctx, char *buf, size_t len)
{
        X509 *cert = SSL_CTX_get0_certificate(ctx);
        char subject[256] = "?", serial[80] = "?", until[32] = "?";

        if (!cert) {
                snprintf(buf, len, "none");
                return;
        }
        X509_NAME_oneline(X509_get_subject_name(cert), subject, sizeof subject);
        BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), NULL);
        char *hex = bn ? BN_bn2hex(bn) : NULL;
        if (hex)
                snprintf(serial, sizeof serial, "%s", hex);
        OPENSSL_free(hex);
        BN_free(bn);
        struct tm tm;
        if (ASN1_TIME_to_tm(X509_get0_notAfter(cert), &tm) == 1)
                strftime(until, sizeof until, "%Y-%m-%d %H:%M:%S UTC", &tm);
        snprintf(buf, len, "%s, serial %s, valid until %s", subject, serial, until);
}

static void notify_reloading(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu",
                   (unsigned long long) ts.tv_sec * 1000000ULL + (unsigned long long) ts.tv_nsec / 1000);
}

int reload_config(struct bridge *b)
{
        char err[1024] = "", cert[512], more[64];
        struct config next = { 0 }, old;
        SSL_CTX *device_ctx = NULL, *up_ctx = NULL;
        struct metrics *metrics = NULL;
        bool move_metrics;
        int r;

        notify_reloading();
        log_notice("reloading the configuration from %s", b->cfg.path);

        r = config_init(&next);
        if (r < 0) {
                snprintf(err, sizeof err, "%s", strerror(-r));
                goto fail;
        }
        r = config_load(&next, b->cfg.path, err, sizeof err);
        if (r < 0)
                goto fail;
        r = tls_server_ctx_new(&next.listener, &device_ctx, err, sizeof err);
        if (r < 0)
                goto fail;
        r = tls_client_ctx_new(&next.upstream, &up_ctx, err, sizeof err);
        if (r < 0)
                goto fail;

        /* A new metrics endpoint is bound before anything is committed, so
         * that failing to bind it rejects the reload as a whole. */
        move_metrics = !metrics_equal(&b->cfg.metrics, &next.metrics);
        if (move_metrics && next.metrics.enabled) {
                r = metrics_new(b, next.metrics.bind_address, next.metrics.port, &metrics);
                if (r < 0) {
                        snprintf(err, sizeof err, "[metrics] cannot listen on %s port %u: %s",
                                 next.metrics.bind_address, next.metrics.port, strerror(-r));
                        goto fail;
                }
        }

        /* Keep what cannot change while running: the new values go into
         * the struct about to be freed, the running ones stay. */
        if (!listener_sockets_equal(&b->cfg.listener, &next.listener))
                log_warning("reload: [listener] bind_address/port changed: restart mqtt-edge-bridge to listen "
                            "there; still listening where it was");
        for (size_t i = 0; i < CONFIG_MAX_BIND; i++)
                SWAP(b->cfg.listener.bind_address[i], next.listener.bind_address[i]);
        SWAP(b->cfg.listener.n_bind, next.listener.n_bind);
        SWAP(b->cfg.listener.port, next.listener.port);
        if (!spool_equal(&b->cfg.spool, &next.spool))
                log_warning("reload: [spool] changed: restart mqtt-edge-bridge to use it; the spool stays as it was");
        SWAP(b->cfg.spool, next.spool);

        /* Did the trust change (CA, CRL, their flags)? Compared by
         * content: a CRL update usually rewrites the same file. */
        unsigned char trust_old[32], trust_new[32];
        bool trust_changed = tls_server_trust_digest(b->device_ctx, trust_old) < 0 ||
                             tls_server_trust_digest(device_ctx, trust_new) < 0 ||
                             memcmp(trust_old, trust_new, sizeof trust_old) != 0;

        /* Commit. */
        old = b->cfg;
        b->cfg = next;
        config_free(&old);

        SSL_CTX_free(b->device_ctx);
        b->device_ctx = device_ctx;
        uplink_pool_set_config(b->uplinks, &b->cfg.upstream, up_ctx); /* takes its own reference */
        uplink_pool_set_max_packet(b->uplinks, b->cfg.limits.max_packet_size);
        SSL_CTX_free(up_ctx);
        if (move_metrics) {
                metrics_free(b->metrics);
                b->metrics = metrics;
                if (!metrics)
                        log_notice("metrics: endpoint closed");
        }
        log_setup(b->cfg.log.level, b->cfg.log.target);
        inventory_check(b->inventory); /* the new certificates' expiry */

        b->stats.reloads_ok++;
        b->stats.last_reload_failed = false;
        describe_cert(b->device_ctx, cert, sizeof cert);
        const struct tls_server_certs *cs = tls_server_ctx_certs(b->device_ctx);
        size_t n_certs = cs ? cs->n : 1;
        log_notice("configuration reloaded: new connections use listener certificate %s%s%s%s%s; "
                   "%u device%s stay connected",
                   cert, n_certs > 1 ? " (the default of " : "",
                   n_certs > 1 ? (snprintf(more, sizeof more, "%zu, chosen by SNI)", n_certs), more) : "",
                   b->cfg.listener.crlfile ? " and CRL " : "",
                   b->cfg.listener.crlfile ? b->cfg.listener.crlfile : "", b->n_devices,
                   b->n_devices == 1 ? "" : "s");
        /* A device revoked by the new CRL (or from a CA no longer
         * trusted) must not stay connected on the strength of a handshake
         * made before (issue 12). */
        if (trust_changed && b->cfg.listener.revoke_connected) {
                unsigned n = session_revalidate_all(b, b->device_ctx);
                log_notice("reload: CA or CRL changed; connected devices checked again, %u disconnected "
                           "(revoke_connected = true)", n);
        } else if (trust_changed) {
                log_notice("reload: CA or CRL changed; revoke_connected = false, connected devices stay");
        }

        sd_notify(0, "READY=1");
        bridge_notify_status(b);
        return 0;

fail:
        b->stats.reloads_failed++;
        b->stats.last_reload_failed = true;
        log_error("reload rejected, the running configuration stays in force: %s", err[0] ? err : strerror(-r));
        metrics_free(metrics);
        SSL_CTX_free(device_ctx);
        SSL_CTX_free(up_ctx);
        config_free(&next);
        sd_notify(0, "READY=1\nSTATUS=Reload rejected, running configuration kept (see the log)");
        return r;
}
