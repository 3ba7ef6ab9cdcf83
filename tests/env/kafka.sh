#!/usr/bin/env bash
# Apache Kafka (KRaft, one combined broker+controller node) from Maven Central jars.
#   build  fetch the jars for the version pinned in kafka/pom.xml into the cache (~/.m2 keeps
#          the Maven downloads) and compile kafka/KafkaProbe.java against them
#   start  format fresh storage (with a SCRAM user) and run the broker with four client
#          listeners: PLAINTEXT, SASL_PLAINTEXT (SCRAM-SHA-512 and SCRAM-SHA-256), and the same
#          two over TLS (SSL, SASL_SSL) with the env's test certificate, and a PLAINTEXT one
#          (FAULTS) that advertises another port: tests/e2e/faults.rs puts a Toxiproxy proxy
#          on that port, so every connection a client opens after bootstrapping (the broker
#          names itself by the advertised address) goes through the proxy too
#   stop   stop the broker this run started
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SRC="$ENV_SRC_DIR/kafka"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$SRC/pom.xml")"
# Keyed by version and by the pom/probe contents, so editing either rebuilds.
KEY="$(cat "$SRC/pom.xml" "$SRC/KafkaProbe.java" | sha256sum | cut -c1-12)"
HOME_DIR="$CACHE_DIR/kafka-$KAFKA_VERSION-$KEY"
CP="$HOME_DIR/libs/*"
DATA="$RUN_DIR/kafka"
LOG="$DATA/kafka.log"
# Test-only credentials for the SASL listener.
SCRAM_USER=switchyard
SCRAM_PASSWORD=switchyard-test-secret

build() {
  [ -f "$HOME_DIR/.complete" ] && return 0
  log "kafka: fetching Apache Kafka $KAFKA_VERSION jars"
  rm -rf "$HOME_DIR" && mkdir -p "$HOME_DIR"
  maven_libs kafka "$SRC/pom.xml" "$HOME_DIR"
  javac -nowarn -cp "$CP" -d "$HOME_DIR/probe" "$SRC/KafkaProbe.java" >>"$HOME_DIR/build.log" 2>&1 \
    || die kafka "$HOME_DIR/build.log" "compiling KafkaProbe.java failed"
  touch "$HOME_DIR/.complete"
}

