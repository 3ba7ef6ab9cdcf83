//! The client data plane (not built yet).

use crate::client::{Binding, ClientError};

/// The transport of a binding.
pub async fn transport(
    binding: &Binding,
) -> Result<std::sync::Arc<dyn crate::client::Transport>, ClientError> {
    Err(ClientError::Unsupported(binding.broker_type().to_string()))
}
