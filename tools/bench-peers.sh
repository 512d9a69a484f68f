#!/usr/bin/env bash
# Replication beside Syncthing and rsync on loopback: a new 1 GiB file, a git clone of 600
# files, 20 bytes appended to the 1 GiB file, a rename of it; the time until peer B's copy
# is identical and the bytes on the wire, for each system in the same run. Run as root
# (keibi mounts), on an otherwise idle machine (bytes are counted on the loopback interface).
# See tools/bench-peers.py for what is measured and how.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keibi-target}"
bash tools/deps.sh
missing=()
for p in syncthing rsync; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
cargo build --release --locked
exec python3 tools/bench-peers.py --keibi "$CARGO_TARGET_DIR/release/keibi" "$@"
