//! `switchyard relay`: the client library behind the pub/sub part of Dapr's HTTP API, as a
//! sidecar in the app's pod, so an app in any language publishes and subscribes with the
//! Dapr SDK it already has, and follows its bindings through a swap like a Rust app does.
//!
//! Each `--binding DIR` is one pub/sub component, named after the directory (mount the binding
//! at `/bindings/<MessageBroker name>`). The relay serves on localhost:
//! - `POST /v1.0/publish/{pubsub}/{topic}` and `POST /v1.0-alpha1/publish/bulk/{pubsub}/{topic}`;
//! - `GET /v1.0/healthz`, `GET /v1.0/healthz/outbound`, `GET /v1.0/metadata`;
//!
//! and delivers each subscription the app declares (its `GET /dapr/subscribe`, or
//! `Subscription` manifests) by POSTing a CloudEvent to the app's route, settling by the app's
//! answer: `SUCCESS` acks, `RETRY` (or a 5xx) redelivers, `DROP` (or a 404) dead-letters.
//! At most `--max-in-flight` deliveries per subscription wait on the app at once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};

use crate::client::{Client, ClientError, Delivery};

pub mod cloudevent;
pub mod metrics;
pub mod subscriptions;

use cloudevent::{CLOUDEVENTS_JSON, PublishOptions};
use metrics::{DeliveryLabels, PublishLabels, RelayMetrics, SubscriptionLabels};
use subscriptions::Subscription;

/// How the relay runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Pub/sub name → binding directory.
    pub bindings: Vec<(String, PathBuf)>,
    /// The app's id: the default `source` of events it publishes and the default subscription.
    pub app_id: String,
    /// Where the Dapr HTTP API is served (`127.0.0.1:3500`).
    pub http_addr: SocketAddr,
    /// The app's address (`127.0.0.1:PORT`), when it receives deliveries.
    pub app_addr: Option<String>,
    /// Read the app's `GET /dapr/subscribe`.
    pub app_subscribe: bool,
    /// Files of `Subscription` manifests.
    pub subscription_files: Vec<PathBuf>,
    /// Deliveries per subscription the app may hold unanswered.
    pub max_in_flight: usize,
    /// How long the app may take to answer one delivery (then it is redelivered).
    pub app_timeout: Duration,
    /// The app's health check, when enabled.
    pub app_health: Option<AppHealth>,
    /// Where `/metrics` is served.
    pub metrics_addr: Option<SocketAddr>,
    /// How long in-flight deliveries are waited for at shutdown.
    pub shutdown_grace: Duration,
}

/// The app's health check, as Dapr's `--enable-app-health-check`: deliveries pause while it
/// fails `threshold` times in a row.
#[derive(Clone, Debug)]
pub struct AppHealth {
    /// Path probed with GET (`/healthz`).
    pub path: String,
    /// Probe interval.
    pub interval: Duration,
    /// Probe timeout.
    pub timeout: Duration,
    /// Failures in a row before the app counts as unhealthy.
    pub threshold: u32,
}

/// What stops the relay.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// A binding or the configuration is not usable.
    #[error("{0}")]
    Config(String),
    /// A binding's broker could not be reached.
    #[error("binding {name}: {source}")]
    Binding {
        /// Pub/sub name.
        name: String,
        /// Why.
        source: ClientError,
    },
    /// A listener could not be opened.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// One pub/sub component: a binding and its client.
struct PubSub {
    client: Client,
}

/// A subscription being delivered, as `/v1.0/metadata` shows it.
#[derive(Clone)]
struct Active {
    sub: Subscription,
    kind: &'static str,
}

/// Shared by the HTTP handlers and the delivery loops.
struct Relay {
    config: Config,
    pubsubs: BTreeMap<String, PubSub>,
    http: reqwest::Client,
    metrics: RelayMetrics,
    /// Its `ready` is set once the subscriptions are read (the app's once it answers);
    /// `/readyz` of the metrics address answers by it.
    server: Arc<crate::server::ServerState>,
    active: std::sync::Mutex<Vec<Active>>,
    /// False while the app's health check fails.
    healthy: tokio::sync::watch::Sender<bool>,
    /// True once the relay is stopping.
    stopping: tokio::sync::watch::Sender<bool>,
}

