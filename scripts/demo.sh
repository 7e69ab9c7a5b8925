#!/bin/bash
# The main job, end to end, on one Debian 12 machine (all on 127.0.0.1):
#
#  1. install what is needed, build;
#  2. make a throwaway PKI: the main broker gets the common Raspberry Pi
#     certificate (SAN IP:127.0.0.1, DNS:raspberry), the bridge's device
#     listener a CN-only one (CN=127.0.0.1), the device a client certificate;
#  3. start mosquitto (mutual TLS + password file) and the bridge;
#  4. show a BearSSL device (edge-device, configured like an ESP8266)
#     failing against the broker with BR_ERR_X509_BAD_SERVER_NAME (56),
#     then its readings arriving on the main broker through the bridge,
#     and a command published on the main broker reaching it.
#
#   sudo ./scripts/demo.sh          (SKIP_DEPS=1 to skip apt-get)
set -euo pipefail
cd "$(dirname "$0")/.."
top=$(pwd)

if [ "${SKIP_DEPS:-0}" != 1 ]; then
        echo "== installing Debian packages (scripts/deps.sh)"
        ./scripts/deps.sh >/tmp/mqtt-edge-bridge-deps.log 2>&1 || { tail -20 /tmp/mqtt-edge-bridge-deps.log; exit 1; }
fi

echo "== building (build-demo/)"
[ -f build-demo/build.ninja ] || meson setup build-demo -Dbuildtype=release -Dtests=false >/dev/null
ninja -C build-demo >/dev/null
BIN=$top/build-demo
CERTS=$BIN/tools/mqtt-edge-bridge-certs
DOCTOR=$BIN/tools/mqtt-edge-bridge-doctor
DEVICE=$BIN/firmware/edge-device

work=$(mktemp -d /tmp/mqtt-edge-bridge-demo.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
        for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
        wait 2>/dev/null || true
        rm -rf "$work"
}
trap cleanup EXIT
cd "$work"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
BROKER_PORT=$(free_port)
BRIDGE_PORT=$(free_port)

echo "== throwaway PKI in $work"
$CERTS ca --cn "Demo CA" --out-cert ca.crt --out-key ca.key >/dev/null
# The certificate many Pi setups have: fine for OpenSSL/Python, not for BearSSL.
openssl req -new -newkey rsa:2048 -nodes -keyout broker.key -out broker.csr -subj /CN=raspberry 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:raspberry\nextendedKeyUsage=serverAuth\n' >broker.ext
openssl x509 -req -in broker.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 -extfile broker.ext \
        -out broker.crt 2>/dev/null
$CERTS listener --ca ca.crt --ca-key ca.key --address 127.0.0.1 --profile cn-only \
        --out-cert listener.crt --out-key listener.key >/dev/null
$CERTS device sensor-1 --ca ca.crt --ca-key ca.key --listener listener.crt \
        --out-cert sensor-1.crt --out-key sensor-1.key >/dev/null
$CERTS device bridge --ca ca.crt --ca-key ca.key --listener listener.crt \
        --out-cert bridge.crt --out-key bridge.key >/dev/null
$CERTS device observer --ca ca.crt --ca-key ca.key --listener listener.crt \
        --out-cert observer.crt --out-key observer.key >/dev/null
chmod 644 ./*.crt

echo "== what the doctor predicts for the broker's certificate, dialled as 127.0.0.1"
$DOCTOR cert broker.crt --ca ca.crt --name 127.0.0.1 | sed 's/^/   | /' || true

touch passwd
mosquitto_passwd -b passwd sensor-1 sensor-1-secret
mosquitto_passwd -b passwd observer observer-secret
cat >mosquitto.conf <<EOF
per_listener_settings true
persistence false
log_dest file $work/mosquitto.log
$( [ "$(id -u)" = 0 ] && echo "user root" )
listener $BROKER_PORT 127.0.0.1
cafile $work/ca.crt
certfile $work/broker.crt
keyfile $work/broker.key
require_certificate true
allow_anonymous false
password_file $work/passwd
EOF
mosquitto -c mosquitto.conf & pids+=($!)

cat >bridge.ini <<EOF
[listener]
bind_address = 127.0.0.1
port = $BRIDGE_PORT
certfile = $work/listener.crt
keyfile = $work/listener.key
cafile = $work/ca.crt

[upstream]
host = 127.0.0.1
port = $BROKER_PORT
cafile = $work/ca.crt
certfile = $work/bridge.crt
keyfile = $work/bridge.key

[bridge]
# the demo's files are root's: stay root (the packaged unit runs as its own user)
user =

[spool]
directory = $work/spool

[log]
target = stderr
EOF
$BIN/src/mqtt-edge-bridge --config bridge.ini 2>bridge.log & pids+=($!)
for _ in $(seq 50); do grep -q ready bridge.log 2>/dev/null && break; sleep 0.1; done
echo "== mosquitto on 127.0.0.1:$BROKER_PORT (SAN IP:127.0.0.1, DNS:raspberry), bridge on 127.0.0.1:$BRIDGE_PORT (CN=127.0.0.1)"

DEV=(--ca ca.crt --cert sensor-1.crt --key sensor-1.key --client-id sensor-1
     --username sensor-1 --password sensor-1-secret --server-name 127.0.0.1)
OBS=(-h 127.0.0.1 -p "$BROKER_PORT" --cafile ca.crt --cert observer.crt --key observer.key
     -u observer -P observer-secret)

echo
echo "== 1. the ESP8266-like device dials the main broker directly:"
$DEVICE --host 127.0.0.1 --port "$BROKER_PORT" "${DEV[@]}" --timeout 5 2>&1 | sed 's/^/   device | /' || true

echo
echo "== 2. the same device dials the bridge; a subscriber on the main broker listens:"
mosquitto_sub "${OBS[@]}" -t 'sensors/#' -v -C 3 -W 15 | sed 's/^/   main broker | /' & sub=$!
sleep 0.5
$DEVICE --host 127.0.0.1 --port "$BRIDGE_PORT" "${DEV[@]}" --count 3 --topic sensors/sensor-1/temperature \
        --qos 1 --interval-ms 200 2>&1 | grep -E '^(tls|connack|puback|done)' | sed 's/^/   device | /'
wait $sub || true

echo
echo "== 3. a command published on the main broker reaches the device through the bridge:"
$DEVICE --host 127.0.0.1 --port "$BRIDGE_PORT" "${DEV[@]}" --sub 'cmd/sensor-1/led:1' --expect 1 --timeout 10 \
        2>&1 | grep -E '^(suback|message)' | sed 's/^/   device | /' & dev=$!
sleep 1.5
echo "   main broker | mosquitto_pub -t cmd/sensor-1/led -m on"
mosquitto_pub "${OBS[@]}" -t cmd/sensor-1/led -m on -q 1
wait $dev || true

echo
echo "== the bridge's log:"
sed 's/^/   bridge | /' bridge.log
