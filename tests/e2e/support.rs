//! Helpers shared by the integration tests: the test environment's addresses and unique names.

use std::sync::atomic::{AtomicU32, Ordering};

/// A variable written by `tests/env/up.sh`. Missing means the environment is not up: fail loudly,
/// never skip.
pub fn env_var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: start the test environment with `make env-up` and `source target/testenv/env.sh` (make test does both)")
    })
}

/// A TCP port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// An AWS SQS env on the test environment's moto, with the `aws` credentials Secret it
/// references.
pub struct Moto {
    /// The env block (one flow mapping).
    pub env: String,
    /// moto's endpoint.
    pub endpoint: String,
    /// The region.
    pub region: String,
    /// The access key id in the Secret.
    pub key: String,
    /// The secret access key in the Secret.
    pub secret: String,
}

impl Moto {
    /// The env `prd` on moto.
    pub fn new() -> Self {
        let endpoint = env_var("SWITCHYARD_AWS_ENDPOINT");
        let region = env_var("AWS_REGION");
        Moto {
            env: format!(
                "{{slug: prd, type: AwsSqs, awsSqs: {{region: {region}, endpoint: \"{endpoint}\", credentialsSecretRef: {{name: aws}}}}}}"
            ),
            endpoint,
            region,
            key: env_var("AWS_ACCESS_KEY_ID"),
            secret: env_var("AWS_SECRET_ACCESS_KEY"),
        }
    }

    /// An SDK config for moto, signed with the test's own credentials (to look at queues
    /// behind the operator's and the app's back).
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .region(aws_config::Region::new(self.region.clone()))
            .load()
            .await
    }

    /// The entries of the `aws` Secret.
    pub fn credentials(&self) -> [(&str, &str); 2] {
        [
            ("accessKeyId", self.key.as_str()),
            ("secretAccessKey", self.secret.as_str()),
        ]
    }
}

/// A name unique to this test process and call, usable as a namespace or broker-side prefix.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{prefix}-{}-{n}", std::process::id())
}

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client, CustomResourceExt};
use switchyard::api::MessageBroker;
use switchyard::api::{DeletionPolicy, EnvSpec, SubscriptionSpec, TopicSpec};
use switchyard::brokers::{self, Backend, Connector, ObjectKey, Scope};
use switchyard::controller::{self, Config};
use switchyard::metrics::Metrics;

/// A client for the test API server as admin (KUBECONFIG from env.sh).
pub async fn client() -> Client {
    env_var("KUBECONFIG");
    Client::try_default()
        .await
        .expect("a client for the test API server")
}

/// A client with an explicit kubeconfig file.
pub async fn client_from(path: &str) -> Client {
    let kc = kube::config::Kubeconfig::read_from(path).expect("kubeconfig readable");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("kubeconfig valid");
    Client::try_from(cfg).expect("client")
}

/// Install (server-side apply) the generated CRD and wait until it is Established.
pub async fn ensure_crd(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = MessageBroker::crd();
    let name = crd.metadata.name.clone().expect("CRD has a name");
    server_side_apply(&api, &name, &crd, "CRD applies").await;
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(api, &name, conditions::is_crd_established()),
    )
    .await
    .expect("CRD established within 30s")
    .expect("watching the CRD");
}

/// A fresh namespace for one test.
pub async fn namespace(client: &Client, prefix: &str) -> String {
    let name = unique(prefix);
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).expect("namespace");
    api.create(&PostParams::default(), &ns)
        .await
        .expect("namespace created");
    name
}

/// A controller running in this test's runtime, watching one namespace.
pub struct RunningController {
    /// Its metrics.
    pub metrics: Arc<Metrics>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<()>,
}

impl RunningController {
    /// Stop it and wait until it has stopped.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(20), &mut self.handle).await;
    }

    /// Whether the controller task is still running (it has not returned or panicked).
    pub fn is_running(&self) -> bool {
        !self.handle.is_finished()
    }

    /// Kill it at once, as SIGKILL would: no graceful shutdown.
    pub fn kill(self) {
        self.handle.abort();
    }
}

/// Start the controller in-process against `client`, limited to `namespace`.
pub fn start_controller(
    client: Client,
    namespace: &str,
    connector: Arc<dyn Connector>,
    config: Config,
) -> RunningController {
    let metrics = Arc::new(Metrics::default());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let m = metrics.clone();
    let ns = namespace.to_string();
    let handle = tokio::spawn(async move {
        controller::run(client, vec![ns], connector, config, m, async {
            let _ = rx.await;
        })
        .await;
    });
    RunningController {
        metrics,
        stop: Some(tx),
        handle,
    }
}

