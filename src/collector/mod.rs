//! `flywheel collector`: where every signal lands.
//!
//! HTTP API under `/v1` (documented in `docs/collector-openapi.yaml`): interactions and feedback,
//! single or batched, idempotent by client id; per-version statistics and a long-poll change
//! feed; immutable dataset snapshots; retention and deletion by user or session key. Writes go
//! through one group-commit writer and are acknowledged only after their commit.

#![allow(
    clippy::result_large_err,
    reason = "handlers return ready-made HTTP responses as their errors, built only for failed requests"
)]

pub mod auth;
pub mod dataset;
pub mod event;
pub mod metrics;
pub mod stats;
pub mod store;
pub mod writer;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use futures::TryStreamExt;
use k8s_openapi::jiff::Timestamp;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use self::auth::{Scope, Tokens};
use self::event::{Event, FieldError};
use self::metrics::{KindLabels, Metrics};
use self::store::{Outcome, Store, StoreError};
use self::writer::{SubmitError, Writer};

/// Most items in one batch.
pub const MAX_BATCH_ITEMS: usize = 1000;

/// How the collector runs.
#[derive(Debug, Clone)]
pub struct CollectorConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Data directory: the SQLite store and a generated token (dataset snapshots are stored in
    /// the database, SQLite or PostgreSQL).
    pub data_dir: PathBuf,
    /// Token file (one token per line, optionally followed by `read` or `write`); when unset a
    /// token is generated into `<data-dir>/token`.
    pub token_file: Option<PathBuf>,
    /// PostgreSQL URL; SQLite in the data directory when unset.
    pub database_url: Option<String>,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Requests waiting for a commit before new ones get 429.
    pub queue: usize,
    /// Events in one group commit at most.
    pub max_batch: usize,
    /// Events older than this are purged.
    pub retention: Duration,
    /// How often the purge runs.
    pub purge_interval: Duration,
    /// Longest wait of a change-feed request.
    pub max_watch: Duration,
}

impl CollectorConfig {
    /// Defaults for a data directory, listening on `listen`.
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        Self {
            listen,
            data_dir,
            token_file: None,
            database_url: None,
            max_body_bytes: 8 * 1024 * 1024,
            queue: 4096,
            max_batch: 2048,
            retention: Duration::from_secs(90 * 24 * 3600),
            purge_interval: Duration::from_secs(600),
            max_watch: Duration::from_secs(60),
        }
    }
}

/// Failures starting the collector.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store could not be opened.
    #[error("opening the store: {0}")]
    Store(#[from] StoreError),
    /// The tokens could not be read or made.
    #[error("tokens: {0}")]
    Tokens(#[from] auth::TokenError),
    /// The address cannot be bound.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

#[derive(Clone)]
struct AppState {
    store: Store,
    writer: Writer,
    tokens: Tokens,
    metrics: Arc<Metrics>,
    config: Arc<CollectorConfig>,
    ready: Arc<AtomicBool>,
}

/// A running collector.
pub struct Collector {
    addr: SocketAddr,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<()>,
    writer: tokio::task::JoinHandle<()>,
    token_path: PathBuf,
}

impl Collector {
    /// Opens the store, binds, and serves until [`Collector::shutdown`].
    pub async fn start(config: CollectorConfig) -> Result<Collector, StartError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|source| StoreError::Io { path: config.data_dir.clone(), source })?;
        let (tokens, token_path) = Tokens::load_or_generate(config.token_file.as_deref(), &config.data_dir)?;
        let store = Store::open(&config.data_dir, config.database_url.as_deref()).await?;
        dataset::import_folders(&store, &config.data_dir.join("datasets")).await;
        let metrics = Arc::new(Metrics::default());
        let (writer, writer_task) = Writer::start(store.clone(), metrics.clone(), config.queue, config.max_batch);
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Listen { addr: config.listen, source })?;
        let addr = listener.local_addr().map_err(|source| StartError::Listen { addr: config.listen, source })?;
        let stop = CancellationToken::new();
        let state = AppState {
            store: store.clone(),
            writer: writer.clone(),
            tokens: tokens.clone(),
            metrics: metrics.clone(),
            config: Arc::new(config.clone()),
            ready: Arc::new(AtomicBool::new(true)),
        };
        tokio::spawn(probe(state.clone(), stop.clone()));
        tokio::spawn(purge(state.clone(), stop.clone()));
        tokio::spawn(tokens.clone().watch(stop.clone()));
        let app = router(state);
        let serve_stop = stop.clone();
        let server = tokio::spawn(async move {
            let shutdown = async move { serve_stop.cancelled().await };
            if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
                tracing::error!(error = %e, "collector server failed");
            }
        });
        tracing::info!(%addr, backend = store.backend(), token_file = %token_path.display(), "collector listening");
        Ok(Collector { addr, stop, server, writer: writer_task, token_path })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The token file in use (generated when none was given).
    pub fn token_path(&self) -> &std::path::Path {
        &self.token_path
    }

    /// Stops accepting requests, lets those in flight finish, and commits what is queued.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _server = self.server.await;
        // The server's state held the last writer handles; the writer drains and ends.
        let _writer = tokio::time::timeout(Duration::from_secs(30), self.writer).await;
    }
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/interactions", post(post_interactions))
        .route("/v1/feedback", post(post_feedback).get(list_feedback))
        .route("/v1/stats", get(get_stats))
        .route("/v1/stats/watch", get(watch_stats))
        .route("/v1/datasets", post(post_dataset))
        .route("/v1/datasets/{id}", get(get_dataset))
        .route("/v1/datasets/{id}/files/{name}", get(get_dataset_file))
        .route("/v1/subjects/{key}", delete(delete_subject))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .fallback(|| async { problem(StatusCode::NOT_FOUND, "NotFound", "no such endpoint", None) })
        .with_state(state)
}

