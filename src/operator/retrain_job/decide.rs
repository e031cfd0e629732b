//! Decide (pure): adopt Jobs a crash kept out of status, record how the open attempt ended,
//! choose whether another attempt starts (its Job built by `job`), and whether the trained
//! version is to be handed to the ModelDeployment. The hand-over's answer finishes the status
//! in [`handed_over`].

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::context::{MAX_ATTEMPTS, RetrainError, lineage};
use super::job::{self, JobSpecError};
use super::observe::Observed;
use super::result;
use crate::api::Promotion;
use crate::api::common::CONDITION_STALLED;
use crate::api::conditions::{self, Health};
use crate::api::model_deployment::{Candidate, ModelDeployment};
use crate::api::retrain_job::{Attempt, AttemptOutcome, RetrainJob, RetrainJobStatus, RetrainPhase};
use crate::operator::model_deployment::children::ChildSettings;
use crate::operator::skeleton::{Decision, Note};

/// A trained version to write into the ModelDeployment's `status.candidate`.
#[derive(Debug, Clone, PartialEq)]
pub struct HandOver {
    /// The ModelDeployment.
    pub target: String,
    /// Its resourceVersion as read (the write is guarded by it).
    pub resource_version: Option<String>,
    /// The candidate.
    pub candidate: Candidate,
}

/// What the RetrainJob writes besides its status.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Children {
    /// The Job of the attempt that starts now.
    pub create: Option<Job>,
    /// A hand-over to carry out.
    pub hand_over: Option<HandOver>,
    /// Attempt outcomes counted (a metric).
    pub ended: Vec<AttemptOutcome>,
}

/// The decision of one reconcile.
pub type RetrainDecision = Decision<Children, RetrainJobStatus>;

/// The name of an attempt's outcome (the metric's label, the Event's and condition's reason).
pub fn outcome_name(o: AttemptOutcome) -> &'static str {
    match o {
        AttemptOutcome::Succeeded => "Succeeded",
        AttemptOutcome::Failed => "Failed",
        AttemptOutcome::Disrupted => "Disrupted",
        AttemptOutcome::BadConfiguration => "BadConfiguration",
        AttemptOutcome::MalformedResult => "MalformedResult",
        AttemptOutcome::DeadlineExceeded => "DeadlineExceeded",
    }
}

/// Adopt Jobs made before a crash kept their attempt out of status.
fn adopt(next: &mut RetrainJobStatus, observed: &Observed) {
    for (n, j) in &observed.jobs {
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
}

/// Run the attempts: record how the open one ended (from its Job and pods), then start the next
/// one if any is left. Returns the Job to create.
fn run_attempts(
    rtj: &RetrainJob,
    observed: &Observed,
    settings: &ChildSettings,
    now: &Time,
    next: &mut RetrainJobStatus,
    out: &mut Children,
    events: &mut Vec<Note>,
) -> Result<(), RetrainError> {
    adopt(next, observed);
    let expected = result::Expected {
        version: rtj.spec.version.as_deref(),
        whole_model: rtj.spec.promotion == Promotion::Canary,
        output_uri: Some(rtj.spec.output_uri.as_str()),
    };
    if let Some(i) = next.attempts.iter().position(|a| a.outcome.is_none()) {
        let index = next.attempts[i].index;
        let end = match observed.jobs.get(&index) {
            // The Job is gone: its pods (kept by the result finalizer) say whether it had
            // finished; only a Job deleted before it finished is a disruption.
            None => result::ended_without_job(&next.attempts[i].job_name, &observed.pods, expected),
            Some(j) => match result::ended(j, &observed.pods, expected) {
                Some(end) => end,
                None => {
                    next.phase = RetrainPhase::Running;
                    return Ok(());
                }
            },
        };
        out.ended.push(end.outcome);
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
                events.push(Note::normal("Succeeded", format!("attempt {index} ({job_name}): {}", end.message)));
                return Ok(());
            }
            AttemptOutcome::Failed | AttemptOutcome::Disrupted => {
                let reason = if end.outcome == AttemptOutcome::Failed { "AttemptFailed" } else { "AttemptDisrupted" };
                events.push(Note::warning(reason, format!("attempt {index} ({job_name}): {}", end.message)));
            }
            AttemptOutcome::BadConfiguration | AttemptOutcome::MalformedResult | AttemptOutcome::DeadlineExceeded => {
                next.phase = RetrainPhase::Failed;
                next.completion_time = Some(now.clone());
                events.push(Note::warning(
                    outcome_name(end.outcome),
                    format!("attempt {index} ({job_name}) failed without retry: {}", end.message),
                ));
                return Ok(());
            }
        }
    }
    // No open attempt: start the next one, if any is left.
    let retries = usize::try_from(rtj.spec.trainer.retries.max(0)).unwrap_or(0);
    let counted = next.attempts.iter().filter(|a| a.outcome == Some(AttemptOutcome::Failed)).count();
    if counted > retries || next.attempts.len() >= MAX_ATTEMPTS {
        next.phase = RetrainPhase::Failed;
        next.completion_time = Some(now.clone());
        events.push(Note::warning(
            "RetriesExhausted",
            format!(
                "{} attempts ended without a result ({counted} failures counted, {retries} retries allowed)",
                next.attempts.len()
            ),
        ));
        return Ok(());
    }
    let index = next.attempt_count + 1;
    let desired = match job::build(rtj, index, settings) {
        Ok(j) => j,
        Err(e @ JobSpecError::Uri { .. }) => {
            next.phase = RetrainPhase::Failed;
            next.completion_time = Some(now.clone());
            let health = Health::Stalled { reason: "InvalidSpec".into(), message: e.to_string() };
            conditions::set_health(&mut next.conditions, &health, rtj.metadata.generation, now);
            events.push(Note::warning("InvalidSpec", e.to_string()));
            return Ok(());
        }
        Err(JobSpecError::Malformed(what)) => return Err(RetrainError::Malformed(what)),
    };
    let job_name = desired.name_any();
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
    events.push(Note::normal("AttemptStarted", format!("attempt {index} started as Job {job_name}")));
    out.create = Some(desired);
    Ok(())
}

