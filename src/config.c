/* SPDX-License-Identifier: MIT */
/*
 * config — read and check mqtt-edge-bridge.ini.
 *
 * inih does the tokenising; everything else is here. inih's handler (as
 * Debian builds it, INI_HANDLER_LINENO = 0) is not told the line number,
 * so the text is fed to ini_parse_stream() through our own reader, which
 * counts lines as it hands them over. The reader also:
 *   - strips leading whitespace, so an indented "key = value" is a key and
 *     never a silent multi-line continuation of the previous value;
 *   - refuses a line longer than inih's buffer, which inih would otherwise
 *     split in two and parse the tail as a line of its own;
 *   - checks section headers, so an unknown (even empty) section is an
 *     error at its own line.
 * Every message names FILE:LINE: [section] key: reason, so an operator can
 * go straight to the line.
 */

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ini.h>
#include <openssl/ssl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "config.h"
#include "mountpoint.h"

/* Far above any sane configuration; stops a wrong --config (a log file, a
 * device node) from being slurped whole. */
#define CONFIG_MAX_FILE_SIZE (1024 * 1024)

enum key_type {
        KEY_STRING,     /* kept as given, "" included */
        KEY_OPTSTRING,  /* "" = unset (NULL) */
        KEY_PATH,       /* like KEY_OPTSTRING; checked for readability afterwards */
        KEY_PAIR_PATH,  /* certfile/keyfile: KEY_PATH that may repeat, each repeat one more pair */
        KEY_HOST,       /* upstream host: name, IP or absolute socket path */
        KEY_IP,         /* one IPv4/IPv6 literal, "" = unset */
        KEY_BIND_LIST,  /* listener bind_address list */
        KEY_PROXY_PROTOCOL, /* off|v1|v2 */
        KEY_NET_LIST,   /* ADDR/PREFIX ... (proxy_from) */
        KEY_U16,
        KEY_UINT,
        KEY_SIZE,
        KEY_BOOL,
        KEY_TLS_VERSION,
        KEY_USERNAME_MODE,
        KEY_PASSWORD_MODE,
        KEY_LOG_LEVEL,
        KEY_LOG_TARGET,
};

struct key_desc {
        const char *section;
        const char *name;
        enum key_type type;
        size_t offset; /* into struct config */
        unsigned long long min, max;
        bool secret;   /* never echo the value in a message */
};

#define OFF(field) offsetof(struct config, field)

static const char *const sections[] = { "listener", "upstream", "bridge", "limits", "spool", "metrics", "log" };

enum {
        K_L_BIND, K_L_PORT, K_L_CERTFILE, K_L_KEYFILE, K_L_CAFILE, K_L_CRLFILE, K_L_REQCERT,
        K_L_TLSVER, K_L_CIPHERS, K_L_CIPHERSUITES, K_L_HS_TIMEOUT, K_L_CACHE, K_L_SESS_TIMEOUT,
        K_L_FIRST_BYTE, K_L_REVOKE,
        K_L_CERTDIR, K_L_DEFAULT_NAME, K_L_MAX_SEND_FRAG, K_L_EXPIRY_DAYS,
        K_L_PROXY, K_L_PROXY_FROM,
        K_U_HOST, K_U_PORT, K_U_CAFILE, K_U_CAPATH, K_U_CERTFILE, K_U_KEYFILE, K_U_SERVER_NAME,
        K_U_TLSVER, K_U_CIPHERS, K_U_BIND, K_U_CONN_TIMEOUT,
        K_B_PREFIX, K_B_USERMODE, K_B_USERNAME, K_B_PASSMODE, K_B_PASSWORD, K_B_MOUNTPOINT,
        K_B_MATCHCN, K_B_TAKEOVER, K_B_USER,
        K_M_MAXCONN, K_M_MAXHS, K_M_PERADDR, K_M_PACKET, K_M_INFLIGHT, K_M_QUEUED, K_M_KEEPALIVE, K_M_SUBS,
        K_S_DIR, K_S_MAX, K_S_MAX_DEV,
        K_X_ENABLED, K_X_BIND, K_X_PORT,
        K_G_LEVEL, K_G_TARGET,
        N_KEYS
};

