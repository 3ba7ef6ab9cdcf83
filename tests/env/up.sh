#!/usr/bin/env bash
# Build what is missing (cached by pinned version), start every service on 127.0.0.1,
# and write one env file that tests and people source.
# Usage: tests/env/up.sh [SERVICE...]   (default: all services)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SERVICES=("$@")
[ ${#SERVICES[@]} -gt 0 ] || SERVICES=(kube kafka redis rabbitmq pubsub moto nats toxiproxy flux kstatus readers relay-sdk promtool)

for svc in "${SERVICES[@]}"; do
  bash "$ENV_SRC_DIR/$svc.sh" build
done
for svc in "${SERVICES[@]}"; do
  bash "$ENV_SRC_DIR/$svc.sh" start
done

{
  echo "# Written by tests/env/up.sh; source it to talk to the test environment."
  for f in "$RUN_DIR"/*.env; do [ -f "$f" ] && cat "$f"; done
} >"$RUN_DIR/env.sh"

log "environment ready; use it with:  source $RUN_DIR/env.sh"
