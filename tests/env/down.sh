#!/usr/bin/env bash
# Stop exactly the processes tests/env/up.sh started (by pid file). Safe to run twice.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
set +e
# The operator that `make dev` started, if any.
stop_pid operator
# The example app and its binding refresher, likewise.
stop_pid app
stop_pid binding-refresh
for svc in promtool relay-sdk readers kstatus flux toxiproxy nats moto pubsub rabbitmq redis kafka kube; do
  [ -f "$ENV_SRC_DIR/$svc.sh" ] && bash "$ENV_SRC_DIR/$svc.sh" stop
done
rm -f "$RUN_DIR/env.sh"
log "environment stopped"
