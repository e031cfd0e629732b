//! The RetrainJob controller's context (the shared part and its own), its error by step, and
//! what its steps share.

use std::sync::Arc;

use kube::ResourceExt;

use crate::api::common::{Lineage, TriggerReason};
use crate::api::retrain_job::RetrainJob;
use crate::operator::model_deployment::children::ChildSettings;
use crate::operator::skeleton::{Category, KubeError, Shared, kube};

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
        evaluation: Vec::new(),
    }
}

/// The RetrainJob controller's context.
pub struct RetrainJobs {
    /// Client, metrics, Events, requeue bookkeeping.
    pub shared: Arc<Shared>,
    /// What shapes the Jobs (the operator's image for fetch containers, the token Secret).
    pub settings: ChildSettings,
}
