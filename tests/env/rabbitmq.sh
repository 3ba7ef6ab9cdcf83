#!/usr/bin/env bash
# RabbitMQ from the Debian package, run as a private node: its own node name, Erlang cookie
# (HOME), epmd, distribution port, data, logs and config, all on 127.0.0.1. A system instance,
# if any, is never touched.
#   build  apt-get install rabbitmq-server if it is missing (installing does not start it)
#   start  start epmd and the node (AMQP and AMQPS, management over HTTP and HTTPS, TLS with the
#          env's test certificate), add an administrator user
#   stop   `rabbitmqctl shutdown`, then make sure every process this run started is gone
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RMQ_BIN=/usr/lib/rabbitmq/bin   # the /usr/sbin wrappers would switch to the rabbitmq user
DATA="$RUN_DIR/rabbitmq"
LOG="$DATA/log/rabbit.log"
CTL="$DATA/rabbitmqctl"   # wrapper carrying this node's environment
# Test-only administrator (guest also works, on loopback only).
ADMIN_USER=switchyard
ADMIN_PASSWORD=switchyard-test-secret

build() {
  [ -x "$RMQ_BIN/rabbitmq-server" ] && return 0
  log "rabbitmq: installing the Debian rabbitmq-server package"
  local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  { $sudo apt-get update -q &&
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends rabbitmq-server; } \
    >"$CACHE_DIR/apt-rabbitmq.log" 2>&1 || die rabbitmq "$CACHE_DIR/apt-rabbitmq.log" "apt-get install rabbitmq-server failed"
}

# amqp_greets PORT: the port speaks AMQP 0-9-1 (answers the protocol header with Connection.Start).
amqp_greets() {
  python3 - "$1" <<'PY'
import socket, struct, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=3)
s.sendall(b"AMQP\x00\x00\x09\x01")
frame = s.recv(11)
ok = len(frame) >= 11 and frame[0] == 1 and struct.unpack(">HH", frame[7:11]) == (10, 10)
sys.exit(0 if ok else 1)
PY
}

# mgmt USER:PASS PATH [CURL ARGS...]: a management HTTP API call that must succeed.
mgmt() {
  local cred="$1" path="$2"; shift 2
  curl -sf -u "$cred" -H 'content-type: application/json' "$@" "$MGMT_URL$path"
}

