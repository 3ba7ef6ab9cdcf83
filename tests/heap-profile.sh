#!/usr/bin/env bash
# `make heap-profile`: the soak (examples/soak.rs) against a release binary with jemalloc's heap
# profiler compiled in, then jeprof's account of what the heap gained between the end of the
# warm-up and the operator's exit, by the functions that allocated it, and of what it held at exit.
# Sizes and times: the soak's SOAK_* variables (default 600 s, 100 MessageBrokers).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source tests/env/lib.sh
: "${CARGO_TARGET_DIR:=$CACHE_DIR/target}"
export CARGO_TARGET_DIR

if ! command -v jeprof >/dev/null; then
  log "heap-profile: installing jeprof (Debian package libjemalloc-dev)"
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  { $sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q libjemalloc-dev; } \
    >"$CACHE_DIR/apt-jemalloc.log" 2>&1 || die heap-profile "$CACHE_DIR/apt-jemalloc.log" "apt-get install libjemalloc-dev failed"
fi

bash tests/env/up.sh kube
cargo build --profile heap-profile --features heap-profile --bin switchyard
bin="$CARGO_TARGET_DIR/heap-profile/switchyard"
dir="$REPO_DIR/target/heap-profile"
rm -rf "$dir" && mkdir -p "$dir"

# shellcheck disable=SC1091
source target/testenv/env.sh
rc=0
SOAK_HEAP_PROFILE_DIR="$dir" SWITCHYARD_BIN="$bin" cargo run -q --example soak || rc=$?

# The last profile written while the soak ran (the one at exit describes a heap already freed).
last="$(ls -t "$dir"/jeprof.*.i*.heap 2>/dev/null | head -n1 || true)"
[ -n "$last" ] || die heap-profile "" "no heap profile in $dir (was the binary built with the heap-profile feature?)"
base=""
if [ -f "$dir/warmup-end" ]; then
  base="$(find "$dir" -name 'jeprof.*.i*.heap' ! -newer "$dir/warmup-end" -printf '%T@ %p\n' | sort -n | tail -n1 | cut -d' ' -f2-)"
fi
first="$(ls -tr "$dir"/jeprof.*.i*.heap | head -n1)"
report() { jeprof --text --cum "$@" 2>/dev/null | head -n 40 || true; }
if [ -n "$base" ] && [ "$base" != "$last" ]; then
  echo "heap-profile: what the heap gained after the warm-up, $(basename "$base") to $(basename "$last"), by cumulative size"
  report --base="$base" "$bin" "$last"
  echo "heap-profile: what it gained during the warm-up, $(basename "$first") to $(basename "$base")"
  report --base="$first" "$bin" "$base"
else
  echo "heap-profile: no profile before the end of the warm-up (run longer than SOAK_WARMUP_SECONDS, or lower SOAK_HEAP_PROFILE_LG_INTERVAL)"
fi
echo "heap-profile: what the heap held at $(basename "$last")"
report "$bin" "$last"
echo "heap-profile: profiles in $dir"
exit "$rc"
