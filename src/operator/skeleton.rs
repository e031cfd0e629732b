//! The one skeleton every controller runs on. A controller implements [`Reconciler`]: its name,
//! its error type (with a category), and a `reconcile` that reads as four named steps: observe
//! (reads) → validate (a validated type) → decide (pure, with `now`) → apply (writes). This
//! module wraps it the same way for all of them: timing and metrics, a log line with fields, a
//! Warning Event, and the failure recorded in the object's status (`Ready` False with the
//! error's category, until a reconcile succeeds); and the backoff and requeue bookkeeping.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::core::object::HasStatus;
use kube::runtime::controller::Action;
use kube::{Client, Resource, ResourceExt};
use rand::Rng;
use serde_json::Value;

use super::events::{Event, EventType, Recorder};
use super::metrics::Metrics;
use crate::api::conditions::{self, Conditioned, Health};

/// A failed API request, with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("{action}: {source}")]
pub struct KubeError {
    /// What was being done.
    pub action: String,
    /// The error.
    #[source]
    pub source: kube::Error,
}

impl KubeError {
    /// `Conflict` for a 409 (a stale write, retried), `KubeApiError` otherwise.
    pub fn category(&self) -> &'static str {
        match &self.source {
            kube::Error::Api(s) if s.code == 409 => "Conflict",
            _ => "KubeApiError",
        }
    }
}

/// `map_err(kube("reading X"))`: a [`KubeError`] saying what failed.
pub fn kube(action: impl Into<String>) -> impl FnOnce(kube::Error) -> KubeError {
    let action = action.into();
    move |source| KubeError { action, source }
}

/// An error of a controller: a short static category, used as the failure metric's label and
/// the Warning Event's reason.
pub trait Category: std::error::Error + Send + Sync + 'static {
    /// The category.
    fn category(&self) -> &'static str;
}

/// An Event a decision publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Normal or Warning.
    pub type_: EventType,
    /// CamelCase reason.
    pub reason: String,
    /// What happened.
    pub note: String,
}

impl Note {
    /// A Normal Event.
    pub fn normal(reason: &str, note: impl Into<String>) -> Self {
        Self { type_: EventType::Normal, reason: reason.to_string(), note: note.into() }
    }

    /// A Warning Event.
    pub fn warning(reason: &str, note: impl Into<String>) -> Self {
        Self { type_: EventType::Warning, reason: reason.to_string(), note: note.into() }
    }
}

/// What `decide` returns: the children to write (the controller's own type), the status to
/// write, the Events to publish, and when to look again (`None`: on a change only).
#[derive(Debug, Clone, PartialEq)]
pub struct Decision<C, S> {
    /// Writes to children.
    pub children: C,
    /// The new status (written only when it differs from the current one).
    pub status: S,
    /// Events, published after the status write.
    pub events: Vec<Note>,
    /// When to look again.
    pub requeue: Option<Duration>,
}

/// The part of the context every controller shares.
pub struct Shared {
    /// The client.
    pub client: Client,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Event recorder.
    pub recorder: Recorder,
    failures: Mutex<HashMap<String, u32>>,
    scheduled: Mutex<HashMap<String, Instant>>,
}

fn key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        obj.meta().namespace.clone().unwrap_or_default(),
        obj.meta().name.clone().unwrap_or_default()
    )
}

/// The key of an object in the skeleton's bookkeeping and in per-object state of controllers.
pub fn object_key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    key(obj)
}

impl Shared {
    /// The shared part over `client`.
    pub fn new(client: Client, metrics: Arc<Metrics>, recorder: Recorder) -> Self {
        Self { client, metrics, recorder, failures: Mutex::new(HashMap::new()), scheduled: Mutex::new(HashMap::new()) }
    }

    /// Publish an Event about `obj`; a failure to publish is logged, never fatal.
    pub async fn publish<K: Resource<DynamicType = ()>>(&self, obj: &K, note: &Note) {
        let reference = obj.object_ref(&());
        if let Err(e) = self.recorder.publish(&event(note), &reference).await {
            tracing::warn!(reason = %note.reason, error = %e, "could not publish an Event");
        }
    }

