#!/usr/bin/env bash
# arbord's idle memory and the latency of a status read, on a sysroot with two real
# deployments (corpus trees a and b).
#
#   benches/dbus.sh [TREE_A] [TREE_B]
#
# A private dbus-daemon (system-bus policy, our policy file included) serves a release
# arbord; its RSS is read from /proc after start-up and again, idle, after 1100 reads
# by a Rust client (benches/dbus_status.rs). Goal: idle RSS <= 15 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
CORPUS=${ARBOR_CORPUS:-/var/tmp/arbor-corpus}
A=${1:-$CORPUS/a}
B=${2:-$CORPUS/b}
cargo build --release --quiet --bins
ARBOR=$RELEASE/arbor
ARBORD=$RELEASE/arbord
W=$(mktemp -d "${BENCH_DIR:-/var/tmp}/arbor-bench.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$W"; }
trap cleanup EXIT
S=$W/sysroot
"$ARBOR" admin init-fs "$S" >/dev/null
"$ARBOR" --sysroot "$S" admin os-init debian >/dev/null
"$ARBOR" --sysroot "$S" compose rootfs "$A" -b os/a --version a >/dev/null 2>&1
"$ARBOR" --sysroot "$S" compose rootfs "$B" -b os/b --version b >/dev/null 2>&1
"$ARBOR" --sysroot "$S" deploy os/a >/dev/null 2>&1
"$ARBOR" --sysroot "$S" deploy os/b >/dev/null 2>&1

bus_and_daemon "$S"
sleep 2
start_rss=$(rss VmRSS)
ARBOR_BUS_ADDRESS=$ADDR cargo bench --quiet --bench dbus_status 2>/dev/null | tee "$W/latency"
sleep 2
idle_rss=$(rss VmRSS); peak=$(rss VmHWM); idle_anon=$(rss RssAnon)
cat <<OUT
arbord idle RSS after start-up: $(mb "$start_rss")
arbord idle RSS after 1100 status reads: $(mb "$idle_rss") (anonymous $(mb "$idle_anon"), peak $(mb "$peak"))
goal: idle RSS <= 15 MB
OUT
