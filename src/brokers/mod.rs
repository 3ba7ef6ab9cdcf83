//! Broker backends behind one trait, and the broker-agnostic model they share.
//!
//! The reconcile pipeline is: desired (pure, from the spec) → observe (I/O) → plan (pure) →
//! apply (I/O). Each backend module supplies the pure `desired` mapping for its broker and a
//! [`Backend`] implementation for the I/O; [`plan::plan`] is shared by all of them, so the
//! controller and `switchyard plan` compute exactly the same changes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

use crate::api::{BrokerType, EnvSpec, TopicSpec};
use crate::secrets::{ResolvedSecrets, SecretValue};

pub mod fake;
pub mod naming;
pub mod plan;
pub mod pool;
#[cfg(test)]
pub(crate) mod spec_fixtures;

/// Who is asking: the MessageBroker's namespace and name. Broker-side names derive from it,
/// and ownership markers carry [`Scope::owner`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Scope {
    /// Namespace of the MessageBroker.
    pub namespace: String,
    /// Name of the MessageBroker.
    pub name: String,
    /// Logical topics whose objects exist under the names of [`naming::physical`], made before
    /// [`naming::scoped`]; they keep them (see [`desired`]).
    pub legacy_topics: BTreeSet<String>,
}

impl Scope {
    /// The scope of the MessageBroker `namespace/name`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Scope {
            namespace: namespace.into(),
            name: name.into(),
            legacy_topics: BTreeSet::new(),
        }
    }

    /// The ownership marker value: `namespace/name`.
    pub fn owner(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// What kind of broker-side object a desired or observed object is. Order matters: creation
/// runs in this order and deletion in reverse, so parents exist before children.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ObjectKind {
    /// A dead-letter destination (topic, stream, exchange+queue, SQS queue).
    DeadLetter,
    /// A topic (Kafka topic, Redis stream, RabbitMQ exchange, Pub/Sub topic, SNS topic).
    Topic,
    /// A queue (RabbitMQ queue, SQS queue).
    Queue,
    /// A subscription (consumer group, Pub/Sub subscription, SNS subscription).
    Subscription,
    /// A binding between a topic and a queue.
    Binding,
}

impl ObjectKind {
    /// Lowercase name used in keys and status.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::DeadLetter => "deadLetter",
            ObjectKind::Topic => "topic",
            ObjectKind::Queue => "queue",
            ObjectKind::Subscription => "subscription",
            ObjectKind::Binding => "binding",
        }
    }
}

/// Identity of a broker-side object: kind and physical name, printed as `kind/name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ObjectKey {
    /// Kind.
    pub kind: ObjectKind,
    /// Physical (broker-side) name.
    pub name: String,
}

impl ObjectKey {
    /// A key.
    pub fn new(kind: ObjectKind, name: impl Into<String>) -> Self {
        ObjectKey {
            kind,
            name: name.into(),
        }
    }

    /// Parse `kind/name` as stored in status; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        let (kind, name) = s.split_once('/')?;
        let kind = [
            ObjectKind::DeadLetter,
            ObjectKind::Topic,
            ObjectKind::Queue,
            ObjectKind::Subscription,
            ObjectKind::Binding,
        ]
        .into_iter()
        .find(|k| k.as_str() == kind)?;
        Some(ObjectKey::new(kind, name))
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.as_str(), self.name)
    }
}

/// One broker-side object as the spec wants it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DesiredObject {
    /// Identity.
    pub key: ObjectKey,
    /// The logical name it serves, e.g. `order-created` or `order-created/billing`.
    pub logical: String,
    /// Physical name of the object it hangs off (a queue's exchange, a group's stream), if any.
    pub parent: Option<String>,
    /// Partition count, where the broker has partitions.
    pub partitions: Option<i32>,
    /// Settings to converge, in the broker's own vocabulary (`retention.ms`, `x-message-ttl`, …).
    pub config: BTreeMap<String, String>,
}

