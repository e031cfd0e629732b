//! Types shared by the three Flywheel resources: conditions, references, trainer templates,
//! and the lineage that ties a served version back to the feedback that produced it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The condition type kstatus, `kubectl wait`, Helm and Argo CD read as health.
pub const CONDITION_READY: &str = "Ready";
/// kstatus: the controller is working towards the desired state.
pub const CONDITION_RECONCILING: &str = "Reconciling";
/// kstatus: the controller cannot make progress without a change from the user.
pub const CONDITION_STALLED: &str = "Stalled";

/// The scheme prefixes a model or dataset URI may use.
pub const SUPPORTED_URI_SCHEMES: [&str; 6] = ["pvc://", "s3://", "gs://", "https://", "hf://", "file://"];

/// CEL rule shared by every URI field: the scheme must be one Flywheel can fetch from.
pub(crate) const URI_SCHEME_RULE: &str = "self.startsWith('pvc://') || self.startsWith('s3://') || self.startsWith('gs://') || self.startsWith('https://') || self.startsWith('hf://') || self.startsWith('file://')";
/// The URI rule of a dataset snapshot: the collector's in-cluster `http://` download URL too.
pub(crate) const DATASET_URI_RULE: &str = "self.startsWith('http://') || self.startsWith('pvc://') || self.startsWith('s3://') || self.startsWith('gs://') || self.startsWith('https://') || self.startsWith('hf://') || self.startsWith('file://')";
/// Message of [`DATASET_URI_RULE`].
pub(crate) const DATASET_URI_MESSAGE: &str =
    "must start with one of http://, https://, pvc://, s3://, gs://, hf://, file://";
/// Message of [`URI_SCHEME_RULE`].
pub(crate) const URI_SCHEME_MESSAGE: &str = "must start with one of pvc://, s3://, gs://, https://, hf://, file://";

/// CEL rule of a trainer's output: serving must be able to load what the trainer wrote, so only
/// a claim (mounted read-write into the trainer, read-only into the inference pods) or an S3
/// prefix (uploaded by the trainer, fetched by the inference pods' init container).
pub(crate) const OUTPUT_URI_RULE: &str =
    "self.matches('^pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/.*)?$') || self.matches('^s3://[^/]+(/.*)?$')";
/// Message of [`OUTPUT_URI_RULE`].
pub(crate) const OUTPUT_URI_MESSAGE: &str = "must be pvc://claim/path (the claim is mounted read-write into the trainer) or s3://bucket/prefix (the trainer uploads there): serving loads the new model from it, and a file://, gs://, https:// or hf:// output could not be served";

/// Pattern of a Kubernetes object name (RFC 1123 subdomain).
pub(crate) const DNS_SUBDOMAIN_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// Pattern of a model version: a valid label value, so it can label pods and select them.
pub(crate) const VERSION_PATTERN: &str = r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$";

/// Whether `s` is a version label: what [`VERSION_PATTERN`] and a length of 1 to 63 accept.
pub fn is_version_label(s: &str) -> bool {
    let b = s.as_bytes();
    let edge = |c: &u8| c.is_ascii_alphanumeric();
    (1..=63).contains(&b.len())
        && b.first().is_some_and(edge)
        && b.last().is_some_and(edge)
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Status of a condition, as in `metav1.Condition`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// The controller cannot tell yet.
    Unknown,
}

impl ConditionStatus {
    /// `True` when `b`, else `False`.
    pub fn from_bool(b: bool) -> Self {
        if b { Self::True } else { Self::False }
    }
}

/// One aspect of the current state of a resource, with the same shape as `metav1.Condition`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Type of the condition in CamelCase: `Ready`, `Reconciling`, `Stalled`, or one specific to
    /// the kind (for example `Progressing` or `TriggerSuggested`).
    #[serde(rename = "type")]
    #[schemars(
        length(min = 1, max = 316),
        regex(
            pattern = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
        )
    )]
    pub type_: String,
    /// Status of the condition: `True`, `False` or `Unknown`.
    pub status: ConditionStatus,
    /// The `metadata.generation` the controller had seen when it set this condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub observed_generation: Option<i64>,
    /// When the condition last changed from one status to another.
    pub last_transition_time: Time,
    /// Machine-readable reason for the last transition, in CamelCase.
    #[schemars(length(min = 1, max = 1024), regex(pattern = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"))]
    pub reason: String,
    /// Human-readable detail of the last transition.
    #[schemars(length(max = 32768))]
    pub message: String,
}

