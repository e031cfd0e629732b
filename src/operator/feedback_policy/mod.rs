//! The FeedbackPolicy controller: read the target's feedback statistics from the collector
//! (woken by its change feed) → decide whether a trigger fires (pure, `trigger`) → ask the
//! collector for a dataset snapshot → create the RetrainJob → write status.
//!
//! One RetrainJob per trigger: the trigger's sequence number names the RetrainJob
//! (`<policy>-<n>`), so a create that races a crash finds the object it made, and a RetrainJob
//! that exists but is missing from status is adopted before anything new fires.

pub mod feed;
pub mod trigger;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use self::trigger::{Decision, Firing, Inputs};
use super::Context;
use crate::api::ConditionStatus;
use crate::api::common::{Lineage, Promotion, TriggerReason};
use crate::api::conditions::{self, Desired, Health};
use crate::api::feedback_policy::{FeedbackPolicy, FeedbackPolicyStatus, PolicyMode, SignalStats, TriggerRecord};
use crate::api::model_deployment::ModelDeployment;
use crate::api::retrain_job::{BaseModel, DatasetRef, Origin, RetrainJob, RetrainJobSpec, RetrainPhase};
use crate::collector::client::{self as collector_client, CollectorError, Snapshot, StatsQuery};

/// The controller's name in metrics and logs.
pub const CONTROLLER: &str = "feedbackpolicy";
/// Label on a RetrainJob naming the FeedbackPolicy that created it.
pub const LABEL_POLICY: &str = "flywheel.dev/feedback-policy";
/// Label on a RetrainJob carrying its trigger's sequence number.
pub const LABEL_TRIGGER_SEQ: &str = "flywheel.dev/trigger-seq";
/// Condition set in `suggest` mode while a trigger holds.
pub const CONDITION_SUGGESTED: &str = "TriggerSuggested";

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The API server refused or failed a request.
    #[error("{action}: {source}")]
    Kube {
        /// What was being done.
        action: String,
        /// The error.
        source: kube::Error,
    },
    /// The collector failed.
    #[error(transparent)]
    Collector(#[from] CollectorError),
    /// The object lacks what an object read from the API server has.
    #[error("the FeedbackPolicy lacks {0}")]
    Malformed(&'static str),
}

impl PolicyError {
    /// Short static category: the metric label and the Warning Event reason.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Kube { source: kube::Error::Api(s), .. } if s.code == 409 => "Conflict",
            Self::Kube { .. } => "KubeApiError",
            Self::Collector(e) => e.category(),
            Self::Malformed(_) => "MalformedObject",
        }
    }
}

fn kube_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> PolicyError {
    let action = action.into();
    move |source| PolicyError::Kube { action, source }
}

/// The name of the RetrainJob of a policy's `seq`-th trigger: short enough that its Jobs'
/// names (`<retrainjob>-<attempt>`) stay within the 63 characters of a label value.
pub fn retrain_job_name(policy: &str, seq: i64) -> String {
    let suffix = format!("-{seq}");
    let room = 59usize.saturating_sub(suffix.len());
    let mut head: String = policy.chars().take(room).collect();
    while head.ends_with(['-', '.']) {
        head.pop();
    }
    format!("{head}{suffix}")
}

/// The identifier of a policy's `seq`-th trigger.
pub fn trigger_id(seq: i64) -> String {
    format!("trigger-{seq}")
}

fn seq_of(rtj: &RetrainJob) -> Option<i64> {
    rtj.labels().get(LABEL_TRIGGER_SEQ).and_then(|s| s.parse().ok())
}

fn seq_of_trigger(id: &str) -> Option<i64> {
    id.strip_prefix("trigger-").and_then(|s| s.parse().ok())
}

fn time_of(rtj: &RetrainJob) -> Option<Timestamp> {
    rtj.metadata.creation_timestamp.as_ref().map(|t| t.0)
}

