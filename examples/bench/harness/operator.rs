//! The operator under test: the real `switchyard run` binary as a child process, watching one
//! namespace; its memory from /proc and its counters from its /metrics endpoint.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::process::{Child, Command};

use super::Config;

/// A running operator process.
pub struct Operator {
    child: Child,
    pid: u32,
    metrics_url: String,
    peak_rss_kb: Arc<AtomicU64>,
    sampler: tokio::task::JoinHandle<()>,
}

/// Memory of a process from /proc/<pid>/status: (VmRSS, VmHWM) in kB.
pub fn memory_kb(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

pub fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

impl Operator {
    /// Start `switchyard run --namespace <ns>` against the kubeconfig; logs go to `log`.
    pub async fn start(
        config: &Config,
        kubeconfig: &Path,
        namespace: &str,
        log: &Path,
    ) -> Result<Self, String> {
        let port = free_port()?;
        let out = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let resync = humantime::format_duration(config.resync).to_string();
        let grace = humantime::format_duration(config.swap_grace).to_string();
        let child = Command::new(&config.operator_bin)
            .args(["run", "--namespace", namespace, "--resync", &resync])
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .args(["--log-level", &config.operator_log_level])
            .args(["--swap-grace", &grace])
            .env("KUBECONFIG", kubeconfig)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", config.operator_bin.display()))?;
        let pid = child
            .id()
            .ok_or_else(|| "the operator exited at once".to_string())?;
        let peak = Arc::new(AtomicU64::new(0));
        let p = peak.clone();
        let sampler = tokio::spawn(async move {
            while let Some((rss, hwm)) = memory_kb(pid) {
                p.fetch_max(rss.max(hwm), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let op = Operator {
            child,
            pid,
            metrics_url: format!("http://127.0.0.1:{port}/metrics"),
            peak_rss_kb: peak,
            sampler,
        };
        // Ready when its metrics endpoint answers.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if op.metrics().await.is_ok() {
                return Ok(op);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "the operator's metrics endpoint did not answer within 20s (log: {})",
                    log.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Highest resident set size seen so far (max of sampled VmRSS and the kernel's VmHWM), in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        let now = memory_kb(self.pid).map(|(r, h)| r.max(h)).unwrap_or(0);
        self.peak_rss_kb.fetch_max(now, Ordering::Relaxed);
        self.peak_rss_kb.load(Ordering::Relaxed) as f64 / 1024.0
    }

    /// The operator's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Current VmRSS in MiB.
    pub fn rss_mib(&self) -> f64 {
        memory_kb(self.pid).map(|(r, _)| r).unwrap_or(0) as f64 / 1024.0
    }

    /// The operator's counters.
    pub async fn metrics(&self) -> Result<OperatorMetrics, String> {
        let text = reqwest::get(&self.metrics_url)
            .await
            .map_err(|e| e.to_string())?
            .text()
            .await
            .map_err(|e| e.to_string())?;
        Ok(OperatorMetrics::parse(&text))
    }

    /// SIGTERM, then wait (SIGKILL after 10s).
    pub async fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        self.sampler.abort();
    }
}

/// Counter samples of the operator, keyed by the full series (`name{labels}`).
#[derive(Clone, Debug, Default)]
pub struct OperatorMetrics(pub BTreeMap<String, f64>);

impl OperatorMetrics {
    /// Parse Prometheus text (counters and gauges of the `switchyard_` family).
    pub fn parse(text: &str) -> Self {
        OperatorMetrics(
            text.lines()
                .filter(|l| l.starts_with("switchyard_"))
                .filter_map(|l| {
                    let (series, value) = l.rsplit_once(' ')?;
                    Some((series.to_string(), value.parse().ok()?))
                })
                .collect(),
        )
    }

    /// `self - earlier` for every series (gauges are reported as they are now).
    pub fn since(&self, earlier: &OperatorMetrics) -> OperatorMetrics {
        OperatorMetrics(
            self.0
                .iter()
                .map(|(k, v)| {
                    let delta = if k.starts_with("switchyard_pooled_clients")
                        || k.starts_with("switchyard_leader")
                    {
                        *v
                    } else {
                        v - earlier.0.get(k).copied().unwrap_or(0.0)
                    };
                    (k.clone(), delta)
                })
                .collect(),
        )
    }

    /// Sum of the series whose name starts with `prefix` and whose labels contain every `filter`.
    pub fn sum(&self, prefix: &str, filters: &[&str]) -> f64 {
        self.0
            .iter()
            .filter(|(k, _)| k.starts_with(prefix) && filters.iter().all(|f| k.contains(f)))
            .map(|(_, v)| v)
            .sum()
    }

    /// Broker calls by backend and operation (outcomes summed).
    pub fn broker_ops(&self) -> BTreeMap<String, u64> {
        self.by_labels("switchyard_broker_operations_total{", "operation")
    }

    /// Requests sent to brokers by backend and request kind.
    pub fn broker_requests(&self) -> BTreeMap<String, u64> {
        self.by_labels("switchyard_broker_requests_total{", "request")
    }

    fn by_labels(&self, family: &str, second: &str) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for (k, v) in &self.0 {
            let Some(labels) = k.strip_prefix(family) else {
                continue;
            };
            let get = |name: &str| {
                labels
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(&format!("{name}=\"")))
                    .map(|v| v.trim_end_matches(['"', '}']).to_string())
                    .unwrap_or_default()
            };
            *out.entry(format!("{} {}", get("backend"), get(second)))
                .or_insert(0) += *v as u64;
        }
        out.retain(|_, v| *v > 0);
        out
    }
}
