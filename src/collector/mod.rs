//! `flywheel collector`: where every signal lands.
//!
//! HTTP API under `/v1` (documented in `docs/collector-openapi.yaml`): interactions and feedback,
//! single or batched, idempotent by client id; per-version statistics and a long-poll change
//! feed; immutable dataset snapshots; retention and deletion by user or session key. Writes go
//! through one group-commit writer and are acknowledged only after their commit.
//!
//! `docs/ARCHITECTURE.md` names the module where each behaviour lives.

pub mod auth;
pub mod client;
mod clock;
mod config;
pub mod dataset;
mod datasets;
pub mod error;
pub mod event;
mod feed;
mod health;
mod ingest;
pub mod metrics;
mod request;
mod routes;
mod server;
mod state;
pub mod stats;
pub mod store;
mod subjects;
pub mod writer;

pub use config::{CollectorConfig, parse_duration};
pub use ingest::{BatchAnswer, ItemOutcome, ItemResult, MAX_BATCH_ITEMS};
pub use server::{Collector, StartError};
