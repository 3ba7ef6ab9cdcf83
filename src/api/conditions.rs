//! Condition types, reasons and the merge rule that keeps `lastTransitionTime` stable.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition types on the MessageBroker.
pub mod types {
    /// Every managed env is connected, provisioned and bound.
    pub const READY: &str = "Ready";
    /// Work is under way (kstatus: InProgress).
    pub const RECONCILING: &str = "Reconciling";
    /// Progress needs a change to the spec or the broker (kstatus: Failed).
    pub const STALLED: &str = "Stalled";
    /// The env's broker answered.
    pub const CONNECTED: &str = "Connected";
    /// Every topic and subscription exists as the spec says.
    pub const TOPICS_READY: &str = "TopicsReady";
    /// The connection Secret is written and current.
    pub const BINDING_READY: &str = "BindingReady";
}

/// Condition reasons (CamelCase, as Kubernetes expects).
pub mod reasons {
    /// All good.
    pub const RECONCILED: &str = "Reconciled";
    /// Reconcile in progress.
    pub const PROGRESSING: &str = "Progressing";
    /// The spec cannot be acted on.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// A referenced Secret or key is missing.
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    /// Broker answered.
    pub const CONNECTED: &str = "Connected";
    /// No route / connection refused / DNS failure.
    pub const UNREACHABLE: &str = "Unreachable";
    /// No answer in time.
    pub const TIMEOUT: &str = "Timeout";
    /// TLS handshake or verification failed.
    pub const TLS_FAILED: &str = "TLSHandshakeFailed";
    /// Credentials refused.
    pub const AUTHENTICATION_FAILED: &str = "AuthenticationFailed";
    /// Authenticated but not allowed (ACL, vhost permission, IAM).
    pub const PERMISSION_DENIED: &str = "PermissionDenied";
    /// The vhost / project / namespace does not exist.
    pub const NOT_FOUND: &str = "NotFound";
    /// Kafka cannot shrink partitions.
    pub const PARTITION_DECREASE: &str = "PartitionDecreaseNotSupported";
    /// Kafka cannot change a topic's replication factor through a config change.
    pub const REPLICATION_FACTOR_CHANGE: &str = "ReplicationFactorChangeNotSupported";
    /// Google Pub/Sub cannot turn message ordering on or off on a subscription.
    pub const MESSAGE_ORDERING_CHANGE: &str = "MessageOrderingChangeNotSupported";
    /// JetStream fixes a stream's storage type (file or memory) when it is created.
    pub const STREAM_STORAGE_CHANGE: &str = "StreamStorageChangeNotSupported";
    /// RabbitMQ will not change queue arguments in place.
    pub const IMMUTABLE_QUEUE_ARGUMENTS: &str = "ImmutableQueueArguments";
    /// A broker-side object with our name exists and is not ours.
    pub const CONFLICT: &str = "Conflict";
    /// Retirement waits for a destination to drain.
    pub const RETIRE_BLOCKED: &str = "RetireBlocked";
    /// The broker refused an operation.
    pub const BROKER_ERROR: &str = "BrokerError";
    /// A broker swap is under way.
    pub const SWAPPING: &str = "Swapping";
    /// Some env is not ready.
    pub const ENV_NOT_READY: &str = "EnvNotReady";
    /// Deleting: cleanup is running.
    pub const DELETING: &str = "Deleting";
}

/// Condition status values.
pub mod status {
    /// True.
    pub const TRUE: &str = "True";
    /// False.
    pub const FALSE: &str = "False";
    /// Unknown.
    pub const UNKNOWN: &str = "Unknown";
}

/// A condition as computed by a reconcile pass, before merging with the stored one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    /// Condition type.
    pub type_: &'static str,
    /// True, False or Unknown.
    pub status: &'static str,
    /// CamelCase reason.
    pub reason: String,
    /// Human-readable message.
    pub message: String,
}

impl Desired {
    /// A condition with the given status, reason and message.
    pub fn new(
        type_: &'static str,
        is_true: bool,
        reason: &str,
        message: impl Into<String>,
    ) -> Self {
        Desired {
            type_,
            status: if is_true { status::TRUE } else { status::FALSE },
            reason: reason.to_string(),
            message: message.into(),
        }
    }
}

/// Merge freshly computed conditions into the stored ones: `lastTransitionTime` changes only
/// when a condition's status flips; reason, message and observedGeneration follow the new value.
/// Conditions not in `desired` are dropped, so stale types do not linger.
pub fn merge(
    existing: &[Condition],
    desired: &[Desired],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    desired
        .iter()
        .map(|d| {
            let previous = existing.iter().find(|c| c.type_ == d.type_);
            let last_transition_time = match previous {
                Some(p) if p.status == d.status => p.last_transition_time.clone(),
                _ => now.clone(),
            };
            Condition {
                type_: d.type_.to_string(),
                status: d.status.to_string(),
                reason: d.reason.clone(),
                message: d.message.clone(),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// Find a condition by type.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of this type is True.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == status::TRUE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(s: &str) -> Time {
        Time(s.parse().expect("valid timestamp"))
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let t0 = time("2026-01-01T00:00:00Z");
        let t1 = time("2026-01-01T00:05:00Z");
        let first = merge(
            &[],
            &[Desired::new(
                types::READY,
                false,
                reasons::PROGRESSING,
                "working",
            )],
            Some(1),
            &t0,
        );
        assert_eq!(first[0].last_transition_time, t0);

        // Same status, new message: time stays.
        let second = merge(
            &first,
            &[Desired::new(
                types::READY,
                false,
                reasons::UNREACHABLE,
                "down",
            )],
            Some(2),
            &t1,
        );
        assert_eq!(second[0].last_transition_time, t0);
        assert_eq!(second[0].reason, reasons::UNREACHABLE);
        assert_eq!(second[0].observed_generation, Some(2));

        // Flip: time moves.
        let third = merge(
            &second,
            &[Desired::new(types::READY, true, reasons::RECONCILED, "ok")],
            Some(2),
            &t1,
        );
        assert_eq!(third[0].last_transition_time, t1);
        assert_eq!(third[0].status, status::TRUE);
    }

    #[test]
    fn merge_drops_conditions_no_longer_computed() {
        let t0 = time("2026-01-01T00:00:00Z");
        let first = merge(
            &[],
            &[
                Desired::new(types::READY, true, reasons::RECONCILED, ""),
                Desired::new(types::STALLED, true, reasons::INVALID_SPEC, "bad"),
            ],
            Some(1),
            &t0,
        );
        let second = merge(
            &first,
            &[Desired::new(types::READY, true, reasons::RECONCILED, "")],
            Some(1),
            &t0,
        );
        assert_eq!(second.len(), 1);
        assert!(find(&second, types::STALLED).is_none());
        assert!(is_true(&second, types::READY));
    }

    #[test]
    fn merge_is_stable_when_nothing_changed() {
        let t0 = time("2026-01-01T00:00:00Z");
        let t1 = time("2026-01-02T00:00:00Z");
        let desired = [Desired::new(
            types::READY,
            true,
            reasons::RECONCILED,
            "all good",
        )];
        let first = merge(&[], &desired, Some(3), &t0);
        let second = merge(&first, &desired, Some(3), &t1);
        assert_eq!(
            first, second,
            "an unchanged pass must produce an identical status"
        );
    }
}
