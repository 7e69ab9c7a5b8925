/* SPDX-License-Identifier: MIT */
#include "doctor_cert.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <bearssl.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "br_chain.h"
#include "br_errors.h"
#include "fileio.h"
#include "findings.h"
#include "json.h"
#include "names.h"
#include "ossl_verify.h"
#include "tool_common.h"
#include "x509_info.h"

#define FIX_DUAL "re-issue it with \"mqtt-edge-bridge-certs listener --profile dual --address <IP> --name <host>\" " \
        "(SAN IP:<IP>, DNS:<IP>, DNS:<host>), which BearSSL and OpenSSL/Python accept by IP and by name"
#define FIX_CN_ONLY "or, for the bridge's device listener, \"--profile cn-only\" (CN = the address, no SAN)"
#define FIX_CA "create a CA with \"mqtt-edge-bridge-certs ca\" (basicConstraints critical CA:TRUE) and re-issue " \
        "the server and device certificates from it"

struct cert_ctx {
        const struct doctor_cert_args *a;
        STACK_OF(X509) *chain;
        STACK_OF(X509) *cas;
        struct x509_san san;
        char cn[256];
        int br_code;
        struct ossl_verdict ov;
        struct findings f;
        bool key_mismatch;
};

static void cert_ctx_done(struct cert_ctx *c) {
        sk_X509_pop_free(c->chain, X509_free);
        sk_X509_pop_free(c->cas, X509_free);
        x509_san_done(&c->san);
        findings_done(&c->f);
}

/* "DNS:a, DNS:b, IP:c" (or "none") for messages. */
static void san_text(const struct x509_san *s, char *buf, size_t size) {
        size_t off = 0;

        buf[0] = 0;
        for (size_t i = 0; i < s->n_dns && off < size; i++)
                off += (size_t) snprintf(buf + off, size - off, "%sDNS:%s", off ? ", " : "", s->dns[i]);
        for (size_t i = 0; i < s->n_ip && off < size; i++)
                off += (size_t) snprintf(buf + off, size - off, "%sIP:%s", off ? ", " : "", s->ip[i]);
        if (!buf[0])
                snprintf(buf, size, "none");
}

static int ca_anchor_findings(struct cert_ctx *c, bool *ca_bad) {
        int r;

        *ca_bad = false;
        for (int i = 0; i < sk_X509_num(c->cas); i++) {
                X509 *x = sk_X509_value(c->cas, i);
                enum x509_ca_kind k = x509_ca_kind(x);
                char subj[256];

                if (k == X509_CA_TRUE)
                        continue;
                *ca_bad = true;
                x509_subject_line(x, subj, sizeof subj);
                r = findings_add(&c->f, "ca-not-ca", FINDING_ERROR, FIX_CA,
                                 "the CA certificate \"%s\" is %s. The ESP8266 core (BearSSLHelpers.cpp) makes a "
                                 "certificate a CA trust anchor only with basicConstraints CA:TRUE, so the device "
                                 "cannot trust anything this CA signed (BR_ERR_X509_NOT_TRUSTED, 62)%s",
                                 subj, x509_ca_kind_text(k),
                                 k == X509_CA_NO_BC_V1 ? "; OpenSSL and Python still accept a self-signed v1 CA, "
                                                         "which is why desktop clients work" : "");
                if (r < 0)
                        return r;
        }
        return 0;
}

