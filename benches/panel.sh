#!/usr/bin/env bash
# What a settings panel waits for, on the corpus point update a → b published behind a
# real nginx: the time from calling Check to its transaction's Finished signal, with
# AvailableUpdate (and its package changes) read then, and arbord's RSS while a panel
# is registered.
#
#   benches/panel.sh [RUNS]
#
# A client sysroot deploys version 1 (corpus a) from the publication; version 2
# (corpus b, with its delta from 1) is published after. A private dbus-daemon serves a
# release arbord; a GLib client (Gio through Python's gi) registers, and calls Check
# RUNS+1 times (default 5): the first is cold (the package list and the index are
# fetched), the others warm (the list is cached; the index is fetched again, as on
# every check). Each time is measured by the client, from the call to the
# PropertiesChanged carrying AvailableUpdate. For reference, `arbor upgrade --check`
# does the same work from the command line. Goal (issue 17): RSS <= 15 MB idle with a
# panel registered. Needs root and nginx. Work folder: $BENCH_DIR or /var/tmp.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
RUNS=${1:-5}
CORPUS=${ARBOR_CORPUS:-/var/tmp/arbor-corpus}
[[ -d $CORPUS/b ]] || { echo "no corpus at $CORPUS; run ../shared/corpus/make-trees.sh" >&2; exit 1; }
cargo build --release --quiet --bins
ARBOR=$RELEASE/arbor
ARBORD=$RELEASE/arbord
W=$(mktemp -d "${BENCH_DIR:-/var/tmp}/arbor-bench.XXXXXX")
chmod 755 "$W" # nginx workers run unprivileged
pids=()
cleanup() {
  [[ -f $W/panel.out ]] && { grep -v '^check\|^registered\|^done' "$W/panel.out" >&2 || true; }
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  nginx -c "$W/nginx/nginx.conf" -s stop 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
export ARBOR_MACHINE_ID=0123456789abcdef0123456789abcdef
quiet() { "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; "$@" >&2 || true; exit 1; }; }

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$W/nginx" "$W/srv"
cat > "$W/nginx/nginx.conf" <<EOF
worker_processes 1; pid $W/nginx/nginx.pid; error_log $W/nginx/error.log;
events { worker_connections 256; }
http {
  default_type application/octet-stream;
  access_log off;
  client_body_temp_path $W/nginx/body;
  server { listen 127.0.0.1:$PORT; root $W/srv; }
}
EOF
nginx -c "$W/nginx/nginx.conf"

echo "publishing corpus a as version 1, deploying it, publishing b as version 2" >&2
quiet "$ARBOR" --repo "$W/build" init
quiet "$ARBOR" --repo "$W/build" compose rootfs "$CORPUS/a" -b os/stable --version 1
quiet "$ARBOR" publish init "$W/srv/pub"
quiet "$ARBOR" --repo "$W/build" publish add "$W/srv/pub" --channel stable --version 1 --ref os/stable
S=$W/client
quiet "$ARBOR" admin init-fs "$S"
quiet "$ARBOR" --sysroot "$S" admin os-init debian
quiet "$ARBOR" --sysroot "$S" remote add origin "http://127.0.0.1:$PORT/pub" --trust "$W/srv/pub/metadata/1.root.json"
quiet "$ARBOR" --sysroot "$S" deploy origin:stable
quiet "$ARBOR" --repo "$W/build" compose rootfs "$CORPUS/b" -b os/stable --version 2
quiet "$ARBOR" --repo "$W/build" publish add "$W/srv/pub" --channel stable --version 2 --ref os/stable

bus_and_daemon "$S"

# The panel: registers, reports when it did, then times each Check on a "go" line.
mkfifo "$W/to-panel"
cat > "$W/panel.py" <<'PY'
import sys, time
import gi
gi.require_version("Gio", "2.0")
from gi.repository import Gio, GLib
flags = (Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT
         | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION)
bus = Gio.DBusConnection.new_for_address_sync(sys.argv[1], flags, None, None)
ROOT, SYSROOT = "/org/arbor/Arbor1", "org.arbor.Arbor1.Sysroot"
def call(method, opts):
    return bus.call_sync("org.arbor.Arbor1", ROOT, SYSROOT, method,
                         GLib.Variant("(a{sv})", (opts,)), None,
                         Gio.DBusCallFlags.NONE, 600000, None)
loop = GLib.MainLoop()
# The time of a check is from the call to its transaction's Finished signal, and the
# offer is read then. (Waiting for any AvailableUpdate change instead was racy: the
# daemon announces every property at each state change, so a warm check could count
# a stale announcement from the previous one and call again while it still ran.)
finished = {}
def on_finished(_c, _s, path, _i, _n, params):
    finished[path] = (time.monotonic(), params.unpack()[0])
    loop.quit()
bus.signal_subscribe(None, "org.arbor.Arbor1.Transaction", "Finished", None, None,
                     Gio.DBusSignalFlags.NONE, on_finished)
call("RegisterClient", {"id": GLib.Variant("s", "bench panel")})
print("registered", flush=True)
sys.stdin.readline()
for run in range(int(sys.argv[2]) + 1):
    t0 = time.monotonic()
    (tx,) = call("Check", {}).unpack()
    while tx not in finished:
        loop.run()
    t, ok = finished[tx]
    offer = bus.call_sync("org.arbor.Arbor1", ROOT, "org.freedesktop.DBus.Properties",
                          "Get", GLib.Variant("(ss)", (SYSROOT, "AvailableUpdate")),
                          None, Gio.DBusCallFlags.NONE, 60000, None).unpack()[0]
    if not ok or offer.get("version") != "2":
        sys.exit(f"check {run}: success {ok}, offer {offer}")
    p = offer.get("packages", {})
    print("check", run, int((t - t0) * 1000), len(p.get("upgraded", [])), flush=True)
print("done", flush=True)
sys.stdin.readline()
PY
/usr/bin/python3 "$W/panel.py" "$ADDR" "$RUNS" < "$W/to-panel" > "$W/panel.out" 2>&1 & pids+=($!)
exec 3> "$W/to-panel"
for _ in $(seq 200); do grep -q registered "$W/panel.out" 2>/dev/null && break; sleep 0.05; done
sleep 2
registered_rss=$(rss VmRSS); registered_anon=$(rss RssAnon); registered_file=$(rss RssFile)
echo go >&3
for _ in $(seq 1200); do grep -q done "$W/panel.out" && break; sleep 0.5; done
grep -q done "$W/panel.out" || { echo "the panel never finished:" >&2; cat "$W/panel.out" >&2; exit 1; }
sleep 2
idle_rss=$(rss VmRSS); peak=$(rss VmHWM); idle_anon=$(rss RssAnon); idle_file=$(rss RssFile)
awk '$1 == "check" && $2 > 0 { print $3 }' "$W/panel.out" > "$W/warm"
cold=$(awk '$1 == "check" && $2 == 0 { print $3 }' "$W/panel.out")
upgraded=$(awk '$1 == "check" { n = $4 } END { print n }' "$W/panel.out")
for _ in $(seq "$RUNS"); do ms cli "$ARBOR" --sysroot "$S" upgrade --check; done
exec 3>&-
cat <<OUT
Check -> its transaction's Finished, AvailableUpdate read then (version 2, $upgraded packages upgraded):
  first (cold):        $cold ms
  median of $RUNS warm:    $(median warm) ms
  arbor upgrade --check, median of $RUNS: $(median cli) ms (the same work from the CLI, process start included)
arbord RSS with a panel registered, idle: $(mb "$registered_rss") (anonymous $(mb "$registered_anon"), file-backed $(mb "$registered_file"))
arbord RSS idle after the checks: $(mb "$idle_rss") (anonymous $(mb "$idle_anon"), file-backed $(mb "$idle_file"); peak $(mb "$peak"))
goal: idle RSS <= 15 MB with a panel registered; read as anonymous memory, since the
  file-backed part is clean pages of arbord itself that the kernel reclaims (docs/decisions.md)
OUT
