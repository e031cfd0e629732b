//! Durable ingestion of the collector on loopback: events per second and acknowledgement
//! latency (p50, p99) with single-event requests and with batches, for SQLite and for
//! PostgreSQL (when `FLYWHEEL_TEST_DATABASE_URL` names a server), next to the raw fsync rate of
//! the same disk measured in the same run. Every acknowledged event was committed (fsync) first.
//!
//! `cargo bench --bench collector` (add `-- --seconds S --clients C --batch B`).

#[path = "support/mod.rs"]
mod support;
use support::{arg, percentile};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use flywheel::collector::{Collector, CollectorConfig};
use serde_json::{Value, json};

const TOKEN: &str = "bench-write-token-0123456789";

/// Writes 4 KiB and fdatasyncs, as often as the disk allows, for `secs`.
fn fsync_rate(dir: &std::path::Path, secs: f64) -> f64 {
    use std::io::Write;
    let path = dir.join("fsync-probe");
    let Ok(mut f) = std::fs::File::create(&path) else { return 0.0 };
    let block = vec![7u8; 4096];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        if f.write_all(&block).and_then(|()| f.sync_data()).is_err() {
            return 0.0;
        }
        n += 1;
    }
    let _removed = std::fs::remove_file(&path);
    n as f64 / start.elapsed().as_secs_f64()
}

struct Result {
    events_per_s: f64,
    requests_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    events_per_commit: f64,
    commits_per_s: f64,
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn load(base: &str, clients: usize, batch: usize, secs: f64, tag: &str) -> Result {
    let http = flywheel::http_client::client();
    let metrics_before = http.get(format!("{base}/metrics")).send().await.ok();
    let before = match metrics_before {
        Some(r) => r.text().await.unwrap_or_default(),
        None => String::new(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (http, stop, base, tag) = (http.clone(), stop.clone(), base.to_string(), tag.to_string());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut events = 0usize;
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let items: Vec<Value> = (0..batch)
                    .map(|k| {
                        json!({"id": format!("{tag}-{c}-{n}-{k}"), "namespace": "bench", "deployment": "md", "version": "v1",
                               "kind": "thumbs", "value": k % 3 != 0})
                    })
                    .collect();
                let body = if batch == 1 { items[0].clone() } else { Value::Array(items) };
                let sent = Instant::now();
                let ok = http
                    .post(format!("{base}/v1/feedback"))
                    .bearer_auth(TOKEN)
                    .json(&body)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                    events += batch;
                }
                n += 1;
            }
            (latencies, events)
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    let mut events = 0;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            latencies.extend(l);
            events += e;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let after = match http.get(format!("{base}/metrics")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    let commits = metric(&after, "flywheel_collector_commit_batch_events_count")
        - metric(&before, "flywheel_collector_commit_batch_events_count");
    let committed = metric(&after, "flywheel_collector_commit_batch_events_sum")
        - metric(&before, "flywheel_collector_commit_batch_events_sum");
    latencies.sort_by(|a, b| a.total_cmp(b));
    Result {
        events_per_s: events as f64 / elapsed,
        requests_per_s: latencies.len() as f64 / elapsed,
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
        events_per_commit: if commits > 0.0 { committed / commits } else { 0.0 },
        commits_per_s: commits / elapsed,
    }
}

async fn fresh_database(admin: &str) -> Option<String> {
    let (client, conn) = tokio_postgres::connect(admin, tokio_postgres::NoTls).await.ok()?;
    tokio::spawn(conn);
    let name = format!("fw_bench_{}", uuid::Uuid::new_v4().simple());
    client.batch_execute(&format!("CREATE DATABASE {name}")).await.ok()?;
    let (base, _) = admin.rsplit_once('/')?;
    Some(format!("{base}/{name}"))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this as a quick smoke test.
    let benching = std::env::args().any(|a| a == "--bench");
    let secs = arg("--seconds", if benching { 10 } else { 1 }) as f64;
    let clients = arg("--clients", 32);
    let batch = arg("--batch", 50);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let token_file = dir.path().join("tokens");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap_or_else(|e| panic!("{e}"));

    let fsyncs = fsync_rate(dir.path(), secs.min(5.0));
    println!("raw disk: {fsyncs:.0} fsyncs/s (4 KiB write + fdatasync, one thread, same file system)");

    let mut backends: Vec<(&str, Option<String>)> = vec![("sqlite", None)];
    if let Ok(admin) = std::env::var("FLYWHEEL_TEST_DATABASE_URL")
        && let Some(url) = fresh_database(&admin).await
    {
        backends.push(("postgres", Some(url)));
    }
    println!(
        "{:<9} {:<16} {:>10} {:>10} {:>9} {:>9} {:>13} {:>10}",
        "store", "requests", "events/s", "requests/s", "p50 ms", "p99 ms", "events/commit", "commits/s"
    );
    for (name, url) in backends {
        let mut config =
            CollectorConfig::new("127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")), dir.path().join(name));
        config.token_file = Some(token_file.clone());
        config.database_url = url;
        let collector = Collector::start(config).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        let base = format!("http://{}", collector.addr());
        for (label, size) in [("single events", 1), (&*format!("batches of {batch}"), batch)] {
            let r = load(&base, clients, size, secs, &format!("{name}{size}")).await;
            println!(
                "{:<9} {:<16} {:>10.0} {:>10.0} {:>9.2} {:>9.2} {:>13.1} {:>10.0}",
                name, label, r.events_per_s, r.requests_per_s, r.p50_ms, r.p99_ms, r.events_per_commit, r.commits_per_s
            );
            assert!(r.events_per_s > 0.0, "{name} {label}: nothing acknowledged");
        }
        collector.shutdown().await;
    }
    println!(
        "({clients} concurrent clients on loopback, {secs:.0} s per row; each acknowledgement follows its commit)"
    );
}
