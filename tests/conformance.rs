//! Conformance of the simulated API server, through the real `kube::Client`. Every test also
//! runs against a real cluster named by `FLYWHEEL_E2E_KUBECONFIG`; expectations come from what
//! a real kube-apiserver 1.36 answers (`shared/reference/`, the widget CRD is copied into
//! `tests/fixtures/`).

mod common;

use std::time::Duration;

use common::{Cluster, eventually};
use flywheel::api::ModelDeployment;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
    WatchEvent, WatchParams,
};
use serde_json::{Value, json};

/// What a test reads of an error answer.
struct ApiErr {
    code: u16,
    reason: String,
    message: String,
    details: Option<kube::core::response::StatusDetails>,
}

impl ApiErr {
    /// `details.kind`, or "" when there are no details.
    fn details_kind(&self) -> &str {
        self.details.as_ref().map_or("", |d| d.kind.as_str())
    }

    /// The causes as (reason, field, message).
    fn causes(&self) -> Vec<(String, String, String)> {
        self.details
            .as_ref()
            .map(|d| d.causes.iter().map(|c| (c.reason.clone(), c.field.clone(), c.message.clone())).collect())
            .unwrap_or_default()
    }
}

fn api_error(e: kube::Error) -> ApiErr {
    match e {
        kube::Error::Api(status) => ApiErr {
            code: status.code,
            reason: status.reason.clone(),
            message: status.message.clone(),
            details: status.details.clone(),
        },
        other => panic!("expected an API error, got {other}"),
    }
}

async fn widget_api(cluster: &Cluster, ns: &str) -> Api<DynamicObject> {
    let crds: Api<CustomResourceDefinition> = Api::all(cluster.client.clone());
    let crd: CustomResourceDefinition =
        serde_yaml::from_str(include_str!("fixtures/widget-crd.yaml")).unwrap_or_else(|e| panic!("{e}"));
    crds.patch("widgets.example.com", &PatchParams::apply("conformance").force(), &Patch::Apply(&crd))
        .await
        .unwrap_or_else(|e| panic!("applying widget CRD: {e}"));
    let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("example.com", "v1", "Widget"), "widgets");
    let api: Api<DynamicObject> = Api::namespaced_with(cluster.client.clone(), ns, &ar);
    eventually(Duration::from_secs(30), || {
        let api = api.clone();
        async move { api.list(&ListParams::default()).await.ok().map(|_| ()) }
    })
    .await
    .unwrap_or_else(|| panic!("widgets never served"));
    api
}

fn widget(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(
        json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": name}, "spec": spec}),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn rv(obj: &DynamicObject) -> u64 {
    obj.metadata
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no resourceVersion"))
}

#[tokio::test]
async fn create_get_and_object_metadata() {
    let cluster = Cluster::start().await;
    let ns = cluster.namespace("meta").await;
    let api = widget_api(&cluster, &ns.name).await;
    let a = api
        .create(&PostParams::default(), &widget("a", json!({"replicas": 1, "minReplicas": 1})))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let b = api
        .create(&PostParams::default(), &widget("b", json!({"replicas": 1, "minReplicas": 1})))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(a.metadata.uid.is_some() && a.metadata.uid != b.metadata.uid, "distinct uids");
    assert!(a.metadata.creation_timestamp.is_some());
    assert!(rv(&b) > rv(&a), "a global monotonic resourceVersion");
    assert_eq!(a.metadata.generation, Some(1));
    let got = api.get("a").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got.metadata.uid, a.metadata.uid);
    let missing = api_error(api.get("nope").await.err().unwrap_or_else(|| panic!("nope exists")));
    assert_eq!((missing.code, missing.reason.as_str()), (404, "NotFound"));
    assert_eq!(missing.message, "widgets.example.com \"nope\" not found");
    let dup = api_error(
        api.create(&PostParams::default(), &widget("a", json!({"replicas": 1, "minReplicas": 1})))
            .await
            .err()
            .unwrap_or_else(|| panic!("duplicate accepted")),
    );
    assert_eq!((dup.code, dup.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(dup.message, "widgets.example.com \"a\" already exists");
    ns.cleanup().await;
    cluster.stop().await;
}

#[tokio::test]
async fn generation_moves_on_spec_changes_only() {
    let cluster = Cluster::start().await;
    let ns = cluster.namespace("gen").await;
    let api = widget_api(&cluster, &ns.name).await;
    api.create(&PostParams::default(), &widget("w", json!({"replicas": 1, "minReplicas": 1})))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let pp = PatchParams::default();
    let after_status = api
        .patch_status("w", &pp, &Patch::Merge(json!({"status": {"replicas": 1}})))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(after_status.metadata.generation, Some(1), "a status write does not bump generation");
    let after_label = api
        .patch("w", &pp, &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(after_label.metadata.generation, Some(1), "a metadata write does not bump generation");
    let after_spec =
        api.patch("w", &pp, &Patch::Merge(json!({"spec": {"replicas": 2}}))).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(after_spec.metadata.generation, Some(2));
    // Status is a subresource: the main endpoint ignores it, the status endpoint ignores spec.
    let ignored =
        api.patch("w", &pp, &Patch::Merge(json!({"status": {"replicas": 9}}))).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ignored.data["status"]["replicas"], json!(1));
    let spec_ignored = api
        .patch_status("w", &pp, &Patch::Merge(json!({"spec": {"replicas": 7}, "status": {"replicas": 2}})))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(spec_ignored.data["spec"]["replicas"], json!(2));
    assert_eq!(spec_ignored.data["status"]["replicas"], json!(2));
    ns.cleanup().await;
    cluster.stop().await;
}

#[tokio::test]
async fn stale_resource_version_conflicts() {
    let cluster = Cluster::start().await;
    let ns = cluster.namespace("occ").await;
    let api = widget_api(&cluster, &ns.name).await;
    let first = api
        .create(&PostParams::default(), &widget("w1", json!({"replicas": 1, "minReplicas": 1})))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut newer = first.clone();
    newer.data["spec"]["replicas"] = json!(2);
    api.replace("w1", &PostParams::default(), &newer).await.unwrap_or_else(|e| panic!("{e}"));
    let mut stale = first.clone();
    stale.data["spec"]["replicas"] = json!(3);
    let err = api_error(
        api.replace("w1", &PostParams::default(), &stale).await.err().unwrap_or_else(|| panic!("stale write accepted")),
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        err.message,
        "Operation cannot be fulfilled on widgets.example.com \"w1\": the object has been modified; please apply your changes to the latest version and try again"
    );
    ns.cleanup().await;
    cluster.stop().await;
}

#[tokio::test]
async fn invalid_objects_are_rejected_with_causes() {
    let cluster = Cluster::start().await;
    let ns = cluster.namespace("inv").await;
    let api = widget_api(&cluster, &ns.name).await;
    let err = api
        .create(
            &PostParams::default(),
            &widget(
                "bad",
                json!({"replicas": 200, "minReplicas": 300, "mode": "sometimes", "name": "seventeen-chars-x"}),
            ),
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("invalid widget accepted"));
    let err = api_error(err);
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        err.message,
        "Widget.example.com \"bad\" is invalid: [spec.mode: Unsupported value: \"sometimes\": supported values: \"auto\", \"suggest\", spec.name: Too long: may not be more than 10 bytes, spec.replicas: Invalid value: 200: spec.replicas in body should be less than or equal to 100, <nil>: Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation]"
    );
    let cel = api_error(
        api.create(&PostParams::default(), &widget("bad2", json!({"replicas": 2, "minReplicas": 3})))
            .await
            .err()
            .unwrap_or_else(|| panic!("CEL rule not enforced")),
    );
    assert_eq!(
        cel.message,
        "Widget.example.com \"bad2\" is invalid: spec.minReplicas: Invalid value: minReplicas must not exceed replicas"
    );
    // A bound alone does not keep the CEL rules from running (only a wrong type, a missing field,
    // an unsupported value, a value too long or too many items do): both causes, the rule's last.
    let both = api_error(
        api.create(&PostParams::default(), &widget("bad3", json!({"replicas": 200, "minReplicas": 300})))
            .await
            .err()
            .unwrap_or_else(|| panic!("invalid widget accepted")),
    );
    assert_eq!(
        both.message,
        "Widget.example.com \"bad3\" is invalid: [spec.replicas: Invalid value: 200: spec.replicas in body should be less than or equal to 100, spec.minReplicas: Invalid value: minReplicas must not exceed replicas]"
    );
    // Unknown fields: pruned by default, rejected when strict.
    let pruned = api
        .create(&PostParams::default(), &widget("p", json!({"replicas": 1, "minReplicas": 1, "bogus": true})))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(pruned.data["spec"].get("bogus").is_none(), "unknown field pruned");
    let strict = reqwest_like_strict(&cluster, &ns.name).await;
    assert_eq!(strict.0, 400);
    assert_eq!(
        strict.1["message"],
        "Widget in version \"v1\" cannot be handled as a Widget: strict decoding error: unknown field \"spec.bogus\""
    );
    ns.cleanup().await;
    cluster.stop().await;
}

/// POST a widget with an unknown field and `fieldValidation=Strict` through the client's raw
/// request path.
async fn reqwest_like_strict(cluster: &Cluster, ns: &str) -> (u16, Value) {
    let body = serde_json::to_vec(&json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "s"}, "spec": {"replicas": 1, "minReplicas": 1, "bogus": 1}}))
        .unwrap_or_else(|e| panic!("{e}"));
    let request = http::Request::post(format!("/apis/example.com/v1/namespaces/{ns}/widgets?fieldValidation=Strict"))
        .header("content-type", "application/json")
        .body(body)
        .unwrap_or_else(|e| panic!("{e}"));
    match cluster.client.request_text(request).await {
        Ok(text) => (200, serde_json::from_str(&text).unwrap_or(Value::Null)),
        Err(kube::Error::Api(status)) => (status.code, json!({"message": status.message})),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn label_and_field_selectors_and_pagination() {
    let cluster = Cluster::start().await;
    let ns = cluster.namespace("sel").await;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), &ns.name);
    for (name, tier, track) in
        [("a", "web", "stable"), ("b", "web", "canary"), ("c", "db", "stable"), ("d", "cache", "")]
    {
        let mut labels = json!({"tier": tier});
        if !track.is_empty() {
            labels["track"] = json!(track);
        }
        let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))
            .unwrap_or_else(|e| panic!("{e}"));
        api.create(&PostParams::default(), &cm).await.unwrap_or_else(|e| panic!("{e}"));
    }
    let names = |list: kube::core::ObjectList<ConfigMap>| -> Vec<String> {
        let mut v: Vec<String> = list.items.into_iter().filter_map(|c| c.metadata.name).collect();
        v.sort();
        v
    };
    for (selector, expected) in [
        ("tier=web", vec!["a", "b"]),
        ("tier==web,track!=canary", vec!["a"]),
        ("tier in (web,db)", vec!["a", "b", "c"]),
        // `notin` and `!` match objects without the label too: the namespace's kube-root-ca.crt.
        ("tier notin (web,db)", vec!["d", "kube-root-ca.crt"]),
        ("tier,tier notin (web,db)", vec!["d"]),
        ("track", vec!["a", "b", "c"]),
        ("!track", vec!["d", "kube-root-ca.crt"]),
    ] {
        let got = names(
            api.list(&ListParams::default().labels(selector)).await.unwrap_or_else(|e| panic!("{selector}: {e}")),
        );
        assert_eq!(got, expected, "selector {selector}");
    }
    let got = names(api.list(&ListParams::default().fields("metadata.name=c")).await.unwrap_or_else(|e| panic!("{e}")));
    assert_eq!(got, vec!["c"]);
    let got = names(
        api.list(&ListParams::default().fields(&format!("metadata.namespace={}", ns.name)).labels("tier=db"))
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    );
    assert_eq!(got, vec!["c"]);
    // Pagination: 4 items (the namespace's kube-root-ca.crt aside), pages of 3 then 1, with a
    // continue token and remainingItemCount.
    let first = api.list(&ListParams::default().labels("tier").limit(3)).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(first.items.len(), 3);
    assert_eq!(first.metadata.remaining_item_count, Some(1));
    let token = first.metadata.continue_.clone().unwrap_or_else(|| panic!("no continue token"));
    let second = api
        .list(&ListParams::default().labels("tier").limit(3).continue_token(&token))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(second.items.len(), 1);
    assert!(second.metadata.continue_.as_deref().unwrap_or_default().is_empty());
    ns.cleanup().await;
    cluster.stop().await;
}

