//! `flywheel operator`: the controllers, leader election, health and metrics endpoints, and
//! graceful shutdown.

pub mod feedback_policy;
pub mod leader;
pub mod metrics;
pub mod model_deployment;
pub mod retrain_job;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use rand::Rng;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use self::metrics::Metrics;
use self::model_deployment::children::ChildSettings;
use self::model_deployment::{AnalysisSource, NoAnalysis};
use crate::api::{FeedbackPolicy, ModelDeployment, RetrainJob};

/// How the operator runs.
#[derive(Clone)]
pub struct OperatorConfig {
    /// Base URL of the feedback collector.
    pub collector_url: Option<String>,
    /// Token the operator presents to the collector (statistics and dataset snapshots need
    /// `write` for snapshots).
    pub collector_token: Option<String>,
    /// Address of `/healthz`, `/readyz` and `/metrics` (port 0 picks one).
    pub metrics_listen: SocketAddr,
    /// Leader election, or `None` to reconcile without it.
    pub leader_election: Option<leader::LeaseConfig>,
    /// Reconciles running at once per controller.
    pub concurrency: u16,
    /// Image that runs `flywheel fetch-model` in inference pods (the operator's own).
    pub operator_image: String,
    /// Where the feedback evidence of `Analysis` gates comes from.
    pub analysis: Arc<dyn AnalysisSource>,
    /// Where the autoscaler reads the load of pods (their `/metrics` by default).
    pub load_source: Arc<dyn crate::autoscale::scrape::LoadSource>,
    /// How often a ModelDeployment with `spec.scaling` is re-evaluated.
    pub scale_interval: std::time::Duration,
    /// Least time between two status writes of a FeedbackPolicy whose statistics alone changed.
    pub stats_write_interval: std::time::Duration,
    /// Secret (in each ModelDeployment's namespace, key `token`) holding the collector token
    /// the injected agents use.
    pub collector_token_secret: String,
    /// The namespaces the operator watches, lists and writes in; empty: every namespace.
    pub watch_namespaces: Vec<String>,
}

impl OperatorConfig {
    /// Settings for tests and the demo: no leader election, metrics on a free port.
    pub fn local() -> Self {
        Self {
            collector_url: None,
            collector_token: None,
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            leader_election: None,
            concurrency: 8,
            operator_image: default_image(),
            analysis: Arc::new(NoAnalysis),
            load_source: Arc::new(crate::autoscale::scrape::HttpScraper::default()),
            scale_interval: std::time::Duration::from_secs(2),
            stats_write_interval: std::time::Duration::from_secs(1),
            collector_token_secret: "flywheel-collector-token".to_string(),
            watch_namespaces: Vec::new(),
        }
    }

    /// These settings, reconciling only in `namespace` (as every test's operator does, so two
    /// operators on one cluster never reconcile each other's objects).
    #[must_use]
    pub fn scoped_to(mut self, namespace: &str) -> Self {
        self.watch_namespaces = vec![namespace.to_string()];
        self
    }
}

/// Where a set of controllers watches: one namespace, or every namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Every namespace (cluster-wide rights on namespaced resources needed).
    All,
    /// One namespace (a Role in it is enough).
    Namespace(String),
}

impl Scope {
    /// The scopes of a list of namespaces: `All` for an empty list, else one per distinct name.
    pub fn of(namespaces: &[String]) -> Vec<Scope> {
        if namespaces.is_empty() {
            return vec![Scope::All];
        }
        let mut seen = std::collections::BTreeSet::new();
        namespaces.iter().filter(|n| seen.insert(n.as_str())).map(|n| Scope::Namespace(n.clone())).collect()
    }

    /// An API for `K` in this scope.
    pub fn api<K>(&self, client: &Client) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    {
        match self {
            Scope::All => Api::all(client.clone()),
            Scope::Namespace(ns) => Api::namespaced(client.clone(), ns),
        }
    }

    /// Whether an object in `namespace` is in this scope.
    pub fn contains(&self, namespace: Option<&str>) -> bool {
        match self {
            Scope::All => true,
            Scope::Namespace(ns) => namespace == Some(ns.as_str()),
        }
    }
}

/// The image of this build: `ghcr.io/flywheel-dev/flywheel:<version>`.
pub fn default_image() -> String {
    format!("ghcr.io/flywheel-dev/flywheel:{}", env!("CARGO_PKG_VERSION"))
}

/// Errors that stop the operator.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// The health and metrics endpoint could not listen.
    #[error("binding the metrics endpoint {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// Shared by every reconcile.
