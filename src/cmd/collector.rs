//! `flywheel collector`: its arguments, and running the collector until SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

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

pub async fn run(args: CollectorArgs) -> ExitCode {
    use crate::collector::{Collector, CollectorConfig};
    let mut config = CollectorConfig::new(args.listen, args.data_dir);
    config.token_file = args.token_file;
    config.database_url = args.database_url;
    config.retention = args.retention;
    config.max_body_bytes = args.max_body_bytes;
    config.queue = args.queue;
    let collector = match Collector::start(config).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "collector failed to start");
            eprintln!("flywheel collector: {e}");
            return ExitCode::FAILURE;
        }
    };
    super::process::shutdown_signal().await;
    tracing::info!("shutting down: finishing requests in flight and committing what is queued");
    collector.shutdown().await;
    ExitCode::SUCCESS
}
