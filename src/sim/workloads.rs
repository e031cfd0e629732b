//! The simulated control plane: garbage collector, namespace controller, Deployment and Job
//! controllers, and a kubelet whose pods follow the `sim.flywheel.dev/*` annotations of their
//! template (or an in-process script).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::core::{
    Core, DeleteOptions, EventType, Gvr, ListOptions, PatchKind, Sub, WriteOptions, fnv1a_hex, now_rfc3339,
    random_suffix,
};
use super::select::{LabelSelector, labels_of};

/// Annotation: `succeed` (default) or `fail`.
pub const OUTCOME_ANNOTATION: &str = "sim.flywheel.dev/outcome";
/// Annotation: seconds a Job pod runs before it terminates.
pub const DURATION_ANNOTATION: &str = "sim.flywheel.dev/duration";
/// Annotation: the text written to the terminated container state's `message`.
pub const MESSAGE_ANNOTATION: &str = "sim.flywheel.dev/termination-message";
/// Annotation: the exit code of a failing pod (default 1).
pub const EXIT_CODE_ANNOTATION: &str = "sim.flywheel.dev/exit-code";
/// Annotation: `true` makes the pod disrupted (preempted) instead of finishing.
pub const DISRUPTED_ANNOTATION: &str = "sim.flywheel.dev/disrupted";

const MANAGER: &str = "kube-controller-manager";

/// The ConfigMap the controller-manager's root-ca-cert publisher keeps in every namespace.
pub const ROOT_CA_CONFIG_MAP: &str = "kube-root-ca.crt";
const DESCRIPTION_ANNOTATION: &str = "kubernetes.io/description";
const ROOT_CA_DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";
const KUBELET: &str = "kubelet";
const APISERVER: &str = "kube-apiserver";

/// How a terminating pod ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Exit code 0.
    Succeed,
    /// A non-zero exit code.
    Fail(i32),
    /// Preempted: phase Failed with a `DisruptionTarget` condition.
    Disrupted,
}

/// What a simulated pod does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodBehavior {
    /// Time from creation to Running and Ready.
    pub ready_after: Duration,
    /// For run-to-completion pods: how long they run and how they end.
    pub finish: Option<(Duration, Outcome, String)>,
}

/// An in-process script deciding a pod's behaviour (`None`: use the annotations).
pub type PodScript = Arc<dyn Fn(&Value) -> Option<PodBehavior> + Send + Sync>;

/// Settings of the simulated control plane.
#[derive(Clone)]
pub struct WorkloadConfig {
    /// Delay before a pod becomes Running and Ready.
    pub pod_ready_delay: Duration,
    /// Optional in-process script.
    pub script: Option<PodScript>,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        Self { pod_ready_delay: Duration::from_millis(300), script: None }
    }
}

fn gvr_pods() -> Gvr {
    Gvr::new("", "v1", "pods")
}
fn gvr_deployments() -> Gvr {
    Gvr::new("apps", "v1", "deployments")
}
fn gvr_jobs() -> Gvr {
    Gvr::new("batch", "v1", "jobs")
}
fn gvr_crds() -> Gvr {
    Gvr::new("apiextensions.k8s.io", "v1", "customresourcedefinitions")
}

fn opts(manager: &str) -> WriteOptions {
    WriteOptions { field_manager: Some(manager.into()), ..WriteOptions::default() }
}

fn s<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

fn owner_uids(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(|refs| refs.iter().filter_map(|r| r.get("uid").and_then(Value::as_str)).map(str::to_string).collect())
        .unwrap_or_default()
}

fn owner_ref(obj: &Value) -> Value {
    json!({
        "apiVersion": obj.get("apiVersion"),
        "kind": obj.get("kind"),
        "name": s(obj, "/metadata/name"),
        "uid": s(obj, "/metadata/uid"),
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

fn has_finalizer(obj: &Value, name: &str) -> bool {
    obj.pointer("/metadata/finalizers").and_then(Value::as_array).is_some_and(|f| f.iter().any(|x| x == name))
}

fn template_hash(template: &Value) -> String {
    // Stable across runs, as a pod-template-hash must be; ten hex digits as the real controller.
    fnv1a_hex(&template.to_string())[6..].to_string()
}

/// What the simulated control plane needs of the server it runs beside.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    /// The PEM of the CA the server's certificate chains to (what the root-ca-cert publisher puts
    /// in every namespace).
    pub root_ca: String,
    /// How long after a CRD is created its names are accepted (its resources served from then)
    /// and it is established.
    pub crd_establish_delay: Duration,
}

/// Run the simulated controllers until `stop` is cancelled.
pub async fn run(core: Arc<Core>, config: WorkloadConfig, plane: ControlPlane, stop: CancellationToken) {
    let root_ca = plane.root_ca.clone();
    let mut events = core.subscribe();
    let mut started: HashSet<String> = HashSet::new();
    let mut naming: HashSet<String> = HashSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            received = events.recv() => match received {
                Ok(event) => {
                    if event.type_ == EventType::Added && event.group.is_empty() && event.plural == "pods" {
                        start_pod(&core, &config, &event.object, &mut started, &stop);
                    }
                    if event.type_ == EventType::Added && event.plural == "customresourcedefinitions" {
                        accept_crd_names(&core, &event.object, &plane, &mut naming, &stop);
                    }
                }
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            },
            _ = tick.tick() => {
                // Catch pods created while lagging, and deadlines that pass with no event.
                for pod in list(&core, &gvr_pods()) {
                    start_pod(&core, &config, &pod, &mut started, &stop);
                }
                for crd in list(&core, &gvr_crds()) {
                    accept_crd_names(&core, &crd, &plane, &mut naming, &stop);
                }
            }
        }
        {
            // Drain what is queued so a burst of events costs one pass.
            while let Ok(event) = events.try_recv() {
                if event.type_ == EventType::Added && event.group.is_empty() && event.plural == "pods" {
                    start_pod(&core, &config, &event.object, &mut started, &stop);
                }
                if event.type_ == EventType::Added && event.plural == "customresourcedefinitions" {
                    accept_crd_names(&core, &event.object, &plane, &mut naming, &stop);
                }
            }
            reconcile_all(&core, &root_ca);
        }
    }
}

