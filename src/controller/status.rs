//! Top-level conditions (kstatus: Ready, Reconciling, Stalled) and the status write, made only
//! when something changed so an idle operator writes nothing.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};

use super::{Context, RawMessageBroker};
use crate::api::conditions::{self, Desired, reasons, types};
use crate::api::{
    EnvStatus, MessageBroker, MessageBrokerSpec, MessageBrokerStatus, ProvisionedBinding,
};
use crate::binding::MANAGER;
use crate::error::Error;

/// The overall judgement of one pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every env is ready.
    Ready(String),
    /// Work is under way or being retried: (reason, message).
    Progressing(String, String),
    /// Needs a change to the spec or the broker: (reason, message).
    Stalled(String, String),
}

/// Judge the envs of a spec from their statuses.
pub fn verdict(
    spec: &MessageBrokerSpec,
    envs: &[EnvStatus],
    stalled: Option<(String, String)>,
    transient: Option<String>,
) -> Verdict {
    if let Some((reason, message)) = stalled {
        return Verdict::Stalled(reason, message);
    }
    let mut not_ready = None;
    for e in &spec.envs {
        let Some(s) = envs.iter().find(|s| s.slug == e.slug) else {
            not_ready.get_or_insert((
                reasons::PROGRESSING.to_string(),
                format!("env {}: not reconciled yet", e.slug),
            ));
            continue;
        };
        for t in [types::CONNECTED, types::TOPICS_READY, types::BINDING_READY] {
            match conditions::find(&s.conditions, t) {
                Some(c) if c.status == conditions::status::TRUE => {}
                Some(c) => {
                    not_ready.get_or_insert((
                        c.reason.clone(),
                        format!("env {}: {}", e.slug, c.message),
                    ));
                }
                None => {
                    not_ready.get_or_insert((
                        reasons::PROGRESSING.to_string(),
                        format!("env {}: {t} not known yet", e.slug),
                    ));
                }
            }
        }
        if let Some(why) = super::swap::holds_ready(s) {
            not_ready.get_or_insert((
                reasons::SWAPPING.to_string(),
                format!("env {}: {why}", e.slug),
            ));
        }
    }
    match (not_ready, transient) {
        (Some((reason, message)), _) => Verdict::Progressing(reason, message),
        (None, Some(message)) => Verdict::Progressing(reasons::PROGRESSING.to_string(), message),
        (None, None) => Verdict::Ready(format!("{} env(s) ready", spec.envs.len())),
    }
}

/// Set observedGeneration and the top-level conditions.
pub fn set_top(
    status: &mut MessageBrokerStatus,
    generation: Option<i64>,
    now: &Time,
    verdict: Verdict,
) {
    let desired = match verdict {
        Verdict::Ready(msg) => vec![Desired::new(types::READY, true, reasons::RECONCILED, msg)],
        Verdict::Progressing(reason, msg) => vec![
            Desired::new(types::READY, false, &reason, msg.clone()),
            Desired::new(types::RECONCILING, true, &reason, msg),
        ],
        Verdict::Stalled(reason, msg) => vec![
            Desired::new(types::READY, false, &reason, msg.clone()),
            Desired::new(types::STALLED, true, &reason, msg),
        ],
    };
    status.conditions = conditions::merge(&status.conditions, &desired, generation, now);
    status.observed_generation = generation;
}

/// `status.binding`: the binding of the first env (in spec order) that has one.
pub fn provisioned_binding(envs: &[EnvStatus]) -> Option<ProvisionedBinding> {
    envs.iter()
        .find_map(|e| e.binding.as_ref())
        .map(|b| ProvisionedBinding {
            name: b.name.clone(),
        })
}

/// `prd:Kafka dev:Redis`, from the type that serves each env (the spec's type before the first pass).
pub fn env_summary(spec: &MessageBrokerSpec, envs: &[EnvStatus]) -> String {
    spec.envs
        .iter()
        .map(|e| {
            let t = envs
                .iter()
                .find(|s| s.slug == e.slug)
                .and_then(|s| s.broker_type)
                .unwrap_or(e.broker_type);
            format!("{}:{t}", e.slug)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Write the status with server-side apply, only when it differs from what is stored.
/// Returns whether a write happened.
pub async fn write_if_changed(
    ctx: &Context,
    raw: &RawMessageBroker,
    prev: &MessageBrokerStatus,
    next: &MessageBrokerStatus,
) -> Result<bool, Error> {
    // `prev` is what is stored (or what we last wrote, when the cache lags): nothing to do.
    if prev == next {
        return Ok(false);
    }
    write(ctx, raw, next, None).await?;
    Ok(true)
}

/// Write the status only when it differs from `prev`, and only if the stored object is still
/// the version `raw` is (a concurrent writer makes this fail with a conflict, and the next pass
/// starts from what that writer stored).
pub async fn write_guarded(
    ctx: &Context,
    raw: &RawMessageBroker,
    prev: &MessageBrokerStatus,
    next: &MessageBrokerStatus,
) -> Result<(), Error> {
    if prev != next {
        write(ctx, raw, next, raw.metadata.resource_version.as_deref()).await?;
    }
    Ok(())
}

async fn write(
    ctx: &Context,
    raw: &RawMessageBroker,
    next: &MessageBrokerStatus,
    resource_version: Option<&str>,
) -> Result<(), Error> {
    let namespace = raw.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let api: Api<RawMessageBroker> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut body = serde_json::json!({
        "apiVersion": MessageBroker::api_version(&()),
        "kind": MessageBroker::kind(&()),
        "metadata": {"name": raw.name_any()},
        "status": next,
    });
    if let Some(rv) = resource_version {
        body["metadata"]["resourceVersion"] = rv.into();
    }
    api.patch_status(
        &raw.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(Error::kube("patch MessageBroker status"))?;
    ctx.metrics.status_writes.inc();
    ctx.remember_status(raw, next);
    Ok(())
}