pub struct Context {
    /// The client.
    pub client: Client,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Event recorder.
    pub recorder: Recorder,
    /// Settings that shape children.
    pub settings: ChildSettings,
    /// Feedback evidence for analysis gates.
    pub analysis: Arc<dyn AnalysisSource>,
    /// Load of pods, for the autoscaler.
    pub load_source: Arc<dyn crate::autoscale::scrape::LoadSource>,
    /// How often scaled ModelDeployments are re-evaluated.
    pub scale_interval: std::time::Duration,
    /// Least time between two statistics-only status writes of a FeedbackPolicy.
    pub stats_write_interval: std::time::Duration,
    /// The autoscaler's memory per ModelDeployment track (`namespace/name/track`).
    pub scalers: Mutex<HashMap<String, crate::autoscale::TrackState>>,
    /// The collector, when the operator has one.
    pub collector: Option<crate::collector::client::CollectorClient>,
    /// The collector's change feeds that wake FeedbackPolicies.
    pub feeds: feedback_policy::feed::Feeds,
    failures: Mutex<HashMap<String, u32>>,
    scheduled: Mutex<HashMap<String, Instant>>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn merge_patch_nulls_removed_fields() {
        let before = json!({"canary": {"version": "v2"}, "stable": {"version": "v1", "uri": "a"}, "history": [1]});
        let after = json!({"stable": {"version": "v2", "uri": "a"}, "history": [1, 2]});
        let patch = super::merge_patch_between(&before, &after);
        assert_eq!(patch, json!({"canary": null, "stable": {"version": "v2"}, "history": [1, 2]}));
        let mut applied = before.clone();
        json_patch::merge(&mut applied, &patch);
        assert_eq!(applied, after);
    }
}

fn key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        obj.meta().namespace.clone().unwrap_or_default(),
        obj.meta().name.clone().unwrap_or_default()
    )
}

impl Context {
    /// Publish an Event about `obj`; a failure to publish is logged, never fatal.
    pub async fn publish<K: Resource<DynamicType = ()>>(&self, obj: &K, type_: EventType, reason: &str, note: &str) {
        let reference = obj.object_ref(&());
        if let Err(e) = self.recorder.publish(&model_deployment::event(type_, reason, note), &reference).await {
            tracing::warn!(reason, error = %e, "could not publish an Event");
        }
    }

    /// The action for a successful reconcile that wants another look after `after` (or only on
    /// a change): records it for the queue depth metric and resets the failure count.
    pub fn requeue<K: Resource<DynamicType = ()>>(&self, obj: &K, after: Option<Duration>) -> Action {
        self.requeue_for(model_deployment::CONTROLLER, obj, after)
    }

    /// [`Self::requeue`] for the controller named `controller`.
    pub fn requeue_for<K: Resource<DynamicType = ()>>(
        &self,
        controller: &str,
        obj: &K,
        after: Option<Duration>,
    ) -> Action {
        let k = key(obj);
        self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&k);
        let mut scheduled = self.scheduled.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match after {
            Some(after) => {
                scheduled.insert(k, Instant::now() + after);
            }
            None => {
                scheduled.remove(&k);
            }
        }
        let now = Instant::now();
        scheduled.retain(|_, due| *due > now);
        let prefix = format!("{}/", K::kind(&()));
        let depth = scheduled.keys().filter(|k| k.starts_with(&prefix)).count();
        self.metrics.set_queued(controller, i64::try_from(depth).unwrap_or(i64::MAX));
        after.map_or_else(Action::await_change, Action::requeue)
    }

    /// Backoff with jitter for an object whose reconcile failed: 1 s doubling to 5 min, ±20 %.
    fn backoff<K: Resource<DynamicType = ()>>(&self, obj: &K) -> Duration {
        let k = key(obj);
        let mut failures = self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = failures.entry(k).or_insert(0);
        *n = n.saturating_add(1);
        let base = Duration::from_secs(1).saturating_mul(1 << (*n - 1).min(9)).min(Duration::from_secs(300));
        let jitter = rand::rng().random_range(0.8..1.2);
        base.mul_f64(jitter)
    }
}

fn error_policy<K, E>(obj: Arc<K>, error: &E, ctx: Arc<Context>) -> Action
where
    K: Resource<DynamicType = ()>,
    E: std::fmt::Display,
{
    let wait = ctx.backoff(obj.as_ref());
    tracing::debug!(kind = %K::kind(&()), name = %obj.meta().name.clone().unwrap_or_default(), error = %error, retry_in = ?wait, "backing off");
    Action::requeue(wait)
}

