//! One environment of one MessageBroker: connect, observe, plan (phase 1); apply, bind, swap
//! and retire (phase 2). Each env is independent: one broken env never blocks another.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use kube::runtime::events::EventType;

use super::{Context, swap};
use crate::api::conditions::{self, Desired, reasons, types};
use crate::api::{
    BindingStatus, DeletionPolicy, DrainingStatus, EnvSpec, EnvStatus, SubscriptionStatus,
    SwapPhase, TopicSpec, TopicStatus,
};
use crate::binding;
use crate::brokers::plan::{Plan, PlanInput, owned_after};
use crate::brokers::{
    self, Action, ActionOutcome, Backend, BrokerError, DesiredState, ObjectKey, ObjectKind,
    Observed, Scope,
};
use crate::error::Error;
use crate::failure::Failure;
use crate::metrics::SubscriptionFigures;
use crate::secrets::{self, ResolvedSecrets};

/// What every env of one reconcile shares.
pub(super) struct Shared<'a> {
    pub ctx: &'a Context,
    pub scope: &'a Scope,
    pub topics: &'a [TopicSpec],
    pub policy: DeletionPolicy,
    pub generation: Option<i64>,
    pub now: &'a Time,
    pub owner_ref: OwnerReference,
}

/// An env after phase 1.
pub(super) struct Prepared {
    pub env: EnvSpec,
    pub status: EnvStatus,
    pub stage: Stage,
    /// A swap that started or was cancelled before observing.
    pub announcement: Option<swap::Announcement>,
}

pub(super) enum Stage {
    /// Could not get as far as a plan.
    Blocked {
        conditions: Vec<Desired>,
        transient: bool,
        stalled: bool,
    },
    /// Ready to apply.
    Planned(Box<Planned>),
}

pub(super) struct Planned {
    backend: Arc<dyn Backend>,
    secrets: ResolvedSecrets,
    desired: DesiredState,
    observed: Observed,
    plan: Plan,
    owned: BTreeSet<ObjectKey>,
}

/// An env after phase 2.
pub(super) struct Finished {
    pub status: EnvStatus,
    /// A failure retrying can fix.
    pub transient: Option<String>,
    /// A failure only a spec or broker change can fix: (reason, message).
    pub stalled: Option<(String, String)>,
    /// Events to publish.
    pub events: Vec<(EventType, String, String)>,
    /// The message figures the observation read, per subscription.
    pub flow: Vec<SubscriptionFigures>,
}

impl Prepared {
    /// Keys this pass is about to create or adopt: recorded as owned before applying so an
    /// operator killed mid-apply recognises its own objects afterwards.
    pub fn intents(&self) -> Vec<String> {
        match &self.stage {
            Stage::Planned(p) => p
                .plan
                .actions
                .iter()
                .filter(|a| matches!(a, Action::Create { .. } | Action::Adopt { .. }))
                .map(|a| a.key().to_string())
                .collect(),
            Stage::Blocked { .. } => Vec::new(),
        }
    }
}

fn owned_set(list: &[String]) -> BTreeSet<ObjectKey> {
    list.iter().filter_map(|s| ObjectKey::parse(s)).collect()
}

/// The logical → physical names status records for its topics (`topic`, `topic/sub`,
/// `topic/sub/dlq`), as in a binding's `names.json`.
pub(super) fn status_names(topics: &[crate::api::TopicStatus]) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    for t in topics {
        names.insert(t.name.clone(), t.physical_name.clone());
        for s in &t.subscriptions {
            let logical = format!("{}/{}", t.name, s.name);
            if let Some(dl) = &s.dead_letter {
                names.insert(format!("{logical}/dlq"), dl.clone());
            }
            names.insert(logical, s.physical_name.clone());
        }
    }
    names
}

fn owned_list(set: &BTreeSet<ObjectKey>) -> Vec<String> {
    set.iter().map(ToString::to_string).collect()
}

/// The identity of the endpoint an env points at: a change is a swap.
pub fn endpoint_identity(env: &EnvSpec) -> serde_json::Value {
    brokers::driver(env.broker_type).endpoint_identity(env)
}

fn env_json(env: &EnvSpec) -> Option<serde_json::Value> {
    serde_json::to_value(env).ok()
}

/// Errors that mean the endpoint cannot be used at all, rather than one request failing.
fn is_connectivity(e: &BrokerError) -> bool {
    use brokers::BrokerErrorKind as K;
    matches!(
        e.kind,
        K::Unreachable | K::Timeout | K::Tls | K::Authentication
    )
}

fn broker_failure(e: &BrokerError) -> (Desired, bool, bool) {
    let f = Failure::from(e);
    let transient = f.is_transient();
    (
        Desired::new(types::CONNECTED, false, f.reason, f.message),
        transient,
        !transient,
    )
}

/// Phase 1: resolve credentials, connect, check, observe and plan.
pub(super) async fn prepare(
    shared: &Shared<'_>,
    env: &EnvSpec,
    prev: Option<&EnvStatus>,
) -> Prepared {
    let mut status = prev.cloned().unwrap_or_else(|| EnvStatus {
        slug: env.slug.clone(),
        ..Default::default()
    });
    // A changed endpoint starts a swap; a swap in progress resumes from status.
    let announcement = swap::on_spec(
        &mut status,
        env,
        endpoint_identity,
        &shared.now.0.to_string(),
    );
    let stage = prepare_stage(shared, env, &mut status).await;
    Prepared {
        env: env.clone(),
        status,
        stage,
        announcement,
    }
}

