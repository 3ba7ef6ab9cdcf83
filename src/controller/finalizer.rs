//! The one finalizer every Switchyard instance shares.
//!
//! Instances may split the envs of one MessageBroker between them (`--env`). They all hold the
//! object with the same finalizer name; on deletion each retires the envs it manages and drops
//! them from `status.envs` (a write guarded by the resourceVersion, so two instances never
//! overwrite each other's removal). The instance that leaves `status.envs` empty removes the
//! finalizer. Changing `--env` therefore never leaves a finalizer nobody removes.
//!
//! Earlier releases named the finalizer after the `--env` list (`switchyard.dev/cleanup.<envs>`,
//! cut to 63 characters). Those names are replaced by the fixed one on the next pass, and removed
//! together with it on deletion.

use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};

use super::RawMessageBroker;
use crate::error::Error;

/// The finalizer name.
pub const FINALIZER: &str = "switchyard.dev/cleanup";

/// Whether a finalizer is one of the per-`--env` names of earlier releases.
fn is_legacy(name: &str) -> bool {
    name.strip_prefix(FINALIZER)
        .is_some_and(|rest| rest.starts_with('.'))
}

/// Whether the object is held by Switchyard (the fixed name or a legacy one).
pub fn holds(finalizers: &[String]) -> bool {
    finalizers.iter().any(|f| f == FINALIZER || is_legacy(f))
}

/// The finalizers a live object should carry: ours once, no legacy names, others untouched.
/// `None` when the list is already so.
pub fn with_ours(finalizers: &[String]) -> Option<Vec<String>> {
    let mut next: Vec<String> = finalizers
        .iter()
        .filter(|f| !is_legacy(f))
        .cloned()
        .collect();
    if !next.iter().any(|f| f == FINALIZER) {
        next.push(FINALIZER.to_string());
    }
    (next != finalizers).then_some(next)
}

/// The finalizers once cleanup is complete: ours and the legacy names gone.
pub fn without_ours(finalizers: &[String]) -> Vec<String> {
    finalizers
        .iter()
        .filter(|f| *f != FINALIZER && !is_legacy(f))
        .cloned()
        .collect()
}

/// Store a finalizer list, guarded by the resourceVersion it was computed from: a concurrent
/// change (another controller's finalizer) makes this fail, and the next pass recomputes.
/// An object that is already gone counts as done.
pub async fn store(
    api: &Api<RawMessageBroker>,
    raw: &RawMessageBroker,
    finalizers: Vec<String>,
) -> Result<(), Error> {
    try_store(api, raw, finalizers)
        .await
        .map_err(Error::kube("patch MessageBroker finalizers"))
}

/// Release the object once cleanup is done: drop our finalizer. Cleanup itself writes status,
/// so the resourceVersion `raw` was read at is usually stale by now; on that conflict the
/// object is read again and the finalizers recomputed from what it holds now (another
/// controller's stay), once, instead of failing the pass and waiting out a backoff.
pub async fn release(api: &Api<RawMessageBroker>, raw: &RawMessageBroker) -> Result<(), Error> {
    let error = Error::kube("patch MessageBroker finalizers");
    match try_store(api, raw, without_ours(raw.finalizers())).await {
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let Some(fresh) = api
                .get_opt(&raw.name_any())
                .await
                .map_err(Error::kube("get MessageBroker"))?
            else {
                return Ok(());
            };
            if !holds(fresh.finalizers()) {
                return Ok(());
            }
            try_store(api, &fresh, without_ours(fresh.finalizers()))
                .await
                .map_err(error)
        }
        other => other.map_err(error),
    }
}

async fn try_store(
    api: &Api<RawMessageBroker>,
    raw: &RawMessageBroker,
    finalizers: Vec<String>,
) -> kube::Result<()> {
    let patch = serde_json::json!({
        "metadata": {
            "resourceVersion": raw.metadata.resource_version,
            "finalizers": finalizers,
        }
    });
    match api
        .patch(
            &raw.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_string()).collect()
    }

    #[test]
    fn a_live_object_gets_the_fixed_name_and_loses_the_legacy_ones() {
        assert_eq!(with_ours(&[]), Some(list(&["switchyard.dev/cleanup"])));
        assert_eq!(
            with_ours(&list(&["other.io/x", "switchyard.dev/cleanup.dev.prd"])),
            Some(list(&["other.io/x", "switchyard.dev/cleanup"]))
        );
        assert_eq!(with_ours(&list(&["switchyard.dev/cleanup"])), None);
        // A name that only shares the prefix is not ours.
        assert_eq!(
            with_ours(&list(&[
                "switchyard.dev/cleanupx",
                "switchyard.dev/cleanup"
            ])),
            None
        );
    }

    #[test]
    fn cleanup_removes_every_switchyard_name_and_nothing_else() {
        let current = list(&[
            "switchyard.dev/cleanup.prd",
            "other.io/x",
            "switchyard.dev/cleanup",
            "switchyard.dev/cleanup.dev.prd",
        ]);
        assert!(holds(&current));
        assert_eq!(without_ours(&current), list(&["other.io/x"]));
        assert!(!holds(&list(&["other.io/x"])));
    }
}
