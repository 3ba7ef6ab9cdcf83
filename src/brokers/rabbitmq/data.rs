//! The client data plane on RabbitMQ (AMQP 0-9-1 through lapin).
//!
//! - publish: to the topic's exchange (a topic exchange bound with `#`, so every subscription
//!   queue gets it) with the message key as routing key, persistent, CloudEvents attributes as
//!   `cloudEvents:`-prefixed headers (the AMQP binding's binary mode) plus the `message-id`,
//!   `type` and `timestamp` properties; on a channel in confirm mode, returning once the broker
//!   acked the publish;
//! - consume: one channel per subscriber with a prefetch of [`PREFETCH`]; `basic.consume` on the
//!   subscription's queue starts at the first `next`, so a subscriber that is not reading holds
//!   no messages; several subscribers of one subscription are competing consumers of its queue;
//! - ack / nack: `basic.ack` / `basic.nack` with requeue; the attempt comes from the quorum
//!   queue's `x-delivery-count` header (absent = 1, n = n + 1), or the `redelivered` flag (at
//!   least 2) on classic queues, which count nothing;
//! - dead letters: the broker's, through the queue's `x-delivery-limit` and dead-letter exchange
//!   set up by the operator. As a guard, a delivery past `maxDeliveryAttempts` is rejected
//!   without requeue (so the broker dead-letters it) instead of being handed to the app. A
//!   `reject` is that same `basic.reject` without requeue: the broker dead-letters it through
//!   the queue's dead-letter exchange (`x-death` reason `rejected`), or drops it when the queue
//!   has none.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::{AMQPUri, AMQPUserInfo};
use lapin::{Acker, BasicProperties, Channel, Confirmation, Connection};

use super::pooled::{ConnectFailure, Pooled};
use crate::client::{
    Binding, ClientError, Consumer, Delivery, Message, Settle, SubscriptionTarget, Transport,
};

/// The `type` entry of a binding this data plane serves.
pub const BINDING_TYPE: &str = "rabbitmq";

const BROKER: &str = "rabbitmq";
/// CloudEvents attribute prefix in headers (the CloudEvents AMQP binding).
const CE: &str = "cloudEvents:";
/// Unacknowledged deliveries one subscriber holds at a time. One keeps competing consumers
/// fair and never counts a delivery against a message the app did not see.
pub const PREFETCH: u16 = 1;
/// The quorum queue's count of earlier deliveries of a message.
const DELIVERY_COUNT: &str = "x-delivery-count";
/// Time allowed to open the AMQP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// AMQP `delivery-mode` of a message written to disk.
const PERSISTENT: u8 = 2;

fn err(e: impl std::fmt::Display) -> ClientError {
    ClientError::broker(BROKER, e)
}

fn short(what: &str, s: &str) -> Result<ShortString, ClientError> {
    ShortString::try_new(s).map_err(|e| err(format!("{what}: {e}")))
}

/// The RabbitMQ transport of a binding: one connection, one confirm-mode channel for
/// publishing, one channel per subscriber.
pub struct RabbitMqTransport {
    connection: Pooled,
    publisher: tokio::sync::Mutex<Option<Channel>>,
}

/// Build the transport from the binding's `uri`, `username`, `password` and `ca.crt`, and
/// connect.
pub async fn transport(binding: &Binding) -> Result<Arc<dyn Transport>, ClientError> {
    let t = RabbitMqTransport::new(binding)?;
    t.connection().await?;
    Ok(Arc::new(t))
}

impl RabbitMqTransport {
    /// The transport of a binding, not connected yet.
    pub fn new(binding: &Binding) -> Result<Self, ClientError> {
        let mut uri: AMQPUri = binding
            .require("uri")?
            .parse()
            .map_err(|e| ClientError::Binding(format!("`uri` is not an AMQP URI: {e}")))?;
        if let Some(username) = binding.get("username") {
            uri.authority.userinfo = AMQPUserInfo {
                username: username.to_string(),
                password: binding.get("password").unwrap_or_default().to_string(),
            };
        }
        let tls = OwnedTLSConfig {
            cert_chain: binding.get("ca.crt").map(str::to_string),
            ..OwnedTLSConfig::default()
        };
        Ok(RabbitMqTransport {
            connection: Pooled::new(uri, tls, "switchyard-client"),
            publisher: tokio::sync::Mutex::new(None),
        })
    }

