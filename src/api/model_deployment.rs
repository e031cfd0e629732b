//! `ModelDeployment` (`md`): a served model, its rollout of new versions, and its scaling.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, Probe, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Condition, Lineage, PullPolicy, URI_SCHEME_MESSAGE, URI_SCHEME_RULE, VERSION_PATTERN};

/// A model served on the cluster: the runtime that serves it, how it scales, and how a new
/// version (changed in spec, or produced by a RetrainJob) is rolled out as a canary judged on
/// user feedback.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "flywheel.dev",
    version = "v1alpha1",
    kind = "ModelDeployment",
    plural = "modeldeployments",
    shortname = "md",
    category = "flywheel",
    namespaced,
    status = "ModelDeploymentStatus",
    derive = "PartialEq",
    cel,
    doc = "A served model whose new versions roll out as canaries judged on user feedback.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Stable", type_ = "string", json_path = ".status.stable.version", description = "Version serving stable traffic"),
    printcolumn(name = "Canary", type_ = "string", json_path = ".status.canary.version", description = "Version under canary, if any"),
    printcolumn(name = "Weight", type_ = "integer", json_path = ".status.canary.weight", description = "Percent of traffic on the canary"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas", description = "Ready replicas over both tracks"),
    printcolumn(name = "Status", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status", description = "The Ready condition"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 56").message("metadata.name must be at most 56 characters, so that the child Service <name>-canary is a valid DNS label").reason(Reason::FieldValueInvalid)
)]
#[x_kube(cel)]
#[x_kube(validation = Rule::new("!has(self.replicas) || !has(self.scaling) || (self.replicas >= self.scaling.minReplicas && self.replicas <= self.scaling.maxReplicas)").message("replicas must lie within scaling.minReplicas..scaling.maxReplicas"))]
#[x_kube(validation = Rule::new("!has(self.traffic) || self.traffic.mode != 'GatewayAPI' || has(self.traffic.httpRouteRef)").message("traffic.httpRouteRef is required when traffic.mode is GatewayAPI"))]
#[x_kube(validation = Rule::new(AGENT_PORTS_RULE).message(AGENT_PORTS_MESSAGE).field_path(".runtime.port").reason(Reason::FieldValueInvalid))]
#[serde(rename_all = "camelCase")]
pub struct ModelDeploymentSpec {
    /// The model to serve: its name, the version label and where its weights are stored.
    /// Changing `model.version` starts a canary of that version.
    pub model: ModelSpec,
    /// The inference server container (vLLM, TGI, llama.cpp server, or any HTTP server).
    pub runtime: RuntimeSpec,
    /// A fixed number of replicas over both tracks. When set, the autoscaler is off and this
    /// count is used; it is the field `kubectl scale` and a HorizontalPodAutoscaler write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: Option<i32>,
    /// Autoscaling on in-flight requests (or a runtime metric), per track.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<ScalingSpec>,
    /// How a new version is rolled out: canary steps, the feedback analysis gating each step,
    /// and whether a person approves promotion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutSpec>,
    /// How traffic is split between the stable and canary tracks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<TrafficSpec>,
    /// The `flywheel agent` sidecar that stamps answers with the version and captures
    /// interactions for the collector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentSpec>,
}

impl ModelDeploymentSpec {
    /// New versions are LoRA adapters canaried inside the stable pods (`spec.rollout.mode:
    /// Adapter`).
    pub fn adapter_mode(&self) -> bool {
        self.rollout.as_ref().is_some_and(|r| r.mode == RolloutMode::Adapter)
    }
}

/// The model a ModelDeployment serves.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelSpec {
    /// Name of the model, for example `qwen2.5-0.5b-instruct`; passed to the runtime as
    /// `FLYWHEEL_MODEL_NAME`.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Version label of the weights at `uri`, for example `v1`. It labels the pods of the
    /// track serving it and stamps every answer (`x-flywheel-model-version`).
    #[schemars(length(min = 1, max = 63), regex(pattern = VERSION_PATTERN))]
    pub version: String,
    /// Where the weights are: `pvc://claim/path` (mounted read-only), or `s3://`, `gs://`,
    /// `https://`, `hf://org/model`, `file://` (fetched by an init container before the runtime
    /// starts).
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new(URI_SCHEME_RULE).message(URI_SCHEME_MESSAGE))]
    #[x_kube(validation = Rule::new("!self.startsWith('pvc://') || self.matches('^pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/.*)?$')").message("a pvc:// URI must name a claim: pvc://claim/path"))]
    pub uri: String,
}

