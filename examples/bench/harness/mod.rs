//! The benchmark harness behind `make bench`: runs the `switchyard` binary as a child process
//! against a real API server and the real brokers of the test environment, measures four
//! scenarios (scale, idle cost, latency, swap), the client library against each broker's own
//! client and `switchyard relay` against the library, prints a table and writes JSON.
//!
//! Sizes come from `SWITCHYARD_BENCH_*` variables (see [`Config::from_env`]); the e2e smoke test
//! calls [`run`] with tiny sizes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

pub mod apiserver;
pub mod clients;
pub mod cpu;
pub mod kafka;
pub mod native;
pub mod operator;
pub mod relay;
pub mod report;
pub mod scenarios;
pub mod watch;

pub use report::Report;

/// One of the scenarios.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Scenario {
    /// Many MessageBrokers on one Kafka, against the raw admin-API floor.
    Scale,
    /// Cost of doing nothing: API writes and broker calls over three resyncs.
    Idle,
    /// apply → Ready of one MessageBroker on every backend.
    Latency,
    /// RabbitMQ → Kafka: apply → binding flip.
    Swap,
    /// Publish throughput and end-to-end latency through the client library next to the
    /// native client, and through `switchyard relay` (Dapr's HTTP API), per backend; and the
    /// drain of messages queued at a swap.
    Client,
}

impl Scenario {
    fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scale" => Some(Scenario::Scale),
            "idle" => Some(Scenario::Idle),
            "latency" => Some(Scenario::Latency),
            "swap" => Some(Scenario::Swap),
            "client" => Some(Scenario::Client),
            _ => None,
        }
    }
}

/// The backends the latency scenario visits.
pub const BACKENDS: [&str; 6] = [
    "Kafka",
    "Redis",
    "RabbitMQ",
    "GooglePubSub",
    "AwsSqs",
    "NatsJetStream",
];

/// Sizes and settings of a run.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    /// Scenarios to run (idle needs scale's resources and runs only after it).
    pub scenarios: Vec<Scenario>,
    /// Scale: MessageBrokers.
    pub brokers: usize,
    /// Scale: topics per MessageBroker.
    pub topics: usize,
    /// Scale: MessageBroker applies in flight at once.
    pub apply_concurrency: usize,
    /// Scale floor: topics per CreateTopics request.
    pub floor_batch: usize,
    /// Scale: how long to wait for all Ready.
    #[serde(with = "secs")]
    pub scale_timeout: Duration,
    /// Operator resync interval (idle measures three of them).
    #[serde(with = "secs")]
    pub resync: Duration,
    /// Latency: repetitions per backend.
    pub repetitions: usize,
    /// Latency: topics of the MessageBroker.
    pub latency_topics: usize,
    /// Latency: subscriptions per topic.
    pub subscriptions: usize,
    /// Latency: backends to visit.
    pub backends: Vec<String>,
    /// Swap: topics.
    pub swap_topics: usize,
    /// Operator `--swap-grace`: the bench's clients follow the binding Secret by a watch, so
    /// they need none of the kubelet's refresh delay the default allows for.
    #[serde(with = "secs")]
    pub swap_grace: Duration,
    /// Client: length of one throughput round.
    #[serde(with = "secs")]
    pub client_window: Duration,
    /// Client: throughput rounds per side (the median is reported).
    pub client_rounds: usize,
    /// Client: publishes in flight during a throughput round.
    pub client_inflight: usize,
    /// Client: end-to-end latency samples per side.
    pub client_samples: usize,
    /// Client: payload size in bytes.
    pub payload_bytes: usize,
    /// Client: messages queued on the old side before the drain's swap.
    pub drain_messages: usize,
    /// Log level of the operator under test (its log lands in the work dir).
    pub operator_log_level: String,
    /// Start a private API server for clean request counts (else use KUBECONFIG's).
    pub private_apiserver: bool,
    /// The operator binary.
    pub operator_bin: PathBuf,
    /// Where the JSON goes.
    pub output: PathBuf,
    /// Where operator logs and other artefacts go.
    pub work_dir: PathBuf,
}

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

fn var<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map_err(|_| format!("{name}={v:?} is not valid")),
        _ => Ok(default),
    }
}

fn duration_var(name: &str, default: &str) -> Result<Duration, String> {
    let v = std::env::var(name).unwrap_or_else(|_| default.to_string());
    humantime::parse_duration(v.trim()).map_err(|e| format!("{name}={v:?}: {e}"))
}

/// The repository root (the harness runs scripts from tests/env).
pub fn repo_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

