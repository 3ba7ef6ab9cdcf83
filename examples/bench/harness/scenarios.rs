//! The scenarios (the client one is in [`super::clients`]). Each group runs its own operator process in its own namespace, so
//! counters and memory belong to one scenario.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use switchyard::api::{MessageBroker, SwapPhase};
use tokio::time::Instant;

use super::apiserver::ControlPlane;
use super::cpu::CpuSample;
use super::kafka::Kafka;
use super::operator::{Operator, OperatorMetrics};
use super::report::{Report, percentile};
use super::watch::ReadyWatch;
use super::{Brokers, Config, Scenario};

const MANAGER: &str = "switchyard-bench";
pub const RABBIT_SECRET: &str = "bench-rabbit";
pub const AWS_SECRET: &str = "bench-aws";
pub const NATS_SECRET: &str = "bench-nats";
/// Latency and swap: how long one MessageBroker may take.
pub const ONE_TIMEOUT: Duration = Duration::from_secs(60);

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

pub fn fmt_s(v: f64) -> String {
    format!("{v:.3} s")
}

/// Run the selected scenarios; a failing scenario is recorded and the next one still runs.
pub async fn run_all(
    config: &Config,
    brokers: &Brokers,
    plane: &ControlPlane,
    report: &mut Report,
) -> Result<(), String> {
    let run_id = std::process::id();
    if config.wants(Scenario::Scale) {
        let ns = format!("bench-scale-{run_id}");
        if let Err(e) = scale_and_idle(config, brokers, plane, &ns, report).await {
            report.errors.push(format!("scale/idle: {e}"));
        }
    } else if config.wants(Scenario::Idle) {
        report.errors.push(
            "idle runs on the resources of scale: add scale to SWITCHYARD_BENCH_SCENARIOS".into(),
        );
    }
    if config.wants(Scenario::Latency) {
        let ns = format!("bench-latency-{run_id}");
        if let Err(e) = latency(config, brokers, plane, &ns, report).await {
            report.errors.push(format!("latency: {e}"));
        }
    }
    if config.wants(Scenario::Swap) {
        let ns = format!("bench-swap-{run_id}");
        if let Err(e) = swap(config, brokers, plane, &ns, report).await {
            report.errors.push(format!("swap: {e}"));
        }
    }
    if config.wants(Scenario::Client) {
        let ns = format!("bench-client-{run_id}");
        if let Err(e) = super::clients::run(config, brokers, plane, &ns, report).await {
            report.errors.push(format!("client: {e}"));
        }
    }
    Ok(())
}

pub async fn create_namespace(client: &Client, name: &str) -> Result<(), String> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": name}})).map_err(|e| e.to_string())?;
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(format!("creating namespace {name}: {e}")),
    }
}

/// The credential Secrets the backends' env blocks ([`env_block`]) refer to.
pub async fn put_broker_secrets(client: &Client, ns: &str, b: &Brokers) -> Result<(), String> {
    put_secret(
        client,
        ns,
        RABBIT_SECRET,
        json!({"username": b.rabbit.3, "password": b.rabbit.4}),
    )
    .await?;
    put_secret(
        client,
        ns,
        AWS_SECRET,
        json!({"accessKeyId": b.aws.2, "secretAccessKey": b.aws.3}),
    )
    .await?;
    put_secret(
        client,
        ns,
        NATS_SECRET,
        json!({"username": b.nats.1, "password": b.nats.2}),
    )
    .await
}

pub async fn put_secret(client: &Client, ns: &str, name: &str, data: Value) -> Result<(), String> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let s = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data});
    api.patch(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&s),
    )
    .await
    .map(|_| ())
    .map_err(|e| format!("Secret {name}: {e}"))
}

/// The env block of a backend.
pub fn env_block(backend: &str, b: &Brokers) -> Value {
    let settings = match backend {
        "Kafka" => ("kafka", json!({"bootstrapServers": [b.kafka]})),
        "Redis" => ("redis", json!({"url": b.redis})),
        "RabbitMQ" => (
            "rabbitmq",
            json!({"host": b.rabbit.0, "port": b.rabbit.1, "managementUrl": b.rabbit.2,
                   "credentialsSecretRef": {"name": RABBIT_SECRET}}),
        ),
        "GooglePubSub" => (
            "googlePubSub",
            json!({"projectId": "switchyard-bench", "endpoint": b.pubsub}),
        ),
        "NatsJetStream" => (
            "natsJetStream",
            json!({"servers": [b.nats.0], "credentialsSecretRef": {"name": NATS_SECRET},
                   "storage": "Memory"}),
        ),
        _ => (
            "awsSqs",
            json!({"region": b.aws.1, "endpoint": b.aws.0,
                   "credentialsSecretRef": {"name": AWS_SECRET}}),
        ),
    };
    let mut env = json!({"slug": "prd", "type": backend});
    env[settings.0] = settings.1;
    env
}

