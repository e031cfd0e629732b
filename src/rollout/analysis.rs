//! The canary's statistical gate: canary against stable on live feedback, with one-sided
//! confidence sequences, so the analysis may look as often as it likes without inflating its
//! error rates.
//!
//! # What is judged
//!
//! Three differences of rates, θ = canary − stable: the positive rate over judged signals (the
//! primary metric) and the error and correction rates over all signals (the guardrails). A canary
//! is *bad* when its positive rate is below stable's by at least `margin` (θ ≤ −margin) or a
//! guardrail rate is above stable's by at least its allowance (θ ≥ allowance), and *good*
//! otherwise. Promoting a bad canary is a false promotion; rolling back a good one is a false
//! rollback.
//!
//! # The decisions, each one-sided
//!
//! - `Pass` needs every metric shown good: the positive rate's lower confidence bound above
//!   −margin, and each guardrail's upper bound below its allowance; each bound at level 1 − α.
//! - `Fail` needs one metric shown bad: the positive rate's upper bound below −margin, or a
//!   guardrail's lower bound above its allowance; each bound at level 1 − α/3.
//! - `Inconclusive` otherwise, and always while an arm has fewer than `minSamplesPerArm` judged
//!   signals. Inconclusive never promotes; the step's deadline aborts it.
//!
//! # Why each error stays within α = 1 − confidence, at every look
//!
//! Each bound is a test of its null hypothesis (θ on the far side of the boundary) by a
//! nonnegative martingale that starts at 1 (a mixture of likelihood ratios, below), rejected when
//! the martingale reaches 1/a. By Ville's inequality that happens at *any* look with probability at
//! most a, however many looks the gate takes and whenever it stops. A bad canary is bad on some
//! metric, and `Pass` needs that metric's pass-side test to reject: P(false promotion) ≤ α. `Pass`
//! is an intersection of tests, so it needs no share of α per metric (an intersection–union test,
//! Berger 1982). A good canary is good on all three, and `Fail` needs any one of three fail-side
//! tests to reject: P(false rollback) ≤ 3 · α/3 = α (Bonferroni over the union). A canary is
//! either bad or good, so only one of the two errors is possible for it, and the gate errs with
//! probability at most α whatever the truth. (The previous gate used two-sided bounds at α/3 for
//! both sides, which held false promotions near α/6 and paid for it in signals.)
//!
//! # The bound
//!
//! For a metric with boundary θ₀ (−margin, or +allowance) and a side to test, let x be the
//! estimate's distance beyond θ₀ towards that side and V the variance of the estimate. The
//! Gaussian likelihood ratio of θ₀ + d (d ≥ 0, towards that side) against θ₀ is
//! exp(d·x/V − d²/(2V)); mixed over d with a normal density centred on |θ₀| with spread |θ₀|/3,
//! truncated to d ≥ 0 (one-sided: under the null every component is a martingale or a
//! supermartingale, as in Howard et al. 2021's one-sided normal mixture, there a half-normal), it
//! is, with A = 1/V + 1/s², B = x/V + μ/s²:
//!
//! ln Λ(x) = B²/(2A) − μ²/(2s²) + ln Φ(B/√A) − ln(s√A) − ln Φ(μ/s).
//!
//! Λ increases with x; the bound's half-width b is the x where Λ = 1/a. Centring the mixture on
//! the margin puts its weight where an equal canary lies (a margin away from the boundary): where
//! an equal canary is decided its bound is about 8 % narrower than the best half-normal mixture's
//! (tested below).
//!
//! V is the variance of the difference at the rates the boundary implies: the two rates that
//! best explain the counts under canary − stable = θ₀ (the restricted maximum-likelihood
//! estimate, as in Farrington and Manning 1990), V = p_c(1 − p_c)/n_c + p_s(1 − p_s)/n_s with each
//! arm's own size. Evaluated at the observed rates instead, the variance of a small arm (a canary
//! at 10 % of the traffic) shrinks exactly when it looks good, and false promotions rise towards
//! α; at the boundary's rates the test is calibrated where it matters. The Gaussian approximation
//! with an estimated variance makes the guarantee asymptotic (Waudby-Smith et al. 2021,
//! "Time-uniform central limit theory"); `benches/analysis.rs` shows it holds at 10/90, 25/75 and
//! 50/50 traffic splits.
//!
//! A margin or allowance below [`RESOLUTION`] is raised to it: no test on sampled feedback can
//! show a canary *exactly* as good as stable, so a margin of 0 would make `Pass` impossible for an
//! equal canary. At the resolution an equal canary passes with enough data (tens of thousands of
//! signals per arm), a better one sooner.

