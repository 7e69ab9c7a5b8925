#!/bin/sh
# Build and run the whole test suite: unit (cmocka), integration (real
# mosquitto, the daemon, a BearSSL device), tools, firmware core; then the
# same under ASan/UBSan, the integration tests under valgrind, and each
# fuzzer for a bounded time. Ends with "N passed, N failed, N skipped".
#
#   sudo ./scripts/test.sh          (SKIP_DEPS=1 to skip apt-get)
#   QUICK=1 ./scripts/test.sh       (one plain build only)
#   SKIP_CROSS=1                    (no Raspberry Pi cross-build/qemu run)
set -u
cd "$(dirname "$0")/.."
top=$(pwd)

if [ "${SKIP_DEPS:-0}" != 1 ]; then
        ./scripts/deps.sh >/tmp/mqtt-edge-bridge-deps.log 2>&1 || {
                tail -20 /tmp/mqtt-edge-bridge-deps.log
                echo "0 passed, 1 failed"
                exit 1
        }
fi

status=0
builds=""
run() { # dir: configure, build and test one build directory
        dir=$1; shift
        builds="$builds $dir"
        if [ ! -f "$dir/build.ninja" ]; then
                meson setup "$dir" "$@" >"$dir.setup.log" 2>&1 || { cat "$dir.setup.log"; status=1; return; }
        fi
        ninja -C "$dir" >"$dir.ninja.log" 2>&1 || { tail -40 "$dir.ninja.log"; status=1; return; }
}

run build-test -Dwerror=true -Dbuildtype=debugoptimized
meson test -C build-test --print-errorlogs --no-rebuild --num-processes 2 || status=1

if [ "${QUICK:-0}" != 1 ]; then
        # valgrind: the integration tests again with the daemon under memcheck
        meson test -C build-test --setup valgrind --suite integration --print-errorlogs --no-rebuild || status=1

        run build-test-asan -Dwerror=true -Db_sanitize=address,undefined -Db_lundef=false -Dbuildtype=debug
        # (the fault soak and the scale-out tests run once, in the plain build above)
        MEB_SANITIZED=1 ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
                meson test -C build-test-asan --no-suite soak --no-suite scale --print-errorlogs --no-rebuild --num-processes 2 || status=1

        CC=clang run build-test-fuzz -Dfuzz=true -Dtests=false -Db_sanitize=address,undefined -Db_lundef=false
        meson test -C build-test-fuzz --suite fuzz --print-errorlogs --no-rebuild || status=1
fi

if [ "${QUICK:-0}" != 1 ] && [ "${SKIP_CROSS:-0}" != 1 ]; then
        # The Raspberry Pi packages: arm64 and armhf cross-builds + lintian,
        # and the suites against arm64 binaries under qemu-user.
        ./scripts/cross-test.sh || status=1
        builds="$builds build-cross-arm64 build-cross-armhf"
fi

python3 "$top/scripts/test-summary.py" $builds
rc=$?
[ $status -eq 0 ] || rc=1
exit $rc
