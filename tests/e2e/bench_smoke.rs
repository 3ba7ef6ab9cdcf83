//! The benchmark harness of `make bench`, at a tiny size: every scenario runs against the real
//! API server and brokers and produces numbers and JSON. No timing is asserted here.

use std::time::Duration;

use crate::bench_harness::{self, BACKENDS, Config, Scenario};
use crate::support::env_var;

#[tokio::test]
async fn the_bench_harness_measures_every_scenario_at_a_tiny_size() {
    // The binary cargo built for this test run.
    let operator_bin = env!("CARGO_BIN_EXE_switchyard").into();
    let dir = std::env::temp_dir().join(crate::support::unique("bench-smoke"));
    env_var("KUBECONFIG");
    let config = Config {
        scenarios: vec![
            Scenario::Scale,
            Scenario::Idle,
            Scenario::Latency,
            Scenario::Swap,
            Scenario::Client,
        ],
        brokers: 2,
        topics: 2,
        apply_concurrency: 2,
        floor_batch: 2,
        scale_timeout: Duration::from_secs(60),
        resync: Duration::from_secs(1),
        repetitions: 1,
        latency_topics: 2,
        subscriptions: 1,
        backends: BACKENDS.iter().map(|b| b.to_string()).collect(),
        swap_topics: 2,
        swap_grace: Duration::from_secs(1),
        client_window: Duration::from_millis(200),
        client_rounds: 1,
        client_inflight: 4,
        client_samples: 5,
        payload_bytes: 64,
        drain_messages: 20,
        // The shared API server: request counts are noisy, which this test does not look at.
        private_apiserver: false,
        operator_log_level: "warn".into(),
        operator_bin,
        output: dir.join("results.json"),
        work_dir: dir.clone(),
    };
    let report = bench_harness::run(&config).await.expect("the harness runs");
    assert!(report.errors.is_empty(), "errors: {:?}", report.errors);

    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&config.output).expect("results.json written"),
    )
    .expect("results.json is JSON");
    let number = |v: &serde_json::Value, what: &str| {
        assert!(v.is_number(), "{what} is not a number: {v}");
    };
    number(&json["scale"]["allReadySeconds"], "scale all Ready");
    number(&json["scale"]["floorSeconds"], "scale floor");
    number(&json["scale"]["ratioToFloor"], "scale ratio");
    number(&json["scale"]["peakRssMiB"], "peak RSS");
    number(&json["scale"]["apiRequests"], "API requests");
    number(&json["idle"]["apiWrites"], "idle API writes");
    number(&json["idle"]["brokerRequests"], "idle broker requests");
    let latency = json["latency"].as_array().expect("latency entries");
    assert_eq!(latency.len(), BACKENDS.len());
    for l in latency {
        number(&l["p50Seconds"], &format!("{} p50", l["backend"]));
        number(&l["p99Seconds"], &format!("{} p99", l["backend"]));
    }
    number(&json["swap"]["flipSeconds"], "swap flip");
    let client = json["client"].as_array().expect("client entries");
    assert_eq!(client.len(), BACKENDS.len());
    for c in client {
        let b = &c["backend"];
        for k in [
            "clientMsgPerSec",
            "nativeMsgPerSec",
            "clientP50Seconds",
            "nativeP50Seconds",
        ] {
            number(&c[k], &format!("{b} {k}"));
            assert!(c[k].as_f64() > Some(0.0), "{b} {k} is not positive: {c}");
        }
    }
    number(&json["drain"]["drainSeconds"], "drain after a swap");
    assert_eq!(json["drain"]["queued"], 20);
    assert!(report.table().contains("apply -> all Ready"));
    let _ = std::fs::remove_dir_all(&dir);
}
