//! Prometheus metrics of the agent.

use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels by HTTP status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    /// The status code.
    pub code: String,
}

/// Labels by drop reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    /// `queue_full` or `collector`.
    pub reason: String,
}

/// The agent's metrics.
pub struct AgentMetrics {
    registry: Registry,
    /// Requests being answered now (the autoscaler's signal).
    pub in_flight: Gauge<i64, AtomicI64>,
    /// Requests answered, by status.
    pub requests: Family<StatusLabels, Counter>,
    /// Time to the end of the answer, by status.
    pub duration: Family<StatusLabels, Histogram>,
    /// Interactions accepted by the collector.
    pub captured: Counter,
    /// Interactions not captured, by reason.
    pub dropped: Family<DropLabels, Counter>,
    /// Interactions waiting for the collector.
    pub queued: Gauge<i64, AtomicI64>,
    /// Requests the runtime did not answer.
    pub upstream_errors: Counter,
}

fn latency() -> Histogram {
    Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0])
}

impl Default for AgentMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("flywheel_agent");
        let in_flight = Gauge::<i64, AtomicI64>::default();
        let requests = Family::<StatusLabels, Counter>::default();
        let duration = Family::<StatusLabels, Histogram>::new_with_constructor(latency as fn() -> Histogram);
        let captured = Counter::default();
        let dropped = Family::<DropLabels, Counter>::default();
        let queued = Gauge::<i64, AtomicI64>::default();
        let upstream_errors = Counter::default();
        registry.register("in_flight_requests", "Requests being answered now", in_flight.clone());
        registry.register("requests", "Requests answered, by status", requests.clone());
        registry.register("request_duration_seconds", "Time to the end of the answer, by status", duration.clone());
        registry.register("captured_interactions", "Interactions accepted by the collector", captured.clone());
        registry.register("dropped_interactions", "Interactions not captured, by reason", dropped.clone());
        registry.register("capture_queue_depth", "Interactions waiting for the collector", queued.clone());
        registry.register("upstream_errors", "Requests the runtime did not answer", upstream_errors.clone());
        Self { registry, in_flight, requests, duration, captured, dropped, queued, upstream_errors }
    }
}

impl AgentMetrics {
    /// Counts a finished request.
    pub fn finish(&self, code: &str, took: Duration) {
        let labels = StatusLabels { code: code.to_string() };
        self.requests.get_or_create(&labels).inc();
        self.duration.get_or_create(&labels).observe(took.as_secs_f64());
    }

    /// Counts dropped captures.
    pub fn drop_captures(&self, reason: &str, n: u64) {
        self.dropped.get_or_create(&DropLabels { reason: reason.to_string() }).inc_by(n);
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        crate::telemetry::render_metrics(&self.registry)
    }
}

/// Holds one in-flight slot until dropped.
pub struct InFlightGuard {
    metrics: Arc<AgentMetrics>,
}

impl InFlightGuard {
    /// Takes a slot.
    pub fn new(metrics: Arc<AgentMetrics>) -> Self {
        metrics.in_flight.inc();
        Self { metrics }
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.metrics.in_flight.dec();
    }
}
