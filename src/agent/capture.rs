//! Interaction capture: what is kept of a request and its answer, and the sender that batches
//! captures to the collector from a bounded queue.

use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::config::AgentConfig;
use super::metrics::AgentMetrics;

const ALWAYS_REDACTED: [&str; 3] = ["authorization", "cookie", "proxy-authorization"];

/// A request chosen for capture, waiting for its answer.
pub struct Pending {
    id: String,
    namespace: String,
    deployment: String,
    version: String,
    prompt: Value,
    subject: Option<String>,
    session: Option<String>,
    path: String,
    headers: serde_json::Map<String, Value>,
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

fn redact(value: &mut Value, fields: &[String]) {
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if fields.iter().any(|f| f == k) {
                    *v = Value::String("[redacted]".into());
                } else {
                    redact(v, fields);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| redact(v, fields)),
        _ => {}
    }
}

/// The text of an OpenAI-style message content: a string, or the text parts of a list.
fn content_text(content: &Value) -> Option<String> {
    match content {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => {
            let text: Vec<&str> = parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect();
            (!text.is_empty()).then(|| text.join("\n"))
        }
        _ => None,
    }
}

/// The prompt of a chat or completion request, in the collector's shape, or `None` when the
/// body is not one.
fn prompt_of(body: &Value, max: usize) -> Option<Value> {
    if let Some(messages) = body.get("messages").and_then(Value::as_array) {
        let out: Vec<Value> = messages
            .iter()
            .filter_map(|m| {
                let role = match m.get("role").and_then(Value::as_str)? {
                    "system" | "developer" => "system",
                    "user" => "user",
                    "assistant" => "assistant",
                    _ => return None,
                };
                let text = content_text(m.get("content")?)?;
                Some(json!({"role": role, "content": truncate(&text, max)}))
            })
            .take(256)
            .collect();
        return (!out.is_empty()).then_some(Value::Array(out));
    }
    match body.get("prompt") {
        Some(Value::String(p)) => Some(Value::String(truncate(p, max))),
        Some(Value::Array(ps)) => ps.first().and_then(Value::as_str).map(|p| Value::String(truncate(p, max))),
        _ => None,
    }
}

/// Decides whether this request is captured and keeps its prompt.
pub fn pending(
    config: &AgentConfig,
    id: &str,
    version: &str,
    headers: &HeaderMap,
    body: &[u8],
    path: &str,
) -> Option<Pending> {
    let c = &config.capture;
    if c.sample_rate <= 0.0 || (c.sample_rate < 1.0 && rand::random::<f64>() >= c.sample_rate) {
        return None;
    }
    let mut json: Value = serde_json::from_slice(body).ok()?;
    redact(&mut json, &c.redact_fields);
    let prompt = prompt_of(&json, c.max_bytes)?;
    let redacted =
        |name: &str| ALWAYS_REDACTED.contains(&name) || c.redact_headers.iter().any(|h| h.eq_ignore_ascii_case(name));
    let header = |name: &str| {
        (!redacted(name)).then(|| headers.get(name).and_then(|v| v.to_str().ok()).map(|v| truncate(v, 256))).flatten()
    };
    let subject = header("x-flywheel-subject")
        .or_else(|| json.get("user").and_then(Value::as_str).filter(|u| *u != "[redacted]").map(|u| truncate(u, 256)));
    let session = header("x-flywheel-session");
    // A few request headers as metadata, never credentials or redacted ones.
    let mut kept = serde_json::Map::new();
    for name in ["user-agent", "x-request-id"] {
        if let Some(v) = header(name) {
            kept.insert(name.to_string(), Value::String(v));
        }
    }
    Some(Pending {
        id: id.to_string(),
        namespace: config.namespace.clone(),
        deployment: config.deployment.clone(),
        version: version.to_string(),
        prompt,
        subject: subject.filter(|s| !s.is_empty()),
        session: session.filter(|s| !s.is_empty()),
        path: path.to_string(),
        headers: kept,
    })
}

