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
//! subscription's dead-letter destination; a `reject` sends it there at once (or drops it when
//! the subscription has none). Each broker's data plane lives in its folder under
//! `src/brokers/<broker>/` and implements [`Transport`].

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub mod binding;
#[cfg(feature = "secret-watch")]
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
        self.attributes()
            .map(|(k, v)| (format!("{prefix}{k}"), v.to_string()))
            .chain(self.headers.iter().map(|(k, v)| (k.clone(), v.clone())))
            .collect()
    }

    /// The CloudEvents context attributes as sent, by their names without a prefix:
    /// `specversion`, `id`, `source`, `type` and, when set, `time`.
    pub fn attributes(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("specversion", "1.0"),
            ("id", self.id.as_str()),
            ("source", self.source.as_str()),
            ("type", self.type_.as_str()),
        ]
        .into_iter()
        .chain(self.time.as_deref().map(|t| ("time", t)))
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

/// The data plane of a binding's broker: the one place a binding `type` meets its transport.
pub async fn transport(binding: &Binding) -> Result<Arc<dyn Transport>, ClientError> {
    use crate::brokers::{kafka, nats, pubsub, rabbitmq, redis, sqs};
    match binding.broker_type() {
        kafka::data::BINDING_TYPE => kafka::data::transport(binding).await,
        redis::data::BINDING_TYPE => Ok(Arc::new(redis::data::transport(binding).await?)),
        rabbitmq::data::BINDING_TYPE => rabbitmq::data::transport(binding).await,
        pubsub::data::BINDING_TYPE => pubsub::data::transport(binding).await,
        sqs::data::BINDING_TYPE => sqs::data::transport(binding).await,
        nats::data::BINDING_TYPE => Ok(Arc::new(nats::data::transport(binding).await?)),
        other => Err(ClientError::Unsupported(other.to_string())),
    }
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
    /// Give up on it now: move it to the subscription's dead-letter destination (or drop it
    /// when the subscription has none), whatever attempts are left.
    async fn reject(self: Box<Self>) -> Result<(), ClientError>;
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

    /// Dead-letter it now, whatever attempts are left: it goes to the subscription's
    /// dead-letter destination as it would after `maxDeliveryAttempts`, or is dropped when the
    /// subscription has none. It is not delivered on the subscription again. When this fails,
    /// the message is delivered again, as after a `nack` or a crash.
    pub async fn reject(self) -> Result<(), ClientError> {
        self.settle.reject().await
    }
}

/// How often a binding directory is re-read for changes. The kubelet updates a projected
/// Secret atomically (the `..data` link), typically a minute or so after the Secret changed.
pub const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);

/// One side of a binding: its entries and the transport that speaks to its broker.
#[derive(Clone)]
struct Side {
    binding: Arc<Binding>,
    transport: Arc<dyn Transport>,
}

impl Side {
    /// What identifies the side: its own entries (a side that is current in one binding and
    /// `previous.` in the next is the same side, with the same transport).
    fn key(&self) -> &BTreeMap<String, String> {
        self.binding.own_entries()
    }
}

/// What a client uses now: the current side, and during a swap the previous side, still
/// drained by subscribers.
#[derive(Clone)]
struct Sides {
    current: Side,
    previous: Option<Side>,
}

impl Sides {
    /// The sides of `binding`, reusing the transports of `reuse` for sides it already has.
    async fn build(binding: Binding, reuse: Option<&Sides>) -> Result<Sides, ClientError> {
        let known = |b: &Binding| {
            reuse.and_then(|r| {
                std::iter::once(&r.current)
                    .chain(&r.previous)
                    .find(|s| s.binding.own_entries() == b.own_entries())
                    .map(|s| s.transport.clone())
            })
        };
        let side = |b: Binding| async {
            let transport = match known(&b) {
                Some(t) => t,
                None => transport(&b).await?,
            };
            Ok::<_, ClientError>(Side {
                binding: Arc::new(b),
                transport,
            })
        };
        let previous = match binding.previous() {
            Some(p) => Some(side(p).await?),
            None => None,
        };
        Ok(Sides {
            current: side(binding).await?,
            previous,
        })
    }
}