fn list(core: &Core, gvr: &Gvr) -> Vec<Value> {
    core.list(gvr, None, &ListOptions::default())
        .ok()
        .and_then(|l| l.get("items").and_then(Value::as_array).cloned())
        .unwrap_or_default()
}

/// Pods by the uid of each owner, read once per pass (a pass over many Deployments stays linear).
type PodsByOwner = BTreeMap<String, Vec<Value>>;

fn pods_by_owner(core: &Core) -> PodsByOwner {
    let mut by_owner: PodsByOwner = BTreeMap::new();
    for pod in list(core, &gvr_pods()) {
        for uid in owner_uids(&pod) {
            by_owner.entry(uid).or_default().push(pod.clone());
        }
    }
    by_owner
}

fn reconcile_all(core: &Core, root_ca: &str) {
    garbage_collect(core);
    namespaces(core);
    publish_root_ca(core, root_ca);
    let pods = pods_by_owner(core);
    for d in list(core, &gvr_deployments()) {
        deployment(core, &d, &pods);
    }
    let jobs = list(core, &gvr_jobs());
    for j in &jobs {
        job(core, j, &pods);
    }
    ttl_after_finished(core, &jobs);
    disruption(core);
}

fn gvr_pdbs() -> Gvr {
    Gvr::new("policy", "v1", "poddisruptionbudgets")
}

/// `intstr.GetScaledValueFromIntOrPercent(v, total, roundUp=true)`.
fn scaled_value(v: &Value, total: i64) -> Result<i64, String> {
    if let Some(n) = v.as_i64() {
        return Ok(n);
    }
    let text = v.as_str().unwrap_or_default();
    let percent = text
        .strip_suffix('%')
        .and_then(|p| p.parse::<i64>().ok())
        .ok_or_else(|| format!("invalid value for IntOrString: invalid value {text:?}"))?;
    Ok((percent * total + 99).div_euclid(100))
}

/// The controller of a pod and its scale, as the disruption controller's finders look it up
/// (ReplicationController, ReplicaSet of a Deployment, ReplicaSet, StatefulSet, then any type
/// with a scale subresource). `Ok(None)`: no controller found by that reference.
fn controller_scale(core: &Core, namespace: &str, owner: &Value) -> Result<Option<(String, i64)>, String> {
    let api_version = owner.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let kind = owner.get("kind").and_then(Value::as_str).unwrap_or_default();
    let name = owner.get("name").and_then(Value::as_str).unwrap_or_default();
    let uid = owner.get("uid").and_then(Value::as_str).unwrap_or_default();
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    let get = |gvr: &Gvr, n: &str| core.get(gvr, Some(namespace), n).ok();
    let replicas = |obj: &Value| obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
    if kind == "ReplicaSet" && (group == "apps" || group == "extensions") {
        let Some(rs) =
            get(&Gvr::new("apps", "v1", "replicasets"), name).filter(|rs| s(rs, "/metadata/uid") == Some(uid))
        else {
            return Ok(None);
        };
        let rs_controller = rs
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .and_then(|refs| refs.iter().find(|r| r.get("controller").and_then(Value::as_bool) == Some(true)));
        return match rs_controller {
            Some(d) if d.get("kind").and_then(Value::as_str) == Some("Deployment") => {
                let deployment = get(&gvr_deployments(), d.get("name").and_then(Value::as_str).unwrap_or_default())
                    .filter(|dep| s(dep, "/metadata/uid") == d.get("uid").and_then(Value::as_str));
                Ok(deployment.map(|dep| (s(&dep, "/metadata/uid").unwrap_or_default().to_string(), replicas(&dep))))
            }
            _ => Ok(Some((uid.to_string(), replicas(&rs)))),
        };
    }
    if kind == "StatefulSet" && group == "apps" {
        let ss = get(&Gvr::new("apps", "v1", "statefulsets"), name).filter(|ss| s(ss, "/metadata/uid") == Some(uid));
        return Ok(ss.map(|ss| (uid.to_string(), replicas(&ss))));
    }
    // getScaleController: the owner's type, and its scale subresource.
    let version = api_version.rsplit('/').next().unwrap_or_default();
    let Some(t) = core.resource_type_by_kind(api_version, kind) else {
        return Err(format!("no matches for kind {kind:?} in version {api_version:?}"));
    };
    if t.scale.is_none() {
        return Err(format!("{} does not implement the scale subresource", t.qualified()));
    }
    let Ok(scale) = core.scale(&Gvr::new(&t.group, version, &t.plural), Some(namespace), name) else { return Ok(None) };
    if s(&scale, "/metadata/uid") != Some(uid) {
        return Ok(None);
    }
    Ok(Some((uid.to_string(), scale.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0))))
}

/// `getExpectedScale`: the sum of the scales of the selected pods' controllers, and the names of
/// pods without one.
fn expected_scale(core: &Core, namespace: &str, pods: &[Value]) -> Result<(i64, Vec<String>), String> {
    let mut scales: BTreeMap<String, i64> = BTreeMap::new();
    let mut unmanaged = Vec::new();
    for pod in pods {
        let name = s(pod, "/metadata/name").unwrap_or_default();
        let controller = pod
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .and_then(|refs| refs.iter().find(|r| r.get("controller").and_then(Value::as_bool) == Some(true)));
        let Some(owner) = controller else {
            unmanaged.push(name.to_string());
            continue;
        };
        if owner.get("uid").and_then(Value::as_str).is_some_and(|u| scales.contains_key(u)) {
            continue;
        }
        match controller_scale(core, namespace, owner)? {
            Some((uid, scale)) => {
                scales.insert(uid, scale);
            }
            None => return Err(format!("found no controllers for pod {name:?}")),
        }
    }
    Ok((scales.values().sum(), unmanaged))
}

