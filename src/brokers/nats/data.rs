//! The client data plane on NATS JetStream.
//!
//! - publish: a JetStream publish to the topic's subject; the stream's ack is the confirmation;
//! - consume: the subscription's durable pull consumer, one message per pull (a subscriber the
//!   app does not read holds nothing), so competing subscribers share the work;
//! - ack / nack: an acknowledged `+ACK` / `-NAK` (the server answers before they return); a
//!   nacked message is redelivered at once, and the attempt is the server's delivery count;
//! - dead letters: the consumer allows one delivery more than `maxDeliveryAttempts`; that one
//!   is copied to the subject of the subscription's dead-letter stream (`<stream>-dlq`) with a
//!   `delivery-count` header and `Nats-Msg-Id` set to stream, sequence and consumer (so a copy
//!   repeated after a crash is dropped by the stream's duplicate window), then terminated. A
//!   `reject` does the same at once, with the deliveries so far as `delivery-count` (a plain
//!   `+TERM` when the subscription has no dead-letter stream); when the copy fails, the message
//!   is nacked, so it is delivered again.
//!
//! CloudEvents attributes travel as headers with the `ce-` prefix, as the CloudEvents NATS
//! protocol binding's binary mode names them; the key is the `Switchyard-Key` header.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use async_trait::async_trait;
use futures::StreamExt;

use crate::client::{
    Binding, ClientError, Consumer, Delivery, Message, Settle, SubscriptionTarget, Transport,
};

/// The `type` entry of a binding this data plane serves.
pub const BINDING_TYPE: &str = "nats";
/// Binding key of an authentication token.
pub const TOKEN_KEY: &str = "token";
/// Binding key of an NKey user seed.
pub const NKEY_KEY: &str = "nkey";
/// Binding key of a `.creds` file's content.
pub const CREDS_KEY: &str = "creds";
/// CloudEvents attribute prefix (CloudEvents NATS protocol binding, binary mode).
pub const CE: &str = "ce-";
/// Header carrying the message key.
pub const KEY_HEADER: &str = "Switchyard-Key";
/// Header of a dead letter: deliveries before it was dead-lettered.
pub const DELIVERY_COUNT_HEADER: &str = "delivery-count";
/// Headers the server interprets; never taken for application headers.
const SERVER_HEADER_PREFIX: &str = "Nats-";

const BROKER: &str = "nats";
/// How long one pull waits for a message before pulling again.
const PULL_WAIT: Duration = Duration::from_secs(5);
/// Bound on establishing a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

fn err(e: impl std::fmt::Display) -> ClientError {
    ClientError::broker(BROKER, e)
}

/// How to authenticate. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// No authentication.
    None,
    /// Username and password.
    UserPassword(String, String),
    /// A token.
    Token(String),
    /// An NKey user seed.
    NKey(String),
    /// A `.creds` file (user JWT and seed).
    Creds(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credentials::None => "None",
            Credentials::UserPassword(..) => "UserPassword(<redacted>)",
            Credentials::Token(_) => "Token(<redacted>)",
            Credentials::NKey(_) => "NKey(<redacted>)",
            Credentials::Creds(_) => "Creds(<redacted>)",
        })
    }
}

/// Everything needed to connect: servers, credentials and TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// `nats://host:port` / `tls://host:port` URLs.
    pub servers: Vec<String>,
    /// How to authenticate.
    pub credentials: Credentials,
    /// CA bundle (PEM) that signs the servers' certificates; the system roots when unset.
    pub ca: Option<String>,
    /// Refuse a connection without TLS.
    pub require_tls: bool,
}

