//! The `MessageBroker` custom resource (`switchyard.dev/v1alpha1`).
//!
//! Every field carries a doc comment: schemars turns them into the OpenAPI descriptions that
//! `kubectl explain mb.spec...` prints. Validation that the API server can do lives here too,
//! as schema bounds and CEL rules, so a malformed manifest is refused at `kubectl apply`.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::status::MessageBrokerStatus;

/// Upper bound on topics per MessageBroker; keeps CEL cost bounded and objects well under etcd's limit.
pub const MAX_TOPICS: usize = 1000;
/// Upper bound on subscriptions per topic.
pub const MAX_SUBSCRIPTIONS: usize = 32;
/// Upper bound on environments per MessageBroker.
pub const MAX_ENVS: usize = 16;

/// A product's message bus: broker-agnostic topics and subscriptions, and per environment the
/// broker that carries them.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "switchyard.dev",
    version = "v1alpha1",
    kind = "MessageBroker",
    namespaced,
    shortname = "mb",
    category = "switchyard",
    status = "MessageBrokerStatus",
    derive = "PartialEq",
    label("servicebinding.io/provisioned-service", "true"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Envs", type_ = "string", json_path = ".status.envSummary"),
    printcolumn(name = "Topics", type_ = "integer", json_path = ".status.topicCount"),
    printcolumn(name = "Reason", type_ = "string", priority = 1, json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Backlog", type_ = "integer", priority = 1, json_path = ".status.backlog"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 63").message("metadata.name: must be at most 63 characters (it is part of broker-side names)"),
)]
#[x_kube(
    validation = Rule::new("!self.envs.exists(e, e.type == 'AwsSqs') || self.topics.all(t, !has(t.retention) || duration(t.retention) <= duration('336h'))")
        .message("spec.topics[].retention: AWS SQS keeps messages at most 14 days (336h); shorten the retention or use another broker for that env")
        .field_path(".topics"),
    validation = Rule::new("!self.envs.exists(e, e.type == 'AwsSqs') || self.topics.all(t, !has(t.retention) || duration(t.retention) >= duration('60s'))")
        .message("spec.topics[].retention: AWS SQS keeps messages at least 60s; raise the retention")
        .field_path(".topics"),
)]
#[serde(rename_all = "camelCase")]
pub struct MessageBrokerSpec {
    /// Human-friendly name of the bus, shown in tools; not used for broker-side names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub display_name: Option<String>,

    /// What this bus is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,

    /// Fate of the broker-side objects this resource created when they leave the spec or the
    /// resource is deleted: Retain (default) leaves them in place; Delete removes them, but never
    /// one that still holds messages.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// Broker-agnostic topics, provisioned identically in every environment.
    #[serde(default)]
    #[schemars(length(max = 1000))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub topics: Vec<TopicSpec>,

    /// Environments, each with the broker that carries the topics there. Keyed by slug.
    #[schemars(length(min = 1, max = 16))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["slug"]))]
    pub envs: Vec<EnvSpec>,
}

/// What happens to broker-side objects this resource created once they are no longer wanted.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum DeletionPolicy {
    /// Leave them on the broker (default).
    #[default]
    Retain,
    /// Delete them, unless they still hold messages.
    Delete,
}

/// One logical topic. Apps address it as `<resource name>:<topic name>`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TopicSpec {
    /// Topic name: lowercase letters, digits, '-' and '.', starting with a letter, 1 to 100 characters.
    #[schemars(
        length(min = 1, max = 100),
        regex(pattern = r"^[a-z]([a-z0-9.-]*[a-z0-9])?$")
    )]
    pub name: String,

    /// Partition count hint (1 to 1000). Kafka honours it and may only grow it; other brokers
    /// ignore it and say so in status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub partitions: Option<i32>,

    /// How long messages are kept, as a duration such as `168h`, `30m` or `90s` (units h, m, s, ms;
    /// between 1m and 8760h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1m') && duration(self) <= duration('8760h')").message("retention must be between 1m and 8760h (one year)"))]
    pub retention: Option<String>,

    /// Keep messages in order (FIFO queues, ordering keys) where the broker supports it.
    #[serde(default)]
    pub ordered: bool,

    /// Subscriptions: each receives every message of the topic; its consumers compete. Keyed by name.
    #[serde(default)]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub subscriptions: Vec<SubscriptionSpec>,
}

