//! `flywheel agent`: the sidecar of every inference pod.
//!
//! A reverse proxy on the pod's serving port in front of the runtime on localhost. Every answer
//! carries `x-flywheel-model-version` and `x-flywheel-interaction-id`; bodies stream through as
//! they arrive (server-sent events included), never buffered whole. A sample of interactions
//! (the prompt and the answer, bounded and redacted) goes to the collector in batches from a
//! bounded queue, off the request path: when the collector is slow or down the agent drops
//! captures and counts them, and no request waits or fails for it. An admin port serves
//! `/healthz`, `/readyz` (the runtime's readiness) and `/metrics` (in-flight requests, requests
//! and latency by status, captured and dropped interactions), which the autoscaler reads.

pub mod adapters;
mod capture;
pub mod config;
mod metrics;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use http_body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use self::capture::{Captured, Sender};
pub use self::config::{AgentConfig, Capture};
use self::metrics::{AgentMetrics, InFlightGuard};

/// The response header naming the version that answered.
pub const VERSION_HEADER: &str = "x-flywheel-model-version";
/// The response header carrying the interaction id feedback refers to.
pub const INTERACTION_HEADER: &str = "x-flywheel-interaction-id";

/// Failures starting the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// An address cannot be bound.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A setting is unusable.
    #[error("configuration: {0}")]
    Config(String),
}

#[derive(Clone)]
struct Shared {
    config: Arc<AgentConfig>,
    client: Client<HttpConnector, Body>,
    metrics: Arc<AgentMetrics>,
    sender: Option<Sender>,
    version: HeaderValue,
    /// The base model's arm and the adapters, in `Adapter` rollout mode.
    adapters: Option<(Arc<adapters::Arm>, Arc<adapters::Adapters>)>,
}

/// A running agent.
pub struct Agent {
    addr: SocketAddr,
    admin_addr: SocketAddr,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Agent {
    /// Binds both ports and serves until [`Agent::shutdown`].
    pub async fn start(config: AgentConfig) -> Result<Agent, AgentError> {
        if config.upstream.scheme_str() != Some("http") || config.upstream.authority().is_none() {
            return Err(AgentError::Config(format!("--upstream {}: expected http://HOST:PORT", config.upstream)));
        }
        let version = HeaderValue::from_str(&config.model_version).map_err(|_| {
            AgentError::Config(format!("--model-version {:?} is not a header value", config.model_version))
        })?;
        let token = match &config.collector_token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| AgentError::Config(format!("{}: {e}", path.display())))?
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            ),
            None => None,
        };
        let metrics = Arc::new(AgentMetrics::default());
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        let sender = match &config.collector_url {
            Some(url) => {
                let (sender, task) = capture::start_sender(
                    url.trim_end_matches('/').to_string(),
                    token,
                    metrics.clone(),
                    config.queue_capacity,
                    config.batch_size,
                    config.flush_interval,
                    stop.clone(),
                );
                tasks.push(task);
                Some(sender)
            }
            None => None,
        };
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        let adapters = match &config.adapters {
            Some(settings) => {
                let base = Arc::new(adapters::Arm::new(&config.model_version, None).map_err(AgentError::Config)?);
                let managed =
                    adapters::Adapters::new(settings.clone(), &config.model_version).map_err(AgentError::Config)?;
                tasks.push(managed.start(stop.clone()));
                Some((base, managed))
            }
            None => None,
        };
        let shared = Shared { config: Arc::new(config.clone()), client, metrics, sender, version, adapters };

        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| AgentError::Listen { addr: config.listen, source })?;
        let addr = listener.local_addr().map_err(|source| AgentError::Listen { addr: config.listen, source })?;
        let admin = TcpListener::bind(config.admin_listen)
            .await
            .map_err(|source| AgentError::Listen { addr: config.admin_listen, source })?;
        let admin_addr =
            admin.local_addr().map_err(|source| AgentError::Listen { addr: config.admin_listen, source })?;

        let proxy = Router::new().fallback(proxy).with_state(shared.clone());
        let admin_app = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics_text))
            .route("/v1/adapters", get(adapter_report))
            .with_state(shared);
        for (listener, app) in [(listener, proxy), (admin, admin_app)] {
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let shutdown = async move { stop.cancelled().await };
                if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
                    tracing::error!(error = %e, "agent server failed");
                }
            }));
        }
        tracing::info!(%addr, %admin_addr, upstream = %config.upstream, version = %config.model_version, "agent listening");
        Ok(Agent { addr, admin_addr, stop, tasks })
    }

    /// The serving address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin address (`/healthz`, `/readyz`, `/metrics`).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Stops accepting, lets requests in flight finish, and flushes captures.
    pub async fn shutdown(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _done = tokio::time::timeout(Duration::from_secs(30), t).await;
        }
    }
}

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers the Connection header names are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|h| HeaderName::from_bytes(h.trim().as_bytes()).ok())
        .collect();
    for h in named {
        headers.remove(h);
    }
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
}

