//! Decide (pure): adopt a RetrainJob a crash kept out of status, take in the statistics, ask
//! `trigger::decide` whether a trigger fires, and say what to write. A firing needs the
//! collector's snapshot before its RetrainJob exists, so the decision carries a [`Fire`] plan;
//! [`fired`] and [`postponed`] (pure) finish the status once apply has the snapshot's answer.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::{Resource, ResourceExt};

use super::context::{CONDITION_SUGGESTED, LABEL_POLICY, LABEL_TRIGGER_SEQ, PolicyError};
use super::observe::Readings;
use super::retrains::{recorded_seq, retrain_job_name, seq_of, time_of, trigger_id, unrecorded};
use super::trigger::{self, Firing, Inputs};
use crate::api::ConditionStatus;
use crate::api::common::{CONDITION_READY, Lineage, Promotion, TriggerReason};
use crate::api::conditions::{self, Desired, Health};
use crate::api::feedback_policy::{FeedbackPolicy, FeedbackPolicyStatus, PolicyMode, SignalStats, TriggerRecord};
use crate::api::model_deployment::ModelDeployment;
use crate::api::retrain_job::{BaseModel, DatasetRef, Origin, RetrainJob, RetrainJobSpec, RetrainPhase};
use crate::collector::client::Snapshot;
use crate::operator::skeleton::{Decision, Note};

/// A trigger to carry out: ask the collector for a snapshot, then create the RetrainJob.
#[derive(Debug, Clone, PartialEq)]
pub struct Fire {
    /// The trigger's sequence number (names the RetrainJob).
    pub seq: i64,
    /// The trigger.
    pub firing: Firing,
    /// The snapshot's window start.
    pub from: Timestamp,
    /// The base the new version is trained from: the target's stable version.
    pub base: BaseModel,
}

/// What the policy writes besides its status.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Children {
    /// A trigger to carry out.
    pub fire: Option<Fire>,
    /// A trigger newly suggested (`mode: suggest`), for the trigger metric.
    pub suggested: Option<TriggerReason>,
}

/// The decision of one reconcile.
pub type PolicyDecision = Decision<Children, FeedbackPolicyStatus>;

/// Why one of the policy's retrains is still under way (nothing fires meanwhile): a
/// RetrainJob not finished, a result not yet handed over, or its version still under canary.
pub fn in_flight(rtjs: &[RetrainJob], md: &ModelDeployment, policy: &str) -> Option<String> {
    for r in rtjs {
        let status = r.status.clone().unwrap_or_default();
        match status.phase {
            RetrainPhase::Pending | RetrainPhase::Queued | RetrainPhase::Running | RetrainPhase::Evaluating => {
                return Some(format!("RetrainJob {} is {:?}", r.name_any(), status.phase));
            }
            RetrainPhase::Succeeded
                if r.spec.promotion == Promotion::Canary
                    && status.handed_over_at.is_none()
                    && status.result.as_ref().is_some_and(|res| {
                        md.status.as_ref().and_then(|s| s.stable.as_ref()).is_none_or(|s| s.version != res.version)
                    }) =>
            {
                return Some(format!("RetrainJob {} is handing its version over", r.name_any()));
            }
            _ => {}
        }
    }
    let s = md.status.as_ref()?;
    let from_policy = |l: &Option<Lineage>| l.as_ref().and_then(|l| l.feedback_policy.as_deref()) == Some(policy);
    if let Some(c) = &s.candidate
        && from_policy(&c.lineage)
    {
        return Some(format!("{} waits to start its canary", c.version));
    }
    if let Some(c) = &s.canary
        && from_policy(&c.lineage)
    {
        return Some(format!("the canary of {} is under way", c.version));
    }
    None
}

fn stats_changed(a: Option<&SignalStats>, b: Option<&SignalStats>) -> bool {
    let strip = |s: Option<&SignalStats>| s.map(|s| SignalStats { observed_at: None, ..s.clone() });
    strip(a) != strip(b)
}

