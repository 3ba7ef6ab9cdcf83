//! The RabbitMQ backend against the real rabbitmq-server started by `tests/env/up.sh rabbitmq`.
//! Each test works under its own namespace (and, where it needs one, its own vhost or user), so
//! the tests run in parallel.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use switchyard::api::conditions::reasons;
use switchyard::api::{
    BrokerType, CredentialsSecretRef, DeadLetterSpec, DeletionPolicy, EnvSpec, QueueType,
    RabbitMqSpec, SubscriptionSpec, TopicSpec,
};
use switchyard::brokers::{
    self, Action, ActionOutcome, Backend, BrokerErrorKind, ObjectKey, ObjectKind, Observed, Scope,
    rabbitmq,
};
use switchyard::secrets::ResolvedSecrets;

use crate::support::{self, env_var, scope, unique};

const SECRET: &str = "rabbit-user";

pub(crate) struct Broker {
    pub host: String,
    pub port: i32,
    pub username: String,
    pub password: String,
    pub management: String,
}

/// The env `prd` on the test RabbitMQ, with its credentials in a Secret `rabbit` created in
/// `namespace`.
pub(crate) async fn env_with_secret(client: &kube::Client, namespace: &str) -> String {
    let b = broker();
    put_credentials(client, namespace, &b).await;
    env_yaml(&b)
}

/// The Secret `rabbit` with broker `b`'s administrator, which [`env_yaml`] references.
pub(crate) async fn put_credentials(client: &kube::Client, namespace: &str, b: &Broker) {
    support::put_secret(
        client,
        namespace,
        "rabbit",
        &[("username", &b.username), ("password", &b.password)],
    )
    .await;
}

/// The env `prd` on broker `b`, with its credentials in the Secret `rabbit`.
pub(crate) fn env_yaml(b: &Broker) -> String {
    format!(
        "{{slug: prd, type: RabbitMQ, rabbitmq: {{host: \"{}\", port: {}, managementUrl: \"{}\", credentialsSecretRef: {{name: rabbit}}}}}}",
        b.host, b.port, b.management
    )
}

pub(crate) fn broker() -> Broker {
    Broker {
        host: env_var("SWITCHYARD_RABBITMQ_HOST"),
        port: env_var("SWITCHYARD_RABBITMQ_PORT")
            .parse()
            .expect("SWITCHYARD_RABBITMQ_PORT is a number"),
        username: env_var("SWITCHYARD_RABBITMQ_USERNAME"),
        password: env_var("SWITCHYARD_RABBITMQ_PASSWORD"),
        management: env_var("SWITCHYARD_RABBITMQ_MANAGEMENT_URL"),
    }
}

fn spec(b: &Broker, management: bool) -> RabbitMqSpec {
    RabbitMqSpec {
        url: None,
        host: Some(b.host.clone()),
        port: Some(b.port),
        vhost: None,
        tls: None,
        credentials_secret_ref: Some(CredentialsSecretRef {
            name: SECRET.into(),
            username_key: "username".into(),
            password_key: "password".into(),
        }),
        queue_type: QueueType::Quorum,
        management_url: management.then(|| b.management.clone()),
    }
}

fn secrets(username: &str, password: &str) -> ResolvedSecrets {
    let mut s = ResolvedSecrets::default();
    s.insert(SECRET, "username", username);
    s.insert(SECRET, "password", password);
    s
}

fn env(spec: RabbitMqSpec) -> EnvSpec {
    EnvSpec {
        slug: "dev".into(),
        broker_type: BrokerType::RabbitMQ,
        adopt_existing: false,
        kafka: None,
        redis: None,
        rabbitmq: Some(spec),
        google_pub_sub: None,
        aws_sqs: None,
        nats_jet_stream: None,
        app_credentials_secret_ref: None,
    }
}

fn topic(name: &str, retention: Option<&str>, subs: &[&str]) -> TopicSpec {
    TopicSpec {
        name: name.into(),
        partitions: None,
        retention: retention.map(str::to_string),
        ordered: false,
        subscriptions: subs
            .iter()
            .map(|s| SubscriptionSpec {
                name: s.to_string(),
                dead_letter: None,
            })
            .collect(),
    }
}

