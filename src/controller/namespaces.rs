//! Watching a list of namespaces: one watch per namespace (so RBAC is needed only there), merged
//! into one event stream whose events keep a single reflector store correct.
//!
//! A reflector replaces its whole store when a watch's initial list ends, so the list events of
//! one namespace cannot reach it as they are: they would wipe the others. Until every namespace
//! has listed once, the lists are gathered here and handed on as one initial list. After that,
//! a namespace that lists again (its watch expired) is handed on as a new initial list made of
//! the other namespaces' objects as the store holds them plus that namespace's new list, so
//! objects deleted while its watch was down leave the store, and nothing else changes.

use std::collections::{HashMap, HashSet};

use futures::{Stream, StreamExt};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Resource, ResourceExt};

type Item<K> = Result<Event<K>, watcher::Error>;

/// Merges per-namespace watch streams (each item tagged with its namespace) for one store.
pub(crate) struct Merge<K: Resource<DynamicType = ()> + Clone + 'static> {
    namespaces: usize,
    store: Option<Store<K>>,
    /// Namespaces whose first list has ended.
    listed: HashSet<String>,
    /// The gathered first lists, with what changed since, until every namespace has listed.
    first: Option<HashMap<ObjectRef<K>, K>>,
    /// Namespaces listing again, with the objects listed so far.
    relisting: HashMap<String, Vec<K>>,
}

impl<K> Merge<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    /// For `namespaces` streams; `store` is the store the merged events feed (read at a
    /// namespace's relist, for the other namespaces' objects).
    pub(crate) fn new(namespaces: usize, store: Option<Store<K>>) -> Self {
        Self {
            namespaces,
            store,
            listed: HashSet::new(),
            first: Some(HashMap::new()),
            relisting: HashMap::new(),
        }
    }

    /// The events to hand on for one event of namespace `ns`.
    pub(crate) fn push(&mut self, ns: &str, item: Item<K>) -> Vec<Item<K>> {
        let event = match item {
            Ok(event) => event,
            Err(e) => return vec![Err(e)],
        };
        if let Some(first) = &mut self.first {
            match event {
                Event::Init => {
                    self.listed.remove(ns);
                    first.retain(|key, _| key.namespace.as_deref() != Some(ns));
                }
                Event::InitApply(obj) | Event::Apply(obj) => {
                    first.insert(ObjectRef::from_obj(&obj), obj);
                }
                Event::Delete(obj) => {
                    first.remove(&ObjectRef::from_obj(&obj));
                }
                Event::InitDone => {
                    self.listed.insert(ns.to_string());
                }
            }
            if self.listed.len() < self.namespaces {
                return Vec::new();
            }
            let objects = self.first.take().unwrap_or_default();
            return std::iter::once(Event::Init)
                .chain(objects.into_values().map(Event::InitApply))
                .chain(std::iter::once(Event::InitDone))
                .map(Ok)
                .collect();
        }
        match event {
            Event::Init => {
                self.relisting.insert(ns.to_string(), Vec::new());
                Vec::new()
            }
            Event::InitApply(obj) => {
                self.relisting.entry(ns.to_string()).or_default().push(obj);
                Vec::new()
            }
            Event::InitDone => {
                let listed = self.relisting.remove(ns).unwrap_or_default();
                let others = self
                    .store
                    .as_ref()
                    .map(|s| s.state())
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|obj| obj.namespace().as_deref() != Some(ns))
                    .map(|obj| (*obj).clone());
                std::iter::once(Event::Init)
                    .chain(others.chain(listed).map(Event::InitApply))
                    .chain(std::iter::once(Event::InitDone))
                    .map(Ok)
                    .collect()
            }
            Event::Apply(obj) => vec![Ok(Event::Apply(obj))],
            Event::Delete(obj) => vec![Ok(Event::Delete(obj))],
        }
    }
}