/// Run until SIGTERM or Ctrl-C.
pub async fn run(config: Config) -> Result<(), RelayError> {
    if config.bindings.is_empty() {
        return Err(RelayError::Config("no --binding given".into()));
    }
    let mut pubsubs = BTreeMap::new();
    for (name, dir) in &config.bindings {
        if pubsubs.contains_key(name) {
            return Err(RelayError::Config(format!(
                "two bindings are named {name:?}; name them NAME=DIR"
            )));
        }
        let client = Client::from_binding(dir)
            .await
            .map_err(|source| RelayError::Binding {
                name: name.clone(),
                source,
            })?;
        tracing::info!(pubsub = %name, broker = client.binding().broker_type(), "binding read");
        pubsubs.insert(name.clone(), PubSub { client });
    }
    let mut registry = Registry::default();
    let metrics = RelayMetrics::new(&mut registry);
    metrics.app_healthy.set(1);
    let http = reqwest::Client::builder()
        .timeout(config.app_timeout)
        .pool_max_idle_per_host(config.max_in_flight.max(8))
        .build()
        .map_err(|e| RelayError::Config(format!("HTTP client: {e}")))?;
    let server = Arc::new(crate::server::ServerState {
        registry,
        ready: AtomicBool::new(false),
    });
    let relay = Arc::new(Relay {
        server: server.clone(),
        config,
        pubsubs,
        http,
        metrics,
        active: std::sync::Mutex::new(Vec::new()),
        healthy: tokio::sync::watch::Sender::new(true),
        stopping: tokio::sync::watch::Sender::new(false),
    });

    let listener = tokio::net::TcpListener::bind(relay.config.http_addr)
        .await
        .map_err(|source| RelayError::Listen {
            addr: relay.config.http_addr,
            source,
        })?;
    if let Some(addr) = relay.config.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| RelayError::Listen { addr, source })?;
        tokio::spawn(async move {
            if let Err(e) = crate::server::serve_on(listener, server).await {
                tracing::error!(error = %e, "the metrics endpoint stopped");
            }
        });
    }
    tracing::info!(addr = %relay.config.http_addr, app_id = %relay.config.app_id, "relay serving the Dapr pub/sub API");
    let api = {
        let mut stopping = relay.stopping.subscribe();
        let app = router(relay.clone());
        tokio::spawn(async move {
            let stopped = async move {
                let _ = stopping.wait_for(|s| *s).await;
            };
            axum::serve(listener, app)
                .with_graceful_shutdown(stopped)
                .await
        })
    };

    let mut loops = tokio::task::JoinSet::new();
    if relay.config.app_health.is_some() {
        loops.spawn(app_health(relay.clone()));
    }
    {
        let relay = relay.clone();
        loops.spawn(async move {
            let subs = discover(&relay).await;
            let mut consumers = tokio::task::JoinSet::new();
            for (sub, kind) in subs {
                consumers.spawn(consume(relay.clone(), sub, kind));
            }
            relay.server.ready.store(true, Ordering::SeqCst);
            while consumers.join_next().await.is_some() {}
        });
    }

    crate::server::shutdown_signal().await;
    tracing::info!("stopping: no new deliveries; waiting for those the app holds");
    relay.stopping.send_replace(true);
    let grace = relay.config.shutdown_grace;
    if tokio::time::timeout(grace, async { while loops.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "deliveries still unanswered at shutdown; the broker redelivers them"
        );
    }
    let _ = api.await;
    Ok(())
}

fn router(relay: Arc<Relay>) -> Router {
    Router::new()
        .route("/v1.0/publish/{pubsub}/{topic}", post(publish))
        .route(
            "/v1.0-alpha1/publish/bulk/{pubsub}/{topic}",
            post(publish_bulk),
        )
        .route("/v1.0/healthz", get(healthz))
        .route("/v1.0/healthz/outbound", get(outbound))
        .route("/v1.0/metadata", get(metadata))
        .fallback(not_covered)
        .with_state(relay)
}