/// An error body: `{"error": {"code", "message", "field"?}}`.
fn problem(status: StatusCode, code: &str, message: &str, field: Option<&str>) -> Response {
    let mut error = json!({"code": code, "message": message});
    if let Some(f) = field {
        error["field"] = json!(f);
    }
    (status, axum::Json(json!({ "error": error }))).into_response()
}

fn field_problem(e: &FieldError) -> Response {
    problem(StatusCode::UNPROCESSABLE_ENTITY, "InvalidField", &e.to_string(), Some(&e.field))
}

fn now_ms() -> i64 {
    Timestamp::now().as_millisecond()
}

fn rfc3339(ms: i64) -> String {
    Timestamp::from_millisecond(ms).map(|t| t.to_string()).unwrap_or_default()
}

fn authorize(state: &AppState, headers: &HeaderMap, scope: Scope) -> Result<(), Response> {
    match state.tokens.check(headers.get(header::AUTHORIZATION), scope) {
        auth::Verdict::Allowed => Ok(()),
        auth::Verdict::Missing => {
            state.metrics.reject("unauthenticated");
            let mut r = problem(StatusCode::UNAUTHORIZED, "Unauthorized", "a bearer token is required", None);
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            Err(r)
        }
        auth::Verdict::Invalid => {
            state.metrics.reject("unauthenticated");
            let mut r = problem(StatusCode::UNAUTHORIZED, "Unauthorized", "the bearer token is not valid", None);
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer error=\"invalid_token\""));
            Err(r)
        }
        auth::Verdict::Forbidden => {
            state.metrics.reject("forbidden");
            Err(problem(StatusCode::FORBIDDEN, "Forbidden", "this token may only read", None))
        }
    }
}

/// Reads a body up to the limit, checking its media type.
async fn read_body(state: &AppState, request: Request) -> Result<(bool, axum::body::Bytes), Response> {
    let media = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
    let ndjson = match media.as_deref() {
        Some("application/json") => false,
        Some("application/x-ndjson" | "application/jsonl") => true,
        _ => {
            state.metrics.reject("unsupported_media_type");
            return Err(problem(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                "send application/json (one event or an array) or application/x-ndjson",
                None,
            ));
        }
    };
    let limit = state.config.max_body_bytes;
    if let Some(len) =
        request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        && len > limit
    {
        state.metrics.reject("too_large");
        return Err(too_large(limit));
    }
    match axum::body::to_bytes(request.into_body(), limit).await {
        Ok(bytes) => Ok((ndjson, bytes)),
        Err(_) => {
            state.metrics.reject("too_large");
            Err(too_large(limit))
        }
    }
}

