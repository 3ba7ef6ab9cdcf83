//! NATS JetStream backend: one stream per topic (subject `<prefix>.<topic>`), one durable pull
//! consumer per subscription, and a `<stream>-dlq` stream (subject `<prefix>.<topic>.dlq`) for
//! topics whose subscriptions dead-letter.
//!
//! Ownership is recorded in the metadata of each stream and consumer
//! ([`OWNER_METADATA`]), so nothing outside the server is needed to know what is ours; objects
//! without our marker are never changed or deleted.
//!
//! Dead letters are client-side: a consumer's MaxDeliver is `maxDeliveryAttempts + 1`, and
//! the client copies a message delivered more than `maxDeliveryAttempts` times to the
//! dead-letter stream (deduplicated by `Nats-Msg-Id`) before terminating it. The server's own
//! MaxDeliver only raises an advisory on core NATS, which is lost when nobody listens at that
//! moment and carries the sequence, not the message; copying the message keeps payload,
//! headers and delivery count together, as the Kafka and Redis backends do. The extra
//! delivery MaxDeliver allows is the one the client dead-letters; the limit still stops
//! redelivery for clients that do not dead-letter.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{
    Backend, BrokerError, BrokerErrorKind, Capabilities, ConnectionInfo, DesiredObject,
    DesiredState, Immutable, ObjectKey, ObjectKind, Scope, naming,
};
use crate::Error;
use crate::api::{NatsJetStreamSpec, NatsStorage, TopicSpec};
use crate::secrets::ResolvedSecrets;

mod backend;
pub mod data;
mod errors;

pub use backend::NatsBackend;

/// What this broker can change in place: everything but a stream's storage type.
pub const CAPABILITIES: Capabilities = Capabilities {
    partitions: false,
    immutable_config: &[(STORAGE, Immutable::StreamStorage)],
};

/// Metadata key on streams and consumers: the owning MessageBroker (`namespace/name`).
pub const OWNER_METADATA: &str = "switchyard.dev/owner";
/// Suffix of a topic's dead-letter stream.
pub const DLQ_SUFFIX: &str = "-dlq";
/// Last subject token of a dead-letter stream's subject.
pub const DLQ_SUBJECT_TOKEN: &str = "dlq";

/// Stream config: its subject.
pub const SUBJECTS: &str = "subjects";
/// Stream config: how long messages are kept (`unlimited` or whole seconds / milliseconds).
pub const MAX_AGE: &str = "max-age";
/// Stream config: `file` or `memory`; fixed at creation.
pub const STORAGE: &str = "storage";
/// Stream config: replicas.
pub const REPLICAS: &str = "replicas";
/// Consumer config: deliveries before the server stops redelivering (`-1`: no limit).
pub const MAX_DELIVER: &str = "max-deliver";
/// Consumer config: unacknowledged messages in flight (`1` keeps an ordered topic in order).
pub const MAX_ACK_PENDING: &str = "max-ack-pending";
/// Consumer config: how long a delivery may stay unacknowledged before it is redelivered.
pub const ACK_WAIT: &str = "ack-wait";
/// Consumer config: always `explicit`.
pub const ACK_POLICY: &str = "ack-policy";

/// How long a delivered message may stay unacknowledged (a consumer that died) before the
/// server redelivers it.
pub const ACK_WAIT_DEFAULT: std::time::Duration = std::time::Duration::from_secs(30);
/// In-flight messages per consumer on unordered topics (the server's default).
const MAX_ACK_PENDING_DEFAULT: i64 = 1000;

/// Stream names: letters, digits, `-` and `_` (no `.`, which JetStream reserves for subjects).
pub const STREAM_NAMES: naming::NamingRules = naming::NamingRules {
    separator: '_',
    extra_chars: "_-",
    max_len: 200,
    replacement: '-',
    must_start_with_letter: false,
};

/// Separator between stream and consumer in a subscription's [`ObjectKey`] name.
const CONSUMER_SEPARATOR: char = '/';

/// The [`ObjectKey`] name of consumer `consumer` on `stream`.
pub fn consumer_key_name(stream: &str, consumer: &str) -> String {
    format!("{stream}{CONSUMER_SEPARATOR}{consumer}")
}

