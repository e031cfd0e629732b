//! The split and its stickiness, on the pure routing.

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue};
use bytes::Bytes;
use serde_json::{Value, json};

use super::{Arm, Routing, Wanted};

fn routing(weight_percent: u32) -> (Routing, Arc<Arm>) {
    let base = Arc::new(Arm::new("base-v1", None).unwrap_or_else(|e| panic!("{e}")));
    let stable = Arc::new(Arm::new("a1", Some("a1")).unwrap_or_else(|e| panic!("{e}")));
    let canary = Arc::new(Arm::new("a2", Some("a2")).unwrap_or_else(|e| panic!("{e}")));
    (Routing::new(stable, Some((canary, weight_percent * 100))), base)
}

fn headers(subject: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("x-flywheel-subject", HeaderValue::from_str(subject).unwrap_or_else(|e| panic!("{e}")));
    h
}

#[test]
fn the_split_follows_the_weight_and_a_subject_keeps_its_arm() {
    for weight in [10, 25, 50] {
        let (r, _) = routing(weight);
        let canary =
            (0..10_000).filter(|i| r.choose(Some(format!("subject:user-{i}").as_bytes())).version() == "a2").count();
        let share = canary as f64 / 100.0;
        assert!((share - f64::from(weight)).abs() <= 3.0, "{share}% of subjects on the canary at weight {weight}");
        for i in 0..200 {
            let key = format!("subject:user-{i}");
            let first = r.choose(Some(key.as_bytes())).version().to_string();
            assert!((0..5).all(|_| r.choose(Some(key.as_bytes())).version() == first));
        }
    }
}

#[test]
fn a_subject_on_the_canary_stays_there_as_the_weight_rises() {
    let (low, _) = routing(10);
    let (high, _) = routing(50);
    for i in 0..5_000 {
        let key = format!("subject:user-{i}");
        if low.choose(Some(key.as_bytes())).version() == "a2" {
            assert_eq!(high.choose(Some(key.as_bytes())).version(), "a2", "{key} left the canary at 50%");
        }
    }
}

#[test]
fn the_model_field_is_rewritten_and_the_subject_read_from_headers_or_user() {
    let (r, base) = routing(50);
    let body = Bytes::from(json!({"model": "qwen", "messages": [], "user": "u-9"}).to_string());
    let (guard, rewritten) = r.route(&HeaderMap::new(), &body, &base);
    let sent: Value = serde_json::from_slice(&rewritten.unwrap_or_default()).unwrap_or_default();
    assert_eq!(sent["model"], guard.arm().version(), "the model names the arm's adapter");
    assert_eq!(sent["user"], "u-9");
    // The header and the user field name the same subject.
    let (by_header, _) = r.route(&headers("u-9"), &Bytes::from_static(b"{\"model\":\"qwen\"}"), &base);
    assert_eq!(by_header.arm().version(), guard.arm().version());
    assert_eq!(guard.arm().in_flight(), 2, "both counted while their answers are open");
    drop(by_header);
    assert_eq!(guard.arm().in_flight(), 1);
    drop(guard);
    assert_eq!(r.stable().in_flight() + r.canary().map_or(0, |(a, _)| a.in_flight()), 0);
}

#[test]
fn a_body_that_is_not_json_goes_to_the_base_unchanged() {
    let (r, base) = routing(50);
    let (guard, rewritten) = r.route(&headers("u"), &Bytes::from_static(b"not json"), &base);
    assert_eq!((guard.arm().version(), rewritten), ("base-v1", None));
}

#[test]
fn the_wanted_state_is_checked() {
    let bad = [
        json!({"canary": {"version": "../x", "uri": "s3://b/x", "weight": 10}}),
        json!({"canary": {"version": "a2", "uri": "s3://b/x", "weight": 101}}),
        json!({"stable": {"version": "a2", "uri": "s3://b/x"}, "canary": {"version": "a2", "uri": "s3://b/y", "weight": 5}}),
    ];
    for b in bad {
        let w: Wanted = serde_json::from_value(b.clone()).unwrap_or_else(|e| panic!("{e}"));
        assert!(w.check().is_err(), "{b} accepted");
    }
    let ok: Wanted = serde_json::from_value(json!({"stable": {"version": "a1", "uri": "s3://b/a1"}, "canary": {"version": "a2", "uri": "s3://b/a2", "weight": 10}}))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(ok.check().is_ok());
    assert_eq!(ok.adapters().len(), 2);
}

