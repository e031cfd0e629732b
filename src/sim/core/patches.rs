//! PATCH: a JSON merge patch, JSON patch, strategic merge patch or server-side apply on an
//! object, its status or its scale (the algorithms are `sim::patch`); apply creates an object
//! that does not exist.

use serde_json::{Value, json};

use super::admission;
use super::create;
use super::managed::{list_types, managed_of, set_managed, strip_managed};
use super::object::{metadata_mut, now_rfc3339};
use super::options::{PatchKind, WriteOptions};
use super::store::Locked;
use super::subresources::{Sub, scale_into, scale_of};
use super::writes::{Target, finish_write};
use crate::api::validation::{FieldError, FieldReason};
use crate::sim::error::ApiError;
use crate::sim::patch::{self, ManagedFieldsEntry};
use crate::sim::registry::ResourceType;

/// Apply a patch of `kind` to the target; returns the object and whether it was created.
pub(super) fn patch(
    tx: &mut Locked<'_>,
    w: Target<'_>,
    kind: PatchKind,
    body: &Value,
) -> Result<(Value, bool), ApiError> {
    if kind == PatchKind::Strategic && w.t.custom {
        return Err(ApiError::unsupported_media_type("application/strategic-merge-patch+json"));
    }
    let Some(current) = tx.object(&w.key).cloned() else {
        if kind != PatchKind::Apply || w.sub.is_some() {
            return Err(ApiError::not_found(w.t, w.name()));
        }
        return apply_create(tx, w, body).map(|created| (created, true));
    };
    let base = match w.sub {
        Some(Sub::Scale) => scale_of(w.t, &current)?,
        _ => strip_managed(&current),
    };
    let (patched, applied_managed) = patched(&w, kind, base, &current, body)?;
    let desired = match w.sub {
        Some(Sub::Scale) => scale_into(w.t, &current, &patched)?,
        _ => patched,
    };
    let obj = finish_write(tx, w, current, desired, applied_managed)?;
    Ok((obj, false))
}

/// `base` (the object or its scale, without managed fields) with the patch applied, and the
/// managed fields an apply leaves (an update's are recorded later).
fn patched(
    w: &Target<'_>,
    kind: PatchKind,
    mut base: Value,
    current: &Value,
    body: &Value,
) -> Result<(Value, Option<Vec<ManagedFieldsEntry>>), ApiError> {
    let invalid = |e: patch::PatchError| patch_error(w.t, w.name(), &e);
    match kind {
        PatchKind::Merge => patch::json_merge_patch(&mut base, body),
        PatchKind::Json => patch::json_patch(&mut base, body).map_err(invalid)?,
        PatchKind::Strategic => {
            let types = list_types(w.t);
            patch::strategic_merge_patch(&mut base, body, types.as_ref()).map_err(invalid)?;
        }
        PatchKind::Apply => {
            let (merged, managed) = apply(w, &base, current, body)?;
            return Ok((merged, Some(managed)));
        }
    }
    Ok((base, None))
}

/// Server-side apply of `body` to the live object (`base` as the endpoint shows it): the merged
/// object and the managed fields after it; 409 on conflicts unless forced.
fn apply(
    w: &Target<'_>,
    base: &Value,
    current: &Value,
    body: &Value,
) -> Result<(Value, Vec<ManagedFieldsEntry>), ApiError> {
    let manager = apply_manager(w.opts)?;
    admission::check_name(body, w.name())?;
    let applied = match w.sub {
        Some(Sub::Status) => json!({"status": body.get("status").cloned().unwrap_or(Value::Null)}),
        Some(Sub::Scale) => body.clone(),
        None => strip_for_apply(body, w.t.status),
    };
    let types = list_types(w.t);
    patch::apply(
        Some(base),
        &applied,
        &manager,
        w.opts.force,
        &managed_of(current),
        &w.t.api_version(),
        w.sub.map(Sub::name),
        types.as_ref(),
        &now_rfc3339(),
    )
    .map_err(|c| conflict_error(&c))
}

/// Server-side apply of an object that does not exist: created as a POST would, its fields
/// owned by the applying manager.
fn apply_create(tx: &mut Locked<'_>, w: Target<'_>, body: &Value) -> Result<Value, ApiError> {
    let manager = apply_manager(w.opts)?;
    let mut obj = body.clone();
    admission::check_kind(w.t, &obj)?;
    admission::check_name(&obj, w.name())?;
    metadata_mut(&mut obj).insert("name".into(), json!(w.name()));
    let create_opts = WriteOptions { field_manager: Some(manager.clone()), ..w.opts.clone() };
    let mut created = create::prepare(tx, w.t, w.namespace, obj, &create_opts)?;
    let types = list_types(w.t);
    let applied_fields = strip_for_apply(body, w.t.status);
    let (_, managed) = patch::apply(
        None,
        &applied_fields,
        &manager,
        true,
        &[],
        &w.t.api_version(),
        None,
        types.as_ref(),
        &now_rfc3339(),
    )
    .map_err(|c| conflict_error(&c))?;
    set_managed(&mut created, &managed);
    if w.opts.dry_run {
        return Ok(created);
    }
    Ok(tx.commit(w.t, w.key, Some(created), None))
}

/// The manager an apply must name.
fn apply_manager(opts: &WriteOptions) -> Result<String, ApiError> {
    opts.field_manager
        .clone()
        .ok_or_else(|| ApiError::bad_request("PATCH requests with apply content type must specify a fieldManager"))
}

/// The applied configuration without what apply never owns.
fn strip_for_apply(body: &Value, status_subresource: bool) -> Value {
    let mut v = body.clone();
    if let Some(m) = v.as_object_mut() {
        if status_subresource {
            m.remove("status");
        }
        if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
            for k in ["resourceVersion", "uid", "creationTimestamp", "managedFields", "generation", "deletionTimestamp"]
            {
                meta.remove(k);
            }
        }
    }
    v
}

fn patch_error(t: &ResourceType, name: &str, e: &patch::PatchError) -> ApiError {
    match e.status_code() {
        400 => ApiError::bad_request(e.to_string()),
        422 => ApiError::invalid(
            t,
            name,
            &[FieldError { reason: FieldReason::Invalid, field: "<nil>".into(), message: e.to_string() }],
        ),
        _ => ApiError::internal(e.to_string()),
    }
}

fn conflict_error(conflicts: &[patch::Conflict]) -> ApiError {
    let causes = conflicts
        .iter()
        .map(|c| json!({"reason": "FieldManagerConflict", "message": c.cause_message(), "field": c.field}))
        .collect();
    ApiError::apply_conflict(patch::conflict_message(conflicts), causes)
}