/// Split a subscription key name into stream and consumer.
fn split_consumer_key(name: &str) -> Option<(&str, &str)> {
    name.split_once(CONSUMER_SEPARATOR)
}

/// The subject prefix: the spec's, or `<namespace>.<name>` with dots in the name as `_`
/// (so every MessageBroker's subjects start with exactly two tokens of its own).
pub fn subject_prefix(scope: &Scope, spec: &NatsJetStreamSpec) -> String {
    spec.subject_prefix
        .clone()
        .unwrap_or_else(|| format!("{}.{}", scope.namespace, scope.name.replace('.', "_")))
}

/// `unlimited`, or the duration in whole seconds (`604800s`) or milliseconds (`1500ms`).
pub fn format_age(age: std::time::Duration) -> String {
    if age.is_zero() {
        "unlimited".to_string()
    } else if age.subsec_millis() == 0 {
        format!("{}s", age.as_secs())
    } else {
        format!("{}ms", age.as_millis())
    }
}

fn storage_name(storage: NatsStorage) -> &'static str {
    match storage {
        NatsStorage::File => "file",
        NatsStorage::Memory => "memory",
    }
}

/// The objects the spec asks for on this broker.
pub fn desired(
    scope: &Scope,
    spec: &NatsJetStreamSpec,
    topics: &[TopicSpec],
) -> Result<DesiredState, Error> {
    let mut state = DesiredState::default();
    let prefix = subject_prefix(scope, spec);
    let replicas = spec.replicas.unwrap_or(1).to_string();
    let storage = storage_name(spec.storage).to_string();
    let mut with_partitions = Vec::new();
    let mut ordered = Vec::new();

    for topic in topics {
        let stream = naming::scoped(&STREAM_NAMES, scope, &[&topic.name], DLQ_SUFFIX.len());
        let subject = format!("{prefix}.{}", topic.name);
        let retention = topic
            .retention_duration()
            .map_err(|e| Error::InvalidSpec(format!("topic {:?}: {e}", topic.name)))?;
        let stream_config = |subject: &str, age: Option<std::time::Duration>| {
            BTreeMap::from([
                (SUBJECTS.to_string(), subject.to_string()),
                (MAX_AGE.to_string(), format_age(age.unwrap_or_default())),
                (STORAGE.to_string(), storage.clone()),
                (REPLICAS.to_string(), replicas.clone()),
            ])
        };
        if topic.partitions.is_some() {
            with_partitions.push(topic.name.clone());
        }
        if topic.ordered {
            ordered.push(topic.name.clone());
        }
        state.objects.push(DesiredObject {
            key: ObjectKey::new(ObjectKind::Topic, stream.clone()),
            logical: topic.name.clone(),
            parent: None,
            partitions: None,
            config: stream_config(&subject, retention),
        });
        state.names.insert(topic.name.clone(), subject.clone());

        let dlq = format!("{stream}{DLQ_SUFFIX}");
        let dlq_subject = format!("{subject}.{DLQ_SUBJECT_TOKEN}");
        if topic.subscriptions.iter().any(|s| s.dead_letter.is_some()) {
            // Dead letters are kept until someone removes them: no retention window.
            state.objects.push(DesiredObject {
                key: ObjectKey::new(ObjectKind::DeadLetter, dlq.clone()),
                logical: format!("{}/dlq", topic.name),
                parent: Some(stream.clone()),
                partitions: None,
                config: stream_config(&dlq_subject, None),
            });
        }
        for sub in &topic.subscriptions {
            let logical = format!("{}/{}", topic.name, sub.name);
            let max_deliver = match &sub.dead_letter {
                // One delivery more than the attempts: the client dead-letters that one. The
                // binding names the dead-letter stream; clients publish to its subject.
                Some(dl) => {
                    state.names.insert(format!("{logical}/dlq"), dlq.clone());
                    i64::from(dl.max_delivery_attempts) + 1
                }
                None => -1,
            };
            let max_ack_pending = if topic.ordered {
                1
            } else {
                MAX_ACK_PENDING_DEFAULT
            };
            state.objects.push(DesiredObject {
                key: ObjectKey::new(
                    ObjectKind::Subscription,
                    consumer_key_name(&stream, &sub.name),
                ),
                logical: logical.clone(),
                parent: Some(stream.clone()),
                partitions: None,
                config: BTreeMap::from([
                    (ACK_POLICY.to_string(), "explicit".to_string()),
                    (ACK_WAIT.to_string(), format_age(ACK_WAIT_DEFAULT)),
                    (MAX_DELIVER.to_string(), max_deliver.to_string()),
                    (MAX_ACK_PENDING.to_string(), max_ack_pending.to_string()),
                ]),
            });
            state.names.insert(logical, sub.name.clone());
        }
    }

    if !with_partitions.is_empty() {
        state.notes.push(format!(
            "JetStream streams have no partitions; the partitions hint is ignored for: {}",
            with_partitions.join(", ")
        ));
    }
    if !ordered.is_empty() {
        state.notes.push(format!(
            "ordered topics get consumers with max-ack-pending 1 (one message in flight per subscription): {}",
            ordered.join(", ")
        ));
    }
    if state
        .objects
        .iter()
        .any(|o| o.key.kind == ObjectKind::DeadLetter)
    {
        state.notes.push(
            "JetStream's MaxDeliver only raises an advisory; consumers copy messages delivered more than max-delivery-attempts times to the <stream>-dlq stream"
                .to_string(),
        );
    }
    Ok(state)
}

