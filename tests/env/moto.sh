#!/usr/bin/env bash
# moto in server mode: a local AWS API (SQS, SNS, ...) on 127.0.0.1, state in memory.
#   build  create a virtualenv in the cache with the pinned moto[server]
#   start  run moto_server on a free port (POST /moto-api/reset clears state between tests)
#   stop   stop exactly that process
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MOTO_VERSION=5.2.5
PY_VERSION="$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
VENV="$CACHE_DIR/moto-$MOTO_VERSION-py$PY_VERSION"
DATA="$RUN_DIR/moto"
LOG="$DATA/moto.log"

build() {
  [ -f "$VENV/.complete" ] && return 0
  log "moto: installing moto[server]==$MOTO_VERSION into $VENV"
  rm -rf "$VENV"
  { python3 -m venv "$VENV" &&
    "$VENV/bin/pip" install -q --disable-pip-version-check "moto[server]==$MOTO_VERSION"; } \
    >"$CACHE_DIR/moto-build.log" 2>&1 || die moto "$CACHE_DIR/moto-build.log" "pip install failed"
  "$VENV/bin/pip" freeze >"$VENV/installed.txt"   # what was resolved, for the record
  touch "$VENV/.complete"
}

# The shared server's settings, and the moto_server binary for tests that start their own (with
# IAM enforced, say).
publish() {
  { cat "$DATA/env"; echo "export SWITCHYARD_MOTO_SERVER=$VENV/bin/moto_server"; } | write_env moto
}

ready() { curl -sf "http://127.0.0.1:$1/moto-api/" >/dev/null; }

start() {
  if is_running moto; then
    log "moto: already running"; publish; return 0
  fi
  [ -f "$VENV/.complete" ] || die moto "" "not built; run: $0 build"
  rm -rf "$DATA" && mkdir -p "$DATA"
  local port; port="$(free_port)"
  log "moto: starting moto_server $MOTO_VERSION on 127.0.0.1:$port"
  nohup "$VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >"$LOG" 2>&1 &
  record_pid moto $!
  wait_for moto "$LOG" 30 ready "$port"

  # Static test credentials: moto accepts any, the AWS SDKs just need some.
  cat >"$DATA/env" <<ENV
export SWITCHYARD_AWS_ENDPOINT=http://127.0.0.1:$port
export AWS_ACCESS_KEY_ID=testing
export AWS_SECRET_ACCESS_KEY=testing
export AWS_REGION=us-east-1
export AWS_DEFAULT_REGION=us-east-1
ENV
  publish
  log "moto: ready"
}

stop() {
  stop_pid moto
  rm -f "$RUN_DIR/moto.env"
}

case "${1:-}" in
  build | start | stop) "$1" ;;
  *) echo "usage: $0 build|start|stop" >&2; exit 2 ;;
esac
