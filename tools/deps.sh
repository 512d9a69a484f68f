#!/usr/bin/env bash
# Installs the Debian packages keibi builds and tests with, if any is missing.
# RocksDB and zstd come from Debian (see ARCHITECTURE.md, "Why the system RocksDB");
# libclang is for the RocksDB bindings; fuse3 and git are for the mount and its tests.
set -euo pipefail
packages=(librocksdb-dev libzstd-dev pkg-config libclang-dev fuse3 git)
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