/// What the spec means on one broker: the objects to have, and remarks for status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DesiredState {
    /// Objects in creation order.
    pub objects: Vec<DesiredObject>,
    /// Remarks such as "partitions are ignored by Redis".
    pub notes: Vec<String>,
    /// What apps use, logical → physical: `topic` → where to publish, `topic/sub` → where to
    /// consume (queue, consumer group, subscription), `topic/sub/dlq` → dead-letter destination.
    /// Goes into status and the binding Secret.
    pub names: BTreeMap<String, String>,
}

/// One broker-side object as observed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ObservedObject {
    /// Partition count, where the broker has partitions.
    pub partitions: Option<i32>,
    /// Current settings (at least those the desired object names).
    pub config: BTreeMap<String, String>,
    /// Ownership marker on the broker (label, tag, registry entry), when the broker can hold one.
    pub owner: Option<String>,
    /// Messages still held (ready + unacknowledged / pending), when the broker can tell.
    pub messages: Option<u64>,
}

/// The observed state of the objects asked about; absent keys do not exist.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Existing objects by key.
    pub objects: BTreeMap<ObjectKey, ObservedObject>,
    /// How long the oldest message a subscription object (a Redis group) holds unacknowledged
    /// has waited, where the broker tells it.
    pub oldest_unacked: BTreeMap<ObjectKey, std::time::Duration>,
    /// Per subscription (logical `topic/sub`), the figures the broker counts apart from its
    /// objects ([`Backend::flow`]).
    pub flow: BTreeMap<String, FlowReading>,
}

/// The message figures of one subscription that a broker counts apart from its objects (a
/// Kafka consumer group is no object: its lag is read with its offsets).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowReading {
    /// Messages not acknowledged yet.
    pub backlog: Option<u64>,
    /// Messages in its dead-letter destination.
    pub dead_letters: Option<u64>,
}

/// A setting that changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConfigChange {
    /// Setting name.
    pub key: String,
    /// Current value, if set.
    pub before: Option<String>,
    /// Wanted value.
    pub after: String,
}

/// One step of a plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "camelCase")]
pub enum Action {
    /// Create an object.
    Create {
        /// The object.
        object: DesiredObject,
    },
    /// Take over an existing object (spec opted into adoption).
    Adopt {
        /// The object.
        object: DesiredObject,
    },
    /// Change settings in place.
    Update {
        /// The object with its wanted settings.
        object: DesiredObject,
        /// What changes.
        changes: Vec<ConfigChange>,
    },
    /// Grow partitions.
    AddPartitions {
        /// The object.
        object: DesiredObject,
        /// Current count.
        from: i32,
        /// Wanted count.
        to: i32,
    },
    /// Delete an object this resource owns that the spec no longer wants.
    Delete {
        /// The object.
        key: ObjectKey,
    },
}

impl Action {
    /// The object the action is about.
    pub fn key(&self) -> &ObjectKey {
        match self {
            Action::Create { object }
            | Action::Adopt { object }
            | Action::Update { object, .. }
            | Action::AddPartitions { object, .. } => &object.key,
            Action::Delete { key } => key,
        }
    }
}

/// A change the plan will not make.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// The object.
    pub key: ObjectKey,
    /// Why (`crate::failure` turns it into a condition reason).
    #[serde(
        rename = "reason",
        serialize_with = "crate::failure::serialize_refusal_kind"
    )]
    pub kind: RefusalKind,
    /// Human-readable explanation.
    pub message: String,
}

impl Refusal {
    /// Whether waiting can resolve it (a draining queue) rather than a spec change.
    pub fn is_transient(&self) -> bool {
        self.kind.is_transient()
    }
}

/// Why a plan refuses a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalKind {
    /// An object with the physical name exists and is not this MessageBroker's.
    Conflict,
    /// The spec asks for fewer partitions than the topic has.
    PartitionDecrease,
    /// A setting the broker fixes at creation differs.
    Immutable(Immutable),
    /// An object to delete still holds messages.
    RetireBlocked,
}

impl RefusalKind {
    /// Whether waiting can resolve it rather than a change.
    pub fn is_transient(self) -> bool {
        matches!(self, RefusalKind::RetireBlocked)
    }
}

