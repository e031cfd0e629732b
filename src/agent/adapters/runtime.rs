//! The runtime's adapter API: list, load, unload. vLLM's is implemented; another runtime
//! implements [`AdapterRuntime`].

use std::path::Path;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{Value, json};

/// A failed call to the runtime's adapter API.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The runtime did not answer.
    #[error("{what}: the runtime did not answer: {source}")]
    Unreachable {
        /// The call.
        what: String,
        /// The error.
        #[source]
        source: reqwest::Error,
    },
    /// The runtime answered with an error.
    #[error("{what}: the runtime answered {status}: {body}")]
    Refused {
        /// The call.
        what: String,
        /// Its HTTP status.
        status: u16,
        /// The start of its body.
        body: String,
    },
    /// The runtime's answer is not what its API documents.
    #[error("{what}: unexpected answer: {message}")]
    Malformed {
        /// The call.
        what: String,
        /// What was wrong.
        message: String,
    },
}

/// Loads and unloads adapters in a runtime, and lists what it holds.
pub trait AdapterRuntime: Send + Sync {
    /// Names of the adapters loaded (not the base model).
    fn list(&self) -> BoxFuture<'_, Result<Vec<String>, RuntimeError>>;
    /// Loads the adapter in `dir` under `name`.
    fn load<'a>(&'a self, name: &'a str, dir: &'a Path) -> BoxFuture<'a, Result<(), RuntimeError>>;
    /// Unloads `name`.
    fn unload<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>>;
}

/// vLLM's OpenAI server with `--enable-lora` and `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`:
/// `POST /v1/load_lora_adapter`, `POST /v1/unload_lora_adapter`, and the adapters in
/// `GET /v1/models` (the entries with a `parent`).
pub struct Vllm {
    base: String,
    client: reqwest::Client,
}

impl Vllm {
    /// The runtime at `base`, for example `http://127.0.0.1:8000`.
    pub fn new(base: &str) -> Self {
        let client = crate::http_client::builder()
            .timeout(Duration::from_secs(300))
            .build()
            .unwrap_or_else(|_| crate::http_client::client());
        Self { base: base.trim_end_matches('/').to_string(), client }
    }

    async fn post(&self, path: &str, body: Value, what: String) -> Result<(), RuntimeError> {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .map_err(|source| RuntimeError::Unreachable { what: what.clone(), source })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        Err(RuntimeError::Refused { what, status: status.as_u16(), body: text.chars().take(300).collect() })
    }
}

impl AdapterRuntime for Vllm {
    fn list(&self) -> BoxFuture<'_, Result<Vec<String>, RuntimeError>> {
        Box::pin(async move {
            let what = "GET /v1/models".to_string();
            let response = self
                .client
                .get(format!("{}/v1/models", self.base))
                .send()
                .await
                .map_err(|source| RuntimeError::Unreachable { what: what.clone(), source })?;
            let status = response.status();
            if !status.is_success() {
                let text = response.text().await.unwrap_or_default();
                return Err(RuntimeError::Refused {
                    what,
                    status: status.as_u16(),
                    body: text.chars().take(300).collect(),
                });
            }
            let v: Value = response
                .json()
                .await
                .map_err(|e| RuntimeError::Malformed { what: what.clone(), message: e.to_string() })?;
            let data = v
                .get("data")
                .and_then(Value::as_array)
                .ok_or_else(|| RuntimeError::Malformed { what, message: "no \"data\" list".into() })?;
            // vLLM lists each adapter with the base model as its parent.
            Ok(data
                .iter()
                .filter(|m| m.get("parent").is_some_and(|p| !p.is_null()))
                .filter_map(|m| m.get("id").and_then(Value::as_str).map(str::to_string))
                .collect())
        })
    }

    fn load<'a>(&'a self, name: &'a str, dir: &'a Path) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            let body = json!({"lora_name": name, "lora_path": dir.to_string_lossy()});
            self.post("/v1/load_lora_adapter", body, format!("loading {name}")).await
        })
    }

    fn unload<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            self.post("/v1/unload_lora_adapter", json!({"lora_name": name}), format!("unloading {name}")).await
        })
    }
}
