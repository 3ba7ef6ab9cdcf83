//! The client library against real brokers: a MessageBroker is provisioned by the controller,
//! its binding Secret is read as an app reads it, and the client publishes and consumes through
//! it. The same checks run on every backend that has a client transport.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use switchyard::client::{Binding, Client, Message, Publisher, Subscriber};

use crate::support::*;

const TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on waiting for one delivery.
const DELIVERY: Duration = Duration::from_secs(20);
/// Bound on a dead consumer's messages coming back. Kafka takes its 45 s session timeout, Redis
/// and SQS 30 s, Pub/Sub its 10 s stream ack deadline, but the emulator goes on handing them to
/// the dead stream too: each time another deadline.
const REDELIVERY: Duration = Duration::from_secs(120);

/// Provision a MessageBroker on `env_yaml` with the conformance topics and return a client for
/// its binding, read from the binding Secret as a projected binding would be.
pub(crate) async fn provisioned(prefix: &str, env_yaml: &str) -> (Client, RunningController) {
    provisioned_with(prefix, env_yaml, &[]).await
}

/// The dead-letter destination of the conformance suite's `billing` subscription.
fn dead_letter(client: &Client) -> String {
    client
        .binding()
        .target("orders", "billing")
        .expect("target")
        .dead_letter
        .expect("billing has a dead-letter destination")
}

/// What a rejected message keeps on brokers that carry them as message attributes (SNS/SQS,
/// Pub/Sub): its key and its header.
fn key_and_header_kept(attribute: impl Fn(&str) -> Option<String>) {
    assert_eq!(
        attribute("ce_partitionkey").as_deref(),
        Some("customer-r"),
        "key kept"
    );
    assert_eq!(attribute("trace-id").as_deref(), Some("tr"), "headers kept");
}

