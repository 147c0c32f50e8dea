#!/usr/bin/env bash
# meshgate's benchmark: meshgate, NGINX and HAProxy as reverse proxies in front of the same
# echo upstream, plus direct-to-upstream, in one run on this machine.
#
# The proxy under test is pinned to CPU 0; wrk and the echo upstream share CPU 1. Every proxy
# runs one worker, keeps upstream connections alive, and serves a 1 KiB body over HTTP/1.1
# keepalive. CPU per request is the proxy's utime+stime from /proc/PID/stat over the run,
# divided by the requests wrk completed.
#
#   DURATION=10s CONNECTIONS=32 loadtest/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
ECHO_PORT=18001; BARE_PORT=18079; MESHGATE_PORT=18080; RESILIENT_PORT=18083; RESILIENT_ADMIN_PORT=18902; NGINX_PORT=18081; HAPROXY_PORT=18082; ADMIN_PORT=18901
LOCAL_LIMIT_PORT=18084; LOCAL_LIMIT_ADMIN_PORT=18903; GLOBAL_LIMIT_PORT=18085; GLOBAL_LIMIT_ADMIN_PORT=18904
NGINX_LIMIT_PORT=18086; HAPROXY_LIMIT_PORT=18087; REDIS_PORT=18379
TLS_PORT=18443; TLS_ADMIN_PORT=18905; NGINX_TLS_PORT=18444; HAPROXY_TLS_PORT=18445
JWT_PORT=18091; JWT_ADMIN_PORT=18908
LOG_PORT=18088; LOG_ADMIN_PORT=18906; TRACED_PORT=18089; TRACED_ADMIN_PORT=18907; NGINX_LOG_PORT=18090
bench_workspace bench
RESULTS=loadtest/results
mkdir -p "$RESULTS"

require_tools bench wrk nginx haproxy taskset redis-server openssl python3
[ -x target/release/meshgate ] || { echo "bench: build first (make build)" >&2; exit 1; }

