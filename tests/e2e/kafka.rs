//! The Kafka backend against the real KRaft broker started by `tests/env/up.sh kafka`.
//!
//! Every test drives the backend through the public pipeline (desired → observe_and_plan →
//! apply → owned_after) and checks the broker with a separate raw admin client.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use switchyard::api::conditions::reasons;
use switchyard::api::{
    BrokerType, CredentialsSecretRef, DeadLetterSpec, DeletionPolicy, EnvSpec, KafkaSaslSpec,
    KafkaSpec, SaslMechanism, SubscriptionSpec, TopicSpec,
};
use switchyard::brokers::plan::{Plan, PlanInput};
use switchyard::brokers::{
    self, Action, ActionOutcome, Backend, BrokerErrorKind, ConnectOptions, ObjectKey, ObjectKind,
    Observed, Scope, kafka,
};
use switchyard::metrics::BrokerRequests;
use switchyard::secrets::ResolvedSecrets;

use crate::support::{converge, env_var, scope};

const WAIT: Duration = Duration::from_secs(30);

fn bootstrap() -> String {
    env_var("SWITCHYARD_KAFKA_BOOTSTRAP")
}

fn spec(bootstrap: &str) -> KafkaSpec {
    KafkaSpec {
        bootstrap_servers: vec![bootstrap.to_string()],
        client_id: None,
        replication_factor: None,
        topic_prefix: None,
        topic_config: BTreeMap::new(),
        tls: None,
        sasl: None,
    }
}

fn env(spec: KafkaSpec, adopt: bool) -> EnvSpec {
    EnvSpec {
        slug: "test".into(),
        broker_type: BrokerType::Kafka,
        adopt_existing: adopt,
        kafka: Some(spec),
        redis: None,
        rabbitmq: None,
        google_pub_sub: None,
        aws_sqs: None,
        nats_jet_stream: None,
        app_credentials_secret_ref: None,
    }
}

fn topic(name: &str, partitions: i32, retention: &str) -> TopicSpec {
    TopicSpec {
        name: name.into(),
        partitions: Some(partitions),
        retention: Some(retention.into()),
        ordered: false,
        subscriptions: Vec::new(),
    }
}

async fn backend(spec: &KafkaSpec, secrets: &ResolvedSecrets) -> Arc<dyn Backend> {
    kafka::connect(spec, secrets, &ConnectOptions::default())
        .await
        .expect("connect")
}

fn assert_all_ok(outcomes: &[ActionOutcome]) {
    for o in outcomes {
        assert!(o.result.is_ok(), "{}: {:?}", o.key, o.result);
    }
}

async fn plan_only(
    backend: &dyn Backend,
    scope: &Scope,
    env: &EnvSpec,
    topics: &[TopicSpec],
    owned: &BTreeSet<ObjectKey>,
    policy: DeletionPolicy,
) -> (Observed, Plan) {
    let desired = brokers::desired(scope, env, topics, &Default::default()).expect("desired");
    let input = PlanInput {
        scope,
        owned,
        deletion_policy: policy,
        adopt_existing: env.adopt_existing,
        capabilities: brokers::capabilities(BrokerType::Kafka),
    };
    brokers::observe_and_plan(backend, &desired, &input)
        .await
        .expect("observe")
}

/// A raw admin client, independent of the backend, to look behind its back.
pub(crate) struct Raw {
    admin: AdminClient<DefaultClientContext>,
    config: ClientConfig,
}

impl Raw {
    pub(crate) fn new() -> Self {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", bootstrap());
        Raw {
            admin: config.create().expect("raw admin"),
            config,
        }
    }

