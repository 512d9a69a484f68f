#!/usr/bin/env bash
# Two peers on this machine: two homes, two mounts, connected over TLS on 127.0.0.1. A file
# written on peer A appears on peer B; a git repository cloned into A is clean on B; a
# commit made on B shows up on A; `keibi status` shows the connection and key exchange.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keibi-target}"
bash tools/deps.sh
cargo build --release --locked
keibi="$CARGO_TARGET_DIR/release/keibi"

work=$(mktemp -d)
pids=()
cleanup() {
  for m in "$work/a" "$work/b"; do fusermount3 -u -z "$m" 2>/dev/null || true; done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/a" "$work/b"
"$keibi" init --home "$work/home-a" >/dev/null
"$keibi" init --home "$work/home-b" >/dev/null
id_a=$("$keibi" id --home "$work/home-a")
id_b=$("$keibi" id --home "$work/home-b")
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pa=$(port) pb=$(port)
echo "peer A: $id_a on 127.0.0.1:$pa, mounted on $work/a"
echo "peer B: $id_b on 127.0.0.1:$pb, mounted on $work/b"
"$keibi" mount "$work/a" --home "$work/home-a" --listen "127.0.0.1:$pa" --peer "$id_b@127.0.0.1:$pb" 2>"$work/a.log" &
pids+=($!)
"$keibi" mount "$work/b" --home "$work/home-b" --listen "127.0.0.1:$pb" --peer "$id_a@127.0.0.1:$pa" 2>"$work/b.log" &
pids+=($!)
for m in "$work/a" "$work/b"; do
  for _ in $(seq 1 500); do grep -q " $m fuse.keibi " /proc/mounts && break; sleep 0.02; done
done
# wait_for CMD...: retries CMD for up to 60 s.
wait_for() {
  for _ in $(seq 1 600); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "timed out waiting for: $*" >&2
  cat "$work/a.log" "$work/b.log" >&2
  exit 1
}
echo "hello from A, $(date)" >"$work/a/hello.txt"
start=$(date +%s%N)
wait_for cmp "$work/a/hello.txt" "$work/b/hello.txt"
echo "hello.txt written on A, identical on B after $(( ($(date +%s%N) - start) / 1000000 )) ms: $(cat "$work/b/hello.txt")"

src="$work/src"
mkdir -p "$src"
git -C "$src" init -q -b main
for d in $(seq 1 20); do
  mkdir -p "$src/dir$d"
  for f in $(seq 1 30); do echo "dir $d file $f" >"$src/dir$d/file$f.txt"; done
done
git -C "$src" -c user.name=demo -c user.email=demo@keibi.invalid add .
git -C "$src" -c user.name=demo -c user.email=demo@keibi.invalid commit -q -m "600 files"
# Checks for wait_for: each runs afresh on every try.
status_clean() { [ -d "$1/.git" ] && [ -z "$(git -C "$1" status --porcelain 2>&1)" ]; }
branch_is() { [ "$(git -C "$1" rev-parse "$2" 2>/dev/null)" = "$3" ]; }
git clone -q "$src" "$work/a/repo"
wait_for diff -r "$work/a/repo" "$work/b/repo"
wait_for status_clean "$work/b/repo"
echo "git clone on A: B's copy is identical and \`git status\` on B is clean"
git -C "$work/b/repo" checkout -q -b from-b
echo "changed on B" >"$work/b/repo/dir1/file1.txt"
git -C "$work/b/repo" -c user.name=demo -c user.email=demo@keibi.invalid commit -q -am "commit on B"
head_b=$(git -C "$work/b/repo" rev-parse HEAD)
wait_for branch_is "$work/a/repo" from-b "$head_b"
wait_for diff -r "$work/a/repo" "$work/b/repo"
git -C "$work/a/repo" fsck --strict --no-progress
echo "commit $head_b made on B: on A and \`git fsck\` clean there"
echo
"$keibi" status --home "$work/home-b"
echo "demo: OK"
