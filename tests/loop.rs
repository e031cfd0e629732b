//! The whole feedback loop against the cluster under test, with a real collector and simulated
//! users: a quality dip fires the FeedbackPolicy, its RetrainJob's Job runs (scripted by the
//! simulated kubelet, or a busybox stand-in on a real cluster), the new version canaries and is
//! promoted or rolled back on the users' feedback; failed runs are retried per policy;
//! `suggest` mode creates nothing; a crashing operator never duplicates a RetrainJob or a Job.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Cluster, TestNamespace, eventually};
use flywheel::api::model_deployment::HistoryType;
use flywheel::api::retrain_job::{AttemptOutcome, RetrainPhase};
use flywheel::api::{ConditionStatus, FeedbackPolicy, ModelDeployment, RetrainJob, TriggerReason};
use flywheel::collector::{Collector, CollectorConfig};
use flywheel::operator::model_deployment::feedback_analysis::CollectorAnalysis;
use flywheel::operator::{self, Operator, OperatorConfig};
use flywheel::sim::{Outcome, PodBehavior, SimConfig, WorkloadConfig};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};

const TOKEN: &str = "loop-test-token-0123456789abcdef";
const TARGET: &str = "support-chat";
const POLICY: &str = "support-chat-quality";
const NEW_VERSION: &str = "v1-ft-1";

/// The cluster, a collector and the operator of one test.
struct Loop {
    cluster: Cluster,
    ns: TestNamespace,
    collector: Collector,
    base: String,
    http: reqwest::Client,
    op: Option<Operator>,
    _dir: tempfile::TempDir,
    seq: std::sync::atomic::AtomicUsize,
}

impl Loop {
    async fn start(prefix: &str, sim: SimConfig) -> Self {
        let cluster = Cluster::start_with(sim).await;
        cluster.install_crds().await;
        let ns = cluster.namespace(prefix).await;
        // The claim trained versions are written to and served from.
        let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
            Api::namespaced(cluster.client.clone(), &ns.name);
        let claim = serde_json::from_value(json!({"metadata": {"name": "models"},
            "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}}))
        .unwrap_or_else(|e| panic!("{e}"));
        claims
            .create(&PostParams::default(), &claim)
            .await
            .unwrap_or_else(|e| panic!("creating the models claim: {e}"));
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("tokens"), format!("{TOKEN} write\n")).unwrap_or_else(|e| panic!("{e}"));
        let mut cc =
            CollectorConfig::new("127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")), dir.path().join("data"));
        cc.token_file = Some(dir.path().join("tokens"));
        let collector = Collector::start(cc).await.unwrap_or_else(|e| panic!("{e}"));
        let base = format!("http://{}", collector.addr());
        let mut l = Self {
            cluster,
            ns,
            collector,
            base,
            http: flywheel::http_client::client(),
            op: None,
            _dir: dir,
            seq: std::sync::atomic::AtomicUsize::new(0),
        };
        l.op = Some(l.start_operator().await);
        l
    }

    async fn start_operator(&self) -> Operator {
        let config = OperatorConfig {
            collector_url: Some(self.base.clone()),
            collector_token: Some(TOKEN.to_string()),
            analysis: Arc::new(CollectorAnalysis::new(&self.base, Some(TOKEN.to_string()))),
            ..OperatorConfig::local().scoped_to(&self.ns.name)
        };
        operator::start(self.cluster.client.clone(), config).await.unwrap_or_else(|e| panic!("{e}"))
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        Api::namespaced(self.cluster.client.clone(), &self.ns.name)
    }

    /// `n` users ask `version` a question each; `up` of them like the answer, the others
    /// dislike it (every other one sends a correction instead).
    async fn users(&self, version: &str, n: usize, up: usize) {
        let start = self.seq.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        let mut interactions = Vec::new();
        let mut feedback = Vec::new();
        for i in start..start + n {
            let id = format!("i-{version}-{i}");
            interactions.push(json!({"id": id, "namespace": self.ns.name, "deployment": TARGET, "version": version,
                "prompt": [{"role": "user", "content": format!("question {i}")}], "answer": format!("answer {i} from {version}")}));
            let f = if i - start < up {
                json!({"kind": "thumbs", "value": true})
            } else if i % 2 == 0 {
                json!({"kind": "correction", "value": format!("the right answer to question {i}")})
            } else {
                json!({"kind": "thumbs", "value": false})
            };
            let mut f = f;
            f["id"] = json!(format!("f-{version}-{i}"));
            f["interactionId"] = json!(id);
            feedback.push(f);
        }
        for (path, items) in [("/v1/interactions", interactions), ("/v1/feedback", feedback)] {
            for chunk in items.chunks(500) {
                let r = self
                    .http
                    .post(format!("{}{path}", self.base))
                    .bearer_auth(TOKEN)
                    .json(&chunk)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(r.status().as_u16(), 207, "{path}");
            }
        }
    }

    /// The RetrainJobs of the test's namespace.
    async fn retrain_jobs(&self) -> Vec<RetrainJob> {
        self.api::<RetrainJob>().list(&ListParams::default()).await.unwrap_or_else(|e| panic!("{e}")).items
    }

    async fn stop(mut self) {
        // The namespace goes first, while the operator still runs: it releases the result
        // finalizer of trainer pods whose RetrainJob is gone (on a shared real cluster a pod
        // left with it would keep the namespace Terminating).
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.cluster.client.clone());
        let _deleting = namespaces.delete(&self.ns.name, &Default::default()).await;
        let pods: Api<k8s_openapi::api::core::v1::Pod> = self.api();
        let _released = eventually(Duration::from_secs(15), || {
            let pods = pods.clone();
            async move {
                let left =
                    pods.list(&ListParams::default().labels("app.kubernetes.io/component=trainer")).await.ok()?;
                left.items.is_empty().then_some(())
            }
        })
        .await;
        if let Some(op) = self.op.take() {
            op.shutdown().await;
        }
        self.collector.shutdown().await;
        self.ns.cleanup().await;
        self.cluster.stop().await;
    }
}

fn model_deployment() -> ModelDeployment {
    let mut md: ModelDeployment =
        serde_yaml::from_str(include_str!("../config/samples/modeldeployment.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let rollout = json!({
        "steps": [{"weight": 50, "gate": "Analysis", "deadlineSeconds": 600}],
        "analysis": {"minSamplesPerArm": 200, "margin": 0.05, "confidence": 0.95, "intervalSeconds": 1}
    });
    md.spec.replicas = Some(2);
    md.spec.rollout = Some(serde_json::from_value(rollout).unwrap_or_else(|e| panic!("{e}")));
    md
}

