//! The NATS client side of the operator: connectivity and permission checks, observation and
//! apply, over the JetStream API (`$JS.API.*` requests with JSON bodies). The API is used
//! directly, rather than through the client's typed stream and consumer configs, so that an
//! update changes only the settings Switchyard manages and keeps the rest of what the server
//! holds (a limit someone set by hand survives an update of the retention).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use tokio::sync::{Mutex, Notify};

use super::data::Settings;
use super::errors::{ApiError, classify_api, classify_connect, permission_denied};
use super::{
    ACK_POLICY, ACK_WAIT, MAX_ACK_PENDING, MAX_AGE, MAX_DELIVER, OWNER_METADATA, REPLICAS, STORAGE,
    SUBJECTS, format_age, split_consumer_key,
};
use crate::api::BrokerType;
use crate::brokers::{
    Action, ActionOutcome, Backend, BrokerError, BrokerErrorKind, DesiredObject, ObjectKey,
    ObjectKind, Observed, ObservedObject, Scope,
};

/// Bound on one JetStream API request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// One connection to a NATS endpoint with one set of credentials, shared by every
/// MessageBroker that uses it.
pub struct NatsBackend {
    settings: Settings,
    /// The servers (no credentials), for messages.
    endpoint: String,
    /// Connected on first use; dropped after an authentication failure so that the next call
    /// dials again with what the Secret holds then.
    conn: Mutex<Option<Conn>>,
    check_timeout: Duration,
}

impl std::fmt::Debug for NatsBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBackend")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// A connected client, and what the server said about refused publishes.
#[derive(Clone)]
struct Conn {
    client: async_nats::Client,
    violations: Arc<Violations>,
}

/// Permission violations the server reported (`-ERR` is asynchronous: the refused request
/// simply never gets an answer).
#[derive(Default)]
struct Violations {
    last: std::sync::Mutex<Option<String>>,
    notify: Notify,
}

impl Violations {
    fn record(&self, message: String) {
        if let Ok(mut last) = self.last.lock() {
            *last = Some(message);
        }
        self.notify.notify_waiters();
    }

    /// The last violation naming `subject`, if any.
    fn about(&self, subject: &str) -> Option<String> {
        self.last
            .lock()
            .ok()?
            .clone()
            .filter(|m| m.contains(subject))
    }
}

impl NatsBackend {
    pub(super) fn new(settings: Settings, check_timeout: Duration) -> Self {
        NatsBackend {
            endpoint: settings.servers.join(","),
            settings,
            conn: Mutex::new(None),
            check_timeout,
        }
    }

    /// The servers, without credentials.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    async fn connection(&self) -> Result<Conn, BrokerError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let violations = Arc::new(Violations::default());
        let seen = violations.clone();
        let options = self
            .settings
            .options()
            .map_err(|e| BrokerError::new(BrokerErrorKind::Tls, e))?
            .request_timeout(Some(REQUEST_TIMEOUT))
            .event_callback(move |event| {
                let seen = seen.clone();
                async move {
                    if let async_nats::Event::ServerError(async_nats::ServerError::Other(m)) = event
                        && m.to_ascii_lowercase().contains("permissions violation")
                    {
                        seen.record(m);
                    }
                }
            });
        let client = options
            .connect(self.settings.servers.as_slice())
            .await
            .map_err(|e| classify_connect(&e, &self.endpoint))?;
        let conn = Conn { client, violations };
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Forget the connection after the server refused our credentials.
    async fn after(&self, error: Option<&BrokerError>) {
        if error.is_some_and(|e| e.kind == BrokerErrorKind::Authentication) {
            *self.conn.lock().await = None;
        }
    }