#[tokio::test]
async fn watch_sees_changes_in_order_with_bookmarks() {
    let cluster = Cluster::start_with(flywheel::sim::SimConfig {
        bookmark_interval: Duration::from_millis(200),
        ..Default::default()
    })
    .await;
    let ns = cluster.namespace("watch").await;
    let api = widget_api(&cluster, &ns.name).await;
    let list = api.list(&ListParams::default()).await.unwrap_or_else(|e| panic!("{e}"));
    let from = list.metadata.resource_version.clone().unwrap_or_default();
    let mut stream = api
        .watch(&WatchParams { bookmarks: true, ..WatchParams::default() }.timeout(10), &from)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .boxed();
    api.create(&PostParams::default(), &widget("w", json!({"replicas": 1, "minReplicas": 1})))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    api.patch("w", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 2}})))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    api.delete("w", &DeleteParams::default()).await.unwrap_or_else(|e| panic!("{e}"));
    let mut seen = Vec::new();
    let mut bookmarks = 0;
    let mut last_rv = 0u64;
    while seen.len() < 3 || (cluster.is_sim() && bookmarks == 0) {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap_or_else(|_| panic!("watch stalled after {seen:?}"));
        match event {
            Some(Ok(WatchEvent::Added(o))) => {
                last_rv = rv(&o).max(last_rv);
                seen.push("ADDED")
            }
            Some(Ok(WatchEvent::Modified(o))) => {
                assert!(rv(&o) > last_rv);
                last_rv = rv(&o);
                seen.push("MODIFIED")
            }
            Some(Ok(WatchEvent::Deleted(o))) => {
                assert!(rv(&o) > last_rv);
                seen.push("DELETED")
            }
            Some(Ok(WatchEvent::Bookmark(_))) => bookmarks += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, vec!["ADDED", "MODIFIED", "DELETED"]);
    ns.cleanup().await;
    cluster.stop().await;
}

#[tokio::test]
async fn watch_ends_at_its_timeout() {
    let cluster = Cluster::start().await;
    let ns = cluster.namespace("wto").await;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), &ns.name);
    let list = api.list(&ListParams::default()).await.unwrap_or_else(|e| panic!("{e}"));
    let stream = api
        .watch(&WatchParams::default().timeout(1), list.metadata.resource_version.as_deref().unwrap_or("0"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let ended = tokio::time::timeout(Duration::from_secs(10), stream.boxed().collect::<Vec<_>>()).await;
    assert!(ended.is_ok(), "the server closes a watch after timeoutSeconds");
    ns.cleanup().await;
    cluster.stop().await;
}

#[tokio::test]
async fn watch_from_a_compacted_resource_version_is_gone() {
    let cluster = Cluster::start().await;
    let ns = cluster.namespace("gone").await;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), &ns.name);
    if let Some(sim) = cluster.sim.as_ref() {
        sim.core().compact();
    }
    let mut stream = api.watch(&WatchParams::default(), "1").await.unwrap_or_else(|e| panic!("{e}")).boxed();
    let event =
        tokio::time::timeout(Duration::from_secs(10), stream.next()).await.unwrap_or_else(|_| panic!("no event"));
    match event {
        Some(Ok(WatchEvent::Error(e))) => {
            assert_eq!((e.code, e.reason.as_str()), (410, "Expired"));
            assert!(e.message.starts_with("too old resource version: 1 ("), "{}", e.message);
        }
        other => panic!("expected an ERROR event with 410, got {other:?}"),
    }
    ns.cleanup().await;
    cluster.stop().await;
}

