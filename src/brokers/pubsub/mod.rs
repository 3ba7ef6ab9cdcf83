//! Google Cloud Pub/Sub backend.
//!
//! Mapping: one topic per logical topic (message retention), one subscription per logical
//! subscription (ack deadline, retention, ordering, dead-letter policy). A subscription with
//! dead-lettering gets its own dead-letter topic plus a subscription of the same id on it, so
//! dead letters are kept where someone can read them. Everything the operator creates carries
//! the label [`OWNER_LABEL`].
//!
//! Pub/Sub exposes no backlog count outside Cloud Monitoring, so `messages` is unknown
//! (`None`) and a Delete policy removes subscriptions without a drain check.

pub mod data;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use google_cloud_gax::retry_policy::{Aip194Strict, RetryPolicyExt};
use google_cloud_pubsub::client::{SubscriptionAdmin, TopicAdmin};
use google_cloud_pubsub::model::{DeadLetterPolicy, Subscription, Topic};
use sha2::{Digest, Sha256};

use super::{
    Action, ActionOutcome, Backend, BrokerError, BrokerErrorKind, Capabilities, ConnectionInfo,
    DesiredObject, DesiredState, ObjectKey, ObjectKind, Observed, ObservedObject, Scope, naming,
};
use crate::Error;
use crate::api::{BrokerType, GooglePubSubSpec, TopicSpec};
use crate::secrets::ResolvedSecrets;

/// Label that marks what the operator created; its value is [`owner_label_value`] of the owner.
pub const OWNER_LABEL: &str = "switchyard-owner";

/// Topic or subscription retention (`<seconds>s`, or empty when the broker default applies).
pub const KEY_RETENTION: &str = "messageRetentionDuration";
/// Subscription ack deadline in seconds.
pub const KEY_ACK_DEADLINE: &str = "ackDeadlineSeconds";
/// Subscription dead-letter policy: `<dead-letter topic id>;maxDeliveryAttempts=<n>`, or empty.
pub const KEY_DEAD_LETTER: &str = "deadLetterPolicy";
/// Subscription ordering (`true`/`false`); Pub/Sub cannot change it after creation.
pub const KEY_ORDERING: &str = "enableMessageOrdering";

/// What this broker can change in place.
pub const CAPABILITIES: Capabilities = Capabilities {
    partitions: false,
    immutable_config: &[(KEY_ORDERING, super::Immutable::MessageOrdering)],
};

/// Pub/Sub's bounds on topic retention: 10 minutes to 31 days.
const TOPIC_RETENTION: (u64, u64) = (600, 31 * 24 * 3600);
/// Pub/Sub's bounds on subscription retention: 10 minutes to 7 days (also the default).
const SUBSCRIPTION_RETENTION: (u64, u64) = (600, 7 * 24 * 3600);
/// Default ack deadline.
const DEFAULT_ACK_DEADLINE: i32 = 10;
/// Time allowed for one admin call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The value of [`OWNER_LABEL`] for an owner `namespace/name`. Label values allow only
/// `[a-z0-9_-]` and 63 characters: `namespace_name` with `.` turned into `_` (namespaces and
/// names never contain `_`, so this is one-to-one), or a prefix and a hash when too long.
pub fn owner_label_value(owner: &str) -> String {
    let encoded: String = owner
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '-' => c,
            _ => '_',
        })
        .collect();
    if encoded.len() <= 63 {
        return encoded;
    }
    let digest = hex::encode(Sha256::digest(owner.as_bytes()));
    format!("{}-{}", &encoded[..46], &digest[..16])
}

fn clamp_secs(
    secs: u64,
    (min, max): (u64, u64),
    what: &str,
    logical: &str,
    notes: &mut Vec<String>,
) -> u64 {
    let clamped = secs.clamp(min, max);
    if clamped != secs {
        notes.push(format!(
            "{logical}: Google Pub/Sub keeps {what} messages between {min}s and {max}s; using {clamped}s"
        ));
    }
    clamped
}

