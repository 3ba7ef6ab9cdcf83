//! The one mapping from what went wrong to what a person sees: a condition reason, a message,
//! and whether and how to retry. Broker code reports typed errors ([`BrokerError`]) and typed
//! refusals ([`Refusal`]); only this module knows the condition vocabulary they become, so the
//! controller's conditions, its Events, its metrics and `switchyard plan`/`check` all agree.

use crate::api::conditions::reasons;
use crate::brokers::{BrokerError, BrokerErrorKind, Immutable, Refusal, RefusalKind};
use crate::error::Error;

/// How a failure is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Retrying soon can help (an outage, a timeout, a queue that is draining): back off.
    Backoff,
    /// Only a change can help (the spec, a Secret, the broker's configuration). The change
    /// re-triggers reconcile; until then the object is Stalled.
    AfterChange,
}

/// A failure as conditions, Events and metrics report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// CamelCase condition reason (see `api::conditions::reasons`).
    pub reason: &'static str,
    /// What happened, fit for status (never holding credentials).
    pub message: String,
    /// How to retry.
    pub retry: Retry,
}

impl Failure {
    /// Whether retrying without a change can help.
    pub fn is_transient(&self) -> bool {
        self.retry == Retry::Backoff
    }
}

/// The condition reason of a broker error kind.
pub fn broker_reason(kind: BrokerErrorKind) -> &'static str {
    match kind {
        BrokerErrorKind::Unreachable => reasons::UNREACHABLE,
        BrokerErrorKind::Timeout => reasons::TIMEOUT,
        BrokerErrorKind::Tls => reasons::TLS_FAILED,
        BrokerErrorKind::Authentication => reasons::AUTHENTICATION_FAILED,
        BrokerErrorKind::PermissionDenied => reasons::PERMISSION_DENIED,
        BrokerErrorKind::NotFound => reasons::NOT_FOUND,
        BrokerErrorKind::Rejected | BrokerErrorKind::Other => reasons::BROKER_ERROR,
    }
}

/// The condition reason of a refused change.
pub fn refusal_reason(kind: RefusalKind) -> &'static str {
    match kind {
        RefusalKind::Conflict => reasons::CONFLICT,
        RefusalKind::PartitionDecrease => reasons::PARTITION_DECREASE,
        RefusalKind::Immutable(Immutable::ReplicationFactor) => reasons::REPLICATION_FACTOR_CHANGE,
        RefusalKind::Immutable(Immutable::QueueArguments) => reasons::IMMUTABLE_QUEUE_ARGUMENTS,
        RefusalKind::Immutable(Immutable::MessageOrdering) => reasons::MESSAGE_ORDERING_CHANGE,
        RefusalKind::Immutable(Immutable::StreamStorage) => reasons::STREAM_STORAGE_CHANGE,
        RefusalKind::RetireBlocked => reasons::RETIRE_BLOCKED,
    }
}

/// Serialise a refusal's kind as its condition reason (the `plan -o json` shape).
pub fn serialize_refusal_kind<S: serde::Serializer>(
    kind: &RefusalKind,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(refusal_reason(*kind))
}

/// What to check when the broker's certificate did not verify, by the words the TLS libraries
/// (rustls, OpenSSL under librdkafka) use for it.
const TLS_HINTS: [(&[&str], &str); 2] = [
    (
        &[
            "UnknownIssuer",
            "certificate verify failed",
            "unable to get local issuer",
            "self-signed certificate",
            "BadSignature",
        ],
        "the broker's certificate is not signed by the CA the env references (tls.caSecretRef; \
         caSecretRef on Redis), nor by a system root when it references none",
    ),
    (
        &[
            "NotValidForName",
            "hostname mismatch",
            "IP address mismatch",
        ],
        "the broker's certificate does not name the host the env connects to",
    ),
];

/// A broker error's message, led by what to check when it is a certificate that did not verify.
fn broker_message(e: &BrokerError) -> String {
    let hint = (e.kind == BrokerErrorKind::Tls)
        .then(|| {
            TLS_HINTS
                .iter()
                .find(|(words, _)| words.iter().any(|w| e.message.contains(w)))
        })
        .flatten();
    match hint {
        Some((_, hint)) => format!("{hint}: {}", e.message),
        None => e.message.clone(),
    }
}

impl From<&BrokerError> for Failure {
    fn from(e: &BrokerError) -> Self {
        Failure {
            reason: broker_reason(e.kind),
            message: broker_message(e),
            retry: if e.is_transient() {
                Retry::Backoff
            } else {
                Retry::AfterChange
            },
        }
    }
}

impl From<&Refusal> for Failure {
    fn from(r: &Refusal) -> Self {
        Failure {
            reason: refusal_reason(r.kind),
            message: r.message.clone(),
            retry: if r.kind.is_transient() {
                Retry::Backoff
            } else {
                Retry::AfterChange
            },
        }
    }
}

