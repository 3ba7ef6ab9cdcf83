//! The NATS JetStream backend against the real nats-server started by `tests/env/nats.sh`:
//! user `switchyard` (JetStream), `nojs` (denied the JetStream API) and `limited` (an account
//! whose JetStream allows two streams).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer, stream::StorageType};
use futures::StreamExt;
use switchyard::api::conditions::reasons;
use switchyard::api::{
    BrokerType, CredentialsSecretRef, DeletionPolicy, EnvSpec, NatsJetStreamSpec, NatsStorage,
    TopicSpec,
};
use switchyard::brokers::{
    self, Action, Backend, BrokerErrorKind, Immutable, ObjectKey, ObjectKind, RefusalKind, Scope,
    nats::OWNER_METADATA,
};
use switchyard::secrets::ResolvedSecrets;

use crate::support::{self, env_var};

fn url() -> String {
    env_var("SWITCHYARD_NATS_URL")
}

/// The spec for `user`, whose password is in the Secret `nats`.
fn spec_for(user_var: &str, password_var: &str) -> (NatsJetStreamSpec, ResolvedSecrets) {
    let spec = NatsJetStreamSpec {
        servers: vec![url()],
        subject_prefix: None,
        credentials_secret_ref: Some(CredentialsSecretRef {
            name: "nats".into(),
            username_key: "username".into(),
            password_key: "password".into(),
        }),
        token_secret_ref: None,
        nkey_seed_secret_ref: None,
        creds_secret_ref: None,
        tls: None,
        replicas: None,
        storage: NatsStorage::File,
    };
    let mut secrets = ResolvedSecrets::default();
    secrets.insert("nats", "username", env_var(user_var));
    secrets.insert("nats", "password", env_var(password_var));
    (spec, secrets)
}

fn spec() -> (NatsJetStreamSpec, ResolvedSecrets) {
    spec_for("SWITCHYARD_NATS_USER", "SWITCHYARD_NATS_PASSWORD")
}

fn env(spec: NatsJetStreamSpec) -> EnvSpec {
    EnvSpec {
        slug: "dev".into(),
        broker_type: BrokerType::NatsJetStream,
        adopt_existing: false,
        kafka: None,
        redis: None,
        rabbitmq: None,
        google_pub_sub: None,
        aws_sqs: None,
        nats_jet_stream: Some(spec),
        app_credentials_secret_ref: None,
    }
}

fn topic(name: &str, subs: &[(&str, Option<i32>)]) -> TopicSpec {
    TopicSpec {
        name: name.into(),
        partitions: None,
        retention: None,
        ordered: false,
        subscriptions: support::subscriptions(subs),
    }
}

async fn backend(spec: &NatsJetStreamSpec, secrets: &ResolvedSecrets) -> Arc<dyn Backend> {
    brokers::nats::connect(spec, secrets, &Default::default())
        .await
        .expect("connect builds a client")
}

/// A JetStream context of its own, for arranging and inspecting the server behind the
/// backend's back.
async fn admin(user_var: &str, password_var: &str) -> jetstream::Context {
    let client = async_nats::ConnectOptions::with_user_and_password(
        env_var(user_var),
        env_var(password_var),
    )
    .connect(url())
    .await
    .expect("admin connection");
    jetstream::new(client)
}

async fn admin_js() -> jetstream::Context {
    admin("SWITCHYARD_NATS_USER", "SWITCHYARD_NATS_PASSWORD").await
}

/// One reconcile pass; every action must succeed.
async fn pass(
    backend: &dyn Backend,
    scope: &Scope,
    env: &EnvSpec,
    topics: &[TopicSpec],
    owned: &BTreeSet<ObjectKey>,
    policy: DeletionPolicy,
) -> brokers::Converged {
    let pass = support::converge(backend, scope, env, topics, owned, policy).await;
    assert_eq!(pass.outcomes.len(), pass.plan.actions.len());
    for o in &pass.outcomes {
        assert!(o.result.is_ok(), "{}: {:?}", o.key, o.result);
    }
    pass
}

fn stream_name(scope: &Scope, topic: &str) -> String {
    format!("{}_{}_{topic}", scope.namespace, scope.name)
}