/// The agent sidecar's ports: the runtime cannot listen on them while the agent is injected.
pub(crate) const AGENT_PORTS_RULE: &str = "(has(self.agent) && has(self.agent.enabled) && !self.agent.enabled) || (self.runtime.port != 8080 && self.runtime.port != 9091)";
const AGENT_PORTS_MESSAGE: &str = "runtime.port cannot be 8080 or 9091: the flywheel agent sidecar listens on 8080 (its proxy) and 9091 (its admin port) in every inference pod; choose another port for the runtime, or disable the agent";

/// The inference server container and its pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeSpec {
    /// Container image of the inference server, for example `vllm/vllm-openai:v0.8.5`.
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    /// Image pull policy of the runtime container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// Entrypoint of the runtime container; the image's own when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(max = 4096)))]
    pub command: Vec<String>,
    /// Arguments of the runtime. `$(FLYWHEEL_MODEL_DIR)` and the other `FLYWHEEL_*` variables
    /// expand as in any container argument.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 4096)))]
    pub args: Vec<String>,
    /// Port the runtime serves HTTP on.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Environment of the runtime container. `FLYWHEEL_MODEL_NAME`, `FLYWHEEL_MODEL_VERSION`,
    /// `FLYWHEEL_MODEL_URI` and `FLYWHEEL_MODEL_DIR` are set by the operator.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.all(e, !e.name.startsWith('FLYWHEEL_'))").message("names starting with FLYWHEEL_ are reserved for the operator"))]
    pub env: Vec<EnvVar>,
    /// Compute resources of the runtime container, for example `nvidia.com/gpu: 1` in limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node labels the inference pods must be scheduled on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the inference pods, for example for tainted GPU nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub tolerations: Vec<Toleration>,
    /// Readiness probe of the runtime; by default an HTTP GET of `/health` on the port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Probe>,
    /// Liveness probe of the runtime; none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Probe>,
    /// Startup probe of the runtime, for servers that take long to load weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_probe: Option<Probe>,
    /// Service account the inference pods run as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub service_account_name: Option<String>,
    /// Labels added to the inference pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub pod_labels: BTreeMap<String, String>,
    /// Annotations added to the inference pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub pod_annotations: BTreeMap<String, String>,
}

fn default_port() -> i32 {
    8000
}

/// Autoscaling of each track on its own load, in the spirit of Knative's autoscaler.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(cel)]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("minReplicas must not exceed maxReplicas"))]
#[x_kube(validation = Rule::new("self.panicWindowSeconds < self.stableWindowSeconds").message("panicWindowSeconds must be shorter than stableWindowSeconds"))]
#[serde(rename_all = "camelCase")]
pub struct ScalingSpec {
    /// Fewest replicas of the stable track.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub min_replicas: i32,
    /// Most replicas of the stable track.
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// The load signal scaled on.
    #[serde(default)]
    pub metric: ScalingMetric,
    /// Runtime metric names summed as the load of a pod when `metric` is `RuntimeMetric`, for
    /// example `vllm:num_requests_running` and `vllm:num_requests_waiting`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8), inner(length(min = 1, max = 256)))]
    pub runtime_metrics: Vec<String>,
    /// Wanted load per replica (in-flight requests, or the runtime metric's unit).
    #[serde(default = "default_target")]
    #[schemars(range(min = 0.01, max = 100000.0))]
    pub target_per_replica: f64,
    /// Window over which the load is averaged for normal decisions, in seconds.
    #[serde(default = "default_stable_window")]
    #[schemars(range(min = 6, max = 3600))]
    pub stable_window_seconds: i32,
    /// Short window that scales up at once on a burst, in seconds.
    #[serde(default = "default_panic_window")]
    #[schemars(range(min = 1, max = 600))]
    pub panic_window_seconds: i32,
    /// Load over capacity (as a ratio) on the panic window that enters panic mode.
    #[serde(default = "default_panic_threshold")]
    #[schemars(range(min = 1.0, max = 10.0))]
    pub panic_threshold: f64,
    /// How long a lower recommendation must hold before replicas are removed, in seconds.
    #[serde(default = "default_scale_down_delay")]
    #[schemars(range(min = 0, max = 3600))]
    pub scale_down_delay_seconds: i32,
    /// Most a track may grow in one decision, as a factor of its current replicas.
    #[serde(default = "default_max_scale_up_rate")]
    #[schemars(range(min = 1.0, max = 1000.0))]
    pub max_scale_up_rate: f64,
    /// Most a track may shrink in one decision, as a divisor of its current replicas.
    #[serde(default = "default_max_scale_down_rate")]
    #[schemars(range(min = 1.0, max = 1000.0))]
    pub max_scale_down_rate: f64,
}

