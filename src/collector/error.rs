//! The error answer of every endpoint: a status, the body `{"error": {"code", "message",
//! "field"?}}` that `docs/collector-openapi.yaml` documents, and the header some of them carry
//! (`WWW-Authenticate`, `Retry-After`). [`ErrorBody`] is also what the client reads back.

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::event::FieldError;
use super::store::StoreError;
use crate::api::common::DatasetCounts;

/// The body of an error answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
    /// `NotEnoughRows` only: the rows the window gives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<DatasetCounts>,
}

/// What went wrong: a stable code, a message for people, and the field at fault.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// `InvalidField`, `NotFound`, `StoreUnavailable`, ...
    #[serde(default)]
    pub code: String,
    /// What is wrong, in words.
    #[serde(default)]
    pub message: String,
    /// The field at fault (a JSON path, a query parameter or `id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ErrorDetail {
    /// A detail without a field.
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self { code: code.to_string(), message: message.into(), field: None }
    }

    /// The detail of a field that does not decode.
    pub fn invalid_field(e: &FieldError) -> Self {
        Self { field: Some(e.field.clone()), ..Self::new("InvalidField", e.to_string()) }
    }

    /// The detail of an id stored before with another payload.
    pub fn id_conflict(id: &str) -> Self {
        let message = format!("id {id:?} was stored before with another payload; use a new id for a new event");
        Self { field: Some("id".into()), ..Self::new("IdConflict", message) }
    }
}

/// A refused request, as a handler returns it. Boxed, so that a handler's `Result` stays small
/// on the path every accepted request takes.
#[derive(Debug)]
pub struct ApiError(Box<Refusal>);

#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    body: ErrorBody,
    header: Option<(HeaderName, HeaderValue)>,
}

impl ApiError {
    /// An answer with `status` and the body `{"error": {"code", "message"}}`.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self(Box::new(Refusal {
            status,
            body: ErrorBody { error: ErrorDetail::new(code, message), counts: None },
            header: None,
        }))
    }

    /// The same answer, naming the field at fault.
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.0.body.error.field = Some(field.into());
        self
    }

    /// The same answer with a header.
    pub fn header(mut self, name: HeaderName, value: &'static str) -> Self {
        self.0.header = Some((name, HeaderValue::from_static(value)));
        self
    }

    /// 404 `NotFound`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NotFound", message)
    }

    /// 400 `MalformedJSON`.
    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "MalformedJSON", message)
    }

    /// 400 `InvalidQuery`.
    pub fn invalid_query(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "InvalidQuery", message)
    }

    /// 422 `InvalidField` (naming the field when it is known).
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "InvalidField", message)
    }

    /// 422 `InvalidField` of a field that does not decode.
    pub fn invalid_field(e: &FieldError) -> Self {
        Self::detail(StatusCode::UNPROCESSABLE_ENTITY, ErrorDetail::invalid_field(e))
    }

    /// 422 `IdConflict`: the id was stored before with another payload.
    pub fn id_conflict(id: &str) -> Self {
        Self::detail(StatusCode::UNPROCESSABLE_ENTITY, ErrorDetail::id_conflict(id))
    }

    /// 415 `UnsupportedMediaType`.
    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType", message)
    }

    /// 413 `PayloadTooLarge`: a body over the limit.
    pub fn too_large(limit: usize) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge", format!("the body is larger than {limit} bytes"))
    }

    /// 422 `NotEnoughRows`, with the rows the window gives.
    pub fn not_enough_rows(message: impl Into<String>, counts: DatasetCounts) -> Self {
        let mut e = Self::new(StatusCode::UNPROCESSABLE_ENTITY, "NotEnoughRows", message).field("recipe.minRows");
        e.0.body.counts = Some(counts);
        e
    }

    /// 503 `StoreUnavailable` without a retry hint (readiness).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "StoreUnavailable", message)
    }

    /// 503 `StoreUnavailable` with `Retry-After: 2`: a query failed (logged here).
    pub fn store(e: &StoreError) -> Self {
        tracing::error!(error = %e, "store query failed");
        Self::unavailable(e.to_string()).header(header::RETRY_AFTER, "2")
    }

    /// 500 `Internal`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal", message)
    }

    fn detail(status: StatusCode, error: ErrorDetail) -> Self {
        Self(Box::new(Refusal { status, body: ErrorBody { error, counts: None }, header: None }))
    }

    /// The status it answers.
    pub fn status(&self) -> StatusCode {
        self.0.status
    }

    /// The body it answers.
    pub fn body(&self) -> &ErrorBody {
        &self.0.body
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::store(&e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let Refusal { status, body, header } = *self.0;
        let mut response = (status, axum::Json(body)).into_response();
        if let Some((name, value)) = header {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn body(e: &ApiError) -> Value {
        serde_json::to_value(e.body()).unwrap_or(Value::Null)
    }

    #[test]
    fn bodies_are_the_documented_shape() {
        let e = ApiError::not_found("no dataset \"x\"");
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        assert_eq!(body(&e), json!({"error": {"code": "NotFound", "message": "no dataset \"x\""}}));
        let e = ApiError::invalid_field(&FieldError { field: "prompt[2].role".into(), message: "unknown".into() });
        assert_eq!(
            body(&e),
            json!({"error": {"code": "InvalidField", "message": "prompt[2].role: unknown", "field": "prompt[2].role"}})
        );
        let e = ApiError::not_enough_rows("too few", DatasetCounts { sft: 1, dpo: 2, held_out: 0 });
        assert_eq!(
            body(&e),
            json!({"error": {"code": "NotEnoughRows", "message": "too few", "field": "recipe.minRows"},
                   "counts": {"sft": 1, "dpo": 2, "heldOut": 0}})
        );
    }

    #[test]
    fn headers_ride_along_and_the_error_stays_small() {
        let r = ApiError::store(&StoreError::Task("gone".into())).into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()), Some("2"));
        assert_eq!(std::mem::size_of::<ApiError>(), std::mem::size_of::<usize>());
    }
}
