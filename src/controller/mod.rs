//! The controller: watches MessageBrokers (and the Secrets they reference), reconciles each one
//! against its brokers, and writes status, binding Secrets and Events.

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::api::MessageBroker;
use crate::brokers::Connector;
use crate::brokers::pool::BackendPool;
use crate::error::Error;
use crate::metrics::Metrics;

mod env;
pub mod events;
pub mod finalizer;
mod namespaces;
mod owner_index;
mod reconcile;
mod secret_index;
mod status;
mod swap;

pub use env::endpoint_identity;
pub use reconcile::{reconcile, validate};

/// Annotation that lets an admin abandon broker-side cleanup of a deleting MessageBroker.
pub const ABANDON_ANNOTATION: &str = "switchyard.dev/abandon-cleanup";

/// A MessageBroker as stored, with spec and status kept as JSON text so that an object the
/// current types cannot read is reported as Stalled instead of breaking the watch (and a cache
/// of thousands of them stays small).
#[derive(kube::Resource, Serialize, Deserialize, Clone, Debug)]
#[resource(inherit = "MessageBroker")]
pub struct RawMessageBroker {
    /// Object metadata.
    pub metadata: ObjectMeta,
    /// The spec, not yet validated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<Box<serde_json::value::RawValue>>,
    /// The status, as last written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Box<serde_json::value::RawValue>>,
}

impl RawMessageBroker {
    /// The spec, read as the current types.
    pub fn spec(&self) -> serde_json::Result<crate::api::MessageBrokerSpec> {
        serde_json::from_str(self.spec.as_deref().map_or("null", |r| r.get()))
    }

    /// The status as last written, if readable.
    pub fn status(&self) -> Option<crate::api::MessageBrokerStatus> {
        serde_json::from_str(self.status.as_deref()?.get()).ok()
    }
}

/// Settings of one controller instance.
#[derive(Clone, Debug)]
pub struct Config {
    /// Env slugs this instance manages; `None` manages all.
    pub envs: Option<BTreeSet<String>>,
    /// Requeue interval that repairs drift.
    pub resync: Duration,
    /// Timeout of a broker connectivity check.
    pub check_timeout: Duration,
    /// Skip the connectivity check when the shared endpoint answered within this interval.
    pub check_interval: Duration,
    /// Reconciles running at once.
    pub concurrency: u16,
    /// Name for Events' reporting controller.
    pub instance: String,
    /// How long after a swap's binding flip the old side is kept before it is retired: the
    /// time every app needs to see the new binding (the kubelet refreshes a projected Secret
    /// about a minute after it changed). Until then an app may still publish to the old side.
    pub swap_grace: Duration,
    /// How often the message-flow figures are read: each MessageBroker is passed over at this
    /// interval when it is shorter than the resync (zero: only at the resync).
    pub flow_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            envs: None,
            resync: Duration::from_secs(60),
            check_timeout: Duration::from_secs(5),
            check_interval: Duration::from_secs(10),
            concurrency: 64,
            instance: "switchyard".into(),
            swap_grace: Duration::from_secs(90),
            flow_interval: Duration::from_secs(30),
        }
    }
}

impl Config {
    /// The interval between two passes over a settled MessageBroker: the resync, or the flow
    /// interval when that is shorter. A pass that changes nothing writes nothing.
    pub fn pass_interval(&self) -> Duration {
        if self.flow_interval.is_zero() {
            self.resync
        } else {
            self.resync.min(self.flow_interval)
        }
    }

    /// Whether this instance manages the env.
    pub fn manages(&self, slug: &str) -> bool {
        self.envs.as_ref().is_none_or(|e| e.contains(slug))
    }
}