/// A reference to an object of a known kind in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalRef {
    /// Name of the referenced object in the same namespace.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub name: String,
}

/// How a successfully trained version is handed to serving.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum Promotion {
    /// Hand the new version to the ModelDeployment, which starts a canary judged on feedback.
    #[default]
    Canary,
    /// Keep the new version in the RetrainJob's status only; a person promotes it by hand.
    None,
}

/// How the trainer runs: the pod template of the batch/v1 Job of each attempt. Shared by a
/// FeedbackPolicy (as the template of the RetrainJobs it creates) and a RetrainJob.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(cel)]
#[serde(rename_all = "camelCase")]
pub struct TrainerTemplate {
    /// Container image of the trainer, for example `ghcr.io/flywheel-dev/trainer:0.1.0`.
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    /// Image pull policy of the trainer container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// Entrypoint of the trainer container; the image's own when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(max = 4096)))]
    pub command: Vec<String>,
    /// Arguments to the entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 4096)))]
    pub args: Vec<String>,
    /// Extra environment variables of the trainer. The trainer contract's variables
    /// (`FLYWHEEL_*`) are set by the operator and take precedence.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.all(e, !e.name.startsWith('FLYWHEEL_'))").message("names starting with FLYWHEEL_ are reserved for the trainer contract"))]
    pub env: Vec<EnvVar>,
    /// Hyperparameters passed to the trainer as `FLYWHEEL_HP_<NAME>` variables and as JSON in
    /// `FLYWHEEL_HYPERPARAMETERS`, for example `learningRate: "2e-4"`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub hyperparameters: BTreeMap<String, String>,
    /// Compute resources of the trainer container, including `nvidia.com/gpu` limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node labels the trainer pod must be scheduled on, for example a GPU node pool.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the trainer pod, for example for tainted GPU nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub tolerations: Vec<Toleration>,
    /// Labels added to the trainer pod (for example a Kueue queue name).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub pod_labels: BTreeMap<String, String>,
    /// Annotations added to the trainer pod.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub pod_annotations: BTreeMap<String, String>,
    /// The Kueue LocalQueue (in the RetrainJob's namespace) the Job is submitted to: the Job
    /// gets the label `kueue.x-k8s.io/queue-name` and is created suspended, as Kueue's batch/v1
    /// Job integration expects; Kueue admits it (unsuspends it) when the queue's quota allows,
    /// and may suspend it again to preempt it (a disruption, never counted as a failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub queue_name: Option<String>,
    /// Kueue's WorkloadPriorityClass of the Job (label `kueue.x-k8s.io/priority-class`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub workload_priority_class: Option<String>,
    /// The PriorityClass of the trainer pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub priority_class_name: Option<String>,
    /// Service account the trainer pod runs as (it may need access to the output store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub service_account_name: Option<String>,
    /// Wall-clock limit of one attempt, in seconds (the Job's `activeDeadlineSeconds`).
    #[serde(default = "default_deadline_seconds")]
    #[schemars(range(min = 60, max = 604800))]
    pub deadline_seconds: i64,
    /// Attempts after the first one that failed for a reason that counts (a trainer crash);
    /// preemption and node loss never count.
    #[serde(default = "default_retries")]
    #[schemars(range(min = 0, max = 10))]
    pub retries: i32,
    /// How long a finished Job is kept before it is garbage-collected, in seconds; at least
    /// 60 is used, so the operator reads the attempt's result first (its pods also carry a
    /// finalizer the operator removes once the result is recorded).
    #[serde(default = "default_ttl_seconds")]
    #[schemars(range(min = 0, max = 2592000))]
    pub ttl_seconds_after_finished: i32,
}

fn default_deadline_seconds() -> i64 {
    6 * 3600
}
fn default_retries() -> i32 {
    2
}
fn default_ttl_seconds() -> i32 {
    86400
}

impl TrainerTemplate {
    /// A template running `image` with every other setting at its default.
    pub fn with_image(image: impl Into<String>) -> Self {
        Self {
            image: image.into(),
            image_pull_policy: None,
            command: Vec::new(),
            args: Vec::new(),
            env: Vec::new(),
            hyperparameters: BTreeMap::new(),
            resources: None,
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            pod_labels: BTreeMap::new(),
            pod_annotations: BTreeMap::new(),
            queue_name: None,
            workload_priority_class: None,
            priority_class_name: None,
            service_account_name: None,
            deadline_seconds: default_deadline_seconds(),
            retries: default_retries(),
            ttl_seconds_after_finished: default_ttl_seconds(),
        }
    }
}