/// A Dapr API error: `{"errorCode": ..., "message": ...}`.
fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(json!({"errorCode": code, "message": message.into()})),
    )
        .into_response()
}

async fn not_covered(uri: axum::http::Uri) -> Response {
    error(
        StatusCode::NOT_IMPLEMENTED,
        "ERR_NOT_SUPPORTED",
        format!(
            "{} is not part of the Dapr API the Switchyard relay serves (pub/sub publish, bulk publish, subscriptions, healthz, metadata)",
            uri.path()
        ),
    )
}

async fn healthz(State(relay): State<Arc<Relay>>) -> StatusCode {
    if relay.server.ready.load(Ordering::SeqCst) {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    }
}

/// The components are ready once the relay serves at all: every binding was read first.
async fn outbound() -> StatusCode {
    StatusCode::NO_CONTENT
}

async fn metadata(State(relay): State<Arc<Relay>>) -> Response {
    let components: Vec<Value> = relay
        .pubsubs
        .iter()
        .map(|(name, p)| {
            json!({
                "name": name,
                "type": format!("pubsub.{}", p.client.binding().broker_type()),
                "version": "v1",
                "capabilities": [],
            })
        })
        .collect();
    let subscriptions: Vec<Value> = relay
        .active
        .lock()
        .map(|a| a.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|a| {
            json!({
                "pubsubname": a.sub.pubsubname,
                "topic": a.sub.topic,
                "deadLetterTopic": a.sub.dead_letter_topic.clone().unwrap_or_default(),
                "metadata": a.sub.metadata,
                "rules": [{"match": "", "path": a.sub.route}],
                "type": a.kind,
            })
        })
        .collect();
    let mut extended = serde_json::Map::new();
    extended.insert(
        "daprRuntimeVersion".into(),
        Value::String(format!("switchyard-relay-{}", env!("CARGO_PKG_VERSION"))),
    );
    for (name, p) in &relay.pubsubs {
        // Which broker each binding speaks to now, and whether a swap's old side drains.
        extended.insert(
            format!("switchyard.{name}.broker"),
            Value::String(p.client.binding().broker_type().to_string()),
        );
        extended.insert(
            format!("switchyard.{name}.draining"),
            Value::String(p.client.draining().to_string()),
        );
    }
    let mut body = json!({
        "id": relay.config.app_id,
        "runtimeVersion": format!("switchyard-relay-{}", env!("CARGO_PKG_VERSION")),
        "enabledFeatures": [],
        "actors": [],
        "components": components,
        "httpEndpoints": [],
        "subscriptions": subscriptions,
        "extended": extended,
    });
    if let Some(addr) = &relay.config.app_addr {
        let (host, port) = addr.rsplit_once(':').unwrap_or((addr.as_str(), ""));
        body["appConnectionProperties"] = json!({
            "port": port.parse::<u16>().ok(),
            "protocol": "http",
            "channelAddress": host,
        });
        if let Some(h) = &relay.config.app_health {
            body["appConnectionProperties"]["health"] = json!({
                "healthCheckPath": h.path,
                "healthProbeInterval": humantime::format_duration(h.interval).to_string(),
                "healthProbeTimeout": humantime::format_duration(h.timeout).to_string(),
                "healthThreshold": h.threshold,
            });
        }
    }
    axum::Json(body).into_response()
}

/// `metadata.<name>` query parameters, without the prefix.
fn metadata_params(query: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter_map(|(k, v)| {
            k.strip_prefix("metadata.")
                .map(|k| (k.to_string(), v.into_owned()))
        })
        .collect()
}

