//! The canary state machine: a pure function of the spec, the current status, the canary
//! track's readiness, the gate's evidence and `now`. It decides which version is stable, which
//! is under canary at what step and weight, and records promotions and aborts. The reconcile
//! driver applies what it decides; nothing here does I/O.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::api::model_deployment::{
    Approval, CanaryStatus, CanaryStep, Evidence, Gate, HistoryEntry, HistoryType, ModelDeploymentSpec,
    ModelDeploymentStatus, ModelRef, RolloutAction, RolloutSpec, TrackStatus, Verdict,
};

/// What happened in one step of the state machine; each becomes an Event.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    /// The first version became stable.
    Deployed { version: String },
    /// A canary of `version` started.
    CanaryStarted { version: String, weight: i32 },
    /// The canary moved to step `step` with `weight` percent.
    StepAdvanced { version: String, step: i32, weight: i32 },
    /// The canary became stable.
    Promoted { version: String, previous: String },
    /// The canary was removed and all traffic returned to stable.
    Aborted { version: String, reason: String, message: String, rolled_back: bool },
    /// A candidate was refused before its canary started: it cannot be served.
    Rejected { version: String, reason: String, message: String },
}

impl Transition {
    /// The Event reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Deployed { .. } => "Deployed",
            Self::CanaryStarted { .. } => "CanaryStarted",
            Self::StepAdvanced { .. } => "StepAdvanced",
            Self::Promoted { .. } => "Promoted",
            Self::Aborted { rolled_back: true, .. } => "RolledBack",
            Self::Aborted { .. } => "Aborted",
            Self::Rejected { .. } => "CandidateRejected",
        }
    }

    /// The Event message.
    pub fn message(&self) -> String {
        match self {
            Self::Deployed { version } => format!("serving {version}"),
            Self::CanaryStarted { version, weight } => format!("canary of {version} started at {weight}%"),
            Self::StepAdvanced { version, step, weight } => {
                format!("canary of {version} advanced to step {step} ({weight}%)")
            }
            Self::Promoted { version, previous } => format!("{version} promoted to stable (was {previous})"),
            Self::Aborted { version, message, .. } => format!("canary of {version} removed: {message}"),
            Self::Rejected { version, message, .. } => format!("candidate {version} refused: {message}"),
        }
    }
}

/// The decision of one reconcile.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The rollout part of the new status (stable, canary, candidate, observed model, history,
    /// requested action).
    pub status: ModelDeploymentStatus,
    /// What happened.
    pub transitions: Vec<Transition>,
    /// When the state machine next needs to look, if time alone can change its mind.
    pub requeue_after: Option<std::time::Duration>,
}

/// Why a version cannot be served: a reason in CamelCase and a message naming the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unservable {
    /// Machine-readable reason (the history entry's and the Event's).
    pub reason: String,
    /// In words.
    pub message: String,
}

/// What the driver observed and computed for this decision.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Observations {
    /// The canary track has all its replicas ready.
    pub canary_ready: bool,
    /// The feedback analysis of the current step, when the step's gate is `Analysis`.
    pub analysis: Option<Evidence>,
    /// The candidate in status cannot be served (it is refused, never canaried).
    pub candidate_unservable: Option<Unservable>,
    /// The canary in status cannot be served any longer (its rollout is aborted).
    pub canary_unservable: Option<Unservable>,
}

fn to_ts(t: &Time) -> Timestamp {
    t.0
}

fn time(now: Timestamp) -> Time {
    Time(now)
}

fn elapsed(since: Option<&Time>, now: Timestamp) -> SignedDuration {
    since.map_or(SignedDuration::ZERO, |t| now.duration_since(to_ts(t)))
}

fn secs(d: i64) -> SignedDuration {
    SignedDuration::from_secs(d)
}

fn std_duration(d: SignedDuration) -> std::time::Duration {
    std::time::Duration::from_secs_f64(d.as_secs_f64().max(0.0))
}

/// The steps of a spec's rollout (the defaults when it has none).
pub fn steps(spec: &ModelDeploymentSpec) -> Vec<CanaryStep> {
    spec.rollout.clone().unwrap_or_default().steps
}

