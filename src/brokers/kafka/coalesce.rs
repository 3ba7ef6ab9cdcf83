//! Coalescing of concurrent requests into one broker round trip.
//!
//! Every MessageBroker that shares an endpoint shares one pooled backend. When several of them
//! apply changes at about the same time, their requests of one kind (CreateTopics,
//! CreatePartitions, AlterConfigs, DeleteTopics) are gathered and sent as one request. One
//! request of a kind is in flight at a time: the first caller starts a driver task that waits
//! a few milliseconds for company, sends everything queued, and — while callers keep arriving
//! during the round trip — sends the next batch as soon as the previous one returns. Under load
//! batches grow with the load; alone, a caller waits only the short window. The driver is a
//! spawned task, so a cancelled caller cannot strand the others.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::brokers::{BrokerError, BrokerErrorKind};

/// Result of one item of a batch.
pub(super) type ItemResult = Result<(), BrokerError>;

type Waiter<R> = (R, oneshot::Sender<ItemResult>);

struct Queue<R> {
    pending: Vec<Waiter<R>>,
    driving: bool,
}

/// Gathers items of type `R` into batches.
pub(super) struct Coalescer<R> {
    window: Duration,
    queue: Mutex<Queue<R>>,
}

impl<R: Send + 'static> Coalescer<R> {
    /// A coalescer that waits `window` for company before sending.
    pub(super) fn new(window: Duration) -> Self {
        Coalescer {
            window,
            queue: Mutex::new(Queue {
                pending: Vec::new(),
                driving: false,
            }),
        }
    }

    /// Submit `items`; `exec` runs a whole batch (possibly including other callers' items) and
    /// returns one result per item, in order. Returns this caller's results, in order.
    pub(super) async fn submit<F, Fut>(self: &Arc<Self>, items: Vec<R>, exec: F) -> Vec<ItemResult>
    where
        F: Fn(Vec<R>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<ItemResult>> + Send + 'static,
    {
        if items.is_empty() {
            return Vec::new();
        }
        let mut receivers = Vec::with_capacity(items.len());
        let start_driver = {
            let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            for item in items {
                let (tx, rx) = oneshot::channel();
                queue.pending.push((item, tx));
                receivers.push(rx);
            }
            !std::mem::replace(&mut queue.driving, true)
        };
        if start_driver {
            let this = Arc::clone(self);
            tokio::spawn(async move { this.drive(exec).await });
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

    /// Send batches until nothing is queued.
    async fn drive<F, Fut>(&self, exec: F)
    where
        F: Fn(Vec<R>) -> Fut,
        Fut: Future<Output = Vec<ItemResult>>,
    {
        // If `exec` panics, this task unwinds: the guard hands the queue back so the next caller
        // starts a new driver instead of waiting forever for this one. Callers already queued
        // get the "abandoned" error as their senders drop.
        let _guard = OnUnwind(|| {
            let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            queue.driving = false;
            queue.pending.clear();
        });
        loop {
            tokio::time::sleep(self.window).await;
            let batch = {
                let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                if queue.pending.is_empty() {
                    queue.driving = false;
                    return;
                }
                std::mem::take(&mut queue.pending)
            };
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
        }
    }
}

/// Runs its closure if dropped while the thread unwinds from a panic: the way a single
/// driver task (a coalescer's, the settle poller) gives up its "I am driving" flag when the
/// work it runs panics, so the next caller starts a new one.
pub(super) struct OnUnwind<F: FnMut()>(pub(super) F);

impl<F: FnMut()> Drop for OnUnwind<F> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            (self.0)();
        }
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
                c.submit(items, move |batch| {
                    let calls = calls.clone();
                    async move {
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
                    }
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

    #[tokio::test]
    async fn a_panicking_batch_fails_its_callers_and_the_next_caller_is_served() {
        let c = Arc::new(Coalescer::<u32>::new(Duration::from_millis(1)));
        let out = c
            .submit(vec![1, 2], |_batch: Vec<u32>| async move {
                panic!("the batch function broke");
            })
            .await;
        assert_eq!(out.len(), 2);
        assert!(
            out.iter()
                .all(|r| r.as_ref().is_err_and(|e| e.message.contains("abandoned"))),
            "{out:?}"
        );
        let next = tokio::time::timeout(
            Duration::from_secs(5),
            c.submit(vec![3], |batch: Vec<u32>| async move {
                batch.iter().map(|_| Ok(())).collect()
            }),
        )
        .await
        .expect("a later caller is served, not left waiting for the dead driver");
        assert!(next[0].is_ok());
    }

    #[tokio::test]
    async fn callers_arriving_during_a_round_trip_share_the_next_batch() {
        let c = Arc::new(Coalescer::<u32>::new(Duration::from_millis(1)));
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let (release_tx, release_rx) = tokio::sync::watch::channel(false);
        let run = |items: Vec<u32>| {
            let (c, sizes, release) = (c.clone(), sizes.clone(), release_rx.clone());
            async move {
                c.submit(items, move |batch| {
                    let (sizes, mut release) = (sizes.clone(), release.clone());
                    async move {
                        sizes.lock().unwrap().push(batch.len());
                        // The first round trip is slow.
                        let _ = release.wait_for(|r| *r).await;
                        batch.iter().map(|_| Ok(())).collect()
                    }
                })
                .await
            }
        };
        let first = tokio::spawn(run(vec![1]));
        while sizes.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Three callers arrive while the first request is in flight.
        let later: Vec<_> = (2..5).map(|i| tokio::spawn(run(vec![i]))).collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(*sizes.lock().unwrap(), vec![1], "one request in flight");
        release_tx.send(true).unwrap();
        assert!(first.await.unwrap()[0].is_ok());
        for l in later {
            assert!(l.await.unwrap()[0].is_ok());
        }
        assert_eq!(
            *sizes.lock().unwrap(),
            vec![1, 3],
            "the three shared the next batch"
        );
    }
}
