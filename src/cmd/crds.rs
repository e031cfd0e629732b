//! `flywheel crds`: print the CustomResourceDefinitions, or write `crds/`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

/// `flywheel crds`.
#[derive(Debug, Args)]
pub struct CrdsArgs {
    /// Write one `<name>.yaml` per CRD into this directory instead of printing a stream.
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
}

/// Print the CRDs, or write one file per CRD.
pub fn run(args: &CrdsArgs) -> ExitCode {
    match &args.output_dir {
        Some(dir) => write_crds(dir),
        None => print_crds(),
    }
}

fn print_crds() -> ExitCode {
    match crate::api::crds_yaml() {
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
    for crd in crate::api::crds() {
        let path = dir.join(crate::api::crd_file_name(&crd));
        let result = crate::api::crd_yaml(&crd)
            .map_err(|e| e.to_string())
            .and_then(|yaml| std::fs::write(&path, yaml).map_err(|e| format!("writing {}: {e}", path.display())));
        if let Err(e) = result {
            eprintln!("flywheel crds: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
