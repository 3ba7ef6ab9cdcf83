//! The relay side of the client scenario: `switchyard relay` on the MessageBroker's binding,
//! an app that publishes by Dapr's HTTP API and receives its deliveries on its own HTTP
//! server, as a Dapr app does: the cost of the relay next to the library used directly.

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::routing::{get, post};
use serde_json::{Value, json};
use switchyard::client::Binding;
use tokio::time::Instant;

use super::Config;
use super::operator::{free_port, memory_kb};
use super::scenarios::ONE_TIMEOUT;

/// A relay serving one binding, and the app it delivers to.
pub struct RelaySide {
    child: tokio::process::Child,
    port: u16,
    http: reqwest::Client,
    url: String,
    deliveries: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    app: tokio::task::JoinHandle<()>,
    dir: PathBuf,
}

impl RelaySide {
    /// Start the relay on `binding` (pub/sub `pubsub`) delivering `topic`'s `subscription` to
    /// this process.
    pub async fn start(
        config: &Config,
        binding: &Binding,
        pubsub: &str,
        topic: &str,
        subscription: &str,
    ) -> Result<RelaySide, String> {
        let dir = config.work_dir.join(format!("relay-{pubsub}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        for (k, v) in binding.entries() {
            std::fs::write(dir.join(k), v).map_err(|e| e.to_string())?;
        }
        // The app: its subscription list and the route deliveries are POSTed to.
        let (tx, deliveries) = tokio::sync::mpsc::unbounded_channel();
        let subscriptions = json!([{
            "pubsubname": pubsub, "topic": topic, "route": "/deliver",
            "metadata": {"subscription": subscription},
        }]);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let app_port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let router = Router::new()
            .route(
                "/dapr/subscribe",
                get(move || {
                    let s = subscriptions.clone();
                    async move { axum::Json(s) }
                }),
            )
            .route(
                "/deliver",
                post(move |body: Bytes| {
                    let tx = tx.clone();
                    async move {
                        if let Ok(event) = serde_json::from_slice::<Value>(&body)
                            && let Some(data) = event["data"].as_str()
                        {
                            let _ = tx.send(data.as_bytes().to_vec());
                        }
                        axum::Json(json!({"status": "SUCCESS"}))
                    }
                }),
            );
        let app = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        let port = free_port()?;
        let log = std::fs::File::create(config.work_dir.join(format!("relay-{pubsub}.log")))
            .map_err(|e| e.to_string())?;
        let child = tokio::process::Command::new(&config.operator_bin)
            .arg("relay")
            .arg("--binding")
            .arg(format!("{pubsub}={}", dir.display()))
            .args(["--app-id", "bench", "--metrics-addr", ""])
            .args(["--dapr-http-port", &port.to_string()])
            .args(["--app-port", &app_port.to_string()])
            .args(["--max-in-flight", &config.client_inflight.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting the relay: {e}"))?;
        let side = RelaySide {
            child,
            port,
            http: reqwest::Client::new(),
            url: format!("http://127.0.0.1:{port}/v1.0/publish/{pubsub}/{topic}"),
            deliveries,
            app,
            dir,
        };
        // Ready: the relay read the app's subscriptions.
        let deadline = Instant::now() + ONE_TIMEOUT;
        loop {
            let healthy = side
                .http
                .get(format!("http://127.0.0.1:{}/v1.0/healthz", side.port))
                .send()
                .await
                .is_ok_and(|r| r.status() == 204);
            if healthy {
                return Ok(side);
            }
            if Instant::now() > deadline {
                return Err("the relay never became healthy".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Publish one payload as a raw body, confirmed when the relay answers 204.
    pub async fn publish(&self, payload: &[u8]) -> Result<(), String> {
        let r = self
            .http
            .post(&self.url)
            .header("content-type", "text/plain")
            .body(payload.to_vec())
            .send()
            .await
            .map_err(|e| format!("relay publish: {e}"))?;
        if r.status() == 204 {
            Ok(())
        } else {
            Err(format!(
                "relay publish: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            ))
        }
    }

    /// Publish one message and wait until the app's route has it: seconds per sample, the
    /// first `warmup` dropped.
    pub async fn latency(
        &mut self,
        config: &Config,
        warmup: usize,
        tagged: impl Fn(&str) -> Vec<u8>,
    ) -> Result<Vec<f64>, String> {
        while self.deliveries.try_recv().is_ok() {}
        let mut out = Vec::new();
        for i in 0..warmup + config.client_samples {
            let payload = tagged(&format!("relay-{i}-"));
            let t0 = Instant::now();
            self.publish(&payload).await?;
            loop {
                let got = tokio::time::timeout(ONE_TIMEOUT, self.deliveries.recv())
                    .await
                    .map_err(|_| format!("relay: sample {i} not delivered in {ONE_TIMEOUT:?}"))?
                    .ok_or("the app's route stopped")?;
                if got == payload {
                    if i >= warmup {
                        out.push(t0.elapsed().as_secs_f64());
                    }
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The relay's peak resident set so far, in MiB.
    pub fn peak_rss_mib(&self) -> Option<f64> {
        let (_, hwm) = memory_kb(self.child.id()?)?;
        Some(hwm as f64 / 1024.0)
    }

    /// Stop the relay and the app.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
        self.app.abort();
        let _ = std::fs::remove_dir_all(Path::new(&self.dir));
    }
}
