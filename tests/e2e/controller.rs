//! The controller against the real API server, with the in-memory broker standing in for the
//! brokers (their own tests run against real brokers). Proves status, events, binding,
//! finalizer, idle behaviour, env isolation and the shipped RBAC.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::{DeleteParams, ListParams};
use switchyard::api::{BrokerType, MessageBroker};
use switchyard::brokers::fake::FakeConnector;

use crate::support::*;

const TIMEOUT: Duration = Duration::from_secs(30);

fn two_env_manifest(name: &str) -> String {
    let header = mb_header(name);
    format!(
        r#"{header}spec:
  displayName: Message Bus
  topics:
    - name: order-created
      partitions: 3
      retention: 168h
      subscriptions: [{{name: billing}}, {{name: shipping}}]
    - name: order-paid
  envs:
    - slug: prd
      type: Kafka
      kafka: {{bootstrapServers: ["kafka.example:9092"]}}
    - slug: dev
      type: Redis
      redis: {{url: "redis://redis.example:6379/0"}}
"#
    )
}

fn env_condition(mb: &MessageBroker, slug: &str, type_: &str) -> Option<(String, String)> {
    let env = mb.status.as_ref()?.envs.iter().find(|e| e.slug == slug)?;
    let c = switchyard::api::conditions::find(&env.conditions, type_)?;
    Some((c.status.clone(), c.reason.clone()))
}

#[tokio::test]
async fn reconciles_to_ready_with_status_binding_events_and_finalizer() {
    let (client, ns) = setup("ctl-ready").await;
    let connector = Arc::new(FakeConnector::default());
    let ctl = start_controller(client.clone(), &ns, connector.clone(), fast_config());

    apply_mb(&client, &ns, &two_env_manifest("bus")).await;
    let mb = wait_ready(&client, &ns, "bus", TIMEOUT).await;
    let status = mb.status.clone().expect("status");
    assert_eq!(status.observed_generation, mb.metadata.generation);
    assert_eq!(status.env_summary, "prd:Kafka dev:Redis");
    assert_eq!(status.topic_count, 2);
    assert!(condition(&mb, "Reconciling").is_none() && condition(&mb, "Stalled").is_none());
    let prd = status
        .envs
        .iter()
        .find(|e| e.slug == "prd")
        .expect("prd status");
    assert_eq!(prd.topics.len(), 2);
    assert!(
        prd.topics
            .iter()
            .all(|t| t.ready && !t.physical_name.is_empty()),
        "{:?}",
        prd.topics
    );
    assert!(
        mb.metadata
            .finalizers
            .as_ref()
            .is_some_and(|f| f.iter().any(|x| x == "switchyard.dev/cleanup"))
    );
    // Every created object is recorded as owned, and exists on the (fake) broker.
    let broker = connector.backend("prd", BrokerType::Kafka);
    assert_eq!(prd.owned.len(), broker.objects().len());
    assert!(!prd.owned.is_empty());

    // The binding Secret, owned by the MessageBroker.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let binding = secrets
        .get("bus-prd")
        .await
        .expect("binding Secret bus-prd");
    let data = binding.data.clone().expect("binding data");
    assert_eq!(String::from_utf8_lossy(&data["type"].0), "kafka");
    assert!(data.contains_key("topic.order-created"));
    assert_eq!(binding.type_.as_deref(), Some("servicebinding.io/kafka"));
    let owner = &binding.metadata.owner_references.expect("owner")[0];
    assert_eq!(owner.kind, "MessageBroker");
    assert_eq!(
        prd.binding.as_ref().map(|b| b.name.as_str()),
        Some("bus-prd")
    );

    // Events were recorded against the object.
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    wait_until(TIMEOUT, "no Created event", async || {
        let list = events.list(&ListParams::default()).await.expect("events");
        list.items
            .iter()
            .any(|e| e.reason.as_deref() == Some("Created"))
    })
    .await;

    // Delete: the finalizer runs (Retain: nothing deleted on the broker) and is removed.
    let before = broker.objects().len();
    let api: Api<MessageBroker> = Api::namespaced(client.clone(), &ns);
    api.delete("bus", &DeleteParams::default())
        .await
        .expect("delete");
    wait_gone(
        &api,
        "bus",
        TIMEOUT,
        "MessageBroker still present: finalizer not removed",
    )
    .await;
    assert_eq!(
        broker.objects().len(),
        before,
        "Retain must not delete broker objects"
    );
    ctl.stop().await;
}

