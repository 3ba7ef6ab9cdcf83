//! Prometheus metrics. Labels carry categories, backends and outcomes — never names of Secrets
//! or their values.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// `switchyard_runtime_tasks`: the async tasks alive when scraped, so a leak of in-flight work
/// shows as a number that grows.
#[derive(Debug)]
struct RuntimeTasks;

impl prometheus_client::collector::Collector for RuntimeTasks {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Ok(());
        };
        let tasks = prometheus_client::metrics::gauge::ConstGauge::new(gauge_value(
            runtime.metrics().num_alive_tasks() as u64,
        ));
        let metric = encoder.encode_descriptor(
            "runtime_tasks",
            "Async tasks alive in the process",
            None,
            tasks.metric_type(),
        )?;
        tasks.encode(metric)
    }
}

/// Label set for errors.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// Error category (see `Error::category`).
    pub category: String,
}

/// Label set for Events.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// `Normal` or `Warning`.
    pub r#type: String,
    /// The Event's reason.
    pub reason: String,
    /// `published`, or `suppressed` when past the budget of bulk work's Normal Events.
    pub outcome: String,
}

/// Label set for broker operations.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BrokerOpLabels {
    /// Broker type.
    pub backend: String,
    /// Operation: check, observe, apply.
    pub operation: String,
    /// ok or error.
    pub outcome: String,
}

/// Label set for requests sent to brokers.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BrokerRequestLabels {
    /// Broker type.
    pub backend: String,
    /// Request: Metadata, ListOffsets, DescribeConfigs, CreateTopics, …
    pub request: String,
}

/// Requests sent to brokers, counted by the backends themselves (one observation of many
/// resources may be one request, and one reconcile may be several).
#[derive(Clone, Debug, Default)]
pub struct BrokerRequests {
    family: Family<BrokerRequestLabels, Counter>,
    total: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl BrokerRequests {
    /// Count one request.
    pub fn inc(&self, backend: &str, request: &str) {
        self.family
            .get_or_create(&BrokerRequestLabels {
                backend: backend.to_string(),
                request: request.to_string(),
            })
            .inc();
        self.total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Requests counted so far, all backends and kinds.
    pub fn total(&self) -> u64 {
        self.total.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The operator's metrics.
pub struct Metrics {
    /// Reconciles started.
    pub reconciles: Counter,
    /// Reconcile failures by category.
    pub errors: Family<ErrorLabels, Counter>,
    /// Reconcile duration in seconds.
    pub duration: Histogram,
    /// Broker calls by backend, operation and outcome.
    pub broker_ops: Family<BrokerOpLabels, Counter>,
    /// Requests sent to brokers by backend and request.
    pub broker_requests: BrokerRequests,
    /// Status writes.
    pub status_writes: Counter,
    /// Binding Secret writes.
    pub binding_writes: Counter,
    /// Events by type, reason and whether they were published or left out (see
    /// `controller::events`).
    pub events: Family<EventLabels, Counter>,
    /// Pooled broker clients.
    pub pooled_clients: Gauge,
    /// Whether this instance leads (1) or waits (0).
    pub leader: Gauge,
    /// Readiness and message flow per MessageBroker, env and subscription.
    pub flow: Flow,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            reconciles: Counter::default(),
            errors: Family::default(),
            duration: Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            broker_ops: Family::default(),
            broker_requests: BrokerRequests::default(),
            status_writes: Counter::default(),
            binding_writes: Counter::default(),
            events: Family::default(),
            pooled_clients: Gauge::default(),
            leader: Gauge::default(),
            flow: Flow::default(),
        }
    }
}

impl Metrics {
    /// Register every metric under the `switchyard` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("switchyard");
        r.register("reconciles", "Reconciles started", self.reconciles.clone());
        r.register(
            "reconcile_errors",
            "Reconcile failures by category",
            self.errors.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Reconcile duration",
            self.duration.clone(),
        );
        r.register(
            "broker_operations",
            "Broker calls by backend, operation and outcome",
            self.broker_ops.clone(),
        );
        r.register(
            "broker_requests",
            "Requests sent to brokers by backend and request (Kafka)",
            self.broker_requests.family.clone(),
        );
        r.register(
            "status_writes",
            "Status writes to the API server",
            self.status_writes.clone(),
        );
        r.register(
            "binding_writes",
            "Binding Secret writes",
            self.binding_writes.clone(),
        );
        r.register(
            "events",
            "Events by type and reason, published or suppressed (bulk work's Normal Events past their budget)",
            self.events.clone(),
        );
        r.register(
            "pooled_clients",
            "Broker clients in the pool",
            self.pooled_clients.clone(),
        );
        r.register(
            "leader",
            "1 when this instance holds the leader lease",
            self.leader.clone(),
        );
        self.flow.register(r);
        r.register_collector(Box::new(RuntimeTasks));
    }

    /// Count a broker call.
    pub fn broker_op(&self, backend: &str, operation: &str, ok: bool) {
        self.broker_ops
            .get_or_create(&BrokerOpLabels {
                backend: backend.to_string(),
                operation: operation.to_string(),
                outcome: if ok { "ok" } else { "error" }.to_string(),
            })
            .inc();
    }

    /// How many broker calls of this backend, operation and outcome (`ok`, `error`) were
    /// counted.
    pub fn broker_ops_with(&self, backend: &str, operation: &str, outcome: &str) -> u64 {
        self.broker_ops
            .get_or_create(&BrokerOpLabels {
                backend: backend.to_string(),
                operation: operation.to_string(),
                outcome: outcome.to_string(),
            })
            .get()
    }

    /// Count an Event, published or left out.
    pub fn event(&self, type_: &str, reason: &str, published: bool) {
        self.events
            .get_or_create(&EventLabels {
                r#type: type_.to_string(),
                reason: reason.to_string(),
                outcome: if published { "published" } else { "suppressed" }.to_string(),
            })
            .inc();
    }

    /// Count a failed reconcile.
    pub fn error(&self, category: &str) {
        self.errors
            .get_or_create(&ErrorLabels {
                category: category.to_string(),
            })
            .inc();
    }

    /// Start timing a reconcile; the duration is recorded when the timer drops.
    pub fn timer(&self) -> ReconcileTimer<'_> {
        self.reconciles.inc();
        ReconcileTimer {
            metrics: self,
            start: Instant::now(),
        }
    }
}

