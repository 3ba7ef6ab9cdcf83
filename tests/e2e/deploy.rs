//! The ways Switchyard is deployed — the Helm chart, the kustomize tree, the samples — against
//! the real API server, and leader election between two in-process instances.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use serde::Deserialize;
use serde_json::Value;
use switchyard::brokers::fake::FakeConnector;
use switchyard::controller;
use switchyard::leader::{self, LeaseConfig};
use switchyard::metrics::Metrics;

use crate::support::*;

const TIMEOUT: Duration = Duration::from_secs(30);
pub(crate) const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/switchyard");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Run a command (optionally feeding stdin); fail the test with its output unless it succeeds.
async fn run(program: &str, args: &[&str], stdin: Option<&str>) -> String {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .current_dir(ROOT)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let mut pipe = child.stdin.take().expect("stdin piped");
    pipe.write_all(stdin.unwrap_or("").as_bytes())
        .await
        .expect("write stdin");
    drop(pipe);
    let out = child.wait_with_output().await.expect("command output");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

pub(crate) async fn helm(args: &[&str]) -> String {
    run(&env_var("SWITCHYARD_HELM"), args, None).await
}

pub(crate) async fn kubectl(args: &[&str], stdin: Option<&str>) -> String {
    run(&env_var("SWITCHYARD_KUBECTL"), args, stdin).await
}

/// The non-empty documents of a multi-document YAML stream.
pub(crate) fn documents(yaml: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).expect("valid YAML document"))
        .filter(|v| !v.is_null())
        .collect()
}

pub(crate) fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// The rules of config/rbac/role.yaml, the single source of truth for the operator's RBAC.
fn reference_rules() -> Value {
    let text = std::fs::read_to_string(format!("{ROOT}/config/rbac/role.yaml")).expect("role.yaml");
    documents(&text)[0]["rules"].clone()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{ROOT}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Create a namespace by name unless it exists.
async fn ensure_namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).expect("namespace");
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("namespace {name}: {e}"),
    }
}

/// A client for the admin kubeconfig that acts as `user` (API server impersonation), so a test
/// gets an identity nobody else's RBAC has touched.
async fn impersonating(user: &str) -> Client {
    let path = env_var("KUBECONFIG");
    let mut kc = kube::config::Kubeconfig::read_from(&path).expect("kubeconfig readable");
    for named in &mut kc.auth_infos {
        if let Some(info) = named.auth_info.as_mut() {
            info.impersonate = Some(user.to_string());
        }
    }
    let cfg = kube::config::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("kubeconfig valid");
    Client::try_from(cfg).expect("client")
}

fn bus_manifest(name: &str, topics: &[&str]) -> String {
    let topics = topics
        .iter()
        .map(|t| format!("    - name: {t}\n"))
        .collect::<String>();
    let header = mb_header(name);
    format!(
        r#"{header}spec:
  topics:
{topics}  envs:
    - slug: prd
      type: Kafka
      kafka: {{bootstrapServers: ["kafka.example:9092"]}}
"#
    )
}

// ---------------------------------------------------------------------------------------------
// Files that must stay in step with the generated CRD and the reference RBAC.

#[test]
fn crd_copies_match_the_generated_crd() {
    let generated = read("crds/switchyard.dev_messagebrokers.yaml");
    for copy in [
        "charts/switchyard/crds/switchyard.dev_messagebrokers.yaml",
        "config/crd/switchyard.dev_messagebrokers.yaml",
    ] {
        assert!(
            read(copy) == generated,
            "{copy} differs from crds/: run `make crds` and commit the result"
        );
    }
}

