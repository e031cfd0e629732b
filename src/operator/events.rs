//! Events (`events.k8s.io/v1`) about the objects the operator reconciles. A repeat of an Event
//! (same object, type, reason and action) within six minutes counts up one series instead of
//! making a new Event, as client-go's recorder and kube's do. Unlike kube's `Recorder`, which
//! keeps every Event it made in the last six minutes whole (at 10,000 ModelDeployments created
//! in a minute, 10,000 Events with their object references, about a sixth of the operator's
//! memory), this one remembers only what a repeat needs (the Event's name, namespace, count and
//! time) under a fixed-size key, and at most [`CAPACITY`] of them (client-go's limit), the
//! oldest dropped first: a repeat after that makes a new Event, as after the six minutes.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
pub use kube::runtime::events::{Event, EventType};
use sha2::Digest;

/// How long a repeat still counts up the same series.
pub const SERIES_TTL: SignedDuration = SignedDuration::from_mins(6);
/// The most series remembered at once.
pub const CAPACITY: usize = 4096;

/// Who publishes (`reportingController`, `reportingInstance`).
#[derive(Debug, Clone)]
pub struct Reporter {
    /// The controller's name.
    pub controller: String,
    /// This replica (the controller's name when none is given).
    pub instance: Option<String>,
}

/// What a repeat needs of the Event it counts up.
#[derive(Debug, Clone)]
struct Series {
    namespace: String,
    name: String,
    count: i32,
    last: Timestamp,
}

/// The series remembered, oldest first.
#[derive(Debug, Default)]
struct Cache {
    entries: HashMap<[u8; 16], Series>,
    order: VecDeque<[u8; 16]>,
}

impl Cache {
    /// The live series of `key` at `now`, if any.
    fn live(&self, key: &[u8; 16], now: Timestamp) -> Option<&Series> {
        self.entries.get(key).filter(|s| s.last + SERIES_TTL > now)
    }

    /// Remember `series` under `key`, dropping the oldest past the capacity and those expired.
    fn insert(&mut self, key: [u8; 16], series: Series, now: Timestamp) {
        if self.entries.insert(key, series).is_none() {
            self.order.push_back(key);
        }
        while let Some(front) = self.order.front() {
            let expired = self.entries.get(front).is_none_or(|s| s.last + SERIES_TTL <= now);
            if !expired && self.order.len() <= CAPACITY {
                break;
            }
            if let Some(old) = self.order.pop_front() {
                self.entries.remove(&old);
            }
        }
    }
}

/// Publishes Events; cheap to share (one per operator).
pub struct Recorder {
    client: Client,
    reporter: Reporter,
    cache: Mutex<Cache>,
}

/// The fixed-size key of an Event's series: its object, type, reason and action.
fn series_key(ev: &Event, regarding: &ObjectReference) -> [u8; 16] {
    let mut h = sha2::Sha256::new();
    for part in [
        regarding.api_version.as_deref(),
        regarding.kind.as_deref(),
        regarding.namespace.as_deref(),
        regarding.name.as_deref(),
        regarding.uid.as_deref(),
        Some(if ev.type_ == EventType::Warning { "Warning" } else { "Normal" }),
        Some(ev.reason.as_str()),
        Some(ev.action.as_str()),
    ] {
        h.update(part.unwrap_or_default().as_bytes());
        h.update([0]);
    }
    let digest = h.finalize();
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    key
}

