//! The client scenario: per backend, publish throughput and end-to-end latency through the
//! client library (`switchyard::client`), side by side with the broker's own client used
//! directly ([`super::native`]) on twin topics of one MessageBroker, in one run; then the drain
//! of a swap: messages queued on RabbitMQ with no consumer, the env swapped to Kafka, and a
//! client following its binding reads them all.

use std::collections::BTreeSet;

use futures::stream::{FuturesUnordered, StreamExt};
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use switchyard::api::MessageBroker;
use switchyard::client::{Binding, Client, Message, Publisher};
use switchyard::controller::ABANDON_ANNOTATION;
use tokio::time::Instant;

use super::apiserver::ControlPlane;
use super::native;
use super::operator::Operator;
use super::relay::RelaySide;
use super::report::{Report, percentile};
use super::scenarios::{
    ONE_TIMEOUT, apply, create_namespace, delete_and_wait, env_block, fmt_s, manifest,
    put_broker_secrets, swap_complete,
};
use super::watch::ReadyWatch;
use super::{Brokers, Config};

const SC: &str = "5 client";
/// The client's topic and the native client's twin (one subscription each, `s0`).
const CLIENT_TOPIC: &str = "t0";
const NATIVE_TOPIC: &str = "t1";
/// The topic published and delivered through `switchyard relay` (Dapr's HTTP API).
const RELAY_TOPIC: &str = "t2";
const SUBSCRIPTION: &str = "s0";
/// Latency samples dropped at the start (connections, group joins, stream opening).
const WARMUP: usize = 10;

