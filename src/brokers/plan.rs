//! The pure planning step: desired state + observed state + ownership → the actions to take,
//! the changes refused, and what is retained. No I/O, so the controller and `switchyard plan`
//! can never disagree.

use std::collections::BTreeSet;

use serde::Serialize;

use super::{
    Action, Capabilities, ConfigChange, DesiredState, ObjectKey, Observed, Refusal, RefusalKind,
    Scope,
};
use crate::api::DeletionPolicy;

/// Inputs that are not broker state.
#[derive(Clone, Debug)]
pub struct PlanInput<'a> {
    /// Who is asking.
    pub scope: &'a Scope,
    /// Objects this resource created or adopted (from status).
    pub owned: &'a BTreeSet<ObjectKey>,
    /// Fate of objects that leave the spec.
    pub deletion_policy: DeletionPolicy,
    /// Take over existing objects instead of reporting a conflict.
    pub adopt_existing: bool,
    /// What the broker can change in place.
    pub capabilities: Capabilities,
}

/// What a reconcile pass will do on one broker.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Changes to make, in order.
    pub actions: Vec<Action>,
    /// Changes that will not be made, with the reason.
    pub refused: Vec<Refusal>,
    /// Owned objects no longer in the spec that stay on the broker (Retain).
    pub retained: Vec<ObjectKey>,
}

impl Plan {
    /// Nothing to do and nothing refused.
    pub fn is_noop(&self) -> bool {
        self.actions.is_empty() && self.refused.is_empty()
    }

    /// A refusal that only a spec change can clear.
    pub fn permanent_refusal(&self) -> Option<&Refusal> {
        self.refused.iter().find(|r| !r.is_transient())
    }
}

/// Compute the plan.
pub fn plan(desired: &DesiredState, observed: &Observed, input: &PlanInput<'_>) -> Plan {
    let mut out = Plan::default();
    let owner = input.scope.owner();
    let wanted: BTreeSet<&ObjectKey> = desired.objects.iter().map(|o| &o.key).collect();

    for object in &desired.objects {
        let Some(current) = observed.objects.get(&object.key) else {
            out.actions.push(Action::Create {
                object: object.clone(),
            });
            continue;
        };
        let ours =
            input.owned.contains(&object.key) || current.owner.as_deref() == Some(owner.as_str());
        if !ours {
            match &current.owner {
                Some(other) => {
                    out.refused.push(Refusal {
                        key: object.key.clone(),
                        kind: RefusalKind::Conflict,
                        message: format!("{} already exists and belongs to {other}", object.key),
                    });
                    continue;
                }
                None if input.adopt_existing => out.actions.push(Action::Adopt {
                    object: object.clone(),
                }),
                None => {
                    out.refused.push(Refusal {
                        key: object.key.clone(),
                        kind: RefusalKind::Conflict,
                        message: format!(
                            "{} already exists and was not created by this MessageBroker; set adoptExisting: true on the env to take it over",
                            object.key
                        ),
                    });
                    continue;
                }
            }
        }

        if input.capabilities.partitions
            && let (Some(want), Some(have)) = (object.partitions, current.partitions)
        {
            if want > have {
                out.actions.push(Action::AddPartitions {
                    object: object.clone(),
                    from: have,
                    to: want,
                });
            } else if want < have {
                out.refused.push(Refusal {
                    key: object.key.clone(),
                    kind: RefusalKind::PartitionDecrease,
                    message: format!(
                        "{} has {have} partitions; the spec asks for {want}, and partitions can only grow",
                        object.key
                    ),
                });
            }
        }

        let mut mutable = Vec::new();
        for (key, after) in &object.config {
            let before = current.config.get(key);
            if before == Some(after) {
                continue;
            }
            let change = ConfigChange {
                key: key.clone(),
                before: before.cloned(),
                after: after.clone(),
            };
            match input
                .capabilities
                .immutable_config
                .iter()
                .find(|(k, _)| k == key)
            {
                Some((_, setting)) => out.refused.push(Refusal {
                    key: object.key.clone(),
                    kind: RefusalKind::Immutable(*setting),
                    message: format!(
                        "{}: {key} is {} on the broker and cannot change in place to {after}",
                        object.key,
                        change.before.as_deref().unwrap_or("unset"),
                    ),
                }),
                None => mutable.push(change),
            }
        }
        if !mutable.is_empty() {
            out.actions.push(Action::Update {
                object: object.clone(),
                changes: mutable,
            });
        }
    }

    // Owned objects the spec no longer wants, children before parents.
    let mut leaving: Vec<&ObjectKey> = input.owned.iter().filter(|k| !wanted.contains(k)).collect();
    leaving.sort_by(|a, b| b.kind.cmp(&a.kind).then_with(|| a.name.cmp(&b.name)));
    for key in leaving {
        let Some(current) = observed.objects.get(key) else {
            continue; // already gone
        };
        match input.deletion_policy {
            DeletionPolicy::Retain => out.retained.push(key.clone()),
            DeletionPolicy::Delete => match current.messages {
                Some(n) if n > 0 => {
                    out.retained.push(key.clone());
                    out.refused.push(Refusal {
                        key: key.clone(),
                        kind: RefusalKind::RetireBlocked,
                        message: format!(
                            "{key} still holds {n} message(s); it is deleted once drained"
                        ),
                    });
                }
                _ => out.actions.push(Action::Delete { key: key.clone() }),
            },
        }
    }
    out
}