/// The settings brokers fix when an object is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Immutable {
    /// Kafka's replication factor (a reassignment, not a config change).
    ReplicationFactor,
    /// RabbitMQ queue arguments and exchange type.
    QueueArguments,
    /// Pub/Sub message ordering on a subscription.
    MessageOrdering,
    /// A JetStream stream's storage type (file or memory).
    StreamStorage,
}

/// What a backend can and cannot change in place.
#[derive(Clone, Copy, Debug)]
pub struct Capabilities {
    /// The broker has partitions (only Kafka).
    pub partitions: bool,
    /// Settings that cannot change after creation, and which kind of setting each is.
    pub immutable_config: &'static [(&'static str, Immutable)],
}

/// Connection details for the binding Secret (Service Binding spec keys).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// `provider` entry, e.g. `apache-kafka`, `redis`, `rabbitmq`, `google`, `aws`.
    pub provider: String,
    /// Host of the first endpoint.
    pub host: Option<String>,
    /// Port of the first endpoint.
    pub port: Option<u16>,
    /// URI without credentials (or bootstrap servers list for Kafka).
    pub uri: Option<String>,
    /// Username, copied from the referenced Secret.
    pub username: Option<SecretValue>,
    /// Password, copied from the referenced Secret.
    pub password: Option<SecretValue>,
    /// Further backend-specific entries (e.g. `bootstrap-servers`, `project-id`, `region`),
    /// including the keys that binding readers and SDKs look for (`bootstrapServers`,
    /// `virtual-host`, `GOOGLE_CLOUD_PROJECT`, …).
    pub extra: BTreeMap<String, String>,
    /// Entries that carry a credential under the key another reader expects (`user`,
    /// `AWS_SECRET_ACCESS_KEY`, a TLS CA, …); printed redacted like the other credentials.
    pub credentials: BTreeMap<String, SecretValue>,
}

/// Why a broker call failed, as a condition reason can express it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BrokerErrorKind {
    /// Connection refused, no route, DNS failure.
    Unreachable,
    /// No answer in time.
    Timeout,
    /// TLS handshake or certificate verification.
    Tls,
    /// Credentials refused.
    Authentication,
    /// Authenticated but not allowed.
    PermissionDenied,
    /// vhost / project / account not found.
    NotFound,
    /// The broker refused the request as invalid (permanent).
    Rejected,
    /// Anything else; assumed transient.
    Other,
}

/// An error from a broker, with a message fit for status (never holding credentials).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BrokerError {
    /// Classification.
    pub kind: BrokerErrorKind,
    /// What happened.
    pub message: String,
}

impl BrokerError {
    /// An error of the given kind.
    pub fn new(kind: BrokerErrorKind, message: impl Into<String>) -> Self {
        BrokerError {
            kind,
            message: message.into(),
        }
    }

    /// Whether retrying later can help without a change to spec or broker configuration.
    /// Credentials and permissions are fixed by a Secret or broker change, which re-triggers
    /// reconcile through the Secret watch; they are still retried on the slow resync.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.kind,
            BrokerErrorKind::Unreachable | BrokerErrorKind::Timeout | BrokerErrorKind::Other
        )
    }
}

/// Outcome of applying one action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActionOutcome {
    /// The object.
    pub key: ObjectKey,
    /// Success, or why it failed.
    pub result: Result<(), BrokerError>,
}

/// One outcome per action, in action order, whatever the backend returned. Outcomes are matched
/// to actions by key; an action the backend reported nothing for counts as failed, and outcomes
/// for keys nobody asked about are dropped. A backend that answers short, long or out of order
/// thus never makes an unapplied change look applied (or an object look owned).
pub fn align_outcomes(actions: &[Action], outcomes: Vec<ActionOutcome>) -> Vec<ActionOutcome> {
    if outcomes.len() == actions.len()
        && actions
            .iter()
            .zip(&outcomes)
            .all(|(a, o)| a.key() == &o.key)
    {
        return outcomes;
    }
    let mut by_key: std::collections::HashMap<
        ObjectKey,
        std::collections::VecDeque<ActionOutcome>,
    > = std::collections::HashMap::new();
    for o in outcomes {
        by_key.entry(o.key.clone()).or_default().push_back(o);
    }
    actions
        .iter()
        .map(|a| {
            by_key
                .get_mut(a.key())
                .and_then(|q| q.pop_front())
                .unwrap_or_else(|| ActionOutcome {
                    key: a.key().clone(),
                    result: Err(BrokerError::new(
                        BrokerErrorKind::Other,
                        format!("the broker reported no outcome for {}", a.key()),
                    )),
                })
        })
        .collect()
}

