//! `FeedbackPolicy` (`fbp`): when a ModelDeployment is retrained, on what data, and how.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    Condition, EvaluationSpec, LocalRef, OUTPUT_URI_MESSAGE, OUTPUT_URI_RULE, Promotion, TrainerTemplate, TriggerReason,
};

/// When to retrain a ModelDeployment from the feedback its users give, what dataset to build,
/// and how to run the trainer.
#[allow(
    clippy::duplicated_attributes,
    reason = "kube-derive takes one printcolumn(...) per column, each with the same keys"
)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "flywheel.dev",
    version = "v1alpha1",
    kind = "FeedbackPolicy",
    plural = "feedbackpolicies",
    shortname = "fbp",
    category = "flywheel",
    namespaced,
    status = "FeedbackPolicyStatus",
    derive = "PartialEq",
    cel,
    doc = "When and how to retrain a ModelDeployment from its users' feedback.",
    printcolumn(
        name = "Target",
        type_ = "string",
        json_path = ".spec.targetRef.name",
        description = "The ModelDeployment retrained"
    ),
    printcolumn(
        name = "Mode",
        type_ = "string",
        json_path = ".spec.mode",
        description = "auto or suggest",
        priority = 1
    ),
    printcolumn(
        name = "Signals",
        type_ = "integer",
        json_path = ".status.signalsSinceLastRetrain",
        description = "Signals since the last retrain"
    ),
    printcolumn(
        name = "Quality",
        type_ = "number",
        json_path = ".status.stats.positiveRate",
        description = "Positive rate of the stable version over the window"
    ),
    printcolumn(
        name = "Last Trigger",
        type_ = "string",
        json_path = ".status.lastTrigger.reason",
        description = "Why the policy last fired"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct FeedbackPolicySpec {
    /// The ModelDeployment (same namespace) whose feedback is watched and which is retrained.
    pub target_ref: LocalRef,
    /// `auto` creates RetrainJobs; `suggest` only records the would-be trigger as a condition
    /// and an Event, for a person to act on.
    #[serde(default)]
    pub mode: PolicyMode,
    /// How raw signals count as positive or negative.
    #[serde(default)]
    pub signals: SignalMapping,
    /// The window statistics are computed over, in seconds.
    #[serde(default = "default_window")]
    #[schemars(range(min = 60, max = 7776000))]
    pub window_seconds: i64,
    /// What fires a retrain.
    pub triggers: Triggers,
    /// Least time between two retrains, in seconds.
    #[serde(default = "default_cooldown")]
    #[schemars(range(min = 0, max = 2592000))]
    pub cooldown_seconds: i64,
    /// Most retrains in any 24 hours.
    #[serde(default = "default_max_per_day")]
    #[schemars(range(min = 1, max = 100))]
    pub max_retrains_per_day: i32,
    /// How the dataset snapshot is built.
    #[serde(default)]
    pub dataset: DatasetRecipe,
    /// The trainer each RetrainJob runs.
    pub trainer: TrainerTemplate,
    /// The evaluation gate the trained candidate must pass before it is handed over (rules over
    /// its metrics against the base's on the same held-out rows; an optional evaluation Job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<EvaluationSpec>,
    /// Where trained models are written: the RetrainJob's output URI is this prefix followed by
    /// the RetrainJob's name.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new(OUTPUT_URI_RULE).message(OUTPUT_URI_MESSAGE))]
    pub output_uri_prefix: String,
    /// What happens to a trained version: `Canary` hands it to the ModelDeployment.
    #[serde(default)]
    pub promotion: Promotion,
}

fn default_window() -> i64 {
    7 * 86400
}
fn default_cooldown() -> i64 {
    6 * 3600
}
fn default_max_per_day() -> i32 {
    2
}

/// `auto` or `suggest`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PolicyMode {
    /// Create a RetrainJob when a trigger fires.
    #[default]
    Auto,
    /// Record the trigger as a condition and an Event; create nothing.
    Suggest,
}

