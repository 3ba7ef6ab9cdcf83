//! AWS SQS backend with SNS fan-out.
//!
//! Mapping: a logical topic with subscriptions is an SNS topic (FIFO, with a `.fifo` suffix,
//! when `ordered`); each subscription is an SQS queue subscribed to it with raw delivery and a
//! queue policy that lets only that topic send. A topic without subscriptions is a single queue.
//! Dead letters go through a redrive policy (`maxReceiveCount`) to a dead-letter queue; topic
//! retention is each queue's `MessageRetentionPeriod`. Queues and topics the operator creates
//! carry the tag [`OWNER_TAG`]; an SNS subscription cannot hold tags, so it counts as owned by
//! whoever owns its queue.
//!
//! Keys: queues, dead-letter queues and topics by name; an SNS subscription as
//! `<topic name>/<queue name>`.
//!
//! Config values are normalised so that desired and observed compare as strings without the
//! account id (which a pure function cannot know): see [`KEY_REDRIVE`] and [`KEY_POLICY`].

pub mod data;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_sdk_sns::types::Tag as SnsTag;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::QueueAttributeName;

use super::{
    Action, ActionOutcome, Backend, BrokerError, BrokerErrorKind, Capabilities, ConnectionInfo,
    DesiredObject, DesiredState, ObjectKey, ObjectKind, Observed, ObservedObject, Scope, naming,
};
use crate::Error;
use crate::api::{AwsSqsSpec, BrokerType, TopicSpec};
use crate::secrets::ResolvedSecrets;

/// Tag that marks what the operator created; its value is the owner `namespace/name`.
pub const OWNER_TAG: &str = "switchyard-owner";

/// Queue retention in seconds.
pub const KEY_RETENTION: &str = "MessageRetentionPeriod";
/// Queue redrive policy, normalised as `deadLetterTarget=<queue name>;maxReceiveCount=<n>`, or
/// empty when the queue has none.
pub const KEY_REDRIVE: &str = "RedrivePolicy";
/// Queue access policy, normalised as `sns-topic:<topic name>` when it is exactly the policy
/// that lets that topic send, empty when there is none, `custom` otherwise.
pub const KEY_POLICY: &str = "Policy";
/// FIFO topics and queues deduplicate by content (`true`).
pub const KEY_CONTENT_DEDUP: &str = "ContentBasedDeduplication";
/// SNS subscription delivers the raw message body (`true`).
pub const KEY_RAW_DELIVERY: &str = "RawMessageDelivery";

/// What this broker can change in place (FIFO-ness is part of the name, so it never changes
/// in place: an `ordered` flip creates new objects and retires the old ones).
pub const CAPABILITIES: Capabilities = Capabilities {
    partitions: false,
    immutable_config: &[],
};

const FIFO_SUFFIX: &str = ".fifo";
/// SQS bounds on retention: 60 s to 14 days; the default is 4 days.
const RETENTION_BOUNDS: (u64, u64) = (60, 14 * 24 * 3600);
const DEFAULT_RETENTION: u64 = 4 * 24 * 3600;
/// Dead letters are kept as long as SQS allows.
const DEAD_LETTER_RETENTION: u64 = 14 * 24 * 3600;
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The objects the spec asks for on this broker.
pub fn desired(
    scope: &Scope,
    _spec: &AwsSqsSpec,
    topics: &[TopicSpec],
) -> Result<DesiredState, Error> {
    let mut state = DesiredState::default();
    for topic in topics {
        let suffix = if topic.ordered { FIFO_SUFFIX } else { "" };
        let queue_name = |parts: &[&str]| {
            format!(
                "{}{suffix}",
                naming::scoped(&naming::SQS, scope, parts, FIFO_SUFFIX.len())
            )
        };
        if topic.partitions.is_some() {
            state
                .notes
                .push(format!("{}: partitions are ignored by AWS SQS", topic.name));
        }
        let retention = match topic
            .retention_duration()
            .map_err(|e| Error::InvalidSpec(format!("topic {}: {e}", topic.name)))?
        {
            Some(d) => {
                let secs = d.as_secs().clamp(RETENTION_BOUNDS.0, RETENTION_BOUNDS.1);
                if secs != d.as_secs() {
                    state.notes.push(format!(
                        "{}: SQS keeps messages between {}s and {}s; using {secs}s",
                        topic.name, RETENTION_BOUNDS.0, RETENTION_BOUNDS.1
                    ));
                }
                secs
            }
            None => DEFAULT_RETENTION,
        };

        if topic.subscriptions.is_empty() {
            let queue = queue_name(&[&topic.name]);
            let config = fifo(
                topic.ordered,
                BTreeMap::from([
                    (KEY_RETENTION.to_string(), retention.to_string()),
                    (KEY_REDRIVE.to_string(), String::new()),
                ]),
            );
            state.names.insert(topic.name.clone(), queue.clone());
            state.objects.push(DesiredObject {
                key: ObjectKey::new(ObjectKind::Queue, &queue),
                logical: topic.name.clone(),
                parent: None,
                partitions: None,
                config,
            });
            continue;
        }

        let sns_topic = format!(
            "{}{suffix}",
            naming::scoped(&naming::SNS, scope, &[&topic.name], FIFO_SUFFIX.len())
        );
        state.names.insert(topic.name.clone(), sns_topic.clone());
        let mut queues = Vec::new();
        let mut subscriptions = Vec::new();
        for sub in &topic.subscriptions {
            let logical = format!("{}/{}", topic.name, sub.name);
            let queue = queue_name(&[&topic.name, &sub.name]);
            state.names.insert(logical.clone(), queue.clone());
            let mut redrive = String::new();
            if let Some(dl) = &sub.dead_letter {
                let dlq = queue_name(&[&topic.name, &sub.name, "dlq"]);
                let dlq_logical = format!("{logical}/dlq");
                state.names.insert(dlq_logical.clone(), dlq.clone());
                redrive = redrive_value(&dlq, dl.max_delivery_attempts);
                state.objects.push(DesiredObject {
                    key: ObjectKey::new(ObjectKind::DeadLetter, &dlq),
                    logical: dlq_logical,
                    parent: None,
                    partitions: None,
                    config: fifo(
                        topic.ordered,
                        BTreeMap::from([
                            (KEY_RETENTION.to_string(), DEAD_LETTER_RETENTION.to_string()),
                            (KEY_REDRIVE.to_string(), String::new()),
                        ]),
                    ),
                });
            }
            queues.push(DesiredObject {
                key: ObjectKey::new(ObjectKind::Queue, &queue),
                logical: logical.clone(),
                parent: Some(sns_topic.clone()),
                partitions: None,
                config: fifo(
                    topic.ordered,
                    BTreeMap::from([
                        (KEY_RETENTION.to_string(), retention.to_string()),
                        (KEY_REDRIVE.to_string(), redrive),
                        (KEY_POLICY.to_string(), policy_value(&sns_topic)),
                    ]),
                ),
            });
            subscriptions.push(DesiredObject {
                key: ObjectKey::new(
                    ObjectKind::Subscription,
                    subscription_key(&sns_topic, &queue),
                ),
                logical,
                parent: Some(sns_topic.clone()),
                partitions: None,
                config: BTreeMap::from([(KEY_RAW_DELIVERY.to_string(), "true".to_string())]),
            });
        }
        let mut topic_config = BTreeMap::new();
        if topic.ordered {
            topic_config.insert(KEY_CONTENT_DEDUP.to_string(), "true".to_string());
        }
        state.objects.push(DesiredObject {
            key: ObjectKey::new(ObjectKind::Topic, &sns_topic),
            logical: topic.name.clone(),
            parent: None,
            partitions: None,
            config: topic_config,
        });
        state.objects.extend(queues);
        state.objects.extend(subscriptions);
    }
    Ok(state)
}