static int explain_bad_server_name(struct cert_ctx *c) {
        const char *name = c->a->name;
        char sans[1024];

        san_text(&c->san, sans, sizeof sans);
        if (!c->san.has_san)
                return findings_add(&c->f, "cn-mismatch", FINDING_ERROR,
                                    "have the device dial exactly the name in the CN, or " FIX_DUAL,
                                    "the certificate has no subjectAltName, so BearSSL compares the expected name "
                                    "\"%s\" with the subject CN \"%s\" - and they differ", name, c->cn);
        if (c->san.n_dns == 0)
                return findings_add(&c->f, "san-ip-only", FINDING_ERROR, FIX_DUAL "; " FIX_CN_ONLY,
                                    "the SAN has only iPAddress entries (%s); BearSSL compares dNSName entries "
                                    "only, and because a SAN exists it ignores the CN (\"%s\")", sans, c->cn);
        for (size_t i = 0; i < c->san.n_dns; i++)
                if (name_bearssl_match(c->san.dns[i], name))
                        return findings_add(&c->f, "bad-server-name", FINDING_ERROR, NULL,
                                            "BearSSL refused the name although dNSName \"%s\" looks like a match; "
                                            "check the chain order and that the first certificate is the server's",
                                            c->san.dns[i]);
        if (name_is_ip(name))
                return findings_add(&c->f, "ip-not-in-dns-san", FINDING_ERROR, FIX_DUAL,
                                    "the device dials the IP \"%s\", but BearSSL looks for it among the SAN's "
                                    "dNSName entries only (%s): an IP must also be written as DNS:%s. Because a "
                                    "SAN exists the CN (\"%s\") is ignored", name, sans, name, c->cn);
        return findings_add(&c->f, "name-not-in-san", FINDING_ERROR, FIX_DUAL,
                            "\"%s\" is not among the SAN's dNSName entries (%s); because a SAN exists, BearSSL "
                            "ignores the CN (\"%s\")", name, sans, c->cn);
}

static int explain_time(struct cert_ctx *c, const char *who) {
        char when[32], nb[32], na[32];
        struct tm tm;

        gmtime_r(&c->a->at, &tm);
        strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S UTC", &tm);
        for (int i = 0; i < sk_X509_num(c->chain) + sk_X509_num(c->cas); i++) {
                X509 *x = i < sk_X509_num(c->chain) ? sk_X509_value(c->chain, i)
                                                    : sk_X509_value(c->cas, i - sk_X509_num(c->chain));
                int st = x509_time_status(x, c->a->at);
                char subj[256];
                int r;

                if (st == 0)
                        continue;
                x509_subject_line(x, subj, sizeof subj);
                x509_time_text(X509_get0_notBefore(x), nb, sizeof nb);
                x509_time_text(X509_get0_notAfter(x), na, sizeof na);
                r = findings_add(&c->f, st > 0 ? "expired" : "not-yet-valid", FINDING_ERROR,
                                 st > 0 ? "re-issue the certificate; if it is not really expired, the device's "
                                          "clock is wrong: set it with SNTP (configTime) before connecting"
                                        : "the device's clock is behind (no SNTP yet?): call configTime() and wait "
                                          "for the time before connecting, or re-issue with an earlier start",
                                 "%s: \"%s\" is valid from %s to %s, and the check time is %s%s",
                                 who, subj, nb, na, when,
                                 c->a->at < 86400 * 365 ? " (a device without SNTP believes it is 1970)" : "");
                if (r < 0)
                        return r;
        }
        return 0;
}

static int chain_findings(struct cert_ctx *c) {
        int n = sk_X509_num(c->chain), r;
        X509 *leaf = sk_X509_value(c->chain, 0);

        if (n > 1 && x509_ca_kind(leaf) == X509_CA_TRUE) {
                r = findings_add(&c->f, "chain-order", FINDING_ERROR,
                                 "put the server's own certificate first, then each issuer after the "
                                 "certificate it signed (the root CA may be left out)",
                                 "the first certificate in the file is a CA; a TLS server must send its own "
                                 "certificate first, and BearSSL takes the first one as the server's");
                if (r < 0)
                        return r;
        } else {
                for (int i = 0; i + 1 < n; i++)
                        if (!x509_issued_by_name(sk_X509_value(c->chain, i), sk_X509_value(c->chain, i + 1))) {
                                r = findings_add(&c->f, "chain-order", FINDING_ERROR,
                                                 "order the file leaf first, then each issuer after the "
                                                 "certificate it signed; drop certificates that do not belong",
                                                 "certificate %d in the chain was not issued by certificate %d "
                                                 "after it; BearSSL requires each to sign the one before "
                                                 "(BR_ERR_X509_DN_MISMATCH, 55)", i + 1, i + 2);
                                if (r < 0)
                                        return r;
                                break;
                        }
        }
        return 0;
}

