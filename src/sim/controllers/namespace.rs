//! The namespace controller: a terminating namespace has its contents deleted, then is removed.

use super::common::{gvr_namespaces, is_deleting, list, s};
use crate::sim::core::{Core, DeleteOptions, Gvr};

/// Empty terminating namespaces, then remove them.
pub(super) fn namespaces(core: &Core) {
    for ns in list(core, &gvr_namespaces()) {
        if !is_deleting(&ns) {
            continue;
        }
        let name = s(&ns, "/metadata/name").unwrap_or_default().to_string();
        let mut left = 0;
        for (t, obj) in core.snapshot_all() {
            if !t.namespaced || s(&obj, "/metadata/namespace") != Some(name.as_str()) {
                continue;
            }
            left += 1;
            if !is_deleting(&obj) {
                let gvr = Gvr::new(&t.group, &t.version, &t.plural);
                let _gone = core.delete(
                    &gvr,
                    Some(&name),
                    s(&obj, "/metadata/name").unwrap_or_default(),
                    &DeleteOptions::default(),
                );
            }
        }
        if left == 0 {
            core.finalize_namespace(&name);
        }
    }
}
