//! The demo's result: what the cluster and the collector did, cycle by cycle, as JSON for
//! machines and as a timeline and summary for people. Everything in it was read from the
//! ModelDeployment's status and history, the FeedbackPolicy, the RetrainJobs and the collector's
//! statistics, or measured by the demo's own clock.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::observe::{Cycle, Outcome, Quality, TimelineEntry, evidence_brief, lineage_complete};
use super::scenario::VersionTruth;
use crate::api::Lineage;
use crate::api::model_deployment::Evidence;

/// The loop's latencies, in seconds, as the demo saw them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Latencies {
    /// From the collector's statistics crossing the threshold to the policy firing.
    pub signal_to_trigger_seconds: Option<f64>,
    /// From the policy firing to the trainer Job.
    pub trigger_to_job_seconds: Option<f64>,
    /// From the trainer Job to the canary of its version (training included).
    pub job_to_canary_seconds: Option<f64>,
    /// From the canary's start to the promotion or rollback.
    pub canary_to_decision_seconds: Option<f64>,
    /// From the signal to the decision: one whole turn of the loop.
    pub signal_to_decision_seconds: Option<f64>,
}

fn between(a: Option<Duration>, b: Option<Duration>) -> Option<f64> {
    let (a, b) = (a?, b?);
    Some((b.saturating_sub(a).as_secs_f64() * 100.0).round() / 100.0)
}

impl Latencies {
    /// The latencies of one cycle.
    pub fn of(c: &Cycle) -> Self {
        let t = &c.times;
        Self {
            signal_to_trigger_seconds: between(t.signal, t.trigger),
            trigger_to_job_seconds: between(t.trigger, t.job),
            job_to_canary_seconds: between(t.job, t.canary),
            canary_to_decision_seconds: between(t.canary, t.decision),
            signal_to_decision_seconds: between(t.signal, t.decision),
        }
    }
}

/// The trigger of a cycle.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TriggerSummary {
    /// The trigger's id.
    pub id: String,
    /// Why it fired.
    pub reason: String,
    /// The numbers behind it.
    pub message: String,
}

/// One turn of the loop.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CycleSummary {
    /// 1-based.
    pub index: usize,
    /// `promoted`, `rolled_back`, `aborted`, `training_failed`, or `unfinished`.
    pub outcome: String,
    /// The stable version the cycle started from.
    pub base_version: Option<String>,
    /// The version trained and canaried.
    pub candidate_version: Option<String>,
    /// The policy's trigger.
    pub trigger: Option<TriggerSummary>,
    /// The stable version's positive rate the policy saw when it fired.
    pub quality_at_trigger: Option<f64>,
    /// The RetrainJob.
    pub retrain_job: Option<String>,
    /// Its trainer Jobs, one per attempt.
    pub jobs: Vec<String>,
    /// The evidence of the decision (the analysis of the last step).
    pub evidence: Option<Evidence>,
    /// The decision's reason and message from the history.
    pub decision: Option<String>,
    /// Where the candidate came from, from the ModelDeployment's history.
    pub lineage: Option<Lineage>,
    /// Whether the lineage names the RetrainJob, policy, trigger, dataset and base.
    pub lineage_complete: bool,
    /// The latencies.
    pub latencies: Latencies,
}

impl CycleSummary {
    /// From a tracked cycle.
    pub fn of(c: &Cycle) -> Self {
        let lineage = c.decision.as_ref().and_then(|d| d.lineage.clone());
        Self {
            index: c.index,
            outcome: c.outcome.map_or("unfinished", Outcome::as_str).to_string(),
            base_version: c.base_version.clone(),
            candidate_version: c.candidate.clone(),
            trigger: c.trigger.as_ref().map(|(id, reason, message)| TriggerSummary {
                id: id.clone(),
                reason: format!("{reason:?}"),
                message: message.clone(),
            }),
            quality_at_trigger: c.quality_at_trigger,
            retrain_job: c.retrain_job.clone(),
            jobs: c.jobs.clone(),
            evidence: c.decision.as_ref().and_then(|d| d.evidence.clone()),
            decision: c.decision.as_ref().map(|d| format!("{}: {}", d.reason, d.message)),
            lineage_complete: lineage.as_ref().is_some_and(lineage_complete),
            lineage,
            latencies: Latencies::of(c),
        }
    }
}

