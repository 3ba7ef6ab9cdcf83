//! `switchyard relay` with the real Dapr SDK: a Node app written against `@dapr/dapr` (HTTP
//! protocol, `DaprClient.pubsub.publish` and `DaprServer.pubsub.subscribe`) publishes and
//! subscribes through the relay on every backend, as it would through a Dapr sidecar; plain
//! curl requests from Dapr's docs do the same. The MessageBroker is provisioned by the real
//! controller and its binding Secret projected into a directory as the kubelet does.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use switchyard::client::{Binding, Client as AppClient};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::*;

const TIMEOUT: Duration = Duration::from_secs(90);
/// Bound on one delivery reaching the app.
const DELIVERY: Duration = Duration::from_secs(30);

/// A relay process serving one binding.
struct Relay {
    child: tokio::process::Child,
    port: u16,
    metrics_port: u16,
    http: reqwest::Client,
}

impl Relay {
    /// Start `switchyard relay` on `binding` (pub/sub name: the directory's name) and wait
    /// until it serves.
    async fn start(binding: &Path, app_port: Option<u16>, extra: &[&str]) -> Relay {
        let (port, metrics_port) = (free_port(), free_port());
        let mut cmd = tokio::process::Command::new(switchyard_bin());
        cmd.arg("relay")
            .arg("--binding")
            .arg(binding)
            .args(["--app-id", "orders-app"])
            .args(["--dapr-http-port", &port.to_string()])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .args(extra)
            .env("SWITCHYARD_LOG_LEVEL", "info")
            .kill_on_drop(true);
        if let Some(p) = app_port {
            cmd.args(["--app-port", &p.to_string()]);
        }
        let child = cmd.spawn().expect("start the relay");
        let relay = Relay {
            child,
            port,
            metrics_port,
            http: reqwest::Client::new(),
        };
        wait_until(TIMEOUT, "the relay serving", async || {
            relay
                .http
                .get(relay.url("/v1.0/healthz/outbound"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 204)
        })
        .await;
        relay
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn metadata(&self) -> Value {
        self.http
            .get(self.url("/v1.0/metadata"))
            .send()
            .await
            .expect("metadata")
            .json()
            .await
            .expect("metadata json")
    }

    async fn metrics(&self) -> String {
        self.http
            .get(format!("http://127.0.0.1:{}/metrics", self.metrics_port))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// SIGTERM, as the kubelet stops a sidecar, and wait for it to exit.
    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let status = tokio::time::timeout(TIMEOUT, self.child.wait())
            .await
            .expect("the relay exits on SIGTERM")
            .expect("wait");
        assert!(status.success(), "the relay exited with {status}");
    }
}

fn switchyard_bin() -> String {
    std::env::var("SWITCHYARD_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_switchyard").into())
}

/// The Node app of `tests/relay/node/app.js`, run with the SDK installed by the env.
struct NodeApp {
    child: tokio::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<Value>,
    name: String,
}

impl NodeApp {
    fn start(name: &str, args: &[&str], dapr_port: u16, app_port: Option<u16>) -> NodeApp {
        let mut cmd = tokio::process::Command::new(env_var("SWITCHYARD_DAPR_NODE"));
        cmd.arg(env_var("SWITCHYARD_DAPR_NODE_SCRIPT"))
            .args(args)
            .env("NODE_PATH", env_var("SWITCHYARD_DAPR_NODE_PATH"))
            .env("DAPR_HTTP_PORT", dapr_port.to_string())
            .env("DAPR_HOST", "127.0.0.1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        if let Some(p) = app_port {
            cmd.env("APP_PORT", p.to_string());
        }
        let mut child = cmd.spawn().expect("start node");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        let who = name.to_string();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => {
                        if tx.send(v).is_err() {
                            return;
                        }
                    }
                    Err(_) => eprintln!("{who}: {line}"),
                }
            }
        });
        NodeApp {
            child,
            lines,
            name: name.to_string(),
        }
    }

    /// The next line the app printed, within `timeout`.
    async fn next(&mut self, timeout: Duration) -> Option<Value> {
        tokio::time::timeout(timeout, self.lines.recv())
            .await
            .ok()
            .flatten()
    }

    /// Lines until one has `"event": event`; panics on `"event": "error"` or silence.
    async fn until(&mut self, event: &str, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.next(left).await.unwrap_or_else(|| {
                panic!(
                    "{}: no {event:?} within {timeout:?}; saw {} lines, last {:?}",
                    self.name,
                    seen.len(),
                    seen.last()
                )
            });
            assert_ne!(line["event"], "error", "{}: {line}", self.name);
            let done = line["event"] == event;
            seen.push(line);
            if done {
                return seen;
            }
        }
    }

    /// The app's lines from now on, for a task of their own.
    fn take_lines(&mut self) -> tokio::sync::mpsc::UnboundedReceiver<Value> {
        let (_, empty) = tokio::sync::mpsc::unbounded_channel();
        std::mem::replace(&mut self.lines, empty)
    }

    /// Close stdin: a streaming publisher finishes its message and exits.
    fn close_stdin(&mut self) {
        drop(self.child.stdin.take());
    }
}

