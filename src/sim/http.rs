//! The HTTP face of the simulated API server: routing of Kubernetes API paths, bearer-token
//! authentication, discovery, Table output, watch streams, and fault injection.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};

use super::core::{
    Core, DeleteOptions, Event, EventType, FieldValidation, Gvr, ListOptions, PatchKind, Propagation, Sub, WriteOptions,
};
use super::error::ApiError;
use super::faults::Faults;
use super::registry::ResourceType;
use super::select::{FieldSelector, LabelSelector, labels_of};
use super::table;

/// Largest request body accepted, as the real server's limit (3 MiB).
const MAX_BODY: usize = 3 * 1024 * 1024;

/// Shared state of the HTTP layer.
#[derive(Clone)]
pub struct AppState {
    /// The store.
    pub core: Arc<Core>,
    /// The bearer token every request must carry.
    pub token: Arc<String>,
    /// Fault injection.
    pub faults: Arc<Faults>,
    /// How often a watch with bookmarks gets one.
    pub bookmark_interval: Duration,
    /// Write requests received, by field manager (or user agent).
    pub requests: Arc<std::sync::Mutex<HashMap<String, u64>>>,
    /// Write requests received, by resource (`pods`, `modeldeployments/status`, `leases`).
    pub writes_by_resource: Arc<std::sync::Mutex<HashMap<String, u64>>>,
    /// Where pods run as processes keep their output (the `log` subresource reads it).
    pub processes: Option<Arc<crate::sim::controllers::process::ProcessMode>>,
}

/// The router of the whole server.
pub fn router(state: AppState) -> Router {
    Router::new().fallback(handle).with_state(state)
}

fn json_response(code: StatusCode, body: &Value) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn error_response(e: &ApiError) -> Response {
    let code = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = json_response(code, &e.body());
    if e.code == 429 {
        resp.headers_mut().insert(header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
    }
    resp
}

async fn handle(State(state): State<AppState>, request: Request) -> Response {
    let path = request.uri().path().to_string();
    if matches!(path.as_str(), "/healthz" | "/readyz" | "/livez") {
        return (StatusCode::OK, "ok").into_response();
    }
    if path == "/version" {
        return json_response(StatusCode::OK, &version());
    }
    let authorized = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| constant_time_eq(t.as_bytes(), state.token.as_bytes()));
    if !authorized {
        return error_response(&ApiError::unauthorized());
    }
    if let Some(delay) = state.faults.latency() {
        tokio::time::sleep(delay).await;
    }
    let method = request.method().clone();
    if method != Method::GET {
        let manager = field_manager(&query_map(&request), request.headers()).unwrap_or_default();
        *state.requests.lock().unwrap_or_else(std::sync::PoisonError::into_inner).entry(manager).or_default() += 1;
        *state
            .writes_by_resource
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(resource_of(&path))
            .or_default() += 1;
        if let Some(e) = state.faults.write_error() {
            return error_response(&e);
        }
    }
    match route(&state, request).await {
        Ok(resp) => resp,
        Err(e) => error_response(&e),
    }
}

/// The resource (and subresource) a request path names: `/api/v1/namespaces/ns/pods/p/status`
/// is `pods/status`, `/apis/coordination.k8s.io/v1/namespaces/ns/leases/l` is `leases`.
fn resource_of(path: &str) -> String {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match segments.first() {
        Some(&"api") => segments.get(2..),
        Some(&"apis") => segments.get(3..),
        _ => None,
    }
    .unwrap_or_default();
    let rest = match rest {
        ["namespaces", _, tail @ ..] if !tail.is_empty() => tail,
        other => other,
    };
    match rest {
        [resource, _, sub, ..] => format!("{resource}/{sub}"),
        [resource, ..] => (*resource).to_string(),
        [] => "unknown".to_string(),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn version() -> Value {
    json!({
        "major": "1",
        "minor": "36",
        "emulationMajor": "1",
        "emulationMinor": "36",
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "35",
        "gitVersion": "v1.36.0-flywheel-sim",
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "go1.26",
        "compiler": "gc",
        "platform": "linux/amd64"
    })
}

/// A parsed API path.
#[derive(Debug)]
struct Target {
    gvr: Gvr,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, resource, more @ ..] => (Some(ns.to_string()), {
            let mut v = vec![*resource];
            v.extend_from_slice(more);
            v
        }),
        other => (None, other.to_vec()),
    };
    let (plural, name, sub) = match rest.as_slice() {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(name.to_string()), None),
        [plural, name, sub] => (*plural, Some(name.to_string()), Some(sub.to_string())),
        _ => return None,
    };
    // `/api/v1/namespaces/NAME/status` (and `/finalize`) parse as namespace NAME, resource "status".
    if group.is_empty() && rest.len() == 1 && (plural == "status" || plural == "finalize") {
        return Some(Target {
            gvr: Gvr::new("", version, "namespaces"),
            name: namespace,
            namespace: None,
            sub: Some(plural.to_string()),
        });
    }
    Some(Target { gvr: Gvr::new(group, version, plural), namespace, name, sub })
}

