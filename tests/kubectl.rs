//! kubectl against the cluster under test (the simulated one unless `FLYWHEEL_E2E_KUBECONFIG`
//! names a real one): server-side apply of the CRDs and samples, printer columns, `wait`,
//! deletion held by a finalizer, and an invalid sample rejected with its CEL message.

mod common;

use std::process::Output;

use common::{Cluster, ok};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::Api;

fn kubectl(cluster: &Cluster, ns: &str, args: &[&str], stdin: Option<&str>) -> Output {
    common::kubectl(cluster, &[&["--namespace", ns], args].concat(), stdin)
}

fn root(path: &str) -> String {
    format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))
}

// kubectl runs as a blocking child process: the server needs threads of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_lists_waits_and_deletes() {
    let cluster = Cluster::start().await;
    let ns = cluster.namespace("kubectl").await;
    let n = ns.name.clone();
    let crds: Vec<String> = ["modeldeployments", "feedbackpolicies", "retrainjobs"]
        .iter()
        .map(|p| root(&format!("crds/{p}.flywheel.dev.yaml")))
        .collect();
    let mut args = vec!["apply", "--server-side"];
    for c in &crds {
        args.push("-f");
        args.push(c);
    }
    let out = ok(&kubectl(&cluster, &n, &args, None), "apply CRDs");
    assert!(
        out.contains("customresourcedefinition.apiextensions.k8s.io/modeldeployments.flywheel.dev serverside-applied"),
        "{out}"
    );
    // All three: a CRD is established a moment after it is created, not at once.
    ok(
        &kubectl(
            &cluster,
            &n,
            &[
                "wait",
                "--for=condition=Established",
                "crd/modeldeployments.flywheel.dev",
                "crd/feedbackpolicies.flywheel.dev",
                "crd/retrainjobs.flywheel.dev",
                "--timeout=30s",
            ],
            None,
        ),
        "wait for CRDs",
    );

    let samples = kubectl(&cluster, &n, &["kustomize", &root("config/samples")], None);
    let rendered = ok(&samples, "kustomize samples");
    let out = ok(&kubectl(&cluster, &n, &["apply", "--server-side", "-f", "-"], Some(&rendered)), "apply samples");
    for line in [
        "modeldeployment.flywheel.dev/support-chat serverside-applied",
        "feedbackpolicy.flywheel.dev/support-chat-corrections serverside-applied",
        "retrainjob.flywheel.dev/support-chat-manual-1 serverside-applied",
    ] {
        assert!(out.contains(line), "{out}");
    }

    // Printer columns, by short name and by category.
    let table = ok(&kubectl(&cluster, &n, &["get", "md"], None), "get md");
    let header: Vec<&str> = table.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, vec!["NAME", "STABLE", "CANARY", "WEIGHT", "READY", "STATUS", "AGE"], "{table}");
    assert!(table.lines().nth(1).is_some_and(|l| l.starts_with("support-chat ")), "{table}");
    let rtj = ok(&kubectl(&cluster, &n, &["get", "rtj"], None), "get rtj");
    assert!(
        rtj.starts_with("NAME") && rtj.contains("TARGET") && rtj.contains("PHASE") && rtj.contains("VERSION"),
        "{rtj}"
    );
    let all = ok(&kubectl(&cluster, &n, &["get", "flywheel", "-o", "name"], None), "get flywheel");
    for name in [
        "modeldeployment.flywheel.dev/support-chat",
        "feedbackpolicy.flywheel.dev/support-chat-corrections",
        "retrainjob.flywheel.dev/support-chat-manual-1",
    ] {
        assert!(all.contains(name), "{all}");
    }

    // kubectl wait on a condition written to the status subresource.
    let status = r#"{"status":{"conditions":[{"type":"Ready","status":"True","reason":"Available","message":"serving v1","lastTransitionTime":"2026-11-27T00:00:00Z"}]}}"#;
    ok(
        &kubectl(
            &cluster,
            &n,
            &["patch", "md", "support-chat", "--subresource=status", "--type=merge", "-p", status],
            None,
        ),
        "patch status",
    );
    let waited = ok(
        &kubectl(&cluster, &n, &["wait", "--for=condition=Ready", "md/support-chat", "--timeout=10s"], None),
        "wait",
    );
    assert!(waited.contains("condition met"), "{waited}");
    let table = ok(&kubectl(&cluster, &n, &["get", "md", "support-chat"], None), "get md");
    assert!(
        table.lines().nth(1).is_some_and(|l| l.split_whitespace().any(|c| c == "True")),
        "Ready column shows True: {table}"
    );

    // Deletion with a finalizer present: marked, kept, then gone once the finalizer is removed.
    ok(
        &kubectl(
            &cluster,
            &n,
            &[
                "patch",
                "md",
                "support-chat",
                "--type=merge",
                "-p",
                r#"{"metadata":{"finalizers":["flywheel.dev/test"]}}"#,
            ],
            None,
        ),
        "add finalizer",
    );
    ok(&kubectl(&cluster, &n, &["delete", "md", "support-chat", "--wait=false"], None), "delete");
    let stamp = ok(
        &kubectl(&cluster, &n, &["get", "md", "support-chat", "-o", "jsonpath={.metadata.deletionTimestamp}"], None),
        "get deleting",
    );
    assert!(!stamp.trim().is_empty(), "deletionTimestamp set while the finalizer holds it");
    ok(
        &kubectl(
            &cluster,
            &n,
            &["patch", "md", "support-chat", "--type=merge", "-p", r#"{"metadata":{"finalizers":null}}"#],
            None,
        ),
        "remove finalizer",
    );
    ok(&kubectl(&cluster, &n, &["wait", "--for=delete", "md/support-chat", "--timeout=10s"], None), "wait for delete");

    // An invalid sample: rejected at apply with the CEL rule's message.
    let invalid = std::fs::read_to_string(root("config/samples/modeldeployment.yaml"))
        .unwrap_or_else(|e| panic!("{e}"))
        .replace("weight: 50", "weight: 5")
        .replace("name: support-chat\n", "name: falling-weights\n");
    let out = kubectl(&cluster, &n, &["apply", "--server-side", "-f", "-"], Some(&invalid));
    assert!(!out.status.success(), "invalid sample accepted");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("The ModelDeployment \"falling-weights\" is invalid: spec.rollout.steps: Invalid value: step weights must rise strictly from one step to the next"),
        "{stderr}"
    );
    ns.cleanup().await;
    cluster.stop().await;
}

