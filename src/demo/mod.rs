//! `flywheel demo`: the whole loop in one process. A simulated cluster, the real operator
//! (unchanged controllers), the collector on SQLite in a scratch directory, simulated inference
//! pods and users whose feedback follows each version's hidden quality, and a simulated trainer
//! whose Job produces a new version. The demo applies a ModelDeployment and a FeedbackPolicy as
//! a user would, makes the world drift, and watches the loop turn: the policy fires on the
//! collector's statistics, a RetrainJob runs its trainer Job, the new version is canaried and
//! judged on live feedback, and promoted or rolled back. The summary is read from what the
//! cluster and the collector did.

mod drive;
pub mod error;
pub mod observe;
pub mod resources;
pub mod scenario;
pub mod summary;
pub mod trainer;
pub mod users;
pub mod view;

pub use self::error::DemoError;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use self::resources::{FIELD_MANAGER, FIRST_VERSION, NAMESPACE};
use self::scenario::{Pace, World};
use self::view::View;
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
    let result = drive::drive(&options, &stack, pace, &world, &mut view, started, start_time).await;
    stack.shutdown().await;
    drop(dir);
    let summary = result?;
    view.text(&summary::render(&summary));
    Ok(summary)
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
}
