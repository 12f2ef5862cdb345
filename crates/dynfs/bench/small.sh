#!/usr/bin/env bash
# Small-file A/B benchmark: `cp -a` of many 4 KiB files into a directory, then make them
# durable, timed on the plain filesystem and through one or more dynfs binaries, in
# interleaved rounds (the machine's load moves a lot; compare medians).
#
# usage: bash crates/dynfs/bench/small.sh WORKDIR FILES ROUNDS POLICY BIN...
#   WORKDIR  where disks, mount point and data live (removed and recreated)
#   FILES    number of 4 KiB files (100 per directory)
#   ROUNDS   rounds; each round times direct, then every BIN in turn
#   POLICY   dynfs policy (rs:4+2, replicate:3, ...)
#   BIN      dynfs binaries to compare (e.g. a baseline build and the new one)
# Prints one line per measurement: label, copy seconds, durable seconds, total, daemon CPU
# seconds (user + system of the mount daemon), load average. Needs root and fuse3.
set -euo pipefail
WORK=$1 FILES=$2 ROUNDS=$3 POLICY=$4
shift 4
rm -rf "$WORK"; mkdir -p "$WORK"
SRC=$(mktemp -d /dev/shm/dynfs-small-src.XXXXXX)
trap 'fusermount3 -u "$WORK/mnt" 2>/dev/null || true; rm -rf "$SRC"' EXIT
python3 - "$SRC/small" "$FILES" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, "d%03d" % (i // 100))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%05d" % i), "wb") as f:
        f.write(os.urandom(4096))
PY

now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.2f}')"; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
# user + system seconds of a process so far
cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat"; }

# label dest-dir [daemon pid]
measure() {
    local label=$1 dst=$2 pid=${3:-} t0 t1 t2 c0=0 c1=0
    drop
    [ -n "$pid" ] && c0=$(cpu "$pid")
    t0=$(now); cp -a "$SRC/small" "$dst/small"; t1=$(now)
    sync; sync "$dst/small"; t2=$(now)
    [ -n "$pid" ] && c1=$(cpu "$pid")
    echo "$label copy_s=$(secs "$t0" "$t1") durable_s=$(secs "$t1" "$t2") total_s=$(secs "$t0" "$t2") daemon_cpu_s=$(secs "$c0" "$c1") load=$(cut -d' ' -f1 /proc/loadavg)"
}

for round in $(seq "$ROUNDS"); do
    rm -rf "$WORK/direct"; mkdir -p "$WORK/direct"
    measure "round=$round direct" "$WORK/direct"
    for bin in "$@"; do
        rm -rf "$WORK/pool" "$WORK"/disk* "$WORK/mnt"; mkdir -p "$WORK/mnt"
        args=()
        for i in 1 2 3 4 5 6; do mkdir -p "$WORK/disk$i"; args+=(--disk "$WORK/disk$i"); done
        "$bin" init "$WORK/pool" "${args[@]}" --policy "$POLICY" --extent-size 1MiB > /dev/null
        "$bin" mount "$WORK/pool" "$WORK/mnt"
        pid=$(pgrep -n -f "^$bin mount $WORK/pool" || true)
        measure "round=$round $bin $POLICY" "$WORK/mnt" "$pid"
        fusermount3 -u "$WORK/mnt"
        sleep 1
    done
done
