//! What the simulated controllers share: reading fields, listing, owner references, new pods,
//! status writes.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::sim::core::{Core, Gvr, ListOptions, Sub, WriteOptions};

/// The field manager of the controller-manager's writes.
pub(super) const MANAGER: &str = "kube-controller-manager";

pub(super) fn gvr_pods() -> Gvr {
    Gvr::new("", "v1", "pods")
}

pub(super) fn gvr_namespaces() -> Gvr {
    Gvr::new("", "v1", "namespaces")
}

pub(super) fn gvr_deployments() -> Gvr {
    Gvr::new("apps", "v1", "deployments")
}

pub(super) fn gvr_jobs() -> Gvr {
    Gvr::new("batch", "v1", "jobs")
}

pub(super) fn gvr_crds() -> Gvr {
    Gvr::new("apiextensions.k8s.io", "v1", "customresourcedefinitions")
}

/// The options of a write by `manager`.
pub(super) fn opts(manager: &str) -> WriteOptions {
    WriteOptions { field_manager: Some(manager.into()), ..WriteOptions::default() }
}

/// The string at `pointer`.
pub(super) fn s<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

/// Whether the object has a `deletionTimestamp`.
pub(super) fn is_deleting(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp").is_some()
}

/// Every object of a type, in every namespace.
pub(super) fn list(core: &Core, gvr: &Gvr) -> Vec<Value> {
    list_at(core, gvr).0
}

/// Every object of a type, in every namespace, and the resourceVersion the list was read at.
pub(super) fn list_at(core: &Core, gvr: &Gvr) -> (Vec<Value>, u64) {
    let Ok(mut list) = core.list(gvr, None, &ListOptions::default()) else { return (Vec::new(), 0) };
    let rv = s(&list, "/metadata/resourceVersion").and_then(|rv| rv.parse().ok()).unwrap_or(0);
    let items = match list.get_mut("items").map(Value::take) {
        Some(Value::Array(items)) => items,
        _ => Vec::new(),
    };
    (items, rv)
}

/// The uids of the object's owners.
pub(super) fn owner_uids(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(|refs| refs.iter().filter_map(|r| r.get("uid").and_then(Value::as_str)).map(str::to_string).collect())
        .unwrap_or_default()
}

/// The controller reference to `obj`.
fn owner_ref(obj: &Value) -> Value {
    json!({
        "apiVersion": obj.get("apiVersion"),
        "kind": obj.get("kind"),
        "name": s(obj, "/metadata/name"),
        "uid": s(obj, "/metadata/uid"),
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

/// Pods by the uid of each owner, read once per pass (a pass over many Deployments stays linear).
pub(super) type PodsByOwner = BTreeMap<String, Vec<Value>>;

/// Every pod of `pods` by the uid of each of its owners.
pub(super) fn pods_by_owner(pods: &[Value]) -> PodsByOwner {
    let mut by_owner: PodsByOwner = BTreeMap::new();
    for pod in pods {
        for uid in owner_uids(pod) {
            by_owner.entry(uid).or_default().push(pod.clone());
        }
    }
    by_owner
}

/// The pods `owner` owns.
pub(super) fn pods_owned_by(pods: &PodsByOwner, owner: &Value) -> Vec<Value> {
    let uid = s(owner, "/metadata/uid").unwrap_or_default();
    pods.get(uid).cloned().unwrap_or_default()
}

/// Whether the pod's `Ready` condition is True.
pub(super) fn is_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions").and_then(Value::as_array).is_some_and(|c| {
        c.iter().any(|c| c.get("type") == Some(&json!("Ready")) && c.get("status") == Some(&json!("True")))
    })
}

/// A pod of `template` named `name`, controlled by `owner`, with `extra_labels`.
pub(super) fn new_pod(owner: &Value, template: &Value, name: String, extra_labels: &BTreeMap<String, String>) -> Value {
    let mut meta = template.get("metadata").cloned().unwrap_or_else(|| json!({}));
    for (k, v) in extra_labels {
        meta["labels"][k] = json!(v);
    }
    meta["name"] = json!(name);
    meta["ownerReferences"] = json!([owner_ref(owner)]);
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template.get("spec").cloned().unwrap_or_else(|| json!({}))})
}

/// Write `status` through `/status` as the controller-manager, unless it is the object's already.
pub(super) fn set_status(core: &Core, gvr: &Gvr, obj: &Value, status: Value) {
    if obj.get("status") == Some(&status) {
        return;
    }
    let mut body = obj.clone();
    body["status"] = status;
    let _written = core.update(
        gvr,
        s(obj, "/metadata/namespace"),
        s(obj, "/metadata/name").unwrap_or_default(),
        body,
        Some(Sub::Status),
        &opts(MANAGER),
    );
}

/// Write a pod's status through `/status` as `manager`, made by `status` from the pod as it is
/// now (`None`: leave it): read again and retried when another writer changed the pod in between
/// (a conflict), as the kubelet and the controllers retry. False when the pod is gone, is another
/// pod of that name than `uid`, `status` left it, or the write failed otherwise.
pub(super) fn write_pod_status(
    core: &Core,
    ns: Option<&str>,
    name: &str,
    uid: Option<&str>,
    manager: &str,
    status: impl Fn(&Value) -> Option<Value>,
) -> bool {
    for _ in 0..10 {
        let Ok(mut pod) = core.get(&gvr_pods(), ns, name) else { return false };
        if uid.is_some_and(|u| s(&pod, "/metadata/uid") != Some(u)) {
            return false;
        }
        let Some(new) = status(&pod) else { return false };
        pod["status"] = new;
        match core.update(&gvr_pods(), ns, name, pod, Some(Sub::Status), &opts(manager)) {
            Ok(_) => return true,
            Err(e) if e.code == 409 => {}
            Err(_) => return false,
        }
    }
    false
}

/// The pod conditions a kubelet writes; others (a controller's `DisruptionTarget`) are kept when
/// it writes a pod's status.
const KUBELET_CONDITIONS: [&str; 4] = ["PodScheduled", "Initialized", "ContainersReady", "Ready"];

/// `status` as the kubelet writes it over `pod`: the conditions other writers own stay.
pub(super) fn keep_others_conditions(pod: &Value, mut status: Value) -> Value {
    let theirs: Vec<Value> = pod
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|c| !c.get("type").and_then(Value::as_str).is_some_and(|t| KUBELET_CONDITIONS.contains(&t)))
        .cloned()
        .collect();
    if let Some(conditions) = status.get_mut("conditions").and_then(Value::as_array_mut) {
        conditions.retain(|c| !theirs.iter().any(|t| t.get("type") == c.get("type")));
        conditions.extend(theirs);
    }
    status
}
