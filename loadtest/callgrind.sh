#!/usr/bin/env bash
# Instructions per request, counted by callgrind: repeatable on a noisy machine, where CPU
# time is not. Runs meshgate under valgrind for each policy given, drives a fixed number of
# keepalive requests with ab, and prints instructions per request over the measured part.
#
#   REQUESTS=2000 loadtest/callgrind.sh
#   POLICIES="plain resilient" loadtest/callgrind.sh   # some of them only
#   PEERS=0 loadtest/callgrind.sh                       # meshgate only (no bare Pingora, NGINX, HAProxy)
#   HTTP2=0 loadtest/callgrind.sh                       # HTTP/1.1 only (no h2c rows)
#   TCP=0 loadtest/callgrind.sh                         # no TCP proxy rows
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh
REQUESTS=${REQUESTS:-2000}
POLICIES=${POLICIES:-plain resilient local-limit full-chain access-log traced jwt-rs256 jwt-es256 jwt-eddsa}
ECHO_PORT=18001
WORK=$(mktemp -d /tmp/meshgate-callgrind.XXXXXX)
meshgate_policy 18080 18901 > "$WORK/plain.toml"
meshgate_policy 18080 18901 "$RESILIENT_UPSTREAM_KEYS" "$RESILIENT_ROUTE_KEYS" > "$WORK/resilient.toml"
meshgate_policy 18080 18901 "" "$LOCAL_LIMIT_ROUTE_KEYS" > "$WORK/local-limit.toml"
# The whole policy chain: route match, split, outlier detection, breaker limits, a retry
# policy with its budget and timeouts, and a local rate limit, none of which trips.
meshgate_policy 18080 18901 "$RESILIENT_UPSTREAM_KEYS" "$RESILIENT_ROUTE_KEYS
$LOCAL_LIMIT_ROUTE_KEYS" > "$WORK/full-chain.toml"
# Telemetry on: the JSON access log to a file; and that plus traces (1% sampled, exported
# over OTLP to the echo upstream). Their threads are counted too.
meshgate_policy 18080 18901 | sed "s|^access_log = \"off\"|access_log = \"$WORK/access.log\"|" > "$WORK/access-log.toml"
meshgate_policy 18080 18901 | sed "s|^access_log = \"off\"|access_log = \"$WORK/access.log\"\notlp_endpoint = \"http://127.0.0.1:$ECHO_PORT\"\ntrace_sample_ratio = 0.01|" > "$WORK/traced.toml"
# A route with `jwt` (keys from a file), driven with a valid token signed with RS256, ES256
# or EdDSA: the cost of verifying one token per request, against "plain".
loadtest/make_jwt.py "$WORK" > "$WORK/tokens.env"
for alg in rs256 es256 eddsa; do
  meshgate_policy 18080 18901 "" "jwt = { issuer = \"https://idp.bench\", audiences = [\"bench\"], jwks_file = \"$WORK/jwks.json\" }" \
    > "$WORK/jwt-$alg.toml"
