//! Results: one JSON document and a table with the targets.

use std::path::Path;

use serde::Serialize;

use super::Config;

/// One line of the table.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    /// Scenario.
    pub scenario: String,
    /// What was measured.
    pub metric: String,
    /// The number, formatted.
    pub value: String,
    /// The target, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Whether the target is met.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub met: Option<bool>,
}

/// Everything a run measured.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// When the run started (RFC 3339).
    pub started_at: String,
    /// CPUs available.
    pub cpus: usize,
    /// Whether request counts come from a private API server.
    pub private_apiserver: bool,
    /// The sizes used.
    pub config: Config,
    /// Scenario 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale: Option<serde_json::Value>,
    /// Scenario 2.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle: Option<serde_json::Value>,
    /// Scenario 3, one entry per backend.
    pub latency: Vec<serde_json::Value>,
    /// Scenario 4.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap: Option<serde_json::Value>,
    /// Scenario 5, one entry per backend: the client library next to the native client.
    pub client: Vec<serde_json::Value>,
    /// Scenario 5: the drain of messages queued at a swap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain: Option<serde_json::Value>,
    /// The table.
    pub rows: Vec<Row>,
    /// What failed (a failed scenario does not stop the others).
    pub errors: Vec<String>,
}

impl Report {
    /// An empty report.
    pub fn new(config: &Config, private_apiserver: bool) -> Self {
        Report {
            started_at: jiff::Timestamp::now().to_string(),
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            private_apiserver,
            config: config.clone(),
            scale: None,
            idle: None,
            latency: Vec::new(),
            swap: None,
            client: Vec::new(),
            drain: None,
            rows: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// Add a row without a target.
    pub fn row(&mut self, scenario: &str, metric: &str, value: impl ToString) {
        self.rows.push(Row {
            scenario: scenario.into(),
            metric: metric.into(),
            value: value.to_string(),
            target: None,
            met: None,
        });
    }

    /// Add a row with a target.
    pub fn check(
        &mut self,
        scenario: &str,
        metric: &str,
        value: impl ToString,
        target: &str,
        met: bool,
    ) {
        self.rows.push(Row {
            scenario: scenario.into(),
            metric: metric.into(),
            value: value.to_string(),
            target: Some(target.into()),
            met: Some(met),
        });
    }

    /// The table as text.
    pub fn table(&self) -> String {
        let w_s = self
            .rows
            .iter()
            .map(|r| r.scenario.len())
            .max()
            .unwrap_or(0)
            .max(8);
        let w_m = self
            .rows
            .iter()
            .map(|r| r.metric.len())
            .max()
            .unwrap_or(0)
            .max(6);
        let w_v = self
            .rows
            .iter()
            .map(|r| r.value.len())
            .max()
            .unwrap_or(0)
            .max(5);
        let w_t = self
            .rows
            .iter()
            .map(|r| r.target.as_deref().unwrap_or("").len())
            .max()
            .unwrap_or(0)
            .max(6);
        let mut out = format!(
            "{:<w_s$}  {:<w_m$}  {:>w_v$}  {:<w_t$}  {}\n",
            "scenario", "metric", "value", "target", "met"
        );
        out.push_str(&format!("{}\n", "-".repeat(w_s + w_m + w_v + w_t + 13)));
        for r in &self.rows {
            let met = match r.met {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "",
            };
            out.push_str(&format!(
                "{:<w_s$}  {:<w_m$}  {:>w_v$}  {:<w_t$}  {met}\n",
                r.scenario,
                r.metric,
                r.value,
                r.target.as_deref().unwrap_or("")
            ));
        }
        for e in &self.errors {
            out.push_str(&format!("error: {e}\n"));
        }
        out
    }

    /// Write the JSON (creating the directory).
    pub fn write(&self, path: &Path) -> Result<(), String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let json = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        std::fs::write(path, json + "\n").map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Nearest-rank percentile of seconds (`p` in 0..=1); `None` for no samples.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut v = samples.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}