    fn opts() -> AdminOptions {
        AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)))
    }

    /// Partition count of each existing topic among `names`.
    pub(crate) fn partitions(&self, names: &[&str]) -> HashMap<String, usize> {
        let md = self
            .admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(10))
            .expect("metadata");
        md.topics()
            .iter()
            .filter(|t| names.contains(&t.name()) && t.error().is_none())
            .map(|t| (t.name().to_string(), t.partitions().len()))
            .collect()
    }

    async fn config(&self, topic: &str, key: &str) -> Option<String> {
        let res = self
            .admin
            .describe_configs(&[ResourceSpecifier::Topic(topic)], &Raw::opts())
            .await
            .expect("describe");
        let resource = res.into_iter().next()?.ok()?;
        resource.get(key).and_then(|e| e.value.clone())
    }

    async fn create(&self, topic: &str, partitions: i32) {
        let res = self
            .admin
            .create_topics(
                &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
                &Raw::opts(),
            )
            .await
            .expect("create");
        assert!(res[0].is_ok(), "{res:?}");
        let deadline = Instant::now() + WAIT;
        while !self.partitions(&[topic]).contains_key(topic) {
            assert!(
                Instant::now() < deadline,
                "{topic} not listed after {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait (bounded) until a config shows the expected value (brokers apply changes
    /// asynchronously).
    async fn wait_config(&self, topic: &str, key: &str, expected: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let value = self.config(topic, key).await;
            if value.as_deref() == Some(expected) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{topic} {key} is {value:?}, expected {expected}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn delete(&self, topic: &str) {
        let res = self
            .admin
            .delete_topics(&[topic], &Raw::opts())
            .await
            .expect("delete");
        assert!(res[0].is_ok(), "{res:?}");
    }

    /// Non-incremental AlterConfigs: exactly these dynamic configs remain.
    async fn alter(&self, topic: &str, entries: &[(&str, &str)]) {
        let alter = entries.iter().fold(
            AlterConfig::new(ResourceSpecifier::Topic(topic)),
            |a, (k, v)| a.set(k, v),
        );
        let res = self
            .admin
            .alter_configs(&[alter], &Raw::opts())
            .await
            .expect("alter");
        assert!(res[0].is_ok(), "{res:?}");
    }

    fn produce(&self, topic: &str, n: usize) {
        let producer: BaseProducer = self.config.create().expect("producer");
        for i in 0..n {
            producer
                .send(BaseRecord::<str, str>::to(topic).payload(&format!("m{i}")))
                .expect("send");
        }
        producer.flush(Duration::from_secs(10)).expect("flush");
    }

    /// Wait (bounded) until the topic is gone from metadata.
    async fn wait_gone(&self, topic: &str) {
        let deadline = Instant::now() + WAIT;
        while self.partitions(&[topic]).contains_key(topic) {
            assert!(
                Instant::now() < deadline,
                "{topic} still listed after {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn key(kind: ObjectKind, name: &str) -> ObjectKey {
    ObjectKey::new(kind, name)
}

#[tokio::test(flavor = "multi_thread")]
async fn creates_topics_dead_letters_and_groups_then_is_a_noop() {
    let raw = Raw::new();
    let s = scope("kcreate");
    let mut kspec = spec(&bootstrap());
    kspec
        .topic_config
        .insert("cleanup.policy".into(), "delete".into());
    let env = env(kspec.clone(), false);
    let mut orders = topic("orders", 3, "1h");
    orders.subscriptions = vec![
        SubscriptionSpec {
            name: "billing".into(),
            dead_letter: None,
        },
        SubscriptionSpec {
            name: "shipping".into(),
            dead_letter: Some(DeadLetterSpec {
                max_delivery_attempts: 5,
            }),
        },
    ];
    let topics = vec![orders, topic("audit", 1, "90m")];
    let b = backend(&kspec, &ResolvedSecrets::default()).await;
    b.check().await.expect("check");

    let pass = converge(
        b.as_ref(),
        &s,
        &env,
        &topics,
        &BTreeSet::new(),
        DeletionPolicy::Retain,
    )
    .await;
    assert_eq!(pass.plan.actions.len(), 3, "{:?}", pass.plan);
    assert_all_ok(&pass.outcomes);
    assert_eq!(pass.owned.len(), 3);

    let orders_name = pass.desired.names["orders"].clone();
    let audit_name = pass.desired.names["audit"].clone();
    let dlq_name = pass.desired.names["orders/shipping/dlq"].clone();
    assert_eq!(dlq_name, format!("{orders_name}.dlq"));
    assert_eq!(
        pass.desired.names["orders/billing"],
        format!("{}.bus.orders.billing", s.namespace)
    );
    let parts = raw.partitions(&[&orders_name, &audit_name, &dlq_name]);
    assert_eq!(parts.get(&orders_name), Some(&3));
    assert_eq!(parts.get(&dlq_name), Some(&3));
    assert_eq!(parts.get(&audit_name), Some(&1));
    assert_eq!(
        raw.config(&orders_name, "retention.ms").await.as_deref(),
        Some("3600000")
    );
    assert_eq!(
        raw.config(&audit_name, "retention.ms").await.as_deref(),
        Some("5400000")
    );

    // The observation reports what the broker has: partitions, configs, replication factor.
    let (observed, plan) = plan_only(
        b.as_ref(),
        &s,
        &env,
        &topics,
        &pass.owned,
        DeletionPolicy::Retain,
    )
    .await;
    assert!(plan.is_noop(), "second pass must be a no-op: {plan:?}");
    let o = &observed.objects[&key(ObjectKind::Topic, &orders_name)];
    assert_eq!(o.partitions, Some(3));
    assert_eq!(o.config["retention.ms"], "3600000");
    assert_eq!(o.config["cleanup.policy"], "delete");
    assert_eq!(o.config["replication.factor"], "1");
    assert_eq!(o.messages, Some(0));
    assert_eq!(o.owner, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn partitions_grow_and_never_shrink() {
    let raw = Raw::new();
    let s = scope("kparts");
    let kspec = spec(&bootstrap());
    let env = env(kspec.clone(), false);
    let b = backend(&kspec, &ResolvedSecrets::default()).await;
    let p1 = converge(
        b.as_ref(),
        &s,
        &env,
        &[topic("t", 2, "1h")],
        &BTreeSet::new(),
        DeletionPolicy::Retain,
    )
    .await;
    assert_all_ok(&p1.outcomes);
    let name = p1.desired.names["t"].clone();

    let p2 = converge(
        b.as_ref(),
        &s,
        &env,
        &[topic("t", 5, "1h")],
        &p1.owned,
        DeletionPolicy::Retain,
    )
    .await;
    assert!(
        matches!(
            &p2.plan.actions[..],
            [Action::AddPartitions { from: 2, to: 5, .. }]
        ),
        "{:?}",
        p2.plan
    );
    assert_all_ok(&p2.outcomes);
    assert_eq!(raw.partitions(&[&name]).get(&name), Some(&5));

    let (observed, plan) = plan_only(
        b.as_ref(),
        &s,
        &env,
        &[topic("t", 3, "1h")],
        &p2.owned,
        DeletionPolicy::Retain,
    )
    .await;
    assert_eq!(
        observed.objects[&key(ObjectKind::Topic, &name)].partitions,
        Some(5)
    );
    assert!(plan.actions.is_empty(), "{plan:?}");
    let refusal = plan.permanent_refusal().expect("decrease refused");
    assert_eq!(
        switchyard::failure::refusal_reason(refusal.kind),
        reasons::PARTITION_DECREASE
    );
    assert_eq!(raw.partitions(&[&name]).get(&name), Some(&5));
}

#[tokio::test(flavor = "multi_thread")]
async fn config_drift_is_reverted_and_foreign_configs_kept() {
    let raw = Raw::new();
    let s = scope("kdrift");
    let mut kspec = spec(&bootstrap());
    kspec
        .topic_config
        .insert("max.message.bytes".into(), "2000000".into());
    let env = env(kspec.clone(), false);
    let topics = [topic("t", 1, "2h")];
    let b = backend(&kspec, &ResolvedSecrets::default()).await;
    let p1 = converge(
        b.as_ref(),
        &s,
        &env,
        &topics,
        &BTreeSet::new(),
        DeletionPolicy::Retain,
    )
    .await;
    assert_all_ok(&p1.outcomes);
    let name = p1.desired.names["t"].clone();

    // Behind the operator's back: retention changed, max.message.bytes dropped (AlterConfigs
    // replaces the whole set), and an unrelated config set by someone else.
    raw.alter(
        &name,
        &[("retention.ms", "1234"), ("segment.ms", "7200000")],
    )
    .await;
    raw.wait_config(&name, "retention.ms", "1234").await;
    raw.wait_config(&name, "max.message.bytes", "1048588").await;

    let p2 = converge(
        b.as_ref(),
        &s,
        &env,
        &topics,
        &p1.owned,
        DeletionPolicy::Retain,
    )
    .await;
    let [Action::Update { changes, .. }] = &p2.plan.actions[..] else {
        panic!("expected one update: {:?}", p2.plan);
    };
    let changed: BTreeSet<&str> = changes.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(
        changed,
        BTreeSet::from(["max.message.bytes", "retention.ms"])
    );
    assert_all_ok(&p2.outcomes);
    assert_eq!(
        raw.config(&name, "retention.ms").await.as_deref(),
        Some("7200000")
    );
    assert_eq!(
        raw.config(&name, "max.message.bytes").await.as_deref(),
        Some("2000000")
    );
    assert_eq!(
        raw.config(&name, "segment.ms").await.as_deref(),
        Some("7200000"),
        "a dynamic config the spec does not name must survive the revert"
    );
    let (_, plan) = plan_only(
        b.as_ref(),
        &s,
        &env,
        &topics,
        &p2.owned,
        DeletionPolicy::Retain,
    )
    .await;
    assert!(plan.is_noop(), "{plan:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn replication_factor_change_is_refused() {
    let s = scope("krf");
    let mut kspec = spec(&bootstrap());
    kspec.replication_factor = Some(1);
    let b = backend(&kspec, &ResolvedSecrets::default()).await;
    let p1 = converge(
        b.as_ref(),
        &s,
        &env(kspec.clone(), false),
        &[topic("t", 1, "1h")],
        &BTreeSet::new(),
        DeletionPolicy::Retain,
    )
    .await;
    assert_all_ok(&p1.outcomes);

    kspec.replication_factor = Some(3);
    let (_, plan) = plan_only(
        b.as_ref(),
        &s,
        &env(kspec.clone(), false),
        &[topic("t", 1, "1h")],
        &p1.owned,
        DeletionPolicy::Retain,
    )
    .await;
    assert!(plan.actions.is_empty(), "{plan:?}");
    assert_eq!(plan.refused.len(), 1, "{plan:?}");
    assert_eq!(
        plan.refused[0].kind,
        switchyard::brokers::RefusalKind::Immutable(
            switchyard::brokers::Immutable::ReplicationFactor
        )
    );
    assert!(plan.refused[0].message.contains("replication.factor is 1"));

    // Creating a topic with more replicas than brokers is rejected by the broker, per topic.
    let p3 = converge(
        b.as_ref(),
        &s,
        &env(kspec, false),
        &[topic("t", 1, "1h"), topic("u", 1, "1h")],
        &p1.owned,
        DeletionPolicy::Retain,
    )
    .await;
    let err = p3
        .outcomes
        .iter()
        .find(|o| o.key.name.ends_with(".u"))
        .and_then(|o| o.result.clone().err())
        .expect("create with 3 replicas on one broker fails");
    assert_eq!(err.kind, BrokerErrorKind::Rejected, "{err:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn topic_deleted_behind_our_back_is_recreated() {
    let raw = Raw::new();
    let s = scope("krecreate");
    let kspec = spec(&bootstrap());
    let env = env(kspec.clone(), false);
    let topics = [topic("t", 2, "1h")];
    let b = backend(&kspec, &ResolvedSecrets::default()).await;
    let p1 = converge(
        b.as_ref(),
        &s,
        &env,
        &topics,
        &BTreeSet::new(),
        DeletionPolicy::Retain,
    )
    .await;
    assert_all_ok(&p1.outcomes);
    let name = p1.desired.names["t"].clone();

    raw.delete(&name).await;
    raw.wait_gone(&name).await;

    // Reconcile until converged, as the controller's requeue would (a just-deleted topic may
    // briefly refuse re-creation).
    let deadline = Instant::now() + WAIT;
    let mut owned = p1.owned.clone();
    let mut saw_create = false;
    loop {
        let p = converge(
            b.as_ref(),
            &s,
            &env,
            &topics,
            &owned,
            DeletionPolicy::Retain,
        )
        .await;
        saw_create |= p
            .plan
            .actions
            .iter()
            .any(|a| matches!(a, Action::Create { .. }));
        owned = p.owned;
        if p.plan.is_noop() {
            break;
        }
        for o in &p.outcomes {
            if let Err(e) = &o.result {
                assert_eq!(e.kind, BrokerErrorKind::Other, "transient only: {e:?}");
            }
        }
        assert!(Instant::now() < deadline, "not converged: {:?}", p.plan);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(saw_create, "the missing topic was planned for creation");
    assert_eq!(raw.partitions(&[&name]).get(&name), Some(&2));
    assert!(owned.contains(&key(ObjectKind::Topic, &name)));
}

#[tokio::test(flavor = "multi_thread")]
async fn retain_deletes_nothing_and_delete_removes_only_owned_empty_topics() {
    let raw = Raw::new();
    let s = scope("kretire");
    let kspec = spec(&bootstrap());
    let env = env(kspec.clone(), false);
    let all = [
        topic("keep", 1, "1h"),
        topic("drop", 1, "1h"),
        topic("full", 1, "1h"),
    ];
    let b = backend(&kspec, &ResolvedSecrets::default()).await;
    let p1 = converge(
        b.as_ref(),
        &s,
        &env,
        &all,
        &BTreeSet::new(),
        DeletionPolicy::Retain,
    )
    .await;
    assert_all_ok(&p1.outcomes);
    let (drop, full) = (
        p1.desired.names["drop"].clone(),
        p1.desired.names["full"].clone(),
    );
    raw.produce(&full, 3);
    // A topic in our namespace that we never created.
    let foreign = format!("{}.bus.foreign", s.namespace);
    raw.create(&foreign, 1).await;

    let remaining = [topic("keep", 1, "1h")];
    let retain = converge(
        b.as_ref(),
        &s,
        &env,
        &remaining,
        &p1.owned,
        DeletionPolicy::Retain,
    )
    .await;
    assert!(retain.plan.actions.is_empty(), "{:?}", retain.plan);
    assert_eq!(retain.plan.retained.len(), 2);
    assert_eq!(raw.partitions(&[&drop, &full]).len(), 2);

    let del = converge(
        b.as_ref(),
        &s,
        &env,
        &remaining,
        &retain.owned,
        DeletionPolicy::Delete,
    )
    .await;
    assert_eq!(
        del.plan.actions,
        vec![Action::Delete {
            key: key(ObjectKind::Topic, &drop)
        }]
    );
    assert_all_ok(&del.outcomes);
    let blocked = del
        .plan
        .refused
        .iter()
        .find(|r| r.key.name == full)
        .expect("non-empty topic kept");
    assert_eq!(
        switchyard::failure::refusal_reason(blocked.kind),
        reasons::RETIRE_BLOCKED
    );
    assert!(blocked.message.contains("3 message"), "{}", blocked.message);
    raw.wait_gone(&drop).await;
    let left = raw.partitions(&[&full, &foreign]);
    assert!(
        left.contains_key(&full) && left.contains_key(&foreign),
        "{left:?}"
    );
    assert!(!del.owned.contains(&key(ObjectKind::Topic, &drop)));
    // Deleting what is already gone succeeds.
    let again = b
        .apply(
            &s,
            &[Action::Delete {
                key: key(ObjectKind::Topic, &drop),
            }],
        )
        .await;
    assert_all_ok(&again);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_observation_serves_every_resource_until_something_changes() {
    let raw = Raw::new();
    let kspec = spec(&bootstrap());
    let env = env(kspec.clone(), false);
    let requests = BrokerRequests::default();
    let options = ConnectOptions {
        observe_max_age: Duration::from_secs(600),
        requests: requests.clone(),
        ..ConnectOptions::default()
    };
    let b = kafka::connect(&kspec, &ResolvedSecrets::default(), &options)
        .await
        .expect("connect");
    let topics = [topic("a", 1, "1h"), topic("b", 1, "1h")];
    let (s1, s2) = (scope("kshare"), scope("kshare"));
    let mut owned = HashMap::new();
    for s in [&s1, &s2] {
        let p = converge(
            b.as_ref(),
            s,
            &env,
            &topics,
            &BTreeSet::new(),
            DeletionPolicy::Delete,
        )
        .await;
        assert_all_ok(&p.outcomes);
        assert_eq!(p.plan.actions.len(), 2, "{:?}", p.plan);
        owned.insert(s.namespace.clone(), p.owned);
    }
    // What apply changed is read again, once; then every pass is answered without a request.
    for s in [&s1, &s2] {
        let (_, plan) = plan_only(
            b.as_ref(),
            s,
            &env,
            &topics,
            &owned[&s.namespace],
            DeletionPolicy::Delete,
        )
        .await;
        assert!(plan.actions.is_empty(), "{plan:?}");
    }
    let before = requests.total();
    for _ in 0..3 {
        for s in [&s1, &s2] {
            let (observed, plan) = plan_only(
                b.as_ref(),
                s,
                &env,
                &topics,
                &owned[&s.namespace],
                DeletionPolicy::Delete,
            )
            .await;
            assert!(plan.actions.is_empty(), "{plan:?}");
            assert_eq!(observed.objects.len(), 2);
        }
    }
    assert_eq!(requests.total(), before, "six passes, no broker request");

    // Messages arrive after the (reused) observation saw the topic empty: the plan deletes it,
    // the apply counts again and keeps it.
    let a1 = brokers::desired(&s1, &env, &topics, &Default::default())
        .expect("desired")
        .names["a"]
        .clone();
    raw.produce(&a1, 2);
    let only_b = [topic("b", 1, "1h")];
    let del = converge(
        b.as_ref(),
        &s1,
        &env,
        &only_b,
        &owned[&s1.namespace],
        DeletionPolicy::Delete,
    )
    .await;
    assert_eq!(
        del.plan.actions,
        vec![Action::Delete {
            key: key(ObjectKind::Topic, &a1)
        }]
    );
    let err = del.outcomes[0].result.as_ref().expect_err("kept");
    assert!(err.message.contains("2 message"), "{err}");
    assert!(raw.partitions(&[&a1]).contains_key(&a1));
    // The refused delete touched the topic, so the next pass reads it and sees the messages.
    let (observed, plan) = plan_only(
        b.as_ref(),
        &s1,
        &env,
        &only_b,
        &del.owned,
        DeletionPolicy::Delete,
    )
    .await;
    assert_eq!(
        observed.objects[&key(ObjectKind::Topic, &a1)].messages,
        Some(2)
    );
    assert_eq!(
        switchyard::failure::refusal_reason(plan.refused[0].kind),
        reasons::RETIRE_BLOCKED
    );

    // A change by the operator is seen by the very next pass.
    let grown = [topic("a", 3, "1h"), topic("b", 1, "1h")];
    let g = converge(
        b.as_ref(),
        &s2,
        &env,
        &grown,
        &owned[&s2.namespace],
        DeletionPolicy::Delete,
    )
    .await;
    assert_all_ok(&g.outcomes);
    let (observed, plan) = plan_only(
        b.as_ref(),
        &s2,
        &env,
        &grown,
        &g.owned,
        DeletionPolicy::Delete,
    )
    .await;
    assert!(plan.actions.is_empty(), "{plan:?}");
    let a2 = &g.desired.names["a"];
    assert_eq!(
        observed.objects[&key(ObjectKind::Topic, a2)].partitions,
        Some(3)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn foreign_topic_conflicts_unless_adopted() {
    let raw = Raw::new();
    let s = scope("kadopt");
    let kspec = spec(&bootstrap());
    let topics = [topic("t", 1, "1h")];
    let name = kafka::topic_name(&s, &kspec, "t");
    raw.create(&name, 1).await;
    let b = backend(&kspec, &ResolvedSecrets::default()).await;

    let p = converge(
        b.as_ref(),
        &s,
        &env(kspec.clone(), false),
        &topics,
        &BTreeSet::new(),
        DeletionPolicy::Retain,
    )
    .await;
    assert!(p.plan.actions.is_empty(), "{:?}", p.plan);
    assert_eq!(
        switchyard::failure::refusal_reason(p.plan.refused[0].kind),
        reasons::CONFLICT
    );
    assert!(p.owned.is_empty());

    let adopt = converge(
        b.as_ref(),
        &s,
        &env(kspec.clone(), true),
        &topics,
        &BTreeSet::new(),
        DeletionPolicy::Retain,
    )
    .await;
    assert!(
        matches!(adopt.plan.actions[0], Action::Adopt { .. }),
        "{:?}",
        adopt.plan
    );
    assert_all_ok(&adopt.outcomes);
    assert!(adopt.owned.contains(&key(ObjectKind::Topic, &name)));
    // Adoption also converges the settings (the raw topic has the default retention).
    assert_eq!(
        raw.config(&name, "retention.ms").await.as_deref(),
        Some("3600000")
    );
}

fn sasl_spec(mechanism: SaslMechanism) -> KafkaSpec {
    let mut s = spec(&env_var("SWITCHYARD_KAFKA_SASL_BOOTSTRAP"));
    s.sasl = Some(KafkaSaslSpec {
        mechanism,
        credentials_secret_ref: CredentialsSecretRef {
            name: "kafka-user".into(),
            username_key: "username".into(),
            password_key: "password".into(),
        },
    });
    s
}

fn sasl_secrets(password: &str) -> ResolvedSecrets {
    let mut secrets = ResolvedSecrets::default();
    secrets.insert(
        "kafka-user",
        "username",
        env_var("SWITCHYARD_KAFKA_SASL_USERNAME"),
    );
    secrets.insert("kafka-user", "password", password);
    secrets
}

#[tokio::test(flavor = "multi_thread")]
async fn scram_credentials_work_and_a_wrong_password_is_an_authentication_error() {
    let password = env_var("SWITCHYARD_KAFKA_SASL_PASSWORD");
    for mechanism in [SaslMechanism::ScramSha512, SaslMechanism::ScramSha256] {
        let kspec = sasl_spec(mechanism);
        let b = backend(&kspec, &sasl_secrets(&password)).await;
        b.check().await.expect("SCRAM login works");
        let s = scope("ksasl");
        let p = converge(
            b.as_ref(),
            &s,
            &env(kspec.clone(), false),
            &[topic("t", 1, "1h")],
            &BTreeSet::new(),
            DeletionPolicy::Retain,
        )
        .await;
        assert_all_ok(&p.outcomes);
        assert_eq!(p.owned.len(), 1);

        let bad = backend(&kspec, &sasl_secrets("not-the-password")).await;
        let started = Instant::now();
        let err = bad.check().await.expect_err("wrong password refused");
        assert_eq!(err.kind, BrokerErrorKind::Authentication, "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(
            !err.message.contains("not-the-password") && !err.message.contains(&password),
            "no secret in messages: {}",
            err.message
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_bootstrap_fails_check_quickly() {
    // A port nothing listens on: bind, learn the port, close.
    let port = crate::support::free_port();
    let kspec = spec(&format!("127.0.0.1:{port}"));
    let b = backend(&kspec, &ResolvedSecrets::default()).await;
    let started = Instant::now();
    let err = b.check().await.expect_err("nothing listens there");
    assert!(
        matches!(
            err.kind,
            BrokerErrorKind::Unreachable | BrokerErrorKind::Timeout
        ),
        "{err:?}"
    );
    assert_eq!(err.kind, BrokerErrorKind::Unreachable, "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_applies_from_two_resources_share_the_backend() {
    let raw = Raw::new();
    let kspec = spec(&bootstrap());
    let env = env(kspec.clone(), false);
    let b = backend(&kspec, &ResolvedSecrets::default()).await;
    let (s1, s2) = (scope("kco"), scope("kco"));
    let topics = [topic("a", 1, "1h"), topic("b", 2, "1h")];
    let none = BTreeSet::new();
    let (p1, p2) = tokio::join!(
        converge(
            b.as_ref(),
            &s1,
            &env,
            &topics,
            &none,
            DeletionPolicy::Retain
        ),
        converge(
            b.as_ref(),
            &s2,
            &env,
            &topics,
            &none,
            DeletionPolicy::Retain
        ),
    );
    assert_all_ok(&p1.outcomes);
    assert_all_ok(&p2.outcomes);
    let names: Vec<String> = [&p1, &p2]
        .iter()
        .flat_map(|p| p.desired.names.values().cloned())
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(raw.partitions(&refs).len(), 4);
}

/// Provisioning 1,000 one-partition topics through the backend vs. one raw CreateTopics call.
/// Run with `cargo test --test e2e kafka::provision_1000 -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "measurement, not a check"]
async fn provision_1000_topics_measurement() {
    const N: usize = 1000;
    let raw = Raw::new();
    let kspec = spec(&bootstrap());
    let env = env(kspec.clone(), false);
    let topics: Vec<TopicSpec> = (0..N)
        .map(|i| topic(&format!("t{i:04}"), 1, "1h"))
        .collect();

    // Floor: the same topics (same configs) in one raw batched CreateTopics call.
    let floor_scope = scope("kfloor");
    let floor_names: Vec<String> = topics
        .iter()
        .map(|t| kafka::topic_name(&floor_scope, &kspec, &t.name))
        .collect();
    let new_topics: Vec<NewTopic<'_>> = floor_names
        .iter()
        .map(|n| NewTopic::new(n, 1, TopicReplication::Fixed(-1)).set("retention.ms", "3600000"))
        .collect();
    let b = backend(&kspec, &ResolvedSecrets::default()).await;
    b.check().await.expect("check");
    let started = Instant::now();
    let res = raw
        .admin
        .create_topics(&new_topics, &Raw::opts())
        .await
        .expect("create");
    let floor = started.elapsed();
    assert!(res.iter().all(|r| r.is_ok()));
    // When the raw topics are usable: listed, and every partition answers offsets requests.
    let floor_keys: Vec<ObjectKey> = floor_names
        .iter()
        .map(|n| key(ObjectKind::Topic, n))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match b.observe(&floor_scope, &floor_keys).await {
            Ok(o) if o.objects.len() == N => break,
            other => assert!(Instant::now() < deadline, "not ready: {:?}", other.err()),
        }
    }
    let floor_ready = started.elapsed();

    let s = scope("kbench");
    let started = Instant::now();
    let p = converge(
        b.as_ref(),
        &s,
        &env,
        &topics,
        &BTreeSet::new(),
        DeletionPolicy::Retain,
    )
    .await;
    let backend_first = started.elapsed();
    assert_all_ok(&p.outcomes);
    assert_eq!(p.owned.len(), N);

    let started = Instant::now();
    let (_, plan) = plan_only(
        b.as_ref(),
        &s,
        &env,
        &topics,
        &p.owned,
        DeletionPolicy::Retain,
    )
    .await;
    let backend_noop = started.elapsed();
    assert!(plan.is_noop());
    println!(
        "{N} topics: raw CreateTopics {floor:?} (all partitions ready after {floor_ready:?}); \
         backend observe+plan+apply {backend_first:?} (returns once ready); \
         no-op observe+plan {backend_noop:?}"
    );

    // Clean up both sets in two batched calls.
    for names in [floor_names, p.desired.names.values().cloned().collect()] {
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        raw.admin
            .delete_topics(&refs, &Raw::opts())
            .await
            .expect("delete");
    }
}
