#!/usr/bin/env bash
# Builds the test images from the Containerfiles here, offline, into podman's storage:
# localhost/arbor-base, localhost/arbor-update, localhost/arbor-broken,
# localhost/arbor-trixie, localhost/arbor-trixie-dracut, and the trixie-dracut versions
# of the activation scenario: trixie-live, trixie-soft, trixie-kexec, trixie-bad and
# trixie-broken.
#
#   containerfiles/build.sh [IMAGE...]   default: all, in that order (each FROM an earlier)
#
# `base-b` (not in the default list; benches/image-update.sh builds it) is base made
# from corpus b, a after Debian's point update: the same image, rebuilt a release later.
#
# The base image's root comes from corpus a as a tarball (FROM scratch + ADD), and it
# installs arbor from its Debian package (scripts/build-deb.sh) with the packages the
# corpus lacks, downloaded once by scripts/setup.sh into $ARBOR_IMAGES/debs. podman's
# layer cache makes a rebuild with unchanged inputs quick.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
CORPUS=${ARBOR_CORPUS:-/var/tmp/arbor-corpus}
IMAGES=${ARBOR_IMAGES:-/var/tmp/arbor-images}
names=("$@")
((${#names[@]})) || names=(base update broken trixie trixie-dracut trixie-live trixie-soft trixie-kexec trixie-bad trixie-broken)
deb=${ARBOR_DEB:-$(bash "$root/scripts/build-deb.sh")}
[[ -f $IMAGES/debs/READY ]] || { echo "build.sh: run scripts/setup.sh first ($IMAGES/debs)" >&2; exit 1; }
# rootfs_tar TREE: the corpus tree as a tarball, made again when the corpus is newer.
rootfs_tar() {
  local t=$1
  if [[ ! -f $IMAGES/rootfs-$t.tar || $CORPUS/READY -nt $IMAGES/rootfs-$t.tar ]]; then
    tar --xattrs --xattrs-include='*' --numeric-owner -C "$CORPUS/$t" -cf "$IMAGES/rootfs-$t.tar.tmp" .
    mv "$IMAGES/rootfs-$t.tar.tmp" "$IMAGES/rootfs-$t.tar"
  fi
}
rootfs_tar a
for name in "${names[@]}"; do
  ctx=$IMAGES/context-$name
  rm -rf "$ctx"
  cp -a "$here/${name%-b}" "$ctx"
  case $name in
    base|base-b)
      tree=a; [[ $name == base-b ]] && tree=b && rootfs_tar b
      ln "$IMAGES/rootfs-$tree.tar" "$ctx/rootfs.tar"
      mkdir "$ctx/debs"
      cp "$IMAGES"/debs/*.deb "$deb" "$ctx/debs/"
      cp "$here"/base/* "$ctx/" ;;
    update)
      cp "$CORPUS"/debs/hello_*.deb "$ctx/hello.deb" ;;
    trixie)
      [[ -f $IMAGES/debs-trixie/READY ]] || { echo "build.sh: run scripts/setup.sh first ($IMAGES/debs-trixie)" >&2; exit 1; }
      rootfs_tar t
      ln "$IMAGES/rootfs-t.tar" "$ctx/rootfs.tar"
      mkdir "$ctx/debs"
      cp "$IMAGES"/debs-trixie/*.deb "$deb" "$ctx/debs/"
      for f in "$here"/base/*; do [[ $(basename "$f") == Containerfile ]] || cp "$f" "$ctx/"; done ;;
    trixie-dracut)
      [[ -f $IMAGES/debs-trixie-dracut/READY ]] || { echo "build.sh: run scripts/setup.sh first ($IMAGES/debs-trixie-dracut)" >&2; exit 1; }
      mkdir "$ctx/debs"
      cp "$IMAGES"/debs-trixie-dracut/*.deb "$ctx/debs/" ;;
    trixie-live)
      cp "$CORPUS"/debs/hello_*.deb "$ctx/hello.deb"
      cp "$here"/update/demo-server "$here"/update/arbor-demo.conf "$ctx/" ;;
    trixie-bad)
      cp "$here"/trixie-soft/rebuild-package "$here"/broken/10-required "$ctx/" ;;
    trixie-broken)
      cp "$CORPUS"/debs/hello_*.deb "$ctx/hello.deb"
      cp "$here"/update/demo-server "$here"/update/arbor-demo.conf "$here"/broken/10-required "$ctx/"
      cp "$here"/trixie-live/probe "$here"/trixie-live/arbor-test-probe.service "$ctx/" ;;
  esac
  # chroot isolation: RUN steps need no OCI runtime or cgroups (build hosts and CI
  # machines often have neither in a usable state). It shares the caller's network,
  # so the build runs in a network namespace of its own: no network at all.
  unshare --net podman build --quiet --pull=never --format oci --isolation=chroot \
    -t "localhost/arbor-$name:latest" -f "$ctx/Containerfile" "$ctx" >/dev/null
  rm -rf "$ctx"
  echo "localhost/arbor-$name:latest"
done
