//! Why the demo could not run to its end.

use std::path::PathBuf;

/// Why the demo could not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The options make no sense.
    #[error("invalid options: {0}")]
    Options(String),
    /// The simulated cluster did not start.
    #[error("the simulated cluster: {0}")]
    Sim(#[from] crate::sim::SimError),
    /// The collector did not start.
    #[error("the collector: {0}")]
    CollectorStart(#[from] crate::collector::StartError),
    /// The collector did not answer as documented.
    #[error("the collector: {0}")]
    Collector(String),
    /// The operator did not start.
    #[error("the operator: {0}")]
    Operator(#[from] crate::operator::OperatorError),
    /// A call to the simulated API server failed.
    #[error("{action}: {source}")]
    Kube {
        /// What the demo was doing.
        action: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// A file could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A sample resource does not parse into its type.
    #[error("the demo's sample resources: {0}")]
    Resource(#[from] serde_json::Error),
    /// The loop stopped moving.
    #[error("nothing happened for {seconds} s while waiting for {waiting_for}; {state}")]
    Stalled {
        /// The step the demo waited for.
        waiting_for: String,
        /// How long it waited.
        seconds: u64,
        /// What the resources said at the time.
        state: String,
    },
}