/// The trainer of the tests: the simulated kubelet follows the annotations; on a real cluster
/// busybox does the same.
fn policy(mode: &str, cooldown: i64) -> FeedbackPolicy {
    let result = format!(
        r#"{{"version":"{NEW_VERSION}","uri":"pvc://models/{POLICY}-1","metrics":{{"evalLoss":1.25,"trainRows":180}}}}"#
    );
    serde_json::from_value(json!({
        "apiVersion": "flywheel.dev/v1alpha1", "kind": "FeedbackPolicy",
        "metadata": {"name": POLICY},
        "spec": {
            "targetRef": {"name": TARGET},
            "mode": mode,
            "windowSeconds": 3600,
            "triggers": {"minSamples": 200, "qualityBelow": 0.7},
            "cooldownSeconds": cooldown,
            "maxRetrainsPerDay": 5,
            "dataset": {"minRows": 20, "heldOutFraction": 0.1},
            "trainer": {
                "image": "busybox:1.36",
                "command": ["sh", "-c", format!("sleep 1; echo '{result}' > /dev/termination-log")],
                "podAnnotations": {
                    "sim.flywheel.dev/duration": "1",
                    "sim.flywheel.dev/termination-message": result,
                },
                "retries": 1,
                "deadlineSeconds": 600,
            },
            "outputUriPrefix": "pvc://models/",
            "promotion": "Canary",
        }
    }))
    .unwrap_or_else(|e| panic!("{e}"))
}

async fn until<K, F>(api: &Api<K>, name: &str, what: &str, secs: u64, check: F) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    F: Fn(&K) -> bool,
{
    let found = eventually(Duration::from_secs(secs), || {
        let api = api.clone();
        let check = &check;
        async move {
            let o = api.get(name).await.ok()?;
            check(&o).then_some(o)
        }
    })
    .await;
    match found {
        Some(o) => o,
        None => panic!("{name} never reached: {what}; last: {:?}", api.get(name).await.ok()),
    }
}

fn stable_of(md: &ModelDeployment) -> String {
    md.status.as_ref().and_then(|s| s.stable.as_ref()).map(|s| s.version.clone()).unwrap_or_default()
}

/// What a cycle runs under.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stress {
    /// Nothing.
    None,
    /// The operator is killed at random points (by the caller).
    Crashing,
    /// Once the resources are applied, the simulated API server fails 30 % of writes (500, 429,
    /// 409 in turn), drops every watch after a second, and compacts its history (watches resume with
    /// a 410) until the verdict.
    ApiFaults,
}

/// Faults on the simulated API server until dropped.
struct FaultsOn<'a> {
    sim: &'a flywheel::sim::Sim,
    compaction: tokio::task::JoinHandle<()>,
}

impl<'a> FaultsOn<'a> {
    fn start(sim: &'a flywheel::sim::Sim) -> Self {
        sim.faults().set(flywheel::sim::faults::FaultConfig {
            write_error_rate: 0.3,
            latency: Some(Duration::from_millis(2)),
            drop_watches_after: Some(Duration::from_secs(1)),
        });
        let core = sim.core().clone();
        let compaction = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                core.compact();
            }
        });
        Self { sim, compaction }
    }
}

impl Drop for FaultsOn<'_> {
    fn drop(&mut self) {
        self.compaction.abort();
        self.sim.faults().set(flywheel::sim::faults::FaultConfig::default());
    }
}

