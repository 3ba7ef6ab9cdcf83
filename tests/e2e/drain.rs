//! A swap loses no message: messages queued on the old side when the binding flips are drained
//! by subscribers through the binding's `previous.` entries, then the operator retires the old
//! side and the MessageBroker is Ready with no manual step.

use std::collections::BTreeSet;
use std::time::Duration;

use switchyard::api::{MessageBroker, SwapPhase};
use switchyard::client::{Binding, Client, Message, Subscriber};

use crate::support::*;

const TIMEOUT: Duration = Duration::from_secs(60);

async fn binding(client: &kube::Client, ns: &str) -> Binding {
    Binding::from_secret(client, ns, "bus-prd")
        .await
        .expect("binding Secret")
}

/// What the swap's status says the old side still holds, by logical name.
fn draining(mb: &MessageBroker) -> Vec<(String, u64)> {
    mb.status
        .as_ref()
        .and_then(|s| s.envs.first())
        .and_then(|e| e.swap.as_ref())
        .map(|s| {
            s.draining
                .iter()
                .map(|d| (d.name.clone(), d.messages))
                .collect()
        })
        .unwrap_or_default()
}

/// Two databases of the test Redis are two endpoints: moving between them is a swap. The
/// manifest of `bus` on database `db` under `policy`, and the database's URL.
fn redis_db(db: u32, policy: &str) -> (String, String) {
    let base = env_var("SWITCHYARD_REDIS_URL");
    let base = base.rsplit_once('/').map(|(b, _)| b).expect("url");
    let url = format!("{base}/{db}");
    let manifest = orders_on(&format!(
        "{{slug: prd, type: Redis, redis: {{url: \"{url}\"}}}}"
    ))
    .replace(
        "deletionPolicy: Delete",
        &format!("deletionPolicy: {policy}"),
    );
    (manifest, url)
}

/// `bus` Ready on Redis database 0 under `policy`: a client of its binding, and the
/// database's URL.
async fn ready_on_redis(client: &kube::Client, ns: &str, policy: &str) -> (Client, String) {
    let (manifest, url) = redis_db(0, policy);
    apply_mb(client, ns, &manifest).await;
    wait_ready(client, ns, "bus", TIMEOUT).await;
    let app = Client::new(binding(client, ns).await)
        .await
        .expect("client");
    (app, url)
}

/// Whether the Redis stream `name` exists at `url`.
async fn stream_exists(url: &str, name: &str) -> bool {
    let mut conn = ::redis::Client::open(url)
        .expect("redis")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let n: u32 = ::redis::cmd("EXISTS")
        .arg(name)
        .query_async(&mut conn)
        .await
        .expect("EXISTS");
    n == 1
}

fn phase(mb: &MessageBroker) -> Option<SwapPhase> {
    mb.status
        .as_ref()?
        .envs
        .first()?
        .swap
        .as_ref()
        .map(|s| s.phase)
}

/// Wait until the swap of `bus` completed and it is Ready.
async fn swap_complete(client: &kube::Client, ns: &str) -> MessageBroker {
    wait_for_mb(client, ns, "bus", TIMEOUT, "swap complete and Ready", |m| {
        phase(m) == Some(SwapPhase::Complete) && condition_true(m, "Ready")
    })
    .await
}

/// Publish `n` messages (payload `<label> <i>`) through `client`, adding their ids to `sent`.
async fn publish_n(client: &Client, label: &str, n: usize, sent: &mut BTreeSet<String>) {
    let publisher = client.publisher("orders");
    for i in 0..n {
        let m = Message::new(format!("{label} {i}").into_bytes());
        sent.insert(m.id.clone());
        publisher.publish(m).await.expect("publish");
    }
}

/// Receive until every message of `sent` arrived, acking each; the deliveries it took.
pub(crate) async fn consume_all(sub: &mut Subscriber, sent: &BTreeSet<String>) -> usize {
    let mut got = BTreeSet::new();
    let mut deliveries = 0;
    while got.len() < sent.len() {
        let d = tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .unwrap_or_else(|_| panic!("{} of {} received, then nothing", got.len(), sent.len()))
            .expect("receive");
        deliveries += 1;
        assert!(
            sent.contains(&d.message.id),
            "only messages that were sent arrive"
        );
        got.insert(d.message.id.clone());
        d.ack().await.expect("ack");
    }
    deliveries
}

