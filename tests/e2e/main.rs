//! Integration tests against the real API server and brokers started by `tests/env/up.sh`.
//! One binary with modules keeps link time down.

mod admission;
mod controller;
mod deploy;
#[allow(dead_code)]
mod support;
