#!/usr/bin/env bash
# `arbor deploy` against `ostree admin deploy` of the same tree, with its kernel, into
# equivalent sysroots, in one run.
#
#   benches/deploy.sh [TREE] [RUNS]
#
# TREE (default corpus tree `a`) is composed once with `arbor compose rootfs`, and that
# commit is exported into the OSTree sysroot's repository, so both tools deploy the very
# same tree. Then each tool deploys it RUNS times (default 7), alternating; from the
# third deploy on, each also removes its oldest deployment, as both do by default.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
TREE=${1:-${ARBOR_CORPUS:-/var/tmp/arbor-corpus}/a}
RUNS=${2:-7}
cargo build --release --quiet
ARBOR=$RELEASE/arbor
W=$(mktemp -d "${BENCH_DIR:-/var/tmp}/arbor-bench.XXXXXX")
# OSTree marks its deployment roots immutable.
cleanup() { chattr -i "$W"/ost/ostree/deploy/*/deploy/*/ 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
"$ARBOR" admin init-fs "$W/arb" >/dev/null
"$ARBOR" --sysroot "$W/arb" admin os-init debian >/dev/null
"$ARBOR" --sysroot "$W/arb" compose rootfs "$TREE" -b bench --version 1 >/dev/null 2>&1
mkdir "$W/ost"
ostree admin init-fs "$W/ost" >/dev/null
ostree admin os-init debian --sysroot="$W/ost" >/dev/null
"$ARBOR" --sysroot "$W/arb" ostree export bench --ostree-repo "$W/ost/ostree/repo" -b bench >/dev/null 2>&1

for i in $(seq "$RUNS"); do
  if (( i % 2 )); then
    ms ostree ostree admin deploy --sysroot="$W/ost" --os=debian bench
    ms arbor "$ARBOR" --sysroot "$W/arb" deploy bench
  else
    ms arbor "$ARBOR" --sysroot "$W/arb" deploy bench
    ms ostree ostree admin deploy --sysroot="$W/ost" --os=debian bench
  fi
done
o=$(median ostree); a=$(median arbor)
cat <<OUT
tree: $TREE; deploy, median of $RUNS runs, ms
  ostree admin deploy   $o
  arbor deploy          $a
  ostree / arbor        $(awk -v a="$o" -v b="$a" 'BEGIN { printf "%.2f", a / b }')x   (goal >= 2)
OUT
