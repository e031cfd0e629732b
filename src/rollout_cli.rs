//! `flywheel rollout status|promote|abort NAME`: manual control without touching spec (Git owns
//! spec). promote and abort write `status.requestedAction` through the status subresource,
//! guarded by the resourceVersion read, naming the canary version they are meant for; the
//! controller carries the action out and clears it.

use std::fmt::Write as _;

use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::api::ModelDeployment;
use crate::api::model_deployment::RolloutAction;

/// Errors of a rollout command.
#[derive(Debug, thiserror::Error)]
pub enum RolloutCliError {
    /// The API server refused a request.
    #[error("{0}")]
    Kube(#[from] kube::Error),
    /// Nothing to promote or abort.
    #[error("ModelDeployment {0} has no canary in progress")]
    NoCanary(String),
}

/// A human-readable summary of a ModelDeployment's rollout.
pub fn describe(md: &ModelDeployment) -> String {
    let mut out = String::new();
    let status = md.status.clone().unwrap_or_default();
    let _ = writeln!(out, "ModelDeployment {}/{}", md.namespace().unwrap_or_default(), md.name_any());
    match &status.stable {
        Some(s) => {
            let _ = writeln!(out, "  stable: {} ({}), {}/{} ready", s.version, s.uri, s.ready_replicas, s.replicas);
        }
        None => {
            let _ = writeln!(out, "  stable: none yet");
        }
    }
    match &status.canary {
        Some(c) => {
            let _ = writeln!(
                out,
                "  canary: {} ({}) at step {} with {}% of traffic, {}/{} ready",
                c.version, c.uri, c.step, c.weight, c.ready_replicas, c.replicas
            );
            if let Some(e) = &c.evidence {
                let _ = writeln!(
                    out,
                    "  evidence: {:?}: {} (samples stable {}, canary {})",
                    e.verdict, e.message, e.stable_samples, e.canary_samples
                );
            }
        }
        None => {
            let _ = writeln!(out, "  canary: none");
        }
    }
    if let Some(a) = &status.requested_action {
        let _ = writeln!(out, "  requested: {:?} of {}", a.action, a.version);
    }
    for c in &status.conditions {
        let _ = writeln!(out, "  condition {}={:?} ({}): {}", c.type_, c.status, c.reason, c.message);
    }
    for h in &status.history {
        let _ = writeln!(
            out,
            "  history: {:?} {} (from {}) at {}: {} {}",
            h.type_,
            h.version,
            h.previous_version.clone().unwrap_or_default(),
            h.time.0,
            h.reason,
            h.message
        );
    }
    out
}

/// Ask the controller to promote or abort the canary now under way.
pub async fn request(
    client: Client,
    namespace: &str,
    name: &str,
    action: RolloutAction,
    who: &str,
) -> Result<ModelDeployment, RolloutCliError> {
    let api: Api<ModelDeployment> = Api::namespaced(client, namespace);
    let md = api.get(name).await?;
    let canary =
        md.status.as_ref().and_then(|s| s.canary.clone()).ok_or_else(|| RolloutCliError::NoCanary(name.to_string()))?;
    let patch = json!({
        "metadata": {"resourceVersion": md.resource_version()},
        "status": {"requestedAction": {
            "action": action,
            "version": canary.version,
            "requestedAt": k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
            "requestedBy": who,
        }}
    });
    Ok(api.patch_status(name, &PatchParams::default(), &Patch::Merge(patch)).await?)
}
