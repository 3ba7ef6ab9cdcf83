//! The binding Secret and broker swaps, against the real API server and brokers: the binding
//! flips exactly once, only when the new side is ready; the old side is retained or retired by
//! the deletion policy; an operator killed mid-swap resumes from status.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use lapin::options::QueuePurgeOptions;
use switchyard::api::{MessageBroker, SwapPhase};
use switchyard::brokers::RealConnector;

use crate::rabbitmq;
use crate::support::*;

const TIMEOUT: Duration = Duration::from_secs(60);

fn manifest(name: &str, policy: &str, topics: usize, env_block: &str) -> String {
    let topics: String = (0..topics)
        .map(|i| format!("    - name: topic-{i}\n      subscriptions: [{{name: app}}]\n"))
        .collect();
    format!(
        "apiVersion: switchyard.dev/v1alpha1\nkind: MessageBroker\nmetadata: {{name: {name}}}\nspec:\n  deletionPolicy: {policy}\n  topics:\n{topics}  envs:\n{env_block}\n"
    )
}

fn redis_env() -> String {
    format!(
        "    - {{slug: prd, type: Redis, redis: {{url: \"{}\"}}}}",
        env_var("SWITCHYARD_REDIS_URL")
    )
}

fn pubsub_env(endpoint: &str) -> String {
    format!(
        "    - {{slug: prd, type: GooglePubSub, googlePubSub: {{projectId: switchyard-test, endpoint: \"{endpoint}\"}}}}"
    )
}

fn rabbit_env() -> String {
    format!("    - {}", rabbitmq::env_yaml(&rabbitmq::broker()))
}

async fn binding(client: &Client, ns: &str, name: &str) -> Option<BTreeMap<String, String>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let s = api.get_opt(name).await.ok()??;
    Some(
        s.data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
            .collect(),
    )
}