/// A client for one binding. Built from a directory or a Secret, it follows the binding:
/// when the operator flips it to a new broker, publishers move to the new side and
/// subscribers drain the previous one until it is retired, without a restart.
#[derive(Clone)]
pub struct Client {
    sides: tokio::sync::watch::Receiver<Arc<Sides>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("type", &self.sides.borrow().current.binding.broker_type())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Read a binding as the Service Binding spec projects it into a pod: one file per key in
    /// `dir` (`$SERVICE_BINDING_ROOT/<name>`), and follow its changes (re-read every
    /// [`FOLLOW_INTERVAL`]).
    pub async fn from_binding(dir: impl AsRef<Path>) -> Result<Client, ClientError> {
        let dir = dir.as_ref().to_path_buf();
        let (client, tx) = Client::following(Binding::from_dir(&dir)?).await?;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(FOLLOW_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = tx.closed() => return,
                }
                // A half-written or briefly missing directory is read again on the next tick.
                match Binding::from_dir(&dir) {
                    Ok(b) => update(&tx, b).await,
                    Err(e) => {
                        tracing::debug!(error = %e, "binding not readable; keeping the last one")
                    }
                }
            }
        });
        Ok(client)
    }

    /// Read a binding Secret through the Kubernetes API (for use outside the cluster), and
    /// follow its changes with a watch.
    #[cfg(feature = "secret-watch")]
    pub async fn from_secret(
        kube: &kube::Client,
        namespace: &str,
        name: &str,
    ) -> Result<Client, ClientError> {
        use futures::StreamExt;
        use kube::runtime::{WatchStreamExt, watcher};

        let (client, tx) =
            Client::following(Binding::from_secret(kube, namespace, name).await?).await?;
        let api: kube::Api<k8s_openapi::api::core::v1::Secret> =
            kube::Api::namespaced(kube.clone(), namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        tokio::spawn(async move {
            let mut secrets =
                std::pin::pin!(watcher(api, config).default_backoff().applied_objects());
            loop {
                let next = tokio::select! {
                    n = secrets.next() => n,
                    () = tx.closed() => return,
                };
                match next {
                    Some(Ok(secret)) => {
                        match Binding::from_secret_data(secret.data.unwrap_or_default()) {
                            Ok(b) => update(&tx, b).await,
                            Err(e) => {
                                tracing::warn!(error = %e, "binding Secret not usable; keeping the last one")
                            }
                        }
                    }
                    Some(Err(e)) => tracing::debug!(error = %e, "binding watch interrupted"),
                    None => return,
                }
            }
        });
        Ok(client)
    }

    /// A client for a binding already read; it does not follow changes. During a swap (the
    /// binding carries `previous.` entries) publishers write to the new side only, and
    /// subscribers consume the previous side's subscription as well.
    pub async fn new(binding: Binding) -> Result<Client, ClientError> {
        Ok(Client::following(binding).await?.0)
    }

    async fn following(
        binding: Binding,
    ) -> Result<(Client, tokio::sync::watch::Sender<Arc<Sides>>), ClientError> {
        let sides = Sides::build(binding, None).await?;
        let (tx, rx) = tokio::sync::watch::channel(Arc::new(sides));
        Ok((Client { sides: rx }, tx))
    }

    /// Whether a swap's previous side is being drained.
    pub fn draining(&self) -> bool {
        self.sides.borrow().previous.is_some()
    }

    /// The binding this client uses now.
    pub fn binding(&self) -> Arc<Binding> {
        self.sides.borrow().current.binding.clone()
    }

    /// Wait until the binding has changed since this client (or this clone) last looked, and
    /// return the new one; `None` when the client does not follow its binding.
    pub async fn binding_changed(&mut self) -> Option<Arc<Binding>> {
        self.sides.changed().await.ok()?;
        Some(self.sides.borrow_and_update().current.binding.clone())
    }

    /// A publisher of a logical topic. It publishes to the binding's current side at each
    /// call.
    pub fn publisher(&self, topic: &str) -> Publisher {
        Publisher {
            topic: topic.to_string(),
            client: self.clone(),
        }
    }

    /// A subscriber of a logical topic's subscription. It receives from the current side and,
    /// during a swap, from the previous side too, until the operator retires it. Order across
    /// the sides is not kept.
    pub async fn subscriber(
        &self,
        topic: &str,
        subscription: &str,
    ) -> Result<Subscriber, ClientError> {
        let sides = self.sides.borrow().clone();
        // The current side must know the subscription now; later sides are taken as they come.
        let target = sides.current.binding.target(topic, subscription)?;
        let first = sides.current.transport.subscribe(&target).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let demand = Arc::new(tokio::sync::watch::Sender::new(0));
        let follow = Follow {
            topic: topic.to_string(),
            subscription: subscription.to_string(),
            tx,
            demand: demand.clone(),
            pumps: Vec::new(),
        };
        let task = tokio::spawn(follow.run(self.sides.clone(), first, sides.current.key().clone()));
        Ok(Subscriber {
            consumer: Box::new(Merged { rx, demand }),
            _task: AbortOnDrop(task),
        })
    }
}