async fn prepare_stage(shared: &Shared<'_>, env: &EnvSpec, status: &mut EnvStatus) -> Stage {
    let blocked = |c: Desired, transient: bool, stalled: bool| Stage::Blocked {
        conditions: vec![c],
        transient,
        stalled,
    };

    let secrets = match secrets::resolve(&shared.ctx.client, &shared.scope.namespace, env).await {
        Ok(s) => s,
        Err(e @ Error::Kube { .. }) => {
            return blocked(
                Desired::new(types::CONNECTED, false, reasons::PROGRESSING, e.to_string()),
                true,
                false,
            );
        }
        Err(e) => {
            return blocked(
                Desired::new(
                    types::CONNECTED,
                    false,
                    reasons::SECRET_NOT_FOUND,
                    e.to_string(),
                ),
                false,
                true,
            );
        }
    };
    let pooled = match shared.ctx.pool.get(env, &secrets).await {
        Ok(b) => b,
        Err(e) => {
            let (c, t, s) = broker_failure(&e);
            return blocked(c, t, s);
        }
    };
    let backend = pooled.backend.clone();
    shared
        .ctx
        .metrics
        .pooled_clients
        .set(shared.ctx.pool.len() as i64);
    let backend_name = env.broker_type.as_str();
    // The endpoint is shared: when another reconcile just talked to it, skip the probe.
    if !pooled.answered_within(shared.ctx.config.check_interval) {
        if let Err(e) = probe(shared, backend.as_ref(), backend_name).await {
            return probe_failed(shared, &pooled, &e);
        }
        pooled.mark_ok();
    }
    let owned = owned_set(&status.owned);
    let desired = match brokers::desired(shared.scope, env, shared.topics, &owned) {
        Ok(d) => d,
        Err(e) => return connected_but(reasons::INVALID_SPEC, e.to_string(), false),
    };
    let input = PlanInput {
        scope: shared.scope,
        owned: &owned,
        deletion_policy: shared.policy,
        adopt_existing: env.adopt_existing,
        capabilities: brokers::capabilities(env.broker_type),
    };
    let observed = async {
        let mut observed = brokers::observe_wanted(backend.as_ref(), &desired, &input).await?;
        // Kafka topics carry no owner marker: the other MessageBrokers' status says whose
        // they are (see owner_index).
        shared.ctx.owners.mark(
            &endpoint_identity(env),
            &shared.scope.owner(),
            &mut observed,
        );
        // Topics that left the spec are read by the subscriptions status still names.
        let mut names = status_names(&status.topics);
        names.extend(desired.names.clone());
        brokers::count_unconsumed(backend.as_ref(), &desired, &names, &input, &mut observed)
            .await?;
        observed.flow = read_flow(shared.ctx, backend.as_ref(), backend_name, &desired).await;
        let plan = brokers::plan::plan(&desired, &observed, &input);
        Ok::<_, BrokerError>((observed, plan))
    };
    let observed = match watched(shared, backend.as_ref(), backend_name, observed).await {
        Ok(r) => r,
        Err(Unanswered(e)) => return probe_failed(shared, &pooled, &e),
    };
    shared
        .ctx
        .metrics
        .broker_op(backend_name, "observe", observed.is_ok());
    match observed {
        Ok((observed, plan)) => {
            pooled.mark_ok();
            Stage::Planned(Box::new(Planned {
                backend,
                secrets,
                desired,
                observed,
                plan,
                owned,
            }))
        }
        // The broker stopped answering since the last probe: report it as a connection problem.
        Err(e) if is_connectivity(&e) => {
            pooled.mark_failed();
            let (c, t, s) = broker_failure(&e);
            blocked(c, t, s)
        }
        Err(e) => {
            let f = Failure::from(&e);
            connected_but(
                f.reason,
                format!("observing the broker failed: {}", f.message),
                f.is_transient(),
            )
        }
    }
}

/// The connectivity probe, bounded by the check timeout.
async fn probe(
    shared: &Shared<'_>,
    backend: &dyn Backend,
    backend_name: &str,
) -> Result<(), BrokerError> {
    let timeout = shared.ctx.config.check_timeout;
    let checked = match tokio::time::timeout(timeout, backend.check()).await {
        Ok(r) => r,
        Err(_) => Err(BrokerError::new(
            brokers::BrokerErrorKind::Timeout,
            format!("no answer within {timeout:?}"),
        )),
    };
    shared
        .ctx
        .metrics
        .broker_op(backend_name, "check", checked.is_ok());
    checked
}

/// A failed probe: the env is blocked on its connection, and a client refused for a reason
/// retrying cannot fix (TLS, credentials, permission) leaves the pool, so it does not go on
/// retrying in the background.
fn probe_failed(shared: &Shared<'_>, pooled: &brokers::pool::Pooled, e: &BrokerError) -> Stage {
    pooled.mark_failed();
    if !e.is_transient() {
        shared.ctx.pool.evict(pooled);
        shared
            .ctx
            .metrics
            .pooled_clients
            .set(shared.ctx.pool.len() as i64);
    }
    let (c, t, s) = broker_failure(e);
    Stage::Blocked {
        conditions: vec![c],
        transient: t,
        stalled: s,
    }
}

/// The probe failed while `work` was still waiting on the broker.
struct Unanswered(BrokerError);

/// Run `work` (broker calls), and whenever it has been waiting for a check timeout, probe the
/// broker alongside it: a failed probe abandons the work. The probe is skipped within the
/// check interval of a good answer, so without this a broker that stops answering (a black
/// hole, latency past the timeout) would only be seen when the client's own call timeouts
/// gave up, or never, where each call still came back inside them. Work that is merely big
/// keeps going as long as the probe answers.
async fn watched<T>(
    shared: &Shared<'_>,
    backend: &dyn Backend,
    backend_name: &str,
    work: impl std::future::Future<Output = T>,
) -> Result<T, Unanswered> {
    let patience = shared.ctx.config.check_timeout;
    tokio::pin!(work);
    loop {
        if let Ok(done) = tokio::time::timeout(patience, &mut work).await {
            return Ok(done);
        }
        tokio::select! {
            done = &mut work => return Ok(done),
            probed = probe(shared, backend, backend_name) => {
                if let Err(e) = probed {
                    return Err(Unanswered(e));
                }
            }
        }
    }
}

