//! `Table` output (what `kubectl get` asks for): a CRD's printer columns evaluated with the
//! subset of JSONPath they use, and a Name/Age table for built-in kinds.

use serde_json::{Value, json};

use super::registry::{PrinterColumn, ResourceType};

const NAME_DESCRIPTION: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";

/// Render a list (`items`, `metadata.resourceVersion`) as a `meta.k8s.io/v1` Table.
pub fn render_list(t: &ResourceType, list: &Value) -> Value {
    let columns: Vec<PrinterColumn> = if t.custom {
        t.printer_columns.clone()
    } else {
        vec![PrinterColumn {
            name: "Age".into(),
            type_: "date".into(),
            format: String::new(),
            description: "CreationTimestamp is a timestamp representing the server time when this object was created."
                .into(),
            priority: 0,
            json_path: ".metadata.creationTimestamp".into(),
        }]
    };
    let mut definitions = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": NAME_DESCRIPTION, "priority": 0}),
    ];
    definitions.extend(columns.iter().map(|c| {
        json!({"name": c.name, "type": c.type_, "format": c.format, "description": c.description, "priority": c.priority})
    }));
    let now = k8s_openapi::jiff::Timestamp::now();
    let rows: Vec<Value> = list
        .get("items")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .map(|item| {
                    let mut cells = vec![item.pointer("/metadata/name").cloned().unwrap_or(Value::Null)];
                    cells.extend(columns.iter().map(|c| cell(item, c, now)));
                    json!({
                        "cells": cells,
                        "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": item.get("metadata").cloned().unwrap_or_else(|| json!({}))}
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let mut metadata =
        json!({"resourceVersion": list.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null)});
    if let Some(c) = list.pointer("/metadata/continue") {
        metadata["continue"] = c.clone();
    }
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": metadata, "columnDefinitions": definitions, "rows": rows})
}

fn cell(item: &Value, column: &PrinterColumn, now: k8s_openapi::jiff::Timestamp) -> Value {
    let Some(value) = json_path(item, &column.json_path) else { return Value::Null };
    match column.type_.as_str() {
        "date" => value
            .as_str()
            .and_then(|s| s.parse::<k8s_openapi::jiff::Timestamp>().ok())
            .map(|then| Value::String(human_duration((now - then).get_seconds().max(0))))
            .unwrap_or(Value::Null),
        "integer" => value.as_i64().map_or(Value::Null, Value::from),
        "number" => value.as_f64().map_or(Value::Null, Value::from),
        "boolean" => value.as_bool().map_or(Value::Null, Value::Bool),
        _ => match value {
            Value::String(s) => Value::String(s),
            Value::Null => Value::Null,
            other => Value::String(other.to_string()),
        },
    }
}

/// Age as `kubectl` prints it (`27s`, `5m3s`, `3h`, `2d4h`).
pub fn human_duration(secs: i64) -> String {
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        let s = secs % 60;
        if s == 0 { format!("{m}m") } else { format!("{m}m{s}s") }
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        let rm = m % 60;
        if rm == 0 { format!("{h}h") } else { format!("{h}h{rm}m") }
    } else if h < 48 {
        format!("{h}h")
    } else if d < 8 {
        let rh = h % 24;
        if rh == 0 { format!("{d}d") } else { format!("{d}d{rh}h") }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else {
        format!("{}y", d / 365)
    }
}

/// Evaluate the JSONPath subset printer columns use: `.a.b`, `.a[0].b`, `.a[*].b`,
/// `.a[?(@.k=="v")].b`. Several matches are joined with commas, as kubectl does.
pub fn json_path(obj: &Value, path: &str) -> Option<Value> {
    let mut current = vec![obj.clone()];
    let mut rest = path.trim().trim_start_matches('{').trim_end_matches('}').trim_start_matches('$');
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let field = &r[..end];
            current = current.iter().filter_map(|v| v.get(field).cloned()).collect();
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = matching_bracket(r)?;
            let inner = &r[..end];
            rest = &r[end + 1..];
            current = current
                .iter()
                .flat_map(|v| {
                    v.as_array()
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .enumerate()
                        .collect::<Vec<_>>()
                        .into_iter()
                        .filter(|(i, x)| selects(inner, *i, x))
                        .map(|(_, x)| x)
                        .collect::<Vec<_>>()
                })
                .collect();
        } else {
            return None;
        }
    }
    match current.len() {
        0 => None,
        1 => current.pop(),
        _ => Some(Value::String(
            current
                .iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                .collect::<Vec<_>>()
                .join(","),
        )),
    }
}

fn matching_bracket(s: &str) -> Option<usize> {
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '[' | '(' => depth += 1,
            ')' => depth -= 1,
            ']' if depth == 0 => return Some(i),
            ']' => depth -= 1,
            _ => {}
        }
    }
    None
}

fn selects(filter: &str, index: usize, item: &Value) -> bool {
    if filter == "*" {
        return true;
    }
    if let Ok(i) = filter.parse::<usize>() {
        return i == index;
    }
    let Some(expr) = filter.strip_prefix("?(").and_then(|f| f.strip_suffix(')')) else { return false };
    let Some((lhs, rhs)) = expr.split_once("==") else { return false };
    let field = lhs.trim().trim_start_matches('@');
    let wanted = rhs.trim().trim_matches('"').trim_matches('\'');
    json_path(item, field).is_some_and(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string) == wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonpath_subset() {
        let obj = json!({"spec": {"replicas": 3}, "status": {"conditions": [{"type": "Progressing", "status": "True"}, {"type": "Ready", "status": "False"}]}});
        assert_eq!(json_path(&obj, ".spec.replicas"), Some(json!(3)));
        assert_eq!(json_path(&obj, ".status.conditions[?(@.type==\"Ready\")].status"), Some(json!("False")));
        assert_eq!(json_path(&obj, ".status.conditions[0].type"), Some(json!("Progressing")));
        assert_eq!(json_path(&obj, ".status.conditions[*].type"), Some(json!("Progressing,Ready")));
        assert_eq!(json_path(&obj, ".status.missing"), None);
    }

    #[test]
    fn ages() {
        assert_eq!(human_duration(27), "27s");
        assert_eq!(human_duration(303), "5m3s");
        assert_eq!(human_duration(3 * 3600 + 60), "3h1m");
        assert_eq!(human_duration(30 * 3600), "30h");
        assert_eq!(human_duration(3 * 86400), "3d");
    }
}