    async fn session(&self) -> Result<Session<'_>, BrokerError> {
        Ok(Session {
            conn: self.connection().await?,
            endpoint: &self.endpoint,
        })
    }

    async fn check_inner(&self) -> Result<(), BrokerError> {
        let s = self.session().await?;
        // Account info needs the JetStream API and a JetStream-enabled account; a user denied
        // the API or in an account without JetStream fails here.
        s.api("INFO", &json!({}), "account info").await.map(drop)
    }

    async fn observe_inner(&self, keys: &[ObjectKey]) -> Result<Observed, BrokerError> {
        if keys.is_empty() {
            return Ok(Observed::default());
        }
        let s = self.session().await?;
        let streams: BTreeSet<&str> = keys
            .iter()
            .filter_map(|k| match k.kind {
                ObjectKind::Topic | ObjectKind::DeadLetter => Some(k.name.as_str()),
                ObjectKind::Subscription => split_consumer_key(&k.name).map(|(st, _)| st),
                ObjectKind::Queue | ObjectKind::Binding => None,
            })
            .collect();
        let mut found: HashMap<&str, (Value, Vec<Value>)> = HashMap::new();
        for stream in streams {
            if let Some(info) = s.stream_info(stream).await? {
                let consumers = s.consumers(stream).await?;
                found.insert(stream, (info, consumers));
            }
        }

        let mut observed = Observed::default();
        for key in keys {
            let object = match key.kind {
                ObjectKind::Topic | ObjectKind::DeadLetter => {
                    found.get(key.name.as_str()).map(|(info, consumers)| {
                        let messages = if key.kind == ObjectKind::Topic {
                            consumers.iter().map(unconsumed).max().unwrap_or(0)
                        } else {
                            info["state"]["messages"].as_u64().unwrap_or(0)
                        };
                        ObservedObject {
                            partitions: None,
                            config: stream_settings(&info["config"]),
                            owner: recorded_owner(&info["config"]),
                            messages: Some(messages),
                        }
                    })
                }
                ObjectKind::Subscription => {
                    split_consumer_key(&key.name).and_then(|(stream, consumer)| {
                        let (_, consumers) = found.get(stream)?;
                        let c = consumers.iter().find(|c| c["name"] == consumer)?;
                        Some(ObservedObject {
                            partitions: None,
                            config: consumer_settings(&c["config"]),
                            owner: recorded_owner(&c["config"]),
                            messages: Some(unconsumed(c)),
                        })
                    })
                }
                ObjectKind::Queue | ObjectKind::Binding => None,
            };
            if let Some(object) = object {
                observed.objects.insert(key.clone(), object);
            }
        }
        Ok(observed)
    }

    async fn apply_one(
        &self,
        s: &Session<'_>,
        scope: &Scope,
        action: &Action,
    ) -> Result<(), BrokerError> {
        let owner = scope.owner();
        match action {
            Action::Create { object } => match object.key.kind {
                ObjectKind::Topic | ObjectKind::DeadLetter => {
                    let name = &object.key.name;
                    let config = stream_config(&json!({}), name, object, &owner, true)?;
                    s.api(
                        &format!("STREAM.CREATE.{name}"),
                        &config,
                        &format!("STREAM.CREATE {name}"),
                    )
                    .await
                    .map(drop)
                }
                ObjectKind::Subscription => {
                    let (stream, consumer) = consumer_parts(&object.key)?;
                    let config = consumer_config(&json!({}), consumer, object, &owner)?;
                    s.create_consumer(stream, consumer, config, "create").await
                }
                other => Err(unsupported(other)),
            },
            Action::Adopt { object } | Action::Update { object, .. } => match object.key.kind {
                ObjectKind::Topic | ObjectKind::DeadLetter => {
                    let name = &object.key.name;
                    let Some(info) = s.stream_info(name).await? else {
                        return Err(vanished(&object.key));
                    };
                    let config = stream_config(&info["config"], name, object, &owner, false)?;
                    s.api(
                        &format!("STREAM.UPDATE.{name}"),
                        &config,
                        &format!("STREAM.UPDATE {name}"),
                    )
                    .await
                    .map(drop)
                }
                ObjectKind::Subscription => {
                    let (stream, consumer) = consumer_parts(&object.key)?;
                    let Some(info) = s.consumer_info(stream, consumer).await? else {
                        return Err(vanished(&object.key));
                    };
                    let config = consumer_config(&info["config"], consumer, object, &owner)?;
                    s.create_consumer(stream, consumer, config, "update").await
                }
                other => Err(unsupported(other)),
            },
            Action::AddPartitions { .. } => Err(BrokerError::new(
                BrokerErrorKind::Rejected,
                "JetStream streams have no partitions",
            )),
            Action::Delete { key } => self.delete(s, key, &owner).await,
        }
    }

    /// Delete an object we own, unless it still holds something for a subscriber. Gone
    /// already counts as deleted.
    async fn delete(
        &self,
        s: &Session<'_>,
        key: &ObjectKey,
        owner: &str,
    ) -> Result<(), BrokerError> {
        let not_ours = || {
            BrokerError::new(
                BrokerErrorKind::Rejected,
                format!("{key} is not marked as created by {owner}; it is left in place"),
            )
        };
        match key.kind {
            ObjectKind::Topic | ObjectKind::DeadLetter => {
                let name = &key.name;
                let Some(info) = s.stream_info(name).await? else {
                    return Ok(());
                };
                if recorded_owner(&info["config"]).as_deref() != Some(owner) {
                    return Err(not_ours());
                }
                let consumers = s.consumers(name).await?;
                let foreign: Vec<&str> = consumers
                    .iter()
                    .filter(|c| owner_of_consumer(c).as_deref() != Some(owner))
                    .filter_map(|c| c["name"].as_str())
                    .collect();
                if !foreign.is_empty() {
                    return Err(BrokerError::new(
                        BrokerErrorKind::Rejected,
                        format!(
                            "{key} has consumers not created by {owner} ({}); it is left in place",
                            foreign.join(", ")
                        ),
                    ));
                }
                if key.kind == ObjectKind::DeadLetter {
                    let held = info["state"]["messages"].as_u64().unwrap_or(0);
                    if held > 0 {
                        return Err(BrokerError::new(
                            BrokerErrorKind::Other,
                            format!(
                                "{key} still holds {held} dead letters; it is deleted once drained"
                            ),
                        ));
                    }
                }
                let pending = consumers.iter().map(unconsumed).max().unwrap_or(0);
                if pending > 0 {
                    return Err(BrokerError::new(
                        BrokerErrorKind::Other,
                        format!(
                            "{key} still holds {pending} messages its consumers have not acknowledged; it is deleted once they are"
                        ),
                    ));
                }
                s.api_allow_missing(
                    &format!("STREAM.DELETE.{name}"),
                    &format!("STREAM.DELETE {name}"),
                )
                .await
            }
            ObjectKind::Subscription => {
                let (stream, consumer) = consumer_parts(key)?;
                let Some(info) = s.consumer_info(stream, consumer).await? else {
                    return Ok(());
                };
                if owner_of_consumer(&info).as_deref() != Some(owner) {
                    return Err(not_ours());
                }
                let pending = unconsumed(&info);
                if pending > 0 {
                    return Err(BrokerError::new(
                        BrokerErrorKind::Other,
                        format!(
                            "{key} still has {pending} messages not acknowledged; it is deleted once they are"
                        ),
                    ));
                }
                s.api_allow_missing(
                    &format!("CONSUMER.DELETE.{stream}.{consumer}"),
                    &format!("CONSUMER.DELETE {stream} {consumer}"),
                )
                .await
            }
            other => Err(unsupported(other)),
        }
    }
}

