//! How the agent runs: its addresses, the runtime behind it, the collector, and what it
//! captures.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::http::Uri;

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The pod's serving port.
    pub listen: SocketAddr,
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub admin_listen: SocketAddr,
    /// The runtime, for example `http://127.0.0.1:8000`.
    pub upstream: Uri,
    /// Path of the runtime's readiness endpoint.
    pub upstream_health_path: String,
    /// The version the runtime serves.
    pub model_version: String,
    /// Namespace of the ModelDeployment.
    pub namespace: String,
    /// The ModelDeployment.
    pub deployment: String,
    /// Where captures go; none captures nothing.
    pub collector_url: Option<String>,
    /// A file with the collector's write token.
    pub collector_token_file: Option<PathBuf>,
    /// What is captured and how.
    pub capture: Capture,
    /// Interactions waiting for the collector at most; more are dropped.
    pub queue_capacity: usize,
    /// Interactions per request to the collector.
    pub batch_size: usize,
    /// Longest wait before a partial batch is sent.
    pub flush_interval: Duration,
    /// Largest request body forwarded.
    pub max_request_bytes: usize,
    /// LoRA adapters canaried inside the pod (`Adapter` rollout mode); none serves the base
    /// model alone.
    pub adapters: Option<super::adapters::AdapterSettings>,
}

impl AgentConfig {
    /// Defaults around the required settings.
    pub fn new(listen: SocketAddr, upstream: Uri, model_version: &str) -> Self {
        Self {
            listen,
            admin_listen: SocketAddr::from(([0, 0, 0, 0], 9091)),
            upstream,
            upstream_health_path: "/health".into(),
            model_version: model_version.into(),
            namespace: "default".into(),
            deployment: "unknown".into(),
            collector_url: None,
            collector_token_file: None,
            capture: Capture::default(),
            queue_capacity: 512,
            batch_size: 64,
            flush_interval: Duration::from_secs(1),
            max_request_bytes: 32 * 1024 * 1024,
            adapters: None,
        }
    }
}

/// What is captured.
#[derive(Debug, Clone, PartialEq)]
pub struct Capture {
    /// Fraction of requests captured (0 to 1).
    pub sample_rate: f64,
    /// Largest prompt message or answer kept, bytes (longer ones are truncated).
    pub max_bytes: usize,
    /// Request headers never captured (besides `authorization`, `cookie`, `proxy-authorization`).
    pub redact_headers: Vec<String>,
    /// JSON fields of the request body replaced by `[redacted]` before capture.
    pub redact_fields: Vec<String>,
}

impl Default for Capture {
    fn default() -> Self {
        Self { sample_rate: 1.0, max_bytes: 64 * 1024, redact_headers: Vec::new(), redact_fields: Vec::new() }
    }
}