/// Write `next` as `obj`'s status when it differs from `current`: a merge patch of the
/// difference (removed fields as `null`), guarded by `obj`'s resourceVersion when `guarded` (a
/// write based on a stale read then fails with 409 instead of overwriting). Returns whether it
/// wrote.
pub async fn patch_status<K, S>(
    client: &Client,
    obj: &K,
    current: &S,
    next: &S,
    guarded: bool,
) -> Result<bool, kube::Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    S: serde::Serialize + PartialEq,
{
    if current == next {
        return Ok(false);
    }
    let api: Api<K> = Api::namespaced(client.clone(), &obj.meta().namespace.clone().unwrap_or_default());
    let before = serde_json::to_value(current).unwrap_or(serde_json::Value::Null);
    let after = serde_json::to_value(next).unwrap_or(serde_json::Value::Null);
    let mut patch = serde_json::json!({"status": merge_patch_between(&before, &after)});
    if guarded && let Some(rv) = obj.meta().resource_version.clone() {
        patch["metadata"] = serde_json::json!({"resourceVersion": rv});
    }
    let name = obj.meta().name.clone().unwrap_or_default();
    api.patch_status(&name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(patch)).await?;
    Ok(true)
}

/// The JSON merge patch (RFC 7396) that turns `before` into `after`: changed and new fields
/// with their new value, removed fields as `null`, objects compared key by key.
pub fn merge_patch_between(before: &serde_json::Value, after: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            let mut patch = serde_json::Map::new();
            for (k, old) in b {
                match a.get(k) {
                    None => {
                        patch.insert(k.clone(), Value::Null);
                    }
                    Some(new) if new != old => {
                        patch.insert(k.clone(), merge_patch_between(old, new));
                    }
                    Some(_) => {}
                }
            }
            for (k, new) in a {
                if !b.contains_key(k) {
                    patch.insert(k.clone(), new.clone());
                }
            }
            Value::Object(patch)
        }
        (_, new) => new.clone(),
    }
}

#[derive(Clone)]
struct Health {
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
}

async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, "ok")
}

async fn readyz(State(h): State<Health>) -> impl IntoResponse {
    if h.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced")
    }
}

async fn metrics_handler(State(h): State<Health>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        h.metrics.render(),
    )
}

/// Every task an operator spawned, so a simulated crash can stop them all at once.
#[derive(Clone, Default)]
struct Tasks(Arc<Mutex<Vec<tokio::task::AbortHandle>>>);

impl Tasks {
    fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let handle = tokio::spawn(fut);
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(handle.abort_handle());
        handle
    }

    fn abort_all(&self) {
        for h in self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).drain(..) {
            h.abort();
        }
    }
}

/// A running operator.
pub struct Operator {
    /// Where `/healthz`, `/readyz` and `/metrics` listen.
    pub metrics_addr: SocketAddr,
    /// Whether this replica leads.
    pub leading: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
    tasks: Tasks,
    stop: CancellationToken,
}

impl Operator {
    /// Stop gracefully: finish reconciles in flight, release the lease, close the endpoints.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _joined = self.task.await;
    }

    /// Stop every task at once without releasing anything, as a crash would (for tests of
    /// fail-over).
    pub fn kill(self) {
        self.tasks.abort_all();
        self.task.abort();
    }
}

