//! Raw Kafka admin calls: the floor of the scale scenario (CreateTopics in batches, then wait
//! until every partition has a leader and answers ListOffsets, as the operator does) and the
//! removal of what a run created.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

/// Admin client and metadata consumer for one bootstrap.
pub struct Kafka {
    admin: AdminClient<DefaultClientContext>,
    consumer: BaseConsumer,
}

const TIMEOUT: Duration = Duration::from_secs(60);

impl Kafka {
    /// Clients for the bootstrap address.
    pub fn new(bootstrap: &str) -> Result<Self, String> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", bootstrap)
            .set("client.id", "switchyard-bench")
            .set("allow.auto.create.topics", "false");
        Ok(Kafka {
            admin: c.create().map_err(|e| e.to_string())?,
            consumer: c.create().map_err(|e| e.to_string())?,
        })
    }

    fn options() -> AdminOptions {
        AdminOptions::new()
            .request_timeout(Some(TIMEOUT))
            .operation_timeout(Some(Duration::from_secs(30)))
    }

    /// Topic names in the cluster.
    pub fn topics(&self) -> Result<HashSet<String>, String> {
        let md = self
            .consumer
            .fetch_metadata(None, TIMEOUT)
            .map_err(|e| e.to_string())?;
        Ok(md
            .topics()
            .iter()
            .filter(|t| t.error().is_none() && t.partitions().iter().all(|p| p.leader() >= 0))
            .map(|t| t.name().to_string())
            .collect())
    }

    /// Create `names` (one partition each) with CreateTopics requests of `batch` topics,
    /// then wait until all are usable. Returns (requests sent, failures).
    pub async fn create_floor(
        &self,
        names: &[String],
        batch: usize,
    ) -> Result<(usize, usize), String> {
        let mut requests = 0;
        let mut failed = 0;
        for chunk in names.chunks(batch.max(1)) {
            let topics: Vec<NewTopic<'_>> = chunk
                .iter()
                .map(|n| NewTopic::new(n, 1, TopicReplication::Fixed(-1)))
                .collect();
            let results = self
                .admin
                .create_topics(&topics, &Self::options())
                .await
                .map_err(|e| format!("CreateTopics: {e}"))?;
            requests += 1;
            failed += results.iter().filter(|r| r.is_err()).count();
        }
        self.await_usable(names, TIMEOUT * 5).await?;
        Ok((requests, failed))
    }

    /// Wait until every topic shows in metadata with a leader and answers ListOffsets.
    pub async fn await_usable(&self, names: &[String], timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let present = self.topics()?;
            if names.iter().all(|n| present.contains(n)) {
                let mut tpl = TopicPartitionList::with_capacity(names.len());
                for n in names {
                    tpl.add_partition_offset(n, 0, Offset::End)
                        .map_err(|e| e.to_string())?;
                }
                if let Ok(r) = self.consumer.offsets_for_times(tpl, TIMEOUT)
                    && r.elements().iter().all(|e| e.error().is_ok())
                {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} topics not usable within {timeout:?}",
                    names.len()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Delete every topic whose name starts with one of the prefixes (batches of 1,000).
    pub async fn delete_prefixed(&self, prefixes: &[String]) -> Result<usize, String> {
        let md = self
            .consumer
            .fetch_metadata(None, TIMEOUT)
            .map_err(|e| e.to_string())?;
        let names: Vec<String> = md
            .topics()
            .iter()
            .map(|t| t.name().to_string())
            .filter(|t| prefixes.iter().any(|p| t.starts_with(p.as_str())))
            .collect();
        for chunk in names.chunks(1000) {
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            self.admin
                .delete_topics(&refs, &Self::options())
                .await
                .map_err(|e| format!("DeleteTopics: {e}"))?;
        }
        Ok(names.len())
    }

    /// Wait until topics with these prefixes are gone from metadata and the broker has given
    /// back their files: a deleted topic's log files stay open until Kafka removes them, and a
    /// run that creates 10,000 more topics meanwhile can exhaust the broker's file handles.
    /// `files_before` is the broker's open-file count before the topics were created (None when
    /// the broker's process is not visible from here: then only metadata is awaited).
    pub async fn wait_deleted(
        &self,
        prefixes: &[String],
        files_before: Option<usize>,
        timeout: Duration,
    ) -> Result<Duration, String> {
        let t0 = Instant::now();
        loop {
            let md = self
                .consumer
                .fetch_metadata(None, TIMEOUT)
                .map_err(|e| e.to_string())?;
            let left = md
                .topics()
                .iter()
                .filter(|t| prefixes.iter().any(|p| t.name().starts_with(p.as_str())))
                .count();
            // Some slack for segments and connections that come and go.
            let files_back = match (files_before, broker_open_files()) {
                (Some(before), Some(now)) => now <= before + 200,
                _ => true,
            };
            if left == 0 && files_back {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() >= timeout {
                return Err(format!(
                    "after {timeout:?}: {left} topic(s) left, broker files {:?} (before: {files_before:?})",
                    broker_open_files()
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// The test environment's Kafka process, when it runs on this machine.
pub fn broker_pid() -> Option<u32> {
    super::cpu::pid_file(&super::repo_dir().join("target/testenv/kafka.pid"))
}

/// Open files of the test environment's Kafka process, when it runs on this machine.
pub fn broker_open_files() -> Option<usize> {
    let fds = std::fs::read_dir(format!("/proc/{}/fd", broker_pid()?)).ok()?;
    Some(fds.count())
}
