# Shared by the benchmark scripts: the policies meshgate is measured with.

# meshgate_policy PORT ADMIN_PORT [UPSTREAM_KEYS] [ROUTE_KEYS]: a one-route policy to the echo
# upstream on $ECHO_PORT, one worker thread, access log off.
meshgate_policy() {
  cat <<TOML
version = 1
[server]
threads = 1
[admin]
listen = "127.0.0.1:$2"
[telemetry]
access_log = "off"
[[listeners]]
name = "bench"
listen = "127.0.0.1:$1"
[[upstreams]]
name = "echo"
endpoints = ["127.0.0.1:$ECHO_PORT"]
${3:-}
[[routes]]
name = "all"
match = { path_prefix = "/" }
split = [{ upstream = "echo", weight = 100 }]
${4:-}
TOML
}


# The resilience features on, with limits that never trip at benchmark load: outlier
# detection, breaker limits, a retry policy with its budget, and a request timeout.
RESILIENT_UPSTREAM_KEYS='circuit_breaker = { max_requests = 512, max_pending = 512, max_connections = 512, max_retries = 64 }
outlier_detection = { consecutive_failures = 5 }'
RESILIENT_ROUTE_KEYS='retry = { attempts = 2, on = ["connect-failure", "5xx"], per_try_timeout = "2s" }
timeouts = { request = "5s" }'

# Rate limits that never trip at benchmark load: a local one keyed on the client address, and
# a global one in Redis at $REDIS_PORT.
LOCAL_LIMIT_ROUTE_KEYS='rate_limit = { requests_per_second = 1000000, burst = 1000000, key = "client_ip" }'
GLOBAL_LIMIT_ROUTE_KEYS='rate_limit = { requests_per_second = 1000000, burst = 1000000, key = "client_ip", scope = "global" }'
global_limit_store() {
  printf '[rate_limit_store]\nredis = "redis://127.0.0.1:%s/0"\n' "$REDIS_PORT"
}

# nginx_conf DIR PORT [MAIN_DIRECTIVES] [HTTP_DIRECTIVES] [LISTEN_OPTIONS] [SERVER_DIRECTIVES]: NGINX with one
# worker, its files in DIR, proxying 127.0.0.1:PORT to the echo upstream on $ECHO_PORT with
# upstream keepalive, access log off; NGINX_CONNECTIONS worker connections (default 1024).
nginx_conf() {
  cat <<NGINX
worker_processes 1;
${3:-}
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections ${NGINX_CONNECTIONS:-1024}; }
http {
  access_log off;
  ${4:-}
  client_body_temp_path $1/body;
  proxy_temp_path $1/proxy;
  upstream echo { server 127.0.0.1:$ECHO_PORT; keepalive 64; }
  server {
    listen 127.0.0.1:$2${5:-};
    ${6:-}
    location / { proxy_pass http://echo; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
NGINX
}

# haproxy_head: HAProxy's global and defaults sections as the benchmarks run it, one thread,
# HTTP mode, server connections reused; frontends and backends follow.
haproxy_head() {
  cat <<HAPROXY
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  http-reuse always
HAPROXY
}

# haproxy_conf PORT [BIND_OPTIONS]: HAProxy as the benchmarks run it, with one frontend on
# 127.0.0.1:PORT (BIND_OPTIONS such as " proto h2") in front of the echo upstream.
haproxy_conf() {
  haproxy_head
  cat <<HAPROXY
frontend bench
  bind 127.0.0.1:$1${2:-}
  default_backend echo
backend echo
  server echo 127.0.0.1:$ECHO_PORT
HAPROXY
}

# bench_workspace NAME: the scratch folder $WORK (removed on exit), the list PIDS of the servers
# a script starts, and TICKS (clock ticks per second, for /proc CPU times). On exit each server
# gets SIGINT, a fast shutdown for Pingora and NGINX (SIGTERM would make Pingora drain), then
# SIGKILL: HAProxy in the foreground may ignore SIGINT, and a survivor would share its port
# with the next run (SO_REUSEPORT) and skew its figures.
bench_workspace() {
  WORK=$(mktemp -d "/tmp/meshgate-$1.XXXXXX")
  PIDS=()
  TICKS=$(getconf CLK_TCK)
  trap stop_servers EXIT
}
stop_servers() {
  for pid in "${PIDS[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
  sleep 1
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}

# require_tools SCRIPT TOOL...: fails, naming the make target that installs them, unless every
# TOOL is on the PATH.
require_tools() {
  local script=$1; shift
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "$script: $tool is missing (run make deps bench-deps)" >&2; exit 1; }
  done
}

# wait_port PORT: waits up to 10 s for 127.0.0.1:PORT to accept, or fails showing the tails of
# $WORK/*.err.
wait_port() {
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "bench: port $1 did not open" >&2
  for err in "$WORK"/*.err; do echo "== $err" >&2; tail -n 20 "$err" >&2; done
  exit 1
}

# cpu_ticks PID...: the sum of utime+stime, in clock ticks, over the given PIDs.
cpu_ticks() {
  local total=0 pid fields
  for pid in "$@"; do
    fields=$(sed 's/^.*) //' "/proc/$pid/stat")
    set -- $fields
    total=$((total + ${12} + ${13}))
  done
  echo "$total"
}

# bench_certificate DIR: one ECDSA P-256 certificate for every TLS terminator, as DIR/tls.crt,
# DIR/tls.key and both in DIR/tls.pem (HAProxy's form).
bench_certificate() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=bench.test -addext subjectAltName=DNS:bench.test,IP:127.0.0.1 \
    -keyout "$1/tls.key" -out "$1/tls.crt" 2>/dev/null
  cat "$1/tls.crt" "$1/tls.key" > "$1/tls.pem"
}

# tls_policy PORT ADMIN_PORT DIR: the plain policy with a TLS listener on DIR's certificate.
tls_policy() {
  meshgate_policy "$1" "$2" | sed "/^listen = \"127.0.0.1:$1\"/a [listeners.tls]\ncert = \"$3/tls.crt\"\nkey = \"$3/tls.key\""
}

# ratio A B: A / B with one decimal, or "-" when either is not a number.
ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.2f", a / b; else printf "-" }'
}

# user_ticks PID...: the sum of utime alone, in clock ticks, over the given PIDs.
user_ticks() {
  local total=0 pid fields
  for pid in "$@"; do
    fields=$(sed 's/^.*) //' "/proc/$pid/stat")
    set -- $fields
    total=$((total + ${12}))
  done
  echo "$total"
}

# per_request TICKS REQUESTS: microseconds of CPU per request, from clock ticks ($TICKS a
# second), or "-" when no request completed.
per_request() {
  awk -v t="$1" -v hz="$TICKS" -v n="$2" 'BEGIN { if (n > 0) printf "%.1f", t * 1e6 / hz / n; else printf "-" }'
}
