use super::*;
use crate::api::model_deployment::{AnalysisSpec, Candidate, ModelSpec, RequestedAction, RolloutMode, RuntimeSpec};
use crate::api::{Lineage, TriggerReason};

fn at(s: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + s).unwrap_or_default()
}

fn spec(version: &str, steps: Vec<CanaryStep>, approval: Approval) -> ModelDeploymentSpec {
    ModelDeploymentSpec {
        model: ModelSpec { name: "m".into(), version: version.into(), uri: format!("pvc://models/{version}") },
        runtime: RuntimeSpec {
            image: "runtime".into(),
            image_pull_policy: None,
            command: vec![],
            args: vec![],
            port: 8000,
            env: vec![],
            resources: None,
            node_selector: Default::default(),
            tolerations: vec![],
            readiness_probe: None,
            liveness_probe: None,
            startup_probe: None,
            service_account_name: None,
            pod_labels: Default::default(),
            pod_annotations: Default::default(),
        },
        replicas: Some(4),
        scaling: None,
        rollout: Some(RolloutSpec {
            steps,
            analysis: Some(AnalysisSpec::default()),
            approval,
            history_limit: 3,
            progress_deadline_seconds: 600,
            mode: RolloutMode::Deployment,
        }),
        traffic: None,
        agent: None,
    }
}

fn pause(weight: i32, seconds: i64) -> CanaryStep {
    CanaryStep { weight, gate: Gate::Pause, pause_seconds: Some(seconds), deadline_seconds: 3600 }
}

fn analysis(weight: i32, deadline: i64) -> CanaryStep {
    CanaryStep { weight, gate: Gate::Analysis, pause_seconds: None, deadline_seconds: deadline }
}

fn ready() -> Observations {
    Observations { canary_ready: true, ..Observations::default() }
}

fn with_verdict(verdict: Verdict) -> Observations {
    Observations {
        canary_ready: true,
        analysis: Some(Evidence { verdict, message: format!("{verdict:?}"), ..Evidence::default() }),
        ..Observations::default()
    }
}

/// Deploy v1, then change the spec to v2.
fn rolling(spec_v2: &ModelDeploymentSpec) -> ModelDeploymentStatus {
    let mut v1 = spec_v2.clone();
    v1.model = ModelSpec { name: "m".into(), version: "v1".into(), uri: "pvc://models/v1".into() };
    let first = plan(&v1, &ModelDeploymentStatus::default(), &Observations::default(), at(0));
    assert_eq!(first.transitions, vec![Transition::Deployed { version: "v1".into() }]);
    let started = plan(spec_v2, &first.status, &Observations::default(), at(1));
    assert_eq!(
        started.transitions,
        vec![Transition::CanaryStarted {
            version: "v2".into(),
            weight: spec_v2.rollout.as_ref().map_or(0, |r| r.steps[0].weight)
        }]
    );
    started.status
}

#[test]
fn pause_steps_walk_to_promotion() {
    let s = spec("v2", vec![pause(10, 60), pause(50, 60)], Approval::Auto);
    let status = rolling(&s);
    // Not ready: the step's clock has not started.
    let waiting = plan(&s, &status, &Observations::default(), at(100));
    assert!(waiting.status.canary.as_ref().is_some_and(|c| c.step_started_at.is_none()));
    let clock = plan(&s, &waiting.status, &ready(), at(200));
    assert_eq!(clock.requeue_after, Some(std::time::Duration::from_secs(60)));
    let held = plan(&s, &clock.status, &ready(), at(259));
    assert!(held.transitions.is_empty());
    let step1 = plan(&s, &held.status, &ready(), at(260));
    assert_eq!(step1.transitions, vec![Transition::StepAdvanced { version: "v2".into(), step: 1, weight: 50 }]);
    let done = plan(&s, &step1.status, &ready(), at(320));
    assert_eq!(done.transitions, vec![Transition::Promoted { version: "v2".into(), previous: "v1".into() }]);
    assert_eq!(done.status.stable.as_ref().map(|s| s.version.as_str()), Some("v2"));
    assert!(done.status.canary.is_none());
    assert_eq!(done.status.history.last().map(|h| h.type_), Some(HistoryType::Promoted));
    // Settled: another look changes nothing.
    let again = plan(&s, &done.status, &ready(), at(400));
    assert!(again.transitions.is_empty());
    assert_eq!(again.status, done.status);
}