static int key_findings(struct cert_ctx *c) {
        X509 *leaf = sk_X509_value(c->chain, 0);
        char desc[64];
        int bits, r;

        for (int i = 0; i < sk_X509_num(c->chain) + sk_X509_num(c->cas); i++) {
                X509 *x = i < sk_X509_num(c->chain) ? sk_X509_value(c->chain, i)
                                                    : sk_X509_value(c->cas, i - sk_X509_num(c->chain));
                char subj[256];

                x509_key_desc(X509_get0_pubkey(x), desc, sizeof desc, &bits);
                if (bits <= 2048)
                        continue;
                x509_subject_line(x, subj, sizeof subj);
                r = findings_add(&c->f, "rsa-large", FINDING_WARNING,
                                 "use RSA-2048 or ECDSA P-256 (mqtt-edge-bridge-certs --ec): P-256 is also "
                                 "about three times cheaper for the device",
                                 "\"%s\" has an %s key; an ESP8266 has about 40 KB of heap and RSA keys over "
                                 "2048 bits fail there in practice (and cost seconds per handshake)", subj, desc);
                if (r < 0)
                        return r;
        }

        if (c->a->key_path) {
                _cleanup_(EVP_PKEY_freep) EVP_PKEY *key = NULL;

                r = x509_load_key(c->a->key_path, &key);
                if (r < 0)
                        return findings_add(&c->f, "key-unreadable", FINDING_ERROR, NULL,
                                            "cannot read the private key %s: %s", c->a->key_path,
                                            r == -EBADMSG ? "not a PEM private key (or it is encrypted)" : strerror(-r));
                if (X509_check_private_key(leaf, key) != 1) {
                        ERR_clear_error();
                        c->key_mismatch = true;
                        return findings_add(&c->f, "key-mismatch", FINDING_ERROR,
                                            "give the server the key that was generated with this certificate, or "
                                            "issue a new pair",
                                            "the private key %s does not belong to the certificate: the server "
                                            "cannot complete a handshake with it", c->a->key_path);
                }
        }
        return 0;
}

static int name_findings(struct cert_ctx *c) {
        X509 *leaf = sk_X509_value(c->chain, 0);
        uint32_t xku;
        int r;

        if (!c->a->name[0]) {
                r = findings_add(&c->f, "name-check-off", FINDING_WARNING,
                                 "connect by name (PubSubClient setServer(\"<address>\"), or "
                                 "WiFiClientSecure::connect(const char *)) so the name is checked",
                                 "no expected name: like connect(IPAddress) on the ESP8266 this turns the name "
                                 "check off, and because BearSSL ignores extendedKeyUsage ANY certificate from "
                                 "this CA - a device's own client certificate included - is accepted as the server");
                if (r < 0)
                        return r;
        }
        for (size_t i = 0; i < c->san.n_dns; i++) {
                const char *d = c->san.dns[i];

                if (strncmp(d, "*.", 2) != 0)
                        continue;
                if (name_looks_like_ip(d + 2) || strspn(d + 2, "0123456789.") == strlen(d + 2))
                        r = findings_add(&c->f, "wildcard-ip", FINDING_WARNING,
                                         "list the exact address as DNS:<IP> instead of a wildcard",
                                         "BearSSL lets the wildcard \"%s\" match IP strings such as \"x%s\" "
                                         "(it matches one label, digits or not); OpenSSL/Python never match an "
                                         "IP against a dNSName", d, d + 1);
                else if (!strchr(d + 2, '.'))
                        r = findings_add(&c->f, "wildcard-single-label", FINDING_WARNING,
                                         "list the exact host names instead",
                                         "BearSSL accepts the wildcard \"%s\", but OpenSSL/Python refuse a "
                                         "wildcard directly above a single-label domain", d);
                else
                        r = 0;
                if (r < 0)
                        return r;
        }
        xku = X509_get_extended_key_usage(leaf);
        if ((X509_get_extension_flags(leaf) & EXFLAG_XKUSAGE) && !(xku & XKU_SSL_SERVER)) {
                r = findings_add(&c->f, "eku-no-server-auth", FINDING_WARNING,
                                 "issue server certificates with extendedKeyUsage serverAuth "
                                 "(mqtt-edge-bridge-certs listener/broker do)",
                                 "the certificate's extendedKeyUsage lacks serverAuth: OpenSSL/Python refuse it "
                                 "as a server, but BearSSL ignores extendedKeyUsage and accepts it");
                if (r < 0)
                        return r;
        }
        return 0;
}

