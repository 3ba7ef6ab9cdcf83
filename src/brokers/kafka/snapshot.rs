//! One shared observation of an endpoint's topics (and, with other keys, of its consumer
//! groups' lag: see `client::FlowKey`).
//!
//! Every MessageBroker on an endpoint observes its own topics on every pass. Answering each of
//! them with its own metadata, ListOffsets and DescribeConfigs round makes the cost of an idle
//! operator grow with the number of resources. Instead the backend keeps what it last read about
//! each topic it was asked about, for up to `max_age`; a pass that needs something unknown or
//! older triggers one refresh. When something aged out, that refresh also re-reads every other
//! topic past half its age. At rest an endpoint is thus read about once per `max_age`, whatever
//! the number of resources on it; during a bulk apply, refreshes for new topics read just those.
//!
//! What the operator itself changes is marked for reading again when it changes (see
//! [`Snapshot::forget`]): the next refresh, whoever triggers it, reads it with everything else,
//! so topics many resources just created are read back in a few batches rather than one
//! round per resource. A `max_age` of zero keeps nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::brokers::BrokerError;

/// Config name → value of one topic, sorted by name. A boxed slice rather than a map: the
/// snapshot holds one per topic (ten thousand and more), mostly with one or two entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct TopicConfig(Box<[(String, String)]>);

impl TopicConfig {
    /// The value of config `name`.
    pub(super) fn get(&self, name: &str) -> Option<&String> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(name))
            .ok()
            .map(|i| &self.0[i].1)
    }

    /// A map to change or hand on.
    pub(super) fn to_map(&self) -> BTreeMap<String, String> {
        self.0.iter().cloned().collect()
    }
}

impl FromIterator<(String, String)> for TopicConfig {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        let mut v: Vec<(String, String)> = iter.into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v.dedup_by(|a, b| a.0 == b.0);
        TopicConfig(v.into_boxed_slice())
    }
}

/// A topic as read: present (with its view, shared by every answer) or absent.
pub(super) type View = Option<Arc<TopicView>>;

/// What one topic looked like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct TopicView {
    /// Partition count.
    pub(super) partitions: i32,
    /// Replicas of the first partition.
    pub(super) replication_factor: Option<usize>,
    /// Messages held (high - low watermark over partitions), when every partition answered.
    pub(super) messages: Option<u64>,
    /// The managed topic configs.
    pub(super) config: TopicConfig,
}

/// A topic (or whatever `K` names) as last read.
#[derive(Debug)]
struct Entry<V> {
    view: V,
    /// None: changed since, read it again.
    read_at: Option<Instant>,
    asked_at: Instant,
}

/// The topics of an endpoint as last read (or, generally, what `K` names, read as `V`).
#[derive(Debug)]
pub(super) struct Snapshot<K = String, V = View> {
    max_age: Duration,
    entries: HashMap<K, Entry<V>>,
}

/// Entries nobody asked about for this many `max_age` periods are dropped.
const UNASKED_PERIODS: u32 = 3;

impl<K: Clone + Eq + Hash + Ord, V: Clone> Snapshot<K, V> {
    pub(super) fn new(max_age: Duration) -> Self {
        Snapshot {
            max_age,
            entries: HashMap::new(),
        }
    }

    fn is_fresh(&self, e: &Entry<V>, now: Instant) -> bool {
        e.read_at
            .is_some_and(|t| now.saturating_duration_since(t) < self.max_age)
    }

    /// The views of `names` (None: absent) if every one is known and fresh.
    pub(super) fn answer(&mut self, names: &[K], now: Instant) -> Option<HashMap<K, V>> {
        if !names
            .iter()
            .all(|n| self.entries.get(n).is_some_and(|e| self.is_fresh(e, now)))
        {
            return None;
        }
        let mut out = HashMap::with_capacity(names.len());
        for n in names {
            let e = self.entries.get_mut(n)?;
            e.asked_at = now;
            out.insert(n.clone(), e.view.clone());
        }
        Some(out)
    }