/// FIFO queues and topics deduplicate by content, so neither publishers nor the SNS → SQS
/// hop need explicit deduplication ids.
fn fifo(ordered: bool, mut config: BTreeMap<String, String>) -> BTreeMap<String, String> {
    if ordered {
        config.insert(KEY_CONTENT_DEDUP.to_string(), "true".to_string());
    }
    config
}

fn subscription_key(topic: &str, queue: &str) -> String {
    format!("{topic}/{queue}")
}

fn redrive_value(dlq: &str, max_receive_count: i32) -> String {
    format!("deadLetterTarget={dlq};maxReceiveCount={max_receive_count}")
}

fn parse_redrive(value: &str) -> Option<(&str, i64)> {
    let rest = value.strip_prefix("deadLetterTarget=")?;
    let (dlq, count) = rest.split_once(";maxReceiveCount=")?;
    Some((dlq, count.parse().ok()?))
}

fn policy_value(topic: &str) -> String {
    format!("sns-topic:{topic}")
}

/// Normalise an SQS `RedrivePolicy` attribute (JSON) to [`KEY_REDRIVE`]'s form.
fn normalise_redrive(raw: Option<&str>) -> String {
    let Some(raw) = raw.filter(|r| !r.trim().is_empty()) else {
        return String::new();
    };
    let Ok(json) = serde_json::from_str::<serde_json::Value>(raw) else {
        return "custom".to_string();
    };
    let target = json
        .get("deadLetterTargetArn")
        .and_then(|v| v.as_str())
        .and_then(|arn| arn.rsplit(':').next());
    let count = json.get("maxReceiveCount").and_then(|v| {
        v.as_i64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    });
    match (target, count) {
        (Some(t), Some(c)) => format!("deadLetterTarget={t};maxReceiveCount={c}"),
        _ => "custom".to_string(),
    }
}

fn one_string(v: &serde_json::Value) -> Option<&str> {
    match v {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Array(a) if a.len() == 1 => a[0].as_str(),
        _ => None,
    }
}

/// Normalise an SQS `Policy` attribute (JSON) to [`KEY_POLICY`]'s form.
fn normalise_policy(raw: Option<&str>) -> String {
    let Some(raw) = raw.filter(|r| !r.trim().is_empty()) else {
        return String::new();
    };
    let custom = || "custom".to_string();
    let Ok(json) = serde_json::from_str::<serde_json::Value>(raw) else {
        return custom();
    };
    let statements: Vec<&serde_json::Value> = match json.get("Statement") {
        Some(serde_json::Value::Array(a)) => a.iter().collect(),
        Some(s @ serde_json::Value::Object(_)) => vec![s],
        _ => return custom(),
    };
    let [statement] = statements.as_slice() else {
        return custom();
    };
    let allows = statement.get("Effect").and_then(|v| v.as_str()) == Some("Allow");
    let action = statement.get("Action").and_then(one_string) == Some("sqs:SendMessage");
    let principal = statement
        .get("Principal")
        .and_then(|p| p.get("Service"))
        .and_then(one_string)
        == Some("sns.amazonaws.com");
    let source = statement
        .get("Condition")
        .and_then(|c| c.get("ArnEquals"))
        .and_then(|c| c.get("aws:SourceArn"))
        .and_then(one_string);
    match source {
        Some(arn) if allows && action && principal => {
            let parts: Vec<&str> = arn.split(':').collect();
            match parts.as_slice() {
                ["arn", _, "sns", _, _, topic] => policy_value(topic),
                _ => custom(),
            }
        }
        _ => custom(),
    }
}

/// The policy document that lets exactly one SNS topic send to a queue.
fn policy_document(queue_arn: &str, topic_arn: &str) -> String {
    serde_json::json!({
        "Version": "2012-10-17",
        "Id": "switchyard",
        "Statement": [{
            "Sid": "AllowTopicToSend",
            "Effect": "Allow",
            "Principal": { "Service": "sns.amazonaws.com" },
            "Action": "sqs:SendMessage",
            "Resource": queue_arn,
            "Condition": { "ArnEquals": { "aws:SourceArn": topic_arn } }
        }]
    })
    .to_string()
}

/// Connection details for the binding Secret.
pub fn connection_info(
    spec: &AwsSqsSpec,
    secrets: &ResolvedSecrets,
) -> Result<ConnectionInfo, Error> {
    let uri = spec
        .endpoint
        .clone()
        .unwrap_or_else(|| format!("https://sqs.{}.amazonaws.com", spec.region));
    let (host, port) = super::pubsub::host_port(&uri);
    // The upper-case keys are the environment variables every AWS SDK reads, so `envFrom` of
    // this Secret configures a client with no code.
    let mut credentials = BTreeMap::new();
    let (username, password) = match &spec.credentials_secret_ref {
        Some(r) => {
            let access = secrets.require(&r.name, &r.access_key_id_key)?.clone();
            let secret = secrets.require(&r.name, &r.secret_access_key_key)?.clone();
            credentials.insert("AWS_ACCESS_KEY_ID".to_string(), access.clone());
            credentials.insert("AWS_SECRET_ACCESS_KEY".to_string(), secret.clone());
            if let Some(token) = secrets.get_opt(&r.name, &r.session_token_key) {
                credentials.insert("AWS_SESSION_TOKEN".to_string(), token.clone());
            }
            (Some(access), Some(secret))
        }
        None => (None, None),
    };
    let sns_endpoint = spec
        .endpoint
        .clone()
        .unwrap_or_else(|| format!("https://sns.{}.amazonaws.com", spec.region));
    let mut extra = BTreeMap::from([
        ("region".to_string(), spec.region.clone()),
        ("sns-endpoint".to_string(), sns_endpoint),
        ("AWS_REGION".to_string(), spec.region.clone()),
        // What the Python SDK and the AWS CLI read.
        ("AWS_DEFAULT_REGION".to_string(), spec.region.clone()),
    ]);
    if let Some(endpoint) = &spec.endpoint {
        extra.insert("AWS_ENDPOINT_URL_SQS".to_string(), endpoint.clone());
        extra.insert("AWS_ENDPOINT_URL_SNS".to_string(), endpoint.clone());
    }
    Ok(ConnectionInfo {
        provider: "aws".into(),
        host,
        port,
        uri: Some(uri),
        username,
        password,
        extra,
        credentials,
    })
}