fn options(params: &[(String, String)]) -> PublishOptions {
    PublishOptions::from_metadata(params.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

impl Relay {
    /// Dapr's answer to a pub/sub no binding is named after, or a topic its MessageBroker does
    /// not declare; `None` when both are known. (Unknown names never become metric labels.)
    fn refuse(&self, pubsub: &str, topic: &str) -> Option<Response> {
        let Some(p) = self.pubsubs.get(pubsub) else {
            return Some(error(
                StatusCode::BAD_REQUEST,
                "ERR_PUBSUB_NOT_FOUND",
                format!(
                    "pubsub {pubsub} is not found: this relay has {}",
                    self.pubsubs.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        };
        p.client
            .binding()
            .topic(topic)
            .err()
            .map(|e| publish_error(pubsub, topic, &e))
    }

    /// Publish one message, counted and timed.
    async fn publish(
        &self,
        pubsub: &str,
        topic: &str,
        message: crate::client::Message,
    ) -> Result<(), ClientError> {
        let p = &self.pubsubs[pubsub];
        let started = Instant::now();
        let result = p.client.publisher(topic).publish(message).await;
        let labels = PublishLabels {
            pubsub: pubsub.to_string(),
            topic: topic.to_string(),
            outcome: if result.is_ok() { "ok" } else { "error" }.to_string(),
        };
        self.metrics.published.get_or_create(&labels).inc();
        self.metrics
            .publish_seconds
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        result
    }
}

/// What a refused publish answers, as Dapr does.
fn publish_error(pubsub: &str, topic: &str, e: &ClientError) -> Response {
    match e {
        ClientError::UnknownName(_) => error(
            StatusCode::FORBIDDEN,
            "ERR_PUBSUB_FORBIDDEN",
            format!("topic {topic} is not declared in MessageBroker {pubsub}: {e}"),
        ),
        _ => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ERR_PUBSUB_PUBLISH_MESSAGE",
            format!("error when publishing to topic {topic} in pubsub {pubsub}: {e}"),
        ),
    }
}

async fn publish(
    State(relay): State<Arc<Relay>>,
    Path((pubsub, topic)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = relay.refuse(&pubsub, &topic) {
        return r;
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let params = metadata_params(query.as_deref());
    let message = match cloudevent::message_from_publish(
        &body,
        content_type,
        &options(&params),
        &relay.config.app_id,
    ) {
        Ok(m) => m,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "ERR_PUBSUB_CLOUD_EVENTS_SER",
                e.to_string(),
            );
        }
    };
    match relay.publish(&pubsub, &topic, message).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => publish_error(&pubsub, &topic, &e),
    }
}

/// One entry of a bulk publish.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct BulkEntry {
    #[serde(alias = "entryID")]
    entry_id: String,
    event: Value,
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

async fn publish_bulk(
    State(relay): State<Arc<Relay>>,
    Path((pubsub, topic)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    if let Some(r) = relay.refuse(&pubsub, &topic) {
        return r;
    }
    let entries: Vec<BulkEntry> = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "ERR_PUBSUB_EVENTS_SER",
                format!("the body is not a list of bulk publish entries: {e}"),
            );
        }
    };
    let common = metadata_params(query.as_deref());
    let results = futures::future::join_all(entries.into_iter().map(|entry| {
        let relay = relay.clone();
        let (pubsub, topic, common) = (pubsub.clone(), topic.clone(), common.clone());
        async move {
            let mut params = common;
            params.extend(entry.metadata);
            let message = cloudevent::message_from_bulk_entry(
                &entry.event,
                entry.content_type.as_deref(),
                &options(&params),
                &relay.config.app_id,
            )
            .map_err(|e| e.to_string());
            let result = match message {
                Ok(m) => relay
                    .publish(&pubsub, &topic, m)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            (entry.entry_id, result)
        }
    }))
    .await;
    let failed: Vec<Value> = results
        .into_iter()
        // Dapr's `entryId`, and the `entryID` the JavaScript SDK matches failures by.
        .filter_map(|(id, r)| {
            r.err()
                .map(|e| json!({"entryId": id, "entryID": id, "error": e}))
        })
        .collect();
    if failed.is_empty() {
        StatusCode::NO_CONTENT.into_response()
    } else {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"failedEntries": failed, "errorCode": "ERR_PUBSUB_PUBLISH_MESSAGE"})),
        )
            .into_response()
    }
}

