//! The client data plane on Kafka (rdkafka).
//!
//! - publish: one idempotent `FutureProducer` per transport (`acks=all`), key = message key,
//!   CloudEvents attributes as `ce_` headers; it returns once the delivery report confirms;
//! - consume: one `StreamConsumer` per subscriber in the subscription's consumer group
//!   (cooperative-sticky assignment, so competing subscribers split the partitions). It joins
//!   the group on its first `next`: until then it holds no partitions, as a Redis consumer
//!   holds no entries before its first read;
//! - at least once: auto-commit is off; each partition commits only up to its lowest unsettled
//!   offset (synchronously, on the ack that moves it, and again when the partition is revoked),
//!   so a crash or a rebalance redelivers from there;
//! - nack: Kafka cannot redeliver one record, so the consumer keeps nacked deliveries in memory
//!   and hands them out again (before new records) with the attempt counted; the attempt count
//!   lives only in memory and starts over after a crash;
//! - dead letters: Kafka has no broker-side delivery count, so past `maxDeliveryAttempts` the
//!   consumer publishes the record to the subscription's dead-letter topic with a
//!   `delivery-count` header and then settles it as acked. A `reject` takes the same path at
//!   once, with the deliveries so far as `delivery-count` (just settled when the subscription
//!   has no dead-letter topic); when the publish fails, the delivery is handed out again.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, FromClientConfigAndContext, RDKafkaLogLevel};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers as _, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::Notify;

use crate::client::{
    Binding, ClientError, Consumer, Delivery, Message, Settle, SubscriptionTarget, Transport,
};

/// The `type` entry of a binding this data plane serves.
pub const BINDING_TYPE: &str = "kafka";

const BROKER: &str = "kafka";
/// CloudEvents attribute prefix of Kafka headers (the CloudEvents Kafka binding).
const CE: &str = "ce_";
/// Bound on one publish: queueing in the producer plus the broker's confirmation.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

fn err(e: impl std::fmt::Display) -> ClientError {
    ClientError::broker(BROKER, e)
}

/// The Kafka transport of a binding.
pub struct KafkaTransport {
    /// Connection settings shared by the producer and every consumer.
    config: ClientConfig,
    producer: FutureProducer<LogContext>,
}

/// Build the transport from the binding's `bootstrap-servers`, `securityProtocol`,
/// `saslMechanism`, `username`, `password` and `ca.crt`.
pub async fn transport(binding: &Binding) -> Result<Arc<dyn Transport>, ClientError> {
    let config = connection(binding)?;
    let mut producer = config.clone();
    producer
        .set("acks", "all")
        .set("enable.idempotence", "true")
        // Java's key hashing, so keyed records land where Java producers put them.
        .set("partitioner", "murmur2_random")
        .set("message.timeout.ms", millis(PUBLISH_TIMEOUT));
    let producer = FutureProducer::from_config_and_context(&producer, LogContext)
        .map_err(|e| err(format!("creating the producer: {e}")))?;
    Ok(Arc::new(KafkaTransport { config, producer }))
}

fn millis(d: Duration) -> String {
    d.as_millis().to_string()
}

/// The settings every client of the binding shares. Either spelling of a key is read
/// (kebab-case and camelCase are both written).
fn connection(binding: &Binding) -> Result<ClientConfig, ClientError> {
    let either = |a: &str, b: &str| binding.get(a).or_else(|| binding.get(b));
    let servers = match either("bootstrap-servers", "bootstrapServers") {
        Some(s) => s,
        None => binding.require("bootstrap-servers")?,
    };
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", servers)
        .set("client.id", "switchyard")
        .set(
            "security.protocol",
            either("security-protocol", "securityProtocol").unwrap_or("PLAINTEXT"),
        )
        .set("allow.auto.create.topics", "false")
        .set_log_level(RDKafkaLogLevel::Warning);
    if let Some(pem) = either("ca.crt", "ssl.ca.pem") {
        c.set("ssl.ca.pem", pem);
    }
    if let Some(mechanism) = either("sasl-mechanism", "saslMechanism") {
        c.set("sasl.mechanism", mechanism)
            .set("sasl.username", binding.require("username")?)
            .set("sasl.password", binding.require("password")?);
    }
    Ok(c)
}

