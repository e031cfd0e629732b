//! The command line: one subcommand per component.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Flywheel closes the feedback loop of small language models on Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "flywheel", version, about, long_about = None)]
pub struct Cli {
    /// Log format: `json` (the default, for clusters) or `text` (for a terminal).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Json, env = "FLYWHEEL_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// The component to run.
    #[command(subcommand)]
    pub command: Command,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
}

/// The components of the one binary.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controllers for ModelDeployment, FeedbackPolicy and RetrainJob.
    Operator(OperatorArgs),
    /// Run the feedback collector: ingestion, statistics, dataset snapshots.
    Collector(CollectorArgs),
    /// Run the inference sidecar: version stamps, interaction capture, in-flight metrics.
    Agent(AgentArgs),
    /// Run the simulated Kubernetes API server used by the tests and the demo.
    Sim(SimArgs),
    /// Run the whole loop on a simulated cluster, in one process.
    Demo(DemoArgs),
    /// Print the CustomResourceDefinitions (or write one file per CRD).
    Crds(CrdsArgs),
    /// Show, promote or abort a ModelDeployment's rollout.
    Rollout(RolloutArgs),
    /// Fetch a model into a directory (the init container of inference pods).
    FetchModel(FetchModelArgs),
}

/// `flywheel operator`.
#[derive(Debug, Args)]
pub struct OperatorArgs {
    /// Base URL of the feedback collector; `Analysis` gates read its statistics.
    #[arg(long, env = "FLYWHEEL_COLLECTOR_URL")]
    pub collector_url: Option<String>,
    /// File holding a collector token (`read` scope is enough for the operator).
    #[arg(long, env = "FLYWHEEL_COLLECTOR_TOKEN_FILE")]
    pub collector_token_file: Option<PathBuf>,
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub metrics_listen: SocketAddr,
    /// Elect a leader among replicas on a Lease; `--leader-elect=false` reconciles at once.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Name of the Lease.
    #[arg(long, default_value = "flywheel-operator")]
    pub lease_name: String,
    /// Namespace of the Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "flywheel-system")]
    pub lease_namespace: String,
    /// This replica's identity in the Lease (the pod name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Seconds a lease is valid without renewal.
    #[arg(long, default_value_t = 15)]
    pub lease_duration: u64,
    /// Seconds a leader keeps trying to renew before it steps down.
    #[arg(long, default_value_t = 10)]
    pub renew_deadline: u64,
    /// Seconds between attempts to acquire or renew.
    #[arg(long, default_value_t = 2)]
    pub retry_period: u64,
    /// Reconciles running at once per controller.
    #[arg(long, default_value_t = 8)]
    pub concurrency: u16,
    /// Image that runs `flywheel fetch-model` and the agent in inference pods (the operator's own).
    #[arg(long, env = "FLYWHEEL_IMAGE")]
    pub image: Option<String>,
    /// Secret in each ModelDeployment's namespace (key `token`) with the collector token the
    /// injected agents send captures with.
    #[arg(long, default_value = "flywheel-collector-token")]
    pub collector_token_secret: String,
    /// Least seconds between two status writes of a FeedbackPolicy whose statistics alone
    /// changed (a busy deployment's statistics change with every commit).
    #[arg(long, default_value_t = 10)]
    pub stats_write_interval: u64,
    /// Watch, list and write only in this namespace (repeat the flag for several; the
    /// environment variable takes a comma-separated list). Unset: every namespace.
    #[arg(
        long = "watch-namespace",
        env = "FLYWHEEL_WATCH_NAMESPACES",
        value_delimiter = ',',
        value_name = "NAMESPACE"
    )]
    pub watch_namespaces: Vec<String>,
}

/// `flywheel rollout`.
#[derive(Debug, Args)]
pub struct RolloutArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: RolloutCommand,
}

/// Manual control of a ModelDeployment's rollout, through its status subresource.
#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Show the stable and canary versions, the step, the evidence and the history.
    Status(RolloutTarget),
    /// Pass the current step's gate (or give the final approval).
    Promote(RolloutTarget),
    /// Remove the canary and return all traffic to stable.
    Abort(RolloutTarget),
}

/// The ModelDeployment a rollout command acts on.
#[derive(Debug, Args)]
pub struct RolloutTarget {
    /// Name of the ModelDeployment.
    pub name: String,
    /// Its namespace (the kubeconfig's by default).
    #[arg(short, long)]
    pub namespace: Option<String>,
}

