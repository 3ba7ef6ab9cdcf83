//! The application side of Switchyard: one messaging API over every broker.
//!
//! An app reads its binding (the Secret Switchyard writes per env, projected into the pod as
//! one file per key) and speaks logical names only:
//!
//! ```no_run
//! # async fn run() -> Result<(), switchyard::client::ClientError> {
//! use switchyard::client::{Client, Message};
//! let client = Client::from_binding("/bindings/orders-bus").await?;
//! client.publisher("order-created").publish(Message::new(b"{\"id\":1}".to_vec())).await?;
//! let mut sub = client.subscriber("order-created", "billing").await?;
//! let delivery = sub.next().await?;
//! println!("{}", String::from_utf8_lossy(&delivery.message.payload));
//! delivery.ack().await?;
//! # Ok(()) }
//! ```
//!
//! Delivery is at least once on every broker: a message is redelivered until it is acked, a
//! `nack` redelivers it, and after the subscription's `maxDeliveryAttempts` it goes to the
//! subscription's dead-letter destination. Each broker's data plane lives in its folder under
//! `src/brokers/<broker>/` and implements [`Transport`].

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;

pub mod binding;
pub mod cli;

pub use binding::Binding;

/// What can go wrong talking to a broker through the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The binding cannot be read or lacks an entry.
    #[error("binding: {0}")]
    Binding(String),
    /// The binding names no such topic or subscription.
    #[error("the binding has no {0}")]
    UnknownName(String),
    /// The binding's broker type has no client transport.
    #[error("no client for broker type {0:?}")]
    Unsupported(String),
    /// The broker refused or failed a request.
    #[error("{broker}: {message}")]
    Broker {
        /// Broker type.
        broker: &'static str,
        /// What happened.
        message: String,
    },
    /// The subscription ended (its consumer was closed).
    #[error("the subscription is closed")]
    Closed,
}

impl ClientError {
    /// A broker error.
    pub fn broker(broker: &'static str, message: impl std::fmt::Display) -> Self {
        ClientError::Broker {
            broker,
            message: message.to_string(),
        }
    }
}

/// One message: payload bytes, an optional key (the ordering key on `ordered` topics),
/// headers, and the CloudEvents context attributes (`id`, `source`, `type`, `time`), carried
/// in each broker's binary-mode header convention so other CloudEvents tools read them.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Message {
    /// The payload.
    pub payload: Vec<u8>,
    /// Ordering / partitioning key.
    pub key: Option<String>,
    /// Application headers (names without the CloudEvents prefix).
    pub headers: BTreeMap<String, String>,
    /// CloudEvents `id`; a new UUID when built with [`Message::new`].
    pub id: String,
    /// CloudEvents `source`.
    pub source: String,
    /// CloudEvents `type`.
    pub type_: String,
    /// CloudEvents `time` (RFC 3339), set at publish when empty.
    pub time: Option<String>,
}

impl Message {
    /// A message with a fresh id, source `switchyard`, type `switchyard.message`.
    pub fn new(payload: impl Into<Vec<u8>>) -> Self {
        Message {
            payload: payload.into(),
            key: None,
            headers: BTreeMap::new(),
            id: uuid::Uuid::new_v4().to_string(),
            source: "switchyard".into(),
            type_: "switchyard.message".into(),
            time: None,
        }
    }

