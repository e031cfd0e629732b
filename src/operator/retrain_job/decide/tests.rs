//! The RetrainJob's decisions with a fixed clock, from fixtures of its Jobs, pods and target.

use super::*;
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

fn at(s: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + s).unwrap_or_default()
}

fn rtj(status: serde_json::Value, promotion: &str) -> RetrainJob {
    serde_json::from_value(json!({
        "apiVersion": "flywheel.dev/v1alpha1", "kind": "RetrainJob",
        "metadata": {"name": "chat-1", "namespace": "team", "uid": "r-1", "generation": 1,
                     "creationTimestamp": Time(at(-100))},
        "spec": {"targetRef": {"name": "chat"}, "base": {"version": "v1", "uri": "pvc://models/v1"},
                 "dataset": {"uri": "http://c/v1/datasets/ds-1/files", "sha256": "a".repeat(64), "formats": ["SFT"],
                             "counts": {"sft": 10, "dpo": 0, "heldOut": 1}},
                 "trainer": {"image": "trainer:1", "retries": 1}, "outputUri": "pvc://models/chat-1",
                 "promotion": promotion},
        "status": status,
    }))
    .unwrap_or_else(|e| panic!("{e}"))
}

fn settings() -> ChildSettings {
    ChildSettings { operator_image: "flywheel:test".into(), collector_url: None, collector_token_secret: "t".into() }
}

fn job(n: i32, condition: Option<(&str, &str)>) -> Job {
    let conditions: Vec<serde_json::Value> =
        condition.map(|(t, r)| vec![json!({"type": t, "status": "True", "reason": r})]).unwrap_or_default();
    serde_json::from_value(json!({"metadata": {"name": format!("chat-1-{n}"), "creationTimestamp": Time(at(-90))},
                                  "status": {"conditions": conditions}}))
    .unwrap_or_else(|e| panic!("{e}"))
}

