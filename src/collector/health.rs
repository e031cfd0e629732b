//! `/healthz` (the process answers), `/readyz` (the store answers and the last commit
//! succeeded), `/metrics` (OpenMetrics text), and the answer to any other path.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::error::ApiError;
use super::state::AppState;

pub(super) async fn healthz() -> &'static str {
    "ok"
}

pub(super) async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    if state.ready.load(Ordering::Relaxed) && state.writer.healthy() {
        Ok("ok")
    } else {
        Err(ApiError::unavailable("the store does not answer"))
    }
}

pub(super) async fn metrics_text(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.render())
}

/// 404 for a path the API does not have.
pub(super) async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}