/// The figures the broker counts apart from its objects ([`Backend::flow`]). They are only
/// reported: a failed read leaves them out of this pass and blocks nothing.
async fn read_flow(
    ctx: &Context,
    backend: &dyn Backend,
    backend_name: &str,
    desired: &DesiredState,
) -> BTreeMap<String, brokers::FlowReading> {
    let read = backend.flow(&desired.names).await;
    ctx.metrics.broker_op(backend_name, "flow", read.is_ok());
    read.unwrap_or_else(|e| {
        tracing::info!(error = %e, "reading the message-flow figures failed");
        BTreeMap::new()
    })
}

/// The broker answered, but the topics cannot be worked on: why, and whether retrying helps.
fn connected_but(reason: &str, message: String, transient: bool) -> Stage {
    Stage::Blocked {
        conditions: vec![
            Desired::new(
                types::CONNECTED,
                true,
                reasons::CONNECTED,
                "broker answered",
            ),
            Desired::new(types::TOPICS_READY, false, reason, message),
        ],
        transient,
        stalled: !transient,
    }
}

/// Phase 2: apply the plan, write the binding, advance a swap, retire the old side.
pub(super) async fn finish(shared: &Shared<'_>, prepared: Prepared) -> Finished {
    let Prepared {
        env,
        mut status,
        stage,
        announcement,
    } = prepared;
    let mut out = Finished {
        status: EnvStatus::default(),
        transient: None,
        stalled: None,
        events: announcement
            .map(|a| (EventType::Normal, a.reason.to_string(), a.note))
            .into_iter()
            .collect(),
        flow: Vec::new(),
    };
    let mut conds: Vec<Desired> = Vec::new();
    // This side's binding content, when written in this pass.
    let mut this_side: Option<binding::BindingContent> = None;

    match stage {
        Stage::Blocked {
            conditions: c,
            transient,
            stalled,
        } => {
            let first = c
                .iter()
                .find(|d| d.status != conditions::status::TRUE)
                .cloned();
            conds = c;
            if !conds.iter().any(|d| d.type_ == types::TOPICS_READY) {
                conds.push(Desired::new(
                    types::TOPICS_READY,
                    false,
                    reasons::PROGRESSING,
                    "waiting for the broker",
                ));
            }
            if let Some(first) = first {
                let msg = format!("env {}: {}", env.slug, first.message);
                if transient {
                    out.transient = Some(msg.clone());
                }
                if stalled {
                    out.stalled = Some((first.reason.clone(), msg.clone()));
                }
                out.events
                    .push((EventType::Warning, first.reason.clone(), msg));
            }
        }
        Stage::Planned(p) => {
            let Planned {
                backend,
                secrets,
                desired,
                observed,
                plan: the_plan,
                owned,
            } = *p;
            out.flow = flow_figures(&desired, &observed);
            conds.push(Desired::new(
                types::CONNECTED,
                true,
                reasons::CONNECTED,
                "broker answered",
            ));
            let outcomes = if the_plan.actions.is_empty() {
                Vec::new()
            } else {
                let o = brokers::align_outcomes(
                    &the_plan.actions,
                    backend.apply(shared.scope, &the_plan.actions).await,
                );
                let ok = o.iter().all(|x| x.result.is_ok());
                shared
                    .ctx
                    .metrics
                    .broker_op(env.broker_type.as_str(), "apply", ok);
                o
            };
            let next_owned = owned_after(
                &owned,
                &shared.scope.owner(),
                &desired,
                &observed,
                &outcomes,
                &the_plan.actions,
            );
            status.owned = owned_list(&next_owned);
            for key in &the_plan.retained {
                let s = key.to_string();
                if !status.retained.contains(&s) {
                    status.retained.push(s);
                }
            }
            status.notes = desired.notes.clone();
            let before = std::mem::take(&mut status.topics);
            status.topics = topic_statuses(shared.topics, &desired, &the_plan, &outcomes);
            steady_figures(&before, &mut status.topics, &out.flow);
            summarise_actions(&env, &the_plan, &outcomes, &mut out.events);

            let failed = outcomes
                .iter()
                .find_map(|o| o.result.as_ref().err().map(|e| (o.key.clone(), e.clone())));
            let topics_ready = match (&failed, the_plan.refused.first()) {
                (Some((key, e)), _) => {
                    let f = Failure::from(e);
                    let msg = format!("{key}: {}", f.message);
                    let scoped = format!("env {}: {msg}", env.slug);
                    if f.is_transient() {
                        out.transient = Some(scoped);
                    } else {
                        out.stalled = Some((f.reason.to_string(), scoped));
                    }
                    conds.push(Desired::new(types::TOPICS_READY, false, f.reason, msg));
                    false
                }
                (None, Some(_)) => {
                    let refusal = the_plan.permanent_refusal().or(the_plan.refused.first());
                    if let Some(r) = refusal {
                        let f = Failure::from(r);
                        let scoped = format!("env {}: {}", env.slug, f.message);
                        if f.is_transient() {
                            out.transient.get_or_insert(scoped);
                        } else {
                            out.stalled = Some((f.reason.to_string(), scoped));
                        }
                        conds.push(Desired::new(
                            types::TOPICS_READY,
                            f.is_transient(),
                            f.reason,
                            f.message,
                        ));
                    }
                    // A blocked retirement does not make the wanted topics less ready.
                    the_plan.permanent_refusal().is_none()
                }
                (None, None) => {
                    conds.push(Desired::new(
                        types::TOPICS_READY,
                        true,
                        reasons::RECONCILED,
                        "all topics and subscriptions provisioned",
                    ));
                    true
                }
            };

            // Bind: always in steady state; during a swap only once the new side is ready.
            if swap::may_bind(&mut status, topics_ready) {
                match write_binding(shared, &env, &secrets, &desired, &status).await {
                    Ok((b, base)) => {
                        status.binding = Some(b);
                        this_side = Some(base);
                        status.broker_type = Some(env.broker_type);
                        status.active = env_json(&env);
                        conds.push(Desired::new(
                            types::BINDING_READY,
                            true,
                            reasons::RECONCILED,
                            "connection Secret is current",
                        ));
                        if let Some(a) =
                            swap::bound(&mut status, &env.slug, &shared.now.0.to_string())
                        {
                            out.events
                                .push((EventType::Normal, a.reason.into(), a.note));
                        }
                    }
                    Err(e) => {
                        let msg = format!("writing the connection Secret failed: {e}");
                        swap::bind_failed(&mut status, &msg);
                        out.transient = Some(format!("env {}: {msg}", env.slug));
                        conds.push(Desired::new(
                            types::BINDING_READY,
                            false,
                            reasons::PROGRESSING,
                            msg,
                        ));
                    }
                }
            } else {
                conds.push(Desired::new(
                    types::BINDING_READY,
                    status.binding.is_some(),
                    reasons::SWAPPING,
                    "binding points at the previous broker until the new one is ready",
                ));
            }
        }
    }

    if conds.iter().all(|d| d.type_ != types::BINDING_READY) {
        let bound = status.binding.is_some();
        conds.push(Desired::new(
            types::BINDING_READY,
            bound,
            if bound {
                reasons::RECONCILED
            } else {
                reasons::PROGRESSING
            },
            if bound {
                "connection Secret still points at the last known broker"
            } else {
                "waiting for the broker"
            },
        ));
    }

    // Retire the old side of a swap whose binding has flipped, once every app has had the
    // time to move to the new side.
    let grace = swap::grace_left(&status, shared.now.0, shared.ctx.config.swap_grace)
        .filter(|_| swap::retiring(&status));
    if let Some(left) = grace {
        // A stable text (no countdown), so waiting passes write no status.
        let at = shared.now.0 + left;
        let message = format!(
            "draining: the old side is retired after {}, once every app has read the new binding",
            at.round(jiff::Unit::Second).unwrap_or(at)
        );
        if let Some(s) = status.swap.as_mut() {
            s.message = Some(message.clone());
        }
        out.transient
            .get_or_insert(format!("env {}: {message}", env.slug));
    } else if swap::retiring(&status) {
        let outcome = retire_old_side(shared, &status).await;
        if let Some(a) = swap::retired(&mut status, &env.slug, outcome) {
            out.events
                .push((EventType::Normal, a.reason.into(), a.note));
            // The old side is gone: the binding stops naming it now, not on the next pass.
            if let Some(base) = &this_side {
                match store_binding(shared, &env, &status, base).await {
                    Ok(b) => status.binding = Some(b),
                    Err(e) => {
                        out.transient.get_or_insert(format!(
                            "env {}: removing the previous side from the binding failed: {e}",
                            env.slug
                        ));
                    }
                }
            }
        }
        if let Some(msg) = status.swap.as_ref().and_then(|s| s.message.as_ref()) {
            out.transient
                .get_or_insert(format!("env {}: {msg}", env.slug));
        }
    }

    status.conditions =
        conditions::merge(&status.conditions, &conds, shared.generation, shared.now);
    // The figures were read from this env's spec side; their series carry the serving side's
    // type. During a swap, until the binding flips, they would describe the new, empty side
    // under the old side's name: report none rather than that.
    if status.broker_type != Some(env.broker_type) {
        out.flow.clear();
    }
    out.status = status;
    out
}

