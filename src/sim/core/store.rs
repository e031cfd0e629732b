//! The store: objects by key, the global resourceVersion, the index of uids, and the history of
//! changes that watches replay (410 Gone from before its oldest entry). Every change goes through
//! [`Locked::commit`], which also tells the watchers and keeps the served CRD types in step.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;
use tokio::sync::{Notify, broadcast};

use super::crds;
use super::object::{meta_str, metadata_mut};
use crate::sim::error::ApiError;
use crate::sim::registry::{Registry, ResourceType};

/// Group, version and plural of a resource type.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Gvr {
    /// API group (`""` for core).
    pub group: String,
    /// Version.
    pub version: String,
    /// Plural name.
    pub plural: String,
}

impl Gvr {
    /// A Gvr from its parts.
    pub fn new(group: &str, version: &str, plural: &str) -> Self {
        Self { group: group.into(), version: version.into(), plural: plural.into() }
    }
}

/// Where an object is kept: type (without version), namespace (`""` if cluster-scoped), name.
/// Keys sort by type, namespace, name, so the objects of one type are one range.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct Key {
    pub(super) group: String,
    pub(super) plural: String,
    pub(super) namespace: String,
    pub(super) name: String,
}

impl Key {
    /// The key of `name` of type `t` (the namespace ignored for a cluster-scoped type).
    pub(super) fn new(t: &ResourceType, namespace: Option<&str>, name: &str) -> Self {
        Self {
            group: t.group.clone(),
            plural: t.plural.clone(),
            namespace: if t.namespaced { namespace.unwrap_or_default().to_string() } else { String::new() },
            name: name.to_string(),
        }
    }

    /// The key of the Namespace `name`.
    pub(super) fn namespace(name: &str) -> Self {
        Self { group: String::new(), plural: "namespaces".into(), namespace: String::new(), name: name.into() }
    }
}

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Created.
    Added,
    /// Changed.
    Modified,
    /// Removed.
    Deleted,
}

impl EventType {
    /// As the watch stream spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One change, as watches see it.
#[derive(Debug, Clone)]
pub struct Event {
    /// The resourceVersion of the change.
    pub rv: u64,
    /// What happened.
    pub type_: EventType,
    /// Group of the object's type.
    pub group: String,
    /// Plural of the object's type.
    pub plural: String,
    /// Namespace (`""` for cluster-scoped).
    pub namespace: String,
    /// The object after the change (before, for a deletion, with the deletion's resourceVersion).
    pub object: Arc<Value>,
    /// The object before a modification, so a watch with a selector can tell an object that
    /// stopped (or started) matching.
    pub previous: Option<Arc<Value>>,
}

/// Receives every change after a point.
pub type EventReceiver = broadcast::Receiver<Arc<Event>>;

/// What the store holds.
pub(super) struct State {
    registry: Registry,
    rv: u64,
    objects: BTreeMap<Key, Arc<Value>>,
    uids: HashMap<String, Key>,
    log: VecDeque<Arc<Event>>,
    oldest_rv: u64,
    log_capacity: usize,
}

impl State {
    /// The served types.
    pub(super) fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The current resourceVersion.
    pub(super) fn rv(&self) -> u64 {
        self.rv
    }

    /// The type served at `gvr`; 404 as the real server's router when none is.
    pub(super) fn resolve(&self, gvr: &Gvr) -> Result<ResourceType, ApiError> {
        self.registry
            .get(&gvr.group, &gvr.version, &gvr.plural)
            .cloned()
            .ok_or_else(|| ApiError::no_route(&format!("{}/{}, Resource={}", gvr.group, gvr.version, gvr.plural)))
    }

    /// The object at `key`.
    pub(super) fn object(&self, key: &Key) -> Option<&Value> {
        self.objects.get(key).map(Arc::as_ref)
    }

    /// The object at `key` (a copy), or 404.
    pub(super) fn existing(&self, t: &ResourceType, key: &Key) -> Result<Value, ApiError> {
        self.object(key).cloned().ok_or_else(|| ApiError::not_found(t, &key.name))
    }

    /// The objects from `first` on, in key order.
    pub(super) fn objects_from(&self, first: Key) -> impl Iterator<Item = (&Key, &Arc<Value>)> {
        self.objects.range(first..)
    }

    /// Every object, in key order.
    pub(super) fn objects(&self) -> impl Iterator<Item = (&Key, &Arc<Value>)> {
        self.objects.iter()
    }

    /// Every object with its type, in key order.
    pub(super) fn typed_objects(&self) -> Vec<(ResourceType, Value)> {
        self.objects
            .iter()
            .filter_map(|(k, v)| {
                let t = self.registry.all().find(|t| t.group == k.group && t.plural == k.plural)?;
                Some((t.clone(), Value::clone(v)))
            })
            .collect()
    }

