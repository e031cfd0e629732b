//! In-process inference pods for `Adapter` rollout mode on the simulated cluster: for each pod
//! of a ModelDeployment, the real agent in front of the simulated vLLM runtime
//! ([`super::model_runtime`]), started the first time the operator asks the pod for its adapters
//! (this type is the operator's `AdapterSource`, which in a cluster asks `http://<pod IP>:9091`).
//! The scripted kubelet runs no containers and does not refresh a ConfigMap volume, so
//! [`InferencePods::project`] writes the operator's `<name>-adapters` ConfigMap into each agent's
//! file as the kubelet's projection would (every 200 ms here; a kubelet takes up to its sync
//! period). Used by `tests/adapter_canary.rs` and `flywheel demo --adapters`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::model_runtime::{LoadBehaviour, SimRuntime};
use crate::agent::adapters::{AdapterSettings, AdapterStore, Report, Vllm, WANTED_KEY};
use crate::agent::{Agent, AgentConfig, INTERACTION_HEADER, VERSION_HEADER};
use crate::autoscale::scrape::PodTarget;
use crate::operator::model_deployment::adapters::{AdapterSource, HttpAdapterSource};

/// One inference pod's processes.
pub struct PodRig {
    /// The simulated runtime.
    pub runtime: SimRuntime,
    /// The real agent before it.
    pub agent: Agent,
    /// The agent's wanted-adapters file (the mounted ConfigMap's key).
    pub wanted_file: PathBuf,
}

/// What the pods are for.
#[derive(Clone)]
pub struct PodsConfig {
    /// The ModelDeployment's namespace.
    pub namespace: String,
    /// The ModelDeployment.
    pub deployment: String,
    /// The base model's name in the runtime.
    pub base_model: String,
    /// The base model's version.
    pub base_version: String,
    /// The collector the agents capture to, and its token.
    pub collector: Option<(String, String)>,
    /// Where the pods keep their files.
    pub dir: PathBuf,
    /// Where agents fetch adapters from (`fetch-model`'s fetcher when none).
    pub store: Option<Arc<dyn AdapterStore>>,
}

/// The inference pods, by pod name.
#[derive(Clone)]
pub struct InferencePods {
    config: PodsConfig,
    rigs: Arc<Mutex<BTreeMap<String, Arc<PodRig>>>>,
    behaviours: Arc<Mutex<Vec<LoadBehaviour>>>,
    http: Arc<HttpAdapterSource>,
}

/// One answer: the subject who asked, the version that answered, the interaction id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// `x-flywheel-subject`.
    pub subject: String,
    /// `x-flywheel-model-version`.
    pub version: String,
    /// `x-flywheel-interaction-id`.
    pub interaction: String,
}

impl InferencePods {
    /// No pod yet; `behaviours` are how the runtimes of the first pods load (then they load).
    pub fn new(config: PodsConfig, behaviours: Vec<LoadBehaviour>) -> Self {
        Self {
            config,
            rigs: Arc::default(),
            behaviours: Arc::new(Mutex::new(behaviours)),
            http: Arc::new(HttpAdapterSource::default()),
        }
    }

    /// The pod's processes, started on first use.
    pub async fn rig(&self, pod: &str) -> Result<Arc<PodRig>, String> {
        let mut rigs = self.rigs.lock().await;
        if let Some(r) = rigs.get(pod) {
            return Ok(r.clone());
        }
        let behaviour = {
            let mut b = self.behaviours.lock().await;
            if b.is_empty() { LoadBehaviour::Load } else { b.remove(0) }
        };
        let c = &self.config;
        let runtime = SimRuntime::start(&c.base_model).await.map_err(|e| e.to_string())?;
        runtime.set_load_behaviour(behaviour);
        let pod_dir = c.dir.join(pod);
        std::fs::create_dir_all(&pod_dir).map_err(|e| format!("{}: {e}", pod_dir.display()))?;
        let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let upstream = runtime.url().parse().map_err(|e: axum::http::uri::InvalidUri| e.to_string())?;
        let mut config = AgentConfig::new(any, upstream, &c.base_version);
        config.admin_listen = any;
        config.namespace = c.namespace.clone();
        config.deployment = c.deployment.clone();
        if let Some((url, token)) = &c.collector {
            let token_file = pod_dir.join("token");
            std::fs::write(&token_file, token).map_err(|e| format!("{}: {e}", token_file.display()))?;
            config.collector_url = Some(url.clone());
            config.collector_token_file = Some(token_file);
        }
        config.flush_interval = Duration::from_millis(100);
        config.queue_capacity = 20_000;
        config.batch_size = 500;
        let wanted_file = pod_dir.join(WANTED_KEY);
        let mut settings =
            AdapterSettings::new(wanted_file.clone(), pod_dir.join("adapters"), Arc::new(Vllm::new(&runtime.url())));
        settings.resync = Duration::from_millis(200);
        settings.load_timeout = Duration::from_secs(2);
        settings.retry_after = Duration::from_secs(1);
        settings.drain_timeout = Duration::from_secs(5);
        settings.store = c.store.clone();
        config.adapters = Some(settings);
        let agent = Agent::start(config).await.map_err(|e| e.to_string())?;
        let rig = Arc::new(PodRig { runtime, agent, wanted_file });
        rigs.insert(pod.to_string(), rig.clone());
        Ok(rig)
    }