/// Host and port of a `nats://` or `tls://` server URL.
fn host_port(url: &str) -> Option<(String, u16)> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || rest.starts_with('[') => (h, p.parse().ok()?),
        _ => (rest, 4222),
    };
    Some((host.trim_matches(['[', ']']).to_string(), port))
}

/// Refuse server URLs that carry credentials (the schema does too; the operator checks again).
fn servers(spec: &NatsJetStreamSpec) -> Result<Vec<String>, String> {
    if spec.servers.is_empty() {
        return Err("natsJetStream.servers is empty".to_string());
    }
    for s in &spec.servers {
        if s.contains('@') {
            return Err(
                "natsJetStream.servers must not carry credentials; use the Secret references"
                    .to_string(),
            );
        }
        if !(s.starts_with("nats://") || s.starts_with("tls://")) || host_port(s).is_none() {
            return Err(format!(
                "server {s:?} is not a nats://host:port or tls://host:port URL"
            ));
        }
    }
    Ok(spec.servers.clone())
}

/// The credentials the spec references, resolved.
fn credentials(
    spec: &NatsJetStreamSpec,
    secrets: &ResolvedSecrets,
) -> Result<data::Credentials, Error> {
    Ok(if let Some(r) = &spec.credentials_secret_ref {
        let (u, p) = secrets.credentials(r)?;
        data::Credentials::UserPassword(u.expose().to_string(), p.expose().to_string())
    } else if let Some(r) = &spec.token_secret_ref {
        data::Credentials::Token(secrets.get(r)?.expose().to_string())
    } else if let Some(r) = &spec.nkey_seed_secret_ref {
        data::Credentials::NKey(secrets.get(r)?.expose().to_string())
    } else if let Some(r) = &spec.creds_secret_ref {
        data::Credentials::Creds(secrets.get(r)?.expose().to_string())
    } else {
        data::Credentials::None
    })
}

/// Connection details for the binding Secret.
pub fn connection_info(
    spec: &NatsJetStreamSpec,
    secrets: &ResolvedSecrets,
) -> Result<ConnectionInfo, Error> {
    let servers = servers(spec).map_err(Error::InvalidSpec)?;
    let (host, port) = host_port(&servers[0])
        .ok_or_else(|| Error::InvalidSpec(format!("server {:?} has no host", servers[0])))?;
    let mut info = ConnectionInfo {
        provider: "nats".into(),
        host: Some(host),
        port: Some(port),
        uri: Some(servers.join(",")),
        extra: BTreeMap::from([("servers".to_string(), servers.join(","))]),
        credentials: super::ca_credentials(secrets, super::enabled_ca(&spec.tls))?,
        ..Default::default()
    };
    if let Some(r) = &spec.credentials_secret_ref {
        let (u, p) = secrets.credentials(r)?;
        info.username = Some(u);
        info.password = Some(p);
    }
    for (key, r) in [
        (data::TOKEN_KEY, &spec.token_secret_ref),
        (data::NKEY_KEY, &spec.nkey_seed_secret_ref),
        (data::CREDS_KEY, &spec.creds_secret_ref),
    ] {
        if let Some(r) = r {
            info.credentials
                .insert(key.to_string(), secrets.get(r)?.clone());
        }
    }
    Ok(info)
}

