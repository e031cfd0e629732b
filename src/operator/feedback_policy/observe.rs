//! Observe: the policy's target, its RetrainJobs, and the collector's statistics of the
//! target (the stable version over the window; every version since the last retrain).

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use super::context::{FeedbackPolicies, LABEL_POLICY, PolicyError, reading};
use super::retrains::{last_retrain, seq_of};
use crate::api::feedback_policy::FeedbackPolicy;
use crate::api::model_deployment::ModelDeployment;
use crate::api::retrain_job::RetrainJob;
use crate::collector::client::{CollectorClient, StatsQuery};
use crate::collector::stats::StatsReport;

/// What one reconcile read.
#[derive(Debug, Clone)]
pub enum Observed {
    /// The operator has no collector to read.
    NoCollector,
    /// The target ModelDeployment does not exist.
    MissingTarget,
    /// Everything a decision needs.
    Ready(Box<Readings>),
}

/// The readings of a policy whose target and collector exist.
#[derive(Debug, Clone)]
pub struct Readings {
    /// The target.
    pub md: ModelDeployment,
    /// This policy's RetrainJobs (owned by it), oldest trigger first.
    pub rtjs: Vec<RetrainJob>,
    /// Statistics over the window.
    pub window: StatsReport,
    /// Statistics since the last retrain (the volume trigger).
    pub since_last: StatsReport,
    /// Start of the window.
    pub window_from: Timestamp,
    /// The last retrain (or the policy's creation): schedule times after it are due.
    pub since: Timestamp,
    /// The collector (the snapshot is asked of it when a trigger fires).
    pub collector: CollectorClient,
}

/// Observe (reads only).
pub async fn observe(
    ctx: &FeedbackPolicies,
    policy: &FeedbackPolicy,
    ns: &str,
    now: Timestamp,
) -> Result<Observed, PolicyError> {
    let Some(collector) = ctx.collector.clone() else { return Ok(Observed::NoCollector) };
    let mds: Api<ModelDeployment> = Api::namespaced(ctx.shared.client.clone(), ns);
    let target = &policy.spec.target_ref.name;
    let Some(md) = mds.get_opt(target).await.map_err(reading(format!("reading ModelDeployment {target}")))? else {
        return Ok(Observed::MissingTarget);
    };
    let rtj_api: Api<RetrainJob> = Api::namespaced(ctx.shared.client.clone(), ns);
    let mut rtjs = rtj_api
        .list(&ListParams::default().labels(&format!("{LABEL_POLICY}={}", policy.name_any())))
        .await
        .map_err(reading("listing RetrainJobs"))?
        .items;
    rtjs.retain(|r| r.owner_references().iter().any(|o| Some(&o.uid) == policy.metadata.uid.as_ref()));
    rtjs.sort_by_key(|r| seq_of(r).unwrap_or(0));
    let window_from = now.saturating_sub(SignedDuration::from_secs(policy.spec.window_seconds)).unwrap_or(now);
    let created = policy.metadata.creation_timestamp.as_ref().map_or(now, |t| t.0);
    let since = last_retrain(policy, &rtjs).unwrap_or(created);
    let query = |from: Timestamp| StatsQuery {
        namespace: ns,
        deployment: target,
        from: from.to_string(),
        mapping: &policy.spec.signals,
    };
    let window = collector.stats(&query(window_from)).await?;
    let since_last = collector.stats(&query(since)).await?;
    Ok(Observed::Ready(Box::new(Readings { md, rtjs, window, since_last, window_from, since, collector })))
}
