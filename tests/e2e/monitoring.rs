//! The chart's alerts and dashboard: promtool checks the rule file the chart ships and runs its
//! unit tests, the chart renders the PrometheusRule and the dashboard ConfigMap only when asked,
//! and every `switchyard_*` metric they query is one the real operator binary exports on
//! /metrics while it provisions real Redis and Kafka (and fails to reach a Redis that is not
//! there).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use switchyard::client::{Binding, Client, Message};

use crate::support::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/switchyard");
const RULES: &str = "charts/switchyard/rules/switchyard.rules.yaml";
const DASHBOARD: &str = "charts/switchyard/dashboards/switchyard.json";
const ALERT_TESTS: &str = "tests/prometheus/alerts_test.yaml";
const TIMEOUT: Duration = Duration::from_secs(60);

/// What a finished command said.
struct Output {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn exec(program: &str, args: &[&str]) -> Output {
    let out = std::process::Command::new(program)
        .args(args)
        .current_dir(ROOT)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    Output {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Run a command; fail the test with its output unless it succeeds.
fn run(program: &str, args: &[&str]) -> String {
    let out = exec(program, args);
    assert!(
        out.ok,
        "{program} {args:?} failed:\n{}\n{}",
        out.stdout, out.stderr
    );
    out.stdout
}

/// promtool from tests/env/promtool.sh. Missing fails the test, never skips it.
fn promtool() -> String {
    let path = env_var("SWITCHYARD_PROMTOOL");
    assert!(
        std::path::Path::new(&path).is_file(),
        "SWITCHYARD_PROMTOOL={path} does not exist: run `bash tests/env/up.sh promtool`"
    );
    path
}

fn helm(args: &[&str]) -> String {
    run(&env_var("SWITCHYARD_HELM"), args)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{ROOT}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(text: &str) -> Value {
    serde_norway::from_str(text).expect("valid YAML")
}

/// The non-empty documents of a multi-document YAML stream.
fn documents(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).expect("valid YAML document"))
        .filter(|v| !v.is_null())
        .collect()
}

/// The rule file's rules, each group's flattened.
fn rules(file: &Value) -> Vec<&Value> {
    file["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules"))
        .collect()
}

fn alert_names(file: &Value) -> BTreeSet<String> {
    rules(file)
        .iter()
        .filter_map(|r| r["alert"].as_str().map(String::from))
        .collect()
}

#[test]
fn promtool_checks_the_chart_rules_and_passes_their_unit_tests() {
    let promtool = promtool();
    let file = yaml(&read(RULES));
    let count = rules(&file).len();
    assert!(count >= 4, "the rule file has {count} rules");
    let out = run(&promtool, &["check", "rules", RULES]);
    assert!(
        out.contains(&format!("SUCCESS: {count} rules found")),
        "promtool check rules: {out}"
    );
    let out = run(&promtool, &["test", "rules", ALERT_TESTS]);
    assert!(out.contains("SUCCESS"), "promtool test rules: {out}");

    // Each alert is shown firing by at least one unit test, so none ships untested.
    let tests = yaml(&read(ALERT_TESTS));
    let fired: BTreeSet<String> = tests["tests"]
        .as_array()
        .expect("tests")
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().into_iter().flatten())
        .filter(|a| a["exp_alerts"].as_array().is_some_and(|e| !e.is_empty()))
        .map(|a| a["alertname"].as_str().expect("alertname").to_string())
        .collect();
    assert_eq!(fired, alert_names(&file), "alerts without a firing test");
}

#[test]
fn every_dashboard_query_is_valid_promql() {
    let promtool = promtool();
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).expect("dashboard JSON");
    let mut exprs = Vec::new();
    strings_at(&dashboard["panels"], "expr", &mut exprs);
    assert!(exprs.len() >= 10, "{} queries", exprs.len());
    // Grafana's variables as Grafana would fill them in; then each query as a recording rule,
    // which promtool parses.
    let rules: Vec<Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let e = e
                .replace("$__rate_interval", "2m")
                .replace("$namespace", ".*")
                .replace("$messagebroker", ".*")
                .replace("$env", ".*");
            assert!(
                !e.contains('$'),
                "a variable the test does not fill in: {e}"
            );
            serde_json::json!({"record": format!("switchyard:dashboard_query_{i}"), "expr": e})
        })
        .collect();
    let file = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    let path = std::env::temp_dir().join(format!("{}.rules.yaml", unique("monitoring-dashboard")));
    std::fs::write(&path, serde_norway::to_string(&file).expect("YAML")).expect("write");
    let out = exec(
        &promtool,
        &["check", "rules", path.to_str().expect("utf-8 path")],
    );
    let _ = std::fs::remove_file(&path);
    assert!(
        out.ok
            && out
                .stdout
                .contains(&format!("SUCCESS: {} rules found", exprs.len())),
        "dashboard queries:\n{}\n{}",
        out.stdout,
        out.stderr
    );
}

