//! Flux end to end: MessageBrokers committed to a git repository, synced by Flux's real
//! source-controller and kustomize-controller (tests/env/flux.sh) with `wait: true`, reconciled
//! by our controller (in-process, with the in-memory broker). Proves that the Kustomization is
//! Ready only once every MessageBroker is, that a commit breaking a broker turns it not ready
//! and names the MessageBroker, and that a commit swapping an env's broker type converges.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Api, Client};
use switchyard::api::{BrokerType, MessageBroker};
use switchyard::brokers::fake::FakeConnector;

use crate::support::*;

/// How long Flux gets for one step: poll the repository (2s), apply, then health-check (polled
/// every 5s; a health check that never passes gives up after the Kustomization's 30s timeout).
const FLUX_TIMEOUT: Duration = Duration::from_secs(90);

/// A bare repository under the git server's root, and a work tree that commits and pushes to it.
struct GitRepo {
    work: PathBuf,
    url: String,
}

async fn git(dir: &Path, args: &[&str]) -> String {
    let out = tokio::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "switchyard-tests")
        .env("GIT_AUTHOR_EMAIL", "tests@switchyard.invalid")
        .env("GIT_COMMITTER_NAME", "switchyard-tests")
        .env("GIT_COMMITTER_EMAIL", "tests@switchyard.invalid")
        .output()
        .await
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl GitRepo {
    async fn create(name: &str) -> GitRepo {
        let root = PathBuf::from(env_var("SWITCHYARD_FLUX_GIT_ROOT"));
        let bare = root.join(format!("{name}.git"));
        let work = std::env::temp_dir().join(unique("switchyard-flux-work"));
        std::fs::create_dir_all(&work).expect("work dir");
        git(
            &root,
            &[
                "init",
                "--quiet",
                "--bare",
                "-b",
                "main",
                &bare.to_string_lossy(),
            ],
        )
        .await;
        git(&work, &["init", "--quiet", "-b", "main"]).await;
        git(&work, &["remote", "add", "origin", &bare.to_string_lossy()]).await;
        GitRepo {
            work,
            url: format!("{}/{name}.git", env_var("SWITCHYARD_FLUX_GIT_URL")),
        }
    }

    /// Replace the tree's `brokers/` directory with these files, commit, push; the commit's sha.
    async fn commit(&self, message: &str, files: &[(&str, String)]) -> String {
        let dir = self.work.join("brokers");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("brokers dir");
        for (name, content) in files {
            std::fs::write(dir.join(name), content).expect("manifest written");
        }
        git(&self.work, &["add", "--all"]).await;
        git(&self.work, &["commit", "--quiet", "-m", message]).await;
        git(&self.work, &["push", "--quiet", "origin", "main"]).await;
        git(&self.work, &["rev-parse", "HEAD"]).await
    }
}

impl Drop for GitRepo {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

fn broker(name: &str, slug: &str, env: &str) -> String {
    format!(
        r#"apiVersion: switchyard.dev/v1alpha1
kind: MessageBroker
metadata:
  name: {name}
spec:
  topics:
    - name: order-created
      subscriptions: [{{name: billing}}]
  envs:
    - slug: {slug}
{env}"#
    )
}

const KAFKA: &str =
    "      type: Kafka\n      kafka: {bootstrapServers: [\"kafka.example:9092\"]}\n";
const REDIS: &str = "      type: Redis\n      redis: {url: \"redis://redis.example:6379/0\"}\n";
const KAFKA_MISSING_SECRET: &str = "      type: Kafka\n      kafka: {bootstrapServers: [\"kafka.example:9092\"], sasl: {mechanism: SCRAM-SHA-512, credentialsSecretRef: {name: no-such-secret}}}\n";
const RABBITMQ: &str =
    "      type: RabbitMQ\n      rabbitmq: {url: \"amqp://rabbitmq.example:5672/\"}\n";

fn flux_api(
    client: &Client,
    ns: &str,
    group: &str,
    kind: &str,
    plural: &str,
) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk(group, "v1", kind);
    Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::from_gvk_with_plural(&gvk, plural),
    )
}

async fn apply(api: &Api<DynamicObject>, obj: serde_json::Value) {
    let name = obj["metadata"]["name"].as_str().expect("name").to_string();
    let obj: DynamicObject = serde_json::from_value(obj).expect("object");
    server_side_apply(api, &name, &obj, "Flux object applies").await;
}

/// The Kustomization's Ready condition: (status, reason, message), and its last applied revision.
#[derive(Debug, Default)]
struct KustomizationState {
    ready: Option<(String, String, String)>,
    last_applied: String,
    last_attempted: String,
}