/// The binding content of a swap's old side while it drains (from the flip until the swap
/// completes), so clients keep consuming what is queued there.
async fn previous_side(
    shared: &Shared<'_>,
    status: &EnvStatus,
) -> Result<Option<binding::BindingContent>, Error> {
    let Some(old) = status
        .swap
        .as_ref()
        .filter(|s| matches!(s.phase, SwapPhase::Switching | SwapPhase::Retiring))
        .and_then(swap::old_side)
    else {
        return Ok(None);
    };
    let secrets = secrets::resolve(&shared.ctx.client, &shared.scope.namespace, &old).await?;
    let info = brokers::connection_info(&old, &secrets)?;
    let old_owned = owned_set(
        &status
            .swap
            .as_ref()
            .map_or_else(Vec::new, |s| s.old_owned.clone()),
    );
    let desired = brokers::desired(shared.scope, &old, shared.topics, &old_owned)?;
    Ok(Some(binding::content(
        old.broker_type,
        &info,
        &desired.names,
        shared.topics,
    )))
}

/// Write the binding: this side's entries, plus the previous side's while a swap drains it.
/// Returns the binding and this side's content alone (for the write once the swap completes).
async fn write_binding(
    shared: &Shared<'_>,
    env: &EnvSpec,
    secrets: &ResolvedSecrets,
    desired: &DesiredState,
    status: &EnvStatus,
) -> Result<(BindingStatus, binding::BindingContent), Error> {
    let info = brokers::connection_info(env, secrets)?;
    let base = binding::content(env.broker_type, &info, &desired.names, shared.topics);
    let content = match previous_side(shared, status).await? {
        Some(previous) => base.clone().with_previous(&previous),
        None => base.clone(),
    };
    let b = store_binding(shared, env, status, &content).await?;
    Ok((b, base))
}