/// `kubectl create` sends built-in kinds as `application/vnd.kubernetes.protobuf`: each object
/// is stored with the fields kubectl set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_sends_protobuf() {
    let cluster = Cluster::start().await;
    let ns = cluster.namespace("kcreate").await;
    let n = ns.name.clone();
    let namespace = format!("{n}-made");
    ok(&common::kubectl(&cluster, &["create", "namespace", &namespace], None), "create namespace");
    let made = Api::<Namespace>::all(cluster.client.clone()).get(&namespace).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(made.status.and_then(|s| s.phase).as_deref(), Some("Active"));
    assert!(made.metadata.uid.is_some() && made.metadata.generate_name.is_none(), "{:?}", made.metadata);

    ok(
        &kubectl(&cluster, &n, &["create", "configmap", "cfg", "--from-literal=a=1", "--from-literal=b=two"], None),
        "create configmap",
    );
    let cm =
        Api::<ConfigMap>::namespaced(cluster.client.clone(), &n).get("cfg").await.unwrap_or_else(|e| panic!("{e}"));
    let data: Vec<(String, String)> = cm.data.unwrap_or_default().into_iter().collect();
    assert_eq!(data, vec![("a".into(), "1".into()), ("b".into(), "two".into())]);

    ok(
        &kubectl(&cluster, &n, &["create", "secret", "generic", "creds", "--from-literal=token=s3cr3t"], None),
        "create secret",
    );
    let secret =
        Api::<Secret>::namespaced(cluster.client.clone(), &n).get("creds").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(secret.data.unwrap_or_default().get("token").map(|b| b.0.clone()), Some(b"s3cr3t".to_vec()));
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));

    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), &n);
    ok(
        &kubectl(
            &cluster,
            &n,
            &["create", "deployment", "web", "--image=registry.k8s.io/pause:3.10", "--replicas=2", "--port=8080"],
            None,
        ),
        "create deployment",
    );
    let web = deployments.get("web").await.unwrap_or_else(|e| panic!("{e}"));
    let spec = web.spec.unwrap_or_else(|| panic!("no spec"));
    assert_eq!(spec.replicas, Some(2));
    assert_eq!(spec.selector.match_labels.unwrap_or_default().get("app").map(String::as_str), Some("web"));
    let pod = spec.template.spec.unwrap_or_else(|| panic!("no pod spec"));
    assert_eq!(pod.containers.len(), 1);
    assert_eq!(pod.containers[0].name, "pause");
    assert_eq!(pod.containers[0].image.as_deref(), Some("registry.k8s.io/pause:3.10"));
    let ports: Vec<i32> =
        pod.containers[0].ports.clone().unwrap_or_default().iter().map(|p| p.container_port).collect();
    assert_eq!(ports, vec![8080]);
    // A pointer set to zero on purpose stays zero.
    ok(
        &kubectl(
            &cluster,
            &n,
            &["create", "deployment", "idle", "--image=registry.k8s.io/pause:3.10", "--replicas=0"],
            None,
        ),
        "create deployment with no replicas",
    );
    let idle = deployments.get("idle").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(idle.spec.and_then(|s| s.replicas), Some(0));

    ok(&kubectl(&cluster, &n, &["create", "job", "once", "--image=registry.k8s.io/pause:3.10"], None), "create job");
    let job = Api::<Job>::namespaced(cluster.client.clone(), &n).get("once").await.unwrap_or_else(|e| panic!("{e}"));
    let template = job.spec.map(|s| s.template).unwrap_or_default();
    let pod = template.spec.unwrap_or_else(|| panic!("no pod spec"));
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    assert_eq!(pod.containers[0].image.as_deref(), Some("registry.k8s.io/pause:3.10"));
    assert!(
        template.metadata.and_then(|m| m.labels).is_some_and(|l| l.contains_key("batch.kubernetes.io/controller-uid")),
        "the server's Job labels"
    );

    // kubectl reads what it created.
    let got = ok(
        &kubectl(
            &cluster,
            &n,
            &["get", "deployment", "web", "-o", "jsonpath={.spec.template.spec.containers[0].image}"],
            None,
        ),
        "get",
    );
    assert_eq!(got, "registry.k8s.io/pause:3.10");
    let _deleted = Api::<Namespace>::all(cluster.client.clone()).delete(&namespace, &Default::default()).await;
    ns.cleanup().await;
    cluster.stop().await;
}
