#!/usr/bin/env bash
# scripts/install-deps.sh
#
# Installs the Debian 12 packages that strata, its scripts, its tests and its benchmarks use,
# and checks that the Rust toolchain (cargo) is there. Idempotent: when every package is
# installed it only runs one dpkg-query and returns.
#
# `apt-get update` runs only when the first install attempt fails (empty or stale package
# lists on a fresh machine); the install is then retried once. Waits up to 5 minutes for the
# dpkg lock. Needs root only when something has to be installed.
set -euo pipefail

PACKAGES=(
  busybox-static # /bin/busybox for the default image (scripts/default-image.sh)
  zstd skopeo umoci buildah jq curl python3 # test fixtures (shared/fixtures)
  docker-registry apache2-utils             # local test registry, htpasswd
  attr acl fuse3 e2fsprogs                  # xattrs, ACLs, fusermount3, mkfs.ext4 for tests
  libcap2-bin                               # setcap/getcap (tests/fuse_features.rs)
  hyperfine fio debootstrap                 # benchmarks
  bubblewrap util-linux procps psmisc       # namespaces, mount tools, ps/pkill/fuser
)

# One dpkg-query for all: prints "name<TAB>status" for every known package.
installed=$(dpkg-query -W -f='${Package}\t${db:Status-Abbrev}\n' "${PACKAGES[@]}" 2>/dev/null || true)
missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! printf '%s\n' "$installed" | grep -q -E "^${pkg}	ii"; then
    missing+=("$pkg")
  fi
done

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-deps: missing Debian packages: ${missing[*]}; installing them needs root" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  APT=(apt-get -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300)
  echo "install-deps: installing ${missing[*]}" >&2
  errf=$(mktemp)
  trap 'rm -f "$errf"' EXIT
  if ! "${APT[@]}" install "${missing[@]}" >/dev/null 2>"$errf"; then
    echo "install-deps: install failed ($(grep -m1 '^E:' "$errf" || echo 'no E: line')); running apt-get update and retrying" >&2
    apt-get -qq -o DPkg::Lock::Timeout=300 update >/dev/null
    "${APT[@]}" install "${missing[@]}" >/dev/null
  fi
  case " ${missing[*]} " in
    *" docker-registry "*)
      # Where systemd runs, the package enables and starts its own registry service
      # (/etc/docker/registry/config.yml, port 5000). Tests start their own registries.
      if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        systemctl disable --now docker-registry.service >/dev/null 2>&1 || true
        echo "install-deps: disabled the docker-registry.service that the package started" >&2
      fi
      ;;
  esac
fi

# The Rust toolchain comes from rustup (not from Debian); it cannot be downloaded here.
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  PATH=$HOME/.cargo/bin:$PATH
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps: cargo not found (not on PATH, not in \$HOME/.cargo/bin)." >&2
  echo "install-deps: strata needs a Rust toolchain >= 1.85 with rustfmt and clippy (rustup); install it first." >&2
  exit 1
fi
for tool in fmt clippy; do
  if ! cargo "$tool" --version >/dev/null 2>&1; then
    echo "install-deps: warning: 'cargo $tool' is missing (rustup component add $([ "$tool" = fmt ] && echo rustfmt || echo clippy)); scripts/test.sh needs it" >&2
  fi
done
