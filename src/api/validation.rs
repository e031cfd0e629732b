//! Validation of an object against a CRD's OpenAPI v3 schema, as the API server does it:
//! structural checks (types, required, enums, bounds, patterns), pruning of unknown fields, then
//! the `x-kubernetes-validations` CEL rules (through `kube::core::cel`). Used by the unit tests
//! of the resource types and by `flywheel sim`, so both reject what a real server rejects.

use std::fmt;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::core::cel::{ErrorKind, Validator, apply_defaults};
use serde_json::{Map, Value};

/// Why a field failed, named as `metav1.StatusCause.reason` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldReason {
    /// `FieldValueRequired`.
    Required,
    /// `FieldValueInvalid`.
    Invalid,
    /// `FieldValueNotSupported` (not one of an enum).
    NotSupported,
    /// `FieldValueTooLong`.
    TooLong,
    /// `FieldValueTooMany`.
    TooMany,
    /// `FieldValueTypeInvalid`.
    TypeInvalid,
    /// `FieldValueForbidden`.
    Forbidden,
    /// `FieldValueDuplicate`.
    Duplicate,
}

impl FieldReason {
    /// The reason as the API server spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Required => "FieldValueRequired",
            Self::Invalid => "FieldValueInvalid",
            Self::NotSupported => "FieldValueNotSupported",
            Self::TooLong => "FieldValueTooLong",
            Self::TooMany => "FieldValueTooMany",
            Self::TypeInvalid => "FieldValueTypeInvalid",
            Self::Forbidden => "FieldValueForbidden",
            Self::Duplicate => "FieldValueDuplicate",
        }
    }

    fn from_cel(reason: Option<&str>) -> Self {
        match reason {
            Some("FieldValueRequired") => Self::Required,
            Some("FieldValueForbidden") => Self::Forbidden,
            Some("FieldValueDuplicate") => Self::Duplicate,
            _ => Self::Invalid,
        }
    }
}

/// One field that failed validation: a `StatusCause` of a 422 Invalid answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Why.
    pub reason: FieldReason,
    /// Path of the field, `spec.rollout.steps[1].weight`; `<nil>` when it is about the object.
    pub field: String,
    /// The message, as the API server words it.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// The `openAPIV3Schema` of a CRD's storage version, as JSON.
pub fn storage_schema(crd: &CustomResourceDefinition) -> Option<Value> {
    let version = crd.spec.versions.iter().find(|v| v.storage).or_else(|| crd.spec.versions.first())?;
    let schema = version.schema.as_ref()?.open_api_v3_schema.as_ref()?;
    serde_json::to_value(schema).ok()
}

/// What the API server does with a custom resource body before storing it: prune unknown fields,
/// apply schema defaults, then [`validate`]. Returns the object to store and the paths pruned,
/// or the field errors of a 422 Invalid answer.
pub fn admit(schema: &Value, object: &Value, old: Option<&Value>) -> Result<Admitted, Vec<FieldError>> {
    let mut pruned = object.clone();
    let removed = prune(schema, &mut pruned);
    let defaulted = apply_defaults(schema, &pruned);
    let old = old.map(|o| apply_defaults(schema, o));
    let errors = validate(schema, &defaulted, old.as_ref());
    if errors.is_empty() { Ok(Admitted { object: defaulted, pruned: removed }) } else { Err(errors) }
}

/// An object accepted by [`admit`].
#[derive(Debug, Clone, PartialEq)]
pub struct Admitted {
    /// The object as it would be stored: pruned and defaulted.
    pub object: Value,
    /// Paths of unknown fields that were removed.
    pub pruned: Vec<String>,
}

/// Validate `object` against `schema` (an `openAPIV3Schema`) as the API server does on a create
/// (`old` = `None`) or an update, in the real server's order: the OpenAPI schema validator first
/// (depth first; at each node the type, the string bounds, the number bounds, the list's items
/// then its bounds, the enum, then an object's properties, by name, then its required fields),
/// then the list-type checks (duplicates in sets and maps), then the CEL rules, unless a schema
/// error blocks them (a wrong type, a missing required field, an unsupported enum value, a value
/// too long or with too many items): then one extra cause says the rules were not checked. A bound
/// or pattern violation does not block the rules. The object should already be pruned.
pub fn validate(schema: &Value, object: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errors = Vec::new();
    check(schema, object, "", &mut errors);
    check_list_types(schema, object, "", &mut errors);
    if !has_cel_rules(schema) {
        return errors;
    }
    let blocking = errors.iter().any(|e| {
        matches!(
            e.reason,
            FieldReason::NotSupported
                | FieldReason::Required
                | FieldReason::TooLong
                | FieldReason::TooMany
                | FieldReason::TypeInvalid
        )
    });
    if blocking {
        errors.push(FieldError {
            reason: FieldReason::Invalid,
            field: "<nil>".into(),
            message: "Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation".into(),
        });
        return errors;
    }
    errors.extend(validate_cel(schema, object, old));
    errors
}

