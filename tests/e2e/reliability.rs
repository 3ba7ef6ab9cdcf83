//! Reliability under faults, bad input and secrets, against the real API server:
//! - a broker killed mid-reconcile is reported (Connected=False, Unreachable) and recovered from;
//! - a restarted kube-apiserver: watches resume and nothing is provisioned twice;
//! - an operator killed during create, update and delete converges without duplicates or losses;
//! - concurrent spec edits: conflicts are retried and the last spec wins;
//! - deletion with an unreachable broker: prompt under Retain, explained and abandonable under Delete;
//! - oversized specs are refused by the schema; garbage from a broker becomes conditions;
//! - secret values never reach logs, Events, status, metrics or the binding's non-secret fields.
//!
//! Faults that would disturb other tests (killing a broker or an API server) use private
//! instances this module starts and stops itself.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use switchyard::api::{BrokerType, EnvSpec, MessageBroker, SwapPhase};
use switchyard::brokers::fake::FakeBackend;
use switchyard::brokers::{
    Action, ActionOutcome, Backend, BrokerError, BrokerErrorKind, Connector, ObjectKey, Observed,
    RealConnector, Scope,
};
use switchyard::controller::Config;
use switchyard::secrets::ResolvedSecrets;

use crate::support::*;

const TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Private instances

