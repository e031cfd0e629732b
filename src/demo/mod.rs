//! `flywheel demo`: the whole loop in one process. A simulated cluster, the real operator
//! (unchanged controllers), the collector on SQLite in a scratch directory, simulated inference
//! pods and users whose feedback follows each version's hidden quality, and a simulated trainer
//! whose Job produces a new version. The demo applies a ModelDeployment and a FeedbackPolicy as
//! a user would, makes the world drift, and watches the loop turn: the policy fires on the
//! collector's statistics, a RetrainJob runs its trainer Job, the new version is canaried and
//! judged on live feedback, and promoted or rolled back. The summary is read from what the
//! cluster and the collector did.

pub mod error;
pub mod observe;
pub mod resources;
pub mod scenario;
pub mod summary;
pub mod trainer;
pub mod users;
pub mod view;

pub use self::error::DemoError;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use self::observe::{Observer, Outcome, Snapshot, Tracker, changes, qualities};
use self::resources::{DEPLOYMENT, FIELD_MANAGER, FIRST_VERSION, MIN_SAMPLES, NAMESPACE, POLICY, QUALITY_BELOW};
use self::scenario::{Pace, World};
use self::users::{CollectorClient, Routes, Target, TrafficStats};
use self::view::{Frame, View};
use crate::api::model_deployment::HistoryType;
use crate::api::{FeedbackPolicy, ModelDeployment};
use crate::collector::{Collector, CollectorConfig};
use crate::demo::scenario::Scenario;
use crate::operator::model_deployment::feedback_analysis::CollectorAnalysis;
use crate::operator::{Operator, OperatorConfig};
use crate::sim::{Sim, SimConfig, WorkloadConfig};

pub use self::summary::Summary;
pub use self::view::ViewMode;

fn kube_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> DemoError {
    let action = action.into();
    move |source| DemoError::Kube { action, source }
}

/// What to run and how to show it.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The story.
    pub scenario: Scenario,
    /// Turns of the loop to watch.
    pub cycles: u32,
    /// How much faster than real time the simulated world runs.
    pub speed: f64,
    /// Where to write a kubeconfig of the simulated cluster.
    pub kubeconfig_out: Option<PathBuf>,
    /// How to show progress.
    pub view: ViewMode,
    /// Show progress on stderr (stdout stays for the JSON summary).
    pub view_to_stderr: bool,
    /// Give up when nothing happens for this long.
    pub stall_timeout: Duration,
}

impl DemoOptions {
    /// One cycle of `scenario` at speed 1, shown nowhere.
    pub fn new(scenario: Scenario) -> Self {
        Self {
            scenario,
            cycles: 1,
            speed: 1.0,
            kubeconfig_out: None,
            view: ViewMode::Quiet,
            view_to_stderr: false,
            stall_timeout: Duration::from_secs(120),
        }
    }

    fn validate(&self) -> Result<(), DemoError> {
        if self.cycles == 0 || self.cycles > 20 {
            return Err(DemoError::Options(format!("--cycles must be between 1 and 20, not {}", self.cycles)));
        }
        if !self.speed.is_finite() || self.speed < 0.1 || self.speed > 100.0 {
            return Err(DemoError::Options(format!("--speed must be between 0.1 and 100, not {}", self.speed)));
        }
        Ok(())
    }
}

/// The name of a scenario as the CLI spells it.
pub fn scenario_name(s: Scenario) -> &'static str {
    match s {
        Scenario::Improve => "improve",
        Scenario::Regression => "regression",
        Scenario::Rejected => "rejected",
    }
}

