#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit, property, integration and CLI tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keibi-target}"
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked
