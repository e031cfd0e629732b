//! Decide (pure): adopt Jobs a crash kept out of status, record how the open attempt ended,
//! choose whether another attempt starts (its Job built by `job`), and whether the trained
//! version is to be handed to the ModelDeployment. The hand-over's answer finishes the status
//! in [`handed_over`].

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::context::{MAX_ATTEMPTS, RetrainError, lineage};
use super::job::{self, JobSpecError};
use super::observe::Observed;
use super::{evaluation, result};
use crate::api::common::{CONDITION_STALLED, Lineage, RuleResult};
use crate::api::conditions::{self, Health};
use crate::api::model_deployment::{Candidate, ModelDeployment};
use crate::api::retrain_job::{Attempt, AttemptOutcome, EvaluationStatus, RetrainJob, RetrainJobStatus, RetrainPhase};
use crate::api::{ConditionStatus, Promotion};

/// The condition the evaluation gate sets: True when the candidate passed, False when it failed
/// a rule (or its evaluation Job failed).
pub const CONDITION_ACCEPTED: &str = "Accepted";
/// The condition of a RetrainJob whose trainer waits in a Kueue queue.
pub const CONDITION_QUEUED: &str = "Queued";
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

/// Adopt attempts a crash kept out of status: their Jobs, or, where a Job was removed before
/// this look, the pods its result finalizer kept.
fn adopt(rtj: &str, next: &mut RetrainJobStatus, observed: &Observed) {
    let from_jobs = observed.jobs.iter().map(|(n, j)| (*n, j.name_any(), j.metadata.creation_timestamp.clone()));
    // The observed pods are of one attempt. Those of an attempt status has (or of a newer Job,
    // adopted first) are not adopted again: their attempt is not after the count.
    let from_pods = observed.pods.iter().find_map(|p| {
        let n = super::observe::attempt_of(p)?;
        Some((n, job::job_name(rtj, n), p.metadata.creation_timestamp.clone()))
    });
    for (n, job_name, created) in from_jobs.chain(from_pods) {
        if n > next.attempt_count {
            next.attempts.push(Attempt {
                index: n,
                job_name,
                start_time: created.clone(),
                completion_time: None,
                outcome: None,
                exit_code: None,
                message: None,
            });
            next.attempt_count = n;
            next.phase = RetrainPhase::Running;
            next.start_time = next.start_time.clone().or(created);
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
    adopt(&rtj.name_any(), next, observed);
    let expected = result::Expected {
        version: rtj.spec.version.as_deref(),
        // A ModelDeployment in Adapter rollout mode takes adapters; every other serves whole models.
        whole_model: rtj.spec.promotion == Promotion::Canary
            && !observed.target.as_ref().is_some_and(|md| md.spec.adapter_mode()),
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
                    // Waiting in its Kueue queue (suspended, or preempted and suspended again),
                    // or running once admitted.
                    let suspended = j.spec.as_ref().and_then(|s| s.suspend).unwrap_or(false);
                    next.phase = if suspended { RetrainPhase::Queued } else { RetrainPhase::Running };
                    set_queued(rtj, next, suspended, now);
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
                next.result = end.result;
                events.push(Note::normal("Trained", format!("attempt {index} ({job_name}): {}", end.message)));
                return start_evaluation(rtj, settings, now, next, out, events);
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

/// The condition `Queued` of a RetrainJob whose trainer goes through a Kueue queue: True while
/// the attempt's Job waits for admission (naming the queue), False once admitted.
fn set_queued(rtj: &RetrainJob, next: &mut RetrainJobStatus, suspended: bool, now: &Time) {
    let Some(queue) = rtj.spec.trainer.queue_name.as_ref() else { return };
    let desired = if suspended {
        conditions::Desired::new(
            CONDITION_QUEUED,
            ConditionStatus::True,
            "WaitingForAdmission",
            format!("the Job waits in the Kueue LocalQueue {queue} for admission"),
        )
    } else {
        conditions::Desired::new(
            CONDITION_QUEUED,
            ConditionStatus::False,
            "Admitted",
            format!("admitted by the Kueue LocalQueue {queue}"),
        )
    };
    conditions::set(&mut next.conditions, &desired, rtj.metadata.generation, now);
}

/// A trained candidate goes through the evaluation gate: its Job when the spec has one, else its
/// rules at once over the trainer's metrics; with no gate it succeeds.
fn start_evaluation(
    rtj: &RetrainJob,
    settings: &ChildSettings,
    now: &Time,
    next: &mut RetrainJobStatus,
    out: &mut Children,
    events: &mut Vec<Note>,
) -> Result<(), RetrainError> {
    let Some(result) = next.result.clone() else { return Ok(()) };
    match rtj.spec.evaluation.as_ref().and_then(|e| e.job.as_ref()) {
        Some(template) => {
            let job = match job::build_evaluation(rtj, template, &result, settings) {
                Ok(j) => j,
                Err(JobSpecError::Uri { field, message }) => {
                    finish_evaluation(rtj, now, next, events, Err(format!("{field}: {message}")));
                    return Ok(());
                }
                Err(JobSpecError::Malformed(what)) => return Err(RetrainError::Malformed(what)),
            };
            let name = job.name_any();
            next.phase = RetrainPhase::Evaluating;
            next.evaluation = Some(EvaluationStatus { job_name: Some(name.clone()), ..EvaluationStatus::default() });
            events.push(Note::normal("EvaluationStarted", format!("evaluating {} as Job {name}", result.version)));
            out.create = Some(job);
        }
        None => finish_evaluation(rtj, now, next, events, Ok(BTreeMap::new())),
    }
    Ok(())
}

/// The evaluation is in: merge its metrics over the trainer's (the evaluator's win), judge the
/// rules, and end the run `Succeeded` or `Rejected` (or `Failed` when the evaluation Job failed).
fn finish_evaluation(
    rtj: &RetrainJob,
    now: &Time,
    next: &mut RetrainJobStatus,
    events: &mut Vec<Note>,
    metrics: Result<BTreeMap<String, f64>, String>,
) {
    next.completion_time = Some(now.clone());
    let evaluation = next.evaluation.get_or_insert_with(EvaluationStatus::default);
    let measured = match metrics {
        Ok(m) => m,
        Err(why) => {
            next.phase = RetrainPhase::Failed;
            evaluation.passed = Some(false);
            events.push(Note::warning("EvaluationFailed", why.clone()));
            conditions::set(
                &mut next.conditions,
                &conditions::Desired::new(CONDITION_ACCEPTED, ConditionStatus::False, "EvaluationFailed", why),
                rtj.metadata.generation,
                now,
            );
            return;
        }
    };
    let Some(result) = next.result.as_mut() else { return };
    result.metrics.extend(measured);
    let rules = rtj.spec.evaluation.as_ref().map(|e| e.rules.clone()).unwrap_or_default();
    let judged = evaluation::judge(&rules, &result.metrics);
    let passed = judged.iter().all(|r| r.passed);
    let version = result.version.clone();
    evaluation.passed = Some(passed);
    evaluation.rules = judged.clone();
    if rtj.spec.evaluation.is_none() {
        next.evaluation = None;
        next.phase = RetrainPhase::Succeeded;
        events.push(Note::normal("Succeeded", format!("trained {version}")));
        return;
    }
    let (status, reason, message) = if passed {
        let message = if judged.is_empty() {
            "no rule to judge".to_string()
        } else {
            judged.iter().map(|r| r.message.clone()).collect::<Vec<_>>().join("; ")
        };
        (ConditionStatus::True, "EvaluationPassed", message)
    } else {
        (ConditionStatus::False, "EvaluationFailed", evaluation::failures(&judged))
    };
    conditions::set(
        &mut next.conditions,
        &conditions::Desired::new(CONDITION_ACCEPTED, status, reason, message.clone()),
        rtj.metadata.generation,
        now,
    );
    if passed {
        next.phase = RetrainPhase::Succeeded;
        events.push(Note::normal("Succeeded", format!("{version} passed the evaluation gate: {message}")));
    } else {
        next.phase = RetrainPhase::Rejected;
        events.push(Note::warning("Rejected", format!("{version} failed the evaluation gate: {message}")));
    }
}

/// The open evaluation: read how its Job ended (or start it again when it was deleted before it
/// finished).
fn run_evaluation(
    rtj: &RetrainJob,
    observed: &Observed,
    settings: &ChildSettings,
    now: &Time,
    next: &mut RetrainJobStatus,
    out: &mut Children,
    events: &mut Vec<Note>,
) -> Result<(), RetrainError> {
    let ended = match &observed.evaluation_job {
        Some(j) => match result::evaluation_ended(j, &observed.pods) {
            Some(ended) => ended,
            None => return Ok(()),
        },
        None => {
            // Deleted before it finished (its pods, kept by the finalizer, would say otherwise):
            // run it again; a disruption never ends an evaluation.
            let finished = observed
                .pods
                .iter()
                .any(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()).is_some_and(|ph| ph == "Succeeded"));
            if !finished {
                return start_evaluation(rtj, settings, now, next, out, events);
            }
            let end = result::pod_end(&observed.pods).unwrap_or_default();
            result::parse_metrics(&end.message.unwrap_or_default())
        }
    };
    finish_evaluation(rtj, now, next, events, ended);
    Ok(())
}

/// The hand-over of a trained version, unless it is already the candidate, under canary,
/// stable, or in the history; or why it waits (the target does not exist).
fn hand_over(
    rtj: &RetrainJob,
    target: Option<&ModelDeployment>,
    version: &str,
    uri: &str,
    adapter: bool,
    evaluation: &[RuleResult],
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
            adapter,
            handed_over_at: Some(now.clone()),
            lineage: Some(Lineage { evaluation: evaluation.to_vec(), ..lineage(rtj) }),
        },
    }))
}

