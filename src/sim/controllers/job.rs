//! The Job controller: one pod at a time (parallelism and completions 1), backoffLimit,
//! podFailurePolicy (FailJob, Ignore, Count), activeDeadlineSeconds, and the two terminal
//! conditions a real Job gets (`SuccessCriteriaMet`+`Complete`, `FailureTarget`+`Failed`).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::common::{
    MANAGER, PodsByOwner, gvr_jobs, gvr_pods, is_deleting, is_ready, new_pod, opts, pods_owned_by, s, set_status,
    write_pod_status,
};
use crate::sim::core::{Core, DeleteOptions, now_rfc3339, random_suffix};

/// The Job's pods by how they stand.
struct JobPods<'a> {
    succeeded: usize,
    failed: Vec<&'a Value>,
    /// Neither finished nor deleting.
    active: Vec<&'a Value>,
}

impl<'a> JobPods<'a> {
    fn of(pods: &'a [Value]) -> Self {
        let succeeded = |p: &&Value| s(p, "/status/phase") == Some("Succeeded");
        let failed = |p: &&Value| s(p, "/status/phase") == Some("Failed");
        Self {
            succeeded: pods.iter().filter(succeeded).count(),
            failed: pods.iter().filter(failed).collect(),
            active: pods.iter().filter(|p| !succeeded(p) && !failed(p) && !is_deleting(p)).collect(),
        }
    }
}

/// One pass over one Job.
pub(super) fn job(core: &Core, j: &Value, pods: &PodsByOwner) {
    if is_deleting(j) || job_finished(j) {
        return;
    }
    let ns = s(j, "/metadata/namespace").map(str::to_string);
    let owned = pods_owned_by(pods, j);
    let pods = JobPods::of(&owned);
    let mut status = j.get("status").cloned().unwrap_or_else(|| json!({}));
    if j.pointer("/spec/suspend").and_then(Value::as_bool) == Some(true) {
        suspend(core, j, ns.as_deref(), &pods, status);
        return;
    }
    if suspended_condition(&status) {
        // Resumed (a queue admitted it): the active-deadline clock starts again from now.
        if let Some(m) = status.as_object_mut() {
            m.remove("startTime");
        }
        set_suspended(&mut status, false);
    }
    let start = status.get("startTime").and_then(Value::as_str).map(str::to_string).unwrap_or_else(now_rfc3339);
    status["startTime"] = json!(start);
    count_pods(&mut status, &pods);
    if let Some(conditions) = terminal_conditions(j, &pods, &start, &mut status) {
        for p in &pods.active {
            let _gone = core.delete(
                &gvr_pods(),
                ns.as_deref(),
                s(p, "/metadata/name").unwrap_or_default(),
                &DeleteOptions::default(),
            );
        }
        status["active"] = json!(0);
        status["conditions"] = json!(conditions);
        set_status(core, &gvr_jobs(), j, status);
        return;
    }
    if pods.active.is_empty() {
        let Some(template) = j.pointer("/spec/template") else { return };
        let name = s(j, "/metadata/name").unwrap_or_default();
        let pod = new_pod(j, template, format!("{name}-{}", random_suffix(5)), &BTreeMap::new());
        let _created = core.create(&gvr_pods(), ns.as_deref(), pod, &opts(MANAGER));
        status["active"] = json!(1);
    }
    set_status(core, &gvr_jobs(), j, status);
}

