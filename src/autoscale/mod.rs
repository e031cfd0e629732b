//! The autoscaler's algorithm: a pure function of load samples and time, per track.
//!
//! In the spirit of Knative's: the load (in-flight requests, or a runtime metric) is averaged
//! over a stable window (default 60 s) and a panic window (default 6 s). The wanted replicas are
//! the average over the target per replica, rounded up. When the panic window's load reaches
//! `panic_threshold` times the capacity of the ready pods, the track enters panic mode for one
//! stable window: it scales on the panic average at once and never scales down. A lower
//! recommendation only takes effect once it has held for the scale-down delay (default 5 min:
//! the highest recommendation of that window wins). Growth and shrinkage per decision are
//! bounded by rates, the result by min and max replicas, and with no samples the count holds.

pub mod scrape;

use std::collections::VecDeque;

use crate::api::model_deployment::ScalingSpec;

/// The load of a track at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// When, Unix ms.
    pub at_ms: i64,
    /// Total load over the track's ready pods (in-flight requests, or the runtime metric).
    pub load: f64,
    /// Ready pods that reported.
    pub pods: i32,
}

/// The knobs, from `spec.scaling`.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Fewest replicas.
    pub min_replicas: i32,
    /// Most replicas.
    pub max_replicas: i32,
    /// Wanted load per replica.
    pub target: f64,
    /// Stable window, ms.
    pub stable_window_ms: i64,
    /// Panic window, ms.
    pub panic_window_ms: i64,
    /// Load over capacity that enters panic mode.
    pub panic_threshold: f64,
    /// How long a lower recommendation must hold, ms.
    pub scale_down_delay_ms: i64,
    /// Most growth per decision, as a factor.
    pub max_scale_up_rate: f64,
    /// Most shrinkage per decision, as a divisor.
    pub max_scale_down_rate: f64,
}

impl Policy {
    /// The policy of a ModelDeployment's `spec.scaling`.
    pub fn from_spec(s: &ScalingSpec) -> Policy {
        Policy {
            min_replicas: s.min_replicas.max(0),
            max_replicas: s.max_replicas.max(s.min_replicas).max(1),
            target: s.target_per_replica.max(0.01),
            stable_window_ms: i64::from(s.stable_window_seconds.max(1)) * 1000,
            panic_window_ms: i64::from(s.panic_window_seconds.max(1)) * 1000,
            panic_threshold: s.panic_threshold.max(1.0),
            scale_down_delay_ms: i64::from(s.scale_down_delay_seconds.max(0)) * 1000,
            max_scale_up_rate: s.max_scale_up_rate.max(1.0),
            max_scale_down_rate: s.max_scale_down_rate.max(1.0),
        }
    }
}

/// What the autoscaler remembers of a track between decisions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrackState {
    samples: VecDeque<Sample>,
    /// Recommendations (before the scale-down delay) and when they were made.
    recommendations: VecDeque<(i64, i32)>,
    /// Panic mode lasts until then, Unix ms.
    panic_until_ms: Option<i64>,
}

/// One decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Replicas wanted.
    pub desired: i32,
    /// Why, in words.
    pub reason: String,
    /// In panic mode.
    pub panic: bool,
}

impl TrackState {
    /// Records a sample; samples older than the stable window are forgotten.
    pub fn observe(&mut self, sample: Sample, policy: &Policy) {
        self.samples.push_back(sample);
        let horizon = sample.at_ms - policy.stable_window_ms;
        while self.samples.front().is_some_and(|s| s.at_ms < horizon) {
            self.samples.pop_front();
        }
    }

    fn average(&self, now_ms: i64, window_ms: i64) -> Option<f64> {
        let from = now_ms - window_ms;
        let (sum, n) = self
            .samples
            .iter()
            .filter(|s| s.at_ms > from && s.at_ms <= now_ms)
            .fold((0.0, 0usize), |(sum, n), s| (sum + s.load, n + 1));
        (n > 0).then(|| sum / n as f64)
    }

    /// Decides the replicas of a track that has `current` replicas (`ready` of them ready).
    pub fn decide(&mut self, policy: &Policy, current: i32, ready: i32, now_ms: i64) -> Decision {
        let clamp = |n: i32| n.clamp(policy.min_replicas, policy.max_replicas);
        let (Some(stable_avg), Some(panic_avg)) =
            (self.average(now_ms, policy.stable_window_ms), self.average(now_ms, policy.panic_window_ms))
        else {
            let desired = clamp(current);
            return Decision {
                desired,
                reason: format!("no load samples in the last {} s; holding {desired}", policy.stable_window_ms / 1000),
                panic: false,
            };
        };
        let want = |load: f64| -> i32 {
            let n = (load / policy.target).ceil();
            if n.is_finite() { n.clamp(0.0, f64::from(i32::MAX)) as i32 } else { current }
        };
        let stable_want = want(stable_avg);
        let panic_want = want(panic_avg);
        // Capacity of the ready pods; a track with none ready counts as one.
        let capacity = f64::from(ready.max(1)) * policy.target;
        if panic_avg / capacity >= policy.panic_threshold {
            self.panic_until_ms = Some(now_ms + policy.stable_window_ms);
        }
        let panic = self.panic_until_ms.is_some_and(|until| now_ms < until);
        if !panic {
            self.panic_until_ms = None;
        }
        let mut recommended = if panic { panic_want.max(stable_want).max(current) } else { stable_want };
        let mut why = if panic {
            format!(
                "panic: {panic_avg:.1} in flight over the last {} s is {:.1}x the capacity of {ready} ready; recommending {recommended}",
                policy.panic_window_ms / 1000,
                panic_avg / capacity
            )
        } else {
            format!(
                "average load {stable_avg:.2} over {} s at {} per replica; recommending {recommended}",
                policy.stable_window_ms / 1000,
                policy.target
            )
        };
        // Scale-down delay: the highest recommendation of the window wins.
        self.recommendations.push_back((now_ms, recommended));
        let horizon = now_ms - policy.scale_down_delay_ms;
        while self.recommendations.front().is_some_and(|(t, _)| *t < horizon) {
            self.recommendations.pop_front();
        }
        let held = self.recommendations.iter().map(|(_, r)| *r).max().unwrap_or(recommended);
        if held > recommended && recommended < current {
            recommended = held.min(current.max(recommended));
            why.push_str(&format!(
                "; holding {recommended} until lower recommendations last {} s",
                policy.scale_down_delay_ms / 1000
            ));
        }
        // Rates.
        let up_bound =
            ((f64::from(current.max(1)) * policy.max_scale_up_rate).ceil() as i64).min(i64::from(i32::MAX)) as i32;
        let down_bound = (f64::from(current) / policy.max_scale_down_rate).floor() as i32;
        if recommended > up_bound {
            recommended = up_bound;
            why.push_str(&format!("; limited to {up_bound} by the scale-up rate"));
        }
        if recommended < down_bound {
            recommended = down_bound;
            why.push_str(&format!("; limited to {down_bound} by the scale-down rate"));
        }
        let desired = clamp(recommended);
        if desired != recommended {
            why.push_str(&format!(
                "; bounded to {desired} by min {} and max {}",
                policy.min_replicas, policy.max_replicas
            ));
        }
        Decision { desired, reason: why, panic }
    }
}

#[cfg(test)]
mod tests;
