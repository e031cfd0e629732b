//! The apiextensions server's naming and establishing controllers, for each new CRD: after the
//! configured delay its names are accepted (`NamesAccepted` True, `Established` False
//! `Installing`; the CRD handler serves its resources from then), then it is established
//! (`Established` True `InitialNamesAccepted`; discovery lists it from then). Name conflicts
//! between CRDs are not modelled.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::common::{gvr_crds, opts, s};
use crate::sim::core::{Core, Sub, crd_condition, now_rfc3339};

/// The field manager of the apiextensions server's writes.
const APISERVER: &str = "kube-apiserver";

/// Start naming and establishing `crd` `delay` after now, once per CRD (by uid, in `naming`).
pub(super) fn accept_crd_names(
    core: &Arc<Core>,
    crd: &Value,
    delay: Duration,
    naming: &mut HashSet<String>,
    stop: &CancellationToken,
) {
    let Some(uid) = s(crd, "/metadata/uid").map(str::to_string) else { return };
    if crd_condition(crd, "NamesAccepted") || !naming.insert(uid.clone()) {
        return;
    }
    let Some(name) = s(crd, "/metadata/name").map(str::to_string) else { return };
    let core = core.clone();
    let stop = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        let names_accepted = condition("NamesAccepted", "True", "NoConflicts", "no conflicts found");
        let installing = condition("Established", "False", "Installing", "the initial names have been accepted");
        if !write_conditions(&core, &name, &uid, vec![names_accepted.clone(), installing]) {
            return;
        }
        let established =
            condition("Established", "True", "InitialNamesAccepted", "the initial names have been accepted");
        write_conditions(&core, &name, &uid, vec![names_accepted, established]);
    });
}

fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": now_rfc3339()})
}

/// Write the accepted names and `conditions` to the CRD `name`, if it is still the one of `uid`.
fn write_conditions(core: &Core, name: &str, uid: &str, conditions: Vec<Value>) -> bool {
    let Ok(mut current) = core.get(&gvr_crds(), None, name) else { return false };
    if s(&current, "/metadata/uid") != Some(uid) {
        return false;
    }
    current["status"]["acceptedNames"] = current.pointer("/spec/names").cloned().unwrap_or_else(|| json!({}));
    current["status"]["conditions"] = json!(conditions);
    core.update(&gvr_crds(), None, name, current, Some(Sub::Status), &opts(APISERVER)).is_ok()
}
