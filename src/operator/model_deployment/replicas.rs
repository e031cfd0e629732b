//! Replicas (pure): the total a ModelDeployment wants, the autoscaler's decision per track from
//! what was observed, the split between the tracks, and whether a track is ready. Shared by
//! `observe` (which reads the analysis only for a ready canary) and `decide`.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::jiff::Timestamp;

use super::children;
use super::observed::Observed;
use super::validate::ValidModelDeployment;
use crate::api::model_deployment::{ModelDeployment, Track};
use crate::autoscale::{Policy, TrackState};
use crate::rollout;

/// Total replicas wanted over both tracks, before the autoscaler.
pub fn total_replicas(md: &ModelDeployment) -> i32 {
    md.spec.replicas.unwrap_or_else(|| md.spec.scaling.as_ref().map_or(1, |s| s.min_replicas.max(1)))
}

pub fn version_of(d: Option<&Deployment>) -> Option<&String> {
    d.and_then(|d| d.spec.as_ref())
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.as_ref())
        .and_then(|l| l.get(children::LABEL_VERSION))
}

pub fn ready_replicas(d: Option<&Deployment>) -> i32 {
    d.and_then(|d| d.status.as_ref()).and_then(|s| s.ready_replicas).unwrap_or(0)
}

pub fn track_ready(d: Option<&Deployment>, wanted: i32) -> bool {
    let Some(d) = d else { return false };
    let generation = d.metadata.generation.unwrap_or(0);
    let status = d.status.clone().unwrap_or_default();
    status.observed_generation.unwrap_or(0) >= generation
        && status.updated_replicas.unwrap_or(0) >= wanted
        && status.ready_replicas.unwrap_or(0) >= wanted
}

/// One track's autoscaler decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Scaled {
    /// Replicas before.
    pub current: i32,
    /// The decision.
    pub decision: crate::autoscale::Decision,
    /// The autoscaler's memory after it.
    pub state: TrackState,
}

/// The autoscaler's decision for each track it saw (pure).
pub fn scale(md: &ModelDeployment, observed: &Observed, now: Timestamp) -> BTreeMap<Track, Scaled> {
    let Some(spec) = md.spec.scaling.as_ref() else { return BTreeMap::new() };
    let policy = Policy::from_spec(spec);
    observed
        .load
        .iter()
        .map(|(track, load)| {
            let mut state = load.state.clone();
            if let Some(sample) = load.sample {
                state.observe(sample, &policy);
            }
            let decision = state.decide(&policy, load.current, load.ready, now.as_millisecond());
            (*track, Scaled { current: load.current, decision, state })
        })
        .collect()
}

/// Replicas of (stable, canary) for a canary at `weight` (none: `None`).
pub fn replicas_for(
    md: &ModelDeployment,
    valid: &ValidModelDeployment,
    scaled: &BTreeMap<Track, Scaled>,
    weight: Option<i32>,
) -> (i32, i32) {
    let gateway = valid.route.is_some();
    match (scaled.get(&Track::Stable), weight) {
        (None, w) => rollout::split_replicas(total_replicas(md), w),
        (Some(s), None) => (s.decision.desired, 0),
        (Some(s), Some(w)) => {
            let stable = s.decision.desired.max(1);
            let canary = match scaled.get(&Track::Canary) {
                Some(c) => c.decision.desired.max(1),
                None if gateway => 1,
                None => super::scaling::ratio_canary(stable, w),
            };
            (stable, canary)
        }
    }
}

/// Whether the canary in status runs its version on all its wanted, ready replicas.
pub fn canary_ready(md: &ModelDeployment, valid: &ValidModelDeployment, observed: &Observed, now: Timestamp) -> bool {
    let Some(canary) = md.status.as_ref().and_then(|s| s.canary.as_ref()) else { return false };
    if canary.adapter {
        // Inside the stable pods: every ready pod holds it at the step's weight.
        return super::adapters::canary_held(md.status.as_ref(), observed);
    }
    let scaled = scale(md, observed, now);
    let wanted = replicas_for(md, valid, &scaled, Some(canary.weight)).1;
    version_of(observed.canary.as_ref()) == Some(&canary.version) && track_ready(observed.canary.as_ref(), wanted)
}
