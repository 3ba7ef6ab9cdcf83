#!/usr/bin/env bash
# `make test`: start the real environment, run unit and integration tests against it, and stop
# exactly what was started, whether the tests pass or not.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash tests/env/up.sh
trap 'bash tests/env/down.sh' EXIT
# shellcheck disable=SC1091
source target/testenv/env.sh

bash tests/client_only.sh
cargo build --bin switchyard
# The container image (cached: rebuilt when its files change), which tests/e2e/image.rs runs.
bash config/manager/image.sh
export SWITCHYARD_BIN="$CARGO_TARGET_DIR/debug/switchyard"
cargo test --all-targets --no-fail-fast
