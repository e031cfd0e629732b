//! Everything the demo runs, started in order and stopped in reverse: the simulated cluster (its
//! kubelet running the simulated trainer), the CRDs, the collector on SQLite in a scratch
//! directory, the collector's token Secret, and the operator scoped to the demo's namespace.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::error::DemoError;
use super::options::DemoOptions;
use super::resources::{FIELD_MANAGER, MODELS_CLAIM, NAMESPACE};
use super::scenario::{Pace, World};
use super::{real, trainer};
use crate::collector::{Collector, CollectorConfig};
use crate::operator::model_deployment::feedback_analysis::CollectorAnalysis;
use crate::operator::{Operator, OperatorConfig};
use crate::sim::inference::{InferencePods, PodsConfig};
use crate::sim::{Sim, SimConfig, WorkloadConfig};

fn kube_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> DemoError {
    let action = action.into();
    move |source| DemoError::Kube { action, source }
}

/// A scratch directory removed on drop (the collector's data, the token file).
pub(super) struct ScratchDir(pub(super) PathBuf);

impl ScratchDir {
    pub(super) fn new() -> Result<Self, DemoError> {
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
pub(super) struct Stack {
    sim: Sim,
    collector: Option<Collector>,
    operator: Option<Operator>,
    pub(super) client: Client,
    /// The collector's URL.
    pub(super) base: String,
    /// The collector's write token.
    pub(super) token: String,
    /// Whether pods run as real processes (`--real`).
    pub(super) real: bool,
    /// With `--adapters`: the inference pods' in-process agents and runtimes, and the task
    /// projecting the adapters ConfigMap into them.
    pub(super) pods: Option<(InferencePods, tokio::task::JoinHandle<()>)>,
}

impl Stack {
    pub(super) async fn start(
        options: &DemoOptions,
        pace: Pace,
        world: Arc<Mutex<World>>,
        dir: &Path,
    ) -> Result<Self, DemoError> {
        let workloads = match &options.real {
            // The RetrainJobs' annotations script the trainer pods.
            None if options.adapters => {
                WorkloadConfig { pod_ready_delay: pace.pod_ready(), ..WorkloadConfig::default() }
            }
            None => WorkloadConfig {
                pod_ready_delay: pace.pod_ready(),
                script: Some(trainer::script(world, pace)),
                processes: None,
            },
            Some(trainer_dir) => {
                let env = real::TrainerEnv::find(trainer_dir)?;
                let mode = env.process_mode(&dir.join("kubelet"))?;
                env.write_base_model(&mode.claim_dir(NAMESPACE, MODELS_CLAIM).join(real::BASE_PATH))?;
                WorkloadConfig { processes: Some(Arc::new(mode)), ..WorkloadConfig::default() }
            }
        };
        // Pods in their own network reach this machine's collector at the bridge's address.
        let collector_ip =
            workloads.processes.as_ref().and_then(|m| m.host_ip()).unwrap_or(std::net::Ipv4Addr::LOCALHOST);
        let real = options.real.is_some();
        let sim = Sim::start(SimConfig { workloads, ..SimConfig::default() }).await?;
        let client = match sim.client().await {
            Ok(c) => c,
            Err(e) => {
                sim.shutdown().await;
                return Err(e.into());
            }
        };
        let token = uuid::Uuid::new_v4().simple().to_string();
        let mut stack =
            Self { sim, collector: None, operator: None, client, base: String::new(), token, real, pods: None };
        if let Err(e) = stack.start_rest(options, dir, collector_ip).await {
            stack.shutdown().await;
            return Err(e);
        }
        Ok(stack)
    }

    async fn start_rest(
        &mut self,
        options: &DemoOptions,
        dir: &Path,
        collector_ip: std::net::Ipv4Addr,
    ) -> Result<(), DemoError> {
        if let Some(path) = &options.kubeconfig_out {
            self.sim.write_kubeconfig(path)?;
        }
        install_crds(&self.client).await?;
        let tokens = dir.join("tokens");
        std::fs::write(&tokens, format!("{} write\n", self.token))
            .map_err(|source| DemoError::Io { path: tokens.clone(), source })?;
        let mut config = CollectorConfig::new(std::net::SocketAddr::from((collector_ip, 0)), dir.join("collector"));
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
        let mut config = OperatorConfig {
            collector_url: Some(self.base.clone()),
            collector_token: Some(self.token.clone()),
            analysis: Arc::new(CollectorAnalysis::new(&self.base, Some(self.token.clone()))),
            ..OperatorConfig::local().scoped_to(NAMESPACE)
        };
        if options.adapters {
            let pods = InferencePods::new(
                PodsConfig {
                    namespace: NAMESPACE.into(),
                    deployment: super::resources::ADAPTER_DEPLOYMENT.into(),
                    base_model: super::resources::ADAPTER_BASE_MODEL.into(),
                    base_version: super::resources::ADAPTER_BASE_VERSION.into(),
                    collector: Some((self.base.clone(), self.token.clone())),
                    dir: dir.join("pods"),
                    store: Some(Arc::new(super::resources::DemoStore)),
                },
                Vec::new(),
            );
            config.adapter_source = Arc::new(pods.clone());
            let projector = pods.project(Api::namespaced(self.client.clone(), NAMESPACE));
            self.pods = Some((pods, projector));
        }
        self.operator = Some(crate::operator::start(self.client.clone(), config).await?);
        Ok(())
    }

    pub(super) async fn shutdown(self) {
        if let Some(o) = self.operator {
            o.shutdown().await;
        }
        if let Some((pods, projector)) = self.pods {
            projector.abort();
            pods.stop().await;
        }
        if let Some(c) = self.collector {
            c.shutdown().await;
        }
        self.sim.shutdown().await;
    }
}

pub(super) async fn apply<K>(api: &Api<K>, obj: &K) -> Result<K, DemoError>
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