/// The headers of a record: CloudEvents attributes, application headers, then `extra`.
fn headers(message: &Message, extra: &[(&str, String)]) -> OwnedHeaders {
    let wire = message.wire_headers(CE);
    wire.iter()
        .map(|(k, v)| (k.as_str(), v))
        .chain(extra.iter().map(|(k, v)| (*k, v)))
        .fold(OwnedHeaders::new(), |h, (key, value)| {
            h.insert(Header {
                key,
                value: Some(value.as_bytes()),
            })
        })
}

/// Publish a delivery to the dead-letter topic `dlq` with its `delivery-count`: the deliveries
/// it had before it was given up.
async fn dead_letter(
    producer: &FutureProducer<LogContext>,
    dlq: &str,
    d: &Pending,
    count: u32,
) -> Result<(), ClientError> {
    send(
        producer,
        dlq,
        &d.message,
        &[("delivery-count", count.to_string())],
    )
    .await
}

/// Publish and wait for the broker's confirmation.
async fn send(
    producer: &FutureProducer<LogContext>,
    topic: &str,
    message: &Message,
    extra: &[(&str, String)],
) -> Result<(), ClientError> {
    let mut record = FutureRecord::<str, [u8]>::to(topic)
        .payload(&message.payload)
        .headers(headers(message, extra));
    if let Some(key) = &message.key {
        record = record.key(key.as_str());
    }
    producer
        .send(record, PUBLISH_TIMEOUT)
        .await
        .map(|_| ())
        .map_err(|(e, _)| err(format!("publishing to {topic}: {e}")))
}

fn message(record: &BorrowedMessage<'_>) -> Message {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let headers: Vec<(String, String)> = record
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_string(), h.value.map(text).unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    Message::from_wire(
        record.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        record.key().map(text),
        headers,
        CE,
    )
}

#[async_trait]
impl Transport for KafkaTransport {
    async fn publish(&self, topic: &str, message: &Message) -> Result<(), ClientError> {
        send(&self.producer, topic, message, &[]).await
    }

    async fn subscribe(
        &self,
        target: &SubscriptionTarget,
    ) -> Result<Box<dyn Consumer>, ClientError> {
        let mut config = self.config.clone();
        config
            .set("group.id", &target.physical_subscription)
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("partition.assignment.strategy", "cooperative-sticky");
        let state = Arc::new(Mutex::new(State::default()));
        let context = GroupContext {
            topic: target.physical_topic.clone(),
            state: state.clone(),
        };
        let consumer = StreamConsumer::from_config_and_context(&config, context)
            .map_err(|e| err(format!("creating the consumer: {e}")))?;
        Ok(Box::new(KafkaConsumer {
            shared: Arc::new(Shared {
                consumer,
                topic: target.physical_topic.clone(),
                state,
                wake: Notify::new(),
                producer: self.producer.clone(),
                dead_letter: target.dead_letter.clone(),
            }),
            max_attempts: target.max_delivery_attempts,
            joined: false,
        }))
    }
}

/// What a consumer tracks of its assignment.
#[derive(Default)]
struct State {
    /// The partitions assigned to this consumer.
    partitions: HashMap<i32, Partition>,
    /// Nacked deliveries to hand out again, oldest first.
    redeliver: VecDeque<Pending>,
    /// Counts assignments: a delivery settles only within the assignment it came from.
    epochs: u64,
}

/// One assigned partition.
struct Partition {
    epoch: u64,
    /// Delivered, not yet settled.
    unsettled: BTreeSet<i64>,
    /// One past the highest offset delivered.
    next: Option<i64>,
    /// The offset last committed by this consumer.
    committed: Option<i64>,
}

impl Partition {
    /// Where a restart must resume: the lowest unsettled offset, else past the last delivery;
    /// `None` when that was committed already.
    fn to_commit(&self) -> Option<i64> {
        let point = self.unsettled.first().copied().or(self.next)?;
        (self.committed < Some(point)).then_some(point)
    }
}

