#!/usr/bin/env bash
# The status checker (tests/env/kstatus/main.go): judges one object the way Flux and other
# kstatus users do, and optionally runs an Argo CD health.lua under gopher-lua the way Argo CD
# does, for the conformance tests. A tool, not a service: `start` only publishes its path.
# Usage: tests/env/kstatus.sh build|start|stop
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLI_UTILS_VERSION="$(sed -nE 's#^[[:space:]]*(require[[:space:]]+)?sigs.k8s.io/cli-utils (v[^[:space:]]+).*#\2#p' "$ENV_SRC_DIR/kstatus/go.mod" | head -n1)"
# Keyed by the source too, so an edit to the checker rebuilds it.
SRC_HASH="$(cat "$ENV_SRC_DIR/kstatus/main.go" "$ENV_SRC_DIR/kstatus/go.mod" "$ENV_SRC_DIR/kstatus/go.sum" | sha256sum | cut -c1-12)"
KSTATUS_BIN="$BIN_DIR/kstatus-$CLI_UTILS_VERSION-$SRC_HASH"

build() {
  [ -x "$KSTATUS_BIN" ] && return 0
  log "building $(basename "$KSTATUS_BIN")"
  (cd "$ENV_SRC_DIR/kstatus" && CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags "-s -w" -o "$KSTATUS_BIN.partial" .) ||
    die kstatus "" "go build of the kstatus checker failed"
  mv "$KSTATUS_BIN.partial" "$KSTATUS_BIN"
}

start() {
  [ -x "$KSTATUS_BIN" ] || die kstatus "" "$KSTATUS_BIN missing: run '$0 build'"
  write_env kstatus <<EOT
export SWITCHYARD_KSTATUS="$KSTATUS_BIN"
EOT
}

stop() { rm -f "$RUN_DIR/kstatus.env"; }

case "${1:-}" in
  build) build ;;
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 build|start|stop" >&2; exit 2 ;;
esac
