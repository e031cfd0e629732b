//! The demo's live loop: the users' traffic, one look at the cluster and the collector every
//! 200 ms (what changed becomes the timeline), the scenario's drift when it is due, the live
//! view, a stall report when nothing moves, and the summary read back at the end.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::{Api, ResourceExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::error::DemoError;
use super::observe::{self, Observer, Outcome, Snapshot, Tracker, changes, qualities};
use super::options::{DemoOptions, scenario_name};
use super::real;
use super::resources::{self, DEPLOYMENT, FIRST_VERSION, MIN_SAMPLES, NAMESPACE, POLICY, QUALITY_BELOW};
use super::scenario::{Pace, World};
use super::stack::{Stack, apply};
use super::summary::{self, Summary};
use super::users::{self, Routes, Target, TrafficStats};
use super::view::{Frame, View};
use crate::api::model_deployment::HistoryType;
use crate::api::{FeedbackPolicy, ModelDeployment};
use crate::collector::client::CollectorClient;

/// Apply the resources, send traffic, watch the loop turn `options.cycles` times, and read the
/// summary back from the cluster and the collector.
pub(super) async fn drive(
    options: &DemoOptions,
    stack: &Stack,
    pace: Pace,
    world: &Arc<Mutex<World>>,
    view: &mut View,
    started: Instant,
    start_time: Timestamp,
) -> Result<Summary, DemoError> {
    let mut tracker = Tracker::default();
    tracker.note(started.elapsed(), "setup", setup_note(options));
    apply_resources(stack).await?;
    tracker.note(started.elapsed(), "apply", apply_note(stack.real));
    tracker.begin(true, Some(FIRST_VERSION.to_string()));
    let collector = CollectorClient::new(&stack.base, Some(stack.token.clone()));
    let observer = Observer::new(
        stack.client.clone(),
        collector.clone(),
        NAMESPACE,
        DEPLOYMENT,
        POLICY,
        resources::WINDOW_SECONDS,
    );
    let users = Users::start(stack, collector, world.clone(), pace.rate());
    let mut look = Progress::new(started, start_time);
    let mut ticker = tokio::time::interval(Duration::from_millis(200));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let outcome = loop {
        ticker.tick().await;
        match observer.snapshot().await {
            Ok(cur) => {
                users.route(&cur.routes);
                learn_trained_versions(&cur, world);
                look.observe(cur, &mut tracker, options.cycles, pace);
            }
            Err(e) => look.poll_error = Some(e.to_string()),
        }
        look.drift_when_due(world, &mut tracker);
        look.show(view, options, pace, &tracker, &users.stats());
        if tracker.finished() >= options.cycles as usize {
            break Ok(());
        }
        if let Some(stalled) = look.stalled(&tracker, options.stall_timeout) {
            break Err(stalled);
        }
    };
    let wall = started.elapsed();
    let traffic = users.stop().await;
    outcome?;
    let world = world.lock().unwrap_or_else(PoisonError::into_inner).clone();
    summarize(options, pace, &observer, &look, &tracker, Ended { world, traffic, wall }).await
}

fn setup_note(options: &DemoOptions) -> String {
    let kubeconfig = options
        .kubeconfig_out
        .as_ref()
        .map(|p| format!("; kubectl --kubeconfig {} get md,fbp,rtj", p.display()))
        .unwrap_or_default();
    format!("simulated cluster, collector and operator up{kubeconfig}")
}

fn apply_note(real: bool) -> String {
    let replicas = if real { real::REPLICAS } else { resources::REPLICAS };
    format!(
        "applied ModelDeployment {DEPLOYMENT} ({FIRST_VERSION}, {replicas} replicas) and FeedbackPolicy {POLICY} (quality below {:.0}%)",
        QUALITY_BELOW * 100.0
    )
}

/// The claim the trainer writes to, the ModelDeployment and the FeedbackPolicy, as a user
/// applies them (with `--real`, served by the reference model server and trained by the
/// reference trainer).
async fn apply_resources(stack: &Stack) -> Result<(), DemoError> {
    let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(stack.client.clone(), NAMESPACE);
    apply(&claims, &resources::models_claim()?).await?;
    let mut md = resources::model_deployment()?;
    let mut policy = resources::feedback_policy()?;
    if stack.real {
        real::model_deployment(&mut md)?;
        real::feedback_policy(&mut policy)?;
    }
    apply(&Api::<ModelDeployment>::namespaced(stack.client.clone(), NAMESPACE), &md).await?;
    apply(&Api::<FeedbackPolicy>::namespaced(stack.client.clone(), NAMESPACE), &policy).await?;
    Ok(())
}