async fn backend(b: &Broker, management: bool) -> Arc<dyn Backend> {
    rabbitmq::connect(
        &spec(b, management),
        &secrets(&b.username, &b.password),
        &Default::default(),
    )
    .await
    .expect("connect builds a client")
}

/// One reconcile pass for one env, the way the controller runs it.
type Pass = brokers::Converged;

async fn pass(
    backend: &dyn Backend,
    scope: &Scope,
    env: &EnvSpec,
    topics: &[TopicSpec],
    owned: &BTreeSet<ObjectKey>,
    policy: DeletionPolicy,
) -> Pass {
    let pass = support::converge(backend, scope, env, topics, owned, policy).await;
    assert_eq!(
        pass.outcomes.len(),
        pass.plan.actions.len(),
        "one outcome per action"
    );
    pass
}

fn assert_all_ok(outcomes: &[ActionOutcome]) {
    let failed: Vec<_> = outcomes.iter().filter(|o| o.result.is_err()).collect();
    assert!(failed.is_empty(), "failed actions: {failed:?}");
}

async fn observe_all(
    backend: &dyn Backend,
    scope: &Scope,
    env: &EnvSpec,
    topics: &[TopicSpec],
) -> Observed {
    let desired = brokers::desired(scope, env, topics, &Default::default()).expect("desired");
    let keys: Vec<ObjectKey> = desired.objects.iter().map(|o| o.key.clone()).collect();
    backend.observe(scope, &keys).await.expect("observe")
}

fn exchange_name(scope: &Scope, topic: &str) -> String {
    format!("{}.{}.{topic}", scope.namespace, scope.name)
}

fn queue_name(scope: &Scope, topic: &str, sub: &str) -> String {
    format!("{}.{}.{topic}.{sub}", scope.namespace, scope.name)
}

/// A management API call as the administrator; panics on failure.
pub(crate) async fn admin(
    b: &Broker,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) {
    let mut req = reqwest::Client::new()
        .request(method.clone(), format!("{}{path}", b.management))
        .basic_auth(&b.username, Some(&b.password));
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.expect("management API answers");
    assert!(
        resp.status().is_success(),
        "{method} {path}: HTTP {}",
        resp.status()
    );
}

pub(crate) fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A user of its own on the default vhost, with these `tags` and, when given, the
/// `(configure, write, read)` permission patterns.
pub(crate) async fn create_user(
    b: &Broker,
    user: &str,
    password: &str,
    tags: &str,
    permissions: Option<(&str, &str, &str)>,
) {
    admin(
        b,
        reqwest::Method::PUT,
        &format!("/api/users/{}", enc(user)),
        Some(serde_json::json!({"password": password, "tags": tags})),
    )
    .await;
    if let Some((configure, write, read)) = permissions {
        admin(
            b,
            reqwest::Method::PUT,
            &format!("/api/permissions/%2F/{}", enc(user)),
            Some(serde_json::json!({"configure": configure, "write": write, "read": read})),
        )
        .await;
    }
}

/// Remove a user [`create_user`] made.
pub(crate) async fn delete_user(b: &Broker, user: &str) {
    admin(
        b,
        reqwest::Method::DELETE,
        &format!("/api/users/{}", enc(user)),
        None,
    )
    .await;
}

pub(crate) async fn amqp(b: &Broker) -> Connection {
    let uri = format!(
        "amqp://{}:{}@{}:{}/%2f",
        enc(&b.username),
        enc(&b.password),
        b.host,
        b.port
    );
    Connection::connect(&uri, ConnectionProperties::default())
        .await
        .expect("test AMQP connection")
}

/// Publish with confirms to `exchange`; returns once the broker confirmed every message.
pub(crate) async fn publish(conn: &Connection, exchange: &str, routing_key: &str, count: usize) {
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    for i in 0..count {
        ch.basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            format!("message {i}").as_bytes(),
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirmed");
    }
}

/// Ready messages in a queue, read over AMQP (exact, unlike management statistics).
pub(crate) async fn ready(conn: &Connection, queue: &str) -> u32 {
    let ch = conn.create_channel().await.expect("channel");
    let q = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue exists");
    q.message_count()
}

