//! The committed CRDs under `crds/` are exactly what the code generates, and `flywheel crds`
//! prints them. Regenerate with `cargo run -- crds --output-dir crds`.

use std::process::Command;

use flywheel::api::{crd_file_name, crd_yaml, crds};

fn crds_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds")
}

#[test]
fn committed_crds_match_generated() {
    for crd in crds() {
        let path = crds_dir().join(crd_file_name(&crd));
        let committed = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; run `cargo run -- crds --output-dir crds`", path.display()));
        let generated = crd_yaml(&crd).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            committed == generated,
            "{} differs from the generated CRD; run `cargo run -- crds --output-dir crds` and commit",
            path.display()
        );
    }
}

#[test]
fn no_stray_files_in_crds_dir() {
    let expected: Vec<String> = crds().iter().map(crd_file_name).collect();
    let entries = std::fs::read_dir(crds_dir()).unwrap_or_else(|e| panic!("{e}"));
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(name == "kustomization.yaml" || expected.contains(&name), "unexpected file crds/{name}");
    }
    let kustomization = std::fs::read_to_string(crds_dir().join("kustomization.yaml")).unwrap_or_default();
    for name in &expected {
        assert!(kustomization.contains(name.as_str()), "crds/kustomization.yaml does not list {name}");
    }
}

#[test]
fn flywheel_crds_prints_the_committed_files() {
    let output = Command::new(env!("CARGO_BIN_EXE_flywheel"))
        .args(["--log-format", "text", "crds"])
        .output()
        .unwrap_or_else(|e| panic!("running flywheel crds: {e}"));
    assert!(output.status.success(), "flywheel crds failed: {}", String::from_utf8_lossy(&output.stderr));
    let printed = String::from_utf8(output.stdout).unwrap_or_else(|e| panic!("{e}"));
    let mut expected = String::new();
    for crd in crds() {
        let path = crds_dir().join(crd_file_name(&crd));
        expected.push_str("---\n");
        expected.push_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())));
    }
    assert_eq!(printed, expected);
}

#[test]
fn crd_shape() {
    for crd in crds() {
        let names = &crd.spec.names;
        assert_eq!(crd.spec.group, "flywheel.dev");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(names.categories.as_deref(), Some(&["flywheel".to_string()][..]));
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        let sub = version.subresources.as_ref().unwrap_or_else(|| panic!("{} has subresources", names.kind));
        assert!(sub.status.is_some(), "{} has a status subresource", names.kind);
        assert_eq!(sub.scale.is_some(), names.kind == "ModelDeployment", "scale only on ModelDeployment");
        let short = names.short_names.clone().unwrap_or_default();
        let expected = match names.kind.as_str() {
            "ModelDeployment" => "md",
            "FeedbackPolicy" => "fbp",
            "RetrainJob" => "rtj",
            other => panic!("unexpected kind {other}"),
        };
        assert_eq!(short, vec![expected.to_string()]);
        let columns: Vec<String> =
            version.additional_printer_columns.iter().flatten().map(|c| c.name.clone()).collect();
        let wanted: &[&str] = match names.kind.as_str() {
            "ModelDeployment" => &["Stable", "Canary", "Weight", "Ready", "Status"],
            "FeedbackPolicy" => &["Target", "Signals", "Quality", "Last Trigger"],
            _ => &["Target", "Phase", "Version"],
        };
        for w in wanted {
            assert!(columns.iter().any(|c| c == w), "{} lacks printer column {w}: {columns:?}", names.kind);
        }
    }
}

/// Every string, list and map of each schema is bounded (the API server's CEL cost estimate
/// relies on it).
#[test]
fn strings_lists_and_maps_are_bounded() {
    fn walk(schema: &serde_json::Value, path: &str, unbounded: &mut Vec<String>) {
        let Some(map) = schema.as_object() else { return };
        match map.get("type").and_then(|t| t.as_str()) {
            Some("string")
                if map.get("maxLength").is_none()
                    && map.get("enum").is_none()
                    && map.get("format").and_then(|f| f.as_str()) != Some("date-time") =>
            {
                unbounded.push(path.to_string())
            }
            Some("array") if map.get("maxItems").is_none() => unbounded.push(path.to_string()),
            Some("object") if map.contains_key("additionalProperties") && map.get("maxProperties").is_none() => {
                unbounded.push(path.to_string())
            }
            _ => {}
        }
        if let Some(props) = map.get("properties").and_then(|p| p.as_object()) {
            for (k, v) in props {
                walk(v, &format!("{path}.{k}"), unbounded);
            }
        }
        if let Some(items) = map.get("items") {
            walk(items, &format!("{path}[]"), unbounded);
        }
        if let Some(add) = map.get("additionalProperties") {
            walk(add, &format!("{path}{{}}"), unbounded);
        }
    }
    for crd in crds() {
        let schema = flywheel::api::validation::storage_schema(&crd).unwrap_or_else(|| panic!("schema"));
        let mut unbounded = Vec::new();
        walk(&schema["properties"]["spec"], "spec", &mut unbounded);
        walk(&schema["properties"]["status"], "status", &mut unbounded);
        assert!(unbounded.is_empty(), "{}: unbounded fields {unbounded:?}", crd.metadata.name.unwrap_or_default());
    }
}