#[tokio::test]
async fn merge_json_and_strategic_patches() {
    let cluster = Cluster::start().await;
    let ns = cluster.namespace("patch").await;
    let api: Api<Deployment> = Api::namespaced(cluster.client.clone(), &ns.name);
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [
            {"name": "app", "image": "app:1", "env": [{"name": "A", "value": "1"}]},
            {"name": "side", "image": "side:1"}
        ]}}}
    })).unwrap_or_else(|e| panic!("{e}"));
    api.create(&PostParams::default(), &d).await.unwrap_or_else(|e| panic!("{e}"));
    // Strategic merge: containers merge by name, env by name.
    let patched = api
        .patch("web", &PatchParams::default(), &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "app:2", "env": [{"name": "B", "value": "2"}]}]}}}})))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let containers = patched.spec.and_then(|s| s.template.spec).map(|s| s.containers).unwrap_or_default();
    assert_eq!(containers.len(), 2, "strategic merge keeps the sidecar");
    assert_eq!(containers[0].image.as_deref(), Some("app:2"));
    let env: Vec<String> = containers[0].env.clone().unwrap_or_default().into_iter().map(|e| e.name).collect();
    // strategicpatch.mergeSlice: an item new to a merge-keyed list goes before the live ones.
    assert_eq!(env, vec!["B", "A"]);
    // With `$setElementOrder` (what client-side `kubectl apply` sends) the directive decides.
    let ordered = api
        .patch("web", &PatchParams::default(), &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [{"name": "app",
            "$setElementOrder/env": [{"name": "A"}, {"name": "B"}, {"name": "C"}], "env": [{"name": "C", "value": "3"}]}]}}}})))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let containers = ordered.spec.and_then(|s| s.template.spec).map(|s| s.containers).unwrap_or_default();
    let env: Vec<String> = containers[0].env.clone().unwrap_or_default().into_iter().map(|e| e.name).collect();
    assert_eq!(env, vec!["A", "B", "C"]);
    // Merge patch: lists replace; null deletes.
    let merged = api
        .patch("web", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"a": "1", "b": "2"}}})))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(merged.metadata.labels.as_ref().map(|l| l.len()), Some(2));
    let merged = api
        .patch("web", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"a": null}}})))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        merged.metadata.labels.as_ref().map(|l| l.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["b".to_string()])
    );
    // JSON patch, including a failing test op.
    let jp: json_patch::Patch = serde_json::from_value(json!([{"op": "replace", "path": "/spec/replicas", "value": 0}, {"op": "add", "path": "/metadata/labels/c", "value": "3"}])).unwrap_or_else(|e| panic!("{e}"));
    let patched =
        api.patch("web", &PatchParams::default(), &Patch::<()>::Json(jp)).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(patched.metadata.labels.as_ref().and_then(|l| l.get("c")).map(String::as_str), Some("3"));
    let failing: json_patch::Patch =
        serde_json::from_value(json!([{"op": "test", "path": "/spec/replicas", "value": 5}]))
            .unwrap_or_else(|e| panic!("{e}"));
    let err = api
        .patch("web", &PatchParams::default(), &Patch::<()>::Json(failing))
        .await
        .err()
        .unwrap_or_else(|| panic!("failed test op accepted"));
    assert!(matches!(api_error(err).code, 422 | 500), "a failed test op is rejected");
    ns.cleanup().await;
    cluster.stop().await;
}

#[tokio::test]
async fn server_side_apply_ownership_conflicts_and_removal() {
    let cluster = Cluster::start().await;
    let ns = cluster.namespace("ssa").await;
    let api = widget_api(&cluster, &ns.name).await;
    let apply = |manager: &'static str, force: bool| {
        let mut pp = PatchParams::apply(manager);
        pp.force = force;
        pp
    };
    let w = |spec: Value| json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w2"}, "spec": spec});
    api.patch("w2", &apply("alice", false), &Patch::Apply(w(json!({"replicas": 2, "minReplicas": 1, "mode": "auto"}))))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // bob changes a field alice owns: 409 with the field, unless forced.
    let err = api_error(
        api.patch("w2", &apply("bob", false), &Patch::Apply(w(json!({"replicas": 5, "minReplicas": 1}))))
            .await
            .err()
            .unwrap_or_else(|| panic!("conflict not detected")),
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    assert_eq!(err.message, "Apply failed with 1 conflict: conflict with \"alice\": .spec.replicas");
    let forced = api
        .patch("w2", &apply("bob", true), &Patch::Apply(w(json!({"replicas": 5, "minReplicas": 1}))))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let owners = |o: &DynamicObject| -> Vec<(String, Value)> {
        o.metadata
            .managed_fields
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|m| (m.manager.unwrap_or_default(), serde_json::to_value(m.fields_v1).unwrap_or(Value::Null)))
            .collect()
    };
    assert_eq!(
        owners(&forced),
        vec![
            ("alice".to_string(), json!({"f:spec": {"f:minReplicas": {}, "f:mode": {}}})),
            ("bob".to_string(), json!({"f:spec": {"f:minReplicas": {}, "f:replicas": {}}})),
        ]
    );
    // bob stops applying minReplicas: alice still owns it, so it stays.
    let kept = api
        .patch("w2", &apply("bob", false), &Patch::Apply(w(json!({"replicas": 5}))))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(kept.data["spec"]["minReplicas"], json!(1));
    // alice stops applying mode, which she alone owns: it is removed; minReplicas stays hers.
    let removed = api
        .patch("w2", &apply("alice", false), &Patch::Apply(w(json!({"minReplicas": 1}))))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(removed.data["spec"].get("mode").is_none(), "{:?}", removed.data);
    assert_eq!(removed.data["spec"]["replicas"], json!(5));
    assert_eq!(removed.data["spec"]["minReplicas"], json!(1));
    ns.cleanup().await;
    cluster.stop().await;
}

#[tokio::test]
async fn scale_subresource_of_custom_and_builtin_resources() {
    let cluster = Cluster::start().await;
    let ns = cluster.namespace("scale").await;
    cluster.install_crds().await;
    let mds: Api<ModelDeployment> = Api::namespaced(cluster.client.clone(), &ns.name);
    let mut md: ModelDeployment =
        serde_yaml::from_str(include_str!("../config/samples/modeldeployment.yaml")).unwrap_or_else(|e| panic!("{e}"));
    md.spec.replicas = Some(2);
    mds.create(&PostParams::default(), &md).await.unwrap_or_else(|e| panic!("{e}"));
    let scale = mds.get_scale("support-chat").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(2));
    mds.patch_scale("support-chat", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 3}})))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let after = mds.get("support-chat").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(after.spec.replicas, Some(3));
    assert_eq!(after.metadata.generation, Some(2));
    let deploys: Api<Deployment> = Api::namespaced(cluster.client.clone(), &ns.name);
    let d: Deployment = serde_json::from_value(json!({"metadata": {"name": "d"}, "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "d"}}, "template": {"metadata": {"labels": {"app": "d"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}})).unwrap_or_else(|e| panic!("{e}"));
    deploys.create(&PostParams::default(), &d).await.unwrap_or_else(|e| panic!("{e}"));
    let scale = deploys.get_scale("d").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(scale.status.and_then(|s| s.selector).as_deref(), Some("app=d"));
    ns.cleanup().await;
    cluster.stop().await;
}

#[tokio::test]
async fn finalizers_hold_deletion_until_removed() {
    let cluster = Cluster::start().await;
    let ns = cluster.namespace("fin").await;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), &ns.name);
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "held", "finalizers": ["flywheel.dev/test"]}}))
            .unwrap_or_else(|e| panic!("{e}"));
    api.create(&PostParams::default(), &cm).await.unwrap_or_else(|e| panic!("{e}"));
    api.delete("held", &DeleteParams::default()).await.unwrap_or_else(|e| panic!("{e}"));
    let held = api.get("held").await.unwrap_or_else(|e| panic!("deleted despite its finalizer: {e}"));
    assert!(held.metadata.deletion_timestamp.is_some());
    let err = api_error(
        api.patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["flywheel.dev/test", "another"]}})),
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("new finalizer accepted while deleting")),
    );
    // ValidateObjectMetaUpdate: 422 Invalid, a Forbidden cause on metadata.finalizers.
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
    let expected = "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{\"another\"}";
    assert_eq!(err.message, format!("ConfigMap \"held\" is invalid: metadata.finalizers: {expected}"));
    assert_eq!(
        err.causes(),
        vec![("FieldValueForbidden".to_string(), "metadata.finalizers".to_string(), expected.to_string())]
    );
    api.patch("held", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}})))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let gone = eventually(Duration::from_secs(10), || {
        let api = api.clone();
        async move { api.get_opt("held").await.ok().and_then(|o| o.is_none().then_some(())) }
    })
    .await;
    assert!(gone.is_some(), "removed once its last finalizer is gone");
    ns.cleanup().await;
    cluster.stop().await;
}

