//! `flywheel agent`: its arguments, and running the sidecar until SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

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
    /// The wanted adapters (`adapters.json` of the ModelDeployment's mounted ConfigMap); enables
    /// adapter canaries inside the pod (`spec.rollout.mode: Adapter`).
    #[arg(long)]
    pub adapters_file: Option<PathBuf>,
    /// Directory shared with the runtime where adapters are fetched, one per version.
    #[arg(long, default_value = "/var/lib/flywheel/adapters")]
    pub adapters_dir: PathBuf,
    /// Longest fetch and load of one adapter, in seconds.
    #[arg(long, default_value_t = 120)]
    pub adapter_load_timeout: u64,
}

pub async fn run(args: AgentArgs) -> ExitCode {
    use crate::agent::{Agent, AgentConfig, Capture};
    let upstream = match args.upstream.parse() {
        Ok(u) => u,
        Err(e) => {
            eprintln!("flywheel agent: --upstream {:?}: {e}", args.upstream);
            return ExitCode::from(2);
        }
    };
    let mut config = AgentConfig::new(args.listen, upstream, &args.model_version);
    config.admin_listen = args.admin_listen;
    config.upstream_health_path = args.upstream_health_path;
    config.namespace = args.namespace;
    config.deployment = args.deployment;
    config.collector_url = args.collector_url;
    config.collector_token_file = args.collector_token_file;
    config.queue_capacity = args.capture_queue;
    config.capture = Capture {
        sample_rate: args.sample_rate.clamp(0.0, 1.0),
        max_bytes: args.max_capture_bytes,
        redact_headers: args.redact_headers,
        redact_fields: args.redact_fields,
    };
    if let Some(file) = args.adapters_file {
        use crate::agent::adapters::{AdapterSettings, Vllm};
        let runtime = std::sync::Arc::new(Vllm::new(&args.upstream));
        let mut settings = AdapterSettings::new(file, args.adapters_dir, runtime);
        settings.load_timeout = std::time::Duration::from_secs(args.adapter_load_timeout.max(1));
        config.adapters = Some(settings);
    }
    let agent = match Agent::start(config).await {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "agent failed to start");
            eprintln!("flywheel agent: {e}");
            return ExitCode::FAILURE;
        }
    };
    super::process::shutdown_signal().await;
    tracing::info!("shutting down: finishing requests in flight and flushing captures");
    agent.shutdown().await;
    ExitCode::SUCCESS
}
