//! How an attempt ended (pure): the Job's terminal condition, the trainer container's exit code
//! and termination message, and the result line the trainer contract asks for.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

use super::job::{CONTAINER, EXIT_BAD_CONFIGURATION};
use crate::api::retrain_job::{Artifact, AttemptOutcome, TrainResult};
use crate::operator::model_deployment::children::ModelSource;

/// What a result must satisfy besides its shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Expected<'a> {
    /// The version the RetrainJob asked for, if any.
    pub version: Option<&'a str>,
    /// The RetrainJob's output URI: the result's must be it, or a path below it.
    pub output_uri: Option<&'a str>,
    /// The result is handed to a ModelDeployment that serves whole models (promotion `Canary`):
    /// an adapter alone cannot be served there.
    pub whole_model: bool,
}

/// The most of a termination message kept in status.
const MESSAGE_LIMIT: usize = 1024;

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Ended {
    /// The outcome.
    pub outcome: AttemptOutcome,
    /// The trainer's exit code, when it exited.
    pub exit_code: Option<i32>,
    /// Why, in words.
    pub message: String,
    /// The result, on success.
    pub result: Option<TrainResult>,
}

/// The trainer container's end in the newest terminated pod of a Job.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PodEnd {
    /// Exit code of the trainer container.
    pub exit_code: Option<i32>,
    /// Its termination message.
    pub message: Option<String>,
}

/// The trainer's end in `pods` (the Job's pods): a succeeded pod first, else the newest
/// terminated one.
pub fn pod_end(pods: &[Pod]) -> Option<PodEnd> {
    let terminated = |p: &Pod| {
        p.status
            .as_ref()?
            .container_statuses
            .as_ref()?
            .iter()
            .find(|c| c.name == CONTAINER)
            .and_then(|c| c.state.as_ref())
            .and_then(|s| s.terminated.clone())
    };
    // A disrupted pod (preempted, evicted) did not decide the attempt: the failure policy
    // ignored it.
    let disrupted = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "DisruptionTarget" && c.status == "True"))
    };
    let mut ends: Vec<((bool, bool, String), PodEnd)> = pods
        .iter()
        .filter_map(|p| {
            let t = terminated(p)?;
            let finished = t.finished_at.as_ref().map(|f| f.0.to_string()).unwrap_or_default();
            Some((
                (t.exit_code == 0, !disrupted(p), finished),
                PodEnd { exit_code: Some(t.exit_code), message: t.message },
            ))
        })
        .collect();
    ends.sort_by(|a, b| a.0.cmp(&b.0));
    ends.pop().map(|(_, e)| e)
}

/// The Job's terminal condition: `Complete`, or `Failed` with its reason.
pub fn terminal(job: &Job) -> Option<Result<(), String>> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    for c in conditions {
        if c.status != "True" {
            continue;
        }
        match c.type_.as_str() {
            "Complete" => return Some(Ok(())),
            "Failed" => return Some(Err(c.reason.clone().unwrap_or_default())),
            _ => {}
        }
    }
    None
}

