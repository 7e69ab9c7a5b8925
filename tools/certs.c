/* SPDX-License-Identifier: MIT */
/*
 * mqtt-edge-bridge-certs — issues the CA, the bridge's device-listener
 * certificate, the main broker's certificate and device certificates, and
 * writes the firmware's configuration header. See mqtt-edge-bridge-certs(1).
 */

#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/x509v3.h>

#include "build-config.h"
#include "certs_firmware.h"
#include "certs_issue.h"
#include "fileio.h"
#include "names.h"
#include "numarg.h"
#include "tool_common.h"
#include "x509_info.h"

#define PROG "mqtt-edge-bridge-certs"

/* Device names are refused when they could pass for a server name: more
 * than this many listener names is a usage error, not a real setup. */
#define MAX_LISTENER_NAMES 64

enum {
        ARG_CA = 0x100, ARG_CA_KEY, ARG_ADDRESS, ARG_NAME, ARG_PROFILE, ARG_EC, ARG_DAYS, ARG_CN,
        ARG_OUT_CERT, ARG_OUT_KEY, ARG_OUT, ARG_FORCE, ARG_LISTENER, ARG_LISTENER_NAMES, ARG_PORT,
        ARG_CERT, ARG_KEY, ARG_TOPIC_PREFIX,
};

struct opts {
        const char *cmd, *arg;
        const char *ca, *ca_key, *address, *name, *profile, *cn;
        const char *out_cert, *out_key, *out;
        const char *cert, *key, *topic_prefix;
        const char *listener[MAX_LISTENER_NAMES];
        size_t n_listener;
        const char *listener_names;
        unsigned long days, port;
        bool ec, force, days_set;
};

static void usage(FILE *f) {
        fputs("Usage:\n"
              "  " PROG " ca [--cn NAME] [--ec] [--days N] [--out-cert ca.crt] [--out-key ca.key] [--force]\n"
              "  " PROG " listener --ca CA.crt --ca-key CA.key --address ADDR [--name HOST]\n"
              "        [--profile cn-only|dual] [--ec] [--days N] [--out-cert F] [--out-key F] [--force]\n"
              "  " PROG " broker --ca CA.crt --ca-key CA.key --address ADDR [--name HOST] [...]\n"
              "  " PROG " device NAME --ca CA.crt --ca-key CA.key [--listener LISTENER.crt]...\n"
              "        [--listener-names A,B] [--ec] [--days N] [--out-cert F] [--out-key F] [--force]\n"
              "  " PROG " firmware-config NAME --address ADDR --port PORT [--name SERVER-NAME]\n"
              "        [--ca ca.crt] [--cert NAME.crt] [--key NAME.key] [--topic-prefix P]\n"
              "        [--out edge_config.h] [--force]\n",
              f);
}

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char *fmt, ...) {
        va_list ap;

        fputs(PROG ": ", stderr);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputc('\n', stderr);
}

/* Both outputs are checked before any key is generated, so a refusal
 * leaves nothing half-written behind. */
static int check_targets(const struct opts *o, const char *cert, const char *key) {
        const char *paths[] = { cert, key };

        for (size_t i = 0; i < ELEMENTSOF(paths); i++) {
                int r;

                if (!paths[i])
                        continue;
                r = fileio_check_target(paths[i], o->force);
                if (r == -EEXIST) {
                        fail("refusing to overwrite %s: it exists (use --force to replace it)", paths[i]);
                        return r;
                }
                if (r < 0) {
                        fail("%s: %s", paths[i], strerror(-r));
                        return r;
                }
        }
        return 0;
}

static int write_pair(const struct opts *o, X509 *x, EVP_PKEY *k, const char *cert_path, const char *key_path) {
        _cleanup_free_ char *cert_pem = NULL, *key_pem = NULL;
        size_t cert_len, key_len;
        int r;

        r = issue_cert_pem(x, &cert_pem, &cert_len);
        if (r >= 0)
                r = issue_key_pem(k, &key_pem, &key_len);
        if (r < 0) {
                fail("cannot encode the certificate: %s", strerror(-r));
                return r;
        }
        /* The key first: a certificate without its key is useless, a key alone is harmless. */
        r = fileio_write_atomic(key_path, key_pem, key_len, 0600, o->force);
        explicit_bzero(key_pem, key_len);
        if (r < 0) {
                fail("%s: %s", key_path, r == -EEXIST ? "exists (use --force to replace it)" : strerror(-r));
                return r;
        }
        r = fileio_write_atomic(cert_path, cert_pem, cert_len, 0644, o->force);
        if (r < 0) {
                fail("%s: %s", cert_path, r == -EEXIST ? "exists (use --force to replace it)" : strerror(-r));
                return r;
        }
        printf("wrote %s and %s (key mode 0600)\n", cert_path, key_path);
        return 0;
}