/// The app's base URL.
fn app_url(relay: &Relay, path: &str) -> Option<String> {
    relay
        .config
        .app_addr
        .as_ref()
        .map(|a| format!("http://{a}{path}"))
}

/// The subscriptions to deliver: the declarative ones, then the app's own, read once the app
/// answers (as Dapr waits for the app's port).
async fn discover(relay: &Relay) -> Vec<(Subscription, &'static str)> {
    let mut subs = Vec::new();
    for file in &relay.config.subscription_files {
        match std::fs::read_to_string(file)
            .map_err(|e| e.to_string())
            .and_then(|t| subscriptions::from_manifests(&t, &relay.config.app_id))
        {
            Ok(s) => subs.extend(s.into_iter().map(|s| (s, "DECLARATIVE"))),
            Err(e) => tracing::error!(file = %file.display(), error = %e, "subscriptions not read"),
        }
    }
    if relay.config.app_subscribe
        && let Some(url) = app_url(relay, "/dapr/subscribe")
    {
        let mut stopping = relay.stopping.subscribe();
        let mut waited = Duration::from_millis(50);
        loop {
            match relay.http.get(&url).send().await {
                Ok(r) if r.status() == StatusCode::NOT_FOUND => break,
                Ok(r) if r.status().is_success() => {
                    match r.bytes().await.map_err(|e| e.to_string()) {
                        Ok(body) => match subscriptions::from_app(&body) {
                            Ok((s, errors)) => {
                                for e in errors {
                                    tracing::error!(error = %e, "subscription not served");
                                }
                                subs.extend(s.into_iter().map(|s| (s, "PROGRAMMATIC")));
                            }
                            Err(e) => tracing::error!(error = %e, "subscriptions not read"),
                        },
                        Err(e) => tracing::error!(error = %e, "subscriptions not read"),
                    }
                    break;
                }
                Ok(r) => {
                    tracing::error!(status = %r.status(), "GET /dapr/subscribe failed; no programmatic subscriptions");
                    break;
                }
                // Not listening yet.
                Err(e) => tracing::debug!(error = %e, "waiting for the app"),
            }
            tokio::select! {
                () = tokio::time::sleep(waited) => {}
                _ = stopping.wait_for(|s| *s) => return Vec::new(),
            }
            waited = (waited * 2).min(Duration::from_secs(1));
        }
    }
    let mut keep = Vec::new();
    for (sub, kind) in subs {
        if !relay.pubsubs.contains_key(&sub.pubsubname) {
            tracing::error!(pubsub = %sub.pubsubname, topic = %sub.topic, "subscription to an unknown pubsub; not served");
            continue;
        }
        keep.push((sub, kind));
    }
    if let Ok(mut a) = relay.active.lock() {
        *a = keep
            .iter()
            .map(|(sub, kind)| Active {
                sub: sub.clone(),
                kind,
            })
            .collect();
    }
    keep
}

/// Probe the app; deliveries pause while it is unhealthy.
async fn app_health(relay: Arc<Relay>) {
    let (Some(h), Some(url)) = (
        relay.config.app_health.clone(),
        relay
            .config
            .app_health
            .as_ref()
            .and_then(|h| app_url(&relay, &h.path)),
    ) else {
        return;
    };
    let mut stopping = relay.stopping.subscribe();
    let mut failures = 0u32;
    let mut tick = tokio::time::interval(h.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
        let ok = relay
            .http
            .get(&url)
            .timeout(h.timeout)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        failures = if ok { 0 } else { failures.saturating_add(1) };
        let healthy = failures < h.threshold;
        if *relay.healthy.borrow() != healthy {
            tracing::info!(healthy, "the app's health changed");
            relay.metrics.app_healthy.set(i64::from(healthy));
            relay.healthy.send_replace(healthy);
        }
    }
}

/// How the app answered a delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    Success,
    Retry,
    Drop,
}

impl Answer {
    fn label(self) -> &'static str {
        match self {
            Answer::Success => "success",
            Answer::Retry => "retry",
            Answer::Drop => "drop",
        }
    }
}

