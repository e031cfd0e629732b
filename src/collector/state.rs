//! What every handler of the collector's HTTP API shares: the store, the group-commit writer,
//! the tokens, the metrics, the settings and the readiness flag.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use super::auth::Tokens;
use super::config::CollectorConfig;
use super::metrics::Metrics;
use super::store::Store;
use super::writer::Writer;

/// What every handler shares.
#[derive(Clone)]
pub(super) struct AppState {
    pub(super) store: Store,
    pub(super) writer: Writer,
    pub(super) tokens: Tokens,
    pub(super) metrics: Arc<Metrics>,
    pub(super) config: Arc<CollectorConfig>,
    /// The last probe's answer: does the store answer?
    pub(super) ready: Arc<AtomicBool>,
}