/// A scratch directory removed on drop (the collector's data, the token file).
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> Result<Self, DemoError> {
        let path = std::env::temp_dir().join(format!("flywheel-demo-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path).map_err(|source| DemoError::Io { path: path.clone(), source })?;
        Ok(Self(path))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _removed = std::fs::remove_dir_all(&self.0);
    }
}

/// Everything the demo runs, started in order and stopped in reverse.
struct Stack {
    sim: Sim,
    collector: Option<Collector>,
    operator: Option<Operator>,
    client: Client,
    base: String,
    token: String,
}

impl Stack {
    async fn start(options: &DemoOptions, pace: Pace, world: Arc<Mutex<World>>, dir: &Path) -> Result<Self, DemoError> {
        let sim = Sim::start(SimConfig {
            workloads: WorkloadConfig { pod_ready_delay: pace.pod_ready(), script: Some(trainer::script(world, pace)) },
            ..SimConfig::default()
        })
        .await?;
        let client = match sim.client().await {
            Ok(c) => c,
            Err(e) => {
                sim.shutdown().await;
                return Err(e.into());
            }
        };
        let token = uuid::Uuid::new_v4().simple().to_string();
        let mut stack = Self { sim, collector: None, operator: None, client, base: String::new(), token };
        if let Err(e) = stack.start_rest(options, dir).await {
            stack.shutdown().await;
            return Err(e);
        }
        Ok(stack)
    }

    async fn start_rest(&mut self, options: &DemoOptions, dir: &Path) -> Result<(), DemoError> {
        if let Some(path) = &options.kubeconfig_out {
            self.sim.write_kubeconfig(path)?;
        }
        install_crds(&self.client).await?;
        let tokens = dir.join("tokens");
        std::fs::write(&tokens, format!("{} write\n", self.token))
            .map_err(|source| DemoError::Io { path: tokens.clone(), source })?;
        let mut config = CollectorConfig::new(std::net::SocketAddr::from(([127, 0, 0, 1], 0)), dir.join("collector"));
        config.token_file = Some(tokens);
        let collector = Collector::start(config).await?;
        self.base = format!("http://{}", collector.addr());
        self.collector = Some(collector);
        // The Secret the injected agents read their collector token from, as an installation
        // has it.
        let secret: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "flywheel-collector-token", "namespace": NAMESPACE},
            "stringData": {"token": self.token},
        }))?;
        apply(&Api::<Secret>::namespaced(self.client.clone(), NAMESPACE), &secret).await?;
        let config = OperatorConfig {
            collector_url: Some(self.base.clone()),
            collector_token: Some(self.token.clone()),
            analysis: Arc::new(CollectorAnalysis::new(&self.base, Some(self.token.clone()))),
            ..OperatorConfig::local().scoped_to(NAMESPACE)
        };
        self.operator = Some(crate::operator::start(self.client.clone(), config).await?);
        Ok(())
    }

    async fn shutdown(self) {
        if let Some(o) = self.operator {
            o.shutdown().await;
        }
        if let Some(c) = self.collector {
            c.shutdown().await;
        }
        self.sim.shutdown().await;
    }
}

async fn apply<K>(api: &Api<K>, obj: &K) -> Result<K, DemoError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let name = obj.name_any();
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(obj))
        .await
        .map_err(kube_err(format!("applying {name}")))
}