/// Parse the trainer's result: the last line of the message that is a JSON object.
pub fn parse_result(message: &str, expected: Expected<'_>) -> Result<TrainResult, String> {
    let line = message
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| "the termination message holds no JSON result line".to_string())?;
    let v: Value = serde_json::from_str(line).map_err(|e| format!("the result line is not JSON: {e}"))?;
    let version = v
        .get("version")
        .and_then(Value::as_str)
        .ok_or_else(|| "the result line has no string \"version\"".to_string())?;
    if !crate::api::common::is_version_label(version) {
        return Err(format!("the result's version {version:?} is not a valid version label"));
    }
    if let Some(expected) = expected.version
        && expected != version
    {
        return Err(format!("the result's version {version:?} is not the {expected:?} the RetrainJob asked for"));
    }
    let uri = v
        .get("uri")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty() && u.len() <= 2048)
        .ok_or_else(|| "the result line has no \"uri\"".to_string())?;
    // The same parser a ModelDeployment uses: a URI it cannot load is refused here, before it
    // is handed over. A file:// URI (or a bare path) names the trainer pod's own file system.
    match ModelSource::parse(uri) {
        Ok(ModelSource::Pvc { .. } | ModelSource::Fetch { .. }) => {}
        Ok(ModelSource::File { .. }) | Err(_) => {
            return Err(format!(
                "the result's uri {uri:?} is not a URI serving can load (pvc://claim/path, s3://, gs://, https://, hf://); \
                 a trainer reports FLYWHEEL_OUTPUT_URI, not the local FLYWHEEL_OUTPUT_DIR it wrote to"
            ));
        }
    }
    if let Some(output) = expected.output_uri {
        let output = output.trim_end_matches('/');
        let below = uri.strip_prefix(output).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
        if !below {
            return Err(format!(
                "the result's uri {uri:?} is not the output the RetrainJob gave the trainer ({output:?}, FLYWHEEL_OUTPUT_URI) or below it"
            ));
        }
    }
    let artifact = match v.get("artifact") {
        None => Artifact::Model,
        Some(Value::String(a)) if a == "model" => Artifact::Model,
        Some(Value::String(a)) if a == "adapter" => Artifact::Adapter,
        Some(other) => return Err(format!("\"artifact\" must be \"model\" or \"adapter\", not {other}")),
    };
    if artifact == Artifact::Adapter && expected.whole_model {
        return Err(
            "the result is a LoRA adapter (\"artifact\":\"adapter\"), but the ModelDeployment it goes to serves whole \
             models: have the trainer merge the adapter (the reference trainer's mergeAdapter hyperparameter)"
                .to_string(),
        );
    }
    let mut metrics = BTreeMap::new();
    if let Some(m) = v.get("metrics") {
        let m = m.as_object().ok_or_else(|| "\"metrics\" is not an object".to_string())?;
        for (k, value) in m.iter().take(64) {
            let n = value.as_f64().filter(|n| n.is_finite()).ok_or_else(|| format!("metric {k:?} is not a number"))?;
            metrics.insert(k.clone(), n);
        }
    }
    Ok(TrainResult { version: version.to_string(), uri: uri.to_string(), metrics, artifact })
}

/// Parse an evaluation Job's result: the last line of the message that is a JSON object, with
/// numeric `metrics`.
pub fn parse_metrics(message: &str) -> Result<BTreeMap<String, f64>, String> {
    let line = message
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| "the termination message holds no JSON result line".to_string())?;
    let v: Value = serde_json::from_str(line).map_err(|e| format!("the result line is not JSON: {e}"))?;
    let m = v
        .get("metrics")
        .and_then(Value::as_object)
        .ok_or_else(|| "the result line has no \"metrics\" object".to_string())?;
    let mut metrics = BTreeMap::new();
    for (k, value) in m.iter().take(64) {
        let n = value.as_f64().filter(|n| n.is_finite()).ok_or_else(|| format!("metric {k:?} is not a number"))?;
        metrics.insert(k.clone(), n);
    }
    Ok(metrics)
}