/// Shared state of the reconcilers.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Pooled broker clients.
    pub pool: BackendPool,
    /// Instance settings.
    pub config: Config,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Event recorder.
    pub recorder: Recorder,
    /// How many Normal Events bulk work may publish.
    pub(crate) event_budget: events::EventBudget,
    /// Binding Secrets Switchyard manages (metadata only), to skip writes that change nothing.
    pub bindings: Option<Store<kube::core::PartialObjectMeta<Secret>>>,
    /// Which MessageBroker owns which broker object, for brokers without an owner marker.
    pub(crate) owners: owner_index::OwnerIndex,
    failures: Mutex<HashMap<String, u32>>,
    /// The last status written per object, with the resourceVersion it was based on.
    written: Mutex<HashMap<String, (Option<String>, crate::api::MessageBrokerStatus)>>,
    /// The content hash last written per binding Secret (`namespace/name`), so that the watch
    /// event of our own write does not start another reconcile.
    binding_hashes: Mutex<HashMap<String, String>>,
}

impl Context {
    /// A context. `bindings` is the store of managed binding Secrets, when watched.
    pub fn new(
        client: Client,
        connector: Arc<dyn Connector>,
        config: Config,
        metrics: Arc<Metrics>,
        bindings: Option<Store<kube::core::PartialObjectMeta<Secret>>>,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "switchyard".into(),
                instance: Some(config.instance.clone()),
            },
        );
        Context {
            client,
            pool: BackendPool::new(connector),
            config,
            metrics,
            recorder,
            event_budget: events::EventBudget::default(),
            bindings,
            owners: owner_index::OwnerIndex::default(),
            failures: Mutex::new(HashMap::new()),
            written: Mutex::new(HashMap::new()),
            binding_hashes: Mutex::new(HashMap::new()),
        }
    }

    /// Remember the content hash about to be written to a binding Secret.
    pub(crate) fn writing_binding(&self, namespace: &str, name: &str, hash: &str) {
        self.binding_hashes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(format!("{namespace}/{name}"), hash.to_string());
    }

    /// Whether a binding Secret event is the echo of our own last write.
    fn is_own_binding_write(&self, secret: &PartialObjectMeta<Secret>) -> bool {
        let key = format!(
            "{}/{}",
            secret.namespace().unwrap_or_default(),
            secret.name_any()
        );
        let hash = secret.annotations().get(crate::binding::HASH_ANNOTATION);
        let hashes = self
            .binding_hashes
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        hash.is_some() && hashes.get(&key) == hash
    }

    pub(super) fn backoff(&self, key: &str) -> Duration {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = f.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        // 1s, 2s, 4s … capped at the resync interval (and 5 minutes).
        let secs = 1u64 << (*n - 1).min(9);
        Duration::from_secs(secs)
            .min(self.config.resync.max(Duration::from_secs(1)))
            .min(Duration::from_secs(300))
    }

    /// The status to start from. The watch cache can lag behind our own last write; when the
    /// cached object is still the version that write was based on, use what we wrote, so a
    /// pass never recomputes transition times or ownership from a stale copy.
    fn previous_status(&self, raw: &RawMessageBroker) -> crate::api::MessageBrokerStatus {
        let key = format!("{}/{}", raw.namespace().unwrap_or_default(), raw.name_any());
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        match written.get(&key) {
            Some((base, status)) if *base == raw.metadata.resource_version => {
                return status.clone();
            }
            // The cache has caught up (or someone else wrote): the copy is no longer needed.
            Some(_) => {
                written.remove(&key);
            }
            None => {}
        }
        drop(written);
        raw.status().unwrap_or_default()
    }

    /// The watch delivered a version of `raw`: a status written on an older version is now in
    /// the cache, so its copy can go (rather than wait for the object's next pass).
    fn caught_up(&self, raw: &RawMessageBroker) {
        let key = format!("{}/{}", raw.namespace().unwrap_or_default(), raw.name_any());
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        if written
            .get(&key)
            .is_some_and(|(base, _)| *base != raw.metadata.resource_version)
        {
            written.remove(&key);
        }
    }

    /// Remember a status write (see [`Context::previous_status`]).
    fn remember_status(&self, raw: &RawMessageBroker, status: &crate::api::MessageBrokerStatus) {
        let key = format!("{}/{}", raw.namespace().unwrap_or_default(), raw.name_any());
        self.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, (raw.metadata.resource_version.clone(), status.clone()));
    }

    /// Forget an object that is gone.
    pub(super) fn forget(&self, raw: &RawMessageBroker) {
        let namespace = raw.namespace().unwrap_or_default();
        if let Ok(spec) = raw.spec() {
            let mut hashes = self
                .binding_hashes
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for env in &spec.envs {
                let name = crate::binding::secret_name(&raw.name_any(), &env.slug);
                hashes.remove(&format!("{namespace}/{name}"));
            }
        }
        let key = format!("{}/{}", raw.namespace().unwrap_or_default(), raw.name_any());
        self.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        self.reset_backoff(&key);
    }

    fn reset_backoff(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

/// Requeue with exponential backoff per object; count the error by category.
pub fn error_policy(raw: Arc<RawMessageBroker>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.error(error.category());
    let key = format!("{}/{}", raw.namespace().unwrap_or_default(), raw.name_any());
    if error.is_transient() {
        let delay = ctx.backoff(&key);
        warn!(name = %key, category = error.category(), error = %error, retry_in = ?delay, "reconcile failed");
        Action::requeue(delay)
    } else {
        warn!(name = %key, category = error.category(), error = %error, "reconcile failed; waiting for a change");
        Action::await_change()
    }
}

/// What re-triggers a reconcile on a MessageBroker event: spec changes, finalizers, deletion
/// and our annotations — not status writes (which would loop).
fn trigger_hash(obj: &RawMessageBroker) -> Option<u64> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    obj.metadata.generation.hash(&mut h);
    obj.metadata.finalizers.hash(&mut h);
    obj.metadata.deletion_timestamp.is_some().hash(&mut h);
    obj.annotations().get(ABANDON_ANNOTATION).hash(&mut h);
    Some(h.finish())
}

