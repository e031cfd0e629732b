//! POST: a new object with the metadata the server owns (name, uid, creationTimestamp,
//! generation), admitted and defaulted, its fields owned by the creating manager.

use serde_json::{Value, json};

use super::admission;
use super::defaults;
use super::managed::{record_update, set_managed};
use super::object::{meta_str, metadata_mut, now_rfc3339, remove_field};
use super::options::WriteOptions;
use super::store::{Key, Locked, State};
use crate::sim::error::ApiError;
use crate::sim::registry::ResourceType;

/// Create an object (nothing stored on a dry run).
pub(super) fn create(
    tx: &mut Locked<'_>,
    t: &ResourceType,
    namespace: Option<&str>,
    body: Value,
    opts: &WriteOptions,
) -> Result<Value, ApiError> {
    let obj = prepare(tx, t, namespace, body, opts)?;
    let name = meta_str(&obj, "name").unwrap_or_default().to_string();
    let key = Key::new(t, namespace, &name);
    if tx.object(&key).is_some() {
        return Err(ApiError::already_exists(t, &name));
    }
    if opts.dry_run {
        return Ok(obj);
    }
    Ok(tx.commit(t, key, Some(obj), None))
}

/// The object a create stores: checked, named, with server metadata, admitted, defaulted, and
/// its fields owned by the write's manager.
pub(super) fn prepare(
    state: &State,
    t: &ResourceType,
    namespace: Option<&str>,
    mut obj: Value,
    opts: &WriteOptions,
) -> Result<Value, ApiError> {
    admission::check_object(&obj)?;
    admission::check_kind(t, &obj)?;
    let meta = metadata_mut(&mut obj);
    admission::check_request_namespace(t, namespace, meta)?;
    let name = admission::name_for_create(t, meta)?;
    set_server_metadata(t, namespace, name.clone(), &mut obj);
    admission::check_namespace(state, t, namespace, &name)?;
    obj["apiVersion"] = json!(t.api_version());
    obj["kind"] = json!(t.kind);
    if t.status {
        remove_field(&mut obj, "status");
    }
    let mut obj = admission::admit(t, obj, None, opts)?;
    defaults::on_write(t, &mut obj);
    defaults::on_create(t, &mut obj);
    let managed = record_update(t, None, &obj, opts.field_manager.as_deref(), None);
    set_managed(&mut obj, &managed);
    Ok(obj)
}

/// The metadata a new object gets from the server: its name and namespace, a uid, its creation
/// time, generation 1 when its type tracks one; none of what only the server writes later.
fn set_server_metadata(t: &ResourceType, namespace: Option<&str>, name: String, obj: &mut Value) {
    let meta = metadata_mut(obj);
    meta.insert("name".into(), Value::String(name));
    if t.namespaced {
        if let Some(ns) = namespace {
            meta.insert("namespace".into(), Value::String(ns.to_string()));
        }
    } else {
        meta.remove("namespace");
    }
    meta.insert("uid".into(), Value::String(uuid::Uuid::new_v4().to_string()));
    meta.insert("creationTimestamp".into(), Value::String(now_rfc3339()));
    meta.remove("resourceVersion");
    meta.remove("deletionTimestamp");
    meta.remove("deletionGracePeriodSeconds");
    meta.remove("managedFields");
    if t.tracks_generation() {
        meta.insert("generation".into(), json!(1));
    } else {
        meta.remove("generation");
    }
}
