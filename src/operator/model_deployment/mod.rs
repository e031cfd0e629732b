//! The ModelDeployment controller: a short driver over named steps. Fetch what the object
//! references (I/O) → validate (pure) → plan the rollout (pure, `crate::rollout`) → build the
//! children (pure, `children`) → apply what differs (server-side apply) → update status when it
//! changed → publish an Event per transition.

pub mod children;
pub mod feedback_analysis;
pub mod scaling;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use self::children::{ChildSettings, ModelSource, Owner, SpecError, TrackPlan};
use super::Context;
use crate::api::common::CONDITION_READY;
use crate::api::conditions::{self, Health};
use crate::api::model_deployment::{Evidence, ModelDeployment, ModelDeploymentStatus, Track, TrafficMode, Verdict};
use crate::rollout::{self, Observations, Plan};

/// The controller's name in metrics and logs.
pub const CONTROLLER: &str = "modeldeployment";
/// The field manager of every write.
pub const FIELD_MANAGER: &str = "flywheel";

/// Why a reconcile failed; `category` labels the failure metric and the Warning Event.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The API server refused or failed a request.
    #[error("{action}: {source}")]
    Kube {
        /// What was being done.
        action: String,
        /// The error.
        source: kube::Error,
    },
    /// The object has no namespace or uid (it was not read from the API server).
    #[error("the ModelDeployment lacks {0}")]
    Malformed(&'static str),
}

impl ReconcileError {
    /// Short static category: the metric label and the Event reason.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Kube { source: kube::Error::Api(s), .. } if s.code == 409 => "Conflict",
            Self::Kube { .. } => "KubeApiError",
            Self::Malformed(_) => "MalformedObject",
        }
    }
}

fn kube_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> ReconcileError {
    let action = action.into();
    move |source| ReconcileError::Kube { action, source }
}

/// What a signal counts as when a canary is judged: the signal mapping of the FeedbackPolicy
/// that targets the ModelDeployment, or the default mapping when none does.
#[derive(Debug, Clone, PartialEq)]
pub struct Judging {
    /// The mapping.
    pub mapping: crate::api::feedback_policy::SignalMapping,
    /// Where it came from, as status shows it: `FeedbackPolicy <name>` or `default`.
    pub source: String,
}

impl Judging {
    /// The mapping of the policy (of `policies`) that targets `md`: the first by name when
    /// several do (and it says how many), the default when none does.
    pub fn of(md: &str, policies: &[crate::api::FeedbackPolicy]) -> Self {
        let mut targeting: Vec<&crate::api::FeedbackPolicy> =
            policies.iter().filter(|p| p.spec.target_ref.name == md).collect();
        targeting.sort_by_key(|p| p.name_any());
        match targeting.first() {
            None => Self {
                mapping: crate::api::feedback_policy::SignalMapping::default(),
                source: "default (no FeedbackPolicy targets this ModelDeployment)".into(),
            },
            Some(p) => Self {
                mapping: p.spec.signals.clone(),
                source: if targeting.len() == 1 {
                    format!("FeedbackPolicy {}", p.name_any())
                } else {
                    format!("FeedbackPolicy {} (first by name of {} that target it)", p.name_any(), targeting.len())
                },
            },
        }
    }
}

/// The source of feedback evidence for `Analysis` gates (filled by the feedback loop); without
/// one, analysis steps wait and abort at their deadline.
pub trait AnalysisSource: Send + Sync {
    /// The evidence for the current step of `md`'s canary, each signal counted as `judging` says.
    fn evidence<'a>(
        &'a self,
        md: &'a ModelDeployment,
        judging: &'a Judging,
    ) -> futures::future::BoxFuture<'a, Option<Evidence>>;
}

/// No analysis configured: every look is inconclusive.
pub struct NoAnalysis;

impl AnalysisSource for NoAnalysis {
    fn evidence<'a>(
        &'a self,
        _md: &'a ModelDeployment,
        _judging: &'a Judging,
    ) -> futures::future::BoxFuture<'a, Option<Evidence>> {
        Box::pin(async {
            Some(Evidence {
                time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now())),
                verdict: Verdict::Inconclusive,
                message: "no feedback analysis is configured (the operator has no collector URL)".into(),
                ..Evidence::default()
            })
        })
    }
}

/// A reference the spec names that does not exist.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Missing {
    reason: &'static str,
    message: String,
}