/// Drive one cycle: healthy traffic, a dip, the trigger, the training, the canary, the verdict.
/// Returns the trigger latency.
async fn cycle(l: &Loop, canary_up: usize, expect: HistoryType, stress: Stress) -> Duration {
    let crashing = stress != Stress::None;
    let mds: Api<ModelDeployment> = l.api();
    let policies: Api<FeedbackPolicy> = l.api();
    let rtjs: Api<RetrainJob> = l.api();
    mds.create(&PostParams::default(), &model_deployment()).await.unwrap_or_else(|e| panic!("{e}"));
    until(&mds, TARGET, "Ready", 60, |m| stable_of(m) == "v1").await;
    policies.create(&PostParams::default(), &policy("auto", 3600)).await.unwrap_or_else(|e| panic!("{e}"));
    let faults = match (stress, l.cluster.sim.as_ref()) {
        (Stress::ApiFaults, Some(sim)) => Some(FaultsOn::start(sim)),
        _ => None,
    };

    // Healthy: 80% positive, no trigger.
    l.users("v1", 300, 240).await;
    let p = until(&policies, POLICY, "statistics of 300 judgments", 30, |p| {
        p.status.as_ref().and_then(|s| s.stats.as_ref()).is_some_and(|s| s.judged == 300)
    })
    .await;
    let stats = p.status.and_then(|s| s.stats).unwrap_or_default();
    assert_eq!((stats.version.as_str(), stats.positive), ("v1", 240));
    assert!(l.retrain_jobs().await.is_empty());

    // The dip: 400 more at 40% brings v1 to 400/700 = 57%, below 70%. The watch is opened first
    // so the latency is measured from the acknowledged crossing to the RetrainJob's creation.
    let mut created = watcher(rtjs.clone(), watcher::Config::default()).applied_objects().boxed();
    let first = tokio::spawn(async move {
        loop {
            match created.try_next().await {
                Ok(Some(_)) => return Some(Instant::now()),
                Ok(None) => return None,
                // A dropped watch or a 410: the watcher starts again on the next poll.
                Err(_) => continue,
            }
        }
    });
    l.users("v1", 400, 160).await;
    let crossed = Instant::now();
    let seen = tokio::time::timeout(Duration::from_secs(30), first)
        .await
        .unwrap_or_else(|_| panic!("no RetrainJob within 30 s of the crossing"))
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("the watch ended"));
    let latency = seen.saturating_duration_since(crossed);
    eprintln!("trigger latency (crossing acknowledged → RetrainJob created): {} ms", latency.as_millis());

    let list = l.retrain_jobs().await;
    assert_eq!(list.len(), 1);
    let rtj = &list[0];
    let name = rtj.metadata.name.clone().unwrap_or_default();
    assert_eq!(name, format!("{POLICY}-1"));
    let origin = rtj.spec.origin.clone().unwrap_or_else(|| panic!("origin"));
    assert_eq!((origin.feedback_policy.as_str(), origin.reason), (POLICY, TriggerReason::Quality));
    assert_eq!(rtj.spec.base.version, "v1");
    assert!(rtj.spec.dataset.counts.sft >= 20, "{:?}", rtj.spec.dataset.counts);
    assert!(rtj.spec.dataset.uri.starts_with(&l.base) && rtj.spec.dataset.uri.ends_with("/files"));
    assert_eq!(rtj.spec.output_uri, format!("pvc://models/{name}"));

    // Training: the Job of attempt 1, the result, the hand-over.
    let done = until(&rtjs, &name, "handed over", 60, |r| {
        r.status.as_ref().is_some_and(|s| s.phase == RetrainPhase::Succeeded && s.handed_over_at.is_some())
    })
    .await;
    let status = done.status.clone().unwrap_or_default();
    assert_eq!(status.attempt_count, 1);
    assert_eq!(status.attempts[0].job_name, format!("{name}-1"));
    assert_eq!(status.result.as_ref().map(|r| r.version.as_str()), Some(NEW_VERSION));
    assert_eq!(status.result.as_ref().and_then(|r| r.metrics.get("evalLoss")), Some(&1.25));
    let lineage = status.lineage.clone().unwrap_or_default();
    assert_eq!(lineage.dataset_sha256.as_deref(), Some(rtj.spec.dataset.sha256.as_str()));
    let jobs: Api<Job> = l.api();
    let job = jobs.get(&format!("{name}-1")).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(job.spec.as_ref().and_then(|s| s.backoff_limit), Some(0));

    // The canary, judged on the users' feedback over the same period.
    until(&mds, TARGET, "a canary of the new version", 60, |m| {
        m.status
            .as_ref()
            .and_then(|s| s.canary.as_ref())
            .is_some_and(|c| c.version == NEW_VERSION && c.step_started_at.is_some())
    })
    .await;
    // While the canary runs, the policy holds its (still true) trigger.
    until(&policies, POLICY, "the trigger held while the canary runs", 30, |p| {
        p.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.reason == "TriggerHeld"))
    })
    .await;
    l.users("v1", 400, 180).await;
    l.users(NEW_VERSION, 400, canary_up).await;
    let md = until(&mds, TARGET, "a verdict", 60, |m| {
        m.status.as_ref().is_some_and(|s| s.history.iter().any(|h| h.version == NEW_VERSION) && s.canary.is_none())
    })
    .await;
    let entry = md
        .status
        .as_ref()
        .and_then(|s| s.history.iter().find(|h| h.version == NEW_VERSION).cloned())
        .unwrap_or_else(|| panic!("history"));
    assert_eq!(entry.type_, expect, "{}", entry.message);
    let lineage = entry.lineage.clone().unwrap_or_else(|| panic!("the history entry carries its lineage"));
    assert_eq!(lineage.retrain_job.as_deref(), Some(name.as_str()));
    assert_eq!(lineage.feedback_policy.as_deref(), Some(POLICY));
    assert_eq!(lineage.trigger_id.as_deref(), Some("trigger-1"));
    assert_eq!(lineage.trigger_reason, Some(TriggerReason::Quality));
    assert!(lineage.dataset_sha256.is_some() && lineage.base_version.as_deref() == Some("v1"));
    let evidence = entry.evidence.unwrap_or_else(|| panic!("the verdict carries its evidence"));
    assert!(evidence.stable_samples >= 200 && evidence.canary_samples >= 200, "{evidence:?}");
    let expected_stable = if expect == HistoryType::Promoted { NEW_VERSION } else { "v1" };
    assert_eq!(stable_of(&md), expected_stable);
    drop(faults);
    if crashing {
        // An Event published just before a crash (or failed by an injected fault) is lost;
        // status is not.
        return latency;
    }
    // Events follow the status write that records the verdict.
    let events: Api<Event> = l.api();
    let verdict = eventually(Duration::from_secs(10), || {
        let events = events.clone();
        async move {
            let listed = events.list(&ListParams::default()).await.ok()?.items;
            listed.into_iter().filter_map(|e| e.note).find(|n| n.contains(NEW_VERSION) && n.contains("evidence:"))
        }
    })
    .await
    .unwrap_or_else(|| panic!("an Event carries the verdict's evidence"));
    let listed = events.list(&ListParams::default()).await.unwrap_or_else(|e| panic!("{e}")).items;
    assert!(verdict.contains("of 400 signals"), "{verdict}");
    let reasons: Vec<String> = listed.into_iter().filter_map(|e| e.reason).collect();
    for r in ["Triggered", "AttemptStarted", "Succeeded", "HandedOver"] {
        assert!(reasons.iter().any(|x| x == r), "Event {r} in {reasons:?}");
    }
    latency
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quality_dip_retrains_and_the_better_version_is_promoted() {
    let l = Loop::start("loop-improve", SimConfig::default()).await;
    cycle(&l, 340, HistoryType::Promoted, Stress::None).await;
    // The promoted version is good: nothing fires again.
    let policies: Api<FeedbackPolicy> = l.api();
    let p = until(&policies, POLICY, "watching the new stable version", 30, |p| {
        p.status.as_ref().and_then(|s| s.stats.as_ref()).is_some_and(|s| s.version == NEW_VERSION)
    })
    .await;
    let status = p.status.unwrap_or_default();
    assert_eq!(status.last_retrain_job.as_deref(), Some(format!("{POLICY}-1").as_str()));
    assert_eq!(status.last_trigger.map(|t| t.reason), Some(TriggerReason::Quality));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(l.retrain_jobs().await.len(), 1);
    l.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worse_candidate_is_rolled_back_and_the_cooldown_holds_the_next_trigger() {
    let l = Loop::start("loop-regress", SimConfig::default()).await;
    cycle(&l, 100, HistoryType::RolledBack, Stress::None).await;
    // v1 is still below the threshold, but the hour of cooldown holds the trigger.
    let policies: Api<FeedbackPolicy> = l.api();
    let p = until(&policies, POLICY, "the trigger held by the cooldown", 30, |p| {
        p.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.reason == "TriggerHeld" && c.message.contains("cooling down"))
        })
    })
    .await;
    assert!(p.status.and_then(|s| s.next_eligible_time).is_some());
    assert_eq!(l.retrain_jobs().await.len(), 1);
    l.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suggest_mode_records_the_trigger_and_creates_nothing() {
    let l = Loop::start("loop-suggest", SimConfig::default()).await;
    let mds: Api<ModelDeployment> = l.api();
    let policies: Api<FeedbackPolicy> = l.api();
    mds.create(&PostParams::default(), &model_deployment()).await.unwrap_or_else(|e| panic!("{e}"));
    policies.create(&PostParams::default(), &policy("suggest", 0)).await.unwrap_or_else(|e| panic!("{e}"));
    l.users("v1", 400, 160).await;
    let p = until(&policies, POLICY, "TriggerSuggested", 30, |p| {
        p.status.as_ref().is_some_and(|s| {
            s.conditions.iter().any(|c| c.type_ == "TriggerSuggested" && c.status == ConditionStatus::True)
        })
    })
    .await;
    let c = p.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "TriggerSuggested").cloned());
    let c = c.unwrap_or_else(|| panic!("condition"));
    assert_eq!(c.reason, "Quality");
    assert!(c.message.contains("40.0%"), "{}", c.message);
    let events: Api<Event> = l.api();
    let suggested = eventually(Duration::from_secs(10), || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items.into_iter().find(|e| e.reason.as_deref() == Some("TriggerSuggested"))
        }
    })
    .await;
    assert!(suggested.is_some(), "an Event records the would-be trigger");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(l.retrain_jobs().await.is_empty());
    assert!(p.status.as_ref().and_then(|s| s.last_retrain_job.clone()).is_none());
    l.stop().await;
}

