#!/usr/bin/env bash
# keibi's main job on this machine: mount a peer's folder with FUSE, write a tree of files
# through the mount (plus a git repository), read it all back byte for byte, unmount, mount
# again, read it back once more, and verify the store (live through the mount, then offline).
# Usage: tools/demo.sh [--source DIR]   (DIR: a tree of your own to copy in)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keibi-target}"
bash tools/deps.sh
cargo build --release --locked
keibi="$CARGO_TARGET_DIR/release/keibi"

work=$(mktemp -d)
home="${KEIBI_DEMO_HOME:-$work/home}" mnt="$work/mnt" src="$work/source"
mkdir -p "$mnt"
pid=""
stop_mount() {
  [ -n "$pid" ] || return 0
  kill -TERM "$pid"
  wait "$pid"
  pid=""
}
cleanup() {
  if [ -n "$pid" ]; then fusermount3 -u -z "$mnt" 2>/dev/null || true; kill "$pid" 2>/dev/null || true; fi
  rm -rf "$mnt" "$src"
}
trap cleanup EXIT
start_mount() {
  "$keibi" mount "$mnt" --home "$home" &
  pid=$!
  for _ in $(seq 1 500); do
    grep -q " $mnt fuse.keibi " /proc/mounts && return 0
    sleep 0.02
  done
  echo "mount did not appear" >&2
  exit 1
}

if [ "${1:-}" = "--source" ]; then
  cp -a "${2:?--source needs a directory}" "$src"
else
  mkdir -p "$src/docs/notes"
  echo "keibi demo: written through the FUSE mount" >"$src/README.txt"
  : >"$src/empty"
  head -c 3000000 /dev/urandom >"$src/big.bin"
  cp "$src/big.bin" "$src/docs/big-copy.bin"   # same content: stored once
  for i in $(seq 1 20); do for _ in $(seq 1 "$i"); do echo "note $i"; done >"$src/docs/notes/note-$i.txt"; done
  ln -s ../README.txt "$src/docs/readme-link"
  printf '#!/bin/sh\necho "hello from a script on keibi"\n' >"$src/hello.sh"
  chmod +x "$src/hello.sh"
fi

echo "== mount $mnt (home $home)"
start_mount
cp -a "$src/." "$mnt/"
git -C "$mnt" -c init.defaultBranch=main init -q repo
echo "tracked" >"$mnt/repo/file.txt"
git -C "$mnt/repo" add file.txt
git -C "$mnt/repo" -c user.name=demo -c user.email=demo@keibi.invalid commit -q -m "first commit on keibi"
ls -la "$mnt"
diff -r "$src" "$mnt" -x repo && echo "== read back through the mount: identical"
[ -x "$mnt/hello.sh" ] && "$mnt/hello.sh"
echo "== status and verify, live through the running mount"
"$keibi" status --home "$home"
"$keibi" verify --home "$home"

echo "== unmount, mount again"
stop_mount
start_mount
diff -r "$src" "$mnt" -x repo && echo "== read back after remount: identical"
git -C "$mnt/repo" log --oneline
git -C "$mnt/repo" fsck --full && echo "== git fsck: clean"
stop_mount

echo "== verify the store offline"
"$keibi" verify --home "$home"
echo "store kept in $home"
