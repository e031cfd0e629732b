//! The trainer contract across languages, with the real parts on both sides: the collector
//! builds a snapshot from real feedback; the RetrainJob controller's Job builder makes the Job;
//! the reference trainer's real Python (`python -m flywheel_trainer`, CPU, a tiny random model)
//! runs with exactly the Job's environment and volume paths (each mount mapped to a directory of
//! this test, a claim to one directory shared by whoever mounts it); the operator's result
//! parser reads its termination message; and the result, handed to a ModelDeployment, starts a
//! canary whose pods mount the files the trainer wrote.
//!
//! Needs the trainer's environment (`trainer/.venv`, made by `bash trainer/ci.sh`, which
//! `.ci/run` runs first); without it the test prints `SKIPPED` (and fails under CI).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{Cluster, eventually};
use flywheel::api::feedback_policy::{DatasetFormat, DatasetRecipe, SignalMapping};
use flywheel::api::model_deployment::Candidate;
use flywheel::api::retrain_job::{AttemptOutcome, RetrainPhase};
use flywheel::api::{ModelDeployment, RetrainJob};
use flywheel::collector::client::{CollectorClient, recipe};
use flywheel::collector::{Collector, CollectorConfig};
use flywheel::operator::model_deployment::children::{ChildSettings, ModelSource};
use flywheel::operator::retrain_job::{job, result};
use flywheel::operator::{self, OperatorConfig};
use flywheel::sim::{ProcessMode, SimConfig, WorkloadConfig};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const TOKEN: &str = "contract-test-token-0123456789abcdef";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The trainer's Python, or `None` (after saying why) when its environment is not installed.
fn trainer_python() -> Option<PathBuf> {
    let python = root().join("trainer/.venv/bin/python");
    if python.is_file() {
        return Some(python);
    }
    assert!(
        std::env::var_os("CI").is_none() && std::env::var_os("FLYWHEEL_REQUIRE_TRAINER").is_none(),
        "the trainer's environment is required here: run `bash trainer/ci.sh` first (.ci/run does)"
    );
    eprintln!("SKIPPED: no trainer/.venv (run `bash trainer/ci.sh` to install the reference trainer's environment)");
    None
}

/// Run the trainer's Python with `args` and only `env` (plus what Python needs to start).
fn python(python: &Path, args: &[&str], env: &BTreeMap<String, String>) -> std::process::Output {
    let mut cmd = Command::new(python);
    cmd.args(args).env_clear();
    for keep in ["PATH", "HOME", "LANG"] {
        if let Some(v) = std::env::var_os(keep) {
            cmd.env(keep, v);
        }
    }
    cmd.env("PYTHONPATH", root().join("trainer"))
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_OFFLINE", "1")
        .env("TOKENIZERS_PARALLELISM", "false")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .envs(env);
    cmd.output().unwrap_or_else(|e| panic!("running {}: {e}", python.display()))
}

const COLOURS: [&str; 8] = ["red", "green", "blue", "yellow", "black", "white", "orange", "purple"];

/// The synthetic world the tiny model's tokenizer knows (`flywheel_trainer.synthetic`).
fn colour_of(item: usize) -> &'static str {
    COLOURS[(item * 5 + 3) % COLOURS.len()]
}

/// Users of `v1` ask for items' colours; half the answers are wrong and corrected, the others
/// are right and liked.
async fn feedback(http: &reqwest::Client, base: &str, ns: &str) {
    let mut interactions = Vec::new();
    let mut feedback = Vec::new();
    for i in 0..48 {
        let item = i % 24;
        let right = colour_of(item);
        let wrong = COLOURS[(COLOURS.iter().position(|c| *c == right).unwrap_or(0) + 1) % COLOURS.len()];
        let corrected = i % 2 == 0;
        let id = format!("i-{i}");
        let phrasing = if i < 24 { "what colour is the" } else { "tell me the colour of the" };
        interactions.push(json!({
            "id": id, "namespace": ns, "deployment": "support-chat", "version": "v1",
            "prompt": [{"role": "user", "content": format!("{phrasing} item{item} ?")}],
            "answer": format!("the item{item} is {} .", if corrected { wrong } else { right }),
        }));
        feedback.push(if corrected {
            json!({"id": format!("f-{i}"), "interactionId": id, "kind": "correction", "value": format!("the item{item} is {right} .")})
        } else {
            json!({"id": format!("f-{i}"), "interactionId": id, "kind": "thumbs", "value": true})
        });
    }
    for (path, items) in [("/v1/interactions", interactions), ("/v1/feedback", feedback)] {
        let r = http.post(format!("{base}{path}")).bearer_auth(TOKEN).json(&items).send().await;
        let r = r.unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(r.status().as_u16(), 207, "{path}");
    }
}