/// A connection to one broker endpoint with one set of credentials, shared (pooled) by every
/// MessageBroker that uses it.
#[async_trait]
pub trait Backend: Send + Sync {
    /// Which broker this talks to.
    fn broker_type(&self) -> BrokerType;

    /// Check the broker answers and the credentials work, within the backend's timeout.
    async fn check(&self) -> Result<(), BrokerError>;

    /// Observe the given objects (desired ones and owned ones). Missing objects are absent
    /// from the result; an error means the observation itself failed.
    async fn observe(&self, scope: &Scope, keys: &[ObjectKey]) -> Result<Observed, BrokerError>;

    /// Apply actions in order; one outcome per action. Independent actions may be batched.
    async fn apply(&self, scope: &Scope, actions: &[Action]) -> Vec<ActionOutcome>;

    /// What objects about to be deleted still hold for their subscribers, where that is not
    /// what observation counts: a Kafka topic keeps its records after every group read them,
    /// so it holds what its consumer groups (named in `names`, logical to physical) have not
    /// committed. Objects left out keep their observed count.
    async fn unconsumed(
        &self,
        _leaving: &[ObjectKey],
        _names: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<ObjectKey, u64>, BrokerError> {
        Ok(BTreeMap::new())
    }

    /// The message figures of the subscriptions in `names` (logical → physical, as in
    /// [`DesiredState::names`]) that observation does not count, by logical `topic/sub`.
    /// Read for every subscription of every MessageBroker on the endpoint at once, at most
    /// once per flow interval. Brokers whose objects carry the counts give none.
    async fn flow(
        &self,
        _names: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, FlowReading>, BrokerError> {
        Ok(BTreeMap::new())
    }
}

/// Builds backends for an env's settings and credentials. The real one dispatches to the
/// backend modules; tests use [`fake::FakeConnector`].
#[async_trait]
pub trait Connector: Send + Sync {
    /// A backend for this env (may be lazily connected).
    async fn connect(
        &self,
        env: &EnvSpec,
        secrets: &ResolvedSecrets,
    ) -> Result<Arc<dyn Backend>, BrokerError>;
}

/// Pure mapping of the spec onto one broker: the objects to have and their settings.
///
/// `existing` is what the env already owns. A topic whose objects exist under the names of
/// earlier releases ([`naming::physical`]) keeps them; every other topic gets the unambiguous
/// names of [`naming::scoped`]. Two topics that would meet on one object are refused.
pub fn desired(
    scope: &Scope,
    env: &EnvSpec,
    topics: &[TopicSpec],
    existing: &BTreeSet<ObjectKey>,
) -> Result<DesiredState, crate::Error> {
    let driver = driver(env.broker_type);
    let mut state = driver.desired(scope, env, topics)?;
    if !existing.is_empty() {
        let all_legacy = Scope {
            legacy_topics: topics.iter().map(|t| t.name.clone()).collect(),
            ..scope.clone()
        };
        let legacy = driver.desired(&all_legacy, env, topics)?;
        let keep: BTreeSet<String> = topics
            .iter()
            .filter(|t| {
                let old = keys_of_topic(&legacy, &t.name);
                old != keys_of_topic(&state, &t.name) && old.iter().any(|k| existing.contains(k))
            })
            .map(|t| t.name.clone())
            .collect();
        if !keep.is_empty() {
            let mixed = Scope {
                legacy_topics: keep,
                ..scope.clone()
            };
            state = driver.desired(&mixed, env, topics)?;
        }
    }
    refuse_shared_objects(&state)?;
    if driver.binding_has_credentials(env) && env.app_credentials_secret_ref.is_none() {
        state.notes.push(OPERATOR_CREDENTIALS_NOTE.to_string());
    }
    Ok(state)
}

/// The note on an env whose binding hands apps the operator's own credentials.
pub const OPERATOR_CREDENTIALS_NOTE: &str = "the binding carries the credentials the operator \
provisions with, so every app that reads it can do what the operator can; set \
appCredentialsSecretRef to a Secret with the apps' own credentials";

/// The objects that serve a logical topic (`t`, `t/sub`, `t/sub/dlq`, `t/dlq`).
fn keys_of_topic<'a>(state: &'a DesiredState, topic: &str) -> BTreeSet<&'a ObjectKey> {
    state
        .objects
        .iter()
        .filter(|o| o.logical.split('/').next() == Some(topic))
        .map(|o| &o.key)
        .collect()
}

