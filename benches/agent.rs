//! What the agent sidecar costs: latency (p50, p99) and throughput of chat-completion requests
//! against the same upstream reached directly, through nginx (Debian's, as a reverse proxy
//! with upstream keep-alive), through the agent, through the agent splitting requests between
//! a stable and a canary LoRA adapter (`Adapter` rollout mode: each request's subject hashed,
//! its JSON body's `model` rewritten), and through the agent capturing every interaction to a
//! collector — in one run, on loopback.
//!
//! `cargo bench --bench agent` (add `-- --seconds S --clients C`). nginx is skipped when it is
//! not installed.

#[path = "support/mod.rs"]
mod support;
use support::{arg, percentile};

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use flywheel::agent::adapters::{AdapterRuntime, AdapterSettings, RuntimeError};
use flywheel::agent::{Agent, AgentConfig};
use flywheel::collector::{Collector, CollectorConfig};
use futures::future::BoxFuture;
use serde_json::json;

async fn upstream() -> SocketAddr {
    let app = Router::new().route(
        "/v1/chat/completions",
        post(|| async {
            axum::Json(json!({"id": "c1", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": "The capital of France is Paris."}, "finish_reason": "stop"}]}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

struct Nginx {
    child: std::process::Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _kill = self.child.kill();
        let _wait = self.child.wait();
    }
}

fn nginx(upstream: SocketAddr) -> Option<Nginx> {
    let binary = ["/usr/sbin/nginx", "/usr/bin/nginx"].into_iter().find(|p| std::path::Path::new(p).exists())?;
    let dir = tempfile::tempdir().ok()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).ok()?.port();
    let conf = format!(
        "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};
  upstream runtime {{ server {upstream}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://runtime;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_buffering off;
      add_header x-flywheel-model-version v1;
    }}
  }}
}}
",
        d = dir.path().display()
    );
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, conf).ok()?;
    let child = std::process::Command::new(binary)
        .arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    for _ in 0..100 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Some(Nginx { child, addr, _dir: dir });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// A runtime whose adapter API only remembers what it loaded (the upstream ignores `model`),
/// so the adapter row differs from the plain agent's by the split and the rewrite alone.
#[derive(Default)]
struct Remembers(std::sync::Mutex<Vec<String>>);

impl AdapterRuntime for Remembers {
    fn list(&self) -> BoxFuture<'_, Result<Vec<String>, RuntimeError>> {
        let listed = self.0.lock().map(|l| l.clone()).unwrap_or_default();
        Box::pin(async move { Ok(listed) })
    }
    fn load<'a>(&'a self, name: &'a str, _dir: &'a std::path::Path) -> BoxFuture<'a, Result<(), RuntimeError>> {
        if let Ok(mut l) = self.0.lock() {
            l.push(name.to_string());
        }
        Box::pin(async { Ok(()) })
    }
    fn unload<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        if let Ok(mut l) = self.0.lock() {
            l.retain(|n| n != name);
        }
        Box::pin(async { Ok(()) })
    }
}

struct Row {
    rps: f64,
    p50: f64,
    p99: f64,
}

async fn load(addr: SocketAddr, clients: usize, secs: f64) -> Row {
    let http =
        flywheel::http_client::builder().pool_max_idle_per_host(clients).build().unwrap_or_else(|e| panic!("{e}"));
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "What is the capital of France?"}]});
    // Warm up connections.
    for _ in 0..clients {
        let _warm = http.post(format!("http://{addr}/v1/chat/completions")).json(&body).send().await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (http, stop, body) = (http.clone(), stop.clone(), body.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    // A subject per client and request, as users of a shared service.
                    n += 1;
                    let request = http
                        .post(format!("http://{addr}/v1/chat/completions"))
                        .header("x-flywheel-subject", format!("user-{c}-{n}"))
                        .json(&body);
                    let ok = match request.send().await {
                        Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                        _ => false,
                    };
                    if ok {
                        latencies.push(sent.elapsed().as_secs_f64() * 1e6);
                    }
                }
                latencies
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_by(|a, b| a.total_cmp(b));
    Row { rps: all.len() as f64 / elapsed, p50: percentile(&all, 0.5), p99: percentile(&all, 0.99) }
}

