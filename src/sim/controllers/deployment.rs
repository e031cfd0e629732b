//! The Deployment controller: pods of the current template (by hash; no ReplicaSets), scaled to
//! `spec.replicas`; old pods removed once the new ones are ready; status and conditions as the
//! real controller reports them.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::common::{
    MANAGER, PodsByOwner, gvr_deployments, gvr_pods, is_deleting, is_ready, new_pod, opts, pods_owned_by, s, set_status,
};
use crate::sim::core::{Core, DeleteOptions, fnv1a_hex, now_rfc3339, random_suffix};

/// A Deployment's pods against its template.
struct Rollout {
    /// `spec.replicas`.
    desired: usize,
    /// The hash of the current template.
    hash: String,
    /// Pods of the current template.
    current: Vec<Value>,
    /// Pods of earlier templates.
    old: Vec<Value>,
}

/// One pass over one Deployment.
pub(super) fn deployment(core: &Core, d: &Value, pods: &PodsByOwner) {
    if is_deleting(d) {
        return;
    }
    let Some(template) = d.pointer("/spec/template") else { return };
    let desired = d.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1).max(0) as usize;
    let hash = template_hash(template);
    let pods: Vec<Value> = pods_owned_by(pods, d).into_iter().filter(|p| !is_deleting(p)).collect();
    let (current, old): (Vec<Value>, Vec<Value>) =
        pods.into_iter().partition(|p| s(p, "/metadata/labels/pod-template-hash") == Some(hash.as_str()));
    let rollout = Rollout { desired, hash, current, old };
    scale(core, d, template, &rollout);
    let current_ready = rollout.current.iter().filter(|p| is_ready(p)).count();
    if current_ready >= desired.min(rollout.current.len()) && rollout.current.len() >= desired {
        for p in &rollout.old {
            delete_pod(core, d, p);
        }
    }
    set_status(core, &gvr_deployments(), d, status(d, &rollout, current_ready));
}

fn template_hash(template: &Value) -> String {
    // Stable across runs, as a pod-template-hash must be; ten hex digits as the real controller.
    fnv1a_hex(&template.to_string())[6..].to_string()
}

fn delete_pod(core: &Core, d: &Value, pod: &Value) {
    let _gone = core.delete(
        &gvr_pods(),
        s(d, "/metadata/namespace"),
        s(pod, "/metadata/name").unwrap_or_default(),
        &DeleteOptions::default(),
    );
}

/// Create the missing pods of the current template, or delete the newest extra ones.
fn scale(core: &Core, d: &Value, template: &Value, rollout: &Rollout) {
    let Rollout { desired, hash, current, .. } = rollout;
    let desired = *desired;
    if current.len() < desired {
        let name = s(d, "/metadata/name").unwrap_or_default();
        let mut labels = BTreeMap::new();
        labels.insert("pod-template-hash".to_string(), hash.clone());
        for _ in current.len()..desired {
            let pod = new_pod(d, template, format!("{name}-{hash}-{}", random_suffix(5)), &labels);
            let _created = core.create(&gvr_pods(), s(d, "/metadata/namespace"), pod, &opts(MANAGER));
        }
    } else if current.len() > desired {
        let mut extra = current.clone();
        extra.sort_by(|a, b| s(b, "/metadata/creationTimestamp").cmp(&s(a, "/metadata/creationTimestamp")));
        for p in extra.iter().take(current.len() - desired) {
            delete_pod(core, d, p);
        }
    }
}

/// The status as the real controller reports it (a ReplicaSet named by the template hash).
fn status(d: &Value, rollout: &Rollout, current_ready: usize) -> Value {
    let Rollout { desired, hash, current, old } = rollout;
    let desired = *desired;
    let name = s(d, "/metadata/name").unwrap_or_default();
    let total = current.len().min(desired) + old.len();
    let ready =
        current.iter().take(desired).filter(|p| is_ready(p)).count() + old.iter().filter(|p| is_ready(p)).count();
    let updated = current.len().min(desired);
    let previous = d.pointer("/status/conditions");
    let available = ready >= desired;
    let progressed = updated >= desired && current_ready >= desired && old.is_empty();
    let mut status = json!({
        "observedGeneration": d.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
        "replicas": total,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": ready,
        "terminatingReplicas": 0,
        "conditions": [
            if available {
                condition("Available", true, "MinimumReplicasAvailable", "Deployment has minimum availability.", previous)
            } else {
                condition("Available", false, "MinimumReplicasUnavailable", "Deployment does not have minimum availability.", previous)
            },
            if progressed {
                condition("Progressing", true, "NewReplicaSetAvailable", &format!("ReplicaSet \"{name}-{hash}\" has successfully progressed."), previous)
            } else {
                condition("Progressing", true, "ReplicaSetUpdated", &format!("ReplicaSet \"{name}-{hash}\" is progressing."), previous)
            },
        ],
    });
    if ready < total {
        status["unavailableReplicas"] = json!(total - ready);
    }
    if ready == 0
        && let Some(m) = status.as_object_mut()
    {
        m.remove("readyReplicas");
        m.remove("availableReplicas");
    }
    status
}

fn condition(type_: &str, status: bool, reason: &str, message: &str, previous: Option<&Value>) -> Value {
    let status_str = if status { "True" } else { "False" };
    let now = now_rfc3339();
    let old = previous
        .and_then(|c| c.as_array())
        .and_then(|cs| cs.iter().find(|c| c.get("type") == Some(&json!(type_))).cloned());
    let transition = match &old {
        Some(o) if o.get("status") == Some(&json!(status_str)) => {
            o.get("lastTransitionTime").cloned().unwrap_or(json!(now))
        }
        _ => json!(now),
    };
    let update = match &old {
        Some(o) if o.get("status") == Some(&json!(status_str)) && o.get("reason") == Some(&json!(reason)) => {
            o.get("lastUpdateTime").cloned().unwrap_or(json!(now))
        }
        _ => json!(now),
    };
    json!({"type": type_, "status": status_str, "reason": reason, "message": message, "lastTransitionTime": transition, "lastUpdateTime": update})
}
