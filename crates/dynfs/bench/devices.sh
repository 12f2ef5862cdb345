#!/usr/bin/env bash
# Sequential write through the mount when every pool disk is its own device: seven loop
# devices (files on /dev/shm, ext4), each throttled to the same write and read rate with the
# blkio cgroup (v1 `blkio.throttle.*_bps_device`, which throttles the O_DIRECT writes dynfs
# makes; the direct copy is written with O_DIRECT too, `dd oflag=direct`). Device 0 takes the
# direct copy, devices 1..6 are the pool's disks. Unlike bench.sh (six directories on one
# disk, where replicate:3 must push 3x the bytes through one device), each device here takes
# only its share: replicate:3 over six devices writes 0.5x the file per device, rs:4+2 0.25x.
#
# usage: bash crates/dynfs/bench/devices.sh [WORKDIR] [MIB] [RATE_MB_S] [EXTENT]
#   defaults: /var/tmp/dynfs-devices, 1024 MiB, 100 MB/s per device, 4MiB
# Environment: DYNFS_BIN (the dynfs binary). Needs root, loop devices, cgroup v1 blkio.
set -euo pipefail
WORK=${1:-/var/tmp/dynfs-devices}
MIB=${2:-1024}
RATE=${3:-100}
EXTENT=${4:-4MiB}
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
. "$(dirname "$0")/lib.sh"
BIN=${DYNFS_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/dynfs}
CG=/sys/fs/cgroup/blkio/dynfs-devices-$$
IMG=$(mktemp -d /dev/shm/dynfs-devices.XXXXXX)
LOOPS=()
cleanup() {
    fusermount3 -u "$WORK/mnt" 2>/dev/null || true
    sleep 1
    for i in 0 1 2 3 4 5 6; do umount "$WORK/dev$i" 2>/dev/null || true; done
    for l in "${LOOPS[@]}"; do losetup -d "$l" 2>/dev/null || true; done
    # Leave the throttled cgroup before removing it.
    echo $$ > /sys/fs/cgroup/blkio/tasks 2>/dev/null || true
    rmdir "$CG" 2>/dev/null || true
    rm -rf "$IMG"
}
trap cleanup EXIT
rm -rf "$WORK"; mkdir -p "$WORK/mnt" "$CG"
head -c $((MIB << 20)) /dev/urandom > "$IMG/src"
bps=$((RATE * 1000 * 1000))
for i in 0 1 2 3 4 5 6; do
    truncate -s $(((MIB + 512) << 20)) "$IMG/img$i"
    l=$(losetup -f --show "$IMG/img$i"); LOOPS+=("$l")
    mkfs.ext4 -q -F "$l"
    mkdir -p "$WORK/dev$i"; mount "$l" "$WORK/dev$i"
    mm=$(lsblk -ndo MAJ:MIN "$l" | tr -d ' ')
    echo "$mm $bps" > "$CG/blkio.throttle.write_bps_device"
    echo "$mm $bps" > "$CG/blkio.throttle.read_bps_device"
done
# Everything below (dd, the daemon) runs in the throttled cgroup.
echo $$ > "$CG/tasks"

drop
t0=$(now); dd if="$IMG/src" of="$WORK/dev0/big" bs=4M oflag=direct status=none; sync "$WORK/dev0/big"; t1=$(now)
drop
t2=$(now); dd if="$WORK/dev0/big" of=/dev/null bs=4M iflag=direct status=none; t3=$(now)
echo "direct(one device, O_DIRECT) seq_write_s=$(secs $t0 $t1) seq_read_s=$(secs $t2 $t3) rate_mb_s=$RATE load=$(cut -d' ' -f1 /proc/loadavg)"
rm -f "$WORK/dev0/big"

for policy in rs:4+2 replicate:3; do
    rm -rf "$WORK/pool"; args=()
    for i in 1 2 3 4 5 6; do rm -rf "$WORK/dev$i/d"; mkdir "$WORK/dev$i/d"; args+=(--disk "$WORK/dev$i/d"); done
    "$BIN" init "$WORK/pool" "${args[@]}" --policy "$policy" --extent-size "$EXTENT" > /dev/null
    "$BIN" mount "$WORK/pool" "$WORK/mnt"
    pid=$(pgrep -n -f "mount $WORK/pool $WORK/mnt" || true)
    drop; c0=$(cpu "$pid"); t0=$(now); cp "$IMG/src" "$WORK/mnt/big"; sync "$WORK/mnt/big"; t1=$(now); c1=$(cpu "$pid")
    drop; t2=$(now); cat "$WORK/mnt/big" > /dev/null; t3=$(now)
    cmp "$IMG/src" "$WORK/mnt/big"
    echo "dynfs-$policy seq_write_s=$(secs $t0 $t1) seq_read_s=$(secs $t2 $t3) write_cpu_s=$(secs $c0 $c1) load=$(cut -d' ' -f1 /proc/loadavg)"
    fusermount3 -u "$WORK/mnt"; sleep 1
done
