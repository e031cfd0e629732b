//! The batch/v1 Job of one attempt of a RetrainJob (pure): the trainer container with the
//! trainer contract's environment (`docs/trainer-contract.md`), the volumes its URIs need, and
//! the failure policy that fails fast on bad configuration and ignores disruptions.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use crate::api::common::TrainerTemplate;
use crate::api::retrain_job::{Artifact, RetrainJob, TrainResult};
use crate::operator::model_deployment::children::{ChildSettings, ModelSource};

/// The trainer's container name (the failure policy and the result reader refer to it).
pub const CONTAINER: &str = "trainer";
/// The trainer's reserved exit code for bad configuration.
pub const EXIT_BAD_CONFIGURATION: i32 = 3;
/// Label on a Job naming its RetrainJob.
pub const LABEL_RETRAIN_JOB: &str = "flywheel.dev/retrain-job";
/// Finalizer on every trainer pod: the pod (and its termination message, the attempt's result)
/// stays until the RetrainJob has recorded how the attempt ended, whatever deletes it first
/// (the Job's TTL, a user, the garbage collector).
pub const RESULT_FINALIZER: &str = "flywheel.dev/attempt-result";
/// The least `ttlSecondsAfterFinished` a Job gets: time to read it even without the finalizer.
pub const TTL_FLOOR_SECONDS: i32 = 60;
/// Kueue's label naming the LocalQueue of a Job.
pub const LABEL_KUEUE_QUEUE: &str = "kueue.x-k8s.io/queue-name";
/// Kueue's label naming the WorkloadPriorityClass of a Job.
pub const LABEL_KUEUE_PRIORITY: &str = "kueue.x-k8s.io/priority-class";
/// Label on a Job carrying its attempt number.
pub const LABEL_ATTEMPT: &str = "flywheel.dev/attempt";

const BASE_DIR: &str = "/var/run/flywheel/base";
const DATASET_DIR: &str = "/var/run/flywheel/dataset";
const CHECKPOINT_DIR: &str = "/var/run/flywheel/checkpoints";
/// Where an output claim is mounted (read-write).
pub const OUTPUT_CLAIM_DIR: &str = "/var/run/flywheel/output-claim";
/// Where an output bound for an object store is written before the trainer uploads it.
pub const OUTPUT_DIR: &str = "/var/run/flywheel/output";
const TOKEN_DIR: &str = "/var/run/flywheel/collector";