/// A client for this endpoint. Connects lazily: a server that is down does not fail this
/// call, only unusable settings (a malformed URL or CA bundle, a missing Secret key) do.
pub async fn connect(
    spec: &NatsJetStreamSpec,
    secrets: &ResolvedSecrets,
    options: &super::ConnectOptions,
) -> Result<Arc<dyn Backend>, BrokerError> {
    let rejected = |m: String| BrokerError::new(BrokerErrorKind::Rejected, m);
    let servers = servers(spec).map_err(rejected)?;
    if spec
        .tls
        .as_ref()
        .is_some_and(|t| t.cert_secret_ref.is_some())
    {
        return Err(rejected(
            "natsJetStream.tls: client certificates are not supported yet; authenticate with credentials, a token, an NKey or a creds file".to_string(),
        ));
    }
    let credentials = credentials(spec, secrets).map_err(|e| rejected(e.to_string()))?;
    let ca = match super::enabled_ca(&spec.tls) {
        Some(r) => Some(
            secrets
                .get(r)
                .map_err(|e| rejected(e.to_string()))?
                .expose()
                .to_string(),
        ),
        None => None,
    };
    let tls = spec.tls.as_ref().is_some_and(|t| t.enabled);
    let settings = data::Settings {
        servers,
        credentials,
        ca,
        require_tls: tls,
    };
    // Fail now on what can never work (a malformed CA bundle or seed).
    settings
        .options()
        .map_err(|e| BrokerError::new(BrokerErrorKind::Tls, e.to_string()))?;
    Ok(Arc::new(NatsBackend::new(settings, options.check_timeout)))
}

/// The NATS JetStream driver: what the rest of Switchyard knows about NATS.
pub struct NatsJetStream;

impl super::Driver for NatsJetStream {
    const TYPE: crate::api::BrokerType = crate::api::BrokerType::NatsJetStream;
    const BINDING_TYPE: &'static str = data::BINDING_TYPE;

    super::driver::forward_to_folder!(NatsJetStreamSpec, nats_jet_stream);

    fn endpoint(spec: &NatsJetStreamSpec) -> serde_json::Value {
        serde_json::json!(&spec.servers)
    }

    fn secret_keys(spec: &NatsJetStreamSpec) -> Vec<(String, String)> {
        let mut keys: Vec<(String, String)> = [
            &spec.token_secret_ref,
            &spec.nkey_seed_secret_ref,
            &spec.creds_secret_ref,
        ]
        .into_iter()
        .flatten()
        .map(|r| r.secret_key())
        .collect();
        if let Some(c) = &spec.credentials_secret_ref {
            keys.extend(c.secret_keys());
        }
        if let Some(t) = &spec.tls {
            keys.extend(t.secret_keys());
        }
        keys
    }

    fn binding_has_credentials(spec: &NatsJetStreamSpec) -> bool {
        spec.credentials_secret_ref.is_some()
            || spec.token_secret_ref.is_some()
            || spec.nkey_seed_secret_ref.is_some()
            || spec.creds_secret_ref.is_some()
    }

