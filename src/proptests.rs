//! Property tests over everything that reads user or broker input without I/O: manifest
//! validation, spec checks, the per-broker mapping and the planner. None of it may panic, whatever
//! the input; the planner keeps its promises (Retain deletes nothing, only owned objects are
//! deleted, only missing ones created) on any observed state.
//!
//! Case counts are set per property (the cheap ones get the most) and add up to 100,000 per run:
//! 45,000 durations + 30,000 names + 12,000 JSON specs + 12,700 plans + 300 manifests.

use std::collections::BTreeSet;

use proptest::prelude::*;
use serde_json::{Value, json};

use crate::api::{BrokerType, DeletionPolicy, EnvSpec, MessageBrokerSpec, parse_duration};
use crate::brokers::plan::{PlanInput, owned_after, plan};
use crate::brokers::{
    self, Action, ActionOutcome, BrokerError, BrokerErrorKind, ObjectKey, ObjectKind, Observed,
    ObservedObject, Scope, naming,
};
use crate::secrets::ResolvedSecrets;

const BROKER_TYPES: [BrokerType; 6] = BrokerType::ALL;

const KINDS: [ObjectKind; 5] = [
    ObjectKind::DeadLetter,
    ObjectKind::Topic,
    ObjectKind::Queue,
    ObjectKind::Subscription,
    ObjectKind::Binding,
];

/// Strings worth trying where names and values go: ordinary, empty, odd characters, too long.
fn samples() -> Vec<String> {
    let mut v: Vec<String> = [
        "a",
        "orders",
        "order-created",
        "x.y",
        "t1",
        "-bad",
        "Bad",
        "",
        " ",
        "a/b",
        "a:b",
        "a@b",
        "ü",
        "日本",
        "\u{0}",
        "..",
        "retention.ms",
        "x-message-ttl",
        "replication.factor",
        "redis://r:6379",
        "k:9092",
        "eu-west-1",
        "http://e:1",
        "1",
        "-1",
        "0",
        "NaN",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push("a".repeat(64));
    v.push("b".repeat(101));
    v.push("c.".repeat(150));
    v
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(samples()),
        2 => "[a-z][a-z0-9.-]{0,10}",
        1 => any::<String>(),
    ]
}

fn duration_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "([0-9]{1,4}(ms|s|m|h)){1,3}",
        "[0-9.]{0,30}(ms|s|m|h|d|)",
        ".{0,12}",
        Just("99999999999999999999h".to_string()),
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => (-5i64..2000).prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
    ]
}

fn opt<T: std::fmt::Debug + Clone + 'static>(
    s: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<Option<T>> {
    proptest::option::weighted(0.6, s).boxed()
}

fn secret_ref() -> impl Strategy<Value = Value> {
    (text(), text()).prop_map(|(name, key)| json!({"name": name, "key": key}))
}

fn topic() -> impl Strategy<Value = Value> {
    (
        text(),
        opt(number()),
        opt(duration_text()),
        any::<bool>(),
        prop::collection::vec((text(), opt(number())), 0..4),
    )
        .prop_map(|(name, partitions, retention, ordered, subs)| {
            let subs: Vec<Value> = subs
                .into_iter()
                .map(|(name, dl)| match dl {
                    Some(n) => json!({"name": name, "deadLetter": {"maxDeliveryAttempts": n}}),
                    None => json!({"name": name}),
                })
                .collect();
            let mut t = json!({"name": name, "ordered": ordered, "subscriptions": subs});
            if let Some(p) = partitions {
                t["partitions"] = p;
            }
            if let Some(r) = retention {
                t["retention"] = r.into();
            }
            t
        })
}