/// The pod's file system as a kubelet would give it: each volume of the pod a directory here
/// (a claim one directory per claim, shared by every pod that mounts it).
struct Volumes {
    root: PathBuf,
    /// mountPath in the trainer container → directory here.
    mounts: Vec<(String, PathBuf)>,
}

impl Volumes {
    fn claim_dir(root: &Path, claim: &str) -> PathBuf {
        root.join("claims").join(claim)
    }

    fn of(job: &Value, root: &Path, secrets: &BTreeMap<String, BTreeMap<String, String>>) -> Self {
        let pod = &job["spec"]["template"]["spec"];
        let mut dirs: BTreeMap<String, PathBuf> = BTreeMap::new();
        for v in pod["volumes"].as_array().cloned().unwrap_or_default() {
            let name = v["name"].as_str().unwrap_or_default().to_string();
            let dir = if let Some(claim) = v.pointer("/persistentVolumeClaim/claimName").and_then(Value::as_str) {
                Self::claim_dir(root, claim)
            } else if v.get("emptyDir").is_some() {
                root.join("empty").join(&name)
            } else if let Some(secret) = v.pointer("/secret/secretName").and_then(Value::as_str) {
                // Secret volumes: the items the volume projects, written as files.
                let dir = root.join("secrets").join(&name);
                std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
                let data = secrets.get(secret).cloned().unwrap_or_default();
                for item in v.pointer("/secret/items").and_then(Value::as_array).cloned().unwrap_or_default() {
                    let key = item["key"].as_str().unwrap_or_default();
                    let path = item["path"].as_str().unwrap_or(key);
                    if let Some(value) = data.get(key) {
                        std::fs::write(dir.join(path), value).unwrap_or_else(|e| panic!("{e}"));
                    }
                }
                dir
            } else {
                panic!("a volume the test cannot map: {v}");
            };
            std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
            dirs.insert(name, dir);
        }
        let mut mounts = Vec::new();
        for m in pod["containers"][0]["volumeMounts"].as_array().cloned().unwrap_or_default() {
            let volume = m["name"].as_str().unwrap_or_default();
            let mut dir = dirs.get(volume).cloned().unwrap_or_else(|| panic!("mount of an unknown volume {volume}"));
            if let Some(sub) = m["subPath"].as_str() {
                dir = dir.join(sub);
            }
            mounts.push((m["mountPath"].as_str().unwrap_or_default().to_string(), dir));
        }
        // Longest mount path first, so a nested mount wins.
        mounts.sort_by_key(|m| std::cmp::Reverse(m.0.len()));
        Self { root: root.to_path_buf(), mounts }
    }

    /// A path inside the container, as a path here.
    fn host(&self, path: &str) -> Option<PathBuf> {
        self.mounts.iter().find_map(|(at, dir)| {
            let rest = path.strip_prefix(at.as_str())?;
            (rest.is_empty() || rest.starts_with('/')).then(|| dir.join(rest.trim_start_matches('/')))
        })
    }