fn owned_config_map(name: &str, owner: &ConfigMap) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name, "ownerReferences": [{
        "apiVersion": "v1", "kind": "ConfigMap", "name": owner.metadata.name, "uid": owner.metadata.uid, "controller": true, "blockOwnerDeletion": true
    }]}})).unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn owner_references_garbage_collect_dependents() {
    let cluster = Cluster::start().await;
    let ns = cluster.namespace("gc").await;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), &ns.name);
    let mk = |name: &str| {
        serde_json::from_value::<ConfigMap>(json!({"metadata": {"name": name}})).unwrap_or_else(|e| panic!("{e}"))
    };
    for (policy, owner_name) in [("Background", "bg"), ("Foreground", "fg"), ("Orphan", "or")] {
        let owner = api.create(&PostParams::default(), &mk(owner_name)).await.unwrap_or_else(|e| panic!("{e}"));
        let dep_name = format!("{owner_name}-dep");
        api.create(&PostParams::default(), &owned_config_map(&dep_name, &owner))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let dp = match policy {
            "Foreground" => DeleteParams::foreground(),
            "Orphan" => DeleteParams::orphan(),
            _ => DeleteParams::background(),
        };
        api.delete(owner_name, &dp).await.unwrap_or_else(|e| panic!("{e}"));
        let settled = eventually(Duration::from_secs(20), || {
            let api = api.clone();
            let dep_name = dep_name.clone();
            let owner_name = owner_name.to_string();
            async move {
                let owner_gone = api.get_opt(&owner_name).await.ok()?.is_none();
                let dep = api.get_opt(&dep_name).await.ok()?;
                match policy {
                    "Orphan" => (owner_gone
                        && dep
                            .as_ref()
                            .is_some_and(|d| d.metadata.owner_references.as_ref().is_none_or(Vec::is_empty)))
                    .then_some(()),
                    _ => (owner_gone && dep.is_none()).then_some(()),
                }
            }
        })
        .await;
        assert!(settled.is_some(), "{policy} deletion did not settle");
    }
    ns.cleanup().await;
    cluster.stop().await;
}

#[tokio::test]
async fn deleting_a_namespace_deletes_its_contents() {
    let cluster = Cluster::start().await;
    let ns = cluster.namespace("nsdel").await;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), &ns.name);
    for n in ["a", "b"] {
        let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": n}})).unwrap_or_else(|e| panic!("{e}"));
        api.create(&PostParams::default(), &cm).await.unwrap_or_else(|e| panic!("{e}"));
    }
    let namespaces: Api<Namespace> = Api::all(cluster.client.clone());
    namespaces.delete(&ns.name, &DeleteParams::default()).await.unwrap_or_else(|e| panic!("{e}"));
    let terminating = namespaces.get_opt(&ns.name).await.unwrap_or_else(|e| panic!("{e}"));
    if let Some(n) = terminating {
        assert_eq!(n.status.and_then(|s| s.phase).as_deref(), Some("Terminating"));
    }
    let gone = eventually(Duration::from_secs(60), || {
        let namespaces = namespaces.clone();
        let name = ns.name.clone();
        async move { namespaces.get_opt(&name).await.ok().and_then(|o| o.is_none().then_some(())) }
    })
    .await;
    assert!(gone.is_some(), "namespace never went away");
    let left = api.list(&ListParams::default()).await.map(|l| l.items.len()).unwrap_or(0);
    assert_eq!(left, 0);
    cluster.stop().await;
}

#[tokio::test]
async fn crd_registration_serves_the_new_resource_with_printer_columns() {
    let cluster = Cluster::start().await;
    let ns = cluster.namespace("crd").await;
    let api = widget_api(&cluster, &ns.name).await;
    api.create(&PostParams::default(), &widget("w1", json!({"replicas": 3, "minReplicas": 1})))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let request = http::Request::get(format!("/apis/example.com/v1/namespaces/{}/widgets?limit=500", ns.name))
        .header("accept", "application/json;as=Table;v=v1;g=meta.k8s.io,application/json")
        .body(Vec::new())
        .unwrap_or_else(|e| panic!("{e}"));
    let table: Value =
        serde_json::from_str(&cluster.client.request_text(request).await.unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(table["kind"], "Table");
    let columns: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .map(|c| c.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(columns, vec!["Name", "Replicas", "Ready", "Age"]);
    assert_eq!(table["rows"][0]["cells"][0], "w1");
    assert_eq!(table["rows"][0]["cells"][1], 3);
    assert_eq!(table["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    ns.cleanup().await;
    cluster.stop().await;
}

#[tokio::test]
async fn deployments_get_ready_pods_and_status() {
    let cluster = Cluster::start().await;
    if cluster.sim_only("simulated kubelet").is_none() {
        return;
    }
    let ns = cluster.namespace("deploy").await;
    let api: Api<Deployment> = Api::namespaced(cluster.client.clone(), &ns.name);
    let d: Deployment = serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "example/web"}]}}}})).unwrap_or_else(|e| panic!("{e}"));
    api.create(&PostParams::default(), &d).await.unwrap_or_else(|e| panic!("{e}"));
    let ready = eventually(Duration::from_secs(20), || {
        let api = api.clone();
        async move {
            let s = api.get("web").await.ok()?.status?;
            (s.ready_replicas == Some(2) && s.available_replicas == Some(2) && s.observed_generation == Some(1))
                .then_some(s)
        }
    })
    .await
    .unwrap_or_else(|| panic!("deployment never became ready"));
    let available =
        ready.conditions.unwrap_or_default().into_iter().find(|c| c.type_ == "Available").map(|c| (c.status, c.reason));
    assert_eq!(available, Some(("True".into(), Some("MinimumReplicasAvailable".into()))));
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    let list = pods.list(&ListParams::default().labels("app=web")).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(list.items.len(), 2);
    assert!(list.items.iter().all(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")));
    // A template change rolls the pods.
    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "example/web:2"}]}}}}),
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let rolled = eventually(Duration::from_secs(20), || {
        let pods = pods.clone();
        async move {
            let list = pods.list(&ListParams::default().labels("app=web")).await.ok()?;
            let all_new = list.items.len() == 2
                && list.items.iter().all(|p| {
                    p.spec.as_ref().is_some_and(|s| s.containers[0].image.as_deref() == Some("example/web:2"))
                });
            all_new.then_some(())
        }
    })
    .await;
    assert!(rolled.is_some(), "pods were not replaced after a template change");
    ns.cleanup().await;
    cluster.stop().await;
}

fn job(name: &str, annotations: Value, pod_failure_policy: Value, backoff: i32) -> Job {
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": {
        "backoffLimit": backoff,
        "podFailurePolicy": pod_failure_policy,
        "template": {"metadata": {"annotations": annotations}, "spec": {"restartPolicy": "Never", "containers": [{"name": "trainer", "image": "example/trainer"}]}}
    }}))
    .unwrap_or_else(|e| panic!("{e}"))
}

async fn finished(api: &Api<Job>, name: &str) -> Job {
    eventually(Duration::from_secs(30), || {
        let api = api.clone();
        let name = name.to_string();
        async move {
            let j = api.get(&name).await.ok()?;
            let done = j
                .status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True");
            done.then_some(j)
        }
    })
    .await
    .unwrap_or_else(|| panic!("job {name} never finished"))
}