/// A capture collecting its answer as the body streams by.
pub struct Captured {
    pending: Pending,
    streaming: bool,
    status: u16,
    max: usize,
    body: Vec<u8>,
    overflow: bool,
}

impl Captured {
    /// Starts collecting.
    pub fn new(pending: Pending, streaming: bool, status: u16, max: usize) -> Self {
        Self { pending, streaming, status, max, body: Vec::new(), overflow: false }
    }

    /// Keeps a bounded copy of a chunk. Streams keep more than `max` raw bytes, since the
    /// answer text is a fraction of the event framing.
    pub fn push(&mut self, chunk: &[u8]) {
        let cap = if self.streaming { self.max.saturating_mul(8) } else { self.max.saturating_mul(2) };
        let room = cap.saturating_sub(self.body.len());
        if chunk.len() > room {
            self.overflow = true;
        }
        self.body.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }

    /// The interaction for the collector, or `None` when there is no answer to keep.
    pub fn finish(self, complete: bool, took: Duration) -> Option<Value> {
        if !(200..300).contains(&self.status) {
            return None;
        }
        let text = String::from_utf8_lossy(&self.body);
        let answer = if self.streaming { answer_of_stream(&text) } else { answer_of_json(&text) }?;
        let truncated = self.overflow || answer.len() > self.max || !complete;
        let p = self.pending;
        let mut metadata = p.headers;
        metadata.insert("path".into(), json!(p.path));
        metadata.insert("stream".into(), json!(self.streaming));
        metadata.insert("truncated".into(), json!(truncated));
        let mut interaction = json!({
            "id": p.id,
            "namespace": p.namespace,
            "deployment": p.deployment,
            "version": p.version,
            "prompt": p.prompt,
            "answer": truncate(&answer, self.max),
            "latencyMs": u64::try_from(took.as_millis()).unwrap_or(u64::MAX).min(3_600_000),
            "metadata": metadata,
        });
        if let Some(s) = p.subject {
            interaction["subject"] = json!(s);
        }
        if let Some(s) = p.session {
            interaction["session"] = json!(s);
        }
        Some(interaction)
    }
}

fn choice_text(v: &Value, delta: bool) -> Option<String> {
    let choice = v.get("choices")?.get(0)?;
    let msg = if delta { choice.get("delta") } else { choice.get("message") };
    msg.and_then(|m| m.get("content"))
        .and_then(content_text)
        .or_else(|| choice.get("text").and_then(Value::as_str).map(str::to_string))
}

fn answer_of_json(text: &str) -> Option<String> {
    let v: Value = serde_json::from_str(text).ok()?;
    choice_text(&v, false)
}

/// Joins the content deltas of an OpenAI-style server-sent event stream.
fn answer_of_stream(text: &str) -> Option<String> {
    let mut out = String::new();
    let mut any = false;
    for line in text.lines() {
        let Some(data) = line.strip_prefix("data:") else { continue };
        let data = data.trim();
        if data == "[DONE]" {
            break;
        }
        if let Ok(v) = serde_json::from_str::<Value>(data)
            && let Some(t) = choice_text(&v, true)
        {
            out.push_str(&t);
            any = true;
        }
    }
    any.then_some(out)
}

/// Hands captures to the sender without ever waiting.
#[derive(Clone)]
pub struct Sender {
    tx: mpsc::Sender<Value>,
    metrics: Arc<AgentMetrics>,
}

impl Sender {
    /// Queues a capture, or drops it (counted) when the queue is full.
    pub fn offer(&self, interaction: Option<Value>) {
        let Some(interaction) = interaction else { return };
        match self.tx.try_send(interaction) {
            Ok(()) => {
                self.metrics.queued.inc();
            }
            Err(_) => self.metrics.drop_captures("queue_full", 1),
        }
    }
}

