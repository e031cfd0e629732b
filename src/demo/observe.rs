//! What the demo sees of the loop: snapshots of the cluster (the ModelDeployment, the
//! FeedbackPolicy, RetrainJobs, trainer Jobs, inference pods) and of the collector's statistics,
//! the changes between two snapshots (pure), and the cycles they add up to, with the time the
//! demo first saw each step.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use serde::Serialize;

use super::error::DemoError;
use super::users::Routes;
use crate::api::feedback_policy::SignalMapping;
use crate::api::model_deployment::{Evidence, HistoryEntry, HistoryType};
use crate::api::retrain_job::RetrainPhase;
use crate::api::{FeedbackPolicy, Lineage, ModelDeployment, RetrainJob, TriggerReason};
use crate::collector::client::{CollectorClient, StatsQuery};
use crate::collector::stats::StatsReport;
use crate::operator::model_deployment::children::{LABEL_MODEL_DEPLOYMENT, LABEL_VERSION};

/// Feedback statistics of one version, as the collector reports them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Quality {
    /// Positive judgments.
    pub positive: i64,
    /// All judgments.
    pub judged: i64,
    /// Feedback events of every kind.
    pub signals: i64,
    /// Interactions captured.
    pub interactions: i64,
    /// `positive / judged`.
    pub positive_rate: Option<f64>,
}

/// Per-version statistics from a `GET /v1/stats` answer.
pub fn qualities(stats: &StatsReport) -> BTreeMap<String, Quality> {
    let quality = |v: &crate::collector::stats::VersionStats| {
        let (positive, judged) = (v.positive_rate.numerator, v.positive_rate.denominator);
        Quality {
            positive,
            judged,
            signals: v.total,
            interactions: v.interactions,
            positive_rate: (judged > 0).then(|| positive as f64 / judged as f64),
        }
    };
    stats.versions.iter().map(|v| (v.version.clone(), quality(v))).collect()
}

/// One look at everything.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The ModelDeployment.
    pub md: Option<ModelDeployment>,
    /// The FeedbackPolicy.
    pub policy: Option<FeedbackPolicy>,
    /// RetrainJobs of the namespace, by name.
    pub retrain_jobs: Vec<RetrainJob>,
    /// Jobs owned by RetrainJobs, by name.
    pub jobs: Vec<Job>,
    /// Ready inference pods per version.
    pub routes: Routes,
    /// Collector statistics per version over the policy's window.
    pub window: BTreeMap<String, Quality>,
}

impl Snapshot {
    /// The stable version the ModelDeployment reports.
    pub fn stable(&self) -> Option<&str> {
        self.md.as_ref()?.status.as_ref()?.stable.as_ref().map(|s| s.version.as_str())
    }

    /// The version under canary, its weight and step.
    pub fn canary(&self) -> Option<&crate::api::model_deployment::CanaryStatus> {
        self.md.as_ref()?.status.as_ref()?.canary.as_ref()
    }

    /// The ModelDeployment's history.
    pub fn history(&self) -> &[HistoryEntry] {
        self.md.as_ref().and_then(|m| m.status.as_ref()).map_or(&[], |s| s.history.as_slice())
    }
}

/// Whether the ModelDeployment reports `Ready=True`.
pub fn md_ready(md: &ModelDeployment) -> bool {
    md.status.as_ref().is_some_and(|s| {
        s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == crate::api::ConditionStatus::True)
    })
}

/// The RetrainJob that owns a Job, by owner reference.
pub fn owning_retrain_job(job: &Job) -> Option<String> {
    job.metadata.owner_references.as_ref()?.iter().find(|o| o.kind == "RetrainJob").map(|o| o.name.clone())
}

/// A Job's terminal state: `Some(true)` complete, `Some(false)` failed, `None` still running.
pub fn job_outcome(job: &Job) -> Option<bool> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    let holds = |t: &str| conditions.iter().any(|c| c.type_ == t && c.status == "True");
    if holds("Complete") {
        Some(true)
    } else if holds("Failed") {
        Some(false)
    } else {
        None
    }
}

/// Ready pods per version among `pods` of the ModelDeployment.
pub fn routes_of(pods: &[Pod]) -> Routes {
    let mut routes = Routes::new();
    for pod in pods {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(version) = pod.labels().get(LABEL_VERSION) else { continue };
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let entry = routes.entry(version.clone()).or_insert(0);
        if ready {
            *entry += 1;
        }
    }
    routes
}

