//! A kube-runtime `Controller` against the simulated cluster with faults injected (write errors
//! 500/429/409, added latency, watch streams dropped every second, forced compaction so watches
//! get 410 Gone): it must neither panic nor miss an object.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{Cluster, eventually};
use flywheel::sim::FaultConfig;
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;

struct Ctx {
    client: kube::Client,
    reconciles: AtomicU64,
    errors: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
#[error("applying child: {0}")]
struct ReconcileError(#[from] kube::Error);

async fn reconcile(parent: Arc<ConfigMap>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    ctx.reconciles.fetch_add(1, Ordering::Relaxed);
    let ns = parent.namespace().unwrap_or_default();
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    let owner = parent.controller_owner_ref(&()).map(|o| serde_json::to_value(o).unwrap_or_default());
    let child = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": format!("{}-child", parent.name_any()), "labels": {"app": "child"}, "ownerReferences": [owner]},
        "data": {"from": parent.data.as_ref().and_then(|d| d.get("value")).cloned().unwrap_or_default()}
    });
    api.patch(&format!("{}-child", parent.name_any()), &PatchParams::apply("fault-test").force(), &Patch::Apply(child))
        .await
        .inspect_err(|_| {
            ctx.errors.fetch_add(1, Ordering::Relaxed);
        })?;
    Ok(Action::await_change())
}

fn error_policy(_parent: Arc<ConfigMap>, _error: &ReconcileError, _ctx: Arc<Ctx>) -> Action {
    Action::requeue(Duration::from_millis(100))
}

async fn create_with_retry(api: &Api<ConfigMap>, name: &str, value: &str) {
    let cm: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": name, "labels": {"app": "parent"}}, "data": {"value": value}}),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    for _ in 0..100 {
        match api.create(&PostParams::default(), &cm).await {
            Ok(_) => return,
            Err(kube::Error::Api(s)) if s.code == 409 && s.reason == "AlreadyExists" => return,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    panic!("could not create {name} through the injected faults");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_survives_injected_faults() {
    let cluster = Cluster::start().await;
    let Some(sim) = cluster.sim_only("fault injection") else { return };
    let ns = cluster.namespace("faults").await;
    let parents: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), &ns.name);
    let ctx =
        Arc::new(Ctx { client: cluster.client.clone(), reconciles: AtomicU64::new(0), errors: AtomicU64::new(0) });
    for i in 0..10 {
        create_with_retry(&parents, &format!("p{i}"), &format!("v{i}")).await;
    }
    sim.faults().set(FaultConfig {
        write_error_rate: 0.3,
        latency: Some(Duration::from_millis(2)),
        drop_watches_after: Some(Duration::from_secs(1)),
    });
    let controller = Controller::new(parents.clone(), watcher::Config::default().labels("app=parent"))
        .owns(parents.clone(), watcher::Config::default().labels("app=child"))
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|_| async {});
    let handle = tokio::spawn(controller);
    for i in 10..30 {
        create_with_retry(&parents, &format!("p{i}"), &format!("v{i}")).await;
        if i == 20 {
            sim.core().compact();
        }
    }
    let all_children = eventually(Duration::from_secs(60), || {
        let parents = parents.clone();
        async move {
            let children = parents.list(&ListParams::default().labels("app=child")).await.ok()?;
            (children.items.len() == 30).then_some(children)
        }
    })
    .await;
    sim.faults().set(FaultConfig::default());
    let children = all_children.unwrap_or_else(|| panic!("the controller missed objects under faults"));
    for child in &children.items {
        let parent = child.owner_references().first().map(|o| o.name.clone()).unwrap_or_default();
        let value = child.data.as_ref().and_then(|d| d.get("from")).cloned().unwrap_or_default();
        assert_eq!(value, format!("v{}", parent.trim_start_matches('p')), "child of {parent}");
    }
    assert!(!handle.is_finished(), "the controller stopped");
    assert!(sim.faults().injected() > 0, "faults were injected");
    assert!(ctx.errors.load(Ordering::Relaxed) > 0, "the controller met injected errors and retried");
    handle.abort();
    ns.cleanup().await;
    cluster.stop().await;
}
