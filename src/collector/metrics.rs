//! Prometheus metrics of the collector.

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of ingested events.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// `interaction` or the feedback kind.
    pub kind: String,
}

/// Labels of rejections.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Why: `invalid`, `conflict`, `too_large`, `unauthenticated`, `forbidden`, `overloaded`,
    /// `unavailable`, `unsupported_media_type`, `malformed`.
    pub reason: String,
}

/// The collector's metrics.
pub struct Metrics {
    pub(crate) registry: Registry,
    /// Events stored, by kind.
    pub ingested: Family<KindLabels, Counter>,
    /// Events or requests refused, by reason.
    pub rejected: Family<ReasonLabels, Counter>,
    /// Retries of events already stored (idempotent no-ops).
    pub duplicates: Counter,
    /// Time of one group commit.
    pub commit_seconds: Histogram,
    /// Events in one group commit.
    pub batch_events: Histogram,
    /// Bytes the store takes.
    pub store_bytes: Gauge<i64, AtomicI64>,
    /// Dataset snapshots built.
    pub datasets: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("flywheel_collector");
        let ingested = Family::<KindLabels, Counter>::default();
        let rejected = Family::<ReasonLabels, Counter>::default();
        let duplicates = Counter::default();
        let commit_seconds =
            Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]);
        let batch_events = Histogram::new([1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0]);
        let store_bytes = Gauge::<i64, AtomicI64>::default();
        let datasets = Counter::default();
        registry.register("ingested_events", "Events stored, by kind", ingested.clone());
        registry.register("rejected", "Events or requests refused, by reason", rejected.clone());
        registry.register(
            "duplicate_events",
            "Retries of events already stored, answered as no-ops",
            duplicates.clone(),
        );
        registry.register("commit_duration_seconds", "Time of one group commit (one fsync)", commit_seconds.clone());
        registry.register("commit_batch_events", "Events stored by one group commit", batch_events.clone());
        registry.register("store_bytes", "Bytes the store takes on disk", store_bytes.clone());
        registry.register("dataset_snapshots", "Dataset snapshots built", datasets.clone());
        Self { registry, ingested, rejected, duplicates, commit_seconds, batch_events, store_bytes, datasets }
    }
}

impl Metrics {
    /// Counts a refusal.
    pub fn reject(&self, reason: &str) {
        self.rejected.get_or_create(&ReasonLabels { reason: reason.to_string() }).inc();
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        crate::telemetry::render_metrics(&self.registry)
    }
}
