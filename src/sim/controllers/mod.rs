//! The simulated control plane: one module per controller of kube-controller-manager (and the
//! apiextensions server's CRD controllers), and a kubelet whose pods follow the
//! `sim.flywheel.dev/*` annotations of their template (or an in-process script). [`run`] drives
//! them all: pods and CRDs start from their ADDED events (and a periodic sweep), then every
//! controller reconciles everything after each burst of events or tick; in a large cluster,
//! where such a pass is expensive, only what the events touched between spaced full passes
//! (`passes.rs`).

mod common;
mod crd_establishing;
mod deployment;
mod disruption;
mod garbage_collector;
mod job;
mod kubelet;
mod namespace;
mod passes;
pub mod process;
mod root_ca;
mod ttl_after_finished;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio_util::sync::CancellationToken;

use self::common::{gvr_crds, gvr_deployments, gvr_jobs, gvr_pods, list, list_at, pods_by_owner};
pub use self::kubelet::{
    DISRUPTED_ANNOTATION, DURATION_ANNOTATION, EXIT_CODE_ANNOTATION, MESSAGE_ANNOTATION, OUTCOME_ANNOTATION, Outcome,
    PodBehavior, PodScript, WorkloadConfig,
};
use self::passes::{Pass, Passes};
pub use self::root_ca::ROOT_CA_CONFIG_MAP;
use super::core::{Core, Event, EventType};

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

/// What the event-driven parts remember: the pods the kubelet started and the CRDs being named
/// (by uid), so each starts once.
struct Started {
    pods: HashSet<String>,
    crds: HashSet<String>,
}

/// Run the simulated controllers until `stop` is cancelled.
pub async fn run(core: Arc<Core>, config: WorkloadConfig, plane: ControlPlane, stop: CancellationToken) {
    let mut events = core.subscribe();
    let mut started = Started { pods: HashSet::new(), crds: HashSet::new() };
    let mut passes = Passes::default();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        let mut ticked = false;
        tokio::select! {
            () = stop.cancelled() => return,
            received = events.recv() => match received {
                Ok(event) => {
                    on_event(&core, &config, &plane, &event, &mut started, &stop);
                    passes.note(&event);
                }
                Err(RecvError::Lagged(_)) => passes.lagged(),
                Err(RecvError::Closed) => return,
            },
            _ = tick.tick() => ticked = true,
        }
        // Drain what is queued so a burst of events costs one pass.
        loop {
            match events.try_recv() {
                Ok(event) => {
                    on_event(&core, &config, &plane, &event, &mut started, &stop);
                    passes.note(&event);
                }
                Err(TryRecvError::Lagged(_)) => passes.lagged(),
                Err(_) => break,
            }
        }
        match passes.next(Instant::now()) {
            Pass::Full => {
                let began = Instant::now();
                let (pods, rv) = list_at(&core, &gvr_pods());
                // Catch pods created while lagging, and CRD deadlines that pass with no event:
                // at every tick while passes are cheap, at every full pass once they are not.
                if ticked || !passes.cheap() {
                    for pod in &pods {
                        kubelet::start_pod(&core, &config, pod, &mut started.pods, &stop);
                    }
                    for crd in list(&core, &gvr_crds()) {
                        crd_establishing::accept_crd_names(
                            &core,
                            &crd,
                            plane.crd_establish_delay,
                            &mut started.crds,
                            &stop,
                        );
                    }
                }
                reconcile_all(&core, &plane.root_ca, &pods);
                passes.full_done(began, Instant::now(), &pods, rv);
            }
            Pass::Incremental => reconcile_touched(&core, &mut passes),
        }
    }
}

/// A new pod starts running; a new CRD's names are accepted after the delay.
fn on_event(
    core: &Arc<Core>,
    config: &WorkloadConfig,
    plane: &ControlPlane,
    event: &Event,
    started: &mut Started,
    stop: &CancellationToken,
) {
    if event.type_ == EventType::Added && event.group.is_empty() && event.plural == "pods" {
        kubelet::start_pod(core, config, &event.object, &mut started.pods, stop);
    }
    if event.type_ == EventType::Added && event.plural == "customresourcedefinitions" {
        crd_establishing::accept_crd_names(core, &event.object, plane.crd_establish_delay, &mut started.crds, stop);
    }
}

/// One pass of every controller over everything; `pods` is every pod, read at the pass's start.
fn reconcile_all(core: &Core, root_ca: &str, pods: &[Value]) {
    garbage_collector::garbage_collect(core);
    namespace::namespaces(core);
    root_ca::publish_root_ca(core, root_ca);
    let pods = pods_by_owner(pods);
    for d in list(core, &gvr_deployments()) {
        deployment::deployment(core, &d, &pods);
    }
    let jobs: Vec<Value> = list(core, &gvr_jobs());
    for j in &jobs {
        job::job(core, j, &pods);
    }
    ttl_after_finished::ttl_after_finished(core, &jobs);
    disruption::disruption(core);
}

/// The Deployments and Jobs that events touched since the last pass, with their cached pods.
fn reconcile_touched(core: &Core, passes: &mut Passes) {
    let (deployments, jobs) = passes.take_touched();
    let get = |gvr: &super::core::Gvr, (ns, name): &(String, String)| core.get(gvr, Some(ns), name).ok();
    let deployments: Vec<Value> = deployments.iter().filter_map(|k| get(&gvr_deployments(), k)).collect();
    let jobs: Vec<Value> = jobs.iter().filter_map(|k| get(&gvr_jobs(), k)).collect();
    let pods = passes.pods_of(deployments.iter().chain(&jobs));
    for d in &deployments {
        deployment::deployment(core, d, &pods);
    }
    for j in &jobs {
        job::job(core, j, &pods);
    }
}