#[tokio::test]
async fn jobs_follow_the_sim_annotations() {
    let cluster = Cluster::start().await;
    if cluster.sim_only("simulated kubelet (or a stand-in kubelet on a real control plane)").is_none() {
        return;
    }
    let ns = cluster.namespace("jobs").await;
    let api: Api<Job> = Api::namespaced(cluster.client.clone(), &ns.name);
    let policy = json!({"rules": [{"action": "FailJob", "onExitCodes": {"operator": "In", "values": [42]}}, {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]});
    api.create(
        &PostParams::default(),
        &job(
            "ok",
            json!({"sim.flywheel.dev/duration": "0.2", "sim.flywheel.dev/termination-message": "{\"version\":\"v2\"}"}),
            policy.clone(),
            2,
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    api.create(&PostParams::default(), &job("badconf", json!({"sim.flywheel.dev/duration": "0.1", "sim.flywheel.dev/outcome": "fail", "sim.flywheel.dev/exit-code": "42"}), policy.clone(), 3)).await.unwrap_or_else(|e| panic!("{e}"));
    api.create(
        &PostParams::default(),
        &job(
            "flaky",
            json!({"sim.flywheel.dev/duration": "0.1", "sim.flywheel.dev/outcome": "fail"}),
            policy.clone(),
            1,
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let ok = finished(&api, "ok").await;
    let types: Vec<String> = ok
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.type_)
        .collect();
    assert_eq!(types, vec!["SuccessCriteriaMet", "Complete"]);
    assert_eq!(ok.status.as_ref().and_then(|s| s.succeeded), Some(1));
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    let pod = pods
        .list(&ListParams::default().labels("job-name=ok"))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .items
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no pod"));
    let terminated = pod
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|c| c.into_iter().next())
        .and_then(|c| c.state)
        .and_then(|s| s.terminated)
        .unwrap_or_else(|| panic!("no terminated state"));
    assert_eq!(terminated.exit_code, 0);
    assert_eq!(terminated.message.as_deref(), Some("{\"version\":\"v2\"}"));
    let bad = finished(&api, "badconf").await;
    let failed = bad
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Failed")
        .and_then(|c| c.reason);
    assert_eq!(failed.as_deref(), Some("PodFailurePolicy"), "exit code 42 fails the Job at once");
    let flaky = finished(&api, "flaky").await;
    let status = flaky.status.unwrap_or_default();
    assert_eq!(status.failed, Some(2), "backoffLimit 1: two attempts");
    let reason = status.conditions.unwrap_or_default().into_iter().find(|c| c.type_ == "Failed").and_then(|c| c.reason);
    assert_eq!(reason.as_deref(), Some("BackoffLimitExceeded"));
    ns.cleanup().await;
    cluster.stop().await;
}

#[tokio::test]
async fn unauthenticated_requests_are_refused() {
    let cluster = Cluster::start().await;
    let Some(sim) = cluster.sim_only("knows the server's URL without credentials") else { return };
    let mut kubeconfig = kube::config::Kubeconfig::from_yaml(&sim.kubeconfig_yaml()).unwrap_or_else(|e| panic!("{e}"));
    for auth in &mut kubeconfig.auth_infos {
        if let Some(info) = auth.auth_info.as_mut() {
            info.token = Some("wrong".to_string().into());
        }
    }
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.unwrap_or_else(|e| panic!("{e}"));
    let client = kube::Client::try_from(config).unwrap_or_else(|e| panic!("{e}"));
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let err = api_error(api.list(&ListParams::default()).await.err().unwrap_or_else(|| panic!("wrong token accepted")));
    assert_eq!(err.code, 401);
    cluster.stop().await;
}

#[tokio::test]
async fn discovery_lists_builtin_and_custom_resources() {
    let cluster = Cluster::start().await;
    cluster.install_crds().await;
    let discovery = kube::Discovery::new(cluster.client.clone()).run().await.unwrap_or_else(|e| panic!("{e}"));
    let mut found = Vec::new();
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            found.push((
                ar.group.clone(),
                ar.kind.clone(),
                caps.subresources.iter().map(|(s, _)| s.plural.clone()).collect::<Vec<_>>(),
            ));
        }
    }
    for (group, kind) in [
        ("", "Pod"),
        ("apps", "Deployment"),
        ("batch", "Job"),
        ("coordination.k8s.io", "Lease"),
        ("policy", "PodDisruptionBudget"),
        ("events.k8s.io", "Event"),
        ("flywheel.dev", "ModelDeployment"),
    ] {
        assert!(found.iter().any(|(g, k, _)| g == group && k == kind), "{group}/{kind} not discovered");
    }
    let md = found.iter().find(|(_, k, _)| k == "ModelDeployment").map(|(_, _, s)| s.clone()).unwrap_or_default();
    assert!(md.contains(&"status".to_string()) && md.contains(&"scale".to_string()), "{md:?}");
    cluster.stop().await;
}

#[tokio::test]
async fn watcher_streams_through_kube_runtime() {
    let cluster = Cluster::start().await;
    let ns = cluster.namespace("rt").await;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), &ns.name);
    let mut stream = kube::runtime::watcher(api.clone(), kube::runtime::watcher::Config::default()).boxed();
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap_or_else(|e| panic!("{e}"));
    api.create(&PostParams::default(), &cm).await.unwrap_or_else(|e| panic!("{e}"));
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = stream.try_next().await.unwrap_or_else(|e| panic!("{e}")) {
            if let kube::runtime::watcher::Event::Apply(o) | kube::runtime::watcher::Event::InitApply(o) = event
                && o.metadata.name.as_deref() == Some("x")
            {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(seen, Ok(true));
    ns.cleanup().await;
    cluster.stop().await;
}

#[tokio::test]
async fn pods_can_be_scripted_in_process() {
    use flywheel::sim::{Outcome, PodBehavior, SimConfig, WorkloadConfig};
    let script: flywheel::sim::PodScript = std::sync::Arc::new(|pod: &Value| {
        let scripted = pod.pointer("/metadata/labels/scripted").is_some();
        scripted.then(|| PodBehavior {
            ready_after: Duration::from_millis(10),
            finish: Some((Duration::from_millis(50), Outcome::Disrupted, String::new())),
        })
    });
    let config = SimConfig {
        workloads: WorkloadConfig { script: Some(script), ..WorkloadConfig::default() },
        ..SimConfig::default()
    };
    let cluster = Cluster::start_with(config).await;
    if cluster.sim_only("in-process pod scripting").is_none() {
        return;
    }
    let ns = cluster.namespace("script").await;
    let api: Api<Job> = Api::namespaced(cluster.client.clone(), &ns.name);
    // A preempted pod does not count against backoffLimit 0 when the policy ignores disruptions;
    // the script preempts every attempt, so the Job keeps retrying without failing.
    let policy =
        json!({"rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]});
    let mut j = job("preempted", json!({}), policy, 0);
    if let Some(t) = j.spec.as_mut().and_then(|s| s.template.metadata.as_mut()) {
        t.labels = Some([("scripted".to_string(), "yes".to_string())].into());
    }
    api.create(&PostParams::default(), &j).await.unwrap_or_else(|e| panic!("{e}"));
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    let retried = eventually(Duration::from_secs(20), || {
        let pods = pods.clone();
        async move {
            let list = pods.list(&ListParams::default().labels("job-name=preempted")).await.ok()?;
            let disrupted = list
                .items
                .iter()
                .filter(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "DisruptionTarget"))
                })
                .count();
            (disrupted >= 2).then_some(())
        }
    })
    .await;
    assert!(retried.is_some(), "a disrupted attempt is retried without counting");
    let status = api.get("preempted").await.unwrap_or_else(|e| panic!("{e}")).status.unwrap_or_default();
    assert!(
        status.conditions.unwrap_or_default().iter().all(|c| c.type_ != "Failed"),
        "backoffLimit 0 not spent by preemption"
    );
    ns.cleanup().await;
    cluster.stop().await;
}

