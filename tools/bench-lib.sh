# The harness the end-to-end benchmarks in tools/ share; sourced, not run.
#   bench_setup NAME        installs what the benchmarks need, builds keibi (or takes
#                           KEIBI_BIN, to measure another build), makes $work (removed on
#                           exit) and the mountpoint $mnt; sets $keibi
#   start_mount HOME [ARG]  mounts $mnt from HOME with `keibi mount ARG...`; sets $pid
#   stop_mount              SIGTERM, then waits for the mount to commit and exit
#   drop_caches             so that reads reach the filesystem (root)
#   peak_rss                the mount process's peak resident memory (VmHWM)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keibi-target}"

bench_setup() { # name
  bash tools/deps.sh
  if [ -n "${KEIBI_BIN:-}" ]; then
    keibi=$KEIBI_BIN
  else
    cargo build --release --locked --quiet
    keibi="$CARGO_TARGET_DIR/release/keibi"
  fi
  # On the root filesystem (ext4 here), not tmpfs, so keibi and ext4 share the disk.
  work=$(mktemp -d "/var/tmp/keibi-$1.XXXXXX")
  mnt="$work/mnt"
  mkdir -p "$mnt"
  pid=""
  trap bench_cleanup EXIT
}

bench_cleanup() {
  if [ -n "$pid" ]; then
    fusermount3 -u -z "$mnt" 2>/dev/null || true
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}

start_mount() { # home [mount args...]
  local home=$1
  shift
  "$keibi" mount "$mnt" --home "$home" "$@" 2>"$work/mount.log" &
  pid=$!
  for _ in $(seq 1 500); do
    grep -q " $mnt fuse.keibi " /proc/mounts && return 0
    sleep 0.02
  done
  cat "$work/mount.log"
  exit 1
}

stop_mount() {
  kill -TERM "$pid"
  wait "$pid"
  pid=""
}

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }

peak_rss() { awk '/VmHWM/ {printf "%.0f MiB", $2/1024}' "/proc/$pid/status"; }