static const struct key_desc keys[N_KEYS] = {
        [K_L_BIND] = { "listener", "bind_address", KEY_BIND_LIST, OFF(listener.bind_address), 0, 0, false },
        [K_L_PORT] = { "listener", "port", KEY_U16, OFF(listener.port), 1, 65535, false },
        [K_L_CERTFILE] = { "listener", "certfile", KEY_PAIR_PATH, OFF(listener.certfile), 0, 0, false },
        [K_L_KEYFILE] = { "listener", "keyfile", KEY_PAIR_PATH, OFF(listener.keyfile), 0, 0, false },
        [K_L_CERTDIR] = { "listener", "certdir", KEY_PATH, OFF(listener.certdir), 0, 0, false },
        [K_L_DEFAULT_NAME] = { "listener", "default_name", KEY_OPTSTRING, OFF(listener.default_name), 0, 0, false },
        /* RFC 6066 §4: 512..16384 are the sizes a record may be limited to;
         * OpenSSL refuses less than 512. 0 = leave OpenSSL's 16384. */
        [K_L_MAX_SEND_FRAG] = { "listener", "max_send_fragment", KEY_UINT, OFF(listener.max_send_fragment), 0, 16384, false },
        [K_L_EXPIRY_DAYS] = { "listener", "expiry_warning_days", KEY_UINT, OFF(listener.expiry_warning_days), 0, 3650, false },
        [K_L_CAFILE] = { "listener", "cafile", KEY_PATH, OFF(listener.cafile), 0, 0, false },
        [K_L_CRLFILE] = { "listener", "crlfile", KEY_PATH, OFF(listener.crlfile), 0, 0, false },
        [K_L_REQCERT] = { "listener", "require_certificate", KEY_BOOL, OFF(listener.require_certificate), 0, 0, false },
        [K_L_TLSVER] = { "listener", "tls_version", KEY_TLS_VERSION, OFF(listener.tls_version_min), 0, 0, false },
        [K_L_CIPHERS] = { "listener", "ciphers", KEY_OPTSTRING, OFF(listener.ciphers), 0, 0, false },
        [K_L_CIPHERSUITES] = { "listener", "ciphersuites", KEY_OPTSTRING, OFF(listener.ciphersuites), 0, 0, false },
        [K_L_HS_TIMEOUT] = { "listener", "handshake_timeout", KEY_UINT, OFF(listener.handshake_timeout), 1, 3600, false },
        [K_L_FIRST_BYTE] = { "listener", "first_byte_timeout", KEY_UINT, OFF(listener.first_byte_timeout), 1, 3600, false },
        [K_L_REVOKE] = { "listener", "revoke_connected", KEY_BOOL, OFF(listener.revoke_connected), 0, 0, false },
        [K_L_CACHE] = { "listener", "session_cache_size", KEY_UINT, OFF(listener.session_cache_size), 0, 1000000, false },
        [K_L_SESS_TIMEOUT] = { "listener", "session_timeout", KEY_UINT, OFF(listener.session_timeout), 1, 2592000, false },
        [K_L_PROXY] = { "listener", "proxy_protocol", KEY_PROXY_PROTOCOL, OFF(listener.proxy_protocol), 0, 0, false },
        [K_L_PROXY_FROM] = { "listener", "proxy_from", KEY_NET_LIST, OFF(listener.proxy_from), 0, 0, false },

        [K_U_HOST] = { "upstream", "host", KEY_HOST, OFF(upstream.host), 0, 0, false },
        [K_U_PORT] = { "upstream", "port", KEY_U16, OFF(upstream.port), 1, 65535, false },
        [K_U_CAFILE] = { "upstream", "cafile", KEY_PATH, OFF(upstream.cafile), 0, 0, false },
        [K_U_CAPATH] = { "upstream", "capath", KEY_PATH, OFF(upstream.capath), 0, 0, false },
        [K_U_CERTFILE] = { "upstream", "certfile", KEY_PATH, OFF(upstream.certfile), 0, 0, false },
        [K_U_KEYFILE] = { "upstream", "keyfile", KEY_PATH, OFF(upstream.keyfile), 0, 0, false },
        [K_U_SERVER_NAME] = { "upstream", "server_name", KEY_OPTSTRING, OFF(upstream.server_name), 0, 0, false },
        [K_U_TLSVER] = { "upstream", "tls_version", KEY_TLS_VERSION, OFF(upstream.tls_version_min), 0, 0, false },
        [K_U_CIPHERS] = { "upstream", "ciphers", KEY_OPTSTRING, OFF(upstream.ciphers), 0, 0, false },
        [K_U_BIND] = { "upstream", "bind_address", KEY_IP, OFF(upstream.bind_address), 0, 0, false },
        [K_U_CONN_TIMEOUT] = { "upstream", "connect_timeout", KEY_UINT, OFF(upstream.connect_timeout), 1, 3600, false },

        [K_B_PREFIX] = { "bridge", "client_id_prefix", KEY_STRING, OFF(bridge.client_id_prefix), 0, 0, false },
        [K_B_USERMODE] = { "bridge", "username_mode", KEY_USERNAME_MODE, OFF(bridge.username_mode), 0, 0, false },
        [K_B_USERNAME] = { "bridge", "username", KEY_OPTSTRING, OFF(bridge.username), 0, 0, false },
        [K_B_PASSMODE] = { "bridge", "password_mode", KEY_PASSWORD_MODE, OFF(bridge.password_mode), 0, 0, false },
        [K_B_PASSWORD] = { "bridge", "password", KEY_OPTSTRING, OFF(bridge.password), 0, 0, true },
        [K_B_MOUNTPOINT] = { "bridge", "mountpoint", KEY_OPTSTRING, OFF(bridge.mountpoint), 0, 0, false },
        [K_B_MATCHCN] = { "bridge", "clientid_must_match_cn", KEY_BOOL, OFF(bridge.clientid_must_match_cn), 0, 0, false },
        [K_B_TAKEOVER] = { "bridge", "allow_clientid_takeover", KEY_BOOL, OFF(bridge.allow_clientid_takeover), 0, 0, false },
        [K_B_USER] = { "bridge", "user", KEY_OPTSTRING, OFF(bridge.user), 0, 0, false },

        [K_M_MAXCONN] = { "limits", "max_connections", KEY_UINT, OFF(limits.max_connections), 0, 1000000, false },
        [K_M_MAXHS] = { "limits", "max_handshakes", KEY_UINT, OFF(limits.max_handshakes), 0, 1000000, false },
        [K_M_PERADDR] = { "limits", "max_connections_per_address", KEY_UINT, OFF(limits.max_connections_per_address), 0, 1000000, false },
        /* §2.2.3: remaining length ≤ 268435455, plus at most 5 header bytes. */
        [K_M_PACKET] = { "limits", "max_packet_size", KEY_SIZE, OFF(limits.max_packet_size), 64, 268435460ull, false },
        /* A 16-bit packet identifier (§2.3.1) bounds what can be in flight. */
        [K_M_INFLIGHT] = { "limits", "max_inflight_messages", KEY_UINT, OFF(limits.max_inflight_messages), 1, 65535, false },
        [K_M_QUEUED] = { "limits", "max_queued_bytes", KEY_SIZE, OFF(limits.max_queued_bytes), 64, 1ull << 40, false },
        /* §3.1.2.10: keepalive is a 16-bit number of seconds. */
        [K_M_KEEPALIVE] = { "limits", "max_keepalive", KEY_UINT, OFF(limits.max_keepalive), 1, 65535, false },
        [K_M_SUBS] = { "limits", "max_subscriptions", KEY_UINT, OFF(limits.max_subscriptions), 0, 10000000, false },

        [K_S_DIR] = { "spool", "directory", KEY_OPTSTRING, OFF(spool.directory), 0, 0, false },
        [K_S_MAX] = { "spool", "max_bytes", KEY_SIZE, OFF(spool.max_bytes), 4096, 1ull << 44, false },
        [K_S_MAX_DEV] = { "spool", "max_bytes_per_device", KEY_SIZE, OFF(spool.max_bytes_per_device), 4096, 1ull << 44, false },

        [K_X_ENABLED] = { "metrics", "enabled", KEY_BOOL, OFF(metrics.enabled), 0, 0, false },
        [K_X_BIND] = { "metrics", "bind_address", KEY_IP, OFF(metrics.bind_address), 0, 0, false },
        [K_X_PORT] = { "metrics", "port", KEY_U16, OFF(metrics.port), 1, 65535, false },

        [K_G_LEVEL] = { "log", "level", KEY_LOG_LEVEL, OFF(log.level), 0, 0, false },
        [K_G_TARGET] = { "log", "target", KEY_LOG_TARGET, OFF(log.target), 0, 0, false },
};

struct load_state {
        struct config *cfg;
        const char *name;    /* FILE in messages */
        const char *pos;     /* reader position in the text */
        int line;            /* number of the line last handed to inih */
        int seen[N_KEYS];    /* line where each key was set, 0 = not set */
        int cert_line[CONFIG_MAX_CERTS]; /* line of the n-th [listener] certfile */
        int key_line[CONFIG_MAX_CERTS];  /* line of the n-th [listener] keyfile */
        size_t n_certfile, n_keyfile;
        int err;             /* first error (negative errno), 0 = none */
        int err_line;        /* its line, 0 = none */
        bool check_files;    /* false: skip the readability checks (config_load_settings) */
        char *errbuf;
        size_t errlen;
};

