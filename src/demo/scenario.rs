//! The simulated world of the demo: what each model version is truly worth to its users, the
//! drift that makes a served version worse, and what a retrain produces. Pure and clocked from
//! outside, so the tests drive it directly.

use std::collections::BTreeMap;
use std::time::Duration;

/// A demo scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// A quality dip, a retrain, a better version promoted.
    Improve,
    /// A worse candidate that the offline evaluation cannot see, canaried and rolled back on
    /// live feedback.
    Regression,
    /// A worse candidate that the evaluation gate sees on the held-out rows: rejected before
    /// any user sees it.
    Rejected,
}

/// Quality (probability that a user finds an answer good) of the first version.
pub const INITIAL_QUALITY: f64 = 0.86;
/// How much a drift takes off every version trained before it.
pub const DRIFT_DROP: f64 = 0.30;
/// How much better than the drifted base a retrained version is in `improve`.
pub const IMPROVEMENT: f64 = 0.32;
/// How much worse than its base a retrained version is in `regression`.
pub const REGRESSION: f64 = 0.25;
const QUALITY_FLOOR: f64 = 0.05;
const QUALITY_CEILING: f64 = 0.93;

/// Times and rates of the story at speed 1; [`Pace`] compresses them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pace {
    /// How much faster than real time the simulated world runs.
    pub speed: f64,
}

/// Interactions per second at speed 1.
pub const BASE_RATE: f64 = 50.0;
/// Most interactions per second at any speed (two cores have to carry it all).
pub const MAX_RATE: f64 = 600.0;

impl Pace {
    /// A pace; speeds at or below zero (or not finite) count as 1.
    pub fn new(speed: f64) -> Self {
        Self { speed: if speed.is_finite() && speed > 0.0 { speed } else { 1.0 } }
    }

    /// A duration of simulated time as wall time.
    pub fn wall(&self, simulated: Duration) -> Duration {
        simulated.div_f64(self.speed)
    }

    /// Interactions per second of wall time.
    pub fn rate(&self) -> f64 {
        (BASE_RATE * self.speed).min(MAX_RATE)
    }

    /// Healthy traffic before the first drift.
    pub fn warmup(&self) -> Duration {
        self.wall(Duration::from_secs(6))
    }

    /// Between a decision and the next cycle's drift.
    pub fn next_drift_after(&self) -> Duration {
        self.wall(Duration::from_secs(5))
    }

    /// How long a simulated training run takes.
    pub fn training(&self) -> Duration {
        self.wall(Duration::from_secs(8))
    }

    /// From a pod's creation to Ready.
    pub fn pod_ready(&self) -> Duration {
        self.wall(Duration::from_millis(800))
    }
}

/// One version of the model in the simulated world.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionTruth {
    /// Probability that a user finds an answer of this version good, now.
    pub quality: f64,
    /// Quality when the version appeared.
    pub initial_quality: f64,
    /// The version it was trained from.
    pub base: Option<String>,
    /// The RetrainJob that produced it.
    pub retrain_job: Option<String>,
    /// What the held-out rows show of it when it is trained (the evaluation gate's view): its
    /// quality, except where the held-out rows cannot see the users' taste (`regression`).
    pub offline_quality: f64,
}

/// A drift: each version's quality before and after.
#[derive(Debug, Clone, PartialEq)]
pub struct Drift {
    /// `(version, before, after)`.
    pub changes: Vec<(String, f64, f64)>,
}

/// What the simulated trainer produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Trained {
    /// The new version's label.
    pub version: String,
    /// Its true quality.
    pub quality: f64,
    /// Whether this call produced it (false: a retry of the same RetrainJob got the same one).
    pub new: bool,
    /// What the held-out rows show of it.
    pub offline_quality: f64,
    /// What the held-out rows show of its base (now).
    pub base_quality: f64,
}

/// The truth behind the simulation: every version and its quality.
#[derive(Debug, Clone)]
pub struct World {
    scenario: Scenario,
    versions: BTreeMap<String, VersionTruth>,
    by_retrain_job: BTreeMap<String, String>,
    drifts: u32,
}

impl World {
    /// The world at the start: one version, healthy.
    pub fn new(scenario: Scenario, first_version: &str) -> Self {
        let mut versions = BTreeMap::new();
        versions.insert(
            first_version.to_string(),
            VersionTruth {
                quality: INITIAL_QUALITY,
                initial_quality: INITIAL_QUALITY,
                base: None,
                retrain_job: None,
                offline_quality: INITIAL_QUALITY,
            },
        );
        Self { scenario, versions, by_retrain_job: BTreeMap::new(), drifts: 0 }
    }

    /// The scenario.
    pub fn scenario(&self) -> Scenario {
        self.scenario
    }

    /// The true quality of `version` (`None` for a version the world never made).
    pub fn quality(&self, version: &str) -> Option<f64> {
        self.versions.get(version).map(|v| v.quality)
    }

    /// Every version, by name.
    pub fn versions(&self) -> &BTreeMap<String, VersionTruth> {
        &self.versions
    }

