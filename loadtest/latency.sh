#!/usr/bin/env bash
# Added latency at a fixed rate: NGINX's saturation rate is measured first (wrk -t1 -c32, as
# in bench.sh), then direct-to-upstream, meshgate, NGINX and HAProxy are each driven at half
# that rate by oha (-q, with its correction for coordinated omission, so a stall counts
# against every request it delayed), and each proxy's p99 is compared with the direct p99.
# Each proxy runs one worker pinned to CPU 0; oha and the echo upstream share CPU 1.
#
#   DURATION=10s loadtest/latency.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh

DURATION=${DURATION:-10s}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
ECHO_PORT=18401; MESHGATE_PORT=18410; MESHGATE_ADMIN=18411; NGINX_PORT=18420; HAPROXY_PORT=18430
bench_workspace latency
require_tools latency oha wrk nginx haproxy taskset python3

taskset -c "$LOAD_CPU" target/release/meshgate-echo -l "127.0.0.1:$ECHO_PORT" -n bench -b 1024 -t 1 2>/dev/null &
PIDS+=($!)
meshgate_policy "$MESHGATE_PORT" "$MESHGATE_ADMIN" > "$WORK/meshgate.toml"
MESHGATE_LOG=warn taskset -c "$PROXY_CPU" target/release/meshgate run -c "$WORK/meshgate.toml" \
  --upgrade-sock "$WORK/m.sock" --pid-file "$WORK/m.pid" 2>"$WORK/meshgate.err" &
PIDS+=($!)
mkdir -p "$WORK/nginx"
nginx_conf "$WORK/nginx" "$NGINX_PORT" "daemon off;" > "$WORK/nginx/nginx.conf"
taskset -c "$PROXY_CPU" nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" &
PIDS+=($!)
haproxy_conf "$HAPROXY_PORT" > "$WORK/haproxy.cfg"
taskset -c "$PROXY_CPU" haproxy -f "$WORK/haproxy.cfg" -db &
PIDS+=($!)
for port in "$ECHO_PORT" "$MESHGATE_PORT" "$NGINX_PORT" "$HAPROXY_PORT"; do wait_port "$port"; done

# NGINX's saturation rate, after a warm-up.
taskset -c "$LOAD_CPU" wrk -t1 -c32 -d2s "http://127.0.0.1:$NGINX_PORT/" >/dev/null
saturation=$(taskset -c "$LOAD_CPU" wrk -t1 -c32 -d"$DURATION" "http://127.0.0.1:$NGINX_PORT/" | awk '/Requests\/sec/ {printf "%d", $2}')
RATE=$((saturation / 2))

declare -A P99
# run NAME PORT: oha at RATE requests/s over 32 connections; prints a row (milliseconds).
run() {
  local name=$1 port=$2
  taskset -c "$LOAD_CPU" oha -z 2s -c 32 -q "$RATE" --latency-correction --no-tui \
    --output-format quiet "http://127.0.0.1:$port/" >/dev/null
  taskset -c "$LOAD_CPU" oha -z "$DURATION" -c 32 -q "$RATE" --latency-correction --no-tui \
    --output-format json "http://127.0.0.1:$port/" > "$WORK/oha.json"
  local row
  row=$(python3 - "$WORK/oha.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
p = d["latencyPercentiles"]
codes = d.get("statusCodeDistribution") or {}
ok = sum(n for code, n in codes.items() if code.startswith("2"))
errors = sum((d.get("errorDistribution") or {}).values())
print(f'{d["summary"]["requestsPerSec"]:.0f} {p["p50"] * 1e3:.3f} {p["p99"] * 1e3:.3f} {p["p99.9"] * 1e3:.3f} {ok} {errors}')
PY
)
  local rps p50 p99 p999 ok errors
  read -r rps p50 p99 p999 ok errors <<<"$row"
  P99[$name]=$p99
  local added="-"
  [ "$name" != "direct to upstream" ] && added=$(awk -v a="$p99" -v b="${P99[direct to upstream]}" 'BEGIN { printf "%.3f", a - b }')
  printf '| %s | %s | %s | %s | %s | %s | %s/%s |\n' "$name" "$rps" "$p50" "$p99" "$p999" "$added" "$ok" "$errors"
}

echo "Fixed rate: $RATE requests/s (half of NGINX's $saturation requests/s saturation under wrk -t1 -c32), oha -c32 -q $RATE --latency-correction, $DURATION per target; milliseconds."
echo
echo "| target | requests/s | p50 | p99 | p99.9 | p99 added over direct | 2xx/errors |"
echo "|---|---|---|---|---|---|---|"
run "direct to upstream" "$ECHO_PORT"
run "meshgate" "$MESHGATE_PORT"
run "nginx" "$NGINX_PORT"
run "haproxy" "$HAPROXY_PORT"
echo
echo "Target: meshgate's added p99 no more than NGINX's."
