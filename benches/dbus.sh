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
CORPUS=${ARBOR_CORPUS:-/var/tmp/arbor-corpus}
A=${1:-$CORPUS/a}
B=${2:-$CORPUS/b}
cargo build --release --quiet --bins
ARBOR=$PWD/target/release/arbor
ARBORD=$PWD/target/release/arbord
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

cat > "$W/bus.conf" <<CONF
<busconfig>
  <listen>unix:path=$W/bus.sock</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
  </policy>
  <include>$PWD/dbus/org.arbor.Arbor1.conf</include>
</busconfig>
CONF
dbus-daemon --config-file="$W/bus.conf" --nofork 2>/dev/null & pids+=($!)
ADDR=unix:path=$W/bus.sock
for _ in $(seq 100); do [[ -S $W/bus.sock ]] && break; sleep 0.05; done
ARBOR_LOG=warn "$ARBORD" --sysroot "$S" --bus-address "$ADDR" --idle-exit 0 & pids+=($!)
D=${pids[-1]}
for _ in $(seq 100); do
  busctl --address="$ADDR" status org.arbor.Arbor1 >/dev/null 2>&1 && break; sleep 0.05
done
sleep 2
rss() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$D/status"; }
start_rss=$(rss VmRSS)
ARBOR_BUS_ADDRESS=$ADDR cargo bench --quiet --bench dbus_status 2>/dev/null | tee "$W/latency"
sleep 2
idle_rss=$(rss VmRSS); peak=$(rss VmHWM)
mb() { awk -v k="$1" 'BEGIN { printf "%.1f MB", k / 1024 }'; }
cat <<OUT
arbord idle RSS after start-up: $(mb "$start_rss")
arbord idle RSS after 1100 status reads: $(mb "$idle_rss") (peak $(mb "$peak"))
goal: idle RSS <= 15 MB
OUT
