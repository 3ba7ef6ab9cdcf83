//! The I/O half of the Kafka backend: one admin client (CreateTopics, CreatePartitions,
//! DescribeConfigs, AlterConfigs, DeleteTopics) and one group-less consumer (metadata, offsets)
//! per endpoint + credentials.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigEntry, ConfigSource, NewPartitions, NewTopic,
    OwnedResourceSpecifier, ResourceSpecifier, TopicReplication,
};
use rdkafka::config::{ClientConfig, FromClientConfigAndContext, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};

use super::coalesce::{Coalescer, ItemResult};
use super::errors::{CaptureContext, LastError, classify, classify_kafka};
use super::snapshot::{Shared, TopicConfig, TopicView, View};
use super::{DESCRIBE_CHUNK, READ_CHUNK, REPLICATION_FACTOR, RETENTION_MS, security_protocol};
use crate::api::{BrokerType, KafkaSpec};
use crate::brokers::{
    Action, ActionOutcome, Backend, BrokerError, BrokerErrorKind, ConnectOptions, FlowReading,
    ObjectKey, ObjectKind, Observed, ObservedObject, Scope,
};
use crate::metrics::BrokerRequests;
use crate::secrets::ResolvedSecrets;

/// Bound on each observation round trip (metadata, offsets, DescribeConfigs).
const OBSERVE_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on an admin request, and on how long the broker may take to finish the operation.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on waiting for a change to show in metadata / DescribeConfigs after it was accepted.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);
/// Threads reading consumer groups' committed offsets side by side in one flow read.
const OFFSET_FETCH_THREADS: usize = 4;
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

/// One topic in the cluster metadata.
#[derive(Clone, Copy, Debug)]
struct TopicMeta {
    partitions: i32,
    /// Replicas of the first partition.
    replication_factor: Option<usize>,
    /// Every partition has a leader (offsets requests can be answered).
    led: bool,
}

/// Topic name → layout, from one Metadata request.
type TopicLayout = HashMap<String, TopicMeta>;

/// The offsets one partition spans.
#[derive(Clone, Copy, Debug)]
struct Watermarks {
    partition: i32,
    low: i64,
    high: i64,
}

/// Records held over partitions: high − low watermark. Approximate where compaction or
/// transaction markers leave offsets without records between the two.
fn records(marks: &[Watermarks]) -> u64 {
    marks
        .iter()
        .map(|m| u64::try_from(m.high - m.low).unwrap_or(0))
        .sum()
}

/// What one flow read counts on a Kafka endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum FlowKey {
    /// The records a topic holds: a dead-letter topic's depth.
    Records(String),
    /// What a consumer group has not committed on a topic: a subscription's backlog.
    Lag {
        /// The topic.
        topic: String,
        /// The subscription's consumer group.
        group: String,
    },
}

/// What a flow read counted, key by key (None: the topic could not be counted).
type FlowCounts = Vec<(FlowKey, Option<u64>)>;

impl FlowKey {
    /// The topic it counts on.
    pub(super) fn topic(&self) -> &str {
        match self {
            FlowKey::Records(t) | FlowKey::Lag { topic: t, .. } => t,
        }
    }
}

/// How long one metadata answer serves concurrent observations at least. Many MessageBrokers on
/// one endpoint reconcile together after a restart or a bulk apply; each would otherwise fetch
/// the whole cluster's metadata.
const METADATA_REUSE: Duration = Duration::from_secs(1);

/// Broker time per topic of a whole-cluster Metadata answer, roughly: what spaces such reads.
const METADATA_COST_PER_TOPIC: Duration = Duration::from_micros(100);

/// The least time between two reads of the whole cluster's metadata. Building that answer is
/// most of what a big cluster's broker spends on this operator (ten thousand topics: tens of
/// milliseconds each), so reads are spaced in proportion: 100 ms up to a thousand topics,
/// one second at ten thousand, at most two seconds.
fn metadata_interval(cluster_topics: usize) -> Duration {
    (METADATA_COST_PER_TOPIC * u32::try_from(cluster_topics).unwrap_or(u32::MAX))
        .clamp(SETTLE_POLL, SETTLE_POLL * 20)
}

/// The last cluster metadata and when it was read; `generation` moves on every invalidation so
/// that an answer read before a change is never stored after it.
#[derive(Default)]
struct LayoutCache {
    generation: u64,
    layout: Option<(std::time::Instant, Arc<TopicLayout>)>,
}

/// How often waiters for new topics or partitions look at the cluster.
const SETTLE_POLL: Duration = Duration::from_millis(100);
/// How long a timed-out check waits for the error callback to say why.
const REFINE_WAIT: Duration = Duration::from_millis(300);
/// How often a connectivity check that has no answer yet looks for a refusal.
const CHECK_STEP: Duration = Duration::from_millis(100);

/// Callers waiting for topics to be usable, and whether a poller serves them.
#[derive(Default)]
struct Settling {
    waiters: Vec<SettleWaiter>,
    polling: bool,
}

/// Someone waiting for topics to be usable.
struct SettleWaiter {
    topics: Vec<(String, Option<i32>)>,
    deadline: std::time::Instant,
    done: tokio::sync::oneshot::Sender<bool>,
}

