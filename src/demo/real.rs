//! `flywheel demo --real`: the same loop with the real parts on this machine. The simulated
//! cluster's kubelet runs pods as processes ([`crate::sim::ProcessMode`]), each pod in a network
//! namespace of its own: inference pods are this binary's agent in front of the reference model
//! server (`python -m flywheel_trainer.serve`, CPU, a tiny random model on the `models` claim),
//! and the RetrainJob's Job runs the reference trainer (`python -m flywheel_trainer`, a few
//! steps). The users send real chat requests through the agents of the Service's ready pods and
//! post their reaction to the interaction the agent recorded; how they react follows the
//! scenario's hidden quality of the version the agent stamped.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Api;
use kube::api::ListParams;
use rand::SeedableRng;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::error::DemoError;
use super::scenario::World;
use super::users::{Target, TrafficStats, exchange};
use crate::collector::client::{CollectorClient, Ingest};
use crate::sim::ProcessMode;

/// The image of the inference pods' runtime in `--real` (mapped to the reference model server).
pub const MODEL_SERVER_IMAGE: &str = "flywheel.demo/model-server:0.1.0";
/// The trainer image (mapped to the reference trainer).
pub const TRAINER_IMAGE: &str = "ghcr.io/flywheel-dev/trainer:0.1.0";
/// Replicas of the ModelDeployment (each a model server on the CPU).
pub const REPLICAS: i32 = 2;
/// Where the base model lives on the `models` claim.
pub const BASE_PATH: &str = "base";

/// The reference trainer's environment: its package directory and the virtualenv's Python.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainerEnv {
    /// `trainer/`.
    pub dir: PathBuf,
    /// `trainer/.venv/bin/python`.
    pub python: PathBuf,
}

impl TrainerEnv {
    /// The environment in `dir`, or what to install when it is not there.
    pub fn find(dir: &Path) -> Result<Self, DemoError> {
        let python = dir.join(".venv/bin/python");
        if dir.join("flywheel_trainer").is_dir() && python.is_file() {
            // Pods run in directories of their own: the paths must not be relative.
            let absolute =
                |p: &Path| std::path::absolute(p).map_err(|source| DemoError::Io { path: p.to_path_buf(), source });
            return Ok(Self { dir: absolute(dir)?, python: absolute(&python)? });
        }
        Err(DemoError::Options(format!(
            "--real needs the reference trainer and its environment in {}: from a checkout of Flywheel run \
             `bash trainer/ci.sh` (it makes trainer/.venv with torch, transformers and peft from PyPI, about \
             2.3 GB, and runs the trainer's tests), or pass --trainer-dir",
            dir.join(".venv").display()
        )))
    }

    /// The kubelet's process mode: this binary for Flywheel's image, the trainer and the model
    /// server for theirs, and a network namespace per pod.
    pub fn process_mode(&self, root: &Path) -> Result<ProcessMode, DemoError> {
        let flywheel = std::env::current_exe()
            .map_err(|source| DemoError::Io { path: PathBuf::from("/proc/self/exe"), source })?;
        let py = self.python.to_string_lossy().to_string();
        ProcessMode::new(root)
            .image(&crate::operator::default_image(), vec![flywheel.to_string_lossy().to_string()])
            .image(TRAINER_IMAGE, vec![py.clone(), "-m".into(), "flywheel_trainer".into()])
            .image(MODEL_SERVER_IMAGE, vec![py, "-m".into(), "flywheel_trainer.serve".into()])
            .env("PYTHONPATH", &self.dir.to_string_lossy())
            .env("HF_HUB_OFFLINE", "1")
            .env("TRANSFORMERS_OFFLINE", "1")
            .env("TOKENIZERS_PARALLELISM", "false")
            .env("OMP_NUM_THREADS", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .isolated_network()
            .map_err(|e| DemoError::Options(format!("--real: {e}")))
    }

    /// Write the tiny random base model (the trainer's synthetic one) to `dir`.
    pub fn write_base_model(&self, dir: &Path) -> Result<(), DemoError> {
        let out = std::process::Command::new(&self.python)
            .env("PYTHONPATH", &self.dir)
            .args([
                "-c",
                "import sys; from pathlib import Path; from flywheel_trainer import synthetic; \
                 synthetic.write_base_model(Path(sys.argv[1]), n_items=24, hidden=64, layers=2, heads=4)",
            ])
            .arg(dir)
            .output()
            .map_err(|source| DemoError::Io { path: self.python.clone(), source })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(DemoError::Options(format!(
                "--real: writing the base model failed: {}",
                String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or_default()
            )))
        }
    }
}

