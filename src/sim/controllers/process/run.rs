//! One pod's processes, from its volumes to its last status.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use super::mode::ProcessMode;
use super::network::PodNetwork;
use super::spec::{self, PathMap, References, SpecError};
use crate::sim::controllers::common::{gvr_pods, keep_others_conditions, s, write_pod_status};
use crate::sim::core::{Core, Gvr, now_rfc3339};

/// The field manager of the kubelet's writes.
const KUBELET: &str = "kubelet";
/// The pod IP when pods share this machine's network.
const HOST_NETWORK_IP: &str = "127.0.0.1";
/// A kubelet keeps at most this much of a termination message.
const MAX_MESSAGE: usize = 4096;
/// How often the kubelet looks at its processes.
const TICK: Duration = Duration::from_millis(100);

/// A started process group; dropping it kills the group, so nothing outlives the simulated
/// cluster or a test that drops it.
struct Group {
    child: Child,
    pgid: Option<i32>,
}

impl Group {
    fn signal(&self, signal: i32) {
        if let Some(pgid) = self.pgid {
            // SAFETY: kill(2) on a negative pid signals the process group; it touches no memory.
            unsafe {
                libc::kill(-pgid, signal);
            }
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
    }
}

/// Where a container is in its life.
enum State {
    Waiting { reason: String, message: Option<String> },
    Running { started_at: String },
    Terminated(Value),
}

/// One container (or init container) of the pod.
struct Slot {
    name: String,
    image: String,
    spec: Value,
    state: State,
    last: Option<Value>,
    restarts: u32,
    ready: bool,
    process: Option<Group>,
    restart_at: Option<Instant>,
    probe: Option<Probe>,
}

impl Slot {
    fn new(spec: &Value) -> Self {
        Self {
            name: s(spec, "/name").unwrap_or_default().to_string(),
            image: s(spec, "/image").unwrap_or_default().to_string(),
            spec: spec.clone(),
            state: State::Waiting { reason: "PodInitializing".into(), message: None },
            last: None,
            restarts: 0,
            ready: false,
            process: None,
            restart_at: None,
            probe: spec.get("readinessProbe").map(Probe::new),
        }
    }

    fn exit_code(&self) -> Option<i64> {
        match &self.state {
            State::Terminated(t) => t.get("exitCode").and_then(Value::as_i64),
            _ => None,
        }
    }

    fn status(&self) -> Value {
        let (state, started) = match &self.state {
            State::Waiting { reason, message } => {
                let mut w = json!({"reason": reason});
                if let Some(m) = message {
                    w["message"] = json!(m);
                }
                (json!({"waiting": w}), false)
            }
            State::Running { started_at } => (json!({"running": {"startedAt": started_at}}), true),
            State::Terminated(t) => (json!({"terminated": t}), false),
        };
        json!({
            "name": self.name,
            "image": self.image,
            "imageID": "",
            "lastState": self.last.as_ref().map_or_else(|| json!({}), |t| json!({"terminated": t})),
            "ready": self.ready,
            "restartCount": self.restarts,
            "started": started,
            "state": state,
        })
    }
}

/// A readiness probe as the container declares it.
struct Probe {
    action: Value,
    initial: Duration,
    period: Duration,
    timeout: Duration,
    success_threshold: u32,
    failure_threshold: u32,
    next: Option<Instant>,
    successes: u32,
    failures: u32,
}

impl Probe {
    fn new(spec: &Value) -> Self {
        let secs = |k: &str, default: u64| Duration::from_secs(spec.get(k).and_then(Value::as_u64).unwrap_or(default));
        let count = |k: &str| spec.get(k).and_then(Value::as_u64).map_or(1, |n| n.max(1)) as u32;
        Self {
            action: spec.clone(),
            initial: secs("initialDelaySeconds", 0),
            period: secs("periodSeconds", 10).max(Duration::from_secs(1)),
            timeout: secs("timeoutSeconds", 1).max(Duration::from_secs(1)),
            success_threshold: count("successThreshold"),
            failure_threshold: spec.get("failureThreshold").and_then(Value::as_u64).map_or(3, |n| n.max(1)) as u32,
            next: None,
            successes: 0,
            failures: 0,
        }
    }
}

/// The Secrets and ConfigMaps of the pod's namespace, read from the store.
struct StoreRefs<'a> {
    core: &'a Core,
    namespace: &'a str,
}

