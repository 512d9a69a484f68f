#!/usr/bin/env bash
# Installs the Debian packages keibi builds and tests with, if any is missing.
# g++ compiles RocksDB from source (see ARCHITECTURE.md, "Why RocksDB is built from source");
# libclang is for its bindings; zstd comes from Debian; fuse3 mounts; git, python3 (mmap)
# and sqlite3 are the real programs the mount tests run; git-lfs runs across two mounts.
set -euo pipefail
packages=(g++ libzstd-dev pkg-config libclang-dev fuse3 git git-lfs python3 sqlite3)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }

# pjdfstest, the POSIX conformance suite tests/posix.rs runs against a mount. Built once into
# the persistent target directory (about a minute), then reused.
target="${CARGO_TARGET_DIR:-$HOME/.cache/keibi-target}"
pjdfstest="$target/tools/bin/pjdfstest"
if [ ! -x "$pjdfstest" ]; then
  echo "installing pjdfstest into $target/tools" >&2
  CARGO_TARGET_DIR="$target/tools-build" cargo install --quiet --locked \
    --root "$target/tools" pjdfstest --version 0.2.2
fi
