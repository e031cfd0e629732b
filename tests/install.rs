//! Installation: the Helm chart in `charts/flywheel` rendered for its default values and for
//! every values file in `charts/flywheel/ci/`, and the static manifest `deploy/install.yaml`.
//!
//! - What is rendered is restricted (Pod Security Standards), least-privilege (no wildcard, no
//!   Secret access, the operator never granted a write of spec), labelled, and wired: the
//!   operator's and the collector's arguments parse with the real command line, every file they
//!   name is mounted from the right volume, Services select pods, ports agree.
//! - The chart's CRDs and the static manifest do not drift from their sources.
//! - Everything applies to the simulated cluster with `kubectl apply --server-side`, and the
//!   operator, started with the manifest's arguments and a client that enforces the manifest's
//!   RBAC on every request, reconciles the samples of `config/samples`.
//!
//! helm comes from `FLYWHEEL_HELM`, `.tools/bin/helm` or PATH; without it the tests print
//! `SKIPPED` unless `CI` is set, where they fail.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use clap::Parser as _;
use common::{Cluster, TempDir, eventually, kubectl, ok};
use flywheel::cmd::Cli;
use flywheel::cmd::collector::CollectorArgs;
use flywheel::cmd::operator::OperatorArgs;
use flywheel::collector::{Collector, CollectorConfig};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DynamicObject, ListParams};
use kube::discovery::ApiResource;
use serde_json::{Value, json};

const NAMESPACE: &str = "flywheel-system";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn docs(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| {
            let v: serde_yaml::Value = serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("{e}"));
            serde_json::to_value(v).unwrap_or_else(|e| panic!("{e}"))
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn yaml(path: &Path) -> Value {
    docs(&read(path)).into_iter().next().unwrap_or(Value::Null)
}

/// The helm binary, or `None` (after saying why) when it is missing outside CI.
fn helm() -> Option<PathBuf> {
    let found = std::env::var_os("FLYWHEEL_HELM").map(PathBuf::from).or_else(|| {
        let local = root().join(".tools/bin/helm");
        if local.is_file() {
            return Some(local);
        }
        std::env::var_os("PATH")
            .and_then(|paths| std::env::split_paths(&paths).map(|p| p.join("helm")).find(|p| p.is_file()))
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "helm is required under CI: set FLYWHEEL_HELM or install it into .tools/bin (.ci/run does)"
        );
        eprintln!("SKIPPED: helm not found (FLYWHEEL_HELM, .tools/bin/helm, PATH); .ci/run installs it");
    }
    found
}

fn run(mut cmd: Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap_or_else(|e| panic!("{e}"))
}

fn template(helm: &Path, release: &str, values: Option<&Path>) -> String {
    let mut cmd = Command::new(helm);
    cmd.args(["template", release]).arg(root().join("charts/flywheel")).args(["--namespace", NAMESPACE]);
    if let Some(v) = values {
        cmd.arg("--values").arg(v);
    }
    run(cmd, &format!("helm template {release} {values:?}"))
}

/// The values files shipped for CI, one per option.
fn ci_values() -> Vec<PathBuf> {
    let dir = root().join("charts/flywheel/ci");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let names: Vec<String> = files.iter().map(|f| stem(f)).collect();
    for needed in ["postgres", "ha", "servicemonitor", "existing-secret", "crds-disabled"] {
        assert!(names.iter().any(|n| n == needed), "charts/flywheel/ci lacks {needed}-values.yaml: {names:?}");
    }
    files
}

fn stem(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().trim_end_matches("-values").to_string()).unwrap_or_default()
}

fn kind(v: &Value) -> &str {
    v["kind"].as_str().unwrap_or_default()
}

fn name(v: &Value) -> &str {
    v.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect()).unwrap_or_default()
}

/// The values a rendering was made with: the file's, over the chart's defaults.
struct Values {
    set: Value,
    defaults: Value,
}

impl Values {
    fn new(file: Option<&Path>) -> Self {
        Self { set: file.map(yaml).unwrap_or(Value::Null), defaults: yaml(&root().join("charts/flywheel/values.yaml")) }
    }

    fn get(&self, pointer: &str) -> Value {
        self.set.pointer(pointer).or_else(|| self.defaults.pointer(pointer)).cloned().unwrap_or(Value::Null)
    }

    fn text(&self, pointer: &str) -> String {
        self.get(pointer).as_str().unwrap_or_default().to_string()
    }

    fn postgres(&self) -> bool {
        !self.text("/collector/postgres/url").is_empty() || !self.text("/collector/postgres/existingSecret").is_empty()
    }
}

/// One rendering and what it was made from.
struct Rendering {
    label: String,
    release: String,
    objects: Vec<Value>,
    values: Values,
}

impl Rendering {
    fn fullname(&self) -> String {
        if self.release.contains("flywheel") { self.release.clone() } else { format!("{}-flywheel", self.release) }
    }

    fn find(&self, kind_: &str, name_: &str) -> Option<&Value> {
        self.objects.iter().find(|o| kind(o) == kind_ && name(o) == name_)
    }

    fn all(&self, kind_: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| kind(o) == kind_).collect()
    }

    /// The namespaces a namespace-scoped rendering watches (empty: every namespace).
    fn watched(&self) -> Vec<String> {
        strings(&self.values.get("/watchNamespaces"))
    }

    fn workload(&self, component: &str) -> &Value {
        self.objects
            .iter()
            .find(|o| {
                matches!(kind(o), "Deployment" | "StatefulSet")
                    && o.pointer("/metadata/labels/app.kubernetes.io~1component") == Some(&json!(component))
            })
            .unwrap_or_else(|| panic!("{}: no {component} workload", self.label))
    }
}

fn pod_spec(workload: &Value) -> &Value {
    &workload["spec"]["template"]["spec"]
}

fn container<'a>(workload: &'a Value, name_: &str) -> &'a Value {
    pod_spec(workload)["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name_))
        .unwrap_or_else(|| panic!("no container {name_} in {}", name(workload)))
}

fn port_of(c: &Value, port_name: &str) -> u16 {
    c["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == port_name))
        .and_then(|p| p["containerPort"].as_u64())
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or_else(|| panic!("no port {port_name} in container {}", c["name"]))
}

/// The command line of a container, parsed by the binary's own parser.
fn parse(c: &Value) -> Cli {
    let args: Vec<String> = std::iter::once("flywheel".to_string()).chain(strings(&c["args"])).collect();
    Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("`{}` does not parse: {e}", args.join(" ")))
}

fn operator_args(c: &Value) -> OperatorArgs {
    match parse(c).command {
        flywheel::cmd::Command::Operator(a) => a,
        other => panic!("the operator container runs {other:?}"),
    }
}

fn collector_args(c: &Value) -> CollectorArgs {
    match parse(c).command {
        flywheel::cmd::Command::Collector(a) => a,
        other => panic!("the collector container runs {other:?}"),
    }
}

