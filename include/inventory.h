/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * inventory — what the bridge knows about certificates and devices beyond
 * the live sessions: the client certificates of devices seen since start
 * (CN and expiry), the recent handshake failures (a ring), and the expiry
 * warnings for listener certificates, the CA and those device
 * certificates.
 *
 * A certificate that expires within [listener] expiry_warning_days is
 * logged as a warning when first seen or loaded, and again once a day
 * (the daily check), so the journal says it without saying it per
 * connection.
 */

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

struct bridge;
struct inventory;

#define INVENTORY_MAX_DEVICES 4096     /* certificates remembered; the oldest seen is forgotten */
#define INVENTORY_MAX_FAILURES 32      /* handshake failures kept */
#define INVENTORY_CHECK_USEC (24ULL * 3600 * 1000000)

struct inventory_failure {
        time_t when;                   /* CLOCK_REALTIME */
        char peer[64];
        char subject[256];             /* of the certificate the device presented, "" if none */
        char reason[160];
};

enum inventory_kind { INVENTORY_LISTENER, INVENTORY_CA, INVENTORY_DEVICE };

/* Make it and run the first check (listener certificates and CA of
 * b->device_ctx); a daily timer repeats it. Returns 0 or -ENOMEM. */
int inventory_new(struct bridge *b, struct inventory **out);

/* NULL-safe. */
void inventory_free(struct inventory *inv);

/* Warn about every certificate within the warning window now (start-up,
 * reload, daily). */
void inventory_check(struct inventory *inv);

/* A device presented a certificate (CN, notAfter): remember it; warn at
 * once if it is within the window and was not warned about today. */
void inventory_device_seen(struct inventory *inv, const char *cn, time_t not_after);

/* A handshake failed: remember it (the oldest falls out of the ring). */
void inventory_handshake_failed(struct inventory *inv, const char *peer, const char *subject, const char *reason);

/* Every certificate with its expiry: listener ones, CA, devices seen.
 * name is a CN (or the subject of a CA without one). */
void inventory_foreach_cert(const struct inventory *inv,
                            void (*fn)(enum inventory_kind kind, const char *name, time_t not_after, void *u),
                            void *u);

/* The failures, oldest first. */
void inventory_foreach_failure(const struct inventory *inv,
                               void (*fn)(const struct inventory_failure *f, void *u), void *u);

const char *inventory_kind_name(enum inventory_kind kind);