/// Two topics of one MessageBroker whose objects meet: one object for both, or a dead-letter
/// destination named like a topic or queue (topic `orders.dlq` on Kafka and the dead letters
/// of `orders`). The spec cannot be served as written.
fn refuse_shared_objects(state: &DesiredState) -> Result<(), crate::Error> {
    let topic_of = |logical: &str| logical.split('/').next().unwrap_or_default().to_string();
    let mut by_key: BTreeMap<&ObjectKey, &str> = BTreeMap::new();
    // Names of topics and queues, and of dead-letter destinations.
    let mut destinations: BTreeMap<&str, &str> = BTreeMap::new();
    let mut dead_letters: BTreeMap<&str, &str> = BTreeMap::new();
    for o in &state.objects {
        let name = o.key.name.as_str();
        let clash = by_key.insert(&o.key, &o.logical).or(match o.key.kind {
            ObjectKind::DeadLetter => {
                let other = destinations.get(name).copied();
                dead_letters.insert(name, &o.logical).or(other)
            }
            ObjectKind::Topic | ObjectKind::Queue => {
                destinations.insert(name, &o.logical);
                dead_letters.get(name).copied()
            }
            _ => None,
        });
        if let Some(other) = clash.filter(|other| topic_of(other) != topic_of(&o.logical)) {
            return Err(crate::Error::InvalidSpec(format!(
                "{other:?} and {:?} would share the broker object {:?}; rename one of the topics",
                o.logical, o.key.name
            )));
        }
    }
    Ok(())
}

/// What the broker can change in place.
pub fn capabilities(broker_type: BrokerType) -> Capabilities {
    driver(broker_type).capabilities()
}

/// Connection details for the binding Secret; pure (no broker call).
pub fn connection_info(
    env: &EnvSpec,
    secrets: &ResolvedSecrets,
) -> Result<ConnectionInfo, crate::Error> {
    let driver = driver(env.broker_type);
    match driver.app_view(env) {
        Some(app) => driver.connection_info(&app, secrets),
        None => driver.connection_info(env, secrets),
    }
}

/// The binding's `ca.crt` entry (named as in Kubernetes TLS Secrets) for a referenced CA;
/// empty when there is none.
pub(crate) fn ca_credentials(
    secrets: &ResolvedSecrets,
    ca: Option<&crate::api::SecretKeyRef>,
) -> Result<BTreeMap<String, SecretValue>, crate::Error> {
    let mut out = BTreeMap::new();
    if let Some(r) = ca {
        out.insert("ca.crt".to_string(), secrets.get(r)?.clone());
    }
    Ok(out)
}

/// The CA of a TLS block that is enabled.
pub(crate) fn enabled_ca(tls: &Option<crate::api::TlsSpec>) -> Option<&crate::api::SecretKeyRef> {
    tls.as_ref()
        .filter(|t| t.enabled)
        .and_then(|t| t.ca_secret_ref.as_ref())
}