static void *field(struct config *cfg, size_t offset)
{
        return (char *) cfg + offset;
}

/* "FILE:LINE: [section] key: reason"; line 0 drops ":LINE", key NULL drops
 * "[section] key: ". Only the first error is kept. */
__attribute__((format(printf, 5, 6)))
static int fail(struct load_state *st, int r, int line, const struct key_desc *k, const char *fmt, ...)
{
        char reason[512];
        va_list ap;

        if (st->err)
                return st->err;
        st->err = r;
        st->err_line = line;

        va_start(ap, fmt);
        vsnprintf(reason, sizeof(reason), fmt, ap);
        va_end(ap);

        if (st->errbuf && st->errlen) {
                char where[32] = "";

                if (line > 0)
                        snprintf(where, sizeof(where), ":%d", line);
                if (k)
                        snprintf(st->errbuf, st->errlen, "%s%s: [%s] %s: %s", st->name, where,
                                 k->section, k->name, reason);
                else
                        snprintf(st->errbuf, st->errlen, "%s%s: %s", st->name, where, reason);
        }
        return r;
}

static int set_string(char **slot, const char *value, bool empty_is_null)
{
        char *p = NULL;

        if (*value || !empty_is_null) {
                p = strdup(value);
                if (!p)
                        return -ENOMEM;
        }
        free(*slot);
        *slot = p;
        return 0;
}

/* Plain decimal: no sign, no spaces, no "0x", no suffix. */
static int parse_ull(const char *s, unsigned long long *out)
{
        unsigned long long v;
        char *end;

        if (*s < '0' || *s > '9')
                return -EINVAL;
        errno = 0;
        v = strtoull(s, &end, 10);
        if (*end)
                return -EINVAL;
        if (errno == ERANGE)
                return -ERANGE;
        *out = v;
        return 0;
}

static int parse_bool(const char *s)
{
        static const char *const yes[] = { "true", "yes", "on", "1" };
        static const char *const no[] = { "false", "no", "off", "0" };

        for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
                if (strcasecmp(s, yes[i]) == 0)
                        return 1;
                if (strcasecmp(s, no[i]) == 0)
                        return 0;
        }
        return -EINVAL;
}

int config_parse_tls_version(const char *s)
{
        /* mosquitto.conf's spelling, so tls_version values copy across. */
        static const struct {
                const char *name;
                int version;
        } table[] = {
                { "tlsv1", TLS1_VERSION },
                { "tlsv1.1", TLS1_1_VERSION },
                { "tlsv1.2", TLS1_2_VERSION },
                { "tlsv1.3", TLS1_3_VERSION },
        };

        if (!s)
                return -EINVAL;
        for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++)
                if (strcmp(s, table[i].name) == 0)
                        return table[i].version;
        return -EINVAL;
}