async fn next(sub: &mut Subscriber, what: &str) -> switchyard::client::Delivery {
    tokio::time::timeout(DELIVERY, sub.next())
        .await
        .unwrap_or_else(|_| panic!("{what}: no delivery within {DELIVERY:?}"))
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// What [`conformance`] left in the `billing` subscription's dead-letter destination: the
/// poison message, dead-lettered after its five deliveries, and the message rejected on its
/// first.
struct DeadLetters {
    poison: Message,
    rejected: Message,
    /// The ids of the messages published on `orders` after billing stopped reading.
    after_billing: BTreeSet<String>,
}

impl DeadLetters {
    /// Check the dead letters a backend read (CloudEvents id → payload): these two, once each.
    fn check(&self, read: &[(String, Vec<u8>)]) {
        let mut got: Vec<(&str, &[u8])> = read
            .iter()
            .map(|(id, payload)| (id.as_str(), payload.as_slice()))
            .collect();
        got.sort_unstable();
        let mut want = vec![
            (self.poison.id.as_str(), self.poison.payload.as_slice()),
            (self.rejected.id.as_str(), self.rejected.payload.as_slice()),
        ];
        want.sort_unstable();
        assert_eq!(
            got, want,
            "the dead letters (id, payload): the poison message and the rejected one, once each"
        );
    }

    /// Which of the two a dead letter is, by its CloudEvents id.
    fn is_rejected(&self, id: &str) -> bool {
        assert!(
            id == self.rejected.id || id == self.poison.id,
            "a dead letter {id} that is neither the poison message nor the rejected one"
        );
        id == self.rejected.id
    }
}

/// How long a Pub/Sub subscriber waits for a rejected message to come back before it is taken
/// as gone (see [`rejected_at_once`]).
const PUBSUB_REDELIVERY: Duration = Duration::from_secs(3);

/// A message rejected on its first delivery is not delivered on the subscription again: the
/// next delivery is one published after the reject. Returns it, for the backend to find in the
/// dead-letter destination.
async fn rejected_at_once(
    client: &Client,
    publisher: &Publisher,
    billing: &mut Subscriber,
) -> Message {
    let rejected = Message::new(b"rejected".to_vec())
        .with_key("customer-r")
        .with_header("trace-id", "tr");
    publisher.publish(rejected.clone()).await.expect("publish");
    let d = next(billing, "the message to reject").await;
    assert_eq!(
        (d.message.id.clone(), d.attempt),
        (rejected.id.clone(), 1),
        "first delivery"
    );
    d.reject().await.expect("reject");
    let after = Message::new(b"after the reject".to_vec());
    publisher.publish(after.clone()).await.expect("publish");
    let d = next(billing, "after the reject").await;
    assert_eq!(
        (d.message.id.clone(), d.attempt),
        (after.id.clone(), 1),
        "the rejected message is not delivered again"
    );
    d.ack().await.expect("ack");
    // Elsewhere an unsettled message comes back before newer ones (or stays held, which the
    // backend's checks see). The Pub/Sub client sends acks and nacks in batches, and Pub/Sub
    // may redeliver after newer messages: there billing must stay quiet for a while. (Not on
    // the other brokers: a receive left waiting would take one of the messages published
    // later, which their checks count.)
    if client.binding().broker_type() == "google-pubsub" {
        let more = tokio::time::timeout(PUBSUB_REDELIVERY, billing.next()).await;
        if let Ok(d) = more {
            let d = d.expect("receive");
            panic!(
                "billing received {:?} (attempt {}) after the reject; the rejected message is {}",
                d.message.id, d.attempt, rejected.id
            );
        }
    }
    rejected
}

/// Publish/consume N with headers and CloudEvents attributes, ack, nack → redelivery, dead
/// letter after maxDeliveryAttempts, reject → dead letter at once, competing consumers.
async fn conformance(client: &Client) -> DeadLetters {
    let publisher = client.publisher("orders");
    let mut billing = client
        .subscriber("orders", "billing")
        .await
        .expect("billing");

    // N messages, each delivered once with its headers, key and CloudEvents attributes.
    const N: usize = 20;
    let mut sent = BTreeMap::new();
    for i in 0..N {
        let m = Message::new(format!("order {i}").into_bytes())
            .with_key(format!("customer-{}", i % 3))
            .with_header("trace-id", format!("t{i}"));
        sent.insert(m.id.clone(), m.clone());
        publisher.publish(m).await.expect("publish");
    }
    let mut got = BTreeMap::new();
    for _ in 0..N {
        let d = next(&mut billing, "billing").await;
        assert_eq!(d.attempt, 1, "first delivery");
        got.insert(d.message.id.clone(), d.message.clone());
        d.ack().await.expect("ack");
    }
    assert_eq!(got.len(), N, "every message once");
    for (id, m) in &sent {
        let r = &got[id];
        assert_eq!(r.payload, m.payload);
        assert_eq!(r.key, m.key);
        assert_eq!(r.headers, m.headers);
        assert_eq!((&r.source, &r.type_), (&m.source, &m.type_));
        assert!(r.time.is_some(), "time set at publish");
    }

    // nack → redelivered with the attempt counted; ack settles it.
    let m = Message::new(b"retry me".to_vec());
    publisher.publish(m.clone()).await.expect("publish");
    let d = next(&mut billing, "first delivery").await;
    assert_eq!((d.message.id.clone(), d.attempt), (m.id.clone(), 1));
    d.nack().await.expect("nack");
    let d = next(&mut billing, "redelivery").await;
    assert_eq!((d.message.id.clone(), d.attempt), (m.id.clone(), 2));
    d.ack().await.expect("ack");

    // Dead letter after 5 deliveries: the sixth never reaches the subscriber.
    let poison = Message::new(b"poison".to_vec());
    publisher.publish(poison.clone()).await.expect("publish");
    for attempt in 1..=5 {
        let d = next(&mut billing, "poison").await;
        assert_eq!(
            (d.message.id.clone(), d.attempt),
            (poison.id.clone(), attempt)
        );
        d.nack().await.expect("nack");
    }
    let after = Message::new(b"after the poison".to_vec());
    publisher.publish(after.clone()).await.expect("publish");
    let d = next(&mut billing, "after").await;
    assert_eq!(
        d.message.id, after.id,
        "the poison message was dead-lettered"
    );
    d.ack().await.expect("ack");

    // Rejected on the first delivery: dead-lettered at once, never delivered again.
    let rejected = rejected_at_once(client, &publisher, &mut billing).await;
    // Done with billing: a subscriber left open but unread would still be handed messages on
    // Pub/Sub (its stream) and count deliveries against them.
    drop(billing);

    // Competing consumers share one subscription: every message once, both get some.
    let mut a = client.subscriber("orders", "shipping").await.expect("a");
    let b = client.subscriber("orders", "shipping").await.expect("b");
    // shipping has everything published so far; drain it first.
    let backlog = N + 5;
    let mut seen = BTreeSet::new();
    for _ in 0..backlog {
        let d = next(&mut a, "shipping backlog").await;
        seen.insert(d.message.id.clone());
        d.ack().await.expect("ack");
    }
    assert_eq!(seen.len(), backlog);
    let mut ids = BTreeSet::new();
    for i in 0..10 {
        let m = Message::new(format!("ship {i}").into_bytes());
        ids.insert(m.id.clone());
        publisher.publish(m).await.expect("publish");
    }
    // Each consumer in its own task (a dropped receive could strand a message on the other's
    // pending list); each stops after a quiet spell once the rest went elsewhere.
    let drain = |mut sub: Subscriber| {
        tokio::spawn(async move {
            let mut got = BTreeSet::new();
            while let Ok(d) = tokio::time::timeout(Duration::from_secs(3), sub.next()).await {
                let d = d.expect("receive");
                got.insert(d.message.id.clone());
                d.ack().await.expect("ack");
            }
            got
        })
    };
    let (ta, tb) = (drain(a), drain(b));
    let (from_a, from_b) = (ta.await.expect("a"), tb.await.expect("b"));
    assert!(
        from_a.is_disjoint(&from_b),
        "a message went to both consumers"
    );
    let all: BTreeSet<String> = from_a.union(&from_b).cloned().collect();
    assert_eq!(all, ids);
    eprintln!(
        "competing consumers: a took {}, b took {}",
        from_a.len(),
        from_b.len()
    );

    in_key_order(client).await;
    killed_consumer_redelivers(client).await;
    DeadLetters {
        poison,
        rejected,
        after_billing: ids,
    }
}

/// On the ordered topic, keys interleaved at publish arrive each in publish order (first
/// deliveries, each acked).
async fn in_key_order(client: &Client) {
    const KEYS: usize = 3;
    const PER_KEY: usize = 10;
    let publisher = client.publisher("ledger");
    let mut audit = client.subscriber("ledger", "audit").await.expect("audit");
    for seq in 0..PER_KEY {
        for k in 0..KEYS {
            let m = Message::new(seq.to_string().into_bytes()).with_key(format!("account-{k}"));
            publisher.publish(m).await.expect("publish");
        }
    }
    let mut got: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for _ in 0..KEYS * PER_KEY {
        let d = next(&mut audit, "audit").await;
        assert_eq!(d.attempt, 1, "first delivery of {:?}", d.message);
        let seq = String::from_utf8_lossy(&d.message.payload)
            .parse()
            .expect("seq");
        got.entry(d.message.key.clone().expect("key"))
            .or_default()
            .push(seq);
        d.ack().await.expect("ack");
    }
    let want = (0..KEYS)
        .map(|k| (format!("account-{k}"), (0..PER_KEY).collect()))
        .collect();
    assert_eq!(got, want, "each key in publish order");
}

/// `switchyard consume --no-ack` receives, prints and is SIGKILLed holding what it received
/// unacked; a consumer on the same subscription then gets every message, those included.
async fn killed_consumer_redelivers(client: &Client) {
    use tokio::io::AsyncBufReadExt;

    let dir = std::env::temp_dir().join(unique("sy-client-binding"));
    std::fs::create_dir_all(&dir).expect("mkdir");
    for (k, v) in client.binding().entries() {
        std::fs::write(dir.join(k), v).expect("write");
    }
    let publisher = client.publisher("jobs");
    let mut ids = BTreeSet::new();
    for i in 0..3 {
        let m = Message::new(format!("job {i}").into_bytes());
        ids.insert(m.id.clone());
        publisher.publish(m).await.expect("publish");
    }
    let mut cli = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("consume")
        .arg("--binding")
        .arg(&dir)
        .args(["jobs", "workers", "--follow", "--no-ack"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run switchyard consume");
    let mut lines = tokio::io::BufReader::new(cli.stdout.take().expect("stdout")).lines();
    let line = tokio::time::timeout(DELIVERY, lines.next_line())
        .await
        .unwrap_or_else(|_| panic!("switchyard consume: nothing within {DELIVERY:?}"))
        .expect("read")
        .expect("switchyard consume exited");
    let held: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
    let held = held["id"].as_str().expect("id").to_string();
    assert!(ids.contains(&held), "{line}");
    cli.start_kill().expect("SIGKILL");
    cli.wait().await.expect("wait");
    let killed = tokio::time::Instant::now();
    std::fs::remove_dir_all(&dir).expect("cleanup");

    let mut workers = client.subscriber("jobs", "workers").await.expect("workers");
    let mut got = BTreeMap::new();
    while got.len() < ids.len() {
        let d = tokio::time::timeout_at(killed + REDELIVERY, workers.next())
            .await
            .unwrap_or_else(|_| {
                panic!("after the kill, only {got:?} of {ids:?} within {REDELIVERY:?}")
            })
            .expect("receive");
        got.insert(d.message.id.clone(), (d.attempt, killed.elapsed()));
        d.ack().await.expect("ack");
    }
    assert_eq!(got.keys().cloned().collect::<BTreeSet<_>>(), ids);
    let (attempt, after) = got[&held];
    eprintln!(
        "{}: the killed consumer's message came back after {after:?}, attempt {attempt}",
        client.binding().broker_type()
    );
}

#[tokio::test]
async fn redis_conformance() {
    let env = format!(
        "{{slug: prd, type: Redis, redis: {{url: \"{}\"}}}}",
        env_var("SWITCHYARD_REDIS_URL")
    );
    let (client, ctl) = provisioned("client-redis", &env).await;
    let sent = conformance(&client).await;
    // The poison message and the rejected one sit in the subscription's dead-letter stream,
    // each with its count.
    let dlq = dead_letter(&client);
    let mut conn = ::redis::Client::open(env_var("SWITCHYARD_REDIS_URL").as_str())
        .expect("redis")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let entries: ::redis::streams::StreamRangeReply = ::redis::cmd("XRANGE")
        .arg(&dlq)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .expect("XRANGE");
    let field = |e: &::redis::streams::StreamId, k: &str| {
        e.map
            .get(k)
            .map(|v| ::redis::from_redis_value_ref::<String>(v).expect("text"))
    };
    let read: Vec<(String, Vec<u8>)> = entries
        .ids
        .iter()
        .map(|e| {
            let payload = field(e, "payload").unwrap_or_default();
            (field(e, "ce_id").unwrap_or_default(), payload.into_bytes())
        })
        .collect();
    sent.check(&read);
    for e in &entries.ids {
        if sent.is_rejected(&field(e, "ce_id").unwrap_or_default()) {
            assert_eq!(field(e, "delivery-count").as_deref(), Some("1"));
            assert_eq!(field(e, "key").as_deref(), Some("customer-r"), "key kept");
            assert_eq!(
                field(e, "h:trace-id").as_deref(),
                Some("tr"),
                "headers kept"
            );
        } else {
            assert_eq!(field(e, "delivery-count").as_deref(), Some("5"));
        }
    }
    // Billing holds nothing unacknowledged: the rejected entry was acked with its copy.
    let billing = client
        .binding()
        .target("orders", "billing")
        .expect("target");
    let pending: (u64, ::redis::Value, ::redis::Value, ::redis::Value) = ::redis::cmd("XPENDING")
        .arg(&billing.physical_topic)
        .arg(&billing.physical_subscription)
        .query_async(&mut conn)
        .await
        .expect("XPENDING");
    assert_eq!(pending.0, 0, "billing has no pending entries");
    ctl.stop().await;
}

#[tokio::test]
async fn rabbitmq_conformance() {
    use lapin::options::BasicGetOptions;
    use lapin::types::AMQPValue;

    let b = crate::rabbitmq::broker();
    let env = crate::rabbitmq::env_yaml(&b);
    let credentials: &[(&str, &[(&str, &str)])] = &[(
        "rabbit",
        &[("username", &b.username), ("password", &b.password)],
    )];
    let (client, ctl) = provisioned_with("client-rabbitmq", &env, credentials).await;
    assert_eq!(client.binding().broker_type(), "rabbitmq");
    assert!(
        client
            .binding()
            .get("uri")
            .is_some_and(|u| !u.contains('@')),
        "the binding's uri holds no credentials"
    );
    let sent = conformance(&client).await;

    // The poison message and the rejected one sit in the subscription's dead-letter queue, and
    // nothing else does.
    let dlq = dead_letter(&client);
    let conn = crate::rabbitmq::amqp(&b).await;
    let ch = conn.create_channel().await.expect("channel");
    let get = BasicGetOptions { no_ack: true };
    let mut dead = Vec::new();
    // The broker routes a rejected message through the dead-letter exchange after the reject
    // returned (basic.reject has no reply): wait for both.
    wait_until(DELIVERY, "two dead letters", async || {
        while let Some(m) = ch
            .basic_get(dlq.as_str().into(), get)
            .await
            .expect("basic.get")
        {
            dead.push(m.delivery);
        }
        dead.len() >= 2
    })
    .await;
    let text = |v: Option<&AMQPValue>| match v {
        Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    };
    let headers = |d: &lapin::message::Delivery| d.properties.headers().clone().unwrap_or_default();
    let id = |d: &lapin::message::Delivery| {
        text(headers(d).inner().get("cloudEvents:id")).unwrap_or_default()
    };
    let read: Vec<(String, Vec<u8>)> = dead.iter().map(|d| (id(d), d.data.clone())).collect();
    sent.check(&read);
    for d in &dead {
        let headers = headers(d);
        let death = match headers.inner().get("x-death") {
            Some(AMQPValue::FieldArray(a)) => match a.as_slice().first() {
                Some(AMQPValue::FieldTable(t)) => t.clone(),
                other => panic!("x-death holds {other:?}"),
            },
            other => panic!("no x-death header: {other:?}"),
        };
        assert_eq!(
            text(death.inner().get("queue")),
            client
                .binding()
                .target("orders", "billing")
                .ok()
                .map(|t| t.physical_subscription),
            "dead-lettered from the billing queue"
        );
        let reason = text(death.inner().get("reason"));
        if sent.is_rejected(&id(d)) {
            assert_eq!(
                reason.as_deref(),
                Some("rejected"),
                "dead-lettered by the reject"
            );
            assert_eq!(d.routing_key.as_str(), "customer-r", "key kept");
            assert_eq!(
                text(headers.inner().get("trace-id")).as_deref(),
                Some("tr"),
                "headers kept"
            );
        } else {
            // `delivery_limit` when the queue's x-delivery-limit stopped it; `rejected` when
            // the client's guard did (RabbitMQ delivers a message x-delivery-limit + 1 times).
            eprintln!("dead-letter reason of the poison message: {reason:?}");
            assert!(
                matches!(reason.as_deref(), Some("delivery_limit" | "rejected")),
                "dead-lettered for {reason:?}"
            );
        }
    }
    assert!(
        ch.basic_get(dlq.as_str().into(), get)
            .await
            .expect("basic.get")
            .is_none(),
        "two dead letters"
    );
    ctl.stop().await;
}

#[tokio::test]
async fn kafka_conformance() {
    use ::rdkafka::consumer::{BaseConsumer, Consumer};
    use ::rdkafka::message::{Headers, Message as _};
    use ::rdkafka::{Offset, TopicPartitionList};

    let bootstrap = env_var("SWITCHYARD_KAFKA_BOOTSTRAP");
    let env = format!("{{slug: prd, type: Kafka, kafka: {{bootstrapServers: [\"{bootstrap}\"]}}}}");
    let (client, ctl) = provisioned("client-kafka", &env).await;
    let sent = conformance(&client).await;
    // The poison message and the rejected one sit in the subscription's dead-letter topic,
    // each with its count.
    let target = client
        .binding()
        .target("orders", "billing")
        .expect("target");
    let dlq = target.dead_letter.clone().expect("a dead-letter topic");
    let records = tokio::task::spawn_blocking(move || {
        let reader: BaseConsumer = ::rdkafka::config::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", unique("client-kafka-dlq"))
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let metadata = reader
            .fetch_metadata(Some(&dlq), Duration::from_secs(10))
            .expect("metadata");
        let partitions = metadata
            .topics()
            .first()
            .map(|t| t.partitions().len())
            .expect("the dead-letter topic");
        let mut tpl = TopicPartitionList::new();
        let mut total = 0;
        for p in 0..i32::try_from(partitions).expect("partitions") {
            let (low, high) = reader
                .fetch_watermarks(&dlq, p, Duration::from_secs(10))
                .expect("watermarks");
            total += high - low;
            tpl.add_partition_offset(&dlq, p, Offset::Beginning)
                .expect("partition");
        }
        assert_eq!(total, 2, "two dead letters in {dlq}");
        // Billing settled the 25 records it received (the shipping ones came after it stopped
        // reading), the rejected one included: its group committed exactly past them, on a
        // fresh topic from offset 0.
        let billing: BaseConsumer = ::rdkafka::config::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", &target.physical_subscription)
            .create()
            .expect("consumer");
        let mut orders = TopicPartitionList::new();
        for p in 0..3 {
            orders.add_partition(&target.physical_topic, p);
        }
        let committed = billing
            .committed_offsets(orders, Duration::from_secs(10))
            .expect("committed offsets");
        let settled: i64 = committed
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            })
            .sum();
        assert_eq!(settled, 25, "billing committed {committed:?}");
        reader.assign(&tpl).expect("assign");
        let deadline = std::time::Instant::now() + DELIVERY;
        let mut records = Vec::new();
        while records.len() < 2 && std::time::Instant::now() < deadline {
            if let Some(r) = reader.poll(Duration::from_millis(500)) {
                let r = r.expect("consuming the dead-letter topic");
                let headers: BTreeMap<String, String> = r
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                let v = String::from_utf8_lossy(h.value.unwrap_or_default());
                                (h.key.to_string(), v.into_owned())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let key = r.key().map(|k| String::from_utf8_lossy(k).into_owned());
                records.push((r.payload().unwrap_or_default().to_vec(), headers, key));
            }
        }
        records
    })
    .await
    .expect("reader task");
    assert_eq!(records.len(), 2, "the dead letters within {DELIVERY:?}");
    let read: Vec<(String, Vec<u8>)> = records
        .iter()
        .map(|(payload, headers, _)| {
            let id = headers.get("ce_id").cloned().unwrap_or_default();
            (id, payload.clone())
        })
        .collect();
    sent.check(&read);
    for (_, headers, key) in &records {
        let count = headers.get("delivery-count").map(String::as_str);
        assert_eq!(
            headers.get("ce_specversion").map(String::as_str),
            Some("1.0"),
            "CloudEvents attributes kept"
        );
        if sent.is_rejected(&headers["ce_id"]) {
            assert_eq!(count, Some("1"));
            assert_eq!(key.as_deref(), Some("customer-r"), "key kept");
            assert_eq!(
                headers.get("trace-id").map(String::as_str),
                Some("tr"),
                "headers kept"
            );
        } else {
            assert_eq!(count, Some("5"));
        }
    }
    ctl.stop().await;
}

/// [`provisioned`] with Secrets (name, entries) created in the namespace before the
/// MessageBroker, for envs whose credentials come from a `credentialsSecretRef`.
pub(crate) async fn provisioned_with(
    prefix: &str,
    env_yaml: &str,
    secrets: &[(&str, &[(&str, &str)])],
) -> (Client, RunningController) {
    let (app, ctl, _, _) = provisioned_in(prefix, env_yaml, secrets).await;
    (app, ctl)
}

/// The MessageBroker `bus` of [`provisioned_in`], with one env.
pub(crate) fn bus_manifest(env_yaml: &str) -> String {
    format!(
        "apiVersion: switchyard.dev/v1alpha1\nkind: MessageBroker\nmetadata: {{name: bus}}\nspec:\n  deletionPolicy: Delete\n  topics:\n    - name: orders\n      partitions: 3\n      subscriptions:\n        - {{name: billing, deadLetter: {{maxDeliveryAttempts: 5}}}}\n        - {{name: shipping}}\n    - name: ledger\n      partitions: 3\n      ordered: true\n      subscriptions: [{{name: audit}}]\n    - name: jobs\n      subscriptions: [{{name: workers}}]\n  envs:\n    - {env_yaml}\n"
    )
}

/// [`provisioned_with`], and the API client and namespace of the MessageBroker `bus`.
pub(crate) async fn provisioned_in(
    prefix: &str,
    env_yaml: &str,
    secrets: &[(&str, &[(&str, &str)])],
) -> (Client, RunningController, kube::Client, String) {
    let (client, ns) = setup(prefix).await;
    for (name, data) in secrets {
        put_secret(&client, &ns, name, data).await;
    }
    let ctl = start_real_controller(client.clone(), &ns);
    apply_mb(&client, &ns, &bus_manifest(env_yaml)).await;
    wait_ready(&client, &ns, "bus", TIMEOUT).await;
    let binding = Binding::from_secret(&client, &ns, "bus-prd")
        .await
        .expect("binding Secret");
    (Client::new(binding).await.expect("client"), ctl, client, ns)
}

#[tokio::test]
async fn sqs_conformance() {
    use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};

    let moto = Moto::new();
    let key = &moto.key;
    let credentials = moto.credentials();
    let secrets: &[(&str, &[(&str, &str)])] = &[("aws", &credentials)];
    let (client, ctl) = provisioned_with("client-sqs", &moto.env, secrets).await;
    assert_eq!(client.binding().broker_type(), "aws-sqs");
    assert_eq!(
        client.binding().get("AWS_ACCESS_KEY_ID"),
        Some(key.as_str()),
        "the client signs with the binding's credentials"
    );
    let sent = conformance(&client).await;

    // The poison message and the rejected one sit in the subscription's dead-letter queue, and
    // nothing else does.
    let dlq = dead_letter(&client);
    let sqs = aws_sdk_sqs::Client::new(&moto.sdk_config().await);
    let url = sqs
        .get_queue_url()
        .queue_name(&dlq)
        .send()
        .await
        .expect("dead-letter queue")
        .queue_url
        .expect("queue url");
    let receive = async |wait: i32| {
        sqs.receive_message()
            .queue_url(&url)
            .max_number_of_messages(10)
            .wait_time_seconds(wait)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .expect("ReceiveMessage")
            .messages
            .unwrap_or_default()
    };
    let mut dead = Vec::new();
    // A receive may return fewer messages than the queue holds: receive until both came.
    let deadline = tokio::time::Instant::now() + DELIVERY;
    while dead.len() < 2 && tokio::time::Instant::now() < deadline {
        dead.extend(receive(1).await);
    }
    let attribute = |m: &aws_sdk_sqs::types::Message, name: &str| {
        m.message_attributes()
            .and_then(|a| a.get(name))
            .and_then(|v| v.string_value())
            .map(str::to_string)
    };
    let read: Vec<(String, Vec<u8>)> = dead
        .iter()
        .map(|m| {
            let body = m.body().unwrap_or_default().as_bytes().to_vec();
            (attribute(m, "ce_id").unwrap_or_default(), body)
        })
        .collect();
    sent.check(&read);
    assert!(receive(1).await.is_empty(), "two dead letters");
    for m in &dead {
        assert_eq!(
            attribute(m, "ce_specversion").as_deref(),
            Some("1.0"),
            "CloudEvents attributes kept"
        );
        let receives = m
            .attributes()
            .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
            .map(String::as_str);
        if sent.is_rejected(&attribute(m, "ce_id").unwrap_or_default()) {
            key_and_header_kept(|k| attribute(m, k));
            assert_eq!(
                receives,
                Some("1"),
                "moved by the client on the first delivery, then this read"
            );
        } else {
            assert_eq!(
                receives,
                Some("6"),
                "five deliveries on the subscription queue, then this read"
            );
        }
    }
    // Billing holds only the ten shipping messages published after it stopped reading: the
    // rejected message was deleted, neither made visible again nor left in flight.
    let billing = client
        .binding()
        .target("orders", "billing")
        .expect("target")
        .physical_subscription;
    let billing_url = sqs
        .get_queue_url()
        .queue_name(&billing)
        .send()
        .await
        .expect("billing queue")
        .queue_url
        .expect("queue url");
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(&billing_url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .expect("GetQueueAttributes")
        .attributes
        .unwrap_or_default();
    let count = |name: QueueAttributeName| attributes.get(&name).map(String::as_str);
    assert_eq!(
        (
            count(QueueAttributeName::ApproximateNumberOfMessages),
            count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        ),
        (Some("10"), Some("0")),
        "billing holds the shipping messages only"
    );
    ctl.stop().await;
}

#[tokio::test]
async fn pubsub_conformance() {
    use base64::Engine as _;
    use serde_json::{Value, json};

    let endpoint = env_var("SWITCHYARD_PUBSUB_ENDPOINT");
    let project = "switchyard-test";
    let env = format!(
        "{{slug: prd, type: GooglePubSub, googlePubSub: {{projectId: {project}, endpoint: \"{endpoint}\"}}}}"
    );
    let (client, ctl) = provisioned("client-pubsub", &env).await;
    assert_eq!(client.binding().broker_type(), "google-pubsub");
    let sent = conformance(&client).await;

    // The poison message and the rejected one sit in the subscription's dead-letter topic
    // (read through the subscription of the same id the operator keeps on it), and nothing
    // else does.
    let dlq = dead_letter(&client);
    let billing = client
        .binding()
        .target("orders", "billing")
        .expect("target")
        .physical_subscription;
    let http = reqwest::Client::new();
    let call = async |verb: &str, body: Value| -> Value {
        let url = format!("{endpoint}/v1/projects/{project}/subscriptions/{dlq}:{verb}");
        let resp = http.post(&url).json(&body).send().await.expect(verb);
        assert!(resp.status().is_success(), "{verb}: {}", resp.status());
        resp.json().await.expect("json")
    };
    let pull = json!({"maxMessages": 10, "returnImmediately": true});
    let mut dead: Vec<Value> = Vec::new();
    let attribute = |m: &Value, name: &str| {
        m["message"]["attributes"][name]
            .as_str()
            .map(str::to_string)
    };
    // The emulator goes on handing messages to a stream the client closed (see the Pub/Sub
    // data plane's notes), counting a delivery each ack deadline: the ones published after
    // billing was dropped may reach the dead-letter topic when the rest of the suite took five
    // ack deadlines. Google Cloud ends a cancelled stream; here those are acked and left out.
    let mut stray = Vec::new();
    // Pub/Sub forwards the poison message on its own time: wait for both.
    wait_until(DELIVERY, "two dead letters", async || {
        let pulled = call("pull", pull.clone())
            .await
            .get("receivedMessages")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for m in pulled {
            let id = attribute(&m, "ce_id").unwrap_or_default();
            if sent.after_billing.contains(&id) {
                stray.push(m);
            } else {
                dead.push(m);
            }
        }
        dead.len() >= 2
    })
    .await;
    if !stray.is_empty() {
        eprintln!(
            "pubsub: {} messages published after billing was dropped were dead-lettered by the emulator",
            stray.len()
        );
    }
    let read: Vec<(String, Vec<u8>)> = dead
        .iter()
        .map(|m| {
            let data = base64::engine::general_purpose::STANDARD
                .decode(m["message"]["data"].as_str().unwrap_or_default())
                .expect("base64 data");
            (attribute(m, "ce_id").unwrap_or_default(), data)
        })
        .collect();
    sent.check(&read);
    for m in &dead {
        assert_eq!(
            attribute(m, "ce_specversion").as_deref(),
            Some("1.0"),
            "CloudEvents attributes kept"
        );
        assert_eq!(
            attribute(m, "CloudPubSubDeadLetterSourceSubscription"),
            Some(billing.clone()),
            "dead-lettered from the billing subscription"
        );
        let count = attribute(m, "CloudPubSubDeadLetterSourceDeliveryCount");
        if sent.is_rejected(&attribute(m, "ce_id").unwrap_or_default()) {
            assert_eq!(
                count.as_deref(),
                Some("1"),
                "dead-lettered on the first delivery"
            );
            assert_eq!(
                m["message"]["orderingKey"].as_str(),
                Some("customer-r"),
                "ordering key kept"
            );
            key_and_header_kept(|k| attribute(m, k));
        } else {
            assert_eq!(
                count.as_deref(),
                Some("5"),
                "dead-lettered after five deliveries"
            );
        }
    }
    let acks: Vec<&str> = dead
        .iter()
        .chain(&stray)
        .map(|m| m["ackId"].as_str().expect("ackId"))
        .collect();
    call("acknowledge", json!({ "ackIds": acks })).await;
    let rest = call("pull", pull).await;
    let rest: Vec<&Value> = rest
        .get("receivedMessages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|m| {
            !sent
                .after_billing
                .contains(&attribute(m, "ce_id").unwrap_or_default())
        })
        .collect();
    assert!(rest.is_empty(), "two dead letters: {rest:?}");

    ctl.stop().await;
}

