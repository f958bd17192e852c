#!/usr/bin/env bash
# The bytes one image update costs, three ways, in one run (issue 31, part 2):
#   layers  the container image's changed layers, as `arbor upgrade` of a machine that
#           follows the tag (`arbor switch docker://…`) fetches them: what bootc and
#           rpm-ostree's container path download too;
#   oci     arbor's delta, from a publication in the same registry;
#   http    arbor's delta, from the same publication as a static folder behind nginx.
#
#   [CASES="app point"] benches/image-update.sh
#
# Two updates of the Containerfile images (containerfiles/build.sh):
#   app    base -> update: a package, a configuration default and a program added on
#          top (new layers above the base's);
#   point  base -> base-b: the same image rebuilt from Debian's point update (corpus
#          b), so its big root layer changes, as every rebuild of a base image does.
# Bytes are what the registry's and nginx's access logs say they sent for the upgrade
# (metadata included); times are wall times of `arbor upgrade`. Needs root, podman,
# docker-registry and nginx. Work folder: $BENCH_DIR or /var/tmp.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
cargo build --release --quiet --bins
ARBOR=$RELEASE/arbor
bash containerfiles/build.sh base update base-b >/dev/null
W=$(mktemp -d "${BENCH_DIR:-/var/tmp}/arbor-bench.XXXXXX")
trap bench_cleanup EXIT
export ARBOR_MACHINE_ID=0123456789abcdef0123456789abcdef
quiet() { "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; "$@" >&2 || true; exit 1; }; }
bench_nginx
bench_registry
H=127.0.0.1:$RPORT
push() { quiet podman push --tls-verify=false "localhost/arbor-$1" "docker://$H/$2"; }
machine() {
  quiet "$ARBOR" admin init-fs "$1"
  quiet "$ARBOR" --sysroot "$1" admin os-init debian
}
# upgrade NAME SYSROOT LOG BYTES-FN: times `arbor upgrade`, records the bytes sent.
upgrade() {
  : > "$3"
  ms "$1" "$ARBOR" --sysroot "$2" upgrade
  "$4" > "$W/$1.bytes"
  "$ARBOR" --sysroot "$2" status --json > "$W/$1.status"
}

measure() { # CASE OLD NEW
  local c=$1 old=$2 new=$3
  echo "$c: $old -> $new" >&2
  # The image, followed by its tag.
  push "$old" "img/$c:latest"
  machine "$W/m-$c-layers"
  quiet "$ARBOR" --sysroot "$W/m-$c-layers" switch "docker://$H/img/$c:latest"
  push "$new" "img/$c:latest"
  upgrade "$c-layers" "$W/m-$c-layers" "$W/registry/access.log" reg_bytes
  # The same two images as arbor versions, published with a delta in the registry
  # and, the very same files, in nginx's folder.
  push "$old" "img/$c:old"
  push "$new" "img/$c:new"
  local repo=$W/$c-build keys=$W/$c-keys reg=oci://$H/arbor/$c
  quiet "$ARBOR" --repo "$repo" init
  quiet "$ARBOR" --repo "$repo" compose image "docker://$H/img/$c:old" -b v1
  quiet "$ARBOR" --repo "$repo" compose image "docker://$H/img/$c:new" -b v2
  quiet "$ARBOR" publish init "$reg" --keys "$keys"
  local v
  for v in 1 2; do
    quiet "$ARBOR" --repo "$repo" publish add "$reg" --keys "$keys" --channel stable --version $v --ref v$v
    if [[ $v == 1 ]]; then
      rm -rf "$W/srv/$c" && cp -a "$keys/publication" "$W/srv/$c" && chmod 755 "$W/srv/$c"
      for via in oci http; do
        machine "$W/m-$c-$via"
        local url=$reg; [[ $via == http ]] && url=http://127.0.0.1:$PORT/$c
        quiet "$ARBOR" --sysroot "$W/m-$c-$via" remote add origin "$url" --trust "$keys/publication/metadata/1.root.json"
        quiet "$ARBOR" --sysroot "$W/m-$c-$via" deploy origin:stable
      done
    fi
  done
  rm -rf "$W/srv/$c" && cp -a "$keys/publication" "$W/srv/$c" && chmod 755 "$W/srv/$c"
  upgrade "$c-oci" "$W/m-$c-oci" "$W/registry/access.log" reg_bytes
  upgrade "$c-http" "$W/m-$c-http" "$W/nginx/access.log" http_bytes
  local s
  for s in layers oci http; do
    grep -q '"staged": {' "$W/$c-$s.status" ||
      { echo "$c-$s: nothing was staged:" >&2; cat "$W/$c-$s.status" >&2; exit 1; }
  done
}
[[ ${CASES:-app point} == *app* ]] && measure app base update
[[ ${CASES:-app point} == *point* ]] && measure point base base-b

row() { # CASE
  local c=$1 l o h
  l=$(cat "$W/$c-layers.bytes"); o=$(cat "$W/$c-oci.bytes"); h=$(cat "$W/$c-http.bytes")
  printf '%-6s %14s B %7s ms | %14s B %7s ms | %14s B %7s ms | %6sx\n' "$c" \
    "$l" "$(median "$c-layers")" "$o" "$(median "$c-oci")" "$h" "$(median "$c-http")" \
    "$(ratio "$l" "$o")"
}
echo "update  image layers (switch)        | arbor delta, registry          | arbor delta, HTTP              | layers/delta"
for c in ${CASES:-app point}; do row "$c"; done
