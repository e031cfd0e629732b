//! Observe: the Jobs of the RetrainJob's attempts, the pods of the attempt whose end is due to
//! be read, and the target ModelDeployment when a trained version waits to be handed over.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use super::context::{RetrainError, RetrainJobs, reading};
use super::job::{self, LABEL_RETRAIN_JOB};
use super::result;
use crate::api::Promotion;
use crate::api::model_deployment::ModelDeployment;
use crate::api::retrain_job::{RetrainJob, RetrainPhase};

/// What one reconcile read.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The attempts' Jobs owned by this RetrainJob, by attempt number.
    pub jobs: BTreeMap<i32, Job>,
    /// The pods of the open attempt, when its Job finished or is gone (its end is read from
    /// them).
    pub pods: Vec<Pod>,
    /// The target, when a trained version is to be handed over (`None`: it does not exist).
    pub target: Option<ModelDeployment>,
    /// The evaluation Job, while the candidate is evaluated.
    pub evaluation_job: Option<Job>,
}

/// Observe (reads only).
pub async fn observe(ctx: &RetrainJobs, rtj: &RetrainJob, ns: &str, uid: &str) -> Result<Observed, RetrainError> {
    let mut observed = Observed::default();
    let status = rtj.status.clone().unwrap_or_default();
    let client = &ctx.shared.client;
    let name = rtj.name_any();
    if matches!(status.phase, RetrainPhase::Pending | RetrainPhase::Queued | RetrainPhase::Running) {
        let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
        let listed = jobs
            .list(&ListParams::default().labels(&format!("{LABEL_RETRAIN_JOB}={name}")))
            .await
            .map_err(reading("listing the attempts' Jobs"))?;
        observed.jobs = listed
            .items
            .into_iter()
            .filter(|j| j.owner_references().iter().any(|o| o.uid == uid))
            .filter_map(|j| {
                let n = attempt_of(&j)?;
                Some((n, j))
            })
            .collect();
        // The open attempt (after adopting Jobs a crash kept out of status).
        let open = status
            .attempts
            .iter()
            .find(|a| a.outcome.is_none())
            .map(|a| a.index)
            .or_else(|| observed.jobs.keys().copied().filter(|n| *n > status.attempt_count).min());
        if let Some(index) = open {
            let finished = observed.jobs.get(&index).is_none_or(|j| result::terminal(j).is_some());
            if finished {
                observed.pods = attempt_pods(ctx, rtj, ns, index).await?;
            }
        } else {
            // Before a new attempt starts: a crash between creating an attempt's Job and
            // recording it, then the Job's removal (its TTL, a user), leaves only its pods, which
            // the result finalizer keeps. They are that attempt (adopted in decide), not a
            // reason to run it again.
            let all = labelled_pods(ctx, rtj, ns, job::LABEL_ATTEMPT).await?;
            observed.pods = unrecorded_attempt(all, status.attempt_count);
        }
    }
    if status.phase == RetrainPhase::Evaluating {
        let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
        let eval_name = job::evaluation_job_name(&name);
        observed.evaluation_job = jobs
            .get_opt(&eval_name)
            .await
            .map_err(reading(format!("reading the evaluation Job {eval_name}")))?
            .filter(|j| j.owner_references().iter().any(|o| o.uid == uid));
        let finished = observed.evaluation_job.as_ref().is_none_or(|j| result::terminal(j).is_some());
        if finished {
            observed.pods = labelled_pods(ctx, rtj, ns, &format!("{}=true", job::LABEL_EVALUATION)).await?;
        }
    }
    let may_hand_over = rtj.spec.promotion == Promotion::Canary
        && status.handed_over_at.is_none()
        && matches!(
            status.phase,
            RetrainPhase::Pending
                | RetrainPhase::Queued
                | RetrainPhase::Running
                | RetrainPhase::Evaluating
                | RetrainPhase::Succeeded
        );
    if may_hand_over {
        let mds: Api<ModelDeployment> = Api::namespaced(client.clone(), ns);
        let target = &rtj.spec.target_ref.name;
        observed.target = mds.get_opt(target).await.map_err(reading(format!("reading ModelDeployment {target}")))?;
    }
    Ok(observed)
}

/// The pods of attempt `index`, by its labels (the Job may be gone; the result finalizer keeps
/// its pods), leaving out those of an earlier RetrainJob of the same name.
async fn attempt_pods(ctx: &RetrainJobs, rtj: &RetrainJob, ns: &str, index: i32) -> Result<Vec<Pod>, RetrainError> {
    labelled_pods(ctx, rtj, ns, &format!("{}={index}", job::LABEL_ATTEMPT)).await
}

/// The pods of the earliest attempt after `recorded` (none when every attempt's pods are
/// recorded).
pub fn unrecorded_attempt(pods: Vec<Pod>, recorded: i32) -> Vec<Pod> {
    let first = pods.iter().filter_map(attempt_of).filter(|n| *n > recorded).min();
    pods.into_iter().filter(|p| first.is_some() && attempt_of(p) == first).collect()
}

/// The attempt a trainer Job or pod belongs to, by its label.
pub fn attempt_of(obj: &impl ResourceExt) -> Option<i32> {
    obj.labels().get(job::LABEL_ATTEMPT)?.parse().ok()
}

/// The RetrainJob's pods with a label besides its own, leaving out those of an earlier
/// RetrainJob of the same name.
async fn labelled_pods(ctx: &RetrainJobs, rtj: &RetrainJob, ns: &str, label: &str) -> Result<Vec<Pod>, RetrainError> {
    let pods: Api<Pod> = Api::namespaced(ctx.shared.client.clone(), ns);
    let selector = format!("{LABEL_RETRAIN_JOB}={},{label}", rtj.name_any());
    let created = rtj.metadata.creation_timestamp.clone();
    Ok(pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(reading(format!("reading the pods of {label}")))?
        .items
        .into_iter()
        .filter(|p| match (&created, &p.metadata.creation_timestamp) {
            (Some(r), Some(c)) => c.0 >= r.0,
            _ => true,
        })
        .collect())
}