/// The volume behind `file` in container `c` of `workload`: (volume, volumeMount).
fn volume_of<'a>(workload: &'a Value, c: &'a Value, file: &Path) -> (&'a Value, &'a Value) {
    let mount = c["volumeMounts"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["mountPath"].as_str().is_some_and(|p| file.starts_with(p))))
        .unwrap_or_else(|| panic!("{} is on no volume of {}", file.display(), name(workload)));
    let volume_name = &mount["name"];
    let volume = pod_spec(workload)["volumes"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| &v["name"] == volume_name))
        .or_else(|| {
            workload["spec"]["volumeClaimTemplates"]
                .as_array()
                .and_then(|ts| ts.iter().find(|t| &t["metadata"]["name"] == volume_name))
        })
        .unwrap_or_else(|| panic!("volume {volume_name} of {} is not defined", name(workload)));
    (volume, mount)
}

/// The file inside a Secret volume: (Secret name, key).
fn secret_file(workload: &Value, c: &Value, file: &Path) -> (String, String) {
    let (volume, mount) = volume_of(workload, c, file);
    let secret = &volume["secret"];
    let secret_name = secret["secretName"].as_str().unwrap_or_else(|| panic!("{} is not on a Secret", file.display()));
    let relative = file
        .strip_prefix(mount["mountPath"].as_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}"))
        .to_string_lossy()
        .into_owned();
    let key = secret["items"]
        .as_array()
        .and_then(|items| items.iter().find(|i| i["path"] == relative.as_str()))
        .and_then(|i| i["key"].as_str())
        .map_or_else(|| relative.clone(), str::to_string);
    (secret_name.to_string(), key)
}

fn labels(v: &Value) -> BTreeMap<String, String> {
    serde_json::from_value(v.pointer("/metadata/labels").cloned().unwrap_or(json!({}))).unwrap_or_default()
}

fn matches(selector: &Value, target: &BTreeMap<String, String>) -> bool {
    let wanted: BTreeMap<String, String> = serde_json::from_value(selector.clone()).unwrap_or_default();
    !wanted.is_empty() && wanted.iter().all(|(k, v)| target.get(k) == Some(v))
}

