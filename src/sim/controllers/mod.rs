//! The simulated control plane: one module per controller of kube-controller-manager (and the
//! apiextensions server's CRD controllers), and a kubelet whose pods follow the
//! `sim.flywheel.dev/*` annotations of their template (or an in-process script). [`run`] drives
//! them all: pods and CRDs start from their ADDED events (and a periodic sweep), then every
//! controller reconciles everything after each burst of events or tick.

mod common;
mod crd_establishing;
mod deployment;
mod disruption;
mod garbage_collector;
mod job;
mod kubelet;
mod namespace;
pub mod process;
mod root_ca;
mod ttl_after_finished;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use self::common::{gvr_crds, gvr_deployments, gvr_jobs, gvr_pods, list, pods_by_owner};
pub use self::kubelet::{
    DISRUPTED_ANNOTATION, DURATION_ANNOTATION, EXIT_CODE_ANNOTATION, MESSAGE_ANNOTATION, OUTCOME_ANNOTATION, Outcome,
    PodBehavior, PodScript, WorkloadConfig,
};
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
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            received = events.recv() => match received {
                Ok(event) => on_event(&core, &config, &plane, &event, &mut started, &stop),
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            },
            _ = tick.tick() => {
                // Catch pods created while lagging, and deadlines that pass with no event.
                for pod in list(&core, &gvr_pods()) {
                    kubelet::start_pod(&core, &config, &pod, &mut started.pods, &stop);
                }
                for crd in list(&core, &gvr_crds()) {
                    crd_establishing::accept_crd_names(&core, &crd, plane.crd_establish_delay, &mut started.crds, &stop);
                }
            }
        }
        // Drain what is queued so a burst of events costs one pass.
        while let Ok(event) = events.try_recv() {
            on_event(&core, &config, &plane, &event, &mut started, &stop);
        }
        reconcile_all(&core, &plane.root_ca);
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

/// One pass of every controller over everything.
fn reconcile_all(core: &Core, root_ca: &str) {
    garbage_collector::garbage_collect(core);
    namespace::namespaces(core);
    root_ca::publish_root_ca(core, root_ca);
    let pods = pods_by_owner(core);
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
