//! Which MessageBrokers reference which Secrets, kept up to date from the MessageBroker watch,
//! so a Secret event (credential rotation) finds the MessageBrokers to reconcile without parsing
//! every spec in the namespace.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

type Key = (String, String);

/// Secret → referencing MessageBrokers, per namespace.
#[derive(Default)]
pub struct SecretIndex {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// `(namespace, secret)` → names of the MessageBrokers that reference it.
    by_secret: HashMap<Key, BTreeSet<String>>,
    /// `(namespace, messagebroker)` → the Secrets it referenced when last seen.
    by_broker: HashMap<Key, Vec<String>>,
}

impl SecretIndex {
    /// Record the Secrets a MessageBroker references now, replacing what it referenced before.
    pub fn update(&self, namespace: &str, broker: &str, secrets: Vec<String>) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let key = (namespace.to_string(), broker.to_string());
        if inner.by_broker.get(&key) == Some(&secrets) {
            return;
        }
        inner.unlink(&key);
        for secret in &secrets {
            inner
                .by_secret
                .entry((namespace.to_string(), secret.clone()))
                .or_default()
                .insert(broker.to_string());
        }
        inner.by_broker.insert(key, secrets);
    }

    /// Forget a MessageBroker (it was deleted).
    pub fn remove(&self, namespace: &str, broker: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.unlink(&(namespace.to_string(), broker.to_string()));
    }

    /// The MessageBrokers in `namespace` that reference `secret`.
    pub fn brokers(&self, namespace: &str, secret: &str) -> Vec<String> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .by_secret
            .get(&(namespace.to_string(), secret.to_string()))
            .map(|b| b.iter().cloned().collect())
            .unwrap_or_default()
    }
}

impl Inner {
    fn unlink(&mut self, key: &Key) {
        let Some(old) = self.by_broker.remove(key) else {
            return;
        };
        for secret in old {
            let secret_key = (key.0.clone(), secret);
            if let Some(brokers) = self.by_secret.get_mut(&secret_key) {
                brokers.remove(&key.1);
                if brokers.is_empty() {
                    self.by_secret.remove(&secret_key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_follow_updates_and_removals() {
        let index = SecretIndex::default();
        index.update("shop", "bus", vec!["kafka-user".into(), "redis".into()]);
        index.update("shop", "payments", vec!["redis".into()]);
        index.update("other", "bus", vec!["redis".into()]);
        assert_eq!(index.brokers("shop", "redis"), ["bus", "payments"]);
        assert_eq!(index.brokers("shop", "kafka-user"), ["bus"]);
        assert_eq!(index.brokers("other", "redis"), ["bus"]);
        assert!(index.brokers("shop", "unrelated").is_empty());

        // A spec edit that drops a reference drops it from the index.
        index.update("shop", "bus", vec!["redis".into()]);
        assert!(index.brokers("shop", "kafka-user").is_empty());
        assert_eq!(index.brokers("shop", "redis"), ["bus", "payments"]);

        index.remove("shop", "payments");
        assert_eq!(index.brokers("shop", "redis"), ["bus"]);
        index.remove("shop", "bus");
        assert!(index.brokers("shop", "redis").is_empty());
        assert_eq!(
            index.brokers("other", "redis"),
            ["bus"],
            "other namespaces untouched"
        );
    }
}
