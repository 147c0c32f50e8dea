#!/usr/bin/env bash
# HTTP/2 rows of the benchmark: meshgate, NGINX and HAProxy as HTTP/2 reverse proxies (h2c
# with prior knowledge, and TLS with ALPN h2) in front of the same HTTP/1.1 echo upstream,
# driven by h2load -c32 -m10, with the same method as bench.sh: each proxy one worker pinned
# to CPU 0, h2load and the upstream on CPU 1, CPU per request from /proc/PID/stat.
#
#   DURATION=10 loadtest/http2.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh

DURATION=${DURATION:-10}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
ECHO_PORT=18201
MESHGATE_PORT=18210; MESHGATE_ADMIN=18211; MESHGATE_TLS_PORT=18212; MESHGATE_TLS_ADMIN=18213
NGINX_PORT=18220; NGINX_TLS_PORT=18221; HAPROXY_PORT=18230; HAPROXY_TLS_PORT=18231
bench_workspace http2
require_tools http2 h2load nginx haproxy taskset openssl

taskset -c "$LOAD_CPU" target/release/meshgate-echo -l "127.0.0.1:$ECHO_PORT" -n bench -b 1024 -t 1 2>/dev/null &
PIDS+=($!)
bench_certificate "$WORK"

meshgate_policy "$MESHGATE_PORT" "$MESHGATE_ADMIN" > "$WORK/h2c.toml"
tls_policy "$MESHGATE_TLS_PORT" "$MESHGATE_TLS_ADMIN" "$WORK" > "$WORK/tls.toml"
for name in h2c tls; do
  MESHGATE_LOG=warn taskset -c "$PROXY_CPU" target/release/meshgate run -c "$WORK/$name.toml" \
    --upgrade-sock "$WORK/$name.sock" --pid-file "$WORK/$name.pid" 2>"$WORK/$name.err" &
  PIDS+=($!)
  eval "MESHGATE_${name^^}_PID=$!"
done

mkdir -p "$WORK/nginx"
# One NGINX serving h2c (prior knowledge) and h2 over TLS, with no limit on requests per
# connection (h2load never reconnects).
NGINX_CONNECTIONS=4096 nginx_conf "$WORK/nginx" "$NGINX_PORT" "daemon off;" \
  "keepalive_requests 100000000; http2_max_concurrent_streams 128;" " http2" \
  "listen 127.0.0.1:$NGINX_TLS_PORT ssl http2; ssl_certificate $WORK/tls.crt; ssl_certificate_key $WORK/tls.key; ssl_protocols TLSv1.2 TLSv1.3;" \
  > "$WORK/nginx/nginx.conf"
taskset -c "$PROXY_CPU" nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" &
NGINX_MASTER=$!; PIDS+=($NGINX_MASTER)

{ haproxy_head; cat <<HAPROXY; } > "$WORK/haproxy.cfg"
frontend h2c
  bind 127.0.0.1:$HAPROXY_PORT proto h2
  default_backend echo
frontend h2_tls
  bind 127.0.0.1:$HAPROXY_TLS_PORT ssl crt $WORK/tls.pem alpn h2,http/1.1 ssl-min-ver TLSv1.2
  default_backend echo
backend echo
  server echo 127.0.0.1:$ECHO_PORT
HAPROXY
taskset -c "$PROXY_CPU" haproxy -f "$WORK/haproxy.cfg" -db &
HAPROXY_PID=$!; PIDS+=($HAPROXY_PID)

for port in "$MESHGATE_PORT" "$MESHGATE_TLS_PORT" "$NGINX_PORT" "$NGINX_TLS_PORT" "$HAPROXY_PORT" "$HAPROXY_TLS_PORT"; do
  wait_port "$port"
done
NGINX_PIDS=($NGINX_MASTER $(pgrep -P "$NGINX_MASTER" || true))

declare -A CPU_US
# run NAME URL PIDS...: h2load at URL for DURATION seconds after 2 s of warm-up; prints a row.
run() {
  local name=$1 url=$2; shift 2
  local before after out
  taskset -c "$LOAD_CPU" h2load -t1 -c32 -m10 -D 2 "$url" >/dev/null 2>&1
  before=$(cpu_ticks "$@")
  out=$(taskset -c "$LOAD_CPU" h2load -t1 -c32 -m10 -D "$DURATION" "$url" 2>&1)
  after=$(cpu_ticks "$@")
  local rps succeeded failed mean cpu_us
  rps=$(echo "$out" | awk '/^finished in/ {print $4}')
  succeeded=$(echo "$out" | awk '/^requests:/ {print $8}')
  failed=$(echo "$out" | awk '/^requests:/ {print $10}')
  mean=$(echo "$out" | awk '/^time for request:/ {print $6}')
  cpu_us=$(per_request $((after - before)) "$succeeded")
  CPU_US[$name]=$cpu_us
  printf '| %s | %s | %s | %s | %s/%s |\n' "$name" "$rps" "$cpu_us" "$mean" "$succeeded" "$failed"
}

echo "HTTP/2, h2load -t1 -c32 -m10 -D $DURATION, 1 KiB responses from an HTTP/1.1 upstream, proxy on CPU $PROXY_CPU, h2load and upstream on CPU $LOAD_CPU."
echo
echo "| target | requests/s | proxy CPU µs/request | mean latency | succeeded/failed |"
echo "|---|---|---|---|---|"
run "meshgate, h2c" "http://127.0.0.1:$MESHGATE_PORT/" "$MESHGATE_H2C_PID"
run "nginx, h2c" "http://127.0.0.1:$NGINX_PORT/" "${NGINX_PIDS[@]}"
run "haproxy, h2c" "http://127.0.0.1:$HAPROXY_PORT/" "$HAPROXY_PID"
run "meshgate, h2 over TLS" "https://127.0.0.1:$MESHGATE_TLS_PORT/" "$MESHGATE_TLS_PID"
run "nginx, h2 over TLS" "https://127.0.0.1:$NGINX_TLS_PORT/" "${NGINX_PIDS[@]}"
run "haproxy, h2 over TLS" "https://127.0.0.1:$HAPROXY_TLS_PORT/" "$HAPROXY_PID"
echo
echo "| meshgate row | CPU ÷ NGINX | CPU ÷ HAProxy |"
echo "|---|---|---|"
for kind in "h2c" "h2 over TLS"; do
  printf '| meshgate, %s | %s | %s |\n' "$kind" "$(ratio "${CPU_US[meshgate, $kind]:-}" "${CPU_US[nginx, $kind]:-}")" \
    "$(ratio "${CPU_US[meshgate, $kind]:-}" "${CPU_US[haproxy, $kind]:-}")"
done