/// Evaluate only the `x-kubernetes-validations` rules of `schema` on `object`, wording the
/// failures as the API server does.
pub fn validate_cel(schema: &Value, object: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let Err(errors) = Validator::new().validate(schema, object, old) else {
        return Vec::new();
    };
    let mut rules = Vec::new();
    collect_rules(schema, &mut rules);
    errors
        .into_vec()
        .into_iter()
        .map(|e| {
            let rule = rules.iter().find(|r| r.get("rule").and_then(Value::as_str) == Some(e.rule.as_str()));
            let rule_message = rule.and_then(|r| r.get("message")).and_then(Value::as_str).unwrap_or(&e.rule);
            let field_path = rule.and_then(|r| r.get("fieldPath")).and_then(Value::as_str).unwrap_or("");
            let reason = FieldReason::from_cel(e.reason.as_deref());
            if e.kind == ErrorKind::ValidationFailure {
                let field = if e.field_path.is_empty() { "<nil>".to_string() } else { e.field_path.clone() };
                // The failing node's value is quoted when it is a scalar, omitted for an object or array.
                let node_path = e.field_path.strip_suffix(field_path.trim_start_matches('.')).unwrap_or(&e.field_path);
                let node_path = node_path.trim_end_matches('.');
                let shown = match lookup(object, node_path) {
                    Some(v) if !v.is_object() && !v.is_array() => format!("{}: ", quote(v)),
                    _ => String::new(),
                };
                let message = match reason {
                    FieldReason::Forbidden => format!("Forbidden: {}", e.message),
                    FieldReason::Required => format!("Required value: {}", e.message),
                    FieldReason::Duplicate => format!("Duplicate value: {shown}{}", e.message),
                    _ => format!("Invalid value: {shown}{}", e.message),
                };
                FieldError { reason, field, message }
            } else {
                // An evaluation error is reported at the rule's node, not its fieldPath.
                let node = e.field_path.strip_suffix(field_path.trim_start_matches('.')).unwrap_or(&e.field_path);
                let node = node.trim_end_matches('.');
                let field = if node.is_empty() { "<nil>".to_string() } else { node.to_string() };
                let detail = e.message.strip_prefix("rule evaluation error: ").unwrap_or(&e.message);
                let detail = lower_first(detail);
                let node_type = lookup(object, node).map_or("object", json_type);
                FieldError {
                    reason: FieldReason::Invalid,
                    field,
                    message: format!("Invalid value: \"{node_type}\": {detail} evaluating rule: {rule_message}"),
                }
            }
        })
        .collect()
}

fn collect_rules<'a>(schema: &'a Value, out: &mut Vec<&'a Value>) {
    match schema {
        Value::Object(map) => {
            if let Some(rules) = map.get("x-kubernetes-validations").and_then(Value::as_array) {
                out.extend(rules.iter());
            }
            for value in map.values() {
                collect_rules(value, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_rules(v, out)),
        _ => {}
    }
}

fn lower_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// The value at a dotted path with `[i]` indexes (`spec.steps[1].weight`).
fn lookup<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    let mut current = object;
    if path.is_empty() {
        return Some(current);
    }
    for part in path.split('.') {
        let (name, rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            current = current.get(name)?;
        }
        for index in rest.split(['[', ']']).filter(|s| !s.is_empty()) {
            current = match index.parse::<usize>() {
                Ok(i) => current.get(i)?,
                Err(_) => current.get(index)?,
            };
        }
    }
    Some(current)
}

fn has_cel_rules(schema: &Value) -> bool {
    match schema {
        Value::Object(map) => map.contains_key("x-kubernetes-validations") || map.values().any(has_cel_rules),
        Value::Array(items) => items.iter().any(has_cel_rules),
        _ => false,
    }
}

/// Remove fields the schema does not declare (unless `x-kubernetes-preserve-unknown-fields`),
/// returning the paths removed: what the API server prunes, and what `fieldValidation=Strict`
/// reports as unknown. `metadata` at the root is left to the caller.
pub fn prune(schema: &Value, object: &mut Value) -> Vec<String> {
    let mut removed = Vec::new();
    prune_at(schema, object, "", true, &mut removed);
    removed
}

