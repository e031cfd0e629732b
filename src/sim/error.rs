//! `Status` error bodies, worded as the real API server words them.

use serde_json::{Value, json};

use super::registry::ResourceType;
use crate::api::validation::FieldError;

/// An API error: an HTTP status and a `metav1.Status` body.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// `Status.reason`.
    pub reason: &'static str,
    /// `Status.message`.
    pub message: String,
    /// `Status.details`, when any.
    pub details: Option<Value>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self { code, reason, message: message.into(), details: None }
    }

    fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// The `Status` body.
    pub fn body(&self) -> Value {
        let mut body = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            body["details"] = details.clone();
        }
        body
    }

    /// 404: the object does not exist.
    pub fn not_found(t: &ResourceType, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{} \"{name}\" not found", t.qualified()))
            .with_details(json!({"name": name, "group": t.group, "kind": t.plural}))
    }

    /// 404 for a path that names no resource type.
    pub fn no_route(path: &str) -> Self {
        Self::new(404, "NotFound", format!("the server could not find the requested resource ({path})"))
            .with_details(json!({}))
    }

    /// 409: the name is taken.
    pub fn already_exists(t: &ResourceType, name: &str) -> Self {
        Self::new(409, "AlreadyExists", format!("{} \"{name}\" already exists", t.qualified()))
            .with_details(json!({"name": name, "group": t.group, "kind": t.plural}))
    }

    /// 409: a stale resourceVersion or a failed precondition.
    pub fn conflict(t: &ResourceType, name: &str, why: &str) -> Self {
        Self::new(409, "Conflict", format!("Operation cannot be fulfilled on {} \"{name}\": {why}", t.qualified()))
            .with_details(json!({"name": name, "group": t.group, "kind": t.plural}))
    }

    /// 409: a delete precondition (uid or resourceVersion) does not hold. The real server checks
    /// them in `rest.BeforeDelete`, naming the object by its kind (`ConfigMap`, `Deployment.apps`).
    pub fn precondition_failed(t: &ResourceType, name: &str, why: &str) -> Self {
        Self::new(409, "Conflict", format!("Operation cannot be fulfilled on {} \"{name}\": {why}", t.qualified_kind()))
            .with_details(json!({"name": name, "group": t.group, "kind": t.kind}))
    }

    /// 409: the object changed since it was read.
    pub fn stale(t: &ResourceType, name: &str) -> Self {
        Self::conflict(
            t,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// 409: server-side apply conflicts.
    pub fn apply_conflict(message: String, causes: Vec<Value>) -> Self {
        Self::new(409, "Conflict", message).with_details(json!({"causes": causes}))
    }

    /// 422: the object is invalid.
    pub fn invalid(t: &ResourceType, name: &str, errors: &[FieldError]) -> Self {
        let summary = if errors.len() == 1 {
            errors[0].to_string()
        } else {
            format!("[{}]", errors.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))
        };
        let causes: Vec<Value> = errors
            .iter()
            .map(|e| json!({"reason": e.reason.as_str(), "message": e.message, "field": e.field}))
            .collect();
        Self::new(422, "Invalid", format!("{} \"{name}\" is invalid: {summary}", t.qualified_kind()))
            .with_details(json!({"name": name, "group": t.group, "kind": t.kind, "causes": causes}))
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 401: no or a wrong bearer token.
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message)
    }

    /// 405.
    pub fn method_not_supported(t: &ResourceType, verb: &str) -> Self {
        Self::new(405, "MethodNotAllowed", format!("{verb} is not supported on resources of kind {:?}", t.kind))
    }

    /// 410: the resourceVersion asked for has been compacted.
    pub fn expired(asked: u64, oldest: u64) -> Self {
        Self::new(410, "Expired", format!("too old resource version: {asked} ({oldest})"))
    }

    /// 415.
    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {content_type})"
            ),
        )
    }

    /// 415 for a body type a resource does not take: a custom resource takes only JSON and YAML
    /// (as the real server answers), a built-in kind the simulated server cannot decode from
    /// protobuf says so.
    pub fn unsupported_body(message: impl Into<String>) -> Self {
        Self::new(415, "UnsupportedMediaType", message)
    }

    /// 429: fault injection, or overload.
    pub fn too_many_requests() -> Self {
        Self::new(
            429,
            "TooManyRequests",
            "the server has received too many requests and has asked us to try again later",
        )
        .with_details(json!({"retryAfterSeconds": 1}))
    }

    /// 500.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", format!("Internal error occurred: {}", message.into()))
    }
}