    /// The app's credential is of the kind the env uses (a user and password when it uses none).
    fn with_app_credentials(
        spec: &NatsJetStreamSpec,
        app: &crate::api::LocalSecretRef,
    ) -> NatsJetStreamSpec {
        let same =
            |r: &Option<crate::api::SecretKeyRef>, key: &str| r.as_ref().map(|_| app.key(key));
        let mut view = NatsJetStreamSpec {
            credentials_secret_ref: spec
                .credentials_secret_ref
                .as_ref()
                .map(|_| app.credentials()),
            token_secret_ref: same(&spec.token_secret_ref, "token"),
            nkey_seed_secret_ref: same(&spec.nkey_seed_secret_ref, "nkeySeed"),
            creds_secret_ref: same(&spec.creds_secret_ref, "creds"),
            ..spec.clone()
        };
        if !Self::binding_has_credentials(spec) {
            view.credentials_secret_ref = Some(app.credentials());
        }
        view
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{CredentialsSecretRef, SecretKeyRef};
    use crate::brokers::spec_fixtures::{sub, topic};

    fn spec() -> NatsJetStreamSpec {
        serde_json::from_value(serde_json::json!({"servers": ["nats://n:4222"]})).expect("spec")
    }

    #[test]
    fn maps_streams_consumers_and_dead_letters() {
        let mut t = topic("order.created");
        t.retention = Some("168h".into());
        t.partitions = Some(6);
        t.subscriptions = vec![sub("billing", None), sub("shipping", Some(5))];
        let mut ledger = topic("ledger");
        ledger.ordered = true;
        ledger.subscriptions = vec![sub("audit", None)];
        let scope = Scope::new("shop", "bus.v1");
        let d = desired(&scope, &spec(), &[t, ledger]).expect("maps");

        let keys: Vec<String> = d.objects.iter().map(|o| o.key.to_string()).collect();
        assert_eq!(
            keys,
            vec![
                "topic/shop_bus__v1_order-created",
                "deadLetter/shop_bus__v1_order-created-dlq",
                "subscription/shop_bus__v1_order-created/billing",
                "subscription/shop_bus__v1_order-created/shipping",
                "topic/shop_bus__v1_ledger",
                "subscription/shop_bus__v1_ledger/audit",
            ]
        );
        let stream = &d.objects[0].config;
        assert_eq!(stream[SUBJECTS], "shop.bus_v1.order.created");
        assert_eq!(stream[MAX_AGE], "604800s");
        assert_eq!(stream[STORAGE], "file");
        assert_eq!(stream[REPLICAS], "1");
        assert_eq!(
            d.objects[1].config[SUBJECTS],
            "shop.bus_v1.order.created.dlq"
        );
        assert_eq!(d.objects[1].config[MAX_AGE], "unlimited");
        assert_eq!(d.objects[2].config[MAX_DELIVER], "-1");
        assert_eq!(
            d.objects[3].config[MAX_DELIVER], "6",
            "attempts + the dead-lettered one"
        );
        assert_eq!(d.objects[3].config[ACK_POLICY], "explicit");
        assert_eq!(d.objects[3].config[MAX_ACK_PENDING], "1000");
        assert_eq!(d.objects[5].config[MAX_ACK_PENDING], "1", "ordered");
        assert_eq!(d.names["order.created"], "shop.bus_v1.order.created");
        assert_eq!(d.names["order.created/shipping"], "shipping");
        assert_eq!(
            d.names["order.created/shipping/dlq"],
            "shop_bus__v1_order-created-dlq"
        );
        assert!(!d.names.contains_key("order.created/billing/dlq"));
        assert!(d.notes.iter().any(|n| n.contains("partitions")));
    }

    #[test]
    fn the_subject_prefix_and_storage_come_from_the_spec() {
        let mut s = spec();
        s.subject_prefix = Some("orders.prd".into());
        s.storage = NatsStorage::Memory;
        s.replicas = Some(3);
        let d = desired(&Scope::new("shop", "bus"), &s, &[topic("created")]).expect("maps");
        assert_eq!(d.objects[0].config[SUBJECTS], "orders.prd.created");
        assert_eq!(d.objects[0].config[STORAGE], "memory");
        assert_eq!(d.objects[0].config[REPLICAS], "3");
    }

    #[test]
    fn long_names_leave_room_for_the_dead_letter_suffix() {
        let mut t = topic(&"t".repeat(100));
        t.subscriptions = vec![sub("s", Some(5))];
        let scope = Scope::new("n".repeat(63), "m".repeat(63));
        let d = desired(&scope, &spec(), &[t]).expect("maps");
        let dlq = &d.objects[1].key.name;
        assert!(dlq.len() <= STREAM_NAMES.max_len, "{dlq}");
        assert!(dlq.ends_with(DLQ_SUFFIX));
        assert!(!d.objects[0].key.name.contains(CONSUMER_SEPARATOR));
        assert!(!d.objects[0].key.name.contains('.'));
    }

    #[test]
    fn consumer_keys_split_back() {
        let name = consumer_key_name("shop_bus_t", "billing");
        assert_eq!(split_consumer_key(&name), Some(("shop_bus_t", "billing")));
        let key = ObjectKey::new(ObjectKind::Subscription, name.clone());
        assert_eq!(ObjectKey::parse(&key.to_string()), Some(key));
    }

    #[test]
    fn connection_info_copies_credentials_and_lists_servers() {
        let mut s = spec();
        s.servers = vec!["nats://a.svc:4222".into(), "nats://b.svc:4223".into()];
        s.credentials_secret_ref = Some(CredentialsSecretRef {
            name: "nats".into(),
            username_key: "username".into(),
            password_key: "password".into(),
        });
        let mut secrets = ResolvedSecrets::default();
        secrets.insert("nats", "username", "app");
        secrets.insert("nats", "password", "hunter2-distinctive");
        let info = connection_info(&s, &secrets).expect("info");
        assert_eq!(info.provider, "nats");
        assert_eq!(info.host.as_deref(), Some("a.svc"));
        assert_eq!(info.port, Some(4222));
        assert_eq!(
            info.uri.as_deref(),
            Some("nats://a.svc:4222,nats://b.svc:4223")
        );
        assert_eq!(info.username.as_ref().map(|v| v.expose()), Some("app"));
        assert_eq!(
            info.password.as_ref().map(|v| v.expose()),
            Some("hunter2-distinctive")
        );

        let mut t = spec();
        t.token_secret_ref = Some(SecretKeyRef {
            name: "nats".into(),
            key: "token".into(),
        });
        let mut secrets = ResolvedSecrets::default();
        secrets.insert("nats", "token", "tok-distinctive");
        let info = connection_info(&t, &secrets).expect("info");
        assert_eq!(
            info.credentials.get(data::TOKEN_KEY).map(|v| v.expose()),
            Some("tok-distinctive")
        );
        assert!(info.username.is_none());
    }

    #[test]
    fn servers_with_credentials_or_another_scheme_are_refused() {
        let mut s = spec();
        s.servers = vec!["nats://u:pw-distinctive@n:4222".into()];
        let err = servers(&s).expect_err("credentials in url");
        assert!(!err.contains("pw-distinctive"), "{err}");
        s.servers = vec!["http://n:4222".into()];
        assert!(servers(&s).is_err());
    }

    #[tokio::test]
    async fn connect_is_lazy_but_refuses_unusable_settings() {
        let mut s = spec();
        s.servers = vec!["nats://127.0.0.1:1".into()];
        assert!(
            connect(&s, &ResolvedSecrets::default(), &Default::default())
                .await
                .is_ok(),
            "nothing listens, and that is for check() to say"
        );
        s.tls = Some(crate::api::TlsSpec {
            enabled: true,
            ca_secret_ref: Some(SecretKeyRef {
                name: "ca".into(),
                key: "ca.crt".into(),
            }),
            cert_secret_ref: None,
            key_secret_ref: None,
        });
        let mut secrets = ResolvedSecrets::default();
        secrets.insert("ca", "ca.crt", "not a pem");
        let err = connect(&s, &secrets, &Default::default())
            .await
            .err()
            .expect("malformed pem");
        assert_eq!(err.kind, BrokerErrorKind::Tls, "{err}");
    }

    #[tokio::test]
    async fn the_check_waits_as_long_as_configured() {
        let server = crate::brokers::SilentServer::start().await;
        let options = crate::brokers::ConnectOptions {
            check_timeout: std::time::Duration::from_millis(300),
            ..Default::default()
        };
        let mut s = spec();
        s.servers = vec![format!("nats://127.0.0.1:{}", server.port())];
        let backend = connect(&s, &ResolvedSecrets::default(), &options)
            .await
            .expect("lazy");
        let err = backend
            .check()
            .await
            .expect_err("a server that never answers");
        assert_eq!(err.kind, BrokerErrorKind::Timeout, "{err}");
        assert!(err.message.contains("0.3s"), "{}", err.message);
    }
}