async fn store_binding(
    shared: &Shared<'_>,
    env: &EnvSpec,
    status: &EnvStatus,
    content: &binding::BindingContent,
) -> Result<BindingStatus, Error> {
    let name = binding::secret_name(&shared.scope.name, &env.slug);
    let current = match &shared.ctx.bindings {
        // The watched store also notices a binding deleted behind our back.
        Some(store) => store
            .get(&kube::runtime::reflector::ObjectRef::new(&name).within(&shared.scope.namespace))
            .and_then(|s| {
                s.metadata
                    .annotations
                    .as_ref()?
                    .get(binding::HASH_ANNOTATION)
                    .cloned()
            }),
        None => status.binding.as_ref().map(|b| b.hash.clone()),
    };
    if current.as_deref() != Some(content.hash.as_str()) {
        let labels = BTreeMap::from([
            (
                "switchyard.dev/broker".to_string(),
                shared.scope.name.clone(),
            ),
            ("switchyard.dev/env".to_string(), env.slug.clone()),
        ]);
        shared
            .ctx
            .writing_binding(&shared.scope.namespace, &name, &content.hash);
        binding::write(
            &shared.ctx.client,
            &shared.scope.namespace,
            &name,
            shared.owner_ref.clone(),
            labels,
            env.broker_type,
            content,
        )
        .await?;
        shared.ctx.metrics.binding_writes.inc();
    }
    Ok(BindingStatus {
        name,
        hash: content.hash.clone(),
    })
}

/// Retire what a swap left on the old broker, by the deletion policy.
async fn retire_old_side(shared: &Shared<'_>, status: &EnvStatus) -> swap::Retirement {
    let Some(w) = status.swap.as_ref() else {
        return swap::Retirement::Unknown;
    };
    let Some(old) = swap::old_side(w) else {
        return swap::Retirement::Unknown;
    };
    let owned = owned_set(&w.old_owned);
    let old_desired = brokers::desired(shared.scope, &old, shared.topics, &owned).ok();
    let names = old_desired
        .as_ref()
        .map(|d| d.names.clone())
        .unwrap_or_default();
    let logical: BTreeMap<&ObjectKey, &str> = old_desired
        .iter()
        .flat_map(|d| &d.objects)
        .map(|o| (&o.key, o.logical.as_str()))
        .collect();
    // Under Retain the old side is released untouched, but only once its subscribers have
    // drained it: the binding stops naming it then, and nothing would read it after.
    let retired = match shared.policy {
        DeletionPolicy::Retain => unread(shared.ctx, shared.scope, &old, &owned, &names)
            .await
            .map(|mut held| {
                // Dead letters are kept with the rest; no subscriber drains them.
                held.retain(|k, _| k.kind != ObjectKind::DeadLetter);
                let (remaining, retained) = if held.is_empty() {
                    (BTreeSet::new(), owned.iter().cloned().collect())
                } else {
                    (owned.clone(), Vec::new())
                };
                Retired {
                    remaining,
                    retained,
                    blocked: None,
                    held,
                }
            }),
        DeletionPolicy::Delete => {
            retire(
                shared.ctx,
                shared.scope,
                &old,
                &owned,
                &names,
                shared.policy,
            )
            .await
        }
    };
    match retired {
        Ok(r) => {
            let retained = r.retained.iter().map(ToString::to_string).collect();
            let draining = draining(&r.held, &logical);
            let message = match (&r.blocked, draining.is_empty()) {
                (_, false) => Some(draining_message(&draining)),
                (Some(m), true) => Some(m.clone()),
                (None, true) => None,
            };
            match message {
                Some(message) => swap::Retirement::Waiting {
                    remaining: owned_list(&r.remaining),
                    retained,
                    message,
                    draining,
                },
                None => swap::Retirement::Done { retained },
            }
        }
        Err(e) => swap::Retirement::Failed(e.to_string()),
    }
}

/// "waiting for subscribers to drain 15 messages of the old side (orders/billing: 12, …)".
fn draining_message(draining: &[DrainingStatus]) -> String {
    let total: u64 = draining.iter().map(|d| d.messages).sum();
    let each: Vec<String> = draining
        .iter()
        .map(|d| format!("{}: {}", d.name, d.messages))
        .collect();
    let plural = if total == 1 { "" } else { "s" };
    format!(
        "waiting for subscribers to drain {total} message{plural} of the old side ({})",
        each.join(", ")
    )
}

/// The messages the owned objects of `observed` still hold, where there are any.
fn held(observed: &Observed, owned: &BTreeSet<ObjectKey>) -> BTreeMap<ObjectKey, u64> {
    observed
        .objects
        .iter()
        .filter(|(k, _)| owned.contains(k))
        .filter_map(|(k, o)| Some((k.clone(), o.messages.filter(|n| *n > 0)?)))
        .collect()
}

/// What is left to drain, by logical name (`logical` names each object): per subscription
/// where the broker tells (a queue, a Redis group), else per topic (a Kafka topic counts its
/// slowest consumer group).
fn draining(
    held: &BTreeMap<ObjectKey, u64>,
    logical: &BTreeMap<&ObjectKey, &str>,
) -> Vec<DrainingStatus> {
    let named: BTreeMap<String, u64> = held
        .iter()
        .map(|(k, n)| {
            let name = logical
                .get(k)
                .map_or_else(|| k.name.clone(), |l| l.to_string());
            (name, *n)
        })
        .collect();
    named
        .iter()
        .filter(|(name, _)| {
            // A topic's count is its subscriptions' when they have their own.
            let per_subscription = format!("{name}/");
            !named
                .keys()
                .any(|other| other.starts_with(&per_subscription))
        })
        .map(|(name, n)| DrainingStatus {
            name: name.clone(),
            messages: *n,
        })
        .collect()
}