static int explain_bearssl(struct cert_ctx *c, bool ca_bad) {
        switch (c->br_code) {
        case 0:
                return 0;
        case BR_ERR_X509_BAD_SERVER_NAME:
                return explain_bad_server_name(c);
        case BR_ERR_X509_EXPIRED:
                return explain_time(c, "device");
        case BR_ERR_X509_NOT_TRUSTED:
                if (ca_bad || findings_has(&c->f, "chain-order"))
                        return 0;       /* already explained */
                return findings_add(&c->f, "not-trusted", FINDING_ERROR,
                                    "pass the CA that issued the server certificate (and put any intermediate "
                                    "CA into the server's chain file)",
                                    "the chain does not lead to a CA in the CA file: the server certificate was "
                                    "issued by someone else, or an intermediate CA is missing from the chain");
        case BR_ERR_X509_DN_MISMATCH:
                if (findings_has(&c->f, "chain-order"))
                        return 0;
                return findings_add(&c->f, "chain-order", FINDING_ERROR, "fix the order of the chain file",
                                    "a certificate in the chain is not the issuer of the one before it");
        case BR_ERR_X509_NOT_CA:
                return findings_add(&c->f, "intermediate-not-ca", FINDING_ERROR, FIX_CA,
                                    "a certificate after the first in the chain signs the one before it but is not "
                                    "a CA (no basicConstraints CA:TRUE, or a path length limit)");
        default:
                return findings_add(&c->f, "bearssl-error", FINDING_ERROR, NULL, "BearSSL: %s (%s, %d)",
                                    BR_ERROR_TEXT(c->br_code), BR_ERROR_NAME(c->br_code), c->br_code);
        }
}

static int explain_openssl(struct cert_ctx *c) {
        const char *name = c->a->name;
        char sans[1024];

        san_text(&c->san, sans, sizeof sans);
        switch (c->ov.code) {
        case X509_V_OK:
                return 0;
        case X509_V_ERR_IP_ADDRESS_MISMATCH:
                return findings_add(&c->f, "openssl-ip-mismatch", FINDING_WARNING,
                                    c->san.has_san ? FIX_DUAL : "fine for the bridge's device listener; for desktop "
                                    "clients (the main broker) " FIX_DUAL,
                                    "OpenSSL/Python check an IP address only against SAN iPAddress entries, never "
                                    "the CN or a dNSName; this certificate has SAN: %s, CN \"%s\"", sans, c->cn);
        case X509_V_ERR_HOSTNAME_MISMATCH:
                return findings_add(&c->f, "openssl-name-mismatch", FINDING_WARNING, FIX_DUAL,
                                    "OpenSSL/Python compare \"%s\" with the SAN's dNSName entries (the CN only when "
                                    "there is no dNSName at all); this certificate has SAN: %s, CN \"%s\"",
                                    name, sans, c->cn);
        case X509_V_ERR_CERT_HAS_EXPIRED:
        case X509_V_ERR_CERT_NOT_YET_VALID:
                if (findings_has(&c->f, "expired") || findings_has(&c->f, "not-yet-valid"))
                        return 0;
                return explain_time(c, "OpenSSL");
        case X509_V_ERR_INVALID_PURPOSE:
                if (findings_has(&c->f, "eku-no-server-auth"))
                        return 0;
                return findings_add(&c->f, "openssl-purpose", FINDING_WARNING, NULL,
                                    "OpenSSL refuses the certificate for a TLS server: %s", c->ov.text);
        default:
                return findings_add(&c->f, "openssl-error", FINDING_WARNING, NULL,
                                    "OpenSSL/Python refuse the chain: %s (X509_V_ERR %d, at depth %d)",
                                    c->ov.text, c->ov.code, c->ov.depth);
        }
}