async fn kustomization_state(api: &Api<DynamicObject>, name: &str) -> KustomizationState {
    let Ok(obj) = api.get(name).await else {
        return KustomizationState::default();
    };
    let status = &obj.data["status"];
    let ready = status["conditions"].as_array().and_then(|cs| {
        cs.iter().find(|c| c["type"] == "Ready").map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (s("status"), s("reason"), s("message"))
        })
    });
    KustomizationState {
        ready,
        last_applied: status["lastAppliedRevision"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        last_attempted: status["lastAttemptedRevision"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    }
}

/// Poll the Kustomization until `check` holds.
async fn wait_for_kustomization(
    api: &Api<DynamicObject>,
    what: &str,
    check: impl Fn(&KustomizationState) -> bool,
) -> KustomizationState {
    let deadline = tokio::time::Instant::now() + FLUX_TIMEOUT;
    loop {
        let state = kustomization_state(api, "brokers").await;
        if check(&state) {
            return state;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Kustomization not {what} within {FLUX_TIMEOUT:?}; last state: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn ready_at(state: &KustomizationState, sha: &str) -> bool {
    state.last_applied.ends_with(sha) && state.ready.as_ref().is_some_and(|(s, _, _)| s == "True")
}

/// Every MessageBroker in the namespace is Ready at its current generation.
async fn all_brokers_ready(client: &Client, ns: &str) -> Vec<String> {
    let api: Api<MessageBroker> = Api::namespaced(client.clone(), ns);
    let list = api.list(&Default::default()).await.expect("list");
    list.items
        .iter()
        .filter(|m| {
            !(condition_true(m, "Ready")
                && m.status.as_ref().and_then(|s| s.observed_generation) == m.metadata.generation)
        })
        .map(|m| m.metadata.name.clone().unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn flux_kustomization_waits_for_brokers_reports_failures_and_converges_a_swap() {
    let (client, ns) = setup("flux").await;
    let connector = Arc::new(FakeConnector::default());
    // The `stg` broker is down at first, so `orders` cannot become Ready.
    connector
        .backend("stg", BrokerType::Redis)
        .set_unreachable(true);
    let ctl = start_controller(client.clone(), &ns, connector.clone(), fast_config());

    let repo = GitRepo::create(&ns).await;
    let first = repo
        .commit(
            "two brokers",
            &[
                ("payments.yaml", broker("payments", "prd", KAFKA)),
                ("orders.yaml", broker("orders", "stg", REDIS)),
            ],
        )
        .await;

    let sources = flux_api(
        &client,
        &ns,
        "source.toolkit.fluxcd.io",
        "GitRepository",
        "gitrepositories",
    );
    let kustomizations = flux_api(
        &client,
        &ns,
        "kustomize.toolkit.fluxcd.io",
        "Kustomization",
        "kustomizations",
    );
    apply(
        &sources,
        serde_json::json!({
            "apiVersion": "source.toolkit.fluxcd.io/v1",
            "kind": "GitRepository",
            "metadata": {"name": "brokers", "namespace": ns},
            "spec": {"url": repo.url, "interval": "2s", "ref": {"branch": "main"}},
        }),
    )
    .await;
    apply(&kustomizations, kustomization(&ns)).await;

    // 1. Applied, but `orders` cannot reach its broker: the health check times out naming it,
    //    while `payments` is Ready; the Kustomization never claims Ready meanwhile.
    let state = wait_for_kustomization(&kustomizations, "failing its health check", |s| {
        assert!(
            s.ready.as_ref().is_none_or(|(st, _, _)| st != "True"),
            "Kustomization Ready while orders cannot be: {s:?}"
        );
        s.ready
            .as_ref()
            .is_some_and(|(st, reason, _)| st == "False" && reason == "HealthCheckFailed")
    })
    .await;
    let (_, _, message) = state.ready.expect("Ready condition");
    assert!(
        message.contains(&format!("MessageBroker/{ns}/orders")),
        "{message}"
    );
    assert!(!message.contains("payments"), "{message}");
    let orders = wait_for_mb(&client, &ns, "orders", FLUX_TIMEOUT, "Reconciling", |m| {
        condition_true(m, "Reconciling")
    })
    .await;
    let reconciling = condition(&orders, "Reconciling").expect("Reconciling");
    assert_eq!(reconciling.reason, "Unreachable", "{reconciling:?}");

    // 2. The broker comes back: both brokers turn Ready, then the Kustomization does.
    connector
        .backend("stg", BrokerType::Redis)
        .set_unreachable(false);
    wait_for_kustomization(&kustomizations, "Ready at the first commit", |s| {
        ready_at(s, &first)
    })
    .await;
    assert_eq!(all_brokers_ready(&client, &ns).await, Vec::<String>::new());

    // 3. A commit that breaks `payments` (its SASL credentials Secret does not exist): the
    //    operator stalls it, and Flux fails the health check early, naming it as Failed.
    let broken = repo
        .commit(
            "payments: reference a credentials Secret that is not there",
            &[
                (
                    "payments.yaml",
                    broker("payments", "prd", KAFKA_MISSING_SECRET),
                ),
                ("orders.yaml", broker("orders", "stg", REDIS)),
            ],
        )
        .await;
    let state = wait_for_kustomization(&kustomizations, "failed on the broken commit", |s| {
        s.last_attempted.ends_with(&broken)
            && s.ready.as_ref().is_some_and(|(st, _, _)| st == "False")
    })
    .await;
    let (_, reason, message) = state.ready.expect("Ready condition");
    assert_eq!(reason, "HealthCheckFailed", "{message}");
    assert!(
        message.contains(&format!("MessageBroker/{ns}/payments status: 'Failed'")),
        "{message}"
    );
    assert!(!message.contains("orders"), "{message}");
    let payments = wait_for_mb(&client, &ns, "payments", FLUX_TIMEOUT, "Stalled", |m| {
        condition_true(m, "Stalled")
    })
    .await;
    let stalled = condition(&payments, "Stalled").expect("Stalled");
    assert_eq!(stalled.reason, "SecretNotFound");
    assert!(
        stalled.message.contains("no-such-secret"),
        "{}",
        stalled.message
    );

    // 4. A commit that fixes `payments` and moves `orders`'s env from Redis to RabbitMQ converges.
    let swapped = repo
        .commit(
            "payments: drop the SASL reference; orders: move stg to RabbitMQ",
            &[
                ("payments.yaml", broker("payments", "prd", KAFKA)),
                ("orders.yaml", broker("orders", "stg", RABBITMQ)),
            ],
        )
        .await;
    wait_for_kustomization(&kustomizations, "Ready after the swap", |s| {
        ready_at(s, &swapped)
    })
    .await;
    assert_eq!(all_brokers_ready(&client, &ns).await, Vec::<String>::new());
    let orders = wait_for_mb(
        &client,
        &ns,
        "orders",
        FLUX_TIMEOUT,
        "serving stg from RabbitMQ",
        |m| {
            m.status
                .as_ref()
                .is_some_and(|s| s.env_summary == "stg:RabbitMQ")
        },
    )
    .await;
    assert!(condition_true(&orders, "Ready"));
    assert!(
        !connector
            .backend("stg", BrokerType::RabbitMQ)
            .objects()
            .is_empty(),
        "nothing provisioned on the new broker"
    );

    // Leave nothing for a later Flux to chew on: deleting the Kustomization prunes what it
    // applied (the controller finalizes the MessageBrokers), then the source goes.
    kustomizations
        .delete("brokers", &Default::default())
        .await
        .expect("delete Kustomization");
    let brokers: Api<MessageBroker> = Api::namespaced(client.clone(), &ns);
    let deadline = tokio::time::Instant::now() + FLUX_TIMEOUT;
    while kustomizations
        .get_opt("brokers")
        .await
        .expect("get")
        .is_some()
        || !brokers
            .list(&Default::default())
            .await
            .expect("list")
            .items
            .is_empty()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "Kustomization deletion did not prune the MessageBrokers"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    sources
        .delete("brokers", &Default::default())
        .await
        .expect("delete GitRepository");
    ctl.stop().await;
}

/// The Kustomization users are told to write (see the Flux section of the README): `wait: true`
/// plus health-check expressions, so that a MessageBroker the operator has not yet written a
/// status for counts as in progress rather than (kstatus's default for custom resources) Current.
fn kustomization(ns: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
        "kind": "Kustomization",
        "metadata": {"name": "brokers", "namespace": ns},
        "spec": {
            "interval": "2s",
            "retryInterval": "2s",
            // kustomize-controller never waits less than 30s for health checks.
            "timeout": "30s",
            "sourceRef": {"kind": "GitRepository", "name": "brokers"},
            "path": "./brokers",
            "targetNamespace": ns,
            "prune": true,
            "wait": true,
            "healthCheckExprs": [{
                "apiVersion": "switchyard.dev/v1alpha1",
                "kind": "MessageBroker",
                "inProgress": "status.conditions.exists(c, c.type == 'Reconciling' && c.status == 'True')",
                "failed": "status.conditions.exists(c, c.type == 'Stalled' && c.status == 'True')",
                "current": "status.conditions.exists(c, c.type == 'Ready' && c.status == 'True')",
            }],
        },
    })
}