#[test]
fn thin_evidence_waits_then_aborts_at_the_deadline() {
    let s = spec("v2", vec![analysis(10, 600)], Approval::Auto);
    let status = plan(&s, &rolling(&s), &ready(), at(10)).status;
    let waiting = plan(&s, &status, &with_verdict(Verdict::Inconclusive), at(300));
    assert!(waiting.transitions.is_empty(), "inconclusive never promotes");
    assert!(waiting.status.canary.as_ref().and_then(|c| c.evidence.as_ref()).is_some(), "evidence recorded in status");
    let aborted = plan(&s, &waiting.status, &with_verdict(Verdict::Inconclusive), at(610));
    assert!(
        matches!(aborted.transitions.as_slice(), [Transition::Aborted { reason, rolled_back: false, .. }] if reason == "StepDeadlineExceeded")
    );
    assert_eq!(aborted.status.stable.as_ref().map(|s| s.version.as_str()), Some("v1"));
    assert!(aborted.status.canary.is_none());
}

#[test]
fn a_failing_analysis_rolls_back() {
    let s = spec("v2", vec![analysis(10, 600), analysis(50, 600)], Approval::Auto);
    let status = plan(&s, &rolling(&s), &ready(), at(10)).status;
    let failed = plan(&s, &status, &with_verdict(Verdict::Fail), at(20));
    assert!(matches!(failed.transitions.as_slice(), [Transition::Aborted { rolled_back: true, .. }]));
    let entry = failed.status.history.last().cloned().unwrap_or_else(|| panic!("no history"));
    assert_eq!((entry.type_, entry.reason.as_str()), (HistoryType::RolledBack, "AnalysisFailed"));
    assert_eq!(entry.evidence.map(|e| e.verdict), Some(Verdict::Fail));
    let passing = plan(&s, &status, &with_verdict(Verdict::Pass), at(20));
    assert_eq!(passing.transitions, vec![Transition::StepAdvanced { version: "v2".into(), step: 1, weight: 50 }]);
}

#[test]
fn manual_actions_promote_and_abort() {
    let s = spec(
        "v2",
        vec![CanaryStep { weight: 20, gate: Gate::Manual, pause_seconds: None, deadline_seconds: 3600 }],
        Approval::Manual,
    );
    let status = plan(&s, &rolling(&s), &ready(), at(10)).status;
    let waiting = plan(&s, &status, &ready(), at(100));
    assert!(waiting.transitions.is_empty(), "a Manual gate waits");
    let mut asked = waiting.status.clone();
    asked.requested_action = Some(RequestedAction {
        action: RolloutAction::Promote,
        version: "v2".into(),
        requested_at: None,
        requested_by: None,
    });
    let past_gate = plan(&s, &asked, &ready(), at(101));
    // approval Manual: the last step passed, promotion waits for a second promote.
    assert!(past_gate.transitions.is_empty() && past_gate.status.canary.is_some());
    assert!(past_gate.status.requested_action.is_none(), "the action is consumed");
    let mut again = past_gate.status.clone();
    again.requested_action = Some(RequestedAction {
        action: RolloutAction::Promote,
        version: "v2".into(),
        requested_at: None,
        requested_by: None,
    });
    let promoted = plan(&s, &again, &ready(), at(102));
    assert!(matches!(promoted.transitions.as_slice(), [Transition::Promoted { .. }]));

    let mut abort = waiting.status.clone();
    abort.requested_action = Some(RequestedAction {
        action: RolloutAction::Abort,
        version: "v2".into(),
        requested_at: None,
        requested_by: Some("alice".into()),
    });
    let aborted = plan(&s, &abort, &ready(), at(103));
    assert!(matches!(aborted.transitions.as_slice(), [Transition::Aborted { reason, .. }] if reason == "ManualAbort"));
    // An action for another version is ignored.
    let mut stray = waiting.status.clone();
    stray.requested_action = Some(RequestedAction {
        action: RolloutAction::Abort,
        version: "v9".into(),
        requested_at: None,
        requested_by: None,
    });
    assert!(plan(&s, &stray, &ready(), at(104)).transitions.is_empty());
}

