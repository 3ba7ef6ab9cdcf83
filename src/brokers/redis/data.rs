//! The client data plane on Redis streams.
//!
//! - publish: `XADD <stream> * payload … key … ce_id …` (one entry; the reply is the
//!   confirmation);
//! - consume: the subscription's consumer group, each consumer under its own name; new entries
//!   with `XREADGROUP … >`, and entries another consumer took but never acked (it died) with
//!   `XAUTOCLAIM` once they were idle for the redelivery interval;
//! - nack: the entry stays pending and is marked idle (`XCLAIM … IDLE … JUSTID`, which keeps the
//!   delivery count), so the next claim redelivers it at once;
//! - dead letters: Redis has no broker-side limit, so the client reads the delivery count from
//!   the pending list and, past `maxDeliveryAttempts`, copies the entry to the subscription's
//!   `:dlq` stream with a `delivery-count` field and acks it, in one MULTI/EXEC. A `reject`
//!   does the same at once, with the deliveries so far as `delivery-count` (a plain `XACK` when
//!   the subscription has no dead-letter stream); when it fails, the entry stays pending and is
//!   claimed again after the redelivery interval.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use redis::{IntoConnectionInfo, Value};

use crate::client::{
    Binding, ClientError, Consumer, Delivery, Message, Settle, SubscriptionTarget, Transport,
};

/// The `type` entry of a binding this data plane serves.
pub const BINDING_TYPE: &str = "redis";

const BROKER: &str = "redis";
/// CloudEvents attribute prefix in entry fields (as in the Kafka binding's headers).
const CE: &str = "ce_";
/// Application headers are stored as `h:<name>` fields.
const HEADER: &str = "h:";
/// How long an unacked entry of a consumer that went away waits before another takes it.
pub const REDELIVER_AFTER: Duration = Duration::from_secs(30);
/// How long one `XREADGROUP` blocks before claims are looked at again.
const BLOCK: Duration = Duration::from_millis(500);

fn err(e: impl std::fmt::Display) -> ClientError {
    ClientError::broker(BROKER, e)
}

/// The Redis transport of a binding.
pub struct RedisTransport {
    client: redis::Client,
    conn: ConnectionManager,
    redeliver_after: Duration,
}

/// Build the transport from the binding's `uri`, `username`, `password` and `ca.crt`.
pub async fn transport(binding: &Binding) -> Result<RedisTransport, ClientError> {
    let uri = binding.require("uri")?;
    let mut info = uri.into_connection_info().map_err(err)?;
    let mut settings = info.redis_settings().clone();
    if let Some(u) = binding.get("username") {
        settings = settings.set_username(u);
    }
    if let Some(p) = binding.get("password") {
        settings = settings.set_password(p);
    }
    info = info.set_redis_settings(settings);
    let client = match binding.get("ca.crt") {
        Some(pem) => redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.as_bytes().to_vec()),
            },
        ),
        None => redis::Client::open(info),
    }
    .map_err(err)?;
    let conn = ConnectionManager::new(client.clone()).await.map_err(err)?;
    Ok(RedisTransport {
        client,
        conn,
        redeliver_after: REDELIVER_AFTER,
    })
}

impl RedisTransport {
    /// Redeliver an unacked entry of a vanished consumer after `after` (default 30 s).
    pub fn with_redeliver_after(mut self, after: Duration) -> Self {
        self.redeliver_after = after;
        self
    }
}

/// The entry of a message, as XADD field/value pairs appended to `cmd`: `payload`, `key`, the
/// CloudEvents attributes under `ce_`, and the application headers under [`HEADER`].
fn add_fields(cmd: &mut redis::Cmd, message: &Message) {
    cmd.arg("payload").arg(&message.payload);
    if let Some(k) = &message.key {
        cmd.arg("key").arg(k);
    }
    for (name, value) in message.attributes() {
        match ce_field(name) {
            Some(field) => cmd.arg(field),
            None => cmd.arg(format!("{CE}{name}")),
        };
        cmd.arg(value);
    }
    for (k, v) in &message.headers {
        if k.starts_with(CE) {
            cmd.arg(k);
        } else {
            cmd.arg(format!("{HEADER}{k}"));
        }
        cmd.arg(v);
    }
}

