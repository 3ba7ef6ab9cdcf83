//! RabbitMQ backend over AMQP 0-9-1 (lapin), with the management HTTP API for observation.
//!
//! Mapping (see DESIGN.md): a topic is a durable topic exchange `<ns>.<name>.<topic>`; a
//! subscription is a durable queue `<ns>.<name>.<topic>.<sub>` bound to it with `#`; retention is
//! `x-message-ttl` on the queues; dead-lettering is a fanout exchange `….dlx` plus a queue `….dlq`,
//! wired with `x-dead-letter-exchange` (and `x-delivery-limit` on quorum queues).
//!
//! RabbitMQ never changes queue arguments in place (a redeclare with other arguments fails with
//! PRECONDITION_FAILED), so every setting is listed in [`CAPABILITIES`] as immutable: the shared
//! planner reports the difference instead of retrying forever.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{
    Backend, BrokerError, BrokerErrorKind, Capabilities, ConnectionInfo, DesiredObject,
    DesiredState, ObjectKey, ObjectKind, Scope, naming,
};
use crate::Error;
use crate::api::{QueueType, RabbitMqSpec, TopicSpec};
use crate::secrets::ResolvedSecrets;

mod client;
pub mod data;
mod endpoint;
mod management;
mod pooled;

pub use endpoint::Endpoint;

/// Queue argument: queue type (`quorum` or `classic`).
pub const ARG_QUEUE_TYPE: &str = "x-queue-type";
/// Queue argument: message TTL in milliseconds (the topic's retention).
pub const ARG_MESSAGE_TTL: &str = "x-message-ttl";
/// Queue argument: exchange that receives dead-lettered messages.
pub const ARG_DEAD_LETTER_EXCHANGE: &str = "x-dead-letter-exchange";
/// Queue argument: deliveries before a message is dead-lettered (quorum queues only).
pub const ARG_DELIVERY_LIMIT: &str = "x-delivery-limit";
/// Argument on exchanges and queues holding the owning MessageBroker (`namespace/name`).
/// RabbitMQ stores unknown `x-` arguments and the management API returns them.
pub const ARG_OWNER: &str = "x-switchyard-owner";
/// Exchange setting: exchange type (`topic` or `fanout`).
pub const CFG_EXCHANGE_TYPE: &str = "type";
/// Exchange and queue setting: survives a broker restart (always `true` for what we create).
pub const CFG_DURABLE: &str = "durable";
/// The value reported for a queue argument that is not set, so that adding or removing one is
/// a visible difference rather than silently ignored.
pub const UNSET: &str = "unset";

/// Queue arguments this backend manages; observe reports each of them (or [`UNSET`]).
pub const MANAGED_QUEUE_ARGS: [&str; 4] = [
    ARG_QUEUE_TYPE,
    ARG_MESSAGE_TTL,
    ARG_DEAD_LETTER_EXCHANGE,
    ARG_DELIVERY_LIMIT,
];

/// Routing key of every binding: a topic exchange bound with `#` delivers every message, and a
/// fanout exchange ignores the key.
pub const BINDING_KEY: &str = "#";

/// Separator between exchange and queue in a binding's key name (`<exchange>-><queue>`). `>` never
/// occurs in a physical name, so the first `->` is always the separator.
const BINDING_SEPARATOR: &str = "->";
const DLX_SUFFIX: &str = ".dlx";
const DLQ_SUFFIX: &str = ".dlq";

/// What this broker can change in place: nothing. Exchanges and queues keep the arguments they
/// were declared with.
pub const CAPABILITIES: Capabilities = Capabilities {
    partitions: false,
    immutable_config: &[
        (ARG_QUEUE_TYPE, super::Immutable::QueueArguments),
        (ARG_MESSAGE_TTL, super::Immutable::QueueArguments),
        (ARG_DEAD_LETTER_EXCHANGE, super::Immutable::QueueArguments),
        (ARG_DELIVERY_LIMIT, super::Immutable::QueueArguments),
        (CFG_EXCHANGE_TYPE, super::Immutable::QueueArguments),
        (CFG_DURABLE, super::Immutable::QueueArguments),
    ],
};

/// What a key names on the broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Entity {
    /// An exchange.
    Exchange(String),
    /// A queue.
    Queue(String),
    /// A binding from an exchange to a queue with [`BINDING_KEY`].
    Binding {
        /// Source exchange.
        exchange: String,
        /// Destination queue.
        queue: String,
    },
}

impl Entity {
    /// What a key names; `None` for kinds this backend never creates.
    pub(crate) fn of(key: &ObjectKey) -> Option<Entity> {
        match key.kind {
            ObjectKind::Topic => Some(Entity::Exchange(key.name.clone())),
            ObjectKind::Queue => Some(Entity::Queue(key.name.clone())),
            ObjectKind::DeadLetter if key.name.ends_with(DLX_SUFFIX) => {
                Some(Entity::Exchange(key.name.clone()))
            }
            ObjectKind::DeadLetter if key.name.ends_with(DLQ_SUFFIX) => {
                Some(Entity::Queue(key.name.clone()))
            }
            ObjectKind::Binding => {
                let (exchange, queue) = key.name.split_once(BINDING_SEPARATOR)?;
                Some(Entity::Binding {
                    exchange: exchange.to_string(),
                    queue: queue.to_string(),
                })
            }
            ObjectKind::DeadLetter | ObjectKind::Subscription => None,
        }
    }
}