#[tokio::test]
async fn provisions_everything_and_the_second_pass_is_a_noop() {
    let b = broker();
    let backend = backend(&b, true).await;
    backend.check().await.expect("check passes");
    let s = scope("rmq-prov");
    let env = env(spec(&b, true));
    let mut orders = topic("orders", Some("1h"), &["billing", "shipping"]);
    orders.subscriptions[1].dead_letter = Some(DeadLetterSpec {
        max_delivery_attempts: 5,
    });
    let topics = vec![orders, topic("audit", None, &["archive"])];

    let first = pass(
        &*backend,
        &s,
        &env,
        &topics,
        &BTreeSet::new(),
        DeletionPolicy::Retain,
    )
    .await;
    assert_all_ok(&first.outcomes);
    // 2 exchanges, 3 queues, 3 bindings, plus DLX + DLQ + their binding.
    assert_eq!(first.plan.actions.len(), 11, "{:?}", first.plan.actions);
    assert!(
        first
            .plan
            .actions
            .iter()
            .all(|a| matches!(a, Action::Create { .. }))
    );

    let second = pass(
        &*backend,
        &s,
        &env,
        &topics,
        &first.owned,
        DeletionPolicy::Retain,
    )
    .await;
    assert!(
        second.plan.is_noop(),
        "second pass must be a no-op: {:?}",
        second.plan
    );
    assert_eq!(second.owned, first.owned);

    // What the broker holds, read back through the management API.
    let observed = observe_all(&*backend, &s, &env, &topics).await;
    let shipping =
        &observed.objects[&ObjectKey::new(ObjectKind::Queue, queue_name(&s, "orders", "shipping"))];
    assert_eq!(shipping.config["x-queue-type"], "quorum");
    assert_eq!(shipping.config["x-message-ttl"], "3600000");
    assert_eq!(shipping.config["x-delivery-limit"], "5");
    assert_eq!(
        shipping.config["x-dead-letter-exchange"],
        format!("{}.dlx", queue_name(&s, "orders", "shipping"))
    );
    assert_eq!(shipping.owner.as_deref(), Some(s.owner().as_str()));
    assert_eq!(shipping.messages, Some(0));
    let archive =
        &observed.objects[&ObjectKey::new(ObjectKind::Queue, queue_name(&s, "audit", "archive"))];
    assert_eq!(archive.config["x-message-ttl"], "unset");
    let exchange =
        &observed.objects[&ObjectKey::new(ObjectKind::Topic, exchange_name(&s, "orders"))];
    assert_eq!(exchange.config["type"], "topic");
    assert_eq!(exchange.owner.as_deref(), Some(s.owner().as_str()));
}

#[tokio::test]
async fn a_message_published_to_the_exchange_reaches_every_subscription() {
    let b = broker();
    let backend = backend(&b, true).await;
    let s = scope("rmq-fanout");
    let env = env(spec(&b, true));
    let topics = vec![topic(
        "orders",
        Some("10m"),
        &["billing", "shipping", "audit"],
    )];
    let first = pass(
        &*backend,
        &s,
        &env,
        &topics,
        &BTreeSet::new(),
        DeletionPolicy::Retain,
    )
    .await;
    assert_all_ok(&first.outcomes);

    let conn = amqp(&b).await;
    publish(&conn, &exchange_name(&s, "orders"), "order.created.eu", 2).await;
    for sub in ["billing", "shipping", "audit"] {
        assert_eq!(
            ready(&conn, &queue_name(&s, "orders", sub)).await,
            2,
            "subscription {sub} gets every message"
        );
    }
}

