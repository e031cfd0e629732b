//! `flywheel fetch-model URI DIR`: its arguments, and the fetch (the init container of
//! inference pods and trainer Jobs).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

/// `flywheel fetch-model`.
#[derive(Debug, Args)]
pub struct FetchModelArgs {
    /// The model URI (`s3://`, `gs://`, `https://`, `hf://`).
    pub uri: String,
    /// The directory to fetch into.
    pub dir: PathBuf,
    /// Files downloaded at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Attempts per request on transport errors, 429 and 5xx.
    #[arg(long, default_value_t = 5)]
    pub attempts: u32,
    /// Extra CA certificates (PEM) to trust for HTTPS, besides the system's.
    #[arg(long, env = "FLYWHEEL_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Allow plain `http://` URLs and object store endpoints (trusted networks only).
    #[arg(long)]
    pub allow_http: bool,
    /// Object store option `KEY=VALUE` (for example `aws_endpoint=https://minio:9000`),
    /// applied over the `AWS_*` and `GOOGLE_*` environment.
    #[arg(long = "store-option", value_name = "KEY=VALUE")]
    pub store_options: Vec<String>,
}

pub async fn run(args: FetchModelArgs) -> ExitCode {
    use crate::fetch_model::{FetchOptions, fetch};
    let mut options = FetchOptions::from_env();
    options.concurrency = args.concurrency;
    options.attempts = args.attempts;
    options.ca_file = args.ca_file;
    options.allow_http = args.allow_http;
    for option in &args.store_options {
        let Some((key, value)) = option.split_once('=') else {
            eprintln!("flywheel fetch-model: --store-option {option:?}: expected KEY=VALUE");
            return ExitCode::from(2);
        };
        options.store_options.push((key.trim().to_string(), value.to_string()));
    }
    let result = tokio::select! {
        result = fetch(&args.uri, &args.dir, &options) => result,
        () = super::process::shutdown_signal() => {
            eprintln!("flywheel fetch-model: interrupted");
            return ExitCode::from(130);
        }
    };
    match result {
        Ok(report) => {
            println!(
                "{} file(s), {} bytes{} in {}",
                report.files.len(),
                report.bytes,
                if report.skipped { " (already present)" } else { "" },
                args.dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(uri = %args.uri, error = %e, "fetch failed");
            eprintln!("flywheel fetch-model: {e}");
            ExitCode::from(if e.is_configuration() { 2 } else { 1 })
        }
    }
}
