//! Adapter canaries inside the stable pods, end to end on the simulated cluster: the real
//! operator, the real collector, and for every inference pod the real agent in front of the
//! simulated vLLM runtime (`flywheel::sim::model_runtime`, vLLM's adapter API). A better adapter
//! is promoted and a worse one rolled back with the pods' uids unchanged; the split measured at
//! the agents follows the step's weight and keeps each subject on one version; a runtime that
//! refuses or hangs on a load never breaks serving and is named in status.
//!
//! The pods of the simulated cluster run no containers: each pod's agent and runtime run in
//! this process, started the first time the operator asks the pod for its adapters (the
//! operator's `AdapterSource`, which in production asks `http://<pod IP>:9091`). The ConfigMap
//! the operator writes is projected into each agent's file as the kubelet projects a ConfigMap
//! volume (here every 200 ms; a real kubelet takes up to its sync period, about a minute).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::{Cluster, TestNamespace, eventually};
use flywheel::agent::adapters::{AdapterSettings, Report, Vllm, WANTED_KEY};
use flywheel::agent::{Agent, AgentConfig, INTERACTION_HEADER, VERSION_HEADER};
use flywheel::api::ModelDeployment;
use flywheel::api::model_deployment::HistoryType;
use flywheel::autoscale::scrape::PodTarget;
use flywheel::collector::{Collector, CollectorConfig};
use flywheel::operator::model_deployment::adapters::{AdapterSource, HttpAdapterSource};
use flywheel::operator::model_deployment::feedback_analysis::CollectorAnalysis;
use flywheel::operator::{self, Operator, OperatorConfig};
use flywheel::sim::model_runtime::{LoadBehaviour, SimRuntime};
use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::sync::Mutex;

const TOKEN: &str = "adapter-test-token-0123456789abcdef";
const MD: &str = "chat";
const BASE: &str = "qwen-base";

/// One inference pod's processes.
struct Rig {
    runtime: SimRuntime,
    agent: Agent,
    wanted_file: PathBuf,
}

/// The inference pods' agents and runtimes, by pod name.
#[derive(Clone)]
struct Pods {
    rigs: Arc<Mutex<BTreeMap<String, Arc<Rig>>>>,
    /// How the runtime of each next pod loads (the default once empty).
    behaviours: Arc<Mutex<Vec<LoadBehaviour>>>,
    collector: String,
    namespace: String,
    dir: PathBuf,
    http: Arc<HttpAdapterSource>,
}

impl Pods {
    async fn rig(&self, pod: &str) -> Result<Arc<Rig>, String> {
        let mut rigs = self.rigs.lock().await;
        if let Some(r) = rigs.get(pod) {
            return Ok(r.clone());
        }
        let behaviour = {
            let mut b = self.behaviours.lock().await;
            if b.is_empty() { LoadBehaviour::Load } else { b.remove(0) }
        };
        let runtime = SimRuntime::start(BASE).await.map_err(|e| e.to_string())?;
        runtime.set_load_behaviour(behaviour);
        let pod_dir = self.dir.join(pod);
        std::fs::create_dir_all(&pod_dir).map_err(|e| e.to_string())?;
        std::fs::write(pod_dir.join("token"), TOKEN).map_err(|e| e.to_string())?;
        let any = "127.0.0.1:0".parse().map_err(|e: std::net::AddrParseError| e.to_string())?;
        let upstream = runtime.url().parse().map_err(|e: axum::http::uri::InvalidUri| e.to_string())?;
        let mut config = AgentConfig::new(any, upstream, "v1");
        config.admin_listen = any;
        config.namespace = self.namespace.clone();
        config.deployment = MD.into();
        config.collector_url = Some(self.collector.clone());
        config.collector_token_file = Some(pod_dir.join("token"));
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
        config.adapters = Some(settings);
        let agent = Agent::start(config).await.map_err(|e| e.to_string())?;
        let rig = Arc::new(Rig { runtime, agent, wanted_file });
        rigs.insert(pod.to_string(), rig.clone());
        Ok(rig)
    }