#[tokio::test]
async fn messages_queued_at_a_swap_are_drained_and_the_old_side_retired() {
    let (client, ns) = setup("drain").await;
    let ctl = start_real_controller(client.clone(), &ns);
    let (old, url_0) = ready_on_redis(&client, &ns, "Delete").await;

    // 100 messages queued with no consumer running.
    let mut sent = BTreeSet::new();
    publish_n(&old, "old", 100, &mut sent).await;

    // The swap: the binding flips, and the old stream cannot be deleted while it holds them.
    apply_mb(&client, &ns, &redis_db(1, "Delete").0).await;
    wait_for_mb(&client, &ns, "bus", TIMEOUT, "flipped", |m| {
        phase(m) == Some(SwapPhase::Retiring)
    })
    .await;
    // Status says what is left to drain, per subscription (the consumer group's count).
    wait_for_mb(&client, &ns, "bus", TIMEOUT, "100 messages draining", |m| {
        draining(m) == [("orders/billing".to_string(), 100)]
    })
    .await;
    let flipped = binding(&client, &ns).await;
    assert_eq!(flipped.get("previous.type"), Some("redis"));
    assert!(
        flipped.get("uri").is_some_and(|u| u.ends_with("/1")),
        "publishers go to the new side"
    );
    let app = Client::new(flipped).await.expect("client");
    assert!(app.draining());

    // New messages go to the new side; the subscriber gets old and new.
    publish_n(&app, "new", 20, &mut sent).await;
    let mut sub = app
        .subscriber("orders", "billing")
        .await
        .expect("subscribe");
    let deliveries = consume_all(&mut sub, &sent).await;
    eprintln!(
        "drain: {} messages, {} deliveries ({} duplicates)",
        sent.len(),
        deliveries,
        deliveries - sent.len()
    );

    // Drained: the operator retires the old side and drops `previous.` from the binding.
    let mb = swap_complete(&client, &ns).await;
    assert!(
        mb.metadata.annotations.unwrap_or_default().is_empty(),
        "no annotation was needed"
    );
    let after = binding(&client, &ns).await;
    assert!(
        after.entries().keys().all(|k| !k.starts_with("previous.")),
        "{:?}",
        after.entries().keys().collect::<Vec<_>>()
    );
    let old_stream = old.binding().topic("orders").expect("topic");
    assert!(
        !stream_exists(&url_0, &old_stream).await,
        "the old stream is retired under Delete"
    );
    ctl.stop().await;
}

/// Under Retain the old side is released untouched, and only once its subscribers have drained
/// it: until then the binding keeps naming it, so nothing is left where no app reads.
#[tokio::test]
async fn under_retain_the_old_side_is_released_once_drained_and_kept() {
    let (client, ns) = setup("drain-retain").await;
    let ctl = start_real_controller(client.clone(), &ns);
    let (old, url_0) = ready_on_redis(&client, &ns, "Retain").await;
    let mut sent = BTreeSet::new();
    publish_n(&old, "old", 30, &mut sent).await;

    apply_mb(&client, &ns, &redis_db(1, "Retain").0).await;
    // Past the grace period, retirement waits for the 30 messages instead of releasing.
    let mb = wait_for_mb(&client, &ns, "bus", TIMEOUT, "30 messages draining", |m| {
        draining(m) == [("orders/billing".to_string(), 30)]
    })
    .await;
    assert_eq!(phase(&mb), Some(SwapPhase::Retiring));
    let app = Client::new(binding(&client, &ns).await)
        .await
        .expect("client");
    assert!(app.draining(), "the binding still names the old side");
    let mut sub = app
        .subscriber("orders", "billing")
        .await
        .expect("subscribe");
    consume_all(&mut sub, &sent).await;

    let mb = swap_complete(&client, &ns).await;
    let after = binding(&client, &ns).await;
    assert!(after.entries().keys().all(|k| !k.starts_with("previous.")));
    let old_stream = old.binding().topic("orders").expect("topic");
    assert!(
        stream_exists(&url_0, &old_stream).await,
        "Retain leaves the old stream in place"
    );
    let retained = &mb.status.expect("status").envs[0].retained;
    assert!(
        retained.iter().any(|k| k.ends_with(&old_stream)),
        "status lists the retained stream: {retained:?}"
    );
    ctl.stop().await;
}