fn subject(scope: &Scope, topic: &str) -> String {
    format!("{}.{}.{topic}", scope.namespace, scope.name)
}

async fn stream_info(js: &jetstream::Context, name: &str) -> Option<jetstream::stream::Info> {
    match js.get_stream(name).await {
        Ok(mut s) => Some(s.info().await.expect("stream info").clone()),
        Err(_) => None,
    }
}

async fn consumer(js: &jetstream::Context, stream: &str, name: &str) -> Option<PullConsumer> {
    js.get_consumer_from_stream(name, stream).await.ok()
}

#[tokio::test]
async fn provisions_streams_consumers_and_dead_letters_then_is_a_noop() {
    let (spec, secrets) = spec();
    let scope = support::scope("nats");
    let env = env(spec.clone());
    let b = backend(&spec, &secrets).await;
    b.check()
        .await
        .expect("the JetStream user passes the check");

    let mut orders = topic("orders", &[("billing", None), ("shipping", Some(5))]);
    orders.retention = Some("1h".into());
    orders.partitions = Some(6);
    let mut ledger = topic("ledger", &[("audit", None)]);
    ledger.ordered = true;
    // The shortest retention the API allows, under JetStream's default duplicate window.
    ledger.retention = Some("1m".into());
    let topics = vec![orders, ledger];

    let first = pass(
        &*b,
        &scope,
        &env,
        &topics,
        &BTreeSet::new(),
        DeletionPolicy::Retain,
    )
    .await;
    assert_eq!(first.plan.actions.len(), 6, "{:?}", first.plan.actions);
    assert!(
        first
            .plan
            .actions
            .iter()
            .all(|a| matches!(a, Action::Create { .. }))
    );

    let js = admin_js().await;
    let orders = stream_name(&scope, "orders");
    let info = stream_info(&js, &orders).await.expect("the orders stream");
    assert_eq!(info.config.subjects, vec![subject(&scope, "orders")]);
    assert_eq!(info.config.max_age, Duration::from_secs(3600));
    assert_eq!(info.config.storage, StorageType::File);
    assert_eq!(
        info.config.metadata.get(OWNER_METADATA),
        Some(&scope.owner()),
        "ownership recorded in the stream's metadata"
    );
    let dlq = stream_info(&js, &format!("{orders}-dlq"))
        .await
        .expect("the dead-letter stream");
    assert_eq!(
        dlq.config.subjects,
        vec![format!("{}.dlq", subject(&scope, "orders"))]
    );
    assert_eq!(dlq.config.max_age, Duration::ZERO, "dead letters are kept");

    let mut shipping = consumer(&js, &orders, "shipping").await.expect("shipping");
    let c = shipping.info().await.expect("consumer info").config.clone();
    assert_eq!(c.durable_name.as_deref(), Some("shipping"));
    assert_eq!(c.ack_policy, jetstream::consumer::AckPolicy::Explicit);
    assert_eq!(
        c.max_deliver, 6,
        "five attempts, then the client dead-letters"
    );
    assert_eq!(c.metadata.get(OWNER_METADATA), Some(&scope.owner()));
    let mut billing = consumer(&js, &orders, "billing").await.expect("billing");
    assert_eq!(
        billing.info().await.expect("info").config.max_deliver,
        -1,
        "no dead letter, no limit"
    );
    let mut audit = consumer(&js, &stream_name(&scope, "ledger"), "audit")
        .await
        .expect("audit");
    assert_eq!(
        audit.info().await.expect("info").config.max_ack_pending,
        1,
        "an ordered topic has one message in flight"
    );

    let second = pass(
        &*b,
        &scope,
        &env,
        &topics,
        &first.owned,
        DeletionPolicy::Retain,
    )
    .await;
    assert!(
        second.plan.is_noop(),
        "second pass must change nothing: {:?}",
        second.plan
    );
    assert_eq!(second.owned.len(), 6);
}