#[test]
fn a_retrained_candidate_canaries_and_stays_stable_after_promotion() {
    let s = spec("v1", vec![pause(10, 0)], Approval::Auto);
    let mut status = plan(&s, &ModelDeploymentStatus::default(), &Observations::default(), at(0)).status;
    let lineage = Lineage {
        retrain_job: Some("rtj-1".into()),
        trigger_reason: Some(TriggerReason::Quality),
        ..Lineage::default()
    };
    status.candidate = Some(Candidate {
        version: "v1-ft1".into(),
        uri: "s3://m/ft1".into(),
        adapter: false,
        handed_over_at: None,
        lineage: Some(lineage.clone()),
    });
    let started = plan(&s, &status, &Observations::default(), at(1));
    assert_eq!(started.transitions, vec![Transition::CanaryStarted { version: "v1-ft1".into(), weight: 10 }]);
    assert!(started.status.candidate.is_none());
    // A zero pause passes at the first look once the canary is ready.
    let promoted = plan(&s, &started.status, &ready(), at(2));
    assert!(matches!(promoted.transitions.as_slice(), [Transition::Promoted { .. }]));
    assert_eq!(promoted.status.stable.as_ref().and_then(|s| s.lineage.clone()), Some(lineage.clone()));
    assert_eq!(promoted.status.history.last().and_then(|h| h.lineage.clone()), Some(lineage));
    // The spec still says v1, but it has not changed: the retrained version stays.
    let settled = plan(&s, &promoted.status, &ready(), at(10));
    assert!(settled.transitions.is_empty());
    assert_eq!(settled.status.stable.as_ref().map(|s| s.version.as_str()), Some("v1-ft1"));
}

#[test]
fn a_spec_change_supersedes_a_running_canary() {
    let s2 = spec("v2", vec![pause(10, 600)], Approval::Auto);
    let status = plan(&s2, &rolling(&s2), &ready(), at(10)).status;
    let s3 = spec("v3", vec![pause(10, 600)], Approval::Auto);
    let next = plan(&s3, &status, &ready(), at(20));
    assert!(
        matches!(next.transitions.as_slice(), [Transition::Aborted { reason, .. }, Transition::CanaryStarted { version, .. }] if reason == "Superseded" && version == "v3")
    );
}

#[test]
fn history_is_bounded() {
    let mut s = spec("v2", vec![pause(10, 0)], Approval::Auto);
    let mut status = rolling(&s);
    for i in 0..6 {
        status = plan(&s, &status, &ready(), at(100 + i * 10)).status;
        status = plan(&s, &status, &ready(), at(101 + i * 10)).status;
        s.model.version = format!("v{}", i + 3);
        s.model.uri = format!("pvc://models/v{}", i + 3);
        status = plan(&s, &status, &ready(), at(102 + i * 10)).status;
    }
    assert_eq!(status.history.len(), 3, "historyLimit 3");
}

#[test]
fn replicas_split_by_weight() {
    assert_eq!(split_replicas(4, None), (4, 0));
    assert_eq!(split_replicas(4, Some(10)), (3, 1), "at least one canary");
    assert_eq!(split_replicas(4, Some(50)), (2, 2));
    assert_eq!(split_replicas(10, Some(25)), (7, 3));
    assert_eq!(split_replicas(1, Some(50)), (1, 1), "stable keeps one below 100%");
    assert_eq!(split_replicas(4, Some(100)), (0, 4));
    assert_eq!(split_replicas(0, None), (0, 0));
}

#[test]
fn a_canary_never_ready_is_aborted_at_the_progress_deadline() {
    let s = spec("v2", vec![pause(10, 60), pause(50, 60)], Approval::Auto);
    let status = rolling(&s);
    // Not ready from the start (the canary started at 1): the deadline counts from then.
    let waiting = plan(&s, &status, &Observations::default(), at(10));
    let since = waiting.status.canary.as_ref().and_then(|c| c.not_ready_since.clone());
    assert_eq!(since, Some(Time(at(1))));
    assert!(waiting.transitions.is_empty());
    let still = plan(&s, &waiting.status, &Observations::default(), at(600));
    assert!(still.status.canary.is_some(), "within the deadline it waits");
    assert_eq!(still.requeue_after, Some(std::time::Duration::from_secs(1)), "looks again when the deadline falls");
    let aborted = plan(&s, &still.status, &Observations::default(), at(601));
    assert!(aborted.status.canary.is_none(), "stable takes all traffic again");
    assert_eq!(aborted.status.stable.as_ref().map(|t| t.version.as_str()), Some("v1"));
    let entry = aborted.status.history.last().cloned().unwrap_or_else(|| panic!("a history entry"));
    assert_eq!(
        (entry.type_, entry.reason.as_str(), entry.version.as_str()),
        (HistoryType::Aborted, "ProgressDeadlineExceeded", "v2")
    );
    assert!(entry.message.contains("600"), "{}", entry.message);
    assert!(
        matches!(&aborted.transitions[..], [Transition::Aborted { reason, rolled_back: false, .. }] if reason == "ProgressDeadlineExceeded")
    );
}

