#!/usr/bin/env bash
# `arbor delta` against `ostree static-delta` on the corpus point update a → b, in one
# run: delta bytes, generation time, peak memory of generation, and apply time.
#
#   benches/delta.sh [RUNS]
#
# Both tools get the very same commits (arbor's, exported into an OSTree repository).
# Apply goes into a repository holding only a, made fresh before each run. Goals:
# bytes <= 0.85x, generation time <= 0.5x, peak memory <= 0.5x, apply time <= 1x.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
RUNS=${1:-3}
CORPUS=${ARBOR_CORPUS:-/var/tmp/arbor-corpus}
cargo build --release --quiet --bins
ARBOR=$RELEASE/arbor
W=$(mktemp -d "${BENCH_DIR:-/var/tmp}/arbor-bench.XXXXXX")
trap 'rm -rf "$W"' EXIT
export SOURCE_DATE_EPOCH=1700000000
"$ARBOR" --repo "$W/src" init >/dev/null
"$ARBOR" --repo "$W/src" commit -b a "$CORPUS/a" >/dev/null 2>&1
"$ARBOR" --repo "$W/src" commit -b b "$CORPUS/b" >/dev/null 2>&1
ostree init --repo="$W/ost" --mode=bare >/dev/null
"$ARBOR" --repo "$W/src" ostree export a --ostree-repo "$W/ost" -b a >/dev/null 2>&1
"$ARBOR" --repo "$W/src" ostree export b --ostree-repo "$W/ost" -b b >/dev/null 2>&1
OA=$(cat "$W/ost/refs/heads/a"); OB=$(cat "$W/ost/refs/heads/b")

for i in $(seq "$RUNS"); do
  rm -rf "$W/ost/deltas"
  msk ostree-gen ostree static-delta generate --repo="$W/ost" --from="$OA" --to="$OB"
  msk arbor-gen "$ARBOR" --repo "$W/src" delta create a b -o "$W/ab.delta"
done
ost_bytes=$(du -sb "$W/ost/deltas" | cut -f1)
arb_bytes=$(stat -c %s "$W/ab.delta")
DELTA_DIR=$(find "$W/ost/deltas" -mindepth 2 -maxdepth 2 -type d | head -1)

for i in $(seq "$RUNS"); do
  rm -rf "$W/odst" "$W/adst"
  ostree init --repo="$W/odst" --mode=bare >/dev/null
  ostree pull-local --repo="$W/odst" "$W/ost" a >/dev/null
  ms ostree-apply ostree static-delta apply-offline --repo="$W/odst" "$DELTA_DIR"
  "$ARBOR" --repo "$W/adst" init >/dev/null
  "$ARBOR" --repo "$W/adst" commit -b a "$CORPUS/a" >/dev/null 2>&1
  ms arbor-apply "$ARBOR" --repo "$W/adst" delta apply "$W/ab.delta" -b b
done
ostree fsck --repo="$W/odst" >/dev/null
"$ARBOR" --repo "$W/adst" fsck >/dev/null

og=$(median ostree-gen); ag=$(median arbor-gen)
oa=$(median ostree-apply); aa=$(median arbor-apply)
om=$(median "$W/ostree-gen.kb"); am=$(median "$W/arbor-gen.kb")
cat <<OUT
delta bytes:     ostree $ost_bytes, arbor $arb_bytes, ratio $(ratio "$arb_bytes" "$ost_bytes") (goal <= 0.85)
generation:      ostree $og ms, arbor $ag ms, ratio $(ratio "$ag" "$og") (goal <= 0.5)
peak memory:     ostree $om KB, arbor $am KB, ratio $(ratio "$am" "$om") (goal <= 0.5)
apply:           ostree $oa ms, arbor $aa ms, ratio $(ratio "$aa" "$oa") (goal <= 1)
(median of $RUNS; apply into a repository holding only a)
OUT
