//! Prometheus metrics. Labels carry categories, backends and outcomes — never names of Secrets
//! or their values.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Label set for errors.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// Error category (see `Error::category`).
    pub category: String,
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
    /// Pooled broker clients.
    pub pooled_clients: Gauge,
    /// Whether this instance leads (1) or waits (0).
    pub leader: Gauge,
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
            pooled_clients: Gauge::default(),
            leader: Gauge::default(),
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
            "pooled_clients",
            "Broker clients in the pool",
            self.pooled_clients.clone(),
        );
        r.register(
            "leader",
            "1 when this instance holds the leader lease",
            self.leader.clone(),
        );
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