#[tokio::test]
async fn objects_deleted_behind_the_operators_back_come_back() {
    let b = broker();
    let backend = backend(&b, true).await;
    let s = scope("rmq-drift");
    let env = env(spec(&b, true));
    let topics = vec![topic("orders", None, &["billing", "shipping"])];
    let first = pass(
        &*backend,
        &s,
        &env,
        &topics,
        &BTreeSet::new(),
        DeletionPolicy::Retain,
    )
    .await;
    assert_all_ok(&first.outcomes);

    let billing = queue_name(&s, "orders", "billing");
    let shipping = queue_name(&s, "orders", "shipping");
    let exchange = exchange_name(&s, "orders");
    admin(
        &b,
        reqwest::Method::DELETE,
        &format!("/api/queues/%2F/{}", enc(&billing)),
        None,
    )
    .await;
    admin(
        &b,
        reqwest::Method::DELETE,
        &format!(
            "/api/bindings/%2F/e/{}/q/{}/%23",
            enc(&exchange),
            enc(&shipping)
        ),
        None,
    )
    .await;

    let repair = pass(
        &*backend,
        &s,
        &env,
        &topics,
        &first.owned,
        DeletionPolicy::Retain,
    )
    .await;
    assert_all_ok(&repair.outcomes);
    let recreated: BTreeSet<ObjectKey> = repair
        .plan
        .actions
        .iter()
        .filter(|a| matches!(a, Action::Create { .. }))
        .map(|a| a.key().clone())
        .collect();
    assert_eq!(
        recreated,
        BTreeSet::from([
            ObjectKey::new(ObjectKind::Queue, billing.clone()),
            rabbitmq::binding_key(&exchange, &billing),
            rabbitmq::binding_key(&exchange, &shipping),
        ]),
        "the deleted queue (with its binding) and the deleted binding are recreated"
    );
    let after = pass(
        &*backend,
        &s,
        &env,
        &topics,
        &repair.owned,
        DeletionPolicy::Retain,
    )
    .await;
    assert!(after.plan.is_noop(), "{:?}", after.plan);

    let conn = amqp(&b).await;
    publish(&conn, &exchange, "x", 1).await;
    assert_eq!(ready(&conn, &billing).await, 1);
    assert_eq!(ready(&conn, &shipping).await, 1);
}

#[tokio::test]
async fn changed_retention_is_refused_and_the_pooled_connection_survives() {
    let b = broker();
    let backend = backend(&b, true).await;
    let s = scope("rmq-immutable");
    let env = env(spec(&b, true));
    let topics = vec![topic("orders", Some("1h"), &["billing"])];
    let first = pass(
        &*backend,
        &s,
        &env,
        &topics,
        &BTreeSet::new(),
        DeletionPolicy::Retain,
    )
    .await;
    assert_all_ok(&first.outcomes);

    let changed = vec![topic("orders", Some("2h"), &["billing"])];
    let refused = pass(
        &*backend,
        &s,
        &env,
        &changed,
        &first.owned,
        DeletionPolicy::Retain,
    )
    .await;
    assert!(
        refused.plan.actions.is_empty(),
        "{:?}",
        refused.plan.actions
    );
    let r = refused
        .plan
        .permanent_refusal()
        .expect("a permanent refusal");
    assert_eq!(
        switchyard::failure::refusal_reason(r.kind),
        reasons::IMMUTABLE_QUEUE_ARGUMENTS
    );
    assert!(
        r.message.contains("x-message-ttl")
            && r.message.contains("3600000")
            && r.message.contains("7200000"),
        "{}",
        r.message
    );

    // Force the redeclare the planner refuses: RabbitMQ answers PRECONDITION_FAILED and closes
    // the channel. The pooled connection must still serve other actions and other resources.
    let desired = brokers::desired(&s, &env, &changed, &Default::default()).expect("desired");
    let queue = desired
        .objects
        .iter()
        .find(|o| o.key.kind == ObjectKind::Queue)
        .expect("queue")
        .clone();
    let exchange = desired
        .objects
        .iter()
        .find(|o| o.key.kind == ObjectKind::Topic)
        .expect("exchange")
        .clone();
    let outcomes = backend
        .apply(
            &s,
            &[
                Action::Update {
                    object: queue.clone(),
                    changes: vec![],
                },
                Action::Update {
                    object: queue,
                    changes: vec![],
                },
            ],
        )
        .await;
    for o in &outcomes {
        let e = o
            .result
            .as_ref()
            .expect_err("redeclare with other arguments fails");
        assert_eq!(e.kind, BrokerErrorKind::Rejected, "{e}");
        assert!(
            e.message.contains("PRECONDITION_FAILED") || e.message.contains("inequivalent"),
            "{e}"
        );
    }
    let ok = backend
        .apply(
            &s,
            &[Action::Update {
                object: exchange,
                changes: vec![],
            }],
        )
        .await;
    assert_all_ok(&ok);

    let other = scope("rmq-immutable-2");
    let second = pass(
        &*backend,
        &other,
        &env,
        &topics,
        &BTreeSet::new(),
        DeletionPolicy::Retain,
    )
    .await;
    assert_all_ok(&second.outcomes);
    assert!(!second.plan.actions.is_empty());
    backend
        .check()
        .await
        .expect("the pooled connection still works");
}