fn too_large(limit: usize) -> Response {
    problem(StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge", &format!("the body is larger than {limit} bytes"), None)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum EventType {
    Interaction,
    Feedback,
}

fn decode(kind: EventType, value: &Value, now: i64) -> Result<Event, FieldError> {
    match kind {
        EventType::Interaction => event::decode_interaction(value, now).map(Event::Interaction),
        EventType::Feedback => event::decode_feedback(value, now).map(Event::Feedback),
    }
}

fn submit_problem(state: &AppState, e: &SubmitError) -> Response {
    match e {
        SubmitError::Overloaded => {
            state.metrics.reject("overloaded");
            let mut r = problem(StatusCode::TOO_MANY_REQUESTS, "Overloaded", &e.to_string(), None);
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
        SubmitError::Unavailable(_) | SubmitError::Closed => {
            state.metrics.reject("unavailable");
            let mut r = problem(StatusCode::SERVICE_UNAVAILABLE, "StoreUnavailable", &e.to_string(), None);
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
            r
        }
    }
}

fn count_outcome(state: &AppState, event: &Event, outcome: Outcome) {
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

fn conflict_message(id: &str) -> String {
    format!("id {id:?} was stored before with another payload; use a new id for a new event")
}

async fn ingest(state: AppState, kind: EventType, request: Request) -> Response {
    if let Err(r) = authorize(&state, request.headers(), Scope::Write) {
        return r;
    }
    let (ndjson, body) = match read_body(&state, request).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let now = now_ms();
    // One JSON object is a single event; an array or NDJSON is a batch.
    let single = if ndjson {
        None
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Array(_)) => None,
            Ok(value) => Some(value),
            Err(e) => {
                state.metrics.reject("malformed");
                return problem(StatusCode::BAD_REQUEST, "MalformedJSON", &format!("the body is not JSON: {e}"), None);
            }
        }
    };
    if let Some(value) = single {
        let event = match decode(kind, &value, now) {
            Ok(e) => e,
            Err(e) => {
                state.metrics.reject("invalid");
                return field_problem(&e);
            }
        };
        let id = event.id().to_string();
        return match state.writer.submit(vec![event.clone()]).await {
            Ok(outcomes) => {
                let outcome = outcomes.first().copied().unwrap_or(Outcome::Conflict);
                count_outcome(&state, &event, outcome);
                match outcome {
                    Outcome::Created => {
                        (StatusCode::CREATED, axum::Json(json!({"id": id, "outcome": "created"}))).into_response()
                    }
                    Outcome::Duplicate => {
                        (StatusCode::OK, axum::Json(json!({"id": id, "outcome": "duplicate"}))).into_response()
                    }
                    Outcome::Conflict => {
                        problem(StatusCode::UNPROCESSABLE_ENTITY, "IdConflict", &conflict_message(&id), Some("id"))
                    }
                }
            }
            Err(e) => submit_problem(&state, &e),
        };
    }
    let items = match event::split_batch(&body, ndjson) {
        Ok(items) => items,
        Err(message) => {
            state.metrics.reject("malformed");
            return problem(StatusCode::BAD_REQUEST, "MalformedJSON", &message, None);
        }
    };
    if items.is_empty() {
        return problem(StatusCode::UNPROCESSABLE_ENTITY, "EmptyBatch", "the batch holds no event", None);
    }
    if items.len() > MAX_BATCH_ITEMS {
        state.metrics.reject("too_large");
        return problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "BatchTooLarge",
            &format!("the batch holds {} events; at most {MAX_BATCH_ITEMS}", items.len()),
            None,
        );
    }
    let mut results: Vec<Value> = Vec::with_capacity(items.len());
    let mut events = Vec::new();
    let mut positions = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        let decoded =
            item.map_err(|m| FieldError { field: "(line)".into(), message: m }).and_then(|v| decode(kind, &v, now));
        match decoded {
            Ok(e) => {
                positions.push(index);
                results.push(json!({"index": index, "id": e.id()}));
                events.push(e);
            }
            Err(e) => {
                state.metrics.reject("invalid");
                results.push(json!({
                    "index": index,
                    "status": 422,
                    "error": {"code": "InvalidField", "message": e.to_string(), "field": e.field},
                }));
            }
        }
    }
    let outcomes = match state.writer.submit(events.clone()).await {
        Ok(o) => o,
        Err(e) => return submit_problem(&state, &e),
    };
    let (mut created, mut duplicates, mut rejected) = (0, 0, results.len() - events.len());
    for ((index, event), outcome) in positions.into_iter().zip(&events).zip(outcomes) {
        count_outcome(&state, event, outcome);
        let slot = &mut results[index];
        match outcome {
            Outcome::Created => {
                created += 1;
                slot["status"] = json!(201);
                slot["outcome"] = json!("created");
            }
            Outcome::Duplicate => {
                duplicates += 1;
                slot["status"] = json!(200);
                slot["outcome"] = json!("duplicate");
            }
            Outcome::Conflict => {
                rejected += 1;
                slot["status"] = json!(422);
                slot["error"] = json!({"code": "IdConflict", "message": conflict_message(event.id()), "field": "id"});
            }
        }
    }
    let body = json!({"created": created, "duplicates": duplicates, "rejected": rejected, "results": results});
    (StatusCode::MULTI_STATUS, axum::Json(body)).into_response()
}

