//! The operator at scale on the simulated cluster: N ModelDeployments reconciled to Ready (time
//! to all Ready, the operator process's peak memory), then the write rate over a quiet window
//! (expected 0). `cargo bench --bench operator` (N = 1,000, a 60 s quiet window); under
//! `cargo test --all-targets` it runs as a smoke test with N = 10.

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
    let n: usize = if benching { 1000 } else { 10 };
    let quiet = Duration::from_secs(if benching { 60 } else { 3 });
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
    let mut operator = std::process::Command::new(env!("CARGO_BIN_EXE_flywheel"))
        .args(["--log-format", "json", "operator", "--leader-elect=false", "--metrics-listen", "127.0.0.1:0"])
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting the operator: {e}"));
    let pid = operator.id();

    let api: Api<ModelDeployment> = Api::namespaced(client.clone(), "default");
    let start = Instant::now();
    for i in 0..n {
        let md: ModelDeployment = serde_json::from_value(serde_json::json!({
            "apiVersion": "flywheel.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": format!("model-{i:04}")},
            "spec": {"model": {"name": "m", "version": "v1", "uri": "file:///models/m"}, "runtime": {"image": "runtime:1"}, "replicas": 1}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        api.create(&PostParams::default(), &md).await.unwrap_or_else(|e| panic!("{e}"));
    }
    let created = start.elapsed();
    let deadline = Instant::now() + Duration::from_secs(if benching { 900 } else { 120 });
    let all_ready = loop {
        let list = api.list(&ListParams::default()).await.unwrap_or_else(|e| panic!("{e}"));
        let count = list.items.iter().filter(|m| ready(m)).count();
        if count == n {
            break start.elapsed();
        }
        assert!(Instant::now() < deadline, "only {count} of {n} ModelDeployments became Ready");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let peak = peak_rss_kib(pid);
    let writes_before: u64 = sim.write_requests().values().sum();
    tokio::time::sleep(quiet).await;
    let writes_after: u64 = sim.write_requests().values().sum();
    let per_minute = (writes_after - writes_before) as f64 * 60.0 / quiet.as_secs_f64();
    let _killed = operator.kill();
    let _waited = operator.wait();
    sim.shutdown().await;
    let _removed = std::fs::remove_dir_all(&dir);
    println!(
        "{n} ModelDeployments (1 replica each): created in {:.1} s, all Ready after {:.1} s ({:.0}/s); operator peak RSS {} MiB; writes over a quiet {} s: {} ({per_minute:.1}/min)",
        created.as_secs_f64(),
        all_ready.as_secs_f64(),
        n as f64 / all_ready.as_secs_f64(),
        peak / 1024,
        quiet.as_secs(),
        writes_after - writes_before,
    );
    assert_eq!(writes_after, writes_before, "a quiet cluster costs no write");
}
