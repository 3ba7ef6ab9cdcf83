//! Google Pub/Sub backend against the emulator (`SWITCHYARD_PUBSUB_ENDPOINT`). The backend
//! is driven through its admin clients; the tests look behind its back, publish and pull
//! through the emulator's REST API.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard::api::conditions::reasons;
use switchyard::api::{BrokerType, DeletionPolicy, EnvSpec, GooglePubSubSpec, TopicSpec};
use switchyard::brokers::plan::{self, Plan, PlanInput};
use switchyard::brokers::{
    self, Action, Backend, BrokerErrorKind, Connector, DesiredState, ObjectKey, ObjectKind, Scope,
};
use switchyard::secrets::ResolvedSecrets;

use crate::support;

const PROJECT: &str = "switchyard-test";
/// "switchyard" in base64, as Pub/Sub carries message data.
const DATA: &str = "c3dpdGNoeWFyZA==";

fn env_spec(endpoint: &str, adopt: bool) -> EnvSpec {
    EnvSpec {
        slug: "dev".into(),
        broker_type: BrokerType::GooglePubSub,
        adopt_existing: adopt,
        kafka: None,
        redis: None,
        rabbitmq: None,
        google_pub_sub: Some(GooglePubSubSpec {
            project_id: PROJECT.into(),
            credentials_secret_ref: None,
            endpoint: Some(endpoint.into()),
            ack_deadline_seconds: Some(20),
        }),
        aws_sqs: None,
        nats_jet_stream: None,
        app_credentials_secret_ref: None,
    }
}

fn topic(name: &str, ordered: bool, subs: &[(&str, Option<i32>)]) -> TopicSpec {
    TopicSpec {
        name: name.into(),
        partitions: None,
        retention: Some("2h".into()),
        ordered,
        subscriptions: support::subscriptions(subs),
    }
}

fn spec_topics() -> Vec<TopicSpec> {
    vec![
        topic("orders", false, &[("billing", None), ("shipping", Some(5))]),
        topic("events", true, &[("archive", None)]),
        topic("audit", false, &[]),
    ]
}

struct Harness {
    endpoint: String,
    env: EnvSpec,
    backend: Arc<dyn Backend>,
    http: reqwest::Client,
    scope: Scope,
    owned: BTreeSet<ObjectKey>,
}

impl Harness {
    async fn new() -> Self {
        let endpoint = support::env_var("SWITCHYARD_PUBSUB_ENDPOINT");
        let env = env_spec(&endpoint, false);
        let backend = brokers::RealConnector::default()
            .connect(&env, &ResolvedSecrets::default())
            .await
            .expect("connect");
        Harness {
            endpoint,
            env,
            backend,
            http: reqwest::Client::new(),
            scope: support::scope("ps"),
            owned: BTreeSet::new(),
        }
    }

    fn desired(&self, topics: &[TopicSpec]) -> DesiredState {
        brokers::desired(&self.scope, &self.env, topics, &Default::default())
            .expect("desired state")
    }