#[test]
fn a_flapping_canary_keeps_its_step_clock_and_evidence() {
    let s = spec("v2", vec![analysis(10, 3600), analysis(50, 3600)], Approval::Auto);
    let status = rolling(&s);
    let judged = plan(&s, &status, &with_verdict(Verdict::Inconclusive), at(100));
    let started = judged.status.canary.as_ref().and_then(|c| c.step_started_at.clone());
    assert_eq!(started, Some(Time(at(100))));
    assert!(judged.status.canary.as_ref().is_some_and(|c| c.evidence.is_some()));
    // A pod restarts: not ready for a while.
    let flap = plan(&s, &judged.status, &Observations::default(), at(200));
    let canary = flap.status.canary.clone().unwrap_or_else(|| panic!("still a canary"));
    assert_eq!(canary.step_started_at, started, "the step's clock is kept");
    assert!(canary.evidence.is_some(), "the evidence is kept");
    assert_eq!(canary.not_ready_since, Some(Time(at(200))));
    // Ready again: the same step, judged over the same period; the deadline clock clears.
    let back = plan(&s, &flap.status, &with_verdict(Verdict::Pass), at(300));
    let canary = back.status.canary.clone().unwrap_or_else(|| panic!("still a canary"));
    assert_eq!((canary.step, canary.weight), (1, 50), "the step passed on its evidence");
    assert_eq!(canary.not_ready_since, None);
    // A flap in the next step, shorter than the deadline, then ready: no abort.
    let flap = plan(&s, &back.status, &Observations::default(), at(400));
    let again = plan(&s, &flap.status, &with_verdict(Verdict::Inconclusive), at(900));
    assert!(again.status.canary.is_some() && again.transitions.is_empty());
}

#[test]
fn an_unservable_candidate_is_rejected_and_stable_keeps_serving() {
    let s = spec("v1", vec![pause(10, 60)], Approval::Auto);
    let first = plan(&s, &ModelDeploymentStatus::default(), &Observations::default(), at(0));
    let mut status = first.status;
    status.candidate = Some(Candidate {
        version: "v2".into(),
        uri: "/var/run/flywheel/output-claim/v2".into(),
        adapter: false,
        handed_over_at: Some(Time(at(5))),
        lineage: None,
    });
    let problem = Unservable { reason: "UnservableURI".into(), message: "model URI has an unsupported scheme".into() };
    let observed = Observations { candidate_unservable: Some(problem), ..Observations::default() };
    let decided = plan(&s, &status, &observed, at(10));
    assert!(decided.status.candidate.is_none(), "the candidate is cleared");
    assert!(decided.status.canary.is_none(), "no canary starts");
    assert_eq!(decided.status.stable.as_ref().map(|t| t.version.as_str()), Some("v1"));
    let entry = decided.status.history.last().cloned().unwrap_or_else(|| panic!("a history entry"));
    assert_eq!((entry.type_, entry.reason.as_str()), (HistoryType::Rejected, "UnservableURI"));
    assert_eq!(decided.transitions.len(), 1);
    assert_eq!(decided.transitions[0].reason(), "CandidateRejected");
    // Nothing left to decide: the next look changes nothing.
    let next = plan(&s, &decided.status, &Observations::default(), at(20));
    assert_eq!(next.status, decided.status);
}

#[test]
fn a_canary_that_became_unservable_is_aborted() {
    let s = spec("v2", vec![pause(10, 60)], Approval::Auto);
    let status = rolling(&s);
    let problem = Unservable { reason: "MissingPersistentVolumeClaim".into(), message: "gone".into() };
    let observed = Observations { canary_ready: true, canary_unservable: Some(problem), ..Observations::default() };
    let decided = plan(&s, &status, &observed, at(10));
    assert!(decided.status.canary.is_none());
    let entry = decided.status.history.last().cloned().unwrap_or_else(|| panic!("a history entry"));
    assert_eq!((entry.type_, entry.reason.as_str()), (HistoryType::Aborted, "MissingPersistentVolumeClaim"));
}