fn owner_of(md: &ModelDeployment) -> Result<Owner, ReconcileError> {
    Ok(Owner {
        name: md.name_any(),
        namespace: md.namespace().ok_or(ReconcileError::Malformed("a namespace"))?,
        uid: md.uid().ok_or(ReconcileError::Malformed("a uid"))?,
    })
}

fn route_api(ctx: &Context, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
        "httproutes",
    );
    Api::namespaced_with(ctx.client.clone(), ns, &ar)
}

/// Step 1: what the spec references must exist.
async fn check_references(
    md: &ModelDeployment,
    ctx: &Context,
    ns: &str,
    uris: &[&str],
) -> Result<Option<Missing>, ReconcileError> {
    for uri in uris {
        if let Ok(ModelSource::Pvc { claim, .. }) = ModelSource::parse(uri) {
            let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
            if pvcs.get_opt(&claim).await.map_err(kube_err(format!("reading PersistentVolumeClaim {claim}")))?.is_none()
            {
                return Ok(Some(Missing {
                    reason: "MissingPersistentVolumeClaim",
                    message: format!("PersistentVolumeClaim {ns}/{claim} named by {uri} does not exist"),
                }));
            }
        }
    }
    if let Some(traffic) = &md.spec.traffic
        && traffic.mode == TrafficMode::GatewayApi
    {
        let name = traffic.http_route_ref.as_ref().map(|r| r.name.clone()).unwrap_or_default();
        let found = match route_api(ctx, ns).get_opt(&name).await {
            Ok(route) => route.is_some(),
            // The HTTPRoute kind itself is not served: Gateway API is not installed.
            Err(kube::Error::Api(s)) if s.code == 404 => false,
            Err(e) => return Err(kube_err(format!("reading HTTPRoute {name}"))(e)),
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
async fn unservable(ctx: &Context, ns: &str, uri: &str) -> Result<Option<rollout::Unservable>, ReconcileError> {
    match ModelSource::parse(uri) {
        Err(e) => Ok(Some(rollout::Unservable { reason: "UnservableURI".into(), message: e.to_string() })),
        Ok(ModelSource::Pvc { claim, .. }) => {
            let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
            let found =
                pvcs.get_opt(&claim).await.map_err(kube_err(format!("reading PersistentVolumeClaim {claim}")))?;
            Ok(found.is_none().then(|| rollout::Unservable {
                reason: "MissingPersistentVolumeClaim".into(),
                message: format!("PersistentVolumeClaim {ns}/{claim} named by {uri} does not exist"),
            }))
        }
        Ok(_) => Ok(None),
    }
}

fn ready_replicas(d: Option<&Deployment>) -> i32 {
    d.and_then(|d| d.status.as_ref()).and_then(|s| s.ready_replicas).unwrap_or(0)
}

fn track_ready(d: Option<&Deployment>, wanted: i32) -> bool {
    let Some(d) = d else { return false };
    let generation = d.metadata.generation.unwrap_or(0);
    let status = d.status.clone().unwrap_or_default();
    status.observed_generation.unwrap_or(0) >= generation
        && status.updated_replicas.unwrap_or(0) >= wanted
        && status.ready_replicas.unwrap_or(0) >= wanted
}

/// Apply `desired` unless the live object already holds all of it (no write storms).
async fn apply_if_changed(
    api: &Api<DynamicObject>,
    desired: &Value,
    live: Option<&Value>,
) -> Result<bool, ReconcileError> {
    if live.is_some_and(|l| children::is_subset(desired, l)) {
        return Ok(false);
    }
    let name = desired.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
    let kind = desired.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(desired))
        .await
        .map_err(kube_err(format!("applying {kind} {name}")))?;
    Ok(true)
}

fn dynamic_api<K: Resource<DynamicType = ()>>(ctx: &Context, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource::erase::<K>(&());
    Api::namespaced_with(ctx.client.clone(), ns, &ar)
}

async fn live(api: &Api<DynamicObject>, name: &str) -> Result<Option<Value>, ReconcileError> {
    let obj = api.get_opt(name).await.map_err(kube_err(format!("reading {name}")))?;
    Ok(obj.and_then(|o| serde_json::to_value(o).ok()))
}

async fn delete_if_present(api: &Api<DynamicObject>, name: &str, present: bool) -> Result<(), ReconcileError> {
    if !present {
        return Ok(());
    }
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(kube_err(format!("deleting {name}"))(e)),
    }
}

/// Total replicas wanted over both tracks (the autoscaler's recommendation comes later).
fn total_replicas(md: &ModelDeployment) -> i32 {
    md.spec.replicas.unwrap_or_else(|| md.spec.scaling.as_ref().map_or(1, |s| s.min_replicas.max(1)))
}

/// Reconcile one ModelDeployment.
pub async fn reconcile(md: Arc<ModelDeployment>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let timer = ctx.metrics.reconcile(CONTROLLER);
    let result = reconcile_inner(&md, &ctx).await;
    timer.finish(result.as_ref().err().map(ReconcileError::category));
    if let Err(e) = &result {
        tracing::warn!(name = %md.name_any(), namespace = ?md.namespace(), category = e.category(), error = %e, "reconcile failed");
        ctx.publish(md.as_ref(), EventType::Warning, e.category(), &e.to_string()).await;
    }
    result
}

#[tracing::instrument(skip_all, fields(name = %md.name_any(), namespace = ?md.namespace(), generation = ?md.metadata.generation))]
async fn reconcile_inner(md: &ModelDeployment, ctx: &Context) -> Result<Action, ReconcileError> {
    if md.metadata.deletion_timestamp.is_some() {
        // Children go with the owner through their owner references.
        return Ok(Action::await_change());
    }
    let owner = owner_of(md)?;
    let ns = owner.namespace.clone();
    let now = k8s_openapi::jiff::Timestamp::now();
    let now_time = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now);
    let current = md.status.clone().unwrap_or_default();
    let generation = md.metadata.generation;

    // Validate (pure): a URI the schema let through but we cannot serve. The spec's own model is
    // the user's to fix (Stalled); a candidate or canary from a RetrainJob that cannot be served
    // is refused or aborted below, so stable keeps serving and nothing stays jammed.
    let mut uris = vec![md.spec.model.uri.as_str()];
    if let Some(s) = &current.stable {
        uris.push(s.uri.as_str());
    }
    if let Some(e) = uris.iter().find_map(|u| ModelSource::parse(u).err()) {
        return stalled(md, ctx, current, "InvalidSpec", &e.to_string(), now_time).await;
    }
    if let Some(missing) = check_references(md, ctx, &ns, &uris).await? {
        return stalled(md, ctx, current, missing.reason, &missing.message, now_time).await;
    }
    let candidate_unservable = match &current.candidate {
        Some(c) => unservable(ctx, &ns, &c.uri).await?,
        None => None,
    };
    let canary_unservable = match &current.canary {
        Some(c) => unservable(ctx, &ns, &c.uri).await?,
        None => None,
    };

    // Observe the tracks.
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let stable_name = children::track_name(&owner, Track::Stable);
    let canary_name = children::track_name(&owner, Track::Canary);
    let stable_live = deployments.get_opt(&stable_name).await.map_err(kube_err("reading the stable Deployment"))?;
    let canary_live = deployments.get_opt(&canary_name).await.map_err(kube_err("reading the canary Deployment"))?;
    let total = total_replicas(md);
    // The autoscaler, per track: stable on its own pods' load; the canary on its own with
    // Gateway API weights, or in proportion to stable when replicas carry the weight.
    let now_ms = now.as_millisecond();
    let gateway = md.spec.traffic.as_ref().is_some_and(|t| t.mode == TrafficMode::GatewayApi);
    let stable_scaled =
        scaling::decide_track(ctx, md, &owner, Track::Stable, stable_live.as_ref(), total, now_ms).await?;
    let canary_scaled = if stable_scaled.is_some() && gateway && current.canary.is_some() {
        scaling::decide_track(ctx, md, &owner, Track::Canary, canary_live.as_ref(), 1, now_ms).await?
    } else {
        None
    };
    let replicas_for = |weight: Option<i32>| -> (i32, i32) {
        match (&stable_scaled, weight) {
            (None, w) => rollout::split_replicas(total, w),
            (Some(s), None) => (s.decision.desired, 0),
            (Some(s), Some(w)) => {
                let stable = s.decision.desired.max(1);
                let canary = match &canary_scaled {
                    Some(c) => c.decision.desired.max(1),
                    None if gateway => 1,
                    None => scaling::ratio_canary(stable, w),
                };
                (stable, canary)
            }
        }
    };
    let canary_wanted = current.canary.as_ref().map(|c| replicas_for(Some(c.weight)).1).unwrap_or(0);
    let canary_version_live = canary_live
        .as_ref()
        .and_then(|d| d.spec.as_ref())
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.as_ref())
        .and_then(|l| l.get(children::LABEL_VERSION).cloned());
    let canary_ready = current.canary.as_ref().is_some_and(|c| Some(&c.version) == canary_version_live.as_ref())
        && track_ready(canary_live.as_ref(), canary_wanted);

    // Plan (pure), with the analysis evidence when the current step asks for it.
    let steps = rollout::steps(&md.spec);
    let wants_analysis = current
        .canary
        .as_ref()
        .and_then(|c| steps.get(usize::try_from(c.step).unwrap_or(usize::MAX)))
        .is_some_and(|s| s.gate == crate::api::model_deployment::Gate::Analysis);
    let analysis = if wants_analysis && canary_ready {
        let policies: Api<crate::api::FeedbackPolicy> = Api::namespaced(ctx.client.clone(), &ns);
        let policies = policies
            .list(&kube::api::ListParams::default())
            .await
            .map_err(kube_err("listing the FeedbackPolicies that may target this ModelDeployment"))?;
        let judging = Judging::of(&owner.name, &policies.items);
        ctx.analysis.evidence(md, &judging).await.map(|mut e| {
            e.judged_by = Some(judging.source.clone());
            e
        })
    } else {
        None
    };
    let decided = analysis.clone().filter(|e| e.verdict != Verdict::Inconclusive);
    let Plan { status: mut next, transitions, requeue_after } = rollout::plan(
        &md.spec,
        &current,
        &Observations { canary_ready, analysis, candidate_unservable, canary_unservable },
        now,
    );

    // Build the children (pure) and apply what differs.
    let stable = next.stable.clone().ok_or(ReconcileError::Malformed("a stable version after planning"))?;
    let canary_weight = next.canary.as_ref().map(|c| c.weight);
    let (stable_replicas, canary_replicas) = replicas_for(canary_weight);
    let settings: &ChildSettings = &ctx.settings;
    let stable_plan = TrackPlan {
        track: Track::Stable,
        version: stable.version.clone(),
        uri: stable.uri.clone(),
        replicas: stable_replicas,
    };
    let stable_source =
        ModelSource::parse(&stable.uri).map_err(|_: SpecError| ReconcileError::Malformed("a readable stable URI"))?;
    let deploy_api = dynamic_api::<Deployment>(ctx, &ns);
    let svc_api = dynamic_api::<Service>(ctx, &ns);
    let pdb_api = dynamic_api::<PodDisruptionBudget>(ctx, &ns);
    let stable_json = stable_live.as_ref().and_then(|d| serde_json::to_value(d).ok());
    let mut writes = 0;
    writes += usize::from(
        apply_if_changed(
            &deploy_api,
            &children::deployment(&owner, &md.spec, &stable_plan, &stable_source, settings),
            stable_json.as_ref(),
        )
        .await?,
    );
    for track in [None, Some(Track::Stable)] {
        let desired = children::service(&owner, track);
        let name = desired.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
        writes += usize::from(apply_if_changed(&svc_api, &desired, live(&svc_api, &name).await?.as_ref()).await?);
    }
    let pdb = children::disruption_budget(&owner);
    writes += usize::from(apply_if_changed(&pdb_api, &pdb, live(&pdb_api, &owner.name).await?.as_ref()).await?);
    let canary_svc_live = live(&svc_api, &canary_name).await?;
    match &next.canary {
        Some(c) => {
            let plan = TrackPlan {
                track: Track::Canary,
                version: c.version.clone(),
                uri: c.uri.clone(),
                replicas: canary_replicas,
            };
            let source = ModelSource::parse(&c.uri)
                .map_err(|_: SpecError| ReconcileError::Malformed("a readable canary URI"))?;
            let canary_json = canary_live.as_ref().and_then(|d| serde_json::to_value(d).ok());
            writes += usize::from(
                apply_if_changed(
                    &deploy_api,
                    &children::deployment(&owner, &md.spec, &plan, &source, settings),
                    canary_json.as_ref(),
                )
                .await?,
            );
            writes += usize::from(
                apply_if_changed(&svc_api, &children::service(&owner, Some(Track::Canary)), canary_svc_live.as_ref())
                    .await?,
            );
        }
        None => {
            delete_if_present(&deploy_api, &canary_name, canary_live.is_some()).await?;
            delete_if_present(&svc_api, &canary_name, canary_svc_live.is_some()).await?;
        }
    }
    if let Some(traffic) = md.spec.traffic.as_ref().filter(|t| t.mode == TrafficMode::GatewayApi) {
        let route = traffic.http_route_ref.as_ref().map(|r| r.name.clone()).unwrap_or_default();
        writes += usize::from(set_route_weights(ctx, &ns, &route, &owner, canary_weight.unwrap_or(0)).await?);
    }

    // Status: replicas, selector, conditions; written only when it changed.
    let stable_ready = ready_replicas(stable_live.as_ref());
    let canary_ready_count = if next.canary.is_some() { ready_replicas(canary_live.as_ref()) } else { 0 };
    if let Some(s) = next.stable.as_mut() {
        s.replicas = stable_replicas;
        s.ready_replicas = stable_ready;
    }
    if let Some(c) = next.canary.as_mut() {
        c.replicas = canary_replicas;
        c.ready_replicas = canary_ready_count;
    }
    next.replicas = stable_replicas + canary_replicas;
    next.ready_replicas = stable_ready + canary_ready_count;
    next.selector = Some(children::serving_selector_string(&owner));
    next.observed_generation = generation;
    let stable_is_ready = track_ready(stable_live.as_ref(), stable_replicas)
        && stable_live
            .as_ref()
            .and_then(|d| d.spec.as_ref())
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.labels.as_ref())
            .and_then(|l| l.get(children::LABEL_VERSION))
            == Some(&stable.version);
    let health = if let Some(c) = &next.canary {
        Health::Progressing {
            reason: "CanaryInProgress".into(),
            message: format!("canary of {} at step {} ({}%)", c.version, c.step, c.weight),
        }
    } else if stable_is_ready && writes == 0 {
        Health::Ready {
            reason: "Available".into(),
            message: format!("serving {} on {} ready replicas", stable.version, stable_ready),
        }
    } else {
        Health::Progressing {
            reason: "Deploying".into(),
            message: format!("waiting for {} replicas of {} to be ready", stable_replicas, stable.version),
        }
    };
    conditions::set_health(&mut next.conditions, &health, generation, &now_time);
    let progressing = conditions::Desired::new(
        "Progressing",
        crate::api::ConditionStatus::from_bool(next.canary.is_some()),
        if next.canary.is_some() { "CanaryInProgress" } else { "NoRollout" },
        next.canary.as_ref().map_or_else(String::new, |c| format!("canary of {} at {}%", c.version, c.weight)),
    );
    conditions::set(&mut next.conditions, &progressing, generation, &now_time);
    let decisions: Vec<scaling::TrackDecision> = [stable_scaled, canary_scaled].into_iter().flatten().collect();
    next.scaling = scaling::record(&current.scaling, &decisions, &now_time);
    for d in &decisions {
        ctx.metrics.set_desired_replicas(&ns, &owner.name, d.track.as_str(), d.decision.desired);
        if d.decision.desired != d.current {
            let message =
                format!("{}: {} → {} replicas: {}", d.track.as_str(), d.current, d.decision.desired, d.decision.reason);
            tracing::info!(track = d.track.as_str(), from = d.current, to = d.decision.desired, panic = d.decision.panic, reason = %d.decision.reason, "scaled");
            ctx.publish(md, EventType::Normal, "Scaled", &message).await;
        }
    }
    write_status(md, ctx, &current, &next).await?;
    for t in &transitions {
        let type_ = if matches!(t, rollout::Transition::Aborted { .. } | rollout::Transition::Rejected { .. }) {
            EventType::Warning
        } else {
            EventType::Normal
        };
        // A decision of the analysis carries its evidence in the Event too.
        let message = match (&decided, t) {
            (
                Some(e),
                rollout::Transition::StepAdvanced { .. }
                | rollout::Transition::Promoted { .. }
                | rollout::Transition::Aborted { .. },
            ) => format!("{}; evidence: {}", t.message(), evidence_summary(e)),
            _ => t.message(),
        };
        ctx.publish(md, type_, t.reason(), &message).await;
        tracing::info!(reason = t.reason(), message = %message, "rollout transition");
    }
    let mut after = match (requeue_after, conditions::is_true(&next.conditions, CONDITION_READY)) {
        (Some(d), _) => Some(d.max(Duration::from_millis(200))),
        (None, false) => Some(Duration::from_secs(5)),
        (None, true) => None,
    };
    if md.spec.scaling.is_some() && md.spec.replicas.is_none() {
        // The autoscaler samples on a clock, not on changes.
        after = Some(after.map_or(ctx.scale_interval, |a| a.min(ctx.scale_interval)));
    }
    Ok(ctx.requeue(md, after))
}

