//! What handlers take from a request, as axum extractors that refuse with an [`ApiError`]: the
//! bearer token's scope ([`ReadAccess`], [`WriteAccess`]), the query ([`Params`]) and the body
//! ([`Payload`]), and times given as RFC 3339.

use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use serde::de::DeserializeOwned;

use super::auth::{Scope, Verdict};
use super::clock::parse_rfc3339;
use super::error::ApiError;
use super::state::AppState;

/// The request's token may read.
pub(super) struct ReadAccess;

/// The request's token may write.
pub(super) struct WriteAccess;

impl FromRequestParts<AppState> for ReadAccess {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        authorize(state, &parts.headers, Scope::Read).map(|()| ReadAccess)
    }
}

impl FromRequestParts<AppState> for WriteAccess {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        authorize(state, &parts.headers, Scope::Write).map(|()| WriteAccess)
    }
}

/// 401 without a valid bearer token, 403 for a read token on a write endpoint; each counted.
fn authorize(state: &AppState, headers: &HeaderMap, scope: Scope) -> Result<(), ApiError> {
    let unauthorized = |message: &str, challenge: &'static str| {
        state.metrics.reject("unauthenticated");
        ApiError::new(axum::http::StatusCode::UNAUTHORIZED, "Unauthorized", message)
            .header(header::WWW_AUTHENTICATE, challenge)
    };
    match state.tokens.check(headers.get(header::AUTHORIZATION), scope) {
        Verdict::Allowed => Ok(()),
        Verdict::Missing => Err(unauthorized("a bearer token is required", "Bearer")),
        Verdict::Invalid => Err(unauthorized("the bearer token is not valid", "Bearer error=\"invalid_token\"")),
        Verdict::Forbidden => {
            state.metrics.reject("forbidden");
            Err(ApiError::new(axum::http::StatusCode::FORBIDDEN, "Forbidden", "this token may only read"))
        }
    }
}

/// The query string as `T`; 400 `InvalidQuery` when it does not decode.
pub(super) struct Params<T>(pub T);

impl<T: DeserializeOwned, S: Sync> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        Query::try_from_uri(&parts.uri).map(|Query(q)| Params(q)).map_err(|e| ApiError::invalid_query(e.body_text()))
    }
}

/// A request body read whole, up to the configured limit, of a JSON media type.
pub(super) struct Payload {
    /// `application/x-ndjson` (or `application/jsonl`): one JSON value per line.
    pub ndjson: bool,
    /// The bytes.
    pub bytes: axum::body::Bytes,
}

impl FromRequest<AppState> for Payload {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let ndjson = ndjson(request.headers()).ok_or_else(|| {
            state.metrics.reject("unsupported_media_type");
            ApiError::unsupported_media_type("send application/json (one event or an array) or application/x-ndjson")
        })?;
        let limit = state.config.max_body_bytes;
        let too_large = || {
            state.metrics.reject("too_large");
            ApiError::too_large(limit)
        };
        if content_length(request.headers()).is_some_and(|len| len > limit) {
            return Err(too_large());
        }
        let bytes = axum::body::to_bytes(request.into_body(), limit).await.map_err(|_| too_large())?;
        Ok(Payload { ndjson, bytes })
    }
}

/// Whether the media type is NDJSON (`Some(true)`) or JSON (`Some(false)`); `None` otherwise.
fn ndjson(headers: &HeaderMap) -> Option<bool> {
    let media = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    match media.split(';').next().unwrap_or("").trim().to_ascii_lowercase().as_str() {
        "application/json" => Some(false),
        "application/x-ndjson" | "application/jsonl" => Some(true),
        _ => None,
    }
}

fn content_length(headers: &HeaderMap) -> Option<usize> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// An RFC 3339 time given as `field`, in Unix milliseconds; 400 `InvalidQuery` naming the field.
pub(super) fn parse_time(field: &str, s: &str) -> Result<i64, ApiError> {
    parse_rfc3339(s).ok_or_else(|| ApiError::invalid_query(format!("{field} must be an RFC 3339 time")).field(field))
}
