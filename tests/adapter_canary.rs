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
use std::sync::Arc;
use std::time::Duration;

use common::{Cluster, TestNamespace, eventually};
use flywheel::api::ModelDeployment;
use flywheel::api::model_deployment::HistoryType;
use flywheel::collector::{Collector, CollectorConfig};
use flywheel::operator::model_deployment::feedback_analysis::CollectorAnalysis;
use flywheel::operator::{self, Operator, OperatorConfig};
use flywheel::sim::inference::{Answer, InferencePods, PodsConfig, split, thumbs};
use flywheel::sim::model_runtime::LoadBehaviour;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const TOKEN: &str = "adapter-test-token-0123456789abcdef";
const MD: &str = "chat";
const BASE: &str = "qwen-base";

struct Setup {
    cluster: Cluster,
    ns: TestNamespace,
    collector: Collector,
    base: String,
    pods: InferencePods,
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
        let pods = InferencePods::new(
            PodsConfig {
                namespace: ns.name.clone(),
                deployment: MD.into(),
                base_model: BASE.into(),
                base_version: "v1".into(),
                collector: Some((base.clone(), TOKEN.into())),
                dir: dir.path().join("pods"),
                store: None,
            },
            behaviours,
        );
        let config = OperatorConfig {
            collector_url: Some(base.clone()),
            collector_token: Some(TOKEN.to_string()),
            analysis: Arc::new(CollectorAnalysis::new(&base, Some(TOKEN.to_string()))),
            adapter_source: Arc::new(pods.clone()),
            ..OperatorConfig::local().scoped_to(&ns.name)
        };
        let op = operator::start(cluster.client.clone(), config).await.unwrap_or_else(|e| panic!("{e}"));
        let projector = pods.project(Api::namespaced(cluster.client.clone(), &ns.name));
        Some(Self {
            cluster,
            ns,
            collector,
            base,
            pods,
            op: Some(op),
            projector,
            http: flywheel::http_client::client(),
            dir,
        })
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

    /// `n` requests spread over the pods' agents (as the Service spreads them), from
    /// `subjects` users in turn; every one answered.
    async fn ask(&self, n: usize, subjects: usize) -> Vec<Answer> {
        let answers = self.pods.ask(&self.http, n, (0, subjects), 32).await;
        assert_eq!(answers.len(), n, "every request is answered");
        answers
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

    /// Users react: positive with `rate[version]` percent.
    async fn feedback(&self, answers: &[Answer], rate: &HashMap<&str, u32>) {
        for chunk in thumbs(answers, rate, &self.ns.name, MD).chunks(500) {
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
        self.pods.stop().await;
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
        a.iter().all(|a| a.version == "a1-good").then_some(())
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
    assert!(after.iter().all(|a| a.version == "a1-good"));

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
    assert!(answers.iter().all(|a| a.version == "v1"));
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
