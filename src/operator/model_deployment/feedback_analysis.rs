//! The `Analysis` gate fed by the collector: per-version statistics of the stable and canary
//! versions over the current step's period, judged by `rollout::analysis`.

use std::time::Duration;

use futures::future::BoxFuture;
use kube::ResourceExt;
use serde_json::Value;

use super::AnalysisSource;
use crate::api::ModelDeployment;
use crate::api::model_deployment::{Evidence, Verdict};
use crate::rollout::analysis::{Arm, analyze};

/// Reads `GET /v1/stats` of the collector.
pub struct CollectorAnalysis {
    base: String,
    token: Option<String>,
    client: reqwest::Client,
}

impl CollectorAnalysis {
    /// A source reading the collector at `base` with a read (or write) token.
    pub fn new(base: &str, token: Option<String>) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Self { base: base.trim_end_matches('/').to_string(), token, client }
    }

    async fn stats(&self, namespace: &str, deployment: &str, from: &str) -> Result<Value, String> {
        let mut url = reqwest::Url::parse(&format!("{}/v1/stats", self.base))
            .map_err(|e| format!("the collector URL {:?} is not a URL: {e}", self.base))?;
        url.query_pairs_mut()
            .append_pair("namespace", namespace)
            .append_pair("deployment", deployment)
            .append_pair("from", from);
        let mut request = self.client.get(url);
        if let Some(t) = &self.token {
            request = request.bearer_auth(t);
        }
        let response = request.send().await.map_err(|e| format!("the collector did not answer: {e}"))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("the collector answered {status}"));
        }
        response.json().await.map_err(|e| format!("the collector's statistics are unreadable: {e}"))
    }
}

/// One version's arm from the collector's statistics (zero when it has none).
pub fn arm_of(stats: &Value, version: &str) -> Arm {
    let Some(v) = stats["versions"].as_array().and_then(|vs| vs.iter().find(|v| v["version"] == version)) else {
        return Arm::default();
    };
    let n = |p: &str| v.pointer(p).and_then(Value::as_i64).unwrap_or(0);
    Arm {
        positive: n("/positiveRate/numerator"),
        judged: n("/positiveRate/denominator"),
        errors: n("/errorRate/numerator"),
        corrections: n("/correctionRate/numerator"),
        signals: n("/total"),
    }
}

impl AnalysisSource for CollectorAnalysis {
    fn evidence<'a>(&'a self, md: &'a ModelDeployment) -> BoxFuture<'a, Option<Evidence>> {
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
            match self.stats(&namespace, &md.name_any(), &from.to_string()).await {
                Ok(stats) => {
                    let mut evidence =
                        analyze(&spec, &arm_of(&stats, &stable.version), &arm_of(&stats, &canary.version));
                    evidence.time = time;
                    Some(evidence)
                }
                Err(message) => {
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
    use serde_json::json;

    #[test]
    fn arms_come_from_the_counts_behind_the_rates() {
        let stats = json!({"versions": [
            {"version": "v1", "total": 10, "positiveRate": {"numerator": 6, "denominator": 8},
             "errorRate": {"numerator": 1, "denominator": 10}, "correctionRate": {"numerator": 2, "denominator": 10}}
        ]});
        assert_eq!(arm_of(&stats, "v1"), Arm { positive: 6, judged: 8, errors: 1, corrections: 2, signals: 10 });
        assert_eq!(arm_of(&stats, "v2"), Arm::default());
    }
}