fn pod(code: i32, phase: &str, message: &str) -> Pod {
    serde_json::from_value(
        json!({"metadata": {"name": "chat-1-1-x"}, "status": {"phase": phase, "containerStatuses": [{
        "name": "trainer", "image": "t", "imageID": "", "ready": false, "restartCount": 0,
        "state": {"terminated": {"exitCode": code, "message": message, "finishedAt": Time(at(-10))}}}]}}),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn md(status: serde_json::Value) -> ModelDeployment {
    serde_json::from_value(json!({
        "apiVersion": "flywheel.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "chat", "namespace": "team", "resourceVersion": "42"},
        "spec": {"model": {"name": "m", "version": "v1", "uri": "pvc://models/v1"}, "runtime": {"image": "r"}},
        "status": status,
    }))
    .unwrap_or_else(|e| panic!("{e}"))
}

fn running() -> serde_json::Value {
    json!({"phase": "Running", "attemptCount": 1, "attempts": [{"index": 1, "jobName": "chat-1-1"}]})
}

#[test]
fn the_first_look_starts_attempt_one() {
    let d =
        decide(&rtj(json!(null), "None"), &Observed::default(), &settings(), at(0)).unwrap_or_else(|e| panic!("{e}"));
    let created = d.children.create.as_ref().and_then(|j| j.metadata.name.clone());
    assert_eq!(created.as_deref(), Some("chat-1-1"));
    assert_eq!((d.status.phase, d.status.attempt_count), (RetrainPhase::Running, 1));
    assert_eq!(d.events.iter().map(|e| e.reason.as_str()).collect::<Vec<_>>(), ["AttemptStarted"]);
    assert_eq!(d.requeue, Some(Duration::from_secs(60)));
}

#[test]
fn a_running_job_changes_nothing() {
    let r = rtj(running(), "None");
    let observed = Observed { jobs: [(1, job(1, None))].into(), ..Observed::default() };
    let d = decide(&r, &observed, &settings(), at(0)).unwrap_or_else(|e| panic!("{e}"));
    assert!(d.children.create.is_none() && d.events.is_empty());
    let again =
        decide(&rtj(serde_json::to_value(&d.status).unwrap_or_default(), "None"), &observed, &settings(), at(5))
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again.status, d.status, "an unchanged look writes nothing");
}

#[test]
fn a_completed_job_succeeds_and_its_version_is_handed_over() {
    let r = rtj(running(), "Canary");
    let observed = Observed {
        jobs: [(1, job(1, Some(("Complete", "CompletionsReached"))))].into(),
        pods: vec![pod(0, "Succeeded", r#"{"version":"v2","uri":"pvc://models/chat-1"}"#)],
        target: Some(md(json!({"stable": {"version": "v1", "uri": "pvc://models/v1"}}))),
        evaluation_job: None,
    };
    let d = decide(&r, &observed, &settings(), at(0)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(d.status.phase, RetrainPhase::Succeeded);
    assert_eq!(d.children.ended, [AttemptOutcome::Succeeded]);
    let h = d.children.hand_over.clone().unwrap_or_else(|| panic!("a hand-over"));
    assert_eq!((h.target.as_str(), h.resource_version.as_deref()), ("chat", Some("42")));
    assert_eq!(h.candidate.version, "v2");
    assert_eq!(h.candidate.lineage.as_ref().and_then(|l| l.retrain_job.as_deref()), Some("chat-1"));
    let ready = conditions::get(&d.status.conditions, "Ready").cloned().unwrap_or_else(|| panic!("Ready"));
    assert_eq!(ready.reason, "HandingOver");
    let done = handed_over(&r, d, &h, at(1));
    assert_eq!(done.status.handed_over_at, Some(Time(at(1))));
    assert!(conditions::is_true(&done.status.conditions, "Ready"));
    assert!(done.events.iter().any(|e| e.reason == "HandedOver"));
}

#[test]
fn a_version_the_model_deployment_knows_is_not_handed_over_twice_and_a_missing_target_stalls() {
    let done = json!({"phase": "Succeeded", "attemptCount": 1, "attempts": [{"index": 1, "jobName": "chat-1-1", "outcome": "Succeeded"}],
                      "result": {"version": "v2", "uri": "pvc://models/chat-1"}});
    let r = rtj(done, "Canary");
    let knows = Observed {
        target: Some(md(json!({"candidate": {"version": "v2", "uri": "pvc://models/chat-1"}}))),
        ..Observed::default()
    };
    let d = decide(&r, &knows, &settings(), at(0)).unwrap_or_else(|e| panic!("{e}"));
    assert!(d.children.hand_over.is_none());
    assert_eq!(d.status.handed_over_at, Some(Time(at(0))));
    let d = decide(&r, &Observed::default(), &settings(), at(0)).unwrap_or_else(|e| panic!("{e}"));
    let stalled = conditions::get(&d.status.conditions, "Stalled").cloned().unwrap_or_else(|| panic!("Stalled"));
    assert_eq!(stalled.reason, "MissingTarget");
    assert_eq!(d.requeue, Some(Duration::from_secs(30)));
}

#[test]
fn failures_are_retried_within_the_limit_and_bad_configuration_is_not() {
    let r = rtj(running(), "None");
    let crashed = Observed {
        jobs: [(1, job(1, Some(("Failed", "BackoffLimitExceeded"))))].into(),
        pods: vec![pod(75, "Failed", "CUDA out of memory")],
        target: None,
        evaluation_job: None,
    };
    let d = decide(&r, &crashed, &settings(), at(0)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(d.status.attempts[0].outcome, Some(AttemptOutcome::Failed));
    assert_eq!(d.children.create.as_ref().and_then(|j| j.metadata.name.as_deref()), Some("chat-1-2"), "retry 1 of 1");
    // The second failure exhausts the retries.
    let second = json!({"phase": "Running", "attemptCount": 2, "attempts": [
        {"index": 1, "jobName": "chat-1-1", "outcome": "Failed"}, {"index": 2, "jobName": "chat-1-2"}]});
    let again = Observed { jobs: [(2, job(2, Some(("Failed", "BackoffLimitExceeded"))))].into(), ..crashed.clone() };
    let d = decide(&rtj(second, "None"), &again, &settings(), at(10)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(d.status.phase, RetrainPhase::Failed);
    assert!(d.children.create.is_none());
    assert_eq!(conditions::get(&d.status.conditions, "Stalled").map(|c| c.reason.as_str()), Some("RetriesExhausted"));
    let bad = Observed {
        jobs: [(1, job(1, Some(("Failed", "PodFailurePolicy"))))].into(),
        pods: vec![pod(3, "Failed", "FLYWHEEL_DATASET_SHA256 does not match")],
        target: None,
        evaluation_job: None,
    };
    let d = decide(&r, &bad, &settings(), at(0)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((d.status.phase, d.children.create.is_none()), (RetrainPhase::Failed, true));
    assert_eq!(conditions::get(&d.status.conditions, "Stalled").map(|c| c.reason.as_str()), Some("BadConfiguration"));
}

#[test]
fn a_job_gone_is_read_from_its_pods_and_only_a_disruption_runs_again() {
    let r = rtj(running(), "None");
    let finished = Observed {
        pods: vec![pod(0, "Succeeded", r#"{"version":"v2","uri":"pvc://models/chat-1"}"#)],
        ..Observed::default()
    };
    let d = decide(&r, &finished, &settings(), at(0)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(d.status.phase, RetrainPhase::Succeeded);
    assert!(d.children.create.is_none(), "a finished attempt is never run again");
    let d = decide(&r, &Observed::default(), &settings(), at(0)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(d.status.attempts[0].outcome, Some(AttemptOutcome::Disrupted));
    assert_eq!(d.children.create.as_ref().and_then(|j| j.metadata.name.as_deref()), Some("chat-1-2"));
}

#[test]
fn a_job_made_before_a_crash_is_adopted_not_made_again() {
    let r = rtj(json!(null), "None");
    let observed = Observed { jobs: [(1, job(1, None))].into(), ..Observed::default() };
    let d = decide(&r, &observed, &settings(), at(0)).unwrap_or_else(|e| panic!("{e}"));
    assert!(d.children.create.is_none());
    assert_eq!((d.status.attempt_count, d.status.attempts[0].job_name.as_str()), (1, "chat-1-1"));
}

#[test]
fn an_attempt_whose_job_was_removed_before_it_was_recorded_is_adopted_from_its_pods() {
    // The crash came between creating attempt 2's Job and recording it; the Job finished and
    // was removed before this look. Its pod (kept by the result finalizer) is the attempt.
    let first_failed = json!({"phase": "Running", "attemptCount": 1,
        "attempts": [{"index": 1, "jobName": "chat-1-1", "outcome": "Failed"}]});
    let mut kept = pod(0, "Succeeded", r#"{"version":"v2","uri":"pvc://models/chat-1"}"#);
    kept.metadata.labels = Some([(job::LABEL_ATTEMPT.to_string(), "2".to_string())].into());
    kept.metadata.creation_timestamp = Some(Time(at(-60)));
    let observed = Observed { pods: vec![kept.clone()], ..Observed::default() };
    let d = decide(&rtj(first_failed.clone(), "None"), &observed, &settings(), at(0)).unwrap_or_else(|e| panic!("{e}"));
    assert!(d.children.create.is_none(), "not run again");
    let recorded: Vec<_> = d.status.attempts.iter().map(|a| (a.index, a.job_name.as_str(), a.outcome)).collect();
    assert_eq!(
        recorded,
        vec![(1, "chat-1-1", Some(AttemptOutcome::Failed)), (2, "chat-1-2", Some(AttemptOutcome::Succeeded))]
    );
    assert_eq!(d.status.phase, RetrainPhase::Succeeded);
    // A pod of an attempt status already has is not adopted twice.
    let mut old = kept;
    old.metadata.labels = Some([(job::LABEL_ATTEMPT.to_string(), "1".to_string())].into());
    let d =
        decide(&rtj(first_failed, "None"), &Observed { pods: vec![old], ..Observed::default() }, &settings(), at(0))
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(d.children.create.as_ref().and_then(|j| j.metadata.name.as_deref()), Some("chat-1-2"));
    assert_eq!(d.status.attempts.len(), 2);
}

#[test]
fn the_unrecorded_attempt_is_the_first_after_the_count() {
    let labelled = |n: &str| {
        let mut p = pod(0, "Succeeded", "");
        p.metadata.name = Some(format!("chat-1-{n}-x"));
        p.metadata.labels = Some([(job::LABEL_ATTEMPT.to_string(), n.to_string())].into());
        p
    };
    let pods = vec![labelled("1"), labelled("3"), labelled("2"), labelled("x"), labelled("2")];
    let names = |ps: Vec<Pod>| ps.into_iter().filter_map(|p| p.metadata.name).collect::<Vec<_>>();
    assert_eq!(names(super::super::observe::unrecorded_attempt(pods.clone(), 1)), vec!["chat-1-2-x", "chat-1-2-x"]);
    assert_eq!(names(super::super::observe::unrecorded_attempt(pods.clone(), 3)), Vec::<String>::new());
}

fn gated(status: serde_json::Value, job: bool) -> RetrainJob {
    let mut r = rtj(status, "Canary");
    let mut evaluation: crate::api::common::EvaluationSpec = serde_json::from_value(json!({
        "rules": [{"metric": "evalLoss", "better": "Lower", "minImprovement": 0.05},
                  {"metric": "preferenceAccuracy", "better": "Higher", "maxRegression": 0.02}]
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    if job {
        evaluation.job = Some(crate::api::common::TrainerTemplate::with_image("evaluator:1"));
    }
    r.spec.evaluation = Some(evaluation);
    r
}

fn trained(metrics: &str) -> Observed {
    Observed {
        jobs: [(1, job(1, Some(("Complete", "CompletionsReached"))))].into(),
        pods: vec![pod(
            0,
            "Succeeded",
            &format!(r#"{{"version":"v2","uri":"pvc://models/chat-1","metrics":{metrics}}}"#),
        )],
        target: Some(md(json!({"stable": {"version": "v1", "uri": "pvc://models/v1"}}))),
        evaluation_job: None,
    }
}

#[test]
fn a_candidate_worse_on_the_held_out_rows_is_rejected_and_never_handed_over() {
    let metrics = r#"{"evalLoss":1.9,"evalLossBefore":1.8,"preferenceAccuracy":0.7,"preferenceAccuracyBefore":0.7}"#;
    let d = decide(&gated(running(), false), &trained(metrics), &settings(), at(0)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(d.status.phase, RetrainPhase::Rejected);
    assert!(d.children.hand_over.is_none(), "no canary, no user traffic");
    let accepted =
        conditions::get(&d.status.conditions, CONDITION_ACCEPTED).cloned().unwrap_or_else(|| panic!("Accepted"));
    assert_eq!((accepted.status, accepted.reason.as_str()), (ConditionStatus::False, "EvaluationFailed"));
    assert_eq!(accepted.message, "evalLoss 1.9000 must be at least 0.0500 below the base's 1.8000");
    let ready = conditions::get(&d.status.conditions, "Ready").cloned().unwrap_or_else(|| panic!("Ready"));
    assert_eq!(ready.reason, "Rejected");
    assert!(d.events.iter().any(|e| e.reason == "Rejected" && e.type_ == kube::runtime::events::EventType::Warning));
    let rules = d.status.evaluation.as_ref().map(|e| e.rules.clone()).unwrap_or_default();
    assert_eq!(rules.iter().map(|r| r.passed).collect::<Vec<_>>(), [false, true]);
    // Finished: nothing happens on the next look.
    let again = decide(
        &gated(serde_json::to_value(&d.status).unwrap_or_default(), false),
        &Observed::default(),
        &settings(),
        at(5),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(again.children.create.is_none() && again.children.hand_over.is_none());
}

#[test]
fn a_better_candidate_goes_on_to_the_canary_with_its_evaluation_in_the_lineage() {
    let metrics = r#"{"evalLoss":1.6,"evalLossBefore":1.8,"preferenceAccuracy":0.71,"preferenceAccuracyBefore":0.7}"#;
    let d = decide(&gated(running(), false), &trained(metrics), &settings(), at(0)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(d.status.phase, RetrainPhase::Succeeded);
    assert!(conditions::is_true(&d.status.conditions, CONDITION_ACCEPTED));
    // The hand-over is decided on the status as written: on the next look it carries the rules.
    let r = gated(serde_json::to_value(&d.status).unwrap_or_default(), false);
    let observed = Observed { target: trained(metrics).target, ..Observed::default() };
    let next = decide(&r, &observed, &settings(), at(1)).unwrap_or_else(|e| panic!("{e}"));
    let h = next.children.hand_over.unwrap_or_else(|| panic!("handed over"));
    let rules = h.candidate.lineage.map(|l| l.evaluation).unwrap_or_default();
    assert_eq!(rules.len(), 2);
    assert!(rules.iter().all(|r| r.passed));
}

#[test]
fn an_evaluation_job_runs_after_training_and_its_metrics_decide() {
    let d = decide(&gated(running(), true), &trained(r#"{"evalLoss":1.6}"#), &settings(), at(0))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(d.status.phase, RetrainPhase::Evaluating);
    let eval = d.children.create.clone().unwrap_or_else(|| panic!("the evaluation Job"));
    assert_eq!(eval.metadata.name.as_deref(), Some("chat-1-eval"));
    let env: Vec<(String, String)> = eval
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|p| {
            p.containers[0]
                .env
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|e| (e.name, e.value.unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    for (k, v) in [
        ("FLYWHEEL_CANDIDATE_DIR", "/var/run/flywheel/candidate-claim/chat-1"),
        ("FLYWHEEL_CANDIDATE_ARTIFACT", "model"),
        ("FLYWHEEL_CANDIDATE_VERSION", "v2"),
        ("FLYWHEEL_BASE_MODEL_URI", "/var/run/flywheel/base-claim/v1"),
    ] {
        assert!(env.contains(&(k.to_string(), v.to_string())), "{k}={v} in {env:?}");
    }
    // The evaluation Job's metrics win over the trainer's.
    let evaluating = gated(serde_json::to_value(&d.status).unwrap_or_default(), true);
    let eval_job: Job = serde_json::from_value(json!({"metadata": {"name": "chat-1-eval"},
        "status": {"conditions": [{"type": "Complete", "status": "True"}]}}))
    .unwrap_or_else(|e| panic!("{e}"));
    let metrics =
        r#"{"metrics":{"evalLoss":1.85,"evalLossBefore":1.8,"preferenceAccuracy":0.7,"preferenceAccuracyBefore":0.7}}"#;
    let observed =
        Observed { evaluation_job: Some(eval_job), pods: vec![pod(0, "Succeeded", metrics)], ..Observed::default() };
    let done = decide(&evaluating, &observed, &settings(), at(10)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(done.status.phase, RetrainPhase::Rejected, "the evaluator's 1.85 decides, not the trainer's 1.6");
    assert_eq!(done.status.result.as_ref().and_then(|r| r.metrics.get("evalLoss")), Some(&1.85));
    // A failed evaluation Job fails the run, with its reason.
    let failed: Job = serde_json::from_value(json!({"metadata": {"name": "chat-1-eval"},
        "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}}))
    .unwrap_or_else(|e| panic!("{e}"));
    let observed = Observed {
        evaluation_job: Some(failed),
        pods: vec![pod(1, "Failed", "judge unreachable")],
        ..Observed::default()
    };
    let failed = decide(&evaluating, &observed, &settings(), at(10)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(failed.status.phase, RetrainPhase::Failed);
    assert_eq!(
        conditions::get(&failed.status.conditions, "Stalled").map(|c| c.reason.as_str()),
        Some("EvaluationFailed")
    );
    // Deleted before it finished: made again.
    let again = decide(&evaluating, &Observed::default(), &settings(), at(10)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again.children.create.and_then(|j| j.metadata.name), Some("chat-1-eval".to_string()));
}

#[test]
fn a_queued_attempt_waits_for_admission_and_a_preemption_costs_no_retry() {
    let mut r = rtj(running(), "None");
    r.spec.trainer.queue_name = Some("gpu-queue".into());
    let suspended: Job = serde_json::from_value(json!({"metadata": {"name": "chat-1-1"}, "spec": {"suspend": true,
        "template": {"spec": {"containers": []}}}, "status": {}}))
    .unwrap_or_else(|e| panic!("{e}"));
    let observed = Observed { jobs: [(1, suspended.clone())].into(), ..Observed::default() };
    let d = decide(&r, &observed, &settings(), at(0)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(d.status.phase, RetrainPhase::Queued);
    let queued = conditions::get(&d.status.conditions, CONDITION_QUEUED).cloned().unwrap_or_else(|| panic!("Queued"));
    assert_eq!((queued.status, queued.reason.as_str()), (ConditionStatus::True, "WaitingForAdmission"));
    assert!(queued.message.contains("gpu-queue"), "{}", queued.message);
    assert!(d.children.create.is_none() && d.status.attempts[0].outcome.is_none(), "waits, never fails");
    // Admitted: running.
    let admitted = Observed { jobs: [(1, job(1, None))].into(), ..Observed::default() };
    let r2 = {
        let mut r = rtj(serde_json::to_value(&d.status).unwrap_or_default(), "None");
        r.spec.trainer.queue_name = Some("gpu-queue".into());
        r
    };
    let d2 = decide(&r2, &admitted, &settings(), at(10)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(d2.status.phase, RetrainPhase::Running);
    let queued = conditions::get(&d2.status.conditions, CONDITION_QUEUED).cloned().unwrap_or_else(|| panic!("Queued"));
    assert_eq!((queued.status, queued.reason.as_str()), (ConditionStatus::False, "Admitted"));
    // Preempted (suspended again): queued again, the same attempt, no retry used.
    let r3 = {
        let mut r = rtj(serde_json::to_value(&d2.status).unwrap_or_default(), "None");
        r.spec.trainer.queue_name = Some("gpu-queue".into());
        r
    };
    let d3 = decide(&r3, &observed, &settings(), at(20)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((d3.status.phase, d3.status.attempt_count), (RetrainPhase::Queued, 1));
    assert!(d3.children.create.is_none());
}

#[test]
fn an_adapter_goes_to_a_model_deployment_in_adapter_mode_and_is_refused_by_any_other() {
    let r = rtj(running(), "Canary");
    let adapter_line = r#"{"version":"a2","uri":"pvc://models/chat-1","artifact":"adapter"}"#;
    let mut target = md(json!({"stable": {"version": "v1", "uri": "pvc://models/v1"}}));
    target.spec.rollout = Some(serde_json::from_value(json!({"mode": "Adapter"})).unwrap_or_else(|e| panic!("{e}")));
    let observed = |target: ModelDeployment| Observed {
        jobs: [(1, job(1, Some(("Complete", "CompletionsReached"))))].into(),
        pods: vec![pod(0, "Succeeded", adapter_line)],
        target: Some(target),
        evaluation_job: None,
    };
    let d = decide(&r, &observed(target), &settings(), at(0)).unwrap_or_else(|e| panic!("{e}"));
    let h = d.children.hand_over.unwrap_or_else(|| panic!("a hand-over"));
    assert_eq!((h.candidate.version.as_str(), h.candidate.adapter), ("a2", true));
    // A ModelDeployment that serves whole models cannot take it: the result is malformed.
    let whole = md(json!({"stable": {"version": "v1", "uri": "pvc://models/v1"}}));
    let d = decide(&r, &observed(whole), &settings(), at(0)).unwrap_or_else(|e| panic!("{e}"));
    assert!(d.children.hand_over.is_none());
    assert_eq!(d.status.phase, RetrainPhase::Failed, "{:?}", d.status);
}
