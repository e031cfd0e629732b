//! The TTL-after-finished controller (`pkg/controller/ttlafterfinished`): a finished Job with
//! `spec.ttlSecondsAfterFinished` is deleted that many seconds after the `lastTransitionTime` of
//! its `Complete` or `Failed` condition, in the foreground (its pods first), guarded by its uid.

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::Value;

use super::common::{gvr_jobs, is_deleting, s};
use crate::sim::core::{Core, DeleteOptions, Propagation};

/// One pass over `jobs`.
pub(super) fn ttl_after_finished(core: &Core, jobs: &[Value]) {
    let now = Timestamp::now();
    for j in jobs {
        if is_deleting(j) {
            continue;
        }
        let Some(ttl) = j.pointer("/spec/ttlSecondsAfterFinished").and_then(Value::as_i64) else { continue };
        let Some(finished_at) = finished_at(j) else { continue };
        if now < finished_at + SignedDuration::from_secs(ttl) {
            continue;
        }
        let _gone = core.delete(
            &gvr_jobs(),
            s(j, "/metadata/namespace"),
            s(j, "/metadata/name").unwrap_or_default(),
            &DeleteOptions {
                propagation: Some(Propagation::Foreground),
                uid: s(j, "/metadata/uid").map(str::to_string),
                ..DeleteOptions::default()
            },
        );
    }
}

/// The `lastTransitionTime` of the Job's true `Complete` or `Failed` condition.
fn finished_at(job: &Value) -> Option<Timestamp> {
    let finished_at = job.pointer("/status/conditions").and_then(Value::as_array).and_then(|cs| {
        cs.iter().find_map(|c| {
            let terminal = matches!(c.get("type").and_then(Value::as_str), Some("Complete" | "Failed"))
                && c.get("status").and_then(Value::as_str) == Some("True");
            terminal.then(|| c.get("lastTransitionTime").and_then(Value::as_str)).flatten()
        })
    });
    finished_at.and_then(|t| t.parse::<Timestamp>().ok())
}