#[async_trait]
impl Backend for NatsBackend {
    fn broker_type(&self) -> BrokerType {
        BrokerType::NatsJetStream
    }

    async fn check(&self) -> Result<(), BrokerError> {
        let result = tokio::time::timeout(self.check_timeout, self.check_inner())
            .await
            .unwrap_or_else(|_| {
                Err(BrokerError::new(
                    BrokerErrorKind::Timeout,
                    format!(
                        "nats {}: no answer within {}s",
                        self.endpoint,
                        self.check_timeout.as_secs_f64()
                    ),
                ))
            });
        self.after(result.as_ref().err()).await;
        result
    }

    async fn observe(&self, _scope: &Scope, keys: &[ObjectKey]) -> Result<Observed, BrokerError> {
        let result = self.observe_inner(keys).await;
        self.after(result.as_ref().err()).await;
        result
    }

    async fn apply(&self, scope: &Scope, actions: &[Action]) -> Vec<ActionOutcome> {
        let session = match self.session().await {
            Ok(s) => s,
            Err(e) => {
                self.after(Some(&e)).await;
                return actions
                    .iter()
                    .map(|a| ActionOutcome {
                        key: a.key().clone(),
                        result: Err(e.clone()),
                    })
                    .collect();
            }
        };
        let mut outcomes = Vec::with_capacity(actions.len());
        for action in actions {
            let result = self.apply_one(&session, scope, action).await;
            if let Err(e) = &result {
                tracing::debug!(key = %action.key(), error = %e, "nats action failed");
            }
            self.after(result.as_ref().err()).await;
            outcomes.push(ActionOutcome {
                key: action.key().clone(),
                result,
            });
        }
        outcomes
    }
}

/// One connection in use, with the endpoint for messages.
struct Session<'a> {
    conn: Conn,
    endpoint: &'a str,
}

