//! How many Normal Events bulk work publishes. A burst of creates (a thousand MessageBrokers
//! applied at once) would otherwise give a thousand `Created` Events: a thousand API writes and
//! etcd objects, and as many entries in kube's Event recorder, which keeps each Event it
//! published for six minutes to aggregate repeats. Each Normal reason has a budget: [`BURST`]
//! Events at once, then one per [`REFILL`]; past it the Event is left out (status says the same,
//! and `switchyard_events_total{outcome="suppressed"}` counts it). Warnings are never left out.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Normal Events of one reason published at once before the budget applies.
pub const BURST: u32 = 10;
/// One more Normal Event of a reason per this long.
pub const REFILL: Duration = Duration::from_secs(1);

/// The budget of Normal Events, per reason.
#[derive(Debug, Default)]
pub struct EventBudget {
    /// Per reason: Events that may still be published, and when that was last brought up to date.
    left: Mutex<HashMap<String, (u32, Instant)>>,
}

impl EventBudget {
    /// Whether a Normal Event of `reason` may be published at `now`; takes it from the budget.
    pub fn take(&self, reason: &str, now: Instant) -> bool {
        let mut left = self.left.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, since) = left.entry(reason.to_string()).or_insert((BURST, now));
        let earned = now.saturating_duration_since(*since).as_nanos() / REFILL.as_nanos();
        if earned > 0 {
            let earned = u32::try_from(earned).unwrap_or(u32::MAX);
            *tokens = tokens.saturating_add(earned).min(BURST);
            // Keep the part of a refill period already served.
            *since = if *tokens == BURST {
                now
            } else {
                *since + REFILL * earned
            };
        }
        if *tokens == 0 {
            return false;
        }
        *tokens -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_cut_to_the_budget_then_one_per_refill() {
        let budget = EventBudget::default();
        let t0 = Instant::now();
        let published = (0..1000).filter(|_| budget.take("Created", t0)).count();
        assert_eq!(published, BURST as usize);
        // Half a refill later: still nothing; a whole one: one more, and only one.
        assert!(!budget.take("Created", t0 + REFILL / 2));
        assert!(budget.take("Created", t0 + REFILL));
        assert!(!budget.take("Created", t0 + REFILL));
        // Another reason has its own budget.
        assert!(budget.take("Deleted", t0));
    }

    #[test]
    fn the_budget_fills_up_again_but_never_past_the_burst() {
        let budget = EventBudget::default();
        let t0 = Instant::now();
        for _ in 0..BURST {
            assert!(budget.take("Created", t0));
        }
        let later = t0 + REFILL * 100;
        let published = (0..1000).filter(|_| budget.take("Created", later)).count();
        assert_eq!(published, BURST as usize);
    }

    #[test]
    fn over_a_minute_of_steady_creates_the_events_are_the_burst_plus_one_a_second() {
        let budget = EventBudget::default();
        let t0 = Instant::now();
        // 100 creates a second for 60 seconds.
        let published = (0..6000u32)
            .filter(|i| budget.take("Created", t0 + Duration::from_millis(u64::from(*i) * 10)))
            .count();
        assert_eq!(published, BURST as usize + 59);
    }
}
