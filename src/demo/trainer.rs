//! The simulated trainer: a pod script for the simulated kubelet. A pod of a trainer Job (its
//! container gets the trainer contract's `FLYWHEEL_*` environment) runs for the training time
//! and terminates with the contract's one JSON line naming the new version, its URI and its
//! metrics; the world decides how good that version is. Every other pod (the inference pods of
//! the ModelDeployment) becomes Ready after a short delay.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use super::scenario::{Pace, Trained, World};
use crate::sim::{Outcome, PodBehavior, PodScript};

/// The trainer contract's environment of a pod's first container, if it has one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TrainerEnv {
    /// `FLYWHEEL_RETRAINJOB`.
    pub retrain_job: String,
    /// `FLYWHEEL_BASE_VERSION`.
    pub base_version: String,
    /// `FLYWHEEL_VERSION`, when the RetrainJob names the version.
    pub version: Option<String>,
    /// `FLYWHEEL_OUTPUT_URI`.
    pub output_uri: Option<String>,
    /// `FLYWHEEL_DATASET_SHA256`.
    pub dataset_sha256: Option<String>,
    /// `FLYWHEEL_ATTEMPT`.
    pub attempt: Option<String>,
}

fn env_of(container: &Value, name: &str) -> Option<String> {
    container
        .get("env")?
        .as_array()?
        .iter()
        .find(|e| e.get("name").and_then(Value::as_str) == Some(name))?
        .get("value")?
        .as_str()
        .map(str::to_string)
}

/// Reads the trainer contract from a pod; `None` for a pod that is not a trainer's.
pub fn trainer_env(pod: &Value) -> Option<TrainerEnv> {
    let containers = pod.pointer("/spec/containers")?.as_array()?;
    let container = containers
        .iter()
        .find(|c| c.get("name").and_then(Value::as_str) == Some("trainer"))
        .or_else(|| containers.first())?;
    let retrain_job = env_of(container, "FLYWHEEL_RETRAINJOB")?;
    Some(TrainerEnv {
        retrain_job,
        base_version: env_of(container, "FLYWHEEL_BASE_VERSION").unwrap_or_default(),
        version: env_of(container, "FLYWHEEL_VERSION").filter(|v| !v.is_empty()),
        output_uri: env_of(container, "FLYWHEEL_OUTPUT_URI").filter(|v| !v.is_empty()),
        dataset_sha256: env_of(container, "FLYWHEEL_DATASET_SHA256"),
        attempt: env_of(container, "FLYWHEEL_ATTEMPT"),
    })
}

/// The held-out loss per answer token of a model whose held-out quality is `quality`.
fn held_out_loss(quality: f64) -> f64 {
    round3((1.6 - quality).max(0.05))
}

