#!/usr/bin/env bash
# Benchmark dynfs through the FUSE mount against the same filesystem used directly.
#
# usage: bash crates/dynfs/bench/bench.sh [WORKDIR] [SEQ_MIB] [SMALL_FILES]
#   WORKDIR      where disks, mount point and data live (default /var/tmp/dynfs-bench)
#   SEQ_MIB      size of the sequential file in MiB (default 2048)
#   SMALL_FILES  number of 4 KiB files (default 10000)
# Environment: DYNFS_BIN (the dynfs binary), DYNFS_EXTENT (pool extent size, default 4MiB,
# the `dynfs init` default).
# Needs root (FUSE mount with allow_other), fuse3, hyperfine is not required.
set -euo pipefail
WORK=${1:-/var/tmp/dynfs-bench}
SEQ_MIB=${2:-2048}
SMALL=${3:-10000}
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
. "$(dirname "$0")/lib.sh"
BIN=${DYNFS_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/dynfs}
export DYNFS_EXTENT=${DYNFS_EXTENT:-4MiB}
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release -p dynfs)

rm -rf "$WORK"; mkdir -p "$WORK/src-small" "$WORK/direct"
# Source data lives in RAM so only the destination is measured.
SRC=$(mktemp -d /dev/shm/dynfs-bench-src.XXXXXX)
trap 'fusermount3 -u "$WORK/mnt" 2>/dev/null || true; rm -rf "$SRC"' EXIT
head -c $((SEQ_MIB << 20)) /dev/urandom > "$SRC/big"
small_tree "$SRC/small" "$SMALL"


# Both sides promise the same durability when the clock stops: the big file is fsynced
# (`sync FILE`), and after the small files a global `sync` is followed by an fsync of their
# directory (`sync DIR`). `sync -f`/`sync` alone would not do for the mount: the kernel does not
# pass syncfs on to a FUSE filesystem, so dynfs would be timed without making anything durable;
# fsync of a file or directory on the mount makes every change so far durable.

measure() { # label dest-dir [daemon-pid]
    local label=$1 dst=$2 pid=${3:-} t0 t1 t2 t3 t4 c0 c1 c2
    drop; c0=$(cpu "$pid"); t0=$(now); cp "$SRC/big" "$dst/big"; sync "$dst/big"; t1=$(now); c1=$(cpu "$pid")
    drop; t2=$(now); cat "$dst/big" > /dev/null; t3=$(now); c2=$(cpu "$pid")
    drop; local s0; s0=$(now); cp -a "$SRC/small" "$dst/small"; sync; sync "$dst/small"; t4=$(now)
    echo "$label seq_write_s=$(secs $t0 $t1) seq_read_s=$(secs $t2 $t3) small_files_s=$(secs $s0 $t4) write_cpu_s=$(secs $c0 $c1) read_cpu_s=$(secs $c1 $c2) load=$(cut -d' ' -f1 /proc/loadavg)"
}

# The disk's own rate for the bytes each policy stores: rs:4+2 writes 1.5x the file,
# replicate:3 3x, all to this one disk. Written directly (cp, plus head -c for a half copy) with
# the same fsync at the end, this is the floor for the mount's write time.
disk_floor() { # label halves (3 = 1.5x, 6 = 3x)
    local label=$1 halves=$2 t0 t1 files=()
    drop; t0=$(now)
    for ((h = 0; h + 1 < halves; h += 2)); do cp "$SRC/big" "$WORK/direct/floor$h"; files+=("$WORK/direct/floor$h"); done
    if ((halves % 2)); then head -c $((SEQ_MIB << 19)) "$SRC/big" > "$WORK/direct/floor-half"; files+=("$WORK/direct/floor-half"); fi
    sync "${files[@]}"; t1=$(now)
    rm -f "${files[@]}"
    echo "$label seq_write_s=$(secs $t0 $t1) load=$(cut -d' ' -f1 /proc/loadavg)"
}

# Encoding and hashing alone (no I/O), when the example is built
# (cargo build --release -p dynfs-core --example codec_bench).
CODEC=$(dirname "$BIN")/examples/codec_bench
if [ -x "$CODEC" ]; then "$CODEC" $((SEQ_MIB < 256 ? SEQ_MIB : 256)); fi

measure direct "$WORK/direct"
disk_floor "direct-1.5x(rs:4+2 bytes)" 3
disk_floor "direct-3x(replicate:3 bytes)" 6
for policy in rs:4+2 replicate:3; do
    mount_pool "$BIN" "$policy"
    measure "dynfs-$policy" "$WORK/mnt" "$POOL_PID"
    fusermount3 -u "$WORK/mnt"
    sleep 1
done