static int cmd_ca(const struct opts *o) {
        _cleanup_(EVP_PKEY_freep) EVP_PKEY *key = NULL;
        _cleanup_(X509_freep) X509 *x = NULL;
        const char *cert_path = o->out_cert ? o->out_cert : "ca.crt";
        const char *key_path = o->out_key ? o->out_key : "ca.key";
        struct issue_request req = {
                .profile = ISSUE_CA,
                .cn = o->cn ? o->cn : "mqtt-edge-bridge CA",
                .days = o->days_set ? (unsigned) o->days : 3650,
        };
        int r;

        if (check_targets(o, cert_path, key_path) < 0)
                return 1;
        r = issue_key_new(o->ec, &key);
        if (r >= 0)
                r = issue_cert(&req, key, &x);
        if (r < 0) {
                fail("cannot create the CA: %s", strerror(-r));
                return 1;
        }
        return write_pair(o, x, key, cert_path, key_path) < 0 ? 1 : 0;
}

static int load_ca(const struct opts *o, X509 **ca, EVP_PKEY **ca_key) {
        char why[1024];

        if (!o->ca || !o->ca_key) {
                fail("%s needs --ca CA.crt and --ca-key CA.key", o->cmd);
                return -EINVAL;
        }
        if (issue_load_ca(o->ca, o->ca_key, ca, ca_key, why, sizeof why) < 0) {
                fail("%s", why);
                return -EINVAL;
        }
        return 0;
}

static int cmd_server(const struct opts *o, bool broker) {
        _cleanup_(EVP_PKEY_freep) EVP_PKEY *key = NULL, *ca_key = NULL;
        _cleanup_(X509_freep) X509 *x = NULL, *ca = NULL;
        const char *profile = broker ? "dual" : o->profile ? o->profile : "cn-only";
        const char *cert_path = o->out_cert ? o->out_cert : broker ? "broker.crt" : "listener.crt";
        const char *key_path = o->out_key ? o->out_key : broker ? "broker.key" : "listener.key";
        char san[1024] = "";
        struct issue_request req = {
                .profile = ISSUE_SERVER,
                .days = o->days_set ? (unsigned) o->days : 825,
        };
        int r;

        if (!o->address || !*o->address) {
                fail("%s needs --address: the IP address (or name) the clients dial", o->cmd);
                return 2;
        }
        if (broker && o->profile && strcmp(o->profile, "dual") != 0) {
                fail("broker always uses the dual profile (desktop clients need the SAN)");
                return 2;
        }
        if (strcmp(profile, "cn-only") == 0) {
                /* CN = the address and no SAN: BearSSL then matches the CN. */
                req.cn = o->address;
                if (o->name)
                        fprintf(stderr, PROG ": note: --name is not used by the cn-only profile; devices "
                                        "must dial \"%s\" exactly\n", o->address);
        } else if (strcmp(profile, "dual") == 0) {
                /* The IP twice: iPAddress for OpenSSL/Python, dNSName for BearSSL. */
                if (name_is_ip(o->address))
                        snprintf(san, sizeof san, "IP:%s,DNS:%s", o->address, o->address);
                else
                        snprintf(san, sizeof san, "DNS:%s", o->address);
                if (o->name && *o->name && !name_equal(o->name, o->address)) {
                        if (name_is_ip(o->name)) {
                                fail("--name is the host name; put the IP address in --address");
                                return 2;
                        }
                        size_t off = strlen(san);
                        snprintf(san + off, sizeof san - off, ",DNS:%s", o->name);
                }
                req.cn = o->name && *o->name ? o->name : o->address;
                req.san = san;
        } else {
                fail("unknown --profile \"%s\" (cn-only or dual)", profile);
                return 2;
        }
        if (strpbrk(o->address, ", ") || (o->name && strpbrk(o->name, ", "))) {
                fail("--address and --name take one name each, without commas or spaces");
                return 2;
        }

        if (load_ca(o, &ca, &ca_key) < 0)
                return 1;
        if (check_targets(o, cert_path, key_path) < 0)
                return 1;
        req.issuer = ca;
        req.issuer_key = ca_key;
        r = issue_key_new(o->ec, &key);
        if (r >= 0)
                r = issue_cert(&req, key, &x);
        if (r < 0) {
                fail("cannot issue the certificate: %s", r == -EINVAL ? "invalid address or name" : strerror(-r));
                return 1;
        }
        if (write_pair(o, x, key, cert_path, key_path) < 0)
                return 1;
        printf("profile %s: CN=%s%s%s\n", profile, req.cn, req.san ? ", SAN " : ", no SAN", req.san ? req.san : "");
        return 0;
}