/// Dapr's reading of the app's answer: 2xx with `{"status": ...}` (none, or a body that is not
/// JSON, is SUCCESS; an unknown status is RETRY), 404 drops, anything else retries.
fn answer(status: StatusCode, body: &[u8]) -> Answer {
    if status == StatusCode::NOT_FOUND {
        return Answer::Drop;
    }
    if !status.is_success() {
        return Answer::Retry;
    }
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return Answer::Success;
    };
    match v.get("status").and_then(Value::as_str) {
        None => Answer::Success,
        Some(s) if s.eq_ignore_ascii_case("SUCCESS") || s.is_empty() => Answer::Success,
        Some(s) if s.eq_ignore_ascii_case("DROP") => Answer::Drop,
        Some(_) => Answer::Retry,
    }
}

/// Deliver one subscription to the app until the relay stops.
async fn consume(relay: Arc<Relay>, sub: Subscription, kind: &'static str) {
    let name = sub.subscription_name(&relay.config.app_id).to_string();
    let labels = SubscriptionLabels {
        pubsub: sub.pubsubname.clone(),
        topic: sub.topic.clone(),
        subscription: name.clone(),
    };
    let client = relay.pubsubs[&sub.pubsubname].client.clone();
    let mut stopping = relay.stopping.subscribe();
    let mut healthy = relay.healthy.subscribe();
    let mut subscriber = loop {
        match client.subscriber(&sub.topic, &name).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::error!(pubsub = %sub.pubsubname, topic = %sub.topic, subscription = %name, error = %e, "cannot subscribe; retrying in 5s");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
    };
    tracing::info!(pubsub = %sub.pubsubname, topic = %sub.topic, subscription = %name, route = %sub.route, kind, "delivering");
    let slots = Arc::new(tokio::sync::Semaphore::new(relay.config.max_in_flight));
    let sub = Arc::new(sub);
    let mut deliveries = tokio::task::JoinSet::new();
    loop {
        // A slot first: the subscriber takes a message from the broker only for a free one.
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => s,
            _ = stopping.wait_for(|s| *s) => break,
        };
        let Ok(slot) = slot else { break };
        tokio::select! {
            h = healthy.wait_for(|h| *h) => if h.is_err() { break },
            _ = stopping.wait_for(|s| *s) => break,
        }
        let next = tokio::select! {
            n = subscriber.next() => n,
            _ = stopping.wait_for(|s| *s) => break,
        };
        while deliveries.try_join_next().is_some() {}
        match next {
            Ok(d) => {
                let (relay, sub, labels) = (relay.clone(), sub.clone(), labels.clone());
                deliveries.spawn(async move {
                    relay.metrics.in_flight.get_or_create(&labels).inc();
                    deliver(&relay, &sub, &labels, d).await;
                    relay.metrics.in_flight.get_or_create(&labels).dec();
                    drop(slot);
                });
            }
            Err(ClientError::Closed) => break,
            Err(e) => {
                tracing::warn!(topic = %sub.topic, subscription = %labels.subscription, error = %e, "receiving failed; retrying");
                drop(slot);
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stopping.wait_for(|s| *s) => break,
                }
            }
        }
    }
    // What the app holds is answered before the relay exits (or redelivered by the broker).
    while deliveries.join_next().await.is_some() {}
}

