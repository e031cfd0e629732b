//! `POST /v1/datasets` (build a snapshot of a window under a recipe, or answer the one built
//! before from the same rows), `GET /v1/datasets/{id}` (its description) and
//! `GET /v1/datasets/{id}/files/{name}` (its files, streamed one stored chunk at a time). The
//! rows, files and ids are [`super::dataset`]'s.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use serde::Deserialize;
use serde_json::Value;

use super::clock::now_ms;
use super::dataset::{self, Built, Encoded, Manifest, Recipe};
use super::error::ApiError;
use super::request::{Payload, ReadAccess, WriteAccess, parse_time};
use super::state::AppState;
use super::store::{Store, StoreError};

/// Body of `POST /v1/datasets`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DatasetRequest {
    namespace: String,
    deployment: String,
    /// Start of the window (RFC 3339); the beginning of the store when unset.
    from: Option<String>,
    /// End of the window (RFC 3339); now when unset.
    to: Option<String>,
    #[serde(default)]
    recipe: Recipe,
}

impl DatasetRequest {
    /// The request in a JSON body, with a valid recipe.
    fn parse(body: &Payload) -> Result<Self, ApiError> {
        if body.ndjson {
            return Err(ApiError::unsupported_media_type("send application/json"));
        }
        let request: Self = serde_json::from_slice(&body.bytes).map_err(|e| {
            if e.is_syntax() || e.is_eof() {
                ApiError::malformed(format!("the body is not JSON: {e}"))
            } else {
                ApiError::invalid(e.to_string())
            }
        })?;
        request
            .recipe
            .validate()
            .map_err(|(field, message)| ApiError::invalid(format!("{field}: {message}")).field(field))?;
        Ok(request)
    }

    /// The window, Unix ms, both ends included.
    fn window(&self) -> Result<(i64, i64), ApiError> {
        let to = self.to.as_deref().map_or_else(|| Ok(now_ms()), |s| parse_time("to", s))?;
        let from = self.from.as_deref().map_or(Ok(0), |s| parse_time("from", s))?;
        Ok((from, to))
    }
}

pub(super) async fn post_dataset(
    State(state): State<AppState>,
    _: WriteAccess,
    body: Payload,
) -> Result<Response, ApiError> {
    let req = DatasetRequest::parse(&body)?;
    let (manifest, encoded) = build(&state, &req).await?;
    // The same rows were snapshotted before: that snapshot, unless its files are missing (one
    // an older collector kept on a data directory it no longer has), which this build restores.
    if let Some(stored) = existing_snapshot(&state.store, &manifest.id).await? {
        return Ok(Json(stored).into_response());
    }
    store(&state, manifest, encoded).await
}

/// The snapshot of the request's window under its recipe: its description and its files; 422
/// `NotEnoughRows` when the window gives fewer training rows than the recipe needs.
async fn build(state: &AppState, req: &DatasetRequest) -> Result<(Manifest, Encoded), ApiError> {
    let (from_ms, to_ms) = req.window()?;
    let feedback = state.store.joined_feedback(&req.namespace, &req.deployment, from_ms, to_ms).await?;
    let recipe = req.recipe.clone();
    // Off the async threads: the rows and their files take a while for a large window.
    let (rows, encoded) = tokio::task::spawn_blocking(move || {
        let rows = dataset::build(&feedback, &recipe);
        let encoded = dataset::encode(&rows);
        (rows, encoded)
    })
    .await
    .map_err(|_| ApiError::internal("building the dataset failed"))?;
    let counts = dataset::counts(&rows);
    let training = rows.sft.len() + rows.dpo.len();
    if training < req.recipe.min_rows {
        let message =
            format!("the window gives {training} training rows; the recipe needs at least {}", req.recipe.min_rows);
        return Err(ApiError::not_enough_rows(message, counts));
    }
    let built = Built {
        namespace: &req.namespace,
        deployment: &req.deployment,
        from_ms,
        to_ms,
        now_ms: now_ms(),
        recipe: &req.recipe,
        counts,
    };
    Ok((Manifest::new(&built, &encoded), encoded))
}

/// Stores a new snapshot: 201 with its description, or 200 with the stored description when
/// another request (on this replica or another) stored the same snapshot first.
async fn store(state: &AppState, manifest: Manifest, encoded: Encoded) -> Result<Response, ApiError> {
    let description = serde_json::to_value(&manifest)
        .map_err(|e| ApiError::internal(format!("describing the snapshot failed: {e}")))?;
    let files = dataset::stored_files(encoded);
    if !state.store.put_dataset(&manifest.id, &manifest.namespace, &manifest.deployment, &description, files).await? {
        return Ok(Json(described(&state.store, &manifest.id).await?).into_response());
    }
    state.metrics.datasets.inc();
    tracing::info!(dataset = %manifest.id, namespace = %manifest.namespace, deployment = %manifest.deployment, sha256 = %manifest.sha256, "dataset snapshot built");
    Ok((StatusCode::CREATED, Json(manifest)).into_response())
}