    /// What a refresh for `names` should read: those unknown or stale, every other known
    /// topic changed since it was read and, when one of `names` aged out, every topic past
    /// half its age (read ahead, so that the passes coming due next find it fresh: at rest
    /// that is one refresh per `max_age`). Asking only for topics never read (a bulk apply)
    /// reads no more than those and the changed ones.
    pub(super) fn due(&self, names: &[K], now: Instant) -> Vec<K> {
        let mut due: Vec<K> = names
            .iter()
            .filter(|n| !self.entries.get(*n).is_some_and(|e| self.is_fresh(e, now)))
            .cloned()
            .collect();
        let aged_out = due
            .iter()
            .any(|n| self.entries.get(n).is_some_and(|e| e.read_at.is_some()));
        let half = self.max_age / 2;
        due.extend(
            self.entries
                .iter()
                .filter(|(_, e)| match e.read_at {
                    None => true,
                    Some(t) => aged_out && now.saturating_duration_since(t) >= half,
                })
                .map(|(n, _)| n.clone()),
        );
        due.sort();
        due.dedup();
        due
    }

    /// Remember what a refresh read (every name it was asked for: absent ones as None), and
    /// drop topics nobody asked about for a while.
    pub(super) fn record(&mut self, read: &HashMap<K, V>, asked: &[K], now: Instant) {
        if self.max_age.is_zero() {
            return;
        }
        let asked: HashSet<&K> = asked.iter().collect();
        for (name, view) in read {
            let asked_at = match self.entries.get(name) {
                Some(e) if !asked.contains(name) => e.asked_at,
                _ => now,
            };
            self.entries.insert(
                name.clone(),
                Entry {
                    view: view.clone(),
                    read_at: Some(now),
                    asked_at,
                },
            );
        }
        let keep = self.max_age * UNASKED_PERIODS;
        self.entries
            .retain(|_, e| now.saturating_duration_since(e.asked_at) < keep);
    }

    /// Forget what was read about topics the operator is changing: the next refresh reads
    /// them again, and no pass is answered with the old view.
    pub(super) fn forget<'a, Q>(&mut self, names: impl IntoIterator<Item = &'a Q>)
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized + 'a,
    {
        for n in names {
            if let Some(e) = self.entries.get_mut(n) {
                e.read_at = None;
            }
        }
    }

    /// [`Snapshot::forget`] every entry whose key `matches`.
    pub(super) fn forget_matching(&mut self, matches: impl Fn(&K) -> bool) {
        for (_, e) in self.entries.iter_mut().filter(|(k, _)| matches(k)) {
            e.read_at = None;
        }
    }

    /// Topics remembered.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// A [`Snapshot`] shared by every caller on an endpoint, refreshed by one caller at a time:
/// callers arriving during a refresh queue what they need and are usually answered by the
/// refresh in flight or the next one, so concurrent passes of many MessageBrokers cost one read.
#[derive(Debug)]
pub(super) struct Shared<K = String, V = View> {
    snapshot: std::sync::Mutex<Snapshot<K, V>>,
    refreshing: tokio::sync::Mutex<()>,
    waiting: std::sync::Mutex<BTreeSet<K>>,
}

impl<K: Clone + Eq + Hash + Ord, V: Clone + Default> Shared<K, V> {
    pub(super) fn new(max_age: Duration) -> Self {
        Shared {
            snapshot: std::sync::Mutex::new(Snapshot::new(max_age)),
            refreshing: tokio::sync::Mutex::new(()),
            waiting: std::sync::Mutex::new(BTreeSet::new()),
        }
    }