/// An env carrying every broker's settings block, so any broker type can be planned from it.
fn env() -> impl Strategy<Value = Value> {
    let kafka = (
        prop::collection::vec(text(), 0..3),
        opt(number()),
        opt(text()),
        prop::collection::btree_map(text(), text(), 0..3),
        opt((text(), text())),
    )
        .prop_map(|(servers, rf, prefix, config, sasl)| {
            let mut k = json!({"bootstrapServers": servers, "topicConfig": config});
            if let Some(rf) = rf {
                k["replicationFactor"] = rf;
            }
            if let Some(p) = prefix {
                k["topicPrefix"] = p.into();
            }
            if let Some((name, _)) = sasl {
                k["sasl"] =
                    json!({"mechanism": "SCRAM-SHA-512", "credentialsSecretRef": {"name": name}});
            }
            k
        });
    let redis = (
        prop_oneof![
            Just("redis://r:6379/0".to_string()),
            Just("rediss://r:6380".to_string()),
            Just("redis://u:p@r:6379".to_string()),
            text()
        ],
        opt(number()),
        opt(secret_ref()),
    )
        .prop_map(|(url, db, pw)| {
            let mut r = json!({"url": url});
            if let Some(db) = db {
                r["database"] = db;
            }
            if let Some(pw) = pw {
                r["passwordSecretRef"] = pw;
            }
            r
        });
    let rabbit = (
        opt(text()),
        opt(text()),
        opt(number()),
        opt(text()),
        any::<bool>(),
    )
        .prop_map(|(url, host, port, vhost, quorum)| {
            let mut r = json!({"queueType": if quorum { "Quorum" } else { "Classic" }});
            if let Some(u) = url {
                r["url"] = format!("amqp://{u}").into();
            }
            if let Some(h) = host {
                r["host"] = h.into();
            }
            if let Some(p) = port {
                r["port"] = p;
            }
            if let Some(v) = vhost {
                r["vhost"] = v.into();
            }
            r
        });
    let pubsub = (text(), opt(text()), opt(number())).prop_map(|(project, endpoint, ack)| {
        let mut g = json!({"projectId": project});
        if let Some(e) = endpoint {
            g["endpoint"] = format!("http://{e}").into();
        }
        if let Some(a) = ack {
            g["ackDeadlineSeconds"] = a;
        }
        g
    });
    let nats = (text(), opt(text()), opt(number()), any::<bool>()).prop_map(
        |(server, prefix, replicas, memory)| {
            let mut n = json!({
                "servers": [format!("nats://{server}")],
                "storage": if memory { "Memory" } else { "File" },
            });
            if let Some(p) = prefix {
                n["subjectPrefix"] = p.into();
            }
            if let Some(r) = replicas {
                n["replicas"] = r;
            }
            n
        },
    );
    let sqs = (text(), opt(text())).prop_map(|(region, endpoint)| {
        let mut a = json!({"region": region});
        if let Some(e) = endpoint {
            a["endpoint"] = e.into();
        }
        a
    });
    (
        text(),
        0usize..BROKER_TYPES.len(),
        any::<bool>(),
        kafka,
        redis,
        rabbit,
        pubsub,
        sqs,
        nats,
    )
        .prop_map(|(slug, t, adopt, kafka, redis, rabbit, pubsub, sqs, nats)| {
            json!({
                "slug": slug, "type": BROKER_TYPES[t].as_str(), "adoptExisting": adopt,
                "kafka": kafka, "redis": redis, "rabbitmq": rabbit, "googlePubSub": pubsub, "awsSqs": sqs,
                "natsJetStream": nats,
            })
        })
}

/// A MessageBroker-shaped spec with arbitrary values.
fn spec_json(envs: std::ops::Range<usize>) -> impl Strategy<Value = Value> {
    (
        prop::collection::vec(topic(), 0..5),
        prop::collection::vec(env(), envs),
        any::<bool>(),
        opt(text()),
    )
        .prop_map(|(topics, envs, delete, display)| {
            let mut s = json!({
                "topics": topics, "envs": envs,
                "deletionPolicy": if delete { "Delete" } else { "Retain" },
            });
            if let Some(d) = display {
                s["displayName"] = d.into();
            }
            s
        })
}

