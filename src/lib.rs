//! Flywheel: a Kubernetes operator that closes the feedback loop of small language models.
//!
//! The crate holds every component of the single `flywheel` binary; see `docs/ARCHITECTURE.md`.

pub mod api;
pub mod cli;
pub mod rollout;
pub mod sim;
pub mod telemetry;
