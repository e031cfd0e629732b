//! Adapter canaries inside the pod: which LoRA adapters the runtime holds, and which one each
//! request goes to.
//!
//! The operator writes what every pod should hold into a ConfigMap mounted into the agent (see
//! [`Wanted`]); the agent reads the file, fetches each adapter with the `fetch-model` fetcher into
//! a directory shared with the runtime, loads it through the runtime's API ([`AdapterRuntime`],
//! vLLM's `/v1/load_lora_adapter`), and only then routes requests to it. A request goes to the
//! canary adapter for the canary's share of a stable hash of its subject (`x-flywheel-subject`,
//! `x-flywheel-session`, or the OpenAI `user` field; random when none), so one user sees one
//! version throughout a step; its `model` field is rewritten to the adapter's name and its answer
//! stamped with the adapter's version. What the pod holds is served read-only on the admin port
//! (`GET /v1/adapters`, [`Report`]), where the operator reads each pod's readiness.
//!
//! There is no write endpoint: the desired state lives in the API server (RBAC, audit, it
//! survives an agent restart), and the agent only reads a file the kubelet projects.

mod routing;
mod runtime;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use self::routing::{Arm, ArmGuard, Routing, subject_key};
pub use self::runtime::{AdapterRuntime, RuntimeError, Vllm};

use crate::fetch_model::{self, FetchOptions};

/// The file name of the wanted state in the mounted ConfigMap.
pub const WANTED_KEY: &str = "adapters.json";

/// An adapter to hold: its version (also its name in the runtime) and where it is stored.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AdapterRef {
    /// Version label, the adapter's name in the runtime and in `x-flywheel-model-version`.
    pub version: String,
    /// Where the adapter is (any URI `flywheel fetch-model` fetches).
    pub uri: String,
}

/// The canary adapter and its share of requests.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CanaryRef {
    /// Version label and name in the runtime.
    pub version: String,
    /// Where the adapter is.
    pub uri: String,
    /// Percent of requests (by subject) sent to it, 0 to 100.
    pub weight: i32,
}

/// What every pod of a ModelDeployment should hold, as the operator writes it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Wanted {
    /// The stable adapter; none serves the base model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable: Option<AdapterRef>,
    /// The canary adapter, during a rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryRef>,
}

impl Wanted {
    /// The adapters named, stable first.
    pub fn adapters(&self) -> Vec<AdapterRef> {
        let mut out: Vec<AdapterRef> = self.stable.iter().cloned().collect();
        if let Some(c) = &self.canary {
            out.push(AdapterRef { version: c.version.clone(), uri: c.uri.clone() });
        }
        out
    }

    fn check(&self) -> Result<(), String> {
        for a in self.adapters() {
            let ok = !a.version.is_empty()
                && a.version.len() <= 63
                && a.version.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
                && a.version != "."
                && a.version != "..";
            if !ok {
                return Err(format!("adapter version {:?} is not a version label", a.version));
            }
        }
        if let Some(c) = &self.canary {
            if !(0..=100).contains(&c.weight) {
                return Err(format!("canary weight {} is not within 0..100", c.weight));
            }
            if self.stable.as_ref().is_some_and(|s| s.version == c.version) {
                return Err(format!("{} is both the stable and the canary adapter", c.version));
            }
        }
        Ok(())
    }
}

/// What one pod holds and serves: `GET /v1/adapters` on the agent's admin port.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// What the agent last read from the mounted file.
    pub wanted: Wanted,
    /// Adapters the runtime reports loaded (its `/v1/models`), at the last look.
    pub loaded: Vec<String>,
    /// Wanted adapters that could not be fetched or loaded, with why.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub failures: BTreeMap<String, String>,
    /// The version stable requests go to (the base model's when no adapter is stable).
    pub stable: String,
    /// The canary version requests go to, when one is loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<String>,
    /// The canary's percent of requests now.
    pub weight: i32,
    /// The file could not be read or parsed (the previous wanted state is kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Report {
    /// The pod serves `version` (as stable or canary) from a loaded adapter.
    pub fn serves(&self, version: &str) -> bool {
        self.loaded.iter().any(|l| l == version) && (self.stable == version || self.canary.as_deref() == Some(version))
    }
}

