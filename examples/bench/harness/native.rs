//! Each broker's own client, used directly: the floor the client library is measured against.
//! Same crates and the same delivery settings the library uses (Kafka `acks=all` with
//! idempotence, RabbitMQ publisher confirms on a persistent message, XADD, a Pub/Sub publish
//! answered with its id, an SNS publish, a JetStream publish ack), on the physical names the binding gives, with the
//! payload only: no CloudEvents attributes, no binding, no swap-following.

use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use rdkafka::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use redis::aio::ConnectionManager;
use switchyard::client::Binding;

use super::Brokers;

const TIMEOUT: Duration = Duration::from_secs(30);

/// A native publisher of one physical topic.
pub enum Publisher {
    Kafka(FutureProducer, String),
    /// The stream, and the extra fields written with each entry.
    Redis(ConnectionManager, String, Vec<(&'static str, String)>),
    RabbitMq {
        channel: lapin::Channel,
        exchange: String,
        _connection: Box<Connection>,
    },
    PubSub(google_cloud_pubsub::client::Publisher),
    Sns(aws_sdk_sns::Client, String),
    Nats(async_nats::jetstream::Context, String),
}

/// A native consumer of one physical subscription.
pub enum Consumer {
    Kafka(StreamConsumer),
    Redis(ConnectionManager, String, String),
    RabbitMq {
        consumer: lapin::Consumer,
        _connection: Box<Connection>,
    },
    PubSub(Box<google_cloud_pubsub::subscriber::MessageStream>),
    Sqs(aws_sdk_sqs::Client, String),
    Nats(Box<async_nats::jetstream::consumer::pull::Stream>),
}

fn e(what: &str) -> impl Fn(String) -> String + '_ {
    move |err| format!("native {what}: {err}")
}

fn kafka_config(brokers: &Brokers) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &brokers.kafka);
    c
}

async fn amqp(brokers: &Brokers) -> Result<Connection, String> {
    let (host, port, _, user, password) = &brokers.rabbit;
    Connection::connect(
        &format!("amqp://{user}:{password}@{host}:{port}/%2f"),
        ConnectionProperties::default(),
    )
    .await
    .map_err(|x| e("amqp connect")(x.to_string()))
}

fn project(binding: &Binding) -> String {
    binding.get("project-id").unwrap_or_default().to_string()
}

async fn aws(brokers: &Brokers) -> aws_config::SdkConfig {
    let (endpoint, region, access, secret) = &brokers.aws;
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region.clone()))
        .endpoint_url(endpoint)
        .credentials_provider(aws_credential_types::Credentials::new(
            access, secret, None, None, "bench",
        ))
        .load()
        .await
}

async fn nats(brokers: &Brokers) -> Result<async_nats::jetstream::Context, String> {
    let (url, user, password) = &brokers.nats;
    let client = async_nats::ConnectOptions::with_user_and_password(user.clone(), password.clone())
        .connect(url.as_str())
        .await
        .map_err(|x| e("nats connect")(x.to_string()))?;
    Ok(async_nats::jetstream::new(client))
}

async fn pubsub_publisher(
    brokers: &Brokers,
) -> Result<google_cloud_pubsub::client::BasePublisher, String> {
    let creds = google_cloud_auth::credentials::anonymous::Builder::new().build();
    google_cloud_pubsub::client::BasePublisher::builder()
        .with_credentials(creds)
        .with_endpoint(format!(
            "http://{}",
            brokers.pubsub.trim_start_matches("http://")
        ))
        .build()
        .await
        .map_err(|x| e("pubsub publisher")(x.to_string()))
}

