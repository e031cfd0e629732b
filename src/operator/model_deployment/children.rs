//! The children of a ModelDeployment, as pure functions of its validated spec and the rollout
//! plan: a Deployment per track, a Service selecting both tracks, a Service per track, and a
//! PodDisruptionBudget. Applied by server-side apply with the `flywheel` field manager.

use std::collections::BTreeMap;

use k8s_openapi::Resource as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use serde_json::{Value, json};

use crate::api::model_deployment::{ModelDeploymentSpec, Track};

/// Label naming the ModelDeployment a child belongs to.
pub const LABEL_MODEL_DEPLOYMENT: &str = "flywheel.dev/model-deployment";
/// Label naming the track of a child.
pub const LABEL_TRACK: &str = "flywheel.dev/track";
/// Label carrying the model version a pod serves.
pub const LABEL_VERSION: &str = "flywheel.dev/version";
/// Where model weights are mounted or fetched to.
pub const MODEL_ROOT: &str = "/models";

/// Where a model's weights come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// `pvc://claim/path`: the claim mounted read-only.
    Pvc {
        /// Claim name.
        claim: String,
        /// Path inside the claim.
        path: String,
    },
    /// `file:///path`: already in the image or on the node.
    File {
        /// Absolute path.
        path: String,
    },
    /// `s3://`, `gs://`, `https://`, `hf://`: fetched by an init container.
    Fetch {
        /// The URI.
        uri: String,
    },
}

/// Errors of a spec that passed the schema but cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The model URI's scheme is not one Flywheel can read.
    #[error("model URI {0:?} has an unsupported scheme")]
    UnsupportedUri(String),
    /// A pvc:// URI without a claim.
    #[error("model URI {0:?} names no claim (pvc://claim/path)")]
    NoClaim(String),
}

impl ModelSource {
    /// Parse a model URI.
    pub fn parse(uri: &str) -> Result<Self, SpecError> {
        if let Some(rest) = uri.strip_prefix("pvc://") {
            let (claim, path) = rest.split_once('/').unwrap_or((rest, ""));
            if claim.is_empty() {
                return Err(SpecError::NoClaim(uri.to_string()));
            }
            return Ok(Self::Pvc { claim: claim.to_string(), path: path.trim_matches('/').to_string() });
        }
        if let Some(path) = uri.strip_prefix("file://") {
            return Ok(Self::File { path: format!("/{}", path.trim_start_matches('/')) });
        }
        // pvc:// and file:// are handled above; every other supported scheme is fetched.
        if crate::api::common::SUPPORTED_URI_SCHEMES.iter().any(|p| uri.starts_with(p)) {
            return Ok(Self::Fetch { uri: uri.to_string() });
        }
        Err(SpecError::UnsupportedUri(uri.to_string()))
    }

    /// The URI again (for messages).
    pub fn uri(&self) -> String {
        match self {
            Self::Pvc { claim, path } if path.is_empty() => format!("pvc://{claim}"),
            Self::Pvc { claim, path } => format!("pvc://{claim}/{path}"),
            Self::File { path } => format!("file://{path}"),
            Self::Fetch { uri } => uri.clone(),
        }
    }

    /// The directory the runtime reads the model from.
    pub fn model_dir(&self) -> String {
        match self {
            Self::Pvc { path, .. } if path.is_empty() => MODEL_ROOT.to_string(),
            Self::Pvc { path, .. } => format!("{MODEL_ROOT}/{path}"),
            Self::File { path } => path.clone(),
            Self::Fetch { .. } => MODEL_ROOT.to_string(),
        }
    }
}

/// What one track serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackPlan {
    /// Which track.
    pub track: Track,
    /// Version served.
    pub version: String,
    /// Where its weights are.
    pub uri: String,
    /// Replicas.
    pub replicas: i32,
}

/// Identity of the owner, for owner references and names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// ModelDeployment name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its uid.
    pub uid: String,
}

/// Settings of the operator that shape children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildSettings {
    /// Image that runs `flywheel fetch-model` and the agent (the operator's own).
    pub operator_image: String,
    /// The collector the injected agents send captures to.
    pub collector_url: Option<String>,
    /// Secret (in the ModelDeployment's namespace, key `token`) with the agents' collector
    /// token; mounted optionally, so pods start without it (captures are then refused and
    /// counted as dropped).
    pub collector_token_secret: String,
}