/// Server-side apply the CRDs and wait until they are served.
async fn install_crds(client: &Client) -> Result<(), DemoError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crds = crate::api::crds();
    for crd in &crds {
        apply(&api, crd).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for crd in &crds {
        let name = crd.name_any();
        loop {
            let live = api.get(&name).await.map_err(kube_err(format!("reading CRD {name}")))?;
            let established = live
                .status
                .and_then(|s| s.conditions)
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Established" && c.status == "True"));
            if established {
                break;
            }
            if Instant::now() >= deadline {
                return Err(DemoError::Stalled {
                    waiting_for: format!("CRD {name} to be established"),
                    seconds: 30,
                    state: String::new(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// Run the demo to the end of its cycles and return what happened.
pub async fn run(options: DemoOptions) -> Result<Summary, DemoError> {
    options.validate()?;
    let started = Instant::now();
    let start_time = k8s_openapi::jiff::Timestamp::now();
    let pace = Pace::new(options.speed);
    let world = Arc::new(Mutex::new(World::new(options.scenario, FIRST_VERSION)));
    let dir = ScratchDir::new()?;
    let out: Box<dyn std::io::Write + Send> =
        if options.view_to_stderr { Box::new(std::io::stderr()) } else { Box::new(std::io::stdout()) };
    let mut view = View::new(options.view, out);
    let stack = Stack::start(&options, pace, world.clone(), &dir.0).await?;
    let result = drive(&options, &stack, pace, &world, &mut view, started, start_time).await;
    stack.shutdown().await;
    drop(dir);
    let summary = result?;
    view.text(&summary::render(&summary));
    Ok(summary)
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

async fn drive(
    options: &DemoOptions,
    stack: &Stack,
    pace: Pace,
    world: &Arc<Mutex<World>>,
    view: &mut View,
    started: Instant,
    start_time: k8s_openapi::jiff::Timestamp,
) -> Result<Summary, DemoError> {
    let collector = CollectorClient {
        base: stack.base.clone(),
        token: stack.token.clone(),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| DemoError::Collector(format!("building an HTTP client: {e}")))?,
    };
    let mut tracker = Tracker::default();
    tracker.note(
        started.elapsed(),
        "setup",
        format!(
            "simulated cluster, collector and operator up{}",
            options
                .kubeconfig_out
                .as_ref()
                .map(|p| format!("; kubectl --kubeconfig {} get md,fbp,rtj", p.display()))
                .unwrap_or_default()
        ),
    );
    let mds: Api<ModelDeployment> = Api::namespaced(stack.client.clone(), NAMESPACE);
    let policies: Api<FeedbackPolicy> = Api::namespaced(stack.client.clone(), NAMESPACE);
    let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(stack.client.clone(), NAMESPACE);
    apply(&claims, &resources::models_claim()?).await?;
    apply(&mds, &resources::model_deployment()?).await?;
    apply(&policies, &resources::feedback_policy()?).await?;
    tracker.note(
        started.elapsed(),
        "apply",
        format!(
            "applied ModelDeployment {DEPLOYMENT} ({FIRST_VERSION}, {} replicas) and FeedbackPolicy {POLICY} (quality below {:.0}%)",
            resources::REPLICAS,
            QUALITY_BELOW * 100.0
        ),
    );
    tracker.begin(true, Some(FIRST_VERSION.to_string()));

    let observer = Observer::new(
        stack.client.clone(),
        crate::collector::client::CollectorClient::new(&stack.base, Some(stack.token.clone())),
        NAMESPACE,
        DEPLOYMENT,
        POLICY,
        resources::WINDOW_SECONDS,
    );
    let (routes_tx, routes_rx) = tokio::sync::watch::channel(Routes::new());
    let traffic_stats = Arc::new(Mutex::new(TrafficStats::default()));
    let stop = CancellationToken::new();
    let traffic = tokio::spawn(users::run(
        collector,
        Target { namespace: NAMESPACE.into(), deployment: DEPLOYMENT.into() },
        world.clone(),
        routes_rx,
        pace.rate(),
        traffic_stats.clone(),
        stop.clone(),
    ));

    let mut prev = Snapshot::default();
    let mut drift_at: Option<Instant> = None;
    let mut first_drift: Option<k8s_openapi::jiff::Timestamp> = None;
    let mut last_progress = Instant::now();
    let mut meter = RateMeter::default();
    let mut poll_error: Option<String>;
    let mut ticker = tokio::time::interval(Duration::from_millis(200));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let outcome = loop {
        ticker.tick().await;
        match observer.snapshot().await {
            Ok(cur) => {
                poll_error = None;
                routes_tx.send_replace(cur.routes.clone());
                let at = started.elapsed();
                // The collector's statistics first: the policy fires on them, so a crossing and
                // the trigger seen in one look happened in that order.
                if tracker.wants_signal()
                    && let Some(stable) = cur.stable()
                    && let Some(q) = cur.window.get(stable)
                    && q.judged >= MIN_SAMPLES
                    && q.positive_rate.is_some_and(|r| r < QUALITY_BELOW)
                {
                    tracker.signal(at, stable, q, QUALITY_BELOW);
                    last_progress = Instant::now();
                }
                for change in changes(&prev, &cur) {
                    last_progress = Instant::now();
                    if matches!(change, observe::Change::Serving { .. }) && first_drift.is_none() {
                        drift_at = Some(Instant::now() + pace.warmup());
                    }
                    let was_open = tracker.open().is_some();
                    tracker.record(at, change);
                    if was_open && tracker.open().is_none() && tracker.finished() < options.cycles as usize {
                        // A promoted version is healthy: the loop turns again only when the world
                        // drifts. Otherwise the stable version is still poor and the policy fires
                        // again once its cooldown allows.
                        let promoted = tracker.cycles.last().and_then(|c| c.outcome) == Some(Outcome::Promoted);
                        tracker.begin(promoted, cur.stable().map(str::to_string));
                        if promoted {
                            drift_at = Some(Instant::now() + pace.next_drift_after());
                        }
                    }
                }
                prev = cur;
            }
            Err(e) => poll_error = Some(e.to_string()),
        }
        if let Some(at) = drift_at
            && Instant::now() >= at
        {
            let drift = world.lock().unwrap_or_else(std::sync::PoisonError::into_inner).drift();
            tracker.drift(started.elapsed(), &drift.changes);
            first_drift.get_or_insert_with(k8s_openapi::jiff::Timestamp::now);
            drift_at = None;
            last_progress = Instant::now();
        }
        let traffic_now = traffic_stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let rates = meter.sample(traffic_now.requests(), traffic_now.feedback());
        let note = poll_error.clone().or_else(|| {
            traffic_now
                .last_error
                .as_ref()
                .map(|e| format!("{} posts to the collector failed; last: {e}", traffic_now.failed_posts))
        });
        view.show(&Frame {
            elapsed: started.elapsed(),
            scenario: scenario_name(options.scenario),
            cycles: options.cycles,
            speed: pace.speed,
            snapshot: &prev,
            traffic: &traffic_now,
            rates,
            tracker: &tracker,
            note,
        });
        if tracker.finished() >= options.cycles as usize {
            break Ok(());
        }
        let quiet = last_progress.elapsed();
        if quiet > options.stall_timeout {
            break Err(DemoError::Stalled {
                waiting_for: waiting_for(&tracker, &prev),
                seconds: quiet.as_secs(),
                state: match &poll_error {
                    Some(e) => format!("the last poll failed: {e}"),
                    None => diagnose(&prev),
                },
            });
        }
    };
    let wall = started.elapsed();
    stop.cancel();
    let _stopped = traffic.await;
    outcome?;

    let from = start_time.to_string();
    let whole = qualities(&observer.stats(Some(&from), None).await?);
    let initial = match first_drift {
        Some(to) => qualities(&observer.stats(Some(&from), Some(&to.to_string())).await?).remove(FIRST_VERSION),
        None => None,
    };
    let traffic_now = traffic_stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let world = world.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let roles = version_roles(&tracker, &prev, &world);
    Ok(summary::build(summary::Inputs {
        scenario: scenario_name(options.scenario),
        cycles_requested: options.cycles,
        cycles: &tracker.cycles,
        timeline: &tracker.timeline,
        version_roles: roles,
        stable_version: prev.stable().map(str::to_string),
        collector: &whole,
        initial,
        truth: world.versions(),
        traffic: summary::TrafficSummary {
            requests: traffic_now.requests(),
            feedback: traffic_now.feedback(),
            failed_posts: traffic_now.failed_posts,
        },
        speed: pace.speed,
        wall,
    }))
}

/// Logs for the demo: quiet unless `RUST_LOG` asks (the live view is the output), to stderr.
pub fn init_logging(format: crate::telemetry::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = match format {
        crate::telemetry::LogFormat::Json => builder.json().flatten_event(true).try_init(),
        crate::telemetry::LogFormat::Text => builder.try_init(),
    };
    drop(result);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_checked() {
        let mut o = DemoOptions::new(Scenario::Improve);
        assert!(o.validate().is_ok());
        o.cycles = 0;
        assert!(matches!(o.validate(), Err(DemoError::Options(m)) if m.contains("--cycles")));
        o.cycles = 1;
        o.speed = f64::INFINITY;
        assert!(matches!(o.validate(), Err(DemoError::Options(m)) if m.contains("--speed")));
    }

    #[test]
    fn rates_come_from_the_last_seconds() {
        let mut m = RateMeter::default();
        assert_eq!(m.sample(0, 0), (0.0, 0.0));
        std::thread::sleep(Duration::from_millis(50));
        let (r, f) = m.sample(100, 50);
        assert!(r > 100.0 && f > 50.0 && r < 2100.0, "{r} {f}");
    }
}
