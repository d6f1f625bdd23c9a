#!/usr/bin/env bash
# bench/roundtrip.sh [-n CALLS] [--threads "1 2 4"]
#
# The floor under every FUSE workload: the cost of one request that does almost nothing.
# Mounts a small two-layer union with strata (over io_uring when the kernel offers it, then
# over /dev/fuse with each thread count given), fuse-overlayfs and
# kernel overlayfs, and times CALLS getxattr() calls of a missing attribute on one lower file
# (each is one FUSE request for the FUSE subjects: the kernel does not cache xattrs), best of
# 5 rounds, in µs per call. Fresh walks need about two such round trips per directory and a
# created file four synchronous ones, so these numbers bound what a FUSE union can reach
# against the kernel on this machine.
#
# Env: STRATA (default <repo>/target/release/strata), BENCH_DIR (default
# /var/tmp/strata-bench/roundtrip). Run as root; runs in a private mount namespace.
set -euo pipefail
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
N=20000 THREADS="1 2 4"
ORIG_ARGS=("$@")
while [ $# -gt 0 ]; do
  case $1 in
    -n) N=$2; shift ;;
    --threads) THREADS=$2; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || { echo "roundtrip.sh: must run as root" >&2; exit 1; }
if [ -z "${ROUNDTRIP_IN_NS:-}" ]; then
  ROUNDTRIP_IN_NS=1 exec unshare -m --propagation private -- "$0" "${ORIG_ARGS[@]}"
fi
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STRATA=${STRATA:-$REPO/target/release/strata}
D=${BENCH_DIR:-/var/tmp/strata-bench/roundtrip}
rm -rf "$D"; mkdir -p "$D"/{l1,l2,up,wk,mnt}
echo "lower data" > "$D/l2/file"; mkdir "$D/l1/dir"
trap 'umount "$D/mnt" 2>/dev/null || true; rm -rf "$D"' EXIT
calls() {
  python3 - "$1" "$N" <<'PY'
import os, sys, time
path, n = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_RDONLY)
best = None
for _ in range(5):
    t = time.perf_counter()
    for _ in range(n):
        try:
            os.getxattr(fd, "user.strata-roundtrip-missing")
        except OSError:
            pass
    dt = (time.perf_counter() - t) / n * 1e6
    best = dt if best is None else min(best, dt)
print(f"{best:.1f}")
PY
}
fresh() { rm -rf "$D/up" "$D/wk"; mkdir "$D/up" "$D/wk"; }
OPTS="lowerdir=$D/l1:$D/l2,upperdir=$D/up,workdir=$D/wk"
printf '%-24s %s\n' subject "us/request"
if [ "$(cat /sys/module/fuse/parameters/enable_uring 2> /dev/null)" = Y ]; then
  fresh; "$STRATA" overlay -o "$OPTS" "$D/mnt"
  printf '%-24s %s\n' "strata io_uring" "$(calls "$D/mnt/file")"
  umount "$D/mnt"
else
  echo "(no strata io_uring row: the kernel's enable_uring is off, see scripts/enable-io-uring.sh)"
fi
for t in $THREADS; do
  fresh; STRATA_NO_IO_URING=1 "$STRATA" overlay --threads "$t" -o "$OPTS" "$D/mnt"
  printf '%-24s %s\n' "strata /dev/fuse -t $t" "$(calls "$D/mnt/file")"
  umount "$D/mnt"
done
if command -v fuse-overlayfs > /dev/null; then
  fresh; fuse-overlayfs -o "$OPTS" "$D/mnt" 2> /dev/null
  printf '%-24s %s\n' fuse-overlayfs "$(calls "$D/mnt/file")"
  umount "$D/mnt"
fi
fresh; mount -t overlay -o "$OPTS" none "$D/mnt"
printf '%-24s %s\n' "kernel overlayfs" "$(calls "$D/mnt/file")"
umount "$D/mnt"
