//! Reconcile one MessageBroker: parse → validate → per env (phase 1: connect, observe, plan) →
//! record intents → per env (phase 2: apply, bind, swap, retire) → status, written only when it changed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference, Time};
use kube::api::DeleteParams;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::{Api, Resource, ResourceExt};
use tracing::{Instrument, debug, info, info_span, warn};

use super::env::{self, Shared};
use super::finalizer;
use super::status::{self, Verdict};
use super::{ABANDON_ANNOTATION, Context, RawMessageBroker};
use crate::api::conditions::{Desired, reasons, types};
use crate::api::{
    BrokerType, DeletionPolicy, EnvSpec, EnvStatus, MessageBroker, MessageBrokerSpec,
    MessageBrokerStatus,
};
use crate::brokers::{ObjectKey, Scope};
use crate::error::Error;
use crate::metrics::{EnvFigures, MessageBrokerFigures, SubscriptionFigures};

/// The reconcile entry point: hold the object with the finalizer, then apply; on deletion,
/// clean up and release it (see [`finalizer`]).
pub async fn reconcile(raw: Arc<RawMessageBroker>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.timer();
    let namespace = raw.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let span = info_span!("reconcile", namespace = %namespace, name = %raw.name_any());
    let api: Api<RawMessageBroker> = Api::namespaced(ctx.client.clone(), &namespace);
    async {
        if raw.metadata.deletion_timestamp.is_none() {
            if let Some(next) = finalizer::with_ours(raw.finalizers()) {
                // The patch's own watch event starts the pass that applies.
                finalizer::store(&api, &raw, next).await?;
                return Ok(Action::await_change());
            }
            return apply(raw, &ctx).await;
        }
        if !finalizer::holds(raw.finalizers()) {
            return Ok(Action::await_change());
        }
        match cleanup(&raw, &ctx).await? {
            Cleanup::Done => {
                finalizer::release(&api, &raw).await?;
                ctx.forget(&raw);
                Ok(Action::await_change())
            }
            // Another instance's envs remain; its removal (or this resync) finishes the job.
            Cleanup::OthersPending => Ok(Action::requeue(ctx.config.resync)),
            Cleanup::Blocked => {
                let key = format!("{namespace}/{}", raw.name_any());
                Ok(Action::requeue(ctx.backoff(&key)))
            }
        }
    }
    .instrument(span)
    .await
}

/// Where deletion stands after one cleanup pass of this instance.
#[derive(Debug, PartialEq, Eq)]
enum Cleanup {
    /// Nothing of the object is left on any broker: the finalizer can go.
    Done,
    /// This instance's envs are clean; envs another instance manages are not yet.
    OthersPending,
    /// A broker refused or could not be reached: retry with backoff.
    Blocked,
}

fn now() -> Time {
    Time(jiff::Timestamp::now())
}

