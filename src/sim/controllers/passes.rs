//! When the simulated control plane passes over everything, and what it reconciles in between.
//!
//! A small cluster gets a full pass (every controller over every object) after each burst of
//! events, as it always has. A full pass grows with the cluster, and at thousands of objects one
//! costs more than the events arriving in the meantime allow: passes ran back to back and a
//! Deployment waited for all the others before its next look. So once a full pass costs
//! [`CHEAP_PASS`] or more, the loop reconciles after each burst only the Deployments and Jobs an
//! event touched (the object itself, or one of its pods), reading pods from a cache kept from the
//! event stream, and makes a full pass when [`FULL_PASS_FACTOR`] times the last one's cost has
//! passed (never more often than every [`MIN_FULL_INTERVAL`]). At that scale the work only a full
//! pass does (deadlines, TTLs, garbage collection, namespaces, disruption budgets, pods or CRDs
//! missed while the event stream lagged) waits for the next one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::common::{PodsByOwner, owner_uids, s};
use crate::sim::core::{Event, EventType};

/// A full pass cheaper than this keeps the loop in full-pass mode.
pub(super) const CHEAP_PASS: Duration = Duration::from_millis(20);
/// In incremental mode, a full pass waits this many times the last one's cost.
pub(super) const FULL_PASS_FACTOR: u32 = 10;
/// The shortest interval between two full passes in incremental mode.
pub(super) const MIN_FULL_INTERVAL: Duration = Duration::from_millis(200);

/// A namespace and a name.
type Key = (String, String);

fn key_of(obj: &Value) -> Option<Key> {
    let name = s(obj, "/metadata/name")?;
    Some((s(obj, "/metadata/namespace").unwrap_or_default().to_string(), name.to_string()))
}

/// Every pod, as of the last full pass's snapshot and the events after it.
#[derive(Default)]
struct PodCache {
    /// The snapshot's resourceVersion: events at or below it are in the snapshot already.
    rv: u64,
    pods: HashMap<Key, Value>,
    by_owner: HashMap<String, BTreeSet<Key>>,
}

impl PodCache {
    fn from_snapshot(pods: &[Value], rv: u64) -> Self {
        let mut cache = PodCache { rv, ..PodCache::default() };
        for pod in pods {
            cache.put(pod.clone());
        }
        cache
    }

    fn remove(&mut self, key: &Key) {
        if let Some(old) = self.pods.remove(key) {
            for uid in owner_uids(&old) {
                if let Some(keys) = self.by_owner.get_mut(&uid) {
                    keys.remove(key);
                    if keys.is_empty() {
                        self.by_owner.remove(&uid);
                    }
                }
            }
        }
    }

    fn put(&mut self, pod: Value) {
        let Some(key) = key_of(&pod) else { return };
        self.remove(&key);
        for uid in owner_uids(&pod) {
            self.by_owner.entry(uid).or_default().insert(key.clone());
        }
        self.pods.insert(key, pod);
    }

    fn apply(&mut self, event: &Event) {
        if event.rv <= self.rv {
            return;
        }
        match event.type_ {
            EventType::Deleted => {
                if let Some(key) = key_of(&event.object) {
                    self.remove(&key);
                }
            }
            EventType::Added | EventType::Modified => self.put(event.object.as_ref().clone()),
        }
    }

    /// The pods of the owners with these uids.
    fn owned_by<'a>(&self, uids: impl Iterator<Item = &'a str>) -> PodsByOwner {
        let mut out: PodsByOwner = BTreeMap::new();
        for uid in uids {
            let pods = self.by_owner.get(uid).into_iter().flatten().filter_map(|k| self.pods.get(k)).cloned();
            out.insert(uid.to_string(), pods.collect());
        }
        out
    }
}

/// The next pass to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pass {
    /// Every controller over everything.
    Full,
    /// The touched Deployments and Jobs only.
    Incremental,
}

/// What the loop knows between passes: the last full pass's cost, the pod cache, what events
/// touched.
#[derive(Default)]
pub(super) struct Passes {
    cost: Duration,
    last_full: Option<Instant>,
    cache: Option<PodCache>,
    lagged: bool,
    deployments: BTreeSet<Key>,
    jobs: BTreeSet<Key>,
}

impl Passes {
    /// Take an event into the cache and the touched sets.
    pub(super) fn note(&mut self, event: &Event) {
        match (event.group.as_str(), event.plural.as_str()) {
            ("apps", "deployments") => self.deployments.extend(key_of(&event.object)),
            ("batch", "jobs") => self.jobs.extend(key_of(&event.object)),
            ("", "pods") => {
                for obj in std::iter::once(&event.object).chain(event.previous.iter()) {
                    let refs = obj.pointer("/metadata/ownerReferences").and_then(Value::as_array);
                    for r in refs.into_iter().flatten() {
                        let (Some(kind), Some(name)) = (s(r, "/kind"), s(r, "/name")) else { continue };
                        let key = (event.namespace.clone(), name.to_string());
                        match kind {
                            "Deployment" => {
                                self.deployments.insert(key);
                            }
                            "Job" => {
                                self.jobs.insert(key);
                            }
                            _ => {}
                        }
                    }
                }
                if let Some(cache) = &mut self.cache {
                    cache.apply(event);
                }
            }
            _ => {}
        }
    }