    /// The container's environment with every in-pod path rewritten to its directory here, and
    /// the termination message path (the kubelet's file) to one here.
    fn env(&self, job: &Value) -> BTreeMap<String, String> {
        let container = &job["spec"]["template"]["spec"]["containers"][0];
        let termination = container["terminationMessagePath"].as_str().unwrap_or("/dev/termination-log").to_string();
        let mut env = BTreeMap::new();
        for e in container["env"].as_array().cloned().unwrap_or_default() {
            let name = e["name"].as_str().unwrap_or_default().to_string();
            assert!(e.get("valueFrom").is_none(), "{name}: the contract's variables are values");
            let value = e["value"].as_str().unwrap_or_default().to_string();
            let value = if value == termination {
                self.root.join("termination-log").to_string_lossy().into_owned()
            } else {
                self.host(&value).map_or(value, |p| p.to_string_lossy().into_owned())
            };
            env.insert(name, value);
        }
        env
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_trainer_runs_in_the_jobs_environment_and_serving_mounts_its_output() {
    let Some(py) = trainer_python() else { return };
    let cluster = Cluster::start().await;
    cluster.install_crds().await;
    let ns = cluster.namespace("contract").await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let files = dir.path().join("pod");

    // The base model on the claim `models`, as a team would have put it there.
    let base_dir = Volumes::claim_dir(&files, "models").join("base");
    let made = python(
        &py,
        &[
            "-c",
            "import sys; from pathlib import Path; from flywheel_trainer import synthetic; \
             synthetic.write_base_model(Path(sys.argv[1]), n_items=24, hidden=64, layers=2, heads=4)",
            &base_dir.to_string_lossy(),
        ],
        &BTreeMap::new(),
    );
    assert!(made.status.success(), "writing the base model: {}", String::from_utf8_lossy(&made.stderr));

    // A real collector with real feedback, and a snapshot built by it.
    std::fs::write(dir.path().join("tokens"), format!("{TOKEN} write\n")).unwrap_or_else(|e| panic!("{e}"));
    let mut cc = CollectorConfig::new("127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")), dir.path().join("data"));
    cc.token_file = Some(dir.path().join("tokens"));
    let collector = Collector::start(cc).await.unwrap_or_else(|e| panic!("{e}"));
    let base = format!("http://{}", collector.addr());
    let http = flywheel::http_client::client();
    feedback(&http, &base, &ns.name).await;
    let client = CollectorClient::new(&base, Some(TOKEN.to_string()));
    let dataset = DatasetRecipe {
        formats: vec![DatasetFormat::Sft, DatasetFormat::Dpo],
        held_out_fraction: 0.1,
        min_rows: 10,
        ..DatasetRecipe::default()
    };
    let snapshot = client
        .snapshot(&ns.name, "support-chat", "2000-01-01T00:00:00Z", recipe(&dataset, &SignalMapping::default()))
        .await
        .unwrap_or_else(|e| panic!("the snapshot: {e}"));