/// One version as the run saw it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionSummary {
    /// The version label.
    pub version: String,
    /// `stable` (serving at the end), `retired` (replaced by a promotion), `rolled_back`,
    /// `aborted`, or `trained` (never canaried).
    pub role: String,
    /// Positive rate of all its feedback in the run, from the collector.
    pub positive_rate: Option<f64>,
    /// Judgments behind it.
    pub judged: i64,
    /// Feedback events of every kind.
    pub feedback: i64,
    /// Interactions it answered.
    pub interactions: i64,
    /// The simulation's hidden truth: how likely a user found its answers good, at the end.
    pub simulated_quality: Option<f64>,
    /// The version it was trained from.
    pub trained_from: Option<String>,
    /// The RetrainJob that produced it.
    pub retrain_job: Option<String>,
}

/// Quality of the served model along the run, from the collector and the analysis.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QualitySummary {
    /// Positive rate of the first version before the first drift.
    pub initial: Option<f64>,
    /// The stable version's positive rate the policy saw when it last fired.
    pub at_trigger: Option<f64>,
    /// The last candidate's positive rate in the deciding analysis.
    pub candidate: Option<f64>,
    /// The positive rate of the version left serving, in the deciding analysis.
    pub after: Option<f64>,
}

/// Requests and feedback the simulated users sent.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficSummary {
    /// Requests answered.
    pub requests: u64,
    /// Feedback events sent.
    pub feedback: u64,
    /// Posts the collector refused or did not answer.
    pub failed_posts: u64,
    /// The last such failure, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Everything the demo did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// `improve` or `regression`.
    pub scenario: String,
    /// The last cycle's outcome: `promoted`, `rolled_back` (or `aborted`, `training_failed`).
    pub outcome: String,
    /// Each cycle's outcome.
    pub outcomes: Vec<String>,
    /// Cycles asked for.
    pub cycles_requested: u32,
    /// Every cycle.
    pub cycles: Vec<CycleSummary>,
    /// Every version, in order of appearance.
    pub versions: Vec<VersionSummary>,
    /// The version serving at the end.
    pub stable_version: Option<String>,
    /// Quality along the run.
    pub quality: QualitySummary,
    /// The last cycle's latencies.
    pub latencies: Latencies,
    /// The last decision's lineage.
    pub lineage: Option<Lineage>,
    /// Whether every decided cycle's lineage is complete.
    pub lineage_complete: bool,
    /// Traffic.
    pub traffic: TrafficSummary,
    /// Simulated time over wall time.
    pub speed: f64,
    /// Wall time of the whole run, start-up and shut-down of the simulated cluster included.
    pub wall_seconds: f64,
    /// What happened, in order.
    pub timeline: Vec<TimelineEntry>,
}

/// The inputs of a summary.
pub struct Inputs<'a> {
    /// `improve` or `regression`.
    pub scenario: &'a str,
    /// Cycles asked for.
    pub cycles_requested: u32,
    /// The cycles tracked.
    pub cycles: &'a [Cycle],
    /// The timeline.
    pub timeline: &'a [TimelineEntry],
    /// Versions in order of appearance, with the role the cluster gave them.
    pub version_roles: Vec<(String, String)>,
    /// The stable version at the end.
    pub stable_version: Option<String>,
    /// The collector's statistics per version over the whole run.
    pub collector: &'a BTreeMap<String, Quality>,
    /// The first version's statistics before the first drift.
    pub initial: Option<Quality>,
    /// The simulation's truth.
    pub truth: &'a BTreeMap<String, VersionTruth>,
    /// Traffic.
    pub traffic: TrafficSummary,
    /// Speed.
    pub speed: f64,
    /// Wall time.
    pub wall: Duration,
}

