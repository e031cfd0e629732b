//! The kubelet's process mode: a pod whose every container's image is mapped to a host command
//! runs as real processes on this machine, as a kubelet runs containers. Init containers run
//! first, one at a time; then the containers, with the pod's environment (`$(VAR)` expanded,
//! `fieldRef`s and key references resolved), their arguments and working directory; each volume
//! is a directory of this machine (an `emptyDir`, Secret or ConfigMap per pod, a
//! PersistentVolumeClaim per claim, shared by every pod that mounts it); the termination message
//! is read from the file the container wrote; exit codes and signals, restarts by the pod's
//! `restartPolicy`, and readiness from the container's real probe reach the pod's status as a
//! kubelet writes them. A deleted pod's processes get SIGTERM, then SIGKILL after the pod's grace
//! period; when the simulated cluster stops, every process group it started is killed. Each
//! container's output is kept, and served by the pod's `log` subresource.
//!
//! What differs from a node: there is no image and no root file system of the container's own, so
//! the mount paths are rewritten to the host directories that stand for them wherever they appear
//! in the container's environment values, arguments and working directory (see
//! [`spec::PathMap`]); a program that builds a mount path some other way does not see the volume.
//! Pods share this machine's network (the pod IP is 127.0.0.1) unless the mode gives each a
//! network namespace of its own ([`ProcessMode::isolated_network`], root only). Liveness and startup probes are not
//! run; restarts back off 1 s, doubling to 10 s (a kubelet starts at 10 s and caps at 5 min).

mod mode;
pub mod network;
mod run;
pub mod spec;

use std::sync::Arc;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub use self::mode::{MappingError, ProcessMode};
use crate::sim::core::Core;

/// Start running `pod` as processes (once; the caller keeps track).
pub(super) fn start(mode: &Arc<ProcessMode>, core: &Arc<Core>, pod: &Value, stop: &CancellationToken) {
    let runner = run::PodProcesses::new(core.clone(), mode.clone(), pod.clone());
    tokio::spawn(runner.run(stop.clone()));
}