/// The ownership set after applying a plan: successful creates and adoptions join it,
/// successful deletes leave it, owned objects that no longer exist and are not wanted drop out,
/// and objects the broker marks as `owner`'s join it (so a status that lost them recovers).
pub fn owned_after(
    owned: &BTreeSet<ObjectKey>,
    owner: &str,
    desired: &DesiredState,
    observed: &Observed,
    outcomes: &[super::ActionOutcome],
    actions: &[Action],
) -> BTreeSet<ObjectKey> {
    let wanted: BTreeSet<&ObjectKey> = desired.objects.iter().map(|o| &o.key).collect();
    let mut next: BTreeSet<ObjectKey> = owned
        .iter()
        .filter(|k| wanted.contains(k) || observed.objects.contains_key(k))
        .cloned()
        .collect();
    next.extend(
        observed
            .objects
            .iter()
            .filter(|(_, o)| o.owner.as_deref() == Some(owner))
            .map(|(k, _)| k.clone()),
    );
    for (action, outcome) in actions.iter().zip(outcomes) {
        if outcome.result.is_err() {
            continue;
        }
        match action {
            Action::Create { object } | Action::Adopt { object } => {
                next.insert(object.key.clone());
            }
            Action::Delete { key } => {
                next.remove(key);
            }
            Action::Update { .. } | Action::AddPartitions { .. } => {}
        }
    }
    next
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::brokers::{ActionOutcome, DesiredObject, Immutable, ObjectKind, ObservedObject};

    const KAFKA_LIKE: Capabilities = Capabilities {
        partitions: true,
        immutable_config: &[("replication.factor", Immutable::ReplicationFactor)],
    };

    fn scope() -> Scope {
        Scope::new("shop", "bus")
    }

    fn topic(name: &str, partitions: i32, retention_ms: &str) -> DesiredObject {
        DesiredObject {
            key: ObjectKey::new(ObjectKind::Topic, name),
            logical: name.into(),
            parent: None,
            partitions: Some(partitions),
            config: BTreeMap::from([("retention.ms".to_string(), retention_ms.to_string())]),
        }
    }

    fn observed_from(objects: &[DesiredObject]) -> Observed {
        Observed {
            objects: objects
                .iter()
                .map(|o| {
                    (
                        o.key.clone(),
                        ObservedObject {
                            partitions: o.partitions,
                            config: o.config.clone(),
                            owner: None,
                            messages: Some(0),
                        },
                    )
                })
                .collect(),
            ..Observed::default()
        }
    }

    fn input<'a>(
        scope: &'a Scope,
        owned: &'a BTreeSet<ObjectKey>,
        policy: DeletionPolicy,
    ) -> PlanInput<'a> {
        PlanInput {
            scope,
            owned,
            deletion_policy: policy,
            adopt_existing: false,
            capabilities: KAFKA_LIKE,
        }
    }

    #[test]
    fn creates_what_is_missing() {
        let s = scope();
        let owned = BTreeSet::new();
        let desired = DesiredState {
            objects: vec![topic("a", 3, "1000"), topic("b", 1, "1000")],
            notes: vec![],
            names: BTreeMap::new(),
        };
        let p = plan(
            &desired,
            &Observed::default(),
            &input(&s, &owned, DeletionPolicy::Retain),
        );
        assert_eq!(p.actions.len(), 2);
        assert!(matches!(&p.actions[0], Action::Create { object } if object.key.name == "a"));
        assert!(p.refused.is_empty());
    }

    #[test]
    fn noop_when_everything_matches() {
        let s = scope();
        let objects = vec![topic("a", 3, "1000")];
        let owned: BTreeSet<_> = objects.iter().map(|o| o.key.clone()).collect();
        let desired = DesiredState {
            objects: objects.clone(),
            notes: vec![],
            names: BTreeMap::new(),
        };
        let p = plan(
            &desired,
            &observed_from(&objects),
            &input(&s, &owned, DeletionPolicy::Retain),
        );
        assert!(p.is_noop(), "{p:?}");
    }

    #[test]
    fn partition_increase_is_applied() {
        let s = scope();
        let before = vec![topic("a", 3, "1000")];
        let owned: BTreeSet<_> = before.iter().map(|o| o.key.clone()).collect();
        let desired = DesiredState {
            objects: vec![topic("a", 6, "1000")],
            notes: vec![],
            names: BTreeMap::new(),
        };
        let p = plan(
            &desired,
            &observed_from(&before),
            &input(&s, &owned, DeletionPolicy::Retain),
        );
        assert_eq!(p.actions.len(), 1);
        assert!(matches!(
            p.actions[0],
            Action::AddPartitions { from: 3, to: 6, .. }
        ));
    }

    #[test]
    fn partition_decrease_is_refused_permanently() {
        let s = scope();
        let before = vec![topic("a", 6, "1000")];
        let owned: BTreeSet<_> = before.iter().map(|o| o.key.clone()).collect();
        let desired = DesiredState {
            objects: vec![topic("a", 3, "1000")],
            notes: vec![],
            names: BTreeMap::new(),
        };
        let p = plan(
            &desired,
            &observed_from(&before),
            &input(&s, &owned, DeletionPolicy::Retain),
        );
        assert!(p.actions.is_empty());
        let r = p.permanent_refusal().expect("refused");
        assert_eq!(r.kind, RefusalKind::PartitionDecrease);
        assert!(
            r.message.contains("6 partitions") && r.message.contains("3"),
            "{}",
            r.message
        );
    }

    #[test]
    fn config_drift_is_reverted_and_immutable_changes_refused() {
        let s = scope();
        let mut current = topic("a", 3, "999");
        current
            .config
            .insert("replication.factor".into(), "1".into());
        let owned = BTreeSet::from([current.key.clone()]);
        let mut want = topic("a", 3, "1000");
        want.config.insert("replication.factor".into(), "3".into());
        let p = plan(
            &DesiredState {
                objects: vec![want],
                notes: vec![],
                names: BTreeMap::new(),
            },
            &observed_from(&[current]),
            &input(&s, &owned, DeletionPolicy::Retain),
        );
        assert!(matches!(&p.actions[..], [Action::Update { changes, .. }]
            if changes.len() == 1 && changes[0].key == "retention.ms" && changes[0].before.as_deref() == Some("999")));
        assert_eq!(p.refused.len(), 1);
        assert_eq!(
            p.refused[0].kind,
            RefusalKind::Immutable(Immutable::ReplicationFactor)
        );
    }

    #[test]
    fn removed_topic_is_retained_under_retain() {
        let s = scope();
        let before = vec![topic("a", 1, "1"), topic("gone", 1, "1")];
        let owned: BTreeSet<_> = before.iter().map(|o| o.key.clone()).collect();
        let desired = DesiredState {
            objects: vec![topic("a", 1, "1")],
            notes: vec![],
            names: BTreeMap::new(),
        };
        let p = plan(
            &desired,
            &observed_from(&before),
            &input(&s, &owned, DeletionPolicy::Retain),
        );
        assert!(p.actions.is_empty(), "Retain must delete nothing: {p:?}");
        assert_eq!(p.retained, vec![ObjectKey::new(ObjectKind::Topic, "gone")]);
    }

    #[test]
    fn removed_topic_is_deleted_under_delete_unless_it_holds_messages() {
        let s = scope();
        let before = vec![
            topic("a", 1, "1"),
            topic("gone", 1, "1"),
            topic("full", 1, "1"),
        ];
        let owned: BTreeSet<_> = before.iter().map(|o| o.key.clone()).collect();
        let mut observed = observed_from(&before);
        if let Some(full) = observed
            .objects
            .get_mut(&ObjectKey::new(ObjectKind::Topic, "full"))
        {
            full.messages = Some(7);
        }
        let desired = DesiredState {
            objects: vec![topic("a", 1, "1")],
            notes: vec![],
            names: BTreeMap::new(),
        };
        let p = plan(
            &desired,
            &observed,
            &input(&s, &owned, DeletionPolicy::Delete),
        );
        assert_eq!(
            p.actions,
            vec![Action::Delete {
                key: ObjectKey::new(ObjectKind::Topic, "gone")
            }]
        );
        assert_eq!(p.refused.len(), 1);
        assert_eq!(p.refused[0].kind, RefusalKind::RetireBlocked);
        assert!(p.refused[0].is_transient() && p.refused[0].message.contains("7 message"));
    }

    #[test]
    fn foreign_objects_conflict_unless_adopted() {
        let s = scope();
        let owned = BTreeSet::new();
        let existing = vec![topic("a", 1, "1")];
        let desired = DesiredState {
            objects: existing.clone(),
            notes: vec![],
            names: BTreeMap::new(),
        };
        let p = plan(
            &desired,
            &observed_from(&existing),
            &input(&s, &owned, DeletionPolicy::Retain),
        );
        assert_eq!(p.refused[0].kind, RefusalKind::Conflict);
        assert!(p.actions.is_empty());

        let mut adopting = input(&s, &owned, DeletionPolicy::Retain);
        adopting.adopt_existing = true;
        let p = plan(&desired, &observed_from(&existing), &adopting);
        assert!(matches!(&p.actions[..], [Action::Adopt { .. }]));

        // Marked as another resource's: conflict even when adopting.
        let mut marked = observed_from(&existing);
        for o in marked.objects.values_mut() {
            o.owner = Some("other/bus".into());
        }
        let p = plan(&desired, &marked, &adopting);
        assert_eq!(p.refused[0].kind, RefusalKind::Conflict);
        assert!(p.refused[0].message.contains("other/bus"));
    }

    #[test]
    fn ownership_follows_successful_actions() {
        let s = scope();
        let owned = BTreeSet::from([ObjectKey::new(ObjectKind::Topic, "gone")]);
        let desired = DesiredState {
            objects: vec![topic("a", 1, "1"), topic("b", 1, "1")],
            notes: vec![],
            names: BTreeMap::new(),
        };
        let observed = observed_from(&[topic("gone", 1, "1")]);
        let p = plan(
            &desired,
            &observed,
            &input(&s, &owned, DeletionPolicy::Delete),
        );
        let outcomes: Vec<ActionOutcome> = p
            .actions
            .iter()
            .map(|a| ActionOutcome {
                key: a.key().clone(),
                result: if a.key().name == "b" {
                    Err(crate::brokers::BrokerError::new(
                        crate::brokers::BrokerErrorKind::Other,
                        "boom",
                    ))
                } else {
                    Ok(())
                },
            })
            .collect();
        let next = owned_after(
            &owned,
            &s.owner(),
            &desired,
            &observed,
            &outcomes,
            &p.actions,
        );
        assert_eq!(
            next,
            BTreeSet::from([ObjectKey::new(ObjectKind::Topic, "a")])
        );
    }
}