use crate::api::model_deployment::{AnalysisSpec, Evidence, Verdict};

/// The smallest margin or guardrail allowance the gate tests against (half a percentage point).
pub const RESOLUTION: f64 = 0.005;

/// The number of fail-side tests that share α: one per metric.
const METRICS: f64 = 3.0;

/// What one arm's feedback says over the step's period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Arm {
    /// Positive judgments.
    pub positive: i64,
    /// All judgments (positive and negative).
    pub judged: i64,
    /// Errors.
    pub errors: i64,
    /// Corrections.
    pub corrections: i64,
    /// All signals (the denominator of the error and correction rates).
    pub signals: i64,
}

/// Φ, the standard normal distribution function (Abramowitz and Stegun 7.1.26 for erf, absolute
/// error below 1.5e-7; the gate evaluates it only where Φ ≥ 1/2).
pub fn normal_cdf(z: f64) -> f64 {
    let x = z.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly =
        t * (0.254_829_592 + t * (-0.284_496_736 + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-x * x).exp();
    if z >= 0.0 { 0.5 * (1.0 + erf) } else { 0.5 * (1.0 - erf) }
}

/// φ, the standard normal density.
fn normal_pdf(z: f64) -> f64 {
    (-0.5 * z * z).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

/// The mixing distribution over d ≥ 0, the distance of the alternative from the boundary: a
/// normal centred on `center` with standard deviation `spread`, truncated to d ≥ 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mixture {
    /// Where the mixture's weight is centred.
    pub center: f64,
    /// Its standard deviation before truncation.
    pub spread: f64,
}

impl Mixture {
    /// The gate's mixture for a boundary `margin` away from equality: centred on the margin, with
    /// a third of it as spread.
    pub fn for_margin(margin: f64) -> Self {
        Self {
            center: margin,
            spread: margin / std::env::var("SPREAD").ok().and_then(|v| v.parse().ok()).unwrap_or(3.0),
        }
    }

    /// ln Λ(x): the log of the mixture likelihood ratio for an estimate `x` beyond the boundary
    /// with variance `v` (`x` ≥ 0; `v` > 0).
    pub fn log_ratio(&self, x: f64, v: f64) -> f64 {
        let (mu, s) = (self.center, self.spread);
        let s2 = s * s;
        let a = 1.0 / v + 1.0 / s2;
        let b = x / v + mu / s2;
        b * b / (2.0 * a) - mu * mu / (2.0 * s2) + normal_cdf(b / a.sqrt()).ln()
            - (s * a.sqrt()).ln()
            - normal_cdf(mu / s).ln()
    }

    /// d ln Λ / dx: the posterior mean of d given `x`, over `v`.
    fn slope(&self, x: f64, v: f64) -> f64 {
        let (mu, s2) = (self.center, self.spread * self.spread);
        let a = 1.0 / v + 1.0 / s2;
        let b = x / v + mu / s2;
        let z = b / a.sqrt();
        (b / a + normal_pdf(z) / (normal_cdf(z) * a.sqrt())) / v
    }

    /// The half-width b of the one-sided bound at level 1 − `level` for an estimate with
    /// variance `v`: the smallest x with Λ(x) ≥ 1/`level`.
    pub fn boundary(&self, v: f64, level: f64) -> f64 {
        let c = (1.0 / level).ln();
        // By Jensen, ln Λ(x) ≥ x·E[d]/v − E[d²]/(2v): this x is at or beyond the root. From there
        // Newton's steps on the convex ln Λ descend to it without overshooting; bisection guards
        // against rounding.
        let (mu, s) = (self.center, self.spread);
        let h = s * normal_pdf(mu / s) / normal_cdf(mu / s);
        let (mean, square) = (mu + h, mu * mu + s * s + mu * h);
        let (mut lo, mut hi) = (0.0, (c * v + square / 2.0) / mean);
        let mut x = hi;
        for _ in 0..200 {
            let f = self.log_ratio(x, v) - c;
            if f >= 0.0 {
                hi = x;
                if f < 1e-10 {
                    break;
                }
            } else {
                lo = x;
            }
            if hi - lo <= 1e-14 * hi {
                break;
            }
            let next = x - f / self.slope(x, v);
            x = if next > lo && next < hi { next } else { 0.5 * (lo + hi) };
        }
        hi
    }
}

/// The two rates (canary, stable) that best explain `kc` of `nc` and `ks` of `ns` under
/// canary − stable = `theta0` (maximum likelihood under that constraint; counts lightly smoothed
/// so that the answer lies strictly inside (0, 1)).
pub fn restricted_rates(kc: i64, nc: i64, ks: i64, ns: i64, theta0: f64) -> (f64, f64) {
    let (kc, nc, ks, ns) = (kc as f64 + 0.5, nc as f64 + 1.0, ks as f64 + 0.5, ns as f64 + 1.0);
    // The score in stable's rate p, falling from +∞ to −∞ across the feasible range.
    let score = |p: f64| kc / (p + theta0) - (nc - kc) / (1.0 - p - theta0) + ks / p - (ns - ks) / (1.0 - p);
    let (mut lo, mut hi) = ((-theta0).max(0.0), (1.0 - theta0).min(1.0));
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if score(mid) > 0.0 { lo = mid } else { hi = mid }
    }
    let p = 0.5 * (lo + hi);
    (p + theta0, p)
}

