#!/usr/bin/env bash
# How long `arbor apply-live` takes (the whole command) to move a running corpus-a
# system to corpus b, a real 21-package point update.
#
#   benches/live.sh [RUNS]
#
# A folder sysroot boots a (prepare-root in a private mount namespace), b is deployed
# as pending, and apply-live / apply-live --reset alternate RUNS times (default 7).
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
RUNS=${1:-7}
CORPUS=${ARBOR_CORPUS:-/var/tmp/arbor-corpus}
cargo build --release --quiet --bins
ARBOR=$RELEASE/arbor
W=$(mktemp -d "${BENCH_DIR:-/var/tmp}/arbor-bench.XXXXXX")
trap 'rm -rf "$W"' EXIT
S=$W/sysroot
"$ARBOR" admin init-fs "$S" >/dev/null
"$ARBOR" --sysroot "$S" admin os-init debian >/dev/null
"$ARBOR" --sysroot "$S" compose rootfs "$CORPUS/a" -b os/a --version a >/dev/null 2>&1
"$ARBOR" --sysroot "$S" compose rootfs "$CORPUS/b" -b os/b --version b >/dev/null 2>&1
"$ARBOR" --sysroot "$S" deploy os/a >/dev/null 2>&1
"$ARBOR" --sysroot "$S" boot-select --cmdline-out "$W/cmdline" >/dev/null
export ARBOR_CMDLINE=$W/cmdline
"$ARBOR" --sysroot "$S" deploy os/b >/dev/null 2>&1
mkdir "$W/target"
unshare --mount --propagation private bash -c '
  set -euo pipefail
  . benches/lib.sh
  W='"$W"'; A="'"$ARBOR"' --sysroot '"$S"'"
  $A prepare-root --cmdline "$W/cmdline" --target "$W/target" >/dev/null
  for i in $(seq '"$RUNS"'); do
    ms apply-live $A apply-live --root "$W/target"
    $A apply-live --reset --root "$W/target" >/dev/null
  done
'
echo "apply-live a -> b (whole command, median of $RUNS): $(median apply-live) ms"
