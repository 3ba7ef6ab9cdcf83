//! `switchyard publish` and `switchyard consume`: the client library as a command, a uniform
//! kcat for every broker Switchyard binds. Output is one JSON object per line.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use serde::Serialize;

use super::{Client, ClientError, Message};

/// Where the binding comes from.
#[derive(Clone, Debug)]
pub enum BindingSource {
    /// A projected binding directory.
    Dir(PathBuf),
    /// A binding Secret, `namespace/name`, read through the Kubernetes API.
    Secret(String, String),
}

impl BindingSource {
    /// A client for the binding that follows its changes (a consumer that runs through a
    /// swap moves with it).
    pub async fn client(&self) -> Result<Client, ClientError> {
        match self {
            BindingSource::Dir(dir) => Client::from_binding(dir).await,
            BindingSource::Secret(ns, name) => {
                let client = kube::Client::try_default()
                    .await
                    .map_err(|e| ClientError::Binding(format!("Kubernetes client: {e}")))?;
                Client::from_secret(&client, ns, name).await
            }
        }
    }
}

/// One published message, as printed.
#[derive(Serialize)]
struct Published<'a> {
    topic: &'a str,
    id: &'a str,
}

/// One received message, as printed.
#[derive(Serialize)]
struct Received<'a> {
    id: &'a str,
    source: &'a str,
    #[serde(rename = "type")]
    type_: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    time: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    headers: &'a BTreeMap<String, String>,
    attempt: u32,
    /// The payload when it is UTF-8 text.
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a str>,
    /// The payload, base64, when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_base64: Option<String>,
}

fn line(out: &mut impl Write, value: &impl Serialize) -> Result<(), ClientError> {
    let text = serde_json::to_string(value).map_err(|e| ClientError::Binding(e.to_string()))?;
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(|e| ClientError::Binding(format!("writing output: {e}")))
}

/// Publish each payload to `topic` (returns after every one was confirmed), printing its id.
pub async fn publish(
    source: &BindingSource,
    topic: &str,
    payloads: impl IntoIterator<Item = String>,
    key: Option<&str>,
    headers: &[(String, String)],
    out: &mut impl Write,
) -> Result<usize, ClientError> {
    let client = source.client().await?;
    let publisher = client.publisher(topic);
    let mut n = 0;
    for payload in payloads {
        let mut m = Message::new(payload.into_bytes());
        m.key = key.map(str::to_string);
        for (k, v) in headers {
            m.headers.insert(k.clone(), v.clone());
        }
        let id = m.id.clone();
        publisher.publish(m).await?;
        line(out, &Published { topic, id: &id })?;
        n += 1;
    }
    Ok(n)
}

/// When `consume` stops.
#[derive(Clone, Copy, Debug)]
pub struct Until {
    /// After this many messages.
    pub count: Option<usize>,
    /// Keep going forever (otherwise stop once nothing arrived for `idle`).
    pub follow: bool,
    /// How long an empty subscription is waited on before stopping.
    pub idle: Duration,
}

/// Consume a subscription, printing each message and acking it once printed. Without `ack`
/// the messages are held unsettled until `consume` returns (or the process dies), and the broker
/// delivers them again, some brokers only after their redelivery delay.
pub async fn consume(
    source: &BindingSource,
    topic: &str,
    subscription: &str,
    until: Until,
    ack: bool,
    out: &mut impl Write,
) -> Result<usize, ClientError> {
    let client = source.client().await?;
    let mut sub = client.subscriber(topic, subscription).await?;
    // Held, not dropped: some brokers redeliver a dropped delivery at once.
    let mut held = Vec::new();
    let mut n = 0;
    while until.count.is_none_or(|c| n < c) {
        let delivery = if until.follow {
            sub.next().await?
        } else {
            match tokio::time::timeout(until.idle, sub.next()).await {
                Ok(d) => d?,
                Err(_) => break,
            }
        };
        let m = &delivery.message;
        let text = std::str::from_utf8(&m.payload).ok();
        line(
            out,
            &Received {
                id: &m.id,
                source: &m.source,
                type_: &m.type_,
                time: m.time.as_deref(),
                key: m.key.as_deref(),
                headers: &m.headers,
                attempt: delivery.attempt,
                payload: text,
                payload_base64: text
                    .is_none()
                    .then(|| base64::engine::general_purpose::STANDARD.encode(&m.payload)),
            },
        )?;
        if ack {
            delivery.ack().await?;
        } else {
            held.push(delivery);
        }
        n += 1;
    }
    Ok(n)
}
