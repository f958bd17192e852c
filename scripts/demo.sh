#!/usr/bin/env bash
# A tour of what arbor does today, on a throwaway repository in a temporary folder:
# commit a real Debian tree, commit its point update on top, look at history and
# differences, check one out, re-commit it without rereading a file, verify, prune.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --quiet --workspace --bins
arbor=$PWD/target/release/arbor
corpus=${ARBOR_CORPUS:-/var/tmp/arbor-corpus}
work=$(mktemp -d "${TMPDIR:-/var/tmp}/arbor-demo.XXXXXX")
trap 'rm -rf "$work"' EXIT
repo=$work/repo
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

step "A fresh object store"
run "$arbor" --repo "$repo" init

step "Commit Debian bookworm (corpus a: $(grep '^a ' "$corpus/MANIFEST" | cut -d' ' -f2-))"
run "$arbor" --repo "$repo" commit -b debian/bookworm/x86_64 -s "bookworm" --metadata version=12.0 "$corpus/a"

step "Commit the point update (corpus b) on the same branch"
run "$arbor" --repo "$repo" commit -b debian/bookworm/x86_64 -s "bookworm point update" --metadata version=12.1 "$corpus/b"

step "History"
run "$arbor" --repo "$repo" log debian/bookworm/x86_64

step "What the update changed (first lines of $("$arbor" --repo "$repo" diff debian/bookworm/x86_64^ debian/bookworm/x86_64 | wc -l) changes)"
"$arbor" --repo "$repo" diff debian/bookworm/x86_64^ debian/bookworm/x86_64 | grep -E 'bin/(perl|python3|nginx)' | head

step "Look inside without checking out"
run "$arbor" --repo "$repo" ls debian/bookworm/x86_64 /usr/sbin/nginx
run "$arbor" --repo "$repo" cat debian/bookworm/x86_64 /etc/debian_version

step "Check out (hardlinks into the store, in parallel)"
run "$arbor" --repo "$repo" checkout debian/bookworm/x86_64 "$work/root"

step "Re-commit the checkout: the inode cache knows every file, nothing is reread"
run "$arbor" --repo "$repo" commit -b scratch "$work/root"

step "Verify every object and every ref"
run "$arbor" --repo "$repo" fsck

step "Drop the scratch branch and prune what nothing reaches any more"
run "$arbor" --repo "$repo" refs --delete scratch
run "$arbor" --repo "$repo" prune --dry-run
run "$arbor" --repo "$repo" prune
run "$arbor" --repo "$repo" refs

sysroot=$work/sysroot
step "A sysroot (a machine's physical root, here a folder) with one stateroot"
run "$arbor" admin init-fs "$sysroot"
run "$arbor" --sysroot "$sysroot" admin os-init debian

step "Compose both trees into images (kernel in /usr/lib/modules, /usr/etc, empty /var)"
run "$arbor" --sysroot "$sysroot" compose rootfs "$corpus/a" -b debian/stable --version 12.0
run "$arbor" --sysroot "$sysroot" compose rootfs "$corpus/b" -b debian/stable --version 12.1

step "Deploy 12.0, then change its /etc as an administrator would"
run "$arbor" --sysroot "$sysroot" deploy debian/stable^ --karg quiet
deployment=$(ls -d "$sysroot"/arbor/deploy/debian/deploy/*.0 | head -1)
echo "demo-host" > "$deployment/etc/hostname"
echo "\$ echo demo-host > <deployment>/etc/hostname"

step "Deploy 12.1: the local /etc change is carried over, 12.0 stays as the rollback"
run "$arbor" --sysroot "$sysroot" deploy debian/stable
run "$arbor" --sysroot "$sysroot" status
new=$("$arbor" --sysroot "$sysroot" status --json | python3 -c 'import json,sys; d=json.load(sys.stdin)["deployments"][0]; print(d["commit"]+"."+str(d["serial"]))')
run cat "$sysroot/arbor/deploy/debian/deploy/$new/etc/hostname"

step "The boot entries a loader reads (boot/loader is switched by one rename)"
run ls -l "$sysroot/boot"
run cat "$sysroot"/boot/loader/entries/*.conf

step "Roll back: 12.0 boots next"
run "$arbor" --sysroot "$sysroot" rollback

step "What the point update changed, package by package"
run "$arbor" --sysroot "$sysroot" db diff debian/stable^ debian/stable

step "Layer a package on the default deployment (apt on an overlay of it; the store is never written)"
run "$arbor" --sysroot "$sysroot" install hello
run "$arbor" --sysroot "$sysroot" status
layered=$("$arbor" --sysroot "$sysroot" status --json | python3 -c 'import json,sys; d=json.load(sys.stdin)["deployments"][0]; print(d["commit"]+"."+str(d["serial"]))')
run chroot "$sysroot/arbor/deploy/debian/deploy/$layered" /usr/bin/hello
run "$arbor" --sysroot "$sysroot" fsck