    /// The action for a successful reconcile of `controller` that wants another look after
    /// `after` (or only on a change): recorded for the queue depth metric; the object's failure
    /// count is reset.
    pub fn requeue<K: Resource<DynamicType = ()>>(&self, controller: &str, obj: &K, after: Option<Duration>) -> Action {
        let k = key(obj);
        self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&k);
        let mut scheduled = self.scheduled.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match after {
            Some(after) => {
                scheduled.insert(k, Instant::now() + after);
            }
            None => {
                scheduled.remove(&k);
            }
        }
        let now = Instant::now();
        scheduled.retain(|_, due| *due > now);
        let prefix = format!("{}/", K::kind(&()));
        let depth = scheduled.keys().filter(|k| k.starts_with(&prefix)).count();
        self.metrics.set_queued(controller, i64::try_from(depth).unwrap_or(i64::MAX));
        after.map_or_else(Action::await_change, Action::requeue)
    }

    /// Backoff with jitter for an object whose reconcile failed: 1 s doubling to 5 min, ±20 %.
    pub fn backoff<K: Resource<DynamicType = ()>>(&self, obj: &K) -> Duration {
        let k = key(obj);
        let mut failures = self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = failures.entry(k).or_insert(0);
        *n = n.saturating_add(1);
        let base = Duration::from_secs(1).saturating_mul(1 << (*n - 1).min(9)).min(Duration::from_secs(300));
        let jitter = rand::rng().random_range(0.8..1.2);
        base.mul_f64(jitter)
    }
}

/// The Event of a note. The recorder folds Events with the same reason and action into one
/// series; an action that names the note keeps distinct transitions (1 → 3, then 3 → 5)
/// distinct, while an identical repeat still counts up one series.
pub fn event(note: &Note) -> Event {
    Event {
        type_: note.type_,
        reason: note.reason.clone(),
        note: Some(note.note.chars().take(1024).collect()),
        action: format!(
            "{}-{}",
            note.reason,
            hex::encode(&<sha2::Sha256 as sha2::Digest>::digest(note.note.as_bytes())[..4])
        ),
        secondary: None,
    }
}

/// One controller over the skeleton.
pub trait Reconciler: Send + Sync + 'static {
    /// The kind it reconciles.
    type Object: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static;
    /// Why a reconcile failed.
    type Error: Category;
    /// The name in metrics and logs.
    const NAME: &'static str;

    /// The shared part of the context.
    fn shared(&self) -> &Shared;

    /// Observe → validate → decide → apply.
    fn reconcile(&self, obj: &Self::Object) -> impl Future<Output = Result<Action, Self::Error>> + Send;

    /// Record `error` in the object's status (the three kinds do; a kind without a status of
    /// its own does not).
    fn record_failure(&self, obj: &Self::Object, error: &Self::Error) -> impl Future<Output = ()> + Send;
}

/// Record a failed reconcile in the status of a kind with conditions: `Ready` False and
/// `Reconciling` True with the error's category and message, until a reconcile succeeds.
pub async fn record_failure_in_status<K, E>(shared: &Shared, obj: &K, error: &E)
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + HasStatus
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::Status: Conditioned + Clone + Default + PartialEq + serde::Serialize,
    E: Category,
{
    let current = obj.status().cloned().unwrap_or_default();
    let mut next = current.clone();
    let health = Health::Progressing { reason: error.category().into(), message: error.to_string() };
    conditions::set_health(next.conditions_mut(), &health, obj.meta().generation, &Time(Timestamp::now()));
    if let Err(w) = patch_status(&shared.client, obj, &current, &next, false).await {
        tracing::debug!(error = %w, "could not record the failure in status");
    }
}

