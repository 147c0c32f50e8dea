#!/usr/bin/env bash
# TCP proxying against HAProxy's `mode tcp`, in one run on this machine (issue 19):
#
# - Bulk: iperf3 through a meshgate `tcp` listener and through HAProxy, and directly, for
#   DURATION each; throughput from iperf3's receiver, CPU per GiB from the proxy's
#   utime+stime (/proc/PID/stat) over the run.
# - Short connections: wrk with `Connection: close` through each proxy to the HTTP echo
#   upstream, so every request is a new client and upstream connection: connections per
#   second and CPU per connection.
#
# The proxy runs one thread pinned to CPU 0; iperf3, wrk and the upstreams share CPU 1.
#
#   DURATION=10 loadtest/tcp.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh

DURATION=${DURATION:-10}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
CONNECTIONS=${CONNECTIONS:-16}
IPERF_PORT=18501; ECHO_PORT=18502
MESHGATE_BULK=18510; MESHGATE_SHORT=18511; MESHGATE_ADMIN=18512
HAPROXY_BULK=18520; HAPROXY_SHORT=18521
bench_workspace tcp
require_tools tcp iperf3 wrk haproxy taskset python3
[ -x target/release/meshgate ] || { echo "tcp: build first (make build)" >&2; exit 1; }

taskset -c "$LOAD_CPU" iperf3 -s -p "$IPERF_PORT" >/dev/null 2>&1 &
PIDS+=($!)
taskset -c "$LOAD_CPU" target/release/meshgate-echo -l "127.0.0.1:$ECHO_PORT" -n bench -b 1024 -t 1 2>/dev/null &
PIDS+=($!)

cat > "$WORK/meshgate.toml" <<TOML
version = 1
[server]
threads = 1
[admin]
listen = "127.0.0.1:$MESHGATE_ADMIN"
[telemetry]
access_log = "off"
[[listeners]]
name = "bulk"
listen = "127.0.0.1:$MESHGATE_BULK"
protocol = "tcp"
[[listeners]]
name = "short"
listen = "127.0.0.1:$MESHGATE_SHORT"
protocol = "tcp"
[[upstreams]]
name = "iperf"
endpoints = ["127.0.0.1:$IPERF_PORT"]
[[upstreams]]
name = "echo"
endpoints = ["127.0.0.1:$ECHO_PORT"]
[[tcp_routes]]
name = "bulk"
listeners = ["bulk"]
split = [{ upstream = "iperf" }]
[[tcp_routes]]
name = "short"
listeners = ["short"]
split = [{ upstream = "echo" }]
TOML
MESHGATE_LOG=warn taskset -c "$PROXY_CPU" target/release/meshgate run -c "$WORK/meshgate.toml" \
  --upgrade-sock "$WORK/meshgate.sock" --pid-file "$WORK/meshgate.pid" 2>"$WORK/meshgate.err" &
MESHGATE_PID=$!; PIDS+=($MESHGATE_PID)

cat > "$WORK/haproxy.cfg" <<HAPROXY
global
  nbthread 1
  maxconn 4096
defaults
  mode tcp
  timeout connect 1s
  timeout client 30s
  timeout server 30s
frontend bulk
  bind 127.0.0.1:$HAPROXY_BULK
  default_backend iperf
frontend short
  bind 127.0.0.1:$HAPROXY_SHORT
  default_backend echo
backend iperf
  server iperf 127.0.0.1:$IPERF_PORT
backend echo
  server echo 127.0.0.1:$ECHO_PORT
HAPROXY
taskset -c "$PROXY_CPU" haproxy -f "$WORK/haproxy.cfg" -db 2>"$WORK/haproxy.err" &
HAPROXY_PID=$!; PIDS+=($HAPROXY_PID)

for port in "$IPERF_PORT" "$ECHO_PORT" "$MESHGATE_BULK" "$MESHGATE_SHORT" "$HAPROXY_BULK" "$HAPROXY_SHORT"; do
  wait_port "$port"
done
sleep 1

# bulk NAME PORT [PID]: one iperf3 run, a table row: Gbit/s, CPU seconds per GiB.
bulk() {
  local name=$1 port=$2 pid=${3:-}
  taskset -c "$LOAD_CPU" iperf3 -c 127.0.0.1 -p "$port" -t 1 >/dev/null 2>&1 || true
  local before=0 after=0
  [ -n "$pid" ] && before=$(cpu_ticks "$pid")
  taskset -c "$LOAD_CPU" iperf3 -c 127.0.0.1 -p "$port" -t "$DURATION" -J > "$WORK/$name.json"
  [ -n "$pid" ] && after=$(cpu_ticks "$pid")
  python3 - "$WORK/$name.json" "$name" "$((after - before))" "$TICKS" <<'PY'
import json, sys
run = json.load(open(sys.argv[1]))
name, ticks, hz = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
received = run["end"]["sum_received"]
gib = received["bytes"] / 2**30
gbits = received["bits_per_second"] / 1e9
cpu = ticks / hz
per_gib = f"{cpu / gib:.3f}" if ticks else "-"
print(f"| {name} | {gbits:.2f} | {gib:.1f} | {cpu:.2f} | {per_gib} |")
PY
}

# short NAME PORT [PID]: wrk with Connection: close, a table row: connections/s, CPU µs each.
short() {
  local name=$1 port=$2 pid=${3:-}
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d2s -H "Connection: close" "http://127.0.0.1:$port/" >/dev/null
  local before=0 after=0
  [ -n "$pid" ] && before=$(cpu_ticks "$pid")
  local out
  out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" -H "Connection: close" "http://127.0.0.1:$port/")
  [ -n "$pid" ] && after=$(cpu_ticks "$pid")
  local requests rate errors cpu_us="-"
  requests=$(echo "$out" | awk '/requests in/ {print $1}')
  rate=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  errors=$(echo "$out" | awk -F'[ ,]+' '/Socket errors/ {print $4+$6+$8+$10}')
  [ -n "$pid" ] && cpu_us=$(per_request $((after - before)) "$requests")
  printf '| %s | %s | %s | %s |\n' "$name" "$rate" "$cpu_us" "${errors:-0}"
}

echo "## TCP bulk: iperf3 for ${DURATION}s, one stream ($(date -u +%FT%TZ))"
echo
echo "| path | Gbit/s | GiB moved | proxy CPU s | proxy CPU s per GiB |"
echo "|---|---|---|---|---|"
bulk direct "$IPERF_PORT"
bulk meshgate "$MESHGATE_BULK" "$MESHGATE_PID"
bulk haproxy "$HAPROXY_BULK" "$HAPROXY_PID"
echo
echo "## TCP short connections: wrk -c$CONNECTIONS, Connection: close, ${DURATION}s"
echo
echo "| path | connections/s | proxy CPU µs per connection | socket errors |"
echo "|---|---|---|---|"
short direct "$ECHO_PORT"
short meshgate "$MESHGATE_SHORT" "$MESHGATE_PID"
short haproxy "$HAPROXY_SHORT" "$HAPROXY_PID"
