# Shared by bench.sh and small.sh (sourced): timing helpers, the small-file source tree and
# a fresh six-disk pool mounted at $WORK/mnt.

now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.2f}')"; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
# CPU seconds (user + system) used so far by process $1 (0 when not given).
cpu() {
    if [ -n "${1:-}" ]; then
        awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat"
    else
        echo 0
    fi
}

# small_tree DIR N: N files of 4 KiB of random bytes, 100 per directory.
small_tree() {
    python3 - "$1" "$2" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, "d%03d" % (i // 100))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%05d" % i), "wb") as f:
        f.write(os.urandom(4096))
PY
}

# mount_pool BIN POLICY: a new pool over six disk directories under $WORK, mounted at
# $WORK/mnt; sets POOL_PID to the mount daemon's pid (empty if not found). The extent size is
# $DYNFS_EXTENT (default 1MiB).
mount_pool() {
    local bin=$1 policy=$2 args=() i
    rm -rf "$WORK/pool" "$WORK"/disk* "$WORK/mnt"; mkdir -p "$WORK/mnt"
    for i in 1 2 3 4 5 6; do mkdir -p "$WORK/disk$i"; args+=(--disk "$WORK/disk$i"); done
    "$bin" init "$WORK/pool" "${args[@]}" --policy "$policy" --extent-size "${DYNFS_EXTENT:-1MiB}" > /dev/null
    "$bin" mount "$WORK/pool" "$WORK/mnt"
    POOL_PID=$(pgrep -n -f "mount $WORK/pool $WORK/mnt" || true)
}