impl Settings {
    /// The settings of a binding: `uri` (comma-separated servers), `username` + `password`,
    /// `token`, `nkey` or `creds`, and `ca.crt`.
    pub fn from_binding(binding: &Binding) -> Result<Settings, ClientError> {
        let servers: Vec<String> = binding
            .require("uri")?
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        let credentials = match (
            binding.get("username"),
            binding.get("password"),
            binding.get(TOKEN_KEY),
            binding.get(NKEY_KEY),
            binding.get(CREDS_KEY),
        ) {
            (Some(u), Some(p), ..) => Credentials::UserPassword(u.into(), p.into()),
            (_, _, Some(t), ..) => Credentials::Token(t.into()),
            (_, _, _, Some(seed), _) => Credentials::NKey(seed.trim().into()),
            (_, _, _, _, Some(creds)) => Credentials::Creds(creds.into()),
            _ => Credentials::None,
        };
        Ok(Settings {
            require_tls: servers.iter().any(|s| s.starts_with("tls://")),
            servers,
            credentials,
            ca: binding.get("ca.crt").map(str::to_string),
        })
    }

    /// Connect options for these settings (no I/O). Fails on a malformed CA bundle or creds file.
    pub fn options(&self) -> Result<async_nats::ConnectOptions, String> {
        let mut o = async_nats::ConnectOptions::new()
            .name("switchyard")
            .connection_timeout(CONNECT_TIMEOUT);
        o = match &self.credentials {
            Credentials::None => o,
            Credentials::UserPassword(u, p) => o.user_and_password(u.clone(), p.clone()),
            Credentials::Token(t) => o.token(t.clone()),
            Credentials::NKey(seed) => o.nkey(seed.clone()),
            Credentials::Creds(creds) => o
                .credentials(creds)
                .map_err(|e| format!("the creds file is not usable: {e}"))?,
        };
        if let Some(pem) = &self.ca {
            o = o.tls_client_config(tls_config(pem)?).require_tls(true);
        } else if self.require_tls {
            o = o.require_tls(true);
        }
        Ok(o)
    }
}