/// Clients for this region, endpoint and credentials. Loads configuration only; does not
/// contact AWS.
pub async fn connect(
    spec: &AwsSqsSpec,
    secrets: &ResolvedSecrets,
    options: &super::ConnectOptions,
) -> Result<Arc<dyn Backend>, BrokerError> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(aws_config::Region::new(spec.region.clone()))
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_attempt_timeout(Duration::from_secs(10))
                .build(),
        )
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(2));
    if let Some(endpoint) = &spec.endpoint {
        loader = loader.endpoint_url(endpoint.trim_end_matches('/'));
    }
    if let Some(r) = &spec.credentials_secret_ref {
        let missing = |key: &str| {
            BrokerError::new(
                BrokerErrorKind::Authentication,
                format!("Secret {:?} has no key {key:?}", r.name),
            )
        };
        let access = secrets
            .get_opt(&r.name, &r.access_key_id_key)
            .ok_or_else(|| missing(&r.access_key_id_key))?;
        let secret = secrets
            .get_opt(&r.name, &r.secret_access_key_key)
            .ok_or_else(|| missing(&r.secret_access_key_key))?;
        let token = secrets
            .get_opt(&r.name, &r.session_token_key)
            .map(|t| t.expose().to_string());
        loader = loader.credentials_provider(aws_credential_types::Credentials::new(
            access.expose(),
            secret.expose(),
            token,
            None,
            "switchyard-secret",
        ));
    }
    let config = loader.load().await;
    Ok(Arc::new(SqsBackend {
        sqs: aws_sdk_sqs::Client::new(&config),
        sns: aws_sdk_sns::Client::new(&config),
        region: spec.region.clone(),
        account: Mutex::new(None),
        check_timeout: options.check_timeout,
    }))
}

/// Partition and account id, learnt from the first ARN the backend sees.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Account {
    partition: String,
    id: String,
}

/// The SQS/SNS backend.
pub struct SqsBackend {
    sqs: aws_sdk_sqs::Client,
    sns: aws_sdk_sns::Client,
    region: String,
    account: Mutex<Option<Account>>,
    check_timeout: std::time::Duration,
}

/// Classify an SDK error from SQS or SNS.
fn classify<E>(
    service: &str,
    e: &SdkError<E, aws_sdk_sqs::config::http::HttpResponse>,
) -> BrokerError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    // An error body the SDK could not read (a wrapper element it does not expect, as moto's
    // `ErrorResponse/Errors/Error`) still says what went wrong: read its code and message.
    let raw = e
        .raw_response()
        .and_then(|r| r.body().bytes())
        .map(String::from_utf8_lossy)
        .unwrap_or_default();
    let code = e.code().or_else(|| xml_text(&raw, "Code"));
    let message = e.message().or_else(|| xml_text(&raw, "Message"));
    let kind = match e {
        SdkError::TimeoutError(_) => BrokerErrorKind::Timeout,
        SdkError::DispatchFailure(d) if d.is_timeout() => BrokerErrorKind::Timeout,
        SdkError::DispatchFailure(d) if d.is_io() => BrokerErrorKind::Unreachable,
        SdkError::DispatchFailure(_) | SdkError::ConstructionFailure(_) => {
            let text = DisplayErrorContext(e).to_string().to_ascii_lowercase();
            if text.contains("credential") {
                BrokerErrorKind::Authentication
            } else if text.contains("dns") || text.contains("connect") || text.contains("resolve") {
                BrokerErrorKind::Unreachable
            } else {
                BrokerErrorKind::Other
            }
        }
        SdkError::ResponseError(_) => BrokerErrorKind::Other,
        SdkError::ServiceError(_) => match code.unwrap_or_default() {
            "InvalidClientTokenId"
            | "UnrecognizedClientException"
            | "SignatureDoesNotMatch"
            | "InvalidAccessKeyId"
            | "IncompleteSignature"
            | "ExpiredToken"
            | "InvalidSecurity"
            | "MissingAuthenticationToken"
            | "AuthFailure" => BrokerErrorKind::Authentication,
            "AccessDenied"
            | "AccessDeniedException"
            | "AuthorizationError"
            | "KMSAccessDeniedException" => BrokerErrorKind::PermissionDenied,
            // SQS refuses to recreate a queue name for 60 s after deleting it: wait it out.
            c if c.contains("QueueDeletedRecently") => BrokerErrorKind::Other,
            "ThrottlingException" | "Throttling" | "RequestThrottled" | "ServiceUnavailable" => {
                BrokerErrorKind::Other
            }
            c if c.contains("NonExistentQueue")
                || c.contains("QueueDoesNotExist")
                || c == "NotFound" =>
            {
                BrokerErrorKind::NotFound
            }
            _ => BrokerErrorKind::Rejected,
        },
        _ => BrokerErrorKind::Other,
    };
    let detail = match (code, message) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_string(),
        _ => {
            let text = DisplayErrorContext(e).to_string();
            text.chars().take(300).collect()
        }
    };
    BrokerError::new(kind, format!("{service}: {detail}"))
}

/// The text of the first `<tag>` element in an XML document.
fn xml_text<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let (_, rest) = xml.split_once(&format!("<{tag}>"))?;
    let (text, _) = rest.split_once(&format!("</{tag}>"))?;
    Some(text.trim()).filter(|t| !t.is_empty())
}

fn is_queue_missing<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    matches!(e, SdkError::ServiceError(_))
        && e.code()
            .is_some_and(|c| c.contains("NonExistentQueue") || c.contains("QueueDoesNotExist"))
}

fn is_sns_missing<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    matches!(e, SdkError::ServiceError(_)) && e.code().is_some_and(|c| c.contains("NotFound"))
}

async fn timed<T>(
    limit: Duration,
    what: &str,
    fut: impl std::future::Future<Output = T>,
) -> Result<T, BrokerError> {
    tokio::time::timeout(limit, fut).await.map_err(|_| {
        BrokerError::new(
            BrokerErrorKind::Timeout,
            format!("no answer to {what} within {}s", limit.as_secs()),
        )
    })
}