fn health(rtj: &RetrainJob, next: &RetrainJobStatus, stalled_target: Option<&String>) -> Health {
    match next.phase {
        RetrainPhase::Pending => Health::Progressing { reason: "Pending".into(), message: "no attempt yet".into() },
        RetrainPhase::Queued => {
            let a = next.attempts.last();
            Health::Progressing {
                reason: "Queued".into(),
                message: format!(
                    "attempt {}: Job {} waits in the Kueue LocalQueue {} for admission",
                    a.map_or(0, |a| a.index),
                    a.map_or("", |a| a.job_name.as_str()),
                    rtj.spec.trainer.queue_name.as_deref().unwrap_or("")
                ),
            }
        }
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
        RetrainPhase::Evaluating => Health::Progressing {
            reason: "Evaluating".into(),
            message: format!(
                "evaluating {} as Job {}",
                next.result.as_ref().map_or("", |r| r.version.as_str()),
                next.evaluation.as_ref().and_then(|e| e.job_name.as_deref()).unwrap_or("")
            ),
        },
        RetrainPhase::Rejected => Health::Ready {
            reason: "Rejected".into(),
            message: format!(
                "{} failed the evaluation gate and is not handed over: {}",
                next.result.as_ref().map_or("", |r| r.version.as_str()),
                next.evaluation.as_ref().map(|e| evaluation::failures(&e.rules)).unwrap_or_default()
            ),
        },
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
            // The training succeeded but its evaluation Job failed.
            if next.evaluation.as_ref().is_some_and(|e| e.passed == Some(false) && e.rules.is_empty())
                && let Some(c) = conditions::get(&next.conditions, CONDITION_ACCEPTED)
            {
                return Health::Stalled { reason: "EvaluationFailed".into(), message: c.message.clone() };
            }
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
    if current.phase == RetrainPhase::Evaluating {
        run_evaluation(rtj, observed, settings, &now, &mut next, &mut out, &mut events)?;
    }
    if matches!(current.phase, RetrainPhase::Pending | RetrainPhase::Queued | RetrainPhase::Running) {
        run_attempts(rtj, observed, settings, &now, &mut next, &mut out, &mut events)?;
        if matches!(next.phase, RetrainPhase::Queued | RetrainPhase::Running | RetrainPhase::Evaluating) {
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
        let rules = next.evaluation.as_ref().map(|e| e.rules.clone()).unwrap_or_default();
        let adapter = res.artifact == crate::api::retrain_job::Artifact::Adapter;
        match hand_over(rtj, observed.target.as_ref(), &res.version, &res.uri, adapter, &rules, &now) {
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
