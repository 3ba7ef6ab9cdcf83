#!/usr/bin/env bash
# `make dev`: start the environment, install the CRD, run the operator against it, apply one
# MessageBroker per backend (the config/samples shapes, pointed at the local brokers) and show
# `kubectl get mb` until they are Ready. Leaves everything running; `make env-down` stops it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source tests/env/lib.sh

bash tests/env/up.sh
# shellcheck disable=SC1091
source "$RUN_DIR/env.sh"

kubectl apply --server-side --force-conflicts -f crds/switchyard.dev_messagebrokers.yaml >/dev/null
kubectl wait --for=condition=Established crd/messagebrokers.switchyard.dev --timeout=60s >/dev/null

cargo build --bin switchyard
if ! is_running operator; then
  port=$(free_port)
  "$CARGO_TARGET_DIR/debug/switchyard" run --namespace shop --metrics-addr "127.0.0.1:$port" --resync 30s \
    >"$RUN_DIR/operator.log" 2>&1 &
  record_pid operator $!
  log "operator running (pid $!), log: $RUN_DIR/operator.log, metrics: http://127.0.0.1:$port/metrics"
fi

kubectl create namespace shop --dry-run=client -o yaml | kubectl apply -f - >/dev/null
rabbit_host=$SWITCHYARD_RABBITMQ_HOST rabbit_port=$SWITCHYARD_RABBITMQ_PORT
cat >"$RUN_DIR/dev-samples.yaml" <<YAML
apiVersion: v1
kind: Secret
metadata: {name: kafka-user, namespace: shop}
stringData: {username: "$SWITCHYARD_KAFKA_SASL_USERNAME", password: "$SWITCHYARD_KAFKA_SASL_PASSWORD"}
---
apiVersion: v1
kind: Secret
metadata: {name: rabbitmq-user, namespace: shop}
stringData: {username: "$SWITCHYARD_RABBITMQ_USERNAME", password: "$SWITCHYARD_RABBITMQ_PASSWORD"}
---
apiVersion: v1
kind: Secret
metadata: {name: redis, namespace: shop}
stringData: {password: "$SWITCHYARD_REDIS_AUTH_PASSWORD"}
---
apiVersion: switchyard.dev/v1alpha1
kind: MessageBroker
metadata: {name: message-bus, namespace: shop}
spec:
  displayName: Message Bus
  topics:
    - name: order-created
      partitions: 3
      retention: 168h
      subscriptions: [{name: billing}, {name: shipping, deadLetter: {maxDeliveryAttempts: 5}}]
    - name: order-paid
      subscriptions: [{name: shipping}]
  envs:
    - slug: prd
      type: Kafka
      kafka:
        bootstrapServers: ["$SWITCHYARD_KAFKA_SASL_BOOTSTRAP"]
        sasl: {mechanism: SCRAM-SHA-512, credentialsSecretRef: {name: kafka-user}}
    - slug: dev
      type: Redis
      redis: {url: "$SWITCHYARD_REDIS_AUTH_URL", passwordSecretRef: {name: redis, key: password}}
---
apiVersion: switchyard.dev/v1alpha1
kind: MessageBroker
metadata: {name: payments, namespace: shop}
spec:
  topics: [{name: payment-settled, retention: 72h, subscriptions: [{name: ledger}]}]
  envs:
    - slug: prd
      type: RabbitMQ
      rabbitmq: {host: "$rabbit_host", port: $rabbit_port, managementUrl: "$SWITCHYARD_RABBITMQ_MANAGEMENT_URL", credentialsSecretRef: {name: rabbitmq-user}}
    - slug: gcp
      type: GooglePubSub
      googlePubSub: {projectId: shop-dev-project, endpoint: "$SWITCHYARD_PUBSUB_ENDPOINT"}
    - slug: aws
      type: AwsSqs
      awsSqs: {region: us-east-1, endpoint: "$SWITCHYARD_AWS_ENDPOINT"}
YAML
kubectl apply --server-side -f "$RUN_DIR/dev-samples.yaml"

log "waiting for the MessageBrokers to become Ready"
kubectl wait --for=condition=Ready mb --all -n shop --timeout=120s || true
kubectl get mb -n shop -o wide

# The README's app (examples/app.rs) on the prd binding, projected as the kubelet projects a
# binding into a pod: one file per key, refreshed while `make dev` runs it.
bindings="$RUN_DIR/bindings"
project_binding() {
  local dir="$bindings/$1" ts f
  ts="..$(date +%s%N)"
  mkdir -p "$dir/$ts"
  kubectl get secret "$1" -n shop -o go-template='{{range $k, $v := .data}}{{$k}} {{$v}}{{"\n"}}{{end}}' |
    while read -r key value; do printf '%s' "$value" | base64 -d >"$dir/$ts/$key"; done
  for f in "$dir/$ts"/*; do ln -sfn "..data/${f##*/}" "$dir/${f##*/}"; done
  ln -sfn "$ts" "$dir/..data_tmp" && mv -T "$dir/..data_tmp" "$dir/..data"
  find "$dir" -maxdepth 1 -xtype l -delete
  find "$dir" -maxdepth 1 -name '..[0-9]*' ! -name "$ts" -exec rm -rf {} +
}
mkdir -p "$bindings"
project_binding message-bus-prd
cargo build --example app
if ! is_running app; then
  # Its output goes nowhere: it outlives this script.
  ( while sleep 5; do project_binding message-bus-prd || true; done ) >/dev/null 2>&1 &
  record_pid binding-refresh $!
  SERVICE_BINDING_ROOT="$bindings" "$CARGO_TARGET_DIR/debug/examples/app" >"$RUN_DIR/app.log" 2>&1 &
  record_pid app $!
fi
for _ in $(seq 60); do [ -s "$RUN_DIR/app.log" ] && break; sleep 0.5; done
log "the example app published an order and received: $(head -1 "$RUN_DIR/app.log")"
echo
cat <<TXT
Try:
  source $RUN_DIR/env.sh
  kubectl describe mb message-bus -n shop
  kubectl get secret message-bus-prd -n shop -o yaml      # the binding apps read
  tail -f $RUN_DIR/app.log        # the app, reading $bindings/message-bus-prd
  $CARGO_TARGET_DIR/debug/switchyard publish --binding $bindings/message-bus-prd order-created -m '{"order":43}'
  kubectl edit mb message-bus -n shop                     # e.g. switch prd to another type: the app follows
Stop everything with: make env-down
TXT