/// The scenario of the report that started the client library: messages left unconsumed on a
/// RabbitMQ queue, then a swap to Kafka under Delete. Here 1,000 of them, and one app that
/// follows its binding Secret and starts consuming only after the flip.
#[tokio::test]
async fn a_thousand_messages_queued_on_rabbitmq_reach_the_app_after_a_swap_to_kafka() {
    const QUEUED: usize = 1_000;
    let (client, ns) = setup("drain-1000").await;
    let rabbitmq = crate::rabbitmq::env_with_secret(&client, &ns).await;
    let ctl = start_real_controller(client.clone(), &ns);
    apply_mb(&client, &ns, &orders_on(&rabbitmq)).await;
    wait_ready(&client, &ns, "bus", TIMEOUT).await;
    let app = Client::from_secret(&client, &ns, "bus-prd")
        .await
        .expect("client");
    let mut sent = BTreeSet::new();
    publish_n(&app, "queued", QUEUED, &mut sent).await;

    let swapped = std::time::Instant::now();
    apply_mb(&client, &ns, &orders_on(&kafka_env())).await;
    let mut app_view = app.clone();
    while app.binding().broker_type() != "kafka" {
        tokio::time::timeout(TIMEOUT, app_view.binding_changed())
            .await
            .expect("the binding flips to Kafka")
            .expect("the client follows its binding");
    }
    assert!(app.draining(), "the old side is still drained");
    let mut sub = app
        .subscriber("orders", "billing")
        .await
        .expect("subscribe");
    let deliveries = consume_all(&mut sub, &sent).await;
    let drained = swapped.elapsed();
    // Drained: the RabbitMQ queue is retired and the binding no longer names it.
    swap_complete(&client, &ns).await;
    wait_until(TIMEOUT, "the app to stop draining", async || {
        !app.draining()
    })
    .await;
    eprintln!(
        "drain: {QUEUED} queued on RabbitMQ, swap to Kafka: all received {drained:?} after the swap began, {deliveries} deliveries ({} duplicates)",
        deliveries - sent.len()
    );
    ctl.stop().await;
}

/// Leaving Kafka: a topic keeps its records after they are read, so what blocks its deletion
/// is what the subscription's consumer group has not read. Unread messages keep it; once the
/// app has consumed them, the topic is deleted and the swap completes.
#[tokio::test]
async fn a_kafka_topic_is_retired_once_its_consumer_group_has_read_everything() {
    const QUEUED: usize = 50;
    let (client, ns) = setup("drain-kafka").await;
    let ctl = start_real_controller(client.clone(), &ns);
    apply_mb(&client, &ns, &orders_on(&kafka_env())).await;
    wait_ready(&client, &ns, "bus", TIMEOUT).await;
    let app = Client::from_secret(&client, &ns, "bus-prd")
        .await
        .expect("client");
    let kafka_topic = app.binding().topic("orders").expect("topic");
    let mut sent = BTreeSet::new();
    publish_n(&app, "queued", QUEUED, &mut sent).await;

    apply_mb(
        &client,
        &ns,
        &orders_on(&format!(
            "{{slug: prd, type: Redis, redis: {{url: \"{}\"}}}}",
            env_var("SWITCHYARD_REDIS_URL")
        )),
    )
    .await;
    // Nobody has read them: the topic is kept, and status says how many wait, per topic
    // (consumer groups are no objects on Kafka: the slowest group's lag).
    wait_for_mb(
        &client,
        &ns,
        "bus",
        TIMEOUT,
        "blocked on the unread messages",
        |m| draining(m) == [("orders".to_string(), QUEUED as u64)],
    )
    .await;
    assert_eq!(
        crate::kafka::Raw::new().partitions(&[&kafka_topic]).len(),
        1,
        "the topic is kept while its group has not read it"
    );

    let mut sub = app
        .subscriber("orders", "billing")
        .await
        .expect("subscribe");
    consume_all(&mut sub, &sent).await;
    swap_complete(&client, &ns).await;
    assert!(
        crate::kafka::Raw::new()
            .partitions(&[&kafka_topic])
            .is_empty(),
        "the read topic is deleted under Delete"
    );
    ctl.stop().await;
}