    /// The connection, (re)connecting when there is none or it died.
    async fn connection(&self) -> Result<Arc<Connection>, ClientError> {
        // lapin's errors name neither the URI nor the credentials.
        let at = || {
            let a = &self.connection.uri().authority;
            format!("{}:{}", a.host, a.port)
        };
        self.connection
            .get(CONNECT_TIMEOUT)
            .await
            .map_err(|e| match e {
                ConnectFailure::Runtime(e) => err(e),
                ConnectFailure::Timeout(t) => {
                    err(format!("no connection to {} within {}s", at(), t.as_secs()))
                }
                ConnectFailure::Refused(e) => err(format!("connecting to {}: {e}", at())),
            })
    }

    async fn channel(&self) -> Result<Channel, ClientError> {
        self.connection()
            .await?
            .create_channel()
            .await
            .map_err(|e| err(format!("opening a channel: {e}")))
    }

    /// The confirm-mode publishing channel, reopened after a channel error (such as publishing
    /// to an exchange that does not exist, which closes it).
    async fn publisher(&self) -> Result<Channel, ClientError> {
        let mut slot = self.publisher.lock().await;
        if let Some(ch) = slot.as_ref()
            && ch.status().connected()
        {
            return Ok(ch.clone());
        }
        *slot = None;
        let ch = self.channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| err(format!("enabling publisher confirms: {e}")))?;
        *slot = Some(ch.clone());
        Ok(ch)
    }
}

fn properties(message: &Message) -> Result<BasicProperties, ClientError> {
    let mut headers = FieldTable::default();
    for (k, v) in message.wire_headers(CE) {
        headers.insert(
            short("header name", &k)?,
            AMQPValue::LongString(LongString::from(v)),
        );
    }
    let mut props = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_headers(headers);
    if let Ok(id) = ShortString::try_new(message.id.as_str()) {
        props = props.with_message_id(id);
    }
    if let Ok(kind) = ShortString::try_new(message.type_.as_str()) {
        props = props.with_type(kind);
    }
    if let Some(t) = message
        .time
        .as_deref()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        && let Ok(secs) = u64::try_from(t.as_second())
    {
        props = props.with_timestamp(secs);
    }
    Ok(props)
}

/// A header value as text; `None` for tables and arrays.
fn text(v: &AMQPValue) -> Option<String> {
    Some(match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_string(),
        AMQPValue::ByteArray(b) => String::from_utf8_lossy(b.as_slice()).into_owned(),
        AMQPValue::Boolean(b) => b.to_string(),
        other => integer(other)?.to_string(),
    })
}

fn integer(v: &AMQPValue) -> Option<i64> {
    match *v {
        AMQPValue::ShortShortInt(n) => Some(n.into()),
        AMQPValue::ShortShortUInt(n) => Some(n.into()),
        AMQPValue::ShortInt(n) => Some(n.into()),
        AMQPValue::ShortUInt(n) => Some(n.into()),
        AMQPValue::LongInt(n) => Some(n.into()),
        AMQPValue::LongUInt(n) => Some(n.into()),
        AMQPValue::LongLongInt(n) => Some(n),
        AMQPValue::Timestamp(n) => i64::try_from(n).ok(),
        _ => None,
    }
}

/// Headers the broker adds: not the app's.
fn broker_header(name: &str) -> bool {
    name == DELIVERY_COUNT
        || name == "x-death"
        || name.starts_with("x-first-death-")
        || name.starts_with("x-last-death-")
}

fn message(d: &lapin::message::Delivery) -> Message {
    let key = Some(d.routing_key.as_str().to_string()).filter(|k| !k.is_empty());
    let headers = d
        .properties
        .headers()
        .iter()
        .flat_map(|t| t.inner().iter())
        .filter(|(k, _)| !broker_header(k.as_str()))
        .filter_map(|(k, v)| Some((k.as_str().to_string(), text(v)?)));
    Message::from_wire(d.data.clone(), key, headers, CE)
}

/// Deliveries so far, this one included.
fn attempt(d: &lapin::message::Delivery) -> u32 {
    let count = d
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(DELIVERY_COUNT))
        .and_then(integer);
    match count {
        Some(n) => u32::try_from(n).unwrap_or(u32::MAX - 1).saturating_add(1),
        None if d.redelivered => 2,
        None => 1,
    }
}

