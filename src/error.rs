//! The one error type of the operator. Each variant names the step that failed and maps to a
//! category string used in metrics, Events and condition reasons.

use crate::brokers::BrokerError;

/// Errors of the reconcile pipeline and the CLI.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {call}: {source}")]
    Kube {
        /// The call that failed, e.g. `patch MessageBroker status`.
        call: &'static str,
        /// What the API server or the transport said.
        #[source]
        source: kube::Error,
    },

    /// A referenced Secret does not exist.
    #[error("Secret {secret:?} not found in the MessageBroker's namespace")]
    SecretNotFound {
        /// Secret name.
        secret: String,
    },

    /// A referenced key is missing from its Secret.
    #[error("Secret {secret:?} has no key {key:?}")]
    SecretKeyMissing {
        /// Secret name.
        secret: String,
        /// Missing key.
        key: String,
    },

    /// A Secret value is not UTF-8 text.
    #[error("Secret {secret:?} key {key:?} is not UTF-8 text")]
    SecretNotUtf8 {
        /// Secret name.
        secret: String,
        /// Key.
        key: String,
    },

    /// The spec passed the API server but cannot be acted on.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),

    /// A broker call failed.
    #[error("broker: {0}")]
    Broker(#[source] BrokerError),

    /// The object lacks a namespace or name (never true for objects from the API server).
    #[error("object has no {0}")]
    MissingMetadata(&'static str),

    /// Serialising YAML or JSON failed.
    #[error("serialization: {0}")]
    Serialization(String),

    /// Reading input files failed.
    #[error("{0}")]
    Io(String),

    /// This instance lost the leader Lease and must stop reconciling.
    #[error("lost the leader lease {lease}: {reason}")]
    LeaseLost {
        /// namespace/name of the Lease.
        lease: String,
        /// Why it counts as lost.
        reason: String,
    },
}

impl Error {
    /// A mapper for `map_err` that names the Kubernetes call that failed.
    pub fn kube(call: &'static str) -> impl FnOnce(kube::Error) -> Error {
        move |source| Error::Kube { call, source }
    }

    /// A short category for metrics labels and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube",
            Error::SecretNotFound { .. }
            | Error::SecretKeyMissing { .. }
            | Error::SecretNotUtf8 { .. } => "secret",
            Error::InvalidSpec(_) => "invalid_spec",
            Error::Broker(_) => "broker",
            Error::MissingMetadata(_) => "metadata",
            Error::Serialization(_) => "serialization",
            Error::Io(_) => "io",
            Error::LeaseLost { .. } => "leader",
        }
    }

    /// Whether retrying without a spec change can help.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::InvalidSpec(_) | Error::MissingMetadata(_) | Error::Serialization(_) => false,
            Error::Broker(b) => b.is_transient(),
            _ => true,
        }
    }
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;
