//! The `switchyard` command: `run` the controller, print the `crd`, or the `version`.
#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::{Parser, Subcommand};
use prometheus_client::registry::Registry;
use switchyard::brokers::{ConnectOptions, RealConnector};
use switchyard::controller::{self, Config};
use switchyard::leader::{LeaderElector, LeaseConfig};
use switchyard::metrics::Metrics;
use switchyard::preview;
use switchyard::server::{self, ServerState};
use switchyard::telemetry::{self, LogFormat};
use tracing::error;

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "Message brokers declared in Git: the MessageBroker operator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller.
    Run(RunArgs),
    /// Preview what manifests will change on the brokers (exit 0: nothing to do, 2: changes, 1: errors).
    Plan(PlanArgs),
    /// Check connectivity and permissions of each env's broker (exit 1 on any failure).
    Check(CheckArgs),
    /// Publish messages to a topic through a binding: one per `--message`, else one per stdin
    /// line. Prints a JSON line per confirmed message.
    Publish(PublishArgs),
    /// Consume a subscription through a binding, acking each message. Prints a JSON line each.
    Consume(ConsumeArgs),
    /// Serve Dapr's pub/sub HTTP API on localhost over one or more bindings: a sidecar through
    /// which apps in any language publish and subscribe with the Dapr SDK they already use.
    Relay(Box<RelayArgs>),
    /// Print the MessageBroker CRD as YAML.
    Crd,
    /// Print the version.
    Version,
}

#[derive(clap::Args)]
struct SourceArgs {
    /// Manifest files or directories (multi-document YAML).
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<std::path::PathBuf>,
    /// Env slugs to look at (repeat or comma-separate); all when unset.
    #[arg(long = "env", value_delimiter = ',')]
    envs: Vec<String>,
    /// Read credentials from SWITCHYARD_SECRET_<SECRET>__<KEY> variables instead of the cluster.
    #[arg(long)]
    secrets_from_env: bool,
    /// Namespace for manifests that name none.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// Broker connectivity timeout.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

#[derive(clap::Args)]
struct PlanArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: Output,
    /// Validate only; connect to nothing.
    #[arg(long)]
    offline: bool,
}

#[derive(clap::Args)]
struct CheckArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: Output,
}

#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct BindingArgs {
    /// A projected binding directory (`$SERVICE_BINDING_ROOT/<name>`).
    #[arg(long)]
    binding: Option<std::path::PathBuf>,
    /// A binding Secret, `NAMESPACE/NAME`, read through the Kubernetes API.
    #[arg(long)]
    secret: Option<String>,
}

impl BindingArgs {
    fn source(&self) -> Result<switchyard::client::cli::BindingSource, String> {
        use switchyard::client::cli::BindingSource;
        match (&self.binding, &self.secret) {
            (Some(dir), _) => Ok(BindingSource::Dir(dir.clone())),
            (None, Some(s)) => match s.split_once('/') {
                Some((ns, name)) if !ns.is_empty() && !name.is_empty() => {
                    Ok(BindingSource::Secret(ns.to_string(), name.to_string()))
                }
                _ => Err(format!("--secret {s:?}: expected NAMESPACE/NAME")),
            },
            (None, None) => Err("one of --binding or --secret is required".into()),
        }
    }
}

#[derive(clap::Args)]
struct PublishArgs {
    #[command(flatten)]
    binding: BindingArgs,
    /// Logical topic.
    topic: String,
    /// A message payload (repeatable); stdin lines when none is given.
    #[arg(short, long = "message")]
    messages: Vec<String>,
    /// Message key (the ordering key of ordered topics).
    #[arg(short, long)]
    key: Option<String>,
    /// A header, `NAME=VALUE` (repeatable).
    #[arg(short = 'H', long = "header", value_parser = parse_header)]
    headers: Vec<(String, String)>,
}

#[derive(clap::Args)]
struct ConsumeArgs {
    #[command(flatten)]
    binding: BindingArgs,
    /// Logical topic.
    topic: String,
    /// Logical subscription.
    subscription: String,
    /// Stop after this many messages.
    #[arg(short = 'c', long)]
    count: Option<usize>,
    /// Keep consuming (otherwise stop once the subscription stayed empty for --idle).
    #[arg(short, long)]
    follow: bool,
    /// How long an empty subscription is waited on before stopping.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    idle: Duration,
    /// Print messages without acking them: they stay with this consumer until it exits, then
    /// the broker delivers them again (some only after their redelivery delay).
    #[arg(long)]
    no_ack: bool,
}

