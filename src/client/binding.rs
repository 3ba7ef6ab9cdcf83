//! A binding as an app reads it: the entries of the binding Secret, from the directory the
//! Service Binding spec projects it into (one file per key) or from a map.

use std::collections::BTreeMap;
use std::path::Path;

use super::{ClientError, SubscriptionTarget};

/// Prefix of the previous side's entries while a swap drains it.
pub const PREVIOUS: &str = "previous.";

/// The entries of one binding.
#[derive(Clone, PartialEq, Eq)]
pub struct Binding {
    entries: BTreeMap<String, String>,
    /// The entries without the previous side's (`previous.`): what identifies this side.
    own: BTreeMap<String, String>,
    names: BTreeMap<String, String>,
    delivery: BTreeMap<String, Delivery>,
}

/// Delivery settings of one subscription (`delivery.json`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// Deliveries before a message is dead-lettered.
    pub max_delivery_attempts: u32,
}

impl std::fmt::Debug for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Entries hold credentials: only their keys are printed.
        f.debug_struct("Binding")
            .field("keys", &self.entries.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Binding {
    /// Read a projected binding directory. Hidden entries (the kubelet's `..data` and its
    /// timestamped directories) are skipped; the key files are followed through their links.
    pub fn from_dir(dir: &Path) -> Result<Binding, ClientError> {
        let read = std::fs::read_dir(dir)
            .map_err(|e| ClientError::Binding(format!("reading {}: {e}", dir.display())))?;
        let mut entries = BTreeMap::new();
        for entry in read {
            let entry = entry
                .map_err(|e| ClientError::Binding(format!("reading {}: {e}", dir.display())))?;
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            if !path.is_file() {
                continue;
            }
            let value = std::fs::read_to_string(&path)
                .map_err(|e| ClientError::Binding(format!("reading {}: {e}", path.display())))?;
            entries.insert(name, value);
        }
        Binding::from_entries(entries)
    }

    /// Read a binding Secret through the Kubernetes API (for use outside the cluster).
    #[cfg(feature = "secret-watch")]
    pub async fn from_secret(
        client: &kube::Client,
        namespace: &str,
        name: &str,
    ) -> Result<Binding, ClientError> {
        let api: kube::Api<k8s_openapi::api::core::v1::Secret> =
            kube::Api::namespaced(client.clone(), namespace);
        let secret = api
            .get(name)
            .await
            .map_err(|e| ClientError::Binding(format!("Secret {namespace}/{name}: {e}")))?;
        Binding::from_secret_data(secret.data.unwrap_or_default())
            .map_err(|e| ClientError::Binding(format!("Secret {namespace}/{name}: {e}")))
    }

    /// A binding from a Secret's data.
    #[cfg(feature = "secret-watch")]
    pub fn from_secret_data(
        data: BTreeMap<String, k8s_openapi::ByteString>,
    ) -> Result<Binding, ClientError> {
        let mut entries = BTreeMap::new();
        for (k, v) in data {
            let text = String::from_utf8(v.0)
                .map_err(|_| ClientError::Binding(format!("key {k:?} is not UTF-8")))?;
            entries.insert(k, text);
        }
        Binding::from_entries(entries)
    }

    /// A binding from its entries (a Secret's decoded data).
    pub fn from_entries(entries: BTreeMap<String, String>) -> Result<Binding, ClientError> {
        if !entries.contains_key("type") {
            return Err(ClientError::Binding("no `type` entry".into()));
        }
        let names = match entries.get("names.json") {
            Some(text) => serde_json::from_str(text)
                .map_err(|e| ClientError::Binding(format!("names.json: {e}")))?,
            None => BTreeMap::new(),
        };
        let delivery = match entries.get("delivery.json") {
            Some(text) => serde_json::from_str(text)
                .map_err(|e| ClientError::Binding(format!("delivery.json: {e}")))?,
            None => BTreeMap::new(),
        };
        let own = entries
            .iter()
            .filter(|(k, _)| !k.starts_with(PREVIOUS))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(Binding {
            entries,
            own,
            names,
            delivery,
        })
    }

    /// The `type` entry (`kafka`, `redis`, `rabbitmq`, `google-pubsub`, `aws-sqs`).
    pub fn broker_type(&self) -> &str {
        self.entries
            .get("type")
            .map(String::as_str)
            .unwrap_or_default()
    }

    /// The previous side of a swap still draining, from the `previous.` entries.
    pub fn previous(&self) -> Option<Binding> {
        let entries: BTreeMap<String, String> = self
            .entries
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(PREVIOUS).map(|k| (k.to_string(), v.clone())))
            .collect();
        Binding::from_entries(entries).ok()
    }

    /// This side's entries: all but the previous side's.
    pub fn own_entries(&self) -> &BTreeMap<String, String> {
        &self.own
    }

    /// Every entry (they include credentials: never print them).
    pub fn entries(&self) -> &BTreeMap<String, String> {
        &self.entries
    }

    /// An entry.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(String::as_str)
    }

    /// An entry that must be there.
    pub fn require(&self, key: &str) -> Result<&str, ClientError> {
        self.get(key)
            .ok_or_else(|| ClientError::Binding(format!("no `{key}` entry")))
    }

    /// The physical name of a logical topic.
    pub fn topic(&self, topic: &str) -> Result<String, ClientError> {
        self.names
            .get(topic)
            .cloned()
            .ok_or_else(|| ClientError::UnknownName(format!("topic {topic:?}")))
    }

    /// Where a logical subscription delivers.
    pub fn target(
        &self,
        topic: &str,
        subscription: &str,
    ) -> Result<SubscriptionTarget, ClientError> {
        let logical = format!("{topic}/{subscription}");
        let physical_subscription = self
            .names
            .get(&logical)
            .cloned()
            .ok_or_else(|| ClientError::UnknownName(format!("subscription {logical:?}")))?;
        Ok(SubscriptionTarget {
            topic: topic.to_string(),
            subscription: subscription.to_string(),
            physical_topic: self.topic(topic)?,
            physical_subscription,
            dead_letter: self.names.get(&format!("{logical}/dlq")).cloned(),
            max_delivery_attempts: self.delivery.get(&logical).map(|d| d.max_delivery_attempts),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("type".to_string(), "redis".to_string()),
            ("password".to_string(), "s3cret".to_string()),
            (
                "names.json".to_string(),
                r#"{"orders":"shop:bus:orders","orders/billing":"billing","orders/billing/dlq":"shop:bus:orders:dlq"}"#
                    .to_string(),
            ),
            (
                "delivery.json".to_string(),
                r#"{"orders/billing":{"maxDeliveryAttempts":3}}"#.to_string(),
            ),
        ])
    }

    #[test]
    fn names_and_delivery_come_from_the_binding() {
        let b = Binding::from_entries(entries()).expect("binding");
        assert_eq!(b.broker_type(), "redis");
        assert_eq!(b.topic("orders").expect("topic"), "shop:bus:orders");
        let t = b.target("orders", "billing").expect("target");
        assert_eq!(t.physical_subscription, "billing");
        assert_eq!(t.dead_letter.as_deref(), Some("shop:bus:orders:dlq"));
        assert_eq!(t.max_delivery_attempts, Some(3));
        assert!(matches!(b.topic("nope"), Err(ClientError::UnknownName(_))));
        assert!(
            !format!("{b:?}").contains("s3cret"),
            "Debug shows no values"
        );
    }

    #[test]
    fn a_projected_directory_reads_through_the_kubelet_links() {
        let dir = std::env::temp_dir().join(format!("sy-binding-{}", uuid::Uuid::new_v4()));
        let data = dir.join("..2026_12_01_00_00_00.1");
        std::fs::create_dir_all(&data).expect("mkdir");
        for (k, v) in entries() {
            std::fs::write(data.join(&k), v).expect("write");
        }
        std::os::unix::fs::symlink("..2026_12_01_00_00_00.1", dir.join("..data")).expect("link");
        for k in entries().keys() {
            std::os::unix::fs::symlink(format!("..data/{k}"), dir.join(k)).expect("link");
        }
        let b = Binding::from_dir(&dir).expect("binding");
        assert_eq!(b, Binding::from_entries(entries()).expect("binding"));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