fn check_pods_are_restricted(r: &Rendering) {
    for w in r.objects.iter().filter(|o| matches!(kind(o), "Deployment" | "StatefulSet" | "DaemonSet" | "Job")) {
        let what = format!("{}: {} {}", r.label, kind(w), name(w));
        let pod = pod_spec(w);
        let psc = &pod["securityContext"];
        assert_eq!(psc["runAsNonRoot"], true, "{what}: pod runAsNonRoot");
        assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault", "{what}: pod seccomp");
        assert_ne!(psc["runAsUser"], 0, "{what}: root");
        for host in ["hostNetwork", "hostPID", "hostIPC"] {
            assert_ne!(pod[host], true, "{what}: {host}");
        }
        for v in pod["volumes"].as_array().cloned().unwrap_or_default() {
            assert!(v.get("hostPath").is_none(), "{what}: hostPath volume {}", v["name"]);
        }
        let containers: Vec<Value> = ["initContainers", "containers"]
            .iter()
            .flat_map(|k| pod[*k].as_array().cloned().unwrap_or_default())
            .collect();
        assert!(!containers.is_empty(), "{what}: no containers");
        for c in containers {
            let sc = &c["securityContext"];
            let cw = format!("{what} container {}", c["name"]);
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{cw}");
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{cw}");
            assert_ne!(sc["privileged"], true, "{cw}");
            assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{cw}");
            assert!(sc["capabilities"].get("add").is_none(), "{cw}: adds capabilities");
            assert!(sc["runAsNonRoot"] == true || psc["runAsNonRoot"] == true, "{cw}: runAsNonRoot");
            assert_ne!(sc["runAsUser"], 0, "{cw}: root");
            assert!(
                sc["seccompProfile"]["type"] == "RuntimeDefault" || psc["seccompProfile"]["type"] == "RuntimeDefault",
                "{cw}: seccomp"
            );
            assert!(c["resources"]["limits"]["memory"].is_string(), "{cw}: no memory limit");
            assert!(c["resources"]["requests"]["cpu"].is_string(), "{cw}: no CPU request");
            assert!(c["livenessProbe"].is_object() && c["readinessProbe"].is_object(), "{cw}: probes");
            // A read-only root: whatever writes has a volume (/tmp at least).
            let mounts: Vec<String> = c["volumeMounts"]
                .as_array()
                .map(|ms| ms.iter().filter_map(|m| m["mountPath"].as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            assert!(mounts.iter().any(|m| m == "/tmp"), "{cw}: no writable /tmp");
        }
    }
}

fn check_rbac(r: &Rendering) {
    let roles: Vec<&Value> = r.objects.iter().filter(|o| matches!(kind(o), "ClusterRole" | "Role")).collect();
    let watched = r.watched();
    let rbac = r.values.get("/rbac/create") != false;
    assert_eq!(!roles.is_empty(), rbac, "{}: RBAC rendered iff rbac.create", r.label);
    for role in &roles {
        for rule in role["rules"].as_array().cloned().unwrap_or_default() {
            for field in ["apiGroups", "resources", "verbs", "nonResourceURLs", "resourceNames"] {
                assert!(
                    !strings(&rule[field]).iter().any(|x| x.contains('*')),
                    "{}: {} {} has a wildcard in {field}",
                    r.label,
                    kind(role),
                    name(role)
                );
            }
            assert!(
                !strings(&rule["resources"]).iter().any(|x| x == "secrets" || x.starts_with("secrets/")),
                "{}: {} {} grants access to Secrets",
                r.label,
                kind(role),
                name(role)
            );
            if kind(role) == "Role" {
                let ns = role.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default();
                assert!(ns == NAMESPACE || watched.iter().any(|w| w == ns), "{}: Role {} in {ns}", r.label, name(role));
            }
        }
    }
    if !rbac {
        return;
    }
    let operator = format!("{}-operator", r.fullname());
    // The same rules as config/rbac (the kustomize install): one least-privilege set, in a
    // ClusterRole, or in a Role per watched namespace for a namespace-scoped install.
    let config_rules = yaml(&root().join("config/rbac/cluster_role.yaml"))["rules"].clone();
    let operator_roles: Vec<&Value> = if watched.is_empty() {
        vec![r.find("ClusterRole", &operator).unwrap_or_else(|| panic!("{}: no ClusterRole {operator}", r.label))]
    } else {
        assert!(
            r.find("ClusterRole", &operator).is_none(),
            "{}: a namespace-scoped install has no ClusterRole",
            r.label
        );
        assert!(r.find("ClusterRoleBinding", &operator).is_none(), "{}: nor a ClusterRoleBinding", r.label);
        watched
            .iter()
            .map(|ns| {
                r.objects
                    .iter()
                    .find(|o| {
                        kind(o) == "Role" && name(o) == operator && o.pointer("/metadata/namespace") == Some(&json!(ns))
                    })
                    .unwrap_or_else(|| panic!("{}: no Role {operator} in {ns}", r.label))
            })
            .collect()
    };
    for role in &operator_roles {
        assert_eq!(role["rules"], config_rules, "{}: the operator's {} differs from config/rbac", r.label, kind(role));
    }
    let cluster_role = operator_roles[0];
    let election = r
        .find("Role", &format!("{}-leader-election", r.fullname()))
        .unwrap_or_else(|| panic!("{}: no leader election Role", r.label));
    assert_eq!(election["rules"], yaml(&root().join("config/rbac/common/leader_election_role.yaml"))["rules"]);
    let rules = cluster_role["rules"].as_array().cloned().unwrap_or_default();
    let verbs_for = |resource: &str| -> Vec<String> {
        rules
            .iter()
            .filter(|x| strings(&x["resources"]).iter().any(|y| y == resource))
            .flat_map(|x| strings(&x["verbs"]))
            .collect()
    };
    for resource in ["modeldeployments", "feedbackpolicies", "retrainjobs"] {
        let verbs = verbs_for(resource);
        assert!(!verbs.iter().any(|v| matches!(v.as_str(), "update" | "patch" | "delete")), "{resource}: {verbs:?}");
    }
    assert!(verbs_for("leases").is_empty(), "leases only in the namespaced Role");
    // The bindings name the ServiceAccount the operator runs as.
    let sa = pod_spec(r.workload("operator"))["serviceAccountName"].as_str().unwrap_or_default().to_string();
    for binding in r.objects.iter().filter(|o| matches!(kind(o), "ClusterRoleBinding" | "RoleBinding")) {
        assert_eq!(binding["subjects"][0]["name"], sa.as_str(), "{}: {} {}", r.label, kind(binding), name(binding));
        assert_eq!(binding["subjects"][0]["namespace"], NAMESPACE);
        let role_kind = binding["roleRef"]["kind"].as_str().unwrap_or_default();
        let role_name = binding["roleRef"]["name"].as_str().unwrap_or_default();
        let binding_ns = binding.pointer("/metadata/namespace");
        assert!(
            r.objects.iter().any(|o| kind(o) == role_kind
                && name(o) == role_name
                && (role_kind == "ClusterRole" || o.pointer("/metadata/namespace") == binding_ns)),
            "{}: {} binds a missing {role_kind} {role_name}",
            r.label,
            name(binding)
        );
    }
}

fn check_labels(r: &Rendering) {
    for o in &r.objects {
        let l = labels(o);
        let what = format!("{}: {} {}", r.label, kind(o), name(o));
        for key in [
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/version",
            "app.kubernetes.io/managed-by",
            "app.kubernetes.io/part-of",
            "helm.sh/chart",
        ] {
            assert!(l.contains_key(key), "{what} lacks label {key}: {l:?}");
        }
        assert_eq!(l.get("app.kubernetes.io/instance"), Some(&r.release), "{what}");
        assert_eq!(l.get("app.kubernetes.io/version").map(String::as_str), Some(env!("CARGO_PKG_VERSION")), "{what}");
        assert_eq!(l.get("helm.sh/chart"), Some(&format!("flywheel-{}", env!("CARGO_PKG_VERSION"))), "{what}");
        let cluster_scoped =
            matches!(kind(o), "Namespace" | "ClusterRole" | "ClusterRoleBinding" | "CustomResourceDefinition");
        let ns = o.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default();
        if matches!(kind(o), "Role" | "RoleBinding") && r.watched().iter().any(|w| w == ns) {
            // A namespace-scoped install's Role and RoleBinding in a watched namespace.
        } else if !cluster_scoped {
            assert_eq!(ns, NAMESPACE, "{what}: namespace");
        }
        if matches!(kind(o), "Deployment" | "StatefulSet") {
            let pod_labels = labels(&o["spec"]["template"]);
            assert!(
                matches(&o["spec"]["selector"]["matchLabels"], &pod_labels),
                "{what}: selector does not match its pods"
            );
            assert!(pod_labels.contains_key("app.kubernetes.io/component"), "{what}");
        }
    }
}

fn check_operator(r: &Rendering) {
    let w = r.workload("operator");
    assert_eq!(kind(w), "Deployment");
    let replicas = r.values.get("/operator/replicaCount").as_i64().unwrap_or(1);
    assert_eq!(w["spec"]["replicas"].as_i64(), Some(replicas), "{}", r.label);
    let c = container(w, "operator");
    let args = operator_args(c);
    assert!(args.leader_elect, "{}: leader election is on", r.label);
    assert!(args.retry_period < args.renew_deadline && args.renew_deadline < args.lease_duration);
    assert_eq!(args.lease_name, format!("{}-operator", r.fullname()));
    assert_eq!(args.watch_namespaces, r.watched(), "{}: the operator watches what its RBAC allows", r.label);
    assert_eq!(args.metrics_listen.port(), port_of(c, "metrics"), "{}: metrics port", r.label);
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        assert_eq!(c[probe]["httpGet"]["port"], "metrics", "{} {probe}", r.label);
    }
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    let env = c["env"].as_array().cloned().unwrap_or_default();
    let field_ref =
        |n: &str| env.iter().find(|e| e["name"] == n).map(|e| e["valueFrom"]["fieldRef"]["fieldPath"].clone());
    assert_eq!(field_ref("POD_NAMESPACE"), Some(json!("metadata.namespace")), "the Lease lives in its own namespace");
    assert_eq!(field_ref("POD_NAME"), Some(json!("metadata.name")), "the pod name is the Lease identity");
    // The operator talks to this release's collector, with the collector's token.
    let collector_service = format!("{}-collector", r.fullname());
    let port = r.values.get("/collector/port").as_u64().unwrap_or(0);
    assert_eq!(args.collector_url, Some(format!("http://{collector_service}.{NAMESPACE}.svc:{port}")), "{}", r.label);
    let token_file =
        args.collector_token_file.clone().unwrap_or_else(|| panic!("{}: no --collector-token-file", r.label));
    assert_eq!(secret_file(w, c, &token_file), (token_secret(r), "token".to_string()), "{}", r.label);
    assert_eq!(args.collector_token_secret, r.values.text("/operator/collectorTokenSecret"));
    assert_eq!(args.image.as_deref(), c["image"].as_str(), "{}: inference pods get the operator's own image", r.label);
    let image = format!(
        "{}:{}",
        r.values.text("/image/repository"),
        Some(r.values.text("/image/tag"))
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string())
    );
    assert_eq!(c["image"], image.as_str());
    let pdb = r
        .all("PodDisruptionBudget")
        .into_iter()
        .find(|p| matches(&p["spec"]["selector"]["matchLabels"], &labels(&w["spec"]["template"])));
    assert_eq!(pdb.is_some(), replicas > 1, "{}: a PodDisruptionBudget iff more than one replica", r.label);
}

fn token_secret(r: &Rendering) -> String {
    Some(r.values.text("/collector/auth/existingSecret"))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("{}-collector-token", r.fullname()))
}

