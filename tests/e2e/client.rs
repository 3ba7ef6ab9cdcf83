//! The client library against real brokers: a MessageBroker is provisioned by the controller,
//! its binding Secret is read as an app reads it, and the client publishes and consumes through
//! it. The same checks run on every backend that has a client transport.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use switchyard::client::{Binding, Client, Message, Subscriber};

use crate::support::*;

const TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on waiting for one delivery.
const DELIVERY: Duration = Duration::from_secs(20);

/// Provision a MessageBroker on `env_yaml` with the conformance topics and return a client for
/// its binding, read from the binding Secret as a projected binding would be.
pub(crate) async fn provisioned(prefix: &str, env_yaml: &str) -> (Client, RunningController) {
    let (client, ns) = setup(prefix).await;
    let ctl = start_controller(
        client.clone(),
        &ns,
        Arc::new(switchyard::brokers::RealConnector::default()),
        fast_config(),
    );
    let manifest = format!(
        "apiVersion: switchyard.dev/v1alpha1\nkind: MessageBroker\nmetadata: {{name: bus}}\nspec:\n  deletionPolicy: Delete\n  topics:\n    - name: orders\n      partitions: 3\n      subscriptions:\n        - {{name: billing, deadLetter: {{maxDeliveryAttempts: 5}}}}\n        - {{name: shipping}}\n  envs:\n    - {env_yaml}\n"
    );
    apply_mb(&client, &ns, &manifest).await;
    wait_ready(&client, &ns, "bus", TIMEOUT).await;
    let secret = Api::<Secret>::namespaced(client.clone(), &ns)
        .get("bus-prd")
        .await
        .expect("binding Secret");
    let entries: BTreeMap<String, String> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8(v.0).expect("utf-8")))
        .collect();
    let binding = Binding::from_entries(entries).expect("binding");
    (Client::new(binding).await.expect("client"), ctl)
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
    let target = client
        .binding()
        .target("orders", "billing")
        .expect("target");
    let dlq = target.dead_letter.expect("a dead-letter stream");
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
