//! What the demo runs and how it shows it: [`DemoOptions`], checked before anything starts.

use std::path::PathBuf;
use std::time::Duration;

use super::error::DemoError;
use super::scenario::Scenario;
use super::view::ViewMode;

/// What to run and how to show it.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The story.
    pub scenario: Scenario,
    /// Turns of the loop to watch.
    pub cycles: u32,
    /// How much faster than real time the simulated world runs.
    pub speed: f64,
    /// Where to write a kubeconfig of the simulated cluster.
    pub kubeconfig_out: Option<PathBuf>,
    /// How to show progress.
    pub view: ViewMode,
    /// Show progress on stderr (stdout stays for the JSON summary).
    pub view_to_stderr: bool,
    /// Give up when nothing happens for this long.
    pub stall_timeout: Duration,
    /// Run the real parts (`--real`): the reference trainer's directory with its virtualenv.
    pub real: Option<PathBuf>,
    /// Play the adapter story (`--adapters`): LoRA adapters canaried inside the running pods.
    pub adapters: bool,
}

impl DemoOptions {
    /// One cycle of `scenario` at speed 1, shown nowhere.
    pub fn new(scenario: Scenario) -> Self {
        Self {
            scenario,
            cycles: 1,
            speed: 1.0,
            kubeconfig_out: None,
            view: ViewMode::Quiet,
            view_to_stderr: false,
            stall_timeout: Duration::from_secs(120),
            real: None,
            adapters: false,
        }
    }

    pub(super) fn validate(&self) -> Result<(), DemoError> {
        if self.cycles == 0 || self.cycles > 20 {
            return Err(DemoError::Options(format!("--cycles must be between 1 and 20, not {}", self.cycles)));
        }
        if !self.speed.is_finite() || self.speed < 0.1 || self.speed > 100.0 {
            return Err(DemoError::Options(format!("--speed must be between 0.1 and 100, not {}", self.speed)));
        }
        if self.real.is_some() && self.adapters {
            return Err(DemoError::Options(
                "--adapters runs simulated runtimes; it does not combine with --real".into(),
            ));
        }
        if self.real.is_some() && self.scenario == Scenario::Rejected {
            return Err(DemoError::Options(
                "--real plays improve or regression: the real trainer's own held-out metrics decide an evaluation gate"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// The name of a scenario as the CLI spells it.
pub fn scenario_name(s: Scenario) -> &'static str {
    match s {
        Scenario::Improve => "improve",
        Scenario::Regression => "regression",
        Scenario::Rejected => "rejected",
    }
}
