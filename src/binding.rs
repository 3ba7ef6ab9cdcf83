//! The per-environment connection Secret apps read, following the Service Binding spec:
//! `type`, `provider`, `host`, `port`, `uri`, `username`, `password`, plus the map of logical
//! topics and subscriptions to broker-side names.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{ObjectMeta, Patch, PatchParams};
use kube::{Api, Client};
use sha2::{Digest, Sha256};

use crate::api::{BrokerType, TopicSpec};
use crate::brokers::ConnectionInfo;
use crate::error::Error;

/// Field manager for everything Switchyard writes.
pub const MANAGER: &str = "switchyard";
/// Annotation holding the content hash, so workloads can roll when it changes.
pub const HASH_ANNOTATION: &str = "switchyard.dev/content-hash";
/// Label marking Secrets Switchyard manages.
pub const MANAGED_BY_LABEL: (&str, &str) = ("app.kubernetes.io/managed-by", "switchyard");

/// The Service Binding `type` entry for a broker type.
pub fn binding_type(t: BrokerType) -> &'static str {
    crate::brokers::driver(t).binding_type()
}

/// The binding Secret's name: `<broker>-<slug>`.
pub fn secret_name(broker: &str, slug: &str) -> String {
    format!("{broker}-{slug}")
}

/// The binding's entries, ready to write.
#[derive(Clone, PartialEq, Eq)]
pub struct BindingContent {
    /// Secret entries.
    pub data: BTreeMap<String, String>,
    /// Content hash (16 hex characters).
    pub hash: String,
}

impl std::fmt::Debug for BindingContent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BindingContent")
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .field("hash", &self.hash)
            .finish()
    }
}

/// The delivery settings clients apply per subscription (`delivery.json`): the
/// `maxDeliveryAttempts` of subscriptions with a dead letter, keyed `topic/subscription`.
pub fn delivery(topics: &[TopicSpec]) -> BTreeMap<String, crate::client::binding::Delivery> {
    topics
        .iter()
        .flat_map(|t| {
            t.subscriptions.iter().filter_map(move |s| {
                let dl = s.dead_letter.as_ref()?;
                Some((
                    format!("{}/{}", t.name, s.name),
                    crate::client::binding::Delivery {
                        max_delivery_attempts: u32::try_from(dl.max_delivery_attempts).unwrap_or(1),
                    },
                ))
            })
        })
        .collect()
}

/// Build the entries for one env.
pub fn content(
    broker_type: BrokerType,
    info: &ConnectionInfo,
    names: &BTreeMap<String, String>,
    topics: &[TopicSpec],
) -> BindingContent {
    let mut data = BTreeMap::new();
    data.insert("type".to_string(), binding_type(broker_type).to_string());
    data.insert("provider".to_string(), info.provider.clone());
    if let Some(h) = &info.host {
        data.insert("host".into(), h.clone());
    }
    if let Some(p) = info.port {
        data.insert("port".into(), p.to_string());
    }
    if let Some(u) = &info.uri {
        data.insert("uri".into(), u.clone());
    }
    if let Some(u) = &info.username {
        data.insert("username".into(), u.expose().to_string());
    }
    if let Some(p) = &info.password {
        data.insert("password".into(), p.expose().to_string());
    }
    for (k, v) in &info.extra {
        data.insert(k.clone(), v.clone());
    }
    for (k, v) in &info.credentials {
        data.insert(k.clone(), v.expose().to_string());
    }
    for (logical, physical) in names {
        let mut parts = logical.split('/');
        let key = match (parts.next(), parts.next(), parts.next()) {
            (Some(t), None, None) => format!("topic.{t}"),
            (Some(t), Some(s), None) => format!("subscription.{t}.{s}"),
            (Some(t), Some(s), Some(_)) => format!("deadletter.{t}.{s}"),
            _ => continue,
        };
        data.insert(key, physical.clone());
    }
    data.insert(
        "names.json".into(),
        serde_json::to_string(names).unwrap_or_else(|_| "{}".to_string()),
    );
    let delivery = delivery(topics);
    if !delivery.is_empty() {
        data.insert(
            "delivery.json".into(),
            serde_json::to_string(&delivery).unwrap_or_else(|_| "{}".to_string()),
        );
    }
    BindingContent::new(data)
}

pub use crate::client::binding::PREVIOUS;