impl Publisher {
    /// A publisher of the binding's physical `topic` on `backend`.
    pub async fn new(
        backend: &str,
        brokers: &Brokers,
        binding: &Binding,
        topic: &str,
    ) -> Result<Self, String> {
        let physical = binding.topic(topic).map_err(|x| x.to_string())?;
        Ok(match backend {
            "Kafka" => {
                let producer = kafka_config(brokers)
                    .set("acks", "all")
                    .set("enable.idempotence", "true")
                    .create()
                    .map_err(|x| e("kafka producer")(x.to_string()))?;
                Publisher::Kafka(producer, physical)
            }
            "Redis" => {
                let client =
                    redis::Client::open(brokers.redis.as_str()).map_err(|x| x.to_string())?;
                let conn = ConnectionManager::new(client)
                    .await
                    .map_err(|x| e("redis")(x.to_string()))?;
                Publisher::Redis(conn, physical, Vec::new())
            }
            "RabbitMQ" => {
                let conn = amqp(brokers).await?;
                let ch = conn
                    .create_channel()
                    .await
                    .map_err(|x| e("amqp channel")(x.to_string()))?;
                ch.confirm_select(ConfirmSelectOptions::default())
                    .await
                    .map_err(|x| e("amqp confirms")(x.to_string()))?;
                Publisher::RabbitMq {
                    channel: ch,
                    exchange: physical,
                    _connection: Box::new(conn),
                }
            }
            "GooglePubSub" => {
                let base = pubsub_publisher(brokers).await?;
                let path = format!("projects/{}/topics/{physical}", project(binding));
                Publisher::PubSub(
                    base.publisher(path)
                        .set_delay_threshold(Duration::from_millis(1))
                        .build(),
                )
            }
            "NatsJetStream" => Publisher::Nats(nats(brokers).await?, physical),
            _ => {
                let sns = aws_sdk_sns::Client::new(&aws(brokers).await);
                let topics = sns
                    .list_topics()
                    .send()
                    .await
                    .map_err(|x| e("sns list")(x.to_string()))?;
                let suffix = format!(":{physical}");
                let arn = topics
                    .topics()
                    .iter()
                    .filter_map(|t| t.topic_arn())
                    .find(|a| a.ends_with(&suffix))
                    .ok_or(format!("no SNS topic {physical}"))?
                    .to_string();
                Publisher::Sns(sns, arn)
            }
        })
    }

    /// The same publisher writing, on Redis, the fields the client library's entries carry
    /// (the five CloudEvents attributes, with values of the same length, built once): what
    /// the entry format costs the broker, apart from the library's own work.
    pub fn with_envelope(self) -> Self {
        match self {
            Publisher::Redis(conn, stream, _) => {
                let extra = vec![
                    ("ce_specversion", "1.0".to_string()),
                    ("ce_id", "00000000-0000-4000-8000-000000000000".to_string()),
                    ("ce_source", "switchyard".to_string()),
                    ("ce_type", "switchyard.message".to_string()),
                    ("ce_time", "2026-01-01T00:00:00.000000Z".to_string()),
                ];
                Publisher::Redis(conn, stream, extra)
            }
            other => other,
        }
    }