/// Arbitrary JSON, with keys drawn mostly from the spec's own vocabulary.
fn any_json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        prop::sample::select(vec![
            "topics",
            "envs",
            "name",
            "partitions",
            "retention",
            "subscriptions",
            "deadLetter",
            "maxDeliveryAttempts",
            "slug",
            "type",
            "kafka",
            "redis",
            "rabbitmq",
            "googlePubSub",
            "awsSqs",
            "natsJetStream",
            "servers",
            "bootstrapServers",
            "url",
            "region",
            "projectId",
            "deletionPolicy",
        ])
        .prop_map(String::from),
        text(),
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        number(),
        text().prop_map(Value::from),
        prop::sample::select(vec![
            "Kafka",
            "Redis",
            "RabbitMQ",
            "GooglePubSub",
            "AwsSqs",
            "NatsJetStream",
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn scope() -> Scope {
    Scope::new("shop", "bus")
}

/// Run every pure step the controller runs on a spec; returns the desired states produced.
fn exercise_spec(spec: &MessageBrokerSpec) -> Vec<(BrokerType, brokers::DesiredState)> {
    let _ = crate::controller::validate(spec);
    let mut out = Vec::new();
    for env in &spec.envs {
        let _ = crate::controller::endpoint_identity(env);
        let _ = brokers::secret_keys(env);
        for t in BROKER_TYPES {
            let env = EnvSpec {
                broker_type: t,
                ..env.clone()
            };
            let mut secrets = ResolvedSecrets::default();
            let _ = brokers::connection_info(&env, &secrets);
            for (name, key) in brokers::secret_keys(&env) {
                secrets.insert(&name, &key, "value");
            }
            let _ = brokers::connection_info(&env, &secrets);
            if let Ok(d) = brokers::desired(&scope(), &env, &spec.topics, &Default::default()) {
                out.push((t, d));
            }
        }
    }
    out
}

fn observed_object() -> impl Strategy<Value = ObservedObject> {
    (
        opt(any::<i32>()),
        prop::collection::btree_map(text(), text(), 0..2),
        opt(prop::sample::select(vec!["shop/bus", "other/bus", ""])),
        opt(any::<u64>()),
    )
        .prop_map(|(partitions, config, owner, messages)| ObservedObject {
            partitions,
            config,
            owner: owner.map(String::from),
            messages,
        })
}

/// How the broker looks relative to the desired objects: which exist, which are owned, which
/// foreign objects lie around, and what apply reports back.
#[derive(Debug, Clone)]
struct World {
    present: Vec<(bool, bool, ObservedObject)>,
    foreign: Vec<(usize, String, ObservedObject, bool)>,
    policy_delete: bool,
    adopt: bool,
    outcomes: Vec<Option<usize>>,
}

fn world() -> impl Strategy<Value = World> {
    (
        prop::collection::vec((any::<bool>(), any::<bool>(), observed_object()), 0..12),
        prop::collection::vec((0usize..5, text(), observed_object(), any::<bool>()), 0..3),
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec(opt(0usize..8), 0..12),
    )
        .prop_map(|(present, foreign, policy_delete, adopt, outcomes)| World {
            present,
            foreign,
            policy_delete,
            adopt,
            outcomes,
        })
}

fn check_plan(t: BrokerType, desired: &brokers::DesiredState, w: &World) {
    let mut observed = Observed::default();
    let mut owned = BTreeSet::new();
    for (i, o) in desired.objects.iter().enumerate() {
        let Some((exists, is_owned, obj)) = w.present.get(i % w.present.len().max(1)) else {
            break;
        };
        let mut obj = obj.clone();
        if !obj.config.is_empty() && i % 2 == 0 {
            obj.config.extend(o.config.clone());
        }
        if *exists {
            observed.objects.insert(o.key.clone(), obj);
        }
        if *is_owned {
            owned.insert(o.key.clone());
        }
    }
    for (kind, name, obj, is_owned) in &w.foreign {
        let key = ObjectKey::new(KINDS[*kind], name.clone());
        observed.objects.insert(key.clone(), obj.clone());
        if *is_owned {
            owned.insert(key);
        }
    }
    let s = scope();
    let policy = if w.policy_delete {
        DeletionPolicy::Delete
    } else {
        DeletionPolicy::Retain
    };
    let input = PlanInput {
        scope: &s,
        owned: &owned,
        deletion_policy: policy,
        adopt_existing: w.adopt,
        capabilities: brokers::capabilities(t),
    };
    let p = plan(desired, &observed, &input);
    let wanted: BTreeSet<&ObjectKey> = desired.objects.iter().map(|o| &o.key).collect();
    for a in &p.actions {
        match a {
            Action::Delete { key } => {
                assert_eq!(policy, DeletionPolicy::Delete, "Retain deleted {key}");
                assert!(owned.contains(key), "deleted {key}, which is not owned");
                assert!(!wanted.contains(key), "deleted {key}, which the spec wants");
                let held = observed.objects.get(key).and_then(|o| o.messages);
                assert!(
                    held.unwrap_or(0) == 0,
                    "deleted {key}, which holds {held:?} message(s)"
                );
            }
            Action::Create { object } => {
                assert!(
                    !observed.objects.contains_key(&object.key),
                    "created {} which exists",
                    object.key
                );
            }
            Action::Adopt { object } => assert!(w.adopt, "adopted {} unasked", object.key),
            Action::AddPartitions { from, to, .. } => assert!(to > from),
            Action::Update { changes, .. } => assert!(!changes.is_empty()),
        }
    }
    // Outcomes as a broker might report them: too few, too many, for other keys, failed.
    let outcomes: Vec<ActionOutcome> = w
        .outcomes
        .iter()
        .enumerate()
        .map(|(i, o)| ActionOutcome {
            key: p
                .actions
                .get(o.unwrap_or(i))
                .map(|a| a.key().clone())
                .unwrap_or_else(|| ObjectKey::new(ObjectKind::Topic, "stray")),
            result: if o.is_some_and(|n| n % 3 == 0) {
                Err(BrokerError::new(BrokerErrorKind::Other, "garbage"))
            } else {
                Ok(())
            },
        })
        .collect();
    let _ = owned_after(
        &owned,
        &scope().owner(),
        desired,
        &observed,
        &outcomes,
        &p.actions,
    );
    let aligned = brokers::align_outcomes(&p.actions, outcomes);
    assert_eq!(aligned.len(), p.actions.len());
    for (a, o) in p.actions.iter().zip(&aligned) {
        assert_eq!(a.key(), &o.key);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 45_000, failure_persistence: None, ..ProptestConfig::default() })]

    /// Any string is either a duration or an error, never a panic.
    #[test]
    fn durations_never_panic(s in duration_text()) {
        let _ = parse_duration(&s);
    }

}