/// Why a RetrainJob's spec cannot become a Job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobSpecError {
    /// A URI the trainer cannot be given.
    #[error("{field}: {message}")]
    Uri {
        /// Which field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The object lacks a name, namespace or uid.
    #[error("the RetrainJob lacks {0}")]
    Malformed(&'static str),
}

/// The Job name of attempt `attempt` (1 first).
pub fn job_name(rtj: &str, attempt: i32) -> String {
    format!("{rtj}-{attempt}")
}

/// `learningRate` → `LEARNINGRATE`, `lora-rank` → `LORA_RANK`.
pub fn hp_env_name(name: &str) -> String {
    let upper: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    format!("FLYWHEEL_HP_{upper}")
}

struct Mounts {
    volumes: Vec<Value>,
    mounts: Vec<Value>,
    init: Vec<Value>,
}

impl Mounts {
    fn pvc(&mut self, volume: &str, claim: &str, at: &str, read_only: bool) {
        self.volumes
            .push(json!({"name": volume, "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}}));
        self.mounts.push(json!({"name": volume, "mountPath": at, "readOnly": read_only}));
    }

    fn empty(&mut self, volume: &str, at: &str) {
        self.volumes.push(json!({"name": volume, "emptyDir": {}}));
        self.mounts.push(json!({"name": volume, "mountPath": at}));
    }

    fn fetch(&mut self, settings: &ChildSettings, name: &str, uri: &str, dir: &str, volume: &str) {
        self.init.push(json!({
            "name": name,
            "image": settings.operator_image,
            "args": ["fetch-model", uri, dir],
            "volumeMounts": [{"name": volume, "mountPath": dir}, {"name": "tmp", "mountPath": "/tmp"}],
            "securityContext": restricted_container(true),
        }));
    }
}

fn restricted_container(read_only_root: bool) -> Value {
    json!({
        "allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": read_only_root,
        "runAsNonRoot": true,
    })
}

fn joined(path: &str, rest: &str) -> String {
    let rest = rest.trim_matches('/');
    if rest.is_empty() { path.to_string() } else { format!("{path}/{rest}") }
}

/// What the trainer and the evaluator read: the base model and the dataset snapshot, as local
/// paths (claims mounted, object stores fetched by init containers), and the contract's
/// variables for them.
fn inputs(rtj: &RetrainJob, settings: &ChildSettings, m: &mut Mounts) -> Result<Vec<(String, String)>, JobSpecError> {
    let spec = &rtj.spec;
    // The base model: a mounted claim, a path in the image, or fetched before the trainer starts.
    let base = match ModelSource::parse(&spec.base.uri) {
        Ok(ModelSource::Pvc { claim, path }) => {
            m.pvc("base-model", &claim, "/var/run/flywheel/base-claim", true);
            joined("/var/run/flywheel/base-claim", &path)
        }
        Ok(ModelSource::File { path }) => path,
        Ok(ModelSource::Fetch { uri }) => {
            m.empty("base-model", BASE_DIR);
            m.fetch(settings, "fetch-base-model", &uri, BASE_DIR, "base-model");
            BASE_DIR.to_string()
        }
        Err(e) => return Err(JobSpecError::Uri { field: "spec.base.uri", message: e.to_string() }),
    };
    // The dataset: the collector's (or any) HTTP(S) URL with the token file, a claim, a path, or
    // fetched from an object store.
    let dataset_uri = &spec.dataset.uri;
    let mut token_file = None;
    let dataset = if dataset_uri.starts_with("http://") || dataset_uri.starts_with("https://") {
        m.volumes.push(json!({"name": "collector-token", "secret": {
            "secretName": settings.collector_token_secret, "optional": true,
            "items": [{"key": "token", "path": "token"}]}}));
        m.mounts.push(json!({"name": "collector-token", "mountPath": TOKEN_DIR, "readOnly": true}));
        token_file = Some(format!("{TOKEN_DIR}/token"));
        dataset_uri.clone()
    } else {
        match ModelSource::parse(dataset_uri) {
            Ok(ModelSource::Pvc { claim, path }) => {
                m.pvc("dataset", &claim, "/var/run/flywheel/dataset-claim", true);
                joined("/var/run/flywheel/dataset-claim", &path)
            }
            Ok(ModelSource::File { path }) => path,
            Ok(ModelSource::Fetch { uri }) => {
                m.empty("dataset", DATASET_DIR);
                m.fetch(settings, "fetch-dataset", &uri, DATASET_DIR, "dataset");
                DATASET_DIR.to_string()
            }
            Err(e) => return Err(JobSpecError::Uri { field: "spec.dataset.uri", message: e.to_string() }),
        }
    };
    let formats: Vec<&str> = spec.dataset.formats.iter().map(|f| f.as_str()).collect();
    let mut contract: Vec<(String, String)> = vec![
        ("FLYWHEEL_DATASET_URI".into(), dataset),
        ("FLYWHEEL_DATASET_SHA256".into(), spec.dataset.sha256.clone()),
        ("FLYWHEEL_DATASET_FORMATS".into(), formats.join(",")),
        ("FLYWHEEL_BASE_MODEL_URI".into(), base),
        ("FLYWHEEL_BASE_VERSION".into(), spec.base.version.clone()),
    ];
    if let Some(t) = token_file {
        contract.push(("FLYWHEEL_DATASET_TOKEN_FILE".into(), t));
    }
    Ok(contract)
}

/// One pod of a RetrainJob's Job: which Job, its labels, the template it runs, the contract's
/// variables, its volumes, and how many failures the Job itself retries.
struct PodPlan<'a> {
    job: String,
    labels: BTreeMap<String, String>,
    template: &'a TrainerTemplate,
    contract: Vec<(String, String)>,
    mounts: Mounts,
    backoff_limit: i32,
}

/// The Job of a pod plan (pure): the contract's variables over the template's (names starting
/// with `FLYWHEEL_` are the contract's), restricted security, the failure policy (exit 3 fails the
/// Job at once; a disruption does not count), the result finalizer on its pods.
fn assemble(rtj: &RetrainJob, plan: PodPlan<'_>) -> Result<Job, JobSpecError> {
    let name = rtj.metadata.name.clone().ok_or(JobSpecError::Malformed("a name"))?;
    let namespace = rtj.metadata.namespace.clone().ok_or(JobSpecError::Malformed("a namespace"))?;
    let uid = rtj.metadata.uid.clone().ok_or(JobSpecError::Malformed("a uid"))?;
    let PodPlan { job, labels: mut own_labels, template, mut contract, mut mounts, backoff_limit } = plan;
    contract.extend([
        ("FLYWHEEL_HYPERPARAMETERS".into(), serde_json::to_string(&template.hyperparameters).unwrap_or_default()),
        ("FLYWHEEL_RETRAINJOB".into(), name.clone()),
        ("FLYWHEEL_NAMESPACE".into(), namespace.clone()),
        ("FLYWHEEL_TERMINATION_LOG".into(), "/dev/termination-log".into()),
    ]);
    for (k, v) in &template.hyperparameters {
        contract.push((hp_env_name(k), v.clone()));
    }
    let mut env: Vec<Value> = template.env.iter().filter_map(|e| serde_json::to_value(e).ok()).collect();
    env.retain(|e| !e.get("name").and_then(Value::as_str).is_some_and(|n| n.starts_with("FLYWHEEL_")));
    env.extend(contract.into_iter().map(|(k, v)| json!({"name": k, "value": v})));
    mounts.volumes.push(json!({"name": "tmp", "emptyDir": {}}));
    mounts.mounts.push(json!({"name": "tmp", "mountPath": "/tmp"}));

    let mut labels: BTreeMap<String, String> = BTreeMap::from([
        ("app.kubernetes.io/name".into(), "flywheel-trainer".into()),
        ("app.kubernetes.io/component".into(), "trainer".into()),
        ("app.kubernetes.io/managed-by".into(), "flywheel".into()),
        ("app.kubernetes.io/part-of".into(), "flywheel".into()),
        (LABEL_RETRAIN_JOB.into(), name.clone()),
        ("flywheel.dev/model-deployment".into(), rtj.spec.target_ref.name.clone()),
    ]);
    labels.append(&mut own_labels);
    // Kueue's batch/v1 Job integration: the queue and priority as labels, the Job suspended
    // until admitted.
    if let Some(queue) = &template.queue_name {
        labels.insert(LABEL_KUEUE_QUEUE.into(), queue.clone());
    }
    if let Some(priority) = &template.workload_priority_class {
        labels.insert(LABEL_KUEUE_PRIORITY.into(), priority.clone());
    }
    let mut pod_labels = template.pod_labels.clone();
    pod_labels.append(&mut labels.clone());
    let mut container = json!({
        "name": CONTAINER,
        "image": template.image,
        "env": env,
        "volumeMounts": mounts.mounts,
        "terminationMessagePath": "/dev/termination-log",
        // The result line on success; the log's tail when the trainer dies without writing one.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": restricted_container(false),
    });
    if let Some(p) = template.image_pull_policy {
        container["imagePullPolicy"] = json!(p.as_str());
    }
    if !template.command.is_empty() {
        container["command"] = json!(template.command);
    }
    if !template.args.is_empty() {
        container["args"] = json!(template.args);
    }
    if let Some(r) = &template.resources {
        container["resources"] = serde_json::to_value(r).unwrap_or(Value::Null);
    }
    let mut pod_spec = json!({
        "restartPolicy": "Never",
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "fsGroup": 65532,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": mounts.volumes,
    });
    if !mounts.init.is_empty() {
        pod_spec["initContainers"] = json!(mounts.init);
    }
    if !template.node_selector.is_empty() {
        pod_spec["nodeSelector"] = json!(template.node_selector);
    }
    if !template.tolerations.is_empty() {
        pod_spec["tolerations"] = serde_json::to_value(&template.tolerations).unwrap_or(Value::Null);
    }
    if let Some(priority) = &template.priority_class_name {
        pod_spec["priorityClassName"] = json!(priority);
    }
    if let Some(sa) = &template.service_account_name {
        pod_spec["serviceAccountName"] = json!(sa);
    } else {
        pod_spec["automountServiceAccountToken"] = json!(false);
    }
    labels.insert("app.kubernetes.io/instance".into(), name.clone());
    let value = json!({
        "apiVersion": Job::api_version(&()),
        "kind": Job::kind(&()),
        "metadata": {
            "name": job,
            "namespace": namespace,
            "labels": labels,
            "ownerReferences": [{
                "apiVersion": RetrainJob::api_version(&()),
                "kind": RetrainJob::kind(&()),
                "name": rtj.name_any(),
                "uid": uid,
                "controller": true,
                "blockOwnerDeletion": true,
            }],
        },
        "spec": {
            "suspend": template.queue_name.is_some(),
            "backoffLimit": backoff_limit,
            "activeDeadlineSeconds": template.deadline_seconds,
            "ttlSecondsAfterFinished": template.ttl_seconds_after_finished.max(TTL_FLOOR_SECONDS),
            "podFailurePolicy": {"rules": [
                {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EXIT_BAD_CONFIGURATION]}},
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]},
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": template.pod_annotations,
                    "finalizers": [RESULT_FINALIZER],
                },
                "spec": pod_spec,
            },
        },
    });
    serde_json::from_value(value).map_err(|_| JobSpecError::Malformed("a trainer template that makes a valid Job"))
}

