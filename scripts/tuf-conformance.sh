#!/usr/bin/env bash
# Runs the TUF project's client conformance suite (../shared/vendor/tuf-conformance,
# unmodified; ARBOR_TUF_CONFORMANCE names another copy) against arbor's TUF client
# (src/bin/arbor-tuf-client.rs). The suite runs from a scratch copy, so the vendored
# folder stays untouched; its Python dependencies are in the virtualenv that
# scripts/setup.sh makes. Expected failures, with their reasons, are in
# scripts/tuf-conformance/arbor-tuf-client.xfails.
set -euo pipefail
cd "$(dirname "$0")/.."
here=$(pwd)
suite=${ARBOR_TUF_CONFORMANCE:-${ARBOR_SHARED:-$here/../shared}/vendor/tuf-conformance}
venv=${ARBOR_TUF_VENV:-/var/tmp/arbor-tuf-venv}
if [[ ! -d $suite/tuf_conformance ]]; then
  # The suite is vendored beside the checkout, not in it: a checkout elsewhere says
  # so and goes on (ARBOR_SHARED or ARBOR_TUF_CONFORMANCE point to it).
  echo "tuf-conformance: SKIPPED: no suite at $suite (set ARBOR_SHARED)" >&2
  exit 0
fi
[[ -x $venv/bin/python ]] || { echo "tuf-conformance: no virtualenv at $venv (scripts/setup.sh makes it)" >&2; exit 1; }
cargo build --quiet --bin arbor-tuf-client
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$suite/." "$work/suite"
cd "$work/suite"
rc=0
PYTHONDONTWRITEBYTECODE=1 "$venv/bin/python" -m pytest -q -p no:cacheprovider tuf_conformance \
  --entrypoint "$here/scripts/tuf-conformance/arbor-tuf-client" -rfE >"$work/log" 2>&1 || rc=$?
if ((rc)); then tail -n 80 "$work/log" >&2; fi
# pytest's last line: "96 passed, 17 xfailed in 9.79s" (a strict xfail that passes
# counts as failed).
echo "tuf-conformance: $(tail -n 1 "$work/log" | tr -d '=' | sed 's/^ *//')"
exit "$rc"
