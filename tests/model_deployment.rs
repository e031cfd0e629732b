//! The ModelDeployment controller against the cluster under test (the simulated one, or a real
//! one named by `FLYWHEEL_E2E_KUBECONFIG` with a stand-in kubelet), each test in its own
//! namespace, the operator running in process.

mod common;

use std::time::Duration;

use common::{Cluster, eventually};
use flywheel::api::model_deployment::{CanaryStep, Gate, HistoryType, RolloutAction, RolloutSpec};
use flywheel::api::{ConditionStatus, ModelDeployment};
use flywheel::operator::{self, Operator, OperatorConfig};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

fn sample(replicas: i32) -> ModelDeployment {
    let mut md: ModelDeployment =
        serde_yaml::from_str(include_str!("../config/samples/modeldeployment.yaml")).unwrap_or_else(|e| panic!("{e}"));
    md.spec.replicas = Some(replicas);
    md
}

fn pause_steps(seconds: i64) -> RolloutSpec {
    RolloutSpec {
        steps: vec![
            CanaryStep { weight: 25, gate: Gate::Pause, pause_seconds: Some(seconds), deadline_seconds: 600 },
            CanaryStep { weight: 50, gate: Gate::Pause, pause_seconds: Some(seconds), deadline_seconds: 600 },
        ],
        ..RolloutSpec::default()
    }
}

/// An operator that reconciles only the test's namespace (other suites may share the cluster).
async fn start_operator(cluster: &Cluster, ns: &str) -> Operator {
    operator::start(cluster.client.clone(), OperatorConfig::local().scoped_to(ns))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

fn condition(md: &ModelDeployment, type_: &str) -> Option<(ConditionStatus, String)> {
    md.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_).map(|c| (c.status, c.reason.clone()))
}

async fn until<F>(api: &Api<ModelDeployment>, name: &str, what: &str, secs: u64, check: F) -> ModelDeployment
where
    F: Fn(&ModelDeployment) -> bool,
{
    let found = eventually(Duration::from_secs(secs), || {
        let api = api.clone();
        let name = name.to_string();
        let check = &check;
        async move {
            let md = api.get(&name).await.ok()?;
            check(&md).then_some(md)
        }
    })
    .await;
    match found {
        Some(md) => md,
        None => {
            let last = api.get(name).await.ok().and_then(|m| m.status).map(|s| format!("{s:?}")).unwrap_or_default();
            panic!("{name} never reached: {what}; last status: {last}")
        }
    }
}