/// The Job of training attempt `attempt` (pure).
pub fn build(rtj: &RetrainJob, attempt: i32, settings: &ChildSettings) -> Result<Job, JobSpecError> {
    let name = rtj.metadata.name.clone().ok_or(JobSpecError::Malformed("a name"))?;
    let spec = &rtj.spec;
    let mut m = Mounts { volumes: vec![], mounts: vec![], init: vec![] };
    let mut contract = inputs(rtj, settings, &mut m)?;
    // The output: where the trainer writes (a local directory) and the URI serving will load
    // it from. Checkpoints survive a retry when the output is a claim.
    let (output_dir, checkpoints) = match ModelSource::parse(&spec.output_uri) {
        Ok(ModelSource::Pvc { claim, path }) => {
            m.pvc("output", &claim, OUTPUT_CLAIM_DIR, false);
            (joined(OUTPUT_CLAIM_DIR, &path), format!("{OUTPUT_CLAIM_DIR}/.flywheel-checkpoints/{name}"))
        }
        Ok(ModelSource::Fetch { uri }) if uri.starts_with("s3://") => {
            // Written here, then uploaded by the trainer to the bucket.
            m.empty("output", OUTPUT_DIR);
            m.empty("checkpoints", CHECKPOINT_DIR);
            (OUTPUT_DIR.to_string(), CHECKPOINT_DIR.to_string())
        }
        Ok(_) => {
            return Err(JobSpecError::Uri {
                field: "spec.outputUri",
                message: format!(
                    "{:?} cannot be an output: serving loads the model from pvc://claim/path or s3://bucket/prefix",
                    spec.output_uri
                ),
            });
        }
        Err(e) => return Err(JobSpecError::Uri { field: "spec.outputUri", message: e.to_string() }),
    };
    contract.extend([
        ("FLYWHEEL_OUTPUT_DIR".into(), output_dir),
        ("FLYWHEEL_OUTPUT_URI".into(), spec.output_uri.clone()),
        ("FLYWHEEL_CHECKPOINT_DIR".into(), checkpoints),
        ("FLYWHEEL_ATTEMPT".into(), attempt.to_string()),
    ]);
    if let Some(v) = &spec.version {
        contract.push(("FLYWHEEL_VERSION".into(), v.clone()));
    }
    let plan = PodPlan {
        job: job_name(&name, attempt),
        labels: BTreeMap::from([(LABEL_ATTEMPT.into(), attempt.to_string())]),
        template: &spec.trainer,
        contract,
        mounts: m,
        // One pod per attempt: a failure that counts ends the attempt, and the RetrainJob
        // decides on the next one. Disruptions do not end it.
        backoff_limit: 0,
    };
    assemble(rtj, plan)
}

