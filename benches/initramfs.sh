#!/usr/bin/env bash
# How much arbor adds to a Debian initramfs: corpus a's initramfs built by Debian's
# mkinitramfs in a chroot, once as Debian makes it and once with arbor's hook and the
# stripped release arbor-prepare-root (what the package installs), same tree, same run.
#
#   benches/initramfs.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CORPUS=${ARBOR_CORPUS:-/var/tmp/arbor-corpus}
cargo build --release --quiet --bin arbor-prepare-root
W=$(mktemp -d "${BENCH_DIR:-/var/tmp}/arbor-bench.XXXXXX")
trap 'rm -rf "$W"' EXIT
KVER=$(ls "$CORPUS/a/usr/lib/modules" | head -1)
strip -o "$W/arbor-prepare-root" target/release/arbor-prepare-root
unshare --mount --propagation private bash -c '
  set -euo pipefail
  W='"$W"'
  mkdir -p $W/upper $W/work $W/root
  mount -t overlay overlay -o lowerdir='"$CORPUS"'/a,upperdir=$W/upper,workdir=$W/work $W/root
  mount -t proc proc $W/root/proc
  mount --rbind /dev $W/root/dev
  mount --rbind /sys $W/root/sys
  chroot $W/root mkinitramfs -o /tmp/debian.img '"$KVER"' 2>/dev/null
  install -D -m 755 $W/arbor-prepare-root $W/root/usr/lib/arbor/arbor-prepare-root
  install -D -m 755 initramfs-tools/hooks/arbor $W/root/usr/share/initramfs-tools/hooks/arbor
  install -D -m 755 initramfs-tools/scripts/local-bottom/arbor \
    $W/root/usr/share/initramfs-tools/scripts/local-bottom/arbor
  chroot $W/root mkinitramfs -o /tmp/arbor.img '"$KVER"' 2>/dev/null
'
debian=$(stat -c %s "$W/upper/tmp/debian.img")
arbor=$(stat -c %s "$W/upper/tmp/arbor.img")
binary=$(stat -c %s "$W/arbor-prepare-root")
mb() { awk -v b="$1" 'BEGIN { printf "%.2f MB", b / 1000000 }'; }
echo "arbor-prepare-root (stripped): $(mb "$binary")"
echo "initramfs of corpus a, Debian's own: $(mb "$debian")"
echo "initramfs of corpus a, with arbor:   $(mb "$arbor") (+$(mb $((arbor - debian))))"