fn stamp(headers: &mut HeaderMap, version: &HeaderValue, interaction: &HeaderValue) {
    headers.insert(HeaderName::from_static(VERSION_HEADER), version.clone());
    headers.insert(HeaderName::from_static(INTERACTION_HEADER), interaction.clone());
}

fn status_class(code: u16) -> String {
    code.to_string()
}

async fn proxy(State(shared): State<Shared>, request: Request) -> Response {
    let started = Instant::now();
    let guard = InFlightGuard::new(shared.metrics.clone());
    let interaction_id = uuid::Uuid::new_v4().to_string();
    let interaction = HeaderValue::from_str(&interaction_id).unwrap_or_else(|_| HeaderValue::from_static("unknown"));
    let (mut parts, body) = request.into_parts();
    let limit = shared.config.max_request_bytes;
    let body = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => {
            let mut r = (StatusCode::PAYLOAD_TOO_LARGE, format!("request body over {limit} bytes")).into_response();
            stamp(r.headers_mut(), &shared.version, &interaction);
            shared.metrics.finish("413", started.elapsed());
            drop(guard);
            return r;
        }
    };
    // In Adapter mode, the arm of this request (sticky per subject) and its body rewritten.
    let (arm, body) = match &shared.adapters {
        Some((base, managed)) if parts.method == axum::http::Method::POST => {
            let routing = managed.routing();
            if routing.is_plain() {
                (None, body)
            } else {
                let (guard, rewritten) = routing.route(&parts.headers, &body, base);
                if let Some(b) = &rewritten
                    && let Ok(len) = HeaderValue::from_str(&b.len().to_string())
                {
                    parts.headers.insert(header::CONTENT_LENGTH, len);
                }
                (Some(guard), rewritten.unwrap_or(body))
            }
        }
        _ => (None, body),
    };
    let version = arm.as_ref().map_or_else(|| shared.version.clone(), |g| g.arm().header().clone());
    // What to capture, decided before the request leaves (the sample draw, the prompt).
    let pending = match &shared.sender {
        Some(_) if parts.method == axum::http::Method::POST => {
            let v = arm.as_ref().map_or(shared.config.model_version.as_str(), |g| g.arm().version());
            capture::pending(&shared.config, &interaction_id, v, &parts.headers, &body, parts.uri.path())
        }
        _ => None,
    };
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let mut upstream = shared.config.upstream.clone().into_parts();
    upstream.path_and_query = path_and_query.parse().ok();
    parts.uri = match Uri::from_parts(upstream) {
        Ok(u) => u,
        Err(e) => {
            let mut r = (StatusCode::BAD_REQUEST, format!("bad request target: {e}")).into_response();
            stamp(r.headers_mut(), &version, &interaction);
            shared.metrics.finish("400", started.elapsed());
            return r;
        }
    };
    strip_hop_by_hop(&mut parts.headers);
    if let Some(authority) = shared.config.upstream.authority()
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        parts.headers.insert(header::HOST, host);
    }
    let forwarded = Request::from_parts(parts, Body::from(body));
    match shared.client.request(forwarded).await {
        Ok(response) => {
            let (mut parts, incoming) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            stamp(&mut parts.headers, &version, &interaction);
            let status = parts.status.as_u16();
            let streaming = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/event-stream"));
            let tee = TeeBody {
                inner: incoming,
                captured: pending.map(|p| Captured::new(p, streaming, status, shared.config.capture.max_bytes)),
                sender: shared.sender.clone(),
                metrics: shared.metrics.clone(),
                started,
                status,
                guard: Some(guard),
                _arm: arm,
            };
            Response::from_parts(parts, Body::new(tee))
        }
        Err(e) => {
            tracing::warn!(error = %e, upstream = %shared.config.upstream, "upstream request failed");
            let mut r = (
                StatusCode::BAD_GATEWAY,
                axum::Json(serde_json::json!({"error": {"code": "UpstreamUnavailable", "message": format!("the model runtime did not answer: {e}")}})),
            )
                .into_response();
            stamp(r.headers_mut(), &version, &interaction);
            shared.metrics.upstream_errors.inc();
            shared.metrics.finish("502", started.elapsed());
            r
        }
    }
}

