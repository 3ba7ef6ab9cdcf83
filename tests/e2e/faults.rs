//! Network faults between the operator and a broker, or the API server, injected by the env's
//! Toxiproxy (tests/env/toxiproxy.sh). Each test puts its own proxy in front of one service, so
//! tests running in parallel never see each other's faults.
//!
//! Per backend, with a MessageBroker Ready through the proxy, each fault in turn:
//! - black hole (`timeout` toxic, timeout 0, both directions: data is held, never answered),
//!   connections reset (`reset_peer`), latency above the check timeout: the env's Connected
//!   condition turns False with the reason the code gives for it, within one resync, one
//!   backoff step and the check timeout; retries stay backoff-paced (no hot loop);
//! - latency below the check timeout and a 1 KB/s bandwidth limit: the env stays Ready
//!   (slower), passes keep completing (Kafka at 1 KB/s may also report Timeout: its check
//!   reads the whole cluster's metadata, which arrives within the check timeout or not
//!   depending on how many topics the shared test broker holds);
//! - once the toxic is gone: Ready (and current) again within 10 s, the broker holds exactly
//!   the objects it held before (nothing deleted, nothing twice), the status' owned list is
//!   unchanged, the controller still runs, and in-flight work is bounded: the test runtime's
//!   alive task count is back near where it started and RSS has not grown unboundedly.
//!
//! For the API server, the in-process controller talks to kube-apiserver through the proxy
//! (TLS passes through untouched): during a black hole or a reset nothing is deleted on the
//! broker, and once the fault ends a spec change applied through the direct client is
//! reconciled within 10 s.
//!
//! Each (backend, fault) prints one `FAULT` line: reason seen, time to it, recovery time, RSS
//! and task-count change.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::{Api, Client};
use serde_json::{Value, json};
use switchyard::api::MessageBroker;
use switchyard::api::conditions::reasons;
use switchyard::brokers::{ConnectOptions, RealConnector};
use switchyard::controller::Config;

use crate::support::*;

const TIMEOUT: Duration = Duration::from_secs(60);
/// The check timeout the tests' operator runs with.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// Its resync: a settled MessageBroker is passed over this often, which is when a fault that
/// nothing else triggers a reconcile for is first seen.
const RESYNC: Duration = Duration::from_secs(2);
/// Ready again this soon after the fault ends.
const RECOVERY: Duration = Duration::from_secs(10);
/// The alive tasks of the test's runtime after recovery may exceed the count before the fault
/// by this much (a reconnected client may hold a task or two more than before).
const TASK_SLACK: i64 = 16;
/// RSS is the whole test process's, which other tests share and grow in parallel; this bounds
/// what a leak per faulty pass would reach (hundreds of failed passes), not allocator noise.
const RSS_SLACK_KIB: i64 = 64 * 1024;
/// The project the Pub/Sub tests use on the emulator.
const PUBSUB_PROJECT: &str = "switchyard-test";

// ---------------------------------------------------------------------------------------------
// Toxiproxy

/// One proxy of the env's Toxiproxy, deleted at the end of the test.
struct Proxy {
    http: reqwest::Client,
    api: String,
    name: String,
    /// host:port it listens on.
    listen: String,
}

impl Proxy {
    /// A proxy on a free port in front of `upstream` (host:port).
    async fn new(prefix: &str, upstream: &str) -> Proxy {
        Proxy::at(prefix, "127.0.0.1:0", upstream).await
    }

    /// A proxy listening on `listen` (host:port) in front of `upstream`. A proxy left on a
    /// fixed port by an earlier run that failed is removed first.
    async fn at(prefix: &str, listen: &str, upstream: &str) -> Proxy {
        let http = reqwest::Client::new();
        let api = env_var("SWITCHYARD_TOXIPROXY_URL");
        if !listen.ends_with(":0") {
            let all: Value = http
                .get(format!("{api}/proxies"))
                .send()
                .await
                .expect("toxiproxy answers")
                .json()
                .await
                .expect("proxies JSON");
            for (name, p) in all.as_object().into_iter().flatten() {
                if p["listen"].as_str() == Some(listen) {
                    let _ = http.delete(format!("{api}/proxies/{name}")).send().await;
                }
            }
        }
        let name = unique(prefix);
        let resp = http
            .post(format!("{api}/proxies"))
            .json(&json!({"name": name, "listen": listen, "upstream": upstream, "enabled": true}))
            .send()
            .await
            .expect("toxiproxy answers");
        assert!(
            resp.status().is_success(),
            "creating proxy {name}: {}",
            resp.status()
        );
        let body: Value = resp.json().await.expect("proxy JSON");
        let listen = body["listen"].as_str().expect("listen").to_string();
        Proxy {
            http,
            api,
            name,
            listen,
        }
    }

