//! The client data plane on Google Cloud Pub/Sub (the `google-cloud-pubsub` publisher and
//! subscriber clients, over gRPC).
//!
//! - publish: one batching `Publisher` per topic, all on one connection, returning once
//!   Pub/Sub answered with the message id. The payload is the message data, CloudEvents
//!   attributes are `ce_` message attributes, and the key is both `ce_partitionkey` (the
//!   CloudEvents partitioning extension) and the ordering key. The binding does not say which
//!   topics are ordered, but an ordering key orders delivery only on subscriptions with message
//!   ordering enabled, which the operator enables exactly on `ordered` topics. A failed publish
//!   resumes its ordering key, so the next one is tried afresh;
//! - consume: one streaming pull per subscriber on the subscription from the binding, opened on
//!   its first `next` (a subscriber that never reads holds no messages). Pub/Sub leases it at
//!   most [`MAX_OUTSTANDING`] unsettled messages (the emulator ignores that limit), and the
//!   client extends their ack deadline while the app holds them (up to an hour). What the
//!   stream received is pooled in the consumer; a receive still running when `next` is dropped
//!   is kept for the next call. When the consumer goes away, the pool is handed back
//!   (ModifyAckDeadline 0) after the stream is closed, so other subscribers get it at once.
//!   (The emulator goes on treating a closed stream as open, as it does for the official
//!   clients: what it handed or still hands to one comes back only after the stream's ack
//!   deadline, and may be handed to it again each time.) Attributes under `ce-` (the prefix
//!   of the Pub/Sub CloudEvents binding) are read as CloudEvents attributes when there are no
//!   `ce_` ones;
//! - attempt: Pub/Sub's `delivery_attempt`, which it sets only on subscriptions with a
//!   dead-letter policy. Elsewhere the transport counts deliveries itself, best effort: in
//!   memory, across the subscribers of one subscription in this process, forgotten on ack, and
//!   starting over after a restart or on another process;
//! - ack: Acknowledge; nack: ModifyAckDeadline 0, so the next pull of any subscriber redelivers
//!   it; a dropped delivery is nacked. The client sends both in batches (every 100 ms) and
//!   Pub/Sub answers them only on exactly-once subscriptions, where `ack` and `nack` wait for
//!   that answer; elsewhere they return once queued. A message of a subscriber that died comes
//!   back after the stream's ack deadline, [`STREAM_ACK_DEADLINE`];
//! - dead letters: the subscription's dead-letter policy, set by the operator; Pub/Sub forwards
//!   a message delivered `maxDeliveryAttempts` times (at least 5) to the dead-letter topic
//!   instead of delivering it again (on Google Cloud that count is best effort, as Pub/Sub
//!   documents). Competing consumers are subscribers of one subscription. Pub/Sub has no call
//!   to dead-letter one message, so a `reject` forwards it itself as Pub/Sub would: it
//!   publishes the message's data, attributes (CloudEvents ones included) and ordering key to
//!   the dead-letter topic, with the `CloudPubSubDeadLetterSource*` attributes Pub/Sub adds,
//!   and acks it once the publish is confirmed (a plain ack when the subscription has no
//!   dead-letter topic). When the publish fails, the message is nacked.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt as _;
use google_cloud_auth::credentials::{self, Credentials};
use google_cloud_gax::retry_policy::RetryPolicyExt;
use google_cloud_pubsub::client::{BasePublisher, Publisher, Subscriber as PullClient};
use google_cloud_pubsub::error::PublishError;
use google_cloud_pubsub::model::Message as PubsubMessage;
use google_cloud_pubsub::retry_policy::RetryableErrors;
use google_cloud_pubsub::subscriber::handler::Handler;
use google_cloud_pubsub::subscriber::{MessageStream, ShutdownBehavior};
use tokio::task::JoinHandle;

use crate::client::{
    Binding, ClientError, Consumer, Delivery, Message, Settle, SubscriptionTarget, Transport,
};