#[tokio::test]
async fn idle_resyncs_write_nothing() {
    let (client, ns) = setup("ctl-idle").await;
    let connector = Arc::new(FakeConnector::default());
    let ctl = start_controller(client.clone(), &ns, connector.clone(), fast_config());
    apply_mb(&client, &ns, &two_env_manifest("idle")).await;
    wait_ready(&client, &ns, "idle", TIMEOUT).await;

    // Let the pass triggered by the binding Secret's creation finish, then take the baseline.
    let broker = connector.backend("prd", BrokerType::Kafka);
    let first = broker.observe_calls.load(Ordering::SeqCst);
    wait_until(TIMEOUT, "no resync pass happened", async || {
        broker.observe_calls.load(Ordering::SeqCst) > first
    })
    .await;
    let api: Api<MessageBroker> = Api::namespaced(client.clone(), &ns);
    let ready = api.get("idle").await.expect("get");
    let writes = ctl.metrics.status_writes.get();
    let bindings = ctl.metrics.binding_writes.get();
    let observed = broker.observe_calls.load(Ordering::SeqCst);
    // Wait for three more resync passes (observations), then compare.
    wait_until(TIMEOUT, "no resync passes happened", async || {
        broker.observe_calls.load(Ordering::SeqCst) >= observed + 3
    })
    .await;
    assert_eq!(
        ctl.metrics.status_writes.get(),
        writes,
        "idle passes must not write status"
    );
    assert_eq!(
        ctl.metrics.binding_writes.get(),
        bindings,
        "idle passes must not rewrite bindings"
    );
    let now = api.get("idle").await.expect("get");
    assert_eq!(
        now.metadata.resource_version, ready.metadata.resource_version,
        "object was rewritten"
    );
    ctl.stop().await;
}

#[tokio::test]
async fn drift_is_repaired_on_resync() {
    let (client, ns) = setup("ctl-drift").await;
    let connector = Arc::new(FakeConnector::default());
    let ctl = start_controller(client.clone(), &ns, connector.clone(), fast_config());
    apply_mb(&client, &ns, &two_env_manifest("drift")).await;
    wait_ready(&client, &ns, "drift", TIMEOUT).await;

    let broker = connector.backend("dev", BrokerType::Redis);
    let objects = broker.objects();
    let victim = objects
        .keys()
        .next()
        .expect("something provisioned")
        .clone();
    broker.remove(&victim);
    wait_until(
        TIMEOUT,
        &format!("{victim} was not re-created"),
        async || broker.objects().contains_key(&victim),
    )
    .await;
    ctl.stop().await;
}

#[tokio::test]
async fn one_failing_env_does_not_block_another() {
    let (client, ns) = setup("ctl-isolation").await;
    let connector = Arc::new(FakeConnector::default());
    connector
        .backend("dev", BrokerType::Redis)
        .set_unreachable(true);
    let ctl = start_controller(client.clone(), &ns, connector.clone(), fast_config());
    apply_mb(&client, &ns, &two_env_manifest("iso")).await;

    let mb = wait_for_mb(
        &client,
        &ns,
        "iso",
        TIMEOUT,
        "prd bound while dev is down",
        |m| {
            env_condition(m, "prd", "BindingReady").is_some_and(|(s, _)| s == "True")
                && env_condition(m, "dev", "Connected").is_some_and(|(s, _)| s == "False")
        },
    )
    .await;
    assert_eq!(
        env_condition(&mb, "prd", "TopicsReady").map(|c| c.0),
        Some("True".to_string())
    );
    assert_eq!(
        env_condition(&mb, "dev", "Connected").map(|c| c.1),
        Some("Unreachable".to_string())
    );
    let ready = condition(&mb, "Ready").expect("Ready condition");
    assert_eq!(ready.status, "False");
    assert!(ready.message.contains("env dev"), "{}", ready.message);
    assert!(
        condition_true(&mb, "Reconciling"),
        "a retried outage is InProgress, not Stalled"
    );

    // The broker comes back: Ready follows within the backoff.
    connector
        .backend("dev", BrokerType::Redis)
        .set_unreachable(false);
    wait_for_mb(&client, &ns, "iso", TIMEOUT, "Ready after recovery", |m| {
        condition_true(m, "Ready")
    })
    .await;
    ctl.stop().await;
}

