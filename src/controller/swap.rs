//! The broker swap of one env, as one state machine with no I/O:
//!
//! ```text
//!   endpoint changes ─▶ Provisioning ──new side ready──▶ Switching ──binding written──▶ Retiring
//!                          │  ▲                             │                             │
//!          endpoint back ──┘  └──── new side not ready ─────┘              old side gone ─┘
//!          (cancelled)                                                          ▼
//!                                                                            Complete
//! ```
//!
//! - **Provisioning**: the new side is being created; the binding still points at the old one.
//! - **Switching**: the new side is ready; the binding is being flipped (a failed write stays
//!   here and is retried; the old side keeps serving).
//! - **Retiring**: the binding points at the new side; the old side is retired by the deletion
//!   policy (under Delete, a destination still holding messages waits).
//! - **Complete**: nothing of the old side is left that the policy would remove.
//!
//! The controller calls these functions with what it observed and performs the I/O they ask
//! for; the status records the phase, so a restart resumes where the last pass stopped.

use crate::api::{DrainingStatus, EnvSpec, EnvStatus, SwapPhase, SwapStatus};

/// The identity of the endpoint an env points at (see `Driver::endpoint_identity`).
pub type Identity = serde_json::Value;

/// What a transition asks the controller to announce (an Event reason and note).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    /// Event reason.
    pub reason: &'static str,
    /// Event note.
    pub note: String,
}

/// The env spec the swap started from.
pub fn old_side(swap: &SwapStatus) -> Option<EnvSpec> {
    swap.old
        .as_ref()
        .and_then(|v| serde_json::from_value(v.clone()).ok())
}

/// Whether a swap is under way (not finished).
pub fn in_progress(status: &EnvStatus) -> bool {
    status
        .swap
        .as_ref()
        .is_some_and(|s| s.phase != SwapPhase::Complete)
}

/// Before a pass: start a swap when the endpoint changed, or cancel one that has not flipped
/// yet when the spec points back at the old side. `identity` is the driver's endpoint identity.
pub fn on_spec(
    status: &mut EnvStatus,
    env: &EnvSpec,
    identity: impl Fn(&EnvSpec) -> Identity,
    now: &str,
) -> Option<Announcement> {
    let active: Option<EnvSpec> = status
        .active
        .clone()
        .and_then(|v| serde_json::from_value(v).ok());
    if let Some(active) = &active
        && !in_progress(status)
        && identity(active) != identity(env)
    {
        status.swap = Some(SwapStatus {
            from: active.broker_type,
            to: env.broker_type,
            phase: SwapPhase::Provisioning,
            started_at: now.to_string(),
            switched_at: None,
            message: None,
            old: status.active.clone(),
            old_owned: std::mem::take(&mut status.owned),
            draining: Vec::new(),
        });
        return Some(Announcement {
            reason: "SwapStarted",
            note: format!(
                "env {}: swapping from {} to {}",
                env.slug, active.broker_type, env.broker_type
            ),
        });
    }
    let swap = status.swap.as_mut()?;
    let unflipped = matches!(swap.phase, SwapPhase::Provisioning | SwapPhase::Switching);
    let back = old_side(swap).is_some_and(|old| identity(&old) == identity(env));
    if unflipped && back {
        // Swapped back before the flip: the old side never stopped serving. What the new
        // side created stays listed as retained.
        let old_owned = std::mem::take(&mut swap.old_owned);
        status
            .retained
            .extend(std::mem::replace(&mut status.owned, old_owned));
        status.swap = None;
        return Some(Announcement {
            reason: "SwapCancelled",
            note: format!(
                "env {}: the spec points back at the serving broker",
                env.slug
            ),
        });
    }
    None
}

