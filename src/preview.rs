//! `switchyard plan` and `switchyard check`: what a manifest change will do to the brokers,
//! computed by the same desired/observe/plan steps the controller runs, before it is merged.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kube::{Api, Client};
use serde::Serialize;
use serde_json::Value;

use crate::api::{BrokerType, EnvSpec, EnvStatus, MessageBroker, MessageBrokerSpec};
use crate::brokers::plan::{Plan, PlanInput, plan};
use crate::brokers::{
    self, Action, Backend, BrokerError, BrokerErrorKind, Connector, DesiredState, ObjectKey, Scope,
};
use crate::error::Error;
use crate::secrets::{self, ResolvedSecrets};
use crate::validation;

/// One MessageBroker document from the input.
#[derive(Clone, Debug)]
pub struct Manifest {
    /// File (and document index) it came from.
    pub source: String,
    /// The document.
    pub value: Value,
}

impl Manifest {
    /// `(namespace, name)`, with `default_namespace` when the document names none.
    pub fn identity(&self, default_namespace: &str) -> (String, String) {
        let meta = self.value.get("metadata");
        let field = |k: &str| {
            meta.and_then(|x| x.get(k))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        (
            field("namespace").unwrap_or_else(|| default_namespace.to_string()),
            field("name").unwrap_or_default(),
        )
    }
}

/// Read MessageBroker documents from files and directories (multi-document YAML; other kinds
/// are skipped).
pub fn load(paths: &[PathBuf]) -> Result<Vec<Manifest>, Error> {
    let mut files = Vec::new();
    for p in paths {
        collect_files(p, &mut files)?;
    }
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| Error::Io(format!("{}: {e}", file.display())))?;
        for (i, doc) in serde_norway::Deserializer::from_str(&text).enumerate() {
            let value = <Value as serde::Deserialize>::deserialize(doc)
                .map_err(|e| Error::Io(format!("{} document {}: {e}", file.display(), i + 1)))?;
            let is_mb = value.get("kind").and_then(Value::as_str) == Some("MessageBroker")
                && value
                    .get("apiVersion")
                    .and_then(Value::as_str)
                    .is_some_and(|v| v.starts_with("switchyard.dev/"));
            if is_mb {
                out.push(Manifest {
                    source: format!("{}#{}", file.display(), i + 1),
                    value,
                });
            }
        }
    }
    Ok(out)
}

fn collect_files(p: &Path, out: &mut Vec<PathBuf>) -> Result<(), Error> {
    let meta = std::fs::metadata(p).map_err(|e| Error::Io(format!("{}: {e}", p.display())))?;
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
            .map_err(|e| Error::Io(format!("{}: {e}", p.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for e in entries {
            if e.is_dir() || e.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                collect_files(&e, out)?;
            }
        }
    } else {
        out.push(p.to_path_buf());
    }
    Ok(())
}

/// Where credentials come from.
pub enum SecretSource {
    /// Read the referenced Secrets from the cluster.
    Cluster(Client),
    /// `SWITCHYARD_SECRET_<SECRET>__<KEY>` environment variables.
    EnvVars,
}

/// Settings of a preview run.
pub struct Options {
    /// Env slugs to look at (all when empty).
    pub envs: BTreeSet<String>,
    /// Validate only.
    pub offline: bool,
    /// Namespace for manifests that name none.
    pub default_namespace: String,
    /// Credentials.
    pub secrets: SecretSource,
    /// A client to read live MessageBrokers (ownership and the serving broker), when reachable.
    pub live: Option<Client>,
    /// Builds broker clients.
    pub connector: Arc<dyn Connector>,
    /// Connectivity check timeout.
    pub timeout: Duration,
}

/// The preview of one MessageBroker.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BrokerReport {
    /// Input location.
    pub source: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Validation errors (the API server would refuse the manifest).
    pub errors: Vec<String>,
    /// Per env.
    pub envs: Vec<EnvReport>,
}

/// The preview of one env.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvReport {
    /// Slug.
    pub slug: String,
    /// Broker type in the manifest.
    #[serde(rename = "type")]
    pub broker_type: BrokerType,
    /// Broker type serving the env now, when it differs (a swap).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap_from: Option<BrokerType>,
    /// Connectivity failure (reason, message), as the Connected condition would say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Problem>,
    /// Changes on the env's broker.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<Plan>,
    /// Retirement of the old broker after a swap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retire: Option<Plan>,
    /// Remarks (ownership assumed without cluster access, ignored hints).
    pub notes: Vec<String>,
}

