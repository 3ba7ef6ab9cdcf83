//! Spec values for the backends' mapping tests.

use crate::api::{DeadLetterSpec, SubscriptionSpec, TopicSpec};

/// A topic with no settings and no subscriptions.
pub fn topic(name: &str) -> TopicSpec {
    TopicSpec {
        name: name.into(),
        partitions: None,
        retention: None,
        ordered: false,
        subscriptions: vec![],
    }
}

/// A subscription, with a dead letter after `dead_letter` attempts when given.
pub fn sub(name: &str, dead_letter: Option<i32>) -> SubscriptionSpec {
    SubscriptionSpec {
        name: name.into(),
        dead_letter: dead_letter.map(|n| DeadLetterSpec {
            max_delivery_attempts: n,
        }),
    }
}
