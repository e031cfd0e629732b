//! `config/` renders with `kubectl kustomize`; what it renders is what the code generates
//! (CRDs), least-privilege (RBAC), restricted (the operator pod), and every sample is valid.

use std::process::Command;

use flywheel::api::validation::{admit, storage_schema};
use flywheel::api::{FeedbackPolicy, ModelDeployment, RetrainJob, crds};
use kube::CustomResourceExt;
use serde_json::Value;

fn render(dir: &str) -> Vec<Value> {
    let path = format!("{}/config/{dir}", env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("kubectl")
        .args(["kustomize", &path])
        .output()
        .unwrap_or_else(|e| panic!("running kubectl kustomize (is kubectl installed? .ci/run installs it): {e}"));
    assert!(output.status.success(), "kubectl kustomize {path}: {}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).unwrap_or_else(|e| panic!("{e}"));
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            let v: serde_yaml::Value = serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("{e}"));
            serde_json::to_value(v).unwrap_or_else(|e| panic!("{e}"))
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn kind(v: &Value) -> &str {
    v.get("kind").and_then(Value::as_str).unwrap_or_default()
}

fn name(v: &Value) -> &str {
    v.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default()
}

fn normalized(v: &Value) -> Value {
    match v {
        Value::Number(n) => n.as_f64().map_or(Value::Null, |f| serde_json::json!(f)),
        Value::Array(items) => Value::Array(items.iter().map(normalized).collect()),
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), normalized(v))).collect()),
        other => other.clone(),
    }
}

fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for key in x.keys().chain(y.keys()) {
                let (Some(u), Some(v)) = (x.get(key), y.get(key)) else {
                    return Some(format!("{path}.{key} (missing on one side)"));
                };
                if let Some(d) = first_difference(u, v, &format!("{path}.{key}")) {
                    return Some(d);
                }
            }
            None
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            x.iter().zip(y).enumerate().find_map(|(i, (u, v))| first_difference(u, v, &format!("{path}[{i}]")))
        }
        _ if a == b => None,
        _ => Some(format!(
            "{path}: {} vs {}",
            a.to_string().chars().take(80).collect::<String>(),
            b.to_string().chars().take(80).collect::<String>()
        )),
    }
}

#[test]
fn default_renders_the_generated_crds() {
    let objects = render("default");
    for crd in crds() {
        let wanted = serde_json::to_value(&crd).unwrap_or_else(|e| panic!("{e}"));
        let found = objects
            .iter()
            .find(|o| kind(o) == "CustomResourceDefinition" && name(o) == name(&wanted))
            .unwrap_or_else(|| panic!("config/default lacks CRD {}", name(&wanted)));
        // YAML renders 1.0 as 1: compare numbers by value.
        let difference = first_difference(&normalized(&found["spec"]), &normalized(&wanted["spec"]), "spec");
        assert!(
            difference.is_none(),
            "CRD {} in config/default differs from the generated one at {difference:?}",
            name(&wanted)
        );
    }
}

#[test]
fn rbac_is_least_privilege() {
    let objects = render("default");
    let roles: Vec<&Value> = objects.iter().filter(|o| matches!(kind(o), "ClusterRole" | "Role")).collect();
    assert!(!roles.is_empty());
    for role in &roles {
        for rule in role.get("rules").and_then(Value::as_array).cloned().unwrap_or_default() {
            for field in ["apiGroups", "resources", "verbs"] {
                let values: Vec<&str> = rule
                    .get(field)
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                assert!(!values.contains(&"*"), "{} {} has a wildcard in {field}", kind(role), name(role));
            }
            let resources: Vec<&str> = rule
                .get("resources")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            assert!(!resources.contains(&"secrets"), "{} {} grants access to Secrets", kind(role), name(role));
        }
    }
    let operator = roles
        .iter()
        .find(|r| kind(r) == "ClusterRole" && name(r) == "flywheel-operator")
        .unwrap_or_else(|| panic!("no operator ClusterRole"));
    let rules = operator["rules"].as_array().cloned().unwrap_or_default();
    let verbs_for = |resource: &str| -> Vec<String> {
        rules
            .iter()
            .filter(|r| r["resources"].as_array().is_some_and(|a| a.iter().any(|x| x == resource)))
            .flat_map(|r| r["verbs"].as_array().cloned().unwrap_or_default())
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    };
    // The operator never writes spec: no update or patch on the resources themselves.
    for resource in ["modeldeployments", "feedbackpolicies", "retrainjobs"] {
        let verbs = verbs_for(resource);
        assert!(verbs.contains(&"watch".to_string()), "{resource}: {verbs:?}");
        assert!(
            !verbs.iter().any(|v| v == "update" || v == "patch" || v == "delete"),
            "{resource} spec is writable: {verbs:?}"
        );
        let status = verbs_for(&format!("{resource}/status"));
        assert!(status.contains(&"patch".to_string()), "{resource}/status: {status:?}");
    }
    assert!(verbs_for("retrainjobs").contains(&"create".to_string()));
    // Leases only in a namespaced Role.
    assert!(verbs_for("leases").is_empty(), "leases must not be granted cluster-wide");
    let election = roles.iter().find(|r| kind(r) == "Role").unwrap_or_else(|| panic!("no leader election Role"));
    assert_eq!(election.pointer("/metadata/namespace").and_then(Value::as_str), Some("flywheel-system"));
}