/// What the subscriptions of an env's owned objects have not consumed yet (nothing changes
/// on the broker).
async fn unread(
    ctx: &Context,
    scope: &Scope,
    env: &EnvSpec,
    owned: &BTreeSet<ObjectKey>,
    names: &BTreeMap<String, String>,
) -> Result<BTreeMap<ObjectKey, u64>, Error> {
    if owned.is_empty() {
        return Ok(BTreeMap::new());
    }
    let backend = pooled_backend(ctx, scope, env).await?;
    // Counted as for a deletion: every owned object leaves this env.
    let input = PlanInput {
        scope,
        owned,
        deletion_policy: DeletionPolicy::Delete,
        adopt_existing: false,
        capabilities: brokers::capabilities(env.broker_type),
    };
    let nothing = DesiredState {
        names: names.clone(),
        ..DesiredState::default()
    };
    let (observed, _) = brokers::observe_and_plan(backend.as_ref(), &nothing, &input)
        .await
        .map_err(Error::Broker)?;
    Ok(held(&observed, owned))
}

/// The pooled backend of an env's endpoint.
async fn pooled_backend(
    ctx: &Context,
    scope: &Scope,
    env: &EnvSpec,
) -> Result<Arc<dyn Backend>, Error> {
    let secrets = secrets::resolve(&ctx.client, &scope.namespace, env).await?;
    Ok(ctx
        .pool
        .get(env, &secrets)
        .await
        .map_err(Error::Broker)?
        .backend)
}

/// What the observation told of each subscription: its backlog (the messages its queue or
/// group holds: ready + unacked on RabbitMQ, pending + lag on Redis, visible + in flight on
/// SQS; on Kafka its consumer group's lag, from [`Observed::flow`]), how long its oldest
/// unacknowledged message has waited (Redis), and the depth of its dead-letter destination (on
/// Redis and Kafka one stream or topic per topic, shared by its subscriptions). Pub/Sub gives
/// none: its admin API does not count messages.
fn flow_figures(desired: &DesiredState, observed: &Observed) -> Vec<SubscriptionFigures> {
    let messages = |key: &ObjectKey| observed.objects.get(key).and_then(|o| o.messages);
    let dead: BTreeMap<&str, u64> = desired
        .objects
        .iter()
        .filter(|o| o.key.kind == ObjectKind::DeadLetter)
        .filter_map(|o| Some((o.key.name.as_str(), messages(&o.key)?)))
        .collect();
    let mut out: BTreeMap<(String, String), SubscriptionFigures> = BTreeMap::new();
    fn entry<'a>(
        out: &'a mut BTreeMap<(String, String), SubscriptionFigures>,
        topic: &str,
        sub: &str,
    ) -> &'a mut SubscriptionFigures {
        out.entry((topic.to_string(), sub.to_string()))
            .or_insert_with(|| SubscriptionFigures {
                topic: topic.to_string(),
                subscription: sub.to_string(),
                ..SubscriptionFigures::default()
            })
    }
    for o in &desired.objects {
        let Some((topic, sub)) = o.logical.split_once('/').filter(|(_, s)| !s.contains('/')) else {
            continue;
        };
        if !matches!(o.key.kind, ObjectKind::Queue | ObjectKind::Subscription) {
            continue;
        }
        if let Some(n) = messages(&o.key) {
            let f = entry(&mut out, topic, sub);
            f.backlog = Some(f.backlog.unwrap_or(0).max(n));
        }
        if let Some(age) = observed.oldest_unacked.get(&o.key) {
            let f = entry(&mut out, topic, sub);
            f.oldest_unacked = Some(f.oldest_unacked.map_or(*age, |a| a.max(*age)));
        }
    }
    for (logical, physical) in &desired.names {
        let Some((topic, sub)) = logical.strip_suffix("/dlq").and_then(|l| l.split_once('/'))
        else {
            continue;
        };
        if let Some(n) = dead.get(physical.as_str()) {
            entry(&mut out, topic, sub).dead_letters = Some(*n);
        }
    }
    // Read apart from the objects, and at the flow interval: newer where both tell.
    for (logical, reading) in &observed.flow {
        let Some((topic, sub)) = logical.split_once('/') else {
            continue;
        };
        if reading.backlog.is_none() && reading.dead_letters.is_none() {
            continue;
        }
        let f = entry(&mut out, topic, sub);
        f.backlog = reading.backlog.or(f.backlog);
        f.dead_letters = reading.dead_letters.or(f.dead_letters);
    }
    out.into_values().collect()
}

/// Put the flow figures into the topic statuses, keeping the written value while the new one
/// is within [`moved`] of it, so steady or slowly moving backlogs make no status write.
fn steady_figures(
    before: &[TopicStatus],
    topics: &mut [TopicStatus],
    flow: &[SubscriptionFigures],
) {
    for t in topics.iter_mut() {
        let old = before.iter().find(|b| b.name == t.name);
        for s in &mut t.subscriptions {
            let written = old.and_then(|o| o.subscriptions.iter().find(|p| p.name == s.name));
            let now = flow
                .iter()
                .find(|f| f.topic == t.name && f.subscription == s.name);
            let keep = |was: Option<u64>, now: Option<u64>| match (was, now) {
                (Some(w), Some(n)) if !moved(w, n) => Some(w),
                (_, n) => n,
            };
            s.backlog = keep(written.and_then(|w| w.backlog), now.and_then(|f| f.backlog));
            s.dead_letters = keep(
                written.and_then(|w| w.dead_letters),
                now.and_then(|f| f.dead_letters),
            );
        }
    }
}