/// The objects the spec asks for on this broker.
pub fn desired(
    scope: &Scope,
    spec: &GooglePubSubSpec,
    topics: &[TopicSpec],
) -> Result<DesiredState, Error> {
    let mut state = DesiredState::default();
    let ack = spec
        .ack_deadline_seconds
        .unwrap_or(DEFAULT_ACK_DEADLINE)
        .to_string();
    let id = |parts: &[&str]| naming::scoped(&naming::PUBSUB, scope, parts, 0);
    let mut dead_letter_topics = Vec::new();
    let mut main_topics = Vec::new();
    let mut subscriptions = Vec::new();

    for topic in topics {
        let retention = topic
            .retention_duration()
            .map_err(|e| Error::InvalidSpec(format!("topic {}: {e}", topic.name)))?;
        if topic.partitions.is_some() {
            state.notes.push(format!(
                "{}: partitions are ignored by Google Pub/Sub",
                topic.name
            ));
        }
        let topic_id = id(&[&topic.name]);
        let topic_retention = retention
            .map(|d| {
                format!(
                    "{}s",
                    clamp_secs(
                        d.as_secs(),
                        TOPIC_RETENTION,
                        "topic",
                        &topic.name,
                        &mut state.notes
                    )
                )
            })
            .unwrap_or_default();
        state.names.insert(topic.name.clone(), topic_id.clone());
        main_topics.push(DesiredObject {
            key: ObjectKey::new(ObjectKind::Topic, &topic_id),
            logical: topic.name.clone(),
            parent: None,
            partitions: None,
            config: BTreeMap::from([(KEY_RETENTION.to_string(), topic_retention)]),
        });
        let sub_retention = format!(
            "{}s",
            retention
                .map(|d| d
                    .as_secs()
                    .clamp(SUBSCRIPTION_RETENTION.0, SUBSCRIPTION_RETENTION.1))
                .unwrap_or(SUBSCRIPTION_RETENTION.1)
        );

        for sub in &topic.subscriptions {
            let logical = format!("{}/{}", topic.name, sub.name);
            let sub_id = id(&[&topic.name, &sub.name]);
            state.names.insert(logical.clone(), sub_id.clone());
            let mut config = BTreeMap::from([
                (KEY_ACK_DEADLINE.to_string(), ack.clone()),
                (KEY_RETENTION.to_string(), sub_retention.clone()),
                (KEY_ORDERING.to_string(), topic.ordered.to_string()),
                (KEY_DEAD_LETTER.to_string(), String::new()),
            ]);
            if let Some(dl) = &sub.dead_letter {
                let dlq_id = id(&[&topic.name, &sub.name, "dlq"]);
                let dlq_logical = format!("{logical}/dlq");
                state.names.insert(dlq_logical.clone(), dlq_id.clone());
                config.insert(
                    KEY_DEAD_LETTER.to_string(),
                    dead_letter_value(&dlq_id, dl.max_delivery_attempts),
                );
                dead_letter_topics.push(DesiredObject {
                    key: ObjectKey::new(ObjectKind::DeadLetter, &dlq_id),
                    logical: dlq_logical.clone(),
                    parent: None,
                    partitions: None,
                    config: BTreeMap::from([(KEY_RETENTION.to_string(), String::new())]),
                });
                // A subscription on the dead-letter topic keeps dead letters readable.
                subscriptions.push(DesiredObject {
                    key: ObjectKey::new(ObjectKind::Subscription, &dlq_id),
                    logical: dlq_logical,
                    parent: Some(dlq_id.clone()),
                    partitions: None,
                    config: BTreeMap::from([
                        (KEY_ACK_DEADLINE.to_string(), ack.clone()),
                        (
                            KEY_RETENTION.to_string(),
                            format!("{}s", SUBSCRIPTION_RETENTION.1),
                        ),
                        (KEY_ORDERING.to_string(), "false".to_string()),
                        (KEY_DEAD_LETTER.to_string(), String::new()),
                    ]),
                });
            }
            subscriptions.push(DesiredObject {
                key: ObjectKey::new(ObjectKind::Subscription, &sub_id),
                logical,
                parent: Some(topic_id.clone()),
                partitions: None,
                config,
            });
        }
    }
    if !dead_letter_topics.is_empty() {
        state.notes.push(
            "dead-lettering on Google Cloud needs the Pub/Sub service agent to hold \
             roles/pubsub.publisher on each dead-letter topic and roles/pubsub.subscriber on each \
             subscription that dead-letters"
                .to_string(),
        );
    }
    state.objects.extend(dead_letter_topics);
    state.objects.extend(main_topics);
    state.objects.extend(subscriptions);
    Ok(state)
}

fn dead_letter_value(topic_id: &str, attempts: i32) -> String {
    format!("{topic_id};maxDeliveryAttempts={attempts}")
}