/// A subscription to a topic.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionSpec {
    /// Subscription name: lowercase letters, digits and '-', starting with a letter, 1 to 60 characters.
    #[schemars(
        length(min = 1, max = 60),
        regex(pattern = r"^[a-z]([a-z0-9-]*[a-z0-9])?$")
    )]
    pub name: String,

    /// Send messages that keep failing to a dead-letter destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<DeadLetterSpec>,
}

/// Dead-lettering for a subscription.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterSpec {
    /// Deliveries before a message is dead-lettered (5 to 100; Google Pub/Sub's own bounds).
    #[schemars(range(min = 5, max = 100))]
    pub max_delivery_attempts: i32,
}

/// The broker kinds Switchyard can drive.
#[derive(
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    schemars::JsonSchema,
)]
pub enum BrokerType {
    /// Apache Kafka (or a Kafka-API broker).
    Kafka,
    /// Redis streams.
    Redis,
    /// RabbitMQ over AMQP 0-9-1.
    RabbitMQ,
    /// Google Cloud Pub/Sub.
    GooglePubSub,
    /// AWS SQS with SNS fan-out.
    AwsSqs,
    /// NATS with JetStream.
    NatsJetStream,
}

impl BrokerType {
    /// Every broker type.
    pub const ALL: [BrokerType; 6] = [
        BrokerType::Kafka,
        BrokerType::Redis,
        BrokerType::RabbitMQ,
        BrokerType::GooglePubSub,
        BrokerType::AwsSqs,
        BrokerType::NatsJetStream,
    ];

    /// The name used in the API and in status.
    pub fn as_str(self) -> &'static str {
        match self {
            BrokerType::Kafka => "Kafka",
            BrokerType::Redis => "Redis",
            BrokerType::RabbitMQ => "RabbitMQ",
            BrokerType::GooglePubSub => "GooglePubSub",
            BrokerType::AwsSqs => "AwsSqs",
            BrokerType::NatsJetStream => "NatsJetStream",
        }
    }
}

impl std::fmt::Display for BrokerType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One environment: which broker carries the topics there, and how to reach it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.type != 'Kafka' || (has(self.kafka) && !has(self.redis) && !has(self.rabbitmq) && !has(self.googlePubSub) && !has(self.awsSqs) && !has(self.natsJetStream))")
        .message("type Kafka needs exactly the `kafka` settings block (and no other broker's block)"),
    validation = Rule::new("self.type != 'Redis' || (has(self.redis) && !has(self.kafka) && !has(self.rabbitmq) && !has(self.googlePubSub) && !has(self.awsSqs) && !has(self.natsJetStream))")
        .message("type Redis needs exactly the `redis` settings block (and no other broker's block)"),
    validation = Rule::new("self.type != 'RabbitMQ' || (has(self.rabbitmq) && !has(self.kafka) && !has(self.redis) && !has(self.googlePubSub) && !has(self.awsSqs) && !has(self.natsJetStream))")
        .message("type RabbitMQ needs exactly the `rabbitmq` settings block (and no other broker's block)"),
    validation = Rule::new("self.type != 'GooglePubSub' || (has(self.googlePubSub) && !has(self.kafka) && !has(self.redis) && !has(self.rabbitmq) && !has(self.awsSqs) && !has(self.natsJetStream))")
        .message("type GooglePubSub needs exactly the `googlePubSub` settings block (and no other broker's block)"),
    validation = Rule::new("self.type != 'AwsSqs' || (has(self.awsSqs) && !has(self.kafka) && !has(self.redis) && !has(self.rabbitmq) && !has(self.googlePubSub) && !has(self.natsJetStream))")
        .message("type AwsSqs needs exactly the `awsSqs` settings block (and no other broker's block)"),
    validation = Rule::new("self.type != 'NatsJetStream' || (has(self.natsJetStream) && !has(self.kafka) && !has(self.redis) && !has(self.rabbitmq) && !has(self.googlePubSub) && !has(self.awsSqs))")
        .message("type NatsJetStream needs exactly the `natsJetStream` settings block (and no other broker's block)"),
    validation = Rule::new("!has(self.appCredentialsSecretRef) || self.type != 'Kafka' || (has(self.kafka) && has(self.kafka.sasl))")
        .message("appCredentialsSecretRef on Kafka needs kafka.sasl: apps get SASL credentials, and this env uses none"),
    validation = Rule::new("!has(self.appCredentialsSecretRef) || self.type != 'GooglePubSub'")
        .message("appCredentialsSecretRef is not used on Google Pub/Sub: its bindings carry no credentials, apps use their own Google identity (workload identity or GOOGLE_APPLICATION_CREDENTIALS)"),
)]
pub struct EnvSpec {
    /// Environment slug such as `prd` or `dev`: lowercase letters, digits and '-', 1 to 20 characters.
    #[schemars(
        length(min = 1, max = 20),
        regex(pattern = r"^[a-z]([a-z0-9-]*[a-z0-9])?$")
    )]
    pub slug: String,

    /// Broker type for this environment; exactly the matching settings block must be set.
    /// Changing it swaps the environment to the new broker without losing data.
    #[serde(rename = "type")]
    pub broker_type: BrokerType,

    /// Take over broker-side objects that already exist with the derived names instead of
    /// reporting a conflict. Adopted objects are treated as created by this resource.
    #[serde(default)]
    pub adopt_existing: bool,

    /// Kafka settings (when type is Kafka).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaSpec>,
    /// Redis settings (when type is Redis).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisSpec>,
    /// RabbitMQ settings (when type is RabbitMQ).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rabbitmq: Option<RabbitMqSpec>,
    /// Google Pub/Sub settings (when type is GooglePubSub).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub google_pub_sub: Option<GooglePubSubSpec>,
    /// AWS SQS/SNS settings (when type is AwsSqs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_sqs: Option<AwsSqsSpec>,
    /// NATS JetStream settings (when type is NatsJetStream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats_jet_stream: Option<NatsJetStreamSpec>,

    /// The credentials apps get: a Secret in the same namespace whose entries are copied into
    /// the binding instead of the ones the operator provisions with. Without it, every app that
    /// reads the binding holds the operator's access to the broker (status and `plan` say so).
    /// The Secret holds the same kind of credential the env's settings use, under fixed keys:
    /// `username` and `password` (Kafka SASL, RabbitMQ, NATS user; Redis `password`, plus
    /// `username` when the env logs in as an ACL user), `token`, `nkeySeed` or `creds` (NATS,
    /// matching the env's), `accessKeyId`, `secretAccessKey` and optional `sessionToken` (AWS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_credentials_secret_ref: Option<LocalSecretRef>,
}