/// A step of the loop seen between two snapshots.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The ModelDeployment became Ready.
    Serving {
        /// The stable version.
        version: String,
        /// Its ready pods.
        pods: u32,
    },
    /// The policy fired.
    Triggered {
        /// The trigger's id.
        id: String,
        /// Why.
        reason: TriggerReason,
        /// The numbers behind it.
        message: String,
        /// The RetrainJob it created.
        retrain_job: Option<String>,
        /// The stable version's positive rate the policy saw.
        positive_rate: Option<f64>,
    },
    /// A RetrainJob appeared.
    RetrainJobCreated {
        /// Its name.
        name: String,
        /// The base version.
        base: String,
        /// Training rows of its dataset (SFT plus DPO).
        rows: i64,
        /// The trigger it records as its origin: id, reason, message.
        trigger: Option<(String, TriggerReason, String)>,
    },
    /// A trainer Job appeared.
    JobCreated {
        /// Its name.
        name: String,
        /// The RetrainJob that owns it.
        retrain_job: Option<String>,
    },
    /// A trainer Job finished.
    JobFinished {
        /// Its name.
        name: String,
        /// Complete (true) or Failed.
        succeeded: bool,
    },
    /// A RetrainJob reached a terminal phase.
    RetrainFinished {
        /// Its name.
        name: String,
        /// Succeeded or not.
        succeeded: bool,
        /// The evaluation gate rejected its candidate.
        rejected: bool,
        /// The version produced.
        version: Option<String>,
        /// Why it failed or was rejected, when it was.
        message: String,
    },
    /// A canary started.
    CanaryStarted {
        /// The version.
        version: String,
        /// Its traffic share.
        weight: i32,
    },
    /// The canary advanced a step.
    StepAdvanced {
        /// The version.
        version: String,
        /// The step now running (0-based).
        step: i32,
        /// Its traffic share.
        weight: i32,
        /// The evidence that passed the previous step (the last one seen).
        evidence: Option<Evidence>,
    },
    /// A promotion, rollback or abort.
    Decided(Box<HistoryEntry>),
}

fn terminal(phase: RetrainPhase) -> bool {
    matches!(phase, RetrainPhase::Succeeded | RetrainPhase::Failed | RetrainPhase::Rejected)
}

fn rtj_phase(rtj: &RetrainJob) -> RetrainPhase {
    rtj.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

fn rtj_failure(rtj: &RetrainJob) -> String {
    let Some(status) = rtj.status.as_ref() else { return String::new() };
    // A rejection names the rule that failed, with both values.
    if let Some(c) =
        status.conditions.iter().find(|c| c.type_ == "Accepted" && c.status == crate::api::ConditionStatus::False)
    {
        return c.message.clone();
    }
    status
        .conditions
        .iter()
        .find(|c| c.type_ == "Stalled" || c.type_ == "Ready")
        .map(|c| format!("{}: {}", c.reason, c.message))
        .or_else(|| status.attempts.last().and_then(|a| a.message.clone()))
        .unwrap_or_default()
}

/// What changed from `prev` to `cur`.
pub fn changes(prev: &Snapshot, cur: &Snapshot) -> Vec<Change> {
    let mut out = Vec::new();
    if let Some(md) = &cur.md
        && md_ready(md)
        && !prev.md.as_ref().is_some_and(md_ready)
        && prev.history().is_empty()
        && cur.history().is_empty()
        && let Some(stable) = cur.stable()
    {
        out.push(Change::Serving { version: stable.to_string(), pods: cur.routes.get(stable).copied().unwrap_or(0) });
    }
    let trigger_of =
        |s: &Snapshot| s.policy.as_ref().and_then(|p| p.status.as_ref()).and_then(|s| s.last_trigger.clone());
    if let Some(t) = trigger_of(cur)
        && trigger_of(prev).map(|p| p.id) != Some(t.id.clone())
    {
        let positive_rate = cur
            .policy
            .as_ref()
            .and_then(|p| p.status.as_ref())
            .and_then(|s| s.stats.as_ref())
            .and_then(|s| s.positive_rate);
        out.push(Change::Triggered {
            id: t.id,
            reason: t.reason,
            message: t.message,
            retrain_job: t.retrain_job,
            positive_rate,
        });
    }
    for rtj in &cur.retrain_jobs {
        let name = rtj.name_any();
        let before = prev.retrain_jobs.iter().find(|r| r.name_any() == name);
        if before.is_none() {
            let counts = &rtj.spec.dataset.counts;
            let message = rtj.annotations().get("flywheel.dev/trigger-message").cloned().unwrap_or_default();
            out.push(Change::RetrainJobCreated {
                name: name.clone(),
                base: rtj.spec.base.version.clone(),
                rows: counts.sft + counts.dpo,
                trigger: rtj.spec.origin.as_ref().map(|o| (o.trigger_id.clone(), o.reason, message)),
            });
        }
        let phase = rtj_phase(rtj);
        if terminal(phase) && !before.is_some_and(|b| terminal(rtj_phase(b))) {
            out.push(Change::RetrainFinished {
                name,
                succeeded: phase == RetrainPhase::Succeeded,
                rejected: phase == RetrainPhase::Rejected,
                version: rtj.status.as_ref().and_then(|s| s.result.as_ref()).map(|r| r.version.clone()),
                message: if phase == RetrainPhase::Succeeded { String::new() } else { rtj_failure(rtj) },
            });
        }
    }
    for job in &cur.jobs {
        let name = job.name_any();
        let before = prev.jobs.iter().find(|j| j.name_any() == name);
        if before.is_none() {
            out.push(Change::JobCreated { name: name.clone(), retrain_job: owning_retrain_job(job) });
        }
        if let Some(succeeded) = job_outcome(job)
            && before.and_then(job_outcome).is_none()
        {
            out.push(Change::JobFinished { name, succeeded });
        }
    }
    let prev_canary = prev.canary();
    if let Some(c) = cur.canary() {
        match prev_canary {
            Some(p) if p.version == c.version => {
                if c.step > p.step {
                    out.push(Change::StepAdvanced {
                        version: c.version.clone(),
                        step: c.step,
                        weight: c.weight,
                        evidence: p.evidence.clone(),
                    });
                }
            }
            _ => out.push(Change::CanaryStarted { version: c.version.clone(), weight: c.weight }),
        }
    }
    let seen = prev.history().len();
    let now = cur.history();
    // The history is bounded (oldest dropped): compare by time and version, not by length alone.
    let last_prev = prev.history().last();
    let fresh: Vec<&HistoryEntry> = if seen == 0 {
        now.iter().collect()
    } else {
        match last_prev.and_then(|l| now.iter().position(|e| e == l)) {
            Some(i) => now.iter().skip(i + 1).collect(),
            None => now.iter().skip(seen.min(now.len())).collect(),
        }
    };
    for entry in fresh {
        out.push(Change::Decided(Box::new(entry.clone())));
    }
    out
}

/// How a cycle ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The candidate became stable.
    Promoted,
    /// The analysis found the candidate worse and removed it.
    RolledBack,
    /// The rollout stopped without a verdict.
    Aborted,
    /// The RetrainJob failed; nothing was canaried.
    TrainingFailed,
    /// The candidate could not be served and was refused before its canary.
    Rejected,
}

