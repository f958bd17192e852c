#!/usr/bin/env bash
# The major upgrade a → t (bookworm → trixie, corpus `t`): `arbor delta` against
# `ostree static-delta` and against the whole trixie tree as `tar | xz -6`, in one run.
# Measures bytes on the wire, generation time and peak memory, and apply time.
#
#   benches/major.sh [RUNS]      (default 1: one run takes about half an hour)
#
# Both tools get the very same commits (arbor's, exported into an OSTree repository).
# A delta is fetched whole, so its size is what goes over the wire; OSTree's is the
# size of its delta directory (superblock and parts), which is what a pull fetches.
# Apply goes into a repository holding only a, made fresh before each run.
# Goals (issue "Debian 13 (trixie) images"): bytes <= 0.5x tar+xz and <= 0.8x OSTree,
# generation time <= 0.5x OSTree, generation memory <= 1 GiB, apply <= 0.5x OSTree.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
RUNS=${1:-1}
CORPUS=${ARBOR_CORPUS:-/var/tmp/arbor-corpus}
[[ -d $CORPUS/t ]] || { echo "no corpus tree t: run ../shared/corpus/make-trees.sh" >&2; exit 1; }
cargo build --release --quiet --bins
ARBOR=$PWD/target/release/arbor
W=$(mktemp -d "${BENCH_DIR:-/var/tmp}/arbor-bench.XXXXXX")
trap 'rm -rf "$W"' EXIT
export SOURCE_DATE_EPOCH=1700000000
"$ARBOR" --repo "$W/src" init >/dev/null
"$ARBOR" --repo "$W/src" commit -b a "$CORPUS/a" >/dev/null 2>&1
"$ARBOR" --repo "$W/src" commit -b t "$CORPUS/t" >/dev/null 2>&1
ostree init --repo="$W/ost" --mode=bare >/dev/null
"$ARBOR" --repo "$W/src" ostree export a --ostree-repo "$W/ost" -b a >/dev/null 2>&1
"$ARBOR" --repo "$W/src" ostree export t --ostree-repo "$W/ost" -b t >/dev/null 2>&1
OA=$(cat "$W/ost/refs/heads/a"); OT=$(cat "$W/ost/refs/heads/t")

# The full image, as a distributor would ship it: the tree as tar, xz at preset 6.
tar_xz_bytes=$(tar -C "$CORPUS/t" --numeric-owner -cf - . | xz -6 -T0 | wc -c)

for i in $(seq "$RUNS"); do
  rm -rf "$W/ost/deltas"
  msk ostree-gen ostree static-delta generate --repo="$W/ost" --from="$OA" --to="$OT"
  msk arbor-gen "$ARBOR" --repo "$W/src" delta create a t -o "$W/at.delta"
done
ost_bytes=$(du -sb "$W/ost/deltas" | cut -f1)
arb_bytes=$(stat -c %s "$W/at.delta")
DELTA_DIR=$(find "$W/ost/deltas" -mindepth 2 -maxdepth 2 -type d | head -1)

for i in $(seq "$RUNS"); do
  rm -rf "$W/odst" "$W/adst"
  ostree init --repo="$W/odst" --mode=bare >/dev/null
  ostree pull-local --repo="$W/odst" "$W/ost" a >/dev/null
  ms ostree-apply ostree static-delta apply-offline --repo="$W/odst" "$DELTA_DIR"
  "$ARBOR" --repo "$W/adst" init >/dev/null
  "$ARBOR" --repo "$W/adst" commit -b a "$CORPUS/a" >/dev/null 2>&1
  ms arbor-apply "$ARBOR" --repo "$W/adst" delta apply "$W/at.delta" -b t
done
ostree fsck --repo="$W/odst" >/dev/null
"$ARBOR" --repo "$W/adst" fsck >/dev/null

og=$(median ostree-gen); ag=$(median arbor-gen)
oa=$(median ostree-apply); aa=$(median arbor-apply)
om=$(median "$W/ostree-gen.kb"); am=$(median "$W/arbor-gen.kb")
cat <<OUT
bytes vs image:  tar+xz -6 $tar_xz_bytes, arbor $arb_bytes, ratio $(ratio "$arb_bytes" "$tar_xz_bytes") (goal <= 0.5)
bytes vs ostree: ostree $ost_bytes, arbor $arb_bytes, ratio $(ratio "$arb_bytes" "$ost_bytes") (goal <= 0.8)
generation:      ostree $og ms, arbor $ag ms, ratio $(ratio "$ag" "$og") (goal <= 0.5)
peak memory:     ostree $om KB, arbor $am KB (goal: arbor <= 1048576 KB)
apply:           ostree $oa ms, arbor $aa ms, ratio $(ratio "$aa" "$oa") (goal <= 0.5)
(median of $RUNS; apply into a repository holding only a)
OUT