/// The hand-over of a trained version, unless it is already the candidate, under canary,
/// stable, or in the history; or why it waits (the target does not exist).
fn hand_over(
    rtj: &RetrainJob,
    target: Option<&ModelDeployment>,
    version: &str,
    uri: &str,
    now: &Time,
) -> Result<Option<HandOver>, String> {
    let name = &rtj.spec.target_ref.name;
    let Some(md) = target else {
        let ns = rtj.namespace().unwrap_or_default();
        return Err(format!(
            "ModelDeployment {ns}/{name} named by spec.targetRef does not exist; {version} waits here"
        ));
    };
    let status = md.status.clone().unwrap_or_default();
    let me = rtj.name_any();
    let known = status.candidate.as_ref().is_some_and(|c| c.version == version)
        || status.canary.as_ref().is_some_and(|c| c.version == version)
        || status.stable.as_ref().is_some_and(|s| s.version == version)
        || status.history.iter().any(|h| {
            h.version == version && h.lineage.as_ref().and_then(|l| l.retrain_job.as_deref()) == Some(me.as_str())
        });
    if known {
        return Ok(None);
    }
    Ok(Some(HandOver {
        target: name.clone(),
        resource_version: md.metadata.resource_version.clone(),
        candidate: Candidate {
            version: version.to_string(),
            uri: uri.to_string(),
            handed_over_at: Some(now.clone()),
            lineage: Some(lineage(rtj)),
        },
    }))
}

fn health(rtj: &RetrainJob, next: &RetrainJobStatus, stalled_target: Option<&String>) -> Health {
    match next.phase {
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
            let target = &rtj.spec.target_ref.name;
            match (stalled_target, rtj.spec.promotion, &next.handed_over_at) {
                (Some(m), _, _) => Health::Stalled { reason: "MissingTarget".into(), message: m.clone() },
                (None, Promotion::Canary, None) => Health::Progressing {
                    reason: "HandingOver".into(),
                    message: format!("handing {version} to {target}"),
                },
                (None, Promotion::Canary, Some(_)) => Health::Ready {
                    reason: "HandedOver".into(),
                    message: format!("trained {version}; handed to {target} for a canary"),
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
            let message = conditions::get(&next.conditions, CONDITION_STALLED)
                .filter(|_| reason == "InvalidSpec")
                .map_or(message, |c| c.message.clone());
            Health::Stalled { reason: reason.into(), message }
        }
    }
}

/// Decide (pure).
pub fn decide(
    rtj: &RetrainJob,
    observed: &Observed,
    settings: &ChildSettings,
    now: Timestamp,
) -> Result<RetrainDecision, RetrainError> {
    let now = Time(now);
    let current = rtj.status.clone().unwrap_or_default();
    let mut next = current.clone();
    next.observed_generation = rtj.metadata.generation;
    next.lineage = Some(lineage(rtj));
    let mut out = Children::default();
    let mut events = Vec::new();
    let mut requeue = None;
    if matches!(current.phase, RetrainPhase::Pending | RetrainPhase::Running) {
        run_attempts(rtj, observed, settings, &now, &mut next, &mut out, &mut events)?;
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
        match hand_over(rtj, observed.target.as_ref(), &res.version, &res.uri, &now) {
            Ok(Some(h)) => out.hand_over = Some(h),
            Ok(None) => {
                next.handed_over_at = Some(now.clone());
                events.push(Note::normal(
                    "HandedOver",
                    format!("{} was already with {}", res.version, rtj.spec.target_ref.name),
                ));
            }
            Err(message) => {
                stalled_target = Some(message);
                requeue = Some(Duration::from_secs(30));
            }
        }
    }
    let health = health(rtj, &next, stalled_target.as_ref());
    conditions::set_health(&mut next.conditions, &health, rtj.metadata.generation, &now);
    Ok(Decision { children: out, status: next, events, requeue })
}

/// The hand-over was written (pure): recorded, and the RetrainJob is Ready.
pub fn handed_over(rtj: &RetrainJob, mut d: RetrainDecision, h: &HandOver, now: Timestamp) -> RetrainDecision {
    d.status.handed_over_at = Some(Time(now));
    let health = health(rtj, &d.status, None);
    conditions::set_health(&mut d.status.conditions, &health, rtj.metadata.generation, &Time(now));
    d.events.push(Note::normal(
        "HandedOver",
        format!("handed {} to {}, which starts its canary", h.candidate.version, h.target),
    ));
    d
}

/// The hand-over met a newer ModelDeployment (409): look again soon.
pub fn hand_over_conflict(mut d: RetrainDecision) -> RetrainDecision {
    d.requeue = Some(Duration::from_millis(500));
    d
}

#[cfg(test)]
mod tests;
