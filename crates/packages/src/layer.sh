# Runs apt/dpkg for `arbor install` on an overlay of the base checkout. Run by arbor
# as `unshare --mount --propagation private --pid --fork --kill-child -- sh -c THIS
# arbor-layer MERGED LOWER UPPER WORK DEBS UPDATE [--purge PKG…] [--install ARG…]`:
# every mount below vanishes with the namespace, and every process a maintainer
# script starts dies with it.
set -eu
M=$1 L=$2 U=$3 W=$4 D=$5 UPDATE=$6
shift 6
purge="" install=""
mode=""
for a in "$@"; do
  case $a in
    --purge|--install) mode=$a ;;
    *) if [ "$mode" = --purge ]; then purge="$purge $a"; else install="$install $a"; fi ;;
  esac
done

mount -t overlay overlay \
  -o "lowerdir=$L,upperdir=$U,workdir=$W,redirect_dir=off,metacopy=off,index=off" "$M"
# API filesystems and scratch space: nothing written there reaches the layer.
mount -t proc proc "$M/proc"
mount --rbind /dev "$M/dev"
mount --rbind /sys "$M/sys"
for d in run tmp var; do mount -t tmpfs "arbor-$d" "$M/$d"; done
mkdir -p "$M/var/lib/apt/lists/partial" "$M/var/cache/apt/archives/partial" "$M/var/log/apt" \
  "$M/var/cache/debconf" "$M/run/arbor-debs"
ln -s ../../usr/lib/arbor/dpkg "$M/var/lib/dpkg"
# Packages install their /etc defaults into /usr/etc, where images keep them.
mkdir -p "$M/etc"
mount --bind "$M/usr/etc" "$M/etc"
mount --bind "$D" "$M/run/arbor-debs"
# Name resolution for apt, and no service started by a maintainer script; both are
# removed again before the layer is read.
created=""
if [ ! -e "$M/etc/resolv.conf" ] && [ ! -L "$M/etc/resolv.conf" ] && [ -e /etc/resolv.conf ]; then
  : > "$M/etc/resolv.conf"; created="$created $M/etc/resolv.conf"
  mount --bind /etc/resolv.conf "$M/etc/resolv.conf"
fi
if [ ! -e "$M/usr/sbin/policy-rc.d" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$M/usr/sbin/policy-rc.d"; chmod 755 "$M/usr/sbin/policy-rc.d"
  created="$created $M/usr/sbin/policy-rc.d"
fi
finish() {
  umount "$M/etc/resolv.conf" 2>/dev/null || true
  for f in $created; do rm -f "$f"; done
}
trap finish EXIT

run() { chroot "$M" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
  LC_ALL=C.UTF-8 "$@"; }
if [ -n "$purge" ]; then
  echo "arbor-layer: dpkg --purge$purge"
  # shellcheck disable=SC2086 # names checked by arbor: no spaces, no globs
  run dpkg --purge $purge
fi
if [ -n "$install" ]; then
  if [ "$UPDATE" = update ]; then
    echo "arbor-layer: apt-get update"
    run apt-get update -q
  fi
  echo "arbor-layer: apt-get install$install"
  # shellcheck disable=SC2086
  run apt-get install -y -q --no-install-recommends --allow-downgrades \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold $install
fi
