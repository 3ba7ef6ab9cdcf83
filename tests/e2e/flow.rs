//! Message flow in the operator's metrics: the backlog of a subscription is what its consumers
//! have not acknowledged, dead letters are counted, and the oldest unacknowledged message's age
//! is told where the broker tells it. Read from the metrics text exactly as Prometheus scrapes
//! it, and from status.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use switchyard::api::MessageBroker;
use switchyard::client::{Client, Message};

use crate::client::{bus_manifest, provisioned_in};
use crate::support::*;

const TIMEOUT: Duration = Duration::from_secs(60);
const BACKLOG: &str = "switchyard_subscription_backlog_messages";
const OLDEST: &str = "switchyard_subscription_oldest_unacked_seconds";

/// The value of `metric` for subscription `sub` of topic `orders` in the exposition text.
fn sample<T: std::str::FromStr>(text: &str, metric: &str, sub: &str) -> Option<T> {
    let labels = [format!("subscription=\"{sub}\""), "topic=\"orders\"".into()];
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .find(|l| labels.iter().all(|want| l.contains(want.as_str())))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn scrape(ctl: &RunningController) -> String {
    let mut registry = Registry::default();
    ctl.metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    text
}

/// The label sets of every series of `metric` in the exposition text.
fn series(text: &str, metric: &str) -> BTreeSet<BTreeMap<String, String>> {
    text.lines()
        .filter_map(|l| l.strip_prefix(&format!("{metric}{{")))
        .filter_map(|l| l.split_once('}'))
        .map(|(labels, _)| {
            labels
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
                .collect()
        })
        .collect()
}

/// The backlog status records for `orders/<sub>`.
fn status_backlog(mb: &MessageBroker, sub: &str) -> Option<u64> {
    mb.status.as_ref()?.envs[0]
        .topics
        .iter()
        .find(|t| t.name == "orders")?
        .subscriptions
        .iter()
        .find(|s| s.name == sub)?
        .backlog
}

/// Whether a backlog of `written` in status stands for `actual` under the README's rule: it
/// is rewritten only when it reaches or leaves zero, or moves by at least 10 messages and 20 %.
fn stands_for(written: u64, actual: u64) -> bool {
    let delta = written.abs_diff(actual);
    (written == 0) == (actual == 0) && (delta < 10 || delta * 5 < written.max(actual))
}

/// Several passes over a MessageBroker whose figures hold still (or move within the
/// threshold) write no status.
async fn idle_passes_write_no_status(ctl: &RunningController) {
    let writes = ctl.metrics.status_writes.get();
    let passes = ctl.metrics.reconciles.get();
    wait_until(TIMEOUT, "three more passes", async || {
        ctl.metrics.reconciles.get() >= passes + 3
    })
    .await;
    assert_eq!(
        ctl.metrics.status_writes.get(),
        writes,
        "passes with steady backlogs must not write status"
    );
}

/// Publish 10, consume and ack 4 on billing, dead-letter one more on billing: billing's backlog
/// is 6, shipping's (nobody reads it) 10; then a poison message ends in billing's dead letters.
async fn backlog_and_dead_letters(
    client: &Client,
    ctl: &RunningController,
    kube: &kube::Client,
    ns: &str,
) {
    let publisher = client.publisher("orders");
    // What billing has yet to ack: it is drained once this is empty.
    let mut unacked = BTreeSet::new();
    for i in 0..10 {
        let m = Message::new(format!("order {i}").into_bytes());
        unacked.insert(m.id.clone());
        publisher.publish(m).await.expect("publish");
    }
    let mut billing = client
        .subscriber("orders", "billing")
        .await
        .expect("billing");
    for _ in 0..4 {
        let d = tokio::time::timeout(TIMEOUT, billing.next())
            .await
            .expect("a delivery")
            .expect("receive");
        unacked.remove(&d.message.id);
        d.ack().await.expect("ack");
    }
    drop(billing);
    wait_until(TIMEOUT, "billing's backlog of 6", async || {
        sample(&scrape(ctl), BACKLOG, "billing") == Some(6)
    })
    .await;
    // Status carries it too: shipping went from 0 to 10, a move it always writes.
    wait_for_mb(
        kube,
        ns,
        "bus",
        TIMEOUT,
        "shipping's backlog in status",
        |m| {
            let Some(s) = &m.status else { return false };
            let shipping = s.envs[0]
                .topics
                .iter()
                .find(|t| t.name == "orders")
                .and_then(|t| {
                    t.subscriptions
                        .iter()
                        .find(|s| s.name == "shipping")?
                        .backlog
                });
            shipping == Some(10) && s.backlog >= Some(10)
        },
    )
    .await;
    let mb = wait_for_mb(
        kube,
        ns,
        "bus",
        TIMEOUT,
        "billing's backlog in status",
        |m| status_backlog(m, "billing").is_some_and(|b| stands_for(b, 6)),
    )
    .await;
    let billing = status_backlog(&mb, "billing");
    idle_passes_write_no_status(ctl).await;
    let mb = wait_for_mb(kube, ns, "bus", TIMEOUT, "read back", |_| true).await;
    assert_eq!(
        status_backlog(&mb, "billing"),
        billing,
        "a steady backlog is kept"
    );
    let text = scrape(ctl);
    assert_eq!(sample(&text, BACKLOG, "shipping"), Some(10), "{text}");
    assert_eq!(
        sample(&text, "switchyard_deadletter_messages", "billing"),
        Some(0),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("switchyard_env_ready{")
            && l.contains("env=\"prd\"")
            && l.ends_with(" 1")),
        "{text}"
    );

    // A poison message: past maxDeliveryAttempts (5) it is in billing's dead-letter destination.
    let poison = Message::new(b"poison".to_vec());
    publisher.publish(poison.clone()).await.expect("publish");
    let mut billing = client
        .subscriber("orders", "billing")
        .await
        .expect("billing");
    // The poison is nacked until it is dead-lettered, everything else acked; on Kafka the
    // rest may come from another partition after the poison's last delivery, so the loop
    // runs until every message billing has is settled.
    let after = Message::new(b"after".to_vec());
    publisher.publish(after.clone()).await.expect("publish");
    unacked.insert(after.id.clone());
    let mut nacked = 0;
    while nacked < 5 || !unacked.is_empty() {
        let d = tokio::time::timeout(TIMEOUT, billing.next())
            .await
            .unwrap_or_else(|_| panic!("a delivery ({nacked} nacks, {} unacked)", unacked.len()))
            .expect("receive");
        if d.message.id == poison.id {
            d.nack().await.expect("nack");
            nacked += 1;
            if nacked == 5 {
                // Where the client dead-letters (Kafka, Redis, NATS) it does so on the next
                // receive: billing goes on until a message published after the last nack is in.
                let last = Message::new(b"last".to_vec());
                publisher.publish(last.clone()).await.expect("publish");
                unacked.insert(last.id.clone());
            }
        } else {
            unacked.remove(&d.message.id);
            d.ack().await.expect("ack");
        }
    }
    drop(billing);
    let mut seen = (None, None);
    let deadline = Instant::now() + TIMEOUT;
    while seen != (Some(1), Some(0)) {
        assert!(
            Instant::now() < deadline,
            "one dead letter and billing drained: (dead letters, backlog) still {seen:?} after {TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let text = scrape(ctl);
        seen = (
            sample(&text, "switchyard_deadletter_messages", "billing"),
            sample(&text, BACKLOG, "billing"),
        );
    }
}

#[tokio::test]
async fn redis_backlog_and_dead_letters_reach_the_metrics() {
    let env = format!(
        "{{slug: prd, type: Redis, redis: {{url: \"{}\"}}}}",
        env_var("SWITCHYARD_REDIS_URL")
    );
    let (client, ctl, kube, ns) = provisioned_in("flow-redis", &env, &[]).await;
    backlog_and_dead_letters(&client, &ctl, &kube, &ns).await;
    ctl.stop().await;
}

#[tokio::test]
async fn rabbitmq_backlog_and_dead_letters_reach_the_metrics() {
    let b = crate::rabbitmq::broker();
    let env = crate::rabbitmq::env_yaml(&b);
    let credentials: &[(&str, &[(&str, &str)])] = &[(
        "rabbit",
        &[("username", &b.username), ("password", &b.password)],
    )];
    let (client, ctl, kube, ns) = provisioned_in("flow-rabbitmq", &env, credentials).await;
    backlog_and_dead_letters(&client, &ctl, &kube, &ns).await;
    ctl.stop().await;
}

#[tokio::test]
async fn sqs_backlog_and_dead_letters_reach_the_metrics() {
    let moto = Moto::new();
    let credentials = moto.credentials();
    let secrets: &[(&str, &[(&str, &str)])] = &[("aws", &credentials)];
    let (client, ctl, kube, ns) = provisioned_in("flow-sqs", &moto.env, secrets).await;
    backlog_and_dead_letters(&client, &ctl, &kube, &ns).await;
    ctl.stop().await;
}

#[tokio::test]
async fn kafka_backlog_and_dead_letters_reach_the_metrics() {
    let env = format!(
        "{{slug: prd, type: Kafka, kafka: {{bootstrapServers: [\"{}\"]}}}}",
        env_var("SWITCHYARD_KAFKA_BOOTSTRAP")
    );
    let (client, ctl, kube, ns) = provisioned_in("flow-kafka", &env, &[]).await;
    backlog_and_dead_letters(&client, &ctl, &kube, &ns).await;
    ctl.stop().await;
}

fn redis_env() -> String {
    format!(
        "{{slug: prd, type: Redis, redis: {{url: \"{}\"}}}}",
        env_var("SWITCHYARD_REDIS_URL")
    )
}

/// A message delivered on billing and held unacknowledged: billing's oldest-unacked age is at
/// least the time since it was delivered and at most the time since it was published, by this
/// test's clock; shipping never had it delivered and tells its age too. The age grows on every
/// pass while status is not written; once acknowledged, billing's age is zero.
#[tokio::test]
async fn redis_oldest_unacked_age_covers_the_time_since_delivery() {
    let (client, ctl, _kube, _ns) = provisioned_in("flow-age", &redis_env(), &[]).await;
    let before_publish = Instant::now();
    client
        .publisher("orders")
        .publish(Message::new(b"slow".to_vec()))
        .await
        .expect("publish");
    let published = Instant::now();
    let mut billing = client
        .subscriber("orders", "billing")
        .await
        .expect("billing");
    let held = tokio::time::timeout(TIMEOUT, billing.next())
        .await
        .expect("a delivery")
        .expect("receive");
    let delivered = Instant::now();

    // A value that differs from the one the previous scrape saw was stored after that scrape,
    // but read from Redis up to one flow pass earlier: the slack covers that pass (14 ms seen
    // on a loaded machine).
    let slack = 0.1;
    let read_at = Instant::now();
    let mut previous = (read_at, sample::<f64>(&scrape(&ctl), OLDEST, "billing"));
    let mut checked = 0;
    wait_until(TIMEOUT, "billing's age to pass 3 s", async || {
        let read_at = Instant::now();
        let text = scrape(&ctl);
        let scraped = Instant::now();
        let (before, seen) = previous;
        let age: Option<f64> = sample(&text, OLDEST, "billing");
        previous = (read_at, age);
        let Some(age) = age.filter(|a| Some(*a) != seen) else {
            return false;
        };
        let lower = before.saturating_duration_since(delivered).as_secs_f64();
        let upper = scraped.duration_since(before_publish).as_secs_f64();
        assert!(
            age + slack >= lower && age <= upper + slack,
            "billing's age {age} s not within [{lower}, {upper}]\n{text}"
        );
        let shipping: f64 = sample(&text, OLDEST, "shipping").expect("shipping's age");
        let lower = before.saturating_duration_since(published).as_secs_f64();
        assert!(
            shipping + slack >= lower && shipping <= upper + slack,
            "shipping's age {shipping} s not within [{lower}, {upper}]\n{text}"
        );
        checked += 1;
        checked >= 2 && age >= 3.0
    })
    .await;
    assert_eq!(sample(&scrape(&ctl), BACKLOG, "billing"), Some(1));
    // The age moves on every pass; status does not carry it.
    idle_passes_write_no_status(&ctl).await;

    held.ack().await.expect("ack");
    wait_until(TIMEOUT, "billing's age back to zero", async || {
        let text = scrape(&ctl);
        sample::<f64>(&text, OLDEST, "billing") == Some(0.0)
            && sample(&text, BACKLOG, "billing") == Some(0)
            && sample::<f64>(&text, OLDEST, "shipping").is_some_and(|a| a > 0.0)
    })
    .await;
    drop(billing);
    ctl.stop().await;
}

/// The per-subscription series keep their logical labels across a swap from Redis to
/// RabbitMQ: only `backend` changes, and no series of the old backend stays behind.
#[tokio::test]
async fn backlog_series_keep_their_labels_across_a_swap() {
    let b = crate::rabbitmq::broker();
    let credentials: &[(&str, &[(&str, &str)])] = &[(
        "rabbit",
        &[("username", &b.username), ("password", &b.password)],
    )];
    let (client, ctl, kube, ns) = provisioned_in("flow-swap", &redis_env(), credentials).await;
    let publisher = client.publisher("orders");
    for i in 0..3 {
        publisher
            .publish(Message::new(format!("order {i}").into_bytes()))
            .await
            .expect("publish");
    }
    wait_until(TIMEOUT, "shipping's backlog of 3 on Redis", async || {
        sample(&scrape(&ctl), BACKLOG, "shipping") == Some(3)
    })
    .await;
    let logical = |labels: &BTreeSet<BTreeMap<String, String>>, backend: &str| {
        labels
            .iter()
            .filter(|l| l.get("backend").map(String::as_str) == Some(backend))
            .map(|l| {
                let mut l = l.clone();
                l.remove("backend");
                l
            })
            .collect::<BTreeSet<_>>()
    };
    let before = series(&scrape(&ctl), BACKLOG);
    let on_redis = logical(&before, "Redis");
    assert_eq!(on_redis.len(), 4, "one series per subscription: {before:?}");
    assert_eq!(on_redis.len(), before.len(), "{before:?}");

    apply_mb(&kube, &ns, &bus_manifest(&crate::rabbitmq::env_yaml(&b))).await;
    wait_until(TIMEOUT, "the series to move to RabbitMQ", async || {
        let after = series(&scrape(&ctl), BACKLOG);
        logical(&after, "RabbitMQ") == on_redis && after.len() == on_redis.len()
    })
    .await;
    ctl.stop().await;
}

/// Kafka requests of one kind the metrics counted.
fn kafka_requests(metrics: &switchyard::metrics::Metrics, request: &str) -> u64 {
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    let want =
        format!("switchyard_broker_requests_total{{backend=\"Kafka\",request=\"{request}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&want)?.parse().ok())
        .unwrap_or(0)
}

/// The consumer-group lag of two MessageBrokers on one Kafka endpoint is read once per flow
/// interval for both: the first pass of each reads its own new groups, later passes within
/// the interval send nothing, and once it has passed one refresh reads every group again.
#[tokio::test(flavor = "multi_thread")]
async fn one_kafka_flow_read_serves_every_message_broker_on_the_endpoint() {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use switchyard::api::{DeletionPolicy, EnvSpec, TopicSpec};
    use switchyard::brokers::{ConnectOptions, Connector, RealConnector};

    let bootstrap = env_var("SWITCHYARD_KAFKA_BOOTSTRAP");
    let env: EnvSpec = serde_json::from_value(serde_json::json!({
        "slug": "prd", "type": "Kafka", "kafka": {"bootstrapServers": [bootstrap]}
    }))
    .expect("env");
    let topics: Vec<TopicSpec> = serde_json::from_value(serde_json::json!([{
        "name": "orders",
        "partitions": 2,
        "subscriptions": [
            {"name": "billing", "deadLetter": {"maxDeliveryAttempts": 3}},
            {"name": "shipping"}
        ]
    }]))
    .expect("topics");
    let metrics = switchyard::metrics::Metrics::default();
    let max_age = Duration::from_secs(3);
    let connector = RealConnector::new(ConnectOptions {
        flow_max_age: max_age,
        requests: metrics.broker_requests.clone(),
        ..ConnectOptions::default()
    });
    let backend = connector
        .connect(&env, &switchyard::secrets::ResolvedSecrets::default())
        .await
        .expect("backend");
    let (a, b) = (scope("flow-share"), scope("flow-share"));
    let mut names = Vec::new();
    for s in [&a, &b] {
        let c = converge(
            backend.as_ref(),
            s,
            &env,
            &topics,
            &BTreeSet::new(),
            DeletionPolicy::Delete,
        )
        .await;
        names.push(c.desired.names);
    }
    // Five records on a's topic, which neither of its groups has read.
    let producer: BaseProducer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", env_var("SWITCHYARD_KAFKA_BOOTSTRAP"))
        .create()
        .expect("producer");
    for i in 0..5 {
        producer
            .send(BaseRecord::<(), _>::to(&names[0]["orders"]).payload(&format!("{i}")))
            .expect("send");
    }
    producer.flush(Duration::from_secs(10)).expect("flush");

    let fetches = || kafka_requests(&metrics, "OffsetFetch");
    let backlog = |f: &BTreeMap<String, switchyard::brokers::FlowReading>, sub: &str| {
        f.get(&format!("orders/{sub}")).and_then(|r| r.backlog)
    };
    let first_read = Instant::now();
    let fa = backend.flow(&names[0]).await.expect("a's flow");
    assert_eq!(backlog(&fa, "billing"), Some(5));
    assert_eq!(backlog(&fa, "shipping"), Some(5));
    assert_eq!(fa["orders/billing"].dead_letters, Some(0));
    assert_eq!(fetches(), 2, "one OffsetFetch per group of a");
    let fb = backend.flow(&names[1]).await.expect("b's flow");
    assert_eq!(backlog(&fb, "billing"), Some(0));
    assert_eq!(fetches(), 4, "b's groups are new: read once");
    let sent = metrics.broker_requests.total();
    for n in &names {
        backend.flow(n).await.expect("flow");
    }
    assert_eq!(
        metrics.broker_requests.total(),
        sent,
        "passes within the interval send nothing"
    );
    // The interval passes (a deadline, not a guess): a's next pass refreshes b's groups too.
    tokio::time::sleep_until((first_read + max_age).into()).await;
    backend.flow(&names[0]).await.expect("a's flow");
    assert_eq!(fetches(), 8, "one refresh read all four groups");
    let sent = metrics.broker_requests.total();
    backend.flow(&names[1]).await.expect("b's flow");
    assert_eq!(metrics.broker_requests.total(), sent, "b is answered by it");
}

#[tokio::test]
async fn nats_backlog_and_dead_letters_reach_the_metrics() {
    let (user, password) = (
        env_var("SWITCHYARD_NATS_USER"),
        env_var("SWITCHYARD_NATS_PASSWORD"),
    );
    let env = format!(
        "{{slug: prd, type: NatsJetStream, natsJetStream: {{servers: [\"{}\"], credentialsSecretRef: {{name: nats}}}}}}",
        env_var("SWITCHYARD_NATS_URL")
    );
    let credentials: &[(&str, &[(&str, &str)])] = &[(
        "nats",
        &[("username", user.as_str()), ("password", password.as_str())],
    )];
    let (client, ctl, kube, ns) = provisioned_in("flow-nats", &env, credentials).await;
    backlog_and_dead_letters(&client, &ctl, &kube, &ns).await;
    ctl.stop().await;
}