/// A broker that stops answering right after a good answer (so the next pass skips its
/// probe) is reported as a Timeout within two check timeouts of that pass, not when the
/// client's own call timeouts give up; once it answers again the env is Ready.
#[tokio::test]
async fn a_broker_that_stops_answering_is_a_timeout_within_two_check_timeouts() {
    let (client, ns) = setup("ctl-hung").await;
    let connector = Arc::new(FakeConnector::default());
    let check_timeout = Duration::from_secs(1);
    let config = switchyard::controller::Config {
        check_timeout,
        ..fast_config()
    };
    let ctl = start_controller(client.clone(), &ns, connector.clone(), config.clone());
    apply_mb(&client, &ns, &two_env_manifest("hung")).await;
    wait_for_mb(&client, &ns, "hung", TIMEOUT, "Ready", |m| {
        condition_true(m, "Ready")
    })
    .await;
    let dev = connector.backend("dev", BrokerType::Redis);
    let checks_before = ctl.metrics.broker_ops_with("Redis", "check", "error");
    dev.set_hung(true);
    let hung = Instant::now();
    let mb = wait_for_mb(&client, &ns, "hung", TIMEOUT, "dev Connected=False", |m| {
        env_condition(m, "dev", "Connected").is_some_and(|(s, _)| s == "False")
    })
    .await;
    let detect = hung.elapsed();
    assert_eq!(
        env_condition(&mb, "dev", "Connected").map(|c| c.1),
        Some("Timeout".to_string())
    );
    // The next resync, one check timeout waiting on the observation, one on the probe, and
    // slack for the status write; far inside the check interval (10 s) the probe would
    // otherwise be skipped for.
    let bound = config.resync + check_timeout * 2 + Duration::from_secs(3);
    assert!(detect < bound, "{detect:?} to report a hung broker");
    assert!(
        ctl.metrics.broker_ops_with("Redis", "check", "error") > checks_before,
        "no failed probe was counted"
    );
    assert_eq!(
        env_condition(&mb, "prd", "Connected").map(|c| c.0),
        Some("True".to_string()),
        "the hung env blocked the other"
    );
    dev.set_hung(false);
    wait_for_mb(&client, &ns, "hung", TIMEOUT, "Ready after recovery", |m| {
        condition_true(m, "Ready")
    })
    .await;
    ctl.stop().await;
}

#[tokio::test]
async fn operator_works_under_the_shipped_rbac() {
    let admin = client().await;
    ensure_crd(&admin).await;
    apply_rbac(&admin).await;
    let ns = namespace(&admin, "ctl-rbac").await;
    let operator = client_from(&env_var("SWITCHYARD_OPERATOR_KUBECONFIG")).await;
    let connector = Arc::new(FakeConnector::default());
    let ctl = start_controller(operator, &ns, connector, fast_config());
    apply_mb(&admin, &ns, &two_env_manifest("rbac")).await;
    wait_for_mb(
        &admin,
        &ns,
        "rbac",
        TIMEOUT,
        "Ready under restricted identity",
        |m| condition_true(m, "Ready"),
    )
    .await;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns);
    assert!(
        secrets.get_opt("rbac-dev").await.expect("get").is_some(),
        "binding written with restricted rights"
    );
    ctl.stop().await;
}

