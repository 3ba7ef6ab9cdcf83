//! kstatus conformance: the real objects the controller writes, read back from the API server in
//! every phase of their life, judged by kstatus itself (the Go library Flux and kpt use, via the
//! checker in tests/env/kstatus) and by our Argo CD health check. Both must agree with the status
//! semantics: InProgress/Progressing while reconciling or while observedGeneration lags,
//! Current/Healthy when Ready, Failed/Degraded when Stalled.
//!
//! Set SWITCHYARD_RECORD_ARGOCD_TESTDATA=DIR to save each phase's object as YAML (how the files
//! in config/argocd/testdata were recorded).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use kube::Api;
use kube::api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use switchyard::api::{BrokerType, MessageBroker};
use switchyard::brokers::fake::FakeConnector;

use crate::support::*;

const TIMEOUT: Duration = Duration::from_secs(30);

/// What the Go checker says about an object: kstatus's (status, message), and Argo CD's
/// (health, message) from config/argocd/health.lua run under gopher-lua as Argo CD runs it.
pub struct GoVerdict {
    pub kstatus: (String, String),
    pub argocd: (String, String),
}

pub fn go_checker(obj: &serde_json::Value) -> GoVerdict {
    let bin = env_var("SWITCHYARD_KSTATUS");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/argocd/health.lua");
    let mut child = Command::new(&bin)
        .arg("-argocd-health")
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {bin}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(obj.to_string().as_bytes())
        .expect("writing the object to the checker");
    let out = child.wait_with_output().expect("checker finished");
    assert!(
        out.status.success(),
        "status checker failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("checker prints JSON");
    let pair = |v: &serde_json::Value| {
        (
            v["status"].as_str().unwrap_or_default().to_string(),
            v["message"].as_str().unwrap_or_default().to_string(),
        )
    };
    GoVerdict {
        kstatus: pair(&v),
        argocd: pair(&v["argocd"]),
    }
}

/// The object exactly as the API server returns it (no round trip through our Rust types).
pub async fn live(client: &kube::Client, namespace: &str, name: &str) -> serde_json::Value {
    let ar = ApiResource::erase::<MessageBroker>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &ar);
    let obj = api.get(name).await.expect("MessageBroker readable");
    serde_json::to_value(obj).expect("object serialises")
}

/// Judge one phase with kstatus and with the Argo CD check (under both Lua runtimes, which must
/// agree to the letter); returns kstatus's message.
fn judge(phase: &str, obj: &serde_json::Value, want_kstatus: &str, want_argocd: &str) -> String {
    record(phase, obj);
    let go = go_checker(obj);
    let argo = crate::argocd::health(obj);
    assert_eq!(
        go.argocd, argo,
        "{phase}: gopher-lua and Lua 5.1 disagree on health.lua"
    );
    assert_eq!(
        (go.kstatus.0.as_str(), argo.0.as_str()),
        (want_kstatus, want_argocd),
        "{phase}: kstatus said {:?}, Argo CD said {argo:?}; object: {obj:#}",
        go.kstatus
    );
    go.kstatus.1
}

fn record(phase: &str, obj: &serde_json::Value) {
    let Ok(dir) = std::env::var("SWITCHYARD_RECORD_ARGOCD_TESTDATA") else {
        return;
    };
    let mut obj = obj.clone();
    if let Some(meta) = obj["metadata"].as_object_mut() {
        meta.remove("managedFields");
    }
    let yaml = serde_norway::to_string(&obj).expect("YAML");
    std::fs::create_dir_all(&dir).expect("record dir");
    std::fs::write(format!("{dir}/{phase}.yaml"), yaml).expect("recording written");
}

fn manifest(name: &str, policy: &str, extra_topic: bool, sasl_secret: Option<&str>) -> String {
    let topic = if extra_topic {
        "\n    - name: order-paid"
    } else {
        ""
    };
    let sasl = sasl_secret
        .map(|s| {
            format!(", sasl: {{mechanism: SCRAM-SHA-512, credentialsSecretRef: {{name: {s}}}}}")
        })
        .unwrap_or_default();
    let header = mb_header(name);
    format!(
        r#"{header}spec:
  deletionPolicy: {policy}
  topics:
    - name: order-created
      subscriptions: [{{name: billing}}]{topic}
  envs:
    - slug: prd
      type: Kafka
      kafka: {{bootstrapServers: ["kafka.example:9092"]{sasl}}}
"#
    )
}

fn generations(obj: &serde_json::Value) -> (i64, Option<i64>) {
    (
        obj["metadata"]["generation"].as_i64().expect("generation"),
        obj["status"]["observedGeneration"].as_i64(),
    )
}