#[tokio::test]
async fn retain_keeps_and_delete_removes_only_empty_objects() {
    let b = broker();
    let backend = backend(&b, true).await;
    let s = scope("rmq-retire");
    let env = env(spec(&b, true));
    let topics = vec![
        topic("keep", None, &["a"]),
        topic("gone", None, &["full", "empty"]),
    ];
    let first = pass(
        &*backend,
        &s,
        &env,
        &topics,
        &BTreeSet::new(),
        DeletionPolicy::Retain,
    )
    .await;
    assert_all_ok(&first.outcomes);
    let conn = amqp(&b).await;
    let full = queue_name(&s, "gone", "full");
    let empty = queue_name(&s, "gone", "empty");
    // Publish straight to one queue so only it holds messages.
    publish(&conn, "", &full, 3).await;

    let remaining = vec![topic("keep", None, &["a"])];
    let retain = pass(
        &*backend,
        &s,
        &env,
        &remaining,
        &first.owned,
        DeletionPolicy::Retain,
    )
    .await;
    assert!(
        retain.plan.actions.is_empty(),
        "Retain deletes nothing: {:?}",
        retain.plan.actions
    );
    assert_eq!(retain.plan.retained.len(), 5, "{:?}", retain.plan.retained);
    assert_eq!(ready(&conn, &empty).await, 0, "still there under Retain");

    let delete = pass(
        &*backend,
        &s,
        &env,
        &remaining,
        &retain.owned,
        DeletionPolicy::Delete,
    )
    .await;
    assert_all_ok(&delete.outcomes);
    let deleted: BTreeSet<ObjectKey> = delete
        .plan
        .actions
        .iter()
        .map(|a| a.key().clone())
        .collect();
    let gone_exchange = exchange_name(&s, "gone");
    assert_eq!(
        deleted,
        BTreeSet::from([
            ObjectKey::new(ObjectKind::Topic, gone_exchange.clone()),
            ObjectKey::new(ObjectKind::Queue, empty.clone()),
            rabbitmq::binding_key(&gone_exchange, &full),
            rabbitmq::binding_key(&gone_exchange, &empty),
        ])
    );
    let blocked = &delete.plan.refused;
    assert_eq!(blocked.len(), 1, "{blocked:?}");
    assert_eq!(
        switchyard::failure::refusal_reason(blocked[0].kind),
        reasons::RETIRE_BLOCKED
    );
    assert_eq!(
        blocked[0].key,
        ObjectKey::new(ObjectKind::Queue, full.clone())
    );
    assert!(
        blocked[0].is_transient() && blocked[0].message.contains("3 message"),
        "{}",
        blocked[0].message
    );
    assert_eq!(
        ready(&conn, &full).await,
        3,
        "the non-empty queue and its messages stay"
    );
    assert!(
        delete
            .owned
            .contains(&ObjectKey::new(ObjectKind::Queue, full.clone()))
    );

    // Once drained, the next pass deletes it.
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_purge(full.as_str().into(), QueuePurgeOptions::default())
        .await
        .expect("purge");
    let drained = pass(
        &*backend,
        &s,
        &env,
        &remaining,
        &delete.owned,
        DeletionPolicy::Delete,
    )
    .await;
    assert_all_ok(&drained.outcomes);
    assert_eq!(
        drained.plan.actions,
        vec![Action::Delete {
            key: ObjectKey::new(ObjectKind::Queue, full.clone())
        }]
    );
    let observed = backend
        .observe(&s, &[ObjectKey::new(ObjectKind::Queue, full)])
        .await
        .expect("observe");
    assert!(observed.objects.is_empty(), "deleted once drained");
    let kept = observe_all(&*backend, &s, &env, &remaining).await;
    assert_eq!(kept.objects.len(), 3, "the remaining topic is untouched");
}

