/* SPDX-License-Identifier: MIT */
/*
 * mqtt-edge-bridge-doctor — predicts what an ESP8266 (BearSSL) will say
 * about a server certificate, and checks a live server the way the device
 * connects. See mqtt-edge-bridge-doctor(1).
 */

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "build-config.h"
#include "doctor_cert.h"
#include "doctor_connect.h"
#include "doctor_upstream.h"
#include "numarg.h"
#include "timearg.h"

#define DOCTOR_MAX_NAMES 32

enum {
        ARG_CA = 0x100,
        ARG_NAME,
        ARG_TIME,
        ARG_KEY,
        ARG_CERT,
        ARG_JSON,
        ARG_CLIENT_ID,
        ARG_USERNAME,
        ARG_PASSWORD,
        ARG_KEEPALIVE,
        ARG_TIMEOUT,
        ARG_TLS_ONLY,
        ARG_NO_RESUME,
        ARG_CONFIG,
        ARG_CN,
        ARG_PASSWORD_FILE,
};

static void usage(FILE *f) {
        fputs("Usage:\n"
              "  mqtt-edge-bridge-doctor cert CHAIN.pem --ca CA.crt --name NAME [--key KEY.pem] [--time T] [--json]\n"
              "  mqtt-edge-bridge-doctor connect HOST:PORT --ca CA.crt [--cert DEV.crt --key DEV.key] [--name NAME]\n"
              "        [--client-id ID] [--username U] [--password P] [--keepalive S] [--timeout S]\n"
              "        [--time T] [--tls-only] [--no-resume] [--json]\n"
              "  mqtt-edge-bridge-doctor upstream [--config FILE] [--cn NAME] [--client-id ID]\n"
              "        [--username U] [--password P | --password-file F] [--timeout S] [--json]\n"
              "\n"
              "  --name NAME   the address or host name the device dials (\"\" = name check off,\n"
              "                as WiFiClientSecure::connect(IPAddress) does); connect takes it\n"
              "                several times and checks each name (one report each)\n"
              "  --time T      the device's clock: now, @EPOCH, YYYY-MM-DD[THH:MM[:SS]] (UTC)\n"
              "\n"
              "Exit status: 0 the device would succeed, 1 it would not, 2 bad usage or input.\n"
              "upstream: 0 all works, 1 broker unreachable or TLS failed, 2 bad usage or configuration,\n"
              "          3 CONNACK refused, 4 the ACL denies the test publish or subscribe.\n",
              f);
}