static bool ip_valid(const char *s)
{
        unsigned char buf[sizeof(struct in6_addr)];

        return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

static int parse_bind_list(struct load_state *st, const struct key_desc *k, const char *value)
{
        struct config_listener *l = &st->cfg->listener;
        char *list[CONFIG_MAX_BIND] = { NULL };
        size_t n = 0;
        const char *p = value;
        int r = 0;

        for (;;) {
                size_t len;
                char *a;

                p += strspn(p, " \t,");
                if (!*p)
                        break;
                len = strcspn(p, " \t,");
                a = strndup(p, len);
                if (!a) {
                        r = -ENOMEM;
                        goto out;
                }
                if (n == CONFIG_MAX_BIND) {
                        free(a);
                        r = fail(st, -EINVAL, st->line, k, "more than %d addresses", CONFIG_MAX_BIND);
                        goto out;
                }
                list[n++] = a;
                if (!ip_valid(a)) {
                        r = fail(st, -EINVAL, st->line, k,
                                 "'%s' is not an IPv4 or IPv6 address (host names are not accepted)", a);
                        goto out;
                }
                for (size_t i = 0; i + 1 < n; i++)
                        if (strcmp(list[i], a) == 0) {
                                r = fail(st, -EINVAL, st->line, k, "'%s' is listed twice", a);
                                goto out;
                        }
                p += len;
        }
        if (n == 0) {
                r = fail(st, -EINVAL, st->line, k, "empty (give at least one address, e.g. 0.0.0.0 or ::)");
                goto out;
        }

        for (size_t i = 0; i < l->n_bind; i++)
                free(l->bind_address[i]);
        memcpy(l->bind_address, list, sizeof(list));
        l->n_bind = n;
        return 0;

out:
        for (size_t i = 0; i < n; i++)
                free(list[i]);
        return r;
}

static void free_hosts(struct config_upstream *u)
{
        for (size_t i = 0; i < CONFIG_MAX_HOSTS; i++) {
                free(u->hosts[i].name);
                free(u->hosts[i].server_name);
        }
        memset(u->hosts, 0, sizeof u->hosts);
        u->n_hosts = 0;
}

/* One host entry: "name", "192.0.2.1", "2001:db8::1" (no port: a bare IPv6
 * literal has colons of its own), "name:1883", "192.0.2.1:1883",
 * "[2001:db8::1]", "[2001:db8::1]:1883". */
static int parse_host_entry(struct load_state *st, const struct key_desc *k, const char *item,
                            struct config_upstream_host *out)
{
        const char *name = item, *port = NULL;
        size_t name_len = strlen(item);

        if (item[0] == '[') {
                const char *close = strchr(item, ']');
                unsigned char a6[16];
                char v6[INET6_ADDRSTRLEN + 1];

                if (!close || (close[1] && close[1] != ':'))
                        return fail(st, -EINVAL, st->line, k, "'%s': expected [IPv6] or [IPv6]:port", item);
                name = item + 1;
                name_len = (size_t) (close - name);
                if (name_len == 0 || name_len >= sizeof v6)
                        return fail(st, -EINVAL, st->line, k, "'%s' is not an IPv6 address in brackets", item);
                memcpy(v6, name, name_len);
                v6[name_len] = '\0';
                if (inet_pton(AF_INET6, v6, a6) != 1)
                        return fail(st, -EINVAL, st->line, k, "'%s' is not an IPv6 address in brackets", item);
                if (close[1] == ':')
                        port = close + 2;
        } else if (item[0] != '/') {
                const char *colon = strchr(item, ':');
                if (colon && !strchr(colon + 1, ':')) {
                        name_len = (size_t) (colon - item);
                        port = colon + 1;
                }
        }
        if (name_len == 0)
                return fail(st, -EINVAL, st->line, k, "'%s': empty host name", item);
        if (port) {
                unsigned long long v;
                if (parse_ull(port, &v) < 0 || v < 1 || v > 65535)
                        return fail(st, -EINVAL, st->line, k, "'%s': the port after ':' is not a number "
                                    "from 1 to 65535", item);
                out->port = (uint16_t) v;
        }
        out->name = strndup(name, name_len);
        return out->name ? 0 : -ENOMEM;
}

/* [upstream] host: one or more hosts separated by spaces, tried in order
 * (dialer.c), or one absolute Unix socket path. */
static int parse_host_list(struct load_state *st, const struct key_desc *k, const char *value)
{
        struct config_upstream *u = &st->cfg->upstream;
        struct config_upstream_host hosts[CONFIG_MAX_HOSTS];
        size_t n = 0;
        const char *p = value;
        char *first = NULL;
        int r = 0;

        memset(hosts, 0, sizeof hosts);
        for (;;) {
                char item[300];
                size_t len;

                p += strspn(p, " \t");
                if (!*p)
                        break;
                len = strcspn(p, " \t");
                if (n == CONFIG_MAX_HOSTS) {
                        r = fail(st, -EINVAL, st->line, k, "more than %d hosts", CONFIG_MAX_HOSTS);
                        goto out;
                }
                if (p[0] == '/' && len >= sizeof(((struct sockaddr_un *) NULL)->sun_path)) {
                        r = fail(st, -EINVAL, st->line, k, "socket path longer than %zu bytes",
                                 sizeof(((struct sockaddr_un *) NULL)->sun_path) - 1);
                        goto out;
                }
                if (len >= sizeof item) {
                        r = fail(st, -EINVAL, st->line, k, "a host longer than %zu characters", sizeof item - 1);
                        goto out;
                }
                memcpy(item, p, len);
                item[len] = '\0';
                r = parse_host_entry(st, k, item, &hosts[n]);
                if (r < 0)
                        goto out;
                n++;
                for (size_t i = 0; i + 1 < n; i++)
                        if (strcmp(hosts[i].name, hosts[n - 1].name) == 0 && hosts[i].port == hosts[n - 1].port) {
                                r = fail(st, -EINVAL, st->line, k, "'%s' is listed twice", item);
                                goto out;
                        }
                p += len;
        }
        if (n == 0) {
                r = fail(st, -EINVAL, st->line, k, "empty (give a host name, an IP address or a socket path)");
                goto out;
        }
        for (size_t i = 0; i < n; i++)
                if (hosts[i].name[0] == '/' && n > 1) {
                        r = fail(st, -EINVAL, st->line, k, "a Unix socket path must be the only host");
                        goto out;
                }
        first = strdup(hosts[0].name);
        if (!first) {
                r = -ENOMEM;
                goto out;
        }
        free_hosts(u);
        memcpy(u->hosts, hosts, sizeof hosts);
        u->n_hosts = n;
        free(u->host);
        u->host = first;
        return 0;
out:
        for (size_t i = 0; i < CONFIG_MAX_HOSTS; i++)
                free(hosts[i].name);
        return r;
}

/* proxy_from: networks separated by spaces or commas. */
static int parse_net_list(struct load_state *st, const struct key_desc *k, const char *value)
{
        struct config_listener *l = &st->cfg->listener;
        struct proxy_net nets[CONFIG_MAX_PROXY_FROM];
        size_t n = 0;
        const char *p = value;

        for (;;) {
                char item[INET6_ADDRSTRLEN + 8];
                const char *why = NULL;
                size_t len;

                p += strspn(p, " \t,");
                if (!*p)
                        break;
                len = strcspn(p, " \t,");
                if (n == CONFIG_MAX_PROXY_FROM)
                        return fail(st, -EINVAL, st->line, k, "more than %d networks", CONFIG_MAX_PROXY_FROM);
                if (len >= sizeof item)
                        return fail(st, -EINVAL, st->line, k, "'%.*s...' is too long for ADDR/PREFIX",
                                    (int) (sizeof item - 1), p);
                memcpy(item, p, len);
                item[len] = '\0';
                if (proxy_net_parse(item, &nets[n], &why) < 0)
                        return fail(st, -EINVAL, st->line, k, "'%s': %s", item, why);
                n++;
                p += len;
        }
        if (n == 0)
                return fail(st, -EINVAL, st->line, k,
                            "empty (give the balancer's addresses, e.g. 127.0.0.1/32 or 10.0.0.0/24)");
        memcpy(l->proxy_from, nets, n * sizeof nets[0]);
        l->n_proxy_from = n;
        return 0;
}

static int set_value(struct load_state *st, const struct key_desc *k, const char *value)
{
        void *f = field(st->cfg, k->offset);
        unsigned long long v;
        int r;

        switch (k->type) {
        case KEY_STRING:
                return set_string(f, value, false);
        case KEY_OPTSTRING:
        case KEY_PATH:
        case KEY_PAIR_PATH:
                return set_string(f, value, true);
        case KEY_HOST:
                return parse_host_list(st, k, value);
        case KEY_IP:
                if (*value && !ip_valid(value))
                        return fail(st, -EINVAL, st->line, k, "'%s' is not an IPv4 or IPv6 address", value);
                return set_string(f, value, true);
        case KEY_BIND_LIST:
                return parse_bind_list(st, k, value);
        case KEY_NET_LIST:
                return parse_net_list(st, k, value);
        case KEY_PROXY_PROTOCOL:
                if (strcmp(value, "off") == 0)
                        *(enum proxy_version *) f = PROXY_NONE;
                else if (strcmp(value, "v1") == 0)
                        *(enum proxy_version *) f = PROXY_V1;
                else if (strcmp(value, "v2") == 0)
                        *(enum proxy_version *) f = PROXY_V2;
                else
                        return fail(st, -EINVAL, st->line, k, "'%s' is not one of off, v1, v2", value);
                return 0;
        case KEY_U16:
        case KEY_UINT:
        case KEY_SIZE: {
                /* A byte count must also fit this machine's size_t: on a
                 * 32-bit system (the Pi's armhf) 1 TiB would wrap to 0. */
                unsigned long long max = k->type == KEY_SIZE && k->max > SIZE_MAX ? SIZE_MAX : k->max;

                r = parse_ull(value, &v);
                if (r == -EINVAL)
                        return fail(st, -EINVAL, st->line, k, "'%s' is not a number", value);
                if (r < 0 || v < k->min || v > max)
                        return fail(st, -ERANGE, st->line, k, "%s is out of range (%llu..%llu)", value,
                                    k->min, max);
                if (k->type == KEY_U16)
                        *(uint16_t *) f = (uint16_t) v;
                else if (k->type == KEY_UINT)
                        *(unsigned *) f = (unsigned) v;
                else
                        *(size_t *) f = (size_t) v;
                return 0;
        }
        case KEY_BOOL:
                r = parse_bool(value);
                if (r < 0)
                        return fail(st, -EINVAL, st->line, k,
                                    "'%s' is not a boolean (true/false, yes/no, on/off, 1/0)", value);
                *(bool *) f = r;
                return 0;
        case KEY_TLS_VERSION:
                r = config_parse_tls_version(value);
                if (r < 0)
                        return fail(st, -EINVAL, st->line, k,
                                    "'%s' is not a TLS version (tlsv1, tlsv1.1, tlsv1.2 or tlsv1.3)", value);
                *(int *) f = r;
                return 0;
        case KEY_USERNAME_MODE:
                if (strcmp(value, "device") == 0)
                        *(enum config_username_mode *) f = USERNAME_FROM_DEVICE;
                else if (strcmp(value, "cn") == 0)
                        *(enum config_username_mode *) f = USERNAME_FROM_CN;
                else if (strcmp(value, "fixed") == 0)
                        *(enum config_username_mode *) f = USERNAME_FIXED;
                else
                        return fail(st, -EINVAL, st->line, k, "'%s' is not one of device, cn, fixed", value);
                return 0;
        case KEY_PASSWORD_MODE:
                if (strcmp(value, "device") == 0)
                        *(enum config_password_mode *) f = PASSWORD_FROM_DEVICE;
                else if (strcmp(value, "fixed") == 0)
                        *(enum config_password_mode *) f = PASSWORD_FIXED;
                else if (strcmp(value, "none") == 0)
                        *(enum config_password_mode *) f = PASSWORD_NONE;
                else
                        return fail(st, -EINVAL, st->line, k, "'%s' is not one of device, fixed, none", value);
                return 0;
        case KEY_LOG_LEVEL: {
                static const struct {
                        const char *name;
                        enum log_level level;
                } levels[] = {
                        { "error", LOG_LEVEL_ERR },   { "warning", LOG_LEVEL_WARNING },
                        { "notice", LOG_LEVEL_NOTICE }, { "info", LOG_LEVEL_INFO },
                        { "debug", LOG_LEVEL_DEBUG },
                };
                for (size_t i = 0; i < sizeof(levels) / sizeof(levels[0]); i++)
                        if (strcmp(value, levels[i].name) == 0) {
                                *(enum log_level *) f = levels[i].level;
                                return 0;
                        }
                return fail(st, -EINVAL, st->line, k,
                            "'%s' is not one of error, warning, notice, info, debug", value);
        }
        case KEY_LOG_TARGET:
                if (strcmp(value, "auto") == 0)
                        *(enum log_target *) f = LOG_TARGET_AUTO;
                else if (strcmp(value, "journal") == 0)
                        *(enum log_target *) f = LOG_TARGET_JOURNAL;
                else if (strcmp(value, "stderr") == 0)
                        *(enum log_target *) f = LOG_TARGET_STDERR;
                else
                        return fail(st, -EINVAL, st->line, k, "'%s' is not one of auto, journal, stderr", value);
                return 0;
        }
        return -EINVAL;
}

/* [listener] certfile / keyfile: the first goes where a single pair always
 * went (listener.certfile/keyfile), each repeat is one more pair for SNI;
 * validate() checks that they pair up. Returns inih's 1 / 0. */
static int add_pair_path(struct load_state *st, size_t idx, const char *value)
{
        const struct key_desc *k = &keys[idx];
        struct config_listener *l = &st->cfg->listener;
        bool cert = idx == K_L_CERTFILE;
        size_t *n = cert ? &st->n_certfile : &st->n_keyfile;
        int *lines = cert ? st->cert_line : st->key_line;
        char **slot;

        if (!*value) {
                fail(st, -EINVAL, st->line, k, "empty (give a PEM file)");
                return 0;
        }
        if (*n == CONFIG_MAX_CERTS) {
                fail(st, -EINVAL, st->line, k, "more than %d (put further certificates in certdir)",
                     CONFIG_MAX_CERTS);
                return 0;
        }
        slot = *n == 0 ? (cert ? &l->certfile : &l->keyfile)
                       : (cert ? &l->extra_certfile[*n - 1] : &l->extra_keyfile[*n - 1]);
        if (set_string(slot, value, true) < 0) {
                fail(st, -ENOMEM, st->line, k, "%s", strerror(ENOMEM));
                return 0;
        }
        if (*n == 0)
                st->seen[idx] = st->line;
        lines[(*n)++] = st->line;
        return 1;
}

static int handler(void *user, const char *section, const char *name, const char *value)
{
        struct load_state *st = user;
        const char *elsewhere = NULL;
        int r;

        if (st->err)
                return 0;
        if (!*section) {
                fail(st, -EINVAL, st->line, NULL, "'%s' is outside any [section]", name);
                return 0;
        }

        for (size_t i = 0; i < N_KEYS; i++) {
                const struct key_desc *k = &keys[i];

                if (strcmp(k->name, name) != 0)
                        continue;
                if (strcmp(k->section, section) != 0) {
                        elsewhere = k->section;
                        continue;
                }
                if (k->type == KEY_PAIR_PATH)
                        return add_pair_path(st, i, value);
                if (st->seen[i]) {
                        fail(st, -EINVAL, st->line, k, "set twice (first on line %d)", st->seen[i]);
                        return 0;
                }
                st->seen[i] = st->line;
                r = set_value(st, k, value);
                if (r < 0) {
                        if (!st->err) /* only -ENOMEM gets here without a message */
                                fail(st, r, st->line, k, "%s", strerror(-r));
                        return 0;
                }
                return 1;
        }

        if (elsewhere)
                fail(st, -EINVAL, st->line, NULL, "[%s] %s: unknown key (it belongs in [%s])", section, name,
                     elsewhere);
        else
                fail(st, -EINVAL, st->line, NULL, "[%s] %s: unknown key", section, name);
        return 0;
}

/* A section header, checked before inih sees it (inih never tells the
 * handler about a section that has no keys). */
static void check_section(struct load_state *st, const char *p, size_t n)
{
        const char *close = memchr(p, ']', n);
        size_t len;

        if (!close) {
                fail(st, -EINVAL, st->line, NULL, "section header without a closing ']'");
                return;
        }
        len = (size_t) (close - p - 1);
        for (size_t i = 0; i < sizeof(sections) / sizeof(sections[0]); i++)
                if (strlen(sections[i]) == len && memcmp(sections[i], p + 1, len) == 0)
                        return;
        char known[128] = "";
        size_t at = 0;
        for (size_t i = 0; i < sizeof(sections) / sizeof(sections[0]) && at < sizeof(known); i++)
                at += (size_t) snprintf(known + at, sizeof(known) - at, "%s[%s]", i ? ", " : "", sections[i]);
        fail(st, -EINVAL, st->line, NULL, "unknown section [%.*s] (known: %s)", (int) len, p + 1, known);
}

/* fgets()-like reader for ini_parse_stream(): one whole line per call. */
static char *reader(char *buf, int num, void *user)
{
        struct load_state *st = user;
        const char *p, *nl;
        size_t n;

        if (st->err || !*st->pos)
                return NULL; /* ends the parse: the first error is the one reported */

        st->line++;
        p = st->pos;
        p += strspn(p, " \t");
        nl = strchr(p, '\n');
        n = nl ? (size_t) (nl - p) + 1 : strlen(p);
        if (num < 2 || n > (size_t) num - 1) {
                fail(st, -EINVAL, st->line, NULL, "line too long (at most %d characters)", num - 2);
                return NULL;
        }
        memcpy(buf, p, n);
        buf[n] = '\0';
        st->pos = p + n;

        /* inih skips a UTF-8 BOM on line 1; so must the section check. */
        if (st->line == 1 && n >= 3 && memcmp(p, "\xef\xbb\xbf", 3) == 0) {
                if (p[3] == '[')
                        check_section(st, p + 3, n - 3);
        } else if (*p == '[')
                check_section(st, p, n);
        return st->err ? NULL : buf;
}

static int check_one_path(struct load_state *st, const struct key_desc *k, const char *path, int line,
                          bool directory)
{
        struct stat sb;

        if (!path || !st->check_files)
                return 0;
        if (stat(path, &sb) < 0)
                return fail(st, -errno, line, k, "'%s': %s", path, strerror(errno));
        if (directory && !S_ISDIR(sb.st_mode))
                return fail(st, -ENOTDIR, line, k, "'%s' is not a directory", path);
        if (!directory && S_ISDIR(sb.st_mode))
                return fail(st, -EISDIR, line, k, "'%s' is a directory, not a file", path);
        /* access() checks with the real uid, the one the daemon runs as under
         * systemd's User=; opening and parsing is the TLS layer's job. */
        if (access(path, directory ? R_OK | X_OK : R_OK) < 0)
                return fail(st, -errno, line, k, "'%s' is not readable by uid %u: %s", path,
                            (unsigned) getuid(), strerror(errno));
        return 0;
}

static int check_path(struct load_state *st, size_t idx, bool directory)
{
        const struct key_desc *k = &keys[idx];

        return check_one_path(st, k, *(char **) field(st->cfg, k->offset), st->seen[idx], directory);
}

static int require(struct load_state *st, size_t idx, const char *why)
{
        if (*(char **) field(st->cfg, keys[idx].offset))
                return 0;
        return fail(st, -EINVAL, st->seen[idx], &keys[idx], "%s", why);
}

/* Does a mountpoint template use %<which> ("%%" is a literal '%')? */
static bool mountpoint_uses(const char *t, char which)
{
        for (; t && *t; t++)
                if (*t == '%') {
                        if (t[1] == which)
                                return true;
                        if (t[1])
                                t++;
                }
        return false;
}

/* The listener's certificates: pairs that match up, certfile or certdir,
 * and every file readable. */
static int validate_listener_certs(struct load_state *st)
{
        const struct config_listener *l = &st->cfg->listener;
        int r;

        if (!l->certfile && !l->certdir) {
                r = require(st, K_L_CERTFILE,
                            "required (the listener's certificate chain, PEM, leaf first), or certdir");
                if (r < 0)
                        return r;
        }
        if (st->n_certfile == 1 && st->n_keyfile == 0)
                return require(st, K_L_KEYFILE, "required (the private key of certfile, PEM)");
        if (st->n_certfile != st->n_keyfile) {
                bool cert = st->n_certfile > st->n_keyfile;
                size_t n = cert ? st->n_certfile : st->n_keyfile;
                size_t idx = cert ? K_L_CERTFILE : K_L_KEYFILE;

                return fail(st, -EINVAL, (cert ? st->cert_line : st->key_line)[n - 1], &keys[idx],
                            "%s #%zu has no %s (give each certfile its keyfile, in the same order)",
                            keys[idx].name, n, cert ? "keyfile" : "certfile");
        }
        st->cfg->listener.n_extra = st->n_certfile > 0 ? st->n_certfile - 1 : 0;
        for (size_t i = 0; i < st->n_certfile; i++) {
                r = check_one_path(st, &keys[K_L_CERTFILE], i ? l->extra_certfile[i - 1] : l->certfile,
                                   st->cert_line[i], false);
                if (r < 0)
                        return r;
                r = check_one_path(st, &keys[K_L_KEYFILE], i ? l->extra_keyfile[i - 1] : l->keyfile,
                                   st->key_line[i], false);
                if (r < 0)
                        return r;
        }
        return check_path(st, K_L_CERTDIR, true);
}

static int validate(struct load_state *st)
{
        struct config *cfg = st->cfg;
        const char *why = NULL;
        char *mp = NULL;
        int r;

        /* [listener] */
        r = validate_listener_certs(st);
        if (r < 0)
                return r;
        if (cfg->listener.max_send_fragment && cfg->listener.max_send_fragment < 512)
                return fail(st, -ERANGE, st->seen[K_L_MAX_SEND_FRAG], &keys[K_L_MAX_SEND_FRAG],
                            "%u is out of range (0 = off, or 512..16384)", cfg->listener.max_send_fragment);
        if (cfg->listener.require_certificate) {
                r = require(st, K_L_CAFILE,
                            "required when require_certificate is true (the CA that signs the devices' certificates)");
                if (r < 0)
                        return r;
        }
        static const size_t files[] = { K_L_CAFILE, K_L_CRLFILE,
                                        K_U_CAFILE, K_U_CERTFILE, K_U_KEYFILE };
        for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
                r = check_path(st, files[i], false);
                if (r < 0)
                        return r;
        }
        r = check_path(st, K_U_CAPATH, true);
        if (r < 0)
                return r;

        /* A balancer's header is believed only from the balancer. */
        if (cfg->listener.proxy_protocol != PROXY_NONE && cfg->listener.n_proxy_from == 0)
                return fail(st, -EINVAL, st->seen[K_L_PROXY], &keys[K_L_PROXY],
                            "%s needs proxy_from (the load balancer's addresses, ADDR/PREFIX): "
                            "anyone else could claim any device address",
                            proxy_version_to_string(cfg->listener.proxy_protocol));
        if (cfg->listener.proxy_protocol == PROXY_NONE && cfg->listener.n_proxy_from)
                return fail(st, -EINVAL, st->seen[K_L_PROXY_FROM], &keys[K_L_PROXY_FROM],
                            "set, but only used with proxy_protocol = v1 or v2");

        /* [upstream] */
        if (!cfg->upstream.certfile != !cfg->upstream.keyfile) {
                size_t set = cfg->upstream.certfile ? K_U_CERTFILE : K_U_KEYFILE;

                return fail(st, -EINVAL, st->seen[set], &keys[set], "set without %s (give both or neither)",
                            set == K_U_CERTFILE ? "keyfile" : "certfile");
        }
        if (cfg->upstream.certfile && !config_upstream_uses_tls(&cfg->upstream))
                return fail(st, -EINVAL, st->seen[K_U_CERTFILE], &keys[K_U_CERTFILE],
                            "a client certificate needs TLS upstream: set cafile or capath too");

        /* [bridge]: a value that would be silently ignored is a mistake too. */
        if (cfg->bridge.username_mode == USERNAME_FIXED) {
                r = require(st, K_B_USERNAME, "required when username_mode = fixed");
                if (r < 0)
                        return r;
        } else if (cfg->bridge.username)
                return fail(st, -EINVAL, st->seen[K_B_USERNAME], &keys[K_B_USERNAME],
                            "set, but only used with username_mode = fixed");
        if (cfg->bridge.password_mode == PASSWORD_FIXED) {
                r = require(st, K_B_PASSWORD, "required when password_mode = fixed");
                if (r < 0)
                        return r;
        } else if (cfg->bridge.password)
                return fail(st, -EINVAL, st->seen[K_B_PASSWORD], &keys[K_B_PASSWORD],
                            "set, but only used with password_mode = fixed");
        r = mountpoint_expand(cfg->bridge.mountpoint, "cn", "client", &mp, &why);
        free(mp);
        if (r == -ENOMEM)
                return fail(st, r, 0, NULL, "%s", strerror(ENOMEM));
        if (r < 0)
                return fail(st, r, st->seen[K_B_MOUNTPOINT], &keys[K_B_MOUNTPOINT], "'%s': %s",
                            cfg->bridge.mountpoint, why ? why : "invalid");
        /* Identity is the certificate: a mountpoint keyed by the client id
         * would let any device reach another's topics by claiming its id,
         * unless ids are bound to the CN; with %c they are, by default. */
        if (mountpoint_uses(cfg->bridge.mountpoint, 'c') && !st->seen[K_B_MATCHCN])
                cfg->bridge.clientid_must_match_cn = true;
        if (mountpoint_uses(cfg->bridge.mountpoint, 'i') && !cfg->bridge.clientid_must_match_cn)
                return fail(st, -EINVAL, st->seen[K_B_MOUNTPOINT], &keys[K_B_MOUNTPOINT],
                            "'%s': %%i (the client id) needs clientid_must_match_cn = true, or any "
                            "certificate could reach another device's topics by claiming its client id",
                            cfg->bridge.mountpoint);

        /* [limits] */
        if (cfg->limits.max_queued_bytes < cfg->limits.max_packet_size) {
                size_t at = st->seen[K_M_QUEUED] ? K_M_QUEUED : K_M_PACKET;

                return fail(st, -EINVAL, st->seen[at], &keys[at],
                            "max_queued_bytes (%zu) is smaller than max_packet_size (%zu): "
                            "a packet of maximum size could never be delivered",
                            cfg->limits.max_queued_bytes, cfg->limits.max_packet_size);
        }

        /* [metrics] */
        if (cfg->metrics.enabled && !cfg->metrics.bind_address)
                return fail(st, -EINVAL, st->seen[K_X_BIND], &keys[K_X_BIND],
                            "empty while enabled is true (give an address, e.g. 127.0.0.1)");

        /* Each host: its port, and the name its certificate must carry
         * (server_name applies to all of them when set). */
        for (size_t i = 0; i < cfg->upstream.n_hosts; i++) {
                struct config_upstream_host *h = &cfg->upstream.hosts[i];
                const char *sn = cfg->upstream.server_name ? cfg->upstream.server_name : h->name;

                if (!h->port)
                        h->port = cfg->upstream.port;
                free(h->server_name);
                h->server_name = NULL;
                if (h->name[0] != '/' && !(h->server_name = strdup(sn)))
                        return fail(st, -ENOMEM, 0, NULL, "%s", strerror(ENOMEM));
        }

        /* The TLS layer verifies the upstream certificate against this. */
        if (!cfg->upstream.server_name && !config_upstream_is_socket(&cfg->upstream)) {
                cfg->upstream.server_name = strdup(cfg->upstream.host);
                if (!cfg->upstream.server_name)
                        return fail(st, -ENOMEM, 0, NULL, "%s", strerror(ENOMEM));
        }
        return 0;
}

