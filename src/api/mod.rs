//! The three Flywheel resources, group `flywheel.dev`, version `v1alpha1`.

pub mod common;
pub mod conditions;
pub mod feedback_policy;
pub mod model_deployment;
pub mod retrain_job;
pub mod validation;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use common::{Condition, ConditionStatus, Lineage, LocalRef, Promotion, TrainerTemplate, TriggerReason};
pub use feedback_policy::{FeedbackPolicy, FeedbackPolicySpec, FeedbackPolicyStatus};
pub use model_deployment::{ModelDeployment, ModelDeploymentSpec, ModelDeploymentStatus};
pub use retrain_job::{RetrainJob, RetrainJobSpec, RetrainJobStatus};

/// The API group of every Flywheel resource.
pub const GROUP: &str = "flywheel.dev";

/// The CustomResourceDefinitions of the three resources, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![ModelDeployment::crd(), FeedbackPolicy::crd(), RetrainJob::crd()]
}

/// Errors turning the CRDs into YAML.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    /// A CRD could not be serialized.
    #[error("serializing CRD {name} to YAML: {source}")]
    Serialize {
        /// Name of the CRD.
        name: String,
        /// The serializer's error.
        source: serde_yaml::Error,
    },
}

/// One CRD as the YAML committed under `crds/` (a single document, no leading `---`).
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String, CrdError> {
    let name = crd.metadata.name.clone().unwrap_or_default();
    serde_yaml::to_string(crd).map_err(|source| CrdError::Serialize { name, source })
}

/// The file name of a CRD under `crds/`: `<plural>.<group>.yaml`.
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

/// All CRDs as one multi-document YAML stream, as `flywheel crds` prints them.
pub fn crds_yaml() -> Result<String, CrdError> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&crd_yaml(&crd)?);
    }
    Ok(out)
}
