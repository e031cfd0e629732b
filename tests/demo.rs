//! `flywheel demo` end to end: the simulated cluster, the real operator, the collector,
//! simulated users and trainer, both scenarios at high speed, in process through
//! `flywheel::demo::run` and once through the binary with `--json`. The summary is checked
//! against what the story must show: a promotion with `improve`, a rollback with `regression`,
//! and a complete lineage from the feedback policy's trigger to the decided version.

use std::process::Command;
use std::time::Duration;

use flywheel::demo::scenario::Scenario;
use flywheel::demo::{DemoOptions, Summary};
use serde_json::Value;

/// Fast enough for a test, slow enough for two cores running several demos at once.
const SPEED: f64 = 8.0;

async fn demo(scenario: Scenario, cycles: u32) -> Summary {
    let options =
        DemoOptions { cycles, speed: SPEED, stall_timeout: Duration::from_secs(90), ..DemoOptions::new(scenario) };
    flywheel::demo::run(options).await.unwrap_or_else(|e| panic!("the demo failed: {e}"))
}

fn kinds(s: &Summary) -> Vec<&'static str> {
    s.timeline.iter().map(|e| e.kind).collect()
}

/// Every step of a cycle appears in the timeline, in the loop's order.
fn assert_loop_order(s: &Summary) {
    let k = kinds(s);
    let first = |kind: &str| k.iter().position(|x| *x == kind).unwrap_or_else(|| panic!("no {kind} in {k:?}"));
    let order = ["serving", "drift", "signal", "trigger", "retrainjob", "job", "retrain", "canary", "decision"];
    let positions: Vec<usize> = order.iter().map(|kind| first(kind)).collect();
    assert!(positions.windows(2).all(|w| w[0] <= w[1]), "steps out of order: {k:?}");
}

fn assert_cycle_complete(s: &Summary, index: usize) {
    let c = &s.cycles[index];
    let lineage = c.lineage.as_ref().unwrap_or_else(|| panic!("cycle {}: no lineage", c.index));
    assert!(c.lineage_complete, "cycle {}: incomplete lineage {lineage:?}", c.index);
    assert_eq!(lineage.retrain_job, c.retrain_job, "the decision names the cycle's RetrainJob");
    assert_eq!(lineage.feedback_policy.as_deref(), Some("support-chat-quality"));
    assert_eq!(lineage.base_version, c.base_version, "the lineage names the base the cycle started from");
    assert_eq!(lineage.trigger_id, c.trigger.as_ref().map(|t| t.id.clone()), "the lineage names the trigger");
    let counts = lineage.dataset_counts.unwrap_or_default();
    assert!(counts.sft + counts.dpo >= 50, "a dataset of at least minRows rows: {counts:?}");
    assert!(c.jobs.iter().all(|j| j.starts_with(c.retrain_job.as_deref().unwrap_or("?"))), "{:?}", c.jobs);
    let l = &c.latencies;
    for (name, v) in [
        ("signal->trigger", l.signal_to_trigger_seconds),
        ("trigger->job", l.trigger_to_job_seconds),
        ("job->canary", l.job_to_canary_seconds),
        ("canary->decision", l.canary_to_decision_seconds),
    ] {
        assert!(v.is_some_and(|s| (0.0..120.0).contains(&s)), "cycle {}: {name} {v:?}", c.index);
    }
    let evidence = c.evidence.as_ref().unwrap_or_else(|| panic!("cycle {}: the decision has no evidence", c.index));
    assert!(evidence.stable_samples >= 100 && evidence.canary_samples >= 100, "{evidence:?}");
}