static int load_text(struct config *cfg, const char *name, const char *text, bool check_files,
                     char *err, size_t errlen)
{
        struct load_state st = {
                .cfg = cfg,
                .name = name,
                .pos = text,
                .errbuf = err,
                .errlen = errlen,
                .check_files = check_files,
        };
        int r;

        r = ini_parse_stream(reader, &st, handler, &st);
        /* inih reports the first line it could not parse (no '=' or ':');
         * the reader stops at our own first error, so whichever line comes
         * first is the one to report. */
        if (r > 0 && (!st.err || r < st.err_line)) {
                st.err = 0;
                fail(&st, -EINVAL, r, NULL, "syntax error: expected 'key = value', '[section]' or a comment");
        } else if (r < 0 && !st.err)
                fail(&st, -ENOMEM, 0, NULL, "%s", strerror(ENOMEM));
        if (st.err)
                return st.err;

        return validate(&st);
}

static int set_path(struct config *cfg, const char *name)
{
        char *p = strdup(name);

        if (!p)
                return -ENOMEM;
        free(cfg->path);
        cfg->path = p;
        return 0;
}

static void set_err(char *err, size_t errlen, const char *file, const char *reason)
{
        if (err && errlen)
                snprintf(err, errlen, "%s: %s", file, reason);
}

