//! Watches the MessageBrokers of a namespace and records when each generation first became
//! Ready (one LIST and one WATCH, instead of polling every object).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use switchyard::api::MessageBroker;
use tokio::time::Instant;

/// Whether the status reports Ready for the current generation.
pub fn is_ready(mb: &MessageBroker) -> bool {
    mb.status.as_ref().is_some_and(|s| {
        s.observed_generation == mb.metadata.generation
            && switchyard::api::conditions::is_true(&s.conditions, "Ready")
    })
}

/// First-Ready instants by (name, generation).
pub struct ReadyWatch {
    ready: Arc<Mutex<HashMap<(String, i64), Instant>>>,
    changed: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl ReadyWatch {
    /// Start watching the namespace.
    pub fn start(client: Client, namespace: &str) -> Self {
        let api: Api<MessageBroker> = Api::namespaced(client, namespace);
        let ready = Arc::new(Mutex::new(HashMap::new()));
        let changed = Arc::new(tokio::sync::Notify::new());
        let (r, c) = (ready.clone(), changed.clone());
        let task = tokio::spawn(async move {
            let mut stream = watcher(api, watcher::Config::default())
                .default_backoff()
                .applied_objects()
                .boxed();
            while let Some(item) = stream.next().await {
                let Ok(mb) = item else { continue };
                if is_ready(&mb) {
                    let key = (mb.name_any(), mb.metadata.generation.unwrap_or(0));
                    r.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(key)
                        .or_insert_with(Instant::now);
                    c.notify_waiters();
                }
            }
        });
        ReadyWatch {
            ready,
            changed,
            task,
        }
    }

    /// When this generation of the object first became Ready.
    pub fn ready_at(&self, name: &str, generation: i64) -> Option<Instant> {
        self.ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(name.to_string(), generation))
            .copied()
    }

    /// How many of these (name, generation) pairs are Ready, and the latest first-Ready instant.
    pub fn count_ready(&self, wanted: &[(String, i64)]) -> (usize, Option<Instant>) {
        let map = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        let times: Vec<Instant> = wanted.iter().filter_map(|k| map.get(k).copied()).collect();
        (times.len(), times.iter().max().copied())
    }

    /// First-Ready instants of these pairs (missing ones left out).
    pub fn times(&self, wanted: &[(String, i64)]) -> Vec<Instant> {
        let map = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        wanted.iter().filter_map(|k| map.get(k).copied()).collect()
    }

    /// Wait until this generation is Ready, up to `timeout`.
    pub async fn wait(&self, name: &str, generation: i64, timeout: Duration) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if let Some(t) = self.ready_at(name, generation) {
                return Some(t);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.ready_at(name, generation);
            }
        }
    }

    /// Wait until all pairs are Ready (or the timeout); returns how many are.
    pub async fn wait_all(&self, wanted: &[(String, i64)], timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            let (n, _) = self.count_ready(wanted);
            if n == wanted.len() {
                return n;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.count_ready(wanted).0;
            }
        }
    }
}

impl Drop for ReadyWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}