fn owner_reference(raw: &RawMessageBroker) -> Result<OwnerReference, Error> {
    Ok(OwnerReference {
        api_version: MessageBroker::api_version(&()).to_string(),
        kind: MessageBroker::kind(&()).to_string(),
        name: raw.name_any(),
        uid: raw
            .metadata
            .uid
            .clone()
            .ok_or(Error::MissingMetadata("uid"))?,
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

/// Checks the API server cannot express (the schema and CEL rules catch the rest).
pub fn validate(spec: &MessageBrokerSpec) -> Result<(), String> {
    for t in &spec.topics {
        t.retention_duration()
            .map_err(|e| format!("topic {:?}: retention {e}", t.name))?;
    }
    for e in &spec.envs {
        let present = BrokerType::ALL
            .iter()
            .filter(|t| crate::brokers::driver(**t).has_settings(e))
            .count();
        if present != 1 || !crate::brokers::driver(e.broker_type).has_settings(e) {
            return Err(format!(
                "env {:?}: exactly the settings block of type {} must be set",
                e.slug, e.broker_type
            ));
        }
    }
    Ok(())
}

async fn publish(ctx: &Context, raw: &RawMessageBroker, events: Vec<(EventType, String, String)>) {
    let reference = raw.object_ref(&());
    for (type_, reason, note) in events {
        let kind = if type_ == EventType::Normal {
            "Normal"
        } else {
            "Warning"
        };
        if type_ == EventType::Normal && !ctx.event_budget.take(&reason, std::time::Instant::now())
        {
            ctx.metrics.event(kind, &reason, false);
            continue;
        }
        ctx.metrics.event(kind, &reason, true);
        let ev = KubeEvent {
            type_,
            reason: reason.clone(),
            note: Some(event_note(note)),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&ev, &reference).await {
            warn!(error = %e, reason = %reason, "publishing an event failed");
        }
    }
}

/// The API server refuses an Event whose note exceeds 1 KiB (`events.k8s.io/v1`).
pub(super) const EVENT_NOTE_MAX: usize = 1024;

/// A note cut to [`EVENT_NOTE_MAX`] bytes on a character boundary, marked with `…` when cut.
pub(super) fn event_note(note: String) -> String {
    if note.len() <= EVENT_NOTE_MAX {
        return note;
    }
    const MARK: &str = "…";
    let mut end = EVENT_NOTE_MAX - MARK.len();
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &note[..end])
}

async fn stall(
    raw: &RawMessageBroker,
    ctx: &Context,
    prev: &MessageBrokerStatus,
    message: String,
) -> Result<Action, Error> {
    let mut next = prev.clone();
    status::set_top(
        &mut next,
        raw.metadata.generation,
        &now(),
        Verdict::Stalled(reasons::INVALID_SPEC.into(), message.clone()),
    );
    status::write_if_changed(ctx, raw, prev, &next).await?;
    if let Some(namespace) = raw.namespace() {
        ctx.metrics.flow.record(
            &namespace,
            &raw.name_any(),
            &figures(&next, BTreeMap::new()),
        );
    }
    publish(
        ctx,
        raw,
        vec![(EventType::Warning, reasons::INVALID_SPEC.into(), message)],
    )
    .await;
    Ok(Action::await_change())
}

async fn apply(raw: Arc<RawMessageBroker>, ctx: &Context) -> Result<Action, Error> {
    let prev = ctx.previous_status(&raw);
    let spec: MessageBrokerSpec = match raw.spec() {
        Ok(s) => s,
        Err(e) => return stall(&raw, ctx, &prev, format!("the spec cannot be read: {e}")).await,
    };
    if let Err(msg) = validate(&spec) {
        return stall(&raw, ctx, &prev, msg).await;
    }
    let namespace = raw.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let scope = Scope::new(namespace, raw.name_any());
    let now = now();
    // A new spec: say so before changing anything on a broker, so GitOps tools never read a
    // missing or old status as the verdict on this generation. The word goes out with the
    // intents below in one write; while observing, observedGeneration lags the generation,
    // which kstatus, Argo CD and Flux already read as in progress. So a generation costs at
    // most two status writes: the intents, and the result.
    let mut prev = prev;
    let mut early = None;
    if prev.observed_generation != raw.metadata.generation {
        let mut e = prev.clone();
        let message = format!(
            "reconciling generation {}",
            raw.metadata.generation.unwrap_or_default()
        );
        status::set_top(
            &mut e,
            raw.metadata.generation,
            &now,
            Verdict::Progressing(reasons::PROGRESSING.into(), message),
        );
        early = Some(e);
    }
    let shared = Shared {
        ctx,
        scope: &scope,
        topics: &spec.topics,
        policy: spec.deletion_policy,
        generation: raw.metadata.generation,
        now: &now,
        owner_ref: owner_reference(&raw)?,
    };

    let managed: Vec<&EnvSpec> = spec
        .envs
        .iter()
        .filter(|e| ctx.config.manages(&e.slug))
        .collect();
    let prev_envs = prev.envs.clone();
    let prepared = futures::future::join_all(managed.iter().map(|e| {
        env::prepare(&shared, e, prev_envs.iter().find(|s| s.slug == e.slug))
            .instrument(info_span!("env", env = %e.slug, phase = "observe"))
    }))
    .await;

    // Record what is about to be created (and a swap that starts) before touching the broker.
    if early.is_some()
        || prepared.iter().any(|p| {
            !p.intents().is_empty()
                || prev_env(&prev, &p.env.slug).map(|s| &s.swap) != Some(&p.status.swap)
        })
    {
        let mut intent = early.clone().unwrap_or_else(|| prev.clone());
        for p in &prepared {
            let mut s = p.status.clone();
            let mut owned: BTreeSet<String> = s.owned.into_iter().collect();
            owned.extend(p.intents());
            s.owned = owned.into_iter().collect();
            upsert_env(&mut intent.envs, s);
        }
        status::write_if_changed(ctx, &raw, &prev, &intent).await?;
        if let Some(e) = early {
            prev = e;
        }
    }

    let finished = futures::future::join_all(prepared.into_iter().map(|p| {
        let span = info_span!("env", env = %p.env.slug, phase = "apply");
        env::finish(&shared, p).instrument(span)
    }))
    .await;

    let mut next = prev.clone();
    let mut events = Vec::new();
    let mut transient = None;
    let mut stalled = None;
    let mut flow = BTreeMap::new();
    for f in finished {
        flow.insert(f.status.slug.clone(), f.flow);
        events.extend(f.events);
        transient = transient.or(f.transient);
        stalled = stalled.or(f.stalled);
        upsert_env(&mut next.envs, f.status);
    }
    let removed = retire_removed_envs(ctx, &scope, &spec, &mut next, &mut events).await;
    transient = transient.or(removed);
    // Keep status in spec order; drop entries of envs that left the spec and are retired.
    next.envs.sort_by_key(|s| {
        spec.envs
            .iter()
            .position(|e| e.slug == s.slug)
            .unwrap_or(usize::MAX)
    });
    next.topic_count = i32::try_from(spec.topics.len()).unwrap_or(i32::MAX);
    next.backlog = next
        .envs
        .iter()
        .flat_map(|e| &e.topics)
        .flat_map(|t| &t.subscriptions)
        .filter_map(|s| s.backlog)
        .reduce(|a, b| a + b);
    next.env_summary = status::env_summary(&spec, &next.envs);
    next.binding = status::provisioned_binding(&next.envs);
    let verdict = status::verdict(&spec, &next.envs, stalled, transient.clone());
    status::set_top(&mut next, raw.metadata.generation, &now, verdict);
    let wrote = status::write_if_changed(ctx, &raw, &prev, &next).await?;
    if wrote {
        debug!("status updated");
    }
    ctx.metrics
        .flow
        .record(&scope.namespace, &scope.name, &figures(&next, flow));
    publish(ctx, &raw, events).await;

    let key = format!("{}/{}", scope.namespace, scope.name);
    match transient {
        Some(msg) => {
            ctx.metrics.error("broker");
            let delay = ctx.backoff(&key);
            info!(reason = %msg, retry_in = ?delay, "not ready yet");
            Ok(Action::requeue(delay))
        }
        None => {
            ctx.reset_backoff(&key);
            Ok(Action::requeue(spread(ctx.config.pass_interval(), &key)))
        }
    }
}

/// What the metrics say of a MessageBroker after a reconcile: its conditions, and per env
/// the figures its observation read (`flow`, by env slug).
fn figures(
    status: &MessageBrokerStatus,
    mut flow: BTreeMap<String, Vec<SubscriptionFigures>>,
) -> MessageBrokerFigures {
    let holds = |conds: &[Condition], t: &str| {
        conds
            .iter()
            .any(|c| c.type_ == t && c.status == crate::api::conditions::status::TRUE)
    };
    MessageBrokerFigures {
        ready: holds(&status.conditions, types::READY),
        stalled: holds(&status.conditions, types::STALLED),
        envs: status
            .envs
            .iter()
            .map(|e| EnvFigures {
                env: e.slug.clone(),
                backend: e
                    .broker_type
                    .map(|t| t.as_str().to_string())
                    .unwrap_or_default(),
                ready: !e.conditions.is_empty()
                    && e.conditions
                        .iter()
                        .all(|c| c.status == crate::api::conditions::status::TRUE),
                connected: holds(&e.conditions, types::CONNECTED),
                subscriptions: flow.remove(&e.slug).unwrap_or_default(),
            })
            .collect(),
    }
}

/// The resync interval stretched by 0–20 % per object, so resources created together do not
/// resync together forever.
fn spread(resync: std::time::Duration, key: &str) -> std::time::Duration {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    let fraction = (h.finish() % 1000) as f64 / 5000.0;
    resync.mul_f64(1.0 + fraction)
}

fn prev_env<'a>(prev: &'a MessageBrokerStatus, slug: &str) -> Option<&'a EnvStatus> {
    prev.envs.iter().find(|s| s.slug == slug)
}