/// Starts the task that posts batches to `<collector>/v1/interactions`.
pub fn start_sender(
    collector: String,
    token: Option<String>,
    metrics: Arc<AgentMetrics>,
    capacity: usize,
    batch: usize,
    flush: Duration,
    stop: CancellationToken,
) -> (Sender, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Value>(capacity.max(1));
    let sender = Sender { tx, metrics: metrics.clone() };
    let client = crate::http_client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_else(|_| crate::http_client::client());
    let url = format!("{collector}/v1/interactions");
    let task = tokio::spawn(async move {
        let mut stopping = false;
        loop {
            let mut items = Vec::with_capacity(batch);
            // Wait for the first capture (or the stop), then gather for up to `flush`.
            if !stopping {
                tokio::select! {
                    first = rx.recv() => match first {
                        Some(v) => items.push(v),
                        None => return,
                    },
                    () = stop.cancelled() => stopping = true,
                }
            }
            let deadline = tokio::time::Instant::now() + flush;
            while items.len() < batch {
                if stopping {
                    match rx.try_recv() {
                        Ok(v) => items.push(v),
                        Err(_) => break,
                    }
                    continue;
                }
                tokio::select! {
                    next = rx.recv() => match next {
                        Some(v) => items.push(v),
                        None => break,
                    },
                    () = tokio::time::sleep_until(deadline) => break,
                    () = stop.cancelled() => stopping = true,
                }
            }
            if items.is_empty() {
                if stopping {
                    return;
                }
                continue;
            }
            let n = items.len() as i64;
            metrics.queued.dec_by(n);
            let mut attempt = 0;
            loop {
                let mut request = client.post(&url).json(&Value::Array(items.clone()));
                if let Some(t) = &token {
                    request = request.bearer_auth(t);
                }
                match request.send().await {
                    Ok(r) if r.status().is_success() => {
                        metrics.captured.inc_by(n as u64);
                        break;
                    }
                    outcome => {
                        attempt += 1;
                        // Retry once for a blip; then drop, so a dead collector costs only
                        // what the queue holds.
                        if attempt >= 2 || stopping {
                            let why = match outcome {
                                Ok(r) => format!("HTTP {}", r.status()),
                                Err(e) => e.to_string(),
                            };
                            tracing::warn!(
                                interactions = n,
                                reason = why,
                                "collector did not take the captures; dropped"
                            );
                            metrics.drop_captures("collector", n as u64);
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }
    });
    (sender, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_and_answers_of_chat_and_completions() {
        let body = json!({"model": "m", "user": "u-1", "messages": [
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hello"}, {"type": "image_url", "image_url": {"url": "x"}}]},
            {"role": "tool", "content": "ignored"}
        ]});
        assert_eq!(
            prompt_of(&body, 100),
            Some(json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]))
        );
        assert_eq!(prompt_of(&json!({"prompt": "abcdef"}), 3), Some(json!("abc")));
        assert_eq!(prompt_of(&json!({"input": "x"}), 3), None);
        assert_eq!(
            answer_of_json(r#"{"choices":[{"message":{"role":"assistant","content":"hi"}}]}"#).as_deref(),
            Some("hi")
        );
        assert_eq!(answer_of_json(r#"{"choices":[{"text":"yo"}]}"#).as_deref(), Some("yo"));
        let sse = "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n\
                   data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n\
                   data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\ndata: [DONE]\n\n";
        assert_eq!(answer_of_stream(sse).as_deref(), Some("Hello"));
    }

    #[test]
    fn redaction_reaches_nested_fields() {
        let mut v = json!({"api_key": "s", "metadata": {"api_key": "t", "keep": 1}, "list": [{"api_key": "u"}]});
        redact(&mut v, &["api_key".to_string()]);
        assert_eq!(
            v,
            json!({"api_key": "[redacted]", "metadata": {"api_key": "[redacted]", "keep": 1}, "list": [{"api_key": "[redacted]"}]})
        );
        assert_eq!(truncate("héllo", 2), "h");
    }
}