    /// Every pod started so far.
    pub async fn all(&self) -> Vec<(String, Arc<PodRig>)> {
        self.rigs.lock().await.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// The kubelet's part: the ConfigMap's `adapters.json` written into every pod's file,
    /// written aside and renamed (a kubelet swaps a ConfigMap volume's files atomically).
    pub fn project(&self, cms: Api<ConfigMap>) -> tokio::task::JoinHandle<()> {
        let pods = self.clone();
        let name = format!("{}-adapters", self.config.deployment);
        tokio::spawn(async move {
            loop {
                if let Ok(Some(cm)) = cms.get_opt(&name).await
                    && let Some(text) = cm.data.as_ref().and_then(|d| d.get(WANTED_KEY))
                {
                    for (_, rig) in pods.all().await {
                        write_if_changed(&rig.wanted_file, text);
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    }

    /// `n` chat requests spread over the pods' agents in turn (as a Service spreads them),
    /// request `i` from user `(from + i) % subjects`, `concurrency` at a time. Requests that fail
    /// are left out (and logged).
    pub async fn ask(
        &self,
        http: &reqwest::Client,
        n: usize,
        (from, subjects): (usize, usize),
        concurrency: usize,
    ) -> Vec<Answer> {
        let rigs = self.all().await;
        if rigs.is_empty() {
            return Vec::new();
        }
        let base = self.config.base_model.clone();
        let asks = (0..n).map(|i| {
            let url = format!("http://{}/v1/chat/completions", rigs[i % rigs.len()].1.agent.addr());
            let subject = format!("user-{}", (from + i) % subjects.max(1));
            let (http, base) = (http.clone(), base.clone());
            async move {
                let body = json!({"model": base, "messages": [{"role": "user", "content": format!("question {i}")}]});
                let r = match http.post(&url).header("x-flywheel-subject", &subject).json(&body).send().await {
                    Ok(r) if r.status().is_success() => r,
                    Ok(r) => {
                        tracing::warn!(status = %r.status(), "a request through an agent failed");
                        return None;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "a request through an agent failed");
                        return None;
                    }
                };
                let header = |n: &str| r.headers().get(n).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
                Some(Answer { subject, version: header(VERSION_HEADER), interaction: header(INTERACTION_HEADER) })
            }
        });
        futures::stream::iter(asks).buffer_unordered(concurrency.max(1)).filter_map(|a| async { a }).collect().await
    }

    /// Stops every runtime.
    pub async fn stop(&self) {
        for (_, rig) in self.all().await {
            rig.runtime.stop();
        }
    }
}

fn write_if_changed(file: &Path, text: &str) {
    if std::fs::read_to_string(file).unwrap_or_default() == text {
        return;
    }
    let aside = file.with_extension("tmp");
    if std::fs::write(&aside, text).is_ok() {
        let _swapped = std::fs::rename(&aside, file);
    }
}

impl AdapterSource for InferencePods {
    fn report<'a>(&'a self, pod: &'a PodTarget) -> BoxFuture<'a, Result<Report, String>> {
        Box::pin(async move {
            let rig = self.rig(&pod.name).await?;
            self.http.report_at(&format!("http://{}", rig.agent.admin_addr())).await
        })
    }
}

/// The share of answers from `version` in percent, and whether every subject saw one version.
pub fn split(answers: &[Answer], version: &str) -> (f64, bool) {
    if answers.is_empty() {
        return (0.0, true);
    }
    let on = answers.iter().filter(|a| a.version == version).count();
    let mut seen: HashMap<&str, std::collections::BTreeSet<&str>> = HashMap::new();
    for a in answers {
        seen.entry(a.subject.as_str()).or_default().insert(a.version.as_str());
    }
    (on as f64 * 100.0 / answers.len() as f64, seen.values().all(|v| v.len() == 1))
}

/// Users' thumbs on `answers`: up with `rate[version]` percent (deterministic by position),
/// naming the interaction and the version its answer was stamped with.
pub fn thumbs(answers: &[Answer], rate: &HashMap<&str, u32>, namespace: &str, deployment: &str) -> Vec<Value> {
    answers
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let up = (i as u64 * 37) % 100 < u64::from(rate.get(a.version.as_str()).copied().unwrap_or(50));
            json!({"id": format!("f-{}", a.interaction), "interactionId": a.interaction, "kind": "thumbs", "value": up,
                   "namespace": namespace, "deployment": deployment, "version": a.version})
        })
        .collect()
}