/// Logging flags of the long-running commands.
#[derive(clap::Args)]
struct LogArgs {
    /// Log format.
    #[arg(
        long,
        value_enum,
        default_value = "text",
        env = "SWITCHYARD_LOG_FORMAT"
    )]
    log_format: LogFormat,
    /// Log level (RUST_LOG overrides).
    #[arg(long, default_value = "info", env = "SWITCHYARD_LOG_LEVEL")]
    log_level: String,
}

#[derive(clap::Args)]
struct RelayArgs {
    /// A binding directory, `DIR` or `NAME=DIR` (repeatable). The pub/sub name is NAME, else
    /// the directory's name: mount the binding at `/bindings/<MessageBroker name>`.
    #[arg(long = "binding", required = true, value_parser = parse_binding)]
    bindings: Vec<(String, std::path::PathBuf)>,
    /// The app's id: `source` of the events it publishes, and the MessageBroker subscription
    /// its subscriptions consume unless their metadata names one (`subscription`).
    #[arg(long, env = "APP_ID")]
    app_id: String,
    /// Port of the Dapr HTTP API, on 127.0.0.1.
    #[arg(long, default_value_t = 3500, env = "DAPR_HTTP_PORT")]
    dapr_http_port: u16,
    /// The app's port on 127.0.0.1, where deliveries are POSTed; none: publish only.
    #[arg(long, env = "APP_PORT")]
    app_port: Option<u16>,
    /// Do not read the app's `GET /dapr/subscribe` (declarative subscriptions only).
    #[arg(long)]
    no_app_subscribe: bool,
    /// A file of Dapr `Subscription` manifests (repeatable).
    #[arg(long = "subscriptions")]
    subscriptions: Vec<std::path::PathBuf>,
    /// Deliveries per subscription the app may hold unanswered.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    max_in_flight: u16,
    /// How long the app may take to answer a delivery before it is redelivered.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    app_timeout: Duration,
    /// Probe the app's health and pause deliveries while it fails.
    #[arg(long)]
    enable_app_health_check: bool,
    /// Path of the app's health check.
    #[arg(long, default_value = "/healthz")]
    app_health_check_path: String,
    /// Interval of the app's health probe.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    app_health_probe_interval: Duration,
    /// Timeout of one health probe.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    app_health_probe_timeout: Duration,
    /// Failed probes in a row before the app counts as unhealthy.
    #[arg(long, default_value_t = 3)]
    app_health_threshold: u32,
    /// Address of the relay's /metrics (and /healthz); empty: none.
    #[arg(long, default_value = "0.0.0.0:9090")]
    metrics_addr: String,
    /// How long deliveries the app holds are waited for at shutdown.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
    #[command(flatten)]
    log: LogArgs,
}

fn parse_binding(s: &str) -> Result<(String, std::path::PathBuf), String> {
    let (name, dir) = match s.split_once('=') {
        Some((n, d)) => (n.to_string(), std::path::PathBuf::from(d)),
        None => {
            let dir = std::path::PathBuf::from(s);
            let name = dir
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .ok_or_else(|| {
                    format!("{s:?}: no directory name to take the pub/sub name from; use NAME=DIR")
                })?;
            (name, dir)
        }
    };
    if name.is_empty() {
        return Err(format!("{s:?}: empty pub/sub name"));
    }
    Ok((name, dir))
}

