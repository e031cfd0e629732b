//! The ModelDeployment's decisions with a fixed clock, from fixtures of what was observed.

use super::*;
use crate::api::model_deployment::{CanaryStatus, ModelDeployment};
use crate::operator::model_deployment::children::ChildSettings;
use crate::operator::model_deployment::observed::Observed;
use crate::operator::model_deployment::validate::validate;
use k8s_openapi::api::apps::v1::Deployment;

fn at(s: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + s).unwrap_or_default()
}

fn md(status: serde_json::Value) -> ModelDeployment {
    serde_json::from_value(json!({
        "apiVersion": "flywheel.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "chat", "namespace": "team", "uid": "u-1", "generation": 1},
        "spec": {"model": {"name": "m", "version": "v1", "uri": "hf://org/m"},
                 "runtime": {"image": "runtime:1", "port": 8000}, "replicas": 2,
                 "rollout": {"steps": [{"weight": 50, "gate": "Pause", "pauseSeconds": 60}]}},
        "status": status,
    }))
    .unwrap_or_else(|e| panic!("{e}"))
}

fn settings() -> Settings {
    Settings {
        children: ChildSettings {
            operator_image: "flywheel:test".into(),
            collector_url: None,
            collector_token_secret: "flywheel-collector-token".into(),
        },
        scale_interval: Duration::from_secs(2),
    }
}

fn decide_at(md: &ModelDeployment, observed: &Observed, now: Timestamp) -> ModelDeploymentDecision {
    let valid = validate(md).unwrap_or_else(|e| panic!("{e}")).unwrap_or_else(|e| panic!("{e:?}"));
    decide(md, &valid, observed, &settings(), now).unwrap_or_else(|e| panic!("{e}"))
}

/// What a cluster holds once the decided children exist and every pod is ready.
fn converged(decision: &ModelDeploymentDecision) -> Observed {
    let mut observed = Observed::default();
    for child in &decision.children.apply {
        let name = child.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
        match child["kind"].as_str() {
            Some("Deployment") => {
                let replicas = child.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0);
                let mut live = child.clone();
                live["metadata"]["generation"] = json!(1);
                live["status"] = json!({"observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas,
                                        "readyReplicas": replicas, "availableReplicas": replicas});
                let d: Deployment = serde_json::from_value(live).unwrap_or_else(|e| panic!("{e}"));
                if name.ends_with("-canary") {
                    observed.canary = Some(d);
                } else {
                    observed.stable = Some(d);
                }
            }
            Some("PodDisruptionBudget") => {
                observed.live.insert(format!("pdb/{name}"), child.clone());
            }
            _ => {
                observed.live.insert(name, child.clone());
            }
        }
    }
    observed
}

#[test]
fn a_new_model_deployment_gets_its_children_and_is_not_ready_until_they_exist() {
    let first = md(json!(null));
    let d = decide_at(&first, &Observed::default(), at(0));
    let kinds: Vec<(&str, &str)> = d
        .children
        .apply
        .iter()
        .map(|c| (c["kind"].as_str().unwrap_or(""), c.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("")))
        .collect();
    assert_eq!(
        kinds,
        [
            ("Deployment", "chat-stable"),
            ("Service", "chat"),
            ("Service", "chat-stable"),
            ("PodDisruptionBudget", "chat")
        ]
    );
    assert_eq!(d.status.stable.as_ref().map(|s| s.version.as_str()), Some("v1"));
    assert!(!conditions::is_true(&d.status.conditions, CONDITION_READY), "writes are pending: not Ready");
    assert_eq!(d.events.iter().map(|e| e.reason.as_str()).collect::<Vec<_>>(), ["Deployed"]);
    assert_eq!(d.requeue, Some(Duration::from_secs(5)));
}

#[test]
fn ready_only_when_nothing_is_left_to_write_and_an_unchanged_look_changes_nothing() {
    let first = decide_at(&md(json!(null)), &Observed::default(), at(0));
    let observed = converged(&first);
    let settled = md(serde_json::to_value(&first.status).unwrap_or_default());
    let d = decide_at(&settled, &observed, at(10));
    assert!(d.children.apply.is_empty() && d.children.delete_canary.is_empty(), "{:?}", d.children);
    assert!(conditions::is_true(&d.status.conditions, CONDITION_READY), "{:?}", d.status.conditions);
    assert_eq!(d.requeue, None, "watched, not polled");
    // The same look again: the same status (no write), no Event.
    let again = decide_at(&md(serde_json::to_value(&d.status).unwrap_or_default()), &observed, at(20));
    assert_eq!(again.status, d.status);
    assert!(again.events.is_empty());
    // A child that drifted is written again, and the object is not Ready meanwhile.
    let mut drifted = observed.clone();
    drifted.live.remove("pdb/chat");
    let d = decide_at(&md(serde_json::to_value(&again.status).unwrap_or_default()), &drifted, at(30));
    assert_eq!(d.children.apply.len(), 1);
    assert!(!conditions::is_true(&d.status.conditions, CONDITION_READY));
}

