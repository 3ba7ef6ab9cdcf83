#!/usr/bin/env bash
# The Dapr JavaScript SDK (@dapr/dapr, npm, package-lock.json) for the relay tests: tests/relay/node/app.js
# publishes and subscribes with it over HTTP against `switchyard relay` as its sidecar.
# Cached by the hash of what pins it, so a warm run installs nothing.
#   build  install what is missing
#   start  nothing runs; write the paths the tests use
#   stop   nothing to stop
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SRC="$REPO_DIR/tests/relay/node"
key() { cat "$@" | sha256sum | cut -c1-12; }
NODE_DIR="$CACHE_DIR/relay-sdk-node-$(key "$SRC/package.json" "$SRC/package-lock.json")"

build() {
  npm_ci relay-sdk "$SRC" "$NODE_DIR" "the Dapr JavaScript SDK"
}

start() {
  [ -f "$NODE_DIR/.complete" ] || die relay-sdk "" "$NODE_DIR not built; run: $0 build"
  write_env relay-sdk <<ENV
export SWITCHYARD_DAPR_NODE="node"
export SWITCHYARD_DAPR_NODE_PATH="$NODE_DIR/node_modules"
export SWITCHYARD_DAPR_NODE_SCRIPT="$SRC/app.js"
ENV
  log "relay-sdk: ready"
}

stop() {
  rm -f "$RUN_DIR/relay-sdk.env"
}

case "${1:-}" in
  build | start | stop) "$1" ;;
  *) echo "usage: $0 build|start|stop" >&2; exit 2 ;;
esac