fn is_ready(md: &ModelDeployment) -> bool {
    condition(md, "Ready").is_some_and(|(s, _)| s == ConditionStatus::True)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_becomes_ready_with_its_children() {
    let cluster = Cluster::start().await;
    cluster.install_crds().await;
    let ns = cluster.namespace("md-ready").await;
    let op = start_operator(&cluster, &ns.name).await;
    let api: Api<ModelDeployment> = Api::namespaced(cluster.client.clone(), &ns.name);
    api.create(&PostParams::default(), &sample(2)).await.unwrap_or_else(|e| panic!("{e}"));
    let md = until(&api, "support-chat", "Ready", 60, is_ready).await;
    let status = md.status.clone().unwrap_or_default();
    assert_eq!(status.stable.as_ref().map(|s| (s.version.as_str(), s.replicas, s.ready_replicas)), Some(("v1", 2, 2)));
    assert_eq!((status.replicas, status.ready_replicas), (2, 2));
    assert_eq!(
        status.selector.as_deref(),
        Some("app.kubernetes.io/component=inference,flywheel.dev/model-deployment=support-chat")
    );
    assert_eq!(status.observed_generation, md.metadata.generation);
    assert_eq!(condition(&md, "Stalled").map(|c| c.0), Some(ConditionStatus::False));
    assert_eq!(condition(&md, "Reconciling").map(|c| c.0), Some(ConditionStatus::False));

    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), &ns.name);
    let d = deployments.get("support-chat-stable").await.unwrap_or_else(|e| panic!("{e}"));
    let owner = d.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(owner.first().map(|o| (o.kind.as_str(), o.controller)), Some(("ModelDeployment", Some(true))));
    let managers: Vec<String> =
        d.metadata.managed_fields.clone().unwrap_or_default().into_iter().filter_map(|m| m.manager).collect();
    assert!(managers.contains(&"flywheel".to_string()), "applied with field manager flywheel: {managers:?}");
    let spec = d.spec.clone().unwrap_or_default();
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.clone().unwrap_or_default();
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some("vllm/vllm-openai:v0.8.5"));
    let limits = c.resources.clone().and_then(|r| r.limits).unwrap_or_default();
    assert_eq!(limits.get("nvidia.com/gpu").map(|q| q.0.as_str()), Some("1"));
    assert_eq!(c.readiness_probe.clone().and_then(|p| p.http_get).map(|h| h.path), Some(Some("/health".to_string())));
    assert_eq!(c.startup_probe.clone().and_then(|p| p.failure_threshold), Some(60));
    let env: Vec<(String, Option<String>)> =
        c.env.clone().unwrap_or_default().into_iter().map(|e| (e.name, e.value)).collect();
    for (k, v) in [
        ("FLYWHEEL_MODEL_VERSION", "v1"),
        ("FLYWHEEL_MODEL_URI", "hf://Qwen/Qwen2.5-0.5B-Instruct"),
        ("FLYWHEEL_MODEL_DIR", "/models"),
        ("VLLM_LOGGING_LEVEL", "INFO"),
    ] {
        assert!(env.contains(&(k.to_string(), Some(v.to_string()))), "{k}={v} in {env:?}");
    }
    let init = pod.init_containers.clone().unwrap_or_default();
    assert_eq!(
        init.first().and_then(|i| i.args.clone()),
        Some(vec!["fetch-model".to_string(), "hf://Qwen/Qwen2.5-0.5B-Instruct".to_string(), "/models".to_string()])
    );
    assert!(pod.volumes.clone().unwrap_or_default().iter().any(|v| v.name == "model" && v.empty_dir.is_some()));
    assert_eq!(
        pod.tolerations.clone().unwrap_or_default().first().and_then(|t| t.key.clone()).as_deref(),
        Some("nvidia.com/gpu")
    );
    assert_eq!(
        pod.node_selector.clone().unwrap_or_default().get("nvidia.com/gpu.present").map(String::as_str),
        Some("true")
    );

    let services: Api<Service> = Api::namespaced(cluster.client.clone(), &ns.name);
    let all = services.get("support-chat").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        all.spec.and_then(|s| s.selector).unwrap_or_default(),
        std::collections::BTreeMap::from([
            ("app.kubernetes.io/component".to_string(), "inference".to_string()),
            ("flywheel.dev/model-deployment".to_string(), "support-chat".to_string()),
        ]),
        "the shared Service selects the inference pods of both tracks"
    );
    let stable = services.get("support-chat-stable").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        stable.spec.and_then(|s| s.selector).and_then(|s| s.get("flywheel.dev/track").cloned()).as_deref(),
        Some("stable")
    );
    assert!(services.get_opt("support-chat-canary").await.unwrap_or_else(|e| panic!("{e}")).is_none());
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(cluster.client.clone(), &ns.name);
    assert!(pdbs.get_opt("support-chat").await.unwrap_or_else(|e| panic!("{e}")).is_some());
    op.shutdown().await;
    ns.cleanup().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_change_canaries_to_promotion_and_an_abort_returns_to_stable() {
    let cluster = Cluster::start().await;
    cluster.install_crds().await;
    let ns = cluster.namespace("md-canary").await;
    let op = start_operator(&cluster, &ns.name).await;
    let api: Api<ModelDeployment> = Api::namespaced(cluster.client.clone(), &ns.name);
    let mut md = sample(4);
    md.spec.rollout = Some(pause_steps(1));
    api.create(&PostParams::default(), &md).await.unwrap_or_else(|e| panic!("{e}"));
    until(&api, "support-chat", "Ready", 60, is_ready).await;

    let pp = PatchParams::default();
    api.patch(
        "support-chat",
        &pp,
        &Patch::Merge(json!({"spec": {"model": {"version": "v2", "uri": "hf://Qwen/Qwen2.5-0.5B-Instruct-v2"}}})),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let during = until(&api, "support-chat", "a canary of v2", 30, |m| {
        m.status.as_ref().and_then(|s| s.canary.as_ref()).is_some_and(|c| c.version == "v2")
    })
    .await;
    assert_eq!(condition(&during, "Progressing").map(|c| c.0), Some(ConditionStatus::True));
    assert!(!is_ready(&during), "not Ready while a canary runs");
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), &ns.name);
    let canary = eventually(Duration::from_secs(20), || {
        let deployments = deployments.clone();
        async move { deployments.get_opt("support-chat-canary").await.ok().flatten() }
    })
    .await
    .unwrap_or_else(|| panic!("no canary Deployment"));
    assert_eq!(canary.spec.and_then(|s| s.replicas), Some(1), "25% of 4 replicas");
    let promoted = until(&api, "support-chat", "v2 promoted", 60, |m| {
        m.status.as_ref().and_then(|s| s.stable.as_ref()).is_some_and(|s| s.version == "v2") && is_ready(m)
    })
    .await;
    let history = promoted.status.clone().unwrap_or_default().history;
    assert_eq!(
        history.last().map(|h| (h.type_, h.version.as_str(), h.previous_version.as_deref())),
        Some((HistoryType::Promoted, "v2", Some("v1")))
    );
    let gone = eventually(Duration::from_secs(20), || {
        let deployments = deployments.clone();
        async move { deployments.get_opt("support-chat-canary").await.ok().and_then(|d| d.is_none().then_some(())) }
    })
    .await;
    assert!(gone.is_some(), "the canary track is removed after promotion");
    let stable = deployments.get("support-chat-stable").await.unwrap_or_else(|e| panic!("{e}"));
    let labels = stable.spec.and_then(|s| s.template.metadata).and_then(|m| m.labels).unwrap_or_default();
    assert_eq!(labels.get("flywheel.dev/version").map(String::as_str), Some("v2"));

    // Abort: a long pause, then `flywheel rollout abort`.
    api.patch("support-chat", &pp, &Patch::Merge(json!({"spec": {"rollout": {"steps": [{"weight": 25, "gate": "Pause", "pauseSeconds": 3600}]}, "model": {"version": "v3", "uri": "hf://Qwen/Qwen2.5-0.5B-Instruct-v3"}}}))).await.unwrap_or_else(|e| panic!("{e}"));
    until(&api, "support-chat", "a canary of v3", 30, |m| {
        m.status.as_ref().and_then(|s| s.canary.as_ref()).is_some_and(|c| c.version == "v3")
    })
    .await;
    flywheel::rollout_cli::request(cluster.client.clone(), &ns.name, "support-chat", RolloutAction::Abort, "test")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let aborted = until(&api, "support-chat", "v3 aborted", 30, |m| {
        m.status.as_ref().is_some_and(|s| s.canary.is_none() && s.history.iter().any(|h| h.version == "v3"))
    })
    .await;
    let status = aborted.status.unwrap_or_default();
    assert_eq!(status.stable.map(|s| s.version), Some("v2".to_string()));
    assert_eq!(
        status.history.last().map(|h| (h.type_, h.reason.as_str())),
        Some((HistoryType::Aborted, "ManualAbort"))
    );
    // An Event is written after the status it tells of (CI once listed them in between).
    let wanted = ["Deployed", "CanaryStarted", "StepAdvanced", "Promoted", "Aborted"];
    let events: Api<Event> = Api::namespaced(cluster.client.clone(), &ns.name);
    let reasons = || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await.unwrap_or_else(|e| panic!("{e}"));
            list.items.into_iter().filter_map(|e| e.reason).collect::<Vec<String>>()
        }
    };
    let all = eventually(Duration::from_secs(10), || {
        let listed = reasons();
        async move {
            let listed = listed.await;
            wanted.iter().all(|r| listed.iter().any(|x| x == r)).then_some(())
        }
    })
    .await;
    assert!(all.is_some(), "an Event for each of {wanted:?}: {:?}", reasons().await);
    op.shutdown().await;
    ns.cleanup().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_operator_resumes_the_rollout_where_it_was() {
    let cluster = Cluster::start().await;
    cluster.install_crds().await;
    let ns = cluster.namespace("md-restart").await;
    let op = start_operator(&cluster, &ns.name).await;
    let api: Api<ModelDeployment> = Api::namespaced(cluster.client.clone(), &ns.name);
    let mut md = sample(2);
    md.spec.rollout = Some(RolloutSpec {
        steps: vec![
            CanaryStep { weight: 20, gate: Gate::Manual, pause_seconds: None, deadline_seconds: 3600 },
            CanaryStep { weight: 60, gate: Gate::Manual, pause_seconds: None, deadline_seconds: 3600 },
        ],
        ..RolloutSpec::default()
    });
    api.create(&PostParams::default(), &md).await.unwrap_or_else(|e| panic!("{e}"));
    until(&api, "support-chat", "Ready", 60, is_ready).await;
    api.patch("support-chat", &PatchParams::default(), &Patch::Merge(json!({"spec": {"model": {"version": "v2"}}})))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let before = until(&api, "support-chat", "step 0 clock running", 30, |m| {
        m.status.as_ref().and_then(|s| s.canary.as_ref()).is_some_and(|c| c.step_started_at.is_some())
    })
    .await;
    let canary_before = before.status.clone().and_then(|s| s.canary).unwrap_or_default();
    op.kill();
    let op = start_operator(&cluster, &ns.name).await;
    flywheel::rollout_cli::request(cluster.client.clone(), &ns.name, "support-chat", RolloutAction::Promote, "test")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let after = until(&api, "support-chat", "step 1", 30, |m| {
        m.status.as_ref().and_then(|s| s.canary.as_ref()).is_some_and(|c| c.step == 1)
    })
    .await;
    let canary_after = after.status.and_then(|s| s.canary).unwrap_or_default();
    assert_eq!(canary_after.started_at, canary_before.started_at, "the same rollout continued, not a new one");
    assert_eq!(canary_after.weight, 60);
    op.shutdown().await;
    ns.cleanup().await;
    cluster.stop().await;
}