/// Build the summary.
pub fn build(i: Inputs<'_>) -> Summary {
    let cycles: Vec<CycleSummary> = i.cycles.iter().map(CycleSummary::of).collect();
    let last = cycles.last();
    let last_decided = i.cycles.iter().rev().find(|c| c.decision.is_some());
    let evidence = last_decided.and_then(|c| c.decision.as_ref()).and_then(|d| d.evidence.clone());
    let promoted = last_decided.is_some_and(|c| c.outcome == Some(Outcome::Promoted));
    let quality = QualitySummary {
        initial: i.initial.as_ref().and_then(|q| q.positive_rate),
        at_trigger: i.cycles.iter().rev().find_map(|c| c.quality_at_trigger),
        candidate: evidence.as_ref().and_then(|e| e.canary_positive_rate),
        after: evidence.as_ref().and_then(|e| if promoted { e.canary_positive_rate } else { e.stable_positive_rate }),
    };
    let versions = i
        .version_roles
        .iter()
        .map(|(version, role)| {
            let q = i.collector.get(version).cloned().unwrap_or_default();
            let truth = i.truth.get(version);
            VersionSummary {
                version: version.clone(),
                role: role.clone(),
                positive_rate: q.positive_rate.map(|r| (r * 1000.0).round() / 1000.0),
                judged: q.judged,
                feedback: q.signals,
                interactions: q.interactions,
                simulated_quality: truth.map(|t| (t.quality * 1000.0).round() / 1000.0),
                trained_from: truth.and_then(|t| t.base.clone()),
                retrain_job: truth.and_then(|t| t.retrain_job.clone()),
            }
        })
        .collect();
    let decided: Vec<&CycleSummary> = cycles.iter().filter(|c| c.lineage.is_some() || c.evidence.is_some()).collect();
    Summary {
        scenario: i.scenario.to_string(),
        outcome: last.map_or_else(|| "unfinished".to_string(), |c| c.outcome.clone()),
        outcomes: cycles.iter().map(|c| c.outcome.clone()).collect(),
        cycles_requested: i.cycles_requested,
        latencies: last.map(|c| c.latencies.clone()).unwrap_or_default(),
        lineage: last_decided.and_then(|c| c.decision.as_ref()).and_then(|d| d.lineage.clone()),
        lineage_complete: !decided.is_empty() && decided.iter().all(|c| c.lineage_complete),
        cycles,
        versions,
        stable_version: i.stable_version,
        quality,
        traffic: i.traffic,
        speed: i.speed,
        wall_seconds: (i.wall.as_secs_f64() * 10.0).round() / 10.0,
        timeline: i.timeline.to_vec(),
    }
}

fn pct(x: Option<f64>) -> String {
    x.map_or_else(|| "-".to_string(), |v| format!("{:.0}%", v * 100.0))
}

fn secs(x: Option<f64>) -> String {
    x.map_or_else(|| "-".to_string(), |v| format!("{v:.1} s"))
}

/// `mm:ss.s` of seconds since the start.
pub fn clock(at: f64) -> String {
    let minutes = (at / 60.0).floor();
    format!("{:02}:{:04.1}", minutes as u64, at - minutes * 60.0)
}