    /// Publish `payload`; returns once the broker confirmed it.
    pub async fn publish(&self, payload: &[u8]) -> Result<(), String> {
        match self {
            Publisher::Kafka(p, topic) => p
                .send(
                    FutureRecord::<(), [u8]>::to(topic).payload(payload),
                    TIMEOUT,
                )
                .await
                .map(|_| ())
                .map_err(|(x, _)| e("kafka publish")(x.to_string())),
            Publisher::Redis(conn, stream, extra) => {
                let mut conn = conn.clone();
                let mut cmd = redis::cmd("XADD");
                cmd.arg(stream).arg("*").arg("payload").arg(payload);
                for (k, v) in extra {
                    cmd.arg(*k).arg(v);
                }
                cmd.query_async::<String>(&mut conn)
                    .await
                    .map(|_| ())
                    .map_err(|x| e("xadd")(x.to_string()))
            }
            Publisher::RabbitMq {
                channel: ch,
                exchange,
                ..
            } => {
                let confirm = ch
                    .basic_publish(
                        exchange.as_str().into(),
                        "".into(),
                        BasicPublishOptions::default(),
                        payload,
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await
                    .map_err(|x| e("amqp publish")(x.to_string()))?
                    .await
                    .map_err(|x| e("amqp confirm")(x.to_string()))?;
                match confirm {
                    Confirmation::Ack(_) => Ok(()),
                    other => Err(format!("native amqp publish: {other:?}")),
                }
            }
            Publisher::PubSub(p) => p
                .publish(google_cloud_pubsub::model::Message::new().set_data(payload.to_vec()))
                .await
                .map(|_| ())
                .map_err(|x| e("pubsub publish")(x.to_string())),
            Publisher::Nats(js, subject) => js
                .publish(subject.clone(), payload.to_vec().into())
                .await
                .map_err(|x| e("nats publish")(x.to_string()))?
                .await
                .map(|_| ())
                .map_err(|x| e("nats ack")(x.to_string())),
            Publisher::Sns(sns, arn) => sns
                .publish()
                .topic_arn(arn)
                .message(String::from_utf8_lossy(payload))
                .send()
                .await
                .map(|_| ())
                .map_err(|x| e("sns publish")(x.to_string())),
        }
    }
}

impl Consumer {
    /// A consumer of the binding's `topic`/`subscription` on `backend`.
    pub async fn new(
        backend: &str,
        brokers: &Brokers,
        binding: &Binding,
        topic: &str,
        subscription: &str,
    ) -> Result<Self, String> {
        let target = binding
            .target(topic, subscription)
            .map_err(|x| x.to_string())?;
        let (topic, group) = (target.physical_topic, target.physical_subscription);
        Ok(match backend {
            "Kafka" => {
                let c: StreamConsumer = kafka_config(brokers)
                    .set("group.id", &group)
                    .set("auto.offset.reset", "earliest")
                    .set("enable.auto.commit", "false")
                    .create()
                    .map_err(|x| e("kafka consumer")(x.to_string()))?;
                c.subscribe(&[&topic])
                    .map_err(|x| e("kafka subscribe")(x.to_string()))?;
                Consumer::Kafka(c)
            }
            "Redis" => {
                let client =
                    redis::Client::open(brokers.redis.as_str()).map_err(|x| x.to_string())?;
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_response_timeout(Some(Duration::from_secs(10)));
                let conn = ConnectionManager::new_with_config(client, config)
                    .await
                    .map_err(|x| e("redis")(x.to_string()))?;
                Consumer::Redis(conn, topic, group)
            }
            "RabbitMQ" => {
                let conn = amqp(brokers).await?;
                let ch = conn
                    .create_channel()
                    .await
                    .map_err(|x| e("amqp channel")(x.to_string()))?;
                ch.basic_qos(32, BasicQosOptions::default())
                    .await
                    .map_err(|x| e("amqp qos")(x.to_string()))?;
                let c = ch
                    .basic_consume(
                        group.as_str().into(),
                        "bench-native".into(),
                        BasicConsumeOptions::default(),
                        Default::default(),
                    )
                    .await
                    .map_err(|x| e("amqp consume")(x.to_string()))?;
                Consumer::RabbitMq {
                    consumer: c,
                    _connection: Box::new(conn),
                }
            }
            "GooglePubSub" => {
                let creds = google_cloud_auth::credentials::anonymous::Builder::new().build();
                let pull = google_cloud_pubsub::client::Subscriber::builder()
                    .with_credentials(creds)
                    .with_endpoint(format!(
                        "http://{}",
                        brokers.pubsub.trim_start_matches("http://")
                    ))
                    .build()
                    .await
                    .map_err(|x| e("pubsub subscriber")(x.to_string()))?;
                let path = format!("projects/{}/subscriptions/{group}", project(binding));
                Consumer::PubSub(Box::new(pull.subscribe(path).build()))
            }
            "NatsJetStream" => {
                let js = nats(brokers).await?;
                let stream = js
                    .stream_by_subject(topic.clone())
                    .await
                    .map_err(|x| e("nats stream")(x.to_string()))?;
                let consumer: async_nats::jetstream::consumer::PullConsumer = js
                    .get_consumer_from_stream(&group, &stream)
                    .await
                    .map_err(|x| e("nats consumer")(x.to_string()))?;
                let messages = consumer
                    .messages()
                    .await
                    .map_err(|x| e("nats messages")(x.to_string()))?;
                Consumer::Nats(Box::new(messages))
            }
            _ => {
                let sqs = aws_sdk_sqs::Client::new(&aws(brokers).await);
                let url = sqs
                    .get_queue_url()
                    .queue_name(&group)
                    .send()
                    .await
                    .map_err(|x| e("sqs queue url")(x.to_string()))?
                    .queue_url()
                    .unwrap_or_default()
                    .to_string();
                Consumer::Sqs(sqs, url)
            }
        })
    }

