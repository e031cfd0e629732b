//! The garbage collector: dependents whose owners are all gone are deleted (background
//! propagation); an owner deleting in the foreground waits for its dependents to go; an orphaning
//! owner strips its references from its dependents first.

use std::collections::{BTreeMap, HashSet};

use serde_json::{Value, json};

use super::common::{MANAGER, is_deleting, opts, owner_uids, s};
use crate::sim::core::{Core, DeleteOptions, Gvr, PatchKind};
use crate::sim::registry::ResourceType;

/// One pass over every object.
pub(super) fn garbage_collect(core: &Core) {
    let all = core.snapshot_all();
    let uids: HashSet<String> = all.iter().filter_map(|(_, o)| s(o, "/metadata/uid").map(str::to_string)).collect();
    let mut dependents_of: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, (_, obj)) in all.iter().enumerate() {
        for uid in owner_uids(obj) {
            dependents_of.entry(uid).or_default().push(i);
        }
    }
    delete_orphaned_dependents(core, &all, &uids);
    for (t, obj) in &all {
        if !is_deleting(obj) {
            continue;
        }
        let uid = s(obj, "/metadata/uid").unwrap_or_default();
        let deps: Vec<&(ResourceType, Value)> =
            dependents_of.get(uid).into_iter().flatten().map(|i| &all[*i]).collect();
        if has_finalizer(obj, "foregroundDeletion") {
            delete_in_foreground(core, t, obj, &deps);
        }
        if has_finalizer(obj, "orphan") {
            orphan_dependents(core, t, obj, &deps);
        }
    }
}

fn has_finalizer(obj: &Value, name: &str) -> bool {
    obj.pointer("/metadata/finalizers").and_then(Value::as_array).is_some_and(|f| f.iter().any(|x| x == name))
}

fn gvr_of(t: &ResourceType) -> Gvr {
    Gvr::new(&t.group, &t.version, &t.plural)
}

fn delete_object(core: &Core, t: &ResourceType, obj: &Value) {
    let _gone = core.delete(
        &gvr_of(t),
        s(obj, "/metadata/namespace"),
        s(obj, "/metadata/name").unwrap_or_default(),
        &DeleteOptions::default(),
    );
}

/// Delete (in the background) the objects that have owners, none of which exists any more.
fn delete_orphaned_dependents(core: &Core, all: &[(ResourceType, Value)], uids: &HashSet<String>) {
    for (t, obj) in all {
        let owners = owner_uids(obj);
        if !owners.is_empty() && owners.iter().all(|u| !uids.contains(u)) && !is_deleting(obj) {
            delete_object(core, t, obj);
        }
    }
}

/// Foreground deletion: delete the owner's dependents; once it has none, remove its
/// `foregroundDeletion` finalizer.
fn delete_in_foreground(core: &Core, t: &ResourceType, owner: &Value, deps: &[&(ResourceType, Value)]) {
    for (dt, dep) in deps {
        if !is_deleting(dep) {
            delete_object(core, dt, dep);
        }
    }
    if deps.is_empty() {
        let ns = s(owner, "/metadata/namespace").unwrap_or_default();
        let name = s(owner, "/metadata/name").unwrap_or_default();
        let _done = core.remove_finalizer(t, ns, name, "foregroundDeletion");
    }
}

/// Orphaning: remove the owner's reference from each dependent, then its `orphan` finalizer.
fn orphan_dependents(core: &Core, t: &ResourceType, owner: &Value, deps: &[&(ResourceType, Value)]) {
    let uid = s(owner, "/metadata/uid").unwrap_or_default();
    for (dt, dep) in deps {
        let refs: Vec<Value> = dep
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter(|x| x.get("uid").and_then(Value::as_str) != Some(uid)).cloned().collect())
            .unwrap_or_default();
        let patch =
            json!({"metadata": {"ownerReferences": if refs.is_empty() { Value::Null } else { Value::Array(refs) }}});
        let _stripped = core.patch(
            &gvr_of(dt),
            s(dep, "/metadata/namespace"),
            s(dep, "/metadata/name").unwrap_or_default(),
            PatchKind::Merge,
            &patch,
            None,
            &opts(MANAGER),
        );
    }
    let ns = s(owner, "/metadata/namespace").unwrap_or_default();
    let name = s(owner, "/metadata/name").unwrap_or_default();
    let _done = core.remove_finalizer(t, ns, name, "orphan");
}
