#!/usr/bin/env bash
# The full test suite: formatting, lints, unit tests, the end-to-end tests on real
# Debian trees, and the TUF conformance suite. `ARBOR_TORTURE=1` adds the
# multi-minute torture runs and the hundred-machine fleet, `ARBOR_FUZZ=1` a bounded
# run of every fuzz target (scripts/fuzz.sh) and `ARBOR_VM=1` the VM boot loop (qemu,
# about 35 minutes); CI sets all three.
set -euo pipefail
cd "$(dirname "$0")/.."
# Each phase's minutes, printed as it ends and summed up at the end: the whole run
# must stay well within CI's limit.
phases=()
begun=$SECONDS
phase_start=$SECONDS
phase() {
  local line
  line=$(printf 'test.sh: %-22s %4d s' "$1" $((SECONDS - phase_start)))
  echo "$line"
  phases+=("$line")
  phase_start=$SECONDS
}
bash scripts/setup.sh
phase setup
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
phase "fmt, clippy"
# The Debian package, checked by lintian; the image and VM tests install it.
deb=$(bash scripts/build-deb.sh)
phase "debian package"
# Every crate's binaries (arbord, arbor-prepare-root) first: the tests run them.
cargo build --workspace --bins --quiet
phase "build"
ARBOR_DEB=$deb cargo test --workspace --all-targets --quiet 2>&1
phase "tests"
# The crash sweep's table: each failpoint, the operation crashed there, what held.
[[ -f target/failpoint-sweep.txt ]] && cat target/failpoint-sweep.txt
# An outside judge of the TUF client: the TUF project's conformance suite.
bash scripts/tuf-conformance.sh
phase "tuf conformance"
if [[ ${ARBOR_TORTURE:-} == 1 ]]; then
  cargo test --test deploy --test fleet_hundred --quiet -- --ignored torture 2>&1
  # The hundred-machine fleet's timeline: phases, reports, the controller's decisions.
  [[ -f target/fleet-timeline.txt ]] && cat target/fleet-timeline.txt
  phase torture
fi
if [[ ${ARBOR_FUZZ:-} == 1 ]]; then
  bash scripts/fuzz.sh
  phase fuzz
fi
if [[ ${ARBOR_VM:-} == 1 ]]; then
  ARBOR_DEB=$deb cargo test --test vm --test vm_trixie --quiet -- --ignored --test-threads=1 2>&1
  phase "vm boot loop"
fi
printf '%s\n' "${phases[@]}"
echo "test.sh: all passed in $(((SECONDS - begun) / 60)) min $(((SECONDS - begun) % 60)) s"