impl From<&Error> for Failure {
    fn from(e: &Error) -> Self {
        let reason = match e {
            Error::Broker(b) => return Failure::from(b),
            Error::SecretNotFound { .. }
            | Error::SecretKeyMissing { .. }
            | Error::SecretNotUtf8 { .. } => reasons::SECRET_NOT_FOUND,
            Error::InvalidSpec(_) | Error::Serialization(_) | Error::MissingMetadata(_) => {
                reasons::INVALID_SPEC
            }
            Error::Kube { .. } | Error::Io(_) | Error::LeaseLost { .. } => reasons::PROGRESSING,
        };
        Failure {
            reason,
            message: e.to_string(),
            retry: if e.is_transient() {
                Retry::Backoff
            } else {
                Retry::AfterChange
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::brokers::{ObjectKey, ObjectKind};

    #[test]
    fn broker_errors_keep_their_reasons_and_retry_class() {
        let cases = [
            (BrokerErrorKind::Unreachable, "Unreachable", Retry::Backoff),
            (BrokerErrorKind::Timeout, "Timeout", Retry::Backoff),
            (
                BrokerErrorKind::Tls,
                "TLSHandshakeFailed",
                Retry::AfterChange,
            ),
            (
                BrokerErrorKind::Authentication,
                "AuthenticationFailed",
                Retry::AfterChange,
            ),
            (
                BrokerErrorKind::PermissionDenied,
                "PermissionDenied",
                Retry::AfterChange,
            ),
            (BrokerErrorKind::NotFound, "NotFound", Retry::AfterChange),
            (BrokerErrorKind::Rejected, "BrokerError", Retry::AfterChange),
            (BrokerErrorKind::Other, "BrokerError", Retry::Backoff),
        ];
        for (kind, reason, retry) in cases {
            let f = Failure::from(&BrokerError::new(kind, "m"));
            assert_eq!((f.reason, f.retry), (reason, retry), "{kind:?}");
            assert_eq!(f.message, "m");
        }
    }

    #[test]
    fn an_unverified_certificate_says_what_to_check() {
        let cases = [
            // rustls (Redis, RabbitMQ, NATS, the management API)
            (
                "connect: invalid peer certificate: UnknownIssuer",
                "not signed by the CA",
            ),
            // OpenSSL under librdkafka
            (
                "SSL handshake failed: error:0A000086:SSL routines::certificate verify failed",
                "not signed by the CA",
            ),
            (
                "invalid peer certificate: NotValidForName",
                "does not name the host",
            ),
        ];
        for (message, hint) in cases {
            let f = Failure::from(&BrokerError::new(BrokerErrorKind::Tls, message));
            assert!(f.message.contains(hint), "{}", f.message);
            assert!(f.message.ends_with(message), "{}", f.message);
        }
        // Other TLS failures, and other kinds with the same words, are left as they are.
        for (kind, message) in [
            (BrokerErrorKind::Tls, "handshake: protocol version"),
            (BrokerErrorKind::Other, "UnknownIssuer"),
        ] {
            assert_eq!(
                Failure::from(&BrokerError::new(kind, message)).message,
                message
            );
        }
    }

    #[test]
    fn refusals_map_to_reasons_and_only_a_draining_queue_is_retried() {
        let key = ObjectKey::new(ObjectKind::Topic, "t");
        let cases = [
            (RefusalKind::Conflict, "Conflict", Retry::AfterChange),
            (
                RefusalKind::PartitionDecrease,
                "PartitionDecreaseNotSupported",
                Retry::AfterChange,
            ),
            (
                RefusalKind::Immutable(Immutable::ReplicationFactor),
                "ReplicationFactorChangeNotSupported",
                Retry::AfterChange,
            ),
            (
                RefusalKind::Immutable(Immutable::QueueArguments),
                "ImmutableQueueArguments",
                Retry::AfterChange,
            ),
            (
                RefusalKind::Immutable(Immutable::MessageOrdering),
                "MessageOrderingChangeNotSupported",
                Retry::AfterChange,
            ),
            (
                RefusalKind::Immutable(Immutable::StreamStorage),
                "StreamStorageChangeNotSupported",
                Retry::AfterChange,
            ),
            (RefusalKind::RetireBlocked, "RetireBlocked", Retry::Backoff),
        ];
        for (kind, reason, retry) in cases {
            let r = Refusal {
                key: key.clone(),
                kind,
                message: "m".into(),
            };
            let f = Failure::from(&r);
            assert_eq!((f.reason, f.retry), (reason, retry), "{kind:?}");
        }
    }

    #[test]
    fn api_errors_name_the_call() {
        let e =
            Error::kube("patch MessageBroker status")(kube::Error::LinesCodecMaxLineLengthExceeded);
        let f = Failure::from(&e);
        assert!(
            f.message.contains("patch MessageBroker status"),
            "{}",
            f.message
        );
        assert_eq!(f.retry, Retry::Backoff);
        let f = Failure::from(&Error::SecretNotFound { secret: "s".into() });
        assert_eq!(f.reason, "SecretNotFound");
    }
}