/// Where adapters come from, when not from `fetch-model`'s fetcher (the demo's simulated
/// object store).
pub trait AdapterStore: Send + Sync {
    /// Puts the adapter at `uri` into `dir`.
    fn fetch<'a>(&'a self, uri: &'a str, dir: &'a Path) -> futures::future::BoxFuture<'a, Result<(), String>>;
}

/// How the agent manages adapters.
#[derive(Clone)]
pub struct AdapterSettings {
    /// The mounted ConfigMap's file with the [`Wanted`] state.
    pub wanted_file: PathBuf,
    /// The directory shared with the runtime where adapters are fetched (one per version).
    pub dir: PathBuf,
    /// The runtime's adapter API.
    pub runtime: Arc<dyn AdapterRuntime>,
    /// How adapters are fetched.
    pub fetch: FetchOptions,
    /// Another store to fetch from (none: `fetch-model`'s fetcher with `fetch`).
    pub store: Option<Arc<dyn AdapterStore>>,
    /// How often the file and the runtime are looked at.
    pub resync: Duration,
    /// Longest fetch and load of one adapter.
    pub load_timeout: Duration,
    /// Wait after a failed load before trying again.
    pub retry_after: Duration,
    /// Longest wait for requests on a retired adapter to finish before it is unloaded.
    pub drain_timeout: Duration,
}

impl std::fmt::Debug for AdapterSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdapterSettings")
            .field("wanted_file", &self.wanted_file)
            .field("dir", &self.dir)
            .field("resync", &self.resync)
            .finish_non_exhaustive()
    }
}

impl AdapterSettings {
    /// Defaults around the file, the directory and the runtime.
    pub fn new(wanted_file: PathBuf, dir: PathBuf, runtime: Arc<dyn AdapterRuntime>) -> Self {
        Self {
            wanted_file,
            dir,
            runtime,
            fetch: FetchOptions::from_env(),
            store: None,
            resync: Duration::from_secs(1),
            load_timeout: Duration::from_secs(120),
            retry_after: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Default)]
struct State {
    wanted: Wanted,
    file_error: Option<String>,
    loaded: BTreeSet<String>,
    failures: BTreeMap<String, (String, Instant)>,
    /// Adapters this agent loaded (only these are ever unloaded).
    ours: BTreeSet<String>,
    /// Arms no longer routed to, until their requests finish.
    draining: BTreeMap<String, (Arc<Arm>, Instant)>,
}

/// The adapters of one pod: the routing the proxy reads on every request, and the loop that
/// keeps the runtime in line with the mounted file.
pub struct Adapters {
    settings: AdapterSettings,
    base: Arc<Arm>,
    routing: RwLock<Arc<Routing>>,
    state: Mutex<State>,
}

impl Adapters {
    /// The base model's version answers until an adapter is loaded.
    pub fn new(settings: AdapterSettings, base_version: &str) -> Result<Arc<Self>, String> {
        let base = Arc::new(Arm::new(base_version, None)?);
        Ok(Arc::new(Self {
            settings,
            routing: RwLock::new(Arc::new(Routing::new(base.clone(), None))),
            base,
            state: Mutex::new(State::default()),
        }))
    }

