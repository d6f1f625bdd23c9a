#!/usr/bin/env bash
# bench/run.sh [-n RUNS] [IMAGE]
#
# Container start-up latency: the median wall time of `strata run --rm IMAGE true` (a new
# container: index row, upper and work directories, a FUSE server for the union, mount, pid,
# uts and ipc namespaces, /proc, /dev, /sys, pivot_root, exec, teardown and removal) next to
# bubblewrap running `true` on the same root filesystem extracted to a plain directory (new
# mount, pid, uts and ipc namespaces, /proc and /dev, no union, no state) and, where it runs,
# `podman run --rm` of the same tarball. Prints each median and the ratios to bwrap.
#
# IMAGE defaults to busybox:latest in a private store built from scripts/default-image.sh.
# Env: STRATA (default <repo>/target/release/strata), BENCH_DIR (default
# /var/tmp/strata-bench/run), STRATA_ROOT (a store that has IMAGE; default BENCH_DIR/store).
# Run as root.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STRATA=${STRATA:-$REPO/target/release/strata}
BENCH_DIR=${BENCH_DIR:-/var/tmp/strata-bench/run}
RUNS=50
case ${1:-} in
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
  -n) RUNS=$2; shift 2 ;;
esac
IMAGE=${1:-busybox:latest}
[ "$(id -u)" = 0 ] || { echo "run.sh: must run as root" >&2; exit 1; }
[ -x "$STRATA" ] || { echo "run.sh: $STRATA not found (cargo build --release)" >&2; exit 1; }

mkdir -p "$BENCH_DIR"
export STRATA_ROOT=${STRATA_ROOT:-$BENCH_DIR/store}
TAR=$BENCH_DIR/busybox.tar
if [ ! -f "$TAR" ]; then
  bash "$REPO/scripts/default-image.sh" "$TAR"
fi
if [ -z "$("$STRATA" images -q "$IMAGE")" ]; then
  "$STRATA" import -c 'CMD ["/bin/sh"]' \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' "$TAR" "$IMAGE" >/dev/null
fi
ROOTFS=$BENCH_DIR/rootfs
if [ ! -d "$ROOTFS" ]; then
  mkdir -p "$ROOTFS.tmp" && tar -xf "$TAR" -C "$ROOTFS.tmp" && mv "$ROOTFS.tmp" "$ROOTFS"
fi

# Subjects are timed in turns (strata, bwrap, podman; then the next round), so that a change
# of the machine's load hits them alike; 5 untimed rounds first. Times in microseconds.
NAMES=()
declare -A CMDS
add() { NAMES+=("$1"); CMDS[$1]=$2; : > "$BENCH_DIR/$1.times"; }
timed() {
  local t0 t1
  t0=$(date +%s%N)
  eval "${CMDS[$1]}" >/dev/null 2>&1
  t1=$(date +%s%N)
  echo $(((t1 - t0) / 1000)) >> "$BENCH_DIR/$1.times"
}
median_ms() {
  sort -n "$BENCH_DIR/$1.times" | awk '{a[NR]=$1} END {m = (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2; printf "%.2f\n", m / 1000}'
}

echo "strata run --rm $IMAGE true vs bwrap vs podman; $RUNS rounds, median wall time"
echo "kernel $(uname -r), $(nproc) CPUs, $("$STRATA" --version), load $(cut -d' ' -f1-3 /proc/loadavg)"
q() { printf '%q ' "$@"; }
add strata "$(q "$STRATA" run --rm "$IMAGE" true)"
"$STRATA" run --rm "$IMAGE" true || { echo "strata run failed" >&2; exit 1; }
if command -v bwrap >/dev/null 2>&1; then
  add bwrap "$(q bwrap --bind "$ROOTFS" / --proc /proc --dev /dev --unshare-pid --unshare-ipc --unshare-uts --die-with-parent /bin/true)"
else
  echo "bwrap: not installed (Debian package bubblewrap)"
fi
if command -v podman >/dev/null 2>&1; then
  if { podman image exists strata-bench-busybox 2>/dev/null ||
    podman import "$TAR" strata-bench-busybox >/dev/null 2>&1; } &&
    podman run --rm strata-bench-busybox /bin/true >/dev/null 2>&1; then
    add podman "$(q podman run --rm strata-bench-busybox /bin/true)"
  else
    echo "podman: installed, but 'podman run' does not work here"
  fi
else
  echo "podman: not installed"
fi
for ((i = 0; i < 5; i++)); do
  for n in "${NAMES[@]}"; do eval "${CMDS[$n]}" >/dev/null 2>&1 || true; done
done
for ((i = 0; i < RUNS; i++)); do
  for n in "${NAMES[@]}"; do timed "$n"; done
done
strata_ms=$(median_ms strata)
printf '%-34s %8s ms\n' "strata run --rm" "$strata_ms"
left=$("$STRATA" ps -aq | wc -l)
[ "$left" = 0 ] || echo "warning: $left containers left in $STRATA_ROOT" >&2
bwrap_ms=
podman_ms=
if [ -n "${CMDS[bwrap]:-}" ]; then
  bwrap_ms=$(median_ms bwrap)
  printf '%-34s %8s ms\n' "bwrap (same rootfs, plain dir)" "$bwrap_ms"
fi
if [ -n "${CMDS[podman]:-}" ]; then
  podman_ms=$(median_ms podman)
  printf '%-34s %8s ms\n' "podman run --rm" "$podman_ms"
fi

if [ -n "$bwrap_ms" ]; then
  awk -v s="$strata_ms" -v b="$bwrap_ms" 'BEGIN {printf "ratio strata/bwrap:  %.2fx (goal: within 3x)\n", s / b}'
fi
if [ -n "$podman_ms" ]; then
  awk -v s="$strata_ms" -v p="$podman_ms" 'BEGIN {printf "ratio strata/podman: %.2fx\n", s / p}'
fi
