//! What the demo applies, as a user would with `kubectl apply --server-side`: a ModelDeployment
//! with a fixed replica count and a two-step canary gated on feedback analysis, and a
//! FeedbackPolicy that retrains it when quality falls.

use serde_json::json;

use crate::api::{FeedbackPolicy, ModelDeployment};

/// Namespace of the demo's resources (the kubeconfig's default, so `kubectl get md` finds them).
pub const NAMESPACE: &str = "default";
/// Name of the ModelDeployment.
pub const DEPLOYMENT: &str = "support-chat";
/// Name of the FeedbackPolicy.
pub const POLICY: &str = "support-chat-quality";
/// The first served version.
pub const FIRST_VERSION: &str = "v1";
/// Replicas over both tracks.
pub const REPLICAS: i32 = 4;
/// Canary steps (percent of traffic), each gated on analysis.
pub const STEPS: [i32; 2] = [25, 50];
/// Judged signals each arm needs before the analysis decides.
pub const MIN_SAMPLES_PER_ARM: i64 = 100;
/// The policy's trigger: the stable version's positive rate below this.
pub const QUALITY_BELOW: f64 = 0.7;
/// Judged signals the stable version needs in the window before the trigger may fire.
pub const MIN_SAMPLES: i64 = 150;
/// The policy's window, in seconds (the least the API allows).
pub const WINDOW_SECONDS: i64 = 60;
/// Training rows a snapshot needs.
pub const MIN_ROWS: i64 = 50;
/// The PersistentVolumeClaim trained models are written to (and served from).
pub const MODELS_CLAIM: &str = "models";
/// Field manager of the demo's applies.
pub const FIELD_MANAGER: &str = "flywheel-demo";

/// The ModelDeployment.
pub fn model_deployment() -> Result<ModelDeployment, serde_json::Error> {
    serde_json::from_value(json!({
        "apiVersion": "flywheel.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": DEPLOYMENT, "namespace": NAMESPACE},
        "spec": {
            "model": {"name": "qwen2.5-0.5b-instruct", "version": FIRST_VERSION, "uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"},
            "runtime": {
                "image": "vllm/vllm-openai:v0.8.5",
                "args": ["--model=$(FLYWHEEL_MODEL_DIR)", "--served-model-name=$(FLYWHEEL_MODEL_NAME)", "--port=8000"],
                "port": 8000
            },
            "replicas": REPLICAS,
            "rollout": {
                "steps": STEPS.iter().map(|w| json!({"weight": w, "gate": "Analysis", "deadlineSeconds": 300})).collect::<Vec<_>>(),
                "analysis": {
                    "minSamplesPerArm": MIN_SAMPLES_PER_ARM,
                    "margin": 0.05,
                    "confidence": 0.95,
                    "intervalSeconds": 1
                },
                "approval": "Auto"
            }
        }
    }))
}

/// The claim trainers write new versions to and canaries serve them from.
pub fn models_claim() -> Result<k8s_openapi::api::core::v1::PersistentVolumeClaim, serde_json::Error> {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": MODELS_CLAIM, "namespace": NAMESPACE},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "50Gi"}}}
    }))
}

/// The cooldown between two retrains. None is needed here: a policy never fires while its last
/// retrain, or the canary of its version, is under way, so the next cycle may start as soon as
/// the previous one is decided.
pub const COOLDOWN_SECONDS: i64 = 0;

/// The FeedbackPolicy.
pub fn feedback_policy() -> Result<FeedbackPolicy, serde_json::Error> {
    serde_json::from_value(json!({
        "apiVersion": "flywheel.dev/v1alpha1",
        "kind": "FeedbackPolicy",
        "metadata": {"name": POLICY, "namespace": NAMESPACE},
        "spec": {
            "targetRef": {"name": DEPLOYMENT},
            "mode": "auto",
            "windowSeconds": WINDOW_SECONDS,
            "triggers": {"minSamples": MIN_SAMPLES, "qualityBelow": QUALITY_BELOW},
            "cooldownSeconds": COOLDOWN_SECONDS,
            "maxRetrainsPerDay": 100,
            "dataset": {
                "formats": ["SFT", "DPO"],
                "heldOutFraction": 0.1,
                "minRows": MIN_ROWS,
                "maxRows": 50000
            },
            "trainer": {
                "image": "ghcr.io/flywheel-dev/trainer:0.1.0",
                "hyperparameters": {"method": "lora", "loraRank": "16", "learningRate": "2e-4", "epochs": "2"},
                "podAnnotations": {"demo.flywheel.dev/simulated": "trainer"},
                "deadlineSeconds": 600,
                "retries": 1
            },
            // The evaluation gate: on the held-out rows the candidate must be at least as good as
            // its base.
            "evaluation": {"rules": [
                {"metric": "evalLoss", "better": "Lower", "minImprovement": 0.0},
                {"metric": "preferenceAccuracy", "better": "Higher", "maxRegression": 0.02}
            ]},
            "outputUriPrefix": format!("pvc://{MODELS_CLAIM}/{DEPLOYMENT}/"),
            "promotion": "Canary"
        }
    }))
}

// `flywheel demo --adapters`.

/// The ModelDeployment of the adapter demo.
pub const ADAPTER_DEPLOYMENT: &str = "support-chat-lora";
/// Its base model's name and version.
pub const ADAPTER_BASE_MODEL: &str = "qwen2.5-0.5b-instruct";
/// The base model's version.
pub const ADAPTER_BASE_VERSION: &str = "v1";

/// The simulated object store the demo's trainer "uploads" to: an adapter directory with its
/// config, as the reference trainer writes one.
pub struct DemoStore;

impl crate::agent::adapters::AdapterStore for DemoStore {
    fn fetch<'a>(
        &'a self,
        uri: &'a str,
        dir: &'a std::path::Path,
    ) -> futures::future::BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            tokio::fs::create_dir_all(dir).await.map_err(|e| format!("{}: {e}", dir.display()))?;
            let config = json!({"peft_type": "LORA", "r": 16, "target_modules": "all-linear", "source": uri});
            tokio::fs::write(dir.join("adapter_config.json"), config.to_string())
                .await
                .map_err(|e| format!("{}: {e}", dir.display()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resources_parse_and_pass_the_schemas() {
        let md = model_deployment().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(md.spec.replicas, Some(REPLICAS));
        let fbp = feedback_policy().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(fbp.spec.cooldown_seconds, COOLDOWN_SECONDS);
        assert_eq!(fbp.spec.triggers.quality_below, Some(QUALITY_BELOW));
        for object in [serde_json::to_value(&md), serde_json::to_value(&fbp)] {
            let object = object.unwrap_or_else(|e| panic!("{e}"));
            let kind = object["kind"].as_str().unwrap_or_default().to_string();
            let crd = crate::api::crds()
                .into_iter()
                .find(|c| c.spec.names.kind == kind)
                .unwrap_or_else(|| panic!("no CRD for {kind}"));
            let schema = crate::api::validation::storage_schema(&crd).unwrap_or_else(|| panic!("no schema"));
            let admitted = crate::api::validation::admit(&schema, &object, None);
            assert!(admitted.is_ok(), "{kind}: {:?}", admitted.err());
        }
    }
}