/// The port the injected agent serves on (the Services' `http` target).
pub const AGENT_PORT: i32 = 8080;
/// The agent's admin port: `/healthz`, `/readyz`, `/metrics` (the autoscaler's signal).
pub const AGENT_ADMIN_PORT: i32 = 9091;
/// Where the agent's collector token is mounted.
pub const AGENT_TOKEN_DIR: &str = "/var/run/flywheel/collector";
/// Where the wanted adapters (the `<name>-adapters` ConfigMap) are mounted into the agent.
pub const ADAPTERS_WANTED_DIR: &str = "/etc/flywheel/adapters";
/// The directory the agent fetches adapters into and the runtime loads them from.
pub const ADAPTERS_DIR: &str = "/var/lib/flywheel/adapters";

/// The ConfigMap telling the pods of an `Adapter`-mode ModelDeployment which adapters to hold.
pub fn adapters_config_map_name(owner: &Owner) -> String {
    format!("{}-adapters", owner.name)
}

/// The ConfigMap with the wanted adapters (`adapters.json`).
pub fn adapters_config_map(owner: &Owner, wanted: &crate::agent::adapters::Wanted) -> Value {
    let text = serde_json::to_string(wanted).unwrap_or_else(|_| "{}".to_string());
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(owner, &adapters_config_map_name(owner), &BTreeMap::new()),
        "data": {crate::agent::adapters::WANTED_KEY: text}
    })
}

fn restricted_security_context() -> Value {
    json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "runAsNonRoot": true,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"}
    })
}

/// The agent sidecar: on the serving port, in front of the runtime on localhost.
fn agent_container(owner: &Owner, spec: &ModelDeploymentSpec, plan: &TrackPlan, settings: &ChildSettings) -> Value {
    let agent = spec.agent.clone().unwrap_or_default();
    let runtime = &spec.runtime;
    let health_path = runtime
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .and_then(|h| h.path.clone())
        .unwrap_or_else(|| "/health".to_string());
    let mut args = vec![
        "agent".to_string(),
        "--listen".into(),
        format!("0.0.0.0:{AGENT_PORT}"),
        "--admin-listen".into(),
        format!("0.0.0.0:{AGENT_ADMIN_PORT}"),
        "--upstream".into(),
        format!("http://127.0.0.1:{}", runtime.port),
        "--upstream-health-path".into(),
        health_path,
        "--model-version".into(),
        plan.version.clone(),
        "--sample-rate".into(),
        agent.sample_rate.to_string(),
        "--max-capture-bytes".into(),
        agent.max_capture_bytes.max(0).to_string(),
    ];
    for h in &agent.redact_headers {
        args.extend(["--redact-header".to_string(), h.clone()]);
    }
    for f in &agent.redact_fields {
        args.extend(["--redact-field".to_string(), f.clone()]);
    }
    let mut env = vec![
        json!({"name": "FLYWHEEL_NAMESPACE", "value": owner.namespace}),
        json!({"name": "FLYWHEEL_MODEL_DEPLOYMENT", "value": owner.name}),
    ];
    let mut container = json!({
        "name": "agent",
        "image": agent.image.clone().unwrap_or_else(|| settings.operator_image.clone()),
        "args": args,
        "ports": [
            {"name": "http", "containerPort": AGENT_PORT, "protocol": "TCP"},
            {"name": "agent-admin", "containerPort": AGENT_ADMIN_PORT, "protocol": "TCP"}
        ],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "agent-admin"}, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "agent-admin"}, "periodSeconds": 10, "failureThreshold": 3},
        "resources": agent.resources.as_ref().and_then(|r| serde_json::to_value(r).ok()).unwrap_or_else(|| json!({
            "requests": {"cpu": "50m", "memory": "64Mi"},
            "limits": {"memory": "256Mi"}
        })),
        "securityContext": restricted_security_context(),
    });
    let mut mounts = Vec::new();
    if let Some(url) = &settings.collector_url {
        env.push(json!({"name": "FLYWHEEL_COLLECTOR_URL", "value": url}));
        env.push(json!({"name": "FLYWHEEL_COLLECTOR_TOKEN_FILE", "value": format!("{AGENT_TOKEN_DIR}/token")}));
        mounts.push(json!({"name": "collector-token", "mountPath": AGENT_TOKEN_DIR, "readOnly": true}));
    }
    if spec.adapter_mode() {
        let file = format!("{ADAPTERS_WANTED_DIR}/{}", crate::agent::adapters::WANTED_KEY);
        container["args"] = json!(
            [args, vec!["--adapters-file".to_string(), file, "--adapters-dir".into(), ADAPTERS_DIR.into()]].concat()
        );
        mounts.push(json!({"name": "adapters-wanted", "mountPath": ADAPTERS_WANTED_DIR, "readOnly": true}));
        mounts.push(json!({"name": "adapters", "mountPath": ADAPTERS_DIR}));
    }
    if !mounts.is_empty() {
        container["volumeMounts"] = Value::Array(mounts);
    }
    container["env"] = json!(env);
    container
}