fn reconciles(metrics: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with("flywheel_reconciles_total{") && l.contains("modeldeployment"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn scrape(op: &Operator) -> String {
    let addr = op.metrics_addr;
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(addr).ok()?;
        stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
        let mut out = String::new();
        stream.read_to_string(&mut out).ok()?;
        Some(out)
    })
    .await
    .ok()
    .flatten()
    .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_object_costs_no_write() {
    let cluster = Cluster::start().await;
    let Some(sim) = cluster.sim_only("counts write requests at the server") else { return };
    cluster.install_crds().await;
    let ns = cluster.namespace("md-quiet").await;
    let op = start_operator(&cluster, &ns.name).await;
    let api: Api<ModelDeployment> = Api::namespaced(cluster.client.clone(), &ns.name);
    api.create(&PostParams::default(), &sample(2)).await.unwrap_or_else(|e| panic!("{e}"));
    until(&api, "support-chat", "Ready", 60, is_ready).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let writes_before: u64 = sim.write_requests().values().sum();
    let reconciles_before = reconciles(&scrape(&op).await);
    // A label change makes the controller look again; nothing it owns needs to change.
    api.patch(
        "support-chat",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}})),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let looked = eventually(Duration::from_secs(10), || async {
        (reconciles(&scrape(&op).await) > reconciles_before).then_some(())
    })
    .await;
    assert!(looked.is_some(), "the controller reconciled again");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes_after: u64 = sim.write_requests().values().sum();
    assert_eq!(writes_after, writes_before + 1, "only the test's own label patch wrote: {:?}", sim.write_requests());
    let metrics = scrape(&op).await;
    for name in [
        "flywheel_reconcile_duration_seconds_bucket",
        "flywheel_reconciles_in_flight",
        "flywheel_reconcile_queue_depth",
        "flywheel_leader",
    ] {
        assert!(metrics.contains(name), "{name} exported:\n{metrics}");
    }
    op.shutdown().await;
    ns.cleanup().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_references_stall_with_a_reason_and_an_event() {
    let cluster = Cluster::start().await;
    cluster.install_crds().await;
    let ns = cluster.namespace("md-stall").await;
    let op = start_operator(&cluster, &ns.name).await;
    let api: Api<ModelDeployment> = Api::namespaced(cluster.client.clone(), &ns.name);
    let mut pvc = sample(1);
    pvc.metadata.name = Some("from-pvc".into());
    pvc.spec.model.uri = "pvc://models/qwen".into();
    api.create(&PostParams::default(), &pvc).await.unwrap_or_else(|e| panic!("{e}"));
    let mut routed = sample(1);
    routed.metadata.name = Some("routed".into());
    routed.spec.traffic = serde_json::from_value(json!({"mode": "GatewayAPI", "httpRouteRef": {"name": "absent"}}))
        .unwrap_or_else(|e| panic!("{e}"));
    api.create(&PostParams::default(), &routed).await.unwrap_or_else(|e| panic!("{e}"));
    for (name, reason) in [("from-pvc", "MissingPersistentVolumeClaim"), ("routed", "MissingHTTPRoute")] {
        let md = until(&api, name, reason, 30, |m| {
            condition(m, "Stalled").is_some_and(|(s, r)| s == ConditionStatus::True && r == reason)
        })
        .await;
        assert!(!is_ready(&md));
    }
    let events: Api<Event> = Api::namespaced(cluster.client.clone(), &ns.name);
    let found = eventually(Duration::from_secs(10), || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await.ok()?;
            let reasons: Vec<String> = list
                .items
                .into_iter()
                .filter(|e| e.type_.as_deref() == Some("Warning"))
                .filter_map(|e| e.reason)
                .collect();
            (reasons.iter().any(|r| r == "MissingPersistentVolumeClaim")
                && reasons.iter().any(|r| r == "MissingHTTPRoute"))
            .then_some(())
        }
    })
    .await;
    assert!(found.is_some(), "Warning Events name the missing references");
    op.shutdown().await;
    ns.cleanup().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_reconciles_and_a_killed_leader_is_replaced_within_the_lease() {
    let cluster = Cluster::start().await;
    cluster.install_crds().await;
    let ns = cluster.namespace("md-leader").await;
    let lease = |identity: &str| operator::leader::LeaseConfig {
        name: format!("flywheel-{}", ns.name),
        namespace: ns.name.clone(),
        identity: identity.to_string(),
        lease_duration: Duration::from_secs(3),
        renew_deadline: Duration::from_secs(2),
        retry_period: Duration::from_millis(300),
    };
    let config = |identity: &str| OperatorConfig {
        leader_election: Some(lease(identity)),
        ..OperatorConfig::local().scoped_to(&ns.name)
    };
    let a = operator::start(cluster.client.clone(), config("a")).await.unwrap_or_else(|e| panic!("{e}"));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let b = operator::start(cluster.client.clone(), config("b")).await.unwrap_or_else(|e| panic!("{e}"));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(*a.leading.borrow(), "the first replica leads");
    assert!(!*b.leading.borrow(), "the second stands by");
    let api: Api<ModelDeployment> = Api::namespaced(cluster.client.clone(), &ns.name);
    api.create(&PostParams::default(), &sample(1)).await.unwrap_or_else(|e| panic!("{e}"));
    until(&api, "support-chat", "Ready", 60, is_ready).await;
    assert_eq!(reconciles(&scrape(&b).await), 0.0, "the standby reconciled nothing");
    assert!(reconciles(&scrape(&a).await) > 0.0);
    let b_leading = b.leading.clone();
    let killed_at = tokio::time::Instant::now();
    a.kill();
    let took_over = eventually(Duration::from_secs(10), || {
        let b_leading = b_leading.clone();
        async move { (*b_leading.borrow()).then_some(()) }
    })
    .await;
    assert!(took_over.is_some(), "the standby took over");
    let handover = killed_at.elapsed();
    assert!(
        // The lease (3 s) runs out, then the standby's next try (every 300 ms) takes it; the
        // rest is slack for a loaded machine.
        handover <= Duration::from_secs(3) + Duration::from_millis(300) + Duration::from_secs(2),
        "handover within the lease: {handover:?}"
    );
    // The new leader reconciles: a change is carried out.
    api.patch("support-chat", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 2}})))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    until(&api, "support-chat", "2 ready replicas", 30, |m| m.status.as_ref().is_some_and(|s| s.ready_replicas == 2))
        .await;
    // A graceful shutdown releases the lease at once.
    let c = operator::start(cluster.client.clone(), config("c")).await.unwrap_or_else(|e| panic!("{e}"));
    let c_leading = c.leading.clone();
    let stopped_at = tokio::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(20), b.shutdown()).await.unwrap_or_else(|_| panic!("b did not shut down"));
    let next = eventually(Duration::from_secs(10), || {
        let c_leading = c_leading.clone();
        async move { (*c_leading.borrow()).then_some(()) }
    })
    .await;
    assert!(next.is_some());
    assert!(
        // Released: no wait for expiry (3 s), only the next try.
        stopped_at.elapsed() < Duration::from_millis(2900),
        "a released lease is taken without waiting for expiry: {:?}",
        stopped_at.elapsed()
    );
    tokio::time::timeout(Duration::from_secs(20), c.shutdown()).await.unwrap_or_else(|_| panic!("c did not shut down"));
    ns.cleanup().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_api_traffic_follows_the_step_weight() {
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
    let cluster = Cluster::start().await;
    cluster.install_crds().await;
    let ns = cluster.namespace("md-route").await;
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
        "httproutes",
    );
    if cluster.is_sim() {
        let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
            Api::all(cluster.client.clone());
        let crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
            serde_yaml::from_str(include_str!("fixtures/httproute-crd.yaml")).unwrap_or_else(|e| panic!("{e}"));
        crds.patch("httproutes.gateway.networking.k8s.io", &PatchParams::apply("tests").force(), &Patch::Apply(&crd))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let routes: Api<DynamicObject> = Api::namespaced_with(cluster.client.clone(), &ns.name, &ar);
    let route: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "chat"},
        "spec": {"parentRefs": [{"name": "gw"}], "rules": [{"backendRefs": [{"name": "support-chat", "port": 80}]}]}
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    let created = eventually(Duration::from_secs(20), || {
        let routes = routes.clone();
        let route = route.clone();
        async move { routes.create(&PostParams::default(), &route).await.ok() }
    })
    .await;
    assert!(created.is_some(), "HTTPRoute created");
    let op = start_operator(&cluster, &ns.name).await;
    let api: Api<ModelDeployment> = Api::namespaced(cluster.client.clone(), &ns.name);
    let mut md = sample(2);
    md.spec.traffic = serde_json::from_value(json!({"mode": "GatewayAPI", "httpRouteRef": {"name": "chat"}}))
        .unwrap_or_else(|e| panic!("{e}"));
    md.spec.rollout = Some(RolloutSpec {
        steps: vec![CanaryStep { weight: 30, gate: Gate::Manual, pause_seconds: None, deadline_seconds: 3600 }],
        ..RolloutSpec::default()
    });
    api.create(&PostParams::default(), &md).await.unwrap_or_else(|e| panic!("{e}"));
    until(&api, "support-chat", "Ready", 60, is_ready).await;
    let weights = |r: &DynamicObject| -> Vec<(String, i64)> {
        r.data["spec"]["rules"][0]["backendRefs"]
            .as_array()
            .map(|refs| {
                refs.iter()
                    .map(|b| (b["name"].as_str().unwrap_or_default().to_string(), b["weight"].as_i64().unwrap_or(-1)))
                    .collect()
            })
            .unwrap_or_default()
    };
    let stable_only = routes.get("chat").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(weights(&stable_only), vec![("support-chat-stable".to_string(), 100)]);
    api.patch("support-chat", &PatchParams::default(), &Patch::Merge(json!({"spec": {"model": {"version": "v2"}}})))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let split = eventually(Duration::from_secs(30), || {
        let routes = routes.clone();
        async move {
            let r = routes.get("chat").await.ok()?;
            let w = weights(&r);
            (w == vec![("support-chat-stable".to_string(), 70), ("support-chat-canary".to_string(), 30)]).then_some(w)
        }
    })
    .await;
    assert!(
        split.is_some(),
        "the route carries the step's exact weight: {:?}",
        weights(&routes.get("chat").await.unwrap_or_else(|e| panic!("{e}")))
    );
    op.shutdown().await;
    ns.cleanup().await;
    cluster.stop().await;
}

