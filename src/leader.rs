//! Leader election on a `coordination.k8s.io/v1` Lease, so that several replicas can run and
//! exactly one reconciles.
//!
//! The algorithm is client-go's: a candidate takes the Lease when nobody holds it or when the
//! holder's record has not changed for a whole lease duration *as observed on the candidate's
//! clock* (so clock skew between nodes does not matter). Every write is a replace carrying the
//! `resourceVersion` that was read, so two candidates racing for the same Lease cannot both win:
//! the API server refuses the second with a conflict. The leader renews every retry period and
//! gives up (stops its work) when it could not renew for the renew deadline, which is shorter
//! than the lease duration: a leader that lost touch stops before anyone else may start.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// Where the Lease lives, who we are, and the timing of the election.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This candidate's identity, unique among the replicas (the pod name in a cluster).
    pub identity: String,
    /// How long a Lease stays valid after its last renewal.
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it stops its work.
    pub renew_deadline: Duration,
    /// Pause between attempts to acquire or renew.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// A configuration with client-go's proportions (15s / 10s / 2s): the renew deadline is two
    /// thirds of the lease duration, the retry period two fifteenths of it.
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        identity: impl Into<String>,
        lease_duration: Duration,
    ) -> Self {
        let lease_duration = lease_duration.max(Duration::from_secs(1));
        LeaseConfig {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration,
            renew_deadline: lease_duration * 2 / 3,
            retry_period: lease_duration * 2 / 15,
        }
    }
}

/// The Lease as last read, and when (on our clock) it last changed.
struct Observed {
    resource_version: Option<String>,
    holder: Option<String>,
    duration: Duration,
    changed_at: Instant,
}

/// One candidate in the election.
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
    observed: Option<Observed>,
}