    /// The routing now (one read lock and a reference count per request).
    pub fn routing(&self) -> Arc<Routing> {
        match self.routing.read() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What the pod holds and serves.
    pub fn report(&self) -> Report {
        let routing = self.routing();
        let state = self.state();
        Report {
            wanted: state.wanted.clone(),
            loaded: state.loaded.iter().cloned().collect(),
            failures: state.failures.iter().map(|(v, (m, _))| (v.clone(), m.clone())).collect(),
            stable: routing.stable().version().to_string(),
            canary: routing.canary().map(|(a, _)| a.version().to_string()),
            weight: routing.canary().map_or(0, |(_, w)| i32::try_from(w / 100).unwrap_or(0)),
            error: state.file_error.clone(),
        }
    }

    /// Runs the loop until `stop`.
    pub fn start(self: &Arc<Self>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                me.sync_once().await;
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(me.settings.resync) => {}
                }
            }
        })
    }

    fn read_wanted(&self) {
        let path = &self.settings.wanted_file;
        let read = match std::fs::read_to_string(path) {
            Ok(text) if text.trim().is_empty() => Ok(Wanted::default()),
            Ok(text) => serde_json::from_str::<Wanted>(&text)
                .map_err(|e| format!("{}: {e}", path.display()))
                .and_then(|w| w.check().map(|()| w).map_err(|e| format!("{}: {e}", path.display()))),
            // No file yet (the ConfigMap is not projected yet): the base model alone.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Wanted::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        };
        let mut state = self.state();
        match read {
            Ok(w) => {
                if w != state.wanted {
                    tracing::info!(stable = ?w.stable.as_ref().map(|a| &a.version), canary = ?w.canary.as_ref().map(|c| (&c.version, c.weight)), "adapters wanted");
                }
                state.wanted = w;
                state.file_error = None;
            }
            Err(e) => {
                if state.file_error.as_ref() != Some(&e) {
                    tracing::warn!(error = %e, "the wanted adapters cannot be read; keeping the previous ones");
                }
                state.file_error = Some(e);
            }
        }
    }

    /// One look: read the file, ask the runtime what it holds, load what is missing, route,
    /// unload what is retired and drained.
    pub async fn sync_once(&self) {
        self.read_wanted();
        let runtime = self.settings.runtime.clone();
        match tokio::time::timeout(self.settings.load_timeout, runtime.list()).await {
            Ok(Ok(listed)) => self.state().loaded = listed.into_iter().collect(),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "the runtime's adapter list is unavailable");
                return;
            }
            Err(_) => {
                tracing::warn!("the runtime's adapter list timed out");
                return;
            }
        }
        let wanted = self.state().wanted.clone();
        for adapter in wanted.adapters() {
            self.ensure_loaded(&adapter).await;
        }
        self.route(&wanted);
        self.unload_retired(&wanted).await;
    }

    async fn ensure_loaded(&self, adapter: &AdapterRef) {
        {
            let mut state = self.state();
            if state.loaded.contains(&adapter.version) {
                state.failures.remove(&adapter.version);
                return;
            }
            if let Some((_, at)) = state.failures.get(&adapter.version)
                && at.elapsed() < self.settings.retry_after
            {
                return;
            }
        }
        let result = tokio::time::timeout(self.settings.load_timeout, async {
            // A file:// adapter is on the pod's own file system already (as a file:// model
            // is); every other URI is fetched into the directory shared with the runtime.
            let dir = match adapter.uri.strip_prefix("file://") {
                Some(path) => PathBuf::from(format!("/{}", path.trim_start_matches('/'))),
                None => {
                    let dir = self.settings.dir.join(&adapter.version);
                    match &self.settings.store {
                        Some(store) => store.fetch(&adapter.uri, &dir).await,
                        None => fetch_model::fetch(&adapter.uri, &dir, &self.settings.fetch)
                            .await
                            .map(drop)
                            .map_err(|e| e.to_string()),
                    }
                    .map_err(|e| format!("fetching {}: {e}", adapter.uri))?;
                    dir
                }
            };
            self.settings.runtime.load(&adapter.version, &dir).await.map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|_| {
            Err(format!("loading {} took longer than {}s", adapter.version, self.settings.load_timeout.as_secs()))
        });
        let mut state = self.state();
        match result {
            Ok(()) => {
                tracing::info!(version = %adapter.version, uri = %adapter.uri, "adapter loaded");
                state.loaded.insert(adapter.version.clone());
                state.ours.insert(adapter.version.clone());
                state.failures.remove(&adapter.version);
            }
            Err(message) => {
                tracing::warn!(version = %adapter.version, error = %message, "adapter not loaded");
                let message: String = message.chars().take(500).collect();
                state.failures.insert(adapter.version.clone(), (message, Instant::now()));
            }
        }
    }

    /// Routes to what is loaded: the wanted stable adapter once loaded (until then the previous
    /// stable keeps serving, if still loaded, or the base), the canary once loaded.
    fn route(&self, wanted: &Wanted) {
        let current = self.routing();
        let mut state = self.state();
        let arm_for = |version: &str| -> Option<Arc<Arm>> {
            if current.stable().version() == version {
                return Some(current.stable().clone());
            }
            if let Some((a, _)) = current.canary()
                && a.version() == version
            {
                return Some(a.clone());
            }
            Arm::new(version, Some(version)).ok().map(Arc::new)
        };
        let stable = match &wanted.stable {
            Some(s) if state.loaded.contains(&s.version) => arm_for(&s.version),
            Some(_) if current.stable().is_adapter() && state.loaded.contains(current.stable().version()) => {
                Some(current.stable().clone())
            }
            _ => None,
        }
        .unwrap_or_else(|| self.base.clone());
        let canary = wanted
            .canary
            .as_ref()
            .filter(|c| state.loaded.contains(&c.version) && c.version != stable.version())
            .and_then(|c| arm_for(&c.version).map(|a| (a, u32::try_from(c.weight).unwrap_or(0).min(100) * 100)));
        let next = Routing::new(stable, canary);
        if next.same_as(&current) {
            return;
        }
        for old in current.arms() {
            if old.is_adapter() && !next.arms().iter().any(|a| Arc::ptr_eq(a, &old)) {
                state.draining.insert(old.version().to_string(), (old.clone(), Instant::now()));
            }
        }
        for a in next.arms() {
            state.draining.remove(a.version());
        }
        tracing::info!(stable = %next.stable().version(), canary = ?next.canary().map(|(a, w)| (a.version().to_string(), w / 100)), "routing");
        drop(state);
        match self.routing.write() {
            Ok(mut r) => *r = Arc::new(next),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(next),
        }
    }

    /// Adapters this agent loaded that nothing wants or routes to, once drained.
    fn retired(&self, keep: &BTreeSet<String>) -> Vec<String> {
        let state = self.state();
        let mut out = Vec::new();
        for v in &state.ours {
            if keep.contains(v) || !state.loaded.contains(v) {
                continue;
            }
            let drained = match state.draining.get(v) {
                Some((arm, since)) => arm.in_flight() == 0 || since.elapsed() >= self.settings.drain_timeout,
                None => true,
            };
            if drained {
                out.push(v.clone());
            }
        }
        out
    }

    async fn unload_retired(&self, wanted: &Wanted) {
        let routed: BTreeSet<String> = self.routing().arms().iter().map(|a| a.version().to_string()).collect();
        let keep: BTreeSet<String> = wanted.adapters().into_iter().map(|a| a.version).chain(routed).collect();
        let retired = self.retired(&keep);
        for version in retired {
            match tokio::time::timeout(self.settings.load_timeout, self.settings.runtime.unload(&version)).await {
                Ok(Ok(())) => {
                    tracing::info!(%version, "adapter unloaded");
                    {
                        let mut state = self.state();
                        state.loaded.remove(&version);
                        state.ours.remove(&version);
                        state.draining.remove(&version);
                    }
                    remove_dir(&self.settings.dir.join(&version)).await;
                }
                Ok(Err(e)) => tracing::warn!(%version, error = %e, "adapter not unloaded"),
                Err(_) => tracing::warn!(%version, "unloading the adapter timed out"),
            }
        }
    }
}

async fn remove_dir(dir: &Path) {
    if let Err(e) = tokio::fs::remove_dir_all(dir).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), error = %e, "removing an unloaded adapter's files");
    }
}

#[cfg(test)]
mod tests;
