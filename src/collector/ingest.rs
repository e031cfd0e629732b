//! `POST /v1/interactions` and `POST /v1/feedback`: one event (a JSON object) or a batch (a JSON
//! array, or NDJSON), decoded field by field, stored through the group-commit writer, and
//! answered after the commit: 201 or 200 for one event, 207 with an answer per item for a batch.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::clock::now_ms;
use super::error::{ApiError, ErrorDetail};
use super::event::{self, Event, FieldError};
use super::metrics::KindLabels;
use super::request::{Payload, WriteAccess};
use super::state::AppState;
use super::store::Outcome;
use super::writer::SubmitError;

/// Most items in one batch.
pub const MAX_BATCH_ITEMS: usize = 1000;

/// Which endpoint, and so which decoder.
#[derive(Clone, Copy, PartialEq, Eq)]
enum EventType {
    Interaction,
    Feedback,
}

pub(super) async fn post_interactions(
    State(state): State<AppState>,
    _: WriteAccess,
    body: Payload,
) -> Result<Response, ApiError> {
    ingest(&state, EventType::Interaction, &body).await
}

pub(super) async fn post_feedback(
    State(state): State<AppState>,
    _: WriteAccess,
    body: Payload,
) -> Result<Response, ApiError> {
    ingest(&state, EventType::Feedback, &body).await
}

async fn ingest(state: &AppState, kind: EventType, body: &Payload) -> Result<Response, ApiError> {
    let now = now_ms();
    match items(state, body)? {
        Items::One(value) => ingest_one(state, kind, &value, now).await,
        Items::Many(items) => Ok(ingest_batch(state, kind, items, now).await?.into_response()),
    }
}

/// A body's events: one JSON object is a single event; an array or NDJSON is a batch.
enum Items {
    One(Value),
    /// Each item, or why it is not JSON (an NDJSON line).
    Many(Vec<Result<Value, String>>),
}

fn items(state: &AppState, body: &Payload) -> Result<Items, ApiError> {
    let malformed = |message: String| {
        state.metrics.reject("malformed");
        ApiError::malformed(message)
    };
    let items = if body.ndjson {
        event::split_batch(&body.bytes, true).map_err(malformed)?
    } else {
        match serde_json::from_slice::<Value>(&body.bytes) {
            Ok(Value::Array(items)) => items.into_iter().map(Ok).collect(),
            Ok(value) => return Ok(Items::One(value)),
            Err(e) => return Err(malformed(format!("the body is not JSON: {e}"))),
        }
    };
    if items.is_empty() {
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "EmptyBatch", "the batch holds no event"));
    }
    if items.len() > MAX_BATCH_ITEMS {
        state.metrics.reject("too_large");
        let message = format!("the batch holds {} events; at most {MAX_BATCH_ITEMS}", items.len());
        return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "BatchTooLarge", message));
    }
    Ok(Items::Many(items))
}

fn decode(kind: EventType, value: &Value, now: i64) -> Result<Event, FieldError> {
    match kind {
        EventType::Interaction => event::decode_interaction(value, now).map(Event::Interaction),
        EventType::Feedback => event::decode_feedback(value, now).map(Event::Feedback),
    }
}

/// The answer to a single event.
#[derive(Serialize)]
struct Stored<'a> {
    id: &'a str,
    outcome: &'static str,
}

async fn ingest_one(state: &AppState, kind: EventType, value: &Value, now: i64) -> Result<Response, ApiError> {
    let event = decode(kind, value, now).map_err(|e| {
        state.metrics.reject("invalid");
        ApiError::invalid_field(&e)
    })?;
    let outcomes = submit(state, vec![event.clone()]).await?;
    let outcome = outcomes.first().copied().unwrap_or(Outcome::Conflict);
    count(state, &event, outcome);
    let id = event.id();
    match outcome {
        Outcome::Created => Ok((StatusCode::CREATED, Json(Stored { id, outcome: "created" })).into_response()),
        Outcome::Duplicate => Ok((StatusCode::OK, Json(Stored { id, outcome: "duplicate" })).into_response()),
        Outcome::Conflict => Err(ApiError::id_conflict(id)),
    }
}