/// A hand-made RetrainJob (no policy) on a local snapshot.
fn manual(name: &str, retries: i32) -> RetrainJob {
    serde_json::from_value(json!({
        "apiVersion": "flywheel.dev/v1alpha1", "kind": "RetrainJob",
        "metadata": {"name": name},
        "spec": {
            "targetRef": {"name": TARGET},
            "base": {"version": "v1", "uri": "pvc://models/v1"},
            "dataset": {"uri": "file:///datasets/snap-1", "sha256": "a".repeat(64), "formats": ["SFT"],
                        "counts": {"sft": 100, "dpo": 0, "heldOut": 10}},
            "trainer": {"image": "busybox:1.36", "retries": retries, "deadlineSeconds": 600},
            "outputUri": format!("pvc://models/{name}"),
            "version": format!("{name}-v"),
            "promotion": "None",
        }
    }))
    .unwrap_or_else(|e| panic!("{e}"))
}

fn env_of(pod: &Value, name: &str) -> Option<String> {
    pod.pointer("/spec/containers/0/env")?
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str())
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_runs_are_retried_per_policy_and_bad_configuration_is_not() {
    // The simulated trainer, per RetrainJob and attempt: `flaky` is disrupted once and then
    // fails with 75 on attempt 1 and succeeds on attempt 2; `broken` exits 3 (bad
    // configuration); `doomed` always exits 1; `liar` exits 0 without a result line.
    let pods_seen: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let seen = pods_seen.clone();
    let script: flywheel::sim::PodScript = Arc::new(move |pod: &Value| {
        let rtj = env_of(pod, "FLYWHEEL_RETRAINJOB")?;
        let attempt = env_of(pod, "FLYWHEEL_ATTEMPT")?;
        let n = {
            let mut m = seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let c = m.entry(format!("{rtj}/{attempt}")).or_insert(0);
            *c += 1;
            *c
        };
        let version = env_of(pod, "FLYWHEEL_VERSION").unwrap_or_default();
        let output = env_of(pod, "FLYWHEEL_OUTPUT_URI").unwrap_or_default();
        let ok = format!(r#"{{"version":"{version}","uri":"{output}","metrics":{{"evalLoss":0.9}}}}"#);
        let finish = match (rtj.as_str(), attempt.as_str(), n) {
            ("flaky", "1", 1) => (Outcome::Disrupted, String::new()),
            ("flaky", "1", _) => (Outcome::Fail(75), "CUDA out of memory".to_string()),
            ("broken", _, _) => (Outcome::Fail(3), "FLYWHEEL_DATASET_SHA256 does not match the dataset".to_string()),
            ("doomed", _, _) => (Outcome::Fail(1), "segfault".to_string()),
            ("liar", _, _) => (Outcome::Succeed, "all done!".to_string()),
            // The seam a real cluster showed: the trainer reports where it wrote, a path of its
            // own pod, instead of the URI serving loads from.
            ("mountpath", _, _) => {
                let dir = env_of(pod, "FLYWHEEL_OUTPUT_DIR").unwrap_or_default();
                (Outcome::Succeed, format!(r#"{{"version":"{version}","uri":"{dir}"}}"#))
            }
            _ => (Outcome::Succeed, ok),
        };
        Some(PodBehavior {
            ready_after: Duration::from_millis(50),
            finish: Some((Duration::from_millis(300), finish.0, finish.1)),
        })
    });
    let sim = SimConfig {
        workloads: WorkloadConfig { script: Some(script), ..WorkloadConfig::default() },
        ..SimConfig::default()
    };
    let l = Loop::start("loop-retry", sim).await;
    if l.cluster.sim_only("a scripted trainer").is_none() {
        l.stop().await;
        return;
    }
    let rtjs: Api<RetrainJob> = l.api();
    for (name, retries) in [("flaky", 1), ("broken", 3), ("doomed", 2), ("liar", 2), ("mountpath", 2)] {
        rtjs.create(&PostParams::default(), &manual(name, retries)).await.unwrap_or_else(|e| panic!("{e}"));
    }
    let finished = |r: &RetrainJob| {
        r.status.as_ref().is_some_and(|s| matches!(s.phase, RetrainPhase::Succeeded | RetrainPhase::Failed))
    };

    let flaky = until(&rtjs, "flaky", "finished", 60, finished).await.status.unwrap_or_default();
    assert_eq!(flaky.phase, RetrainPhase::Succeeded, "{flaky:?}");
    let outcomes: Vec<_> = flaky.attempts.iter().map(|a| (a.job_name.clone(), a.outcome, a.exit_code)).collect();
    assert_eq!(
        outcomes,
        vec![
            ("flaky-1".to_string(), Some(AttemptOutcome::Failed), Some(75)),
            ("flaky-2".to_string(), Some(AttemptOutcome::Succeeded), Some(0)),
        ],
        "the preemption did not count: the Job of attempt 1 ran a second pod"
    );
    assert!(flaky.attempts[0].message.as_deref().unwrap_or("").contains("out of memory"));
    assert_eq!(pods_seen.lock().map(|m| m.get("flaky/1").copied()).unwrap_or_default(), Some(2));
    assert_eq!(flaky.result.map(|r| r.version), Some("flaky-v".to_string()));

    let broken = until(&rtjs, "broken", "finished", 60, finished).await.status.unwrap_or_default();
    assert_eq!((broken.phase, broken.attempt_count), (RetrainPhase::Failed, 1), "no retry of bad configuration");
    assert_eq!(broken.attempts[0].outcome, Some(AttemptOutcome::BadConfiguration));
    let stalled = broken.conditions.iter().find(|c| c.type_ == "Stalled").cloned().unwrap_or_else(|| panic!("Stalled"));
    assert_eq!((stalled.status, stalled.reason.as_str()), (ConditionStatus::True, "BadConfiguration"));
    assert!(stalled.message.contains("does not match"), "{}", stalled.message);

    let doomed = until(&rtjs, "doomed", "finished", 60, finished).await.status.unwrap_or_default();
    assert_eq!((doomed.phase, doomed.attempt_count), (RetrainPhase::Failed, 3), "1 attempt + 2 retries");
    let reason = doomed.conditions.iter().find(|c| c.type_ == "Stalled").map(|c| c.reason.clone());
    assert_eq!(reason.as_deref(), Some("RetriesExhausted"));

    let liar = until(&rtjs, "liar", "finished", 60, finished).await.status.unwrap_or_default();
    assert_eq!((liar.phase, liar.attempt_count), (RetrainPhase::Failed, 1));
    assert_eq!(liar.attempts[0].outcome, Some(AttemptOutcome::MalformedResult));
    let reason = liar.conditions.iter().find(|c| c.type_ == "Stalled").map(|c| c.reason.clone());
    assert_eq!(reason.as_deref(), Some("MalformedResult"));

    let mountpath = until(&rtjs, "mountpath", "finished", 60, finished).await.status.unwrap_or_default();
    assert_eq!((mountpath.phase, mountpath.attempt_count), (RetrainPhase::Failed, 1), "{mountpath:?}");
    assert_eq!(mountpath.attempts[0].outcome, Some(AttemptOutcome::MalformedResult));
    let message = mountpath.attempts[0].message.clone().unwrap_or_default();
    assert!(
        message.contains("/var/run/flywheel/output-claim/mountpath") && message.contains("FLYWHEEL_OUTPUT_URI"),
        "{message}"
    );
    assert!(mountpath.result.is_none() && mountpath.handed_over_at.is_none(), "nothing is handed over");

    // One Job per attempt, no more.
    let jobs: Api<Job> = l.api();
    let mut names: Vec<String> = jobs
        .list(&ListParams::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .items
        .into_iter()
        .filter_map(|j| j.metadata.name)
        .collect();
    names.sort();
    assert_eq!(names, ["broken-1", "doomed-1", "doomed-2", "doomed-3", "flaky-1", "flaky-2", "liar-1", "mountpath-1"]);
    l.stop().await;
}

/// A RetrainJob's result that a ModelDeployment cannot serve (here: its claim does not exist)
/// never jams the ModelDeployment: the candidate is refused with a history entry and a Warning
/// Event, stable keeps serving, and the policy-side hold ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_serving_cannot_load_is_rejected_and_stable_keeps_serving() {
    let script: flywheel::sim::PodScript = Arc::new(move |pod: &Value| {
        let uri = env_of(pod, "FLYWHEEL_OUTPUT_URI")?;
        let version = env_of(pod, "FLYWHEEL_VERSION").unwrap_or_default();
        Some(PodBehavior {
            ready_after: Duration::from_millis(50),
            finish: Some((
                Duration::from_millis(300),
                Outcome::Succeed,
                format!(r#"{{"version":"{version}","uri":"{uri}"}}"#),
            )),
        })
    });
    let sim = SimConfig {
        workloads: WorkloadConfig { script: Some(script), ..WorkloadConfig::default() },
        ..SimConfig::default()
    };
    let l = Loop::start("loop-reject", sim).await;
    if l.cluster.sim_only("a scripted trainer").is_none() {
        l.stop().await;
        return;
    }
    let mds: Api<ModelDeployment> = l.api();
    mds.create(&PostParams::default(), &model_deployment()).await.unwrap_or_else(|e| panic!("{e}"));
    until(&mds, TARGET, "Ready", 60, |m| stable_of(m) == "v1").await;
    let mut rtj = manual("orphan", 0);
    rtj.spec.promotion = flywheel::api::Promotion::Canary;
    rtj.spec.output_uri = "pvc://no-such-claim/orphan".into();
    let rtjs: Api<RetrainJob> = l.api();
    rtjs.create(&PostParams::default(), &rtj).await.unwrap_or_else(|e| panic!("{e}"));
    let done =
        until(&rtjs, "orphan", "handed over", 60, |r| r.status.as_ref().is_some_and(|s| s.handed_over_at.is_some()))
            .await;
    assert_eq!(done.status.and_then(|s| s.result).map(|r| r.uri), Some("pvc://no-such-claim/orphan".to_string()));
    let md = until(&mds, TARGET, "the candidate refused", 30, |m| {
        m.status.as_ref().is_some_and(|s| s.history.last().is_some_and(|h| h.version == "orphan-v"))
    })
    .await;
    let status = md.status.unwrap_or_default();
    let entry = status.history.last().cloned().unwrap_or_else(|| panic!("no history"));
    assert_eq!((entry.type_, entry.reason.as_str()), (HistoryType::Rejected, "MissingPersistentVolumeClaim"));
    assert!(entry.message.contains("no-such-claim"), "{}", entry.message);
    assert!(status.candidate.is_none() && status.canary.is_none(), "{status:?}");
    assert_eq!(status.stable.map(|s| s.version), Some("v1".to_string()), "stable keeps serving");
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready").cloned().unwrap_or_else(|| panic!("Ready"));
    assert_eq!(ready.status, ConditionStatus::True, "not stalled: {ready:?}");
    let events: Api<Event> = l.api();
    let warned = eventually(Duration::from_secs(10), || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items.into_iter().find(|e| e.reason.as_deref() == Some("CandidateRejected"))
        }
    })
    .await
    .unwrap_or_else(|| panic!("no CandidateRejected Event"));
    assert_eq!(warned.type_.as_deref(), Some("Warning"));
    // No canary Deployment was ever made for it.
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = l.api();
    assert!(deployments.get_opt(&format!("{TARGET}-canary")).await.unwrap_or_else(|e| panic!("{e}")).is_none());
    l.stop().await;
}

/// A finished Job removed before the operator saw its end (the TTL-after-finished controller
/// deletes it with foreground propagation; a user may delete it in the background) is recorded
/// from its pods, which the result finalizer keeps: never a "disruption", never a second run of
/// the attempt. Once recorded, the pods are released and go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_removed_after_it_finished_is_recorded_not_run_again() {
    use kube::api::{DeleteParams, PropagationPolicy};
    let script: flywheel::sim::PodScript = Arc::new(move |pod: &Value| {
        let uri = env_of(pod, "FLYWHEEL_OUTPUT_URI")?;
        let version = env_of(pod, "FLYWHEEL_VERSION").unwrap_or_default();
        Some(PodBehavior {
            ready_after: Duration::from_millis(50),
            finish: Some((
                Duration::from_millis(500),
                Outcome::Succeed,
                format!(r#"{{"version":"{version}","uri":"{uri}"}}"#),
            )),
        })
    });
    let sim = SimConfig {
        workloads: WorkloadConfig { script: Some(script), ..WorkloadConfig::default() },
        ..SimConfig::default()
    };
    let mut l = Loop::start("loop-ttl", sim).await;
    if l.cluster.sim_only("a scripted trainer").is_none() {
        l.stop().await;
        return;
    }
    let rtjs: Api<RetrainJob> = l.api();
    let jobs: Api<Job> = l.api();
    let pods: Api<k8s_openapi::api::core::v1::Pod> = l.api();
    // The third: the operator made the Job and went down before it recorded the attempt (the
    // Job is made here with the operator's own builder, the operator down from the start).
    for (name, propagation, unrecorded) in [
        ("ttl-fg", PropagationPolicy::Foreground, false),
        ("ttl-bg", PropagationPolicy::Background, false),
        ("ttl-unrecorded", PropagationPolicy::Background, true),
    ] {
        let mut rtj = manual(name, 2);
        rtj.spec.trainer.ttl_seconds_after_finished = 0;
        if unrecorded && let Some(op) = l.op.take() {
            op.shutdown().await;
        }
        let made = rtjs.create(&PostParams::default(), &rtj).await.unwrap_or_else(|e| panic!("{e}"));
        let job = format!("{name}-1");
        if unrecorded {
            let settings = flywheel::operator::model_deployment::children::ChildSettings {
                operator_image: "flywheel:test".into(),
                collector_url: None,
                collector_token_secret: "t".into(),
            };
            let built =
                flywheel::operator::retrain_job::job::build(&made, 1, &settings).unwrap_or_else(|e| panic!("{e}"));
            jobs.create(&PostParams::default(), &built).await.unwrap_or_else(|e| panic!("{e}"));
        }
        let started = eventually(Duration::from_secs(30), || {
            let jobs = jobs.clone();
            let job = job.clone();
            async move { jobs.get_opt(&job).await.ok().flatten() }
        })
        .await
        .unwrap_or_else(|| panic!("no Job {job}"));
        // The floor: time to read the Job even without the finalizer.
        assert_eq!(started.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished), Some(60));
        // The operator goes down; the Job finishes and is removed meanwhile.
        if let Some(op) = l.op.take() {
            op.shutdown().await;
        }
        let complete = eventually(Duration::from_secs(30), || {
            let jobs = jobs.clone();
            let job = job.clone();
            async move {
                let j = jobs.get(&job).await.ok()?;
                let done = j.status?.conditions?.iter().any(|c| c.type_ == "Complete" && c.status == "True");
                done.then_some(())
            }
        })
        .await;
        assert!(complete.is_some(), "{job} completed");
        jobs.delete(&job, &DeleteParams { propagation_policy: Some(propagation.clone()), ..DeleteParams::default() })
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let selector = format!("flywheel.dev/retrain-job={name}");
        let held = pods.list(&ListParams::default().labels(&selector)).await.unwrap_or_else(|e| panic!("{e}")).items;
        assert!(!held.is_empty(), "{name}: the result finalizer keeps the pod while the operator is down");
        l.op = Some(l.start_operator().await);
        let done = until(&rtjs, name, "recorded", 60, |r| {
            r.status.as_ref().is_some_and(|s| matches!(s.phase, RetrainPhase::Succeeded | RetrainPhase::Failed))
        })
        .await
        .status
        .unwrap_or_default();
        assert_eq!(done.phase, RetrainPhase::Succeeded, "{name}: {done:?}");
        let outcomes: Vec<_> = done.attempts.iter().map(|a| (a.job_name.clone(), a.outcome)).collect();
        assert_eq!(outcomes, vec![(job.clone(), Some(AttemptOutcome::Succeeded))], "{name}: recorded, not run again");
        // Read from the kept pods: a Job of the same name made again would have run the
        // attempt a second time and been recorded from its own end.
        // (In the foreground the Job waits for its pods, so it may be read instead.)
        let message = done.attempts.first().and_then(|a| a.message.clone()).unwrap_or_default();
        if propagation == PropagationPolicy::Background {
            assert!(message.contains("was removed after it finished"), "{name}: recorded from its pods: {message}");
        }
        let again = jobs.get_opt(&job).await.unwrap_or_else(|e| panic!("{e}")).and_then(|j| j.metadata.uid);
        assert!(again.is_none_or(|uid| Some(uid) == started.metadata.uid), "{name}: {job} not made again");
        assert_eq!(done.result.map(|r| r.uri), Some(format!("pvc://models/{name}")));
        // Released: the pods and the Job go (60 s: eleven loops share two cores in CI).
        let gone = eventually(Duration::from_secs(60), || {
            let pods = pods.clone();
            let jobs = jobs.clone();
            let selector = selector.clone();
            let job = job.clone();
            async move {
                let left = pods.list(&ListParams::default().labels(&selector)).await.ok()?.items;
                (left.is_empty() && jobs.get_opt(&job).await.ok()?.is_none()).then_some(())
            }
        })
        .await;
        assert!(gone.is_some(), "{name}: the pods were released and removed");
        assert!(jobs.get_opt(&format!("{name}-2")).await.unwrap_or_else(|e| panic!("{e}")).is_none(), "no second run");
    }
    l.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_operator_converges_without_duplicates() {
    use rand::Rng;
    let runs: usize = std::env::var("FLYWHEEL_CRASH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    for run in 0..runs {
        let mut l = Loop::start("loop-crash", SimConfig::default()).await;
        // Kill the operator at random points of the whole scenario and start a new one, until
        // the scenario is done; the last one runs to the end.
        let stop = tokio_util::sync::CancellationToken::new();
        let kills = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let chaos = {
            let stop = stop.clone();
            let kills = kills.clone();
            let op = l.op.take();
            let base = l.base.clone();
            let client = l.cluster.client.clone();
            let scope = l.ns.name.clone();
            tokio::spawn(async move {
                let mut op = op;
                let start = |client: kube::Client, base: String| {
                    let scope = scope.clone();
                    async move {
                        let config = OperatorConfig {
                            collector_url: Some(base.clone()),
                            collector_token: Some(TOKEN.to_string()),
                            analysis: Arc::new(CollectorAnalysis::new(&base, Some(TOKEN.to_string()))),
                            ..OperatorConfig::local().scoped_to(&scope)
                        };
                        operator::start(client, config).await.unwrap_or_else(|e| panic!("{e}"))
                    }
                };
                while kills.load(std::sync::atomic::Ordering::Relaxed) < 30 {
                    let wait = rand::rng().random_range(100..900);
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_millis(wait)) => {}
                    }
                    if let Some(o) = op.take() {
                        o.kill();
                    }
                    kills.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let pause = rand::rng().random_range(0..200);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    op = Some(start(client.clone(), base.clone()).await);
                }
                op
            })
        };
        let latency = cycle(&l, 340, HistoryType::Promoted, Stress::Crashing).await;
        stop.cancel();
        l.op = chaos.await.unwrap_or_else(|e| panic!("{e}"));
        let jobs: Api<Job> = l.api();
        let mds: Api<ModelDeployment> = l.api();
        let all = l.retrain_jobs().await;
        assert_eq!(all.len(), 1, "run {run}: one RetrainJob for one trigger");
        let job_names: Vec<String> = jobs
            .list(&ListParams::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .items
            .into_iter()
            .filter_map(|j| j.metadata.name)
            .collect();
        assert_eq!(job_names, [format!("{POLICY}-1-1")], "run {run}: one Job for one attempt");
        let md = mds.get(TARGET).await.unwrap_or_else(|e| panic!("{e}"));
        let promoted = md.status.as_ref().map_or(0, |s| s.history.iter().filter(|h| h.version == NEW_VERSION).count());
        assert_eq!(promoted, 1, "run {run}: one verdict");
        eprintln!(
            "crash run {run}: {} operator kills, converged; trigger latency {} ms",
            kills.load(std::sync::atomic::Ordering::Relaxed),
            latency.as_millis()
        );
        l.stop().await;
    }
}

/// The three real controllers, through the whole improve scenario, while the API server fails
/// 30 % of all writes (500, 429, 409), drops every watch after a second and compacts its
/// history so watches resume with a 410: they converge with one RetrainJob, one Job and one
/// verdict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_converges_under_api_faults() {
    let l = Loop::start("loop-faults", SimConfig::default()).await;
    if l.cluster.sim_only("fault injection").is_none() {
        l.stop().await;
        return;
    }
    cycle(&l, 340, HistoryType::Promoted, Stress::ApiFaults).await;
    let injected = l.cluster.sim.as_ref().map_or(0, |s| s.faults().injected());
    assert!(injected >= 3, "faults were injected ({injected})");
    assert_eq!(l.retrain_jobs().await.len(), 1, "one RetrainJob for one trigger");
    let jobs: Api<Job> = l.api();
    let job_names: Vec<String> = jobs
        .list(&ListParams::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .items
        .into_iter()
        .filter_map(|j| j.metadata.name)
        .collect();
    assert_eq!(job_names, [format!("{POLICY}-1-1")], "one Job for one attempt");
    let mds: Api<ModelDeployment> = l.api();
    let md = mds.get(TARGET).await.unwrap_or_else(|e| panic!("{e}"));
    let verdicts = md.status.as_ref().map_or(0, |s| s.history.iter().filter(|h| h.version == NEW_VERSION).count());
    assert_eq!(verdicts, 1, "one verdict");
    eprintln!("api faults: {injected} writes failed on purpose; converged");
    l.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_collector_shows_in_status_and_nothing_fires() {
    let mut l = Loop::start("loop-nocollector", SimConfig::default()).await;
    if let Some(op) = l.op.take() {
        op.shutdown().await;
    }
    // Port 1 on loopback: connections are refused.
    let config = OperatorConfig {
        collector_url: Some("http://127.0.0.1:1".into()),
        collector_token: Some(TOKEN.to_string()),
        ..OperatorConfig::local().scoped_to(&l.ns.name)
    };
    l.op = Some(operator::start(l.cluster.client.clone(), config).await.unwrap_or_else(|e| panic!("{e}")));
    let mds: Api<ModelDeployment> = l.api();
    let policies: Api<FeedbackPolicy> = l.api();
    mds.create(&PostParams::default(), &model_deployment()).await.unwrap_or_else(|e| panic!("{e}"));
    policies.create(&PostParams::default(), &policy("auto", 0)).await.unwrap_or_else(|e| panic!("{e}"));
    let p = until(&policies, POLICY, "the failure in status", 30, |p| {
        p.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == ConditionStatus::False && c.reason == "CollectorUnreachable")
        })
    })
    .await;
    let ready =
        p.status.and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready")).unwrap_or_else(|| panic!("Ready"));
    assert!(ready.message.contains("did not answer"), "{}", ready.message);
    assert!(l.retrain_jobs().await.is_empty());
    l.stop().await;
}