fn default_min_replicas() -> i32 {
    1
}
fn default_max_replicas() -> i32 {
    1
}
fn default_target() -> f64 {
    4.0
}
fn default_stable_window() -> i32 {
    60
}
fn default_panic_window() -> i32 {
    6
}
fn default_panic_threshold() -> f64 {
    2.0
}
fn default_scale_down_delay() -> i32 {
    300
}
fn default_max_scale_up_rate() -> f64 {
    1000.0
}
fn default_max_scale_down_rate() -> f64 {
    2.0
}

impl Default for ScalingSpec {
    fn default() -> Self {
        Self {
            min_replicas: default_min_replicas(),
            max_replicas: default_max_replicas(),
            metric: ScalingMetric::default(),
            runtime_metrics: Vec::new(),
            target_per_replica: default_target(),
            stable_window_seconds: default_stable_window(),
            panic_window_seconds: default_panic_window(),
            panic_threshold: default_panic_threshold(),
            scale_down_delay_seconds: default_scale_down_delay(),
            max_scale_up_rate: default_max_scale_up_rate(),
            max_scale_down_rate: default_max_scale_down_rate(),
        }
    }
}

/// The load signal the autoscaler reads from each ready pod.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum ScalingMetric {
    /// In-flight requests reported by the agent sidecar.
    #[default]
    InFlight,
    /// The sum of the runtime's own Prometheus metrics named in `runtimeMetrics`.
    RuntimeMetric,
}

/// How new versions roll out.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(cel)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// Canary steps, each with a share of traffic and a gate. Weights rise strictly from 1 to
    /// at most 100; after the last step passes, the canary is promoted.
    #[serde(default = "default_steps")]
    #[schemars(length(min = 1, max = 16))]
    #[x_kube(validation = Rule::new("self.map(s, s.weight).isSorted() && self.all(a, self.exists_one(b, b.weight == a.weight))").message("step weights must rise strictly from one step to the next"))]
    pub steps: Vec<CanaryStep>,
    /// The statistical test on live feedback that gates `Analysis` steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisSpec>,
    /// `Auto` promotes when the last step passes; `Manual` waits at the end for
    /// `flywheel rollout promote`.
    #[serde(default)]
    pub approval: Approval,
    /// Entries of `status.history` to keep (oldest dropped first).
    #[serde(default = "default_history_limit")]
    #[schemars(range(min = 1, max = 50))]
    pub history_limit: i32,
    /// Seconds the canary track may stay not Ready (crash-looping, unschedulable, a model that
    /// fails to fetch or load) before the rollout is aborted with `ProgressDeadlineExceeded` and
    /// stable takes all traffic again. Counted from when the canary last stopped being Ready
    /// (or started); evidence already collected in the step is kept when it becomes Ready again.
    #[serde(default = "default_progress_deadline")]
    #[schemars(range(min = 10, max = 86400))]
    pub progress_deadline_seconds: i64,
    /// Where a new version is canaried: `Deployment` (a canary track of its own pods, for whole
    /// models) or `Adapter` (a LoRA adapter from a RetrainJob, loaded at run time into the
    /// stable pods' runtime next to the base model `spec.model`; the agent splits requests
    /// between the stable and the canary adapter; no new pods, no new GPUs).
    #[serde(default)]
    pub mode: RolloutMode,
}

/// Where a new version is canaried.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum RolloutMode {
    /// A canary Deployment of its own serves the new version (whole models).
    #[default]
    Deployment,
    /// The new version is a LoRA adapter canaried inside the stable pods: the runtime loads it
    /// next to the base model (vLLM with `--enable-lora` and
    /// `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`), and the agent sends the canary's share of
    /// requests to it, sticky per subject.
    Adapter,
}

fn default_history_limit() -> i32 {
    10
}

fn default_progress_deadline() -> i64 {
    600
}

fn default_steps() -> Vec<CanaryStep> {
    [10, 50]
        .into_iter()
        .map(|weight| CanaryStep {
            weight,
            gate: Gate::Analysis,
            pause_seconds: None,
            deadline_seconds: default_step_deadline(),
        })
        .collect()
}

impl Default for RolloutSpec {
    fn default() -> Self {
        Self {
            steps: default_steps(),
            analysis: None,
            approval: Approval::default(),
            history_limit: default_history_limit(),
            progress_deadline_seconds: default_progress_deadline(),
            mode: RolloutMode::default(),
        }
    }
}

