//! The operator's client of the collector's HTTP API (`docs/collector-openapi.yaml`): per-version
//! statistics, the long-poll change feed, and dataset snapshots.

use std::time::Duration;

use serde_json::{Value, json};

use crate::api::common::DatasetCounts;
use crate::api::feedback_policy::{DatasetRecipe, SignalMapping, SignalStats};

/// Why a call to the collector failed.
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    /// The URL is not a URL.
    #[error("the collector URL {url:?} is not a URL: {reason}")]
    BadUrl {
        /// The configured URL.
        url: String,
        /// The parse error.
        reason: String,
    },
    /// No answer (connection refused, timeout, broken body).
    #[error("the collector did not answer {what}: {source}")]
    Unreachable {
        /// The request.
        what: &'static str,
        /// The transport error.
        source: reqwest::Error,
    },
    /// An answer other than success.
    #[error("the collector answered {status} to {what}: {message}")]
    Status {
        /// The request.
        what: &'static str,
        /// The HTTP status.
        status: u16,
        /// The error body's message.
        message: String,
    },
    /// The window does not hold enough training rows for the recipe.
    #[error("the window gives {rows} training rows; the recipe needs at least {needed}")]
    NotEnoughRows {
        /// Training rows the window gives.
        rows: i64,
        /// Rows the recipe needs.
        needed: i64,
    },
    /// A success whose body does not have the documented shape.
    #[error("the collector's answer to {what} is unreadable: {message}")]
    Unreadable {
        /// The request.
        what: &'static str,
        /// What was wrong.
        message: String,
    },
}

impl CollectorError {
    /// Short static category for conditions, Events and metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Self::BadUrl { .. } => "CollectorMisconfigured",
            Self::Unreachable { .. } => "CollectorUnreachable",
            Self::Status { status: 401 | 403, .. } => "CollectorUnauthorized",
            Self::Status { .. } => "CollectorError",
            Self::NotEnoughRows { .. } => "NotEnoughRows",
            Self::Unreadable { .. } => "CollectorUnreadable",
        }
    }
}

/// The per-version statistics of one deployment over a period.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Stats {
    /// Every version with signals in the period.
    pub versions: Vec<SignalStats>,
    /// The deployment's change cursor when the statistics were computed.
    pub cursor: i64,
    /// Whether the cursor moved past the one asked for (change feed only).
    pub changed: bool,
}

impl Stats {
    /// The statistics of `version` (zeroes when it has none).
    pub fn version(&self, version: &str) -> SignalStats {
        self.versions
            .iter()
            .find(|v| v.version == version)
            .cloned()
            .unwrap_or_else(|| SignalStats { version: version.to_string(), ..SignalStats::default() })
    }

    /// Signals over every version.
    pub fn total(&self) -> i64 {
        self.versions.iter().map(|v| v.total).sum()
    }
}

/// A dataset snapshot the collector built.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The collector's identifier.
    pub id: String,
    /// sha256 of the snapshot's `SHA256SUMS`.
    pub sha256: String,
    /// Row counts.
    pub counts: DatasetCounts,
    /// Where a trainer downloads the files: `<collector URL>/v1/datasets/<id>/files`.
    pub uri: String,
}

/// The window and signal mapping of a statistics query.
#[derive(Debug, Clone)]
pub struct StatsQuery<'a> {
    /// Namespace of the deployment.
    pub namespace: &'a str,
    /// The deployment.
    pub deployment: &'a str,
    /// Start of the period (RFC 3339).
    pub from: String,
    /// How signals count.
    pub mapping: &'a SignalMapping,
}

/// A client of one collector.
#[derive(Clone)]
pub struct CollectorClient {
    base: String,
    token: Option<String>,
    client: reqwest::Client,
}

impl std::fmt::Debug for CollectorClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token stays out of logs.
        f.debug_struct("CollectorClient").field("base", &self.base).finish_non_exhaustive()
    }
}

fn rate_of(v: &Value, key: &str) -> (i64, i64, Option<f64>) {
    let n = |p: &str| v.pointer(&format!("/{key}/{p}")).and_then(Value::as_i64).unwrap_or(0);
    let value = v.pointer(&format!("/{key}/value")).and_then(Value::as_f64);
    (n("numerator"), n("denominator"), value)
}