/// Simulated load: a total number of requests in flight per track, spread over whatever pods
/// the track has (the autoscaler sees the sum).
#[derive(Default)]
struct SimulatedLoad {
    in_flight: std::sync::Mutex<std::collections::HashMap<String, f64>>,
}

impl SimulatedLoad {
    fn set(&self, track: &str, load: f64) {
        if let Ok(mut m) = self.in_flight.lock() {
            m.insert(track.to_string(), load);
        }
    }
}

impl flywheel::autoscale::scrape::LoadSource for SimulatedLoad {
    fn load<'a>(
        &'a self,
        pods: &'a [flywheel::autoscale::scrape::PodTarget],
        metrics: &'a [String],
    ) -> futures::future::BoxFuture<'a, Option<(f64, i32)>> {
        Box::pin(async move {
            assert_eq!(metrics, ["flywheel_agent_in_flight_requests".to_string()], "the agent's gauge is scraped");
            assert!(pods.iter().all(|p| p.port == 9091), "on the agent's admin port");
            let track = if pods.first()?.name.contains("-canary-") { "canary" } else { "stable" };
            let load = self.in_flight.lock().ok()?.get(track).copied()?;
            Some((load, i32::try_from(pods.len()).unwrap_or(0)))
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_on_the_pods_moves_the_replicas() {
    use flywheel::api::model_deployment::{ScalingMetric, ScalingSpec, Track};
    let cluster = Cluster::start().await;
    cluster.install_crds().await;
    let ns = cluster.namespace("md-scale").await;
    let load = std::sync::Arc::new(SimulatedLoad::default());
    let config = OperatorConfig {
        load_source: load.clone(),
        scale_interval: Duration::from_millis(500),
        ..OperatorConfig::local().scoped_to(&ns.name)
    };
    let op = operator::start(cluster.client.clone(), config).await.unwrap_or_else(|e| panic!("{e}"));
    let api: Api<ModelDeployment> = Api::namespaced(cluster.client.clone(), &ns.name);
    let mut md = sample(1);
    md.spec.replicas = None;
    md.spec.scaling = Some(ScalingSpec {
        min_replicas: 1,
        max_replicas: 6,
        metric: ScalingMetric::InFlight,
        runtime_metrics: vec![],
        target_per_replica: 4.0,
        stable_window_seconds: 6,
        panic_window_seconds: 2,
        panic_threshold: 2.0,
        scale_down_delay_seconds: 0,
        max_scale_up_rate: 1000.0,
        max_scale_down_rate: 2.0,
    });
    load.set("stable", 2.0);
    api.create(&PostParams::default(), &md).await.unwrap_or_else(|e| panic!("{e}"));
    until(&api, "support-chat", "Ready on one replica", 60, |m| {
        is_ready(m) && m.status.as_ref().is_some_and(|s| s.ready_replicas == 1)
    })
    .await;

    // A burst: 20 in flight at 4 per replica wants 5 replicas, at once (panic window).
    load.set("stable", 20.0);
    let scaled = until(&api, "support-chat", "5 ready replicas", 60, |m| {
        m.status.as_ref().is_some_and(|s| s.ready_replicas == 5)
    })
    .await;
    let decision = scaled.status.as_ref().and_then(|s| s.scaling.iter().find(|d| d.track == Track::Stable)).cloned();
    let decision = decision.unwrap_or_else(|| panic!("no scaling decision in status"));
    assert_eq!(decision.desired_replicas, 5);
    assert!(decision.reason.contains("panic") || decision.reason.contains("average"), "{}", decision.reason);
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), &ns.name);
    let stable = deployments.get("support-chat-stable").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(stable.spec.and_then(|s| s.replicas), Some(5));
    let events: Api<Event> = Api::namespaced(cluster.client.clone(), &ns.name);
    let scaled_events = eventually(Duration::from_secs(10), || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await.ok()?;
            let found: Vec<String> = list
                .items
                .iter()
                .filter(|e| e.reason.as_deref() == Some("Scaled"))
                .filter_map(|e| e.note.clone())
                .collect();
            found.iter().any(|n| n.contains("→ 5 replicas")).then_some(found)
        }
    })
    .await;
    let scaled_events = scaled_events.unwrap_or_else(|| panic!("no Scaled event reaching 5 replicas"));
    assert!(scaled_events.iter().any(|n| n.starts_with("stable: 1 → ")), "an Event for each change: {scaled_events:?}");

    // The load ends: back to one replica once the stable window forgets the burst, by at most
    // half per decision.
    load.set("stable", 1.0);
    until(&api, "support-chat", "back to 1 replica", 90, |m| {
        m.status.as_ref().is_some_and(|s| s.replicas == 1 && s.ready_replicas == 1)
    })
    .await;
    let text = flywheel::http_client::client()
        .get(format!("http://{}/metrics", op.metrics_addr))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .text()
        .await
        .unwrap_or_default();
    assert!(text.contains("flywheel_autoscaler_desired_replicas{"), "{text}");
    op.shutdown().await;
    ns.cleanup().await;
    cluster.stop().await;
}