pub fn manifest(name: &str, policy: &str, topics: usize, subs: usize, env: Value) -> Value {
    let topics: Vec<Value> = (0..topics)
        .map(|t| {
            let subs: Vec<Value> = (0..subs)
                .map(|s| json!({"name": format!("s{s}")}))
                .collect();
            json!({"name": format!("t{t}"), "partitions": 1, "subscriptions": subs})
        })
        .collect();
    json!({
        "apiVersion": "switchyard.dev/v1alpha1",
        "kind": "MessageBroker",
        "metadata": {"name": name},
        "spec": {"deletionPolicy": policy, "topics": topics, "envs": [env]},
    })
}

pub async fn apply(api: &Api<MessageBroker>, name: &str, m: &Value) -> Result<i64, String> {
    api.patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(m))
        .await
        .map(|mb| mb.metadata.generation.unwrap_or(0))
        .map_err(|e| format!("applying {name}: {e}"))
}

/// Delete and wait until gone (the operator's cleanup ran); returns how long it took.
pub async fn delete_and_wait(
    api: &Api<MessageBroker>,
    name: &str,
    timeout: Duration,
) -> Option<Duration> {
    let t0 = Instant::now();
    api.delete(name, &DeleteParams::default()).await.ok()?;
    while t0.elapsed() < timeout {
        if matches!(api.get_opt(name).await, Ok(None)) {
            return Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// When, counted from `t0`, the MessageBroker's swap of `generation` is Complete (Ready, and
/// the old side retired); `None` when not within `timeout` of `t0`.
pub async fn swap_complete(
    api: &Api<MessageBroker>,
    name: &str,
    generation: i64,
    t0: Instant,
    timeout: Duration,
) -> Option<Duration> {
    while t0.elapsed() < timeout {
        if let Ok(mb) = api.get(name).await {
            let phase = mb
                .status
                .as_ref()
                .and_then(|s| s.envs.first())
                .and_then(|e| e.swap.as_ref())
                .map(|s| s.phase);
            if super::watch::is_ready(&mb)
                && mb.metadata.generation == Some(generation)
                && phase == Some(SwapPhase::Complete)
            {
                return Some(t0.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Wait until the operator's status and binding writes stop for `quiet`.
async fn settle(op: &Operator, quiet: Duration, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let key = |m: &OperatorMetrics| {
        m.sum("switchyard_status_writes", &[]) + m.sum("switchyard_binding_writes", &[])
    };
    let mut last = op.metrics().await.map(|m| key(&m)).unwrap_or(0.0);
    let mut since = Instant::now();
    while Instant::now() < deadline && since.elapsed() < quiet {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = op.metrics().await.map(|m| key(&m)).unwrap_or(0.0);
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
}

fn ops_json(m: &OperatorMetrics) -> Value {
    json!(m.broker_ops())
}

fn requests_json(m: &OperatorMetrics) -> Value {
    json!(m.broker_requests())
}

async fn scale_and_idle(
    config: &Config,
    brokers: &Brokers,
    plane: &ControlPlane,
    ns: &str,
    report: &mut Report,
) -> Result<(), String> {
    let client = &plane.client;
    let kafka = Kafka::new(&brokers.kafka)?;
    let total_topics = config.brokers * config.topics;

    // The floor: the same number of topics by raw batched CreateTopics, before the operator runs.
    let floor_prefix = format!("bench-floor-{}.", std::process::id());
    let floor_names: Vec<String> = (0..total_topics)
        .map(|i| format!("{floor_prefix}{i}"))
        .collect();
    eprintln!(
        "bench: scale floor: {total_topics} topics in batches of {}",
        config.floor_batch
    );
    let files_before = super::kafka::broker_open_files();
    let floor_processes = [
        ("kafka", super::kafka::broker_pid()),
        ("bench", Some(std::process::id())),
    ];
    let floor_cpu0 = CpuSample::take(&floor_processes);
    let t0 = Instant::now();
    let floor = kafka.create_floor(&floor_names, config.floor_batch).await;
    let floor_time = t0.elapsed();
    let floor_cpu = CpuSample::take(&floor_processes).since(&floor_cpu0);
    let _ = kafka
        .delete_prefixed(std::slice::from_ref(&floor_prefix))
        .await;
    let (floor_requests, floor_failed) = floor?;
    // The operator's run starts on a broker that holds none of the floor's topics or files.
    let cleanup = kafka
        .wait_deleted(
            std::slice::from_ref(&floor_prefix),
            files_before,
            Duration::from_secs(300),
        )
        .await?;
    eprintln!(
        "bench: scale floor: {} s, its topics deleted and files released after {} s",
        secs(floor_time),
        secs(cleanup)
    );

    create_namespace(client, ns).await?;
    let log = config.work_dir.join("operator-scale.log");
    let op = Operator::start(config, &plane.kubeconfig, ns, &log).await?;
    let watch = ReadyWatch::start(client.clone(), ns);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let api: Api<MessageBroker> = Api::namespaced(client.clone(), ns);

    let req0 = plane.requests().await?;
    let met0 = op.metrics().await?;
    let cpu_processes = |op: &Operator| {
        let mut p = plane.processes();
        p.push(("operator", Some(op.pid())));
        p.push(("kafka", super::kafka::broker_pid()));
        p.push(("bench", Some(std::process::id())));
        p
    };
    let cpu0 = CpuSample::take(&cpu_processes(&op));
    eprintln!(
        "bench: scale: applying {} MessageBrokers x {} topics",
        config.brokers, config.topics
    );
    let env = env_block("Kafka", brokers);
    let t0 = Instant::now();
    let applied: Vec<Result<(String, i64), String>> = futures::stream::iter(0..config.brokers)
        .map(|i| {
            let api = api.clone();
            let name = format!("mb-{i:04}");
            let m = manifest(&name, "Retain", config.topics, 0, env.clone());
            async move { apply(&api, &name, &m).await.map(|g| (name, g)) }
        })
        .buffer_unordered(config.apply_concurrency.max(1))
        .collect()
        .await;
    let applied_in = t0.elapsed();
    let wanted: Vec<(String, i64)> = applied
        .iter()
        .filter_map(|r| r.as_ref().ok().cloned())
        .collect();
    if let Some(Err(e)) = applied.iter().find(|r| r.is_err()) {
        report.errors.push(format!("scale: {e}"));
    }
    let ready = watch.wait_all(&wanted, config.scale_timeout).await;
    let times: Vec<f64> = watch
        .times(&wanted)
        .iter()
        .map(|t| t.duration_since(t0).as_secs_f64())
        .collect();
    let all_ready = (ready == config.brokers).then(|| times.iter().copied().fold(0.0, f64::max));
    let cpu = CpuSample::take(&cpu_processes(&op)).since(&cpu0);
    settle(&op, Duration::from_secs(2), Duration::from_secs(30)).await;
    let req1 = plane.requests().await?;
    let met1 = op.metrics().await?;
    let own = BTreeMap::from([(
        ("APPLY".to_string(), "messagebrokers".to_string()),
        wanted.len() as f64,
    )]);
    let api_req = req1.since(&req0).minus(&own).operator_resources();
    let ops = met1.since(&met0);
    let peak = op.peak_rss_mib();
    let floor_s = secs(floor_time);
    let ratio = all_ready.map(|a| a / floor_s.max(0.001));

    report.scale = Some(json!({
        "brokers": config.brokers,
        "topicsPerBroker": config.topics,
        "topics": total_topics,
        "ready": ready,
        "appliedSeconds": secs(applied_in),
        "allReadySeconds": all_ready,
        "readyP50Seconds": percentile(&times, 0.5),
        "floorSeconds": floor_s,
        "floorRequests": floor_requests,
        "floorFailures": floor_failed,
        "floorCpu": floor_cpu.to_json(),
        "ratioToFloor": ratio,
        "peakRssMiB": peak,
        "apiRequests": api_req.total(),
        "apiWrites": api_req.writes(),
        "apiRequestsByVerb": api_req.to_json(),
        "brokerOperations": ops_json(&ops),
        "brokerRequestsByKind": requests_json(&ops),
        "statusWrites": ops.sum("switchyard_status_writes", &[]),
        "bindingWrites": ops.sum("switchyard_binding_writes", &[]),
        "reconciles": ops.sum("switchyard_reconciles_total", &[]),
        "cpu": cpu.to_json(),
    }));
    let sc = "1 scale";
    report.row(
        sc,
        "MessageBrokers x topics",
        format!("{} x {} = {total_topics}", config.brokers, config.topics),
    );
    match all_ready {
        Some(a) => report.check(sc, "apply -> all Ready", fmt_s(a), "<= 60 s", a <= 60.0),
        None => report.check(
            sc,
            "apply -> all Ready",
            format!("{ready}/{} Ready", config.brokers),
            "<= 60 s",
            false,
        ),
    }
    report.row(
        sc,
        "floor: batched CreateTopics + usable",
        format!("{} ({floor_requests} requests)", fmt_s(floor_s)),
    );
    report.row(sc, "CPU core-s, floor", floor_cpu.summary());
    if let Some(r) = ratio {
        report.check(
            sc,
            "ratio to floor",
            format!("{r:.2}x"),
            "<= 1.5x",
            r <= 1.5,
        );
    }
    report.check(
        sc,
        "operator peak RSS",
        format!("{peak:.1} MiB"),
        "<= 64 MB",
        peak <= 64.0,
    );
    report.row(
        sc,
        "API requests (operator)",
        format!(
            "{} ({} writes)",
            api_req.total() as u64,
            api_req.writes() as u64
        ),
    );
    report.row(
        sc,
        "status / binding writes",
        format!(
            "{} / {}",
            ops.sum("switchyard_status_writes", &[]) as u64,
            ops.sum("switchyard_binding_writes", &[]) as u64
        ),
    );
    report.row(sc, "CPU core-s, apply -> all Ready", cpu.summary());
    let broker_calls: u64 = ops.broker_ops().values().sum();
    report.row(sc, "broker calls (check+observe+apply)", broker_calls);
    report.row(
        sc,
        "Kafka requests sent",
        ops.sum("switchyard_broker_requests", &[]) as u64,
    );

    if config.wants(Scenario::Idle) && ready > 0 {
        idle(config, plane, &op, report, ready).await?;
    }

    if !plane.private {
        // The shared API server outlives the run: leave nothing behind that the operator must clean.
        for (name, _) in &wanted {
            let _ = api.delete(name, &DeleteParams::default()).await;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            match api.list(&Default::default()).await {
                Ok(l) if l.items.is_empty() => break,
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    drop(watch);
    op.stop().await;
    // Leave the broker as the run found it, files included, for whatever runs next.
    let ours = [format!("{ns}.")];
    let _ = kafka.delete_prefixed(&ours).await;
    kafka
        .wait_deleted(&ours, files_before, Duration::from_secs(300))
        .await?;
    Ok(())
}

async fn idle(
    config: &Config,
    plane: &ControlPlane,
    op: &Operator,
    report: &mut Report,
    resources: usize,
) -> Result<(), String> {
    let window = config.resync * 3;
    eprintln!("bench: idle: watching {resources} Ready MessageBrokers for {window:?}");
    let req0 = plane.requests().await?;
    let met0 = op.metrics().await?;
    tokio::time::sleep(window).await;
    let req1 = plane.requests().await?;
    let met1 = op.metrics().await?;
    let api_req = req1.since(&req0).operator_resources();
    let ops = met1.since(&met0);
    let calls: u64 = ops.broker_ops().values().sum();
    let endpoints = ops.sum("switchyard_pooled_clients", &[]).max(1.0);
    let requests = ops.sum("switchyard_broker_requests", &[]);
    let per_resync_per_endpoint = requests / 3.0 / endpoints;
    let passes_per_resync = calls as f64 / 3.0;
    report.idle = Some(json!({
        "windowSeconds": secs(window),
        "resyncSeconds": secs(config.resync),
        "resources": resources,
        "apiRequests": api_req.total(),
        "apiWrites": api_req.writes(),
        "apiRequestsByVerb": api_req.to_json(),
        "brokerOperations": ops_json(&ops),
        "brokerPasses": calls,
        "brokerRequests": requests,
        "brokerRequestsByKind": requests_json(&ops),
        "endpoints": endpoints,
        "brokerRequestsPerResyncPerEndpoint": per_resync_per_endpoint,
        "reconciles": ops.sum("switchyard_reconciles_total", &[]),
        "statusWrites": ops.sum("switchyard_status_writes", &[]),
        "bindingWrites": ops.sum("switchyard_binding_writes", &[]),
        "rssMiB": op.rss_mib(),
    }));
    let sc = "2 idle";
    report.row(sc, "window (3 resyncs)", fmt_s(secs(window)));
    report.check(
        sc,
        "API writes",
        api_req.writes() as u64,
        "0",
        api_req.writes() == 0.0,
    );
    report.row(sc, "API requests (all verbs)", api_req.total() as u64);
    // Bounded per endpoint: a refresh is one Metadata, two ListOffsets per piece and one
    // DescribeConfigs per chunk of topics; allow one refresh per resync plus one read-ahead.
    use switchyard::brokers::kafka::{DESCRIBE_CHUNK, READ_CHUNK};
    let topics = resources * config.topics;
    let requests = 1 + 2 * topics.div_ceil(READ_CHUNK) + topics.div_ceil(DESCRIBE_CHUNK);
    let bound = 2.0 * requests as f64;
    report.check(
        sc,
        "broker requests per resync per endpoint",
        format!(
            "{per_resync_per_endpoint:.1} ({resources} resources, {topics} topics, {endpoints} endpoint(s))"
        ),
        &format!("<= {bound:.0} (per endpoint)"),
        per_resync_per_endpoint <= bound,
    );
    report.row(
        sc,
        "observe passes per resync (answered from the shared read)",
        format!("{passes_per_resync:.0}"),
    );
    report.row(
        sc,
        "reconciles",
        ops.sum("switchyard_reconciles_total", &[]) as u64,
    );
    let peak = op.peak_rss_mib();
    report.check(
        sc,
        "operator RSS now / peak since start",
        format!("{:.1} / {peak:.1} MiB", op.rss_mib()),
        "<= 64 MB",
        peak <= 64.0,
    );
    Ok(())
}

async fn latency(
    config: &Config,
    brokers: &Brokers,
    plane: &ControlPlane,
    ns: &str,
    report: &mut Report,
) -> Result<(), String> {
    let client = &plane.client;
    create_namespace(client, ns).await?;
    put_broker_secrets(client, ns, brokers).await?;
    let log = config.work_dir.join("operator-latency.log");
    let op = Operator::start(config, &plane.kubeconfig, ns, &log).await?;
    let watch = ReadyWatch::start(client.clone(), ns);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let api: Api<MessageBroker> = Api::namespaced(client.clone(), ns);
    let sc = "3 latency";
    report.row(
        sc,
        "MessageBroker",
        format!(
            "{} topics x {} subscriptions, {} repetitions",
            config.latency_topics, config.subscriptions, config.repetitions
        ),
    );
    for backend in &config.backends {
        eprintln!(
            "bench: latency: {backend}, {} repetitions",
            config.repetitions
        );
        let env = env_block(backend, brokers);
        let mut samples = Vec::new();
        let mut deletes = Vec::new();
        let mut failures = 0;
        for rep in 0..config.repetitions {
            let name = format!("lat-{}-{rep}", backend.to_ascii_lowercase());
            let m = manifest(
                &name,
                "Delete",
                config.latency_topics,
                config.subscriptions,
                env.clone(),
            );
            let t0 = Instant::now();
            let generation = apply(&api, &name, &m).await?;
            match watch.wait(&name, generation, ONE_TIMEOUT).await {
                Some(t) => samples.push(t.duration_since(t0).as_secs_f64()),
                None => failures += 1,
            }
            if let Some(d) = delete_and_wait(&api, &name, ONE_TIMEOUT).await {
                deletes.push(d.as_secs_f64());
            }
        }
        let p50 = percentile(&samples, 0.5);
        let p99 = percentile(&samples, 0.99);
        report.latency.push(json!({
            "backend": backend,
            "repetitions": config.repetitions,
            "ready": samples.len(),
            "failures": failures,
            "p50Seconds": p50,
            "p99Seconds": p99,
            "minSeconds": samples.iter().copied().reduce(f64::min),
            "maxSeconds": samples.iter().copied().reduce(f64::max),
            "samplesSeconds": samples,
            "deleteP50Seconds": percentile(&deletes, 0.5),
        }));
        match (p50, p99) {
            (Some(p50), Some(p99)) => {
                report.check(
                    sc,
                    &format!("{backend} p50"),
                    fmt_s(p50),
                    "<= 1 s",
                    p50 <= 1.0,
                );
                report.row(sc, &format!("{backend} p99"), fmt_s(p99));
            }
            _ => report.check(
                sc,
                &format!("{backend} p50"),
                "never Ready",
                "<= 1 s",
                false,
            ),
        }
        if failures > 0 {
            report.row(
                sc,
                &format!("{backend} not Ready in {ONE_TIMEOUT:?}"),
                failures,
            );
        }
    }
    drop(watch);
    op.stop().await;
    if let Ok(kafka) = Kafka::new(&brokers.kafka) {
        let _ = kafka.delete_prefixed(&[format!("{ns}.")]).await;
    }
    Ok(())
}

async fn binding_type(api: &Api<Secret>, name: &str) -> Option<String> {
    let s = api.get_opt(name).await.ok()??;
    let data = s.data?;
    Some(String::from_utf8_lossy(&data.get("type")?.0).into_owned())
}

async fn swap(
    config: &Config,
    brokers: &Brokers,
    plane: &ControlPlane,
    ns: &str,
    report: &mut Report,
) -> Result<(), String> {
    let client = &plane.client;
    create_namespace(client, ns).await?;
    put_secret(
        client,
        ns,
        RABBIT_SECRET,
        json!({"username": brokers.rabbit.3, "password": brokers.rabbit.4}),
    )
    .await?;
    let log = config.work_dir.join("operator-swap.log");
    let op = Operator::start(config, &plane.kubeconfig, ns, &log).await?;
    let watch = ReadyWatch::start(client.clone(), ns);
    let api: Api<MessageBroker> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let name = "swap";
    let binding = format!("{name}-prd");
    eprintln!(
        "bench: swap: RabbitMQ -> Kafka, {} topics",
        config.swap_topics
    );
    let g1 = apply(
        &api,
        name,
        &manifest(
            name,
            "Delete",
            config.swap_topics,
            1,
            env_block("RabbitMQ", brokers),
        ),
    )
    .await?;
    watch
        .wait(name, g1, ONE_TIMEOUT)
        .await
        .ok_or("the RabbitMQ side never became Ready")?;
    if binding_type(&secrets, &binding).await.as_deref() != Some("rabbitmq") {
        return Err("the binding does not point at RabbitMQ before the swap".into());
    }
    let t0 = Instant::now();
    let g2 = apply(
        &api,
        name,
        &manifest(
            name,
            "Delete",
            config.swap_topics,
            1,
            env_block("Kafka", brokers),
        ),
    )
    .await?;
    let mut flip = None;
    while t0.elapsed() < ONE_TIMEOUT {
        if binding_type(&secrets, &binding).await.as_deref() == Some("kafka") {
            flip = Some(t0.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Complete: Ready on Kafka and the old side retired.
    let complete = swap_complete(&api, name, g2, t0, ONE_TIMEOUT).await;
    report.swap = Some(json!({
        "topics": config.swap_topics,
        "from": "RabbitMQ",
        "to": "Kafka",
        "flipSeconds": flip.map(secs),
        "completeSeconds": complete.map(secs),
    }));
    let sc = "4 swap";
    match flip {
        Some(f) => report.check(
            sc,
            &format!(
                "RabbitMQ -> Kafka, {} topics: apply -> binding flip",
                config.swap_topics
            ),
            fmt_s(secs(f)),
            "<= 5 s",
            secs(f) <= 5.0,
        ),
        None => report.check(sc, "apply -> binding flip", "never", "<= 5 s", false),
    }
    if let Some(c) = complete {
        report.row(
            sc,
            "apply -> swap Complete (old side retired)",
            fmt_s(secs(c)),
        );
    }
    let _ = delete_and_wait(&api, name, ONE_TIMEOUT).await;
    drop(watch);
    op.stop().await;
    if let Ok(kafka) = Kafka::new(&brokers.kafka) {
        let _ = kafka.delete_prefixed(&[format!("{ns}.")]).await;
    }
    Ok(())
}