int config_load_string(struct config *cfg, const char *name, const char *text, char *err, size_t errlen)
{
        int r;

        if (err && errlen)
                err[0] = '\0';
        if (!name)
                name = "<string>";
        r = set_path(cfg, name);
        if (r < 0) {
                set_err(err, errlen, name, strerror(ENOMEM));
                return r;
        }
        return load_text(cfg, name, text ? text : "", true, err, errlen);
}

static int load_file(struct config *cfg, const char *path, bool check_files, char *err, size_t errlen)
{
        char *text = NULL;
        size_t len = 0;
        struct stat sb;
        int fd = -1, r;

        if (err && errlen)
                err[0] = '\0';
        r = set_path(cfg, path);
        if (r < 0) {
                set_err(err, errlen, path, strerror(ENOMEM));
                return r;
        }

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0) {
                r = -errno;
                if (err && errlen)
                        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(-r));
                return r;
        }
        if (fstat(fd, &sb) < 0) {
                r = -errno;
                set_err(err, errlen, path, strerror(-r));
                goto out;
        }
        if (!S_ISREG(sb.st_mode)) {
                r = S_ISDIR(sb.st_mode) ? -EISDIR : -EINVAL;
                set_err(err, errlen, path, "not a regular file");
                goto out;
        }
        if (sb.st_size > CONFIG_MAX_FILE_SIZE) {
                r = -EFBIG;
                set_err(err, errlen, path, "larger than 1 MiB: not a configuration file");
                goto out;
        }

        text = malloc((size_t) sb.st_size + 1);
        if (!text) {
                r = -ENOMEM;
                set_err(err, errlen, path, strerror(ENOMEM));
                goto out;
        }
        /* Read to EOF rather than trusting st_size, which can change under us. */
        for (;;) {
                ssize_t n = read(fd, text + len, (size_t) sb.st_size - len);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0) {
                        r = -errno;
                        if (err && errlen)
                                snprintf(err, errlen, "%s: cannot read: %s", path, strerror(-r));
                        goto out;
                }
                if (n == 0 || (len += (size_t) n) == (size_t) sb.st_size)
                        break;
        }
        text[len] = '\0';
        if (strlen(text) != len) {
                r = -EINVAL;
                set_err(err, errlen, path, "contains a NUL byte: not a text file");
                goto out;
        }

        r = load_text(cfg, path, text, check_files, err, errlen);