start() {
  if is_running kafka; then
    log "kafka: already running"; write_env kafka <"$DATA/env"; return 0
  fi
  [ -f "$HOME_DIR/.complete" ] || die kafka "" "not built; run: $0 build"
  rm -rf "$DATA" && mkdir -p "$DATA/logs"
  local port sasl_port ssl_port sasl_ssl_port faults_port faults_proxy_port ctl_port p used=" "
  for p in port sasl_port ssl_port sasl_ssl_port faults_port faults_proxy_port ctl_port; do
    local v; v="$(free_port)"; while [[ "$used" == *" $v "* ]]; do v="$(free_port)"; done
    used+="$v "; printf -v "$p" %s "$v"
  done
  tls_certs

  cat >"$DATA/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$ctl_port
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://127.0.0.1:$port,SASL_PLAINTEXT://127.0.0.1:$sasl_port,SSL://127.0.0.1:$ssl_port,SASL_SSL://127.0.0.1:$sasl_ssl_port,FAULTS://127.0.0.1:$faults_port,CONTROLLER://127.0.0.1:$ctl_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port,SASL_PLAINTEXT://127.0.0.1:$sasl_port,SSL://127.0.0.1:$ssl_port,SASL_SSL://127.0.0.1:$sasl_ssl_port,FAULTS://127.0.0.1:$faults_proxy_port
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL,FAULTS:PLAINTEXT
# The TLS listeners serve the env's test certificate (key and chain in one PEM file); clients
# are not asked for one.
ssl.keystore.type=PEM
ssl.keystore.location=$TLS_DIR/server.pem
ssl.client.auth=none
inter.broker.listener.name=PLAINTEXT
# SCRAM users live in the cluster metadata (added at format time); the JAAS entries only
# enable the server side of each mechanism on the SASL listener.
sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
log.dirs=$DATA/logs
# One node: every internal topic has one replica.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
default.replication.factor=1
min.insync.replicas=1
num.partitions=1
# Topics exist only when the operator creates them, and deleting them really deletes.
auto.create.topics.enable=false
delete.topic.enable=true
# Deleted topics give back their files (and file handles) after a second, not a minute.
file.delete.delay.ms=1000
group.initial.rebalance.delay.ms=0
PROPS

  # Tens of thousands of partitions (make bench) need heap and file handles.
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  local java_opts=(-Xmx1g -Xms64m -Djava.awt.headless=true
    "-Dlog4j2.configurationFile=$SRC/log4j2.properties")
  # Short-lived tool JVMs start faster with the client compiler only.
  local tool_opts=(-XX:TieredStopAtLevel=1 -XX:+UseSerialGC "-Dlog4j2.configurationFile=$SRC/log4j2.properties")
  # What `StorageTool random-uuid` prints (a base64url UUID not starting with '-'), without a JVM.
  local cluster_id
  cluster_id="$(python3 -c 'import base64, uuid
while True:
    u = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not u.startswith("-"): print(u); break')"
  java "${tool_opts[@]}" -cp "$CP" kafka.tools.StorageTool format --standalone \
    -t "$cluster_id" -c "$DATA/server.properties" \
    --add-scram "SCRAM-SHA-512=[name=$SCRAM_USER,password=$SCRAM_PASSWORD]" \
    --add-scram "SCRAM-SHA-256=[name=$SCRAM_USER,password=$SCRAM_PASSWORD]" >>"$LOG" 2>&1 \
    || die kafka "$LOG" "StorageTool format failed"

  log "kafka: starting Kafka $KAFKA_VERSION on 127.0.0.1:$port (SASL :$sasl_port, SSL :$ssl_port, SASL_SSL :$sasl_ssl_port)"
  nohup java "${java_opts[@]}" -cp "$CP" kafka.Kafka "$DATA/server.properties" >>"$LOG" 2>&1 &
  record_pid kafka $!

  # A real admin-protocol round trip, then SCRAM logins (and a rejected wrong password).
  java "${tool_opts[@]}" -Xmx128m -cp "$HOME_DIR/probe:$CP" KafkaProbe "127.0.0.1:$port" "127.0.0.1:$sasl_port" \
    "$SCRAM_USER" "$SCRAM_PASSWORD" 90 >>"$DATA/probe.log" 2>&1 \
    || { cat "$DATA/probe.log" >>"$LOG"; stop_pid kafka; die kafka "$LOG" "broker check failed"; }
  # The TLS listeners complete a handshake verified by the test CA.
  local tp
  for tp in "$ssl_port" "$sasl_ssl_port"; do
    tls_serves "$tp" || { stop_pid kafka; die kafka "$LOG" "no TLS handshake on :$tp"; }
  done

  cat >"$DATA/env" <<ENV
export SWITCHYARD_KAFKA_BOOTSTRAP=127.0.0.1:$port
export SWITCHYARD_KAFKA_SASL_BOOTSTRAP=127.0.0.1:$sasl_port
export SWITCHYARD_KAFKA_SSL_BOOTSTRAP=127.0.0.1:$ssl_port
export SWITCHYARD_KAFKA_SASL_SSL_BOOTSTRAP=127.0.0.1:$sasl_ssl_port
export SWITCHYARD_KAFKA_FAULTS_UPSTREAM=127.0.0.1:$faults_port
export SWITCHYARD_KAFKA_FAULTS_PROXY=127.0.0.1:$faults_proxy_port
export SWITCHYARD_KAFKA_SASL_USERNAME=$SCRAM_USER
export SWITCHYARD_KAFKA_SASL_PASSWORD=$SCRAM_PASSWORD
ENV
  write_env kafka <"$DATA/env"
  log "kafka: ready"
}

stop() {
  stop_pid kafka
  rm -f "$RUN_DIR/kafka.env"
}

case "${1:-}" in
  build | start | stop) "$1" ;;
  *) echo "usage: $0 build|start|stop" >&2; exit 2 ;;
esac