/// The field name of a CloudEvents attribute (see [`Message::attributes`]), without building
/// it on every publish.
fn ce_field(attribute: &str) -> Option<&'static str> {
    Some(match attribute {
        "specversion" => "ce_specversion",
        "id" => "ce_id",
        "source" => "ce_source",
        "type" => "ce_type",
        "time" => "ce_time",
        _ => return None,
    })
}

fn message(entry: &StreamId) -> Message {
    let text = |v: &Value| redis::from_redis_value_ref::<String>(v).unwrap_or_default();
    let payload = entry
        .map
        .get("payload")
        .and_then(|v| redis::from_redis_value_ref::<Vec<u8>>(v).ok())
        .unwrap_or_default();
    let key = entry.map.get("key").map(text);
    let headers = entry.map.iter().filter_map(|(k, v)| {
        if k.starts_with(CE) {
            Some((k.clone(), text(v)))
        } else {
            k.strip_prefix(HEADER).map(|h| (h.to_string(), text(v)))
        }
    });
    Message::from_wire(payload, key, headers, CE)
}

#[async_trait]
impl Transport for RedisTransport {
    async fn publish(&self, stream: &str, message: &Message) -> Result<(), ClientError> {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(stream).arg("*");
        add_fields(&mut cmd, message);
        let mut conn = self.conn.clone();
        let _: String = cmd.query_async(&mut conn).await.map_err(err)?;
        Ok(())
    }

    async fn subscribe(
        &self,
        target: &SubscriptionTarget,
    ) -> Result<Box<dyn Consumer>, ClientError> {
        // A blocking read gets a connection of its own, whose reply timeout outlasts BLOCK.
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(BLOCK * 10));
        let reader = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(err)?;
        Ok(Box::new(RedisConsumer {
            reader,
            conn: self.conn.clone(),
            stream: target.physical_topic.clone(),
            group: target.physical_subscription.clone(),
            consumer: format!("switchyard-{}", uuid::Uuid::new_v4()),
            dead_letter: target.dead_letter.clone(),
            max_attempts: target.max_delivery_attempts,
            redeliver_after: self.redeliver_after,
        }))
    }
}

struct RedisConsumer {
    reader: MultiplexedConnection,
    conn: ConnectionManager,
    stream: String,
    group: String,
    consumer: String,
    dead_letter: Option<String>,
    max_attempts: Option<u32>,
    redeliver_after: Duration,
}

impl RedisConsumer {
    /// An entry pending longer than the redelivery interval (or nacked), claimed by us.
    async fn claim(&mut self) -> Result<Option<StreamId>, ClientError> {
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(u64::try_from(self.redeliver_after.as_millis()).unwrap_or(u64::MAX))
            .arg("0-0")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.conn)
            .await
            .map_err(err)?;
        Ok(reply.claimed.into_iter().next())
    }

    /// How many times an entry pending on us has been delivered.
    async fn delivery_count(&mut self, id: &str) -> Result<u32, ClientError> {
        let rows: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(id)
            .arg(id)
            .arg(1)
            .query_async(&mut self.conn)
            .await
            .map_err(err)?;
        Ok(rows
            .first()
            .map(|r| u32::try_from(r.3).unwrap_or(u32::MAX))
            .unwrap_or(1))
    }

    fn delivery(&self, entry: &StreamId, attempt: u32) -> Delivery {
        let message = message(entry);
        // What a reject copies to the dead-letter stream.
        let dead_letter = self
            .dead_letter
            .clone()
            .map(|dlq| (dlq, message.clone(), attempt));
        Delivery::new(
            message,
            attempt,
            Box::new(RedisSettle {
                conn: self.conn.clone(),
                stream: self.stream.clone(),
                group: self.group.clone(),
                consumer: self.consumer.clone(),
                id: entry.id.clone(),
                idle: self.redeliver_after,
                dead_letter,
            }),
        )
    }
}