/// Posts `n` thumbs for `version`, `up` of them positive, in batches.
async fn thumbs(http: &reqwest::Client, base: &str, token: &str, ns: &str, version: &str, n: usize, up: usize) {
    let events: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            json!({"id": format!("{version}-{i}-{}", uuid::Uuid::new_v4().simple()), "namespace": ns,
                   "deployment": "support-chat", "version": version, "kind": "thumbs", "value": i < up})
        })
        .collect();
    for chunk in events.chunks(1000) {
        let response = http
            .post(format!("{base}/v1/feedback"))
            .bearer_auth(token)
            .json(&chunk)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(response.status().as_u16(), 207);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_canary_is_judged_on_live_feedback() {
    use flywheel::api::model_deployment::{AnalysisSpec, Verdict};
    use flywheel::collector::{Collector, CollectorConfig};
    use flywheel::operator::model_deployment::feedback_analysis::CollectorAnalysis;
    let cluster = Cluster::start().await;
    cluster.install_crds().await;
    let ns = cluster.namespace("md-judged").await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let token = "judge-test-token-0123456789";
    std::fs::write(dir.path().join("tokens"), format!("{token}\n")).unwrap_or_else(|e| panic!("{e}"));
    let mut cc = CollectorConfig::new("127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")), dir.path().join("data"));
    cc.token_file = Some(dir.path().join("tokens"));
    let collector = Collector::start(cc).await.unwrap_or_else(|e| panic!("{e}"));
    let base = format!("http://{}", collector.addr());
    let config = OperatorConfig {
        analysis: std::sync::Arc::new(CollectorAnalysis::new(&base, Some(token.to_string()))),
        ..OperatorConfig::local().scoped_to(&ns.name)
    };
    let op = operator::start(cluster.client.clone(), config).await.unwrap_or_else(|e| panic!("{e}"));
    let api: Api<ModelDeployment> = Api::namespaced(cluster.client.clone(), &ns.name);
    let mut md = sample(2);
    md.spec.rollout = Some(RolloutSpec {
        steps: vec![CanaryStep { weight: 50, gate: Gate::Analysis, pause_seconds: None, deadline_seconds: 600 }],
        analysis: Some(AnalysisSpec {
            min_samples_per_arm: 100,
            margin: 0.05,
            confidence: 0.95,
            max_error_rate_increase: 0.05,
            max_correction_rate_increase: 0.05,
            interval_seconds: 1,
        }),
        ..RolloutSpec::default()
    });
    api.create(&PostParams::default(), &md).await.unwrap_or_else(|e| panic!("{e}"));
    until(&api, "support-chat", "Ready", 60, is_ready).await;
    let http = flywheel::http_client::client();

    for (version, canary_up, expect) in [("v2", 1700, HistoryType::Promoted), ("v3", 1000, HistoryType::RolledBack)] {
        api.patch(
            "support-chat",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"model": {"version": version, "uri": format!("hf://Qwen/Qwen2.5-0.5B-Instruct-{version}")}}})),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let waiting = until(&api, "support-chat", "a canary step under way", 60, |m| {
            m.status
                .as_ref()
                .and_then(|s| s.canary.as_ref())
                .is_some_and(|c| c.version == version && c.step_started_at.is_some())
        })
        .await;
        let stable =
            waiting.status.as_ref().and_then(|s| s.stable.as_ref()).map(|s| s.version.clone()).unwrap_or_default();
        // Thin data: inconclusive, and the evidence says so.
        until(&api, "support-chat", "inconclusive evidence", 30, |m| {
            m.status
                .as_ref()
                .and_then(|s| s.canary.as_ref())
                .and_then(|c| c.evidence.as_ref())
                .is_some_and(|e| e.verdict == Verdict::Inconclusive && e.message.contains("waiting"))
        })
        .await;
        // Stable at 80% positive; the canary at 85% (v2) or 50% (v3), 2,000 judgments each.
        thumbs(&http, &base, token, &ns.name, &stable, 2000, 1600).await;
        thumbs(&http, &base, token, &ns.name, version, 2000, canary_up).await;
        let done = until(&api, "support-chat", "a verdict", 60, |m| {
            m.status.as_ref().is_some_and(|s| s.history.last().is_some_and(|h| h.version == version))
        })
        .await;
        let entry =
            done.status.as_ref().and_then(|s| s.history.last().cloned()).unwrap_or_else(|| panic!("no history"));
        assert_eq!(entry.type_, expect, "{version}: {}", entry.message);
        let evidence = entry.evidence.unwrap_or_else(|| panic!("{version}: the decision carries its evidence"));
        assert_eq!((evidence.stable_samples, evidence.canary_samples), (2000, 2000));
        assert!(evidence.difference_lower.is_some() && evidence.difference_upper.is_some());
        let expected_stable = if expect == HistoryType::Promoted { version.to_string() } else { stable.clone() };
        until(&api, "support-chat", "the stable version after the verdict", 60, |m| {
            m.status.as_ref().and_then(|s| s.stable.as_ref()).is_some_and(|s| s.version == expected_stable)
                && m.status.as_ref().is_some_and(|s| s.canary.is_none())
        })
        .await;
    }
    op.shutdown().await;
    collector.shutdown().await;
    ns.cleanup().await;
    cluster.stop().await;
}