    fn input(&self, policy: DeletionPolicy) -> PlanInput<'_> {
        PlanInput {
            scope: &self.scope,
            owned: &self.owned,
            deletion_policy: policy,
            adopt_existing: self.env.adopt_existing,
            capabilities: brokers::capabilities(BrokerType::GooglePubSub),
        }
    }

    async fn plan(&self, topics: &[TopicSpec], policy: DeletionPolicy) -> Plan {
        let desired = self.desired(topics);
        brokers::observe_and_plan(self.backend.as_ref(), &desired, &self.input(policy))
            .await
            .expect("observe")
            .1
    }

    async fn reconcile(&mut self, topics: &[TopicSpec], policy: DeletionPolicy) -> Plan {
        let desired = self.desired(topics);
        let (observed, plan) =
            brokers::observe_and_plan(self.backend.as_ref(), &desired, &self.input(policy))
                .await
                .expect("observe");
        let outcomes = self.backend.apply(&self.scope, &plan.actions).await;
        assert_eq!(outcomes.len(), plan.actions.len());
        for o in &outcomes {
            assert!(o.result.is_ok(), "{}: {:?}", o.key, o.result);
        }
        self.owned = plan::owned_after(
            &self.owned,
            &self.scope.owner(),
            &desired,
            &observed,
            &outcomes,
            &plan.actions,
        );
        plan
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v1/projects/{PROJECT}/{path}", self.endpoint)
    }

    async fn get(&self, path: &str) -> Option<Value> {
        let resp = self.http.get(self.url(path)).send().await.expect("GET");
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return None;
        }
        assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
        Some(resp.json().await.expect("json"))
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let resp = self
            .http
            .request(method.clone(), self.url(path))
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert!(status.is_success(), "{method} {path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    async fn publish(&self, topic: &str) {
        self.call(
            reqwest::Method::POST,
            &format!("topics/{topic}:publish"),
            json!({ "messages": [{ "data": DATA, "orderingKey": "k" }] }),
        )
        .await;
    }

    /// Pull one message within a bounded time; returns its data.
    async fn pull_one(&self, sub: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            let out = self
                .call(
                    reqwest::Method::POST,
                    &format!("subscriptions/{sub}:pull"),
                    json!({ "maxMessages": 1, "returnImmediately": true }),
                )
                .await;
            if let Some(m) = out["receivedMessages"].as_array().and_then(|a| a.first()) {
                let ack = m["ackId"].as_str().unwrap_or_default().to_string();
                self.call(
                    reqwest::Method::POST,
                    &format!("subscriptions/{sub}:acknowledge"),
                    json!({ "ackIds": [ack] }),
                )
                .await;
                return m["message"]["data"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("no message arrived on {sub} within 15s");
    }
}

#[tokio::test]
async fn pubsub_provisions_delivers_and_second_pass_is_noop() {
    let mut h = Harness::new().await;
    h.backend.check().await.expect("emulator answers");
    let topics = spec_topics();
    let desired = h.desired(&topics);
    let first = h.reconcile(&topics, DeletionPolicy::Retain).await;
    assert_eq!(first.actions.len(), desired.objects.len(), "{first:?}");
    assert!(
        first
            .actions
            .iter()
            .all(|a| matches!(a, Action::Create { .. }))
    );
    let second = h.plan(&topics, DeletionPolicy::Retain).await;
    assert!(second.is_noop(), "second pass must be a no-op: {second:?}");

    let ns = h.scope.namespace.clone();
    let orders = format!("{ns}.bus.orders");
    let shipping = format!("{ns}.bus.orders.shipping");
    let dlq = format!("{shipping}.dlq");
    assert_eq!(desired.names["orders"], orders);
    assert_eq!(desired.names["orders/shipping/dlq"], dlq);

    // Settings as the emulator reports them.
    let topic = h.get(&format!("topics/{orders}")).await.expect("topic");
    assert_eq!(topic["messageRetentionDuration"], "7200s");
    assert_eq!(
        topic["labels"]["switchyard-owner"],
        format!("{ns}_bus").as_str()
    );
    let sub = h
        .get(&format!("subscriptions/{shipping}"))
        .await
        .expect("subscription");
    assert_eq!(sub["ackDeadlineSeconds"], 20);
    assert_eq!(sub["messageRetentionDuration"], "7200s");
    assert_eq!(sub["deadLetterPolicy"]["maxDeliveryAttempts"], 5);
    assert!(
        sub["deadLetterPolicy"]["deadLetterTopic"]
            .as_str()
            .is_some_and(|t| t.ends_with(&format!("/topics/{dlq}")))
    );
    let ordered = h
        .get(&format!("subscriptions/{ns}.bus.events.archive"))
        .await
        .expect("ordered subscription");
    assert_eq!(ordered["enableMessageOrdering"], true);
    assert!(h.get(&format!("subscriptions/{dlq}")).await.is_some());

    // Every subscription of the topic receives the message.
    h.publish(&orders).await;
    assert_eq!(h.pull_one(&format!("{ns}.bus.orders.billing")).await, DATA);
    assert_eq!(h.pull_one(&shipping).await, DATA);
    h.publish(&format!("{ns}.bus.events")).await;
    assert_eq!(h.pull_one(&format!("{ns}.bus.events.archive")).await, DATA);
}

#[tokio::test]
async fn pubsub_repairs_drift_on_resync() {
    let mut h = Harness::new().await;
    let topics = spec_topics();
    h.reconcile(&topics, DeletionPolicy::Retain).await;
    let ns = h.scope.namespace.clone();
    let billing = format!("{ns}.bus.orders.billing");
    let shipping = format!("{ns}.bus.orders.shipping");
    let audit = format!("{ns}.bus.audit");

    // Behind the operator's back: a deleted subscription, a deleted topic, changed settings.
    h.call(
        reqwest::Method::DELETE,
        &format!("subscriptions/{billing}"),
        json!({}),
    )
    .await;
    h.call(
        reqwest::Method::DELETE,
        &format!("topics/{audit}"),
        json!({}),
    )
    .await;
    h.call(
        reqwest::Method::PATCH,
        &format!("subscriptions/{shipping}"),
        json!({
            "subscription": { "ackDeadlineSeconds": 99 },
            "updateMask": "ackDeadlineSeconds"
        }),
    )
    .await;

    let repair = h.reconcile(&topics, DeletionPolicy::Retain).await;
    let summary: BTreeSet<String> = repair
        .actions
        .iter()
        .map(|a| match a {
            Action::Create { object } => format!("create {}", object.key),
            Action::Update { object, changes } => format!(
                "update {} {}",
                object.key,
                changes
                    .iter()
                    .map(|c| c.key.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            other => format!("{other:?}"),
        })
        .collect();
    let expected: BTreeSet<String> = [
        format!("create subscription/{billing}"),
        format!("create topic/{audit}"),
        format!("update subscription/{shipping} ackDeadlineSeconds"),
    ]
    .into_iter()
    .collect();
    assert_eq!(summary, expected);
    let sub = h
        .get(&format!("subscriptions/{shipping}"))
        .await
        .expect("subscription");
    assert_eq!(sub["ackDeadlineSeconds"], 20);
    assert!(h.plan(&topics, DeletionPolicy::Retain).await.is_noop());
}

#[tokio::test]
async fn pubsub_retain_keeps_everything_and_delete_removes_only_what_it_created() {
    let mut h = Harness::new().await;
    let topics = vec![topic("orders", false, &[("billing", Some(5))])];
    h.reconcile(&topics, DeletionPolicy::Retain).await;
    let owned_before = h.owned.clone();
    let ns = h.scope.namespace.clone();
    let orders = format!("{ns}.bus.orders");
    // Someone else's subscription on our topic: never touched.
    let foreign = format!("{ns}.foreign");
    h.call(
        reqwest::Method::PUT,
        &format!("subscriptions/{foreign}"),
        json!({ "topic": format!("projects/{PROJECT}/topics/{orders}") }),
    )
    .await;

    let retain = h.reconcile(&[], DeletionPolicy::Retain).await;
    assert!(retain.actions.is_empty(), "{retain:?}");
    assert_eq!(
        retain.retained.iter().cloned().collect::<BTreeSet<_>>(),
        owned_before
    );
    assert!(h.get(&format!("topics/{orders}")).await.is_some());

    let delete = h.reconcile(&[], DeletionPolicy::Delete).await;
    assert_eq!(delete.actions.len(), owned_before.len(), "{delete:?}");
    // Children before parents.
    assert!(
        matches!(&delete.actions[0], Action::Delete { key } if key.kind == ObjectKind::Subscription)
    );
    assert!(h.get(&format!("topics/{orders}")).await.is_none());
    assert!(
        h.get(&format!("subscriptions/{ns}.bus.orders.billing"))
            .await
            .is_none()
    );
    assert!(
        h.get(&format!("topics/{ns}.bus.orders.billing.dlq"))
            .await
            .is_none()
    );
    assert!(h.get(&format!("subscriptions/{foreign}")).await.is_some());
    assert!(h.owned.is_empty());
    assert!(h.reconcile(&[], DeletionPolicy::Delete).await.is_noop());
}

#[tokio::test]
async fn pubsub_foreign_topic_conflicts_unless_adopted() {
    let mut h = Harness::new().await;
    let topics = vec![topic("audit", false, &[])];
    let name = format!("{}.bus.audit", h.scope.namespace);
    h.call(reqwest::Method::PUT, &format!("topics/{name}"), json!({}))
        .await;
    let p = h.plan(&topics, DeletionPolicy::Retain).await;
    assert!(p.actions.is_empty(), "{p:?}");
    assert_eq!(
        switchyard::failure::refusal_reason(p.refused[0].kind),
        reasons::CONFLICT
    );

    h.env.adopt_existing = true;
    let adopt = h.reconcile(&topics, DeletionPolicy::Retain).await;
    assert!(
        matches!(&adopt.actions[0], Action::Adopt { .. }),
        "{adopt:?}"
    );
    assert!(h.owned.contains(&ObjectKey::new(ObjectKind::Topic, &name)));
    // Adoption also converges the settings.
    let topic = h.get(&format!("topics/{name}")).await.expect("topic");
    assert_eq!(topic["messageRetentionDuration"], "7200s");
    // The emulator cannot update labels (real Pub/Sub can): ownership then rests on the owned
    // set the controller keeps in status.
    h.env.adopt_existing = false;
    assert!(h.plan(&topics, DeletionPolicy::Retain).await.is_noop());
}

#[tokio::test]
async fn pubsub_unreachable_endpoint_is_reported_as_unreachable() {
    let env = env_spec("http://127.0.0.1:9", false);
    let backend = brokers::RealConnector::default()
        .connect(&env, &ResolvedSecrets::default())
        .await
        .expect("connect does not contact the broker");
    let started = Instant::now();
    let err = backend.check().await.expect_err("nothing listens there");
    assert_eq!(err.kind, BrokerErrorKind::Unreachable, "{err:?}");
    assert_eq!(
        switchyard::failure::broker_reason(err.kind),
        reasons::UNREACHABLE
    );
    assert!(started.elapsed() < Duration::from_secs(8));
}

#[tokio::test]
async fn pubsub_malformed_service_account_key_is_refused_without_echoing_it() {
    let mut env = env_spec(&support::env_var("SWITCHYARD_PUBSUB_ENDPOINT"), false);
    if let Some(g) = env.google_pub_sub.as_mut() {
        g.credentials_secret_ref = Some(switchyard::api::SecretKeyRef {
            name: "gcp".into(),
            key: "key.json".into(),
        });
    }
    let mut secrets = ResolvedSecrets::default();
    secrets.insert("gcp", "key.json", "not-json-distinctive-secret");
    let err = match brokers::RealConnector::default()
        .connect(&env, &secrets)
        .await
    {
        Ok(_) => panic!("a malformed key must be refused"),
        Err(e) => e,
    };
    assert_eq!(err.kind, BrokerErrorKind::Rejected);
    assert!(err.message.contains("gcp"), "{}", err.message);
    assert!(
        !err.message.contains("distinctive-secret"),
        "{}",
        err.message
    );
}