    /// The next message's payload, acknowledged.
    pub async fn next(&mut self) -> Result<Vec<u8>, String> {
        match self {
            Consumer::Kafka(c) => {
                let m = c.recv().await.map_err(|x| e("kafka recv")(x.to_string()))?;
                let payload = m.payload().unwrap_or_default().to_vec();
                c.commit_message(&m, CommitMode::Async)
                    .map_err(|x| e("kafka commit")(x.to_string()))?;
                Ok(payload)
            }
            Consumer::Redis(conn, stream, group) => loop {
                let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(&*group)
                    .arg("bench-native")
                    .arg("COUNT")
                    .arg(1)
                    .arg("BLOCK")
                    .arg(1000)
                    .arg("STREAMS")
                    .arg(&*stream)
                    .arg(">")
                    .query_async(conn)
                    .await
                    .map_err(|x| e("xreadgroup")(x.to_string()))?;
                let Some(entry) = reply.keys.into_iter().flat_map(|k| k.ids).next() else {
                    continue;
                };
                let payload = match entry.map.get("payload") {
                    Some(redis::Value::BulkString(b)) => b.clone(),
                    _ => Vec::new(),
                };
                redis::cmd("XACK")
                    .arg(&*stream)
                    .arg(&*group)
                    .arg(&entry.id)
                    .query_async::<i64>(conn)
                    .await
                    .map_err(|x| e("xack")(x.to_string()))?;
                return Ok(payload);
            },
            Consumer::RabbitMq { consumer: c, .. } => {
                let d = c
                    .next()
                    .await
                    .ok_or("native amqp: consumer closed")?
                    .map_err(|x| e("amqp delivery")(x.to_string()))?;
                d.ack(BasicAckOptions::default())
                    .await
                    .map_err(|x| e("amqp ack")(x.to_string()))?;
                Ok(d.data)
            }
            Consumer::PubSub(stream) => {
                let (m, handler) = stream
                    .next()
                    .await
                    .ok_or("native pubsub: stream ended")?
                    .map_err(|x| e("pubsub pull")(x.to_string()))?;
                handler.ack();
                Ok(m.data.to_vec())
            }
            Consumer::Nats(messages) => {
                let m = messages
                    .next()
                    .await
                    .ok_or("native nats: stream ended")?
                    .map_err(|x| e("nats pull")(x.to_string()))?;
                m.ack().await.map_err(|x| e("nats ack")(x.to_string()))?;
                Ok(m.payload.to_vec())
            }
            Consumer::Sqs(sqs, url) => loop {
                let out = sqs
                    .receive_message()
                    .queue_url(&*url)
                    .max_number_of_messages(1)
                    .wait_time_seconds(1)
                    .send()
                    .await
                    .map_err(|x| e("sqs receive")(x.to_string()))?;
                let Some(m) = out.messages.unwrap_or_default().into_iter().next() else {
                    continue;
                };
                if let Some(handle) = m.receipt_handle() {
                    sqs.delete_message()
                        .queue_url(&*url)
                        .receipt_handle(handle)
                        .send()
                        .await
                        .map_err(|x| e("sqs delete")(x.to_string()))?;
                }
                return Ok(m.body.unwrap_or_default().into_bytes());
            },
        }
    }
}