/// Captured log output of the code under test.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Out of cluster the default lease namespace usually does not exist: the operator says so once,
/// as an error naming the flags to set, instead of a warning every retry period.
// One thread: the log capture below is this thread's subscriber, and every task runs here.
#[tokio::test]
async fn a_missing_lease_namespace_is_one_error_naming_the_flags() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_env_filter(tracing_subscriber::EnvFilter::new("flywheel=debug"))
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let cluster = Cluster::start().await;
    cluster.install_crds().await;
    let ns = cluster.namespace("md-nolease").await;
    let missing = format!("{}-missing", ns.name);
    let config = OperatorConfig {
        leader_election: Some(operator::leader::LeaseConfig {
            name: "flywheel-operator".into(),
            namespace: missing.clone(),
            identity: "a".into(),
            lease_duration: Duration::from_secs(3),
            renew_deadline: Duration::from_secs(2),
            retry_period: Duration::from_millis(100),
        }),
        ..OperatorConfig::local().scoped_to(&ns.name)
    };
    let op = operator::start(cluster.client.clone(), config).await.unwrap_or_else(|e| panic!("{e}"));
    // At least ten retry periods.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!*op.leading.borrow(), "no lease, no leadership");
    op.shutdown().await;
    let text =
        String::from_utf8_lossy(&captured.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)).into_owned();
    let errors: Vec<&str> = text.lines().filter(|l| l.contains("ERROR") && l.contains(&missing)).collect();
    assert_eq!(errors.len(), 1, "one error about the missing namespace: {text}");
    assert!(errors[0].contains("--lease-namespace") && errors[0].contains("--leader-elect=false"), "{}", errors[0]);
    let repeats = text.lines().filter(|l| l.contains("DEBUG") && l.contains("lease request failed again")).count();
    assert!(repeats >= 5, "the election kept trying, quietly ({repeats} retries logged at debug): {text}");
    assert!(!text.lines().any(|l| l.contains("WARN") && l.contains("lease request failed")), "{text}");
    ns.cleanup().await;
    cluster.stop().await;
}

/// A canary whose pods never become Ready (a model that cannot load, a crash loop) is aborted at
/// `spec.rollout.progressDeadlineSeconds`: the rollout does not hang, stable takes all traffic
/// again, and the history says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_never_ready_is_aborted_at_the_progress_deadline() {
    use flywheel::sim::{PodBehavior, PodScript, SimConfig, WorkloadConfig};
    // Pods of v2 start but never pass their readiness probe; every other pod is Ready quickly.
    let script: PodScript = std::sync::Arc::new(|pod: &serde_json::Value| {
        let version = pod.pointer("/metadata/labels/flywheel.dev~1version").and_then(serde_json::Value::as_str)?;
        (version == "v2").then(|| PodBehavior { ready_after: Duration::from_secs(3600), finish: None })
    });
    let cluster = Cluster::start_with(SimConfig {
        workloads: WorkloadConfig { script: Some(script), ..WorkloadConfig::default() },
        ..SimConfig::default()
    })
    .await;
    let Some(_) = cluster.sim_only("pods scripted never to become Ready") else { return };
    cluster.install_crds().await;
    let ns = cluster.namespace("md-deadline").await;
    let op = start_operator(&cluster, &ns.name).await;
    let api: Api<ModelDeployment> = Api::namespaced(cluster.client.clone(), &ns.name);
    let mut md = sample(2);
    let mut rollout = pause_steps(1);
    rollout.progress_deadline_seconds = 10;
    md.spec.rollout = Some(rollout);
    api.create(&PostParams::default(), &md).await.unwrap_or_else(|e| panic!("{e}"));
    until(&api, "support-chat", "Ready", 60, is_ready).await;
    api.patch(
        "support-chat",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"model": {"version": "v2", "uri": "hf://Qwen/Qwen2.5-0.5B-Instruct-v2"}}})),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let waiting = until(&api, "support-chat", "the canary waiting to be Ready", 30, |m| {
        m.status.as_ref().and_then(|s| s.canary.as_ref()).is_some_and(|c| c.not_ready_since.is_some())
    })
    .await;
    assert!(waiting.status.as_ref().and_then(|s| s.canary.as_ref()).is_some_and(|c| c.step_started_at.is_none()));
    let aborted = until(&api, "support-chat", "the rollout aborted", 40, |m| {
        m.status.as_ref().is_some_and(|s| s.canary.is_none() && s.history.last().is_some_and(|h| h.version == "v2"))
    })
    .await;
    let status = aborted.status.clone().unwrap_or_default();
    let entry = status.history.last().cloned().unwrap_or_else(|| panic!("no history"));
    assert_eq!((entry.type_, entry.reason.as_str()), (HistoryType::Aborted, "ProgressDeadlineExceeded"));
    assert!(entry.message.contains("progressDeadlineSeconds"), "{}", entry.message);
    assert_eq!(status.stable.map(|s| s.version), Some("v1".to_string()));
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), &ns.name);
    let gone = eventually(Duration::from_secs(20), || {
        let deployments = deployments.clone();
        async move { deployments.get_opt("support-chat-canary").await.ok()?.is_none().then_some(()) }
    })
    .await;
    assert!(gone.is_some(), "the canary track is removed");
    until(&api, "support-chat", "Ready on stable", 30, is_ready).await;
    op.shutdown().await;
    ns.cleanup().await;
    cluster.stop().await;
}

