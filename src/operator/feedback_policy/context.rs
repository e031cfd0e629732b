//! The FeedbackPolicy controller's context (the shared part and its own), its error by step,
//! and the names its steps share.

use std::sync::Arc;
use std::time::Duration;

use super::feed;
use crate::collector::client::{CollectorClient, CollectorError};
use crate::operator::skeleton::{Category, KubeError, Shared, kube};

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
