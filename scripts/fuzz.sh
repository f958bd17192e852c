#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for a bounded time each (FUZZ_SECONDS, 20 by
# default): the decoders of outside bytes must not panic, allocate past their bounds
# (-rss_limit_mb) or accept an unsafe name. Without a sanitizer: the decoders are safe
# Rust, and an instrumented build of the C dependencies would double CI's build time. The corpus grows in /var/tmp/arbor-fuzz across runs; the
# seeds in fuzz/seeds, plus objects of a real commit, start it. A crash fails the run
# and leaves its input in fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${FUZZ_SECONDS:-20}
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2
corpus=/var/tmp/arbor-fuzz
# ARBOR_FUZZ_TARGET: a cargo target folder kept between runs (CI), for the nightly
# release build of the fuzz targets' dependencies.
target_dir=()
[[ -n ${ARBOR_FUZZ_TARGET:-} ]] && target_dir=(--target-dir "$ARBOR_FUZZ_TARGET")
mkdir -p "$corpus"

# Real objects as seeds: a commit of a small tree (arbor's own man pages).
cargo build --quiet --workspace --bins
seeds=$(mktemp -d)
target/debug/arbor --repo "$seeds/repo" init >/dev/null
target/debug/arbor --repo "$seeds/repo" commit man -b seed --subject seed >/dev/null 2>&1
mkdir -p "$corpus/objects" "$corpus/delta"
# A real delta from that tree (the delta target starts every input from it) to the
# tree with one page edited and one added.
cp -r man "$seeds/man2"
echo "edited" >> "$seeds/man2/arbor.1"
head -c 4096 /dev/urandom > "$seeds/man2/new-file"
target/debug/arbor --repo "$seeds/repo" commit "$seeds/man2" -b seed2 --subject seed2 >/dev/null 2>&1
target/debug/arbor --repo "$seeds/repo" delta create seed seed2 -o "$corpus/delta/real.delta" >/dev/null
find "$seeds/repo/objects" -type f \( -name '*.dirtree' -o -name '*.commit' -o -name '*.dirmeta' \) \
  -exec cp {} "$corpus/objects/" \;

log=$(mktemp)
trap 'rm -rf "$seeds" "$log"' EXIT
for t in $(cargo +nightly fuzz list --fuzz-dir fuzz); do
  mkdir -p "$corpus/$t"
  # A target whose seeds come only from the commit above has no fuzz/seeds folder (git
  # keeps no empty folders), and libFuzzer refuses a corpus folder that is missing.
  dirs=("$corpus/$t")
  [ -d "fuzz/seeds/$t" ] && dirs+=("fuzz/seeds/$t")
  if ! cargo +nightly fuzz run --fuzz-dir fuzz -O --sanitizer none "${target_dir[@]}" "$t" "${dirs[@]}" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -max_len=65536 \
    -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "fuzz: $t failed; the input is in fuzz/artifacts/$t" >&2
    exit 1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  echo "fuzz: $t: $runs inputs in ${secs}s, no failure"
done

# The interfaces of arbord and `arbor serve` under generated calls and requests
# (integration/hostile.rs): after each, a legitimate caller is answered at once.
if ! ARBOR_PROP_SECONDS=$secs cargo test --quiet --test hostile -- --ignored \
  --test-threads=1 --nocapture fuzz_ >"$log" 2>&1; then
  grep -E 'ARBOR_PROP_SEED|panicked' -A12 "$log" | tail -n 60 >&2
  echo "fuzz: the interface property tests failed; rerun with the ARBOR_PROP_SEED above" >&2
  exit 1
fi
grep -E 'generated' "$log" | sed 's/^/fuzz: /'
