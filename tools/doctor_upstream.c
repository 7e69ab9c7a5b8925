/* SPDX-License-Identifier: MIT */
#include "doctor_upstream.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include <mosquitto.h>
#include <openssl/x509_vfy.h>

#include "config.h"
#include "fileio.h"
#include "findings.h"
#include "json.h"
#include "mountpoint.h"
#include "mqtt_probe.h"
#include "names.h"
#include "policy.h"
#include "tls_server.h"
#include "tool_common.h"
#include "upstream_probe.h"
#include "upstream_tls.h"
#include "x509_info.h"

#define PROG "mqtt-edge-bridge-doctor upstream"
/* The device-side topic of the test message; the mountpoint goes in
 * front, as for any topic the device publishes. */
#define TEST_TOPIC_PREFIX "mqtt-edge-bridge-doctor/"
#define DEFAULT_CN "mqtt-edge-bridge-doctor"

/* Everything one run found out, for the two printers. */
struct report {
        const struct doctor_upstream_args *a;
        const struct config *cfg;
        bool is_socket, tls;
        const char *expected_name;      /* server_name, else host */
        const char *cn;
        char *client_id, *username, *password, *mountpoint, *topic;
        size_t password_len;
        unsigned timeout_sec;           /* per step */
        const char *username_from, *password_from;
        char payload[40];
        struct upstream_tls_seen seen;
        struct upstream_probe_result res;
        int name_matched;               /* -1 unknown */
        int publish_allowed;            /* 1, 0, -1 unknown */
        int subscribe_allowed;
        struct findings f;
        int status;
};

static void report_done(struct report *r) {
        free(r->client_id);
        free(r->username);
        if (r->password)
                explicit_bzero(r->password, r->password_len);
        free(r->password);
        free(r->mountpoint);
        free(r->topic);
        upstream_tls_seen_done(&r->seen);
        findings_done(&r->f);
}

static int random_hex(char *buf, size_t nbytes) {
        unsigned char raw[16];

        if (nbytes > sizeof raw || getrandom(raw, nbytes, 0) != (ssize_t) nbytes)
                return -EIO;
        for (size_t i = 0; i < nbytes; i++)
                snprintf(buf + 2 * i, 3, "%02x", raw[i]);
        return 0;
}

/* A string libmosquitto and the broker accept (mosquitto_validate_utf8:
 * well-formed, no U+0000, no control characters). */
static bool valid_mqtt_string(const char *s) {
        size_t len = strlen(s);

        return len <= 65535 && mosquitto_validate_utf8(s, (int) len) == MOSQ_ERR_SUCCESS;
}

/* The device-side inputs, mapped the way the bridge maps them for a device
 * (session_connect.c): credentials, upstream client id, mountpoint. */
