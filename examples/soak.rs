//! Soak: churn MessageBrokers against the real `switchyard run` binary for a bounded time and
//! watch its memory and error counters. Run by `make soak`.
//!
//! Each cycle creates `SOAK_BROKERS` MessageBrokers (default 100) on a private redis-server,
//! waits until all are Ready, changes every spec (topics added and removed), waits again, deletes
//! them all (half under Retain, half under Delete) and waits until they are gone. Cycles repeat
//! until `SOAK_SECONDS` (default 600) have passed. The operator's RSS (from /proc) and its
//! `/metrics` (with `switchyard_runtime_tasks`, the async tasks alive) are sampled after every
//! cycle, when nothing is left to do.
//!
//! After a warm-up (`SOAK_WARMUP_SECONDS`, default 420 s: kube's Event recorder keeps every Event
//! it published for 6 minutes to aggregate repeats, so the heap grows with the Event rate until
//! the first of them expire, about 20 MiB at this churn), the RSS
//! may grow by at most `SOAK_MAX_RSS_GROWTH_KIB` (default 5120) over the lowest RSS seen after
//! the warm-up's last cycle, and the task count may not end above the warm-up's highest; the
//! soak fails otherwise.
//!
//! With `SOAK_HEAP_PROFILE_DIR` set (`make heap-profile`, a binary built with the `heap-profile`
//! feature), the operator runs under jemalloc's heap profiler (sampling every 64 KiB allocated
//! on average): a profile every 2^`SOAK_HEAP_PROFILE_LG_INTERVAL` bytes allocated (default
//! 2^28, 256 MiB), in that directory, with a file `warmup-end` written when the first cycle after the warm-up
//! ends, so the profiles before it and the last one can be compared.
//!
//! Needs the test environment (`source target/testenv/env.sh`: KUBECONFIG) and
//! `SWITCHYARD_BIN` (the release binary). Exits non-zero when a phase times out or the operator dies.

use std::collections::BTreeMap;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, CustomResourceExt};
use serde_json::json;
use switchyard::api::MessageBroker;

/// Longest a phase (all brokers Ready, or all gone) may take.
const PHASE_TIMEOUT: Duration = Duration::from_secs(180);

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn wait_listening(port: u16) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(format!("nothing listens on :{port}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Resident set size of a process in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Counters from the operator's /metrics: reconciles and errors by category.
async fn scrape(http: &reqwest::Client, port: u16) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(resp) = http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
    else {
        return out;
    };
    let text = resp.text().await.unwrap_or_default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let wanted = name.starts_with("switchyard_reconciles_total")
            || name.starts_with("switchyard_reconcile_errors_total")
            || name.starts_with("switchyard_status_writes_total")
            || name == "switchyard_runtime_tasks"
            || name.starts_with("switchyard_heap_");
        if wanted && let Ok(v) = value.parse::<f64>() {
            out.insert(name.to_string(), v);
        }
    }
    out
}

fn manifest(i: usize, cycle: usize, redis_url: &str, updated: bool) -> serde_json::Value {
    // The update drops the first topic and adds another, so both creation and retirement run.
    let topics: Vec<serde_json::Value> = (0..3)
        .map(|t| t + usize::from(updated))
        .map(|t| json!({"name": format!("c{cycle}-t{t}"), "retention": "1h", "subscriptions": [{"name": "app"}]}))
        .collect();
    json!({
        "apiVersion": "switchyard.dev/v1alpha1", "kind": "MessageBroker",
        "metadata": {"name": format!("soak-{i}")},
        "spec": {
            "deletionPolicy": if i.is_multiple_of(2) { "Delete" } else { "Retain" },
            "topics": topics,
            "envs": [{"slug": "dev", "type": "Redis", "redis": {"url": redis_url}}],
        },
    })
}

fn ready_and_current(mb: &MessageBroker) -> bool {
    mb.status.as_ref().is_some_and(|s| {
        s.observed_generation == mb.metadata.generation
            && switchyard::api::conditions::is_true(&s.conditions, "Ready")
    })
}

struct Soak {
    api: Api<MessageBroker>,
    operator: Child,
    brokers: usize,
}