/// One delivery of one record.
#[derive(Clone)]
struct Pending {
    partition: i32,
    offset: i64,
    epoch: u64,
    attempt: u32,
    message: Message,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Commit the resume points of `partitions` that moved, and record them. Called with the state
/// locked, so commits of one consumer never overtake each other.
fn commit(
    consumer: &impl rdkafka::consumer::Consumer<GroupContext>,
    topic: &str,
    state: &mut State,
    partitions: impl IntoIterator<Item = i32>,
) -> Result<(), KafkaError> {
    let mut tpl = TopicPartitionList::new();
    let mut points = Vec::new();
    for p in partitions {
        if let Some(point) = state.partitions.get(&p).and_then(Partition::to_commit) {
            tpl.add_partition_offset(topic, p, Offset::Offset(point))?;
            points.push((p, point));
        }
    }
    if points.is_empty() {
        return Ok(());
    }
    consumer.commit(&tpl, CommitMode::Sync)?;
    for (p, point) in points {
        if let Some(part) = state.partitions.get_mut(&p) {
            part.committed = Some(point);
        }
    }
    Ok(())
}

/// A commit refused because the group is rebalancing: the settlement stays recorded and is
/// committed with the partition's next commit, at the latest when the partition is revoked.
fn is_rebalance(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::RebalanceInProgress
                | RDKafkaErrorCode::IllegalGeneration
                | RDKafkaErrorCode::UnknownMemberId
                | RDKafkaErrorCode::State
        )
    )
}

/// Routes librdkafka's log lines to `tracing`.
#[derive(Clone, Copy)]
struct LogContext;

fn log(level: RDKafkaLogLevel, fac: &str, line: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", "{fac} {line}"),
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", "{fac} {line}"),
        _ => tracing::debug!(target: "librdkafka", "{fac} {line}"),
    }
}

impl ClientContext for LogContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, line: &str) {
        log(level, fac, line);
    }
}

/// Keeps the consumer's [`State`] in step with its assignment.
struct GroupContext {
    topic: String,
    state: Arc<Mutex<State>>,
}

impl ClientContext for GroupContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, line: &str) {
        log(level, fac, line);
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let revoked: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        let mut state = lock(&self.state);
        // Settled offsets whose commit was refused (or raced the rebalance) go in now; what is
        // still unsettled is redelivered by the partition's next owner.
        if let Err(e) = commit(consumer, &self.topic, &mut state, revoked.iter().copied()) {
            tracing::info!(topic = %self.topic, error = %e, "commit on revocation failed");
        }
        for p in &revoked {
            state.partitions.remove(p);
        }
        state.redeliver.retain(|d| !revoked.contains(&d.partition));
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(tpl) = rebalance else {
            return;
        };
        let mut state = lock(&self.state);
        for e in tpl.elements() {
            if !state.partitions.contains_key(&e.partition()) {
                state.epochs += 1;
                let epoch = state.epochs;
                state.partitions.insert(
                    e.partition(),
                    Partition {
                        epoch,
                        unsettled: BTreeSet::new(),
                        next: None,
                        committed: None,
                    },
                );
            }
        }
    }
}

/// What a consumer shares with the deliveries it handed out.
struct Shared {
    consumer: StreamConsumer<GroupContext>,
    topic: String,
    state: Arc<Mutex<State>>,
    /// Woken by a nack, so a waiting `next` hands the delivery out again.
    wake: Notify,
    /// Publishes dead letters.
    producer: FutureProducer<LogContext>,
    /// The subscription's dead-letter topic.
    dead_letter: Option<String>,
}

impl Shared {
    /// Settle a delivery and commit its partition up to the lowest unsettled offset. A
    /// delivery from an earlier assignment of the partition settles nothing: its next owner
    /// redelivers it.
    async fn settle(self: &Arc<Self>, d: &Pending) -> Result<(), ClientError> {
        let shared = self.clone();
        let (partition, offset, epoch) = (d.partition, d.offset, d.epoch);
        let result = tokio::task::spawn_blocking(move || {
            let mut state = lock(&shared.state);
            match state.partitions.get_mut(&partition) {
                Some(p) if p.epoch == epoch => {
                    p.unsettled.remove(&offset);
                }
                _ => return Ok(()),
            }
            commit(&shared.consumer, &shared.topic, &mut state, [partition])
        })
        .await
        .map_err(err)?;
        match result {
            Err(e) if !is_rebalance(&e) => Err(err(format!("committing offsets: {e}"))),
            Err(e) => {
                tracing::debug!(topic = %self.topic, error = %e, "commit deferred by a rebalance");
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    }

    /// Commit what was settled but not committed (a commit a rebalance refused). Without it
    /// an idle partition would keep its last acks uncommitted, and count as holding messages.
    async fn commit_settled(self: &Arc<Self>) {
        let shared = self.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut state = lock(&shared.state);
            let partitions: Vec<i32> = state.partitions.keys().copied().collect();
            commit(&shared.consumer, &shared.topic, &mut state, partitions)
        })
        .await;
        if let Ok(Err(e)) = result {
            tracing::debug!(topic = %self.topic, error = %e, "deferred commit not taken yet");
        }
    }

