#!/bin/sh
# Install every Debian 12 package the build, the tests and the demo need.
# Idempotent; needs root (or sudo).
set -eu
# libclang-rt-14-dev: libFuzzer and the sanitizer runtimes for clang.
# systemd: systemd-analyze and systemd.pc (tests/systemd, the unit's
# install dir); debhelper, dpkg-dev, fakeroot, lintian, adduser: the
# package test (tests/package). binutils-xtensa-lx106 and
# libstdc++-arm-none-eabi-dev (its C++ headers): the firmware build on the
# real ESP8266 core with ../shared/esp8266-sdk (tests/firmware). haproxy:
# the scale-out test (tests/scale); rabbitmq-server (with its rabbitmq_mqtt
# plugin): the second broker of tests/integration/test_brokers.py and the
# cluster of tests/scale, run as the tests' own processes (the service is
# not needed).
PKGS="meson ninja-build gcc clang pkg-config
      libmosquitto-dev libssl-dev libsystemd-dev libinih-dev libcmocka-dev libbearssl-dev
      mosquitto mosquitto-clients openssl python3 valgrind stunnel4
      libclang-rt-14-dev gcc-xtensa-lx106 picolibc-xtensa-lx106-elf
      binutils-xtensa-lx106 libstdc++-arm-none-eabi-dev
      systemd adduser haproxy rabbitmq-server
      build-essential debhelper dpkg-dev fakeroot lintian
      crossbuild-essential-arm64 crossbuild-essential-armhf qemu-user-static"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
# The Raspberry Pi packages are cross-built (scripts/cross-test.sh): the
# arm64 and armhf -dev packages come from the multiarch archive.
for arch in arm64 armhf; do
        dpkg --print-foreign-architectures | grep -qx "$arch" || $SUDO dpkg --add-architecture "$arch"
done
$SUDO apt-get update -q
# shellcheck disable=SC2086
$SUDO apt-get install -y -q --no-install-recommends $PKGS
# The cross build-deps from debian/control. Simulated first: a wrong
# annotation there (python3 instead of python3:native) makes apt replace
# this machine's own python3, meson, devscripts... with the arm64 ones.
# Stop if the simulation removes anything.
cd "$(dirname "$0")/.."
for arch in arm64 armhf; do
        sim=$($SUDO apt-get -s build-dep -a "$arch" . 2>&1) || { echo "$sim"; exit 1; }
        if echo "$sim" | grep -q '^Remv'; then
                echo "deps: apt-get build-dep -a $arch would remove packages; not installing:" >&2
                echo "$sim" | grep '^Remv' >&2
                exit 1
        fi
        $SUDO apt-get build-dep -y -q -a "$arch" .
done
# Debian starts mosquitto on install; the tests run their own on free
# ports, and the demo too, so the stock service is not needed.