/// Whether the agent is injected (the default).
pub fn agent_enabled(spec: &ModelDeploymentSpec) -> bool {
    spec.agent.as_ref().is_none_or(|a| a.enabled)
}

impl Owner {
    fn reference(&self) -> Value {
        json!({
            "apiVersion": crate::api::ModelDeployment::api_version(&()),
            "kind": crate::api::ModelDeployment::kind(&()),
            "name": self.name,
            "uid": self.uid,
            "controller": true,
            "blockOwnerDeletion": true,
        })
    }
}

use kube::Resource as _;

/// The label naming a pod's part in Flywheel (`inference`, `trainer`).
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
/// The component of inference pods (and of every serving child).
pub const COMPONENT_INFERENCE: &str = "inference";

/// Labels every child carries.
pub fn common_labels(owner: &Owner) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), owner.name.clone()),
        ("app.kubernetes.io/instance".to_string(), owner.name.clone()),
        (LABEL_COMPONENT.to_string(), COMPONENT_INFERENCE.to_string()),
        ("app.kubernetes.io/part-of".to_string(), "flywheel".to_string()),
        ("app.kubernetes.io/managed-by".to_string(), "flywheel".to_string()),
        (LABEL_MODEL_DEPLOYMENT.to_string(), owner.name.clone()),
    ])
}

/// The selector of a track's Deployment: the ModelDeployment and the track. A Deployment's
/// selector is immutable, so this never changes (it cannot take in trainer pods: they carry no
/// track label).
pub fn track_selector(owner: &Owner, track: Track) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_MODEL_DEPLOYMENT.to_string(), owner.name.clone()),
        (LABEL_TRACK.to_string(), track.as_str().to_string()),
    ])
}

/// What serving selects (the Services, the PodDisruptionBudget, the scale subresource's
/// selector): the inference pods of the ModelDeployment, of one track or both. Trainer pods
/// carry `flywheel.dev/model-deployment` too (`app.kubernetes.io/component=trainer`), so the
/// component is part of every serving selector. Inference pods have always carried the
/// component label, so adding it to an existing Service or budget (both mutable) selects the
/// same pods: no pod restarts, no traffic dropped.
pub fn serving_selector(owner: &Owner, track: Option<Track>) -> BTreeMap<String, String> {
    let mut s = BTreeMap::from([
        (LABEL_MODEL_DEPLOYMENT.to_string(), owner.name.clone()),
        (LABEL_COMPONENT.to_string(), COMPONENT_INFERENCE.to_string()),
    ]);
    if let Some(t) = track {
        s.insert(LABEL_TRACK.to_string(), t.as_str().to_string());
    }
    s
}