    async fn add_toxic(&self, toxic: &str, kind: &str, stream: &str, attributes: Value) {
        let resp = self
            .http
            .post(format!("{}/proxies/{}/toxics", self.api, self.name))
            .json(&json!({"name": toxic, "type": kind, "stream": stream, "toxicity": 1.0, "attributes": attributes}))
            .send()
            .await
            .expect("toxiproxy answers");
        assert!(
            resp.status().is_success(),
            "adding toxic {toxic} to {}: {}",
            self.name,
            resp.status()
        );
    }

    /// Remove every toxic of this proxy.
    async fn clear(&self) {
        let body: Value = self
            .http
            .get(format!("{}/proxies/{}/toxics", self.api, self.name))
            .send()
            .await
            .expect("toxiproxy answers")
            .json()
            .await
            .expect("toxics JSON");
        for t in body.as_array().into_iter().flatten() {
            let name = t["name"].as_str().expect("toxic name");
            let resp = self
                .http
                .delete(format!("{}/proxies/{}/toxics/{name}", self.api, self.name))
                .send()
                .await
                .expect("toxiproxy answers");
            assert!(resp.status().is_success(), "removing toxic {name}");
        }
    }

    async fn delete(self) {
        let _ = self
            .http
            .delete(format!("{}/proxies/{}", self.api, self.name))
            .send()
            .await;
    }
}

/// host:port of a URL such as `redis://127.0.0.1:1234/0` or `https://127.0.0.1:1234`.
fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split(['/', '?'])
        .next()
        .expect("host:port")
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// Faults

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    BlackHole,
    Reset,
    /// Latency below the check timeout.
    SlowLatency,
    /// Latency above the check timeout.
    Latency,
    Bandwidth,
}

