//! `flywheel demo --adapters`: adapter canaries inside the pods that already run. A
//! ModelDeployment in `Adapter` rollout mode serves its base model on two pods (each the real
//! agent before the simulated vLLM runtime, `crate::sim::inference`); two RetrainJobs (their
//! trainer simulated by the kubelet) hand over LoRA adapters; each is canaried inside the same
//! pods at 20 % then 50 %, judged on the users' feedback, and a better one is promoted, a worse
//! one rolled back. The pods' uids are checked at the end: no pod was replaced.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use serde::Serialize;
use serde_json::json;

use super::error::DemoError;
use super::resources::{
    ADAPTER_BASE_MODEL as BASE_MODEL, ADAPTER_BASE_VERSION as BASE_VERSION, ADAPTER_DEPLOYMENT as DEPLOYMENT, NAMESPACE,
};
use super::stack::{Stack, apply};
use crate::api::model_deployment::HistoryType;
use crate::api::{ModelDeployment, RetrainJob};
use crate::collector::client::{CollectorClient, Ingest};
use crate::sim::inference::{self, InferencePods};

/// The adapters the trainer makes: (version, how often users like its answers in percent).
const ADAPTERS: [(&str, u32); 2] = [("v1-lora-1", 82), ("v1-lora-2", 30)];
/// How often users like the base model's answers.
const BASE_QUALITY: u32 = 60;

/// What the adapter demo did.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AdapterSummary {
    /// Each adapter's canary.
    pub adapters: Vec<AdapterOutcome>,
    /// The version serving stable traffic at the end.
    pub stable_version: Option<String>,
    /// The inference pods (name → uid) at the start.
    pub pods_before: BTreeMap<String, String>,
    /// The inference pods at the end: the same, when no pod was replaced.
    pub pods_after: BTreeMap<String, String>,
    /// Requests answered through the agents.
    pub requests: usize,
    /// Wall time of the run.
    pub wall_seconds: f64,
}

/// One adapter's canary.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AdapterOutcome {
    /// The adapter's version.
    pub version: String,
    /// `Promoted`, `RolledBack` or `Aborted`.
    pub outcome: String,
    /// Share of requests it answered at each step, measured at the agents (step weight, share).
    pub split: Vec<(i32, f64)>,
    /// Whether every subject saw one version within each step.
    pub sticky: bool,
    /// The verdict's message.
    pub message: String,
}

fn model_deployment() -> Result<ModelDeployment, DemoError> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "flywheel.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": DEPLOYMENT, "namespace": NAMESPACE},
        "spec": {
            "model": {"name": BASE_MODEL, "version": BASE_VERSION, "uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"},
            "runtime": {"image": "vllm/vllm-openai:v0.8.5", "port": 8000,
                        "args": ["--model=$(FLYWHEEL_MODEL_DIR)", "--served-model-name=$(FLYWHEEL_MODEL_NAME)", "--enable-lora"]},
            "replicas": 2,
            "rollout": {
                "mode": "Adapter",
                "steps": [{"weight": 20, "gate": "Analysis"}, {"weight": 50, "gate": "Analysis"}],
                "analysis": {"minSamplesPerArm": 150, "margin": 0.05, "confidence": 0.95, "intervalSeconds": 1},
                "progressDeadlineSeconds": 120
            }
        }
    }))?)
}

/// A fine-tuning run whose (simulated) trainer writes a LoRA adapter and hands it over.
fn retrain_job(index: usize, version: &str) -> Result<RetrainJob, DemoError> {
    let output = format!("s3://demo-adapters/{DEPLOYMENT}/{version}");
    let result = json!({"version": version, "uri": output, "artifact": "adapter",
        "metrics": {"evalLoss": 1.4, "trainRows": 480}})
    .to_string();
    Ok(serde_json::from_value(json!({
        "apiVersion": "flywheel.dev/v1alpha1", "kind": "RetrainJob",
        "metadata": {"name": format!("{DEPLOYMENT}-{index}"), "namespace": NAMESPACE},
        "spec": {
            "targetRef": {"name": DEPLOYMENT},
            "base": {"version": BASE_VERSION, "uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"},
            "dataset": {"uri": "s3://demo-datasets/support-chat/snap-1/", "sha256": "c".repeat(64),
                        "formats": ["SFT"], "counts": {"sft": 480, "dpo": 0, "heldOut": 52}},
            "trainer": {"image": "ghcr.io/flywheel-dev/trainer:0.1.0", "retries": 0,
                        "podAnnotations": {"sim.flywheel.dev/duration": "1",
                                           "sim.flywheel.dev/termination-message": result}},
            "outputUri": output,
            "version": version,
            "promotion": "Canary"
        }
    }))?)
}

