//! Flywheel: a Kubernetes operator that closes the feedback loop of small language models.
//!
//! The crate holds every component of the single `flywheel` binary; see `docs/ARCHITECTURE.md`.

pub mod agent;
pub mod api;
pub mod autoscale;
pub mod cmd;
pub mod collector;
pub mod demo;
pub mod fetch_model;
pub mod http_client;
pub mod operator;
pub mod rollout;
pub mod rollout_cli;
pub mod sim;
pub mod telemetry;