/// A TLS client config trusting exactly the certificates in `pem`.
fn tls_config(pem: &str) -> Result<async_nats::rustls::ClientConfig, String> {
    use async_nats::rustls;
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert = cert.map_err(|e| format!("CA bundle: {e}"))?;
        roots.add(cert).map_err(|e| format!("CA bundle: {e}"))?;
        count += 1;
    }
    if count == 0 {
        return Err("the CA bundle holds no PEM certificate".to_string());
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The NATS transport of a binding.
pub struct NatsTransport {
    js: jetstream::Context,
}

/// Connect with the binding's `uri`, credentials and `ca.crt`.
pub async fn transport(binding: &Binding) -> Result<NatsTransport, ClientError> {
    let settings = Settings::from_binding(binding)?;
    let client = settings
        .options()
        .map_err(err)?
        .connect(settings.servers.as_slice())
        .await
        .map_err(err)?;
    Ok(NatsTransport {
        js: jetstream::new(client),
    })
}

/// The headers of a message as published.
fn headers(message: &Message) -> async_nats::HeaderMap {
    let mut h = async_nats::HeaderMap::new();
    for (k, v) in message.wire_headers(CE) {
        h.insert(k.as_str(), v.as_str());
    }
    if let Some(key) = &message.key {
        h.insert(KEY_HEADER, key.as_str());
    }
    h
}

/// A message as received.
fn message(m: &async_nats::Message) -> Message {
    let mut key = None;
    let mut fields = Vec::new();
    if let Some(h) = &m.headers {
        for (name, values) in h.iter() {
            let name: &str = name.as_ref();
            let Some(value) = values.first() else {
                continue;
            };
            if name == KEY_HEADER {
                key = Some(value.as_str().to_string());
            } else if !name.starts_with(SERVER_HEADER_PREFIX) && name != DELIVERY_COUNT_HEADER {
                fields.push((name.to_string(), value.as_str().to_string()));
            }
        }
    }
    Message::from_wire(m.payload.to_vec(), key, fields, CE)
}

#[async_trait]
impl Transport for NatsTransport {
    async fn publish(&self, subject: &str, message: &Message) -> Result<(), ClientError> {
        self.js
            .publish_with_headers(
                subject.to_string(),
                headers(message),
                message.payload.clone().into(),
            )
            .await
            .map_err(err)?
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn subscribe(
        &self,
        target: &SubscriptionTarget,
    ) -> Result<Box<dyn Consumer>, ClientError> {
        let stream = self
            .js
            .stream_by_subject(target.physical_topic.clone())
            .await
            .map_err(|e| err(format!("no stream for {}: {e}", target.physical_topic)))?;
        let consumer: PullConsumer = self
            .js
            .get_consumer_from_stream(&target.physical_subscription, &stream)
            .await
            .map_err(|e| {
                err(format!(
                    "consumer {} on stream {stream}: {e}",
                    target.physical_subscription
                ))
            })?;
        // The binding names the dead-letter stream; dead letters are published to its subject.
        let dead_letter = match &target.dead_letter {
            Some(dlq) => {
                let mut stream = self
                    .js
                    .get_stream(dlq)
                    .await
                    .map_err(|e| err(format!("dead-letter stream {dlq}: {e}")))?;
                let info = stream
                    .info()
                    .await
                    .map_err(|e| err(format!("dead-letter stream {dlq}: {e}")))?;
                let subject =
                    info.config.subjects.first().cloned().ok_or_else(|| {
                        err(format!("dead-letter stream {dlq} captures no subject"))
                    })?;
                Some(subject)
            }
            None => None,
        };
        Ok(Box::new(NatsConsumer {
            consumer,
            dead_letters: dead_letter.map(|subject| {
                Arc::new(DeadLetters {
                    js: self.js.clone(),
                    subject,
                    consumer: target.physical_subscription.clone(),
                })
            }),
            max_attempts: target.max_delivery_attempts,
        }))
    }
}

/// Where a subscription's dead letters go.
struct DeadLetters {
    js: jetstream::Context,
    /// The subject of the dead-letter stream.
    subject: String,
    /// The subscription's consumer, named in the dead letters' `Nats-Msg-Id`.
    consumer: String,
}

/// A message as its dead letter carries it (its headers and payload), and the `Nats-Msg-Id`
/// naming its stream, sequence and consumer.
struct DeadLetter {
    message: async_nats::Message,
    id: String,
}

impl DeadLetters {
    /// The `Nats-Msg-Id` of the dead letter of a message of this subscription.
    fn id(&self, m: &jetstream::Message) -> Result<String, ClientError> {
        let info = m.info().map_err(err)?;
        Ok(format!(
            "{}:{}:{}",
            info.stream, info.stream_sequence, self.consumer
        ))
    }

    /// Publish a dead letter with its `delivery-count`: the deliveries it had before it was
    /// given up. The caller terminates the message once this returned.
    async fn send(&self, letter: DeadLetter, count: u32) -> Result<(), ClientError> {
        let mut h = letter.message.headers.unwrap_or_default();
        h.insert(DELIVERY_COUNT_HEADER, count.to_string());
        h.insert("Nats-Msg-Id", letter.id);
        self.js
            .publish_with_headers(self.subject.clone(), h, letter.message.payload)
            .await
            .map_err(err)?
            .await
            .map_err(err)?;
        Ok(())
    }
}

struct NatsConsumer {
    consumer: PullConsumer,
    dead_letters: Option<Arc<DeadLetters>>,
    max_attempts: Option<u32>,
}

#[async_trait]
impl Consumer for NatsConsumer {
    async fn next(&mut self) -> Result<Delivery, ClientError> {
        loop {
            let mut batch = self
                .consumer
                .batch()
                .max_messages(1)
                .expires(PULL_WAIT)
                .messages()
                .await
                .map_err(err)?;
            let Some(m) = batch.next().await else {
                continue;
            };
            let m = m.map_err(err)?;
            let delivered = m.info().map_err(err)?.delivered;
            let attempt = u32::try_from(delivered).unwrap_or(u32::MAX).max(1);
            if let (Some(max), Some(dl)) = (self.max_attempts, &self.dead_letters)
                && attempt > max
            {
                // Copied, then terminated on the subscription.
                let id = dl.id(&m)?;
                let (message, acker) = m.split();
                dl.send(DeadLetter { message, id }, attempt - 1).await?;
                acker.double_ack_with(AckKind::Term).await.map_err(err)?;
                continue;
            }
            let id = match &self.dead_letters {
                Some(dl) => Some(dl.id(&m)?),
                None => None,
            };
            let (message, acker) = m.split();
            let delivered = self::message(&message);
            // What a reject copies to the dead-letter stream.
            let dead_letter = self
                .dead_letters
                .clone()
                .zip(id)
                .map(|(dl, id)| (dl, DeadLetter { message, id }));
            return Ok(Delivery::new(
                delivered,
                attempt,
                Box::new(NatsSettle {
                    acker,
                    attempt,
                    dead_letter,
                }),
            ));
        }
    }
}

struct NatsSettle {
    acker: jetstream::message::Acker,
    /// Deliveries so far, this one included.
    attempt: u32,
    /// Where a reject sends it, and its dead letter, when the subscription has a dead-letter
    /// stream.
    dead_letter: Option<(Arc<DeadLetters>, DeadLetter)>,
}

#[async_trait]
impl Settle for NatsSettle {
    async fn ack(self: Box<Self>) -> Result<(), ClientError> {
        self.acker.double_ack_with(AckKind::Ack).await.map_err(err)
    }

    async fn nack(self: Box<Self>) -> Result<(), ClientError> {
        self.acker
            .double_ack_with(AckKind::Nak(None))
            .await
            .map_err(err)
    }

    async fn reject(self: Box<Self>) -> Result<(), ClientError> {
        let NatsSettle {
            acker,
            attempt,
            dead_letter,
        } = *self;
        if let Some((dl, letter)) = dead_letter
            && let Err(e) = dl.send(letter, attempt).await
        {
            // Not dead-lettered: have it delivered again (or after the ack wait, if this
            // fails too).
            let _ = acker.ack_with(AckKind::Nak(None)).await;
            return Err(e);
        }
        acker.double_ack_with(AckKind::Term).await.map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloudevents_attributes_and_the_key_round_trip_through_headers() {
        let mut m = Message::new(b"x".to_vec())
            .with_key("k")
            .with_header("trace", "1");
        m.time = Some("2026-12-01T00:00:00Z".into());
        let h = headers(&m);
        assert_eq!(
            h.get("ce-specversion").map(|v| v.as_str()),
            Some("1.0"),
            "binary mode, ce- prefix"
        );
        assert_eq!(h.get(KEY_HEADER).map(|v| v.as_str()), Some("k"));
        let mut wire = async_nats::Message {
            subject: "s".into(),
            reply: None,
            payload: m.payload.clone().into(),
            headers: Some(h),
            status: None,
            description: None,
            length: 0,
        };
        assert_eq!(message(&wire), m);
        // Server headers and the dead-letter count are not application headers.
        if let Some(h) = wire.headers.as_mut() {
            h.insert("Nats-Msg-Id", "x");
            h.insert(DELIVERY_COUNT_HEADER, "5");
        }
        assert_eq!(message(&wire), m);
    }

    #[test]
    fn settings_come_from_the_binding_and_never_print_secrets() {
        let entries = |extra: &[(&str, &str)]| {
            let mut e = std::collections::BTreeMap::from([
                ("type".to_string(), BINDING_TYPE.to_string()),
                ("uri".to_string(), "nats://a:4222, tls://b:4222".to_string()),
            ]);
            for (k, v) in extra {
                e.insert(k.to_string(), v.to_string());
            }
            Binding::from_entries(e).expect("binding")
        };
        let s = Settings::from_binding(&entries(&[
            ("username", "app"),
            ("password", "pw-distinctive"),
        ]))
        .expect("settings");
        assert_eq!(s.servers, ["nats://a:4222", "tls://b:4222"]);
        assert!(s.require_tls);
        assert_eq!(
            s.credentials,
            Credentials::UserPassword("app".into(), "pw-distinctive".into())
        );
        assert!(!format!("{s:?}").contains("pw-distinctive"));
        let t = Settings::from_binding(&entries(&[(TOKEN_KEY, "tok")])).expect("settings");
        assert_eq!(t.credentials, Credentials::Token("tok".into()));
        assert!(
            Settings {
                ca: Some("not a pem".into()),
                ..t
            }
            .options()
            .is_err()
        );
    }
}