impl Outcome {
    /// From a history entry.
    pub fn of(t: HistoryType) -> Self {
        match t {
            HistoryType::Promoted => Self::Promoted,
            HistoryType::RolledBack => Self::RolledBack,
            HistoryType::Aborted => Self::Aborted,
            HistoryType::Rejected => Self::Rejected,
        }
    }

    /// As the JSON summary writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Promoted => "promoted",
            Self::RolledBack => "rolled_back",
            Self::Aborted => "aborted",
            Self::TrainingFailed => "training_failed",
            Self::Rejected => "rejected",
        }
    }
}

/// When the demo first saw each step of one turn of the loop, since the demo started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Times {
    /// The world drifted (the scenario's quality dip).
    pub drift: Option<Duration>,
    /// The collector's statistics of the stable version crossed the policy's threshold.
    pub signal: Option<Duration>,
    /// The policy fired (its `lastTrigger`, or its RetrainJob, whichever was seen first).
    pub trigger: Option<Duration>,
    /// The RetrainJob appeared.
    pub retrain_job: Option<Duration>,
    /// The trainer Job appeared.
    pub job: Option<Duration>,
    /// The trainer Job finished.
    pub job_finished: Option<Duration>,
    /// The canary of the new version started.
    pub canary: Option<Duration>,
    /// The rollout was decided.
    pub decision: Option<Duration>,
}

/// One turn of the loop.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cycle {
    /// 1-based.
    pub index: usize,
    /// When each step was seen.
    pub times: Times,
    /// Whether this cycle starts with a drift (else it starts from the stable version's state).
    pub expects_drift: bool,
    /// The stable version when the cycle began.
    pub base_version: Option<String>,
    /// The trigger: id, reason, message.
    pub trigger: Option<(String, TriggerReason, String)>,
    /// The stable version's positive rate the policy saw when it fired.
    pub quality_at_trigger: Option<f64>,
    /// The RetrainJob.
    pub retrain_job: Option<String>,
    /// The trainer Job of each attempt.
    pub jobs: Vec<String>,
    /// The version the RetrainJob produced.
    pub candidate: Option<String>,
    /// The decision.
    pub decision: Option<HistoryEntry>,
    /// How it ended.
    pub outcome: Option<Outcome>,
}

/// One line of the timeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimelineEntry {
    /// Seconds since the demo started.
    pub at: f64,
    /// What kind of step (`drift`, `signal`, `trigger`, `retrainjob`, `job`, `canary`, ...).
    pub kind: &'static str,
    /// In words.
    pub text: String,
}

/// The cycles and the timeline, from changes and the demo's own events.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    /// Every cycle so far, the last possibly open.
    pub cycles: Vec<Cycle>,
    /// Everything seen, in order.
    pub timeline: Vec<TimelineEntry>,
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

impl Tracker {
    /// The open cycle, if any.
    pub fn open(&self) -> Option<&Cycle> {
        self.cycles.last().filter(|c| c.outcome.is_none())
    }

    fn open_mut(&mut self) -> Option<&mut Cycle> {
        self.cycles.last_mut().filter(|c| c.outcome.is_none())
    }

    /// Cycles that ended.
    pub fn finished(&self) -> usize {
        self.cycles.iter().filter(|c| c.outcome.is_some()).count()
    }

    /// Open a cycle (none must be open); `expects_drift` when the scenario will dip quality.
    pub fn begin(&mut self, expects_drift: bool, base_version: Option<String>) {
        if self.open().is_some() {
            return;
        }
        let index = self.cycles.len() + 1;
        self.cycles.push(Cycle { index, expects_drift, base_version, ..Cycle::default() });
    }