/// The RetrainJob a firing creates (pure).
pub fn build_retrain_job(
    policy: &FeedbackPolicy,
    seq: i64,
    firing: &Firing,
    snapshot: &Snapshot,
    base: BaseModel,
) -> Result<RetrainJob, PolicyError> {
    let name = retrain_job_name(&policy.name_any(), seq);
    let uid = policy.uid().ok_or(PolicyError::Malformed("a uid"))?;
    let labels = BTreeMap::from([
        ("app.kubernetes.io/managed-by".to_string(), "flywheel".to_string()),
        ("app.kubernetes.io/part-of".to_string(), "flywheel".to_string()),
        (LABEL_POLICY.to_string(), policy.name_any()),
        (LABEL_TRIGGER_SEQ.to_string(), seq.to_string()),
        ("flywheel.dev/model-deployment".to_string(), policy.spec.target_ref.name.clone()),
    ]);
    let owner = OwnerReference {
        api_version: FeedbackPolicy::api_version(&()).into_owned(),
        kind: FeedbackPolicy::kind(&()).into_owned(),
        name: policy.name_any(),
        uid,
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let spec = RetrainJobSpec {
        target_ref: policy.spec.target_ref.clone(),
        base,
        dataset: DatasetRef {
            uri: snapshot.uri.clone(),
            snapshot_id: Some(snapshot.id.clone()),
            sha256: snapshot.sha256.clone(),
            formats: policy.spec.dataset.formats.clone(),
            counts: snapshot.counts,
        },
        trainer: policy.spec.trainer.clone(),
        evaluation: policy.spec.evaluation.clone(),
        output_uri: format!("{}{name}", policy.spec.output_uri_prefix),
        version: None,
        promotion: policy.spec.promotion,
        origin: Some(Origin { feedback_policy: policy.name_any(), trigger_id: trigger_id(seq), reason: firing.reason }),
    };
    Ok(RetrainJob {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: policy.namespace(),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(
                "flywheel.dev/trigger-message".to_string(),
                firing.message.chars().take(1024).collect(),
            )])),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec,
        status: None,
    })
}

/// Stalled, with a Warning Event when it newly stalls.
pub fn stalled(policy: &FeedbackPolicy, reason: &str, message: &str, now: Timestamp) -> PolicyDecision {
    let mut status = policy.status.clone().unwrap_or_default();
    status.observed_generation = policy.metadata.generation;
    let health = Health::Stalled { reason: reason.into(), message: message.into() };
    let changed = conditions::set_health(&mut status.conditions, &health, policy.metadata.generation, &Time(now));
    let events = if changed { vec![Note::warning(reason, message)] } else { Vec::new() };
    Decision { children: Children::default(), status, events, requeue: Some(Duration::from_secs(30)) }
}

fn wait_until(at: Timestamp, now: Timestamp, cap: Duration) -> Duration {
    let wait = at.duration_since(now).as_secs().max(1);
    cap.min(Duration::from_secs(u64::try_from(wait).unwrap_or(60)))
}