/// Set the weights of the stable and canary backends of an HTTPRoute (added when missing).
async fn set_route_weights(
    ctx: &Context,
    ns: &str,
    route: &str,
    owner: &Owner,
    canary_weight: i32,
) -> Result<bool, ReconcileError> {
    let api = route_api(ctx, ns);
    let Some(live) = api.get_opt(route).await.map_err(kube_err(format!("reading HTTPRoute {route}")))? else {
        return Ok(false);
    };
    let stable = children::track_name(owner, Track::Stable);
    let canary = children::track_name(owner, Track::Canary);
    let mut rules = live.data.pointer("/spec/rules").and_then(Value::as_array).cloned().unwrap_or_default();
    if rules.is_empty() {
        rules.push(json!({"backendRefs": []}));
    }
    for rule in &mut rules {
        let mut refs: Vec<Value> = rule.get("backendRefs").and_then(Value::as_array).cloned().unwrap_or_default();
        refs.retain(|r| {
            let n = r.get("name").and_then(Value::as_str).unwrap_or_default();
            n != stable && n != canary && n != owner.name
        });
        refs.push(json!({"name": stable, "port": 80, "weight": 100 - canary_weight}));
        if canary_weight > 0 {
            refs.push(json!({"name": canary, "port": 80, "weight": canary_weight}));
        }
        rule["backendRefs"] = Value::Array(refs);
    }
    let desired = json!({"spec": {"rules": rules}});
    if children::is_subset(&desired, &live.data) {
        return Ok(false);
    }
    api.patch(route, &PatchParams::default(), &Patch::Merge(desired))
        .await
        .map_err(kube_err(format!("setting weights on HTTPRoute {route}")))?;
    Ok(true)
}

