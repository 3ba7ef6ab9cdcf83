//! AWS SQS + SNS backend against moto (`SWITCHYARD_AWS_ENDPOINT`). moto is shared by tests
//! running in parallel: every test uses its own namespace, so names never collide, and nothing
//! resets the server.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;
use switchyard::api::conditions::reasons;
use switchyard::api::{
    AwsCredentialsSecretRef, AwsSqsSpec, BrokerType, DeletionPolicy, EnvSpec, TopicSpec,
};
use switchyard::brokers::plan::{self, Plan, PlanInput};
use switchyard::brokers::{
    self, Action, Backend, BrokerErrorKind, Connector, DesiredState, ObjectKey, ObjectKind, Scope,
};
use switchyard::secrets::ResolvedSecrets;

use crate::support;

const SECRET: &str = "aws-creds";

fn env_spec(endpoint: &str, adopt: bool) -> EnvSpec {
    EnvSpec {
        slug: "dev".into(),
        broker_type: BrokerType::AwsSqs,
        adopt_existing: adopt,
        kafka: None,
        redis: None,
        rabbitmq: None,
        google_pub_sub: None,
        nats_jet_stream: None,
        app_credentials_secret_ref: None,
        aws_sqs: Some(AwsSqsSpec {
            region: support::env_var("AWS_REGION"),
            credentials_secret_ref: Some(AwsCredentialsSecretRef {
                name: SECRET.into(),
                access_key_id_key: "accessKeyId".into(),
                secret_access_key_key: "secretAccessKey".into(),
                session_token_key: "sessionToken".into(),
            }),
            endpoint: Some(endpoint.into()),
        }),
    }
}

fn secrets() -> ResolvedSecrets {
    let mut s = ResolvedSecrets::default();
    s.insert(SECRET, "accessKeyId", support::env_var("AWS_ACCESS_KEY_ID"));
    s.insert(
        SECRET,
        "secretAccessKey",
        support::env_var("AWS_SECRET_ACCESS_KEY"),
    );
    s
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

/// The backend under test, plus plain SDK clients to look behind its back.
struct Harness {
    env: EnvSpec,
    backend: Arc<dyn Backend>,
    sqs: aws_sdk_sqs::Client,
    sns: aws_sdk_sns::Client,
    scope: Scope,
    owned: BTreeSet<ObjectKey>,
}

impl Harness {
    async fn new() -> Self {
        let endpoint = support::env_var("SWITCHYARD_AWS_ENDPOINT");
        let env = env_spec(&endpoint, false);
        let backend = brokers::RealConnector::default()
            .connect(&env, &secrets())
            .await
            .expect("connect");
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&endpoint)
            .region(aws_config::Region::new(support::env_var("AWS_REGION")))
            .load()
            .await;
        Harness {
            env,
            backend,
            sqs: aws_sdk_sqs::Client::new(&config),
            sns: aws_sdk_sns::Client::new(&config),
            scope: support::scope("sqs"),
            owned: BTreeSet::new(),
        }
    }

    fn desired(&self, topics: &[TopicSpec]) -> DesiredState {
        brokers::desired(&self.scope, &self.env, topics, &Default::default())
            .expect("desired state")
    }

    async fn plan(&self, topics: &[TopicSpec], policy: DeletionPolicy) -> Plan {
        let desired = self.desired(topics);
        let input = PlanInput {
            scope: &self.scope,
            owned: &self.owned,
            deletion_policy: policy,
            adopt_existing: self.env.adopt_existing,
            capabilities: brokers::capabilities(BrokerType::AwsSqs),
        };
        brokers::observe_and_plan(self.backend.as_ref(), &desired, &input)
            .await
            .expect("observe")
            .1
    }

    /// One reconcile pass; every action must succeed. Returns the plan it applied.
    async fn reconcile(&mut self, topics: &[TopicSpec], policy: DeletionPolicy) -> Plan {
        let desired = self.desired(topics);
        let input = PlanInput {
            scope: &self.scope,
            owned: &self.owned,
            deletion_policy: policy,
            adopt_existing: self.env.adopt_existing,
            capabilities: brokers::capabilities(BrokerType::AwsSqs),
        };
        let (observed, plan) = brokers::observe_and_plan(self.backend.as_ref(), &desired, &input)
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

    async fn queue_url(&self, name: &str) -> Option<String> {
        self.sqs
            .get_queue_url()
            .queue_name(name)
            .send()
            .await
            .ok()
            .and_then(|o| o.queue_url().map(str::to_string))
    }

    async fn queue_attr(&self, name: &str, attr: QueueAttributeName) -> Option<String> {
        let url = self.queue_url(name).await?;
        let out = self
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .expect("attributes");
        out.attributes().and_then(|a| a.get(&attr).cloned())
    }

    async fn topic_arn(&self, name: &str) -> String {
        let mut token = None;
        loop {
            let page = self
                .sns
                .list_topics()
                .set_next_token(token)
                .send()
                .await
                .expect("list topics");
            if let Some(arn) = page
                .topics()
                .iter()
                .filter_map(|t| t.topic_arn())
                .find(|a| a.ends_with(&format!(":{name}")))
            {
                return arn.to_string();
            }
            token = page.next_token().map(str::to_string);
            assert!(token.is_some(), "topic {name} not found");
        }
    }

    /// Receive one message from a queue within a bounded time; returns its body.
    async fn receive_one(&self, queue: &str) -> String {
        let url = self.queue_url(queue).await.expect("queue exists");
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            let out = self
                .sqs
                .receive_message()
                .queue_url(&url)
                .wait_time_seconds(1)
                .max_number_of_messages(1)
                .send()
                .await
                .expect("receive");
            if let Some(m) = out.messages().first() {
                if let Some(handle) = m.receipt_handle() {
                    self.sqs
                        .delete_message()
                        .queue_url(&url)
                        .receipt_handle(handle)
                        .send()
                        .await
                        .expect("delete message");
                }
                return m.body().unwrap_or_default().to_string();
            }
        }
        panic!("no message arrived on {queue} within 15s");
    }
}