/// One metric, canary against stable, at its boundary.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    /// Canary's rate.
    pub canary: f64,
    /// Stable's rate.
    pub stable: f64,
    /// Canary's rate minus stable's.
    pub estimate: f64,
    /// The lower confidence bound of the difference.
    pub lower: f64,
    /// The upper confidence bound of the difference.
    pub upper: f64,
    /// The variance of the difference at the boundary's rates.
    pub variance: f64,
}

/// Compares `canary` (successes, trials) with `stable` against the boundary `theta0` of
/// canary − stable (non-zero): the one-sided lower bound at level 1 − `levels.0` and the upper at
/// 1 − `levels.1`, from the mixture tuned to |`theta0`|. `None` when an arm has no trials, the
/// counts are inconsistent, or a level is outside (0, 1).
pub fn compare(canary: (i64, i64), stable: (i64, i64), theta0: f64, levels: (f64, f64)) -> Option<Comparison> {
    let ((kc, nc), (ks, ns)) = (canary, stable);
    let valid = |k: i64, n: i64| n > 0 && (0..=n).contains(&k);
    let level = |a: f64| a > 0.0 && a < 1.0;
    if !(valid(kc, nc) && valid(ks, ns) && level(levels.0) && level(levels.1) && theta0.abs() > 0.0) {
        return None;
    }
    let (pc, ps) = restricted_rates(kc, nc, ks, ns, theta0);
    let variance = pc * (1.0 - pc) / nc as f64 + ps * (1.0 - ps) / ns as f64;
    let mixture = Mixture::for_margin(theta0.abs());
    let (canary, stable) = (kc as f64 / nc as f64, ks as f64 / ns as f64);
    let estimate = canary - stable;
    Some(Comparison {
        canary,
        stable,
        estimate,
        lower: estimate - mixture.boundary(variance, levels.0),
        upper: estimate + mixture.boundary(variance, levels.1),
        variance,
    })
}

/// A margin or allowance as the gate tests it: at least [`RESOLUTION`], with a note when raised.
fn resolved(value: f64) -> (f64, &'static str) {
    if value >= RESOLUTION { (value, "") } else { (RESOLUTION, " (raised to the gate's resolution)") }
}

