#!/usr/bin/env bash
# bench/import.sh [-n ROUNDS] [SIZE_MB]
#
# Import benchmark (issue #2): how long `strata import` of a large rootfs tarball takes next to
# the floor for the same work done by standard tools: `tar -xf` (extract) followed by
# `sha256sum` (digest) of the same file. Both an uncompressed tar and its .tar.gz are measured;
# for the .tar.gz the baseline is `tar -xzf` + `sha256sum` of the .gz.
#
# The input (built once, cached in $BENCH_DIR/data-<SIZE_MB>M/): a tar of real files, a slice of
# /usr/bin, /usr/lib and /usr/share (the same fraction of each, whole copies under copyN/ when
# SIZE_MB exceeds them), SIZE_MB MiB of file data (default 1000), owners 0:0, fixed mtimes,
# plus rootfs.tar.gz (pigz -6 if installed, else gzip -6).
#
# One run interleaves the samples: each round times, for each format, strata and the baseline
# (alternating which goes first), on a fresh empty store / an empty directory (removed and
# recreated before each sample, untimed), after `sync` (untimed). Page cache is not dropped;
# the inputs are read once before the first round. Each sample records the command's wall time
# and the time including a `sync` right after it (strata fsyncs its blobs; tar does not).
#
# Prints the medians and the ratio strata / baseline per format, and writes every sample to
# $BENCH_DIR/results-<date>.csv.
#
# Env: STRATA (default: <repo>/target/release/strata), BENCH_DIR (default
# /var/tmp/strata-bench/import), KEEP=1 keeps the last store and extracted tree.
set -euo pipefail

usage() {
  cat <<EOF
usage: bench/import.sh [-n ROUNDS] [SIZE_MB]
  SIZE_MB   MiB of file data in the input tarball (default 1000)
  -n N      rounds of samples (default 5)
env: STRATA=path/to/strata, BENCH_DIR=/var/tmp/strata-bench/import, KEEP=1
EOF
}

ROUNDS=5
while getopts ':n:h' opt; do
  case $opt in
    n) ROUNDS=$OPTARG ;;
    h) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
SIZE_MB=${1:-1000}
[ $# -le 1 ] || { usage >&2; exit 2; }
case $ROUNDS in '' | *[!0-9]* | 0) echo "import.sh: -n needs a positive number" >&2; exit 2 ;; esac
case $SIZE_MB in '' | *[!0-9]* | 0) echo "import.sh: SIZE_MB must be a positive number" >&2; exit 2 ;; esac

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STRATA=${STRATA:-$REPO/target/release/strata}
if [ ! -x "$STRATA" ]; then
  echo "import.sh: no strata binary at $STRATA (cargo build --release, or set STRATA)" >&2
  exit 1
fi
STRATA=$(cd "$(dirname "$STRATA")" && pwd)/$(basename "$STRATA")
BENCH_DIR=${BENCH_DIR:-/var/tmp/strata-bench/import}
DATA=$BENCH_DIR/data-${SIZE_MB}M
SCRATCH=$BENCH_DIR/run
mkdir -p "$BENCH_DIR"

log() { printf '== %s\n' "$*" >&2; }

# ------------------------------------------------------------------------- the input, once
TAROPTS=(--format=posix "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime"
  --mtime=@1700000000 --owner=0 --group=0 --numeric-owner --no-recursion)

