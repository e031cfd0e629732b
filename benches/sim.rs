//! Throughput and memory of the simulated API server, over real HTTPS with `kube::Client`:
//! creates, lists and watch events per second, and the process's resident memory holding
//! 10,000 objects. `cargo bench --bench sim` (add `-- --objects N --rounds R` to change sizes).

#[path = "support/mod.rs"]
mod support;
use support::{arg, median};

use std::time::{Duration, Instant};

use flywheel::sim::{Sim, SimConfig};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn config_map(i: usize) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": format!("cm-{i:05}"), "labels": {"bench": "sim", "shard": (i % 10).to_string()}}, "data": {"payload": "x".repeat(256)}}))
        .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this as a quick smoke test.
    let benching = std::env::args().any(|a| a == "--bench");
    let objects = arg("--objects", if benching { 10_000 } else { 200 });
    let rounds = arg("--rounds", if benching { 3 } else { 1 });
    let concurrency = 16;
    let mut create_rates = Vec::new();
    let mut list_rates = Vec::new();
    let mut watch_rates = Vec::new();
    let mut rss_deltas = Vec::new();
    for round in 0..rounds {
        let before = rss_kib();
        let sim = Sim::start(SimConfig::default()).await.unwrap_or_else(|e| panic!("{e}"));
        let client = sim.client().await.unwrap_or_else(|e| panic!("{e}"));
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

        let start = Instant::now();
        stream::iter(0..objects)
            .map(|i| {
                let api = api.clone();
                async move { api.create(&PostParams::default(), &config_map(i)).await.map(|_| ()) }
            })
            .buffer_unordered(concurrency)
            .try_collect::<Vec<()>>()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let create_rate = objects as f64 / start.elapsed().as_secs_f64();
        let held = sim.core().object_count();
        let after = rss_kib();

        let lists = 5;
        let start = Instant::now();
        for _ in 0..lists {
            // The namespace's kube-root-ca.crt is not one of the bench's.
            let list = api.list(&ListParams::default().labels("bench=sim")).await.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(list.items.len(), objects);
        }
        let list_rate = (lists * objects) as f64 / start.elapsed().as_secs_f64();

        let rv = api
            .list(&ListParams::default().limit(1))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .metadata
            .resource_version
            .unwrap_or_default();
        let updates = objects.min(5_000);
        let mut watch =
            api.watch(&WatchParams::default().timeout(300), &rv).await.unwrap_or_else(|e| panic!("{e}")).boxed();
        let start = Instant::now();
        let writer = {
            let api = api.clone();
            tokio::spawn(async move {
                stream::iter(0..updates)
                    .map(|i| {
                        let api = api.clone();
                        async move {
                            api.patch(
                                &format!("cm-{i:05}"),
                                &PatchParams::default(),
                                &Patch::Merge(json!({"data": {"n": i.to_string()}})),
                            )
                            .await
                            .map(|_| ())
                        }
                    })
                    .buffer_unordered(concurrency)
                    .try_collect::<Vec<()>>()
                    .await
            })
        };
        let mut seen = 0;
        while seen < updates {
            match tokio::time::timeout(Duration::from_secs(60), watch.next()).await {
                Ok(Some(Ok(WatchEvent::Modified(_)))) => seen += 1,
                Ok(Some(Ok(_))) => {}
                other => panic!("watch ended early after {seen} events: {other:?}"),
            }
        }
        let watch_rate = seen as f64 / start.elapsed().as_secs_f64();
        writer.await.unwrap_or_else(|e| panic!("{e}")).unwrap_or_else(|e| panic!("{e}"));
        sim.shutdown().await;

        println!(
            "round {round}: {held} objects held; create {create_rate:.0}/s; list {list_rate:.0} objects/s; watch {watch_rate:.0} events/s (end to end with the patches); RSS +{} MiB",
            after.saturating_sub(before) / 1024
        );
        create_rates.push(create_rate);
        list_rates.push(list_rate);
        watch_rates.push(watch_rate);
        // Only the first round measures memory: later rounds reuse what the allocator kept.
        if round == 0 {
            rss_deltas.push(after.saturating_sub(before) as f64 / 1024.0);
        }
    }
    println!(
        "median of {rounds} rounds, {objects} ConfigMaps of ~0.5 KiB, {concurrency} concurrent clients: create {:.0}/s, list {:.0} objects/s, watch {:.0} events/s, RSS growth holding them (first round) {:.0} MiB",
        median(create_rates),
        median(list_rates),
        median(watch_rates),
        median(rss_deltas)
    );
}
