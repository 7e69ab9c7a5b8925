/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: the relay's device → broker half (the outbox and its
 * spool) under random interleavings of device packets, broker
 * acknowledgements in any order, uplink losses and device reconnects,
 * against the model in relay_model.h (exactly once for QoS 2, at least
 * once for QoS 1, acknowledgement order). An invariant that does not hold
 * aborts with its description; RELAY_TRACE=1 prints every event.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "log.h"
#include "relay_model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        static int trace = -1;
        char why[512];

        if (trace < 0) {
                trace = getenv("RELAY_TRACE") != NULL;
                /* The outbox's warnings (spool full, ...) are expected here. */
                log_setup(trace ? LOG_LEVEL_DEBUG : LOG_LEVEL_ERR, LOG_TARGET_STDERR);
        }
        if (size > 4 + 2 * 1000)
                return 0; /* long scripts find nothing short ones cannot, slower */
        if (relay_run(data, size, NULL, trace, why, sizeof why) < 0) {
                fprintf(stderr, "relay model: %s\n", why);
                abort();
        }
        return 0;
}
