//! GitOps: the Argo CD health checks in `gitops/argocd/health/` run under a real Lua 5.1 (the
//! dialect Argo CD's interpreter speaks, with only the libraries it opens) against their
//! fixtures, in Argo CD's own test layout; the fixtures are valid objects of the CRDs; the
//! `argocd-cm` snippet carries the scripts verbatim; and the operator never writes spec, so Git
//! and the cluster do not fight: resources applied with a `gitops` field manager keep every
//! spec field owned by that manager alone after the operator has worked on them, and a second
//! apply without `--force-conflicts` succeeds.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Cluster, eventually};
use flywheel::api::validation::{admit, storage_schema};
use flywheel::api::{FeedbackPolicy, ModelDeployment, RetrainJob};
use flywheel::operator::{self, OperatorConfig};
use kube::CustomResourceExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::discovery::ApiResource;
use mlua::{Lua, LuaOptions, StdLib};
use serde_json::Value;

const KINDS: [&str; 3] = ["ModelDeployment", "FeedbackPolicy", "RetrainJob"];
const ARGO_STATUSES: [&str; 5] = ["Healthy", "Progressing", "Degraded", "Suspended", "Missing"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn health_dir(kind: &str) -> PathBuf {
    root().join("gitops/argocd/health").join(format!("flywheel.dev_{kind}"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn yaml(path: &Path) -> Value {
    let v: serde_yaml::Value = serde_yaml::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::to_value(v).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A JSON value as Argo CD hands it to Lua: objects and arrays as tables (arrays from 1), null
/// as nil.
fn to_lua(lua: &Lua, v: &Value) -> mlua::Result<mlua::Value> {
    Ok(match v {
        Value::Null => mlua::Value::Nil,
        Value::Bool(b) => mlua::Value::Boolean(*b),
        Value::Number(n) => mlua::Value::Number(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => mlua::Value::String(lua.create_string(s)?),
        Value::Array(items) => {
            let t = lua.create_table()?;
            for (i, item) in items.iter().enumerate() {
                t.raw_set(i + 1, to_lua(lua, item)?)?;
            }
            mlua::Value::Table(t)
        }
        Value::Object(map) => {
            let t = lua.create_table()?;
            for (k, item) in map {
                t.raw_set(k.as_str(), to_lua(lua, item)?)?;
            }
            mlua::Value::Table(t)
        }
    })
}

/// Run `script` on `obj` as Argo CD does: a fresh interpreter with the base, table, string and
/// math libraries (no io, no os), `obj` a global, the returned table's status and message.
fn health(script: &str, name: &str, obj: &Value) -> Result<(String, String), String> {
    let run = || -> mlua::Result<(String, String)> {
        let lua = Lua::new_with(StdLib::TABLE | StdLib::STRING | StdLib::MATH, LuaOptions::new())?;
        lua.globals().set("obj", to_lua(&lua, obj)?)?;
        let hs: mlua::Table = lua.load(script).set_name(name).eval()?;
        let status: Option<String> = hs.get("status")?;
        let message: Option<String> = hs.get("message")?;
        Ok((status.unwrap_or_default(), message.unwrap_or_default()))
    };
    run().map_err(|e| e.to_string())
}

#[test]
fn argo_cd_health_checks_pass_their_fixtures() {
    let mut cases = 0;
    for kind in KINDS {
        let dir = health_dir(kind);
        let script = read(&dir.join("health.lua"));
        let tests = yaml(&dir.join("health_test.yaml"));
        let tests = tests["tests"].as_array().cloned().unwrap_or_default();
        let mut statuses: Vec<String> = Vec::new();
        for test in &tests {
            let input = test["inputPath"].as_str().unwrap_or_else(|| panic!("{kind}: a test without inputPath"));
            let want_status = test["healthStatus"]["status"].as_str().unwrap_or_default();
            let want_message = test["healthStatus"]["message"].as_str();
            let obj = yaml(&dir.join(input));
            assert_eq!(obj["kind"], kind, "{kind}/{input} is a {}", obj["kind"]);
            let (status, message) = health(&script, &format!("{kind}/health.lua"), &obj)
                .unwrap_or_else(|e| panic!("{kind}/health.lua on {input}: {e}"));
            assert!(ARGO_STATUSES.contains(&status.as_str()), "{kind} {input}: {status:?} is no Argo CD health");
            assert_eq!(status, want_status, "{kind} {input}: message {message:?}");
            if let Some(want) = want_message {
                assert_eq!(message, want, "{kind} {input}");
            }
            statuses.push(status);
            cases += 1;
        }
        for needed in ["Healthy", "Progressing", "Degraded"] {
            assert!(statuses.iter().any(|s| s == needed), "{kind}: no {needed} fixture");
        }
        // Every fixture in testdata/ is one of the tests.
        for entry in std::fs::read_dir(dir.join("testdata")).unwrap_or_else(|e| panic!("{e}")).flatten() {
            let name = format!("testdata/{}", entry.file_name().to_string_lossy());
            assert!(tests.iter().any(|t| t["inputPath"] == name.as_str()), "{kind}: {name} is not in health_test.yaml");
        }
    }
    assert!(cases >= 15, "{cases} cases");
}

#[test]
fn health_fixtures_are_valid_objects_of_the_crds() {
    for (kind, crd) in [
        ("ModelDeployment", ModelDeployment::crd()),
        ("FeedbackPolicy", FeedbackPolicy::crd()),
        ("RetrainJob", RetrainJob::crd()),
    ] {
        let schema = storage_schema(&crd).unwrap_or_else(|| panic!("{kind}: no schema"));
        let dir = health_dir(kind).join("testdata");
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{e}")).flatten() {
            let obj = yaml(&entry.path());
            let name = entry.file_name().to_string_lossy().into_owned();
            // The API server validates spec on create and status on the status subresource: both
            // must fit the schema, with no field it would prune.
            let admitted = admit(&schema, &obj, None).unwrap_or_else(|errors| {
                panic!("{kind} {name}: {}", errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
            });
            assert!(admitted.pruned.is_empty(), "{kind} {name}: unknown fields {:?}", admitted.pruned);
            let typed = match kind {
                "ModelDeployment" => serde_json::from_value::<ModelDeployment>(obj.clone()).map(|_| ()),
                "FeedbackPolicy" => serde_json::from_value::<FeedbackPolicy>(obj.clone()).map(|_| ()),
                _ => serde_json::from_value::<RetrainJob>(obj.clone()).map(|_| ()),
            };
            typed.unwrap_or_else(|e| panic!("{kind} {name} does not deserialize: {e}"));
        }
    }
}

#[test]
fn a_broken_script_fails_the_harness() {
    // The harness itself can fail: a script error and a wrong answer are caught.
    let obj = serde_json::json!({"metadata": {"generation": 1}});
    assert!(health("return obj.status.conditions", "broken", &obj).is_err());
    assert!(health("local hs = {} hs.status = os.time() return hs", "no-os", &obj).is_err(), "os is not opened");
    let (status, _) = health("return {status = 'Healthy'}", "ok", &obj).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status, "Healthy");
}

#[test]
fn argocd_cm_snippet_carries_each_script_verbatim() {
    let cm = yaml(&root().join("gitops/argocd/argocd-cm.yaml"));
    assert_eq!(cm["kind"], "ConfigMap");
    assert_eq!(cm["metadata"]["name"], "argocd-cm");
    for kind in KINDS {
        let key = format!("resource.customizations.health.flywheel.dev_{kind}");
        let embedded = cm["data"][&key].as_str().unwrap_or_else(|| panic!("argocd-cm lacks {key}"));
        assert_eq!(embedded, read(&health_dir(kind).join("health.lua")), "{key} differs from health.lua");
    }
}

fn sample(file: &str) -> Value {
    yaml(&root().join("config/samples").join(file))
}

/// Every managedFields entry of `obj` that owns a field under `spec`: (manager, operation).
fn spec_owners(obj: &Value) -> Vec<(String, String)> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|m| m.pointer("/fieldsV1/f:spec").is_some())
        .map(|m| {
            (
                m["manager"].as_str().unwrap_or_default().to_string(),
                m["operation"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn managers(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|m| {
            format!(
                "{}:{}{}",
                m["manager"].as_str().unwrap_or_default(),
                m["operation"].as_str().unwrap_or_default(),
                m["subresource"].as_str().map(|s| format!("/{s}")).unwrap_or_default()
            )
        })
        .collect()
}

fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj.pointer("/status/conditions")?.as_array()?.iter().find(|c| c["type"] == type_)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_never_writes_spec() {
    let cluster = Cluster::start().await;
    cluster.install_crds().await;
    let ns = cluster.namespace("gitops").await;
    let gitops = PatchParams::apply("gitops");
    let resources: Vec<(ApiResource, Value)> = [
        ("ModelDeployment", "modeldeployments", "modeldeployment.yaml"),
        ("FeedbackPolicy", "feedbackpolicies", "feedbackpolicy.yaml"),
        ("RetrainJob", "retrainjobs", "retrainjob.yaml"),
    ]
    .iter()
    .map(|(kind, plural, file)| {
        let ar = ApiResource {
            group: "flywheel.dev".into(),
            version: "v1alpha1".into(),
            api_version: "flywheel.dev/v1alpha1".into(),
            kind: (*kind).into(),
            plural: (*plural).into(),
        };
        (ar, sample(file))
    })
    .collect();
    // Git applies the samples, as Argo CD and Flux do: server-side, one field manager.
    for (ar, body) in &resources {
        let api: Api<DynamicObject> = Api::namespaced_with(cluster.client.clone(), &ns.name, ar);
        let name = body["metadata"]["name"].as_str().unwrap_or_default();
        api.patch(name, &gitops, &Patch::Apply(body)).await.unwrap_or_else(|e| panic!("applying {name}: {e}"));
    }
    let op = operator::start(cluster.client.clone(), OperatorConfig::local().scoped_to(&ns.name))
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let mds: Api<DynamicObject> = Api::namespaced_with(cluster.client.clone(), &ns.name, &resources[0].0);
    let get = |api: Api<DynamicObject>, name: &'static str| async move {
        api.get(name).await.ok().and_then(|o| serde_json::to_value(o).ok())
    };
    let ready = eventually(Duration::from_secs(60), || {
        let mds = mds.clone();
        async move {
            let md = get(mds, "support-chat").await?;
            (condition(&md, "Ready")?["status"] == "True").then_some(md)
        }
    })
    .await
    .unwrap_or_else(|| panic!("support-chat never became Ready"));

    // The live, Ready object is Healthy to Argo CD.
    let script = read(&health_dir("ModelDeployment").join("health.lua"));
    let (status, message) = health(&script, "ModelDeployment/health.lua", &ready).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status, "Healthy", "{message}");

    // Git changes the model version: the operator starts a canary, in status only.
    let mut v2 = resources[0].1.clone();
    v2["spec"]["model"]["version"] = "v2".into();
    mds.patch("support-chat", &gitops, &Patch::Apply(&v2)).await.unwrap_or_else(|e| panic!("{e}"));
    let canary = eventually(Duration::from_secs(60), || {
        let mds = mds.clone();
        async move {
            let md = get(mds, "support-chat").await?;
            (md.pointer("/status/canary/version")? == "v2").then_some(md)
        }
    })
    .await
    .unwrap_or_else(|| panic!("no canary of v2"));
    let (status, message) = health(&script, "ModelDeployment/health.lua", &canary).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status, "Progressing", "a canary in progress: {message}");

    // The other kinds: wait until the operator has written their status.
    for (ar, body) in &resources[1..] {
        let api: Api<DynamicObject> = Api::namespaced_with(cluster.client.clone(), &ns.name, ar);
        let name = body["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let kind = ar.kind.clone();
        let obj = eventually(Duration::from_secs(60), || {
            let api = api.clone();
            let name = name.clone();
            async move {
                let o = serde_json::to_value(api.get(&name).await.ok()?).ok()?;
                condition(&o, "Ready").is_some().then_some(o)
            }
        })
        .await
        .unwrap_or_else(|| panic!("the operator never wrote the status of {kind} {name}"));
        let script = read(&health_dir(&kind).join("health.lua"));
        let (status, message) = health(&script, &kind, &obj).unwrap_or_else(|e| panic!("{e}"));
        assert!(ARGO_STATUSES.contains(&status.as_str()), "{kind}: {status} {message}");
    }

    // Every field of spec belongs to Git's field manager alone; the operator wrote status.
    for (ar, body) in &resources {
        let api: Api<DynamicObject> = Api::namespaced_with(cluster.client.clone(), &ns.name, ar);
        let name = body["metadata"]["name"].as_str().unwrap_or_default();
        let obj = serde_json::to_value(api.get(name).await.unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{e}"));
        let owners = spec_owners(&obj);
        assert_eq!(
            owners,
            vec![("gitops".to_string(), "Apply".to_string())],
            "{} {name}: spec owned by {owners:?}; managers {:?}",
            ar.kind,
            managers(&obj)
        );
        let status_writers: Vec<String> = managers(&obj).into_iter().filter(|m| m.ends_with("/status")).collect();
        assert!(
            status_writers.iter().any(|m| !m.starts_with("gitops:")),
            "{} {name}: the operator wrote no status ({:?})",
            ar.kind,
            managers(&obj)
        );
    }

    // Git applies again, without forcing: no conflict, because the operator owns nothing Git
    // owns.
    for (ar, body) in &resources {
        let api: Api<DynamicObject> = Api::namespaced_with(cluster.client.clone(), &ns.name, ar);
        let name = body["metadata"]["name"].as_str().unwrap_or_default();
        let again = if ar.kind == "ModelDeployment" { &v2 } else { body };
        api.patch(name, &gitops, &Patch::Apply(again))
            .await
            .unwrap_or_else(|e| panic!("re-applying {} {name} without force: {e}", ar.kind));
    }

    op.shutdown().await;
    ns.cleanup().await;
    cluster.stop().await;
}
