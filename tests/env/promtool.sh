#!/usr/bin/env bash
# promtool from Debian's prometheus package, for checking and unit-testing the chart's alerting
# rules. Fetched with `apt-get download` and unpacked with `dpkg -x` into the cache: nothing is
# installed system-wide and no service runs. A tool, not a service: `start` only publishes its path.
#   build  fetch the pinned package and keep its promtool binary, if not cached yet
#   start  write the path the tests use
#   stop   nothing to stop
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Debian bookworm's package. Bump both together; the cache key is the package version.
PROMETHEUS_DEB_VERSION=2.42.0+ds-5+deb12u1
PROMTOOL_VERSION=2.42.0
PROMTOOL_BIN="$BIN_DIR/promtool-$PROMETHEUS_DEB_VERSION"

build() {
  [ -x "$PROMTOOL_BIN" ] && return 0
  log "promtool: fetching Debian's prometheus $PROMETHEUS_DEB_VERSION"
  local work="$CACHE_DIR/promtool-build" blog="$CACHE_DIR/promtool-build.log"
  rm -rf "$work" && mkdir -p "$work"
  # apt-get download needs the package lists; on a fresh machine fetch them once and retry.
  if ! (cd "$work" && apt-get download -q "prometheus=$PROMETHEUS_DEB_VERSION") >"$blog" 2>&1; then
    local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    { $sudo apt-get update -q && (cd "$work" && apt-get download -q "prometheus=$PROMETHEUS_DEB_VERSION"); } \
      >>"$blog" 2>&1 || die promtool "$blog" "apt-get download prometheus=$PROMETHEUS_DEB_VERSION failed"
  fi
  dpkg -x "$work"/prometheus_*.deb "$work/root" >>"$blog" 2>&1 || die promtool "$blog" "dpkg -x failed"
  [ -x "$work/root/usr/bin/promtool" ] || die promtool "$blog" "the package holds no usr/bin/promtool"
  "$work/root/usr/bin/promtool" --version 2>&1 | grep -q "version $PROMTOOL_VERSION" ||
    die promtool "$blog" "promtool does not report version $PROMTOOL_VERSION"
  mv "$work/root/usr/bin/promtool" "$PROMTOOL_BIN.partial"
  mv "$PROMTOOL_BIN.partial" "$PROMTOOL_BIN"
  rm -rf "$work"
}

start() {
  [ -x "$PROMTOOL_BIN" ] || die promtool "" "$PROMTOOL_BIN missing: run '$0 build'"
  write_env promtool <<EOT
export SWITCHYARD_PROMTOOL="$PROMTOOL_BIN"
EOT
}

stop() { rm -f "$RUN_DIR/promtool.env"; }

case "${1:-}" in
  build | start | stop) "$1" ;;
  *) echo "usage: $0 build|start|stop" >&2; exit 2 ;;
esac
