#!/usr/bin/env bash
# scripts/conformance.sh — conformance and integrity suites for strata's union mount, with kernel
# overlayfs (index=off,redirect_dir=off,metacopy=off,xino=off) as the reference. Needs root.
#
#   bash scripts/conformance.sh pjdfstest|fsx|workload|all     (default: all)
#
# pjdfstest  pjdfstest 0.2.2 (the Rust rewrite) on a strata mount and on a kernel overlayfs mount
#            of the same lower directory; prints both counts and the tests that do not pass on
#            strata but pass on the kernel. Fails if there is any such test that is not listed in
#            tests/conformance/pjdfstest-known.txt ("NAME # reason", one a line).
# fsx        fsx 0.3.2, FSX_OPS (100000) operations with every operation it has on Linux (read,
#            write, mmap read/write, msync invalidate, truncate, fsync, fdatasync, posix_fallocate,
#            punch hole, sendfile, posix_fadvise, copy_file_range, close/reopen), on a new upper
#            file and on a lower file that was copied up (after checking that the copy-up kept
#            its 1 MiB of random data), on two mounts: file data through FUSE passthrough (root's
#            default) and through strata's own I/O (STRATA_NO_PASSTHROUGH=1); all four at once,
#            each under `timeout`. Fails on any miscompare, error or time-out.
# workload   a Debian bookworm minbase rootfs (debootstrap, cached in $CACHE/rootfs) as the lower
#            layer: dpkg, tar, a C program, useradd, a package built and installed with dpkg,
#            copy-ups, renames, rm -rf of a lower directory, in a chroot of the strata mount; then
#            the same upper+lower mounted by kernel overlayfs must list the same tree (treels.py),
#            except on the paths listed in tests/conformance/workload-known.txt ("PATH # reason").
#
# Tools: pjdfstest and fsx are installed with `cargo install --locked` into
# ${CARGO_HOME:-$HOME/.cargo}/bin when that version is not there yet.
#
# Env:
#   STRATA_BIN                 the strata binary (default target/release/strata, built if missing)
#   STRATA_SHARED              the shared folder (default ../shared beside the repository)
#   STRATA_CONFORMANCE_CACHE   rootfs cache and run folders r.* (default /var/tmp/strata-conformance)
#   STRATA_CONFORMANCE_LOGS    full logs (default target/conformance)
#   FSX_OPS (100000), FSX_SEED (fixed), FSX_TIMEOUT (s, 600), PJDFSTEST_TIMEOUT (s, 300),
#   WORKLOAD_TIMEOUT (s per step, 300), DEBIAN_MIRROR (default: the one apt uses)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PART=${1:-all}
case "$PART" in
  pjdfstest | fsx | workload | all) ;;
  *)
    echo "usage: $0 pjdfstest|fsx|workload|all" >&2
    exit 2
    ;;
esac

PJDFSTEST_VERSION=0.2.2
FSX_VERSION=0.3.2
CARGO_ROOT=${CARGO_HOME:-$HOME/.cargo}
CACHE=${STRATA_CONFORMANCE_CACHE:-/var/tmp/strata-conformance}
LOGS=${STRATA_CONFORMANCE_LOGS:-$REPO/target/conformance}
KNOWN=$REPO/tests/conformance/pjdfstest-known.txt
WORKLOAD_KNOWN=$REPO/tests/conformance/workload-known.txt
FSX_OPS=${FSX_OPS:-100000}
FSX_SEED=${FSX_SEED:-20260601}
FSX_TIMEOUT=${FSX_TIMEOUT:-600}
PJDFSTEST_TIMEOUT=${PJDFSTEST_TIMEOUT:-300}
WORKLOAD_TIMEOUT=${WORKLOAD_TIMEOUT:-300}
OVL_OPTS=index=off,redirect_dir=off,metacopy=off,xino=off
export PATH=$CARGO_ROOT/bin:$PATH
export LC_ALL=C

log() { printf '[%4ds] %s\n' "$SECONDS" "$*"; }
die() {
  printf 'conformance: FAILED: %s\n' "$*" >&2
  exit 1
}

if [ "$(id -u)" != 0 ]; then
  die "needs root (mounts kernel overlayfs and FUSE, chroot, pjdfstest switches users)"
fi

# ---------------------------------------------------------------------------------------------
# Cleanup: every mount is unmounted (lazily, newest first), every server we started is stopped,
# every run folder removed, even on failure.

MOUNTS=()  # mount points, in mount order
SERVERS=() # pids of `strata overlay -f` servers
BGPIDS=()  # other background jobs
RUNDIRS=()
STRATA_ENV=() # env(1) arguments for the next mount_strata