impl BindingContent {
    fn new(data: BTreeMap<String, String>) -> Self {
        let mut h = Sha256::new();
        for (k, v) in &data {
            h.update(k.as_bytes());
            h.update([0]);
            h.update(v.as_bytes());
            h.update([0]);
        }
        let hash = hex::encode(h.finalize())[..16].to_string();
        BindingContent { data, hash }
    }

    /// This content plus the previous side's entries under `previous.` (its `type`, connection
    /// entries, `names.json`, …): from the flip until the old side is retired, clients publish
    /// to this side and drain the previous one.
    pub fn with_previous(mut self, previous: &BindingContent) -> Self {
        for (k, v) in &previous.data {
            self.data.insert(format!("{PREVIOUS}{k}"), v.clone());
        }
        BindingContent::new(self.data)
    }
}

/// Write the binding Secret with server-side apply (one request, unless its stored type differs).
pub async fn write(
    client: &Client,
    namespace: &str,
    name: &str,
    owner: OwnerReference,
    labels: BTreeMap<String, String>,
    broker_type: BrokerType,
    content: &BindingContent,
) -> Result<(), Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut all_labels = labels;
    all_labels.insert(MANAGED_BY_LABEL.0.into(), MANAGED_BY_LABEL.1.into());
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(all_labels),
            annotations: Some(BTreeMap::from([(
                HASH_ANNOTATION.to_string(),
                content.hash.clone(),
            )])),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        type_: Some(format!("servicebinding.io/{}", binding_type(broker_type))),
        data: Some(
            content
                .data
                .iter()
                .map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes())))
                .collect(),
        ),
        ..Default::default()
    };
    let mut value =
        serde_json::to_value(&secret).map_err(|e| Error::Serialization(e.to_string()))?;
    value["apiVersion"] = "v1".into();
    value["kind"] = "Secret".into();
    let params = PatchParams::apply(MANAGER).force();
    match api.patch(name, &params, &Patch::Apply(&value)).await {
        Ok(_) => Ok(()),
        // A Secret's type cannot change; after a swap the entries (including `type`) describe
        // the new broker while the Secret keeps the type it was created with. The apply must
        // then carry the stored type: leaving it out would let server-side apply drop the field
        // this manager owns, default it to Opaque, and be refused as an immutable change too.
        // Read only on this refusal, so writing a new binding costs one request.
        Err(kube::Error::Api(s)) if s.code == 422 => {
            let existing = api
                .get_opt(name)
                .await
                .map_err(Error::kube("get binding Secret"))?;
            let (Some(existing), Some(obj)) = (existing, value.as_object_mut()) else {
                return Err(Error::kube("apply binding Secret")(kube::Error::Api(s)));
            };
            match existing.type_ {
                Some(t) => obj.insert("type".into(), t.into()),
                None => obj.remove("type"),
            };
            api.patch(name, &params, &Patch::Apply(&value))
                .await
                .map_err(Error::kube("apply binding Secret keeping its type"))?;
            Ok(())
        }
        Err(e) => Err(Error::kube("apply binding Secret")(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::SecretValue;

    #[test]
    fn content_has_service_binding_keys_and_names() {
        let info = ConnectionInfo {
            provider: "apache-kafka".into(),
            host: Some("k".into()),
            port: Some(9092),
            uri: Some("k:9092".into()),
            username: Some(SecretValue::new("u")),
            password: Some(SecretValue::new("p")),
            extra: BTreeMap::new(),
            credentials: BTreeMap::new(),
        };
        let names = BTreeMap::from([
            ("orders".to_string(), "ns.bus.orders".to_string()),
            (
                "orders/billing".to_string(),
                "ns.bus.orders.billing".to_string(),
            ),
        ]);
        let c = content(BrokerType::Kafka, &info, &names, &[]);
        assert_eq!(c.data["type"], "kafka");
        assert_eq!(c.data["port"], "9092");
        assert_eq!(c.data["password"], "p");
        assert_eq!(c.data["topic.orders"], "ns.bus.orders");
        assert_eq!(
            c.data["subscription.orders.billing"],
            "ns.bus.orders.billing"
        );
        assert!(
            !format!("{c:?}").contains("\"p\""),
            "Debug must not print values"
        );
        let again = content(BrokerType::Kafka, &info, &names, &[]);
        assert_eq!(c.hash, again.hash);
        let other = content(BrokerType::Redis, &info, &names, &[]);
        assert_ne!(c.hash, other.hash);
    }
}