fn spec_topics() -> Vec<TopicSpec> {
    vec![
        topic("orders", false, &[("billing", None), ("shipping", Some(5))]),
        topic("audit", false, &[]),
        topic("events", true, &[("archive", Some(7))]),
    ]
}

#[tokio::test]
async fn sqs_provisions_fans_out_and_second_pass_is_noop() {
    let mut h = Harness::new().await;
    h.backend.check().await.expect("moto answers");
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
    assert_eq!(h.owned.len(), desired.objects.len());

    let second = h.plan(&topics, DeletionPolicy::Retain).await;
    assert!(second.is_noop(), "second pass must be a no-op: {second:?}");

    let ns = &h.scope.namespace;
    let billing = format!("{ns}_bus_orders_billing");
    let shipping = format!("{ns}_bus_orders_shipping");
    let dlq = format!("{ns}_bus_orders_shipping_dlq");
    assert_eq!(desired.names["orders/shipping"], shipping);
    assert_eq!(desired.names["orders/shipping/dlq"], dlq);
    assert_eq!(desired.names["audit"], format!("{ns}_bus_audit"));
    assert_eq!(desired.names["events"], format!("{ns}_bus_events.fifo"));

    // Broker-side settings as DESIGN.md maps them.
    let topic_arn = h.topic_arn(&format!("{ns}_bus_orders")).await;
    let redrive = h
        .queue_attr(&shipping, QueueAttributeName::RedrivePolicy)
        .await
        .expect("redrive policy");
    assert!(redrive.contains(&dlq) && redrive.contains('5'), "{redrive}");
    let policy = h
        .queue_attr(&billing, QueueAttributeName::Policy)
        .await
        .expect("queue policy");
    assert!(
        policy.contains(&topic_arn) && policy.contains("sqs:SendMessage"),
        "{policy}"
    );
    assert_eq!(
        h.queue_attr(&billing, QueueAttributeName::MessageRetentionPeriod)
            .await
            .as_deref(),
        Some("7200")
    );
    assert!(h.queue_url(&format!("{ns}_bus_audit")).await.is_some());
    let tags = h
        .sqs
        .list_queue_tags()
        .queue_url(h.queue_url(&billing).await.expect("url"))
        .send()
        .await
        .expect("tags");
    assert_eq!(
        tags.tags().and_then(|t| t.get("switchyard-owner")).cloned(),
        Some(h.scope.owner())
    );

    // Fan-out: one publish reaches every subscription queue, raw.
    h.sns
        .publish()
        .topic_arn(&topic_arn)
        .message("order-42")
        .send()
        .await
        .expect("publish");
    assert_eq!(h.receive_one(&billing).await, "order-42");
    assert_eq!(h.receive_one(&shipping).await, "order-42");

    // FIFO fan-out.
    let fifo_arn = h.topic_arn(&format!("{ns}_bus_events.fifo")).await;
    h.sns
        .publish()
        .topic_arn(&fifo_arn)
        .message("event-1")
        .message_group_id("g")
        .send()
        .await
        .expect("publish fifo");
    assert_eq!(
        h.receive_one(&format!("{ns}_bus_events_archive.fifo"))
            .await,
        "event-1"
    );
}