/// The `type` entry of a binding this data plane serves.
pub const BINDING_TYPE: &str = "google-pubsub";

const BROKER: &str = "google-pubsub";
/// CloudEvents attribute prefix in message attributes (as on Kafka, Redis and SQS).
const CE: &str = "ce_";
/// The prefix of the Pub/Sub CloudEvents binding, read on receive.
const CE_BINDING: &str = "ce-";
/// The key, as the CloudEvents partitioning extension.
const KEY: &str = "ce_partitionkey";
/// Messages leased to one subscriber at a time: enough to keep a subscriber busy while its
/// acks are batched, few enough that competing subscribers share a burst.
pub const MAX_OUTSTANDING: i64 = 10;
/// The ack deadline of a streaming pull (the subscription's own deadline does not apply to
/// it): how long the messages of a subscriber that died stay leased to it. The client extends
/// the leases of held messages before they expire. Pub/Sub's minimum, and the ack deadline
/// the operator gives subscriptions by default (the client library's default is 60 s).
pub const STREAM_ACK_DEADLINE: Duration = Duration::from_secs(10);
/// How long a publish waits for other messages to share its request.
const BATCH_DELAY: Duration = Duration::from_millis(1);
/// How long a publish is retried before it fails.
const PUBLISH_RETRIES: Duration = Duration::from_secs(30);
/// How long a publish waits for its message id at most.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(45);
/// Deliveries counted per process before the counts start over (see the module doc).
const MAX_COUNTED: usize = 100_000;
/// The attributes Pub/Sub adds to a message it forwards to a dead-letter topic.
const DEAD_LETTER_DELIVERY_COUNT: &str = "CloudPubSubDeadLetterSourceDeliveryCount";
const DEAD_LETTER_SUBSCRIPTION: &str = "CloudPubSubDeadLetterSourceSubscription";
const DEAD_LETTER_PROJECT: &str = "CloudPubSubDeadLetterSourceSubscriptionProject";
const DEAD_LETTER_PUBLISH_TIME: &str = "CloudPubSubDeadLetterSourceTopicPublishTime";

fn err(e: impl std::fmt::Display) -> ClientError {
    ClientError::broker(BROKER, e)
}

/// A Pub/Sub error as `<operation>: <code>: <message>` (never credentials).
fn rpc_err(operation: &str, e: &google_cloud_pubsub::Error) -> ClientError {
    let detail = match e.status() {
        Some(s) => format!("{}: {}", s.code.name(), s.message),
        None => e.to_string().chars().take(300).collect(),
    };
    err(format!("{operation}: {detail}"))
}

fn publish_err(topic: &str, e: &PublishError) -> ClientError {
    match e {
        PublishError::Rpc(e) => rpc_err(&format!("Publish {topic}"), e),
        other => err(format!("Publish {topic}: {other}")),
    }
}

/// Where and as whom the transport connects.
#[derive(Debug, PartialEq, Eq)]
struct Endpoint {
    /// The endpoint URL; `None` for Pub/Sub's global endpoint.
    url: Option<String>,
    /// An emulator: plain HTTP, no credentials.
    emulator: bool,
}

/// The endpoint of a binding: `emulator-host` / `PUBSUB_EMULATOR_HOST` (what the Google
/// client libraries read) for an emulator, else `uri`, else the global endpoint.
fn endpoint(binding: &Binding) -> Endpoint {
    let emulator = binding
        .get("emulator-host")
        .or_else(|| binding.get("PUBSUB_EMULATOR_HOST"))
        .map(str::trim)
        .filter(|h| !h.is_empty());
    if let Some(host) = emulator {
        let url = if host.starts_with("http://") {
            host.to_string()
        } else {
            format!("http://{host}")
        };
        return Endpoint {
            url: Some(url),
            emulator: true,
        };
    }
    match binding.get("uri").map(|u| u.trim().trim_end_matches('/')) {
        Some(u) if !u.is_empty() => Endpoint {
            url: Some(u.to_string()),
            emulator: u.starts_with("http://"),
        },
        _ => Endpoint {
            url: None,
            emulator: false,
        },
    }
}