static int load_inputs(struct cert_ctx *c, struct br_certs *bchain, struct br_anchors *anchors) {
        _cleanup_free_ unsigned char *buf = NULL;
        struct br_certs bca = {};
        size_t len;
        int r;

        r = fileio_read_all(c->a->chain_path, &buf, &len);
        if (r >= 0)
                r = br_certs_parse(buf, len, bchain);
        if (r >= 0)
                r = x509_load_file(c->a->chain_path, &c->chain);
        if (r < 0) {
                fprintf(stderr, "mqtt-edge-bridge-doctor: %s: %s\n", c->a->chain_path,
                        r == -ENODATA ? "no certificate in this file" : strerror(-r));
                return r;
        }
        free(buf);
        buf = NULL;
        r = fileio_read_all(c->a->ca_path, &buf, &len);
        if (r >= 0)
                r = br_certs_parse(buf, len, &bca);
        if (r >= 0)
                r = br_anchors_from_certs(&bca, anchors);
        br_certs_done(&bca);
        if (r >= 0)
                r = x509_load_file(c->a->ca_path, &c->cas);
        if (r < 0) {
                fprintf(stderr, "mqtt-edge-bridge-doctor: %s: %s\n", c->a->ca_path,
                        r == -ENODATA ? "no certificate in this file" : strerror(-r));
                return r;
        }
        return 0;
}

static void print_text(const struct cert_ctx *c, bool device_ok) {
        const struct doctor_cert_args *a = c->a;
        X509 *leaf = sk_X509_value(c->chain, 0);
        char sans[1024], desc[64], nb[32], na[32], when[32], label[64];
        struct tm tm;
        int bits;

        san_text(&c->san, sans, sizeof sans);
        x509_key_desc(X509_get0_pubkey(leaf), desc, sizeof desc, &bits);
        x509_time_text(X509_get0_notBefore(leaf), nb, sizeof nb);
        x509_time_text(X509_get0_notAfter(leaf), na, sizeof na);
        gmtime_r(&a->at, &tm);
        strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S UTC", &tm);

        printf("certificate:   %s (%d in chain)\n", a->chain_path, sk_X509_num(c->chain));
        printf("  subject CN:  %s\n", c->cn[0] ? c->cn : "(none)");
        printf("  SAN:         %s\n", c->san.has_san ? sans : "(no subjectAltName extension)");
        printf("  key:         %s\n", desc);
        printf("  valid:       %s .. %s\n", nb, na);
        printf("CA file:       %s (%d certificate%s)\n", a->ca_path, sk_X509_num(c->cas),
               sk_X509_num(c->cas) == 1 ? "" : "s");
        if (a->name[0])
                printf("device dials:  \"%s\" (%s)\n", a->name, name_is_ip(a->name) ? "by IP" : "by name");
        else
                printf("device dials:  by IPAddress, no expected name (name check off)\n");
        printf("device clock:  %s\n\n", when);

        snprintf(label, sizeof label, "OpenSSL / Python (%s):",
                 !a->name[0] ? "no name" : name_is_ip(a->name) ? "by IP" : "by name");
        printf("%-33s ", "ESP8266 (BearSSL x509_minimal):");
        if (c->br_code == 0)
                printf("OK\n");
        else
                printf("FAIL %s (%d): %s\n", BR_ERROR_NAME(c->br_code), c->br_code, BR_ERROR_TEXT(c->br_code));
        printf("%-33s ", label);
        if (c->ov.ok)
                printf("OK\n");
        else
                printf("FAIL %s: %s\n", c->ov.result, c->ov.text);

        for (size_t i = 0; i < c->f.n; i++) {
                const struct finding *fi = &c->f.v[i];

                printf("\n%s [%s]: %s.\n", finding_severity_name(fi->severity), fi->id, fi->message);
                if (fi->fix)
                        printf("  fix: %s.\n", fi->fix);
        }
        printf("\n%s\n", device_ok ? "The device would accept this server." : "The device would NOT connect.");
}

