/* SPDX-License-Identifier: MIT */
/*
 * ESP8266 Arduino glue for the mqtt-edge-bridge device firmware.
 *
 * Everything MQTT lives in the portable core (core/mqtt_client.h); this
 * file only gives it a transport (BearSSL::WiFiClientSecure), a clock and
 * a place in loop():
 *
 *   Wi-Fi → SNTP (X.509 validity needs the time) → probe Maximum Fragment
 *   Length once (RFC 6066; 512/512 buffers save ~15 KB of heap) → TLS with
 *   the CA as trust anchor, the device certificate + key, the server name
 *   checked, and a BearSSL::Session kept across reconnects so they resume
 *   instead of paying a full handshake → MQTT.
 *
 * Topics (EDGE_TOPIC_PREFIX + ...):
 *   status     "online" (retained birth) / "offline" (retained will)
 *   telemetry  QoS 1 reading every EDGE_TELEMETRY_INTERVAL_MS
 *   cmd/led    subscribed: "on" | "off" | "toggle" (or 1/0)
 *   led        QoS 1 retained LED state after each command
 */
#include <Arduino.h>
#include <ESP8266WiFi.h>
#include <WiFiClientSecureBearSSL.h>
#include <errno.h>   /* the core's transport returns -errno; Arduino.h does not bring it */
#include <time.h>

extern "C" {
#include "mqtt_client.h"
}
#include "br_errors.h"   /* ../lib: the names edge-device and the doctor print */

#include "edge_config.h"

#ifdef EDGE_WIFI_PLACEHOLDERS
#error "edge_config.h: set EDGE_WIFI_SSID / EDGE_WIFI_PASSWORD, then delete the EDGE_WIFI_PLACEHOLDERS line"
#endif

#ifndef EDGE_TELEMETRY_INTERVAL_MS
#define EDGE_TELEMETRY_INTERVAL_MS 60000
#endif
#ifndef EDGE_KEEPALIVE_S
#define EDGE_KEEPALIVE_S 60
#endif
#ifndef EDGE_NTP_SERVER1
#define EDGE_NTP_SERVER1 "pool.ntp.org"
#endif
#ifndef EDGE_NTP_SERVER2
#define EDGE_NTP_SERVER2 "time.nist.gov"
#endif

/* 2023-11-14: any clock before this has not been set by SNTP yet. */
static const time_t CLOCK_VALID_AFTER = 1700000000;

/* The PEM texts stay in flash (PROGMEM; the core's X509List and
 * PrivateKey read them with the _P functions): in .rodata they would take
 * ~4 KB of RAM, and the heap the TLS connection needs. */
static const char ca_pem[] PROGMEM = EDGE_CA_PEM;
static const char cert_pem[] PROGMEM = EDGE_CERT_PEM;
static const char key_pem[] PROGMEM = EDGE_KEY_PEM;

static BearSSL::WiFiClientSecure tls;
static BearSSL::X509List trust_anchors(ca_pem);
static BearSSL::X509List client_cert(cert_pem);
static BearSSL::PrivateKey client_key(key_pem);
static BearSSL::Session tls_session;   /* survives reconnects: resumption by session ID */
static bool mfl_probed, mfl_ok;

static struct edge_transport transport;
static struct mqtt_client mqtt;        /* ~5.4 KB, static: no heap churn */

static char topic_status[96], topic_telemetry[96], topic_cmd_led[96], topic_led[96];
static bool led_on;
static uint32_t telemetry_seq;
static uint32_t next_telemetry_at;
static bool telemetry_pending;         /* a reading the outbox could not take yet */
static char telemetry_payload[160];

/* ---- logging ---- */

static void make_topic(char *dst, size_t len, const char *leaf)
{
        const char *prefix = EDGE_TOPIC_PREFIX;
        size_t pl = strlen(prefix);

        snprintf(dst, len, "%s%s%s", prefix, pl && prefix[pl - 1] != '/' ? "/" : "", leaf);
}

/* ---- Wi-Fi and time ---- */

static void wifi_start(void)
{
        WiFi.mode(WIFI_STA);
        WiFi.setAutoReconnect(true);
        WiFi.persistent(false);
        WiFi.begin(EDGE_WIFI_SSID, EDGE_WIFI_PASSWORD);
        Serial.printf("[wifi] connecting to \"%s\"\n", EDGE_WIFI_SSID);
}