#[async_trait]
impl Transport for RabbitMqTransport {
    async fn publish(&self, exchange: &str, message: &Message) -> Result<(), ClientError> {
        let exchange_name = short("exchange", exchange)?;
        let routing_key = short("key", message.key.as_deref().unwrap_or_default())?;
        let props = properties(message)?;
        let ch = self.publisher().await?;
        let confirm = ch
            .basic_publish(
                exchange_name,
                routing_key,
                BasicPublishOptions::default(),
                &message.payload,
                props,
            )
            .await
            .map_err(|e| err(format!("publishing to {exchange}: {e}")))?
            .await
            .map_err(|e| err(format!("publishing to {exchange}: {e}")))?;
        match confirm {
            Confirmation::Ack(_) => Ok(()),
            Confirmation::Nack(_) => {
                Err(err(format!("the broker refused the publish to {exchange}")))
            }
            Confirmation::NotRequested => Err(err("the publishing channel is not in confirm mode")),
        }
    }

    async fn subscribe(
        &self,
        target: &SubscriptionTarget,
    ) -> Result<Box<dyn Consumer>, ClientError> {
        let queue = target.physical_subscription.clone();
        let ch = self.channel().await?;
        // Fail here, not at the first `next`, when the queue is not there.
        ch.queue_declare(
            short("queue", &queue)?,
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| err(format!("queue {queue}: {e}")))?;
        ch.basic_qos(PREFETCH, BasicQosOptions::default())
            .await
            .map_err(|e| err(format!("setting the prefetch: {e}")))?;
        Ok(Box::new(RabbitMqConsumer {
            channel: ch,
            consumer: None,
            queue,
            max_attempts: target
                .dead_letter
                .as_ref()
                .and(target.max_delivery_attempts),
        }))
    }
}

struct RabbitMqConsumer {
    channel: Channel,
    consumer: Option<lapin::Consumer>,
    queue: String,
    /// Deliveries before the broker dead-letters a message, when the subscription has a
    /// dead-letter destination.
    max_attempts: Option<u32>,
}

impl RabbitMqConsumer {
    async fn consumer(&mut self) -> Result<&mut lapin::Consumer, ClientError> {
        if self.consumer.is_none() {
            let tag = format!("switchyard-{}", uuid::Uuid::new_v4());
            let consumer = self
                .channel
                .basic_consume(
                    short("queue", &self.queue)?,
                    short("consumer tag", &tag)?,
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| err(format!("consuming {}: {e}", self.queue)))?;
            self.consumer = Some(consumer);
        }
        Ok(self.consumer.as_mut().expect("set above"))
    }
}

#[async_trait]
impl Consumer for RabbitMqConsumer {
    async fn next(&mut self) -> Result<Delivery, ClientError> {
        loop {
            let queue = self.queue.clone();
            let d = match self.consumer().await?.next().await {
                Some(d) => d.map_err(|e| err(format!("consuming {queue}: {e}")))?,
                None => return Err(ClientError::Closed),
            };
            let attempt = attempt(&d);
            if let Some(max) = self.max_attempts
                && attempt > max
            {
                // Attempts used up: the broker dead-letters what is rejected without requeue.
                d.acker
                    .reject(BasicRejectOptions { requeue: false })
                    .await
                    .map_err(|e| err(format!("dead-lettering from {queue}: {e}")))?;
                continue;
            }
            return Ok(Delivery::new(
                message(&d),
                attempt,
                Box::new(RabbitMqSettle { acker: d.acker }),
            ));
        }
    }
}

struct RabbitMqSettle {
    acker: Acker,
}

#[async_trait]
impl Settle for RabbitMqSettle {
    async fn ack(self: Box<Self>) -> Result<(), ClientError> {
        self.acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(|e| err(format!("ack: {e}")))?;
        Ok(())
    }

    async fn nack(self: Box<Self>) -> Result<(), ClientError> {
        self.acker
            .nack(BasicNackOptions {
                requeue: true,
                multiple: false,
            })
            .await
            .map_err(|e| err(format!("nack: {e}")))?;
        Ok(())
    }

    async fn reject(self: Box<Self>) -> Result<(), ClientError> {
        // The broker dead-letters (or, without a dead-letter exchange, drops) what is rejected
        // without requeue.
        self.acker
            .reject(BasicRejectOptions { requeue: false })
            .await
            .map_err(|e| err(format!("reject: {e}")))?;
        Ok(())
    }
}