async fn write_status(
    md: &ModelDeployment,
    ctx: &Context,
    current: &ModelDeploymentStatus,
    next: &ModelDeploymentStatus,
) -> Result<(), ReconcileError> {
    // A merge patch names removed fields with null (a finished canary, a consumed action).
    super::patch_status(&ctx.client, md, current, next, false).await.map_err(kube_err("writing status"))?;
    Ok(())
}

/// A reference is missing or the spec cannot be served: `Stalled` with the reason, an Event,
/// and a slow requeue (the missing object is not watched).
async fn stalled(
    md: &ModelDeployment,
    ctx: &Context,
    current: ModelDeploymentStatus,
    reason: &str,
    message: &str,
    now: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
) -> Result<Action, ReconcileError> {
    let mut next = current.clone();
    next.observed_generation = md.metadata.generation;
    let health = Health::Stalled { reason: reason.into(), message: message.into() };
    let changed = conditions::set_health(&mut next.conditions, &health, md.metadata.generation, &now);
    write_status(md, ctx, &current, &next).await?;
    if changed {
        ctx.publish(md, EventType::Warning, reason, message).await;
    }
    tracing::warn!(reason, message, "stalled");
    Ok(ctx.requeue(md, Some(Duration::from_secs(30))))
}

/// The evidence of a verdict in one line: samples and rates per arm, the interval, the verdict.
pub fn evidence_summary(e: &Evidence) -> String {
    let pct = |r: Option<f64>| r.map_or_else(|| "n/a".to_string(), |r| format!("{:.1}%", r * 100.0));
    let interval = match (e.difference_lower, e.difference_upper) {
        (Some(lo), Some(hi)) => format!("[{:+.1}, {:+.1}] points", lo * 100.0, hi * 100.0),
        _ => "none".to_string(),
    };
    format!(
        "{:?}: stable {} of {} signals, canary {} of {}, canary − stable {interval}; {}",
        e.verdict,
        pct(e.stable_positive_rate),
        e.stable_samples,
        pct(e.canary_positive_rate),
        e.canary_samples,
        e.message
    )
}

/// Build an Event for this controller.
pub fn event(type_: EventType, reason: &str, note: &str) -> Event {
    // The recorder folds Events with the same reason and action into one series; an action
    // that names the note keeps distinct transitions (1 → 3, then 3 → 5) distinct, while an
    // identical repeat still counts up one series.
    Event {
        type_,
        reason: reason.to_string(),
        note: Some(note.chars().take(1024).collect()),
        action: format!("{reason}-{}", hex::encode(&<sha2::Sha256 as sha2::Digest>::digest(note.as_bytes())[..4])),
        secondary: None,
    }
}