fn parse_arn(arn: &str) -> Option<Account> {
    let parts: Vec<&str> = arn.split(':').collect();
    match parts.as_slice() {
        ["arn", partition, _, _, account, ..] if !account.is_empty() => Some(Account {
            partition: partition.to_string(),
            id: account.to_string(),
        }),
        _ => None,
    }
}

/// A queue as observed: its URL, attributes and tags.
struct QueueState {
    url: String,
    attributes: HashMap<QueueAttributeName, String>,
    tags: HashMap<String, String>,
}

impl QueueState {
    fn arn(&self) -> Option<&str> {
        self.attributes
            .get(&QueueAttributeName::QueueArn)
            .map(String::as_str)
    }

    fn messages(&self) -> u64 {
        [
            QueueAttributeName::ApproximateNumberOfMessages,
            QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
            QueueAttributeName::ApproximateNumberOfMessagesDelayed,
        ]
        .iter()
        .filter_map(|k| self.attributes.get(k))
        .filter_map(|v| v.parse::<u64>().ok())
        .sum()
    }

    fn observed(&self, with_policy: bool) -> ObservedObject {
        let attr = |k: QueueAttributeName| self.attributes.get(&k).map(String::as_str);
        let mut config = BTreeMap::from([
            (
                KEY_RETENTION.to_string(),
                attr(QueueAttributeName::MessageRetentionPeriod)
                    .unwrap_or_default()
                    .to_string(),
            ),
            (
                KEY_REDRIVE.to_string(),
                normalise_redrive(attr(QueueAttributeName::RedrivePolicy)),
            ),
        ]);
        if with_policy {
            config.insert(
                KEY_POLICY.to_string(),
                normalise_policy(attr(QueueAttributeName::Policy)),
            );
        }
        if let Some(dedup) = attr(QueueAttributeName::ContentBasedDeduplication) {
            config.insert(KEY_CONTENT_DEDUP.to_string(), dedup.to_ascii_lowercase());
        }
        ObservedObject {
            partitions: None,
            config,
            owner: self.tags.get(OWNER_TAG).cloned(),
            messages: Some(self.messages()),
        }
    }
}

impl SqsBackend {
    fn remember(&self, arn: &str) {
        if let Some(account) = parse_arn(arn)
            && let Ok(mut slot) = self.account.lock()
        {
            *slot = Some(account);
        }
    }

    fn cached_account(&self) -> Option<Account> {
        self.account.lock().ok().and_then(|a| a.clone())
    }

    /// The account's partition and id: cached, else from any SNS topic or SQS queue. `None`
    /// when the account holds neither (then none of ours exists either).
    async fn account(&self) -> Result<Option<Account>, BrokerError> {
        if let Some(a) = self.cached_account() {
            return Ok(Some(a));
        }
        let topics = timed(CALL_TIMEOUT, "ListTopics", self.sns.list_topics().send())
            .await?
            .map_err(|e| classify("SNS", &e))?;
        if let Some(arn) = topics.topics().iter().find_map(|t| t.topic_arn()) {
            self.remember(arn);
            return Ok(self.cached_account());
        }
        let queues = timed(
            CALL_TIMEOUT,
            "ListQueues",
            self.sqs.list_queues().max_results(1).send(),
        )
        .await?
        .map_err(|e| classify("SQS", &e))?;
        if let Some(url) = queues.queue_urls().first() {
            let attrs = timed(
                CALL_TIMEOUT,
                "GetQueueAttributes",
                self.sqs
                    .get_queue_attributes()
                    .queue_url(url)
                    .attribute_names(QueueAttributeName::QueueArn)
                    .send(),
            )
            .await?
            .map_err(|e| classify("SQS", &e))?;
            if let Some(arn) = attrs
                .attributes()
                .and_then(|a| a.get(&QueueAttributeName::QueueArn))
            {
                self.remember(arn);
            }
        }
        Ok(self.cached_account())
    }

    fn arn(&self, account: &Account, service: &str, name: &str) -> String {
        format!(
            "arn:{}:{service}:{}:{}:{name}",
            account.partition, self.region, account.id
        )
    }

    async fn queue_url(&self, name: &str) -> Result<Option<String>, BrokerError> {
        match timed(
            CALL_TIMEOUT,
            "GetQueueUrl",
            self.sqs.get_queue_url().queue_name(name).send(),
        )
        .await?
        {
            Ok(out) => Ok(out.queue_url().map(str::to_string)),
            Err(e) if is_queue_missing(&e) => Ok(None),
            Err(e) => Err(classify("SQS", &e)),
        }
    }

    async fn queue(&self, name: &str) -> Result<Option<QueueState>, BrokerError> {
        let Some(url) = self.queue_url(name).await? else {
            return Ok(None);
        };
        let attrs = match timed(
            CALL_TIMEOUT,
            "GetQueueAttributes",
            self.sqs
                .get_queue_attributes()
                .queue_url(&url)
                .attribute_names(QueueAttributeName::All)
                .send(),
        )
        .await?
        {
            Ok(out) => out.attributes().cloned().unwrap_or_default(),
            Err(e) if is_queue_missing(&e) => return Ok(None),
            Err(e) => return Err(classify("SQS", &e)),
        };
        let tags = match timed(
            CALL_TIMEOUT,
            "ListQueueTags",
            self.sqs.list_queue_tags().queue_url(&url).send(),
        )
        .await?
        {
            Ok(out) => out.tags().cloned().unwrap_or_default(),
            Err(e) if is_queue_missing(&e) => return Ok(None),
            Err(e) => return Err(classify("SQS", &e)),
        };
        let state = QueueState {
            url,
            attributes: attrs,
            tags,
        };
        if let Some(arn) = state.arn() {
            self.remember(arn);
        }
        Ok(Some(state))
    }

    /// The topic's attributes and tags, or `None` when it does not exist.
    async fn topic(
        &self,
        name: &str,
    ) -> Result<Option<(String, HashMap<String, String>, HashMap<String, String>)>, BrokerError>
    {
        let Some(account) = self.account().await? else {
            return Ok(None);
        };
        let arn = self.arn(&account, "sns", name);
        let attrs = match timed(
            CALL_TIMEOUT,
            "GetTopicAttributes",
            self.sns.get_topic_attributes().topic_arn(&arn).send(),
        )
        .await?
        {
            Ok(out) => out.attributes().cloned().unwrap_or_default(),
            Err(e) if is_sns_missing(&e) => return Ok(None),
            Err(e) => return Err(classify("SNS", &e)),
        };
        let tags = match timed(
            CALL_TIMEOUT,
            "ListTagsForResource",
            self.sns.list_tags_for_resource().resource_arn(&arn).send(),
        )
        .await?
        {
            Ok(out) => out
                .tags()
                .iter()
                .map(|t| (t.key().to_string(), t.value().to_string()))
                .collect(),
            Err(e) if is_sns_missing(&e) => return Ok(None),
            Err(e) => return Err(classify("SNS", &e)),
        };
        Ok(Some((arn, attrs, tags)))
    }

