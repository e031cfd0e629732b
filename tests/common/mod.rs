//! The cluster every integration suite runs against: the one named by
//! `FLYWHEEL_E2E_KUBECONFIG` (kind, k3d, any real cluster), or else a fresh `flywheel sim`
//! started in process. Each test works in a namespace of its own and removes it at the end.
//! A test that needs a sim-only feature calls [`Cluster::sim_only`] and is skipped, with the
//! reason printed, on a real cluster.

#![allow(dead_code, reason = "each test binary uses a different part of the harness")]

use std::time::Duration;

use flywheel::sim::{Sim, SimConfig};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use serde_json::json;

/// The environment variable naming a real cluster's kubeconfig.
pub const KUBECONFIG_ENV: &str = "FLYWHEEL_E2E_KUBECONFIG";

/// A cluster under test.
pub struct Cluster {
    /// A client for it.
    pub client: Client,
    /// The simulated cluster, when no real one was given.
    pub sim: Option<Sim>,
    /// A kubeconfig file for tools such as kubectl.
    pub kubeconfig: std::path::PathBuf,
    _dir: Option<TempDir>,
}

/// A temporary directory removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    /// A fresh directory under the system temp dir.
    pub fn new(prefix: &str) -> Self {
        let path = std::env::temp_dir().join(format!("{prefix}-{}", uuid_like()));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _removed = std::fs::remove_dir_all(&self.0);
    }
}

fn uuid_like() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..8).map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.random_range(0..36)])).collect()
}

impl Cluster {
    /// Connect to the real cluster, or start a simulated one.
    pub async fn start() -> Self {
        Self::start_with(SimConfig::default()).await
    }

    /// As [`Self::start`], with settings for the simulated cluster.
    pub async fn start_with(config: SimConfig) -> Self {
        // Logs of the code under test, when RUST_LOG asks for them.
        let _already = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        if let Ok(path) = std::env::var(KUBECONFIG_ENV) {
            let kubeconfig =
                kube::config::Kubeconfig::read_from(&path).unwrap_or_else(|e| panic!("{KUBECONFIG_ENV}={path}: {e}"));
            let config = kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
                .await
                .unwrap_or_else(|e| panic!("{path}: {e}"));
            let client = Client::try_from(config).unwrap_or_else(|e| panic!("{e}"));
            return Self { client, sim: None, kubeconfig: path.into(), _dir: None };
        }
        let sim = Sim::start(config).await.unwrap_or_else(|e| panic!("starting the simulated cluster: {e}"));
        let dir = TempDir::new("flywheel-test");
        let kubeconfig = dir.0.join("kubeconfig");
        sim.write_kubeconfig(&kubeconfig).unwrap_or_else(|e| panic!("{e}"));
        let client = sim.client().await.unwrap_or_else(|e| panic!("{e}"));
        Self { client, sim: Some(sim), kubeconfig, _dir: Some(dir) }
    }

    /// Whether this is the simulated cluster.
    pub fn is_sim(&self) -> bool {
        self.sim.is_some()
    }

    /// The simulated cluster, or `None` after printing why the test is skipped.
    pub fn sim_only(&self, feature: &str) -> Option<&Sim> {
        if self.sim.is_none() {
            eprintln!("SKIPPED: needs the simulated cluster ({feature}); {KUBECONFIG_ENV} names a real one");
        }
        self.sim.as_ref()
    }

    /// A fresh namespace for one test.
    pub async fn namespace(&self, prefix: &str) -> TestNamespace {
        let name = format!("{prefix}-{}", uuid_like());
        let api: Api<Namespace> = Api::all(self.client.clone());
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": name, "labels": {"flywheel.dev/test": "true"}}}))
                .unwrap_or_else(|e| panic!("{e}"));
        api.create(&PostParams::default(), &ns).await.unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
        TestNamespace { name, client: self.client.clone() }
    }

    /// Install (server-side apply) the CRDs from `crds/` and wait until they are served.
    pub async fn install_crds(&self) {
        let api: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{e}")).flatten() {
            let path = entry.path();
            if path.file_name().is_some_and(|n| n == "kustomization.yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
            let crd: CustomResourceDefinition =
                serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let name = crd.meta().name.clone().unwrap_or_default();
            api.patch(&name, &PatchParams::apply("flywheel-tests").force(), &Patch::Apply(&crd))
                .await
                .unwrap_or_else(|e| panic!("applying CRD {name}: {e}"));
            names.push(name);
        }
        for name in names {
            eventually(Duration::from_secs(30), || {
                let api = api.clone();
                let name = name.clone();
                async move {
                    let crd = api.get(&name).await.ok()?;
                    let established =
                        crd.status?.conditions?.iter().any(|c| c.type_ == "Established" && c.status == "True");
                    established.then_some(())
                }
            })
            .await
            .unwrap_or_else(|| panic!("CRD {name} never became Established"));
        }
    }

    /// Stop the simulated cluster, if any.
    pub async fn stop(self) {
        if let Some(sim) = self.sim {
            sim.shutdown().await;
        }
    }
}

/// A namespace owned by one test.
pub struct TestNamespace {
    /// Its name.
    pub name: String,
    client: Client,
}

impl TestNamespace {
    /// Delete the namespace (and so everything in it).
    pub async fn cleanup(self) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let _deleted = api.delete(&self.name, &DeleteParams::default()).await;
    }
}

/// Poll `check` until it returns `Some`, or give up after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Run `kubectl` against the cluster under test, feeding `stdin` when given.
pub fn kubectl(cluster: &Cluster, args: &[&str], stdin: Option<&str>) -> std::process::Output {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut cmd = Command::new("kubectl");
    cmd.env("KUBECONFIG", &cluster.kubeconfig).args(args);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child =
        cmd.spawn().unwrap_or_else(|e| panic!("running kubectl (is it installed? .ci/run installs it): {e}"));
    if let Some(input) = stdin
        && let Some(mut pipe) = child.stdin.take()
    {
        pipe.write_all(input.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap_or_else(|e| panic!("{e}"))
}

/// The standard output of a kubectl run that must have succeeded.
pub fn ok(out: &std::process::Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "kubectl {what} failed: {}{stdout}", String::from_utf8_lossy(&out.stderr));
    stdout
}
