//! Integration tests against the real API server and brokers started by `tests/env/up.sh`.
//! One binary with modules keeps link time down.

mod admission;
mod argocd;
mod aws_iam;
#[allow(dead_code)]
#[path = "../../examples/bench/harness/mod.rs"]
mod bench_harness;
mod bench_smoke;
mod cli;
mod client;
mod continuity;
mod controller;
mod credentials;
mod deploy;
mod drain;
mod faults;
mod flow;
mod flux;
mod image;
mod kafka;
mod kstatus;
mod monitoring;
mod nats;
mod plan;
mod pubsub;
mod rabbitmq;
mod readers;
mod redis;
mod relay;
mod reliability;
mod sqs;
#[allow(dead_code)]
mod support;
mod swap;
mod tls;
