//! Apply: the writes a decision asks for, in order: children (server-side apply, field manager
//! `flywheel`, forced), the canary track's removal, the HTTPRoute's weights, the status (only
//! when it changed), then the Events; the autoscaler's memory is kept for the next look.

use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use serde_json::Value;

use super::context::{CONTROLLER, FIELD_MANAGER, ModelDeploymentError, ModelDeployments, writing};
use super::decide::{DeleteChild, ModelDeploymentDecision};
use super::observe::{dynamic_api, route_api};
use crate::api::model_deployment::ModelDeployment;
use crate::operator::skeleton::patch_status;

/// Apply a decision.
pub async fn apply(
    ctx: &ModelDeployments,
    md: &ModelDeployment,
    ns: &str,
    decision: ModelDeploymentDecision,
) -> Result<Action, ModelDeploymentError> {
    let client = &ctx.shared.client;
    let children = decision.children;
    for desired in &children.apply {
        let name = desired.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
        let kind = desired.get("kind").and_then(Value::as_str).unwrap_or_default();
        let api = match kind {
            "Deployment" => dynamic_api::<k8s_openapi::api::apps::v1::Deployment>(client, ns),
            "Service" => dynamic_api::<k8s_openapi::api::core::v1::Service>(client, ns),
            "ConfigMap" => dynamic_api::<k8s_openapi::api::core::v1::ConfigMap>(client, ns),
            _ => dynamic_api::<k8s_openapi::api::policy::v1::PodDisruptionBudget>(client, ns),
        };
        api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(desired))
            .await
            .map_err(writing(format!("applying {kind} {name}")))?;
    }
    for child in &children.delete_canary {
        let (api, name) = match child {
            DeleteChild::Deployment(n) => (dynamic_api::<k8s_openapi::api::apps::v1::Deployment>(client, ns), n),
            DeleteChild::Service(n) => (dynamic_api::<k8s_openapi::api::core::v1::Service>(client, ns), n),
        };
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(::kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(writing(format!("deleting {name}"))(e)),
        }
    }
    if let Some((route, patch)) = &children.route {
        route_api(client, ns)
            .patch(route, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(writing(format!("setting weights on HTTPRoute {route}")))?;
    }
    let current = md.status.clone().unwrap_or_default();
    // A merge patch names removed fields with null (a finished canary, a consumed action).
    patch_status(client, md, &current, &decision.status, false).await.map_err(writing("writing status"))?;
    for (track, state) in children.scalers {
        ctx.keep_scaler_state(md, track, state);
    }
    for (track, replicas) in &children.desired_replicas {
        ctx.shared.metrics.set_desired_replicas(
            ns,
            &md.metadata.name.clone().unwrap_or_default(),
            track.as_str(),
            *replicas,
        );
    }
    for note in &decision.events {
        tracing::info!(reason = %note.reason, message = %note.note, "transition");
        ctx.shared.publish(md, note).await;
    }
    Ok(ctx.shared.requeue(CONTROLLER, md, decision.requeue))
}
