//! The autoscaler inside the ModelDeployment controller (pure parts): the canary's replicas in
//! ratio with stable, and each decision as status records it. The load is sampled by `observe`
//! and the algorithm (`crate::autoscale`) runs in `decide`.

use crate::api::model_deployment::{ScalingDecision, Track};
use crate::autoscale::Decision;

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
