#!/usr/bin/env bash
# End-to-end benchmarks of `keibi mount`, each beside the same run on a plain ext4 directory
# of this machine: fio sequential write and read of 1 GiB in 1 MiB blocks, fio 4 KiB random
# read/write with an fsync every 64 writes, and creating, stat-ing, reading and removing
# 10,000 small files. Then the peak memory (VmHWM) of the mount process while dd writes a
# 10 GiB file.
# Page caches are dropped before every read pass, so reads reach the filesystem.
# Usage: tools/bench-mount.sh [--no-memory] [--low-latency] [--xattrs]   (root: it drops page caches)
#   --no-memory    skip the 10 GiB memory run
#   --low-latency  mount with `keibi mount --low-latency`
#   --xattrs       mount with `keibi mount --xattrs`
set -euo pipefail
memory=1 mount_args=()
for arg in "$@"; do
  case "$arg" in
    --no-memory) memory=0 ;;
    --low-latency) mount_args+=(--low-latency) ;;
    --xattrs) mount_args+=(--xattrs) ;;
    *) echo "usage: $0 [--no-memory] [--low-latency] [--xattrs]" >&2; exit 2 ;;
  esac
done
source "$(dirname "$0")/bench-lib.sh"
bench_setup bench
{ command -v fio && command -v jq; } >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fio jq >/dev/null
home="$work/home" ext4="$work/ext4"
mkdir -p "$ext4"
start_mount "$home" "${mount_args[@]}"

# fio JSON -> MiB/s or IOPS of one direction.
fio_field() { jq -r "$1" "$2"; }

run_fio() { # dir label -> fills results
  local dir=$1 label=$2 out="$work/fio-$2"
  fio --name=seq --directory="$dir" --rw=write --bs=1M --size=1G --ioengine=psync \
    --end_fsync=1 --output-format=json >"$out-w.json"
  drop_caches
  fio --name=seq --directory="$dir" --rw=read --bs=1M --size=1G --ioengine=psync \
    --output-format=json >"$out-r.json"
  rm -f "$dir"/seq.*
  fio --name=rand --directory="$dir" --rw=randrw --rwmixread=50 --bs=4k --size=256M \
    --ioengine=psync --fsync=64 --runtime=15 --time_based --output-format=json >"$out-rw.json"
  rm -f "$dir"/rand.*
  printf '%s %s %s %s %s\n' "$label" \
    "$(fio_field '.jobs[0].write.bw_bytes / 1048576 | floor' "$out-w.json")" \
    "$(fio_field '.jobs[0].read.bw_bytes / 1048576 | floor' "$out-r.json")" \
    "$(fio_field '.jobs[0].read.iops | floor' "$out-rw.json")" \
    "$(fio_field '.jobs[0].write.iops | floor' "$out-rw.json")" >>"$work/fio.txt"
}

small_files() { # dir label
  python3 - "$1" "$2" >>"$work/small.txt" <<'PY'
import os, sys, time
root, label = sys.argv[1], sys.argv[2]
n, body = 10_000, b"x" * 100
d = os.path.join(root, "small")
os.mkdir(d)
names = [os.path.join(d, f"f{i:05d}") for i in range(n)]
t = time.perf_counter()
for p in names:
    with open(p, "wb") as f:
        f.write(body)
create = n / (time.perf_counter() - t)
t = time.perf_counter()
for p in names:
    os.stat(p)
stat = n / (time.perf_counter() - t)
t = time.perf_counter()
for p in names:
    with open(p, "rb") as f:
        f.read()
read = n / (time.perf_counter() - t)
t = time.perf_counter()
for p in names:
    os.unlink(p)
remove = n / (time.perf_counter() - t)
os.rmdir(d)
print(label, int(create), int(stat), int(read), int(remove))
PY
}

run_fio "$ext4" ext4
run_fio "$mnt" keibi
small_files "$ext4" ext4
small_files "$mnt" keibi
workloads_peak=$(peak_rss)

echo "mount options: ${mount_args[*]:-(none)}"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"
awk '
  FNR == NR { f[$1] = $0; next }
  { s[$1] = $0 }
  END {
    split(f["ext4"], e); split(f["keibi"], k)
    split(s["ext4"], se); split(s["keibi"], sk)
    printf "%-34s %12s %12s %8s\n", "workload", "ext4", "keibi", "keibi/ext4"
    row("sequential write 1 GiB, 1 MiB (MiB/s)", e[2], k[2])
    row("sequential read 1 GiB, 1 MiB (MiB/s)", e[3], k[3])
    row("4 KiB random read, fsync/64 (IOPS)", e[4], k[4])
    row("4 KiB random write, fsync/64 (IOPS)", e[5], k[5])
    row("create 10,000 small files (/s)", se[2], sk[2])
    row("stat 10,000 small files (/s)", se[3], sk[3])
    row("read 10,000 small files (/s)", se[4], sk[4])
    row("remove 10,000 small files (/s)", se[5], sk[5])
  }
  function row(name, a, b) { printf "%-34s %12d %12d %8.2f\n", name, a, b, (a > 0 ? b / a : 0) }
' "$work/fio.txt" "$work/small.txt"
echo "memory: peak RSS of the mount process over the workloads above: $workloads_peak"

if [ "$memory" = 1 ]; then
  # A fresh mount and store, so the peak belongs to this write alone.
  stop_mount
  rm -rf "$home"
  start_mount "$work/home2" "${mount_args[@]}"
  # Incompressible, never-repeating data: the worst case for the seal path (nothing dedups,
  # nothing compresses).
  python3 - "$mnt/ten-gib" <<'PY'
import os, sys
with open(sys.argv[1], "wb", buffering=0) as f:
    for _ in range(10 * 1024):
        f.write(os.urandom(1 << 20))
PY
  echo "memory: peak RSS of a fresh mount process while writing a 10 GiB file: $(peak_rss)"
fi