    /// With a key.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// With a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// The headers as sent in binary mode: CloudEvents attributes under `prefix` (`ce_` on
    /// Kafka, Redis and SQS, `cloudEvents:` on AMQP), then the application headers.
    pub fn wire_headers(&self, prefix: &str) -> Vec<(String, String)> {
        let mut out = vec![
            (format!("{prefix}specversion"), "1.0".to_string()),
            (format!("{prefix}id"), self.id.clone()),
            (format!("{prefix}source"), self.source.clone()),
            (format!("{prefix}type"), self.type_.clone()),
        ];
        if let Some(t) = &self.time {
            out.push((format!("{prefix}time"), t.clone()));
        }
        out.extend(self.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
        out
    }

    /// The message from headers as received: CloudEvents attributes under `prefix` are taken
    /// out, everything else stays an application header.
    pub fn from_wire(
        payload: Vec<u8>,
        key: Option<String>,
        headers: impl IntoIterator<Item = (String, String)>,
        prefix: &str,
    ) -> Self {
        let mut m = Message {
            payload,
            key,
            ..Message::default()
        };
        for (k, v) in headers {
            match k.strip_prefix(prefix) {
                Some("id") => m.id = v,
                Some("source") => m.source = v,
                Some("type") => m.type_ = v,
                Some("time") => m.time = Some(v),
                Some("specversion") => {}
                _ => {
                    m.headers.insert(k, v);
                }
            }
        }
        m
    }
}

/// Where a subscription delivers: the physical names from the binding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriptionTarget {
    /// Logical topic.
    pub topic: String,
    /// Logical subscription.
    pub subscription: String,
    /// Physical topic (Kafka topic, Redis stream, RabbitMQ exchange, Pub/Sub topic, SNS topic).
    pub physical_topic: String,
    /// Physical subscription (Kafka consumer group, Redis group, queue, subscription).
    pub physical_subscription: String,
    /// Dead-letter destination, when the subscription has one.
    pub dead_letter: Option<String>,
    /// Deliveries before a message is dead-lettered.
    pub max_delivery_attempts: Option<u32>,
}

/// One broker's data plane.
#[async_trait]
pub trait Transport: Send + Sync {
    /// Publish and return once the broker confirmed it.
    async fn publish(&self, physical_topic: &str, message: &Message) -> Result<(), ClientError>;
    /// Start consuming a subscription.
    async fn subscribe(
        &self,
        target: &SubscriptionTarget,
    ) -> Result<Box<dyn Consumer>, ClientError>;
}

/// An open subscription of one transport.
#[async_trait]
pub trait Consumer: Send {
    /// The next delivery (waits until there is one).
    async fn next(&mut self) -> Result<Delivery, ClientError>;
}

/// Settles one delivery.
#[async_trait]
pub trait Settle: Send + Sync {
    /// Done with it: never deliver it again.
    async fn ack(self: Box<Self>) -> Result<(), ClientError>;
    /// Not done: deliver it again (or dead-letter it once attempts are used up).
    async fn nack(self: Box<Self>) -> Result<(), ClientError>;
}

/// One delivered message.
pub struct Delivery {
    /// The message.
    pub message: Message,
    /// How many times it has been delivered, this one included (1 on first delivery).
    pub attempt: u32,
    settle: Box<dyn Settle>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("message", &self.message)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// A delivery settled through `settle`.
    pub fn new(message: Message, attempt: u32, settle: Box<dyn Settle>) -> Self {
        Delivery {
            message,
            attempt,
            settle,
        }
    }

    /// Acknowledge.
    pub async fn ack(self) -> Result<(), ClientError> {
        self.settle.ack().await
    }

    /// Ask for redelivery.
    pub async fn nack(self) -> Result<(), ClientError> {
        self.settle.nack().await
    }
}

/// A client for one binding.
#[derive(Clone)]
pub struct Client {
    binding: Arc<Binding>,
    transport: Arc<dyn Transport>,
    /// During a swap: the previous side, still drained by subscribers.
    previous: Option<(Arc<Binding>, Arc<dyn Transport>)>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("type", &self.binding.broker_type())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Read a binding as the Service Binding spec projects it into a pod: one file per key in
    /// `dir` (`$SERVICE_BINDING_ROOT/<name>`).
    pub async fn from_binding(dir: impl AsRef<Path>) -> Result<Client, ClientError> {
        Client::new(Binding::from_dir(dir.as_ref())?).await
    }

    /// Read a binding Secret through the Kubernetes API (for use outside the cluster).
    pub async fn from_secret(
        kube: &kube::Client,
        namespace: &str,
        name: &str,
    ) -> Result<Client, ClientError> {
        Client::new(Binding::from_secret(kube, namespace, name).await?).await
    }