fn kube(action: &str) -> impl FnOnce(kube::Error) -> DemoError {
    let action = action.to_string();
    move |source| DemoError::Kube { action, source }
}

async fn pod_uids(stack: &Stack) -> Result<BTreeMap<String, String>, DemoError> {
    let pods: Api<Pod> = Api::namespaced(stack.client.clone(), NAMESPACE);
    let listed = pods
        .list(
            &ListParams::default()
                .labels(&format!("flywheel.dev/model-deployment={DEPLOYMENT},app.kubernetes.io/component=inference")),
        )
        .await
        .map_err(kube("listing the inference pods"))?;
    Ok(listed
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| (p.metadata.name.clone().unwrap_or_default(), p.metadata.uid.clone().unwrap_or_default()))
        .collect())
}

/// Polls the ModelDeployment until `done` says so, or fails after `limit`.
async fn until(
    mds: &Api<ModelDeployment>,
    what: &str,
    limit: Duration,
    mut done: impl FnMut(&ModelDeployment) -> bool,
) -> Result<ModelDeployment, DemoError> {
    let started = Instant::now();
    loop {
        let md = mds.get(DEPLOYMENT).await.map_err(kube("reading the ModelDeployment"))?;
        if done(&md) {
            return Ok(md);
        }
        if started.elapsed() >= limit {
            return Err(DemoError::Stalled {
                waiting_for: what.to_string(),
                seconds: limit.as_secs(),
                state: format!("{:?}", md.status),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Plays the story on a started stack; `say` prints one line.
pub(super) async fn drive(
    stack: &Stack,
    pods: &InferencePods,
    say: &mut dyn FnMut(String),
) -> Result<AdapterSummary, DemoError> {
    let started = Instant::now();
    let mds: Api<ModelDeployment> = Api::namespaced(stack.client.clone(), NAMESPACE);
    apply(&mds, &model_deployment()?).await?;
    say(format!(
        "applied ModelDeployment {DEPLOYMENT}: base {BASE_MODEL} {BASE_VERSION} on 2 pods, rollout mode Adapter (steps 20 %, 50 %)"
    ));
    until(&mds, "the base model Ready on 2 pods", Duration::from_secs(60), |m| {
        m.status.as_ref().is_some_and(|s| s.ready_replicas == 2 && s.stable.is_some())
    })
    .await?;
    let pods_before = pod_uids(stack).await?;
    say(format!("serving the base model on pods {}", pods_before.keys().cloned().collect::<Vec<_>>().join(", ")));
    let collector = CollectorClient::new(&stack.base, Some(stack.token.clone()));
    let http = crate::http_client::client();
    let mut quality: HashMap<&str, u32> = HashMap::from([(BASE_VERSION, BASE_QUALITY)]);
    let mut outcomes = Vec::new();
    let mut requests = 0;
    let rtjs: Api<RetrainJob> = Api::namespaced(stack.client.clone(), NAMESPACE);
    for (i, (version, liked)) in ADAPTERS.iter().enumerate() {
        quality.insert(version, *liked);
        rtjs.create(&PostParams::default(), &retrain_job(i + 1, version)?)
            .await
            .map_err(kube("creating a RetrainJob"))?;
        say(format!("RetrainJob {DEPLOYMENT}-{} trains the LoRA adapter {version}", i + 1));
        // Per step: its weight, answers from the adapter, answers.
        let mut split: Vec<(i32, usize, usize)> = Vec::new();
        let mut sticky = true;
        let mut step_seen = None;
        let decided = loop {
            let md = mds.get(DEPLOYMENT).await.map_err(kube("reading the ModelDeployment"))?;
            let status = md.status.clone().unwrap_or_default();
            if let Some(entry) = status.history.iter().rev().find(|h| h.version == *version) {
                break entry.clone();
            }
            if started.elapsed() > Duration::from_secs(300) {
                return Err(DemoError::Stalled {
                    waiting_for: format!("a verdict on {version}"),
                    seconds: 300,
                    state: format!("{status:?}"),
                });
            }
            let Some(canary) = status.canary.filter(|c| c.version == *version && c.step_started_at.is_some()) else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            if step_seen != Some(canary.step) {
                step_seen = Some(canary.step);
                say(format!(
                    "every pod holds {version} and sends it {} % of subjects (step {}); the pods are not restarted",
                    canary.weight,
                    canary.step + 1
                ));
            }
            // Users ask through the agents, then react to what they got.
            // 400 requests a batch from 4,000 users in turn: each user asks again every tenth
            // batch, and must get the same version within the step.
            let answers = pods.ask(&http, 400, (requests, 4_000), 16).await;
            requests += answers.len();
            // A batch that straddled a step change measures neither step.
            let after = mds.get(DEPLOYMENT).await.map_err(kube("reading the ModelDeployment"))?;
            let same_step = after.status.and_then(|s| s.canary).is_some_and(|c| c.step == canary.step);
            let (_, one_version) = inference::split(&answers, version);
            sticky &= one_version || !same_step;
            let on = answers.iter().filter(|a| a.version == *version).count();
            match split.last_mut() {
                _ if !same_step => {}
                Some((w, n, total)) if *w == canary.weight => {
                    *n += on;
                    *total += answers.len();
                }
                _ => split.push((canary.weight, on, answers.len())),
            }
            let feedback = inference::thumbs(&answers, &quality, NAMESPACE, DEPLOYMENT);
            for chunk in feedback.chunks(crate::collector::MAX_BATCH_ITEMS) {
                collector.ingest(Ingest::Feedback, chunk).await.map_err(|e| DemoError::Collector(e.to_string()))?;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        let outcome = match decided.type_ {
            HistoryType::Promoted => "Promoted",
            HistoryType::RolledBack => "RolledBack",
            HistoryType::Aborted => "Aborted",
            HistoryType::Rejected => "Rejected",
        };
        let measured: Vec<String> = split
            .iter()
            .map(|(w, on, total)| {
                format!("{w} % step: {:.1} % of {total}", *on as f64 * 100.0 / (*total).max(1) as f64)
            })
            .collect();
        say(format!(
            "{version}: {outcome}: {} (its share measured at the agents: {})",
            decided.message,
            measured.join(", ")
        ));
        outcomes.push(AdapterOutcome {
            version: (*version).to_string(),
            outcome: outcome.to_string(),
            split: split
                .iter()
                .map(|(w, on, total)| (*w, (*on as f64 * 1000.0 / (*total).max(1) as f64).round() / 10.0))
                .collect(),
            sticky,
            message: decided.message.clone(),
        });
    }
    let md = until(&mds, "every pod back on one stable version", Duration::from_secs(30), |m| {
        m.status.as_ref().is_some_and(|s| s.canary.is_none())
    })
    .await?;
    let pods_after = pod_uids(stack).await?;
    let same = if pods_after == pods_before { "the same pods, same uids, throughout" } else { "PODS WERE REPLACED" };
    let stable_version = md.status.and_then(|s| s.stable).map(|s| s.version);
    say(format!("stable: {}; {same}", stable_version.as_deref().unwrap_or("none")));
    Ok(AdapterSummary {
        adapters: outcomes,
        stable_version,
        pods_before,
        pods_after,
        requests,
        wall_seconds: started.elapsed().as_secs_f64(),
    })
}
