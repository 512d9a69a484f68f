#!/usr/bin/env bash
# Runs the criterion benchmarks and prints one line per benchmark: name, time, throughput.
# Usage: tools/bench.sh [criterion filter]
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keibi-target}"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
cargo bench --locked --bench store --bench vfs --bench replication -- "${1:-}" 2>&1 \
  | grep -E '^[a-z0-9].*/|time:|thrpt:' | sed 's/^ *//'
