//! `flywheel operator`: its arguments, and running the operator until SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

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

pub async fn run(args: OperatorArgs) -> ExitCode {
    use std::time::Duration;
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "no Kubernetes client: set KUBECONFIG or run in a cluster");
            return ExitCode::FAILURE;
        }
    };
    if args.leader_elect && (args.renew_deadline >= args.lease_duration || args.retry_period >= args.renew_deadline) {
        tracing::error!(
            lease = args.lease_duration,
            renew = args.renew_deadline,
            retry = args.retry_period,
            "need retry-period < renew-deadline < lease-duration"
        );
        return ExitCode::from(2);
    }
    let identity = args.identity.clone().unwrap_or_else(|| format!("flywheel-{}", uuid::Uuid::new_v4().simple()));
    let leader_election = args.leader_elect.then(|| crate::operator::leader::LeaseConfig {
        name: args.lease_name.clone(),
        namespace: args.lease_namespace.clone(),
        identity,
        lease_duration: Duration::from_secs(args.lease_duration),
        renew_deadline: Duration::from_secs(args.renew_deadline),
        retry_period: Duration::from_secs(args.retry_period),
    });
    let config = crate::operator::OperatorConfig {
        collector_url: args.collector_url.clone(),
        metrics_listen: args.metrics_listen,
        leader_election,
        concurrency: args.concurrency.max(1),
        operator_image: args.image.clone().unwrap_or_else(crate::operator::default_image),
        collector_token_secret: args.collector_token_secret.clone(),
        stats_write_interval: Duration::from_secs(args.stats_write_interval.max(1)),
        watch_namespaces: args
            .watch_namespaces
            .iter()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect(),
        ..crate::operator::OperatorConfig::default()
    };
    let mut config = config;
    if let Some(url) = &args.collector_url {
        let token = match &args.collector_token_file {
            Some(path) => match std::fs::read_to_string(path) {
                Ok(text) => text.split_whitespace().next().map(str::to_string),
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "cannot read the collector token");
                    return ExitCode::FAILURE;
                }
            },
            None => None,
        };
        config.collector_token = token.clone();
        config.analysis = std::sync::Arc::new(
            crate::operator::model_deployment::feedback_analysis::CollectorAnalysis::new(url, token),
        );
    }
    let operator = match crate::operator::start(client, config).await {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the operator");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(metrics = %operator.metrics_addr, "operator started");
    super::process::shutdown_signal().await;
    tracing::info!("shutting down: finishing reconciles, releasing the lease");
    operator.shutdown().await;
    ExitCode::SUCCESS
}