/// A whole Secret in the same namespace as the MessageBroker.
#[derive(
    Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct LocalSecretRef {
    /// Secret name (same namespace; other namespaces are not allowed).
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
}

/// A key in a Secret in the same namespace as the MessageBroker.
#[derive(
    Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name (same namespace; other namespaces are not allowed).
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Key within the Secret.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

/// A Secret in the same namespace holding a username and a password.
#[derive(
    Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSecretRef {
    /// Secret name (same namespace; other namespaces are not allowed).
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Key holding the username (default `username`).
    #[serde(default = "default_username_key")]
    #[schemars(length(min = 1, max = 253))]
    pub username_key: String,
    /// Key holding the password (default `password`).
    #[serde(default = "default_password_key")]
    #[schemars(length(min = 1, max = 253))]
    pub password_key: String,
}

fn default_username_key() -> String {
    "username".into()
}
fn default_password_key() -> String {
    "password".into()
}

/// TLS towards the broker.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// Use TLS.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// CA bundle (PEM) that signs the broker's certificate; the system roots when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// Client certificate (PEM) for mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_secret_ref: Option<SecretKeyRef>,
    /// Client private key (PEM) for mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_secret_ref: Option<SecretKeyRef>,
}

fn default_true() -> bool {
    true
}

/// Kafka connection and topic defaults.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.tls) || !has(self.tls.certSecretRef) == !has(self.tls.keySecretRef)").message("tls.certSecretRef and tls.keySecretRef go together"))]
pub struct KafkaSpec {
    /// Bootstrap servers as host:port.
    #[schemars(length(min = 1, max = 16))]
    #[schemars(inner(length(min = 3, max = 255), regex(pattern = r"^[^\s:/]+:[0-9]{1,5}$")))]
    pub bootstrap_servers: Vec<String>,
    /// Client id the operator uses (default `switchyard`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub client_id: Option<String>,
    /// Replication factor of created topics (default: the broker's default). Existing topics keep
    /// theirs: a different value is reported (ReplicationFactorChangeNotSupported), never applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 16))]
    pub replication_factor: Option<i32>,
    /// Prefix for physical topic names; replaces the default `<namespace>.<name>.` in topic names
    /// (`<prefix><topic>`), dead-letter topics (`<prefix><topic>.dlq`) and consumer groups
    /// (`<prefix><topic>.<subscription>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100), regex(pattern = r"^[a-zA-Z0-9._-]*$"))]
    pub topic_prefix: Option<String>,
    /// Topic configs converged on every topic and dead-letter topic (e.g. `cleanup.policy: delete`),
    /// spelled as Kafka reports them (`kafka-configs --describe`). A topic's `retention` overrides
    /// `retention.ms` here. Configs not listed are left as they are on the broker.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    #[x_kube(validation = Rule::new("!('replication.factor' in self)").message("topicConfig: replication.factor is not a topic config; use replicationFactor"))]
    pub topic_config: BTreeMap<String, String>,
    /// TLS settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// SASL authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<KafkaSaslSpec>,
}