/// Watch retry delays: quick (up to 5 s) so an API server restart is noticed within seconds,
/// not kube's default of up to 30 s.
fn watch_backoff()
-> kube::runtime::utils::ResetTimerBackoff<kube::runtime::watcher::ExponentialBackoff> {
    let exponential = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    kube::runtime::utils::ResetTimerBackoff::new(exponential.into(), Duration::from_secs(60))
}

/// The Secrets a MessageBroker references, read from its raw spec.
fn owner_key(raw: &RawMessageBroker) -> String {
    format!("{}/{}", raw.namespace().unwrap_or_default(), raw.name_any())
}

fn referenced_secrets(raw: &RawMessageBroker) -> Vec<String> {
    raw.spec()
        .map(|s| {
            s.envs
                .iter()
                .flat_map(crate::brokers::secret_names)
                .collect()
        })
        .unwrap_or_default()
}

/// A watch of `K` in `namespaces` (every namespace when empty): one watch per namespace when
/// there are several, merged so that `store` (the store the events feed, if any) stays right.
fn watch_in<K>(
    client: &Client,
    namespaces: &[String],
    config: watcher::Config,
    store: Option<Store<K>>,
) -> futures::stream::BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let one = |api: Api<K>| watcher(api, config.clone()).backoff(watch_backoff());
    match namespaces {
        [] => one(Api::all(client.clone())).boxed(),
        [ns] => one(Api::namespaced(client.clone(), ns)).boxed(),
        many => {
            let watches = many
                .iter()
                .map(|ns| (ns.clone(), one(Api::namespaced(client.clone(), ns))))
                .collect();
            namespaces::merged(watches, store).boxed()
        }
    }
}

