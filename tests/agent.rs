//! The agent sidecar against a real upstream on loopback and a real collector.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use flywheel::agent::{Agent, AgentConfig, Capture, INTERACTION_HEADER, VERSION_HEADER};
use flywheel::collector::{Collector, CollectorConfig};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::Notify;

const TOKEN: &str = "agent-test-token-0123456789";

#[derive(Clone)]
struct Upstream {
    healthy: Arc<AtomicBool>,
    /// The streaming answer sends its first chunk, then waits for this.
    release: Arc<Notify>,
}

async fn chat(State(u): State<Upstream>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    assert!(
        headers.get("authorization").is_some_and(|v| v == "Bearer app-secret"),
        "the app's credentials reach the runtime"
    );
    if request["stream"] == true {
        let release = u.release.clone();
        let chunks = async_stream(release);
        return Response::builder()
            .header("content-type", "text/event-stream")
            .body(Body::from_stream(chunks))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    }
    let question =
        request["messages"].as_array().and_then(|m| m.last()).map(|m| m["content"].clone()).unwrap_or_default();
    axum::Json(json!({"choices": [{"message": {"role": "assistant", "content": format!("answer to {}", question.as_str().unwrap_or(""))}}]}))
        .into_response()
}

fn async_stream(release: Arc<Notify>) -> impl futures::Stream<Item = Result<String, std::io::Error>> {
    futures::stream::unfold(0, move |step| {
        let release = release.clone();
        async move {
            match step {
                0 => Some((Ok("data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n".to_string()), 1)),
                1 => {
                    release.notified().await;
                    Some((
                        Ok("data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\ndata: [DONE]\n\n".to_string()),
                        2,
                    ))
                }
                _ => None,
            }
        }
    })
}

async fn upstream() -> (SocketAddr, Upstream) {
    let u = Upstream { healthy: Arc::new(AtomicBool::new(true)), release: Arc::new(Notify::new()) };
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route(
            "/health",
            get(|State(u): State<Upstream>| async move {
                if u.healthy.load(Ordering::Relaxed) { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }
            }),
        )
        .with_state(u.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, u)
}

fn config(upstream: SocketAddr, version: &str) -> AgentConfig {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}"));
    let uri = format!("http://{upstream}").parse().unwrap_or_else(|e| panic!("{e}"));
    let mut c = AgentConfig::new(any, uri, version);
    c.admin_listen = any;
    c.namespace = "ns".into();
    c.deployment = "md".into();
    c.flush_interval = Duration::from_millis(100);
    c
}

async fn ask(client: &reqwest::Client, agent: &Agent, question: &str) -> reqwest::Response {
    client
        .post(format!("http://{}/v1/chat/completions", agent.addr()))
        .bearer_auth("app-secret")
        .header("x-flywheel-subject", "user-7")
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": question}]}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn metrics(client: &reqwest::Client, agent: &Agent) -> String {
    client
        .get(format!("http://{}/metrics", agent.admin_addr()))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .text()
        .await
        .unwrap_or_default()
}