/// Whether a count moved enough to be written again: it reached or left zero, or changed by at
/// least 10 messages and 20 %.
fn moved(was: u64, now: u64) -> bool {
    let delta = was.abs_diff(now);
    (was == 0) != (now == 0) || (delta >= 10 && delta * 5 >= was.max(now))
}

/// Result of retiring owned objects.
pub(super) struct Retired {
    /// Still owned (blocked or failed deletes).
    pub remaining: BTreeSet<ObjectKey>,
    /// Left in place by policy.
    pub retained: Vec<ObjectKey>,
    /// Why retirement is not finished, if it is not.
    pub blocked: Option<String>,
    /// Messages the objects that wait still hold.
    pub held: BTreeMap<ObjectKey, u64>,
}

/// Remove (Delete) or leave (Retain) every owned object of an env. Retain never touches the
/// broker, so an unreachable broker cannot wedge a deletion under Retain.
pub(super) async fn retire(
    ctx: &Context,
    scope: &Scope,
    env: &EnvSpec,
    owned: &BTreeSet<ObjectKey>,
    names: &BTreeMap<String, String>,
    policy: DeletionPolicy,
) -> Result<Retired, Error> {
    if policy == DeletionPolicy::Retain || owned.is_empty() {
        return Ok(Retired {
            remaining: BTreeSet::new(),
            retained: owned.iter().cloned().collect(),
            blocked: None,
            held: BTreeMap::new(),
        });
    }
    let backend = pooled_backend(ctx, scope, env).await?;
    let input = PlanInput {
        scope,
        owned,
        deletion_policy: policy,
        adopt_existing: false,
        capabilities: brokers::capabilities(env.broker_type),
    };
    // Nothing is wanted; `names` says which subscriptions read what leaves.
    let nothing = DesiredState {
        names: names.clone(),
        ..DesiredState::default()
    };
    let brokers::Converged {
        plan: the_plan,
        observed,
        outcomes,
        owned: remaining,
        ..
    } = brokers::converge_desired(backend.as_ref(), nothing, &input)
        .await
        .map_err(Error::Broker)?;
    let failed = outcomes
        .iter()
        .find_map(|o| o.result.as_ref().err().map(|e| format!("{}: {e}", o.key)));
    let blocked = failed.or_else(|| {
        the_plan
            .refused
            .first()
            .map(|r| format!("{}: {}", crate::failure::refusal_reason(r.kind), r.message))
    });
    Ok(Retired {
        held: held(&observed, &remaining),
        remaining,
        retained: Vec::new(),
        blocked,
    })
}

fn topic_statuses(
    topics: &[TopicSpec],
    desired: &DesiredState,
    plan: &Plan,
    outcomes: &[ActionOutcome],
) -> Vec<TopicStatus> {
    let mut problems: BTreeMap<String, String> = BTreeMap::new();
    for r in &plan.refused {
        problems
            .entry(r.key.name.clone())
            .or_insert_with(|| r.message.clone());
    }
    for o in outcomes {
        if let Err(e) = &o.result {
            problems
                .entry(o.key.name.clone())
                .or_insert_with(|| e.message.clone());
        }
    }
    // Which logical topic each physical object serves.
    let mut per_topic: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for o in &desired.objects {
        let topic = o.logical.split('/').next().unwrap_or_default();
        per_topic
            .entry(topic)
            .or_default()
            .push(o.key.name.as_str());
    }
    topics
        .iter()
        .map(|t| {
            let message = per_topic
                .get(t.name.as_str())
                .into_iter()
                .flatten()
                .find_map(|name| problems.get(*name).cloned());
            TopicStatus {
                name: t.name.clone(),
                physical_name: desired.names.get(&t.name).cloned().unwrap_or_default(),
                ready: message.is_none(),
                message,
                subscriptions: t
                    .subscriptions
                    .iter()
                    .map(|s| {
                        let key = format!("{}/{}", t.name, s.name);
                        SubscriptionStatus {
                            name: s.name.clone(),
                            physical_name: desired.names.get(&key).cloned().unwrap_or_default(),
                            dead_letter: desired.names.get(&format!("{key}/dlq")).cloned(),
                            backlog: None,
                            dead_letters: None,
                        }
                    })
                    .collect(),
            }
        })
        .collect()
}