    /// Hand a delivery out again (unless its partition was revoked meanwhile).
    fn requeue(&self, d: Pending, front: bool) {
        let mut state = lock(&self.state);
        if state
            .partitions
            .get(&d.partition)
            .is_some_and(|p| p.epoch == d.epoch)
        {
            if front {
                state.redeliver.push_front(d);
            } else {
                state.redeliver.push_back(d);
            }
        }
        drop(state);
        self.wake.notify_one();
    }
}

/// How long a consumer waits idle before committing settlements a rebalance deferred.
const COMMIT_RETRY: Duration = Duration::from_secs(1);

struct KafkaConsumer {
    shared: Arc<Shared>,
    max_attempts: Option<u32>,
    /// Whether this consumer has joined the group (on its first `next`).
    joined: bool,
}

impl KafkaConsumer {
    fn delivery(&self, d: Pending) -> Delivery {
        Delivery::new(
            d.message.clone(),
            d.attempt,
            Box::new(KafkaSettle {
                shared: self.shared.clone(),
                delivery: d,
            }),
        )
    }

    /// Track a record just received; `None` when its partition is not (or no longer) ours.
    fn track(&self, record: &BorrowedMessage<'_>) -> Option<Pending> {
        let mut state = lock(&self.shared.state);
        let p = state.partitions.get_mut(&record.partition())?;
        p.unsettled.insert(record.offset());
        p.next = p.next.max(Some(record.offset() + 1));
        Some(Pending {
            partition: record.partition(),
            offset: record.offset(),
            epoch: p.epoch,
            attempt: 1,
            message: message(record),
        })
    }
}

#[async_trait]
impl Consumer for KafkaConsumer {
    async fn next(&mut self) -> Result<Delivery, ClientError> {
        if !self.joined {
            self.shared
                .consumer
                .subscribe(&[&self.shared.topic])
                .map_err(|e| err(format!("subscribing to {}: {e}", self.shared.topic)))?;
            self.joined = true;
        }
        loop {
            let again = lock(&self.shared.state).redeliver.pop_front();
            if let Some(d) = again {
                if let (Some(max), Some(dlq)) = (self.max_attempts, &self.shared.dead_letter)
                    && d.attempt > max
                {
                    if let Err(e) = dead_letter(&self.shared.producer, dlq, &d, d.attempt - 1).await
                    {
                        self.shared.requeue(d, true);
                        return Err(e);
                    }
                    self.shared.settle(&d).await?;
                    continue;
                }
                return Ok(self.delivery(d));
            }
            let received = tokio::select! {
                r = self.shared.consumer.recv() => match r {
                    Ok(record) => self.track(&record),
                    Err(e) => return Err(err(format!("consuming {}: {e}", self.shared.topic))),
                },
                () = self.shared.wake.notified() => None,
                () = tokio::time::sleep(COMMIT_RETRY) => {
                    self.shared.commit_settled().await;
                    None
                }
            };
            if let Some(d) = received {
                return Ok(self.delivery(d));
            }
        }
    }
}

struct KafkaSettle {
    shared: Arc<Shared>,
    delivery: Pending,
}

#[async_trait]
impl Settle for KafkaSettle {
    async fn ack(self: Box<Self>) -> Result<(), ClientError> {
        self.shared.settle(&self.delivery).await
    }

    async fn nack(self: Box<Self>) -> Result<(), ClientError> {
        let mut d = self.delivery;
        d.attempt = d.attempt.saturating_add(1);
        self.shared.requeue(d, false);
        Ok(())
    }

    async fn reject(self: Box<Self>) -> Result<(), ClientError> {
        let d = &self.delivery;
        if let Some(dlq) = &self.shared.dead_letter
            && let Err(e) = dead_letter(&self.shared.producer, dlq, d, d.attempt).await
        {
            // Not dead-lettered: hand it out again, as a nack would.
            let mut d = self.delivery;
            d.attempt = d.attempt.saturating_add(1);
            self.shared.requeue(d, false);
            return Err(e);
        }
        self.shared.settle(d).await
    }
}
