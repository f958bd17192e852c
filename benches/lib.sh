# Helpers shared by the benchmark scripts (sourced, not run). They expect $W, a work
# folder of the calling script, where each measure's times accumulate in a file.

# Where `cargo build --release` puts the binaries (CARGO_TARGET_DIR is honoured).
RELEASE=${CARGO_TARGET_DIR:-$PWD/target}/release

# ms NAME CMD...: runs CMD after a sync and a settle, appends its wall time to $W/NAME.
ms() {
  local name=$1; shift
  sync; sleep 1
  local t0 t1
  t0=$(date +%s%N)
  "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; exit 1; }
  t1=$(date +%s%N)
  echo $(((t1 - t0) / 1000000)) >> "$W/$name"
}

# median FILE: the median of the numbers in FILE (a path, or a name below $W).
median() {
  local f=$1; [[ -f $f ]] || f=$W/$1
  sort -n "$f" | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2)}'
}

# ratio A B: A / B with two decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / (b > 0 ? b : 1) }'; }

# msk NAME CMD...: like ms, and appends the peak RSS (KB) of CMD to $W/NAME.kb.
msk() {
  local name=$1; shift
  ms "$name" /usr/bin/time -f %M -o "$W/$name.last" "$@"
  cat "$W/$name.last" >> "$W/$name.kb"
}

# scaled_tree TREE N DIR: N copies of TREE under DIR/c1 … DIR/cN, each file of copy i
# with the byte i appended, so no two copies share content (a tree N times as large).
scaled_tree() {
  local tree=$1 n=$2 dir=$3
  mkdir -p "$dir"
  for i in $(seq "$n"); do
    cp -a "$tree" "$dir/c$i"
    find "$dir/c$i" -type f -print0 |
      xargs -0 perl -e 'for (@ARGV) { open(F, ">>", $_) or die "$_: $!"; print F "'"$i"'"; close F }'
  done
}

# bus_and_daemon SYSROOT: a private dbus-daemon (the system bus's default-deny policy
# with our policy file) in $W, and a release arbord on it serving SYSROOT, never
# exiting on idle. Sets ADDR (the bus address) and D (arbord's pid); appends both pids
# to the caller's array `pids` (for its cleanup). Needs $ARBORD.
bus_and_daemon() {
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
  ARBOR_LOG=warn "$ARBORD" --sysroot "$1" --bus-address "$ADDR" --idle-exit 0 & pids+=($!)
  D=$!
  for _ in $(seq 100); do
    busctl --address="$ADDR" status org.arbor.Arbor1 >/dev/null 2>&1 && break; sleep 0.05
  done
}

# rss KEY: a line of arbord's /proc status (VmRSS, VmHWM) in KB.
rss() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$D/status"; }

# mb KB: kilobytes as megabytes with one decimal.
mb() { awk -v k="$1" 'BEGIN { printf "%.1f MB", k / 1024 }'; }

# free_port: a TCP port free on 127.0.0.1 now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# bench_nginx: nginx serving $W/srv on a free port, logging the bytes of every
# response to $W/nginx/access.log. Sets PORT and NGINX_CONF (stop it with
# `nginx -c "$NGINX_CONF" -s stop`); http_bytes sums its log.
bench_nginx() {
  PORT=$(free_port)
  NGINX_CONF=$W/nginx/nginx.conf
  mkdir -p "$W/nginx" "$W/srv"
  chmod 755 "$W" # nginx workers run unprivileged
  cat > "$NGINX_CONF" <<EOF
worker_processes 1; pid $W/nginx/nginx.pid; error_log $W/nginx/error.log;
events { worker_connections 256; }
http {
  default_type application/octet-stream;
  log_format bytes '\$body_bytes_sent \$request_uri';
  access_log $W/nginx/access.log bytes;
  client_body_temp_path $W/nginx/body;
  server { listen 127.0.0.1:$PORT; root $W/srv; }
}
EOF
  nginx -c "$NGINX_CONF"
}
http_bytes() { awk '{ s += $1 } END { print s + 0 }' "$W/nginx/access.log"; }

# bench_registry: Debian's docker-registry on a free port, storage in $W/registry, its
# access log (Apache format) in $W/registry/access.log. Sets RPORT and REG_PID;
# reg_bytes sums the bytes it sent.
bench_registry() {
  RPORT=$(free_port)
  mkdir -p "$W/registry"
  cat > "$W/registry/config.yml" <<EOF
version: 0.1
log: { level: error }
storage: { filesystem: { rootdirectory: $W/registry/data } }
http: { addr: 127.0.0.1:$RPORT }
EOF
  # Appending: the benches empty the log between measures, and a writer at its old
  # offset would leave a hole of NULs that awk then reads.
  docker-registry serve "$W/registry/config.yml" >> "$W/registry/access.log" 2>&1 &
  REG_PID=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$RPORT/v2/" >/dev/null && break; sleep 0.1; done
}
reg_bytes() { awk -F'"' '/"(GET|HEAD) \/v2\// { split($3, f, " "); s += f[2] } END { print s + 0 }' "$W/registry/access.log"; }

# bench_cleanup: stops what bench_nginx and bench_registry started and removes $W
# (kept, and said so, when BENCH_KEEP is set). For `trap bench_cleanup EXIT`.
bench_cleanup() {
  [[ -n ${NGINX_CONF:-} ]] && nginx -c "$NGINX_CONF" -s stop 2>/dev/null || true
  [[ -n ${REG_PID:-} ]] && kill "$REG_PID" 2>/dev/null || true
  [[ -n ${BENCH_KEEP:-} ]] && { echo "kept $W" >&2; return; }
  rm -rf "$W"
}
