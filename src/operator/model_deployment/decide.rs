//! Decide (pure): from the validated object, what was observed and `now`, the children to
//! write, the status, the Events and when to look again. The rollout's state machine
//! (`crate::rollout::plan`) and the autoscaler (`crate::autoscale`) are the cores; this puts
//! their answers together. Tested with a fixed clock.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use super::adapters;
use super::children::{self, TrackPlan};
use super::context::{ModelDeploymentError, Settings};
use super::observed::{Missing, Observed};
use super::replicas::{canary_ready, ready_replicas, replicas_for, scale, track_ready, version_of};
use super::validate::ValidModelDeployment;
use crate::api::ConditionStatus;
use crate::api::common::CONDITION_READY;
use crate::api::conditions::{self, Health};
use crate::api::model_deployment::{Evidence, ModelDeployment, ModelDeploymentStatus, Track, Verdict};
use crate::autoscale::TrackState;
use crate::operator::skeleton::{Decision, Note};
use crate::rollout::{self, Observations, Plan, Transition};

/// The writes to children one reconcile decided.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Children {
    /// Objects to server-side apply: those whose live version lacks part of what is wanted.
    pub apply: Vec<Value>,
    /// The canary track's Deployment and Service to remove, when no canary runs.
    pub delete_canary: Vec<DeleteChild>,
    /// The HTTPRoute's name and the merge patch of its backend weights, when they differ.
    pub route: Option<(String, Value)>,
    /// The autoscaler's memory of each track after this look.
    pub scalers: Vec<(Track, TrackState)>,
    /// The autoscaler's wanted replicas per track (a metric).
    pub desired_replicas: Vec<(Track, i32)>,
}

/// A child to delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteChild {
    /// The canary Deployment.
    Deployment(String),
    /// The canary Service.
    Service(String),
}

/// The decision of one reconcile.
pub type ModelDeploymentDecision = Decision<Children, ModelDeploymentStatus>;

/// The decision when the object cannot be served until its spec (or a reference) changes:
/// `Stalled` with the reason, a Warning Event when it newly stalls, a slow look again (the
/// missing object is not watched).
pub fn stalled(md: &ModelDeployment, reason: &str, message: &str, now: Timestamp) -> ModelDeploymentDecision {
    let current = md.status.clone().unwrap_or_default();
    let mut status = current;
    status.observed_generation = md.metadata.generation;
    let health = Health::Stalled { reason: reason.into(), message: message.into() };
    let changed = conditions::set_health(&mut status.conditions, &health, md.metadata.generation, &Time(now));
    let events = if changed { vec![Note::warning(reason, message)] } else { Vec::new() };
    Decision { children: Children::default(), status, events, requeue: Some(Duration::from_secs(30)) }
}

/// The evidence of a verdict in one line: samples and rates per arm, the interval, the verdict.
pub fn evidence_summary(e: &Evidence) -> String {
    let pct = |r: Option<f64>| r.map_or_else(|| "n/a".to_string(), |r| format!("{:.1}%", r * 100.0));
    let interval = match (e.difference_lower, e.difference_upper) {
        (Some(lo), Some(hi)) => format!("[{:+.1}, {:+.1}] points", lo * 100.0, hi * 100.0),
        _ => "none".to_string(),
    };
    format!(
        "{:?}: stable {} of {} signals, canary {} of {}, canary − stable {interval}; {}",
        e.verdict,
        pct(e.stable_positive_rate),
        e.stable_samples,
        pct(e.canary_positive_rate),
        e.canary_samples,
        e.message
    )
}

/// The HTTPRoute backend weights for a canary at `canary_weight` (the route's other backends
/// kept), as a merge patch; `None` when the route already has them.
pub fn route_weights(route: &Value, valid: &ValidModelDeployment, canary_weight: i32) -> Option<Value> {
    let owner = &valid.owner;
    let stable = children::track_name(owner, Track::Stable);
    let canary = children::track_name(owner, Track::Canary);
    let mut rules = route.pointer("/spec/rules").and_then(Value::as_array).cloned().unwrap_or_default();
    if rules.is_empty() {
        rules.push(json!({"backendRefs": []}));
    }
    for rule in &mut rules {
        let mut refs: Vec<Value> = rule.get("backendRefs").and_then(Value::as_array).cloned().unwrap_or_default();
        refs.retain(|r| {
            let n = r.get("name").and_then(Value::as_str).unwrap_or_default();
            n != stable && n != canary && n != owner.name
        });
        refs.push(json!({"name": stable, "port": 80, "weight": 100 - canary_weight}));
        if canary_weight > 0 {
            refs.push(json!({"name": canary, "port": 80, "weight": canary_weight}));
        }
        rule["backendRefs"] = Value::Array(refs);
    }
    let desired = json!({"spec": {"rules": rules}});
    (!children::is_subset(&desired, route)).then_some(desired)
}