/// `apimeta.SetStatusCondition`: replace the condition of the same type, keeping its
/// `lastTransitionTime` unless the status changes.
fn set_condition(conditions: &mut Vec<Value>, mut new: Value) {
    let type_ = new.get("type").cloned();
    match conditions.iter_mut().find(|c| c.get("type") == type_.as_ref()) {
        Some(old) => {
            if old.get("status") == new.get("status") {
                new["lastTransitionTime"] =
                    old.get("lastTransitionTime").cloned().unwrap_or_else(|| json!(now_rfc3339()));
            }
            *old = new;
        }
        None => conditions.push(new),
    }
}

fn pdb_condition(status: bool, reason: &str, message: &str, observed_generation: i64) -> Value {
    let mut c = json!({"type": "DisruptionAllowed", "status": if status { "True" } else { "False" }, "lastTransitionTime": now_rfc3339(), "reason": reason, "message": message});
    if observed_generation != 0 {
        c["observedGeneration"] = json!(observed_generation);
    }
    c
}

/// The disruption controller (`pkg/controller/disruption`): each PodDisruptionBudget's status from
/// the pods its selector picks in its namespace. `maxUnavailable` and a percentage `minAvailable`
/// count the expected pods from the scale of the pods' controllers (a Deployment's pods count by
/// the Deployment's replicas, as through its ReplicaSet); a controller without a scale
/// subresource (a Job) fails the sync: `DisruptionAllowed` False `SyncFailed` with the error,
/// `disruptionsAllowed` 0, the rest of the status as it was. No eviction API: `disruptedPods`
/// stays empty.
fn disruption(core: &Core) {
    let pdbs = list(core, &gvr_pdbs());
    if pdbs.is_empty() {
        return;
    }
    let all_pods = list(core, &gvr_pods());
    for pdb in pdbs {
        if pdb.pointer("/metadata/deletionTimestamp").is_some() {
            continue;
        }
        let namespace = s(&pdb, "/metadata/namespace").unwrap_or_default().to_string();
        let generation = pdb.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0);
        // A missing selector selects nothing; an empty one everything.
        let pods: Vec<Value> = match pdb.pointer("/spec/selector") {
            Some(sel) if !sel.is_null() => {
                let selector = LabelSelector::from_json(sel);
                all_pods
                    .iter()
                    .filter(|p| s(p, "/metadata/namespace") == Some(namespace.as_str()))
                    .filter(|p| selector.matches(&labels_of(p)))
                    .cloned()
                    .collect()
            }
            _ => Vec::new(),
        };
        let spec = pdb.get("spec").cloned().unwrap_or_else(|| json!({}));
        let expected: Result<(i64, i64), String> =
            if let Some(max) = spec.get("maxUnavailable").filter(|v| !v.is_null()) {
                expected_scale(core, &namespace, &pods)
                    .and_then(|(count, _)| scaled_value(max, count).map(|m| (count, (count - m).max(0))))
            } else if let Some(min) = spec.get("minAvailable").filter(|v| !v.is_null()) {
                match min.as_i64() {
                    Some(n) => Ok((pods.len() as i64, n)),
                    None => expected_scale(core, &namespace, &pods)
                        .and_then(|(count, _)| scaled_value(min, count).map(|m| (count, m))),
                }
            } else {
                Ok((0, 0))
            };
        let mut status = pdb.get("status").cloned().filter(Value::is_object).unwrap_or_else(|| json!({}));
        let mut conditions: Vec<Value> =
            status.get("conditions").and_then(Value::as_array).cloned().unwrap_or_default();
        match expected {
            Err(message) => {
                // failSafe.
                let observed = status.get("observedGeneration").and_then(Value::as_i64).unwrap_or(0);
                status["disruptionsAllowed"] = json!(0);
                for k in ["currentHealthy", "desiredHealthy", "expectedPods"] {
                    if status.get(k).is_none() {
                        status[k] = json!(0);
                    }
                }
                set_condition(&mut conditions, pdb_condition(false, "SyncFailed", &message, observed));
            }
            Ok((expected_count, desired_healthy)) => {
                let current_healthy =
                    pods.iter().filter(|p| p.pointer("/metadata/deletionTimestamp").is_none() && is_ready(p)).count()
                        as i64;
                let mut allowed = current_healthy - desired_healthy;
                if expected_count <= 0 || allowed <= 0 {
                    allowed = 0;
                }
                status = json!({
                    "disruptionsAllowed": allowed,
                    "currentHealthy": current_healthy,
                    "desiredHealthy": desired_healthy,
                    "expectedPods": expected_count,
                });
                if generation != 0 {
                    status["observedGeneration"] = json!(generation);
                }
                let condition = if allowed > 0 {
                    pdb_condition(true, "SufficientPods", "", generation)
                } else {
                    pdb_condition(false, "InsufficientPods", "", generation)
                };
                set_condition(&mut conditions, condition);
            }
        }
        status["conditions"] = json!(conditions);
        set_status(core, &gvr_pdbs(), &pdb, status);
    }
}