/// Start the operator; it runs until [`Operator::shutdown`].
pub async fn start(client: Client, config: OperatorConfig) -> Result<Operator, OperatorError> {
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(config.metrics_listen)
        .await
        .map_err(|source| OperatorError::Bind { addr: config.metrics_listen, source })?;
    let metrics_addr =
        listener.local_addr().map_err(|source| OperatorError::Bind { addr: config.metrics_listen, source })?;
    let stop = CancellationToken::new();
    let health = Health { metrics: metrics.clone(), ready: ready.clone() };
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler))
        .with_state(health);
    let tasks = Tasks::default();
    let server_stop = stop.clone();
    let server = tasks.spawn(async move {
        let shutdown = async move { server_stop.cancelled().await };
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });

    let (leading_tx, leading_rx) = watch::channel(config.leader_election.is_none());
    // Without leader election the sender stays here, so the channel never closes: this
    // replica leads until it stops.
    let mut standalone = None;
    let election = match &config.leader_election {
        Some(lease) => {
            let api: Api<Lease> = Api::namespaced(client.clone(), &lease.namespace);
            let election_stop = CancellationToken::new();
            let task = tasks.spawn(leader::run(api, lease.clone(), leading_tx, election_stop.clone()));
            Some((task, election_stop))
        }
        None => {
            standalone = Some(leading_tx);
            None
        }
    };
    let reporter = Reporter {
        controller: "flywheel".into(),
        instance: config.leader_election.as_ref().map(|l| l.identity.clone()),
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        metrics: metrics.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        settings: ChildSettings {
            operator_image: config.operator_image.clone(),
            collector_url: config.collector_url.clone(),
            collector_token_secret: config.collector_token_secret.clone(),
        },
        analysis: config.analysis.clone(),
        load_source: config.load_source.clone(),
        scale_interval: config.scale_interval,
        stats_write_interval: config.stats_write_interval,
        scalers: Mutex::new(HashMap::new()),
        collector: config
            .collector_url
            .as_deref()
            .map(|url| crate::collector::client::CollectorClient::new(url, config.collector_token.clone())),
        feeds: feedback_policy::feed::Feeds::default(),
        failures: Mutex::new(HashMap::new()),
        scheduled: Mutex::new(HashMap::new()),
    });
    let mut leading = leading_rx.clone();
    let run_stop = stop.clone();
    let concurrency = config.concurrency;
    let scopes = Scope::of(&config.watch_namespaces);
    tracing::info!(namespaces = ?config.watch_namespaces, "watching {}", if config.watch_namespaces.is_empty() { "every namespace".to_string() } else { config.watch_namespaces.join(", ") });
    let inner_tasks = tasks.clone();
    let task = tokio::spawn(async move {
        let _standalone = standalone;
        loop {
            // Standby: ready, but reconciling nothing, until this replica leads.
            ready.store(true, Ordering::Release);
            metrics.set_leader(false);
            while !*leading.borrow_and_update() {
                tokio::select! {
                    () = run_stop.cancelled() => break,
                    changed = leading.changed() => if changed.is_err() { break },
                }
            }
            if run_stop.is_cancelled() || !*leading.borrow() {
                break;
            }
            metrics.set_leader(true);
            ready.store(false, Ordering::Release);
            tracing::info!("leading: starting controllers");
            let controllers_stop = CancellationToken::new();
            let controllers = inner_tasks.spawn(run_controllers(
                client.clone(),
                ctx.clone(),
                scopes.clone(),
                concurrency,
                ready.clone(),
                controllers_stop.clone(),
                inner_tasks.clone(),
            ));
            loop {
                tokio::select! {
                    () = run_stop.cancelled() => break,
                    changed = leading.changed() => if changed.is_err() || !*leading.borrow() { break },
                }
            }
            controllers_stop.cancel();
            let _finished = controllers.await;
            tracing::info!("controllers stopped");
            if run_stop.is_cancelled() {
                break;
            }
        }
        if let Some((task, election_stop)) = election {
            election_stop.cancel();
            let _released = task.await;
        }
        metrics.set_leader(false);
        let _stopped = server.await;
    });
    Ok(Operator { metrics_addr, leading: leading_rx, task, tasks, stop })
}

async fn run_controllers(
    client: Client,
    ctx: Arc<Context>,
    scopes: Vec<Scope>,
    concurrency: u16,
    ready: Arc<AtomicBool>,
    stop: CancellationToken,
    tasks: Tasks,
) {
    // One set of the three controllers per scope: kube-runtime's caches follow one watch each,
    // so several namespaces are several sets over the same context.
    let mut runs = Vec::new();
    let mut synced = Vec::new();
    for scope in &scopes {
        let (run, stores_ready) = scope_controllers(&client, &ctx, scope, concurrency, &stop);
        runs.push(run);
        synced.push(stores_ready);
    }
    let ready_flag = ready.clone();
    let scope_count = scopes.len();
    tasks.spawn(async move {
        let results = futures::future::join_all(synced).await;
        if results.iter().all(|ok| *ok) {
            ready_flag.store(true, Ordering::Release);
            tracing::info!(scopes = scope_count, "caches synced");
        }
    });
    let run = futures::future::join_all(runs);
    // Graceful shutdown lets reconciles in flight finish, for at most GRACE. A controller stopped
    // before its caches synced has nothing in flight and would wait for a sync that never
    // comes: it stops at once.
    const GRACE: Duration = Duration::from_secs(20);
    let deadline = async move {
        stop.cancelled().await;
        if ready.load(Ordering::Acquire) {
            tokio::time::sleep(GRACE).await;
        }
    };
    tokio::select! {
        _ = run => {}
        () = deadline => tracing::warn!("controllers did not stop within the grace period"),
    }
    for scope in &scopes {
        ctx.feeds.detach(scope);
    }
}