fn query_map(request: &Request) -> HashMap<String, String> {
    let query = request.uri().query().unwrap_or_default();
    url_decode_pairs(query)
}

fn url_decode_pairs(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn accepts(headers: &HeaderMap, needle: &str) -> bool {
    headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).any(|v| v.contains(needle))
}

async fn read_body(request: Request) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(request.into_body(), MAX_BODY).await.map_err(|_| ApiError {
        code: 413,
        reason: "RequestEntityTooLarge",
        message: "request is too large".into(),
        details: None,
    })
}

fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("the body of the request could not be decoded: {e}")))
}

/// The object of a create or update body: JSON, or protobuf for the built-in kinds.
fn parse_object(headers: &HeaderMap, t: &ResourceType, bytes: &[u8]) -> Result<Value, ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if content_type.split(';').next().unwrap_or_default().trim() != super::protobuf::MEDIA_TYPE {
        return parse_json(bytes);
    }
    if t.custom {
        // Custom resources are served in JSON and YAML only, as by the real server.
        return Err(ApiError::unsupported_body(
            "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml",
        ));
    }
    super::protobuf::decode(bytes).map_err(|e| match e {
        super::protobuf::ProtobufError::UnknownKind { .. } => ApiError::unsupported_body(e.to_string()),
        other => ApiError::bad_request(format!("the body of the request could not be decoded: {other}")),
    })
}

/// The field manager of a write: `?fieldManager=`, else the user agent's product name, as the
/// real server defaults it.
fn field_manager(q: &HashMap<String, String>, headers: &HeaderMap) -> Option<String> {
    q.get("fieldManager").cloned().or_else(|| {
        headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.split('/').next().unwrap_or(ua).to_string())
    })
}

fn write_options(q: &HashMap<String, String>, headers: &HeaderMap) -> WriteOptions {
    WriteOptions {
        field_manager: field_manager(q, headers),
        force: q.get("force").is_some_and(|v| v == "true"),
        dry_run: q.get("dryRun").is_some_and(|v| v == "All"),
        field_validation: match q.get("fieldValidation").map(String::as_str) {
            Some("Strict") => FieldValidation::Strict,
            Some("Ignore") => FieldValidation::Ignore,
            _ => FieldValidation::Warn,
        },
    }
}