impl References for StoreRefs<'_> {
    fn secret(&self, name: &str) -> Option<BTreeMap<String, String>> {
        let secret = self.core.get(&Gvr::new("", "v1", "secrets"), Some(self.namespace), name).ok()?;
        let decode = |v: &Value| {
            let bytes = base64::engine::general_purpose::STANDARD.decode(v.as_str()?).ok()?;
            String::from_utf8(bytes).ok()
        };
        Some(data(&secret, "data").iter().filter_map(|(k, v)| Some((k.clone(), decode(v)?))).collect())
    }

    fn config_map(&self, name: &str) -> Option<BTreeMap<String, String>> {
        let cm = self.core.get(&Gvr::new("", "v1", "configmaps"), Some(self.namespace), name).ok()?;
        Some(data(&cm, "data").iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
    }
}

fn data(object: &Value, key: &str) -> serde_json::Map<String, Value> {
    object.get(key).and_then(Value::as_object).cloned().unwrap_or_default()
}

/// Why a pod's volumes cannot be set up (the kubelet's `FailedMount`).
#[derive(Debug, thiserror::Error)]
enum MountError {
    #[error("{kind} \"{name}\" not found")]
    Missing { kind: &'static str, name: String },
    #[error("cannot prepare {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// Why the pod stops being run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Deleted (or being deleted): terminate gracefully; a pod that finalizers keep gets its
    /// containers' last states, as a kubelet writes them before the pod is removed.
    Gone,
    /// The simulated cluster stops.
    Stop,
}

/// One pod run as processes.
pub(super) struct PodProcesses {
    core: Arc<Core>,
    mode: Arc<ProcessMode>,
    pod: Value,
    namespace: String,
    name: String,
    uid: String,
    dir: PathBuf,
    start_time: String,
    grace: Duration,
    restart_policy: String,
    /// The pod's IP.
    ip: String,
    /// Its network namespace, when it has one.
    net: Option<PodNetwork>,
    /// When each condition last changed, and to what.
    transitions: BTreeMap<&'static str, (bool, String)>,
}

impl PodProcesses {
    pub(super) fn new(core: Arc<Core>, mode: Arc<ProcessMode>, pod: Value) -> Self {
        let namespace = s(&pod, "/metadata/namespace").unwrap_or_default().to_string();
        let name = s(&pod, "/metadata/name").unwrap_or_default().to_string();
        let uid = s(&pod, "/metadata/uid").unwrap_or_default().to_string();
        let dir = mode.pod_dir(&namespace, &name, &uid);
        let grace = Duration::from_secs(
            pod.pointer("/spec/terminationGracePeriodSeconds").and_then(Value::as_u64).unwrap_or(30),
        );
        let restart_policy = s(&pod, "/spec/restartPolicy").unwrap_or("Always").to_string();
        Self {
            core,
            mode,
            pod,
            namespace,
            name,
            uid,
            dir,
            start_time: now_rfc3339(),
            grace,
            restart_policy,
            ip: HOST_NETWORK_IP.to_string(),
            net: None,
            transitions: BTreeMap::new(),
        }
    }