/// The key of the binding from `exchange` to `queue`.
pub fn binding_key(exchange: &str, queue: &str) -> ObjectKey {
    ObjectKey::new(
        ObjectKind::Binding,
        format!("{exchange}{BINDING_SEPARATOR}{queue}"),
    )
}

fn queue_type_name(t: QueueType) -> &'static str {
    match t {
        QueueType::Quorum => "quorum",
        QueueType::Classic => "classic",
    }
}

fn exchange_config(kind: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (CFG_EXCHANGE_TYPE.to_string(), kind.to_string()),
        (CFG_DURABLE.to_string(), "true".to_string()),
    ])
}

fn queue_config(
    queue_type: QueueType,
    ttl_ms: Option<u128>,
    dead_letter: Option<(&str, Option<i32>)>,
) -> BTreeMap<String, String> {
    let mut config = BTreeMap::from([
        (CFG_DURABLE.to_string(), "true".to_string()),
        (
            ARG_QUEUE_TYPE.to_string(),
            queue_type_name(queue_type).to_string(),
        ),
    ]);
    let opt = |v: Option<String>| v.unwrap_or_else(|| UNSET.to_string());
    config.insert(
        ARG_MESSAGE_TTL.to_string(),
        opt(ttl_ms.map(|t| t.to_string())),
    );
    config.insert(
        ARG_DEAD_LETTER_EXCHANGE.to_string(),
        opt(dead_letter.map(|(dlx, _)| dlx.to_string())),
    );
    config.insert(
        ARG_DELIVERY_LIMIT.to_string(),
        opt(dead_letter
            .and_then(|(_, limit)| limit)
            .map(|l| l.to_string())),
    );
    config
}

/// The objects the spec asks for on this broker, parents first: dead-letter exchanges and
/// queues, topic exchanges, subscription queues, then bindings.
pub fn desired(
    scope: &Scope,
    spec: &RabbitMqSpec,
    topics: &[TopicSpec],
) -> Result<DesiredState, Error> {
    let mut objects = Vec::new();
    let mut names = BTreeMap::new();
    let mut notes = Vec::new();

    for topic in topics {
        let ttl_ms = topic
            .retention_duration()
            .map_err(|e| Error::InvalidSpec(format!("topic {:?}: {e}", topic.name)))?
            .map(|d| d.as_millis());
        let exchange = naming::scoped(&naming::RABBITMQ, scope, &[&topic.name], 0);
        names.insert(topic.name.clone(), exchange.clone());
        objects.push(DesiredObject {
            key: ObjectKey::new(ObjectKind::Topic, exchange.clone()),
            logical: topic.name.clone(),
            parent: None,
            partitions: None,
            config: exchange_config("topic"),
        });
        if topic.partitions.is_some() {
            notes.push(format!(
                "topic {}: partitions are ignored by RabbitMQ (one exchange fans out to one queue per subscription)",
                topic.name
            ));
        }
        if topic.ordered {
            notes.push(format!(
                "topic {}: RabbitMQ keeps order per queue; consume with a single active consumer to process in order",
                topic.name
            ));
        }
        for sub in &topic.subscriptions {
            let logical = format!("{}/{}", topic.name, sub.name);
            let queue = naming::scoped(&naming::RABBITMQ, scope, &[&topic.name, &sub.name], 0);
            names.insert(logical.clone(), queue.clone());
            let mut dead_letter = None;
            if let Some(dl) = &sub.dead_letter {
                let base = naming::scoped(
                    &naming::RABBITMQ,
                    scope,
                    &[&topic.name, &sub.name],
                    DLX_SUFFIX.len(),
                );
                let dlx = format!("{base}{DLX_SUFFIX}");
                let dlq = format!("{base}{DLQ_SUFFIX}");
                let dl_logical = format!("{logical}/dlq");
                names.insert(dl_logical.clone(), dlq.clone());
                objects.push(DesiredObject {
                    key: ObjectKey::new(ObjectKind::DeadLetter, dlx.clone()),
                    logical: dl_logical.clone(),
                    parent: None,
                    partitions: None,
                    config: exchange_config("fanout"),
                });
                objects.push(DesiredObject {
                    key: ObjectKey::new(ObjectKind::DeadLetter, dlq.clone()),
                    logical: dl_logical.clone(),
                    parent: Some(dlx.clone()),
                    partitions: None,
                    config: queue_config(spec.queue_type, ttl_ms, None),
                });
                objects.push(DesiredObject {
                    key: binding_key(&dlx, &dlq),
                    logical: dl_logical,
                    parent: Some(dlx.clone()),
                    partitions: None,
                    config: BTreeMap::new(),
                });
                let limit = match spec.queue_type {
                    QueueType::Quorum => Some(dl.max_delivery_attempts),
                    QueueType::Classic => {
                        notes.push(format!(
                            "subscription {logical}: classic queues have no delivery limit; messages go to the dead-letter queue when rejected without requeue or expired (use queueType Quorum for maxDeliveryAttempts)"
                        ));
                        None
                    }
                };
                dead_letter = Some((dlx, limit));
            }
            objects.push(DesiredObject {
                key: ObjectKey::new(ObjectKind::Queue, queue.clone()),
                logical: logical.clone(),
                parent: Some(exchange.clone()),
                partitions: None,
                config: queue_config(
                    spec.queue_type,
                    ttl_ms,
                    dead_letter.as_ref().map(|(dlx, l)| (dlx.as_str(), *l)),
                ),
            });
            objects.push(DesiredObject {
                key: binding_key(&exchange, &queue),
                logical,
                parent: Some(exchange.clone()),
                partitions: None,
                config: BTreeMap::new(),
            });
        }
    }
    if spec.management_url.is_none() && !topics.is_empty() {
        notes.push(
            "managementUrl is not set: queue arguments, ownership markers and unacknowledged message counts cannot be read back from RabbitMQ; set managementUrl for full drift detection".to_string(),
        );
    }
    // Parents first: the kind order is the creation order; stable, so spec order is kept within a kind.
    objects.sort_by_key(|o| o.key.kind);
    Ok(DesiredState {
        objects,
        notes,
        names,
    })
}

