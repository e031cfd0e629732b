//! The `flywheel` command line: one module per subcommand, each owning its arguments and its
//! `run`. `main.rs` only calls [`main`].

pub mod agent;
pub mod collector;
pub mod crds;
pub mod demo;
pub mod fetch_model;
pub mod operator;
pub mod process;
pub mod rollout;
pub mod sim;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use self::process::run_async;
use crate::telemetry::LogFormat;

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

/// The components of the one binary.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controllers for ModelDeployment, FeedbackPolicy and RetrainJob.
    Operator(operator::OperatorArgs),
    /// Run the feedback collector: ingestion, statistics, dataset snapshots.
    Collector(collector::CollectorArgs),
    /// Run the inference sidecar: version stamps, interaction capture, in-flight metrics.
    Agent(agent::AgentArgs),
    /// Run the simulated Kubernetes API server used by the tests and the demo.
    Sim(sim::SimArgs),
    /// Run the whole loop on a simulated cluster, in one process.
    Demo(demo::DemoArgs),
    /// Print the CustomResourceDefinitions (or write one file per CRD).
    Crds(crds::CrdsArgs),
    /// Show, promote or abort a ModelDeployment's rollout.
    Rollout(rollout::RolloutArgs),
    /// Fetch a model into a directory (the init container of inference pods).
    FetchModel(fetch_model::FetchModelArgs),
}

/// Parse the command line, set up logging, run the subcommand.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        // The demo's output is its live view: logs stay quiet unless RUST_LOG asks.
        Command::Demo(_) => crate::demo::init_logging(cli.log_format),
        _ => crate::telemetry::init(cli.log_format),
    }
    match cli.command {
        Command::Crds(args) => crds::run(&args),
        Command::Operator(args) => run_async(operator::run(args)),
        Command::Rollout(args) => run_async(rollout::run(args)),
        Command::FetchModel(args) => run_async(fetch_model::run(args)),
        Command::Collector(args) => run_async(collector::run(args)),
        Command::Agent(args) => run_async(agent::run(args)),
        Command::Sim(args) => run_async(sim::run(args)),
        Command::Demo(args) => run_async(demo::run(args)),
    }
}