/// Most requests a second the real users send (two cores carry the model servers, the agents
/// and the trainer).
pub const MAX_RATE: f64 = 20.0;

/// The demo's ModelDeployment made real: the tiny base model on the claim, served by the
/// reference model server, two replicas and one canary step.
pub fn model_deployment(md: &mut crate::api::ModelDeployment) -> Result<(), serde_json::Error> {
    md.spec.model = serde_json::from_value(json!({
        "name": "tiny", "version": md.spec.model.version, "uri": format!("pvc://{}/{BASE_PATH}", super::resources::MODELS_CLAIM)
    }))?;
    md.spec.runtime = serde_json::from_value(json!({
        "image": MODEL_SERVER_IMAGE,
        "args": ["--model=$(FLYWHEEL_MODEL_DIR)", "--served-model-name=tiny", "--port=8000", "--max-new-tokens=4"],
        "port": 8000,
        "readinessProbe": {"httpGet": {"path": "/health", "port": 8000}, "periodSeconds": 1},
    }))?;
    md.spec.replicas = Some(REPLICAS);
    if let Some(rollout) = md.spec.rollout.as_mut() {
        rollout.steps.truncate(1);
        if let Some(step) = rollout.steps.first_mut() {
            step.weight = 50;
        }
    }
    Ok(())
}

/// The demo's FeedbackPolicy made real: the reference trainer, a few steps on the CPU, merged
/// output; no evaluation gate (the tiny model's held-out loss after three steps says little).
pub fn feedback_policy(policy: &mut crate::api::FeedbackPolicy) -> Result<(), serde_json::Error> {
    policy.spec.trainer = serde_json::from_value(json!({
        "image": TRAINER_IMAGE,
        "hyperparameters": {"maxSteps": "3", "batchSize": "4", "mergeAdapter": "true", "seed": "1"},
        "deadlineSeconds": 600,
        "retries": 1
    }))?;
    policy.spec.evaluation = None;
    Ok(())
}

/// The IPs of the ready pods the Service of `target` selects, as kube-proxy would spread
/// connections over them.
async fn endpoints(client: &kube::Client, target: &Target) -> Vec<String> {
    let services: Api<Service> = Api::namespaced(client.clone(), &target.namespace);
    let Some(selector) = services.get(&target.deployment).await.ok().and_then(|s| s.spec?.selector) else {
        return Vec::new();
    };
    let labels: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &target.namespace);
    let Ok(listed) = pods.list(&ListParams::default().labels(&labels.join(","))).await else { return Vec::new() };
    listed
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
        .collect()
}

