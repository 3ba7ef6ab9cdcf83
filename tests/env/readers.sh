#!/usr/bin/env bash
# The binding readers apps use, installed from their registries for the reader tests:
#   node    kube-service-bindings with kafkajs, ioredis, redis and rhea (npm, package-lock.json)
#   spring  Spring Cloud Bindings with Spring Boot's Kafka, RabbitMQ and Redis clients (Maven
#           Central, pom.xml), and the one-file app compiled against them
#   python  pyservicebinding with boto3 and google-cloud-pubsub (PyPI, requirements.txt)
# Each is cached by the hash of what pins it, so a warm run installs nothing.
#   build  install what is missing
#   start  nothing runs; write the paths the tests use
#   stop   nothing to stop
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SRC="$REPO_DIR/tests/readers"
key() { cat "$@" | sha256sum | cut -c1-12; }
NODE_DIR="$CACHE_DIR/readers-node-$(key "$SRC/node/package.json" "$SRC/node/package-lock.json")"
SPRING_DIR="$CACHE_DIR/readers-spring-$(key "$SRC/spring/pom.xml" "$SRC/spring/BindingReaderApp.java" "$SRC/spring/application.properties")"
PY_VERSION="$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
PY_DIR="$CACHE_DIR/readers-python-py$PY_VERSION-$(key "$SRC/python/requirements.txt")"

build_node() {
  npm_ci readers "$SRC/node" "$NODE_DIR" "the Node readers"
}

build_spring() {
  [ -f "$SPRING_DIR/.complete" ] && return 0
  log "readers: fetching Spring Cloud Bindings and Spring Boot jars"
  rm -rf "$SPRING_DIR" && mkdir -p "$SPRING_DIR/classes"
  maven_libs readers "$SRC/spring/pom.xml" "$SPRING_DIR"
  javac -nowarn -cp "$SPRING_DIR/libs/*" -d "$SPRING_DIR/classes" \
    "$SRC/spring/BindingReaderApp.java" >>"$SPRING_DIR/build.log" 2>&1 \
    || die readers "$SPRING_DIR/build.log" "compiling BindingReaderApp.java failed"
  cp "$SRC/spring/application.properties" "$SPRING_DIR/classes/"
  touch "$SPRING_DIR/.complete"
}

build_python() {
  [ -f "$PY_DIR/.complete" ] && return 0
  log "readers: installing the Python readers into $PY_DIR"
  rm -rf "$PY_DIR"
  { python3 -m venv "$PY_DIR" &&
    "$PY_DIR/bin/pip" install -q --disable-pip-version-check -r "$SRC/python/requirements.txt"; } \
    >"$CACHE_DIR/readers-python-build.log" 2>&1 \
    || die readers "$CACHE_DIR/readers-python-build.log" "pip install failed"
  touch "$PY_DIR/.complete"
}

build() {
  build_node
  build_spring
  build_python
}

start() {
  for d in "$NODE_DIR" "$SPRING_DIR" "$PY_DIR"; do
    [ -f "$d/.complete" ] || die readers "" "$d not built; run: $0 build"
  done
  write_env readers <<ENV
export SWITCHYARD_READERS_NODE="node"
export SWITCHYARD_READERS_NODE_PATH="$NODE_DIR/node_modules"
export SWITCHYARD_READERS_NODE_SCRIPT="$SRC/node/publish.js"
export SWITCHYARD_READERS_SPRING_CP="$SPRING_DIR/classes:$SPRING_DIR/libs/*"
export SWITCHYARD_READERS_PYTHON="$PY_DIR/bin/python"
export SWITCHYARD_READERS_PYTHON_SCRIPT="$SRC/python/publish.py"
ENV
  log "readers: ready"
}

stop() {
  rm -f "$RUN_DIR/readers.env"
}

case "${1:-}" in
  build | start | stop) "$1" ;;
  *) echo "usage: $0 build|start|stop" >&2; exit 2 ;;
esac
