# Switchyard: `make dev` to see it run, `make test` to prove it.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CACHE_DIR ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/switchyard
# The cargo target dir lives outside the clone so fresh clones reuse the build.
export CARGO_TARGET_DIR ?= $(CACHE_DIR)/target
ENV_FILE := target/testenv/env.sh
CRD_FILE := crds/switchyard.dev_messagebrokers.yaml

.PHONY: help build crds lint test test-unit env-up env-down dev bench soak heap-profile image

help: ## List targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

build: ## Build the switchyard binary (debug)
	cargo build --bin switchyard

crds: ## Regenerate the CRD YAML from the Rust types
	cargo run -q --bin switchyard -- crd > $(CRD_FILE)
	@if [ -d charts/switchyard/crds ]; then cp $(CRD_FILE) charts/switchyard/crds/; fi
	@if [ -d config/crd ]; then cp $(CRD_FILE) config/crd/; fi

lint: ## rustfmt and clippy, warnings are errors
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --lib --example app --no-default-features --features client -- -D warnings
	cargo clippy --lib --example app --no-default-features --features secret-watch -- -D warnings

test-unit: ## Unit tests only (no environment needed)
	cargo test --lib --bins

test: ## Start the real environment, run every test against it, stop it
	bash tests/run.sh

env-up: ## Build (cached) and start the API server and brokers on 127.0.0.1
	bash tests/env/up.sh

env-down: ## Stop what env-up started
	bash tests/env/down.sh

dev: ## env-up, install the CRD, run the operator, apply the samples, show `kubectl get mb`
	bash tests/dev.sh

soak: ## Churn 100 MessageBrokers against the release binary for SOAK_SECONDS (default 600); prints RSS drift
	bash tests/env/up.sh kube
	cargo build --release --bin switchyard
	source $(ENV_FILE) && SWITCHYARD_BIN="$(CARGO_TARGET_DIR)/release/switchyard" cargo run -q --example soak

heap-profile: ## The soak under jemalloc's heap profiler; prints what the heap gained after the warm-up, by allocating function (jeprof)
	bash tests/heap-profile.sh

bench: env-up ## Benchmark against the real environment (sizes: SWITCHYARD_BENCH_* variables); writes target/bench/results.json
	cargo build --release --bin switchyard --example bench
	source $(ENV_FILE) && SWITCHYARD_BIN="$(CARGO_TARGET_DIR)/release/switchyard" \
		"$(CARGO_TARGET_DIR)/release/examples/bench"

image: ## Build the container image with buildah (no daemon): target/image/switchyard.oci.tar
	bash config/manager/image.sh