static void print_json(const struct cert_ctx *c, bool device_ok) {
        const struct doctor_cert_args *a = c->a;
        X509 *leaf = sk_X509_value(c->chain, 0);
        char desc[64];
        int bits;

        x509_key_desc(X509_get0_pubkey(leaf), desc, sizeof desc, &bits);
        printf("{\"certificate\":");
        json_string(stdout, a->chain_path);
        printf(",\"ca\":");
        json_string(stdout, a->ca_path);
        printf(",\"name\":");
        json_string(stdout, a->name);
        printf(",\"name_kind\":\"%s\"", !a->name[0] ? "none" : name_is_ip(a->name) ? "ip" : "host");
        printf(",\"time\":%lld", (long long) a->at);
        printf(",\"leaf\":{\"cn\":");
        json_string(stdout, c->cn);
        printf(",\"has_san\":%s,\"san_dns\":[", c->san.has_san ? "true" : "false");
        for (size_t i = 0; i < c->san.n_dns; i++) {
                printf(i ? "," : "");
                json_string(stdout, c->san.dns[i]);
        }
        printf("],\"san_ip\":[");
        for (size_t i = 0; i < c->san.n_ip; i++) {
                printf(i ? "," : "");
                json_string(stdout, c->san.ip[i]);
        }
        printf("],\"key\":");
        json_string(stdout, desc);
        printf("},\"bearssl\":{\"ok\":%s,\"code\":%d,\"error\":", c->br_code == 0 ? "true" : "false", c->br_code);
        json_string(stdout, BR_ERROR_NAME(c->br_code));
        printf(",\"text\":");
        json_string(stdout, BR_ERROR_TEXT(c->br_code));
        printf("},\"openssl\":{\"ok\":%s,\"result\":", c->ov.ok ? "true" : "false");
        json_string(stdout, c->ov.result);
        printf(",\"code\":%d,\"text\":", c->ov.code);
        json_string(stdout, c->ov.text);
        printf("},\"findings\":[");
        for (size_t i = 0; i < c->f.n; i++) {
                printf("%s{\"id\":", i ? "," : "");
                json_string(stdout, c->f.v[i].id);
                printf(",\"severity\":\"%s\",\"message\":", finding_severity_name(c->f.v[i].severity));
                json_string(stdout, c->f.v[i].message);
                printf(",\"fix\":");
                json_string(stdout, c->f.v[i].fix);
                printf("}");
        }
        printf("],\"device_ok\":%s}\n", device_ok ? "true" : "false");
}

int doctor_cert_run(const struct doctor_cert_args *a) {
        struct cert_ctx c = { .a = a };
        struct br_certs bchain = {};
        struct br_anchors anchors = {};
        bool ca_bad = false, device_ok;
        int r, ret = 2;

        r = load_inputs(&c, &bchain, &anchors);
        if (r < 0)
                goto out;

        c.br_code = br_chain_verify(&bchain, &anchors, a->name, a->at);
        r = ossl_verify_chain(c.chain, c.cas, a->name, &a->at, &c.ov);
        if (r < 0) {
                fprintf(stderr, "mqtt-edge-bridge-doctor: OpenSSL verification setup failed: %s\n", strerror(-r));
                goto out;
        }
        x509_subject_cn(sk_X509_value(c.chain, 0), c.cn, sizeof c.cn);
        r = x509_san_read(sk_X509_value(c.chain, 0), &c.san);
        /* Order matters: specific findings first, so the generic explanations can defer to them. */
        if (r >= 0)
                r = ca_anchor_findings(&c, &ca_bad);
        if (r >= 0)
                r = chain_findings(&c);
        if (r >= 0)
                r = explain_bearssl(&c, ca_bad);
        if (r >= 0)
                r = explain_openssl(&c);
        if (r >= 0 && c.br_code != BR_ERR_X509_EXPIRED && !findings_has(&c.f, "expired") &&
            !findings_has(&c.f, "not-yet-valid"))
                r = explain_time(&c, "note");
        if (r >= 0)
                r = key_findings(&c);
        if (r >= 0)
                r = name_findings(&c);
        if (r < 0) {
                fprintf(stderr, "mqtt-edge-bridge-doctor: %s\n", strerror(-r));
                goto out;
        }

        device_ok = c.br_code == 0 && !c.key_mismatch && !findings_has(&c.f, "key-unreadable");
        if (a->json)
                print_json(&c, device_ok);
        else
                print_text(&c, device_ok);
        ret = device_ok ? 0 : 1;
out:
        br_certs_done(&bchain);
        br_anchors_done(&anchors);
        cert_ctx_done(&c);
        return ret;
}