#[async_trait]
impl Consumer for RedisConsumer {
    async fn next(&mut self) -> Result<Delivery, ClientError> {
        loop {
            if let Some(entry) = self.claim().await? {
                let count = self.delivery_count(&entry.id).await?;
                if let (Some(max), Some(dlq)) = (self.max_attempts, self.dead_letter.clone())
                    && count > max
                {
                    dead_letter(
                        &mut self.conn,
                        (&self.stream, &self.group, &entry.id),
                        &message(&entry),
                        &dlq,
                        count - 1,
                    )
                    .await?;
                    continue;
                }
                return Ok(self.delivery(&entry, count));
            }
            let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(&self.group)
                .arg(&self.consumer)
                .arg("COUNT")
                .arg(1)
                .arg("BLOCK")
                .arg(u64::try_from(BLOCK.as_millis()).unwrap_or(500))
                .arg("STREAMS")
                .arg(&self.stream)
                .arg(">")
                .query_async(&mut self.reader)
                .await
                .map_err(err)?;
            let entry = reply
                .and_then(|r| r.keys.into_iter().next())
                .and_then(|k| k.ids.into_iter().next());
            if let Some(entry) = entry {
                return Ok(self.delivery(&entry, 1));
            }
        }
    }
}

/// Copy an entry (`stream`, `group`, entry id) to the dead-letter stream `dlq` with a
/// `delivery-count` field (the deliveries it had before it was given up) and ack it, atomically.
async fn dead_letter(
    conn: &mut ConnectionManager,
    (stream, group, id): (&str, &str, &str),
    message: &Message,
    dlq: &str,
    count: u32,
) -> Result<(), ClientError> {
    let mut xadd = redis::cmd("XADD");
    xadd.arg(dlq).arg("*");
    add_fields(&mut xadd, message);
    xadd.arg("delivery-count").arg(count);
    let mut pipe = redis::pipe();
    pipe.atomic()
        .add_command(xadd)
        .ignore()
        .cmd("XACK")
        .arg(stream)
        .arg(group)
        .arg(id)
        .ignore();
    pipe.query_async::<()>(conn).await.map_err(err)
}

struct RedisSettle {
    conn: ConnectionManager,
    stream: String,
    group: String,
    consumer: String,
    id: String,
    idle: Duration,
    /// The dead-letter stream, the message and its deliveries so far, when the subscription
    /// has a dead-letter stream.
    dead_letter: Option<(String, Message, u32)>,
}

impl RedisSettle {
    async fn xack(&mut self) -> Result<(), ClientError> {
        let _: u64 = redis::cmd("XACK")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(&self.id)
            .query_async(&mut self.conn)
            .await
            .map_err(err)?;
        Ok(())
    }
}

#[async_trait]
impl Settle for RedisSettle {
    async fn ack(mut self: Box<Self>) -> Result<(), ClientError> {
        self.xack().await
    }

    async fn reject(mut self: Box<Self>) -> Result<(), ClientError> {
        let Some((dlq, message, count)) = self.dead_letter.take() else {
            return self.xack().await;
        };
        let entry = (self.stream.as_str(), self.group.as_str(), self.id.as_str());
        dead_letter(&mut self.conn, entry, &message, &dlq, count).await
    }

    async fn nack(mut self: Box<Self>) -> Result<(), ClientError> {
        // Mark it idle past the redelivery interval without counting a delivery: the next
        // XAUTOCLAIM of any consumer of the group takes it (and counts that delivery).
        let idle = u64::try_from(self.idle.as_millis())
            .unwrap_or(u64::MAX / 2)
            .saturating_add(1);
        let _: Vec<String> = redis::cmd("XCLAIM")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(0)
            .arg(&self.id)
            .arg("IDLE")
            .arg(idle)
            .arg("JUSTID")
            .query_async(&mut self.conn)
            .await
            .map_err(err)?;
        Ok(())
    }
}
