//! Prometheus metrics of the operator, beside the code they measure: reconciles, failures by
//! error category, reconcile duration, reconciles in flight and waiting per controller, and
//! leadership.

use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of per-controller metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// The controller (`modeldeployment`, ...).
    pub controller: String,
}

/// Labels of failures.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// The controller.
    pub controller: String,
    /// The error category (the same string as the Warning Event reason).
    pub category: String,
}

/// The operator's metrics.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ControllerLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    duration: Family<ControllerLabels, Histogram>,
    in_flight: Family<ControllerLabels, Gauge>,
    queued: Family<ControllerLabels, Gauge>,
    leader: Gauge<i64, AtomicI64>,
    desired_replicas: Family<TrackLabels, Gauge>,
    triggers: Family<OutcomeLabels, Counter>,
    attempts: Family<OutcomeLabels, Counter>,
}

/// Labels of the feedback loop's counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// Why (a trigger reason) or what (an attempt's outcome).
    pub reason: String,
    /// What came of it.
    pub outcome: String,
}

/// Labels of per-track autoscaler metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrackLabels {
    /// Namespace of the ModelDeployment.
    pub namespace: String,
    /// The ModelDeployment.
    pub name: String,
    /// `stable` or `canary`.
    pub track: String,
}

fn duration_histogram() -> Histogram {
    Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("flywheel");
        let reconciles = Family::<ControllerLabels, Counter>::default();
        let failures = Family::<FailureLabels, Counter>::default();
        let duration =
            Family::<ControllerLabels, Histogram>::new_with_constructor(duration_histogram as fn() -> Histogram);
        let in_flight = Family::<ControllerLabels, Gauge>::default();
        let queued = Family::<ControllerLabels, Gauge>::default();
        let leader = Gauge::<i64, AtomicI64>::default();
        let desired_replicas = Family::<TrackLabels, Gauge>::default();
        let triggers = Family::<OutcomeLabels, Counter>::default();
        let attempts = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "feedback_triggers",
            "FeedbackPolicy triggers, by reason and outcome (retrain, suggested, postponed)",
            triggers.clone(),
        );
        registry.register("retrain_attempts", "Ended trainer attempts, by outcome", attempts.clone());
        registry.register("reconciles", "Reconciles run, by controller", reconciles.clone());
        registry.register(
            "reconcile_failures",
            "Reconciles that failed, by controller and error category",
            failures.clone(),
        );
        registry.register("reconcile_duration_seconds", "Time one reconcile took", duration.clone());
        registry.register("reconciles_in_flight", "Reconciles running now, by controller", in_flight.clone());
        registry.register(
            "reconcile_queue_depth",
            "Objects waiting for a scheduled reconcile (requeues not yet due), by controller",
            queued.clone(),
        );
        registry.register("leader", "1 while this replica holds the leader lease", leader.clone());
        registry.register(
            "autoscaler_desired_replicas",
            "Replicas the autoscaler wants, by ModelDeployment and track",
            desired_replicas.clone(),
        );
        Self {
            registry,
            reconciles,
            failures,
            duration,
            in_flight,
            queued,
            leader,
            desired_replicas,
            triggers,
            attempts,
        }
    }
}

/// Measures one reconcile; record the outcome with [`ReconcileTimer::finish`].
pub struct ReconcileTimer {
    metrics: Arc<Metrics>,
    labels: ControllerLabels,
    start: Instant,
}

impl ReconcileTimer {
    /// Record the end of the reconcile: its duration, and its failure category if it failed.
    pub fn finish(self, failure: Option<&str>) {
        self.metrics.duration.get_or_create(&self.labels).observe(self.start.elapsed().as_secs_f64());
        self.metrics.in_flight.get_or_create(&self.labels).dec();
        if let Some(category) = failure {
            self.metrics
                .failures
                .get_or_create(&FailureLabels {
                    controller: self.labels.controller.clone(),
                    category: category.to_string(),
                })
                .inc();
        }
    }
}

impl Metrics {
    /// Start measuring a reconcile of `controller`.
    pub fn reconcile(self: &Arc<Self>, controller: &str) -> ReconcileTimer {
        let labels = ControllerLabels { controller: controller.to_string() };
        self.reconciles.get_or_create(&labels).inc();
        self.in_flight.get_or_create(&labels).inc();
        ReconcileTimer { metrics: self.clone(), labels, start: Instant::now() }
    }

    /// Set how many objects of `controller` wait for a scheduled reconcile.
    pub fn set_queued(&self, controller: &str, depth: i64) {
        self.queued.get_or_create(&ControllerLabels { controller: controller.to_string() }).set(depth);
    }

    /// Record whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        crate::telemetry::render_metrics(&self.registry)
    }
}

impl Metrics {
    /// Records the autoscaler's decision for a track.
    pub fn set_desired_replicas(&self, namespace: &str, name: &str, track: &str, replicas: i32) {
        let labels = TrackLabels { namespace: namespace.to_string(), name: name.to_string(), track: track.to_string() };
        self.desired_replicas.get_or_create(&labels).set(i64::from(replicas));
    }

    /// Counts a FeedbackPolicy trigger.
    pub fn count_trigger(&self, reason: &str, outcome: &str) {
        self.triggers.get_or_create(&OutcomeLabels { reason: reason.into(), outcome: outcome.into() }).inc();
    }

    /// Counts an ended trainer attempt.
    pub fn count_attempt(&self, outcome: &str) {
        self.attempts.get_or_create(&OutcomeLabels { reason: "attempt".into(), outcome: outcome.into() }).inc();
    }
}
