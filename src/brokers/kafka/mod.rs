//! Kafka backend: topics through the admin API (rdkafka's `AdminClient`), observation through
//! cluster metadata, DescribeConfigs and ListOffsets.
//!
//! Mapping (see DESIGN.md):
//! - a logical topic is one Kafka topic named `<namespace>.<name>.<topic>` (or
//!   `<topicPrefix><topic>` when the env sets a prefix);
//! - a subscription is a consumer group `<namespace>.<name>.<topic>.<sub>` (or
//!   `<topicPrefix><topic>.<sub>`): consumer groups come into being when a consumer joins, so
//!   nothing is created; the name is recorded in `names`;
//! - dead letters: one topic `<topic>.dlq` per topic, shared by every subscription of that topic
//!   that asks for dead-lettering. Kafka has no broker-side redelivery count, so the consumer
//!   applies `maxDeliveryAttempts` and publishes to that topic;
//! - retention is `retention.ms`; the env's `topicConfig` entries are converged on every topic;
//!   `replication.factor` is reported and compared but never changed in place.
//!
//! Kafka topics cannot carry an ownership marker (configs are a closed set the broker validates;
//! there are no labels). Observations report no owner; the controller fills it in from the
//! `status.owned` lists of the MessageBrokers it watches (`controller::owner_index`).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{
    Backend, BrokerError, BrokerErrorKind, Capabilities, ConnectionInfo, DesiredObject,
    DesiredState, ObjectKey, ObjectKind, Scope, naming,
};
use crate::Error;
use crate::api::{KafkaSpec, TopicSpec};
use crate::secrets::ResolvedSecrets;

mod client;
mod coalesce;
pub mod data;
mod errors;
mod snapshot;

pub use client::KafkaBackend;

/// Topic config key of the retention.
pub const RETENTION_MS: &str = "retention.ms";

/// Pseudo config key carrying the replication factor (from metadata, not a topic config).
pub const REPLICATION_FACTOR: &str = "replication.factor";

/// Topics per DescribeConfigs request. An answer carries every config of every topic (dozens
/// each) until it is reduced to the managed ones: this bounds what is held at once.
pub const DESCRIBE_CHUNK: usize = 250;

/// Topics per piece of a shared-observation refresh (two ListOffsets requests each, and
/// DescribeConfigs by [`DESCRIBE_CHUNK`]): bounds what one refresh holds at once.
pub const READ_CHUNK: usize = 2000;

/// Suffix of dead-letter topics.
const DLQ_SUFFIX: &str = ".dlq";

/// What this broker can change in place.
pub const CAPABILITIES: Capabilities = Capabilities {
    partitions: true,
    immutable_config: &[(REPLICATION_FACTOR, super::Immutable::ReplicationFactor)],
};

/// The physical name of a topic: the prefix (default `<namespace>.<name>.`) plus the topic,
/// leaving room for the `.dlq` suffix so a topic and its dead-letter topic share a stem.
pub fn topic_name(scope: &Scope, spec: &KafkaSpec, topic: &str) -> String {
    match &spec.topic_prefix {
        Some(prefix) => naming::physical(
            &naming::KAFKA,
            &[&format!("{prefix}{topic}")],
            DLQ_SUFFIX.len(),
        ),
        None => naming::scoped(&naming::KAFKA, scope, &[topic], DLQ_SUFFIX.len()),
    }
}

/// The consumer group of a subscription.
pub fn group_name(scope: &Scope, spec: &KafkaSpec, topic: &str, subscription: &str) -> String {
    match &spec.topic_prefix {
        Some(prefix) => naming::physical(
            &naming::KAFKA,
            &[&format!("{prefix}{topic}"), subscription],
            0,
        ),
        None => naming::scoped(&naming::KAFKA, scope, &[topic, subscription], 0),
    }
}