/// The runtime's answer on its way to the client: each frame passes on as it arrives, a bounded
/// copy goes to the capture, and the end of the body completes the request's metrics and hands
/// the capture to the sender.
struct TeeBody {
    inner: hyper::body::Incoming,
    captured: Option<Captured>,
    sender: Option<Sender>,
    metrics: Arc<AgentMetrics>,
    started: Instant,
    status: u16,
    guard: Option<InFlightGuard>,
    /// Counts the request on its adapter until the answer ends (an adapter is unloaded only
    /// once drained).
    _arm: Option<adapters::ArmGuard>,
}

impl TeeBody {
    fn complete(&mut self, finished: bool) {
        if let Some(guard) = self.guard.take() {
            self.metrics.finish(&status_class(self.status), self.started.elapsed());
            drop(guard);
        }
        if let (Some(c), Some(sender)) = (self.captured.take(), &self.sender) {
            sender.offer(c.finish(finished, self.started.elapsed()));
        }
    }
}

impl http_body::Body for TeeBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(c), Some(data)) = (this.captured.as_mut(), frame.data_ref()) {
                    c.push(data);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.complete(true);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.complete(false);
                Poll::Ready(Some(Err(e)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TeeBody {
    fn drop(&mut self) {
        // The client went away before the end: count the request, capture what was answered.
        self.complete(false);
    }
}

async fn readyz(State(shared): State<Shared>) -> Response {
    let mut parts = shared.config.upstream.clone().into_parts();
    parts.path_and_query = shared.config.upstream_health_path.parse().ok();
    let Ok(uri) = Uri::from_parts(parts) else {
        return (StatusCode::SERVICE_UNAVAILABLE, "bad health path").into_response();
    };
    let request = match Request::get(uri).body(Body::empty()) {
        Ok(r) => r,
        Err(_) => return (StatusCode::SERVICE_UNAVAILABLE, "bad health request").into_response(),
    };
    match tokio::time::timeout(Duration::from_secs(2), shared.client.request(request)).await {
        Ok(Ok(r)) if r.status().is_success() => "ok".into_response(),
        Ok(Ok(r)) => (StatusCode::SERVICE_UNAVAILABLE, format!("the runtime answers {}", r.status())).into_response(),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("the runtime does not answer: {e}")).into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "the runtime's health check timed out").into_response(),
    }
}

async fn metrics_text(State(shared): State<Shared>) -> Result<Response, Infallible> {
    Ok((
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        shared.metrics.render(),
    )
        .into_response())
}

async fn adapter_report(State(shared): State<Shared>) -> Response {
    match &shared.adapters {
        Some((_, managed)) => axum::Json(managed.report()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({"error": {"code": "AdaptersDisabled", "message": "this agent does not manage adapters (the ModelDeployment's spec.rollout.mode is not Adapter)"}})),
        )
            .into_response(),
    }
}
