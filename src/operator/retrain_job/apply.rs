//! Apply: create the next attempt's Job, hand the trained version over (the ModelDeployment's
//! `status.candidate`, guarded by its resourceVersion), write the status (guarded by the
//! RetrainJob's: a stale reconcile cannot overwrite a newer attempt list), publish the Events.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use serde_json::json;

use super::context::{CONTROLLER, RetrainError, RetrainJobs, writing};
use super::decide::{self, RetrainDecision, outcome_name};
use crate::api::model_deployment::ModelDeployment;
use crate::api::retrain_job::RetrainJob;
use crate::operator::skeleton::patch_status;

/// Apply a decision.
pub async fn apply(
    ctx: &RetrainJobs,
    rtj: &RetrainJob,
    ns: &str,
    mut decision: RetrainDecision,
    now: Timestamp,
) -> Result<Action, RetrainError> {
    let client = &ctx.shared.client;
    if let Some(job) = &decision.children.create {
        let name = job.name_any();
        let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
        match jobs.create(&PostParams::default(), job).await {
            Ok(_) => {}
            // Made before a crash: the same attempt, the same Job. Another 409 (a storage
            // conflict) created nothing: it is retried, so no attempt is recorded without its Job.
            Err(kube::Error::Api(s)) if s.code == 409 && s.reason == "AlreadyExists" => {}
            Err(e) => return Err(writing(format!("creating Job {name}"))(e)),
        }
    }
    if let Some(h) = decision.children.hand_over.clone() {
        let mds: Api<ModelDeployment> = Api::namespaced(client.clone(), ns);
        let patch = json!({"metadata": {"resourceVersion": h.resource_version}, "status": {"candidate": h.candidate}});
        decision = match mds.patch_status(&h.target, &PatchParams::default(), &Patch::Merge(patch)).await {
            Ok(_) => decide::handed_over(rtj, decision, &h, now),
            // The ModelDeployment's controller wrote its status meanwhile: read it again soon.
            Err(kube::Error::Api(s)) if s.code == 409 => decide::hand_over_conflict(decision),
            Err(e) => {
                return Err(writing(format!("handing {} to ModelDeployment {}", h.candidate.version, h.target))(e));
            }
        };
    }
    let current = rtj.status.clone().unwrap_or_default();
    // The attempts decide Jobs: a write based on a stale read must fail, not overwrite.
    patch_status(client, rtj, &current, &decision.status, true).await.map_err(writing("writing status"))?;
    for outcome in &decision.children.ended {
        ctx.shared.metrics.count_attempt(outcome_name(*outcome));
    }
    for note in &decision.events {
        tracing::info!(reason = %note.reason, note = %note.note, "retrain transition");
        ctx.shared.publish(rtj, note).await;
    }
    Ok(ctx.shared.requeue(CONTROLLER, rtj, decision.requeue))
}