/// Why one of the policy's retrains is still under way (nothing fires meanwhile): a
/// RetrainJob not finished, a result not yet handed over, or its version still under canary.
fn in_flight(rtjs: &[RetrainJob], md: &ModelDeployment, policy: &str) -> Option<String> {
    for r in rtjs {
        let status = r.status.clone().unwrap_or_default();
        match status.phase {
            RetrainPhase::Pending | RetrainPhase::Running => {
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

fn rfc3339(t: Timestamp) -> String {
    t.to_string()
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

/// Reconcile one FeedbackPolicy.
pub async fn reconcile(policy: Arc<FeedbackPolicy>, ctx: Arc<Context>) -> Result<Action, PolicyError> {
    let timer = ctx.metrics.reconcile(CONTROLLER);
    let result = reconcile_inner(&policy, &ctx).await;
    timer.finish(result.as_ref().err().map(PolicyError::category));
    if let Err(e) = &result {
        tracing::warn!(name = %policy.name_any(), namespace = ?policy.namespace(), category = e.category(), error = %e, "reconcile failed");
        ctx.publish(policy.as_ref(), EventType::Warning, e.category(), &e.to_string()).await;
        // The failure shows in status too (not Ready, reconciling, with the reason) until a
        // reconcile succeeds; a failure to write it is already covered by the Event and log.
        let current = policy.status.clone().unwrap_or_default();
        let mut next = current.clone();
        let health = Health::Progressing { reason: e.category().into(), message: e.to_string() };
        conditions::set_health(&mut next.conditions, &health, policy.metadata.generation, &Time(Timestamp::now()));
        if let Err(w) = write_status(&policy, &ctx, &current, &next).await {
            tracing::debug!(error = %w, "could not record the failure in status");
        }
    }
    result
}

struct Observed {
    rtjs: Vec<RetrainJob>,
    md: ModelDeployment,
}

#[tracing::instrument(skip_all, fields(name = %policy.name_any(), namespace = ?policy.namespace()))]
async fn reconcile_inner(policy: &FeedbackPolicy, ctx: &Context) -> Result<Action, PolicyError> {
    if policy.metadata.deletion_timestamp.is_some() {
        ctx.feeds.stop(&super::key(policy));
        return Ok(Action::await_change());
    }
    let ns = policy.namespace().ok_or(PolicyError::Malformed("a namespace"))?;
    let name = policy.name_any();
    let now = Timestamp::now();
    let now_time = Time(now);
    let current = policy.status.clone().unwrap_or_default();
    let generation = policy.metadata.generation;

    let Some(collector) = ctx.collector.clone() else {
        return stalled(
            policy,
            ctx,
            &current,
            "CollectorNotConfigured",
            "the operator runs without --collector-url: no feedback to read",
        )
        .await;
    };
    let mds: Api<ModelDeployment> = Api::namespaced(ctx.client.clone(), &ns);
    let target = &policy.spec.target_ref.name;
    let Some(md) = mds.get_opt(target).await.map_err(kube_err(format!("reading ModelDeployment {target}")))? else {
        return stalled(
            policy,
            ctx,
            &current,
            "MissingTarget",
            &format!("ModelDeployment {ns}/{target} named by spec.targetRef does not exist"),
        )
        .await;
    };
    ctx.feeds.ensure(policy, &collector);

    // Observe: this policy's RetrainJobs and the target.
    let rtj_api: Api<RetrainJob> = Api::namespaced(ctx.client.clone(), &ns);
    let mut rtjs = rtj_api
        .list(&ListParams::default().labels(&format!("{LABEL_POLICY}={name}")))
        .await
        .map_err(kube_err("listing RetrainJobs"))?
        .items;
    rtjs.retain(|r| r.owner_references().iter().any(|o| Some(&o.uid) == policy.metadata.uid.as_ref()));
    rtjs.sort_by_key(|r| seq_of(r).unwrap_or(0));
    let observed = Observed { rtjs, md };
    let mut next = current.clone();
    let mut events: Vec<(EventType, &'static str, String)> = Vec::new();

    // Adopt a RetrainJob this policy created but did not record (a crash between the two).
    let recorded_seq = current.last_trigger.as_ref().and_then(|t| seq_of_trigger(&t.id)).unwrap_or(0);
    if let Some(latest) = observed.rtjs.last()
        && seq_of(latest).unwrap_or(0) > recorded_seq
    {
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
        tracing::info!(retrain_job = %latest.name_any(), "adopted a RetrainJob missing from status");
    }

    // Statistics: the stable version over the window, every version since the last retrain.
    let stable = observed.md.status.as_ref().and_then(|s| s.stable.clone()).map_or_else(
        || BaseModel { version: observed.md.spec.model.version.clone(), uri: observed.md.spec.model.uri.clone() },
        |s| BaseModel { version: s.version, uri: s.uri },
    );
    let window_from = now.saturating_sub(SignedDuration::from_secs(policy.spec.window_seconds)).unwrap_or(now);
    let created = policy.metadata.creation_timestamp.as_ref().map_or(now, |t| t.0);
    // The last retrain: the last trigger that created a RetrainJob (kept for good; the list of
    // recent retrains only covers 24 hours).
    let last_retrain = next
        .last_trigger
        .as_ref()
        .filter(|t| t.retrain_job.is_some())
        .map(|t| t.time.0)
        .into_iter()
        .chain(next.recent_retrains.iter().map(|t| t.0))
        .max();
    let since = last_retrain.unwrap_or(created);
    let query = |from: Timestamp| StatsQuery {
        namespace: &ns,
        deployment: target,
        from: rfc3339(from),
        mapping: &policy.spec.signals,
    };
    let window = collector.stats(&query(window_from)).await?;
    let since_last = collector.stats(&query(since)).await?;
    let mut stats = window.version(&stable.version);
    stats.observed_at = Some(now_time.clone());
    if !stats_changed(current.stats.as_ref(), Some(&stats)) {
        stats.observed_at = current.stats.as_ref().and_then(|s| s.observed_at.clone());
    }
    next.stats = Some(stats.clone());
    next.signals_since_last_retrain = since_last.total();
    let day_ago = now.saturating_sub(SignedDuration::from_hours(24)).unwrap_or(now);
    next.recent_retrains.retain(|t| t.0 > day_ago);
    next.recent_retrains.sort_by_key(|t| t.0);

    // Decide (pure).
    let retrains: Vec<Timestamp> = next.recent_retrains.iter().map(|t| t.0).collect();
    let inputs = Inputs {
        spec: &policy.spec,
        stats: &stats,
        signals_since_last: next.signals_since_last_retrain,
        retrains: &retrains,
        schedule_since: since,
        in_flight: in_flight(&observed.rtjs, &observed.md, &name),
        now,
    };
    let decision = match trigger::decide(&inputs) {
        Ok(d) => d,
        Err(e) => return stalled(policy, ctx, &current, "InvalidSchedule", &e.to_string()).await,
    };
    next.next_eligible_time = trigger::eligible_at(&policy.spec, &retrains, now).map(Time);

    // Carry it out.
    let mut health = Health::Ready {
        reason: "Watching".into(),
        message: format!("{} signals on {} in the window; no trigger holds", stats.total, stats.version),
    };
    let mut suggested: Option<Firing> = None;
    let mut requeue = Duration::from_secs(60);
    match &decision {
        Decision::Quiet { next_check } => {
            if let Some(at) = next_check {
                let wait = (*at - now).get_seconds().max(1);
                requeue = requeue.min(Duration::from_secs(u64::try_from(wait).unwrap_or(60)));
            }
        }
        Decision::Held { firing, why, until } => {
            health = Health::Ready {
                reason: "TriggerHeld".into(),
                message: format!("{:?} trigger holds ({}) but waits: {why}", firing.reason, firing.message),
            };
            if let Some(at) = until {
                let wait = (*at - now).get_seconds().max(1);
                requeue = requeue.min(Duration::from_secs(u64::try_from(wait).unwrap_or(60)));
            }
            if policy.spec.mode == PolicyMode::Suggest {
                suggested = Some(firing.clone());
            }
        }
        Decision::Fire(firing) if policy.spec.mode == PolicyMode::Suggest => {
            suggested = Some(firing.clone());
            health = Health::Ready { reason: "TriggerSuggested".into(), message: firing.message.clone() };
        }
        Decision::Fire(firing) => {
            let seq = recorded_seq.max(observed.rtjs.last().and_then(seq_of).unwrap_or(0)) + 1;
            let from = rfc3339(window_from);
            let recipe = collector_client::recipe(&policy.spec.dataset, &policy.spec.signals);
            match collector.snapshot(&ns, target, &from, recipe).await {
                Ok(snapshot) => {
                    let rtj = build_retrain_job(policy, seq, firing, &snapshot, stable.clone())?;
                    let rtj_name = rtj.name_any();
                    let created = match rtj_api.create(&PostParams::default(), &rtj).await {
                        Ok(_) => true,
                        // Made before a crash: the same trigger, the same object. Another 409
                        // (a storage conflict) created nothing: it is retried.
                        Err(kube::Error::Api(s)) if s.code == 409 && s.reason == "AlreadyExists" => false,
                        Err(e) => return Err(kube_err(format!("creating RetrainJob {rtj_name}"))(e)),
                    };
                    next.last_trigger = Some(TriggerRecord {
                        id: trigger_id(seq),
                        reason: firing.reason,
                        message: firing.message.clone(),
                        time: now_time.clone(),
                        retrain_job: Some(rtj_name.clone()),
                    });
                    next.last_retrain_job = Some(rtj_name.clone());
                    next.recent_retrains.push(now_time.clone());
                    let retrains: Vec<Timestamp> = next.recent_retrains.iter().map(|t| t.0).collect();
                    next.next_eligible_time = trigger::eligible_at(&policy.spec, &retrains, now).map(Time);
                    next.signals_since_last_retrain = 0;
                    let message = format!(
                        "{:?} trigger: {}; created RetrainJob {rtj_name} on snapshot {} ({} SFT, {} DPO rows)",
                        firing.reason, firing.message, snapshot.id, snapshot.counts.sft, snapshot.counts.dpo
                    );
                    tracing::info!(reason = ?firing.reason, retrain_job = %rtj_name, dataset = %snapshot.id, sha256 = %snapshot.sha256, created, "trigger fired");
                    ctx.metrics.count_trigger(&format!("{:?}", firing.reason), "retrain");
                    events.push((EventType::Normal, "Triggered", message.clone()));
                    health = Health::Ready { reason: "Triggered".into(), message };
                    requeue = Duration::from_secs(5);
                }
                Err(CollectorError::NotEnoughRows { rows, needed }) => {
                    let message = format!(
                        "{:?} trigger holds ({}) but the window gives {rows} training rows of the {needed} the recipe needs; postponed",
                        firing.reason, firing.message
                    );
                    ctx.metrics.count_trigger(&format!("{:?}", firing.reason), "postponed");
                    if conditions::get(&current.conditions, crate::api::common::CONDITION_READY)
                        .is_none_or(|c| c.reason != "NotEnoughRows")
                    {
                        events.push((EventType::Warning, "NotEnoughRows", message.clone()));
                    }
                    health = Health::Ready { reason: "NotEnoughRows".into(), message };
                    requeue = Duration::from_secs(30);
                }
                Err(e) => return Err(e.into()),
            }
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
            ctx.metrics.count_trigger(&format!("{:?}", f.reason), "suggested");
            events.push((
                EventType::Normal,
                "TriggerSuggested",
                format!("{:?} trigger would retrain {target} (mode suggest creates nothing): {}", f.reason, f.message),
            ));
        }
    } else {
        next.conditions.retain(|c| c.type_ != CONDITION_SUGGESTED);
    }
    conditions::set_health(&mut next.conditions, &health, generation, &now_time);
    next.observed_generation = generation;
    // A busy deployment's statistics change with every commit: when nothing but the statistics
    // changed, they are written at most once per interval (decisions use the fresh ones).
    let only_stats = FeedbackPolicyStatus {
        stats: current.stats.clone(),
        signals_since_last_retrain: current.signals_since_last_retrain,
        ..next.clone()
    } == current;
    let last_write = current.stats.as_ref().and_then(|s| s.observed_at.as_ref()).map(|t| t.0);
    let due = last_write.map_or(now, |t| {
        t.saturating_add(SignedDuration::try_from(ctx.stats_write_interval).unwrap_or_default()).unwrap_or(t)
    });
    if only_stats && due > now {
        let wait = (due - now).get_milliseconds().max(1);
        requeue = requeue.min(Duration::from_millis(u64::try_from(wait).unwrap_or(1000)));
    } else {
        write_status(policy, ctx, &current, &next).await?;
    }
    for (type_, reason, note) in events {
        ctx.publish(policy, type_, reason, &note).await;
    }
    Ok(ctx.requeue_for(CONTROLLER, policy, Some(requeue)))
}

async fn write_status(
    policy: &FeedbackPolicy,
    ctx: &Context,
    current: &FeedbackPolicyStatus,
    next: &FeedbackPolicyStatus,
) -> Result<(), PolicyError> {
    super::patch_status(&ctx.client, policy, current, next, false).await.map_err(kube_err("writing status"))?;
    Ok(())
}

async fn stalled(
    policy: &FeedbackPolicy,
    ctx: &Context,
    current: &FeedbackPolicyStatus,
    reason: &str,
    message: &str,
) -> Result<Action, PolicyError> {
    let now = Time(Timestamp::now());
    let mut next = current.clone();
    next.observed_generation = policy.metadata.generation;
    let health = Health::Stalled { reason: reason.into(), message: message.into() };
    let changed = conditions::set_health(&mut next.conditions, &health, policy.metadata.generation, &now);
    write_status(policy, ctx, current, &next).await?;
    if changed {
        ctx.publish(policy, EventType::Warning, reason, message).await;
    }
    tracing::warn!(reason, message, "stalled");
    Ok(ctx.requeue_for(CONTROLLER, policy, Some(Duration::from_secs(30))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_label_limit_of_their_jobs() {
        assert_eq!(retrain_job_name("support-chat", 3), "support-chat-3");
        let long = "a".repeat(80);
        let name = retrain_job_name(&long, 12);
        assert_eq!(name.len(), 59);
        assert!(name.ends_with("-12"));
        // The Job of the 16th attempt still fits in 63 characters.
        assert!(format!("{name}-16").len() <= 63);
        assert_eq!(retrain_job_name(&format!("{}-b", "a".repeat(56)), 7), format!("{}-7", "a".repeat(56)));
        assert_eq!(seq_of_trigger(&trigger_id(41)), Some(41));
    }
}
