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

kubectl apply --server-side -f crds/switchyard.dev_messagebrokers.yaml >/dev/null
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
echo
cat <<TXT
Try:
  source $RUN_DIR/env.sh
  kubectl describe mb message-bus -n shop
  kubectl get secret message-bus-prd -n shop -o yaml      # the binding apps read
  kubectl edit mb message-bus -n shop                     # e.g. switch dev to another type
Stop everything with: make env-down
TXT