fn upsert_env(envs: &mut Vec<EnvStatus>, status: EnvStatus) {
    match envs.iter_mut().find(|s| s.slug == status.slug) {
        Some(existing) => *existing = status,
        None => envs.push(status),
    }
}

/// Envs that left the spec: retire their objects by policy, then forget them.
/// Returns a message when retirement has to be retried.
async fn retire_removed_envs(
    ctx: &Context,
    scope: &Scope,
    spec: &MessageBrokerSpec,
    next: &mut MessageBrokerStatus,
    events: &mut Vec<(EventType, String, String)>,
) -> Option<String> {
    let mut retry = None;
    let mut keep = Vec::new();
    for s in std::mem::take(&mut next.envs) {
        let gone = !spec.envs.iter().any(|e| e.slug == s.slug) && ctx.config.manages(&s.slug);
        if !gone {
            keep.push(s);
            continue;
        }
        match retire_env_status(ctx, scope, &s, spec.deletion_policy).await {
            Ok(None) => {
                delete_binding(ctx, scope, &s).await;
                events.push((
                    EventType::Normal,
                    "EnvRemoved".into(),
                    format!("env {} removed", s.slug),
                ));
            }
            Ok(Some(msg)) | Err(msg) => {
                retry = Some(format!("env {}: {msg}", s.slug));
                keep.push(s);
            }
        }
    }
    next.envs = keep;
    retry
}

