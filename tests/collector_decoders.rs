//! Property tests of the collector's decoders: any JSON value, any bytes, any NDJSON: an answer
//! (an event or an error naming a field), never a panic.

use flywheel::collector::event::{decode_feedback, decode_interaction, split_batch};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,40}".prop_map(Value::String),
        prop_oneof![
            Just("thumbs"),
            Just("rating"),
            Just("correction"),
            Just("alternative"),
            Just("error"),
            Just("label"),
            Just("user"),
            Just("assistant"),
            Just("ns"),
            Just("v1")
        ]
        .prop_map(|s| Value::String(s.to_string())),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        Just("id"),
                        Just("kind"),
                        Just("value"),
                        Just("namespace"),
                        Just("deployment"),
                        Just("version"),
                        Just("interactionId"),
                        Just("prompt"),
                        Just("answer"),
                        Just("scale"),
                        Just("min"),
                        Just("max"),
                        Just("candidates"),
                        Just("chosen"),
                        Just("role"),
                        Just("content"),
                        Just("metadata"),
                        Just("timestamp"),
                        Just("latencyMs"),
                        Just("subject"),
                        Just("session"),
                        Just("other")
                    ]
                    .prop_map(str::to_string),
                    inner
                ),
                0..8
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<String, Value>>())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn decoders_never_panic(v in json_value()) {
        let now = 1_800_000_000_000;
        if let Ok(f) = decode_feedback(&v, now) {
            // What decodes names a deployment somehow, and a kind.
            prop_assert!(f.interaction_id.is_some() || f.version.is_some());
        }
        if let Ok(i) = decode_interaction(&v, now) {
            prop_assert!(!i.prompt.is_empty());
        }
    }

    #[test]
    fn batches_of_any_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512), ndjson in any::<bool>()) {
        let _answer = split_batch(&bytes, ndjson);
    }

    #[test]
    fn ndjson_of_values_splits_line_by_line(values in prop::collection::vec(json_value(), 1..10)) {
        let text: String = values.iter().map(|v| format!("{v}\n")).collect();
        let items = split_batch(text.as_bytes(), true);
        prop_assert_eq!(items.map(|i| i.len()).ok(), Some(values.len()));
    }
}
