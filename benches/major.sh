#!/usr/bin/env bash
# The major upgrade a → t (bookworm → trixie, corpus `t`): `arbor delta` against
# `ostree static-delta` and against the whole trixie tree as `tar | xz -6`, in one run.
# Measures bytes on the wire, generation time and peak memory, and apply time.
#
#   benches/major.sh [RUNS]      (default 1: one run takes about half an hour)
#
# Both tools get the very same commits (arbor's, exported into an OSTree archive
# repository). arbor's delta is fetched whole, so its size is what goes over the wire,
# and it is applied with `delta apply`. OSTree's is pulled over HTTP (a local
# `python3 -m http.server`), as a client would: its delta leaves large files out as
# "fallback" objects that a pull fetches on their own, so `apply-offline` cannot
# apply it; the bytes are what `ostree pull` reports it transferred, and the apply
# time is the pull's. Each applies into a repository holding only a, made fresh.
# Goals (issue "Debian 13 (trixie) images"): bytes <= 0.5x tar+xz and <= 0.8x OSTree,
# generation time <= 0.5x OSTree, generation memory <= 1 GiB, apply <= 0.5x OSTree.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
RUNS=${1:-1}
CORPUS=${ARBOR_CORPUS:-/var/tmp/arbor-corpus}
[[ -d $CORPUS/t ]] || { echo "no corpus tree t: run ../shared/corpus/make-trees.sh" >&2; exit 1; }
cargo build --release --quiet --bins
ARBOR=$RELEASE/arbor
W=$(mktemp -d "${BENCH_DIR:-/var/tmp}/arbor-bench.XXXXXX")
trap 'rm -rf "$W"' EXIT
export SOURCE_DATE_EPOCH=1700000000
"$ARBOR" --repo "$W/src" init >/dev/null
"$ARBOR" --repo "$W/src" commit -b a "$CORPUS/a" >/dev/null 2>&1
"$ARBOR" --repo "$W/src" commit -b t "$CORPUS/t" >/dev/null 2>&1
ostree init --repo="$W/ost" --mode=archive >/dev/null
"$ARBOR" --repo "$W/src" ostree export a --ostree-repo "$W/ost" -b a >/dev/null 2>&1
"$ARBOR" --repo "$W/src" ostree export t --ostree-repo "$W/ost" -b t >/dev/null 2>&1
OA=$(cat "$W/ost/refs/heads/a"); OT=$(cat "$W/ost/refs/heads/t")

# The full image, as a distributor would ship it: the tree as tar, xz at preset 6.
tar_xz_bytes=$(tar -C "$CORPUS/t" --numeric-owner -cf - . | xz -6 -T0 | wc -c)

for i in $(seq "$RUNS"); do
  rm -rf "$W/ost/deltas"
  msk ostree-gen ostree static-delta generate --repo="$W/ost" --from="$OA" --to="$OT"
  msk arbor-gen "$ARBOR" --repo "$W/src" delta create a t -o "$W/at.delta"
  msk arbor-gen-rc "$ARBOR" --repo "$W/src" delta create a t -o "$W/at-rc.delta" --recompress
done
arb_bytes=$(stat -c %s "$W/at.delta")
rc_bytes=$(stat -c %s "$W/at-rc.delta")
ostree summary --repo="$W/ost" -u  # a pull finds deltas through the summary

PORT=$((20000 + RANDOM % 20000))
python3 -m http.server --bind 127.0.0.1 --directory "$W/ost" "$PORT" >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$W"' EXIT
until curl -sf "http://127.0.0.1:$PORT/config" >/dev/null; do sleep 0.2; done
for i in $(seq "$RUNS"); do
  rm -rf "$W/odst" "$W/adst"
  ostree init --repo="$W/odst" --mode=bare >/dev/null
  ostree pull-local --repo="$W/odst" "$W/ost" a >/dev/null
  ostree remote add --repo="$W/odst" --no-gpg-verify origin "http://127.0.0.1:$PORT"
  # The pull starts from the commit the ref has: a, so that it takes the delta.
  ostree refs --repo="$W/odst" --create=origin:t "$OA"
  ms ostree-apply sh -c "ostree pull --repo='$W/odst' --require-static-deltas origin t > '$W/pull.out'"
  "$ARBOR" --repo "$W/adst" init >/dev/null
  "$ARBOR" --repo "$W/adst" commit -b a "$CORPUS/a" >/dev/null 2>&1
  ms arbor-apply "$ARBOR" --repo "$W/adst" delta apply "$W/at.delta" -b t
  rm -rf "$W/adst"
  "$ARBOR" --repo "$W/adst" init >/dev/null
  "$ARBOR" --repo "$W/adst" commit -b a "$CORPUS/a" >/dev/null 2>&1
  ms arbor-apply-rc "$ARBOR" --repo "$W/adst" delta apply "$W/at-rc.delta" -b t
done
ostree fsck --repo="$W/odst" >/dev/null
# "… 2 delta parts, 21 loose fetched; 226372 KiB transferred in 41 seconds …"
ost_bytes=$(($(grep -o '[0-9]* KiB transferred' "$W/pull.out" | tail -1 | cut -d' ' -f1) * 1024))
ost_detail=$(tr '\r' '\n' < "$W/pull.out" | grep 'transferred' | tail -1)
"$ARBOR" --repo "$W/adst" fsck >/dev/null

og=$(median ostree-gen); ag=$(median arbor-gen); agr=$(median arbor-gen-rc)
oa=$(median ostree-apply); aa=$(median arbor-apply); aar=$(median arbor-apply-rc)
om=$(median "$W/ostree-gen.kb"); am=$(median "$W/arbor-gen.kb"); amr=$(median "$W/arbor-gen-rc.kb")
cat <<OUT
bytes vs image:  tar+xz -6 $tar_xz_bytes, arbor $arb_bytes, ratio $(ratio "$arb_bytes" "$tar_xz_bytes") (goal <= 0.5)
bytes vs ostree: ostree $ost_bytes, arbor $arb_bytes, ratio $(ratio "$arb_bytes" "$ost_bytes") (goal <= 0.8)
generation:      ostree $og ms, arbor $ag ms, ratio $(ratio "$ag" "$og") (goal <= 0.5)
peak memory:     ostree $om KB, arbor $am KB (goal: arbor <= 1048576 KB)
apply:           ostree $oa ms, arbor $aa ms, ratio $(ratio "$aa" "$oa") (goal <= 0.5)
with --recompress (xz files diffed by content, compressed again on apply):
  bytes $rc_bytes (vs image $(ratio "$rc_bytes" "$tar_xz_bytes"), vs ostree $(ratio "$rc_bytes" "$ost_bytes")),
  generation $agr ms ($(ratio "$agr" "$og")), peak memory $amr KB, apply $aar ms ($(ratio "$aar" "$oa"))
(median of $RUNS; apply into a repository holding only a; ostree pull: $ost_detail)
OUT