/// The result line a trainer writes to its termination log, with the trainer contract's metric
/// names: a better model (on the held-out rows) has a lower held-out loss than its base
/// (`evalLoss` against `evalLossBefore`) and wins more held-out comparisons.
pub fn result_line(version: &str, uri: &str, trained: &Trained, env: &TrainerEnv) -> String {
    let eval_loss = held_out_loss(trained.offline_quality);
    let mut metrics = json!({
        "trainLoss": round3(eval_loss * 0.85),
        "evalLoss": eval_loss,
        "evalLossBefore": held_out_loss(trained.base_quality),
        "preferenceAccuracy": round3(trained.offline_quality),
        "preferenceAccuracyBefore": round3(trained.base_quality),
        "epochs": 2.0,
    });
    if let Some(attempt) = env.attempt.as_deref().and_then(|a| a.parse::<f64>().ok()) {
        metrics["attempt"] = json!(attempt);
    }
    json!({"version": version, "uri": uri, "metrics": metrics}).to_string()
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The pod script of the demo's simulated cluster.
pub fn script(world: Arc<Mutex<World>>, pace: Pace) -> PodScript {
    Arc::new(move |pod: &Value| {
        let Some(env) = trainer_env(pod) else {
            // An inference pod: Ready after a short start-up.
            return Some(PodBehavior { ready_after: pace.pod_ready(), finish: None });
        };
        let trained = world.lock().unwrap_or_else(std::sync::PoisonError::into_inner).train(
            &env.retrain_job,
            &env.base_version,
            env.version.as_deref(),
        );
        let uri = env.output_uri.clone().unwrap_or_else(|| format!("pvc://models/{}", trained.version));
        let message = result_line(&trained.version, &uri, &trained, &env);
        Some(PodBehavior {
            ready_after: pace.pod_ready().min(Duration::from_millis(300)),
            finish: Some((pace.training(), Outcome::Succeed, message)),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::scenario::Scenario;

    fn pod(env: Value) -> Value {
        json!({"spec": {"restartPolicy": "Never", "containers": [{"name": "trainer", "image": "t", "env": env}]}})
    }

    #[test]
    fn a_trainer_pod_ends_with_the_contract_result_line() {
        let world = Arc::new(Mutex::new(World::new(Scenario::Improve, "v1")));
        let script = script(world.clone(), Pace::new(2.0));
        let p = pod(json!([
            {"name": "FLYWHEEL_RETRAINJOB", "value": "chat-quality-1"},
            {"name": "FLYWHEEL_BASE_VERSION", "value": "v1"},
            {"name": "FLYWHEEL_OUTPUT_URI", "value": "pvc://models/support-chat/chat-quality-1"},
            {"name": "FLYWHEEL_ATTEMPT", "value": "1"},
        ]));
        let behavior = script(&p).unwrap_or_else(|| panic!("a behaviour"));
        let Some((duration, outcome, message)) = behavior.finish else { panic!("a trainer pod finishes") };
        assert_eq!(duration, Duration::from_secs(4));
        assert_eq!(outcome, Outcome::Succeed);
        let result: Value = serde_json::from_str(&message).unwrap_or_else(|e| panic!("{e}: {message}"));
        assert_eq!(result["version"], "v2");
        assert_eq!(result["uri"], "pvc://models/support-chat/chat-quality-1");
        let (after, before) = (result["metrics"]["evalLoss"].as_f64(), result["metrics"]["evalLossBefore"].as_f64());
        assert!(
            matches!((after, before), (Some(a), Some(b)) if a < b),
            "a better model, by the contract's names: {message}"
        );
        assert!(!message.contains('\n'), "one line");
        let quality = world.lock().unwrap_or_else(std::sync::PoisonError::into_inner).quality("v2");
        assert!(quality.is_some_and(|q| q > 0.86));
        // A second attempt of the same RetrainJob reports the same version.
        let again = script(&p).and_then(|b| b.finish).map(|f| f.2).unwrap_or_default();
        assert!(again.contains("\"version\":\"v2\""), "{again}");
    }

    #[test]
    fn a_named_version_is_used_and_other_pods_just_become_ready() {
        let world = Arc::new(Mutex::new(World::new(Scenario::Regression, "v1")));
        let script = script(world, Pace::new(1.0));
        let p = pod(json!([
            {"name": "FLYWHEEL_RETRAINJOB", "value": "r"},
            {"name": "FLYWHEEL_BASE_VERSION", "value": "v1"},
            {"name": "FLYWHEEL_VERSION", "value": "v1-r"},
        ]));
        let message = script(&p).and_then(|b| b.finish).map(|f| f.2).unwrap_or_default();
        assert!(message.contains("\"version\":\"v1-r\"") && message.contains("pvc://models/v1-r"), "{message}");
        let inference = json!({"spec": {"containers": [{"name": "runtime", "image": "vllm"}]}});
        let behavior = script(&inference).unwrap_or_else(|| panic!("a behaviour"));
        assert_eq!(behavior.finish, None);
        assert_eq!(behavior.ready_after, Pace::new(1.0).pod_ready());
    }
}
