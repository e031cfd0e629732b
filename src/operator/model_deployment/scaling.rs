//! The autoscaler inside the ModelDeployment controller: samples the load of each track's ready
//! pods, feeds the pure algorithm (`crate::autoscale`), and records each decision.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

use super::children::{self, AGENT_ADMIN_PORT, Owner};
use super::{ReconcileError, kube_err};
use crate::api::model_deployment::{ModelDeployment, ScalingDecision, ScalingMetric, Track};
use crate::autoscale::scrape::{AGENT_IN_FLIGHT, PodTarget};
use crate::autoscale::{Decision, Policy, Sample};
use crate::operator::Context;

/// The autoscaler's word on one track.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackDecision {
    /// The track.
    pub track: Track,
    /// Replicas before.
    pub current: i32,
    /// The decision.
    pub decision: Decision,
}

fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Decides the replicas of one track from its pods' load.
pub async fn decide_track(
    ctx: &Context,
    md: &ModelDeployment,
    owner: &Owner,
    track: Track,
    live: Option<&Deployment>,
    fallback: i32,
    now_ms: i64,
) -> Result<Option<TrackDecision>, ReconcileError> {
    // A fixed `spec.replicas` (`kubectl scale`, an HPA) turns the autoscaler off.
    let Some(spec) = md.spec.scaling.as_ref().filter(|_| md.spec.replicas.is_none()) else { return Ok(None) };
    let policy = Policy::from_spec(spec);
    let current = live.and_then(|d| d.spec.as_ref()).and_then(|s| s.replicas).unwrap_or(fallback);
    let selector =
        children::track_selector(owner, track).iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &owner.namespace);
    let listed = pods.list(&ListParams::default().labels(&selector)).await.map_err(kube_err("listing pods"))?;
    let ready: Vec<&Pod> = listed.items.iter().filter(|p| is_ready(p)).collect();
    let (port, metrics) = match spec.metric {
        ScalingMetric::InFlight => (AGENT_ADMIN_PORT, vec![AGENT_IN_FLIGHT.to_string()]),
        ScalingMetric::RuntimeMetric => (md.spec.runtime.port, spec.runtime_metrics.clone()),
    };
    let targets: Vec<PodTarget> = ready
        .iter()
        .map(|p| PodTarget {
            name: p.metadata.name.clone().unwrap_or_default(),
            ip: p.status.as_ref().and_then(|s| s.pod_ip.clone()),
            port: u16::try_from(port).unwrap_or(0),
        })
        .collect();
    let key = format!("{}/{}/{}", owner.namespace, owner.name, track.as_str());
    let sample = if targets.is_empty() { None } else { ctx.load_source.load(&targets, &metrics).await };
    let ready_count = i32::try_from(ready.len()).unwrap_or(i32::MAX);
    let Ok(mut scalers) = ctx.scalers.lock() else {
        return Err(ReconcileError::Malformed("the autoscaler's state (a poisoned lock)"));
    };
    let state = scalers.entry(key).or_default();
    if let Some((load, pods)) = sample {
        state.observe(Sample { at_ms: now_ms, load, pods }, &policy);
    }
    let decision = state.decide(&policy, current, ready_count, now_ms);
    Ok(Some(TrackDecision { track, current, decision }))
}

/// Canary replicas that keep the replica ratio at `weight` percent next to `stable` replicas.
pub fn ratio_canary(stable: i32, weight: i32) -> i32 {
    if weight >= 100 {
        return stable.max(1);
    }
    let w = f64::from(weight.clamp(0, 99));
    ((f64::from(stable) * w / (100.0 - w)).round() as i32).max(1)
}

/// The status entries: a track's entry changes only with its desired replicas, so a steady
/// state writes nothing.
pub fn record(
    previous: &[ScalingDecision],
    decisions: &[TrackDecision],
    now: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
) -> Vec<ScalingDecision> {
    decisions
        .iter()
        .map(|d| match previous.iter().find(|p| p.track == d.track) {
            Some(p) if p.desired_replicas == d.decision.desired => p.clone(),
            _ => ScalingDecision {
                track: d.track,
                desired_replicas: d.decision.desired,
                reason: d.decision.reason.chars().take(1024).collect(),
                time: Some(now.clone()),
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canary_replicas_hold_the_weight() {
        assert_eq!(ratio_canary(9, 10), 1);
        assert_eq!(ratio_canary(3, 50), 3);
        assert_eq!(ratio_canary(1, 5), 1, "at least one");
        assert_eq!(ratio_canary(4, 100), 4);
    }
}
