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
pub mod context;
pub mod decide;
pub mod feed;
pub mod observe;
pub mod retrains;
pub mod trigger;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;

pub use self::context::{
    CONDITION_SUGGESTED, CONTROLLER, FeedbackPolicies, LABEL_POLICY, LABEL_TRIGGER_SEQ, PolicyError,
};
pub use self::decide::build_retrain_job;
use self::observe::Observed;
pub use self::retrains::{retrain_job_name, trigger_id};
use crate::api::feedback_policy::FeedbackPolicy;
use crate::operator::skeleton::{Reconciler, Shared, object_key, record_failure_in_status};

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