#[tokio::test]
async fn watch_with_a_selector_sees_objects_enter_and_leave_it() {
    let cluster = Cluster::start().await;
    let ns = cluster.namespace("wsel").await;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), &ns.name);
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "m", "labels": {"track": "canary"}}}))
        .unwrap_or_else(|e| panic!("{e}"));
    let created = api.create(&PostParams::default(), &cm).await.unwrap_or_else(|e| panic!("{e}"));
    let from = created.metadata.resource_version.clone().unwrap_or_default();
    let mut stream = api
        .watch(&WatchParams::default().labels("track=stable").timeout(10), &from)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .boxed();
    let pp = PatchParams::default();
    api.patch("m", &pp, &Patch::Merge(json!({"metadata": {"labels": {"track": "stable"}}})))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    api.patch("m", &pp, &Patch::Merge(json!({"data": {"k": "v"}}))).await.unwrap_or_else(|e| panic!("{e}"));
    api.patch("m", &pp, &Patch::Merge(json!({"metadata": {"labels": {"track": "canary"}}})))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap_or_else(|_| panic!("stalled after {seen:?}"))
        {
            Some(Ok(WatchEvent::Added(_))) => seen.push("ADDED"),
            Some(Ok(WatchEvent::Modified(_))) => seen.push("MODIFIED"),
            Some(Ok(WatchEvent::Deleted(_))) => seen.push("DELETED"),
            Some(Ok(WatchEvent::Bookmark(_))) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, vec!["ADDED", "MODIFIED", "DELETED"]);
    ns.cleanup().await;
    cluster.stop().await;
}

#[tokio::test]
async fn gateway_api_httproutes_work_once_their_crd_is_applied() {
    let cluster = Cluster::start().await;
    let ns = cluster.namespace("route").await;
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
        "httproutes",
    );
    let routes: Api<DynamicObject> = Api::namespaced_with(cluster.client.clone(), &ns.name, &ar);
    if cluster.is_sim() {
        let before = routes.list(&ListParams::default()).await;
        assert!(before.is_err(), "HTTPRoutes are not served before their CRD exists");
        let crds: Api<CustomResourceDefinition> = Api::all(cluster.client.clone());
        let crd: CustomResourceDefinition =
            serde_yaml::from_str(include_str!("fixtures/httproute-crd.yaml")).unwrap_or_else(|e| panic!("{e}"));
        crds.patch(
            "httproutes.gateway.networking.k8s.io",
            &PatchParams::apply("conformance").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }
    // Served once the API server has accepted the CRD's names (not at once).
    eventually(Duration::from_secs(30), || {
        let routes = routes.clone();
        async move { routes.list(&ListParams::default()).await.ok().map(|_| ()) }
    })
    .await
    .unwrap_or_else(|| panic!("HTTPRoutes never served"));
    let route: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "chat"},
        "spec": {"parentRefs": [{"name": "gw"}], "rules": [{"backendRefs": [{"name": "chat-stable", "port": 80, "weight": 90}, {"name": "chat-canary", "port": 80}]}]}
    })).unwrap_or_else(|e| panic!("{e}"));
    let created = routes.create(&PostParams::default(), &route).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(created.data["spec"]["rules"][0]["backendRefs"][1]["weight"], json!(1), "schema default applied");
    let patched = routes
        .patch("chat", &PatchParams::apply("flywheel").force(), &Patch::Apply(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "chat"},
            "spec": {"parentRefs": [{"name": "gw"}], "rules": [{"backendRefs": [{"name": "chat-stable", "port": 80, "weight": 50}, {"name": "chat-canary", "port": 80, "weight": 50}]}]}
        })))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(patched.data["spec"]["rules"][0]["backendRefs"][0]["weight"], json!(50));
    ns.cleanup().await;
    cluster.stop().await;
}

#[tokio::test]
async fn delete_preconditions_guard_against_stale_deletes() {
    let cluster = Cluster::start().await;
    let ns = cluster.namespace("precond").await;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), &ns.name);
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "p"}})).unwrap_or_else(|e| panic!("{e}"));
    let created = api.create(&PostParams::default(), &cm).await.unwrap_or_else(|e| panic!("{e}"));
    let stale = DeleteParams {
        preconditions: Some(kube::api::Preconditions { uid: None, resource_version: Some("1".into()) }),
        ..DeleteParams::default()
    };
    let err = api_error(api.delete("p", &stale).await.err().unwrap_or_else(|| panic!("stale delete accepted")));
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    // rest.BeforeDelete names the object by its kind, in the message and in details.kind.
    let current_rv = created.metadata.resource_version.clone().unwrap_or_default();
    assert_eq!(
        err.message,
        format!(
            "Operation cannot be fulfilled on ConfigMap \"p\": the ResourceVersion in the precondition (1) does not match the ResourceVersion in record ({current_rv}). The object might have been modified"
        )
    );
    assert_eq!(err.details_kind(), "ConfigMap");
    let wrong_uid = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some("not-it".into()),
            resource_version: Some("1".into()),
        }),
        ..DeleteParams::default()
    };
    let err = api_error(api.delete("p", &wrong_uid).await.err().unwrap_or_else(|| panic!("wrong uid accepted")));
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    let uid = created.metadata.uid.clone().unwrap_or_default();
    assert_eq!(
        err.message,
        format!(
            "Operation cannot be fulfilled on ConfigMap \"p\": the UID in the precondition (not-it) does not match the UID in record ({uid}). The object might have been deleted and then recreated"
        ),
        "the uid is checked before the resourceVersion"
    );
    let right = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: created.metadata.uid.clone(),
            resource_version: created.metadata.resource_version.clone(),
        }),
        ..DeleteParams::default()
    };
    api.delete("p", &right).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(api.get_opt("p").await.unwrap_or_else(|e| panic!("{e}")).is_none());
    ns.cleanup().await;
    cluster.stop().await;
}

/// The controller-manager's root-ca-cert publisher: every namespace holds `kube-root-ca.crt`
/// with the cluster's CA; deleted or changed, it comes back.
#[tokio::test]
async fn every_namespace_holds_the_root_ca_config_map() {
    let cluster = Cluster::start().await;
    let ns = cluster.namespace("rootca").await;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), &ns.name);
    let published = |api: Api<ConfigMap>, not_uid: Option<String>| async move {
        eventually(Duration::from_secs(30), || {
            let api = api.clone();
            let not_uid = not_uid.clone();
            async move {
                let cm = api.get_opt("kube-root-ca.crt").await.ok()??;
                let fresh = not_uid.is_none_or(|u| cm.metadata.uid.as_deref() != Some(u.as_str()));
                let keys: Vec<String> = cm.data.clone().unwrap_or_default().into_keys().collect();
                (fresh && keys == ["ca.crt"]).then_some(cm)
            }
        })
        .await
        .unwrap_or_else(|| panic!("kube-root-ca.crt not published"))
    };
    let cm = published(api.clone(), None).await;
    let pem = cm.data.as_ref().and_then(|d| d.get("ca.crt")).cloned().unwrap_or_default();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    if let Some(sim) = cluster.sim.as_ref() {
        assert_eq!(pem, sim.ca_pem(), "the CA the server's certificate chains to");
    }
    let description = cm.metadata.annotations.as_ref().and_then(|a| a.get("kubernetes.io/description")).cloned();
    assert_eq!(
        description.as_deref(),
        Some(
            "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."
        )
    );
    // The namespaces that exist from the start have it too.
    let default: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), "default");
    assert!(published(default, None).await.data.is_some());
    // Deleted: recreated (a new object).
    api.delete("kube-root-ca.crt", &DeleteParams::default()).await.unwrap_or_else(|e| panic!("{e}"));
    let recreated = published(api.clone(), cm.metadata.uid.clone()).await;
    assert_eq!(recreated.data.as_ref().and_then(|d| d.get("ca.crt")), Some(&pem));
    // Changed: put back.
    api.patch("kube-root-ca.crt", &PatchParams::default(), &Patch::Merge(json!({"data": {"extra": "x"}})))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    published(api.clone(), None).await;
    ns.cleanup().await;
    cluster.stop().await;
}