impl Session<'_> {
    /// One JetStream API request (`$JS.API.<api>`); an error reply becomes a [`BrokerError`].
    async fn api(&self, api: &str, body: &Value, context: &str) -> Result<Value, BrokerError> {
        match self.request(api, body, context).await? {
            Ok(reply) => Ok(reply),
            Err(e) => Err(classify_api(&e, self.endpoint, context)),
        }
    }

    /// A request whose "not found" reply means success (a delete of something already gone).
    async fn api_allow_missing(&self, api: &str, context: &str) -> Result<(), BrokerError> {
        match self.request(api, &json!({}), context).await? {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(classify_api(&e, self.endpoint, context)),
        }
    }

    /// The reply of a request, or the API's error reply; transport failures are errors.
    async fn request(
        &self,
        api: &str,
        body: &Value,
        context: &str,
    ) -> Result<Result<Value, ApiError>, BrokerError> {
        let subject = format!("$JS.API.{api}");
        let payload = serde_json::to_vec(body).map_err(|e| {
            BrokerError::new(BrokerErrorKind::Other, format!("{context}: encode: {e}"))
        })?;
        let violations = &self.conn.violations;
        let request = self.conn.client.request(subject.clone(), payload.into());
        tokio::pin!(request);
        let reply = loop {
            let refused = violations.notify.notified();
            tokio::pin!(refused);
            refused.as_mut().enable();
            tokio::select! {
                r = &mut request => break r,
                () = &mut refused => {
                    // The server refused a publish of ours; if it was this one, no answer comes.
                    if let Some(m) = violations.about(&subject) {
                        return Err(permission_denied(self.endpoint, context, &m));
                    }
                }
            }
        };
        let message = match reply {
            Ok(m) => m,
            Err(e) => {
                if let Some(m) = violations.about(&subject) {
                    return Err(permission_denied(self.endpoint, context, &m));
                }
                let kind = match e.kind() {
                    async_nats::RequestErrorKind::TimedOut => BrokerErrorKind::Timeout,
                    async_nats::RequestErrorKind::NoResponders => BrokerErrorKind::NotFound,
                    async_nats::RequestErrorKind::Other => BrokerErrorKind::Unreachable,
                    _ => BrokerErrorKind::Other,
                };
                let hint = if kind == BrokerErrorKind::NotFound {
                    " (JetStream is not enabled on the server or for the account)"
                } else {
                    ""
                };
                return Err(BrokerError::new(
                    kind,
                    format!("nats {}: {context}: {e}{hint}", self.endpoint),
                ));
            }
        };
        let reply: Value = serde_json::from_slice(&message.payload).map_err(|e| {
            BrokerError::new(
                BrokerErrorKind::Other,
                format!("nats {}: {context}: unexpected reply: {e}", self.endpoint),
            )
        })?;
        Ok(match ApiError::of(&reply) {
            Some(e) => Err(e),
            None => Ok(reply),
        })
    }

    async fn stream_info(&self, stream: &str) -> Result<Option<Value>, BrokerError> {
        let context = format!("STREAM.INFO {stream}");
        match self
            .request(&format!("STREAM.INFO.{stream}"), &json!({}), &context)
            .await?
        {
            Ok(info) => Ok(Some(info)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(classify_api(&e, self.endpoint, &context)),
        }
    }

    async fn consumer_info(
        &self,
        stream: &str,
        consumer: &str,
    ) -> Result<Option<Value>, BrokerError> {
        let context = format!("CONSUMER.INFO {stream} {consumer}");
        match self
            .request(
                &format!("CONSUMER.INFO.{stream}.{consumer}"),
                &json!({}),
                &context,
            )
            .await?
        {
            Ok(info) => Ok(Some(info)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(classify_api(&e, self.endpoint, &context)),
        }
    }

    /// Every consumer of a stream, with its state (the list is paged).
    async fn consumers(&self, stream: &str) -> Result<Vec<Value>, BrokerError> {
        let mut out = Vec::new();
        loop {
            let context = format!("CONSUMER.LIST {stream}");
            let page = match self
                .request(
                    &format!("CONSUMER.LIST.{stream}"),
                    &json!({"offset": out.len()}),
                    &context,
                )
                .await?
            {
                Ok(page) => page,
                Err(e) if e.is_not_found() => return Ok(Vec::new()),
                Err(e) => return Err(classify_api(&e, self.endpoint, &context)),
            };
            let batch = page["consumers"].as_array().cloned().unwrap_or_default();
            let total = page["total"].as_u64().unwrap_or(0);
            let empty = batch.is_empty();
            out.extend(batch);
            if empty || out.len() as u64 >= total {
                return Ok(out);
            }
        }
    }

    async fn create_consumer(
        &self,
        stream: &str,
        consumer: &str,
        config: Value,
        action: &str,
    ) -> Result<(), BrokerError> {
        self.api(
            &format!("CONSUMER.CREATE.{stream}.{consumer}"),
            &json!({"stream_name": stream, "config": config, "action": action}),
            &format!("CONSUMER.CREATE ({action}) {stream} {consumer}"),
        )
        .await
        .map(drop)
    }
}

/// What a consumer still holds: delivered and not acknowledged, plus not yet delivered.
fn unconsumed(consumer: &Value) -> u64 {
    let n = |f: &str| consumer[f].as_u64().unwrap_or(0);
    n("num_pending").saturating_add(n("num_ack_pending"))
}

/// The owner recorded in a stream's or consumer's config metadata.
fn recorded_owner(config: &Value) -> Option<String> {
    config["metadata"][OWNER_METADATA]
        .as_str()
        .map(str::to_string)
}

fn owner_of_consumer(info: &Value) -> Option<String> {
    recorded_owner(&info["config"])
}

/// The settings we manage, as the server holds them.
fn stream_settings(config: &Value) -> BTreeMap<String, String> {
    let subjects: Vec<&str> = config["subjects"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    BTreeMap::from([
        (SUBJECTS.to_string(), subjects.join(",")),
        (
            MAX_AGE.to_string(),
            format_age(Duration::from_nanos(
                config["max_age"].as_u64().unwrap_or(0),
            )),
        ),
        (
            STORAGE.to_string(),
            config["storage"].as_str().unwrap_or("file").to_string(),
        ),
        (
            REPLICAS.to_string(),
            config["num_replicas"].as_u64().unwrap_or(1).to_string(),
        ),
    ])
}

fn consumer_settings(config: &Value) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            ACK_POLICY.to_string(),
            config["ack_policy"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        ),
        (
            ACK_WAIT.to_string(),
            format_age(Duration::from_nanos(
                config["ack_wait"].as_u64().unwrap_or(0),
            )),
        ),
        (
            MAX_DELIVER.to_string(),
            config["max_deliver"].as_i64().unwrap_or(-1).to_string(),
        ),
        (
            MAX_ACK_PENDING.to_string(),
            config["max_ack_pending"].as_i64().unwrap_or(-1).to_string(),
        ),
    ])
}