impl Config {
    /// Defaults, overridden by environment variables:
    ///
    /// | variable | default | meaning |
    /// |---|---|---|
    /// | `SWITCHYARD_BENCH_SCENARIOS` | `scale,idle,latency,swap,client` | which scenarios |
    /// | `SWITCHYARD_BENCH_BROKERS` | 1000 | scale: MessageBrokers |
    /// | `SWITCHYARD_BENCH_TOPICS` | 10 | scale: topics per MessageBroker |
    /// | `SWITCHYARD_BENCH_APPLY_CONCURRENCY` | 32 | scale: applies in flight |
    /// | `SWITCHYARD_BENCH_FLOOR_BATCH` | 500 | scale floor: topics per CreateTopics |
    /// | `SWITCHYARD_BENCH_SCALE_TIMEOUT` | 10m | scale: wait for all Ready |
    /// | `SWITCHYARD_BENCH_RESYNC` | 30s | operator `--resync` |
    /// | `SWITCHYARD_BENCH_REPETITIONS` | 20 | latency: repetitions per backend |
    /// | `SWITCHYARD_BENCH_LATENCY_TOPICS` | 10 | latency: topics |
    /// | `SWITCHYARD_BENCH_SUBSCRIPTIONS` | 2 | latency: subscriptions per topic |
    /// | `SWITCHYARD_BENCH_BACKENDS` | all five | latency: backends |
    /// | `SWITCHYARD_BENCH_SWAP_TOPICS` | 10 | swap: topics |
    /// | `SWITCHYARD_BENCH_SWAP_GRACE` | 2s | operator `--swap-grace` |
    /// | `SWITCHYARD_BENCH_CLIENT_WINDOW` | 3s | client: one throughput round |
    /// | `SWITCHYARD_BENCH_CLIENT_ROUNDS` | 3 | client: rounds per side (median) |
    /// | `SWITCHYARD_BENCH_CLIENT_INFLIGHT` | 32 | client: publishes in flight |
    /// | `SWITCHYARD_BENCH_CLIENT_SAMPLES` | 200 | client: latency samples per side |
    /// | `SWITCHYARD_BENCH_PAYLOAD_BYTES` | 256 | client: payload size |
    /// | `SWITCHYARD_BENCH_DRAIN_MESSAGES` | 1000 | client: queued at the drain's swap |
    /// | `SWITCHYARD_BENCH_PRIVATE_APISERVER` | true | start a private API server |
    /// | `SWITCHYARD_BENCH_OPERATOR_LOG` | `warn` | the operator's `--log-level` |
    /// | `SWITCHYARD_BENCH_OUTPUT` | `target/bench/results.json` | JSON output |
    /// | `SWITCHYARD_BIN` | release build in `CARGO_TARGET_DIR` | operator binary |
    pub fn from_env() -> Result<Self, String> {
        let scenarios = match std::env::var("SWITCHYARD_BENCH_SCENARIOS") {
            Ok(v) if !v.trim().is_empty() => v
                .split(',')
                .map(|s| Scenario::parse(s).ok_or(format!("unknown scenario {s:?}")))
                .collect::<Result<Vec<_>, _>>()?,
            _ => vec![
                Scenario::Scale,
                Scenario::Idle,
                Scenario::Latency,
                Scenario::Swap,
                Scenario::Client,
            ],
        };
        let backends = match std::env::var("SWITCHYARD_BENCH_BACKENDS") {
            Ok(v) if !v.trim().is_empty() => {
                let list: Vec<String> = v.split(',').map(|s| s.trim().to_string()).collect();
                if let Some(bad) = list.iter().find(|b| !BACKENDS.contains(&b.as_str())) {
                    return Err(format!("unknown backend {bad:?} (one of {BACKENDS:?})"));
                }
                list
            }
            _ => BACKENDS.iter().map(|s| s.to_string()).collect(),
        };
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| repo_dir().join("target"));
        let operator_bin = std::env::var("SWITCHYARD_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|_| target.join("release/switchyard"));
        let output = var(
            "SWITCHYARD_BENCH_OUTPUT",
            repo_dir().join("target/bench/results.json"),
        )?;
        let work_dir = output
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| repo_dir().join("target/bench"));
        Ok(Config {
            scenarios,
            brokers: var("SWITCHYARD_BENCH_BROKERS", 1000)?,
            topics: var("SWITCHYARD_BENCH_TOPICS", 10)?,
            apply_concurrency: var("SWITCHYARD_BENCH_APPLY_CONCURRENCY", 32)?,
            floor_batch: var("SWITCHYARD_BENCH_FLOOR_BATCH", 500)?,
            scale_timeout: duration_var("SWITCHYARD_BENCH_SCALE_TIMEOUT", "10m")?,
            resync: duration_var("SWITCHYARD_BENCH_RESYNC", "30s")?,
            repetitions: var("SWITCHYARD_BENCH_REPETITIONS", 20)?,
            latency_topics: var("SWITCHYARD_BENCH_LATENCY_TOPICS", 10)?,
            subscriptions: var("SWITCHYARD_BENCH_SUBSCRIPTIONS", 2)?,
            backends,
            swap_topics: var("SWITCHYARD_BENCH_SWAP_TOPICS", 10)?,
            swap_grace: duration_var("SWITCHYARD_BENCH_SWAP_GRACE", "2s")?,
            client_window: duration_var("SWITCHYARD_BENCH_CLIENT_WINDOW", "3s")?,
            client_rounds: var("SWITCHYARD_BENCH_CLIENT_ROUNDS", 3)?,
            client_inflight: var("SWITCHYARD_BENCH_CLIENT_INFLIGHT", 32)?,
            client_samples: var("SWITCHYARD_BENCH_CLIENT_SAMPLES", 200)?,
            payload_bytes: var("SWITCHYARD_BENCH_PAYLOAD_BYTES", 256)?,
            drain_messages: var("SWITCHYARD_BENCH_DRAIN_MESSAGES", 1000)?,
            private_apiserver: var("SWITCHYARD_BENCH_PRIVATE_APISERVER", true)?,
            operator_log_level: var("SWITCHYARD_BENCH_OPERATOR_LOG", "warn".to_string())?,
            operator_bin,
            output,
            work_dir,
        })
    }

    /// Whether a scenario is selected.
    pub fn wants(&self, s: Scenario) -> bool {
        self.scenarios.contains(&s)
    }
}

