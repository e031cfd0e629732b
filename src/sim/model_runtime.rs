//! A simulated model runtime for tests, benchmarks and the demo: the parts of vLLM's OpenAI
//! server Flywheel talks to. Chat completions answer as the model the request names (the base
//! or a loaded adapter) and 404 an unknown one, as vLLM does; `/health`; `/v1/models` lists the
//! base and each adapter with the base as its `parent`; `/v1/load_lora_adapter` and
//! `/v1/unload_lora_adapter` take vLLM's bodies and answer with its status codes. A load can be
//! made to fail (an HTTP status, or a hang) to show what a refusing runtime does.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// How loads behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoadBehaviour {
    /// Loads succeed when the directory holds `adapter_config.json`.
    #[default]
    Load,
    /// Every load is refused with this status.
    Refuse(u16),
    /// Every load hangs (a runtime that never answers).
    Hang,
}

#[derive(Default)]
struct Inner {
    /// Adapter name → the path it was loaded from.
    adapters: BTreeMap<String, String>,
    behaviour: LoadBehaviour,
    /// Completions answered, by the model that answered.
    answered: BTreeMap<String, u64>,
}

/// A running simulated runtime.
pub struct SimRuntime {
    addr: SocketAddr,
    base: String,
    inner: Arc<Mutex<Inner>>,
    stop: CancellationToken,
}

#[derive(Clone)]
struct Shared {
    base: String,
    inner: Arc<Mutex<Inner>>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn error(status: StatusCode, kind: &str, message: String) -> Response {
    (status, axum::Json(json!({"object": "error", "message": message, "type": kind, "code": status.as_u16()})))
        .into_response()
}

impl SimRuntime {
    /// Serves the base model `base` on `127.0.0.1`, on a free port.
    pub async fn start(base: &str) -> std::io::Result<Self> {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let shared = Shared { base: base.to_string(), inner: inner.clone() };
        let app = Router::new()
            .route("/health", get(|| async { "ok" }))
            .route("/v1/models", get(models))
            .route("/v1/load_lora_adapter", post(load))
            .route("/v1/unload_lora_adapter", post(unload))
            .route("/v1/chat/completions", post(chat))
            .with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let until = stop.clone();
        tokio::spawn(async move {
            let _served =
                axum::serve(listener, app).with_graceful_shutdown(async move { until.cancelled().await }).await;
        });
        Ok(Self { addr, base: base.to_string(), inner, stop })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The base model's name.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How the next loads behave.
    pub fn set_load_behaviour(&self, behaviour: LoadBehaviour) {
        self.lock().behaviour = behaviour;
    }

    /// The adapters loaded now.
    pub fn adapters(&self) -> Vec<String> {
        self.lock().adapters.keys().cloned().collect()
    }

    /// Completions answered so far, by the model that answered.
    pub fn answered(&self) -> BTreeMap<String, u64> {
        self.lock().answered.clone()
    }

    /// Stops serving.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for SimRuntime {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn models(State(s): State<Shared>) -> Response {
    let inner = s.lock();
    let mut data = vec![json!({"id": s.base, "object": "model", "owned_by": "vllm", "root": s.base, "parent": null})];
    for (name, path) in &inner.adapters {
        data.push(json!({"id": name, "object": "model", "owned_by": "vllm", "root": path, "parent": s.base}));
    }
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

async fn load(State(s): State<Shared>, body: axum::body::Bytes) -> Response {
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (Some(name), Some(path)) = (request["lora_name"].as_str(), request["lora_path"].as_str()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "BadRequestError",
            "Both 'lora_name' and 'lora_path' must be provided.".into(),
        );
    };
    let behaviour = s.lock().behaviour;
    match behaviour {
        LoadBehaviour::Refuse(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return error(status, "InternalServerError", format!("refused to load '{name}' (simulated)"));
        }
        LoadBehaviour::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        LoadBehaviour::Load => {}
    }
    if !std::path::Path::new(path).join("adapter_config.json").is_file() {
        return error(
            StatusCode::BAD_REQUEST,
            "BadRequestError",
            format!("Loading lora {name} failed: No adapter found for {path}"),
        );
    }
    let mut inner = s.lock();
    if inner.adapters.contains_key(name) {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidUserInput",
            format!("The lora adapter '{name}' has already been loaded."),
        );
    }
    inner.adapters.insert(name.to_string(), path.to_string());
    format!("Success: LoRA adapter '{name}' added successfully.").into_response()
}

async fn unload(State(s): State<Shared>, body: axum::body::Bytes) -> Response {
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(name) = request["lora_name"].as_str() else {
        return error(StatusCode::BAD_REQUEST, "BadRequestError", "'lora_name' must be provided.".into());
    };
    if s.lock().adapters.remove(name).is_none() {
        return error(StatusCode::NOT_FOUND, "NotFoundError", format!("The lora adapter '{name}' cannot be found."));
    }
    format!("Success: LoRA adapter '{name}' removed successfully.").into_response()
}

async fn chat(State(s): State<Shared>, body: axum::body::Bytes) -> Response {
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = request["model"].as_str().unwrap_or_default().to_string();
    {
        let mut inner = s.lock();
        if model != s.base && !inner.adapters.contains_key(&model) {
            drop(inner);
            return error(StatusCode::NOT_FOUND, "NotFoundError", format!("The model `{model}` does not exist."));
        }
        *inner.answered.entry(model.clone()).or_default() += 1;
    }
    let question = request["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_string();
    axum::Json(json!({
        "id": format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("[{model}] an answer to: {question}")}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 8, "completion_tokens": 8, "total_tokens": 16}
    }))
    .into_response()
}