async fn post_interactions(State(state): State<AppState>, request: Request) -> Response {
    ingest(state, EventType::Interaction, request).await
}

async fn post_feedback(State(state): State<AppState>, request: Request) -> Response {
    ingest(state, EventType::Feedback, request).await
}

fn store_problem(e: &StoreError) -> Response {
    tracing::error!(error = %e, "store query failed");
    let mut r = problem(StatusCode::SERVICE_UNAVAILABLE, "StoreUnavailable", &e.to_string(), None);
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
    r
}

/// Query of `/v1/stats` and `/v1/stats/watch`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StatsQuery {
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

fn parse_time(field: &str, s: &str) -> Result<i64, Response> {
    s.parse::<Timestamp>().map(|t| t.as_millisecond()).map_err(|_| {
        problem(StatusCode::BAD_REQUEST, "InvalidQuery", &format!("{field} must be an RFC 3339 time"), Some(field))
    })
}

async fn compute_stats(state: &AppState, q: &StatsQuery) -> Result<Value, Response> {
    let to = match &q.to {
        Some(s) => parse_time("to", s)?,
        None => now_ms(),
    };
    let from = match &q.from {
        Some(s) => parse_time("from", s)?,
        None => to.saturating_sub((q.window_seconds.unwrap_or(86_400).min(10 * 365 * 86_400) * 1000) as i64),
    };
    let labels = |s: &Option<String>| -> std::collections::BTreeSet<String> {
        s.as_deref().unwrap_or("").split(',').map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect()
    };
    let mapping = stats::Mapping {
        rating_threshold: q.rating_threshold.unwrap_or(0.75).clamp(0.0, 1.0),
        correction_is_negative: q.correction_is_negative.unwrap_or(true),
        error_is_negative: q.error_is_negative.unwrap_or(true),
        positive_labels: labels(&q.positive_labels),
        negative_labels: labels(&q.negative_labels),
    };
    // The cursor is read first: a change that lands during the query moves it past this value.
    let cursor = state.store.cursor(&q.namespace, &q.deployment).await.map_err(|e| store_problem(&e))?;
    let (aggregates, interactions) = state
        .store
        .aggregates(&q.namespace, &q.deployment, from, to, mapping.rating_threshold)
        .await
        .map_err(|e| store_problem(&e))?;
    let versions = stats::summarize(&aggregates, &interactions, &mapping);
    Ok(json!({
        "namespace": q.namespace,
        "deployment": q.deployment,
        "from": rfc3339(from),
        "to": rfc3339(to),
        "cursor": cursor,
        "versions": versions,
    }))
}

