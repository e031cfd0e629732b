//! `flywheel sim`: its arguments, and running the simulated cluster until SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

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

pub async fn run(args: SimArgs) -> ExitCode {
    let config = crate::sim::SimConfig { listen: args.listen, ..crate::sim::SimConfig::default() };
    let sim = match crate::sim::Sim::start(config).await {
        Ok(sim) => sim,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the simulated cluster");
            return ExitCode::FAILURE;
        }
    };
    if let Some(path) = &args.kubeconfig_out {
        if let Err(e) = sim.write_kubeconfig(path) {
            tracing::error!(error = %e, "cannot write the kubeconfig");
            sim.shutdown().await;
            return ExitCode::FAILURE;
        }
        tracing::info!(kubeconfig = %path.display(), server = %sim.url(), "kubeconfig written");
    }
    println!("{}", sim.url());
    super::process::shutdown_signal().await;
    tracing::info!("shutting down");
    sim.shutdown().await;
    ExitCode::SUCCESS
}
