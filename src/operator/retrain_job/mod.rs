//! The RetrainJob controller: observe the Jobs of its attempts → decide (how the open attempt
//! ended, whether another may start) → create the next attempt's Job (pure builder, `job`) →
//! write status → hand a trained version to the ModelDeployment.
//!
//! Restart-safe: a Job's name is its attempt's (`<retrainjob>-<n>`), a Job found without its
//! attempt in status is adopted, and a create that finds the Job already there changes
//! nothing, so one attempt never has two Jobs.

pub mod job;
pub mod pods;
pub mod result;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use serde_json::json;

use self::job::{JobSpecError, LABEL_RETRAIN_JOB};
use super::Context;
use crate::api::common::{Lineage, Promotion, TriggerReason};
use crate::api::conditions::{self, Health};
use crate::api::model_deployment::{Candidate, ModelDeployment};
use crate::api::retrain_job::{Attempt, AttemptOutcome, RetrainJob, RetrainJobStatus, RetrainPhase};

/// The controller's name in metrics and logs.
pub const CONTROLLER: &str = "retrainjob";
/// Most attempts of one run, disruptions included (the status list's bound).
pub const MAX_ATTEMPTS: usize = 16;

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum RetrainError {
    /// The API server refused or failed a request.
    #[error("{action}: {source}")]
    Kube {
        /// What was being done.
        action: String,
        /// The error.
        source: kube::Error,
    },
    /// The object lacks what an object read from the API server has.
    #[error("the RetrainJob lacks {0}")]
    Malformed(&'static str),
}

impl RetrainError {
    /// Short static category: the metric label and the Warning Event reason.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Kube { source: kube::Error::Api(s), .. } if s.code == 409 => "Conflict",
            Self::Kube { .. } => "KubeApiError",
            Self::Malformed(_) => "MalformedObject",
        }
    }
}

fn kube_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> RetrainError {
    let action = action.into();
    move |source| RetrainError::Kube { action, source }
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
    }
}

fn outcome_name(o: AttemptOutcome) -> &'static str {
    match o {
        AttemptOutcome::Succeeded => "Succeeded",
        AttemptOutcome::Failed => "Failed",
        AttemptOutcome::Disrupted => "Disrupted",
        AttemptOutcome::BadConfiguration => "BadConfiguration",
        AttemptOutcome::MalformedResult => "MalformedResult",
        AttemptOutcome::DeadlineExceeded => "DeadlineExceeded",
    }
}

/// Reconcile one RetrainJob.
pub async fn reconcile(rtj: Arc<RetrainJob>, ctx: Arc<Context>) -> Result<Action, RetrainError> {
    let timer = ctx.metrics.reconcile(CONTROLLER);
    let result = reconcile_inner(&rtj, &ctx).await;
    timer.finish(result.as_ref().err().map(RetrainError::category));
    if let Err(e) = &result {
        tracing::warn!(name = %rtj.name_any(), namespace = ?rtj.namespace(), category = e.category(), error = %e, "reconcile failed");
        ctx.publish(rtj.as_ref(), EventType::Warning, e.category(), &e.to_string()).await;
        // A run still under way shows the failure in status until a reconcile succeeds.
        let current = rtj.status.clone().unwrap_or_default();
        if matches!(current.phase, RetrainPhase::Pending | RetrainPhase::Running) {
            let mut next = current.clone();
            let health = Health::Progressing { reason: e.category().into(), message: e.to_string() };
            conditions::set_health(&mut next.conditions, &health, rtj.metadata.generation, &Time(Timestamp::now()));
            if let Err(w) = write_status(&rtj, &ctx, &current, &next).await {
                tracing::debug!(error = %w, "could not record the failure in status");
            }
        }
    }
    result
}