/// A read endpoint's credentials and query, or the response that refuses them.
fn read_query<T>(
    state: &AppState,
    headers: &HeaderMap,
    q: Result<Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, Response> {
    authorize(state, headers, Scope::Read)?;
    q.map(|Query(q)| q).map_err(|e| problem(StatusCode::BAD_REQUEST, "InvalidQuery", &e.body_text(), None))
}

async fn get_stats(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<StatsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match read_query(&state, &headers, q) {
        Ok(q) => q,
        Err(r) => return r,
    };
    match compute_stats(&state, &q).await {
        Ok(body) => axum::Json(body).into_response(),
        Err(r) => r,
    }
}

/// Long poll: answers as soon as the deployment's cursor passes `cursor` (checked on every
/// local commit, and every half second for commits of other replicas), or at the timeout with
/// `changed: false`.
async fn watch_stats(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<StatsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match read_query(&state, &headers, q) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let since = q.cursor.unwrap_or(0);
    let timeout = Duration::from_secs(q.timeout_seconds.unwrap_or(30)).min(state.config.max_watch);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut commits = state.writer.commits();
    loop {
        let cursor = match state.store.cursor(&q.namespace, &q.deployment).await {
            Ok(c) => c,
            Err(e) => return store_problem(&e),
        };
        let changed = cursor > since;
        if changed || tokio::time::Instant::now() >= deadline {
            return match compute_stats(&state, &q).await {
                Ok(mut body) => {
                    body["changed"] = json!(changed);
                    axum::Json(body).into_response()
                }
                Err(r) => r,
            };
        }
        tokio::select! {
            _ = commits.changed() => {}
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
            () = tokio::time::sleep_until(deadline) => {}
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ListQuery {
    namespace: String,
    deployment: String,
    after: Option<i64>,
    limit: Option<i64>,
}

async fn list_feedback(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match read_query(&state, &headers, q) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    match state.store.feedback_after(&q.namespace, &q.deployment, q.after.unwrap_or(0), limit).await {
        Ok(rows) => {
            let next = rows.last().map(|r| r.seq);
            let items: Vec<Value> = rows
                .into_iter()
                .map(|r| {
                    let mut v = serde_json::to_value(&r.feedback).unwrap_or(Value::Null);
                    v["seq"] = json!(r.seq);
                    v
                })
                .collect();
            axum::Json(json!({"items": items, "next": next})).into_response()
        }
        Err(e) => store_problem(&e),
    }
}

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
    recipe: dataset::Recipe,
}

async fn post_dataset(State(state): State<AppState>, request: Request) -> Response {
    if let Err(r) = authorize(&state, request.headers(), Scope::Write) {
        return r;
    }
    let (ndjson, body) = match read_body(&state, request).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    if ndjson {
        return problem(StatusCode::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType", "send application/json", None);
    }
    let req: DatasetRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) if e.is_syntax() || e.is_eof() => {
            return problem(StatusCode::BAD_REQUEST, "MalformedJSON", &format!("the body is not JSON: {e}"), None);
        }
        Err(e) => return problem(StatusCode::UNPROCESSABLE_ENTITY, "InvalidField", &e.to_string(), None),
    };
    if let Err((field, message)) = req.recipe.validate() {
        return problem(StatusCode::UNPROCESSABLE_ENTITY, "InvalidField", &format!("{field}: {message}"), Some(&field));
    }
    let to = match &req.to {
        Some(s) => match parse_time("to", s) {
            Ok(t) => t,
            Err(r) => return r,
        },
        None => now_ms(),
    };
    let from = match &req.from {
        Some(s) => match parse_time("from", s) {
            Ok(t) => t,
            Err(r) => return r,
        },
        None => 0,
    };
    let feedback = match state.store.joined_feedback(&req.namespace, &req.deployment, from, to).await {
        Ok(f) => f,
        Err(e) => return store_problem(&e),
    };
    let recipe = req.recipe.clone();
    let built = tokio::task::spawn_blocking(move || {
        let rows = dataset::build(&feedback, &recipe);
        let encoded = dataset::encode(&rows);
        (rows, encoded)
    })
    .await;
    let Ok((rows, encoded)) = built else {
        return problem(StatusCode::INTERNAL_SERVER_ERROR, "Internal", "building the dataset failed", None);
    };
    let counts = dataset::counts(&rows);
    let training = rows.sft.len() + rows.dpo.len();
    if training < req.recipe.min_rows {
        let message =
            format!("the window gives {training} training rows; the recipe needs at least {}", req.recipe.min_rows);
        let body = json!({
            "error": {"code": "NotEnoughRows", "message": message, "field": "recipe.minRows"},
            "counts": counts,
        });
        return (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(body)).into_response();
    }
    let id = dataset::snapshot_id(&req.namespace, &req.deployment, &encoded.sha256);
    // The same rows were snapshotted before: that snapshot, unless its files are missing (one
    // an older collector kept on a data directory it no longer has), which this build restores.
    match existing_snapshot(&state, &id).await {
        Ok(Some(manifest)) => return (StatusCode::OK, axum::Json(manifest)).into_response(),
        Ok(None) => {}
        Err(e) => return store_problem(&e),
    }
    let mut files = serde_json::Map::new();
    for (name, bytes) in &encoded.files {
        let rows_in = bytes.iter().filter(|b| **b == b'\n').count();
        files.insert(
            (*name).to_string(),
            json!({"sha256": hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes)), "rows": rows_in, "bytes": bytes.len()}),
        );
    }
    let manifest = json!({
        "id": id,
        "namespace": req.namespace,
        "deployment": req.deployment,
        "from": rfc3339(from),
        "to": rfc3339(to),
        "createdAt": rfc3339(now_ms()),
        "recipe": req.recipe,
        "formats": req.recipe.formats,
        "counts": counts,
        "sha256": encoded.sha256,
        "files": files,
        "downloadPath": format!("/v1/datasets/{id}/files"),
    });
    let stored = dataset::stored_files(encoded);
    match state.store.put_dataset(&id, &req.namespace, &req.deployment, &manifest, stored).await {
        Ok(true) => {}
        // Another request (on this replica or another) stored the same snapshot first: both
        // answer with the stored description.
        Ok(false) => {
            return match state.store.get_dataset(&id).await {
                Ok(Some(stored)) => (StatusCode::OK, axum::Json(stored)).into_response(),
                Ok(None) => store_problem(&StoreError::Corrupt {
                    id,
                    reason: "the snapshot was stored but cannot be read back".into(),
                }),
                Err(e) => store_problem(&e),
            };
        }
        Err(e) => return store_problem(&e),
    }
    state.metrics.datasets.inc();
    tracing::info!(dataset = %id, namespace = %req.namespace, deployment = %req.deployment, sha256 = %manifest["sha256"], "dataset snapshot built");
    (StatusCode::CREATED, axum::Json(manifest)).into_response()
}

