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
    /// Run pods of IMAGE (any tag) as real processes of COMMAND: `IMAGE=COMMAND [ARG...]`, the
    /// command standing for the image's entrypoint. Repeatable; a pod runs as processes when
    /// every one of its images is mapped, and is scripted otherwise.
    #[arg(long = "run-image", value_name = "IMAGE=COMMAND", value_parser = parse_mapping)]
    pub run_images: Vec<(String, Vec<String>)>,
    /// Where pods run as processes keep their volumes, claims and logs (default: a directory
    /// under the system's temporary directory, removed on exit).
    #[arg(long, value_name = "DIR")]
    pub process_root: Option<PathBuf>,
    /// Give each pod run as processes a network namespace of its own (its own IP on a bridge;
    /// root and iproute2), so pods can listen on one port; otherwise they share this machine's.
    #[arg(long)]
    pub isolated_pod_network: bool,
}

fn parse_mapping(text: &str) -> Result<(String, Vec<String>), String> {
    crate::sim::ProcessMode::parse_mapping(text).map_err(|e| e.to_string())
}

/// The process mode the arguments ask for.
type Processes = Option<std::sync::Arc<crate::sim::ProcessMode>>;

/// The process mode the arguments ask for, and the directory to remove on exit (when it is ours).
fn process_mode(args: &SimArgs) -> Result<(Processes, Option<PathBuf>), String> {
    if args.run_images.is_empty() {
        return Ok((None, None));
    }
    let (root, owned) = match &args.process_root {
        Some(dir) => (dir.clone(), None),
        None => {
            let dir = std::env::temp_dir().join(format!("flywheel-sim-{}", std::process::id()));
            (dir.clone(), Some(dir))
        }
    };
    let mut mode = args
        .run_images
        .iter()
        .fold(crate::sim::ProcessMode::new(&root), |mode, (image, command)| mode.image(image, command.clone()));
    if args.isolated_pod_network {
        mode = mode.isolated_network().map_err(|e| e.to_string())?;
        if let Some(ip) = mode.host_ip() {
            tracing::info!(host_ip = %ip, "pods reach this machine's services at the bridge's address");
        }
    }
    Ok((Some(std::sync::Arc::new(mode)), owned))
}

pub async fn run(args: SimArgs) -> ExitCode {
    let (processes, owned_root) = match process_mode(&args) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "cannot run pods as processes");
            return ExitCode::FAILURE;
        }
    };
    let mut config = crate::sim::SimConfig { listen: args.listen, ..crate::sim::SimConfig::default() };
    config.workloads.processes = processes;
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
    if let Some(dir) = owned_root {
        let _removed = std::fs::remove_dir_all(dir);
    }
    ExitCode::SUCCESS
}