/// One user's request through the agent of one of `ips` (the `first`, or the next one when the
/// first refuses the connection: a pod deleted between the endpoint list and the request, as a
/// client behind a Service sees during a rollout and retries): the version and interaction id
/// the agent stamped on the answer.
async fn ask(
    http: &reqwest::Client,
    ips: &[String],
    first: usize,
    messages: &Value,
    subject: &str,
) -> Result<(String, String), String> {
    if ips.is_empty() {
        return Err("no ready pod".into());
    }
    let send = |ip: String| async move {
        let url =
            format!("http://{ip}:{}/v1/chat/completions", crate::operator::model_deployment::children::AGENT_PORT);
        let body = json!({"model": "tiny", "max_tokens": 4, "messages": messages});
        (http.post(url).header("x-flywheel-subject", subject).json(&body).send().await, ip)
    };
    let (mut sent, mut ip) = send(ips[first % ips.len()].clone()).await;
    if sent.as_ref().is_err_and(reqwest::Error::is_connect) && ips.len() > 1 {
        (sent, ip) = send(ips[(first + 1) % ips.len()].clone()).await;
    }
    let answer = sent.map_err(|e| format!("{ip}: {e}"))?;
    if !answer.status().is_success() {
        return Err(format!("{ip}: HTTP {}", answer.status()));
    }
    let header = |h: &str| answer.headers().get(h).and_then(|v| v.to_str().ok()).map(str::to_string);
    match (header(crate::agent::VERSION_HEADER), header(crate::agent::INTERACTION_HEADER)) {
        (Some(v), Some(i)) => Ok((v, i)),
        _ => Err(format!("{ip}: an answer without the agent's stamps")),
    }
}

/// The users of `--real`: `rate` requests a second through the agents; the agents record the
/// interactions, the users post their feedback to the collector.
pub async fn users(
    client: kube::Client,
    collector: CollectorClient,
    target: Target,
    world: Arc<Mutex<World>>,
    rate: f64,
    stats: Arc<Mutex<TrafficStats>>,
    stop: CancellationToken,
) {
    let http = crate::http_client::builder().timeout(Duration::from_secs(30)).build().unwrap_or_default();
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let mut interval = tokio::time::interval(Duration::from_millis(250));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut owed = 0.0_f64;
    let mut last = tokio::time::Instant::now();
    let mut seq: u64 = 0;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        let now = tokio::time::Instant::now();
        owed += rate * now.duration_since(last).as_secs_f64();
        last = now;
        let n = owed.floor() as u64;
        owed -= n as f64;
        let pods = endpoints(&client, &target).await;
        if pods.is_empty() {
            stats.lock().unwrap_or_else(PoisonError::into_inner).unserved += n;
            continue;
        }
        let asks = (0..n).map(|_| {
            seq += 1;
            let pods = pods.clone();
            let ex = exchange(&mut rng, &target, seq, "?", 0.5);
            let subject = ex.interaction["subject"].as_str().unwrap_or_default().to_string();
            let messages = ex.interaction["prompt"].clone();
            let http = http.clone();
            async move { (seq, ask(&http, &pods, seq as usize, &messages, &subject).await) }
        });
        let answers = futures::future::join_all(asks.collect::<Vec<_>>()).await;
        let mut feedback = Vec::new();
        let mut errors = Vec::new();
        for (seq, answered) in answers {
            let (version, interaction) = match answered {
                Ok(a) => a,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            let quality = world.lock().unwrap_or_else(PoisonError::into_inner).quality(&version).unwrap_or(0.5);
            let ex = exchange(&mut rng, &target, seq, &version, quality);
            let mut s = stats.lock().unwrap_or_else(PoisonError::into_inner);
            let c = s.by_version.entry(version).or_default();
            c.requests += 1;
            c.good += u64::from(ex.good);
            if let Some(mut f) = ex.feedback {
                c.feedback += 1;
                f["interactionId"] = json!(interaction);
                feedback.push(f);
            }
        }
        if !feedback.is_empty() {
            match collector.ingest(Ingest::Feedback, &feedback).await {
                Ok(answer) if answer.rejected > 0 => {
                    errors.push(format!("{} feedback events refused", answer.rejected))
                }
                Ok(_) => {}
                Err(e) => errors.push(e.to_string()),
            }
        }
        if !errors.is_empty() {
            let mut s = stats.lock().unwrap_or_else(PoisonError::into_inner);
            s.failed_posts += errors.len() as u64;
            s.last_error = errors.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_environment_says_what_to_install() {
        let dir = std::env::temp_dir().join("flywheel-no-trainer-here");
        let e = TrainerEnv::find(&dir).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("bash trainer/ci.sh") && e.contains("--trainer-dir"), "{e}");
    }
}