    // The RetrainJob, in the cluster (the Job builder takes the object as the API server keeps it).
    let rtjs: Api<RetrainJob> = Api::namespaced(cluster.client.clone(), &ns.name);
    let rtj: RetrainJob = serde_json::from_value(json!({
        "apiVersion": "flywheel.dev/v1alpha1", "kind": "RetrainJob",
        "metadata": {"name": "support-chat-1"},
        "spec": {
            "targetRef": {"name": "support-chat"},
            "base": {"version": "v1", "uri": "pvc://models/base"},
            "dataset": {"uri": snapshot.uri, "sha256": snapshot.sha256, "formats": ["SFT", "DPO"],
                        "counts": snapshot.counts, "snapshotId": snapshot.id},
            "trainer": {"image": "ghcr.io/flywheel-dev/trainer:0.1.0", "hyperparameters":
                {"maxSteps": "3", "batchSize": "4", "mergeAdapter": "true", "seed": "1"}},
            "outputUri": "pvc://models/support-chat/support-chat-1",
            "promotion": "None",
        }
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    let rtj = rtjs.create(&PostParams::default(), &rtj).await.unwrap_or_else(|e| panic!("{e}"));
    let settings = ChildSettings {
        operator_image: operator::default_image(),
        collector_url: Some(base.clone()),
        collector_token_secret: "flywheel-collector-token".into(),
    };
    let built = job::build(&rtj, 1, &settings).unwrap_or_else(|e| panic!("the Job builder: {e}"));
    let built = serde_json::to_value(&built).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        built["spec"]["template"]["spec"]["initContainers"].is_null(),
        "nothing to fetch: a claim and the collector"
    );

    // Run the trainer as the kubelet would run the Job's container.
    let secrets = BTreeMap::from([(
        "flywheel-collector-token".to_string(),
        BTreeMap::from([("token".to_string(), TOKEN.to_string())]),
    )]);
    let volumes = Volumes::of(&built, &files, &secrets);
    let env = volumes.env(&built);
    assert_eq!(env["FLYWHEEL_OUTPUT_URI"], "pvc://models/support-chat/support-chat-1");
    let ran = python(&py, &["-m", "flywheel_trainer"], &env);
    let stderr = String::from_utf8_lossy(&ran.stderr);
    assert!(ran.status.success(), "the trainer exited {:?}:\n{stderr}", ran.status.code());
    assert!(!stderr.contains(TOKEN), "the token never reaches a log");

    // The operator's parser reads the result; the URI is what serving loads.
    let message = std::fs::read_to_string(files.join("termination-log")).unwrap_or_else(|e| panic!("{e}"));
    let expected = result::Expected { version: None, whole_model: true, output_uri: Some(&rtj.spec.output_uri) };
    let trained = result::parse_result(&message, expected).unwrap_or_else(|e| panic!("{e}: {message}"));
    assert_eq!(trained.uri, rtj.spec.output_uri);
    assert!(trained.metrics.contains_key("evalLoss") && trained.metrics.contains_key("trainRows"), "{trained:?}");
    let Ok(ModelSource::Pvc { claim, path }) = ModelSource::parse(&trained.uri) else {
        panic!("not a claim: {}", trained.uri)
    };
    let written = Volumes::claim_dir(&files, &claim).join(&path);
    for name in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(written.join(name).is_file(), "{name} is not where serving will look ({})", written.display());
    }

    // Hand it to a ModelDeployment, as the RetrainJob controller does: it starts a canary whose
    // pods mount that claim and read the model from that path.
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(cluster.client.clone(), &ns.name);
    let pvc = serde_json::from_value(json!({"metadata": {"name": "models"},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}}))
    .unwrap_or_else(|e| panic!("{e}"));
    claims.create(&PostParams::default(), &pvc).await.unwrap_or_else(|e| panic!("{e}"));
    let op = operator::start(cluster.client.clone(), OperatorConfig::local().scoped_to(&ns.name))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mds: Api<ModelDeployment> = Api::namespaced(cluster.client.clone(), &ns.name);
    let md: ModelDeployment = serde_json::from_value(json!({
        "apiVersion": "flywheel.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "support-chat"},
        "spec": {"model": {"name": "tiny", "version": "v1", "uri": "pvc://models/base"},
                 "runtime": {"image": "example/runtime:1", "port": 8000}, "replicas": 2,
                 "rollout": {"steps": [{"weight": 50, "gate": "Manual"}]}}
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    mds.create(&PostParams::default(), &md).await.unwrap_or_else(|e| panic!("{e}"));
    let stable =
        eventually(Duration::from_secs(60), || {
            let mds = mds.clone();
            async move {
                mds.get("support-chat").await.ok().filter(|m| m.status.as_ref().is_some_and(|s| s.stable.is_some()))
            }
        })
        .await
        .unwrap_or_else(|| panic!("no stable version"));
    let candidate = Candidate {
        version: trained.version.clone(),
        uri: trained.uri.clone(),
        adapter: false,
        handed_over_at: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now())),
        lineage: Some(operator::retrain_job::lineage(&rtj)),
    };
    let patch =
        json!({"metadata": {"resourceVersion": stable.metadata.resource_version}, "status": {"candidate": candidate}});
    mds.patch_status("support-chat", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), &ns.name);
    let canary = eventually(Duration::from_secs(60), || {
        let deployments = deployments.clone();
        async move { deployments.get_opt("support-chat-canary").await.ok().flatten() }
    })
    .await
    .unwrap_or_else(|| panic!("no canary Deployment for {}", trained.version));
    let canary = serde_json::to_value(&canary).unwrap_or_else(|e| panic!("{e}"));
    let pod = &canary["spec"]["template"]["spec"];
    let runtime = pod["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "runtime"))
        .cloned()
        .unwrap_or_else(|| panic!("no runtime container: {pod}"));
    let model_dir = runtime["env"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["name"] == "FLYWHEEL_MODEL_DIR"))
        .and_then(|e| e["value"].as_str())
        .unwrap_or_else(|| panic!("no FLYWHEEL_MODEL_DIR"))
        .to_string();
    // The inference pod's view: its volumes mapped the same way (the claim is the same directory).
    let serving = Volumes::of(
        &json!({"spec": {"template": {"spec": {
        "volumes": pod["volumes"], "containers": [runtime]}}}}),
        &files,
        &BTreeMap::new(),
    );
    let served = serving.host(&model_dir).unwrap_or_else(|| panic!("{model_dir} is on no volume of the canary"));
    assert_eq!(served, written, "the canary reads the model where the trainer wrote it");

