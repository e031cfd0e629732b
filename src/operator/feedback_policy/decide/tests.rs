//! The FeedbackPolicy's decisions with a fixed clock, from fixtures of what was observed.

use super::*;
use crate::collector::client::CollectorClient;
use crate::collector::stats::StatsReport;
use crate::operator::feedback_policy::observe::Readings;
use crate::operator::feedback_policy::retrains::seq_of_trigger;
use serde_json::json;

fn at(s: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + s).unwrap_or_default()
}

fn policy(mode: &str, status: serde_json::Value) -> FeedbackPolicy {
    serde_json::from_value(json!({
        "apiVersion": "flywheel.dev/v1alpha1", "kind": "FeedbackPolicy",
        "metadata": {"name": "chat-quality", "namespace": "team", "uid": "p-1", "generation": 1,
                     "creationTimestamp": Time(at(-86_400))},
        "spec": {"targetRef": {"name": "chat"}, "mode": mode, "windowSeconds": 3600,
                 "triggers": {"minSamples": 100, "qualityBelow": 0.7}, "cooldownSeconds": 600,
                 "maxRetrainsPerDay": 3, "trainer": {"image": "trainer:1"}, "outputUriPrefix": "pvc://models/"},
        "status": status,
    }))
    .unwrap_or_else(|e| panic!("{e}"))
}

fn target() -> ModelDeployment {
    serde_json::from_value(json!({
        "apiVersion": "flywheel.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "chat", "namespace": "team"},
        "spec": {"model": {"name": "m", "version": "v1", "uri": "pvc://models/v1"}, "runtime": {"image": "r"}},
        "status": {"stable": {"version": "v1", "uri": "pvc://models/v1"}},
    }))
    .unwrap_or_else(|e| panic!("{e}"))
}

fn stats(positive: i64, judged: i64) -> StatsReport {
    let value = (judged > 0).then(|| positive as f64 / judged as f64);
    serde_json::from_value(json!({"versions": [{
        "version": "v1",
        "total": judged,
        "positiveRate": {"value": value, "numerator": positive, "denominator": judged},
    }]}))
    .unwrap_or_else(|e| panic!("{e}"))
}

fn readings(window: StatsReport, rtjs: Vec<RetrainJob>) -> Readings {
    Readings {
        md: target(),
        rtjs,
        since_last: window.clone(),
        window,
        window_from: at(-3600),
        since: at(-86_400),
        collector: CollectorClient::new("http://collector:8090", None),
    }
}

fn snapshot() -> Snapshot {
    Snapshot {
        id: "ds-1".into(),
        sha256: "a".repeat(64),
        counts: crate::api::common::DatasetCounts { sft: 40, dpo: 10, held_out: 5 },
        uri: "http://collector:8090/v1/datasets/ds-1/files".into(),
    }
}

#[test]
fn quality_above_the_threshold_is_quiet_and_looks_again_within_a_minute() {
    let p = policy("auto", json!(null));
    let d = decide(&p, &readings(stats(90, 100), vec![]), at(0));
    assert!(d.children.fire.is_none());
    let ready = conditions::get(&d.status.conditions, CONDITION_READY).cloned().unwrap_or_else(|| panic!("Ready"));
    assert_eq!(ready.reason, "Watching");
    assert_eq!(d.status.stats.as_ref().map(|s| (s.positive, s.judged)), Some((90, 100)));
    assert_eq!(d.requeue, Some(Duration::from_secs(60)));
}

#[test]
fn a_dip_fires_once_with_the_next_sequence_and_the_stable_base() {
    let p = policy(
        "auto",
        json!({"lastTrigger": {"id": "trigger-4", "reason": "Quality", "message": "m",
                                   "time": Time(at(-50_000)), "retrainJob": "chat-quality-4"}}),
    );
    let d = decide(&p, &readings(stats(50, 100), vec![]), at(0));
    let fire = d.children.fire.clone().unwrap_or_else(|| panic!("fires"));
    assert_eq!(fire.seq, 5);
    assert_eq!(fire.firing.reason, TriggerReason::Quality);
    assert_eq!((fire.base.version.as_str(), fire.base.uri.as_str()), ("v1", "pvc://models/v1"));
    assert_eq!(fire.from, at(-3600));
    // The snapshot came back: the trigger is recorded with its RetrainJob, the Event says so.
    let done = fired(&p, d, &fire, "chat-quality-5", &snapshot(), at(1));
    let last = done.status.last_trigger.clone().unwrap_or_else(|| panic!("recorded"));
    assert_eq!((last.id.as_str(), last.retrain_job.as_deref()), ("trigger-5", Some("chat-quality-5")));
    assert_eq!(done.status.recent_retrains, vec![Time(at(1))]);
    assert_eq!(done.status.next_eligible_time, Some(Time(at(601))), "the cooldown counts from now");
    assert!(done.events.iter().any(|e| e.reason == "Triggered" && e.note.contains("ds-1")));
    let rtj =
        build_retrain_job(&p, fire.seq, &fire.firing, &snapshot(), fire.base.clone()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rtj.spec.output_uri, "pvc://models/chat-quality-5");
    assert_eq!(rtj.owner_references()[0].uid, "p-1");
}

