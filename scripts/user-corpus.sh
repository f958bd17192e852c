#!/usr/bin/env bash
# A copy of the shared corpus that one unprivileged user's tests can use, made for the
# tests that run in a user namespace (integration/common/userns.rs) and kept until the
# corpus changes.
#
# The corpus is built by root; in a user namespace its files belong to no mapped id,
# so they can be read but not hardlinked, and root's private files (/etc/shadow,
# ssh host keys, /root) cannot be read at all. The copy is made inside a namespace
# (`unshare --map-root-user --map-auto`): a file of uid N in the corpus is a file of
# uid N there, so owners, modes and hardlinks are those of the corpus. What this user
# cannot read becomes an empty file or folder with the owner and mode it had: the
# tests that need those contents (none read a password hash) stay with real root.
#
# usage: user-corpus.sh CORPUS COPY   (idempotent; COPY/READY records which corpus)
set -euo pipefail
src=${1:?corpus}
dest=${2:?copy}
[[ -f $src/READY ]] || { echo "user-corpus: no corpus at $src (run make-trees.sh as root)" >&2; exit 1; }
stamp=$(stat -c %Y "$src/READY")
exec 9>"$dest.lock"
flock 9
[[ -f $dest/READY && $(cat "$dest/READY") == "$stamp" ]] && exit 0

inside() { unshare --map-root-user --map-auto -- "$@"; }
[[ -e $dest ]] && inside rm -rf "$dest"
tmp=$dest.tmp
[[ -e $tmp ]] && inside rm -rf "$tmp"
mkdir "$tmp"

# What cannot be read, with its owner and mode, to stand in for it.
unreadable=$(mktemp)
trap 'rm -f "$unreadable"' EXIT
(cd "$src" && find . \( -type f -o -type d \) ! -readable -printf '%y %m %U %G %p\n' 2>/dev/null || true) >"$unreadable"

# tar exits 2 for the files it could not read; anything else is a failure.
set +o pipefail
tar -C "$src" --numeric-owner --xattrs --xattrs-include='*' -cf - . 2>/dev/null |
  inside tar -C "$tmp" --numeric-owner --same-owner --xattrs --xattrs-include='*' -xpf -
status=("${PIPESTATUS[@]}")
set -o pipefail
((status[0] == 0 || status[0] == 2)) || { echo "user-corpus: reading $src failed" >&2; exit 1; }
((status[1] == 0)) || { echo "user-corpus: writing $tmp failed" >&2; exit 1; }

# Stand-ins, created in the namespace so that they get their owners. Parents first
# (find lists a folder before what is in it).
inside bash -euo pipefail -c '
  cd "$1"
  while read -r kind mode uid gid path; do
    [[ -e $path ]] && continue
    if [[ $kind == d ]]; then mkdir -- "$path"; else : >"$path"; fi
    chown "$uid:$gid" -- "$path"
    chmod "$mode" -- "$path"
  done <"$2"
' stand-in "$tmp" "$unreadable"

echo "$stamp" | inside tee "$tmp/READY" >/dev/null
mv "$tmp" "$dest"
