//! The loop with its real parts, on the simulated cluster in process mode: the real operator and
//! the real collector; inference pods whose containers are the real agent (this crate's binary)
//! in front of the real model server (`python -m flywheel_trainer.serve`, CPU, a tiny random
//! model), each pod in a network namespace of its own; simulated users who send chat requests to
//! the Service's ready pods (as kube-proxy picks them) and post feedback on the interaction ids
//! and versions the agent stamped; the policy firing on the collector's statistics; the
//! RetrainJob's Job running the real reference trainer (`python -m flywheel_trainer`) with the
//! environment and volumes the Job builder produced; its output served by the canary's model
//! server; the canary judged on live feedback and promoted.
//!
//! Needs the trainer's environment (`trainer/.venv`) and network namespaces (root, iproute2);
//! without them it prints `SKIPPED` and passes, unless `CI`/`FLYWHEEL_REQUIRE_TRAINER` (the
//! trainer) or `FLYWHEEL_REQUIRE_NETNS` (the network) says they must be there. Sim-only.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Cluster, KUBECONFIG_ENV, eventually};
use flywheel::api::model_deployment::HistoryType;
use flywheel::api::retrain_job::RetrainPhase;
use flywheel::api::{FeedbackPolicy, ModelDeployment, RetrainJob};
use flywheel::collector::{Collector, CollectorConfig};
use flywheel::operator::model_deployment::feedback_analysis::CollectorAnalysis;
use flywheel::operator::{self, OperatorConfig};
use flywheel::sim::{ProcessMode, SimConfig, WorkloadConfig};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "real-loop-token-0123456789abcdef";
const MODEL_SERVER: &str = "flywheel.test/model-server";
const TRAINER: &str = "ghcr.io/flywheel-dev/trainer";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn trainer_python() -> Option<PathBuf> {
    let python = root().join("trainer/.venv/bin/python");
    if python.is_file() {
        return Some(python);
    }
    assert!(
        std::env::var_os("CI").is_none() && std::env::var_os("FLYWHEEL_REQUIRE_TRAINER").is_none(),
        "the trainer's environment is required here: run `bash trainer/ci.sh` first (.ci/run does)"
    );
    eprintln!("SKIPPED: no trainer/.venv (run `bash trainer/ci.sh`)");
    None
}

/// The processes' environment beside what the pod declares: the trainer's package and no hub.
fn process_mode(dir: &Path, python: &Path) -> Result<ProcessMode, String> {
    let py = python.to_string_lossy().to_string();
    ProcessMode::new(dir)
        .image(&operator::default_image(), vec![env!("CARGO_BIN_EXE_flywheel").to_string()])
        .image(TRAINER, vec![py.clone(), "-m".into(), "flywheel_trainer".into()])
        .image(MODEL_SERVER, vec![py, "-m".into(), "flywheel_trainer.serve".into()])
        .env("PYTHONPATH", &root().join("trainer").to_string_lossy())
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_OFFLINE", "1")
        .env("TOKENIZERS_PARALLELISM", "false")
        .env("OMP_NUM_THREADS", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .isolated_network()
        .map_err(|e| e.to_string())
}

const COLOURS: [&str; 8] = ["red", "green", "blue", "yellow", "black", "white", "orange", "purple"];

fn colour_of(item: usize) -> &'static str {
    COLOURS[(item * 5 + 3) % COLOURS.len()]
}

/// What the users did, by the version that answered.
#[derive(Default)]
struct Seen {
    by_version: std::sync::Mutex<BTreeMap<String, usize>>,
    errors: AtomicUsize,
    last_error: std::sync::Mutex<String>,
}

/// Users: each picks a ready pod the Service selects (round robin, as kube-proxy spreads
/// connections), asks a question through the agent, and judges the answer by the version the
/// agent stamped: the base version disappoints (3 in 10 liked, the rest corrected or disliked),
/// a retrained one pleases (9 in 10).
async fn users(client: kube::Client, ns: String, collector: String, seen: Arc<Seen>, stop: CancellationToken) {
    let http = flywheel::http_client::builder().timeout(Duration::from_secs(30)).build().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client, &ns);
    let mut n = 0usize;
    while !stop.is_cancelled() {
        let Some(ip) = pick_pod(&services, &pods, n).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        n += 1;
        let item = n % 24;
        let asked = http
            .post(format!("http://{ip}:8080/v1/chat/completions"))
            .header("x-flywheel-subject", format!("user-{}", n % 50))
            .json(&json!({"model": "tiny", "max_tokens": 4,
                "messages": [{"role": "user", "content": format!("what colour is the item{item} ?")}]}))
            .send()
            .await;
        let answer = match asked {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => {
                note_error(&seen, format!("{ip}: HTTP {}", r.status()));
                continue;
            }
            Err(e) => {
                note_error(&seen, format!("{ip}: {e}"));
                continue;
            }
        };
        let header = |h: &str| answer.headers().get(h).and_then(|v| v.to_str().ok()).map(str::to_string);
        let (Some(version), Some(interaction)) =
            (header("x-flywheel-model-version"), header("x-flywheel-interaction-id"))
        else {
            note_error(&seen, "an answer without the agent's stamps".into());
            continue;
        };
        if let Ok(mut by) = seen.by_version.lock() {
            *by.entry(version.clone()).or_default() += 1;
        }
        let liked = if version == "v1" { n % 10 < 3 } else { n % 10 < 9 };
        let mut f = if liked {
            json!({"kind": "thumbs", "value": true})
        } else if n.is_multiple_of(2) {
            json!({"kind": "correction", "value": format!("the item{item} is {} .", colour_of(item))})
        } else {
            json!({"kind": "thumbs", "value": false})
        };
        f["id"] = json!(format!("f-{n}"));
        f["interactionId"] = json!(interaction);
        f["namespace"] = json!(ns);
        f["deployment"] = json!("support-chat");
        f["version"] = json!(version);
        let posted = http.post(format!("{collector}/v1/feedback")).bearer_auth(TOKEN).json(&[f]).send().await;
        if let Err(e) = posted {
            note_error(&seen, format!("feedback: {e}"));
        }
    }
}