/// The objects the spec asks for on this broker.
pub fn desired(
    scope: &Scope,
    spec: &KafkaSpec,
    topics: &[TopicSpec],
) -> Result<DesiredState, Error> {
    // `replication.factor` in topicConfig is refused by the schema (CEL) at `kubectl apply` and
    // in `switchyard plan`; only `replicationFactor` sets it.
    let mut state = DesiredState::default();
    let mut dlq_topics = Vec::new();
    for t in topics {
        let mut config: BTreeMap<String, String> = spec
            .topic_config
            .iter()
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .filter(|(k, _)| k != REPLICATION_FACTOR)
            .collect();
        if let Some(retention) = t
            .retention_duration()
            .map_err(|e| Error::InvalidSpec(format!("topic {:?}: {e}", t.name)))?
        {
            config.insert(RETENTION_MS.into(), retention.as_millis().to_string());
        }
        if let Some(rf) = spec.replication_factor {
            config.insert(REPLICATION_FACTOR.into(), rf.to_string());
        }
        let physical = topic_name(scope, spec, &t.name);
        state.names.insert(t.name.clone(), physical.clone());
        let wants_dlq = t.subscriptions.iter().any(|s| s.dead_letter.is_some());
        let dlq = format!("{physical}{DLQ_SUFFIX}");
        for s in &t.subscriptions {
            state.names.insert(
                format!("{}/{}", t.name, s.name),
                group_name(scope, spec, &t.name, &s.name),
            );
            if s.dead_letter.is_some() {
                state
                    .names
                    .insert(format!("{}/{}/dlq", t.name, s.name), dlq.clone());
            }
        }
        if wants_dlq {
            dlq_topics.push(DesiredObject {
                key: ObjectKey::new(ObjectKind::DeadLetter, dlq),
                logical: format!("{}/dlq", t.name),
                parent: None,
                partitions: t.partitions,
                config: config.clone(),
            });
        }
        state.objects.push(DesiredObject {
            key: ObjectKey::new(ObjectKind::Topic, physical),
            logical: t.name.clone(),
            parent: None,
            partitions: t.partitions,
            config,
        });
    }
    // Creation order: dead-letter topics first (ObjectKind order), then topics.
    dlq_topics.append(&mut state.objects);
    state.objects = dlq_topics;
    if !state.objects.iter().all(|o| o.partitions.is_some()) {
        state.notes.push(
            "topics without partitions get the broker's default partition count (num.partitions)"
                .into(),
        );
    }
    if state
        .objects
        .iter()
        .any(|o| o.key.kind == ObjectKind::DeadLetter)
    {
        state.notes.push(
            "Kafka does not count deliveries: consumers apply maxDeliveryAttempts and publish failed messages to the topic's .dlq topic"
                .into(),
        );
    }
    Ok(state)
}

/// `security.protocol` for the settings.
pub fn security_protocol(spec: &KafkaSpec) -> &'static str {
    let tls = spec.tls.as_ref().is_some_and(|t| t.enabled);
    match (tls, spec.sasl.is_some()) {
        (false, false) => "PLAINTEXT",
        (true, false) => "SSL",
        (false, true) => "SASL_PLAINTEXT",
        (true, true) => "SASL_SSL",
    }
}

/// Connection details for the binding Secret.
pub fn connection_info(
    spec: &KafkaSpec,
    secrets: &ResolvedSecrets,
) -> Result<ConnectionInfo, Error> {
    let servers = spec.bootstrap_servers.join(",");
    let (host, port) = spec
        .bootstrap_servers
        .first()
        .and_then(|s| s.rsplit_once(':'))
        .map(|(h, p)| (Some(h.to_string()), p.parse().ok()))
        .unwrap_or((None, None));
    let protocol = security_protocol(spec).to_string();
    // Each key twice: kebab-case (Spring Cloud Bindings, the Service Binding convention) and
    // camelCase (Quarkus, kube-service-bindings for kafkajs and node-rdkafka).
    let mut extra = BTreeMap::from([
        ("bootstrap-servers".to_string(), servers.clone()),
        ("bootstrapServers".to_string(), servers.clone()),
        ("security-protocol".to_string(), protocol.clone()),
        ("securityProtocol".to_string(), protocol),
    ]);
    let mut credentials = super::ca_credentials(secrets, super::enabled_ca(&spec.tls))?;
    // `ssl.ca.pem` is librdkafka's own property, which node-rdkafka readers pass through.
    if let Some(pem) = credentials.get("ca.crt").cloned() {
        credentials.insert("ssl.ca.pem".to_string(), pem);
    }
    let (username, password) = match &spec.sasl {
        Some(sasl) => {
            let mechanism = sasl.mechanism.as_str().to_string();
            extra.insert("sasl-mechanism".to_string(), mechanism.clone());
            extra.insert("saslMechanism".to_string(), mechanism);
            let (u, p) = secrets.credentials(&sasl.credentials_secret_ref)?;
            credentials.insert("user".to_string(), u.clone());
            (Some(u), Some(p))
        }
        None => (None, None),
    };
    Ok(ConnectionInfo {
        provider: "apache-kafka".into(),
        host,
        port,
        uri: Some(servers),
        username,
        password,
        extra,
        credentials,
    })
}

/// A client for this endpoint. Connects lazily: only unusable settings (a missing Secret key, a
/// malformed PEM) fail here.
pub async fn connect(
    spec: &KafkaSpec,
    secrets: &ResolvedSecrets,
    options: &super::ConnectOptions,
) -> Result<Arc<dyn Backend>, BrokerError> {
    let config = client::client_config(spec, secrets)
        .map_err(|e| BrokerError::new(BrokerErrorKind::Rejected, e.to_string()))?;
    let backend = KafkaBackend::new(spec, config, options)?;
    Ok(Arc::new(backend))
}