proptest! {
    #![proptest_config(ProptestConfig { cases: 30_000, failure_persistence: None, ..ProptestConfig::default() })]

    /// Broker-side names stay within each broker's limits whatever the parts are.
    #[test]
    fn physical_names_fit_the_broker(parts in prop::collection::vec(text(), 1..4), reserve in 0usize..20) {
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        for rules in [&naming::KAFKA, &naming::REDIS, &naming::RABBITMQ, &naming::PUBSUB, &naming::SQS, &naming::SNS] {
            let name = naming::physical(rules, &parts, reserve);
            prop_assert!(name.len() <= rules.max_len.max(9), "{name} too long for {}", rules.max_len);
        }
    }
}

/// A Kubernetes namespace (DNS label), a MessageBroker name (DNS subdomain) and a topic name.
fn owner_and_topic() -> impl Strategy<Value = (String, String, String)> {
    (
        "[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?",
        "[a-z0-9]{1,4}(\\.[a-z0-9]{1,4}){0,3}",
        "[a-z]([a-z0-9.-]{0,8}[a-z0-9])?",
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 20_000, failure_persistence: None, ..ProptestConfig::default() })]

    /// Two MessageBrokers never meet on a new object's name, whatever dots their names and
    /// topics hold (`a.b` + `c` and `a` + `b.c` stay apart).
    #[test]
    fn scoped_names_never_meet_across_message_brokers(
        (ns1, mb1, t1) in owner_and_topic(),
        (ns2, mb2, t2) in owner_and_topic(),
        sub in prop::option::of("[a-z][a-z0-9-]{0,6}"),
    ) {
        prop_assume!((&ns1, &mb1) != (&ns2, &mb2));
        let (s1, s2) = (Scope::new(ns1, mb1), Scope::new(ns2, mb2));
        for rules in [&naming::KAFKA, &naming::REDIS, &naming::RABBITMQ, &naming::PUBSUB, &naming::SQS, &naming::SNS] {
            let mut p1 = vec![t1.as_str()];
            let mut p2 = vec![t2.as_str()];
            if let Some(sub) = &sub {
                p1.push(sub);
                p2.push(sub);
            }
            let a = naming::scoped(rules, &s1, &p1, 0);
            let b = naming::scoped(rules, &s2, &p2, 0);
            prop_assert_ne!(&a, &b, "{:?} {:?} and {:?} {:?}", s1, p1, s2, p2);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12_000, failure_persistence: None, ..ProptestConfig::default() })]

    /// Arbitrary JSON either fails to read as a spec, or goes through every pure step.
    #[test]
    fn arbitrary_json_specs_never_panic(v in prop_oneof![any_json(), spec_json(0..3)]) {
        if let Ok(spec) = serde_json::from_value::<MessageBrokerSpec>(v) {
            exercise_spec(&spec);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12_700, failure_persistence: None, ..ProptestConfig::default() })]

    /// Specs of the right shape with arbitrary values, mapped onto every broker and planned
    /// against arbitrary observed state, ownership and apply outcomes.
    #[test]
    fn planning_keeps_its_promises_on_any_broker_state(v in spec_json(1..2), w in world()) {
        if let Ok(spec) = serde_json::from_value::<MessageBrokerSpec>(v) {
            for (t, desired) in exercise_spec(&spec) {
                check_plan(t, &desired, &w);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    /// Client-side manifest validation (schema walk and CEL) answers with messages, never a panic.
    #[test]
    fn manifest_validation_never_panics(spec in prop_oneof![spec_json(0..3), any_json()], name in text()) {
        let manifest = json!({
            "apiVersion": "switchyard.dev/v1alpha1", "kind": "MessageBroker",
            "metadata": {"name": name}, "spec": spec,
        });
        let _ = crate::validation::validate(&manifest);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4_000, failure_persistence: None, ..ProptestConfig::default() })]

    /// Retiring a side (a swap's old broker, a removed env, a deletion) under Delete never
    /// deletes an object that holds messages: it is kept, owned, and reported as blocked.
    #[test]
    fn retirement_never_deletes_what_holds_messages(
        objects in prop::collection::vec((0usize..5, text(), observed_object()), 0..12),
    ) {
        let mut observed = Observed::default();
        let mut owned = BTreeSet::new();
        for (kind, name, obj) in objects {
            let key = ObjectKey::new(KINDS[kind], name);
            observed.objects.insert(key.clone(), obj);
            owned.insert(key);
        }
        let s = scope();
        for t in BrokerType::ALL {
            let input = PlanInput {
                scope: &s,
                owned: &owned,
                deletion_policy: DeletionPolicy::Delete,
                adopt_existing: false,
                capabilities: brokers::capabilities(t),
            };
            let p = plan(&brokers::DesiredState::default(), &observed, &input);
            for (key, obj) in &observed.objects {
                let deleted = p.actions.iter().any(|a| matches!(a, Action::Delete { key: k } if k == key));
                if obj.messages.unwrap_or(0) > 0 {
                    prop_assert!(!deleted, "{key} holds {:?} message(s) and was deleted", obj.messages);
                    prop_assert!(p.retained.contains(key), "{key} is not kept");
                    prop_assert!(
                        p.refused.iter().any(|r| &r.key == key && r.kind == brokers::RefusalKind::RetireBlocked),
                        "{key} is not reported as blocking retirement"
                    );
                } else {
                    prop_assert!(deleted, "{key} is empty and owned but was not deleted");
                }
            }
        }
    }
}