fn metric(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_stamped_and_streams_pass_through_as_they_come() {
    let (up, u) = upstream().await;
    let agent = Agent::start(config(up, "v7")).await.unwrap_or_else(|e| panic!("{e}"));
    let client = flywheel::http_client::client();

    let response = ask(&client, &agent, "2+2").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers().get(VERSION_HEADER).map(|v| v.as_bytes()), Some(&b"v7"[..]));
    let id = response.headers().get(INTERACTION_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
    assert!(id.as_deref().is_some_and(|i| uuid::Uuid::parse_str(i).is_ok()), "{id:?}");
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(body["choices"][0]["message"]["content"], "answer to 2+2");
    let other = ask(&client, &agent, "again").await;
    assert_ne!(
        other.headers().get(INTERACTION_HEADER).and_then(|v| v.to_str().ok()),
        id.as_deref(),
        "one id per answer"
    );

    // Streaming: the first event reaches the client while the upstream still holds the rest.
    let response = client
        .post(format!("http://{}/v1/chat/completions", agent.addr()))
        .bearer_auth("app-secret")
        .json(&json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.headers().get(VERSION_HEADER).map(|v| v.as_bytes()), Some(&b"v7"[..]));
    let mut stream = response.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap_or_else(|_| panic!("the first event never came: the answer is buffered"));
    let first = first.and_then(Result::ok).unwrap_or_default();
    assert!(String::from_utf8_lossy(&first).contains("Hel"), "{first:?}");
    let text = metrics(&client, &agent).await;
    assert_eq!(metric(&text, "flywheel_agent_in_flight_requests"), 1.0, "the held stream is in flight:\n{text}");
    u.release.notify_one();
    let mut rest = Vec::new();
    while let Some(chunk) = stream.next().await {
        rest.extend(chunk.unwrap_or_default());
    }
    assert!(String::from_utf8_lossy(&rest).contains("[DONE]"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let text = metrics(&client, &agent).await;
    assert_eq!(metric(&text, "flywheel_agent_in_flight_requests"), 0.0);
    assert_eq!(metric(&text, "flywheel_agent_requests_total{code=\"200\"}"), 3.0, "{text}");

    // Readiness follows the runtime's.
    let ready = |c: reqwest::Client, a: SocketAddr| async move {
        c.get(format!("http://{a}/readyz")).send().await.map(|r| r.status().as_u16()).unwrap_or(0)
    };
    assert_eq!(ready(client.clone(), agent.admin_addr()).await, 200);
    u.healthy.store(false, Ordering::Relaxed);
    assert_eq!(ready(client.clone(), agent.admin_addr()).await, 503);
    agent.shutdown().await;

    // A runtime that is down: 502, stamped all the same.
    let closed =
        std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).unwrap_or_else(|e| panic!("{e}"));
    let agent = Agent::start(config(closed, "v7")).await.unwrap_or_else(|e| panic!("{e}"));
    let response = ask(&client, &agent, "anyone?").await;
    assert_eq!(response.status(), 502);
    assert!(response.headers().contains_key(INTERACTION_HEADER) && response.headers().contains_key(VERSION_HEADER));
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captures_reach_the_collector_and_feedback_joins_them() {
    let (up, u) = upstream().await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{TOKEN}\n")).unwrap_or_else(|e| panic!("{e}"));
    let mut cc = CollectorConfig::new("127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")), dir.path().join("data"));
    cc.token_file = Some(tokens.clone());
    let collector = Collector::start(cc).await.unwrap_or_else(|e| panic!("{e}"));
    let mut c = config(up, "v2");
    c.collector_url = Some(format!("http://{}", collector.addr()));
    c.collector_token_file = Some(tokens);
    c.capture = Capture { redact_fields: vec!["password".into()], ..Capture::default() };
    let agent = Agent::start(c).await.unwrap_or_else(|e| panic!("{e}"));
    let client = flywheel::http_client::client();

    let response = ask(&client, &agent, "capital of France?").await;
    let id = response.headers().get(INTERACTION_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let _body = response.text().await;
    // A streamed answer is captured too, joined from its deltas.
    let streamed = client
        .post(format!("http://{}/v1/chat/completions", agent.addr()))
        .bearer_auth("app-secret")
        .json(&json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "greet"}]}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    u.release.notify_one();
    let _all = streamed.bytes().await;

    // The application posts feedback naming only the interaction id.
    let feedback = json!({"id": "fb-1", "interactionId": id, "kind": "correction", "value": "Paris."});
    let posted = client
        .post(format!("http://{}/v1/feedback", collector.addr()))
        .bearer_auth(TOKEN)
        .json(&feedback)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(posted.status(), 201);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stats: Value = client
            .get(format!("http://{}/v1/stats?namespace=ns&deployment=md", collector.addr()))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .json()
            .await
            .unwrap_or(Value::Null);
        let v2 = stats["versions"].as_array().and_then(|v| v.iter().find(|x| x["version"] == "v2")).cloned();
        if let Some(v2) = v2
            && v2["interactions"] == 2
            && v2["total"] == 1
        {
            assert_eq!(v2["correctionRate"]["numerator"], 1);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "captures never reached the collector: {stats}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The dataset built from it holds the captured prompt and the correction.
    let manifest: Value = client
        .post(format!("http://{}/v1/datasets", collector.addr()))
        .bearer_auth(TOKEN)
        .json(&json!({"namespace": "ns", "deployment": "md", "recipe": {"heldOutFraction": 0.0}}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .json()
        .await
        .unwrap_or(Value::Null);
    let sft = client
        .get(format!(
            "http://{}/v1/datasets/{}/files/sft.jsonl",
            collector.addr(),
            manifest["id"].as_str().unwrap_or("")
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .text()
        .await
        .unwrap_or_default();
    let row: Value = serde_json::from_str(sft.lines().next().unwrap_or("")).unwrap_or(Value::Null);
    assert_eq!(
        row["messages"],
        json!([{"role": "user", "content": "capital of France?"}, {"role": "assistant", "content": "Paris."}]),
        "{sft}"
    );
    let text = metrics(&client, &agent).await;
    assert_eq!(metric(&text, "flywheel_agent_captured_interactions_total"), 2.0, "{text}");
    agent.shutdown().await;
    collector.shutdown().await;
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_costs_no_failed_request_and_no_memory() {
    let (up, _u) = upstream().await;
    let closed =
        std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).unwrap_or_else(|e| panic!("{e}"));
    let mut c = config(up, "v1");
    c.collector_url = Some(format!("http://{closed}"));
    c.queue_capacity = 64;
    c.capture.max_bytes = 16 * 1024;
    let agent = Agent::start(c).await.unwrap_or_else(|e| panic!("{e}"));
    let client = flywheel::http_client::client();
    let big = "x".repeat(8 * 1024);
    let mut before = 0;
    for round in 0..5 {
        let asks = (0..400).map(|i| {
            let (client, addr, q) = (client.clone(), agent.addr(), format!("{big}{round}-{i}"));
            async move {
                client
                    .post(format!("http://{addr}/v1/chat/completions"))
                    .bearer_auth("app-secret")
                    .json(&json!({"model": "m", "messages": [{"role": "user", "content": q}]}))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            }
        });
        let statuses: Vec<u16> = futures::stream::iter(asks).buffer_unordered(32).collect().await;
        assert!(statuses.iter().all(|s| *s == 200), "every request answered: {statuses:?}");
        if round == 0 {
            before = rss_kib();
        }
    }
    let grown = rss_kib().saturating_sub(before);
    let text = metrics(&client, &agent).await;
    let depth = metric(&text, "flywheel_agent_capture_queue_depth");
    let dropped = metric(&text, "flywheel_agent_dropped_interactions_total{reason=\"queue_full\"}")
        + metric(&text, "flywheel_agent_dropped_interactions_total{reason=\"collector\"}");
    assert!(depth <= 64.0, "the queue stays bounded: {depth}");
    assert!(dropped >= 2000.0 - 64.0 - 64.0, "captures are dropped and counted: {dropped}\n{text}");
    // 1,600 requests of 8 KiB prompts after the first round: a growing queue would hold 25 MiB.
    assert!(grown < 24 * 1024, "resident memory grew {grown} KiB after the first round");
    agent.shutdown().await;
}