fn version<'a>(s: &'a Summary, v: &str) -> &'a flywheel::demo::summary::VersionSummary {
    s.versions.iter().find(|x| x.version == v).unwrap_or_else(|| panic!("no version {v} in {:?}", s.versions))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn improve_promotes_a_better_version_with_its_lineage() {
    let s = demo(Scenario::Improve, 1).await;
    assert_eq!(s.scenario, "improve");
    assert_eq!(s.outcome, "promoted", "{:#?}", s.timeline);
    assert_loop_order(&s);
    assert_cycle_complete(&s, 0);
    let candidate = s.cycles[0].candidate_version.clone().unwrap_or_default();
    assert_eq!(s.stable_version.as_deref(), Some(candidate.as_str()));
    assert_eq!(version(&s, "v1").role, "retired");
    assert_eq!(version(&s, &candidate).role, "stable");
    assert_eq!(version(&s, &candidate).trained_from.as_deref(), Some("v1"));
    // The users felt it: the promoted version is judged better than the drifted one was.
    let (at_trigger, after) = (s.quality.at_trigger.unwrap_or(1.0), s.quality.after.unwrap_or(0.0));
    assert!(after > at_trigger + 0.1, "quality {at_trigger} at the trigger, {after} after");
    assert!(s.quality.initial.is_some_and(|q| q > 0.7), "{:?}", s.quality);
    assert!(s.traffic.requests > 0 && s.traffic.failed_posts == 0, "{:?}", s.traffic);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_rolls_a_worse_version_back() {
    let s = demo(Scenario::Regression, 1).await;
    assert_eq!(s.outcome, "rolled_back", "{:#?}", s.timeline);
    assert_loop_order(&s);
    assert_cycle_complete(&s, 0);
    let candidate = s.cycles[0].candidate_version.clone().unwrap_or_default();
    assert_eq!(s.stable_version.as_deref(), Some("v1"), "the stable version stays");
    assert_eq!(version(&s, &candidate).role, "rolled_back");
    let e = s.cycles[0].evidence.clone().unwrap_or_default();
    assert!(
        e.canary_positive_rate.unwrap_or(1.0) < e.stable_positive_rate.unwrap_or(0.0),
        "rolled back on a worse canary: {e:?}"
    );
}

/// The evaluation gate sees a worse candidate on the held-out rows: it is rejected and nothing is
/// canaried, so no user ever gets an answer from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_keeps_a_worse_candidate_from_users() {
    let s = demo(Scenario::Rejected, 1).await;
    assert_eq!(s.scenario, "rejected");
    assert_eq!(s.outcome, "rejected", "{:#?}", s.timeline);
    let k = kinds(&s);
    assert!(!k.contains(&"canary"), "no canary: {k:?}");
    let retrain = s.timeline.iter().find(|e| e.kind == "retrain").unwrap_or_else(|| panic!("no retrain in {k:?}"));
    assert!(
        retrain.text.contains("rejected by the evaluation gate") && retrain.text.contains("evalLoss"),
        "{}",
        retrain.text
    );
    assert_eq!(s.stable_version.as_deref(), Some("v1"), "the stable version keeps serving");
    let candidate = s.cycles[0].candidate_version.clone().unwrap_or_default();
    assert!(!candidate.is_empty(), "the cycle names the rejected candidate");
    assert!(s.traffic.requests > 0 && s.traffic.failed_posts == 0, "{:?}", s.traffic);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_cycles_turn_the_loop_twice() {
    let s = demo(Scenario::Improve, 2).await;
    assert_eq!(s.outcomes, ["promoted", "promoted"], "{:#?}", s.timeline);
    assert_cycle_complete(&s, 0);
    assert_cycle_complete(&s, 1);
    let (first, second) = (&s.cycles[0], &s.cycles[1]);
    assert_eq!(second.base_version, first.candidate_version, "the second cycle retrains the first's result");
    assert_ne!(first.retrain_job, second.retrain_job);
    assert_eq!(s.stable_version, second.candidate_version);
    assert_eq!(kinds(&s).iter().filter(|k| **k == "drift").count(), 2, "a drift starts each cycle");
}

#[test]
fn the_binary_prints_one_json_summary_last_and_writes_a_kubeconfig() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let kubeconfig = dir.path().join("kubeconfig");
    let out = Command::new(env!("CARGO_BIN_EXE_flywheel"))
        .args(["demo", "--scenario", "regression", "--speed", &SPEED.to_string(), "--json", "--kubeconfig-out"])
        .arg(&kubeconfig)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}\nstdout: {stdout}\nstderr: {stderr}", out.status);
    let last = stdout.lines().last().unwrap_or_default();
    let summary: Value = serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {last}"));
    assert_eq!(summary["scenario"], "regression");
    assert_eq!(summary["outcome"], "rolled_back");
    assert!(summary["versions"].as_array().is_some_and(|v| v.len() >= 2), "{summary}");
    for key in ["signalToTriggerSeconds", "triggerToJobSeconds", "jobToCanarySeconds", "canaryToDecisionSeconds"] {
        assert!(summary["latencies"][key].as_f64().is_some(), "{key}: {summary}");
    }
    assert_eq!(summary["lineageComplete"], true);
    assert_eq!(summary["lineage"]["feedbackPolicy"], "support-chat-quality");
    // The live view went to stderr (log lines without a terminal), stdout kept for the JSON.
    assert!(stderr.contains("decision") && !stderr.contains('\x1b'), "{stderr}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let config = std::fs::read_to_string(&kubeconfig).unwrap_or_else(|e| panic!("{e}"));
    assert!(config.contains("server: https://127.0.0.1:"), "{config}");
}