/// The TTL-after-finished controller (`pkg/controller/ttlafterfinished`): a finished Job with
/// `spec.ttlSecondsAfterFinished` is deleted that many seconds after the `lastTransitionTime` of
/// its `Complete` or `Failed` condition, in the foreground (its pods first), guarded by its uid.
fn ttl_after_finished(core: &Core, jobs: &[Value]) {
    use k8s_openapi::jiff::{SignedDuration, Timestamp};
    let now = Timestamp::now();
    for j in jobs {
        if j.pointer("/metadata/deletionTimestamp").is_some() {
            continue;
        }
        let Some(ttl) = j.pointer("/spec/ttlSecondsAfterFinished").and_then(Value::as_i64) else { continue };
        let finished_at = j.pointer("/status/conditions").and_then(Value::as_array).and_then(|cs| {
            cs.iter().find_map(|c| {
                let terminal = matches!(c.get("type").and_then(Value::as_str), Some("Complete" | "Failed"))
                    && c.get("status").and_then(Value::as_str) == Some("True");
                terminal.then(|| c.get("lastTransitionTime").and_then(Value::as_str)).flatten()
            })
        });
        let Some(finished_at) = finished_at.and_then(|t| t.parse::<Timestamp>().ok()) else { continue };
        if now < finished_at + SignedDuration::from_secs(ttl) {
            continue;
        }
        let _gone = core.delete(
            &gvr_jobs(),
            s(j, "/metadata/namespace"),
            s(j, "/metadata/name").unwrap_or_default(),
            &DeleteOptions {
                propagation: Some(super::core::Propagation::Foreground),
                uid: s(j, "/metadata/uid").map(str::to_string),
                ..DeleteOptions::default()
            },
        );
    }
}

/// Delete dependents whose owners are gone; carry out foreground and orphan deletion.
fn garbage_collect(core: &Core) {
    let all = core.snapshot_all();
    let uids: HashSet<String> = all.iter().filter_map(|(_, o)| s(o, "/metadata/uid").map(str::to_string)).collect();
    let mut dependents_of: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, (_, obj)) in all.iter().enumerate() {
        for uid in owner_uids(obj) {
            dependents_of.entry(uid).or_default().push(i);
        }
    }
    for (t, obj) in &all {
        let owners = owner_uids(obj);
        if !owners.is_empty()
            && owners.iter().all(|u| !uids.contains(u))
            && obj.pointer("/metadata/deletionTimestamp").is_none()
        {
            let gvr = Gvr::new(&t.group, &t.version, &t.plural);
            let _gone = core.delete(
                &gvr,
                s(obj, "/metadata/namespace"),
                s(obj, "/metadata/name").unwrap_or_default(),
                &DeleteOptions::default(),
            );
        }
    }
    for (t, obj) in &all {
        if obj.pointer("/metadata/deletionTimestamp").is_none() {
            continue;
        }
        let uid = s(obj, "/metadata/uid").unwrap_or_default();
        let ns = s(obj, "/metadata/namespace").unwrap_or_default();
        let name = s(obj, "/metadata/name").unwrap_or_default();
        let deps = dependents_of.get(uid).cloned().unwrap_or_default();
        if has_finalizer(obj, "foregroundDeletion") {
            for i in &deps {
                let (dt, dep) = &all[*i];
                if dep.pointer("/metadata/deletionTimestamp").is_none() {
                    let gvr = Gvr::new(&dt.group, &dt.version, &dt.plural);
                    let _gone = core.delete(
                        &gvr,
                        s(dep, "/metadata/namespace"),
                        s(dep, "/metadata/name").unwrap_or_default(),
                        &DeleteOptions::default(),
                    );
                }
            }
            if deps.is_empty() {
                let _done = core.remove_finalizer(t, ns, name, "foregroundDeletion");
            }
        }
        if has_finalizer(obj, "orphan") {
            for i in &deps {
                let (dt, dep) = &all[*i];
                let refs: Vec<Value> = dep
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .map(|r| r.iter().filter(|x| x.get("uid").and_then(Value::as_str) != Some(uid)).cloned().collect())
                    .unwrap_or_default();
                let patch = json!({"metadata": {"ownerReferences": if refs.is_empty() { Value::Null } else { Value::Array(refs) }}});
                let gvr = Gvr::new(&dt.group, &dt.version, &dt.plural);
                let _stripped = core.patch(
                    &gvr,
                    s(dep, "/metadata/namespace"),
                    s(dep, "/metadata/name").unwrap_or_default(),
                    PatchKind::Merge,
                    &patch,
                    None,
                    &opts(MANAGER),
                );
            }
            let _done = core.remove_finalizer(t, ns, name, "orphan");
        }
    }
}

/// Empty terminating namespaces, then remove them.
fn namespaces(core: &Core) {
    for ns in list(core, &Gvr::new("", "v1", "namespaces")) {
        if ns.pointer("/metadata/deletionTimestamp").is_none() {
            continue;
        }
        let name = s(&ns, "/metadata/name").unwrap_or_default().to_string();
        let mut left = 0;
        for (t, obj) in core.snapshot_all() {
            if !t.namespaced || s(&obj, "/metadata/namespace") != Some(name.as_str()) {
                continue;
            }
            left += 1;
            if obj.pointer("/metadata/deletionTimestamp").is_none() {
                let gvr = Gvr::new(&t.group, &t.version, &t.plural);
                let _gone = core.delete(
                    &gvr,
                    Some(&name),
                    s(&obj, "/metadata/name").unwrap_or_default(),
                    &DeleteOptions::default(),
                );
            }
        }
        if left == 0 {
            core.finalize_namespace(&name);
        }
    }
}

