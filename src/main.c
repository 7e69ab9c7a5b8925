/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <systemd/sd-event.h>

#include "build-config.h"
#include "bridge.h"
#include "config.h"
#include "log.h"
#include "privileges.h"
#include "metrics.h"
#include "reload.h"
#include "tls_server.h"

static void usage(FILE *f)
{
        fprintf(f,
                "Usage: mqtt-edge-bridge [OPTIONS]\n"
                "\n"
                "A BearSSL-friendly TLS listener for ESP8266 devices that republishes\n"
                "their MQTT traffic onto the main broker, each device as its own client.\n"
                "\n"
                "  -c, --config FILE   configuration file (default %s)\n"
                "  -t, --check-config  validate the configuration and certificates, then exit 0/1\n"
                "  -s, --status        print the running daemon's counters, devices and recent\n"
                "                      handshake failures (needs [metrics] enabled)\n"
                "      --json          with --status: the devices, failures and certificates as JSON\n"
                "      --condition     exit 1 with a hint if the listener certificate does not exist\n"
                "                      yet (the unit's ExecCondition=), 0 otherwise\n"
                "  -V, --version       print the version and exit\n"
                "  -h, --help          print this help and exit\n",
                DEFAULT_CONFIG_FILE);
}

/* Load and fully validate a configuration: the file, then the TLS material
 * it names (so --check-config and SIGHUP catch a bad key or certificate). */
static int load_config(const char *path, struct config *cfg)
{
        char err[1024] = "";
        SSL_CTX *ctx = NULL;
        int r;

        r = config_init(cfg);
        if (r < 0) {
                fprintf(stderr, "mqtt-edge-bridge: out of memory\n");
                return r;
        }
        r = config_load(cfg, path, err, sizeof err);
        if (r < 0) {
                log_error("%s", err);
                return r;
        }
        r = tls_server_ctx_new(&cfg->listener, &ctx, err, sizeof err);
        SSL_CTX_free(ctx);
        ctx = NULL;
        if (r < 0) {
                log_error("%s: %s", path, err);
                return r;
        }
        r = tls_client_ctx_new(&cfg->upstream, &ctx, err, sizeof err);
        SSL_CTX_free(ctx);
        if (r < 0) {
                log_error("%s: %s", path, err);
                return r;
        }
        return 0;
}

static int on_terminate(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata)
{
        struct bridge *b = userdata;

        log_notice("received %s, closing every device and upstream session", strsignal((int) si->ssi_signo));
        sd_notify(0, "STOPPING=1\nSTATUS=Stopping");
        sd_event_exit(b->event, 0);
        return 0;
}

static int on_hangup(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata)
{
        /* Failure is logged and leaves the running configuration alone. */
        (void) reload_config(userdata);
        return 0;
}

/* ExecCondition=: a fresh install has a configuration but no certificates.
 * Skip the start then (exit 1: the unit stays inactive, not failed) and
 * say what to do. Anything else, a broken file included, exits 0 so that
 * ExecStart= runs and fails with the full reason. */
static int condition(const char *path)
{
        char err[1024];
        struct config cfg;
        struct stat sb;
        int ret = 0;

        if (config_init(&cfg) < 0)
                return 0;
        const char *cert = NULL;
        if (config_load_settings(&cfg, path, err, sizeof err) == 0)
                cert = cfg.listener.certfile ? cfg.listener.certfile : cfg.listener.certdir;
        if (cert && stat(cert, &sb) < 0 && errno == ENOENT) {
                fprintf(stderr,
                        "mqtt-edge-bridge is not configured yet: %s does not exist.\n"
                        "Run mqtt-edge-bridge-setup, or create the listener certificate and key\n"
                        "(mqtt-edge-bridge-certs) and edit %s;\n"
                        "then: systemctl start mqtt-edge-bridge. See mqtt-edge-bridge(8).\n",
                        cert, path);
                ret = 1;
        }
        config_free(&cfg);
        return ret;
}

/* --status: what the metrics endpoint says, for a person. Exit 0, 1 when
 * the endpoint is off or the file is bad, 3 when the daemon cannot be
 * reached (LSB: "program is not running"). */
