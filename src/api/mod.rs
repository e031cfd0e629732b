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
    vec![ModelDeployment::crd(), FeedbackPolicy::crd(), RetrainJob::crd()].into_iter().map(bounded).collect()
}

/// Longest string allowed where the type does not say (embedded Kubernetes types, map values).
pub const DEFAULT_MAX_LENGTH: u64 = 4096;
/// Longest `value` string (environment variable values, header values).
pub const DEFAULT_MAX_VALUE_LENGTH: u64 = 32768;
/// Most items of a list, or entries of a map, where the type does not say.
pub const DEFAULT_MAX_ITEMS: u64 = 64;

/// Give every string, list and map of the schema a bound, as the API server's CEL cost
/// estimator wants: our own fields carry theirs in the types; this fills in the embedded
/// Kubernetes types (env, probes, tolerations, resources) and map values.
fn bounded(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    for version in &mut crd.spec.versions {
        let Some(schema) = version.schema.as_mut().and_then(|s| s.open_api_v3_schema.as_mut()) else { continue };
        let Ok(mut value) = serde_json::to_value(&*schema) else { continue };
        bound_node(&mut value, "");
        if let Ok(bounded) = serde_json::from_value(value) {
            *schema = bounded;
        }
    }
    crd
}

fn bound_node(node: &mut serde_json::Value, name: &str) {
    let Some(map) = node.as_object_mut() else { return };
    let unconstrained_string = map.get("type").and_then(|t| t.as_str()) == Some("string")
        && !map.contains_key("maxLength")
        && !map.contains_key("enum")
        && map.get("format").and_then(|f| f.as_str()) != Some("date-time");
    if unconstrained_string {
        let max = if name == "value" { DEFAULT_MAX_VALUE_LENGTH } else { DEFAULT_MAX_LENGTH };
        map.insert("maxLength".into(), max.into());
    }
    if map.get("type").and_then(|t| t.as_str()) == Some("array") && !map.contains_key("maxItems") {
        map.insert("maxItems".into(), DEFAULT_MAX_ITEMS.into());
    }
    if map.get("additionalProperties").is_some_and(|a| a.is_object()) && !map.contains_key("maxProperties") {
        map.insert("maxProperties".into(), DEFAULT_MAX_ITEMS.into());
    }
    if let Some(props) = map.get_mut("properties").and_then(|p| p.as_object_mut()) {
        for (key, sub) in props.iter_mut() {
            bound_node(sub, key);
        }
    }
    if let Some(items) = map.get_mut("items") {
        bound_node(items, "");
    }
    if let Some(additional) = map.get_mut("additionalProperties") {
        bound_node(additional, "");
    }
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