/// The apiextensions server's naming and establishing controllers, for one new CRD: after the
/// configured delay its names are accepted (`NamesAccepted` True, `Established` False
/// `Installing`; the CRD handler serves its resources from then), then it is established
/// (`Established` True `InitialNamesAccepted`; discovery lists it from then). Name conflicts
/// between CRDs are not modelled.
fn accept_crd_names(
    core: &Arc<Core>,
    crd: &Value,
    plane: &ControlPlane,
    naming: &mut HashSet<String>,
    stop: &CancellationToken,
) {
    let Some(uid) = s(crd, "/metadata/uid").map(str::to_string) else { return };
    if super::core::crd_condition(crd, "NamesAccepted") || !naming.insert(uid.clone()) {
        return;
    }
    let Some(name) = s(crd, "/metadata/name").map(str::to_string) else { return };
    let core = core.clone();
    let delay = plane.crd_establish_delay;
    let stop = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        let condition = |type_: &str, status: &str, reason: &str, message: &str| json!({"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": now_rfc3339()});
        let write = |conditions: Vec<Value>| {
            let Ok(mut current) = core.get(&gvr_crds(), None, &name) else { return false };
            if s(&current, "/metadata/uid") != Some(uid.as_str()) {
                return false;
            }
            current["status"]["acceptedNames"] = current.pointer("/spec/names").cloned().unwrap_or_else(|| json!({}));
            current["status"]["conditions"] = json!(conditions);
            core.update(&gvr_crds(), None, &name, current, Some(Sub::Status), &opts(APISERVER)).is_ok()
        };
        let names_accepted = condition("NamesAccepted", "True", "NoConflicts", "no conflicts found");
        let installing = condition("Established", "False", "Installing", "the initial names have been accepted");
        if !write(vec![names_accepted.clone(), installing]) {
            return;
        }
        let established =
            condition("Established", "True", "InitialNamesAccepted", "the initial names have been accepted");
        write(vec![names_accepted, established]);
    });
}

/// The root-ca-cert publisher (`pkg/controller/certificates/rootcacertpublisher`): every namespace that is
/// not terminating holds the ConfigMap `kube-root-ca.crt` with the CA as `ca.crt` and its description
/// annotation; a missing one is created, a changed one is put back (other data keys go).
fn publish_root_ca(core: &Core, root_ca: &str) {
    let gvr = Gvr::new("", "v1", "configmaps");
    let data = json!({"ca.crt": root_ca});
    for ns in list(core, &Gvr::new("", "v1", "namespaces")) {
        if ns.pointer("/metadata/deletionTimestamp").is_some() {
            continue;
        }
        let Some(name) = s(&ns, "/metadata/name") else { continue };
        match core.get(&gvr, Some(name), ROOT_CA_CONFIG_MAP) {
            Ok(cm) => {
                let described = cm
                    .pointer("/metadata/annotations")
                    .and_then(|a| a.get(DESCRIPTION_ANNOTATION))
                    .and_then(Value::as_str)
                    .is_some_and(|d| !d.is_empty());
                if cm.get("data") == Some(&data) && described {
                    continue;
                }
                let mut body = cm.clone();
                body["data"] = data.clone();
                body["metadata"]["annotations"][DESCRIPTION_ANNOTATION] = json!(ROOT_CA_DESCRIPTION);
                let _updated = core.update(&gvr, Some(name), ROOT_CA_CONFIG_MAP, body, None, &opts(MANAGER));
            }
            Err(e) if e.code == 404 => {
                let cm = json!({
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": ROOT_CA_CONFIG_MAP, "annotations": {DESCRIPTION_ANNOTATION: ROOT_CA_DESCRIPTION}},
                    "data": data,
                });
                let _created = core.create(&gvr, Some(name), cm, &opts(MANAGER));
            }
            Err(_) => {}
        }
    }
}

fn pods_owned_by(pods: &PodsByOwner, owner: &Value) -> Vec<Value> {
    let uid = s(owner, "/metadata/uid").unwrap_or_default();
    pods.get(uid).cloned().unwrap_or_default()
}

fn is_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions").and_then(Value::as_array).is_some_and(|c| {
        c.iter().any(|c| c.get("type") == Some(&json!("Ready")) && c.get("status") == Some(&json!("True")))
    })
}

fn new_pod(owner: &Value, template: &Value, name: String, extra_labels: &BTreeMap<String, String>) -> Value {
    let mut meta = template.get("metadata").cloned().unwrap_or_else(|| json!({}));
    for (k, v) in extra_labels {
        meta["labels"][k] = json!(v);
    }
    meta["name"] = json!(name);
    meta["ownerReferences"] = json!([owner_ref(owner)]);
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template.get("spec").cloned().unwrap_or_else(|| json!({}))})
}

fn set_status(core: &Core, gvr: &Gvr, obj: &Value, status: Value) {
    if obj.get("status") == Some(&status) {
        return;
    }
    let mut body = obj.clone();
    body["status"] = status;
    let _written = core.update(
        gvr,
        s(obj, "/metadata/namespace"),
        s(obj, "/metadata/name").unwrap_or_default(),
        body,
        Some(Sub::Status),
        &opts(MANAGER),
    );
}

fn condition(type_: &str, status: bool, reason: &str, message: &str, previous: Option<&Value>) -> Value {
    let status_str = if status { "True" } else { "False" };
    let now = now_rfc3339();
    let old = previous
        .and_then(|c| c.as_array())
        .and_then(|cs| cs.iter().find(|c| c.get("type") == Some(&json!(type_))).cloned());
    let transition = match &old {
        Some(o) if o.get("status") == Some(&json!(status_str)) => {
            o.get("lastTransitionTime").cloned().unwrap_or(json!(now))
        }
        _ => json!(now),
    };
    let update = match &old {
        Some(o) if o.get("status") == Some(&json!(status_str)) && o.get("reason") == Some(&json!(reason)) => {
            o.get("lastUpdateTime").cloned().unwrap_or(json!(now))
        }
        _ => json!(now),
    };
    json!({"type": type_, "status": status_str, "reason": reason, "message": message, "lastTransitionTime": transition, "lastUpdateTime": update})
}