/// One version's statistics from the collector's `versions[]` entry.
pub fn signal_stats(v: &Value) -> Option<SignalStats> {
    let version = v.get("version")?.as_str()?.to_string();
    let (positive, judged, positive_rate) = rate_of(v, "positiveRate");
    let (corrections, _, correction_rate) = rate_of(v, "correctionRate");
    let (errors, _, error_rate) = rate_of(v, "errorRate");
    let ratings = v.get("ratings").and_then(Value::as_i64).unwrap_or(0);
    let mean_rating = v.get("meanRating").and_then(Value::as_f64);
    Some(SignalStats {
        version,
        total: v.get("total").and_then(Value::as_i64).unwrap_or(0),
        positive,
        judged,
        positive_rate,
        ratings,
        mean_rating,
        corrections,
        correction_rate,
        errors,
        error_rate,
        observed_at: None,
    })
}

fn parse_stats(body: &Value) -> Result<Stats, CollectorError> {
    let versions = body
        .get("versions")
        .and_then(Value::as_array)
        .ok_or(CollectorError::Unreadable { what: "a statistics query", message: "no versions list".into() })?;
    Ok(Stats {
        versions: versions.iter().filter_map(signal_stats).collect(),
        cursor: body.get("cursor").and_then(Value::as_i64).unwrap_or(0),
        changed: body.get("changed").and_then(Value::as_bool).unwrap_or(true),
    })
}

/// The collector's recipe for a policy's `dataset`.
pub fn recipe(dataset: &DatasetRecipe, mapping: &SignalMapping) -> Value {
    let formats: Vec<&str> = dataset.formats.iter().map(|f| f.as_str()).collect();
    json!({
        "formats": formats,
        "includeCorrections": dataset.include_corrections,
        "includePositive": dataset.include_positive,
        "includeAlternatives": dataset.include_alternatives,
        "heldOutFraction": dataset.held_out_fraction,
        "minRows": dataset.min_rows,
        "maxRows": dataset.max_rows,
        "dedupe": dataset.dedupe,
        "ratingThreshold": mapping.rating_positive_threshold,
    })
}