    /// Add a line of the demo's own to the timeline.
    pub fn note(&mut self, at: Duration, kind: &'static str, text: String) {
        self.timeline.push(TimelineEntry { at: (at.as_secs_f64() * 10.0).round() / 10.0, kind, text });
    }

    /// The scenario's drift happened.
    pub fn drift(&mut self, at: Duration, changes: &[(String, f64, f64)]) {
        let text = changes.iter().map(|(v, b, a)| format!("{v} {} -> {}", pct(*b), pct(*a))).collect::<Vec<_>>();
        if let Some(c) = self.open_mut() {
            c.times.drift.get_or_insert(at);
        }
        self.note(at, "drift", format!("the world drifts: users now find {}", text.join(", ")));
    }

    /// Whether the open cycle is waiting for the quality to cross the threshold.
    pub fn wants_signal(&self) -> bool {
        self.open().is_some_and(|c| c.times.signal.is_none() && (!c.expects_drift || c.times.drift.is_some()))
    }

    /// The collector's window statistics of `version` crossed the threshold.
    pub fn signal(&mut self, at: Duration, version: &str, q: &Quality, threshold: f64) {
        let Some(c) = self.open_mut() else { return };
        if c.times.signal.is_some() {
            return;
        }
        c.times.signal = Some(at);
        let rate = q.positive_rate.unwrap_or_default();
        self.note(
            at,
            "signal",
            format!(
                "quality of {version} in the collector: {:.2}% ({} of {} judged), below {}",
                rate * 100.0,
                q.positive,
                q.judged,
                pct(threshold)
            ),
        );
    }

    /// The open cycle's trigger fired: record it, and the signal too when the policy saw the
    /// crossing before the demo's own look at the collector did.
    fn fired(&mut self, at: Duration, trigger: (String, TriggerReason, String), text: String) {
        if self.wants_signal() {
            if let Some(c) = self.open_mut() {
                c.times.signal = Some(at);
            }
            self.note(at, "signal", "the policy saw the threshold crossed before the demo's next look".into());
        }
        if let Some(c) = self.open_mut() {
            c.times.trigger = Some(c.times.trigger.map_or(at, |t| t.min(at)));
            c.trigger = Some(trigger);
        }
        self.note(at, "trigger", text);
    }

