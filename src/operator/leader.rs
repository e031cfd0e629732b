//! Leader election on a `coordination.k8s.io/v1` Lease, with the semantics of client-go's
//! leader election: a holder renews every `retry` and gives up when it could not renew for
//! `renew_deadline`; a candidate takes the lease once it has seen no renewal for
//! `lease_duration` (measured on its own clock, so clock skew between nodes does not matter);
//! the holder releases the lease on shutdown so a successor takes over at once.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Timing of the election.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Lease name.
    pub name: String,
    /// Lease namespace.
    pub namespace: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// How long a lease is valid without renewal.
    pub lease_duration: Duration,
    /// How long a leader keeps trying to renew before it gives up leadership.
    pub renew_deadline: Duration,
    /// How often to try to acquire or renew.
    pub retry_period: Duration,
}

/// Why one attempt to acquire or renew the lease failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The lease's namespace does not exist (typical out of cluster, where the default
    /// `flywheel-system` was never created).
    #[error(
        "the lease namespace {0:?} does not exist: create it, point --lease-namespace at an existing namespace, \
         or run with --leader-elect=false (out of cluster, a single replica)"
    )]
    NamespaceMissing(String),
    /// The API server refused or failed the request.
    #[error("lease request failed: {0}")]
    Kube(#[from] kube::Error),
}

impl LeaseError {
    /// Whether this failure is the same kind as `other` (so a repeat is not logged again).
    fn same_kind(&self, other: &Self) -> bool {
        matches!((self, other), (Self::NamespaceMissing(a), Self::NamespaceMissing(b)) if a == b)
    }
}

fn now_micro() -> String {
    k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string()
}

/// Run the election until `stop`; `leading` tells whether this replica leads. On stop a leader
/// releases the lease.
pub async fn run(api: Api<Lease>, config: LeaseConfig, leading: watch::Sender<bool>, stop: CancellationToken) {
    // What we last saw of the lease: its resourceVersion and when (on our clock) it changed.
    let mut observed: Option<(String, Instant)> = None;
    let mut last_renew = Instant::now();
    // A failure that repeats every retry period is logged when it starts, not every time.
    let mut failing: Option<LeaseError> = None;
    loop {
        let is_leader = *leading.borrow();
        match try_acquire_or_renew(&api, &config, &mut observed).await {
            Ok(true) => {
                last_renew = Instant::now();
                if failing.take().is_some() {
                    tracing::info!(identity = %config.identity, lease = %config.name, "lease requests succeed again");
                }
                if !is_leader {
                    tracing::info!(identity = %config.identity, lease = %config.name, "became leader");
                    let _sent = leading.send(true);
                }
            }
            Ok(false) => {
                if is_leader {
                    tracing::warn!(identity = %config.identity, "lost the lease to another replica");
                    let _sent = leading.send(false);
                }
            }
            Err(e) => {
                match (&e, &failing) {
                    (_, Some(previous)) if e.same_kind(previous) => {
                        tracing::debug!(identity = %config.identity, error = %e, "lease request failed again");
                    }
                    (LeaseError::NamespaceMissing(_), _) => {
                        tracing::error!(identity = %config.identity, lease = %config.name, error = %e, "cannot elect a leader");
                    }
                    _ => tracing::warn!(identity = %config.identity, error = %e, "lease request failed"),
                }
                failing = Some(e);
                if is_leader && last_renew.elapsed() > config.renew_deadline {
                    tracing::error!(identity = %config.identity, "could not renew the lease within the renew deadline; stepping down");
                    let _sent = leading.send(false);
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(config.retry_period) => {}
        }
    }
    if *leading.borrow() {
        release(&api, &config).await;
        let _sent = leading.send(false);
    }
}

async fn try_acquire_or_renew(
    api: &Api<Lease>,
    config: &LeaseConfig,
    observed: &mut Option<(String, Instant)>,
) -> Result<bool, LeaseError> {
    let duration_secs = i32::try_from(config.lease_duration.as_secs()).unwrap_or(i32::MAX);
    let Some(lease) = api.get_opt(&config.name).await? else {
        let lease: Lease = serde_json::from_value(json!({
            "metadata": {"name": config.name, "namespace": config.namespace},
            "spec": {"holderIdentity": config.identity, "leaseDurationSeconds": duration_secs, "acquireTime": now_micro(), "renewTime": now_micro(), "leaseTransitions": 0}
        }))
        .map_err(kube::Error::SerdeError)?;
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            // Creating in a namespace that does not exist: 404 naming the namespace.
            Err(kube::Error::Api(s)) if s.code == 404 => Err(LeaseError::NamespaceMissing(config.namespace.clone())),
            Err(e) => Err(e.into()),
        };
    };
    let rv = lease.metadata.resource_version.clone().unwrap_or_default();
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let now = Instant::now();
    match observed {
        Some((seen, _)) if *seen == rv => {}
        _ => *observed = Some((rv.clone(), now)),
    }
    let observed_at = observed.as_ref().map_or(now, |(_, t)| *t);
    let lease_secs = spec
        .lease_duration_seconds
        .map_or(config.lease_duration, |s| Duration::from_secs(u64::try_from(s).unwrap_or(0)));
    let expired = holder.is_empty() || now.duration_since(observed_at) > lease_secs;
    if holder != config.identity && !expired {
        return Ok(false);
    }
    let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(holder != config.identity);
    let mut patch = json!({
        "metadata": {"resourceVersion": rv},
        "spec": {
            "holderIdentity": config.identity,
            "leaseDurationSeconds": duration_secs,
            "renewTime": now_micro(),
            "leaseTransitions": transitions,
        }
    });
    // A renewal keeps acquireTime (a merge patch leaves what it omits); a take-over sets it.
    if holder != config.identity {
        patch["spec"]["acquireTime"] = json!(now_micro());
    }
    match api.patch(&config.name, &PatchParams::default(), &Patch::Merge(patch)).await {
        Ok(updated) => {
            *observed = Some((updated.metadata.resource_version.unwrap_or_default(), Instant::now()));
            Ok(true)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

async fn release(api: &Api<Lease>, config: &LeaseConfig) {
    // Only the holder releases, and only the version it holds.
    let Ok(Some(lease)) = api.get_opt(&config.name).await else { return };
    let holder = lease.spec.as_ref().and_then(|s| s.holder_identity.clone()).unwrap_or_default();
    if holder != config.identity {
        return;
    }
    let rv = lease.metadata.resource_version.unwrap_or_default();
    let patch = json!({"metadata": {"resourceVersion": rv}, "spec": {"holderIdentity": null, "leaseDurationSeconds": 1, "renewTime": now_micro()}});
    match api.patch(&config.name, &PatchParams::default(), &Patch::Merge(patch)).await {
        Ok(_) => tracing::info!(identity = %config.identity, "released the lease"),
        Err(e) => tracing::warn!(identity = %config.identity, error = %e, "could not release the lease"),
    }
}