/// Addresses of the test environment's brokers (from `target/testenv/env.sh`).
#[derive(Clone, Debug)]
pub struct Brokers {
    /// Kafka bootstrap.
    pub kafka: String,
    /// Redis URL.
    pub redis: String,
    /// RabbitMQ host, AMQP port, management URL, user, password.
    pub rabbit: (String, u16, String, String, String),
    /// Pub/Sub emulator endpoint.
    pub pubsub: String,
    /// SQS/SNS endpoint, region, access key, secret key.
    pub aws: (String, String, String, String),
    /// NATS URL, user, password.
    pub nats: (String, String, String),
}

fn env_required(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| {
        format!("{name} is not set: run `make env-up` and `source target/testenv/env.sh`")
    })
}

impl Brokers {
    /// Read from the environment; every variable is required.
    pub fn from_env() -> Result<Self, String> {
        Ok(Brokers {
            kafka: env_required("SWITCHYARD_KAFKA_BOOTSTRAP")?,
            redis: env_required("SWITCHYARD_REDIS_URL")?,
            rabbit: (
                env_required("SWITCHYARD_RABBITMQ_HOST")?,
                env_required("SWITCHYARD_RABBITMQ_PORT")?
                    .parse()
                    .map_err(|_| "SWITCHYARD_RABBITMQ_PORT is not a port".to_string())?,
                env_required("SWITCHYARD_RABBITMQ_MANAGEMENT_URL")?,
                env_required("SWITCHYARD_RABBITMQ_USERNAME")?,
                env_required("SWITCHYARD_RABBITMQ_PASSWORD")?,
            ),
            pubsub: env_required("SWITCHYARD_PUBSUB_ENDPOINT")?,
            aws: (
                env_required("SWITCHYARD_AWS_ENDPOINT")?,
                env_required("AWS_REGION")?,
                env_required("AWS_ACCESS_KEY_ID")?,
                env_required("AWS_SECRET_ACCESS_KEY")?,
            ),
            nats: (
                env_required("SWITCHYARD_NATS_URL")?,
                env_required("SWITCHYARD_NATS_USER")?,
                env_required("SWITCHYARD_NATS_PASSWORD")?,
            ),
        })
    }
}

/// Run the selected scenarios and write the JSON report.
pub async fn run(config: &Config) -> Result<Report, String> {
    let brokers = Brokers::from_env()?;
    if !config.operator_bin.is_file() {
        return Err(format!(
            "operator binary {} missing: `cargo build --release --bin switchyard` (or set SWITCHYARD_BIN)",
            config.operator_bin.display()
        ));
    }
    std::fs::create_dir_all(&config.work_dir).map_err(|e| e.to_string())?;
    let plane = apiserver::ControlPlane::start(config).await?;
    let mut report = Report::new(config, plane.private);
    let result = scenarios::run_all(config, &brokers, &plane, &mut report).await;
    drop(plane);
    if let Err(e) = result {
        report.errors.push(e);
    }
    report.write(&config.output)?;
    Ok(report)
}