/// A CRD's names are accepted, then it is established, by controllers of the API server, after
/// its creation: until its names are accepted its resources answer 404.
#[tokio::test]
async fn a_crd_is_served_once_its_names_are_accepted_then_established() {
    let cluster = Cluster::start_with(flywheel::sim::SimConfig {
        crd_establish_delay: Duration::from_millis(1500),
        ..flywheel::sim::SimConfig::default()
    })
    .await;
    let ns = cluster.namespace("establish").await;
    // A group of its own, so that parallel runs on one cluster never conflict on names.
    let tail = ns.name.rsplit('-').next().unwrap_or_default().to_string();
    let group = format!("g{tail}.establish.example.com");
    let name = format!("gadgets.{group}");
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": name},
        "spec": {"group": group, "scope": "Namespaced", "names": {"kind": "Gadget", "plural": "gadgets"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    let crds: Api<CustomResourceDefinition> = Api::all(cluster.client.clone());
    let created = crds.create(&PostParams::default(), &crd).await.unwrap_or_else(|e| panic!("{e}"));
    // The create answer: defaults in spec, a status with the storage version and no condition yet.
    assert_eq!(created.spec.names.singular.as_deref(), Some("gadget"));
    assert_eq!(created.spec.names.list_kind.as_deref(), Some("GadgetList"));
    assert_eq!(created.spec.conversion.as_ref().map(|c| c.strategy.as_str()), Some("None"));
    let status = created.status.clone().unwrap_or_default();
    assert_eq!(status.stored_versions, Some(vec!["v1".to_string()]));
    assert!(status.conditions.unwrap_or_default().is_empty(), "no condition on create");
    assert_eq!(status.accepted_names.map(|n| (n.plural, n.kind)), Some((String::new(), String::new())));
    let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(&group, "v1", "Gadget"), "gadgets");
    let gadgets: Api<DynamicObject> = Api::namespaced_with(cluster.client.clone(), &ns.name, &ar);
    if cluster.sim_only("a CRD establish delay long enough to observe").is_some() {
        let err =
            api_error(gadgets.list(&ListParams::default()).await.err().unwrap_or_else(|| panic!("served at once")));
        assert_eq!(err.code, 404);
    }
    // The conditions as the CRD's watchers see them: NamesAccepted first, then Established.
    let from = created.metadata.resource_version.clone().unwrap_or_default();
    let mut stream = crds
        .watch(&WatchParams::default().fields(&format!("metadata.name={name}")).timeout(30), &from)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .boxed();
    let mut seen: Vec<Vec<(String, String, String)>> = Vec::new();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .unwrap_or_else(|_| panic!("never established: {seen:?}"));
        let Some(Ok(WatchEvent::Modified(crd))) = event else { continue };
        let conditions: Vec<(String, String, String)> = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c.type_ == "NamesAccepted" || c.type_ == "Established")
            .map(|c| (c.type_, c.status, c.reason.unwrap_or_default()))
            .collect();
        let done = conditions.iter().any(|c| c.0 == "Established" && c.1 == "True");
        if seen.last() != Some(&conditions) {
            seen.push(conditions);
        }
        if done {
            break;
        }
    }
    let c = |t: &str, s: &str, r: &str| (t.to_string(), s.to_string(), r.to_string());
    assert_eq!(
        seen,
        vec![
            vec![c("NamesAccepted", "True", "NoConflicts"), c("Established", "False", "Installing")],
            vec![c("NamesAccepted", "True", "NoConflicts"), c("Established", "True", "InitialNamesAccepted")],
        ]
    );
    let listed = gadgets.list(&ListParams::default()).await.unwrap_or_else(|e| panic!("not served: {e}"));
    assert!(listed.items.is_empty());
    let discovered = eventually(Duration::from_secs(30), || {
        let client = cluster.client.clone();
        let group = group.clone();
        async move {
            let discovery = kube::Discovery::new(client).run().await.ok()?;
            discovery.has_group(&group).then_some(())
        }
    })
    .await;
    assert!(discovered.is_some(), "an established CRD is discovered");
    crds.delete(&name, &DeleteParams::default()).await.unwrap_or_else(|e| panic!("{e}"));
    ns.cleanup().await;
    cluster.stop().await;
}

/// The TTL-after-finished controller deletes a finished Job (and its pods) that many seconds
/// after it finished; a Job without a TTL stays.
#[tokio::test]
async fn finished_jobs_go_after_their_ttl() {
    let cluster = Cluster::start().await;
    if cluster.sim_only("simulated kubelet (or a stand-in kubelet on a real control plane)").is_none() {
        return;
    }
    let ns = cluster.namespace("ttl").await;
    let api: Api<Job> = Api::namespaced(cluster.client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    for (name, ttl) in [("now", Some(0)), ("later", Some(1)), ("kept", None)] {
        let mut j = job(name, json!({"sim.flywheel.dev/duration": "0.1"}), json!(null), 0);
        if let Some(spec) = j.spec.as_mut() {
            spec.ttl_seconds_after_finished = ttl;
            spec.pod_failure_policy = None;
        }
        api.create(&PostParams::default(), &j).await.unwrap_or_else(|e| panic!("{e}"));
    }
    let gone = |name: &'static str| {
        let api = api.clone();
        let pods = pods.clone();
        async move {
            eventually(Duration::from_secs(30), || {
                let api = api.clone();
                let pods = pods.clone();
                async move {
                    let job_gone = api.get_opt(name).await.ok()?.is_none();
                    let left = pods.list(&ListParams::default().labels(&format!("job-name={name}"))).await.ok()?;
                    (job_gone && left.items.is_empty()).then_some(())
                }
            })
            .await
            .is_some()
        }
    };
    // ttlSecondsAfterFinished 1: seen finished first, gone (with its pod) a second after.
    let later = finished(&api, "later").await;
    let finished_at = later
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Complete" && c.status == "True")
        .and_then(|c| c.last_transition_time)
        .unwrap_or_else(|| panic!("no Complete condition"));
    assert!(gone("now").await, "a Job with ttlSecondsAfterFinished 0 is deleted once finished");
    assert!(gone("later").await, "a Job with ttlSecondsAfterFinished 1 is deleted");
    let now = k8s_openapi::jiff::Timestamp::now();
    assert!(
        now >= finished_at.0 + k8s_openapi::jiff::SignedDuration::from_secs(1),
        "deleted no earlier than its TTL after it finished"
    );
    let kept = finished(&api, "kept").await;
    assert!(kept.metadata.deletion_timestamp.is_none(), "a Job without a TTL stays");
    ns.cleanup().await;
    cluster.stop().await;
}

