//! `flywheel demo`: the whole loop in one process. A simulated cluster, the real operator
//! (unchanged controllers), the collector on SQLite in a scratch directory, simulated inference
//! pods and users whose feedback follows each version's hidden quality, and a simulated trainer
//! whose Job produces a new version. The demo applies a ModelDeployment and a FeedbackPolicy as
//! a user would, makes the world drift, and watches the loop turn: the policy fires on the
//! collector's statistics, a RetrainJob runs its trainer Job, the new version is canaried and
//! judged on live feedback, and promoted or rolled back. The summary is read from what the
//! cluster and the collector did.

pub mod adapters;
mod drive;
pub mod error;
pub mod observe;
mod options;
pub mod real;
pub mod resources;
pub mod scenario;
mod stack;
pub mod summary;
pub mod trainer;
pub mod users;
pub mod view;

use std::sync::{Arc, Mutex};
use std::time::Instant;

pub use self::error::DemoError;
pub use self::options::{DemoOptions, scenario_name};
use self::resources::FIRST_VERSION;
use self::scenario::{Pace, World};
use self::stack::{ScratchDir, Stack};
use self::view::View;

pub use self::summary::Summary;
pub use self::view::ViewMode;

/// Run the demo to the end of its cycles and return what happened.
pub async fn run(options: DemoOptions) -> Result<Summary, DemoError> {
    options.validate()?;
    let started = Instant::now();
    let start_time = k8s_openapi::jiff::Timestamp::now();
    let pace = Pace::new(options.speed);
    let world = Arc::new(Mutex::new(World::new(options.scenario, FIRST_VERSION)));
    let dir = ScratchDir::new()?;
    let out: Box<dyn std::io::Write + Send> =
        if options.view_to_stderr { Box::new(std::io::stderr()) } else { Box::new(std::io::stdout()) };
    let mut view = View::new(options.view, out);
    let stack = Stack::start(&options, pace, world.clone(), &dir.0).await?;
    let result = drive::drive(&options, &stack, pace, &world, &mut view, started, start_time).await;
    stack.shutdown().await;
    drop(dir);
    let summary = result?;
    view.text(&summary::render(&summary));
    Ok(summary)
}

/// Play the adapter story (`flywheel demo --adapters`) and return what happened; progress
/// lines go where the options say (none when quiet).
pub async fn run_adapters(mut options: DemoOptions) -> Result<adapters::AdapterSummary, DemoError> {
    options.adapters = true;
    options.validate()?;
    let started = Instant::now();
    let pace = Pace::new(options.speed);
    let world = Arc::new(Mutex::new(World::new(options.scenario, FIRST_VERSION)));
    let dir = ScratchDir::new()?;
    let stack = Stack::start(&options, pace, world, &dir.0).await?;
    let quiet = options.view == ViewMode::Quiet;
    let to_stderr = options.view_to_stderr;
    let mut say = move |line: String| {
        if quiet {
            return;
        }
        let line = format!("[{:>6.1}s] {line}", started.elapsed().as_secs_f64());
        if to_stderr { eprintln!("{line}") } else { println!("{line}") }
    };
    let result = match &stack.pods {
        Some((pods, _)) => adapters::drive(&stack, pods, &mut say).await,
        None => Err(DemoError::Options("the adapter pods did not start".into())),
    };
    stack.shutdown().await;
    drop(dir);
    result
}

/// Logs for the demo: quiet unless `RUST_LOG` asks (the live view is the output), to stderr.
pub fn init_logging(format: crate::telemetry::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = match format {
        crate::telemetry::LogFormat::Json => builder.json().flatten_event(true).try_init(),
        crate::telemetry::LogFormat::Text => builder.try_init(),
    };
    drop(result);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::scenario::Scenario;

    #[test]
    fn options_are_checked() {
        let mut o = DemoOptions::new(Scenario::Improve);
        assert!(o.validate().is_ok());
        o.cycles = 0;
        assert!(matches!(o.validate(), Err(DemoError::Options(m)) if m.contains("--cycles")));
        o.cycles = 1;
        o.speed = f64::INFINITY;
        assert!(matches!(o.validate(), Err(DemoError::Options(m)) if m.contains("--speed")));
    }
}
