#!/usr/bin/env bash
# NATS with JetStream, built from the github.com/nats-io/nats-server/v2 Go module (pinned
# below), on 127.0.0.1 only, with its store under the run dir. Four users, to exercise the
# credential and permission paths:
#   switchyard  account APP, JetStream enabled, may do anything
#   nojs        account APP, but denied every JetStream API subject ($JS.API.>)
#   an NKey     account APP, JetStream enabled, authenticating with the seed below
#   limited     account LIMITED, whose JetStream limits allow two streams in 1 MiB of file
#               storage (the "limits exceeded" test)
# Usage: tests/env/nats.sh build|start|stop
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NATS_VERSION=v2.15.3
NATS_BIN="$BIN_DIR/nats-server-$NATS_VERSION"
DATA="$RUN_DIR/nats"
LOG="$DATA/nats.log"
PASSWORD=switchyard-nats-secret   # test-only
# A test-only NKey user pair (made with github.com/nats-io/nkeys CreateUser).
NKEY_SEED=SUAMXOYDYCAS7TEGX4PPQR4MQJC6RNPGFHQ7W5SPBIVSGBN2F3MLOR7POI
NKEY_PUBLIC=UALNQ2OJ6SY4YRBS3WWSXTNP4FUUVUUGDNPYFNAAW7I4AIKFBNOARTAF

build() {
  [ -x "$NATS_BIN" ] && return 0
  log "building nats-server $NATS_VERSION (first run only)"
  local tmp
  tmp="$(mktemp -d)"
  # nats-server's go.mod has no replace directives, so a plain `go install` builds it.
  CGO_ENABLED=0 GOBIN="$tmp" go install -trimpath -ldflags "-s -w" \
    "github.com/nats-io/nats-server/v2@$NATS_VERSION" >"$CACHE_DIR/nats-build.log" 2>&1 ||
    die nats "$CACHE_DIR/nats-build.log" "go install of nats-server $NATS_VERSION failed"
  mv "$tmp/nats-server" "$NATS_BIN"
  rm -rf "$tmp"
}

start() {
  if is_running nats; then
    log "nats: already running"; write_env nats <"$DATA/env"; return 0
  fi
  stop
  [ -x "$NATS_BIN" ] || die nats "" "$NATS_BIN missing: run '$0 build'"
  rm -rf "$DATA" && mkdir -p "$DATA/store"
  local port monitor
  port="$(free_port)"
  monitor="$(free_port)"; while [ "$monitor" = "$port" ]; do monitor="$(free_port)"; done

  # Quoted strings are literal in the NATS config format ($ starts a variable otherwise).
  cat >"$DATA/nats.conf" <<CONF
server_name: switchyard-test
listen: "127.0.0.1:$port"
http: "127.0.0.1:$monitor"
jetstream {
  store_dir: "$DATA/store"
  max_memory_store: 268435456
  max_file_store: 2147483648
}
accounts {
  APP {
    jetstream: enabled
    users: [
      { user: "switchyard", password: "$PASSWORD" }
      { user: "nojs", password: "$PASSWORD", permissions: { publish: { deny: ["\$JS.API.>"] } } }
      { nkey: "$NKEY_PUBLIC" }
    ]
  }
  LIMITED {
    jetstream: { max_memory: 1048576, max_file: 1048576, max_streams: 2, max_consumers: 8 }
    users: [ { user: "limited", password: "$PASSWORD" } ]
  }
}
CONF
  log "nats: starting nats-server $NATS_VERSION on 127.0.0.1:$port (monitoring :$monitor)"
  nohup "$NATS_BIN" -c "$DATA/nats.conf" >>"$LOG" 2>&1 </dev/null &
  record_pid nats $!
  wait_for nats "$LOG" 30 http_ok "http://127.0.0.1:$monitor/healthz?js-enabled-only=true"

  cat >"$DATA/env" <<ENV
export SWITCHYARD_NATS_URL=nats://127.0.0.1:$port
export SWITCHYARD_NATS_MONITOR_URL=http://127.0.0.1:$monitor
export SWITCHYARD_NATS_USER=switchyard
export SWITCHYARD_NATS_PASSWORD=$PASSWORD
export SWITCHYARD_NATS_NOJS_USER=nojs
export SWITCHYARD_NATS_NOJS_PASSWORD=$PASSWORD
export SWITCHYARD_NATS_LIMITED_USER=limited
export SWITCHYARD_NATS_LIMITED_PASSWORD=$PASSWORD
export SWITCHYARD_NATS_NKEY_SEED=$NKEY_SEED
ENV
  write_env nats <"$DATA/env"
  log "nats: ready"
}

stop() {
  stop_pid nats
  rm -f "$RUN_DIR/nats.env"
}

case "${1:-}" in
  build | start | stop) "$1" ;;
  *) echo "usage: $0 build|start|stop" >&2; exit 2 ;;
esac