/// The same as a label selector string (`status.selector`, `kubectl get pods -l`).
pub fn serving_selector_string(owner: &Owner) -> String {
    serving_selector(owner, None).iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// Name of a track's Deployment and Service.
pub fn track_name(owner: &Owner, track: Track) -> String {
    format!("{}-{}", owner.name, track.as_str())
}

fn metadata(owner: &Owner, name: &str, extra: &BTreeMap<String, String>) -> Value {
    let mut labels = common_labels(owner);
    labels.extend(extra.clone());
    json!({"name": name, "namespace": owner.namespace, "labels": labels, "ownerReferences": [owner.reference()]})
}

/// The Deployment of one track.
pub fn deployment(
    owner: &Owner,
    spec: &ModelDeploymentSpec,
    plan: &TrackPlan,
    source: &ModelSource,
    settings: &ChildSettings,
) -> Value {
    let runtime = &spec.runtime;
    let selector = track_selector(owner, plan.track);
    let mut pod_labels = common_labels(owner);
    pod_labels.extend(selector.clone());
    pod_labels.insert(LABEL_VERSION.to_string(), plan.version.clone());
    for (k, v) in &runtime.pod_labels {
        pod_labels.entry(k.clone()).or_insert_with(|| v.clone());
    }
    let mut annotations = runtime.pod_annotations.clone();
    annotations.insert("flywheel.dev/model-uri".to_string(), plan.uri.clone());

    let mut env: Vec<Value> = vec![
        json!({"name": "FLYWHEEL_MODEL_NAME", "value": spec.model.name}),
        json!({"name": "FLYWHEEL_MODEL_VERSION", "value": plan.version}),
        json!({"name": "FLYWHEEL_MODEL_URI", "value": plan.uri}),
        json!({"name": "FLYWHEEL_MODEL_DIR", "value": source.model_dir()}),
    ];
    env.extend(runtime.env.iter().filter_map(|e| serde_json::to_value(e).ok()));

    let default_probe =
        json!({"httpGet": {"path": "/health", "port": runtime.port}, "periodSeconds": 5, "failureThreshold": 3});
    let mut container = json!({
        "name": "runtime",
        "image": runtime.image,
        "ports": [{"name": if agent_enabled(spec) { "runtime" } else { "http" }, "containerPort": runtime.port, "protocol": "TCP"}],
        "env": env,
        "readinessProbe": runtime.readiness_probe.as_ref().and_then(|p| serde_json::to_value(p).ok()).unwrap_or(default_probe),
    });
    if let Some(policy) = runtime.image_pull_policy {
        container["imagePullPolicy"] = json!(policy.as_str());
    }
    if !runtime.command.is_empty() {
        container["command"] = json!(runtime.command);
    }
    if !runtime.args.is_empty() {
        container["args"] = json!(runtime.args);
    }
    if let Some(r) = runtime.resources.as_ref().and_then(|r| serde_json::to_value(r).ok()) {
        container["resources"] = r;
    }
    if let Some(p) = runtime.liveness_probe.as_ref().and_then(|p| serde_json::to_value(p).ok()) {
        container["livenessProbe"] = p;
    }
    if let Some(p) = runtime.startup_probe.as_ref().and_then(|p| serde_json::to_value(p).ok()) {
        container["startupProbe"] = p;
    }

    let mut pod = json!({"containers": []});
    match source {
        ModelSource::Pvc { claim, .. } => {
            container["volumeMounts"] = json!([{"name": "model", "mountPath": MODEL_ROOT, "readOnly": true}]);
            pod["volumes"] =
                json!([{"name": "model", "persistentVolumeClaim": {"claimName": claim, "readOnly": true}}]);
        }
        ModelSource::Fetch { uri } => {
            container["volumeMounts"] = json!([{"name": "model", "mountPath": MODEL_ROOT, "readOnly": true}]);
            pod["volumes"] = json!([{"name": "model", "emptyDir": {}}]);
            pod["initContainers"] = json!([{
                "name": "fetch-model",
                "image": settings.operator_image,
                "args": ["fetch-model", uri, MODEL_ROOT],
                "volumeMounts": [{"name": "model", "mountPath": MODEL_ROOT}],
                "securityContext": restricted_security_context()
            }]);
        }
        ModelSource::File { .. } => {}
    }
    if agent_enabled(spec) && spec.adapter_mode() {
        // The runtime loads adapters the agent fetched into a directory they share, told so
        // through its adapter API; the agent reads the wanted ones from the mounted ConfigMap
        // (optional: a pod starts on the base model before the operator wrote it).
        let mut mounts = container.get("volumeMounts").and_then(Value::as_array).cloned().unwrap_or_default();
        mounts.push(json!({"name": "adapters", "mountPath": ADAPTERS_DIR, "readOnly": true}));
        container["volumeMounts"] = Value::Array(mounts);
        if !runtime.env.iter().any(|e| e.name == "VLLM_ALLOW_RUNTIME_LORA_UPDATING")
            && let Some(env) = container.get_mut("env").and_then(Value::as_array_mut)
        {
            env.push(json!({"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"}));
        }
        let mut volumes = pod.get("volumes").and_then(Value::as_array).cloned().unwrap_or_default();
        volumes.push(json!({"name": "adapters", "emptyDir": {}}));
        volumes.push(json!({"name": "adapters-wanted", "configMap": {
            "name": adapters_config_map_name(owner), "optional": true
        }}));
        pod["volumes"] = Value::Array(volumes);
    }
    if agent_enabled(spec) {
        pod["containers"] = json!([container, agent_container(owner, spec, plan, settings)]);
        if settings.collector_url.is_some() {
            let mut volumes = pod.get("volumes").and_then(Value::as_array).cloned().unwrap_or_default();
            volumes.push(json!({"name": "collector-token", "secret": {
                "secretName": settings.collector_token_secret, "optional": true, "defaultMode": 0o440
            }}));
            pod["volumes"] = Value::Array(volumes);
        }
    } else {
        pod["containers"] = json!([container]);
    }
    if !runtime.node_selector.is_empty() {
        pod["nodeSelector"] = json!(runtime.node_selector);
    }
    if !runtime.tolerations.is_empty() {
        pod["tolerations"] = serde_json::to_value(&runtime.tolerations).unwrap_or(Value::Null);
    }
    if let Some(sa) = &runtime.service_account_name {
        pod["serviceAccountName"] = json!(sa);
    }

    let name = track_name(owner, plan.track);
    json!({
        "apiVersion": Deployment::API_VERSION,
        "kind": Deployment::KIND,
        "metadata": metadata(owner, &name, &BTreeMap::from([(LABEL_TRACK.to_string(), plan.track.as_str().to_string())])),
        "spec": {
            "replicas": plan.replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": pod_labels, "annotations": annotations},
                "spec": pod
            }
        }
    })
}