async fn route(state: &AppState, request: Request) -> Result<Response, ApiError> {
    let path = request.uri().path().to_string();
    let headers = request.headers().clone();
    let method = request.method().clone();
    let q = query_map(&request);
    match path.trim_end_matches('/') {
        "/api" => return Ok(discovery_core_root(state, &headers)),
        "/apis" => return Ok(discovery_groups(state, &headers)),
        "/openapi/v3" => return Ok(json_response(StatusCode::OK, &openapi_root(state))),
        "/openapi/v2" => return Err(ApiError::no_route(&path)),
        _ => {}
    }
    if let Some(gv) = path.strip_prefix("/openapi/v3/") {
        return openapi_group_version(state, gv);
    }
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    if let ["api", version] = parts.as_slice() {
        return discovery_version(state, "", version);
    }
    if let ["apis", group, version] = parts.as_slice() {
        return discovery_version(state, group, version);
    }
    if let ["apis", group] = parts.as_slice() {
        return discovery_group(state, group);
    }
    let target = parse_path(&path).ok_or_else(|| ApiError::no_route(&path))?;
    let t = state.core.resource_type(&target.gvr).ok_or_else(|| ApiError::no_route(&path))?;
    let ns = target.namespace.as_deref();
    if t.plural == "pods"
        && target.sub.as_deref() == Some("log")
        && let (&Method::GET, Some(name)) = (&method, target.name.as_deref())
    {
        return pod_log(state, ns, name, &q);
    }
    let sub = match target.sub.as_deref() {
        None => None,
        Some("status") if t.status => Some(Sub::Status),
        Some("scale") if t.scale.is_some() => Some(Sub::Scale),
        Some("finalize") if t.plural == "namespaces" => Some(Sub::Status),
        Some(other) => return Err(ApiError::no_route(&format!("{path} ({other})"))),
    };
    let table = accepts(&headers, "as=Table");
    match (method.clone(), target.name.as_deref()) {
        (Method::GET, None) if q.get("watch").is_some_and(|v| v == "true" || v == "1") => watch(state, &t, &target, &q),
        (Method::GET, None) => {
            let opts = list_options(&q, &t)?;
            let list = state.core.list(&target.gvr, ns, &opts)?;
            if table {
                return Ok(json_response(StatusCode::OK, &table::render_list(&t, &list)));
            }
            Ok(json_response(StatusCode::OK, &list))
        }
        (Method::GET, Some(name)) => {
            let obj = state.core.get(&target.gvr, ns, name)?;
            let obj = match sub {
                Some(Sub::Scale) => scale_view(state, &target, name)?,
                _ => obj,
            };
            if table && sub.is_none() {
                let list =
                    json!({"metadata": {"resourceVersion": obj.pointer("/metadata/resourceVersion")}, "items": [obj]});
                return Ok(json_response(StatusCode::OK, &table::render_list(&t, &list)));
            }
            Ok(json_response(StatusCode::OK, &obj))
        }
        (Method::POST, None) => {
            let opts = write_options(&q, &headers);
            let body = parse_object(&headers, &t, &read_body(request).await?)?;
            let created = state.core.create(&target.gvr, ns, body, &opts)?;
            Ok(json_response(StatusCode::CREATED, &created))
        }
        (Method::PUT, Some(name)) => {
            let opts = write_options(&q, &headers);
            let body = parse_object(&headers, &t, &read_body(request).await?)?;
            let updated = state.core.update(&target.gvr, ns, name, body, sub, &opts)?;
            let updated = if sub == Some(Sub::Scale) { scale_view(state, &target, name)? } else { updated };
            Ok(json_response(StatusCode::OK, &updated))
        }
        (Method::PATCH, Some(name)) => {
            let opts = write_options(&q, &headers);
            let content_type =
                headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
            let kind = match content_type.split(';').next().unwrap_or_default().trim() {
                "application/json-patch+json" => PatchKind::Json,
                "application/merge-patch+json" => PatchKind::Merge,
                "application/strategic-merge-patch+json" => PatchKind::Strategic,
                "application/apply-patch+yaml" | "application/apply-patch+json" => PatchKind::Apply,
                other => return Err(ApiError::unsupported_media_type(other)),
            };
            let bytes = read_body(request).await?;
            let body: Value = if kind == PatchKind::Apply {
                let text = std::str::from_utf8(&bytes).map_err(|e| ApiError::bad_request(e.to_string()))?;
                serde_yaml::from_str(text).map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?
            } else {
                parse_json(&bytes)?
            };
            let (obj, created) = state.core.patch(&target.gvr, ns, name, kind, &body, sub, &opts)?;
            let obj = if sub == Some(Sub::Scale) { scale_view(state, &target, name)? } else { obj };
            Ok(json_response(if created { StatusCode::CREATED } else { StatusCode::OK }, &obj))
        }
        (Method::DELETE, Some(name)) => {
            let bytes = read_body(request).await?;
            let opts = delete_options(&q, &bytes)?;
            let obj = state.core.delete(&target.gvr, ns, name, &opts)?;
            Ok(json_response(StatusCode::OK, &obj))
        }
        (Method::DELETE, None) => {
            let bytes = read_body(request).await?;
            let opts = delete_options(&q, &bytes)?;
            let list = state.core.list(&target.gvr, ns, &list_options(&q, &t)?)?;
            let mut deleted = Vec::new();
            for item in list.get("items").and_then(Value::as_array).cloned().unwrap_or_default() {
                let name = item.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
                let item_ns = item.pointer("/metadata/namespace").and_then(Value::as_str).map(str::to_string);
                if let Ok(d) = state.core.delete(&target.gvr, item_ns.as_deref(), &name, &opts) {
                    deleted.push(d);
                }
            }
            Ok(json_response(
                StatusCode::OK,
                &json!({"apiVersion": t.api_version(), "kind": format!("{}List", t.kind), "metadata": {}, "items": deleted}),
            ))
        }
        (m, _) => Err(ApiError::method_not_supported(&t, m.as_str())),
    }
}