/// The reconcile every controller runs: the controller's own, measured, logged, and on failure
/// a Warning Event and the failure in status.
pub async fn reconcile<R: Reconciler>(obj: Arc<R::Object>, ctx: Arc<R>) -> Result<Action, R::Error> {
    let shared = ctx.shared();
    let timer = shared.metrics.reconcile(R::NAME);
    let name = obj.name_any();
    let namespace = obj.namespace().unwrap_or_default();
    let span =
        tracing::info_span!("reconcile", controller = R::NAME, %namespace, %name, generation = ?obj.meta().generation);
    let result = tracing::Instrument::instrument(ctx.reconcile(&obj), span).await;
    timer.finish(result.as_ref().err().map(Category::category));
    if let Err(e) = &result {
        tracing::warn!(controller = R::NAME, %namespace, %name, category = e.category(), error = %e, "reconcile failed");
        shared.publish(obj.as_ref(), &Note::warning(e.category(), e.to_string())).await;
        ctx.record_failure(&obj, e).await;
    }
    result
}

/// The error policy every controller runs: back off per object, with jitter.
pub fn error_policy<R: Reconciler>(obj: Arc<R::Object>, error: &R::Error, ctx: Arc<R>) -> Action {
    let wait = ctx.shared().backoff(obj.as_ref());
    tracing::debug!(controller = R::NAME, name = %obj.name_any(), error = %error, retry_in = ?wait, "backing off");
    Action::requeue(wait)
}

/// Write `next` as `obj`'s status when it differs from `current`: a merge patch of the
/// difference (removed fields as `null`), guarded by `obj`'s resourceVersion when `guarded` (a
/// write based on a stale read then fails with 409 instead of overwriting). Returns whether it
/// wrote.
pub async fn patch_status<K, S>(
    client: &Client,
    obj: &K,
    current: &S,
    next: &S,
    guarded: bool,
) -> Result<bool, kube::Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    S: serde::Serialize + PartialEq,
{
    if current == next {
        return Ok(false);
    }
    let api: Api<K> = Api::namespaced(client.clone(), &obj.meta().namespace.clone().unwrap_or_default());
    let before = serde_json::to_value(current).unwrap_or(Value::Null);
    let after = serde_json::to_value(next).unwrap_or(Value::Null);
    let mut patch = serde_json::json!({"status": merge_patch_between(&before, &after)});
    if guarded && let Some(rv) = obj.meta().resource_version.clone() {
        patch["metadata"] = serde_json::json!({"resourceVersion": rv});
    }
    let name = obj.meta().name.clone().unwrap_or_default();
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(patch)).await?;
    Ok(true)
}

/// The JSON merge patch (RFC 7396) that turns `before` into `after`: changed and new fields
/// with their new value, removed fields as `null`, objects compared key by key.
pub fn merge_patch_between(before: &Value, after: &Value) -> Value {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            let mut patch = serde_json::Map::new();
            for (k, old) in b {
                match a.get(k) {
                    None => {
                        patch.insert(k.clone(), Value::Null);
                    }
                    Some(new) if new != old => {
                        patch.insert(k.clone(), merge_patch_between(old, new));
                    }
                    Some(_) => {}
                }
            }
            for (k, new) in a {
                if !b.contains_key(k) {
                    patch.insert(k.clone(), new.clone());
                }
            }
            Value::Object(patch)
        }
        (_, new) => new.clone(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn merge_patch_nulls_removed_fields() {
        let before = json!({"canary": {"version": "v2"}, "stable": {"version": "v1", "uri": "a"}, "history": [1]});
        let after = json!({"stable": {"version": "v2", "uri": "a"}, "history": [1, 2]});
        let patch = super::merge_patch_between(&before, &after);
        assert_eq!(patch, json!({"canary": null, "stable": {"version": "v2"}, "history": [1, 2]}));
        let mut applied = before.clone();
        json_patch::merge(&mut applied, &patch);
        assert_eq!(applied, after);
    }

    #[test]
    fn the_events_of_distinct_notes_are_distinct_series() {
        let a = super::event(&super::Note::normal("Scaled", "stable: 1 → 3"));
        let b = super::event(&super::Note::normal("Scaled", "stable: 3 → 5"));
        assert_ne!(a.action, b.action);
        assert_eq!(a.action, super::event(&super::Note::normal("Scaled", "stable: 1 → 3")).action);
    }
}