async fn relay(args: RelayArgs) -> ExitCode {
    telemetry::init(args.log.log_format, &args.log.log_level);
    let metrics_addr = match args.metrics_addr.as_str() {
        "" => None,
        a => match a.parse() {
            Ok(a) => Some(a),
            Err(e) => return fail(&format!("--metrics-addr {a:?}: {e}")),
        },
    };
    let config = switchyard::relay::Config {
        bindings: args.bindings,
        app_id: args.app_id,
        http_addr: SocketAddr::from(([127, 0, 0, 1], args.dapr_http_port)),
        app_addr: args.app_port.map(|p| format!("127.0.0.1:{p}")),
        app_subscribe: !args.no_app_subscribe,
        subscription_files: args.subscriptions,
        max_in_flight: usize::from(args.max_in_flight),
        app_timeout: args.app_timeout,
        app_health: args
            .enable_app_health_check
            .then(|| switchyard::relay::AppHealth {
                path: args.app_health_check_path,
                interval: args.app_health_probe_interval,
                timeout: args.app_health_probe_timeout,
                threshold: args.app_health_threshold.max(1),
            }),
        metrics_addr,
        shutdown_grace: args.shutdown_grace,
    };
    match switchyard::relay::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %e, "relay failed");
            ExitCode::FAILURE
        }
    }
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?}: expected NAME=VALUE"))
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Env slugs this instance manages (repeat or comma-separate); all when unset.
    #[arg(long = "env", value_delimiter = ',', env = "SWITCHYARD_ENVS")]
    envs: Vec<String>,
    /// Watch only these namespaces (repeat or comma-separate; all namespaces when unset). With
    /// a list, the operator needs RBAC in those namespaces only.
    #[arg(
        long = "namespace",
        value_delimiter = ',',
        env = "SWITCHYARD_WATCH_NAMESPACE"
    )]
    namespaces: Vec<String>,
    /// Resync interval that repairs drift, e.g. 60s or 5m.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    resync: Duration,
    /// Timeout of a broker connectivity check.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    check_timeout: Duration,
    /// Skip a broker's connectivity check when the shared endpoint answered within this interval.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    check_interval: Duration,
    /// How long after a swap's binding flip the old side is kept before it is retired, so that
    /// every app has moved to the new side (the kubelet refreshes a projected binding about a
    /// minute after the Secret changed).
    #[arg(long, default_value = "90s", value_parser = humantime::parse_duration)]
    swap_grace: Duration,
    /// Export per-subscription series (backlog, dead letters); off keeps only the
    /// per-MessageBroker and per-env ones, for clusters with very many subscriptions.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    subscription_metrics: bool,
    /// How long one read of a broker endpoint may answer later passes of any MessageBroker
    /// on it (Kafka): drift made outside the operator shows within this plus the resync.
    /// Defaults to the resync interval; 0s reads the broker on every pass.
    #[arg(long, value_parser = humantime::parse_duration)]
    observe_max_age: Option<Duration>,
    /// How often the message-flow figures (backlog, oldest unacknowledged age, dead letters)
    /// are read, one read per endpoint for every MessageBroker on it; MessageBrokers are
    /// passed over at this interval when it is below the resync. 0s: only at the resync.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    flow_interval: Duration,
    /// Reconciles running at once.
    #[arg(long, default_value_t = 64, env = "SWITCHYARD_CONCURRENCY")]
    concurrency: u16,
    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(long, default_value = "0.0.0.0:8080", env = "SWITCHYARD_METRICS_ADDR")]
    metrics_addr: SocketAddr,
    #[command(flatten)]
    log: LogArgs,
    /// Instance name for Events (the pod name in a cluster).
    #[arg(long, env = "POD_NAME", default_value = "switchyard")]
    instance: String,
    /// Leader election.
    #[command(flatten)]
    leader: Box<LeaderArgs>,
}

/// Leader election flags (boxed: they would make every `Command` as large as `run`'s).
#[derive(clap::Args)]
struct LeaderArgs {
    /// Reconcile only while holding the leader Lease, so several replicas can run.
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Namespace of the leader Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "switchyard-system")]
    lease_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, default_value = "switchyard")]
    lease_name: String,
    /// How long the Lease stays valid without renewal: the longest a standby waits after the
    /// leader dies.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    lease_duration: Duration,
}

/// jemalloc for Rust and C (librdkafka) allocations alike. glibc's malloc kept what bursts of
/// work (reading ten thousand topics) once held, and the resident set only grew; jemalloc
/// returns freed pages within a second (tuning: `.cargo/config.toml`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// `switchyard_heap_allocated_bytes` and `switchyard_heap_resident_bytes`: what the program holds
/// against what the allocator keeps resident, read from jemalloc when scraped. A resident set
/// that grows while the allocated bytes stay flat is the allocator's, not a leak.
#[derive(Debug)]
struct HeapStats;