type Events = Vec<(EventType, &'static str, String)>;

#[tracing::instrument(skip_all, fields(name = %rtj.name_any(), namespace = ?rtj.namespace()))]
async fn reconcile_inner(rtj: &RetrainJob, ctx: &Context) -> Result<Action, RetrainError> {
    if rtj.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = rtj.namespace().ok_or(RetrainError::Malformed("a namespace"))?;
    let uid = rtj.uid().ok_or(RetrainError::Malformed("a uid"))?;
    let now = Time(Timestamp::now());
    let current = rtj.status.clone().unwrap_or_default();
    let mut next = current.clone();
    next.observed_generation = rtj.metadata.generation;
    next.lineage = Some(lineage(rtj));
    let mut events: Events = Vec::new();
    let mut requeue = None;

    if matches!(current.phase, RetrainPhase::Pending | RetrainPhase::Running) {
        run_attempts(rtj, ctx, &ns, &uid, &now, &mut next, &mut events).await?;
        if next.phase == RetrainPhase::Running {
            // The Job's watch wakes us; this is a safety net.
            requeue = Some(Duration::from_secs(60));
        }
    }
    let mut stalled_target = None;
    if next.phase == RetrainPhase::Succeeded
        && rtj.spec.promotion == Promotion::Canary
        && next.handed_over_at.is_none()
        && let Some(res) = next.result.clone()
    {
        match hand_over(rtj, ctx, &ns, &res.version, &res.uri, &now).await? {
            HandOver::Done(message) => {
                next.handed_over_at = Some(now.clone());
                events.push((EventType::Normal, "HandedOver", message));
            }
            HandOver::Retry => requeue = Some(Duration::from_millis(500)),
            HandOver::MissingTarget(message) => {
                stalled_target = Some(message);
                requeue = Some(Duration::from_secs(30));
            }
        }
    }

    let health = match next.phase {
        RetrainPhase::Pending => Health::Progressing { reason: "Pending".into(), message: "no attempt yet".into() },
        RetrainPhase::Running => {
            let a = next.attempts.last();
            Health::Progressing {
                reason: "Training".into(),
                message: format!(
                    "attempt {} running as Job {}",
                    a.map_or(0, |a| a.index),
                    a.map_or("", |a| a.job_name.as_str())
                ),
            }
        }
        RetrainPhase::Succeeded => {
            let version = next.result.as_ref().map_or("", |r| r.version.as_str()).to_string();
            match (&stalled_target, rtj.spec.promotion, &next.handed_over_at) {
                (Some(m), _, _) => Health::Stalled { reason: "MissingTarget".into(), message: m.clone() },
                (None, Promotion::Canary, None) => Health::Progressing {
                    reason: "HandingOver".into(),
                    message: format!("handing {version} to {}", rtj.spec.target_ref.name),
                },
                (None, Promotion::Canary, Some(_)) => Health::Ready {
                    reason: "HandedOver".into(),
                    message: format!("trained {version}; handed to {} for a canary", rtj.spec.target_ref.name),
                },
                (None, Promotion::None, _) => Health::Ready {
                    reason: "Succeeded".into(),
                    message: format!("trained {version}; kept here (promotion None)"),
                },
            }
        }
        RetrainPhase::Failed => {
            let last = next.attempts.last();
            let reason = match last.and_then(|a| a.outcome) {
                Some(AttemptOutcome::Failed | AttemptOutcome::Disrupted) => "RetriesExhausted",
                Some(o) => outcome_name(o),
                None => "InvalidSpec",
            };
            let message = last.and_then(|a| a.message.clone()).unwrap_or_default();
            let message = conditions::get(&next.conditions, crate::api::common::CONDITION_STALLED)
                .filter(|_| reason == "InvalidSpec")
                .map_or(message, |c| c.message.clone());
            Health::Stalled { reason: reason.into(), message }
        }
    };
    conditions::set_health(&mut next.conditions, &health, rtj.metadata.generation, &now);
    write_status(rtj, ctx, &current, &next).await?;
    for (type_, reason, note) in events {
        tracing::info!(reason, note = %note, "retrain transition");
        ctx.publish(rtj, type_, reason, &note).await;
    }
    Ok(ctx.requeue_for(CONTROLLER, rtj, requeue))
}

/// Observe the attempts' Jobs, record how the open attempt ended, start the next one.
async fn run_attempts(
    rtj: &RetrainJob,
    ctx: &Context,
    ns: &str,
    uid: &str,
    now: &Time,
    next: &mut RetrainJobStatus,
    events: &mut Events,
) -> Result<(), RetrainError> {
    let name = rtj.name_any();
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    let listed = jobs_api
        .list(&ListParams::default().labels(&format!("{LABEL_RETRAIN_JOB}={name}")))
        .await
        .map_err(kube_err("listing the attempts' Jobs"))?;
    let jobs: BTreeMap<i32, Job> = listed
        .items
        .into_iter()
        .filter(|j| j.owner_references().iter().any(|o| o.uid == uid))
        .filter_map(|j| {
            let n: i32 = j.labels().get(job::LABEL_ATTEMPT)?.parse().ok()?;
            Some((n, j))
        })
        .collect();
    // Adopt a Job made before a crash kept its attempt out of status.
    for (n, j) in &jobs {
        if *n > next.attempt_count {
            next.attempts.push(Attempt {
                index: *n,
                job_name: j.name_any(),
                start_time: j.metadata.creation_timestamp.clone(),
                completion_time: None,
                outcome: None,
                exit_code: None,
                message: None,
            });
            next.attempt_count = *n;
            next.phase = RetrainPhase::Running;
            next.start_time = next.start_time.clone().or_else(|| j.metadata.creation_timestamp.clone());
        }
    }
    let retries = usize::try_from(rtj.spec.trainer.retries.max(0)).unwrap_or(0);
    loop {
        let open = next.attempts.iter().position(|a| a.outcome.is_none());
        if let Some(i) = open {
            let index = next.attempts[i].index;
            let expected = result::Expected {
                version: rtj.spec.version.as_deref(),
                whole_model: rtj.spec.promotion == crate::api::Promotion::Canary,
                output_uri: Some(rtj.spec.output_uri.as_str()),
            };
            let ended = match jobs.get(&index) {
                // The Job is gone: its pods (kept by the result finalizer) say whether it had
                // finished; only a Job deleted before it finished is a disruption.
                None => {
                    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
                    let selector = format!("{LABEL_RETRAIN_JOB}={name},{}={index}", job::LABEL_ATTEMPT);
                    let created = rtj.metadata.creation_timestamp.clone();
                    let pods: Vec<Pod> = pods
                        .list(&ListParams::default().labels(&selector))
                        .await
                        .map_err(kube_err(format!("reading the pods of attempt {index}")))?
                        .items
                        .into_iter()
                        // Not a pod of an earlier RetrainJob of the same name.
                        .filter(|p| match (&created, &p.metadata.creation_timestamp) {
                            (Some(r), Some(c)) => c.0 >= r.0,
                            _ => true,
                        })
                        .collect();
                    Some(result::ended_without_job(&next.attempts[i].job_name, &pods, expected))
                }
                Some(j) => {
                    if result::terminal(j).is_none() {
                        next.phase = RetrainPhase::Running;
                        return Ok(());
                    }
                    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
                    let pods = pods
                        .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={}", j.name_any())))
                        .await
                        .map_err(kube_err(format!("reading the pods of Job {}", j.name_any())))?
                        .items;
                    result::ended(j, &pods, expected)
                }
            };
            let Some(end) = ended else { return Ok(()) };
            ctx.metrics.count_attempt(outcome_name(end.outcome));
            let a = &mut next.attempts[i];
            a.outcome = Some(end.outcome);
            a.exit_code = end.exit_code;
            a.message = Some(end.message.clone());
            a.completion_time = Some(now.clone());
            let job_name = a.job_name.clone();
            match end.outcome {
                AttemptOutcome::Succeeded => {
                    next.phase = RetrainPhase::Succeeded;
                    next.completion_time = Some(now.clone());
                    next.result = end.result;
                    events.push((
                        EventType::Normal,
                        "Succeeded",
                        format!("attempt {index} ({job_name}): {}", end.message),
                    ));
                    return Ok(());
                }
                AttemptOutcome::Failed | AttemptOutcome::Disrupted => {
                    let reason =
                        if end.outcome == AttemptOutcome::Failed { "AttemptFailed" } else { "AttemptDisrupted" };
                    events.push((EventType::Warning, reason, format!("attempt {index} ({job_name}): {}", end.message)));
                }
                AttemptOutcome::BadConfiguration
                | AttemptOutcome::MalformedResult
                | AttemptOutcome::DeadlineExceeded => {
                    next.phase = RetrainPhase::Failed;
                    next.completion_time = Some(now.clone());
                    events.push((
                        EventType::Warning,
                        outcome_name(end.outcome),
                        format!("attempt {index} ({job_name}) failed without retry: {}", end.message),
                    ));
                    return Ok(());
                }
            }
            continue;
        }
        // No open attempt: start the next one, if any is left.
        let counted = next.attempts.iter().filter(|a| a.outcome == Some(AttemptOutcome::Failed)).count();
        if counted > retries || next.attempts.len() >= MAX_ATTEMPTS {
            next.phase = RetrainPhase::Failed;
            next.completion_time = Some(now.clone());
            events.push((
                EventType::Warning,
                "RetriesExhausted",
                format!(
                    "{} attempts ended without a result ({counted} failures counted, {retries} retries allowed)",
                    next.attempts.len()
                ),
            ));
            return Ok(());
        }
        let index = next.attempt_count + 1;
        let desired = match job::build(rtj, index, &ctx.settings) {
            Ok(j) => j,
            Err(e @ JobSpecError::Uri { .. }) => {
                next.phase = RetrainPhase::Failed;
                next.completion_time = Some(now.clone());
                let health = Health::Stalled { reason: "InvalidSpec".into(), message: e.to_string() };
                conditions::set_health(&mut next.conditions, &health, rtj.metadata.generation, now);
                events.push((EventType::Warning, "InvalidSpec", e.to_string()));
                return Ok(());
            }
            Err(JobSpecError::Malformed(what)) => return Err(RetrainError::Malformed(what)),
        };
        let job_name = desired.name_any();
        match jobs_api.create(&PostParams::default(), &desired).await {
            Ok(_) => {}
            // Made before a crash: the same attempt, the same Job. Another 409 (a storage
            // conflict) created nothing: it is retried, so no attempt is recorded without its Job.
            Err(kube::Error::Api(s)) if s.code == 409 && s.reason == "AlreadyExists" => {}
            Err(e) => return Err(kube_err(format!("creating Job {job_name}"))(e)),
        }
        next.attempts.push(Attempt {
            index,
            job_name: job_name.clone(),
            start_time: Some(now.clone()),
            completion_time: None,
            outcome: None,
            exit_code: None,
            message: None,
        });
        next.attempt_count = index;
        next.phase = RetrainPhase::Running;
        next.start_time = next.start_time.clone().or_else(|| Some(now.clone()));
        events.push((EventType::Normal, "AttemptStarted", format!("attempt {index} started as Job {job_name}")));
        return Ok(());
    }
}

enum HandOver {
    Done(String),
    Retry,
    MissingTarget(String),
}

/// Write the trained version into the ModelDeployment's `status.candidate` (never its spec),
/// unless it is already there, under canary, stable, or in its history.
async fn hand_over(
    rtj: &RetrainJob,
    ctx: &Context,
    ns: &str,
    version: &str,
    uri: &str,
    now: &Time,
) -> Result<HandOver, RetrainError> {
    let target = &rtj.spec.target_ref.name;
    let api: Api<ModelDeployment> = Api::namespaced(ctx.client.clone(), ns);
    let Some(md) = api.get_opt(target).await.map_err(kube_err(format!("reading ModelDeployment {target}")))? else {
        return Ok(HandOver::MissingTarget(format!(
            "ModelDeployment {ns}/{target} named by spec.targetRef does not exist; {version} waits here"
        )));
    };
    let status = md.status.clone().unwrap_or_default();
    let name = rtj.name_any();
    let known = status.candidate.as_ref().is_some_and(|c| c.version == version)
        || status.canary.as_ref().is_some_and(|c| c.version == version)
        || status.stable.as_ref().is_some_and(|s| s.version == version)
        || status.history.iter().any(|h| {
            h.version == version && h.lineage.as_ref().and_then(|l| l.retrain_job.as_deref()) == Some(name.as_str())
        });
    if known {
        return Ok(HandOver::Done(format!("{version} was already with {target}")));
    }
    let candidate = Candidate {
        version: version.to_string(),
        uri: uri.to_string(),
        handed_over_at: Some(now.clone()),
        lineage: Some(lineage(rtj)),
    };
    // Optimistic concurrency: the controller of the ModelDeployment may be writing its status.
    let patch = json!({
        "metadata": {"resourceVersion": md.resource_version()},
        "status": {"candidate": candidate},
    });
    match api.patch_status(target, &PatchParams::default(), &Patch::Merge(patch)).await {
        Ok(_) => Ok(HandOver::Done(format!("handed {version} to {target}, which starts its canary"))),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(HandOver::Retry),
        Err(e) => Err(kube_err(format!("handing {version} to ModelDeployment {target}"))(e)),
    }
}

async fn write_status(
    rtj: &RetrainJob,
    ctx: &Context,
    current: &RetrainJobStatus,
    next: &RetrainJobStatus,
) -> Result<(), RetrainError> {
    // The attempts decide Jobs: a write based on a stale read must fail, not overwrite.
    super::patch_status(&ctx.client, rtj, current, next, true).await.map_err(kube_err("writing status"))?;
    Ok(())
}