/// `flywheel demo --real`: the same story with the real parts (pods as processes in their own
/// network namespaces, the agent before the reference model server, the reference trainer in the
/// Job). Needs the trainer's environment and network namespaces; says why and passes without
/// them unless CI or `FLYWHEEL_REQUIRE_TRAINER`/`FLYWHEEL_REQUIRE_NETNS` require them.
#[test]
fn the_real_parts_turn_the_loop_with_demo_real() {
    let trainer = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("trainer");
    if !trainer.join(".venv/bin/python").is_file() {
        assert!(
            std::env::var_os("CI").is_none() && std::env::var_os("FLYWHEEL_REQUIRE_TRAINER").is_none(),
            "the trainer's environment is required here: run `bash trainer/ci.sh` first"
        );
        eprintln!("SKIPPED: no trainer/.venv");
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_flywheel"))
        .args(["demo", "--real", "--json", "--trainer-dir"])
        .arg(&trainer)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && stderr.contains("network namespaces") {
        assert!(std::env::var_os("FLYWHEEL_REQUIRE_NETNS").is_none(), "{stderr}");
        eprintln!("SKIPPED: {stderr}");
        return;
    }
    assert!(out.status.success(), "exit {:?}\nstdout: {stdout}\nstderr: {stderr}", out.status);
    let last = stdout.lines().last().unwrap_or_default();
    let summary: Value = serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {last}"));
    assert_eq!(summary["outcome"], "promoted", "{summary}");
    assert_eq!(summary["lineageComplete"], true);
    let stable = summary["stableVersion"].as_str().unwrap_or_default();
    assert!(stable.starts_with("v1-ft-"), "the real trainer names its version: {stable}");
    assert!(summary["traffic"]["failedPosts"] == 0, "{summary}");
}

/// Without the trainer's environment, `--real` says what to install and exits 2.
#[test]
fn demo_real_says_what_to_install() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(env!("CARGO_BIN_EXE_flywheel"))
        .args(["demo", "--real", "--trainer-dir"])
        .arg(dir.path())
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bash trainer/ci.sh"), "{stderr}");
}

/// `flywheel demo --adapters`: LoRA adapters canaried inside the running pods; the better one
/// promoted, the worse one rolled back, the same pods throughout.
#[test]
fn adapters_are_canaried_inside_the_pods_that_already_run() {
    let out = Command::new(env!("CARGO_BIN_EXE_flywheel"))
        .args(["demo", "--adapters", "--json"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let summary: serde_json::Value = serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {last}"));
    let outcomes: Vec<&str> = summary["adapters"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x["outcome"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(outcomes, ["Promoted", "RolledBack"], "{summary}");
    assert_eq!(summary["stableVersion"], "v1-lora-1");
    assert_eq!(summary["podsBefore"], summary["podsAfter"], "no pod replaced");
    assert_eq!(summary["podsBefore"].as_object().map(|p| p.len()), Some(2));
    assert!(summary["adapters"].as_array().is_some_and(|a| a.iter().all(|x| x["sticky"] == true)));
    assert!(stderr.contains("every pod holds v1-lora-1"), "progress goes to stderr with --json: {stderr}");
}