static int identity_build(struct report *r, const char *dev_pass, size_t dev_pass_len) {
        const struct config_bridge *b = &r->cfg->bridge;
        const struct doctor_upstream_args *a = r->a;
        const char *why = NULL, *needs = NULL;
        char rnd[17], dev_topic[64];
        uint32_t nonce;

        if (b->mountpoint && (strstr(b->mountpoint, "%c") || strstr(b->mountpoint, "%i")))
                needs = "[bridge] mountpoint uses the CN";
        else if (b->username_mode == USERNAME_FROM_CN)
                needs = "[bridge] username_mode = cn";
        else if (b->username_mode == USERNAME_FROM_DEVICE && !a->username)
                needs = "without --username the bridge sends the CN as the username";
        if (needs && !a->cn) {
                fprintf(stderr, PROG ": --cn NAME is needed (the device certificate's CN): %s\n", needs);
                return -EINVAL;
        }
        r->cn = a->cn ? a->cn : DEFAULT_CN;
        if (!r->cn[0] || !valid_mqtt_string(r->cn)) {
                fprintf(stderr, PROG ": --cn: empty, or not a valid MQTT string\n");
                return -EINVAL;
        }
        if (a->client_id && (!a->client_id[0] || !valid_mqtt_string(a->client_id))) {
                fprintf(stderr, PROG ": --client-id: empty, or not a valid MQTT string\n");
                return -EINVAL;
        }
        if (a->username && !valid_mqtt_string(a->username)) {
                fprintf(stderr, PROG ": --username: not a valid MQTT string\n");
                return -EINVAL;
        }

        if (getrandom(&nonce, sizeof nonce, 0) != (ssize_t) sizeof nonce)
                return -EIO;
        /* An empty client id gets one made up from the CN, as the bridge
         * does (policy_client_id): unique, so a live device's session on
         * the broker is left alone. */
        if (policy_client_id(b, r->cn, (const uint8_t *) a->client_id, a->client_id ? strlen(a->client_id) : 0,
                             nonce, &r->client_id) < 0 || !valid_mqtt_string(r->client_id)) {
                fprintf(stderr, PROG ": the upstream client id ([bridge] client_id_prefix + client id) is not valid\n");
                return -EINVAL;
        }
        if (a->client_id && !policy_client_id_allowed(b, r->cn, (const uint8_t *) a->client_id, strlen(a->client_id)))
                findings_add(&r->f, "client-id-refused", FINDING_WARNING, "use the CN as the client id",
                             "the bridge would refuse client id \"%s\" from this device with CONNACK 2: "
                             "client ids must match the CN", a->client_id);

        if (mountpoint_expand(b->mountpoint, r->cn, a->client_id ? a->client_id : r->cn,
                                     &r->mountpoint, &why) < 0) {
                fprintf(stderr, PROG ": [bridge] mountpoint \"%s\" does not apply to this device: %s\n",
                        b->mountpoint, why ? why : "invalid");
                return -EINVAL;
        }
        if (random_hex(rnd, 8) < 0 || random_hex(r->payload, 16) < 0)
                return -EIO;
        snprintf(dev_topic, sizeof dev_topic, TEST_TOPIC_PREFIX "%s", rnd);
        if (policy_topic_to_upstream(r->mountpoint, (const uint8_t *) dev_topic, strlen(dev_topic), &r->topic) < 0 ||
            !valid_mqtt_string(r->topic)) {
                fprintf(stderr, PROG ": the test topic under the mountpoint is not valid\n");
                return -EINVAL;
        }

        if (policy_credentials(b, r->cn, (const uint8_t *) a->username, a->username ? strlen(a->username) : 0,
                               (const uint8_t *) dev_pass, dev_pass_len,
                               &r->username, &r->password, &r->password_len) < 0) {
                fprintf(stderr, PROG ": the credentials cannot be passed upstream (see [bridge] username_mode, "
                                "password_mode)\n");
                return -EINVAL;
        }
        if (r->password && memchr(r->password, '\0', r->password_len)) {
                fprintf(stderr, PROG ": the password contains a NUL byte, which libmosquitto cannot send\n");
                return -EINVAL;
        }
        switch (b->username_mode) {
        case USERNAME_FROM_CN: r->username_from = "the CN ([bridge] username_mode = cn)"; break;
        case USERNAME_FIXED: r->username_from = "[bridge] username"; break;
        default: r->username_from = a->username ? "--username, as the device sends it" :
                                                  "the CN (the device sends no username)";
        }
        switch (b->password_mode) {
        case PASSWORD_FIXED: r->password_from = "[bridge] password"; break;
        case PASSWORD_NONE: r->password_from = "not sent ([bridge] password_mode = none)"; break;
        default: r->password_from = dev_pass ? "as the device sends it" : "not sent (the device sends none)";
        }
        return 0;
}

static const char *verify_word(int code) {
        switch (code) {
        case X509_V_OK: return "ok";
        case X509_V_ERR_HOSTNAME_MISMATCH:
        case X509_V_ERR_IP_ADDRESS_MISMATCH: return "mismatch";
        case X509_V_ERR_CERT_HAS_EXPIRED: return "expired";
        case X509_V_ERR_CERT_NOT_YET_VALID: return "not-yet-valid";
        case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
        case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
        case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
        case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
        case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
        case X509_V_ERR_CERT_UNTRUSTED: return "untrusted";
        default: return "error";
        }
}

/* Why the connection did not reach CONNACK, most specific cause first:
 * OpenSSL's verification of the broker, an alert from the broker (it
 * refused the bridge's client certificate), OpenSSL's own error, then
 * whatever the socket said. */
