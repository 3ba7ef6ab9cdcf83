//! The I/O half of the Kafka backend: one admin client (CreateTopics, CreatePartitions,
//! DescribeConfigs, AlterConfigs, DeleteTopics) and one group-less consumer (metadata, offsets)
//! per endpoint + credentials.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, NewPartitions, NewTopic,
    OwnedResourceSpecifier, ResourceSpecifier, TopicReplication,
};
use rdkafka::config::{ClientConfig, FromClientConfigAndContext, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};

use super::coalesce::{Coalescer, ItemResult};
use super::errors::{CaptureContext, LastError, classify, classify_kafka};
use super::{REPLICATION_FACTOR, RETENTION_MS, security_protocol};
use crate::api::{BrokerType, KafkaSpec};
use crate::brokers::{
    Action, ActionOutcome, Backend, BrokerError, BrokerErrorKind, ObjectKey, ObjectKind, Observed,
    ObservedObject, Scope,
};
use crate::secrets::ResolvedSecrets;

/// Bound on `check()`.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on each observation round trip (metadata, offsets, DescribeConfigs).
const OBSERVE_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on an admin request, and on how long the broker may take to finish the operation.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on waiting for a change to show in metadata / DescribeConfigs after it was accepted.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long concurrent apply calls on one endpoint are gathered into one request.
const COALESCE_WINDOW: Duration = Duration::from_millis(5);

/// The client settings for an env: endpoint, identity, TLS (PEM from Secrets) and SASL.
pub(super) fn client_config(
    spec: &KafkaSpec,
    secrets: &ResolvedSecrets,
) -> Result<ClientConfig, crate::Error> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", spec.bootstrap_servers.join(","))
        .set(
            "client.id",
            spec.client_id.as_deref().unwrap_or("switchyard"),
        )
        .set("security.protocol", security_protocol(spec))
        // Retry broken connections often enough that every check() sees a fresh error.
        .set("reconnect.backoff.max.ms", "2000")
        .set("socket.connection.setup.timeout.ms", "10000")
        .set("allow.auto.create.topics", "false")
        .set_log_level(RDKafkaLogLevel::Warning);
    if let Some(tls) = spec.tls.as_ref().filter(|t| t.enabled) {
        if let Some(r) = &tls.ca_secret_ref {
            c.set("ssl.ca.pem", secrets.get(r)?.expose());
        }
        if let Some(r) = &tls.cert_secret_ref {
            c.set("ssl.certificate.pem", secrets.get(r)?.expose());
        }
        if let Some(r) = &tls.key_secret_ref {
            c.set("ssl.key.pem", secrets.get(r)?.expose());
        }
    }
    if let Some(sasl) = &spec.sasl {
        let (user, password) = secrets.credentials(&sasl.credentials_secret_ref)?;
        c.set("sasl.mechanism", sasl.mechanism.as_str())
            .set("sasl.username", user.expose())
            .set("sasl.password", password.expose());
    }
    Ok(c)
}

/// Partition layout and message count of one topic, from metadata and offsets.
#[derive(Debug)]
struct TopicState {
    partitions: i32,
    replication_factor: Option<usize>,
    messages: Option<u64>,
}

/// Clients and settings shared by the backend and its background tasks.
struct Inner {
    admin: AdminClient<CaptureContext>,
    consumer: BaseConsumer<CaptureContext>,
    context: CaptureContext,
    endpoint: String,
    /// Topic config keys reported by observe: retention.ms and the env's topicConfig keys.
    managed_keys: BTreeSet<String>,
    /// The last cluster metadata, shared by observations of every MessageBroker on this
    /// endpoint for [`METADATA_REUSE`]; cleared by every apply.
    metadata_cache: std::sync::Mutex<Option<(std::time::Instant, Arc<TopicLayout>)>>,
}

/// Topic name → (partition count, replication factor).
type TopicLayout = HashMap<String, (i32, Option<usize>)>;

/// How long one metadata answer serves concurrent observations. Many MessageBrokers on one
/// endpoint reconcile together after a restart or a bulk apply; each would otherwise fetch the
/// whole cluster's metadata.
const METADATA_REUSE: Duration = Duration::from_secs(1);