#[tokio::test]
async fn bad_credentials_are_an_authentication_failure() {
    let b = broker();
    let backend = rabbitmq::connect(
        &spec(&b, false),
        &secrets(&b.username, "wrong-password"),
        &Default::default(),
    )
    .await
    .expect("connect is lazy");
    let err = backend.check().await.expect_err("refused");
    assert_eq!(err.kind, BrokerErrorKind::Authentication, "{err}");
    assert!(!err.message.contains("wrong-password"), "{err}");
}

#[tokio::test]
async fn a_vhost_without_permission_or_missing_is_classified() {
    let b = broker();
    let vhost = unique("rmq-vhost");
    admin(
        &b,
        reqwest::Method::PUT,
        &format!("/api/vhosts/{}", enc(&vhost)),
        None,
    )
    .await;
    let user = unique("rmq-user");
    create_user(&b, &user, "user-secret-pw", "", None).await;

    let mut no_permission = spec(&b, false);
    no_permission.vhost = Some(vhost.clone());
    let backend = rabbitmq::connect(
        &no_permission,
        &secrets(&user, "user-secret-pw"),
        &Default::default(),
    )
    .await
    .expect("lazy");
    let err = backend
        .check()
        .await
        .expect_err("no permission on the vhost");
    assert_eq!(err.kind, BrokerErrorKind::PermissionDenied, "{err}");

    let mut missing = spec(&b, false);
    missing.vhost = Some(format!("{vhost}-missing"));
    let backend = rabbitmq::connect(
        &missing,
        &secrets(&b.username, &b.password),
        &Default::default(),
    )
    .await
    .expect("lazy");
    let err = backend.check().await.expect_err("no such vhost");
    assert_eq!(err.kind, BrokerErrorKind::NotFound, "{err}");

    // Granted permissions make the same user work on that vhost.
    admin(
        &b,
        reqwest::Method::PUT,
        &format!("/api/permissions/{}/{}", enc(&vhost), enc(&user)),
        Some(serde_json::json!({"configure": ".*", "write": ".*", "read": ".*"})),
    )
    .await;
    let backend = rabbitmq::connect(
        &no_permission,
        &secrets(&user, "user-secret-pw"),
        &Default::default(),
    )
    .await
    .expect("lazy");
    backend.check().await.expect("permitted now");
    admin(
        &b,
        reqwest::Method::DELETE,
        &format!("/api/vhosts/{}", enc(&vhost)),
        None,
    )
    .await;
    delete_user(&b, &user).await;
}

