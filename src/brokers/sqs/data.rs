//! The client data plane on SNS and SQS.
//!
//! - publish: a topic with subscriptions is an SNS topic, so `Publish` to its ARN (looked up
//!   once with `ListTopics`, or, when that is not allowed, built from the account id in a
//!   subscription queue's URL; then cached); a topic without subscriptions is one queue, so
//!   `SendMessage`. The response is the confirmation. The payload is the message body, in
//!   base64 with the attribute `switchyard-encoding: base64` when it is not text SQS can carry.
//!   CloudEvents attributes are `ce_` message attributes and the key is `ce_partitionkey` (the
//!   CloudEvents partitioning extension); on FIFO topics the key is also the message group and
//!   the CloudEvents id the deduplication id. SNS discards, without an error, a message with
//!   more than 10 attributes bound for a raw-delivery queue, so publish refuses those;
//! - consume: `ReceiveMessage` long polling, one message per call, on the subscription's queue;
//!   its `ApproximateReceiveCount` is the attempt. An SNS JSON envelope (a subscription without
//!   raw delivery) is unwrapped. A receive still running when `next` is dropped is kept for the
//!   next call, and handed back to the queue when the consumer goes away;
//! - ack: `DeleteMessage`; nack: `ChangeMessageVisibility` to 0, so the next receive of any
//!   consumer redelivers it. A message of a consumer that died comes back after the queue's
//!   visibility timeout;
//! - dead letters: the queue's redrive policy; SQS moves a message received `maxReceiveCount`
//!   times to the dead-letter queue instead of delivering it again. Competing consumers are
//!   receivers of one queue. SQS has no call to dead-letter one message, so a `reject` moves it
//!   itself as the redrive would: it sends the body and message attributes as received
//!   (CloudEvents ones included; on FIFO queues with the message group and deduplication id)
//!   to the dead-letter queue, then deletes the message (just deletes it when the subscription
//!   has no dead-letter queue). When the send fails, the message is made visible again.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::MessageSystemAttributeName;
use tokio::task::JoinHandle;

use crate::client::{
    Binding, ClientError, Consumer, Delivery, Message, Settle, SubscriptionTarget, Transport,
};

/// The `type` entry of a binding this data plane serves.
pub const BINDING_TYPE: &str = "aws-sqs";

const BROKER: &str = "aws-sqs";
/// CloudEvents attribute prefix in message attributes.
const CE: &str = "ce_";
/// The key, as the CloudEvents partitioning extension.
const KEY: &str = "ce_partitionkey";
/// How the body encodes the payload when it is not the payload itself.
const ENCODING: &str = "switchyard-encoding";
/// SQS carries at most 10 message attributes (and SNS drops messages with more on their way
/// to a raw-delivery queue).
const MAX_ATTRIBUTES: usize = 10;
/// Long polling of one `ReceiveMessage`, in seconds.
const WAIT_SECONDS: i32 = 2;
/// The message group of FIFO messages without a key.
const DEFAULT_GROUP: &str = "switchyard";
const FIFO_SUFFIX: &str = ".fifo";

fn err(e: impl std::fmt::Display) -> ClientError {
    ClientError::broker(BROKER, e)
}

/// An SDK error as `<operation>: <code>: <message>` (the SDK never puts credentials there).
fn sdk_err<E, R>(operation: &str, e: &SdkError<E, R>) -> ClientError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let detail = match (e.code(), e.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_string(),
        _ => DisplayErrorContext(e)
            .to_string()
            .chars()
            .take(300)
            .collect(),
    };
    err(format!("{operation}: {detail}"))
}

/// The SNS/SQS transport of a binding.
pub struct SqsTransport {
    sqs: aws_sdk_sqs::Client,
    sns: aws_sdk_sns::Client,
    region: String,
    /// Physical SNS topics (topics with subscriptions), each with its subscription queues.
    sns_topics: BTreeMap<String, Vec<String>>,
    topic_arns: Mutex<HashMap<String, String>>,
    queue_urls: Mutex<HashMap<String, String>>,
}

