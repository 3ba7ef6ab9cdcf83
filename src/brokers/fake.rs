//! An in-memory backend for unit tests of reconcile and planning. It never stands in for a
//! real broker in tests that claim a backend works.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{
    Action, ActionOutcome, Backend, BrokerError, BrokerErrorKind, Connector, ObjectKey, Observed,
    ObservedObject, Scope,
};
use crate::api::{BrokerType, EnvSpec};
use crate::secrets::ResolvedSecrets;

/// A recording in-memory broker.
#[derive(Debug)]
pub struct FakeBackend {
    broker_type: BrokerType,
    objects: Mutex<BTreeMap<ObjectKey, ObservedObject>>,
    unreachable: AtomicBool,
    /// Calls wait for an answer that never comes, as behind a black hole.
    hung: AtomicBool,
    /// Milliseconds each `observe` takes, as a slow broker would.
    observe_delay_ms: AtomicUsize,
    /// Number of `apply` calls.
    pub apply_calls: AtomicUsize,
    /// Number of `observe` calls.
    pub observe_calls: AtomicUsize,
}

impl FakeBackend {
    /// An empty fake broker of the given type.
    pub fn new(broker_type: BrokerType) -> Arc<Self> {
        Arc::new(FakeBackend {
            broker_type,
            objects: Mutex::new(BTreeMap::new()),
            unreachable: AtomicBool::new(false),
            hung: AtomicBool::new(false),
            observe_delay_ms: AtomicUsize::new(0),
            apply_calls: AtomicUsize::new(0),
            observe_calls: AtomicUsize::new(0),
        })
    }

    /// Make every call fail as unreachable (or recover).
    pub fn set_unreachable(&self, down: bool) {
        self.unreachable.store(down, Ordering::SeqCst);
    }

    /// Make `check` and `observe` never answer (or answer again), as a broker behind a
    /// network black hole.
    pub fn set_hung(&self, hung: bool) {
        self.hung.store(hung, Ordering::SeqCst);
    }

    async fn wait_while_hung(&self) {
        while self.hung.load(Ordering::SeqCst) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Make every observation take this long (or, with zero, answer at once).
    pub fn set_observe_delay(&self, delay: std::time::Duration) {
        let ms = usize::try_from(delay.as_millis()).unwrap_or(usize::MAX);
        self.observe_delay_ms.store(ms, Ordering::SeqCst);
    }

    /// A copy of the current objects.
    pub fn objects(&self) -> BTreeMap<ObjectKey, ObservedObject> {
        self.objects.lock().map(|o| o.clone()).unwrap_or_default()
    }

    /// Put an object in place, as if someone else created it.
    pub fn insert(&self, key: ObjectKey, object: ObservedObject) {
        if let Ok(mut o) = self.objects.lock() {
            o.insert(key, object);
        }
    }

    /// Remove an object behind the operator's back.
    pub fn remove(&self, key: &ObjectKey) {
        if let Ok(mut o) = self.objects.lock() {
            o.remove(key);
        }
    }

    fn down(&self) -> Result<(), BrokerError> {
        if self.unreachable.load(Ordering::SeqCst) {
            Err(BrokerError::new(
                BrokerErrorKind::Unreachable,
                "connection refused (fake)",
            ))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Backend for FakeBackend {
    fn broker_type(&self) -> BrokerType {
        self.broker_type
    }

    async fn check(&self) -> Result<(), BrokerError> {
        self.wait_while_hung().await;
        self.down()
    }

    async fn observe(&self, _scope: &Scope, keys: &[ObjectKey]) -> Result<Observed, BrokerError> {
        self.wait_while_hung().await;
        self.down()?;
        let delay = self.observe_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(delay as u64)).await;
        }
        self.observe_calls.fetch_add(1, Ordering::SeqCst);
        let objects = self
            .objects
            .lock()
            .map_err(|_| BrokerError::new(BrokerErrorKind::Other, "poisoned"))?;
        Ok(Observed {
            objects: keys
                .iter()
                .filter_map(|k| objects.get(k).map(|o| (k.clone(), o.clone())))
                .collect(),
            ..Observed::default()
        })
    }

    async fn apply(&self, scope: &Scope, actions: &[Action]) -> Vec<ActionOutcome> {
        self.apply_calls.fetch_add(1, Ordering::SeqCst);
        let down = self.down();
        let mut objects = match self.objects.lock() {
            Ok(o) => o,
            Err(_) => return Vec::new(),
        };
        actions
            .iter()
            .map(|action| {
                let result = down.clone().map(|()| match action {
                    Action::Create { object }
                    | Action::Adopt { object }
                    | Action::Update { object, .. } => {
                        let entry = objects.entry(object.key.clone()).or_default();
                        entry.partitions = object.partitions.or(entry.partitions);
                        entry.config.extend(object.config.clone());
                        entry.owner = Some(scope.owner());
                    }
                    Action::AddPartitions { object, to, .. } => {
                        if let Some(e) = objects.get_mut(&object.key) {
                            e.partitions = Some(*to);
                        }
                    }
                    Action::Delete { key } => {
                        objects.remove(key);
                    }
                });
                ActionOutcome {
                    key: action.key().clone(),
                    result,
                }
            })
            .collect()
    }
}

/// Hands out one [`FakeBackend`] per env slug, created on first use.
#[derive(Default)]
pub struct FakeConnector {
    backends: Mutex<HashMap<(String, BrokerType), Arc<FakeBackend>>>,
    /// Number of `connect` calls.
    pub connects: AtomicUsize,
}

impl FakeConnector {
    /// The fake broker for an env slug and type (created if needed).
    pub fn backend(&self, slug: &str, broker_type: BrokerType) -> Arc<FakeBackend> {
        let mut map = self.backends.lock().unwrap_or_else(|e| e.into_inner());
        map.entry((slug.to_string(), broker_type))
            .or_insert_with(|| FakeBackend::new(broker_type))
            .clone()
    }
}

#[async_trait]
impl Connector for FakeConnector {
    async fn connect(
        &self,
        env: &EnvSpec,
        _secrets: &ResolvedSecrets,
    ) -> Result<Arc<dyn Backend>, BrokerError> {
        self.connects.fetch_add(1, Ordering::SeqCst);
        Ok(self.backend(&env.slug, env.broker_type))
    }
}
