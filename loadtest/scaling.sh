#!/usr/bin/env bash
# Scaling on both cores: meshgate with [server].threads = 1 and = 2, NGINX with
# worker_processes 1 and 2, each in front of a two-thread echo upstream, under wrk -t2 -c64.
# Nothing is pinned: the proxy, wrk and the upstream share the machine's two cores, so the
# figures are throughput of the whole box, not of the proxy alone.
#
#   DURATION=10s loadtest/scaling.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh

DURATION=${DURATION:-10s}
ECHO_PORT=18301
bench_workspace scaling

target/release/meshgate-echo -l "127.0.0.1:$ECHO_PORT" -n bench -b 1024 -t 2 2>/dev/null &
PIDS+=($!)

declare -A RPS
# run NAME PORT PIDS...: wrk -t2 -c64 at the port after 2 s of warm-up; prints a row.
run() {
  local name=$1 port=$2; shift 2
  wait_port "$port"
  wrk -t2 -c64 -d2s "http://127.0.0.1:$port/" >/dev/null
  local before after out requests rps p99 cpu_us
  before=$(cpu_ticks "$@")
  out=$(wrk -t2 -c64 -d"$DURATION" --latency "http://127.0.0.1:$port/")
  after=$(cpu_ticks "$@")
  requests=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  cpu_us=$(per_request $((after - before)) "$requests")
  RPS[$name]=$rps
  printf '| %s | %s | %s | %s |\n' "$name" "$rps" "$cpu_us" "$p99"
}

# start_meshgate THREADS PORT ADMIN_PORT: a meshgate on the plain route with THREADS workers.
start_meshgate() {
  meshgate_policy "$2" "$3" | sed "s/^threads = 1$/threads = $1/" > "$WORK/threads-$1.toml"
  MESHGATE_LOG=warn target/release/meshgate run -c "$WORK/threads-$1.toml" \
    --upgrade-sock "$WORK/threads-$1.sock" --pid-file "$WORK/threads-$1.pid" 2>"$WORK/threads-$1.err" &
  PIDS+=($!)
}

# start_nginx WORKERS PORT: NGINX with WORKERS worker processes; sets NGINX_PIDS.
start_nginx() {
  mkdir -p "$WORK/nginx-$1"
  nginx_conf "$WORK/nginx-$1" "$2" "daemon off;" | sed "s/^worker_processes 1;/worker_processes $1;/" \
    > "$WORK/nginx-$1/nginx.conf"
  nginx -c "$WORK/nginx-$1/nginx.conf" -p "$WORK/nginx-$1" &
  local master=$!
  PIDS+=($master)
  wait_port "$2"
  sleep 0.5
  NGINX_PIDS=($master $(pgrep -P "$master" || true))
}

echo "Scaling, wrk -t2 -c64 -d$DURATION, 1 KiB responses; proxy, wrk and a two-thread upstream share both CPUs (nothing pinned)."
echo
echo "| target | requests/s | proxy CPU µs/request | p99 |"
echo "|---|---|---|---|"
run "direct to upstream" "$ECHO_PORT" "${PIDS[0]}"
start_meshgate 1 18310 18311
run "meshgate, threads = 1" 18310 "${PIDS[-1]}"
kill -INT "${PIDS[-1]}"
start_meshgate 2 18312 18313
run "meshgate, threads = 2" 18312 "${PIDS[-1]}"
kill -INT "${PIDS[-1]}"
start_nginx 1 18320
run "nginx, worker_processes 1" 18320 "${NGINX_PIDS[@]}"
kill -INT "${NGINX_PIDS[0]}"
start_nginx 2 18321
run "nginx, worker_processes 2" 18321 "${NGINX_PIDS[@]}"
echo
echo "meshgate, threads 2 ÷ threads 1: $(ratio "${RPS[meshgate, threads = 2]}" "${RPS[meshgate, threads = 1]}")×;" \
  "NGINX, 2 workers ÷ 1: $(ratio "${RPS[nginx, worker_processes 2]}" "${RPS[nginx, worker_processes 1]}")×;" \
  "meshgate ÷ NGINX at 2: $(ratio "${RPS[meshgate, threads = 2]}" "${RPS[nginx, worker_processes 2]}")."
