#!/usr/bin/env bash
# Memory at rest: meshgate's idle RSS on the bundled policy, and the memory per idle
# keepalive connection, HTTP/1.1 and HTTP/2 (h2c), of meshgate (the bench's plain route, one
# thread) and NGINX (one worker) side by side: 5,000 and 10,000 connections, each after one
# proxied request, each count against freshly started processes.
# Release build.
#
#   loadtest/idle-memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh
ulimit -n "$(ulimit -Hn)" # 10,000 connections need as many descriptors in each process
ECHO_PORT=18701; BUNDLED_PORT=18782; BUNDLED_ADMIN_PORT=18791
MESHGATE_PORT=18780; ADMIN_PORT=18790; NGINX_PORT=18781; NGINX_H2_PORT=18783
WORK=$(mktemp -d /tmp/meshgate-idle.XXXXXX)
PIDS=()
cleanup() {
  # NGINX's worker outlives a killed master: stop it through its PID file first.
  [ -f "$WORK/nginx/nginx.pid" ] && nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" -s stop 2>/dev/null || true
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

target/release/meshgate-echo -l "127.0.0.1:$ECHO_PORT" -n idle >/dev/null 2>&1 & PIDS+=($!)

# The bundled policy as `make run` starts it, on ports of its own.
sed -e "s/127.0.0.1:8080/127.0.0.1:$BUNDLED_PORT/; s/127.0.0.1:9901/127.0.0.1:$BUNDLED_ADMIN_PORT/" \
    -e "s/127.0.0.1:9001/127.0.0.1:$ECHO_PORT/; s/127.0.0.1:9002/127.0.0.1:$ECHO_PORT/" \
    -e 's/^access_log = "stdout".*/access_log = "off"/' conf/meshgate.toml > "$WORK/bundled.toml"
target/release/meshgate run -c "$WORK/bundled.toml" --upgrade-sock "$WORK/bundled.sock" \
  --pid-file "$WORK/bundled.pid" >/dev/null 2>"$WORK/bundled.err" &
BUNDLED=$!; PIDS+=($BUNDLED)
meshgate_policy "$MESHGATE_PORT" "$ADMIN_PORT" > "$WORK/meshgate.toml"
# start_meshgate: a fresh meshgate on the plain route (one thread); sets MESHGATE.
start_meshgate() {
  target/release/meshgate run -c "$WORK/meshgate.toml" --upgrade-sock "$WORK/u.sock" \
    --pid-file "$WORK/meshgate.pid" >/dev/null 2>"$WORK/meshgate.err" &
  MESHGATE=$!; PIDS+=($MESHGATE)
  wait_port "$MESHGATE_PORT"
  sleep 1
}
# start_nginx: a fresh NGINX (one worker) serving HTTP/1.1 on NGINX_PORT and h2c on
# NGINX_H2_PORT; sets NGINX_PIDS.
start_nginx() {
  rm -rf "$WORK/nginx"; mkdir -p "$WORK/nginx"
  NGINX_CONNECTIONS=20000 nginx_conf "$WORK/nginx" "$NGINX_PORT" \
    "worker_rlimit_nofile 32768; daemon off;" "keepalive_timeout 300s; keepalive_requests 100000;" \
    " backlog=4096" "listen 127.0.0.1:$NGINX_H2_PORT http2 backlog=4096;" > "$WORK/nginx/nginx.conf"
  nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" &
  local master=$!; PIDS+=($master)
  wait_port "$NGINX_PORT"
  sleep 1
  NGINX_PIDS=($master $(pgrep -P "$master" || true))
}
stop() { for pid in "$@"; do kill -KILL "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done; }

wait_port "$BUNDLED_PORT"
sleep 1
echo "meshgate idle RSS, bundled policy (2 threads, access log off): $(( $(rss_kib "$BUNDLED") / 1024 )) MiB"
stop "$BUNDLED"
# Each figure from fresh processes: memory an allocator kept from an earlier batch would
# otherwise hide the next batch's.
for count in 5000 10000; do
  for protocol in "" --h2; do
    start_meshgate
    echo "meshgate: $(python3 loadtest/idle_connections.py $protocol "$MESHGATE_PORT" "$count" "$MESHGATE")"
    stop "$MESHGATE"
    start_nginx
    port=$NGINX_PORT; [ -n "$protocol" ] && port=$NGINX_H2_PORT
    echo "nginx:    $(python3 loadtest/idle_connections.py $protocol "$port" "$count" "${NGINX_PIDS[@]}")"
    nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" -s stop 2>/dev/null || true
    stop "${NGINX_PIDS[@]}"
  done
done