/// POST one delivery to the app and settle it by the answer. While the app cannot be reached
/// the relay keeps the message and tries again (no delivery attempt is spent on it).
async fn deliver(relay: &Relay, sub: &Subscription, labels: &SubscriptionLabels, d: Delivery) {
    let Some(url) = app_url(relay, &sub.route) else {
        let _ = d.nack().await;
        return;
    };
    let event = cloudevent::delivery_event(&d.message, &sub.pubsubname, &sub.topic);
    let body = Bytes::from(serde_json::to_vec(&event).unwrap_or_default());
    let mut stopping = relay.stopping.subscribe();
    let mut wait = Duration::from_millis(100);
    let answer = loop {
        let started = Instant::now();
        let sent = relay
            .http
            .post(&url)
            .header(header::CONTENT_TYPE, CLOUDEVENTS_JSON)
            .body(body.clone())
            .send()
            .await;
        let result = match sent {
            Ok(r) => {
                let status = r.status();
                r.bytes().await.map(|b| answer(status, &b))
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(a) => {
                relay
                    .metrics
                    .delivery_seconds
                    .get_or_create(labels)
                    .observe(started.elapsed().as_secs_f64());
                break a;
            }
            // The app took longer than --app-timeout: it had the message; deliver it again.
            Err(e) if e.is_timeout() => {
                tracing::warn!(route = %sub.route, "the app did not answer in time; redelivering");
                break Answer::Retry;
            }
            Err(e) => {
                relay.count(labels, "unreachable");
                tracing::debug!(route = %sub.route, error = %e, "the app is not reachable; trying again");
                if *stopping.borrow() {
                    let _ = d.nack().await;
                    return;
                }
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    _ = stopping.wait_for(|s| *s) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    };
    relay.count(labels, answer.label());
    let settled = match answer {
        Answer::Success => d.ack().await,
        Answer::Retry => d.nack().await,
        Answer::Drop => dead_letter(relay, sub, d).await,
    };
    if let Err(e) = settled {
        tracing::warn!(topic = %sub.topic, subscription = %labels.subscription, error = %e, "settling a delivery failed; the broker redelivers it");
    }
}

/// A dropped message goes to the subscription's `deadLetterTopic` when it names one (a
/// logical topic of the same binding), else to the MessageBroker subscription's dead-letter
/// destination (or nowhere, when it has none).
async fn dead_letter(relay: &Relay, sub: &Subscription, d: Delivery) -> Result<(), ClientError> {
    match &sub.dead_letter_topic {
        Some(topic) => {
            match relay
                .publish(&sub.pubsubname, topic, d.message.clone())
                .await
            {
                Ok(()) => d.ack().await,
                Err(e) => {
                    let _ = d.nack().await;
                    Err(e)
                }
            }
        }
        None => d.reject().await,
    }
}

impl Relay {
    fn count(&self, labels: &SubscriptionLabels, answer: &str) {
        self.metrics
            .deliveries
            .get_or_create(&DeliveryLabels {
                pubsub: labels.pubsub.clone(),
                topic: labels.topic.clone(),
                subscription: labels.subscription.clone(),
                answer: answer.to_string(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_apps_answer_is_read_as_dapr_reads_it() {
        let ok = StatusCode::OK;
        assert_eq!(answer(ok, b""), Answer::Success);
        assert_eq!(answer(ok, b"not json"), Answer::Success);
        assert_eq!(answer(ok, br#"{"status":"SUCCESS"}"#), Answer::Success);
        assert_eq!(answer(ok, br#"{"status":"success"}"#), Answer::Success);
        assert_eq!(answer(ok, br#"{"status":"RETRY"}"#), Answer::Retry);
        assert_eq!(answer(ok, br#"{"status":"DROP"}"#), Answer::Drop);
        assert_eq!(answer(ok, br#"{"status":"LATER"}"#), Answer::Retry);
        assert_eq!(answer(StatusCode::NO_CONTENT, b""), Answer::Success);
        assert_eq!(answer(StatusCode::NOT_FOUND, b""), Answer::Drop);
        assert_eq!(
            answer(StatusCode::INTERNAL_SERVER_ERROR, b""),
            Answer::Retry
        );
        assert_eq!(answer(StatusCode::BAD_REQUEST, b""), Answer::Retry);
    }

    #[test]
    fn metadata_query_parameters_are_read_without_their_prefix() {
        let p = metadata_params(Some(
            "metadata.partitionKey=c%2F1&metadata.rawPayload=true&other=x",
        ));
        assert_eq!(
            p,
            vec![
                ("partitionKey".to_string(), "c/1".to_string()),
                ("rawPayload".to_string(), "true".to_string())
            ]
        );
        assert_eq!(options(&p).key.as_deref(), Some("c/1"));
        assert!(metadata_params(None).is_empty());
    }
}
