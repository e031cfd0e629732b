//! Observe: every read of one reconcile, into one [`Observed`] value. What to read depends on
//! the validated object (its claims, its route) and on the status (the current step's gate).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::{Resource, ResourceExt};

use super::children::{self, AGENT_ADMIN_PORT, ModelSource};
use super::context::{ModelDeploymentError, ModelDeployments, reading};
use super::observed::{Missing, Observed, PodAdapters, TrackLoad};
use super::replicas::{canary_ready, total_replicas};
use super::validate::ValidModelDeployment;
use crate::api::FeedbackPolicy;
use crate::api::model_deployment::{Evidence, Gate, ModelDeployment, ScalingMetric, Track};
use crate::autoscale::Sample;
use crate::autoscale::scrape::{AGENT_IN_FLIGHT, PodTarget};
use crate::rollout::{self, Unservable};

fn route_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
        "httproutes",
    )
}

/// The HTTPRoute API of a namespace.
pub fn route_api(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &route_resource())
}

/// A kind's API over dynamic objects (children are built as JSON).
pub fn dynamic_api<K: Resource<DynamicType = ()>>(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &ApiResource::erase::<K>(&()))
}

/// Observe (reads only).
pub async fn observe(
    ctx: &ModelDeployments,
    md: &ModelDeployment,
    valid: &ValidModelDeployment,
    now: k8s_openapi::jiff::Timestamp,
) -> Result<Observed, ModelDeploymentError> {
    let client = &ctx.shared.client;
    let ns = valid.owner.namespace.as_str();
    let mut observed = Observed { missing: missing(client, ns, valid).await?, ..Observed::default() };
    if observed.missing.is_some() {
        return Ok(observed);
    }
    let status = md.status.clone().unwrap_or_default();
    let adapter_mode = md.spec.adapter_mode();
    observed.candidate_unservable = match &status.candidate {
        Some(c) => match kind_mismatch(adapter_mode, c.adapter, valid, &c.uri) {
            Some(problem) => Some(problem),
            None => unservable(client, ns, valid, &c.uri).await?,
        },
        None => None,
    };
    observed.canary_unservable = match &status.canary {
        Some(c) if c.adapter => None,
        Some(c) => unservable(client, ns, valid, &c.uri).await?,
        None => None,
    };
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let read = |track| children::track_name(&valid.owner, track);
    observed.stable =
        deployments.get_opt(&read(Track::Stable)).await.map_err(reading("reading the stable Deployment"))?;
    observed.canary =
        deployments.get_opt(&read(Track::Canary)).await.map_err(reading("reading the canary Deployment"))?;
    for (api, name) in [
        (dynamic_api::<Service>(client, ns), valid.owner.name.clone()),
        (dynamic_api::<Service>(client, ns), read(Track::Stable)),
        (dynamic_api::<Service>(client, ns), read(Track::Canary)),
        (dynamic_api::<PodDisruptionBudget>(client, ns), format!("pdb/{}", valid.owner.name)),
        (dynamic_api::<ConfigMap>(client, ns), format!("cm/{}", children::adapters_config_map_name(&valid.owner))),
    ] {
        let object_name = name.trim_start_matches("pdb/").trim_start_matches("cm/");
        let found = api.get_opt(object_name).await.map_err(reading(format!("reading {object_name}")))?;
        if let Some(o) = found.and_then(|o| serde_json::to_value(o).ok()) {
            observed.live.insert(name, o);
        }
    }
    if let Some(route) = &valid.route {
        let found =
            route_api(client, ns).get_opt(route).await.map_err(reading(format!("reading HTTPRoute {route}")))?;
        observed.route = found.and_then(|r| serde_json::to_value(r).ok());
    }
    observed.load = load(ctx, md, valid, &observed, now).await?;
    if adapter_mode {
        observed.adapters = adapters(ctx, valid).await?;
    }
    observed.analysis = analysis(ctx, md, valid, &observed, now).await?;
    Ok(observed)
}

