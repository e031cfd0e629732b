//! The kubelet: a pod becomes Running and Ready after a delay; a run-to-completion pod then
//! runs for a while and terminates as the `sim.flywheel.dev/*` annotations of its template (or an
//! in-process script) say.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::common::{keep_others_conditions, s, write_pod_status};
use super::process::{self, ProcessMode};
use crate::sim::core::{Core, now_rfc3339};

/// Annotation: `succeed` (default) or `fail`.
pub const OUTCOME_ANNOTATION: &str = "sim.flywheel.dev/outcome";
/// Annotation: seconds a Job pod runs before it terminates.
pub const DURATION_ANNOTATION: &str = "sim.flywheel.dev/duration";
/// Annotation: the text written to the terminated container state's `message`.
pub const MESSAGE_ANNOTATION: &str = "sim.flywheel.dev/termination-message";
/// Annotation: the exit code of a failing pod (default 1).
pub const EXIT_CODE_ANNOTATION: &str = "sim.flywheel.dev/exit-code";
/// Annotation: `true` makes the pod disrupted (preempted) instead of finishing.
pub const DISRUPTED_ANNOTATION: &str = "sim.flywheel.dev/disrupted";

/// How a terminating pod ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Exit code 0.
    Succeed,
    /// A non-zero exit code.
    Fail(i32),
    /// Preempted: phase Failed with a `DisruptionTarget` condition.
    Disrupted,
}

/// What a simulated pod does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodBehavior {
    /// Time from creation to Running and Ready.
    pub ready_after: Duration,
    /// For run-to-completion pods: how long they run and how they end.
    pub finish: Option<(Duration, Outcome, String)>,
}

/// An in-process script deciding a pod's behaviour (`None`: use the annotations).
pub type PodScript = Arc<dyn Fn(&Value) -> Option<PodBehavior> + Send + Sync>;

/// Settings of the simulated control plane.
#[derive(Clone)]
pub struct WorkloadConfig {
    /// Delay before a pod becomes Running and Ready.
    pub pod_ready_delay: Duration,
    /// Optional in-process script.
    pub script: Option<PodScript>,
    /// Pods whose every image is mapped here run as real processes ([`ProcessMode`]).
    pub processes: Option<Arc<ProcessMode>>,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        Self { pod_ready_delay: Duration::from_millis(300), script: None, processes: None }
    }
}

/// The field manager of the kubelet's writes.
const KUBELET: &str = "kubelet";

/// What the pod's annotations say it does.
fn behavior_from_annotations(pod: &Value, config: &WorkloadConfig) -> PodBehavior {
    let annotation =
        |k: &str| pod.pointer(&format!("/metadata/annotations/{}", k.replace('/', "~1"))).and_then(Value::as_str);
    let run_to_completion = matches!(s(pod, "/spec/restartPolicy"), Some("Never" | "OnFailure"));
    let finish = run_to_completion.then(|| {
        let duration = annotation(DURATION_ANNOTATION).and_then(|d| d.parse::<f64>().ok()).unwrap_or(1.0).max(0.0);
        let outcome = if annotation(DISRUPTED_ANNOTATION) == Some("true") {
            Outcome::Disrupted
        } else if annotation(OUTCOME_ANNOTATION) == Some("fail") {
            Outcome::Fail(annotation(EXIT_CODE_ANNOTATION).and_then(|c| c.parse().ok()).unwrap_or(1))
        } else {
            Outcome::Succeed
        };
        let message = annotation(MESSAGE_ANNOTATION).unwrap_or_default().to_string();
        (Duration::from_secs_f64(duration), outcome, message)
    });
    PodBehavior { ready_after: config.pod_ready_delay, finish }
}

/// Start running `pod` once (by uid, in `started`) if it is Pending: a task that writes its
/// status as it becomes Running and Ready and, for a run-to-completion pod, as it terminates.
pub(super) fn start_pod(
    core: &Arc<Core>,
    config: &WorkloadConfig,
    pod: &Value,
    started: &mut HashSet<String>,
    stop: &CancellationToken,
) {
    let Some(uid) = s(pod, "/metadata/uid").map(str::to_string) else { return };
    if s(pod, "/status/phase") != Some("Pending") || !started.insert(uid) {
        return;
    }
    if let Some(mode) = config.processes.as_ref().filter(|m| m.runs(pod)) {
        process::start(mode, core, pod, stop);
        return;
    }
    let behavior =
        config.script.as_ref().and_then(|script| script(pod)).unwrap_or_else(|| behavior_from_annotations(pod, config));
    let run = PodRun {
        core: core.clone(),
        ns: s(pod, "/metadata/namespace").map(str::to_string),
        name: s(pod, "/metadata/name").unwrap_or_default().to_string(),
        containers: containers_of(pod),
    };
    tokio::spawn(run.run(behavior, stop.clone()));
}