    /// Run the pod in its own network namespace (when the mode gives each pod one), then remove
    /// the namespace.
    pub(super) async fn run(mut self, stop: CancellationToken) {
        let bridge = self.mode.network().cloned();
        if let Some(bridge) = &bridge {
            match bridge.attach() {
                Ok(net) => {
                    self.ip = net.ip.to_string();
                    self.net = Some(net);
                }
                Err(e) => {
                    tracing::warn!(pod = %self.name, error = %e, "no network namespace for a process pod");
                    let mut main = self.containers("containers");
                    for slot in &mut main {
                        slot.state =
                            State::Waiting { reason: "ContainerCreating".into(), message: Some(e.to_string()) };
                    }
                    self.write(&[], &main);
                    return;
                }
            }
        }
        self.run_pod(stop).await;
        if let (Some(bridge), Some(net)) = (bridge, self.net.take()) {
            bridge.detach(&net);
        }
    }

    /// Run the pod to its end: its volumes, its init containers one by one, then its containers
    /// until they all end (by its restart policy) or the pod is deleted.
    async fn run_pod(&mut self, stop: CancellationToken) {
        let mut init: Vec<Slot> = self.containers("initContainers");
        let mut main: Vec<Slot> = self.containers("containers");
        let paths = loop {
            match self.volumes() {
                Ok(paths) => break paths,
                Err(e) => {
                    for slot in main.iter_mut().chain(init.iter_mut()) {
                        slot.state =
                            State::Waiting { reason: "ContainerCreating".into(), message: Some(e.to_string()) };
                    }
                    self.write(&init, &main);
                    if self.pause(Duration::from_secs(1), &stop).await.is_some() {
                        return;
                    }
                }
            }
        };
        for i in 0..init.len() {
            loop {
                self.start(&mut init[i], &paths);
                self.write(&init, &main);
                if let Some(end) = self.until_exit(&mut init[i], &stop).await {
                    self.terminate(&mut init, end).await;
                    if end == End::Gone {
                        self.write(&init, &main);
                    }
                    return;
                }
                if init[i].exit_code() == Some(0) {
                    break;
                }
                if self.restart_policy == "Never" {
                    for slot in &mut main {
                        slot.state = State::Waiting { reason: "PodInitializing".into(), message: None };
                    }
                    self.write(&init, &main);
                    return;
                }
                if self.pause(backoff(init[i].restarts), &stop).await.is_some() {
                    return;
                }
                init[i].restarts += 1;
            }
        }
        for slot in &mut main {
            self.start(slot, &paths);
        }
        self.write(&init, &main);
        let http = crate::http_client::builder().timeout(Duration::from_secs(5)).build().ok();
        loop {
            if let Some(end) = self.pause(TICK, &stop).await {
                self.terminate(&mut main, end).await;
                if end == End::Gone {
                    self.write(&init, &main);
                }
                return;
            }
            let mut changed = false;
            for slot in &mut main {
                changed |= self.reap(slot, false);
                changed |= self.restart_if_due(slot, &paths);
                changed |= probe(slot, http.as_ref(), &self.ip, self.net.as_ref()).await;
            }
            let done = main.iter().all(|c| matches!(c.state, State::Terminated(_)) && c.restart_at.is_none());
            if changed || done {
                self.write(&init, &main);
            }
            if done {
                return;
            }
        }
    }

    fn containers(&self, key: &str) -> Vec<Slot> {
        self.pod
            .pointer(&format!("/spec/{key}"))
            .and_then(Value::as_array)
            .map(|cs| cs.iter().map(Slot::new).collect())
            .unwrap_or_default()
    }