/* Collects the names a listener certificate answers to: what devices dial. */
static int listener_names_from_cert(const char *path, char ***names, size_t *n) {
        _cleanup_x509_stack_ STACK_OF(X509) *sk = NULL;
        struct x509_san san;
        char cn[256];
        int r;

        r = x509_load_file(path, &sk);
        if (r < 0)
                return r;
        x509_subject_cn(sk_X509_value(sk, 0), cn, sizeof cn);
        r = x509_san_read(sk_X509_value(sk, 0), &san);
        if (r < 0)
                return r;
        for (size_t i = 0; i < san.n_dns + san.n_ip + 1; i++) {
                const char *s = i < san.n_dns ? san.dns[i] : i < san.n_dns + san.n_ip ? san.ip[i - san.n_dns] : cn;
                char **v;

                if (!*s)
                        continue;
                v = realloc(*names, (*n + 1) * sizeof *v);
                if (!v || !(v[*n] = strdup(s))) {
                        if (v)
                                *names = v;
                        x509_san_done(&san);
                        return -ENOMEM;
                }
                *names = v;
                (*n)++;
        }
        x509_san_done(&san);
        return 0;
}

static int check_device_name(const struct opts *o, const char *name) {
        _cleanup_free_ char *list = NULL;
        char **names = NULL;
        size_t n = 0;
        int r = 0;

        if (!*name || strcmp(name, ".") == 0 || strcmp(name, "..") == 0 || strpbrk(name, "/+#\"\\") ||
            strlen(name) > 64) {
                /* The bridge maps the CN into a topic mountpoint ("devices/%c/"). */
                fail("refusing device name \"%s\": a device name is 1-64 characters without '/', '+', '#', "
                     "quotes or backslashes, and not \".\" or \"..\" (it becomes part of MQTT topics)", name);
                return -EINVAL;
        }
        if (name_looks_like_ip(name) || strchr(name, '*')) {
                fail("refusing device name \"%s\": it looks like %s. BearSSL ignores extendedKeyUsage, so a "
                     "device certificate whose CN could be a server name the devices dial would be accepted "
                     "as the bridge itself: one device could impersonate the bridge to all the others. Choose "
                     "a name like \"sensor-kitchen\".", name, strchr(name, '*') ? "a wildcard" : "an IP address");
                return -EINVAL;
        }
        for (size_t i = 0; i < o->n_listener && r >= 0; i++) {
                r = listener_names_from_cert(o->listener[i], &names, &n);
                if (r < 0)
                        fail("cannot read the listener certificate %s: %s", o->listener[i],
                             r == -ENODATA ? "no certificate in it" : strerror(-r));
        }
        if (r >= 0 && o->listener_names) {
                list = strdup(o->listener_names);
                if (!list)
                        r = -ENOMEM;
                for (char *save = NULL, *t = list ? strtok_r(list, ", ", &save) : NULL; t && r >= 0;
                     t = strtok_r(NULL, ", ", &save)) {
                        char **v = realloc(names, (n + 1) * sizeof *v);

                        if (!v || !(v[n] = strdup(t))) {
                                if (v)
                                        names = v;
                                r = -ENOMEM;
                                break;
                        }
                        names = v;
                        n++;
                }
        }
        for (size_t i = 0; r >= 0 && i < n; i++)
                if (name_equal(names[i], name) || name_bearssl_match(names[i], name)) {
                        fail("refusing device name \"%s\": the listener answers to \"%s\". BearSSL ignores "
                             "extendedKeyUsage, so a device certificate with CN=%s would be accepted by every "
                             "device that dials \"%s\" as the bridge: it could impersonate the bridge. Choose a "
                             "different device name.", name, names[i], name, name);
                        r = -EINVAL;
                }
        if (r >= 0 && n == 0)
                fprintf(stderr, PROG ": note: pass --listener LISTENER.crt (or --listener-names) so the device "
                                "name is also checked against the names the devices dial\n");
        for (size_t i = 0; i < n; i++)
                free(names[i]);
        free(names);
        return r;
}