    /// The ARN of the SNS subscription from `topic_arn` to `queue_arn`, if any.
    async fn find_subscription(
        &self,
        topic_arn: &str,
        queue_arn: &str,
    ) -> Result<Option<String>, BrokerError> {
        let mut token: Option<String> = None;
        loop {
            let page = match timed(
                CALL_TIMEOUT,
                "ListSubscriptionsByTopic",
                self.sns
                    .list_subscriptions_by_topic()
                    .topic_arn(topic_arn)
                    .set_next_token(token.clone())
                    .send(),
            )
            .await?
            {
                Ok(page) => page,
                Err(e) if is_sns_missing(&e) => return Ok(None),
                Err(e) => return Err(classify("SNS", &e)),
            };
            if let Some(arn) = page.subscriptions().iter().find_map(|s| {
                (s.protocol() == Some("sqs") && s.endpoint() == Some(queue_arn))
                    .then(|| s.subscription_arn())
                    .flatten()
                    .filter(|arn| arn.starts_with("arn:"))
            }) {
                return Ok(Some(arn.to_string()));
            }
            match page.next_token() {
                Some(next) if !next.is_empty() => token = Some(next.to_string()),
                _ => return Ok(None),
            }
        }
    }

    /// Topic ARN, queue ARN and subscription ARN (if subscribed) for a subscription key.
    async fn subscription(
        &self,
        key: &ObjectKey,
    ) -> Result<Option<(String, String, Option<String>)>, BrokerError> {
        let Some((topic, queue)) = key.name.split_once('/') else {
            return Ok(None);
        };
        let Some(account) = self.account().await? else {
            return Ok(None);
        };
        let topic_arn = self.arn(&account, "sns", topic);
        let queue_arn = self.arn(&account, "sqs", queue);
        let sub = self.find_subscription(&topic_arn, &queue_arn).await?;
        Ok(Some((topic_arn, queue_arn, sub)))
    }

    async fn observe_one(
        &self,
        scope: &Scope,
        key: &ObjectKey,
    ) -> Result<Option<ObservedObject>, BrokerError> {
        match key.kind {
            ObjectKind::Queue | ObjectKind::DeadLetter => {
                let state = self.queue(&key.name).await?;
                let with_policy = key.kind == ObjectKind::Queue
                    && state.as_ref().is_some_and(|s| {
                        s.attributes.contains_key(&QueueAttributeName::Policy)
                            || s.tags.get(OWNER_TAG).is_some_and(|o| *o == scope.owner())
                    });
                Ok(state.map(|s| s.observed(with_policy)))
            }
            ObjectKind::Topic => Ok(self.topic(&key.name).await?.map(|(_, attrs, tags)| {
                let mut config = BTreeMap::new();
                if let Some(v) = attrs.get(KEY_CONTENT_DEDUP) {
                    config.insert(KEY_CONTENT_DEDUP.to_string(), v.to_ascii_lowercase());
                }
                ObservedObject {
                    partitions: None,
                    config,
                    owner: tags.get(OWNER_TAG).cloned(),
                    messages: None,
                }
            })),
            ObjectKind::Subscription => {
                let Some((_, _, Some(sub_arn))) = self.subscription(key).await? else {
                    return Ok(None);
                };
                let attrs = match timed(
                    CALL_TIMEOUT,
                    "GetSubscriptionAttributes",
                    self.sns
                        .get_subscription_attributes()
                        .subscription_arn(&sub_arn)
                        .send(),
                )
                .await?
                {
                    Ok(out) => out.attributes().cloned().unwrap_or_default(),
                    Err(e) if is_sns_missing(&e) => return Ok(None),
                    Err(e) => return Err(classify("SNS", &e)),
                };
                // A subscription cannot hold tags: it belongs to whoever owns its queue.
                let queue_owner = match key.name.split_once('/') {
                    Some((_, queue)) => self
                        .queue(queue)
                        .await?
                        .and_then(|q| q.tags.get(OWNER_TAG).cloned()),
                    None => None,
                };
                Ok(Some(ObservedObject {
                    partitions: None,
                    config: BTreeMap::from([(
                        KEY_RAW_DELIVERY.to_string(),
                        attrs
                            .get(KEY_RAW_DELIVERY)
                            .map(|v| v.to_ascii_lowercase())
                            .unwrap_or_else(|| "false".to_string()),
                    )]),
                    owner: queue_owner,
                    messages: None,
                }))
            }
            ObjectKind::Binding => Ok(None),
        }
    }

    /// Real SQS attribute values for the given normalised settings of a queue.
    fn queue_attributes(
        &self,
        object: &DesiredObject,
        keys: &[&str],
        queue_arn: &str,
    ) -> Result<HashMap<QueueAttributeName, String>, BrokerError> {
        let account = parse_arn(queue_arn).ok_or_else(|| {
            BrokerError::new(
                BrokerErrorKind::Other,
                format!("{}: unexpected queue ARN {queue_arn:?}", object.key),
            )
        })?;
        let mut out = HashMap::new();
        for key in keys {
            let Some(value) = object.config.get(*key) else {
                continue;
            };
            match *key {
                KEY_RETENTION => {
                    out.insert(QueueAttributeName::MessageRetentionPeriod, value.clone());
                }
                KEY_CONTENT_DEDUP => {
                    out.insert(QueueAttributeName::ContentBasedDeduplication, value.clone());
                }
                KEY_REDRIVE => {
                    let real = match parse_redrive(value) {
                        Some((dlq, count)) => serde_json::json!({
                            "deadLetterTargetArn": self.arn(&account, "sqs", dlq),
                            "maxReceiveCount": count,
                        })
                        .to_string(),
                        None => String::new(),
                    };
                    out.insert(QueueAttributeName::RedrivePolicy, real);
                }
                KEY_POLICY => {
                    let real = match value.strip_prefix("sns-topic:") {
                        Some(topic) => {
                            policy_document(queue_arn, &self.arn(&account, "sns", topic))
                        }
                        None => String::new(),
                    };
                    out.insert(QueueAttributeName::Policy, real);
                }
                _ => {}
            }
        }
        Ok(out)
    }

    async fn set_queue_attributes(
        &self,
        url: &str,
        attributes: HashMap<QueueAttributeName, String>,
    ) -> Result<(), BrokerError> {
        if attributes.is_empty() {
            return Ok(());
        }
        timed(
            CALL_TIMEOUT,
            "SetQueueAttributes",
            self.sqs
                .set_queue_attributes()
                .queue_url(url)
                .set_attributes(Some(attributes))
                .send(),
        )
        .await?
        .map_err(|e| classify("SQS", &e))?;
        Ok(())
    }