/// The answer to a batch: totals, and one result per item in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchAnswer {
    /// Items stored now.
    pub created: usize,
    /// Items already stored with the same content.
    pub duplicates: usize,
    /// Items refused (invalid, or an id reused with other content).
    pub rejected: usize,
    /// One result per item, in the order sent.
    pub results: Vec<ItemResult>,
}

/// What became of an item that was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemOutcome {
    /// Stored now.
    Created,
    /// Stored before, with the same content.
    Duplicate,
}

/// One item of a batch: its id when it decoded, and its status with an outcome or an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemResult {
    /// The item's position in the batch.
    pub index: usize,
    /// The event's id, when the item decoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The HTTP status the item would have had alone.
    pub status: u16,
    /// What became of a stored item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<ItemOutcome>,
    /// Why a refused item was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

impl ItemResult {
    fn invalid(index: usize, e: &FieldError) -> Self {
        Self { index, id: None, status: 422, outcome: None, error: Some(ErrorDetail::invalid_field(e)) }
    }

    fn stored(index: usize, event: &Event, outcome: Outcome) -> Self {
        let id = Some(event.id().to_string());
        match outcome {
            Outcome::Created => Self { index, id, status: 201, outcome: Some(ItemOutcome::Created), error: None },
            Outcome::Duplicate => Self { index, id, status: 200, outcome: Some(ItemOutcome::Duplicate), error: None },
            Outcome::Conflict => {
                Self { index, id, status: 422, outcome: None, error: Some(ErrorDetail::id_conflict(event.id())) }
            }
        }
    }
}

/// Stores the items that decode in one submission; an item that does not is refused alone.
async fn ingest_batch(
    state: &AppState,
    kind: EventType,
    items: Vec<Result<Value, String>>,
    now: i64,
) -> Result<(StatusCode, Json<BatchAnswer>), ApiError> {
    let decoded: Vec<Result<Event, FieldError>> = items
        .into_iter()
        .map(|item| {
            let event = item
                .map_err(|message| FieldError { field: "(line)".into(), message })
                .and_then(|v| decode(kind, &v, now));
            if event.is_err() {
                state.metrics.reject("invalid");
            }
            event
        })
        .collect();
    let events: Vec<Event> = decoded.iter().filter_map(|d| d.as_ref().ok()).cloned().collect();
    // One outcome per submitted event, in order.
    let mut outcomes = submit(state, events).await?.into_iter();
    let results: Vec<ItemResult> = decoded
        .iter()
        .enumerate()
        .map(|(index, d)| match d {
            Err(e) => ItemResult::invalid(index, e),
            Ok(event) => {
                let outcome = outcomes.next().unwrap_or(Outcome::Conflict);
                count(state, event, outcome);
                ItemResult::stored(index, event, outcome)
            }
        })
        .collect();
    let with = |outcome| results.iter().filter(|r| r.outcome == Some(outcome)).count();
    let (created, duplicates) = (with(ItemOutcome::Created), with(ItemOutcome::Duplicate));
    let answer = BatchAnswer { created, duplicates, rejected: results.len() - created - duplicates, results };
    Ok((StatusCode::MULTI_STATUS, Json(answer)))
}

/// Stores events through the group-commit writer: 429 when it is full, 503 when the store fails.
async fn submit(state: &AppState, events: Vec<Event>) -> Result<Vec<Outcome>, ApiError> {
    state.writer.submit(events).await.map_err(|e| match e {
        SubmitError::Overloaded => {
            state.metrics.reject("overloaded");
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "Overloaded", e.to_string()).header(header::RETRY_AFTER, "1")
        }
        SubmitError::Unavailable(_) | SubmitError::Closed => {
            state.metrics.reject("unavailable");
            ApiError::unavailable(e.to_string()).header(header::RETRY_AFTER, "2")
        }
    })
}

/// Counts an outcome in the metrics.
fn count(state: &AppState, event: &Event, outcome: Outcome) {
    match outcome {
        Outcome::Created => {
            let kind = match event {
                Event::Interaction(_) => "interaction".to_string(),
                Event::Feedback(f) => f.value.kind().as_str().to_string(),
            };
            state.metrics.ingested.get_or_create(&KindLabels { kind }).inc();
        }
        Outcome::Duplicate => {
            state.metrics.duplicates.inc();
        }
        Outcome::Conflict => state.metrics.reject("conflict"),
    }
}