const FAULTS: [Fault; 5] = [
    Fault::BlackHole,
    Fault::Reset,
    Fault::SlowLatency,
    Fault::Latency,
    Fault::Bandwidth,
];

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::BlackHole => "black-hole",
            Fault::Reset => "reset-peer",
            Fault::SlowLatency => "latency-1000ms",
            Fault::Latency => "latency-5000ms",
            Fault::Bandwidth => "bandwidth-1KB/s",
        }
    }

    async fn inject(self, proxy: &Proxy) {
        match self {
            Fault::BlackHole => {
                for stream in ["upstream", "downstream"] {
                    proxy
                        .add_toxic(
                            &format!("bh-{stream}"),
                            "timeout",
                            stream,
                            json!({"timeout": 0}),
                        )
                        .await;
                }
            }
            Fault::Reset => {
                proxy
                    .add_toxic("reset", "reset_peer", "upstream", json!({"timeout": 0}))
                    .await
            }
            Fault::SlowLatency => {
                proxy
                    .add_toxic(
                        "lat",
                        "latency",
                        "downstream",
                        json!({"latency": 1000, "jitter": 0}),
                    )
                    .await
            }
            Fault::Latency => {
                proxy
                    .add_toxic(
                        "lat",
                        "latency",
                        "downstream",
                        json!({"latency": 5000, "jitter": 0}),
                    )
                    .await
            }
            Fault::Bandwidth => {
                proxy
                    .add_toxic("bw", "bandwidth", "downstream", json!({"rate": 1}))
                    .await
            }
        }
    }

    /// A reason Connected may turn False with where the env is expected to stay Ready: the
    /// Kafka check reads the whole cluster's metadata, every topic of the shared test broker,
    /// which at 1 KB/s arrives within the check timeout or not depending on how many topics
    /// the tests before left there.
    fn tolerated(self, broker: Broker) -> Option<&'static str> {
        match (self, broker) {
            (Fault::Bandwidth, Broker::Kafka) => Some(reasons::TIMEOUT),
            _ => None,
        }
    }

    /// The reason the env's Connected condition turns False with, or None: it stays Ready.
    fn expected(self, broker: Broker) -> Option<&'static str> {
        match self {
            Fault::BlackHole => Some(reasons::TIMEOUT),
            // 5 s per answer: the probe a pass makes once its calls have waited a check
            // timeout (3 s) times out, whatever the client's own call timeout.
            Fault::Latency => Some(reasons::TIMEOUT),
            // async-nats reconnects in the background and the request waiting on it times
            // out; the other clients see the reset itself.
            Fault::Reset if matches!(broker, Broker::Nats) => Some(reasons::TIMEOUT),
            Fault::Reset => Some(reasons::UNREACHABLE),
            Fault::SlowLatency | Fault::Bandwidth => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Observations

/// This runtime's alive tasks and the process's anonymous resident memory (heap and stacks:
/// file-backed pages, such as the debug info a panicking test's backtrace maps, are left out).
#[derive(Clone, Copy)]
struct Sample {
    tasks: i64,
    rss_kib: i64,
}

fn sample() -> Sample {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("RssAnon");
    Sample {
        tasks: tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks() as i64,
        rss_kib,
    }
}

/// One `FAULT` line: what was seen, how soon, how soon it recovered, and the RSS and task
/// count after recovery (and during the fault) against before it.
fn report(
    what: &str,
    seen: &str,
    detect: Option<Duration>,
    recover: Duration,
    samples: [Sample; 3],
) {
    let [before, during, after] = samples;
    let detect = detect.map_or("n/a".to_string(), |d| format!("{:.1}s", d.as_secs_f64()));
    println!(
        "FAULT {what} reason={seen} detect={detect} recover={:.1}s rss={:+.1}MiB tasks={:+} (during {:+})",
        recover.as_secs_f64(),
        (after.rss_kib - before.rss_kib) as f64 / 1024.0,
        after.tasks - before.tasks,
        during.tasks - before.tasks,
    );
}

fn env_connected(mb: &MessageBroker) -> Option<(String, String)> {
    prd_condition(mb, "Connected").map(|(status, reason, _)| (status, reason))
}

fn owned(mb: &MessageBroker) -> Vec<String> {
    mb.status
        .as_ref()
        .and_then(|s| s.envs.iter().find(|e| e.slug == "prd"))
        .map(|e| e.owned.clone())
        .unwrap_or_default()
}

fn ready_and_connected(mb: &MessageBroker) -> bool {
    condition_true(mb, "Ready")
        && current(mb)
        && env_connected(mb).is_some_and(|(s, _)| s == "True")
}

/// The broker-side objects of one namespace, listed behind the operator's back on the direct
/// address, each once per occurrence (a duplicate shows up twice).
#[derive(Clone, Copy)]
enum Broker {
    Redis,
    RabbitMq,
    Nats,
    Kafka,
    PubSub,
    Sqs,
}

impl Broker {
    async fn objects(self, ns: &str) -> Vec<String> {
        let mut v = match self {
            Broker::Redis => redis_objects(ns).await,
            Broker::RabbitMq => rabbitmq_objects(ns).await,
            Broker::Nats => nats_objects(ns).await,
            Broker::Kafka => kafka_objects(ns).await,
            Broker::PubSub => pubsub_objects(ns).await,
            Broker::Sqs => sqs_objects(ns).await,
        };
        v.sort();
        v
    }
}

async fn redis_objects(ns: &str) -> Vec<String> {
    use redis::AsyncCommands;
    let client = redis::Client::open(env_var("SWITCHYARD_REDIS_URL")).expect("redis URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{ns}:*"))
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    let mut out = Vec::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .expect("TYPE");
        if kind == "stream" {
            let groups: redis::streams::StreamInfoGroupsReply =
                conn.xinfo_groups(&key).await.expect("XINFO GROUPS");
            out.extend(groups.groups.iter().map(|g| format!("{key}>{}", g.name)));
        }
        out.push(format!("{kind}:{key}"));
    }
    out
}