/// The evaluation gate: a candidate worse on the held-out rows than its base is rejected, with
/// no canary and no user traffic; a better one goes on to the canary, and its evaluation reaches
/// the ModelDeployment's history with its lineage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_evaluation_gate_rejects_a_worse_candidate_and_passes_a_better_one() {
    let script: flywheel::sim::PodScript = Arc::new(move |pod: &Value| {
        let uri = env_of(pod, "FLYWHEEL_OUTPUT_URI")?;
        let version = env_of(pod, "FLYWHEEL_VERSION").unwrap_or_default();
        // The held-out loss per answer token of the candidate against the base's on the same rows.
        let loss = if version.starts_with("worse") { 1.95 } else { 1.55 };
        Some(PodBehavior {
            ready_after: Duration::from_millis(50),
            finish: Some((
                Duration::from_millis(300),
                Outcome::Succeed,
                format!(
                    r#"{{"version":"{version}","uri":"{uri}","metrics":{{"evalLoss":{loss},"evalLossBefore":1.8}}}}"#
                ),
            )),
        })
    });
    let sim = SimConfig {
        workloads: WorkloadConfig { script: Some(script), ..WorkloadConfig::default() },
        ..SimConfig::default()
    };
    let l = Loop::start("loop-eval", sim).await;
    if l.cluster.sim_only("a scripted trainer").is_none() {
        l.stop().await;
        return;
    }
    let mds: Api<ModelDeployment> = l.api();
    let mut md = model_deployment();
    md.spec.rollout = Some(
        serde_json::from_value(json!({"steps": [{"weight": 50, "gate": "Pause", "pauseSeconds": 1}]}))
            .unwrap_or_else(|e| panic!("{e}")),
    );
    mds.create(&PostParams::default(), &md).await.unwrap_or_else(|e| panic!("{e}"));
    until(&mds, TARGET, "Ready", 60, |m| stable_of(m) == "v1").await;
    let rtjs: Api<RetrainJob> = l.api();
    let gated = |name: &str| {
        let mut r = manual(name, 0);
        r.spec.promotion = flywheel::api::Promotion::Canary;
        r.spec.evaluation = serde_json::from_value(json!({"rules": [{"metric": "evalLoss", "minImprovement": 0.05}]}))
            .unwrap_or_else(|e| panic!("{e}"));
        r
    };
    rtjs.create(&PostParams::default(), &gated("worse")).await.unwrap_or_else(|e| panic!("{e}"));
    let rejected = until(&rtjs, "worse", "judged", 60, |r| {
        r.status
            .as_ref()
            .is_some_and(|s| matches!(s.phase, RetrainPhase::Rejected | RetrainPhase::Succeeded | RetrainPhase::Failed))
    })
    .await
    .status
    .unwrap_or_default();
    assert_eq!(rejected.phase, RetrainPhase::Rejected, "{rejected:?}");
    let accepted =
        rejected.conditions.iter().find(|c| c.type_ == "Accepted").cloned().unwrap_or_else(|| panic!("Accepted"));
    assert_eq!(accepted.status, ConditionStatus::False);
    assert_eq!(accepted.message, "evalLoss 1.9500 must be at least 0.0500 below the base's 1.8000");
    assert!(rejected.handed_over_at.is_none());
    // No canary, no user traffic: the candidate never reached the ModelDeployment.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let md_now = mds.get(TARGET).await.unwrap_or_else(|e| panic!("{e}"));
    let status = md_now.status.clone().unwrap_or_default();
    assert!(status.candidate.is_none() && status.canary.is_none() && status.history.is_empty(), "{status:?}");
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = l.api();
    assert!(deployments.get_opt(&format!("{TARGET}-canary")).await.unwrap_or_else(|e| panic!("{e}")).is_none());

    rtjs.create(&PostParams::default(), &gated("better")).await.unwrap_or_else(|e| panic!("{e}"));
    let promoted = until(&mds, TARGET, "the better candidate promoted", 60, |m| {
        m.status.as_ref().is_some_and(|s| s.history.iter().any(|h| h.version == "better-v"))
    })
    .await;
    let entry = promoted
        .status
        .and_then(|s| s.history.into_iter().find(|h| h.version == "better-v"))
        .unwrap_or_else(|| panic!("history"));
    assert_eq!(entry.type_, HistoryType::Promoted);
    let evaluation = entry.lineage.map(|l| l.evaluation).unwrap_or_default();
    assert_eq!(evaluation.len(), 1);
    assert!(
        evaluation[0].passed && evaluation[0].candidate == Some(1.55) && evaluation[0].base == Some(1.8),
        "{evaluation:?}"
    );
    l.stop().await;
}