/// Whether this pass may write the binding: always outside a swap and after the flip; during
/// Provisioning and Switching only once the new side is ready (which moves Provisioning on to
/// Switching).
pub fn may_bind(status: &mut EnvStatus, new_side_ready: bool) -> bool {
    let Some(swap) = status.swap.as_mut() else {
        return true;
    };
    match swap.phase {
        SwapPhase::Retiring | SwapPhase::Complete => true,
        SwapPhase::Provisioning | SwapPhase::Switching if new_side_ready => {
            swap.phase = SwapPhase::Switching;
            swap.message = None;
            true
        }
        SwapPhase::Provisioning | SwapPhase::Switching => {
            swap.phase = SwapPhase::Provisioning;
            swap.message = Some(
                "waiting for the new broker to become ready; the binding still points at the old one"
                    .into(),
            );
            false
        }
    }
}

/// The binding was written: a Switching swap has flipped and starts retiring the old side.
pub fn bound(status: &mut EnvStatus, slug: &str, now: &str) -> Option<Announcement> {
    let swap = status
        .swap
        .as_mut()
        .filter(|s| s.phase == SwapPhase::Switching)?;
    swap.phase = SwapPhase::Retiring;
    swap.switched_at = Some(now.to_string());
    swap.message = None;
    Some(Announcement {
        reason: "Switched",
        note: format!("env {slug}: binding now points at {}", swap.to),
    })
}

/// The binding write failed while switching: the swap stays in Switching and says why.
pub fn bind_failed(status: &mut EnvStatus, message: &str) {
    if let Some(swap) = status
        .swap
        .as_mut()
        .filter(|s| s.phase == SwapPhase::Switching)
    {
        swap.message = Some(message.to_string());
    }
}

/// Whether the old side is to be retired in this pass.
pub fn retiring(status: &EnvStatus) -> bool {
    status
        .swap
        .as_ref()
        .is_some_and(|s| s.phase == SwapPhase::Retiring)
}

/// How much longer the old side is kept after the flip (`grace` from `switched_at`), so apps
/// still on the old binding publish where subscribers drain; `None` once it may be retired.
pub fn grace_left(
    status: &EnvStatus,
    now: jiff::Timestamp,
    grace: std::time::Duration,
) -> Option<std::time::Duration> {
    let switched: jiff::Timestamp = status.swap.as_ref()?.switched_at.as_ref()?.parse().ok()?;
    let elapsed = now.duration_since(switched).unsigned_abs();
    grace.checked_sub(elapsed).filter(|left| !left.is_zero())
}

/// How retiring the old side went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Retirement {
    /// The old side's endpoint settings are unreadable: nothing can be retired.
    Unknown,
    /// Everything the policy removes is gone; `retained` are left in place by it.
    Done {
        /// Objects left by policy.
        retained: Vec<String>,
    },
    /// Some objects wait (they still hold messages).
    Waiting {
        /// Still owned by the old side.
        remaining: Vec<String>,
        /// Objects left by policy.
        retained: Vec<String>,
        /// Why.
        message: String,
        /// What apps have still to consume there.
        draining: Vec<DrainingStatus>,
    },
    /// The broker call failed; retried.
    Failed(String),
}

/// Record a retirement pass. Returns the announcement of completion, if the swap completed.
pub fn retired(status: &mut EnvStatus, slug: &str, outcome: Retirement) -> Option<Announcement> {
    let swap = status
        .swap
        .as_mut()
        .filter(|s| s.phase == SwapPhase::Retiring)?;
    let (retained, done) = match outcome {
        Retirement::Unknown => (Vec::new(), true),
        Retirement::Done { retained } => (retained, true),
        Retirement::Waiting {
            remaining,
            retained,
            message,
            draining,
        } => {
            swap.old_owned = remaining;
            swap.message = Some(message);
            swap.draining = draining;
            (retained, false)
        }
        Retirement::Failed(message) => {
            swap.message = Some(format!(
                "retiring the old {} side failed: {message}",
                swap.from
            ));
            (Vec::new(), false)
        }
    };
    let announcement = done.then(|| {
        swap.phase = SwapPhase::Complete;
        swap.message = None;
        swap.old_owned.clear();
        swap.draining.clear();
        Announcement {
            reason: "SwapComplete",
            note: format!(
                "env {slug}: swap from {} to {} complete",
                swap.from, swap.to
            ),
        }
    });
    for k in retained {
        if !status.retained.contains(&k) {
            status.retained.push(k);
        }
    }
    announcement
}