/// A stored snapshot with its files, or `None` when it is not stored or its files are not.
async fn existing_snapshot(store: &Store, id: &str) -> Result<Option<Value>, StoreError> {
    let Some(manifest) = store.get_dataset(id).await? else { return Ok(None) };
    Ok(store.dataset_file(id, dataset::SUMS).await?.map(|_| manifest))
}

/// The description of a snapshot just stored (by this request or another).
async fn described(store: &Store, id: &str) -> Result<Value, ApiError> {
    store.get_dataset(id).await?.ok_or_else(|| {
        ApiError::store(&StoreError::Corrupt {
            id: id.to_string(),
            reason: "the snapshot was stored but cannot be read back".into(),
        })
    })
}

fn valid_dataset_id(id: &str) -> bool {
    id.len() == 23 && id.starts_with("ds-") && id[3..].bytes().all(|b| b.is_ascii_hexdigit())
}

fn no_dataset(id: &str) -> ApiError {
    ApiError::not_found(format!("no dataset {id:?}"))
}

pub(super) async fn get_dataset(
    State(state): State<AppState>,
    UrlPath(id): UrlPath<String>,
    _: ReadAccess,
) -> Result<Json<Value>, ApiError> {
    if !valid_dataset_id(&id) {
        return Err(no_dataset(&id));
    }
    state.store.get_dataset(&id).await?.map(Json).ok_or_else(|| no_dataset(&id))
}

pub(super) async fn get_dataset_file(
    State(state): State<AppState>,
    UrlPath((id, name)): UrlPath<(String, String)>,
    _: ReadAccess,
) -> Result<Response, ApiError> {
    let known = dataset::FILES.contains(&name.as_str()) || name == dataset::SUMS || name == dataset::MANIFEST;
    if !valid_dataset_id(&id) || !known {
        return Err(ApiError::not_found(format!("no file {name:?} in dataset {id:?}")));
    }
    if name == dataset::MANIFEST {
        // The description, as `GET /v1/datasets/{id}` gives it.
        let manifest = state.store.get_dataset(&id).await?.ok_or_else(|| no_dataset(&id))?;
        let mut body = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
        body.push(b'\n');
        return Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response());
    }
    let Some(file) = state.store.dataset_file(&id, &name).await? else {
        return Err(match state.store.get_dataset(&id).await? {
            Some(_) => ApiError::not_found(format!(
                "dataset {id} has no stored files: an older collector kept them on a data directory this replica \
                 does not have; build the snapshot again (POST /v1/datasets with the same window and recipe) to \
                 store them"
            )),
            None => no_dataset(&id),
        });
    };
    let kind = if name.ends_with(".jsonl") { "application/x-ndjson" } else { "text/plain; charset=utf-8" };
    let etag = format!("\"{}\"", file.sha256);
    let body = Body::from_stream(file_stream(state.store.clone(), id, name, file.size));
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, kind)
        .header(header::CONTENT_LENGTH, file.size)
        .header(header::ETAG, etag)
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}

/// A stored file's bytes, one chunk at a time; an error (the store failed, or a chunk is
/// missing) ends the response early, so the client sees a body shorter than its length.
fn file_stream(
    store: Store,
    id: String,
    name: String,
    size: i64,
) -> impl futures::Stream<Item = Result<bytes::Bytes, StoreError>> + Send {
    futures::stream::try_unfold((0i64, 0i64), move |(part, sent)| {
        let (store, id, name) = (store.clone(), id.clone(), name.clone());
        async move {
            if sent >= size {
                return Ok(None);
            }
            let chunk = match store.dataset_chunk(&id, &name, part).await? {
                Some(c) if !c.is_empty() && sent + c.len() as i64 <= size => c,
                _ => {
                    return Err(StoreError::Corrupt {
                        id,
                        reason: format!("{name}: chunk {part} is missing or does not fit a file of {size} bytes"),
                    });
                }
            };
            let sent = sent + chunk.len() as i64;
            Ok(Some((bytes::Bytes::from(chunk), (part + 1, sent))))
        }
    })
    .inspect_err(|e: &StoreError| tracing::error!(error = %e, "serving a dataset file failed"))
}