/// `GET .../pods/NAME/log`: a container's output as text (`container` names it when the pod has
/// several; `tailLines` keeps the last lines). A pod the kubelet scripts has written nothing.
fn pod_log(state: &AppState, ns: Option<&str>, name: &str, q: &HashMap<String, String>) -> Result<Response, ApiError> {
    let pod = state.core.get(&Gvr::new("", "v1", "pods"), ns, name)?;
    let containers: Vec<String> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(|cs| cs.iter().filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_string)).collect())
        .unwrap_or_default();
    let init: Vec<String> = pod
        .pointer("/spec/initContainers")
        .and_then(Value::as_array)
        .map(|cs| cs.iter().filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_string)).collect())
        .unwrap_or_default();
    let container = match q.get("container") {
        Some(c) if containers.contains(c) || init.contains(c) => c.clone(),
        Some(c) => return Err(ApiError::bad_request(format!("container {c} is not valid for pod {name}"))),
        None if containers.len() == 1 => containers[0].clone(),
        None => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            )));
        }
    };
    let text = state
        .processes
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p.log_file(ns.unwrap_or_default(), name, &container)).ok())
        .unwrap_or_default();
    let text = match q.get("tailLines").and_then(|n| n.parse::<usize>().ok()) {
        Some(n) => {
            let lines: Vec<&str> = text.lines().collect();
            let mut tail = lines[lines.len().saturating_sub(n)..].join("\n");
            if !tail.is_empty() {
                tail.push('\n');
            }
            tail
        }
        None => text,
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from(text))
        .map_err(|e| ApiError::internal(e.to_string()))
}

fn scale_view(state: &AppState, target: &Target, name: &str) -> Result<Value, ApiError> {
    state.core.scale(&target.gvr, target.namespace.as_deref(), name)
}

fn list_options(q: &HashMap<String, String>, t: &ResourceType) -> Result<ListOptions, ApiError> {
    Ok(ListOptions {
        label_selector: q
            .get("labelSelector")
            .filter(|s| !s.is_empty())
            .map(|s| LabelSelector::parse(s))
            .transpose()?,
        field_selector: q
            .get("fieldSelector")
            .filter(|s| !s.is_empty())
            .map(|s| FieldSelector::parse(s, &t.kind))
            .transpose()?,
        limit: q.get("limit").and_then(|l| l.parse().ok()),
        continue_token: q.get("continue").filter(|s| !s.is_empty()).cloned(),
    })
}

fn delete_options(q: &HashMap<String, String>, body: &[u8]) -> Result<DeleteOptions, ApiError> {
    let body: Value = if body.is_empty() { json!({}) } else { parse_json(body)? };
    let propagation = q
        .get("propagationPolicy")
        .map(String::as_str)
        .or_else(|| body.get("propagationPolicy").and_then(Value::as_str))
        .map(|p| match p {
            "Foreground" => Ok(Propagation::Foreground),
            "Orphan" => Ok(Propagation::Orphan),
            "Background" => Ok(Propagation::Background),
            other => Err(ApiError::bad_request(format!("propagationPolicy: Unsupported value: \"{other}\""))),
        })
        .transpose()?;
    let propagation = propagation.or_else(|| {
        (body.get("orphanDependents").and_then(Value::as_bool) == Some(true)).then_some(Propagation::Orphan)
    });
    Ok(DeleteOptions {
        propagation,
        uid: body.pointer("/preconditions/uid").and_then(Value::as_str).map(str::to_string),
        resource_version: body.pointer("/preconditions/resourceVersion").and_then(Value::as_str).map(str::to_string),
        dry_run: q.get("dryRun").is_some_and(|v| v == "All")
            || body.get("dryRun").and_then(Value::as_array).is_some_and(|a| a.iter().any(|v| v == "All")),
    })
}