impl Inner {
    fn last_error(&self) -> Option<LastError> {
        self.context.take_last()
    }

    fn admin_options(&self) -> AdminOptions {
        AdminOptions::new()
            .request_timeout(Some(REQUEST_TIMEOUT))
            .operation_timeout(Some(OPERATION_TIMEOUT))
    }

    /// The cluster's topic layout, reusing an answer younger than [`METADATA_REUSE`].
    fn metadata_shared(&self, timeout: Duration) -> Result<Arc<TopicLayout>, BrokerError> {
        let mut cache = self
            .metadata_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some((at, layout)) = cache.as_ref()
            && at.elapsed() < METADATA_REUSE
        {
            return Ok(layout.clone());
        }
        let layout = Arc::new(self.metadata_blocking(timeout)?);
        *cache = Some((std::time::Instant::now(), layout.clone()));
        Ok(layout)
    }

    /// Forget the shared metadata: the caller is about to change topics.
    fn invalidate_metadata(&self) {
        *self
            .metadata_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Topic names and partition layout in the cluster (one Metadata request).
    fn metadata_blocking(
        &self,
        timeout: Duration,
    ) -> Result<HashMap<String, (i32, Option<usize>)>, BrokerError> {
        let metadata = self.consumer.fetch_metadata(None, timeout).map_err(|e| {
            classify_kafka(
                &e,
                self.last_error().as_ref(),
                &format!("metadata request to {}", self.endpoint),
            )
        })?;
        self.context.clear();
        Ok(metadata
            .topics()
            .iter()
            .filter(|t| {
                t.error()
                    .map(RDKafkaErrorCode::from)
                    .is_none_or(|e| e != RDKafkaErrorCode::UnknownTopicOrPartition)
            })
            .map(|t| {
                let rf = t
                    .partitions()
                    .iter()
                    .min_by_key(|p| p.id())
                    .map(|p| p.replicas().len());
                (t.name().to_string(), (t.partitions().len() as i32, rf))
            })
            .collect())
    }

    /// The earliest or latest offset of every partition of the given topics, in one
    /// ListOffsets round (librdkafka's offsets-for-times with the special timestamps).
    fn offsets_blocking(
        &self,
        topics: &[(String, i32)],
        offset: Offset,
    ) -> Result<HashMap<(String, i32), i64>, BrokerError> {
        let what = || format!("reading offsets on {}", self.endpoint);
        let mut tpl = TopicPartitionList::with_capacity(topics.len());
        for (topic, partitions) in topics {
            for p in 0..*partitions {
                tpl.add_partition_offset(topic, p, offset)
                    .map_err(|e| classify_kafka(&e, None, &what()))?;
            }
        }
        let result = self
            .consumer
            .offsets_for_times(tpl, OBSERVE_TIMEOUT)
            .map_err(|e| classify_kafka(&e, self.last_error().as_ref(), &what()))?;
        let mut out = HashMap::new();
        for elem in result.elements() {
            if let Err(e) = elem.error() {
                return Err(classify_kafka(
                    &e,
                    None,
                    &format!(
                        "reading offsets of {} partition {} on {}",
                        elem.topic(),
                        elem.partition(),
                        self.endpoint
                    ),
                ));
            }
            if let Offset::Offset(n) = elem.offset() {
                out.insert((elem.topic().to_string(), elem.partition()), n);
            }
        }
        Ok(out)
    }

    /// Sum over partitions of (high watermark - low watermark), for each topic: one
    /// ListOffsets round for the earliest and one for the latest offsets. Partitions that are
    /// still getting a leader (just created or moving) are retried within the observe bound;
    /// if they do not settle the observation fails rather than report a count it does not
    /// know (a Delete policy must never remove a topic that holds messages).
    fn message_counts_blocking(
        &self,
        topics: &[(String, i32)],
    ) -> Result<HashMap<String, u64>, BrokerError> {
        if topics.is_empty() {
            return Ok(HashMap::new());
        }
        let with_retry = |offset: Offset| {
            let deadline = std::time::Instant::now() + OBSERVE_TIMEOUT;
            loop {
                match self.offsets_blocking(topics, offset) {
                    Err(e)
                        if e.kind == BrokerErrorKind::Other
                            && std::time::Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    other => return other,
                }
            }
        };
        let low = with_retry(Offset::Beginning)?;
        let high = with_retry(Offset::End)?;
        // A topic whose every partition answered gets a count; others stay unknown.
        Ok(topics
            .iter()
            .filter_map(|(topic, partitions)| {
                let mut total = 0u64;
                for p in 0..*partitions {
                    let key = (topic.clone(), p);
                    let (h, l) = (high.get(&key)?, low.get(&key)?);
                    total += u64::try_from(h - l).unwrap_or(0);
                }
                Some((topic.clone(), total))
            })
            .collect())
    }

    /// Configs of the given topics (one DescribeConfigs request). Topics that vanished in the
    /// meantime are left out.
    async fn describe_configs(
        &self,
        names: &[String],
    ) -> Result<HashMap<String, Vec<rdkafka::admin::ConfigEntry>>, BrokerError> {
        if names.is_empty() {
            return Ok(HashMap::new());
        }
        let what = format!("describing topic configs on {}", self.endpoint);
        let specifiers: Vec<ResourceSpecifier<'_>> = names
            .iter()
            .map(|n| ResourceSpecifier::Topic(n.as_str()))
            .collect();
        let opts = AdminOptions::new().request_timeout(Some(OBSERVE_TIMEOUT));
        let results = self
            .admin
            .describe_configs(&specifiers, &opts)
            .await
            .map_err(|e| classify_kafka(&e, self.last_error().as_ref(), &what))?;
        let mut out = HashMap::new();
        // librdkafka returns resources in request order; an error result carries no name.
        for (name, result) in names.iter().zip(results) {
            match result {
                Ok(resource) => {
                    let name = match &resource.specifier {
                        OwnedResourceSpecifier::Topic(n) => n.clone(),
                        _ => name.clone(),
                    };
                    out.insert(name, resource.entries);
                }
                Err(RDKafkaErrorCode::UnknownTopicOrPartition) => {}
                Err(code) => {
                    return Err(classify(
                        Some(code),
                        None,
                        &format!("describing the configs of topic {name}"),
                        &code.to_string(),
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Wait (bounded) until the broker's metadata shows each topic with at least the given
    /// partition count and every partition answers an offsets request, so that an observation
    /// right after apply sees the change and producers can use the topic. KRaft brokers answer
    /// admin requests once the controller committed them; metadata caches and partition
    /// leadership follow a moment (with many new partitions, seconds) later.
    async fn await_metadata(self: &Arc<Self>, wanted: Vec<(String, Option<i32>)>) {
        if wanted.is_empty() {
            return;
        }
        let inner = Arc::clone(self);
        let waited = tokio::task::spawn_blocking(move || {
            let deadline = std::time::Instant::now() + SETTLE_TIMEOUT;
            loop {
                let seen = inner.metadata_blocking(OBSERVE_TIMEOUT).is_ok_and(|all| {
                    let layout: Option<Vec<(String, i32)>> = wanted
                        .iter()
                        .map(|(name, partitions)| {
                            let (have, _) = all.get(name)?;
                            partitions
                                .is_none_or(|want| *have >= want)
                                .then(|| (name.clone(), *have))
                        })
                        .collect();
                    layout
                        .is_some_and(|topics| inner.offsets_blocking(&topics, Offset::End).is_ok())
                });
                if seen || std::time::Instant::now() >= deadline {
                    return seen;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
        .await;
        if !matches!(waited, Ok(true)) {
            tracing::info!("new topics or partitions were not all ready within {SETTLE_TIMEOUT:?}");
        }
    }

    /// Wait (bounded) until DescribeConfigs shows the values just written.
    async fn await_configs(&self, wanted: &[(String, BTreeMap<String, String>)]) {
        if wanted.is_empty() {
            return;
        }
        let names: Vec<String> = wanted.iter().map(|(n, _)| n.clone()).collect();
        let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
        loop {
            let settled = self.describe_configs(&names).await.is_ok_and(|current| {
                wanted.iter().all(|(name, config)| {
                    current.get(name).is_some_and(|entries| {
                        config.iter().all(|(k, v)| {
                            entries
                                .iter()
                                .any(|e| &e.name == k && e.value.as_ref() == Some(v))
                        })
                    })
                })
            });
            if settled || tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn create_topics(self: &Arc<Self>, items: Vec<CreateItem>) -> Vec<ItemResult> {
        let mut seen = HashSet::new();
        let unique: Vec<bool> = items.iter().map(|i| seen.insert(i.name.clone())).collect();
        let new_topics: Vec<NewTopic<'_>> = items
            .iter()
            .zip(&unique)
            .filter(|(_, u)| **u)
            .map(|(i, _)| {
                let mut t = NewTopic::new(
                    &i.name,
                    i.partitions.unwrap_or(-1),
                    TopicReplication::Fixed(i.replication_factor.unwrap_or(-1)),
                );
                for (k, v) in &i.config {
                    t = t.set(k, v);
                }
                t
            })
            .collect();
        let result = self
            .admin
            .create_topics(&new_topics, &self.admin_options())
            .await;
        let results = per_topic_results(
            &items.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
            &unique,
            result,
            self.last_error().as_ref(),
            "creating topic",
            |code| match code {
                RDKafkaErrorCode::TopicAlreadyExists => Some(Err(BrokerError::new(
                    BrokerErrorKind::Other,
                    "already exists (a deletion may still be in progress; retrying)",
                ))),
                _ => None,
            },
        );
        self.await_metadata(
            items
                .iter()
                .zip(&results)
                .filter(|(_, r)| r.is_ok())
                .map(|(i, _)| (i.name.clone(), i.partitions))
                .collect(),
        )
        .await;
        results
    }

    async fn create_partitions(self: &Arc<Self>, items: Vec<PartitionsItem>) -> Vec<ItemResult> {
        let mut seen = HashSet::new();
        let unique: Vec<bool> = items.iter().map(|i| seen.insert(i.name.clone())).collect();
        let requests: Vec<NewPartitions<'_>> = items
            .iter()
            .zip(&unique)
            .filter(|(_, u)| **u)
            .map(|(i, _)| NewPartitions::new(&i.name, i.count))
            .collect();
        let result = self
            .admin
            .create_partitions(&requests, &self.admin_options())
            .await;
        let results = per_topic_results(
            &items.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
            &unique,
            result,
            self.last_error().as_ref(),
            "adding partitions to topic",
            |_| None,
        );
        self.await_metadata(
            items
                .iter()
                .zip(&results)
                .filter(|(_, r)| r.is_ok())
                .map(|(i, _)| (i.name.clone(), i32::try_from(i.count).ok()))
                .collect(),
        )
        .await;
        results
    }

    /// AlterConfigs in rdkafka 0.39 replaces a topic's whole dynamic config set (there is no
    /// IncrementalAlterConfigs binding), so each topic's current dynamic configs are read first
    /// and sent back with the wanted values on top.
    async fn alter_configs(&self, items: Vec<AlterItem>) -> Vec<ItemResult> {
        let mut seen = HashSet::new();
        let unique: Vec<bool> = items.iter().map(|i| seen.insert(i.name.clone())).collect();
        let names: Vec<String> = items
            .iter()
            .zip(&unique)
            .filter(|(_, u)| **u)
            .map(|(i, _)| i.name.clone())
            .collect();
        let current = match self.describe_configs(&names).await {
            Ok(c) => c,
            Err(e) => return items.iter().map(|_| Err(e.clone())).collect(),
        };
        let mut merged: Vec<(String, BTreeMap<String, String>)> = Vec::new();
        for (item, _) in items.iter().zip(&unique).filter(|(_, u)| **u) {
            let Some(entries) = current.get(&item.name) else {
                continue;
            };
            let mut config: BTreeMap<String, String> = entries
                .iter()
                .filter(|e| e.source == ConfigSource::DynamicTopic && !e.is_sensitive)
                .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
                .collect();
            config.extend(item.config.clone());
            merged.push((item.name.clone(), config));
        }
        let alters: Vec<AlterConfig<'_>> = merged
            .iter()
            .map(|(name, config)| {
                config.iter().fold(
                    AlterConfig::new(ResourceSpecifier::Topic(name)),
                    |a, (k, v)| a.set(k, v),
                )
            })
            .collect();
        let what = format!("altering topic configs on {}", self.endpoint);
        let outcome: Result<HashMap<String, ItemResult>, BrokerError> = if alters.is_empty() {
            Ok(HashMap::new())
        } else {
            match self
                .admin
                .alter_configs(&alters, &self.admin_options())
                .await
            {
                Ok(results) => Ok(results
                    .into_iter()
                    .filter_map(|r| match r {
                        Ok(OwnedResourceSpecifier::Topic(n)) => Some((n, Ok(()))),
                        Err((OwnedResourceSpecifier::Topic(n), code)) => {
                            let e = classify(
                                Some(code),
                                None,
                                &format!("altering the configs of topic {n}"),
                                &code.to_string(),
                            );
                            Some((n, Err(e)))
                        }
                        _ => None,
                    })
                    .collect()),
                Err(e) => Err(classify_kafka(&e, self.last_error().as_ref(), &what)),
            }
        };
        let results: Vec<ItemResult> = items
            .iter()
            .zip(&unique)
            .map(|(item, unique)| {
                if !unique {
                    return Err(duplicate(&item.name));
                }
                if !current.contains_key(&item.name) {
                    return Err(BrokerError::new(
                        BrokerErrorKind::Other,
                        format!(
                            "topic {} vanished before its configs could change",
                            item.name
                        ),
                    ));
                }
                match &outcome {
                    Ok(map) => map.get(&item.name).cloned().unwrap_or_else(|| {
                        Err(BrokerError::new(
                            BrokerErrorKind::Other,
                            format!("no AlterConfigs result for topic {}", item.name),
                        ))
                    }),
                    Err(e) => Err(e.clone()),
                }
            })
            .collect();
        let written: Vec<(String, BTreeMap<String, String>)> = items
            .iter()
            .zip(&results)
            .filter(|(_, r)| r.is_ok())
            .map(|(i, _)| (i.name.clone(), i.config.clone()))
            .collect();
        self.await_configs(&written).await;
        results
    }

    async fn delete_topics(&self, names: Vec<String>) -> Vec<ItemResult> {
        let mut seen = HashSet::new();
        let unique: Vec<bool> = names.iter().map(|n| seen.insert(n.clone())).collect();
        let refs: Vec<&str> = names
            .iter()
            .zip(&unique)
            .filter(|(_, u)| **u)
            .map(|(n, _)| n.as_str())
            .collect();
        let result = self.admin.delete_topics(&refs, &self.admin_options()).await;
        per_topic_results(
            &names.iter().map(String::as_str).collect::<Vec<_>>(),
            &unique,
            result,
            self.last_error().as_ref(),
            "deleting topic",
            // Already gone is success.
            |code| (code == RDKafkaErrorCode::UnknownTopicOrPartition).then_some(Ok(())),
        )
    }
}

fn duplicate(name: &str) -> BrokerError {
    BrokerError::new(
        BrokerErrorKind::Other,
        format!("topic {name} was requested twice in one batch; retrying"),
    )
}

/// Spread a per-topic admin result over the batch's items (duplicates get an error).
fn per_topic_results(
    names: &[&str],
    unique: &[bool],
    result: Result<Vec<rdkafka::admin::TopicResult>, KafkaError>,
    last: Option<&LastError>,
    what: &str,
    special: impl Fn(RDKafkaErrorCode) -> Option<ItemResult>,
) -> Vec<ItemResult> {
    let by_name: Result<HashMap<String, ItemResult>, BrokerError> = match result {
        Ok(results) => Ok(results
            .into_iter()
            .map(|r| match r {
                Ok(name) => (name, Ok(())),
                Err((name, code)) => {
                    let outcome = special(code)
                        .map(|r| {
                            r.map_err(|e| {
                                BrokerError::new(e.kind, format!("{what} {name}: {}", e.message))
                            })
                        })
                        .unwrap_or_else(|| {
                            Err(classify(
                                Some(code),
                                None,
                                &format!("{what} {name}"),
                                &code.to_string(),
                            ))
                        });
                    (name, outcome)
                }
            })
            .collect()),
        Err(e) => Err(classify_kafka(&e, last, what)),
    };
    names
        .iter()
        .zip(unique)
        .map(|(name, unique)| {
            if !unique {
                return Err(duplicate(name));
            }
            match &by_name {
                Ok(map) => map.get(*name).cloned().unwrap_or_else(|| {
                    Err(BrokerError::new(
                        BrokerErrorKind::Other,
                        format!("{what} {name}: the broker returned no result"),
                    ))
                }),
                Err(e) => Err(BrokerError::new(e.kind, format!("{what} {name}: {e}"))),
            }
        })
        .collect()
}

/// A topic to create.
struct CreateItem {
    name: String,
    partitions: Option<i32>,
    replication_factor: Option<i32>,
    config: Vec<(String, String)>,
}

/// A topic to grow.
struct PartitionsItem {
    name: String,
    count: usize,
}

/// A topic whose configs change.
struct AlterItem {
    name: String,
    config: BTreeMap<String, String>,
}

/// The Kafka backend for one endpoint + credentials.
pub struct KafkaBackend {
    inner: Arc<Inner>,
    creates: Arc<Coalescer<CreateItem>>,
    partitions: Arc<Coalescer<PartitionsItem>>,
    alters: Arc<Coalescer<AlterItem>>,
    deletes: Arc<Coalescer<String>>,
}

impl KafkaBackend {
    /// Build the clients (no connection is made yet) and start the thread that delivers the
    /// consumer's error callbacks.
    pub(super) fn new(spec: &KafkaSpec, config: ClientConfig) -> Result<Self, BrokerError> {
        let context = CaptureContext::default();
        let what = "building the Kafka client";
        let admin = AdminClient::from_config_and_context(&config, context.clone())
            .map_err(|e| classify_kafka(&e, None, what))?;
        let consumer = BaseConsumer::from_config_and_context(&config, context.clone())
            .map_err(|e| classify_kafka(&e, None, what))?;
        let mut managed_keys: BTreeSet<String> = spec
            .topic_config
            .keys()
            .map(|k| k.trim().to_string())
            .collect();
        managed_keys.insert(RETENTION_MS.to_string());
        let inner = Arc::new(Inner {
            admin,
            consumer,
            context,
            endpoint: spec.bootstrap_servers.join(","),
            managed_keys,
            metadata_cache: std::sync::Mutex::new(None),
        });
        start_event_poller(Arc::downgrade(&inner));
        Ok(KafkaBackend {
            inner,
            creates: Arc::new(Coalescer::new(COALESCE_WINDOW)),
            partitions: Arc::new(Coalescer::new(COALESCE_WINDOW)),
            alters: Arc::new(Coalescer::new(COALESCE_WINDOW)),
            deletes: Arc::new(Coalescer::new(COALESCE_WINDOW)),
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, BrokerError> + Send + 'static,
    ) -> Result<T, BrokerError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| {
                BrokerError::new(BrokerErrorKind::Other, format!("Kafka call failed: {e}"))
            })?
    }

    async fn observe_topics(
        &self,
        names: Vec<String>,
    ) -> Result<HashMap<String, TopicState>, BrokerError> {
        self.blocking(move |inner| {
            let all = inner.metadata_shared(OBSERVE_TIMEOUT)?;
            let present: Vec<(String, i32)> = names
                .iter()
                .filter_map(|n| all.get(n).map(|(p, _)| (n.clone(), *p)))
                .collect();
            let counts = inner.message_counts_blocking(&present)?;
            Ok(present
                .into_iter()
                .map(|(name, partitions)| {
                    let rf = all.get(&name).and_then(|(_, rf)| *rf);
                    let messages = counts.get(&name).copied();
                    (
                        name,
                        TopicState {
                            partitions,
                            replication_factor: rf,
                            messages,
                        },
                    )
                })
                .collect())
        })
        .await
    }
}

/// Deliver the consumer's error and log callbacks (librdkafka queues them until polled) for as
/// long as the backend lives.
fn start_event_poller(inner: Weak<Inner>) {
    let spawned = std::thread::Builder::new()
        .name("kafka-events".into())
        .spawn(move || {
            while let Some(inner) = inner.upgrade() {
                // Nothing is subscribed, so polling only runs callbacks.
                let _ = inner.consumer.poll(Duration::from_millis(200));
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start the Kafka event thread; error reasons will be less precise");
    }
}

fn is_topic_kind(kind: ObjectKind) -> bool {
    matches!(kind, ObjectKind::Topic | ObjectKind::DeadLetter)
}

#[async_trait]
impl Backend for KafkaBackend {
    fn broker_type(&self) -> BrokerType {
        BrokerType::Kafka
    }

    async fn check(&self) -> Result<(), BrokerError> {
        let started = std::time::Instant::now();
        let result = self
            .blocking(|inner| inner.metadata_blocking(CHECK_TIMEOUT).map(|_| ()))
            .await;
        if let Err(e) = &result
            && e.kind == BrokerErrorKind::Timeout
        {
            // The error callback may trail the request; give it a moment to refine the reason.
            tokio::time::sleep(Duration::from_millis(300)).await;
            if let Some(last) = self.inner.last_error() {
                return Err(classify(
                    Some(RDKafkaErrorCode::OperationTimedOut),
                    Some(&last),
                    &format!("metadata request to {}", self.inner.endpoint),
                    &format!("no answer within {:?}", started.elapsed()),
                ));
            }
        }
        result
    }

    async fn observe(&self, _scope: &Scope, keys: &[ObjectKey]) -> Result<Observed, BrokerError> {
        let names: Vec<String> = keys
            .iter()
            .filter(|k| is_topic_kind(k.kind))
            .map(|k| k.name.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if names.is_empty() {
            return Ok(Observed::default());
        }
        let topics = self.observe_topics(names).await?;
        let present: Vec<String> = topics.keys().cloned().collect();
        let configs = self.inner.describe_configs(&present).await?;
        let mut observed = Observed::default();
        for key in keys.iter().filter(|k| is_topic_kind(k.kind)) {
            let (Some(state), Some(entries)) = (topics.get(&key.name), configs.get(&key.name))
            else {
                continue;
            };
            let mut config: BTreeMap<String, String> = entries
                .iter()
                .filter(|e| self.inner.managed_keys.contains(&e.name))
                .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
                .collect();
            if let Some(rf) = state.replication_factor {
                config.insert(REPLICATION_FACTOR.to_string(), rf.to_string());
            }
            observed.objects.insert(
                key.clone(),
                ObservedObject {
                    partitions: Some(state.partitions),
                    config,
                    owner: None,
                    messages: state.messages,
                },
            );
        }
        Ok(observed)
    }

    async fn apply(&self, _scope: &Scope, actions: &[Action]) -> Vec<ActionOutcome> {
        self.inner.invalidate_metadata();
        let mut results: Vec<Option<ItemResult>> = vec![None; actions.len()];
        let (mut creates, mut grows, mut alters, mut deletes) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let not_a_topic = |key: &ObjectKey| {
            Some(Err(BrokerError::new(
                BrokerErrorKind::Rejected,
                format!("{key} is not a Kafka topic"),
            )))
        };
        for (i, action) in actions.iter().enumerate() {
            if !is_topic_kind(action.key().kind) {
                results[i] = not_a_topic(action.key());
                continue;
            }
            match action {
                Action::Create { object } => creates.push((
                    i,
                    CreateItem {
                        name: object.key.name.clone(),
                        partitions: object.partitions,
                        replication_factor: object
                            .config
                            .get(REPLICATION_FACTOR)
                            .and_then(|v| v.parse().ok()),
                        config: object
                            .config
                            .iter()
                            .filter(|(k, _)| k.as_str() != REPLICATION_FACTOR)
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                    },
                )),
                // Kafka topics hold no ownership marker; the owned set records the adoption.
                Action::Adopt { .. } => results[i] = Some(Ok(())),
                Action::AddPartitions { object, to, .. } => match usize::try_from(*to) {
                    Ok(count) => grows.push((
                        i,
                        PartitionsItem {
                            name: object.key.name.clone(),
                            count,
                        },
                    )),
                    Err(_) => {
                        results[i] = Some(Err(BrokerError::new(
                            BrokerErrorKind::Rejected,
                            format!("{}: invalid partition count {to}", object.key),
                        )))
                    }
                },
                Action::Update { object, changes } => alters.push((
                    i,
                    AlterItem {
                        name: object.key.name.clone(),
                        config: changes
                            .iter()
                            .filter(|c| c.key != REPLICATION_FACTOR)
                            .map(|c| (c.key.clone(), c.after.clone()))
                            .collect(),
                    },
                )),
                Action::Delete { key } => deletes.push((i, key.name.clone())),
            }
        }

        let (ci, citems): (Vec<usize>, Vec<CreateItem>) = creates.into_iter().unzip();
        let (gi, gitems): (Vec<usize>, Vec<PartitionsItem>) = grows.into_iter().unzip();
        let (ai, aitems): (Vec<usize>, Vec<AlterItem>) = alters.into_iter().unzip();
        let (di, ditems): (Vec<usize>, Vec<String>) = deletes.into_iter().unzip();
        let (i1, i2, i3, i4) = (
            self.inner.clone(),
            self.inner.clone(),
            self.inner.clone(),
            self.inner.clone(),
        );
        let (cr, gr, ar, dr) = tokio::join!(
            self.creates
                .submit(citems, move |b| async move { i1.create_topics(b).await }),
            self.partitions.submit(
                gitems,
                move |b| async move { i2.create_partitions(b).await }
            ),
            self.alters
                .submit(aitems, move |b| async move { i3.alter_configs(b).await }),
            self.deletes
                .submit(ditems, move |b| async move { i4.delete_topics(b).await }),
        );
        for (idx, res) in [(ci, cr), (gi, gr), (ai, ar), (di, dr)]
            .into_iter()
            .flat_map(|(idx, res)| idx.into_iter().zip(res))
        {
            results[idx] = Some(res);
        }
        // Observations during the apply must not outlive it.
        self.inner.invalidate_metadata();
        actions
            .iter()
            .zip(results)
            .map(|(action, result)| ActionOutcome {
                key: action.key().clone(),
                result: result.unwrap_or_else(|| {
                    Err(BrokerError::new(
                        BrokerErrorKind::Other,
                        "no outcome was recorded for this action",
                    ))
                }),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_config_carries_tls_and_sasl() {
        use crate::api::{
            CredentialsSecretRef, KafkaSaslSpec, SaslMechanism, SecretKeyRef, TlsSpec,
        };
        let spec = KafkaSpec {
            bootstrap_servers: vec!["k:9093".into()],
            client_id: None,
            replication_factor: None,
            topic_prefix: None,
            topic_config: BTreeMap::new(),
            tls: Some(TlsSpec {
                enabled: true,
                ca_secret_ref: Some(SecretKeyRef {
                    name: "ca".into(),
                    key: "ca.crt".into(),
                }),
                cert_secret_ref: None,
                key_secret_ref: None,
            }),
            sasl: Some(KafkaSaslSpec {
                mechanism: SaslMechanism::ScramSha256,
                credentials_secret_ref: CredentialsSecretRef {
                    name: "user".into(),
                    username_key: "username".into(),
                    password_key: "password".into(),
                },
            }),
        };
        let mut secrets = ResolvedSecrets::default();
        secrets.insert("ca", "ca.crt", "-----BEGIN CERTIFICATE-----");
        secrets.insert("user", "username", "u");
        secrets.insert("user", "password", "p");
        let c = client_config(&spec, &secrets).expect("config");
        assert_eq!(c.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(c.get("sasl.mechanism"), Some("SCRAM-SHA-256"));
        assert_eq!(c.get("ssl.ca.pem"), Some("-----BEGIN CERTIFICATE-----"));
        assert_eq!(c.get("client.id"), Some("switchyard"));
        let Err(err) = client_config(&spec, &ResolvedSecrets::default()) else {
            panic!("a missing Secret key must fail");
        };
        assert!(err.to_string().contains("ca"), "{err}");
    }
}
