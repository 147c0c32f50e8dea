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

# nginx_conf DIR PORT [MAIN_DIRECTIVES] [HTTP_DIRECTIVES] [LISTEN_OPTIONS]: NGINX with one
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
