//! The disruption controller (`pkg/controller/disruption`): each PodDisruptionBudget's status from
//! the pods its selector picks in its namespace. `maxUnavailable` and a percentage `minAvailable`
//! count the expected pods from the scale of the pods' controllers (a Deployment's pods count by
//! the Deployment's replicas, as through its ReplicaSet); a controller without a scale
//! subresource (a Job) fails the sync: `DisruptionAllowed` False `SyncFailed` with the error,
//! `disruptionsAllowed` 0, the rest of the status as it was. No eviction API: `disruptedPods`
//! stays empty.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::common::{gvr_deployments, gvr_pods, is_deleting, is_ready, list, s, set_status};
use crate::sim::core::{Core, Gvr, now_rfc3339};
use crate::sim::select::{LabelSelector, labels_of};

fn gvr_pdbs() -> Gvr {
    Gvr::new("policy", "v1", "poddisruptionbudgets")
}

/// One pass over every PodDisruptionBudget.
pub(super) fn disruption(core: &Core) {
    let pdbs = list(core, &gvr_pdbs());
    if pdbs.is_empty() {
        return;
    }
    let all_pods = list(core, &gvr_pods());
    for pdb in pdbs {
        if is_deleting(&pdb) {
            continue;
        }
        sync(core, &pdb, &all_pods);
    }
}

/// The status of one PodDisruptionBudget.
fn sync(core: &Core, pdb: &Value, all_pods: &[Value]) {
    let namespace = s(pdb, "/metadata/namespace").unwrap_or_default().to_string();
    let generation = pdb.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0);
    let pods = selected_pods(pdb, &namespace, all_pods);
    let spec = pdb.get("spec").cloned().unwrap_or_else(|| json!({}));
    let expected = expected_and_desired(core, &namespace, &spec, &pods);
    let mut status = pdb.get("status").cloned().filter(Value::is_object).unwrap_or_else(|| json!({}));
    let mut conditions: Vec<Value> = status.get("conditions").and_then(Value::as_array).cloned().unwrap_or_default();
    match expected {
        Err(message) => fail_safe(&mut status, &mut conditions, &message),
        Ok((expected_count, desired_healthy)) => {
            status = healthy_status(&pods, expected_count, desired_healthy, generation, &mut conditions);
        }
    }
    status["conditions"] = json!(conditions);
    set_status(core, &gvr_pdbs(), pdb, status);
}

/// The pods of the namespace the selector picks: a missing selector selects nothing, an empty one
/// everything.
fn selected_pods(pdb: &Value, namespace: &str, all_pods: &[Value]) -> Vec<Value> {
    match pdb.pointer("/spec/selector") {
        Some(sel) if !sel.is_null() => {
            let selector = LabelSelector::from_json(sel);
            all_pods
                .iter()
                .filter(|p| s(p, "/metadata/namespace") == Some(namespace))
                .filter(|p| selector.matches(&labels_of(p)))
                .cloned()
                .collect()
        }
        _ => Vec::new(),
    }
}

/// The expected pod count and the healthy pods desired, from `maxUnavailable` or `minAvailable`.
fn expected_and_desired(core: &Core, namespace: &str, spec: &Value, pods: &[Value]) -> Result<(i64, i64), String> {
    if let Some(max) = spec.get("maxUnavailable").filter(|v| !v.is_null()) {
        expected_scale(core, namespace, pods)
            .and_then(|(count, _)| scaled_value(max, count).map(|m| (count, (count - m).max(0))))
    } else if let Some(min) = spec.get("minAvailable").filter(|v| !v.is_null()) {
        match min.as_i64() {
            Some(n) => Ok((pods.len() as i64, n)),
            None => expected_scale(core, namespace, pods)
                .and_then(|(count, _)| scaled_value(min, count).map(|m| (count, m))),
        }
    } else {
        Ok((0, 0))
    }
}

/// `failSafe`: no disruption allowed, `SyncFailed` with the error, the rest as it was.
fn fail_safe(status: &mut Value, conditions: &mut Vec<Value>, message: &str) {
    let observed = status.get("observedGeneration").and_then(Value::as_i64).unwrap_or(0);
    status["disruptionsAllowed"] = json!(0);
    for k in ["currentHealthy", "desiredHealthy", "expectedPods"] {
        if status.get(k).is_none() {
            status[k] = json!(0);
        }
    }
    set_condition(conditions, pdb_condition(false, "SyncFailed", message, observed));
}

/// The status from the healthy (ready, not deleting) pods against those desired.
fn healthy_status(
    pods: &[Value],
    expected_count: i64,
    desired_healthy: i64,
    generation: i64,
    conditions: &mut Vec<Value>,
) -> Value {
    let current_healthy = pods.iter().filter(|p| !is_deleting(p) && is_ready(p)).count() as i64;
    let mut allowed = current_healthy - desired_healthy;
    if expected_count <= 0 || allowed <= 0 {
        allowed = 0;
    }
    let mut status = json!({
        "disruptionsAllowed": allowed,
        "currentHealthy": current_healthy,
        "desiredHealthy": desired_healthy,
        "expectedPods": expected_count,
    });
    if generation != 0 {
        status["observedGeneration"] = json!(generation);
    }
    let condition = if allowed > 0 {
        pdb_condition(true, "SufficientPods", "", generation)
    } else {
        pdb_condition(false, "InsufficientPods", "", generation)
    };
    set_condition(conditions, condition);
    status
}