    /// Each volume's host directory, prepared: a claim's shared directory, a per-pod directory
    /// for the rest, with a Secret's or ConfigMap's keys written as files.
    fn volumes(&self) -> Result<BTreeMap<String, PathBuf>, MountError> {
        let mut dirs = BTreeMap::new();
        let refs = StoreRefs { core: &self.core, namespace: &self.namespace };
        for volume in self.pod.pointer("/spec/volumes").and_then(Value::as_array).into_iter().flatten() {
            let name = s(volume, "/name").unwrap_or_default().to_string();
            let dir = match s(volume, "/persistentVolumeClaim/claimName") {
                Some(claim) => self.mode.claim_dir(&self.namespace, claim),
                None => self.dir.join("volumes").join(&name),
            };
            create_dir(&dir)?;
            let files = if let Some(secret) = volume.get("secret") {
                let source = s(secret, "/secretName").unwrap_or_default();
                Some(("Secret", secret, source.to_string(), refs.secret(source)))
            } else if let Some(cm) = volume.get("configMap") {
                let source = s(cm, "/name").unwrap_or_default();
                Some(("ConfigMap", cm, source.to_string(), refs.config_map(source)))
            } else {
                None
            };
            if let Some((kind, source, source_name, found)) = files {
                let optional = source.get("optional").and_then(Value::as_bool).unwrap_or(false);
                match found {
                    Some(data) => write_keys(&dir, source, &data)?,
                    None if optional => {}
                    None => return Err(MountError::Missing { kind, name: source_name }),
                }
            }
            dirs.insert(name, dir);
        }
        Ok(dirs)
    }

    /// Start (or restart) a container's process.
    fn start(&self, slot: &mut Slot, volumes: &BTreeMap<String, PathBuf>) {
        slot.restart_at = None;
        slot.ready = false;
        match self.spawn(slot, volumes) {
            Ok(group) => {
                slot.process = Some(group);
                slot.state = State::Running { started_at: now_rfc3339() };
                if let Some(p) = &mut slot.probe {
                    p.next = Some(Instant::now() + p.initial);
                    p.successes = 0;
                    p.failures = 0;
                }
            }
            Err(Spawn::Config(e)) => {
                slot.state =
                    State::Waiting { reason: "CreateContainerConfigError".into(), message: Some(e.to_string()) };
                slot.restart_at = Some(Instant::now() + Duration::from_secs(1));
            }
            Err(Spawn::Start(message)) => {
                let now = now_rfc3339();
                let t = json!({
                    "exitCode": 128, "reason": "StartError", "message": message, "startedAt": now, "finishedAt": now,
                });
                if self.restart_policy == "Never" {
                    slot.state = State::Terminated(t);
                } else {
                    slot.state = State::Waiting { reason: "RunContainerError".into(), message: Some(message) };
                    slot.last = Some(t);
                    slot.restart_at = Some(Instant::now() + backoff(slot.restarts));
                }
            }
        }
    }

    fn spawn(&self, slot: &Slot, volumes: &BTreeMap<String, PathBuf>) -> Result<Group, Spawn> {
        let refs = StoreRefs { core: &self.core, namespace: &self.namespace };
        let vars = spec::environment(&self.pod, &slot.spec, &self.ip, &refs).map_err(Spawn::Config)?;
        let entrypoint = self.mode.entrypoint(&slot.image).unwrap_or_default();
        let argv = spec::argv(&slot.spec, entrypoint, &vars).map_err(Spawn::Config)?;
        let mut paths = PathMap::default();
        for mount in slot.spec.get("volumeMounts").and_then(Value::as_array).into_iter().flatten() {
            let (Some(volume), Some(at)) = (s(mount, "/name"), s(mount, "/mountPath")) else { continue };
            if let Some(dir) = volumes.get(volume) {
                let source = spec::mount_source(dir, mount);
                create_dir(&source).map_err(|e| Spawn::Start(e.to_string()))?;
                paths.add(at, source);
            }
        }
        let message_path = s(&slot.spec, "/terminationMessagePath").unwrap_or("/dev/termination-log");
        let message_file = self.message_file(slot);
        create_dir(&self.dir.join("termination")).map_err(|e| Spawn::Start(e.to_string()))?;
        std::fs::write(&message_file, b"").map_err(|e| Spawn::Start(format!("termination message file: {e}")))?;
        paths.add(message_path, message_file);
        let log = self.mode.log_file(&self.namespace, &self.name, &slot.name);
        if let Some(parent) = log.parent() {
            create_dir(parent).map_err(|e| Spawn::Start(e.to_string()))?;
        }
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| Spawn::Start(format!("log file {}: {e}", log.display())))?;
        let err = out.try_clone().map_err(|e| Spawn::Start(e.to_string()))?;
        let workdir = match s(&slot.spec, "/workingDir") {
            Some(w) => PathBuf::from(paths.translate(w)),
            None => self.dir.clone(),
        };
        create_dir(&workdir).map_err(|e| Spawn::Start(e.to_string()))?;
        // The image's entrypoint is this machine's command, not a path inside the container: only
        // what the container declares is translated.
        let from_image = if slot.spec.get("command").and_then(Value::as_array).is_some_and(|c| !c.is_empty()) {
            0
        } else {
            entrypoint.len()
        };
        let argv: Vec<String> =
            argv.iter().enumerate().map(|(i, a)| if i < from_image { a.clone() } else { paths.translate(a) }).collect();
        let mut command = self.command(&argv);
        command
            .env_clear()
            .envs(self.mode.base_env())
            .env("HOME", &self.dir)
            .env("HOSTNAME", &self.name)
            .envs(vars.iter().map(|(k, v)| (k, paths.translate(v))))
            .current_dir(&workdir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .kill_on_drop(true);
        let child = command.spawn().map_err(|e| {
            Spawn::Start(format!("failed to start container {:?}: exec: {:?}: {e}", slot.name, argv[0]))
        })?;
        let pgid = child.id().and_then(|id| i32::try_from(id).ok());
        Ok(Group { child, pgid })
    }

