#!/usr/bin/env bash
# Ten binary upgrades in a row under keepalive load, over HTTP/1.1 (wrk -c32) and then over
# HTTP/2 (h2c, meshgate-h2soak: h2load never opens a new connection after a GOAWAY, so it
# cannot hold load across upgrades), on loopback. Prints each load tool's request and error
# counts; a zero-drop upgrade shows 0 socket errors, 0 failed and only 2xx. HTTP/2 streams the
# old process refused unprocessed (GOAWAY) are resent by the client, as RFC 9113 allows; the
# access log shows whether any of them had reached a gateway.
#
#   UPGRADES=10 loadtest/upgrade-soak.sh [path/to/meshgate]
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${1:-target/release/meshgate}
[ -x "$BIN" ] || BIN=target/debug/meshgate
ECHO=$(dirname "$BIN")/meshgate-echo
H2SOAK=$(dirname "$BIN")/meshgate-h2soak
UPGRADES=${UPGRADES:-10}
ECHO_PORT=18301; LISTEN_PORT=18380; ADMIN_PORT=18390
WORK=$(mktemp -d /tmp/meshgate-soak.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  pkill -KILL -f "$WORK/meshgate.toml" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

"$ECHO" -l "127.0.0.1:$ECHO_PORT" -n soak >/dev/null 2>&1 & PIDS+=($!)
. loadtest/lib.sh
# The bench policy, with a short drain so that each old process leaves quickly, and an access
# log shared by every process.
meshgate_policy "$LISTEN_PORT" "$ADMIN_PORT" \
  | sed 's/^threads = 1$/threads = 1\ngrace_period = "10s"\ndrain_delay = "1s"/' \
  | sed "s|^access_log = \"off\"$|access_log = \"$WORK/access.log\"|" > "$WORK/meshgate.toml"

start() { # start [--upgrade]: a gateway on the shared policy, PID file and upgrade socket
  "$BIN" run -c "$WORK/meshgate.toml" --upgrade-sock "$WORK/upgrade.sock" \
    --pid-file "$WORK/meshgate.pid" "$@" 2>>"$WORK/stderr.log" &
}

upgrade_loop() { # upgrade_loop: UPGRADES hand-overs, each once the new process waits
  for n in $(seq "$UPGRADES"); do
    old=$(cat "$WORK/meshgate.pid")
    rm -f "$WORK/upgrade.sock"
    start --upgrade
    for _ in $(seq 200); do [ -S "$WORK/upgrade.sock" ] && break; sleep 0.05; done
    kill -QUIT "$old"
    for _ in $(seq 400); do kill -0 "$old" 2>/dev/null || break; sleep 0.05; done
    if kill -0 "$old" 2>/dev/null; then echo "upgrade $n: the old process $old is still running"; fi
  done
}

start
for _ in $(seq 100); do curl -sf "localhost:$ADMIN_PORT/readyz" >/dev/null && break; sleep 0.1; done
# Each upgrade takes about 6.5 s (Pingora offers the sockets for 5 s, then the old process
# drains): size the load to cover every one of them.
SECONDS_NEEDED=$((UPGRADES * 7 + 4))

echo "== HTTP/1.1: wrk -t2 -c32 -d${SECONDS_NEEDED}s across $UPGRADES upgrades"
wrk -t2 -c32 -d"${SECONDS_NEEDED}s" "http://127.0.0.1:$LISTEN_PORT/" > "$WORK/wrk.out" &
load=$!
sleep 2; upgrade_loop; wait "$load"
grep -E "requests in|Socket errors|Non-2xx" "$WORK/wrk.out" || true
grep -q "Socket errors" "$WORK/wrk.out" || echo "Socket errors: none"
grep -q "Non-2xx" "$WORK/wrk.out" || echo "Non-2xx or 3xx responses: none"

echo "== HTTP/2: meshgate-h2soak -c32 -m4 -d${SECONDS_NEEDED} across $UPGRADES upgrades"
: > "$WORK/access.log"
"$H2SOAK" --addr "127.0.0.1:$LISTEN_PORT" -c 32 -m 4 -d "$SECONDS_NEEDED" \
  > "$WORK/h2soak.out" 2> "$WORK/h2soak.err" &
load=$!
sleep 2; upgrade_loop; wait "$load"
cat "$WORK/h2soak.out"
sleep 1 # the last access log lines
refused=$(grep -c ": refused$" "$WORK/h2soak.err" || true)
reached=0
for path in $(grep ": refused$" "$WORK/h2soak.err" | cut -d: -f1); do
  grep -q "\"path\":\"$path\"" "$WORK/access.log" && reached=$((reached + 1))
done
echo "refused streams: $refused, of which reached a gateway: $reached"
grep ": failed" "$WORK/h2soak.err" | head -5 || true
echo "== errors logged by the gateways:"
grep -c " ERROR " "$WORK/stderr.log" || true
