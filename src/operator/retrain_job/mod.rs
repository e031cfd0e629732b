//! The RetrainJob controller, as four steps over the shared skeleton: observe (the attempts'
//! Jobs, the open attempt's pods, the target, `observe`) → decide (pure: how the open attempt
//! ended, whether the next starts, the hand-over, `decide`; the Job built by `job`, the end read
//! by `result`) → apply (the Job, the hand-over, the status, `apply`). `pods` guards the
//! trainer pods' results until they are recorded.
//!
//! Restart-safe: a Job's name is its attempt's (`<retrainjob>-<n>`), a Job found without its
//! attempt in status is adopted, and a create that finds the Job already there changes
//! nothing, so one attempt never has two Jobs.

pub mod apply;
pub mod decide;
pub mod job;
pub mod observe;
pub mod pods;
pub mod result;

use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;

use crate::api::common::{Lineage, TriggerReason};
use crate::api::retrain_job::RetrainJob;
use crate::operator::model_deployment::children::ChildSettings;
use crate::operator::skeleton::{Category, KubeError, Reconciler, Shared, kube, record_failure_in_status};

/// The controller's name in metrics and logs.
pub const CONTROLLER: &str = "retrainjob";
/// Most attempts of one run, disruptions included (the status list's bound).
pub const MAX_ATTEMPTS: usize = 16;

/// Why a reconcile failed, by step.
#[derive(Debug, thiserror::Error)]
pub enum RetrainError {
    /// A read failed.
    #[error(transparent)]
    Observe(KubeError),
    /// A write failed.
    #[error(transparent)]
    Apply(KubeError),
    /// The object lacks what an object read from the API server has.
    #[error("the RetrainJob lacks {0}")]
    Malformed(&'static str),
}

impl Category for RetrainError {
    fn category(&self) -> &'static str {
        match self {
            Self::Observe(e) | Self::Apply(e) => e.category(),
            Self::Malformed(_) => "MalformedObject",
        }
    }
}

/// `map_err(reading("reading X"))`: a failed read, as the observe step's error.
pub fn reading(action: impl Into<String>) -> impl FnOnce(::kube::Error) -> RetrainError {
    let f = kube(action);
    move |e| RetrainError::Observe(f(e))
}

/// `map_err(writing("creating X"))`: a failed write, as the apply step's error.
pub fn writing(action: impl Into<String>) -> impl FnOnce(::kube::Error) -> RetrainError {
    let f = kube(action);
    move |e| RetrainError::Apply(f(e))
}

/// Where the run came from (pure).
pub fn lineage(rtj: &RetrainJob) -> Lineage {
    let origin = rtj.spec.origin.as_ref();
    Lineage {
        retrain_job: Some(rtj.name_any()),
        feedback_policy: origin.map(|o| o.feedback_policy.clone()),
        trigger_id: origin.map(|o| o.trigger_id.clone()),
        trigger_reason: Some(origin.map_or(TriggerReason::Manual, |o| o.reason)),
        dataset_sha256: Some(rtj.spec.dataset.sha256.clone()),
        dataset_counts: Some(rtj.spec.dataset.counts),
        base_version: Some(rtj.spec.base.version.clone()),
    }
}

/// The RetrainJob controller's context.
pub struct RetrainJobs {
    /// Client, metrics, Events, requeue bookkeeping.
    pub shared: Arc<Shared>,
    /// What shapes the Jobs (the operator's image for fetch containers, the token Secret).
    pub settings: ChildSettings,
}

impl Reconciler for RetrainJobs {
    type Object = RetrainJob;
    type Error = RetrainError;
    const NAME: &'static str = CONTROLLER;

    fn shared(&self) -> &Shared {
        &self.shared
    }

    async fn reconcile(&self, rtj: &RetrainJob) -> Result<Action, RetrainError> {
        if rtj.metadata.deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        let ns = rtj.namespace().ok_or(RetrainError::Malformed("a namespace"))?;
        let uid = rtj.uid().ok_or(RetrainError::Malformed("a uid"))?;
        let now = Timestamp::now();
        let observed = observe::observe(self, rtj, &ns, &uid).await?;
        let decision = decide::decide(rtj, &observed, &self.settings, now)?;
        apply::apply(self, rtj, &ns, decision, now).await
    }

    async fn record_failure(&self, rtj: &RetrainJob, error: &RetrainError) {
        record_failure_in_status(&self.shared, rtj, error).await;
    }
}