impl Soak {
    fn alive(&mut self) -> Result<(), String> {
        match self.operator.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!("the operator exited: {status}")),
            Err(e) => Err(format!("the operator cannot be polled: {e}")),
        }
    }

    async fn apply_all(&self, cycle: usize, redis_url: &str, updated: bool) -> Result<(), String> {
        let pp = PatchParams::apply("switchyard-soak").force();
        for i in 0..self.brokers {
            let m = manifest(i, cycle, redis_url, updated);
            self.api
                .patch(&format!("soak-{i}"), &pp, &Patch::Apply(&m))
                .await
                .map_err(|e| format!("apply soak-{i}: {e}"))?;
        }
        Ok(())
    }

    async fn wait(
        &mut self,
        what: &str,
        done: impl Fn(&[MessageBroker]) -> bool,
    ) -> Result<Duration, String> {
        let started = Instant::now();
        loop {
            self.alive()?;
            let list = self
                .api
                .list(&ListParams::default())
                .await
                .map_err(|e| format!("list: {e}"))?;
            if done(&list.items) {
                return Ok(started.elapsed());
            }
            if started.elapsed() > PHASE_TIMEOUT {
                let stuck: Vec<String> = list
                    .items
                    .iter()
                    .filter(|m| !ready_and_current(m))
                    .take(5)
                    .map(|m| m.metadata.name.clone().unwrap_or_default())
                    .collect();
                return Err(format!(
                    "{what} not reached within {PHASE_TIMEOUT:?}; e.g. {stuck:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

async fn run() -> Result<(), String> {
    let seconds: u64 = env_or("SOAK_SECONDS", 600);
    let brokers: usize = env_or("SOAK_BROKERS", 100);
    let bin =
        std::env::var("SWITCHYARD_BIN").map_err(|_| "SWITCHYARD_BIN is not set".to_string())?;
    let work = std::env::temp_dir().join(format!("switchyard-soak-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;

    // A private broker, so the churn never touches shared test services.
    let redis_port = free_port();
    let mut redis = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &redis_port.to_string()])
        .args(["--daemonize", "no", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(&work)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("redis-server: {e}"))?;
    let result = soak(&bin, &work, redis_port, seconds, brokers).await;
    let _ = redis.kill();
    let _ = redis.wait();
    result
}

async fn soak(
    bin: &str,
    work: &std::path::Path,
    redis_port: u16,
    seconds: u64,
    brokers: usize,
) -> Result<(), String> {
    wait_listening(redis_port)?;
    let redis_url = format!("redis://127.0.0.1:{redis_port}/0");
    let client = Client::try_default()
        .await
        .map_err(|e| format!("kube client: {e}"))?;
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    crds.patch(
        "messagebrokers.switchyard.dev",
        &PatchParams::apply("switchyard-soak").force(),
        &Patch::Apply(&MessageBroker::crd()),
    )
    .await
    .map_err(|e| format!("CRD: {e}"))?;
    let ns = format!("soak-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns_obj: Namespace =
        serde_json::from_value(json!({"metadata": {"name": ns}})).map_err(|e| e.to_string())?;
    namespaces
        .create(&PostParams::default(), &ns_obj)
        .await
        .map_err(|e| format!("namespace: {e}"))?;

    let metrics_port = free_port();
    let log = std::fs::File::create(work.join("operator.log")).map_err(|e| e.to_string())?;
    let profile_dir = std::env::var_os("SOAK_HEAP_PROFILE_DIR").map(std::path::PathBuf::from);
    let mut operator = Command::new(bin);
    if let Some(dir) = &profile_dir {
        let lg: u32 = env_or("SOAK_HEAP_PROFILE_LG_INTERVAL", 28);
        operator.env(
            "MALLOC_CONF",
            format!(
                "prof:true,lg_prof_sample:16,lg_prof_interval:{lg},prof_prefix:{}/jeprof",
                dir.display()
            ),
        );
    }
    let operator = operator
        .args([
            "run",
            "--namespace",
            &ns,
            "--resync",
            "30s",
            "--log-level",
            "warn",
        ])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("{bin}: {e}"))?;
    let pid = operator.id();
    let mut s = Soak {
        api: Api::namespaced(client.clone(), &ns),
        operator,
        brokers,
    };
    let http = reqwest::Client::new();
    wait_listening(metrics_port)?;
    let rss_launch = rss_kib(pid).unwrap_or(0);
    println!(
        "soak: {brokers} MessageBrokers for {seconds}s in namespace {ns}; operator pid {pid}, RSS at launch {rss_launch} KiB"
    );

    let warmup = env_or("SOAK_WARMUP_SECONDS", 420);
    let started = Instant::now();
    // (seconds since start, RSS KiB, tasks alive, bytes allocated)
    let mut samples: Vec<(u64, u64, u64, u64)> = Vec::new();
    let mut cycle = 0;
    let outcome: Result<(), String> = async {
        while started.elapsed() < Duration::from_secs(seconds) {
            s.apply_all(cycle, &redis_url, false).await?;
            let created = s
                .wait("all Ready", |l| l.len() == brokers && l.iter().all(ready_and_current))
                .await?;
            s.apply_all(cycle, &redis_url, true).await?;
            let updated = s
                .wait("all updated", |l| l.len() == brokers && l.iter().all(ready_and_current))
                .await?;
            s.api
                .delete_collection(&DeleteParams::default(), &ListParams::default())
                .await
                .map_err(|e| format!("delete: {e}"))?;
            let deleted = s.wait("all gone", |l| l.is_empty()).await?;
            let rss = rss_kib(pid).unwrap_or(0);
            let m = scrape(&http, metrics_port).await;
            let tasks = m.get("switchyard_runtime_tasks").copied().unwrap_or(0.0) as u64;
            let heap = m.get("switchyard_heap_allocated_bytes").copied().unwrap_or(0.0) as u64;
            samples.push((started.elapsed().as_secs(), rss, tasks, heap));
            if let Some(dir) = &profile_dir
                && started.elapsed().as_secs() >= warmup
                && !dir.join("warmup-end").exists()
            {
                std::fs::write(dir.join("warmup-end"), format!("{cycle}\n"))
                    .map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            let errors: f64 = m.iter().filter(|(k, _)| k.contains("errors")).fold(0.0, |a, (_, v)| a + v);
            println!(
                "cycle {cycle:>3} t={:>4}s create {:>5.1}s update {:>5.1}s delete {:>5.1}s RSS {rss} KiB heap {} KiB tasks {tasks} reconciles {} errors {errors}",
                started.elapsed().as_secs(),
                created.as_secs_f64(),
                updated.as_secs_f64(),
                deleted.as_secs_f64(),
                heap / 1024,
                m.get("switchyard_reconciles_total").copied().unwrap_or(0.0),
            );
            cycle += 1;
        }
        Ok(())
    }
    .await;

    let metrics = scrape(&http, metrics_port).await;
    let _ = Command::new("kill").arg(pid.to_string()).status();
    let _ = s.operator.wait();
    outcome?;

    let rss = |s: &(u64, u64, u64, u64)| s.1;
    let first = samples.first().map(rss).unwrap_or(0);
    let last = samples.last().map(rss).unwrap_or(0);
    let peak = samples.iter().map(rss).max().unwrap_or(0);
    println!("soak: {cycle} cycles in {}s", started.elapsed().as_secs());
    println!(
        "soak: RSS at launch {rss_launch} KiB, after cycle 1 {first} KiB, at the end {last} KiB, peak {peak} KiB"
    );
    println!(
        "soak: drift since cycle 1 {:+} KiB ({:+.1}%)",
        last as i64 - first as i64,
        if first > 0 {
            (last as f64 - first as f64) * 100.0 / first as f64
        } else {
            0.0
        }
    );
    let budget: u64 = env_or("SOAK_MAX_RSS_GROWTH_KIB", 5120);
    let (warm, after): (Vec<&(u64, u64, u64, u64)>, Vec<_>) =
        samples.iter().partition(|s| s.0 < warmup);
    let verdict = match (warm.last(), after.is_empty()) {
        (Some(_), false) => {
            let base = after.iter().map(|s| s.1).min().unwrap_or(0);
            let growth = last.saturating_sub(base);
            let warm_tasks = warm.iter().map(|s| s.2).max().unwrap_or(0);
            let end_tasks = samples.last().map(|s| s.2).unwrap_or(0);
            let heap_from = after.first().map(|s| s.3 / 1024).unwrap_or(0);
            let heap_to = samples.last().map(|s| s.3 / 1024).unwrap_or(0);
            println!(
                "soak: after the warm-up the program's allocated heap went from {heap_from} KiB to {heap_to} KiB ({:+} KiB)",
                heap_to as i64 - heap_from as i64
            );
            println!(
                "soak: after the {warmup}s warm-up: RSS from {base} KiB to {last} KiB ({growth:+} KiB, budget {budget} KiB); tasks at the end {end_tasks}, highest in warm-up {warm_tasks}"
            );
            if growth > budget {
                Err(format!(
                    "RSS grew {growth} KiB after warm-up, over {budget} KiB"
                ))
            } else if end_tasks > warm_tasks {
                Err(format!("tasks grew from {warm_tasks} to {end_tasks}"))
            } else {
                Ok(())
            }
        }
        _ => {
            println!(
                "soak: too short for a verdict: no cycle before and after the {warmup}s warm-up"
            );
            Ok(())
        }
    };
    for (k, v) in &metrics {
        println!("soak: {k} {v}");
    }
    println!(
        "soak: operator log: {}",
        work.join("operator.log").display()
    );
    verdict
}

#[tokio::main]
async fn main() -> ExitCode {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("soak failed: {e}");
            ExitCode::FAILURE
        }
    }
}
