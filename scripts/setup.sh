#!/usr/bin/env bash
# Installs what arbor's build, tests, demo and benchmarks need on a Debian machine,
# and builds the shared test corpus. Idempotent and quick once done. Needs root.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)

PACKAGES=(
  # build: the bundled SQLite needs a C compiler; libostree/glib/fuse for interop and FUSE
  gcc pkg-config libostree-dev libglib2.0-dev libfuse3-dev
  # tests and benchmarks: real tools users have
  ostree fuse3 attr libcap2-bin util-linux debootstrap zstd hyperfine findutils
)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  [[ $(id -u) == 0 ]] || { echo "setup: installing ${missing[*]} needs root" >&2; exit 1; }
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || {
  echo "setup: cargo not found; install a Rust toolchain (rustup, Rust >= 1.85) first" >&2
  exit 1
}

# The corpus: real Debian bookworm trees, built once and cached.
shared=${ARBOR_SHARED:-$here/../shared}
if [[ ${ARBOR_SKIP_CORPUS:-} != 1 ]]; then
  [[ -x $shared/corpus/make-trees.sh || -f $shared/corpus/make-trees.sh ]] || {
    echo "setup: $shared/corpus/make-trees.sh not found (set ARBOR_SHARED)" >&2
    exit 1
  }
  bash "$shared/corpus/make-trees.sh" >/dev/null
fi
