#!/usr/bin/env bash
# Flux for the GitOps tests: source-controller and kustomize-controller built from their Go
# modules (pinned in tests/env/flux/{source,kustomize}/go.mod), run out of cluster against the
# test API server (start `kube` first), plus a read-only smart-HTTP git server on 127.0.0.1
# serving the bare repositories the tests create under $SWITCHYARD_FLUX_GIT_ROOT.
# Usage: tests/env/flux.sh build|start|stop
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

FLUX_SRC="$ENV_SRC_DIR/flux"
mod_version() { # DIR MODULE
  sed -nE "s#^[[:space:]]*(require[[:space:]]+)?$2 (v[^[:space:]]+).*#\2#p" "$FLUX_SRC/$1/go.mod" | head -n1
}
SOURCE_VERSION="$(mod_version source github.com/fluxcd/source-controller)"
KUSTOMIZE_VERSION="$(mod_version kustomize github.com/fluxcd/kustomize-controller)"

SOURCE_BIN="$BIN_DIR/flux-source-controller-$SOURCE_VERSION"
KUSTOMIZE_BIN="$BIN_DIR/flux-kustomize-controller-$KUSTOMIZE_VERSION"
# The CRDs ship in each module's config/crd/bases; copied next to the binaries at build time so
# that starting needs neither Go nor the module cache.
CRD_DIR="$CACHE_DIR/flux-crds-source-$SOURCE_VERSION-kustomize-$KUSTOMIZE_VERSION"
FDIR="$RUN_DIR/flux"

# go_build OUT MODULE_DIR PACKAGE: build once; the versioned name makes a warm run a no-op.
go_build() {
  local out="$1" dir="$2" pkg="$3"
  [ -x "$out" ] && return 0
  log "building $(basename "$out") (first run only; takes minutes)"
  (cd "$FLUX_SRC/$dir" && CGO_ENABLED=0 go build -trimpath -buildvcs=false \
    -ldflags "-s -w" -o "$out.partial" "$pkg") ||
    die flux "" "go build of $pkg failed"
  mv "$out.partial" "$out"
}

build() {
  go_build "$SOURCE_BIN" source github.com/fluxcd/source-controller
  go_build "$KUSTOMIZE_BIN" kustomize github.com/fluxcd/kustomize-controller
  [ -d "$CRD_DIR" ] && return 0
  local tmp="$CRD_DIR.partial" dir
  rm -rf "$tmp"; mkdir -p "$tmp"
  for m in source kustomize; do
    dir="$(cd "$FLUX_SRC/$m" && go list -m -f '{{.Dir}}' "github.com/fluxcd/$m-controller")" ||
      die flux "" "module github.com/fluxcd/$m-controller not in the module cache"
    cp "$dir"/config/crd/bases/*.yaml "$tmp/"
  done
  chmod 644 "$tmp"/*.yaml
  mv "$tmp" "$CRD_DIR"
}

write_flux_env() {
  write_env flux <<EOF
export SWITCHYARD_FLUX_GIT_ROOT="$FDIR/git"
export SWITCHYARD_FLUX_GIT_URL="http://127.0.0.1:$(cat "$FDIR/git.port")"
EOF
}

# run_controller NAME BIN ARGS...: start one Flux controller out of cluster, wait for /readyz.
run_controller() {
  local name="$1" bin="$2"; shift 2
  local health pid
  health="$(free_port)"
  # RUNTIME_NAMESPACE only names where events and leases would go; leader election is off.
  KUBECONFIG="$RUN_DIR/kubeconfig" RUNTIME_NAMESPACE=flux-system "$bin" \
    --enable-leader-election=false --watch-all-namespaces=true --log-level=info \
    --metrics-addr="127.0.0.1:$(free_port)" --health-addr="127.0.0.1:$health" \
    "$@" </dev/null >"$FDIR/$name.log" 2>&1 &
  pid=$!; record_pid "flux-$name" "$pid"
  local deadline=$((SECONDS + 60))
  until http_ok "http://127.0.0.1:$health/readyz" >/dev/null 2>&1; do
    pid_alive "$pid" || die flux "$FDIR/$name.log" "$name exited during startup"
    [ "$SECONDS" -lt "$deadline" ] || die flux "$FDIR/$name.log" "$name not ready after 60s"
    sleep 0.2
  done
}

start() {
  if is_running flux-source && is_running flux-kustomize && is_running flux-git; then
    log "flux: already running"; write_flux_env; return 0
  fi
  stop # a half-started previous run
  for b in "$SOURCE_BIN" "$KUSTOMIZE_BIN"; do [ -x "$b" ] || die flux "" "$b missing: run '$0 build'"; done
  [ -f "$RUN_DIR/kubeconfig" ] || die flux "" "no $RUN_DIR/kubeconfig: start kube first"
  local kubectl
  kubectl="$(sed -nE 's/^export SWITCHYARD_KUBECTL="(.*)"$/\1/p' "$RUN_DIR/kube.env")"
  [ -x "$kubectl" ] || die flux "" "kubectl not found via $RUN_DIR/kube.env: start kube first"
  trap stop EXIT # a failed start leaves nothing running
  rm -rf "$FDIR"; mkdir -p "$FDIR/git" "$FDIR/storage"

  "$kubectl" --kubeconfig "$RUN_DIR/kubeconfig" apply --server-side --force-conflicts \
    -f "$CRD_DIR" >"$FDIR/crds.log" 2>&1 || die flux "$FDIR/crds.log" "installing the Flux CRDs failed"
  "$kubectl" --kubeconfig "$RUN_DIR/kubeconfig" wait --for=condition=Established --timeout=60s \
    -f "$CRD_DIR" >>"$FDIR/crds.log" 2>&1 || die flux "$FDIR/crds.log" "Flux CRDs not established"

  local gp pid storage
  gp="$(free_port)"; echo "$gp" >"$FDIR/git.port"
  python3 "$FLUX_SRC/git_http.py" "$FDIR/git" "$gp" </dev/null >"$FDIR/git.log" 2>&1 &
  pid=$!; record_pid flux-git "$pid"
  wait_for flux-git "$FDIR/git.log" 20 python3 -c \
    'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1)' "$gp"

  # The artifact server: kustomize-controller downloads what source-controller advertises.
  storage="$(free_port)"
  run_controller source "$SOURCE_BIN" --storage-path="$FDIR/storage" \
    --storage-addr="127.0.0.1:$storage" --storage-adv-addr="127.0.0.1:$storage"
  run_controller kustomize "$KUSTOMIZE_BIN"
  trap - EXIT
  log "flux: source-controller $SOURCE_VERSION and kustomize-controller $KUSTOMIZE_VERSION running; git at http://127.0.0.1:$gp"
  write_flux_env
}

stop() {
  stop_pid flux-kustomize
  stop_pid flux-source
  stop_pid flux-git
}

case "${1:-}" in
  build) build ;;
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 build|start|stop" >&2; exit 2 ;;
esac