fn tar_gz(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(gz);
    for (name, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, name, *data).unwrap_or_else(|e| panic!("{e}"));
    }
    let gz = builder.into_inner().unwrap_or_else(|e| panic!("{e}"));
    gz.finish().unwrap_or_else(|e| panic!("{e}"))
}

/// Adapters as archives over HTTP, as an object store's pre-signed URL serves them.
async fn adapter_server() -> std::net::SocketAddr {
    use axum::extract::Path;
    let app = axum::Router::new().route(
        "/adapters/{file}",
        axum::routing::get(|Path(file): Path<String>| async move {
            let name = file.trim_end_matches(".tar.gz").to_string();
            let config = json!({"peft_type": "LORA", "r": 8, "name": name}).to_string();
            tar_gz(&[("adapter_config.json", config.as_bytes()), ("adapter_model.safetensors", b"weights")])
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_stable_adapter_is_fetched_and_loaded_and_the_old_one_unloaded_once_drained() {
    use super::{AdapterSettings, Adapters, Vllm};
    use crate::sim::model_runtime::{LoadBehaviour, SimRuntime};
    let store = adapter_server().await;
    let runtime = SimRuntime::start("base").await.unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let wanted = dir.path().join("adapters.json");
    let mut settings =
        AdapterSettings::new(wanted.clone(), dir.path().join("fetched"), Arc::new(Vllm::new(&runtime.url())));
    settings.fetch.allow_http = true;
    settings.retry_after = std::time::Duration::ZERO;
    let adapters = Adapters::new(settings, "v1").unwrap_or_else(|e| panic!("{e}"));
    let want = |version: &str| {
        let w = json!({"stable": {"version": version, "uri": format!("http://{store}/adapters/{version}.tar.gz")}});
        std::fs::write(&wanted, w.to_string()).unwrap_or_else(|e| panic!("{e}"));
    };
    let base = Arc::new(Arm::new("v1", None).unwrap_or_else(|e| panic!("{e}")));
    let body = Bytes::from_static(b"{\"model\":\"base\"}");

    want("a1");
    adapters.sync_once().await;
    assert_eq!(runtime.adapters(), ["a1"]);
    assert!(dir.path().join("fetched/a1/adapter_config.json").is_file(), "fetched and unpacked");
    let report = adapters.report();
    assert_eq!((report.stable.as_str(), report.serves("a1")), ("a1", true));
    // A request still answering on a1 when a2 becomes stable.
    let (open, _) = adapters.routing().route(&headers("u"), &body, &base);
    assert_eq!(open.arm().version(), "a1");

    want("a2");
    adapters.sync_once().await;
    assert_eq!(adapters.report().stable, "a2", "new requests go to a2");
    assert_eq!(runtime.adapters(), ["a1", "a2"], "a1 stays loaded while a request uses it");
    drop(open);
    adapters.sync_once().await;
    assert_eq!(runtime.adapters(), ["a2"], "a1 unloaded once drained");
    assert!(!dir.path().join("fetched/a1").exists(), "and its files removed");

    // A stable adapter the runtime refuses leaves the previous one serving.
    runtime.set_load_behaviour(LoadBehaviour::Refuse(500));
    want("a3");
    adapters.sync_once().await;
    let report = adapters.report();
    assert_eq!(report.stable, "a2");
    assert!(report.failures.get("a3").is_some_and(|m| m.contains("500")), "{report:?}");
    let (still, _) = adapters.routing().route(&headers("u"), &body, &base);
    assert_eq!(still.arm().version(), "a2");
}