/// The disruption controller: PodDisruptionBudget status from the selected pods and the scale of
/// their controllers; a Job among them fails the sync (a Job has no scale subresource).
#[tokio::test]
async fn pod_disruption_budgets_report_allowed_disruptions() {
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    let cluster = Cluster::start().await;
    let ns = cluster.namespace("pdb").await;
    let labels = json!({"app": "pdb-web", "tier": "pdbtest"});
    let container = json!([{"name": "pause", "image": "registry.k8s.io/pause:3.10"}]);
    let d: Deployment = serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": {"replicas": 2,
        "selector": {"matchLabels": {"app": "pdb-web"}},
        "template": {"metadata": {"labels": labels}, "spec": {"containers": container}}}}))
    .unwrap_or_else(|e| panic!("{e}"));
    Api::<Deployment>::namespaced(cluster.client.clone(), &ns.name)
        .create(&PostParams::default(), &d)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let j: Job = serde_json::from_value(json!({"metadata": {"name": "batch"}, "spec": {"template": {
        "metadata": {"labels": {"tier": "pdbtest"}}, "spec": {"restartPolicy": "Never", "containers": container}}}}))
    .unwrap_or_else(|e| panic!("{e}"));
    Api::<Job>::namespaced(cluster.client.clone(), &ns.name)
        .create(&PostParams::default(), &j)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(cluster.client.clone(), &ns.name);
    for (name, selector, budget) in [
        ("mixed", json!({"tier": "pdbtest"}), json!({"maxUnavailable": 1})),
        ("web", json!({"app": "pdb-web"}), json!({"maxUnavailable": 1})),
        ("half", json!({"app": "pdb-web"}), json!({"minAvailable": "50%"})),
        ("three", json!({"app": "pdb-web"}), json!({"minAvailable": 3})),
    ] {
        let mut spec = budget;
        spec["selector"] = json!({"matchLabels": selector});
        let pdb: PodDisruptionBudget =
            serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap_or_else(|e| panic!("{e}"));
        pdbs.create(&PostParams::default(), &pdb).await.unwrap_or_else(|e| panic!("{e}"));
    }
    // (disruptionsAllowed, currentHealthy, desiredHealthy, expectedPods, observedGeneration,
    //  condition status, reason, message)
    type Seen = (i32, i32, i32, i32, Option<i64>, String, String, String);
    let read = |pdb: PodDisruptionBudget| -> Option<Seen> {
        let status = pdb.status?;
        let c = status.conditions.clone()?.into_iter().find(|c| c.type_ == "DisruptionAllowed")?;
        Some((
            status.disruptions_allowed,
            status.current_healthy,
            status.desired_healthy,
            status.expected_pods,
            status.observed_generation,
            c.status,
            c.reason,
            c.message,
        ))
    };
    let settled = |name: &'static str, expected: Seen| {
        let pdbs = pdbs.clone();
        async move {
            let got = eventually(Duration::from_secs(60), || {
                let pdbs = pdbs.clone();
                let expected = expected.clone();
                async move { (read(pdbs.get(name).await.ok()?)? == expected).then_some(()) }
            })
            .await;
            if got.is_none() {
                let last = pdbs.get(name).await.ok().and_then(read);
                panic!("{name}: {last:?}, expected {expected:?}");
            }
        }
    };
    let s = |v: &str| v.to_string();
    settled("web", (1, 2, 1, 2, Some(1), s("True"), s("SufficientPods"), s(""))).await;
    settled("half", (1, 2, 1, 2, Some(1), s("True"), s("SufficientPods"), s(""))).await;
    settled("three", (0, 2, 3, 2, Some(1), s("False"), s("InsufficientPods"), s(""))).await;
    // The failed sync leaves the counts as they were (they depend on what the controller saw
    // before the Job's pod): disruptionsAllowed 0 and the condition are what it sets.
    let failed = eventually(Duration::from_secs(60), || {
        let pdbs = pdbs.clone();
        async move {
            let (allowed, .., status, reason, message) = read(pdbs.get("mixed").await.ok()?)?;
            (allowed == 0 && reason == "SyncFailed").then_some((status, message))
        }
    })
    .await
    .unwrap_or_else(|| panic!("the PDB selecting a Job's pod never failed its sync"));
    assert_eq!(failed, (s("False"), s("jobs.batch does not implement the scale subresource")));
    ns.cleanup().await;
    cluster.stop().await;
}

/// Protobuf bodies: custom resources take JSON and YAML only (415); a body that is not a
/// Kubernetes protobuf object is a 400.
#[tokio::test]
async fn protobuf_bodies_of_custom_resources_are_unsupported() {
    let cluster = Cluster::start().await;
    let ns = cluster.namespace("proto").await;
    let _widgets = widget_api(&cluster, &ns.name).await;
    let post = |path: String, body: &[u8]| {
        http::Request::post(path)
            .header("content-type", "application/vnd.kubernetes.protobuf")
            .header("accept", "application/json")
            .body(body.to_vec())
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let envelope = b"k8s\x00\n\x16\n\x0eexample.com/v1\x12\x06Widget\x12\x00";
    let err = cluster
        .client
        .request_text(post(format!("/apis/example.com/v1/namespaces/{}/widgets", ns.name), envelope))
        .await
        .err()
        .unwrap_or_else(|| panic!("a protobuf custom resource was accepted"));
    let err = api_error(err);
    assert_eq!((err.code, err.reason.as_str()), (415, "UnsupportedMediaType"));
    assert!(err.message.starts_with("the body of the request was in an unknown format"), "{}", err.message);
    let err = cluster
        .client
        .request_text(post(format!("/api/v1/namespaces/{}/configmaps", ns.name), b"{\"kind\": \"ConfigMap\"}"))
        .await
        .err()
        .unwrap_or_else(|| panic!("a JSON body sent as protobuf was accepted"));
    assert_eq!(api_error(err).code, 400);
    ns.cleanup().await;
    cluster.stop().await;
}

/// A suspended Job (how Kueue holds a Job until it is admitted, and how it preempts one): no pod,
/// the `Suspended` condition; its active deadline does not run while it waits; resumed, it gets
/// a pod and a fresh `startTime`; suspended again, its pod goes (the sim marks it
/// `DisruptionTarget`, so a failure policy's `Ignore` rule does not count it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_job_waits_and_its_deadline_counts_from_resumption() {
    let cluster = Cluster::start().await;
    if cluster.sim_only("simulated kubelet (or a stand-in kubelet on a real control plane)").is_none() {
        return;
    }
    let ns = cluster.namespace("suspend").await;
    let api: Api<Job> = Api::namespaced(cluster.client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    let mut j = job("queued", json!({"sim.flywheel.dev/duration": "60"}), json!(null), 0);
    if let Some(spec) = j.spec.as_mut() {
        spec.suspend = Some(true);
        spec.active_deadline_seconds = Some(2);
        spec.pod_failure_policy = None;
    }
    api.create(&PostParams::default(), &j).await.unwrap_or_else(|e| panic!("{e}"));
    let condition = |j: &Job, type_: &str| {
        j.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default().into_iter().find(|c| c.type_ == type_)
    };
    // Waiting longer than its deadline: neither a pod nor a failure.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let waiting = api.get("queued").await.unwrap_or_else(|e| panic!("{e}"));
    assert!(condition(&waiting, "Failed").is_none(), "{:?}", waiting.status);
    assert!(waiting.status.as_ref().and_then(|s| s.start_time.clone()).is_none());
    let listed = pods.list(&ListParams::default().labels("job-name=queued")).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(listed.items.is_empty());
    // Resumed: a pod, and the deadline's clock starts now.
    let resumed_at = k8s_openapi::jiff::Timestamp::now();
    let patch = |on: bool| Patch::Merge(json!({"spec": {"suspend": on}}));
    api.patch("queued", &PatchParams::default(), &patch(false)).await.unwrap_or_else(|e| panic!("{e}"));
    let running = eventually(Duration::from_secs(10), || {
        let api = api.clone();
        async move {
            let j = api.get("queued").await.ok()?;
            (j.status.as_ref()?.active == Some(1)).then_some(j)
        }
    })
    .await
    .unwrap_or_else(|| panic!("no pod after resumption"));
    let started = running.status.as_ref().and_then(|s| s.start_time.clone()).map(|t| t.0.as_second()).unwrap_or(0);
    assert!(started >= resumed_at.as_second(), "startTime is the resumption's");
    assert_eq!(
        condition(&running, "Suspended").map(|c| (c.status, c.reason)),
        Some(("False".into(), Some("JobResumed".into())))
    );
    // Suspended again: the pod goes, as a disruption, and the Job neither fails nor completes.
    api.patch("queued", &PatchParams::default(), &patch(true)).await.unwrap_or_else(|e| panic!("{e}"));
    let gone = eventually(Duration::from_secs(10), || {
        let pods = pods.clone();
        async move {
            let listed = pods.list(&ListParams::default().labels("job-name=queued")).await.ok()?;
            listed.items.iter().all(|p| p.metadata.deletion_timestamp.is_some()).then_some(listed.items)
        }
    })
    .await
    .unwrap_or_else(|| panic!("the pod of a suspended Job goes"));
    for p in &gone {
        let disrupted = p.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
        assert!(disrupted.iter().any(|c| c.type_ == "DisruptionTarget" && c.status == "True"), "{disrupted:?}");
    }
    let suspended = api.get("queued").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(condition(&suspended, "Suspended").map(|c| c.status), Some("True".into()));
    assert!(condition(&suspended, "Failed").is_none() && condition(&suspended, "Complete").is_none());
    ns.cleanup().await;
    cluster.stop().await;
}
