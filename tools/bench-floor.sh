#!/usr/bin/env bash
# The floor under any FUSE filesystem on this machine, beside keibi and ext4: the same
# workloads on a plain ext4 directory, on a FUSE filesystem whose handlers do nothing
# (`examples/fuse_floor.rs null`: names and sizes in a map, content thrown away, reads
# return zeros), on keibi's FUSE layer and core over the in-memory store (`memory`), and on
# `keibi mount`. Each round mounts all three afresh.
#   - create: Python creating 10,000 files of 100 bytes (after 10,000 to warm up), with the
#     CPU time (user and system, µs per file) of the process serving the mount;
#   - read: fio reading 1 GiB in 1 MiB blocks after a write with end_fsync and dropped
#     caches (the null filesystem has no disk to wait for); keibi also reads it a second
#     time with only the mount's own page cache dropped (its store's files still cached).
# Usage: tools/bench-floor.sh [--rounds N] [--low-latency]   (root: it mounts and drops
#   caches; --low-latency holds a CPU-latency request of 0 over the whole run, for every
#   filesystem, as `keibi mount --low-latency` does while requests arrive)
# KEIBI_BIN and FLOOR_BIN measure other builds.
set -euo pipefail
rounds=2 low_latency=0
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) rounds=$2; shift 2 ;;
    --low-latency) low_latency=1; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
source "$(dirname "$0")/bench-lib.sh"
bench_setup bench-floor
if [ -n "${FLOOR_BIN:-}" ]; then
  floor=$FLOOR_BIN
else
  cargo build --release --locked --quiet --example fuse_floor
  floor="$CARGO_TARGET_DIR/release/examples/fuse_floor"
fi
floor_pids=() holder=""
cleanup_floor() {
  for d in "$work/null" "$work/memory"; do fusermount3 -u -z "$d" 2>/dev/null || true; done
  for p in "${floor_pids[@]}" $holder; do kill "$p" 2>/dev/null || true; done
  bench_cleanup
}
trap cleanup_floor EXIT
if [ $low_latency = 1 ]; then
  python3 -c 'import struct, time
f = open("/dev/cpu_dma_latency", "wb", buffering=0)
f.write(struct.pack("i", 0))
time.sleep(86400)' &
  holder=$!
fi

mount_floor() { # mode dir -> pid on stdout
  mkdir -p "$2"
  "$floor" "$1" "$2" >/dev/null 2>>"$work/floor.log" &
  local p=$!
  for _ in $(seq 1 500); do
    grep -q " $2 fuse" /proc/mounts && { echo "$p"; return 0; }
    sleep 0.02
  done
  cat "$work/floor.log" >&2
  exit 1
}

creates() { # dir serving-pid(or "") -> "rate user-us sys-us"
  python3 - "$1" "$2" <<'PY'
import os, sys, time
d, pid = sys.argv[1], sys.argv[2]
def cpu():
    if not pid:
        return (0, 0)
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]), int(f[12]))
tick = os.sysconf("SC_CLK_TCK")
n = 10000
for name in ("warm", "run"):
    os.makedirs(f"{d}/{name}")
    a, t = cpu(), time.perf_counter()
    for i in range(n):
        with open(f"{d}/{name}/f{i}", "w") as f:
            f.write("x" * 100)
    dt, b = time.perf_counter() - t, cpu()
us = lambda k: (b[k] - a[k]) * 1e6 / tick / n
print(f"{n / dt:.0f} {us(0):.0f} {us(1):.0f}" if pid else f"{n / dt:.0f} - -")
PY
}

seq_read() { # dir -> MiB/s of a cold read
  fio --name=seq --directory="$1" --rw=write --bs=1M --size=1G --ioengine=psync \
    --end_fsync=1 --output-format=json >/dev/null
  drop_caches
  fio --name=seq --directory="$1" --rw=read --bs=1M --size=1G --ioengine=psync \
    --output-format=json | jq -r '.jobs[0].read.bw_bytes / 1048576 | floor'
}

again_read() { # dir -> MiB/s of a read with only this file's page cache dropped
  python3 -c 'import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' "$1/seq.0.0"
  fio --name=seq --directory="$1" --rw=read --bs=1M --size=1G --ioengine=psync \
    --output-format=json | jq -r '.jobs[0].read.bw_bytes / 1048576 | floor'
}

printf '%-7s %-12s %10s %8s %8s %10s %10s\n' round filesystem creates/s user-us sys-us \
  "read MiB/s" "again"
for round in $(seq 1 "$rounds"); do
  rm -rf "$work/ext4" "$work/home" && mkdir -p "$work/ext4"
  null_pid=$(mount_floor null "$work/null")
  memory_pid=$(mount_floor memory "$work/memory")
  floor_pids=("$null_pid" "$memory_pid")
  start_mount "$work/home" $([ $low_latency = 1 ] && echo --low-latency)
  for fs in ext4 null memory keibi; do
    case $fs in
      ext4) dir="$work/ext4" serving="" ;;
      null) dir="$work/null" serving=$null_pid ;;
      memory) dir="$work/memory" serving=$memory_pid ;;
      keibi) dir="$mnt" serving=$pid ;;
    esac
    read -r rate user sys < <(creates "$dir" "$serving")
    again="-"
    if [ $fs = memory ]; then
      read_rate="-" # the in-memory store would hold the whole GiB in memory
    else
      read_rate=$(seq_read "$dir")
      [ $fs = keibi ] && again=$(again_read "$dir")
      rm -f "$dir"/seq.*
    fi
    printf '%-7s %-12s %10s %8s %8s %10s %10s\n' "$round" "$fs" "$rate" "$user" "$sys" \
      "$read_rate" "$again"
  done
  stop_mount
  for d in "$work/null" "$work/memory"; do fusermount3 -u "$d"; done
  for p in "${floor_pids[@]}"; do wait "$p" 2>/dev/null || true; done
  floor_pids=()
done
