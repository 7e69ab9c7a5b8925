/* SPDX-License-Identifier: MIT */
/*
 * The outbox (device → broker, with the spool) against the relay model of
 * tests/fuzz/relay_model.h: the fuzzer's model, run here on fixed scripts
 * (each a case worth keeping: a bug once found, or a path to keep covered)
 * and on pseudo-random scripts from fixed seeds, so that the plain and the
 * sanitizer builds check it on every `meson test --suite unit`.
 * RELAY_SEEDS=n runs n random scripts instead of the default 2000; a
 * failing script is run again traced (every event on stderr), and
 * RELAY_TRACE=1 traces every script.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "log.h"
#include "relay_model.h"

/* Script ops (relay_model.c, enum op). */
enum {
        PUB = 0,        /* arg: bits 0-1 QoS (3 = 1), 2-4 all set = refused, 4-5 topic */
        REL = 2,        /* the device's PUBREL for one of its PUBREC'd messages */
        BREAD = 3,      /* the bridge reads n (0 = all) packets of the device, commits */
        DREAD = 4,      /* the device reads n (0 = all) acknowledgements */
        KREAD = 5,      /* the broker reads n (0 = all) packets */
        KACK = 6,       /* the broker sends the arg-th acknowledgement it owes */
        DOWN = 7,       /* the uplink is lost */
        UP = 8,         /* the uplink is back */
        PUMP = 9,
        RECONNECT = 10, /* the device reconnects; arg & 1: the uplink connects first,
                         * arg >> 1 & 7: rounds of a replayer while it is away */
        RESTART = 12,   /* the broker restarts without its sessions */
};

/* Configuration byte 0: bit 0 clean session, bits 1-3 max_inflight - 1,
 * bits 4-5 spool bound (0, 1500, 4000, none). Byte 1: pids 1..2+b%15,
 * high water 64 << (b >> 4 & 3). Byte 2: max_qos0_bytes / 2. Byte 3 bit 0:
 * the uplink is up when the device first connects. */
#define PERSISTENT(inflight) (uint8_t) (((inflight) - 1) << 1)
#define CLEAN(inflight) (uint8_t) (1 | ((inflight) - 1) << 1)

static void run(const uint8_t *script, size_t len)
{
        char why[512];
        int r = relay_run(script, len, NULL, getenv("RELAY_TRACE") != NULL, why, sizeof why);
        if (r != 0) {
                /* Print it again, traced, to see how it came to this. */
                (void) relay_run(script, len, NULL, 1, why, sizeof why);
                fail_msg("%s", why);
        }
}

#define RUN(...)                                                   \
        do {                                                       \
                static const uint8_t s_[] = { __VA_ARGS__ };       \
                run(s_, sizeof s_);                                \
        } while (0)

/* QoS 1 and 2 forwarded directly, acknowledged out of order by the broker:
 * the device still gets them in order. */
static void test_direct_out_of_order(void **state)
{
        (void) state;
        RUN(PERSISTENT(4), 8, 50, 1,
            PUB, 1, PUB, 2 | 4, PUB, 1 | 8, BREAD, 0, KREAD, 0,
            KACK, 2, KACK, 1, KACK, 0, DREAD, 0, REL, 0, BREAD, 0, KREAD, 0, KACK, 0, DREAD, 0);
}

/* Offline from the start: spooled, acknowledged after fsync, replayed
 * with the bridge's own identifiers once the uplink is up. */
static void test_offline_then_replay(void **state)
{
        (void) state;
        RUN(PERSISTENT(2), 8, 50, 0,
            PUB, 1, PUB, 2, PUB, 0, BREAD, 0, DREAD, 0, REL, 0, BREAD, 0, UP, 0, KREAD, 0,
            KACK, 0, KACK, 0, KREAD, 0, KACK, 0, KACK, 0);
}

/* The uplink is lost with messages in flight: spooled, acknowledged, and
 * sent again; a QoS 2 message the broker had PUBREC'd is released on the
 * new link (persistent) or spooled as the bridge's own (clean). */
