#!/usr/bin/env bash
# keibi's main job on this machine: create a store, write a tree of files through the
# filesystem core, read it back, verify the store and show its figures.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keibi-target}"
cargo build --release --locked
keibi="$CARGO_TARGET_DIR/release/keibi"
home="${KEIBI_DEMO_HOME:-$(mktemp -d)/home}"
"$keibi" --home "$home" init
"$keibi" --home "$home" demo "$@"
"$keibi" --home "$home" status
"$keibi" --home "$home" gc --dry-run
"$keibi" --home "$home" verify
echo "store kept in $home"