#[tokio::test]
async fn an_unreachable_broker_is_classified_and_connect_stays_lazy() {
    let b = broker();
    let mut s = spec(&b, false);
    // A port nothing listens on: bind one, then close it.
    let port = crate::support::free_port();
    s.port = Some(i32::from(port));
    let backend = rabbitmq::connect(&s, &secrets(&b.username, &b.password), &Default::default())
        .await
        .expect("connect must not fail while the broker is down");
    let started = Instant::now();
    let err = backend.check().await.expect_err("nothing listens");
    assert_eq!(err.kind, BrokerErrorKind::Unreachable, "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn without_the_management_api_provisioning_converges_and_bindings_are_repaired() {
    let b = broker();
    let backend = backend(&b, false).await;
    let s = scope("rmq-nomgmt");
    let env = env(spec(&b, false));
    let topics = vec![topic("orders", Some("1h"), &["billing"])];
    let desired = brokers::desired(&s, &env, &topics, &Default::default()).expect("desired");
    assert!(desired.notes.iter().any(|n| n.contains("managementUrl")));
    let first = pass(
        &*backend,
        &s,
        &env,
        &topics,
        &BTreeSet::new(),
        DeletionPolicy::Retain,
    )
    .await;
    assert_all_ok(&first.outcomes);
    let second = pass(
        &*backend,
        &s,
        &env,
        &topics,
        &first.owned,
        DeletionPolicy::Retain,
    )
    .await;
    assert!(second.plan.is_noop(), "{:?}", second.plan);

    let exchange = exchange_name(&s, "orders");
    let billing = queue_name(&s, "orders", "billing");
    admin(
        &b,
        reqwest::Method::DELETE,
        &format!(
            "/api/bindings/%2F/e/{}/q/{}/%23",
            enc(&exchange),
            enc(&billing)
        ),
        None,
    )
    .await;
    // Observing re-declares the binding (idempotent), so messages flow again.
    let _ = pass(
        &*backend,
        &s,
        &env,
        &topics,
        &second.owned,
        DeletionPolicy::Retain,
    )
    .await;
    let conn = amqp(&b).await;
    publish(&conn, &exchange, "k", 1).await;
    assert_eq!(ready(&conn, &billing).await, 1);
}

#[tokio::test]
async fn a_closed_pooled_connection_is_reopened() {
    let b = broker();
    // A user of its own, so closing its connections touches no other test.
    let user = unique("rmq-reconnect");
    create_user(
        &b,
        &user,
        "reconnect-pw",
        "monitoring",
        Some((".*", ".*", ".*")),
    )
    .await;
    let backend = rabbitmq::connect(
        &spec(&b, true),
        &secrets(&user, "reconnect-pw"),
        &Default::default(),
    )
    .await
    .expect("lazy");
    let s = scope("rmq-reconnect");
    let env = env(spec(&b, true));
    let topics = vec![topic("orders", None, &["billing"])];
    let first = pass(
        &*backend,
        &s,
        &env,
        &topics,
        &BTreeSet::new(),
        DeletionPolicy::Retain,
    )
    .await;
    assert_all_ok(&first.outcomes);

    // Close the operator's connection from the broker side (as a node restart or an
    // administrator would). The management API lists connections once their stats arrive.
    let deadline = Instant::now() + Duration::from_secs(20);
    let names = loop {
        let conns: Vec<serde_json::Value> = reqwest::Client::new()
            .get(format!("{}/api/connections", b.management))
            .basic_auth(&b.username, Some(&b.password))
            .send()
            .await
            .expect("list connections")
            .json()
            .await
            .expect("json");
        let names: Vec<String> = conns
            .iter()
            .filter(|c| c["user"] == user.as_str())
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect();
        if !names.is_empty() {
            break names;
        }
        assert!(
            Instant::now() < deadline,
            "the operator's connection never showed up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for name in &names {
        admin(
            &b,
            reqwest::Method::DELETE,
            &format!("/api/connections/{}", enc(name)),
            None,
        )
        .await;
    }

    // The next pass reconnects and converges: add a subscription so it must do real work.
    let more = vec![topic("orders", None, &["billing", "audit"])];
    let second = pass(
        &*backend,
        &s,
        &env,
        &more,
        &first.owned,
        DeletionPolicy::Retain,
    )
    .await;
    assert_all_ok(&second.outcomes);
    assert_eq!(second.plan.actions.len(), 2, "{:?}", second.plan.actions);
    backend.check().await.expect("reconnected");
    delete_user(&b, &user).await;
}

/// Provisioning time for 100 topics × 3 subscriptions in one MessageBroker. Run with
/// `cargo test --test e2e rabbitmq::provisioning_time -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "measurement, not a check"]
async fn provisioning_time_100_topics_3_subscriptions() {
    let b = broker();
    let backend = backend(&b, true).await;
    let s = scope("rmq-scale");
    let env = env(spec(&b, true));
    let topics: Vec<TopicSpec> = (0..100)
        .map(|i| topic(&format!("topic-{i}"), Some("24h"), &["a", "b", "c"]))
        .collect();
    let started = Instant::now();
    let first = pass(
        &*backend,
        &s,
        &env,
        &topics,
        &BTreeSet::new(),
        DeletionPolicy::Retain,
    )
    .await;
    let provision = started.elapsed();
    assert_all_ok(&first.outcomes);
    let started = Instant::now();
    let second = pass(
        &*backend,
        &s,
        &env,
        &topics,
        &first.owned,
        DeletionPolicy::Retain,
    )
    .await;
    let noop = started.elapsed();
    assert!(second.plan.is_noop());
    println!(
        "RabbitMQ: provisioned 100 topics x 3 subscriptions ({} objects) in {:.2?}; no-op pass in {:.2?}",
        first.plan.actions.len(),
        provision,
        noop
    );
    let delete = pass(
        &*backend,
        &s,
        &env,
        &[],
        &second.owned,
        DeletionPolicy::Delete,
    )
    .await;
    assert_all_ok(&delete.outcomes);
}