/// The Service selecting both tracks (`<name>`), or one track (`<name>-<track>`).
pub fn service(owner: &Owner, track: Option<Track>) -> Value {
    let (name, selector, extra) = match track {
        None => (owner.name.clone(), serving_selector(owner, None), BTreeMap::new()),
        Some(t) => (
            track_name(owner, t),
            serving_selector(owner, Some(t)),
            BTreeMap::from([(LABEL_TRACK.to_string(), t.as_str().to_string())]),
        ),
    };
    json!({
        "apiVersion": Service::API_VERSION,
        "kind": Service::KIND,
        "metadata": metadata(owner, &name, &extra),
        "spec": {
            "selector": selector,
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        }
    })
}

/// The PodDisruptionBudget of all inference pods: one may be disrupted at a time.
pub fn disruption_budget(owner: &Owner) -> Value {
    json!({
        "apiVersion": PodDisruptionBudget::API_VERSION,
        "kind": PodDisruptionBudget::KIND,
        "metadata": metadata(owner, &owner.name, &BTreeMap::new()),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": serving_selector(owner, None)}}
    })
}

/// Whether `live` already holds every field `desired` sets (so applying it would change
/// nothing): maps compare key by key, lists item by item, scalars by value. Fields the server or
/// other managers added to `live` do not matter.
pub fn is_subset(desired: &Value, live: &Value) -> bool {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => d.iter().all(|(k, v)| l.get(k).is_some_and(|lv| is_subset(v, lv))),
        (Value::Array(d), Value::Array(l)) => d.len() == l.len() && d.iter().zip(l).all(|(a, b)| is_subset(a, b)),
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::String(a), Value::Number(b)) | (Value::Number(b), Value::String(a)) => a == &b.to_string(),
        (a, b) => a == b,
    }
}

#[cfg(test)]
mod tests;
