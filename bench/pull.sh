#!/usr/bin/env bash
# bench/pull.sh [-n ROUNDS] [LAYERS] [MB_PER_LAYER]
#
# Pull benchmark (issue #5): `strata pull` of a multi-layer image from a registry on loopback,
# next to `skopeo copy docker://... dir:DIR` of the same image (download and verify every blob,
# write them to a directory). strata now does what skopeo does: it stores the blobs (each
# hashed as it streams, checked against its digest, fsynced) and records the image; layers are
# extracted on first use (mount, create, run), as containerd unpacks when a snapshot is needed.
#
# Because that moves the extraction to first use, a second line shows the cost where it went:
# "pull + first mount" (`strata pull`, then `strata mount IMAGE DIR` and `strata umount DIR`:
# every layer decompressed, its diff_id checked, extracted, indexed and synced) next to
# "skopeo copy + untar" (`skopeo copy ... dir:DIR`, then `tar -xzf` of each layer blob into
# one directory, bottom first: no digest check of the tar, no whiteouts, no fsync).
#
# The image (built once, cached in $BENCH_DIR/image-<LAYERS>x<MB>M/): an OCI layout made with
# umoci, LAYERS layers (default 4) of about MB_PER_LAYER MiB of real files each (default 40),
# slices of /usr/lib, /usr/share and /usr/bin, gzip layers as umoci writes them. It is pushed
# with skopeo to a docker-registry (../shared/fixtures/start-registry.sh) on 127.0.0.1, plain
# HTTP, storage under $BENCH_DIR, stopped at exit.
#
# Each round times the four subjects (in an order that changes every round) on an empty store
# / an empty directory (removed before each sample, untimed, then `sync`). Prints every sample,
# the medians and the ratios strata / skopeo (goal for the pull: at most 1.0), and writes the
# samples to $BENCH_DIR/results-<date>.csv.
#
# Env: STRATA (default <repo>/target/release/strata), BENCH_DIR (default
# /var/tmp/strata-bench/pull), PORT (default 45500), SHARED (default <repo>/../shared).
set -euo pipefail

usage() {
  cat <<EOF
usage: bench/pull.sh [-n ROUNDS] [LAYERS] [MB_PER_LAYER]
  LAYERS        layers of the image (default 4)
  MB_PER_LAYER  MiB of files per layer (default 40)
  -n N          rounds (default 5)
env: STRATA=path/to/strata BENCH_DIR=/var/tmp/strata-bench/pull PORT=45500 SHARED=../shared
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
LAYERS=${1:-4}
MB=${2:-40}
for v in "$ROUNDS" "$LAYERS" "$MB"; do
  case $v in '' | *[!0-9]* | 0) usage >&2; exit 2 ;; esac
done

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STRATA=${STRATA:-$REPO/target/release/strata}
[ -x "$STRATA" ] || { echo "pull.sh: no strata at $STRATA (cargo build --release)" >&2; exit 1; }
SHARED=${SHARED:-$REPO/../shared}
BENCH_DIR=${BENCH_DIR:-/var/tmp/strata-bench/pull}
PORT=${PORT:-45500}
IMG=$BENCH_DIR/image-${LAYERS}x${MB}M
RUN=$BENCH_DIR/run
REG=$BENCH_DIR/registry
mkdir -p "$BENCH_DIR"
"$SHARED/fixtures/tools/ensure-packages.sh" umoci=umoci skopeo=skopeo >/dev/null

# ---- the image: LAYERS umoci layers of real files
if [ ! -f "$IMG/.complete" ]; then
  echo "building $IMG ($LAYERS layers of ~$MB MiB)"
  rm -rf "$IMG"
  mkdir -p "$IMG"
  umoci init --layout "$IMG/oci"
  umoci new --image "$IMG/oci:bench"
  # Files in path order from the source trees, split into LAYERS groups of ~MB MiB.
  find /usr/lib /usr/share /usr/bin -xdev -type f -size -20M -printf '%s %p\n' 2>/dev/null \
    | sort -k2 > "$IMG/files.txt"
  limit=$((MB * 1024 * 1024))
  skip=0
  for ((i = 1; i <= LAYERS; i++)); do
    rm -rf "$IMG/bundle"
    umoci unpack --image "$IMG/oci:bench" "$IMG/bundle" >/dev/null
    dest="$IMG/bundle/rootfs/layer$i"
    mkdir -p "$dest"
    # Each layer takes the next slice of the file list.
    awk -v skip="$skip" -v lim="$limit" \
      'NR > skip { if (total < lim) { print $2; total += $1 } else exit }' \
      "$IMG/files.txt" > "$IMG/layer$i.txt"
    skip=$((skip + $(wc -l < "$IMG/layer$i.txt")))
    tar -cf - --files-from "$IMG/layer$i.txt" 2>/dev/null | tar -xf - -C "$dest"
    umoci repack --image "$IMG/oci:bench" "$IMG/bundle" >/dev/null
  done
  rm -rf "$IMG/bundle"
  umoci gc --layout "$IMG/oci"
  touch "$IMG/.complete"
fi

