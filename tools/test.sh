#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit, property, integration and CLI tests.
# Ends with one line counting every test that ran.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keibi-target}"
bash tools/deps.sh
export KEIBI_PJDFSTEST="$CARGO_TARGET_DIR/tools/bin/pjdfstest"
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --locked 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "%d passed, %d failed, %d skipped\n", p, f, i }' "$log"
exit "$status"