fn note_error(seen: &Seen, e: String) {
    seen.errors.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut last) = seen.last_error.lock() {
        *last = e;
    }
}

/// The IP of the `n`th ready pod the Service `support-chat` selects.
async fn pick_pod(services: &Api<Service>, pods: &Api<Pod>, n: usize) -> Option<String> {
    let service = services.get("support-chat").await.ok()?;
    let selector = service.spec?.selector?;
    let labels: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let listed = pods.list(&ListParams::default().labels(&labels.join(","))).await.ok()?;
    let ready: Vec<String> = listed
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
        .collect();
    (!ready.is_empty()).then(|| ready[n % ready.len()].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_parts_turn_the_loop_from_feedback_to_a_promoted_retrained_model() {
    if std::env::var_os(KUBECONFIG_ENV).is_some() {
        eprintln!("SKIPPED: needs the simulated cluster's process mode; {KUBECONFIG_ENV} names a real one");
        return;
    }
    let Some(py) = trainer_python() else { return };
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mode = match process_mode(&dir.path().join("kubelet"), &py) {
        Ok(mode) => Arc::new(mode),
        Err(e) => {
            assert!(std::env::var_os("FLYWHEEL_REQUIRE_NETNS").is_none(), "{e}");
            eprintln!("SKIPPED: {e}");
            return;
        }
    };
    let started = Instant::now();
    let host_ip = mode.host_ip().unwrap_or(std::net::Ipv4Addr::LOCALHOST);
    let cluster = Cluster::start_with(SimConfig {
        workloads: WorkloadConfig { processes: Some(mode.clone()), ..WorkloadConfig::default() },
        ..SimConfig::default()
    })
    .await;
    cluster.install_crds().await;
    let ns = cluster.namespace("real-loop").await;
    let client = cluster.client.clone();

    // The base model on the claim, as a team would have put it there.
    let base_dir = mode.claim_dir(&ns.name, "models").join("base");
    let made = std::process::Command::new(&py)
        .env("PYTHONPATH", root().join("trainer"))
        .args([
            "-c",
            "import sys; from pathlib import Path; from flywheel_trainer import synthetic; \
             synthetic.write_base_model(Path(sys.argv[1]), n_items=24, hidden=64, layers=2, heads=4)",
            &base_dir.to_string_lossy(),
        ])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(made.status.success(), "writing the base model: {}", String::from_utf8_lossy(&made.stderr));
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({"metadata": {"name": "models"},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}}))
    .unwrap_or_else(|e| panic!("{e}"));
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &claim)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // The collector, where the pods reach this machine; its token as the agents' Secret.
    std::fs::write(dir.path().join("tokens"), format!("{TOKEN} write\n")).unwrap_or_else(|e| panic!("{e}"));
    let mut cc = CollectorConfig::new(std::net::SocketAddr::from((host_ip, 0)), dir.path().join("data"));
    cc.token_file = Some(dir.path().join("tokens"));
    let collector = Collector::start(cc).await.unwrap_or_else(|e| panic!("{e}"));
    let base = format!("http://{}", collector.addr());
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "flywheel-collector-token"}, "stringData": {"token": TOKEN},
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    Api::<Secret>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let op = operator::start(
        client.clone(),
        OperatorConfig {
            collector_url: Some(base.clone()),
            collector_token: Some(TOKEN.to_string()),
            analysis: Arc::new(CollectorAnalysis::new(&base, Some(TOKEN.to_string()))),
            ..OperatorConfig::local().scoped_to(&ns.name)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    let mds: Api<ModelDeployment> = Api::namespaced(client.clone(), &ns.name);
    let md: ModelDeployment = serde_json::from_value(json!({
        "apiVersion": "flywheel.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "support-chat"},
        "spec": {
            "model": {"name": "tiny", "version": "v1", "uri": "pvc://models/base"},
            "runtime": {"image": format!("{MODEL_SERVER}:0.1"), "port": 8000,
                        "args": ["--model=$(FLYWHEEL_MODEL_DIR)", "--served-model-name=tiny", "--port=8000", "--max-new-tokens=4"],
                        "readinessProbe": {"httpGet": {"path": "/health", "port": 8000}, "periodSeconds": 1}},
            "replicas": 1,
            "rollout": {"steps": [{"weight": 50, "gate": "Analysis", "deadlineSeconds": 600}],
                        "analysis": {"minSamplesPerArm": 40, "margin": 0.05, "confidence": 0.95, "intervalSeconds": 1}},
        }
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    mds.create(&PostParams::default(), &md).await.unwrap_or_else(|e| panic!("{e}"));

    let seen = Arc::new(Seen::default());
    let stop = CancellationToken::new();
    let traffic = tokio::spawn(users(client.clone(), ns.name.clone(), base.clone(), seen.clone(), stop.clone()));

    let policies: Api<FeedbackPolicy> = Api::namespaced(client.clone(), &ns.name);
    let policy: FeedbackPolicy = serde_json::from_value(json!({
        "apiVersion": "flywheel.dev/v1alpha1", "kind": "FeedbackPolicy",
        "metadata": {"name": "support-chat-quality"},
        "spec": {
            "targetRef": {"name": "support-chat"},
            "windowSeconds": 3600,
            "triggers": {"minSamples": 40, "qualityBelow": 0.6},
            "cooldownSeconds": 3600,
            "maxRetrainsPerDay": 2,
            "dataset": {"minRows": 10, "heldOutFraction": 0.1, "formats": ["SFT", "DPO"]},
            "trainer": {"image": format!("{TRAINER}:0.1.0"), "retries": 0, "deadlineSeconds": 600,
                        "hyperparameters": {"maxSteps": "3", "batchSize": "4", "mergeAdapter": "true", "seed": "1"}},
            "outputUriPrefix": "pvc://models/",
            "promotion": "Canary",
        }
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    policies.create(&PostParams::default(), &policy).await.unwrap_or_else(|e| panic!("{e}"));

    let promoted = eventually(Duration::from_secs(280), || {
        let mds = mds.clone();
        async move {
            let md = mds.get("support-chat").await.ok()?;
            let status = md.status.clone()?;
            let entry = status.history.iter().find(|h| h.type_ == HistoryType::Promoted)?.clone();
            (status.stable.as_ref()?.version != "v1").then_some((md, entry))
        }
    })
    .await;
    stop.cancel();
    let _stopped = traffic.await;
    let by_version = seen.by_version.lock().map(|b| b.clone()).unwrap_or_default();
    let errors = seen.errors.load(Ordering::Relaxed);
    let last_error = seen.last_error.lock().map(|e| e.clone()).unwrap_or_default();
    let rtjs = Api::<RetrainJob>::namespaced(client.clone(), &ns.name)
        .list(&ListParams::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let Some((md, entry)) = promoted else {
        panic!(
            "not promoted after {:?}; answers by version {by_version:?}; {errors} errors (last: {last_error}); md status: {:?}; retrain jobs: {:?}",
            started.elapsed(),
            mds.get("support-chat").await.ok().and_then(|m| m.status),
            rtjs.items.iter().map(|r| r.status.clone()).collect::<Vec<_>>()
        );
    };
    let stable = md.status.as_ref().and_then(|s| s.stable.clone()).unwrap_or_else(|| panic!("no stable"));
    assert_eq!(rtjs.items.len(), 1, "one retrain");
    let rtj_status = rtjs.items[0].status.clone().unwrap_or_default();
    assert_eq!(rtj_status.phase, RetrainPhase::Succeeded);
    let result = rtj_status.result.unwrap_or_else(|| panic!("no result"));
    assert_eq!(stable.version, result.version, "the trained version is stable");
    assert_eq!(stable.uri, result.uri);
    assert_eq!(entry.version, result.version);
    // The trained model is on the claim where the canary's server loaded it, and users were
    // answered by both versions through the real agents.
    let path = result.uri.strip_prefix("pvc://models/").unwrap_or_else(|| panic!("{}", result.uri));
    let written = mode.claim_dir(&ns.name, "models").join(path);
    assert!(written.join("model.safetensors").is_file(), "{}", written.display());
    assert!(by_version.get("v1").is_some_and(|n| *n >= 40), "{by_version:?}");
    assert!(by_version.get(&result.version).is_some_and(|n| *n >= 20), "{by_version:?}");
    eprintln!(
        "the loop turned in {:?}: answers by version {by_version:?}, {errors} request errors (last: {last_error})",
        started.elapsed()
    );
    op.shutdown().await;
    collector.shutdown().await;
    ns.cleanup().await;
    cluster.stop().await;
    // Every pod's process started in its pod's directory under the kubelet's root: none is left.
    let root = dir.path().join("kubelet");
    let mut left = Vec::new();
    for _ in 0..50 {
        left = processes_under(&root);
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(left.is_empty(), "processes outlived the simulated cluster: {left:?}");
    drop(mode);
}

fn processes_under(root: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().chars().all(|c| c.is_ascii_digit()))
        .filter(|e| std::fs::read_link(e.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(root)))
        .filter(|e| !std::fs::read_to_string(e.path().join("stat")).unwrap_or_default().contains(") Z "))
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect()
}
