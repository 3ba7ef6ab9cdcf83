//! The API server the operator talks to: a private one started for the run (clean request
//! counts), or the shared one of KUBECONFIG. Request counts come from its /metrics.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client, CustomResourceExt};
use switchyard::api::MessageBroker;

use super::{Config, repo_dir};

/// The API server of a run.
pub struct ControlPlane {
    /// Started by this run (so nobody else's requests are counted).
    pub private: bool,
    /// Admin kubeconfig, handed to the operator.
    pub kubeconfig: PathBuf,
    /// Admin client.
    pub client: Client,
    run_dir: Option<PathBuf>,
}

/// A kube client for a kubeconfig file.
pub async fn client_for(path: &std::path::Path) -> Result<Client, String> {
    let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| e.to_string())?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .map_err(|e| e.to_string())?;
    Client::try_from(cfg).map_err(|e| e.to_string())
}

fn kube_sh(run_dir: &std::path::Path, action: &str) -> Result<(), String> {
    let status = Command::new("bash")
        .arg(repo_dir().join("tests/env/kube.sh"))
        .arg(action)
        .env("SWITCHYARD_RUN_DIR", run_dir)
        .status()
        .map_err(|e| format!("tests/env/kube.sh {action}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("tests/env/kube.sh {action} failed: {status}"))
    }
}

impl ControlPlane {
    /// Start a private API server (when configured), install the CRD.
    pub async fn start(config: &Config) -> Result<Self, String> {
        let (private, kubeconfig, run_dir) = if config.private_apiserver {
            let dir = std::env::temp_dir().join(format!("switchyard-bench-{}", std::process::id()));
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            eprintln!("bench: starting a private API server in {}", dir.display());
            if let Err(e) = kube_sh(&dir, "start") {
                let _ = kube_sh(&dir, "stop");
                return Err(e);
            }
            (true, dir.join("kubeconfig"), Some(dir))
        } else {
            let path = std::env::var("KUBECONFIG")
                .map_err(|_| "KUBECONFIG is not set: source target/testenv/env.sh".to_string())?;
            (false, PathBuf::from(path), None)
        };
        let plane = ControlPlane {
            private,
            client: client_for(&kubeconfig).await?,
            kubeconfig,
            run_dir,
        };
        install_crd(&plane.client).await?;
        Ok(plane)
    }

    /// Request counts so far, by (verb, resource[/subresource]).
    pub async fn requests(&self) -> Result<Requests, String> {
        let req = http::Request::get("/metrics")
            .body(Vec::new())
            .map_err(|e| e.to_string())?;
        let text = self
            .client
            .request_text(req)
            .await
            .map_err(|e| format!("GET /metrics on the API server: {e}"))?;
        Ok(Requests::parse(&text))
    }
}

impl ControlPlane {
    /// (name, pid) of the API server and etcd processes, for CPU accounting.
    pub fn processes(&self) -> Vec<(&'static str, Option<u32>)> {
        let dir = self
            .run_dir
            .clone()
            .unwrap_or_else(|| repo_dir().join("target/testenv"));
        ["kube-apiserver", "etcd"]
            .into_iter()
            .map(|name| (name, super::cpu::pid_file(&dir.join(format!("{name}.pid")))))
            .collect()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(dir) = self.run_dir.take() {
            let _ = kube_sh(&dir, "stop");
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

async fn install_crd(client: &Client) -> Result<(), String> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = MessageBroker::crd();
    let name = crd.metadata.name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply("switchyard-bench").force(),
        &Patch::Apply(&crd),
    )
    .await
    .map_err(|e| format!("installing the CRD: {e}"))?;
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(api, &name, conditions::is_crd_established()),
    )
    .await
    .map_err(|_| "the CRD was not established within 30s".to_string())?
    .map_err(|e| e.to_string())?;
    Ok(())
}

/// `apiserver_request_total` summed by (verb, resource[/subresource]).
#[derive(Clone, Debug, Default)]
pub struct Requests(pub BTreeMap<(String, String), f64>);

/// Resources the operator reads or writes (its requests, apart from the API server's own).
pub const OPERATOR_RESOURCES: [&str; 4] = [
    "messagebrokers",
    "messagebrokers/status",
    "secrets",
    "events",
];

/// Verbs that change something.
pub const WRITE_VERBS: [&str; 6] = [
    "POST",
    "PUT",
    "PATCH",
    "APPLY",
    "DELETE",
    "DELETECOLLECTION",
];

fn label<'a>(labels: &'a str, name: &str) -> &'a str {
    let key = format!("{name}=\"");
    labels
        .split(',')
        .find_map(|kv| kv.trim().strip_prefix(key.as_str()))
        .map(|v| v.trim_end_matches('"'))
        .unwrap_or("")
}

impl Requests {
    /// Parse the Prometheus text of the API server.
    pub fn parse(text: &str) -> Self {
        let mut out = BTreeMap::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
                continue;
            };
            let Some((labels, value)) = rest.rsplit_once("} ") else {
                continue;
            };
            let Ok(value) = value.trim().parse::<f64>() else {
                continue;
            };
            let verb = label(labels, "verb").to_string();
            let mut resource = label(labels, "resource").to_string();
            let sub = label(labels, "subresource");
            if !sub.is_empty() {
                resource = format!("{resource}/{sub}");
            }
            *out.entry((verb, resource)).or_insert(0.0) += value;
        }
        Requests(out)
    }

    /// `self - earlier`, leaving out zeros.
    pub fn since(&self, earlier: &Requests) -> Requests {
        Requests(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), v - earlier.0.get(k).copied().unwrap_or(0.0)))
                .filter(|(_, v)| *v > 0.0)
                .collect(),
        )
    }

    /// Subtract requests the harness itself made.
    pub fn minus(&self, own: &BTreeMap<(String, String), f64>) -> Requests {
        Requests(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), (v - own.get(k).copied().unwrap_or(0.0)).max(0.0)))
                .filter(|(_, v)| *v > 0.0)
                .collect(),
        )
    }

    /// Only the operator's resources.
    pub fn operator_resources(&self) -> Requests {
        Requests(
            self.0
                .iter()
                .filter(|((_, r), _)| OPERATOR_RESOURCES.contains(&r.as_str()))
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
        )
    }

    /// Sum of all counts.
    pub fn total(&self) -> f64 {
        // An empty f64 sum is -0.0; report 0.
        self.0.values().sum::<f64>() + 0.0
    }

    /// Sum of the writes.
    pub fn writes(&self) -> f64 {
        self.0
            .iter()
            .filter(|((v, _), _)| WRITE_VERBS.contains(&v.as_str()))
            .map(|(_, n)| n)
            .sum::<f64>()
            + 0.0
    }

    /// `{"VERB resource": n}` for JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.0
                .iter()
                .map(|((v, r), n)| (format!("{v} {r}"), serde_json::json!(*n as u64)))
                .collect(),
        )
    }
}