/// Connection details for the binding Secret. Apps bring their own Google identity; the
/// operator's service-account key is never copied.
pub fn connection_info(
    spec: &GooglePubSubSpec,
    _secrets: &ResolvedSecrets,
) -> Result<ConnectionInfo, Error> {
    let uri = spec
        .endpoint
        .clone()
        .unwrap_or_else(|| "https://pubsub.googleapis.com".to_string());
    let (host, port) = host_port(&uri);
    // The upper-case keys are the environment variables the Google Cloud client libraries read,
    // so `envFrom` of this Secret configures them with no code.
    let mut extra = BTreeMap::from([
        ("project-id".to_string(), spec.project_id.clone()),
        ("GOOGLE_CLOUD_PROJECT".to_string(), spec.project_id.clone()),
        ("PUBSUB_PROJECT_ID".to_string(), spec.project_id.clone()),
    ]);
    if uri.starts_with("http://")
        && let Some(h) = &host
    {
        // What the Google client libraries read to talk to an emulator.
        let emulator = format!("{h}:{}", port.unwrap_or(80));
        extra.insert("emulator-host".to_string(), emulator.clone());
        extra.insert("PUBSUB_EMULATOR_HOST".to_string(), emulator);
    }
    Ok(ConnectionInfo {
        provider: "google".into(),
        host,
        port,
        uri: Some(uri),
        username: None,
        password: None,
        extra,
        credentials: BTreeMap::new(),
    })
}