fn setting<'a>(object: &'a DesiredObject, key: &str) -> Result<&'a str, BrokerError> {
    object.config.get(key).map(String::as_str).ok_or_else(|| {
        BrokerError::new(
            BrokerErrorKind::Other,
            format!("{}: no {key} in the desired settings", object.key),
        )
    })
}

fn number(object: &DesiredObject, key: &str) -> Result<i64, BrokerError> {
    setting(object, key)?.parse().map_err(|_| {
        BrokerError::new(
            BrokerErrorKind::Other,
            format!("{}: {key} is not a number", object.key),
        )
    })
}

/// A duration setting in nanoseconds (`unlimited` is 0).
fn nanos(object: &DesiredObject, key: &str) -> Result<u64, BrokerError> {
    let text = setting(object, key)?;
    if text == "unlimited" {
        return Ok(0);
    }
    crate::api::parse_duration(text)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .map_err(|e| BrokerError::new(BrokerErrorKind::Other, format!("{}: {e}", object.key)))
}

/// `current` (the server's config, or `{}`) with the settings we manage set as wanted and
/// our owner in its metadata. The storage type is only set on create: it cannot change.
fn stream_config(
    current: &Value,
    name: &str,
    object: &DesiredObject,
    owner: &str,
    create: bool,
) -> Result<Value, BrokerError> {
    let mut config = current.clone();
    if !config.is_object() {
        config = json!({});
    }
    config["name"] = json!(name);
    config["subjects"] = json!([setting(object, SUBJECTS)?]);
    let max_age = nanos(object, MAX_AGE)?;
    config["max_age"] = json!(max_age);
    // JetStream refuses a duplicate window longer than the retention (its default is 2m,
    // retention may be as short as 1m).
    if max_age > 0
        && config["duplicate_window"]
            .as_u64()
            .is_none_or(|w| w > max_age)
    {
        config["duplicate_window"] = json!(max_age);
    }
    config["num_replicas"] = json!(number(object, REPLICAS)?);
    if create {
        config["storage"] = json!(setting(object, STORAGE)?);
        config["retention"] = json!("limits");
        config["discard"] = json!("old");
    }
    set_owner(&mut config, owner);
    Ok(config)
}

