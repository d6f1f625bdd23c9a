#!/usr/bin/env bash
# scripts/default-image.sh OUT.tar
#
# Builds strata's small default image as a plain rootfs tarball (for `strata import`), from the
# static busybox of Debian's busybox-static package and nothing else: no registry, no network.
#
#   /bin/busybox            the static binary (0755)
#   /bin/<applet>           relative symlink -> busybox for every applet of `busybox --list`
#   /etc/passwd, /etc/group root and nobody
#   /etc/strata-release     one line: what this image is and which busybox it carries
#   /dev /proc /sys /home /var /usr/bin   empty directories (0755)
#   /tmp (1777), /root (0700)
#
# Every entry is owned by 0:0 with mtime 1700000000 (2023-11-14T22:13:20Z), and the tar is
# written with a fixed entry order and no per-run PAX records, so the same busybox-static
# version gives a bit-identical OUT.tar (same sha256) on every run.
# Env: BUSYBOX=/path/to/static/busybox (default /bin/busybox).
set -euo pipefail

usage="usage: default-image.sh OUT.tar"
OUT=${1:?$usage}
[ $# -eq 1 ] || { echo "$usage" >&2; exit 2; }
BUSYBOX=${BUSYBOX:-/bin/busybox}
MTIME=1700000000

if [ ! -x "$BUSYBOX" ]; then
  echo "default-image: $BUSYBOX not found; install Debian's busybox-static (scripts/install-deps.sh)" >&2
  exit 1
fi
if ldd "$BUSYBOX" >/dev/null 2>&1; then
  echo "default-image: $BUSYBOX is dynamically linked; the image needs the static one (Debian package busybox-static)" >&2
  exit 1
fi

umask 022
WORK=$(mktemp -d "${TMPDIR:-/tmp}/strata-default-image.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
ROOT=$WORK/rootfs
mkdir -m 0755 "$ROOT"

for d in bin dev etc home proc sys usr usr/bin var; do
  mkdir -m 0755 "$ROOT/$d"
done
mkdir -m 1777 "$ROOT/tmp"
mkdir -m 0700 "$ROOT/root"

install -m 0755 "$BUSYBOX" "$ROOT/bin/busybox"
n=0
while IFS= read -r applet; do
  case $applet in
    '' | busybox | */* | .*) continue ;;
  esac
  ln -s busybox "$ROOT/bin/$applet"
  n=$((n + 1))
done < <("$BUSYBOX" --list | LC_ALL=C sort -u)
if [ "$n" -eq 0 ]; then
  echo "default-image: '$BUSYBOX --list' printed no applets" >&2
  exit 1
fi

printf '%s\n' \
  'root:x:0:0:root:/root:/bin/sh' \
  'nobody:x:65534:65534:nobody:/nonexistent:/bin/false' > "$ROOT/etc/passwd"
printf '%s\n' \
  'root:x:0:' \
  'nogroup:x:65534:' > "$ROOT/etc/group"

# Which busybox: the Debian package version when dpkg knows the file, else busybox's banner.
version=$(dpkg-query -W -f='${Version}' busybox-static 2>/dev/null || true)
if [ -z "$version" ] || [ "$BUSYBOX" != /bin/busybox ]; then
  version=$("$BUSYBOX" 2>&1 | head -n1 | sed -n 's/^BusyBox \(v[^ ]*\).*/\1/p')
fi
printf 'strata default image: busybox-static %s, %d applets\n' "${version:-unknown}" "$n" \
  > "$ROOT/etc/strata-release"
chmod 0644 "$ROOT/etc/passwd" "$ROOT/etc/group" "$ROOT/etc/strata-release"

mkdir -p "$(dirname "$OUT")"
tmp_out=$(mktemp "$(dirname "$OUT")/.$(basename "$OUT").XXXXXX")
trap 'rm -rf "$WORK" "$tmp_out"' EXIT
LC_ALL=C tar --sort=name --mtime="@$MTIME" --owner=0 --group=0 --numeric-owner \
  --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
  -C "$ROOT" -cf "$tmp_out" .
chmod 0644 "$tmp_out"
mv -f "$tmp_out" "$OUT"
trap 'rm -rf "$WORK"' EXIT

echo "default-image: $OUT (busybox + $n applet links, sha256 $(sha256sum "$OUT" | cut -d' ' -f1))" >&2
