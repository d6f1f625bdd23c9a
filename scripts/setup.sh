#!/usr/bin/env bash
# scripts/setup.sh — the README's first command, on a fresh Debian 12 machine, as root:
#   1. installs the Debian packages (scripts/install-deps.sh) and checks for cargo; turns on
#      the kernel's FUSE over io_uring where it has it (scripts/enable-io-uring.sh);
#   2. builds strata (cargo build --release --locked) and installs it as /usr/local/bin/strata;
#   3. builds the default busybox image locally (scripts/default-image.sh, no registry) and
#      imports it as busybox:latest unless the store already has that tag;
#   4. runs the main job (main_job, at the end of this file), which ends by running a container.
# Works from any directory. The store is strata's default (--root / STRATA_ROOT).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH=$HOME/.cargo/bin:$PATH
fi

step() { printf '\n==> %s\n' "$*"; }

step "install dependencies"
bash scripts/install-deps.sh
bash scripts/enable-io-uring.sh

step "build strata (release)"
if [ -f Cargo.lock ]; then
  cargo build --release --locked
else
  cargo build --release
fi
install -m 0755 target/release/strata /usr/local/bin/strata
# As strata-overlay, the binary is the mount program of `mount -t fuse.strata-overlay`.
ln -sf strata /usr/local/bin/strata-overlay
STRATA=/usr/local/bin/strata
echo "installed $STRATA ($("$STRATA" --version))"

step "default image busybox:latest"
bash scripts/default-image.sh target/default-image.tar
existing=$("$STRATA" images -q busybox:latest)
if [ -z "$existing" ]; then
  "$STRATA" import -c 'CMD ["/bin/sh"]' \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -m 'default image: busybox-static from Debian' target/default-image.tar busybox:latest
else
  echo "busybox:latest is already in the store"
fi

# ---------------------------------------------------------------------------------------
# THE MAIN JOB: the one place that says what `bash scripts/setup.sh` finally runs.
main_job() {
  "$STRATA" images
  # The image's layers as one read-only union mount (strata's own FUSE server).
  local mnt
  mnt=$("$STRATA" mount busybox:latest)
  echo "busybox:latest is mounted at $mnt:"
  ls "$mnt"
  grep " $mnt " /proc/self/mounts
  "$STRATA" umount busybox:latest
  # Last: a container of the default image, on its own union mount (image layers + its upper),
  # in new namespaces; it prints its root mount (strata's FUSE union) and its root directory.
  echo "strata run --rm busybox:latest ...:"
  "$STRATA" run --rm busybox:latest sh -c \
    'echo "root mount: $(head -1 /proc/self/mountinfo)"; echo "pid $$ on $(hostname)"; ls /'
}

step "main job"
main_job