/// Decide (pure).
pub fn decide(policy: &FeedbackPolicy, r: &Readings, now: Timestamp) -> PolicyDecision {
    let now_time = Time(now);
    let current = policy.status.clone().unwrap_or_default();
    let generation = policy.metadata.generation;
    let name = policy.name_any();
    let mut next = current.clone();
    let mut events = Vec::new();

    // Adopt a RetrainJob this policy created but did not record (a crash between the two).
    if let Some(latest) = unrecorded(&current, &r.rtjs) {
        let time = time_of(latest).unwrap_or(now);
        let origin = latest.spec.origin.clone();
        next.last_trigger = Some(TriggerRecord {
            id: trigger_id(seq_of(latest).unwrap_or(0)),
            reason: origin.as_ref().map_or(TriggerReason::Manual, |o| o.reason),
            message: latest.annotations().get("flywheel.dev/trigger-message").cloned().unwrap_or_default(),
            time: Time(time),
            retrain_job: Some(latest.name_any()),
        });
        next.last_retrain_job = Some(latest.name_any());
        if !next.recent_retrains.iter().any(|t| t.0 == time) {
            next.recent_retrains.push(Time(time));
        }
    }

    // Statistics: the stable version over the window, every version since the last retrain.
    let stable = r.md.status.as_ref().and_then(|s| s.stable.clone()).map_or_else(
        || BaseModel { version: r.md.spec.model.version.clone(), uri: r.md.spec.model.uri.clone() },
        |s| BaseModel { version: s.version, uri: s.uri },
    );
    let mut stats = r.window.version(&stable.version);
    stats.observed_at = Some(now_time.clone());
    if !stats_changed(current.stats.as_ref(), Some(&stats)) {
        stats.observed_at = current.stats.as_ref().and_then(|s| s.observed_at.clone());
    }
    next.stats = Some(stats.clone());
    next.signals_since_last_retrain = r.since_last.total();
    let day_ago = now.saturating_sub(SignedDuration::from_hours(24)).unwrap_or(now);
    next.recent_retrains.retain(|t| t.0 > day_ago);
    next.recent_retrains.sort_by_key(|t| t.0);

    // Whether a trigger fires.
    let retrains: Vec<Timestamp> = next.recent_retrains.iter().map(|t| t.0).collect();
    let inputs = Inputs {
        spec: &policy.spec,
        stats: &stats,
        signals_since_last: next.signals_since_last_retrain,
        retrains: &retrains,
        schedule_since: r.since,
        in_flight: in_flight(&r.rtjs, &r.md, &name),
        now,
    };
    let decision = match trigger::decide(&inputs) {
        Ok(d) => d,
        Err(e) => return stalled(policy, "InvalidSchedule", &e.to_string(), now),
    };
    next.next_eligible_time = trigger::eligible_at(&policy.spec, &retrains, now).map(Time);

    // The numbers live in status.stats: a message that carried them would change with every
    // signal and defeat the statistics' write interval.
    let mut health =
        Health::Ready { reason: "Watching".into(), message: format!("watching {}; no trigger holds", stats.version) };
    let mut suggested: Option<Firing> = None;
    let mut requeue = Duration::from_secs(60);
    let mut fire = None;
    let mut newly_suggested = None;
    match decision {
        trigger::Decision::Quiet { next_check } => {
            if let Some(at) = next_check {
                requeue = wait_until(at, now, requeue);
            }
        }
        trigger::Decision::Held { firing, why, until } => {
            health = Health::Ready {
                reason: "TriggerHeld".into(),
                message: format!("{:?} trigger holds ({}) but waits: {why}", firing.reason, firing.message),
            };
            if let Some(at) = until {
                requeue = wait_until(at, now, requeue);
            }
            if policy.spec.mode == PolicyMode::Suggest {
                suggested = Some(firing);
            }
        }
        trigger::Decision::Fire(firing) if policy.spec.mode == PolicyMode::Suggest => {
            health = Health::Ready { reason: "TriggerSuggested".into(), message: firing.message.clone() };
            suggested = Some(firing);
        }
        trigger::Decision::Fire(firing) => {
            let seq = recorded_seq(&current).max(r.rtjs.last().and_then(seq_of).unwrap_or(0)) + 1;
            fire = Some(Fire { seq, firing, from: r.window_from, base: stable });
        }
    }
    if policy.spec.mode == PolicyMode::Suggest {
        let desired = match &suggested {
            Some(f) => {
                Desired::new(CONDITION_SUGGESTED, ConditionStatus::True, format!("{:?}", f.reason), f.message.clone())
            }
            None => Desired::new(CONDITION_SUGGESTED, ConditionStatus::False, "NoTrigger", "no trigger holds"),
        };
        let was = conditions::is_true(&current.conditions, CONDITION_SUGGESTED);
        conditions::set(&mut next.conditions, &desired, generation, &now_time);
        if let Some(f) = &suggested
            && !was
        {
            newly_suggested = Some(f.reason);
            events.push(Note::normal(
                "TriggerSuggested",
                format!(
                    "{:?} trigger would retrain {} (mode suggest creates nothing): {}",
                    f.reason, policy.spec.target_ref.name, f.message
                ),
            ));
        }
    } else {
        next.conditions.retain(|c| c.type_ != CONDITION_SUGGESTED);
    }
    conditions::set_health(&mut next.conditions, &health, generation, &now_time);
    next.observed_generation = generation;
    Decision { children: Children { fire, suggested: newly_suggested }, status: next, events, requeue: Some(requeue) }
}

