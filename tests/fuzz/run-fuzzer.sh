#!/bin/sh
# Run one libFuzzer target for a bounded time over its seed corpus. New
# inputs go to a scratch folder in the build tree, never into the repo.
# usage: run-fuzzer.sh FUZZER SEED_DIR SECONDS
set -eu
work="$(dirname "$1")/$(basename "$1")-corpus"
mkdir -p "$work"
exec "$1" -max_total_time="$3" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 "$work" "$2"