    async fn existing_queue(&self, key: &ObjectKey) -> Result<QueueState, BrokerError> {
        self.queue(&key.name).await?.ok_or_else(|| {
            BrokerError::new(
                BrokerErrorKind::NotFound,
                format!("{key} does not exist (deleted meanwhile?)"),
            )
        })
    }

    async fn create(&self, scope: &Scope, object: &DesiredObject) -> Result<(), BrokerError> {
        let owner = scope.owner();
        match object.key.kind {
            ObjectKind::Queue | ObjectKind::DeadLetter => {
                let mut attributes = HashMap::new();
                if object.key.name.ends_with(FIFO_SUFFIX) {
                    attributes.insert(QueueAttributeName::FifoQueue, "true".to_string());
                }
                if let Some(r) = object.config.get(KEY_RETENTION) {
                    attributes.insert(QueueAttributeName::MessageRetentionPeriod, r.clone());
                }
                if let Some(d) = object.config.get(KEY_CONTENT_DEDUP) {
                    attributes.insert(QueueAttributeName::ContentBasedDeduplication, d.clone());
                }
                let out = timed(
                    CALL_TIMEOUT,
                    "CreateQueue",
                    self.sqs
                        .create_queue()
                        .queue_name(&object.key.name)
                        .set_attributes(Some(attributes))
                        .tags(OWNER_TAG, &owner)
                        .send(),
                )
                .await?
                .map_err(|e| classify("SQS", &e))?;
                // Policy and redrive need ARNs; the new queue's own ARN tells the account.
                let needs: Vec<&str> = [KEY_REDRIVE, KEY_POLICY]
                    .into_iter()
                    .filter(|k| object.config.get(*k).is_some_and(|v| !v.is_empty()))
                    .collect();
                if needs.is_empty() {
                    return Ok(());
                }
                let url = out.queue_url().map(str::to_string).ok_or_else(|| {
                    BrokerError::new(BrokerErrorKind::Other, "SQS: CreateQueue returned no URL")
                })?;
                let state = self.existing_queue(&object.key).await?;
                let arn = state.arn().ok_or_else(|| {
                    BrokerError::new(BrokerErrorKind::Other, "SQS: queue has no QueueArn")
                })?;
                let attrs = self.queue_attributes(object, &needs, arn)?;
                self.set_queue_attributes(&url, attrs).await
            }
            ObjectKind::Topic => {
                let mut call = self
                    .sns
                    .create_topic()
                    .name(&object.key.name)
                    .tags(sns_tag(&owner)?);
                if object.key.name.ends_with(FIFO_SUFFIX) {
                    call = call.attributes("FifoTopic", "true");
                }
                if let Some(d) = object.config.get(KEY_CONTENT_DEDUP) {
                    call = call.attributes(KEY_CONTENT_DEDUP, d);
                }
                let out = timed(CALL_TIMEOUT, "CreateTopic", call.send())
                    .await?
                    .map_err(|e| classify("SNS", &e))?;
                if let Some(arn) = out.topic_arn() {
                    self.remember(arn);
                }
                Ok(())
            }
            ObjectKind::Subscription => {
                let (topic_arn, queue_arn, existing) =
                    self.subscription(&object.key).await?.ok_or_else(|| {
                        BrokerError::new(
                            BrokerErrorKind::NotFound,
                            format!("{}: topic or queue missing", object.key),
                        )
                    })?;
                if existing.is_some() {
                    return Ok(());
                }
                timed(
                    CALL_TIMEOUT,
                    "Subscribe",
                    self.sns
                        .subscribe()
                        .topic_arn(topic_arn)
                        .protocol("sqs")
                        .endpoint(queue_arn)
                        .attributes(KEY_RAW_DELIVERY, "true")
                        .return_subscription_arn(true)
                        .send(),
                )
                .await?
                .map_err(|e| classify("SNS", &e))?;
                Ok(())
            }
            ObjectKind::Binding => Err(unsupported(&object.key)),
        }
    }

    async fn adopt(&self, scope: &Scope, object: &DesiredObject) -> Result<(), BrokerError> {
        let owner = scope.owner();
        match object.key.kind {
            ObjectKind::Queue | ObjectKind::DeadLetter => {
                let state = self.existing_queue(&object.key).await?;
                timed(
                    CALL_TIMEOUT,
                    "TagQueue",
                    self.sqs
                        .tag_queue()
                        .queue_url(&state.url)
                        .tags(OWNER_TAG, owner)
                        .send(),
                )
                .await?
                .map_err(|e| classify("SQS", &e))?;
                Ok(())
            }
            ObjectKind::Topic => {
                let (arn, _, _) = self.topic(&object.key.name).await?.ok_or_else(|| {
                    BrokerError::new(
                        BrokerErrorKind::NotFound,
                        format!("{} does not exist", object.key),
                    )
                })?;
                timed(
                    CALL_TIMEOUT,
                    "TagResource",
                    self.sns
                        .tag_resource()
                        .resource_arn(arn)
                        .tags(sns_tag(&owner)?)
                        .send(),
                )
                .await?
                .map_err(|e| classify("SNS", &e))?;
                Ok(())
            }
            // Owned through its queue.
            ObjectKind::Subscription => Ok(()),
            ObjectKind::Binding => Err(unsupported(&object.key)),
        }
    }