/// Records a reconcile's duration on drop.
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .duration
            .observe(self.start.elapsed().as_secs_f64());
    }
}

/// Labels of one MessageBroker.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MessageBrokerLabels {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub messagebroker: String,
}

/// Labels of one env of a MessageBroker.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EnvLabels {
    /// The MessageBroker's namespace.
    pub namespace: String,
    /// The MessageBroker's name.
    pub messagebroker: String,
    /// The env's slug.
    pub env: String,
    /// The env's broker type.
    pub backend: String,
}

/// Labels of one subscription of one env: logical names only, so a swap keeps the series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubscriptionLabels {
    /// The MessageBroker's namespace.
    pub namespace: String,
    /// The MessageBroker's name.
    pub messagebroker: String,
    /// The env's slug.
    pub env: String,
    /// The logical topic.
    pub topic: String,
    /// The logical subscription.
    pub subscription: String,
    /// The env's broker type.
    pub backend: String,
}

/// What one reconcile saw of one MessageBroker.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MessageBrokerFigures {
    /// Ready condition true.
    pub ready: bool,
    /// Stalled condition true.
    pub stalled: bool,
    /// Per env.
    pub envs: Vec<EnvFigures>,
}

/// What one reconcile saw of one env.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EnvFigures {
    /// Slug.
    pub env: String,
    /// Broker type.
    pub backend: String,
    /// Every env condition true.
    pub ready: bool,
    /// Connected condition true.
    pub connected: bool,
    /// The subscriptions whose figures the broker told.
    pub subscriptions: Vec<SubscriptionFigures>,
}

/// The message figures of one subscription, where the broker tells them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubscriptionFigures {
    /// Logical topic.
    pub topic: String,
    /// Logical subscription.
    pub subscription: String,
    /// Messages not acknowledged yet.
    pub backlog: Option<u64>,
    /// Messages in its dead-letter destination.
    pub dead_letters: Option<u64>,
    /// How long its oldest unacknowledged message has waited.
    pub oldest_unacked: Option<std::time::Duration>,
}

/// The label sets one MessageBroker has series under.
#[derive(Clone, Default)]
struct Series {
    envs: Vec<EnvLabels>,
    backlog: Vec<SubscriptionLabels>,
    dead_letters: Vec<SubscriptionLabels>,
    oldest_unacked: Vec<SubscriptionLabels>,
}

