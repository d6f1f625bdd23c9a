#!/usr/bin/env bash
# bench/mount64.sh [-n RUNS] [-l LAYERS] [-f FILES] [-k LOOKUPS] [--no-kernel]
#
# Deep unions: what mounting a LAYERS-layer union (default 64) costs, and what a lookup costs when
# the name lives in the bottom layer (every directory on the path merges all layers, so a lookup
# has to miss in LAYERS-1 layers before it finds the name), next to a 1-layer union of that same
# bottom layer. Kernel overlayfs is measured beside strata as the reference (--no-kernel skips it).
#
# Fixture (built once, in $BENCH_DIR/L<LAYERS>-f<FILES>-k<LOOKUPS>/): lower layers 0 (top) ..
# LAYERS-1 (bottom). Every layer has the directories d00..d99 and FILES small files spread over
# them (names unique to the layer) plus one directory of its own; the bottom layer also has
# LOOKUPS files b<N> in d00..d99: the looked-up paths. Upper and work are fresh empty
# directories for every mount.
#
# Each run, for each subject (strata-64, strata-1, overlay-64, overlay-1, interleaved):
#   mount ms    wall time of `strata overlay -o lowerdir=...,upperdir=...,workdir=... MNT` in
#               background mode (it returns once the mount is ready), or of `mount -t overlay`;
#   lookup ms   lstat of the LOOKUPS bottom-layer paths on that fresh mount (one perl process,
#               Time::HiRes; the layers' own inodes/dentries are warm, the union's are not);
#   again ms    the same lstats a second time on the same mount (kernel dentry cache warm);
# then unmount (and wait for the strata server to exit). Medians over RUNS (default 7) runs.
#
# Env: STRATA (default <repo>/target/release/strata), BENCH_DIR (default
# /var/tmp/strata-bench/mount64), STRATA_ARGS (extra options for `strata overlay`).
# Run as root; runs in a private mount namespace.
set -euo pipefail
export LC_ALL=C

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
RUNS=7 LAYERS=64 FILES=300 LOOKUPS=10000 KERNEL=1
ORIG_ARGS=("$@")
while [ $# -gt 0 ]; do
  case $1 in
    -n) RUNS=$2; shift ;;
    -l) LAYERS=$2; shift ;;
    -f) FILES=$2; shift ;;
    -k) LOOKUPS=$2; shift ;;
    --no-kernel) KERNEL=0 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
  shift
done
for v in RUNS LAYERS FILES LOOKUPS; do
  case ${!v} in '' | *[!0-9]* | 0) echo "mount64.sh: $v must be a positive number" >&2; exit 2 ;; esac
done
[ "$LAYERS" -ge 2 ] || { echo "mount64.sh: -l needs at least 2 layers" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "mount64.sh: must run as root" >&2; exit 1; }
# A private mount namespace: our mounts are invisible elsewhere (a namespace created by someone
# else while a FUSE mount of ours exists would keep a copy of it, and its server alive).
if [ -z "${MOUNT64_IN_NS:-}" ]; then
  MOUNT64_IN_NS=1 exec unshare -m --propagation private -- "$0" "${ORIG_ARGS[@]}"
fi

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STRATA=${STRATA:-$REPO/target/release/strata}
[ -x "$STRATA" ] || { echo "mount64.sh: no strata binary at $STRATA (cargo build --release, or set STRATA)" >&2; exit 1; }
STRATA=$(cd "$(dirname "$STRATA")" && pwd)/$(basename "$STRATA")
STRATA_ARGS=${STRATA_ARGS:-}
BENCH_DIR=${BENCH_DIR:-/var/tmp/strata-bench/mount64}
FIX=$BENCH_DIR/L$LAYERS-f$FILES-k$LOOKUPS
RUN=$BENCH_DIR/run
mkdir -p "$BENCH_DIR"

# ------------------------------------------------------------ fixture
if [ ! -f "$FIX/done" ]; then
  echo "[$(date +%T)] building the fixture in $FIX"
  rm -rf "$FIX"; mkdir -p "$FIX/layers"
  perl - "$FIX/layers" "$LAYERS" "$FILES" "$LOOKUPS" <<'EOF'