    /// The event stream dropped events: the cache cannot be trusted until the next full pass.
    pub(super) fn lagged(&mut self) {
        self.lagged = true;
        self.cache = None;
    }

    /// Whether the last full pass was cheap enough to make one after every burst.
    pub(super) fn cheap(&self) -> bool {
        self.cost < CHEAP_PASS
    }

    /// The pass to make now.
    pub(super) fn next(&self, now: Instant) -> Pass {
        let Some(last) = self.last_full else { return Pass::Full };
        if self.cheap() || self.lagged || self.cache.is_none() {
            return Pass::Full;
        }
        let interval = (self.cost * FULL_PASS_FACTOR).max(MIN_FULL_INTERVAL);
        if now.saturating_duration_since(last) >= interval { Pass::Full } else { Pass::Incremental }
    }

    /// A full pass began at `started` on the pod snapshot `pods` taken at `rv`, and ended at
    /// `finished`; what events touched before it is done.
    pub(super) fn full_done(&mut self, started: Instant, finished: Instant, pods: &[Value], rv: u64) {
        self.cost = finished.saturating_duration_since(started);
        self.last_full = Some(started);
        self.lagged = false;
        self.cache = Some(PodCache::from_snapshot(pods, rv));
        self.deployments.clear();
        self.jobs.clear();
    }

    /// The Deployments and Jobs touched since the last pass, forgotten as they are handed out.
    pub(super) fn take_touched(&mut self) -> (BTreeSet<Key>, BTreeSet<Key>) {
        (std::mem::take(&mut self.deployments), std::mem::take(&mut self.jobs))
    }

    /// The cached pods of these owners.
    pub(super) fn pods_of<'a>(&self, owners: impl Iterator<Item = &'a Value>) -> PodsByOwner {
        let uids = owners.filter_map(|o| s(o, "/metadata/uid"));
        self.cache.as_ref().map(|c| c.owned_by(uids)).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;

    fn pod(name: &str, owner_kind: &str, owner: &str, uid: &str, phase: &str) -> Value {
        json!({"metadata": {"namespace": "ns", "name": name,
            "ownerReferences": [{"kind": owner_kind, "name": owner, "uid": uid}]},
            "status": {"phase": phase}})
    }

    fn event(rv: u64, type_: EventType, object: Value) -> Event {
        Event {
            rv,
            type_,
            group: String::new(),
            plural: "pods".into(),
            namespace: "ns".into(),
            object: Arc::new(object),
            previous: None,
        }
    }

    fn owner(uid: &str) -> Value {
        json!({"metadata": {"uid": uid}})
    }

    #[test]
    fn a_small_cluster_always_gets_full_passes() {
        let mut passes = Passes::default();
        let t0 = Instant::now();
        assert_eq!(passes.next(t0), Pass::Full);
        passes.full_done(t0, t0 + Duration::from_millis(5), &[], 10);
        assert!(passes.cheap());
        assert_eq!(passes.next(t0 + Duration::from_millis(6)), Pass::Full);
    }

    #[test]
    fn an_expensive_full_pass_spaces_the_next_and_passes_in_between_are_incremental() {
        let mut passes = Passes::default();
        let t0 = Instant::now();
        passes.full_done(t0, t0 + Duration::from_millis(100), &[], 10);
        assert_eq!(passes.next(t0 + Duration::from_millis(101)), Pass::Incremental);
        assert_eq!(passes.next(t0 + Duration::from_millis(999)), Pass::Incremental);
        assert_eq!(passes.next(t0 + Duration::from_millis(1000)), Pass::Full);
        // A lagged stream makes the cache untrustworthy: the next pass is full.
        passes.lagged();
        assert_eq!(passes.next(t0 + Duration::from_millis(101)), Pass::Full);
    }

    #[test]
    fn pod_events_touch_their_owners_and_keep_the_cache_after_the_snapshot() {
        let mut passes = Passes::default();
        let t0 = Instant::now();
        let snapshot = [pod("a", "Deployment", "web", "u1", "Pending")];
        passes.full_done(t0, t0 + Duration::from_millis(100), &snapshot, 10);
        // An event at or below the snapshot's resourceVersion is in it already: ignored.
        passes.note(&event(9, EventType::Deleted, pod("a", "Deployment", "web", "u1", "Pending")));
        assert_eq!(passes.pods_of([owner("u1")].iter())["u1"].len(), 1);
        // Newer events change the cache and touch the owner.
        passes.note(&event(11, EventType::Modified, pod("a", "Deployment", "web", "u1", "Running")));
        passes.note(&event(12, EventType::Added, pod("j-1", "Job", "train", "u2", "Pending")));
        let (deployments, jobs) = passes.take_touched();
        assert!(deployments.contains(&("ns".to_string(), "web".to_string())), "{deployments:?}");
        assert!(jobs.contains(&("ns".to_string(), "train".to_string())), "{jobs:?}");
        let pods = passes.pods_of([owner("u1"), owner("u2")].iter());
        assert_eq!(pods["u1"][0]["status"]["phase"], "Running");
        assert_eq!(pods["u2"].len(), 1);
        passes.note(&event(13, EventType::Deleted, pod("a", "Deployment", "web", "u1", "Running")));
        assert!(passes.pods_of([owner("u1")].iter())["u1"].is_empty());
        // Handed out once.
        let (deployments, jobs) = passes.take_touched();
        assert_eq!((deployments.len(), jobs.len()), (1, 0));
    }
}