/// Publish the sides of a new binding to every client and subscriber of it.
async fn update(tx: &tokio::sync::watch::Sender<Arc<Sides>>, binding: Binding) {
    let old = tx.borrow().clone();
    if *old.current.binding == binding {
        return;
    }
    match Sides::build(binding, Some(&old)).await {
        Ok(sides) => {
            tracing::info!(
                to = sides.current.binding.broker_type(),
                draining = sides.previous.is_some(),
                "the binding changed"
            );
            tx.send_replace(Arc::new(sides));
        }
        // The new broker may not answer yet: the next change (or tick) tries again.
        Err(e) => {
            tracing::warn!(error = %e, "the binding changed, but its broker is not usable yet")
        }
    }
}

/// One consumer of one side, feeding the subscriber's channel.
struct Pump {
    side: BTreeMap<String, String>,
    target: SubscriptionTarget,
    /// Whether the side is the current one: only its errors reach the app. The previous
    /// side's consumer fails once the operator retires it, which ends the drain.
    current: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

/// Keeps a subscriber's consumers in step with the binding.
struct Follow {
    topic: String,
    subscription: String,
    tx: tokio::sync::mpsc::Sender<Result<Delivery, ClientError>>,
    /// Calls of the app waiting for a delivery that no consumer has answered yet.
    demand: Arc<tokio::sync::watch::Sender<usize>>,
    pumps: Vec<Pump>,
}

impl Follow {
    async fn run(
        mut self,
        mut sides: tokio::sync::watch::Receiver<Arc<Sides>>,
        first: Box<dyn Consumer>,
        first_side: BTreeMap<String, String>,
    ) {
        let s = sides.borrow_and_update().clone();
        let target = s.current.binding.target(&self.topic, &self.subscription);
        if let Ok(target) = target {
            self.start(first_side, target, first, true);
        }
        let mut retry = tokio::time::interval(Duration::from_secs(1));
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // False once the binding can no longer change (a client that does not follow).
        let mut follows = true;
        loop {
            let s = sides.borrow_and_update().clone();
            let complete = self.align(&s).await;
            tokio::select! {
                changed = sides.changed(), if follows => follows = changed.is_ok(),
                _ = retry.tick(), if !complete => {}
                () = self.tx.closed() => break,
            }
        }
        for p in self.pumps {
            p.task.abort();
        }
    }

    /// Run one consumer per side of `sides` that serves the subscription, and stop those of
    /// sides no longer in the binding. Returns false when a wanted consumer could not start.
    async fn align(&mut self, sides: &Sides) -> bool {
        let wanted: Vec<(&Side, bool)> = std::iter::once((&sides.current, true))
            .chain(sides.previous.iter().map(|p| (p, false)))
            .collect();
        // First say which side is current, before any await: the previous side's consumer
        // may fail any moment now (the operator retires it), and that is not the app's error.
        for p in &self.pumps {
            let current = wanted
                .iter()
                .any(|(side, current)| *current && side.key() == &p.side);
            p.current
                .store(current, std::sync::atomic::Ordering::Relaxed);
        }
        let mut complete = true;
        let mut keep = Vec::new();
        for (side, current) in &wanted {
            let target = match side.binding.target(&self.topic, &self.subscription) {
                Ok(t) => t,
                // The subscription is new with this side (or gone from it): nothing to read.
                Err(_) => continue,
            };
            keep.push((side.key().clone(), target.clone()));
            if self
                .pumps
                .iter()
                .any(|p| &p.side == side.key() && p.target == target && !p.task.is_finished())
            {
                continue;
            }
            match side.transport.subscribe(&target).await {
                Ok(consumer) => {
                    tracing::debug!(
                        broker = side.binding.broker_type(),
                        current,
                        subscription = %target.physical_subscription,
                        "consuming"
                    );
                    self.start(side.key().clone(), target, consumer, *current);
                }
                Err(e) => {
                    complete = false;
                    if *current {
                        tracing::warn!(error = %e, "subscribing on the current side failed; retrying");
                    }
                }
            }
        }
        // Ended or unwanted consumers go (a finished one is started again above next time).
        self.pumps.retain(|p| {
            let wanted = keep.iter().any(|(s, t)| s == &p.side && t == &p.target);
            if !wanted {
                tracing::debug!(subscription = %p.target.physical_subscription, "no longer in the binding");
                p.task.abort();
            }
            wanted && !p.task.is_finished()
        });
        complete && self.pumps.len() == keep.len()
    }

