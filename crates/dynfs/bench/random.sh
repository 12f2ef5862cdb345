#!/usr/bin/env bash
# Small random writes into a large file, and two small-write workloads, through the mount
# against the same filesystem used directly, for one or more extent sizes.
#
# usage: bash crates/dynfs/bench/random.sh [WORKDIR] [EXTENT_SIZES] [POLICIES]
#   WORKDIR       where disks, mount point and data live (default /var/tmp/dynfs-random)
#   EXTENT_SIZES  space-separated extent sizes (default "1MiB 4MiB")
#   POLICIES      space-separated policies (default "rs:4+2 replicate:3")
# Environment: DYNFS_BIN (the dynfs binary), RANDOM_WRITES (default 300),
# RANDOM_FILE_MIB (default 256).
# Steps, each timed: `rand4k` = RANDOM_WRITES 4 KiB pwrite + fdatasync at random 4 KiB-aligned
# offsets of a RANDOM_FILE_MIB file; `sqlite` = 300 single-row INSERT transactions into a
# sqlite database (journal_mode=DELETE, synchronous=FULL); `git` = 20 commits of a changed
# file into a repository of 200 small files.
set -euo pipefail
WORK=${1:-/var/tmp/dynfs-random}
EXTENTS=${2:-"1MiB 4MiB"}
POLICIES=${3:-"rs:4+2 replicate:3"}
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
. "$(dirname "$0")/lib.sh"
BIN=${DYNFS_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/dynfs}
N=${RANDOM_WRITES:-300}
FMIB=${RANDOM_FILE_MIB:-256}
rm -rf "$WORK"; mkdir -p "$WORK/direct"
trap 'fusermount3 -u "$WORK/mnt" 2>/dev/null || true' EXIT

steps() { # label dir [pid]
    local label=$1 dir=$2 pid=${3:-} t0 t1 t2 t3 c0 c1 c2 c3
    head -c $((FMIB << 20)) /dev/urandom > "$dir/big"; sync "$dir/big"
    c0=$(cpu "$pid"); t0=$(now)
    python3 - "$dir/big" "$N" "$FMIB" <<'PY'
import os, random, sys
path, n, mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fd = os.open(path, os.O_WRONLY)
rng = random.Random(7)
block = os.urandom(4096)
for _ in range(n):
    os.pwrite(fd, block, rng.randrange(mib * 256) * 4096)
    os.fdatasync(fd)
os.close(fd)
PY
    t1=$(now); c1=$(cpu "$pid")
    python3 - "$dir/db.sqlite" <<'PY'
import sqlite3, sys, os
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA journal_mode=DELETE"); db.execute("PRAGMA synchronous=FULL")
db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
for i in range(300):
    db.execute("BEGIN"); db.execute("INSERT INTO t (v) VALUES (?)", (os.urandom(200),)); db.execute("COMMIT")
db.close()
PY
    t2=$(now); c2=$(cpu "$pid")
    (
        cd "$dir" && mkdir repo && cd repo && git init -q && git config user.email b@x && git config user.name b
        for i in $(seq 200); do head -c 2000 /dev/urandom | base64 > "f$i"; done
        git add -A && git commit -qm init
        for i in $(seq 20); do echo "$i" >> f1; git commit -qam "c$i"; done
    )
    sync "$dir/repo/.git"; t3=$(now); c3=$(cpu "$pid")
    echo "$label rand4k_s=$(secs $t0 $t1) sqlite_s=$(secs $t1 $t2) git_s=$(secs $t2 $t3) cpu_rand=$(secs $c0 $c1) cpu_sqlite=$(secs $c1 $c2) cpu_git=$(secs $c2 $c3) load=$(cut -d' ' -f1 /proc/loadavg)"
    rm -rf "$dir/big" "$dir/db.sqlite" "$dir/repo"
}

steps direct "$WORK/direct"
for es in $EXTENTS; do
    for policy in $POLICIES; do
        DYNFS_EXTENT=$es mount_pool "$BIN" "$policy"
        steps "dynfs-$policy-$es" "$WORK/mnt" "$POOL_PID"
        fusermount3 -u "$WORK/mnt"
        sleep 1
    done
done
