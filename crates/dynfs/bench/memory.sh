#!/usr/bin/env bash
# Daemon memory while many files are written at once: FILES concurrent `cp` of FILE_MIB each
# into a fresh pool, then the daemon's peak resident set (VmHWM) and the time to write them
# all and fsync.
#
# usage: bash crates/dynfs/bench/memory.sh [WORKDIR] [FILES] [FILE_MIB] [POLICY]
#   defaults: /var/tmp/dynfs-memory, 100 files, 16 MiB each, rs:4+2
# Environment: DYNFS_BIN (the dynfs binary), DYNFS_EXTENT (extent size, default 4MiB),
# WRITE_BUFFER_MIB (the pool's write_buffer_mib; default: what `dynfs init` writes).
set -euo pipefail
WORK=${1:-/var/tmp/dynfs-memory}
FILES=${2:-100}
FMIB=${3:-16}
POLICY=${4:-rs:4+2}
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
. "$(dirname "$0")/lib.sh"
BIN=${DYNFS_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/dynfs}
SRC=$(mktemp -d /dev/shm/dynfs-memory.XXXXXX)
trap 'fusermount3 -u "$WORK/mnt" 2>/dev/null || true; rm -rf "$SRC"' EXIT
rm -rf "$WORK"; mkdir -p "$WORK"
head -c $((FMIB << 20)) /dev/urandom > "$SRC/f"
DYNFS_EXTENT=${DYNFS_EXTENT:-4MiB} mount_pool "$BIN" "$POLICY"
if [ -n "${WRITE_BUFFER_MIB:-}" ]; then
    fusermount3 -u "$WORK/mnt"; sleep 1
    grep -v '^write_buffer_mib' "$WORK/pool/pool.toml" > "$WORK/pool.toml"
    echo "write_buffer_mib = $WRITE_BUFFER_MIB" >> "$WORK/pool.toml"
    cp "$WORK/pool.toml" "$WORK/pool/pool.toml"
    "$BIN" mount "$WORK/pool" "$WORK/mnt"
    POOL_PID=$(pgrep -n -f "mount $WORK/pool $WORK/mnt" || true)
fi
hwm() { awk '/VmHWM/ {print $2 / 1024}' "/proc/$POOL_PID/status"; }
echo "after mount: VmHWM=$(hwm) MiB"
drop; t0=$(now)
for i in $(seq "$FILES"); do cp "$SRC/f" "$WORK/mnt/f$i" & done
wait
sync "$WORK/mnt/f1"; t1=$(now)
echo "files=$FILES file_mib=$FMIB extent=${DYNFS_EXTENT:-4MiB} write_buffer_mib=$(awk '/^write_buffer_mib/ {print $3}' "$WORK/pool/pool.toml") policy=$POLICY write_s=$(secs $t0 $t1) VmHWM_MiB=$(hwm) load=$(cut -d' ' -f1 /proc/loadavg)"
for i in 1 $FILES; do cmp "$SRC/f" "$WORK/mnt/f$i"; done
