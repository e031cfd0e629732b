//! What one ModelDeployment reconcile read: the types `observe` fills and `decide` reads.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use serde_json::Value;

use crate::api::model_deployment::{Evidence, Track};
use crate::autoscale::{Sample, TrackState};
use crate::rollout::Unservable;

/// A reference the spec names that does not exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// CamelCase reason (`Stalled`'s).
    pub reason: &'static str,
    /// In words.
    pub message: String,
}

/// What the autoscaler saw of one track.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackLoad {
    /// Replicas the track's Deployment has now.
    pub current: i32,
    /// Its ready pods.
    pub ready: i32,
    /// The pods' summed load and how many answered, when any did.
    pub sample: Option<Sample>,
    /// The autoscaler's memory of the track before this look.
    pub state: TrackState,
}

/// What one ready pod's agent holds (`Adapter` rollout mode).
#[derive(Debug, Clone, PartialEq)]
pub struct PodAdapters {
    /// The pod.
    pub pod: String,
    /// Its agent's report, or why it could not be read.
    pub report: Result<crate::agent::adapters::Report, String>,
}

/// Everything one reconcile read.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Observed {
    /// A reference of the spec (a claim, the HTTPRoute) that does not exist.
    pub missing: Option<Missing>,
    /// The candidate in status cannot be served.
    pub candidate_unservable: Option<Unservable>,
    /// The canary in status cannot be served any longer.
    pub canary_unservable: Option<Unservable>,
    /// The tracks' Deployments.
    pub stable: Option<Deployment>,
    /// The canary track's Deployment.
    pub canary: Option<Deployment>,
    /// The Services and the budget as they are (name → object), for a subset comparison.
    pub live: BTreeMap<String, Value>,
    /// The HTTPRoute, in GatewayAPI mode.
    pub route: Option<Value>,
    /// The analysis of the current step, when its gate is `Analysis` and the canary is ready.
    pub analysis: Option<Evidence>,
    /// The autoscaler's view of each track it scales.
    pub load: BTreeMap<Track, TrackLoad>,
    /// In `Adapter` rollout mode, what each ready stable pod holds.
    pub adapters: Vec<PodAdapters>,
}