/// One side of a comparison.
enum Side<'a> {
    Client(&'a Publisher),
    Native(&'a native::Publisher),
    Relay(&'a RelaySide),
}

impl Side<'_> {
    async fn publish(&self, payload: &[u8]) -> Result<(), String> {
        match self {
            Side::Client(p) => p
                .publish(Message::new(payload.to_vec()))
                .await
                .map_err(|e| format!("client publish: {e}")),
            Side::Native(p) => p.publish(payload).await,
            Side::Relay(r) => r.publish(payload).await,
        }
    }
}

/// Confirmed publishes per second over `window`, `inflight` at a time.
async fn throughput(side: &Side<'_>, config: &Config, payload: &[u8]) -> Result<f64, String> {
    let t0 = Instant::now();
    let deadline = t0 + config.client_window;
    let mut running = FuturesUnordered::new();
    for _ in 0..config.client_inflight {
        running.push(side.publish(payload));
    }
    let mut confirmed = 0u64;
    while let Some(done) = running.next().await {
        done?;
        confirmed += 1;
        if Instant::now() < deadline {
            running.push(side.publish(payload));
        }
    }
    Ok(confirmed as f64 / t0.elapsed().as_secs_f64())
}

fn tagged(payload_bytes: usize, tag: &str) -> Vec<u8> {
    let mut p = tag.as_bytes().to_vec();
    p.resize(payload_bytes.max(tag.len()), b'.');
    p
}

/// Publish one message and wait until the subscriber has it: seconds per sample, warm-up
/// dropped. Deliveries of other payloads (there should be none) are acked and skipped.
async fn client_latency(client: &Client, config: &Config, label: &str) -> Result<Vec<f64>, String> {
    let publisher = client.publisher(CLIENT_TOPIC);
    let mut subscriber = client
        .subscriber(CLIENT_TOPIC, SUBSCRIPTION)
        .await
        .map_err(|e| format!("client subscribe: {e}"))?;
    let mut out = Vec::new();
    for i in 0..WARMUP + config.client_samples {
        let payload = tagged(config.payload_bytes, &format!("{label}-{i}-"));
        let t0 = Instant::now();
        publisher
            .publish(Message::new(payload.clone()))
            .await
            .map_err(|e| format!("client publish: {e}"))?;
        loop {
            let d = tokio::time::timeout(ONE_TIMEOUT, subscriber.next())
                .await
                .map_err(|_| format!("client: sample {i} not delivered in {ONE_TIMEOUT:?}"))?
                .map_err(|e| format!("client receive: {e}"))?;
            let mine = d.message.payload == payload;
            let took = t0.elapsed().as_secs_f64();
            d.ack().await.map_err(|e| format!("client ack: {e}"))?;
            if mine {
                if i >= WARMUP {
                    out.push(took);
                }
                break;
            }
        }
    }
    Ok(out)
}

async fn native_latency(
    publisher: &native::Publisher,
    consumer: &mut native::Consumer,
    config: &Config,
    label: &str,
) -> Result<Vec<f64>, String> {
    let mut out = Vec::new();
    for i in 0..WARMUP + config.client_samples {
        let payload = tagged(config.payload_bytes, &format!("{label}-{i}-"));
        let t0 = Instant::now();
        publisher.publish(&payload).await?;
        loop {
            let got = tokio::time::timeout(ONE_TIMEOUT, consumer.next())
                .await
                .map_err(|_| format!("native: sample {i} not delivered in {ONE_TIMEOUT:?}"))??;
            // SNS wraps a non-raw delivery in its JSON envelope: look for the payload in it.
            if got == payload || (got.len() > payload.len() && contains(&got, &payload)) {
                if i >= WARMUP {
                    out.push(t0.elapsed().as_secs_f64());
                }
                break;
            }
        }
    }
    Ok(out)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn ms(s: f64) -> String {
    format!("{:.2} ms", s * 1000.0)
}

/// Run the client scenario in namespace `ns`.
pub async fn run(
    config: &Config,
    brokers: &Brokers,
    plane: &ControlPlane,
    ns: &str,
    report: &mut Report,
) -> Result<(), String> {
    let kube = &plane.client;
    create_namespace(kube, ns).await?;
    put_broker_secrets(kube, ns, brokers).await?;
    let log = config.work_dir.join("operator-client.log");
    let op = Operator::start(config, &plane.kubeconfig, ns, &log).await?;
    let watch = ReadyWatch::start(kube.clone(), ns);
    let api: Api<MessageBroker> = Api::namespaced(kube.clone(), ns);
    report.row(
        SC,
        "setup",
        format!(
            "{} B payload, {} in flight, {} x {:?} rounds, {} latency samples",
            config.payload_bytes,
            config.client_inflight,
            config.client_rounds,
            config.client_window,
            config.client_samples
        ),
    );
    for backend in &config.backends {
        eprintln!("bench: client: {backend}");
        if let Err(e) = one_backend(config, brokers, kube, &api, &watch, ns, backend, report).await
        {
            report.errors.push(format!("client {backend}: {e}"));
        }
    }
    if let Err(e) = drain(config, brokers, kube, &api, &watch, ns, report).await {
        report.errors.push(format!("client drain: {e}"));
    }
    drop(watch);
    op.stop().await;
    if let Ok(kafka) = super::kafka::Kafka::new(&brokers.kafka) {
        let _ = kafka.delete_prefixed(&[format!("{ns}.")]).await;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn one_backend(
    config: &Config,
    brokers: &Brokers,
    kube: &kube::Client,
    api: &Api<MessageBroker>,
    watch: &ReadyWatch,
    ns: &str,
    backend: &str,
    report: &mut Report,
) -> Result<(), String> {
    let name = format!("cli-{}", backend.to_ascii_lowercase());
    let generation = apply(
        api,
        &name,
        &manifest(&name, "Delete", 3, 1, env_block(backend, brokers)),
    )
    .await?;
    watch
        .wait(&name, generation, ONE_TIMEOUT)
        .await
        .ok_or("never Ready")?;
    let binding = Binding::from_secret(kube, ns, &format!("{name}-prd"))
        .await
        .map_err(|e| e.to_string())?;
    let client = Client::new(binding.clone())
        .await
        .map_err(|e| format!("client: {e}"))?;
    let native_pub = native::Publisher::new(backend, brokers, &binding, NATIVE_TOPIC).await?;
    let mut native_sub =
        native::Consumer::new(backend, brokers, &binding, NATIVE_TOPIC, SUBSCRIPTION).await?;

    // Latency first, while the subscriptions are empty.
    let client_lat = client_latency(&client, config, "client").await?;
    let native_lat = native_latency(&native_pub, &mut native_sub, config, "native").await?;
    drop(native_sub);
    let mut relay = RelaySide::start(config, &binding, &name, RELAY_TOPIC, SUBSCRIPTION).await?;
    let relay_lat = relay
        .latency(config, WARMUP, |tag| tagged(config.payload_bytes, tag))
        .await?;

    // Throughput: alternate rounds, so drift in the broker hits both sides alike.
    let payload = tagged(config.payload_bytes, "throughput-");
    let client_pub = client.publisher(CLIENT_TOPIC);
    let (mut c_rates, mut n_rates, mut r_rates) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..config.client_rounds.max(1) {
        c_rates.push(throughput(&Side::Client(&client_pub), config, &payload).await?);
        n_rates.push(throughput(&Side::Native(&native_pub), config, &payload).await?);
        r_rates.push(throughput(&Side::Relay(&relay), config, &payload).await?);
    }
    let (c_rate, n_rate, r_rate) = (
        median(c_rates.clone()),
        median(n_rates.clone()),
        median(r_rates.clone()),
    );
    let relay_rss = relay.peak_rss_mib();
    relay.stop().await;
    // Redis entries are small, so the five CloudEvents fields are much of the broker's work:
    // measure the native client writing them too, to tell the format's cost from the library's.
    let enveloped = if backend == "Redis" {
        let p = native::Publisher::new(backend, brokers, &binding, NATIVE_TOPIC)
            .await?
            .with_envelope();
        let mut rates = Vec::new();
        for _ in 0..config.client_rounds.max(1) {
            rates.push(throughput(&Side::Native(&p), config, &payload).await?);
        }
        Some(median(rates))
    } else {
        None
    };
    let ratio = c_rate / n_rate;
    let p = |v: &[f64], q| percentile(v, q).unwrap_or(f64::NAN);
    let (c50, c99, n50, n99) = (
        p(&client_lat, 0.5),
        p(&client_lat, 0.99),
        p(&native_lat, 0.5),
        p(&native_lat, 0.99),
    );
    let added = c50 - n50;
    let (r50, r99) = (p(&relay_lat, 0.5), p(&relay_lat, 0.99));
    report.client.push(json!({
        "backend": backend,
        "clientMsgPerSec": c_rate,
        "nativeMsgPerSec": n_rate,
        "clientRounds": c_rates,
        "nativeRounds": n_rates,
        "throughputRatio": ratio,
        "clientP50Seconds": c50,
        "clientP99Seconds": c99,
        "nativeP50Seconds": n50,
        "nativeP99Seconds": n99,
        "addedP50Seconds": added,
        "nativeSameFieldsMsgPerSec": enveloped,
        "relayMsgPerSec": r_rate,
        "relayRounds": r_rates,
        "relayP50Seconds": r50,
        "relayP99Seconds": r99,
        "relayPeakRssMiB": relay_rss,
    }));
    report.row(
        SC,
        &format!("{backend} publish msg/s relay / library"),
        format!(
            "{r_rate:.0} / {c_rate:.0} = {:.1} %",
            r_rate / c_rate * 100.0
        ),
    );
    report.row(
        SC,
        &format!("{backend} e2e p50 relay / library (p99)"),
        format!(
            "{} / {} ({} / {}), relay peak RSS {}",
            ms(r50),
            ms(c50),
            ms(r99),
            ms(c99),
            relay_rss.map_or("?".into(), |m| format!("{m:.1} MiB"))
        ),
    );
    report.check(
        SC,
        &format!("{backend} publish msg/s client / native"),
        format!("{c_rate:.0} / {n_rate:.0} = {:.1} %", ratio * 100.0),
        ">= 80 %",
        ratio >= 0.8,
    );
    if let Some(e) = enveloped {
        report.row(
            SC,
            &format!("{backend} native with the client's 6 fields: msg/s, client / it"),
            format!("{e:.0}, {:.1} %", c_rate / e * 100.0),
        );
    }
    report.check(
        SC,
        &format!("{backend} e2e p50 client / native (p99)"),
        format!(
            "{} / {} ({} / {}), {:+.2} ms",
            ms(c50),
            ms(n50),
            ms(c99),
            ms(n99),
            added * 1000.0
        ),
        "<= +1 ms",
        added <= 0.001,
    );
    drop(client);
    abandon_and_delete(api, &name).await
}

/// Delete a MessageBroker whose subscriptions still hold the bench's messages: the operator
/// keeps a non-empty subscription until an admin abandons its cleanup, which is what the bench
/// does for its own test messages.
async fn abandon_and_delete(api: &Api<MessageBroker>, name: &str) -> Result<(), String> {
    let patch = json!({"metadata": {"annotations": {ABANDON_ANNOTATION: "true"}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| format!("annotating {name}: {e}"))?;
    delete_and_wait(api, name, ONE_TIMEOUT)
        .await
        .map(|_| ())
        .ok_or(format!("{name} not deleted within {ONE_TIMEOUT:?}"))
}

/// Messages queued on RabbitMQ with no consumer; the env swapped to Kafka under `Delete`; a
/// client following its binding Secret drains them: apply → the client sees the flip, flip →
/// every queued message received, apply → swap Complete (old side retired).
async fn drain(
    config: &Config,
    brokers: &Brokers,
    kube: &kube::Client,
    api: &Api<MessageBroker>,
    watch: &ReadyWatch,
    ns: &str,
    report: &mut Report,
) -> Result<(), String> {
    let name = "cli-drain";
    let n = config.drain_messages;
    eprintln!("bench: client: drain of {n} queued messages, RabbitMQ -> Kafka");
    let g1 = apply(
        api,
        name,
        &manifest(name, "Delete", 1, 1, env_block("RabbitMQ", brokers)),
    )
    .await?;
    watch
        .wait(name, g1, ONE_TIMEOUT)
        .await
        .ok_or("the RabbitMQ side never became Ready")?;
    let mut client = Client::from_secret(kube, ns, &format!("{name}-prd"))
        .await
        .map_err(|e| e.to_string())?;
    let publisher = client.publisher(CLIENT_TOPIC);
    let mut sent = BTreeSet::new();
    for i in 0..n {
        let m = Message::new(tagged(config.payload_bytes, &format!("queued-{i}-")));
        sent.insert(m.id.clone());
        publisher.publish(m).await.map_err(|e| e.to_string())?;
    }
    let t0 = Instant::now();
    let g2 = apply(
        api,
        name,
        &manifest(name, "Delete", 1, 1, env_block("Kafka", brokers)),
    )
    .await?;
    let flipped = loop {
        if client.binding().broker_type() == "kafka" {
            break t0.elapsed();
        }
        tokio::time::timeout_at(t0 + ONE_TIMEOUT, client.binding_changed())
            .await
            .map_err(|_| "the client never saw the binding flip")?;
    };
    let flip_at = Instant::now();
    let mut subscriber = client
        .subscriber(CLIENT_TOPIC, SUBSCRIPTION)
        .await
        .map_err(|e| e.to_string())?;
    let mut seen = BTreeSet::new();
    while seen.len() < sent.len() {
        let d = tokio::time::timeout(ONE_TIMEOUT, subscriber.next())
            .await
            .map_err(|_| format!("{} of {} drained, then nothing", seen.len(), sent.len()))?
            .map_err(|e| e.to_string())?;
        if sent.contains(&d.message.id) {
            seen.insert(d.message.id.clone());
        }
        d.ack().await.map_err(|e| e.to_string())?;
    }
    let drained = flip_at.elapsed();
    let complete = swap_complete(api, name, g2, t0, ONE_TIMEOUT * 2).await;
    let per_1000 = drained.as_secs_f64() * 1000.0 / n.max(1) as f64;
    report.drain = Some(json!({
        "queued": n,
        "from": "RabbitMQ",
        "to": "Kafka",
        "flipSeenSeconds": flipped.as_secs_f64(),
        "drainSeconds": drained.as_secs_f64(),
        "drainSecondsPer1000": per_1000,
        "completeSeconds": complete.map(|c| c.as_secs_f64()),
    }));
    report.row(
        SC,
        &format!("swap RabbitMQ -> Kafka, {n} queued: apply -> client sees the flip"),
        fmt_s(flipped.as_secs_f64()),
    );
    report.row(
        SC,
        "flip -> every queued message received, per 1000",
        fmt_s(per_1000),
    );
    match complete {
        Some(c) => report.row(
            SC,
            "apply -> swap Complete (old side drained and retired)",
            fmt_s(c.as_secs_f64()),
        ),
        None => report.row(SC, "apply -> swap Complete", "not within 120 s"),
    }
    drop(subscriber);
    drop(client);
    let _ = delete_and_wait(api, name, ONE_TIMEOUT).await;
    Ok(())
}