fn summarise_actions(
    env: &EnvSpec,
    plan: &Plan,
    outcomes: &[ActionOutcome],
    events: &mut Vec<(EventType, String, String)>,
) {
    let mut created = 0;
    let mut updated = 0;
    let mut deleted = 0;
    for (a, o) in plan.actions.iter().zip(outcomes) {
        if o.result.is_err() {
            continue;
        }
        match a {
            Action::Create { .. } | Action::Adopt { .. } => created += 1,
            Action::Update { .. } | Action::AddPartitions { .. } => updated += 1,
            Action::Delete { .. } => deleted += 1,
        }
    }
    let topics_created = plan
        .actions
        .iter()
        .zip(outcomes)
        .filter(|(a, o)| {
            o.result.is_ok()
                && matches!(a, Action::Create { object } if object.key.kind == ObjectKind::Topic)
        })
        .count();
    if created > 0 {
        events.push((
            EventType::Normal,
            "Created".into(),
            format!(
                "env {}: created {created} object(s) on {} ({topics_created} topic(s))",
                env.slug, env.broker_type
            ),
        ));
    }
    if updated > 0 {
        events.push((
            EventType::Normal,
            "Updated".into(),
            format!("env {}: updated {updated} object(s)", env.slug),
        ));
    }
    if deleted > 0 {
        events.push((
            EventType::Normal,
            "Deleted".into(),
            format!("env {}: deleted {deleted} object(s)", env.slug),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backlog_is_rewritten_only_when_it_moves_by_a_meaningful_amount() {
        // (written, now, rewritten)
        for (was, now, rewrite) in [
            (0, 0, false),
            (0, 1, true),
            (1, 0, true),
            (6, 4, false),
            (100, 110, false),
            (100, 125, true),
            (100, 75, true),
            (40, 49, false),
            (40, 50, true),
        ] {
            assert_eq!(moved(was, now), rewrite, "{was} → {now}");
        }
        let status = |backlog| {
            vec![TopicStatus {
                name: "orders".into(),
                subscriptions: vec![SubscriptionStatus {
                    name: "billing".into(),
                    backlog,
                    ..Default::default()
                }],
                ..Default::default()
            }]
        };
        let flow = |n| {
            vec![SubscriptionFigures {
                topic: "orders".into(),
                subscription: "billing".into(),
                backlog: Some(n),
                ..Default::default()
            }]
        };
        let mut topics = status(None);
        steady_figures(&status(Some(100)), &mut topics, &flow(104));
        assert_eq!(topics[0].subscriptions[0].backlog, Some(100), "kept");
        steady_figures(&status(Some(100)), &mut topics, &flow(0));
        assert_eq!(topics[0].subscriptions[0].backlog, Some(0), "drained");
    }

    #[test]
    fn flow_figures_take_group_lag_ages_and_dead_letters_from_where_the_broker_tells() {
        let scope = Scope::new("shop", "bus");
        let env: EnvSpec = serde_json::from_value(serde_json::json!({
            "slug": "prd", "type": "Kafka", "kafka": {"bootstrapServers": ["k:9092"]}
        }))
        .expect("env");
        let topics: Vec<TopicSpec> = serde_json::from_value(serde_json::json!([{
            "name": "orders",
            "subscriptions": [
                {"name": "billing", "deadLetter": {"maxDeliveryAttempts": 5}},
                {"name": "shipping"}
            ]
        }]))
        .expect("topics");
        let desired = brokers::desired(&scope, &env, &topics, &BTreeSet::new()).expect("desired");
        let dlq = desired.names["orders/billing/dlq"].clone();
        let mut observed = Observed::default();
        // The topic snapshot's count of the dead-letter topic, older than the flow read.
        observed.objects.insert(
            ObjectKey::new(ObjectKind::DeadLetter, dlq),
            brokers::ObservedObject {
                messages: Some(1),
                ..Default::default()
            },
        );
        observed.flow.insert(
            "orders/billing".into(),
            brokers::FlowReading {
                backlog: Some(6),
                dead_letters: Some(2),
            },
        );
        observed.flow.insert(
            "orders/shipping".into(),
            brokers::FlowReading {
                backlog: Some(10),
                dead_letters: None,
            },
        );
        let got = flow_figures(&desired, &observed);
        let by_sub = |s: &str| got.iter().find(|f| f.subscription == s).cloned();
        assert_eq!(
            by_sub("billing").map(|f| (f.backlog, f.dead_letters)),
            Some((Some(6), Some(2))),
            "the flow read is newer than the topic snapshot"
        );
        assert_eq!(
            by_sub("shipping").map(|f| (f.backlog, f.dead_letters, f.oldest_unacked)),
            Some((Some(10), None, None))
        );

        // A Redis group's age comes with its object.
        let group = ObjectKey::new(ObjectKind::Subscription, "shop:bus:orders/billing");
        let desired = DesiredState {
            objects: vec![brokers::DesiredObject {
                key: group.clone(),
                logical: "orders/billing".into(),
                parent: None,
                partitions: None,
                config: BTreeMap::new(),
            }],
            ..Default::default()
        };
        let mut observed = Observed::default();
        observed.objects.insert(
            group.clone(),
            brokers::ObservedObject {
                messages: Some(3),
                ..Default::default()
            },
        );
        observed
            .oldest_unacked
            .insert(group, std::time::Duration::from_secs(42));
        let got = flow_figures(&desired, &observed);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].backlog, Some(3));
        assert_eq!(
            got[0].oldest_unacked,
            Some(std::time::Duration::from_secs(42))
        );
    }

    #[test]
    fn draining_counts_per_subscription_where_the_broker_tells_else_per_topic() {
        let stream = ObjectKey::new(ObjectKind::Topic, "ns:bus:orders");
        let group = ObjectKey::new(ObjectKind::Subscription, "ns:bus:orders/billing");
        let kafka = ObjectKey::new(ObjectKind::Topic, "ns.bus.payments");
        let gone = ObjectKey::new(ObjectKind::Queue, "ns.bus.refunds.audit");
        let logical = BTreeMap::from([
            (&stream, "orders"),
            (&group, "orders/billing"),
            (&kafka, "payments"),
        ]);
        let held = BTreeMap::from([
            (stream.clone(), 12),
            (group.clone(), 12),
            (kafka.clone(), 4),
            (gone.clone(), 1),
        ]);
        let got: Vec<(String, u64)> = draining(&held, &logical)
            .into_iter()
            .map(|d| (d.name, d.messages))
            .collect();
        assert_eq!(
            got,
            [
                // A topic no longer in the spec keeps its physical name.
                ("ns.bus.refunds.audit".to_string(), 1),
                ("orders/billing".to_string(), 12),
                ("payments".to_string(), 4),
            ]
        );
        assert_eq!(
            draining_message(&draining(&held, &logical)),
            "waiting for subscribers to drain 17 messages of the old side \
             (ns.bus.refunds.audit: 1, orders/billing: 12, payments: 4)"
        );
    }
}
