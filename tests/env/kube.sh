#!/usr/bin/env bash
# A real Kubernetes control plane for the tests, the way envtest runs one: plain etcd and
# kube-apiserver processes (no nodes, no controller-manager), plus kubectl and helm.
# Everything is built from Go modules pinned in tests/env/{kube,etcd,helm}/go.mod.
# Usage: tests/env/kube.sh build|start|stop
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# The pinned versions are read from the wrapper go.mod files, so those stay the one place to bump.
mod_version() { # DIR MODULE
  sed -nE "s#^[[:space:]]*(require[[:space:]]+)?$2 (v[^[:space:]]+).*#\2#p" "$ENV_SRC_DIR/$1/go.mod" | head -n1
}
KUBE_VERSION="$(mod_version kube k8s.io/kubernetes)"
ETCD_VERSION="$(mod_version etcd go.etcd.io/etcd/server/v3)"
HELM_VERSION="$(mod_version helm helm.sh/helm/v3)"
HELM_CLIENT_GO="$(mod_version helm k8s.io/client-go)" # helm reports this as its default Kubernetes version

ETCD="$BIN_DIR/etcd-$ETCD_VERSION"
APISERVER="$BIN_DIR/kube-apiserver-$KUBE_VERSION"
KUBECTL="$BIN_DIR/kubectl-$KUBE_VERSION"
HELM="$BIN_DIR/helm-$HELM_VERSION"
KDIR="$RUN_DIR/kube"

# go_build OUT MODULE_DIR PACKAGE [LDFLAGS]: build once; the versioned name makes a warm run a no-op.
# -buildvcs=false: the wrappers live in this repo, whose git state must not matter (or fail the build).
go_build() {
  local out="$1" dir="$2" pkg="$3" ldflags="${4:-}"
  [ -x "$out" ] && return 0
  log "building $(basename "$out") (first run only; takes minutes)"
  (cd "$ENV_SRC_DIR/$dir" && CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags "-s -w $ldflags" -o "$out.partial" "$pkg") ||
    die "kube" "" "go build of $pkg failed"
  mv "$out.partial" "$out"
}

build() {
  # Without these the binaries report v0.0.0-master, and helm's kubeVersion checks would fail.
  local kv key val kv_flags=""
  local minor="${KUBE_VERSION#v1.}"; minor="${minor%%.*}"
  for kv in gitVersion="$KUBE_VERSION" gitMajor=1 gitMinor="$minor" gitTreeState=clean; do
    key="${kv%%=*}" val="${kv#*=}"
    kv_flags+=" -X k8s.io/component-base/version.$key=$val -X k8s.io/client-go/pkg/version.$key=$val"
  done
  go_build "$ETCD" etcd .
  go_build "$APISERVER" kube k8s.io/kubernetes/cmd/kube-apiserver "$kv_flags"
  go_build "$KUBECTL" kube k8s.io/kubernetes/cmd/kubectl "$kv_flags"
  local hminor="${HELM_CLIENT_GO#v0.}"; hminor="${hminor%%.*}"
  go_build "$HELM" helm helm.sh/helm/v3/cmd/helm \
    "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean
     -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$hminor
     -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$hminor"
}

write_kube_env() {
  write_env kube <<EOF
export KUBECONFIG="$RUN_DIR/kubeconfig"
export SWITCHYARD_OPERATOR_KUBECONFIG="$RUN_DIR/operator.kubeconfig"
export SWITCHYARD_APISERVER_URL="$(cat "$KDIR/url")"
export SWITCHYARD_KUBECTL="$KUBECTL"
export SWITCHYARD_HELM="$HELM"
export PATH="$KDIR/bin:\$PATH"
EOF
}

# kubeconfig FILE USER TOKEN: a kubeconfig that trusts our CA and authenticates with a token.
kubeconfig() {
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: switchyard-test
  cluster:
    server: "$(cat "$KDIR/url")"
    certificate-authority-data: $(base64 -w0 <"$KDIR/certs/ca.crt")
users:
- name: $2
  user:
    token: "$3"
contexts:
- name: $2
  context: {cluster: switchyard-test, user: $2}
current-context: $2
EOF
  chmod 600 "$1"
}

# certs DIR: a throwaway CA, a serving certificate for 127.0.0.1/localhost, a service-account key pair.
certs() {
  local d="$1"
  new_ca "$d/ca" switchyard-test-ca
  new_leaf "$d/ca" "$d/apiserver" kube-apiserver
  openssl genrsa -out "$d/sa.key" 2048 2>/dev/null
  openssl rsa -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
}