/// Readiness and message-flow gauges per MessageBroker, env and subscription. A MessageBroker's
/// series are replaced as a whole on each record, so series of envs, topics and subscriptions
/// that left the spec go away, and all of them go when the MessageBroker does.
#[derive(Default)]
pub struct Flow {
    mb_ready: Family<MessageBrokerLabels, Gauge>,
    mb_stalled: Family<MessageBrokerLabels, Gauge>,
    env_ready: Family<EnvLabels, Gauge>,
    env_connected: Family<EnvLabels, Gauge>,
    backlog: Family<SubscriptionLabels, Gauge>,
    dead_letters: Family<SubscriptionLabels, Gauge>,
    oldest_unacked: Family<SubscriptionLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Per-subscription series off: only the per-MessageBroker and per-env ones.
    per_subscription_off: std::sync::atomic::AtomicBool,
    series: std::sync::Mutex<std::collections::HashMap<MessageBrokerLabels, Series>>,
}

impl Flow {
    /// Turn the per-subscription series on or off (they are on by default).
    pub fn per_subscription(&self, on: bool) {
        self.per_subscription_off
            .store(!on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Record what a reconcile of `namespace/name` saw.
    pub fn record(&self, namespace: &str, name: &str, figures: &MessageBrokerFigures) {
        let mb = MessageBrokerLabels {
            namespace: namespace.to_string(),
            messagebroker: name.to_string(),
        };
        self.mb_ready.get_or_create(&mb).set(figures.ready.into());
        self.mb_stalled
            .get_or_create(&mb)
            .set(figures.stalled.into());
        let per_subscription = !self
            .per_subscription_off
            .load(std::sync::atomic::Ordering::Relaxed);
        let mut now = Series::default();
        for e in &figures.envs {
            let env = EnvLabels {
                namespace: namespace.to_string(),
                messagebroker: name.to_string(),
                env: e.env.clone(),
                backend: e.backend.clone(),
            };
            self.env_ready.get_or_create(&env).set(e.ready.into());
            self.env_connected
                .get_or_create(&env)
                .set(e.connected.into());
            now.envs.push(env);
            for s in e.subscriptions.iter().filter(|_| per_subscription) {
                let labels = SubscriptionLabels {
                    namespace: namespace.to_string(),
                    messagebroker: name.to_string(),
                    env: e.env.clone(),
                    topic: s.topic.clone(),
                    subscription: s.subscription.clone(),
                    backend: e.backend.clone(),
                };
                if let Some(n) = s.backlog {
                    self.backlog.get_or_create(&labels).set(gauge_value(n));
                    now.backlog.push(labels.clone());
                }
                if let Some(age) = s.oldest_unacked {
                    self.oldest_unacked
                        .get_or_create(&labels)
                        .set(age.as_secs_f64());
                    now.oldest_unacked.push(labels.clone());
                }
                if let Some(n) = s.dead_letters {
                    self.dead_letters.get_or_create(&labels).set(gauge_value(n));
                    now.dead_letters.push(labels);
                }
            }
        }
        let before = self
            .series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(mb, now.clone());
        if let Some(before) = before {
            self.drop_series(&before, &now);
        }
    }

    /// Drop every series of `namespace/name` (it is gone).
    pub fn forget(&self, namespace: &str, name: &str) {
        let mb = MessageBrokerLabels {
            namespace: namespace.to_string(),
            messagebroker: name.to_string(),
        };
        self.mb_ready.remove(&mb);
        self.mb_stalled.remove(&mb);
        let before = self
            .series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&mb);
        if let Some(before) = before {
            self.drop_series(&before, &Series::default());
        }
    }

    /// Remove the series of `old` that `keep` does not have.
    fn drop_series(&self, old: &Series, keep: &Series) {
        for l in old.envs.iter().filter(|l| !keep.envs.contains(l)) {
            self.env_ready.remove(l);
            self.env_connected.remove(l);
        }
        for l in old.backlog.iter().filter(|l| !keep.backlog.contains(l)) {
            self.backlog.remove(l);
        }
        for l in old
            .oldest_unacked
            .iter()
            .filter(|l| !keep.oldest_unacked.contains(l))
        {
            self.oldest_unacked.remove(l);
        }
        for l in old
            .dead_letters
            .iter()
            .filter(|l| !keep.dead_letters.contains(l))
        {
            self.dead_letters.remove(l);
        }
    }

    fn register(&self, r: &mut Registry) {
        r.register(
            "messagebroker_ready",
            "1 when the MessageBroker is Ready",
            self.mb_ready.clone(),
        );
        r.register(
            "messagebroker_stalled",
            "1 when the MessageBroker is Stalled",
            self.mb_stalled.clone(),
        );
        r.register(
            "env_ready",
            "1 when every condition of the env holds",
            self.env_ready.clone(),
        );
        r.register(
            "env_connected",
            "1 when the env's broker answers",
            self.env_connected.clone(),
        );
        r.register(
            "subscription_backlog_messages",
            "Messages of a subscription not acknowledged yet, where the broker tells",
            self.backlog.clone(),
        );
        r.register(
            "subscription_oldest_unacked_seconds",
            "Age of a subscription's oldest unacknowledged message, where the broker tells",
            self.oldest_unacked.clone(),
        );
        r.register(
            "deadletter_messages",
            "Messages in a subscription's dead-letter destination",
            self.dead_letters.clone(),
        );
    }
}

fn gauge_value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(metrics: &Metrics) -> String {
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("encode");
        out
    }