/// Every `(secret, key)` an env references, for resolving and watching, sorted and unique.
pub fn secret_keys(env: &EnvSpec) -> Vec<(String, String)> {
    let driver = driver(env.broker_type);
    let mut keys = driver.secret_keys(env);
    if let Some(app) = driver.app_view(env) {
        keys.extend(driver.secret_keys(&app));
    }
    keys.sort();
    keys.dedup();
    keys
}

/// Every Secret an env references.
pub fn secret_names(env: &EnvSpec) -> Vec<String> {
    let mut names: Vec<String> = secret_keys(env).into_iter().map(|(n, _)| n).collect();
    names.dedup();
    names
}

pub mod driver;
pub use driver::{ConnectOptions, Driver, EnvDriver, RealConnector, driver};

pub mod kafka;
pub mod nats;
pub mod pubsub;
pub mod rabbitmq;
pub mod redis;
pub mod sqs;

/// Observe what the desired and owned objects look like on the broker, and plan the changes.
pub async fn observe_and_plan(
    backend: &dyn Backend,
    desired: &DesiredState,
    input: &plan::PlanInput<'_>,
) -> Result<(Observed, plan::Plan), BrokerError> {
    let mut observed = observe_wanted(backend, desired, input).await?;
    count_unconsumed(backend, desired, &desired.names, input, &mut observed).await?;
    let plan = plan::plan(desired, &observed, input);
    Ok((observed, plan))
}

/// Under Delete, replace the observed message counts of owned objects the spec no longer
/// wants by what their subscribers have not consumed yet, where the broker counts that
/// differently ([`Backend::unconsumed`]); `names` says which subscriptions read them. No
/// broker call when nothing leaves.
pub async fn count_unconsumed(
    backend: &dyn Backend,
    desired: &DesiredState,
    names: &BTreeMap<String, String>,
    input: &plan::PlanInput<'_>,
    observed: &mut Observed,
) -> Result<(), BrokerError> {
    if input.deletion_policy != crate::api::DeletionPolicy::Delete {
        return Ok(());
    }
    let wanted: BTreeSet<&ObjectKey> = desired.objects.iter().map(|o| &o.key).collect();
    let leaving: Vec<ObjectKey> = input
        .owned
        .iter()
        .filter(|k| !wanted.contains(k) && observed.objects.contains_key(k))
        .cloned()
        .collect();
    if leaving.is_empty() {
        return Ok(());
    }
    for (key, n) in backend.unconsumed(&leaving, names).await? {
        if let Some(o) = observed.objects.get_mut(&key) {
            o.messages = Some(n);
        }
    }
    Ok(())
}

/// Observe what a plan needs: the desired objects and the owned ones.
pub async fn observe_wanted(
    backend: &dyn Backend,
    desired: &DesiredState,
    input: &plan::PlanInput<'_>,
) -> Result<Observed, BrokerError> {
    let mut keys: std::collections::BTreeSet<ObjectKey> =
        desired.objects.iter().map(|o| o.key.clone()).collect();
    keys.extend(input.owned.iter().cloned());
    let keys: Vec<ObjectKey> = keys.into_iter().collect();
    backend.observe(input.scope, &keys).await
}

/// The result of one converge pass on one broker.
#[derive(Clone, Debug)]
pub struct Converged {
    /// What the spec asked for.
    pub desired: DesiredState,
    /// What was there before.
    pub observed: Observed,
    /// What the pass decided.
    pub plan: plan::Plan,
    /// One outcome per planned action.
    pub outcomes: Vec<ActionOutcome>,
    /// The ownership set afterwards.
    pub owned: std::collections::BTreeSet<ObjectKey>,
}

/// Observe, plan and apply once against `desired`: the pass the controller makes per env
/// (minus status), and the one retirement makes with an empty desired state.
pub async fn converge_desired(
    backend: &dyn Backend,
    desired: DesiredState,
    input: &plan::PlanInput<'_>,
) -> Result<Converged, BrokerError> {
    let (observed, plan) = observe_and_plan(backend, &desired, input).await?;
    let outcomes = if plan.actions.is_empty() {
        Vec::new()
    } else {
        align_outcomes(
            &plan.actions,
            backend.apply(input.scope, &plan.actions).await,
        )
    };
    let owned = plan::owned_after(
        input.owned,
        &input.scope.owner(),
        &desired,
        &observed,
        &outcomes,
        &plan.actions,
    );
    Ok(Converged {
        desired,
        observed,
        plan,
        outcomes,
        owned,
    })
}

