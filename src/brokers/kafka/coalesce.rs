//! Coalescing of concurrent requests into one broker round trip.
//!
//! Every MessageBroker that shares an endpoint shares one pooled backend. When several of them
//! apply changes at about the same time, their requests of one kind (CreateTopics,
//! CreatePartitions, AlterConfigs, DeleteTopics) are gathered for a few milliseconds and sent
//! as one request. The first caller of a round becomes its leader: it waits out the window,
//! takes everything queued meanwhile and runs the batch on a spawned task (so a cancelled
//! caller cannot strand the others), then hands each caller its own results.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::brokers::{BrokerError, BrokerErrorKind};

/// Result of one item of a batch.
pub(super) type ItemResult = Result<(), BrokerError>;

type Waiter<R> = (R, oneshot::Sender<ItemResult>);

/// Gathers items of type `R` into batches.
pub(super) struct Coalescer<R> {
    window: Duration,
    pending: Mutex<Vec<Waiter<R>>>,
}

impl<R: Send + 'static> Coalescer<R> {
    /// A coalescer that waits `window` for company before sending.
    pub(super) fn new(window: Duration) -> Self {
        Coalescer {
            window,
            pending: Mutex::new(Vec::new()),
        }
    }

    /// Submit `items`; `exec` runs a whole batch (possibly including other callers' items) and
    /// returns one result per item, in order. Returns this caller's results, in order.
    pub(super) async fn submit<F, Fut>(self: &Arc<Self>, items: Vec<R>, exec: F) -> Vec<ItemResult>
    where
        F: FnOnce(Vec<R>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<ItemResult>> + Send + 'static,
    {
        if items.is_empty() {
            return Vec::new();
        }
        let mut receivers = Vec::with_capacity(items.len());
        let leader = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let leader = pending.is_empty();
            for item in items {
                let (tx, rx) = oneshot::channel();
                pending.push((item, tx));
                receivers.push(rx);
            }
            leader
        };
        if leader {
            let this = Arc::clone(self);
            tokio::spawn(async move {
                tokio::time::sleep(this.window).await;
                let batch =
                    std::mem::take(&mut *this.pending.lock().unwrap_or_else(|e| e.into_inner()));
                let (items, senders): (Vec<R>, Vec<_>) = batch.into_iter().unzip();
                let n = items.len();
                let mut results = exec(items).await;
                results.resize_with(n, || {
                    Err(BrokerError::new(
                        BrokerErrorKind::Other,
                        "the batched request returned no result for this item",
                    ))
                });
                for (tx, result) in senders.into_iter().zip(results) {
                    // A caller that went away no longer needs its result.
                    let _ = tx.send(result);
                }
            });
        }
        let mut out = Vec::with_capacity(receivers.len());
        for rx in receivers {
            out.push(rx.await.unwrap_or_else(|_| {
                Err(BrokerError::new(
                    BrokerErrorKind::Other,
                    "the batched request was abandoned",
                ))
            }));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_callers_share_one_batch() {
        let c = Arc::new(Coalescer::<u32>::new(Duration::from_millis(20)));
        let calls = Arc::new(AtomicUsize::new(0));
        let run = |items: Vec<u32>| {
            let calls = calls.clone();
            let c = c.clone();
            async move {
                c.submit(items, move |batch| async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    batch
                        .iter()
                        .map(|i| {
                            if i % 2 == 0 {
                                Ok(())
                            } else {
                                Err(BrokerError::new(BrokerErrorKind::Rejected, i.to_string()))
                            }
                        })
                        .collect()
                })
                .await
            }
        };
        let (a, b) = tokio::join!(run(vec![1, 2]), run(vec![4, 5, 7]));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "one batch for both callers"
        );
        assert_eq!(a.len(), 2);
        assert!(a[0].as_ref().is_err_and(|e| e.message == "1") && a[1].is_ok());
        assert_eq!(b.len(), 3);
        assert!(b[0].is_ok() && b[2].as_ref().is_err_and(|e| e.message == "7"));
        // The next round is a new batch.
        let c2 = run(vec![8]).await;
        assert!(c2[0].is_ok());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
