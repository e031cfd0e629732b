//! PUT, and the steps every change to an existing object takes (PUT and PATCH alike): check the
//! body, keep what the endpoint may not change, admit and default, bump the generation, record
//! managed fields, store nothing when nothing changed.

use serde_json::{Value, json};

use super::admission;
use super::defaults;
use super::delete;
use super::managed::{record_update, set_managed};
use super::object::{content, meta_str, metadata_mut};
use super::options::WriteOptions;
use super::store::{Key, Locked};
use super::subresources::{Sub, keep_status, scale_into, with_status_of};
use crate::sim::error::ApiError;
use crate::sim::patch::ManagedFieldsEntry;
use crate::sim::registry::ResourceType;

/// Metadata only the server writes: a write keeps the live values.
const SERVER_METADATA: [&str; 7] =
    ["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation", "name", "namespace"];

/// What one write to an existing object addresses.
pub(super) struct Target<'a> {
    /// The object's type.
    pub(super) t: &'a ResourceType,
    /// The namespace as the request names it.
    pub(super) namespace: Option<&'a str>,
    /// Where the object is kept.
    pub(super) key: Key,
    /// The endpoint: the object, its status or its scale.
    pub(super) sub: Option<Sub>,
    /// The write's options.
    pub(super) opts: &'a WriteOptions,
}

impl<'a> Target<'a> {
    /// The object `name` of type `t`, through the endpoint `sub`.
    pub(super) fn new(
        t: &'a ResourceType,
        namespace: Option<&'a str>,
        name: &str,
        sub: Option<Sub>,
        opts: &'a WriteOptions,
    ) -> Self {
        Self { t, namespace, key: Key::new(t, namespace, name), sub, opts }
    }

    /// The object's name.
    pub(super) fn name(&self) -> &str {
        &self.key.name
    }
}

/// PUT: replace an object (or its status, or its scale).
pub(super) fn update(tx: &mut Locked<'_>, w: Target<'_>, body: Value) -> Result<Value, ApiError> {
    let current = tx.existing(w.t, &w.key)?;
    if let Some(rv) = body.pointer("/metadata/resourceVersion").and_then(Value::as_str)
        && Some(rv) != meta_str(&current, "resourceVersion")
    {
        return Err(ApiError::stale(w.t, w.name()));
    }
    let desired = match w.sub {
        Some(Sub::Scale) => scale_into(w.t, &current, &body)?,
        _ => body,
    };
    finish_write(tx, w, current, desired, None)
}

/// The common tail of update and patch: keep what the endpoint may not change, validate,
/// bump generation, record managed fields (or take those an apply computed), finish a deletion
/// whose finalizers are gone.
pub(super) fn finish_write(
    tx: &mut Locked<'_>,
    w: Target<'_>,
    current: Value,
    desired: Value,
    applied_managed: Option<Vec<ManagedFieldsEntry>>,
) -> Result<Value, ApiError> {
    admission::check_object(&desired)?;
    admission::check_kind(w.t, &desired)?;
    admission::check_name(&desired, w.name())?;
    let obj = endpoint_view(&w, &current, desired)?;
    let mut obj = admit_and_default(&w, obj, &current)?;
    bump_generation(&w, &current, &mut obj);
    let managed = applied_managed.unwrap_or_else(|| {
        record_update(w.t, Some(&current), &obj, w.opts.field_manager.as_deref(), w.sub.map(Sub::name))
    });
    set_managed(&mut obj, &managed);
    // Nothing changed: no new resourceVersion, no event (as the real server).
    if unchanged(&obj, &current) {
        return Ok(current);
    }
    if w.opts.dry_run {
        return Ok(obj);
    }
    Ok(delete::store_or_finish_deletion(tx, w.t, w.key, obj, &current))
}

/// What the endpoint may change: `/status` only the status; the object (or its scale) all but
/// the status of a type with a status subresource and the metadata the server owns, and no
/// finalizer added while it is being deleted.
fn endpoint_view(w: &Target<'_>, current: &Value, desired: Value) -> Result<Value, ApiError> {
    if w.sub == Some(Sub::Status) {
        return Ok(with_status_of(current, &desired));
    }
    let mut obj = keep_status(w.t, current, desired);
    keep_server_metadata(current, &mut obj);
    delete::forbid_new_finalizers(w.t, w.name(), current, &obj)?;
    Ok(obj)
}

/// Put back the live values of the metadata only the server writes (removing those it lacks).
fn keep_server_metadata(current: &Value, obj: &mut Value) {
    let current_meta = current.get("metadata").cloned().unwrap_or_else(|| json!({}));
    let meta = metadata_mut(obj);
    for k in SERVER_METADATA {
        match current_meta.get(k) {
            Some(v) => {
                meta.insert(k.into(), v.clone());
            }
            None => {
                meta.remove(k);
            }
        }
    }
}

/// The type's apiVersion and kind, then admission, then (on the object itself) the defaults of
/// every write.
fn admit_and_default(w: &Target<'_>, mut obj: Value, current: &Value) -> Result<Value, ApiError> {
    obj["apiVersion"] = json!(w.t.api_version());
    obj["kind"] = json!(w.t.kind);
    let mut obj = admission::admit(w.t, obj, Some(current), w.opts)?;
    if w.sub.is_none() {
        defaults::on_write(w.t, &mut obj);
    }
    Ok(obj)
}

/// A change of anything but metadata and status (not through `/status`) bumps the generation of
/// a type that tracks one.
fn bump_generation(w: &Target<'_>, current: &Value, obj: &mut Value) {
    if w.t.tracks_generation() && content(obj) != content(current) && w.sub != Some(Sub::Status) {
        let generation = current.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
        metadata_mut(obj).insert("generation".into(), json!(generation + 1));
    }
}

/// Whether `obj` is `current` but for its resourceVersion.
fn unchanged(obj: &Value, current: &Value) -> bool {
    let mut probe = obj.clone();
    metadata_mut(&mut probe)
        .insert("resourceVersion".into(), current.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null));
    probe == *current
}