/// A firing carried out (pure): the trigger recorded with its RetrainJob, the cooldown and the
/// daily budget counted from now.
pub fn fired(
    policy: &FeedbackPolicy,
    mut d: PolicyDecision,
    fire: &Fire,
    rtj: &str,
    snapshot: &Snapshot,
    now: Timestamp,
) -> PolicyDecision {
    let now_time = Time(now);
    let next = &mut d.status;
    next.last_trigger = Some(TriggerRecord {
        id: trigger_id(fire.seq),
        reason: fire.firing.reason,
        message: fire.firing.message.clone(),
        time: now_time.clone(),
        retrain_job: Some(rtj.to_string()),
    });
    next.last_retrain_job = Some(rtj.to_string());
    next.recent_retrains.push(now_time.clone());
    let retrains: Vec<Timestamp> = next.recent_retrains.iter().map(|t| t.0).collect();
    next.next_eligible_time = trigger::eligible_at(&policy.spec, &retrains, now).map(Time);
    next.signals_since_last_retrain = 0;
    let message = format!(
        "{:?} trigger: {}; created RetrainJob {rtj} on snapshot {} ({} SFT, {} DPO rows)",
        fire.firing.reason, fire.firing.message, snapshot.id, snapshot.counts.sft, snapshot.counts.dpo
    );
    let health = Health::Ready { reason: "Triggered".into(), message: message.clone() };
    conditions::set_health(&mut next.conditions, &health, policy.metadata.generation, &now_time);
    d.events.push(Note::normal("Triggered", message));
    d.requeue = Some(Duration::from_secs(5));
    d
}

/// A firing postponed (pure): the window has too few training rows for the recipe; a Warning
/// Event when it newly says so.
pub fn postponed(
    policy: &FeedbackPolicy,
    mut d: PolicyDecision,
    fire: &Fire,
    rows: i64,
    needed: i64,
    now: Timestamp,
) -> PolicyDecision {
    let message = format!(
        "{:?} trigger holds ({}) but the window gives {rows} training rows of the {needed} the recipe needs; postponed",
        fire.firing.reason, fire.firing.message
    );
    let current = policy.status.clone().unwrap_or_default();
    if conditions::get(&current.conditions, CONDITION_READY).is_none_or(|c| c.reason != "NotEnoughRows") {
        d.events.push(Note::warning("NotEnoughRows", message.clone()));
    }
    let health = Health::Ready { reason: "NotEnoughRows".into(), message };
    conditions::set_health(&mut d.status.conditions, &health, policy.metadata.generation, &Time(now));
    d.requeue = Some(Duration::from_secs(30));
    d
}

/// Whether to write the decided status now (pure). A busy deployment's statistics change with
/// every commit: when nothing but the statistics changed, they are written at most once per
/// `interval` (decisions always use the fresh ones), and the next look is when one is due.
pub fn write_now(current: &FeedbackPolicyStatus, d: &mut PolicyDecision, interval: Duration, now: Timestamp) -> bool {
    let only_stats = FeedbackPolicyStatus {
        stats: current.stats.clone(),
        signals_since_last_retrain: current.signals_since_last_retrain,
        ..d.status.clone()
    } == *current;
    let last_write = current.stats.as_ref().and_then(|s| s.observed_at.as_ref()).map(|t| t.0);
    let due = last_write
        .map_or(now, |t| t.saturating_add(SignedDuration::try_from(interval).unwrap_or_default()).unwrap_or(t));
    if only_stats && due > now {
        // The whole span in milliseconds (a Span's `get_milliseconds` is only its millisecond
        // field: a 7 s wait read as 0 ms and requeued at once, again and again).
        let wait = due.duration_since(now).as_millis().max(1);
        let wait = Duration::from_millis(u64::try_from(wait).unwrap_or(1000));
        d.requeue = Some(d.requeue.map_or(wait, |r| r.min(wait)));
        return false;
    }
    true
}

#[cfg(test)]
mod tests;