/// Why the swap keeps the env from Ready, if it does: the binding has not flipped yet.
pub fn holds_ready(status: &EnvStatus) -> Option<String> {
    status
        .swap
        .as_ref()
        .filter(|s| matches!(s.phase, SwapPhase::Provisioning | SwapPhase::Switching))
        .map(|s| format!("swapping from {} to {}", s.from, s.to))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::BrokerType;

    fn env(t: BrokerType, url: &str) -> EnvSpec {
        serde_json::from_value(match t {
            BrokerType::Redis => serde_json::json!({"slug": "prd", "type": "Redis", "redis": {"url": url}}),
            BrokerType::Kafka => serde_json::json!({"slug": "prd", "type": "Kafka", "kafka": {"bootstrapServers": [url]}}),
            _ => unreachable!("two types are enough here"),
        })
        .expect("env")
    }

    /// Endpoint identity as a test sees it: the whole spec.
    fn id(e: &EnvSpec) -> Identity {
        serde_json::to_value(e).expect("json")
    }

    fn serving(e: &EnvSpec, owned: &[&str]) -> EnvStatus {
        EnvStatus {
            slug: e.slug.clone(),
            active: serde_json::to_value(e).ok(),
            owned: owned.iter().map(|s| (*s).to_string()).collect(),
            ..EnvStatus::default()
        }
    }

    fn phase(s: &EnvStatus) -> Option<SwapPhase> {
        s.swap.as_ref().map(|w| w.phase)
    }

    #[test]
    fn a_swap_walks_every_phase_in_order() {
        let redis = env(BrokerType::Redis, "redis://r:6379");
        let kafka = env(BrokerType::Kafka, "k:9092");
        let mut s = serving(&redis, &["stream/a"]);

        assert_eq!(
            on_spec(&mut s, &redis, id, "t0"),
            None,
            "same endpoint: no swap"
        );
        let started = on_spec(&mut s, &kafka, id, "t0").expect("a swap starts");
        assert_eq!(started.reason, "SwapStarted");
        assert_eq!(phase(&s), Some(SwapPhase::Provisioning));
        assert!(s.owned.is_empty(), "the new side starts owning nothing");
        assert_eq!(
            s.swap.as_ref().map(|w| w.old_owned.clone()),
            Some(vec!["stream/a".into()])
        );
        assert!(holds_ready(&s).is_some());

        // The new side is not ready: the binding stays.
        assert!(!may_bind(&mut s, false));
        assert_eq!(phase(&s), Some(SwapPhase::Provisioning));
        assert_eq!(bound(&mut s, "prd", "t1"), None, "no flip before Switching");

        // Ready: Switching, and a failed write stays there.
        assert!(may_bind(&mut s, true));
        assert_eq!(phase(&s), Some(SwapPhase::Switching));
        bind_failed(&mut s, "apiserver down");
        assert_eq!(phase(&s), Some(SwapPhase::Switching));
        assert!(holds_ready(&s).is_some());

        // Written: Retiring.
        assert!(may_bind(&mut s, true));
        let flipped = bound(&mut s, "prd", "t2").expect("flipped");
        assert_eq!(flipped.reason, "Switched");
        assert_eq!(phase(&s), Some(SwapPhase::Retiring));
        assert_eq!(
            s.swap.as_ref().and_then(|w| w.switched_at.clone()),
            Some("t2".into())
        );
        assert!(retiring(&s) && holds_ready(&s).is_none());

        // The old stream still holds messages: waiting, then done.
        let waiting = Retirement::Waiting {
            remaining: vec!["stream/a".into()],
            retained: vec![],
            message: "waiting for subscribers to drain 3 messages".into(),
            draining: vec![DrainingStatus {
                name: "t/s".into(),
                messages: 3,
            }],
        };
        assert_eq!(retired(&mut s, "prd", waiting), None);
        assert_eq!(phase(&s), Some(SwapPhase::Retiring));
        assert_eq!(s.swap.as_ref().map(|w| w.draining.len()), Some(1));
        let done = retired(&mut s, "prd", Retirement::Done { retained: vec![] }).expect("complete");
        assert_eq!(done.reason, "SwapComplete");
        assert_eq!(phase(&s), Some(SwapPhase::Complete));
        assert!(!in_progress(&s));
        assert!(s.swap.as_ref().is_some_and(|w| w.draining.is_empty()));
    }

    #[test]
    fn pointing_back_before_the_flip_cancels_and_keeps_the_old_side() {
        let redis = env(BrokerType::Redis, "redis://r:6379");
        let kafka = env(BrokerType::Kafka, "k:9092");
        for switching in [false, true] {
            let mut s = serving(&redis, &["stream/a"]);
            on_spec(&mut s, &kafka, id, "t0");
            s.owned = vec!["topic/new".into()];
            if switching {
                assert!(may_bind(&mut s, true));
            }
            let cancelled = on_spec(&mut s, &redis, id, "t1").expect("cancelled");
            assert_eq!(cancelled.reason, "SwapCancelled");
            assert_eq!(s.swap, None);
            assert_eq!(s.owned, vec!["stream/a".to_string()]);
            assert_eq!(s.retained, vec!["topic/new".to_string()]);
        }
    }

    /// A Redis env swapped to Kafka whose binding has flipped: (the old env, its status).
    fn flipped() -> (EnvSpec, EnvStatus) {
        let redis = env(BrokerType::Redis, "redis://r:6379");
        let kafka = env(BrokerType::Kafka, "k:9092");
        let mut s = serving(&redis, &["stream/a"]);
        on_spec(&mut s, &kafka, id, "t0");
        assert!(may_bind(&mut s, true));
        assert!(bound(&mut s, "prd", "t1").is_some());
        (redis, s)
    }

    #[test]
    fn the_old_side_is_kept_for_the_grace_after_the_flip() {
        let redis = env(BrokerType::Redis, "redis://r:6379");
        let kafka = env(BrokerType::Kafka, "k:9092");
        let mut s = serving(&redis, &["stream/a"]);
        on_spec(&mut s, &kafka, id, "2026-12-01T00:00:00Z");
        let at = |t: &str| t.parse::<jiff::Timestamp>().expect("time");
        let grace = std::time::Duration::from_secs(90);
        assert!(may_bind(&mut s, true));
        bound(&mut s, "prd", "2026-12-01T00:00:10Z");
        assert_eq!(
            grace_left(&s, at("2026-12-01T00:00:40Z"), grace),
            Some(std::time::Duration::from_secs(60))
        );
        assert_eq!(grace_left(&s, at("2026-12-01T00:01:40Z"), grace), None);
        assert_eq!(grace_left(&s, at("2026-12-01T00:05:00Z"), grace), None);
        assert_eq!(
            grace_left(&s, at("2026-12-01T00:00:40Z"), std::time::Duration::ZERO),
            None
        );
    }

    #[test]
    fn after_the_flip_pointing_back_is_not_a_cancel() {
        let (redis, mut s) = flipped();
        // The spec goes back to Redis while Kafka is serving and Redis retires: no new swap
        // until this one completes, and no cancel (the binding already moved).
        assert_eq!(on_spec(&mut s, &redis, id, "t2"), None);
        assert_eq!(phase(&s), Some(SwapPhase::Retiring));
    }

    #[test]
    fn a_failed_retirement_is_retried_and_retained_objects_are_listed_once() {
        let (_, mut s) = flipped();
        assert_eq!(
            retired(&mut s, "prd", Retirement::Failed("refused".into())),
            None
        );
        assert!(
            s.swap
                .as_ref()
                .and_then(|w| w.message.clone())
                .is_some_and(|m| m.contains("refused"))
        );
        let keep = || Retirement::Done {
            retained: vec!["stream/a".into()],
        };
        assert!(retired(&mut s, "prd", keep()).is_some());
        assert_eq!(
            retired(&mut s, "prd", keep()),
            None,
            "complete swaps take no more passes"
        );
        assert_eq!(s.retained, vec!["stream/a".to_string()]);
    }
}