async fn rabbitmq_objects(ns: &str) -> Vec<String> {
    let b = crate::rabbitmq::broker();
    let http = reqwest::Client::new();
    let mut out = Vec::new();
    for kind in ["queues", "exchanges", "bindings"] {
        let list: Value = http
            .get(format!("{}/api/{kind}/%2F", b.management))
            .basic_auth(&b.username, Some(&b.password))
            .send()
            .await
            .expect("management API")
            .json()
            .await
            .expect("management JSON");
        for o in list.as_array().expect("a list") {
            let name = match kind {
                "bindings" => format!(
                    "{}->{}:{}",
                    o["source"].as_str().unwrap_or_default(),
                    o["destination"].as_str().unwrap_or_default(),
                    o["routing_key"].as_str().unwrap_or_default()
                ),
                _ => o["name"].as_str().unwrap_or_default().to_string(),
            };
            if name.contains(ns) {
                out.push(format!("{kind}:{name}"));
            }
        }
    }
    out
}

async fn nats_client() -> async_nats::Client {
    async_nats::ConnectOptions::with_user_and_password(
        env_var("SWITCHYARD_NATS_USER"),
        env_var("SWITCHYARD_NATS_PASSWORD"),
    )
    .connect(env_var("SWITCHYARD_NATS_URL"))
    .await
    .expect("nats")
}

async fn nats_objects(ns: &str) -> Vec<String> {
    use futures::StreamExt;
    let client = nats_client().await;
    let js = async_nats::jetstream::new(client);
    let mut names = js.stream_names();
    let mut out = Vec::new();
    while let Some(name) = names.next().await {
        let name = name.expect("stream name");
        if !name
            .to_lowercase()
            .contains(&ns.to_lowercase().replace('-', "_"))
            && !name.contains(ns)
        {
            continue;
        }
        let stream = js.get_stream(&name).await.expect("stream");
        let mut consumers = stream.consumer_names();
        while let Some(c) = consumers.next().await {
            out.push(format!("consumer:{name}>{}", c.expect("consumer")));
        }
        out.push(format!("stream:{name}"));
    }
    out
}

async fn kafka_objects(ns: &str) -> Vec<String> {
    use rdkafka::admin::AdminClient;
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;
    let ns = ns.to_string();
    tokio::task::spawn_blocking(move || {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", env_var("SWITCHYARD_KAFKA_BOOTSTRAP"))
            .create()
            .expect("admin client");
        let md = admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(10))
            .expect("metadata");
        let mut out: Vec<String> = md
            .topics()
            .iter()
            .filter(|t| t.name().contains(&ns))
            .map(|t| format!("topic:{}/{}", t.name(), t.partitions().len()))
            .collect();
        let groups = admin
            .inner()
            .fetch_group_list(None, Duration::from_secs(10))
            .expect("groups");
        out.extend(
            groups
                .groups()
                .iter()
                .filter(|g| g.name().contains(&ns))
                .map(|g| format!("group:{}", g.name())),
        );
        out
    })
    .await
    .expect("metadata task")
}

/// Topics and subscriptions of the emulator's project, through its REST API.
async fn pubsub_objects(ns: &str) -> Vec<String> {
    let base = env_var("SWITCHYARD_PUBSUB_ENDPOINT");
    let http = reqwest::Client::new();
    let mut out = Vec::new();
    for kind in ["topics", "subscriptions"] {
        let list: Value = http
            .get(format!("{base}/v1/projects/{PUBSUB_PROJECT}/{kind}"))
            .send()
            .await
            .expect("emulator")
            .json()
            .await
            .expect("emulator JSON");
        for o in list[kind].as_array().into_iter().flatten() {
            let name = o["name"].as_str().unwrap_or_default();
            if name.contains(ns) {
                let topic = o["topic"]
                    .as_str()
                    .map(|t| format!(" <- {t}"))
                    .unwrap_or_default();
                out.push(format!("{kind}:{name}{topic}"));
            }
        }
    }
    out
}