out:
        free(text);
        if (fd >= 0)
                close(fd);
        return r;
}

int config_load(struct config *cfg, const char *path, char *err, size_t errlen)
{
        return load_file(cfg, path, true, err, errlen);
}

int config_load_settings(struct config *cfg, const char *path, char *err, size_t errlen)
{
        return load_file(cfg, path, false, err, errlen);
}

int config_init(struct config *cfg)
{
        memset(cfg, 0, sizeof(*cfg));

        cfg->listener.bind_address[0] = strdup("0.0.0.0");
        cfg->listener.n_bind = 1;
        cfg->listener.port = 8884;
        cfg->listener.require_certificate = true;
        cfg->listener.tls_version_min = TLS1_2_VERSION;
        cfg->listener.handshake_timeout = 10;
        cfg->listener.first_byte_timeout = 3;
        cfg->listener.revoke_connected = true;
        cfg->listener.session_cache_size = 1024;
        cfg->listener.session_timeout = 86400;
        cfg->listener.expiry_warning_days = 30;

        cfg->upstream.host = strdup("127.0.0.1");
        cfg->upstream.hosts[0].name = strdup("127.0.0.1");
        cfg->upstream.n_hosts = 1;
        cfg->upstream.port = 8883;
        cfg->upstream.tls_version_min = TLS1_2_VERSION;
        cfg->upstream.connect_timeout = 10;

        cfg->bridge.client_id_prefix = strdup("");
        cfg->bridge.username_mode = USERNAME_FROM_DEVICE;
        cfg->bridge.password_mode = PASSWORD_FROM_DEVICE;
        cfg->bridge.clientid_must_match_cn = false;
        cfg->bridge.allow_clientid_takeover = false;
        cfg->bridge.user = strdup("mqtt-edge-bridge");

        cfg->limits.max_connections = 1024;
        cfg->limits.max_handshakes = 64;
        cfg->limits.max_connections_per_address = 32;
        cfg->limits.max_packet_size = 262144;
        cfg->limits.max_inflight_messages = 20;
        cfg->limits.max_queued_bytes = 1048576;
        cfg->limits.max_keepalive = 65535;
        cfg->limits.max_subscriptions = 1000;

        cfg->spool.directory = strdup("/var/lib/mqtt-edge-bridge");
        cfg->spool.max_bytes = 268435456;
        cfg->spool.max_bytes_per_device = 16777216;

        cfg->metrics.enabled = false;
        cfg->metrics.bind_address = strdup("127.0.0.1");
        cfg->metrics.port = 9883;

        cfg->log.level = LOG_LEVEL_INFO;
        cfg->log.target = LOG_TARGET_AUTO;

        if (!cfg->listener.bind_address[0] || !cfg->upstream.host || !cfg->upstream.hosts[0].name ||
            !cfg->bridge.client_id_prefix ||
            !cfg->spool.directory || !cfg->metrics.bind_address) {
                config_free(cfg);
                return -ENOMEM;
        }
        return 0;
}