static bool wifi_up(void)
{
        static bool was_up;
        bool up = WiFi.status() == WL_CONNECTED;

        if (up != was_up) {
                if (up)
                        Serial.printf("[wifi] up, ip=%s rssi=%d\n", WiFi.localIP().toString().c_str(), WiFi.RSSI());
                else
                        Serial.println("[wifi] down");
                was_up = up;
        }
        return up;
}

static bool clock_valid(void)
{
        static bool logged;
        time_t now = time(nullptr);

        if (now < CLOCK_VALID_AFTER)
                return false;
        if (!logged) {
                struct tm tm;

                gmtime_r(&now, &tm);
                Serial.printf("[time] %04d-%02d-%02dT%02d:%02d:%02dZ (SNTP)\n", tm.tm_year + 1900, tm.tm_mon + 1,
                              tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
                logged = true;
        }
        return true;
}

/* ---- transport for the core ---- */

static int tp_connect(void *ctx)
{
        char msg[96];
        int err;

        (void)ctx;
        if (!wifi_up())
                return -ENETDOWN;
        /* Without the time BearSSL cannot check validity dates and fails
         * with BR_ERR_X509_EXPIRED/TIME_UNKNOWN: wait for SNTP (backoff). */
        if (!clock_valid()) {
                Serial.println("[time] waiting for SNTP before TLS");
                return -EAGAIN;
        }
        if (!mfl_probed) {
                /* RFC 6066: if the bridge honours a 512-byte Maximum
                 * Fragment Length, 512/512 buffers do (heap ~14 KB instead
                 * of ~30 KB during the handshake). */
                mfl_ok = BearSSL::WiFiClientSecure::probeMaxFragmentLength(EDGE_SERVER_NAME, EDGE_MQTT_PORT, 512);
                mfl_probed = true;
                Serial.printf("[tls] max fragment length 512: %s\n", mfl_ok ? "yes, buffers 512/512" : "no, buffers 16384/512");
        }
        if (mfl_ok)
                tls.setBufferSizes(512, 512);
        tls.setTrustAnchors(&trust_anchors);
        if (client_key.isRSA()) {
                tls.setClientRSACert(&client_cert, &client_key);
        } else {
                /* The issuer's key type only matters for static-ECDH suites;
                 * take it from the trust anchor (the CA that signed us). */
                tls.setClientECCert(&client_cert, &client_key, BR_KEYTYPE_KEYX | BR_KEYTYPE_SIGN,
                                    trust_anchors.getTrustAnchors()[0].pkey.key_type);
        }
        tls.setSession(&tls_session);
        /* Nagle off, so a PUBACK or PINGREQ leaves at once. It has to be the
         * default: the socket belongs to the WiFiClientSecureCtx inside tls,
         * which takes the default in WiFiClient::connect(); tls.setNoDelay()
         * would reach the wrapper, which has no socket, and do nothing. */
        WiFiClient::setDefaultNoDelay(true);

        uint32_t t0 = millis();
        /* connect(const char *) checks the certificate against this very
         * string (an IP literal needs no DNS); connect(IPAddress) would
         * turn the name check off, and then any certificate from the same
         * CA - another device's included - would pass as the bridge. */
        if (!tls.connect(EDGE_SERVER_NAME, EDGE_MQTT_PORT)) {
                char name[BR_ERROR_NAME_MAX], text[BR_ERROR_TEXT_MAX];

                /* getLastSSLError() strips the fatal-alert bit and names it
                 * only in msg: put it back, so alert 48 reads
                 * BR_ERR_RECV_FATAL_ALERT+48 (unknown_ca), not code 48. */
                err = br_error_from_esp8266(tls.getLastSSLError(msg, sizeof(msg)), msg);
                Serial.printf("[tls] %s:%u failed: %d %s: %s (core: %s)\n", EDGE_SERVER_NAME, EDGE_MQTT_PORT, err,
                              br_error_name(err, name, sizeof(name)), br_error_text(err, text, sizeof(text)), msg);
                tls.stop();
                return err ? -EPROTO : -ECONNREFUSED;
        }
        Serial.printf("[tls] connected in %lu ms, heap %u\n", (unsigned long)(millis() - t0), ESP.getFreeHeap());
        return 0;
}

static int tp_read(void *ctx, uint8_t *buf, size_t len)
{
        (void)ctx;
        int avail = tls.available();

        if (avail > 0) {
                int n = tls.read(buf, len < (size_t)avail ? len : (size_t)avail);

                return n > 0 ? n : 0;
        }
        return tls.connected() ? 0 : -ECONNRESET;
}

static int tp_write(void *ctx, const uint8_t *buf, size_t len)
{
        (void)ctx;
        /* WiFiClientSecure::write() flushes a TLS record per call (at most
         * the fragment length); 0 means the connection failed. */
        size_t n = tls.write(buf, len);

        return n > 0 ? (int)n : -ECONNRESET;
}

static void tp_close(void *ctx, bool graceful)
{
        (void)ctx;
        (void)graceful;
        /* stop() also stores the session parameters in tls_session. */
        tls.stop();
}

static uint32_t tp_millis(void *ctx)
{
        (void)ctx;
        return millis();
}

/* ---- application ---- */

static void led_set(bool on)
{
        led_on = on;
        digitalWrite(LED_BUILTIN, on ? LOW : HIGH); /* active low on NodeMCU / D1 mini */
}

static void led_report(void)
{
        const char *s = led_on ? "on" : "off";
        int r = mqtt_client_publish(&mqtt, topic_led, s, strlen(s), 1, true);

        if (r < 0)
                Serial.printf("[mqtt] led state not queued: %d\n", r);
}

static void handle_command(const struct mqtt_publish *p)
{
        char cmd[16];
        size_t n = p->payload_len < sizeof(cmd) - 1 ? p->payload_len : sizeof(cmd) - 1;

        memcpy(cmd, p->payload, n);
        cmd[n] = '\0';
        if (!strcasecmp(cmd, "on") || !strcmp(cmd, "1"))
                led_set(true);
        else if (!strcasecmp(cmd, "off") || !strcmp(cmd, "0"))
                led_set(false);
        else if (!strcasecmp(cmd, "toggle"))
                led_set(!led_on);
        else {
                Serial.printf("[cmd] unknown LED command \"%s\"\n", cmd);
                return;
        }
        Serial.printf("[cmd] led %s\n", led_on ? "on" : "off");
        led_report();
}

static void subscribe_commands(void)
{
        static const char *filters[1];
        static const uint8_t qos[1] = { 1 };

        filters[0] = topic_cmd_led;
        int r = mqtt_client_subscribe(&mqtt, filters, qos, 1);

        if (r < 0)
                Serial.printf("[mqtt] subscribe failed: %d\n", r);
}

static void on_mqtt_event(void *user, const struct mqtt_client_event *ev)
{
        (void)user;
        switch (ev->type) {
        case MQTT_CLIENT_EV_TRANSPORT_UP:
                Serial.println("[mqtt] CONNECT sent");
                break;
        case MQTT_CLIENT_EV_CONNECT_FAILED:
                Serial.printf("[mqtt] connect failed (%d), retry in %lu ms\n", ev->err, (unsigned long)ev->retry_in_ms);
                break;
        case MQTT_CLIENT_EV_CONNACK:
                Serial.printf("[mqtt] CONNACK rc=%u session_present=%d\n", ev->return_code, ev->session_present);
                if (ev->return_code == 0 && !ev->session_present)
                        subscribe_commands(); /* a new session has no subscriptions (§3.2.2.2) */
                break;
        case MQTT_CLIENT_EV_SUBACK:
                Serial.printf("[mqtt] SUBACK %s qos=%u\n", topic_cmd_led, ev->n_codes ? ev->codes[0] : 0x80);
                break;
        case MQTT_CLIENT_EV_MESSAGE:
                if (ev->publish->topic.len == strlen(topic_cmd_led) &&
                    !memcmp(ev->publish->topic.data, topic_cmd_led, ev->publish->topic.len))
                        handle_command(ev->publish);
                break;
        case MQTT_CLIENT_EV_PUBACK:
                if (!ev->internal)
                        Serial.printf("[mqtt] PUBACK %u\n", ev->packet_id);
                break;
        case MQTT_CLIENT_EV_CONNECTION_LOST:
                Serial.printf("[mqtt] connection lost (%d %s), retry in %lu ms\n", ev->err, ev->why ? ev->why : "",
                              (unsigned long)ev->retry_in_ms);
                break;
        case MQTT_CLIENT_EV_DROPPED:
                Serial.println("[mqtt] dropped a message larger than MQTT_CLIENT_RX_BUF");
                break;
        default:
                break;
        }
}

static void telemetry_tick(void)
{
        uint32_t now = millis();
        int r;

        if (!telemetry_pending && (int32_t)(now - next_telemetry_at) >= 0) {
                telemetry_seq++;
                snprintf(telemetry_payload, sizeof(telemetry_payload),
                         "{\"seq\":%lu,\"uptime_ms\":%lu,\"heap\":%u,\"rssi\":%d,\"led\":%s}",
                         (unsigned long)telemetry_seq, (unsigned long)now, ESP.getFreeHeap(), WiFi.RSSI(),
                         led_on ? "true" : "false");
                telemetry_pending = true;
                next_telemetry_at = now + EDGE_TELEMETRY_INTERVAL_MS;
        }
        if (!telemetry_pending)
                return;
        /* QoS 1: once the outbox took it, the core resends it until PUBACK,
         * across reconnects. If the outbox is full, keep it and try again. */
        r = mqtt_client_publish(&mqtt, topic_telemetry, telemetry_payload, strlen(telemetry_payload), 1, false);
        if (r > 0) {
                telemetry_pending = false;
                Serial.printf("[mqtt] telemetry #%lu queued (id %d)\n", (unsigned long)telemetry_seq, r);
        } else if (r != -ENOBUFS) {
                Serial.printf("[mqtt] telemetry dropped: %d\n", r);
                telemetry_pending = false;
        }
}

void setup()
{
        struct mqtt_client_config cfg;

        Serial.begin(115200);
        Serial.println();
        Serial.printf("[boot] mqtt-edge-bridge device \"%s\", chip %06x, heap %u\n", EDGE_CLIENT_ID,
                      ESP.getChipId(), ESP.getFreeHeap());
        pinMode(LED_BUILTIN, OUTPUT);
        led_set(false);

        make_topic(topic_status, sizeof(topic_status), "status");
        make_topic(topic_telemetry, sizeof(topic_telemetry), "telemetry");
        make_topic(topic_cmd_led, sizeof(topic_cmd_led), "cmd/led");
        make_topic(topic_led, sizeof(topic_led), "led");

        wifi_start();
        configTime(0, 0, EDGE_NTP_SERVER1, EDGE_NTP_SERVER2);

        transport.ctx = nullptr;
        transport.connect = tp_connect;
        transport.read = tp_read;
        transport.write = tp_write;
        transport.flush = nullptr;   /* write() already ends a record */
        transport.close = tp_close;
        transport.millis = tp_millis;

        memset(&cfg, 0, sizeof(cfg));
        cfg.protocol_level = MQTT_PROTOCOL_LEVEL_311;
        cfg.client_id = EDGE_CLIENT_ID;
        cfg.clean_session = false;   /* keep commands and QoS 1 state across reconnects */
        cfg.keepalive = EDGE_KEEPALIVE_S;
        cfg.will_topic = topic_status;
        cfg.will_payload = (const uint8_t *)"offline";
        cfg.will_payload_len = 7;
        cfg.will_qos = 1;
        cfg.will_retain = true;
        cfg.birth_topic = topic_status; /* retained "online" after each CONNACK */
        cfg.retry_ms = 20000;
        cfg.backoff_base_ms = 1000;
        cfg.backoff_max_ms = 60000;
        cfg.seed = ESP.random();
        mqtt_client_init(&mqtt, &cfg, &transport, on_mqtt_event, nullptr);
        mqtt_client_start(&mqtt);
        next_telemetry_at = millis() + 5000;
}

void loop()
{
        (void)wifi_up();
        mqtt_client_poll(&mqtt);
        telemetry_tick();
        delay(10); /* lets the Wi-Fi stack run; the core never blocks here */
}