/// A suspended Job (created suspended for a queue, or suspended again to be preempted): no pod
/// is created; active pods are deleted, marked `DisruptionTarget` so a failure policy's
/// `Ignore` rule leaves them out of the failures; `startTime` is cleared, so the active deadline
/// counts from the next resumption; the condition `Suspended` says so.
fn suspend(core: &Core, j: &Value, ns: Option<&str>, pods: &JobPods<'_>, mut status: Value) {
    for p in &pods.active {
        // Marked from the pod as it is now and deleted only once marked, as the real controller
        // does: a pod deleted unmarked would read as a failure to a failure policy.
        let name = s(p, "/metadata/name").unwrap_or_default();
        let marked = write_pod_status(core, ns, name, s(p, "/metadata/uid"), MANAGER, |pod| {
            let mut status = pod.get("status").cloned().unwrap_or_else(|| json!({}));
            let conditions = status.pointer("/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
            let mut conditions: Vec<Value> =
                conditions.into_iter().filter(|c| c.get("type") != Some(&json!("DisruptionTarget"))).collect();
            conditions.push(json!({"type": "DisruptionTarget", "status": "True", "reason": "JobSuspended",
                "message": "the Job was suspended", "lastTransitionTime": now_rfc3339()}));
            status["conditions"] = json!(conditions);
            Some(status)
        });
        if marked {
            let _gone = core.delete(&gvr_pods(), ns, name, &DeleteOptions::default());
        }
    }
    status["active"] = json!(0);
    status["ready"] = json!(0);
    if let Some(m) = status.as_object_mut() {
        m.remove("startTime");
    }
    set_suspended(&mut status, true);
    set_status(core, &gvr_jobs(), j, status);
}

fn suspended_condition(status: &Value) -> bool {
    status.pointer("/conditions").and_then(Value::as_array).is_some_and(|cs| {
        cs.iter().any(|c| c.get("type") == Some(&json!("Suspended")) && c.get("status") == Some(&json!("True")))
    })
}

/// The `Suspended` condition: True (`JobSuspended`) or False (`JobResumed`), its transition time
/// moved only when it flips.
fn set_suspended(status: &mut Value, suspended: bool) {
    let mut conditions = status.get("conditions").and_then(Value::as_array).cloned().unwrap_or_default();
    let wanted = if suspended { "True" } else { "False" };
    let existing = conditions.iter().position(|c| c.get("type") == Some(&json!("Suspended")));
    if existing.is_some_and(|i| conditions[i].get("status") == Some(&json!(wanted))) {
        return;
    }
    let (reason, message) = if suspended { ("JobSuspended", "Job suspended") } else { ("JobResumed", "Job resumed") };
    let now = now_rfc3339();
    let condition = json!({"type": "Suspended", "status": wanted, "reason": reason, "message": message,
        "lastProbeTime": now, "lastTransitionTime": now});
    match existing {
        Some(i) => conditions[i] = condition,
        None if suspended => conditions.push(condition),
        None => return,
    }
    status["conditions"] = json!(conditions);
}

/// The counts of the status: active, ready, failed and succeeded (the last two left out at 0).
fn count_pods(status: &mut Value, pods: &JobPods<'_>) {
    status["active"] = json!(pods.active.len());
    status["ready"] = json!(pods.active.iter().filter(|p| is_ready(p)).count());
    status["failed"] = json!(pods.failed.len());
    status["succeeded"] = json!(pods.succeeded);
    status["terminating"] = json!(0);
    status["uncountedTerminatedPods"] = json!({});
    if status["failed"] == json!(0)
        && let Some(m) = status.as_object_mut()
    {
        m.remove("failed");
    }
    if status["succeeded"] == json!(0)
        && let Some(m) = status.as_object_mut()
    {
        m.remove("succeeded");
    }
}

/// The terminal conditions the Job reaches now, if any (a completion also sets its time): a
/// succeeded pod, a FailJob rule, the backoff limit, the active deadline, in that order.
fn terminal_conditions(j: &Value, pods: &JobPods<'_>, start: &str, status: &mut Value) -> Option<Vec<Value>> {
    let backoff = j.pointer("/spec/backoffLimit").and_then(Value::as_i64).unwrap_or(6);
    let counted_failures = pods.failed.iter().filter(|p| failure_action(j, p) == "Count").count();
    let fail_job = pods.failed.iter().find(|p| failure_action(j, p) == "FailJob");
    let deadline_passed = j.pointer("/spec/activeDeadlineSeconds").and_then(Value::as_i64).is_some_and(|limit| {
        start
            .parse::<k8s_openapi::jiff::Timestamp>()
            .is_ok_and(|t| (k8s_openapi::jiff::Timestamp::now() - t).get_seconds() >= limit)
    });
    let failed = |reason: &str, msg: &str| {
        Some(vec![job_condition("FailureTarget", reason, msg), job_condition("Failed", reason, msg)])
    };
    if pods.succeeded >= 1 {
        let msg = "Reached expected number of succeeded pods";
        status["completionTime"] = json!(now_rfc3339());
        Some(vec![
            job_condition("SuccessCriteriaMet", "CompletionsReached", msg),
            job_condition("Complete", "CompletionsReached", msg),
        ])
    } else if let Some(pod) = fail_job {
        let msg = format!(
            "Pod {}/{} has condition or exit code matching a FailJob rule of the podFailurePolicy",
            s(j, "/metadata/namespace").unwrap_or_default(),
            s(pod, "/metadata/name").unwrap_or_default()
        );
        failed("PodFailurePolicy", &msg)
    } else if counted_failures as i64 > backoff {
        failed("BackoffLimitExceeded", "Job has reached the specified backoff limit")
    } else if deadline_passed {
        failed("DeadlineExceeded", "Job was active longer than specified deadline")
    } else {
        None
    }
}

fn pod_failed_by_disruption(pod: &Value) -> bool {
    pod.pointer("/status/conditions").and_then(Value::as_array).is_some_and(|c| {
        c.iter().any(|c| c.get("type") == Some(&json!("DisruptionTarget")) && c.get("status") == Some(&json!("True")))
    })
}

fn exit_code(pod: &Value) -> Option<i64> {
    pod.pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find_map(|c| c.pointer("/state/terminated/exitCode").and_then(Value::as_i64)))
}

