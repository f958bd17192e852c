#!/usr/bin/env bash
# `tar c` of a FUSE mount of a commit against `tar c` of a hardlinked checkout of it,
# in one run on the same tree.
#
#   benches/mount.sh [TREE] [RUNS]
#
# TREE defaults to corpus tree `a`, RUNS to 5. Each tool gets one warm-up pass, then
# RUNS timed passes in alternating order; tar writes into a pipe (GNU tar does not read
# files at all when its archive is /dev/null). Prints medians and the ratio (goal <= 3).
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
TREE=${1:-${ARBOR_CORPUS:-/var/tmp/arbor-corpus}/a}
RUNS=${2:-5}
cargo build --release --quiet
ARBOR=$RELEASE/arbor
W=$(mktemp -d "${BENCH_DIR:-/var/tmp}/arbor-bench.XXXXXX")
cleanup() { umount "$W/mnt" 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
"$ARBOR" --repo "$W/repo" init >/dev/null
"$ARBOR" --repo "$W/repo" commit -b bench "$TREE" >/dev/null 2>&1
"$ARBOR" --repo "$W/repo" checkout bench "$W/co" >/dev/null
mkdir "$W/mnt"
"$ARBOR" --repo "$W/repo" mount bench "$W/mnt" >/dev/null

tar_ms() {
  local t0 t1
  t0=$(date +%s%N)
  tar cf - -C "$1" . | cat > /dev/null
  t1=$(date +%s%N)
  echo $(((t1 - t0) / 1000000))
}
tar_ms "$W/co" > /dev/null; tar_ms "$W/mnt" > /dev/null
for i in $(seq "$RUNS"); do
  if (( i % 2 )); then tar_ms "$W/co" >> "$W/t-co"; tar_ms "$W/mnt" >> "$W/t-mnt"
  else tar_ms "$W/mnt" >> "$W/t-mnt"; tar_ms "$W/co" >> "$W/t-co"; fi
done
co=$(median "$W/t-co"); mnt=$(median "$W/t-mnt")
cat <<OUT
tree: $TREE; tar c, median of $RUNS warm runs, ms
  checkout      $co
  FUSE mount    $mnt
  mount / checkout   $(awk -v a="$mnt" -v b="$co" 'BEGIN { printf "%.2f", a / b }')x   (goal <= 3)
OUT