/// The three controllers of one scope: their run, and a future that tells whether their caches
/// synced.
fn scope_controllers(
    client: &Client,
    ctx: &Arc<Context>,
    scope: &Scope,
    concurrency: u16,
    stop: &CancellationToken,
) -> (futures::future::BoxFuture<'static, ()>, futures::future::BoxFuture<'static, bool>) {
    let managed = watcher::Config::default().labels("app.kubernetes.io/managed-by=flywheel");
    let config = ControllerConfig::default().concurrency(concurrency);

    let mds = Controller::new(scope.api::<ModelDeployment>(client), watcher::Config::default())
        .owns(scope.api::<Deployment>(client), managed.clone())
        .owns(scope.api::<Service>(client), managed.clone())
        .with_config(config.clone());

    // FeedbackPolicies: woken by their RetrainJobs, by their target ModelDeployment, and by the
    // collector's change feed.
    let policies = Controller::new(scope.api::<FeedbackPolicy>(client), watcher::Config::default());
    let policy_store = policies.store();
    let (wake_tx, wake_rx) = futures::channel::mpsc::unbounded();
    ctx.feeds.attach(scope.clone(), wake_tx, policy_store.clone());
    let targets = policy_store.clone();
    let policies = policies
        .owns(scope.api::<RetrainJob>(client), managed.clone())
        .watches(scope.api::<ModelDeployment>(client), watcher::Config::default(), move |md| {
            let ns = md.namespace();
            let name = md.name_any();
            targets
                .state()
                .into_iter()
                .filter(|p| p.namespace() == ns && p.spec.target_ref.name == name)
                .map(|p| ObjectRef::from_obj(p.as_ref()))
                .collect::<Vec<_>>()
        })
        .reconcile_on(wake_rx)
        .with_config(config.clone());

    let rtjs = Controller::new(scope.api::<RetrainJob>(client), watcher::Config::default())
        .owns(scope.api::<Job>(client), managed)
        .with_config(config.clone());

    // Trainer pods keep their result (a finalizer) until their RetrainJob recorded it: woken by
    // the pod and by its RetrainJob's changes.
    let trainer_pods =
        Controller::new(scope.api::<Pod>(client), watcher::Config::default().labels(retrain_job::pods::SELECTOR));
    let pod_store = trainer_pods.store();
    let by_rtj = pod_store.clone();
    let trainer_pods = trainer_pods
        .watches(scope.api::<RetrainJob>(client), watcher::Config::default(), move |rtj| {
            let ns = rtj.namespace();
            let name = rtj.name_any();
            by_rtj
                .state()
                .into_iter()
                .filter(|p| p.namespace() == ns && p.labels().get(retrain_job::job::LABEL_RETRAIN_JOB) == Some(&name))
                .map(|p| ObjectRef::from_obj(p.as_ref()))
                .collect::<Vec<_>>()
        })
        .with_config(config);

    let stores = (mds.store(), policy_store, rtjs.store(), pod_store);
    let synced = Box::pin(async move {
        let (a, b, c, d) = stores;
        let (a, b, c, d) =
            futures::join!(a.wait_until_ready(), b.wait_until_ready(), c.wait_until_ready(), d.wait_until_ready());
        a.is_ok() && b.is_ok() && c.is_ok() && d.is_ok()
    });
    let shutdown = |stop: &CancellationToken| {
        let stop = stop.clone();
        async move { stop.cancelled().await }
    };
    let log = |result: Result<_, _>| async move {
        if let Err(e) = result {
            tracing::debug!(error = %e, "controller event");
        }
    };
    let md_run = mds
        .graceful_shutdown_on(shutdown(stop))
        .run(model_deployment::reconcile, error_policy, ctx.clone())
        .for_each(log);
    let policy_run = policies
        .graceful_shutdown_on(shutdown(stop))
        .run(feedback_policy::reconcile, error_policy, ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "controller event");
            }
        });
    let rtj_run = rtjs
        .graceful_shutdown_on(shutdown(stop))
        .run(retrain_job::reconcile, error_policy, ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "controller event");
            }
        });
    let pods_run = trainer_pods
        .graceful_shutdown_on(shutdown(stop))
        .run(retrain_job::pods::reconcile, error_policy, ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "controller event");
            }
        });
    let run = Box::pin(async move {
        futures::join!(md_run, policy_run, rtj_run, pods_run);
    });
    (run, synced)
}