/// SASL mechanisms for Kafka.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, schemars::JsonSchema)]
pub enum SaslMechanism {
    /// Username and password in clear (use with TLS).
    #[serde(rename = "PLAIN")]
    Plain,
    /// SCRAM with SHA-256.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// SCRAM with SHA-512.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    /// The mechanism name as Kafka clients spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// Kafka SASL settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSaslSpec {
    /// SASL mechanism.
    pub mechanism: SaslMechanism,
    /// Secret with the username and password.
    pub credentials_secret_ref: CredentialsSecretRef,
}

/// Redis connection. Topics become streams, subscriptions consumer groups. The operator records
/// what it creates in the hashes `switchyard:owners` and `switchyard:config` of the database, so
/// an ACL user needs `+ping +time +type +del +xgroup +xinfo +xrange +xlen +xtrim +hset +hmget
/// +hget +hdel` (and `+select` when the database is not 0) on the keys `~switchyard:*` and
/// `~<namespace>:<name>:*`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.caSecretRef) || self.url.startsWith('rediss://')")
        .message("caSecretRef needs a rediss:// url (TLS)"),
    validation = Rule::new("!has(self.usernameSecretRef) || has(self.passwordSecretRef)")
        .message("usernameSecretRef needs passwordSecretRef (Redis ACL users log in with both)"),
)]
pub struct RedisSpec {
    /// Server URL, `redis://host:port[/db]` or `rediss://host:port[/db]` for TLS. No credentials
    /// in the URL: use the Secret references.
    #[schemars(
        length(min = 10, max = 512),
        regex(pattern = r"^rediss?://[^\s@/]+(/[0-9]{0,2})?$")
    )]
    pub url: String,
    /// Database number 0 to 15 (overrides the one in the URL; default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 15))]
    pub database: Option<i64>,
    /// Secret key holding the ACL username (the `default` user when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_secret_ref: Option<SecretKeyRef>,
    /// Secret key holding the password (of the ACL user, or the `requirepass` password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// Secret key holding the CA bundle (PEM) that signs the server certificate, for `rediss://`;
    /// the system roots when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
}

/// RabbitMQ queue types.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, schemars::JsonSchema,
)]
pub enum QueueType {
    /// Replicated, durable queues (default); `maxDeliveryAttempts` becomes `x-delivery-limit`.
    #[default]
    Quorum,
    /// Classic queues; they have no delivery limit, so dead-lettering happens only on reject
    /// without requeue or expiry.
    Classic,
}

/// RabbitMQ connection. Topics become durable topic exchanges, subscriptions durable queues bound
/// to them; queue arguments cannot change after creation, so a changed retention or queue type is
/// reported (ImmutableQueueArguments) rather than applied.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.url) != has(self.host)").message("set either url or host (not both)"),
    validation = Rule::new("!has(self.tls) || !has(self.tls.certSecretRef) == !has(self.tls.keySecretRef)").message("tls.certSecretRef and tls.keySecretRef go together"),
)]
pub struct RabbitMqSpec {
    /// AMQP URL `amqp://host:port/vhost` or `amqps://...`, without credentials. The vhost in the
    /// path is percent-encoded (`%2F` for `/`); the `vhost` field overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512), regex(pattern = r"^amqps?://[^\s@]+$"))]
    pub url: Option<String>,
    /// Host name (instead of url).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[^\s/:@]+$"))]
    pub host: Option<String>,
    /// Port (default 5672, or 5671 with TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// Virtual host, unencoded (default `/`, or the URL's path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub vhost: Option<String>,
    /// TLS settings; the CA also verifies an https managementUrl.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// Secret with the username and password (RabbitMQ's guest/guest when unset, which RabbitMQ
    /// accepts on loopback only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<CredentialsSecretRef>,
    /// Queue type for subscription and dead-letter queues (Quorum by default). Changing it for
    /// existing queues is refused: RabbitMQ cannot convert a queue in place.
    #[serde(default)]
    pub queue_type: QueueType,
    /// Management HTTP API URL such as `http://rabbitmq:15672`, used to read back queue
    /// arguments, ownership markers, bindings and message counts (the user needs the
    /// `monitoring` or `management` tag). Without it, changed arguments and deleted-behind-our-back
    /// objects are detected only partially.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512), regex(pattern = r"^https?://[^\s@]+$"))]
    pub management_url: Option<String>,
}