#[tokio::test]
async fn drift_is_repaired_and_consumers_start_at_the_end() {
    let (spec, secrets) = spec();
    let scope = support::scope("nats");
    let env = env(spec.clone());
    let b = backend(&spec, &secrets).await;
    let mut orders = topic("orders", &[("billing", None), ("shipping", None)]);
    orders.retention = Some("2h".into());
    let topics = vec![orders, topic("audit", &[("archive", None)])];
    let first = pass(
        &*b,
        &scope,
        &env,
        &topics,
        &BTreeSet::new(),
        DeletionPolicy::Retain,
    )
    .await;

    let js = admin_js().await;
    let orders = stream_name(&scope, "orders");
    let audit = stream_name(&scope, "audit");
    // A message published before billing is re-created must not be delivered to it.
    js.publish(subject(&scope, "orders"), "old".into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    js.delete_consumer_from_stream("billing", &orders)
        .await
        .expect("delete billing");
    js.delete_stream(&audit).await.expect("delete audit");
    // Someone shortens the retention behind our back.
    let mut changed = stream_info(&js, &orders).await.expect("orders").config;
    changed.max_age = Duration::from_secs(90);
    changed.duplicate_window = Duration::from_secs(90);
    js.update_stream(changed).await.expect("update orders");

    let repair = pass(
        &*b,
        &scope,
        &env,
        &topics,
        &first.owned,
        DeletionPolicy::Retain,
    )
    .await;
    let mut done: Vec<String> = repair
        .plan
        .actions
        .iter()
        .map(|a| match a {
            Action::Create { object } => format!("create {}", object.key),
            Action::Update { object, .. } => format!("update {}", object.key),
            other => panic!("only creates and updates expected, got {other:?}"),
        })
        .collect();
    done.sort();
    assert_eq!(
        done,
        vec![
            format!("create subscription/{audit}/archive"),
            format!("create subscription/{orders}/billing"),
            format!("create topic/{audit}"),
            format!("update topic/{orders}"),
        ]
    );
    let info = stream_info(&js, &orders).await.expect("orders");
    assert_eq!(
        info.config.max_age,
        Duration::from_secs(7200),
        "retention back"
    );
    assert_eq!(info.state.messages, 1, "an update keeps the messages");

    let billing = consumer(&js, &orders, "billing").await.expect("billing");
    let mut batch = billing
        .fetch()
        .max_messages(10)
        .messages()
        .await
        .expect("fetch");
    let mut delivered = 0;
    while let Some(m) = batch.next().await {
        m.expect("message");
        delivered += 1;
    }
    assert_eq!(delivered, 0, "a re-created consumer starts at the end");

    let after = pass(
        &*b,
        &scope,
        &env,
        &topics,
        &repair.owned,
        DeletionPolicy::Retain,
    )
    .await;
    assert!(after.plan.is_noop(), "{:?}", after.plan);
}

#[tokio::test]
async fn a_storage_change_is_refused_with_a_reason_and_nothing_changes() {
    let (spec, secrets) = spec();
    let scope = support::scope("nats");
    let b = backend(&spec, &secrets).await;
    let topics = vec![topic("orders", &[("billing", None)])];
    let first = pass(
        &*b,
        &scope,
        &env(spec.clone()),
        &topics,
        &BTreeSet::new(),
        DeletionPolicy::Retain,
    )
    .await;

    let mut memory = spec.clone();
    memory.storage = NatsStorage::Memory;
    let refused = pass(
        &*b,
        &scope,
        &env(memory),
        &topics,
        &first.owned,
        DeletionPolicy::Retain,
    )
    .await;
    let orders = stream_name(&scope, "orders");
    let refusal = refused
        .plan
        .refused
        .iter()
        .find(|r| r.key == ObjectKey::new(ObjectKind::Topic, orders.clone()))
        .unwrap_or_else(|| panic!("storage change refused: {:?}", refused.plan));
    assert_eq!(
        refusal.kind,
        RefusalKind::Immutable(Immutable::StreamStorage)
    );
    assert!(!refusal.is_transient(), "a spec change is needed: Stalled");
    assert_eq!(
        switchyard::failure::refusal_reason(refusal.kind),
        reasons::STREAM_STORAGE_CHANGE
    );
    assert!(refusal.message.contains("storage"), "{}", refusal.message);
    let js = admin_js().await;
    assert_eq!(
        stream_info(&js, &orders)
            .await
            .expect("orders")
            .config
            .storage,
        StorageType::File,
        "the stream keeps its storage"
    );
}

#[tokio::test]
async fn check_tells_unreachable_bad_credentials_and_no_jetstream_apart() {
    let (mut wrong, mut secrets) = spec();
    secrets.insert("nats", "password", "wrong-password-distinctive");
    let err = backend(&wrong, &secrets)
        .await
        .check()
        .await
        .expect_err("wrong password");
    assert_eq!(err.kind, BrokerErrorKind::Authentication, "{err}");
    assert_eq!(
        switchyard::failure::broker_reason(err.kind),
        reasons::AUTHENTICATION_FAILED
    );
    assert!(!err.message.contains("wrong-password-distinctive"), "{err}");

    wrong.credentials_secret_ref = None;
    let err = backend(&wrong, &ResolvedSecrets::default())
        .await
        .check()
        .await
        .expect_err("no credentials");
    assert_eq!(err.kind, BrokerErrorKind::Authentication, "{err}");

    let (nojs, secrets) = spec_for("SWITCHYARD_NATS_NOJS_USER", "SWITCHYARD_NATS_NOJS_PASSWORD");
    let started = std::time::Instant::now();
    let err = backend(&nojs, &secrets)
        .await
        .check()
        .await
        .expect_err("a user denied the JetStream API");
    assert_eq!(err.kind, BrokerErrorKind::PermissionDenied, "{err}");
    assert_eq!(
        switchyard::failure::broker_reason(err.kind),
        reasons::PERMISSION_DENIED
    );
    assert!(
        err.message.contains("Permissions Violation"),
        "the server's refusal is quoted: {err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "told at once, not after a timeout: {:?}",
        started.elapsed()
    );

    let (mut down, secrets) = spec();
    down.servers = vec!["nats://127.0.0.1:1".into()];
    let err = backend(&down, &secrets)
        .await
        .check()
        .await
        .expect_err("nothing listens");
    assert_eq!(err.kind, BrokerErrorKind::Unreachable, "{err}");
}

/// Remove every stream of the `limited` account, so the test starts from its limits.
async fn empty_limited_account(js: &jetstream::Context) {
    let names: Vec<String> = js
        .stream_names()
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .map(|n| n.expect("stream name"))
        .collect();
    for n in names {
        js.delete_stream(&n).await.expect("delete stream");
    }
}

#[tokio::test]
async fn exceeding_the_accounts_stream_limit_is_reported() {
    let (spec, secrets) = spec_for(
        "SWITCHYARD_NATS_LIMITED_USER",
        "SWITCHYARD_NATS_LIMITED_PASSWORD",
    );
    let js = admin(
        "SWITCHYARD_NATS_LIMITED_USER",
        "SWITCHYARD_NATS_LIMITED_PASSWORD",
    )
    .await;
    empty_limited_account(&js).await;
    let scope = support::scope("nats");
    let b = backend(&spec, &secrets).await;
    b.check().await.expect("the limited user has JetStream");
    // Two streams fit; the third does not.
    let topics = vec![topic("a", &[("s", None)]), topic("b", &[]), topic("c", &[])];
    let pass = support::converge(
        &*b,
        &scope,
        &env(spec.clone()),
        &topics,
        &BTreeSet::new(),
        DeletionPolicy::Retain,
    )
    .await;
    let failed: Vec<_> = pass
        .outcomes
        .iter()
        .filter_map(|o| o.result.as_ref().err().map(|e| (o.key.clone(), e.clone())))
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    let (key, err) = &failed[0];
    assert_eq!(
        key,
        &ObjectKey::new(ObjectKind::Topic, stream_name(&scope, "c"))
    );
    assert_eq!(err.kind, BrokerErrorKind::Rejected, "{err}");
    assert!(!err.is_transient(), "waits for a change, not a retry loop");
    assert!(err.message.contains("limits exceeded"), "{err}");
    assert_eq!(pass.owned.len(), 3, "what fitted is ours: {:?}", pass.owned);
    empty_limited_account(&js).await;
}

#[tokio::test]
async fn retain_keeps_and_delete_waits_for_unacknowledged_messages() {
    let (spec, secrets) = spec();
    let scope = support::scope("nats");
    let env = env(spec.clone());
    let b = backend(&spec, &secrets).await;
    let topics = vec![topic("jobs", &[("workers", Some(5))]), topic("keep", &[])];
    let first = pass(
        &*b,
        &scope,
        &env,
        &topics,
        &BTreeSet::new(),
        DeletionPolicy::Retain,
    )
    .await;

    let js = admin_js().await;
    let jobs = stream_name(&scope, "jobs");
    js.publish(subject(&scope, "jobs"), "job".into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    let workers = consumer(&js, &jobs, "workers").await.expect("workers");
    let held = workers
        .fetch()
        .max_messages(1)
        .messages()
        .await
        .expect("fetch")
        .next()
        .await
        .expect("a message")
        .expect("message");

    let remaining = vec![topic("keep", &[])];
    let retained = pass(
        &*b,
        &scope,
        &env,
        &remaining,
        &first.owned,
        DeletionPolicy::Retain,
    )
    .await;
    assert!(
        retained.plan.actions.is_empty(),
        "Retain deletes nothing: {:?}",
        retained.plan
    );
    assert_eq!(retained.plan.retained.len(), 3);

    let blocked = pass(
        &*b,
        &scope,
        &env,
        &remaining,
        &retained.owned,
        DeletionPolicy::Delete,
    )
    .await;
    let blocked_keys: BTreeSet<String> = blocked
        .plan
        .refused
        .iter()
        .filter(|r| r.kind == RefusalKind::RetireBlocked)
        .map(|r| r.key.to_string())
        .collect();
    assert_eq!(
        blocked_keys,
        BTreeSet::from([
            format!("topic/{jobs}"),
            format!("subscription/{jobs}/workers")
        ]),
        "{:?}",
        blocked.plan
    );
    assert!(
        blocked
            .plan
            .actions
            .iter()
            .all(|a| matches!(a, Action::Delete { key } if key.kind == ObjectKind::DeadLetter)),
        "only the empty dead-letter stream goes: {:?}",
        blocked.plan.actions
    );
    assert!(
        stream_info(&js, &jobs).await.is_some(),
        "a stream with unacked messages survives Delete"
    );

    held.double_ack().await.expect("ack");
    let deleted = pass(
        &*b,
        &scope,
        &env,
        &remaining,
        &blocked.owned,
        DeletionPolicy::Delete,
    )
    .await;
    assert!(
        deleted.plan.refused.is_empty(),
        "{:?}",
        deleted.plan.refused
    );
    assert!(
        stream_info(&js, &jobs).await.is_none(),
        "drained stream deleted"
    );
    let keep = stream_name(&scope, "keep");
    assert!(
        stream_info(&js, &keep).await.is_some(),
        "the wanted topic stays"
    );
    assert_eq!(
        deleted.owned,
        BTreeSet::from([ObjectKey::new(ObjectKind::Topic, keep)])
    );
}

#[tokio::test]
async fn a_foreign_stream_conflicts_and_is_never_deleted() {
    let (spec, secrets) = spec();
    let scope = support::scope("nats");
    let b = backend(&spec, &secrets).await;
    let js = admin_js().await;
    let orders = stream_name(&scope, "orders");
    js.create_stream(jetstream::stream::Config {
        name: orders.clone(),
        subjects: vec![subject(&scope, "orders")],
        ..Default::default()
    })
    .await
    .expect("a stream someone else made");

    let topics = vec![topic("orders", &[])];
    let pass = support::converge(
        &*b,
        &scope,
        &env(spec.clone()),
        &topics,
        &BTreeSet::new(),
        DeletionPolicy::Delete,
    )
    .await;
    assert!(pass.plan.actions.is_empty(), "{:?}", pass.plan.actions);
    assert!(
        pass.plan
            .refused
            .iter()
            .any(|r| r.kind == RefusalKind::Conflict),
        "{:?}",
        pass.plan
    );
    // Even claimed in status, a stream without our marker is not deleted.
    let key = ObjectKey::new(ObjectKind::Topic, orders.clone());
    let outcomes = b.apply(&scope, &[Action::Delete { key }]).await;
    let err = outcomes[0].result.as_ref().expect_err("not ours");
    assert_eq!(err.kind, BrokerErrorKind::Rejected, "{err}");
    assert!(stream_info(&js, &orders).await.is_some());
    js.delete_stream(&orders).await.expect("cleanup");
}

/// Through the real controller: a storage change leaves the MessageBroker Stalled with the
/// reason and the stream as it was; going back to the stream's storage makes it Ready again.
#[tokio::test]
async fn the_controller_reports_a_storage_change_as_stalled() {
    let (kube, ns) = support::setup("nats-stalled").await;
    support::put_secret(
        &kube,
        &ns,
        "nats",
        &[
            ("username", &env_var("SWITCHYARD_NATS_USER")),
            ("password", &env_var("SWITCHYARD_NATS_PASSWORD")),
        ],
    )
    .await;
    let ctl = support::start_real_controller(kube.clone(), &ns);
    let manifest = |storage: &str| {
        format!(
            "{}spec:\n  topics: [{{name: orders, subscriptions: [{{name: billing}}]}}]\n  envs:\n    - {{slug: dev, type: NatsJetStream, natsJetStream: {{servers: [\"{}\"], credentialsSecretRef: {{name: nats}}, storage: {storage}}}}}\n",
            support::mb_header("bus"),
            url()
        )
    };
    let timeout = Duration::from_secs(60);
    support::apply_mb(&kube, &ns, &manifest("File")).await;
    support::wait_ready(&kube, &ns, "bus", timeout).await;

    support::apply_mb(&kube, &ns, &manifest("Memory")).await;
    let mb = support::wait_for_mb(&kube, &ns, "bus", timeout, "Stalled", |m| {
        support::condition_true(m, "Stalled")
    })
    .await;
    let stalled = support::condition(&mb, "Stalled").expect("Stalled");
    assert_eq!(
        stalled.reason,
        reasons::STREAM_STORAGE_CHANGE,
        "{stalled:?}"
    );
    assert!(stalled.message.contains("storage"), "{}", stalled.message);
    assert!(!support::condition_true(&mb, "Ready"));
    let js = admin_js().await;
    let stream = stream_name(&Scope::new(ns.clone(), "bus"), "orders");
    assert_eq!(
        stream_info(&js, &stream)
            .await
            .expect("orders")
            .config
            .storage,
        StorageType::File,
        "the stream keeps its storage"
    );

    support::apply_mb(&kube, &ns, &manifest("File")).await;
    support::wait_ready(&kube, &ns, "bus", timeout).await;
    ctl.stop().await;
}

#[tokio::test]
async fn an_nkey_seed_from_a_secret_authenticates() {
    let (mut spec, _) = spec();
    spec.credentials_secret_ref = None;
    spec.nkey_seed_secret_ref = Some(switchyard::api::SecretKeyRef {
        name: "nats".into(),
        key: "seed".into(),
    });
    let mut secrets = ResolvedSecrets::default();
    secrets.insert("nats", "seed", env_var("SWITCHYARD_NATS_NKEY_SEED"));
    let b = backend(&spec, &secrets).await;
    b.check().await.expect("the NKey user passes the check");
    let scope = support::scope("nats");
    pass(
        &*b,
        &scope,
        &env(spec.clone()),
        &[topic("orders", &[("billing", None)])],
        &BTreeSet::new(),
        DeletionPolicy::Retain,
    )
    .await;
    assert!(
        stream_info(&admin_js().await, &stream_name(&scope, "orders"))
            .await
            .is_some()
    );

    // A well-formed seed the server does not know.
    let mut stranger = ResolvedSecrets::default();
    stranger.insert(
        "nats",
        "seed",
        "SUADT6YVWC3CMCPBSR6K7QMCLMCVGEL6EJKAUPXH53ZDSLLWMDRDAJ4VEM",
    );
    let err = backend(&spec, &stranger)
        .await
        .check()
        .await
        .expect_err("an unknown NKey");
    assert_eq!(err.kind, BrokerErrorKind::Authentication, "{err}");
    assert!(!err.message.contains("SUADT6YV"), "{err}");
}
