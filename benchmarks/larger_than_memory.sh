#!/usr/bin/env bash
# Proof that training reads a decoded-image cache larger than the memory the process may use.
#
# Builds the cache for the pipeline benchmark's JPEG folder at --img-size 200 (20,000 x 200 x
# 200 x 3 bytes = 2.4 GB), then trains one epoch inside a cgroup (v1 or v2) whose memory
# limit (default 1 GiB, page cache included) is well below the cache's size. The memory map's
# pages are clean file pages that the kernel evicts and re-reads; nothing is copied whole.
#
#   sudo bash benchmarks/larger_than_memory.sh [FOLDER] [LIMIT_MB]
set -euo pipefail
folder=${1:-/tmp/cnnkit-bench-jpegs}
limit_mb=${2:-1024}
out=$(mktemp -d)
python benchmarks/pipeline.py --folder "$folder" --epochs 0 >/dev/null  # makes the folder if it is missing
model="conv16k5s4 relu pool2 conv32 relu pool2 gap fc"
train=(python -m cnnkit train --data "$folder" --img-size 200 --model "$model" --epochs 1 --batch-size 128 --out "$out")

echo "building the cache (no limit)"
python -c "from cnnkit.data import load_data; load_data('$folder', img_size=200)"
entry=$(ls -S "${CNNKIT_CACHE_DIR:-$HOME/.cache/cnnkit}"/images/*/pixels.u8 | head -1)
echo "cache entry: $(du -m "$entry" | cut -f1) MB; memory limit: $limit_mb MB"

if [ -d /sys/fs/cgroup/memory ]; then  # cgroup v1
  group=/sys/fs/cgroup/memory/cnnkit-bench
  mkdir -p "$group"
  echo $((limit_mb * 1024 * 1024)) >"$group/memory.limit_in_bytes"
  echo 0 >"$group/memory.swappiness" 2>/dev/null || true
  sync && echo 1 >/proc/sys/vm/drop_caches
  sh -c "echo \$\$ >$group/cgroup.procs && exec /usr/bin/time -v ${train[*]@Q} --name limited" 2>&1 |
    grep -E "test accuracy|Maximum resident|Elapsed|error"
  echo "peak memory of the cgroup: $(($(cat "$group/memory.max_usage_in_bytes") / 1048576)) MB" \
    "(limit $limit_mb MB), times the limit was hit: $(cat "$group/memory.failcnt")"
  rmdir "$group"
else  # cgroup v2 through systemd
  systemd-run --scope -p MemoryMax="${limit_mb}M" -p MemorySwapMax=0 /usr/bin/time -v "${train[@]}" --name limited 2>&1 |
    grep -E "test accuracy|Maximum resident|Elapsed"
fi
rm -rf "$out"