/// One canary step.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("self.gate != 'Pause' || has(self.pauseSeconds)").message("pauseSeconds is required when gate is Pause"))]
#[serde(rename_all = "camelCase")]
pub struct CanaryStep {
    /// Percent of traffic (and, by replica ratio, of replicas) sent to the canary in this step.
    #[schemars(range(min = 1, max = 100))]
    pub weight: i32,
    /// What lets the step pass: `Analysis` (enough feedback and a canary not worse than stable),
    /// `Pause` (a fixed time), or `Manual` (`flywheel rollout promote`).
    #[serde(default)]
    pub gate: Gate,
    /// How long a `Pause` step lasts, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 604800))]
    pub pause_seconds: Option<i64>,
    /// How long the step may wait for its gate before the rollout aborts, in seconds. Missing or
    /// thin feedback never promotes: it waits, and aborts here.
    #[serde(default = "default_step_deadline")]
    #[schemars(range(min = 60, max = 2592000))]
    pub deadline_seconds: i64,
}

fn default_step_deadline() -> i64 {
    24 * 3600
}

/// What lets a canary step pass.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum Gate {
    /// The feedback analysis passes.
    #[default]
    Analysis,
    /// A fixed time passes.
    Pause,
    /// A person runs `flywheel rollout promote`.
    Manual,
}

/// Whether promotion at the end of the steps needs a person.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum Approval {
    /// Promote as soon as the last step passes.
    #[default]
    Auto,
    /// Wait at the end for `flywheel rollout promote`.
    Manual,
}

/// The sequential test comparing canary and stable on the same period's feedback.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(cel)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisSpec {
    /// Signals each arm needs before any verdict.
    #[serde(default = "default_min_samples")]
    #[schemars(range(min = 1, max = 10000000))]
    pub min_samples_per_arm: i64,
    /// Largest drop in positive rate (canary below stable) still accepted, as a fraction.
    #[serde(default = "default_margin")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub margin: f64,
    /// Confidence of every verdict (one minus the false-promotion rate the test allows).
    #[serde(default = "default_confidence")]
    #[schemars(range(min = 0.5, max = 0.9999))]
    pub confidence: f64,
    /// Largest rise in error rate (canary above stable) still accepted, as a fraction.
    #[serde(default = "default_guardrail")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_error_rate_increase: f64,
    /// Largest rise in correction rate (canary above stable) still accepted, as a fraction.
    #[serde(default = "default_guardrail")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_correction_rate_increase: f64,
    /// How often the analysis looks at the statistics, in seconds.
    #[serde(default = "default_interval")]
    #[schemars(range(min = 1, max = 3600))]
    pub interval_seconds: i32,
}

fn default_min_samples() -> i64 {
    200
}
fn default_margin() -> f64 {
    0.05
}
fn default_confidence() -> f64 {
    0.95
}
fn default_guardrail() -> f64 {
    0.05
}
fn default_interval() -> i32 {
    10
}

impl Default for AnalysisSpec {
    fn default() -> Self {
        Self {
            min_samples_per_arm: default_min_samples(),
            margin: default_margin(),
            confidence: default_confidence(),
            max_error_rate_increase: default_guardrail(),
            max_correction_rate_increase: default_guardrail(),
            interval_seconds: default_interval(),
        }
    }
}

/// How traffic is split between tracks.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficSpec {
    /// `ReplicaRatio` (the default) splits by the share of replicas behind the shared Service;
    /// `GatewayAPI` sets exact weights on the backends of an HTTPRoute.
    #[serde(default)]
    pub mode: TrafficMode,
    /// The HTTPRoute (in the same namespace) whose backends Flywheel weights in `GatewayAPI` mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_route_ref: Option<super::common::LocalRef>,
}

/// How traffic is split between tracks.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum TrafficMode {
    /// Canary replicas = round(total × weight), at least one, behind one Service.
    #[default]
    ReplicaRatio,
    /// Exact weights on the backends of a Gateway API HTTPRoute.
    #[serde(rename = "GatewayAPI")]
    GatewayApi,
}