/// The name of a RetrainJob's evaluation Job.
pub fn evaluation_job_name(rtj: &str) -> String {
    format!("{rtj}-eval")
}

/// Label on the evaluation Job (and its pods).
pub const LABEL_EVALUATION: &str = "flywheel.dev/evaluation";

/// Where a candidate bound for evaluation is mounted or fetched.
const CANDIDATE_CLAIM_DIR: &str = "/var/run/flywheel/candidate-claim";
const CANDIDATE_DIR: &str = "/var/run/flywheel/candidate";

/// The evaluation Job of a trained candidate (pure): the template of `spec.evaluation.job`, the
/// dataset and the base as for training, and the candidate (its claim mounted read-only, or
/// fetched) as `FLYWHEEL_CANDIDATE_DIR`. Its own retries: the template's.
pub fn build_evaluation(
    rtj: &RetrainJob,
    template: &TrainerTemplate,
    result: &TrainResult,
    settings: &ChildSettings,
) -> Result<Job, JobSpecError> {
    let name = rtj.metadata.name.clone().ok_or(JobSpecError::Malformed("a name"))?;
    let mut m = Mounts { volumes: vec![], mounts: vec![], init: vec![] };
    let mut contract = inputs(rtj, settings, &mut m)?;
    let candidate = match ModelSource::parse(&result.uri) {
        Ok(ModelSource::Pvc { claim, path }) => {
            m.pvc("candidate", &claim, CANDIDATE_CLAIM_DIR, true);
            joined(CANDIDATE_CLAIM_DIR, &path)
        }
        Ok(ModelSource::Fetch { uri }) => {
            m.empty("candidate", CANDIDATE_DIR);
            m.fetch(settings, "fetch-candidate", &uri, CANDIDATE_DIR, "candidate");
            CANDIDATE_DIR.to_string()
        }
        Ok(ModelSource::File { path }) => path,
        Err(e) => return Err(JobSpecError::Uri { field: "status.result.uri", message: e.to_string() }),
    };
    let artifact = match result.artifact {
        Artifact::Model => "model",
        Artifact::Adapter => "adapter",
    };
    contract.extend([
        ("FLYWHEEL_CANDIDATE_DIR".into(), candidate),
        ("FLYWHEEL_CANDIDATE_ARTIFACT".into(), artifact.into()),
        ("FLYWHEEL_CANDIDATE_VERSION".into(), result.version.clone()),
    ]);
    let plan = PodPlan {
        job: evaluation_job_name(&name),
        labels: BTreeMap::from([(LABEL_EVALUATION.into(), "true".into())]),
        template,
        contract,
        mounts: m,
        backoff_limit: template.retries.max(0),
    };
    assemble(rtj, plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::common::{DatasetCounts, LocalRef, Promotion, TrainerTemplate};
    use crate::api::feedback_policy::DatasetFormat;
    use crate::api::retrain_job::{BaseModel, DatasetRef, RetrainJobSpec};

    fn rtj(base: &str, dataset: &str, output: &str) -> RetrainJob {
        let mut trainer = TrainerTemplate::with_image("ghcr.io/flywheel-dev/trainer:0.1.0");
        trainer.hyperparameters.insert("learningRate".into(), "2e-4".into());
        trainer.env.push(
            serde_json::from_value(json!({"name": "HF_HOME", "value": "/tmp/hf"})).unwrap_or_else(|e| panic!("{e}")),
        );
        let mut r = RetrainJob::new(
            "chat-3",
            RetrainJobSpec {
                target_ref: LocalRef { name: "chat".into() },
                base: BaseModel { version: "v1".into(), uri: base.into() },
                dataset: DatasetRef {
                    uri: dataset.into(),
                    snapshot_id: None,
                    sha256: "a".repeat(64),
                    formats: vec![DatasetFormat::Sft, DatasetFormat::Dpo],
                    counts: DatasetCounts { sft: 10, dpo: 2, held_out: 1 },
                },
                trainer,
                evaluation: None,
                output_uri: output.into(),
                version: Some("v2".into()),
                promotion: Promotion::Canary,
                origin: None,
            },
        );
        r.metadata.namespace = Some("team".into());
        r.metadata.uid = Some("uid-1".into());
        r
    }

    fn settings() -> ChildSettings {
        ChildSettings {
            operator_image: "ghcr.io/flywheel-dev/flywheel:test".into(),
            collector_url: None,
            collector_token_secret: "flywheel-collector-token".into(),
        }
    }

    fn env(job: &Job) -> BTreeMap<String, String> {
        let v = serde_json::to_value(job).unwrap_or_default();
        v.pointer("/spec/template/spec/containers/0/env")
            .and_then(Value::as_array)
            .map(|e| {
                e.iter()
                    .map(|e| {
                        (
                            e["name"].as_str().unwrap_or_default().to_string(),
                            e["value"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn the_job_carries_the_trainer_contract() {
        let r = rtj(
            "hf://Qwen/Qwen2.5-0.5B-Instruct",
            "http://collector:8080/v1/datasets/ds-1/files",
            "pvc://models/chat-3",
        );
        let job = build(&r, 2, &settings()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(job.metadata.name.as_deref(), Some("chat-3-2"));
        let e = env(&job);
        assert_eq!(e["FLYWHEEL_BASE_MODEL_URI"], BASE_DIR);
        assert_eq!(e["FLYWHEEL_BASE_VERSION"], "v1");
        assert_eq!(e["FLYWHEEL_DATASET_URI"], "http://collector:8080/v1/datasets/ds-1/files");
        assert_eq!(e["FLYWHEEL_DATASET_TOKEN_FILE"], "/var/run/flywheel/collector/token");
        assert_eq!(e["FLYWHEEL_DATASET_FORMATS"], "SFT,DPO");
        // Where to write, and the URI serving loads it from: never the mount path as the URI.
        assert_eq!(e["FLYWHEEL_OUTPUT_DIR"], "/var/run/flywheel/output-claim/chat-3");
        assert_eq!(e["FLYWHEEL_OUTPUT_URI"], "pvc://models/chat-3");
        assert_eq!(e["FLYWHEEL_CHECKPOINT_DIR"], "/var/run/flywheel/output-claim/.flywheel-checkpoints/chat-3");
        assert_eq!(e["FLYWHEEL_VERSION"], "v2");
        assert_eq!(e["FLYWHEEL_ATTEMPT"], "2");
        assert_eq!(e["FLYWHEEL_HP_LEARNINGRATE"], "2e-4");
        assert_eq!(e["FLYWHEEL_HYPERPARAMETERS"], r#"{"learningRate":"2e-4"}"#);
        assert_eq!(e["HF_HOME"], "/tmp/hf");
        let v = serde_json::to_value(&job).unwrap_or_default();
        assert_eq!(v.pointer("/spec/backoffLimit"), Some(&json!(0)));
        // The result outlives any deletion until it is recorded; the TTL has a floor.
        assert_eq!(v.pointer("/spec/template/metadata/finalizers"), Some(&json!([RESULT_FINALIZER])));
        assert_eq!(v.pointer("/spec/ttlSecondsAfterFinished"), Some(&json!(86400)));
        let mut quick = r.clone();
        quick.spec.trainer.ttl_seconds_after_finished = 0;
        let quick =
            serde_json::to_value(build(&quick, 1, &settings()).unwrap_or_else(|e| panic!("{e}"))).unwrap_or_default();
        assert_eq!(quick.pointer("/spec/ttlSecondsAfterFinished"), Some(&json!(TTL_FLOOR_SECONDS)));
        assert_eq!(v.pointer("/spec/podFailurePolicy/rules/0/onExitCodes/values"), Some(&json!([3])));
        assert_eq!(v.pointer("/spec/podFailurePolicy/rules/1/action"), Some(&json!("Ignore")));
        assert_eq!(
            v.pointer("/spec/template/spec/initContainers/0/args/1"),
            Some(&json!("hf://Qwen/Qwen2.5-0.5B-Instruct"))
        );
        assert_eq!(v.pointer("/spec/template/spec/securityContext/runAsNonRoot"), Some(&json!(true)));
        assert_eq!(v.pointer("/metadata/ownerReferences/0/controller"), Some(&json!(true)));
        assert_eq!(v.pointer("/spec/template/metadata/labels/flywheel.dev~1retrain-job"), Some(&json!("chat-3")));
    }

    #[test]
    fn a_queued_trainer_goes_through_kueue() {
        let mut r = rtj("pvc://models/v1", "pvc://datasets/snap-1", "pvc://models/chat-3");
        let plain =
            serde_json::to_value(build(&r, 1, &settings()).unwrap_or_else(|e| panic!("{e}"))).unwrap_or_default();
        assert_eq!(plain.pointer("/spec/suspend"), Some(&json!(false)));
        assert!(plain.pointer("/metadata/labels/kueue.x-k8s.io~1queue-name").is_none());
        r.spec.trainer.queue_name = Some("gpu-queue".into());
        r.spec.trainer.workload_priority_class = Some("retrain-low".into());
        r.spec.trainer.priority_class_name = Some("batch-low".into());
        let queued =
            serde_json::to_value(build(&r, 1, &settings()).unwrap_or_else(|e| panic!("{e}"))).unwrap_or_default();
        assert_eq!(queued.pointer("/spec/suspend"), Some(&json!(true)), "created suspended: Kueue admits it");
        assert_eq!(queued.pointer("/metadata/labels/kueue.x-k8s.io~1queue-name"), Some(&json!("gpu-queue")));
        assert_eq!(queued.pointer("/metadata/labels/kueue.x-k8s.io~1priority-class"), Some(&json!("retrain-low")));
        assert_eq!(queued.pointer("/spec/template/spec/priorityClassName"), Some(&json!("batch-low")));
    }

    #[test]
    fn local_uris_pass_through_and_bad_ones_are_refused() {
        let r = rtj("file:///models/v1", "pvc://datasets/snap-1", "s3://models/chat/chat-3");
        let job = build(&r, 1, &settings()).unwrap_or_else(|e| panic!("{e}"));
        let e = env(&job);
        assert_eq!(e["FLYWHEEL_BASE_MODEL_URI"], "/models/v1");
        assert_eq!(e["FLYWHEEL_DATASET_URI"], "/var/run/flywheel/dataset-claim/snap-1");
        assert!(!e.contains_key("FLYWHEEL_DATASET_TOKEN_FILE"));
        // An object-store output: written to a local emptyDir, uploaded by the trainer.
        assert_eq!(e["FLYWHEEL_OUTPUT_DIR"], OUTPUT_DIR);
        assert_eq!(e["FLYWHEEL_OUTPUT_URI"], "s3://models/chat/chat-3");
        assert_eq!(e["FLYWHEEL_CHECKPOINT_DIR"], CHECKPOINT_DIR);
        let v = serde_json::to_value(&job).unwrap_or_default();
        let volumes = v.pointer("/spec/template/spec/volumes").cloned().unwrap_or_default();
        assert!(
            volumes.as_array().is_some_and(|vs| vs.iter().any(|v| v["name"] == "output" && v["emptyDir"].is_object())),
            "{volumes}"
        );
        let bad = rtj("ftp://x/y", "pvc://datasets/snap-1", "pvc://models/out");
        assert!(matches!(build(&bad, 1, &settings()), Err(JobSpecError::Uri { field: "spec.base.uri", .. })));
        // Outputs serving cannot load from (admission refuses them; an object admitted before
        // that rule is refused here).
        for output in ["file:///out", "gs://bucket/out", "hf://org/out"] {
            let bad = rtj("file:///models/v1", "pvc://datasets/snap-1", output);
            assert!(
                matches!(build(&bad, 1, &settings()), Err(JobSpecError::Uri { field: "spec.outputUri", .. })),
                "{output}"
            );
        }
        assert_eq!(hp_env_name("lora-rank"), "FLYWHEEL_HP_LORA_RANK");
    }
}