#[tokio::test]
async fn nats_conformance() {
    let url = env_var("SWITCHYARD_NATS_URL");
    let (user, password) = (
        env_var("SWITCHYARD_NATS_USER"),
        env_var("SWITCHYARD_NATS_PASSWORD"),
    );
    let env = format!(
        "{{slug: prd, type: NatsJetStream, natsJetStream: {{servers: [\"{url}\"], credentialsSecretRef: {{name: nats}}}}}}"
    );
    let credentials: &[(&str, &[(&str, &str)])] = &[(
        "nats",
        &[("username", user.as_str()), ("password", password.as_str())],
    )];
    let (client, ctl) = provisioned_with("client-nats", &env, credentials).await;
    assert_eq!(client.binding().broker_type(), "nats");
    assert_eq!(client.binding().get("uri"), Some(url.as_str()));
    assert_eq!(client.binding().get("username"), Some(user.as_str()));
    let sent = conformance(&client).await;

    // The poison message and the rejected one sit in the dead-letter stream, once each, with
    // their delivery counts.
    let dlq = dead_letter(&client);
    let admin = async_nats::ConnectOptions::with_user_and_password(user, password)
        .connect(url.as_str())
        .await
        .expect("admin connection");
    let js = async_nats::jetstream::new(admin);
    assert!(dlq.ends_with("-dlq"), "{dlq}");
    let mut stream = js.get_stream(&dlq).await.expect("dead-letter stream");
    let info = stream.info().await.expect("info").clone();
    assert_eq!(info.state.messages, 2, "two dead letters");
    let mut dead = Vec::new();
    for seq in info.state.first_sequence..=info.state.last_sequence {
        dead.push(stream.get_raw_message(seq).await.expect("a dead letter"));
    }
    let header = |m: &async_nats::jetstream::message::StreamMessage, name: &str| {
        m.headers.get(name).map(|v| v.as_str().to_string())
    };
    let read: Vec<(String, Vec<u8>)> = dead
        .iter()
        .map(|m| (header(m, "ce-id").unwrap_or_default(), m.payload.to_vec()))
        .collect();
    sent.check(&read);
    for m in &dead {
        assert_eq!(
            header(m, "ce-specversion").as_deref(),
            Some("1.0"),
            "CloudEvents attributes kept"
        );
        let count = header(m, "delivery-count");
        if sent.is_rejected(&header(m, "ce-id").unwrap_or_default()) {
            assert_eq!(count.as_deref(), Some("1"));
            assert_eq!(
                header(m, "Switchyard-Key").as_deref(),
                Some("customer-r"),
                "key kept"
            );
            assert_eq!(header(m, "trace-id").as_deref(), Some("tr"), "headers kept");
        } else {
            assert_eq!(count.as_deref(), Some("5"));
        }
    }
    // Billing settled everything it received (nothing unacknowledged); the ten shipping
    // messages came after it stopped reading and wait for it.
    let billing = client
        .binding()
        .target("orders", "billing")
        .expect("target");
    let orders = js
        .stream_by_subject(billing.physical_topic.clone())
        .await
        .expect("orders stream");
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_consumer_from_stream(&billing.physical_subscription, &orders)
        .await
        .expect("billing consumer");
    let info = consumer.info().await.expect("consumer info");
    assert_eq!(
        (info.num_pending, info.num_ack_pending),
        (10, 0),
        "billing settled all it received"
    );
    ctl.stop().await;
}