/// Start the controller with the real broker clients and [`fast_config`].
pub fn start_real_controller(client: Client, namespace: &str) -> RunningController {
    start_controller(
        client,
        namespace,
        Arc::new(switchyard::brokers::RealConnector::default()),
        fast_config(),
    )
}

/// Test settings: short resync so drift repair is observable quickly.
pub fn fast_config() -> Config {
    Config {
        resync: Duration::from_secs(2),
        check_timeout: Duration::from_secs(10),
        // Longer than a client following its binding Secret takes to move.
        swap_grace: Duration::from_secs(3),
        ..Config::default()
    }
}

/// Wait until `check` holds for the named MessageBroker, or fail with the last object seen.
pub async fn wait_for_mb(
    client: &Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
    what: &str,
    check: impl Fn(&MessageBroker) -> bool,
) -> MessageBroker {
    let api: Api<MessageBroker> = Api::namespaced(client.clone(), namespace);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = None;
    loop {
        if let Ok(Some(mb)) = api.get_opt(name).await {
            if check(&mb) {
                return mb;
            }
            last = Some(mb);
        }
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "{namespace}/{name}: not {what} within {timeout:?}; last status: {}",
                serde_json::to_string_pretty(&last.and_then(|m| m.status)).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether the MessageBroker's top-level condition of this type is True.
pub fn condition_true(mb: &MessageBroker, type_: &str) -> bool {
    mb.status
        .as_ref()
        .is_some_and(|s| switchyard::api::conditions::is_true(&s.conditions, type_))
}

/// The top-level condition of a type.
pub fn condition<'a>(
    mb: &'a MessageBroker,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    mb.status
        .as_ref()
        .and_then(|s| switchyard::api::conditions::find(&s.conditions, type_))
}

/// Server-side apply a MessageBroker from YAML into a namespace.
pub async fn apply_mb(client: &Client, namespace: &str, yaml: &str) -> MessageBroker {
    let mb: MessageBroker = serde_norway::from_str(yaml).expect("test manifest parses");
    let name = mb.metadata.name.clone().expect("manifest has a name");
    let api: Api<MessageBroker> = Api::namespaced(client.clone(), namespace);
    server_side_apply(&api, &name, &mb, "MessageBroker applies").await
}

/// Create or replace an Opaque Secret.
pub async fn put_secret(client: &Client, namespace: &str, name: &str, data: &[(&str, &str)]) {
    use k8s_openapi::api::core::v1::Secret;
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let map: serde_json::Map<String, serde_json::Value> = data
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
        .collect();
    let s = serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": map});
    server_side_apply(&api, name, &s, "Secret applies").await;
}

/// An admin client with the CRD installed, and a fresh namespace for one test.
pub async fn setup(prefix: &str) -> (Client, String) {
    let client = client().await;
    ensure_crd(&client).await;
    let ns = namespace(&client, prefix).await;
    (client, ns)
}

/// Wait until the named MessageBroker's Ready condition is True.
pub async fn wait_ready(
    client: &Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> MessageBroker {
    wait_for_mb(client, namespace, name, timeout, "Ready", |m| {
        condition_true(m, "Ready")
    })
    .await
}

/// Poll `check` every 100ms until it holds; fail with `what` once `timeout` has passed.
pub async fn wait_until(timeout: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} (after {timeout:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Wait until the named object no longer exists; fail with `what` once `timeout` has passed.
pub async fn wait_gone<K>(api: &Api<K>, name: &str, timeout: Duration, what: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    wait_until(timeout, what, async || {
        api.get_opt(name).await.expect("get").is_none()
    })
    .await;
}

/// Server-side apply `obj` as the tests' field manager, taking over conflicting fields; fail
/// with `what` if the API server refuses.
pub async fn server_side_apply<K>(
    api: &Api<K>,
    name: &str,
    obj: &(impl serde::Serialize + std::fmt::Debug),
    what: &str,
) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(
        name,
        &PatchParams::apply("switchyard-tests").force(),
        &Patch::Apply(obj),
    )
    .await
    .expect(what)
}

/// A broker-side scope for the MessageBroker `bus` in a fresh unique namespace.
pub fn scope(prefix: &str) -> Scope {
    Scope::new(unique(prefix), "bus")
}

/// One reconcile pass for one env, the way the controller runs it; fails if it errors.
pub async fn converge(
    backend: &dyn Backend,
    scope: &Scope,
    env: &EnvSpec,
    topics: &[TopicSpec],
    owned: &std::collections::BTreeSet<ObjectKey>,
    policy: DeletionPolicy,
) -> brokers::Converged {
    brokers::converge(backend, scope, env, topics, owned, policy)
        .await
        .expect("converge")
}

/// Subscriptions by name, each with its dead-letter max delivery attempts if it has one.
pub fn subscriptions(subs: &[(&str, Option<i32>)]) -> Vec<SubscriptionSpec> {
    subs.iter()
        .map(|(name, attempts)| SubscriptionSpec {
            name: (*name).into(),
            dead_letter: attempts.map(|m| switchyard::api::DeadLetterSpec {
                max_delivery_attempts: m,
            }),
        })
        .collect()
}

/// The first lines of a MessageBroker manifest named `name`, up to (not including) its spec.
pub fn mb_header(name: &str) -> String {
    format!(
        "apiVersion: switchyard.dev/v1alpha1\nkind: MessageBroker\nmetadata: {{name: {name}}}\n"
    )
}

/// MessageBroker `bus` under Delete with one topic `orders` (3 partitions) read by `billing`,
/// on `env` (one flow mapping): the shape the swap tests move from broker to broker.
pub fn orders_on(env: &str) -> String {
    format!(
        "{}spec:\n  deletionPolicy: Delete\n  topics:\n    - name: orders\n      partitions: 3\n      subscriptions: [{{name: billing}}]\n  envs:\n    - {env}\n",
        mb_header("bus")
    )
}

/// The env `prd` on the test Kafka.
pub fn kafka_env() -> String {
    format!(
        "{{slug: prd, type: Kafka, kafka: {{bootstrapServers: [\"{}\"]}}}}",
        env_var("SWITCHYARD_KAFKA_BOOTSTRAP")
    )
}

/// Write a binding's entries the way the kubelet projects a Secret volume: a timestamped
/// directory holding the files, a `..data` link to it, and one link per key into `..data`.
/// Called again on the same directory it swaps `..data` atomically, as the kubelet does when
/// the Secret changed, so a reader never sees half an update.
pub fn project<V: AsRef<[u8]>>(
    dir: &std::path::Path,
    entries: &std::collections::BTreeMap<String, V>,
) {
    use std::path::Path;
    let stamp = format!(
        "..{}",
        jiff::Timestamp::now().strftime("%Y_%m_%d_%H_%M_%S.%f")
    );
    let payload = dir.join(&stamp);
    std::fs::create_dir_all(&payload).expect("binding directory");
    for (key, value) in entries {
        std::fs::write(payload.join(key), value).expect("binding file");
    }
    let old = std::fs::read_link(dir.join("..data")).ok();
    let next = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&next);
    std::os::unix::fs::symlink(&stamp, &next).expect("..data link");
    std::fs::rename(&next, dir.join("..data")).expect("..data swap");
    for key in entries.keys() {
        let link = dir.join(key);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(key), &link)
                .expect("binding key link");
        }
    }
    // Keys gone from the Secret go from the directory; so does the old payload.
    for entry in std::fs::read_dir(dir).expect("binding directory").flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.starts_with('.') && !entries.contains_key(&name) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    if let Some(old) = old
        && old != Path::new(&stamp)
    {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
}

/// Play the kubelet for a binding Secret: project it into `dir` now and again on each change,
/// until the returned task is aborted.
pub async fn follow_secret(
    client: &Client,
    namespace: &str,
    name: &str,
    dir: &std::path::Path,
) -> tokio::task::JoinHandle<()> {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::Secret;
    use kube::runtime::{WatchStreamExt, watcher};
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let decoded = |s: Secret| -> std::collections::BTreeMap<String, Vec<u8>> {
        s.data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect()
    };
    let first = api.get(name).await.expect("binding Secret");
    std::fs::create_dir_all(dir).expect("binding directory");
    project(dir, &decoded(first));
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let dir = dir.to_path_buf();
    tokio::spawn(async move {
        let mut secrets = std::pin::pin!(watcher(api, config).default_backoff().applied_objects());
        while let Some(next) = secrets.next().await {
            if let Ok(s) = next {
                project(&dir, &decoded(s));
            }
        }
    })
}

/// The env `prd` on the test environment's `broker` (a `type` of the CRD), with the
/// credentials Secret it references created in `namespace`.
pub async fn backend_env(client: &Client, namespace: &str, broker: &str) -> String {
    match broker {
        "Kafka" => kafka_env(),
        "Redis" => format!(
            "{{slug: prd, type: Redis, redis: {{url: \"{}\"}}}}",
            env_var("SWITCHYARD_REDIS_URL")
        ),
        "RabbitMQ" => crate::rabbitmq::env_with_secret(client, namespace).await,
        "GooglePubSub" => format!(
            "{{slug: prd, type: GooglePubSub, googlePubSub: {{projectId: switchyard-test, endpoint: \"{}\"}}}}",
            env_var("SWITCHYARD_PUBSUB_ENDPOINT")
        ),
        "AwsSqs" => {
            let moto = Moto::new();
            put_secret(client, namespace, "aws", &moto.credentials()).await;
            moto.env
        }
        "NatsJetStream" => {
            let (user, password) = (
                env_var("SWITCHYARD_NATS_USER"),
                env_var("SWITCHYARD_NATS_PASSWORD"),
            );
            put_secret(
                client,
                namespace,
                "nats",
                &[("username", &user), ("password", &password)],
            )
            .await;
            format!(
                "{{slug: prd, type: NatsJetStream, natsJetStream: {{servers: [\"{}\"], credentialsSecretRef: {{name: nats}}}}}}",
                env_var("SWITCHYARD_NATS_URL")
            )
        }
        other => panic!("no test env for broker {other}"),
    }
}

/// An app built from the binding `bus-prd` in `namespace` publishes a message on `orders` and
/// receives it on `billing`: the round trip a binding must allow.
pub async fn binding_round_trip(client: &Client, namespace: &str, what: &str) {
    use switchyard::client::{Binding, Message};
    let timeout = Duration::from_secs(60);
    let app = switchyard::client::Client::new(
        Binding::from_secret(client, namespace, "bus-prd")
            .await
            .expect("binding"),
    )
    .await
    .unwrap_or_else(|e| panic!("{what}: client from the binding: {e}"));
    let mut billing = app
        .subscriber("orders", "billing")
        .await
        .unwrap_or_else(|e| panic!("{what}: subscriber: {e}"));
    let sent = Message::new(what.as_bytes().to_vec());
    app.publisher("orders")
        .publish(sent.clone())
        .await
        .unwrap_or_else(|e| panic!("{what}: publish: {e}"));
    let got = tokio::time::timeout(timeout, billing.next())
        .await
        .unwrap_or_else(|_| panic!("{what}: no delivery within {timeout:?}"))
        .unwrap_or_else(|e| panic!("{what}: receive: {e}"));
    assert_eq!(got.message.id, sent.id, "{what}");
    got.ack().await.expect("ack");
}

/// No hot loop: over 4 seconds the controller makes at most `passes` reconciles (what its
/// backoff and resync allow), and no more status writes than passes (one more for a pass
/// already running when the window opened).
pub async fn assert_no_hot_loop(ctl: &RunningController, what: &str, passes: u64) {
    let (before, writes) = (
        ctl.metrics.reconciles.get(),
        ctl.metrics.status_writes.get(),
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let more = ctl.metrics.reconciles.get() - before;
    let wrote = ctl.metrics.status_writes.get() - writes;
    eprintln!("{what}: {more} reconciles, {wrote} status writes in 4s");
    assert!(
        more <= passes,
        "{what}: {more} reconciles in 4s is a hot loop"
    );
    assert!(
        wrote <= more + 1,
        "{what}: {wrote} status writes in {more} passes"
    );
    assert!(ctl.is_running(), "{what}: the controller died");
}

/// Whether status describes the current spec (observedGeneration is the generation).
pub fn current(mb: &MessageBroker) -> bool {
    mb.status
        .as_ref()
        .is_some_and(|s| s.observed_generation == mb.metadata.generation)
}

/// The `prd` env's condition of a type: status, reason, message.
pub fn prd_condition(mb: &MessageBroker, type_: &str) -> Option<(String, String, String)> {
    let env = mb.status.as_ref()?.envs.iter().find(|e| e.slug == "prd")?;
    let c = switchyard::api::conditions::find(&env.conditions, type_)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}
