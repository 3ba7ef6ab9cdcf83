//! One backend per endpoint + credentials, shared by every MessageBroker that uses it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Backend, BrokerError, Connector};
use crate::api::EnvSpec;
use crate::secrets::ResolvedSecrets;

/// Entries unused for this long are dropped (e.g. after a credential rotation).
const IDLE_EVICTION: Duration = Duration::from_secs(15 * 60);

/// A pooled backend and when it was last used.
type PoolEntry = (Arc<dyn Backend>, Instant);

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
    ) -> Result<Arc<dyn Backend>, BrokerError> {
        let key = pool_key(env, secrets);
        if let Some(backend) = self.lookup(&key) {
            return Ok(backend);
        }
        let backend = self.connector.connect(env, secrets).await?;
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        entries.retain(|_, (_, used)| now.duration_since(*used) < IDLE_EVICTION);
        // Another reconcile may have connected meanwhile: keep the first so both share it.
        let entry = entries.entry(key).or_insert((backend, now));
        Ok(entry.0.clone())
    }

    /// Number of pooled backends.
    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    /// Whether the pool is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lookup(&self, key: &str) -> Option<Arc<dyn Backend>> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get_mut(key).map(|(backend, used)| {
            *used = Instant::now();
            backend.clone()
        })
    }
}

/// The endpoint identity: broker type, its settings block, and the credentials digest.
fn pool_key(env: &EnvSpec, secrets: &ResolvedSecrets) -> String {
    let settings = serde_json::json!([
        env.broker_type,
        env.kafka,
        env.redis,
        env.rabbitmq,
        env.google_pub_sub,
        env.aws_sqs
    ]);
    format!("{settings}#{}", secrets.digest())
}