/// The chart rendered as release `sy` in namespace `ops` with extra `--set`s.
fn render(sets: &[&str]) -> Vec<Value> {
    let mut args = vec!["template", "sy", CHART, "-n", "ops"];
    for s in sets {
        args.extend(["--set", s]);
    }
    documents(&helm(&args))
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn dashboards(docs: &[Value]) -> Vec<&Value> {
    of_kind(docs, "ConfigMap")
        .into_iter()
        .filter(|c| c["data"]["switchyard.json"].is_string())
        .collect()
}

#[test]
fn the_chart_renders_the_alerts_and_the_dashboard_only_when_enabled() {
    let promtool = promtool();
    let docs = render(&[]);
    assert!(
        of_kind(&docs, "PrometheusRule").is_empty(),
        "PrometheusRule by default"
    );
    assert!(dashboards(&docs).is_empty(), "dashboard by default");

    let on = [
        "metrics.prometheusRule.enabled=true",
        "metrics.prometheusRule.labels.release=kube-prometheus-stack",
        "metrics.prometheusRule.for.SwitchyardSubscriptionBacklogGrowing=30m",
        "metrics.dashboard.enabled=true",
    ];
    helm(&["lint", "--strict", CHART]);
    let mut lint = vec!["lint", "--strict", CHART];
    for s in &on {
        lint.extend(["--set", s]);
    }
    helm(&lint);
    let docs = render(&on);

    // The PrometheusRule: the rule file's groups as they are, but for the overridden `for:`.
    let rule = of_kind(&docs, "PrometheusRule");
    assert_eq!(rule.len(), 1, "one PrometheusRule");
    let rule = rule[0];
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["metadata"]["name"], "sy-switchyard");
    assert_eq!(rule["metadata"]["namespace"], "ops");
    let labels = &rule["metadata"]["labels"];
    assert_eq!(labels["release"], "kube-prometheus-stack", "{labels}");
    assert_eq!(labels["app.kubernetes.io/name"], "switchyard", "{labels}");
    let mut expected = yaml(&read(RULES));
    let mut overridden = 0;
    for group in expected["groups"].as_array_mut().expect("groups") {
        for r in group["rules"].as_array_mut().expect("rules") {
            if r["alert"] == "SwitchyardSubscriptionBacklogGrowing" {
                r["for"] = "30m".into();
                overridden += 1;
            }
        }
    }
    assert_eq!(overridden, 1, "the backlog alert is in the rule file");
    assert_eq!(
        rule["spec"], expected,
        "rendered rules differ from the rule file"
    );
    let spec = serde_json::to_string(&rule["spec"]).expect("spec");
    assert!(
        spec.contains("{{ $labels.subscription }}"),
        "annotations reach Prometheus untemplated: {spec}"
    );
    // What Prometheus gets is still a valid rule file.
    let rendered =
        std::env::temp_dir().join(format!("{}.rules.yaml", unique("monitoring-rendered")));
    std::fs::write(
        &rendered,
        serde_norway::to_string(&rule["spec"]).expect("YAML"),
    )
    .expect("write rendered rules");
    run(
        &promtool,
        &["check", "rules", rendered.to_str().expect("utf-8 path")],
    );
    let _ = std::fs::remove_file(&rendered);

    // The dashboard ConfigMap, labelled for Grafana's sidecar, holding the dashboard file.
    let cms = dashboards(&docs);
    assert_eq!(cms.len(), 1, "one dashboard ConfigMap");
    let cm = cms[0];
    assert_eq!(cm["metadata"]["name"], "sy-switchyard-dashboard");
    assert_eq!(cm["metadata"]["namespace"], "ops");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let shipped: Value =
        serde_json::from_str(cm["data"]["switchyard.json"].as_str().expect("string"))
            .expect("the dashboard is JSON");
    let file: Value = serde_json::from_str(&read(DASHBOARD)).expect("dashboard file is JSON");
    assert_eq!(shipped, file, "the ConfigMap holds the dashboard file");

    // The sidecar's label and namespace are the values'.
    let docs = render(&[
        "metrics.dashboard.enabled=true",
        "metrics.dashboard.labelKey=dashboards",
        "metrics.dashboard.labelValue=switchyard",
        "metrics.dashboard.namespace=monitoring",
        "metrics.dashboard.annotations.grafana_folder=Messaging",
    ]);
    let cm = dashboards(&docs)[0];
    assert_eq!(cm["metadata"]["namespace"], "monitoring");
    assert_eq!(cm["metadata"]["labels"]["dashboards"], "switchyard");
    assert!(cm["metadata"]["labels"]["grafana_dashboard"].is_null());
    assert_eq!(cm["metadata"]["annotations"]["grafana_folder"], "Messaging");

    // The schema refuses an alert it does not know and a malformed duration.
    let helm_bin = env_var("SWITCHYARD_HELM");
    for bad in [
        "metrics.prometheusRule.for.SwitchyardNoSuchAlert=5m",
        "metrics.prometheusRule.for.SwitchyardDeadLetters=soon",
    ] {
        let out = exec(&helm_bin, &["template", "sy", CHART, "--set", bad]);
        assert!(!out.ok, "{bad} accepted:\n{}", out.stdout);
        assert!(
            out.stderr.contains("values don't meet the specifications")
                && out.stderr.contains("/metrics/prometheusRule/for"),
            "{bad}: {}",
            out.stderr
        );
    }
}