    /// Number of objects held.
    pub(super) fn object_count(&self) -> usize {
        self.objects.len()
    }

    /// Whether an object with this uid exists.
    pub(super) fn uid_exists(&self, uid: &str) -> bool {
        self.uids.contains_key(uid)
    }

    /// The changes after `since`; 410 when `since` is older than the kept history.
    pub(super) fn history_since(&self, since: u64) -> Result<Vec<Arc<Event>>, ApiError> {
        if since < self.oldest_rv {
            return Err(ApiError::expired(since, self.oldest_rv));
        }
        Ok(self.log.iter().filter(|e| e.rv > since).cloned().collect())
    }

    /// Store the object at `key` (or remove it): what the key held before.
    fn put(&mut self, key: &Key, stored: &Arc<Value>, deleted: bool) -> Option<Arc<Value>> {
        let uid = meta_str(stored, "uid").map(str::to_string);
        if deleted {
            self.objects.remove(key);
            if let Some(uid) = uid {
                self.uids.remove(&uid);
            }
            return None;
        }
        if let Some(uid) = uid {
            self.uids.insert(uid, key.clone());
        }
        self.objects.insert(key.clone(), stored.clone())
    }

    /// Keep `event` in the history, dropping the oldest beyond its capacity.
    fn record(&mut self, event: Arc<Event>) {
        self.log.push_back(event);
        while self.log.len() > self.log_capacity {
            if let Some(old) = self.log.pop_front() {
                self.oldest_rv = old.rv;
            }
        }
    }
}

/// The state behind its lock, with the channels that tell watchers and controllers of changes.
pub(super) struct Store {
    state: Mutex<State>,
    events: broadcast::Sender<Arc<Event>>,
    changed: Notify,
}

impl Store {
    /// An empty store serving the built-in types, keeping `log_capacity` events for watches.
    pub(super) fn new(log_capacity: usize) -> Self {
        let (events, _) = broadcast::channel(16384);
        Self {
            state: Mutex::new(State {
                registry: Registry::with_builtins(),
                rv: 100,
                objects: BTreeMap::new(),
                uids: HashMap::new(),
                log: VecDeque::new(),
                oldest_rv: 100,
                log_capacity: log_capacity.max(16),
            }),
            events,
            changed: Notify::new(),
        }
    }

    /// The state, locked for one read or write.
    pub(super) fn lock(&self) -> Locked<'_> {
        // A panic while holding the lock leaves consistent data (every write is one insert), so
        // a poisoned lock is taken over rather than propagated.
        let state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Locked { state, events: &self.events, changed: &self.changed }
    }

    /// Subscribe to every change.
    pub(super) fn subscribe(&self) -> EventReceiver {
        self.events.subscribe()
    }

    /// Wait until something changes.
    pub(super) async fn changed(&self) {
        self.changed.notified().await;
    }
}

/// The locked state: reads through `Deref`, changes through [`Locked::commit`].
pub(super) struct Locked<'a> {
    state: MutexGuard<'a, State>,
    events: &'a broadcast::Sender<Arc<Event>>,
    changed: &'a Notify,
}

impl Deref for Locked<'_> {
    type Target = State;

    fn deref(&self) -> &State {
        &self.state
    }
}

impl Locked<'_> {
    /// Subscribe to every change after the current state.
    pub(super) fn subscribe(&self) -> EventReceiver {
        self.events.subscribe()
    }

    /// Drop the event history: a watch from any earlier resourceVersion gets 410 Gone.
    pub(super) fn compact(&mut self) {
        self.state.log.clear();
        self.state.oldest_rv = self.state.rv;
    }

    /// Store `obj` (or remove the object) under a new resourceVersion and tell the watchers.
    pub(super) fn commit(&mut self, t: &ResourceType, key: Key, obj: Option<Value>, previous: Option<&Value>) -> Value {
        self.state.rv += 1;
        let rv = self.state.rv;
        let (type_, mut stored) = match obj {
            Some(o) => (if previous.is_some() { EventType::Modified } else { EventType::Added }, o),
            None => (EventType::Deleted, previous.cloned().unwrap_or(Value::Null)),
        };
        metadata_mut(&mut stored).insert("resourceVersion".into(), Value::String(rv.to_string()));
        let stored = Arc::new(stored);
        let deleted = type_ == EventType::Deleted;
        let replaced = self.state.put(&key, &stored, deleted);
        let event = Arc::new(Event {
            rv,
            type_,
            group: t.group.clone(),
            plural: t.plural.clone(),
            namespace: key.namespace,
            object: stored.clone(),
            previous: replaced,
        });
        self.state.record(event.clone());
        let _receivers = self.events.send(event);
        self.changed.notify_waiters();
        if crds::is_crd_type(t) {
            crds::sync(&mut self.state.registry, &stored, deleted);
        }
        Value::clone(&stored)
    }
}