fn check_collector(r: &Rendering) {
    let w = r.workload("collector");
    let postgres = r.values.postgres();
    assert_eq!(kind(w), if postgres { "Deployment" } else { "StatefulSet" }, "{}", r.label);
    let c = container(w, "collector");
    let args = collector_args(c);
    let port = port_of(c, "http");
    assert_eq!(args.listen.port(), port, "{}", r.label);
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    let token_file = args.token_file.clone().unwrap_or_else(|| panic!("{}: no --token-file", r.label));
    assert_eq!(secret_file(w, c, &token_file), (token_secret(r), "token".to_string()), "{}", r.label);
    let (data, _) = volume_of(w, c, &args.data_dir.join("collector.db"));
    if postgres {
        assert!(data.get("emptyDir").is_some() || data.get("persistentVolumeClaim").is_some(), "{}", r.label);
        let env = c["env"].as_array().cloned().unwrap_or_default();
        let url = env
            .iter()
            .find(|e| e["name"] == "FLYWHEEL_DATABASE_URL")
            .unwrap_or_else(|| panic!("{}: no database URL", r.label));
        let secret = url["valueFrom"]["secretKeyRef"]["name"].as_str().unwrap_or_default();
        let existing = r.values.text("/collector/postgres/existingSecret");
        if existing.is_empty() {
            let s = r.find("Secret", secret).unwrap_or_else(|| panic!("{}: no Secret {secret}", r.label));
            assert!(s["data"][url["valueFrom"]["secretKeyRef"]["key"].as_str().unwrap_or_default()].is_string());
        } else {
            assert_eq!(secret, existing);
        }
    } else {
        assert_eq!(w["spec"]["replicas"], 1, "{}: SQLite serves one replica", r.label);
        assert!(
            data["spec"]["resources"]["requests"]["storage"].is_string(),
            "{}: a claim for the data directory",
            r.label
        );
        let headless = w["spec"]["serviceName"].as_str().unwrap_or_default();
        assert_eq!(r.find("Service", headless).map(|s| s["spec"]["clusterIP"].clone()), Some(json!("None")));
    }
    // The token Secret: generated, with a token the collector accepts, or the user's own.
    let secret = token_secret(r);
    if r.values.text("/collector/auth/existingSecret").is_empty() {
        let s = r.find("Secret", &secret).unwrap_or_else(|| panic!("{}: no Secret {secret}", r.label));
        let encoded = s["data"]["token"].as_str().unwrap_or_default();
        let token = base64::engine::general_purpose::STANDARD.decode(encoded).unwrap_or_else(|e| panic!("{e}"));
        let dir = TempDir::new("flywheel-install-token");
        let file = dir.0.join("token");
        std::fs::write(&file, &token).unwrap_or_else(|e| panic!("{e}"));
        flywheel::collector::auth::Tokens::load_or_generate(Some(&file), &dir.0)
            .unwrap_or_else(|e| panic!("{}: the collector refuses the generated token: {e}", r.label));
        assert!(token.len() >= 32, "{}: a short token", r.label);
    } else {
        assert!(r.find("Secret", &secret).is_none(), "{}: existingSecret is not rendered", r.label);
    }
    let replicas = w["spec"]["replicas"].as_i64().unwrap_or(1);
    let pdb = r
        .all("PodDisruptionBudget")
        .into_iter()
        .find(|p| matches(&p["spec"]["selector"]["matchLabels"], &labels(&w["spec"]["template"])));
    assert_eq!(pdb.is_some(), replicas > 1, "{}: collector PodDisruptionBudget", r.label);
}

fn check_services(r: &Rendering) {
    let pods: Vec<(String, BTreeMap<String, String>, Value)> = r
        .objects
        .iter()
        .filter(|o| matches!(kind(o), "Deployment" | "StatefulSet"))
        .map(|w| {
            (name(w).to_string(), labels(&w["spec"]["template"]), w["spec"]["template"]["spec"]["containers"].clone())
        })
        .collect();
    for s in r.all("Service") {
        let (_, _, containers) = pods
            .iter()
            .find(|(_, l, _)| matches(&s["spec"]["selector"], l))
            .unwrap_or_else(|| panic!("{}: Service {} selects no pods", r.label, name(s)));
        for p in s["spec"]["ports"].as_array().cloned().unwrap_or_default() {
            let target = p["targetPort"].as_str().unwrap_or_default();
            let served = containers.as_array().is_some_and(|cs| {
                cs.iter().any(|c| c["ports"].as_array().is_some_and(|ps| ps.iter().any(|x| x["name"] == target)))
            });
            assert!(served, "{}: Service {} targets port {target}, which no container names", r.label, name(s));
        }
    }
    let monitors = r.all("ServiceMonitor");
    assert_eq!(!monitors.is_empty(), r.values.get("/serviceMonitor/enabled") == true, "{}", r.label);
    for m in monitors {
        let scraped: Vec<&Value> = r
            .all("Service")
            .into_iter()
            .filter(|s| labels(s).get("flywheel.dev/metrics").is_some_and(|v| v == "true"))
            .collect();
        assert_eq!(scraped.len(), 2, "{}: the operator's and the collector's metrics Services", r.label);
        for e in m["spec"]["endpoints"].as_array().cloned().unwrap_or_default() {
            assert!(
                scraped
                    .iter()
                    .any(|s| s["spec"]["ports"].as_array().is_some_and(|ps| ps.iter().any(|p| p["name"] == e["port"]))),
                "{}: ServiceMonitor endpoint port {} is on no scraped Service",
                r.label,
                e["port"]
            );
        }
    }
}