/// Clients and settings shared by the backend and its background tasks.
struct Inner {
    admin: AdminClient<CaptureContext>,
    consumer: BaseConsumer<CaptureContext>,
    /// The client settings, for the short-lived consumers that read a group's offsets.
    config: ClientConfig,
    /// Topics whose every consumer group had read everything, with the record count then:
    /// deleting one is safe while the count is unchanged (no record arrived since).
    drained: std::sync::Mutex<HashMap<String, u64>>,
    context: CaptureContext,
    endpoint: String,
    /// Topic config keys reported by observe: retention.ms and the env's topicConfig keys.
    managed_keys: BTreeSet<String>,
    /// Requests sent, for the metrics.
    requests: BrokerRequests,
    /// The last cluster metadata, shared by observations of every MessageBroker on this
    /// endpoint for [`METADATA_REUSE`]; cleared by every apply.
    metadata_cache: std::sync::Mutex<LayoutCache>,
    /// What observations last read, shared by every MessageBroker on this endpoint.
    topics: Shared,
    /// What flow reads last counted (groups' lag, dead-letter topics' records), likewise
    /// shared, for the flow interval.
    flow: Shared<FlowKey, Option<u64>>,
    /// Callers waiting for new topics or partitions to be usable; one poller serves them all.
    settling: std::sync::Mutex<Settling>,
}

impl Inner {
    fn last_error(&self) -> Option<LastError> {
        self.context.take_last()
    }

    fn count(&self, request: &str) {
        self.requests.inc(BrokerType::Kafka.as_str(), request);
    }