static void free_secret(char *s)
{
        if (!s)
                return;
        /* Keep the upstream password out of freed heap that a later core
         * dump might show. */
        explicit_bzero(s, strlen(s));
        free(s);
}

void config_free(struct config *cfg)
{
        if (!cfg)
                return;

        free(cfg->path);
        for (size_t i = 0; i < CONFIG_MAX_BIND; i++)
                free(cfg->listener.bind_address[i]);
        free(cfg->listener.certfile);
        free(cfg->listener.keyfile);
        for (size_t i = 0; i < CONFIG_MAX_CERTS - 1; i++) {
                free(cfg->listener.extra_certfile[i]);
                free(cfg->listener.extra_keyfile[i]);
        }
        free(cfg->listener.certdir);
        free(cfg->listener.default_name);
        free(cfg->listener.cafile);
        free(cfg->listener.crlfile);
        free(cfg->listener.ciphers);
        free(cfg->listener.ciphersuites);

        free(cfg->upstream.host);
        free_hosts(&cfg->upstream);
        free(cfg->upstream.cafile);
        free(cfg->upstream.capath);
        free(cfg->upstream.certfile);
        free(cfg->upstream.keyfile);
        free(cfg->upstream.server_name);
        free(cfg->upstream.ciphers);
        free(cfg->upstream.bind_address);

        free(cfg->bridge.client_id_prefix);
        free(cfg->bridge.username);
        free_secret(cfg->bridge.password);
        free(cfg->bridge.mountpoint);
        free(cfg->bridge.user);

        free(cfg->spool.directory);

        free(cfg->metrics.bind_address);

        memset(cfg, 0, sizeof(*cfg));
}

bool config_upstream_is_socket(const struct config_upstream *u)
{
        return u && u->host && u->host[0] == '/';
}

bool config_upstream_uses_tls(const struct config_upstream *u)
{
        return u && (u->cafile || u->capath);
}