use strict; use warnings;
my ($root, $layers, $files, $lookups) = @ARGV;
sub put { my ($p, $c) = @_; open(my $f, '>', $p) or die "$p: $!"; print $f $c; close($f) or die "$p: $!"; }
for my $l (0 .. $layers - 1) {
  my $d = "$root/$l";
  mkdir $d or die "$d: $!";
  mkdir sprintf("%s/d%02d", $d, $_) or die $! for 0 .. 99;
  mkdir "$d/only-$l" or die $!;
  for my $i (0 .. $files - 1) { put(sprintf("%s/d%02d/l%d-%d", $d, $i % 100, $l, $i), "layer $l file $i\n"); }
  put("$d/only-$l/$_", "layer $l\n") for 0 .. 9;
}
my $b = "$root/" . ($layers - 1);
for my $i (0 .. $lookups - 1) { put(sprintf("%s/d%02d/b%d", $b, $i % 100, $i), "bottom $i\n"); }
EOF
  ( cd "$FIX/layers/$((LAYERS - 1))" && for i in $(seq 0 $((LOOKUPS - 1))); do printf 'd%02d/b%d\n' $((i % 100)) "$i"; done ) > "$FIX/paths.txt"
  touch "$FIX/done"
fi
LOWER64="" LOWER1=$FIX/layers/$((LAYERS - 1))
for l in $(seq 0 $((LAYERS - 1))); do LOWER64+="${LOWER64:+:}$FIX/layers/$l"; done

# ------------------------------------------------------------ helpers
now_us() { echo "${EPOCHREALTIME/./}"; }
server_pid() {  # the strata server serving mount point $1 (its command line names it last)
  local p
  for p in /proc/[0-9]*; do
    [ -r "$p/cmdline" ] || continue
    if tr '\0' '\n' < "$p/cmdline" 2>/dev/null | tail -1 | grep -qxF "$1" &&
       tr '\0' '\n' < "$p/cmdline" 2>/dev/null | head -1 | grep -qxF "$STRATA"; then
      echo "${p#/proc/}"; return 0
    fi
  done
  return 0
}
is_mounted() { awk -v m="$1" '$5 == m {f = 1} END {exit !f}' /proc/self/mountinfo; }
MNT=$RUN/mnt
cleanup() {
  local i
  for i in 1 2 3; do is_mounted "$MNT" || break; umount "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null || true; done
  rm -rf --one-file-system "$RUN/upper" "$RUN/work"
}
trap cleanup EXIT
trap 'echo interrupted >&2; exit 130' INT TERM
mkdir -p "$MNT"

# lstat every path of paths.txt under $1; prints "seconds missing"
STATPL='use strict; use Time::HiRes qw(time);
my ($dir, $list) = @ARGV; open(my $f, "<", $list) or die "$list: $!"; chomp(my @p = <$f>);
chdir $dir or die "$dir: $!"; my $miss = 0;
my $t = time; for (@p) { lstat($_) or $miss++ } my $dt = time - $t;
printf "%.6f %d\n", $dt, $miss;'

# one sample of subject $1 (strata|overlay) with lowerdirs $2 -> "mount_ms lookup_ms again_ms"
sample() {
  local kind=$1 lowers=$2 t0 t1 out1 out2 pid="" i rc=0
  rm -rf --one-file-system "$RUN/upper" "$RUN/work"; mkdir -p "$RUN/upper" "$RUN/work"
  # keep the layers' own metadata cached (this VM reclaims page cache idle for ~60 s)
  find "$FIX/layers" > /dev/null
  t0=$(now_us)
  if [ "$kind" = strata ]; then
    # shellcheck disable=SC2086
    "$STRATA" overlay $STRATA_ARGS -o "lowerdir=$lowers,upperdir=$RUN/upper,workdir=$RUN/work" "$MNT" || rc=$?
  else
    mount -t overlay overlay -o "lowerdir=$lowers,upperdir=$RUN/upper,workdir=$RUN/work" "$MNT" || rc=$?
  fi
  t1=$(now_us)
  [ $rc = 0 ] && is_mounted "$MNT" || { echo "mount64.sh: $kind mount failed" >&2; exit 1; }
  [ "$kind" = strata ] && pid=$(server_pid "$MNT")
  out1=$(perl -e "$STATPL" "$MNT" "$FIX/paths.txt")
  out2=$(perl -e "$STATPL" "$MNT" "$FIX/paths.txt")
  if [ "${out1#* }" != 0 ] || [ "${out2#* }" != 0 ]; then
    echo "mount64.sh: $kind: ${out1#* } / ${out2#* } paths not found through the union" >&2; exit 1
  fi
  umount "$MNT"
  if [ -n "$pid" ]; then
    for i in $(seq 100); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
    if [ -d "/proc/$pid" ]; then echo "mount64.sh: server $pid still alive 10 s after unmount, TERM" >&2; kill "$pid" 2>/dev/null || true; fi
  fi
  awk -v a="$t0" -v b="$t1" -v l="${out1% *}" -v g="${out2% *}" 'BEGIN{printf "%.2f %.2f %.2f\n", (b-a)/1000, l*1000, g*1000}'
}