/// The agent sidecar injected into every inference pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentSpec {
    /// Inject the agent (the default). Without it, answers carry no version stamp and the
    /// autoscaler must use a runtime metric.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Image of the agent; the operator's own image by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// Fraction of interactions captured for the collector.
    #[serde(default = "default_sample_rate")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub sample_rate: f64,
    /// Largest prompt or answer captured, in bytes; longer ones are truncated.
    #[serde(default = "default_max_capture_bytes")]
    #[schemars(range(min = 0, max = 1048576))]
    pub max_capture_bytes: i32,
    /// Request headers never captured (always `Authorization` and `Cookie`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 256)))]
    pub redact_headers: Vec<String>,
    /// JSON fields of the request body replaced by `[redacted]` before capture.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 256)))]
    pub redact_fields: Vec<String>,
    /// Compute resources of the agent container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

fn default_true() -> bool {
    true
}
fn default_sample_rate() -> f64 {
    1.0
}
fn default_max_capture_bytes() -> i32 {
    65536
}

impl Default for AgentSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            image: None,
            sample_rate: default_sample_rate(),
            max_capture_bytes: default_max_capture_bytes(),
            redact_headers: Vec::new(),
            redact_fields: Vec::new(),
            resources: None,
        }
    }
}

/// The observed state of a ModelDeployment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelDeploymentStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Reconciling`, `Stalled`, and `Progressing` while a rollout runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The version serving stable traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable: Option<TrackStatus>,
    /// The version under canary, while a rollout runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryStatus>,
    /// A version handed over by a RetrainJob, waiting for its canary to start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<Candidate>,
    /// The `spec.model` (version and URI) the controller last acted on: a spec whose model
    /// differs from it starts a canary of the new version; a promoted retrained version does not
    /// count as a spec change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_model: Option<ModelRef>,
    /// A manual rollout action requested with `flywheel rollout promote|abort`, written to the
    /// status subresource so that spec stays owned by Git. Cleared once carried out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_action: Option<RequestedAction>,
    /// Replicas over both tracks (the scale subresource's status).
    #[serde(default)]
    pub replicas: i32,
    /// Ready replicas over both tracks.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of all inference pods, as a string (the scale subresource's selector).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub selector: Option<String>,
    /// The autoscaler's last decision per track.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["track"]))]
    pub scaling: Vec<ScalingDecision>,
    /// Promotions, rollbacks and aborts, newest last, bounded by `rollout.historyLimit`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    pub history: Vec<HistoryEntry>,
}

/// A served track.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrackStatus {
    /// Version label served.
    #[schemars(length(max = 63))]
    pub version: String,
    /// Where its weights are.
    #[schemars(length(max = 2048))]
    pub uri: String,
    /// Replicas of the track.
    #[serde(default)]
    pub replicas: i32,
    /// Ready replicas of the track.
    #[serde(default)]
    pub ready_replicas: i32,
    /// When this version became stable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
    /// The version is a LoRA adapter served on top of the base model `spec.model` (`Adapter`
    /// rollout mode).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adapter: bool,
    /// Where the version came from, when a RetrainJob produced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage: Option<Lineage>,
}

/// A model version and where its weights are.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelRef {
    /// Version label.
    #[schemars(length(max = 63))]
    pub version: String,
    /// Where its weights are.
    #[schemars(length(max = 2048))]
    pub uri: String,
}

/// The canary track of a running rollout.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStatus {
    /// Version label under canary.
    #[schemars(length(max = 63))]
    pub version: String,
    /// Where its weights are.
    #[schemars(length(max = 2048))]
    pub uri: String,
    /// Percent of traffic on the canary now.
    #[serde(default)]
    #[schemars(range(min = 0, max = 100))]
    pub weight: i32,
    /// Index of the current step in `spec.rollout.steps`.
    #[serde(default)]
    #[schemars(range(min = 0, max = 16))]
    pub step: i32,
    /// When the current step started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_at: Option<Time>,
    /// When the rollout started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// Since when the canary track has not been Ready (unset while it is Ready); the rollout is
    /// aborted once this is older than `spec.rollout.progressDeadlineSeconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_ready_since: Option<Time>,
    /// Replicas of the canary track.
    #[serde(default)]
    pub replicas: i32,
    /// Ready replicas of the canary track.
    #[serde(default)]
    pub ready_replicas: i32,
    /// The evidence of the last analysis of the current step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Evidence>,
    /// The version is a LoRA adapter served on top of the base model `spec.model` (`Adapter`
    /// rollout mode).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adapter: bool,
    /// In `Adapter` mode, the ready pods whose runtime could not load the canary adapter, by
    /// name, with the reason; the step's clock waits for every ready pod, and the progress
    /// deadline aborts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub adapter_failures: Vec<PodAdapterFailure>,
    /// Where the version came from, when a RetrainJob produced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage: Option<Lineage>,
}