/// The Deployment controller: pods of the current template (by hash), scaled to spec.replicas;
/// old pods removed once the new ones are ready; status as the real controller reports it.
fn deployment(core: &Core, d: &Value, pods: &PodsByOwner) {
    if d.pointer("/metadata/deletionTimestamp").is_some() {
        return;
    }
    let Some(template) = d.pointer("/spec/template") else { return };
    let desired = d.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1).max(0) as usize;
    let hash = template_hash(template);
    let name = s(d, "/metadata/name").unwrap_or_default().to_string();
    let ns = s(d, "/metadata/namespace").map(str::to_string);
    let pods: Vec<Value> =
        pods_owned_by(pods, d).into_iter().filter(|p| p.pointer("/metadata/deletionTimestamp").is_none()).collect();
    let (current, old): (Vec<Value>, Vec<Value>) =
        pods.into_iter().partition(|p| s(p, "/metadata/labels/pod-template-hash") == Some(hash.as_str()));
    if current.len() < desired {
        let mut labels = BTreeMap::new();
        labels.insert("pod-template-hash".to_string(), hash.clone());
        for _ in current.len()..desired {
            let pod_name = format!("{name}-{hash}-{}", random_suffix(5));
            let pod = new_pod(d, template, pod_name, &labels);
            let _created = core.create(&gvr_pods(), ns.as_deref(), pod, &opts(MANAGER));
        }
    } else if current.len() > desired {
        let mut extra = current.clone();
        extra.sort_by(|a, b| s(b, "/metadata/creationTimestamp").cmp(&s(a, "/metadata/creationTimestamp")));
        for p in extra.iter().take(current.len() - desired) {
            let _gone = core.delete(
                &gvr_pods(),
                ns.as_deref(),
                s(p, "/metadata/name").unwrap_or_default(),
                &DeleteOptions::default(),
            );
        }
    }
    let current_ready = current.iter().filter(|p| is_ready(p)).count();
    if current_ready >= desired.min(current.len()) && current.len() >= desired {
        for p in &old {
            let _gone = core.delete(
                &gvr_pods(),
                ns.as_deref(),
                s(p, "/metadata/name").unwrap_or_default(),
                &DeleteOptions::default(),
            );
        }
    }
    let total = current.len().min(desired) + old.len();
    let ready =
        current.iter().take(desired).filter(|p| is_ready(p)).count() + old.iter().filter(|p| is_ready(p)).count();
    let updated = current.len().min(desired);
    let previous = d.pointer("/status/conditions");
    let available = ready >= desired;
    let progressed = updated >= desired && current_ready >= desired && old.is_empty();
    let mut status = json!({
        "observedGeneration": d.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
        "replicas": total,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": ready,
        "terminatingReplicas": 0,
        "conditions": [
            if available {
                condition("Available", true, "MinimumReplicasAvailable", "Deployment has minimum availability.", previous)
            } else {
                condition("Available", false, "MinimumReplicasUnavailable", "Deployment does not have minimum availability.", previous)
            },
            if progressed {
                condition("Progressing", true, "NewReplicaSetAvailable", &format!("ReplicaSet \"{name}-{hash}\" has successfully progressed."), previous)
            } else {
                condition("Progressing", true, "ReplicaSetUpdated", &format!("ReplicaSet \"{name}-{hash}\" is progressing."), previous)
            },
        ],
    });
    if ready < total {
        status["unavailableReplicas"] = json!(total - ready);
    }
    if ready == 0
        && let Some(m) = status.as_object_mut()
    {
        m.remove("readyReplicas");
        m.remove("availableReplicas");
    }
    set_status(core, &gvr_deployments(), d, status);
}

fn pod_failed_by_disruption(pod: &Value) -> bool {
    pod.pointer("/status/conditions").and_then(Value::as_array).is_some_and(|c| {
        c.iter().any(|c| c.get("type") == Some(&json!("DisruptionTarget")) && c.get("status") == Some(&json!("True")))
    })
}

fn exit_code(pod: &Value) -> Option<i64> {
    pod.pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find_map(|c| c.pointer("/state/terminated/exitCode").and_then(Value::as_i64)))
}

/// What a podFailurePolicy says of a failed pod: `FailJob`, `Ignore`, `Count`.
fn failure_action(job: &Value, pod: &Value) -> &'static str {
    let Some(rules) = job.pointer("/spec/podFailurePolicy/rules").and_then(Value::as_array) else { return "Count" };
    for rule in rules {
        let action = match rule.get("action").and_then(Value::as_str) {
            Some("FailJob") => "FailJob",
            Some("Ignore") => "Ignore",
            _ => "Count",
        };
        if let Some(codes) = rule.get("onExitCodes") {
            let values: Vec<i64> = codes
                .get("values")
                .and_then(Value::as_array)
                .map(|v| v.iter().filter_map(Value::as_i64).collect())
                .unwrap_or_default();
            let Some(code) = exit_code(pod) else { continue };
            let hit = match codes.get("operator").and_then(Value::as_str) {
                Some("NotIn") => !values.contains(&code),
                _ => values.contains(&code),
            };
            if hit && !(codes.get("operator").and_then(Value::as_str) == Some("NotIn") && code == 0) {
                return action;
            }
        }
        if let Some(conds) = rule.get("onPodConditions").and_then(Value::as_array) {
            let hit = conds.iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some("DisruptionTarget")
                    && c.get("status").and_then(Value::as_str).unwrap_or("True") == "True"
                    && pod_failed_by_disruption(pod)
            });
            if hit {
                return action;
            }
        }
    }
    "Count"
}

