//! The FeedbackPolicy controller, as four steps over the shared skeleton: observe (the target,
//! the policy's RetrainJobs, the collector's statistics, `observe`) → validate (a collector and
//! a target exist) → decide (pure: whether a trigger fires, `decide` over `trigger`) → apply
//! (the snapshot and the RetrainJob of a firing, then the status, `apply`). The collector's
//! change feed (`feed`) wakes a policy when its target's feedback changes.
//!
//! One RetrainJob per trigger: the trigger's sequence number names the RetrainJob
//! (`<policy>-<n>`), so a create that races a crash finds the object it made, and a RetrainJob
//! that exists but is missing from status is adopted before anything new fires.

pub mod apply;
pub mod decide;
pub mod feed;
pub mod observe;
pub mod trigger;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;

pub use self::decide::{build_retrain_job, retrain_job_name, trigger_id};
use self::observe::Observed;
use crate::api::feedback_policy::FeedbackPolicy;
use crate::operator::collector_client::{CollectorClient, CollectorError};
use crate::operator::skeleton::{Category, KubeError, Reconciler, Shared, kube, object_key, record_failure_in_status};

/// The controller's name in metrics and logs.
pub const CONTROLLER: &str = "feedbackpolicy";
/// Label on a RetrainJob naming the FeedbackPolicy that created it.
pub const LABEL_POLICY: &str = "flywheel.dev/feedback-policy";
/// Label on a RetrainJob carrying its trigger's sequence number.
pub const LABEL_TRIGGER_SEQ: &str = "flywheel.dev/trigger-seq";
/// Condition set in `suggest` mode while a trigger holds.
pub const CONDITION_SUGGESTED: &str = "TriggerSuggested";

/// Why a reconcile failed, by step.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A read of the API failed.
    #[error(transparent)]
    Observe(KubeError),
    /// The collector failed (statistics or a snapshot).
    #[error(transparent)]
    Collector(#[from] CollectorError),
    /// A write failed.
    #[error(transparent)]
    Apply(KubeError),
    /// The object lacks what an object read from the API server has.
    #[error("the FeedbackPolicy lacks {0}")]
    Malformed(&'static str),
}

impl Category for PolicyError {
    fn category(&self) -> &'static str {
        match self {
            Self::Observe(e) | Self::Apply(e) => e.category(),
            Self::Collector(e) => e.category(),
            Self::Malformed(_) => "MalformedObject",
        }
    }
}

/// `map_err(reading("reading X"))`: a failed read, as the observe step's error.
pub fn reading(action: impl Into<String>) -> impl FnOnce(::kube::Error) -> PolicyError {
    let f = kube(action);
    move |e| PolicyError::Observe(f(e))
}

/// `map_err(writing("creating X"))`: a failed write, as the apply step's error.
pub fn writing(action: impl Into<String>) -> impl FnOnce(::kube::Error) -> PolicyError {
    let f = kube(action);
    move |e| PolicyError::Apply(f(e))
}

/// The FeedbackPolicy controller's context.
pub struct FeedbackPolicies {
    /// Client, metrics, Events, requeue bookkeeping.
    pub shared: Arc<Shared>,
    /// The collector, when the operator has one.
    pub collector: Option<CollectorClient>,
    /// The collector's change feeds that wake policies.
    pub feeds: feed::Feeds,
    /// Least time between two statistics-only status writes.
    pub stats_write_interval: Duration,
}

impl Reconciler for FeedbackPolicies {
    type Object = FeedbackPolicy;
    type Error = PolicyError;
    const NAME: &'static str = CONTROLLER;

    fn shared(&self) -> &Shared {
        &self.shared
    }

    async fn reconcile(&self, policy: &FeedbackPolicy) -> Result<Action, PolicyError> {
        if policy.metadata.deletion_timestamp.is_some() {
            self.feeds.stop(&object_key(policy));
            return Ok(Action::await_change());
        }
        let ns = policy.namespace().ok_or(PolicyError::Malformed("a namespace"))?;
        let now = Timestamp::now();
        let decision = match observe::observe(self, policy, &ns, now).await? {
            Observed::NoCollector => decide::stalled(
                policy,
                "CollectorNotConfigured",
                "the operator runs without --collector-url: no feedback to read",
                now,
            ),
            Observed::MissingTarget => {
                let target = &policy.spec.target_ref.name;
                let message = format!("ModelDeployment {ns}/{target} named by spec.targetRef does not exist");
                decide::stalled(policy, "MissingTarget", &message, now)
            }
            Observed::Ready(readings) => {
                self.feeds.ensure(policy, &readings.collector);
                let decision = decide::decide(policy, &readings, now);
                apply::fire(self, policy, &readings, decision, now).await?
            }
        };
        apply::apply(self, policy, decision, now).await
    }

    async fn record_failure(&self, policy: &FeedbackPolicy, error: &PolicyError) {
        record_failure_in_status(&self.shared, policy, error).await;
    }
}