/// Build the transport from the binding's `region`, `AWS_ENDPOINT_URL_SQS` / `_SNS` and, when
/// present, `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN` (otherwise the
/// SDK's default credential chain: environment, web identity, instance role).
pub async fn transport(binding: &Binding) -> Result<Arc<dyn Transport>, ClientError> {
    let region = binding
        .get("region")
        .or_else(|| binding.get("AWS_REGION"))
        .ok_or_else(|| ClientError::Binding("no `region` entry".into()))?
        .to_string();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(aws_config::Region::new(region.clone()))
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                // Outlasts one long poll.
                .operation_attempt_timeout(Duration::from_secs(10))
                .build(),
        );
    if let (Some(access), Some(secret)) = (
        binding.get("AWS_ACCESS_KEY_ID"),
        binding.get("AWS_SECRET_ACCESS_KEY"),
    ) {
        loader = loader.credentials_provider(aws_credential_types::Credentials::new(
            access,
            secret,
            binding.get("AWS_SESSION_TOKEN").map(str::to_string),
            None,
            "switchyard-binding",
        ));
    }
    let config = loader.load().await;
    let mut sqs = aws_sdk_sqs::config::Builder::from(&config);
    if let Some(endpoint) = binding.get("AWS_ENDPOINT_URL_SQS") {
        sqs = sqs.endpoint_url(endpoint.trim_end_matches('/'));
    }
    let mut sns = aws_sdk_sns::config::Builder::from(&config);
    if let Some(endpoint) = binding.get("AWS_ENDPOINT_URL_SNS") {
        sns = sns.endpoint_url(endpoint.trim_end_matches('/'));
    }
    Ok(Arc::new(SqsTransport {
        sqs: aws_sdk_sqs::Client::from_conf(sqs.build()),
        sns: aws_sdk_sns::Client::from_conf(sns.build()),
        region,
        sns_topics: sns_topics(binding)?,
        topic_arns: Mutex::new(HashMap::new()),
        queue_urls: Mutex::new(HashMap::new()),
    }))
}

/// The physical topics that are SNS topics, from `names.json`: those of logical topics with
/// subscriptions (`<topic>/<subscription>` keys), each with its subscription queues.
fn sns_topics(binding: &Binding) -> Result<BTreeMap<String, Vec<String>>, ClientError> {
    let names: BTreeMap<String, String> = match binding.get("names.json") {
        Some(text) => serde_json::from_str(text)
            .map_err(|e| ClientError::Binding(format!("names.json: {e}")))?,
        None => BTreeMap::new(),
    };
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (logical, queue) in &names {
        let mut parts = logical.split('/');
        if let (Some(topic), Some(_), None) = (parts.next(), parts.next(), parts.next())
            && let Some(physical) = names.get(topic)
        {
            out.entry(physical.clone()).or_default().push(queue.clone());
        }
    }
    Ok(out)
}

/// Text SQS accepts in a message body (its XML character range).
fn sqs_text(payload: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(payload).ok()?;
    text.chars()
        .all(|c| {
            matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
        })
        .then_some(text)
}

/// The body and the attributes of a message as sent.
fn encode(message: &Message) -> Result<(String, Vec<(String, String)>), ClientError> {
    let mut attributes = Vec::new();
    let body = match sqs_text(&message.payload) {
        // Neither SNS nor SQS takes an empty body.
        _ if message.payload.is_empty() => {
            attributes.push((ENCODING.to_string(), "empty".to_string()));
            "-".to_string()
        }
        Some(text) => text.to_string(),
        None => {
            attributes.push((ENCODING.to_string(), "base64".to_string()));
            base64_encode(&message.payload)
        }
    };
    if let Some(key) = &message.key {
        attributes.push((KEY.to_string(), key.clone()));
    }
    for (name, value) in message.wire_headers(CE) {
        if value.is_empty() {
            // An absent CloudEvents attribute reads back as the empty default.
            if name.starts_with(CE) {
                continue;
            }
            return Err(err(format!(
                "header {name:?} is empty: SNS and SQS attribute values cannot be empty"
            )));
        }
        attributes.push((name, value));
    }
    if let Some((name, _)) = attributes.iter().find(|(_, v)| v.is_empty()) {
        return Err(err(format!(
            "{name} is empty: SNS and SQS attribute values cannot be empty"
        )));
    }
    if attributes.len() > MAX_ATTRIBUTES {
        return Err(err(format!(
            "the message needs {} message attributes (CloudEvents attributes, key, headers); \
             SQS carries at most {MAX_ATTRIBUTES}",
            attributes.len()
        )));
    }
    Ok((body, attributes))
}

