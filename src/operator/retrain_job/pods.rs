//! The result guard: every trainer pod carries [`RESULT_FINALIZER`], so neither the Job's
//! `ttlSecondsAfterFinished`, nor a user deleting the Job, nor the garbage collector can take its
//! termination message (the attempt's result) before the RetrainJob has recorded how the attempt
//! ended. This small controller watches trainer pods and their RetrainJobs and removes the
//! finalizer once it has done its job: the pod's attempt is recorded in its RetrainJob's status,
//! the RetrainJob is finished, or the RetrainJob is gone.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;

use super::context::{RetrainError, reading, writing};
use super::job::{LABEL_RETRAIN_JOB, RESULT_FINALIZER};
use crate::api::retrain_job::{RetrainJob, RetrainPhase};
use crate::operator::skeleton::{Reconciler, Shared};

/// The controller's name in metrics and logs.
pub const CONTROLLER: &str = "trainerpod";

/// The label selector of the pods this guard watches.
pub const SELECTOR: &str = "app.kubernetes.io/component=trainer,app.kubernetes.io/managed-by=flywheel";

/// Whether the pod's result is no longer needed (pure): its RetrainJob is gone (or is another
/// object of the same name, made after the pod), finished, or has recorded the pod's attempt.
pub fn releasable(pod: &Pod, rtj: Option<&RetrainJob>) -> bool {
    let Some(rtj) = rtj else { return true };
    let newer = match (&rtj.metadata.creation_timestamp, &pod.metadata.creation_timestamp) {
        (Some(r), Some(p)) => r.0 > p.0,
        _ => false,
    };
    if newer {
        return true;
    }
    let status = rtj.status.clone().unwrap_or_default();
    if matches!(status.phase, RetrainPhase::Succeeded | RetrainPhase::Failed | RetrainPhase::Rejected) {
        return true;
    }
    if pod.labels().contains_key(super::job::LABEL_EVALUATION) {
        return status.evaluation.as_ref().is_some_and(|e| e.passed.is_some());
    }
    let attempt = super::observe::attempt_of(pod);
    attempt.is_some_and(|n| status.attempts.iter().any(|a| a.index == n && a.outcome.is_some()))
}

/// Remove the result finalizer from `pod` (a JSON patch that first checks it is still where it
/// was read, so no other finalizer is touched).
pub async fn release(api: &Api<Pod>, pod: &Pod) -> Result<bool, RetrainError> {
    let Some(i) = pod.finalizers().iter().position(|f| f == RESULT_FINALIZER) else {
        return Ok(false);
    };
    let path = format!("/metadata/finalizers/{i}");
    let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
        {"op": "test", "path": path, "value": RESULT_FINALIZER},
        {"op": "remove", "path": path},
    ]))
    .map_err(|_| RetrainError::Malformed("a finalizer patch"))?;
    match api.patch(&pod.name_any(), &PatchParams::default(), &Patch::Json::<()>(patch)).await {
        Ok(_) => Ok(true),
        // Gone, or the list changed under us (the next event brings the pod back).
        Err(kube::Error::Api(s)) if matches!(s.code, 404 | 409 | 422) => Ok(false),
        Err(e) => Err(writing(format!("releasing the result of pod {}", pod.name_any()))(e)),
    }
}

/// The guard's context.
pub struct TrainerPods {
    /// Client, metrics, Events, requeue bookkeeping.
    pub shared: Arc<Shared>,
}

/// How long a pod whose result is still needed waits before it looks at its RetrainJob again,
/// when no change of the RetrainJob woke it first.
const HELD_RECHECK: std::time::Duration = std::time::Duration::from_secs(10);

impl Reconciler for TrainerPods {
    type Object = Pod;
    type Error = RetrainError;
    const NAME: &'static str = CONTROLLER;

    fn shared(&self) -> &Shared {
        &self.shared
    }

