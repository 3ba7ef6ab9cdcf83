//! Error capture and classification for the Kafka clients: librdkafka reports authentication,
//! TLS and transport failures only through its error callback (requests themselves just time
//! out), so a client context remembers them and [`classify`] combines both into a
//! [`BrokerErrorKind`].

use std::sync::{Arc, Mutex};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::brokers::{BrokerError, BrokerErrorKind};

/// The last error librdkafka reported through its error callback (authentication, TLS and
/// transport failures arrive only this way; requests themselves just time out).
#[derive(Clone, Debug)]
pub(super) struct LastError {
    pub(super) code: Option<RDKafkaErrorCode>,
    pub(super) reason: String,
}

/// Errors seen since the last successful request: the latest one, and the latest
/// authentication or TLS failure (which a later "all brokers down" must not hide).
#[derive(Clone, Debug, Default)]
struct Captured {
    latest: Option<LastError>,
    credentials_or_tls: Option<LastError>,
}

/// Client context that remembers the last global errors.
#[derive(Clone, Default)]
pub(super) struct CaptureContext {
    captured: Arc<Mutex<Captured>>,
}

impl CaptureContext {
    /// The most telling error since the last success.
    pub(super) fn take_last(&self) -> Option<LastError> {
        let c = self.captured.lock().unwrap_or_else(|e| e.into_inner());
        c.credentials_or_tls.clone().or_else(|| c.latest.clone())
    }

    /// The authentication or TLS failure seen since the last success, if any.
    pub(super) fn refused(&self) -> Option<LastError> {
        let c = self.captured.lock().unwrap_or_else(|e| e.into_inner());
        c.credentials_or_tls.clone()
    }

    pub(super) fn clear(&self) {
        *self.captured.lock().unwrap_or_else(|e| e.into_inner()) = Captured::default();
    }
}

fn is_credentials_or_tls(code: Option<RDKafkaErrorCode>) -> bool {
    matches!(
        code,
        Some(
            RDKafkaErrorCode::Authentication
                | RDKafkaErrorCode::SaslAuthenticationFailed
                | RDKafkaErrorCode::SSL
        )
    )
}

impl ClientContext for CaptureContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", "{fac} {log_message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", "{fac} {log_message}"),
            _ => tracing::debug!(target: "librdkafka", "{fac} {log_message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(target: "librdkafka", error = %error, reason, "client error");
        let last = LastError {
            code: error.rdkafka_error_code(),
            reason: reason.to_string(),
        };
        let mut c = self.captured.lock().unwrap_or_else(|e| e.into_inner());
        if is_credentials_or_tls(last.code) {
            c.credentials_or_tls = Some(last.clone());
        }
        c.latest = Some(last);
    }
}

impl ConsumerContext for CaptureContext {}

/// Classify an error code, refined by the last error the client reported.
pub(super) fn classify(
    code: Option<RDKafkaErrorCode>,
    last: Option<&LastError>,
    what: &str,
    detail: &str,
) -> BrokerError {
    use RDKafkaErrorCode as C;
    let last_code = last.and_then(|l| l.code);
    let kind = match (code, last_code) {
        (_, Some(C::Authentication | C::SaslAuthenticationFailed))
        | (Some(C::Authentication | C::SaslAuthenticationFailed), _) => {
            BrokerErrorKind::Authentication
        }
        (_, Some(C::SSL)) | (Some(C::SSL), _) => BrokerErrorKind::Tls,
        (
            Some(
                C::TopicAuthorizationFailed
                | C::ClusterAuthorizationFailed
                | C::GroupAuthorizationFailed
                | C::DelegationTokenAuthorizationFailed,
            ),
            _,
        ) => BrokerErrorKind::PermissionDenied,
        (Some(C::BrokerTransportFailure | C::AllBrokersDown | C::Resolve), _) => {
            BrokerErrorKind::Unreachable
        }
        (
            Some(C::OperationTimedOut | C::RequestTimedOut | C::MessageTimedOut),
            Some(C::BrokerTransportFailure | C::AllBrokersDown | C::Resolve),
        ) => BrokerErrorKind::Unreachable,
        (Some(C::OperationTimedOut | C::RequestTimedOut | C::MessageTimedOut), _) => {
            BrokerErrorKind::Timeout
        }
        (
            Some(
                C::InvalidConfig
                | C::PolicyViolation
                | C::InvalidPartitions
                | C::InvalidReplicationFactor
                | C::InvalidReplicaAssignment
                | C::InvalidTopic
                | C::InvalidRequest
                | C::InvalidArgument
                | C::UnsupportedVersion,
            ),
            _,
        ) => BrokerErrorKind::Rejected,
        _ => BrokerErrorKind::Other,
    };
    let mut message = format!("{what}: {detail}");
    if let Some(l) = last
        && kind != BrokerErrorKind::Rejected
        && !l.reason.is_empty()
    {
        message.push_str(&format!(" (last client error: {})", l.reason));
    }
    BrokerError::new(kind, message)
}

pub(super) fn classify_kafka(
    err: &KafkaError,
    last: Option<&LastError>,
    what: &str,
) -> BrokerError {
    match err {
        KafkaError::ClientCreation(m) | KafkaError::ClientConfig(_, m, _, _)
            if m.to_ascii_lowercase().contains("ssl") =>
        {
            BrokerError::new(BrokerErrorKind::Tls, format!("{what}: {m}"))
        }
        KafkaError::ClientCreation(m) | KafkaError::AdminOpCreation(m) => {
            BrokerError::new(BrokerErrorKind::Rejected, format!("{what}: {m}"))
        }
        _ => classify(err.rdkafka_error_code(), last, what, &err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authentication_errors_win_over_timeouts() {
        let last = LastError {
            code: Some(RDKafkaErrorCode::Authentication),
            reason: "SASL authentication error: invalid credentials".into(),
        };
        let e = classify(
            Some(RDKafkaErrorCode::OperationTimedOut),
            Some(&last),
            "metadata",
            "timed out",
        );
        assert_eq!(e.kind, BrokerErrorKind::Authentication);
        assert!(e.message.contains("invalid credentials"), "{}", e.message);
    }

    #[test]
    fn timeouts_after_transport_failures_are_unreachable() {
        let last = LastError {
            code: Some(RDKafkaErrorCode::BrokerTransportFailure),
            reason: "Connect to ipv4#127.0.0.1:1 failed: Connection refused".into(),
        };
        let e = classify(
            Some(RDKafkaErrorCode::OperationTimedOut),
            Some(&last),
            "m",
            "t",
        );
        assert_eq!(e.kind, BrokerErrorKind::Unreachable);
        let e = classify(Some(RDKafkaErrorCode::OperationTimedOut), None, "m", "t");
        assert_eq!(e.kind, BrokerErrorKind::Timeout);
        let tls = LastError {
            code: Some(RDKafkaErrorCode::SSL),
            reason: "SSL handshake failed".into(),
        };
        assert_eq!(
            classify(
                Some(RDKafkaErrorCode::OperationTimedOut),
                Some(&tls),
                "m",
                "t"
            )
            .kind,
            BrokerErrorKind::Tls
        );
        assert_eq!(
            classify(Some(RDKafkaErrorCode::InvalidConfig), None, "m", "t").kind,
            BrokerErrorKind::Rejected
        );
        assert_eq!(
            classify(
                Some(RDKafkaErrorCode::TopicAuthorizationFailed),
                None,
                "m",
                "t"
            )
            .kind,
            BrokerErrorKind::PermissionDenied
        );
    }
}