    fn runtime_tasks(text: &str) -> i64 {
        text.lines()
            .find_map(|l| l.strip_prefix("switchyard_runtime_tasks "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no runtime_tasks in\n{text}"))
    }

    #[tokio::test]
    async fn runtime_tasks_counts_the_tasks_alive_when_scraped() {
        let metrics = Metrics::default();
        let before = runtime_tasks(&text(&metrics));
        let pending: Vec<_> = (0..5)
            .map(|_| tokio::spawn(futures::future::pending::<()>()))
            .collect();
        assert_eq!(runtime_tasks(&text(&metrics)), before + 5);
        for task in pending {
            task.abort();
            let _ = task.await;
        }
        assert_eq!(runtime_tasks(&text(&metrics)), before);
    }

    fn figures(subs: &[(&str, u64)]) -> MessageBrokerFigures {
        MessageBrokerFigures {
            ready: true,
            stalled: false,
            envs: vec![EnvFigures {
                env: "prd".into(),
                backend: "Redis".into(),
                ready: true,
                connected: true,
                subscriptions: subs
                    .iter()
                    .map(|(s, n)| SubscriptionFigures {
                        topic: "orders".into(),
                        subscription: s.to_string(),
                        backlog: Some(*n),
                        dead_letters: None,
                        oldest_unacked: (*n > 0).then(|| std::time::Duration::from_millis(1500)),
                    })
                    .collect(),
            }],
        }
    }

    #[test]
    fn flow_series_follow_the_resource_and_go_with_it() {
        let metrics = Metrics::default();
        metrics
            .flow
            .record("shop", "bus", &figures(&[("billing", 6), ("audit", 2)]));
        let t = text(&metrics);
        assert!(t.contains(r#"switchyard_subscription_backlog_messages{namespace="shop",messagebroker="bus",env="prd",topic="orders",subscription="billing",backend="Redis"} 6"#), "{t}");
        assert!(
            t.contains(r#"switchyard_messagebroker_ready{namespace="shop",messagebroker="bus"} 1"#),
            "{t}"
        );
        assert!(t.contains(r#"switchyard_subscription_oldest_unacked_seconds{namespace="shop",messagebroker="bus",env="prd",topic="orders",subscription="audit",backend="Redis"} 1.5"#), "{t}");

        // A subscription that drained loses its age, and keeps its backlog.
        metrics
            .flow
            .record("shop", "bus", &figures(&[("billing", 6), ("audit", 0)]));
        let t = text(&metrics);
        assert!(!t.contains(r#"oldest_unacked_seconds{namespace="shop",messagebroker="bus",env="prd",topic="orders",subscription="audit""#), "{t}");
        assert!(
            t.contains(r#"subscription="audit",backend="Redis"} 0"#),
            "{t}"
        );

        // A subscription that left the spec loses its series.
        metrics
            .flow
            .record("shop", "bus", &figures(&[("billing", 4)]));
        let t = text(&metrics);
        assert!(
            t.contains(r#"subscription="billing",backend="Redis"} 4"#),
            "{t}"
        );
        assert!(!t.contains(r#"subscription="audit""#), "{t}");

        // Off: no per-subscription series, the rest stays.
        metrics.flow.per_subscription(false);
        metrics
            .flow
            .record("shop", "bus", &figures(&[("billing", 4)]));
        let t = text(&metrics);
        assert!(
            !t.contains("switchyard_subscription_backlog_messages{"),
            "{t}"
        );
        assert!(t.contains("switchyard_env_ready{"), "{t}");

        // Deleted: nothing of it is left.
        metrics.flow.forget("shop", "bus");
        let t = text(&metrics);
        assert!(!t.contains(r#"messagebroker="bus""#), "{t}");
    }
}
