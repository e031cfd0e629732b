//! The collector's change feed, one long poll per FeedbackPolicy: each change of the target's
//! feedback wakes the policy's reconcile, so a threshold crossing is seen within a second
//! instead of at the next periodic look.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use futures::channel::mpsc::UnboundedSender;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::api::feedback_policy::FeedbackPolicy;
use crate::collector::client::{CollectorClient, StatsQuery};
use crate::operator::config::Scope;

/// Least time between two wake-ups of one policy: a busy deployment's feed changes with every
/// commit, and one reconcile per interval sees all of them.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// How long one long poll waits for a change.
const POLL: Duration = Duration::from_secs(25);

struct Feed {
    namespace: String,
    target: String,
    handle: tokio::task::AbortHandle,
}

struct Wiring {
    wake: UnboundedSender<ObjectRef<FeedbackPolicy>>,
    store: Store<FeedbackPolicy>,
}

/// The running feeds, by policy.
#[derive(Default)]
pub struct Feeds {
    feeds: Mutex<HashMap<String, Feed>>,
    wiring: Mutex<HashMap<Scope, Wiring>>,
}

impl Feeds {
    /// Connect the feeds to a running controller: where to send wake-ups, and its cache (a
    /// feed whose policy left the cache ends).
    /// One controller per scope: each attaches its own.
    pub fn attach(&self, scope: Scope, wake: UnboundedSender<ObjectRef<FeedbackPolicy>>, store: Store<FeedbackPolicy>) {
        self.wiring.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(scope, Wiring { wake, store });
    }

    /// Stop every feed of `scope` (its controller stopped).
    pub fn detach(&self, scope: &Scope) {
        self.wiring.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(scope);
        self.feeds.lock().unwrap_or_else(std::sync::PoisonError::into_inner).retain(|_, feed| {
            if scope.contains(Some(&feed.namespace)) {
                feed.handle.abort();
                false
            } else {
                true
            }
        });
    }

    /// Stop the feed of one policy.
    pub fn stop(&self, key: &str) {
        if let Some(feed) = self.feeds.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(key) {
            feed.handle.abort();
        }
    }

    /// Run a feed for `policy` unless one for its current target runs.
    pub fn ensure(&self, policy: &FeedbackPolicy, collector: &CollectorClient) {
        let key = crate::operator::skeleton::object_key(policy);
        let ns = policy.namespace().unwrap_or_default();
        let target = policy.spec.target_ref.name.clone();
        let mut feeds = self.feeds.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if feeds.get(&key).is_some_and(|f| f.target == target && !f.handle.is_finished()) {
            return;
        }
        let Some((wake, store)) = self
            .wiring
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .find(|(scope, _)| scope.contains(Some(&ns)))
            .map(|(_, w)| (w.wake.clone(), w.store.clone()))
        else {
            return;
        };
        if let Some(old) = feeds.remove(&key) {
            old.handle.abort();
        }
        let oref = ObjectRef::from_obj(policy);
        let client = collector.clone();
        let mapping = policy.spec.signals.clone();
        let window = policy.spec.window_seconds;
        let feed_target = target.clone();
        let feed_ns = ns.clone();
        let task = tokio::spawn(async move {
            let mut cursor = 0i64;
            let mut backoff = Duration::from_secs(1);
            loop {
                let now = Timestamp::now();
                let from = now.saturating_sub(SignedDuration::from_secs(window)).unwrap_or(now).to_string();
                let q = StatsQuery { namespace: &ns, deployment: &feed_target, from, mapping: &mapping };
                match client.watch(&q, cursor, POLL).await {
                    Ok(stats) => {
                        backoff = Duration::from_secs(1);
                        if store.get(&oref).is_none()
                            && store.wait_until_ready().await.is_ok()
                            && store.get(&oref).is_none()
                        {
                            return;
                        }
                        if stats.cursor != cursor {
                            cursor = stats.cursor;
                            if wake.unbounded_send(oref.clone()).is_err() {
                                return;
                            }
                            tokio::time::sleep(DEBOUNCE).await;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(policy = %oref, error = %e, retry_in = ?backoff, "change feed");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            }
        });
        feeds.insert(key, Feed { namespace: feed_ns, target, handle: task.abort_handle() });
    }
}
