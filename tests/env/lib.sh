#!/usr/bin/env bash
# Shared helpers for the test-environment scripts. Source it; do not run it.
#
# Layout:
#   CACHE_DIR  slow-to-build artefacts keyed by pinned version (kept between clones)
#   RUN_DIR    this run's data, logs, pid files and env fragments (inside the clone)
set -euo pipefail

ENV_SRC_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$ENV_SRC_DIR/../.." && pwd)"
CACHE_DIR="${SWITCHYARD_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/switchyard}"
RUN_DIR="${SWITCHYARD_RUN_DIR:-$REPO_DIR/target/testenv}"
BIN_DIR="$CACHE_DIR/bin"
mkdir -p "$CACHE_DIR" "$RUN_DIR" "$BIN_DIR"

log() { printf '[env] %s\n' "$*" >&2; }

# die NAME LOGFILE MESSAGE: name the failing service and show the tail of its log.
die() {
  local name="$1" logfile="$2"; shift 2
  printf '[env] ERROR: %s: %s\n' "$name" "$*" >&2
  if [ -n "$logfile" ] && [ -f "$logfile" ]; then
    printf '[env] --- last 40 lines of %s ---\n' "$logfile" >&2
    tail -n 40 "$logfile" >&2 || true
  fi
  exit 1
}

# free_port: a TCP port on 127.0.0.1 that nothing listens on right now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# wait_for NAME LOGFILE TIMEOUT_SECONDS COMMAND...: poll COMMAND until it succeeds.
wait_for() {
  local name="$1" logfile="$2" timeout="$3"; shift 3
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      die "$name" "$logfile" "not ready after ${timeout}s (check: $*)"
    fi
    sleep 0.2
  done
}

# http_ok URL: URL answers 200.
http_ok() { python3 -c 'import sys,urllib.request; sys.exit(urllib.request.urlopen(sys.argv[1], timeout=2).status != 200)' "$1"; }

# record_pid NAME PID: remember a process this run started, so down.sh stops exactly it.
record_pid() { echo "$2" >"$RUN_DIR/$1.pid"; }

# pid_alive PID: the process exists and is not a zombie. Our daemons are reparented to PID 1
# once the start script exits, and an exited one stays a zombie until PID 1 reaps it (which
# can take a while, or never happen in a container without an init); kill -0 still succeeds.
pid_alive() {
  kill -0 "$1" 2>/dev/null && [ "$(ps -o stat= -p "$1" 2>/dev/null | cut -c1)" != Z ]
}

# stop_pid NAME: stop the process recorded for NAME (TERM, then KILL), if still alive.
stop_pid() {
  local f="$RUN_DIR/$1.pid" pid
  [ -f "$f" ] || return 0
  pid="$(cat "$f")"
  if pid_alive "$pid"; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do pid_alive "$pid" || break; sleep 0.1; done
    pid_alive "$pid" && kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

# is_running NAME: the recorded process is alive.
is_running() {
  local f="$RUN_DIR/$1.pid"
  [ -f "$f" ] && pid_alive "$(cat "$f")"
}

# maven_libs NAME POM DIR: resolve POM's runtime dependencies into DIR/libs, from a scratch copy
# in DIR so Maven's target/ never lands in the source tree (~/.m2 keeps the downloads).
maven_libs() {
  local name="$1" pom="$2" dir="$3"
  cp "$pom" "$dir/pom.xml"
  mvn -B -q -f "$dir/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$dir/libs" >"$dir/build.log" 2>&1 \
    || die "$name" "$dir/build.log" "mvn dependency:copy-dependencies failed"
  rm -rf "$dir/target"
}

# npm_ci NAME SRC DIR WHAT: install SRC's package.json and package-lock.json into DIR with
# `npm ci` (the shared npm cache keeps the downloads), once: DIR/.complete marks it done.
npm_ci() {
  local name="$1" src="$2" dir="$3" what="$4"
  [ -f "$dir/.complete" ] && return 0
  log "$name: installing $what (npm ci)"
  rm -rf "$dir" && mkdir -p "$dir"
  cp "$src/package.json" "$src/package-lock.json" "$dir/"
  (cd "$dir" && npm ci --ignore-scripts --no-audit --no-fund --cache "$CACHE_DIR/npm") \
    >"$dir/build.log" 2>&1 || die "$name" "$dir/build.log" "npm ci failed"
  touch "$dir/.complete"
}

# write_env NAME: stdin holds `export KEY=VALUE` lines; saved as this service's env fragment.
write_env() { cat >"$RUN_DIR/$1.env"; }

# new_ca PREFIX CN: a throwaway CA, PREFIX.key and PREFIX.crt.
new_ca() {
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key" 2>/dev/null
  openssl req -x509 -new -key "$1.key" -subj "/CN=$2" -days 30 -out "$1.crt" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
}

# new_leaf CA_PREFIX PREFIX CN: a serving certificate for 127.0.0.1/localhost signed by the CA,
# PREFIX.key (PKCS#8, as Kafka's PEM key store wants) and PREFIX.crt.
new_leaf() {
  local ca="$1" out="$2"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$out.key" 2>/dev/null
  openssl req -new -key "$out.key" -subj "/CN=$3" -out "$out.csr"
  # rustls and Go both insist on a SAN and a serverAuth, non-CA leaf.
  printf '%s\n' 'subjectAltName=IP:127.0.0.1,DNS:localhost' 'basicConstraints=critical,CA:FALSE' \
    'keyUsage=critical,digitalSignature' 'extendedKeyUsage=serverAuth' >"$out.ext"
  openssl x509 -req -in "$out.csr" -CA "$ca.crt" -CAkey "$ca.key" -CAcreateserial \
    -days 30 -extfile "$out.ext" -out "$out.crt" 2>/dev/null
  rm -f "$out.csr" "$out.ext"
}

# TLS material the brokers serve with, made once per run directory: the test CA, a server
# certificate from it (server.key/server.crt, and both in server.pem), and an unrelated CA
# (wrong-ca.crt) that verifies nothing here.
TLS_DIR="$RUN_DIR/tls"
tls_certs() {
  if [ ! -f "$TLS_DIR/.complete" ]; then
    rm -rf "$TLS_DIR" && mkdir -p "$TLS_DIR"
    new_ca "$TLS_DIR/ca" switchyard-test-ca
    new_ca "$TLS_DIR/wrong-ca" switchyard-unrelated-ca
    new_leaf "$TLS_DIR/ca" "$TLS_DIR/server" switchyard-test-broker
    cat "$TLS_DIR/server.key" "$TLS_DIR/server.crt" >"$TLS_DIR/server.pem"
    chmod 644 "$TLS_DIR"/*
    touch "$TLS_DIR/.complete"
  fi
  write_env tls <<ENV
export SWITCHYARD_TLS_CA=$TLS_DIR/ca.crt
export SWITCHYARD_TLS_WRONG_CA=$TLS_DIR/wrong-ca.crt
ENV
}

# tls_serves PORT: a TLS server on 127.0.0.1:PORT completes a handshake verified by the test CA.
tls_serves() {
  openssl s_client -connect "127.0.0.1:$1" -CAfile "$TLS_DIR/ca.crt" -verify_return_error \
    -verify_ip 127.0.0.1 </dev/null >/dev/null 2>&1
}