impl LeaderElector {
    /// A candidate for the Lease described by `config`.
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        LeaderElector {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
        }
    }

    /// Wait until this candidate holds the Lease. API errors are logged and retried.
    pub async fn acquire(&mut self) {
        info!(lease = %self.config.name, namespace = %self.config.namespace, identity = %self.config.identity, "waiting for the leader lease");
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    info!(lease = %self.config.name, identity = %self.config.identity, "acquired the leader lease");
                    return;
                }
                Ok(false) => {}
                Err(e) => {
                    warn!(error = %e, lease = %self.config.name, "cannot read or take the leader lease")
                }
            }
            tokio::time::sleep(self.config.retry_period).await;
        }
    }

    /// Run `work` while holding the Lease (call [`acquire`](Self::acquire) first). Returns its
    /// output when it finishes, and then releases the Lease so a standby takes over at once.
    /// Returns [`Error::LeaseLost`] (dropping `work`) when the Lease could not be renewed within
    /// the renew deadline or another candidate took it.
    pub async fn lead<F: Future>(mut self, metrics: &Metrics, work: F) -> Result<F::Output> {
        metrics.leader.set(1);
        let outcome = {
            let work = std::pin::pin!(work);
            let renewing = std::pin::pin!(self.keep_renewing());
            match futures::future::select(work, renewing).await {
                futures::future::Either::Left((output, _)) => Ok(output),
                futures::future::Either::Right((lost, _)) => Err(lost),
            }
        };
        metrics.leader.set(0);
        if outcome.is_ok() {
            self.release().await;
        }
        outcome
    }

    /// Renew every retry period; return the error to stop with once leadership is lost.
    async fn keep_renewing(&mut self) -> Error {
        let mut last_renewal = Instant::now();
        loop {
            tokio::time::sleep(self.config.retry_period).await;
            let deadline = last_renewal + self.config.renew_deadline;
            loop {
                let attempt = tokio::time::timeout_at(deadline, self.try_acquire_or_renew()).await;
                match attempt {
                    Ok(Ok(true)) => {
                        last_renewal = Instant::now();
                        break;
                    }
                    Ok(Ok(false)) => {
                        return self.lost("another candidate holds the lease");
                    }
                    Ok(Err(e)) => {
                        warn!(error = %e, lease = %self.config.name, "cannot renew the leader lease");
                    }
                    Err(_elapsed) => {}
                }
                if Instant::now() >= deadline {
                    return self.lost("renew deadline passed");
                }
                tokio::time::sleep(self.config.retry_period.min(deadline - Instant::now())).await;
            }
        }
    }

    fn lost(&self, why: &str) -> Error {
        warn!(lease = %self.config.name, identity = %self.config.identity, why, "lost the leader lease");
        Error::LeaseLost {
            lease: format!("{}/{}", self.config.namespace, self.config.name),
            reason: why.to_string(),
        }
    }

    /// One round of the election: take or renew the Lease if we may. `Ok(true)` when we hold it.
    async fn try_acquire_or_renew(&mut self) -> Result<bool> {
        let now = MicroTime(jiff::Timestamp::now());
        let duration_secs =
            i32::try_from(self.config.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX);
        let Some(mut lease) = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(Error::kube("get Lease"))?
        else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.config.identity.clone()),
                    lease_duration_seconds: Some(duration_secs),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(&created);
                    Ok(true)
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(Error::kube("create Lease")(e)),
            };
        };
        self.observe(&lease);
        let observed = self
            .observed
            .as_ref()
            .ok_or(Error::MissingMetadata("lease"))?;
        let held_by_us = observed.holder.as_deref() == Some(self.config.identity.as_str());
        if let Some(holder) = observed.holder.as_deref()
            && !held_by_us
            && observed.changed_at.elapsed() < observed.duration
        {
            debug!(lease = %self.config.name, holder, "lease held by another candidate");
            return Ok(false);
        }

        let previous = lease.spec.take().unwrap_or_default();
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(duration_secs),
            acquire_time: if held_by_us {
                previous.acquire_time.clone()
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(
                previous.lease_transitions.unwrap_or(0)
                    + i32::from(
                        !held_by_us && previous.holder_identity.is_some_and(|h| !h.is_empty()),
                    ),
            ),
            ..previous
        });
        // The replace carries the resourceVersion we read: a concurrent writer makes it fail.
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(updated) => {
                self.observe(&updated);
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(Error::kube("replace Lease")(e)),
        }
    }

    fn observe(&mut self, lease: &Lease) {
        let resource_version = lease.metadata.resource_version.clone();
        if self
            .observed
            .as_ref()
            .is_some_and(|o| o.resource_version == resource_version)
        {
            return;
        }
        let spec = lease.spec.clone().unwrap_or_default();
        self.observed = Some(Observed {
            resource_version,
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            duration: spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map(Duration::from_secs)
                .unwrap_or(self.config.lease_duration),
            changed_at: Instant::now(),
        });
    }

    /// Give the Lease up so a standby need not wait for it to expire. Best effort: on failure
    /// the Lease simply expires.
    async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => info!(lease = %self.config.name, "released the leader lease"),
            Err(e) => {
                warn!(error = %e, lease = %self.config.name, "cannot release the leader lease; it will expire")
            }
        }
    }
}

/// Wait until this candidate holds the Lease, then run `work` while holding it. See
/// [`LeaderElector::lead`] for what is returned; `metrics.leader` is 1 while leading.
pub async fn run_when_leader<F: Future>(
    client: Client,
    config: LeaseConfig,
    metrics: &Metrics,
    work: F,
) -> Result<F::Output> {
    let mut elector = LeaderElector::new(client, config);
    elector.acquire().await;
    elector.lead(metrics, work).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_follows_client_go_proportions() {
        let c = LeaseConfig::new("ns", "lease", "me", Duration::from_secs(15));
        assert_eq!(c.renew_deadline, Duration::from_secs(10));
        assert_eq!(c.retry_period, Duration::from_secs(2));
        assert!(c.renew_deadline < c.lease_duration);
    }

    #[test]
    fn lease_duration_has_a_floor() {
        let c = LeaseConfig::new("ns", "lease", "me", Duration::from_millis(10));
        assert_eq!(c.lease_duration, Duration::from_secs(1));
    }
}
