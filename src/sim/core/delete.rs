//! DELETE and what follows it: preconditions (as `rest.BeforeDelete`), the finalizers of a
//! propagation policy, `deletionTimestamp` while finalizers remain, no finalizer added to a
//! deleting object, removal once the last finalizer goes, and a namespace's end.

use serde_json::{Value, json};

use super::object::{finalizers_of, is_deleting, meta_str, metadata_mut, now_rfc3339};
use super::options::{DeleteOptions, Propagation};
use super::store::{Key, Locked};
use crate::api::validation::{FieldError, FieldReason};
use crate::sim::error::ApiError;
use crate::sim::registry::ResourceType;

/// DELETE one object: removed now, or marked deleting while finalizers (or a namespace's
/// contents) remain.
pub(super) fn delete(
    tx: &mut Locked<'_>,
    t: &ResourceType,
    namespace: Option<&str>,
    name: &str,
    opts: &DeleteOptions,
) -> Result<Value, ApiError> {
    let key = Key::new(t, namespace, name);
    let current = tx.existing(t, &key)?;
    check_preconditions(t, name, &current, opts)?;
    let mut obj = current.clone();
    let namespace_kind = t.group.is_empty() && t.plural == "namespaces";
    let already_deleting = is_deleting(&obj);
    let mut finalizers = finalizers_of(&obj);
    if !already_deleting {
        finalizers.extend(propagation_finalizer(opts.propagation.unwrap_or(Propagation::Background)));
        if namespace_kind {
            obj["status"] = json!({"phase": "Terminating"});
            obj["spec"] = json!({"finalizers": ["kubernetes"]});
        }
    }
    let waits = !finalizers.is_empty() || namespace_kind;
    if opts.dry_run {
        return Ok(obj);
    }
    if !waits {
        return Ok(tx.commit(t, key, None, Some(&current)));
    }
    if already_deleting {
        return Ok(current);
    }
    let meta = metadata_mut(&mut obj);
    meta.insert("deletionTimestamp".into(), json!(now_rfc3339()));
    meta.insert("deletionGracePeriodSeconds".into(), json!(0));
    if !finalizers.is_empty() {
        meta.insert("finalizers".into(), Value::Array(finalizers));
    }
    Ok(tx.commit(t, key, Some(obj), Some(&current)))
}

/// As `rest.BeforeDelete`: the uid first, then the resourceVersion.
fn check_preconditions(t: &ResourceType, name: &str, current: &Value, opts: &DeleteOptions) -> Result<(), ApiError> {
    if let Some(wanted) = &opts.uid
        && meta_str(current, "uid") != Some(wanted.as_str())
    {
        let actual = meta_str(current, "uid").unwrap_or_default();
        let why = format!(
            "the UID in the precondition ({wanted}) does not match the UID in record ({actual}). The object might have been deleted and then recreated"
        );
        return Err(ApiError::precondition_failed(t, name, &why));
    }
    if let Some(wanted) = &opts.resource_version
        && meta_str(current, "resourceVersion") != Some(wanted.as_str())
    {
        let actual = meta_str(current, "resourceVersion").unwrap_or_default();
        let why = format!(
            "the ResourceVersion in the precondition ({wanted}) does not match the ResourceVersion in record ({actual}). The object might have been modified"
        );
        return Err(ApiError::precondition_failed(t, name, &why));
    }
    Ok(())
}

/// The finalizer through which the garbage collector carries out a propagation policy.
fn propagation_finalizer(propagation: Propagation) -> Option<Value> {
    match propagation {
        Propagation::Foreground => Some(json!("foregroundDeletion")),
        Propagation::Orphan => Some(json!("orphan")),
        Propagation::Background => None,
    }
}

/// A deleting object may lose finalizers but gain none (`ValidateNoNewFinalizers`): 422 on
/// `metadata.finalizers` naming those `obj` would add to `current`.
pub(super) fn forbid_new_finalizers(
    t: &ResourceType,
    name: &str,
    current: &Value,
    obj: &Value,
) -> Result<(), ApiError> {
    if !is_deleting(current) {
        return Ok(());
    }
    let names =
        |o: &Value| -> Vec<String> { finalizers_of(o).iter().filter_map(Value::as_str).map(str::to_string).collect() };
    let before = names(current);
    let mut added: Vec<String> = names(obj).into_iter().filter(|f| !before.contains(f)).collect();
    added.sort();
    added.dedup();
    if added.is_empty() {
        return Ok(());
    }
    let list = added.iter().map(|f| format!("{f:?}")).collect::<Vec<_>>().join(", ");
    Err(ApiError::invalid(
        t,
        name,
        &[FieldError {
            reason: FieldReason::Forbidden,
            field: "metadata.finalizers".into(),
            message: format!(
                "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{{{list}}}"
            ),
        }],
    ))
}

/// Store a changed object, or remove it when it is deleting and its last finalizer is gone.
pub(super) fn store_or_finish_deletion(
    tx: &mut Locked<'_>,
    t: &ResourceType,
    key: Key,
    obj: Value,
    current: &Value,
) -> Value {
    if is_deleting(&obj) && finalizers_of(&obj).is_empty() {
        return tx.commit(t, key, None, Some(&obj));
    }
    tx.commit(t, key, Some(obj), Some(current))
}

/// Remove a namespace whose contents are gone (the namespace controller's last step), unless a
/// finalizer remains.
pub(super) fn finalize_namespace(tx: &mut Locked<'_>, t: &ResourceType, name: &str) {
    let key = Key::new(t, None, name);
    let Some(current) = tx.object(&key).cloned() else { return };
    if finalizers_of(&current).is_empty() {
        tx.commit(t, key, None, Some(&current));
    }
}
