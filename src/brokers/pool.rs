//! One backend per endpoint + credentials, shared by every MessageBroker that uses it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Backend, BrokerError, Connector};
use crate::api::EnvSpec;
use crate::secrets::ResolvedSecrets;

/// Entries unused for this long are dropped (e.g. after a credential rotation).
const IDLE_EVICTION: Duration = Duration::from_secs(15 * 60);

/// A pooled backend, its health, and when it was last used.
type PoolEntry = (Arc<dyn Backend>, Arc<Health>, Instant);

/// When the endpoint last answered, shared by every MessageBroker that uses it.
#[derive(Debug, Default)]
pub struct Health {
    last_ok: Mutex<Option<Instant>>,
}

/// A pooled backend with its endpoint's health record.
#[derive(Clone)]
pub struct Pooled {
    /// The backend.
    pub backend: Arc<dyn Backend>,
    health: Arc<Health>,
}

impl Pooled {
    /// The endpoint answered a call within `window`: a connectivity check can be skipped.
    pub fn answered_within(&self, window: Duration) -> bool {
        let last = *self
            .health
            .last_ok
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        last.is_some_and(|t| t.elapsed() < window)
    }

    /// Record a successful call.
    pub fn mark_ok(&self) {
        *self
            .health
            .last_ok
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    /// Record a failed call: the next reconcile checks connectivity again.
    pub fn mark_failed(&self) {
        *self
            .health
            .last_ok
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// A pool of backends keyed by the env's broker settings and a digest of its credentials.
pub struct BackendPool {
    connector: Arc<dyn Connector>,
    entries: Mutex<HashMap<String, PoolEntry>>,
}

impl BackendPool {
    /// A pool that builds backends with `connector`.
    pub fn new(connector: Arc<dyn Connector>) -> Self {
        BackendPool {
            connector,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The pooled backend for this env's endpoint and credentials, connecting on first use.
    pub async fn get(
        &self,
        env: &EnvSpec,
        secrets: &ResolvedSecrets,
    ) -> Result<Pooled, BrokerError> {
        let key = pool_key(env, secrets);
        if let Some(pooled) = self.lookup(&key) {
            return Ok(pooled);
        }
        let backend = self.connector.connect(env, secrets).await?;
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        entries.retain(|_, (_, _, used)| now.duration_since(*used) < IDLE_EVICTION);
        // Another reconcile may have connected meanwhile: keep the first so both share it.
        let entry = entries
            .entry(key)
            .or_insert_with(|| (backend, Arc::new(Health::default()), now));
        Ok(Pooled {
            backend: entry.0.clone(),
            health: entry.1.clone(),
        })
    }

    /// Drop a backend the endpoint refused for good (a CA that does not verify it, rejected
    /// credentials, missing rights): kept, its client would go on reconnecting in the
    /// background (librdkafka retries a failed TLS handshake every 50 ms) until evicted idle.
    /// The next pass that needs the endpoint connects afresh.
    pub fn evict(&self, pooled: &Pooled) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, (backend, _, _)| !Arc::ptr_eq(backend, &pooled.backend));
    }

    /// Number of pooled backends.
    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    /// Whether the pool is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lookup(&self, key: &str) -> Option<Pooled> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get_mut(key).map(|(backend, health, used)| {
            *used = Instant::now();
            Pooled {
                backend: backend.clone(),
                health: health.clone(),
            }
        })
    }
}

/// The endpoint identity: broker type, its settings block, and the credentials digest.
fn pool_key(env: &EnvSpec, secrets: &ResolvedSecrets) -> String {
    let settings = super::driver(env.broker_type).settings_json(env);
    format!("{settings}#{}", secrets.digest())
}
