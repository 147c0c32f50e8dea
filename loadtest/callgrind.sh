#!/usr/bin/env bash
# Instructions per request, counted by callgrind: repeatable on a noisy machine, where CPU
# time is not. Runs meshgate under valgrind for each policy given, drives a fixed number of
# keepalive requests with ab, and prints instructions per request over the measured part.
#
#   REQUESTS=2000 loadtest/callgrind.sh
#   POLICIES="plain resilient" loadtest/callgrind.sh   # some of them only
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh
REQUESTS=${REQUESTS:-2000}
POLICIES=${POLICIES:-plain resilient local-limit access-log traced}
ECHO_PORT=18001
WORK=$(mktemp -d /tmp/meshgate-callgrind.XXXXXX)
meshgate_policy 18080 18901 > "$WORK/plain.toml"
meshgate_policy 18080 18901 "$RESILIENT_UPSTREAM_KEYS" "$RESILIENT_ROUTE_KEYS" > "$WORK/resilient.toml"
meshgate_policy 18080 18901 "" "$LOCAL_LIMIT_ROUTE_KEYS" > "$WORK/local-limit.toml"
# Telemetry on: the JSON access log to a file; and that plus traces (1% sampled, exported
# over OTLP to the echo upstream). Their threads are counted too.
meshgate_policy 18080 18901 | sed "s|^access_log = \"off\"|access_log = \"$WORK/access.log\"|" > "$WORK/access-log.toml"
meshgate_policy 18080 18901 | sed "s|^access_log = \"off\"|access_log = \"$WORK/access.log\"\notlp_endpoint = \"http://127.0.0.1:$ECHO_PORT\"\ntrace_sample_ratio = 0.01|" > "$WORK/traced.toml"
ECHO_PID=""
cleanup() { [ -n "$ECHO_PID" ] && kill "$ECHO_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

target/release/meshgate-echo -l "127.0.0.1:$ECHO_PORT" -n bench -b 1024 2>/dev/null &
ECHO_PID=$!

for name in $POLICIES; do
  policy="$WORK/$name.toml"
  valgrind --tool=callgrind --callgrind-out-file="$WORK/out.%p" \
    target/release/meshgate run -c "$policy" --upgrade-sock "$WORK/u.sock" --pid-file "$WORK/p" \
    >/dev/null 2>"$WORK/valgrind.err" &
  pid=$!
  for _ in $(seq 1 300); do
    curl -sf -o /dev/null http://127.0.0.1:18080/ && break
    sleep 0.2
  done
  ab -q -k -n 500 -c 4 http://127.0.0.1:18080/ >/dev/null
  callgrind_control -z "$pid" >/dev/null
  ab -q -k -n "$REQUESTS" -c 8 http://127.0.0.1:18080/ > "$WORK/ab.txt"
  callgrind_control -d "$pid" >/dev/null
  sleep 1
  failed=$(awk '/Failed requests/ {print $3}' "$WORK/ab.txt")
  # The first explicit dump holds exactly the measured requests.
  total=$(awk '/^summary:|^totals:/ {print $2; exit}' "$WORK/out.$pid.1")
  kill -INT "$pid"; wait "$pid" 2>/dev/null || true
  rm -f "$WORK"/out.*
  echo "$(basename "$policy"): $((total / REQUESTS)) instructions/request over $REQUESTS requests, $failed failed"
done
