#!/usr/bin/env bash
# Builds arbor's Debian package (debian/) with dpkg-buildpackage and checks it with
# lintian (no errors allowed). The source is copied to a scratch folder first, because
# dpkg-buildpackage writes its results next to the source tree; cargo's builds are
# shared with the checkout's target/ folder. Prints the path of the .deb.
#
#   scripts/build-deb.sh [OUT_DIR]     default OUT_DIR: target/debian
#
# ARBOR_DEB_TARGET names another cargo target folder for the release build: CI keeps
# one under /var/tmp, so the dependencies' release builds carry over between runs.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$here/target/debian}
work=$(mktemp -d "${TMPDIR:-/var/tmp}/arbor-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/arbor" "$out"
(cd "$here" && git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$work/arbor")
# The page's styles are built from npm, not checked in (cockpit/build.sh).
bash "$here/cockpit/build.sh"
cp "$here/cockpit/arbor/patternfly.css" "$work/arbor/cockpit/arbor/"
(
  cd "$work/arbor"
  # cargo comes from rustup, not from a Debian package: skip the build-dependency check.
  CARGO_TARGET_DIR="${ARBOR_DEB_TARGET:-$here/target}" CARGO_MANIFEST="$here/Cargo.toml" dpkg-buildpackage -b -us -uc -d >"$work/build.log" 2>&1 ||
    { tail -40 "$work/build.log" >&2; echo "build-deb: dpkg-buildpackage failed" >&2; exit 1; }
)
rm -f "$out"/arbor_*.deb "$out"/arbor-dbgsym_*.deb
mv "$work"/arbor_*.deb "$out/"
mv "$work"/arbor-dbgsym_*.deb "$out/" 2>/dev/null || true
deb=$(ls "$out"/arbor_*_*.deb)
lintian --fail-on error --suppress-tags-from-file "$here/debian/lintian-suppressed" "$deb" >&2
echo "$deb"