/// Every string under `v` at a key named `key`.
fn strings_at<'a>(v: &'a Value, key: &str, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match x {
                    Value::String(s) if k == key => out.push(s),
                    _ => strings_at(x, key, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| strings_at(x, key, out)),
        _ => {}
    }
}

/// The `switchyard_*` names in PromQL expressions.
fn metric_names<'a>(exprs: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    let re = regex::Regex::new(r"\bswitchyard_[a-zA-Z0-9_]+").expect("regex");
    exprs
        .into_iter()
        .flat_map(|e| re.find_iter(e).map(|m| m.as_str().to_string()))
        .collect()
}

/// Families of the exposition text by their `# TYPE` lines: name → type.
fn families(text: &str) -> BTreeMap<&str, &str> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .collect()
}

/// Whether the stored series name `name` comes from an exported family, as Prometheus names
/// samples: a counter `X` is stored as `X_total`, a histogram `X` as `X_bucket`, `X_sum` and
/// `X_count`, a gauge as `X`.
fn exported(families: &BTreeMap<&str, &str>, name: &str) -> bool {
    if matches!(families.get(name), Some(&"gauge" | &"unknown")) {
        return true;
    }
    [
        ("_total", "counter"),
        ("_bucket", "histogram"),
        ("_sum", "histogram"),
        ("_count", "histogram"),
    ]
    .iter()
    .any(|(suffix, kind)| {
        name.strip_suffix(suffix)
            .and_then(|base| families.get(base))
            == Some(kind)
    })
}

/// The sample lines of series `name` (not of longer names sharing its prefix).
fn samples<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .collect()
}

fn value(line: &str) -> Option<f64> {
    line.rsplit(' ').next()?.parse().ok()
}

/// The real `switchyard run` binary watching one namespace, its /metrics on a free port.
struct Operator {
    child: tokio::process::Child,
    metrics_url: String,
    log: std::path::PathBuf,
}

