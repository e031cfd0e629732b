//! The reads of stored events: `GET /v1/stats` (per-version statistics over a window, under a
//! signal mapping), `GET /v1/stats/watch` (the change feed: a long poll on the deployment's
//! cursor) and `GET /v1/feedback` (feedback in storage order, paged by position).

use std::collections::BTreeSet;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};

use super::clock::{now_ms, rfc3339};
use super::error::ApiError;
use super::event::Feedback;
use super::request::{Params, ReadAccess, parse_time};
use super::state::AppState;
use super::stats::{self, Mapping, StatsReport};

/// Query of `/v1/stats` and `/v1/stats/watch`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct StatsQuery {
    namespace: String,
    deployment: String,
    /// Window length back from `to` (default one day).
    window_seconds: Option<u64>,
    /// Start of the window (RFC 3339); overrides `windowSeconds`.
    from: Option<String>,
    /// End of the window (RFC 3339); now when unset.
    to: Option<String>,
    rating_threshold: Option<f64>,
    correction_is_negative: Option<bool>,
    error_is_negative: Option<bool>,
    /// Comma-separated.
    positive_labels: Option<String>,
    /// Comma-separated.
    negative_labels: Option<String>,
    /// Watch only: answer once the cursor passes this.
    cursor: Option<i64>,
    /// Watch only: longest wait.
    timeout_seconds: Option<u64>,
}

impl StatsQuery {
    /// The window, Unix ms, both ends included.
    fn window(&self) -> Result<(i64, i64), ApiError> {
        let to = self.to.as_deref().map_or_else(|| Ok(now_ms()), |s| parse_time("to", s))?;
        let from = match &self.from {
            Some(s) => parse_time("from", s)?,
            None => to.saturating_sub((self.window_seconds.unwrap_or(86_400).min(10 * 365 * 86_400) * 1000) as i64),
        };
        Ok((from, to))
    }

    /// How signals count; the defaults are a FeedbackPolicy's.
    fn mapping(&self) -> Mapping {
        let labels = |s: &Option<String>| -> BTreeSet<String> {
            s.as_deref().unwrap_or("").split(',').map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect()
        };
        Mapping {
            rating_threshold: self.rating_threshold.unwrap_or(0.75).clamp(0.0, 1.0),
            correction_is_negative: self.correction_is_negative.unwrap_or(true),
            error_is_negative: self.error_is_negative.unwrap_or(true),
            positive_labels: labels(&self.positive_labels),
            negative_labels: labels(&self.negative_labels),
        }
    }
}

/// The statistics the query asks for, with the deployment's cursor.
async fn report(state: &AppState, q: &StatsQuery) -> Result<StatsReport, ApiError> {
    let (from, to) = q.window()?;
    let mapping = q.mapping();
    // The cursor is read first: a change that lands during the query moves it past this value.
    let cursor = state.store.cursor(&q.namespace, &q.deployment).await?;
    let (aggregates, interactions) =
        state.store.aggregates(&q.namespace, &q.deployment, from, to, mapping.rating_threshold).await?;
    Ok(StatsReport {
        namespace: q.namespace.clone(),
        deployment: q.deployment.clone(),
        from: rfc3339(from),
        to: rfc3339(to),
        cursor,
        versions: stats::summarize(&aggregates, &interactions, &mapping),
        changed: None,
    })
}

pub(super) async fn get_stats(
    State(state): State<AppState>,
    _: ReadAccess,
    Params(q): Params<StatsQuery>,
) -> Result<Json<StatsReport>, ApiError> {
    report(&state, &q).await.map(Json)
}

/// Long poll: answers as soon as the deployment's cursor passes `cursor` (checked on every
/// local commit, and every half second for commits of other replicas), or at the timeout with
/// `changed: false`.
pub(super) async fn watch_stats(
    State(state): State<AppState>,
    _: ReadAccess,
    Params(q): Params<StatsQuery>,
) -> Result<Json<StatsReport>, ApiError> {
    let since = q.cursor.unwrap_or(0);
    let timeout = Duration::from_secs(q.timeout_seconds.unwrap_or(30)).min(state.config.max_watch);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut commits = state.writer.commits();
    loop {
        let changed = state.store.cursor(&q.namespace, &q.deployment).await? > since;
        if changed || tokio::time::Instant::now() >= deadline {
            let report = report(&state, &q).await?;
            return Ok(Json(StatsReport { changed: Some(changed), ..report }));
        }
        tokio::select! {
            _ = commits.changed() => {}
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
            () = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// Query of `/v1/feedback`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct ListQuery {
    namespace: String,
    deployment: String,
    after: Option<i64>,
    limit: Option<i64>,
}

/// A page of feedback, and the position to ask after for the next one.
#[derive(Serialize)]
pub(super) struct FeedbackPage {
    items: Vec<Listed>,
    next: Option<i64>,
}

/// A stored feedback event with its position.
#[derive(Serialize)]
pub(super) struct Listed {
    #[serde(flatten)]
    feedback: Feedback,
    seq: i64,
}

pub(super) async fn list_feedback(
    State(state): State<AppState>,
    _: ReadAccess,
    Params(q): Params<ListQuery>,
) -> Result<Json<FeedbackPage>, ApiError> {
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    let rows = state.store.feedback_after(&q.namespace, &q.deployment, q.after.unwrap_or(0), limit).await?;
    let next = rows.last().map(|r| r.seq);
    let items = rows.into_iter().map(|r| Listed { feedback: r.feedback, seq: r.seq }).collect();
    Ok(Json(FeedbackPage { items, next }))
}