/// `flywheel collector`.
#[derive(Debug, Args)]
pub struct CollectorArgs {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:8090")]
    pub listen: SocketAddr,
    /// Directory of the embedded SQLite store (dataset snapshots included) and of a generated
    /// token file.
    #[arg(long, default_value = "/var/lib/flywheel")]
    pub data_dir: PathBuf,
    /// File of bearer tokens, one per line, each optionally followed by `read` or `write`;
    /// re-read when it changes. Without it a write token is generated into
    /// `<data-dir>/token`.
    #[arg(long, env = "FLYWHEEL_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// PostgreSQL URL, to run several collector replicas on one database.
    #[arg(long, env = "FLYWHEEL_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Events older than this are purged (`90d`, `12h`, ...).
    #[arg(long, default_value = "90d", value_parser = crate::collector::parse_duration)]
    pub retention: std::time::Duration,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 8 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Requests waiting for a commit before new ones get 429.
    #[arg(long, default_value_t = 4096)]
    pub queue: usize,
}

/// `flywheel agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Address to listen on (the pod's serving port).
    #[arg(long)]
    pub listen: SocketAddr,
    /// URL of the runtime behind the agent.
    #[arg(long)]
    pub upstream: String,
    /// Version of the model the runtime serves.
    #[arg(long)]
    pub model_version: String,
    /// Base URL of the feedback collector; no capture without it.
    #[arg(long, env = "FLYWHEEL_COLLECTOR_URL")]
    pub collector_url: Option<String>,
    /// File holding the collector's write token.
    #[arg(long, env = "FLYWHEEL_COLLECTOR_TOKEN_FILE")]
    pub collector_token_file: Option<PathBuf>,
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, default_value = "0.0.0.0:9091")]
    pub admin_listen: SocketAddr,
    /// Path of the runtime's readiness endpoint (the agent's readiness follows it).
    #[arg(long, default_value = "/health")]
    pub upstream_health_path: String,
    /// Namespace of the ModelDeployment.
    #[arg(long, env = "FLYWHEEL_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Name of the ModelDeployment.
    #[arg(long, env = "FLYWHEEL_MODEL_DEPLOYMENT", default_value = "unknown")]
    pub deployment: String,
    /// Fraction of interactions captured.
    #[arg(long, default_value_t = 1.0)]
    pub sample_rate: f64,
    /// Largest prompt message or answer captured, in bytes.
    #[arg(long, default_value_t = 65536)]
    pub max_capture_bytes: usize,
    /// Request header never captured (repeatable); Authorization and Cookie never are.
    #[arg(long = "redact-header")]
    pub redact_headers: Vec<String>,
    /// JSON field of the request body replaced by `[redacted]` before capture (repeatable).
    #[arg(long = "redact-field")]
    pub redact_fields: Vec<String>,
    /// Interactions waiting for the collector at most; more are dropped and counted.
    #[arg(long, default_value_t = 512)]
    pub capture_queue: usize,
}

/// `flywheel sim`.
#[derive(Debug, Args)]
pub struct SimArgs {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Where to write a kubeconfig for the simulated cluster.
    #[arg(long)]
    pub kubeconfig_out: Option<PathBuf>,
}

/// A demo scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// A quality dip, a retrain, a better version promoted.
    Improve,
    /// A worse candidate rolled back.
    Regression,
}

/// `flywheel demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The story to play.
    #[arg(long, value_enum, default_value_t = Scenario::Improve)]
    pub scenario: Scenario,
    /// How many loops to run.
    #[arg(long, default_value_t = 1)]
    pub cycles: u32,
    /// How much faster than real time simulated time runs.
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Print the summary as one JSON object on the last line.
    #[arg(long)]
    pub json: bool,
    /// Where to write a kubeconfig for the simulated cluster.
    #[arg(long)]
    pub kubeconfig_out: Option<PathBuf>,
}

/// `flywheel fetch-model`.
#[derive(Debug, Args)]
pub struct FetchModelArgs {
    /// The model URI (`s3://`, `gs://`, `https://`, `hf://`).
    pub uri: String,
    /// The directory to fetch into.
    pub dir: PathBuf,
    /// Files downloaded at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Attempts per request on transport errors, 429 and 5xx.
    #[arg(long, default_value_t = 5)]
    pub attempts: u32,
    /// Extra CA certificates (PEM) to trust for HTTPS, besides the system's.
    #[arg(long, env = "FLYWHEEL_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Allow plain `http://` URLs and object store endpoints (trusted networks only).
    #[arg(long)]
    pub allow_http: bool,
    /// Object store option `KEY=VALUE` (for example `aws_endpoint=https://minio:9000`),
    /// applied over the `AWS_*` and `GOOGLE_*` environment.
    #[arg(long = "store-option", value_name = "KEY=VALUE")]
    pub store_options: Vec<String>,
}

/// `flywheel crds`.
#[derive(Debug, Args)]
pub struct CrdsArgs {
    /// Write one `<name>.yaml` per CRD into this directory instead of printing a stream.
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
}
