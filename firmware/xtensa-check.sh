#!/bin/sh
# SPDX-License-Identifier: MIT
#
# Cross-compile the firmware's portable core (firmware/core + the shared
# lib/mqtt_codec.c) for the ESP8266's CPU with Debian's toolchain and print
# its section sizes. Proves the core stays free of host-only headers and
# builds with the flags the Arduino core uses (-Os -mlongcalls).
#
#   apt-get install -y gcc-xtensa-lx106 picolibc-xtensa-lx106-elf
#   firmware/xtensa-check.sh
#
# The include folder handed to the compiler holds only a link to the
# BearSSL headers: /usr/include itself would let glibc's headers shadow
# picolibc's. The core does not need BearSSL; the Arduino glue does, and
# keeping the link means the glue's headers could be checked the same way.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
CC=${XTENSA_CC:-xtensa-lx106-elf-gcc}
SIZE=${XTENSA_SIZE:-xtensa-lx106-elf-size}
SPECS=${PICOLIBC_SPECS:-/usr/lib/xtensa-lx106-elf/picolibc.specs}

for tool in "$CC" "$SIZE"; do
        if ! command -v "$tool" >/dev/null 2>&1; then
                echo "xtensa-check: $tool not found (apt-get install gcc-xtensa-lx106 picolibc-xtensa-lx106-elf)" >&2
                exit 1
        fi
done
if [ ! -f "$SPECS" ]; then
        echo "xtensa-check: $SPECS not found (apt-get install picolibc-xtensa-lx106-elf)" >&2
        exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM
mkdir -p "$tmp/inc"
ln -s /usr/include/bearssl "$tmp/inc/bearssl"

CFLAGS="--specs=$SPECS -std=c11 -Os -mlongcalls -ffunction-sections -fdata-sections -fstack-usage
        -Wall -Wextra -Werror -Wno-unused-parameter
        -I$tmp/inc -I$top/lib -I$here/core"

objs=""
for src in "$here/core/mqtt_client.c" "$top/lib/mqtt_codec.c"; do
        obj="$tmp/$(basename "$src" .c).o"
        # shellcheck disable=SC2086
        $CC $CFLAGS -c "$src" -o "$obj"
        objs="$objs $obj"
done

# Sections per object, then the total (text = code + read-only data).
# shellcheck disable=SC2086
(cd "$tmp" && $SIZE -t $(for o in $objs; do basename "$o"; done))

# The core's RAM is struct mqtt_client, sized by the MQTT_CLIENT_* macros.
cat >"$tmp/sizeof.c" <<'EOC'
#include "mqtt_client.h"
char mqtt_client_size[sizeof(struct mqtt_client)];
EOC
# shellcheck disable=SC2086
$CC $CFLAGS -c "$tmp/sizeof.c" -o "$tmp/sizeof.o"
echo "struct mqtt_client: $($SIZE -A "$tmp/sizeof.o" | awk '$1 ~ /bss|COMMON|data/ && $2 > 0 { s += $2 } END { print s }') bytes (RAM per client, no heap)"

# RAM at run time: the core allocates nothing, so it needs its struct (above)
# plus its deepest stack frame chain; -fstack-usage gives each function's
# frame. The largest frames, and their sum as an upper bound of one call
# chain through the core and the codec:
echo "largest stack frames (bytes):"
cat "$tmp"/*.su | sort -t"$(printf '\t')" -k2 -n -r | head -5 | awk -F'\t' '{ printf "  %6d  %s\n", $2, $1 }'
echo "stack bound, sum of the 5 largest frames: $(cat "$tmp"/*.su | sort -t"$(printf '\t')" -k2 -n -r | head -5 | awk -F'\t' '{ s += $2 } END { print s }') bytes"