static void diagnose_transport(struct report *r) {
        const struct upstream_probe_result *res = &r->res;
        char issuer[256] = "?";

        r->status = DOCTOR_UPSTREAM_UNREACHABLE;
        if (!res->connected) {
                findings_add(&r->f, "connect-failed", FINDING_ERROR,
                             r->is_socket ? "check [upstream] host (the socket path) and that the broker has a "
                                            "\"listener 0 PATH\" there"
                                          : "check [upstream] host and port, [upstream] bind_address, and that the "
                                            "broker listens there",
                             "%s", res->error);
                return;
        }
        if (r->tls && r->seen.verify_code != X509_V_OK) {
                const char *w = verify_word(r->seen.verify_code);

                if (r->seen.leaf)
                        x509_issuer_line(r->seen.leaf, issuer, sizeof issuer);
                if (strcmp(w, "mismatch") == 0)
                        findings_add(&r->f, "tls-name-mismatch", FINDING_ERROR,
                                     "set [upstream] server_name to a name or address the certificate carries in "
                                     "its subjectAltName, or reissue the broker's certificate with it",
                                     "the broker's certificate does not carry \"%s\" (OpenSSL: %s)",
                                     r->expected_name, X509_verify_cert_error_string(r->seen.verify_code));
                else if (strcmp(w, "untrusted") == 0)
                        findings_add(&r->f, "tls-untrusted", FINDING_ERROR,
                                     "[upstream] cafile (or capath) must hold the CA that issued the broker's "
                                     "certificate",
                                     "the broker's certificate (issuer %s) is not trusted: %s", issuer,
                                     X509_verify_cert_error_string(r->seen.verify_code));
                else
                        findings_add(&r->f, strcmp(w, "error") == 0 ? "tls-verify-failed" : "tls-expired",
                                     FINDING_ERROR, NULL, "the broker's certificate failed verification: %s",
                                     X509_verify_cert_error_string(r->seen.verify_code));
                return;
        }
        const char *cert_fix = r->cfg->upstream.certfile
                ? "the broker's cafile must hold the CA of [upstream] certfile, and the certificate must allow "
                  "clientAuth"
                : "the broker may require a client certificate: set [upstream] certfile and keyfile";
        if (r->tls && r->seen.alert[0]) {
                bool about_cert = strstr(r->seen.alert, "certificate") || strstr(r->seen.alert, "CA") ||
                                  strstr(r->seen.alert, "access denied");

                findings_add(&r->f, "tls-alert", FINDING_ERROR,
                             about_cert ? cert_fix
                                        : "check that the broker has a TLS listener there, and [upstream] "
                                          "tls_version and ciphers",
                             "the broker ended the TLS connection with the alert \"%s\"", r->seen.alert);
                return;
        }
        if (r->tls && r->seen.done && strcmp(r->seen.version, "TLSv1.3") == 0) {
                /* RFC 8446 §4.4.2.4: the server checks the client's
                 * certificate after the client's handshake is done, and its
                 * alert is lost when our CONNECT meets the closed socket
                 * (the reset discards what was not read). */
                findings_add(&r->f, "tls-closed", FINDING_ERROR, cert_fix,
                             "the broker closed the connection right after the TLS 1.3 handshake, before CONNACK "
                             "(%s): that is how a broker refuses the client's certificate", res->error);
                return;
        }
        if (r->tls && !r->seen.done) {
                findings_add(&r->f, "tls-failed", FINDING_ERROR, NULL, "the TLS handshake failed: %s",
                             res->tls_error[0] ? res->tls_error : res->error);
                return;
        }
        findings_add(&r->f, "no-connack", FINDING_ERROR,
                     r->tls ? NULL : "if the broker expects TLS there, set [upstream] cafile (or capath)",
                     "no CONNACK: %s", res->error);
}