int main(int argc, char **argv) {
        static const struct option options[] = {
                { "ca", required_argument, NULL, ARG_CA },
                { "name", required_argument, NULL, ARG_NAME },
                { "time", required_argument, NULL, ARG_TIME },
                { "key", required_argument, NULL, ARG_KEY },
                { "cert", required_argument, NULL, ARG_CERT },
                { "json", no_argument, NULL, ARG_JSON },
                { "client-id", required_argument, NULL, ARG_CLIENT_ID },
                { "username", required_argument, NULL, ARG_USERNAME },
                { "password", required_argument, NULL, ARG_PASSWORD },
                { "keepalive", required_argument, NULL, ARG_KEEPALIVE },
                { "timeout", required_argument, NULL, ARG_TIMEOUT },
                { "tls-only", no_argument, NULL, ARG_TLS_ONLY },
                { "no-resume", no_argument, NULL, ARG_NO_RESUME },
                { "config", required_argument, NULL, ARG_CONFIG },
                { "cn", required_argument, NULL, ARG_CN },
                { "password-file", required_argument, NULL, ARG_PASSWORD_FILE },
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, 'V' },
                {}
        };
        const char *names[DOCTOR_MAX_NAMES];
        size_t n_names = 0;
        const char *ca = NULL, *name = NULL, *key = NULL, *cert = NULL, *client_id = NULL;
        const char *username = NULL, *password = NULL, *cmd;
        const char *config = NULL, *cn = NULL, *password_file = NULL;
        unsigned long keepalive = 60, timeout = 10;
        bool json = false, tls_only = false, no_resume = false, timeout_given = false, device_opts = false;
        time_t at = time(NULL);
        int c;

        while ((c = getopt_long(argc, argv, "hV", options, NULL)) >= 0) {
                switch (c) {
                case ARG_CA: ca = optarg; device_opts = true; break;
                case ARG_NAME:
                        if (n_names == DOCTOR_MAX_NAMES) {
                                fprintf(stderr, "mqtt-edge-bridge-doctor: at most %d --name\n", DOCTOR_MAX_NAMES);
                                return 2;
                        }
                        name = names[n_names++] = optarg;
                        device_opts = true;
                        break;
                case ARG_KEY: key = optarg; device_opts = true; break;
                case ARG_CERT: cert = optarg; device_opts = true; break;
                case ARG_JSON: json = true; break;
                case ARG_CLIENT_ID: client_id = optarg; break;
                case ARG_USERNAME: username = optarg; break;
                case ARG_PASSWORD: password = optarg; break;
                case ARG_TLS_ONLY: tls_only = true; device_opts = true; break;
                case ARG_NO_RESUME: no_resume = true; device_opts = true; break;
                case ARG_CONFIG: config = optarg; break;
                case ARG_CN: cn = optarg; break;
                case ARG_PASSWORD_FILE: password_file = optarg; break;
                case ARG_TIME:
                        if (timearg_parse(optarg, &at) < 0) {
                                fprintf(stderr, "mqtt-edge-bridge-doctor: --time %s: not a time "
                                                "(now, @EPOCH or YYYY-MM-DD[THH:MM[:SS]], UTC)\n", optarg);
                                return 2;
                        }
                        device_opts = true;
                        break;
                case ARG_KEEPALIVE:
                        if (numarg_parse(optarg, 0, 65535, &keepalive) < 0) {
                                fprintf(stderr, "mqtt-edge-bridge-doctor: --keepalive: 0..65535 seconds\n");
                                return 2;
                        }
                        device_opts = true;
                        break;
                case ARG_TIMEOUT:
                        if (numarg_parse(optarg, 0, 3600, &timeout) < 0 || timeout == 0) {
                                fprintf(stderr, "mqtt-edge-bridge-doctor: --timeout: 1..3600 seconds\n");
                                return 2;
                        }
                        timeout_given = true;
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                case 'V':
                        puts("mqtt-edge-bridge-doctor " PACKAGE_VERSION);
                        return 0;
                default:
                        usage(stderr);
                        return 2;
                }
        }
        if (optind >= argc) {
                usage(stderr);
                return 2;
        }
        cmd = argv[optind++];
        if (strcmp(cmd, "upstream") == 0) {
                struct doctor_upstream_args a = {
                        .config_path = config ? config : DEFAULT_CONFIG_FILE, .cn = cn, .client_id = client_id,
                        .username = username, .password = password, .password_file = password_file,
                        .timeout_sec = timeout_given ? (unsigned) timeout : 0, .json = json,
                };

                if (optind != argc) {
                        fprintf(stderr, "mqtt-edge-bridge-doctor upstream: no arguments besides options "
                                        "(the broker comes from --config)\n");
                        return 2;
                }
                if (device_opts) {
                        fprintf(stderr, "mqtt-edge-bridge-doctor upstream: --ca, --cert, --key, --name, --time, "
                                        "--keepalive, --tls-only and --no-resume are for cert/connect; upstream "
                                        "takes the broker's settings from --config\n");
                        return 2;
                }
                if (password && password_file) {
                        fprintf(stderr, "mqtt-edge-bridge-doctor upstream: --password or --password-file, not both\n");
                        return 2;
                }
                return doctor_upstream_run(&a);
        }
        if (config || cn || password_file) {
                fprintf(stderr, "mqtt-edge-bridge-doctor %s: --config, --cn and --password-file are for upstream\n", cmd);
                return 2;
        }
        if (argc - optind != 1) {
                fprintf(stderr, "mqtt-edge-bridge-doctor %s: expected exactly one %s argument\n", cmd,
                        strcmp(cmd, "connect") == 0 ? "HOST:PORT" : "CHAIN.pem");
                return 2;
        }
        if (!ca) {
                fprintf(stderr, "mqtt-edge-bridge-doctor %s: --ca is required (the CA the device trusts)\n", cmd);
                return 2;
        }

        if (strcmp(cmd, "cert") == 0) {
                struct doctor_cert_args a = {
                        .chain_path = argv[optind], .ca_path = ca, .name = name, .key_path = key,
                        .at = at, .json = json,
                };

                if (!name) {
                        fprintf(stderr, "mqtt-edge-bridge-doctor cert: --name is required: the address or host "
                                        "name the device dials (--name \"\" for connect(IPAddress))\n");
                        return 2;
                }
                if (cert) {
                        fprintf(stderr, "mqtt-edge-bridge-doctor cert: --cert is for connect; the chain is the argument\n");
                        return 2;
                }
                if (n_names > 1) {
                        fprintf(stderr, "mqtt-edge-bridge-doctor cert: one --name per run (connect takes several)\n");
                        return 2;
                }
                return doctor_cert_run(&a);
        }
        if (strcmp(cmd, "connect") == 0) {
                struct doctor_connect_args a = {
                        .target = argv[optind], .ca_path = ca, .cert_path = cert, .key_path = key,
                        .name = name, .client_id = client_id, .username = username, .password = password,
                        .keepalive = (uint16_t) keepalive, .at = at, .timeout_sec = (unsigned) timeout,
                        .tls_only = tls_only, .no_resume = no_resume, .json = json,
                };
                /* One listener serves every name the devices dial (SNI):
                 * each gets its own probe and report; the worst exit
                 * status wins. */
                int ret = 0;
                for (size_t i = 0; i < (n_names ? n_names : 1); i++) {
                        a.name = n_names ? names[i] : NULL;
                        if (i > 0 && !json)
                                printf("\n");
                        int r = doctor_connect_run(&a);
                        if (r > ret)
                                ret = r;
                        fflush(stdout);
                }
                return ret;
        }
        fprintf(stderr, "mqtt-edge-bridge-doctor: unknown command \"%s\" (cert, connect or upstream)\n", cmd);
        return 2;
}