fn check_network_policies(r: &Rendering) {
    let policies = r.all("NetworkPolicy");
    if r.values.get("/networkPolicy/enabled") == false {
        assert!(policies.is_empty(), "{}", r.label);
        return;
    }
    let operator_pods = labels(&r.workload("operator")["spec"]["template"]);
    let collector_pods = labels(&r.workload("collector")["spec"]["template"]);
    let deny = policies
        .iter()
        .find(|p| p["spec"].get("ingress").is_none() && p["spec"].get("egress").is_none())
        .unwrap_or_else(|| panic!("{}: no default-deny NetworkPolicy", r.label));
    assert_eq!(strings(&deny["spec"]["policyTypes"]), vec!["Ingress", "Egress"]);
    for pods in [&operator_pods, &collector_pods] {
        assert!(
            matches(&deny["spec"]["podSelector"]["matchLabels"], pods),
            "{}: default deny misses {pods:?}",
            r.label
        );
    }
    let for_pods = |pods: &BTreeMap<String, String>| {
        policies
            .iter()
            .find(|p| p["spec"].get("egress").is_some() && matches(&p["spec"]["podSelector"]["matchLabels"], pods))
            .copied()
            .unwrap_or_else(|| panic!("{}: no NetworkPolicy for {pods:?}", r.label))
    };
    let operator = for_pods(&operator_pods);
    let api_ports: BTreeSet<i64> = operator["spec"]["egress"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|e| e["to"].as_array().is_some_and(|to| to.iter().any(|t| t.get("ipBlock").is_some())))
        .flat_map(|e| e["ports"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["port"].as_i64())
        .collect();
    assert!(
        api_ports.contains(&443) && api_ports.contains(&6443),
        "{}: the operator reaches the API server: {api_ports:?}",
        r.label
    );
    let reaches_collector = operator["spec"]["egress"].as_array().is_some_and(|es| {
        es.iter().any(|e| {
            e["to"]
                .as_array()
                .is_some_and(|to| to.iter().any(|t| matches(&t["podSelector"]["matchLabels"], &collector_pods)))
        })
    });
    assert!(reaches_collector, "{}: the operator reaches the collector", r.label);
    let collector = for_pods(&collector_pods);
    let from_operator = collector["spec"]["ingress"].as_array().is_some_and(|is| {
        is.iter().any(|i| {
            i["from"]
                .as_array()
                .is_some_and(|f| f.iter().any(|p| matches(&p["podSelector"]["matchLabels"], &operator_pods)))
        })
    });
    assert!(from_operator, "{}: the collector admits the operator", r.label);
}

fn check_crds(r: &Rendering) {
    let crds = r.all("CustomResourceDefinition");
    if r.values.get("/crds/enabled") == false {
        assert!(crds.is_empty(), "{}: crds.enabled=false", r.label);
        return;
    }
    assert_eq!(crds.len(), 3, "{}", r.label);
    let keep = r.values.get("/crds/keep") != false;
    for crd in crds {
        let source = yaml(&root().join("crds").join(format!("{}.yaml", name(crd))));
        assert_eq!(
            crd["spec"],
            source["spec"],
            "{}: CRD {} drifted from crds/ (run hack/gen-install.sh)",
            r.label,
            name(crd)
        );
        let policy = crd.pointer("/metadata/annotations/helm.sh~1resource-policy");
        assert_eq!(policy == Some(&json!("keep")), keep, "{}: CRD {} keep annotation", r.label, name(crd));
    }
}

fn check_all(r: &Rendering) {
    check_pods_are_restricted(r);
    check_rbac(r);
    check_labels(r);
    check_operator(r);
    check_collector(r);
    check_services(r);
    check_network_policies(r);
    check_crds(r);
}

#[test]
fn chart_version_follows_the_crate() {
    let chart = yaml(&root().join("charts/flywheel/Chart.yaml"));
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
    let values = yaml(&root().join("charts/flywheel/values.yaml"));
    assert_eq!(values["image"]["repository"], "ghcr.io/flywheel-dev/flywheel");
    assert_eq!(
        flywheel::operator::default_image(),
        format!("ghcr.io/flywheel-dev/flywheel:{}", env!("CARGO_PKG_VERSION"))
    );
}

/// Every value in values.yaml is described by values.schema.json, which rejects unknown ones.
#[test]
fn the_schema_covers_every_value() {
    fn walk(values: &Value, schema: &Value, path: &str) {
        if let Value::Object(map) = values {
            if schema.get("properties").is_none() {
                // A free-form map (labels, nodeSelector, affinity, resources).
                return;
            }
            assert_eq!(schema["additionalProperties"], false, "{path}: the schema accepts unknown keys");
            for (k, v) in map {
                let sub = &schema["properties"][k];
                assert!(sub.is_object(), "{path}.{k} is not in values.schema.json");
                assert!(sub["description"].is_string(), "{path}.{k} has no description in the schema");
                walk(v, sub, &format!("{path}.{k}"));
            }
        }
    }
    let values = yaml(&root().join("charts/flywheel/values.yaml"));
    let schema: Value = serde_json::from_str(&read(&root().join("charts/flywheel/values.schema.json")))
        .unwrap_or_else(|e| panic!("{e}"));
    walk(&values, &schema, "");
    // And docs/values.md names every leaf.
    let doc = read(&root().join("docs/values.md"));
    fn leaves(v: &Value, path: &str, out: &mut Vec<String>) {
        match v {
            Value::Object(map) if !map.is_empty() && !path.ends_with("resources") => {
                for (k, x) in map {
                    leaves(x, &if path.is_empty() { k.clone() } else { format!("{path}.{k}") }, out);
                }
            }
            _ => out.push(path.to_string()),
        }
    }
    let mut all = Vec::new();
    leaves(&values, "", &mut all);
    for leaf in all {
        assert!(doc.contains(&format!("`{leaf}`")), "docs/values.md does not describe `{leaf}`");
    }
}

#[test]
fn every_rendering_is_restricted_least_privilege_labelled_and_wired() {
    let Some(helm) = helm() else { return };
    let mut renderings = vec![Rendering {
        label: "default values".into(),
        release: "flywheel".into(),
        objects: docs(&template(&helm, "flywheel", None)),
        values: Values::new(None),
    }];
    for file in ci_values() {
        let release = format!("ci-{}", stem(&file));
        renderings.push(Rendering {
            label: format!("ci/{}", file.file_name().unwrap_or_default().to_string_lossy()),
            objects: docs(&template(&helm, &release, Some(&file))),
            release,
            values: Values::new(Some(&file)),
        });
    }
    let install_values = root().join("deploy/install-values.yaml");
    renderings.push(Rendering {
        label: "deploy/install.yaml".into(),
        release: "flywheel".into(),
        objects: docs(&read(&root().join("deploy/install.yaml"))),
        values: Values::new(Some(&install_values)),
    });
    for r in &renderings {
        assert!(r.objects.len() >= 10, "{}: {} objects", r.label, r.objects.len());
        check_all(r);
    }
    // The static manifest: its own restricted namespace, and no secret value committed.
    let manifest = renderings.last().unwrap_or_else(|| panic!("no manifest"));
    assert!(manifest.all("Secret").is_empty(), "deploy/install.yaml must not carry a token");
    let ns = manifest.find("Namespace", NAMESPACE).unwrap_or_else(|| panic!("deploy/install.yaml: no Namespace"));
    assert_eq!(labels(ns).get("pod-security.kubernetes.io/enforce").map(String::as_str), Some("restricted"));
    assert_eq!(kind(&manifest.objects[0]), "Namespace", "the Namespace comes first");
}

#[test]
fn invalid_values_are_refused() {
    let Some(helm) = helm() else { return };
    for (set, expect) in [
        ("collector.replicaCount=2", "needs PostgreSQL"),
        ("unknownKey=1", "unknownKey"),
        ("securityContext.runAsUser=0", "runAsUser"),
        ("operator.leaderElection.retryPeriod=30", "retryPeriod < renewDeadline < leaseDuration"),
        ("logging.format=xml", "format"),
    ] {
        let out = Command::new(&helm)
            .args(["template", "flywheel"])
            .arg(root().join("charts/flywheel"))
            .args(["--set", set])
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--set {set} was accepted");
        assert!(stderr.contains(expect), "--set {set}: {stderr}");
    }
}

#[test]
fn generated_files_do_not_drift() {
    let Some(helm) = helm() else { return };
    let out = Command::new("bash")
        .arg(root().join("hack/gen-install.sh"))
        .arg("--check")
        .env("FLYWHEEL_HELM", &helm)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// `kubectl create secret generic`, rendered client-side and applied server-side (the
/// simulated API server speaks JSON, not the protobuf kubectl's create sends).
fn create_token_secret(cluster: &Cluster, namespace: &str, secret: &str, literal: &str) {
    let rendered = ok(
        &kubectl(
            cluster,
            &["-n", namespace, "create", "secret", "generic", secret, literal, "--dry-run=client", "-o", "yaml"],
            None,
        ),
        "render the token Secret",
    );
    ok(
        &kubectl(cluster, &["-n", namespace, "apply", "--server-side", "-f", "-"], Some(&rendered)),
        "apply the token Secret",
    );
}

/// The RBAC rules granted to one ServiceAccount by a set of objects: cluster-wide and per
/// namespace.
#[derive(Default, Debug)]
struct Grants {
    cluster: Vec<Value>,
    namespaced: BTreeMap<String, Vec<Value>>,
}

impl Grants {
    fn of(objects: &[Value], namespace: &str, service_account: &str) -> Self {
        let mut grants = Grants::default();
        let rules = |role_kind: &str, role: &str, ns: Option<&str>| -> Vec<Value> {
            objects
                .iter()
                .find(|o| {
                    kind(o) == role_kind
                        && name(o) == role
                        && (ns.is_none() || o.pointer("/metadata/namespace").and_then(Value::as_str) == ns)
                })
                .map(|o| o["rules"].as_array().cloned().unwrap_or_default())
                .unwrap_or_default()
        };
        for b in objects.iter().filter(|o| matches!(kind(o), "ClusterRoleBinding" | "RoleBinding")) {
            let bound = b["subjects"].as_array().is_some_and(|ss| {
                ss.iter().any(|s| {
                    s["kind"] == "ServiceAccount" && s["name"] == service_account && s["namespace"] == namespace
                })
            });
            if !bound {
                continue;
            }
            let role_kind = b["roleRef"]["kind"].as_str().unwrap_or_default();
            let role = b["roleRef"]["name"].as_str().unwrap_or_default();
            if kind(b) == "ClusterRoleBinding" {
                grants.cluster.extend(rules(role_kind, role, None));
            } else {
                let ns = b.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default().to_string();
                let found =
                    if role_kind == "Role" { rules(role_kind, role, Some(&ns)) } else { rules(role_kind, role, None) };
                grants.namespaced.entry(ns).or_default().extend(found);
            }
        }
        grants
    }

    fn allows(&self, verb: &str, group: &str, resource: &str, namespace: Option<&str>) -> bool {
        let permits = |rule: &Value| {
            strings(&rule["apiGroups"]).iter().any(|g| g == group)
                && strings(&rule["resources"]).iter().any(|r| r == resource)
                && strings(&rule["verbs"]).iter().any(|v| v == verb)
        };
        self.cluster.iter().any(permits)
            || namespace.and_then(|ns| self.namespaced.get(ns)).is_some_and(|rules| rules.iter().any(permits))
    }
}

/// An API request as RBAC sees it: (verb, group, resource[/subresource], namespace), or `None`
/// for discovery (allowed to every authenticated user).
fn attributes(method: &http::Method, uri: &http::Uri) -> Option<(String, String, String, Option<String>)> {
    let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    let (group, rest): (&str, &[&str]) = match segments.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (group, rest),
        _ => return None,
    };
    if rest.is_empty() {
        return None;
    }
    let (namespace, rest) =
        if rest[0] == "namespaces" && rest.len() >= 3 { (Some(rest[1].to_string()), &rest[2..]) } else { (None, rest) };
    let name = rest.get(1);
    let resource = match rest.get(2) {
        Some(sub) => format!("{}/{sub}", rest[0]),
        None => rest[0].to_string(),
    };
    let watch = uri.query().is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    let verb = match *method {
        http::Method::GET if watch => "watch",
        http::Method::GET | http::Method::HEAD if name.is_some() => "get",
        http::Method::GET | http::Method::HEAD => "list",
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE if name.is_some() => "delete",
        http::Method::DELETE => "deletecollection",
        _ => "unknown",
    };
    Some((verb.to_string(), group.to_string(), resource, namespace))
}

#[derive(Default)]
struct Audit {
    allowed: BTreeSet<String>,
    denied: Vec<String>,
}

/// A client for the cluster that refuses, as an API server would with 403, every request the
/// grants do not allow, and records what it saw.
async fn client_as(cluster: &Cluster, grants: Grants, audit: Arc<Mutex<Audit>>) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(&cluster.kubeconfig).unwrap_or_else(|e| panic!("{e}"));
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let grants = Arc::new(grants);
    let check = move |request: http::Request<kube::client::Body>| -> Result<http::Request<kube::client::Body>, tower::BoxError> {
        let Some((verb, group, resource, namespace)) = attributes(request.method(), request.uri()) else {
            return Ok(request);
        };
        let line = format!("{verb} {group}/{resource} in {}", namespace.as_deref().unwrap_or("(cluster)"));
        let mut audit = audit.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if grants.allows(&verb, &group, &resource, namespace.as_deref()) {
            audit.allowed.insert(line);
            Ok(request)
        } else {
            audit.denied.push(line.clone());
            Err(format!("forbidden by the manifest's RBAC: {line}").into())
        }
    };
    kube::client::ClientBuilder::try_from(config)
        .unwrap_or_else(|e| panic!("{e}"))
        .with_layer(&tower::filter::FilterLayer::new(check))
        .build()
}

