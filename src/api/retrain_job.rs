//! `RetrainJob` (`rtj`): one fine-tuning run, from a dataset snapshot to a new version.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    Condition, DATASET_URI_MESSAGE, DATASET_URI_RULE, DatasetCounts, EvaluationSpec, Lineage, LocalRef,
    OUTPUT_URI_MESSAGE, OUTPUT_URI_RULE, Promotion, RuleResult, TrainerTemplate, TriggerReason, URI_SCHEME_MESSAGE,
    URI_SCHEME_RULE, VERSION_PATTERN,
};
use super::feedback_policy::DatasetFormat;

/// One fine-tuning run of a ModelDeployment's model on a dataset snapshot. Created by a
/// FeedbackPolicy when it fires, or by hand. Its spec is immutable.
#[allow(
    clippy::duplicated_attributes,
    reason = "kube-derive takes one printcolumn(...) per column, each with the same keys"
)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "flywheel.dev",
    version = "v1alpha1",
    kind = "RetrainJob",
    plural = "retrainjobs",
    shortname = "rtj",
    category = "flywheel",
    namespaced,
    status = "RetrainJobStatus",
    derive = "PartialEq",
    cel,
    doc = "One fine-tuning run that produces a new version of a ModelDeployment's model.",
    printcolumn(
        name = "Target",
        type_ = "string",
        json_path = ".spec.targetRef.name",
        description = "The ModelDeployment retrained"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Pending, Running, Succeeded or Failed"
    ),
    printcolumn(
        name = "Version",
        type_ = "string",
        json_path = ".status.result.version",
        description = "The version produced"
    ),
    printcolumn(
        name = "Attempts",
        type_ = "integer",
        json_path = ".status.attemptCount",
        description = "Attempts made",
        priority = 1
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(cel)]
#[x_kube(validation = Rule::new("self == oldSelf").message("spec is immutable; create a new RetrainJob instead"))]
#[serde(rename_all = "camelCase")]
pub struct RetrainJobSpec {
    /// The ModelDeployment (same namespace) whose model is fine-tuned and which receives the
    /// new version.
    pub target_ref: LocalRef,
    /// The version fine-tuned from.
    pub base: BaseModel,
    /// The dataset snapshot trained on.
    pub dataset: DatasetRef,
    /// The trainer to run.
    pub trainer: TrainerTemplate,
    /// The evaluation gate the trained candidate must pass before it is handed over (rules over
    /// its metrics against the base's on the same held-out rows; an optional evaluation Job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<EvaluationSpec>,
    /// Where the trainer writes the new model.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new(OUTPUT_URI_RULE).message(OUTPUT_URI_MESSAGE))]
    pub output_uri: String,
    /// Version label for the result; the trainer's own choice (or `<base>-<job name>`) when
    /// unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = VERSION_PATTERN))]
    pub version: Option<String>,
    /// `Canary` hands the new version to the ModelDeployment; `None` keeps it here.
    #[serde(default)]
    pub promotion: Promotion,
    /// What caused this run, when a FeedbackPolicy created it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
}

/// The version a run fine-tunes from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BaseModel {
    /// Version label of the base.
    #[schemars(length(min = 1, max = 63), regex(pattern = VERSION_PATTERN))]
    pub version: String,
    /// Where the base weights are.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new(URI_SCHEME_RULE).message(URI_SCHEME_MESSAGE))]
    pub uri: String,
}

/// An immutable dataset snapshot built by the collector.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(cel)]
#[x_kube(validation = Rule::new("self.counts.sft + self.counts.dpo > 0").message("the dataset must hold at least one training row"))]
#[serde(rename_all = "camelCase")]
pub struct DatasetRef {
    /// Where the snapshot is: a directory holding `sft.jsonl`, `dpo.jsonl` and their held-out
    /// splits (`file://`, `pvc://`, `s3://`, `gs://`, or the collector's `http(s)://` download URL).
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new(DATASET_URI_RULE).message(DATASET_URI_MESSAGE))]
    pub uri: String,
    /// The collector's identifier of the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub snapshot_id: Option<String>,
    /// sha256 of the snapshot's manifest, so the trainer can verify what it reads.
    #[schemars(regex(pattern = r"^[a-f0-9]{64}$"))]
    pub sha256: String,
    /// Formats present.
    #[schemars(length(min = 1, max = 2), extend("x-kubernetes-list-type" = "set"))]
    pub formats: Vec<DatasetFormat>,
    /// Row counts.
    pub counts: DatasetCounts,
}