/// Apply config/rbac (the operator's ServiceAccount identity) as admin.
pub async fn apply_rbac(client: &kube::Client) {
    use kube::api::{DynamicObject, Patch, PatchParams};
    use kube::discovery::ApiResource;
    let ns_api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let ns = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "switchyard-system"}});
    ns_api
        .patch(
            "switchyard-system",
            &PatchParams::apply("switchyard-tests"),
            &Patch::Apply(&ns),
        )
        .await
        .expect("namespace");
    for file in ["service_account.yaml", "role.yaml", "role_binding.yaml"] {
        let path = format!("{}/config/rbac/{file}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).expect("rbac manifest");
        let obj: DynamicObject = serde_norway::from_str(&text).expect("rbac yaml");
        let types = obj.types.clone().expect("typed manifest");
        let (group, version) = types
            .api_version
            .split_once('/')
            .unwrap_or(("", types.api_version.as_str()));
        let ar = ApiResource {
            group: group.to_string(),
            version: version.to_string(),
            api_version: types.api_version.clone(),
            kind: types.kind.clone(),
            plural: match types.kind.as_str() {
                "ServiceAccount" => "serviceaccounts",
                "ClusterRole" => "clusterroles",
                _ => "clusterrolebindings",
            }
            .to_string(),
        };
        let api: Api<DynamicObject> = match obj.metadata.namespace.as_deref() {
            Some(n) => Api::namespaced_with(client.clone(), n, &ar),
            None => Api::all_with(client.clone(), &ar),
        };
        let name = obj.metadata.name.clone().expect("name");
        server_side_apply(&api, &name, &obj, "rbac applies").await;
    }
}

#[tokio::test]
async fn a_partition_decrease_on_real_kafka_stalls_without_a_hot_loop() {
    let (client, ns) = setup("ctl-stall").await;
    let ctl = start_controller(
        client.clone(),
        &ns,
        Arc::new(switchyard::brokers::RealConnector::default()),
        switchyard::controller::Config {
            resync: Duration::from_secs(30),
            ..fast_config()
        },
    );
    let manifest = |partitions: i32| {
        format!(
            "apiVersion: switchyard.dev/v1alpha1\nkind: MessageBroker\nmetadata: {{name: stall}}\nspec:\n  topics: [{{name: events, partitions: {partitions}}}]\n  envs:\n    - {{slug: prd, type: Kafka, kafka: {{bootstrapServers: [\"{}\"]}}}}\n",
            env_var("SWITCHYARD_KAFKA_BOOTSTRAP")
        )
    };
    apply_mb(&client, &ns, &manifest(3)).await;
    wait_ready(&client, &ns, "stall", Duration::from_secs(60)).await;

    apply_mb(&client, &ns, &manifest(2)).await;
    let mb = wait_for_mb(
        &client,
        &ns,
        "stall",
        Duration::from_secs(60),
        "Stalled",
        |m| condition_true(m, "Stalled"),
    )
    .await;
    let stalled = condition(&mb, "Stalled").expect("Stalled");
    assert_eq!(stalled.reason, "PartitionDecreaseNotSupported");
    assert!(
        stalled.message.contains("3 partitions"),
        "{}",
        stalled.message
    );
    assert_eq!(
        condition(&mb, "Ready").map(|c| c.status.as_str()),
        Some("False")
    );
    assert_eq!(
        mb.status.as_ref().and_then(|s| s.observed_generation),
        mb.metadata.generation
    );

    // No hot loop: over a few seconds the controller does not keep reconciling.
    let before = ctl.metrics.reconciles.get();
    let writes = ctl.metrics.status_writes.get();
    let window = tokio::time::Instant::now() + Duration::from_secs(4);
    while tokio::time::Instant::now() < window {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        ctl.metrics.reconciles.get() - before <= 2,
        "reconciled {} times in 4s",
        ctl.metrics.reconciles.get() - before
    );
    assert_eq!(
        ctl.metrics.status_writes.get(),
        writes,
        "a stalled object must not rewrite its status"
    );
    ctl.stop().await;
}

