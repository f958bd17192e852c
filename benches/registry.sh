#!/usr/bin/env bash
# The same delta upgrade (corpus point update a → b) from an OCI registry and from a
# static folder over HTTP, in one run: bytes on the wire and wall time (issue 31's goal:
# the registry path moves <= 1.05x the bytes of the HTTP path and takes <= 1.2x its
# time).
#
#   benches/registry.sh [RUNS]
#
# One publication: `publish init|add oci://…` into Debian's docker-registry on a free
# port, whose staging copy (the very same files) nginx serves. A client of each
# deploys version 1 once (not measured); each run copies both clients and times, in
# alternating order, `arbor upgrade` from the registry and from nginx. Bytes are what
# each server's access log says it sent. Prints medians of RUNS (default 3). Needs
# root, nginx and docker-registry. Work folder: $BENCH_DIR or /var/tmp.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
RUNS=${1:-3}
CORPUS=${ARBOR_CORPUS:-/var/tmp/arbor-corpus}
[[ -d $CORPUS/b ]] || { echo "no corpus at $CORPUS; run ../shared/corpus/make-trees.sh" >&2; exit 1; }
cargo build --release --quiet --bins
ARBOR=$RELEASE/arbor
W=$(mktemp -d "${BENCH_DIR:-/var/tmp}/arbor-bench.XXXXXX")
trap bench_cleanup EXIT
export SOURCE_DATE_EPOCH=1700000000 ARBOR_MACHINE_ID=0123456789abcdef0123456789abcdef
quiet() { "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; "$@" >&2 || true; exit 1; }; }
bench_nginx
URL=http://127.0.0.1:$PORT/os
bench_registry
REG=oci://127.0.0.1:$RPORT/arbor/os

echo "composing versions 1 and 2, publishing 1 to the registry, deploying it on both clients" >&2
K=$W/keys
quiet "$ARBOR" --repo "$W/build" init
quiet "$ARBOR" --repo "$W/build" compose rootfs "$CORPUS/a" -b v1 --version 1
quiet "$ARBOR" --repo "$W/build" compose rootfs "$CORPUS/b" -b v2 --version 2
quiet "$ARBOR" publish init "$REG" --keys "$K"
publish() {
  quiet "$ARBOR" --repo "$W/build" publish add "$REG" --keys "$K" --channel stable --version "$1" --ref "v$1"
  rm -rf "$W/srv/os" && cp -a "$K/publication" "$W/srv/os" && chmod 755 "$W/srv/os"
}
publish 1
ROOT=$K/publication/metadata/1.root.json
client() {
  quiet "$ARBOR" admin init-fs "$1"
  quiet "$ARBOR" --sysroot "$1" admin os-init debian
  quiet "$ARBOR" --sysroot "$1" remote add origin "$2" --trust "$ROOT"
  quiet "$ARBOR" --sysroot "$1" deploy origin:stable
}
client "$W/client-registry" "$REG"
client "$W/client-http" "$URL"

echo "publishing version 2" >&2
publish 2
DELTA=$(find "$W/srv/os/deltas" -name '*.delta' -printf '%s\n' | head -1)

run() { # NAME SYSROOT LOG-CLEAR BYTES-FN
  : > "$3"
  ms "$1" "$ARBOR" --sysroot "$2" upgrade
  "$4" >> "$W/$1.bytes"
  "$ARBOR" --sysroot "$2" status --json | grep -q '"version": *"2"' ||
    { echo "$1: version 2 was not staged" >&2; exit 1; }
}
for i in $(seq "$RUNS"); do
  rm -rf "$W/r" "$W/h"
  if (( i > 1 )); then sync; sleep "${SETTLE:-30}"; fi
  cp -a "$W/client-registry" "$W/r"
  cp -a "$W/client-http" "$W/h"
  sync
  reg() { run via-registry "$W/r" "$W/registry/access.log" reg_bytes; }
  web() { run via-http "$W/h" "$W/nginx/access.log" http_bytes; }
  if (( i % 2 )); then reg; web; else web; reg; fi
  echo "run $i/$RUNS: registry $(tail -1 "$W/via-registry") ms $(tail -1 "$W/via-registry.bytes") B," \
    "HTTP $(tail -1 "$W/via-http") ms $(tail -1 "$W/via-http.bytes") B" >&2
done

rt=$(median via-registry); ht=$(median via-http)
rb=$(median "$W/via-registry.bytes"); hb=$(median "$W/via-http.bytes")
cat <<OUT
delta upgrade a -> b, median of $RUNS runs, delta file $DELTA bytes
  bytes:  registry $rb, HTTP $hb, ratio $(ratio "$rb" "$hb")x (goal <= 1.05)
  time:   registry $rt ms, HTTP $ht ms, ratio $(ratio "$rt" "$ht")x (goal <= 1.2)
OUT
