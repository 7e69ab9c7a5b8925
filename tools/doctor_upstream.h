/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * doctor_upstream — "mqtt-edge-bridge-doctor upstream": connect to the
 * main broker the way the bridge will for one device (the daemon's
 * configuration file, its upstream TLS context, its identity and
 * mountpoint rules), with libmosquitto, and report the transport, the
 * broker's certificate and its verification, the CONNACK, and whether
 * the broker's ACL lets the device publish and subscribe under its
 * mountpoint.
 */

#include <stdbool.h>

/* Exit statuses, documented in mqtt-edge-bridge-doctor(1). */
enum {
        DOCTOR_UPSTREAM_OK = 0,
        DOCTOR_UPSTREAM_UNREACHABLE = 1,        /* socket, TLS, or no CONNACK */
        DOCTOR_UPSTREAM_USAGE = 2,              /* bad usage or configuration */
        DOCTOR_UPSTREAM_REFUSED = 3,            /* CONNACK other than 0 */
        DOCTOR_UPSTREAM_DENIED = 4,             /* publish or subscribe not allowed */
};

struct doctor_upstream_args {
        const char *config_path;
        const char *cn;                 /* the device's certificate CN; NULL = none given */
        const char *client_id;          /* the device's client id; NULL = an empty one (generated) */
        const char *username;           /* what the device would send; NULL = none */
        const char *password;
        const char *password_file;      /* alternative to password: the file's first line */
        unsigned timeout_sec;           /* per step; 0 = [upstream] connect_timeout */
        bool json;
};

/* Prints the report; returns one of the exit statuses above. */
int doctor_upstream_run(const struct doctor_upstream_args *a);
