//! Classifying NATS and JetStream API errors into the reasons a condition can show.

use async_nats::{ConnectError, ConnectErrorKind};

use crate::brokers::{BrokerError, BrokerErrorKind};

/// JetStream API error codes (`err_code`) this backend tells apart.
pub(super) mod codes {
    /// The stream does not exist.
    pub const STREAM_NOT_FOUND: u64 = 10059;
    /// The consumer does not exist.
    pub const CONSUMER_NOT_FOUND: u64 = 10014;
    /// A stream of that name exists with another configuration.
    pub const STREAM_NAME_IN_USE: u64 = 10058;
    /// A consumer of that name exists.
    pub const CONSUMER_EXISTS: u64 = 10148;
    /// The account has no JetStream.
    pub const NOT_ENABLED_FOR_ACCOUNT: u64 = 10039;
    /// The server has no JetStream.
    pub const NOT_ENABLED: u64 = 10076;
    /// The account's stream limit.
    pub const MAXIMUM_STREAMS: u64 = 10027;
    /// The account's consumer limit.
    pub const MAXIMUM_CONSUMERS: u64 = 10026;
    /// Not enough storage or memory for the stream.
    pub const INSUFFICIENT_RESOURCES: u64 = 10023;
    /// The account's storage limit.
    pub const STORAGE_EXCEEDED: u64 = 10047;
    /// The account's memory limit.
    pub const MEMORY_EXCEEDED: u64 = 10028;
    /// Subjects overlap those of another stream.
    pub const SUBJECT_OVERLAP: u64 = 10065;
}

/// An error reply of the JetStream API (`{"error": {"code", "err_code", "description"}}`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ApiError {
    pub code: u64,
    pub err_code: u64,
    pub description: String,
}

impl ApiError {
    /// The error of a reply, if it is one.
    pub fn of(reply: &serde_json::Value) -> Option<ApiError> {
        let e = reply.get("error")?;
        Some(ApiError {
            code: e.get("code").and_then(|v| v.as_u64()).unwrap_or_default(),
            err_code: e
                .get("err_code")
                .and_then(|v| v.as_u64())
                .unwrap_or_default(),
            description: e
                .get("description")
                .and_then(|v| v.as_str())
                .unwrap_or("unknown error")
                .to_string(),
        })
    }

    /// Whether the error says the stream or consumer asked about does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.err_code,
            codes::STREAM_NOT_FOUND | codes::CONSUMER_NOT_FOUND
        )
    }
}

/// Classify a JetStream API error. `context` says what was being done
/// (`STREAM.CREATE shop_bus_t`).
pub(super) fn classify_api(e: &ApiError, endpoint: &str, context: &str) -> BrokerError {
    use codes::*;
    let (kind, detail) = match e.err_code {
        NOT_ENABLED_FOR_ACCOUNT => (
            BrokerErrorKind::PermissionDenied,
            format!(
                "{} (the user's account has no JetStream; enable it for the account)",
                e.description
            ),
        ),
        NOT_ENABLED => (
            BrokerErrorKind::NotFound,
            format!("{} (start the server with JetStream on)", e.description),
        ),
        MAXIMUM_STREAMS
        | MAXIMUM_CONSUMERS
        | INSUFFICIENT_RESOURCES
        | STORAGE_EXCEEDED
        | MEMORY_EXCEEDED => (
            BrokerErrorKind::Rejected,
            format!(
                "JetStream limits exceeded: {} (raise the account's JetStream limits or remove streams)",
                e.description
            ),
        ),
        SUBJECT_OVERLAP => (
            BrokerErrorKind::Rejected,
            format!(
                "{} (another stream already captures this subject; set subjectPrefix)",
                e.description
            ),
        ),
        STREAM_NAME_IN_USE | CONSUMER_EXISTS => (
            BrokerErrorKind::Other,
            format!(
                "{}; it appeared since it was observed and is examined again on the next pass",
                e.description
            ),
        ),
        _ if e.code == 403 || e.code == 401 => {
            (BrokerErrorKind::PermissionDenied, e.description.clone())
        }
        _ if e.code == 400 || e.code == 404 => (BrokerErrorKind::Rejected, e.description.clone()),
        _ => (BrokerErrorKind::Other, e.description.clone()),
    };
    BrokerError::new(
        kind,
        format!(
            "nats {endpoint}: {context}: {detail} (err_code {})",
            e.err_code
        ),
    )
}

/// Classify a connection failure. The client reports authentication failures without the
/// credentials, and our server URLs carry none.
pub(super) fn classify_connect(e: &ConnectError, endpoint: &str) -> BrokerError {
    let kind = match e.kind() {
        ConnectErrorKind::Authentication | ConnectErrorKind::AuthorizationViolation => {
            BrokerErrorKind::Authentication
        }
        ConnectErrorKind::TimedOut => BrokerErrorKind::Timeout,
        ConnectErrorKind::Tls => BrokerErrorKind::Tls,
        ConnectErrorKind::ServerParse => BrokerErrorKind::Rejected,
        ConnectErrorKind::Dns | ConnectErrorKind::Io | ConnectErrorKind::MaxReconnects => {
            BrokerErrorKind::Unreachable
        }
    };
    let detail = match kind {
        BrokerErrorKind::Authentication => {
            "authentication failed (wrong credentials, or none given where the server needs them)"
                .to_string()
        }
        _ => e.to_string(),
    };
    BrokerError::new(kind, format!("nats {endpoint}: connect: {detail}"))
}

/// A publish the server refused for the user's permissions (`-ERR 'Permissions Violation
/// for Publish to "$JS.API.INFO"'`): the request itself then never gets an answer.
pub(super) fn permission_denied(endpoint: &str, context: &str, server_says: &str) -> BrokerError {
    BrokerError::new(
        BrokerErrorKind::PermissionDenied,
        format!(
            "nats {endpoint}: {context}: {server_says} (the user needs publish permission on $JS.API.> and subscribe permission on its inbox)"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u64, err_code: u64) -> ApiError {
        ApiError {
            code,
            err_code,
            description: "d".into(),
        }
    }

    #[test]
    fn api_errors_are_told_apart() {
        let kind = |e: ApiError| classify_api(&e, "n", "c").kind;
        assert_eq!(
            kind(api(503, codes::NOT_ENABLED_FOR_ACCOUNT)),
            BrokerErrorKind::PermissionDenied
        );
        assert_eq!(
            kind(api(400, codes::MAXIMUM_STREAMS)),
            BrokerErrorKind::Rejected
        );
        assert!(
            classify_api(&api(400, codes::MAXIMUM_STREAMS), "n", "c")
                .message
                .contains("limits exceeded")
        );
        assert_eq!(
            kind(api(400, codes::STREAM_NAME_IN_USE)),
            BrokerErrorKind::Other,
            "a race, retried"
        );
        assert_eq!(kind(api(500, 10000)), BrokerErrorKind::Other);
        assert!(api(404, codes::STREAM_NOT_FOUND).is_not_found());
        assert!(!api(400, codes::MAXIMUM_STREAMS).is_not_found());
    }

    #[test]
    fn replies_without_an_error_are_not_errors() {
        assert_eq!(ApiError::of(&serde_json::json!({"config": {}})), None);
        let e = ApiError::of(&serde_json::json!({"error": {"code": 404, "err_code": 10059, "description": "stream not found"}}))
            .expect("an error");
        assert!(e.is_not_found());
    }
}