static void test_link_lost_in_flight(void **state)
{
        (void) state;
        for (unsigned clean = 0; clean < 2; clean++) {
                uint8_t s[] = { clean ? CLEAN(8) : PERSISTENT(8), 8, 50, 1,
                                PUB, 2, PUB, 1, PUB, 2 | 4, BREAD, 0, KREAD, 0, KACK, 0, DOWN, 0, DREAD, 0,
                                REL, 0, BREAD, 0, UP, 0, KREAD, 0, KACK, 0, KACK, 0, KREAD, 0, KACK, 0 };
                run(s, sizeof s);
        }
}

/* The device reconnects with messages unacknowledged and resends them
 * with DUP; the broker holds the QoS 2 one and takes the DUP for the same. */
static void test_reconnect_resend_dup(void **state)
{
        (void) state;
        RUN(PERSISTENT(4), 8, 50, 1,
            PUB, 2, PUB, 1, BREAD, 0, KREAD, 0, RECONNECT, 1, BREAD, 0, KREAD, 0, KACK, 0, KACK, 0, KACK, 0,
            DREAD, 0, REL, 0, BREAD, 0, KREAD, 0, KACK, 0);
}

/* A refused publish in the middle is acknowledged in its turn. */
static void test_refused_in_order(void **state)
{
        (void) state;
        RUN(PERSISTENT(4), 8, 50, 1,
            PUB, 1, PUB, 0x1d, PUB, 1, BREAD, 0, KREAD, 0, KACK, 1, DREAD, 0, KACK, 0, DREAD, 0);
}

/* Back-pressure: a small in-flight window and a small uplink buffer. */
static void test_backpressure(void **state)
{
        (void) state;
        RUN(PERSISTENT(1), 0, 0, 1,
            PUB, 1, PUB, 2, PUB, 1, PUB, 0, PUB, 2, BREAD, 0, KREAD, 1, KACK, 0, BREAD, 0, PUMP, 0,
            DOWN, 0, BREAD, 0, UP, 0, KREAD, 0, KACK, 0);
}

/* Found by the fuzzer. A QoS 2 message spooled and PUBREC'd by the bridge;
 * the device reconnects before its PUBREL (it never read the PUBREC) and
 * resends it with DUP: the same message (§4.3.3), not a second one. The
 * ids the bridge holds used to live in the outbox of one connection. */
static void test_held_qos2_dup_after_reconnect(void **state)
{
        (void) state;
        RUN(PERSISTENT(4), 8, 50, 0, PUB, 2, BREAD, 0, RECONNECT, 1);
        RUN(PERSISTENT(4), 8, 50, 0, PUB, 2, BREAD, 0, DREAD, 0, RECONNECT, 1);
}

/* Found by the fuzzer. A QoS 2 message forwarded directly, stored by the
 * broker, its PUBREC lost with the link: spooled and replayed, it used to
 * go under an id of the bridge's (the same message stored twice), which
 * could be one the broker still held for another (§2.3.1). It now goes
 * under the device's own id, and the broker takes it for the same. */
static void test_spooled_qos2_keeps_device_id(void **state)
{
        (void) state;
        RUN(PERSISTENT(4), 8, 50, 1, PUB, 2, BREAD, 0, KREAD, 0, DOWN, 0, UP, 0, KREAD, 0);
        RUN(PERSISTENT(4), 8, 50, 1, PUB, 2, PUB, 2 | 4, BREAD, 0, KREAD, 0, RECONNECT, 0, BREAD, 0, UP, 0,
            KREAD, 0);
}

/* Found by the fuzzer. The replay of a spooled QoS 2 message: PUBREC, our
 * PUBREL, delivered by the broker; the link goes before the PUBCOMP. It
 * used to be replayed again as a PUBLISH (a second delivery); now only
 * its PUBREL goes again (§4.4), on the same outbox or on a replayer. */