/// A message as received: its body and its string attributes, out of an SNS envelope if the
/// subscription does not deliver raw messages.
fn decode(body: &str, mut attributes: BTreeMap<String, String>) -> Message {
    let envelope = if attributes.contains_key(&format!("{CE}specversion")) {
        None
    } else {
        unwrap_envelope(body)
    };
    let body = match envelope {
        Some((message, envelope_attributes)) => {
            attributes.extend(envelope_attributes);
            message
        }
        None => body.to_string(),
    };
    let payload = match attributes.get(ENCODING).map(String::as_str) {
        Some("empty") => Some(Vec::new()),
        Some("base64") => base64_decode(&body),
        _ => None,
    };
    let payload = match payload {
        Some(p) => {
            attributes.remove(ENCODING);
            p
        }
        // Unknown or broken encoding: the body as it came, the attribute left as a header.
        None => body.into_bytes(),
    };
    let key = attributes.remove(KEY);
    Message::from_wire(payload, key, attributes, CE)
}

/// The message and string attributes of an SNS notification envelope.
fn unwrap_envelope(body: &str) -> Option<(String, BTreeMap<String, String>)> {
    let json: serde_json::Value = serde_json::from_str(body).ok()?;
    if json.get("Type")?.as_str()? != "Notification" || json.get("TopicArn").is_none() {
        return None;
    }
    let message = json.get("Message")?.as_str()?.to_string();
    let attributes = json
        .get("MessageAttributes")
        .and_then(|a| a.as_object())
        .map(|a| {
            a.iter()
                .filter(|(_, v)| {
                    v.get("Type")
                        .and_then(|t| t.as_str())
                        .is_some_and(|t| !t.starts_with("Binary"))
                })
                .filter_map(|(k, v)| Some((k.clone(), v.get("Value")?.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    Some((message, attributes))
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(BASE64[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = BASE64.iter().position(|&b| b == c)?;
        acc = (acc << 6) | u32::try_from(v).ok()?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff).ok()?);
        }
    }
    Some(out)
}

/// The partition of a region's ARNs.
fn partition(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else {
        "aws"
    }
}

/// The account id in a queue URL (`https://sqs.<region>.amazonaws.com/<account>/<name>`).
fn account_of(queue_url: &str) -> Option<&str> {
    let mut segments = queue_url.rsplit('/');
    segments.next()?;
    segments.next().filter(|a| !a.is_empty())
}

fn sns_attribute(value: &str) -> Result<aws_sdk_sns::types::MessageAttributeValue, ClientError> {
    aws_sdk_sns::types::MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .map_err(err)
}

fn sqs_attribute(value: &str) -> Result<aws_sdk_sqs::types::MessageAttributeValue, ClientError> {
    aws_sdk_sqs::types::MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .map_err(err)
}

impl SqsTransport {
    async fn queue_url(&self, name: &str) -> Result<String, ClientError> {
        if let Some(url) = self
            .queue_urls
            .lock()
            .ok()
            .and_then(|c| c.get(name).cloned())
        {
            return Ok(url);
        }
        let out = self
            .sqs
            .get_queue_url()
            .queue_name(name)
            .send()
            .await
            .map_err(|e| sdk_err(&format!("GetQueueUrl {name}"), &e))?;
        let url = out
            .queue_url()
            .ok_or_else(|| err(format!("GetQueueUrl {name}: no URL")))?
            .to_string();
        if let Ok(mut cache) = self.queue_urls.lock() {
            cache.insert(name.to_string(), url.clone());
        }
        Ok(url)
    }

    /// The ARN of an SNS topic: from `ListTopics`, or, when the caller may not list topics,
    /// built from the account id of one of the topic's subscription queues.
    async fn topic_arn(&self, name: &str) -> Result<String, ClientError> {
        if let Some(arn) = self
            .topic_arns
            .lock()
            .ok()
            .and_then(|c| c.get(name).cloned())
        {
            return Ok(arn);
        }
        let suffix = format!(":{name}");
        let mut token = None;
        let listed = loop {
            match self
                .sns
                .list_topics()
                .set_next_token(token.take())
                .send()
                .await
            {
                Ok(out) => {
                    if let Some(arn) = out
                        .topics()
                        .iter()
                        .filter_map(|t| t.topic_arn())
                        .find(|arn| arn.ends_with(&suffix))
                    {
                        break Ok(Some(arn.to_string()));
                    }
                    match out.next_token() {
                        Some(t) => token = Some(t.to_string()),
                        None => break Ok(None),
                    }
                }
                Err(e) => break Err(sdk_err("ListTopics", &e)),
            }
        };
        let arn = match listed {
            Ok(Some(arn)) => arn,
            Ok(None) => return Err(err(format!("no SNS topic {name}"))),
            Err(list_error) => {
                let queue = self
                    .sns_topics
                    .get(name)
                    .and_then(|q| q.first())
                    .ok_or(list_error)?;
                let url = self.queue_url(queue).await?;
                let account = account_of(&url)
                    .ok_or_else(|| err(format!("no account id in the URL of queue {queue}")))?;
                format!(
                    "arn:{}:sns:{}:{account}:{name}",
                    partition(&self.region),
                    self.region
                )
            }
        };
        if let Ok(mut cache) = self.topic_arns.lock() {
            cache.insert(name.to_string(), arn.clone());
        }
        Ok(arn)
    }
}

#[async_trait]
impl Transport for SqsTransport {
    async fn publish(&self, physical_topic: &str, message: &Message) -> Result<(), ClientError> {
        let (body, attributes) = encode(message)?;
        let fifo = physical_topic.ends_with(FIFO_SUFFIX);
        let group = message.key.as_deref().unwrap_or(DEFAULT_GROUP);
        if self.sns_topics.contains_key(physical_topic) {
            let arn = self.topic_arn(physical_topic).await?;
            let mut publish = self.sns.publish().topic_arn(arn).message(body);
            for (name, value) in &attributes {
                publish = publish.message_attributes(name, sns_attribute(value)?);
            }
            if fifo {
                publish = publish
                    .message_group_id(group)
                    .message_deduplication_id(&message.id);
            }
            publish
                .send()
                .await
                .map_err(|e| sdk_err(&format!("Publish {physical_topic}"), &e))?;
        } else {
            let url = self.queue_url(physical_topic).await?;
            let mut send = self.sqs.send_message().queue_url(url).message_body(body);
            for (name, value) in &attributes {
                send = send.message_attributes(name, sqs_attribute(value)?);
            }
            if fifo {
                send = send
                    .message_group_id(group)
                    .message_deduplication_id(&message.id);
            }
            send.send()
                .await
                .map_err(|e| sdk_err(&format!("SendMessage {physical_topic}"), &e))?;
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        target: &SubscriptionTarget,
    ) -> Result<Box<dyn Consumer>, ClientError> {
        let url = self.queue_url(&target.physical_subscription).await?;
        // Its URL is looked up at the first reject: receiving needs no access to it.
        let dead_letter = target.dead_letter.as_ref().map(|name| {
            Arc::new(DeadLetterQueue {
                name: name.clone(),
                url: tokio::sync::OnceCell::new(),
            })
        });
        Ok(Box::new(SqsConsumer {
            sqs: self.sqs.clone(),
            url,
            dead_letter,
            pending: None,
        }))
    }
}

type Received = Result<Option<aws_sdk_sqs::types::Message>, ClientError>;

/// A subscription's dead-letter queue, where a reject sends.
struct DeadLetterQueue {
    name: String,
    url: tokio::sync::OnceCell<String>,
}

impl DeadLetterQueue {
    async fn url(&self, sqs: &aws_sdk_sqs::Client) -> Result<&str, ClientError> {
        self.url
            .get_or_try_init(|| async {
                let out = sqs
                    .get_queue_url()
                    .queue_name(&self.name)
                    .send()
                    .await
                    .map_err(|e| sdk_err(&format!("GetQueueUrl {}", self.name), &e))?;
                out.queue_url
                    .ok_or_else(|| err(format!("GetQueueUrl {}: no URL", self.name)))
            })
            .await
            .map(String::as_str)
    }
}

/// A message as the redrive moves it to the dead-letter queue: body and message attributes as
/// received, and on FIFO queues its message group and deduplication id.
struct DeadLetter {
    body: Option<String>,
    attributes: Option<HashMap<String, aws_sdk_sqs::types::MessageAttributeValue>>,
    group: Option<String>,
    deduplication: Option<String>,
}

impl DeadLetter {
    fn of(m: &aws_sdk_sqs::types::Message) -> Self {
        let system = |name| m.attributes().and_then(|a| a.get(&name)).cloned();
        DeadLetter {
            body: m.body.clone(),
            attributes: m.message_attributes.clone(),
            group: system(MessageSystemAttributeName::MessageGroupId),
            // A queue with content-based deduplication names none: the message id stands in.
            deduplication: system(MessageSystemAttributeName::MessageDeduplicationId)
                .or_else(|| m.message_id.clone()),
        }
    }

    async fn send(
        self,
        sqs: &aws_sdk_sqs::Client,
        queue: &DeadLetterQueue,
    ) -> Result<(), ClientError> {
        let url = queue.url(sqs).await?;
        let mut send = sqs
            .send_message()
            .queue_url(url)
            .set_message_body(self.body)
            .set_message_attributes(self.attributes);
        if queue.name.ends_with(FIFO_SUFFIX) {
            send = send
                .message_group_id(self.group.as_deref().unwrap_or(DEFAULT_GROUP))
                .set_message_deduplication_id(self.deduplication);
        }
        send.send()
            .await
            .map_err(|e| sdk_err(&format!("SendMessage {}", queue.name), &e))?;
        Ok(())
    }
}

struct SqsConsumer {
    sqs: aws_sdk_sqs::Client,
    url: String,
    dead_letter: Option<Arc<DeadLetterQueue>>,
    /// The receive in flight, kept across a dropped `next`.
    pending: Option<JoinHandle<Received>>,
}

async fn receive(sqs: aws_sdk_sqs::Client, url: String) -> Received {
    let out = sqs
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(1)
        .wait_time_seconds(WAIT_SECONDS)
        .message_attribute_names("All")
        .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
        // What a reject keeps when it moves a FIFO message to the dead-letter queue.
        .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
        .message_system_attribute_names(MessageSystemAttributeName::MessageDeduplicationId)
        .send()
        .await
        .map_err(|e| sdk_err("ReceiveMessage", &e))?;
    Ok(out.messages.and_then(|m| m.into_iter().next()))
}

impl SqsConsumer {
    fn delivery(&self, m: aws_sdk_sqs::types::Message) -> Result<Delivery, ClientError> {
        let receipt = m
            .receipt_handle()
            .ok_or_else(|| err("ReceiveMessage: a message without a receipt handle"))?
            .to_string();
        let attempt = m
            .attributes()
            .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
            .and_then(|c| c.parse().ok())
            .unwrap_or(1);
        let attributes = m
            .message_attributes()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.clone(), v.string_value()?.to_string())))
            .collect();
        // What a reject sends to the dead-letter queue.
        let dead_letter = self
            .dead_letter
            .clone()
            .map(|queue| (queue, DeadLetter::of(&m)));
        Ok(Delivery::new(
            decode(m.body().unwrap_or_default(), attributes),
            attempt,
            Box::new(SqsSettle {
                sqs: self.sqs.clone(),
                url: self.url.clone(),
                receipt,
                dead_letter,
            }),
        ))
    }
}

#[async_trait]
impl Consumer for SqsConsumer {
    async fn next(&mut self) -> Result<Delivery, ClientError> {
        loop {
            let (sqs, url) = (self.sqs.clone(), self.url.clone());
            let handle = self
                .pending
                .get_or_insert_with(|| tokio::spawn(receive(sqs, url)));
            let received = handle.await;
            self.pending = None;
            if let Some(m) = received.map_err(err)?? {
                return self.delivery(m);
            }
        }
    }
}

impl Drop for SqsConsumer {
    fn drop(&mut self) {
        // A receive still in flight may bring a message nobody will see: hand it back.
        if let Some(handle) = self.pending.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let (sqs, url) = (self.sqs.clone(), self.url.clone());
            runtime.spawn(async move {
                if let Ok(Ok(Some(m))) = handle.await
                    && let Some(receipt) = m.receipt_handle()
                {
                    let _ = release(&sqs, &url, receipt).await;
                }
            });
        }
    }
}