/// The Apache Kafka driver: what the rest of Switchyard knows about Apache Kafka.
pub struct Kafka;

impl super::Driver for Kafka {
    const TYPE: crate::api::BrokerType = crate::api::BrokerType::Kafka;
    const BINDING_TYPE: &'static str = data::BINDING_TYPE;

    super::driver::forward_to_folder!(KafkaSpec, kafka);

    fn endpoint(spec: &KafkaSpec) -> serde_json::Value {
        serde_json::json!(spec.bootstrap_servers)
    }

    fn secret_keys(spec: &KafkaSpec) -> Vec<(String, String)> {
        let mut keys: Vec<(String, String)> =
            spec.tls.iter().flat_map(|t| t.secret_keys()).collect();
        keys.extend(
            spec.sasl
                .iter()
                .flat_map(|s| s.credentials_secret_ref.secret_keys()),
        );
        keys
    }

    fn binding_has_credentials(spec: &KafkaSpec) -> bool {
        spec.sasl.is_some()
    }

    fn with_app_credentials(spec: &KafkaSpec, app: &crate::api::LocalSecretRef) -> KafkaSpec {
        let mut view = spec.clone();
        if let Some(sasl) = &mut view.sasl {
            sasl.credentials_secret_ref = app.credentials();
        }
        view
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        CredentialsSecretRef, DeadLetterSpec, KafkaSaslSpec, SaslMechanism, SecretKeyRef,
        SubscriptionSpec, TlsSpec,
    };

    fn scope() -> Scope {
        Scope::new("shop", "bus")
    }

    fn spec() -> KafkaSpec {
        KafkaSpec {
            bootstrap_servers: vec!["kafka-0:9092".into(), "kafka-1:9092".into()],
            client_id: None,
            replication_factor: Some(3),
            topic_prefix: None,
            topic_config: BTreeMap::from([("cleanup.policy".into(), " delete ".into())]),
            tls: None,
            sasl: None,
        }
    }

    fn topic(name: &str) -> TopicSpec {
        TopicSpec {
            name: name.into(),
            partitions: Some(6),
            retention: Some("168h".into()),
            ordered: false,
            subscriptions: vec![
                SubscriptionSpec {
                    name: "billing".into(),
                    dead_letter: None,
                },
                SubscriptionSpec {
                    name: "shipping".into(),
                    dead_letter: Some(DeadLetterSpec {
                        max_delivery_attempts: 5,
                    }),
                },
            ],
        }
    }

    #[test]
    fn maps_topics_groups_and_dead_letters() {
        let d = desired(&scope(), &spec(), &[topic("order-created")]).expect("desired");
        let keys: Vec<String> = d.objects.iter().map(|o| o.key.to_string()).collect();
        assert_eq!(
            keys,
            [
                "deadLetter/shop.bus.order-created.dlq",
                "topic/shop.bus.order-created"
            ]
        );
        let t = &d.objects[1];
        assert_eq!(t.partitions, Some(6));
        assert_eq!(t.config["retention.ms"], "604800000");
        assert_eq!(t.config["cleanup.policy"], "delete");
        assert_eq!(t.config["replication.factor"], "3");
        assert_eq!(d.objects[0].config, t.config);
        assert_eq!(d.names["order-created"], "shop.bus.order-created");
        assert_eq!(
            d.names["order-created/billing"],
            "shop.bus.order-created.billing"
        );
        assert_eq!(
            d.names["order-created/shipping/dlq"],
            "shop.bus.order-created.dlq"
        );
        assert!(!d.names.contains_key("order-created/billing/dlq"));
    }

    #[test]
    fn prefix_replaces_namespace_and_name() {
        let mut s = spec();
        s.topic_prefix = Some("prd-".into());
        let d = desired(&scope(), &s, &[topic("orders")]).expect("desired");
        assert_eq!(d.names["orders"], "prd-orders");
        assert_eq!(d.names["orders/billing"], "prd-orders.billing");
    }

    #[test]
    fn long_names_leave_room_for_the_dlq_suffix() {
        let s = Scope::new("n".repeat(63), "b".repeat(63));
        let long = format!("t{}", "x".repeat(99));
        let d = desired(&s, &spec(), &[topic(&long)]).expect("desired");
        for o in &d.objects {
            assert!(o.key.name.len() <= 249, "{}", o.key.name);
        }
        assert_eq!(
            d.objects[0].key.name,
            format!("{}.dlq", d.objects[1].key.name)
        );
    }