/// A MessageBroker `bus` on `broker`, provisioned by the real controller, with its binding
/// projected into `<root>/bus` and followed as the kubelet does.
struct Bus {
    kube: kube::Client,
    ns: String,
    root: PathBuf,
    ctl: RunningController,
    kubelet: tokio::task::JoinHandle<()>,
}

impl Bus {
    /// The conformance suite's MessageBroker (`orders` with `billing` and `shipping`, `jobs`
    /// with `workers`, …).
    async fn on(prefix: &str, broker: &str) -> Bus {
        Bus::with(prefix, broker, crate::client::bus_manifest).await
    }

    /// The MessageBroker `manifest(env)` makes.
    async fn with(prefix: &str, broker: &str, manifest: fn(&str) -> String) -> Bus {
        let (kube, ns) = setup(prefix).await;
        let env = backend_env(&kube, &ns, broker).await;
        let ctl = start_real_controller(kube.clone(), &ns);
        apply_mb(&kube, &ns, &manifest(&env)).await;
        wait_ready(&kube, &ns, "bus", TIMEOUT).await;
        let root = std::env::temp_dir().join(unique(prefix));
        let kubelet = follow_secret(&kube, &ns, "bus-prd", &root.join("bus")).await;
        Bus {
            kube,
            ns,
            root,
            ctl,
            kubelet,
        }
    }

    fn binding(&self) -> PathBuf {
        self.root.join("bus")
    }

    /// The library on the same binding, to check what the relay wrote.
    async fn app_client(&self) -> AppClient {
        AppClient::new(Binding::from_dir(&self.binding()).expect("binding"))
            .await
            .expect("client")
    }