/// Image pull policy of a container.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    /// Always pull the image.
    Always,
    /// Pull only when the image is not on the node.
    IfNotPresent,
    /// Never pull; the image must be on the node.
    Never,
}

impl PullPolicy {
    /// The value as the Pod API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// Why a FeedbackPolicy fired.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
pub enum TriggerReason {
    /// Enough new signals arrived since the last retrain.
    Volume,
    /// The positive rate fell below the policy's threshold.
    Quality,
    /// The correction rate rose above the policy's threshold.
    Corrections,
    /// The policy's schedule came due.
    Schedule,
    /// A person asked for it (a hand-made RetrainJob).
    Manual,
}

/// Where a version came from: the policy, trigger and dataset behind it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Lineage {
    /// The RetrainJob that produced the version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub retrain_job: Option<String>,
    /// The FeedbackPolicy whose trigger created the RetrainJob, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub feedback_policy: Option<String>,
    /// Identifier of the trigger (unique per policy), so a trigger maps to one RetrainJob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub trigger_id: Option<String>,
    /// Why the trigger fired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_reason: Option<TriggerReason>,
    /// sha256 of the dataset snapshot the version was trained on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-f0-9]{64}$"))]
    pub dataset_sha256: Option<String>,
    /// Rows of the dataset snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_counts: Option<DatasetCounts>,
    /// The version the new one was fine-tuned from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub base_version: Option<String>,
    /// How the evaluation gate judged the version before it was handed over.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub evaluation: Vec<RuleResult>,
}

/// The evaluation gate: rules over a trained candidate's metrics, each comparing it with the
/// base it was trained from on the same held-out rows (the trainer contract's `<metric>` and
/// `<metric>Before`), and optionally an evaluation Job whose metrics are merged over the
/// trainer's. A candidate that fails a rule is rejected before any user sees it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EvaluationSpec {
    /// Rules; every one must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub rules: Vec<EvaluationRule>,
    /// A Job run after training on the candidate and the snapshot's held-out rows (the
    /// reference trainer's `python -m flywheel_trainer.evaluate`, an LLM judge, a task suite):
    /// the trainer template's fields; it writes a result line `{"metrics": {...}}`; its
    /// `retries` are the Job's retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<TrainerTemplate>,
}

/// Which way a metric is better.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum Better {
    /// Lower is better (losses).
    #[default]
    Lower,
    /// Higher is better (accuracies).
    Higher,
}

/// One rule of the evaluation gate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.minImprovement) || has(self.maxRegression) || has(self.bound)").message("set at least one of minImprovement, maxRegression, bound"))]
#[serde(rename_all = "camelCase")]
pub struct EvaluationRule {
    /// The metric, as the trainer (or the evaluation Job) reports it: the candidate's value is
    /// `<metric>`, the base's on the same held-out rows `<metric>Before` (for example `evalLoss`,
    /// `preferenceAccuracy`; `docs/trainer-contract.md` lists them).
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[A-Za-z][A-Za-z0-9_]*$"))]
    pub metric: String,
    /// Which way is better: `Lower` (losses, the default) or `Higher` (accuracies).
    #[serde(default)]
    pub better: Better,
    /// The candidate must beat the base by at least this much (in the metric's units); 0: it
    /// must be at least as good.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub min_improvement: Option<f64>,
    /// The candidate may be worse than the base by at most this much.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub max_regression: Option<f64>,
    /// An absolute bound on the candidate's value: at most this for `Lower`, at least this for
    /// `Higher`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound: Option<f64>,
}

/// How one rule judged a candidate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuleResult {
    /// The metric.
    #[schemars(length(max = 63))]
    pub metric: String,
    /// The candidate's value, when reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<f64>,
    /// The base's value on the same rows, when reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<f64>,
    /// Whether the rule held.
    pub passed: bool,
    /// The rule and the values, in words.
    #[serde(default)]
    #[schemars(length(max = 512))]
    pub message: String,
}

/// Row counts of a dataset snapshot.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatasetCounts {
    /// Supervised fine-tuning rows in the training split.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub sft: i64,
    /// Preference pairs (chosen, rejected) in the training split.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub dpo: i64,
    /// Rows held out for evaluation (both formats together).
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub held_out: i64,
}