    // And what is there loads as a model, as a runtime would load it.
    let load = python(
        &py,
        &[
            "-c",
            "import sys, torch; from transformers import AutoModelForCausalLM, AutoTokenizer; \
             m = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval(); t = AutoTokenizer.from_pretrained(sys.argv[1]); \
             ids = t('what colour is the item3 ?', return_tensors='pt').input_ids; \
             print(m.generate(ids, max_new_tokens=4, do_sample=False).shape[1] > ids.shape[1])",
            &served.to_string_lossy(),
        ],
        &BTreeMap::new(),
    );
    assert!(load.status.success(), "loading the served model: {}", String::from_utf8_lossy(&load.stderr));
    assert_eq!(String::from_utf8_lossy(&load.stdout).trim(), "True");
    op.shutdown().await;
    collector.shutdown().await;
    ns.cleanup().await;
    cluster.stop().await;
}

/// The same contract end to end through the simulated kubelet's process mode: the operator's
/// RetrainJob controller makes the Job, the kubelet runs its pod as the reference trainer's real
/// Python (the trainer image mapped to `python -m flywheel_trainer`) with the pod's environment,
/// its collector token from the Secret and the claim as a directory, and the controller reads
/// the termination message the trainer wrote. A second RetrainJob's trainer reports the mount path
/// it wrote to (the defect the seams issue fixed: a path is not a URI serving can load): the
/// RetrainJob fails `MalformedResult` at once, and nothing is handed over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_runs_the_reference_trainer_through_the_simulated_kubelet() {
    let Some(py) = trainer_python() else { return };
    if std::env::var_os(common::KUBECONFIG_ENV).is_some() {
        eprintln!("SKIPPED: needs the simulated cluster's process mode; {} names a real one", common::KUBECONFIG_ENV);
        return;
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let trainer = root().join("trainer");
    let mode = ProcessMode::new(dir.path().join("kubelet"))
        .image(
            "ghcr.io/flywheel-dev/trainer",
            vec![py.to_string_lossy().to_string(), "-m".into(), "flywheel_trainer".into()],
        )
        .image("flywheel.test/path-reporter", vec!["/bin/sh".into(), "-c".into()])
        .env("PYTHONPATH", &trainer.to_string_lossy())
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_OFFLINE", "1")
        .env("TOKENIZERS_PARALLELISM", "false")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let mode = Arc::new(mode);
    let config = SimConfig {
        workloads: WorkloadConfig { processes: Some(mode.clone()), ..WorkloadConfig::default() },
        ..SimConfig::default()
    };
    let cluster = Cluster::start_with(config).await;
    cluster.install_crds().await;
    let ns = cluster.namespace("kubelet-contract").await;

    let base_dir = mode.claim_dir(&ns.name, "models").join("base");
    let made = python(
        &py,
        &[
            "-c",
            "import sys; from pathlib import Path; from flywheel_trainer import synthetic; \
             synthetic.write_base_model(Path(sys.argv[1]), n_items=24, hidden=64, layers=2, heads=4)",
            &base_dir.to_string_lossy(),
        ],
        &BTreeMap::new(),
    );
    assert!(made.status.success(), "writing the base model: {}", String::from_utf8_lossy(&made.stderr));

    std::fs::write(dir.path().join("tokens"), format!("{TOKEN} write\n")).unwrap_or_else(|e| panic!("{e}"));
    let mut cc = CollectorConfig::new("127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")), dir.path().join("data"));
    cc.token_file = Some(dir.path().join("tokens"));
    let collector = Collector::start(cc).await.unwrap_or_else(|e| panic!("{e}"));
    let base = format!("http://{}", collector.addr());
    feedback(&flywheel::http_client::client(), &base, &ns.name).await;
    let client = CollectorClient::new(&base, Some(TOKEN.to_string()));
    let dataset = DatasetRecipe {
        formats: vec![DatasetFormat::Sft, DatasetFormat::Dpo],
        held_out_fraction: 0.1,
        min_rows: 10,
        ..DatasetRecipe::default()
    };
    let snapshot = client
        .snapshot(&ns.name, "support-chat", "2000-01-01T00:00:00Z", recipe(&dataset, &SignalMapping::default()))
        .await
        .unwrap_or_else(|e| panic!("the snapshot: {e}"));

    // The collector token the Job's container reads, as an installation keeps it.
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), &ns.name);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "flywheel-collector-token"}, "stringData": {"token": TOKEN},
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    secrets.create(&PostParams::default(), &secret).await.unwrap_or_else(|e| panic!("{e}"));
    let op = operator::start(
        cluster.client.clone(),
        OperatorConfig {
            collector_url: Some(base.clone()),
            collector_token: Some(TOKEN.to_string()),
            ..OperatorConfig::local().scoped_to(&ns.name)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    let rtjs: Api<RetrainJob> = Api::namespaced(cluster.client.clone(), &ns.name);
    let spec = |name: &str, image: &str, args: Value| -> RetrainJob {
        serde_json::from_value(json!({
            "apiVersion": "flywheel.dev/v1alpha1", "kind": "RetrainJob",
            "metadata": {"name": name},
            "spec": {
                "targetRef": {"name": "support-chat"},
                "base": {"version": "v1", "uri": "pvc://models/base"},
                "dataset": {"uri": snapshot.uri, "sha256": snapshot.sha256, "formats": ["SFT", "DPO"],
                            "counts": snapshot.counts, "snapshotId": snapshot.id},
                "trainer": {"image": image, "args": args, "hyperparameters":
                    {"maxSteps": "3", "batchSize": "4", "mergeAdapter": "true", "seed": "1"}},
                "outputUri": format!("pvc://models/support-chat/{name}"),
                "promotion": "None",
            }
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    };
    let good = spec("support-chat-1", "ghcr.io/flywheel-dev/trainer:0.1.0", json!([]));
    rtjs.create(&PostParams::default(), &good).await.unwrap_or_else(|e| panic!("{e}"));
    let bad = spec(
        "support-chat-2",
        "flywheel.test/path-reporter:1",
        json!([r#"printf '{"version":"v9","uri":"%s"}' "$FLYWHEEL_OUTPUT_DIR" > "$FLYWHEEL_TERMINATION_LOG""#]),
    );
    rtjs.create(&PostParams::default(), &bad).await.unwrap_or_else(|e| panic!("{e}"));

    let finished = |name: &'static str| {
        let rtjs = rtjs.clone();
        async move {
            eventually(Duration::from_secs(240), || {
                let rtjs = rtjs.clone();
                async move {
                    let r = rtjs.get(name).await.ok()?;
                    let phase = r.status.as_ref().map(|s| s.phase)?;
                    matches!(phase, RetrainPhase::Succeeded | RetrainPhase::Failed | RetrainPhase::Rejected)
                        .then_some(r)
                }
            })
            .await
            .unwrap_or_else(|| panic!("RetrainJob {name} never finished"))
        }
    };
    let refused = finished("support-chat-2").await;
    let status = refused.status.unwrap_or_default();
    assert_eq!(status.phase, RetrainPhase::Failed, "{status:?}");
    assert_eq!(status.attempts.len(), 1, "no retry of a malformed result");
    assert_eq!(status.attempts[0].outcome, Some(AttemptOutcome::MalformedResult), "{status:?}");
    assert!(status.result.is_none(), "nothing is handed over");

    let trained = finished("support-chat-1").await;
    let status = trained.status.unwrap_or_default();
    assert_eq!(status.phase, RetrainPhase::Succeeded, "{status:?}");
    let result = status.result.unwrap_or_else(|| panic!("no result"));
    assert_eq!(result.uri, "pvc://models/support-chat/support-chat-1");
    assert!(result.metrics.contains_key("evalLoss"), "{result:?}");
    let written = mode.claim_dir(&ns.name, "models").join("support-chat/support-chat-1");
    for name in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(written.join(name).is_file(), "{name} is not where serving will look ({})", written.display());
    }
    // The trainer's output is the pod's log, through the API as `kubectl logs` reads it.
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    let trainer_pods =
        pods.list(&kube::api::ListParams::default().labels("job-name")).await.unwrap_or_else(|e| panic!("{e}"));
    let logs = futures::future::join_all(trainer_pods.items.iter().map(|p| {
        let params = kube::api::LogParams { container: Some("trainer".into()), ..Default::default() };
        let pods = pods.clone();
        let name = p.metadata.name.clone().unwrap_or_default();
        async move { pods.logs(&name, &params).await.unwrap_or_default() }
    }))
    .await;
    assert!(logs.iter().any(|l| !l.is_empty()), "the trainer logged something");
    assert!(logs.iter().all(|l| !l.contains(TOKEN)), "the token never reaches a log");
    op.shutdown().await;
    collector.shutdown().await;
    ns.cleanup().await;
    cluster.stop().await;
}