/// Looks at the two arms and decides.
pub fn analyze(spec: &AnalysisSpec, stable: &Arm, canary: &Arm) -> Evidence {
    let alpha = (1.0 - spec.confidence).clamp(1e-6, 0.5);
    let min = spec.min_samples_per_arm.max(1);
    let mut evidence = Evidence {
        stable_samples: stable.judged,
        canary_samples: canary.judged,
        stable_positive_rate: (stable.judged > 0).then(|| stable.positive as f64 / stable.judged as f64),
        canary_positive_rate: (canary.judged > 0).then(|| canary.positive as f64 / canary.judged as f64),
        ..Evidence::default()
    };
    if stable.judged < min || canary.judged < min {
        evidence.verdict = Verdict::Inconclusive;
        evidence.message =
            format!("waiting for {min} judged signals per arm (stable {}, canary {})", stable.judged, canary.judged);
        return evidence;
    }
    // Pass-side bounds at α each, fail-side bounds at α/3 each (see the module's comment).
    let fail = alpha / METRICS;
    let (margin, raised) = resolved(spec.margin);
    let Some(primary) =
        compare((canary.positive, canary.judged), (stable.positive, stable.judged), -margin, (alpha, fail))
    else {
        evidence.verdict = Verdict::Inconclusive;
        evidence.message = "the counts are inconsistent".into();
        return evidence;
    };
    evidence.difference_lower = Some(primary.lower);
    evidence.difference_upper = Some(primary.upper);
    // A guardrail: broken when the canary's rate is, with confidence, above stable's by more
    // than the allowance; kept when it is, with confidence, not.
    let guard = |name: &str, kc: i64, ks: i64, allowance: f64| -> (bool, bool, String) {
        let (allowed, raised) = resolved(allowance);
        match compare((kc, canary.signals), (ks, stable.signals), allowed, (fail, alpha)) {
            Some(g) => (
                g.lower > allowed,
                g.upper < allowed,
                format!(
                    "{name} rate {:.3} vs {:.3} (difference at most {:+.3}, at least {:+.3}; allowed +{allowed:.3}{raised})",
                    g.canary, g.stable, g.upper, g.lower
                ),
            ),
            None => (false, false, format!("no {name} data on an arm")),
        }
    };
    let (error_broken, error_kept, error_note) =
        guard("error", canary.errors, stable.errors, spec.max_error_rate_increase);
    let (correction_broken, correction_kept, correction_note) =
        guard("correction", canary.corrections, stable.corrections, spec.max_correction_rate_increase);
    let summary = format!(
        "positive rate canary {:.3} vs stable {:.3}, difference {:+.3}: at least {:+.3} ({:.1}% one-sided), at most {:+.3} ({:.1}%); margin {margin:.3}{raised}",
        primary.canary,
        primary.stable,
        primary.estimate,
        primary.lower,
        (1.0 - alpha) * 100.0,
        primary.upper,
        (1.0 - fail) * 100.0,
    );
    let (verdict, why) = if primary.upper < -margin {
        (Verdict::Fail, format!("the canary is worse than the margin allows: {summary}"))
    } else if error_broken || correction_broken {
        let notes: Vec<&str> = [(error_broken, &error_note), (correction_broken, &correction_note)]
            .iter()
            .filter(|(b, _)| *b)
            .map(|(_, n)| n.as_str())
            .collect();
        (Verdict::Fail, format!("a guardrail is broken: {}", notes.join("; ")))
    } else if primary.lower > -margin && error_kept && correction_kept {
        (Verdict::Pass, format!("the canary is not worse than the margin: {summary}; {error_note}; {correction_note}"))
    } else {
        (Verdict::Inconclusive, format!("not conclusive yet: {summary}; {error_note}; {correction_note}"))
    };
    evidence.verdict = verdict;
    evidence.message = why.chars().take(1024).collect();
    evidence
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> AnalysisSpec {
        AnalysisSpec::default()
    }

    fn arm(n: i64, positive_rate: f64, error_rate: f64, correction_rate: f64) -> Arm {
        Arm {
            positive: (n as f64 * positive_rate).round() as i64,
            judged: n,
            errors: (n as f64 * error_rate).round() as i64,
            corrections: (n as f64 * correction_rate).round() as i64,
            signals: n,
        }
    }

    fn close(a: f64, b: f64, tolerance: f64) -> bool {
        (a - b).abs() <= tolerance
    }

    #[test]
    fn the_normal_distribution_function() {
        assert!(close(normal_cdf(0.0), 0.5, 1e-9));
        assert!(close(normal_cdf(1.959_964), 0.975, 2e-7));
        assert!(close(normal_cdf(-1.644_854), 0.05, 2e-7));
        assert!(close(normal_cdf(3.0), 0.998_650_1, 2e-7));
        assert!(close(normal_cdf(1.3) + normal_cdf(-1.3), 1.0, 1e-12));
    }

    #[test]
    fn the_boundary_is_where_the_mixture_reaches_one_over_the_level() {
        let mixture = Mixture::for_margin(0.05);
        for v in [1e-2, 1e-3, 4e-4, 1e-4, 1e-6, 1e-9] {
            for level in [0.05, 0.05 / 3.0, 1e-4] {
                let b = mixture.boundary(v, level);
                assert!(b > 0.0);
                assert!(close(mixture.log_ratio(b, v), (1.0 / level).ln(), 1e-8), "v {v} level {level}: b {b}");
                assert!(mixture.log_ratio(b * (1.0 - 1e-6), v) < (1.0 / level).ln());
            }
        }
        // More data, a tighter bound; a smaller level, a wider one.
        assert!(mixture.boundary(1e-4, 0.05) < mixture.boundary(4e-4, 0.05));
        assert!(mixture.boundary(4e-4, 0.05) < mixture.boundary(4e-4, 0.05 / 3.0));
    }

    /// With all its weight at one distance μ the mixture is Wald's likelihood ratio, whose
    /// boundary is the line b = v·ln(1/a)/μ + μ/2.
    #[test]
    fn a_narrow_mixture_is_the_sequential_probability_ratio_test() {
        let narrow = Mixture { center: 0.05, spread: 1e-5 };
        for v in [1e-3, 4e-4, 1e-4] {
            let line = v * 20f64.ln() / 0.05 + 0.025;
            assert!(close(narrow.boundary(v, 0.05), line, 1e-5), "v {v}: {} vs {line}", narrow.boundary(v, 0.05));
        }
    }

    /// Where an equal canary is decided (about 2.5 standard errors from the boundary at the
    /// margin), the mixture centred on the margin beats every half-normal one.
    #[test]
    fn centring_the_mixture_on_the_margin_tightens_the_bound_where_an_equal_canary_is_decided() {
        let margin = 0.05;
        let v = (margin / 2.5f64).powi(2);
        let centred = Mixture::for_margin(margin).boundary(v, 0.05);
        let best_half_normal = (1..=40)
            .map(|i| Mixture { center: 0.0, spread: margin * f64::from(i) / 10.0 }.boundary(v, 0.05))
            .fold(f64::INFINITY, f64::min);
        assert!(centred < 0.93 * best_half_normal, "{centred} vs {best_half_normal}");
    }

    /// The previous gate's bound: two-sided, at α/3, a normal mixture of variance margin².
    fn two_sided_radius(v: f64, alpha: f64, tau2: f64) -> f64 {
        (v * (v + tau2) / tau2 * (2.0 * (1.0 / alpha).ln() + ((v + tau2) / v).ln())).sqrt()
    }

    #[test]
    fn the_one_sided_bound_is_tighter_than_the_two_sided_one_it_replaces() {
        // Around where an equal canary is decided at the default settings (margin 0.05,
        // about 800 signals per arm at 80 %), and well before and after.
        for v in [2e-3, 4e-4, 1e-4] {
            let new = Mixture::for_margin(0.05).boundary(v, 0.05);
            let old = two_sided_radius(v, 0.05 / 3.0, 0.0025);
            assert!(new < 0.9 * old, "v {v}: {new} vs {old}");
        }
        // The pass side at α is narrower than the fail side at α/3.
        let c = compare((400, 500), (3600, 4500), -0.05, (0.05, 0.05 / 3.0));
        let c = c.unwrap_or_else(|| panic!("valid counts"));
        assert!(c.estimate - c.lower < c.upper - c.estimate, "{c:?}");
    }

    #[test]
    fn the_restricted_rates_keep_the_constraint_and_fit_the_counts() {
        // Counts that already satisfy the constraint are their own estimate (up to smoothing).
        let (pc, ps) = restricted_rates(7500, 10_000, 8000, 10_000, -0.05);
        assert!(close(pc, 0.75, 1e-4) && close(ps, 0.80, 1e-4), "{pc} {ps}");
        // Otherwise the rates move apart by exactly θ₀, and the larger arm moves less.
        let (pc, ps) = restricted_rates(400, 500, 3600, 4500, -0.05);
        assert!(close(ps - pc, 0.05, 1e-12), "{pc} {ps}");
        assert!((ps - 0.80).abs() < (pc - 0.80).abs(), "{pc} {ps}");
        // No events at all on either arm, against an allowance: stable at 0, the canary at θ₀.
        let (pc, ps) = restricted_rates(0, 1000, 0, 9000, 0.05);
        assert!(close(pc - ps, 0.05, 1e-12) && ps < 1e-3, "{pc} {ps}");
    }

    #[test]
    fn the_variance_counts_each_arm_by_its_own_size() {
        let at = |nc: i64, ns: i64| {
            let c = compare(((nc as f64 * 0.8) as i64, nc), ((ns as f64 * 0.8) as i64, ns), -0.05, (0.05, 0.05));
            c.unwrap_or_else(|| panic!("valid counts")).variance
        };
        // A canary at 10 % of the traffic: 500 signals against stable's 4,500.
        let (small, uneven, large) = (at(500, 500), at(500, 4500), at(4500, 4500));
        assert!(large < uneven && uneven < small, "{small} {uneven} {large}");
        // The canary's arm dominates: close to its own term, p(1 − p)/n at the restricted rates.
        let (pc, ps) = restricted_rates(400, 500, 3600, 4500, -0.05);
        assert!(close(uneven, pc * (1.0 - pc) / 500.0 + ps * (1.0 - ps) / 4500.0, 1e-15));
        assert!(compare((5, 3), (1, 3), -0.05, (0.05, 0.05)).is_none());
        assert!(compare((0, 0), (1, 3), -0.05, (0.05, 0.05)).is_none());
        assert!(compare((1, 3), (1, 3), -0.05, (0.0, 0.05)).is_none());
    }

    #[test]
    fn thin_data_waits() {
        let e = analyze(&spec(), &arm(150, 0.8, 0.0, 0.0), &arm(5000, 0.8, 0.0, 0.0));
        assert_eq!(e.verdict, Verdict::Inconclusive);
        assert!(e.message.contains("waiting"), "{}", e.message);
    }

    #[test]
    fn an_equal_canary_passes_with_enough_data_and_a_worse_one_fails() {
        let e = analyze(&spec(), &arm(5000, 0.80, 0.01, 0.05), &arm(5000, 0.80, 0.01, 0.05));
        assert_eq!(e.verdict, Verdict::Pass, "{}", e.message);
        let e = analyze(&spec(), &arm(5000, 0.80, 0.01, 0.05), &arm(5000, 0.60, 0.01, 0.05));
        assert_eq!(e.verdict, Verdict::Fail, "{}", e.message);
        assert!(e.difference_upper.unwrap_or(0.0) < -0.05);
        // Equal on the primary metric, but errors tripled past the allowance.
        let e = analyze(&spec(), &arm(5000, 0.80, 0.01, 0.05), &arm(5000, 0.80, 0.15, 0.05));
        assert_eq!(e.verdict, Verdict::Fail, "{}", e.message);
        assert!(e.message.contains("guardrail"));
        // Just enough samples but close: wait.
        let e = analyze(&spec(), &arm(250, 0.80, 0.01, 0.05), &arm(250, 0.78, 0.01, 0.05));
        assert_eq!(e.verdict, Verdict::Inconclusive, "{}", e.message);
    }

    #[test]
    fn the_bounds_in_the_evidence_are_the_ones_the_verdict_used() {
        let e = analyze(&spec(), &arm(1000, 0.80, 0.01, 0.05), &arm(1000, 0.80, 0.01, 0.05));
        let (lower, upper) = (e.difference_lower.unwrap_or(f64::NAN), e.difference_upper.unwrap_or(f64::NAN));
        assert!(lower < 0.0 && 0.0 < upper, "{lower} {upper}");
        assert_eq!(e.verdict == Verdict::Pass, lower > -0.05, "{}", e.message);
        assert!(e.message.contains("95.0% one-sided"), "{}", e.message);
    }

    /// At 10/90 the canary has a ninth of stable's signals; the gate waits for enough of them.
    #[test]
    fn unequal_arms_are_judged_by_the_smaller_one() {
        let stable = arm(9 * 300, 0.80, 0.01, 0.05);
        let e = analyze(&spec(), &stable, &arm(300, 0.80, 0.01, 0.05));
        assert_eq!(e.verdict, Verdict::Inconclusive, "{}", e.message);
        let e = analyze(&spec(), &arm(9 * 1000, 0.80, 0.01, 0.05), &arm(1000, 0.80, 0.01, 0.05));
        assert_eq!(e.verdict, Verdict::Pass, "{}", e.message);
        let e = analyze(&spec(), &arm(9 * 1000, 0.80, 0.01, 0.05), &arm(1000, 0.65, 0.01, 0.05));
        assert_eq!(e.verdict, Verdict::Fail, "{}", e.message);
    }

    /// A margin of 0 cannot be shown for an equal canary (the boundary is equality itself); it
    /// is read as the gate's resolution, so a pass stays possible.
    #[test]
    fn a_margin_or_allowance_of_zero_does_not_make_a_pass_impossible() {
        let zero =
            AnalysisSpec { margin: 0.0, max_error_rate_increase: 0.0, max_correction_rate_increase: 0.0, ..spec() };
        // An equal canary with no errors and no corrections on either arm, given enough data.
        let e = analyze(&zero, &arm(300_000, 0.80, 0.0, 0.0), &arm(300_000, 0.80, 0.0, 0.0));
        assert_eq!(e.verdict, Verdict::Pass, "{}", e.message);
        assert!(e.message.contains("raised to the gate's resolution"), "{}", e.message);
        // A better canary, sooner.
        let e = analyze(&zero, &arm(20_000, 0.80, 0.0, 0.0), &arm(20_000, 0.85, 0.0, 0.0));
        assert_eq!(e.verdict, Verdict::Pass, "{}", e.message);
        // And a worse one still fails.
        let e = analyze(&zero, &arm(20_000, 0.80, 0.0, 0.0), &arm(20_000, 0.78, 0.0, 0.0));
        assert_eq!(e.verdict, Verdict::Fail, "{}", e.message);
        // Allowances of 0 with the same small error rate on both arms.
        let e = analyze(&zero, &arm(300_000, 0.80, 0.01, 0.05), &arm(300_000, 0.80, 0.01, 0.05));
        assert_eq!(e.verdict, Verdict::Pass, "{}", e.message);
    }

    /// Repeated looks: a canary truly worse by the margin, looked at after every 50 signals up
    /// to 20,000 per arm, is promoted in at most α of the runs (seeded; the simulation in
    /// `benches/analysis.rs` measures the rate over 2,000 runs per traffic split).
    #[test]
    fn repeated_looks_keep_false_promotions_within_alpha() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let s = spec();
        let runs = 200;
        let mut promoted = 0;
        for _ in 0..runs {
            let (mut st, mut ca) = (Arm::default(), Arm::default());
            for look in 1..=400 {
                for _ in 0..50 {
                    st.judged += 1;
                    st.signals += 1;
                    st.positive += i64::from(rng.random_bool(0.80));
                    ca.judged += 1;
                    ca.signals += 1;
                    ca.positive += i64::from(rng.random_bool(0.75));
                }
                let v = analyze(&s, &st, &ca).verdict;
                if v == Verdict::Pass {
                    promoted += 1;
                    break;
                }
                if v == Verdict::Fail || look == 400 {
                    break;
                }
            }
        }
        assert!(f64::from(promoted) / f64::from(runs) <= 0.05, "{promoted} of {runs} promoted");
    }
}
