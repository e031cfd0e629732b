//! The status and scale subresources: what each endpoint may change of an object, and the
//! autoscaling/v1 Scale of a type that declares one.

use serde_json::{Value, json};

use super::managed::strip_managed;
use super::object::{at_path, remove_field, set_at_path};
use crate::sim::error::ApiError;
use crate::sim::registry::ResourceType;
use crate::sim::select::LabelSelector;

/// How a subresource is addressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sub {
    /// `/status`.
    Status,
    /// `/scale`.
    Scale,
}

impl Sub {
    /// As the URL and managedFields name it.
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Scale => "scale",
        }
    }
}

/// A write to `/status`: the live object with the status of `desired` (none if it has none).
pub(super) fn with_status_of(current: &Value, desired: &Value) -> Value {
    let mut o = current.clone();
    match desired.get("status") {
        Some(status) => o["status"] = status.clone(),
        None => remove_field(&mut o, "status"),
    }
    o
}

/// A write to the main resource of a type with a status subresource keeps the live status.
pub(super) fn keep_status(t: &ResourceType, current: &Value, mut desired: Value) -> Value {
    if t.status {
        match current.get("status") {
            Some(status) => desired["status"] = status.clone(),
            None => remove_field(&mut desired, "status"),
        }
    }
    desired
}

/// The autoscaling/v1 Scale of an object.
pub(super) fn scale_of(t: &ResourceType, obj: &Value) -> Result<Value, ApiError> {
    let (spec_path, status_path, selector) = match &t.scale {
        Some(s) => (s.spec_replicas.clone(), s.status_replicas.clone(), s.label_selector.clone()),
        None => return Err(ApiError::no_route(&format!("{}/scale", t.plural))),
    };
    let meta = obj.get("metadata").cloned().unwrap_or_else(|| json!({}));
    let mut scale_meta = json!({});
    for k in ["name", "namespace", "uid", "resourceVersion", "creationTimestamp"] {
        if let Some(v) = meta.get(k) {
            scale_meta[k] = v.clone();
        }
    }
    let mut status = json!({"replicas": at_path(obj, &status_path).and_then(Value::as_i64).unwrap_or(0)});
    let selector_value = match selector {
        Some(path) => at_path(obj, &path).and_then(Value::as_str).map(str::to_string),
        None if t.kind == "Deployment" || t.kind == "ReplicaSet" => {
            obj.pointer("/spec/selector").map(|s| LabelSelector::from_json(s).to_selector_string())
        }
        None => None,
    };
    if let Some(sel) = selector_value {
        status["selector"] = json!(sel);
    }
    Ok(json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": scale_meta,
        "spec": {"replicas": at_path(obj, &spec_path).and_then(Value::as_i64).unwrap_or(0)},
        "status": status,
    }))
}

/// Write a Scale's spec.replicas back into the object.
pub(super) fn scale_into(t: &ResourceType, current: &Value, scale: &Value) -> Result<Value, ApiError> {
    let Some(paths) = &t.scale else { return Err(ApiError::no_route(&format!("{}/scale", t.plural))) };
    let replicas = scale
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .ok_or_else(|| ApiError::bad_request("spec.replicas of a Scale must be an integer"))?;
    let mut obj = strip_managed(current);
    set_at_path(&mut obj, &paths.spec_replicas, json!(replicas));
    Ok(obj)
}
