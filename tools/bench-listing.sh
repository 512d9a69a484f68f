#!/usr/bin/env bash
# Listing one large directory through the mount: N empty files (default 100,000) in one
# directory, then the time `ls -f` takes to list them all, the time until a reader has its
# first entry, and how much the mount's resident memory grows while 8 readers each hold the
# directory open part-way through.
# Usage: tools/bench-listing.sh [N]   (root: it mounts; KEIBI_BIN=path measures that build)
set -euo pipefail
n=${1:-100000}
source "$(dirname "$0")/bench-lib.sh"
bench_setup bench-listing
start_mount "$work/home"
dir="$mnt/big"
mkdir "$dir"
python3 - "$dir" "$n" <<'PY'
import os, sys, time
d, n = sys.argv[1], int(sys.argv[2])
t = time.perf_counter()
for i in range(n):
    os.close(os.open(os.path.join(d, f"entry-{i:07d}"), os.O_CREAT | os.O_WRONLY, 0o644))
print(f"created {n} files in {time.perf_counter() - t:.1f} s")
PY
rss() { awk '/VmRSS/ {print $2}' "/proc/$pid/status"; }
for round in 1 2 3; do
  start=$(date +%s.%N)
  count=$(ls -f "$dir" | wc -l)
  end=$(date +%s.%N)
  echo "ls -f, round $round: $((count - 2)) entries in $(awk "BEGIN { printf \"%.2f\", $end - $start }") s"
done
before=$(rss)
python3 - "$dir" "$pid" "$before" <<'PY'
import os, sys, time
d, pid, before = sys.argv[1], sys.argv[2], int(sys.argv[3])
t = time.perf_counter()
first = os.scandir(d)
next(first)
print(f"first entry after {1000 * (time.perf_counter() - t):.1f} ms")
readers = [first] + [os.scandir(d) for _ in range(7)]
for r in readers:
    for _ in range(5000):
        next(r)
with open(f"/proc/{pid}/status") as f:
    now = next(int(l.split()[1]) for l in f if l.startswith("VmRSS"))
print(f"8 readers holding the directory open: mount RSS {before // 1024} -> {now // 1024} MiB")
for r in readers:
    r.close()
PY
echo "peak RSS of the mount: $(peak_rss)"