/// A version handed over by a RetrainJob.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Candidate {
    /// Version label of the candidate.
    #[schemars(length(max = 63))]
    pub version: String,
    /// Where its weights are.
    #[schemars(length(max = 2048))]
    pub uri: String,
    /// When it was handed over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handed_over_at: Option<Time>,
    /// The version is a LoRA adapter served on top of the base model `spec.model` (`Adapter`
    /// rollout mode).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adapter: bool,
    /// Where it came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage: Option<Lineage>,
}

/// A manual rollout action.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestedAction {
    /// `Promote` passes the current step's gate (or the final approval); `Abort` rolls back.
    pub action: RolloutAction,
    /// The canary version the action is meant for; ignored when another version is under canary.
    #[schemars(length(max = 63))]
    pub version: String,
    /// When it was requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_at: Option<Time>,
    /// Who asked, for the history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub requested_by: Option<String>,
}

/// A manual rollout action.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RolloutAction {
    /// Advance past the current gate.
    Promote,
    /// Remove the canary and return all traffic to stable.
    Abort,
}

/// The statistics behind one canary verdict.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Evidence {
    /// When the analysis looked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
    /// Signals on the stable arm over the step's period.
    #[serde(default)]
    pub stable_samples: i64,
    /// Signals on the canary arm over the step's period.
    #[serde(default)]
    pub canary_samples: i64,
    /// Positive rate of the stable arm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_positive_rate: Option<f64>,
    /// Positive rate of the canary arm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_positive_rate: Option<f64>,
    /// Lower end of the confidence interval of (canary − stable) positive rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub difference_lower: Option<f64>,
    /// Upper end of the confidence interval of (canary − stable) positive rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub difference_upper: Option<f64>,
    /// What the analysis concluded.
    pub verdict: Verdict,
    /// Why, in words.
    #[serde(default)]
    #[schemars(length(max = 1024))]
    pub message: String,
    /// Which signal mapping judged the arms: `FeedbackPolicy <name>` (the policy that targets
    /// this ModelDeployment), or `default` when none does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 300))]
    pub judged_by: Option<String>,
}

/// The outcome of one look at the evidence.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum Verdict {
    /// Not enough data (or not yet conclusive): wait.
    #[default]
    Inconclusive,
    /// The canary is not worse than stable by more than the margin: the step passes.
    Pass,
    /// The canary is worse with confidence (or a guardrail broke): roll back.
    Fail,
}

/// The autoscaler's decision for one track.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingDecision {
    /// The track: `stable` or `canary`.
    pub track: Track,
    /// Replicas the autoscaler wants.
    pub desired_replicas: i32,
    /// Why, in words (the windows' averages, panic mode, the bound that applied).
    #[schemars(length(max = 1024))]
    pub reason: String,
    /// When the decision was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
}

/// A serving track.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Track {
    /// The track serving the promoted version.
    Stable,
    /// The track serving the version under canary.
    Canary,
}

impl Track {
    /// Lower-case name used in child names and labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stable => "stable",
            Self::Canary => "canary",
        }
    }
}

/// One promotion, rollback or abort.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    /// What happened.
    #[serde(rename = "type")]
    pub type_: HistoryType,
    /// The version promoted, rolled back or aborted.
    #[schemars(length(max = 63))]
    pub version: String,
    /// The stable version before the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub previous_version: Option<String>,
    /// When.
    pub time: Time,
    /// Machine-readable reason, in CamelCase.
    #[schemars(length(max = 128))]
    pub reason: String,
    /// Why, in words.
    #[serde(default)]
    #[schemars(length(max = 1024))]
    pub message: String,
    /// The evidence of the last analysis, when one decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Evidence>,
    /// Where the version came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage: Option<Lineage>,
}

/// What a history entry records.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum HistoryType {
    /// The canary became stable.
    Promoted,
    /// The analysis found the canary worse and removed it.
    RolledBack,
    /// The rollout stopped without a verdict (manual abort, deadline, superseded).
    Aborted,
    /// A candidate handed over by a RetrainJob could not be served (an unreadable URI, a missing
    /// claim) and was refused before any traffic reached it.
    Rejected,
}

/// A pod whose runtime could not load an adapter.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodAdapterFailure {
    /// The pod.
    #[schemars(length(max = 253))]
    pub pod: String,
    /// Why, as the pod's agent reports it (the runtime's answer, a fetch error, a timeout).
    #[schemars(length(max = 512))]
    pub message: String,
}