    async fn reconcile(&self, pod: &Pod) -> Result<Action, RetrainError> {
        if !pod.finalizers().iter().any(|f| f == RESULT_FINALIZER) {
            return Ok(Action::await_change());
        }
        let ns = pod.namespace().ok_or(RetrainError::Malformed("a pod namespace"))?;
        let pods: Api<Pod> = Api::namespaced(self.shared.client.clone(), &ns);
        let rtj = match pod.labels().get(LABEL_RETRAIN_JOB) {
            Some(name) => {
                let rtjs: Api<RetrainJob> = Api::namespaced(self.shared.client.clone(), &ns);
                rtjs.get_opt(name).await.map_err(reading(format!("reading RetrainJob {name}")))?
            }
            // Not a RetrainJob's pod after all: nothing waits for its result.
            None => None,
        };
        if releasable(pod, rtj.as_ref()) {
            if release(&pods, pod).await? {
                tracing::debug!(pod = %pod.name_any(), "released the attempt's result");
            }
            return Ok(Action::await_change());
        }
        // Still needed. The RetrainJob's changes wake this pod (see the operator's wiring), but
        // a change that arrives before this pod is in the cache (the operator starting, both
        // watches listing at once) finds no pod to wake: look again in a while, so a recorded
        // result never holds its pods for good.
        Ok(Action::requeue(HELD_RECHECK))
    }

    async fn record_failure(&self, _pod: &Pod, _error: &RetrainError) {
        // A pod has no status of Flywheel's: the failure is in the metric, the log and the Event.
    }
}

#[cfg(test)]
mod tests {
    use super::super::job::LABEL_ATTEMPT;
    use super::*;
    use serde_json::json;

    fn pod(attempt: i32, created: &str) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "r-1-x", "creationTimestamp": created,
            "labels": {LABEL_RETRAIN_JOB: "r", LABEL_ATTEMPT: attempt.to_string()}, "finalizers": [RESULT_FINALIZER]}}))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn rtj(created: &str, status: serde_json::Value) -> RetrainJob {
        let mut v = json!({"apiVersion": "flywheel.dev/v1alpha1", "kind": "RetrainJob",
            "metadata": {"name": "r", "creationTimestamp": created},
            "spec": {"targetRef": {"name": "m"}, "base": {"version": "v1", "uri": "pvc://m/v1"},
                     "dataset": {"uri": "pvc://d/s", "sha256": "a".repeat(64), "formats": ["SFT"], "counts": {"sft": 1, "dpo": 0, "heldOut": 0}},
                     "trainer": {"image": "t"}, "outputUri": "pvc://m/r"}});
        v["status"] = status;
        serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_result_is_kept_until_its_attempt_is_recorded() {
        let p = pod(2, "2026-11-28T10:05:00Z");
        let running = rtj(
            "2026-11-28T10:00:00Z",
            json!({"phase": "Running", "attempts": [
                {"index": 1, "jobName": "r-1", "outcome": "Failed"},
                {"index": 2, "jobName": "r-2"}]}),
        );
        assert!(!releasable(&p, Some(&running)), "attempt 2 is open: its result is still needed");
        assert!(releasable(&pod(1, "2026-11-28T10:01:00Z"), Some(&running)), "attempt 1 is recorded");
        let recorded = rtj(
            "2026-11-28T10:00:00Z",
            json!({"phase": "Running", "attempts": [{"index": 2, "jobName": "r-2", "outcome": "Disrupted"}]}),
        );
        assert!(releasable(&p, Some(&recorded)));
        assert!(releasable(&p, Some(&rtj("2026-11-28T10:00:00Z", json!({"phase": "Succeeded"})))));
        assert!(releasable(&p, None), "the RetrainJob is gone");
        let recreated = rtj("2026-11-28T11:00:00Z", json!({"phase": "Running"}));
        assert!(releasable(&p, Some(&recreated)), "another RetrainJob of the same name");
    }
}