/// What caused a run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Origin {
    /// The FeedbackPolicy that fired.
    #[schemars(length(min = 1, max = 253))]
    pub feedback_policy: String,
    /// The trigger's identifier.
    #[schemars(length(min = 1, max = 128))]
    pub trigger_id: String,
    /// Why it fired.
    pub reason: TriggerReason,
}

/// Phase of a run.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum RetrainPhase {
    /// Accepted, no Job yet.
    #[default]
    Pending,
    /// The attempt's Job waits in its Kueue queue (suspended) for admission, or was preempted
    /// and waits again.
    Queued,
    /// An attempt's Job is running.
    Running,
    /// The evaluation Job runs on the trained candidate.
    Evaluating,
    /// The trainer reported a result and it passed the evaluation gate; the new version is in
    /// `status.result`.
    Succeeded,
    /// The trained candidate failed a rule of the evaluation gate: it is not handed over.
    Rejected,
    /// No attempt is left, or the trainer reported bad configuration or a malformed result.
    Failed,
}

/// The observed state of a RetrainJob.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetrainJobStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (True once succeeded), `Reconciling` (running), `Stalled` (failed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Where the run is.
    #[serde(default)]
    pub phase: RetrainPhase,
    /// Attempts made so far.
    #[serde(default)]
    pub attempt_count: i32,
    /// Every attempt and its Job.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub attempts: Vec<Attempt>,
    /// When the first attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the run ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// What the trainer produced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<TrainResult>,
    /// The policy, trigger, dataset and base behind this run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage: Option<Lineage>,
    /// How the evaluation gate judged the candidate, and its Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<EvaluationStatus>,
    /// When the new version was handed to the ModelDeployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handed_over_at: Option<Time>,
}

/// The evaluation of a trained candidate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EvaluationStatus {
    /// The evaluation Job (`<retrainjob>-eval`), when the spec has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub job_name: Option<String>,
    /// Whether every rule held (unset while the evaluation Job runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passed: Option<bool>,
    /// Each rule's judgement.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub rules: Vec<RuleResult>,
}

/// One attempt of a run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    /// 1 for the first attempt.
    #[schemars(range(min = 1, max = 16))]
    pub index: i32,
    /// The batch/v1 Job of the attempt (`<retrainjob>-<index>`).
    #[schemars(length(max = 253))]
    pub job_name: String,
    /// When the Job was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the Job finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// How it ended, once it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<AttemptOutcome>,
    /// Exit code of the trainer, when it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why it ended, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub message: Option<String>,
}

/// How an attempt ended.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum AttemptOutcome {
    /// The trainer reported a result.
    Succeeded,
    /// The trainer failed; another attempt may follow.
    Failed,
    /// The pod was preempted or its node lost; does not count against retries.
    Disrupted,
    /// The trainer reported bad configuration; no retry.
    BadConfiguration,
    /// The trainer exited 0 but its result line could not be read.
    MalformedResult,
    /// The attempt ran past its deadline.
    DeadlineExceeded,
}

/// What the trainer produced: its one JSON result line.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrainResult {
    /// Version label of the new model.
    #[schemars(length(min = 1, max = 63), regex(pattern = VERSION_PATTERN))]
    pub version: String,
    /// Where the new model is.
    #[schemars(length(min = 1, max = 2048))]
    pub uri: String,
    /// Metrics the trainer reported (for example `evalLoss`, `preferenceAccuracy`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub metrics: BTreeMap<String, f64>,
    /// What the URI holds: a whole model (`Model`, servable on its own) or a LoRA adapter
    /// (`Adapter`, served on top of its base model).
    #[serde(default)]
    pub artifact: Artifact,
}

/// What a trainer produced.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum Artifact {
    /// A whole model (for example the base with the adapter merged in).
    #[default]
    Model,
    /// A LoRA adapter only.
    Adapter,
}