fn watch_line(type_: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": type_, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn watch(
    state: &AppState,
    t: &ResourceType,
    target: &Target,
    q: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let labels = q.get("labelSelector").filter(|s| !s.is_empty()).map(|s| LabelSelector::parse(s)).transpose()?;
    let fields =
        q.get("fieldSelector").filter(|s| !s.is_empty()).map(|s| FieldSelector::parse(s, &t.kind)).transpose()?;
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let send_initial = q.get("sendInitialEvents").is_some_and(|v| v == "true");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let timeout = match state.faults.watch_drop_after() {
        Some(drop) => timeout.min(drop),
        None => timeout,
    };
    let rv = q.get("resourceVersion").filter(|s| !s.is_empty()).cloned();
    let matches = {
        let t = t.clone();
        let ns = target.namespace.clone();
        move |obj: &Value| {
            ns.as_deref()
                .is_none_or(|n| !t.namespaced || obj.pointer("/metadata/namespace").and_then(Value::as_str) == Some(n))
                && labels.as_ref().is_none_or(|s| s.matches(&labels_of(obj)))
                && fields.as_ref().is_none_or(|s| s.matches(obj))
        }
    };
    let mut initial: Vec<Bytes> = Vec::new();
    let (backlog, receiver) = match rv.as_deref() {
        Some(v) if v != "0" && !send_initial => {
            let since: u64 = v.parse().map_err(|_| ApiError::bad_request(format!("invalid resource version: {v}")))?;
            match state.core.watch_from(since) {
                Ok(r) => r,
                Err(e) => {
                    // A too-old resourceVersion is a 200 stream carrying one ERROR event.
                    let line = watch_line("ERROR", &e.body());
                    let body = Body::from_stream(futures::stream::once(async move { Ok::<_, std::io::Error>(line) }));
                    return Ok(stream_response(body));
                }
            }
        }
        _ => {
            let (objects, current, receiver) = state.core.watch_snapshot(&target.gvr, target.namespace.as_deref())?;
            for obj in objects.iter().filter(|o| matches(o)) {
                initial.push(watch_line("ADDED", obj));
            }
            if send_initial {
                let bookmark = json!({"apiVersion": t.api_version(), "kind": t.kind, "metadata": {"resourceVersion": current.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}});
                initial.push(watch_line("BOOKMARK", &bookmark));
            }
            (Vec::new(), receiver)
        }
    };
    let group = t.group.clone();
    let plural = t.plural.clone();
    let api_version = t.api_version();
    let kind = t.kind.clone();
    let relevant = {
        let group = group.clone();
        let plural = plural.clone();
        let api_version = api_version.clone();
        move |e: &Event| -> Option<Bytes> {
            if e.group != group || e.plural != plural {
                return None;
            }
            let now = matches(&e.object);
            let before = e.previous.as_deref().is_some_and(&matches);
            // As the real server: an object that starts matching a selector is ADDED, one that
            // stops matching is DELETED.
            let type_ = match (e.type_, before, now) {
                (EventType::Modified, false, true) => "ADDED",
                (EventType::Modified, true, false) => "DELETED",
                (_, _, true) => e.type_.as_str(),
                _ => return None,
            };
            let mut obj = (*e.object).clone();
            obj["apiVersion"] = json!(api_version);
            Some(watch_line(type_, &obj))
        }
    };
    let backlog_lines: Vec<Bytes> = backlog.iter().filter_map(|e| relevant(e)).collect();
    let core = state.core.clone();
    let interval = state.bookmark_interval;
    let live = futures::stream::unfold((receiver, tokio::time::interval(interval)), move |(mut rx, mut tick)| {
        let relevant = relevant.clone();
        let core = core.clone();
        let api_version = api_version.clone();
        let kind = kind.clone();
        async move {
            loop {
                tokio::select! {
                    received = rx.recv() => match received {
                        Ok(e) => if let Some(line) = relevant(&e) { return Some((line, (rx, tick))) },
                        // A watcher that fell behind is closed; the client re-watches from its last resourceVersion.
                        Err(_) => return None,
                    },
                    _ = tick.tick(), if bookmarks => {
                        let obj = json!({"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": core.resource_version().to_string()}});
                        return Some((watch_line("BOOKMARK", &obj), (rx, tick)));
                    }
                }
            }
        }
    });
    let stream = futures::stream::iter(initial.into_iter().chain(backlog_lines))
        .chain(live)
        .take_until(tokio::time::sleep(timeout))
        .map(Ok::<_, std::io::Error>);
    Ok(stream_response(Body::from_stream(stream)))
}

