#!/usr/bin/env bash
# Benchmark of the object store against OSTree, in one run on the same tree.
#
#   benches/store.sh [TREE] [RUNS]
#   SCALE=4 benches/store.sh          # TREE made of 4 copies of corpus a (2.9 GB)
#
# TREE defaults to corpus tree `a` (../shared/corpus/make-trees.sh); RUNS to 5. With
# SCALE=N the tree is N copies of TREE, each file of copy i with the byte i appended
# (unique content, N times the entries and bytes). Each run, in alternating order so
# neither tool always goes first:
#   - `ostree commit` and `arbor commit` of TREE into fresh bare repositories
#     (both end with a sync of the filesystem, as both do by default), with their
#     peak memory (RSS),
#   - `arbor commit` of the unchanged TREE again (inode cache),
#   - `ostree checkout -H`, `arbor checkout` (hardlinks) and `cp -al TREE`.
# Prints the median of each and the ratios the project's goals are stated in.
# Needs root (bare repositories store owners). Work folder: $BENCH_DIR or /var/tmp.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
TREE=${1:-${ARBOR_CORPUS:-/var/tmp/arbor-corpus}/a}
RUNS=${2:-5}
[[ -d $TREE ]] || { echo "no tree at $TREE; run ../shared/corpus/make-trees.sh" >&2; exit 1; }
cargo build --release --quiet
ARBOR=$RELEASE/arbor
W=$(mktemp -d "${BENCH_DIR:-/var/tmp}/arbor-bench.XXXXXX")
trap 'rm -rf "$W"' EXIT
if (( ${SCALE:-1} > 1 )); then
  echo "making a tree of $SCALE copies of $TREE" >&2
  scaled_tree "$TREE" "$SCALE" "$W/tree"
  TREE=$W/tree
fi


ostree_commit() { ostree --repo="$W/ost" init --mode=bare >/dev/null; msk ostree_commit ostree --repo="$W/ost" commit -b bench --tree=dir="$TREE"; }
arbor_commit() { "$ARBOR" --repo "$W/arb" init >/dev/null; msk arbor_commit "$ARBOR" --repo "$W/arb" commit -b bench "$TREE"; }

for i in $(seq "$RUNS"); do
  rm -rf "$W"/ost "$W"/arb "$W"/co-*
  if (( i % 2 )); then ostree_commit; arbor_commit; else arbor_commit; ostree_commit; fi
  ms arbor_recommit "$ARBOR" --repo "$W/arb" commit -b bench "$TREE"
  ms ostree_checkout ostree --repo="$W/ost" checkout -H bench "$W/co-ost"
  ms arbor_checkout "$ARBOR" --repo "$W/arb" checkout --hardlink bench "$W/co-arb"
  ms cp_al cp -al "$TREE" "$W/co-cp"
  echo "run $i/$RUNS done" >&2
done

oc=$(median ostree_commit); ac=$(median arbor_commit); rc=$(median arbor_recommit)
om=$(median "$W/ostree_commit.kb"); am=$(median "$W/arbor_commit.kb")
ok=$(median ostree_checkout); ak=$(median arbor_checkout); cp=$(median cp_al)
cat <<EOF
tree: $TREE ($(find "$TREE" | wc -l) entries, $(du -sh "$TREE" | cut -f1)); median of $RUNS runs, ms
  ostree commit            $oc
  arbor commit             $ac
  arbor re-commit          $rc
  ostree commit peak RSS   $om KB
  arbor commit peak RSS    $am KB
  ostree checkout -H       $ok
  arbor checkout           $ak
  cp -al                   $cp
ratios
  commit: ostree / arbor              $(ratio "$oc" "$ac")x   (goal >= 3)
  re-commit: fresh / unchanged        $(ratio "$ac" "$rc")x   (goal >= 20)
  commit memory: arbor / ostree       $(ratio "$am" "$om")x   (goal <= 1)
  checkout: arbor / cp -al            $(ratio "$ak" "$cp")x   (goal <= 1.1)
  checkout: ostree -H / arbor         $(ratio "$ok" "$ak")x
EOF
