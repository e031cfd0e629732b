//! The operator's runtime: leader election, the controllers of each watched namespace over
//! their contexts, `/healthz`, `/readyz` and `/metrics`, and graceful shutdown.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, ObjectRef, reflector};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::config::{OperatorConfig, Scope};
use super::events::{Recorder, Reporter};
use super::feedback_policy::{FeedbackPolicies, feed};
use super::metrics::Metrics;
use super::model_deployment::ModelDeployments;
use super::model_deployment::children::ChildSettings;
use super::retrain_job::pods::TrainerPods;
use super::retrain_job::{RetrainJobs, job::LABEL_RETRAIN_JOB};
use super::skeleton::{Shared, error_policy, reconcile};
use super::{leader, model_deployment, retrain_job};
use crate::api::{FeedbackPolicy, ModelDeployment, RetrainJob};

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
    let ctx = Contexts::new(&client, &config, metrics.clone(), Recorder::new(client.clone(), reporter));
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

/// The contexts of the controllers, over one shared part.
#[derive(Clone)]
struct Contexts {
    model_deployments: Arc<ModelDeployments>,
    policies: Arc<FeedbackPolicies>,
    retrain_jobs: Arc<RetrainJobs>,
    trainer_pods: Arc<TrainerPods>,
}

impl Contexts {
    fn new(client: &Client, config: &OperatorConfig, metrics: Arc<Metrics>, recorder: Recorder) -> Self {
        let shared = Arc::new(Shared::new(client.clone(), metrics, recorder));
        let children = ChildSettings {
            operator_image: config.operator_image.clone(),
            collector_url: config.collector_url.clone(),
            collector_token_secret: config.collector_token_secret.clone(),
        };
        let settings =
            model_deployment::context::Settings { children: children.clone(), scale_interval: config.scale_interval };
        Self {
            model_deployments: Arc::new(ModelDeployments::new(
                shared.clone(),
                settings,
                config.analysis.clone(),
                config.load_source.clone(),
                config.adapter_source.clone(),
            )),
            policies: Arc::new(FeedbackPolicies {
                shared: shared.clone(),
                collector: config
                    .collector_url
                    .as_deref()
                    .map(|url| crate::collector::client::CollectorClient::new(url, config.collector_token.clone())),
                feeds: feed::Feeds::default(),
                stats_write_interval: config.stats_write_interval,
            }),
            retrain_jobs: Arc::new(RetrainJobs { shared: shared.clone(), settings: children }),
            trainer_pods: Arc::new(TrainerPods { shared }),
        }
    }
}

async fn run_controllers(
    client: Client,
    ctx: Contexts,
    scopes: Vec<Scope>,
    concurrency: u16,
    ready: Arc<AtomicBool>,
    stop: CancellationToken,
    tasks: Tasks,
) {
    // One set of the controllers per scope: kube-runtime's caches follow one watch each, so
    // several namespaces are several sets over the same contexts.
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
        ctx.policies.feeds.detach(scope);
    }
}

fn log_outcome<T, E: std::fmt::Display>(result: Result<T, E>) -> futures::future::Ready<()> {
    if let Err(e) = result {
        tracing::debug!(error = %e, "controller event");
    }
    futures::future::ready(())
}

/// A controller over `api` whose cache keeps each object without its `managedFields`: nothing
/// the operator decides reads them, and at 10,000 ModelDeployments they were a large share of
/// the cache (a field-manager entry per writer, the status one listing every status field). The
/// field is dropped (`None`, never `[]`), so a write built from a cached object cannot reset the
/// server's managed fields.
fn lean_controller<K>(api: Api<K>, config: watcher::Config) -> Controller<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let objects = reflector(writer, watcher(api, config).modify(|o: &mut K| o.meta_mut().managed_fields = None))
        .applied_objects();
    Controller::for_stream(objects, reader)
}

/// The controllers of one scope: their run, and a future that tells whether their caches synced.
fn scope_controllers(
    client: &Client,
    ctx: &Contexts,
    scope: &Scope,
    concurrency: u16,
    stop: &CancellationToken,
) -> (futures::future::BoxFuture<'static, ()>, futures::future::BoxFuture<'static, bool>) {
    let managed = watcher::Config::default().labels("app.kubernetes.io/managed-by=flywheel");
    let config = ControllerConfig::default().concurrency(concurrency);

    let mds = lean_controller(scope.api::<ModelDeployment>(client), watcher::Config::default())
        .owns(scope.api::<Deployment>(client), managed.clone())
        .owns(scope.api::<Service>(client), managed.clone())
        .with_config(config.clone());

    // FeedbackPolicies: woken by their RetrainJobs, by their target ModelDeployment, and by the
    // collector's change feed.
    let policies = lean_controller(scope.api::<FeedbackPolicy>(client), watcher::Config::default());
    let policy_store = policies.store();
    let (wake_tx, wake_rx) = futures::channel::mpsc::unbounded();
    ctx.policies.feeds.attach(scope.clone(), wake_tx, policy_store.clone());
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

    let rtjs = lean_controller(scope.api::<RetrainJob>(client), watcher::Config::default())
        .owns(scope.api::<Job>(client), managed)
        .with_config(config.clone());

    // Trainer pods keep their result (a finalizer) until their RetrainJob recorded it: woken by
    // the pod and by its RetrainJob's changes.
    let trainer_pods =
        lean_controller(scope.api::<Pod>(client), watcher::Config::default().labels(retrain_job::pods::SELECTOR));
    let pod_store = trainer_pods.store();
    let by_rtj = pod_store.clone();
    let trainer_pods = trainer_pods
        .watches(scope.api::<RetrainJob>(client), watcher::Config::default(), move |rtj| {
            let ns = rtj.namespace();
            let name = rtj.name_any();
            by_rtj
                .state()
                .into_iter()
                .filter(|p| p.namespace() == ns && p.labels().get(LABEL_RETRAIN_JOB) == Some(&name))
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
    let md_run = mds
        .graceful_shutdown_on(shutdown(stop))
        .run(reconcile, error_policy, ctx.model_deployments.clone())
        .for_each(log_outcome);
    let policy_run = policies
        .graceful_shutdown_on(shutdown(stop))
        .run(reconcile, error_policy, ctx.policies.clone())
        .for_each(log_outcome);
    let rtj_run = rtjs
        .graceful_shutdown_on(shutdown(stop))
        .run(reconcile, error_policy, ctx.retrain_jobs.clone())
        .for_each(log_outcome);
    let pods_run = trainer_pods
        .graceful_shutdown_on(shutdown(stop))
        .run(reconcile, error_policy, ctx.trainer_pods.clone())
        .for_each(log_outcome);
    let run = Box::pin(async move {
        futures::join!(md_run, policy_run, rtj_run, pods_run);
    });
    (run, synced)
}