/// Decide the rollout state for `now`.
pub fn plan(
    spec: &ModelDeploymentSpec,
    current: &ModelDeploymentStatus,
    observed: &Observations,
    now: Timestamp,
) -> Plan {
    let rollout: RolloutSpec = spec.rollout.clone().unwrap_or_default();
    let mut status = current.clone();
    let mut transitions = Vec::new();
    let mut requeue: Option<SignedDuration> = None;
    let wanted = ModelRef { version: spec.model.version.clone(), uri: spec.model.uri.clone() };

    // First deployment: the spec's model is stable at once.
    let Some(stable) = status.stable.clone() else {
        status.stable = Some(TrackStatus {
            version: wanted.version.clone(),
            uri: wanted.uri.clone(),
            since: Some(time(now)),
            ..TrackStatus::default()
        });
        status.observed_model = Some(wanted.clone());
        transitions.push(Transition::Deployed { version: wanted.version });
        return Plan { status, transitions, requeue_after: None };
    };

    // A change of spec.model starts (or supersedes) a canary of it.
    let spec_changed = status.observed_model.as_ref() != Some(&wanted);
    if spec_changed && spec.adapter_mode() {
        // In Adapter mode spec.model is the base every adapter was trained on: a new base rolls
        // out through the pods' Deployment and takes the place of the stable adapter, and an
        // adapter canary of the old base is superseded.
        status.observed_model = Some(wanted.clone());
        if stable.version != wanted.version || stable.uri != wanted.uri || stable.adapter {
            if let Some(canary) = status.canary.take() {
                record(
                    &mut status,
                    &rollout,
                    HistoryType::Aborted,
                    &canary.version,
                    &stable.version,
                    "Superseded",
                    "spec.model (the base model) changed during the rollout",
                    None,
                    canary.lineage.clone(),
                    now,
                );
                transitions.push(Transition::Aborted {
                    version: canary.version.clone(),
                    reason: "Superseded".into(),
                    message: format!("superseded by the base model {}", wanted.version),
                    rolled_back: false,
                });
            }
            status.stable = Some(TrackStatus {
                version: wanted.version.clone(),
                uri: wanted.uri.clone(),
                since: Some(time(now)),
                ..TrackStatus::default()
            });
            transitions.push(Transition::Deployed { version: wanted.version.clone() });
        }
    } else if spec_changed {
        status.observed_model = Some(wanted.clone());
        if let Some(canary) = status.canary.take() {
            if canary.version != wanted.version {
                record(
                    &mut status,
                    &rollout,
                    HistoryType::Aborted,
                    &canary.version,
                    &stable.version,
                    "Superseded",
                    "spec.model changed during the rollout",
                    None,
                    canary.lineage.clone(),
                    now,
                );
                transitions.push(Transition::Aborted {
                    version: canary.version.clone(),
                    reason: "Superseded".into(),
                    message: format!("superseded by {}", wanted.version),
                    rolled_back: false,
                });
            } else {
                status.canary = Some(canary);
            }
        }
        if wanted.version == stable.version {
            // Back to the stable version (for example a revert in Git): nothing to canary.
            if wanted.uri != stable.uri
                && let Some(s) = status.stable.as_mut()
            {
                s.uri = wanted.uri.clone();
            }
        } else if status.canary.is_none() {
            start_canary(&mut status, &rollout, &wanted, None, now, &mut transitions);
        }
    }

    // A candidate serving cannot load is refused before any traffic reaches it: recorded, and
    // the hand-over slot is free again (so the policy that made it may retrain).
    if let (Some(candidate), Some(problem)) = (status.candidate.clone(), observed.candidate_unservable.as_ref()) {
        status.candidate = None;
        record(
            &mut status,
            &rollout,
            HistoryType::Rejected,
            &candidate.version,
            &stable.version,
            &problem.reason,
            &problem.message,
            None,
            candidate.lineage.clone(),
            now,
        );
        transitions.push(Transition::Rejected {
            version: candidate.version,
            reason: problem.reason.clone(),
            message: problem.message.clone(),
        });
    }

    // A version handed over by a RetrainJob starts a canary when none runs.
    if status.canary.is_none()
        && let Some(candidate) = status.candidate.take()
        && candidate.version != stable.version
    {
        let model = ModelRef { version: candidate.version.clone(), uri: candidate.uri.clone() };
        start_canary(&mut status, &rollout, &model, candidate.lineage.clone(), now, &mut transitions);
        if let Some(c) = status.canary.as_mut() {
            c.adapter = candidate.adapter;
        }
    }

    let Some(mut canary) = status.canary.clone() else {
        status.requested_action = None;
        return Plan { status, transitions, requeue_after: None };
    };

    // A canary that can no longer be served (its claim went away) is removed.
    if let Some(problem) = &observed.canary_unservable {
        status.requested_action = None;
        abort(
            &mut status,
            &rollout,
            &canary,
            &stable.version,
            &problem.reason,
            &problem.message,
            false,
            now,
            &mut transitions,
        );
        return Plan { status, transitions, requeue_after: None };
    }

    // Manual actions aimed at this canary.
    let action = status.requested_action.take().filter(|a| a.version == canary.version).map(|a| a.action);
    if action == Some(RolloutAction::Abort) {
        abort(
            &mut status,
            &rollout,
            &canary,
            &stable.version,
            "ManualAbort",
            "aborted by flywheel rollout abort",
            false,
            now,
            &mut transitions,
        );
        return Plan { status, transitions, requeue_after: None };
    }

    let step_index = usize::try_from(canary.step).unwrap_or(0);
    let Some(step) = rollout.steps.get(step_index).cloned() else {
        // Past the last step: promotion waits only for a manual approval.
        if rollout.approval == Approval::Manual && action != Some(RolloutAction::Promote) {
            status.canary = Some(canary);
            return Plan { status, transitions, requeue_after: None };
        }
        promote(&mut status, &rollout, &canary, &stable.version, now, &mut transitions);
        return Plan { status, transitions, requeue_after: None };
    };

    // The step's clock starts once the canary track is ready; while it is not, nothing is
    // judged, and past the progress deadline the rollout is aborted. A canary that was ready and
    // flaps keeps its step's clock and evidence.
    if !observed.canary_ready {
        let since = canary.not_ready_since.clone().unwrap_or_else(|| time(now));
        canary.not_ready_since = Some(since.clone());
        let waited = elapsed(Some(&since), now);
        let deadline = secs(rollout.progress_deadline_seconds);
        if waited >= deadline {
            let message = format!(
                "the canary track was not Ready for {}s (spec.rollout.progressDeadlineSeconds: {})",
                waited.as_secs(),
                rollout.progress_deadline_seconds
            );
            status.canary = Some(canary.clone());
            abort(
                &mut status,
                &rollout,
                &canary,
                &stable.version,
                "ProgressDeadlineExceeded",
                &message,
                false,
                now,
                &mut transitions,
            );
            return Plan { status, transitions, requeue_after: None };
        }
        status.canary = Some(canary);
        let next = (deadline - waited).min(secs(2));
        return Plan { status, transitions, requeue_after: Some(std_duration(next)) };
    }
    canary.not_ready_since = None;
    let started = canary.step_started_at.clone().unwrap_or_else(|| time(now));
    canary.step_started_at = Some(started.clone());
    let age = elapsed(Some(&started), now);

    let decision = match step.gate {
        Gate::Pause => {
            let pause = secs(step.pause_seconds.unwrap_or(0));
            if age >= pause {
                Verdict::Pass
            } else {
                requeue = Some(pause - age);
                Verdict::Inconclusive
            }
        }
        Gate::Manual => Verdict::Inconclusive,
        Gate::Analysis => {
            let evidence = observed.analysis.clone().unwrap_or_else(|| Evidence {
                time: Some(time(now)),
                verdict: Verdict::Inconclusive,
                message: "no feedback analysis available".into(),
                ..Evidence::default()
            });
            let verdict = evidence.verdict;
            canary.evidence = Some(evidence);
            let interval = rollout.analysis.clone().unwrap_or_default().interval_seconds;
            requeue = Some(secs(i64::from(interval)));
            verdict
        }
    };
    let decision = if action == Some(RolloutAction::Promote) { Verdict::Pass } else { decision };

    match decision {
        Verdict::Fail => {
            let message =
                canary.evidence.as_ref().map_or_else(|| "the analysis failed".to_string(), |e| e.message.clone());
            status.canary = Some(canary.clone());
            abort(
                &mut status,
                &rollout,
                &canary,
                &stable.version,
                "AnalysisFailed",
                &message,
                true,
                now,
                &mut transitions,
            );
            return Plan { status, transitions, requeue_after: None };
        }
        Verdict::Pass => {
            let next = step_index + 1;
            match rollout.steps.get(next) {
                Some(next_step) => {
                    canary.step = i32::try_from(next).unwrap_or(i32::MAX);
                    canary.weight = next_step.weight;
                    // An adapter's new weight reaches the pods through their agents: its step's
                    // clock starts once every pod routes at it (the next ready look).
                    canary.step_started_at = if canary.adapter { None } else { Some(time(now)) };
                    canary.evidence = None;
                    transitions.push(Transition::StepAdvanced {
                        version: canary.version.clone(),
                        step: canary.step,
                        weight: canary.weight,
                    });
                    status.canary = Some(canary);
                    return Plan { status, transitions, requeue_after: Some(std_duration(secs(1))) };
                }
                // One promote passes one gate: a manual approval at the end needs its own.
                None if rollout.approval == Approval::Manual => {
                    canary.step = i32::try_from(next).unwrap_or(i32::MAX);
                    status.canary = Some(canary);
                    return Plan { status, transitions, requeue_after: None };
                }
                None => {
                    promote(&mut status, &rollout, &canary, &stable.version, now, &mut transitions);
                    return Plan { status, transitions, requeue_after: None };
                }
            }
        }
        Verdict::Inconclusive => {}
    }

    // Missing or thin evidence never promotes: it waits, and aborts at the step's deadline.
    let deadline = secs(step.deadline_seconds);
    if age >= deadline {
        let message = format!(
            "step {} ({}%) found no passing gate within {}s",
            canary.step, canary.weight, step.deadline_seconds
        );
        status.canary = Some(canary.clone());
        abort(
            &mut status,
            &rollout,
            &canary,
            &stable.version,
            "StepDeadlineExceeded",
            &message,
            false,
            now,
            &mut transitions,
        );
        return Plan { status, transitions, requeue_after: None };
    }
    let until_deadline = deadline - age;
    let next = requeue.map_or(until_deadline, |r| r.min(until_deadline));
    status.canary = Some(canary);
    Plan { status, transitions, requeue_after: Some(std_duration(next)) }
}