fn dynamic(group: &str, version: &str, kind_: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: if group.is_empty() { version.into() } else { format!("{group}/{version}") },
        kind: kind_.into(),
        plural: plural.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_and_the_manifest_install_and_reconcile_the_samples() {
    let Some(helm) = helm() else { return };
    let cluster = Cluster::start().await;
    if cluster.sim_only("installs Flywheel cluster-wide into flywheel-system").is_none() {
        return;
    }
    let manifest_path = root().join("deploy/install.yaml");
    let manifest = docs(&read(&manifest_path));

    // kubectl, as docs/install.md says: the manifest, then the collector token.
    let path = manifest_path.to_string_lossy().into_owned();
    let out = ok(&kubectl(&cluster, &["apply", "--server-side", "-f", &path], None), "apply deploy/install.yaml");
    assert_eq!(out.lines().filter(|l| l.ends_with("serverside-applied")).count(), manifest.len(), "{out}");
    let token = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    let literal = format!("--from-literal=token={token}");
    create_token_secret(&cluster, NAMESPACE, "flywheel-collector-token", &literal);
    for crd in ["modeldeployments", "feedbackpolicies", "retrainjobs"] {
        let target = format!("crd/{crd}.flywheel.dev");
        ok(
            &kubectl(&cluster, &["wait", "--for=condition=Established", &target, "--timeout=30s"], None),
            "wait for CRDs",
        );
    }

    // The chart, for every values file, each as its own release beside the manifest's.
    let servicemonitor_crd = root().join("tests/fixtures/servicemonitor-crd.yaml").to_string_lossy().into_owned();
    ok(
        &kubectl(&cluster, &["apply", "--server-side", "-f", &servicemonitor_crd], None),
        "apply the ServiceMonitor CRD",
    );
    ok(
        &kubectl(
            &cluster,
            &["wait", "--for=condition=Established", "crd/servicemonitors.monitoring.coreos.com", "--timeout=30s"],
            None,
        ),
        "wait for the ServiceMonitor CRD",
    );
    let mut variants: Vec<(String, Option<PathBuf>)> = vec![("default".into(), None)];
    variants.extend(ci_values().into_iter().map(|f| (stem(&f), Some(f))));
    for (label, values) in &variants {
        // A namespace-scoped install puts its Roles into namespaces that must exist.
        for ns in strings(&Values::new(values.as_deref()).get("/watchNamespaces")) {
            let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(cluster.client.clone());
            let body = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap_or_else(|e| panic!("{e}"));
            match api.create(&kube::api::PostParams::default(), &body).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => panic!("creating namespace {ns}: {e}"),
            }
        }
        let rendered = template(&helm, &format!("ci-{label}"), values.as_deref());
        let count = docs(&rendered).len();
        let out = ok(
            &kubectl(&cluster, &["apply", "--server-side", "-f", "-"], Some(&rendered)),
            &format!("apply the chart ({label})"),
        );
        assert_eq!(out.lines().filter(|l| l.contains("serverside-applied")).count(), count, "{label}: {out}");
    }
    let listed = ok(
        &kubectl(
            &cluster,
            &[
                "-n",
                NAMESPACE,
                "get",
                "deployments,statefulsets,services,networkpolicies,poddisruptionbudgets",
                "-o",
                "name",
            ],
            None,
        ),
        "get",
    );
    for object in [
        "deployment.apps/flywheel-operator",
        "statefulset.apps/flywheel-collector",
        "deployment.apps/ci-postgres-flywheel-collector",
        "poddisruptionbudget.policy/ci-ha-flywheel-operator",
        "networkpolicy.networking.k8s.io/flywheel-default-deny",
        "service/flywheel-collector",
    ] {
        assert!(listed.lines().any(|l| l == object), "{object} not in {listed}");
    }

    // The collector, from the manifest's own arguments, with the token as the kubelet would
    // mount it from the Secret.
    let find = |k: &str, n: &str| {
        manifest
            .iter()
            .find(|o| kind(o) == k && name(o) == n)
            .unwrap_or_else(|| panic!("deploy/install.yaml: no {k} {n}"))
    };
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), NAMESPACE);
    let secret = secrets.get("flywheel-collector-token").await.unwrap_or_else(|e| panic!("{e}"));
    let mounted = secret.data.and_then(|d| d.get("token").cloned()).unwrap_or_else(|| panic!("no key token"));
    let dir = TempDir::new("flywheel-install");
    let token_file = dir.0.join("token");
    std::fs::write(&token_file, &mounted.0).unwrap_or_else(|e| panic!("{e}"));
    let collector_args = collector_args(container(find("StatefulSet", "flywheel-collector"), "collector"));
    let mut collector_config =
        CollectorConfig::new("127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")), dir.0.join("data"));
    collector_config.token_file = Some(token_file.clone());
    collector_config.retention = collector_args.retention;
    collector_config.max_body_bytes = collector_args.max_body_bytes;
    collector_config.queue = collector_args.queue;
    let collector = Collector::start(collector_config).await.unwrap_or_else(|e| panic!("starting the collector: {e}"));
    let collector_url = format!("http://{}", collector.addr());
    let http = flywheel::http_client::client();
    let stats = format!("{collector_url}/v1/stats?namespace=my-team&deployment=support-chat");
    let answer = http.get(&stats).bearer_auth(&token).send().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(answer.status().is_success(), "the documented token Secret works: {}", answer.status());
    let answer = http.get(&stats).send().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(answer.status(), reqwest::StatusCode::UNAUTHORIZED);

    // The operator, from the manifest's own arguments, under the manifest's RBAC.
    let deployment = find("Deployment", "flywheel-operator");
    let args = operator_args(container(deployment, "operator"));
    let service_account = pod_spec(deployment)["serviceAccountName"].as_str().unwrap_or_default();
    let grants = Grants::of(&manifest, NAMESPACE, service_account);
    assert!(!grants.cluster.is_empty() && grants.namespaced.contains_key(NAMESPACE), "{grants:?}");
    let audit = Arc::new(Mutex::new(Audit::default()));
    let client = client_as(&cluster, grants, audit.clone()).await;
    let identity = "flywheel-operator-7d9f-install".to_string();
    let config = flywheel::operator::OperatorConfig {
        collector_url: Some(collector_url.clone()),
        collector_token: Some(token.clone()),
        leader_election: args.leader_elect.then(|| flywheel::operator::leader::LeaseConfig {
            name: args.lease_name.clone(),
            // POD_NAMESPACE, from the downward API.
            namespace: NAMESPACE.to_string(),
            identity: identity.clone(),
            lease_duration: Duration::from_secs(args.lease_duration),
            renew_deadline: Duration::from_secs(args.renew_deadline),
            retry_period: Duration::from_secs(args.retry_period),
        }),
        concurrency: args.concurrency,
        operator_image: args.image.clone().unwrap_or_else(flywheel::operator::default_image),
        collector_token_secret: args.collector_token_secret.clone(),
        analysis: Arc::new(flywheel::operator::model_deployment::feedback_analysis::CollectorAnalysis::new(
            &collector_url,
            Some(token.clone()),
        )),
        ..flywheel::operator::OperatorConfig::local()
    };
    let operator = flywheel::operator::start(client, config).await.unwrap_or_else(|e| panic!("{e}"));

    // A team namespace with the token Secret the docs ask for, and the samples.
    let ns = cluster.namespace("install").await;
    create_token_secret(&cluster, &ns.name, &args.collector_token_secret, &literal);
    let samples = ok(
        &kubectl(&cluster, &["kustomize", &root().join("config/samples").to_string_lossy()], None),
        "kustomize samples",
    );
    ok(&kubectl(&cluster, &["-n", &ns.name, "apply", "--server-side", "-f", "-"], Some(&samples)), "apply the samples");

    let mds = Api::<DynamicObject>::namespaced_with(
        cluster.client.clone(),
        &ns.name,
        &dynamic("flywheel.dev", "v1alpha1", "ModelDeployment", "modeldeployments"),
    );
    let ready = eventually(Duration::from_secs(90), || {
        let mds = mds.clone();
        let refused = !audit.lock().unwrap_or_else(std::sync::PoisonError::into_inner).denied.is_empty();
        async move {
            if refused {
                // Fail fast: the assertion below names the refused requests.
                return Some(Value::Null);
            }
            let md = serde_json::to_value(mds.get("support-chat").await.ok()?).ok()?;
            let ready = md
                .pointer("/status/conditions")?
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            ready.then_some(md)
        }
    })
    .await;
    let denied = audit.lock().unwrap_or_else(std::sync::PoisonError::into_inner).denied.clone();
    assert!(denied.is_empty(), "requests the manifest's RBAC refuses: {denied:?}");
    let Some(md) = ready.filter(|md| !md.is_null()) else {
        let last = mds.get("support-chat").await.ok().map(|o| format!("{:?}", o.data.get("status")));
        panic!("support-chat never became Ready under the manifest's RBAC; last status {last:?}")
    };
    assert_eq!(md.pointer("/status/stable/version"), Some(&json!("v1")));

    // Every sample gets a status from the operator.
    for (k, plural, sample) in [
        ("FeedbackPolicy", "feedbackpolicies", "support-chat-corrections"),
        ("RetrainJob", "retrainjobs", "support-chat-manual-1"),
    ] {
        let api = Api::<DynamicObject>::namespaced_with(
            cluster.client.clone(),
            &ns.name,
            &dynamic("flywheel.dev", "v1alpha1", k, plural),
        );
        let seen = eventually(Duration::from_secs(60), || {
            let api = api.clone();
            async move {
                let o = serde_json::to_value(api.get(sample).await.ok()?).ok()?;
                o.pointer("/status/conditions")?.as_array()?.iter().any(|c| c["type"] == "Ready").then_some(())
            }
        })
        .await;
        assert!(seen.is_some(), "{k} {sample} got no status from the operator");
    }

    // The inference pods are what the chart's NetworkPolicies let reach the collector and be
    // scraped by the operator.
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    let selector = "app.kubernetes.io/part-of=flywheel,app.kubernetes.io/component=inference,flywheel.dev/model-deployment=support-chat";
    let listed = pods.list(&ListParams::default().labels(selector)).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(!listed.items.is_empty(), "no inference pod carries the labels the NetworkPolicies select");

    // The Lease in the operator's namespace is held by this replica.
    let leases = Api::<DynamicObject>::namespaced_with(
        cluster.client.clone(),
        NAMESPACE,
        &dynamic("coordination.k8s.io", "v1", "Lease", "leases"),
    );
    let lease = leases.get(&args.lease_name).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(lease.data["spec"]["holderIdentity"], identity.as_str());

    let (allowed, denied) = {
        let audit = audit.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        (audit.allowed.clone(), audit.denied.clone())
    };
    assert!(denied.is_empty(), "requests the manifest's RBAC refuses: {denied:?}");
    for expected in [
        "watch flywheel.dev/modeldeployments in (cluster)",
        "patch flywheel.dev/modeldeployments/status in",
        "patch apps/deployments in",
        "create coordination.k8s.io/leases in flywheel-system",
    ] {
        assert!(allowed.iter().any(|l| l.starts_with(expected)), "no request `{expected}` seen: {allowed:?}");
    }
    operator.shutdown().await;
    collector.shutdown().await;
    ns.cleanup().await;
    cluster.stop().await;
}

