//! Integration tests against the real API server and brokers started by `tests/env/up.sh`.
//! One binary with modules keeps link time down.

mod admission;
#[allow(dead_code)]
#[path = "../../examples/bench/harness/mod.rs"]
mod bench_harness;
mod bench_smoke;
mod controller;
mod deploy;
mod kafka;
mod plan;
mod pubsub;
mod rabbitmq;
mod redis;
mod sqs;
#[allow(dead_code)]
mod support;
mod swap;