    /// A client for a binding already read. During a swap (the binding carries `previous.`
    /// entries) publishers write to the new side only, and subscribers consume the previous
    /// side's subscription as well until the operator retires it.
    pub async fn new(binding: Binding) -> Result<Client, ClientError> {
        let transport = crate::brokers::transport(&binding).await?;
        let previous = match binding.previous() {
            Some(p) => {
                let t = crate::brokers::transport(&p).await?;
                Some((Arc::new(p), t))
            }
            None => None,
        };
        Ok(Client {
            binding: Arc::new(binding),
            transport,
            previous,
        })
    }

    /// Whether a swap's previous side is being drained.
    pub fn draining(&self) -> bool {
        self.previous.is_some()
    }

    /// The binding this client uses.
    pub fn binding(&self) -> &Binding {
        &self.binding
    }

    /// A publisher of a logical topic.
    pub fn publisher(&self, topic: &str) -> Publisher {
        Publisher {
            topic: topic.to_string(),
            client: self.clone(),
        }
    }

    /// A subscriber of a logical topic's subscription.
    pub async fn subscriber(
        &self,
        topic: &str,
        subscription: &str,
    ) -> Result<Subscriber, ClientError> {
        let target = self.binding.target(topic, subscription)?;
        let consumer = self.transport.subscribe(&target).await?;
        let Some((binding, transport)) = &self.previous else {
            return Ok(Subscriber { consumer });
        };
        // Both sides at once: each consumer feeds one channel from its own task, so a
        // delivery is never lost to a cancelled receive. Order across the sides is not kept.
        let old = match binding.target(topic, subscription) {
            Ok(t) => Some(transport.subscribe(&t).await?),
            // The subscription is new with this side: nothing to drain.
            Err(ClientError::UnknownName(_)) => None,
            Err(e) => return Err(e),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(pump(consumer, tx.clone(), true));
        if let Some(old) = old {
            // Once the operator retires the old side its consumer fails: that ends the drain,
            // it is not an error of the subscription.
            tokio::spawn(pump(old, tx, false));
        }
        Ok(Subscriber {
            consumer: Box::new(Merged { rx }),
        })
    }
}

async fn pump(
    mut consumer: Box<dyn Consumer>,
    tx: tokio::sync::mpsc::Sender<Result<Delivery, ClientError>>,
    forward_errors: bool,
) {
    loop {
        let next = consumer.next().await;
        if let Err(e) = &next
            && !forward_errors
        {
            tracing::debug!(error = %e, "the previous side stopped delivering");
            return;
        }
        let failed = next.is_err();
        if tx.send(next).await.is_err() || failed {
            return;
        }
    }
}

/// The deliveries of several consumers, as one.
struct Merged {
    rx: tokio::sync::mpsc::Receiver<Result<Delivery, ClientError>>,
}

#[async_trait]
impl Consumer for Merged {
    async fn next(&mut self) -> Result<Delivery, ClientError> {
        self.rx.recv().await.unwrap_or(Err(ClientError::Closed))
    }
}

/// Publishes to one logical topic.
#[derive(Clone, Debug)]
pub struct Publisher {
    topic: String,
    client: Client,
}

impl Publisher {
    /// Publish; returns once the broker confirmed it.
    pub async fn publish(&self, mut message: Message) -> Result<(), ClientError> {
        let physical = self.client.binding.topic(&self.topic)?;
        if message.time.is_none() {
            message.time = Some(jiff::Timestamp::now().to_string());
        }
        self.client.transport.publish(&physical, &message).await
    }
}

/// Receives from one subscription.
pub struct Subscriber {
    consumer: Box<dyn Consumer>,
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber").finish_non_exhaustive()
    }
}

impl Subscriber {
    /// The next delivery.
    pub async fn next(&mut self) -> Result<Delivery, ClientError> {
        self.consumer.next().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloudevents_attributes_round_trip_through_headers() {
        let m = Message::new(b"x".to_vec())
            .with_key("k")
            .with_header("trace", "1");
        let mut m = m;
        m.time = Some("2026-12-01T00:00:00Z".into());
        let wire = m.wire_headers("ce_");
        assert!(wire.contains(&("ce_specversion".into(), "1.0".into())));
        assert!(wire.contains(&("ce_id".into(), m.id.clone())));
        let back = Message::from_wire(m.payload.clone(), m.key.clone(), wire, "ce_");
        assert_eq!(back, m);
    }
}
