#!/usr/bin/env bash
# What `keibi gc` costs: a store of four 1 GiB files written one after the other through the
# mount, one of them removed, then gc (its chunks fill blob files of their own); and a store
# of two 1 GiB files written at the same time, one removed (its chunks share every blob file
# with the other's, so gc must copy the live ones to free the space). Prints gc's time, the
# bytes it wrote (from its rusage) and the chunk files on disk before and after.
# Usage: tools/bench-gc.sh   (root: it mounts)
set -euo pipefail
source "$(dirname "$0")/bench-lib.sh"
bench_setup bench-gc
[ -x /usr/bin/time ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null

run_gc() { # label home
  sync
  local out
  out=$( { /usr/bin/time -f 'TIME %e %O' "$keibi" --home "$2" gc; } 2>&1)
  local secs blocks
  secs=$(awk '/^TIME/ {print $2}' <<<"$out")
  blocks=$(awk '/^TIME/ {print $3}' <<<"$out")
  printf '%-34s %7s s  %8d MiB written  %s\n' "$1" "$secs" $((blocks / 2048)) \
    "$(grep -o 'chunk files on disk.*' <<<"$out")"
}

echo "== one of four 1 GiB files removed, written one after the other"
home="$work/seq"
start_mount "$home"
for i in 1 2 3 4; do head -c 1G /dev/urandom >"$mnt/f$i"; done
rm "$mnt/f1"
stop_mount
run_gc "gc" "$home"
rm -rf "$home"

echo "== one of two 1 GiB files removed, written at the same time"
home="$work/mixed"
start_mount "$home"
head -c 1G /dev/urandom >"$mnt/a" &
writer=$!
head -c 1G /dev/urandom >"$mnt/b"
wait "$writer"
rm "$mnt/a"
stop_mount
run_gc "gc" "$home"
run_gc "gc again (nothing to delete)" "$home"