#[test]
fn too_few_rows_postpone_with_one_warning() {
    let p = policy("auto", json!(null));
    let d = decide(&p, &readings(stats(50, 100), vec![]), at(0));
    let fire = d.children.fire.clone().unwrap_or_else(|| panic!("fires"));
    let later = postponed(&p, d, &fire, 3, 20, at(0));
    let ready = conditions::get(&later.status.conditions, CONDITION_READY).cloned().unwrap_or_else(|| panic!("Ready"));
    assert_eq!(ready.reason, "NotEnoughRows");
    assert_eq!(later.events.iter().filter(|e| e.reason == "NotEnoughRows").count(), 1);
    assert!(later.status.last_trigger.is_none(), "nothing recorded: it fires again when rows come");
    // Postponed again on the next look: no second warning.
    let p2 = policy("auto", serde_json::to_value(&later.status).unwrap_or_default());
    let d2 = decide(&p2, &readings(stats(50, 100), vec![]), at(30));
    let again = postponed(&p2, d2, &fire, 3, 20, at(30));
    assert!(again.events.iter().all(|e| e.reason != "NotEnoughRows"));
}

#[test]
fn suggest_mode_sets_the_condition_and_one_event_and_creates_nothing() {
    let p = policy("suggest", json!(null));
    let d = decide(&p, &readings(stats(50, 100), vec![]), at(0));
    assert!(d.children.fire.is_none());
    assert!(conditions::is_true(&d.status.conditions, CONDITION_SUGGESTED));
    assert_eq!(d.children.suggested, Some(TriggerReason::Quality));
    assert_eq!(d.events.len(), 1);
    let again = decide(
        &policy("suggest", serde_json::to_value(&d.status).unwrap_or_default()),
        &readings(stats(50, 100), vec![]),
        at(10),
    );
    assert!(again.events.is_empty() && again.children.suggested.is_none(), "one Event per suggestion");
}

#[test]
fn a_retrain_created_before_a_crash_is_adopted_and_holds_the_next_trigger() {
    let p = policy("auto", json!(null));
    let rtj: RetrainJob = serde_json::from_value(json!({
        "apiVersion": "flywheel.dev/v1alpha1", "kind": "RetrainJob",
        "metadata": {"name": "chat-quality-1", "namespace": "team", "creationTimestamp": Time(at(-5)),
                     "labels": {LABEL_TRIGGER_SEQ: "1", LABEL_POLICY: "chat-quality"},
                     "annotations": {"flywheel.dev/trigger-message": "positive rate 50.0%"}},
        "spec": {"targetRef": {"name": "chat"}, "base": {"version": "v1", "uri": "pvc://models/v1"},
                 "dataset": {"uri": "http://c/v1/datasets/ds-1/files", "sha256": "a".repeat(64), "formats": ["SFT"],
                             "counts": {"sft": 1, "dpo": 0, "heldOut": 0}},
                 "trainer": {"image": "t"}, "outputUri": "pvc://models/chat-quality-1",
                 "origin": {"feedbackPolicy": "chat-quality", "triggerId": "trigger-1", "reason": "Quality"}},
        "status": {"phase": "Running"},
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    let d = decide(&p, &readings(stats(50, 100), vec![rtj]), at(0));
    assert!(d.children.fire.is_none(), "never a second RetrainJob for the trigger");
    let last = d.status.last_trigger.clone().unwrap_or_else(|| panic!("adopted"));
    assert_eq!((last.id.as_str(), last.time.0), ("trigger-1", at(-5)));
    let ready = conditions::get(&d.status.conditions, CONDITION_READY).cloned().unwrap_or_else(|| panic!("Ready"));
    assert_eq!(ready.reason, "TriggerHeld");
    assert!(ready.message.contains("chat-quality-1 is Running"), "{}", ready.message);
}

#[test]
fn statistics_alone_are_written_at_most_once_per_interval() {
    let p = policy("auto", json!(null));
    let first = decide(&p, &readings(stats(90, 100), vec![]), at(0));
    let current = first.status.clone();
    // A new signal 3 s later: only the statistics changed; the write waits for the interval.
    let p2 = policy("auto", serde_json::to_value(&current).unwrap_or_default());
    let mut d = decide(&p2, &readings(stats(91, 101), vec![]), at(3));
    assert!(!write_now(&current, &mut d, Duration::from_secs(10), at(3)));
    assert_eq!(d.requeue, Some(Duration::from_secs(7)), "looks again when a write is due");
    let mut later = decide(&p2, &readings(stats(91, 101), vec![]), at(11));
    assert!(write_now(&current, &mut later, Duration::from_secs(10), at(11)));
    // A decision (a condition that changes) is written at once.
    let mut dip = decide(&p2, &readings(stats(50, 100), vec![]), at(4));
    dip.status.last_retrain_job = Some("x".into());
    assert!(write_now(&current, &mut dip, Duration::from_secs(10), at(4)));
}

#[test]
fn names_fit_the_label_limit_of_their_jobs() {
    assert_eq!(retrain_job_name("support-chat", 3), "support-chat-3");
    let long = "a".repeat(80);
    let name = retrain_job_name(&long, 12);
    assert_eq!(name.len(), 59);
    assert!(name.ends_with("-12"));
    // The Job of the 16th attempt still fits in 63 characters.
    assert!(format!("{name}-16").len() <= 63);
    assert_eq!(retrain_job_name(&format!("{}-b", "a".repeat(56)), 7), format!("{}-7", "a".repeat(56)));
    assert_eq!(seq_of_trigger(&trigger_id(41)), Some(41));
}