/// Posts `n` label feedback events for `version`, `good` of them labelled `resolved`, the rest
/// `unresolved`.
async fn labels(http: &reqwest::Client, base: &str, token: &str, ns: &str, version: &str, n: usize, good: usize) {
    let events: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            json!({"id": format!("{version}-l{i}-{}", uuid::Uuid::new_v4().simple()), "namespace": ns,
                   "deployment": "support-chat", "version": version, "kind": "label",
                   "value": if i < good { "resolved" } else { "unresolved" }})
        })
        .collect();
    for chunk in events.chunks(1000) {
        let response = http
            .post(format!("{base}/v1/feedback"))
            .bearer_auth(token)
            .json(&chunk)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(response.status().as_u16(), 207);
    }
}

/// A team that judges answers only with labels: the canary is judged with the signal mapping of
/// the FeedbackPolicy that targets the ModelDeployment (with the default mapping labels count
/// for nothing, every arm stays empty, and the canary would wait and abort), and status says
/// which mapping judged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_canary_is_judged_with_the_targeting_policys_signal_mapping() {
    use flywheel::api::FeedbackPolicy;
    use flywheel::api::model_deployment::{AnalysisSpec, Verdict};
    use flywheel::collector::{Collector, CollectorConfig};
    use flywheel::operator::model_deployment::feedback_analysis::CollectorAnalysis;
    let cluster = Cluster::start().await;
    cluster.install_crds().await;
    let ns = cluster.namespace("md-labels").await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let token = "label-test-token-0123456789";
    std::fs::write(dir.path().join("tokens"), format!("{token}\n")).unwrap_or_else(|e| panic!("{e}"));
    let mut cc = CollectorConfig::new("127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")), dir.path().join("data"));
    cc.token_file = Some(dir.path().join("tokens"));
    let collector = Collector::start(cc).await.unwrap_or_else(|e| panic!("{e}"));
    let base = format!("http://{}", collector.addr());
    let config = OperatorConfig {
        analysis: std::sync::Arc::new(CollectorAnalysis::new(&base, Some(token.to_string()))),
        ..OperatorConfig::local().scoped_to(&ns.name)
    };
    let op = operator::start(cluster.client.clone(), config).await.unwrap_or_else(|e| panic!("{e}"));
    // The policy that targets it, in suggest mode (it only maps signals here).
    let policy: FeedbackPolicy = serde_json::from_value(json!({
        "apiVersion": "flywheel.dev/v1alpha1", "kind": "FeedbackPolicy",
        "metadata": {"name": "support-chat-labels"},
        "spec": {
            "targetRef": {"name": "support-chat"}, "mode": "suggest",
            "signals": {"positiveLabels": ["resolved"], "negativeLabels": ["unresolved"]},
            "triggers": {"qualityBelow": 0.1, "minSamples": 100000},
            "trainer": {"image": "busybox:1.36"},
            "outputUriPrefix": "pvc://models/"
        }
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    let policies: Api<FeedbackPolicy> = Api::namespaced(cluster.client.clone(), &ns.name);
    policies.create(&PostParams::default(), &policy).await.unwrap_or_else(|e| panic!("{e}"));
    let api: Api<ModelDeployment> = Api::namespaced(cluster.client.clone(), &ns.name);
    let mut md = sample(2);
    md.spec.rollout = Some(RolloutSpec {
        steps: vec![CanaryStep { weight: 50, gate: Gate::Analysis, pause_seconds: None, deadline_seconds: 600 }],
        analysis: Some(AnalysisSpec { min_samples_per_arm: 100, interval_seconds: 1, ..AnalysisSpec::default() }),
        ..RolloutSpec::default()
    });
    api.create(&PostParams::default(), &md).await.unwrap_or_else(|e| panic!("{e}"));
    until(&api, "support-chat", "Ready", 60, is_ready).await;
    api.patch(
        "support-chat",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"model": {"version": "v2", "uri": "hf://Qwen/Qwen2.5-0.5B-Instruct-v2"}}})),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    until(&api, "support-chat", "a canary step under way", 60, |m| {
        m.status.as_ref().and_then(|s| s.canary.as_ref()).is_some_and(|c| c.step_started_at.is_some())
    })
    .await;
    let http = flywheel::http_client::client();
    labels(&http, &base, token, &ns.name, "v1", 2000, 1600).await;
    labels(&http, &base, token, &ns.name, "v2", 2000, 1700).await;
    let done = until(&api, "support-chat", "a verdict", 60, |m| {
        m.status.as_ref().is_some_and(|s| s.history.last().is_some_and(|h| h.version == "v2"))
    })
    .await;
    let entry = done.status.as_ref().and_then(|s| s.history.last().cloned()).unwrap_or_else(|| panic!("no history"));
    assert_eq!(entry.type_, HistoryType::Promoted, "{}", entry.message);
    let evidence = entry.evidence.unwrap_or_else(|| panic!("the decision carries its evidence"));
    assert_eq!(evidence.verdict, Verdict::Pass);
    assert_eq!((evidence.stable_samples, evidence.canary_samples), (2000, 2000), "labels counted as judgments");
    assert_eq!(evidence.judged_by.as_deref(), Some("FeedbackPolicy support-chat-labels"));
    op.shutdown().await;
    collector.shutdown().await;
    ns.cleanup().await;
    cluster.stop().await;
}