/// The split and rewrite alone, on one thread: hash the subject, choose the arm, parse the
/// body, set `model`, serialize. Returns the median of `rounds` rounds, in µs per request.
fn rewrite_alone(rounds: usize, per_round: usize) -> f64 {
    use flywheel::agent::adapters::{Arm, Routing};
    let base = Arc::new(Arm::new("v1", None).unwrap_or_else(|e| panic!("{e}")));
    let stable = Arc::new(Arm::new("a1", Some("a1")).unwrap_or_else(|e| panic!("{e}")));
    let canary = Arc::new(Arm::new("a2", Some("a2")).unwrap_or_else(|e| panic!("{e}")));
    let routing = Routing::new(stable, Some((canary, 2_000)));
    let body = bytes::Bytes::from(
        json!({"model": "m", "messages": [{"role": "user", "content": "What is the capital of France?"}]}).to_string(),
    );
    let mut per_request: Vec<f64> = (0..rounds)
        .map(|_| {
            let started = Instant::now();
            for i in 0..per_round {
                let mut headers = axum::http::HeaderMap::new();
                if let Ok(v) = axum::http::HeaderValue::from_str(&format!("user-{i}")) {
                    headers.insert("x-flywheel-subject", v);
                }
                let (guard, rewritten) = routing.route(&headers, &body, &base);
                std::hint::black_box((guard, rewritten));
            }
            started.elapsed().as_secs_f64() * 1e6 / per_round as f64
        })
        .collect();
    per_request.sort_by(|a, b| a.total_cmp(b));
    percentile(&per_request, 0.5)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let secs = arg("--seconds", if benching { 10 } else { 1 }) as f64;
    let clients = arg("--clients", 16);
    let rounds = if benching { 15 } else { 2 };
    let alone = rewrite_alone(rounds, if benching { 100_000 } else { 1_000 });
    println!("split and rewrite alone (one thread, median of {rounds} rounds): {alone:.2} µs per request");
    let up = upstream().await;
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}"));
    let upstream_uri = format!("http://{up}").parse().unwrap_or_else(|e| panic!("{e}"));

    let mut plain = AgentConfig::new(any, upstream_uri, "v1");
    plain.admin_listen = any;
    let agent = Agent::start(plain.clone()).await.unwrap_or_else(|e| panic!("{e}"));

    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    // A stable adapter and a canary at 20 %: every request is hashed, rewritten, stamped.
    let wanted = dir.path().join("adapters.json");
    let wanted_json = json!({"stable": {"version": "a1", "uri": format!("file://{}", dir.path().display())},
        "canary": {"version": "a2", "uri": format!("file://{}", dir.path().display()), "weight": 20}});
    std::fs::write(&wanted, wanted_json.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let mut splitting = plain.clone();
    splitting.adapters = Some(AdapterSettings::new(wanted, dir.path().join("fetched"), Arc::new(Remembers::default())));
    let adapter_agent = Agent::start(splitting).await.unwrap_or_else(|e| panic!("{e}"));
    let admin = format!("http://{}/v1/adapters", adapter_agent.admin_addr());
    let mut routed = false;
    for _ in 0..100 {
        let report: serde_json::Value = match flywheel::http_client::client().get(&admin).send().await {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => serde_json::Value::Null,
        };
        if report["canary"] == "a2" && report["stable"] == "a1" {
            routed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(routed, "the adapter agent never routed to its adapters");

    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "bench-agent-token-0123456789\n").unwrap_or_else(|e| panic!("{e}"));
    let mut cc = CollectorConfig::new(any, dir.path().join("data"));
    cc.token_file = Some(tokens.clone());
    let collector = Collector::start(cc).await.unwrap_or_else(|e| panic!("{e}"));
    let mut capturing = plain;
    capturing.collector_url = Some(format!("http://{}", collector.addr()));
    capturing.collector_token_file = Some(tokens);
    let capturing_agent = Agent::start(capturing).await.unwrap_or_else(|e| panic!("{e}"));
    let proxy = nginx(up);

    println!("{:<34} {:>10} {:>10} {:>10}", "path", "requests/s", "p50 µs", "p99 µs");
    let mut targets: Vec<(&str, SocketAddr)> = vec![("direct to the upstream", up)];
    if let Some(n) = &proxy {
        targets.push(("nginx, one worker (keep-alive)", n.addr));
    } else {
        println!("(nginx not installed: its row is skipped)");
    }
    targets.push(("agent, no capture", agent.addr()));
    targets.push(("agent, adapter split 80/20", adapter_agent.addr()));
    targets.push(("agent, capturing all to collector", capturing_agent.addr()));
    let mut direct = None;
    for (label, addr) in targets {
        let r = load(addr, clients, secs).await;
        let overhead = direct.map_or(String::new(), |(p50, p99): (f64, f64)| {
            format!("   (+{:.0} µs p50, +{:.0} µs p99 over direct)", r.p50 - p50, r.p99 - p99)
        });
        println!("{label:<34} {:>10.0} {:>10.0} {:>10.0}{overhead}", r.rps, r.p50, r.p99);
        assert!(r.rps > 0.0, "{label}: no request answered");
        if direct.is_none() {
            direct = Some((r.p50, r.p99));
        }
    }
    println!(
        "({clients} concurrent clients with keep-alive on loopback, {secs:.0} s per row, client, proxies and upstream sharing the machine's cores)"
    );
    capturing_agent.shutdown().await;
    adapter_agent.shutdown().await;
    agent.shutdown().await;
    collector.shutdown().await;
}