    fn snapshot(&self) -> std::sync::MutexGuard<'_, Snapshot<K, V>> {
        self.snapshot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// See [`Snapshot::forget`].
    pub(super) fn forget<'a, Q>(&self, names: impl IntoIterator<Item = &'a Q>)
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized + 'a,
    {
        self.snapshot().forget(names);
    }

    /// See [`Snapshot::forget_matching`].
    pub(super) fn forget_matching(&self, matches: impl Fn(&K) -> bool) {
        self.snapshot().forget_matching(matches);
    }

    /// The values of `names`, from the snapshot when it is fresh, otherwise from one refresh
    /// (`read`, called with at most `chunk` keys at a time) that also reads every key other
    /// callers are waiting for and every remembered key past half its age.
    pub(super) async fn get<F, Fut>(
        &self,
        names: Vec<K>,
        chunk: usize,
        what: &str,
        mut read: F,
    ) -> Result<HashMap<K, V>, BrokerError>
    where
        F: FnMut(Vec<K>) -> Fut,
        Fut: Future<Output = Result<HashMap<K, V>, BrokerError>>,
    {
        let fresh = |this: &Self| this.snapshot().answer(&names, Instant::now());
        if let Some(answer) = fresh(self) {
            return Ok(answer);
        }
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(names.iter().cloned());
        let _turn = self.refreshing.lock().await;
        if let Some(answer) = fresh(self) {
            return Ok(answer);
        }
        let mut asked: BTreeSet<K> =
            std::mem::take(&mut *self.waiting.lock().unwrap_or_else(|e| e.into_inner()));
        asked.extend(names.iter().cloned());
        let asked: Vec<K> = asked.into_iter().collect();
        let now = Instant::now();
        let due = self.snapshot().due(&asked, now);
        tracing::debug!(
            what,
            asked = asked.len(),
            reading = due.len(),
            "refreshing the shared observation"
        );
        // In pieces, each remembered as it arrives: what is held at once stays bounded however
        // many keys are due.
        let wanted: HashSet<&K> = names.iter().collect();
        let mut answer = HashMap::with_capacity(names.len());
        for piece in due.chunks(chunk.max(1)) {
            let read = read(piece.to_vec()).await?;
            self.snapshot().record(&read, &asked, now);
            answer.extend(read.into_iter().filter(|(n, _)| wanted.contains(n)));
        }
        let mut snapshot = self.snapshot();
        for name in &names {
            if !answer.contains_key(name) {
                // Fresh in the snapshot, so not read again.
                let view = snapshot
                    .answer(std::slice::from_ref(name), now)
                    .and_then(|mut a| a.remove(name))
                    .unwrap_or_default();
                answer.insert(name.clone(), view);
            }
        }
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(p: i32) -> View {
        Some(Arc::new(TopicView {
            partitions: p,
            replication_factor: Some(1),
            messages: Some(0),
            config: TopicConfig::default(),
        }))
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn read(v: &[(&str, View)]) -> HashMap<String, View> {
        v.iter().map(|(n, x)| (n.to_string(), x.clone())).collect()
    }

    #[test]
    fn answers_only_when_everything_asked_is_known_and_fresh() {
        let t0 = Instant::now();
        let mut s = Snapshot::new(Duration::from_secs(10));
        let ab = names(&["a", "b"]);
        assert!(s.answer(&ab, t0).is_none());
        assert_eq!(s.due(&ab, t0), ab);
        s.record(&read(&[("a", view(1)), ("b", None)]), &ab, t0);
        let got = s.answer(&ab, t0 + Duration::from_secs(9)).expect("fresh");
        assert_eq!(got["a"], view(1));
        assert_eq!(got["b"], None, "absent is an answer too");
        assert!(s.answer(&names(&["a", "c"]), t0).is_none(), "c is unknown");
        assert!(
            s.answer(&ab, t0 + Duration::from_secs(10)).is_none(),
            "stale"
        );
    }

    #[test]
    fn a_refresh_reads_ahead_everything_past_half_its_age() {
        let t0 = Instant::now();
        let mut s = Snapshot::new(Duration::from_secs(10));
        s.record(&read(&[("a", view(1))]), &names(&["a"]), t0);
        s.record(
            &read(&[("b", view(1))]),
            &names(&["b"]),
            t0 + Duration::from_secs(4),
        );
        // At 6 s, asking for c (never read) reads only c.
        assert_eq!(
            s.due(&names(&["c"]), t0 + Duration::from_secs(6)),
            names(&["c"])
        );
        // At 10 s a is stale: asking for it reads a, c and whatever is past half its age
        // (b, 6 s old), not d (4 s old).
        s.record(
            &read(&[("d", view(1))]),
            &names(&["d"]),
            t0 + Duration::from_secs(6),
        );
        assert_eq!(
            s.due(&names(&["a", "c"]), t0 + Duration::from_secs(10)),
            names(&["a", "b", "c"])
        );
    }

    #[test]
    fn forgotten_topics_are_read_again() {
        let t0 = Instant::now();
        let mut s = Snapshot::new(Duration::from_secs(10));
        let a = names(&["a"]);
        s.record(&read(&[("a", view(1))]), &a, t0);
        s.forget(["a"]);
        assert!(s.answer(&a, t0).is_none());
        assert_eq!(s.due(&a, t0), a);
        // Whoever refreshes next reads it too.
        assert_eq!(s.due(&names(&["b"]), t0), names(&["a", "b"]));
    }

    #[test]
    fn topics_nobody_asks_about_are_dropped() {
        let t0 = Instant::now();
        let mut s = Snapshot::new(Duration::from_secs(10));
        s.record(&read(&[("a", view(1))]), &names(&["a"]), t0);
        // b keeps being asked for; a is only read ahead, until it is dropped.
        for i in 1..=4 {
            let now = t0 + Duration::from_secs(10 * i);
            let b = names(&["b"]);
            let due = s.due(&b, now);
            let fetched: HashMap<String, View> = due.iter().map(|n| (n.clone(), view(1))).collect();
            s.record(&fetched, &b, now);
        }
        assert_eq!(s.len(), 1, "a was dropped after three unasked periods");
    }

    #[test]
    fn topic_configs_are_sorted_and_looked_up_by_name() {
        let c: TopicConfig = [
            ("retention.ms".to_string(), "1".to_string()),
            ("cleanup.policy".to_string(), "delete".to_string()),
        ]
        .into_iter()
        .collect();
        assert_eq!(c.get("retention.ms").map(String::as_str), Some("1"));
        assert_eq!(c.get("cleanup.policy").map(String::as_str), Some("delete"));
        assert_eq!(c.get("segment.ms"), None);
        let keys: Vec<String> = c.to_map().into_keys().collect();
        assert_eq!(keys, ["cleanup.policy", "retention.ms"]);
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_refresh_and_matching_keys_are_read_again() {
        let shared: Shared<(String, String), Option<u64>> = Shared::new(Duration::from_secs(60));
        let reads = std::sync::Mutex::new(Vec::new());
        let read = |keys: Vec<(String, String)>| {
            reads.lock().unwrap().push(keys.clone());
            async move {
                // A round trip: others arrive meanwhile.
                tokio::task::yield_now().await;
                Ok(keys.into_iter().map(|k| (k, Some(1))).collect())
            }
        };
        let key = |t: &str, g: &str| (t.to_string(), g.to_string());
        let (a, b, c) = tokio::join!(
            shared.get(vec![key("t", "a")], 10, "test", read),
            shared.get(vec![key("t", "b")], 10, "test", read),
            shared.get(vec![key("u", "c")], 10, "test", read),
        );
        assert_eq!(a.expect("a")[&key("t", "a")], Some(1));
        assert_eq!(b.expect("b")[&key("t", "b")], Some(1));
        assert_eq!(c.expect("c")[&key("u", "c")], Some(1));
        assert_eq!(
            *reads.lock().unwrap(),
            vec![vec![key("t", "a")], vec![key("t", "b"), key("u", "c")]],
            "the two arriving during the first read share the next"
        );
        // Fresh: answered without a read.
        shared
            .get(vec![key("u", "c")], 10, "test", read)
            .await
            .expect("fresh");
        assert_eq!(reads.lock().unwrap().len(), 2);
        // Topic t changed: its keys are read again, u's are not.
        shared.forget_matching(|(t, _)| t == "t");
        shared
            .get(vec![key("t", "a")], 10, "test", read)
            .await
            .expect("again");
        let last = reads.lock().unwrap().last().cloned().expect("a read");
        assert_eq!(last, vec![key("t", "a"), key("t", "b")]);
    }

    #[test]
    fn zero_max_age_keeps_nothing() {
        let t0 = Instant::now();
        let mut s = Snapshot::new(Duration::ZERO);
        let a = names(&["a"]);
        s.record(&read(&[("a", view(1))]), &a, t0);
        assert!(s.answer(&a, t0).is_none());
        assert_eq!(s.len(), 0);
    }
}
