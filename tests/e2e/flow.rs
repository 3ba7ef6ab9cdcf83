//! Message flow in the operator's metrics: the backlog of a subscription is what its consumers
//! have not acknowledged, and dead letters are counted, on the brokers whose observation tells
//! them per subscription. Read from the metrics text exactly as Prometheus scrapes it.

use std::time::Duration;

use prometheus_client::registry::Registry;
use switchyard::client::{Client, Message};

use crate::client::provisioned_in;
use crate::support::*;

const TIMEOUT: Duration = Duration::from_secs(60);

/// The value of `metric` for subscription `sub` of topic `orders` in the exposition text.
fn sample(text: &str, metric: &str, sub: &str) -> Option<i64> {
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

/// Publish 10, consume and ack 4 on billing, dead-letter one more on billing: billing's backlog
/// is 6, shipping's (nobody reads it) 10; then a poison message ends in billing's dead letters.
async fn backlog_and_dead_letters(
    client: &Client,
    ctl: &RunningController,
    kube: &kube::Client,
    ns: &str,
) {
    let publisher = client.publisher("orders");
    for i in 0..10 {
        publisher
            .publish(Message::new(format!("order {i}").into_bytes()))
            .await
            .expect("publish");
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
        d.ack().await.expect("ack");
    }
    drop(billing);
    wait_until(TIMEOUT, "billing's backlog of 6", async || {
        sample(
            &scrape(ctl),
            "switchyard_subscription_backlog_messages",
            "billing",
        ) == Some(6)
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
    let text = scrape(ctl);
    assert_eq!(
        sample(
            &text,
            "switchyard_subscription_backlog_messages",
            "shipping"
        ),
        Some(10),
        "{text}"
    );
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
    let mut nacked = 0;
    while nacked < 5 {
        let d = tokio::time::timeout(TIMEOUT, billing.next())
            .await
            .expect("a delivery")
            .expect("receive");
        if d.message.id == poison.id {
            d.nack().await.expect("nack");
            nacked += 1;
        } else {
            d.ack().await.expect("ack");
        }
    }
    // Everything else on billing was acked while waiting for the poison's redeliveries.
    let after = Message::new(b"after".to_vec());
    publisher.publish(after.clone()).await.expect("publish");
    loop {
        let d = tokio::time::timeout(TIMEOUT, billing.next())
            .await
            .expect("a delivery")
            .expect("receive");
        let done = d.message.id == after.id;
        d.ack().await.expect("ack");
        if done {
            break;
        }
    }
    drop(billing);
    wait_until(TIMEOUT, "one dead letter and billing drained", async || {
        let text = scrape(ctl);
        sample(&text, "switchyard_deadletter_messages", "billing") == Some(1)
            && sample(&text, "switchyard_subscription_backlog_messages", "billing") == Some(0)
    })
    .await;
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