    /// A command run in the pod's network namespace, when it has one.
    fn command(&self, argv: &[String]) -> Command {
        match &self.net {
            Some(net) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &net.namespace]).args(argv);
                c
            }
            None => {
                let mut c = Command::new(&argv[0]);
                c.args(&argv[1..]);
                c
            }
        }
    }

    fn message_file(&self, slot: &Slot) -> PathBuf {
        self.dir.join("termination").join(format!("{}-{}", slot.name, slot.restarts))
    }

    /// The terminated state of a process that exited with `status`: exit code (128 + signal for
    /// a signal), reason, and the termination message (the file, or the log's tail under
    /// `FallbackToLogsOnError` when the file is empty and the container failed).
    fn terminated(&self, slot: &Slot, status: std::process::ExitStatus, started_at: &str) -> Value {
        use std::os::unix::process::ExitStatusExt;
        let (code, signal) = match (status.code(), status.signal()) {
            (Some(code), _) => (i64::from(code), None),
            (None, Some(sig)) => (128 + i64::from(sig), Some(sig)),
            (None, None) => (1, None),
        };
        let mut message = read_capped(&self.message_file(slot));
        if message.is_empty()
            && code != 0
            && s(&slot.spec, "/terminationMessagePolicy") == Some("FallbackToLogsOnError")
        {
            message = log_tail(&self.mode.log_file(&self.namespace, &self.name, &slot.name));
        }
        let mut t = json!({
            "exitCode": code,
            "reason": if code == 0 { "Completed" } else { "Error" },
            "startedAt": started_at,
            "finishedAt": now_rfc3339(),
        });
        if let Some(sig) = signal {
            t["signal"] = json!(sig);
        }
        if !message.is_empty() {
            t["message"] = json!(message);
        }
        t
    }

    /// Wait for an init container to exit (or the pod to go).
    async fn until_exit(&self, slot: &mut Slot, stop: &CancellationToken) -> Option<End> {
        while slot.process.is_some() {
            if let Some(end) = self.pause(TICK, stop).await {
                return Some(end);
            }
            self.reap(slot, true);
        }
        None
    }

    /// Record an exit; schedule a restart where the restart policy wants one.
    fn reap(&self, slot: &mut Slot, init: bool) -> bool {
        let Some(group) = slot.process.as_mut() else { return false };
        let Ok(Some(status)) = group.child.try_wait() else { return false };
        let started_at = match &slot.state {
            State::Running { started_at } => started_at.clone(),
            _ => now_rfc3339(),
        };
        let terminated = self.terminated(slot, status, &started_at);
        // The group's leader is gone; what it left behind in its group goes with it.
        slot.process = None;
        slot.ready = false;
        let failed = terminated.get("exitCode").and_then(Value::as_i64) != Some(0);
        // An init container is run again only when it failed (and the policy is not Never).
        let restart = match self.restart_policy.as_str() {
            "Never" => false,
            "OnFailure" => failed,
            _ => failed || !init,
        };
        if restart && !init {
            // As a kubelet shows it: the exit as the last state, waiting in back-off.
            let wait = backoff(slot.restarts);
            slot.state = State::Waiting {
                reason: "CrashLoopBackOff".into(),
                message: Some(format!(
                    "back-off {}s restarting failed container={} pod={}_{}({})",
                    wait.as_secs(),
                    slot.name,
                    self.name,
                    self.namespace,
                    self.uid
                )),
            };
            slot.last = Some(terminated);
            slot.restart_at = Some(Instant::now() + wait);
        } else {
            slot.state = State::Terminated(terminated);
        }
        true
    }

    fn restart_if_due(&self, slot: &mut Slot, volumes: &BTreeMap<String, PathBuf>) -> bool {
        if slot.restart_at.is_none_or(|at| Instant::now() < at) {
            return false;
        }
        if slot.last.is_some() {
            slot.restarts += 1;
        }
        self.start(slot, volumes);
        true
    }

    /// Sleep `d`, unless the pod goes or the cluster stops first.
    async fn pause(&self, d: Duration, stop: &CancellationToken) -> Option<End> {
        tokio::select! {
            () = stop.cancelled() => return Some(End::Stop),
            () = tokio::time::sleep(d) => {}
        }
        self.gone().then_some(End::Gone)
    }

    /// Whether the pod was deleted, replaced, or is being deleted.
    fn gone(&self) -> bool {
        match self.core.get(&gvr_pods(), Some(&self.namespace), &self.name) {
            Ok(pod) => {
                s(&pod, "/metadata/uid") != Some(self.uid.as_str())
                    || pod.pointer("/metadata/deletionTimestamp").is_some()
            }
            Err(_) => true,
        }
    }

    /// SIGTERM to every process group, SIGKILL to those left after the grace period (at most
    /// 2 s when the cluster itself stops).
    async fn terminate(&self, slots: &mut [Slot], end: End) {
        let grace = match end {
            End::Gone => self.grace,
            End::Stop => self.grace.min(Duration::from_secs(2)),
        };
        for group in slots.iter().filter_map(|s| s.process.as_ref()) {
            group.signal(libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            let running =
                slots.iter_mut().filter_map(|s| s.process.as_mut()).any(|g| matches!(g.child.try_wait(), Ok(None)));
            if !running {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for slot in slots.iter_mut() {
            let Some(mut group) = slot.process.take() else { continue };
            let started_at = match &slot.state {
                State::Running { started_at } => started_at.clone(),
                _ => now_rfc3339(),
            };
            let exited = group.child.try_wait().ok().flatten();
            // Dropping the group kills whatever is left of it.
            drop(group);
            slot.state = State::Terminated(match exited {
                Some(status) => self.terminated(slot, status, &started_at),
                None => {
                    json!({"exitCode": 137, "reason": "Error", "startedAt": started_at, "finishedAt": now_rfc3339()})
                }
            });
            slot.ready = false;
            slot.restart_at = None;
        }
    }

    /// Write the pod's status through `/status`, as the kubelet.
    fn write(&mut self, init: &[Slot], main: &[Slot]) {
        let status = self.status(init, main);
        // Conditions other writers own (a controller's `DisruptionTarget`) stay.
        let written =
            write_pod_status(&self.core, Some(&self.namespace), &self.name, Some(&self.uid), KUBELET, |pod| {
                Some(keep_others_conditions(pod, status.clone()))
            });
        if !written {
            tracing::debug!(pod = %self.name, "a process pod's status was not written (gone, or the write failed)");
        }
    }

    fn status(&mut self, init: &[Slot], main: &[Slot]) -> Value {
        let initialized = init.iter().all(|c| c.exit_code() == Some(0));
        let init_failed = self.restart_policy == "Never" && init.iter().any(|c| c.exit_code().is_some_and(|c| c != 0));
        let all_ended =
            initialized && main.iter().all(|c| matches!(c.state, State::Terminated(_)) && c.restart_at.is_none());
        let phase = if init_failed {
            "Failed"
        } else if !initialized || main.iter().all(|c| matches!(c.state, State::Waiting { .. }) && c.last.is_none()) {
            "Pending"
        } else if all_ended {
            if main.iter().all(|c| c.exit_code() == Some(0)) { "Succeeded" } else { "Failed" }
        } else {
            "Running"
        };
        let terminal = matches!(phase, "Succeeded" | "Failed");
        let ready = !terminal && initialized && main.iter().all(|c| c.ready);
        let not_ready_reason = if terminal { "PodCompleted" } else { "ContainersNotReady" };
        let conditions = vec![
            self.condition("PodScheduled", true, None),
            self.condition("Initialized", initialized, Some("ContainersNotInitialized")),
            self.condition("ContainersReady", ready, Some(not_ready_reason)),
            self.condition("Ready", ready, Some(not_ready_reason)),
        ];
        let mut status = json!({
            "phase": phase,
            "conditions": conditions,
            "containerStatuses": main.iter().map(Slot::status).collect::<Vec<_>>(),
            "hostIP": HOST_NETWORK_IP,
            "hostIPs": [{"ip": HOST_NETWORK_IP}],
            "podIP": self.ip,
            "podIPs": [{"ip": self.ip}],
            "qosClass": "BestEffort",
            "startTime": self.start_time,
        });
        if !init.is_empty() {
            status["initContainerStatuses"] = json!(init.iter().map(Slot::status).collect::<Vec<_>>());
        }
        status
    }

    /// A condition, with its transition time kept while its status holds.
    fn condition(&mut self, type_: &'static str, value: bool, reason_when_false: Option<&str>) -> Value {
        let now = now_rfc3339();
        let entry = self.transitions.entry(type_).or_insert_with(|| (value, now.clone()));
        if entry.0 != value {
            *entry = (value, now);
        }
        let mut c = json!({"type": type_, "status": if value { "True" } else { "False" }, "lastProbeTime": null, "lastTransitionTime": entry.1});
        if let (false, Some(reason)) = (value, reason_when_false) {
            c["reason"] = json!(reason);
        }
        c
    }
}

/// Why a container did not start.
enum Spawn {
    /// Its configuration refers to what does not exist: it waits, and is tried again.
    Config(SpecError),
    /// The program could not be started.
    Start(String),
}

/// The wait before restart `n`: 1 s, doubling, at most 10 s.
fn backoff(restarts: u32) -> Duration {
    Duration::from_secs(1u64 << restarts.min(4)).min(Duration::from_secs(10))
}

/// Run a container's readiness probe when it is due; whether its readiness changed.
async fn probe(slot: &mut Slot, http: Option<&reqwest::Client>, ip: &str, net: Option<&PodNetwork>) -> bool {
    let State::Running { .. } = slot.state else { return false };
    let Some(p) = slot.probe.as_mut() else {
        let changed = !slot.ready;
        slot.ready = true;
        return changed;
    };
    if p.next.is_some_and(|at| Instant::now() < at) {
        return false;
    }
    p.next = Some(Instant::now() + p.period);
    let ok = check(&p.action, &slot.spec, p.timeout, http, ip, net).await;
    if ok {
        p.successes += 1;
        p.failures = 0;
    } else {
        p.failures += 1;
        p.successes = 0;
    }
    let was = slot.ready;
    if ok && p.successes >= p.success_threshold {
        slot.ready = true;
    } else if !ok && p.failures >= p.failure_threshold {
        slot.ready = false;
    }
    was != slot.ready
}

/// One probe: an HTTP GET answered 200-399, a TCP connection accepted, or a command exiting 0.
async fn check(
    action: &Value,
    container: &Value,
    timeout: Duration,
    http: Option<&reqwest::Client>,
    ip: &str,
    net: Option<&PodNetwork>,
) -> bool {
    let port_of = |v: Option<&Value>| -> Option<u16> {
        match v? {
            Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
            Value::String(name) => container
                .get("ports")
                .and_then(Value::as_array)?
                .iter()
                .find(|p| p.get("name").and_then(Value::as_str) == Some(name))?
                .get("containerPort")?
                .as_u64()
                .and_then(|n| u16::try_from(n).ok()),
            _ => None,
        }
    };
    if let Some(get) = action.get("httpGet") {
        let (Some(port), Some(http)) = (port_of(get.get("port")), http) else { return false };
        let scheme = if s(get, "/scheme") == Some("HTTPS") { "https" } else { "http" };
        let host = s(get, "/host").unwrap_or(ip);
        let path = s(get, "/path").unwrap_or("/");
        let url = format!("{scheme}://{host}:{port}{path}");
        return matches!(http.get(url).timeout(timeout).send().await, Ok(r) if (200..400).contains(&r.status().as_u16()));
    }
    if let Some(tcp) = action.get("tcpSocket") {
        let Some(port) = port_of(tcp.get("port")) else { return false };
        let connect = tokio::net::TcpStream::connect((ip, port));
        return matches!(tokio::time::timeout(timeout, connect).await, Ok(Ok(_)));
    }
    if let Some(argv) = action.pointer("/exec/command").and_then(Value::as_array) {
        let argv: Vec<&str> = argv.iter().filter_map(Value::as_str).collect();
        let Some((program, args)) = argv.split_first() else { return false };
        let mut command = match net {
            Some(net) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &net.namespace, program]);
                c
            }
            None => Command::new(program),
        };
        command.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).kill_on_drop(true);
        return matches!(tokio::time::timeout(timeout, command.status()).await, Ok(Ok(s)) if s.success());
    }
    false
}

