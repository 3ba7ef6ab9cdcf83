//! Which MessageBroker owns which broker object, across every MessageBroker this instance
//! watches, kept up to date from the MessageBroker watch.
//!
//! Most brokers carry Switchyard's owner marker on the object itself (RabbitMQ arguments, Pub/Sub
//! labels, SQS/SNS tags, a Redis owner hash). Kafka cannot: a topic's configs are a closed set
//! the broker validates (an unknown key such as `switchyard.owner` fails with
//! `InvalidConfigurationException`), and topics have no labels or tags; a topic ID names an
//! incarnation, not an owner. Rather than add a second source of truth on the cluster (a
//! registry topic every operator instance must be allowed to write), the owner record of a
//! topic is the `status.owned` list of the MessageBroker that created or adopted it, which the
//! controller already keeps. This index reads those lists from the watch, and an observation
//! of an object without a marker reports the MessageBroker that lists it as its owner, so the
//! plan refuses it as a Conflict even under `adoptExisting`.
//!
//! Objects are keyed by the endpoint identity of the env that owns them, so two clusters with
//! one topic name do not meet. A deleted MessageBroker's claims go with it (under Retain its
//! objects are released and may be adopted).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use crate::api::{EnvSpec, MessageBrokerStatus};
use crate::brokers::{ObjectKey, Observed};

/// `(endpoint identity as JSON text, object key)`.
type Claim = (String, String);

/// Object → owning MessageBroker (`namespace/name`).
#[derive(Default)]
pub struct OwnerIndex {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_object: HashMap<Claim, String>,
    by_broker: HashMap<String, Vec<Claim>>,
}

/// The claims a MessageBroker's status makes: what each env's serving side owns, and what the
/// old side of a swap still owns.
pub fn claims(status: &MessageBrokerStatus) -> Vec<Claim> {
    let mut out = Vec::new();
    let identity = |v: &serde_json::Value| {
        serde_json::from_value::<EnvSpec>(v.clone())
            .ok()
            .map(|e| super::env::endpoint_identity(&e).to_string())
    };
    for env in &status.envs {
        if let Some(id) = env.active.as_ref().and_then(identity) {
            out.extend(env.owned.iter().map(|k| (id.clone(), k.clone())));
        }
        if let Some(swap) = &env.swap
            && let Some(id) = swap.old.as_ref().and_then(identity)
        {
            out.extend(swap.old_owned.iter().map(|k| (id.clone(), k.clone())));
        }
    }
    out.sort();
    out.dedup();
    out
}

impl OwnerIndex {
    /// Record what a MessageBroker (`namespace/name`) owns now, replacing its earlier claims.
    pub fn update(&self, broker: &str, claims: Vec<Claim>) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.by_broker.get(broker) == Some(&claims) {
            return;
        }
        inner.unlink(broker);
        for c in &claims {
            inner.by_object.insert(c.clone(), broker.to_string());
        }
        inner.by_broker.insert(broker.to_string(), claims);
    }

    /// Forget a MessageBroker (it was deleted).
    pub fn remove(&self, broker: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.unlink(broker);
    }

    /// Fill in the owner of observed objects that carry no marker, from the claims of
    /// MessageBrokers other than `me` on the same endpoint.
    pub fn mark(&self, identity: &serde_json::Value, me: &str, observed: &mut Observed) {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.by_object.is_empty() {
            return;
        }
        let id = identity.to_string();
        let owners: BTreeMap<ObjectKey, String> = observed
            .objects
            .iter()
            .filter(|(_, o)| o.owner.is_none())
            .filter_map(|(k, _)| {
                let owner = inner.by_object.get(&(id.clone(), k.to_string()))?;
                (owner != me).then(|| (k.clone(), owner.clone()))
            })
            .collect();
        drop(inner);
        for (k, owner) in owners {
            if let Some(o) = observed.objects.get_mut(&k) {
                o.owner = Some(owner);
            }
        }
    }
}

impl Inner {
    fn unlink(&mut self, broker: &str) {
        for c in self.by_broker.remove(broker).unwrap_or_default() {
            if self.by_object.get(&c).is_some_and(|b| b == broker) {
                self.by_object.remove(&c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::EnvStatus;
    use crate::brokers::{ObjectKind, ObservedObject};

    fn kafka(servers: &str) -> serde_json::Value {
        serde_json::json!({"slug": "prd", "type": "Kafka", "kafka": {"bootstrapServers": [servers]}})
    }

    fn status(servers: &str, owned: &[&str]) -> MessageBrokerStatus {
        MessageBrokerStatus {
            envs: vec![EnvStatus {
                slug: "prd".into(),
                active: Some(kafka(servers)),
                owned: owned.iter().map(|s| (*s).to_string()).collect(),
                ..EnvStatus::default()
            }],
            ..MessageBrokerStatus::default()
        }
    }

    fn observed(names: &[&str]) -> Observed {
        let mut o = Observed::default();
        for n in names {
            o.objects.insert(
                ObjectKey::new(ObjectKind::Topic, *n),
                ObservedObject::default(),
            );
        }
        o
    }

    fn identity(servers: &str) -> serde_json::Value {
        let env: EnvSpec = serde_json::from_value(kafka(servers)).expect("env");
        super::super::env::endpoint_identity(&env)
    }

    fn owner(o: &Observed, name: &str) -> Option<String> {
        o.objects[&ObjectKey::new(ObjectKind::Topic, name)]
            .owner
            .clone()
    }

    #[test]
    fn another_brokers_topic_is_reported_as_its_own_on_the_same_cluster_only() {
        let index = OwnerIndex::default();
        index.update("shop/orders", claims(&status("k1:9092", &["topic/a"])));

        let mut o = observed(&["a", "b"]);
        index.mark(&identity("k1:9092"), "shop/billing", &mut o);
        assert_eq!(owner(&o, "a").as_deref(), Some("shop/orders"));
        assert_eq!(owner(&o, "b"), None, "nobody claims b");

        // The claimant itself sees no foreign owner, nor does another cluster.
        let mut o = observed(&["a"]);
        index.mark(&identity("k1:9092"), "shop/orders", &mut o);
        assert_eq!(owner(&o, "a"), None);
        let mut o = observed(&["a"]);
        index.mark(&identity("k2:9092"), "shop/billing", &mut o);
        assert_eq!(owner(&o, "a"), None);
    }

    #[test]
    fn claims_follow_updates_and_deletion() {
        let index = OwnerIndex::default();
        index.update("shop/orders", claims(&status("k1:9092", &["topic/a"])));
        index.update("shop/orders", claims(&status("k1:9092", &["topic/b"])));
        let mut o = observed(&["a", "b"]);
        index.mark(&identity("k1:9092"), "shop/billing", &mut o);
        assert_eq!(owner(&o, "a"), None, "released by the update");
        assert_eq!(owner(&o, "b").as_deref(), Some("shop/orders"));

        index.remove("shop/orders");
        let mut o = observed(&["b"]);
        index.mark(&identity("k1:9092"), "shop/billing", &mut o);
        assert_eq!(
            owner(&o, "b"),
            None,
            "a deleted MessageBroker claims nothing"
        );
    }

    #[test]
    fn a_marker_on_the_object_wins() {
        let index = OwnerIndex::default();
        index.update("shop/orders", claims(&status("k1:9092", &["topic/a"])));
        let mut o = observed(&["a"]);
        if let Some(x) = o.objects.values_mut().next() {
            x.owner = Some("shop/marked".into());
        }
        index.mark(&identity("k1:9092"), "shop/billing", &mut o);
        assert_eq!(owner(&o, "a").as_deref(), Some("shop/marked"));
    }
}