fn start_canary(
    status: &mut ModelDeploymentStatus,
    rollout: &RolloutSpec,
    model: &ModelRef,
    lineage: Option<crate::api::Lineage>,
    now: Timestamp,
    transitions: &mut Vec<Transition>,
) {
    let weight = rollout.steps.first().map_or(100, |s| s.weight);
    status.canary = Some(CanaryStatus {
        version: model.version.clone(),
        uri: model.uri.clone(),
        weight,
        step: 0,
        step_started_at: None,
        started_at: Some(time(now)),
        lineage,
        ..CanaryStatus::default()
    });
    transitions.push(Transition::CanaryStarted { version: model.version.clone(), weight });
}

fn promote(
    status: &mut ModelDeploymentStatus,
    rollout: &RolloutSpec,
    canary: &CanaryStatus,
    previous: &str,
    now: Timestamp,
    transitions: &mut Vec<Transition>,
) {
    status.stable = Some(TrackStatus {
        version: canary.version.clone(),
        uri: canary.uri.clone(),
        since: Some(time(now)),
        lineage: canary.lineage.clone(),
        adapter: canary.adapter,
        ..TrackStatus::default()
    });
    status.canary = None;
    record(
        status,
        rollout,
        HistoryType::Promoted,
        &canary.version,
        previous,
        "Promoted",
        "all canary steps passed",
        canary.evidence.clone(),
        canary.lineage.clone(),
        now,
    );
    transitions.push(Transition::Promoted { version: canary.version.clone(), previous: previous.to_string() });
}

