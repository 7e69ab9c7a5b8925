#!/bin/sh
# SPDX-License-Identifier: MIT
#
# The Raspberry Pi packages (issue 15), on a Debian 12 amd64 machine:
#   1. dpkg-buildpackage -a arm64 and -a armhf (cross), lintian on each .deb;
#   2. the arm64 package's own binaries run under qemu-user (smoke);
#   3. an arm64 meson build (scripts/cross/arm64.ini) and the unit (meson's
#      exe_wrapper), tools, systemd and integration suites against it
#      under qemu-user (MEB_EXEC_WRAPPER, tests/lib/exec_wrapper.py);
#   4. an armhf meson build and its unit tests under qemu-arm (32-bit
#      size_t and time_t).
# Called by scripts/test.sh; scripts/deps.sh installs the cross build-deps.
# Every step is bounded (timeout). Steps 1-2 are written as meson test
# results into build-cross-arm64/meson-logs/testlog-package.json, so
# scripts/test-summary.py counts them with the rest.
#
#   ./scripts/cross-test.sh                 (CROSS_INTEGRATION=0: skip the
#                                            integration suite under qemu)
set -u
cd "$(dirname "$0")/.."
top=$(pwd)
bdir=$top/build-cross-arm64
hdir=$top/build-cross-armhf
work=$(mktemp -d /tmp/meb-cross.XXXXXX)
trap 'rm -rf "$work"' EXIT INT TERM
status=0
results=""

# result NAME OK|FAIL SECONDS: one line of meson's testlog JSON.
result() {
        results="$results{\"name\": \"$1\", \"result\": \"$2\", \"duration\": $3, \"stdout\": \"\"}
"
        echo "cross: $1: $2 (${3}s)"
        [ "$2" = OK ] || status=1
}

for tool in qemu-aarch64-static qemu-arm-static aarch64-linux-gnu-gcc arm-linux-gnueabihf-gcc dpkg-buildpackage lintian; do
        if ! command -v "$tool" >/dev/null 2>&1; then
                echo "cross: $tool not found (scripts/deps.sh installs it)" >&2
                status=1
        fi
done
[ $status -eq 0 ] || { echo "0 passed, 1 failed"; exit 1; }

# 1. The packages. dpkg-buildpackage writes into the parent folder, so
#    each builds from a copy of the tracked files in $work.
for arch in arm64 armhf; do
        src=$work/$arch/mqtt-edge-bridge
        mkdir -p "$src"
        git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$src"
        t0=$(date +%s)
        if (cd "$src" && timeout 900 dpkg-buildpackage -a "$arch" -us -uc -b) >"$work/$arch.log" 2>&1; then
                result "deb_build_$arch" OK $(( $(date +%s) - t0 ))
        else
                tail -30 "$work/$arch.log"
                result "deb_build_$arch" FAIL $(( $(date +%s) - t0 ))
                continue
        fi
        deb=$(ls "$work/$arch"/mqtt-edge-bridge_*_"$arch".deb)
        ls -l "$deb"
        t0=$(date +%s)
        if timeout 300 lintian --fail-on error,warning --info "$deb"; then
                result "lintian_$arch" OK $(( $(date +%s) - t0 ))
        else
                result "lintian_$arch" FAIL $(( $(date +%s) - t0 ))
        fi
done

# 2. The arm64 package's own binaries under qemu-user: versions, a config
#    check, a PKI made and checked by the packaged tools.
deb=$(ls "$work"/arm64/mqtt-edge-bridge_*_arm64.deb 2>/dev/null)
if [ -n "$deb" ]; then
        root=$work/arm64-root
        dpkg -x "$deb" "$root"
        q="timeout 120 qemu-aarch64-static"
        t0=$(date +%s)
        if (
                set -e
                cd "$work"
                readelf -h "$root/usr/sbin/mqtt-edge-bridge" | grep -E "Class|Machine"
                $q "$root/usr/sbin/mqtt-edge-bridge" --version
                $q "$root/usr/bin/mqtt-edge-bridge-certs" ca --out-cert ca.crt --out-key ca.key
                $q "$root/usr/bin/mqtt-edge-bridge-certs" listener --ca ca.crt --ca-key ca.key \
                        --address 192.168.0.52 --out-cert listener.crt --out-key listener.key
                $q "$root/usr/bin/mqtt-edge-bridge-doctor" cert listener.crt --ca ca.crt --name 192.168.0.52
                sed -e "s|^certfile *=.*|certfile = $work/listener.crt|" \
                    -e "s|^keyfile *=.*|keyfile = $work/listener.key|" \
                    -e "s|^cafile *=.*|cafile = $work/ca.crt|" \
                    "$root/etc/mqtt-edge-bridge.ini" >bridge.ini
                $q "$root/usr/sbin/mqtt-edge-bridge" --check-config --config bridge.ini
        ) >"$work/smoke.log" 2>&1; then
                ok=OK
        else
                ok=FAIL
        fi
        sed 's/^/  qemu: /' "$work/smoke.log"
        result "qemu_smoke_arm64" $ok $(( $(date +%s) - t0 ))
fi

# 3. The test suite against arm64 binaries under qemu-user.
if [ ! -f "$bdir/build.ninja" ]; then
        meson setup "$bdir" --cross-file scripts/cross/arm64.ini -Dwerror=true -Dbench=false \
                >"$bdir.setup.log" 2>&1 || { cat "$bdir.setup.log"; status=1; }
fi
if ninja -C "$bdir" >"$bdir.ninja.log" 2>&1; then
        suites="--suite unit --suite tools --suite systemd"
        [ "${CROSS_INTEGRATION:-1}" = 0 ] || suites="$suites --suite integration"
        # shellcheck disable=SC2086
        MEB_EXEC_WRAPPER=qemu-aarch64-static timeout 1800 \
                meson test -C "$bdir" $suites --no-rebuild --print-errorlogs --num-processes 2 || status=1
else
        tail -40 "$bdir.ninja.log"
        status=1
fi

# 4. armhf: the unit tests under qemu-arm (the Pi's 32-bit OS).
if [ ! -f "$hdir/build.ninja" ]; then
        meson setup "$hdir" --cross-file scripts/cross/armhf.ini -Dwerror=true -Dbench=false \
                >"$hdir.setup.log" 2>&1 || { cat "$hdir.setup.log"; status=1; }
fi
if ninja -C "$hdir" >"$hdir.ninja.log" 2>&1; then
        timeout 300 meson test -C "$hdir" --suite unit --no-rebuild --print-errorlogs --num-processes 2 || status=1
else
        tail -40 "$hdir.ninja.log"
        status=1
fi

mkdir -p "$bdir/meson-logs"
printf '%s' "$results" >"$bdir/meson-logs/testlog-package.json"
exit $status