    #[test]
    fn unset_settings_are_not_converged() {
        let mut s = spec();
        s.replication_factor = None;
        s.topic_config.clear();
        let mut t = topic("a");
        t.retention = None;
        t.partitions = None;
        t.subscriptions.clear();
        let d = desired(&scope(), &s, &[t]).expect("desired");
        assert_eq!(d.objects.len(), 1);
        assert!(d.objects[0].config.is_empty());
        assert!(d.notes.iter().any(|n| n.contains("num.partitions")));
    }

    #[test]
    fn replication_factor_comes_only_from_replication_factor() {
        let mut s = spec();
        s.replication_factor = None;
        s.topic_config
            .insert("replication.factor".into(), "3".into());
        let d = desired(&scope(), &s, &[topic("a")]).expect("desired");
        assert_eq!(d.objects[0].config.get(REPLICATION_FACTOR), None);
        s.replication_factor = Some(2);
        let d = desired(&scope(), &s, &[topic("a")]).expect("desired");
        assert_eq!(
            d.objects[0]
                .config
                .get(REPLICATION_FACTOR)
                .map(String::as_str),
            Some("2")
        );
    }

    #[tokio::test]
    async fn a_malformed_ca_is_a_tls_error_at_connect() {
        let mut s = spec();
        s.tls = Some(TlsSpec {
            enabled: true,
            ca_secret_ref: Some(SecretKeyRef {
                name: "ca".into(),
                key: "ca.crt".into(),
            }),
            cert_secret_ref: None,
            key_secret_ref: None,
        });
        let mut secrets = ResolvedSecrets::default();
        secrets.insert("ca", "ca.crt", "not a certificate");
        let Err(err) = connect(&s, &secrets, &Default::default()).await else {
            panic!("a malformed CA must be refused");
        };
        assert_eq!(err.kind, BrokerErrorKind::Tls, "{err:?}");
        // Without the Secret key the settings are unusable.
        let Err(err) = connect(&s, &ResolvedSecrets::default(), &Default::default()).await else {
            panic!("a missing CA key must be refused");
        };
        assert_eq!(err.kind, BrokerErrorKind::Rejected, "{err:?}");
    }

    #[test]
    fn connection_info_has_servers_and_credentials() {
        let mut s = spec();
        s.sasl = Some(KafkaSaslSpec {
            mechanism: SaslMechanism::ScramSha512,
            credentials_secret_ref: CredentialsSecretRef {
                name: "kafka-user".into(),
                username_key: "username".into(),
                password_key: "password".into(),
            },
        });
        let mut secrets = ResolvedSecrets::default();
        secrets.insert("kafka-user", "username", "app");
        secrets.insert("kafka-user", "password", "pw");
        let info = connection_info(&s, &secrets).expect("info");
        assert_eq!(info.host.as_deref(), Some("kafka-0"));
        assert_eq!(info.port, Some(9092));
        assert_eq!(info.uri.as_deref(), Some("kafka-0:9092,kafka-1:9092"));
        assert_eq!(info.extra["security-protocol"], "SASL_PLAINTEXT");
        assert_eq!(info.extra["sasl-mechanism"], "SCRAM-SHA-512");
        assert_eq!(info.username.as_ref().map(|v| v.expose()), Some("app"));
        // The keys Quarkus and kube-service-bindings read, beside the kebab-case ones.
        assert_eq!(info.extra["bootstrapServers"], "kafka-0:9092,kafka-1:9092");
        assert_eq!(info.extra["securityProtocol"], "SASL_PLAINTEXT");
        assert_eq!(info.extra["saslMechanism"], "SCRAM-SHA-512");
        assert_eq!(info.credentials["user"].expose(), "app");
        assert!(
            !format!("{info:?}").contains("\"app\""),
            "Debug redacts credentials"
        );
        assert!(connection_info(&s, &ResolvedSecrets::default()).is_err());

        // Without SASL or TLS no credential key appears; with a CA it does, under both names.
        let mut plain = spec();
        let info = connection_info(&plain, &ResolvedSecrets::default()).expect("info");
        assert!(info.credentials.is_empty(), "{:?}", info.credentials.keys());
        assert!(!info.extra.contains_key("saslMechanism"));
        plain.tls = Some(TlsSpec {
            enabled: true,
            ca_secret_ref: Some(SecretKeyRef {
                name: "kafka-ca".into(),
                key: "ca.crt".into(),
            }),
            cert_secret_ref: None,
            key_secret_ref: None,
        });
        let mut ca = ResolvedSecrets::default();
        ca.insert("kafka-ca", "ca.crt", "-----BEGIN CERTIFICATE-----");
        let info = connection_info(&plain, &ca).expect("info");
        assert_eq!(info.extra["securityProtocol"], "SSL");
        for key in ["ca.crt", "ssl.ca.pem"] {
            assert_eq!(
                info.credentials[key].expose(),
                "-----BEGIN CERTIFICATE-----"
            );
        }
    }
}