static int status(const char *path, bool json)
{
        char err[1024];
        struct config cfg;
        int r, ret;

        if (config_init(&cfg) < 0)
                return 1;
        r = config_load_settings(&cfg, path, err, sizeof err);
        if (r < 0) {
                fprintf(stderr, "mqtt-edge-bridge: %s\n", err);
                ret = 1;
        } else if (!cfg.metrics.enabled) {
                fprintf(stderr, "mqtt-edge-bridge: --status reads the metrics endpoint, which is off: set\n"
                                "[metrics] enabled = true in %s, then reload (systemctl reload mqtt-edge-bridge)\n",
                        path);
                ret = 1;
        } else {
                r = metrics_print_status(stdout, cfg.metrics.bind_address, cfg.metrics.port, json);
                if (r == -EPROTO)
                        fprintf(stderr, "mqtt-edge-bridge: %s port %u did not answer like mqtt-edge-bridge\n",
                                cfg.metrics.bind_address, cfg.metrics.port);
                else if (r < 0)
                        fprintf(stderr, "mqtt-edge-bridge: cannot reach the daemon's metrics endpoint at %s port %u: %s\n",
                                cfg.metrics.bind_address, cfg.metrics.port, strerror(-r));
                ret = r == 0 ? 0 : r == -EPROTO ? 1 : 3;
        }
        config_free(&cfg);
        return ret;
}

static int on_status_timer(sd_event_source *s, uint64_t usec, void *userdata)
{
        bridge_notify_status(userdata);
        sd_event_source_set_time(s, usec + 10 * 1000000ULL);
        return 0;
}

int main(int argc, char **argv)
{
        static const struct option options[] = {
                { "config", required_argument, NULL, 'c' },
                { "check-config", no_argument, NULL, 't' },
                { "status", no_argument, NULL, 's' },
                { "condition", no_argument, NULL, 'C' },
                { "json", no_argument, NULL, 'J' },
                { "version", no_argument, NULL, 'V' },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        const char *path = DEFAULT_CONFIG_FILE;
        bool check_only = false, want_status = false, want_condition = false, want_json = false;
        struct config cfg = { 0 };
        struct bridge b;
        sd_event *event = NULL;
        sigset_t mask;
        int c, r;

        while ((c = getopt_long(argc, argv, "c:tsVh", options, NULL)) >= 0) {
                switch (c) {
                case 'c':
                        path = optarg;
                        break;
                case 't':
                        check_only = true;
                        break;
                case 's':
                        want_status = true;
                        break;
                case 'C':
                        want_condition = true;
                        break;
                case 'J':
                        want_json = true;
                        break;
                case 'V':
                        printf("mqtt-edge-bridge %s\n", PACKAGE_VERSION);
                        return 0;
                case 'h':
                        usage(stdout);
                        return 0;
                default:
                        usage(stderr);
                        return 2;
                }
        }
        if (optind < argc) {
                fprintf(stderr, "mqtt-edge-bridge: unexpected argument \"%s\"\n", argv[optind]);
                usage(stderr);
                return 2;
        }

        if (want_json && !want_status) {
                fprintf(stderr, "mqtt-edge-bridge: --json goes with --status\n");
                return 2;
        }
        if (want_status)
                return status(path, want_json);
        if (want_condition)
                return condition(path);

        log_setup(LOG_LEVEL_INFO, LOG_TARGET_AUTO);
        r = load_config(path, &cfg);
        if (r < 0) {
                config_free(&cfg);
                return 1;
        }
        if (check_only) {
                printf("%s: configuration OK\n", path);
                config_free(&cfg);
                return 0;
        }
        log_setup(cfg.log.level, cfg.log.target);

        /* A device or broker that vanishes mid-write must not kill us. */
        signal(SIGPIPE, SIG_IGN);

        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGHUP);
        sigprocmask(SIG_BLOCK, &mask, NULL);

        r = sd_event_default(&event);
        if (r < 0) {
                log_error("cannot create the event loop: %s", strerror(-r));
                goto out;
        }
        r = privileges_check_user(cfg.bridge.user);
        if (r < 0)
                goto out;
        r = bridge_start(&b, event, &cfg);
        if (r >= 0)
                r = privileges_drop(b.cfg.bridge.user, b.cfg.spool.directory);
        if (r < 0) {
                bridge_stop(&b);
                goto out;
        }
        sd_event_add_signal(event, NULL, SIGTERM, on_terminate, &b);
        sd_event_add_signal(event, NULL, SIGINT, on_terminate, &b);
        sd_event_add_signal(event, NULL, SIGHUP, on_hangup, &b);
        sd_event_add_time_relative(event, &b.status_timer, CLOCK_MONOTONIC, 10 * 1000000ULL, 1000000,
                                   on_status_timer, &b);
        /* Pings the watchdog by itself when WatchdogSec= is set. */
        sd_event_set_watchdog(event, true);

        sd_notify(0, "READY=1");
        bridge_notify_status(&b);
        log_notice("mqtt-edge-bridge %s ready", PACKAGE_VERSION);

        r = sd_event_loop(event);
        bridge_stop(&b);
        log_notice("stopped");
out:
        config_free(&cfg);
        sd_event_unref(event);
        return r < 0 ? 1 : 0;
}