/// Wait until something accepts connections on the port.
fn wait_listening(port: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listens on :{port} after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A redis-server of this test's own (flags as tests/env/redis.sh uses them), killable at will.
struct PrivateRedis {
    port: u16,
    password: Option<String>,
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateRedis {
    fn start(password: Option<&str>) -> Self {
        let dir = std::env::temp_dir().join(unique("sy-redis"));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut r = PrivateRedis {
            port: free_port(),
            password: password.map(String::from),
            dir,
            child: None,
        };
        r.restart();
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Start (again) on the same port.
    fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--daemonize", "no", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        self.child = Some(cmd.spawn().expect("redis-server starts"));
        wait_listening(self.port, Duration::from_secs(10));
    }

    /// SIGKILL: no goodbye to connected clients.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A control plane of this test's own (tests/env/kube.sh with a private run dir).
struct PrivateControlPlane {
    run_dir: PathBuf,
    restarted: Option<Child>,
}

impl PrivateControlPlane {
    fn script() -> String {
        format!("{}/tests/env/kube.sh", env!("CARGO_MANIFEST_DIR"))
    }

    fn start() -> Self {
        let run_dir = std::env::temp_dir().join(unique("sy-kube"));
        std::fs::create_dir_all(&run_dir).expect("run dir");
        let out = Command::new("bash")
            .arg(Self::script())
            .arg("start")
            .env("SWITCHYARD_RUN_DIR", &run_dir)
            .output()
            .expect("kube.sh runs");
        assert!(
            out.status.success(),
            "private control plane did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PrivateControlPlane {
            run_dir,
            restarted: None,
        }
    }

    fn kubeconfig(&self) -> String {
        self.run_dir.join("kubeconfig").display().to_string()
    }

    /// Stop kube-apiserver (SIGTERM, as a rolling restart does) and start it again with the
    /// same flags: same port, certificates, tokens and etcd.
    fn restart_apiserver(&mut self) {
        let pid_file = self.run_dir.join("kube-apiserver.pid");
        let pid = std::fs::read_to_string(&pid_file)
            .expect("apiserver pid file")
            .trim()
            .to_string();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("apiserver cmdline");
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let status = Command::new("kill").arg(&pid).status().expect("kill runs");
        assert!(status.success());
        match self.restarted.take() {
            Some(mut c) => {
                let _ = c.wait();
            }
            None => {
                // Graceful shutdown drains for a while; past 10s, stop it hard.
                let alive = || {
                    std::fs::read_to_string(format!("/proc/{pid}/stat"))
                        .is_ok_and(|s| !s.contains(") Z "))
                };
                let started = Instant::now();
                while alive() {
                    if started.elapsed() > Duration::from_secs(10) {
                        let _ = Command::new("kill").args(["-9", &pid]).status();
                    }
                    assert!(
                        started.elapsed() < Duration::from_secs(30),
                        "apiserver {pid} did not stop"
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        let log = std::fs::File::create(self.run_dir.join("kube/apiserver-restarted.log"))
            .expect("log file");
        let child = Command::new(&args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("apiserver restarts");
        std::fs::write(&pid_file, child.id().to_string()).expect("pid file");
        self.restarted = Some(child);
    }
}

impl Drop for PrivateControlPlane {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(Self::script())
            .arg("stop")
            .env("SWITCHYARD_RUN_DIR", &self.run_dir)
            .output();
        if let Some(mut c) = self.restarted.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

// ---------------------------------------------------------------------------------------------
// A scripted broker: the in-memory fake, plus recording, stalls and garbage answers.

/// What the scripted broker does wrong.
#[derive(Clone, Debug, Default)]
enum Garbage {
    #[default]
    None,
    CheckFails(BrokerError),
    ObserveFails(BrokerError),
    /// Observation leaves out half the objects and reports one nobody asked about.
    ObservePartial,
    /// Apply carries out the first half of the actions and reports only those.
    ApplyShort,
    /// Apply reports every outcome, plus outcomes for objects nobody asked about.
    ApplyLong,
    /// Apply does nothing and reports success for other keys.
    ApplyWrongKeys,
    /// Every action fails.
    ApplyFails(BrokerError),
}

struct Scripted {
    inner: Arc<FakeBackend>,
    garbage: Mutex<Garbage>,
    /// Report no ownership marker, like a broker that cannot hold one: only status says what is ours.
    hide_owner: AtomicBool,
    /// Apply performs this many actions, then hangs (until the operator is killed).
    stall_after: Mutex<Option<usize>>,
    stalled: tokio::sync::Notify,
    /// Successful Create actions, in order.
    creates: Mutex<Vec<ObjectKey>>,
    /// Successful Delete actions, in order.
    deletes: Mutex<Vec<ObjectKey>>,
    applies: AtomicUsize,
}

impl Scripted {
    fn new(broker_type: BrokerType) -> Arc<Self> {
        Arc::new(Scripted {
            inner: FakeBackend::new(broker_type),
            garbage: Mutex::new(Garbage::None),
            hide_owner: AtomicBool::new(false),
            stall_after: Mutex::new(None),
            stalled: tokio::sync::Notify::new(),
            creates: Mutex::new(Vec::new()),
            deletes: Mutex::new(Vec::new()),
            applies: AtomicUsize::new(0),
        })
    }

    fn set(&self, g: Garbage) {
        *self.garbage.lock().expect("lock") = g;
    }

    fn garbage(&self) -> Garbage {
        self.garbage.lock().expect("lock").clone()
    }

    fn stall_after(&self, n: Option<usize>) {
        *self.stall_after.lock().expect("lock") = n;
    }

    fn creates(&self) -> Vec<ObjectKey> {
        self.creates.lock().expect("lock").clone()
    }

    fn deletes(&self) -> Vec<ObjectKey> {
        self.deletes.lock().expect("lock").clone()
    }

    fn record(&self, actions: &[Action], outcomes: &[ActionOutcome]) {
        for (a, o) in actions.iter().zip(outcomes) {
            if o.result.is_err() {
                continue;
            }
            match a {
                Action::Create { object } => {
                    self.creates.lock().expect("lock").push(object.key.clone())
                }
                Action::Delete { key } => self.deletes.lock().expect("lock").push(key.clone()),
                _ => {}
            }
        }
    }
}

#[async_trait]
impl Backend for Scripted {
    fn broker_type(&self) -> BrokerType {
        self.inner.broker_type()
    }

    async fn check(&self) -> Result<(), BrokerError> {
        match self.garbage() {
            Garbage::CheckFails(e) => Err(e),
            _ => self.inner.check().await,
        }
    }

    async fn observe(&self, scope: &Scope, keys: &[ObjectKey]) -> Result<Observed, BrokerError> {
        let mut observed = match self.garbage() {
            Garbage::ObserveFails(e) => return Err(e),
            _ => self.inner.observe(scope, keys).await?,
        };
        if self.hide_owner.load(Ordering::SeqCst) {
            for o in observed.objects.values_mut() {
                o.owner = None;
            }
        }
        if matches!(self.garbage(), Garbage::ObservePartial) {
            let n = observed.objects.len() / 2;
            observed.objects = observed.objects.into_iter().skip(n).collect();
            observed.objects.insert(
                ObjectKey::new(switchyard::brokers::ObjectKind::Topic, "nobody-asked"),
                Default::default(),
            );
        }
        Ok(observed)
    }

    async fn apply(&self, scope: &Scope, actions: &[Action]) -> Vec<ActionOutcome> {
        self.applies.fetch_add(1, Ordering::SeqCst);
        let stall = *self.stall_after.lock().expect("lock");
        if let Some(n) = stall {
            let done = &actions[..n.min(actions.len())];
            let outcomes = self.inner.apply(scope, done).await;
            self.record(done, &outcomes);
            self.stalled.notify_one();
            std::future::pending::<()>().await;
        }
        match self.garbage() {
            Garbage::ApplyFails(e) => actions
                .iter()
                .map(|a| ActionOutcome {
                    key: a.key().clone(),
                    result: Err(e.clone()),
                })
                .collect(),
            Garbage::ApplyShort => {
                let done = &actions[..actions.len() / 2];
                let outcomes = self.inner.apply(scope, done).await;
                self.record(done, &outcomes);
                outcomes
            }
            Garbage::ApplyWrongKeys => actions
                .iter()
                .map(|a| {
                    let mut key = a.key().clone();
                    key.name.push_str("-not-this-one");
                    ActionOutcome {
                        key,
                        result: Ok(()),
                    }
                })
                .collect(),
            garbage => {
                let mut outcomes = self.inner.apply(scope, actions).await;
                self.record(actions, &outcomes);
                if matches!(garbage, Garbage::ApplyLong) {
                    outcomes.push(ActionOutcome {
                        key: ObjectKey::new(switchyard::brokers::ObjectKind::Queue, "stray"),
                        result: Ok(()),
                    });
                }
                outcomes
            }
        }
    }
}

/// One scripted broker per env slug.
#[derive(Default)]
struct ScriptedConnector {
    backends: Mutex<HashMap<String, Arc<Scripted>>>,
}

impl ScriptedConnector {
    fn backend(&self, slug: &str, broker_type: BrokerType) -> Arc<Scripted> {
        self.backends
            .lock()
            .expect("lock")
            .entry(slug.to_string())
            .or_insert_with(|| Scripted::new(broker_type))
            .clone()
    }
}

#[async_trait]
impl Connector for ScriptedConnector {
    async fn connect(
        &self,
        env: &EnvSpec,
        _secrets: &ResolvedSecrets,
    ) -> Result<Arc<dyn Backend>, BrokerError> {
        Ok(self.backend(&env.slug, env.broker_type))
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn manifest(name: &str, policy: &str, topics: &[String], retention: &str, env: &str) -> String {
    let topics: String = topics
        .iter()
        .map(|t| {
            format!("    - {{name: {t}, retention: {retention}, subscriptions: [{{name: app}}]}}\n")
        })
        .collect();
    let topics = if topics.is_empty() {
        "  topics: []\n".to_string()
    } else {
        format!("  topics:\n{topics}")
    };
    format!(
        "apiVersion: switchyard.dev/v1alpha1\nkind: MessageBroker\nmetadata: {{name: {name}}}\nspec:\n  deletionPolicy: {policy}\n{topics}  envs:\n{env}\n"
    )
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

const FAKE_KAFKA_ENV: &str =
    "    - {slug: prd, type: Kafka, kafka: {bootstrapServers: [\"kafka.example:9092\"]}}";

fn redis_env(url: &str, password_secret: Option<&str>) -> String {
    match password_secret {
        Some(s) => format!(
            "    - {{slug: prd, type: Redis, redis: {{url: \"{url}\", passwordSecretRef: {{name: {s}, key: password}}}}}}"
        ),
        None => format!("    - {{slug: prd, type: Redis, redis: {{url: \"{url}\"}}}}"),
    }
}

fn env_is(mb: &MessageBroker, type_: &str, status: &str, reason: &str) -> bool {
    prd_condition(mb, type_).is_some_and(|(s, r, _)| s == status && r == reason)
}

fn status_topics(mb: &MessageBroker) -> Vec<String> {
    mb.status
        .as_ref()
        .and_then(|s| s.envs.iter().find(|e| e.slug == "prd"))
        .map(|e| e.topics.iter().map(|t| t.name.clone()).collect())
        .unwrap_or_default()
}

fn owned(mb: &MessageBroker) -> BTreeSet<String> {
    mb.status
        .as_ref()
        .and_then(|s| s.envs.iter().find(|e| e.slug == "prd"))
        .map(|e| e.owned.iter().cloned().collect())
        .unwrap_or_default()
}

fn assert_no_duplicates(what: &str, keys: &[ObjectKey]) {
    let mut seen = BTreeSet::new();
    for k in keys {
        assert!(seen.insert(k), "{k} {what} twice: {keys:?}");
    }
}

async fn wait_stalled(b: &Scripted) {
    tokio::time::timeout(TIMEOUT, b.stalled.notified())
        .await
        .expect("the operator reached the broker within the timeout");
}

async fn wait_gone(client: &Client, ns: &str, name: &str, timeout: Duration) -> Duration {
    let api: Api<MessageBroker> = Api::namespaced(client.clone(), ns);
    let started = Instant::now();
    loop {
        if api.get_opt(name).await.expect("get").is_none() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "{ns}/{name} still present after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Faults

#[tokio::test]
async fn a_broker_killed_mid_reconcile_is_reported_unreachable_and_recovered_from() {
    let (client, ns) = setup("rel-kill-broker").await;
    let mut redis = PrivateRedis::start(None);
    // A production-like resync, so only the error backoff can bring it back quickly.
    let config = Config {
        resync: Duration::from_secs(60),
        check_timeout: Duration::from_secs(3),
        ..Config::default()
    };
    let ctl = start_controller(
        client.clone(),
        &ns,
        Arc::new(RealConnector::default()),
        config,
    );
    let env = redis_env(&redis.url(), None);
    apply_mb(
        &client,
        &ns,
        &manifest("bus", "Retain", &names("t", 20), "1h", &env),
    )
    .await;
    wait_ready(&client, &ns, "bus", TIMEOUT).await;

    // A spec change starts a reconcile; the broker dies under it.
    apply_mb(
        &client,
        &ns,
        &manifest("bus", "Retain", &names("t", 40), "1h", &env),
    )
    .await;
    redis.kill();
    let killed = Instant::now();
    let down = wait_for_mb(&client, &ns, "bus", TIMEOUT, "Connected=False", |m| {
        env_is(m, "Connected", "False", "Unreachable")
    })
    .await;
    let detected = killed.elapsed();
    eprintln!("broker killed → Connected=False/Unreachable: {detected:?}");
    // The pass under way fails, one backoff step (1s) later the check fails within its timeout
    // (3s); the rest is the pass itself and the status write, which take seconds when the whole
    // suite shares two cores. Far below the 60s resync that would otherwise bring it back.
    assert!(
        detected < Duration::from_secs(1 + 3 + 6),
        "took {detected:?} to notice"
    );
    let ready = condition(&down, "Ready").expect("Ready");
    assert_eq!(ready.status, "False");
    assert!(
        condition_true(&down, "Reconciling") && !condition_true(&down, "Stalled"),
        "an outage is retried (Reconciling), not Stalled"
    );

    redis.restart();
    let back = Instant::now();
    let mb = wait_for_mb(&client, &ns, "bus", TIMEOUT, "Ready again", |m| {
        condition_true(m, "Ready") && current(m)
    })
    .await;
    let recovered = back.elapsed();
    eprintln!("broker back → Ready: {recovered:?}");
    assert!(
        recovered < Duration::from_secs(10),
        "Ready only after {recovered:?}"
    );
    assert_eq!(status_topics(&mb).len(), 40);
    // The restarted broker lost its data; the operator provisioned everything again.
    let conn = ::redis::Client::open(redis.url().as_str()).expect("redis");
    let mut conn = conn
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let exists: i64 = ::redis::cmd("EXISTS")
        .arg(format!("{ns}:bus:t-39"))
        .query_async(&mut conn)
        .await
        .expect("exists");
    assert_eq!(exists, 1);
    assert!(ctl.is_running());
    ctl.stop().await;
}

#[tokio::test]
async fn watches_resume_after_an_apiserver_restart_and_nothing_is_provisioned_twice() {
    let mut plane = PrivateControlPlane::start();
    let client = client_from(&plane.kubeconfig()).await;
    ensure_crd(&client).await;
    let ns = namespace(&client, "rel-apiserver").await;
    let connector = Arc::new(ScriptedConnector::default());
    let broker = connector.backend("prd", BrokerType::Kafka);
    let ctl = start_controller(client.clone(), &ns, connector.clone(), fast_config());
    apply_mb(
        &client,
        &ns,
        &manifest("bus", "Retain", &names("t", 3), "1h", FAKE_KAFKA_ENV),
    )
    .await;
    wait_ready(&client, &ns, "bus", TIMEOUT).await;
    let before = broker.inner.objects().len();

    let stopped = Instant::now();
    plane.restart_apiserver();
    let deadline = Instant::now() + TIMEOUT;
    while client.apiserver_version().await.is_err() {
        assert!(Instant::now() < deadline, "apiserver did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("kube-apiserver restart: back after {:?}", stopped.elapsed());

    // A spec change after the restart reaches the operator only through resumed watches.
    let changed = Instant::now();
    apply_mb(
        &client,
        &ns,
        &manifest("bus", "Retain", &names("t", 4), "1h", FAKE_KAFKA_ENV),
    )
    .await;
    let mb = wait_for_mb(
        &client,
        &ns,
        "bus",
        TIMEOUT,
        "the post-restart spec reconciled",
        |m| condition_true(m, "Ready") && current(m) && status_topics(m).len() == 4,
    )
    .await;
    eprintln!(
        "spec change after apiserver restart → reconciled: {:?}",
        changed.elapsed()
    );
    let after = broker.inner.objects().len();
    let creates = broker.creates();
    assert_no_duplicates("created", &creates);
    assert_eq!(
        after,
        before + 1,
        "one topic more (Kafka groups are not objects)"
    );
    assert_eq!(creates.len(), after, "every object created exactly once");
    assert_eq!(owned(&mb).len(), after);
    assert!(ctl.is_running());
    ctl.stop().await;
}

#[tokio::test]
async fn an_operator_killed_during_create_update_and_delete_converges() {
    let (client, ns) = setup("rel-kill-op").await;
    let connector = Arc::new(ScriptedConnector::default());
    let broker = connector.backend("prd", BrokerType::Kafka);
    // No ownership marker on the broker: only what the operator recorded before applying tells
    // its half-created objects from foreign ones after a kill.
    broker.hide_owner.store(true, Ordering::SeqCst);
    let foreign = ObjectKey::new(switchyard::brokers::ObjectKind::Topic, "someone-elses");
    broker.inner.insert(foreign.clone(), Default::default());

    // Create: killed after 3 of 6 topics.
    broker.stall_after(Some(3));
    let ctl = start_controller(client.clone(), &ns, connector.clone(), fast_config());
    let topics = names("t", 6);
    apply_mb(
        &client,
        &ns,
        &manifest("bus", "Delete", &topics, "1h", FAKE_KAFKA_ENV),
    )
    .await;
    wait_stalled(&broker).await;
    ctl.kill();
    broker.stall_after(None);
    assert_eq!(broker.creates().len(), 3);
    let ctl = start_controller(client.clone(), &ns, connector.clone(), fast_config());
    let mb = wait_for_mb(
        &client,
        &ns,
        "bus",
        TIMEOUT,
        "Ready after a kill mid-create",
        |m| condition_true(m, "Ready") && current(m),
    )
    .await;
    let objects = broker.inner.objects();
    assert_eq!(objects.len(), 6 + 1, "6 topics and the foreign one");
    assert_no_duplicates("created", &broker.creates());
    assert_eq!(broker.creates().len(), 6);
    assert_eq!(owned(&mb).len(), 6);
    assert!(!owned(&mb).contains(&foreign.to_string()));

    // Update: new retention everywhere and two more topics; killed after 4 actions.
    broker.stall_after(Some(4));
    let topics = names("t", 8);
    apply_mb(
        &client,
        &ns,
        &manifest("bus", "Delete", &topics, "2h", FAKE_KAFKA_ENV),
    )
    .await;
    wait_stalled(&broker).await;
    ctl.kill();
    broker.stall_after(None);
    let ctl = start_controller(client.clone(), &ns, connector.clone(), fast_config());
    let mb = wait_for_mb(
        &client,
        &ns,
        "bus",
        TIMEOUT,
        "Ready after a kill mid-update",
        |m| condition_true(m, "Ready") && current(m) && status_topics(m).len() == 8,
    )
    .await;
    let objects = broker.inner.objects();
    assert_eq!(objects.len(), 8 + 1);
    assert_no_duplicates("created", &broker.creates());
    assert_eq!(broker.creates().len(), 8);
    assert_eq!(owned(&mb).len(), 8);
    for (k, o) in &objects {
        if k.kind == switchyard::brokers::ObjectKind::Topic && k != &foreign {
            assert_eq!(
                o.config.get("retention.ms").map(String::as_str),
                Some("7200000"),
                "{k} kept the old retention"
            );
        }
    }

    // Delete (policy Delete): killed after 5 of 8 deletions.
    broker.stall_after(Some(5));
    let api: Api<MessageBroker> = Api::namespaced(client.clone(), &ns);
    api.delete("bus", &DeleteParams::default())
        .await
        .expect("delete");
    wait_stalled(&broker).await;
    ctl.kill();
    broker.stall_after(None);
    assert_eq!(broker.deletes().len(), 5);
    let ctl = start_controller(client.clone(), &ns, connector.clone(), fast_config());
    wait_gone(&client, &ns, "bus", TIMEOUT).await;
    assert_no_duplicates("deleted", &broker.deletes());
    assert_eq!(broker.deletes().len(), 8);
    assert_eq!(
        broker.inner.objects().into_keys().collect::<Vec<_>>(),
        vec![foreign],
        "everything owned is gone and nothing else"
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    assert!(secrets.get_opt("bus-prd").await.expect("get").is_none());
    ctl.stop().await;
}

#[tokio::test]
async fn concurrent_spec_edits_retry_conflicts_and_the_last_spec_wins() {
    let (client, ns) = setup("rel-edits").await;
    let connector = Arc::new(ScriptedConnector::default());
    let ctl = start_controller(client.clone(), &ns, connector.clone(), fast_config());
    apply_mb(
        &client,
        &ns,
        &manifest("bus", "Retain", &names("base", 1), "1h", FAKE_KAFKA_ENV),
    )
    .await;
    wait_ready(&client, &ns, "bus", TIMEOUT).await;

    // Two clients, each read-modify-write (PUT with resourceVersion) in a loop, retrying on 409.
    async fn editor(client: Client, ns: String, who: &'static str) -> usize {
        let api: Api<MessageBroker> = Api::namespaced(client, &ns);
        let mut conflicts = 0;
        for round in 0..8 {
            let mut attempts = 0;
            loop {
                attempts += 1;
                assert!(
                    attempts < 100,
                    "{who}: no write got through in 100 attempts"
                );
                let mut mb = api.get("bus").await.expect("get");
                mb.spec.topics = serde_json::from_value(serde_json::json!([
                    {"name": format!("{who}-{round}")},
                    {"name": format!("{who}-{round}-x"), "subscriptions": [{"name": "app"}]},
                ]))
                .expect("topics");
                match api.replace("bus", &PostParams::default(), &mb).await {
                    Ok(_) => break,
                    Err(kube::Error::Api(e)) if e.code == 409 => conflicts += 1,
                    Err(e) => panic!("{who}: {e}"),
                }
            }
        }
        conflicts
    }
    let (a, b) = tokio::join!(
        editor(client.clone(), ns.clone(), "alpha"),
        editor(client.clone(), ns.clone(), "beta")
    );
    eprintln!("concurrent edits: {a} + {b} conflicts retried");

    let api: Api<MessageBroker> = Api::namespaced(client.clone(), &ns);
    let last = api.get("bus").await.expect("get");
    let want: Vec<String> = last.spec.topics.iter().map(|t| t.name.clone()).collect();
    let mb = wait_for_mb(
        &client,
        &ns,
        "bus",
        TIMEOUT,
        "the last spec reconciled",
        |m| {
            condition_true(m, "Ready")
                && m.metadata.generation == last.metadata.generation
                && current(m)
                && status_topics(m) == want
        },
    )
    .await;
    let binding = Api::<Secret>::namespaced(client.clone(), &ns)
        .get("bus-prd")
        .await
        .expect("binding");
    let data = binding.data.expect("data");
    for t in &want {
        assert!(
            data.contains_key(&format!("topic.{t}")),
            "binding lacks {t}"
        );
    }
    assert_eq!(
        data.keys().filter(|k| k.starts_with("topic.")).count(),
        want.len()
    );
    assert_eq!(status_topics(&mb), want);
    ctl.stop().await;
}

#[tokio::test]
async fn under_retain_an_unreachable_broker_never_holds_up_deletion() {
    let (client, ns) = setup("rel-del-retain").await;
    let connector = Arc::new(ScriptedConnector::default());
    let broker = connector.backend("prd", BrokerType::Kafka);
    let ctl = start_controller(client.clone(), &ns, connector.clone(), fast_config());
    apply_mb(
        &client,
        &ns,
        &manifest("bus", "Retain", &names("t", 3), "1h", FAKE_KAFKA_ENV),
    )
    .await;
    wait_ready(&client, &ns, "bus", TIMEOUT).await;
    let objects = broker.inner.objects();

    broker.inner.set_unreachable(true);
    let api: Api<MessageBroker> = Api::namespaced(client.clone(), &ns);
    api.delete("bus", &DeleteParams::default())
        .await
        .expect("delete");
    let took = wait_gone(&client, &ns, "bus", Duration::from_secs(5)).await;
    eprintln!("Retain, broker unreachable: finalizer removed after {took:?}");
    assert_eq!(broker.inner.objects(), objects, "Retain touches nothing");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    assert!(secrets.get_opt("bus-prd").await.expect("get").is_none());
    ctl.stop().await;
}

#[tokio::test]
async fn under_delete_a_blocked_cleanup_is_explained_and_the_annotation_abandons_it() {
    let (client, ns) = setup("rel-del-abandon").await;
    let connector = Arc::new(ScriptedConnector::default());
    let broker = connector.backend("prd", BrokerType::Kafka);
    // A long resync: the backoff then grows past the time the annotation gets to act.
    let config = Config {
        resync: Duration::from_secs(120),
        ..fast_config()
    };
    let ctl = start_controller(client.clone(), &ns, connector.clone(), config);
    apply_mb(
        &client,
        &ns,
        &manifest("bus", "Delete", &names("t", 2), "1h", FAKE_KAFKA_ENV),
    )
    .await;
    wait_ready(&client, &ns, "bus", TIMEOUT).await;
    let objects = broker.inner.objects();

    broker.inner.set_unreachable(true);
    let api: Api<MessageBroker> = Api::namespaced(client.clone(), &ns);
    let passes = ctl.metrics.reconciles.get();
    api.delete("bus", &DeleteParams::default())
        .await
        .expect("delete");
    let blocked = wait_for_mb(&client, &ns, "bus", TIMEOUT, "deletion explained", |m| {
        condition(m, "Ready").is_some_and(|c| c.reason == "Deleting")
    })
    .await;
    let message = condition(&blocked, "Ready").expect("Ready").message.clone();
    assert!(
        message.contains("env prd")
            && message.contains("connection refused")
            && message.contains(switchyard::controller::ABANDON_ANNOTATION),
        "{message}"
    );
    assert!(condition_true(&blocked, "Reconciling"));

    // After three failed cleanups the next retry is 4s away; the annotation must not wait for it.
    let deadline = Instant::now() + TIMEOUT;
    while ctl.metrics.reconciles.get() < passes + 3 {
        assert!(Instant::now() < deadline, "cleanup was not retried");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let patch = serde_json::json!({"metadata": {"annotations": {switchyard::controller::ABANDON_ANNOTATION: "true"}}});
    api.patch("bus", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("annotate");
    let took = wait_gone(&client, &ns, "bus", Duration::from_secs(2)).await;
    eprintln!("abandon annotation → finalizer removed: {took:?}");
    assert_eq!(
        broker.inner.objects(),
        objects,
        "abandoned cleanup leaves the broker alone"
    );
    ctl.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 2. Bad input

fn oversized(topics: usize, subs: usize, envs: usize) -> serde_json::Value {
    let subs: Vec<serde_json::Value> = (0..subs)
        .map(|i| serde_json::json!({"name": format!("s-{i}")}))
        .collect();
    let topics: Vec<serde_json::Value> = (0..topics)
        .map(|i| serde_json::json!({"name": format!("t-{i}"), "subscriptions": if i == 0 { subs.clone() } else { vec![] }}))
        .collect();
    let envs: Vec<serde_json::Value> = (0..envs)
        .map(|i| serde_json::json!({"slug": format!("e{i}"), "type": "Redis", "redis": {"url": "redis://r:6379"}}))
        .collect();
    serde_json::json!({
        "apiVersion": "switchyard.dev/v1alpha1", "kind": "MessageBroker",
        "metadata": {"name": "big"},
        "spec": {"topics": topics, "envs": envs},
    })
}

#[tokio::test]
async fn oversized_specs_are_refused_by_the_schema() {
    let (client, ns) = setup("rel-oversized").await;
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns,
        &kube::api::ApiResource::erase::<MessageBroker>(&()),
    );
    let dry_run = PatchParams::apply("switchyard-tests").dry_run();

    // The largest allowed spec passes both.
    let max = oversized(1000, 32, 16);
    assert_eq!(switchyard::validation::validate(&max), Vec::<String>::new());
    api.patch("big", &dry_run, &Patch::Apply(&max))
        .await
        .expect("the largest allowed spec is accepted");

    for (what, manifest, field) in [
        ("1001 topics", oversized(1001, 0, 1), "spec.topics"),
        (
            "33 subscriptions",
            oversized(1, 33, 1),
            "spec.topics[0].subscriptions",
        ),
        ("17 envs", oversized(1, 0, 17), "spec.envs"),
    ] {
        let local = switchyard::validation::validate(&manifest);
        assert!(
            local
                .iter()
                .any(|e| e.starts_with(field) && e.contains("must have at most")),
            "{what}: {local:?}"
        );
        match api.patch("big", &dry_run, &Patch::Apply(&manifest)).await {
            Err(kube::Error::Api(e)) => {
                assert_eq!(e.code, 422, "{what}: {e:?}");
                assert!(
                    e.message.contains(field) && e.message.contains("must have at most"),
                    "{what}: {}",
                    e.message
                );
            }
            other => panic!("{what}: expected 422, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn garbage_from_a_broker_becomes_conditions_without_panics_or_hot_loops() {
    let (client, ns) = setup("rel-garbage").await;
    let connector = Arc::new(ScriptedConnector::default());
    let broker = connector.backend("prd", BrokerType::Kafka);
    // Probe on every pass, so a failing check shows even right after a good observation.
    let config = switchyard::controller::Config {
        check_interval: Duration::ZERO,
        ..fast_config()
    };
    let ctl = start_controller(client.clone(), &ns, connector.clone(), config);
    let mut generation = 0;
    let mut spec = |n: usize| {
        generation += 1;
        manifest(
            "bus",
            "Retain",
            &names(&format!("g{generation}"), n),
            "1h",
            FAKE_KAFKA_ENV,
        )
    };
    apply_mb(&client, &ns, &spec(2)).await;
    wait_ready(&client, &ns, "bus", TIMEOUT).await;

    let weird = "\u{0}☃ <garbage> \"unterminated";
    let cases: Vec<(&str, Garbage, &str, &str, bool)> = vec![
        (
            "check fails oddly",
            Garbage::CheckFails(BrokerError::new(BrokerErrorKind::Other, weird)),
            "Connected",
            "BrokerError",
            true,
        ),
        (
            "observe refused",
            Garbage::ObserveFails(BrokerError::new(BrokerErrorKind::Rejected, weird)),
            "TopicsReady",
            "BrokerError",
            false,
        ),
        (
            "apply reports too few outcomes",
            Garbage::ApplyShort,
            "TopicsReady",
            "BrokerError",
            true,
        ),
        (
            "apply reports other keys",
            Garbage::ApplyWrongKeys,
            "TopicsReady",
            "BrokerError",
            true,
        ),
        (
            "apply fails everywhere",
            Garbage::ApplyFails(BrokerError::new(BrokerErrorKind::Other, weird)),
            "TopicsReady",
            "BrokerError",
            true,
        ),
    ];
    for (what, garbage, type_, reason, transient) in cases {
        broker.set(garbage);
        // New topics, so the pass has something to apply.
        apply_mb(&client, &ns, &spec(2)).await;
        let mb = wait_for_mb(&client, &ns, "bus", TIMEOUT, what, |m| {
            current(m) && env_is(m, type_, "False", reason)
        })
        .await;
        assert!(!condition_true(&mb, "Ready"), "{what}: Ready");
        assert_eq!(
            condition_true(&mb, "Stalled"),
            !transient,
            "{what}: Stalled must say whether retrying helps"
        );
        // No hot loop: over 4 seconds, only backoff-paced retries (backoff 1s, 2s; resync 2s).
        assert_no_hot_loop(&ctl, what, 6).await;
    }

    // A long answer, and a partial observation: handled, and the controller still converges.
    for garbage in [Garbage::ApplyLong, Garbage::ObservePartial] {
        broker.set(garbage);
        apply_mb(&client, &ns, &spec(2)).await;
        wait_for_mb(&client, &ns, "bus", TIMEOUT, "reconciled", current).await;
        assert!(ctl.is_running());
    }
    broker.set(Garbage::None);
    apply_mb(&client, &ns, &spec(3)).await;
    wait_for_mb(
        &client,
        &ns,
        "bus",
        TIMEOUT,
        "Ready after the garbage",
        |m| condition_true(m, "Ready") && current(m),
    )
    .await;
    assert!(broker.applies.load(Ordering::SeqCst) > 0);
    ctl.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 3. Secrets

/// A tracing writer into a shared buffer.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("lock")).into_owned()
    }
}

const REDIS_PASSWORD: &str = "S3cr3t-zq9x-R3d1s-7781";
const WRONG_REDIS_PASSWORD: &str = "Wr0ng-zq9x-R3d1s-4410";
const WRONG_KAFKA_PASSWORD: &str = "Wr0ng-zq9x-K4fk4-5512";

fn base64(s: &str) -> String {
    use std::fmt::Write as _;
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                let _ = write!(out, "{}", T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[tokio::test]
async fn secret_values_never_reach_logs_events_status_metrics_or_binding_metadata() {
    // Everything this test's runtime logs, at debug level (the runtime is single-threaded, so the
    // controller's tasks log here too).
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let (client, ns) = setup("rel-secrets").await;
    let kafka_password = env_var("SWITCHYARD_KAFKA_SASL_PASSWORD");
    let mut redis = PrivateRedis::start(Some(REDIS_PASSWORD));
    put_secret(
        &client,
        &ns,
        "redis-auth",
        &[("password", WRONG_REDIS_PASSWORD)],
    )
    .await;
    put_secret(
        &client,
        &ns,
        "kafka-user",
        &[
            ("username", &env_var("SWITCHYARD_KAFKA_SASL_USERNAME")),
            ("password", WRONG_KAFKA_PASSWORD),
        ],
    )
    .await;
    let ctl = start_real_controller(client.clone(), &ns);
    let topics = names("t", 2);
    let redis_block = redis_env(&redis.url(), Some("redis-auth"));

    // A wrong password, then the right one.
    apply_mb(
        &client,
        &ns,
        &manifest("bus", "Retain", &topics, "1h", &redis_block),
    )
    .await;
    wait_for_mb(&client, &ns, "bus", TIMEOUT, "refused credentials", |m| {
        env_is(m, "Connected", "False", "AuthenticationFailed")
    })
    .await;
    put_secret(&client, &ns, "redis-auth", &[("password", REDIS_PASSWORD)]).await;
    wait_for_mb(&client, &ns, "bus", TIMEOUT, "Ready on Redis", |m| {
        condition_true(m, "Ready")
    })
    .await;

    // The broker dies and comes back.
    redis.kill();
    wait_for_mb(&client, &ns, "bus", TIMEOUT, "unreachable", |m| {
        env_is(m, "Connected", "False", "Unreachable")
    })
    .await;
    redis.restart();
    wait_for_mb(&client, &ns, "bus", TIMEOUT, "Ready again", |m| {
        condition_true(m, "Ready")
    })
    .await;

    // Swap to Kafka over SASL: a wrong password first (the swap waits), then the right one.
    let kafka_block = format!(
        "    - {{slug: prd, type: Kafka, kafka: {{bootstrapServers: [\"{}\"], sasl: {{mechanism: SCRAM-SHA-512, credentialsSecretRef: {{name: kafka-user}}}}}}}}",
        env_var("SWITCHYARD_KAFKA_SASL_BOOTSTRAP")
    );
    apply_mb(
        &client,
        &ns,
        &manifest("bus", "Retain", &topics, "1h", &kafka_block),
    )
    .await;
    wait_for_mb(
        &client,
        &ns,
        "bus",
        TIMEOUT,
        "Kafka refusing the login",
        |m| {
            current(m)
                && prd_condition(m, "Connected").is_some_and(|(s, r, _)| {
                    s == "False" && (r == "AuthenticationFailed" || r == "Timeout")
                })
        },
    )
    .await;
    put_secret(
        &client,
        &ns,
        "kafka-user",
        &[
            ("username", &env_var("SWITCHYARD_KAFKA_SASL_USERNAME")),
            ("password", &kafka_password),
        ],
    )
    .await;
    wait_for_mb(&client, &ns, "bus", TIMEOUT, "swapped to Kafka", |m| {
        condition_true(m, "Ready")
            && m.status
                .as_ref()
                .and_then(|s| s.envs.first()?.swap.as_ref())
                .is_some_and(|s| s.phase == SwapPhase::Complete)
    })
    .await;
    let binding = Api::<Secret>::namespaced(client.clone(), &ns)
        .get("bus-prd")
        .await
        .expect("binding");
    let data = binding.data.clone().unwrap_or_default();
    assert_eq!(
        String::from_utf8_lossy(&data["password"].0),
        kafka_password,
        "the binding carries the password where apps expect it"
    );

    // Gather everything a secret must not reach.
    let mut places: BTreeMap<&str, String> = BTreeMap::new();
    places.insert("logs", capture.text());
    let events = Api::<Event>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .expect("events");
    assert!(!events.items.is_empty());
    places.insert(
        "events",
        serde_json::to_string(&events.items).expect("json"),
    );
    let mb = Api::<MessageBroker>::namespaced(client.clone(), &ns)
        .get("bus")
        .await
        .expect("mb");
    places.insert("status", serde_json::to_string(&mb).expect("json"));
    let mut registry = prometheus_client::registry::Registry::default();
    ctl.metrics.register(&mut registry);
    let mut metrics = String::new();
    prometheus_client::encoding::text::encode(&mut metrics, &registry).expect("encode");
    places.insert("metrics", metrics);
    let mut public = binding.clone();
    if let Some(d) = public.data.as_mut() {
        d.remove("username");
        d.remove("password");
    }
    let public_data: BTreeMap<String, String> = public
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
        .collect();
    places.insert(
        "binding",
        format!(
            "{} {}",
            serde_json::to_string(&public.metadata).expect("json"),
            serde_json::to_string(&public_data).expect("json")
        ),
    );

    let logs = &places["logs"];
    assert!(
        logs.contains("DEBUG") && logs.contains("reconcile"),
        "debug logs were not captured"
    );
    eprintln!(
        "secrets: searched {} bytes of logs, {} Events, status, metrics and binding metadata",
        logs.len(),
        events.items.len()
    );
    for secret in [
        REDIS_PASSWORD,
        WRONG_REDIS_PASSWORD,
        WRONG_KAFKA_PASSWORD,
        kafka_password.as_str(),
    ] {
        for needle in [secret.to_string(), base64(secret)] {
            for (place, text) in &places {
                assert!(
                    !text.contains(&needle),
                    "a secret value ({needle}) appears in {place}"
                );
            }
        }
    }
    ctl.stop().await;
}
