/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * policy — who a device is upstream, and where its topics go.
 *
 * Pure functions: no I/O, no global state. Strings in, malloc'ed strings
 * out (caller frees) or, on the message path, the caller's buffer;
 * negative errno on refusal.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "mqtt_codec.h"

/*
 * A topic name the device PUBLISHes, mapped to the upstream topic:
 * mountpoint + topic. Refuses (-EPERM) a topic that would leave the
 * mountpoint: one starting with '$' when a mountpoint is set, or containing
 * a ".." level. With no mountpoint the topic is copied unchanged.
 * Returns 0 and *out (malloc'ed, NUL-terminated), or negative errno.
 */
int policy_topic_to_upstream(const char *mountpoint, const uint8_t *topic, size_t len, char **out);

/*
 * The same mapping and checks for the message path, without allocating:
 * with no mountpoint *out is the topic itself (no copy); with one, the
 * mapped topic is written to buf (cap >= strlen(mountpoint) + len, no NUL;
 * POLICY_TOPIC_MAX always suffices) and *out points there. Returns 0, the
 * refusals of policy_topic_to_upstream, or -ENOBUFS when buf is too small.
 */
#define POLICY_TOPIC_MAX 65535u
int policy_topic_map(const char *mountpoint, const uint8_t *topic, size_t len, uint8_t *buf, size_t cap,
                     struct mqtt_str *out);

/*
 * A topic filter the device SUBSCRIBEs/UNSUBSCRIBEs, mapped upstream the
 * same way. A filter starting with a wildcard is confined too: "#" under
 * mountpoint "devices/a/" becomes "devices/a/#". "$SYS/..." and filters
 * with ".." levels are refused (-EPERM) when a mountpoint is set.
 */
int policy_filter_to_upstream(const char *mountpoint, const uint8_t *filter, size_t len, char **out);

/*
 * An upstream topic name, mapped back for the device: the mountpoint
 * stripped. Returns 0 and *out_offset = strlen(mountpoint) when the topic
 * starts with the mountpoint, -ENOENT when it does not (the message is not
 * for this device and must not be delivered). With no mountpoint,
 * *out_offset = 0.
 */
int policy_topic_from_upstream(const char *mountpoint, const char *topic, size_t *out_offset);
/* The same on a topic that is not NUL-terminated (len bytes). */
int policy_topic_from_upstream_buf(const char *mountpoint, const uint8_t *topic, size_t len, size_t *out_offset);

/*
 * The upstream client id: prefix + device client id. When the device sent
 * an empty client id (allowed with clean session, §3.1.3.1), the bridge
 * makes one up from the CN: prefix + cn + "-" + 8 hex digits of nonce.
 * Returns 0 and *out (malloc'ed), or -EINVAL if the result would exceed
 * 65535 bytes.
 */
int policy_client_id(const struct config_bridge *b, const char *cn, const uint8_t *client_id,
                     size_t len, uint32_t nonce, char **out);

/*
 * With clientid_must_match_cn, the device's client id must equal its CN
 * (MQTT 3.1.1 §3.1.3.1 lets the server reject an id: CONNACK 2).
 * Returns true when allowed.
 */
bool policy_client_id_allowed(const struct config_bridge *b, const char *cn, const uint8_t *client_id,
                              size_t len);

/*
 * The upstream username/password for a device, per username_mode and
 * password_mode. *user and *pass are malloc'ed or NULL (not sent). dev_user /
 * dev_pass are what the device sent (NULL if absent); pass is binary, so
 * its length is returned in *pass_len.
 */
int policy_credentials(const struct config_bridge *b, const char *cn,
                       const uint8_t *dev_user, size_t dev_user_len,
                       const uint8_t *dev_pass, size_t dev_pass_len,
                       char **user, char **pass, size_t *pass_len);
