#!/usr/bin/env bash
# An upgrade over HTTP, arbor against OSTree, on the corpus point update a → b, in one
# run: bytes on the wire and wall time.
#
#   benches/upgrade.sh [RUNS]
#
# Both tools serve the very same two commits (arbor composes them; `arbor ostree
# export` hands them to OSTree) from one nginx:
#   - arbor: `publish add` of version 1, then of version 2 (with its delta from 1);
#   - OSTree: an archive repository, `ostree static-delta generate --from 1 --to 2`
#     and `ostree summary -u`, as an OSTree publisher does.
# A client of each deploys version 1 once (not measured); each run copies those
# clients and times, in alternating order, `arbor upgrade` against `ostree pull`
# followed by `ostree admin deploy`. Bytes are what nginx's access log says it sent
# during each. Prints medians of RUNS (default 5) and the ratios of the goals: bytes
# <= 1.05x arbor's delta file and <= 0.15x OSTree's, time <= 0.4x OSTree's in every
# run. Needs root, nginx and ostree. Work folder: $BENCH_DIR or /var/tmp. Each run
# waits $SETTLE seconds (65) after removing the previous run's copies (see the loop).
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
RUNS=${1:-5}
CORPUS=${ARBOR_CORPUS:-/var/tmp/arbor-corpus}
[[ -d $CORPUS/b ]] || { echo "no corpus at $CORPUS; run ../shared/corpus/make-trees.sh" >&2; exit 1; }
cargo build --release --quiet --bins
ARBOR=$RELEASE/arbor
W=$(mktemp -d "${BENCH_DIR:-/var/tmp}/arbor-bench.XXXXXX")
NGINX_CONF=$W/nginx/nginx.conf
# OSTree makes its deployments immutable (chattr +i): undo that before removing them.
unlock() { find "$@" -maxdepth 6 -path '*/ostree/deploy/*/deploy/*' -prune -exec chattr -i {} + 2>/dev/null || true; }
cleanup() {
  nginx -c "$NGINX_CONF" -s stop 2>/dev/null || true
  [[ -n ${BENCH_KEEP:-} ]] && { echo "kept $W" >&2; return; }
  unlock "$W"; rm -rf "$W"
}
trap cleanup EXIT
export SOURCE_DATE_EPOCH=1700000000 ARBOR_MACHINE_ID=0123456789abcdef0123456789abcdef
quiet() { "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; "$@" >&2 || true; exit 1; }; }

bench_nginx
URL=http://127.0.0.1:$PORT

echo "composing versions 1 and 2, publishing 1, deploying it on both clients" >&2
quiet "$ARBOR" --repo "$W/build" init
quiet "$ARBOR" --repo "$W/build" compose rootfs "$CORPUS/a" -b v1 --version 1
quiet "$ARBOR" --repo "$W/build" compose rootfs "$CORPUS/b" -b v2 --version 2
quiet "$ARBOR" publish init "$W/srv/arbor"
publish() {
  quiet "$ARBOR" --repo "$W/build" publish add "$W/srv/arbor" --channel stable --version "$1" --ref "v$1"
}
publish 1
quiet ostree init --repo="$W/ost-bare" --mode=bare
quiet "$ARBOR" --repo "$W/build" ostree export v1 --ostree-repo "$W/ost-bare" -b v1
quiet "$ARBOR" --repo "$W/build" ostree export v2 --ostree-repo "$W/ost-bare" -b v2
OST=$W/srv/ostree
quiet ostree init --repo="$OST" --mode=archive
quiet ostree --repo="$OST" pull-local "$W/ost-bare" v1
quiet ostree --repo="$OST" refs --create=os/stable "$(ostree --repo="$OST" rev-parse v1)"
quiet ostree --repo="$OST" summary -u

# The clients at version 1.
A0=$W/client-arbor
quiet "$ARBOR" admin init-fs "$A0"
quiet "$ARBOR" --sysroot "$A0" admin os-init debian
quiet "$ARBOR" --sysroot "$A0" remote add origin "$URL/arbor" --trust "$W/srv/arbor/metadata/1.root.json"
quiet "$ARBOR" --sysroot "$A0" deploy origin:stable
O0=$W/client-ostree
mkdir -p "$O0"
quiet ostree admin init-fs "$O0"
quiet ostree admin os-init debian --sysroot="$O0"
quiet ostree --repo="$O0/ostree/repo" remote add --no-gpg-verify origin "$URL/ostree"
quiet ostree --repo="$O0/ostree/repo" pull origin os/stable
quiet ostree admin deploy --sysroot="$O0" --os=debian origin:os/stable

echo "publishing version 2" >&2
publish 2
DELTA=$(find "$W/srv/arbor/deltas" -name '*.delta' -printf '%s\n' | head -1)
quiet ostree --repo="$OST" pull-local "$W/ost-bare" v2
V1=$(ostree --repo="$OST" rev-parse v1); V2=$(ostree --repo="$OST" rev-parse v2)
quiet ostree --repo="$OST" static-delta generate --from="$V1" --to="$V2"
quiet ostree --repo="$OST" refs --delete os/stable
quiet ostree --repo="$OST" refs --create=os/stable "$V2"
quiet ostree --repo="$OST" summary -u

arbor_run() {
  : > "$W/nginx/access.log"
  ms arbor "$ARBOR" --sysroot "$W/a" upgrade
  http_bytes >> "$W/arbor.bytes"
  "$ARBOR" --sysroot "$W/a" status --json | grep -q '"version": *"2"' ||
    { echo "arbor did not stage version 2" >&2; exit 1; }
}
ostree_run() {
  : > "$W/nginx/access.log"
  ms ostree bash -c "ostree --repo='$W/o/ostree/repo' pull origin os/stable &&
    ostree admin deploy --sysroot='$W/o' --os=debian origin:os/stable"
  http_bytes >> "$W/ostree.bytes"
  [[ $(ostree --repo="$W/o/ostree/repo" rev-parse origin:os/stable) == "$V2" ]] ||
    { echo "OSTree did not pull version 2" >&2; exit 1; }
}
for i in $(seq "$RUNS"); do
  [[ -d $W/o ]] && unlock "$W/o"
  rm -rf "$W/a" "$W/o"
  # Neither tool's run may pay for the bench's own work: ext4 skips inodes freed in
  # the last minute when it allocates (recently_deleted; most of an upgrade's system
  # time right after the previous run's copies were removed), and fresh copies leave
  # gigabytes to write back, which the upgrade's syncs would wait for.
  if (( i > 1 )); then sync; sleep "${SETTLE:-65}"; fi
  cp -a "$A0" "$W/a"
  cp -a "$O0" "$W/o"
  sync
  if (( i % 2 )); then arbor_run; ostree_run; else ostree_run; arbor_run; fi
  echo "run $i/$RUNS: arbor $(tail -1 "$W/arbor") ms $(tail -1 "$W/arbor.bytes") B," \
    "OSTree $(tail -1 "$W/ostree") ms $(tail -1 "$W/ostree.bytes") B" >&2
done

at=$(median arbor); ot=$(median ostree)
ab=$(median "$W/arbor.bytes"); ob=$(median "$W/ostree.bytes")
worst=$(paste "$W/arbor" "$W/ostree" | awk '{ r = $1 / $2; if (r > w) w = r } END { printf "%.2f", w }')
cat <<OUT
upgrade a -> b over HTTP, median of $RUNS runs (OSTree: pull + admin deploy)
  bytes:  arbor $ab, OSTree $ob, arbor's delta file $DELTA
          arbor / delta file $(ratio "$ab" "$DELTA")x (goal <= 1.05), arbor / OSTree $(ratio "$ab" "$ob")x (goal <= 0.15)
  time:   arbor $at ms, OSTree $ot ms, ratio $(ratio "$at" "$ot")x, worst run $worst x (goal <= 0.4 in every run)
OUT
