//! Helpers shared by the integration tests: the test environment's addresses and unique names.

use std::sync::atomic::{AtomicU32, Ordering};

/// A variable written by `tests/env/up.sh`. Missing means the environment is not up: fail loudly,
/// never skip.
pub fn env_var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: start the test environment with `make env-up` and `source target/testenv/env.sh` (make test does both)")
    })
}

/// A name unique to this test process and call, usable as a namespace or broker-side prefix.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{prefix}-{}-{n}", std::process::id())
}
