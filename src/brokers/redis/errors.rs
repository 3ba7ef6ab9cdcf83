//! Classifying Redis client errors into the reasons a condition can show.

use redis::{ErrorKind, RedisError, ServerErrorKind};

use crate::brokers::{BrokerError, BrokerErrorKind};

/// Classify an error from the client. `context` says what was being done (`PING`, `XGROUP
/// CREATE shop:bus:t billing`); the message never contains credentials: the client reports
/// authentication failures without the password, and our urls carry none.
pub(super) fn classify(err: &RedisError, endpoint: &str, context: &str) -> BrokerError {
    let kind = kind_of(err);
    let detail = match kind {
        BrokerErrorKind::Authentication => {
            "authentication failed (wrong username or password, or no password given)".to_string()
        }
        _ => err.to_string(),
    };
    BrokerError::new(kind, format!("redis {endpoint}: {context}: {detail}"))
}

/// The kind of a client error.
pub(super) fn kind_of(err: &RedisError) -> BrokerErrorKind {
    let code = err.code().unwrap_or_default();
    match err.kind() {
        ErrorKind::AuthenticationFailed => return BrokerErrorKind::Authentication,
        ErrorKind::Server(ServerErrorKind::NoPerm) => return BrokerErrorKind::PermissionDenied,
        ErrorKind::InvalidClientConfig => return BrokerErrorKind::Rejected,
        _ => {}
    }
    match code {
        "NOAUTH" | "WRONGPASS" => return BrokerErrorKind::Authentication,
        "NOPERM" => return BrokerErrorKind::PermissionDenied,
        _ => {}
    }
    if err.is_timeout() {
        return BrokerErrorKind::Timeout;
    }
    if err.is_io_error() {
        let text = err.to_string().to_ascii_lowercase();
        if ["certificate", "tls", "handshake", "unknownissuer"]
            .iter()
            .any(|w| text.contains(w))
        {
            return BrokerErrorKind::Tls;
        }
        if text.contains("timed out") {
            return BrokerErrorKind::Timeout;
        }
        return BrokerErrorKind::Unreachable;
    }
    let text = err.to_string();
    if text.contains("DB index is out of range") {
        return BrokerErrorKind::Rejected;
    }
    BrokerErrorKind::Other
}

/// The error is the server saying a command's subject is missing (`no such key`, `requires the
/// key to exist`) or has the wrong type: proof the command itself was allowed.
pub(super) fn is_allowed_refusal(err: &RedisError) -> bool {
    !matches!(
        kind_of(err),
        BrokerErrorKind::PermissionDenied
            | BrokerErrorKind::Authentication
            | BrokerErrorKind::Unreachable
            | BrokerErrorKind::Timeout
            | BrokerErrorKind::Tls
    ) && err.code().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: &str, detail: &str) -> RedisError {
        redis::make_extension_error(code.to_string(), Some(detail.to_string()))
    }

    #[test]
    fn authentication_and_permission_are_told_apart() {
        assert_eq!(
            kind_of(&server("NOAUTH", "Authentication required.")),
            BrokerErrorKind::Authentication
        );
        assert_eq!(
            kind_of(&server("WRONGPASS", "invalid username-password pair")),
            BrokerErrorKind::Authentication
        );
        assert_eq!(
            kind_of(&RedisError::from((
                ErrorKind::AuthenticationFailed,
                "Password authentication failed"
            ))),
            BrokerErrorKind::Authentication
        );
        assert_eq!(
            kind_of(&server("NOPERM", "User x has no permissions")),
            BrokerErrorKind::PermissionDenied
        );
        let refused = RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        ));
        assert_eq!(kind_of(&refused), BrokerErrorKind::Unreachable);
        let slow = RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "slow"));
        assert_eq!(kind_of(&slow), BrokerErrorKind::Timeout);
    }

    #[test]
    fn missing_key_errors_prove_the_command_was_allowed() {
        assert!(is_allowed_refusal(&server(
            "ERR",
            "The XGROUP subcommand requires the key to exist."
        )));
        assert!(!is_allowed_refusal(&server("NOPERM", "no permissions")));
    }
}