    async fn stop(self) {
        self.kubelet.abort();
        self.ctl.stop().await;
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// What the subscriber app saw, by the `seq` of each message's data.
#[derive(Default, Debug)]
struct Seen {
    /// seq → answers given, in order.
    answers: BTreeMap<u64, Vec<String>>,
    /// seq → CloudEvent ids of its deliveries.
    ids: BTreeMap<u64, BTreeSet<String>>,
    max_in_flight: u64,
}

impl Seen {
    fn add(&mut self, line: &Value) {
        let seq = line["data"]["seq"]
            .as_u64()
            .unwrap_or_else(|| panic!("no seq: {line}"));
        self.answers
            .entry(seq)
            .or_default()
            .push(line["answer"].as_str().unwrap_or_default().to_string());
        self.ids
            .entry(seq)
            .or_default()
            .insert(line["id"].as_str().unwrap_or_default().to_string());
        self.max_in_flight = self
            .max_in_flight
            .max(line["inFlight"].as_u64().unwrap_or(0));
    }

    fn succeeded(&self) -> BTreeSet<u64> {
        self.answers
            .iter()
            .filter(|(_, a)| a.iter().any(|a| a == "SUCCESS"))
            .map(|(s, _)| *s)
            .collect()
    }
}

/// Read the subscriber's lines until `done(seen)`.
async fn watch(sub: &mut NodeApp, seen: &mut Seen, what: &str, done: impl Fn(&Seen) -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !done(seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = sub
            .next(left.min(DELIVERY))
            .await
            .unwrap_or_else(|| panic!("{what}: the subscriber stopped hearing; saw {seen:?}"));
        if line["event"] == "received" {
            seen.add(&line);
        }
    }
}

/// A relay on `bus` with `relay_flags`, and the Node app subscribed through it to `orders`
/// (`app_flags` after `subscribe --pubsub bus --topic orders`), started and ready.
async fn relay_and_subscriber(
    bus: &Bus,
    relay_flags: &[&str],
    app_flags: &[&str],
) -> (Relay, NodeApp) {
    let app_port = free_port();
    let relay = Relay::start(&bus.binding(), Some(app_port), relay_flags).await;
    let args: Vec<&str> = ["subscribe", "--pubsub", "bus", "--topic", "orders"]
        .into_iter()
        .chain(app_flags.iter().copied())
        .collect();
    let mut sub = NodeApp::start("subscriber", &args, relay.port, Some(app_port));
    sub.until("ready", TIMEOUT).await;
    (relay, sub)
}

/// Publish, subscribe, RETRY, DROP and bulk publish through the relay with the Dapr Node SDK.
async fn sdk_round_trip(broker: &str, prefix: &str) {
    let bus = Bus::on(prefix, broker).await;
    let (relay, mut sub) = relay_and_subscriber(
        &bus,
        &[],
        &[
            "--subscription",
            "billing",
            "--answer",
            "retry-first",
            "--dead-letter-topic",
            "jobs",
        ],
    )
    .await;
    wait_until(
        TIMEOUT,
        "the relay to read the app's subscriptions",
        async || {
            relay.metadata().await["subscriptions"]
                .as_array()
                .is_some_and(|s| s.len() == 1)
        },
    )
    .await;
    let meta = relay.metadata().await;
    assert_eq!(meta["id"], "orders-app");
    assert_eq!(meta["subscriptions"][0]["topic"], "orders");
    assert_eq!(meta["subscriptions"][0]["type"], "PROGRAMMATIC");
    assert_eq!(meta["components"][0]["name"], "bus");

    // Ten published one by one and five in one bulk request: every one is answered RETRY
    // first, redelivered with the same id, then answered SUCCESS.
    let run = unique("run");
    let mut publisher = NodeApp::start(
        "publisher",
        &[
            "publish",
            "--pubsub",
            "bus",
            "--topic",
            "orders",
            "--count",
            "10",
            "--run",
            &run,
            "--key",
            "customer-1",
        ],
        relay.port,
        None,
    );
    let published = publisher.until("done", TIMEOUT).await;
    assert_eq!(
        published
            .iter()
            .filter(|l| l["event"] == "published")
            .count(),
        10
    );
    let mut bulk = NodeApp::start(
        "bulk publisher",
        &[
            "publish", "--pubsub", "bus", "--topic", "orders", "--count", "5", "--from", "10",
            "--run", &run, "--bulk",
        ],
        relay.port,
        None,
    );
    bulk.until("done", TIMEOUT).await;
    let mut seen = Seen::default();
    watch(&mut sub, &mut seen, "every message settled", |s| {
        s.succeeded().len() == 15
    })
    .await;
    assert_eq!(seen.succeeded(), (0..15).collect::<BTreeSet<u64>>());
    for (seq, answers) in &seen.answers {
        assert_eq!(
            answers.first().map(String::as_str),
            Some("RETRY"),
            "seq {seq}: first answer"
        );
        assert_eq!(
            answers.len(),
            2,
            "seq {seq}: one redelivery after RETRY: {answers:?}"
        );
        assert_eq!(
            seen.ids[seq].len(),
            1,
            "seq {seq}: redelivered with its own id"
        );
    }

    // DROP: the app's deadLetterTopic (`jobs`) receives the message, it is not redelivered.
    let mut dropper = NodeApp::start(
        "drop publisher",
        &[
            "publish",
            "--pubsub",
            "bus",
            "--topic",
            "orders",
            "--count",
            "2",
            "--from",
            "100",
            "--run",
            &run,
            "--data-answer",
            "DROP",
        ],
        relay.port,
        None,
    );
    dropper.until("done", TIMEOUT).await;
    let mut dropped = Seen::default();
    watch(&mut sub, &mut dropped, "the dropped messages", |s| {
        s.answers.len() == 2
    })
    .await;
    let library = bus.app_client().await;
    let mut workers = library.subscriber("jobs", "workers").await.expect("jobs");
    let mut dead = BTreeSet::new();
    while dead.len() < 2 {
        let d = tokio::time::timeout(DELIVERY, workers.next())
            .await
            .expect("a dead letter on jobs")
            .expect("receive");
        let data: Value = serde_json::from_slice(&d.message.payload).expect("json data");
        assert_eq!(data["run"], run.as_str());
        dead.insert(data["seq"].as_u64().expect("seq"));
        d.ack().await.expect("ack");
    }
    assert_eq!(dead, BTreeSet::from([100, 101]));
    for (seq, answers) in &dropped.answers {
        assert_eq!(answers, &["DROP"], "seq {seq} delivered once");
    }
    // Nothing else arrives (a dropped message is not redelivered).
    if let Some(line) = sub.next(Duration::from_secs(2)).await {
        panic!("after DROP: {line}");
    }

    let metrics = relay.metrics().await;
    for series in [
        "switchyard_relay_deliveries_total{pubsub=\"bus\",topic=\"orders\",subscription=\"billing\",answer=\"retry\"} 15",
        "switchyard_relay_deliveries_total{pubsub=\"bus\",topic=\"orders\",subscription=\"billing\",answer=\"drop\"} 2",
        "switchyard_relay_published_total{pubsub=\"bus\",topic=\"orders\",outcome=\"ok\"} 17",
    ] {
        assert!(metrics.contains(series), "{series} in\n{metrics}");
    }
    relay.stop().await;
    bus.stop().await;
}

/// One test per backend, each its own namespace and MessageBroker.
macro_rules! dapr_sdk_on {
    ($($test:ident: $broker:literal,)*) => {$(
        #[tokio::test]
        async fn $test() {
            sdk_round_trip($broker, &format!("relay-{}", $broker.to_ascii_lowercase())).await;
        }
    )*};
}

dapr_sdk_on! {
    dapr_sdk_on_redis: "Redis",
    dapr_sdk_on_kafka: "Kafka",
    dapr_sdk_on_rabbitmq: "RabbitMQ",
    dapr_sdk_on_pubsub: "GooglePubSub",
    dapr_sdk_on_sqs: "AwsSqs",
    dapr_sdk_on_nats: "NatsJetStream",
}

/// A slow app holds no more deliveries than `--max-in-flight`, and gets that many at once.
/// The subscription is declarative here: a `Subscription` manifest, the app not asked.
#[tokio::test]
async fn a_slow_app_gets_no_more_than_the_in_flight_bound() {
    let bus = Bus::on("relay-slow", "Redis").await;
    let manifests = bus.root.join("subscriptions.yaml");
    // The route the SDK registers for bus/orders (`/<pubsub>--<topic>--default`).
    std::fs::write(
        &manifests,
        "apiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata: {name: slow}\nspec:\n  pubsubname: bus\n  topic: orders\n  routes: {default: /bus--orders--default}\n  metadata: {subscription: shipping}\nscopes: [orders-app]\n---\napiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata: {name: not-ours}\nspec: {pubsubname: bus, topic: jobs, routes: {default: /jobs}}\nscopes: [another-app]\n",
    )
    .expect("subscriptions file");
    let (relay, mut sub) = relay_and_subscriber(
        &bus,
        &[
            "--max-in-flight",
            "3",
            "--no-app-subscribe",
            "--subscriptions",
            manifests.to_str().expect("path"),
        ],
        &["--subscription", "shipping", "--answer", "slow:300"],
    )
    .await;
    // Ready once the manifests are read (no app to ask).
    wait_until(TIMEOUT, "the relay healthy", async || {
        relay
            .http
            .get(relay.url("/v1.0/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 204)
    })
    .await;
    let meta = relay.metadata().await;
    assert_eq!(
        meta["subscriptions"].as_array().map(Vec::len),
        Some(1),
        "{meta}"
    );
    assert_eq!(meta["subscriptions"][0]["type"], "DECLARATIVE");
    let run = unique("run");
    let mut publisher = NodeApp::start(
        "publisher",
        &[
            "publish", "--pubsub", "bus", "--topic", "orders", "--count", "12", "--run", &run,
            "--bulk",
        ],
        relay.port,
        None,
    );
    publisher.until("done", TIMEOUT).await;
    let mut seen = Seen::default();
    watch(&mut sub, &mut seen, "every message", |s| {
        s.succeeded().len() == 12
    })
    .await;
    assert_eq!(
        seen.max_in_flight, 3,
        "the app held at most 3 at once, and did hold 3"
    );
    relay.stop().await;
    bus.stop().await;
}

/// Dapr's documented curl requests: a JSON body, a CloudEvent in structured mode with its own
/// id, a metadata query parameter, a bulk publish; errors as Dapr's API gives them.
#[tokio::test]
async fn dapr_docs_curl_requests() {
    let bus = Bus::on("relay-curl", "Redis").await;
    let relay = Relay::start(&bus.binding(), None, &[]).await;
    let library = bus.app_client().await;
    let mut shipping = library
        .subscriber("orders", "shipping")
        .await
        .expect("shipping");
    let curl = async |args: &[&str]| -> (u16, String) {
        let out = tokio::process::Command::new("curl")
            .args(["-s", "-o", "-", "-w", "\n%{http_code}"])
            .args(args)
            .output()
            .await
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').expect("status line");
        (code.parse().expect("status"), body.to_string())
    };
    let publish = relay.url("/v1.0/publish/bus/orders");
    let (code, body) = curl(&[
        "-X",
        "POST",
        &format!("{publish}?metadata.partitionKey=c-9"),
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"orderId": "100"}"#,
    ])
    .await;
    assert_eq!(code, 204, "{body}");
    let (code, body) = curl(&[
        "-X", "POST", &publish, "-H", "Content-Type: application/cloudevents+json", "-d",
        r#"{"specversion":"1.0","type":"com.example.order","source":"curl","id":"order-5","datacontenttype":"application/json","data":{"orderId":"5"},"subject":"o5"}"#,
    ])
    .await;
    assert_eq!(code, 204, "{body}");
    let (code, body) = curl(&[
        "-X", "POST", &relay.url("/v1.0-alpha1/publish/bulk/bus/orders"),
        "-H", "Content-Type: application/json", "-d",
        r#"[{"entryId":"1","event":"first text","contentType":"text/plain"},{"entryId":"2","event":{"n":2},"contentType":"application/json"}]"#,
    ])
    .await;
    assert_eq!(code, 204, "{body}");

    let mut got = Vec::new();
    for _ in 0..4 {
        let d = tokio::time::timeout(DELIVERY, shipping.next())
            .await
            .expect("a delivery")
            .expect("receive");
        got.push(d.message.clone());
        d.ack().await.expect("ack");
    }
    let by_payload = |p: &[u8]| {
        got.iter()
            .find(|m| m.payload == p)
            .unwrap_or_else(|| panic!("{} among {got:?}", String::from_utf8_lossy(p)))
    };
    let json_body = by_payload(br#"{"orderId": "100"}"#);
    assert_eq!(json_body.key.as_deref(), Some("c-9"));
    assert_eq!(json_body.source, "orders-app");
    assert_eq!(json_body.headers["content-type"], "application/json");
    let event = by_payload(br#"{"orderId":"5"}"#);
    assert_eq!(
        (
            event.id.as_str(),
            event.source.as_str(),
            event.type_.as_str()
        ),
        ("order-5", "curl", "com.example.order")
    );
    assert_eq!(event.headers["subject"], "o5");
    assert_eq!(
        by_payload(b"first text").headers["content-type"],
        "text/plain"
    );
    by_payload(br#"{"n":2}"#);

    // Errors answer as Dapr's do.
    let (code, body) = curl(&[
        "-X",
        "POST",
        &relay.url("/v1.0/publish/nope/orders"),
        "-d",
        "x",
    ])
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("ERR_PUBSUB_NOT_FOUND"), "{body}");
    let (code, body) = curl(&[
        "-X",
        "POST",
        &relay.url("/v1.0/publish/bus/undeclared"),
        "-d",
        "x",
    ])
    .await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("ERR_PUBSUB_FORBIDDEN") && body.contains("undeclared"),
        "{body}"
    );
    let (code, body) = curl(&[
        "-X",
        "POST",
        &publish,
        "-H",
        "Content-Type: application/cloudevents+json",
        "-d",
        "{not json",
    ])
    .await;
    assert_eq!(code, 400, "{body}");
    let (code, body) = curl(&[&relay.url("/v1.0/state/store/key")]).await;
    assert_eq!(code, 501, "{body}");
    assert!(body.contains("not part of the Dapr API"), "{body}");
    relay.stop().await;
    bus.stop().await;
}

/// The promise through the relay: a Node app publishing and consuming with the Dapr SDK keeps
/// running while its env moves from RabbitMQ to Kafka, and loses no message.
#[tokio::test]
async fn a_swap_under_the_node_app_loses_nothing() {
    use std::sync::{Arc, Mutex};
    // `orders` read by `billing` alone: the app drains all there is on the old side.
    let bus = Bus::with("relay-swap", "RabbitMQ", orders_on).await;
    let (relay, mut sub) = relay_and_subscriber(&bus, &[], &["--subscription", "billing"]).await;
    let run = unique("run");
    let mut publisher = NodeApp::start(
        "publisher",
        &[
            "publish",
            "--pubsub",
            "bus",
            "--topic",
            "orders",
            "--stream",
            "--interval",
            "20",
            "--run",
            &run,
            "--retry",
        ],
        relay.port,
        None,
    );
    // What each app printed, gathered while the swap runs.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let published = Arc::new(Mutex::new(BTreeSet::<u64>::new()));
    let refused = Arc::new(Mutex::new(0usize));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let subscriber_lines = {
        let (mut lines, seen) = (sub.take_lines(), seen.clone());
        tokio::spawn(async move {
            while let Some(line) = lines.recv().await {
                if line["event"] == "received" {
                    seen.lock().expect("seen").add(&line);
                }
            }
        })
    };
    let publisher_lines = {
        let mut lines = publisher.take_lines();
        let (published, refused, done) = (published.clone(), refused.clone(), done.clone());
        tokio::spawn(async move {
            while let Some(line) = lines.recv().await {
                match line["event"].as_str() {
                    Some("published") => {
                        published
                            .lock()
                            .expect("published")
                            .insert(line["seq"].as_u64().expect("seq"));
                    }
                    Some("refused") => *refused.lock().expect("refused") += 1,
                    Some("done") => done.store(true, std::sync::atomic::Ordering::SeqCst),
                    _ => panic!("publisher: {line}"),
                }
            }
        })
    };
    let count = || published.lock().expect("published").len();

    wait_until(TIMEOUT, "traffic on RabbitMQ", async || count() >= 50).await;
    let swap = orders_on(&backend_env(&bus.kube, &bus.ns, "Kafka").await);
    apply_mb(&bus.kube, &bus.ns, &swap).await;
    let started = Instant::now();
    wait_until(
        TIMEOUT,
        "the relay to follow the swap to Kafka",
        async || {
            let meta = relay.metadata().await;
            meta["extended"]["switchyard.bus.broker"] == "kafka"
                && meta["extended"]["switchyard.bus.draining"] == "false"
        },
    )
    .await;
    let followed = started.elapsed();
    let at_flip = count();
    wait_until(TIMEOUT, "traffic on Kafka", async || {
        count() >= at_flip + 50
    })
    .await;
    publisher.close_stdin();
    wait_until(TIMEOUT, "the publisher to finish", async || {
        done.load(std::sync::atomic::Ordering::SeqCst)
    })
    .await;
    publisher_lines.await.expect("publisher lines");
    let published = published.lock().expect("published").clone();
    wait_until(
        TIMEOUT,
        "every confirmed message answered SUCCESS",
        async || {
            let got = seen.lock().expect("seen").succeeded();
            published.iter().all(|p| got.contains(p))
        },
    )
    .await;
    subscriber_lines.abort();
    let seen = std::mem::take(&mut *seen.lock().expect("seen"));
    let lost = published
        .iter()
        .filter(|p| !seen.succeeded().contains(p))
        .count();
    let duplicates: usize = seen.answers.values().map(|a| a.len() - 1).sum();
    eprintln!(
        "through the relay: {} published ({} refused and retried), {} received, {lost} lost, {duplicates} duplicates; the relay followed the swap {followed:?} after apply",
        published.len(),
        refused.lock().expect("refused"),
        seen.answers.len()
    );
    assert_eq!(lost, 0);
    let mb = wait_for_mb(&bus.kube, &bus.ns, "bus", TIMEOUT, "Ready on Kafka", |m| {
        condition_true(m, "Ready")
            && m.status
                .as_ref()
                .and_then(|s| s.envs.first())
                .and_then(|e| e.broker_type)
                .is_some_and(|t| t.to_string() == "Kafka")
    })
    .await;
    assert!(condition_true(&mb, "Ready"));
    relay.stop().await;
    bus.stop().await;
}

/// The ready snippet of the README (examples/relay/deployment.yaml) is a valid Deployment for
/// the API server, and the chart's relay PodMonitor scrapes its pods' relay port.
#[tokio::test]
async fn the_sidecar_snippet_is_valid_and_the_chart_scrapes_it() {
    use crate::deploy::{CHART, documents, helm, kubectl, of_kind};
    let (_, ns) = setup("relay-snippet").await;
    let snippet = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/relay/deployment.yaml"
    ))
    .expect("snippet");
    kubectl(
        &["apply", "--dry-run=server", "-n", &ns, "-f", "-"],
        Some(&snippet),
    )
    .await;
    let deployment = &documents(&snippet)[0];
    let pod = &deployment["spec"]["template"];
    let relay = pod["spec"]["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .find(|c| c["name"] == "relay")
        .expect("a relay container");
    assert_eq!(relay["args"][0], "relay");
    let mount = &relay["volumeMounts"][0];
    assert_eq!(
        mount["mountPath"], "/bindings/orders-bus",
        "the pub/sub name is the directory's"
    );
    assert!(
        relay["args"]
            .as_array()
            .expect("args")
            .iter()
            .any(|a| a == "--binding=/bindings/orders-bus")
    );

    let docs = documents(
        &helm(&[
            "template",
            "sy",
            CHART,
            "-n",
            "ops",
            "--set",
            "relay.podMonitor.enabled=true",
        ])
        .await,
    );
    let monitors = of_kind(&docs, "PodMonitor");
    assert_eq!(monitors.len(), 1);
    let spec = &monitors[0]["spec"];
    for (k, v) in spec["selector"]["matchLabels"]
        .as_object()
        .expect("selector")
    {
        assert_eq!(
            &pod["metadata"]["labels"][k], v,
            "the snippet's pods carry {k}"
        );
    }
    let port = &spec["podMetricsEndpoints"][0]["port"];
    assert!(
        relay["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .any(|p| &p["name"] == port),
        "the relay container names its port {port}"
    );
    assert_eq!(spec["namespaceSelector"]["any"], true);
    assert!(
        of_kind(
            &documents(&helm(&["template", "sy", CHART]).await),
            "PodMonitor"
        )
        .is_empty()
    );
}
