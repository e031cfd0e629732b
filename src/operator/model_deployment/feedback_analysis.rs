//! The `Analysis` gate fed by the collector: per-version statistics of the stable and canary
//! versions over the current step's period, judged by `rollout::analysis`.

use futures::future::BoxFuture;
use kube::ResourceExt;

use crate::api::ModelDeployment;
use crate::api::feedback_policy::SignalStats;
use crate::api::model_deployment::{Evidence, Verdict};
use crate::collector::client::{CollectorClient, StatsQuery};
use crate::rollout::analysis::{Arm, analyze};

/// What a signal counts as when a canary is judged: the signal mapping of the FeedbackPolicy
/// that targets the ModelDeployment, or the default mapping when none does.
#[derive(Debug, Clone, PartialEq)]
pub struct Judging {
    /// The mapping.
    pub mapping: crate::api::feedback_policy::SignalMapping,
    /// Where it came from, as status shows it: `FeedbackPolicy <name>` or `default`.
    pub source: String,
}

impl Judging {
    /// The mapping of the policy (of `policies`) that targets `md`: the first by name when
    /// several do (and it says how many), the default when none does.
    pub fn of(md: &str, policies: &[crate::api::FeedbackPolicy]) -> Self {
        let mut targeting: Vec<&crate::api::FeedbackPolicy> =
            policies.iter().filter(|p| p.spec.target_ref.name == md).collect();
        targeting.sort_by_key(|p| p.name_any());
        match targeting.first() {
            None => Self {
                mapping: crate::api::feedback_policy::SignalMapping::default(),
                source: "default (no FeedbackPolicy targets this ModelDeployment)".into(),
            },
            Some(p) => Self {
                mapping: p.spec.signals.clone(),
                source: if targeting.len() == 1 {
                    format!("FeedbackPolicy {}", p.name_any())
                } else {
                    format!("FeedbackPolicy {} (first by name of {} that target it)", p.name_any(), targeting.len())
                },
            },
        }
    }
}

/// The source of feedback evidence for `Analysis` gates (filled by the feedback loop); without
/// one, analysis steps wait and abort at their deadline.
pub trait AnalysisSource: Send + Sync {
    /// The evidence for the current step of `md`'s canary, each signal counted as `judging` says.
    fn evidence<'a>(&'a self, md: &'a ModelDeployment, judging: &'a Judging) -> BoxFuture<'a, Option<Evidence>>;
}

/// No analysis configured: every look is inconclusive.
pub struct NoAnalysis;

impl AnalysisSource for NoAnalysis {
    fn evidence<'a>(&'a self, _md: &'a ModelDeployment, _judging: &'a Judging) -> BoxFuture<'a, Option<Evidence>> {
        Box::pin(async {
            Some(Evidence {
                time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now())),
                verdict: Verdict::Inconclusive,
                message: "no feedback analysis is configured (the operator has no collector URL)".into(),
                ..Evidence::default()
            })
        })
    }
}

/// Reads `GET /v1/stats` of the collector.
pub struct CollectorAnalysis {
    client: CollectorClient,
}

impl CollectorAnalysis {
    /// A source reading the collector at `base` with a read (or write) token.
    pub fn new(base: &str, token: Option<String>) -> Self {
        Self { client: CollectorClient::new(base, token) }
    }
}

/// One version's arm from its statistics.
pub fn arm_of(s: &SignalStats) -> Arm {
    Arm { positive: s.positive, judged: s.judged, errors: s.errors, corrections: s.corrections, signals: s.total }
}

impl AnalysisSource for CollectorAnalysis {
    fn evidence<'a>(&'a self, md: &'a ModelDeployment, judging: &'a Judging) -> BoxFuture<'a, Option<Evidence>> {
        Box::pin(async move {
            let now = k8s_openapi::jiff::Timestamp::now();
            let status = md.status.as_ref()?;
            let canary = status.canary.as_ref()?;
            let stable = status.stable.as_ref()?;
            let spec = md.spec.rollout.as_ref().and_then(|r| r.analysis.clone()).unwrap_or_default();
            // Both arms over the same period: since the current step began.
            let from = canary.step_started_at.as_ref().map_or(now, |t| t.0);
            let namespace = md.namespace().unwrap_or_default();
            let time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now));
            // The targeting policy's mapping: what a signal counts as is the same for both arms,
            // and the same as for the policy's trigger.
            let mapping = &judging.mapping;
            let deployment = md.name_any();
            let q = StatsQuery { namespace: &namespace, deployment: &deployment, from: from.to_string(), mapping };
            match self.client.stats(&q).await {
                Ok(stats) => {
                    let mut evidence = analyze(
                        &spec,
                        &arm_of(&stats.version(&stable.version)),
                        &arm_of(&stats.version(&canary.version)),
                    );
                    evidence.time = time;
                    Some(evidence)
                }
                Err(e) => {
                    let message = e.to_string();
                    tracing::warn!(name = %md.name_any(), %namespace, error = %message, "no feedback statistics");
                    Some(Evidence {
                        time,
                        verdict: Verdict::Inconclusive,
                        message: format!("{message}; waiting"),
                        ..Evidence::default()
                    })
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::stats::VersionStats;
    use serde_json::json;

    fn policy(name: &str, target: &str, positive: &str) -> crate::api::FeedbackPolicy {
        serde_json::from_value(json!({
            "apiVersion": "flywheel.dev/v1alpha1", "kind": "FeedbackPolicy",
            "metadata": {"name": name, "namespace": "team"},
            "spec": {"targetRef": {"name": target}, "signals": {"positiveLabels": [positive]},
                     "triggers": {"qualityBelow": 0.5}, "trainer": {"image": "t"}, "outputUriPrefix": "pvc://m/"}
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_targeting_policy_says_what_a_signal_counts_as() {
        let none = Judging::of("chat", &[policy("other", "search", "ok")]);
        assert_eq!(none.mapping, crate::api::feedback_policy::SignalMapping::default());
        assert!(none.source.starts_with("default"), "{}", none.source);
        let one = Judging::of("chat", &[policy("other", "search", "ok"), policy("chat-labels", "chat", "resolved")]);
        assert_eq!(one.mapping.positive_labels, vec!["resolved".to_string()]);
        assert_eq!(one.source, "FeedbackPolicy chat-labels");
        // Several: the first by name, and status says there were several.
        let two = Judging::of("chat", &[policy("chat-z", "chat", "z"), policy("chat-a", "chat", "a")]);
        assert_eq!(two.mapping.positive_labels, vec!["a".to_string()]);
        assert!(two.source.contains("chat-a") && two.source.contains("of 2"), "{}", two.source);
    }

    #[test]
    fn arms_come_from_the_counts_behind_the_rates() {
        let v1 = json!({"version": "v1", "total": 10, "positiveRate": {"numerator": 6, "denominator": 8},
             "errorRate": {"numerator": 1, "denominator": 10}, "correctionRate": {"numerator": 2, "denominator": 10}});
        let stats = SignalStats::from(&serde_json::from_value::<VersionStats>(v1).unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(arm_of(&stats), Arm { positive: 6, judged: 8, errors: 1, corrections: 2, signals: 10 });
        assert_eq!(arm_of(&SignalStats::default()), Arm::default());
    }
}
