//! `DELETE /v1/subjects/{key}`: erases every event of a user or session key.

use axum::Json;
use axum::extract::{Path as UrlPath, State};
use serde::Serialize;

use super::error::ApiError;
use super::event;
use super::request::WriteAccess;
use super::state::AppState;

/// How many events were erased.
#[derive(Serialize)]
pub(super) struct Deleted {
    deleted: u64,
}

pub(super) async fn delete_subject(
    State(state): State<AppState>,
    UrlPath(key): UrlPath<String>,
    _: WriteAccess,
) -> Result<Json<Deleted>, ApiError> {
    if key.is_empty() || key.len() > event::MAX_KEY {
        return Err(ApiError::invalid("the key must be 1 to 256 bytes").field("key"));
    }
    let deleted = state.store.delete_subject(&key).await?;
    tracing::info!(deleted, "events of a subject deleted on request");
    Ok(Json(Deleted { deleted }))
}
