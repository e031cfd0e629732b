//! `metadata.managedFields`: reading and writing the entries, and recording what an update (not
//! an apply) changed, through the list types of the object's schema.

use serde_json::Value;

use super::object::{metadata_mut, now_rfc3339};
use crate::sim::patch::{self, BuiltinListTypes, ListTypes, ManagedFieldsEntry, SchemaListTypes};
use crate::sim::registry::ResourceType;

/// How lists of the type merge: from its schema (a custom resource) or the built-in table.
pub(super) fn list_types(t: &ResourceType) -> Box<dyn ListTypes + '_> {
    match &t.schema {
        Some(schema) => Box::new(SchemaListTypes { schema }),
        None => Box::new(BuiltinListTypes),
    }
}

/// The object's managedFields entries.
pub(super) fn managed_of(obj: &Value) -> Vec<ManagedFieldsEntry> {
    obj.pointer("/metadata/managedFields").and_then(|m| serde_json::from_value(m.clone()).ok()).unwrap_or_default()
}

/// Set the object's managedFields (removed when there are none).
pub(super) fn set_managed(obj: &mut Value, entries: &[ManagedFieldsEntry]) {
    let meta = metadata_mut(obj);
    if entries.is_empty() {
        meta.remove("managedFields");
    } else if let Ok(v) = serde_json::to_value(entries) {
        meta.insert("managedFields".into(), v);
    }
}

/// The object without its managedFields.
pub(super) fn strip_managed(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
    }
    v
}

/// The managedFields after an update (a create when `current` is `None`) by the write's manager
/// (`unknown` when it names none) on the endpoint `subresource`.
pub(super) fn record_update(
    t: &ResourceType,
    current: Option<&Value>,
    obj: &Value,
    manager: Option<&str>,
    subresource: Option<&str>,
) -> Vec<ManagedFieldsEntry> {
    let types = list_types(t);
    let previous = current.map(managed_of).unwrap_or_default();
    patch::record_update(
        current.map(strip_managed).as_ref(),
        &strip_managed(obj),
        manager.unwrap_or("unknown"),
        &previous,
        &t.api_version(),
        subresource,
        types.as_ref(),
        &now_rfc3339(),
    )
}
