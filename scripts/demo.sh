#!/usr/bin/env bash
# A tour of what arbor does today, on a throwaway repository in a temporary folder:
# commit a real Debian tree, commit its point update on top, look at history and
# differences, check one out, re-commit it without rereading a file, verify, prune.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --quiet
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