#[tokio::test]
async fn sqs_repairs_drift_on_resync() {
    let mut h = Harness::new().await;
    let topics = spec_topics();
    h.reconcile(&topics, DeletionPolicy::Retain).await;
    let ns = h.scope.namespace.clone();
    let billing = format!("{ns}_bus_orders_billing");
    let shipping = format!("{ns}_bus_orders_shipping");
    let audit = format!("{ns}_bus_audit");

    // Behind the operator's back.
    let billing_url = h.queue_url(&billing).await.expect("billing");
    h.sqs
        .set_queue_attributes()
        .queue_url(&billing_url)
        .attributes(QueueAttributeName::MessageRetentionPeriod, "60")
        .attributes(QueueAttributeName::Policy, "")
        .send()
        .await
        .expect("tamper billing");
    let shipping_url = h.queue_url(&shipping).await.expect("shipping");
    h.sqs
        .set_queue_attributes()
        .queue_url(&shipping_url)
        .attributes(QueueAttributeName::RedrivePolicy, "")
        .send()
        .await
        .expect("tamper shipping");
    h.sqs
        .delete_queue()
        .queue_url(h.queue_url(&audit).await.expect("audit"))
        .send()
        .await
        .expect("delete audit");
    let topic_arn = h.topic_arn(&format!("{ns}_bus_orders")).await;
    let subs = h
        .sns
        .list_subscriptions_by_topic()
        .topic_arn(&topic_arn)
        .send()
        .await
        .expect("subs");
    let billing_sub = subs
        .subscriptions()
        .iter()
        .find(|s| {
            s.endpoint()
                .is_some_and(|e| e.ends_with(&format!(":{billing}")))
        })
        .and_then(|s| s.subscription_arn())
        .expect("billing subscription")
        .to_string();
    h.sns
        .unsubscribe()
        .subscription_arn(billing_sub)
        .send()
        .await
        .expect("unsubscribe");

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
        format!("create queue/{audit}"),
        format!("create subscription/{ns}_bus_orders/{billing}"),
        format!("update queue/{billing} MessageRetentionPeriod,Policy"),
        format!("update queue/{shipping} RedrivePolicy"),
    ]
    .into_iter()
    .collect();
    // moto drops a queue's Policy when its RedrivePolicy is cleared; the repair then restores
    // both, which is right too.
    let summary: BTreeSet<String> = summary
        .into_iter()
        .map(|s| s.replace("shipping Policy,RedrivePolicy", "shipping RedrivePolicy"))
        .collect();
    assert_eq!(summary, expected);
    assert!(
        h.plan(&topics, DeletionPolicy::Retain).await.is_noop(),
        "drift repaired"
    );
    // The repaired subscription delivers again.
    h.sns
        .publish()
        .topic_arn(&topic_arn)
        .message("after-repair")
        .send()
        .await
        .expect("publish");
    assert_eq!(h.receive_one(&billing).await, "after-repair");
}