    /// Run librdkafka's blocking calls off the async workers.
    async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Inner) -> Result<T, BrokerError> + Send + 'static,
    ) -> Result<T, BrokerError> {
        let inner = Arc::clone(self);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| {
                BrokerError::new(BrokerErrorKind::Other, format!("Kafka call failed: {e}"))
            })?
    }

    fn admin_options(&self) -> AdminOptions {
        AdminOptions::new()
            .request_timeout(Some(REQUEST_TIMEOUT))
            .operation_timeout(Some(OPERATION_TIMEOUT))
    }

    /// The cluster's topic layout, reusing an answer younger than [`METADATA_REUSE`] (or
    /// the [`metadata_interval`] of a big cluster).
    fn metadata_shared(&self, timeout: Duration) -> Result<Arc<TopicLayout>, BrokerError> {
        self.metadata_within(|n| METADATA_REUSE.max(metadata_interval(n)), timeout)
    }

    /// The shared layout when it is younger than `max_age` (of its topic count), otherwise a
    /// fresh read.
    fn metadata_within(
        &self,
        max_age: impl Fn(usize) -> Duration,
        timeout: Duration,
    ) -> Result<Arc<TopicLayout>, BrokerError> {
        {
            let cache = self.layout_cache();
            if let Some((at, layout)) = cache.layout.as_ref()
                && at.elapsed() < max_age(layout.len())
            {
                return Ok(layout.clone());
            }
        }
        self.metadata_fresh(timeout)
    }

    /// Read the cluster's topic layout and share it with observations for
    /// [`METADATA_REUSE`], unless something changed while it was being read.
    fn metadata_fresh(&self, timeout: Duration) -> Result<Arc<TopicLayout>, BrokerError> {
        let (generation, at) = (self.layout_cache().generation, std::time::Instant::now());
        let layout = Arc::new(self.metadata_blocking(timeout)?);
        let mut cache = self.layout_cache();
        let newer = cache.layout.as_ref().is_none_or(|(t, _)| *t < at);
        if cache.generation == generation && newer {
            cache.layout = Some((at, layout.clone()));
        }
        Ok(layout)
    }

    fn layout_cache(&self) -> std::sync::MutexGuard<'_, LayoutCache> {
        self.metadata_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Forget the shared cluster layout: topics were deleted, or new ones did not show.
    fn invalidate_layout(&self) {
        let mut cache = self.layout_cache();
        cache.generation += 1;
        cache.layout = None;
    }

    /// Forget what observations read about `names`: the caller is about to change them.
    fn forget<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        let names: HashSet<&str> = names.into_iter().collect();
        self.topics.forget(names.iter().copied());
        self.flow.forget_matching(|k| names.contains(k.topic()));
    }

    /// Topic names and partition layout in the cluster (one Metadata request).
    fn metadata_blocking(&self, timeout: Duration) -> Result<TopicLayout, BrokerError> {
        self.count("Metadata");
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
                let partitions = t.partitions();
                let replication_factor = partitions
                    .iter()
                    .min_by_key(|p| p.id())
                    .map(|p| p.replicas().len());
                let meta = TopicMeta {
                    partitions: partitions.len() as i32,
                    replication_factor,
                    led: partitions
                        .iter()
                        .all(|p| p.leader() >= 0 && p.error().is_none()),
                };
                (t.name().to_string(), meta)
            })
            .collect())
    }

    /// The earliest or latest offset of every partition of the given topics, in one
    /// ListOffsets round (librdkafka's offsets-for-times with the special timestamps).
    /// Partitions that could not answer are left out.
    fn offsets_blocking(
        &self,
        topics: &[(String, i32)],
        offset: Offset,
        timeout: Duration,
    ) -> Result<HashMap<(String, i32), i64>, BrokerError> {
        if topics.is_empty() {
            return Ok(HashMap::new());
        }
        let what = || format!("reading offsets on {}", self.endpoint);
        let mut tpl = TopicPartitionList::with_capacity(topics.len());
        for (topic, partitions) in topics {
            for p in 0..*partitions {
                tpl.add_partition_offset(topic, p, offset)
                    .map_err(|e| classify_kafka(&e, None, &what()))?;
            }
        }
        self.count("ListOffsets");
        let result = self
            .consumer
            .offsets_for_times(tpl, timeout)
            .map_err(|e| classify_kafka(&e, self.last_error().as_ref(), &what()))?;
        Ok(result
            .elements()
            .iter()
            .filter(|elem| elem.error().is_ok())
            .filter_map(|elem| match elem.offset() {
                Offset::Offset(n) => Some(((elem.topic().to_string(), elem.partition()), n)),
                _ => None,
            })
            .collect())
    }

    /// The offsets `group` committed on `topic`'s partitions (absent: none committed).
    fn committed_blocking(
        &self,
        group: &str,
        topic: &str,
        partitions: i32,
    ) -> Result<HashMap<i32, i64>, BrokerError> {
        let what = || {
            format!(
                "reading the offsets of consumer group {group} on {}",
                self.endpoint
            )
        };
        let mut config = self.config.clone();
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false");
        let consumer: BaseConsumer<CaptureContext> =
            BaseConsumer::from_config_and_context(&config, self.context.clone())
                .map_err(|e| classify_kafka(&e, None, &what()))?;
        let mut tpl = TopicPartitionList::with_capacity(usize::try_from(partitions).unwrap_or(0));
        for p in 0..partitions {
            tpl.add_partition(topic, p);
        }
        self.count("OffsetFetch");
        let committed = consumer
            .committed_offsets(tpl, OBSERVE_TIMEOUT)
            .map_err(|e| classify_kafka(&e, self.last_error().as_ref(), &what()))?;
        Ok(committed
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(n) => Some((e.partition(), n)),
                _ => None,
            })
            .collect())
    }

    /// The (partition, low, high) watermarks of each of `names` the layout shows with a leader
    /// for every partition and whose every partition answered: one ListOffsets round for the
    /// earliest and one for the latest offsets, whatever the number of topics. Topics still
    /// getting partition leaders (just created or moving) are not asked and are left out: a
    /// Delete policy never removes a topic whose count is unknown.
    fn watermarks_in<'a>(
        &self,
        names: impl IntoIterator<Item = &'a String>,
        layout: &TopicLayout,
    ) -> Result<HashMap<String, Vec<Watermarks>>, BrokerError> {
        let topics: Vec<(String, i32)> = names
            .into_iter()
            .filter_map(|n| {
                layout
                    .get(n)
                    .filter(|m| m.led)
                    .map(|m| (n.clone(), m.partitions))
            })
            .collect();
        if topics.is_empty() {
            return Ok(HashMap::new());
        }
        let low = self.offsets_blocking(&topics, Offset::Beginning, OBSERVE_TIMEOUT)?;
        let high = self.offsets_blocking(&topics, Offset::End, OBSERVE_TIMEOUT)?;
        Ok(topics
            .into_iter()
            .filter_map(|(topic, partitions)| {
                let marks = (0..partitions)
                    .map(|p| {
                        let key = (topic.clone(), p);
                        Some(Watermarks {
                            partition: p,
                            low: *low.get(&key)?,
                            high: *high.get(&key)?,
                        })
                    })
                    .collect::<Option<Vec<_>>>()?;
                Some((topic, marks))
            })
            .collect())
    }

    /// What `group` has not committed on `topic` (one OffsetFetch): the sum over partitions of
    /// high watermark − committed offset. A partition the group committed nothing on counts
    /// from the low watermark, as the client's consumers start there (`auto.offset.reset =
    /// earliest`, see `data.rs`); so does a commit below the low watermark (records expired).
    fn group_lag_blocking(
        &self,
        group: &str,
        topic: &str,
        marks: &[Watermarks],
    ) -> Result<u64, BrokerError> {
        let partitions = i32::try_from(marks.len()).unwrap_or(i32::MAX);
        let committed = self.committed_blocking(group, topic, partitions)?;
        Ok(marks
            .iter()
            .map(|m| {
                let read = committed
                    .get(&m.partition)
                    .copied()
                    .unwrap_or(m.low)
                    .max(m.low);
                u64::try_from(m.high - read).unwrap_or(0)
            })
            .sum())
    }

    /// The flow figures of `keys`, counted at one moment: one Metadata (shared), one
    /// ListOffsets round each for the earliest and the latest offsets of every topic named,
    /// and one OffsetFetch per consumer group (librdkafka reads one group's offsets per
    /// request, from that group's coordinator). Absent or uncountable topics count None.
    fn read_flow_blocking(
        &self,
        keys: &[FlowKey],
    ) -> Result<HashMap<FlowKey, Option<u64>>, BrokerError> {
        let topics: BTreeSet<String> = keys.iter().map(|k| k.topic().to_string()).collect();
        let layout = self.metadata_shared(OBSERVE_TIMEOUT)?;
        let marks = match self.watermarks_in(&topics, &layout) {
            Ok(m) => m,
            // The shared layout may predate a topic deleted elsewhere: read it again once.
            Err(e) if e.kind == BrokerErrorKind::Other => {
                self.invalidate_layout();
                let layout = self.metadata_fresh(OBSERVE_TIMEOUT)?;
                self.watermarks_in(&topics, &layout)?
            }
            Err(e) => return Err(e),
        };
        // Each group's offsets come from its own coordinator, one request at a time: a few
        // threads read them side by side so that many groups fit in one interval.
        let per_thread = keys.len().div_ceil(OFFSET_FETCH_THREADS).max(1);
        let counted: Vec<Result<FlowCounts, BrokerError>> = std::thread::scope(|scope| {
            let workers: Vec<_> = keys
                .chunks(per_thread)
                .map(|chunk| {
                    let marks = &marks;
                    scope.spawn(move || {
                        chunk
                            .iter()
                            .map(|key| {
                                let count = match (key, marks.get(key.topic())) {
                                    (_, None) => None,
                                    (FlowKey::Records(_), Some(m)) => Some(records(m)),
                                    (FlowKey::Lag { topic, group }, Some(m)) => {
                                        Some(self.group_lag_blocking(group, topic, m)?)
                                    }
                                };
                                Ok((key.clone(), count))
                            })
                            .collect()
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join().unwrap_or_else(|_| {
                        Err(BrokerError::new(
                            BrokerErrorKind::Other,
                            "reading consumer-group offsets failed",
                        ))
                    })
                })
                .collect()
        });
        let mut out = HashMap::with_capacity(keys.len());
        for part in counted {
            out.extend(part?);
        }
        Ok(out)
    }

    /// For each topic, what the slowest of its consumer groups has not committed yet (see
    /// [`Inner::group_lag_blocking`]). Topics not on the broker, or whose offsets cannot all be
    /// read, are left out.
    fn unconsumed_blocking(
        &self,
        groups: &BTreeMap<String, Vec<String>>,
    ) -> Result<BTreeMap<String, u64>, BrokerError> {
        let layout = self.metadata_blocking(OBSERVE_TIMEOUT)?;
        let marks = self.watermarks_in(groups.keys(), &layout)?;
        let mut out = BTreeMap::new();
        for (topic, marks) in &marks {
            let mut held = 0u64;
            for group in groups.get(topic).into_iter().flatten() {
                held = held.max(self.group_lag_blocking(group, topic, marks)?);
            }
            if held == 0 {
                lock_drained(&self.drained).insert(topic.clone(), records(marks));
            }
            out.insert(topic.clone(), held);
        }
        Ok(out)
    }

    /// Message counts (high − low watermark over partitions) of those `names` the layout
    /// shows with a leader for every partition and whose every partition answered.
    fn counts_in(
        &self,
        names: &[String],
        layout: &TopicLayout,
    ) -> Result<HashMap<String, u64>, BrokerError> {
        Ok(self
            .watermarks_in(names, layout)?
            .into_iter()
            .map(|(topic, marks)| (topic, records(&marks)))
            .collect())
    }

    /// The configs `keep` selects (those with a value) of the given topics: DescribeConfigs,
    /// [`DESCRIBE_CHUNK`] topics per request, each answer reduced as it arrives (a topic has
    /// dozens of configs; ten thousand topics' worth would be tens of megabytes). Topics that
    /// vanished in the meantime are left out.
    async fn describe_configs(
        &self,
        names: &[String],
        keep: impl Fn(&ConfigEntry) -> bool,
    ) -> Result<HashMap<String, TopicConfig>, BrokerError> {
        let mut out = HashMap::with_capacity(names.len());
        for chunk in names.chunks(DESCRIBE_CHUNK) {
            self.describe_chunk(chunk, &keep, &mut out).await?;
        }
        Ok(out)
    }

    async fn describe_chunk(
        &self,
        names: &[String],
        keep: &impl Fn(&ConfigEntry) -> bool,
        out: &mut HashMap<String, TopicConfig>,
    ) -> Result<(), BrokerError> {
        let what = format!("describing topic configs on {}", self.endpoint);
        let specifiers: Vec<ResourceSpecifier<'_>> = names
            .iter()
            .map(|n| ResourceSpecifier::Topic(n.as_str()))
            .collect();
        let opts = AdminOptions::new().request_timeout(Some(OBSERVE_TIMEOUT));
        self.count("DescribeConfigs");
        let results = self
            .admin
            .describe_configs(&specifiers, &opts)
            .await
            .map_err(|e| classify_kafka(&e, self.last_error().as_ref(), &what))?;
        // librdkafka returns resources in request order; an error result carries no name.
        for (name, result) in names.iter().zip(results) {
            match result {
                Ok(resource) => {
                    let name = match &resource.specifier {
                        OwnedResourceSpecifier::Topic(n) => n.clone(),
                        _ => name.clone(),
                    };
                    let config = resource
                        .entries
                        .into_iter()
                        .filter(keep)
                        .filter_map(|e| Some((e.name, e.value?)))
                        .collect();
                    out.insert(name, config);
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
        Ok(())
    }

    /// Read `names` from the broker: layout from metadata, message counts, managed configs.
    /// Absent topics map to None.
    async fn read_topics(
        self: &Arc<Self>,
        names: Vec<String>,
    ) -> Result<HashMap<String, View>, BrokerError> {
        let (names, layout, counts) = self
            .blocking(move |inner| {
                let layout = inner.metadata_shared(OBSERVE_TIMEOUT)?;
                let (layout, counts) = match inner.counts_in(&names, &layout) {
                    Ok(counts) => (layout, counts),
                    // The shared layout may predate a change made elsewhere (a topic deleted):
                    // read it again once.
                    Err(e) if e.kind == BrokerErrorKind::Other => {
                        inner.invalidate_layout();
                        let layout = inner.metadata_fresh(OBSERVE_TIMEOUT)?;
                        let counts = inner.counts_in(&names, &layout)?;
                        (layout, counts)
                    }
                    Err(e) => return Err(e),
                };
                Ok((names, layout, counts))
            })
            .await?;
        let present: Vec<String> = names
            .iter()
            .filter(|n| layout.contains_key(*n))
            .cloned()
            .collect();
        let mut configs = self
            .describe_configs(&present, |e| self.managed_keys.contains(&e.name))
            .await?;
        Ok(names
            .into_iter()
            .map(|name| {
                let view = match (layout.get(&name), configs.remove(&name)) {
                    (Some(meta), Some(config)) => Some(Arc::new(TopicView {
                        partitions: meta.partitions,
                        replication_factor: meta.replication_factor,
                        messages: counts.get(&name).copied(),
                        config,
                    })),
                    // Gone between the metadata and DescribeConfigs.
                    _ => None,
                };
                (name, view)
            })
            .collect())
    }

    /// The views of `names`, from the shared snapshot when it is fresh, otherwise from one
    /// refresh that also reads every topic other callers are waiting for and every remembered
    /// topic past half its age.
    async fn observe_topics(
        self: &Arc<Self>,
        names: Vec<String>,
    ) -> Result<HashMap<String, View>, BrokerError> {
        self.topics
            .get(names, READ_CHUNK, &self.endpoint, |chunk| {
                self.read_topics(chunk)
            })
            .await
    }

    /// The flow figures of `keys` (a group's lag, a topic's records), shared like the topics'
    /// observation: at rest one read per endpoint per flow interval covers every group of
    /// every MessageBroker on it.
    async fn observe_flow(
        self: &Arc<Self>,
        keys: Vec<FlowKey>,
    ) -> Result<HashMap<FlowKey, Option<u64>>, BrokerError> {
        self.flow
            .get(keys, READ_CHUNK, &self.endpoint, |chunk| {
                let inner = Arc::clone(self);
                async move { inner.blocking(move |i| i.read_flow_blocking(&chunk)).await }
            })
            .await
    }

    /// Wait (bounded) until the broker's metadata shows each topic with at least the given
    /// partition count and every partition answers an offsets request, so that an observation
    /// right after apply sees the change and producers can use the topic. KRaft brokers answer
    /// admin requests once the controller committed them; metadata caches and partition
    /// leadership follow a moment (with many new partitions, seconds) later. One poller per
    /// endpoint serves every caller: one Metadata and one ListOffsets request per round.
    async fn await_metadata(self: &Arc<Self>, wanted: Vec<(String, Option<i32>)>) {
        if wanted.is_empty() {
            return;
        }
        let (done, settled) = tokio::sync::oneshot::channel();
        let start_poller = {
            let mut settling = self.settling.lock().unwrap_or_else(|e| e.into_inner());
            settling.waiters.push(SettleWaiter {
                topics: wanted,
                deadline: std::time::Instant::now() + SETTLE_TIMEOUT,
                done,
            });
            !std::mem::replace(&mut settling.polling, true)
        };
        if start_poller {
            let inner = Arc::clone(self);
            tokio::task::spawn_blocking(move || inner.settle_rounds());
        }
        if !matches!(settled.await, Ok(true)) {
            // Observations must not trust a layout that may not show them yet.
            self.invalidate_layout();
            tracing::info!("new topics or partitions were not all ready within {SETTLE_TIMEOUT:?}");
        }
    }

    /// The poller behind [`Inner::await_metadata`]: runs until nobody waits. There is at
    /// most one per endpoint (`Settling::polling`).
    fn settle_rounds(&self) {
        // A panic in a round must not leave `polling` set with nobody polling: every later
        // waiter would wait out its deadline. Waiters already queued are released unsettled.
        let _guard = super::coalesce::OnUnwind(|| {
            let mut settling = self.settling.lock().unwrap_or_else(|e| e.into_inner());
            settling.polling = false;
            settling.waiters.clear();
        });
        loop {
            let wanted: BTreeMap<String, Option<i32>> = {
                let mut settling = self.settling.lock().unwrap_or_else(|e| e.into_inner());
                if settling.waiters.is_empty() {
                    settling.polling = false;
                    return;
                }
                let mut all = BTreeMap::new();
                for (name, partitions) in settling.waiters.iter().flat_map(|w| &w.topics) {
                    let e: &mut Option<i32> = all.entry(name.clone()).or_default();
                    *e = (*e).max(*partitions);
                }
                all
            };
            let (ready, cluster) = self.ready_topics(&wanted).unwrap_or_default();
            let now = std::time::Instant::now();
            let mut settling = self.settling.lock().unwrap_or_else(|e| e.into_inner());
            let (finished, waiting): (Vec<SettleWaiter>, Vec<SettleWaiter>) =
                std::mem::take(&mut settling.waiters)
                    .into_iter()
                    .partition(|w| {
                        now >= w.deadline || w.topics.iter().all(|(n, _)| ready.contains(n))
                    });
            settling.waiters = waiting;
            drop(settling);
            for w in finished {
                let ok = w.topics.iter().all(|(n, _)| ready.contains(n));
                let _ = w.done.send(ok);
            }
            // Reading a big cluster's metadata costs the broker: poll less often there.
            std::thread::sleep(metadata_interval(cluster));
        }
    }

    /// Which of the wanted topics have (at least) their partition count, a leader for every
    /// partition, and answer an offsets request.
    fn ready_topics(
        &self,
        wanted: &BTreeMap<String, Option<i32>>,
    ) -> Result<(HashSet<String>, usize), BrokerError> {
        // Shared both ways: the pass after this apply observes with it, and a read made by an
        // observation within the cluster's metadata interval serves this round.
        let layout = self.metadata_within(metadata_interval, OBSERVE_TIMEOUT)?;
        let candidates: Vec<(String, i32)> = wanted
            .iter()
            .filter_map(|(name, want)| {
                let meta = layout.get(name).filter(|m| m.led)?;
                want.is_none_or(|w| meta.partitions >= w)
                    .then(|| (name.clone(), meta.partitions))
            })
            .collect();
        let answered = self.offsets_blocking(&candidates, Offset::End, SETTLE_POLL * 20)?;
        let ready = candidates
            .into_iter()
            .filter(|(name, partitions)| {
                (0..*partitions).all(|p| answered.contains_key(&(name.clone(), p)))
            })
            .map(|(name, _)| name)
            .collect();
        Ok((ready, layout.len()))
    }

    /// Wait (bounded) until DescribeConfigs shows the values just written.
    async fn await_configs(&self, wanted: &[(String, BTreeMap<String, String>)]) {
        if wanted.is_empty() {
            return;
        }
        let names: Vec<String> = wanted.iter().map(|(n, _)| n.clone()).collect();
        let keys: HashSet<&String> = wanted.iter().flat_map(|(_, c)| c.keys()).collect();
        let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
        loop {
            let current = self
                .describe_configs(&names, |e| keys.contains(&e.name))
                .await;
            let settled = current.is_ok_and(|current| {
                wanted.iter().all(|(name, config)| {
                    current
                        .get(name)
                        .is_some_and(|have| config.iter().all(|(k, v)| have.get(k) == Some(v)))
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
        self.count("CreateTopics");
        let result = self
            .admin
            .create_topics(&new_topics, &self.admin_options())
            .await;
        per_topic_results(
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
        )
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
        self.count("CreatePartitions");
        let result = self
            .admin
            .create_partitions(&requests, &self.admin_options())
            .await;
        per_topic_results(
            &items.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
            &unique,
            result,
            self.last_error().as_ref(),
            "adding partitions to topic",
            |_| None,
        )
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
        let dynamic = |e: &ConfigEntry| e.source == ConfigSource::DynamicTopic && !e.is_sensitive;
        let current = match self.describe_configs(&names, dynamic).await {
            Ok(c) => c,
            Err(e) => return items.iter().map(|_| Err(e.clone())).collect(),
        };
        let mut merged: Vec<(String, BTreeMap<String, String>)> = Vec::new();
        for (item, _) in items.iter().zip(&unique).filter(|(_, u)| **u) {
            let Some(dynamic) = current.get(&item.name) else {
                continue;
            };
            let mut config = dynamic.to_map();
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
            self.count("AlterConfigs");
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

    /// Delete topics that are empty right now. The plan saw them empty, but observations
    /// may be reused for a while (see [`Snapshot`]): the counts are read again first, and a
    /// topic that received messages since, or cannot be counted, is kept.
    async fn delete_topics(self: &Arc<Self>, names: Vec<String>) -> Vec<ItemResult> {
        let wanted = names.clone();
        let holding: Result<HashMap<String, Option<u64>>, BrokerError> = self
            .blocking(move |inner| {
                let layout = inner.metadata_blocking(OBSERVE_TIMEOUT)?;
                let counts = inner.counts_in(&wanted, &layout)?;
                Ok(wanted
                    .into_iter()
                    .filter(|n| layout.contains_key(n))
                    .map(|n| {
                        let c = counts.get(&n).copied();
                        (n, c)
                    })
                    .collect())
            })
            .await;
        let holding = match holding {
            Ok(h) => h,
            Err(e) => return names.iter().map(|_| Err(e.clone())).collect(),
        };
        let drained = lock_drained(&self.drained).clone();
        let kept = |name: &str| match holding.get(name) {
            None | Some(Some(0)) => None,
            // Every group had read it all, and no record arrived since.
            Some(Some(n)) if drained.get(name) == Some(n) => None,
            Some(Some(n)) => Some(format!(
                "topic {name} received {n} message(s) since it was observed; it is deleted once drained"
            )),
            Some(None) => Some(format!(
                "the messages of topic {name} could not be counted; it is not deleted yet"
            )),
        };
        let mut seen = HashSet::new();
        let unique: Vec<bool> = names.iter().map(|n| seen.insert(n.clone())).collect();
        let refs: Vec<&str> = names
            .iter()
            .zip(&unique)
            .filter(|(n, u)| **u && kept(n).is_none())
            .map(|(n, _)| n.as_str())
            .collect();
        let result = if refs.is_empty() {
            Ok(Vec::new())
        } else {
            self.count("DeleteTopics");
            self.admin.delete_topics(&refs, &self.admin_options()).await
        };
        let mut results = per_topic_results(
            &names.iter().map(String::as_str).collect::<Vec<_>>(),
            &unique,
            result,
            self.last_error().as_ref(),
            "deleting topic",
            // Already gone is success.
            |code| (code == RDKafkaErrorCode::UnknownTopicOrPartition).then_some(Ok(())),
        );
        self.invalidate_layout();
        for (name, result) in names.iter().zip(results.iter_mut()) {
            if let Some(why) = kept(name) {
                *result = Err(BrokerError::new(BrokerErrorKind::Other, why));
            }
        }
        results
    }
}

fn lock_drained(
    m: &std::sync::Mutex<HashMap<String, u64>>,
) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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

/// A batch executor for a [`Coalescer`]: `run` on (a handle to) the endpoint's clients.
fn on_client<R, F, Fut>(
    inner: &Arc<Inner>,
    run: F,
) -> impl Fn(Vec<R>) -> Fut + Send + Sync + use<R, F, Fut>
where
    F: Fn(Arc<Inner>, Vec<R>) -> Fut + Send + Sync,
{
    let inner = Arc::clone(inner);
    move |batch| run(Arc::clone(&inner), batch)
}

/// The Kafka backend for one endpoint + credentials.
pub struct KafkaBackend {
    inner: Arc<Inner>,
    creates: Arc<Coalescer<CreateItem>>,
    partitions: Arc<Coalescer<PartitionsItem>>,
    alters: Arc<Coalescer<AlterItem>>,
    deletes: Arc<Coalescer<String>>,
    /// Bound on `check()` (`--check-timeout`).
    check_timeout: Duration,
}

impl KafkaBackend {
    /// Build the clients (no connection is made yet) and start the thread that delivers the
    /// consumer's error callbacks.
    pub(super) fn new(
        spec: &KafkaSpec,
        config: ClientConfig,
        options: &ConnectOptions,
    ) -> Result<Self, BrokerError> {
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
            config: config.clone(),
            drained: std::sync::Mutex::new(HashMap::new()),
            context,
            endpoint: spec.bootstrap_servers.join(","),
            managed_keys,
            requests: options.requests.clone(),
            metadata_cache: std::sync::Mutex::new(LayoutCache::default()),
            topics: Shared::new(options.observe_max_age),
            flow: Shared::new(options.flow_max_age),
            settling: std::sync::Mutex::new(Settling::default()),
        });
        start_event_poller(Arc::downgrade(&inner));
        Ok(KafkaBackend {
            inner,
            creates: Arc::new(Coalescer::new(COALESCE_WINDOW)),
            partitions: Arc::new(Coalescer::new(COALESCE_WINDOW)),
            alters: Arc::new(Coalescer::new(COALESCE_WINDOW)),
            deletes: Arc::new(Coalescer::new(COALESCE_WINDOW)),
            check_timeout: options.check_timeout,
        })
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

    /// A Kafka topic keeps its records after they are read: what it holds for its
    /// subscriptions is the lag of its slowest consumer group (read with OffsetFetch, one
    /// short-lived client per group, only for topics about to be deleted).
    async fn unconsumed(
        &self,
        leaving: &[ObjectKey],
        names: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<ObjectKey, u64>, BrokerError> {
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (logical, group) in names {
            let mut parts = logical.split('/');
            if let (Some(topic), Some(_), None) = (parts.next(), parts.next(), parts.next())
                && let Some(physical) = names.get(topic)
                && leaving
                    .iter()
                    .any(|k| k.kind == ObjectKind::Topic && &k.name == physical)
            {
                groups
                    .entry(physical.clone())
                    .or_default()
                    .push(group.clone());
            }
        }
        if groups.is_empty() {
            return Ok(BTreeMap::new());
        }
        let held = self
            .inner
            .blocking(move |inner| inner.unconsumed_blocking(&groups))
            .await?;
        Ok(held
            .into_iter()
            .map(|(topic, n)| (ObjectKey::new(ObjectKind::Topic, topic), n))
            .collect())
    }

    /// Each subscription's backlog is its consumer group's lag on the topic, and its dead
    /// letters the records of the topic's `.dlq` topic (high − low watermark: approximate
    /// where compaction or transaction markers leave gaps), from the shared flow read.
    async fn flow(
        &self,
        names: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, FlowReading>, BrokerError> {
        // logical topic/sub → (lag key, dead-letter key)
        let mut wanted: BTreeMap<&str, (Option<FlowKey>, Option<FlowKey>)> = BTreeMap::new();
        for (logical, physical) in names {
            let parts: Vec<&str> = logical.split('/').collect();
            match parts[..] {
                [topic, _] => {
                    if let Some(topic) = names.get(topic) {
                        wanted.entry(logical).or_default().0 = Some(FlowKey::Lag {
                            topic: topic.clone(),
                            group: physical.clone(),
                        });
                    }
                }
                [_, _, "dlq"] => {
                    let subscription = &logical[..logical.len() - "/dlq".len()];
                    wanted.entry(subscription).or_default().1 =
                        Some(FlowKey::Records(physical.clone()));
                }
                _ => {}
            }
        }
        let keys: Vec<FlowKey> = wanted
            .values()
            .flat_map(|(lag, dead)| lag.iter().chain(dead))
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if keys.is_empty() {
            return Ok(BTreeMap::new());
        }
        let counts = self.inner.observe_flow(keys).await?;
        let count = |k: &Option<FlowKey>| k.as_ref().and_then(|k| counts.get(k).copied().flatten());
        Ok(wanted
            .into_iter()
            .map(|(logical, (lag, dead))| {
                let reading = FlowReading {
                    backlog: count(&lag),
                    dead_letters: count(&dead),
                };
                (logical.to_string(), reading)
            })
            .collect())
    }

    async fn check(&self) -> Result<(), BrokerError> {
        let started = std::time::Instant::now();
        // The caller bounds the whole check by the check timeout: leave room for refining a
        // timeout's reason below, or the caller's own "no answer" would always win.
        let timeout = self
            .check_timeout
            .saturating_sub(REFINE_WAIT * 2)
            .max(REFINE_WAIT);
        let request = self
            .inner
            .blocking(move |inner| inner.metadata_blocking(timeout).map(|_| ()));
        tokio::pin!(request);
        // librdkafka retries a refused TLS handshake or login on its own and the request just
        // waits; the error callback says so at once, so stop at the first refusal instead
        // of waiting out the timeout. A refusal left over from before is no reason: a broker
        // that answers within the first step passes.
        let result = loop {
            match tokio::time::timeout(CHECK_STEP, &mut request).await {
                Ok(r) => break r,
                Err(_) => {
                    if let Some(refused) = self.inner.context.refused() {
                        return Err(classify(
                            refused.code,
                            Some(&refused),
                            &format!("metadata request to {}", self.inner.endpoint),
                            &format!("refused after {:?}", started.elapsed()),
                        ));
                    }
                }
            }
        };
        if let Err(e) = &result
            && e.kind == BrokerErrorKind::Timeout
        {
            // The error callback may trail the request; give it a moment to refine the reason.
            tokio::time::sleep(REFINE_WAIT).await;
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
        let topics = self.inner.observe_topics(names).await?;
        let mut observed = Observed::default();
        for key in keys.iter().filter(|k| is_topic_kind(k.kind)) {
            let Some(Some(view)) = topics.get(&key.name) else {
                continue;
            };
            let mut config = view.config.to_map();
            if let Some(rf) = view.replication_factor {
                config.insert(REPLICATION_FACTOR.to_string(), rf.to_string());
            }
            observed.objects.insert(
                key.clone(),
                ObservedObject {
                    partitions: Some(view.partitions),
                    config,
                    owner: None,
                    messages: view.messages,
                },
            );
        }
        Ok(observed)
    }

    async fn apply(&self, _scope: &Scope, actions: &[Action]) -> Vec<ActionOutcome> {
        let touched = || actions.iter().map(|a| a.key().name.as_str());
        self.inner.forget(touched());
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
                // No marker on the topic: the owned set in status records the adoption.
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

        // New topics and partitions this caller waits for (see `await_metadata`).
        let mut settle: Vec<(usize, String, Option<i32>)> = creates
            .iter()
            .map(|(i, c)| (*i, c.name.clone(), c.partitions))
            .chain(
                grows
                    .iter()
                    .map(|(i, g)| (*i, g.name.clone(), i32::try_from(g.count).ok())),
            )
            .collect();
        let (ci, citems): (Vec<usize>, Vec<CreateItem>) = creates.into_iter().unzip();
        let (gi, gitems): (Vec<usize>, Vec<PartitionsItem>) = grows.into_iter().unzip();
        let (ai, aitems): (Vec<usize>, Vec<AlterItem>) = alters.into_iter().unzip();
        let (di, ditems): (Vec<usize>, Vec<String>) = deletes.into_iter().unzip();
        let inner = &self.inner;
        let (cr, gr, ar, dr) = tokio::join!(
            self.creates.submit(
                citems,
                on_client(inner, |i, b| async move { i.create_topics(b).await })
            ),
            self.partitions.submit(
                gitems,
                on_client(inner, |i, b| async move { i.create_partitions(b).await })
            ),
            self.alters.submit(
                aitems,
                on_client(inner, |i, b| async move { i.alter_configs(b).await })
            ),
            self.deletes.submit(
                ditems,
                on_client(inner, |i, b| async move { i.delete_topics(b).await })
            ),
        );
        for (idx, res) in [(ci, cr), (gi, gr), (ai, ar), (di, dr)]
            .into_iter()
            .flat_map(|(idx, res)| idx.into_iter().zip(res))
        {
            results[idx] = Some(res);
        }
        settle.retain(|(i, _, _)| matches!(results[*i], Some(Ok(()))));
        self.inner
            .await_metadata(settle.into_iter().map(|(_, n, p)| (n, p)).collect())
            .await;
        // Observations during the apply must not outlive it.
        self.inner.forget(touched());
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
    fn whole_cluster_reads_are_spaced_by_cluster_size() {
        assert_eq!(metadata_interval(0), SETTLE_POLL);
        assert_eq!(metadata_interval(1_000), SETTLE_POLL);
        assert_eq!(metadata_interval(10_000), Duration::from_secs(1));
        assert_eq!(metadata_interval(1_000_000), Duration::from_secs(2));
    }

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
