//! The operator at scale on the simulated cluster, with leader election on as the chart ships
//! it: N ModelDeployments reconciled to Ready (time to all Ready, the operator process's peak
//! memory), then the writes at the server over a quiet window, by kind (lease renewals, status,
//! children, Events), with every object's reconcile triggered once in the middle of the window
//! (an annotation the operator ignores, so "no write" measures an unchanged reconcile, not
//! idleness), and the operator checked alive at the end. `cargo bench --bench operator`
//! (N = 10,000 and a one-hour window; `-- --objects N --quiet-seconds S` to change them); under
//! `cargo test --all-targets` it runs as a smoke test with N = 10 and a 3 s window.

#[path = "support/mod.rs"]
mod support;
use support::arg;

use std::time::{Duration, Instant};

use flywheel::api::ModelDeployment;
use flywheel::sim::{Sim, SimConfig, WorkloadConfig};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn ready(md: &ModelDeployment) -> bool {
    md.status.as_ref().is_some_and(|s| {
        s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == flywheel::api::ConditionStatus::True)
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let n: usize = arg("--objects", if benching { 10_000 } else { 10 });
    let quiet = Duration::from_secs(arg("--quiet-seconds", if benching { 3600 } else { 3 }) as u64);
    let workloads = WorkloadConfig { pod_ready_delay: Duration::from_millis(50), ..WorkloadConfig::default() };
    let sim = Sim::start(SimConfig { workloads, ..SimConfig::default() }).await.unwrap_or_else(|e| panic!("{e}"));
    let dir = std::env::temp_dir().join(format!("flywheel-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let kubeconfig = dir.join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig).unwrap_or_else(|e| panic!("{e}"));
    let client = sim.client().await.unwrap_or_else(|e| panic!("{e}"));
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in flywheel::api::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        crds.patch(&name, &PatchParams::apply("bench").force(), &Patch::Apply(&crd))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    // A CRD is established a moment after it is created: wait for all of them.
    for crd in flywheel::api::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let live = crds.get(&name).await.unwrap_or_else(|e| panic!("{e}"));
            let established = live
                .status
                .and_then(|s| s.conditions)
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Established" && c.status == "True"));
            if established {
                break;
            }
            assert!(Instant::now() < deadline, "CRD {name} never established");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"));
    let listen = format!("127.0.0.1:{port}");
    let mut operator = std::process::Command::new(env!("CARGO_BIN_EXE_flywheel"))
        .args(["--log-format", "json", "operator", "--leader-elect=true", "--lease-namespace", "default"])
        .args(["--identity", "bench-operator", "--metrics-listen", &listen])
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting the operator: {e}"));
    let pid = operator.id();
    // A failed assertion must not leave the operator running, nor this process waiting on the
    // simulated cluster's threads: on a panic, kill the operator and exit.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        // SAFETY: kill has no memory preconditions; pid is the operator this benchmark started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        std::process::exit(101);
    }));

    let api: Api<ModelDeployment> = Api::namespaced(client.clone(), "default");
    let start = Instant::now();
    for i in 0..n {
        let md: ModelDeployment = serde_json::from_value(serde_json::json!({
            "apiVersion": "flywheel.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": format!("model-{i:05}")},
            "spec": {"model": {"name": "m", "version": "v1", "uri": "file:///models/m"}, "runtime": {"image": "runtime:1"}, "replicas": 1}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        api.create(&PostParams::default(), &md).await.unwrap_or_else(|e| panic!("{e}"));
    }
    let created = start.elapsed();
    let deadline = Instant::now() + Duration::from_secs(if benching { 3600 } else { 120 });
    let all_ready = loop {
        let list = api.list(&ListParams::default()).await.unwrap_or_else(|e| panic!("{e}"));
        let count = list.items.iter().filter(|m| ready(m)).count();
        if count == n {
            break start.elapsed();
        }
        assert!(Instant::now() < deadline, "only {count} of {n} ModelDeployments became Ready");
        // Listing every object is itself work for the server: not too often.
        tokio::time::sleep(Duration::from_millis(if n > 1000 { 5000 } else { 500 })).await;
    };
    let peak_to_ready = peak_rss_kib(pid);
    eprintln!(
        "{n} created in {:.1} s, all Ready after {:.1} s; operator peak RSS {} MiB",
        created.as_secs_f64(),
        all_ready.as_secs_f64(),
        peak_to_ready / 1024
    );
    let before = sim.writes_by_resource();
    let window = Instant::now();
    // Half the window quiet, then every object's reconcile once, then the other half; a long
    // window says how it stands every ten minutes (so a run cut short still tells).
    let sim_ref = &sim;
    let progress = || {
        let now: std::collections::BTreeMap<String, u64> = sim_ref.writes_by_resource().into_iter().collect();
        let added: Vec<String> = now
            .iter()
            .map(|(r, c)| (r, c - before.get(r).copied().unwrap_or(0)))
            .filter(|(_, c)| *c > 0)
            .map(|(r, c)| format!("{r} {c}"))
            .collect();
        eprintln!(
            "quiet window at {:.0} s: writes {}; operator peak RSS {} MiB",
            window.elapsed().as_secs_f64(),
            if added.is_empty() { "none".to_string() } else { added.join(", ") },
            peak_rss_kib(pid) / 1024
        );
    };
    let wait = |d: Duration| async move {
        let until = Instant::now() + d;
        while Instant::now() < until {
            tokio::time::sleep((until - Instant::now()).min(Duration::from_secs(600))).await;
            progress();
        }
    };
    wait(quiet / 2).await;
    let resync_params = PatchParams { field_manager: Some("bench-resync".into()), ..PatchParams::default() };
    let resync = serde_json::json!({"metadata": {"annotations": {"bench.flywheel.dev/resync": "1"}}});
    for i in 0..n {
        api.patch(&format!("model-{i:05}"), &resync_params, &Patch::Merge(&resync))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    wait(quiet / 2).await;
    let after = sim.writes_by_resource();
    // The window as it ran (the resync itself takes a while at 10,000 objects).
    let window = window.elapsed();
    let alive = operator.try_wait().ok().flatten().is_none()
        && flywheel::http_client::client()
            .get(format!("http://{listen}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
    let peak = peak_rss_kib(pid);
    let _killed = operator.kill();
    let _waited = operator.wait();
    sim.shutdown().await;
    let _removed = std::fs::remove_dir_all(&dir);
    let mut by_kind = std::collections::BTreeMap::<&str, u64>::new();
    for (resource, count) in &after {
        let added = count - before.get(resource).copied().unwrap_or(0);
        let kind = match resource.as_str() {
            "leases" => "lease renewals",
            "modeldeployments/status" | "feedbackpolicies/status" | "retrainjobs/status" => "status",
            // The benchmark's own resync patches.
            "modeldeployments" => "resync (the benchmark's)",
            "events" => "events",
            _ => "children and other",
        };
        *by_kind.entry(kind).or_default() += added;
    }
    let minutes = window.as_secs_f64() / 60.0;
    let rates: Vec<String> =
        by_kind.iter().map(|(k, v)| format!("{k}: {v} ({:.1}/min)", *v as f64 / minutes)).collect();
    println!(
        "{n} ModelDeployments (1 replica each, leader election on): created in {:.1} s, all Ready after {:.1} s ({:.0}/s); operator peak RSS {} MiB up to all Ready, {} MiB over the whole run; writes over a quiet {:.0} s (asked {} s) with one resync of every object: {}; operator alive at the end: {alive}",
        created.as_secs_f64(),
        all_ready.as_secs_f64(),
        n as f64 / all_ready.as_secs_f64(),
        peak_to_ready / 1024,
        peak / 1024,
        window.as_secs_f64(),
        quiet.as_secs(),
        if rates.is_empty() { "none".to_string() } else { rates.join(", ") },
    );
    assert!(alive, "the operator died: a dead operator writes nothing too");
    assert_eq!(by_kind.get("resync (the benchmark's)").copied().unwrap_or(0), n as u64, "every object resynced once");
    let others: u64 = by_kind
        .iter()
        .filter(|(k, _)| !matches!(**k, "lease renewals" | "resync (the benchmark's)"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(others, 0, "at rest, an unchanged reconcile writes nothing besides the lease: {by_kind:?}");
}
