#!/usr/bin/env bash
# scripts/test.sh — the README's second command: the whole test suite, as root.
#   1. Debian packages (scripts/install-deps.sh); FUSE over io_uring on (scripts/enable-io-uring.sh:
#      the FUSE tests then run over the ring; tests/fuse_features.rs also covers /dev/fuse);
#   2. the shared busybox test images (make-busybox-images.sh, built once, reused after);
#   3. cargo fmt --check, cargo clippy -D warnings, cargo test (release) under a watchdog that
#      reports what hangs and fails the run after STRATA_TEST_LIMIT seconds (default 2700).
# Exits non-zero at the first failing step.
#
# Env (exported for the tests):
#   STRATA_SHARED        the shared folder (default: ../shared beside the repository)
#   STRATA_FIXTURES      its fixtures folder ($STRATA_SHARED/fixtures)
#   STRATA_FIXTURES_OUT  where the busybox images are built (default target/fixtures/busybox-images)
#   STRATA_TEST_LIMIT    seconds cargo test may take before the watchdog stops it (default 2700)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH=$HOME/.cargo/bin:$PATH
fi

SHARED=${STRATA_SHARED:-$REPO/../shared}
if [ ! -d "$SHARED/fixtures" ]; then
  echo "test.sh: no fixtures folder at $SHARED/fixtures (set STRATA_SHARED to the shared folder)" >&2
  exit 1
fi
SHARED=$(cd "$SHARED" && pwd)
FIXDIR=${STRATA_FIXTURES_OUT:-$REPO/target/fixtures/busybox-images}
mkdir -p "$FIXDIR"
FIXDIR=$(cd "$FIXDIR" && pwd)
export STRATA_SHARED=$SHARED
export STRATA_FIXTURES=$SHARED/fixtures
export STRATA_FIXTURES_OUT=$FIXDIR

LOCKED=()
[ -f Cargo.lock ] && LOCKED=(--locked)

START=$SECONDS
step() { printf '\n==> [%4ds] %s\n' "$((SECONDS - START))" "$*"; }

step "install dependencies"
bash scripts/install-deps.sh
bash scripts/enable-io-uring.sh

step "busybox test images -> $FIXDIR"
bash "$STRATA_FIXTURES/make-busybox-images.sh" "$FIXDIR"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (release, all targets, -D warnings)"
cargo clippy --release --all-targets "${LOCKED[@]}" -- -D warnings

# A test that hangs (a FUSE request nobody answers, say) must not eat CI's whole time limit
# in silence: after TEST_LIMIT seconds the watchdog prints what is stuck (processes, kernel
# stacks of those in D state, FUSE mounts, the kernel log), kills the servers and fails.
TEST_LIMIT=${STRATA_TEST_LIMIT:-2700}
watchdog() {
  local pid=$1 waited=0
  while kill -0 "$pid" 2>/dev/null; do
    sleep 5
    waited=$((waited + 5))
    [ "$waited" -lt "$TEST_LIMIT" ] && continue
    echo "test.sh: the tests still run after ${TEST_LIMIT} s; what is stuck:" >&2
    ps -eo pid,ppid,stat,etimes,wchan:32,args --sort=start_time | awk '$1 != 2 && $2 != 2' >&2 || true
    for t in /proc/[0-9]*/task/[0-9]*; do
      [ "$(awk '{print $3}' "$t/stat" 2>/dev/null)" = D ] || continue
      echo "== $t ($(cat "$t/comm" 2>/dev/null)) kernel stack:" >&2
      cat "$t/stack" >&2 2>/dev/null || true
    done
    grep ' fuse' /proc/mounts >&2 || true
    dmesg 2>/dev/null | tail -n 40 >&2 || true
    # Stopped strata servers are let go and all killed, and the connections of strata's FUSE
    # mounts (source strata...; the connection is the mount's device minor) aborted, so that
    # waiting unmounts and requests end. Other FUSE mounts are left alone.
    pkill -CONT -x strata 2>/dev/null || true
    pkill -KILL -x strata 2>/dev/null || true
    mountpoint -q /sys/fs/fuse/connections || mount -t fusectl none /sys/fs/fuse/connections 2>/dev/null || true
    awk '{ for (i = 7; i < NF; i++) if ($i == "-") { if ($(i + 1) ~ /^fuse/ && $(i + 2) ~ /^strata/) { split($3, d, ":"); print d[2] } break } }' \
      /proc/self/mountinfo | sort -u | while read -r minor; do
      echo 1 >"/sys/fs/fuse/connections/$minor/abort" 2>/dev/null || true
    done
    sleep 5
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    return 0
  done
}

step "cargo test (release; watchdog after ${TEST_LIMIT} s)"
set +e
setsid cargo test --release "${LOCKED[@]}" -- --test-threads=2 &
TESTS=$!
trap 'kill -TERM -- "-$TESTS" 2>/dev/null' INT TERM
watchdog "$TESTS" &
WATCHDOG=$!
wait "$TESTS"
STATUS=$?
kill "$WATCHDOG" 2>/dev/null
wait "$WATCHDOG" 2>/dev/null
trap - INT TERM
set -e
[ "$STATUS" -eq 0 ] || { echo "test.sh: cargo test failed (status $STATUS)" >&2; exit "$STATUS"; }

step "all steps passed"