/// Retire everything an env status owns (and a swap's old side). `Ok(None)` when done.
async fn retire_env_status(
    ctx: &Context,
    scope: &Scope,
    s: &EnvStatus,
    policy: DeletionPolicy,
) -> Result<Option<String>, String> {
    // The serving side's subscriptions are in status; the old side of a swap under way keeps
    // its observed counts.
    let serving = (
        s.active.clone(),
        s.owned.clone(),
        env::status_names(&s.topics),
    );
    let old = s
        .swap
        .as_ref()
        .map(|w| (w.old.clone(), w.old_owned.clone(), BTreeMap::new()));
    let sides = std::iter::once(serving).chain(old);
    for (active, owned, names) in sides {
        let owned: BTreeSet<ObjectKey> = owned.iter().filter_map(|k| ObjectKey::parse(k)).collect();
        if owned.is_empty() || policy == DeletionPolicy::Retain {
            continue;
        }
        let Some(env) = active.and_then(|v| serde_json::from_value::<EnvSpec>(v).ok()) else {
            continue;
        };
        let r = env::retire(ctx, scope, &env, &owned, &names, policy)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(blocked) = r.blocked {
            return Ok(Some(blocked));
        }
    }
    Ok(None)
}

async fn delete_binding(ctx: &Context, scope: &Scope, s: &EnvStatus) {
    if let Some(b) = &s.binding {
        let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &scope.namespace);
        if let Err(e) = api.delete(&b.name, &DeleteParams::default()).await
            && !matches!(&e, kube::Error::Api(s) if s.code == 404)
        {
            debug!(error = %e, secret = %b.name, "deleting binding Secret failed");
        }
    }
}

/// Deletion: retire the broker-side objects of the envs this instance manages by the deletion
/// policy (nothing under Retain), unless an admin set the abandon annotation; remove their
/// binding Secrets; drop them from `status.envs`. Done when no env is left there.
async fn cleanup(raw: &RawMessageBroker, ctx: &Context) -> Result<Cleanup, Error> {
    // The stored status, not our last written copy: the removal below is guarded by this
    // object's resourceVersion, so split instances never overwrite each other's removal.
    let prev = raw.status().unwrap_or_default();
    let namespace = raw.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let scope = Scope::new(namespace, raw.name_any());
    let policy = raw.spec().map(|s| s.deletion_policy).unwrap_or_default();
    let abandon = raw
        .annotations()
        .get(ABANDON_ANNOTATION)
        .is_some_and(|v| v == "true");

    let mut blocked = Vec::new();
    let mut next = prev.clone();
    next.envs.clear();
    for s in &prev.envs {
        // Abandoning releases every env, whichever instance manages it.
        if !abandon && !ctx.config.manages(&s.slug) {
            next.envs.push(s.clone());
            continue;
        }
        if !abandon {
            match retire_env_status(ctx, &scope, s, policy).await {
                Ok(None) => {}
                Ok(Some(msg)) | Err(msg) => {
                    blocked.push(format!("env {}: {msg}", s.slug));
                    next.envs.push(s.clone());
                    continue;
                }
            }
        }
        delete_binding(ctx, &scope, s).await;
    }
    if blocked.is_empty() {
        status::write_guarded(ctx, raw, &prev, &next).await?;
        if !next.envs.is_empty() {
            return Ok(Cleanup::OthersPending);
        }
        let note = if abandon {
            "cleanup abandoned by annotation; broker objects left in place"
        } else {
            "cleanup complete"
        };
        publish(
            ctx,
            raw,
            vec![(EventType::Normal, reasons::DELETING.into(), note.into())],
        )
        .await;
        ctx.metrics.flow.forget(&scope.namespace, &scope.name);
        return Ok(Cleanup::Done);
    }
    let message = format!(
        "deletion waits for broker cleanup ({}); set annotation {ABANDON_ANNOTATION}=true to leave broker objects in place",
        blocked.join("; ")
    );
    let conds = vec![
        Desired::new(types::READY, false, reasons::DELETING, message.clone()),
        Desired::new(types::RECONCILING, true, reasons::DELETING, message.clone()),
    ];
    next.conditions =
        crate::api::conditions::merge(&prev.conditions, &conds, raw.metadata.generation, &now());
    status::write_guarded(ctx, raw, &prev, &next).await?;
    ctx.metrics.error("broker");
    warn!(reason = %message, "deletion blocked");
    publish(
        ctx,
        raw,
        vec![(EventType::Warning, reasons::DELETING.into(), message)],
    )
    .await;
    Ok(Cleanup::Blocked)
}