/// Host and port of an `http(s)://host[:port][/...]` URL; the scheme's port when none is given.
pub(crate) fn host_port(url: &str) -> (Option<String>, Option<u16>) {
    let (default_port, rest) = if let Some(r) = url.strip_prefix("https://") {
        (443, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (80, r)
    } else {
        return (None, None);
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return (None, None);
    }
    // IPv6 literals: [::1]:8085
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').unwrap_or((v6, ""));
        let port = after
            .strip_prefix(':')
            .and_then(|p| p.parse().ok())
            .unwrap_or(default_port);
        return (Some(host.to_string()), Some(port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => (Some(h.to_string()), p.parse().ok().or(Some(default_port))),
        None => (Some(authority.to_string()), Some(default_port)),
    }
}

/// A client for this endpoint. Builds the credentials (anonymous for an endpoint override,
/// the service-account key when referenced, application default credentials otherwise); does
/// not contact the broker.
pub async fn connect(
    spec: &GooglePubSubSpec,
    secrets: &ResolvedSecrets,
    options: &super::ConnectOptions,
) -> Result<Arc<dyn Backend>, BrokerError> {
    use google_cloud_auth::credentials::{self, Credentials};
    let creds: Credentials = match (&spec.credentials_secret_ref, &spec.endpoint) {
        (Some(r), _) => {
            let key = secrets
                .get(r)
                .map_err(|e| BrokerError::new(BrokerErrorKind::Authentication, e.to_string()))?;
            let json: serde_json::Value = serde_json::from_str(key.expose()).map_err(|_| {
                BrokerError::new(
                    BrokerErrorKind::Rejected,
                    format!(
                        "Secret {:?} key {:?} is not a service-account JSON key",
                        r.name, r.key
                    ),
                )
            })?;
            credentials::service_account::Builder::new(json)
                .build()
                .map_err(|e| {
                    BrokerError::new(
                        BrokerErrorKind::Rejected,
                        format!(
                            "Secret {:?} key {:?} is not a usable service-account key: {}",
                            r.name,
                            r.key,
                            redact(&e.to_string())
                        ),
                    )
                })?
        }
        (None, Some(_)) => credentials::anonymous::Builder::new().build(),
        (None, None) => credentials::Builder::default().build().map_err(|e| {
            BrokerError::new(
                BrokerErrorKind::Authentication,
                format!(
                    "no credentials: set credentialsSecretRef or provide application default credentials ({})",
                    redact(&e.to_string())
                ),
            )
        })?,
    };
    let build_err = |e: &dyn std::fmt::Display| {
        BrokerError::new(
            BrokerErrorKind::Rejected,
            format!("cannot build the Pub/Sub client: {e}"),
        )
    };
    // One attempt: a broker that is down must show up as Unreachable within the check's time
    // limit even on a loaded machine, and the controller's backoff retries anyway.
    let retry = || Aip194Strict.with_attempt_limit(1);
    let mut topics = TopicAdmin::builder()
        .with_credentials(creds.clone())
        .with_retry_policy(retry());
    let mut subs = SubscriptionAdmin::builder()
        .with_credentials(creds)
        .with_retry_policy(retry());
    if let Some(endpoint) = &spec.endpoint {
        topics = topics.with_endpoint(endpoint.trim_end_matches('/'));
        subs = subs.with_endpoint(endpoint.trim_end_matches('/'));
    }
    let topics = topics.build().await.map_err(|e| build_err(&e))?;
    let subs = subs.build().await.map_err(|e| build_err(&e))?;
    Ok(Arc::new(PubSubBackend {
        project: spec.project_id.clone(),
        topics,
        subs,
        check_timeout: options.check_timeout,
    }))
}

/// Keep error texts short; they never hold key material, but may quote long JSON.
fn redact(s: &str) -> String {
    s.chars().take(200).collect()
}

/// The Pub/Sub backend: admin clients for one project and credentials.
#[derive(Debug)]
pub struct PubSubBackend {
    project: String,
    topics: TopicAdmin,
    subs: SubscriptionAdmin,
    check_timeout: std::time::Duration,
}

/// Classify a Pub/Sub client error.
fn classify(e: &google_cloud_pubsub::Error) -> BrokerError {
    if let Some(status) = e.status() {
        let kind = match status.code.name() {
            "UNAUTHENTICATED" => BrokerErrorKind::Authentication,
            "PERMISSION_DENIED" => BrokerErrorKind::PermissionDenied,
            "NOT_FOUND" => BrokerErrorKind::NotFound,
            "INVALID_ARGUMENT" | "ALREADY_EXISTS" | "FAILED_PRECONDITION" | "OUT_OF_RANGE" => {
                BrokerErrorKind::Rejected
            }
            "DEADLINE_EXCEEDED" => BrokerErrorKind::Timeout,
            "UNAVAILABLE" => BrokerErrorKind::Unreachable,
            _ => BrokerErrorKind::Other,
        };
        return BrokerError::new(
            kind,
            format!("Pub/Sub: {}: {}", status.code.name(), status.message),
        );
    }
    // An exhausted retry loop carries the last attempt's error as its source.
    let mut kind = BrokerErrorKind::Other;
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(g) = err.downcast_ref::<google_cloud_pubsub::Error>() {
            if g.is_authentication() {
                kind = BrokerErrorKind::Authentication;
                break;
            }
            if g.is_connect() || g.is_io() || g.is_transport() {
                kind = BrokerErrorKind::Unreachable;
                break;
            }
            if g.is_timeout() {
                kind = BrokerErrorKind::Timeout;
            }
        }
        current = err.source();
    }
    BrokerError::new(kind, format!("Pub/Sub: {}", redact(&e.to_string())))
}

fn is_not_found(e: &google_cloud_pubsub::Error) -> bool {
    e.status().is_some_and(|s| s.code.name() == "NOT_FOUND")
}

/// Run one call with a time limit.
async fn timed<T>(
    limit: Duration,
    what: &str,
    fut: impl std::future::Future<Output = Result<T, google_cloud_pubsub::Error>>,
) -> Result<Result<T, google_cloud_pubsub::Error>, BrokerError> {
    tokio::time::timeout(limit, fut).await.map_err(|_| {
        BrokerError::new(
            BrokerErrorKind::Timeout,
            format!("Pub/Sub: no answer to {what} within {}s", limit.as_secs()),
        )
    })
}

fn duration_value(d: Option<&google_cloud_wkt::Duration>) -> String {
    d.map(|d| format!("{}s", d.seconds())).unwrap_or_default()
}

fn parse_secs(value: &str) -> Option<google_cloud_wkt::Duration> {
    let secs: i64 = value.strip_suffix('s')?.parse().ok()?;
    Some(google_cloud_wkt::Duration::clamp(secs, 0))
}

fn parse_dead_letter(value: &str) -> Option<(&str, i32)> {
    let (topic, attempts) = value.split_once(";maxDeliveryAttempts=")?;
    Some((topic, attempts.parse().ok()?))
}

impl PubSubBackend {
    fn topic_path(&self, id: &str) -> String {
        format!("projects/{}/topics/{id}", self.project)
    }

    fn subscription_path(&self, id: &str) -> String {
        format!("projects/{}/subscriptions/{id}", self.project)
    }

    /// The id at the end of a resource path.
    fn id_of(path: &str) -> &str {
        path.rsplit('/').next().unwrap_or(path)
    }

    fn owner_of(labels: &HashMap<String, String>, scope: &Scope) -> Option<String> {
        let value = labels.get(OWNER_LABEL)?;
        let owner = scope.owner();
        if *value == owner_label_value(&owner) {
            Some(owner)
        } else {
            Some(value.clone())
        }
    }

    fn topic_observed(topic: &Topic, scope: &Scope) -> ObservedObject {
        ObservedObject {
            partitions: None,
            config: BTreeMap::from([(
                KEY_RETENTION.to_string(),
                duration_value(topic.message_retention_duration.as_ref()),
            )]),
            owner: Self::owner_of(&topic.labels, scope),
            messages: None,
        }
    }

    fn subscription_observed(sub: &Subscription, scope: &Scope) -> ObservedObject {
        let dead_letter = sub
            .dead_letter_policy
            .as_ref()
            .filter(|p| !p.dead_letter_topic.is_empty())
            .map(|p| dead_letter_value(Self::id_of(&p.dead_letter_topic), p.max_delivery_attempts))
            .unwrap_or_default();
        ObservedObject {
            partitions: None,
            config: BTreeMap::from([
                (
                    KEY_ACK_DEADLINE.to_string(),
                    sub.ack_deadline_seconds.to_string(),
                ),
                (
                    KEY_RETENTION.to_string(),
                    duration_value(sub.message_retention_duration.as_ref()),
                ),
                (
                    KEY_ORDERING.to_string(),
                    sub.enable_message_ordering.to_string(),
                ),
                (KEY_DEAD_LETTER.to_string(), dead_letter),
            ]),
            owner: Self::owner_of(&sub.labels, scope),
            messages: None,
        }
    }

    async fn get_topic(&self, id: &str) -> Result<Option<Topic>, BrokerError> {
        match timed(
            CALL_TIMEOUT,
            "GetTopic",
            self.topics
                .get_topic()
                .set_topic(self.topic_path(id))
                .send(),
        )
        .await?
        {
            Ok(t) => Ok(Some(t)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(classify(&e)),
        }
    }

    async fn get_subscription(&self, id: &str) -> Result<Option<Subscription>, BrokerError> {
        match timed(
            CALL_TIMEOUT,
            "GetSubscription",
            self.subs
                .get_subscription()
                .set_subscription(self.subscription_path(id))
                .send(),
        )
        .await?
        {
            Ok(s) => Ok(Some(s)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(classify(&e)),
        }
    }

    fn dead_letter_policy(&self, value: &str) -> Option<DeadLetterPolicy> {
        parse_dead_letter(value).map(|(topic, attempts)| {
            DeadLetterPolicy::new()
                .set_dead_letter_topic(self.topic_path(topic))
                .set_max_delivery_attempts(attempts)
        })
    }

    async fn create(&self, scope: &Scope, object: &DesiredObject) -> Result<(), BrokerError> {
        let labels = [(OWNER_LABEL, owner_label_value(&scope.owner()))];
        let retention = object.config.get(KEY_RETENTION).and_then(|v| parse_secs(v));
        match object.key.kind {
            ObjectKind::Topic | ObjectKind::DeadLetter => {
                let call = self
                    .topics
                    .create_topic()
                    .set_name(self.topic_path(&object.key.name))
                    .set_labels(labels)
                    .set_or_clear_message_retention_duration(retention);
                timed(CALL_TIMEOUT, "CreateTopic", call.send())
                    .await?
                    .map_err(|e| classify(&e))?;
            }
            ObjectKind::Subscription => {
                let parent = object.parent.as_deref().ok_or_else(|| {
                    BrokerError::new(
                        BrokerErrorKind::Rejected,
                        format!("{} has no topic", object.key),
                    )
                })?;
                let ack: i32 = object
                    .config
                    .get(KEY_ACK_DEADLINE)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(DEFAULT_ACK_DEADLINE);
                let ordered = object.config.get(KEY_ORDERING).map(String::as_str) == Some("true");
                let dead_letter = object
                    .config
                    .get(KEY_DEAD_LETTER)
                    .and_then(|v| self.dead_letter_policy(v));
                let call = self
                    .subs
                    .create_subscription()
                    .set_name(self.subscription_path(&object.key.name))
                    .set_topic(self.topic_path(parent))
                    .set_labels(labels)
                    .set_ack_deadline_seconds(ack)
                    .set_enable_message_ordering(ordered)
                    .set_or_clear_message_retention_duration(retention)
                    .set_or_clear_dead_letter_policy(dead_letter);
                timed(CALL_TIMEOUT, "CreateSubscription", call.send())
                    .await?
                    .map_err(|e| classify(&e))?;
            }
            ObjectKind::Queue | ObjectKind::Binding => {
                return Err(unsupported(&object.key));
            }
        }
        Ok(())
    }

    /// Update the given settings (and, when `label` is set, add the owner label).
    async fn update(
        &self,
        scope: &Scope,
        object: &DesiredObject,
        keys: &[&str],
        label: bool,
    ) -> Result<(), BrokerError> {
        let mut mask: Vec<&str> = Vec::new();
        match object.key.kind {
            ObjectKind::Topic | ObjectKind::DeadLetter => {
                let mut topic = Topic::new().set_name(self.topic_path(&object.key.name));
                if label {
                    let current = self.get_topic(&object.key.name).await?.ok_or_else(|| {
                        BrokerError::new(
                            BrokerErrorKind::NotFound,
                            format!("{} no longer exists", object.key),
                        )
                    })?;
                    let mut labels = current.labels;
                    labels.insert(OWNER_LABEL.into(), owner_label_value(&scope.owner()));
                    topic = topic.set_labels(labels);
                    mask.push("labels");
                }
                if keys.contains(&KEY_RETENTION) {
                    topic = topic.set_or_clear_message_retention_duration(
                        object.config.get(KEY_RETENTION).and_then(|v| parse_secs(v)),
                    );
                    mask.push("message_retention_duration");
                }
                if mask.is_empty() {
                    return Ok(());
                }
                let call = self
                    .topics
                    .update_topic()
                    .set_topic(topic)
                    .set_update_mask(google_cloud_wkt::FieldMask::default().set_paths(mask));
                timed(CALL_TIMEOUT, "UpdateTopic", call.send())
                    .await?
                    .map_err(|e| classify(&e))?;
            }
            ObjectKind::Subscription => {
                let mut sub =
                    Subscription::new().set_name(self.subscription_path(&object.key.name));
                if label {
                    let current =
                        self.get_subscription(&object.key.name)
                            .await?
                            .ok_or_else(|| {
                                BrokerError::new(
                                    BrokerErrorKind::NotFound,
                                    format!("{} no longer exists", object.key),
                                )
                            })?;
                    let mut labels = current.labels;
                    labels.insert(OWNER_LABEL.into(), owner_label_value(&scope.owner()));
                    sub = sub.set_labels(labels);
                    mask.push("labels");
                }
                if keys.contains(&KEY_ACK_DEADLINE) {
                    let ack: i32 = object
                        .config
                        .get(KEY_ACK_DEADLINE)
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(DEFAULT_ACK_DEADLINE);
                    sub = sub.set_ack_deadline_seconds(ack);
                    mask.push("ack_deadline_seconds");
                }
                if keys.contains(&KEY_RETENTION) {
                    sub = sub.set_or_clear_message_retention_duration(
                        object.config.get(KEY_RETENTION).and_then(|v| parse_secs(v)),
                    );
                    mask.push("message_retention_duration");
                }
                if keys.contains(&KEY_DEAD_LETTER) {
                    sub = sub.set_or_clear_dead_letter_policy(
                        object
                            .config
                            .get(KEY_DEAD_LETTER)
                            .and_then(|v| self.dead_letter_policy(v)),
                    );
                    mask.push("dead_letter_policy");
                }
                if mask.is_empty() {
                    return Ok(());
                }
                let call = self
                    .subs
                    .update_subscription()
                    .set_subscription(sub)
                    .set_update_mask(google_cloud_wkt::FieldMask::default().set_paths(mask));
                timed(CALL_TIMEOUT, "UpdateSubscription", call.send())
                    .await?
                    .map_err(|e| classify(&e))?;
            }
            ObjectKind::Queue | ObjectKind::Binding => return Err(unsupported(&object.key)),
        }
        Ok(())
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), BrokerError> {
        let result = match key.kind {
            ObjectKind::Topic | ObjectKind::DeadLetter => {
                timed(
                    CALL_TIMEOUT,
                    "DeleteTopic",
                    self.topics
                        .delete_topic()
                        .set_topic(self.topic_path(&key.name))
                        .send(),
                )
                .await?
            }
            ObjectKind::Subscription => {
                timed(
                    CALL_TIMEOUT,
                    "DeleteSubscription",
                    self.subs
                        .delete_subscription()
                        .set_subscription(self.subscription_path(&key.name))
                        .send(),
                )
                .await?
            }
            ObjectKind::Queue | ObjectKind::Binding => return Err(unsupported(key)),
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(classify(&e)),
        }
    }
}

fn unsupported(key: &ObjectKey) -> BrokerError {
    BrokerError::new(
        BrokerErrorKind::Rejected,
        format!("{key}: Google Pub/Sub has no such object"),
    )
}

#[async_trait]
impl Backend for PubSubBackend {
    fn broker_type(&self) -> BrokerType {
        BrokerType::GooglePubSub
    }

    async fn check(&self) -> Result<(), BrokerError> {
        let call = self
            .topics
            .list_topics()
            .set_project(format!("projects/{}", self.project))
            .set_page_size(1)
            .send();
        match timed(self.check_timeout, "ListTopics", call).await? {
            Ok(_) => Ok(()),
            Err(e) => {
                let mut err = classify(&e);
                if err.kind == BrokerErrorKind::NotFound {
                    err.message = format!(
                        "project {:?} not found or not visible to these credentials ({})",
                        self.project, err.message
                    );
                }
                Err(err)
            }
        }
    }

    async fn observe(&self, scope: &Scope, keys: &[ObjectKey]) -> Result<Observed, BrokerError> {
        let mut observed = Observed::default();
        for key in keys {
            let object = match key.kind {
                ObjectKind::Topic | ObjectKind::DeadLetter => self
                    .get_topic(&key.name)
                    .await?
                    .map(|t| Self::topic_observed(&t, scope)),
                ObjectKind::Subscription => self
                    .get_subscription(&key.name)
                    .await?
                    .map(|s| Self::subscription_observed(&s, scope)),
                ObjectKind::Queue | ObjectKind::Binding => None,
            };
            if let Some(object) = object {
                observed.objects.insert(key.clone(), object);
            }
        }
        Ok(observed)
    }

    async fn apply(&self, scope: &Scope, actions: &[Action]) -> Vec<ActionOutcome> {
        let mut outcomes = Vec::with_capacity(actions.len());
        for action in actions {
            let result = match action {
                Action::Create { object } => self.create(scope, object).await,
                Action::Adopt { object } => match self.update(scope, object, &[], true).await {
                    // The emulator cannot update labels; ownership then lives in the
                    // controller's owned set alone.
                    Err(e)
                        if e.kind == BrokerErrorKind::Rejected && e.message.contains("labels") =>
                    {
                        tracing::warn!(object = %object.key, error = %e, "adopted without an owner label");
                        Ok(())
                    }
                    other => other,
                },
                Action::Update { object, changes } => {
                    let keys: Vec<&str> = changes.iter().map(|c| c.key.as_str()).collect();
                    self.update(scope, object, &keys, false).await
                }
                Action::AddPartitions { object, .. } => Err(BrokerError::new(
                    BrokerErrorKind::Rejected,
                    format!("{}: Google Pub/Sub has no partitions", object.key),
                )),
                Action::Delete { key } => self.delete(key).await,
            };
            outcomes.push(ActionOutcome {
                key: action.key().clone(),
                result,
            });
        }
        outcomes
    }
}

/// The Google Pub/Sub driver: what the rest of Switchyard knows about Google Pub/Sub.
pub struct GooglePubSub;

impl super::Driver for GooglePubSub {
    const TYPE: crate::api::BrokerType = crate::api::BrokerType::GooglePubSub;
    const BINDING_TYPE: &'static str = data::BINDING_TYPE;

    super::driver::forward_to_folder!(GooglePubSubSpec, google_pub_sub);

    fn endpoint(spec: &GooglePubSubSpec) -> serde_json::Value {
        serde_json::json!((&spec.project_id, &spec.endpoint))
    }

    fn secret_keys(spec: &GooglePubSubSpec) -> Vec<(String, String)> {
        spec.credentials_secret_ref
            .iter()
            .map(|r| r.secret_key())
            .collect()
    }

    /// The operator's key is never copied: apps bring their own Google identity.
    fn binding_has_credentials(_spec: &GooglePubSubSpec) -> bool {
        false
    }

    /// Nothing to replace (the API refuses the app Secret on Pub/Sub envs).
    fn with_app_credentials(
        spec: &GooglePubSubSpec,
        _app: &crate::api::LocalSecretRef,
    ) -> GooglePubSubSpec {
        spec.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{DeadLetterSpec, SubscriptionSpec};

    /// The emulator has no IAM, so Pub/Sub's permission and credential errors are checked here,
    /// with the status codes Google's API answers.
    #[test]
    fn permission_and_credential_statuses_keep_their_reasons() {
        use google_cloud_gax::error::rpc::{Code, Status};
        let cases = [
            (
                Code::PermissionDenied,
                "User not authorized to perform this action: pubsub.topics.create",
                BrokerErrorKind::PermissionDenied,
            ),
            (
                Code::Unauthenticated,
                "Request had invalid authentication credentials.",
                BrokerErrorKind::Authentication,
            ),
            (
                Code::NotFound,
                "Resource not found",
                BrokerErrorKind::NotFound,
            ),
        ];
        for (code, message, kind) in cases {
            let e = google_cloud_pubsub::Error::service(
                Status::default().set_code(code).set_message(message),
            );
            let err = classify(&e);
            assert_eq!(err.kind, kind, "{code:?}");
            assert!(err.message.contains(message), "{}", err.message);
        }
    }

    fn spec() -> GooglePubSubSpec {
        GooglePubSubSpec {
            project_id: "demo-project".into(),
            credentials_secret_ref: None,
            endpoint: Some("http://127.0.0.1:8085".into()),
            ack_deadline_seconds: Some(30),
        }
    }

    fn scope() -> Scope {
        Scope::new("shop", "bus.v2")
    }

    fn topic(name: &str, retention: Option<&str>, subs: &[(&str, Option<i32>)]) -> TopicSpec {
        TopicSpec {
            name: name.into(),
            partitions: Some(3),
            retention: retention.map(str::to_string),
            ordered: false,
            subscriptions: subs
                .iter()
                .map(|(n, dl)| SubscriptionSpec {
                    name: (*n).into(),
                    dead_letter: dl.map(|m| DeadLetterSpec {
                        max_delivery_attempts: m,
                    }),
                })
                .collect(),
        }
    }

    #[test]
    fn maps_topics_subscriptions_and_dead_letters() {
        let state = desired(
            &scope(),
            &spec(),
            &[topic(
                "orders",
                Some("48h"),
                &[("billing", None), ("shipping", Some(5))],
            )],
        )
        .expect("desired");
        let kinds: Vec<(ObjectKind, &str)> = state
            .objects
            .iter()
            .map(|o| (o.key.kind, o.key.name.as_str()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (ObjectKind::DeadLetter, "shop.bus..v2.orders.shipping.dlq"),
                (ObjectKind::Topic, "shop.bus..v2.orders"),
                (ObjectKind::Subscription, "shop.bus..v2.orders.billing"),
                (ObjectKind::Subscription, "shop.bus..v2.orders.shipping.dlq"),
                (ObjectKind::Subscription, "shop.bus..v2.orders.shipping"),
            ]
        );
        let topic = &state.objects[1];
        assert_eq!(topic.config[KEY_RETENTION], "172800s");
        let shipping = &state.objects[4];
        assert_eq!(shipping.parent.as_deref(), Some("shop.bus..v2.orders"));
        assert_eq!(shipping.config[KEY_ACK_DEADLINE], "30");
        assert_eq!(shipping.config[KEY_RETENTION], "172800s");
        assert_eq!(
            shipping.config[KEY_DEAD_LETTER],
            "shop.bus..v2.orders.shipping.dlq;maxDeliveryAttempts=5"
        );
        assert_eq!(state.objects[2].config[KEY_DEAD_LETTER], "");
        assert_eq!(
            state.names["orders/shipping"],
            "shop.bus..v2.orders.shipping"
        );
        assert_eq!(
            state.names["orders/shipping/dlq"],
            "shop.bus..v2.orders.shipping.dlq"
        );
        assert!(state.notes.iter().any(|n| n.contains("partitions")));
    }

    #[test]
    fn retention_is_clamped_to_pubsub_bounds_with_a_note() {
        let state = desired(
            &scope(),
            &spec(),
            &[topic("t1", Some("8760h"), &[("s", None)])],
        )
        .expect("desired");
        assert_eq!(state.objects[0].config[KEY_RETENTION], "2678400s");
        assert_eq!(state.objects[1].config[KEY_RETENTION], "604800s");
        assert!(state.notes.iter().any(|n| n.contains("2678400s")));
        let state =
            desired(&scope(), &spec(), &[topic("t1", None, &[("s", None)])]).expect("desired");
        assert_eq!(state.objects[0].config[KEY_RETENTION], "");
        assert_eq!(state.objects[1].config[KEY_RETENTION], "604800s");
    }

    #[test]
    fn owner_label_fits_label_rules_and_stays_distinct() {
        assert_eq!(owner_label_value("shop/bus.v2"), "shop_bus_v2");
        let long_a = format!("{}/{}", "n".repeat(63), "a".repeat(63));
        let long_b = format!("{}/{}", "n".repeat(63), "b".repeat(63));
        let a = owner_label_value(&long_a);
        assert!(a.len() <= 63, "{a}");
        assert!(
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        );
        assert_ne!(a, owner_label_value(&long_b));
    }

    #[test]
    fn connection_info_points_at_the_emulator() {
        let info = connection_info(&spec(), &ResolvedSecrets::default()).expect("info");
        assert_eq!(info.host.as_deref(), Some("127.0.0.1"));
        assert_eq!(info.port, Some(8085));
        assert_eq!(info.extra["project-id"], "demo-project");
        assert_eq!(info.extra["emulator-host"], "127.0.0.1:8085");
        // The environment variables the Google Cloud client libraries read.
        assert_eq!(info.extra["PUBSUB_EMULATOR_HOST"], "127.0.0.1:8085");
        assert_eq!(info.extra["GOOGLE_CLOUD_PROJECT"], "demo-project");
        assert_eq!(info.extra["PUBSUB_PROJECT_ID"], "demo-project");
        assert!(info.credentials.is_empty(), "apps bring their own identity");
        let mut cloud = spec();
        cloud.endpoint = None;
        let info = connection_info(&cloud, &ResolvedSecrets::default()).expect("info");
        assert_eq!(info.host.as_deref(), Some("pubsub.googleapis.com"));
        assert_eq!(info.port, Some(443));
        assert!(!info.extra.contains_key("emulator-host"));
        assert!(!info.extra.contains_key("PUBSUB_EMULATOR_HOST"));
    }

    #[test]
    fn dead_letter_value_round_trips() {
        let v = dead_letter_value("a.b.dlq", 7);
        assert_eq!(parse_dead_letter(&v), Some(("a.b.dlq", 7)));
        assert_eq!(parse_dead_letter(""), None);
    }
}
