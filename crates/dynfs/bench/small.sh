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
#
# DYNFS_BENCH_FIFO=PRIO runs everything (cp, sync, the mount daemon and its threads) at
# SCHED_FIFO priority PRIO: on a machine shared with other work this shields the measurement
# from it (every wakeup preempts the other load at once), which makes A/B runs repeatable.
set -euo pipefail
if [ -n "${DYNFS_BENCH_FIFO:-}" ] && [ -z "${DYNFS_BENCH_FIFO_ON:-}" ]; then
    DYNFS_BENCH_FIFO_ON=1 exec chrt -f "$DYNFS_BENCH_FIFO" bash "$0" "$@"
fi
WORK=$1 FILES=$2 ROUNDS=$3 POLICY=$4
shift 4
. "$(dirname "$0")/lib.sh"
rm -rf "$WORK"; mkdir -p "$WORK"
SRC=$(mktemp -d /dev/shm/dynfs-small-src.XXXXXX)
trap 'fusermount3 -u "$WORK/mnt" 2>/dev/null || true; rm -rf "$SRC"' EXIT
small_tree "$SRC/small" "$FILES"


# label dest-dir [daemon pid]
measure() {
    local label=$1 dst=$2 pid=${3:-} t0 t1 t2 c0=0 c1=0
    drop
    c0=$(cpu "$pid")
    t0=$(now); cp -a "$SRC/small" "$dst/small"; t1=$(now)
    sync; sync "$dst/small"; t2=$(now)
    c1=$(cpu "$pid")
    echo "$label copy_s=$(secs "$t0" "$t1") durable_s=$(secs "$t1" "$t2") total_s=$(secs "$t0" "$t2") daemon_cpu_s=$(secs "$c0" "$c1") load=$(cut -d' ' -f1 /proc/loadavg)"
}

for round in $(seq "$ROUNDS"); do
    rm -rf "$WORK/direct"; mkdir -p "$WORK/direct"
    measure "round=$round direct" "$WORK/direct"
    for bin in "$@"; do
        mount_pool "$bin" "$POLICY"
        measure "round=$round $bin $POLICY" "$WORK/mnt" "$POOL_PID"
        fusermount3 -u "$WORK/mnt"
        sleep 1
    done
done
