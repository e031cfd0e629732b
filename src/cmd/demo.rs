//! `flywheel demo`: its arguments, and the whole loop on a simulated cluster.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::demo::scenario::Scenario;

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
    /// Run the real parts on this machine: pods as processes in their own network namespaces
    /// (root), the agent in front of the reference model server, the reference trainer in the
    /// RetrainJob's Job. Needs the trainer's environment (`bash trainer/ci.sh`).
    #[arg(long)]
    pub real: bool,
    /// Play the adapter story instead: LoRA adapters from RetrainJobs canaried inside the pods
    /// that already run (`spec.rollout.mode: Adapter`), one promoted and one rolled back, with
    /// no pod restarted.
    #[arg(long, conflicts_with = "real")]
    pub adapters: bool,
    /// The reference trainer's directory, holding its `.venv` (with --real).
    #[arg(long, default_value = "trainer", requires = "real")]
    pub trainer_dir: PathBuf,
}

pub async fn run(args: DemoArgs) -> ExitCode {
    use crate::demo::{DemoOptions, ViewMode};
    use std::io::IsTerminal;
    // With --json, stdout carries only the summary; the live view goes to stderr.
    let terminal = if args.json { std::io::stderr().is_terminal() } else { std::io::stdout().is_terminal() };
    let dumb = std::env::var("TERM").is_ok_and(|t| t == "dumb");
    let options = DemoOptions {
        cycles: args.cycles,
        speed: args.speed,
        kubeconfig_out: args.kubeconfig_out.clone(),
        view: if terminal && !dumb { ViewMode::Live } else { ViewMode::Log },
        view_to_stderr: args.json,
        real: args.real.then(|| args.trainer_dir.clone()),
        ..DemoOptions::new(args.scenario)
    };
    if args.adapters {
        return adapters(options, args.json).await;
    }
    let result = tokio::select! {
        result = crate::demo::run(options) => result,
        () = super::process::shutdown_signal() => {
            eprintln!("flywheel demo: interrupted");
            return ExitCode::from(130);
        }
    };
    match result {
        Ok(summary) => {
            if args.json {
                match serde_json::to_string(&summary) {
                    Ok(line) => println!("{line}"),
                    Err(e) => {
                        eprintln!("flywheel demo: encoding the summary: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("flywheel demo: {e}");
            ExitCode::from(if matches!(e, crate::demo::DemoError::Options(_)) { 2 } else { 1 })
        }
    }
}

async fn adapters(options: crate::demo::DemoOptions, json: bool) -> ExitCode {
    let result = tokio::select! {
        result = crate::demo::run_adapters(options) => result,
        () = super::process::shutdown_signal() => {
            eprintln!("flywheel demo: interrupted");
            return ExitCode::from(130);
        }
    };
    match result {
        Ok(summary) => {
            let replaced = summary.pods_before != summary.pods_after;
            if json {
                match serde_json::to_string(&summary) {
                    Ok(line) => println!("{line}"),
                    Err(e) => {
                        eprintln!("flywheel demo: encoding the summary: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            if replaced {
                eprintln!("flywheel demo: inference pods were replaced during the adapter canaries");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("flywheel demo: {e}");
            ExitCode::from(if matches!(e, crate::demo::DemoError::Options(_)) { 2 } else { 1 })
        }
    }
}
