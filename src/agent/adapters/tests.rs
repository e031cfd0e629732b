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