cleanup() {
  local rc=$? i p n
  trap - EXIT INT TERM
  for p in "${BGPIDS[@]}"; do
    kill -TERM "$p" 2>/dev/null || true
  done
  # Nothing here touches a mounted file system (a hung server would hang it): /proc/mounts,
  # and umount -c (no path canonicalization) -l.
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
    if grep -q " ${MOUNTS[i]} " /proc/mounts; then
      umount -c -l "${MOUNTS[i]}" 2>/dev/null || true
    fi
  done
  for p in "${SERVERS[@]}"; do
    for ((n = 0; n < 50; n++)); do
      kill -0 "$p" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$p" 2>/dev/null || true
  done
  for p in "${RUNDIRS[@]}"; do
    rm -rf --one-file-system "$p" 2>/dev/null || true
  done
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A run folder of its own (upper, work, mount points) on the local disk, with our pid in it;
# folders of runs whose process is gone (killed before their trap ran) are cleared first.
new_rundir() {
  local d m pid
  mkdir -p "$CACHE"
  for d in "$CACHE"/r.*; do
    [ -d "$d" ] || continue
    pid=$(cat "$d/pid" 2>/dev/null || echo 0)
    if [ "$pid" -gt 0 ] && kill -0 "$pid" 2>/dev/null; then continue; fi
    awk -v p="$d/" 'index($2, p) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
      umount -c -l "$m" 2>/dev/null || true
    done
    rm -rf --one-file-system "$d" 2>/dev/null || true
  done
  # Short paths: pjdfstest binds sockets 55 characters below its path (the limit is 107).
  d=$(mktemp -d "$CACHE/r.XXXXXX")
  chmod 0755 "$d" # pjdfstest's other users must reach the mount points
  echo $$ >"$d/pid"
  RUNDIRS+=("$d")
  RUNDIR=$d
}

# mount_strata LOWER UPPER WORK MNT LOG: `strata overlay -f` in the background, until mounted.
mount_strata() {
  local lower=$1 upper=$2 work=$3 mnt=$4 logf=$5 pid n
  mkdir -p "$upper" "$work" "$mnt"
  env "${STRATA_ENV[@]}" "$STRATA" overlay -f -o "lowerdir=$lower,upperdir=$upper,workdir=$work" "$mnt" \
    </dev/null >"$logf" 2>&1 &
  pid=$!
  SERVERS+=("$pid")
  MOUNTS+=("$mnt")
  for ((n = 0; n < 200; n++)); do
    if grep -q " $mnt fuse" /proc/mounts; then
      STRATA_PID=$pid
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  cat "$logf" >&2
  die "strata did not mount $mnt"
}

# umount_strata MNT: unmounts; the server must still have been alive and must exit 0.
umount_strata() {
  local mnt=$1 pid=$STRATA_PID rc=0 s=$SECONDS u
  kill -0 "$pid" 2>/dev/null || die "the strata server of $mnt died while serving (see its log)"
  umount "$mnt" || die "umount $mnt failed"
  u=$((SECONDS - s))
  wait "$pid" || rc=$?
  log "unmounted $mnt (umount $u s, server exit $((SECONDS - s - u)) s)"
  [ "$rc" = 0 ] || die "the strata server of $mnt exited with status $rc after umount"
}

mount_kernel() {
  local lower=$1 upper=$2 work=$3 mnt=$4
  mkdir -p "$upper" "$work" "$mnt"
  MOUNTS+=("$mnt")
  mount -t overlay overlay -o "lowerdir=$lower,upperdir=$upper,workdir=$work,$OVL_OPTS" "$mnt" ||
    die "kernel overlayfs mount of $mnt failed"
}

# ---------------------------------------------------------------------------------------------
# Tools

# ensure_crate NAME VERSION: installs NAME VERSION with cargo unless `NAME --version` says so.
ensure_crate() {
  local name=$1 version=$2 have
  have=$("$CARGO_ROOT/bin/$name" --version 2>/dev/null | awk '{print $2}' || true)
  if [ "$have" = "$version" ]; then
    return 0
  fi
  log "installing $name $version (cargo install --locked; a few minutes, once)"
  cargo install "$name" --version "$version" --locked --root "$CARGO_ROOT" --quiet ||
    die "cargo install $name $version failed"
  have=$("$CARGO_ROOT/bin/$name" --version 2>/dev/null | awk '{print $2}' || true)
  [ "$have" = "$version" ] || die "$name --version says '$have' after installing $version"
}

ensure_commands() {
  local c missing=()
  for c in "$@"; do
    command -v "$c" >/dev/null 2>&1 || missing+=("$c")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "missing ${missing[*]}: running scripts/install-deps.sh"
    bash "$REPO/scripts/install-deps.sh"
    for c in "${missing[@]}"; do
      command -v "$c" >/dev/null 2>&1 || die "$c is not installed"
    done
  fi
}

ensure_strata() {
  STRATA=${STRATA_BIN:-$REPO/target/release/strata}
  if [ ! -x "$STRATA" ]; then
    log "building strata (cargo build --release)"
    (cd "$REPO" && cargo build --release --quiet) || die "cargo build --release failed"
  fi
  [ -x "$STRATA" ] || die "no strata binary at $STRATA"
}

# ---------------------------------------------------------------------------------------------
# (b) pjdfstest

# A lower layer with a few files, a directory (pjdfstest runs inside it, so it is copied up),
# a symlink and a hard link.
make_small_lower() {
  local l=$1
  mkdir -p "$l/dir/sub"
  echo "a lower file" >"$l/file"
  printf 'x%.0s' {1..5000} >"$l/dir/big"
  echo "sub" >"$l/dir/sub/f"
  ln -s file "$l/link"
  ln "$l/file" "$l/hardlink"
  chmod 0755 "$l/dir"
}

# parse_pjdfstest OUT: "name status" (ok, failed, skipped, xfail, xpass), sorted.
parse_pjdfstest() {
  sed -E -n \
    -e 's/^([^[:space:]]+)[[:space:]]+ok$/\1 ok/p' \
    -e 's/^([^[:space:]]+)[[:space:]]+FAILED$/\1 failed/p' \
    -e 's/^([^[:space:]]+)[[:space:]]+skipped$/\1 skipped/p' \
    -e 's/^([^[:space:]]+)[[:space:]]+failed as expected$/\1 xfail/p' \
    -e 's/^([^[:space:]]+)[[:space:]]+PASSED UNEXPECTEDLY$/\1 xpass/p' \
    "$1" | sort -u
}

# run_pjdfstest RUNDIR PATH ALLOW_REMOUNT OUT [PATTERN]
run_pjdfstest() {
  local d=$1 path=$2 remount=$3 out=$4 rc=0
  shift 4
  (cd "$d" && NO_COLOR=1 RUST_LIB_BACKTRACE=0 RUST_BACKTRACE=0 timeout -k 10 "$PJDFSTEST_TIMEOUT" \
    pjdfstest -c "$d/pjdfstest-remount-$remount.toml" -p "$path" -s "$d/otherfs" "$@") >"$out" 2>&1 || rc=$?
  if [ "$rc" = 124 ]; then
    die "pjdfstest timed out after ${PJDFSTEST_TIMEOUT}s on $path (log: $out)"
  fi
  grep -q '^Summary:' "$out" || die "pjdfstest did not finish on $path (status $rc; log: $out)"
}

counts() {
  awk '{n[$2]++} END {printf "passed %d, failed %d, skipped %d (%d tests)", n["ok"], n["failed"] + n["xpass"], n["skipped"] + n["xfail"], NR}' "$1"
}

part_pjdfstest() {
  local t0=$SECONDS d fs mnt nogroup known regress stale
  ensure_crate pjdfstest "$PJDFSTEST_VERSION"
  ensure_strata
  if ! getent passwd tests >/dev/null; then
    log "adding the user and group 'tests' that pjdfstest switches to"
    useradd --system --user-group --no-create-home --home-dir / --shell /usr/sbin/nologin tests
  fi
  nogroup=$(id -gn nobody)
  new_rundir
  d=$RUNDIR
  mkdir -p "$LOGS/pjdfstest"
  make_small_lower "$d/lower"
  # -s: a second file system for the EXDEV tests (the run folder, on the local disk).
  mkdir -p "$d/otherfs"
  # Two runs on each mount: the EROFS tests alone (they remount the mount point read-only
  # with mount(8) and back, which fails while any file is open for writing, and
  # posix_fallocate::affected_only_create_flags leaks two such descriptors), then all the
  # others (EROFS ones skipped).
  local remount
  for remount in false true; do
    cat >"$d/pjdfstest-remount-$remount.toml" <<EOF
[features]
posix_fallocate = {}
utime_now = {}
utimensat = {}
rename_ctime = {}

[settings]
naptime = 0.01
allow_remount = $remount

[dummy_auth]
entries = [["nobody", "$nogroup"], ["tests", "tests"]]
EOF
  done
  mount_kernel "$d/lower" "$d/ku" "$d/kw" "$d/kernel"
  mount_strata "$d/lower" "$d/su" "$d/sw" "$d/strata" "$LOGS/pjdfstest/strata-server.log"
  for fs in kernel strata; do
    mnt=$d/$fs
    log "pjdfstest on $fs ($mnt/dir)"
    run_pjdfstest "$d" "$mnt/dir" true "$LOGS/pjdfstest/$fs-erofs.out" erofs
    run_pjdfstest "$d" "$mnt/dir" false "$LOGS/pjdfstest/$fs.out"
    {
      parse_pjdfstest "$LOGS/pjdfstest/$fs-erofs.out"
      parse_pjdfstest "$LOGS/pjdfstest/$fs.out" | grep -v '::erofs_'
    } | sort >"$LOGS/pjdfstest/$fs.results"
  done
  umount_strata "$d/strata"

  log "pjdfstest kernel overlayfs: $(counts "$LOGS/pjdfstest/kernel.results")"
  log "pjdfstest strata:           $(counts "$LOGS/pjdfstest/strata.results")"
  [ -s "$LOGS/pjdfstest/strata.results" ] || die "no pjdfstest results parsed for strata"

  # Passing on the kernel, not passing on strata (failed, skipped or missing).
  join -a 1 -e missing -o 0,1.2,2.2 "$LOGS/pjdfstest/kernel.results" "$LOGS/pjdfstest/strata.results" |
    awk '$2 == "ok" && $3 != "ok" {print $1, $3}' >"$LOGS/pjdfstest/regressions"
  join "$LOGS/pjdfstest/kernel.results" "$LOGS/pjdfstest/strata.results" |
    awk '$2 != "ok" && $3 == "ok" {print $1}' >"$LOGS/pjdfstest/strata-only-passes"
  known=$(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$KNOWN" 2>/dev/null | grep -v '^$' | sort -u || true)
  regress=$(awk '{print $1}' "$LOGS/pjdfstest/regressions" | grep -vxF -f <(printf '%s\n' "$known") || true)
  stale=$(printf '%s\n' "$known" | grep -v '^$' | grep -vxF -f <(awk '{print $1}' "$LOGS/pjdfstest/regressions") || true)

  if [ -s "$LOGS/pjdfstest/strata-only-passes" ]; then
    log "passing on strata but not on kernel overlayfs: $(wc -l <"$LOGS/pjdfstest/strata-only-passes")"
  fi
  if [ -s "$LOGS/pjdfstest/regressions" ]; then
    log "passing on kernel overlayfs but not on strata ([known]: in tests/conformance/pjdfstest-known.txt):"
    awk 'NR == FNR {k[$1] = 1; next} {print "    " $0 ($1 in k ? "  [known]" : "")}' \
      <(printf '%s\n' "$known") "$LOGS/pjdfstest/regressions"
  else
    log "no test passes on kernel overlayfs that does not pass on strata"
  fi
  if [ -n "$stale" ]; then
    log "allow-listed in tests/conformance/pjdfstest-known.txt but passing now (remove them):"
    printf '%s\n' "$stale" | sed 's/^/    /'
  fi
  log "pjdfstest part took $((SECONDS - t0)) s"
  if [ -n "$regress" ]; then
    local name
    for name in $regress; do
      echo "---- $name (strata):"
      cat "$LOGS/pjdfstest/strata-erofs.out" "$LOGS/pjdfstest/strata.out" |
        awk -v n="$name" '$1 == n {p = 1; next} p && /^[^[:space:]]/ {exit} p' | head -n 5
    done
    die "$(printf '%s\n' "$regress" | wc -l) pjdfstest test(s) pass on kernel overlayfs but not on strata (not in $KNOWN)"
  fi
}

# ---------------------------------------------------------------------------------------------
# (c) fsx

# fsx_conf FLEN FILE: every operation fsx 0.3.2 has on Linux. Sizes of at least 1 byte: fsx
# counts EINVAL from a 0-byte posix_fallocate as a failure of the file system.
fsx_conf() {
  cat >"$2" <<EOF
flen = $1
[opsize]
max = 65536
min = 1
[weights]
close_open = 2
read = 10
write = 10
mapread = 10
mapwrite = 10
invalidate = 2
truncate = 5
fsync = 1
fdatasync = 1
posix_fallocate = 5
punch_hole = 5
sendfile = 5
posix_fadvise = 2
copy_file_range = 5
EOF
}

# The copy-up integrity check: the lower file reads back identically through the mount (read
# and mmap, which also fills the page cache); a write in place (no O_TRUNC) copies it up, and
# the file then reads back as the lower data plus the write, through the open handle, a new one
# and mmap; a shared writable mmap of a second lower file copies that one up too. The lower
# files never change.
copyup_check() {
  python3 - "$@" <<'EOF'
import hashlib, mmap, os, sys
lower, mnt = sys.argv[1], sys.argv[2]

def fail(msg):
    print("copy-up check FAILED: " + msg)
    sys.exit(1)

def rd(p):
    with open(p, "rb") as f:
        return f.read()

orig = rd(os.path.join(lower, "random.bin"))
orig2 = rd(os.path.join(lower, "random2.bin"))
p, p2 = os.path.join(mnt, "random.bin"), os.path.join(mnt, "random2.bin")
if rd(p) != orig:
    fail("random.bin read through the mount differs from the lower file")
with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
    if m[:] != orig:
        fail("random.bin mmap-read through the mount differs from the lower file")
if rd(p2) != orig2:
    fail("random2.bin read through the mount differs from the lower file")

patch = b"strata-copy-up" * 300
off = 300001
exp = bytearray(orig)
exp[off:off + len(patch)] = patch
exp = bytes(exp)
fd = os.open(p, os.O_RDWR)
if os.pwrite(fd, patch, off) != len(patch):
    fail("short write")
st = os.fstat(fd)
if st.st_size != len(orig):
    fail(f"size after an in-place write is {st.st_size}, not {len(orig)}")
if os.pread(fd, len(exp), 0) != exp:
    fail("random.bin read back through the writing handle differs from lower data + write")
os.close(fd)
if rd(p) != exp:
    fail("random.bin read back through a new handle differs from lower data + write")
with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
    if m[:] != exp:
        fail("random.bin mmap-read after the copy-up differs from lower data + write")

exp2 = bytearray(orig2)
exp2[4096:8192] = b"\xa5" * 4096
with open(p2, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
    m[4096:8192] = b"\xa5" * 4096
    m.flush()
if rd(p2) != bytes(exp2):
    fail("random2.bin after a shared mmap write differs from lower data + write")

if rd(os.path.join(lower, "random.bin")) != orig or rd(os.path.join(lower, "random2.bin")) != orig2:
    fail("a lower file changed")
print("copy-up check passed: sha256 " + hashlib.sha256(exp).hexdigest()[:16])
EOF
}

part_fsx() {
  local t0=$SECONDS d mode mnt f rc failed=() jobs=() names=() i sums
  local -A spid
  ensure_crate fsx "$FSX_VERSION"
  ensure_strata
  ensure_commands python3 timeout
  new_rundir
  d=$RUNDIR
  mkdir -p "$LOGS/fsx" "$d/lower" "$d/artifacts"
  rm -f "$LOGS/fsx"/*
  head -c 1048576 /dev/urandom >"$d/lower/random.bin"
  head -c 262144 /dev/urandom >"$d/lower/random2.bin"
  fsx_conf 262144 "$d/fsx-new.toml"
  fsx_conf 1048576 "$d/fsx-copied-up.toml"

  # Two mounts of the same lower: file data through FUSE passthrough (what root gets by
  # default), and through strata's own read/write/fallocate/copy_file_range code.
  for mode in passthrough userspace; do
    mnt=$d/$mode
    if [ "$mode" = userspace ]; then
      STRATA_ENV=(STRATA_NO_PASSTHROUGH=1)
    else
      STRATA_ENV=(-u STRATA_NO_PASSTHROUGH)
    fi
    mount_strata "$d/lower" "$d/$mode-upper" "$d/$mode-work" "$mnt" "$LOGS/fsx/strata-$mode.log"
    STRATA_ENV=()
    spid[$mode]=$STRATA_PID
    log "copy-up check ($mode)"
    copyup_check "$d/lower" "$mnt" || die "copy-up integrity check ($mode)"
    [ -f "$d/$mode-upper/random.bin" ] || die "random.bin was written but is not in the upper directory ($mode)"
  done

  log "fsx: $FSX_OPS operations on a new upper file and on a copied-up lower file, on both mounts at once (seed $FSX_SEED)"
  for mode in passthrough userspace; do
    for f in new copied-up; do
      if [ "$f" = new ]; then
        set -- "$d/fsx-new.toml" "$d/$mode/fsx-new" "$FSX_SEED"
      else
        set -- "$d/fsx-copied-up.toml" "$d/$mode/random.bin" "$((FSX_SEED + 1))"
      fi
      mkdir -p "$d/artifacts/$mode-$f"
      (cd "$d/artifacts/$mode-$f" && exec timeout -k 10 "$FSX_TIMEOUT" fsx -N "$FSX_OPS" -S "$3" \
        -f "$1" -P "$d/artifacts/$mode-$f" "$2") >"$LOGS/fsx/$mode-$f.log" 2>&1 &
      jobs+=("$!")
      names+=("$mode-$f")
      BGPIDS+=("$!")
    done
  done
  for i in "${!jobs[@]}"; do
    rc=0
    wait "${jobs[i]}" || rc=$?
    log "fsx ${names[i]}: $(tail -n 1 "$LOGS/fsx/${names[i]}.log") (status $rc)"
    if [ "$rc" != 0 ]; then
      failed+=("${names[i]}")
      cp -a "$d/artifacts/${names[i]}/." "$LOGS/fsx/" 2>/dev/null || true
      echo "---- fsx ${names[i]} (last lines of $LOGS/fsx/${names[i]}.log):"
      grep -v '^\[ERROR fsx\] *[0-9]' "$LOGS/fsx/${names[i]}.log" | tail -n 15 || true
      if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then echo "(timed out after ${FSX_TIMEOUT}s: a hang?)"; fi
    fi
  done
  BGPIDS=()
  [ ${#failed[@]} = 0 ] || die "fsx failed: ${failed[*]} (logs and fsx's .fsxlog/.fsxgood files in $LOGS/fsx)"

  # What each mount shows is what reached its upper directory.
  for mode in passthrough userspace; do
    sums=$(cd "$d/$mode" && sha256sum fsx-new random.bin random2.bin)
    STRATA_PID=${spid[$mode]}
    umount_strata "$d/$mode"
    [ "$sums" = "$(cd "$d/$mode-upper" && sha256sum fsx-new random.bin random2.bin)" ] ||
      die "after umount the upper files differ from what the $mode mount showed"
  done
  log "fsx part took $((SECONDS - t0)) s"
}

# ---------------------------------------------------------------------------------------------
# (d) a container-like workload on a Debian rootfs

debian_mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then
    echo "$DEBIAN_MIRROR"
    return
  fi
  local m
  m=$(awk '/^URIs:/ {u = $2} /^Suites:/ && / bookworm( |$)/ && u {print u; exit}' \
    /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [ -n "$m" ] || m=$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' \
    /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
  echo "${m:-http://deb.debian.org/debian}"
}

ensure_rootfs() {
  ROOTFS=$CACHE/rootfs
  if [ -f "$CACHE/rootfs.done" ] && [ -x "$ROOTFS/usr/bin/dpkg" ]; then
    return 0
  fi
  local mirror
  mirror=$(debian_mirror)
  log "building the bookworm minbase rootfs with debootstrap from $mirror (once, ~1-3 min)"
  mkdir -p "$CACHE" "$LOGS/workload"
  rm -rf --one-file-system "$ROOTFS" "$CACHE/rootfs.tmp" "$CACHE/rootfs.done"
  if ! timeout 900 debootstrap --variant=minbase bookworm "$CACHE/rootfs.tmp" "$mirror" \
    >"$LOGS/workload/debootstrap.log" 2>&1; then
    tail -n 20 "$LOGS/workload/debootstrap.log" >&2
    rm -rf --one-file-system "$CACHE/rootfs.tmp"
    die "debootstrap --variant=minbase bookworm from $mirror failed (mirror unreachable?); log: $LOGS/workload/debootstrap.log"
  fi
  mv "$CACHE/rootfs.tmp" "$ROOTFS"
  date -u +%FT%TZ >"$CACHE/rootfs.done"
}

# in_chroot MNT SCRIPT: sh -c SCRIPT in a chroot of MNT, under timeout.
in_chroot() {
  local mnt=$1
  shift
  timeout -k 10 "$WORKLOAD_TIMEOUT" chroot "$mnt" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LC_ALL=C /bin/sh -euc "$1"
}

step() {
  local name=$1 s=$SECONDS
  shift
  printf '  %-44s' "$name"
  if "$@" >>"$LOGS/workload/steps.log" 2>&1; then
    printf 'ok (%ds)\n' "$((SECONDS - s))"
  else
    printf 'FAILED\n'
    tail -n 25 "$LOGS/workload/steps.log" >&2
    die "workload step '$name' failed (log: $LOGS/workload/steps.log)"
  fi
}

w_dpkg() {
  in_chroot "$1" 'dpkg -L coreutils | head; dpkg -L coreutils | grep -qx /bin/ls'
  # Every file of every package against its md5sum, read through the mount.
  # shellcheck disable=SC2016 # expanded by the chroot's shell
  in_chroot "$1" 'out=$(dpkg --verify); [ -z "$out" ] || { echo "$out"; exit 1; }'
}

w_tar() {
  in_chroot "$1" 'cd /usr/share && tar -cf /tmp/doc.tar doc && mkdir /tmp/unpack &&
    tar -C /tmp/unpack -xf /tmp/doc.tar && diff -r /usr/share/doc /tmp/unpack/doc &&
    gzip -9 /tmp/doc.tar && gzip -t /tmp/doc.tar.gz && tar -tzf /tmp/doc.tar.gz | wc -l'
}

w_cc() {
  local mnt=$1
  cat >"$mnt/tmp/hello.c" <<'EOF'
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(void) {
    const char *msg = "hello from a strata chroot\n";
    char buf[64] = {0};
    int fd = open("/tmp/hello.out.tmp", O_CREAT | O_TRUNC | O_WRONLY, 0644);
    if (fd < 0 || write(fd, msg, strlen(msg)) != (ssize_t)strlen(msg) || fsync(fd) || close(fd))
        return 1;
    if (rename("/tmp/hello.out.tmp", "/tmp/hello.out"))
        return 2;
    fd = open("/tmp/hello.out", O_RDONLY);
    if (fd < 0 || read(fd, buf, sizeof buf - 1) != (ssize_t)strlen(msg) || strcmp(buf, msg))
        return 3;
    fputs(buf, stdout);
    return 0;
}
EOF
  if [ -x "$mnt/usr/bin/gcc" ]; then
    in_chroot "$mnt" 'gcc -O2 -o /tmp/hello /tmp/hello.c'
  else
    gcc -O2 -o "$mnt/tmp/hello" "$mnt/tmp/hello.c"
  fi
  [ "$(in_chroot "$mnt" /tmp/hello)" = "hello from a strata chroot" ]
}

w_users() {
  in_chroot "$1" 'useradd -m -s /bin/sh strata-ci && id strata-ci && test -d /home/strata-ci &&
    echo "strata-ci:secret" | chpasswd && grep -q "^strata-ci:" /etc/shadow && passwd -S strata-ci'
}

w_dpkg_install() {
  in_chroot "$1" 'mkdir -p /tmp/pkg/DEBIAN /tmp/pkg/usr/share/strata-ci &&
    printf "Package: strata-ci\nVersion: 1.0\nArchitecture: all\nMaintainer: ci <ci@localhost>\nDescription: test\n" >/tmp/pkg/DEBIAN/control &&
    seq 1 20000 >/tmp/pkg/usr/share/strata-ci/numbers &&
    dpkg-deb --build --root-owner-group /tmp/pkg /tmp/strata-ci.deb &&
    dpkg -i /tmp/strata-ci.deb && dpkg -s strata-ci | grep -q "Status: install ok installed" &&
    dpkg --verify strata-ci && dpkg -r strata-ci && ! test -e /usr/share/strata-ci/numbers &&
    dpkg -i /tmp/strata-ci.deb && dpkg --purge tzdata && ! test -e /usr/share/zoneinfo/UTC'
}

w_edits() {
  # Copy-ups of data and of metadata only, a hard link to a lower file, renames of a lower
  # file and (EXDEV, then copied by mv) of a lower directory, rm -rf of a lower directory and a
  # new directory in its place (opaque), a deleted lower file.
  in_chroot "$1" 'echo "# strata" >>/etc/bash.bashrc && chmod 0700 /var/log/apt &&
    chown 1:1 /etc/hostname && touch -d @1000000000 /etc/debian_version &&
    ln /usr/bin/env /usr/local/bin/env-hardlink && mv /etc/issue /etc/issue.moved &&
    mv /usr/share/bash-completion /usr/share/bash-completion.moved &&
    rm -rf /usr/share/doc && mkdir /usr/share/doc && echo new >/usr/share/doc/README.strata &&
    rm /etc/motd && rm -rf /usr/share/locale/de && ln -sf /tmp /srv/tmp-link && mkfifo /srv/fifo'
  [ "$(ls "$1/usr/share/doc")" = README.strata ]
  [ ! -e "$1/usr/share/bash-completion" ]
}

# compare_trees KERNEL STRATA DIFF: the listings must be the same, except on the paths listed in
# tests/conformance/workload-known.txt ("PATH # reason", one a line).
compare_trees() {
  local k=$1 s=$2 out=$3 paths known unexpected stale
  if diff -u "$k" "$s" >"$out"; then
    return 0
  fi
  # The paths (first tab-separated field) of the lines that differ.
  paths=$(grep -E '^[-+]/' "$out" | cut -c2- | cut -f1 | sort -u)
  known=$(sed -e 's/[[:space:]]*#.*//' -e 's/[[:space:]]*$//' "$WORKLOAD_KNOWN" 2>/dev/null | grep -v '^$' | sort -u || true)
  unexpected=$(printf '%s\n' "$paths" | grep -v '^$' | grep -vxF -f <(printf '%s\n' "$known") || true)
  stale=$(printf '%s\n' "$known" | grep -v '^$' | grep -vxF -f <(printf '%s\n' "$paths") || true)
  if [ -n "$known" ] && [ -n "$paths" ]; then
    log "differences allowed by tests/conformance/workload-known.txt:"
    printf '%s\n' "$paths" | grep -xF -f <(printf '%s\n' "$known") | sed 's/^/    /' || true
  fi
  if [ -n "$stale" ]; then
    log "listed in tests/conformance/workload-known.txt but the same now (remove them):"
    printf '%s\n' "$stale" | sed 's/^/    /'
  fi
  if [ -n "$unexpected" ]; then
    grep -v '^ ' "$out" | head -n 40
    die "kernel overlayfs lists a different tree than strata showed: $(printf '%s\n' "$unexpected" | wc -l) path(s) ($out)"
  fi
}

w_files() {
  # Many small files: created, half renamed, a third removed (perl); ldconfig (a new
  # /etc/ld.so.cache renamed over the lower one); every file under /usr hashed and checked.
  cat >"$1/tmp/many.pl" <<'EOF'
mkdir("/var/tmp/many") or die "mkdir: $!";
for my $i (1 .. 3000) {
    open(my $f, ">", "/var/tmp/many/f$i") or die "create f$i: $!";
    print $f "x" x $i;
    close($f) or die "close f$i: $!";
}
for my $i (1 .. 3000) {
    if ($i % 2) { rename("/var/tmp/many/f$i", "/var/tmp/many/g$i") or die "rename f$i: $!" }
    elsif ($i % 3 == 0) { unlink("/var/tmp/many/f$i") or die "unlink f$i: $!" }
}
opendir(my $d, "/var/tmp/many") or die;
my $n = grep { !/^\./ } readdir($d);
die "$n entries, not 2500" unless $n == 2500;
EOF
  in_chroot "$1" 'perl /tmp/many.pl && ldconfig &&
    find /usr -xdev -type f -print0 | xargs -0 sha256sum >/tmp/usr.sha256 &&
    sha256sum --quiet -c /tmp/usr.sha256'
}

part_workload() {
  local t0=$SECONDS d mnt kmnt
  ensure_strata
  ensure_commands debootstrap python3 gcc chroot timeout
  local treels=${STRATA_SHARED:-$REPO/../shared}/fixtures/tools/treels.py
  [ -f "$treels" ] || treels=/work/shared/fixtures/tools/treels.py
  [ -f "$treels" ] || die "no treels.py (set STRATA_SHARED to the shared folder)"
  mkdir -p "$LOGS/workload"
  : >"$LOGS/workload/steps.log"
  ensure_rootfs
  new_rundir
  d=$RUNDIR
  mnt=$d/mnt
  mount_strata "$ROOTFS" "$d/upper" "$d/work" "$mnt" "$LOGS/workload/strata-server.log"
  MOUNTS+=("$mnt/proc")
  mount --bind /proc "$mnt/proc" || die "bind-mounting /proc into the chroot failed"
  log "workload in a chroot of the strata mount of $ROOTFS"
  step "dpkg -L coreutils; dpkg --verify" w_dpkg "$mnt"
  step "tar of /usr/share/doc, unpack, diff, gzip" w_tar "$mnt"
  step "C program (compile, run)" w_cc "$mnt"
  step "useradd, chpasswd" w_users "$mnt"
  step "dpkg-deb --build, dpkg -i, dpkg -r, --purge" w_dpkg_install "$mnt"
  step "many small files, ldconfig, sha256 of /usr" w_files "$mnt"
  step "copy-ups, renames, rm -rf /usr/share/doc" w_edits "$mnt"
  step "sync" in_chroot "$mnt" sync
  umount "$mnt/proc" || die "umount $mnt/proc failed"
  step "treels of the strata mount" sh -c "python3 '$treels' '$mnt' >'$LOGS/workload/strata.tree'"
  umount_strata "$mnt"

  kmnt=$d/kmnt
  mount_kernel "$ROOTFS" "$d/upper" "$d/work" "$kmnt"
  step "treels of the kernel overlayfs mount" sh -c "python3 '$treels' '$kmnt' >'$LOGS/workload/kernel.tree'"
  umount "$kmnt" || die "umount $kmnt failed"
  compare_trees "$LOGS/workload/kernel.tree" "$LOGS/workload/strata.tree" "$LOGS/workload/tree.diff"
  log "kernel overlayfs lists the same tree as strata showed ($(wc -l <"$LOGS/workload/kernel.tree") entries)"
  log "workload part took $((SECONDS - t0)) s"
}

# ---------------------------------------------------------------------------------------------

case "$PART" in
  pjdfstest) part_pjdfstest ;;
  fsx) part_fsx ;;
  workload) part_workload ;;
  all)
    part_pjdfstest
    part_fsx
    part_workload
    ;;
esac
log "conformance $PART: passed in $SECONDS s"