impl Operator {
    async fn start(namespace: &str) -> Self {
        // SWITCHYARD_BIN as `make test` sets it, else the binary cargo built for this run.
        let bin = std::env::var("SWITCHYARD_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_switchyard").to_string());
        let port = free_port();
        let log = std::env::temp_dir().join(format!("{}.log", unique("monitoring-operator")));
        let out = std::fs::File::create(&log).expect("operator log");
        let err = out.try_clone().expect("operator log");
        let child = tokio::process::Command::new(&bin)
            .args(["run", "--namespace", namespace, "--resync", "2s"])
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .args(["--log-format", "text", "--log-level", "info"])
            .env("KUBECONFIG", env_var("KUBECONFIG"))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
        let mut op = Operator {
            child,
            metrics_url: format!("http://127.0.0.1:{port}/metrics"),
            log,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while op.scrape().await.is_none() {
            if let Ok(Some(status)) = op.child.try_wait() {
                panic!("the operator exited with {status}:\n{}", op.log_tail());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "/metrics did not answer within 30s:\n{}",
                op.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        op
    }

    async fn scrape(&self) -> Option<String> {
        let response = reqwest::get(&self.metrics_url).await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.text().await.ok()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

#[tokio::test]
async fn every_metric_the_alerts_and_dashboard_query_is_exported_by_the_operator() {
    let rule_file = yaml(&read(RULES));
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).expect("dashboard JSON");
    let mut exprs = Vec::new();
    strings_at(&rule_file, "expr", &mut exprs);
    let from_rules = metric_names(exprs);
    let mut exprs = Vec::new();
    strings_at(&dashboard["panels"], "expr", &mut exprs);
    // Template variables query too (label_values(switchyard_…)).
    strings_at(&dashboard["templating"], "query", &mut exprs);
    let from_dashboard = metric_names(exprs);
    assert!(
        from_rules.len() >= 4 && from_dashboard.len() >= 10,
        "{from_rules:?} {from_dashboard:?}"
    );
    let used: BTreeSet<String> = from_rules.union(&from_dashboard).cloned().collect();

    // The real operator provisions `bus` on the real Redis, where 5 messages wait unread on
    // both subscriptions; `stream` on the real Kafka, the backend that counts its requests; and
    // `down` on a Redis address where nothing listens, whose reconciles fail.
    let (kube, ns) = setup("monitoring").await;
    let op = Operator::start(&ns).await;
    let topics = "  topics:\n    - name: orders\n      subscriptions:\n        - {name: billing, deadLetter: {maxDeliveryAttempts: 5}}\n        - {name: shipping}\n";
    let redis = format!(
        "{{slug: prd, type: Redis, redis: {{url: \"{}\"}}}}",
        env_var("SWITCHYARD_REDIS_URL")
    );
    let closed = free_port();
    let nowhere =
        format!("{{slug: prd, type: Redis, redis: {{url: \"redis://127.0.0.1:{closed}/0\"}}}}");
    for (name, policy, env) in [
        // Retain: Delete would wait for its unread messages (it never deletes a stream holding
        // any), and for the broker that is not there.
        ("bus", "Retain", redis),
        ("stream", "Delete", kafka_env()),
        ("down", "Retain", nowhere),
    ] {
        let manifest = format!(
            "{}spec:\n  deletionPolicy: {policy}\n{topics}  envs:\n    - {env}\n",
            mb_header(name)
        );
        apply_mb(&kube, &ns, &manifest).await;
    }
    wait_ready(&kube, &ns, "bus", TIMEOUT).await;
    let binding = Binding::from_secret(&kube, &ns, "bus-prd")
        .await
        .expect("binding Secret");
    let client = Client::new(binding).await.expect("client");
    let publisher = client.publisher("orders");
    for i in 0..5 {
        publisher
            .publish(Message::new(format!("order {i}").into_bytes()))
            .await
            .expect("publish");
    }

    let of = |line: &str, mb: &str| {
        line.contains(&format!("namespace=\"{ns}\""))
            && line.contains(&format!("messagebroker=\"{mb}\""))
    };
    let ours = |line: &str| of(line, "bus");
    let sub = |line: &str, s: &str| {
        ours(line)
            && line.contains("topic=\"orders\"")
            && line.contains(&format!("subscription=\"{s}\""))
    };
    let one = |text: &str, name: &str, check: &dyn Fn(&str) -> bool| -> Option<f64> {
        samples(text, name)
            .into_iter()
            .find(|l| check(l))
            .and_then(value)
    };
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        if let Some(t) = op.scrape().await {
            text = t;
        }
        let settled = one(&text, "switchyard_subscription_backlog_messages", &|l| {
            sub(l, "shipping")
        }) == Some(5.0)
            && one(&text, "switchyard_subscription_backlog_messages", &|l| {
                sub(l, "billing")
            }) == Some(5.0)
            && one(&text, "switchyard_deadletter_messages", &|l| {
                sub(l, "billing")
            }) == Some(0.0)
            && one(&text, "switchyard_env_ready", &|l| {
                ours(l) && l.contains("env=\"prd\"")
            }) == Some(1.0)
            && one(&text, "switchyard_env_connected", &|l| {
                ours(l) && l.contains("backend=\"Redis\"")
            }) == Some(1.0)
            && one(&text, "switchyard_env_connected", &|l| of(l, "down")) == Some(0.0)
            && one(&text, "switchyard_messagebroker_ready", &ours) == Some(1.0)
            && one(&text, "switchyard_messagebroker_ready", &|l| of(l, "down")) == Some(0.0)
            && one(&text, "switchyard_messagebroker_stalled", &ours) == Some(0.0)
            && one(&text, "switchyard_reconciles_total", &|_| true).is_some_and(|n| n > 0.0)
            && one(&text, "switchyard_reconcile_errors_total", &|l| {
                l.contains("category=\"broker\"")
            })
            .is_some_and(|n| n > 0.0)
            && one(&text, "switchyard_broker_requests_total", &|l| {
                l.contains("backend=\"Kafka\"")
            })
            .is_some_and(|n| n > 0.0);
        if settled {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the scrape never showed the scenario's figures within {TIMEOUT:?}:\n{text}\noperator log:\n{}",
            op.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The exposition leaves out a labelled family until it has a series, so a name no backend
    // reports yet has no `# TYPE` line either. switchyard_subscription_oldest_unacked_seconds is
    // one (being added for Redis in parallel): while it has no sample it must at least be the
    // name src/metrics.rs registers; once samples appear they are held to everything below.
    let not_reported_yet = ["switchyard_subscription_oldest_unacked_seconds"];
    let source = read("src/metrics.rs");
    assert!(source.contains("sub_registry_with_prefix(\"switchyard\")"));
    for name in not_reported_yet {
        let registered = name.strip_prefix("switchyard_").expect("prefix");
        assert!(
            source.contains(&format!("\"{registered}\"")),
            "{name} is not registered in src/metrics.rs"
        );
    }

    // Every name the alerts and the dashboard query is exported, under the name Prometheus
    // stores it by (a counter's `_total`, a histogram's `_bucket`/`_sum`/`_count`), and has
    // samples.
    let families = families(&text);
    let missing: Vec<&String> = used
        .iter()
        .filter(|n| !exported(&families, n))
        .filter(|n| !(not_reported_yet.contains(&n.as_str()) && samples(&text, n).is_empty()))
        .collect();
    assert!(
        missing.is_empty(),
        "queried but not exported: {missing:?}\n{text}"
    );
    for name in &used {
        let lines = samples(&text, name);
        if not_reported_yet.contains(&name.as_str()) {
            for l in lines.iter().filter(|l| ours(l)) {
                assert!(
                    l.contains("topic=\"orders\"")
                        && l.contains("subscription=\"")
                        && value(l).is_some_and(|v| v >= 0.0),
                    "{name}: {l}"
                );
            }
            continue;
        }
        assert!(!lines.is_empty(), "{name}: no sample\n{text}");
    }

    // The labels the alerts' annotations name are on the series they alert on.
    let label_ref = regex::Regex::new(r"\$labels\.([a-z_]+)").expect("regex");
    for r in rules(&rule_file) {
        let expr = r["expr"].as_str().expect("expr");
        let mut refs = Vec::new();
        strings_at(&r["annotations"], "summary", &mut refs);
        strings_at(&r["annotations"], "description", &mut refs);
        let labels: BTreeSet<&str> = refs
            .iter()
            .flat_map(|a| {
                label_ref
                    .captures_iter(a)
                    .map(|c| c.get(1).expect("group").as_str())
            })
            .collect();
        for name in metric_names([expr]) {
            let line = samples(&text, &name)
                .into_iter()
                .find(|l| ours(l))
                .unwrap_or_else(|| panic!("{name}: no sample of {ns}/bus\n{text}"));
            for label in &labels {
                assert!(
                    line.contains(&format!("{label}=\"")),
                    "{}: annotations use $labels.{label}, which {name} lacks: {line}",
                    r["alert"]
                );
            }
        }
    }

    // Deleting the MessageBrokers removes their series.
    let api: kube::Api<switchyard::api::MessageBroker> = kube::Api::namespaced(kube.clone(), &ns);
    for name in ["bus", "stream", "down"] {
        api.delete(name, &Default::default()).await.expect("delete");
    }
    for name in ["bus", "stream", "down"] {
        wait_gone(&api, name, TIMEOUT, &format!("{name} deleted")).await;
    }
    let ns_label = format!("namespace=\"{ns}\"");
    wait_until(TIMEOUT, "the series of the namespace gone", async || {
        op.scrape().await.is_some_and(|t| {
            !t.lines()
                .any(|l| !l.starts_with('#') && l.contains(&ns_label))
        })
    })
    .await;
    op.stop().await;
}