async fn release(sqs: &aws_sdk_sqs::Client, url: &str, receipt: &str) -> Result<(), ClientError> {
    sqs.change_message_visibility()
        .queue_url(url)
        .receipt_handle(receipt)
        .visibility_timeout(0)
        .send()
        .await
        .map_err(|e| sdk_err("ChangeMessageVisibility", &e))?;
    Ok(())
}

struct SqsSettle {
    sqs: aws_sdk_sqs::Client,
    url: String,
    receipt: String,
    /// The dead-letter queue and the message as moved there, when the subscription has a
    /// dead-letter queue.
    dead_letter: Option<(Arc<DeadLetterQueue>, DeadLetter)>,
}

impl SqsSettle {
    async fn delete(&self) -> Result<(), ClientError> {
        self.sqs
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(&self.receipt)
            .send()
            .await
            .map_err(|e| sdk_err("DeleteMessage", &e))?;
        Ok(())
    }
}

#[async_trait]
impl Settle for SqsSettle {
    async fn ack(self: Box<Self>) -> Result<(), ClientError> {
        self.delete().await
    }

    async fn nack(self: Box<Self>) -> Result<(), ClientError> {
        release(&self.sqs, &self.url, &self.receipt).await
    }

    async fn reject(mut self: Box<Self>) -> Result<(), ClientError> {
        if let Some((queue, letter)) = self.dead_letter.take()
            && let Err(e) = letter.send(&self.sqs, &queue).await
        {
            // Not dead-lettered: have it received again.
            let _ = release(&self.sqs, &self.url, &self.receipt).await;
            return Err(e);
        }
        self.delete().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for data in [
            &b""[..],
            b"f",
            b"fo",
            b"foo",
            b"foob",
            b"\x00\xff\xfe\x80 binary",
        ] {
            let text = base64_encode(data);
            assert_eq!(text.len() % 4, 0);
            assert_eq!(base64_decode(&text).as_deref(), Some(data));
        }
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_decode("not base64!"), None);
    }

    #[test]
    fn messages_round_trip_through_body_and_attributes() {
        for payload in [&b"order 1"[..], b"", b"\x00\xffbinary", b"nul \x00 in text"] {
            let mut m = Message::new(payload.to_vec())
                .with_key("customer-1")
                .with_header("trace-id", "t1");
            m.time = Some("2026-12-01T00:00:00Z".into());
            let (body, attributes) = encode(&m).expect("encode");
            assert!(sqs_text(body.as_bytes()).is_some() && !body.is_empty());
            assert_eq!(decode(&body, attributes.into_iter().collect()), m);
        }
        let many = (0..6).fold(Message::new(b"x".to_vec()), |m, i| {
            m.with_header(format!("h{i}"), "v")
        });
        assert!(
            encode(&many.clone().with_key("k")).is_err(),
            "11 attributes"
        );
        assert!(encode(&many).is_ok(), "10 attributes");
        assert!(encode(&Message::new(b"x".to_vec()).with_header("h", "")).is_err());
    }

    #[test]
    fn a_dead_letter_keeps_the_body_attributes_and_fifo_ids_as_received() {
        let received = |deduplication: Option<&str>| {
            let m = aws_sdk_sqs::types::Message::builder()
                .message_id("m-1")
                .body("order 1")
                .message_attributes("ce_id", sqs_attribute("abc").expect("attribute"))
                .attributes(MessageSystemAttributeName::MessageGroupId, "customer-1")
                .attributes(MessageSystemAttributeName::ApproximateReceiveCount, "1");
            match deduplication {
                Some(id) => m.attributes(MessageSystemAttributeName::MessageDeduplicationId, id),
                None => m,
            }
            .build()
        };
        let m = received(None);
        let d = DeadLetter::of(&m);
        assert_eq!(d.body.as_deref(), Some("order 1"));
        assert_eq!(d.attributes, m.message_attributes);
        assert_eq!(d.group.as_deref(), Some("customer-1"));
        // No deduplication id (content-based deduplication): the message id stands in.
        assert_eq!(d.deduplication.as_deref(), Some("m-1"));
        let d = DeadLetter::of(&received(Some("d-1")));
        assert_eq!(d.deduplication.as_deref(), Some("d-1"));
    }

    #[test]
    fn an_sns_envelope_is_unwrapped() {
        let body = serde_json::json!({
            "Type": "Notification",
            "MessageId": "1",
            "TopicArn": "arn:aws:sns:eu-west-1:123456789012:orders",
            "Message": "hello",
            "MessageAttributes": {
                "ce_id": {"Type": "String", "Value": "abc"},
                "ce_partitionkey": {"Type": "String", "Value": "k"},
                "trace-id": {"Type": "String", "Value": "t"}
            }
        })
        .to_string();
        let m = decode(&body, BTreeMap::new());
        assert_eq!(m.payload, b"hello");
        assert_eq!((m.id.as_str(), m.key.as_deref()), ("abc", Some("k")));
        assert_eq!(m.headers["trace-id"], "t");
        // A raw message whose body happens to look like an envelope stays as it is.
        let raw = decode(
            &body,
            BTreeMap::from([("ce_specversion".to_string(), "1.0".to_string())]),
        );
        assert_eq!(raw.payload, body.as_bytes());
    }

    #[test]
    fn account_and_partition_make_the_topic_arn() {
        assert_eq!(
            account_of("https://sqs.eu-west-1.amazonaws.com/123456789012/q"),
            Some("123456789012")
        );
        assert_eq!(account_of("q"), None);
        assert_eq!(partition("cn-north-1"), "aws-cn");
        assert_eq!(partition("us-gov-west-1"), "aws-us-gov");
        assert_eq!(partition("eu-west-1"), "aws");
    }
}