#[tokio::test]
async fn sqs_retain_keeps_everything_and_delete_spares_queues_holding_messages() {
    let mut h = Harness::new().await;
    let topics = vec![
        topic("orders", false, &[("billing", None), ("shipping", Some(5))]),
        topic("audit", false, &[]),
    ];
    h.reconcile(&topics, DeletionPolicy::Retain).await;
    let owned_before = h.owned.clone();
    let ns = h.scope.namespace.clone();
    let billing = format!("{ns}_bus_orders_billing");

    // Retain: nothing is deleted, everything is reported as retained.
    let retain = h.reconcile(&[], DeletionPolicy::Retain).await;
    assert!(retain.actions.is_empty(), "{retain:?}");
    assert_eq!(
        retain.retained.iter().cloned().collect::<BTreeSet<_>>(),
        owned_before
    );
    assert!(h.queue_url(&billing).await.is_some());
    assert_eq!(h.owned, owned_before);

    // Delete, with one queue holding a message: that one is blocked, the rest goes.
    let url = h.queue_url(&billing).await.expect("billing");
    h.sqs
        .send_message()
        .queue_url(&url)
        .message_body("pending")
        .send()
        .await
        .expect("send");
    let delete = h.reconcile(&[], DeletionPolicy::Delete).await;
    assert_eq!(delete.refused.len(), 1, "{delete:?}");
    assert_eq!(
        switchyard::failure::refusal_reason(delete.refused[0].kind),
        reasons::RETIRE_BLOCKED
    );
    assert_eq!(
        delete.refused[0].key,
        ObjectKey::new(ObjectKind::Queue, &billing)
    );
    assert!(delete.refused[0].is_transient());
    assert!(
        h.queue_url(&billing).await.is_some(),
        "non-empty queue kept"
    );
    assert!(
        h.queue_url(&format!("{ns}_bus_orders_shipping"))
            .await
            .is_none()
    );
    assert!(
        h.queue_url(&format!("{ns}_bus_orders_shipping_dlq"))
            .await
            .is_none()
    );
    assert!(h.queue_url(&format!("{ns}_bus_audit")).await.is_none());
    assert_eq!(
        h.owned,
        BTreeSet::from([ObjectKey::new(ObjectKind::Queue, &billing)])
    );

    // Drained: now it goes too.
    assert_eq!(h.receive_one(&billing).await, "pending");
    let last = h.reconcile(&[], DeletionPolicy::Delete).await;
    assert_eq!(
        last.actions,
        vec![Action::Delete {
            key: ObjectKey::new(ObjectKind::Queue, &billing)
        }]
    );
    assert!(h.queue_url(&billing).await.is_none());
    assert!(h.owned.is_empty());
}

#[tokio::test]
async fn sqs_foreign_queue_conflicts_unless_adopted() {
    let mut h = Harness::new().await;
    let topics = vec![topic("audit", false, &[])];
    let name = format!("{}_bus_audit", h.scope.namespace);
    h.sqs
        .create_queue()
        .queue_name(&name)
        .send()
        .await
        .expect("foreign queue");

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
    let tags = h
        .sqs
        .list_queue_tags()
        .queue_url(h.queue_url(&name).await.expect("url"))
        .send()
        .await
        .expect("tags");
    assert_eq!(
        tags.tags().and_then(|t| t.get("switchyard-owner")).cloned(),
        Some(h.scope.owner())
    );
    h.env.adopt_existing = false;
    h.owned.clear(); // the tag alone now proves ownership
    assert!(h.plan(&topics, DeletionPolicy::Retain).await.is_noop());
}

#[tokio::test]
async fn sqs_unreachable_endpoint_is_reported_as_unreachable() {
    let env = env_spec("http://127.0.0.1:9", false);
    // Connecting never needs the broker.
    let backend = brokers::RealConnector::default()
        .connect(&env, &secrets())
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
async fn sqs_missing_secret_key_is_an_authentication_error() {
    let env = env_spec(&support::env_var("SWITCHYARD_AWS_ENDPOINT"), false);
    let err = match brokers::RealConnector::default()
        .connect(&env, &ResolvedSecrets::default())
        .await
    {
        Ok(_) => panic!("connect must refuse a Secret without keys"),
        Err(e) => e,
    };
    assert_eq!(err.kind, BrokerErrorKind::Authentication);
    assert!(err.message.contains(SECRET), "{}", err.message);
}
