#!/usr/bin/env bash
# Runs schemathesis (every check) against a real gateway's admin API and the OpenAPI
# description in admin-api/openapi.yaml. Installs schemathesis from PyPI into a venv under
# target/ the first time. `make check-api` runs this after building the gateway.
#
#   admin-api/check-api.sh [path/to/meshgate]
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${1:-target/debug/meshgate}
ECHO=$(dirname "$BIN")/meshgate-echo
VENV=target/api-check-venv
SCHEMATHESIS_VERSION=4.32.5
if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
fi

WORK=$(mktemp -d /tmp/meshgate-api-check.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ECHO_PORT=$(port); LISTEN_PORT=$(port); ADMIN_PORT=$(port)
. loadtest/lib.sh
# The bench policy: one listener, one upstream, the admin token created on first start.
meshgate_policy "$LISTEN_PORT" "$ADMIN_PORT" > "$WORK/meshgate.toml"
"$ECHO" -l "127.0.0.1:$ECHO_PORT" -n echo >/dev/null 2>&1 & PIDS+=($!)
"$BIN" run -c "$WORK/meshgate.toml" --upgrade-sock "$WORK/upgrade.sock" \
  --pid-file "$WORK/meshgate.pid" 2>"$WORK/stderr.log" & PIDS+=($!)
ready=0
for _ in $(seq 100); do curl -sf "127.0.0.1:$ADMIN_PORT/readyz" >/dev/null && { ready=1; break; }; sleep 0.1; done
if [ "$ready" = 0 ] || [ ! -f "$WORK/admin.token" ]; then
  echo "check-api: the gateway ($BIN) did not become ready in 10 s; its log:" >&2
  cat "$WORK/stderr.log" >&2
  exit 1
fi
TOKEN=$(cat "$WORK/admin.token")

# /drain ends the gateway under test, so it is left out here (the suite's admin tests call it).
timeout 600 "$VENV/bin/schemathesis" --config-file admin-api/schemathesis.toml run admin-api/openapi.yaml \
  --url "http://127.0.0.1:$ADMIN_PORT" \
  -H "Authorization: Bearer $TOKEN" \
  --checks all \
  --exclude-path /drain \
  --max-examples "${MAX_EXAMPLES:-60}" \
  --seed "${SEED:-1}" \
  --request-timeout 10 \
  --workers 1