fn stream_response(body: Body) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// `/openapi/v3`: one entry per group-version, as kubectl reads it before `apply`.
fn openapi_root(state: &AppState) -> Value {
    let registry = state.core.registry().established_only();
    let mut paths = serde_json::Map::new();
    for (group, versions) in registry.groups() {
        for version in versions {
            let key = if group.is_empty() { format!("api/{version}") } else { format!("apis/{group}/{version}") };
            let hash = openapi_hash(&openapi_document(state, &group, &version));
            paths.insert(key.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={hash}")}));
        }
    }
    json!({"paths": paths})
}

fn openapi_hash(doc: &Value) -> String {
    super::core::fnv1a_hex(&doc.to_string()).to_uppercase()
}

fn openapi_group_version(state: &AppState, gv: &str) -> Result<Response, ApiError> {
    let parts: Vec<&str> = gv.split('/').collect();
    let (group, version) = match parts.as_slice() {
        ["api", v] => ("", *v),
        ["apis", g, v] => (*g, *v),
        _ => return Err(ApiError::no_route(gv)),
    };
    let doc = openapi_document(state, group, version);
    if doc["paths"].as_object().is_none_or(serde_json::Map::is_empty) {
        return Err(ApiError::no_route(gv));
    }
    Ok(json_response(StatusCode::OK, &doc))
}

/// An OpenAPI v3 document for one group-version: the write operations of every resource with
/// their `fieldValidation` parameter (kubectl checks for it to use server-side validation), and
/// the schemas of custom resources (for `kubectl explain`).
fn openapi_document(state: &AppState, group: &str, version: &str) -> Value {
    let registry = state.core.registry().established_only();
    let mut paths = serde_json::Map::new();
    let mut schemas = serde_json::Map::new();
    let params = json!([
        {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}}
    ]);
    for t in registry.all().filter(|t| t.group == group && t.version == version) {
        let gvk = json!({"group": t.group, "version": t.version, "kind": t.kind});
        let prefix = if group.is_empty() { format!("/api/{version}") } else { format!("/apis/{group}/{version}") };
        let collection = if t.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}", t.plural)
        } else {
            format!("{prefix}/{}", t.plural)
        };
        let op = |verb: &str| json!({"operationId": format!("{verb}{}", t.kind), "x-kubernetes-action": verb, "x-kubernetes-group-version-kind": gvk, "parameters": params, "responses": {"200": {"description": "OK"}}});
        paths.insert(collection.clone(), json!({"post": op("post"), "get": op("list")}));
        paths.insert(
            format!("{collection}/{{name}}"),
            json!({"get": op("get"), "put": op("put"), "patch": op("patch"), "delete": op("delete")}),
        );
        let schema_name =
            format!("{}.{}.{}", t.group.split('.').rev().collect::<Vec<_>>().join("."), t.version, t.kind);
        let mut schema =
            t.schema.clone().unwrap_or_else(|| json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}));
        schema["x-kubernetes-group-version-kind"] = json!([gvk]);
        schemas.insert(schema_name, schema);
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.36.0-flywheel-sim"},
        "paths": paths,
        "components": {"schemas": schemas}
    })
}

fn discovery_core_root(state: &AppState, headers: &HeaderMap) -> Response {
    if accepts(headers, "as=APIGroupDiscoveryList") {
        let registry = state.core.registry().established_only();
        let resources: Vec<Value> =
            registry.all().filter(|t| t.group.is_empty()).map(ResourceType::aggregated_entry).collect();
        let body = json!({
            "kind": "APIGroupDiscoveryList",
            "apiVersion": "apidiscovery.k8s.io/v2",
            "metadata": {},
            "items": [{"metadata": {}, "versions": [{"version": "v1", "resources": resources, "freshness": "Current"}]}]
        });
        return aggregated_response(&body);
    }
    json_response(
        StatusCode::OK,
        &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}]}),
    )
}

fn aggregated_response(body: &Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList")],
        body.to_string(),
    )
        .into_response()
}

