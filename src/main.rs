//! The `flywheel` binary: one subcommand per component.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use flywheel::api;
use flywheel::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    flywheel::telemetry::init(cli.log_format);
    match cli.command {
        Command::Crds(args) => match args.output_dir {
            Some(dir) => write_crds(&dir),
            None => print_crds(),
        },
        Command::Operator(_) => not_implemented("operator"),
        Command::Collector(_) => not_implemented("collector"),
        Command::Agent(_) => not_implemented("agent"),
        Command::Sim(args) => run_async(run_sim(args)),
        Command::Demo(_) => not_implemented("demo"),
    }
}

fn run_async(fut: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(fut),
        Err(e) => {
            eprintln!("flywheel: starting the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; stopping on Ctrl-C only");
                let _ctrl_c = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ctrl_c = tokio::signal::ctrl_c().await;
    }
}

async fn run_sim(args: flywheel::cli::SimArgs) -> ExitCode {
    let config = flywheel::sim::SimConfig { listen: args.listen, ..flywheel::sim::SimConfig::default() };
    let sim = match flywheel::sim::Sim::start(config).await {
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
    shutdown_signal().await;
    tracing::info!("shutting down");
    sim.shutdown().await;
    ExitCode::SUCCESS
}

fn not_implemented(component: &str) -> ExitCode {
    eprintln!("flywheel {component}: not implemented yet");
    ExitCode::from(2)
}

fn print_crds() -> ExitCode {
    match api::crds_yaml() {
        Ok(yaml) => {
            let mut out = std::io::stdout().lock();
            match out.write_all(yaml.as_bytes()).and_then(|()| out.flush()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("flywheel crds: writing to stdout: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("flywheel crds: {e}");
            ExitCode::FAILURE
        }
    }
}

fn write_crds(dir: &Path) -> ExitCode {
    for crd in api::crds() {
        let path = dir.join(api::crd_file_name(&crd));
        let result = api::crd_yaml(&crd)
            .map_err(|e| e.to_string())
            .and_then(|yaml| std::fs::write(&path, yaml).map_err(|e| format!("writing {}: {e}", path.display())));
        if let Err(e) = result {
            eprintln!("flywheel crds: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