/// A stored snapshot with its files, or `None` when it is not stored or its files are not.
async fn existing_snapshot(state: &AppState, id: &str) -> Result<Option<Value>, StoreError> {
    let Some(manifest) = state.store.get_dataset(id).await? else { return Ok(None) };
    Ok(state.store.dataset_file(id, dataset::SUMS).await?.map(|_| manifest))
}

fn valid_dataset_id(id: &str) -> bool {
    id.len() == 23 && id.starts_with("ds-") && id[3..].bytes().all(|b| b.is_ascii_hexdigit())
}

async fn get_dataset(State(state): State<AppState>, headers: HeaderMap, UrlPath(id): UrlPath<String>) -> Response {
    if let Err(r) = authorize(&state, &headers, Scope::Read) {
        return r;
    }
    if !valid_dataset_id(&id) {
        return problem(StatusCode::NOT_FOUND, "NotFound", &format!("no dataset {id:?}"), None);
    }
    match state.store.get_dataset(&id).await {
        Ok(Some(m)) => axum::Json(m).into_response(),
        Ok(None) => problem(StatusCode::NOT_FOUND, "NotFound", &format!("no dataset {id:?}"), None),
        Err(e) => store_problem(&e),
    }
}

async fn get_dataset_file(
    State(state): State<AppState>,
    headers: HeaderMap,
    UrlPath((id, name)): UrlPath<(String, String)>,
) -> Response {
    if let Err(r) = authorize(&state, &headers, Scope::Read) {
        return r;
    }
    let known = dataset::FILES.contains(&name.as_str()) || name == dataset::SUMS || name == dataset::MANIFEST;
    if !valid_dataset_id(&id) || !known {
        return problem(StatusCode::NOT_FOUND, "NotFound", &format!("no file {name:?} in dataset {id:?}"), None);
    }
    if name == dataset::MANIFEST {
        // The description, as `GET /v1/datasets/{id}` gives it.
        return match state.store.get_dataset(&id).await {
            Ok(Some(m)) => {
                let mut body = serde_json::to_vec_pretty(&m).unwrap_or_default();
                body.push(b'\n');
                ([(header::CONTENT_TYPE, "application/json")], body).into_response()
            }
            Ok(None) => problem(StatusCode::NOT_FOUND, "NotFound", &format!("no dataset {id:?}"), None),
            Err(e) => store_problem(&e),
        };
    }
    let file = match state.store.dataset_file(&id, &name).await {
        Ok(Some(f)) => f,
        Ok(None) => {
            return match state.store.get_dataset(&id).await {
                Ok(Some(_)) => problem(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!(
                        "dataset {id} has no stored files: an older collector kept them on a data directory this \
                         replica does not have; build the snapshot again (POST /v1/datasets with the same window \
                         and recipe) to store them"
                    ),
                    None,
                ),
                Ok(None) => problem(StatusCode::NOT_FOUND, "NotFound", &format!("no dataset {id:?}"), None),
                Err(e) => store_problem(&e),
            };
        }
        Err(e) => return store_problem(&e),
    };
    let kind = if name.ends_with(".jsonl") { "application/x-ndjson" } else { "text/plain; charset=utf-8" };
    let etag = format!("\"{}\"", file.sha256);
    let body = Body::from_stream(file_stream(state.store.clone(), id, name, file.size));
    Response::builder()
        .header(header::CONTENT_TYPE, kind)
        .header(header::CONTENT_LENGTH, file.size)
        .header(header::ETAG, etag)
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
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

async fn delete_subject(State(state): State<AppState>, headers: HeaderMap, UrlPath(key): UrlPath<String>) -> Response {
    if let Err(r) = authorize(&state, &headers, Scope::Write) {
        return r;
    }
    if key.is_empty() || key.len() > event::MAX_KEY {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "InvalidField",
            "the key must be 1 to 256 bytes",
            Some("key"),
        );
    }
    match state.store.delete_subject(&key).await {
        Ok(n) => {
            tracing::info!(deleted = n, "events of a subject deleted on request");
            axum::Json(json!({"deleted": n})).into_response()
        }
        Err(e) => store_problem(&e),
    }
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.ready.load(Ordering::Relaxed) && state.writer.healthy() {
        "ok".into_response()
    } else {
        problem(StatusCode::SERVICE_UNAVAILABLE, "StoreUnavailable", "the store does not answer", None)
    }
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.render())
        .into_response()
}

/// Probes the store every two seconds: readiness, and the store size gauge.
async fn probe(state: AppState, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let ok = tokio::time::timeout(Duration::from_secs(5), state.store.ping()).await;
        let healthy = matches!(ok, Ok(Ok(())));
        if healthy != state.ready.swap(healthy, Ordering::Relaxed) {
            tracing::warn!(healthy, backend = state.store.backend(), "store health changed");
        }
        if healthy {
            state.writer.set_healthy(true);
            if let Ok(bytes) = state.store.size_bytes().await {
                state.metrics.store_bytes.set(bytes);
            }
        }
    }
}

/// Purges events past the retention period.
async fn purge(state: AppState, stop: CancellationToken) {
    let mut tick = tokio::time::interval(state.config.purge_interval);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let before = now_ms() - state.config.retention.as_millis() as i64;
        match state.store.purge(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, before = %rfc3339(before), "purged events past retention"),
            Err(e) => tracing::warn!(error = %e, "purge failed"),
        }
    }
}

/// Parses `90d`, `12h`, `30m`, `45s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("{s:?}: expected a number and a unit (s, m, h, d)"))?;
    let secs = match unit {
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("{s:?}: the unit must be s, m, h or d")),
    };
    Ok(Duration::from_secs(secs))
}