/// Queues, SNS topics and their subscriptions, through the AWS SDKs on the direct endpoint.
async fn sqs_objects(ns: &str) -> Vec<String> {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(env_var("SWITCHYARD_AWS_ENDPOINT"))
        .region(aws_config::Region::new(env_var("AWS_REGION")))
        .load()
        .await;
    let sqs = aws_sdk_sqs::Client::new(&config);
    let sns = aws_sdk_sns::Client::new(&config);
    let mut out = Vec::new();
    let queues = sqs.list_queues().send().await.expect("ListQueues");
    out.extend(
        queues
            .queue_urls()
            .iter()
            .filter(|u| u.contains(ns))
            .map(|u| format!("queue:{u}")),
    );
    let topics = sns.list_topics().send().await.expect("ListTopics");
    out.extend(
        topics
            .topics()
            .iter()
            .filter_map(|t| t.topic_arn())
            .filter(|a| a.contains(ns))
            .map(|a| format!("topic:{a}")),
    );
    let subs = sns
        .list_subscriptions()
        .send()
        .await
        .expect("ListSubscriptions");
    out.extend(
        subs.subscriptions()
            .iter()
            .filter(|s| s.topic_arn().is_some_and(|a| a.contains(ns)))
            .map(|s| {
                format!(
                    "subscription:{} -> {}",
                    s.topic_arn().unwrap_or_default(),
                    s.endpoint().unwrap_or_default()
                )
            }),
    );
    out
}

fn no_duplicates(what: &str, objects: &[String]) {
    let set: BTreeSet<_> = objects.iter().collect();
    assert_eq!(
        set.len(),
        objects.len(),
        "{what} lists an object twice: {objects:?}"
    );
}

fn manifest(env: &str, topics: usize) -> String {
    let topics: String = (0..topics)
        .map(|i| format!("    - {{name: t{i}, subscriptions: [{{name: app}}, {{name: audit}}]}}\n"))
        .collect();
    format!(
        "{}spec:\n  deletionPolicy: Delete\n  topics:\n{topics}  envs:\n    - {env}\n",
        mb_header("bus")
    )
}

/// Backends that give up within the controller's check timeout, as `--check-timeout` sets
/// both.
fn connector() -> Arc<RealConnector> {
    Arc::new(RealConnector::new(ConnectOptions {
        check_timeout: CHECK_TIMEOUT,
        ..ConnectOptions::default()
    }))
}