SUBJECTS=("strata $LAYERS" "strata 1")
[ "$KERNEL" = 1 ] && SUBJECTS+=("overlay $LAYERS" "overlay 1")
CSV=$BENCH_DIR/results-$(date +%Y%m%d-%H%M%S).csv
rev=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$REPO" diff --quiet HEAD 2>/dev/null || rev=$rev-dirty
echo "date,rev,subject,layers,run,mount_ms,lookup_ms,again_ms" > "$CSV"
echo "[$(date +%T)] $RUNS runs; $LAYERS layers x $FILES files, $LOOKUPS lookups in the bottom layer; strata $rev"
echo "[$(date +%T)] cpu pressure before: $(head -1 /proc/pressure/cpu 2>/dev/null)"
# one untimed round first (binaries, the layers' dentries)
for s in "${SUBJECTS[@]}"; do
  set -- $s; if [ "$2" = 1 ]; then sample "$1" "$LOWER1" > /dev/null; else sample "$1" "$LOWER64" > /dev/null; fi
done
for r in $(seq "$RUNS"); do
  for s in "${SUBJECTS[@]}"; do
    set -- $s
    if [ "$2" = 1 ]; then v=$(sample "$1" "$LOWER1"); else v=$(sample "$1" "$LOWER64"); fi
    set -- $s $v
    echo "  run $r  $1-$2: mount $3 ms, lookup $4 ms, again $5 ms"
    echo "$(date -u +%FT%TZ),$rev,$1,$2,$r,$3,$4,$5" >> "$CSV"
  done
done
echo "[$(date +%T)] cpu pressure after: $(head -1 /proc/pressure/cpu 2>/dev/null)"
echo
perl -e '
use strict;
my ($csv, $k) = @ARGV; my %v;
open(my $f, "<", $csv) or die; <$f>;
while (<$f>) { chomp; my @c = split /,/; push @{$v{"$c[2] $c[3]"}{$_}}, $c[5 + $_] for 0 .. 2; }
sub med { my @s = sort { $a <=> $b } @_; my $n = @s; $n % 2 ? $s[$n / 2] : ($s[$n / 2 - 1] + $s[$n / 2]) / 2 }
my @subj = sort { my ($an, $al) = split / /, $a; my ($bn, $bl) = split / /, $b; $bn cmp $an || $bl <=> $al } keys %v;
my %m; for my $s (@subj) { $m{$s}[$_] = med(@{$v{$s}{$_}}) for 0 .. 2 }
printf "%-9s %6s %10s %12s %11s %12s\n", "subject", "layers", "mount ms", "lookup ms", "us/lookup", "again ms";
for my $s (@subj) { my ($n, $l) = split / /, $s;
  printf "%-9s %6d %10.1f %12.1f %11.1f %12.1f\n", $n, $l, $m{$s}[0], $m{$s}[1], $m{$s}[1] * 1000 / $k, $m{$s}[2]; }
print "\nratios, deep / 1 layer (medians):\n";
for my $n (qw(strata overlay)) {
  my @d = grep { /^$n / && !/ 1$/ } @subj; my ($one) = grep { $_ eq "$n 1" } @subj;
  next unless @d && $one;
  printf "  %-8s mount %.2fx, lookup %.2fx, again %.2fx\n", $n, map { $m{$one}[$_] > 0 ? $m{$d[0]}[$_] / $m{$one}[$_] : 0 } 0 .. 2;
}
if ($m{"overlay 1"}) {
  print "strata / overlay (medians):\n";
  for my $s (grep { /^strata / } @subj) { (my $o = $s) =~ s/^strata/overlay/; next unless $m{$o};
    printf "  %-10s mount %.2fx, lookup %.2fx, again %.2fx\n", $s, map { $m{$o}[$_] > 0 ? $m{$s}[$_] / $m{$o}[$_] : 0 } 0 .. 2; }
}
' "$CSV" "$LOOKUPS"
echo
echo "samples: $CSV"
