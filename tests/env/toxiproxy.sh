#!/usr/bin/env bash
# Toxiproxy, a fault-injecting TCP proxy, built from the github.com/Shopify/toxiproxy/v2 Go
# module (pinned below), with its HTTP API on 127.0.0.1 only. It starts with no proxies: each
# test in tests/e2e/faults.rs creates its own proxy in front of one broker (or the API server)
# through the API, adds toxics (latency, reset_peer, timeout, bandwidth) and deletes it again.
# Usage: tests/env/toxiproxy.sh build|start|stop
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TOXIPROXY_VERSION=v2.12.0
TOXIPROXY_BIN="$BIN_DIR/toxiproxy-server-$TOXIPROXY_VERSION"
DATA="$RUN_DIR/toxiproxy"
LOG="$DATA/toxiproxy.log"

build() {
  [ -x "$TOXIPROXY_BIN" ] && return 0
  log "building toxiproxy-server $TOXIPROXY_VERSION (first run only)"
  local tmp
  tmp="$(mktemp -d)"
  CGO_ENABLED=0 GOBIN="$tmp" go install -trimpath -ldflags "-s -w" \
    "github.com/Shopify/toxiproxy/v2/cmd/server@$TOXIPROXY_VERSION" >"$CACHE_DIR/toxiproxy-build.log" 2>&1 ||
    die toxiproxy "$CACHE_DIR/toxiproxy-build.log" "go install of toxiproxy $TOXIPROXY_VERSION failed"
  mv "$tmp/server" "$TOXIPROXY_BIN"
  rm -rf "$tmp"
}

start() {
  if is_running toxiproxy; then
    log "toxiproxy: already running"; write_env toxiproxy <"$DATA/env"; return 0
  fi
  stop
  [ -x "$TOXIPROXY_BIN" ] || die toxiproxy "" "$TOXIPROXY_BIN missing: run '$0 build'"
  rm -rf "$DATA" && mkdir -p "$DATA"
  local port
  port="$(free_port)"
  log "toxiproxy: starting toxiproxy-server $TOXIPROXY_VERSION, API on 127.0.0.1:$port"
  nohup "$TOXIPROXY_BIN" -host 127.0.0.1 -port "$port" >>"$LOG" 2>&1 </dev/null &
  record_pid toxiproxy $!
  wait_for toxiproxy "$LOG" 30 http_ok "http://127.0.0.1:$port/version"

  cat >"$DATA/env" <<ENV
export SWITCHYARD_TOXIPROXY_URL=http://127.0.0.1:$port
ENV
  write_env toxiproxy <"$DATA/env"
  log "toxiproxy: ready"
}

stop() {
  stop_pid toxiproxy
  rm -f "$RUN_DIR/toxiproxy.env"
}

case "${1:-}" in
  build | start | stop) "$1" ;;
  *) echo "usage: $0 build|start|stop" >&2; exit 2 ;;
esac