fn config() -> Config {
    Config {
        resync: RESYNC,
        check_timeout: CHECK_TIMEOUT,
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------------------------
// One backend through its proxies

/// Make `env` (built from the proxies' addresses) Ready, then run every fault through every
/// proxy in turn and check detection, recovery, objects and in-flight work.
async fn every_fault(label: &str, broker: Broker, proxies: &[Proxy], env: &str, ns: &str) {
    let client = client().await;
    let ctl = start_controller(client.clone(), ns, connector(), config());
    apply_mb(&client, ns, &manifest(env, 3)).await;
    let mb = wait_for_mb(&client, ns, "bus", TIMEOUT, "Ready", ready_and_connected).await;
    let owned_before = owned(&mb);
    let objects_before = broker.objects(ns).await;
    assert!(
        !objects_before.is_empty(),
        "{label}: no objects on the broker"
    );
    no_duplicates(label, &objects_before);
    let baseline = sample();

    for fault in FAULTS {
        let before = sample();
        let passes = ctl.metrics.reconciles.get();
        for p in proxies {
            fault.inject(p).await;
        }
        let injected = Instant::now();
        let (seen, detect, during) = match fault.expected(broker) {
            Some(reason) => {
                // The next pass (one resync) runs into the fault: its probe fails within the
                // check timeout, or, skipped after a recent good answer, its calls wait one
                // check timeout and then a probe does; one backoff step (1 s); slack for the
                // status write and a shared two-core machine.
                let bound =
                    RESYNC + CHECK_TIMEOUT * 2 + Duration::from_secs(1) + Duration::from_secs(6);
                let mb = wait_for_mb(&client, ns, "bus", TIMEOUT, reason, |m| {
                    env_connected(m).is_some_and(|(s, _)| s == "False")
                })
                .await;
                let detect = injected.elapsed();
                let (_, seen) = env_connected(&mb).expect("Connected");
                assert_eq!(
                    seen,
                    reason,
                    "{label} {}: Connected=False with the wrong reason: {:?}",
                    fault.name(),
                    prd_condition(&mb, "Connected").map(|c| c.2)
                );
                assert!(!condition_true(&mb, "Ready"), "{label}: Ready while down");
                assert!(
                    detect < bound,
                    "{label} {}: {detect:?} to report {reason}",
                    fault.name()
                );
                // Retries while down are paced by the backoff (1s, 2s, capped at the 2s resync).
                let during_passes = ctl.metrics.reconciles.get();
                tokio::time::sleep(Duration::from_secs(4)).await;
                let more = ctl.metrics.reconciles.get() - during_passes;
                assert!(
                    more <= 6,
                    "{label} {}: {more} reconciles in 4s while down",
                    fault.name()
                );
                (seen, detect, sample())
            }
            None => {
                // A fixed window: the env must stay Ready, and passes must keep completing.
                let window = Instant::now();
                let mut seen = "Ready".to_string();
                while window.elapsed() < Duration::from_secs(8) {
                    let api: Api<MessageBroker> = Api::namespaced(client.clone(), ns);
                    let mb = api.get("bus").await.expect("get");
                    let connected = env_connected(&mb);
                    let tolerated = fault.tolerated(broker).is_some_and(|r| {
                        connected
                            .as_ref()
                            .is_some_and(|(s, why)| s == "False" && why == r)
                    });
                    if tolerated {
                        seen = format!("Ready or {}", fault.tolerated(broker).unwrap_or_default());
                    }
                    assert!(
                        tolerated || connected.as_ref().is_some_and(|(s, _)| s == "True"),
                        "{label} {}: Connected turned {:?}",
                        fault.name(),
                        connected
                    );
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                // A pass at 5 s a round trip can outlast the window.
                let more = ctl.metrics.reconciles.get() - passes;
                assert!(
                    more >= 1 || fault == Fault::Latency,
                    "{label} {}: no pass completed in 8s",
                    fault.name()
                );
                (seen, Duration::ZERO, sample())
            }
        };
        for p in proxies {
            p.clear().await;
        }
        let cleared = Instant::now();
        wait_for_mb(
            &client,
            ns,
            "bus",
            TIMEOUT,
            "Ready again",
            ready_and_connected,
        )
        .await;
        let recover = cleared.elapsed();
        let after = sample();
        report(
            &format!("{label} {}", fault.name()),
            &seen,
            Some(detect),
            recover,
            [before, during, after],
        );
        assert!(
            recover < RECOVERY,
            "{label} {}: Ready only {recover:?} after the fault ended",
            fault.name()
        );
        let mb = wait_for_mb(&client, ns, "bus", TIMEOUT, "Ready", ready_and_connected).await;
        assert_eq!(
            owned(&mb),
            owned_before,
            "{label} {}: owned objects changed",
            fault.name()
        );
        let objects = broker.objects(ns).await;
        no_duplicates(label, &objects);
        assert_eq!(
            objects,
            objects_before,
            "{label} {}: broker objects changed",
            fault.name()
        );
        assert!(
            ctl.is_running(),
            "{label} {}: the controller stopped",
            fault.name()
        );
        assert!(
            after.tasks <= baseline.tasks + TASK_SLACK,
            "{label} {}: {} alive tasks, {} before the faults",
            fault.name(),
            after.tasks,
            baseline.tasks
        );
        assert!(
            after.rss_kib <= baseline.rss_kib + RSS_SLACK_KIB,
            "{label} {}: RSS {} KiB, {} KiB before the faults",
            fault.name(),
            after.rss_kib,
            baseline.rss_kib
        );
    }

    let mbs: Api<MessageBroker> = Api::namespaced(client.clone(), ns);
    mbs.delete("bus", &Default::default())
        .await
        .expect("delete");
    wait_gone(&mbs, "bus", TIMEOUT, "the MessageBroker is deleted").await;
    ctl.stop().await;
}

/// Run every fault through one proxy; `env` builds the env from the proxy's host:port.
async fn through(
    label: &str,
    broker: Broker,
    proxy: Proxy,
    ns: &str,
    env: impl Fn(&str) -> String,
) {
    let env = env(&proxy.listen);
    every_fault(label, broker, std::slice::from_ref(&proxy), &env, ns).await;
    proxy.delete().await;
}

#[tokio::test]
async fn redis_faults_are_reported_and_recovered_from() {
    let (_client, ns) = setup("fault-redis").await;
    let direct = env_var("SWITCHYARD_REDIS_URL");
    let proxy = Proxy::new("redis", &host_port(&direct)).await;
    through("redis", Broker::Redis, proxy, &ns, |listen| {
        format!("{{slug: prd, type: Redis, redis: {{url: \"redis://{listen}/0\"}}}}")
    })
    .await;
}

#[tokio::test]
async fn rabbitmq_faults_are_reported_and_recovered_from() {
    let (client, ns) = setup("fault-rabbitmq").await;
    let b = crate::rabbitmq::broker();
    crate::rabbitmq::put_credentials(&client, &ns, &b).await;
    let amqp = Proxy::new("rabbitmq-amqp", &format!("{}:{}", b.host, b.port)).await;
    let management = Proxy::new("rabbitmq-http", &host_port(&b.management)).await;
    let (host, port) = amqp.listen.rsplit_once(':').expect("host:port");
    let env = format!(
        "{{slug: prd, type: RabbitMQ, rabbitmq: {{host: \"{host}\", port: {port}, managementUrl: \"http://{}\", credentialsSecretRef: {{name: rabbit}}}}}}",
        management.listen
    );
    let proxies = [amqp, management];
    every_fault("rabbitmq", Broker::RabbitMq, &proxies, &env, &ns).await;
    for p in proxies {
        p.delete().await;
    }
}

/// Kafka's FAULTS listener advertises the proxy's address (tests/env/kafka.sh), so after
/// bootstrapping through the proxy librdkafka's broker connections go through it too. Its
/// port is fixed at the env's start: this is the one test that uses it.
#[tokio::test]
async fn kafka_faults_are_reported_and_recovered_from() {
    let (_client, ns) = setup("fault-kafka").await;
    let proxy = Proxy::at(
        "kafka",
        &env_var("SWITCHYARD_KAFKA_FAULTS_PROXY"),
        &env_var("SWITCHYARD_KAFKA_FAULTS_UPSTREAM"),
    )
    .await;
    through("kafka", Broker::Kafka, proxy, &ns, |listen| {
        format!("{{slug: prd, type: Kafka, kafka: {{bootstrapServers: [\"{listen}\"]}}}}")
    })
    .await;
}

#[tokio::test]
async fn pubsub_faults_are_reported_and_recovered_from() {
    let (_client, ns) = setup("fault-pubsub").await;
    let proxy = Proxy::new("pubsub", &host_port(&env_var("SWITCHYARD_PUBSUB_ENDPOINT"))).await;
    through("pubsub", Broker::PubSub, proxy, &ns, |listen| {
        format!(
        "{{slug: prd, type: GooglePubSub, googlePubSub: {{projectId: {PUBSUB_PROJECT}, endpoint: \"http://{listen}\"}}}}"
        )
    })
    .await;
}

#[tokio::test]
async fn sqs_faults_are_reported_and_recovered_from() {
    let (client, ns) = setup("fault-sqs").await;
    put_secret(
        &client,
        &ns,
        "aws",
        &[
            ("accessKeyId", &env_var("AWS_ACCESS_KEY_ID")),
            ("secretAccessKey", &env_var("AWS_SECRET_ACCESS_KEY")),
        ],
    )
    .await;
    let proxy = Proxy::new("sqs", &host_port(&env_var("SWITCHYARD_AWS_ENDPOINT"))).await;
    through("sqs", Broker::Sqs, proxy, &ns, |listen| {
        format!(
        "{{slug: prd, type: AwsSqs, awsSqs: {{region: {}, endpoint: \"http://{listen}\", credentialsSecretRef: {{name: aws}}}}}}",
        env_var("AWS_REGION")
        )
    })
    .await;
}

#[tokio::test]
async fn nats_faults_are_reported_and_recovered_from() {
    let (client, ns) = setup("fault-nats").await;
    put_secret(
        &client,
        &ns,
        "nats",
        &[
            ("username", &env_var("SWITCHYARD_NATS_USER")),
            ("password", &env_var("SWITCHYARD_NATS_PASSWORD")),
        ],
    )
    .await;
    let proxy = Proxy::new("nats", &host_port(&env_var("SWITCHYARD_NATS_URL"))).await;
    through("nats", Broker::Nats, proxy, &ns, |listen| {
        format!(
        "{{slug: prd, type: NatsJetStream, natsJetStream: {{servers: [\"nats://{listen}\"], credentialsSecretRef: {{name: nats}}}}}}"
        )
    })
    .await;
}

fn kubeconfig_via(listen: &str) -> std::path::PathBuf {
    let path = env_var("KUBECONFIG");
    let mut kc = kube::config::Kubeconfig::read_from(&path).expect("kubeconfig readable");
    for c in &mut kc.clusters {
        if let Some(cluster) = c.cluster.as_mut() {
            cluster.server = Some(format!("https://{listen}"));
        }
    }
    let out = std::env::temp_dir().join(format!("{}.kubeconfig", unique("fault-kube")));
    std::fs::write(&out, serde_norway::to_string(&kc).expect("kubeconfig YAML"))
        .expect("kubeconfig written");
    out
}

#[tokio::test]
async fn apiserver_faults_delete_nothing_and_spec_changes_land_after_recovery() {
    let (direct, ns) = setup("fault-kube").await;
    let server = kube::config::Kubeconfig::read_from(env_var("KUBECONFIG"))
        .expect("kubeconfig")
        .clusters
        .iter()
        .find_map(|c| c.cluster.as_ref()?.server.clone())
        .expect("a server URL");
    let proxy = Proxy::new("kube", &host_port(&server)).await;
    let path = kubeconfig_via(&proxy.listen);
    let via: Client = client_from(path.to_str().expect("utf-8 path")).await;
    let ctl = start_controller(via, &ns, connector(), config());
    let env = format!(
        "{{slug: prd, type: Redis, redis: {{url: \"{}\"}}}}",
        env_var("SWITCHYARD_REDIS_URL")
    );
    let mut topics = 3;
    apply_mb(&direct, &ns, &manifest(&env, topics)).await;
    wait_for_mb(&direct, &ns, "bus", TIMEOUT, "Ready", ready_and_connected).await;
    let baseline = sample();

    for fault in [Fault::BlackHole, Fault::Reset, Fault::Latency] {
        let before = sample();
        let objects_before = Broker::Redis.objects(&ns).await;
        fault.inject(&proxy).await;
        // A fixed window with the API server out of reach: the operator must not act on
        // what it cannot see (no deletion on the broker, nothing twice).
        tokio::time::sleep(Duration::from_secs(6)).await;
        let during = sample();
        let objects = Broker::Redis.objects(&ns).await;
        no_duplicates("kube", &objects);
        assert_eq!(
            objects,
            objects_before,
            "kube {}: broker objects changed",
            fault.name()
        );
        assert!(
            ctl.is_running(),
            "kube {}: the controller stopped",
            fault.name()
        );
        proxy.clear().await;
        let cleared = Instant::now();
        // A spec change through the direct client reaches the operator through its watches.
        topics += 1;
        apply_mb(&direct, &ns, &manifest(&env, topics)).await;
        let want = topics;
        let mb = wait_for_mb(
            &direct,
            &ns,
            "bus",
            TIMEOUT,
            "the new spec reconciled",
            |m| {
                ready_and_connected(m)
                    && m.status
                        .as_ref()
                        .and_then(|s| s.envs.first())
                        .is_some_and(|e| e.topics.len() == want)
            },
        )
        .await;
        let recover = cleared.elapsed();
        let after = sample();
        report(
            &format!("kube-apiserver {}", fault.name()),
            "n/a",
            None,
            recover,
            [before, during, after],
        );
        assert!(
            recover < RECOVERY,
            "kube {}: the spec change took {recover:?} after the fault ended",
            fault.name()
        );
        let objects = Broker::Redis.objects(&ns).await;
        no_duplicates("kube", &objects);
        assert!(
            objects_before.iter().all(|o| objects.contains(o)),
            "kube {}: objects deleted: before {objects_before:?}, after {objects:?}",
            fault.name()
        );
        assert_eq!(owned(&mb).len(), topics * 3, "kube {}: owned", fault.name());
        assert!(
            after.tasks <= baseline.tasks + TASK_SLACK,
            "kube {}: {} alive tasks, {} before the faults",
            fault.name(),
            after.tasks,
            baseline.tasks
        );
        assert!(
            after.rss_kib <= baseline.rss_kib + RSS_SLACK_KIB,
            "kube: RSS grew"
        );
    }
    let mbs: Api<MessageBroker> = Api::namespaced(direct.clone(), &ns);
    mbs.delete("bus", &Default::default())
        .await
        .expect("delete");
    wait_gone(&mbs, "bus", TIMEOUT, "the MessageBroker is deleted").await;
    ctl.stop().await;
    proxy.delete().await;
    let _ = std::fs::remove_file(path);
}
