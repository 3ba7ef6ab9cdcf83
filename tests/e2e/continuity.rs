//! The promise of the product: an app publishing and consuming at a steady rate keeps running
//! while its env moves from broker to broker, with no restart and no message lost. The app is
//! one `Client` that follows its binding Secret; the operator is the real controller.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchyard::api::{MessageBroker, SwapPhase};
use switchyard::client::{Client, Message};

use crate::support::*;

const TIMEOUT: Duration = Duration::from_secs(90);
/// One message every this often, from one publisher.
const PERIOD: Duration = Duration::from_millis(20);

fn served_by(mb: &MessageBroker) -> Option<String> {
    let env = mb.status.as_ref()?.envs.first()?;
    let settled = env
        .swap
        .as_ref()
        .is_none_or(|s| s.phase == SwapPhase::Complete);
    settled
        .then(|| env.broker_type.map(|t| t.to_string()))
        .flatten()
}

#[derive(Default)]
struct Log {
    /// Confirmed publishes, in order.
    sent: Vec<String>,
    /// Publishes the broker refused (retried with the same message).
    publish_errors: usize,
    /// Deliveries, with when they arrived.
    received: Vec<(String, Instant)>,
    receive_errors: usize,
}

#[tokio::test]
async fn a_steady_stream_crosses_every_broker_without_loss() {
    // What the client does at each flip is in the test output (`--nocapture`).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("TEST_LOG").unwrap_or("switchyard::client=debug".into()))
        .with_test_writer()
        .try_init();
    let (kube, ns) = setup("continuity").await;
    let rabbitmq = backend_env(&kube, &ns, "RabbitMQ").await;
    let ctl = start_real_controller(kube.clone(), &ns);

    let redis = |db: u32| {
        let url = env_var("SWITCHYARD_REDIS_URL");
        let base = url
            .rsplit_once('/')
            .map(|(b, _)| b.to_string())
            .expect("url");
        format!("{{slug: prd, type: Redis, redis: {{url: \"{base}/{db}\"}}}}")
    };
    // The chain of the issue: every broker is left once, and the first is come back to.
    let chain: Vec<(&str, String)> = vec![
        ("RabbitMQ", rabbitmq.clone()),
        ("Kafka", kafka_env()),
        ("Redis", redis(2)),
        (
            "GooglePubSub",
            backend_env(&kube, &ns, "GooglePubSub").await,
        ),
        ("AwsSqs", backend_env(&kube, &ns, "AwsSqs").await),
        (
            "NatsJetStream",
            backend_env(&kube, &ns, "NatsJetStream").await,
        ),
        ("RabbitMQ", rabbitmq),
    ];
    apply_mb(&kube, &ns, &orders_on(&chain[0].1)).await;
    wait_ready(&kube, &ns, "bus", TIMEOUT).await;

    let app = Client::from_secret(&kube, &ns, "bus-prd")
        .await
        .expect("client");
    let log = Arc::new(Mutex::new(Log::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));

    let publisher = {
        let (p, log, stop) = (app.publisher("orders"), log.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PERIOD);
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                let m = Message::new(i.to_string().into_bytes()).with_key(format!("k{}", i % 7));
                // A refused publish is the app's to retry: the same message, until confirmed.
                loop {
                    match p.publish(m.clone()).await {
                        Ok(()) => break,
                        Err(e) => {
                            log.lock().expect("log").publish_errors += 1;
                            eprintln!("publish {i}: {e}");
                            tick.tick().await;
                        }
                    }
                }
                log.lock().expect("log").sent.push(m.id);
                i += 1;
            }
        })
    };
    let consumer = {
        let (app, log) = (app.clone(), log.clone());
        tokio::spawn(async move {
            let mut sub = app
                .subscriber("orders", "billing")
                .await
                .expect("subscribe");
            loop {
                match sub.next().await {
                    Ok(d) => {
                        log.lock()
                            .expect("log")
                            .received
                            .push((d.message.id.clone(), Instant::now()));
                        if let Err(e) = d.ack().await {
                            eprintln!("ack: {e}");
                        }
                    }
                    Err(e) => {
                        log.lock().expect("log").receive_errors += 1;
                        eprintln!("receive: {e}");
                    }
                }
            }
        })
    };

    let mut swaps = Vec::new();
    for (broker, env) in &chain[1..] {
        let started = Instant::now();
        let before = log.lock().expect("log").sent.len();
        apply_mb(&kube, &ns, &orders_on(env)).await;
        wait_for_mb(
            &kube,
            &ns,
            "bus",
            TIMEOUT,
            &format!("served by {broker}"),
            |m| served_by(m).as_deref() == Some(broker) && condition_true(m, "Ready"),
        )
        .await;
        wait_until(TIMEOUT, "the app to follow the binding", async || {
            !app.draining() && app.binding().get("previous.type").is_none()
        })
        .await;
        let after = log.lock().expect("log").sent.len();
        swaps.push((broker.to_string(), started.elapsed(), after - before));
    }
    // Some traffic on the last side, then stop publishing and wait for everything.
    let last = log.lock().expect("log").sent.len();
    wait_until(TIMEOUT, "publishing on the last side", async || {
        log.lock().expect("log").sent.len() >= last + 50
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    publisher.await.expect("publisher");
    let sent: BTreeSet<String> = log.lock().expect("log").sent.iter().cloned().collect();
    wait_until(TIMEOUT, "every confirmed message consumed", async || {
        let l = log.lock().expect("log");
        let got: BTreeSet<&String> = l.received.iter().map(|(id, _)| id).collect();
        sent.iter().all(|id| got.contains(id))
    })
    .await;
    consumer.abort();

    {
        let l = log.lock().expect("log");
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for (id, _) in &l.received {
            *counts.entry(id.as_str()).or_default() += 1;
        }
        let lost = sent
            .iter()
            .filter(|id| !counts.contains_key(id.as_str()))
            .count();
        let duplicates: usize = counts.values().map(|c| c - 1).sum();
        let max_gap = l
            .received
            .windows(2)
            .map(|w| w[1].1 - w[0].1)
            .max()
            .unwrap_or_default();
        eprintln!(
            "continuity: {} sent, {} received, {lost} lost, {duplicates} duplicates, {} publish errors, {} receive errors, longest gap between deliveries {max_gap:?}",
            sent.len(),
            l.received.len(),
            l.publish_errors,
            l.receive_errors,
        );
        for (broker, took, published) in &swaps {
            eprintln!(
                "continuity: swap to {broker}: {took:?}, {published} messages published meanwhile"
            );
        }
        assert_eq!(lost, 0, "no confirmed message is lost across the swaps");
        assert!(
            swaps.iter().all(|(_, _, published)| *published > 0),
            "the app kept publishing through every swap: {swaps:?}"
        );
    }
    ctl.stop().await;
}