#[tokio::test]
async fn chart_lints_clean_and_its_rbac_equals_config_rbac() {
    helm(&["lint", "--strict", CHART]).await;
    helm(&["lint", "--strict", CHART, "--set", "watchNamespaces={shop}"]).await;

    // Cluster-wide (default): one ClusterRole with exactly the reference rules.
    let docs = documents(&helm(&["template", "sy", CHART, "-n", "ops"]).await);
    let roles = of_kind(&docs, "ClusterRole");
    assert_eq!(roles.len(), 1);
    assert_eq!(roles[0]["rules"], reference_rules());
    assert!(of_kind(&docs, "Role").is_empty());
    let binding = of_kind(&docs, "ClusterRoleBinding")[0];
    assert_eq!(
        binding["subjects"][0],
        serde_json::json!({"kind": "ServiceAccount", "name": "sy-switchyard", "namespace": "ops"})
    );

    // One watched namespace: nothing cluster-wide; the Roles together carry the same rules,
    // Secrets only in the watched namespace.
    let docs = rendered("watchNamespaces={shop}").await;
    assert!(of_kind(&docs, "ClusterRole").is_empty());
    assert!(of_kind(&docs, "ClusterRoleBinding").is_empty());
    let roles = of_kind(&docs, "Role");
    let mut union: Vec<Value> = Vec::new();
    for role in &roles {
        let rules = role["rules"].as_array().expect("rules").clone();
        let grants_secrets = rules.iter().any(|r| {
            r["resources"]
                .as_array()
                .is_some_and(|a| a.contains(&"secrets".into()))
        });
        if grants_secrets {
            assert_eq!(role["metadata"]["namespace"], "shop");
        }
        union.extend(rules);
    }
    let mut expected = reference_rules().as_array().expect("rules").clone();
    let key = |v: &Value| v.to_string();
    union.sort_by_key(key);
    expected.sort_by_key(key);
    assert_eq!(union, expected);
    let deployment = of_kind(&docs, "Deployment")[0];
    let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"].clone();
    assert!(
        args.as_array()
            .expect("args")
            .contains(&"--namespace=shop".into()),
        "{args}"
    );

    // Two watched namespaces: the Secret rules in a Role in each, and one --namespace each.
    let docs = rendered("watchNamespaces={a,b}").await;
    assert!(of_kind(&docs, "ClusterRole").is_empty());
    let mut with_secrets: Vec<&str> = of_kind(&docs, "Role")
        .into_iter()
        .filter(|role| role["rules"].to_string().contains("\"secrets\""))
        .map(|role| role["metadata"]["namespace"].as_str().expect("namespace"))
        .collect();
    with_secrets.sort();
    assert_eq!(with_secrets, ["a", "b"]);
    let args = of_kind(&docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
        .clone();
    for arg in ["--namespace=a", "--namespace=b"] {
        assert!(
            args.as_array().expect("args").contains(&arg.into()),
            "{args}"
        );
    }
}

/// The chart rendered into release namespace `ops` with one `--set`.
async fn rendered(set: &str) -> Vec<Value> {
    documents(&helm(&["template", "sy", CHART, "-n", "ops", "--set", set]).await)
}

/// What `kubectl auth can-i --list` says `user` may do in `ns`: resource → verbs.
async fn can_i_list(user: &str, ns: &str) -> BTreeMap<String, BTreeSet<String>> {
    let out = kubectl(
        &["auth", "can-i", "--list", "-n", ns, &format!("--as={user}")],
        None,
    )
    .await;
    let mut rules: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in out.lines().skip(1) {
        // Non-resource URL rows start with blanks; resource rows with the resource.
        if line.starts_with(' ') {
            continue;
        }
        let Some(resource) = line.split_whitespace().next() else {
            continue;
        };
        let verbs = line
            .rsplit_once('[')
            .and_then(|(_, v)| v.strip_suffix(']'))
            .unwrap_or_else(|| panic!("a verbs column in {line:?}"));
        rules
            .entry(resource.to_string())
            .or_default()
            .extend(verbs.split_whitespace().map(str::to_string));
    }
    rules
}

/// What `user` may do in `ns` beyond what every authenticated identity may.
async fn granted(user: &str, ns: &str, nobody: &str) -> BTreeMap<String, BTreeSet<String>> {
    let baseline = can_i_list(nobody, ns).await;
    let mut rules = can_i_list(user, ns).await;
    for (resource, verbs) in &mut rules {
        if let Some(base) = baseline.get(resource) {
            verbs.retain(|v| !base.contains(v));
        }
    }
    rules.retain(|_, verbs| !verbs.is_empty());
    rules
}

/// The rules README's Security section documents (MessageBrokers, Secrets, Events), with `more`.
fn operator_rules(more: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
    let mut all = rules(&[
        (
            "messagebrokers.switchyard.dev",
            &["get", "list", "watch", "patch", "update"],
        ),
        (
            "messagebrokers.switchyard.dev/status",
            &["get", "patch", "update"],
        ),
        ("messagebrokers.switchyard.dev/finalizers", &["update"]),
        (
            "secrets",
            &["get", "list", "watch", "create", "patch", "delete"],
        ),
        ("events.events.k8s.io", &["create", "patch"]),
    ]);
    all.extend(rules(more));
    all
}

fn rules(entries: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
    entries
        .iter()
        .map(|(r, verbs)| (r.to_string(), verbs.iter().map(|v| v.to_string()).collect()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Server-side dry runs.

#[tokio::test]
async fn rendered_chart_kustomize_and_samples_pass_server_side_dry_run() {
    let (client, ns) = setup("deploy-dry").await;
    let apply = [
        "apply",
        "--server-side",
        "--force-conflicts",
        "--dry-run=server",
        "-f",
        "-",
    ];

    let chart = helm(&["template", "sy", CHART, "-n", &ns, "--include-crds"]).await;
    kubectl(&apply, Some(&chart)).await;
    let namespaced = helm(&[
        "template",
        "sy",
        CHART,
        "-n",
        &ns,
        "--set",
        &format!("watchNamespaces={{{ns}}}"),
        "--set",
        "replicaCount=2",
    ])
    .await;
    kubectl(&apply, Some(&namespaced)).await;

    // config/default creates switchyard-system; a dry run cannot create it for the objects in it.
    ensure_namespace(&client, "switchyard-system").await;
    let default = kubectl(&["kustomize", &format!("{ROOT}/config/default")], None).await;
    let docs = documents(&default);
    for kind in [
        "CustomResourceDefinition",
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "Service",
    ] {
        assert_eq!(of_kind(&docs, kind).len(), 1, "config/default: one {kind}");
    }
    assert_eq!(of_kind(&docs, "ClusterRole")[0]["rules"], reference_rules());
    kubectl(&apply, Some(&default)).await;

    let samples = kubectl(&["kustomize", &format!("{ROOT}/config/samples")], None).await;
    assert_eq!(of_kind(&documents(&samples), "MessageBroker").len(), 6);
    kubectl(
        &[
            "apply",
            "--server-side",
            "--dry-run=server",
            "-n",
            &ns,
            "-f",
            "-",
        ],
        Some(&samples),
    )
    .await;
    let two_envs = read("config/samples/product-two-envs.yaml");
    kubectl(
        &[
            "apply",
            "--server-side",
            "--dry-run=server",
            "-n",
            &ns,
            "-f",
            "-",
        ],
        Some(&two_envs),
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// A real helm install.

#[tokio::test]
async fn helm_install_creates_a_hardened_deployment_and_the_reference_rbac() {
    let (client, ns) = setup("deploy-helm").await;
    let release = unique("sy");
    helm(&[
        "install",
        &release,
        CHART,
        "-n",
        &ns,
        "--set",
        "replicaCount=2",
    ])
    .await;
    let fullname = format!("{release}-switchyard");

    let deployment = Api::<Deployment>::namespaced(client.clone(), &ns)
        .get(&fullname)
        .await
        .expect("Deployment");
    let spec = deployment.spec;
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.expect("pod spec");
    assert_eq!(pod.service_account_name.as_deref(), Some(fullname.as_str()));
    let pod_sc = pod.security_context.expect("pod securityContext");
    assert_eq!(pod_sc.run_as_non_root, Some(true));
    assert_eq!(
        pod_sc.seccomp_profile.map(|p| p.type_).as_deref(),
        Some("RuntimeDefault")
    );
    let container = &pod.containers[0];
    let sc = container.security_context.clone().expect("securityContext");
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.and_then(|c| c.drop),
        Some(vec!["ALL".to_string()])
    );
    assert_eq!(
        sc.seccomp_profile.map(|p| p.type_).as_deref(),
        Some("RuntimeDefault")
    );
    let args = container.args.clone().unwrap_or_default();
    assert_eq!(args[0], "run");
    for expected in [
        "--leader-elect=true".to_string(),
        format!("--lease-namespace={ns}"),
        "--log-format=json".to_string(),
        "--resync=60s".to_string(),
    ] {
        assert!(args.contains(&expected), "{expected} missing from {args:?}");
    }
    let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
    };
    assert_eq!(
        probe_path(&container.liveness_probe).as_deref(),
        Some("/healthz")
    );
    assert_eq!(
        probe_path(&container.readiness_probe).as_deref(),
        Some("/readyz")
    );
    assert!(
        container
            .resources
            .as_ref()
            .is_some_and(|r| r.requests.is_some())
    );

    Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .get(&fullname)
        .await
        .expect("ServiceAccount");
    let role = Api::<ClusterRole>::all(client.clone())
        .get(&fullname)
        .await
        .expect("ClusterRole");
    assert_eq!(
        serde_json::to_value(role.rules).expect("rules"),
        reference_rules()
    );
    let binding = Api::<ClusterRoleBinding>::all(client.clone())
        .get(&fullname)
        .await
        .expect("ClusterRoleBinding");
    let subject = &binding.subjects.expect("subjects")[0];
    assert_eq!(
        (subject.name.as_str(), subject.namespace.as_deref()),
        (fullname.as_str(), Some(ns.as_str()))
    );
    let service = Api::<Service>::namespaced(client.clone(), &ns)
        .get(&format!("{fullname}-metrics"))
        .await
        .expect("metrics Service");
    let port = &service.spec.expect("spec").ports.expect("ports")[0];
    assert_eq!(port.port, 8080);

    // Cluster-wide, the ServiceAccount may do exactly the documented things in any namespace.
    let elsewhere = namespace(&client, "deploy-helm-any").await;
    assert_eq!(
        granted(
            &format!("system:serviceaccount:{ns}:{fullname}"),
            &elsewhere,
            &format!("system:serviceaccount:{ns}:nobody"),
        )
        .await,
        operator_rules(&[("leases.coordination.k8s.io", &["get", "create", "update"])])
    );

    helm(&["uninstall", &release, "-n", &ns]).await;
    assert!(
        Api::<ClusterRole>::all(client.clone())
            .get_opt(&fullname)
            .await
            .expect("get")
            .is_none(),
        "uninstall leaves the ClusterRole behind"
    );
}

// ---------------------------------------------------------------------------------------------
// The operator under the chart's RBAC.

/// Grant the chart's ServiceAccount (release `switchyard` in switchyard-system, whose token
/// SWITCHYARD_OPERATOR_KUBECONFIG holds) the chart's RBAC.
pub(crate) async fn apply_chart_rbac(client: &Client) {
    ensure_namespace(client, "switchyard-system").await;
    let rendered = helm(&[
        "template",
        "switchyard",
        CHART,
        "-n",
        "switchyard-system",
        "--set",
        "fullnameOverride=switchyard",
        "--show-only",
        "templates/serviceaccount.yaml",
        "--show-only",
        "templates/rbac.yaml",
    ])
    .await;
    kubectl(
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=switchyard-chart-tests",
            "-f",
            "-",
        ],
        Some(&rendered),
    )
    .await;
}

/// The identity of SWITCHYARD_OPERATOR_KUBECONFIG, granted by the chart rendered as release
/// `switchyard` in `switchyard-system`: the operator reconciles to Ready.
#[tokio::test]
async fn operator_reconciles_under_the_chart_rbac() {
    let admin = client().await;
    ensure_crd(&admin).await;
    apply_chart_rbac(&admin).await;

    let ns = namespace(&admin, "deploy-rbac").await;
    let operator = client_from(&env_var("SWITCHYARD_OPERATOR_KUBECONFIG")).await;
    let ctl = start_controller(
        operator,
        &ns,
        Arc::new(FakeConnector::default()),
        fast_config(),
    );
    apply_mb(&admin, &ns, &bus_manifest("bus", &["order-created"])).await;
    wait_ready(&admin, &ns, "bus", TIMEOUT).await;
    ctl.stop().await;
}

/// A chart installed with two watched namespaces grants a fresh ServiceAccount exactly the
/// operator's rules there (and the Lease rule in the release namespace), nothing elsewhere and
/// nothing cluster-wide, as `kubectl auth can-i` reports it; the operator, as that identity,
/// watches both namespaces and reconciles in each.
#[tokio::test]
async fn namespaced_install_reconciles_without_cluster_wide_secret_access() {
    let (admin, ops) = setup("deploy-ops").await;
    let apps = namespace(&admin, "deploy-apps").await;
    let billing = namespace(&admin, "deploy-billing").await;
    let other = namespace(&admin, "deploy-other").await;
    let release = unique("sy");
    helm(&[
        "install",
        &release,
        CHART,
        "-n",
        &ops,
        "--skip-crds",
        "--set",
        &format!("watchNamespaces={{{apps},{billing}}}"),
    ])
    .await;
    let sa = format!("{release}-switchyard");
    let user = format!("system:serviceaccount:{ops}:{sa}");
    let nobody = format!("system:serviceaccount:{ops}:nobody");

    // Exactly the documented rules, where they belong.
    let watched = operator_rules(&[]);
    for ns in [&apps, &billing] {
        assert_eq!(granted(&user, ns, &nobody).await, watched, "in {ns}");
    }
    assert_eq!(
        granted(&user, &ops, &nobody).await,
        rules(&[("leases.coordination.k8s.io", &["get", "create", "update"])]),
        "in the release namespace"
    );
    assert_eq!(
        granted(&user, &other, &nobody).await,
        rules(&[]),
        "in {other}"
    );
    let cluster_wide = tokio::process::Command::new(env_var("SWITCHYARD_KUBECTL"))
        .args(["auth", "can-i", "list", "secrets", "--all-namespaces"])
        .arg(format!("--as={user}"))
        .output()
        .await
        .expect("kubectl runs");
    assert_eq!(
        String::from_utf8_lossy(&cluster_wide.stdout).trim(),
        "no",
        "listing Secrets cluster-wide"
    );

    // The API server agrees: no Secret access outside the watched namespaces.
    let operator = impersonating(&user).await;
    for api in [
        Api::<Secret>::all(operator.clone()),
        Api::<Secret>::namespaced(operator.clone(), &other),
    ] {
        match api.list(&ListParams::default()).await {
            Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{s:?}"),
            other => {
                panic!("listing Secrets outside {apps} and {billing} must be forbidden: {other:?}")
            }
        }
    }

    // The operator, as that identity, leads through the chart's Lease Role and reconciles in
    // both namespaces.
    let metrics = Arc::new(Metrics::default());
    let lease = LeaseConfig::new(&ops, &sa, "pod-a", Duration::from_secs(3));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let work = controller::run(
        operator.clone(),
        vec![apps.clone(), billing.clone()],
        Arc::new(FakeConnector::default()),
        fast_config(),
        metrics.clone(),
        async {
            let _ = stopped.await;
        },
    );
    let m = metrics.clone();
    let task =
        tokio::spawn(async move { leader::run_when_leader(operator, lease, &m, work).await });
    for ns in [&apps, &billing] {
        apply_mb(&admin, ns, &bus_manifest("bus", &["order-created"])).await;
    }
    for ns in [&apps, &billing] {
        wait_ready(&admin, ns, "bus", TIMEOUT).await;
    }
    assert_eq!(metrics.leader.get(), 1);
    let _ = stop.send(());
    let result = tokio::time::timeout(TIMEOUT, task)
        .await
        .expect("stops")
        .expect("joins");
    assert!(result.is_ok(), "{result:?}");
    helm(&["uninstall", &release, "-n", &ops]).await;
}

// ---------------------------------------------------------------------------------------------
// Leader election.

struct Instance {
    metrics: Arc<Metrics>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<switchyard::Result<()>>,
}

fn start_instance(client: &Client, ns: &str, lease: LeaseConfig) -> Instance {
    let metrics = Arc::new(Metrics::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let work = controller::run(
        client.clone(),
        vec![ns.to_string()],
        Arc::new(FakeConnector::default()),
        fast_config(),
        metrics.clone(),
        async {
            let _ = stopped.await;
        },
    );
    let m = metrics.clone();
    let client = client.clone();
    let task = tokio::spawn(async move { leader::run_when_leader(client, lease, &m, work).await });
    Instance {
        metrics,
        stop,
        task,
    }
}

async fn holder(client: &Client, ns: &str, name: &str) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .expect("get Lease")
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty())
}

async fn wait_for_holder(client: &Client, ns: &str, name: &str, who: &str, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let now = holder(client, ns, name).await;
        if now.as_deref() == Some(who) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{who} does not hold the Lease within {timeout:?} (holder: {now:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two instances: only the Lease holder reconciles; when it is killed without releasing the
/// Lease, the other takes over within the lease duration (plus a margin) and reconciles; a
/// graceful stop releases the Lease.
#[tokio::test]
async fn one_of_two_instances_reconciles_and_the_other_takes_over() {
    let (client, ns) = setup("deploy-leader").await;
    let duration = Duration::from_secs(3);
    let lease = |who: &str| LeaseConfig::new(&ns, "switchyard", who, duration);

    let a = start_instance(&client, &ns, lease("a"));
    wait_for_holder(&client, &ns, "switchyard", "a", TIMEOUT).await;
    let b = start_instance(&client, &ns, lease("b"));
    apply_mb(&client, &ns, &bus_manifest("bus", &["order-created"])).await;
    wait_ready(&client, &ns, "bus", TIMEOUT).await;
    // Let the standby run a few renew periods: it must neither lead nor reconcile.
    tokio::time::sleep(duration).await;
    assert_eq!(
        holder(&client, &ns, "switchyard").await.as_deref(),
        Some("a")
    );
    assert_eq!(a.metrics.leader.get(), 1);
    assert!(a.metrics.reconciles.get() > 0);
    assert_eq!(b.metrics.leader.get(), 0);
    assert_eq!(b.metrics.reconciles.get(), 0, "the standby reconciled");

    // Kill the leader as SIGKILL would: no release.
    a.task.abort();
    let killed = tokio::time::Instant::now();
    wait_for_holder(&client, &ns, "switchyard", "b", duration * 3).await;
    let takeover = killed.elapsed();
    eprintln!("leader takeover after {takeover:?} (lease duration {duration:?})");
    assert!(
        takeover <= duration + Duration::from_secs(2),
        "takeover took {takeover:?}"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while b.metrics.leader.get() != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "metric leader not set on b"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The new leader reconciles a change.
    let changed = apply_mb(
        &client,
        &ns,
        &bus_manifest("bus", &["order-created", "order-paid"]),
    )
    .await;
    wait_for_mb(
        &client,
        &ns,
        "bus",
        TIMEOUT,
        "Ready at the new generation",
        |m| {
            condition_true(m, "Ready")
                && m.status.as_ref().and_then(|s| s.observed_generation)
                    == changed.metadata.generation
        },
    )
    .await;
    assert!(b.metrics.reconciles.get() > 0);

    // A graceful stop hands the Lease back at once.
    let _ = b.stop.send(());
    let result = tokio::time::timeout(TIMEOUT, b.task)
        .await
        .expect("b stops")
        .expect("b joins");
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(b.metrics.leader.get(), 0);
    assert_eq!(holder(&client, &ns, "switchyard").await, None);
    drop(a.stop);
}