/// The world learns the versions the trainer made, from the RetrainJobs' results: a real
/// trainer names its version itself (the simulated one asked the world already, and learning it
/// again changes nothing).
fn learn_trained_versions(snapshot: &Snapshot, world: &Mutex<World>) {
    let mut world = world.lock().unwrap_or_else(PoisonError::into_inner);
    for rtj in &snapshot.retrain_jobs {
        if let Some(result) = rtj.status.as_ref().and_then(|s| s.result.as_ref())
            && world.quality(&result.version).is_none()
        {
            world.train(&rtj.name_any(), &rtj.spec.base.version, Some(&result.version));
        }
    }
}

/// The simulated users: traffic over the ready pods, posted to the collector until stopped.
struct Users {
    routes: watch::Sender<Routes>,
    stats: Arc<Mutex<TrafficStats>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Users {
    /// Simulated users posting to the collector; with `--real`, users whose requests go through
    /// the agents of the Service's ready pods.
    fn start(stack: &Stack, collector: CollectorClient, world: Arc<Mutex<World>>, rate: f64) -> Self {
        let (routes, routes_rx) = watch::channel(Routes::new());
        let stats = Arc::new(Mutex::new(TrafficStats::default()));
        let stop = CancellationToken::new();
        let target = Target { namespace: NAMESPACE.into(), deployment: DEPLOYMENT.into() };
        let task = if stack.real {
            let rate = rate.min(real::MAX_RATE);
            tokio::spawn(real::users(stack.client.clone(), collector, target, world, rate, stats.clone(), stop.clone()))
        } else {
            tokio::spawn(users::run(collector, target, world, routes_rx, rate, stats.clone(), stop.clone()))
        };
        Self { routes, stats, stop, task }
    }

    /// Send the next requests to these pods.
    fn route(&self, routes: &Routes) {
        self.routes.send_replace(routes.clone());
    }

    fn stats(&self) -> TrafficStats {
        self.stats.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Stop sending and return what was sent.
    async fn stop(self) -> TrafficStats {
        self.stop.cancel();
        let _stopped = self.task.await;
        self.stats.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// What the live loop carries from one look to the next.
struct Progress {
    started: Instant,
    /// The wall-clock time the demo started (the summary's statistics count from there).
    start_time: Timestamp,
    /// The last snapshot that was read.
    prev: Snapshot,
    /// When the scenario's world drifts next.
    drift_at: Option<Instant>,
    /// When it first drifted (the summary's "before" ends there).
    first_drift: Option<Timestamp>,
    /// The last time anything moved.
    last_progress: Instant,
    meter: RateMeter,
    poll_error: Option<String>,
}

impl Progress {
    fn new(started: Instant, start_time: Timestamp) -> Self {
        Self {
            started,
            start_time,
            prev: Snapshot::default(),
            drift_at: None,
            first_drift: None,
            last_progress: Instant::now(),
            meter: RateMeter::default(),
            poll_error: None,
        }
    }

    /// Record what changed since the last look; open the next cycle when one closes.
    fn observe(&mut self, cur: Snapshot, tracker: &mut Tracker, cycles: u32, pace: Pace) {
        self.poll_error = None;
        let at = self.started.elapsed();
        // The collector's statistics first: the policy fires on them, so a crossing and the
        // trigger seen in one look happened in that order.
        if tracker.wants_signal()
            && let Some(stable) = cur.stable()
            && let Some(q) = cur.window.get(stable)
            && q.judged >= MIN_SAMPLES
            && q.positive_rate.is_some_and(|r| r < QUALITY_BELOW)
        {
            tracker.signal(at, stable, q, QUALITY_BELOW);
            self.last_progress = Instant::now();
        }
        for change in changes(&self.prev, &cur) {
            self.last_progress = Instant::now();
            if matches!(change, observe::Change::Serving { .. }) && self.first_drift.is_none() {
                self.drift_at = Some(Instant::now() + pace.warmup());
            }
            let was_open = tracker.open().is_some();
            tracker.record(at, change);
            if was_open && tracker.open().is_none() && tracker.finished() < cycles as usize {
                // A promoted version is healthy: the loop turns again only when the world
                // drifts. Otherwise the stable version is still poor and the policy fires again
                // once its cooldown allows.
                let promoted = tracker.cycles.last().and_then(|c| c.outcome) == Some(Outcome::Promoted);
                tracker.begin(promoted, cur.stable().map(str::to_string));
                if promoted {
                    self.drift_at = Some(Instant::now() + pace.next_drift_after());
                }
            }
        }
        self.prev = cur;
    }

    /// Make the world drift when its time has come.
    fn drift_when_due(&mut self, world: &Mutex<World>, tracker: &mut Tracker) {
        if self.drift_at.is_none_or(|at| Instant::now() < at) {
            return;
        }
        let drift = world.lock().unwrap_or_else(PoisonError::into_inner).drift();
        tracker.drift(self.started.elapsed(), &drift.changes);
        self.first_drift.get_or_insert_with(Timestamp::now);
        self.drift_at = None;
        self.last_progress = Instant::now();
    }

    fn show(&mut self, view: &mut View, options: &DemoOptions, pace: Pace, tracker: &Tracker, traffic: &TrafficStats) {
        let rates = self.meter.sample(traffic.requests(), traffic.feedback());
        let note = self.poll_error.clone().or_else(|| {
            traffic
                .last_error
                .as_ref()
                .map(|e| format!("{} posts to the collector failed; last: {e}", traffic.failed_posts))
        });
        view.show(&Frame {
            elapsed: self.started.elapsed(),
            scenario: scenario_name(options.scenario),
            cycles: options.cycles,
            speed: pace.speed,
            snapshot: &self.prev,
            traffic,
            rates,
            tracker,
            note,
        });
    }

    /// The error to stop with when nothing moved for longer than `timeout`.
    fn stalled(&self, tracker: &Tracker, timeout: Duration) -> Option<DemoError> {
        let quiet = self.last_progress.elapsed();
        (quiet > timeout).then(|| DemoError::Stalled {
            waiting_for: waiting_for(tracker, &self.prev),
            seconds: quiet.as_secs(),
            state: match &self.poll_error {
                Some(e) => format!("the last poll failed: {e}"),
                None => diagnose(&self.prev),
            },
        })
    }
}

/// What the live loop leaves when it ends: the world's truth, the traffic sent, the time taken.
struct Ended {
    world: World,
    traffic: TrafficStats,
    wall: Duration,
}

/// The summary: the cycles as the tracker saw them, the qualities as the collector counted them.
async fn summarize(
    options: &DemoOptions,
    pace: Pace,
    observer: &Observer,
    look: &Progress,
    tracker: &Tracker,
    ended: Ended,
) -> Result<Summary, DemoError> {
    let Ended { world, traffic, wall } = ended;
    let from = look.start_time.to_string();
    let whole = qualities(&observer.stats(Some(&from), None).await?);
    let initial = match look.first_drift {
        Some(to) => qualities(&observer.stats(Some(&from), Some(&to.to_string())).await?).remove(FIRST_VERSION),
        None => None,
    };
    Ok(summary::build(summary::Inputs {
        scenario: scenario_name(options.scenario),
        cycles_requested: options.cycles,
        cycles: &tracker.cycles,
        timeline: &tracker.timeline,
        version_roles: version_roles(tracker, &look.prev, &world),
        stable_version: look.prev.stable().map(str::to_string),
        collector: &whole,
        initial,
        truth: world.versions(),
        traffic: summary::TrafficSummary {
            requests: traffic.requests(),
            feedback: traffic.feedback(),
            failed_posts: traffic.failed_posts,
            last_error: traffic.last_error.clone(),
        },
        speed: pace.speed,
        wall,
    }))
}

/// Rates of requests and feedback over the last few seconds.
#[derive(Default)]
struct RateMeter(VecDeque<(Instant, u64, u64)>);

impl RateMeter {
    fn sample(&mut self, requests: u64, feedback: u64) -> (f64, f64) {
        let now = Instant::now();
        self.0.push_back((now, requests, feedback));
        while self.0.len() > 2
            && self.0.front().is_some_and(|(t, _, _)| now.duration_since(*t) > Duration::from_secs(3))
        {
            self.0.pop_front();
        }
        let Some((t0, r0, f0)) = self.0.front().copied() else { return (0.0, 0.0) };
        let secs = now.duration_since(t0).as_secs_f64();
        if secs <= 0.0 {
            return (0.0, 0.0);
        }
        (requests.saturating_sub(r0) as f64 / secs, feedback.saturating_sub(f0) as f64 / secs)
    }
}

/// What the open cycle waits for, in words.
fn waiting_for(tracker: &Tracker, snapshot: &Snapshot) -> String {
    let Some(c) = tracker.open() else { return "the next cycle".into() };
    let t = &c.times;
    if snapshot.stable().is_none() || (c.index == 1 && tracker.timeline.iter().all(|e| e.kind != "serving")) {
        "the ModelDeployment to become Ready".into()
    } else if c.expects_drift && t.drift.is_none() {
        "the scenario's drift".into()
    } else if t.trigger.is_none() {
        "the FeedbackPolicy to fire".into()
    } else if t.job.is_none() {
        "the RetrainJob's trainer Job".into()
    } else if t.canary.is_none() {
        "the trained version's canary".into()
    } else {
        "the canary's promotion or rollback".into()
    }
}

/// The conditions of the resources, for a stall report.
fn diagnose(s: &Snapshot) -> String {
    let mut parts = Vec::new();
    let conds = |kind: &str, cs: &[crate::api::Condition]| -> Vec<String> {
        cs.iter().map(|c| format!("{kind} {}={:?} ({}: {})", c.type_, c.status, c.reason, c.message)).collect()
    };
    if let Some(st) = s.md.as_ref().and_then(|m| m.status.as_ref()) {
        parts.extend(conds("ModelDeployment", &st.conditions));
        if let Some(c) = &st.canary {
            parts.push(format!(
                "canary {} at {}%: {}",
                c.version,
                c.weight,
                c.evidence.as_ref().map_or("no evidence", |e| e.message.as_str())
            ));
        }
    }
    if let Some(st) = s.policy.as_ref().and_then(|p| p.status.as_ref()) {
        parts.extend(conds("FeedbackPolicy", &st.conditions));
        if let Some(stats) = &st.stats {
            parts.push(format!(
                "policy stats of {}: positive rate {:?} of {} judged",
                stats.version, stats.positive_rate, stats.judged
            ));
        }
    } else {
        parts.push("the FeedbackPolicy has no status (is its controller running?)".into());
    }
    for rtj in &s.retrain_jobs {
        if let Some(st) = &rtj.status {
            parts.push(format!("RetrainJob {} {:?}", rtj.name_any(), st.phase));
            parts.extend(conds("RetrainJob", &st.conditions));
        }
    }
    parts.join("; ")
}

/// Versions in order of appearance, each with the role the cluster gave it.
fn version_roles(tracker: &Tracker, last: &Snapshot, world: &World) -> Vec<(String, String)> {
    let mut order: Vec<String> = vec![FIRST_VERSION.to_string()];
    for c in &tracker.cycles {
        if let Some(v) = &c.candidate
            && !order.contains(v)
        {
            order.push(v.clone());
        }
    }
    for v in world.versions().keys() {
        if !order.contains(v) {
            order.push(v.clone());
        }
    }
    let history = last.history();
    order
        .into_iter()
        .map(|v| {
            let role = if last.stable() == Some(v.as_str()) {
                "stable"
            } else if last.canary().is_some_and(|c| c.version == v) {
                "canary"
            } else if let Some(h) = history.iter().rev().find(|h| h.version == v) {
                match h.type_ {
                    HistoryType::Promoted => "retired",
                    HistoryType::RolledBack => "rolled_back",
                    HistoryType::Aborted => "aborted",
                    HistoryType::Rejected => "rejected",
                }
            } else if history.iter().any(|h| h.previous_version.as_deref() == Some(v.as_str())) {
                "retired"
            } else {
                "trained"
            };
            (v, role.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_the_last_seconds() {
        let mut m = RateMeter::default();
        assert_eq!(m.sample(0, 0), (0.0, 0.0));
        std::thread::sleep(Duration::from_millis(50));
        let (r, f) = m.sample(100, 50);
        assert!(r > 100.0 && f > 50.0 && r < 2100.0, "{r} {f}");
    }
}
