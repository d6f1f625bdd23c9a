#!/usr/bin/env bash
# bench/union.sh [run.sh options] [SUBJECT ...]
#
# Union-filesystem benchmark: strata next to kernel overlayfs, fuse-overlayfs, unionfs-fuse and a
# plain directory, all in one run of the shared harness (../shared/bench/run.sh, see its README).
# Builds the fixture first if it is missing (../shared/bench/make-fixture.sh, ~4.5 GB, ~4.5 min),
# then runs the harness with strata added as a subject (foreground mount, so the harness waits
# for the daemon). Every argument is passed to run.sh as is: --quick, --workloads LIST,
# --results DIR, --add SPEC (fuse-overlayfs2, overlay-volatile, ...), subject names.
#
# Env: STRATA (default <repo>/target/release/strata), FIXTURE (default
# /var/tmp/strata-bench/fixture), BENCH (default <repo>/../shared/bench), STRATA_ARGS (extra
# options for `strata overlay`, e.g. "--threads 4" or "--log-level debug").
# Run as root.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=${BENCH:-$REPO/../shared/bench}
STRATA=${STRATA:-$REPO/target/release/strata}
FIXTURE=${FIXTURE:-/var/tmp/strata-bench/fixture}
STRATA_ARGS=${STRATA_ARGS:-}

case ${1:-} in
  -h | --help)
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    echo "run.sh options:"
    "$BENCH/run.sh" --help | sed 's/^/  /'
    exit 0 ;;
esac
[ "$(id -u)" = 0 ] || { echo "union.sh: must run as root" >&2; exit 1; }
[ -x "$BENCH/run.sh" ] || { echo "union.sh: no harness at $BENCH/run.sh (set BENCH)" >&2; exit 1; }
if [ ! -x "$STRATA" ]; then
  echo "union.sh: no strata binary at $STRATA (cargo build --release, or set STRATA)" >&2
  exit 1
fi
STRATA=$(cd "$(dirname "$STRATA")" && pwd)/$(basename "$STRATA")
BENCH=$(cd "$BENCH" && pwd)

# --fixture / --results given to run.sh override ours.
results=""
prev=""
for a in "$@"; do
  [ "$prev" = --results ] && results=$a
  [ "$prev" = --fixture ] && FIXTURE=$a
  prev=$a
done

# The fixture: build it once (make-fixture.sh resumes an interrupted build stage by stage).
if [ ! -d "$FIXTURE/layers" ] || [ ! -d "$FIXTURE/merged" ] || [ ! -f "$FIXTURE/tar/usr.tar" ]; then
  echo "union.sh: no fixture at $FIXTURE, building it (about 4.5 min, 4.5 GB)"
  "$BENCH/make-fixture.sh" "$FIXTURE"
fi

# Results: run.sh's default place (a dated folder) unless --results was given; the name is
# chosen here so that it can be printed at the end.
extra=()
if [ -z "$results" ]; then
  results=/var/tmp/strata-bench/results/$(date +%Y%m%d-%H%M%S)-strata
  extra=(--results "$results")
fi

spec="strata=$STRATA overlay -f $STRATA_ARGS -o lowerdir={LOWERDIRS},upperdir={UPPER},workdir={WORK} {MNT}"
echo "union.sh: strata $("$STRATA" --version 2>/dev/null | head -1) ($STRATA)"
echo "union.sh: $BENCH/run.sh ${extra[*]} --fixture $FIXTURE --add '$spec' $*"
rc=0
"$BENCH/run.sh" "${extra[@]}" --fixture "$FIXTURE" --add "$spec" "$@" || rc=$?
rev=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$REPO" diff --quiet HEAD 2>/dev/null || rev=$rev-dirty
[ -d "$results" ] && echo "strata: $STRATA (commit $rev)" >> "$results/meta.txt"
echo
echo "union.sh: results in $results (tables.txt, tables.md, ratios.csv, samples.csv, meta.txt, logs/)"
exit $rc