/// Name and image of each container.
fn containers_of(pod: &Value) -> Vec<(String, String)> {
    pod.pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    (s(c, "/name").unwrap_or_default().to_string(), s(c, "/image").unwrap_or_default().to_string())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// One pod the kubelet runs.
struct PodRun {
    core: Arc<Core>,
    ns: Option<String>,
    name: String,
    containers: Vec<(String, String)>,
}

impl PodRun {
    /// Running and Ready after `ready_after`; then, for a run-to-completion pod, terminated as
    /// `behavior.finish` says.
    async fn run(self, behavior: PodBehavior, stop: CancellationToken) {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(behavior.ready_after) => {}
        }
        let started_at = now_rfc3339();
        let ip = {
            use rand::Rng;
            let mut rng = rand::rng();
            format!("10.244.{}.{}", rng.random_range(0..255), rng.random_range(2..255))
        };
        if !self.write(self.running(&started_at, &ip, true)) {
            return;
        }
        let Some((duration, outcome, message)) = behavior.finish else { return };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(duration) => {}
        }
        self.write(self.terminated(&started_at, &ip, &outcome, &message));
    }

    /// Write the pod's status through `/status`, as the kubelet (retried on a conflict: with
    /// 10,000 pods, a write given up on left its pod Pending for good).
    fn write(&self, status: Value) -> bool {
        write_pod_status(&self.core, self.ns.as_deref(), &self.name, None, KUBELET, |pod| {
            // A pod being deleted is not started (its containers would only be stopped again).
            let starting = status.get("phase") == Some(&json!("Running"));
            (!(starting && pod.pointer("/metadata/deletionTimestamp").is_some()))
                .then(|| keep_others_conditions(pod, status.clone()))
        })
    }

    /// The status of the running pod.
    fn running(&self, started_at: &str, ip: &str, ready: bool) -> Value {
        let cond = |t: &str| json!({"type": t, "status": if ready || t == "PodScheduled" || t == "Initialized" { "True" } else { "False" }, "lastProbeTime": null, "lastTransitionTime": started_at});
        json!({
            "phase": "Running",
            "conditions": [cond("PodScheduled"), cond("Initialized"), cond("ContainersReady"), cond("Ready")],
            "containerStatuses": self.containers.iter().map(|(n, image)| json!({"name": n, "image": image, "imageID": "", "lastState": {}, "ready": ready, "restartCount": 0, "started": true, "state": {"running": {"startedAt": started_at}}})).collect::<Vec<_>>(),
            "hostIP": "10.0.0.1",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "qosClass": "BestEffort",
            "startTime": started_at,
        })
    }

    /// The status of the pod terminated now with `outcome`.
    fn terminated(&self, started_at: &str, ip: &str, outcome: &Outcome, message: &str) -> Value {
        let finished_at = now_rfc3339();
        let (phase, code, reason) = match outcome {
            Outcome::Succeed => ("Succeeded", 0, "Completed"),
            Outcome::Fail(code) => ("Failed", *code, "Error"),
            Outcome::Disrupted => ("Failed", 137, "Error"),
        };
        let mut terminated =
            json!({"exitCode": code, "reason": reason, "startedAt": started_at, "finishedAt": finished_at});
        if !message.is_empty() {
            terminated["message"] = json!(message);
        }
        let cond = |t: &str, v: bool, reason: Option<&str>| {
            let mut c = json!({"type": t, "status": if v { "True" } else { "False" }, "lastProbeTime": null, "lastTransitionTime": finished_at});
            if let Some(r) = reason {
                c["reason"] = json!(r);
            }
            c
        };
        let mut conditions = vec![
            cond("PodScheduled", true, None),
            cond("Initialized", true, None),
            cond("ContainersReady", false, Some("PodCompleted")),
            cond("Ready", false, Some("PodCompleted")),
        ];
        if *outcome == Outcome::Disrupted {
            let mut c = cond("DisruptionTarget", true, Some("PreemptionByScheduler"));
            c["message"] = json!("Simulated preemption");
            conditions.push(c);
        }
        json!({
            "phase": phase,
            "conditions": conditions,
            "containerStatuses": self.containers.iter().map(|(n, image)| json!({"name": n, "image": image, "imageID": "", "lastState": {}, "ready": false, "restartCount": 0, "started": false, "state": {"terminated": terminated}})).collect::<Vec<_>>(),
            "hostIP": "10.0.0.1",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "qosClass": "BestEffort",
            "startTime": started_at,
        })
    }
}
