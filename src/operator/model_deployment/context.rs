//! The ModelDeployment controller's context (the shared part and its own), its error by step,
//! and the names its steps share.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::ResourceExt;

use super::children::ChildSettings;
use super::children::Owner;
use super::feedback_analysis::AnalysisSource;
use crate::api::model_deployment::{ModelDeployment, Track};
use crate::autoscale::TrackState;
use crate::autoscale::scrape::LoadSource;
use crate::operator::skeleton::{Category, KubeError, Shared, kube};

/// What decisions depend on besides the object: the operator's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// What shapes the children.
    pub children: ChildSettings,
    /// How often a ModelDeployment with `spec.scaling` is looked at again.
    pub scale_interval: Duration,
}

/// The controller's name in metrics and logs.
pub const CONTROLLER: &str = "modeldeployment";
/// The field manager of every write.
pub const FIELD_MANAGER: &str = "flywheel";

/// Why a reconcile failed, by step; `category` labels the failure metric and the Warning Event.
#[derive(Debug, thiserror::Error)]
pub enum ModelDeploymentError {
    /// A read failed.
    #[error(transparent)]
    Observe(KubeError),
    /// A write failed.
    #[error(transparent)]
    Apply(KubeError),
    /// The object lacks what an object read from the API server has, or state the controller
    /// keeps is unusable.
    #[error("the ModelDeployment lacks {0}")]
    Malformed(&'static str),
}

/// `map_err(reading("reading X"))`: a failed read, as the observe step's error.
pub fn reading(action: impl Into<String>) -> impl FnOnce(::kube::Error) -> ModelDeploymentError {
    let f = kube(action);
    move |e| ModelDeploymentError::Observe(f(e))
}

/// `map_err(writing("applying X"))`: a failed write, as the apply step's error.
pub fn writing(action: impl Into<String>) -> impl FnOnce(::kube::Error) -> ModelDeploymentError {
    let f = kube(action);
    move |e| ModelDeploymentError::Apply(f(e))
}

impl Category for ModelDeploymentError {
    fn category(&self) -> &'static str {
        match self {
            Self::Observe(e) | Self::Apply(e) => e.category(),
            Self::Malformed(_) => "MalformedObject",
        }
    }
}

/// The ModelDeployment controller's context: the shared part and its own.
pub struct ModelDeployments {
    /// Client, metrics, Events, requeue bookkeeping.
    pub shared: Arc<Shared>,
    /// What decisions depend on besides the object.
    pub settings: Settings,
    /// Feedback evidence for analysis gates.
    pub analysis: Arc<dyn AnalysisSource>,
    /// Load of pods, for the autoscaler.
    pub load_source: Arc<dyn LoadSource>,
    /// What each pod's agent holds, in `Adapter` rollout mode.
    pub adapter_source: Arc<dyn super::adapters::AdapterSource>,
    /// The autoscaler's memory per ModelDeployment track (`namespace/name/track`).
    scalers: Mutex<HashMap<String, TrackState>>,
}

impl ModelDeployments {
    /// The controller's context.
    pub fn new(
        shared: Arc<Shared>,
        settings: Settings,
        analysis: Arc<dyn AnalysisSource>,
        load_source: Arc<dyn LoadSource>,
        adapter_source: Arc<dyn super::adapters::AdapterSource>,
    ) -> Self {
        Self { shared, settings, analysis, load_source, adapter_source, scalers: Mutex::new(HashMap::new()) }
    }

    /// The autoscaler's memory of a track.
    pub fn scaler_state(&self, owner: &Owner, track: Track) -> TrackState {
        let key = format!("{}/{}/{}", owner.namespace, owner.name, track.as_str());
        self.scalers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&key).cloned().unwrap_or_default()
    }

    /// Keep the autoscaler's memory of a track for the next look.
    pub fn keep_scaler_state(&self, md: &ModelDeployment, track: Track, state: TrackState) {
        let key = format!("{}/{}/{}", md.namespace().unwrap_or_default(), md.name_any(), track.as_str());
        self.scalers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(key, state);
    }
}
