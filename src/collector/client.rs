//! The client of the collector's HTTP API (`docs/collector-openapi.yaml`), shared by the operator
//! and the demo: per-version statistics, the long-poll change feed, and dataset snapshots. Each
//! answer is read into the type the server writes it from ([`StatsReport`], [`Manifest`],
//! [`ErrorBody`]).

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::dataset::Manifest;
use super::error::ErrorBody;
use super::ingest::BatchAnswer;
use super::stats::{StatsReport, VersionStats};
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

impl From<&VersionStats> for SignalStats {
    /// A version's statistics as a FeedbackPolicy's status and the rollout analysis count them.
    fn from(v: &VersionStats) -> Self {
        SignalStats {
            version: v.version.clone(),
            total: v.total,
            positive: v.positive_rate.numerator,
            judged: v.positive_rate.denominator,
            positive_rate: v.positive_rate.value,
            ratings: v.ratings,
            mean_rating: v.mean_rating,
            corrections: v.correction_rate.numerator,
            correction_rate: v.correction_rate.value,
            errors: v.error_rate.numerator,
            error_rate: v.error_rate.value,
            observed_at: None,
        }
    }
}

impl StatsReport {
    /// The statistics of `version` as the operator counts them (zeroes when it has none).
    pub fn version(&self, version: &str) -> SignalStats {
        self.of(version)
            .map(SignalStats::from)
            .unwrap_or_else(|| SignalStats { version: version.to_string(), ..SignalStats::default() })
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

/// Which events a batch holds, and so where it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingest {
    /// `POST /v1/interactions`.
    Interactions,
    /// `POST /v1/feedback`.
    Feedback,
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
        let client = crate::http_client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_else(|_| crate::http_client::client());
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

    /// A success's body as `T`, or the error the collector answered.
    async fn read<T: DeserializeOwned>(response: reqwest::Response, what: &'static str) -> Result<T, CollectorError> {
        let status = response.status();
        let body = response.bytes().await.map_err(|source| CollectorError::Unreachable { what, source })?;
        if status.is_success() {
            return serde_json::from_slice(&body)
                .map_err(|e| CollectorError::Unreadable { what, message: e.to_string() });
        }
        let Ok(ErrorBody { error, counts }) = serde_json::from_slice(&body) else {
            let message = "no error message".to_string();
            return Err(CollectorError::Status { what, status: status.as_u16(), message });
        };
        if error.code == "NotEnoughRows" {
            let rows = counts.map_or(0, |c| c.sft + c.dpo);
            // The message ends with the rows the recipe needs.
            let needed = error.message.rsplit(' ').next().and_then(|n| n.parse().ok()).unwrap_or(0);
            return Err(CollectorError::NotEnoughRows { rows, needed });
        }
        let message = error.message.chars().take(512).collect();
        Err(CollectorError::Status { what, status: status.as_u16(), message })
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

    /// Per-version statistics from the query's `from` to now.
    pub async fn stats(&self, q: &StatsQuery<'_>) -> Result<StatsReport, CollectorError> {
        self.stats_until(q, None).await
    }

    /// Per-version statistics from the query's `from` to `to` (RFC 3339), or to now.
    pub async fn stats_until(&self, q: &StatsQuery<'_>, to: Option<&str>) -> Result<StatsReport, CollectorError> {
        const WHAT: &str = "a statistics query";
        let mut url = self.stats_url("/v1/stats", q)?;
        if let Some(to) = to {
            url.query_pairs_mut().append_pair("to", to);
        }
        let response = self
            .authorized(self.client.get(url).timeout(Duration::from_secs(15)))
            .send()
            .await
            .map_err(|source| CollectorError::Unreachable { what: WHAT, source })?;
        Self::read(response, WHAT).await
    }

    /// Long poll: answers once the deployment's cursor passes `cursor`, or after `wait`.
    pub async fn watch(&self, q: &StatsQuery<'_>, cursor: i64, wait: Duration) -> Result<StatsReport, CollectorError> {
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
        Self::read(response, WHAT).await
    }

    /// Store a batch of interactions or feedback events (at most [`MAX_BATCH_ITEMS`](super::ingest::MAX_BATCH_ITEMS)); the
    /// answer says what became of each item, the error why the batch as a whole was refused.
    pub async fn ingest(&self, kind: Ingest, items: &[Value]) -> Result<BatchAnswer, CollectorError> {
        let (what, path) = match kind {
            Ingest::Interactions => ("an interaction batch", "/v1/interactions"),
            Ingest::Feedback => ("a feedback batch", "/v1/feedback"),
        };
        let response = self
            .authorized(self.client.post(self.url(path)?).timeout(Duration::from_secs(15)).json(items))
            .send()
            .await
            .map_err(|source| CollectorError::Unreachable { what, source })?;
        Self::read(response, what).await
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
        let Manifest { id, sha256, counts, .. } = Self::read(response, WHAT).await?;
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
        let stats: StatsReport = serde_json::from_value(body).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(stats.cursor, 42);
        let v1 = stats.version("v1");
        assert_eq!((v1.total, v1.positive, v1.judged, v1.corrections, v1.errors, v1.ratings), (20, 9, 15, 2, 1, 6));
        assert_eq!(v1.positive_rate, Some(0.6));
        assert_eq!(stats.version("v2").total, 0);
        assert!(serde_json::from_value::<StatsReport>(json!({"cursor": 1})).is_err());
    }

    #[test]
    fn the_report_reads_back_as_the_server_writes_it() {
        let aggregate = |kind, up, count| crate::collector::store::Aggregate {
            version: "v1".into(),
            kind,
            up,
            label: None,
            count,
            rating_sum: 0.0,
            rating_positive: 0,
            first_ms: 1,
            last_ms: 2,
        };
        use crate::collector::event::Kind;
        let versions = crate::collector::stats::summarize(
            &[aggregate(Kind::Thumbs, Some(true), 3), aggregate(Kind::Thumbs, Some(false), 1)],
            &[("v1".into(), 7)],
            &crate::collector::stats::Mapping::default(),
        );
        let written = StatsReport {
            namespace: "ns".into(),
            deployment: "md".into(),
            from: "2026-01-01T00:00:00Z".into(),
            to: "2026-01-02T00:00:00Z".into(),
            cursor: 9,
            versions,
            changed: Some(true),
        };
        let text = serde_json::to_string(&written).unwrap_or_else(|e| panic!("{e}"));
        let read: StatsReport = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read, written);
        let v1 = read.version("v1");
        assert_eq!((v1.positive, v1.judged, v1.total), (3, 4, 4));
        assert_eq!(read.of("v1").map(|v| v.interactions), Some(7));
    }

    /// A response of the collector as the client receives it.
    async fn received(response: axum::response::Response) -> reqwest::Response {
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_else(|e| panic!("{e}"));
        reqwest::Response::from(axum::http::Response::from_parts(parts, bytes.to_vec()))
    }

    #[tokio::test]
    async fn answers_read_back_as_the_server_writes_them() {
        use crate::collector::dataset::{self, Built, Recipe, Rows};
        use crate::collector::error::ApiError;
        use axum::response::IntoResponse;

        let recipe = Recipe::default();
        let encoded = dataset::encode(&Rows::default());
        let built = Built {
            namespace: "ns",
            deployment: "md",
            from_ms: 0,
            to_ms: 1_000,
            now_ms: 2_000,
            recipe: &recipe,
            counts: DatasetCounts { sft: 3, dpo: 2, held_out: 1 },
        };
        let written = Manifest::new(&built, &encoded);
        let answer = received((axum::http::StatusCode::CREATED, axum::Json(&written)).into_response()).await;
        let read: Manifest = CollectorClient::read(answer, "a test").await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read, written);

        let refused = ApiError::not_enough_rows(
            "the window gives 5 training rows; the recipe needs at least 20",
            DatasetCounts { sft: 3, dpo: 2, held_out: 1 },
        );
        let answer = received(refused.into_response()).await;
        match CollectorClient::read::<Manifest>(answer, "a test").await {
            Err(CollectorError::NotEnoughRows { rows, needed }) => assert_eq!((rows, needed), (5, 20)),
            other => panic!("{other:?}"),
        }
        let answer = received(ApiError::not_found("no dataset \"x\"").into_response()).await;
        match CollectorClient::read::<Manifest>(answer, "a test").await {
            Err(e @ CollectorError::Status { status: 404, .. }) => {
                assert_eq!(e.to_string(), "the collector answered 404 to a test: no dataset \"x\"");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_recipe_follows_the_policy() {
        let r = recipe(&DatasetRecipe::default(), &SignalMapping::default());
        assert_eq!(r["formats"], json!(["SFT", "DPO"]));
        assert_eq!(r["minRows"], json!(20));
        assert_eq!(r["ratingThreshold"], json!(0.75));
    }
}