/// Kueue, stood in by the test: the Job is created suspended with the queue's label and waits;
/// "admitting" unsuspends it; "preempting" suspends it again (its pod goes, as a disruption).
/// The RetrainJob waits without failing, shows `Queued` with the queue's name, starts when
/// admitted, survives the preemption without using a retry (it has none), and has one Job for its
/// one attempt throughout; the Job's active deadline counts from its last admission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_retrain_waits_for_admission_and_survives_a_preemption() {
    let script: flywheel::sim::PodScript = Arc::new(move |pod: &Value| {
        let uri = env_of(pod, "FLYWHEEL_OUTPUT_URI")?;
        let version = env_of(pod, "FLYWHEEL_VERSION").unwrap_or_default();
        Some(PodBehavior {
            ready_after: Duration::from_millis(50),
            finish: Some((
                Duration::from_millis(2500),
                Outcome::Succeed,
                format!(r#"{{"version":"{version}","uri":"{uri}"}}"#),
            )),
        })
    });
    let sim = SimConfig {
        workloads: WorkloadConfig { script: Some(script), ..WorkloadConfig::default() },
        ..SimConfig::default()
    };
    let l = Loop::start("loop-kueue", sim).await;
    if l.cluster.sim_only("a scripted trainer").is_none() {
        l.stop().await;
        return;
    }
    let rtjs: Api<RetrainJob> = l.api();
    let jobs: Api<Job> = l.api();
    let pods: Api<k8s_openapi::api::core::v1::Pod> = l.api();
    let mut rtj = manual("queued", 0);
    rtj.spec.trainer.queue_name = Some("gpu-queue".into());
    rtjs.create(&PostParams::default(), &rtj).await.unwrap_or_else(|e| panic!("{e}"));
    let queued =
        until(&rtjs, "queued", "Queued", 30, |r| r.status.as_ref().is_some_and(|s| s.phase == RetrainPhase::Queued))
            .await;
    let condition = queued.status.unwrap_or_default().conditions.into_iter().find(|c| c.type_ == "Queued");
    let condition = condition.unwrap_or_else(|| panic!("a Queued condition"));
    assert_eq!(condition.status, ConditionStatus::True);
    assert!(condition.message.contains("gpu-queue"), "{}", condition.message);
    let job = jobs.get("queued-1").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(kube::ResourceExt::labels(&job).get("kueue.x-k8s.io/queue-name").map(String::as_str), Some("gpu-queue"));
    assert_eq!(job.spec.as_ref().and_then(|s| s.suspend), Some(true));
    // Waiting in the queue: no pod, no failure, however long.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let waiting = rtjs.get("queued").await.unwrap_or_else(|e| panic!("{e}")).status.unwrap_or_default();
    assert_eq!((waiting.phase, waiting.attempt_count), (RetrainPhase::Queued, 1));
    let selector = "flywheel.dev/retrain-job=queued";
    assert!(
        pods.list(&ListParams::default().labels(selector)).await.unwrap_or_else(|e| panic!("{e}")).items.is_empty()
    );

    let suspend = |on: bool| {
        let jobs = jobs.clone();
        async move {
            jobs.patch(
                "queued-1",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(json!({"spec": {"suspend": on}})),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        }
    };
    // Admitted, then preempted while it runs.
    suspend(false).await;
    until(&rtjs, "queued", "Running", 30, |r| r.status.as_ref().is_some_and(|s| s.phase == RetrainPhase::Running))
        .await;
    let running = eventually(Duration::from_secs(10), || {
        let pods = pods.clone();
        async move { pods.list(&ListParams::default().labels(selector)).await.ok().filter(|l| !l.items.is_empty()) }
    })
    .await;
    assert!(running.is_some(), "a pod once admitted");
    suspend(true).await;
    until(&rtjs, "queued", "Queued again", 30, |r| r.status.as_ref().is_some_and(|s| s.phase == RetrainPhase::Queued))
        .await;
    let preempted = eventually(Duration::from_secs(10), || {
        let pods = pods.clone();
        async move {
            let list = pods.list(&ListParams::default().labels(selector)).await.ok()?;
            list.items.iter().all(|p| p.metadata.deletion_timestamp.is_some()).then_some(list.items)
        }
    })
    .await
    .unwrap_or_else(|| panic!("the preempted pod goes"));
    assert!(preempted.iter().all(|p| {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "DisruptionTarget" && c.status == "True"))
    }));
    // Admitted again: it runs to the end on the same attempt.
    let admitted_at = k8s_openapi::jiff::Timestamp::now();
    suspend(false).await;
    let done = until(&rtjs, "queued", "finished", 60, |r| {
        r.status.as_ref().is_some_and(|s| matches!(s.phase, RetrainPhase::Succeeded | RetrainPhase::Failed))
    })
    .await
    .status
    .unwrap_or_default();
    assert_eq!((done.phase, done.attempt_count), (RetrainPhase::Succeeded, 1), "{done:?}");
    assert_eq!(done.attempts[0].outcome, Some(AttemptOutcome::Succeeded));
    let job = jobs.get("queued-1").await.unwrap_or_else(|e| panic!("{e}"));
    let started = job.status.and_then(|s| s.start_time).map(|t| t.0).unwrap_or_else(|| panic!("a start time"));
    assert!(started.as_second() >= admitted_at.as_second(), "the active deadline counts from the last admission");
    let names: Vec<String> = jobs
        .list(&ListParams::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .items
        .into_iter()
        .filter_map(|j| j.metadata.name)
        .collect();
    assert_eq!(names, ["queued-1"], "one Job for the one attempt");
    l.stop().await;
}
