//! The CRD as YAML, generated from the Rust types (`switchyard crd`, and `crds/` in the repo).

use kube::CustomResourceExt;

use crate::api::MessageBroker;
use crate::error::Error;

/// The MessageBroker CRD as a YAML document.
pub fn yaml() -> Result<String, Error> {
    serde_norway::to_string(&MessageBroker::crd()).map_err(|e| Error::Serialization(e.to_string()))
}

#[cfg(test)]
mod tests {
    /// The committed CRD must match the types; run `make crds` after changing the API.
    #[test]
    fn committed_crd_matches_generated() {
        let generated = super::yaml().expect("CRD serialises");
        let committed = include_str!("../crds/switchyard.dev_messagebrokers.yaml");
        assert!(
            generated == committed,
            "crds/switchyard.dev_messagebrokers.yaml is stale: run `make crds` and commit the result"
        );
    }
}
