#!/usr/bin/env bash
# scripts/test.sh — the README's second command: the whole test suite, as root.
#   1. Debian packages (scripts/install-deps.sh); FUSE over io_uring on (scripts/enable-io-uring.sh:
#      the FUSE tests then run over the ring; tests/fuse_features.rs also covers /dev/fuse);
#   2. the shared busybox test images (make-busybox-images.sh, built once, reused after);
#   3. cargo fmt --check, cargo clippy -D warnings, cargo test (release).
# Exits non-zero at the first failing step.
#
# Env (exported for the tests):
#   STRATA_SHARED        the shared folder (default: ../shared beside the repository)
#   STRATA_FIXTURES      its fixtures folder ($STRATA_SHARED/fixtures)
#   STRATA_FIXTURES_OUT  where the busybox images are built (default target/fixtures/busybox-images)
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

step "cargo test (release)"
cargo test --release "${LOCKED[@]}" -- --test-threads=2

step "all steps passed"