/// The Pub/Sub transport of a binding.
pub struct PubSubTransport {
    project: String,
    base: BasePublisher,
    pull: PullClient,
    publishers: Mutex<HashMap<String, Publisher>>,
    counts: Arc<Counts>,
}

/// Build the transport from the binding's `project-id` (or `PUBSUB_PROJECT_ID` /
/// `GOOGLE_CLOUD_PROJECT`) and endpoint ([`endpoint`]). An emulator is spoken to without
/// credentials; Google Cloud with the app's own identity (application default credentials:
/// workload identity, `GOOGLE_APPLICATION_CREDENTIALS`, the metadata server), as the binding
/// carries none. Does not contact Pub/Sub.
pub async fn transport(binding: &Binding) -> Result<Arc<dyn Transport>, ClientError> {
    let project = ["project-id", "PUBSUB_PROJECT_ID", "GOOGLE_CLOUD_PROJECT"]
        .iter()
        .find_map(|k| binding.get(k).map(str::trim).filter(|p| !p.is_empty()))
        .ok_or_else(|| ClientError::Binding("no `project-id` entry".into()))?
        .to_string();
    let endpoint = endpoint(binding);
    let creds: Credentials = if endpoint.emulator {
        credentials::anonymous::Builder::new().build()
    } else {
        credentials::Builder::default().build().map_err(|e| {
            err(format!(
                "no Google credentials for the app (application default credentials): {}",
                e.to_string().chars().take(200).collect::<String>()
            ))
        })?
    };
    let mut base = BasePublisher::builder()
        .with_credentials(creds.clone())
        .with_retry_policy(RetryableErrors.with_time_limit(PUBLISH_RETRIES));
    let mut pull = PullClient::builder().with_credentials(creds);
    if let Some(url) = &endpoint.url {
        base = base.with_endpoint(url);
        pull = pull.with_endpoint(url);
    }
    let base = base
        .build()
        .await
        .map_err(|e| err(format!("cannot build the publisher: {e}")))?;
    let pull = pull
        .build()
        .await
        .map_err(|e| err(format!("cannot build the subscriber: {e}")))?;
    Ok(Arc::new(PubSubTransport {
        project,
        base,
        pull,
        publishers: Mutex::new(HashMap::new()),
        counts: Arc::new(Counts::default()),
    }))
}

/// The full resource name of a topic or subscription id (names already in full pass as is).
fn path(project: &str, kind: &str, name: &str) -> String {
    if name.starts_with("projects/") {
        name.to_string()
    } else {
        format!("projects/{project}/{kind}/{name}")
    }
}

/// A message as published: data, attributes and ordering key.
fn encode(message: &Message) -> PubsubMessage {
    let mut attributes: HashMap<String, String> = message.wire_headers(CE).into_iter().collect();
    if let Some(key) = &message.key {
        attributes.insert(KEY.to_string(), key.clone());
    }
    PubsubMessage::new()
        .set_data(message.payload.clone())
        .set_attributes(attributes)
        .set_ordering_key(message.key.clone().unwrap_or_default())
}

/// A message of `subscription` (a full name) as Pub/Sub forwards it to the dead-letter topic
/// after `delivery_count` deliveries: its data, attributes and ordering key as received, and
/// the attributes saying where it came from.
fn forwarded(m: &PubsubMessage, subscription: &str, delivery_count: u32) -> PubsubMessage {
    let (project, id) = match subscription
        .strip_prefix("projects/")
        .and_then(|rest| rest.split_once("/subscriptions/"))
    {
        Some((project, id)) => (project, id),
        None => ("", subscription),
    };
    let mut attributes = m.attributes.clone();
    attributes.extend([
        (
            DEAD_LETTER_DELIVERY_COUNT.into(),
            delivery_count.to_string(),
        ),
        (DEAD_LETTER_SUBSCRIPTION.into(), id.to_string()),
        (DEAD_LETTER_PROJECT.into(), project.to_string()),
    ]);
    if let Some(t) = m.publish_time {
        attributes.insert(DEAD_LETTER_PUBLISH_TIME.into(), String::from(t));
    }
    PubsubMessage::new()
        .set_data(m.data.clone())
        .set_attributes(attributes)
        .set_ordering_key(m.ordering_key.clone())
}