fn consumer_config(
    current: &Value,
    consumer: &str,
    object: &DesiredObject,
    owner: &str,
) -> Result<Value, BrokerError> {
    let mut config = current.clone();
    if !config.is_object() || config.as_object().is_some_and(|o| o.is_empty()) {
        // New consumers start with messages published from now on, as the other brokers'
        // new subscriptions do.
        config = json!({"deliver_policy": "new", "replay_policy": "instant"});
    }
    config["durable_name"] = json!(consumer);
    config["name"] = json!(consumer);
    config["ack_policy"] = json!(setting(object, ACK_POLICY)?);
    config["ack_wait"] = json!(nanos(object, ACK_WAIT)?);
    config["max_deliver"] = json!(number(object, MAX_DELIVER)?);
    config["max_ack_pending"] = json!(number(object, MAX_ACK_PENDING)?);
    set_owner(&mut config, owner);
    Ok(config)
}

fn set_owner(config: &mut Value, owner: &str) {
    if !config["metadata"].is_object() {
        config["metadata"] = json!({});
    }
    config["metadata"][OWNER_METADATA] = json!(owner);
}

fn consumer_parts(key: &ObjectKey) -> Result<(&str, &str), BrokerError> {
    split_consumer_key(&key.name).ok_or_else(|| {
        BrokerError::new(
            BrokerErrorKind::Rejected,
            format!("{key} does not name a consumer as <stream>/<consumer>"),
        )
    })
}

fn vanished(key: &ObjectKey) -> BrokerError {
    BrokerError::new(
        BrokerErrorKind::Other,
        format!("{key} disappeared since it was observed; it is examined again on the next pass"),
    )
}

fn unsupported(kind: ObjectKind) -> BrokerError {
    BrokerError::new(
        BrokerErrorKind::Rejected,
        format!("the NATS JetStream backend has no {}", kind.as_str()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(kind: ObjectKind, config: &[(&str, &str)]) -> DesiredObject {
        DesiredObject {
            key: ObjectKey::new(kind, "s"),
            logical: "t".into(),
            parent: None,
            partitions: None,
            config: config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn stream_updates_keep_what_we_do_not_manage_and_never_the_storage() {
        let o = object(
            ObjectKind::Topic,
            &[
                (SUBJECTS, "shop.bus.t"),
                (MAX_AGE, "3600s"),
                (STORAGE, "memory"),
                (REPLICAS, "1"),
            ],
        );
        let current = json!({"name": "s", "subjects": ["x"], "storage": "file", "max_msgs": 10, "metadata": {"team": "a"}});
        let c = stream_config(&current, "s", &o, "shop/bus", false).expect("config");
        assert_eq!(c["max_msgs"], 10, "kept");
        assert_eq!(c["storage"], "file", "never changed by an update");
        assert_eq!(c["max_age"], 3_600_000_000_000u64);
        assert_eq!(c["subjects"], json!(["shop.bus.t"]));
        assert_eq!(
            c["duplicate_window"], 3_600_000_000_000u64,
            "no longer than max_age"
        );
        assert_eq!(c["metadata"]["team"], "a");
        assert_eq!(c["metadata"][OWNER_METADATA], "shop/bus");
        let created = stream_config(&json!({}), "s", &o, "shop/bus", true).expect("config");
        assert_eq!(created["storage"], "memory");
        assert_eq!(stream_settings(&created), o.config, "reads back as desired");
    }

    #[test]
    fn consumer_configs_read_back_as_desired() {
        let o = object(
            ObjectKind::Subscription,
            &[
                (ACK_POLICY, "explicit"),
                (ACK_WAIT, "30s"),
                (MAX_DELIVER, "6"),
                (MAX_ACK_PENDING, "1"),
            ],
        );
        let c = consumer_config(&json!({}), "billing", &o, "shop/bus").expect("config");
        assert_eq!(c["durable_name"], "billing");
        assert_eq!(c["deliver_policy"], "new");
        assert_eq!(consumer_settings(&c), o.config);
        assert_eq!(recorded_owner(&c), Some("shop/bus".to_string()));
    }

    #[test]
    fn unconsumed_counts_pending_and_unacknowledged() {
        assert_eq!(
            unconsumed(&json!({"num_pending": 2, "num_ack_pending": 3})),
            5
        );
        assert_eq!(unconsumed(&json!({})), 0);
    }
}