    fn start(
        &mut self,
        side: BTreeMap<String, String>,
        target: SubscriptionTarget,
        consumer: Box<dyn Consumer>,
        current: bool,
    ) {
        let current = Arc::new(std::sync::atomic::AtomicBool::new(current));
        let span = tracing::debug_span!(
            "consumer",
            broker = side.get("type").map(String::as_str).unwrap_or_default()
        );
        let task = tokio::spawn(tracing::Instrument::instrument(
            pump(
                consumer,
                self.tx.clone(),
                self.demand.clone(),
                current.clone(),
            ),
            span,
        ));
        self.pumps.push(Pump {
            side,
            target,
            current,
            task,
        });
    }
}

/// Feed `consumer`'s deliveries to the subscriber while the app waits for one: a subscriber
/// the app does not read holds no message (a competing consumer gets it). During a swap both
/// sides receive for one call, and the delivery that loses waits in the channel for the next.
async fn pump(
    mut consumer: Box<dyn Consumer>,
    tx: tokio::sync::mpsc::Sender<Result<Delivery, ClientError>>,
    demand: Arc<tokio::sync::watch::Sender<usize>>,
    current: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut waiting = demand.subscribe();
    loop {
        let wanted = tokio::select! {
            w = waiting.wait_for(|n| *n > 0) => w.is_ok(),
            () = tx.closed() => false,
        };
        if !wanted {
            return;
        }
        let next = tokio::select! {
            n = consumer.next() => n,
            () = tx.closed() => return,
        };
        if let Err(e) = &next
            && !current.load(std::sync::atomic::Ordering::Relaxed)
        {
            tracing::debug!(error = %e, "the previous side stopped delivering");
            return;
        }
        if let Ok(d) = &next {
            tracing::trace!(id = %d.message.id, attempt = d.attempt, "delivered");
        }
        // This call is answered: no consumer fetches again until the app asks again.
        demand.send_modify(|n| *n = n.saturating_sub(1));
        let failed = next.is_err();
        if tx.send(next).await.is_err() || failed {
            return;
        }
    }
}

/// Aborts the task when the owner goes.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The deliveries of several consumers, as one.
struct Merged {
    rx: tokio::sync::mpsc::Receiver<Result<Delivery, ClientError>>,
    demand: Arc<tokio::sync::watch::Sender<usize>>,
}

/// One call waiting for a delivery; a call cancelled before any consumer answered it takes
/// its request back.
struct Waiting<'a> {
    demand: &'a tokio::sync::watch::Sender<usize>,
    answered: bool,
}

impl<'a> Waiting<'a> {
    fn new(demand: &'a tokio::sync::watch::Sender<usize>) -> Self {
        demand.send_modify(|n| *n += 1);
        Waiting {
            demand,
            answered: false,
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.demand.send_modify(|n| *n = n.saturating_sub(1));
        }
    }
}

#[async_trait]
impl Consumer for Merged {
    async fn next(&mut self) -> Result<Delivery, ClientError> {
        // One already received (the losing side of a swap, or a cancelled call) comes first.
        if let Ok(d) = self.rx.try_recv() {
            return d;
        }
        let mut waiting = Waiting::new(&self.demand);
        let next = self.rx.recv().await;
        // The consumer that answered took the request back.
        waiting.answered = next.is_some();
        next.unwrap_or(Err(ClientError::Closed))
    }
}

/// Publishes to one logical topic.
#[derive(Clone, Debug)]
pub struct Publisher {
    topic: String,
    client: Client,
}

impl Publisher {
    /// Publish to the binding's current side; returns once the broker confirmed it.
    pub async fn publish(&self, mut message: Message) -> Result<(), ClientError> {
        let current = self.client.sides.borrow().current.clone();
        let physical = current.binding.topic(&self.topic)?;
        if message.time.is_none() {
            message.time = Some(jiff::Timestamp::now().to_string());
        }
        current.transport.publish(&physical, &message).await
    }
}

/// Receives from one subscription.
pub struct Subscriber {
    consumer: Box<dyn Consumer>,
    _task: AbortOnDrop,
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
