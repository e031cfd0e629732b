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
        Command::Sim(_) => not_implemented("sim"),
        Command::Demo(_) => not_implemented("demo"),
    }
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
