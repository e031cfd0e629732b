//! What a write must pass before it is stored: a body that is an object of the URL's kind and
//! name, a valid name, a namespace that exists and is not terminating, and for a custom resource
//! its schema (pruning, defaults, structural checks and CEL through `api::validation`).

use serde_json::{Map, Value};

use super::managed::strip_managed;
use super::object::{is_dns_subdomain, meta_str, metadata_mut, random_suffix};
use super::options::{FieldValidation, WriteOptions};
use super::store::{Key, State};
use crate::api::validation::{self, FieldError, FieldReason};
use crate::sim::error::ApiError;
use crate::sim::registry::ResourceType;

/// The body must be a JSON object.
pub(super) fn check_object(obj: &Value) -> Result<(), ApiError> {
    if obj.is_object() { Ok(()) } else { Err(ApiError::bad_request("the body of the request must be a JSON object")) }
}

/// The body's kind, when it names one, must be the URL's.
pub(super) fn check_kind(t: &ResourceType, obj: &Value) -> Result<(), ApiError> {
    if let Some(kind) = obj.get("kind").and_then(Value::as_str)
        && kind != t.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind of the object ({kind}) does not match the kind of the URL ({})",
            t.kind
        )));
    }
    Ok(())
}

/// The body's name, when it names one, must be the URL's.
pub(super) fn check_name(obj: &Value, name: &str) -> Result<(), ApiError> {
    if meta_str(obj, "name").is_some_and(|n| n != name) {
        return Err(ApiError::bad_request("the name of the object does not match the name on the URL"));
    }
    Ok(())
}

/// The body's namespace, when it names one, must be the request's.
pub(super) fn check_request_namespace(
    t: &ResourceType,
    namespace: Option<&str>,
    meta: &Map<String, Value>,
) -> Result<(), ApiError> {
    if let (Some(ns), Some(body_ns)) = (namespace, meta.get("namespace").and_then(Value::as_str))
        && t.namespaced
        && ns != body_ns
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    Ok(())
}

/// The name a new object gets: its own, or its `generateName` with a random suffix; it must be
/// a DNS subdomain (but an Event's).
pub(super) fn name_for_create(t: &ResourceType, meta: &Map<String, Value>) -> Result<String, ApiError> {
    let name = match meta.get("name").and_then(Value::as_str) {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => match meta.get("generateName").and_then(Value::as_str) {
            Some(prefix) => format!("{prefix}{}", random_suffix(5)),
            None => {
                return Err(ApiError::invalid(
                    t,
                    "",
                    &[FieldError {
                        reason: FieldReason::Required,
                        field: "metadata.name".into(),
                        message: "Required value: name or generateName is required".into(),
                    }],
                ));
            }
        },
    };
    if !is_dns_subdomain(&name) && t.kind != "Event" {
        return Err(ApiError::invalid(
            t,
            &name,
            &[FieldError {
                reason: FieldReason::Invalid,
                field: "metadata.name".into(),
                message: format!(
                    "Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
                ),
            }],
        ));
    }
    Ok(name)
}

/// The namespace lifecycle: a namespaced object needs a namespace that exists and is not
/// terminating.
pub(super) fn check_namespace(
    state: &State,
    t: &ResourceType,
    namespace: Option<&str>,
    name: &str,
) -> Result<(), ApiError> {
    if !t.namespaced {
        return Ok(());
    }
    let ns = namespace.ok_or_else(|| ApiError::bad_request("the namespace of the object must be set"))?;
    match state.object(&Key::namespace(ns)) {
        None => Err(ApiError::not_found(state.registry().get("", "v1", "namespaces").unwrap_or(t), ns)),
        Some(n) if n.pointer("/metadata/deletionTimestamp").is_some() => Err(ApiError::forbidden(format!(
            "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
            t.qualified(),
        ))),
        Some(_) => Ok(()),
    }
}

/// Prune, default and validate a custom resource; a no-op for built-in types.
pub(super) fn admit(t: &ResourceType, obj: Value, old: Option<&Value>, opts: &WriteOptions) -> Result<Value, ApiError> {
    let Some(schema) = &t.schema else { return Ok(obj) };
    let name = meta_str(&obj, "name").unwrap_or_default().to_string();
    let mut probe = obj.clone();
    let unknown = validation::prune(schema, &mut probe);
    if opts.field_validation == FieldValidation::Strict && !unknown.is_empty() {
        let list = unknown.iter().map(|u| format!("unknown field \"{u}\"")).collect::<Vec<_>>().join(", ");
        return Err(ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {list}",
            t.kind, t.version, t.kind
        )));
    }
    let old_stripped = old.map(strip_managed);
    match validation::admit(schema, &strip_managed(&obj), old_stripped.as_ref()) {
        Ok(admitted) => {
            let mut out = admitted.object;
            if let Some(mf) = obj.pointer("/metadata/managedFields") {
                metadata_mut(&mut out).insert("managedFields".into(), mf.clone());
            }
            Ok(out)
        }
        Err(errors) => Err(ApiError::invalid(t, &name, &errors)),
    }
}