static void diagnose(struct report *r) {
        const struct upstream_probe_result *res = &r->res;
        const char *acl_hint = "the broker's acl_file (e.g. \"pattern readwrite devices/%u/#\", or a \"topic\" "
                               "line under \"user\")";

        r->name_matched = r->tls ? upstream_tls_name_matches(&r->seen, r->expected_name) : -1;
        r->publish_allowed = r->subscribe_allowed = -1;
        if (res->connack < 0) {
                diagnose_transport(r);
                return;
        }
        if (res->connack != 0) {
                r->status = DOCTOR_UPSTREAM_REFUSED;
                findings_add(&r->f, "connack-refused", FINDING_ERROR,
                             res->connack == 4 || res->connack == 5
                                     ? "check the username and password the bridge sends ([bridge] username_mode, "
                                       "password_mode, or what the device sends) against the broker's password_file"
                                     : res->connack == 2 ? "check [bridge] client_id_prefix and the client id"
                                                         : NULL,
                             "the broker refused the connection: CONNACK %d (%s)", res->connack,
                             mqtt_probe_connack_text(res->connack));
                return;
        }
        if (res->suback < 0) {
                r->status = DOCTOR_UPSTREAM_UNREACHABLE;
                findings_add(&r->f, "no-suback", FINDING_ERROR, NULL, "the test subscription failed: %s", res->error);
                return;
        }
        r->subscribe_allowed = res->suback <= 2;
        if (!r->subscribe_allowed)
                findings_add(&r->f, "acl-subscribe-denied", FINDING_ERROR, acl_hint,
                             "the broker refused the subscription to %s (SUBACK 0x%02x) for user \"%s\"", r->topic,
                             (unsigned) res->suback, r->username ? r->username : "");
        if (!res->puback) {
                r->status = DOCTOR_UPSTREAM_UNREACHABLE;
                findings_add(&r->f, "no-puback", FINDING_ERROR, NULL, "the test publish failed: %s", res->error);
                return;
        }
        if (r->subscribe_allowed) {
                r->publish_allowed = res->echoed;
                if (!res->echoed)
                        findings_add(&r->f, "acl-publish-denied", FINDING_ERROR, acl_hint,
                                     "the broker acknowledged the test message but did not deliver it back "
                                     "within %u s: its ACL denies user \"%s\" publishing to %s, or receiving "
                                     "from it (mosquitto's acl_file accepts every SUBSCRIBE and checks read "
                                     "access when it delivers)",
                                     r->timeout_sec, r->username ? r->username : "", r->topic);
        } else
                findings_add(&r->f, "acl-publish-unknown", FINDING_INFO, NULL,
                             "whether the broker lets the device publish is unknown: without the subscription "
                             "the message cannot come back (mosquitto acknowledges a denied publish anyway)");
        r->status = r->subscribe_allowed && r->publish_allowed == 1 ? DOCTOR_UPSTREAM_OK : DOCTOR_UPSTREAM_DENIED;
        if (r->status == DOCTOR_UPSTREAM_DENIED && !r->a->client_id && r->cfg->bridge.clientid_must_match_cn)
                findings_add(&r->f, "generated-client-id", FINDING_INFO,
                             "run again with --client-id set to the CN while that device is offline",
                             "the real device connects with client id \"%s%s\" (client ids must match the CN), "
                             "the doctor with \"%s\" so as not to disturb it: an ACL \"pattern\" with %%c "
                             "sees the difference", r->cfg->bridge.client_id_prefix ? r->cfg->bridge.client_id_prefix : "",
                             r->cn, r->client_id);
}

static const char *transport_kind(const struct report *r) {
        return r->is_socket ? (r->tls ? "tls-unix" : "unix") : (r->tls ? "tls-tcp" : "tcp");
}

static const char *tri(int v) {
        return v < 0 ? "null" : v ? "true" : "false";
}

static void json_san(const char *key, char **v, size_t n) {
        printf(",\"%s\":[", key);
        for (size_t i = 0; i < n; i++) {
                if (i)
                        putchar(',');
                json_string(stdout, v[i]);
        }
        putchar(']');
}