# run NAME PORT PIDS... : drives wrk at the port and prints a table row. SCHEME (http or
# https) and WRK_ARGS (extra wrk arguments, such as a Connection: close header) change the
# load.
SCHEME=http
WRK_ARGS=()
declare -A CPU_US USER_US
run() {
  local name=$1 port=$2; shift 2
  local pids=("$@")
  wait_port "$port"
  local url="$SCHEME://127.0.0.1:$port/"
  # Warm up connections and pools.
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d2s "${WRK_ARGS[@]}" "$url" >/dev/null
  local before=0 after=0 user_before=0 user_after=0
  [ ${#pids[@]} -gt 0 ] && before=$(cpu_ticks "${pids[@]}") && user_before=$(user_ticks "${pids[@]}")
  local out
  out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency "${WRK_ARGS[@]}" "$url")
  [ ${#pids[@]} -gt 0 ] && after=$(cpu_ticks "${pids[@]}") && user_after=$(user_ticks "${pids[@]}")
  local requests rps p50 p99 errors non2xx
  requests=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1=="50%" {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  errors=$(echo "$out" | awk -F'[ ,]+' '/Socket errors/ {print $4+$6+$8+$10}')
  non2xx=$(echo "$out" | awk -F': ' '/Non-2xx/ {print $2}')
  local cpu_us="-" user_us="-" system_us="-"
  if [ ${#pids[@]} -gt 0 ]; then
    cpu_us=$(per_request $((after - before)) "$requests")
    user_us=$(per_request $((user_after - user_before)) "$requests")
    system_us=$(per_request $((after - before - user_after + user_before)) "$requests")
  fi
  CPU_US[$name]=$cpu_us; USER_US[$name]=$user_us
  printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$name" "$rps" "$cpu_us" "$user_us" "$system_us" "$p50" "$p99" "${errors:-0}/${non2xx:-0}"
}

taskset -c "$LOAD_CPU" target/release/meshgate-echo -l "127.0.0.1:$ECHO_PORT" -n bench -b 1024 -t 1 2>/dev/null &
PIDS+=($!)

start_meshgate() {  # NAME POLICY_FILE
  MESHGATE_LOG=warn taskset -c "$PROXY_CPU" target/release/meshgate run -c "$2" \
    --upgrade-sock "$WORK/$1.sock" --pid-file "$WORK/$1.pid" 2>"$WORK/$1.err" &
}

meshgate_policy "$MESHGATE_PORT" "$ADMIN_PORT" > "$WORK/meshgate.toml"
start_meshgate plain "$WORK/meshgate.toml"
MESHGATE_PID=$!; PIDS+=($MESHGATE_PID)

# The same route with the resilience features on: outlier detection, breaker limits that never
# trip at this load, a retry policy with its budget, and timeouts.
meshgate_policy "$RESILIENT_PORT" "$RESILIENT_ADMIN_PORT" "$RESILIENT_UPSTREAM_KEYS" \
  "$RESILIENT_ROUTE_KEYS" > "$WORK/resilient.toml"
start_meshgate resilient "$WORK/resilient.toml"
RESILIENT_PID=$!; PIDS+=($RESILIENT_PID)

# Rate limits that never trip: local, and global in a Redis pinned beside wrk.
meshgate_policy "$LOCAL_LIMIT_PORT" "$LOCAL_LIMIT_ADMIN_PORT" "" "$LOCAL_LIMIT_ROUTE_KEYS" > "$WORK/local-limit.toml"
start_meshgate local-limit "$WORK/local-limit.toml"
LOCAL_LIMIT_PID=$!; PIDS+=($LOCAL_LIMIT_PID)
taskset -c "$LOAD_CPU" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
  --dir "$WORK" >/dev/null &
REDIS_PID=$!; PIDS+=($REDIS_PID)
{ meshgate_policy "$GLOBAL_LIMIT_PORT" "$GLOBAL_LIMIT_ADMIN_PORT" "" "$GLOBAL_LIMIT_ROUTE_KEYS"; global_limit_store; } > "$WORK/global-limit.toml"
start_meshgate global-limit "$WORK/global-limit.toml"
GLOBAL_LIMIT_PID=$!; PIDS+=($GLOBAL_LIMIT_PID)

# Telemetry on: the JSON access log to a file; and that plus traces, 1% of them sampled and
# exported over OTLP/HTTP (to the echo upstream, which accepts the POSTs).
meshgate_policy "$LOG_PORT" "$LOG_ADMIN_PORT" | sed "s|^access_log = \"off\"|access_log = \"$WORK/access-meshgate.log\"|" > "$WORK/log.toml"
start_meshgate log "$WORK/log.toml"
LOG_PID=$!; PIDS+=($LOG_PID)
meshgate_policy "$TRACED_PORT" "$TRACED_ADMIN_PORT" | sed "s|^access_log = \"off\"|access_log = \"$WORK/access-traced.log\"\notlp_endpoint = \"http://127.0.0.1:$ECHO_PORT\"\ntrace_sample_ratio = 0.01|" > "$WORK/traced.toml"
start_meshgate traced "$WORK/traced.toml"
TRACED_PID=$!; PIDS+=($TRACED_PID)

# A route with `jwt` (keys from a file), driven with a valid ES256 token: against "meshgate",
# the CPU a bearer-token check adds to each request (verified tokens are remembered).
loadtest/make_jwt.py "$WORK" > "$WORK/tokens.env"
JWT_TOKEN=$(grep '^ES256=' "$WORK/tokens.env" | cut -d= -f2)
meshgate_policy "$JWT_PORT" "$JWT_ADMIN_PORT" "" "jwt = { issuer = \"https://idp.bench\", audiences = [\"bench\"], jwks_file = \"$WORK/jwks.json\" }" > "$WORK/jwt.toml"
start_meshgate jwt "$WORK/jwt.toml"
JWT_PID=$!; PIDS+=($JWT_PID)

# One certificate (ECDSA P-256) for every TLS terminator.
bench_certificate "$WORK"
tls_policy "$TLS_PORT" "$TLS_ADMIN_PORT" "$WORK" > "$WORK/tls.toml"
start_meshgate tls "$WORK/tls.toml"
TLS_PID=$!; PIDS+=($TLS_PID)

mkdir -p "$WORK/nginx"
cat > "$WORK/nginx/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx/body;
  proxy_temp_path $WORK/nginx/proxy;
  upstream echo { server 127.0.0.1:$ECHO_PORT; keepalive 64; }
  limit_req_zone \$binary_remote_addr zone=per_client:10m rate=1000000r/s;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://echo;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
  server {
    listen 127.0.0.1:$NGINX_TLS_PORT ssl;
    ssl_certificate $WORK/tls.crt;
    ssl_certificate_key $WORK/tls.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {
      proxy_pass http://echo;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
  server {
    listen 127.0.0.1:$NGINX_LOG_PORT;
    access_log $WORK/nginx/access.log combined;
    location / {
      proxy_pass http://echo;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
  server {
    listen 127.0.0.1:$NGINX_LIMIT_PORT;
    location / {
      limit_req zone=per_client burst=1000000 nodelay;
      proxy_pass http://echo;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
NGINX
taskset -c "$PROXY_CPU" nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" &
NGINX_MASTER=$!; PIDS+=($NGINX_MASTER)

{ haproxy_head; cat <<HAPROXY; } > "$WORK/haproxy.cfg"
frontend bench
  bind 127.0.0.1:$HAPROXY_PORT
  default_backend echo
frontend bench_tls
  bind 127.0.0.1:$HAPROXY_TLS_PORT ssl crt $WORK/tls.pem ssl-min-ver TLSv1.2
  default_backend echo
frontend bench_limited
  bind 127.0.0.1:$HAPROXY_LIMIT_PORT
  stick-table type ip size 100k expire 10s store http_req_rate(1s)
  http-request track-sc0 src
  http-request deny deny_status 429 if { sc_http_req_rate(0) gt 1000000 }
  default_backend echo
backend echo
  server echo 127.0.0.1:$ECHO_PORT
HAPROXY
taskset -c "$PROXY_CPU" haproxy -f "$WORK/haproxy.cfg" -db &
HAPROXY_PID=$!; PIDS+=($HAPROXY_PID)

BARE=target/release/examples/bare_pingora
if [ -x "$BARE" ]; then
  taskset -c "$PROXY_CPU" "$BARE" "127.0.0.1:$BARE_PORT" "127.0.0.1:$ECHO_PORT" 1 2>/dev/null &
  BARE_PID=$!; PIDS+=($BARE_PID)
fi

wait_port "$NGINX_PORT"
NGINX_PIDS=($NGINX_MASTER $(pgrep -P "$NGINX_MASTER" || true))

{
  echo "Run: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, wrk -t1 -c$CONNECTIONS -d$DURATION, 1 KiB responses, proxy on CPU $PROXY_CPU, wrk and upstream on CPU $LOAD_CPU."
  echo
  echo "| target | requests/s | proxy CPU µs/request | user µs | system µs | p50 | p99 | socket errors/non-2xx |"
  echo "|---|---|---|---|---|---|---|---|"
  run "direct to upstream" "$ECHO_PORT"
  [ -n "${BARE_PID:-}" ] && run "bare Pingora (baseline)" "$BARE_PORT" "$BARE_PID"
  run "meshgate" "$MESHGATE_PORT" "$MESHGATE_PID"
  run "meshgate, resilience on" "$RESILIENT_PORT" "$RESILIENT_PID"
  run "nginx" "$NGINX_PORT" "${NGINX_PIDS[@]}"
  run "haproxy" "$HAPROXY_PORT" "$HAPROXY_PID"
  run "meshgate, local rate limit (never trips)" "$LOCAL_LIMIT_PORT" "$LOCAL_LIMIT_PID"
  redis_before=$(cpu_ticks "$REDIS_PID")
  run "meshgate, global rate limit in Redis (never trips)" "$GLOBAL_LIMIT_PORT" "$GLOBAL_LIMIT_PID"
  redis_after=$(cpu_ticks "$REDIS_PID")
  run "nginx, limit_req (never trips)" "$NGINX_LIMIT_PORT" "${NGINX_PIDS[@]}"
  run "haproxy, stick-table rate limit (never trips)" "$HAPROXY_LIMIT_PORT" "$HAPROXY_PID"
  run "meshgate, JSON access log to a file" "$LOG_PORT" "$LOG_PID"
  run "meshgate, access log + traces (1% sampled, OTLP)" "$TRACED_PORT" "$TRACED_PID"
  run "nginx, access log to a file" "$NGINX_LOG_PORT" "${NGINX_PIDS[@]}"
  WRK_ARGS=(-H "Authorization: Bearer $JWT_TOKEN")
  run "meshgate, jwt with a valid ES256 token" "$JWT_PORT" "$JWT_PID"
  WRK_ARGS=()
  SCHEME=https
  run "meshgate, TLS keepalive" "$TLS_PORT" "$TLS_PID"
  run "nginx, TLS keepalive" "$NGINX_TLS_PORT" "${NGINX_PIDS[@]}"
  run "haproxy, TLS keepalive" "$HAPROXY_TLS_PORT" "$HAPROXY_PID"
  WRK_ARGS=(-H "Connection: close")
  run "meshgate, new TLS connection per request" "$TLS_PORT" "$TLS_PID"
  run "nginx, new TLS connection per request" "$NGINX_TLS_PORT" "${NGINX_PIDS[@]}"
  run "haproxy, new TLS connection per request" "$HAPROXY_TLS_PORT" "$HAPROXY_PID"
  SCHEME=http; WRK_ARGS=()
  echo
  echo "meshgate against the others, CPU per request (target: at most 1.3× NGINX's and 1.4× HAProxy's, user space at most 2× NGINX's):"
  echo
  echo "| meshgate row | ÷ NGINX (total) | ÷ HAProxy (total) | ÷ NGINX (user) | ÷ bare Pingora (total) |"
  echo "|---|---|---|---|---|"
  for pair in "meshgate|nginx|haproxy" "meshgate, resilience on|nginx|haproxy" "meshgate, TLS keepalive|nginx, TLS keepalive|haproxy, TLS keepalive"; do
    IFS='|' read -r ours nginx haproxy <<<"$pair"
    printf '| %s | %s | %s | %s | %s |\n' "$ours" "$(ratio "${CPU_US[$ours]:-}" "${CPU_US[$nginx]:-}")" \
      "$(ratio "${CPU_US[$ours]:-}" "${CPU_US[$haproxy]:-}")" "$(ratio "${USER_US[$ours]:-}" "${USER_US[$nginx]:-}")" \
      "$(ratio "${CPU_US[$ours]:-}" "${CPU_US[bare Pingora (baseline)]:-}")"
  done
  echo
  echo "Redis CPU during the global-limit run (warm-up included): $(( (redis_after - redis_before) * 1000 / TICKS )) ms."
} | tee "$RESULTS/latest.md"