/// Records every distinct content of a binding Secret (by hash) while it runs.
struct FlipRecorder {
    seen: Arc<Mutex<Vec<(String, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FlipRecorder {
    fn start(client: Client, ns: String, name: String) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Some(d) = binding(&client, &ns, &name).await {
                    let entry = (
                        d.get("names.json").cloned().unwrap_or_default() + &d["type"],
                        d["type"].clone(),
                    );
                    let mut v = s.lock().expect("lock");
                    if v.last().map(|l: &(String, String)| &l.0) != Some(&entry.0) {
                        v.push(entry);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        FlipRecorder { seen, task }
    }

    /// Stop recording; a final read makes sure the latest content is included.
    async fn types(self, client: &Client, ns: &str, name: &str) -> Vec<String> {
        self.task.abort();
        let mut v = self.seen.lock().expect("lock").clone();
        if let Some(d) = binding(client, ns, name).await {
            let entry = (
                d.get("names.json").cloned().unwrap_or_default() + &d["type"],
                d["type"].clone(),
            );
            if v.last().map(|l| &l.0) != Some(&entry.0) {
                v.push(entry);
            }
        }
        v.into_iter().map(|e| e.1).collect()
    }
}

fn env_swap_phase(mb: &MessageBroker) -> Option<SwapPhase> {
    mb.status
        .as_ref()?
        .envs
        .iter()
        .find(|e| e.slug == "prd")?
        .swap
        .as_ref()
        .map(|s| s.phase)
}

async fn wait_binding_type(client: &Client, ns: &str, name: &str, want: &str) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if binding(client, ns, name)
            .await
            .is_some_and(|d| d.get("type").map(String::as_str) == Some(want))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "binding {name} never became {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn redis_to_pubsub_flips_the_binding_once_and_retains_the_old_side() {
    let (client, ns) = setup("swap-rp").await;
    let ctl = start_real_controller(client.clone(), &ns);

    apply_mb(&client, &ns, &manifest("bus", "Retain", 10, &redis_env())).await;
    let before = wait_for_mb(&client, &ns, "bus", TIMEOUT, "Ready on Redis", |m| {
        condition_true(m, "Ready")
    })
    .await;
    let old_objects = before.status.as_ref().expect("status").envs[0]
        .owned
        .clone();
    assert!(!old_objects.is_empty());
    let data = binding(&client, &ns, "bus-prd").await.expect("binding");
    assert_eq!(data["type"], "redis");
    assert!(data["uri"].starts_with("redis://"));

    let recorder = FlipRecorder::start(client.clone(), ns.clone(), "bus-prd".into());
    let started = Instant::now();
    apply_mb(
        &client,
        &ns,
        &manifest(
            "bus",
            "Retain",
            10,
            &pubsub_env(&env_var("SWITCHYARD_PUBSUB_ENDPOINT")),
        ),
    )
    .await;
    wait_binding_type(&client, &ns, "bus-prd", "google-pubsub").await;
    let flip = started.elapsed();
    eprintln!("swap Redis → GooglePubSub, 10 topics: apply → binding flip {flip:?}");

    let after = wait_for_mb(&client, &ns, "bus", TIMEOUT, "swap complete", |m| {
        condition_true(m, "Ready") && env_swap_phase(m) == Some(SwapPhase::Complete)
    })
    .await;
    let types = recorder.types(&client, &ns, "bus-prd").await;
    assert_eq!(
        types,
        vec!["redis".to_string(), "google-pubsub".to_string()],
        "binding must change exactly once"
    );

    let env = &after.status.as_ref().expect("status").envs[0];
    let swap = env.swap.as_ref().expect("swap recorded");
    assert_eq!(
        (swap.from.as_str(), swap.to.as_str()),
        ("Redis", "GooglePubSub")
    );
    assert!(swap.switched_at.is_some());
    assert_eq!(
        after.status.as_ref().expect("status").env_summary,
        "prd:GooglePubSub"
    );
    // Retain: the old streams are still on Redis and listed as retained.
    for o in &old_objects {
        assert!(
            env.retained.contains(o),
            "{o} not listed as retained: {:?}",
            env.retained
        );
    }
    let redis = ::redis::Client::open(env_var("SWITCHYARD_REDIS_URL").as_str()).expect("redis");
    let mut conn = redis
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let stream = format!("{ns}:bus:topic-0");
    let exists: i64 = ::redis::cmd("EXISTS")
        .arg(&stream)
        .query_async(&mut conn)
        .await
        .expect("exists");
    assert_eq!(exists, 1, "Retain must keep {stream}");
    ctl.stop().await;
}

#[tokio::test]
async fn an_unreachable_target_never_flips_and_a_restarted_operator_resumes() {
    let (client, ns) = setup("swap-down").await;
    let ctl = start_real_controller(client.clone(), &ns);
    apply_mb(&client, &ns, &manifest("bus", "Retain", 2, &redis_env())).await;
    wait_for_mb(&client, &ns, "bus", TIMEOUT, "Ready on Redis", |m| {
        condition_true(m, "Ready")
    })
    .await;

    apply_mb(
        &client,
        &ns,
        &manifest("bus", "Retain", 2, &pubsub_env("http://127.0.0.1:1")),
    )
    .await;
    let stuck = wait_for_mb(
        &client,
        &ns,
        "bus",
        TIMEOUT,
        "swap provisioning against a dead target",
        |m| {
            env_swap_phase(m) == Some(SwapPhase::Provisioning)
                && m.status.as_ref().is_some_and(|s| {
                    s.envs[0]
                        .conditions
                        .iter()
                        .any(|c| c.type_ == "Connected" && c.status == "False")
                })
        },
    )
    .await;
    let ready = condition(&stuck, "Ready").expect("Ready");
    assert_eq!(ready.status, "False");
    // Several more passes: the binding still points at Redis.
    let passes = ctl.metrics.reconciles.get();
    let deadline = Instant::now() + TIMEOUT;
    while ctl.metrics.reconciles.get() < passes + 3 {
        assert!(Instant::now() < deadline, "no retries happened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        binding(&client, &ns, "bus-prd").await.expect("binding")["type"],
        "redis"
    );

    // Kill the operator mid-swap (no graceful shutdown), fix the target, start a new one.
    ctl.kill();
    apply_mb(
        &client,
        &ns,
        &manifest(
            "bus",
            "Retain",
            2,
            &pubsub_env(&env_var("SWITCHYARD_PUBSUB_ENDPOINT")),
        ),
    )
    .await;
    let ctl = start_real_controller(client.clone(), &ns);
    let done = wait_for_mb(
        &client,
        &ns,
        "bus",
        TIMEOUT,
        "swap complete after restart",
        |m| condition_true(m, "Ready") && env_swap_phase(m) == Some(SwapPhase::Complete),
    )
    .await;
    assert_eq!(
        binding(&client, &ns, "bus-prd").await.expect("binding")["type"],
        "google-pubsub"
    );
    let swap = done.status.as_ref().expect("status").envs[0]
        .swap
        .clone()
        .expect("swap");
    assert_eq!(swap.from.as_str(), "Redis");
    ctl.stop().await;
}

#[tokio::test]
async fn delete_policy_retires_the_old_side_only_when_drained_across_a_restart() {
    let (client, ns) = setup("swap-del").await;
    let b = rabbitmq::broker();
    rabbitmq::env_with_secret(&client, &ns).await;
    let ctl = start_real_controller(client.clone(), &ns);
    apply_mb(&client, &ns, &manifest("bus", "Delete", 1, &rabbit_env())).await;
    let ready = wait_for_mb(&client, &ns, "bus", TIMEOUT, "Ready on RabbitMQ", |m| {
        condition_true(m, "Ready")
    })
    .await;
    let env = &ready.status.as_ref().expect("status").envs[0];
    let exchange = env.topics[0].physical_name.clone();
    let queue = env.topics[0].subscriptions[0].physical_name.clone();
    let data = binding(&client, &ns, "bus-prd").await.expect("binding");
    assert_eq!(data["type"], "rabbitmq");
    assert_eq!(
        data["password"], b.password,
        "binding copies the referenced password"
    );

    // A message waits in the old queue: retirement must block on it.
    let conn = rabbitmq::amqp(&b).await;
    rabbitmq::publish(&conn, &exchange, "k", 1).await;

    apply_mb(&client, &ns, &manifest("bus", "Delete", 1, &redis_env())).await;
    wait_binding_type(&client, &ns, "bus-prd", "redis").await;
    let blocked = wait_for_mb(
        &client,
        &ns,
        "bus",
        TIMEOUT,
        "retiring blocked by the full queue",
        |m| {
            env_swap_phase(m) == Some(SwapPhase::Retiring)
                && m.status.as_ref().is_some_and(|s| {
                    s.envs[0]
                        .swap
                        .as_ref()
                        .is_some_and(|w| w.draining.iter().map(|d| d.messages).sum::<u64>() == 1)
                })
        },
    )
    .await;
    let msg = blocked
        .status
        .as_ref()
        .and_then(|s| s.envs[0].swap.as_ref()?.message.clone())
        .unwrap_or_default();
    assert!(msg.contains("1 message"), "{msg}");
    assert_eq!(
        rabbitmq::ready(&conn, &queue).await,
        1,
        "the queue with a message must survive"
    );

    // Kill during Retiring, drain the queue, restart: retirement completes and deletes the old side.
    ctl.kill();
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
        .await
        .expect("purge");
    let ctl = start_real_controller(client.clone(), &ns);
    wait_for_mb(
        &client,
        &ns,
        "bus",
        TIMEOUT,
        "swap complete after drain",
        |m| env_swap_phase(m) == Some(SwapPhase::Complete),
    )
    .await;
    let http = reqwest::Client::new();
    for path in [
        format!("/api/queues/%2F/{}", rabbitmq::enc(&queue)),
        format!("/api/exchanges/%2F/{}", rabbitmq::enc(&exchange)),
    ] {
        let resp = http
            .get(format!("{}{path}", b.management))
            .basic_auth(&b.username, Some(&b.password))
            .send()
            .await
            .expect("management API");
        assert_eq!(
            resp.status().as_u16(),
            404,
            "{path} should be deleted under Delete"
        );
    }
    ctl.stop().await;
}

#[tokio::test]
async fn a_rotated_secret_reaches_the_binding() {
    let (client, ns) = setup("rotate").await;
    // An ACL user with two valid passwords on the protected server, so rotation keeps it connected.
    let admin_url = env_var("SWITCHYARD_REDIS_AUTH_URL").replacen(
        "redis://",
        &format!("redis://:{}@", env_var("SWITCHYARD_REDIS_AUTH_PASSWORD")),
        1,
    );
    let admin = ::redis::Client::open(admin_url.as_str()).expect("redis");
    let mut conn = admin
        .get_multiplexed_async_connection()
        .await
        .expect("redis admin");
    let user = unique("rot").replace('-', "_");
    let _: String = ::redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("on")
        .arg(">first-secret-1")
        .arg(">second-secret-2")
        .arg("~*")
        .arg("+@all")
        .query_async(&mut conn)
        .await
        .expect("acl setuser");
    put_secret(
        &client,
        &ns,
        "redis-user",
        &[("username", &user), ("password", "first-secret-1")],
    )
    .await;
    let env_block = format!(
        "    - {{slug: prd, type: Redis, redis: {{url: \"{}\", usernameSecretRef: {{name: redis-user, key: username}}, passwordSecretRef: {{name: redis-user, key: password}}}}}}",
        env_var("SWITCHYARD_REDIS_AUTH_URL")
    );
    let config = switchyard::controller::Config {
        resync: Duration::from_secs(300),
        ..fast_config()
    };
    let ctl = start_controller(
        client.clone(),
        &ns,
        Arc::new(RealConnector::default()),
        config,
    );
    apply_mb(&client, &ns, &manifest("bus", "Retain", 1, &env_block)).await;
    wait_ready(&client, &ns, "bus", TIMEOUT).await;
    assert_eq!(
        binding(&client, &ns, "bus-prd").await.expect("binding")["password"],
        "first-secret-1"
    );

    // Rotate: the Secret watch re-reconciles well before the (5 minute) resync.
    let started = Instant::now();
    put_secret(
        &client,
        &ns,
        "redis-user",
        &[("username", &user), ("password", "second-secret-2")],
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if binding(&client, &ns, "bus-prd")
            .await
            .is_some_and(|d| d["password"] == "second-secret-2")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rotation did not reach the binding within 20s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("secret rotation → binding: {:?}", started.elapsed());
    ctl.stop().await;
}

fn kafka_env() -> String {
    format!(
        "    - {{slug: prd, type: Kafka, kafka: {{bootstrapServers: [\"{}\"]}}}}",
        env_var("SWITCHYARD_KAFKA_BOOTSTRAP")
    )
}

#[tokio::test]
async fn rabbitmq_to_kafka_and_back_flips_once_each_way() {
    let (client, ns) = setup("swap-rk").await;
    rabbitmq::env_with_secret(&client, &ns).await;
    let ctl = start_real_controller(client.clone(), &ns);
    apply_mb(&client, &ns, &manifest("bus", "Retain", 10, &rabbit_env())).await;
    wait_for_mb(&client, &ns, "bus", TIMEOUT, "Ready on RabbitMQ", |m| {
        condition_true(m, "Ready")
    })
    .await;

    for (to, binding_type, from) in [
        (kafka_env(), "kafka", "RabbitMQ"),
        (rabbit_env(), "rabbitmq", "Kafka"),
    ] {
        let recorder = FlipRecorder::start(client.clone(), ns.clone(), "bus-prd".into());
        let started = Instant::now();
        apply_mb(&client, &ns, &manifest("bus", "Retain", 10, &to)).await;
        wait_binding_type(&client, &ns, "bus-prd", binding_type).await;
        eprintln!(
            "swap {from} → {binding_type}, 10 topics: apply → binding flip {:?}",
            started.elapsed()
        );
        let done = wait_for_mb(&client, &ns, "bus", TIMEOUT, "swap complete", |m| {
            condition_true(m, "Ready")
                && m.status.as_ref().is_some_and(|s| {
                    s.envs[0]
                        .swap
                        .as_ref()
                        .is_some_and(|w| w.phase == SwapPhase::Complete && w.from.as_str() == from)
                })
        })
        .await;
        let types = recorder.types(&client, &ns, "bus-prd").await;
        assert_eq!(
            types.len(),
            2,
            "binding must change exactly once: {types:?}"
        );
        assert_eq!(types.last().map(String::as_str), Some(binding_type));
        let env = &done.status.as_ref().expect("status").envs[0];
        assert!(env.topics.iter().all(|t| t.ready), "{:?}", env.topics);
    }
    // Back on RabbitMQ: the exchanges it kept under Retain are ours again, not a conflict.
    let mb = wait_ready(&client, &ns, "bus", TIMEOUT).await;
    assert!(condition(&mb, "Stalled").is_none(), "{:?}", mb.status);
    ctl.stop().await;
}