static void print_json(const struct report *r) {
        const struct config_upstream *u = &r->cfg->upstream;
        const struct upstream_probe_result *res = &r->res;

        printf("{\"config\":");
        json_string(stdout, r->cfg->path);
        printf(",\"transport\":{\"kind\":\"%s\",\"host\":", transport_kind(r));
        json_string(stdout, u->host);
        if (r->is_socket)
                printf(",\"port\":null");
        else
                printf(",\"port\":%u", (unsigned) u->port);
        printf(",\"bind_address\":");
        json_string(stdout, r->is_socket ? NULL : u->bind_address);
        printf(",\"ok\":%s,\"local\":", res->connected ? "true" : "false");
        json_string(stdout, res->local[0] ? res->local : NULL);
        printf(",\"peer\":");
        json_string(stdout, res->peer[0] ? res->peer : NULL);
        printf(",\"error\":");
        json_string(stdout, res->connected ? NULL : res->error);
        printf("},\"tls\":");
        if (!r->tls)
                printf("null");
        else {
                char subject[256] = "", issuer[256] = "";
                struct x509_san san = {};

                printf("{\"ok\":%s,\"version\":", r->seen.done && r->seen.verify_code == X509_V_OK ? "true" : "false");
                json_string(stdout, r->seen.done ? r->seen.version : NULL);
                printf(",\"cipher\":");
                json_string(stdout, r->seen.done ? r->seen.cipher : NULL);
                printf(",\"expected_name\":");
                json_string(stdout, r->expected_name);
                printf(",\"sni\":");
                json_string(stdout, r->seen.name && !name_is_ip(r->seen.name) ? r->seen.name : NULL);
                printf(",\"name_matched\":%s,\"peer\":", tri(r->name_matched));
                if (r->seen.leaf && x509_san_read(r->seen.leaf, &san) >= 0) {
                        x509_subject_line(r->seen.leaf, subject, sizeof subject);
                        x509_issuer_line(r->seen.leaf, issuer, sizeof issuer);
                        printf("{\"subject\":");
                        json_string(stdout, subject);
                        printf(",\"issuer\":");
                        json_string(stdout, issuer);
                        json_san("san_dns", san.dns, san.n_dns);
                        json_san("san_ip", san.ip, san.n_ip);
                        printf("}");
                        x509_san_done(&san);
                } else
                        printf("null");
                printf(",\"verify\":{\"code\":%d,\"result\":\"%s\",\"error\":", r->seen.verify_code,
                       verify_word(r->seen.verify_code));
                json_string(stdout, r->seen.verify_code == X509_V_OK ? NULL
                                                                       : X509_verify_cert_error_string(r->seen.verify_code));
                printf(",\"depth\":%d},\"alert\":", r->seen.verify_code == X509_V_OK ? 0 : r->seen.verify_depth);
                json_string(stdout, r->seen.alert[0] ? r->seen.alert : NULL);
                printf(",\"error\":");
                json_string(stdout, res->tls_error[0] ? res->tls_error : NULL);
                printf("}");
        }
        printf(",\"mqtt\":{\"cn\":");
        json_string(stdout, r->cn);
        printf(",\"client_id\":");
        json_string(stdout, r->client_id);
        printf(",\"username\":");
        json_string(stdout, r->username);
        printf(",\"password_sent\":%s,\"connack\":", r->password ? "true" : "false");
        if (res->connack >= 0)
                printf("%d", res->connack);
        else
                printf("null");
        printf(",\"connack_text\":");
        json_string(stdout, res->connack >= 0 ? mqtt_probe_connack_text(res->connack) : NULL);
        printf("},\"mountpoint\":");
        json_string(stdout, r->mountpoint);
        printf(",\"topic\":");
        json_string(stdout, r->topic);
        printf(",\"subscribe\":{\"suback\":");
        if (res->suback >= 0)
                printf("%d", res->suback);
        else
                printf("null");
        printf(",\"allowed\":%s},\"publish\":{\"puback\":%s,\"echoed\":%s,\"allowed\":%s}", tri(r->subscribe_allowed),
               res->puback ? "true" : "false", res->echoed ? "true" : "false", tri(r->publish_allowed));
        printf(",\"findings\":[");
        for (size_t i = 0; i < r->f.n; i++) {
                printf("%s{\"id\":", i ? "," : "");
                json_string(stdout, r->f.v[i].id);
                printf(",\"severity\":\"%s\",\"message\":", finding_severity_name(r->f.v[i].severity));
                json_string(stdout, r->f.v[i].message);
                printf(",\"fix\":");
                json_string(stdout, r->f.v[i].fix);
                printf("}");
        }
        printf("],\"ok\":%s,\"status\":%d}\n", r->status == DOCTOR_UPSTREAM_OK ? "true" : "false", r->status);
}

