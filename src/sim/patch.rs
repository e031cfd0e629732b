//! TEMPORARY STUB (replaced by the real implementation).
#![allow(missing_docs, unused_variables)]
use serde_json::Value;
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListType {
    Atomic,
    Set,
    Map(Vec<String>),
}
pub trait ListTypes {
    fn list_type(&self, path: &[&str]) -> ListType;
}
pub struct BuiltinListTypes;
impl ListTypes for BuiltinListTypes {
    fn list_type(&self, _path: &[&str]) -> ListType {
        ListType::Atomic
    }
}
pub struct SchemaListTypes<'a> {
    pub schema: &'a Value,
}
impl ListTypes for SchemaListTypes<'_> {
    fn list_type(&self, _path: &[&str]) -> ListType {
        ListType::Atomic
    }
}
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error("bad patch: {0}")]
    Bad(String),
}
pub fn json_merge_patch(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch)
}
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let p: json_patch::Patch = serde_json::from_value(patch.clone()).map_err(|e| PatchError::Bad(e.to_string()))?;
    json_patch::patch(target, &p).map_err(|e| PatchError::Bad(e.to_string()))
}
pub fn strategic_merge_patch(target: &mut Value, patch: &Value, types: &dyn ListTypes) -> Result<(), PatchError> {
    json_patch::merge(target, patch);
    Ok(())
}
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManagedFieldsEntry {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub time: Option<String>,
    pub fields_type: String,
    pub fields_v1: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subresource: Option<String>,
}
pub fn field_set(obj: &Value, types: &dyn ListTypes) -> Value {
    Value::Null
}
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    pub manager: String,
    pub field: String,
}
#[allow(clippy::too_many_arguments)]
pub fn apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    managed: &[ManagedFieldsEntry],
    api_version: &str,
    subresource: Option<&str>,
    types: &dyn ListTypes,
    now: &str,
) -> Result<(Value, Vec<ManagedFieldsEntry>), Vec<Conflict>> {
    let mut v = live.cloned().unwrap_or(Value::Null);
    json_patch::merge(&mut v, applied);
    Ok((v, managed.to_vec()))
}
#[allow(clippy::too_many_arguments)]
pub fn record_update(
    old: Option<&Value>,
    new: &Value,
    manager: &str,
    managed: &[ManagedFieldsEntry],
    api_version: &str,
    subresource: Option<&str>,
    types: &dyn ListTypes,
    now: &str,
) -> Vec<ManagedFieldsEntry> {
    managed.to_vec()
}
pub fn conflict_message(conflicts: &[Conflict]) -> String {
    String::new()
}
