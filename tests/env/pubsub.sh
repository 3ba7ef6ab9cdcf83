#!/usr/bin/env bash
# The Google Cloud Pub/Sub emulator (Java, in memory) on 127.0.0.1.
#   build  check the emulator is installed (Debian package google-cloud-cli-pubsub-emulator,
#          from Google's Cloud SDK apt repository); try to apt-get install it if not
#   start  run it on a free port; every project id is accepted
#   stop   stop exactly that process
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PKG=google-cloud-cli-pubsub-emulator
EMULATOR=/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator
DATA="$RUN_DIR/pubsub"
LOG="$DATA/pubsub.log"

build() {
  [ -x "$EMULATOR" ] && return 0
  log "pubsub: $EMULATOR is missing; trying: apt-get install $PKG"
  local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  { $sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "$PKG"; } \
    >"$CACHE_DIR/apt-pubsub.log" 2>&1 || true
  [ -x "$EMULATOR" ] || die pubsub "$CACHE_DIR/apt-pubsub.log" "the Pub/Sub emulator is not installed and apt-get could not" \
    "install it: install the Debian package $PKG (it needs Google's Cloud SDK apt repository" \
    "configured) so that $EMULATOR exists"
}

ok() { [ "$(curl -sf "http://127.0.0.1:$1/")" = "Ok" ]; }

start() {
  if is_running pubsub; then
    log "pubsub: already running"; write_env pubsub <"$DATA/env"; return 0
  fi
  [ -x "$EMULATOR" ] || die pubsub "" "emulator missing; run: $0 build"
  rm -rf "$DATA" && mkdir -p "$DATA"
  local port; port="$(free_port)"
  log "pubsub: starting the emulator on 127.0.0.1:$port"
  # The launcher execs java, so $! is the JVM itself.
  CLOUD_PUBSUB_EMULATOR_OPTS="-Xmx256m" nohup "$EMULATOR" --host=127.0.0.1 --port="$port" >"$LOG" 2>&1 &
  record_pid pubsub $!
  wait_for pubsub "$LOG" 60 ok "$port"

  cat >"$DATA/env" <<ENV
export SWITCHYARD_PUBSUB_ENDPOINT=http://127.0.0.1:$port
export PUBSUB_EMULATOR_HOST=127.0.0.1:$port
ENV
  write_env pubsub <"$DATA/env"
  log "pubsub: ready"
}

stop() {
  stop_pid pubsub
  rm -f "$RUN_DIR/pubsub.env"
}

case "${1:-}" in
  build | start | stop) "$1" ;;
  *) echo "usage: $0 build|start|stop" >&2; exit 2 ;;
esac