fn discovery_groups(state: &AppState, headers: &HeaderMap) -> Response {
    let registry = state.core.registry().established_only();
    let groups: Vec<(String, Vec<String>)> = registry.groups().into_iter().filter(|(g, _)| !g.is_empty()).collect();
    if accepts(headers, "as=APIGroupDiscoveryList") {
        let items: Vec<Value> = groups
            .iter()
            .map(|(group, versions)| {
                let versions: Vec<Value> = versions
                    .iter()
                    .map(|v| {
                        let resources: Vec<Value> = registry
                            .all()
                            .filter(|t| &t.group == group && &t.version == v)
                            .map(ResourceType::aggregated_entry)
                            .collect();
                        json!({"version": v, "resources": resources, "freshness": "Current"})
                    })
                    .collect();
                json!({"metadata": {"name": group}, "versions": versions})
            })
            .collect();
        return aggregated_response(
            &json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items}),
        );
    }
    let groups: Vec<Value> = groups.iter().map(|(g, vs)| group_entry(g, vs)).collect();
    json_response(StatusCode::OK, &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
}

fn group_entry(group: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> =
        versions.iter().map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v})).collect();
    let preferred = vs.first().cloned().unwrap_or(Value::Null);
    json!({"name": group, "versions": vs, "preferredVersion": preferred})
}

fn discovery_group(state: &AppState, group: &str) -> Result<Response, ApiError> {
    let registry = state.core.registry().established_only();
    let (_, versions) =
        registry.groups().into_iter().find(|(g, _)| g == group).ok_or_else(|| ApiError::no_route(group))?;
    let mut body = group_entry(group, &versions);
    body["kind"] = json!("APIGroup");
    body["apiVersion"] = json!("v1");
    Ok(json_response(StatusCode::OK, &body))
}

fn discovery_version(state: &AppState, group: &str, version: &str) -> Result<Response, ApiError> {
    let registry = state.core.registry().established_only();
    let resources: Vec<Value> = registry
        .all()
        .filter(|t| t.group == group && t.version == version)
        .flat_map(ResourceType::discovery_entries)
        .collect();
    if resources.is_empty() {
        return Err(ApiError::no_route(&format!("{group}/{version}")));
    }
    let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let t = parse_path("/apis/flywheel.dev/v1alpha1/namespaces/ns/modeldeployments/a/status")
            .unwrap_or_else(|| panic!());
        assert_eq!(
            (t.gvr.plural.as_str(), t.namespace.as_deref(), t.name.as_deref(), t.sub.as_deref()),
            ("modeldeployments", Some("ns"), Some("a"), Some("status"))
        );
        let t = parse_path("/api/v1/namespaces/ns").unwrap_or_else(|| panic!());
        assert_eq!(
            (t.gvr.plural.as_str(), t.namespace.as_deref(), t.name.as_deref()),
            ("namespaces", None, Some("ns"))
        );
        let t = parse_path("/api/v1/namespaces").unwrap_or_else(|| panic!());
        assert_eq!((t.gvr.plural.as_str(), t.namespace.as_deref(), t.name.as_deref()), ("namespaces", None, None));
        let t = parse_path("/api/v1/namespaces/ns/pods").unwrap_or_else(|| panic!());
        assert_eq!((t.gvr.plural.as_str(), t.namespace.as_deref(), t.name.as_deref()), ("pods", Some("ns"), None));
        let t = parse_path("/api/v1/pods").unwrap_or_else(|| panic!());
        assert_eq!((t.gvr.plural.as_str(), t.namespace.as_deref()), ("pods", None));
        let t = parse_path("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/x.y").unwrap_or_else(|| panic!());
        assert_eq!((t.gvr.plural.as_str(), t.name.as_deref()), ("customresourcedefinitions", Some("x.y")));
        let t = parse_path("/api/v1/namespaces/ns/finalize").unwrap_or_else(|| panic!());
        assert_eq!(
            (t.gvr.plural.as_str(), t.name.as_deref(), t.sub.as_deref()),
            ("namespaces", Some("ns"), Some("finalize"))
        );
    }

    #[test]
    fn percent() {
        assert_eq!(percent_decode("metadata.name%3Dw1"), "metadata.name=w1");
        assert_eq!(percent_decode("a+b%2C"), "a b,");
        assert_eq!(percent_decode("100%"), "100%");
    }
}
