/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * config — the daemon's configuration: an INI file read with inih.
 *
 * Key names follow mosquitto.conf where the meaning is the same, so values
 * can be copied across. etc/mqtt-edge-bridge.ini documents every key with
 * its default; config_init() sets exactly those defaults.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proxy_proto.h"

#define CONFIG_MAX_BIND 4
/* certfile/keyfile pairs given in the file (certdir may hold more). */
#define CONFIG_MAX_CERTS 16
#define CONFIG_MAX_PROXY_FROM 16
#define CONFIG_MAX_HOSTS 8

enum config_username_mode {
        USERNAME_FROM_DEVICE = 0, /* what the device sent; the CN if none (default) */
        USERNAME_FROM_CN,         /* always the certificate CN */
        USERNAME_FIXED,           /* [bridge] username */
};

enum config_password_mode {
        PASSWORD_FROM_DEVICE = 0, /* passed through (default) */
        PASSWORD_FIXED,           /* [bridge] password */
        PASSWORD_NONE,            /* never sent */
};

enum log_level {
        LOG_LEVEL_ERR = 3, /* syslog priorities, so they map 1:1 to the journal */
        LOG_LEVEL_WARNING = 4,
        LOG_LEVEL_NOTICE = 5,
        LOG_LEVEL_INFO = 6,
        LOG_LEVEL_DEBUG = 7,
};

enum log_target {
        LOG_TARGET_AUTO = 0, /* journal when started by systemd (JOURNAL_STREAM), else stderr */
        LOG_TARGET_JOURNAL,
        LOG_TARGET_STDERR,
};

struct config_listener {
        char *bind_address[CONFIG_MAX_BIND]; /* "0.0.0.0", "::", ... ; default {"0.0.0.0"} */
        size_t n_bind;
        uint16_t port;                /* default 8884 */
        char *certfile;               /* the first certfile: chain, leaf first; required unless certdir */
        char *keyfile;                /* its key */
        /* More certfile/keyfile pairs (the key repeated): the n-th certfile
         * goes with the n-th keyfile. The certificate whose CN (or, when it
         * has a SAN, a dNSName) equals the name the device sent as SNI
         * (RFC 6066 §3) is used for that connection. */
        char *extra_certfile[CONFIG_MAX_CERTS - 1];
        char *extra_keyfile[CONFIG_MAX_CERTS - 1];
        size_t n_extra;
        char *certdir;                /* directory of NAME.crt + NAME.key pairs, also chosen by SNI */
        char *default_name;           /* the name whose certificate serves no SNI / no match;
                                         NULL = certfile, else certdir's first pair by file name */
        unsigned max_send_fragment;   /* cap on TLS records sent, bytes (512..16384); 0 = off (default) */
        char *cafile;                 /* required when require_certificate */
        char *crlfile;                /* optional */
        bool require_certificate;     /* default true */
        bool revoke_connected;        /* after a reload that changes the CA/CRL, drop devices that no longer verify; default true */
        int tls_version_min;          /* TLS1_VERSION..TLS1_3_VERSION; "tlsv1.2" default */
        char *ciphers;                /* TLS <= 1.2 cipher list; NULL = built-in default */
        char *ciphersuites;           /* TLS 1.3; NULL = OpenSSL default */
        unsigned expiry_warning_days; /* warn this many days before a certificate expires; default 30, 0 = never */
        unsigned handshake_timeout;   /* seconds, default 10 */
        unsigned first_byte_timeout;  /* seconds before the first TLS byte, default 3 (capped by handshake_timeout) */
        unsigned session_cache_size;  /* TLS sessions, default 1024 (0 = off) */
        unsigned session_timeout;     /* seconds, default 86400 */
        enum proxy_version proxy_protocol; /* PROXY header before TLS: off (default), v1, v2 */
        struct proxy_net proxy_from[CONFIG_MAX_PROXY_FROM]; /* who may send it; required when on */
        size_t n_proxy_from;
};

/* One entry of [upstream] host = a b c. */
struct config_upstream_host {
        char *name;                   /* host name, IP literal (no brackets) or socket path */
        uint16_t port;                /* "name:port", else [upstream] port (filled in by config_load) */
        char *server_name;            /* [upstream] server_name, else name; NULL for a socket */
};

