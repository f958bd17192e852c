#!/usr/bin/env bash
# The end-to-end tests as a contributor without root runs them: built as a user's
# build is (the tests that need real root compiled as ignored) and run as an
# unprivileged user with subordinate ids, so that the tests that need root only for
# owners and mounts run in a user namespace (integration/common/userns.rs). Prints
# each test file's counts and the share of the tests that ran and passed; fails if
# any failed. Run as root (it makes the user); scripts/test.sh does not run it.
#
# usage: scripts/test-unprivileged.sh [USER]   (default arbor-tester, made if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
user=${1:-arbor-tester}
[[ $(id -u) == 0 ]] || { echo "test-unprivileged: run as root (it runs the tests as $user)" >&2; exit 1; }
if ! id "$user" >/dev/null 2>&1; then
  useradd --create-home --shell /bin/bash "$user"
fi
# A range of subordinate ids of its own for the user namespaces (--map-auto).
if ! grep -q "^$user:" /etc/subuid || ! grep -q "^$user:" /etc/subgid; then
  top=$(cat /etc/subuid /etc/subgid 2>/dev/null | awk -F: '{e=$2+$3; if (e>m) m=e} END {print (m>100000?m:100000)}')
  usermod --add-subuids "$top-$((top + 65535))" --add-subgids "$top-$((top + 65535))" "$user"
fi
home=$(getent passwd "$user" | cut -d: -f6)

cargo build --workspace --bins --quiet
# The test binaries, built as a user's build is (see build.rs).
built=$(mktemp)
trap 'rm -f "$built"' EXIT
ARBOR_TEST_AS_USER=1 cargo test -p arbor --tests --no-run --message-format=json >"$built"
mapfile -t bins < <(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])
' "$built")
as_user() { runuser -u "$user" -- env -i HOME="$home" PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin "$@"; }

total=0 passed=0 failed=0 ignored=0
for entry in "${bins[@]}"; do
  read -r name bin <<<"$entry"
  listed=$(as_user "$bin" --list 2>/dev/null | grep -c ': test$' || true)
  if [[ $name == architecture ]]; then
    # It runs `cargo metadata`, and this user has no toolchain: counted, not run.
    printf '%-12s %3d tests: not run (they need cargo)\n' "$name" "$listed"
    total=$((total + listed))
    continue
  fi
  log=target/unprivileged-$name.log
  as_user "$bin" --test-threads=2 >"$log" 2>&1 || true
  line=$(grep '^test result:' "$log" | tail -1)
  p=$(sed -E 's/.* ([0-9]+) passed.*/\1/' <<<"$line"); f=$(sed -E 's/.* ([0-9]+) failed.*/\1/' <<<"$line")
  i=$(sed -E 's/.* ([0-9]+) ignored.*/\1/' <<<"$line")
  [[ -n $line ]] || { p=0; f=$listed; i=0; }
  printf '%-12s %3d tests: %3d passed, %3d ignored (real root, or a flag), %d failed\n' "$name" "$listed" "$p" "$i" "$f"
  ((f == 0)) || grep -E '^test .* FAILED$' "$log" | sed 's/^/    /'
  total=$((total + listed)) passed=$((passed + p)) failed=$((failed + f)) ignored=$((ignored + i))
done
echo "as $user: $passed of $total end-to-end tests ran and passed without root ($((100 * passed / total))%), $ignored ignored (they need real root, or a flag such as ARBOR_FUZZ), $failed failed"
((failed == 0))