impl prometheus_client::collector::Collector for HeapStats {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use tikv_jemalloc_ctl::{epoch, stats};
        if epoch::advance().is_err() {
            return Ok(());
        }
        let figures = [
            (
                "heap_allocated_bytes",
                "Bytes the program has allocated (jemalloc stats.allocated)",
                stats::allocated::read(),
            ),
            (
                "heap_resident_bytes",
                "Bytes of the allocator's pages resident in memory (jemalloc stats.resident)",
                stats::resident::read(),
            ),
        ];
        for (name, help, value) in figures {
            let Ok(value) = value else { continue };
            let gauge = prometheus_client::metrics::gauge::ConstGauge::new(
                i64::try_from(value).unwrap_or(i64::MAX),
            );
            let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

fn main() -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(async_main()),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn async_main() -> ExitCode {
    // Several TLS stacks share rustls; pick one provider for all of them.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => match switchyard::crd::yaml() {
            Ok(y) => {
                emit(&y);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Version => {
            println!("switchyard {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Run(args) => run(args).await,
        Command::Plan(args) => plan(args).await,
        Command::Check(args) => check(args).await,
        Command::Publish(args) => publish(args).await,
        Command::Consume(args) => consume(args).await,
        Command::Relay(args) => relay(*args).await,
    }
}

async fn publish(args: PublishArgs) -> ExitCode {
    let source = match args.binding.source() {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let payloads: Box<dyn Iterator<Item = String>> = if args.messages.is_empty() {
        Box::new(std::io::stdin().lines().map_while(Result::ok))
    } else {
        Box::new(args.messages.into_iter())
    };
    let mut out = std::io::stdout().lock();
    let result = switchyard::client::cli::publish(
        &source,
        &args.topic,
        payloads,
        args.key.as_deref(),
        &args.headers,
        &mut out,
    )
    .await;
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string()),
    }
}

async fn consume(args: ConsumeArgs) -> ExitCode {
    let source = match args.binding.source() {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let until = switchyard::client::cli::Until {
        count: args.count,
        follow: args.follow,
        idle: args.idle,
    };
    let mut out = std::io::stdout().lock();
    match switchyard::client::cli::consume(
        &source,
        &args.topic,
        &args.subscription,
        until,
        !args.no_ack,
        &mut out,
    )
    .await
    {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string()),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

async fn run(args: RunArgs) -> ExitCode {
    telemetry::init(args.log.log_format, &args.log.log_level);
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            error!(error = %e, "cannot build a Kubernetes client");
            return ExitCode::FAILURE;
        }
    };
    let metrics = Arc::new(Metrics::default());
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    registry
        .sub_registry_with_prefix("switchyard")
        .register_collector(Box::new(HeapStats));
    metrics.flow.per_subscription(args.subscription_metrics);
    let state = Arc::new(ServerState {
        registry,
        ready: Default::default(),
    });
    let addr = args.metrics_addr;
    let server_state = state.clone();
    tokio::spawn(async move {
        if let Err(e) = server::serve(addr, server_state).await {
            error!(error = %e, %addr, "metrics server failed");
        }
    });

    let envs: BTreeSet<String> = args.envs.into_iter().filter(|s| !s.is_empty()).collect();
    let config = Config {
        envs: if envs.is_empty() { None } else { Some(envs) },
        resync: args.resync,
        check_timeout: args.check_timeout,
        check_interval: args.check_interval,
        swap_grace: args.swap_grace,
        flow_interval: args.flow_interval,
        concurrency: args.concurrency,
        instance: args.instance.clone(),
    };
    // A standby is ready too: it serves traffic-free health checks and waits for the Lease.
    state.ready.store(true, Ordering::SeqCst);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        server::shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let work = controller::run(
        client.clone(),
        args.namespaces,
        Arc::new(RealConnector::new(ConnectOptions {
            check_timeout: args.check_timeout,
            observe_max_age: args.observe_max_age.unwrap_or(args.resync),
            flow_max_age: args.flow_interval,
            requests: metrics.broker_requests.clone(),
        })),
        config,
        metrics.clone(),
        stopped(stop_rx.clone()),
    );
    if !args.leader.leader_elect {
        work.await;
        return ExitCode::SUCCESS;
    }
    let identity = format!("{}_{}", args.instance, std::process::id());
    let lease = LeaseConfig::new(
        args.leader.lease_namespace,
        args.leader.lease_name,
        identity,
        args.leader.lease_duration,
    );
    let mut elector = LeaderElector::new(client, lease);
    tokio::select! {
        () = elector.acquire() => {}
        () = stopped(stop_rx) => return ExitCode::SUCCESS,
    }
    match elector.lead(&metrics, work).await {
        Ok(()) => ExitCode::SUCCESS,
        // Exit so the pod restarts as a fresh candidate rather than reconciling without the lease.
        Err(e) => {
            error!(error = %e, "stopping");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM (what Kubernetes sends) or Ctrl-C.
async fn preview_options(
    source: &SourceArgs,
    offline: bool,
) -> Result<(Vec<preview::Manifest>, preview::Options), String> {
    let manifests = preview::load(&source.files).map_err(|e| e.to_string())?;
    // A cluster is optional: used for Secrets (unless --secrets-from-env) and live ownership.
    let client = if offline {
        None
    } else {
        match kube::Client::try_default().await {
            Ok(c) if c.apiserver_version().await.is_ok() => Some(c),
            _ => None,
        }
    };
    let secrets = match (&client, source.secrets_from_env) {
        (_, true) => preview::SecretSource::EnvVars,
        (Some(c), false) => preview::SecretSource::Cluster(c.clone()),
        (None, false) if offline => preview::SecretSource::EnvVars,
        (None, false) => {
            return Err(
                "no cluster reachable to read Secrets from; pass --secrets-from-env or --offline"
                    .into(),
            );
        }
    };
    let opts = preview::Options {
        envs: source
            .envs
            .iter()
            .filter(|s| !s.is_empty())
            .cloned()
            .collect(),
        offline,
        default_namespace: source.namespace.clone(),
        secrets,
        live: client,
        connector: Arc::new(RealConnector::new(ConnectOptions {
            check_timeout: source.timeout,
            ..ConnectOptions::default()
        })),
        timeout: source.timeout,
    };
    Ok((manifests, opts))
}

async fn plan(args: PlanArgs) -> ExitCode {
    let (manifests, opts) = match preview_options(&args.source, args.offline).await {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let report = preview::plan_all(&manifests, &opts).await;
    match args.output {
        Output::Table => emit(&report.render_text()),
        Output::Json => match serde_json::to_string_pretty(&report) {
            Ok(j) => emit(&format!("{j}\n")),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        },
    }
    ExitCode::from(report.exit_code())
}

async fn check(args: CheckArgs) -> ExitCode {
    let (manifests, opts) = match preview_options(&args.source, false).await {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let results = preview::check_all(&manifests, &opts).await;
    match args.output {
        Output::Table => {
            let table: String = results
                .iter()
                .map(|r| {
                    format!(
                        "{:<30} {:<10} {:<13} {:<22} {}\n",
                        r.broker,
                        r.slug,
                        r.broker_type.as_str(),
                        r.reason,
                        r.message
                    )
                })
                .collect();
            emit(&table);
        }
        Output::Json => emit(&format!(
            "{}\n",
            serde_json::to_string_pretty(&results).unwrap_or_default()
        )),
    }
    let connected = switchyard::api::conditions::reasons::CONNECTED;
    if !results.is_empty() && results.iter().all(|r| r.reason == connected) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Write to stdout; a closed pipe (`| head`) is not an error worth a panic.
fn emit(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heap_figure(name: &str) -> u64 {
        let mut registry = Registry::default();
        registry
            .sub_registry_with_prefix("switchyard")
            .register_collector(Box::new(HeapStats));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    }

    #[test]
    fn heap_figures_follow_what_the_program_allocates() {
        let before = heap_figure("switchyard_heap_allocated_bytes");
        let held: Vec<u8> = vec![1; 32 << 20];
        let during = heap_figure("switchyard_heap_allocated_bytes");
        assert!(
            during >= before + (32 << 20),
            "{before} then {during} with 32 MiB more held"
        );
        assert!(heap_figure("switchyard_heap_resident_bytes") >= during);
        drop(held);
        assert!(heap_figure("switchyard_heap_allocated_bytes") < during);
    }
}