    async fn all(&self) -> Vec<(String, Arc<Rig>)> {
        self.rigs.lock().await.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

impl AdapterSource for Pods {
    fn report<'a>(&'a self, pod: &'a PodTarget) -> BoxFuture<'a, Result<Report, String>> {
        Box::pin(async move {
            let rig = self.rig(&pod.name).await?;
            self.http.report_at(&format!("http://{}", rig.agent.admin_addr())).await
        })
    }
}

/// The kubelet's part: the ConfigMap's `adapters.json` written into every pod's file (written
/// aside and renamed, as the kubelet swaps a ConfigMap volume's files).
fn project(cms: Api<ConfigMap>, pods: Pods) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if let Ok(Some(cm)) = cms.get_opt(&format!("{MD}-adapters")).await
                && let Some(text) = cm.data.as_ref().and_then(|d| d.get(WANTED_KEY))
            {
                for (_, rig) in pods.all().await {
                    let current = std::fs::read_to_string(&rig.wanted_file).unwrap_or_default();
                    if &current != text {
                        let aside = rig.wanted_file.with_extension("tmp");
                        if std::fs::write(&aside, text).is_ok() {
                            let _swapped = std::fs::rename(&aside, &rig.wanted_file);
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

struct Setup {
    cluster: Cluster,
    ns: TestNamespace,
    collector: Collector,
    base: String,
    pods: Pods,
    op: Option<Operator>,
    projector: tokio::task::JoinHandle<()>,
    http: reqwest::Client,
    dir: tempfile::TempDir,
}

impl Setup {
    async fn start(prefix: &str, behaviours: Vec<LoadBehaviour>) -> Option<Self> {
        let cluster = Cluster::start().await;
        if cluster.sim_only("inference pods run as in-process agents and runtimes").is_none() {
            cluster.stop().await;
            return None;
        }
        cluster.install_crds().await;
        let ns = cluster.namespace(prefix).await;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("tokens"), format!("{TOKEN} write\n")).unwrap_or_else(|e| panic!("{e}"));
        let mut cc =
            CollectorConfig::new("127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")), dir.path().join("data"));
        cc.token_file = Some(dir.path().join("tokens"));
        let collector = Collector::start(cc).await.unwrap_or_else(|e| panic!("{e}"));
        let base = format!("http://{}", collector.addr());
        let pods = Pods {
            rigs: Arc::default(),
            behaviours: Arc::new(Mutex::new(behaviours)),
            collector: base.clone(),
            namespace: ns.name.clone(),
            dir: dir.path().join("pods"),
            http: Arc::new(HttpAdapterSource::default()),
        };
        let config = OperatorConfig {
            collector_url: Some(base.clone()),
            collector_token: Some(TOKEN.to_string()),
            analysis: Arc::new(CollectorAnalysis::new(&base, Some(TOKEN.to_string()))),
            adapter_source: Arc::new(pods.clone()),
            ..OperatorConfig::local().scoped_to(&ns.name)
        };
        let op = operator::start(cluster.client.clone(), config).await.unwrap_or_else(|e| panic!("{e}"));
        let projector = project(Api::namespaced(cluster.client.clone(), &ns.name), pods.clone());
        Some(Self { cluster, ns, collector, base, pods, op: Some(op), projector, http: reqwest::Client::new(), dir })
    }

    fn mds(&self) -> Api<ModelDeployment> {
        Api::namespaced(self.cluster.client.clone(), &self.ns.name)
    }

    /// Writes an adapter directory (as the reference trainer does) and returns its URI.
    fn adapter(&self, version: &str) -> String {
        let path = self.dir.path().join("adapters").join(version);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(path.join("adapter_config.json"), r#"{"peft_type":"LORA","r":16}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(path.join("adapter_model.safetensors"), b"weights").unwrap_or_else(|e| panic!("{e}"));
        format!("file://{}", path.display())
    }

    /// The hand-over a RetrainJob makes: the candidate in the ModelDeployment's status.
    async fn hand_over(&self, version: &str, uri: &str) {
        let patch = json!({"status": {"candidate": {"version": version, "uri": uri, "adapter": true}}});
        self.mds()
            .patch_status(MD, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap_or_else(|e| panic!("handing over {version}: {e}"));
    }

    async fn pod_uids(&self) -> BTreeMap<String, String> {
        let pods: Api<Pod> = Api::namespaced(self.cluster.client.clone(), &self.ns.name);
        let listed = pods
            .list(&ListParams::default().labels(&format!("flywheel.dev/model-deployment={MD}")))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        listed
            .items
            .iter()
            .map(|p| (p.metadata.name.clone().unwrap_or_default(), p.metadata.uid.clone().unwrap_or_default()))
            .collect()
    }

    /// `n` requests spread over the pods' agents (as the Service spreads them), from `subjects`
    /// users in turn. Returns (subject, version, interaction id) per answer.
    async fn ask(&self, n: usize, subjects: usize) -> Vec<(String, String, String)> {
        let rigs = self.pods.all().await;
        assert!(!rigs.is_empty());
        let asks = (0..n).map(|i| {
            let (_, rig) = &rigs[i % rigs.len()];
            let url = format!("http://{}/v1/chat/completions", rig.agent.addr());
            let subject = format!("user-{}", i % subjects);
            let http = self.http.clone();
            async move {
                let body = json!({"model": BASE, "messages": [{"role": "user", "content": format!("question {i}")}]});
                let r = http
                    .post(&url)
                    .header("x-flywheel-subject", &subject)
                    .json(&body)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(r.status().as_u16(), 200, "request {i}");
                let header = |n: &str| r.headers().get(n).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
                let (version, interaction) = (header(VERSION_HEADER), header(INTERACTION_HEADER));
                let answer: Value = r.json().await.unwrap_or_default();
                let content = answer["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_string();
                let answered_by = if version == "v1" { BASE.to_string() } else { version.clone() };
                assert!(content.starts_with(&format!("[{answered_by}]")), "{version} stamped on {content}");
                (subject, version, interaction)
            }
        });
        futures::stream::iter(asks).buffer_unordered(32).collect().await
    }

    /// Waits until the collector holds `n` interactions of the ModelDeployment.
    async fn captured(&self, n: i64) {
        let url = format!("{}/v1/stats?namespace={}&deployment={MD}&windowSeconds=86400", self.base, self.ns.name);
        let got = eventually(Duration::from_secs(30), || {
            let (http, url) = (self.http.clone(), url.clone());
            async move {
                let stats: Value = http.get(&url).bearer_auth(TOKEN).send().await.ok()?.json().await.ok()?;
                let total: i64 = stats["versions"].as_array()?.iter().filter_map(|v| v["interactions"].as_i64()).sum();
                (total >= n).then_some(total)
            }
        })
        .await;
        assert!(got.is_some(), "the collector never held {n} captured interactions");
    }

    /// Users react: positive with probability `rate[version]` (deterministic by index).
    async fn feedback(&self, answers: &[(String, String, String)], rate: &HashMap<&str, u32>) {
        let items: Vec<Value> = answers
            .iter()
            .enumerate()
            .map(|(i, (_, version, id))| {
                let up = (i as u32 * 37) % 100 < rate.get(version.as_str()).copied().unwrap_or(50);
                json!({"id": format!("f-{id}"), "interactionId": id, "kind": "thumbs", "value": up})
            })
            .collect();
        for chunk in items.chunks(500) {
            let r = self
                .http
                .post(format!("{}/v1/feedback", self.base))
                .bearer_auth(TOKEN)
                .json(&chunk)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(r.status().as_u16(), 207);
        }
    }

    async fn stop(mut self) {
        self.projector.abort();
        if let Some(op) = self.op.take() {
            op.shutdown().await;
        }
        for (_, rig) in self.pods.all().await {
            rig.runtime.stop();
        }
        self.collector.shutdown().await;
        self.ns.cleanup().await;
        self.cluster.stop().await;
    }
}

fn model_deployment(progress_deadline: i64, replicas: i32) -> ModelDeployment {
    serde_json::from_value(json!({
        "apiVersion": "flywheel.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": MD},
        "spec": {
            "model": {"name": BASE, "version": "v1", "uri": "file:///models/qwen-base"},
            "runtime": {"image": "vllm/vllm-openai:v0.8.5", "port": 8000, "args": ["--enable-lora"]},
            "replicas": replicas,
            "rollout": {
                "mode": "Adapter",
                "steps": [{"weight": 20, "gate": "Analysis", "deadlineSeconds": 600}],
                "analysis": {"minSamplesPerArm": 300, "margin": 0.05, "confidence": 0.95, "intervalSeconds": 1},
                "progressDeadlineSeconds": progress_deadline
            }
        }
    }))
    .unwrap_or_else(|e| panic!("{e}"))
}

async fn until(
    api: &Api<ModelDeployment>,
    what: &str,
    secs: u64,
    check: impl Fn(&ModelDeployment) -> bool,
) -> ModelDeployment {
    let found = eventually(Duration::from_secs(secs), || {
        let api = api.clone();
        let check = &check;
        async move {
            let o = api.get(MD).await.ok()?;
            check(&o).then_some(o)
        }
    })
    .await;
    match found {
        Some(o) => o,
        None => panic!("never reached: {what}; last status: {:?}", api.get(MD).await.ok().and_then(|m| m.status)),
    }
}

fn canary_step_started(m: &ModelDeployment, version: &str) -> bool {
    m.status
        .as_ref()
        .and_then(|s| s.canary.as_ref())
        .is_some_and(|c| c.version == version && c.step_started_at.is_some())
}

/// The share of answers from `version`, in percent, and whether every subject saw one version.
fn split(answers: &[(String, String, String)], version: &str) -> (f64, bool) {
    let on = answers.iter().filter(|(_, v, _)| v == version).count();
    let mut seen: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    for (s, v, _) in answers {
        seen.entry(s.as_str()).or_default().insert(v.as_str());
    }
    (on as f64 * 100.0 / answers.len() as f64, seen.values().all(|v| v.len() == 1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_better_adapter_is_promoted_and_a_worse_one_rolled_back_in_the_same_pods() {
    let Some(s) = Setup::start("adapters", Vec::new()).await else { return };
    let mds = s.mds();
    mds.create(&PostParams::default(), &model_deployment(60, 2)).await.unwrap_or_else(|e| panic!("{e}"));
    let ready = until(&mds, "Ready on the base model", 60, |m| {
        m.status.as_ref().is_some_and(|st| {
            st.conditions.iter().any(|c| c.type_ == "Ready" && c.status == flywheel::api::ConditionStatus::True)
        })
    })
    .await;
    assert_eq!(ready.status.and_then(|st| st.stable).map(|st| (st.version, st.adapter)), Some(("v1".into(), false)));
    let uids = s.pod_uids().await;
    assert_eq!(uids.len(), 2, "{uids:?}");

    // A better adapter: its canary starts once every pod holds it at 20 %.
    let good = s.adapter("a1-good");
    s.hand_over("a1-good", &good).await;
    until(&mds, "the canary of a1-good held by every pod", 60, |m| canary_step_started(m, "a1-good")).await;
    let answers = s.ask(10_000, 5_000).await;
    let (share, sticky) = split(&answers, "a1-good");
    eprintln!("split at the agents over 10,000 requests: {share:.2} % on a1-good (weight 20 %)");
    assert!((share - 20.0).abs() <= 3.0, "{share} % of 10,000 requests on the canary at weight 20 %");
    assert!(sticky, "a subject saw two versions within the step");
    for (name, rig) in s.pods.all().await {
        let answered = rig.runtime.answered();
        assert!(
            answered.get("a1-good").copied().unwrap_or(0) > 0,
            "{name}'s runtime answered as the adapter: {answered:?}"
        );
    }
    // The collector's per-version statistics see the adapter's version, from the agents'
    // captures; the users' feedback decides.
    s.captured(10_000).await;
    s.feedback(&answers, &HashMap::from([("a1-good", 85), ("v1", 55)])).await;
    let promoted = until(&mds, "a1-good promoted", 60, |m| {
        m.status
            .as_ref()
            .is_some_and(|st| st.stable.as_ref().is_some_and(|x| x.version == "a1-good") && st.canary.is_none())
    })
    .await;
    let st = promoted.status.clone().unwrap_or_default();
    assert!(st.stable.as_ref().is_some_and(|x| x.adapter));
    let entry = st.history.iter().find(|h| h.version == "a1-good").unwrap_or_else(|| panic!("history"));
    assert_eq!(entry.type_, HistoryType::Promoted, "{}", entry.message);
    let evidence = entry.evidence.clone().unwrap_or_default();
    assert!(evidence.canary_samples >= 300 && evidence.stable_samples >= 300, "{evidence:?}");
    // Every pod now answers as a1-good for everyone.
    let every = eventually(Duration::from_secs(20), || async {
        let a = s.ask(40, 40).await;
        a.iter().all(|(_, v, _)| v == "a1-good").then_some(())
    })
    .await;
    assert!(every.is_some(), "the promoted adapter does not answer every request");

    // A worse adapter is rolled back; a1-good keeps serving and a2 leaves the runtimes.
    let worse = s.adapter("a2-worse");
    s.hand_over("a2-worse", &worse).await;
    until(&mds, "the canary of a2-worse held by every pod", 60, |m| canary_step_started(m, "a2-worse")).await;
    let answers = s.ask(4_000, 2_000).await;
    let (share, sticky) = split(&answers, "a2-worse");
    assert!((share - 20.0).abs() <= 4.0 && sticky, "{share} % on a2-worse, sticky {sticky}");
    s.captured(14_000).await;
    s.feedback(&answers, &HashMap::from([("a2-worse", 30), ("a1-good", 85)])).await;
    let rolled = until(&mds, "a2-worse rolled back", 60, |m| {
        m.status.as_ref().is_some_and(|st| st.history.iter().any(|h| h.version == "a2-worse") && st.canary.is_none())
    })
    .await;
    let st = rolled.status.unwrap_or_default();
    let entry = st.history.iter().find(|h| h.version == "a2-worse").unwrap_or_else(|| panic!("history"));
    assert_eq!(entry.type_, HistoryType::RolledBack, "{}", entry.message);
    assert_eq!(st.stable.map(|x| x.version).as_deref(), Some("a1-good"));
    let unloaded = eventually(Duration::from_secs(30), || async {
        let rigs = s.pods.all().await;
        rigs.iter().all(|(_, r)| r.runtime.adapters() == ["a1-good"]).then_some(())
    })
    .await;
    assert!(unloaded.is_some(), "a2-worse is unloaded from every runtime");
    let after = s.ask(40, 40).await;
    assert!(after.iter().all(|(_, v, _)| v == "a1-good"));

    // No pod was replaced at any point: the same uids, no new pods.
    assert_eq!(s.pod_uids().await, uids);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_that_refuses_or_hangs_never_breaks_serving_and_is_named_in_status() {
    let Some(s) = Setup::start(
        "adapters-refused",
        vec![LoadBehaviour::Refuse(404), LoadBehaviour::Refuse(500), LoadBehaviour::Hang],
    )
    .await
    else {
        return;
    };
    let mds = s.mds();
    mds.create(&PostParams::default(), &model_deployment(12, 3)).await.unwrap_or_else(|e| panic!("{e}"));
    until(&mds, "Ready on the base model", 60, |m| {
        m.status.as_ref().is_some_and(|st| st.stable.is_some() && st.ready_replicas == 3)
    })
    .await;
    let uids = s.pod_uids().await;
    let uri = s.adapter("a1");
    s.hand_over("a1", &uri).await;
    // Every pod is named, with what its runtime did.
    let failing = until(&mds, "every pod named in status", 30, |m| {
        m.status.as_ref().and_then(|st| st.canary.as_ref()).is_some_and(|c| c.adapter_failures.len() == 3)
    })
    .await;
    let canary = failing.status.and_then(|st| st.canary).unwrap_or_default();
    let messages: Vec<String> = canary.adapter_failures.iter().map(|f| format!("{}: {}", f.pod, f.message)).collect();
    eprintln!("{messages:?}");
    assert!(messages.iter().any(|m| m.contains("answered 404")), "{messages:?}");
    assert!(messages.iter().any(|m| m.contains("answered 500")), "{messages:?}");
    assert!(messages.iter().any(|m| m.contains("took longer")), "{messages:?}");
    let pods: BTreeSet<String> = canary.adapter_failures.iter().map(|f| f.pod.clone()).collect();
    assert_eq!(pods, uids.keys().cloned().collect());
    assert_eq!(canary.ready_replicas, 0);
    // Serving goes on, on the base model.
    let answers = s.ask(200, 50).await;
    assert!(answers.iter().all(|(_, v, _)| v == "v1"));
    // The progress deadline aborts the rollout.
    let aborted = until(&mds, "the progress deadline aborts", 40, |m| {
        m.status.as_ref().is_some_and(|st| st.history.iter().any(|h| h.version == "a1") && st.canary.is_none())
    })
    .await;
    let st = aborted.status.unwrap_or_default();
    let entry = st.history.iter().find(|h| h.version == "a1").unwrap_or_else(|| panic!("history"));
    assert_eq!((entry.type_, entry.reason.as_str()), (HistoryType::Aborted, "ProgressDeadlineExceeded"));
    assert_eq!(st.stable.map(|x| x.version).as_deref(), Some("v1"));
    assert_eq!(s.pod_uids().await, uids);
    s.stop().await;
}