fn create_dir(dir: &Path) -> Result<(), MountError> {
    std::fs::create_dir_all(dir).map_err(|source| MountError::Io { path: dir.to_path_buf(), source })
}

/// A Secret's or ConfigMap's keys as files (all of them, or the `items` it names).
fn write_keys(dir: &Path, source: &Value, data: &BTreeMap<String, String>) -> Result<(), MountError> {
    let items: Vec<(String, String)> = match source.get("items").and_then(Value::as_array) {
        Some(items) => {
            items.iter().filter_map(|i| Some((s(i, "/key")?.to_string(), s(i, "/path")?.to_string()))).collect()
        }
        None => data.keys().map(|k| (k.clone(), k.clone())).collect(),
    };
    for (key, path) in items {
        let Some(value) = data.get(&key) else { continue };
        let file = dir.join(path.trim_start_matches('/'));
        if let Some(parent) = file.parent() {
            create_dir(parent)?;
        }
        std::fs::write(&file, value).map_err(|source| MountError::Io { path: file.clone(), source })?;
    }
    Ok(())
}

/// A file's text, at most [`MAX_MESSAGE`] bytes of it.
fn read_capped(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let cut = bytes.len().min(MAX_MESSAGE);
    String::from_utf8_lossy(&bytes[..cut]).trim_end().to_string()
}

/// The kubelet's fallback message: the log's last 80 lines, at most 2,048 bytes.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(80)..].join("\n");
    let start = tail.len().saturating_sub(2048);
    let start = (start..=tail.len()).find(|&i| tail.is_char_boundary(i)).unwrap_or(tail.len());
    tail[start..].to_string()
}
