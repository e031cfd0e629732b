//! The evaluation gate (pure): each rule compares a trained candidate's metric with the base's
//! on the same held-out rows (the trainer contract's `<metric>` and `<metric>Before`), or with an
//! absolute bound. A metric a rule needs but nobody reported fails the rule: a gate that cannot
//! judge never lets a candidate through.

use std::collections::BTreeMap;

use crate::api::common::{Better, EvaluationRule, RuleResult};

fn fmt(x: f64) -> String {
    format!("{x:.4}")
}

/// Judge one rule.
pub fn judge_rule(rule: &EvaluationRule, metrics: &BTreeMap<String, f64>) -> RuleResult {
    let candidate = metrics.get(&rule.metric).copied();
    let base = metrics.get(&format!("{}Before", rule.metric)).copied();
    let (better, worse) = match rule.better {
        Better::Lower => ("below", "above"),
        Better::Higher => ("above", "below"),
    };
    // How much the candidate improves on the base (positive: better), in the metric's units.
    let improvement = |c: f64, b: f64| match rule.better {
        Better::Lower => b - c,
        Better::Higher => c - b,
    };
    let mut failures = Vec::new();
    let mut holds = Vec::new();
    let m = &rule.metric;
    match candidate {
        None => failures.push(format!("{m} was not reported")),
        Some(c) => {
            if rule.min_improvement.is_some() || rule.max_regression.is_some() {
                match base {
                    None => failures.push(format!("{m}Before (the base on the same rows) was not reported")),
                    Some(b) => {
                        if let Some(min) = rule.min_improvement {
                            let text =
                                format!("{m} {} must be at least {} {better} the base's {}", fmt(c), fmt(min), fmt(b));
                            if improvement(c, b) >= min { holds.push(text) } else { failures.push(text) }
                        }
                        if let Some(max) = rule.max_regression {
                            let text =
                                format!("{m} {} may be at most {} {worse} the base's {}", fmt(c), fmt(max), fmt(b));
                            if -improvement(c, b) <= max { holds.push(text) } else { failures.push(text) }
                        }
                    }
                }
            }
            if let Some(bound) = rule.bound {
                let (ok, word) = match rule.better {
                    Better::Lower => (c <= bound, "at most"),
                    Better::Higher => (c >= bound, "at least"),
                };
                let text = format!("{m} {} must be {word} {}", fmt(c), fmt(bound));
                if ok { holds.push(text) } else { failures.push(text) }
            }
        }
    }
    let passed = failures.is_empty();
    let message = if passed { holds.join("; ") } else { failures.join("; ") };
    RuleResult { metric: rule.metric.clone(), candidate, base, passed, message: message.chars().take(512).collect() }
}

/// Judge every rule.
pub fn judge(rules: &[EvaluationRule], metrics: &BTreeMap<String, f64>) -> Vec<RuleResult> {
    rules.iter().map(|r| judge_rule(r, metrics)).collect()
}

/// The failed rules, in words.
pub fn failures(results: &[RuleResult]) -> String {
    results.iter().filter(|r| !r.passed).map(|r| r.message.clone()).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(metric: &str, better: Better, min: Option<f64>, max: Option<f64>, bound: Option<f64>) -> EvaluationRule {
        EvaluationRule { metric: metric.into(), better, min_improvement: min, max_regression: max, bound }
    }

    fn metrics(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn a_loss_must_fall_by_the_margin() {
        let r = rule("evalLoss", Better::Lower, Some(0.05), None, None);
        let better = judge_rule(&r, &metrics(&[("evalLoss", 1.70), ("evalLossBefore", 1.80)]));
        assert!(better.passed, "{}", better.message);
        assert_eq!((better.candidate, better.base), (Some(1.70), Some(1.80)));
        let barely = judge_rule(&r, &metrics(&[("evalLoss", 1.78), ("evalLossBefore", 1.80)]));
        assert!(!barely.passed);
        assert_eq!(barely.message, "evalLoss 1.7800 must be at least 0.0500 below the base's 1.8000");
        let worse = judge_rule(&r, &metrics(&[("evalLoss", 1.90), ("evalLossBefore", 1.80)]));
        assert!(!worse.passed);
        // A margin of 0: at least as good passes.
        let zero = rule("evalLoss", Better::Lower, Some(0.0), None, None);
        assert!(judge_rule(&zero, &metrics(&[("evalLoss", 1.80), ("evalLossBefore", 1.80)])).passed);
    }

    #[test]
    fn an_accuracy_may_fall_by_at_most_the_margin_and_bounds_are_absolute() {
        let r = rule("preferenceAccuracy", Better::Higher, None, Some(0.02), Some(0.5));
        let ok = judge_rule(&r, &metrics(&[("preferenceAccuracy", 0.69), ("preferenceAccuracyBefore", 0.70)]));
        assert!(ok.passed, "{}", ok.message);
        let fell = judge_rule(&r, &metrics(&[("preferenceAccuracy", 0.60), ("preferenceAccuracyBefore", 0.70)]));
        assert!(!fell.passed);
        assert!(fell.message.contains("at most 0.0200 below the base's 0.7000"), "{}", fell.message);
        let low = judge_rule(&r, &metrics(&[("preferenceAccuracy", 0.45), ("preferenceAccuracyBefore", 0.45)]));
        assert!(!low.passed && low.message.contains("must be at least 0.5000"), "{}", low.message);
    }

    #[test]
    fn a_metric_nobody_reported_fails_its_rule() {
        let r = rule("judgeScore", Better::Higher, Some(0.0), None, None);
        let missing = judge_rule(&r, &metrics(&[("evalLoss", 1.0)]));
        assert!(!missing.passed && missing.message == "judgeScore was not reported");
        let no_base = judge_rule(&r, &metrics(&[("judgeScore", 0.8)]));
        assert!(!no_base.passed && no_base.message.contains("judgeScoreBefore"));
        // A bound alone needs no base.
        let bound = rule("judgeScore", Better::Higher, None, None, Some(0.7));
        assert!(judge_rule(&bound, &metrics(&[("judgeScore", 0.8)])).passed);
        let all = judge(&[r, bound], &metrics(&[("judgeScore", 0.8)]));
        assert_eq!(failures(&all), "judgeScoreBefore (the base on the same rows) was not reported");
    }
}