    /// Take in one change seen at `at`.
    pub fn record(&mut self, at: Duration, change: Change) {
        match change {
            Change::Serving { version, pods } => {
                self.note(at, "serving", format!("{version} serving on {pods} ready pods"));
            }
            Change::Triggered { id, reason, message, retrain_job, positive_rate } => {
                let known = self.open().and_then(|c| c.trigger.as_ref()).is_some_and(|t| t.0 == id);
                if known {
                    // Seen first through its RetrainJob: only the policy's numbers are new.
                    if let Some(c) = self.open_mut() {
                        c.quality_at_trigger = c.quality_at_trigger.or(positive_rate);
                    }
                    return;
                }
                let rtj = retrain_job.as_ref().map(|r| format!(" -> RetrainJob {r}")).unwrap_or_default();
                let text = format!("policy fired ({reason:?}): {message}{rtj}");
                if self.open().is_some_and(|c| c.trigger.is_none()) {
                    self.fired(at, (id, reason, message), text);
                    if let Some(c) = self.open_mut() {
                        c.quality_at_trigger = positive_rate;
                        if c.retrain_job.is_none() {
                            c.retrain_job = retrain_job;
                        }
                    }
                } else {
                    self.note(at, "trigger", text);
                }
            }
            Change::RetrainJobCreated { name, base, rows, trigger } => {
                let mine = self.open().is_some_and(|c| c.retrain_job.as_deref().is_none_or(|r| r == name));
                if mine {
                    // The policy creates the RetrainJob before it records the trigger in its
                    // status: the RetrainJob may be the first sign of the trigger.
                    if let Some(t) = trigger
                        && self.open().is_some_and(|c| c.trigger.is_none())
                    {
                        let text = format!("policy fired ({:?}): {} -> RetrainJob {name}", t.1, t.2);
                        self.fired(at, t, text);
                    }
                    if let Some(c) = self.open_mut() {
                        c.retrain_job = Some(name.clone());
                        c.times.retrain_job.get_or_insert(at);
                        c.times.trigger.get_or_insert(at);
                    }
                }
                self.note(at, "retrainjob", format!("RetrainJob {name} created: base {base}, {rows} training rows"));
            }
            Change::JobCreated { name, retrain_job } => {
                if let Some(c) = self.open_mut()
                    && (retrain_job.is_none() || retrain_job == c.retrain_job)
                {
                    c.times.job.get_or_insert(at);
                    c.jobs.push(name.clone());
                }
                let owner = retrain_job.map(|r| format!(" for {r}")).unwrap_or_default();
                self.note(at, "job", format!("trainer Job {name} started{owner}"));
            }
            Change::JobFinished { name, succeeded } => {
                if let Some(c) = self.open_mut()
                    && c.jobs.contains(&name)
                {
                    c.times.job_finished = Some(at);
                }
                let how = if succeeded { "complete" } else { "failed" };
                self.note(at, "job", format!("trainer Job {name} {how}"));
            }
            Change::RetrainFinished { name, succeeded, rejected, version, message } => {
                let mine = self.open().is_some_and(|c| c.retrain_job.as_deref() == Some(name.as_str()));
                if rejected {
                    if mine && let Some(c) = self.open_mut() {
                        c.candidate.clone_from(&version);
                        c.outcome = Some(Outcome::Rejected);
                        c.times.decision = Some(at);
                    }
                    let v = version.unwrap_or_else(|| "?".into());
                    self.note(
                        at,
                        "retrain",
                        format!("RetrainJob {name}: {v} rejected by the evaluation gate ({message}); nothing canaried"),
                    );
                } else if succeeded {
                    if mine && let Some(c) = self.open_mut() {
                        c.candidate.clone_from(&version);
                    }
                    let v = version.unwrap_or_else(|| "?".into());
                    self.note(
                        at,
                        "retrain",
                        format!("RetrainJob {name} succeeded: new version {v}, handed to the canary"),
                    );
                } else {
                    if mine && let Some(c) = self.open_mut() {
                        c.outcome = Some(Outcome::TrainingFailed);
                        c.times.decision = Some(at);
                    }
                    self.note(at, "retrain", format!("RetrainJob {name} failed: {message}"));
                }
            }
            Change::CanaryStarted { version, weight } => {
                if let Some(c) = self.open_mut() {
                    if c.candidate.is_none() {
                        c.candidate = Some(version.clone());
                    }
                    if c.candidate.as_deref() == Some(version.as_str()) {
                        c.times.canary.get_or_insert(at);
                    }
                }
                self.note(at, "canary", format!("canary of {version} started at {weight}% of traffic"));
            }
            Change::StepAdvanced { version, step, weight, evidence } => {
                // The evidence that passed the step is cleared with the step; only a passing look
                // seen before it is worth showing.
                let why = evidence
                    .filter(|e| e.verdict == crate::api::model_deployment::Verdict::Pass)
                    .map(|e| format!(" ({})", evidence_brief(&e)))
                    .unwrap_or_default();
                self.note(at, "canary", format!("canary of {version} passed step {step}, now at {weight}%{why}"));
            }
            Change::Decided(entry) => {
                if let Some(c) = self.open_mut()
                    && c.candidate.as_deref().is_none_or(|v| v == entry.version)
                {
                    c.outcome = Some(Outcome::of(entry.type_));
                    c.times.decision = Some(at);
                    c.candidate = Some(entry.version.clone());
                    c.decision = Some((*entry).clone());
                }
                let why = entry.evidence.as_ref().map(|e| format!(" ({})", evidence_brief(e))).unwrap_or_default();
                let text = match entry.type_ {
                    HistoryType::Promoted => format!(
                        "{} promoted over {}{why}",
                        entry.version,
                        entry.previous_version.as_deref().unwrap_or("?")
                    ),
                    HistoryType::RolledBack => format!(
                        "{} rolled back, {} stays stable{why}",
                        entry.version,
                        entry.previous_version.as_deref().unwrap_or("?")
                    ),
                    HistoryType::Aborted => format!("{} aborted: {} {}", entry.version, entry.reason, entry.message),
                    HistoryType::Rejected => format!("{} rejected: {} {}", entry.version, entry.reason, entry.message),
                };
                self.note(at, "decision", text);
            }
        }
    }
}

/// Evidence in a few words: rates per arm and the interval of the difference.
pub fn evidence_brief(e: &Evidence) -> String {
    let rate = |r: Option<f64>| r.map_or_else(|| "-".to_string(), pct);
    let interval = match (e.difference_lower, e.difference_upper) {
        (Some(l), Some(u)) => format!(", diff in [{:+.0}, {:+.0}] pts", l * 100.0, u * 100.0),
        _ => String::new(),
    };
    format!(
        "canary {} of {} vs stable {} of {}{interval}: {:?}",
        rate(e.canary_positive_rate),
        e.canary_samples,
        rate(e.stable_positive_rate),
        e.stable_samples,
        e.verdict
    )
}

/// Whether a lineage names everything that produced a version.
pub fn lineage_complete(l: &Lineage) -> bool {
    l.retrain_job.is_some()
        && l.feedback_policy.is_some()
        && l.trigger_id.is_some()
        && l.trigger_reason.is_some()
        && l.dataset_sha256.is_some()
        && l.dataset_counts.is_some()
        && l.base_version.is_some()
}

/// Reads the cluster and the collector.
#[derive(Clone)]
pub struct Observer {
    mds: Api<ModelDeployment>,
    policies: Api<FeedbackPolicy>,
    retrain_jobs: Api<RetrainJob>,
    jobs: Api<Job>,
    pods: Api<Pod>,
    collector: CollectorClient,
    namespace: String,
    deployment: String,
    policy: String,
    window_seconds: i64,
}