cleanup() {
  if [ -d "$RUN/mnt" ] && mountpoint -q "$RUN/mnt"; then
    "$STRATA" --root "$RUN/store" umount "$RUN/mnt" >/dev/null 2>&1 || umount -l "$RUN/mnt" || true
  fi
  "$SHARED/fixtures/stop-registry.sh" "$REG" >/dev/null 2>&1 || true
  rm -rf "$RUN"
}
trap cleanup EXIT
"$SHARED/fixtures/start-registry.sh" "$PORT" "$REG" >/dev/null
NAME=127.0.0.1:$PORT/bench/image:${LAYERS}x${MB}
skopeo --insecure-policy copy --quiet --preserve-digests --dest-tls-verify=false \
  "oci:$IMG/oci:bench" "docker://$NAME"
blob_bytes=$(du -sb "$IMG/oci/blobs" | cut -f1)
echo "image: $NAME, $LAYERS layers, $((blob_bytes / 1024 / 1024)) MiB of blobs"
# The layer blobs bottom first (what skopeo's dir: holds under these names), read untimed.
mapfile -t LAYER_FILES < <(python3 - "$IMG/oci" <<'PY'
import json, sys
layout = sys.argv[1]
blob = lambda d: f"{layout}/blobs/sha256/{d.split(':')[1]}"
index = json.load(open(f"{layout}/index.json"))
manifest = json.load(open(blob(index["manifests"][0]["digest"])))
for l in manifest["layers"]:
    print(l["digest"].split(":")[1])
PY
)
[ "${#LAYER_FILES[@]}" -eq "$LAYERS" ] || { echo "pull.sh: expected $LAYERS layers, found ${#LAYER_FILES[@]}" >&2; exit 1; }

now() { date +%s.%N; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }
CSV=$BENCH_DIR/results-$(date +%Y%m%d-%H%M%S).csv
echo "round,subject,seconds" > "$CSV"
declare -a S_STRATA=() S_SKOPEO=() S_STRATA_MOUNT=() S_SKOPEO_UNTAR=()

sample() {  # SUBJECT ROUND
  rm -rf "$RUN"
  mkdir -p "$RUN"
  sync
  local t0 t1 s f
  case $1 in
    strata)
      t0=$(now)
      "$STRATA" --root "$RUN/store" pull -q "$NAME" >/dev/null
      t1=$(now)
      s=$(sub "$t1" "$t0"); S_STRATA+=("$s")
      ;;
    skopeo)
      t0=$(now)
      skopeo --insecure-policy copy --quiet --src-tls-verify=false "docker://$NAME" "dir:$RUN/dir"
      t1=$(now)
      s=$(sub "$t1" "$t0"); S_SKOPEO+=("$s")
      ;;
    strata+mount)
      mkdir -p "$RUN/mnt"
      t0=$(now)
      "$STRATA" --root "$RUN/store" pull -q "$NAME" >/dev/null
      "$STRATA" --root "$RUN/store" mount "$NAME" "$RUN/mnt" >/dev/null
      "$STRATA" --root "$RUN/store" umount "$RUN/mnt" >/dev/null
      t1=$(now)
      s=$(sub "$t1" "$t0"); S_STRATA_MOUNT+=("$s")
      ;;
    skopeo+untar)
      mkdir -p "$RUN/rootfs"
      t0=$(now)
      skopeo --insecure-policy copy --quiet --src-tls-verify=false "docker://$NAME" "dir:$RUN/dir"
      for f in "${LAYER_FILES[@]}"; do
        tar -xzf "$RUN/dir/$f" -C "$RUN/rootfs"
      done
      t1=$(now)
      s=$(sub "$t1" "$t0"); S_SKOPEO_UNTAR+=("$s")
      ;;
  esac
  printf 'round %d  %-13s %6.3f s\n' "$2" "$1" "$s"
  echo "$2,$1,$s" >> "$CSV"
}

SUBJECTS=(strata skopeo strata+mount skopeo+untar)
for ((r = 1; r <= ROUNDS; r++)); do
  # Rotate the order, and reverse it every other round.
  order=()
  for ((i = 0; i < 4; i++)); do order+=("${SUBJECTS[(i + r) % 4]}"); done
  if ((r % 2 == 0)); then order=("${order[3]}" "${order[2]}" "${order[1]}" "${order[0]}"); fi
  for subj in "${order[@]}"; do sample "$subj" "$r"; done
done

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
ms=$(median "${S_STRATA[@]}")
mk=$(median "${S_SKOPEO[@]}")
mm=$(median "${S_STRATA_MOUNT[@]}")
mu=$(median "${S_SKOPEO_UNTAR[@]}")
echo
echo "image: ${LAYERS}x${MB}MiB ($((blob_bytes / 1024 / 1024)) MiB gz), medians of $ROUNDS rounds"
printf '%-48s %10s %10s %8s\n' "what (strata / skopeo)" "strata s" "skopeo s" "ratio"
printf '%-48s %10.3f %10.3f %8s\n' "pull / skopeo copy" "$ms" "$mk" "$(ratio "$ms" "$mk")"
printf '%-48s %10.3f %10.3f %8s\n' "pull + first mount / skopeo copy + untar" "$mm" "$mu" "$(ratio "$mm" "$mu")"
echo "samples: $CSV"
