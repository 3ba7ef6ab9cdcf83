//! The Redis backend against the real redis-server started by `tests/env/redis.sh`: an open
//! server (SWITCHYARD_REDIS_URL) and one that requires a password (SWITCHYARD_REDIS_AUTH_URL).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use switchyard::api::conditions::reasons;
use switchyard::api::{BrokerType, DeletionPolicy, EnvSpec, RedisSpec, SecretKeyRef, TopicSpec};
use switchyard::brokers::{
    self, Action, Backend, BrokerErrorKind, ObjectKey, ObjectKind, Scope, plan, redis::OWNERS_KEY,
};
use switchyard::secrets::ResolvedSecrets;

use crate::support::{self, env_var, unique};

fn open_url() -> String {
    env_var("SWITCHYARD_REDIS_URL")
}

fn spec(url: &str) -> RedisSpec {
    RedisSpec {
        url: url.to_string(),
        database: None,
        username_secret_ref: None,
        password_secret_ref: None,
        ca_secret_ref: None,
    }
}

fn env(spec: RedisSpec, adopt_existing: bool) -> EnvSpec {
    EnvSpec {
        slug: "dev".into(),
        broker_type: BrokerType::Redis,
        adopt_existing,
        kafka: None,
        redis: Some(spec),
        rabbitmq: None,
        google_pub_sub: None,
        aws_sqs: None,
        nats_jet_stream: None,
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

/// Credentials for the protected server in a Secret named `redis`.
fn secrets(username: Option<&str>, password: &str) -> (RedisSpec, ResolvedSecrets) {
    let mut s = spec(&env_var("SWITCHYARD_REDIS_AUTH_URL"));
    let mut resolved = ResolvedSecrets::default();
    s.password_secret_ref = Some(SecretKeyRef {
        name: "redis".into(),
        key: "password".into(),
    });
    resolved.insert("redis", "password", password);
    if let Some(user) = username {
        s.username_secret_ref = Some(SecretKeyRef {
            name: "redis".into(),
            key: "username".into(),
        });
        resolved.insert("redis", "username", user);
    }
    (s, resolved)
}

async fn backend(spec: &RedisSpec, secrets: &ResolvedSecrets) -> Arc<dyn Backend> {
    brokers::redis::connect(spec, secrets, &Default::default())
        .await
        .expect("connect builds a client")
}

/// A plain connection for arranging and inspecting the server behind the backend's back.
async fn admin(url: &str, password: Option<&str>) -> MultiplexedConnection {
    let mut conn = redis::Client::open(url)
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("admin connection");
    if let Some(p) = password {
        redis::cmd("AUTH")
            .arg(p)
            .query_async::<()>(&mut conn)
            .await
            .expect("admin AUTH");
    }
    conn
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
    assert_eq!(pass.outcomes.len(), pass.plan.actions.len());
    for o in &pass.outcomes {
        assert!(o.result.is_ok(), "{}: {:?}", o.key, o.result);
    }
    pass
}

fn stream_name(scope: &Scope, topic: &str) -> String {
    format!("{}:{}:{topic}", scope.namespace, scope.name)
}

async fn group_names(conn: &mut MultiplexedConnection, stream: &str) -> Vec<String> {
    let reply: redis::streams::StreamInfoGroupsReply =
        conn.xinfo_groups(stream).await.expect("XINFO GROUPS");
    let mut names: Vec<String> = reply.groups.into_iter().map(|g| g.name).collect();
    names.sort();
    names
}

#[tokio::test]
async fn provisions_streams_groups_and_dead_letters_then_is_a_noop() {
    let url = open_url();
    let scope = support::scope("redis");
    let env = env(spec(&url), false);
    let b = backend(&spec(&url), &ResolvedSecrets::default()).await;
    b.check().await.expect("open server passes the check");

    let mut orders = topic("orders", &[("billing", None), ("shipping", Some(5))]);
    orders.retention = Some("1h".into());
    orders.partitions = Some(6);
    let topics = vec![orders, topic("audit", &[])];

    let first = pass(
        &*b,
        &scope,
        &env,
        &topics,
        &BTreeSet::new(),
        DeletionPolicy::Retain,
    )
    .await;
    assert_eq!(first.plan.actions.len(), 5, "{:?}", first.plan.actions);
    assert!(
        first
            .plan
            .actions
            .iter()
            .all(|a| matches!(a, Action::Create { .. }))
    );

    let mut conn = admin(&url, None).await;
    let orders = stream_name(&scope, "orders");
    let audit = stream_name(&scope, "audit");
    let dlq = format!("{orders}:dlq");
    for key in [&orders, &audit, &dlq] {
        let t: String = redis::cmd("TYPE")
            .arg(key)
            .query_async(&mut conn)
            .await
            .expect("TYPE");
        assert_eq!(t, "stream", "{key}");
        let len: u64 = conn.xlen(key).await.expect("XLEN");
        assert_eq!(len, 0, "{key} is created empty");
    }
    assert_eq!(
        group_names(&mut conn, &orders).await,
        vec!["billing", "shipping"]
    );
    assert!(
        group_names(&mut conn, &audit).await.is_empty(),
        "no helper group left behind"
    );

    let owner: Option<String> = conn
        .hget(OWNERS_KEY, format!("topic/{orders}"))
        .await
        .expect("HGET");
    assert_eq!(owner, Some(scope.owner()));
    let group_owner: Option<String> = conn
        .hget(OWNERS_KEY, format!("subscription/{orders}/shipping"))
        .await
        .expect("HGET");
    assert_eq!(group_owner, Some(scope.owner()));

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
    assert_eq!(second.owned.len(), 5);

    let desired = brokers::desired(&scope, &env, &topics, &Default::default()).expect("desired");
    assert!(
        desired.notes.iter().any(|n| n.contains("partitions")),
        "{:?}",
        desired.notes
    );
    assert_eq!(desired.names["orders/shipping/dlq"], dlq);
}

#[tokio::test]
async fn deleted_streams_and_groups_come_back_and_groups_start_at_the_end() {
    let url = open_url();
    let scope = support::scope("redis");
    let env = env(spec(&url), false);
    let b = backend(&spec(&url), &ResolvedSecrets::default()).await;
    let topics = vec![
        topic("orders", &[("billing", None), ("shipping", None)]),
        topic("audit", &[("archive", None)]),
    ];
    let first = pass(
        &*b,
        &scope,
        &env,
        &topics,
        &BTreeSet::new(),
        DeletionPolicy::Retain,
    )
    .await;

    let mut conn = admin(&url, None).await;
    let orders = stream_name(&scope, "orders");
    let audit = stream_name(&scope, "audit");
    // An entry written before the group is re-created must not be delivered to it.
    let _: String = conn
        .xadd(&orders, "*", &[("k", "old")])
        .await
        .expect("XADD");
    let _: i64 = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg(&orders)
        .arg("billing")
        .query_async(&mut conn)
        .await
        .expect("XGROUP DESTROY");
    let _: i64 = conn.del(&audit).await.expect("DEL");

    let repair = pass(
        &*b,
        &scope,
        &env,
        &topics,
        &first.owned,
        DeletionPolicy::Retain,
    )
    .await;
    let mut recreated: Vec<String> = repair
        .plan
        .actions
        .iter()
        .map(|a| match a {
            Action::Create { object } => object.key.to_string(),
            other => panic!("only creates expected, got {other:?}"),
        })
        .collect();
    recreated.sort();
    assert_eq!(
        recreated,
        vec![
            format!("subscription/{audit}/archive"),
            format!("subscription/{orders}/billing"),
            format!("topic/{audit}"),
        ]
    );
    assert_eq!(
        group_names(&mut conn, &orders).await,
        vec!["billing", "shipping"]
    );
    assert_eq!(group_names(&mut conn, &audit).await, vec!["archive"]);

    let read: redis::streams::StreamReadReply = conn
        .xread_options(
            &[&orders],
            &[">"],
            &redis::streams::StreamReadOptions::default()
                .group("billing", "c1")
                .count(10),
        )
        .await
        .expect("XREADGROUP");
    let delivered: usize = read.keys.iter().map(|k| k.ids.len()).sum();
    assert_eq!(
        delivered, 0,
        "a re-created group starts at the end of the stream"
    );

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
async fn retention_trims_entries_older_than_the_window() {
    let url = open_url();
    let scope = support::scope("redis");
    let env = env(spec(&url), false);
    let b = backend(&spec(&url), &ResolvedSecrets::default()).await;
    let mut t = topic("events", &[("reader", None)]);
    t.retention = Some("1h".into());
    let topics = vec![t];
    let first = pass(
        &*b,
        &scope,
        &env,
        &topics,
        &BTreeSet::new(),
        DeletionPolicy::Retain,
    )
    .await;

    let mut conn = admin(&url, None).await;
    let stream = stream_name(&scope, "events");
    // Two entries from 1970 (explicit ids), one from now.
    for id in ["1000-0", "2000-0", "*"] {
        let _: String = conn.xadd(&stream, id, &[("k", "v")]).await.expect("XADD");
    }
    let recent: String = redis::cmd("XREVRANGE")
        .arg(&stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async::<redis::streams::StreamRangeReply>(&mut conn)
        .await
        .expect("XREVRANGE")
        .ids
        .first()
        .map(|e| e.id.clone())
        .expect("an entry");

    let trim = pass(
        &*b,
        &scope,
        &env,
        &topics,
        &first.owned,
        DeletionPolicy::Retain,
    )
    .await;
    assert!(
        matches!(&trim.plan.actions[..], [Action::Update { object, .. }] if object.key.kind == ObjectKind::Topic),
        "an overdue trim is planned as an update of the topic: {:?}",
        trim.plan.actions
    );
    let ids: redis::streams::StreamRangeReply = conn.xrange_all(&stream).await.expect("XRANGE");
    let ids: Vec<String> = ids.ids.into_iter().map(|e| e.id).collect();
    assert_eq!(
        ids,
        vec![recent],
        "old entries trimmed, the recent one kept"
    );

    let after = pass(
        &*b,
        &scope,
        &env,
        &topics,
        &trim.owned,
        DeletionPolicy::Retain,
    )
    .await;
    assert!(after.plan.is_noop(), "{:?}", after.plan);
}

#[tokio::test]
async fn retain_keeps_and_delete_waits_for_pending_entries() {
    let url = open_url();
    let scope = support::scope("redis");
    let env = env(spec(&url), false);
    let b = backend(&spec(&url), &ResolvedSecrets::default()).await;
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

    let mut conn = admin(&url, None).await;
    let jobs = stream_name(&scope, "jobs");
    let id: String = conn.xadd(&jobs, "*", &[("k", "v")]).await.expect("XADD");
    let _: redis::streams::StreamReadReply = conn
        .xread_options(
            &[&jobs],
            &[">"],
            &redis::streams::StreamReadOptions::default()
                .group("workers", "c1")
                .count(1),
        )
        .await
        .expect("XREADGROUP");

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
        .filter(|r| r.kind == switchyard::brokers::RefusalKind::RetireBlocked)
        .map(|r| r.key.to_string())
        .collect();
    assert!(
        blocked_keys.contains(&format!("topic/{jobs}")),
        "{:?}",
        blocked.plan
    );
    assert!(blocked_keys.contains(&format!("subscription/{jobs}/workers")));
    assert!(blocked.plan.refused.iter().all(|r| r.is_transient()));
    assert!(
        blocked
            .plan
            .refused
            .iter()
            .any(|r| r.message.contains("1 message")),
        "{:?}",
        blocked.plan.refused
    );
    // The empty dead-letter stream is not blocked.
    assert!(
        blocked
            .plan
            .actions
            .iter()
            .all(|a| matches!(a, Action::Delete { key } if key.kind == ObjectKind::DeadLetter))
    );
    let t: String = redis::cmd("TYPE")
        .arg(&jobs)
        .query_async(&mut conn)
        .await
        .expect("TYPE");
    assert_eq!(t, "stream", "a stream with pending entries survives Delete");

    let acked: i64 = conn.xack(&jobs, "workers", &[&id]).await.expect("XACK");
    assert_eq!(acked, 1);
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
    let t: String = redis::cmd("TYPE")
        .arg(&jobs)
        .query_async(&mut conn)
        .await
        .expect("TYPE");
    assert_eq!(t, "none", "drained stream deleted");
    let keep = stream_name(&scope, "keep");
    let t: String = redis::cmd("TYPE")
        .arg(&keep)
        .query_async(&mut conn)
        .await
        .expect("TYPE");
    assert_eq!(t, "stream", "the wanted topic stays");
    let owner: Option<String> = conn
        .hget(OWNERS_KEY, format!("topic/{jobs}"))
        .await
        .expect("HGET");
    assert_eq!(owner, None, "registry entry removed with the stream");
    assert_eq!(
        deleted.owned,
        BTreeSet::from([ObjectKey::new(ObjectKind::Topic, keep)])
    );
}

#[tokio::test]
async fn a_foreign_stream_conflicts_unless_adopted_and_is_never_deleted() {
    let url = open_url();
    let scope = support::scope("redis");
    let b = backend(&spec(&url), &ResolvedSecrets::default()).await;
    let mut conn = admin(&url, None).await;
    let stream = stream_name(&scope, "legacy");
    let _: String = conn.xadd(&stream, "*", &[("k", "v")]).await.expect("XADD");
    let topics = vec![topic("legacy", &[])];

    let strict = env(spec(&url), false);
    let refused = pass(
        &*b,
        &scope,
        &strict,
        &topics,
        &BTreeSet::new(),
        DeletionPolicy::Delete,
    )
    .await;
    assert!(refused.plan.actions.is_empty(), "{:?}", refused.plan);
    assert_eq!(refused.plan.refused.len(), 1);
    assert_eq!(
        switchyard::failure::refusal_reason(refused.plan.refused[0].kind),
        reasons::CONFLICT
    );

    // Claimed in status but not recorded in the registry: Delete leaves it alone.
    let claimed = BTreeSet::from([ObjectKey::new(ObjectKind::Topic, stream.clone())]);
    let desired = brokers::desired(&scope, &strict, &[], &Default::default()).expect("desired");
    let input = plan::PlanInput {
        scope: &scope,
        owned: &claimed,
        deletion_policy: DeletionPolicy::Delete,
        adopt_existing: false,
        capabilities: brokers::capabilities(BrokerType::Redis),
    };
    let (_, p) = brokers::observe_and_plan(&*b, &desired, &input)
        .await
        .expect("observe");
    let outcomes = b.apply(&scope, &p.actions).await;
    assert_eq!(outcomes.len(), 1);
    let err = outcomes[0]
        .result
        .as_ref()
        .expect_err("not in the registry");
    assert_eq!(err.kind, BrokerErrorKind::Rejected);
    assert!(err.message.contains(OWNERS_KEY), "{}", err.message);
    let len: u64 = conn.xlen(&stream).await.expect("XLEN");
    assert_eq!(len, 1, "the foreign stream is untouched");

    let adopting = env(spec(&url), true);
    let adopted = pass(
        &*b,
        &scope,
        &adopting,
        &topics,
        &BTreeSet::new(),
        DeletionPolicy::Retain,
    )
    .await;
    assert!(
        matches!(&adopted.plan.actions[..], [Action::Adopt { .. }]),
        "{:?}",
        adopted.plan
    );
    let owner: Option<String> = conn
        .hget(OWNERS_KEY, format!("topic/{stream}"))
        .await
        .expect("HGET");
    assert_eq!(owner, Some(scope.owner()));
    let len: u64 = conn.xlen(&stream).await.expect("XLEN");
    assert_eq!(len, 1, "adoption keeps the entries");
    let after = pass(
        &*b,
        &scope,
        &adopting,
        &topics,
        &adopted.owned,
        DeletionPolicy::Retain,
    )
    .await;
    assert!(after.plan.is_noop(), "{:?}", after.plan);

    // Recorded as another MessageBroker's: taken, even when adopting.
    let other_owner_key = format!("topic/{stream}");
    let _: i64 = conn
        .hset(OWNERS_KEY, &other_owner_key, "someone/else")
        .await
        .expect("HSET");
    let desired =
        brokers::desired(&scope, &adopting, &topics, &Default::default()).expect("desired");
    let empty = BTreeSet::new();
    let input = plan::PlanInput {
        scope: &scope,
        owned: &empty,
        deletion_policy: DeletionPolicy::Retain,
        adopt_existing: true,
        capabilities: brokers::capabilities(BrokerType::Redis),
    };
    let (_, p) = brokers::observe_and_plan(&*b, &desired, &input)
        .await
        .expect("observe");
    assert_eq!(p.refused.len(), 1);
    assert_eq!(
        switchyard::failure::refusal_reason(p.refused[0].kind),
        reasons::CONFLICT
    );
    assert!(
        p.refused[0].message.contains("someone/else"),
        "{}",
        p.refused[0].message
    );
}

#[tokio::test]
async fn check_tells_unreachable_wrong_password_and_missing_password_apart() {
    let open = backend(&spec(&open_url()), &ResolvedSecrets::default()).await;
    open.check().await.expect("open server");

    // Port 1 on loopback: nothing listens.
    let down = backend(&spec("redis://127.0.0.1:1/0"), &ResolvedSecrets::default()).await;
    let started = Instant::now();
    let err = down.check().await.expect_err("nothing listens");
    assert_eq!(err.kind, BrokerErrorKind::Unreachable, "{}", err.message);
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "bounded by the check timeout"
    );

    let password = env_var("SWITCHYARD_REDIS_AUTH_PASSWORD");
    let (good, good_secrets) = secrets(None, &password);
    backend(&good, &good_secrets)
        .await
        .check()
        .await
        .expect("right password");

    let wrong_password = "not-the-password-distinctive";
    let (bad, bad_secrets) = secrets(None, wrong_password);
    let err = backend(&bad, &bad_secrets)
        .await
        .check()
        .await
        .expect_err("wrong password");
    assert_eq!(err.kind, BrokerErrorKind::Authentication, "{}", err.message);
    assert_eq!(
        switchyard::failure::broker_reason(err.kind),
        reasons::AUTHENTICATION_FAILED
    );
    assert!(!err.message.contains(wrong_password), "{}", err.message);

    let none = spec(&env_var("SWITCHYARD_REDIS_AUTH_URL"));
    let err = backend(&none, &ResolvedSecrets::default())
        .await
        .check()
        .await
        .expect_err("no password");
    assert_eq!(err.kind, BrokerErrorKind::Authentication, "{}", err.message);
}

#[tokio::test]
async fn an_acl_user_without_xgroup_is_permission_denied() {
    let auth_url = env_var("SWITCHYARD_REDIS_AUTH_URL");
    let admin_password = env_var("SWITCHYARD_REDIS_AUTH_PASSWORD");
    let mut conn = admin(&auth_url, Some(&admin_password)).await;
    let limited = unique("limited");
    let full = unique("full");
    let user_password = "user-password-distinctive";
    for (user, rules) in [(&limited, vec!["+@all", "-xgroup"]), (&full, vec!["+@all"])] {
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER")
            .arg(user)
            .arg("reset")
            .arg("on")
            .arg(format!(">{user_password}"))
            .arg("~*");
        for r in rules {
            cmd.arg(r);
        }
        cmd.query_async::<()>(&mut conn).await.expect("ACL SETUSER");
    }

    let (s, sec) = secrets(Some(&limited), user_password);
    let err = backend(&s, &sec)
        .await
        .check()
        .await
        .expect_err("no XGROUP");
    assert_eq!(
        err.kind,
        BrokerErrorKind::PermissionDenied,
        "{}",
        err.message
    );
    assert_eq!(
        switchyard::failure::broker_reason(err.kind),
        reasons::PERMISSION_DENIED
    );
    assert!(err.message.contains("XGROUP"), "{}", err.message);
    assert!(!err.message.contains(user_password), "{}", err.message);

    let (s, sec) = secrets(Some(&full), user_password);
    backend(&s, &sec)
        .await
        .check()
        .await
        .expect("a user with every right passes");

    let (s, sec) = secrets(Some(&limited), "wrong-distinctive");
    let err = backend(&s, &sec)
        .await
        .check()
        .await
        .expect_err("wrong user password");
    assert_eq!(err.kind, BrokerErrorKind::Authentication, "{}", err.message);

    for user in [&limited, &full] {
        let _: i64 = redis::cmd("ACL")
            .arg("DELUSER")
            .arg(user)
            .query_async(&mut conn)
            .await
            .expect("ACL DELUSER");
    }
}

#[tokio::test]
async fn a_least_privilege_acl_user_can_provision_and_retire() {
    let auth_url = env_var("SWITCHYARD_REDIS_AUTH_URL");
    let admin_password = env_var("SWITCHYARD_REDIS_AUTH_PASSWORD");
    let mut conn = admin(&auth_url, Some(&admin_password)).await;
    let scope = support::scope("redis");
    let user = unique("operator");
    let user_password = "operator-password-distinctive";
    // Exactly the rights the RedisSpec documentation lists, on exactly its key patterns.
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER")
        .arg(&user)
        .arg("reset")
        .arg("on")
        .arg(format!(">{user_password}"))
        .arg("~switchyard:*")
        .arg(format!("~{}:{}:*", scope.namespace, scope.name));
    for c in [
        "+ping", "+time", "+type", "+del", "+xgroup", "+xinfo", "+xrange", "+xlen", "+xtrim",
        "+hset", "+hmget", "+hget", "+hdel",
    ] {
        cmd.arg(c);
    }
    cmd.query_async::<()>(&mut conn).await.expect("ACL SETUSER");

    let (s, sec) = secrets(Some(&user), user_password);
    let b = backend(&s, &sec).await;
    b.check()
        .await
        .expect("the documented rights pass the check");
    let env = env(s, false);
    let mut t = topic("orders", &[("billing", Some(5))]);
    t.retention = Some("1h".into());
    let topics = vec![t];
    let first = pass(
        &*b,
        &scope,
        &env,
        &topics,
        &BTreeSet::new(),
        DeletionPolicy::Delete,
    )
    .await;
    assert_eq!(first.plan.actions.len(), 3);
    let stream = stream_name(&scope, "orders");
    let _: String = conn
        .xadd(&stream, "1000-0", &[("k", "v")])
        .await
        .expect("XADD");
    let trimmed = pass(
        &*b,
        &scope,
        &env,
        &topics,
        &first.owned,
        DeletionPolicy::Delete,
    )
    .await;
    assert_eq!(trimmed.plan.actions.len(), 1, "{:?}", trimmed.plan);
    let retired = pass(
        &*b,
        &scope,
        &env,
        &[],
        &trimmed.owned,
        DeletionPolicy::Delete,
    )
    .await;
    assert_eq!(retired.plan.actions.len(), 3, "{:?}", retired.plan);
    assert!(retired.owned.is_empty());
    let t: String = redis::cmd("TYPE")
        .arg(&stream)
        .query_async(&mut conn)
        .await
        .expect("TYPE");
    assert_eq!(t, "none");

    let _: i64 = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&user)
        .query_async(&mut conn)
        .await
        .expect("ACL DELUSER");
}