/// Run the controller until `shutdown` resolves. Watches MessageBrokers in `namespaces` (all
/// when empty), the metadata of Secrets there (to react to credential rotation without caching
/// Secret data), and the binding Secrets it writes.
pub async fn run(
    client: Client,
    namespaces: Vec<String>,
    connector: Arc<dyn Connector>,
    config: Config,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    // Binding Secrets we manage: metadata only, label-selected.
    let (binding_store, binding_writer) = reflector::store();
    let binding_stream = reflector::reflector(
        binding_writer,
        watch_in::<PartialObjectMeta<Secret>>(
            &client,
            &namespaces,
            watcher::Config::default().labels(&format!(
                "{}={}",
                crate::binding::MANAGED_BY_LABEL.0,
                crate::binding::MANAGED_BY_LABEL.1
            )),
            Some(binding_store.clone()),
        )
        .modify(|s: &mut PartialObjectMeta<Secret>| s.metadata.managed_fields = None),
    )
    .filter_map(|event| {
        futures::future::ready(match event {
            Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => Some(Ok(s)),
            // A deleted binding is never an echo of our write: drop the hash so it triggers.
            Ok(watcher::Event::Delete(mut s)) => {
                s.metadata.annotations = None;
                Some(Ok(s))
            }
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
    });

    let ctx = Arc::new(Context::new(
        client.clone(),
        connector,
        config.clone(),
        metrics,
        Some(binding_store),
    ));

    let (store, writer) = reflector::store();
    let cache_ctx = ctx.clone();
    let index = Arc::new(secret_index::SecretIndex::default());
    let index_writer = index.clone();
    // managedFields are the biggest part of a cached object and nothing here reads them.
    let main_stream = watch_in(
        &client,
        &namespaces,
        watcher::Config::default().any_semantic(),
        Some(store.clone()),
    )
    .modify(|mb: &mut RawMessageBroker| mb.metadata.managed_fields = None)
    .reflect(writer)
    .inspect_ok({
        let ctx = ctx.clone();
        move |event| {
            if let watcher::Event::Delete(mb) = event {
                ctx.owners.remove(&owner_key(mb));
            }
        }
    })
    .applied_objects()
    .inspect_ok(move |mb| {
        cache_ctx.caught_up(mb);
        if let Some(status) = mb.status() {
            cache_ctx
                .owners
                .update(&owner_key(mb), owner_index::claims(&status));
        }
        // One parse per MessageBroker event, so a Secret event is a lookup.
        index_writer.update(
            mb.namespace().as_deref().unwrap_or_default(),
            &mb.name_any(),
            referenced_secrets(mb),
        );
    })
    .predicate_filter(trigger_hash, Default::default());

    let rotation_store = store.clone();
    let echo_ctx = ctx.clone();
    let rotation = watch_in::<PartialObjectMeta<Secret>>(
        &client,
        &namespaces,
        watcher::Config::default().any_semantic(),
        None,
    )
    .touched_objects();

    let controller = Controller::for_stream(main_stream, store)
        .with_config(kube::runtime::controller::Config::default().concurrency(config.concurrency))
        .watches_stream(
            rotation,
            move |secret: kube::core::PartialObjectMeta<Secret>| {
                let ns = secret.namespace().unwrap_or_default();
                index
                    .brokers(&ns, &secret.name_any())
                    .into_iter()
                    .map(|mb| ObjectRef::<RawMessageBroker>::new(&mb).within(&ns))
                    .filter(|r| {
                        // Deletions reach the index here: a MessageBroker gone from the cache
                        // is forgotten.
                        let present = rotation_store.get(r).is_some();
                        if !present {
                            index.remove(&ns, &r.name);
                        }
                        present
                    })
                    .collect::<Vec<_>>()
            },
        )
        .watches_stream(
            binding_stream,
            move |secret: kube::core::PartialObjectMeta<Secret>| {
                if echo_ctx.is_own_binding_write(&secret) {
                    return Vec::new();
                }
                let ns = secret.namespace().unwrap_or_default();
                secret
                    .owner_references()
                    .iter()
                    .filter(|o| {
                        o.kind == MessageBroker::kind(&())
                            && o.api_version == MessageBroker::api_version(&())
                    })
                    .map(|o| ObjectRef::<RawMessageBroker>::new(&o.name).within(&ns))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(shutdown);

    info!(envs = ?config.envs, resync = ?config.resync, "controller started");
    controller
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "reconcile dispatch");
            }
        })
        .await;
    info!("controller stopped");
}

#[cfg(test)]
mod tests;