/// A message as received. CloudEvents attributes under the Pub/Sub binding's `ce-` prefix are
/// read too, when the message has no `ce_` ones.
fn decode(m: PubsubMessage) -> Message {
    let mut attributes: BTreeMap<String, String> = m.attributes.into_iter().collect();
    if !attributes.contains_key(&format!("{CE}specversion"))
        && attributes.contains_key(&format!("{CE_BINDING}specversion"))
    {
        attributes = attributes
            .into_iter()
            .map(|(k, v)| match k.strip_prefix(CE_BINDING) {
                Some(rest) => (format!("{CE}{rest}"), v),
                None => (k, v),
            })
            .collect();
    }
    let key = attributes
        .remove(KEY)
        .or_else(|| Some(m.ordering_key).filter(|k| !k.is_empty()));
    Message::from_wire(m.data.to_vec(), key, attributes, CE)
}

impl PubSubTransport {
    fn publisher(&self, topic: &str) -> Publisher {
        let mut cache = self
            .publishers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        cache
            .entry(topic.to_string())
            .or_insert_with(|| {
                self.base
                    .publisher(path(&self.project, "topics", topic))
                    .set_delay_threshold(BATCH_DELAY)
                    .build()
            })
            .clone()
    }
}

/// Publish `m` to `topic` and wait for its message id.
async fn send(publisher: &Publisher, topic: &str, m: PubsubMessage) -> Result<(), ClientError> {
    let key = m.ordering_key.clone();
    let sent = tokio::time::timeout(PUBLISH_TIMEOUT, publisher.publish(m)).await;
    let failed = match sent {
        Ok(Ok(_message_id)) => return Ok(()),
        Ok(Err(e)) => publish_err(topic, &e),
        Err(_) => err(format!(
            "Publish {topic}: no message id within {}s (it may still be published)",
            PUBLISH_TIMEOUT.as_secs()
        )),
    };
    // A failed publish pauses its ordering key; this one failed, the next may go.
    if !key.is_empty() {
        publisher.resume_publish(&key);
    }
    Err(failed)
}

#[async_trait]
impl Transport for PubSubTransport {
    async fn publish(&self, physical_topic: &str, message: &Message) -> Result<(), ClientError> {
        send(
            &self.publisher(physical_topic),
            physical_topic,
            encode(message),
        )
        .await
    }

    async fn subscribe(
        &self,
        target: &SubscriptionTarget,
    ) -> Result<Box<dyn Consumer>, ClientError> {
        let subscription = path(
            &self.project,
            "subscriptions",
            &target.physical_subscription,
        );
        // The stream connects on its first `next`.
        let stream = self
            .pull
            .subscribe(&subscription)
            .set_max_outstanding_messages(MAX_OUTSTANDING)
            .set_max_lease_extension(STREAM_ACK_DEADLINE)
            .set_shutdown_behavior(ShutdownBehavior::WaitForProcessing)
            .build();
        let dead_letter = target.dead_letter.as_ref().map(|topic| {
            Arc::new(DeadLetterTopic {
                publisher: self.publisher(topic),
                topic: topic.clone(),
            })
        });
        Ok(Box::new(PubSubConsumer {
            subscription,
            dead_letter,
            stream: Some(stream),
            pending: None,
            received: false,
            counts: self.counts.clone(),
        }))
    }
}

/// Deliveries counted by the transport, by subscription and message id, for subscriptions
/// where Pub/Sub counts none.
#[derive(Default)]
struct Counts(Mutex<HashMap<(String, String), u32>>);

