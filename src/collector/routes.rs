//! The collector's routes (documented in `docs/collector-openapi.yaml`), each to its handler.

use axum::Router;
use axum::routing::{delete, get, post};

use super::datasets::{get_dataset, get_dataset_file, post_dataset};
use super::feed::{get_stats, list_feedback, watch_stats};
use super::health::{healthz, metrics_text, not_found, readyz};
use super::ingest::{post_feedback, post_interactions};
use super::state::AppState;
use super::subjects::delete_subject;

/// Every endpoint, over the shared state.
pub(super) fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/interactions", post(post_interactions))
        .route("/v1/feedback", post(post_feedback).get(list_feedback))
        .route("/v1/stats", get(get_stats))
        .route("/v1/stats/watch", get(watch_stats))
        .route("/v1/datasets", post(post_dataset))
        .route("/v1/datasets/{id}", get(get_dataset))
        .route("/v1/datasets/{id}/files/{name}", get(get_dataset_file))
        .route("/v1/subjects/{key}", delete(delete_subject))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .with_state(state)
}