static void print_tls_text(const struct report *r) {
        char subject[256] = "", issuer[256] = "", sans[1024] = "";
        struct x509_san san = {};
        size_t o = 0;

        if (!r->tls) {
                printf("TLS:           off ([upstream] has no cafile or capath)\n");
                return;
        }
        if (r->seen.done && r->seen.verify_code == X509_V_OK)
                printf("TLS:           OK %s, %s\n", r->seen.version, r->seen.cipher);
        else if (r->seen.verify_code != X509_V_OK)
                printf("TLS:           FAIL certificate verify failed: %s (X509_V_ERR %d, depth %d)\n",
                       X509_verify_cert_error_string(r->seen.verify_code), r->seen.verify_code, r->seen.verify_depth);
        else if (r->res.connected)
                printf("TLS:           FAIL %s\n", r->seen.alert[0] ? r->seen.alert
                                                  : r->res.tls_error[0] ? r->res.tls_error : r->res.error);
        if (r->seen.leaf && x509_san_read(r->seen.leaf, &san) >= 0) {
                x509_subject_line(r->seen.leaf, subject, sizeof subject);
                x509_issuer_line(r->seen.leaf, issuer, sizeof issuer);
                for (size_t i = 0; i < san.n_dns && o < sizeof sans; i++)
                        o += (size_t) snprintf(sans + o, sizeof sans - o, "%sDNS:%s", o ? ", " : "", san.dns[i]);
                for (size_t i = 0; i < san.n_ip && o < sizeof sans; i++)
                        o += (size_t) snprintf(sans + o, sizeof sans - o, "%sIP:%s", o ? ", " : "", san.ip[i]);
                printf("  certificate: %s (issuer %s)\n", subject, issuer);
                printf("  SAN:         %s\n", san.has_san ? sans : "(no subjectAltName extension)");
                x509_san_done(&san);
        }
        printf("  name:        \"%s\" ([upstream] server_name, default host)%s\n", r->expected_name,
               r->name_matched < 0 ? "" : r->name_matched ? ": matched" : ": NOT in the certificate");
        /* RFC 6066 §3: a literal IP is never sent as SNI. */
        printf("  SNI:         %s\n", r->seen.name && !name_is_ip(r->seen.name) ? r->seen.name : "(none)");
}

static void print_text(const struct report *r) {
        const struct config_upstream *u = &r->cfg->upstream;
        const struct upstream_probe_result *res = &r->res;
        printf("configuration: %s\n", r->cfg->path);
        if (r->is_socket)
                printf("broker:        Unix socket %s%s\n", u->host, r->tls ? " with TLS" : "");
        else
                printf("broker:        %s:%u (%s)%s%s\n", u->host, (unsigned) u->port, r->tls ? "TLS over TCP" : "TCP",
                       u->bind_address ? ", from " : "", u->bind_address ? u->bind_address : "");
        if (res->connected && res->peer[0])
                printf("connection:    OK %s%s%s\n", r->is_socket ? "" : res->local, r->is_socket ? "" : " -> ",
                       res->peer);
        else if (res->connected)
                printf("connection:    OK\n");
        else
                printf("connection:    FAIL %s\n", res->error);
        if (res->connected)
                print_tls_text(r);
        printf("device:        CN \"%s\"\n", r->cn);
        printf("  client id:   \"%s\"\n", r->client_id);
        printf("  username:    %s%s%s (%s)\n", r->username ? "\"" : "", r->username ? r->username : "none",
               r->username ? "\"" : "", r->username_from);
        printf("  password:    %s\n", r->password_from);
        if (res->connack >= 0)
                printf("MQTT CONNACK:  %d (%s)\n", res->connack, mqtt_probe_connack_text(res->connack));
        if (res->connack == 0) {
                printf("mountpoint:    %s\n", r->mountpoint ? r->mountpoint : "(none)");
                printf("test topic:    %s\n", r->topic);
                if (res->suback >= 0)
                        printf("subscribe:     %s (SUBACK 0x%02x)\n", r->subscribe_allowed ? "allowed" : "DENIED",
                               (unsigned) res->suback);
                if (r->publish_allowed == 1)
                        printf("publish:       allowed (the message came back)\n");
                else if (r->publish_allowed == 0)
                        printf("publish:       DENIED (PUBACK, but the message did not come back in %u s)\n",
                               r->timeout_sec);
                else if (res->puback)
                        printf("publish:       unknown (PUBACK; without the subscription it cannot come back)\n");
        }
        for (size_t i = 0; i < r->f.n; i++) {
                const struct finding *fi = &r->f.v[i];

                printf("\n%s [%s]: %s.\n", finding_severity_name(fi->severity), fi->id, fi->message);
                if (fi->fix)
                        printf("  fix: %s.\n", fi->fix);
        }
        printf("\n%s\n", r->status == DOCTOR_UPSTREAM_OK ? "The bridge can use the broker for this device."
                                                        : "The bridge can NOT use the broker for this device.");
}