#[allow(clippy::too_many_arguments, reason = "one history entry's parts")]
fn abort(
    status: &mut ModelDeploymentStatus,
    rollout: &RolloutSpec,
    canary: &CanaryStatus,
    stable: &str,
    reason: &str,
    message: &str,
    rolled_back: bool,
    now: Timestamp,
    transitions: &mut Vec<Transition>,
) {
    status.canary = None;
    let type_ = if rolled_back { HistoryType::RolledBack } else { HistoryType::Aborted };
    record(
        status,
        rollout,
        type_,
        &canary.version,
        stable,
        reason,
        message,
        canary.evidence.clone(),
        canary.lineage.clone(),
        now,
    );
    transitions.push(Transition::Aborted {
        version: canary.version.clone(),
        reason: reason.into(),
        message: message.into(),
        rolled_back,
    });
}

#[allow(clippy::too_many_arguments, reason = "one history entry's parts")]
fn record(
    status: &mut ModelDeploymentStatus,
    rollout: &RolloutSpec,
    type_: HistoryType,
    version: &str,
    previous: &str,
    reason: &str,
    message: &str,
    evidence: Option<Evidence>,
    lineage: Option<crate::api::Lineage>,
    now: Timestamp,
) {
    status.history.push(HistoryEntry {
        type_,
        version: version.to_string(),
        previous_version: Some(previous.to_string()),
        time: time(now),
        reason: reason.to_string(),
        message: message.chars().take(1024).collect(),
        evidence,
        lineage,
    });
    let limit = usize::try_from(rollout.history_limit.max(1)).unwrap_or(10);
    if status.history.len() > limit {
        let excess = status.history.len() - limit;
        status.history.drain(..excess);
    }
}

/// Replicas per track for a total and the canary's weight: canary = round(total × weight), at
/// least one, and stable keeps at least one while the canary is below 100%.
pub fn split_replicas(total: i32, canary_weight: Option<i32>) -> (i32, i32) {
    match canary_weight {
        None => (total.max(0), 0),
        Some(weight) => {
            let total = total.max(1);
            let canary = ((f64::from(total) * f64::from(weight) / 100.0).round() as i32).clamp(1, total);
            let stable = if weight >= 100 { (total - canary).max(0) } else { (total - canary).max(1) };
            (stable, canary)
        }
    }
}

pub mod analysis;

#[cfg(test)]
mod tests;