static void test_released_replay_not_resent(void **state)
{
        (void) state;
        RUN(PERSISTENT(4), 8, 50, 0, PUB, 2, BREAD, 0, DREAD, 0, REL, 0, BREAD, 0, UP, 0, KREAD, 0, KACK, 0,
            KREAD, 0, DOWN, 0, UP, 0, KREAD, 0);
        RUN(PERSISTENT(4), 8, 50, 0, PUB, 2, BREAD, 0, UP, 0, KREAD, 0, KACK, 0, KREAD, 0, RECONNECT, 0xe);
}

/* The device's PUBREL for an id the bridge released already (the PUBCOMP
 * was lost) while the spool's replay of that message is under the same id
 * upstream: answered here, never sent on to release the broker's copy. */
static void test_repeated_pubrel_of_held_id(void **state)
{
        (void) state;
        RUN(PERSISTENT(4), 8, 50, 0, PUB, 2, BREAD, 0, DREAD, 0, UP, 0, KREAD, 0, REL, 0, BREAD, 0,
            RECONNECT, 1, BREAD, 0, KREAD, 0);
}

/* The broker lost the persistent session (session_present = 0): a QoS 2
 * message it had PUBREC'd, not yet released by the device, is spooled from
 * the outbox's copy and delivered once; one the device released while the
 * uplink was away too. */
static void test_broker_lost_session(void **state)
{
        (void) state;
        RUN(PERSISTENT(4), 8, 50, 1, PUB, 2, BREAD, 0, KREAD, 0, KACK, 0, DREAD, 0, RESTART, 0, UP, 0, KREAD, 0);
        RUN(PERSISTENT(4), 8, 50, 1, PUB, 2, BREAD, 0, KREAD, 0, KACK, 0, DREAD, 0, DOWN, 0, REL, 0, BREAD, 0,
            RESTART, 0, UP, 0, KREAD, 0);
}

static uint64_t xorshift(uint64_t *s)
{
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        return *s;
}

/* Pseudo-random scripts from fixed seeds: the fuzzer's search, a little of
 * it, every time. */
static void test_random_scripts(void **state)
{
        const char *env = getenv("RELAY_SEEDS");
        unsigned n = env ? (unsigned) strtoul(env, NULL, 10) : 2000;
        uint8_t s[4 + 2 * 160];

        (void) state;
        for (unsigned seed = 1; seed <= n; seed++) {
                uint64_t x = 0x9e3779b97f4a7c15ull * seed;
                size_t len = 4 + 2 * (20 + xorshift(&x) % 140);
                for (size_t i = 0; i < len; i++)
                        s[i] = (uint8_t) (xorshift(&x) >> 24);
                char why[512];
                if (relay_run(s, len, NULL, 0, why, sizeof why) != 0) {
                        char hex[3 * sizeof s + 1];
                        for (size_t i = 0; i < len; i++)
                                snprintf(hex + 3 * i, 4, "%02x ", s[i]);
                        (void) relay_run(s, len, NULL, 1, why, sizeof why);
                        fail_msg("seed %u: %s\nscript: %s", seed, why, hex);
                }
        }
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_direct_out_of_order),
                cmocka_unit_test(test_offline_then_replay),
                cmocka_unit_test(test_link_lost_in_flight),
                cmocka_unit_test(test_reconnect_resend_dup),
                cmocka_unit_test(test_refused_in_order),
                cmocka_unit_test(test_backpressure),
                cmocka_unit_test(test_held_qos2_dup_after_reconnect),
                cmocka_unit_test(test_spooled_qos2_keeps_device_id),
                cmocka_unit_test(test_released_replay_not_resent),
                cmocka_unit_test(test_repeated_pubrel_of_held_id),
                cmocka_unit_test(test_broker_lost_session),
                cmocka_unit_test(test_random_scripts),
        };
        log_setup(LOG_LEVEL_ERR, LOG_TARGET_STDERR);
        return cmocka_run_group_tests(tests, NULL, NULL);
}