build_data() {
  local tmp=$DATA.tmp
  rm -rf "$tmp"
  mkdir -p "$tmp/empty"
  trap 'rm -rf "$DATA.tmp"' EXIT
  log "building the input: $SIZE_MB MiB of files from /usr/{bin,lib,share} -> $DATA (once)"
  # type, size, path (relative to /) in path order (a directory before its contents), usr first;
  # names with control characters are skipped
  (printf 'd\t0\tusr\n'; cd / && find usr/bin usr/lib usr/share -xdev -path '*[[:cntrl:]]*' -prune -o \
    \( -type f -o -type d -o -type l \) -printf '%y\t%s\t%p\n' | LC_ALL=C sort -t "$(printf '\t')" -k3,3) \
    > "$tmp/all.list"
  local all
  all=$(awk -F'\t' '$1 == "f" {s += $2} END {printf "%.0f", s}' "$tmp/all.list")
  [ "$all" -gt 0 ] || { echo "import.sh: found no files under /usr" >&2; exit 1; }

  local remaining=$((SIZE_MB * 1048576)) k=1 list prefix
  while [ "$remaining" -gt 0 ]; do
    list=$tmp/copy$k.list
    if [ "$remaining" -ge "$all" ]; then
      cut -f3 "$tmp/all.list" > "$list"
      remaining=$((remaining - all))
    else
      # the same fraction of each of bin, lib, share: files (and symlinks) in path order while
      # they fit that tree's share, each with the directories above it
      awk -F'\t' -v want="$remaining" -v all="$all" '
        function parents(path,   n, c, i, d) {
          n = split(path, c, "/"); d = c[1]
          for (i = 2; i < n; i++) { d = d "/" c[i]; if (!(d in done)) { done[d] = 1; print d } }
        }
        NR == FNR { if ($1 == "f") { split($3, p, "/"); tot[p[2]] += $2 }; next }
        $3 == "usr" { done["usr"] = 1; print "usr"; next }
        $1 == "d" { next }
        { split($3, p, "/"); r = p[2]
          if (!(r in lim)) lim[r] = tot[r] * want / all
          if (used[r] >= lim[r]) next
          if ($1 == "f") { if (used[r] + $2 > lim[r]) next; used[r] += $2 }
          parents($3); print $3 }' "$tmp/all.list" "$tmp/all.list" > "$list"
      remaining=0
    fi
    if [ "$k" -eq 1 ]; then
      tar "${TAROPTS[@]}" -C / --verbatim-files-from -T "$list" -cf "$tmp/rootfs.tar"
    else
      prefix=copy$k
      mkdir -m 0755 "$tmp/empty/$prefix"
      tar "${TAROPTS[@]}" -C "$tmp/empty" -rf "$tmp/rootfs.tar" "$prefix"
      tar "${TAROPTS[@]}" -C / --verbatim-files-from -T "$list" --transform "s,^,$prefix/,S" \
        -rf "$tmp/rootfs.tar"
    fi
    k=$((k + 1))
  done

  local gz=gzip
  command -v pigz >/dev/null 2>&1 && gz=pigz
  log "compressing with $gz -6"
  "$gz" -6 -n -c "$tmp/rootfs.tar" > "$tmp/rootfs.tar.gz"
  {
    echo "size_mb=$SIZE_MB"
    echo "entries=$(cat "$tmp"/copy*.list | wc -l)"
    echo "copies=$((k - 1))"
    echo "compressor=$gz -6"
    echo "tar_bytes=$(stat -c %s "$tmp/rootfs.tar")"
    echo "gz_bytes=$(stat -c %s "$tmp/rootfs.tar.gz")"
  } > "$tmp/info.txt"
  rm -rf "$tmp/empty" "$tmp"/*.list
  rm -rf "$DATA"
  mv "$tmp" "$DATA"
  trap - EXIT
}

exec 9>"$BENCH_DIR/.lock"
if ! flock -n 9; then
  log "waiting for another bench/import.sh run ($BENCH_DIR/.lock)"
  flock 9
fi
[ -f "$DATA/info.txt" ] || build_data
TAR=$DATA/rootfs.tar
TGZ=$DATA/rootfs.tar.gz
tar_bytes=$(stat -c %s "$TAR")
tgz_bytes=$(stat -c %s "$TGZ")

# ------------------------------------------------------------------------- samples
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", b - a}'; }

rm -rf "$SCRATCH"
mkdir -p "$SCRATCH"
cleanup() { [ "${KEEP:-0}" = 1 ] || rm -rf "$SCRATCH/store" "$SCRATCH/x"; }
trap cleanup EXIT
LOGF=$SCRATCH/strata.log
: > "$LOGF"

STAMP=$(date +%Y%m%d-%H%M%S)
CSV=$BENCH_DIR/results-$STAMP.csv
REV=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ "$REV" != unknown ] && [ -n "$(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  REV=$REV-dirty
fi
echo "date,rev,size_mb,format,input_bytes,subject,round,seconds,seconds_with_sync" > "$CSV"

# sample SUBJECT FORMAT FILE ROUND: one timed sample, appended to the CSV
sample() {
  local subject=$1 format=$2 file=$3 round=$4 t0 t1 t2
  rm -rf "$SCRATCH/store" "$SCRATCH/x"
  mkdir -p "$SCRATCH/store" "$SCRATCH/x"
  sync
  case $subject in
    strata)
      t0=$(now)
      if ! "$STRATA" --root "$SCRATCH/store" import "$file" bench:latest >>"$LOGF" 2>&1; then
        echo "import.sh: strata import $file failed; its output:" >&2
        tail -n 20 "$LOGF" >&2
        exit 1
      fi
      t1=$(now)
      ;;
    baseline)
      local x=-xf
      [ "$format" = tar.gz ] && x=-xzf
      t0=$(now)
      tar "$x" "$file" -C "$SCRATCH/x"
      sha256sum "$file" > /dev/null
      t1=$(now)
      ;;
  esac
  sync
  t2=$(now)
  local s ss size
  s=$(elapsed "$t0" "$t1")
  ss=$(elapsed "$t0" "$t2")
  size=$(stat -c %s "$file")
  echo "$STAMP,$REV,$SIZE_MB,$format,$size,$subject,$round,$s,$ss" >> "$CSV"
  printf '   round %d  %-6s  %-8s  %8.3f s  (%.3f s with sync)\n' "$round" "$format" "$subject" "$s" "$ss"
  if [ "$subject" = strata ] && [ "$round" = 1 ]; then
    # untimed sanity check: the import made the tag
    if [ -z "$("$STRATA" --root "$SCRATCH/store" images -q bench:latest 2>>"$LOGF")" ]; then
      echo "import.sh: warning: 'strata images -q bench:latest' shows nothing after the import" >&2
    fi
  fi
}

pressure() { [ -r /proc/pressure/cpu ] && sed -n 's/^some //p' /proc/pressure/cpu || echo n/a; }

echo "strata import benchmark: $STRATA (rev $REV), $ROUNDS rounds"
echo "input: $TAR ($tar_bytes B), $TGZ ($tgz_bytes B)"
echo "scratch: $SCRATCH; cpu pressure before: $(pressure)"
log "warming the inputs (cat > /dev/null)"
cat "$TAR" "$TGZ" > /dev/null

for round in $(seq 1 "$ROUNDS"); do
  for format in tar tar.gz; do
    file=$TAR
    [ "$format" = tar.gz ] && file=$TGZ
    if [ $((round % 2)) = 1 ]; then
      sample strata "$format" "$file" "$round"
      sample baseline "$format" "$file" "$round"
    else
      sample baseline "$format" "$file" "$round"
      sample strata "$format" "$file" "$round"
    fi
  done
done
echo "cpu pressure after: $(pressure)"

# ------------------------------------------------------------------------- report
echo
echo "medians of $ROUNDS rounds (baseline: tar -x[z]f + sha256sum of the same file; ratio: strata / baseline)"
awk -F, '
  NR == 1 { next }
  { k = $4 SUBSEP $6; n[k]++; t[k, n[k]] = $8; w[k, n[k]] = $9; bytes[$4] = $5 }
  function median(arr, k, cnt,   i, j, v, tmp) {
    for (i = 1; i <= cnt; i++) v[i] = arr[k, i] + 0
    for (i = 2; i <= cnt; i++) { tmp = v[i]; for (j = i - 1; j >= 1 && v[j] > tmp; j--) v[j + 1] = v[j]; v[j + 1] = tmp }
    return cnt % 2 ? v[(cnt + 1) / 2] : (v[cnt / 2] + v[cnt / 2 + 1]) / 2
  }
  END {
    printf "%-7s %10s %10s %10s %7s   %12s %12s %7s\n", "format", "input MB", "strata s", "baseline s", "ratio", "strata+sync", "base+sync", "ratio"
    split("tar tar.gz", fmts, " ")
    for (f = 1; f <= 2; f++) {
      fm = fmts[f]; s = fm SUBSEP "strata"; b = fm SUBSEP "baseline"
      if (!(s in n) || !(b in n)) continue
      ms = median(t, s, n[s]); mb = median(t, b, n[b]); ws = median(w, s, n[s]); wb = median(w, b, n[b])
      printf "%-7s %10.0f %10.3f %10.3f %7.2f   %12.3f %12.3f %7.2f\n", fm, bytes[fm] / 1e6, ms, mb, (mb > 0 ? ms / mb : 0), ws, wb, (wb > 0 ? ws / wb : 0)
    }
  }' "$CSV"
echo
echo "samples: $CSV"