fn prune_at(schema: &Value, object: &mut Value, path: &str, root: bool, removed: &mut Vec<String>) {
    if preserves_unknown(schema) && schema.get("properties").is_none() && schema.get("items").is_none() {
        return;
    }
    match object {
        Value::Object(map) => {
            if let Some(additional) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                for (key, value) in map.iter_mut() {
                    prune_at(additional, value, &join(path, key), false, removed);
                }
                return;
            }
            let properties = schema.get("properties").and_then(Value::as_object);
            let keep_unknown = preserves_unknown(schema) || is_embedded(schema);
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                if root && (key == "apiVersion" || key == "kind" || key == "metadata") {
                    continue;
                }
                match properties.and_then(|p| p.get(&key)) {
                    Some(sub) => {
                        if let Some(value) = map.get_mut(&key) {
                            prune_at(sub, value, &join(path, &key), false, removed);
                        }
                    }
                    None if keep_unknown || (is_embedded(schema) && is_embedded_meta_key(&key)) => {}
                    None => {
                        map.remove(&key);
                        removed.push(join(path, &key));
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune_at(item_schema, item, &format!("{path}[{i}]"), false, removed);
                }
            }
        }
        _ => {}
    }
}

fn preserves_unknown(schema: &Value) -> bool {
    schema.get("x-kubernetes-preserve-unknown-fields").and_then(Value::as_bool) == Some(true)
}

fn is_embedded(schema: &Value) -> bool {
    schema.get("x-kubernetes-embedded-resource").and_then(Value::as_bool) == Some(true)
}

fn is_embedded_meta_key(key: &str) -> bool {
    matches!(key, "apiVersion" | "kind" | "metadata")
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The value as the API server quotes it in a message: strings in quotes, numbers bare.
fn quote(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{s:?}"),
        Value::Object(_) => "\"object\"".into(),
        Value::Array(_) => "\"array\"".into(),
        other => other.to_string(),
    }
}

fn invalid(errors: &mut Vec<FieldError>, path: &str, value: &Value, detail: String) {
    errors.push(FieldError {
        reason: FieldReason::Invalid,
        field: path.to_string(),
        message: format!("Invalid value: {}: {path} in body {detail}", quote(value)),
    });
}

fn type_matches(expected: &str, value: &Value, schema: &Value) -> bool {
    let int_or_string = schema.get("x-kubernetes-int-or-string").and_then(Value::as_bool) == Some(true);
    if int_or_string {
        return matches!(value, Value::String(_)) || value.as_i64().is_some() || value.as_u64().is_some();
    }
    match expected {
        "integer" => value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0),
        "number" => value.is_number(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => true,
    }
}

/// The OpenAPI schema validator at one node (`SchemaValidator.Validate`): its validators in
/// their order, each applying when the value is of its kind.
fn check(schema: &Value, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    if value.is_null() {
        let nullable = schema.get("nullable").and_then(Value::as_bool) == Some(true);
        if !nullable
            && !path.is_empty()
            && let Some(expected) = schema.get("type").and_then(Value::as_str)
        {
            errors.push(FieldError {
                reason: FieldReason::Invalid,
                field: path.to_string(),
                message: format!("Invalid value: \"null\": {path} in body must be of type {expected}: \"null\""),
            });
        }
        return;
    }
    let typed = match schema.get("type").and_then(Value::as_str) {
        Some(expected) if !type_matches(expected, value, schema) => {
            errors.push(FieldError {
                reason: FieldReason::TypeInvalid,
                field: path.to_string(),
                message: format!(
                    "Invalid value: {}: {path} in body must be of type {expected}: \"{}\"",
                    quote(value),
                    json_type(value)
                ),
            });
            false
        }
        _ => true,
    };
    if typed {
        match value {
            Value::String(s) => check_string(schema, s, value, path, errors),
            Value::Number(_) => check_number(schema, value, path, errors),
            Value::Array(items) => check_array(schema, items, path, errors),
            _ => {}
        }
    }
    // The enum (the common validator) applies whatever the value's type.
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let list: Vec<String> = allowed.iter().map(quote).collect();
        errors.push(FieldError {
            reason: FieldReason::NotSupported,
            field: path.to_string(),
            message: format!("Unsupported value: {}: supported values: {}", quote(value), list.join(", ")),
        });
    }
    if typed && let Value::Object(map) = value {
        check_object(schema, map, value, path, errors);
    }
}