#[test]
fn a_missing_reference_stalls_once_with_one_event() {
    let observed = Observed {
        missing: Some(Missing { reason: "MissingHTTPRoute", message: "no route".into() }),
        ..Observed::default()
    };
    let d = decide_at(&md(json!(null)), &observed, at(0));
    assert!(d.children.apply.is_empty());
    let stalled = conditions::get(&d.status.conditions, "Stalled").cloned().unwrap_or_else(|| panic!("Stalled"));
    assert_eq!((stalled.status, stalled.reason.as_str()), (ConditionStatus::True, "MissingHTTPRoute"));
    assert_eq!(d.events.len(), 1);
    assert_eq!(d.requeue, Some(Duration::from_secs(30)));
    let again = decide_at(&md(serde_json::to_value(&d.status).unwrap_or_default()), &observed, at(5));
    assert!(again.events.is_empty(), "no second Event while it stays stalled");
}

#[test]
fn a_canary_gets_its_track_and_loses_it_when_it_ends() {
    let first = decide_at(&md(json!(null)), &Observed::default(), at(0));
    let observed = converged(&first);
    let mut status = first.status.clone();
    status.canary = Some(CanaryStatus {
        version: "v2".into(),
        uri: "hf://org/m-v2".into(),
        weight: 50,
        started_at: Some(Time(at(1))),
        ..CanaryStatus::default()
    });
    let mut object = md(serde_json::to_value(&status).unwrap_or_default());
    object.spec.model.version = "v2".into();
    object.spec.model.uri = "hf://org/m-v2".into();
    if let Some(s) = object.status.as_mut() {
        s.observed_model =
            Some(crate::api::model_deployment::ModelRef { version: "v2".into(), uri: "hf://org/m-v2".into() });
    }
    let d = decide_at(&object, &observed, at(10));
    let names: Vec<&str> =
        d.children.apply.iter().filter_map(|c| c.pointer("/metadata/name").and_then(Value::as_str)).collect();
    assert!(names.contains(&"chat-canary"), "{names:?}");
    // Replicas follow the weight: one of two on the canary.
    assert_eq!(d.status.canary.as_ref().map(|c| c.replicas), Some(1));
    assert_eq!(d.status.stable.as_ref().map(|s| s.replicas), Some(1));
    // No canary in status while its track is live: it is removed.
    let with_canary = converged(&d);
    let mut gone = observed.clone();
    gone.canary = with_canary.canary.clone();
    gone.live.insert("chat-canary".into(), json!({"metadata": {"name": "chat-canary"}}));
    let d = decide_at(&md(serde_json::to_value(&first.status).unwrap_or_default()), &gone, at(20));
    assert_eq!(
        d.children.delete_canary,
        [DeleteChild::Deployment("chat-canary".into()), DeleteChild::Service("chat-canary".into())]
    );
}

#[test]
fn route_weights_follow_the_canary_and_keep_other_backends() {
    let valid = validate(&md(json!(null))).unwrap_or_else(|e| panic!("{e}")).unwrap_or_else(|e| panic!("{e:?}"));
    let route = json!({"spec": {"rules": [{"backendRefs": [{"name": "other", "port": 80, "weight": 1}]}]}});
    let patch = route_weights(&route, &valid, 25).unwrap_or_else(|| panic!("weights to set"));
    assert_eq!(
        patch["spec"]["rules"][0]["backendRefs"],
        json!([{"name": "other", "port": 80, "weight": 1},
               {"name": "chat-stable", "port": 80, "weight": 75},
               {"name": "chat-canary", "port": 80, "weight": 25}])
    );
    let mut applied = route.clone();
    json_patch::merge(&mut applied, &patch);
    assert_eq!(route_weights(&applied, &valid, 25), None, "already there: nothing to write");
}

#[test]
fn the_autoscaler_scales_on_the_observed_load_and_keeps_its_memory() {
    use crate::operator::model_deployment::observed::TrackLoad;
    let mut object = md(json!(null));
    object.spec.replicas = None;
    object.spec.scaling =
        serde_json::from_value(json!({"minReplicas": 1, "maxReplicas": 8, "targetPerReplica": 4})).ok();
    let first = decide_at(&object, &Observed::default(), at(0));
    let mut observed = converged(&first);
    object.status = Some(first.status.clone());
    let load = TrackLoad {
        current: 1,
        ready: 1,
        sample: Some(crate::autoscale::Sample { at_ms: at(10).as_millisecond(), load: 24.0, pods: 1 }),
        state: crate::autoscale::TrackState::default(),
    };
    observed.load.insert(Track::Stable, load);
    let d = decide_at(&object, &observed, at(10));
    let wanted = d.children.desired_replicas.first().map(|(_, r)| *r).unwrap_or(0);
    assert!(wanted > 1, "24 in flight at 4 per replica wants more than one: {wanted}");
    assert_eq!(d.children.scalers.len(), 1, "the autoscaler's memory is kept");
    assert!(d.events.iter().any(|e| e.reason == "Scaled"), "{:?}", d.events);
    assert_eq!(d.requeue, Some(Duration::from_secs(2)), "sampled on a clock");
}