# await NAME PID LOG TIMEOUT CMD...: like wait_for, but fail at once if the process died.
await() {
  local name="$1" pid="$2" logf="$3" deadline=$((SECONDS + $4)); shift 4
  until "$@" >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || die "$name" "$logf" "exited during startup"
    [ "$SECONDS" -lt "$deadline" ] || die "$name" "$logf" "not ready after $4s (check: $*)"
    sleep 0.2
  done
}

start() {
  if is_running kube-apiserver && is_running etcd; then
    log "kube: already running"; write_kube_env; return 0
  fi
  stop # a half-started previous run
  for b in "$ETCD" "$APISERVER" "$KUBECTL" "$HELM"; do [ -x "$b" ] || die kube "" "$b missing: run '$0 build'"; done
  trap stop EXIT # a failed start leaves nothing running
  rm -rf "$KDIR"; mkdir -p "$KDIR/certs" "$KDIR/etcd" "$KDIR/bin"
  ln -s "$KUBECTL" "$KDIR/bin/kubectl"; ln -s "$HELM" "$KDIR/bin/helm"

  local ep ap pid
  ep="$(free_port)"
  # --unsafe-no-fsync: test data is disposable, and fsync dominates etcd latency on shared disks.
  "$ETCD" --name=test --data-dir="$KDIR/etcd" --unsafe-no-fsync=true --log-level=warn \
    --listen-client-urls="http://127.0.0.1:$ep" --advertise-client-urls="http://127.0.0.1:$ep" \
    --listen-peer-urls=http://127.0.0.1:0 --initial-advertise-peer-urls=http://127.0.0.1:0 \
    --initial-cluster=test=http://127.0.0.1:0 \
    </dev/null >"$KDIR/etcd.log" 2>&1 &
  pid=$!; record_pid etcd "$pid"
  await etcd "$pid" "$KDIR/etcd.log" 30 http_ok "http://127.0.0.1:$ep/health"

  certs "$KDIR/certs"
  ap="$(free_port)"
  echo "https://127.0.0.1:$ap" >"$KDIR/url"
  local admin_token op_token
  admin_token="$(openssl rand -hex 24)"; op_token="$(openssl rand -hex 24)"
  # admin is in system:masters, so it may also GET /metrics.
  # The operator identity carries exactly the name and groups a real token of the chart's
  # ServiceAccount would, so the chart's RBAC bindings are what authorizes it.
  cat >"$KDIR/tokens.csv" <<EOF
$admin_token,admin,admin,"system:masters"
$op_token,system:serviceaccount:switchyard-system:switchyard,switchyard-operator,"system:serviceaccounts,system:serviceaccounts:switchyard-system,system:authenticated"
EOF
  # Flags as envtest uses them; the ServiceAccount admission plugin is off because no
  # controller-manager creates default ServiceAccounts here. Since 1.37 a loopback advertise
  # address is fatal unless the endpoint reconciler (the `kubernetes` Service endpoints) is off.
  "$APISERVER" --etcd-servers="http://127.0.0.1:$ep" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --endpoint-reconciler-type=none --secure-port="$ap" \
    --tls-cert-file="$KDIR/certs/apiserver.crt" --tls-private-key-file="$KDIR/certs/apiserver.key" \
    --service-cluster-ip-range=10.0.0.0/24 --allow-privileged=true \
    --disable-admission-plugins=ServiceAccount --authorization-mode=RBAC \
    --token-auth-file="$KDIR/tokens.csv" \
    --service-account-issuer="https://127.0.0.1:$ap" \
    --service-account-key-file="$KDIR/certs/sa.pub" --service-account-signing-key-file="$KDIR/certs/sa.key" \
    </dev/null >"$KDIR/apiserver.log" 2>&1 &
  pid=$!; record_pid kube-apiserver "$pid"

  kubeconfig "$RUN_DIR/kubeconfig" admin "$admin_token"
  kubeconfig "$RUN_DIR/operator.kubeconfig" switchyard-operator "$op_token"
  await kube-apiserver "$pid" "$KDIR/apiserver.log" 120 \
    "$KUBECTL" --kubeconfig "$RUN_DIR/kubeconfig" --request-timeout=5s get --raw /readyz
  trap - EXIT
  log "kube: API server ready at $(cat "$KDIR/url")"
  write_kube_env
}

stop() {
  stop_pid kube-apiserver
  stop_pid etcd
}

case "${1:-}" in
  build) build ;;
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 build|start|stop" >&2; exit 2 ;;
esac