/// The spec's references: the claims of the spec's and the stable model, the HTTPRoute.
async fn missing(
    client: &kube::Client,
    ns: &str,
    valid: &ValidModelDeployment,
) -> Result<Option<Missing>, ModelDeploymentError> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    for (claim, uri) in valid.claims() {
        if pvcs.get_opt(&claim).await.map_err(reading(format!("reading PersistentVolumeClaim {claim}")))?.is_none() {
            return Ok(Some(Missing {
                reason: "MissingPersistentVolumeClaim",
                message: format!("PersistentVolumeClaim {ns}/{claim} named by {uri} does not exist"),
            }));
        }
    }
    if let Some(name) = &valid.route {
        let found = match route_api(client, ns).get_opt(name).await {
            Ok(route) => route.is_some(),
            // The HTTPRoute kind itself is not served: Gateway API is not installed.
            Err(kube::Error::Api(s)) if s.code == 404 => false,
            Err(e) => return Err(reading(format!("reading HTTPRoute {name}"))(e)),
        };
        if !found {
            return Ok(Some(Missing {
                reason: "MissingHTTPRoute",
                message: format!("HTTPRoute {ns}/{name} named by spec.traffic.httpRouteRef does not exist"),
            }));
        }
    }
    Ok(None)
}

/// Why serving cannot load `uri` (a version from a RetrainJob): an unreadable URI, or a claim
/// that does not exist.
async fn unservable(
    client: &kube::Client,
    ns: &str,
    valid: &ValidModelDeployment,
    uri: &str,
) -> Result<Option<Unservable>, ModelDeploymentError> {
    if let Some(why) = valid.unparseable.get(uri) {
        return Ok(Some(Unservable { reason: "UnservableURI".into(), message: why.clone() }));
    }
    let Some(ModelSource::Pvc { claim, .. }) = valid.sources.get(uri) else { return Ok(None) };
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let found = pvcs.get_opt(claim).await.map_err(reading(format!("reading PersistentVolumeClaim {claim}")))?;
    Ok(found.is_none().then(|| Unservable {
        reason: "MissingPersistentVolumeClaim".into(),
        message: format!("PersistentVolumeClaim {ns}/{claim} named by {uri} does not exist"),
    }))
}

/// A candidate of the wrong kind for the rollout mode: a whole model cannot be canaried inside
/// the pods, an adapter cannot be served alone, and an adapter is fetched by the agent at run
/// time (a claim would need a new volume, so new pods).
fn kind_mismatch(adapter_mode: bool, adapter: bool, valid: &ValidModelDeployment, uri: &str) -> Option<Unservable> {
    let message = match (adapter_mode, adapter) {
        (true, false) => {
            "spec.rollout.mode is Adapter, but the candidate is a whole model (\"artifact\":\"model\"); have the trainer write the LoRA adapter alone (the reference trainer's default, without mergeAdapter)"
        }
        (false, true) => {
            "the candidate is a LoRA adapter, which cannot be served alone; set spec.rollout.mode: Adapter to canary adapters inside the pods, or have the trainer merge it (mergeAdapter)"
        }
        (true, true) if matches!(valid.sources.get(uri), Some(ModelSource::Pvc { .. })) => {
            "in Adapter mode the agent fetches each adapter at run time, which it cannot do from a pvc:// URI (mounting the claim would replace every pod); store adapters at an s3://, gs://, https:// or hf:// URI"
        }
        _ => return None,
    };
    Some(Unservable { reason: "CandidateKindMismatch".into(), message: message.into() })
}

/// What each ready stable pod's agent holds (`Adapter` rollout mode).
async fn adapters(
    ctx: &ModelDeployments,
    valid: &ValidModelDeployment,
) -> Result<Vec<PodAdapters>, ModelDeploymentError> {
    let pods: Api<Pod> = Api::namespaced(ctx.shared.client.clone(), &valid.owner.namespace);
    let selector = children::track_selector(&valid.owner, Track::Stable)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let listed = pods.list(&ListParams::default().labels(&selector)).await.map_err(reading("listing pods"))?;
    let targets: Vec<PodTarget> = listed
        .items
        .iter()
        .filter(|p| pod_ready(p))
        .map(|p| PodTarget {
            name: p.name_any(),
            ip: p.status.as_ref().and_then(|s| s.pod_ip.clone()),
            port: u16::try_from(AGENT_ADMIN_PORT).unwrap_or(0),
        })
        .collect();
    let source = ctx.adapter_source.clone();
    let reports = futures::future::join_all(targets.iter().map(|t| source.report(t))).await;
    Ok(targets.into_iter().zip(reports).map(|(t, report)| PodAdapters { pod: t.name, report }).collect())
}