/// `intstr.GetScaledValueFromIntOrPercent(v, total, roundUp=true)`.
fn scaled_value(v: &Value, total: i64) -> Result<i64, String> {
    if let Some(n) = v.as_i64() {
        return Ok(n);
    }
    let text = v.as_str().unwrap_or_default();
    let percent = text
        .strip_suffix('%')
        .and_then(|p| p.parse::<i64>().ok())
        .ok_or_else(|| format!("invalid value for IntOrString: invalid value {text:?}"))?;
    Ok((percent * total + 99).div_euclid(100))
}

/// The controller of a pod and its scale, as the disruption controller's finders look it up
/// (ReplicationController, ReplicaSet of a Deployment, ReplicaSet, StatefulSet, then any type
/// with a scale subresource). `Ok(None)`: no controller found by that reference.
fn controller_scale(core: &Core, namespace: &str, owner: &Value) -> Result<Option<(String, i64)>, String> {
    let api_version = owner.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let kind = owner.get("kind").and_then(Value::as_str).unwrap_or_default();
    let name = owner.get("name").and_then(Value::as_str).unwrap_or_default();
    let uid = owner.get("uid").and_then(Value::as_str).unwrap_or_default();
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    let get = |gvr: &Gvr, n: &str| core.get(gvr, Some(namespace), n).ok();
    let replicas = |obj: &Value| obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
    if kind == "ReplicaSet" && (group == "apps" || group == "extensions") {
        let Some(rs) =
            get(&Gvr::new("apps", "v1", "replicasets"), name).filter(|rs| s(rs, "/metadata/uid") == Some(uid))
        else {
            return Ok(None);
        };
        let rs_controller = rs
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .and_then(|refs| refs.iter().find(|r| r.get("controller").and_then(Value::as_bool) == Some(true)));
        return match rs_controller {
            Some(d) if d.get("kind").and_then(Value::as_str) == Some("Deployment") => {
                let deployment = get(&gvr_deployments(), d.get("name").and_then(Value::as_str).unwrap_or_default())
                    .filter(|dep| s(dep, "/metadata/uid") == d.get("uid").and_then(Value::as_str));
                Ok(deployment.map(|dep| (s(&dep, "/metadata/uid").unwrap_or_default().to_string(), replicas(&dep))))
            }
            _ => Ok(Some((uid.to_string(), replicas(&rs)))),
        };
    }
    if kind == "StatefulSet" && group == "apps" {
        let ss = get(&Gvr::new("apps", "v1", "statefulsets"), name).filter(|ss| s(ss, "/metadata/uid") == Some(uid));
        return Ok(ss.map(|ss| (uid.to_string(), replicas(&ss))));
    }
    // getScaleController: the owner's type, and its scale subresource.
    let version = api_version.rsplit('/').next().unwrap_or_default();
    let Some(t) = core.resource_type_by_kind(api_version, kind) else {
        return Err(format!("no matches for kind {kind:?} in version {api_version:?}"));
    };
    if t.scale.is_none() {
        return Err(format!("{} does not implement the scale subresource", t.qualified()));
    }
    let Ok(scale) = core.scale(&Gvr::new(&t.group, version, &t.plural), Some(namespace), name) else { return Ok(None) };
    if s(&scale, "/metadata/uid") != Some(uid) {
        return Ok(None);
    }
    Ok(Some((uid.to_string(), scale.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0))))
}

/// `getExpectedScale`: the sum of the scales of the selected pods' controllers, and the names of
/// pods without one.
fn expected_scale(core: &Core, namespace: &str, pods: &[Value]) -> Result<(i64, Vec<String>), String> {
    let mut scales: BTreeMap<String, i64> = BTreeMap::new();
    let mut unmanaged = Vec::new();
    for pod in pods {
        let name = s(pod, "/metadata/name").unwrap_or_default();
        let controller = pod
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .and_then(|refs| refs.iter().find(|r| r.get("controller").and_then(Value::as_bool) == Some(true)));
        let Some(owner) = controller else {
            unmanaged.push(name.to_string());
            continue;
        };
        if owner.get("uid").and_then(Value::as_str).is_some_and(|u| scales.contains_key(u)) {
            continue;
        }
        match controller_scale(core, namespace, owner)? {
            Some((uid, scale)) => {
                scales.insert(uid, scale);
            }
            None => return Err(format!("found no controllers for pod {name:?}")),
        }
    }
    Ok((scales.values().sum(), unmanaged))
}

/// `apimeta.SetStatusCondition`: replace the condition of the same type, keeping its
/// `lastTransitionTime` unless the status changes.
fn set_condition(conditions: &mut Vec<Value>, mut new: Value) {
    let type_ = new.get("type").cloned();
    match conditions.iter_mut().find(|c| c.get("type") == type_.as_ref()) {
        Some(old) => {
            if old.get("status") == new.get("status") {
                new["lastTransitionTime"] =
                    old.get("lastTransitionTime").cloned().unwrap_or_else(|| json!(now_rfc3339()));
            }
            *old = new;
        }
        None => conditions.push(new),
    }
}

fn pdb_condition(status: bool, reason: &str, message: &str, observed_generation: i64) -> Value {
    let mut c = json!({"type": "DisruptionAllowed", "status": if status { "True" } else { "False" }, "lastTransitionTime": now_rfc3339(), "reason": reason, "message": message});
    if observed_generation != 0 {
        c["observedGeneration"] = json!(observed_generation);
    }
    c
}
