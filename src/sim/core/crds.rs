//! CustomResourceDefinitions as the apiextensions server keeps them: the types a CRD serves once
//! its names are accepted, and the defaults its strategy fills in. The naming and establishing
//! controllers that set its conditions are `controllers::crd_establishing`.

use serde_json::{Value, json};

use super::object::meta_str;
use crate::sim::registry::{Registry, ResourceType, from_crd};

/// Whether `t` is the CustomResourceDefinition type.
pub(super) fn is_crd_type(t: &ResourceType) -> bool {
    t.group == "apiextensions.k8s.io" && t.plural == "customresourcedefinitions"
}

/// Whether a CRD's condition `type_` is True.
pub fn crd_condition(crd: &Value, type_: &str) -> bool {
    crd.pointer("/status/conditions").and_then(Value::as_array).is_some_and(|cs| {
        cs.iter().any(|c| {
            c.get("type").and_then(Value::as_str) == Some(type_)
                && c.get("status").and_then(Value::as_str) == Some("True")
        })
    })
}

/// Serve a CRD's types once its names are accepted (as the CRD handler: `NamesAccepted` or
/// `Established` true), stop serving them when it goes.
pub(super) fn sync(registry: &mut Registry, crd: &Value, deleted: bool) {
    let Some(name) = meta_str(crd, "name").map(str::to_string) else { return };
    registry.remove_crd(&name);
    if deleted || !(crd_condition(crd, "NamesAccepted") || crd_condition(crd, "Established")) {
        return;
    }
    if let Ok(types) = from_crd(crd) {
        for t in types {
            registry.insert(t);
        }
    }
}

/// `SetDefaults_CustomResourceDefinitionSpec`, on every write: singular and listKind from the
/// kind, conversion None.
pub(super) fn default_spec(crd: &mut Value) {
    let Some(spec) = crd.get_mut("spec").and_then(Value::as_object_mut) else { return };
    if let Some(names) = spec.get_mut("names").and_then(Value::as_object_mut)
        && let Some(kind) = names.get("kind").and_then(Value::as_str).map(str::to_string)
    {
        if names.get("singular").and_then(Value::as_str).is_none_or(str::is_empty) {
            names.insert("singular".into(), json!(kind.to_lowercase()));
        }
        if names.get("listKind").and_then(Value::as_str).is_none_or(str::is_empty) {
            names.insert("listKind".into(), json!(format!("{kind}List")));
        }
    }
    if !spec.contains_key("conversion") {
        spec.insert("conversion".into(), json!({"strategy": "None"}));
    }
}

/// As the CRD strategy's PrepareForCreate: an empty status but the storage version; the naming
/// and establishing controllers (`controllers::crd_establishing`) fill in the rest.
pub(super) fn status_on_create(crd: &mut Value) {
    let stored: Vec<Value> = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .map(|vs| {
            vs.iter()
                .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
                .filter_map(|v| v.get("name").cloned())
                .collect()
        })
        .unwrap_or_default();
    crd["status"] = json!({
        "acceptedNames": {"plural": "", "kind": ""},
        "storedVersions": stored,
    });
}