/// Decide (pure).
pub fn decide(
    md: &ModelDeployment,
    valid: &ValidModelDeployment,
    observed: &Observed,
    settings: &Settings,
    now: Timestamp,
) -> Result<ModelDeploymentDecision, ModelDeploymentError> {
    if let Some(Missing { reason, message }) = &observed.missing {
        return Ok(stalled(md, reason, message, now));
    }
    let now_time = Time(now);
    let current = md.status.clone().unwrap_or_default();
    let generation = md.metadata.generation;
    let owner = &valid.owner;
    let scaled = scale(md, observed, now);
    let observations = Observations {
        canary_ready: canary_ready(md, valid, observed, now),
        analysis: observed.analysis.clone(),
        candidate_unservable: observed.candidate_unservable.clone(),
        canary_unservable: observed.canary_unservable.clone(),
    };
    let decided = observed.analysis.clone().filter(|e| e.verdict != Verdict::Inconclusive);
    let Plan { status: mut next, transitions, requeue_after } = rollout::plan(&md.spec, &current, &observations, now);

    // The children.
    let stable = next.stable.clone().ok_or(ModelDeploymentError::Malformed("a stable version after planning"))?;
    let source_of = |uri: &str| valid.sources.get(uri).ok_or(ModelDeploymentError::Malformed("a parsed model source"));
    // In Adapter mode the canary runs inside the stable pods: no track of its own, and the
    // pods serve the base model whatever adapter is stable.
    let adapter_mode = md.spec.adapter_mode();
    let canary_weight = next.canary.as_ref().filter(|c| !c.adapter).map(|c| c.weight);
    let (pod_version, pod_uri) = if adapter_mode {
        (md.spec.model.version.clone(), md.spec.model.uri.clone())
    } else {
        (stable.version.clone(), stable.uri.clone())
    };
    let (stable_replicas, canary_replicas) = replicas_for(md, valid, &scaled, canary_weight);
    let mut out = Children::default();
    let mut want = |desired: Value, live: Option<&Value>| {
        if !live.is_some_and(|l| children::is_subset(&desired, l)) {
            out.apply.push(desired);
        }
    };
    let stable_plan = TrackPlan {
        track: Track::Stable,
        version: pod_version.clone(),
        uri: pod_uri.clone(),
        replicas: stable_replicas,
    };
    let stable_live = observed.stable.as_ref().and_then(|d| serde_json::to_value(d).ok());
    want(
        children::deployment(owner, &md.spec, &stable_plan, source_of(&pod_uri)?, &settings.children),
        stable_live.as_ref(),
    );
    if adapter_mode {
        let name = children::adapters_config_map_name(owner);
        want(children::adapters_config_map(owner, &adapters::wanted(&next)), observed.live.get(&format!("cm/{name}")));
    }
    let all = children::service(owner, None);
    want(all, observed.live.get(&owner.name));
    let stable_svc = children::service(owner, Some(Track::Stable));
    want(stable_svc, observed.live.get(&children::track_name(owner, Track::Stable)));
    want(children::disruption_budget(owner), observed.live.get(&format!("pdb/{}", owner.name)));
    let canary_name = children::track_name(owner, Track::Canary);
    match next.canary.as_ref().filter(|c| !c.adapter) {
        Some(c) => {
            let plan = TrackPlan {
                track: Track::Canary,
                version: c.version.clone(),
                uri: c.uri.clone(),
                replicas: canary_replicas,
            };
            let canary_live = observed.canary.as_ref().and_then(|d| serde_json::to_value(d).ok());
            want(
                children::deployment(owner, &md.spec, &plan, source_of(&c.uri)?, &settings.children),
                canary_live.as_ref(),
            );
            want(children::service(owner, Some(Track::Canary)), observed.live.get(&canary_name));
        }
        None => {
            if observed.canary.is_some() {
                out.delete_canary.push(DeleteChild::Deployment(canary_name.clone()));
            }
            if observed.live.contains_key(&canary_name) {
                out.delete_canary.push(DeleteChild::Service(canary_name));
            }
        }
    }
    if let (Some(name), Some(route)) = (&valid.route, &observed.route) {
        out.route = route_weights(route, valid, canary_weight.unwrap_or(0)).map(|patch| (name.clone(), patch));
    }

    // Status: replicas, selector, conditions.
    let stable_ready = ready_replicas(observed.stable.as_ref());
    let canary_ready_count = if canary_weight.is_some() { ready_replicas(observed.canary.as_ref()) } else { 0 };
    if let Some(s) = next.stable.as_mut() {
        s.replicas = stable_replicas;
        s.ready_replicas = stable_ready;
    }
    if let Some(c) = next.canary.as_mut() {
        if c.adapter {
            // The pods holding it, of the ready ones; and those that could not load it.
            c.replicas = i32::try_from(observed.adapters.len()).unwrap_or(i32::MAX);
            c.ready_replicas = adapters::serving(&observed.adapters, &c.version);
            c.adapter_failures = adapters::failures(&observed.adapters, &c.version);
        } else {
            c.replicas = canary_replicas;
            c.ready_replicas = canary_ready_count;
        }
    }
    next.replicas = stable_replicas + canary_replicas;
    next.ready_replicas = stable_ready + canary_ready_count;
    next.selector = Some(children::serving_selector_string(owner));
    next.observed_generation = generation;
    let stable_is_ready = track_ready(observed.stable.as_ref(), stable_replicas)
        && version_of(observed.stable.as_ref()) == Some(&pod_version)
        && (!stable.adapter || adapters::all_serve(&observed.adapters, &stable.version, None));
    // Ready only when nothing is left to write: what is live is what is wanted.
    let writes = !out.apply.is_empty() || out.route.is_some();
    let health = if let Some(c) = &next.canary {
        Health::Progressing {
            reason: "CanaryInProgress".into(),
            message: format!("canary of {} at step {} ({}%)", c.version, c.step, c.weight),
        }
    } else if stable_is_ready && !writes {
        Health::Ready {
            reason: "Available".into(),
            message: format!("serving {} on {} ready replicas", stable.version, stable_ready),
        }
    } else {
        Health::Progressing {
            reason: "Deploying".into(),
            message: format!("waiting for {} replicas of {} to be ready", stable_replicas, stable.version),
        }
    };
    conditions::set_health(&mut next.conditions, &health, generation, &now_time);
    let progressing = conditions::Desired::new(
        "Progressing",
        ConditionStatus::from_bool(next.canary.is_some()),
        if next.canary.is_some() { "CanaryInProgress" } else { "NoRollout" },
        next.canary.as_ref().map_or_else(String::new, |c| format!("canary of {} at {}%", c.version, c.weight)),
    );
    conditions::set(&mut next.conditions, &progressing, generation, &now_time);

    // The autoscaler's decisions: in status, as Events, as a metric, and its memory.
    let decisions: Vec<super::scaling::TrackDecision> = scaled
        .iter()
        .map(|(track, s)| super::scaling::TrackDecision {
            track: *track,
            current: s.current,
            decision: s.decision.clone(),
        })
        .collect();
    next.scaling = super::scaling::record(&current.scaling, &decisions, &now_time);
    let mut events = Vec::new();
    for (track, s) in &scaled {
        out.scalers.push((*track, s.state.clone()));
        out.desired_replicas.push((*track, s.decision.desired));
        if s.decision.desired != s.current {
            events.push(Note::normal(
                "Scaled",
                format!("{}: {} → {} replicas: {}", track.as_str(), s.current, s.decision.desired, s.decision.reason),
            ));
        }
    }
    for t in &transitions {
        // A decision of the analysis carries its evidence in the Event too.
        let message = match (&decided, t) {
            (Some(e), Transition::StepAdvanced { .. } | Transition::Promoted { .. } | Transition::Aborted { .. }) => {
                format!("{}; evidence: {}", t.message(), evidence_summary(e))
            }
            _ => t.message(),
        };
        let warning = matches!(t, Transition::Aborted { .. } | Transition::Rejected { .. });
        events.push(if warning { Note::warning(t.reason(), message) } else { Note::normal(t.reason(), message) });
    }

    let mut requeue = match (requeue_after, conditions::is_true(&next.conditions, CONDITION_READY)) {
        (Some(d), _) => Some(d.max(Duration::from_millis(200))),
        (None, false) => Some(Duration::from_secs(5)),
        (None, true) => None,
    };
    if md.spec.scaling.is_some() && md.spec.replicas.is_none() {
        // The autoscaler samples on a clock, not on changes.
        let interval = settings.scale_interval;
        requeue = Some(requeue.map_or(interval, |a| a.min(interval)));
    }
    Ok(Decision { children: out, status: next, events, requeue })
}

#[cfg(test)]
mod tests;