struct config_upstream {
        char *host;                   /* the first host's name; default "127.0.0.1"; an absolute path = Unix socket */
        struct config_upstream_host hosts[CONFIG_MAX_HOSTS]; /* every host, in the order given */
        size_t n_hosts;
        uint16_t port;                /* default 8883; ignored for a Unix socket */
        char *cafile;                 /* TLS on when cafile or capath is set */
        char *capath;
        char *certfile;               /* optional client certificate of the bridge */
        char *keyfile;
        char *server_name;            /* name or IP checked against the SAN; default = host */
        int tls_version_min;          /* default tlsv1.2 */
        char *ciphers;
        char *bind_address;           /* optional local address for outgoing connections */
        unsigned connect_timeout;     /* seconds, default 10 */
};

struct config_bridge {
        char *client_id_prefix;       /* prepended to the device's client id; default "" */
        enum config_username_mode username_mode; /* username_mode = device|cn|fixed */
        char *username;               /* for username_mode = fixed */
        enum config_password_mode password_mode; /* password_mode = device|fixed|none */
        char *password;               /* for password_mode = fixed */
        char *mountpoint;             /* e.g. "devices/%c/"; %c = CN, %i = client id; default none */
        bool clientid_must_match_cn;  /* default false; true when mountpoint has %c and it is not set */
        bool allow_clientid_takeover; /* another identity may take a connected client id over; default false */
        char *user;                   /* drop root to this user after start-up; default "mqtt-edge-bridge", NULL = stay */
};

struct config_limits {
        unsigned max_connections;     /* default 1024 (0 = unlimited) */
        unsigned max_handshakes;      /* TLS handshakes in progress, default 64 (0 = unlimited) */
        unsigned max_connections_per_address; /* per source IP address, default 32 (0 = unlimited) */
        size_t max_packet_size;       /* bytes, default 262144 */
        unsigned max_inflight_messages; /* per device and direction, default 20 */
        size_t max_queued_bytes;      /* per device, outgoing to the device, default 1048576 */
        unsigned max_keepalive;       /* seconds; a device asking for more (or 0) gets this, default 65535 */
        unsigned max_subscriptions;   /* per device, default 1000 (0 = unlimited) */
};

struct config_spool {
        char *directory;              /* default "/var/lib/mqtt-edge-bridge" (systemd StateDirectory=) */
        size_t max_bytes;             /* all spool files together, default 268435456 */
        size_t max_bytes_per_device;  /* one device's spool file, default 16777216 */
};

struct config_metrics {
        bool enabled;                 /* Prometheus endpoint on, default false */
        char *bind_address;           /* IPv4/IPv6 literal, default "127.0.0.1" */
        uint16_t port;                /* default 9883 */
};

struct config_log {
        enum log_level level;         /* error|warning|notice|info|debug, default info */
        enum log_target target;       /* auto|journal|stderr, default auto */
};

struct config {
        char *path;                   /* the file this was read from */
        struct config_listener listener;
        struct config_upstream upstream;
        struct config_bridge bridge;
        struct config_limits limits;
        struct config_spool spool;
        struct config_metrics metrics;
        struct config_log log;
};

/* Fill *cfg with the documented defaults (strings malloc'ed or NULL). */
int config_init(struct config *cfg);

/*
 * Read the file at path over the defaults in *cfg (call config_init first),
 * then validate the result (required keys, files readable — certificates,
 * keys, CA, CRL — and consistent settings).
 * Returns 0, or a negative errno with a message in err of the form
 * "FILE:LINE: [section] key: reason" (or "FILE: reason" when no line
 * applies). On failure *cfg holds whatever was read; free it with
 * config_free(). cfg->path is set to a copy of path.
 */
int config_load(struct config *cfg, const char *path, char *err, size_t errlen);

/*
 * Like config_load, but without the checks that the files it names exist
 * and are readable (required keys and consistency are still checked). For
 * tools that need a setting only, e.g. --status run by a user who cannot
 * read the daemon's private key.
 */
int config_load_settings(struct config *cfg, const char *path, char *err, size_t errlen);

/* Same, from a string (used by tests and the fuzzer); name is used as FILE
 * in messages; file checks still apply to paths the text names. */
int config_load_string(struct config *cfg, const char *name, const char *text, char *err, size_t errlen);

/* Free every string cfg owns and zero it. NULL-safe. */
void config_free(struct config *cfg);

/* "tlsv1.2" → TLS1_2_VERSION etc.; -EINVAL if unknown. */
int config_parse_tls_version(const char *s);

/* True when [upstream] host is an absolute path: libmosquitto then connects
 * to that Unix socket (pass port 0), and port is ignored. */
bool config_upstream_is_socket(const struct config_upstream *u);

/* True when the upstream connection uses TLS (cafile or capath set). */
bool config_upstream_uses_tls(const struct config_upstream *u);