/// Connection details for the binding Secret.
pub fn connection_info(
    spec: &RabbitMqSpec,
    secrets: &ResolvedSecrets,
) -> Result<ConnectionInfo, Error> {
    let endpoint = Endpoint::from_spec(spec).map_err(|e| Error::InvalidSpec(e.message))?;
    let (username, password) = match &spec.credentials_secret_ref {
        Some(r) => {
            let (u, p) = secrets.credentials(r)?;
            (Some(u), Some(p))
        }
        None => (None, None),
    };
    // `virtual-host` is Spring Cloud Bindings' key; `host`, `port`, `username` and `password`
    // serve it and kube-service-bindings' AMQP reader alike.
    let mut extra = BTreeMap::from([
        ("vhost".to_string(), endpoint.vhost.clone()),
        ("virtual-host".to_string(), endpoint.vhost.clone()),
    ]);
    if let Some(m) = &spec.management_url {
        extra.insert("management-uri".to_string(), m.clone());
    }
    let credentials = super::ca_credentials(secrets, super::enabled_ca(&spec.tls))?;
    Ok(ConnectionInfo {
        provider: "rabbitmq".into(),
        host: Some(endpoint.host.clone()),
        port: Some(endpoint.port),
        uri: Some(endpoint.uri_without_credentials()),
        username,
        password,
        extra,
        credentials,
    })
}

/// A client for this endpoint. Connects lazily: only unusable settings fail here.
pub async fn connect(
    spec: &RabbitMqSpec,
    secrets: &ResolvedSecrets,
    options: &super::ConnectOptions,
) -> Result<Arc<dyn Backend>, BrokerError> {
    let backend =
        client::RabbitMqBackend::new(spec, secrets)?.with_check_timeout(options.check_timeout);
    Ok(Arc::new(backend))
}

fn rejected(message: impl Into<String>) -> BrokerError {
    BrokerError::new(BrokerErrorKind::Rejected, message)
}

/// The RabbitMQ driver: what the rest of Switchyard knows about RabbitMQ.
pub struct RabbitMq;

impl super::Driver for RabbitMq {
    const TYPE: crate::api::BrokerType = crate::api::BrokerType::RabbitMQ;
    const BINDING_TYPE: &'static str = data::BINDING_TYPE;

    super::driver::forward_to_folder!(RabbitMqSpec, rabbitmq);

    fn endpoint(spec: &RabbitMqSpec) -> serde_json::Value {
        serde_json::json!((&spec.url, &spec.host, spec.port, &spec.vhost))
    }

    fn secret_keys(spec: &RabbitMqSpec) -> Vec<(String, String)> {
        let mut keys: Vec<(String, String)> =
            spec.tls.iter().flat_map(|t| t.secret_keys()).collect();
        keys.extend(
            spec.credentials_secret_ref
                .iter()
                .flat_map(|c| c.secret_keys()),
        );
        keys
    }

    fn binding_has_credentials(spec: &RabbitMqSpec) -> bool {
        spec.credentials_secret_ref.is_some()
    }

    fn with_app_credentials(spec: &RabbitMqSpec, app: &crate::api::LocalSecretRef) -> RabbitMqSpec {
        RabbitMqSpec {
            credentials_secret_ref: Some(app.credentials()),
            ..spec.clone()
        }
    }
}

#[cfg(test)]
mod tests;