/// How raw signals count as positive or negative.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(cel)]
#[x_kube(validation = Rule::new("!has(self.positiveLabels) || !has(self.negativeLabels) || self.positiveLabels.all(l, !(l in self.negativeLabels))").message("a label cannot be both positive and negative"))]
#[serde(rename_all = "camelCase")]
pub struct SignalMapping {
    /// A rating counts as positive when it is at least this fraction of its scale (a 4 of 5 is
    /// 0.75 on a 1..5 scale).
    #[serde(default = "default_rating_threshold")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub rating_positive_threshold: f64,
    /// A correction counts as a negative signal on the corrected answer.
    #[serde(default = "default_true")]
    pub correction_is_negative: bool,
    /// An error flag counts as a negative signal.
    #[serde(default = "default_true")]
    pub error_is_negative: bool,
    /// Free-form labels that count as positive.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 128)))]
    pub positive_labels: Vec<String>,
    /// Free-form labels that count as negative.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 128)))]
    pub negative_labels: Vec<String>,
}

fn default_rating_threshold() -> f64 {
    0.75
}
fn default_true() -> bool {
    true
}

impl Default for SignalMapping {
    fn default() -> Self {
        Self {
            rating_positive_threshold: default_rating_threshold(),
            correction_is_negative: true,
            error_is_negative: true,
            positive_labels: Vec::new(),
            negative_labels: Vec::new(),
        }
    }
}

/// What fires a retrain. At least one trigger must be set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[x_kube(cel)]
#[x_kube(validation = Rule::new("has(self.newSignals) || has(self.qualityBelow) || has(self.correctionRateAbove) || has(self.schedule)").message("set at least one of newSignals, qualityBelow, correctionRateAbove, schedule"))]
#[serde(rename_all = "camelCase")]
pub struct Triggers {
    /// Signals the stable version must have in the window before a quality or correction
    /// trigger may fire.
    #[serde(default = "default_min_samples")]
    #[schemars(range(min = 1, max = 100000000))]
    pub min_samples: i64,
    /// Fire when this many new signals arrived since the last retrain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000000))]
    pub new_signals: Option<i64>,
    /// Fire when the positive rate falls below this fraction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub quality_below: Option<f64>,
    /// Fire when the correction rate rises above this fraction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub correction_rate_above: Option<f64>,
    /// Fire on a schedule too, in cron syntax (five fields, UTC), for example `0 3 * * 1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 9, max = 128))]
    #[x_kube(validation = Rule::new("self.split(' ').filter(f, f != '').size() == 5").message("must be a cron expression of five fields"))]
    pub schedule: Option<String>,
}

fn default_min_samples() -> i64 {
    100
}

/// How a dataset snapshot is built from the window's feedback.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(cel)]
#[x_kube(validation = Rule::new("self.minRows <= self.maxRows").message("minRows must not exceed maxRows"))]
#[serde(rename_all = "camelCase")]
pub struct DatasetRecipe {
    /// Formats to build: `SFT` rows (corrections as targets, positively rated answers kept)
    /// and `DPO` pairs (selected alternatives, corrections versus the original answer).
    #[serde(default = "default_formats")]
    #[schemars(length(min = 1, max = 2), extend("x-kubernetes-list-type" = "set"))]
    pub formats: Vec<DatasetFormat>,
    /// Use corrections (as SFT targets and as DPO chosen answers).
    #[serde(default = "default_true")]
    pub include_corrections: bool,
    /// Keep positively rated answers as SFT rows.
    #[serde(default = "default_true")]
    pub include_positive: bool,
    /// Use selected alternatives as DPO pairs.
    #[serde(default = "default_true")]
    pub include_alternatives: bool,
    /// Fraction of rows, the newest, held out for evaluation.
    #[serde(default = "default_holdout")]
    #[schemars(range(min = 0.0, max = 0.5))]
    pub held_out_fraction: f64,
    /// Fewest training rows worth a retrain; fewer postpones the trigger.
    #[serde(default = "default_min_rows")]
    #[schemars(range(min = 1, max = 10000000))]
    pub min_rows: i64,
    /// Most rows in a snapshot (the newest are kept).
    #[serde(default = "default_max_rows")]
    #[schemars(range(min = 1, max = 10000000))]
    pub max_rows: i64,
    /// Drop rows whose prompt and target are identical to an earlier one.
    #[serde(default = "default_true")]
    pub dedupe: bool,
}