/// Two instances split the envs of one MessageBroker (`--env prd` and `--env dev`). They hold it
/// with one finalizer name, replace a per-env-list name of an earlier release, and on deletion
/// each retires its own env; whichever finishes last releases the object.
#[tokio::test]
async fn split_instances_share_one_finalizer_and_each_clean_their_envs() {
    let (client, ns) = setup("ctl-split").await;
    let connector = Arc::new(FakeConnector::default());
    let only = |slug: &str| switchyard::controller::Config {
        envs: Some([slug.to_string()].into()),
        instance: format!("switchyard-{slug}"),
        ..fast_config()
    };
    let prd = start_controller(client.clone(), &ns, connector.clone(), only("prd"));
    let dev = start_controller(client.clone(), &ns, connector.clone(), only("dev"));

    let manifest = two_env_manifest("split")
        .replace("spec:\n", "spec:\n  deletionPolicy: Delete\n")
        .replace(
            "metadata: {name: split}",
            "metadata: {name: split, finalizers: [switchyard.dev/cleanup.dev.prd]}",
        );
    apply_mb(&client, &ns, &manifest).await;
    let mb = wait_ready(&client, &ns, "split", TIMEOUT).await;
    assert_eq!(
        mb.metadata.finalizers.unwrap_or_default(),
        vec!["switchyard.dev/cleanup".to_string()],
        "the legacy name is replaced by the fixed one"
    );
    let kafka = connector.backend("prd", BrokerType::Kafka);
    let redis = connector.backend("dev", BrokerType::Redis);
    assert!(!kafka.objects().is_empty() && !redis.objects().is_empty());

    let api: Api<MessageBroker> = Api::namespaced(client.clone(), &ns);
    api.delete("split", &DeleteParams::default())
        .await
        .expect("delete");
    wait_gone(
        &api,
        "split",
        TIMEOUT,
        "MessageBroker still present: the shared finalizer was not removed",
    )
    .await;
    assert!(
        kafka.objects().is_empty(),
        "prd's instance retired its env: {:?}",
        kafka.objects()
    );
    assert!(
        redis.objects().is_empty(),
        "dev's instance retired its env: {:?}",
        redis.objects()
    );
    prd.stop().await;
    dev.stop().await;
}

/// A generation costs at most two status writes (the record of what is about to be created,
/// and the result), even when the broker is slow to answer.
#[tokio::test]
async fn a_generation_writes_status_at_most_twice() {
    let (client, ns) = setup("ctl-writes").await;
    let connector = Arc::new(FakeConnector::default());
    for (slug, t) in [("prd", BrokerType::Kafka), ("dev", BrokerType::Redis)] {
        connector
            .backend(slug, t)
            .set_observe_delay(Duration::from_millis(1500));
    }
    let ctl = start_controller(client.clone(), &ns, connector.clone(), fast_config());
    let api: Api<MessageBroker> = Api::namespaced(client.clone(), &ns);
    let ready_at = |generation: i64| {
        move |m: &MessageBroker| {
            condition_true(m, "Ready")
                && m.status.as_ref().and_then(|s| s.observed_generation) == Some(generation)
        }
    };

    let before = ctl.metrics.status_writes.get();
    apply_mb(&client, &ns, &two_env_manifest("writes")).await;
    wait_for_mb(&client, &ns, "writes", TIMEOUT, "Ready at 1", ready_at(1)).await;
    let first = ctl.metrics.status_writes.get() - before;

    let before = ctl.metrics.status_writes.get();
    let manifest = two_env_manifest("writes").replace(
        "    - name: order-paid\n",
        "    - name: order-paid\n    - name: order-shipped\n",
    );
    apply_mb(&client, &ns, &manifest).await;
    let generation = api.get("writes").await.expect("get").metadata.generation;
    assert_eq!(generation, Some(2), "the new topic is a new generation");
    wait_for_mb(&client, &ns, "writes", TIMEOUT, "Ready at 2", ready_at(2)).await;
    let second = ctl.metrics.status_writes.get() - before;
    eprintln!("status writes: generation 1: {first}, generation 2: {second}");
    assert!(first <= 2, "generation 1 wrote status {first} times");
    assert!(second <= 2, "generation 2 wrote status {second} times");
    assert!(second >= 1, "the result is written");
    ctl.stop().await;
}