/* --password-file: the first line, without its end of line. */
static int read_password_file(const char *path, unsigned char **out, size_t *len) {
        int r = fileio_read_all(path, out, len);

        if (r < 0) {
                fprintf(stderr, PROG ": --password-file %s: %s\n", path, strerror(-r));
                return r;
        }
        for (size_t i = 0; i < *len; i++)
                if ((*out)[i] == '\n' || (*out)[i] == '\r') {
                        explicit_bzero(*out + i, *len - i);
                        *len = i;
                        break;
                }
        return 0;
}

int doctor_upstream_run(const struct doctor_upstream_args *a) {
        _cleanup_free_ unsigned char *file_pass = NULL;
        struct config cfg = {};
        struct report r = { .a = a, .cfg = &cfg };
        SSL_CTX *ctx = NULL;
        char err[512];
        const char *dev_pass = a->password;
        size_t dev_pass_len = a->password ? strlen(a->password) : 0, file_len = 0;
        int ret = DOCTOR_UPSTREAM_USAGE;

        if (config_init(&cfg) < 0 || config_load_settings(&cfg, a->config_path, err, sizeof err) < 0) {
                fprintf(stderr, PROG ": %s\n", err);
                goto out;
        }
        if (a->password_file) {
                if (read_password_file(a->password_file, &file_pass, &file_len) < 0)
                        goto out;
                dev_pass = (const char *) file_pass;
                dev_pass_len = file_len;
        }
        if (identity_build(&r, dev_pass, dev_pass_len) < 0)
                goto out;

        r.is_socket = config_upstream_is_socket(&cfg.upstream);
        r.tls = config_upstream_uses_tls(&cfg.upstream);
        r.expected_name = cfg.upstream.server_name ? cfg.upstream.server_name : cfg.upstream.host;
        if (r.tls) {
                /* The daemon's own context: the same CA, client
                 * certificate, minimum version, ciphers and name check. */
                err[0] = '\0';
                if (tls_client_ctx_new(&cfg.upstream, &ctx, err, sizeof err) < 0) {
                        fprintf(stderr, PROG ": %s\n", err);
                        goto out;
                }
                /* The name the daemon puts on each connection (uplink.c). */
                if (upstream_tls_watch(ctx, &r.seen, cfg.upstream.server_name ? cfg.upstream.server_name :
                                                     r.is_socket ? NULL : cfg.upstream.host) < 0)
                        goto out;
        }

        r.timeout_sec = a->timeout_sec ? a->timeout_sec : cfg.upstream.connect_timeout ? cfg.upstream.connect_timeout : 10;
        struct upstream_probe_params p = {
                .host = cfg.upstream.host,
                .port = r.is_socket ? 0 : cfg.upstream.port,
                .bind_address = cfg.upstream.bind_address,
                .ctx = ctx,
                .client_id = r.client_id,
                .username = r.username,
                .password = r.password,
                .keepalive = 60,
                .topic = r.topic,
                .payload = r.payload,
                .timeout_sec = r.timeout_sec,
        };
        if (upstream_probe_run(&p, &r.res) < 0) {
                fprintf(stderr, PROG ": %s\n", r.res.error);
                goto out;
        }
        diagnose(&r);
        if (a->json)
                print_json(&r);
        else
                print_text(&r);
        ret = r.status;
out:
        if (file_pass)
                explicit_bzero(file_pass, file_len);
        SSL_CTX_free(ctx);
        report_done(&r);
        config_free(&cfg);
        return ret;
}