fn pod_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The tracks the autoscaler scales: stable, and the canary on its own load with Gateway API
/// weights (with replica-ratio traffic the canary follows stable).
pub fn scaled_tracks(md: &ModelDeployment, valid: &ValidModelDeployment) -> Vec<Track> {
    if md.spec.scaling.is_none() || md.spec.replicas.is_some() {
        return Vec::new();
    }
    let canary = valid.route.is_some() && md.status.as_ref().is_some_and(|s| s.canary.is_some());
    if canary { vec![Track::Stable, Track::Canary] } else { vec![Track::Stable] }
}

/// The load of each scaled track's ready pods, and the autoscaler's memory of it.
async fn load(
    ctx: &ModelDeployments,
    md: &ModelDeployment,
    valid: &ValidModelDeployment,
    observed: &Observed,
    now: k8s_openapi::jiff::Timestamp,
) -> Result<BTreeMap<Track, TrackLoad>, ModelDeploymentError> {
    let mut out = BTreeMap::new();
    let Some(spec) = md.spec.scaling.as_ref() else { return Ok(out) };
    let pods: Api<Pod> = Api::namespaced(ctx.shared.client.clone(), &valid.owner.namespace);
    for track in scaled_tracks(md, valid) {
        let live = if track == Track::Stable { observed.stable.as_ref() } else { observed.canary.as_ref() };
        let fallback = if track == Track::Stable { total_replicas(md) } else { 1 };
        let current = live.and_then(|d| d.spec.as_ref()).and_then(|s| s.replicas).unwrap_or(fallback);
        let selector = children::track_selector(&valid.owner, track)
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let listed = pods.list(&ListParams::default().labels(&selector)).await.map_err(reading("listing pods"))?;
        let ready: Vec<&Pod> = listed.items.iter().filter(|p| pod_ready(p)).collect();
        let (port, metrics) = match spec.metric {
            ScalingMetric::InFlight => (AGENT_ADMIN_PORT, vec![AGENT_IN_FLIGHT.to_string()]),
            ScalingMetric::RuntimeMetric => (md.spec.runtime.port, spec.runtime_metrics.clone()),
        };
        let targets: Vec<PodTarget> = ready
            .iter()
            .map(|p| PodTarget {
                name: p.name_any(),
                ip: p.status.as_ref().and_then(|s| s.pod_ip.clone()),
                port: u16::try_from(port).unwrap_or(0),
            })
            .collect();
        let sample = if targets.is_empty() { None } else { ctx.load_source.load(&targets, &metrics).await };
        let now_ms = now.as_millisecond();
        out.insert(
            track,
            TrackLoad {
                current,
                ready: i32::try_from(ready.len()).unwrap_or(i32::MAX),
                sample: sample.map(|(load, pods)| Sample { at_ms: now_ms, load, pods }),
                state: ctx.scaler_state(&valid.owner, track),
            },
        );
    }
    Ok(out)
}

/// The analysis of the current step, when it is an `Analysis` gate and the canary track is
/// ready, judged with the signal mapping of the FeedbackPolicy that targets the ModelDeployment.
async fn analysis(
    ctx: &ModelDeployments,
    md: &ModelDeployment,
    valid: &ValidModelDeployment,
    observed: &Observed,
    now: k8s_openapi::jiff::Timestamp,
) -> Result<Option<Evidence>, ModelDeploymentError> {
    let status = md.status.clone().unwrap_or_default();
    let steps = rollout::steps(&md.spec);
    let wants = status
        .canary
        .as_ref()
        .and_then(|c| steps.get(usize::try_from(c.step).unwrap_or(usize::MAX)))
        .is_some_and(|s| s.gate == Gate::Analysis);
    if !wants || !canary_ready(md, valid, observed, now) {
        return Ok(None);
    }
    let policies: Api<FeedbackPolicy> = Api::namespaced(ctx.shared.client.clone(), &valid.owner.namespace);
    let policies = policies
        .list(&ListParams::default())
        .await
        .map_err(reading("listing the FeedbackPolicies that may target this ModelDeployment"))?;
    let judging = super::feedback_analysis::Judging::of(&valid.owner.name, &policies.items);
    Ok(ctx.analysis.evidence(md, &judging).await.map(|mut e| {
        e.judged_by = Some(judging.source.clone());
        e
    }))
}