/// The string validator: the first of maxLength, minLength, pattern that fails.
fn check_string(schema: &Value, s: &str, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let len = s.chars().count() as u64;
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
        && len > max
    {
        errors.push(FieldError {
            reason: FieldReason::TooLong,
            field: path.to_string(),
            message: format!("Too long: may not be more than {max} bytes"),
        });
        return;
    }
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
        && len < min
    {
        invalid(errors, path, value, format!("should be at least {min} chars long"));
        return;
    }
    if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
        match regex::Regex::new(pattern) {
            Ok(re) if !re.is_match(s) => invalid(errors, path, value, format!("should match '{pattern}'")),
            Ok(_) => {}
            Err(_) => invalid(errors, path, value, format!("has an unusable pattern '{pattern}'")),
        }
    }
}

/// The number validator: minimum, then maximum.
fn check_number(schema: &Value, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let Some(v) = value.as_f64() else { return };
    if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
        let exclusive = schema.get("exclusiveMinimum").and_then(Value::as_bool) == Some(true);
        if v < min || (exclusive && v <= min) {
            let rel = if exclusive { "greater than" } else { "greater than or equal to" };
            invalid(errors, path, value, format!("should be {rel} {min}"));
        }
    }
    if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
        let exclusive = schema.get("exclusiveMaximum").and_then(Value::as_bool) == Some(true);
        if v > max || (exclusive && v >= max) {
            let rel = if exclusive { "less than" } else { "less than or equal to" };
            invalid(errors, path, value, format!("should be {rel} {max}"));
        }
    }
}

/// The slice validator: every item, then minItems, then maxItems.
fn check_array(schema: &Value, items: &[Value], path: &str, errors: &mut Vec<FieldError>) {
    if let Some(item_schema) = schema.get("items") {
        for (i, item) in items.iter().enumerate() {
            check(item_schema, item, &format!("{path}[{i}]"), errors);
        }
    }
    let len = items.len() as u64;
    if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
        && len < min
    {
        invalid(errors, path, &Value::Array(items.to_vec()), format!("should have at least {min} items"));
    }
    if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
        && len > max
    {
        errors.push(FieldError {
            reason: FieldReason::TooMany,
            field: path.to_string(),
            message: format!("Too many: {len}: must have at most {max} items"),
        });
    }
}

/// The object validator: min/maxProperties (alone when they fail), the values under
/// additionalProperties, the properties by name, then the required fields in their order.
fn check_object(schema: &Value, map: &Map<String, Value>, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let len = map.len() as u64;
    if let Some(min) = schema.get("minProperties").and_then(Value::as_u64)
        && len < min
    {
        invalid(errors, path, value, format!("should have at least {min} properties"));
        return;
    }
    if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64)
        && len > max
    {
        errors.push(FieldError {
            reason: FieldReason::TooMany,
            field: path.to_string(),
            message: format!("Too many: {len}: must have at most {max} items"),
        });
        return;
    }
    let properties = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties").filter(|a| a.is_object());
    let skip = |key: &str| path.is_empty() && (key == "metadata" || key == "apiVersion" || key == "kind");
    if let Some(sub) = additional {
        for (key, sub_value) in map {
            if skip(key) || properties.is_some_and(|p| p.contains_key(key)) {
                continue;
            }
            let sub_path = if properties.is_none() { format!("{path}[{key}]") } else { join(path, key) };
            check(sub, sub_value, &sub_path, errors);
        }
    }
    if let Some(properties) = properties {
        for (key, sub_value) in map {
            if skip(key) {
                continue;
            }
            if let Some(sub) = properties.get(key) {
                check(sub, sub_value, &join(path, key), errors);
            }
        }
    }
    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        for key in required.iter().filter_map(Value::as_str) {
            if path.is_empty() && key == "metadata" {
                continue;
            }
            if !map.contains_key(key) {
                errors.push(FieldError {
                    reason: FieldReason::Required,
                    field: join(path, key),
                    message: "Required value".into(),
                });
            }
        }
    }
}

