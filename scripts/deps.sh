#!/bin/sh
# Install every Debian 12 package the build, the tests and the demo need.
# Idempotent; needs root (or sudo).
set -eu
# libclang-rt-14-dev: libFuzzer and the sanitizer runtimes for clang.
# systemd: systemd-analyze and systemd.pc (tests/systemd, the unit's
# install dir); debhelper, dpkg-dev, fakeroot, lintian, adduser: the
# package test (tests/package). binutils-xtensa-lx106 and
# libstdc++-arm-none-eabi-dev (its C++ headers): the firmware build on the
# real ESP8266 core with ../shared/esp8266-sdk (tests/firmware).
PKGS="meson ninja-build gcc clang pkg-config
      libmosquitto-dev libssl-dev libsystemd-dev libinih-dev libcmocka-dev libbearssl-dev
      mosquitto mosquitto-clients openssl python3 valgrind stunnel4
      libclang-rt-14-dev gcc-xtensa-lx106 picolibc-xtensa-lx106-elf
      binutils-xtensa-lx106 libstdc++-arm-none-eabi-dev
      systemd adduser
      build-essential debhelper dpkg-dev fakeroot lintian"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# shellcheck disable=SC2086
$SUDO apt-get install -y -q --no-install-recommends $PKGS
# Debian starts mosquitto on install; the tests run their own on free
# ports, and the demo too, so the stock service is not needed.