fn job_finished(job: &Value) -> bool {
    job.pointer("/status/conditions").and_then(Value::as_array).is_some_and(|c| {
        c.iter().any(|c| {
            matches!(c.get("type").and_then(Value::as_str), Some("Complete" | "Failed"))
                && c.get("status").and_then(Value::as_str) == Some("True")
        })
    })
}

fn job_condition(type_: &str, reason: &str, message: &str) -> Value {
    let now = now_rfc3339();
    json!({"type": type_, "status": "True", "reason": reason, "message": message, "lastProbeTime": now, "lastTransitionTime": now})
}

/// The Job controller: one pod at a time (parallelism and completions 1), backoffLimit,
/// podFailurePolicy (FailJob, Ignore, Count), activeDeadlineSeconds, and the two terminal
/// conditions a real Job gets.
fn job(core: &Core, j: &Value, pods: &PodsByOwner) {
    if j.pointer("/metadata/deletionTimestamp").is_some() || job_finished(j) {
        return;
    }
    if j.pointer("/spec/suspend").and_then(Value::as_bool) == Some(true) {
        return;
    }
    let ns = s(j, "/metadata/namespace").map(str::to_string);
    let name = s(j, "/metadata/name").unwrap_or_default().to_string();
    let pods = pods_owned_by(pods, j);
    let backoff = j.pointer("/spec/backoffLimit").and_then(Value::as_i64).unwrap_or(6);
    let mut status = j.get("status").cloned().unwrap_or_else(|| json!({}));
    let start = status.get("startTime").and_then(Value::as_str).map(str::to_string).unwrap_or_else(now_rfc3339);
    status["startTime"] = json!(start);
    let succeeded = pods.iter().filter(|p| s(p, "/status/phase") == Some("Succeeded")).count();
    let failed: Vec<&Value> = pods.iter().filter(|p| s(p, "/status/phase") == Some("Failed")).collect();
    let counted_failures = failed.iter().filter(|p| failure_action(j, p) == "Count").count();
    let fail_job = failed.iter().any(|p| failure_action(j, p) == "FailJob");
    let active: Vec<&Value> = pods
        .iter()
        .filter(|p| {
            !matches!(s(p, "/status/phase"), Some("Succeeded" | "Failed"))
                && p.pointer("/metadata/deletionTimestamp").is_none()
        })
        .collect();
    let deadline_passed = j.pointer("/spec/activeDeadlineSeconds").and_then(Value::as_i64).is_some_and(|limit| {
        start
            .parse::<k8s_openapi::jiff::Timestamp>()
            .is_ok_and(|t| (k8s_openapi::jiff::Timestamp::now() - t).get_seconds() >= limit)
    });
    status["active"] = json!(active.len());
    status["ready"] = json!(active.iter().filter(|p| is_ready(p)).count());
    status["failed"] = json!(failed.len());
    status["succeeded"] = json!(succeeded);
    status["terminating"] = json!(0);
    status["uncountedTerminatedPods"] = json!({});
    if status["failed"] == json!(0)
        && let Some(m) = status.as_object_mut()
    {
        m.remove("failed");
    }
    if status["succeeded"] == json!(0)
        && let Some(m) = status.as_object_mut()
    {
        m.remove("succeeded");
    }
    let terminal = if succeeded >= 1 {
        let msg = "Reached expected number of succeeded pods";
        status["completionTime"] = json!(now_rfc3339());
        Some(vec![
            job_condition("SuccessCriteriaMet", "CompletionsReached", msg),
            job_condition("Complete", "CompletionsReached", msg),
        ])
    } else if fail_job {
        let pod = failed
            .iter()
            .find(|p| failure_action(j, p) == "FailJob")
            .map(|p| s(p, "/metadata/name").unwrap_or_default().to_string())
            .unwrap_or_default();
        let msg = format!(
            "Pod {}/{pod} has condition or exit code matching a FailJob rule of the podFailurePolicy",
            ns.clone().unwrap_or_default()
        );
        Some(vec![
            job_condition("FailureTarget", "PodFailurePolicy", &msg),
            job_condition("Failed", "PodFailurePolicy", &msg),
        ])
    } else if counted_failures as i64 > backoff {
        let msg = "Job has reached the specified backoff limit";
        Some(vec![
            job_condition("FailureTarget", "BackoffLimitExceeded", msg),
            job_condition("Failed", "BackoffLimitExceeded", msg),
        ])
    } else if deadline_passed {
        let msg = "Job was active longer than specified deadline";
        Some(vec![
            job_condition("FailureTarget", "DeadlineExceeded", msg),
            job_condition("Failed", "DeadlineExceeded", msg),
        ])
    } else {
        None
    };
    if let Some(conditions) = terminal {
        for p in &active {
            let _gone = core.delete(
                &gvr_pods(),
                ns.as_deref(),
                s(p, "/metadata/name").unwrap_or_default(),
                &DeleteOptions::default(),
            );
        }
        status["active"] = json!(0);
        status["conditions"] = json!(conditions);
        set_status(core, &gvr_jobs(), j, status);
        return;
    }
    if active.is_empty() {
        let Some(template) = j.pointer("/spec/template") else { return };
        let labels = BTreeMap::new();
        let pod = new_pod(j, template, format!("{name}-{}", random_suffix(5)), &labels);
        let _created = core.create(&gvr_pods(), ns.as_deref(), pod, &opts(MANAGER));
        status["active"] = json!(1);
    }
    set_status(core, &gvr_jobs(), j, status);
}