done
# token_for POLICY: the bearer token its requests carry (none but for the jwt-* policies).
token_for() {
  case $1 in
    jwt-rs256) grep '^RS256=' "$WORK/tokens.env" | cut -d= -f2 ;;
    jwt-es256) grep '^ES256=' "$WORK/tokens.env" | cut -d= -f2 ;;
    jwt-eddsa) grep '^EdDSA=' "$WORK/tokens.env" | cut -d= -f2 ;;
  esac
}
HEADERS=()
ECHO_PID=""
cleanup() { [ -n "$ECHO_PID" ] && kill "$ECHO_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

target/release/meshgate-echo -l "127.0.0.1:$ECHO_PORT" -n bench -b 1024 2>/dev/null &
ECHO_PID=$!

# drive N CONCURRENCY URL: N keepalive requests, over HTTP/1.1 with ab, or over h2c (HTTP/2
# with prior knowledge, 4 streams per connection) with h2load when PROTOCOL=h2c.
PROTOCOL=http1
drive() {
  if [ "$PROTOCOL" = h2c ]; then
    h2load -n "$1" -c "$2" -m 4 "${HEADERS[@]}" "$3"
  elif [ "$PROTOCOL" = close ]; then
    ab -q -n "$1" -c "$2" "${HEADERS[@]}" "$3"
  else
    ab -q -k -n "$1" -c "$2" "${HEADERS[@]}" "$3"
  fi
}

# measure LABEL PORT COMMAND...: runs COMMAND under callgrind, warms it up, then counts the
# instructions of REQUESTS keepalive requests to PORT (every thread of the process).
measure() {
  local label=$1 port=$2; shift 2
  valgrind --tool=callgrind --callgrind-out-file="$WORK/out.%p" "$@" \
    >/dev/null 2>"$WORK/valgrind.err" &
  local pid=$!
  for _ in $(seq 1 300); do
    if [ "$PROTOCOL" = h2c ]; then
      curl -sf --http2-prior-knowledge -o /dev/null "${HEADERS[@]}" "http://127.0.0.1:$port/" && break
    else
      curl -sf -o /dev/null "${HEADERS[@]}" "http://127.0.0.1:$port/" && break
    fi
    sleep 0.2
  done
  drive 500 4 "http://127.0.0.1:$port/" >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  drive "$REQUESTS" 8 "http://127.0.0.1:$port/" > "$WORK/ab.txt"
  callgrind_control -d "$pid" >/dev/null 2>&1
  sleep 1
  local failed total non2xx
  failed=$(awk '/Failed requests/ {print $3} /^requests:/ {print $10}' "$WORK/ab.txt")
  # Refusals (a 401 to a bad token) would be cheap requests: show them.
  non2xx=$(awk '/Non-2xx responses/ {print $3} /^status codes:/ {print $6 + $8 + $10}' "$WORK/ab.txt")
  # The first explicit dump holds exactly the measured requests.
  total=$(awk '/^summary:|^totals:/ {print $2; exit}' "$WORK/out.$pid.1")
  kill -INT "$pid"; sleep 0.5; kill -KILL "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  rm -f "$WORK"/out.*
  echo "$label: $((total / REQUESTS)) instructions/request over $REQUESTS requests, $failed failed, ${non2xx:-0} non-2xx"
}

for name in $POLICIES; do
  token=$(token_for "$name")
  HEADERS=()
  [ -n "$token" ] && HEADERS=(-H "Authorization: Bearer $token")
  measure "meshgate, $name" 18080 target/release/meshgate run -c "$WORK/$name.toml" \
    --upgrade-sock "$WORK/u.sock" --pid-file "$WORK/p"
done

HEADERS=()

# The same load through the other proxies, one worker each, as in bench.sh.
if [ "${PEERS:-1}" = 1 ]; then
  if [ -x target/release/examples/bare_pingora ]; then
    measure "bare Pingora" 18082 target/release/examples/bare_pingora 127.0.0.1:18082 "127.0.0.1:$ECHO_PORT" 1
  fi
  mkdir -p "$WORK/nginx"
  nginx_conf "$WORK/nginx" 18083 "master_process off; daemon off;" > "$WORK/nginx/nginx.conf"
  measure "nginx" 18083 nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx"
  haproxy_conf 18084 > "$WORK/haproxy.cfg"
  measure "haproxy" 18084 haproxy -f "$WORK/haproxy.cfg" -db
fi

# The same over HTTP/2 with prior knowledge (h2c): meshgate on the plain policy, and the other
# proxies with an h2c listener.
if [ "${HTTP2:-1}" = 1 ]; then
  PROTOCOL=h2c
  measure "meshgate, plain, h2c" 18080 target/release/meshgate run -c "$WORK/plain.toml" \
    --upgrade-sock "$WORK/u.sock" --pid-file "$WORK/p"
  if [ "${PEERS:-1}" = 1 ]; then
    mkdir -p "$WORK/nginx-h2"
    nginx_conf "$WORK/nginx-h2" 18085 "master_process off; daemon off;" "keepalive_requests 100000;" " http2" \
      > "$WORK/nginx-h2/nginx.conf"
    measure "nginx, h2c" 18085 nginx -c "$WORK/nginx-h2/nginx.conf" -p "$WORK/nginx-h2"
    haproxy_conf 18086 " proto h2" > "$WORK/haproxy-h2.cfg"
    measure "haproxy, h2c" 18086 haproxy -f "$WORK/haproxy-h2.cfg" -db
  fi
fi

# TCP proxying: one new connection per request (ab without keepalive) through a `tcp`
# listener to the echo upstream, and through HAProxy's `mode tcp`: instructions per proxied
# connection, each a client and an upstream connection opened, spliced and closed.
if [ "${TCP:-1}" = 1 ]; then
  PROTOCOL=close
  cat > "$WORK/tcp.toml" <<TOML
version = 1
[server]
threads = 1
[admin]
listen = "127.0.0.1:18901"
[telemetry]
access_log = "off"
[[listeners]]
name = "tcp"
listen = "127.0.0.1:18087"
protocol = "tcp"
[[upstreams]]
name = "echo"
endpoints = ["127.0.0.1:$ECHO_PORT"]
[[tcp_routes]]
name = "all"
split = [{ upstream = "echo" }]
TOML
  measure "meshgate, tcp, a connection per request" 18087 target/release/meshgate run -c "$WORK/tcp.toml" \
    --upgrade-sock "$WORK/u.sock" --pid-file "$WORK/p"
  if [ "${PEERS:-1}" = 1 ]; then
    printf 'global\n  nbthread 1\ndefaults\n  mode tcp\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\nfrontend tcp\n  bind 127.0.0.1:18088\n  default_backend echo\nbackend echo\n  server echo 127.0.0.1:%s\n' "$ECHO_PORT" > "$WORK/haproxy-tcp.cfg"
    measure "haproxy, mode tcp, a connection per request" 18088 haproxy -f "$WORK/haproxy-tcp.cfg" -db
  fi
fi