/// Google Pub/Sub project and credentials.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GooglePubSubSpec {
    /// Google Cloud project id.
    #[schemars(
        length(min = 6, max = 30),
        regex(pattern = r"^[a-z][a-z0-9-]*[a-z0-9]$")
    )]
    pub project_id: String,
    /// Service-account JSON key; workload identity / application default credentials when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretKeyRef>,
    /// Endpoint override such as `http://pubsub-emulator:8085` (anonymous credentials are used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512), regex(pattern = r"^https?://[^\s@]+$"))]
    pub endpoint: Option<String>,
    /// Ack deadline of created subscriptions in seconds (10 to 600, default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 600))]
    pub ack_deadline_seconds: Option<i32>,
}

/// AWS credentials in a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AwsCredentialsSecretRef {
    /// Secret name (same namespace).
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Key holding the access key id (default `accessKeyId`).
    #[serde(default = "default_access_key_id_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub access_key_id_key: String,
    /// Key holding the secret access key (default `secretAccessKey`).
    #[serde(default = "default_secret_access_key_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub secret_access_key_key: String,
    /// Key holding an optional session token (default `sessionToken`; ignored when absent).
    #[serde(default = "default_session_token_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub session_token_key: String,
}

fn default_access_key_id_key() -> String {
    "accessKeyId".into()
}
fn default_secret_access_key_key() -> String {
    "secretAccessKey".into()
}
fn default_session_token_key() -> String {
    "sessionToken".into()
}

/// AWS SQS (with SNS fan-out) region and credentials.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AwsSqsSpec {
    /// AWS region such as `eu-west-1`.
    #[schemars(
        length(min = 4, max = 32),
        regex(pattern = r"^[a-z]{2}(-[a-z]+)+-[0-9]+$")
    )]
    pub region: String,
    /// Static credentials; the default chain (IRSA / web identity) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<AwsCredentialsSecretRef>,
    /// Endpoint override for SQS and SNS (an SQS/SNS-compatible server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512), regex(pattern = r"^https?://[^\s@]+$"))]
    pub endpoint: Option<String>,
}

/// Where a JetStream stream keeps its messages.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, schemars::JsonSchema,
)]
pub enum NatsStorage {
    /// On disk (default).
    #[default]
    File,
    /// In memory: faster, lost when the server restarts.
    Memory,
}

/// NATS JetStream connection. Topics become streams (subject `<subjectPrefix>.<topic>`),
/// subscriptions durable pull consumers, and dead letters a `<stream>-dlq` stream. The owner
/// is recorded in each stream's and consumer's metadata. A stream's storage type is fixed at
/// creation: changing `storage` for existing streams is refused (StreamStorageChangeNotSupported).
/// At most one way to authenticate may be set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("[has(self.credentialsSecretRef), has(self.tokenSecretRef), has(self.nkeySeedSecretRef), has(self.credsSecretRef)].filter(x, x).size() <= 1")
        .message("set at most one of credentialsSecretRef, tokenSecretRef, nkeySeedSecretRef and credsSecretRef"),
    validation = Rule::new("!has(self.tls) || (!has(self.tls.certSecretRef) && !has(self.tls.keySecretRef))")
        .message("tls: client certificates are not supported for NATS; authenticate with credentialsSecretRef, tokenSecretRef, nkeySeedSecretRef or credsSecretRef"),
)]
pub struct NatsJetStreamSpec {
    /// Server URLs, `nats://host:port` (or `tls://host:port` to require TLS), without
    /// credentials: use the Secret references.
    #[schemars(length(min = 1, max = 16))]
    #[schemars(inner(
        length(min = 10, max = 512),
        regex(pattern = r"^(nats|tls)://[^\s@/]+$")
    ))]
    pub servers: Vec<String>,
    /// First subject tokens of every topic's subject, `<subjectPrefix>.<topic>` (default
    /// `<namespace>.<name>`, with dots in the name replaced by `_`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 100),
        regex(pattern = r"^[a-zA-Z0-9_-]+(\.[a-zA-Z0-9_-]+)*$")
    )]
    pub subject_prefix: Option<String>,
    /// Secret with a username and password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<CredentialsSecretRef>,
    /// Secret key holding an authentication token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<SecretKeyRef>,
    /// Secret key holding an NKey user seed (`SU...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nkey_seed_secret_ref: Option<SecretKeyRef>,
    /// Secret key holding a `.creds` file (user JWT and NKey seed, decentralised auth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creds_secret_ref: Option<SecretKeyRef>,
    /// TLS settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// Replicas of created streams (1 to 5; default 1). JetStream changes it in place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 5))]
    pub replicas: Option<i32>,
    /// Storage of created streams (File by default); fixed when a stream is created.
    #[serde(default)]
    pub storage: NatsStorage,
}

