/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * relay_model — a model device and a model broker around the real outbox
 * (src/outbox.c, src/spool.c; the uplink is fake_uplink.h), driven by a
 * script of bytes: the stateful fuzzer of the relay (fuzz_relay.c) and the
 * deterministic unit test (tests/unit/test_outbox.c) both run it.
 *
 * The script: 4 bytes of configuration (clean or persistent session,
 * max_inflight, spool bound, the device's range of packet ids, the
 * uplink's high-water mark, max_qos0_bytes), then events of 2 bytes (op,
 * argument): the device publishes (QoS 0/1/2, sometimes outside the
 * mountpoint: refused) or releases a QoS 2 message, the bridge reads what
 * the device sent (then outbox_commit, as a session does after each batch),
 * the device reads what the bridge answered, the broker reads what the
 * outbox wrote, the broker sends one of its pending acknowledgements
 * (chosen by the script, in any order, or never), the uplink is lost
 * (outbox_uplink_down) or comes back (outbox_uplink_up with the broker's
 * session_present), the broker restarts and forgets its persistent
 * sessions, outbox_pump, and the device reconnects (a new outbox
 * on the same spool, as a session makes one per device connection; the
 * device then resends its unacknowledged PUBLISHes with DUP and its
 * PUBRELs, §4.4, or with a clean session forgets them; meanwhile a
 * replayer, an outbox on the spool file alone, may send some of it).
 *
 * The broker: QoS 0/1 delivered on receipt, QoS 1 PUBACK queued; QoS 2
 * stored per packet identifier (a PUBLISH with a stored identifier is a
 * duplicate: PUBREC, not stored again, §4.3.3 method B) and delivered on
 * PUBREL, PUBCOMP queued. A clean upstream session forgets the stored
 * QoS 2 messages when the link goes; a persistent one keeps them and says
 * session_present = 1.
 *
 * At the end a drain (device connected, uplink up, every acknowledgement
 * sent and read, every PUBREL sent, until nothing moves), then the
 * invariants:
 *  1. acknowledgements reach the device in the order of its PUBLISHes
 *     ([MQTT-4.6.0-2]), checked as each is made;
 *  2. a QoS 1 message the bridge acknowledged is delivered at least once;
 *  3. a QoS 2 message is never delivered twice, and one the bridge
 *     PUBREC'd is delivered exactly once (it may be lost where a device
 *     connected directly would lose it too: with a clean session, §3.1.2.4,
 *     its session ended before its PUBREL, or the PUBREL died with the
 *     link; the broker lost the session after its PUBREC);
 *  4. nothing is delivered that the device did not send, byte for byte,
 *     with its QoS; nothing refused is delivered; QoS 0 at most once;
 *  5. the broker never sees a packet identifier reused while it is still
 *     in use on the link (§2.3.1), every packet is valid MQTT, nothing is
 *     acknowledged to a device connection that is gone, and after the
 *     drain the outbox is idle, the spool file gone and the gauges zero.
 */

#include <stddef.h>
#include <stdint.h>

/* Run one script with its spool in a fresh directory under tmpdir (NULL:
 * $TMPDIR, else /dev/shm, else /tmp), removed before returning. Returns 0,
 * or -1 with a description of the violated invariant (and the event where
 * it was seen) in why. With trace set, every event is printed on stderr. */
int relay_run(const uint8_t *script, size_t len, const char *tmpdir, int trace, char *why, size_t why_len);