/// The watches of several namespaces (each with its namespace), merged for `store`.
pub(crate) fn merged<K, S>(
    watches: Vec<(String, S)>,
    store: Option<Store<K>>,
) -> impl Stream<Item = Item<K>> + Send
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    S: Stream<Item = Item<K>> + Send + 'static,
{
    let mut merge = Merge::new(watches.len(), store);
    let streams = watches
        .into_iter()
        .map(|(ns, watch)| watch.map(move |item| (ns.clone(), item)).boxed());
    futures::stream::select_all(streams)
        .flat_map(move |(ns, item)| futures::stream::iter(merge.push(&ns, item)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;
    use kube::runtime::reflector;

    fn cm(ns: &str, name: &str, v: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                resource_version: Some(v.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// The store's content as `ns/name@version`, sorted.
    fn content(store: &Store<ConfigMap>) -> Vec<String> {
        let mut all: Vec<String> = store
            .state()
            .iter()
            .map(|c| {
                format!(
                    "{}/{}@{}",
                    c.namespace().unwrap_or_default(),
                    c.name_any(),
                    c.resource_version().unwrap_or_default()
                )
            })
            .collect();
        all.sort();
        all
    }

    /// Feeds events through the merge into a real reflector store.
    struct Harness {
        merge: Merge<ConfigMap>,
        writer: reflector::store::Writer<ConfigMap>,
        store: Store<ConfigMap>,
    }

    impl Harness {
        fn new(namespaces: usize) -> Self {
            let (store, writer) = reflector::store();
            Self {
                merge: Merge::new(namespaces, Some(store.clone())),
                writer,
                store,
            }
        }

        fn feed(&mut self, ns: &str, events: Vec<Event<ConfigMap>>) {
            for event in events {
                for out in self.merge.push(ns, Ok(event)) {
                    self.writer.apply_watcher_event(&out.expect("no error"));
                }
            }
        }
    }

    #[test]
    fn the_store_is_ready_only_when_every_namespace_has_listed() {
        let mut h = Harness::new(2);
        h.feed(
            "a",
            vec![
                Event::Init,
                Event::InitApply(cm("a", "x", "1")),
                Event::InitDone,
            ],
        );
        // Changes in a listed namespace while the other still lists are kept, not applied early.
        h.feed(
            "a",
            vec![
                Event::Apply(cm("a", "y", "2")),
                Event::Delete(cm("a", "x", "1")),
            ],
        );
        assert!(content(&h.store).is_empty());
        h.feed(
            "b",
            vec![
                Event::Init,
                Event::InitApply(cm("b", "x", "1")),
                Event::InitDone,
            ],
        );
        assert_eq!(content(&h.store), ["a/y@2", "b/x@1"]);
    }

    #[test]
    fn a_relist_of_one_namespace_replaces_only_that_namespace() {
        let mut h = Harness::new(2);
        for ns in ["a", "b"] {
            h.feed(
                ns,
                vec![
                    Event::Init,
                    Event::InitApply(cm(ns, "x", "1")),
                    Event::InitApply(cm(ns, "gone", "1")),
                    Event::InitDone,
                ],
            );
        }
        h.feed("b", vec![Event::Apply(cm("b", "x", "2"))]);
        // a's watch expired; meanwhile `a/gone` was deleted and `a/new` created.
        h.feed("a", vec![Event::Init, Event::InitApply(cm("a", "x", "3"))]);
        // b keeps changing during a's relist.
        h.feed("b", vec![Event::Apply(cm("b", "y", "1"))]);
        h.feed(
            "a",
            vec![Event::InitApply(cm("a", "new", "1")), Event::InitDone],
        );
        assert_eq!(
            content(&h.store),
            ["a/new@1", "a/x@3", "b/gone@1", "b/x@2", "b/y@1"]
        );
    }

    #[test]
    fn watch_errors_pass_through() {
        let mut merge: Merge<ConfigMap> = Merge::new(2, None);
        let out = merge.push("a", Err(watcher::Error::NoResourceVersion));
        assert!(matches!(
            out.as_slice(),
            [Err(watcher::Error::NoResourceVersion)]
        ));
    }
}