impl Recorder {
    /// A recorder over `client`.
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Self { client, reporter, cache: Mutex::new(Cache::default()) }
    }

    /// How many series are remembered (for tests and the benchmark).
    pub fn remembered(&self) -> usize {
        self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner).entries.len()
    }

    /// The new Event of `ev` about `regarding`, at `now`.
    fn new_event(&self, ev: &Event, regarding: &ObjectReference, now: Timestamp) -> K8sEvent {
        let object = regarding.name.as_deref().unwrap_or(&self.reporter.controller);
        K8sEvent {
            metadata: ObjectMeta {
                namespace: regarding.namespace.clone(),
                name: Some(format!("{object}.{:x}", now.as_nanosecond())),
                ..ObjectMeta::default()
            },
            action: Some(ev.action.clone()),
            reason: Some(ev.reason.clone()),
            note: ev.note.clone(),
            type_: Some(if ev.type_ == EventType::Warning { "Warning" } else { "Normal" }.to_string()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            related: ev.secondary.clone(),
            reporting_controller: Some(self.reporter.controller.clone()),
            reporting_instance: Some(
                self.reporter.instance.clone().unwrap_or_else(|| self.reporter.controller.clone()),
            ),
            ..K8sEvent::default()
        }
    }

    /// Publish `ev` about `regarding` (in its namespace; `default` for a cluster-scoped one):
    /// a repeat of a live series counts it up, anything else makes a new Event.
    pub async fn publish(&self, ev: &Event, regarding: &ObjectReference) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let key = series_key(ev, regarding);
        let repeat = {
            let cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            cache.live(&key, now).cloned()
        };
        if let Some(series) = repeat {
            let count = series.count + 1;
            let events: Api<K8sEvent> = Api::namespaced(self.client.clone(), &series.namespace);
            let patch = serde_json::json!({"series": {"count": count, "lastObservedTime": MicroTime(now)}});
            match events.patch(&series.name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => {
                    let counted = Series { count, last: now, ..series };
                    self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(key, counted, now);
                    return Ok(());
                }
                // The Event expired on the server (or was deleted): a new one.
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let event = self.new_event(ev, regarding, now);
        let namespace = regarding.namespace.clone().unwrap_or_else(|| "default".to_string());
        let events: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
        events.create(&PostParams::default(), &event).await?;
        let name = event.metadata.name.unwrap_or_default();
        let first = Series { namespace, name, count: 1, last: now };
        self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(key, first, now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn series(name: &str, last: Timestamp) -> Series {
        Series { namespace: "ns".into(), name: name.into(), count: 1, last }
    }

    fn key(i: usize) -> [u8; 16] {
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&(i as u64).to_le_bytes());
        k
    }

    #[test]
    fn a_series_lives_six_minutes_from_its_last_repeat() {
        let mut cache = Cache::default();
        cache.insert(key(1), series("a", at(0)), at(0));
        assert!(cache.live(&key(1), at(359)).is_some());
        assert!(cache.live(&key(1), at(360)).is_none());
        cache.insert(key(1), series("a", at(300)), at(300));
        assert!(cache.live(&key(1), at(659)).is_some(), "a repeat keeps it alive");
        assert_eq!(cache.order.len(), 1, "a repeat is not a second entry");
    }

    #[test]
    fn the_cache_holds_at_most_its_capacity_dropping_the_oldest_and_the_expired() {
        let mut cache = Cache::default();
        for i in 0..CAPACITY + 10 {
            cache.insert(key(i), series("e", at(0)), at(0));
        }
        assert_eq!((cache.entries.len(), cache.order.len()), (CAPACITY, CAPACITY));
        assert!(cache.live(&key(0), at(0)).is_none(), "the oldest went first");
        assert!(cache.live(&key(CAPACITY + 9), at(0)).is_some());
        // Six minutes on, one insert clears the expired ones in front of it.
        cache.insert(key(usize::MAX), series("late", at(400)), at(400));
        assert_eq!(cache.entries.len(), 1);
    }

    #[test]
    fn the_key_separates_objects_reasons_actions_and_types() {
        let obj = |name: &str, uid: &str| ObjectReference {
            api_version: Some("flywheel.dev/v1alpha1".into()),
            kind: Some("ModelDeployment".into()),
            namespace: Some("ns".into()),
            name: Some(name.into()),
            uid: Some(uid.into()),
            ..ObjectReference::default()
        };
        let ev = |type_, reason: &str, action: &str| Event {
            type_,
            reason: reason.into(),
            note: None,
            action: action.into(),
            secondary: None,
        };
        let base = series_key(&ev(EventType::Normal, "Scaled", "a"), &obj("m", "1"));
        assert_eq!(base, series_key(&ev(EventType::Normal, "Scaled", "a"), &obj("m", "1")));
        for other in [
            series_key(&ev(EventType::Warning, "Scaled", "a"), &obj("m", "1")),
            series_key(&ev(EventType::Normal, "Deployed", "a"), &obj("m", "1")),
            series_key(&ev(EventType::Normal, "Scaled", "b"), &obj("m", "1")),
            series_key(&ev(EventType::Normal, "Scaled", "a"), &obj("n", "1")),
            series_key(&ev(EventType::Normal, "Scaled", "a"), &obj("m", "2")),
        ] {
            assert_ne!(base, other);
        }
    }
}