/// What a podFailurePolicy says of a failed pod: `FailJob`, `Ignore`, `Count`.
fn failure_action(job: &Value, pod: &Value) -> &'static str {
    let Some(rules) = job.pointer("/spec/podFailurePolicy/rules").and_then(Value::as_array) else { return "Count" };
    for rule in rules {
        let action = match rule.get("action").and_then(Value::as_str) {
            Some("FailJob") => "FailJob",
            Some("Ignore") => "Ignore",
            _ => "Count",
        };
        if let Some(codes) = rule.get("onExitCodes") {
            let values: Vec<i64> = codes
                .get("values")
                .and_then(Value::as_array)
                .map(|v| v.iter().filter_map(Value::as_i64).collect())
                .unwrap_or_default();
            let Some(code) = exit_code(pod) else { continue };
            let hit = match codes.get("operator").and_then(Value::as_str) {
                Some("NotIn") => !values.contains(&code),
                _ => values.contains(&code),
            };
            if hit && !(codes.get("operator").and_then(Value::as_str) == Some("NotIn") && code == 0) {
                return action;
            }
        }
        if let Some(conds) = rule.get("onPodConditions").and_then(Value::as_array) {
            let hit = conds.iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some("DisruptionTarget")
                    && c.get("status").and_then(Value::as_str).unwrap_or("True") == "True"
                    && pod_failed_by_disruption(pod)
            });
            if hit {
                return action;
            }
        }
    }
    "Count"
}

fn job_finished(job: &Value) -> bool {
    job.pointer("/status/conditions").and_then(Value::as_array).is_some_and(|c| {
        c.iter().any(|c| {
            matches!(c.get("type").and_then(Value::as_str), Some("Complete" | "Failed"))
                && c.get("status").and_then(Value::as_str) == Some("True")
        })
    })
}

fn job_condition(type_: &str, reason: &str, message: &str) -> Value {
    let now = now_rfc3339();
    json!({"type": type_, "status": "True", "reason": reason, "message": message, "lastProbeTime": now, "lastTransitionTime": now})
}
