#!/usr/bin/env bash
# Redis from the Debian package: two throwaway servers on 127.0.0.1, one open (plain and, on a
# second port, TLS with the env's test certificate) and one that requires a password (to
# exercise the credential path).
#   build  apt-get install redis-server if it is missing (installing does not start it)
#   start  run both servers in the foreground (so their pids are ours), no persistence
#   stop   stop exactly those two processes
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DATA="$RUN_DIR/redis"
LOG="$DATA/redis.log"
AUTH_LOG="$DATA/redis-auth.log"
AUTH_PASSWORD=switchyard-test-secret   # test-only

build() {
  command -v redis-server >/dev/null && command -v redis-cli >/dev/null && return 0
  log "redis: installing the Debian redis-server package"
  local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  { $sudo apt-get update -q &&
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends redis-server; } \
    >"$CACHE_DIR/apt-redis.log" 2>&1 || die redis "$CACHE_DIR/apt-redis.log" "apt-get install redis-server failed"
}

# run_server PIDNAME PORT LOGFILE [EXTRA ARGS...]
run_server() {
  local name="$1" port="$2" logfile="$3"; shift 3
  mkdir -p "$DATA/$name"
  # --save '' and --appendonly no: nothing is written to disk; the run dir is wiped anyway.
  nohup redis-server --bind 127.0.0.1 --port "$port" --daemonize no --save '' --appendonly no \
    --dir "$DATA/$name" --logfile "$logfile" "$@" >>"$logfile" 2>&1 &
  record_pid "$name" $!
}

pong() { [ "$(redis-cli -h 127.0.0.1 -p "$1" --no-auth-warning "${@:2}" ping 2>/dev/null)" = PONG ]; }
noauth() { redis-cli -h 127.0.0.1 -p "$1" ping 2>&1 | grep -q NOAUTH; }

start() {
  if is_running redis && is_running redis-auth; then
    log "redis: already running"; write_env redis <"$DATA/env"; return 0
  fi
  stop
  command -v redis-server >/dev/null || die redis "" "redis-server missing; run: $0 build"
  rm -rf "$DATA" && mkdir -p "$DATA"
  local port auth_port tls_port
  port="$(free_port)"
  auth_port="$(free_port)"; while [ "$auth_port" = "$port" ]; do auth_port="$(free_port)"; done
  tls_port="$(free_port)"
  while [ "$tls_port" = "$port" ] || [ "$tls_port" = "$auth_port" ]; do tls_port="$(free_port)"; done
  tls_certs

  log "redis: starting on 127.0.0.1:$port (TLS :$tls_port) and (with a password) 127.0.0.1:$auth_port"
  # Clients are not asked for certificates: the tests check the server's side of TLS.
  run_server redis "$port" "$LOG" --tls-port "$tls_port" --tls-cert-file "$TLS_DIR/server.crt" \
    --tls-key-file "$TLS_DIR/server.key" --tls-ca-cert-file "$TLS_DIR/ca.crt" --tls-auth-clients no
  run_server redis-auth "$auth_port" "$AUTH_LOG" --requirepass "$AUTH_PASSWORD"

  wait_for redis "$LOG" 20 pong "$port"
  wait_for redis "$AUTH_LOG" 20 pong "$auth_port" -a "$AUTH_PASSWORD"
  wait_for redis "$LOG" 20 pong "$tls_port" --tls --cacert "$TLS_DIR/ca.crt"
  # The protected server must really refuse clients without the password.
  noauth "$auth_port" || die redis "$AUTH_LOG" "server on :$auth_port accepts clients without a password"

  cat >"$DATA/env" <<ENV
export SWITCHYARD_REDIS_URL=redis://127.0.0.1:$port/0
export SWITCHYARD_REDIS_TLS_URL=rediss://127.0.0.1:$tls_port/0
export SWITCHYARD_REDIS_AUTH_URL=redis://127.0.0.1:$auth_port/0
export SWITCHYARD_REDIS_AUTH_PASSWORD=$AUTH_PASSWORD
ENV
  write_env redis <"$DATA/env"
  log "redis: ready"
}

stop() {
  stop_pid redis
  stop_pid redis-auth
  rm -f "$RUN_DIR/redis.env"
}

case "${1:-}" in
  build | start | stop) "$1" ;;
  *) echo "usage: $0 build|start|stop" >&2; exit 2 ;;
esac