impl Observer {
    /// An observer of `deployment` and `policy` in `namespace`.
    pub fn new(
        client: Client,
        collector: CollectorClient,
        namespace: &str,
        deployment: &str,
        policy: &str,
        window_seconds: i64,
    ) -> Self {
        Self {
            mds: Api::namespaced(client.clone(), namespace),
            policies: Api::namespaced(client.clone(), namespace),
            retrain_jobs: Api::namespaced(client.clone(), namespace),
            jobs: Api::namespaced(client.clone(), namespace),
            pods: Api::namespaced(client, namespace),
            collector,
            namespace: namespace.to_string(),
            deployment: deployment.to_string(),
            policy: policy.to_string(),
            window_seconds,
        }
    }

    /// The collector's per-version statistics under the default signal mapping: over the
    /// policy's window back from now, or from `from` (RFC 3339) when given, to `to` or now.
    pub async fn stats(&self, from: Option<&str>, to: Option<&str>) -> Result<StatsReport, DemoError> {
        let from = match from {
            Some(f) => f.to_string(),
            None => {
                let now = k8s_openapi::jiff::Timestamp::now();
                now.saturating_sub(k8s_openapi::jiff::SignedDuration::from_secs(self.window_seconds))
                    .unwrap_or(now)
                    .to_string()
            }
        };
        let mapping = SignalMapping::default();
        let q = StatsQuery { namespace: &self.namespace, deployment: &self.deployment, from, mapping: &mapping };
        self.collector.stats_until(&q, to).await.map_err(|e| DemoError::Collector(e.to_string()))
    }

