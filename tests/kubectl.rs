//! kubectl against the cluster under test (the simulated one unless `FLYWHEEL_E2E_KUBECONFIG`
//! names a real one): server-side apply of the CRDs and samples, printer columns, `wait`,
//! deletion held by a finalizer, and an invalid sample rejected with its CEL message.

mod common;

use std::process::Output;

use common::{Cluster, ok};

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