/// `structurallisttype.ValidateListSetsAndMaps`, after the schema validator: duplicate items of
/// `x-kubernetes-list-type: set` and duplicate keys of `map` lists.
fn check_list_types(schema: &Value, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    match value {
        Value::Array(items) => {
            match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
                Some("set") => {
                    for (i, item) in items.iter().enumerate() {
                        if items[..i].contains(item) {
                            errors.push(FieldError {
                                reason: FieldReason::Duplicate,
                                field: format!("{path}[{i}]"),
                                message: format!("Duplicate value: {}", quote(item)),
                            });
                        }
                    }
                }
                Some("map") => {
                    let keys: Vec<&str> = schema
                        .get("x-kubernetes-list-map-keys")
                        .and_then(Value::as_array)
                        .map(|k| k.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    let key_of = |item: &Value| -> Vec<Value> {
                        keys.iter().map(|k| item.get(*k).cloned().unwrap_or(Value::Null)).collect()
                    };
                    for (i, item) in items.iter().enumerate() {
                        let key = key_of(item);
                        if items[..i].iter().any(|earlier| key_of(earlier) == key) {
                            let shown: Map<String, Value> = keys
                                .iter()
                                .map(|k| (k.to_string(), item.get(*k).cloned().unwrap_or(Value::Null)))
                                .collect();
                            errors.push(FieldError {
                                reason: FieldReason::Duplicate,
                                field: format!("{path}[{i}]"),
                                message: format!("Duplicate value: {}", Value::Object(shown)),
                            });
                        }
                    }
                }
                _ => {}
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check_list_types(item_schema, item, &format!("{path}[{i}]"), errors);
                }
            }
        }
        Value::Object(map) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (key, sub_value) in map {
                if let Some(sub) = properties.and_then(|p| p.get(key)) {
                    check_list_types(sub, sub_value, &join(path, key), errors);
                } else if let Some(sub) = additional {
                    let sub_path = if properties.is_none() { format!("{path}[{key}]") } else { join(path, key) };
                    check_list_types(sub, sub_value, &sub_path, errors);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The sample CRD of `shared/reference/` (a real API server's answers were captured with it).
    fn widget_schema() -> Value {
        let crd: CustomResourceDefinition = serde_yaml::from_str(include_str!("../../tests/fixtures/widget-crd.yaml"))
            .unwrap_or_else(|e| panic!("{e}"));
        storage_schema(&crd).unwrap_or_else(|| panic!("widget CRD has a schema"))
    }

    fn widget(spec: Value) -> Value {
        json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "bad"}, "spec": spec})
    }

    #[test]
    fn bounds_enum_and_length_answer_as_the_real_server() {
        // Reference: errors-validation-apply.md, "Invalid (schema bounds, enum, maxLength and a CEL rule together)".
        let obj =
            widget(json!({"replicas": 200, "minReplicas": 300, "mode": "sometimes", "name": "seventeen-chars-x"}));
        let errors = validate(&widget_schema(), &obj, None);
        let got: Vec<(&str, &str, &str)> =
            errors.iter().map(|e| (e.reason.as_str(), e.field.as_str(), e.message.as_str())).collect();
        assert_eq!(
            got,
            vec![
                (
                    "FieldValueNotSupported",
                    "spec.mode",
                    "Unsupported value: \"sometimes\": supported values: \"auto\", \"suggest\""
                ),
                ("FieldValueTooLong", "spec.name", "Too long: may not be more than 10 bytes"),
                (
                    "FieldValueInvalid",
                    "spec.replicas",
                    "Invalid value: 200: spec.replicas in body should be less than or equal to 100"
                ),
                (
                    "FieldValueInvalid",
                    "<nil>",
                    "Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation"
                ),
            ]
        );
    }

    #[test]
    fn cel_rule_with_field_path() {
        let obj = widget(json!({"replicas": 2, "minReplicas": 3}));
        let errors = validate(&widget_schema(), &obj, None);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].field, "spec.minReplicas");
        assert_eq!(errors[0].reason, FieldReason::Invalid);
        // Reference: errors-validation-apply.md, "Invalid (CEL rule alone)".
        assert_eq!(errors[0].message, "Invalid value: minReplicas must not exceed replicas");
        assert!(validate(&widget_schema(), &widget(json!({"replicas": 3, "minReplicas": 3})), None).is_empty());
    }

    #[test]
    fn cel_rule_reading_an_absent_field_rejects() {
        // Reference: errors-validation-apply.md, "A CEL rule that reads an absent optional field".
        let errors = validate(&widget_schema(), &widget(json!({"replicas": 1})), None);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].field, "spec");
        assert_eq!(
            errors[0].message,
            "Invalid value: \"object\": no such key: minReplicas evaluating rule: minReplicas must not exceed replicas"
        );
    }

    #[test]
    fn types_required_items_and_sets() {
        let schema = json!({
            "type": "object",
            "required": ["a"],
            "properties": {
                "a": {"type": "integer"},
                "tags": {"type": "array", "maxItems": 2, "x-kubernetes-list-type": "set", "items": {"type": "string", "pattern": "^[a-z]+$"}},
                "labels": {"type": "object", "maxProperties": 1, "additionalProperties": {"type": "string", "minLength": 2}}
            }
        });
        let errors = validate(&schema, &json!({"tags": ["x", "x", "Y"], "labels": {"k": "v", "l": "vv"}}), None);
        let got: Vec<(&str, &str)> = errors.iter().map(|e| (e.reason.as_str(), e.field.as_str())).collect();
        // kube-openapi's order: properties by name (maxProperties alone when it fails; a list's
        // items before its bounds), required fields after them, list-type duplicates last.
        assert_eq!(
            got,
            vec![
                ("FieldValueTooMany", "labels"),
                ("FieldValueInvalid", "tags[2]"),
                ("FieldValueTooMany", "tags"),
                ("FieldValueRequired", "a"),
                ("FieldValueDuplicate", "tags[1]"),
            ]
        );
        let errors = validate(&schema, &json!({"a": "three"}), None);
        assert_eq!(errors[0].reason, FieldReason::TypeInvalid);
        assert_eq!(errors[0].message, "Invalid value: \"three\": a in body must be of type integer: \"string\"");
    }

    /// Within one node the validators keep kube-openapi's order, and only some schema errors keep
    /// the CEL rules from running (`hasBlockingErr`).
    #[test]
    fn cause_order_and_blocking_errors() {
        let schema = json!({"type": "object", "properties": {
            "code": {"type": "string", "maxLength": 3, "enum": ["ab", "cd"]},
            "n": {"type": "integer", "enum": [1, 2], "maximum": 5}
        }});
        let errors = validate(&schema, &json!({"code": "abcdef", "n": 9}), None);
        let got: Vec<(&str, &str)> = errors.iter().map(|e| (e.reason.as_str(), e.field.as_str())).collect();
        assert_eq!(
            got,
            vec![
                ("FieldValueTooLong", "code"),
                ("FieldValueNotSupported", "code"),
                ("FieldValueInvalid", "n"),
                ("FieldValueNotSupported", "n"),
            ]
        );
        // A bound alone does not block the CEL rule: both are reported, the rule's last.
        let errors = validate(&widget_schema(), &widget(json!({"replicas": 200, "minReplicas": 300})), None);
        let got: Vec<(&str, &str)> = errors.iter().map(|e| (e.field.as_str(), e.message.as_str())).collect();
        assert_eq!(
            got,
            vec![
                ("spec.replicas", "Invalid value: 200: spec.replicas in body should be less than or equal to 100"),
                ("spec.minReplicas", "Invalid value: minReplicas must not exceed replicas"),
            ]
        );
    }

    #[test]
    fn prune_removes_unknown_fields_but_keeps_preserved_ones() {
        let schema = json!({
            "type": "object",
            "properties": {
                "spec": {"type": "object", "properties": {
                    "known": {"type": "string"},
                    "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                    "list": {"type": "array", "items": {"type": "object", "properties": {"k": {"type": "string"}}}}
                }}
            }
        });
        let mut obj = json!({"apiVersion": "v", "kind": "K", "metadata": {"name": "n"}, "spec": {
            "known": "x", "bogus": 1, "free": {"anything": {"goes": true}}, "list": [{"k": "a", "z": 1}]
        }});
        let removed = prune(&schema, &mut obj);
        assert_eq!(removed, vec!["spec.bogus".to_string(), "spec.list[0].z".to_string()]);
        assert_eq!(obj["spec"]["free"]["anything"]["goes"], json!(true));
        assert_eq!(obj["metadata"]["name"], json!("n"));
    }

    #[test]
    fn admit_defaults_before_cel() {
        let schema = json!({
            "type": "object",
            "properties": {"spec": {"type": "object",
                "x-kubernetes-validations": [{"rule": "self.min <= self.max", "message": "min above max"}],
                "properties": {"min": {"type": "integer", "default": 1}, "max": {"type": "integer", "default": 1}}}}
        });
        let ok = admit(&schema, &json!({"spec": {"max": 3}}), None).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(ok.object["spec"]["min"], json!(1));
        let errors = admit(&schema, &json!({"spec": {"min": 5}}), None).err().unwrap_or_default();
        assert_eq!(errors.len(), 1);
        assert!(errors[0].message.contains("min above max"));
    }
}