impl SecretKeyRef {
    /// The `(secret, key)` it names.
    pub fn secret_key(&self) -> (String, String) {
        (self.name.clone(), self.key.clone())
    }
}

impl LocalSecretRef {
    /// Its `username` and `password` entries.
    pub fn credentials(&self) -> CredentialsSecretRef {
        CredentialsSecretRef {
            name: self.name.clone(),
            username_key: default_username_key(),
            password_key: default_password_key(),
        }
    }

    /// Its entry `key`.
    pub fn key(&self, key: &str) -> SecretKeyRef {
        SecretKeyRef {
            name: self.name.clone(),
            key: key.to_string(),
        }
    }

    /// Its `accessKeyId`, `secretAccessKey` and optional `sessionToken` entries.
    pub fn aws(&self) -> AwsCredentialsSecretRef {
        AwsCredentialsSecretRef {
            name: self.name.clone(),
            access_key_id_key: default_access_key_id_key(),
            secret_access_key_key: default_secret_access_key_key(),
            session_token_key: default_session_token_key(),
        }
    }
}

impl CredentialsSecretRef {
    /// The `(secret, key)` pairs of the username and password.
    pub fn secret_keys(&self) -> [(String, String); 2] {
        [
            (self.name.clone(), self.username_key.clone()),
            (self.name.clone(), self.password_key.clone()),
        ]
    }
}

impl AwsCredentialsSecretRef {
    /// The `(secret, key)` pairs of the access key, secret key and (optional) session token.
    pub fn secret_keys(&self) -> [(String, String); 3] {
        [
            (self.name.clone(), self.access_key_id_key.clone()),
            (self.name.clone(), self.secret_access_key_key.clone()),
            (self.name.clone(), self.session_token_key.clone()),
        ]
    }
}

impl TlsSpec {
    /// The `(secret, key)` pairs of the CA, client certificate and key that are set.
    pub fn secret_keys(&self) -> Vec<(String, String)> {
        [
            &self.ca_secret_ref,
            &self.cert_secret_ref,
            &self.key_secret_ref,
        ]
        .into_iter()
        .flatten()
        .map(SecretKeyRef::secret_key)
        .collect()
    }
}

impl TopicSpec {
    /// The retention as a duration; `None` when unset. The schema already restricts the format,
    /// so an error here means the object bypassed admission.
    pub fn retention_duration(&self) -> Result<Option<std::time::Duration>, String> {
        self.retention.as_deref().map(parse_duration).transpose()
    }
}

/// Parse a Go-style duration such as `168h`, `1h30m`, `90s`, `1.5h` or `250ms`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let err = || format!("{s:?} is not a duration like 168h, 30m, 90s or 1h30m");
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return Err(err());
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        if num_len == 0 {
            return Err(err());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| err())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            _ => return Err(err()),
        };
        total += value * factor;
        rest = &rest[unit_len..];
    }
    if !total.is_finite() || total > 1e12 {
        return Err(err());
    }
    Ok(std::time::Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(
            parse_duration("168h").ok(),
            Some(std::time::Duration::from_secs(168 * 3600))
        );
        assert_eq!(
            parse_duration("1h30m").ok(),
            Some(std::time::Duration::from_secs(5400))
        );
        assert_eq!(
            parse_duration("1.5h").ok(),
            Some(std::time::Duration::from_secs(5400))
        );
        assert_eq!(
            parse_duration("250ms").ok(),
            Some(std::time::Duration::from_millis(250))
        );
        for bad in ["", "h", "10", "10d", "1x", "-1h", "1..2h"] {
            assert!(parse_duration(bad).is_err(), "{bad} should not parse");
        }
    }
}
