//! Apply: carry out a firing (the collector's snapshot, then the RetrainJob), write the status
//! when it is due, publish the Events.

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;

use super::context::{CONTROLLER, FeedbackPolicies, PolicyError, writing};
use super::decide::{self, PolicyDecision};
use super::observe::Readings;
use crate::api::feedback_policy::FeedbackPolicy;
use crate::api::retrain_job::RetrainJob;
use crate::collector::client::{self as collector_client, CollectorError};
use crate::operator::skeleton::patch_status;

/// Carry out the decision's firing, if any: returns the decision finished with its outcome.
pub async fn fire(
    ctx: &FeedbackPolicies,
    policy: &FeedbackPolicy,
    readings: &Readings,
    mut decision: PolicyDecision,
    now: Timestamp,
) -> Result<PolicyDecision, PolicyError> {
    let Some(fire) = decision.children.fire.take() else { return Ok(decision) };
    let ns = policy.namespace().unwrap_or_default();
    let reason = format!("{:?}", fire.firing.reason);
    let recipe = collector_client::recipe(&policy.spec.dataset, &policy.spec.signals);
    let target = &policy.spec.target_ref.name;
    match readings.collector.snapshot(&ns, target, &fire.from.to_string(), recipe).await {
        Ok(snapshot) => {
            let rtj = decide::build_retrain_job(policy, fire.seq, &fire.firing, &snapshot, fire.base.clone())?;
            let name = rtj.name_any();
            let api: Api<RetrainJob> = Api::namespaced(ctx.shared.client.clone(), &ns);
            let created = match api.create(&PostParams::default(), &rtj).await {
                Ok(_) => true,
                // Made before a crash: the same trigger, the same object. Another 409 (a
                // storage conflict) created nothing: it is retried.
                Err(kube::Error::Api(s)) if s.code == 409 && s.reason == "AlreadyExists" => false,
                Err(e) => return Err(writing(format!("creating RetrainJob {name}"))(e)),
            };
            tracing::info!(reason = %reason, retrain_job = %name, dataset = %snapshot.id, sha256 = %snapshot.sha256, created, "trigger fired");
            ctx.shared.metrics.count_trigger(&reason, "retrain");
            Ok(decide::fired(policy, decision, &fire, &name, &snapshot, now))
        }
        Err(CollectorError::NotEnoughRows { rows, needed }) => {
            ctx.shared.metrics.count_trigger(&reason, "postponed");
            Ok(decide::postponed(policy, decision, &fire, rows, needed, now))
        }
        Err(e) => Err(e.into()),
    }
}

/// Write what was decided and publish its Events.
pub async fn apply(
    ctx: &FeedbackPolicies,
    policy: &FeedbackPolicy,
    mut decision: PolicyDecision,
    now: Timestamp,
) -> Result<Action, PolicyError> {
    let current = policy.status.clone().unwrap_or_default();
    if decide::write_now(&current, &mut decision, ctx.stats_write_interval, now) {
        patch_status(&ctx.shared.client, policy, &current, &decision.status, false)
            .await
            .map_err(writing("writing status"))?;
    }
    if let Some(reason) = decision.children.suggested {
        ctx.shared.metrics.count_trigger(&format!("{reason:?}"), "suggested");
    }
    for note in &decision.events {
        ctx.shared.publish(policy, note).await;
    }
    Ok(ctx.shared.requeue(CONTROLLER, policy, decision.requeue))
}