static int cmd_device(const struct opts *o) {
        _cleanup_(EVP_PKEY_freep) EVP_PKEY *key = NULL, *ca_key = NULL;
        _cleanup_(X509_freep) X509 *x = NULL, *ca = NULL;
        _cleanup_free_ char *cert_def = NULL, *key_def = NULL;
        struct issue_request req = {
                .profile = ISSUE_CLIENT,
                .cn = o->arg,
                .days = o->days_set ? (unsigned) o->days : 3650,
        };
        int r;

        if (!o->arg) {
                fail("device needs the device NAME");
                return 2;
        }
        if (check_device_name(o, o->arg) < 0)
                return 1;
        if (load_ca(o, &ca, &ca_key) < 0)
                return 1;
        if (asprintf(&cert_def, "%s.crt", o->arg) < 0 || asprintf(&key_def, "%s.key", o->arg) < 0) {
                cert_def = key_def = NULL;
                return 1;
        }
        if (check_targets(o, o->out_cert ? o->out_cert : cert_def, o->out_key ? o->out_key : key_def) < 0)
                return 1;
        req.issuer = ca;
        req.issuer_key = ca_key;
        r = issue_key_new(o->ec, &key);
        if (r >= 0)
                r = issue_cert(&req, key, &x);
        if (r < 0) {
                fail("cannot issue the device certificate: %s", strerror(-r));
                return 1;
        }
        return write_pair(o, x, key, o->out_cert ? o->out_cert : cert_def, o->out_key ? o->out_key : key_def) < 0;
}

static int read_text(const char *path, const char *what, char **out) {
        size_t len;
        int r = fileio_read_all(path, (unsigned char **) out, &len);

        if (r < 0)
                fail("cannot read the %s %s: %s", what, path, strerror(-r));
        else if (strlen(*out) != len || !strstr(*out, "-----BEGIN ")) {
                fail("%s is not a PEM file (the firmware needs PEM text)", path);
                free(*out);
                *out = NULL;
                r = -EBADMSG;
        }
        return r;
}

static int cmd_firmware(const struct opts *o) {
        _cleanup_free_ char *cert_def = NULL, *key_def = NULL, *ca_pem = NULL, *cert_pem = NULL,
                            *key_pem = NULL, *hdr = NULL;
        _cleanup_x509_stack_ STACK_OF(X509) *cas = NULL, *certs = NULL;
        const char *out = o->out ? o->out : "edge_config.h";
        struct firmware_config fc = {};
        char cn[256];
        size_t len;
        int r;

        if (!o->arg || !o->address || !*o->address || !o->port) {
                fail("firmware-config needs the device NAME, --address and --port");
                return 2;
        }
        if (asprintf(&cert_def, "%s.crt", o->arg) < 0 || asprintf(&key_def, "%s.key", o->arg) < 0) {
                cert_def = key_def = NULL;
                return 1;
        }
        if (check_targets(o, out, NULL) < 0)
                return 1;
        if (read_text(o->ca ? o->ca : "ca.crt", "CA certificate", &ca_pem) < 0 ||
            read_text(o->cert ? o->cert : cert_def, "device certificate", &cert_pem) < 0 ||
            read_text(o->key ? o->key : key_def, "device key", &key_pem) < 0)
                return 1;

        /* The same checks the device will make, done now rather than on a serial console. */
        r = x509_load_file(o->ca ? o->ca : "ca.crt", &cas);
        if (r >= 0 && x509_ca_kind(sk_X509_value(cas, 0)) != X509_CA_TRUE) {
                fail("refusing CA certificate %s: it has no basicConstraints CA:TRUE, so the device (BearSSL) "
                     "would not use it as a trust anchor (BR_ERR_X509_NOT_TRUSTED, 62)", o->ca ? o->ca : "ca.crt");
                return 1;
        }
        r = x509_load_file(o->cert ? o->cert : cert_def, &certs);
        if (r >= 0) {
                x509_subject_cn(sk_X509_value(certs, 0), cn, sizeof cn);
                if (strcmp(cn, o->arg) != 0)
                        fprintf(stderr, PROG ": warning: the device certificate's CN is \"%s\", not \"%s\"; the "
                                        "bridge will know the device as \"%s\"\n", cn, o->arg, cn);
        }

        fc = (struct firmware_config) {
                .device = o->arg,
                .host = o->address,
                .port = (unsigned) o->port,
                .server_name = o->name ? o->name : o->address,
                .topic_prefix = o->topic_prefix ? o->topic_prefix : "",
                .ca_pem = ca_pem, .cert_pem = cert_pem, .key_pem = key_pem,
        };
        r = firmware_header_render(&fc, &hdr, &len);
        explicit_bzero(key_pem, strlen(key_pem));
        if (r < 0) {
                fail("cannot render the header: %s", strerror(-r));
                return 1;
        }
        /* It carries the private key: 0600 like the key file itself. */
        r = fileio_write_atomic(out, hdr, len, 0600, o->force);
        explicit_bzero(hdr, len);
        if (r < 0) {
                fail("%s: %s", out, r == -EEXIST ? "exists (use --force to replace it)" : strerror(-r));
                return 1;
        }
        printf("wrote %s (mode 0600: it contains the device's private key)\n", out);
        return 0;
}