/// A reason and a message.
#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    /// Condition reason.
    pub reason: String,
    /// Message.
    pub message: String,
}

impl From<&BrokerError> for Problem {
    fn from(e: &BrokerError) -> Self {
        Problem {
            reason: crate::failure::broker_reason(e.kind).to_string(),
            message: e.message.clone(),
        }
    }
}

/// Everything a run found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// Per MessageBroker.
    pub brokers: Vec<BrokerReport>,
}

impl Report {
    /// 1 on any error or refused change, 2 when there are changes, 0 when there is nothing to do.
    pub fn exit_code(&self) -> u8 {
        let mut changes = false;
        for b in &self.brokers {
            if !b.errors.is_empty() {
                return 1;
            }
            for e in &b.envs {
                if e.error.is_some() {
                    return 1;
                }
                for p in e.plan.iter().chain(e.retire.iter()) {
                    if p.refused.iter().any(|r| !r.is_transient()) {
                        return 1;
                    }
                    changes |= !p.actions.is_empty();
                }
                changes |= e.swap_from.is_some();
            }
        }
        if changes { 2 } else { 0 }
    }

    /// A table for people.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        for b in &self.brokers {
            out.push_str(&format!(
                "MessageBroker {}/{}  ({})\n",
                b.namespace, b.name, b.source
            ));
            for e in &b.errors {
                out.push_str(&format!("  ✗ invalid: {e}\n"));
            }
            for env in &b.envs {
                let swap = env
                    .swap_from
                    .map(|f| format!("  swap {f} → {}", env.broker_type))
                    .unwrap_or_default();
                out.push_str(&format!("  env {} ({}){swap}\n", env.slug, env.broker_type));
                if let Some(p) = &env.error {
                    out.push_str(&format!("    ✗ {}: {}\n", p.reason, p.message));
                }
                if let Some(p) = &env.plan {
                    render_plan(&mut out, p);
                }
                if let Some(p) = &env.retire {
                    out.push_str("    after the binding flips, on the old broker:\n");
                    render_plan(&mut out, p);
                }
                for n in &env.notes {
                    out.push_str(&format!("    note: {n}\n"));
                }
            }
        }
        let summary = match self.exit_code() {
            0 => "nothing to do",
            2 => "changes pending",
            _ => "errors or refused changes",
        };
        out.push_str(&format!("{summary}\n"));
        out
    }
}

