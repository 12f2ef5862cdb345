#!/usr/bin/env bash
# Benchmark dynfs through the FUSE mount against the same filesystem used directly.
#
# usage: bash crates/dynfs/bench/bench.sh [WORKDIR] [SEQ_MIB] [SMALL_FILES]
#   WORKDIR      where disks, mount point and data live (default /var/tmp/dynfs-bench)
#   SEQ_MIB      size of the sequential file in MiB (default 2048)
#   SMALL_FILES  number of 4 KiB files (default 10000)
# Needs root (FUSE mount with allow_other), fuse3, hyperfine is not required.
set -euo pipefail
WORK=${1:-/var/tmp/dynfs-bench}
SEQ_MIB=${2:-2048}
SMALL=${3:-10000}
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
BIN=${DYNFS_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/dynfs}
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release -p dynfs)

rm -rf "$WORK"; mkdir -p "$WORK/src-small" "$WORK/direct"
# Source data lives in RAM so only the destination is measured.
SRC=$(mktemp -d /dev/shm/dynfs-bench-src.XXXXXX)
trap 'fusermount3 -u "$WORK/mnt" 2>/dev/null || true; rm -rf "$SRC"' EXIT
head -c $((SEQ_MIB << 20)) /dev/urandom > "$SRC/big"
python3 - "$SRC/small" "$SMALL" <<'PY'
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

# Both sides promise the same durability when the clock stops: the big file is fsynced
# (`sync FILE`), and after the small files a global `sync` is followed by an fsync of their
# directory (`sync DIR`). `sync -f`/`sync` alone would not do for the mount: the kernel does not
# pass syncfs on to a FUSE filesystem, so dynfs would be timed without making anything durable;
# fsync of a file or directory on the mount makes every change so far durable.
measure() { # label dest-dir
    local label=$1 dst=$2 t0 t1 t2 t3 t4
    drop; t0=$(now); cp "$SRC/big" "$dst/big"; sync "$dst/big"; t1=$(now)
    drop; t2=$(now); cat "$dst/big" > /dev/null; t3=$(now)
    drop; local s0; s0=$(now); cp -a "$SRC/small" "$dst/small"; sync; sync "$dst/small"; t4=$(now)
    echo "$label seq_write_s=$(secs $t0 $t1) seq_read_s=$(secs $t2 $t3) small_files_s=$(secs $s0 $t4) load=$(cut -d' ' -f1 /proc/loadavg)"
}

measure direct "$WORK/direct"
for policy in rs:4+2 replicate:3; do
    rm -rf "$WORK/pool" "$WORK"/disk* "$WORK/mnt"; mkdir -p "$WORK/mnt"
    args=()
    for i in 1 2 3 4 5 6; do mkdir -p "$WORK/disk$i"; args+=(--disk "$WORK/disk$i"); done
    "$BIN" init "$WORK/pool" "${args[@]}" --policy "$policy" --extent-size 1MiB > /dev/null
    "$BIN" mount "$WORK/pool" "$WORK/mnt"
    measure "dynfs-$policy" "$WORK/mnt"
    fusermount3 -u "$WORK/mnt"
    sleep 1
done