/// [`converge_desired`] for an env's spec and topics.
pub async fn converge(
    backend: &dyn Backend,
    scope: &Scope,
    env: &EnvSpec,
    topics: &[TopicSpec],
    owned: &std::collections::BTreeSet<ObjectKey>,
    deletion_policy: crate::api::DeletionPolicy,
) -> Result<Converged, crate::Error> {
    let desired = desired(scope, env, topics, owned)?;
    let input = plan::PlanInput {
        scope,
        owned,
        deletion_policy,
        adopt_existing: env.adopt_existing,
        capabilities: capabilities(env.broker_type),
    };
    converge_desired(backend, desired, &input)
        .await
        .map_err(crate::Error::Broker)
}

/// A TCP server that accepts connections and never answers: what a hung broker looks like.
#[cfg(test)]
pub(crate) struct SilentServer {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

#[cfg(test)]
impl SilentServer {
    /// Listen on a free local port.
    pub(crate) async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a local port");
        let port = listener.local_addr().expect("local address").port();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        SilentServer { port, task }
    }

    /// Its port.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }
}

#[cfg(test)]
impl Drop for SilentServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod naming_tests {
    use super::*;

    fn kafka_env() -> EnvSpec {
        serde_json::from_value(serde_json::json!({
            "slug": "prd", "type": "Kafka", "kafka": {"bootstrapServers": ["kafka:9092"]}
        }))
        .expect("env")
    }

    fn topics(names: &[&str]) -> Vec<TopicSpec> {
        names
            .iter()
            .map(|n| {
                serde_json::from_value(serde_json::json!({
                    "name": n,
                    "subscriptions": [{"name": "billing", "deadLetter": {"maxDeliveryAttempts": 5}}]
                }))
                .expect("topic")
            })
            .collect()
    }

    fn topic_names(state: &DesiredState) -> Vec<&str> {
        state
            .objects
            .iter()
            .filter(|o| o.key.kind == ObjectKind::Topic)
            .map(|o| o.key.name.as_str())
            .collect()
    }

    #[test]
    fn existing_topics_keep_their_names_and_new_ones_are_unambiguous() {
        let scope = Scope::new("shop", "orders.v1");
        let fresh = desired(
            &scope,
            &kafka_env(),
            &topics(&["created"]),
            &BTreeSet::new(),
        )
        .expect("desired");
        assert_eq!(topic_names(&fresh), ["shop.orders..v1.created"]);

        // An env whose topic was created by an earlier release under the joined name.
        let existing =
            BTreeSet::from([ObjectKey::new(ObjectKind::Topic, "shop.orders.v1.created")]);
        let later = desired(
            &scope,
            &kafka_env(),
            &topics(&["created", "shipped"]),
            &existing,
        )
        .expect("desired");
        assert_eq!(
            topic_names(&later),
            ["shop.orders.v1.created", "shop.orders..v1.shipped"]
        );
        // Everything that hangs off the kept topic keeps the joined scheme too.
        assert_eq!(
            later.names["created/billing"],
            "shop.orders.v1.created.billing"
        );
        assert_eq!(
            later.names["created/billing/dlq"],
            "shop.orders.v1.created.dlq"
        );
        assert_eq!(
            later.names["shipped/billing"],
            "shop.orders..v1.shipped.billing"
        );
    }

    #[test]
    fn topics_of_one_message_broker_that_meet_are_refused() {
        let scope = Scope::new("shop", "bus");
        let err = desired(
            &scope,
            &kafka_env(),
            &topics(&["orders", "orders.dlq"]),
            &BTreeSet::new(),
        )
        .expect_err("topic orders.dlq meets the dead letters of orders");
        let msg = err.to_string();
        assert!(
            msg.contains("orders.dlq") && msg.contains("rename one"),
            "{msg}"
        );
    }
}