/// A namespace-scoped install (`watchNamespaces`): the operator, from the rendering's own
/// arguments and under the rendering's RBAC (Roles only, no ClusterRole), reconciles a
/// ModelDeployment in the namespace it watches, never reads or writes another namespace, and
/// makes no cluster-wide request. Runs on a real cluster too: it installs nothing cluster-wide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_scoped_install_reconciles_only_the_namespaces_it_watches() {
    let Some(helm) = helm() else { return };
    let cluster = Cluster::start().await;
    cluster.install_crds().await;
    // The operator's own namespace (its Lease), the team namespace it watches, and one it does not.
    let home = cluster.namespace("scoped-home").await;
    let team = cluster.namespace("scoped-team").await;
    let other = cluster.namespace("scoped-other").await;
    let dir = TempDir::new("flywheel-scoped");
    let values = dir.0.join("values.yaml");
    std::fs::write(&values, format!("watchNamespaces: [{}]\n", team.name)).unwrap_or_else(|e| panic!("{e}"));
    let mut cmd = Command::new(&helm);
    cmd.args(["template", "flywheel"]).arg(root().join("charts/flywheel")).args(["--namespace", &home.name]);
    cmd.arg("--values").arg(&values);
    let objects = docs(&run(cmd, "helm template (namespace-scoped)"));
    let deployment = objects
        .iter()
        .find(|o| kind(o) == "Deployment" && name(o) == "flywheel-operator")
        .unwrap_or_else(|| panic!("no operator Deployment"));
    let args = operator_args(container(deployment, "operator"));
    assert_eq!(args.watch_namespaces, vec![team.name.clone()]);
    let service_account = pod_spec(deployment)["serviceAccountName"].as_str().unwrap_or_default().to_string();
    let grants = Grants::of(&objects, &home.name, &service_account);
    assert!(grants.cluster.is_empty(), "no cluster-wide grant: {:?}", grants.cluster);
    assert!(grants.namespaced.contains_key(&team.name) && grants.namespaced.contains_key(&home.name), "{grants:?}");
    let audit = Arc::new(Mutex::new(Audit::default()));
    let client = client_as(&cluster, grants, audit.clone()).await;
    let config = flywheel::operator::OperatorConfig {
        leader_election: args.leader_elect.then(|| flywheel::operator::leader::LeaseConfig {
            name: args.lease_name.clone(),
            namespace: home.name.clone(),
            identity: "scoped-operator".to_string(),
            lease_duration: Duration::from_secs(args.lease_duration),
            renew_deadline: Duration::from_secs(args.renew_deadline),
            retry_period: Duration::from_secs(args.retry_period),
        }),
        watch_namespaces: args.watch_namespaces.clone(),
        ..flywheel::operator::OperatorConfig::local()
    };
    let operator = flywheel::operator::start(client, config).await.unwrap_or_else(|e| panic!("{e}"));

    let md = |ns: &str| -> flywheel::api::ModelDeployment {
        serde_json::from_value(json!({
            "apiVersion": "flywheel.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "support-chat", "namespace": ns},
            "spec": {"model": {"name": "m", "version": "v1", "uri": "hf://org/m"},
                     "runtime": {"image": "example/runtime:1", "port": 8000}, "replicas": 1}
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    };
    for ns in [&team.name, &other.name] {
        let api: Api<flywheel::api::ModelDeployment> = Api::namespaced(cluster.client.clone(), ns);
        api.create(&kube::api::PostParams::default(), &md(ns)).await.unwrap_or_else(|e| panic!("{e}"));
    }
    let watched: Api<flywheel::api::ModelDeployment> = Api::namespaced(cluster.client.clone(), &team.name);
    let ready = eventually(Duration::from_secs(60), || {
        let watched = watched.clone();
        async move {
            let md = watched.get("support-chat").await.ok()?;
            let conditions = md.status?.conditions;
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == flywheel::api::ConditionStatus::True)
                .then_some(())
        }
    })
    .await;
    let denied = audit.lock().unwrap_or_else(std::sync::PoisonError::into_inner).denied.clone();
    assert!(denied.is_empty(), "requests the namespace-scoped RBAC refuses: {denied:?}");
    assert!(ready.is_some(), "the ModelDeployment in the watched namespace never became Ready");
    // Give a cluster-wide operator every chance to have touched the other namespace.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let unwatched: Api<flywheel::api::ModelDeployment> = Api::namespaced(cluster.client.clone(), &other.name);
    let untouched = unwatched.get("support-chat").await.unwrap_or_else(|e| panic!("{e}"));
    assert!(untouched.status.is_none(), "the unwatched namespace's object got a status: {:?}", untouched.status);
    let allowed = audit.lock().unwrap_or_else(std::sync::PoisonError::into_inner).allowed.clone();
    let outside: Vec<&String> = allowed
        .iter()
        .filter(|line| !line.ends_with(&format!(" in {}", team.name)) && !line.ends_with(&format!(" in {}", home.name)))
        .collect();
    assert!(outside.is_empty(), "requests outside the watched and the operator's own namespace: {outside:?}");
    operator.shutdown().await;
    for ns in [home, team, other] {
        ns.cleanup().await;
    }
    cluster.stop().await;
}
