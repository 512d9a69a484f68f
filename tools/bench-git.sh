#!/usr/bin/env bash
# git on one mount beside ext4: a repository made of SRC (default: the cargo registry's
# sources, some 20,000 files of real code) is cloned into a plain ext4 directory and into
# a keibi mount; then, after the page cache is dropped (and the mount restarted), `git
# status` once cold and three times warm, `ls -lR` of the work tree, and `git grep` (every
# tracked file opened and read).
# Usage: tools/bench-git.sh [SRC]   (root: it mounts; KEIBI_BIN=path measures that build)
set -euo pipefail
src_dir=${1:-${CARGO_HOME:-$HOME/.cargo}/registry/src}
[ -d "$src_dir" ] || { echo "no source tree at $src_dir" >&2; exit 2; }
source "$(dirname "$0")/bench-lib.sh"
bench_setup bench-git
export GIT_CONFIG_NOSYSTEM=1 GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@keibi.invalid
export GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@keibi.invalid HOME="$work"

repo="$work/src"
cp -r "$src_dir" "$repo"
git -C "$repo" init -q
git -C "$repo" add -A -f
git -C "$repo" -c gc.auto=0 commit -q -m source
git -C "$repo" gc -q
echo "repository: $(git -C "$repo" ls-files | wc -l) files, $(du -sh "$repo/.git" | cut -f1) of history, from $src_dir"

seconds() { # command... -> wall time in seconds
  local start end
  start=$(date +%s.%N)
  "$@" >/dev/null
  end=$(date +%s.%N)
  awk "BEGIN { printf \"%.3f\", $end - $start }"
}

measure() { # label dir restart-command
  local label=$1 dir=$2 restart=$3 clone cold warm=() ls grep
  clone=$(seconds git clone -q "$repo" "$dir/repo")
  $restart
  drop_caches
  cold=$(seconds git -C "$dir/repo" status --porcelain)
  for _ in 1 2 3; do warm+=("$(seconds git -C "$dir/repo" status --porcelain)"); done
  ls=$(seconds ls -lR "$dir/repo")
  grep=$(seconds git -C "$dir/repo" grep -c -e keibi-bench-needle)
  [ -z "$(git -C "$dir/repo" status --porcelain)" ] || { echo "$label: work tree not clean" >&2; exit 1; }
  printf '%-6s %8s %8s %8s %8s %8s %8s %8s\n' "$label" "$clone" "$cold" "${warm[@]}" "$ls" "$grep"
}

restart_mount() { stop_mount; start_mount "$work/home"; }

mkdir -p "$work/ext4"
start_mount "$work/home"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"
printf '%-6s %8s %8s %8s %8s %8s %8s %8s\n' "" clone "status" "warm 1" "warm 2" "warm 3" "ls -lR" "grep"
measure ext4 "$work/ext4" true
measure keibi "$mnt" restart_mount
echo "(seconds; status cold after the page cache is dropped and the mount restarted)"
