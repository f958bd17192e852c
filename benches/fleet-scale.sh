#!/usr/bin/env bash
# What an unchanged update check costs the server, and how many one nginx serves, for
# the fleet figures (issue "Fleets", docs/fleet.md "Toward a million machines").
#
#   benches/fleet-scale.sh [SECONDS]     (each load measure runs SECONDS, default 10)
#
# A machine (folder sysroot) deploys version 1 from a publication served by nginx,
# then makes unchanged checks (`arbor upgrade --check`); the access log says which
# requests one check makes and what they cost in bytes both ways. Then ApacheBench
# replays exactly those requests, a new connection for each (a machine checking once
# an hour keeps none open), against the origin nginx and against an nginx edge cache
# in front of it (docs/remote.md "Behind a CDN"): checks per second, and what the
# origin still sees behind the edge. Load generator and servers share this machine's
# cores, so the rates are a floor for a server of its own.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
SECS=${1:-10}
CORPUS=${ARBOR_CORPUS:-/var/tmp/arbor-corpus}
cargo build --release --quiet --bins
ARBOR=$RELEASE/arbor
W=$(mktemp -d "${BENCH_DIR:-/var/tmp}/arbor-bench.XXXXXX")
EDGE_CONF=
cleanup() {
  [[ -n $EDGE_CONF ]] && nginx -c "$EDGE_CONF" -s stop 2>/dev/null || true
  bench_cleanup
}
trap cleanup EXIT
workers=$(nproc)

# The publication: corpus `small` with a kernel, as version 1 of channel stable.
cp -a "$CORPUS/small" "$W/tree"
mkdir -p "$W/tree/boot"
echo "kernel image" > "$W/tree/boot/vmlinuz-6.1.0-bench"
echo "initramfs image" > "$W/tree/boot/initrd.img-6.1.0-bench"
"$ARBOR" --repo "$W/build" init >/dev/null
"$ARBOR" --repo "$W/build" compose rootfs "$W/tree" -b os/1 --version 1 >/dev/null 2>&1
"$ARBOR" publish init "$W/srv/pub" >/dev/null
"$ARBOR" --repo "$W/build" publish add "$W/srv/pub" --channel stable --version 1 --ref os/1 >/dev/null

# The origin: nginx with the log this measure needs (whole request and response
# sizes, headers included) and as many workers as cores.
PORT=$(free_port)
NGINX_CONF=$W/nginx/nginx.conf
mkdir -p "$W/nginx"
chmod 755 "$W"
cat > "$NGINX_CONF" <<EOF
worker_processes $workers; pid $W/nginx/nginx.pid; error_log $W/nginx/error.log;
events { worker_connections 4096; }
http {
  default_type application/octet-stream;
  log_format wire '\$status \$request_length \$bytes_sent \$request_method \$request_uri';
  access_log $W/nginx/access.log wire;
  server { listen 127.0.0.1:$PORT; root $W/srv; }
}
EOF
nginx -c "$NGINX_CONF"
URL=http://127.0.0.1:$PORT

# A machine on version 1, then unchanged checks: the second one is what every later
# check of a machine costs.
S=$W/sysroot
"$ARBOR" admin init-fs "$S" >/dev/null
"$ARBOR" --sysroot "$S" admin os-init debian >/dev/null
"$ARBOR" --sysroot "$S" remote add origin "$URL/pub" --trust "$W/srv/pub/metadata/1.root.json" >/dev/null
"$ARBOR" --sysroot "$S" deploy origin:stable >/dev/null 2>&1
"$ARBOR" --sysroot "$S" upgrade --check >/dev/null 2>&1 || true
: > "$W/nginx/access.log"
out=$("$ARBOR" --sysroot "$S" upgrade --check 2>&1 || true)
sleep 0.5
grep -qi "no update\|no upgrade" <<<"$out" || echo "note: the check said: $out" >&2
requests=$(wc -l < "$W/nginx/access.log")
sent=$(awk '{ s += $3 } END { print s + 0 }' "$W/nginx/access.log")
received=$(awk '{ s += $2 } END { print s + 0 }' "$W/nginx/access.log")
paths=$(awk '{ print $5 }' "$W/nginx/access.log")
statuses=$(awk '{ print $1 }' "$W/nginx/access.log" | sort | uniq -c | awk '{ printf "%s×%s ", $1, $2 }')

# checks_per_second BASE: ab on each of the check's requests for SECS seconds, 64 at
# a time, a new connection each; a check takes the sum of its requests' times, so
# checks/s = 1 / Σ 1/rate_i. Prints the rate; keeps each request's in $W/rates.
checks_per_second() {
  local base=$1 inv=0 rate
  : > "$W/rates"
  for p in $paths; do
    rate=$(ab -q -t "$SECS" -n 10000000 -c 64 "$base$p" 2>/dev/null |
      awk '/Requests per second/ { print $4 }')
    echo "$p $rate" >> "$W/rates"
    inv=$(awk -v i="$inv" -v r="$rate" 'BEGIN { print i + 1 / r }')
  done
  awk -v i="$inv" 'BEGIN { printf "%d", 1 / i }'
}
origin_rate=$(checks_per_second "$URL")
origin_detail=$(tr '\n' ' ' < "$W/rates")

# The edge: nginx proxy_cache in front of the origin, configured as docs/remote.md
# says (the timestamp cached for a second, everything else for a month).
EPORT=$(free_port)
EDGE_CONF=$W/edge/nginx.conf
mkdir -p "$W/edge/cache"
chown -R nobody "$W/edge/cache" 2>/dev/null || true
cat > "$EDGE_CONF" <<EOF
worker_processes $workers; pid $W/edge/nginx.pid; error_log $W/edge/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  proxy_cache_path $W/edge/cache keys_zone=edge:10m max_size=1g inactive=30d;
  upstream origin { server 127.0.0.1:$PORT; keepalive 8; }
  server {
    listen 127.0.0.1:$EPORT;
    proxy_http_version 1.1; proxy_set_header Connection "";
    proxy_cache edge;
    proxy_cache_lock on;
    location ~ /metadata/timestamp\.json\$ { proxy_pass http://origin; proxy_cache_valid 200 1s; }
    location / { proxy_pass http://origin; proxy_cache_valid 200 30d; proxy_cache_valid 404 1s; }
  }
}
EOF
nginx -c "$EDGE_CONF"
: > "$W/nginx/access.log"
t0=$(date +%s)
edge_rate=$(checks_per_second "http://127.0.0.1:$EPORT")
edge_detail=$(tr '\n' ' ' < "$W/rates")
t1=$(date +%s)
behind=$(wc -l < "$W/nginx/access.log")

hour=$((3600))
cat <<OUT
one unchanged check: $requests requests ($statuses) $(tr '\n' ' ' <<<"$paths")
  bytes: $sent sent by the server, $received received (headers included)
origin nginx ($workers workers, ab -c 64, a new connection per request, same machine):
  $origin_rate checks/s  (requests/s: $origin_detail)
through the nginx edge cache:
  $edge_rate checks/s  (requests/s: $edge_detail); the origin saw $behind requests in $((t1 - t0)) s
one hour of checks at these rates: origin $((origin_rate * hour)) machines, edge $((edge_rate * hour)) machines
a million machines checking hourly: $((1000000 / hour)) checks/s on average, $((1000000 * sent / hour)) B/s sent
OUT