/// The timeline and the summary, for people.
pub fn render(s: &Summary) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\nTimeline");
    for e in &s.timeline {
        let _ = writeln!(out, "  {}  {:<10} {}", clock(e.at), e.kind, e.text);
    }
    let _ = writeln!(out, "\nSummary");
    let _ = writeln!(
        out,
        "  scenario {}, {} of {} cycle(s), outcome {}, {:.1} s wall time at speed {}x",
        s.scenario,
        s.cycles.iter().filter(|c| c.outcome != "unfinished").count(),
        s.cycles_requested,
        s.outcome,
        s.wall_seconds,
        s.speed
    );
    let _ = writeln!(
        out,
        "  traffic: {} requests, {} feedback events{}",
        s.traffic.requests,
        s.traffic.feedback,
        if s.traffic.failed_posts > 0 { format!(", {} failed posts", s.traffic.failed_posts) } else { String::new() }
    );
    let _ = writeln!(out, "  versions:");
    for v in &s.versions {
        let origin = match (&v.trained_from, &v.retrain_job) {
            (Some(b), Some(r)) => format!(", trained from {b} by {r}"),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "    {:<8} {:<11} positive rate {} over {} judgments, {} interactions{origin}",
            v.version,
            v.role,
            pct(v.positive_rate),
            v.judged,
            v.interactions
        );
    }
    let q = &s.quality;
    let _ = writeln!(
        out,
        "  quality: {} at first, {} when the policy fired, candidate {}, {} serving after the decision",
        pct(q.initial),
        pct(q.at_trigger),
        pct(q.candidate),
        pct(q.after)
    );
    for c in &s.cycles {
        let l = &c.latencies;
        let _ = writeln!(
            out,
            "  cycle {}: {} -> {} {}; signal->trigger {}, trigger->Job {}, Job->canary {}, canary->decision {} (whole loop {})",
            c.index,
            c.base_version.as_deref().unwrap_or("?"),
            c.candidate_version.as_deref().unwrap_or("?"),
            c.outcome,
            secs(l.signal_to_trigger_seconds),
            secs(l.trigger_to_job_seconds),
            secs(l.job_to_canary_seconds),
            secs(l.canary_to_decision_seconds),
            secs(l.signal_to_decision_seconds)
        );
        if let Some(e) = &c.evidence {
            let _ = writeln!(out, "    evidence: {}", evidence_brief(e));
        }
        match &c.lineage {
            Some(l) => {
                let counts = l
                    .dataset_counts
                    .map(|d| format!(" ({} SFT, {} DPO, {} held out)", d.sft, d.dpo, d.held_out))
                    .unwrap_or_default();
                let sha = l.dataset_sha256.as_deref().map_or("?", |s| &s[..s.len().min(12)]);
                let _ = writeln!(
                    out,
                    "    lineage{}: RetrainJob {} <- FeedbackPolicy {} trigger {} ({}) <- dataset {sha}{counts} <- base {}",
                    if c.lineage_complete { "" } else { " (incomplete)" },
                    l.retrain_job.as_deref().unwrap_or("?"),
                    l.feedback_policy.as_deref().unwrap_or("?"),
                    l.trigger_id.as_deref().unwrap_or("?"),
                    l.trigger_reason.map(|r| format!("{r:?}")).unwrap_or_else(|| "?".into()),
                    l.base_version.as_deref().unwrap_or("?")
                );
            }
            None => {
                let _ = writeln!(out, "    lineage: none recorded");
            }
        }
    }
    let _ = writeln!(out, "  stable at the end: {}", s.stable_version.as_deref().unwrap_or("?"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::model_deployment::{HistoryEntry, HistoryType, Verdict};
    use crate::api::{TriggerReason, common::DatasetCounts};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn cycle(outcome: Outcome, lineage: Lineage) -> Cycle {
        let mut c =
            Cycle { index: 1, base_version: Some("v1".into()), candidate: Some("v2".into()), ..Cycle::default() };
        c.times.signal = Some(Duration::from_millis(10_000));
        c.times.trigger = Some(Duration::from_millis(10_400));
        c.times.job = Some(Duration::from_millis(10_900));
        c.times.canary = Some(Duration::from_millis(20_000));
        c.times.decision = Some(Duration::from_millis(45_000));
        c.outcome = Some(outcome);
        c.trigger = Some(("t1".into(), TriggerReason::Quality, "positive rate of v1 is 60.0%".into()));
        c.quality_at_trigger = Some(0.6);
        c.decision = Some(HistoryEntry {
            type_: HistoryType::Promoted,
            version: "v2".into(),
            previous_version: Some("v1".into()),
            time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
            reason: "AnalysisPassed".into(),
            message: "ok".into(),
            evidence: Some(Evidence {
                stable_samples: 150,
                canary_samples: 140,
                stable_positive_rate: Some(0.55),
                canary_positive_rate: Some(0.88),
                verdict: Verdict::Pass,
                ..Evidence::default()
            }),
            lineage: Some(lineage),
        });
        c
    }

    fn full_lineage() -> Lineage {
        Lineage {
            retrain_job: Some("p-1".into()),
            feedback_policy: Some("p".into()),
            trigger_id: Some("t1".into()),
            trigger_reason: Some(TriggerReason::Quality),
            dataset_sha256: Some("a".repeat(64)),
            dataset_counts: Some(DatasetCounts { sft: 10, dpo: 2, held_out: 1 }),
            base_version: Some("v1".into()),
            evaluation: Vec::new(),
        }
    }

    fn inputs<'a>(
        cycles: &'a [Cycle],
        collector: &'a BTreeMap<String, Quality>,
        truth: &'a BTreeMap<String, VersionTruth>,
    ) -> Inputs<'a> {
        Inputs {
            scenario: "improve",
            cycles_requested: 1,
            cycles,
            timeline: &[],
            version_roles: vec![("v1".into(), "retired".into()), ("v2".into(), "stable".into())],
            stable_version: Some("v2".into()),
            collector,
            initial: Some(Quality { positive_rate: Some(0.86), ..Quality::default() }),
            truth,
            traffic: TrafficSummary { requests: 100, feedback: 80, failed_posts: 0, last_error: None },
            speed: 1.0,
            wall: Duration::from_secs(61),
        }
    }

    #[test]
    fn the_summary_carries_outcome_latencies_quality_and_lineage() {
        let cycles = [cycle(Outcome::Promoted, full_lineage())];
        let collector: BTreeMap<String, Quality> = [(
            "v1".to_string(),
            Quality { positive: 55, judged: 100, signals: 120, interactions: 150, positive_rate: Some(0.55) },
        )]
        .into();
        let truth = BTreeMap::new();
        let s = build(inputs(&cycles, &collector, &truth));
        assert_eq!(s.outcome, "promoted");
        assert_eq!(s.latencies.signal_to_trigger_seconds, Some(0.4));
        assert_eq!(s.latencies.trigger_to_job_seconds, Some(0.5));
        assert_eq!(s.latencies.job_to_canary_seconds, Some(9.1));
        assert_eq!(s.latencies.canary_to_decision_seconds, Some(25.0));
        assert_eq!(s.latencies.signal_to_decision_seconds, Some(35.0));
        assert_eq!((s.quality.initial, s.quality.at_trigger, s.quality.after), (Some(0.86), Some(0.6), Some(0.88)));
        assert!(s.lineage_complete);
        assert_eq!(s.versions[0].positive_rate, Some(0.55));
        let json = serde_json::to_value(&s).unwrap_or_default();
        for key in ["scenario", "outcome", "versions", "latencies", "lineage", "timeline"] {
            assert!(json.get(key).is_some(), "{key} in {json}");
        }
        assert_eq!(json["latencies"]["canaryToDecisionSeconds"], 25.0);
        let text = render(&s);
        assert!(text.contains("cycle 1: v1 -> v2 promoted") && text.contains("RetrainJob p-1"), "{text}");

        let partial = Lineage { dataset_sha256: None, ..full_lineage() };
        let cycles = [cycle(Outcome::Promoted, partial)];
        let s = build(inputs(&cycles, &collector, &truth));
        assert!(!s.lineage_complete);
        assert!(render(&s).contains("(incomplete)"));
    }

    #[test]
    fn clock_reads_minutes_and_seconds() {
        assert_eq!(clock(0.0), "00:00.0");
        assert_eq!(clock(75.3), "01:15.3");
    }
}
