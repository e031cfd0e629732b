//! Small helpers over objects as JSON: metadata access, paths like `.spec.replicas`, the time as
//! the API server writes it, generated names and stable hashes.

use serde_json::{Map, Value, json};

/// The current time as the API server writes it (RFC 3339, seconds).
pub fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A string field of `metadata`.
pub(super) fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata").and_then(|m| m.get(field)).and_then(Value::as_str)
}

/// The object's `metadata`, made an object first when it is missing or not one.
pub(super) fn metadata_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        match obj.as_object_mut() {
            Some(root) => {
                root.insert("metadata".into(), Value::Object(Map::new()));
            }
            None => *obj = json!({"metadata": {}}),
        }
    }
    match obj.get_mut("metadata").and_then(Value::as_object_mut) {
        Some(meta) => meta,
        None => unreachable!("metadata was made an object above"),
    }
}

/// Whether the object has a `deletionTimestamp`.
pub(super) fn is_deleting(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp").is_some()
}

/// The object's finalizers (empty when it has none).
pub(super) fn finalizers_of(obj: &Value) -> Vec<Value> {
    obj.pointer("/metadata/finalizers").and_then(Value::as_array).cloned().unwrap_or_default()
}

/// Remove a top-level field.
pub(super) fn remove_field(obj: &mut Value, field: &str) {
    if let Some(m) = obj.as_object_mut() {
        m.remove(field);
    }
}

/// `n` characters of the alphabet the API server uses for generated names.
pub(crate) fn random_suffix(n: usize) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..n).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
}

/// FNV-1a of a string as hex: a stable hash for pod-template hashes and OpenAPI document hashes.
pub(crate) fn fnv1a_hex(text: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// Whether `name` is a lowercase RFC 1123 subdomain.
pub(super) fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|part| {
            !part.is_empty()
                && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

/// The object without metadata and status: what a spec change is measured on.
pub(super) fn content(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
        m.remove("apiVersion");
        m.remove("kind");
    }
    v
}

/// The value at a JSONPath like `.spec.replicas`.
pub fn at_path<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let pointer: String = path.split('.').filter(|p| !p.is_empty()).map(|p| format!("/{p}")).collect();
    obj.pointer(&pointer)
}

/// Set the value at a JSONPath like `.spec.replicas`, making the objects on the way.
pub(super) fn set_at_path(obj: &mut Value, path: &str, value: Value) {
    let parts: Vec<&str> = path.split('.').filter(|p| !p.is_empty()).collect();
    let mut current = obj;
    for (i, part) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            if let Some(m) = current.as_object_mut() {
                m.insert((*part).to_string(), value);
            }
            return;
        }
        if !current.get(*part).is_some_and(Value::is_object) {
            current[*part] = json!({});
        }
        match current.get_mut(*part) {
            Some(next) => current = next,
            None => return,
        }
    }
}