    /// Drifts so far.
    pub fn drifts(&self) -> u32 {
        self.drifts
    }

    /// The world changes under the models: every version existing now gets worse.
    pub fn drift(&mut self) -> Drift {
        self.drifts += 1;
        let changes = self
            .versions
            .iter_mut()
            .map(|(name, v)| {
                let before = v.quality;
                v.quality = (v.quality - DRIFT_DROP).max(QUALITY_FLOOR);
                (name.clone(), before, v.quality)
            })
            .collect();
        Drift { changes }
    }

    /// A training run of `retrain_job` from `base`: better than the base in `improve`, worse in
    /// `regression`. The version is `requested` when the RetrainJob names one, else the next
    /// free `v<n>`. A retry of the same RetrainJob gets the same version.
    pub fn train(&mut self, retrain_job: &str, base: &str, requested: Option<&str>) -> Trained {
        let base_quality = self.quality(base).unwrap_or(INITIAL_QUALITY - DRIFT_DROP);
        if let Some(version) = self.by_retrain_job.get(retrain_job)
            && let Some(v) = self.versions.get(version)
        {
            return Trained {
                version: version.clone(),
                quality: v.quality,
                new: false,
                offline_quality: v.offline_quality,
                base_quality,
            };
        }
        let quality = match self.scenario {
            Scenario::Improve => (base_quality + IMPROVEMENT).min(QUALITY_CEILING),
            Scenario::Regression | Scenario::Rejected => (base_quality - REGRESSION).max(QUALITY_FLOOR),
        };
        // The held-out rows see what users see, except in `regression`, where the candidate
        // looks a little better offline than its base.
        let offline_quality = match self.scenario {
            Scenario::Regression => (base_quality + 0.02).min(QUALITY_CEILING),
            Scenario::Improve | Scenario::Rejected => quality,
        };
        let version = match requested {
            Some(v) if !v.is_empty() && !self.versions.contains_key(v) => v.to_string(),
            _ => self.next_version(),
        };
        self.versions.insert(
            version.clone(),
            VersionTruth {
                quality,
                initial_quality: quality,
                base: Some(base.to_string()),
                retrain_job: Some(retrain_job.to_string()),
                offline_quality,
            },
        );
        self.by_retrain_job.insert(retrain_job.to_string(), version.clone());
        Trained { version, quality, new: true, offline_quality, base_quality }
    }

    /// `v<n>` with `n` one above the highest `v<number>` known.
    fn next_version(&self) -> String {
        let highest = self.versions.keys().filter_map(|v| v.strip_prefix('v')?.parse::<u32>().ok()).max().unwrap_or(0);
        let mut n = highest + 1;
        while self.versions.contains_key(&format!("v{n}")) {
            n += 1;
        }
        format!("v{n}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drift_lowers_every_existing_version_and_a_retrain_recovers_in_improve() {
        let mut world = World::new(Scenario::Improve, "v1");
        assert_eq!(world.quality("v1"), Some(INITIAL_QUALITY));
        let drift = world.drift();
        assert_eq!(drift.changes.len(), 1);
        let drifted = world.quality("v1").unwrap_or_default();
        assert!((drifted - (INITIAL_QUALITY - DRIFT_DROP)).abs() < 1e-9);
        let trained = world.train("p-1", "v1", None);
        assert_eq!(trained.version, "v2");
        assert!(trained.new);
        assert!(trained.quality > drifted + 0.25, "{trained:?}");
        assert!(trained.quality <= QUALITY_CEILING);
        // A retry of the same RetrainJob yields the same version; a new one the next.
        assert_eq!(world.train("p-1", "v1", None), Trained { new: false, ..trained });
        assert_eq!(world.train("p-2", "v2", None).version, "v3");
        // Only versions that existed at a drift get worse.
        world.drift();
        assert!(world.quality("v3").unwrap_or_default() < world.versions()["v3"].initial_quality);
    }

    #[test]
    fn regression_makes_a_worse_version_and_a_requested_name_is_kept() {
        let mut world = World::new(Scenario::Regression, "v1");
        world.drift();
        let base = world.quality("v1").unwrap_or_default();
        let trained = world.train("p-1", "v1", Some("v1-ft-abc"));
        assert_eq!(trained.version, "v1-ft-abc");
        assert!(trained.quality < base - 0.2);
        // A requested name that is taken falls back to the next free one.
        assert_eq!(world.train("p-2", "v1", Some("v1")).version, "v2");
    }

    #[test]
    fn pace_compresses_time_and_raises_the_rate_within_bounds() {
        let p = Pace::new(4.0);
        assert_eq!(p.training(), Duration::from_secs(2));
        assert!((p.rate() - 200.0).abs() < 1e-9);
        assert!((Pace::new(100.0).rate() - MAX_RATE).abs() < 1e-9);
        assert!((Pace::new(0.0).speed - 1.0).abs() < 1e-9);
        assert!((Pace::new(f64::NAN).speed - 1.0).abs() < 1e-9);
    }
}