fn adapter_spec(version: &str) -> ModelDeploymentSpec {
    let mut s = spec(version, vec![pause(20, 30)], Approval::Auto);
    if let Some(r) = s.rollout.as_mut() {
        r.mode = RolloutMode::Adapter;
    }
    s
}

fn adapter_candidate(version: &str) -> Candidate {
    Candidate {
        version: version.into(),
        uri: format!("s3://adapters/{version}"),
        adapter: true,
        handed_over_at: Some(Time(at(1))),
        lineage: None,
    }
}

#[test]
fn an_adapter_canary_is_promoted_as_the_stable_adapter_on_the_same_base() {
    let s = adapter_spec("v1");
    let mut status = plan(&s, &ModelDeploymentStatus::default(), &Observations::default(), at(0)).status;
    status.candidate = Some(adapter_candidate("a1"));
    let started = plan(&s, &status, &Observations::default(), at(1));
    let canary = started.status.canary.clone().unwrap_or_default();
    assert!(canary.adapter && canary.version == "a1" && canary.weight == 20);
    // The step's clock waits for every pod to hold it (the driver's `canary_ready`).
    let waiting = plan(&s, &started.status, &Observations::default(), at(5));
    assert!(waiting.status.canary.as_ref().is_some_and(|c| c.step_started_at.is_none()));
    let held = plan(&s, &waiting.status, &ready(), at(6));
    assert_eq!(held.status.canary.as_ref().and_then(|c| c.step_started_at.clone()), Some(Time(at(6))));
    let done = plan(&s, &held.status, &ready(), at(40));
    let stable = done.status.stable.clone().unwrap_or_default();
    assert_eq!((stable.version.as_str(), stable.adapter), ("a1", true));
    assert_eq!(done.status.observed_model.map(|m| m.version).as_deref(), Some("v1"), "the base is unchanged");
}

#[test]
fn a_new_base_in_adapter_mode_supersedes_the_adapters_without_a_canary() {
    let s = adapter_spec("v1");
    let mut status = plan(&s, &ModelDeploymentStatus::default(), &Observations::default(), at(0)).status;
    status.stable = Some(TrackStatus {
        version: "a1".into(),
        uri: "s3://adapters/a1".into(),
        adapter: true,
        ..TrackStatus::default()
    });
    status.candidate = Some(adapter_candidate("a2"));
    let running = plan(&s, &status, &Observations::default(), at(1)).status;
    assert!(running.canary.is_some());
    let next = plan(&adapter_spec("v2"), &running, &ready(), at(2));
    assert!(next.status.canary.is_none(), "the adapter canary of the old base is gone");
    let stable = next.status.stable.clone().unwrap_or_default();
    assert_eq!((stable.version.as_str(), stable.adapter), ("v2", false), "the new base serves alone");
    let superseded = next.status.history.last().cloned().unwrap_or_else(|| panic!("history"));
    assert_eq!((superseded.version.as_str(), superseded.reason.as_str()), ("a2", "Superseded"));
    assert!(next.transitions.contains(&Transition::Deployed { version: "v2".into() }));
}

#[test]
fn an_adapter_steps_clock_starts_when_the_pods_route_at_its_new_weight() {
    let mut s = adapter_spec("v1");
    if let Some(r) = s.rollout.as_mut() {
        r.steps = vec![pause(20, 10), pause(50, 10)];
    }
    let mut status = plan(&s, &ModelDeploymentStatus::default(), &Observations::default(), at(0)).status;
    status.candidate = Some(adapter_candidate("a1"));
    let started = plan(&s, &status, &ready(), at(1)).status;
    let held = plan(&s, &started, &ready(), at(2)).status;
    let advanced = plan(&s, &held, &ready(), at(20));
    let canary = advanced.status.canary.clone().unwrap_or_default();
    assert_eq!((canary.step, canary.weight, canary.step_started_at), (1, 50, None), "not before the pods hold 50 %");
    // The pods still route at 20 %: the step waits.
    let waiting = plan(&s, &advanced.status, &Observations::default(), at(25));
    assert!(waiting.status.canary.as_ref().is_some_and(|c| c.step_started_at.is_none()));
    let at_50 = plan(&s, &waiting.status, &ready(), at(30));
    assert_eq!(at_50.status.canary.and_then(|c| c.step_started_at), Some(Time(at(30))));
}
