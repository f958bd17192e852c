#!/usr/bin/env bash
# How long `arbor compose image` takes to commit a container image of corpus a, against
# the physical reference: `skopeo copy` of the same image to an OCI folder plus `tar -x`
# of its layers, then a sync (arbor's import is durable when it returns, so the
# reference is made durable too). Both read the image from podman's storage.
#
#   benches/image.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
RUNS=${1:-3}
CORPUS=${ARBOR_CORPUS:-/var/tmp/arbor-corpus}
IMAGE=localhost/arbor-bench-corpus-a:latest
cargo build --release --quiet --bins
ARBOR=$RELEASE/arbor
W=$(mktemp -d "${BENCH_DIR:-/var/tmp}/arbor-bench.XXXXXX")
trap 'rm -rf "$W"' EXIT
if ! podman image exists "$IMAGE"; then
  tar --xattrs --xattrs-include='*' --numeric-owner -C "$CORPUS/a" -cf "$W/a.tar" .
  podman import --quiet "$W/a.tar" "$IMAGE" >/dev/null
  rm "$W/a.tar"
fi
reference() {
  rm -rf "$W/oci" "$W/x"; mkdir "$W/x"
  skopeo copy --quiet "containers-storage:$IMAGE" "oci:$W/oci:latest"
  python3 - "$W/oci" <<'PY' | while read -r blob; do tar -xf "$blob" -C "$W/x"; done
import json, sys
d = sys.argv[1]
idx = json.load(open(f"{d}/index.json"))
m = json.load(open(f"{d}/blobs/sha256/{idx['manifests'][0]['digest'][7:]}"))
for l in m["layers"]:
    print(f"{d}/blobs/sha256/{l['digest'][7:]}")
PY
  sync
}
arbor_import() {
  rm -rf "$W/sr"
  "$ARBOR" admin init-fs "$W/sr" >/dev/null
  "$ARBOR" --sysroot "$W/sr" compose image "containers-storage:$IMAGE" -b img >/dev/null
}
for i in $(seq "$RUNS"); do
  ms reference reference
  ms arbor arbor_import
done
r=$(median reference); a=$(median arbor)
echo "image import of corpus a (median of $RUNS): skopeo copy + tar -x + sync $r ms, arbor compose image $a ms, ratio $(ratio "$a" "$r") (goal <= 1.5)"