fn clip(s: &str) -> String {
    let s = s.trim();
    if s.len() <= MESSAGE_LIMIT {
        return s.to_string();
    }
    let mut end = MESSAGE_LIMIT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The end of an evaluation Job (`None` while it runs): its metrics, or why there are none.
pub fn evaluation_ended(job: &Job, pods: &[Pod]) -> Option<Result<BTreeMap<String, f64>, String>> {
    let end = pod_end(pods).unwrap_or_default();
    let text = end.message.clone().unwrap_or_default();
    Some(match terminal(job)? {
        Ok(()) => parse_metrics(&text).map_err(|why| clip(&format!("the evaluation Job exited 0 but {why}"))),
        Err(reason) => {
            let code = end.exit_code.map_or_else(String::new, |c| format!(" with exit code {c}"));
            let said = if text.trim().is_empty() { String::new() } else { format!(": {}", text.trim()) };
            Err(clip(&format!("the evaluation Job failed{code} ({reason}){said}")))
        }
    })
}

/// How the attempt whose Job is `job` ended, or `None` while it runs.
pub fn ended(job: &Job, pods: &[Pod], expected: Expected<'_>) -> Option<Ended> {
    let end = pod_end(pods).unwrap_or_default();
    let text = end.message.clone().unwrap_or_default();
    Some(match terminal(job)? {
        Ok(()) => match parse_result(&text, expected) {
            Ok(result) => Ended {
                outcome: AttemptOutcome::Succeeded,
                exit_code: end.exit_code.or(Some(0)),
                message: format!("trained {} at {}", result.version, result.uri),
                result: Some(result),
            },
            Err(why) => Ended {
                outcome: AttemptOutcome::MalformedResult,
                exit_code: end.exit_code.or(Some(0)),
                message: clip(&format!("the trainer exited 0 but {why}")),
                result: None,
            },
        },
        Err(reason) => {
            let outcome = match reason.as_str() {
                "PodFailurePolicy" => AttemptOutcome::BadConfiguration,
                "DeadlineExceeded" => AttemptOutcome::DeadlineExceeded,
                _ if end.exit_code == Some(EXIT_BAD_CONFIGURATION) => AttemptOutcome::BadConfiguration,
                _ => AttemptOutcome::Failed,
            };
            let said = if text.trim().is_empty() { String::new() } else { format!(": {}", text.trim()) };
            let code = end.exit_code.map_or_else(String::new, |c| format!(" with exit code {c}"));
            let message = match outcome {
                AttemptOutcome::BadConfiguration => format!("the trainer reported bad configuration{code}{said}"),
                AttemptOutcome::DeadlineExceeded => "the attempt ran past spec.trainer.deadlineSeconds".to_string(),
                _ => format!("the trainer failed{code} ({reason}){said}"),
            };
            Ended { outcome, exit_code: end.exit_code, message: clip(&message), result: None }
        }
    })
}

/// How an attempt whose Job is gone ended, from its pods (which the result finalizer kept): a pod
/// that finished decided it, whatever removed the Job afterwards; none did: the Job was deleted
/// before it finished (a disruption, which does not count).
pub fn ended_without_job(job_name: &str, pods: &[Pod], expected: Expected<'_>) -> Ended {
    let decided = pods.iter().any(|p| {
        let disrupted = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "DisruptionTarget" && c.status == "True"));
        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or_default();
        !disrupted && matches!(phase, "Succeeded" | "Failed")
    });
    let end = decided.then(|| pod_end(pods)).flatten();
    match end {
        Some(end) if end.exit_code == Some(0) => {
            let text = end.message.clone().unwrap_or_default();
            match parse_result(&text, expected) {
                Ok(result) => Ended {
                    outcome: AttemptOutcome::Succeeded,
                    exit_code: Some(0),
                    message: format!(
                        "trained {} at {} (Job {job_name} was removed after it finished)",
                        result.version, result.uri
                    ),
                    result: Some(result),
                },
                Err(why) => Ended {
                    outcome: AttemptOutcome::MalformedResult,
                    exit_code: Some(0),
                    message: clip(&format!("the trainer exited 0 but {why}")),
                    result: None,
                },
            }
        }
        Some(end) => {
            let outcome = if end.exit_code == Some(EXIT_BAD_CONFIGURATION) {
                AttemptOutcome::BadConfiguration
            } else {
                AttemptOutcome::Failed
            };
            let said = end.message.as_deref().map(str::trim).filter(|m| !m.is_empty()).map(|m| format!(": {m}"));
            let code = end.exit_code.map_or_else(String::new, |c| format!(" with exit code {c}"));
            Ended {
                outcome,
                exit_code: end.exit_code,
                message: clip(&format!("the trainer failed{code}{}", said.unwrap_or_default())),
                result: None,
            }
        }
        None => Ended {
            outcome: AttemptOutcome::Disrupted,
            exit_code: None,
            message: format!("Job {job_name} was deleted before it finished"),
            result: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(condition: Option<(&str, &str)>) -> Job {
        let conditions: Vec<Value> =
            condition.map(|(t, r)| vec![json!({"type": t, "status": "True", "reason": r})]).unwrap_or_default();
        serde_json::from_value(json!({"metadata": {"name": "j"}, "status": {"conditions": conditions}}))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn pod(code: i32, message: &str, finished: &str) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "status": {"containerStatuses": [{
            "name": "trainer", "image": "t", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": code, "message": message, "finishedAt": finished}}}]}}))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_result_line_is_read_and_checked() {
        let ok = parse_result(
            "loading…\n{\"version\":\"v2\",\"uri\":\"s3://m/v2\",\"metrics\":{\"evalLoss\":1.5}}\n",
            Expected { version: Some("v2"), whole_model: true, output_uri: Some("s3://m/") },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ok.version, "v2");
        assert_eq!(ok.artifact, Artifact::Model);
        assert_eq!(ok.metrics.get("evalLoss"), Some(&1.5));
        for (bad, why) in [
            ("", "no JSON"),
            ("{not json", "not JSON"),
            (r#"{"uri":"s3://m"}"#, "version"),
            (r#"{"version":"V2!","uri":"s3://m"}"#, "valid version"),
            (r#"{"version":"v2"}"#, "uri"),
            (r#"{"version":"v2","uri":"s3://m","metrics":{"loss":"low"}}"#, "not a number"),
            (r#"{"version":"v3","uri":"s3://m"}"#, "asked for"),
            // The seam a real cluster showed: the trainer reported its mount path.
            (
                r#"{"version":"v2","uri":"/var/run/flywheel/output-claim/support-chat/v2"}"#,
                "not a URI serving can load",
            ),
            (r#"{"version":"v2","uri":"file:///var/run/flywheel/output"}"#, "FLYWHEEL_OUTPUT_URI"),
            (r#"{"version":"v2","uri":"ftp://host/m"}"#, "not a URI serving can load"),
            (r#"{"version":"v2","uri":"pvc://models/v2","artifact":"weights"}"#, "\"model\" or \"adapter\""),
            (r#"{"version":"v2","uri":"pvc://models/v2","artifact":"adapter"}"#, "mergeAdapter"),
        ] {
            let e = parse_result(bad, Expected { version: Some("v2"), whole_model: true, output_uri: None })
                .err()
                .unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn the_uri_is_the_output_the_trainer_was_given_or_below_it() {
        let expected = Expected { version: None, whole_model: true, output_uri: Some("pvc://models/v2") };
        for ok in ["pvc://models/v2", "pvc://models/v2/final"] {
            let line = format!(r#"{{"version":"v2","uri":"{ok}"}}"#);
            assert!(parse_result(&line, expected).is_ok(), "{ok}");
        }
        for bad in ["pvc://other/v2", "pvc://models/v22", "s3://models/v2"] {
            let line = format!(r#"{{"version":"v2","uri":"{bad}"}}"#);
            let e = parse_result(&line, expected).err().unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(e.contains("not the output") && e.contains("FLYWHEEL_OUTPUT_URI"), "{bad}: {e}");
        }
    }

    #[test]
    fn an_adapter_is_accepted_where_no_whole_model_is_needed() {
        let line = r#"{"version":"v2","uri":"pvc://models/v2","artifact":"adapter"}"#;
        let ok = parse_result(line, Expected { version: None, whole_model: false, output_uri: Some("pvc://models") })
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((ok.artifact, ok.uri.as_str()), (Artifact::Adapter, "pvc://models/v2"));
        for uri in ["pvc://models/v2", "s3://bucket/m/v2", "gs://b/m", "https://host/m.tar", "hf://org/m"] {
            let line = format!(r#"{{"version":"v2","uri":"{uri}","artifact":"model"}}"#);
            assert!(parse_result(&line, Expected::default()).is_ok(), "{uri}");
        }
    }

    fn phased(mut p: Pod, phase: &str) -> Pod {
        if let Some(s) = p.status.as_mut() {
            s.phase = Some(phase.to_string());
        }
        p
    }

    #[test]
    fn a_job_removed_after_it_finished_is_read_from_its_pods_never_counted_as_a_disruption() {
        let t = "2026-11-27T10:00:00Z";
        let none = Expected::default();
        let done = phased(pod(0, r#"{"version":"v2","uri":"pvc://models/v2"}"#, t), "Succeeded");
        let e = ended_without_job("j-1", &[done], none);
        assert_eq!(e.outcome, AttemptOutcome::Succeeded, "{}", e.message);
        assert_eq!(e.result.map(|r| r.version), Some("v2".to_string()));
        let bad = phased(pod(3, "bad token", t), "Failed");
        assert_eq!(ended_without_job("j-1", &[bad], none).outcome, AttemptOutcome::BadConfiguration);
        let crashed = phased(pod(137, "", t), "Failed");
        assert_eq!(ended_without_job("j-1", &[crashed], none).outcome, AttemptOutcome::Failed);
        // Nothing finished (no pods, or a pod still running, or only a preempted one): deleted
        // before it finished.
        assert_eq!(ended_without_job("j-1", &[], none).outcome, AttemptOutcome::Disrupted);
        let mut preempted = phased(pod(137, "", t), "Failed");
        if let Some(s) = preempted.status.as_mut() {
            s.conditions = serde_json::from_value(json!([{"type": "DisruptionTarget", "status": "True"}])).ok();
        }
        assert_eq!(ended_without_job("j-1", &[preempted], none).outcome, AttemptOutcome::Disrupted);
    }

    #[test]
    fn outcomes_follow_the_job_and_the_exit_code() {
        let t = "2026-11-27T10:00:00Z";
        let good = pod(0, r#"{"version":"v2","uri":"pvc://models/v2"}"#, t);
        let none = Expected::default();
        assert_eq!(ended(&job(None), std::slice::from_ref(&good), none), None);
        let e = ended(&job(Some(("Complete", "CompletionsReached"))), &[good], none).unwrap_or_else(|| panic!("ended"));
        assert_eq!(e.outcome, AttemptOutcome::Succeeded);
        let e = ended(&job(Some(("Complete", "CompletionsReached"))), &[pod(0, "done", t)], none)
            .unwrap_or_else(|| panic!("ended"));
        assert_eq!(e.outcome, AttemptOutcome::MalformedResult);
        let e =
            ended(&job(Some(("Failed", "PodFailurePolicy"))), &[pod(3, "FLYWHEEL_DATASET_SHA256 mismatch", t)], none)
                .unwrap_or_else(|| panic!("ended"));
        assert_eq!((e.outcome, e.exit_code), (AttemptOutcome::BadConfiguration, Some(3)));
        assert!(e.message.contains("mismatch"), "{}", e.message);
        let e = ended(&job(Some(("Failed", "BackoffLimitExceeded"))), &[pod(75, "disk full", t)], none)
            .unwrap_or_else(|| panic!("ended"));
        assert_eq!(e.outcome, AttemptOutcome::Failed);
        assert!(e.message.contains("exit code 75") && e.message.contains("disk full"), "{}", e.message);
        // A preempted pod finished in the same second does not hide the failure that counted.
        let mut preempted = pod(137, "", t);
        if let Some(s) = preempted.status.as_mut() {
            s.conditions = serde_json::from_value(json!([{"type": "DisruptionTarget", "status": "True"}])).ok();
        }
        for pods in [[preempted.clone(), pod(75, "oom", t)], [pod(75, "oom", t), preempted]] {
            let e =
                ended(&job(Some(("Failed", "BackoffLimitExceeded"))), &pods, none).unwrap_or_else(|| panic!("ended"));
            assert_eq!(e.exit_code, Some(75));
        }
        let e = ended(&job(Some(("Failed", "DeadlineExceeded"))), &[], none).unwrap_or_else(|| panic!("ended"));
        assert_eq!(e.outcome, AttemptOutcome::DeadlineExceeded);
        let long = "x".repeat(5000);
        let e = ended(&job(Some(("Failed", "BackoffLimitExceeded"))), &[pod(1, &long, t)], none)
            .unwrap_or_else(|| panic!("ended"));
        assert!(e.message.len() < 1100);
    }
}