fn behavior_from_annotations(pod: &Value, config: &WorkloadConfig) -> PodBehavior {
    let annotation =
        |k: &str| pod.pointer(&format!("/metadata/annotations/{}", k.replace('/', "~1"))).and_then(Value::as_str);
    let run_to_completion = matches!(s(pod, "/spec/restartPolicy"), Some("Never" | "OnFailure"));
    let finish = run_to_completion.then(|| {
        let duration = annotation(DURATION_ANNOTATION).and_then(|d| d.parse::<f64>().ok()).unwrap_or(1.0).max(0.0);
        let outcome = if annotation(DISRUPTED_ANNOTATION) == Some("true") {
            Outcome::Disrupted
        } else if annotation(OUTCOME_ANNOTATION) == Some("fail") {
            Outcome::Fail(annotation(EXIT_CODE_ANNOTATION).and_then(|c| c.parse().ok()).unwrap_or(1))
        } else {
            Outcome::Succeed
        };
        let message = annotation(MESSAGE_ANNOTATION).unwrap_or_default().to_string();
        (Duration::from_secs_f64(duration), outcome, message)
    });
    PodBehavior { ready_after: config.pod_ready_delay, finish }
}

fn start_pod(
    core: &Arc<Core>,
    config: &WorkloadConfig,
    pod: &Value,
    started: &mut HashSet<String>,
    stop: &CancellationToken,
) {
    let Some(uid) = s(pod, "/metadata/uid").map(str::to_string) else { return };
    if s(pod, "/status/phase") != Some("Pending") || !started.insert(uid) {
        return;
    }
    let behavior =
        config.script.as_ref().and_then(|script| script(pod)).unwrap_or_else(|| behavior_from_annotations(pod, config));
    let core = core.clone();
    let ns = s(pod, "/metadata/namespace").map(str::to_string);
    let name = s(pod, "/metadata/name").unwrap_or_default().to_string();
    let containers: Vec<(String, String)> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    (s(c, "/name").unwrap_or_default().to_string(), s(c, "/image").unwrap_or_default().to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    let stop = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(behavior.ready_after) => {}
        }
        let started_at = now_rfc3339();
        let ip = {
            use rand::Rng;
            let mut rng = rand::rng();
            format!("10.244.{}.{}", rng.random_range(0..255), rng.random_range(2..255))
        };
        let running = |ready: bool| {
            let cond = |t: &str| json!({"type": t, "status": if ready || t == "PodScheduled" || t == "Initialized" { "True" } else { "False" }, "lastProbeTime": null, "lastTransitionTime": started_at});
            json!({
                "phase": "Running",
                "conditions": [cond("PodScheduled"), cond("Initialized"), cond("ContainersReady"), cond("Ready")],
                "containerStatuses": containers.iter().map(|(n, image)| json!({"name": n, "image": image, "imageID": "", "lastState": {}, "ready": ready, "restartCount": 0, "started": true, "state": {"running": {"startedAt": started_at}}})).collect::<Vec<_>>(),
                "hostIP": "10.0.0.1",
                "podIP": ip,
                "podIPs": [{"ip": ip}],
                "qosClass": "BestEffort",
                "startTime": started_at,
            })
        };
        let write = |status: Value| {
            let Ok(current) = core.get(&gvr_pods(), ns.as_deref(), &name) else { return false };
            let mut body = current;
            body["status"] = status;
            core.update(&gvr_pods(), ns.as_deref(), &name, body, Some(Sub::Status), &opts(KUBELET)).is_ok()
        };
        if !write(running(true)) {
            return;
        }
        let Some((duration, outcome, message)) = behavior.finish else { return };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(duration) => {}
        }
        let finished_at = now_rfc3339();
        let (phase, code, reason) = match &outcome {
            Outcome::Succeed => ("Succeeded", 0, "Completed"),
            Outcome::Fail(code) => ("Failed", *code, "Error"),
            Outcome::Disrupted => ("Failed", 137, "Error"),
        };
        let mut terminated =
            json!({"exitCode": code, "reason": reason, "startedAt": started_at, "finishedAt": finished_at});
        if !message.is_empty() {
            terminated["message"] = json!(message);
        }
        let cond = |t: &str, v: bool, reason: Option<&str>| {
            let mut c = json!({"type": t, "status": if v { "True" } else { "False" }, "lastProbeTime": null, "lastTransitionTime": finished_at});
            if let Some(r) = reason {
                c["reason"] = json!(r);
            }
            c
        };
        let mut conditions = vec![
            cond("PodScheduled", true, None),
            cond("Initialized", true, None),
            cond("ContainersReady", false, Some("PodCompleted")),
            cond("Ready", false, Some("PodCompleted")),
        ];
        if outcome == Outcome::Disrupted {
            let mut c = cond("DisruptionTarget", true, Some("PreemptionByScheduler"));
            c["message"] = json!("Simulated preemption");
            conditions.push(c);
        }
        let status = json!({
            "phase": phase,
            "conditions": conditions,
            "containerStatuses": containers.iter().map(|(n, image)| json!({"name": n, "image": image, "imageID": "", "lastState": {}, "ready": false, "restartCount": 0, "started": false, "state": {"terminated": terminated}})).collect::<Vec<_>>(),
            "hostIP": "10.0.0.1",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "qosClass": "BestEffort",
            "startTime": started_at,
        });
        write(status);
    });
}

/// Labels, selector and template labels a real Job gets on create.
pub fn default_job(job: &mut Value) {
    let uid = s(job, "/metadata/uid").unwrap_or_default().to_string();
    let name = s(job, "/metadata/name").unwrap_or_default().to_string();
    let labels = json!({
        "batch.kubernetes.io/controller-uid": uid,
        "batch.kubernetes.io/job-name": name,
        "controller-uid": uid,
        "job-name": name,
    });
    if let Some(map) = labels.as_object() {
        for (k, v) in map {
            job["metadata"]["labels"][k] = v.clone();
            job["spec"]["template"]["metadata"]["labels"][k] = v.clone();
        }
    }
    if job.pointer("/spec/selector").is_none() {
        job["spec"]["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
    }
}