impl CollectorClient {
    /// A client of the collector at `base` (`http://flywheel-collector.flywheel-system:8080`).
    pub fn new(base: &str, token: Option<String>) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Self { base: base.trim_end_matches('/').to_string(), token, client }
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> Result<reqwest::Url, CollectorError> {
        reqwest::Url::parse(&format!("{}{path}", self.base))
            .map_err(|e| CollectorError::BadUrl { url: self.base.clone(), reason: e.to_string() })
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => request.bearer_auth(t),
            None => request,
        }
    }

    async fn read(response: reqwest::Response, what: &'static str) -> Result<Value, CollectorError> {
        let status = response.status();
        let body: Value = match response.bytes().await {
            Ok(b) => serde_json::from_slice(&b).unwrap_or(Value::Null),
            Err(source) => return Err(CollectorError::Unreachable { what, source }),
        };
        if status.is_success() {
            return Ok(body);
        }
        if body.pointer("/error/code").and_then(Value::as_str) == Some("NotEnoughRows") {
            let counts = body.get("counts").cloned().unwrap_or(Value::Null);
            let rows = counts.get("sft").and_then(Value::as_i64).unwrap_or(0)
                + counts.get("dpo").and_then(Value::as_i64).unwrap_or(0);
            let needed = body
                .pointer("/error/message")
                .and_then(Value::as_str)
                .and_then(|m| m.rsplit(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            return Err(CollectorError::NotEnoughRows { rows, needed });
        }
        let message =
            body.pointer("/error/message").and_then(Value::as_str).unwrap_or("no error message").chars().take(512);
        Err(CollectorError::Status { what, status: status.as_u16(), message: message.collect() })
    }

    fn stats_url(&self, path: &str, q: &StatsQuery<'_>) -> Result<reqwest::Url, CollectorError> {
        let mut url = self.url(path)?;
        {
            let mut pairs = url.query_pairs_mut();
            pairs
                .append_pair("namespace", q.namespace)
                .append_pair("deployment", q.deployment)
                .append_pair("from", &q.from)
                .append_pair("ratingThreshold", &q.mapping.rating_positive_threshold.to_string())
                .append_pair("correctionIsNegative", &q.mapping.correction_is_negative.to_string())
                .append_pair("errorIsNegative", &q.mapping.error_is_negative.to_string());
            if !q.mapping.positive_labels.is_empty() {
                pairs.append_pair("positiveLabels", &q.mapping.positive_labels.join(","));
            }
            if !q.mapping.negative_labels.is_empty() {
                pairs.append_pair("negativeLabels", &q.mapping.negative_labels.join(","));
            }
        }
        Ok(url)
    }

    /// Per-version statistics over the query's period.
    pub async fn stats(&self, q: &StatsQuery<'_>) -> Result<Stats, CollectorError> {
        const WHAT: &str = "a statistics query";
        let url = self.stats_url("/v1/stats", q)?;
        let response = self
            .authorized(self.client.get(url).timeout(Duration::from_secs(15)))
            .send()
            .await
            .map_err(|source| CollectorError::Unreachable { what: WHAT, source })?;
        parse_stats(&Self::read(response, WHAT).await?)
    }

    /// Long poll: answers once the deployment's cursor passes `cursor`, or after `wait`.
    pub async fn watch(&self, q: &StatsQuery<'_>, cursor: i64, wait: Duration) -> Result<Stats, CollectorError> {
        const WHAT: &str = "the change feed";
        let mut url = self.stats_url("/v1/stats/watch", q)?;
        url.query_pairs_mut()
            .append_pair("cursor", &cursor.to_string())
            .append_pair("timeoutSeconds", &wait.as_secs().max(1).to_string());
        let response = self
            .authorized(self.client.get(url).timeout(wait + Duration::from_secs(15)))
            .send()
            .await
            .map_err(|source| CollectorError::Unreachable { what: WHAT, source })?;
        parse_stats(&Self::read(response, WHAT).await?)
    }

    /// Ask for an immutable snapshot of the deployment's feedback from `from` to now.
    pub async fn snapshot(
        &self,
        namespace: &str,
        deployment: &str,
        from: &str,
        recipe: Value,
    ) -> Result<Snapshot, CollectorError> {
        const WHAT: &str = "a dataset request";
        let body = json!({"namespace": namespace, "deployment": deployment, "from": from, "recipe": recipe});
        let response = self
            .authorized(self.client.post(self.url("/v1/datasets")?).timeout(Duration::from_secs(120)).json(&body))
            .send()
            .await
            .map_err(|source| CollectorError::Unreachable { what: WHAT, source })?;
        let manifest = Self::read(response, WHAT).await?;
        let text = |k: &str| {
            manifest
                .get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| CollectorError::Unreadable { what: WHAT, message: format!("the manifest has no {k}") })
        };
        let id = text("id")?;
        let sha256 = text("sha256")?;
        let counts: DatasetCounts = serde_json::from_value(manifest.get("counts").cloned().unwrap_or(Value::Null))
            .map_err(|e| CollectorError::Unreadable { what: WHAT, message: format!("counts: {e}") })?;
        let uri = format!("{}/v1/datasets/{id}/files", self.base);
        Ok(Snapshot { id, sha256, counts, uri })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_carry_the_counts_behind_every_rate() {
        let body = json!({"cursor": 42, "versions": [{
            "version": "v1", "total": 20,
            "positiveRate": {"value": 0.6, "numerator": 9, "denominator": 15},
            "correctionRate": {"value": 0.1, "numerator": 2, "denominator": 20},
            "errorRate": {"value": 0.05, "numerator": 1, "denominator": 20},
            "meanRating": 0.7, "ratings": 6
        }]});
        let stats = parse_stats(&body).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(stats.cursor, 42);
        let v1 = stats.version("v1");
        assert_eq!((v1.total, v1.positive, v1.judged, v1.corrections, v1.errors, v1.ratings), (20, 9, 15, 2, 1, 6));
        assert_eq!(v1.positive_rate, Some(0.6));
        assert_eq!(stats.version("v2").total, 0);
        assert!(parse_stats(&json!({"cursor": 1})).is_err());
    }

    #[test]
    fn the_recipe_follows_the_policy() {
        let r = recipe(&DatasetRecipe::default(), &SignalMapping::default());
        assert_eq!(r["formats"], json!(["SFT", "DPO"]));
        assert_eq!(r["minRows"], json!(20));
        assert_eq!(r["ratingThreshold"], json!(0.75));
    }
}
