//! The relay's own metrics, served on its `/metrics`. Labels are the pub/sub, topic and
//! subscription names the app uses, and outcomes: never payloads or binding entries.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// A publish's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PublishLabels {
    /// Pub/sub (binding) name.
    pub pubsub: String,
    /// Logical topic.
    pub topic: String,
    /// `ok` or `error`.
    pub outcome: String,
}

/// A subscription's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubscriptionLabels {
    /// Pub/sub (binding) name.
    pub pubsub: String,
    /// Logical topic.
    pub topic: String,
    /// MessageBroker subscription.
    pub subscription: String,
}

/// A delivery's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// Pub/sub (binding) name.
    pub pubsub: String,
    /// Logical topic.
    pub topic: String,
    /// MessageBroker subscription.
    pub subscription: String,
    /// The app's answer: `success`, `retry`, `drop`; `unreachable` when the POST failed.
    pub answer: String,
}

/// Every series of the relay.
#[derive(Clone)]
pub struct RelayMetrics {
    /// Publishes by outcome.
    pub published: Family<PublishLabels, Counter>,
    /// Publish latency, request to broker confirmation.
    pub publish_seconds: Family<PublishLabels, Histogram, fn() -> Histogram>,
    /// Deliveries by the app's answer.
    pub deliveries: Family<DeliveryLabels, Counter>,
    /// How long the app took to answer a delivery.
    pub delivery_seconds: Family<SubscriptionLabels, Histogram, fn() -> Histogram>,
    /// Deliveries the app holds now.
    pub in_flight: Family<SubscriptionLabels, Gauge>,
    /// 1 while the app's health check passes (or none is configured).
    pub app_healthy: Gauge,
}

fn latency() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

impl RelayMetrics {
    /// The series, registered under `switchyard_relay_`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = RelayMetrics {
            published: Family::default(),
            publish_seconds: Family::new_with_constructor(latency),
            deliveries: Family::default(),
            delivery_seconds: Family::new_with_constructor(latency),
            in_flight: Family::default(),
            app_healthy: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("switchyard_relay");
        r.register(
            "published",
            "Messages published by the app",
            m.published.clone(),
        );
        r.register(
            "publish_duration_seconds",
            "From the app's publish request to the broker's confirmation",
            m.publish_seconds.clone(),
        );
        r.register(
            "deliveries",
            "Deliveries to the app, by its answer",
            m.deliveries.clone(),
        );
        r.register(
            "delivery_duration_seconds",
            "How long the app took to answer a delivery",
            m.delivery_seconds.clone(),
        );
        r.register(
            "in_flight",
            "Deliveries the app holds unanswered",
            m.in_flight.clone(),
        );
        r.register(
            "app_healthy",
            "1 while the app's health check passes",
            m.app_healthy.clone(),
        );
        m
    }
}