fn render_plan(out: &mut String, p: &Plan) {
    if p.is_noop() && p.retained.is_empty() {
        out.push_str("    = no changes\n");
    }
    for a in &p.actions {
        let line = match a {
            Action::Create { object } => format!(
                "+ create  {}{}",
                object.key,
                settings(&object.partitions, &object.config)
            ),
            Action::Adopt { object } => format!("+ adopt   {}", object.key),
            Action::Update { object, changes } => format!(
                "~ update  {}  {}",
                object.key,
                changes
                    .iter()
                    .map(|c| format!(
                        "{}: {} → {}",
                        c.key,
                        c.before.as_deref().unwrap_or("unset"),
                        c.after
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Action::AddPartitions { object, from, to } => {
                format!("~ grow    {}  partitions: {from} → {to}", object.key)
            }
            Action::Delete { key } => format!("- delete  {key}"),
        };
        out.push_str(&format!("    {line}\n"));
    }
    for r in &p.refused {
        out.push_str(&format!(
            "    ! refused {}  {}: {}\n",
            r.key,
            crate::failure::refusal_reason(r.kind),
            r.message
        ));
    }
    for k in &p.retained {
        out.push_str(&format!("    = retain  {k}\n"));
    }
}

fn settings(partitions: &Option<i32>, config: &BTreeMap<String, String>) -> String {
    let mut parts: Vec<String> = partitions
        .iter()
        .map(|p| format!("partitions={p}"))
        .collect();
    parts.extend(config.iter().map(|(k, v)| format!("{k}={v}")));
    if parts.is_empty() {
        String::new()
    } else {
        format!("  {}", parts.join(" "))
    }
}

/// Validate (and unless offline, connect and plan) every manifest.
pub async fn plan_all(manifests: &[Manifest], opts: &Options) -> Report {
    let mut report = Report::default();
    for m in manifests {
        report.brokers.push(plan_one(m, opts).await);
    }
    report
}

async fn plan_one(m: &Manifest, opts: &Options) -> BrokerReport {
    let (namespace, name) = m.identity(&opts.default_namespace);
    let mut report = BrokerReport {
        source: m.source.clone(),
        namespace,
        name,
        errors: validation::validate(&m.value),
        envs: vec![],
    };
    if !report.errors.is_empty() {
        return report;
    }
    let spec: MessageBrokerSpec = match m.value.get("spec").cloned().map(serde_json::from_value) {
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            report.errors.push(format!("spec: {e}"));
            return report;
        }
        None => {
            report.errors.push("spec: Required value".into());
            return report;
        }
    };
    if let Err(e) = crate::controller::validate(&spec) {
        report.errors.push(e);
        return report;
    }
    if opts.offline {
        return report;
    }
    let scope = Scope::new(report.namespace.clone(), report.name.clone());
    let live = live_status(opts, &scope).await;
    for env in spec
        .envs
        .iter()
        .filter(|e| opts.envs.is_empty() || opts.envs.contains(&e.slug))
    {
        let prev = live
            .as_ref()
            .and_then(|s| s.iter().find(|x| x.slug == env.slug));
        report
            .envs
            .push(plan_env(opts, &scope, &spec, env, prev, live.is_some()).await);
    }
    report
}

async fn live_status(opts: &Options, scope: &Scope) -> Option<Vec<EnvStatus>> {
    let client = opts.live.as_ref()?;
    let api: Api<MessageBroker> = Api::namespaced(client.clone(), &scope.namespace);
    let mb = api.get_opt(&scope.name).await.ok()??;
    Some(mb.status.map(|s| s.envs).unwrap_or_default())
}

async fn resolve(
    opts: &Options,
    namespace: &str,
    env: &EnvSpec,
) -> Result<ResolvedSecrets, Problem> {
    match &opts.secrets {
        SecretSource::EnvVars => Ok(secrets::from_env_vars(env)),
        SecretSource::Cluster(client) => {
            secrets::resolve(client, namespace, env)
                .await
                .map_err(|e| Problem {
                    reason: crate::api::conditions::reasons::SECRET_NOT_FOUND.into(),
                    message: e.to_string(),
                })
        }
    }
}

async fn connect_and_check(
    opts: &Options,
    namespace: &str,
    env: &EnvSpec,
) -> Result<Arc<dyn Backend>, Problem> {
    let secrets = resolve(opts, namespace, env).await?;
    let backend = opts
        .connector
        .connect(env, &secrets)
        .await
        .map_err(|e| Problem::from(&e))?;
    match tokio::time::timeout(opts.timeout, backend.check()).await {
        Ok(Ok(())) => Ok(backend),
        Ok(Err(e)) => Err(Problem::from(&e)),
        Err(_) => Err(Problem::from(&BrokerError::new(
            BrokerErrorKind::Timeout,
            format!("no answer within {:?}", opts.timeout),
        ))),
    }
}

async fn plan_env(
    opts: &Options,
    scope: &Scope,
    spec: &MessageBrokerSpec,
    env: &EnvSpec,
    prev: Option<&EnvStatus>,
    cluster_known: bool,
) -> EnvReport {
    let mut report = EnvReport {
        slug: env.slug.clone(),
        broker_type: env.broker_type,
        swap_from: None,
        error: None,
        plan: None,
        retire: None,
        notes: vec![],
    };
    let active: Option<EnvSpec> = prev
        .and_then(|p| p.active.clone())
        .and_then(|v| serde_json::from_value(v).ok());
    let swapping = active.as_ref().is_some_and(|a| {
        crate::controller::endpoint_identity(a) != crate::controller::endpoint_identity(env)
    });
    if swapping {
        report.swap_from = active.as_ref().map(|a| a.broker_type);
    }
    let backend = match connect_and_check(opts, &scope.namespace, env).await {
        Ok(b) => b,
        Err(p) => {
            report.error = Some(p);
            return report;
        }
    };
    let owned: Option<BTreeSet<ObjectKey>> = prev
        .filter(|_| !swapping)
        .map(|p| p.owned.iter().filter_map(|k| ObjectKey::parse(k)).collect());
    let desired =
        match brokers::desired(scope, env, &spec.topics, &owned.clone().unwrap_or_default()) {
            Ok(d) => d,
            Err(e) => {
                report.error = Some(Problem {
                    reason: crate::api::conditions::reasons::INVALID_SPEC.into(),
                    message: e.to_string(),
                });
                return report;
            }
        };
    report.notes.extend(desired.notes.iter().cloned());
    match plan_against(backend.as_ref(), scope, spec, env, &desired, owned).await {
        Ok((p, assumed)) => {
            if assumed && !cluster_known {
                report.notes.push("no live MessageBroker found: existing objects with the derived names are assumed to be this resource's".into());
            }
            report.plan = Some(p);
        }
        Err(e) => report.error = Some(Problem::from(&e)),
    }
    if swapping && let (Some(old), Some(prev)) = (active, prev) {
        let owned: BTreeSet<ObjectKey> = prev
            .owned
            .iter()
            .filter_map(|k| ObjectKey::parse(k))
            .collect();
        match connect_and_check(opts, &scope.namespace, &old).await {
            Ok(old_backend) => {
                match plan_against(
                    old_backend.as_ref(),
                    scope,
                    spec,
                    &old,
                    &DesiredState::default(),
                    Some(owned),
                )
                .await
                {
                    Ok((p, _)) => report.retire = Some(p),
                    Err(e) => report.notes.push(format!("old broker: {e}")),
                }
            }
            Err(p) => report
                .notes
                .push(format!("old broker: {}: {}", p.reason, p.message)),
        }
    }
    report
}

/// Observe and plan read-only. Without a known owned set, desired objects that exist are
/// taken as owned (returns `true` when that assumption was made).
async fn plan_against(
    backend: &dyn Backend,
    scope: &Scope,
    spec: &MessageBrokerSpec,
    env: &EnvSpec,
    desired: &DesiredState,
    owned: Option<BTreeSet<ObjectKey>>,
) -> Result<(Plan, bool), BrokerError> {
    let mut keys: BTreeSet<ObjectKey> = desired.objects.iter().map(|o| o.key.clone()).collect();
    if let Some(o) = &owned {
        keys.extend(o.iter().cloned());
    }
    let keys: Vec<ObjectKey> = keys.into_iter().collect();
    let observed = backend.observe(scope, &keys).await?;
    let assumed = owned.is_none();
    let owned = owned.unwrap_or_else(|| {
        desired
            .objects
            .iter()
            .filter(|o| {
                observed
                    .objects
                    .get(&o.key)
                    .is_some_and(|x| x.owner.as_ref().is_none_or(|owner| *owner == scope.owner()))
            })
            .map(|o| o.key.clone())
            .collect()
    });
    let input = PlanInput {
        scope,
        owned: &owned,
        deletion_policy: spec.deletion_policy,
        adopt_existing: env.adopt_existing,
        capabilities: brokers::capabilities(env.broker_type),
    };
    Ok((plan(desired, &observed, &input), assumed))
}

/// The result of `switchyard check` for one env.
#[derive(Clone, Debug, Serialize)]
pub struct CheckResult {
    /// MessageBroker `namespace/name`.
    pub broker: String,
    /// Env slug.
    pub slug: String,
    /// Broker type.
    #[serde(rename = "type")]
    pub broker_type: BrokerType,
    /// `Connected`, or the failure reason.
    pub reason: String,
    /// Details.
    pub message: String,
}

/// Connectivity and permission check per env, with the controller's Connected reasons.
pub async fn check_all(manifests: &[Manifest], opts: &Options) -> Vec<CheckResult> {
    let mut out = Vec::new();
    for m in manifests {
        let (namespace, name) = m.identity(&opts.default_namespace);
        let Some(spec) = m
            .value
            .get("spec")
            .cloned()
            .and_then(|v| serde_json::from_value::<MessageBrokerSpec>(v).ok())
        else {
            out.push(CheckResult {
                broker: format!("{namespace}/{name}"),
                slug: String::new(),
                broker_type: BrokerType::Kafka,
                reason: crate::api::conditions::reasons::INVALID_SPEC.into(),
                message: validation::validate(&m.value).join("; "),
            });
            continue;
        };
        for env in spec
            .envs
            .iter()
            .filter(|e| opts.envs.is_empty() || opts.envs.contains(&e.slug))
        {
            let (reason, message) = match connect_and_check(opts, &namespace, env).await {
                Ok(_) => (
                    crate::api::conditions::reasons::CONNECTED.to_string(),
                    "broker answered".to_string(),
                ),
                Err(p) => (p.reason, p.message),
            };
            out.push(CheckResult {
                broker: format!("{namespace}/{name}"),
                slug: env.slug.clone(),
                broker_type: env.broker_type,
                reason,
                message,
            });
        }
    }
    out
}