int main(int argc, char **argv) {
        static const struct option options[] = {
                { "ca", required_argument, NULL, ARG_CA },
                { "ca-key", required_argument, NULL, ARG_CA_KEY },
                { "address", required_argument, NULL, ARG_ADDRESS },
                { "name", required_argument, NULL, ARG_NAME },
                { "profile", required_argument, NULL, ARG_PROFILE },
                { "ec", no_argument, NULL, ARG_EC },
                { "days", required_argument, NULL, ARG_DAYS },
                { "cn", required_argument, NULL, ARG_CN },
                { "out-cert", required_argument, NULL, ARG_OUT_CERT },
                { "out-key", required_argument, NULL, ARG_OUT_KEY },
                { "out", required_argument, NULL, ARG_OUT },
                { "force", no_argument, NULL, ARG_FORCE },
                { "listener", required_argument, NULL, ARG_LISTENER },
                { "listener-names", required_argument, NULL, ARG_LISTENER_NAMES },
                { "port", required_argument, NULL, ARG_PORT },
                { "cert", required_argument, NULL, ARG_CERT },
                { "key", required_argument, NULL, ARG_KEY },
                { "topic-prefix", required_argument, NULL, ARG_TOPIC_PREFIX },
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, 'V' },
                {}
        };
        struct opts o = {};
        int c;

        while ((c = getopt_long(argc, argv, "hV", options, NULL)) >= 0) {
                switch (c) {
                case ARG_CA: o.ca = optarg; break;
                case ARG_CA_KEY: o.ca_key = optarg; break;
                case ARG_ADDRESS: o.address = optarg; break;
                case ARG_NAME: o.name = optarg; break;
                case ARG_PROFILE: o.profile = optarg; break;
                case ARG_EC: o.ec = true; break;
                case ARG_CN: o.cn = optarg; break;
                case ARG_OUT_CERT: o.out_cert = optarg; break;
                case ARG_OUT_KEY: o.out_key = optarg; break;
                case ARG_OUT: o.out = optarg; break;
                case ARG_FORCE: o.force = true; break;
                case ARG_LISTENER_NAMES: o.listener_names = optarg; break;
                case ARG_CERT: o.cert = optarg; break;
                case ARG_KEY: o.key = optarg; break;
                case ARG_TOPIC_PREFIX: o.topic_prefix = optarg; break;
                case ARG_LISTENER:
                        if (o.n_listener >= MAX_LISTENER_NAMES) {
                                fail("too many --listener options");
                                return 2;
                        }
                        o.listener[o.n_listener++] = optarg;
                        break;
                case ARG_DAYS:
                        if (numarg_parse(optarg, 1, 36500, &o.days) < 0) {
                                fail("--days: 1..36500");
                                return 2;
                        }
                        o.days_set = true;
                        break;
                case ARG_PORT:
                        if (numarg_parse(optarg, 1, 65535, &o.port) < 0) {
                                fail("--port: 1..65535");
                                return 2;
                        }
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                case 'V':
                        puts(PROG " " PACKAGE_VERSION);
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
        o.cmd = argv[optind++];
        if (optind < argc)
                o.arg = argv[optind++];
        if (optind < argc) {
                fail("%s: unexpected argument \"%s\"", o.cmd, argv[optind]);
                return 2;
        }
        if (o.arg && strcmp(o.cmd, "device") != 0 && strcmp(o.cmd, "firmware-config") != 0) {
                fail("%s takes no argument (\"%s\")", o.cmd, o.arg);
                return 2;
        }

        if (strcmp(o.cmd, "ca") == 0)
                return cmd_ca(&o);
        if (strcmp(o.cmd, "listener") == 0)
                return cmd_server(&o, false);
        if (strcmp(o.cmd, "broker") == 0)
                return cmd_server(&o, true);
        if (strcmp(o.cmd, "device") == 0)
                return cmd_device(&o);
        if (strcmp(o.cmd, "firmware-config") == 0)
                return cmd_firmware(&o);
        fail("unknown command \"%s\" (ca, listener, broker, device, firmware-config)", o.cmd);
        return 2;
}
