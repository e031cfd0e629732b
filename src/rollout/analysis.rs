//! The canary's statistical gate: canary against stable on live feedback, with confidence
//! sequences, so the analysis may look as often as it likes without inflating its error rate.
//!
//! Each comparison (positive rate, error rate, correction rate: canary minus stable) gets a
//! confidence sequence: the normal-mixture boundary of the mixture sequential probability ratio
//! test (Robbins; Johari, Pekelis, Walsh, "Always valid inference", 2017, as used by Optimizely),
//! with the variance of the difference estimated from both arms' rates. With probability at least
//! 1 − α the true difference lies inside the interval at *every* look at once, so looking after
//! each new signal is as safe as looking once (asymptotically, as the variance is estimated).
//! The three comparisons share α equally (Bonferroni), so the gate errs with probability at most
//! α = 1 − confidence however many looks it takes. The mixture's spread is tuned to the margin
//! (and each guardrail's allowance), the differences the gate must resolve.
//!
//! Verdicts: `Pass` when the canary's positive rate is, with confidence, no more than `margin`
//! below stable's and neither guardrail rate is, with confidence, above stable's by more than its
//! allowance; `Fail` when the positive rate is, with confidence, more than `margin` below stable's
//! or a guardrail is, with confidence, broken; `Inconclusive` otherwise, and always while an arm
//! has fewer than `minSamplesPerArm` signals. Inconclusive never promotes; the step's deadline
//! aborts it.

use crate::api::model_deployment::{AnalysisSpec, Evidence, Verdict};

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

/// A difference of rates with its confidence sequence at the current sample sizes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    /// Canary's rate minus stable's.
    pub estimate: f64,
    /// Lower end.
    pub lower: f64,
    /// Upper end.
    pub upper: f64,
    /// Canary's rate.
    pub canary: f64,
    /// Stable's rate.
    pub stable: f64,
}

/// The always-valid interval of (canary − stable) for `kc` of `nc` and `ks` of `ns` signals, at
/// level `alpha`, with mixing variance `tau2`.
pub fn difference_interval(kc: i64, nc: i64, ks: i64, ns: i64, alpha: f64, tau2: f64) -> Option<Interval> {
    let valid = |k: i64, n: i64| n > 0 && (0..=n).contains(&k);
    if !(valid(kc, nc) && valid(ks, ns) && alpha > 0.0 && alpha < 1.0 && tau2 > 0.0) {
        return None;
    }
    let rate = |k: i64, n: i64| k as f64 / n as f64;
    // Variance from lightly smoothed rates, so an arm at 0% or 100% still has some.
    let smoothed = |k: i64, n: i64| (k as f64 + 0.5) / (n as f64 + 1.0);
    let var = |k: i64, n: i64| {
        let p = smoothed(k, n);
        p * (1.0 - p) / n as f64
    };
    let v = var(kc, nc) + var(ks, ns);
    let (canary, stable) = (rate(kc, nc), rate(ks, ns));
    let estimate = canary - stable;
    let radius = (v * (v + tau2) / tau2 * (2.0 * (1.0 / alpha).ln() + ((v + tau2) / v).ln())).sqrt();
    Some(Interval { estimate, lower: estimate - radius, upper: estimate + radius, canary, stable })
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
    let share = alpha / 3.0;
    let tau2 = |allowance: f64| allowance.max(0.005).powi(2);
    let Some(primary) =
        difference_interval(canary.positive, canary.judged, stable.positive, stable.judged, share, tau2(spec.margin))
    else {
        evidence.verdict = Verdict::Inconclusive;
        evidence.message = "the counts are inconsistent".into();
        return evidence;
    };
    evidence.difference_lower = Some(primary.lower);
    evidence.difference_upper = Some(primary.upper);
    // A guardrail: broken when the canary's rate is, with confidence, above stable's by more
    // than the allowance; kept when it is, with confidence, not.
    let guard = |name: &str, kc: i64, ks: i64, allowed: f64| -> (bool, bool, String) {
        match difference_interval(kc, canary.signals, ks, stable.signals, share, tau2(allowed)) {
            Some(i) => (
                i.lower > allowed,
                i.upper < allowed,
                format!(
                    "{name} rate {:.3} vs {:.3} (difference in [{:+.3}, {:+.3}], allowed +{allowed:.3})",
                    i.canary, i.stable, i.lower, i.upper
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
        "positive rate canary {:.3} vs stable {:.3}, difference in [{:+.3}, {:+.3}] at {:.1}% confidence (margin {:.3})",
        primary.canary,
        primary.stable,
        primary.lower,
        primary.upper,
        spec.confidence * 100.0,
        spec.margin
    );
    let (verdict, why) = if primary.upper < -spec.margin {
        (Verdict::Fail, format!("the canary is worse than the margin allows: {summary}"))
    } else if error_broken || correction_broken {
        let notes: Vec<&str> = [(error_broken, &error_note), (correction_broken, &correction_note)]
            .iter()
            .filter(|(b, _)| *b)
            .map(|(_, n)| n.as_str())
            .collect();
        (Verdict::Fail, format!("a guardrail is broken: {}", notes.join("; ")))
    } else if primary.lower > -spec.margin && error_kept && correction_kept {
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

    #[test]
    fn the_interval_holds_its_estimate_and_narrows() {
        let none = Interval { estimate: 0.0, lower: 0.0, upper: 0.0, canary: 0.0, stable: 0.0 };
        let a = difference_interval(70, 100, 80, 100, 0.05, 0.0025).unwrap_or(none);
        let b = difference_interval(7000, 10_000, 8000, 10_000, 0.05, 0.0025).unwrap_or(none);
        assert!((a.estimate + 0.1).abs() < 1e-12);
        assert!(a.lower < -0.1 && -0.1 < a.upper);
        assert!(b.upper - b.lower < (a.upper - a.lower) / 5.0, "{a:?} {b:?}");
        assert!(difference_interval(5, 3, 1, 3, 0.05, 0.0025).is_none());
        assert!(difference_interval(0, 0, 1, 3, 0.05, 0.0025).is_none());
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

    /// Repeated looks: a canary truly worse by the margin, looked at after every 50 signals up
    /// to 20,000 per arm, is promoted in far fewer than α of the runs.
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
