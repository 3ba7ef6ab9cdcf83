//! The client library against real brokers: a MessageBroker is provisioned by the controller,
//! its binding Secret is read as an app reads it, and the client publishes and consumes through
//! it. The same checks run on every backend that has a client transport.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use switchyard::client::{Binding, Client, Message, Subscriber};

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

async fn next(sub: &mut Subscriber, what: &str) -> switchyard::client::Delivery {
    tokio::time::timeout(DELIVERY, sub.next())
        .await
        .unwrap_or_else(|_| panic!("{what}: no delivery within {DELIVERY:?}"))
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Publish/consume N with headers and CloudEvents attributes, ack, nack → redelivery, dead
/// letter after maxDeliveryAttempts, competing consumers.
async fn conformance(client: &Client) {
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

    // Competing consumers share one subscription: every message once, both get some.
    let mut a = client.subscriber("orders", "shipping").await.expect("a");
    let b = client.subscriber("orders", "shipping").await.expect("b");
    // shipping has everything published so far; drain it first.
    let backlog = N + 3;
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
    conformance(&client).await;
    // The poison message sits in the subscription's dead-letter stream, with its count.
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
    assert_eq!(entries.ids.len(), 1, "one dead letter");
    let e = &entries.ids[0];
    let field = |k: &str| {
        e.map
            .get(k)
            .map(|v| ::redis::from_redis_value_ref::<String>(v).expect("text"))
    };
    assert_eq!(field("payload").as_deref(), Some("poison"));
    assert_eq!(field("delivery-count").as_deref(), Some("5"));
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
    conformance(&client).await;

    // The poison message sits in the subscription's dead-letter queue, and nothing else does.
    let dlq = dead_letter(&client);
    let conn = crate::rabbitmq::amqp(&b).await;
    let ch = conn.create_channel().await.expect("channel");
    let get = BasicGetOptions { no_ack: true };
    let dead = ch
        .basic_get(dlq.as_str().into(), get)
        .await
        .expect("basic.get")
        .expect("a dead letter");
    assert_eq!(dead.delivery.data, b"poison");
    let headers = dead
        .delivery
        .properties
        .headers()
        .clone()
        .unwrap_or_default();
    let text = |v: Option<&AMQPValue>| match v {
        Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    };
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
    // `delivery_limit` when the queue's x-delivery-limit stopped it; `rejected` when the
    // client's guard did (RabbitMQ delivers a message x-delivery-limit + 1 times).
    let reason = text(death.inner().get("reason"));
    eprintln!("dead-letter reason: {reason:?}");
    assert!(
        matches!(reason.as_deref(), Some("delivery_limit" | "rejected")),
        "dead-lettered for {reason:?}"
    );
    assert!(
        ch.basic_get(dlq.as_str().into(), get)
            .await
            .expect("basic.get")
            .is_none(),
        "one dead letter"
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
    conformance(&client).await;
    // The poison message sits in the subscription's dead-letter topic, with its count.
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
        assert_eq!(total, 1, "one dead letter in {dlq}");
        // Billing settled the 23 records it received (the shipping ones came after it stopped
        // reading): its group committed exactly past them, on a fresh topic from offset 0.
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
        assert_eq!(settled, 23, "billing committed {committed:?}");
        reader.assign(&tpl).expect("assign");
        let deadline = std::time::Instant::now() + DELIVERY;
        let mut records = Vec::new();
        while records.is_empty() && std::time::Instant::now() < deadline {
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
                records.push((r.payload().unwrap_or_default().to_vec(), headers));
            }
        }
        records
    })
    .await
    .expect("reader task");
    assert_eq!(records.len(), 1, "the dead letter within {DELIVERY:?}");
    let (payload, headers) = &records[0];
    assert_eq!(payload.as_slice(), b"poison");
    assert_eq!(headers.get("delivery-count").map(String::as_str), Some("5"));
    assert!(headers.contains_key("ce_id"), "CloudEvents attributes kept");
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
    use aws_sdk_sqs::types::MessageSystemAttributeName;

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
    conformance(&client).await;

    // The poison message sits in the subscription's dead-letter queue, and nothing else does.
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
    let dead = sqs
        .receive_message()
        .queue_url(&url)
        .max_number_of_messages(10)
        .wait_time_seconds(1)
        .message_attribute_names("All")
        .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
        .send()
        .await
        .expect("ReceiveMessage")
        .messages
        .unwrap_or_default();
    assert_eq!(dead.len(), 1, "one dead letter");
    let m = &dead[0];
    assert_eq!(m.body(), Some("poison"));
    let attribute = |name: &str| {
        m.message_attributes()
            .and_then(|a| a.get(name))
            .and_then(|v| v.string_value())
    };
    assert_eq!(
        attribute("ce_specversion"),
        Some("1.0"),
        "CloudEvents attributes kept"
    );
    assert!(attribute("ce_id").is_some(), "CloudEvents id kept");
    let receives = m
        .attributes()
        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
        .map(String::as_str);
    assert_eq!(
        receives,
        Some("6"),
        "five deliveries on the subscription queue, then this read"
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
    conformance(&client).await;

    // The poison message sits in the subscription's dead-letter topic (read through the
    // subscription of the same id the operator keeps on it), and nothing else does.
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
    let mut dead = Vec::new();
    // Pub/Sub forwards the dead letter on its own time: wait for it.
    wait_until(DELIVERY, "the dead letter", async || {
        dead = call("pull", pull.clone())
            .await
            .get("receivedMessages")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        !dead.is_empty()
    })
    .await;
    assert_eq!(dead.len(), 1, "one dead letter");
    let m = &dead[0]["message"];
    let data = base64::engine::general_purpose::STANDARD
        .decode(m["data"].as_str().unwrap_or_default())
        .expect("base64 data");
    assert_eq!(data, b"poison");
    let attribute = |name: &str| m["attributes"][name].as_str();
    assert_eq!(
        attribute("ce_specversion"),
        Some("1.0"),
        "CloudEvents attributes kept"
    );
    assert!(attribute("ce_id").is_some(), "CloudEvents id kept");
    assert_eq!(
        attribute("CloudPubSubDeadLetterSourceDeliveryCount"),
        Some("5"),
        "dead-lettered after five deliveries"
    );
    assert_eq!(
        attribute("CloudPubSubDeadLetterSourceSubscription"),
        Some(billing.as_str()),
        "dead-lettered from the billing subscription"
    );
    let ack = dead[0]["ackId"].as_str().expect("ackId").to_string();
    call("acknowledge", json!({"ackIds": [ack]})).await;
    let rest = call("pull", pull).await;
    assert!(
        rest.get("receivedMessages").is_none(),
        "one dead letter: {rest}"
    );
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
    conformance(&client).await;

    // The poison message sits in the dead-letter stream, once, with its delivery count.
    let dlq = dead_letter(&client);
    let admin = async_nats::ConnectOptions::with_user_and_password(user, password)
        .connect(url.as_str())
        .await
        .expect("admin connection");
    let js = async_nats::jetstream::new(admin);
    assert!(dlq.ends_with("-dlq"), "{dlq}");
    let mut stream = js.get_stream(&dlq).await.expect("dead-letter stream");
    let info = stream.info().await.expect("info").clone();
    assert_eq!(info.state.messages, 1, "one dead letter");
    let dead = stream
        .get_last_raw_message_by_subject(&info.config.subjects[0])
        .await
        .expect("the dead letter");
    assert_eq!(dead.payload.as_ref(), b"poison");
    let header = |name: &str| dead.headers.get(name).map(|v| v.as_str().to_string());
    assert_eq!(header("delivery-count").as_deref(), Some("5"));
    assert_eq!(
        header("ce-specversion").as_deref(),
        Some("1.0"),
        "CloudEvents attributes kept"
    );
    assert!(header("ce-id").is_some(), "CloudEvents id kept");
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