#[tokio::test]
async fn kstatus_and_argo_health_agree_with_every_phase_of_a_live_object() {
    let (client, ns) = setup("kstatus").await;
    let name = "bus";
    let connector = Arc::new(FakeConnector::default());
    let broker = connector.backend("prd", BrokerType::Kafka);

    // Applied while no controller runs: no status at all. kstatus cannot tell this from a
    // resource that has no status by design and calls it Current; the Argo CD check knows
    // better. Flux users get the right answer with the Kustomization healthCheckExprs in
    // flux.rs, which treat a missing status as not ready.
    apply_mb(&client, &ns, &manifest(name, "Retain", false, None)).await;
    let obj = live(&client, &ns, name).await;
    assert!(obj.get("status").is_none(), "{obj:#}");
    judge("no_status", &obj, "Current", "Progressing");

    // The broker cannot be reached: the controller keeps retrying (Reconciling=True).
    broker.set_unreachable(true);
    let ctl = start_controller(client.clone(), &ns, connector.clone(), fast_config());
    let mb = wait_for_mb(&client, &ns, name, TIMEOUT, "Reconciling", |m| {
        condition_true(m, "Reconciling")
    })
    .await;
    let reconciling = condition(&mb, "Reconciling").expect("Reconciling").clone();
    let message = judge(
        "reconciling",
        &live(&client, &ns, name).await,
        "InProgress",
        "Progressing",
    );
    assert_eq!(
        message, reconciling.message,
        "kstatus passes our message on"
    );

    // The broker is back: Ready.
    broker.set_unreachable(false);
    wait_ready(&client, &ns, name, TIMEOUT).await;
    judge(
        "healthy",
        &live(&client, &ns, name).await,
        "Current",
        "Healthy",
    );

    // The spec changes while the controller is down: observedGeneration lags the generation.
    ctl.stop().await;
    apply_mb(&client, &ns, &manifest(name, "Retain", true, None)).await;
    let obj = live(&client, &ns, name).await;
    let (generation, observed) = generations(&obj);
    assert!(observed < Some(generation), "{obj:#}");
    let message = judge("generation_lag", &obj, "InProgress", "Progressing");
    assert!(message.contains("generation"), "{message}");

    // The controller catches up.
    let ctl = start_controller(client.clone(), &ns, connector.clone(), fast_config());
    wait_for_mb(
        &client,
        &ns,
        name,
        TIMEOUT,
        "Ready at the new generation",
        |m| {
            condition_true(m, "Ready")
                && m.status.as_ref().and_then(|s| s.observed_generation) == m.metadata.generation
        },
    )
    .await;
    judge(
        "healthy_after_update",
        &live(&client, &ns, name).await,
        "Current",
        "Healthy",
    );

    // A spec the operator refuses to act on: the credentials Secret does not exist.
    apply_mb(
        &client,
        &ns,
        &manifest(name, "Retain", true, Some("no-such-secret")),
    )
    .await;
    let mb = wait_for_mb(&client, &ns, name, TIMEOUT, "Stalled", |m| {
        condition_true(m, "Stalled")
    })
    .await;
    let stalled = condition(&mb, "Stalled").expect("Stalled").clone();
    assert_eq!(stalled.reason, "SecretNotFound");
    let message = judge(
        "stalled",
        &live(&client, &ns, name).await,
        "Failed",
        "Degraded",
    );
    assert_eq!(message, stalled.message, "kstatus passes our message on");

    // Deleting, with broker cleanup blocked (Delete policy, broker unreachable).
    apply_mb(&client, &ns, &manifest(name, "Delete", true, None)).await;
    wait_for_mb(&client, &ns, name, TIMEOUT, "Ready", |m| {
        condition_true(m, "Ready")
            && m.status.as_ref().and_then(|s| s.observed_generation) == m.metadata.generation
    })
    .await;
    broker.set_unreachable(true);
    let api: Api<MessageBroker> = Api::namespaced(client.clone(), &ns);
    api.delete(name, &DeleteParams::default())
        .await
        .expect("delete");
    wait_for_mb(&client, &ns, name, TIMEOUT, "blocked in deletion", |m| {
        condition(m, "Reconciling").is_some_and(|c| c.reason == "Deleting")
    })
    .await;
    judge(
        "deleting",
        &live(&client, &ns, name).await,
        "Terminating",
        "Progressing",
    );

    // Let it go, so the namespace is left clean.
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"annotations": {switchyard::controller::ABANDON_ANNOTATION: "true"}}})),
    )
    .await
    .expect("abandon annotation");
    wait_gone(
        &api,
        name,
        TIMEOUT,
        "still present after the abandon annotation",
    )
    .await;
    ctl.stop().await;
}

/// The recorded Argo CD cases, read by kstatus and by health.lua under gopher-lua: the Argo CD
/// verdict matches health_test.yaml, and kstatus agrees with it phase by phase.
#[test]
fn recorded_cases_read_the_same_under_gopher_lua_and_agree_with_kstatus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/argocd");
    let tests: serde_json::Value = serde_norway::from_str(
        &std::fs::read_to_string(dir.join("health_test.yaml")).expect("health_test.yaml"),
    )
    .expect("health_test.yaml parses");
    for t in tests["tests"].as_array().expect("tests") {
        let path = t["inputPath"].as_str().expect("inputPath");
        let obj: serde_json::Value =
            serde_norway::from_str(&std::fs::read_to_string(dir.join(path)).expect("testdata"))
                .expect("testdata parses");
        let go = go_checker(&obj);
        let want = (
            t["healthStatus"]["status"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            t["healthStatus"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        assert_eq!(go.argocd, want, "{path}: gopher-lua");
        // kstatus calls an object without any status Current (see the live test above).
        let kstatus_for = match (want.0.as_str(), obj.get("status").is_some()) {
            ("Healthy", _) | (_, false) => &["Current"][..],
            ("Degraded", _) => &["Failed"][..],
            _ => &["InProgress", "Terminating"][..],
        };
        assert!(
            kstatus_for.contains(&go.kstatus.0.as_str()),
            "{path}: kstatus said {:?}, Argo CD {want:?}",
            go.kstatus
        );
    }
}