#[test]
fn operator_pod_is_restricted() {
    let objects = render("default");
    let deployment = objects.iter().find(|o| kind(o) == "Deployment").unwrap_or_else(|| panic!("no Deployment"));
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], Value::Bool(true));
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    for c in pod["containers"].as_array().cloned().unwrap_or_default() {
        let sc = &c["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], Value::Bool(false));
        assert_eq!(sc["readOnlyRootFilesystem"], Value::Bool(true));
        assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
        assert_ne!(sc["privileged"], Value::Bool(true));
        assert!(
            c["livenessProbe"]["httpGet"]["path"] == "/healthz" && c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        );
        assert!(c["resources"]["limits"]["memory"].is_string());
    }
    let ns = objects.iter().find(|o| kind(o) == "Namespace").unwrap_or_else(|| panic!("no Namespace"));
    assert_eq!(
        ns.pointer("/metadata/labels/pod-security.kubernetes.io~1enforce").and_then(Value::as_str),
        Some("restricted")
    );
}

#[test]
fn every_sample_is_valid() {
    let samples = render("samples");
    assert_eq!(samples.len(), 4, "one sample of each kind, and a FeedbackPolicy for the reference trainer");
    for sample in samples {
        let (crd, result) = match kind(&sample) {
            "ModelDeployment" => {
                (ModelDeployment::crd(), serde_json::from_value::<ModelDeployment>(sample.clone()).map(|_| ()))
            }
            "FeedbackPolicy" => {
                (FeedbackPolicy::crd(), serde_json::from_value::<FeedbackPolicy>(sample.clone()).map(|_| ()))
            }
            "RetrainJob" => (RetrainJob::crd(), serde_json::from_value::<RetrainJob>(sample.clone()).map(|_| ())),
            other => panic!("unexpected sample kind {other}"),
        };
        result.unwrap_or_else(|e| panic!("sample {} does not deserialize: {e}", name(&sample)));
        let schema = storage_schema(&crd).unwrap_or_else(|| panic!("schema"));
        let admitted = admit(&schema, &sample, None).unwrap_or_else(|errors| {
            panic!(
                "sample {} is invalid: {}",
                name(&sample),
                errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
            )
        });
        assert!(admitted.pruned.is_empty(), "sample {} has unknown fields {:?}", name(&sample), admitted.pruned);
    }
}

/// `config/namespaced`: the operator watches one namespace, holds the same rules as the
/// cluster-wide install in a Role there, and has no ClusterRole of its own.
#[test]
fn the_namespaced_install_grants_the_same_rules_in_the_watched_namespace_only() {
    let cluster_wide = render("default");
    let cluster_rules = cluster_wide
        .iter()
        .find(|o| kind(o) == "ClusterRole" && name(o) == "flywheel-operator")
        .map(|r| r["rules"].clone())
        .unwrap_or_else(|| panic!("no operator ClusterRole in config/default"));
    let objects = render("namespaced");
    assert!(
        !objects
            .iter()
            .any(|o| matches!(kind(o), "ClusterRole" | "ClusterRoleBinding") && name(o) == "flywheel-operator"),
        "a namespace-scoped install has no operator ClusterRole or ClusterRoleBinding"
    );
    let role = objects
        .iter()
        .find(|o| kind(o) == "Role" && name(o) == "flywheel-operator")
        .unwrap_or_else(|| panic!("no operator Role"));
    assert_eq!(role["rules"], cluster_rules, "the Role's rules drifted from config/rbac/cluster_role.yaml");
    let watched = role.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default();
    let binding = objects
        .iter()
        .find(|o| kind(o) == "RoleBinding" && name(o) == "flywheel-operator")
        .unwrap_or_else(|| panic!("no operator RoleBinding"));
    assert_eq!(binding.pointer("/metadata/namespace").and_then(Value::as_str), Some(watched));
    assert_eq!(binding["subjects"][0]["name"], "flywheel-operator");
    assert_eq!(binding["subjects"][0]["namespace"], "flywheel-system");
    let operator = objects
        .iter()
        .find(|o| kind(o) == "Deployment" && name(o) == "flywheel-operator")
        .unwrap_or_else(|| panic!("no operator Deployment"));
    let args: Vec<String> = operator
        .pointer("/spec/template/spec/containers/0/args")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    let cli = <flywheel::cmd::Cli as clap::Parser>::try_parse_from(std::iter::once("flywheel".to_string()).chain(args))
        .unwrap_or_else(|e| panic!("the operator's arguments do not parse: {e}"));
    match cli.command {
        flywheel::cmd::Command::Operator(a) => assert_eq!(a.watch_namespaces, vec![watched.to_string()]),
        other => panic!("the operator container runs {other:?}"),
    }
    // The leader-election Role stays in the operator's own namespace.
    assert!(objects.iter().any(|o| kind(o) == "Role"
        && name(o) == "flywheel-leader-election"
        && o.pointer("/metadata/namespace").and_then(Value::as_str) == Some("flywheel-system")));
}
