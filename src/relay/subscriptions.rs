//! The subscriptions an app asks for, as Dapr reads them: programmatically from the app's
//! `GET /dapr/subscribe` answer, or declaratively from `Subscription` manifests.

use std::collections::BTreeMap;

use serde::Deserialize;

/// One subscription of the app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    /// The pub/sub (binding) name.
    pub pubsubname: String,
    /// Logical topic.
    pub topic: String,
    /// The app's path deliveries are POSTed to.
    pub route: String,
    /// Where `DROP`ped messages go: a logical topic of the same binding. Without one, the
    /// MessageBroker subscription's own dead-letter destination.
    pub dead_letter_topic: Option<String>,
    /// Subscription metadata (`subscription`: the MessageBroker subscription to consume).
    pub metadata: BTreeMap<String, String>,
}

impl Subscription {
    /// The MessageBroker subscription consumed: metadata `subscription` (or Dapr's
    /// `consumerID`), else the app id, as Dapr's consumer group defaults to the app id.
    pub fn subscription_name<'a>(&'a self, app_id: &'a str) -> &'a str {
        self.metadata
            .get("subscription")
            .or_else(|| self.metadata.get("consumerID"))
            .map(String::as_str)
            .unwrap_or(app_id)
    }
}

/// The routes of a v2 subscription.
#[derive(Deserialize, Default)]
struct Routes {
    #[serde(default)]
    rules: Vec<serde_json::Value>,
    #[serde(default)]
    default: Option<String>,
}

/// One entry as the app or a manifest gives it (both spellings of Dapr's fields).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    #[serde(alias = "pubsubname", alias = "pubsubName")]
    pubsubname: String,
    topic: String,
    #[serde(default)]
    route: Option<String>,
    #[serde(default)]
    routes: Option<Routes>,
    #[serde(default, alias = "deadLetterTopic")]
    dead_letter_topic: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

/// A metadata value as meant: the JavaScript SDK sends each one JSON-encoded (`"\"billing\""`).
fn unquoted(value: String) -> String {
    if value.len() >= 2 && value.starts_with('"') && value.ends_with('"') {
        serde_json::from_str(&value).unwrap_or(value)
    } else {
        value
    }
}

impl Entry {
    fn into_subscription(self) -> Result<Subscription, String> {
        let what = format!("subscription to {}/{}", self.pubsubname, self.topic);
        let routes = self.routes.unwrap_or_default();
        if !routes.rules.is_empty() {
            return Err(format!(
                "{what}: routing rules (routes.rules) are not supported; give one route"
            ));
        }
        let route = self
            .route
            .or(routes.default)
            .ok_or_else(|| format!("{what}: no route"))?;
        let route = if route.starts_with('/') {
            route
        } else {
            format!("/{route}")
        };
        Ok(Subscription {
            pubsubname: self.pubsubname,
            topic: self.topic,
            route,
            dead_letter_topic: self.dead_letter_topic.filter(|t| !t.is_empty()),
            metadata: self
                .metadata
                .into_iter()
                .map(|(k, v)| (k, unquoted(v)))
                .collect(),
        })
    }
}

/// The subscriptions of an app's `GET /dapr/subscribe` answer (a JSON array). Entries that
/// cannot be served are returned as errors, the rest are kept.
pub fn from_app(body: &[u8]) -> Result<(Vec<Subscription>, Vec<String>), String> {
    let entries: Vec<Entry> = serde_json::from_slice(body)
        .map_err(|e| format!("GET /dapr/subscribe did not answer a subscription list: {e}"))?;
    Ok(split(entries.into_iter().map(Entry::into_subscription)))
}

/// A declarative `Subscription` manifest (Dapr's `dapr.io/v1alpha1` or `v2alpha1`).
#[derive(Deserialize)]
struct Manifest {
    kind: String,
    spec: Entry,
    #[serde(default)]
    scopes: Vec<String>,
}

/// The subscriptions of a file of `Subscription` manifests (multi-document YAML) that apply to
/// `app_id` (no `scopes`, or `scopes` naming it).
pub fn from_manifests(text: &str, app_id: &str) -> Result<Vec<Subscription>, String> {
    let mut out = Vec::new();
    for doc in serde_norway::Deserializer::from_str(text) {
        let value = serde_norway::Value::deserialize(doc).map_err(|e| e.to_string())?;
        if value.is_null() {
            continue;
        }
        let m: Manifest = serde_norway::from_value(value).map_err(|e| e.to_string())?;
        if m.kind != "Subscription" {
            return Err(format!(
                "kind {:?}: only Subscription manifests are read",
                m.kind
            ));
        }
        if !m.scopes.is_empty() && !m.scopes.iter().any(|s| s == app_id) {
            continue;
        }
        out.push(m.spec.into_subscription()?);
    }
    Ok(out)
}

fn split(
    results: impl Iterator<Item = Result<Subscription, String>>,
) -> (Vec<Subscription>, Vec<String>) {
    let (mut ok, mut errors) = (Vec::new(), Vec::new());
    for r in results {
        match r {
            Ok(s) => ok.push(s),
            Err(e) => errors.push(e),
        }
    }
    (ok, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programmatic_subscriptions_in_both_shapes() {
        let body = br#"[
            {"pubsubname":"bus","topic":"orders","route":"orders-handler","metadata":{"subscription":"\"billing\""}},
            {"pubsubname":"bus","topic":"jobs","routes":{"default":"/jobs"},"deadLetterTopic":"poison"},
            {"pubsubname":"bus","topic":"x","routes":{"rules":[{"match":"event.type == 'a'","path":"/a"}]}}
        ]"#;
        let (subs, errors) = from_app(body).expect("list");
        assert_eq!(subs.len(), 2);
        assert_eq!(subs[0].route, "/orders-handler");
        assert_eq!(subs[0].subscription_name("app"), "billing");
        assert_eq!(subs[1].route, "/jobs");
        assert_eq!(subs[1].dead_letter_topic.as_deref(), Some("poison"));
        assert_eq!(subs[1].subscription_name("app"), "app");
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains("routing rules"), "{errors:?}");
        assert!(from_app(b"{}").is_err());
    }

    #[test]
    fn declarative_subscriptions_apply_to_their_scopes() {
        let text = "apiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata: {name: a}\nspec:\n  pubsubname: bus\n  topic: orders\n  routes: {default: /orders}\n  metadata: {subscription: billing}\nscopes: [checkout]\n---\napiVersion: dapr.io/v1alpha1\nkind: Subscription\nmetadata: {name: b}\nspec: {pubsubname: bus, topic: jobs, route: /jobs}\nscopes: [other]\n";
        let subs = from_manifests(text, "checkout").expect("manifests");
        assert_eq!(subs.len(), 1);
        assert_eq!(subs[0].topic, "orders");
        assert_eq!(subs[0].subscription_name("checkout"), "billing");
        let err = from_manifests(
            "kind: Component\nspec: {pubsubname: a, topic: b, route: /c}\n",
            "x",
        )
        .expect_err("not a Subscription");
        assert!(err.contains("Component"), "{err}");
    }
}