start() {
  if is_running rabbitmq-beam; then
    log "rabbitmq: already running"; write_env rabbitmq <"$DATA/env"; return 0
  fi
  stop
  [ -x "$RMQ_BIN/rabbitmq-server" ] || die rabbitmq "" "rabbitmq-server missing; run: $0 build"
  rm -rf "$DATA" && mkdir -p "$DATA/home" "$DATA/log" "$DATA/mnesia"
  local port mgmt_port tls_port mgmt_tls_port epmd_port dist_port p used=" "
  for p in port mgmt_port tls_port mgmt_tls_port epmd_port dist_port; do
    local v; v="$(free_port)"; while [[ "$used" == *" $v "* ]]; do v="$(free_port)"; done
    used+="$v "; printf -v "$p" %s "$v"
  done
  MGMT_URL="http://127.0.0.1:$mgmt_port"
  tls_certs

  # Clients are not asked for certificates: the tests check the server's side of TLS.
  cat >"$DATA/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$port
listeners.ssl.default = 127.0.0.1:$tls_port
ssl_options.cacertfile = $TLS_DIR/ca.crt
ssl_options.certfile = $TLS_DIR/server.crt
ssl_options.keyfile = $TLS_DIR/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
management.tcp.ip = 127.0.0.1
management.tcp.port = $mgmt_port
management.ssl.ip = 127.0.0.1
management.ssl.port = $mgmt_tls_port
management.ssl.cacertfile = $TLS_DIR/ca.crt
management.ssl.certfile = $TLS_DIR/server.crt
management.ssl.keyfile = $TLS_DIR/server.key
log.console = false
log.file.level = info
CONF
  # Same as `rabbitmq-plugins enable --offline ...`, without booting a CLI node. AMQP 1.0 is for
  # the readers that speak it (kube-service-bindings' AMQP client, rhea).
  echo '[rabbitmq_management,rabbitmq_amqp1_0].' >"$DATA/enabled_plugins"

  # Everything rabbitmq-server and rabbitmqctl read; nothing under /etc or /var/lib is used.
  cat >"$DATA/rabbitmq-env.sh" <<ENV
export HOME="$DATA/home"   # the Erlang cookie lives here
export RABBITMQ_NODENAME="switchyard-$$-$RANDOM@localhost"
export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
export RABBITMQ_DIST_PORT=$dist_port
# CLI tools listen on any free port (default is a fixed 35672-35682 range shared with a system node).
export RABBITMQ_CTL_DIST_PORT_MIN=0 RABBITMQ_CTL_DIST_PORT_MAX=0
export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
export RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
export ERL_EPMD_PORT=$epmd_port ERL_EPMD_ADDRESS=127.0.0.1
export RABBITMQ_CONF_ENV_FILE="$DATA/none-rabbitmq-env.conf"
export RABBITMQ_CONFIG_FILE="$DATA/rabbitmq.conf"
export RABBITMQ_ADVANCED_CONFIG_FILE="$DATA/advanced.config"
export RABBITMQ_ENABLED_PLUGINS_FILE="$DATA/enabled_plugins"
export RABBITMQ_MNESIA_BASE="$DATA/mnesia"
export RABBITMQ_PID_FILE="$DATA/rabbit.pid"
export RABBITMQ_LOG_BASE="$DATA/log"
export RABBITMQ_LOGS="$LOG"
ENV
  printf '#!/usr/bin/env bash\n# rabbitmqctl for the test node.\nsource "%s"\nexec %s/rabbitmqctl "$@"\n' \
    "$DATA/rabbitmq-env.sh" "$RMQ_BIN" >"$CTL"
  chmod +x "$CTL"
  # shellcheck disable=SC1091
  source "$DATA/rabbitmq-env.sh"

  # Our own epmd, started first so the node registers with it instead of spawning a daemon
  # whose pid we would not know.
  nohup epmd -port "$epmd_port" -address 127.0.0.1 >"$DATA/log/epmd.log" 2>&1 &
  record_pid rabbitmq-epmd $!
  wait_for rabbitmq "$DATA/log/epmd.log" 10 epmd -port "$epmd_port" -names

  log "rabbitmq: starting node $RABBITMQ_NODENAME (AMQP 127.0.0.1:$port, AMQPS :$tls_port, management :$mgmt_port, HTTPS :$mgmt_tls_port)"
  # Foreground mode: the launcher script stays the parent and stops the VM on TERM.
  nohup "$RMQ_BIN/rabbitmq-server" >"$DATA/log/stdout.log" 2>&1 &
  record_pid rabbitmq $!
  wait_for rabbitmq "$LOG" 60 test -s "$RABBITMQ_PID_FILE"
  record_pid rabbitmq-beam "$(cat "$RABBITMQ_PID_FILE")"

  wait_for rabbitmq "$LOG" 60 mgmt guest:guest /api/overview
  wait_for rabbitmq "$LOG" 30 amqp_greets "$port"
  wait_for rabbitmq "$LOG" 30 tls_serves "$tls_port"
  wait_for rabbitmq "$LOG" 30 curl -sf --cacert "$TLS_DIR/ca.crt" -u guest:guest "https://127.0.0.1:$mgmt_tls_port/api/overview"
  mgmt guest:guest "/api/users/$ADMIN_USER" -X PUT \
    -d "{\"password\":\"$ADMIN_PASSWORD\",\"tags\":\"administrator\"}" >/dev/null \
    || die rabbitmq "$LOG" "could not create user $ADMIN_USER"
  mgmt guest:guest "/api/permissions/%2f/$ADMIN_USER" -X PUT \
    -d '{"configure":".*","write":".*","read":".*"}' >/dev/null \
    || die rabbitmq "$LOG" "could not grant permissions to $ADMIN_USER"
  # Declares a queue, publishes and consumes a message on vhost / as the new user.
  mgmt "$ADMIN_USER:$ADMIN_PASSWORD" /api/aliveness-test/%2f | grep -q '"ok"' \
    || die rabbitmq "$LOG" "aliveness test failed"
  mgmt guest:guest /api/queues/%2f/aliveness-test -X DELETE >/dev/null || true   # leave vhost / empty

  cat >"$DATA/env" <<ENV
export SWITCHYARD_AMQP_URL=amqp://$ADMIN_USER:$ADMIN_PASSWORD@127.0.0.1:$port/%2f
export SWITCHYARD_RABBITMQ_HOST=127.0.0.1
export SWITCHYARD_RABBITMQ_PORT=$port
export SWITCHYARD_RABBITMQ_USERNAME=$ADMIN_USER
export SWITCHYARD_RABBITMQ_PASSWORD=$ADMIN_PASSWORD
export SWITCHYARD_RABBITMQ_MANAGEMENT_URL=$MGMT_URL
export SWITCHYARD_RABBITMQ_TLS_PORT=$tls_port
export SWITCHYARD_RABBITMQ_MANAGEMENT_TLS_URL=https://127.0.0.1:$mgmt_tls_port
export SWITCHYARD_RABBITMQCTL=$CTL
ENV
  write_env rabbitmq <"$DATA/env"
  log "rabbitmq: ready"
}

stop() {
  # Orderly shutdown first (waits for the VM to exit); the pid files catch whatever is left.
  if is_running rabbitmq-beam && [ -x "$CTL" ]; then
    timeout 30 "$CTL" shutdown >/dev/null 2>&1 || true
  fi
  stop_pid rabbitmq-beam
  stop_pid rabbitmq
  stop_pid rabbitmq-epmd
  rm -f "$RUN_DIR/rabbitmq.env"
}

case "${1:-}" in
  build | start | stop) "$1" ;;
  *) echo "usage: $0 build|start|stop" >&2; exit 2 ;;
esac