    /// One snapshot of everything.
    pub async fn snapshot(&self) -> Result<Snapshot, DemoError> {
        let kube = |what: &'static str| move |source: kube::Error| DemoError::Kube { action: what.to_string(), source };
        let selector = format!("{LABEL_MODEL_DEPLOYMENT}={}", self.deployment);
        let all = ListParams::default();
        let by_deployment = ListParams::default().labels(&selector);
        let (md, policy, rtjs, jobs, pods, stats) = tokio::join!(
            self.mds.get_opt(&self.deployment),
            self.policies.get_opt(&self.policy),
            self.retrain_jobs.list(&all),
            self.jobs.list(&all),
            self.pods.list(&by_deployment),
            self.stats(None, None),
        );
        let mut retrain_jobs = rtjs.map_err(kube("listing RetrainJobs"))?.items;
        retrain_jobs.sort_by_key(ResourceExt::name_any);
        let mut jobs: Vec<Job> =
            jobs.map_err(kube("listing Jobs"))?.items.into_iter().filter(|j| owning_retrain_job(j).is_some()).collect();
        jobs.sort_by_key(ResourceExt::name_any);
        Ok(Snapshot {
            md: md.map_err(kube("reading the ModelDeployment"))?,
            policy: policy.map_err(kube("reading the FeedbackPolicy"))?,
            retrain_jobs,
            jobs,
            routes: routes_of(&pods.map_err(kube("listing pods"))?.items),
            window: qualities(&stats?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn md(status: Value) -> ModelDeployment {
        let mut md = super::super::resources::model_deployment().unwrap_or_else(|e| panic!("{e}"));
        md.status = Some(serde_json::from_value(status).unwrap_or_else(|e| panic!("{e}")));
        md
    }

    fn ready_condition() -> Value {
        json!({"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z", "reason": "Ready", "message": ""})
    }

    fn rtj(name: &str, phase: &str, version: Option<&str>) -> RetrainJob {
        let mut status = json!({"phase": phase});
        if let Some(v) = version {
            status["result"] = json!({"version": v, "uri": format!("pvc://models/{v}")});
        }
        serde_json::from_value(json!({
            "apiVersion": "flywheel.dev/v1alpha1", "kind": "RetrainJob",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "targetRef": {"name": "support-chat"},
                "base": {"version": "v1", "uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"},
                "dataset": {"uri": "file:///data/ds-1", "sha256": "a".repeat(64), "formats": ["SFT"], "counts": {"sft": 80, "dpo": 20, "heldOut": 10}},
                "trainer": {"image": "t"},
                "outputUri": "pvc://models/x"
            },
            "status": status
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn job(name: &str, owner: &str, condition: Option<&str>) -> Job {
        let conditions: Vec<Value> = condition.map(|c| vec![json!({"type": c, "status": "True"})]).unwrap_or_default();
        serde_json::from_value(json!({
            "metadata": {"name": name, "ownerReferences": [{"apiVersion": "flywheel.dev/v1alpha1", "kind": "RetrainJob", "name": owner, "uid": "u"}]},
            "status": {"conditions": conditions}
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn policy(trigger: Option<(&str, &str)>) -> FeedbackPolicy {
        let mut fbp = super::super::resources::feedback_policy().unwrap_or_else(|e| panic!("{e}"));
        let mut status =
            json!({"stats": {"version": "v1", "total": 300, "positive": 100, "judged": 200, "positiveRate": 0.5}});
        if let Some((id, rtj)) = trigger {
            status["lastTrigger"] = json!({"id": id, "reason": "Quality", "message": "positive rate of v1 is 50.0%", "time": "2026-01-01T00:00:10Z", "retrainJob": rtj});
        }
        fbp.status = Some(serde_json::from_value(status).unwrap_or_else(|e| panic!("{e}")));
        fbp
    }

    fn lineage() -> Value {
        json!({"retrainJob": "support-chat-quality-1", "feedbackPolicy": "support-chat-quality", "triggerId": "t1",
               "triggerReason": "Quality", "datasetSha256": "a".repeat(64), "datasetCounts": {"sft": 80, "dpo": 20, "heldOut": 10},
               "baseVersion": "v1"})
    }

    /// The snapshots of one turn of the loop, as the demo would see them.
    fn story(decision: &str) -> Vec<Snapshot> {
        let routes = |v1: u32, v2: u32| -> Routes {
            let mut r: Routes = [("v1".to_string(), v1)].into();
            if v2 > 0 {
                r.insert("v2".into(), v2);
            }
            r
        };
        let stable = json!({"version": "v1", "uri": "hf://x"});
        let serving = Snapshot {
            md: Some(md(json!({"conditions": [ready_condition()], "stable": stable}))),
            policy: Some(policy(None)),
            routes: routes(4, 0),
            ..Snapshot::default()
        };
        let triggered = Snapshot {
            policy: Some(policy(Some(("t1", "support-chat-quality-1")))),
            retrain_jobs: vec![rtj("support-chat-quality-1", "Pending", None)],
            ..serving.clone()
        };
        let training = Snapshot {
            retrain_jobs: vec![rtj("support-chat-quality-1", "Running", None)],
            jobs: vec![job("support-chat-quality-1-1", "support-chat-quality-1", None)],
            ..triggered.clone()
        };
        let trained = Snapshot {
            retrain_jobs: vec![rtj("support-chat-quality-1", "Succeeded", Some("v2"))],
            jobs: vec![job("support-chat-quality-1-1", "support-chat-quality-1", Some("Complete"))],
            ..training.clone()
        };
        let canary = |step: i32, weight: i32| {
            json!({"version": "v2", "uri": "pvc://models/v2", "weight": weight, "step": step,
                   "evidence": {"stableSamples": 120, "canarySamples": 110, "stablePositiveRate": 0.55, "canaryPositiveRate": 0.9,
                                "differenceLower": 0.2, "differenceUpper": 0.5, "verdict": "Inconclusive", "message": "m"}})
        };
        let canarying = Snapshot {
            md: Some(md(json!({"conditions": [ready_condition()], "stable": stable, "canary": canary(0, 25)}))),
            routes: routes(3, 1),
            ..trained.clone()
        };
        let stepped = Snapshot {
            md: Some(md(json!({"conditions": [ready_condition()], "stable": stable, "canary": canary(1, 50)}))),
            routes: routes(2, 2),
            ..canarying.clone()
        };
        let (new_stable, previous) = if decision == "Promoted" { ("v2", "v1") } else { ("v1", "v1") };
        let decided = Snapshot {
            md: Some(md(json!({"conditions": [ready_condition()], "stable": {"version": new_stable, "uri": "u"},
                "history": [{"type": decision, "version": "v2", "previousVersion": previous, "time": "2026-01-01T00:01:00Z",
                             "reason": "r", "message": "m", "lineage": lineage(),
                             "evidence": {"stableSamples": 130, "canarySamples": 140, "stablePositiveRate": 0.55,
                                          "canaryPositiveRate": 0.9, "verdict": "Pass", "message": "m"}}]}))),
            ..stepped.clone()
        };
        vec![Snapshot::default(), serving, triggered, training, trained, canarying, stepped, decided]
    }

    #[test]
    fn one_turn_of_the_loop_becomes_a_cycle_with_its_latencies() {
        let snaps = story("Promoted");
        let mut tracker = Tracker::default();
        tracker.begin(true, Some("v1".into()));
        let mut all = Vec::new();
        for (i, pair) in snaps.windows(2).enumerate() {
            let at = Duration::from_secs(10 * (i as u64 + 1));
            if i == 1 {
                tracker.drift(Duration::from_secs(12), &[("v1".into(), 0.86, 0.56)]);
                assert!(tracker.wants_signal());
                let q =
                    Quality { positive: 100, judged: 200, signals: 230, interactions: 300, positive_rate: Some(0.5) };
                tracker.signal(Duration::from_secs(15), "v1", &q, 0.7);
                assert!(!tracker.wants_signal());
            }
            for change in changes(&pair[0], &pair[1]) {
                all.push(change.clone());
                tracker.record(at, change);
            }
        }
        let kinds: Vec<String> = all
            .iter()
            .map(|c| format!("{c:?}").split([' ', '(', '{']).next().unwrap_or_default().to_string())
            .collect();
        assert_eq!(
            kinds,
            [
                "Serving",
                "Triggered",
                "RetrainJobCreated",
                "JobCreated",
                "RetrainFinished",
                "JobFinished",
                "CanaryStarted",
                "StepAdvanced",
                "Decided"
            ]
        );
        let cycle = &tracker.cycles[0];
        assert_eq!(cycle.outcome, Some(Outcome::Promoted));
        assert_eq!(cycle.retrain_job.as_deref(), Some("support-chat-quality-1"));
        assert_eq!(cycle.jobs, ["support-chat-quality-1-1"]);
        assert_eq!(cycle.candidate.as_deref(), Some("v2"));
        assert_eq!(cycle.quality_at_trigger, Some(0.5));
        let t = &cycle.times;
        assert_eq!(
            (t.drift, t.signal, t.trigger, t.job, t.canary, t.decision),
            (
                Some(Duration::from_secs(12)),
                Some(Duration::from_secs(15)),
                Some(Duration::from_secs(20)),
                Some(Duration::from_secs(30)),
                Some(Duration::from_secs(50)),
                Some(Duration::from_secs(70))
            )
        );
        assert!(lineage_complete(
            cycle.decision.as_ref().and_then(|d| d.lineage.as_ref()).unwrap_or(&Lineage::default())
        ));
        assert!(tracker.open().is_none());
        assert_eq!(tracker.finished(), 1);
        assert!(tracker.timeline.iter().any(|e| e.kind == "decision" && e.text.contains("v2 promoted over v1")));
        // Nothing new between identical snapshots.
        let last = snaps.last().cloned().unwrap_or_default();
        assert!(changes(&last, &last).is_empty());
    }

    #[test]
    fn a_retrain_job_seen_before_the_policy_status_counts_as_the_trigger() {
        let mut tracker = Tracker::default();
        tracker.begin(true, Some("v1".into()));
        tracker.drift(Duration::from_secs(5), &[("v1".into(), 0.86, 0.56)]);
        let serving = Snapshot { policy: Some(policy(None)), ..Snapshot::default() };
        let mut created = rtj("support-chat-quality-1", "Pending", None);
        created.spec.origin = Some(crate::api::retrain_job::Origin {
            feedback_policy: "support-chat-quality".into(),
            trigger_id: "trigger-1".into(),
            reason: TriggerReason::Quality,
        });
        let rtj_first = Snapshot { retrain_jobs: vec![created], ..serving.clone() };
        let recorded =
            Snapshot { policy: Some(policy(Some(("trigger-1", "support-chat-quality-1")))), ..rtj_first.clone() };
        for (at, (a, b)) in [(8, (&serving, &rtj_first)), (9, (&rtj_first, &recorded))] {
            for change in changes(a, b) {
                tracker.record(Duration::from_secs(at), change);
            }
        }
        let kinds: Vec<&str> = tracker.timeline.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, ["drift", "signal", "trigger", "retrainjob"]);
        let c = &tracker.cycles[0];
        assert_eq!((c.times.signal, c.times.trigger), (Some(Duration::from_secs(8)), Some(Duration::from_secs(8))));
        assert_eq!(c.trigger.as_ref().map(|t| t.0.as_str()), Some("trigger-1"));
        assert_eq!(c.quality_at_trigger, Some(0.5), "the policy's numbers arrive with its status");
    }

    #[test]
    fn a_rollback_ends_the_cycle_rolled_back() {
        let snaps = story("RolledBack");
        let mut tracker = Tracker::default();
        tracker.begin(false, Some("v1".into()));
        assert!(tracker.wants_signal(), "a cycle without a drift looks for the signal at once");
        for pair in snaps.windows(2) {
            for change in changes(&pair[0], &pair[1]) {
                tracker.record(Duration::from_secs(1), change);
            }
        }
        assert_eq!(tracker.cycles[0].outcome, Some(Outcome::RolledBack));
        assert!(tracker.timeline.iter().any(|e| e.text.contains("v2 rolled back, v1 stays stable")));
    }

    #[test]
    fn collector_statistics_and_pods_become_qualities_and_routes() {
        let stats: StatsReport = serde_json::from_value(json!({"versions": [
            {"version": "v1", "total": 50, "interactions": 60, "positiveRate": {"value": 0.5, "numerator": 20, "denominator": 40}},
            {"version": "v2", "total": 0, "interactions": 3, "positiveRate": {"numerator": 0, "denominator": 0}}
        ]}))
        .unwrap_or_else(|e| panic!("{e}"));
        let q = qualities(&stats);
        assert_eq!(
            q["v1"],
            Quality { positive: 20, judged: 40, signals: 50, interactions: 60, positive_rate: Some(0.5) }
        );
        assert_eq!(q["v2"].positive_rate, None);
        let pod = |version: &str, ready: &str, deleting: bool| -> Pod {
            let mut p = json!({"metadata": {"name": "p", "labels": {LABEL_VERSION: version}},
                               "status": {"conditions": [{"type": "Ready", "status": ready}]}});
            if deleting {
                p["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
            }
            serde_json::from_value(p).unwrap_or_else(|e| panic!("{e}"))
        };
        let routes = routes_of(&[
            pod("v1", "True", false),
            pod("v1", "True", false),
            pod("v2", "False", false),
            pod("v1", "True", true),
        ]);
        assert_eq!(routes, [("v1".to_string(), 2), ("v2".to_string(), 0)].into());
    }
}