    async fn update(&self, object: &DesiredObject, keys: &[&str]) -> Result<(), BrokerError> {
        match object.key.kind {
            ObjectKind::Queue | ObjectKind::DeadLetter => {
                let state = self.existing_queue(&object.key).await?;
                let arn = state.arn().ok_or_else(|| {
                    BrokerError::new(BrokerErrorKind::Other, "SQS: queue has no QueueArn")
                })?;
                let attrs = self.queue_attributes(object, keys, arn)?;
                self.set_queue_attributes(&state.url, attrs).await
            }
            ObjectKind::Topic => {
                let (arn, _, _) = self.topic(&object.key.name).await?.ok_or_else(|| {
                    BrokerError::new(
                        BrokerErrorKind::NotFound,
                        format!("{} does not exist", object.key),
                    )
                })?;
                for key in keys {
                    if let Some(value) = object.config.get(*key) {
                        timed(
                            CALL_TIMEOUT,
                            "SetTopicAttributes",
                            self.sns
                                .set_topic_attributes()
                                .topic_arn(&arn)
                                .attribute_name(*key)
                                .attribute_value(value)
                                .send(),
                        )
                        .await?
                        .map_err(|e| classify("SNS", &e))?;
                    }
                }
                Ok(())
            }
            ObjectKind::Subscription => {
                let Some((_, _, Some(sub_arn))) = self.subscription(&object.key).await? else {
                    return Err(BrokerError::new(
                        BrokerErrorKind::NotFound,
                        format!("{} does not exist", object.key),
                    ));
                };
                for key in keys {
                    if let Some(value) = object.config.get(*key) {
                        timed(
                            CALL_TIMEOUT,
                            "SetSubscriptionAttributes",
                            self.sns
                                .set_subscription_attributes()
                                .subscription_arn(&sub_arn)
                                .attribute_name(*key)
                                .attribute_value(value)
                                .send(),
                        )
                        .await?
                        .map_err(|e| classify("SNS", &e))?;
                    }
                }
                Ok(())
            }
            ObjectKind::Binding => Err(unsupported(&object.key)),
        }
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), BrokerError> {
        match key.kind {
            ObjectKind::Queue | ObjectKind::DeadLetter => {
                let Some(url) = self.queue_url(&key.name).await? else {
                    return Ok(());
                };
                match timed(
                    CALL_TIMEOUT,
                    "DeleteQueue",
                    self.sqs.delete_queue().queue_url(url).send(),
                )
                .await?
                {
                    Ok(_) => Ok(()),
                    Err(e) if is_queue_missing(&e) => Ok(()),
                    Err(e) => Err(classify("SQS", &e)),
                }
            }
            ObjectKind::Topic => {
                let Some(account) = self.account().await? else {
                    return Ok(());
                };
                let arn = self.arn(&account, "sns", &key.name);
                match timed(
                    CALL_TIMEOUT,
                    "DeleteTopic",
                    self.sns.delete_topic().topic_arn(arn).send(),
                )
                .await?
                {
                    Ok(_) => Ok(()),
                    Err(e) if is_sns_missing(&e) => Ok(()),
                    Err(e) => Err(classify("SNS", &e)),
                }
            }
            ObjectKind::Subscription => {
                let Some((_, _, Some(sub_arn))) = self.subscription(key).await? else {
                    return Ok(());
                };
                match timed(
                    CALL_TIMEOUT,
                    "Unsubscribe",
                    self.sns.unsubscribe().subscription_arn(sub_arn).send(),
                )
                .await?
                {
                    Ok(_) => Ok(()),
                    Err(e) if is_sns_missing(&e) => Ok(()),
                    Err(e) => Err(classify("SNS", &e)),
                }
            }
            ObjectKind::Binding => Err(unsupported(key)),
        }
    }
}

fn sns_tag(owner: &str) -> Result<SnsTag, BrokerError> {
    SnsTag::builder()
        .key(OWNER_TAG)
        .value(owner)
        .build()
        .map_err(|e| BrokerError::new(BrokerErrorKind::Other, format!("SNS tag: {e}")))
}

fn unsupported(key: &ObjectKey) -> BrokerError {
    BrokerError::new(
        BrokerErrorKind::Rejected,
        format!("{key}: AWS SQS/SNS has no such object"),
    )
}

#[async_trait]
impl Backend for SqsBackend {
    fn broker_type(&self) -> BrokerType {
        BrokerType::AwsSqs
    }