fn default_formats() -> Vec<DatasetFormat> {
    vec![DatasetFormat::Sft, DatasetFormat::Dpo]
}
fn default_holdout() -> f64 {
    0.1
}
fn default_min_rows() -> i64 {
    20
}
fn default_max_rows() -> i64 {
    100_000
}

impl Default for DatasetRecipe {
    fn default() -> Self {
        Self {
            formats: default_formats(),
            include_corrections: true,
            include_positive: true,
            include_alternatives: true,
            held_out_fraction: default_holdout(),
            min_rows: default_min_rows(),
            max_rows: default_max_rows(),
            dedupe: true,
        }
    }
}

/// A dataset format.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
pub enum DatasetFormat {
    /// Supervised fine-tuning rows: chat messages with the wanted answer.
    #[serde(rename = "SFT")]
    Sft,
    /// Preference pairs: a prompt with a chosen and a rejected answer.
    #[serde(rename = "DPO")]
    Dpo,
}

impl DatasetFormat {
    /// The name the CRD, the collector and the trainer contract use: `SFT` or `DPO`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sft => "SFT",
            Self::Dpo => "DPO",
        }
    }
}

/// The observed state of a FeedbackPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FeedbackPolicyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Reconciling`, `Stalled`, and `TriggerSuggested` in `suggest` mode.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Signals on the target since the last retrain (or since the policy was created).
    #[serde(default)]
    pub signals_since_last_retrain: i64,
    /// Statistics of the target's stable version over the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<SignalStats>,
    /// The last time a trigger fired, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_trigger: Option<TriggerRecord>,
    /// When the next trigger may fire (cooldown and daily budget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_eligible_time: Option<Time>,
    /// Times of the retrains of the last 24 hours, for the daily budget.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub recent_retrains: Vec<Time>,
    /// Name of the last RetrainJob this policy created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub last_retrain_job: Option<String>,
}

/// Feedback statistics of one version over a window, with the counts behind every rate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignalStats {
    /// The version these statistics describe.
    #[schemars(length(max = 63))]
    pub version: String,
    /// All signals.
    #[serde(default)]
    pub total: i64,
    /// Signals counted as positive.
    #[serde(default)]
    pub positive: i64,
    /// Signals counted as positive or negative (the denominator of the positive rate).
    #[serde(default)]
    pub judged: i64,
    /// positive / judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub positive_rate: Option<f64>,
    /// Ratings received.
    #[serde(default)]
    pub ratings: i64,
    /// Mean rating, normalised to 0..1 of its scale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_rating: Option<f64>,
    /// Corrections received.
    #[serde(default)]
    pub corrections: i64,
    /// corrections / interactions with feedback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correction_rate: Option<f64>,
    /// Error flags received.
    #[serde(default)]
    pub errors: i64,
    /// errors / interactions with feedback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<f64>,
    /// When the statistics were read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_at: Option<Time>,
}

/// A trigger that fired.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TriggerRecord {
    /// Identifier of the trigger, unique per policy; the RetrainJob it created is named after it.
    #[schemars(length(max = 128))]
    pub id: String,
    /// Why it fired.
    pub reason: TriggerReason,
    /// The numbers behind it, in words.
    #[serde(default)]
    #[schemars(length(max = 1024))]
    pub message: String,
    /// When it fired.
    pub time: Time,
    /// The RetrainJob created (none in `suggest` mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub retrain_job: Option<String>,
}
