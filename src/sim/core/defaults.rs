//! The defaults the real server fills in on built-in kinds: on every write (`SetDefaults_*` when
//! decoding) and on create (the strategies' `PrepareForCreate` and admission).

use serde_json::{Value, json};

use super::crds;
use crate::sim::registry::ResourceType;

/// Defaults the real server's decoding fills in on every write (`SetDefaults_*`).
pub(super) fn on_write(t: &ResourceType, obj: &mut Value) {
    match (t.group.as_str(), t.kind.as_str()) {
        ("apiextensions.k8s.io", "CustomResourceDefinition") => crds::default_spec(obj),
        ("", "Secret") => secret_string_data(obj),
        _ => {}
    }
}

/// A Secret's `stringData` is write-only: the server merges it into `data` (base64, a key in
/// both taking `stringData`'s value) and never returns it (`Convert_v1_Secret_To_core_Secret`).
fn secret_string_data(obj: &mut Value) {
    use base64::Engine;
    let Some(Value::Object(strings)) = obj.as_object_mut().and_then(|o| o.remove("stringData")) else { return };
    if !obj.get("data").is_some_and(Value::is_object) {
        obj["data"] = json!({});
    }
    for (key, value) in strings {
        if let Some(text) = value.as_str() {
            obj["data"][key] = json!(base64::engine::general_purpose::STANDARD.encode(text));
        }
    }
}

/// Defaults the real server (or its admission) fills in on create.
pub(super) fn on_create(t: &ResourceType, obj: &mut Value) {
    match (t.group.as_str(), t.kind.as_str()) {
        ("", "Namespace") => {
            obj["status"] = json!({"phase": "Active"});
            obj["spec"] = json!({"finalizers": ["kubernetes"]});
        }
        ("", "Pod") => {
            obj["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
        }
        ("", "Secret") if obj.get("type").and_then(Value::as_str).is_none_or(str::is_empty) => {
            // SetDefaults_Secret.
            obj["type"] = json!("Opaque");
        }
        ("", "Service") => service(obj),
        ("apps", "Deployment") if obj.pointer("/spec/replicas").is_none() => {
            obj["spec"]["replicas"] = json!(1);
        }
        ("batch", "Job") => job(obj),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => crds::status_on_create(obj),
        _ => {}
    }
}

/// A Service: type ClusterIP, a cluster IP, an empty load balancer status.
fn service(obj: &mut Value) {
    if obj.pointer("/spec/type").is_none() {
        obj["spec"]["type"] = json!("ClusterIP");
    }
    if obj.pointer("/spec/clusterIP").is_none() {
        use rand::Rng;
        let mut rng = rand::rng();
        obj["spec"]["clusterIP"] = json!(format!("10.96.{}.{}", rng.random_range(0..255), rng.random_range(1..255)));
    }
    obj["status"] = json!({"loadBalancer": {}});
}

/// A Job: its labels and selector, then one pod at a time, at most six retries.
fn job(obj: &mut Value) {
    job_labels_and_selector(obj);
    let spec = &mut obj["spec"];
    for (k, v) in [("backoffLimit", json!(6)), ("completions", json!(1)), ("parallelism", json!(1))] {
        if spec.get(k).is_none() {
            spec[k] = v;
        }
    }
}

/// Labels, selector and template labels a real Job gets on create.
fn job_labels_and_selector(job: &mut Value) {
    let text = |pointer: &str| job.pointer(pointer).and_then(Value::as_str).unwrap_or_default().to_string();
    let uid = text("/metadata/uid");
    let name = text("/metadata/name");
    let labels = json!({
        "batch.kubernetes.io/controller-uid": uid,
        "batch.kubernetes.io/job-name": name,
        "controller-uid": uid,
        "job-name": name,
    });
    if let Some(map) = labels.as_object() {
        for (k, v) in map {
            job["metadata"]["labels"][k] = v.clone();
            job["spec"]["template"]["metadata"]["labels"][k] = v.clone();
        }
    }
    if job.pointer("/spec/selector").is_none() {
        job["spec"]["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
    }
}