    async fn check(&self) -> Result<(), BrokerError> {
        let sqs = async {
            self.sqs
                .list_queues()
                .max_results(1)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| classify("SQS", &e))
        };
        let sns = async {
            self.sns
                .list_topics()
                .send()
                .await
                .map(|out| {
                    if let Some(arn) = out.topics().iter().find_map(|t| t.topic_arn()) {
                        self.remember(arn);
                    }
                })
                .map_err(|e| classify("SNS", &e))
        };
        let (sqs, sns) = timed(self.check_timeout, "the connectivity check", async {
            futures::join!(sqs, sns)
        })
        .await?;
        sqs.and(sns)
    }

    async fn observe(&self, scope: &Scope, keys: &[ObjectKey]) -> Result<Observed, BrokerError> {
        let mut observed = Observed::default();
        for key in keys {
            if let Some(object) = self.observe_one(scope, key).await? {
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
                Action::Adopt { object } => self.adopt(scope, object).await,
                Action::Update { object, changes } => {
                    let keys: Vec<&str> = changes.iter().map(|c| c.key.as_str()).collect();
                    self.update(object, &keys).await
                }
                Action::AddPartitions { object, .. } => Err(BrokerError::new(
                    BrokerErrorKind::Rejected,
                    format!("{}: SQS has no partitions", object.key),
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

/// The AWS SQS/SNS driver: what the rest of Switchyard knows about AWS SQS/SNS.
pub struct AwsSqs;

impl super::Driver for AwsSqs {
    const TYPE: crate::api::BrokerType = crate::api::BrokerType::AwsSqs;
    const BINDING_TYPE: &'static str = data::BINDING_TYPE;

    super::driver::forward_to_folder!(AwsSqsSpec, aws_sqs);

    fn endpoint(spec: &AwsSqsSpec) -> serde_json::Value {
        serde_json::json!((&spec.region, &spec.endpoint))
    }

    fn secret_keys(spec: &AwsSqsSpec) -> Vec<(String, String)> {
        spec.credentials_secret_ref
            .iter()
            .flat_map(|c| c.secret_keys())
            .collect()
    }

    fn binding_has_credentials(spec: &AwsSqsSpec) -> bool {
        spec.credentials_secret_ref.is_some()
    }

    fn with_app_credentials(spec: &AwsSqsSpec, app: &crate::api::LocalSecretRef) -> AwsSqsSpec {
        AwsSqsSpec {
            credentials_secret_ref: Some(app.aws()),
            ..spec.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AwsCredentialsSecretRef, DeadLetterSpec, SubscriptionSpec};

    fn spec() -> AwsSqsSpec {
        AwsSqsSpec {
            region: "eu-west-1".into(),
            credentials_secret_ref: None,
            endpoint: None,
        }
    }

    fn scope() -> Scope {
        Scope::new("shop", "bus")
    }

    fn topic(name: &str, ordered: bool, subs: &[(&str, Option<i32>)]) -> TopicSpec {
        TopicSpec {
            name: name.into(),
            partitions: None,
            retention: Some("2h".into()),
            ordered,
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
    fn topic_with_subscriptions_fans_out_through_sns() {
        let state = desired(
            &scope(),
            &spec(),
            &[topic(
                "orders",
                false,
                &[("billing", None), ("shipping", Some(5))],
            )],
        )
        .expect("desired");
        let keys: Vec<String> = state.objects.iter().map(|o| o.key.to_string()).collect();
        assert_eq!(
            keys,
            vec![
                "deadLetter/shop_bus_orders_shipping_dlq",
                "topic/shop_bus_orders",
                "queue/shop_bus_orders_billing",
                "queue/shop_bus_orders_shipping",
                "subscription/shop_bus_orders/shop_bus_orders_billing",
                "subscription/shop_bus_orders/shop_bus_orders_shipping",
            ]
        );
        let shipping = &state.objects[3];
        assert_eq!(shipping.config[KEY_RETENTION], "7200");
        assert_eq!(
            shipping.config[KEY_REDRIVE],
            "deadLetterTarget=shop_bus_orders_shipping_dlq;maxReceiveCount=5"
        );
        assert_eq!(shipping.config[KEY_POLICY], "sns-topic:shop_bus_orders");
        assert_eq!(state.objects[2].config[KEY_REDRIVE], "");
        assert_eq!(state.names["orders"], "shop_bus_orders");
        assert_eq!(state.names["orders/billing"], "shop_bus_orders_billing");
        assert_eq!(
            state.names["orders/shipping/dlq"],
            "shop_bus_orders_shipping_dlq"
        );
    }

    #[test]
    fn topic_without_subscriptions_is_one_queue_and_ordered_means_fifo() {
        let state = desired(&scope(), &spec(), &[topic("audit", true, &[])]).expect("desired");
        assert_eq!(state.objects.len(), 1);
        assert_eq!(
            state.objects[0].key,
            ObjectKey::new(ObjectKind::Queue, "shop_bus_audit.fifo")
        );
        assert_eq!(state.objects[0].config[KEY_CONTENT_DEDUP], "true");
        assert!(!state.objects[0].config.contains_key(KEY_POLICY));
        let state =
            desired(&scope(), &spec(), &[topic("ev", true, &[("a", Some(5))])]).expect("desired");
        assert!(
            state
                .objects
                .iter()
                .all(|o| o.key.name.ends_with(".fifo") || o.key.kind == ObjectKind::Subscription)
        );
    }

    #[test]
    fn long_names_fit_sqs_limits_with_fifo_suffix() {
        let long = "t".repeat(100);
        let state = desired(
            &scope(),
            &spec(),
            &[topic(&long, true, &[("sub", Some(5))])],
        )
        .expect("desired");
        for o in &state.objects {
            if matches!(o.key.kind, ObjectKind::Queue | ObjectKind::DeadLetter) {
                assert!(o.key.name.len() <= 80, "{}", o.key.name);
                assert!(o.key.name.ends_with(".fifo"));
            }
        }
    }

    #[test]
    fn error_bodies_the_sdk_cannot_read_still_give_code_and_message() {
        let moto = "<?xml version=\"1.0\"?><ErrorResponse><Errors><Error><Type>Sender</Type>\
            <Code>AccessDenied</Code><Message>User: arn:aws:iam::1:user/u is not authorized to \
            perform: sns:CreateTopic</Message></Error></Errors><RequestId>r</RequestId></ErrorResponse>";
        assert_eq!(xml_text(moto, "Code"), Some("AccessDenied"));
        assert!(xml_text(moto, "Message").is_some_and(|m| m.ends_with("sns:CreateTopic")));
        assert_eq!(xml_text(moto, "Missing"), None);
        assert_eq!(xml_text("<Code></Code>", "Code"), None);
    }

    #[test]
    fn redrive_and_policy_normalise_like_desired() {
        let raw = r#"{"deadLetterTargetArn":"arn:aws:sqs:eu-west-1:123456789012:q_dlq","maxReceiveCount":"5"}"#;
        assert_eq!(
            normalise_redrive(Some(raw)),
            redrive_value("q_dlq", 5),
            "string counts as moto reports them"
        );
        assert_eq!(normalise_redrive(None), "");
        assert_eq!(normalise_redrive(Some("")), "");
        let doc = policy_document(
            "arn:aws:sqs:eu-west-1:123456789012:q",
            "arn:aws:sns:eu-west-1:123456789012:shop_bus_orders",
        );
        assert_eq!(
            normalise_policy(Some(&doc)),
            policy_value("shop_bus_orders")
        );
        assert_eq!(normalise_policy(None), "");
        assert_eq!(
            normalise_policy(Some(
                r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"sqs:*"}]}"#
            )),
            "custom"
        );
        let value = redrive_value("x.fifo", 9);
        let (dlq, count) = parse_redrive(&value).expect("parses");
        assert_eq!((dlq, count), ("x.fifo", 9));
    }

    #[test]
    fn connection_info_copies_credentials_and_region() {
        let mut s = spec();
        s.credentials_secret_ref = Some(AwsCredentialsSecretRef {
            name: "aws".into(),
            access_key_id_key: "accessKeyId".into(),
            secret_access_key_key: "secretAccessKey".into(),
            session_token_key: "sessionToken".into(),
        });
        let mut secrets = ResolvedSecrets::default();
        secrets.insert("aws", "accessKeyId", "AKIAEXAMPLE");
        secrets.insert("aws", "secretAccessKey", "very-secret");
        let info = connection_info(&s, &secrets).expect("info");
        assert_eq!(info.provider, "aws");
        assert_eq!(info.host.as_deref(), Some("sqs.eu-west-1.amazonaws.com"));
        assert_eq!(info.port, Some(443));
        assert_eq!(info.extra["region"], "eu-west-1");
        assert_eq!(
            info.username.as_ref().map(|u| u.expose()),
            Some("AKIAEXAMPLE")
        );
        // The environment variables every AWS SDK reads; no endpoint override for real AWS.
        assert_eq!(info.extra["AWS_REGION"], "eu-west-1");
        assert_eq!(info.extra["AWS_DEFAULT_REGION"], "eu-west-1");
        assert!(!info.extra.contains_key("AWS_ENDPOINT_URL_SQS"));
        assert_eq!(
            info.credentials["AWS_ACCESS_KEY_ID"].expose(),
            "AKIAEXAMPLE"
        );
        assert_eq!(
            info.credentials["AWS_SECRET_ACCESS_KEY"].expose(),
            "very-secret"
        );
        assert!(!info.credentials.contains_key("AWS_SESSION_TOKEN"));
        assert!(!format!("{info:?}").contains("very-secret"));
        secrets.insert("aws", "sessionToken", "token-value");
        s.endpoint = Some("http://127.0.0.1:5000".into());
        let info = connection_info(&s, &secrets).expect("info");
        assert_eq!(
            info.credentials["AWS_SESSION_TOKEN"].expose(),
            "token-value"
        );
        assert_eq!(info.extra["AWS_ENDPOINT_URL_SQS"], "http://127.0.0.1:5000");
        assert_eq!(info.extra["AWS_ENDPOINT_URL_SNS"], "http://127.0.0.1:5000");
        assert!(connection_info(&s, &ResolvedSecrets::default()).is_err());
    }
}