/// Trainer pods carry `flywheel.dev/model-deployment` too. Serving selectors (the Service, the
/// PodDisruptionBudget, the scale subresource's selector) must take in inference pods only: on a
/// real control plane the disruption controller fails a budget that selects a Job's pod ("jobs.batch
/// does not implement the scale subresource"), and the budget stops protecting the inference pods
/// during every retrain. Objects an earlier version applied with the old selector are updated in
/// place, selecting the same inference pods (no restart, no traffic dropped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_selectors_never_take_in_trainer_pods() {
    use k8s_openapi::api::batch::v1::Job;
    use k8s_openapi::api::core::v1::Pod;
    let cluster = Cluster::start().await;
    cluster.install_crds().await;
    let ns = cluster.namespace("md-selectors").await;
    // What an earlier operator version applied: the Service and budget selecting on the
    // ModelDeployment label alone.
    let old_selector = json!({"flywheel.dev/model-deployment": "support-chat"});
    let apply = PatchParams::apply("flywheel").force();
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), &ns.name);
    services
        .patch(
            "support-chat",
            &apply,
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "support-chat"},
                "spec": {"selector": old_selector, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}})),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(cluster.client.clone(), &ns.name);
    pdbs.patch(
        "support-chat",
        &apply,
        &Patch::Apply(
            json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "support-chat"},
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": old_selector}}}),
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    let op = start_operator(&cluster, &ns.name).await;
    let api: Api<ModelDeployment> = Api::namespaced(cluster.client.clone(), &ns.name);
    api.create(&PostParams::default(), &sample(2)).await.unwrap_or_else(|e| panic!("{e}"));
    until(&api, "support-chat", "Ready", 60, is_ready).await;
    // A trainer's Job runs beside the inference pods, labelled as the RetrainJob controller does.
    let jobs: Api<Job> = Api::namespaced(cluster.client.clone(), &ns.name);
    let job: Job = serde_json::from_value(json!({
        "metadata": {"name": "support-chat-retrain-1"},
        "spec": {"backoffLimit": 0, "template": {
            "metadata": {
                "labels": {"flywheel.dev/model-deployment": "support-chat", "app.kubernetes.io/component": "trainer"},
                "annotations": {"sim.flywheel.dev/duration": "3600"}
            },
            "spec": {"restartPolicy": "Never", "containers": [{"name": "trainer", "image": "busybox:1.36", "command": ["sleep", "3600"]}]}
        }}
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    jobs.create(&PostParams::default(), &job).await.unwrap_or_else(|e| panic!("{e}"));
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    let trainer_running = eventually(Duration::from_secs(30), || {
        let pods = pods.clone();
        async move {
            let list = pods.list(&ListParams::default().labels("app.kubernetes.io/component=trainer")).await.ok()?;
            (!list.items.is_empty()).then_some(())
        }
    })
    .await;
    assert!(trainer_running.is_some(), "the trainer's pod exists");

    // The selectors were updated in place and select the inference pods only.
    let md = api.get("support-chat").await.unwrap_or_else(|e| panic!("{e}"));
    let status_selector = md.status.and_then(|s| s.selector).unwrap_or_default();
    let service_selector = services.get("support-chat").await.ok().and_then(|s| s.spec?.selector).unwrap_or_default();
    let service_selector: Vec<String> = service_selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let pdb = pdbs.get("support-chat").await.unwrap_or_else(|e| panic!("{e}"));
    let budget_selector =
        pdb.spec.as_ref().and_then(|s| s.selector.clone()).and_then(|s| s.match_labels).unwrap_or_default();
    let budget_selector: Vec<String> = budget_selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
    for selector in [status_selector, service_selector.join(","), budget_selector.join(",")] {
        let selected =
            pods.list(&ListParams::default().labels(&selector)).await.unwrap_or_else(|e| panic!("{e}")).items;
        let components: Vec<String> = selected
            .iter()
            .map(|p| {
                p.metadata
                    .labels
                    .clone()
                    .unwrap_or_default()
                    .get("app.kubernetes.io/component")
                    .cloned()
                    .unwrap_or_default()
            })
            .collect();
        assert_eq!(components, ["inference", "inference"], "{selector} selects {components:?}");
    }

    // The disruption controller computes the budget over the inference pods alone.
    let healthy = eventually(Duration::from_secs(30), || {
        let pdbs = pdbs.clone();
        async move {
            let status = pdbs.get("support-chat").await.ok()?.status?;
            let allowed =
                status.conditions.clone().unwrap_or_default().into_iter().find(|c| c.type_ == "DisruptionAllowed")?;
            (status.expected_pods == 2 && status.current_healthy == 2 && allowed.status == "True").then_some(status)
        }
    })
    .await;
    let last = pdbs.get("support-chat").await.ok().and_then(|p| p.status);
    let status = healthy.unwrap_or_else(|| panic!("the budget never covered the inference pods alone: {last:?}"));
    assert_eq!((status.desired_healthy, status.disruptions_allowed), (1, 1), "{status:?}");
    op.shutdown().await;
    ns.cleanup().await;
    cluster.stop().await;
}

/// The operator's Event recorder against the cluster: a repeat counts up one series (one Event,
/// `series.count` 2), a different reason is its own Event, and a repeat whose Event is gone
/// (expired on the server, or deleted) makes a new one rather than failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_event_counts_up_one_series_and_a_lost_one_is_made_again() {
    use flywheel::operator::events::{Event as Note, EventType, Recorder, Reporter};
    use k8s_openapi::api::core::v1::ObjectReference;
    let cluster = Cluster::start().await;
    let ns = cluster.namespace("events").await;
    let recorder =
        Recorder::new(cluster.client.clone(), Reporter { controller: "flywheel-test".into(), instance: None });
    let regarding = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("ConfigMap".into()),
        namespace: Some(ns.name.clone()),
        name: Some("subject".into()),
        uid: Some("00000000-0000-0000-0000-000000000001".into()),
        ..ObjectReference::default()
    };
    let note = |type_, reason: &str| Note {
        type_,
        reason: reason.into(),
        note: Some(format!("{reason} happened")),
        action: format!("{reason}-1"),
        secondary: None,
    };
    let events: Api<Event> = Api::namespaced(cluster.client.clone(), &ns.name);
    // Only this test's Events (a real namespace may hold others).
    let ours = || {
        let events = events.clone();
        async move {
            let mut listed: Vec<Event> = events
                .list(&ListParams::default())
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .items
                .into_iter()
                .filter(|e| e.reporting_controller.as_deref() == Some("flywheel-test"))
                .collect();
            listed.sort_by_key(|e| e.reason.clone());
            listed
                .into_iter()
                .map(|e| (e.reason.unwrap_or_default(), e.series.map(|s| s.count), e.metadata.name.unwrap_or_default()))
                .collect::<Vec<_>>()
        }
    };
    for _ in 0..2 {
        recorder.publish(&note(EventType::Normal, "Scaled"), &regarding).await.unwrap_or_else(|e| panic!("{e}"));
    }
    recorder.publish(&note(EventType::Warning, "Failed"), &regarding).await.unwrap_or_else(|e| panic!("{e}"));
    let listed = ours().await;
    let summary: Vec<_> = listed.iter().map(|(r, c, _)| (r.as_str(), *c)).collect();
    assert_eq!(summary, vec![("Failed", None), ("Scaled", Some(2))]);
    assert_eq!(recorder.remembered(), 2);
    // The series' Event goes; its next repeat is a new Event.
    let scaled = listed.iter().find(|(r, _, _)| r == "Scaled").map(|(_, _, n)| n.clone()).unwrap_or_default();
    events.delete(&scaled, &Default::default()).await.unwrap_or_else(|e| panic!("{e}"));
    recorder.publish(&note(EventType::Normal, "Scaled"), &regarding).await.unwrap_or_else(|e| panic!("{e}"));
    let again = ours().await;
    let summary: Vec<_> = again.iter().map(|(r, c, _)| (r.as_str(), *c)).collect();
    assert_eq!(summary, vec![("Failed", None), ("Scaled", None)]);
    assert!(again.iter().all(|(_, _, n)| *n != scaled), "a new Event, not the deleted one");
    ns.cleanup().await;
    cluster.stop().await;
}