impl Counts {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), u32>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Count one more delivery; returns the count.
    fn delivered(&self, key: &(String, String)) -> u32 {
        let mut counts = self.lock();
        if counts.len() >= MAX_COUNTED && !counts.contains_key(key) {
            // Nacked or abandoned messages that went elsewhere: start over.
            counts.clear();
        }
        let n = counts.entry(key.clone()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    fn forget(&self, key: &(String, String)) {
        self.lock().remove(key);
    }
}

type Pulled = Option<google_cloud_pubsub::Result<(PubsubMessage, Handler)>>;

/// A subscription's dead-letter topic, where a reject publishes.
struct DeadLetterTopic {
    topic: String,
    publisher: Publisher,
}

struct PubSubConsumer {
    subscription: String,
    dead_letter: Option<Arc<DeadLetterTopic>>,
    /// The stream, while no receive is in flight.
    stream: Option<MessageStream>,
    /// The receive in flight, kept across a dropped `next`; it hands the stream back.
    pending: Option<JoinHandle<(MessageStream, Pulled)>>,
    /// Whether the stream has delivered (so it is open and may have a pool).
    received: bool,
    counts: Arc<Counts>,
}

impl PubSubConsumer {
    fn delivery(&self, m: PubsubMessage, handler: Handler) -> Delivery {
        let (attempt, counted) = match handler.delivery_attempt() {
            Some(n) if n > 0 => (u32::try_from(n).unwrap_or(u32::MAX), None),
            _ => {
                let key = (self.subscription.clone(), m.message_id.clone());
                (
                    self.counts.delivered(&key),
                    Some((self.counts.clone(), key)),
                )
            }
        };
        // What a reject publishes.
        let dead_letter = self
            .dead_letter
            .clone()
            .map(|topic| (topic, forwarded(&m, &self.subscription, attempt)));
        Delivery::new(
            decode(m),
            attempt,
            Box::new(PubSubSettle {
                handler,
                counted,
                dead_letter,
            }),
        )
    }
}

#[async_trait]
impl Consumer for PubSubConsumer {
    async fn next(&mut self) -> Result<Delivery, ClientError> {
        if self.pending.is_none() {
            // No stream: it ended (see below).
            let mut stream = self.stream.take().ok_or(ClientError::Closed)?;
            self.pending = Some(tokio::spawn(async move {
                let pulled = stream.next().await;
                (stream, pulled)
            }));
        }
        let Some(handle) = self.pending.as_mut() else {
            return Err(ClientError::Closed);
        };
        let joined = handle.await;
        self.pending = None;
        let (stream, pulled) = joined.map_err(|e| err(format!("StreamingPull: {e}")))?;
        match pulled {
            Some(Ok((m, handler))) => {
                self.stream = Some(stream);
                self.received = true;
                Ok(self.delivery(m, handler))
            }
            // A permanent error (the subscription is gone, access denied, …) ends the stream;
            // transient ones are retried inside it.
            Some(Err(e)) => Err(rpc_err(&format!("StreamingPull {}", self.subscription), &e)),
            None => Err(ClientError::Closed),
        }
    }
}

impl Drop for PubSubConsumer {
    fn drop(&mut self) {
        // The stream keeps what it received in a pool and waits on Pub/Sub only once that is
        // empty. So a receive in flight holds nothing yet: ending it loses nothing (a response
        // cut short comes back after the stream's ack deadline, as when a process dies).
        if let Some(handle) = self.pending.take() {
            handle.abort();
        }
        // Otherwise the pool goes back at once: taken out of the stream, which is closed first
        // so that Pub/Sub does not push them onto it again, then nacked. (Left in the stream,
        // they would stay leased until every delivery it handed out is settled.) Once the pool
        // is empty, the stream's next poll only looks at the open stream; a stream that never
        // delivered is not polled, as that would open it.
        if let Some(mut stream) = self.stream.take().filter(|_| self.received) {
            let mut pooled = Vec::new();
            while let Some(Some(Ok((_, handler)))) = stream.next().now_or_never() {
                pooled.push(handler);
            }
            drop(stream);
            for handler in pooled {
                handler.nack();
            }
        }
    }
}

struct PubSubSettle {
    handler: Handler,
    /// The transport's count of this delivery, when Pub/Sub keeps none.
    counted: Option<(Arc<Counts>, (String, String))>,
    /// The dead-letter topic and the message as forwarded there, when the subscription has a
    /// dead-letter topic.
    dead_letter: Option<(Arc<DeadLetterTopic>, PubsubMessage)>,
}

/// Acknowledge (waiting for Pub/Sub's answer on exactly-once subscriptions).
async fn ack(
    handler: Handler,
    counted: Option<(Arc<Counts>, (String, String))>,
) -> Result<(), ClientError> {
    match handler {
        Handler::ExactlyOnce(h) => h
            .confirmed_ack()
            .await
            .map_err(|e| err(format!("Acknowledge: {e}")))?,
        other => other.ack(),
    }
    if let Some((counts, key)) = counted {
        counts.forget(&key);
    }
    Ok(())
}

/// Have it redelivered (waiting for Pub/Sub's answer on exactly-once subscriptions).
async fn nack(handler: Handler) -> Result<(), ClientError> {
    match handler {
        Handler::ExactlyOnce(h) => h
            .confirmed_nack()
            .await
            .map_err(|e| err(format!("ModifyAckDeadline: {e}")))?,
        other => other.nack(),
    }
    Ok(())
}

#[async_trait]
impl Settle for PubSubSettle {
    async fn ack(self: Box<Self>) -> Result<(), ClientError> {
        ack(self.handler, self.counted).await
    }

    async fn nack(self: Box<Self>) -> Result<(), ClientError> {
        nack(self.handler).await
    }

    async fn reject(self: Box<Self>) -> Result<(), ClientError> {
        let PubSubSettle {
            handler,
            counted,
            dead_letter,
        } = *self;
        if let Some((dlq, m)) = dead_letter
            && let Err(e) = send(&dlq.publisher, &dlq.topic, m).await
        {
            // Not dead-lettered: have it delivered again.
            let _ = nack(handler).await;
            return Err(e);
        }
        ack(handler, counted).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(entries: &[(&str, &str)]) -> Binding {
        let mut map: BTreeMap<String, String> = entries
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        map.insert("type".into(), BROKER.into());
        Binding::from_entries(map).expect("binding")
    }

    #[test]
    fn messages_round_trip_through_data_attributes_and_ordering_key() {
        for payload in [&b"order 1"[..], b"", b"\x00\xffbinary"] {
            let mut m = Message::new(payload.to_vec())
                .with_key("customer-1")
                .with_header("trace-id", "t1");
            m.time = Some("2026-12-01T00:00:00Z".into());
            let wire = encode(&m);
            assert_eq!(wire.ordering_key, "customer-1");
            assert_eq!(wire.attributes[KEY], "customer-1");
            assert_eq!(wire.attributes["ce_id"], m.id);
            assert_eq!(wire.attributes["ce_specversion"], "1.0");
            assert_eq!(decode(wire), m);
        }
        let unkeyed = Message::new(b"x".to_vec());
        let wire = encode(&unkeyed);
        assert!(wire.ordering_key.is_empty() && !wire.attributes.contains_key(KEY));
        assert_eq!(decode(wire), unkeyed);
    }

    #[test]
    fn a_rejected_message_is_forwarded_as_pubsub_forwards_a_dead_letter() {
        let m = Message::new(b"order 1".to_vec())
            .with_key("customer-1")
            .with_header("trace-id", "t1");
        let mut received = encode(&m);
        received.message_id = "42".into();
        received.publish_time = Some("2026-12-01T00:00:00Z".try_into().expect("timestamp"));
        let f = forwarded(&received, "projects/p/subscriptions/billing", 3);
        // What the publisher may not set is not set; the rest is as received.
        assert!(f.message_id.is_empty() && f.publish_time.is_none());
        assert_eq!(
            (&f.data, &f.ordering_key),
            (&received.data, &received.ordering_key)
        );
        for (k, v) in &received.attributes {
            assert_eq!(f.attributes.get(k), Some(v), "{k}");
        }
        assert_eq!(f.attributes[DEAD_LETTER_DELIVERY_COUNT], "3");
        assert_eq!(f.attributes[DEAD_LETTER_SUBSCRIPTION], "billing");
        assert_eq!(f.attributes[DEAD_LETTER_PROJECT], "p");
        assert_eq!(
            f.attributes[DEAD_LETTER_PUBLISH_TIME],
            "2026-12-01T00:00:00Z"
        );
        let back = decode(f);
        assert_eq!(
            (&back.id, &back.key, &back.payload),
            (&m.id, &m.key, &m.payload)
        );
        assert_eq!(back.headers["trace-id"], "t1");
    }

    #[test]
    fn the_pubsub_binding_prefix_and_a_bare_ordering_key_are_read() {
        let m = PubsubMessage::new()
            .set_data(b"hello".to_vec())
            .set_ordering_key("k")
            .set_attributes([
                ("ce-specversion", "1.0"),
                ("ce-id", "abc"),
                ("ce-source", "//pubsub.googleapis.com/x"),
                ("ce-type", "google.cloud.pubsub.topic.v1.messagePublished"),
                ("trace-id", "t"),
            ]);
        let got = decode(m);
        assert_eq!((got.id.as_str(), got.key.as_deref()), ("abc", Some("k")));
        assert_eq!(got.type_, "google.cloud.pubsub.topic.v1.messagePublished");
        assert_eq!(
            got.headers,
            BTreeMap::from([("trace-id".into(), "t".into())])
        );
    }

    #[test]
    fn the_endpoint_comes_from_the_binding() {
        let emulator = binding(&[
            ("uri", "http://127.0.0.1:8085"),
            ("emulator-host", "127.0.0.1:8085"),
        ]);
        assert_eq!(
            endpoint(&emulator),
            Endpoint {
                url: Some("http://127.0.0.1:8085".into()),
                emulator: true
            }
        );
        let env_only = binding(&[("PUBSUB_EMULATOR_HOST", "[::1]:8085")]);
        assert_eq!(
            endpoint(&env_only).url.as_deref(),
            Some("http://[::1]:8085")
        );
        let cloud = binding(&[("uri", "https://europe-west1-pubsub.googleapis.com/")]);
        assert_eq!(
            endpoint(&cloud),
            Endpoint {
                url: Some("https://europe-west1-pubsub.googleapis.com".into()),
                emulator: false
            }
        );
        assert_eq!(
            endpoint(&binding(&[])),
            Endpoint {
                url: None,
                emulator: false
            }
        );
        assert_eq!(path("p", "topics", "t"), "projects/p/topics/t");
        assert_eq!(
            path("p", "topics", "projects/q/topics/t"),
            "projects/q/topics/t"
        );
    }

    #[test]
    fn counts_go_up_per_subscription_and_message_and_are_forgotten() {
        let counts = Counts::default();
        let a = ("s".to_string(), "1".to_string());
        let b = ("other".to_string(), "1".to_string());
        assert_eq!(counts.delivered(&a), 1);
        assert_eq!(counts.delivered(&a), 2);
        assert_eq!(counts.delivered(&b), 1);
        counts.forget(&a);
        assert_eq!(counts.delivered(&a), 1);
    }

    #[tokio::test]
    async fn a_binding_without_a_project_is_refused() {
        let Err(e) = transport(&binding(&[("emulator-host", "127.0.0.1:1")])).await else {
            panic!("a transport without a project");
        };
        assert!(matches!(e, ClientError::Binding(_)), "{e}");
    }
}