/// Kafka topics carry no owner marker, so ownership is read from the MessageBroker that lists
/// the topic in its status: another MessageBroker mapping onto the same topic is refused as a
/// Conflict even with adoptExisting, and may adopt it once the owner is gone (Retain).
#[tokio::test]
async fn adopt_existing_never_takes_a_kafka_topic_another_messagebroker_owns() {
    let (client, ns) = setup("ctl-owner").await;
    let ctl = start_real_controller(client.clone(), &ns);
    let prefix = format!("{}.", unique("owned"));
    let manifest = |name: &str, adopt: bool| {
        format!(
            "apiVersion: switchyard.dev/v1alpha1\nkind: MessageBroker\nmetadata: {{name: {name}}}\nspec:\n  topics: [{{name: events}}]\n  envs:\n    - {{slug: prd, type: Kafka, adoptExisting: {adopt}, kafka: {{bootstrapServers: [\"{}\"], topicPrefix: \"{prefix}\"}}}}\n",
            env_var("SWITCHYARD_KAFKA_BOOTSTRAP")
        )
    };
    let long = Duration::from_secs(60);
    apply_mb(&client, &ns, &manifest("orders", false)).await;
    wait_ready(&client, &ns, "orders", long).await;

    apply_mb(&client, &ns, &manifest("thief", true)).await;
    let mb = wait_for_mb(&client, &ns, "thief", long, "refused as a Conflict", |m| {
        env_condition(m, "prd", "TopicsReady").is_some_and(|(s, r)| s == "False" && r == "Conflict")
    })
    .await;
    let env = &mb.status.as_ref().expect("status").envs[0];
    let message = &switchyard::api::conditions::find(&env.conditions, "TopicsReady")
        .expect("TopicsReady")
        .message;
    assert!(
        message.contains(&format!("{ns}/orders")),
        "the message names the owner: {message}"
    );
    assert!(env.owned.is_empty(), "nothing was taken: {:?}", env.owned);

    // The owner goes (Retain: the topic stays, released): now it can be adopted.
    let api: Api<MessageBroker> = Api::namespaced(client.clone(), &ns);
    api.delete("orders", &DeleteParams::default())
        .await
        .expect("delete");
    let mb = wait_for_mb(&client, &ns, "thief", long, "adopted once released", |m| {
        condition_true(m, "Ready")
    })
    .await;
    let owned = &mb.status.as_ref().expect("status").envs[0].owned;
    assert!(
        owned
            .iter()
            .any(|k| k.ends_with(&format!("{prefix}events"))),
        "{owned:?}"
    );
    ctl.stop().await;
}

/// A burst of creates gives a bounded number of Normal Events: the budget's burst plus one a
/// second, each left out one counted as suppressed; every MessageBroker is still Ready.
#[tokio::test]
async fn a_burst_of_creates_gives_a_bounded_number_of_events() {
    use switchyard::controller::events::{BURST, REFILL};
    const N: usize = 40;
    let (client, ns) = setup("ctl-burst").await;
    let connector = Arc::new(FakeConnector::default());
    let ctl = start_controller(client.clone(), &ns, connector.clone(), fast_config());
    let started = std::time::Instant::now();
    for i in 0..N {
        apply_mb(&client, &ns, &two_env_manifest(&format!("burst-{i}"))).await;
    }
    let api: Api<MessageBroker> = Api::namespaced(client.clone(), &ns);
    wait_until(TIMEOUT, "every MessageBroker Ready", async || {
        let list = api.list(&ListParams::default()).await.expect("list");
        list.items.len() == N && list.items.iter().all(|m| condition_true(m, "Ready"))
    })
    .await;
    // Each MessageBroker's first pass creates objects on both envs: one Created each, published
    // or left out.
    let count = |outcome: &str| {
        let m = ctl
            .metrics
            .events
            .get_or_create(&switchyard::metrics::EventLabels {
                r#type: "Normal".into(),
                reason: "Created".into(),
                outcome: outcome.into(),
            });
        m.get()
    };
    wait_until(TIMEOUT, "every Created Event counted", async || {
        count("published") + count("suppressed") >= 2 * N as u64
    })
    .await;
    let elapsed = started.elapsed();
    let published = count("published");
    let budget = u64::from(BURST) + (elapsed.as_nanos() / REFILL.as_nanos()) as u64;
    eprintln!(
        "{N} creates in {elapsed:?}: {published} Created Events published, {} suppressed (budget {budget})",
        count("suppressed")
    );
    assert!(
        published <= budget,
        "{published} Created Events, over the budget of {budget}"
    );
    assert!(count("suppressed") > 0, "nothing was left out");
    // What the API server holds agrees with what was published (kube's recorder folds the
    // second env's Created of one MessageBroker into a series of the first).
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    wait_until(TIMEOUT, "the published Events listed", async || {
        let list = events.list(&ListParams::default()).await.expect("events");
        let created: u64 = list
            .items
            .iter()
            .filter(|e| e.reason.as_deref() == Some("Created"))
            .map(|e| e.series.as_ref().map_or(1, |s| s.count as u64))
            .sum();
        created == published
    })
    .await;
    ctl.stop().await;
}
