//! `flywheel sim`: a simulated Kubernetes API server, in memory, over real HTTP on loopback,
//! with a simulated control plane (garbage collector, namespace, Deployment and Job controllers,
//! a kubelet scripted by pod annotations). The real `kube::Client`, kube-runtime and `kubectl`
//! work against it unchanged. See `docs/ARCHITECTURE.md` for what it models and what it does not.

pub mod controllers;
pub mod core;
pub mod error;
pub mod faults;
pub mod http;
pub mod inference;
pub mod model_runtime;
pub mod patch;
mod proto_layout;
mod proto_schema;
pub mod protobuf;
pub mod registry;
pub mod select;
pub mod table;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use self::controllers::process::ProcessMode;
pub use self::controllers::{Outcome, PodBehavior, PodScript, WorkloadConfig};
pub use self::core::Core;
pub use self::faults::{FaultConfig, Faults};

/// Errors starting or reaching the simulated cluster.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The listen address could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The kubeconfig could not be written.
    #[error("writing kubeconfig {path}: {source}")]
    WriteKubeconfig {
        /// Where.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The certificates could not be made.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// A client for the simulated cluster could not be built.
    #[error("building a client for the simulated cluster: {0}")]
    Client(String),
}

/// How to run the simulated cluster.
#[derive(Clone)]
pub struct SimConfig {
    /// Where to listen; port 0 picks a free one.
    pub listen: SocketAddr,
    /// The bearer token; a random one when `None`.
    pub token: Option<String>,
    /// The simulated control plane.
    pub workloads: WorkloadConfig,
    /// Events kept for watches to resume from; older resourceVersions get 410 Gone.
    pub history: usize,
    /// How often a watch that allows bookmarks gets one.
    pub bookmark_interval: Duration,
    /// How long after its creation a CRD's names are accepted and it is established. Until then
    /// its resources answer 404 and discovery does not list them, as on a real server (where the
    /// window is a few milliseconds to a second); the default keeps it observable.
    pub crd_establish_delay: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            token: None,
            workloads: WorkloadConfig::default(),
            history: 100_000,
            bookmark_interval: Duration::from_secs(5),
            crd_establish_delay: Duration::from_millis(200),
        }
    }
}

/// Accept TLS connections and serve `app` on each until `stop` (the simulated API server's
/// loop; tests use it for other HTTPS servers too).
pub async fn serve_tls(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    app: axum::Router,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection");
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let io = hyper_util::rt::TokioIo::new(tls);
            let service = hyper_util::service::TowerToHyperService::new(app);
            let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            let connection = builder.serve_connection(io, service);
            tokio::select! {
                () = stop.cancelled() => {}
                result = connection => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
            }
        });
    }
}

/// A running simulated cluster.
pub struct Sim {
    addr: SocketAddr,
    token: String,
    core: Arc<Core>,
    faults: Arc<Faults>,
    requests: Arc<Mutex<HashMap<String, u64>>>,
    writes_by_resource: Arc<Mutex<HashMap<String, u64>>>,
    ca_pem: String,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Sim {
    /// Start the server and the simulated control plane.
    pub async fn start(config: SimConfig) -> Result<Self, SimError> {
        let listener =
            TcpListener::bind(config.listen).await.map_err(|source| SimError::Bind { addr: config.listen, source })?;
        let addr = listener.local_addr().map_err(|source| SimError::Bind { addr: config.listen, source })?;
        let token = config.token.clone().unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        let core = Arc::new(Core::new(config.history));
        let faults = Arc::new(Faults::default());
        let requests = Arc::new(Mutex::new(HashMap::new()));
        let writes_by_resource = Arc::new(Mutex::new(HashMap::new()));
        let stop = CancellationToken::new();
        let state = http::AppState {
            core: core.clone(),
            token: Arc::new(token.clone()),
            faults: faults.clone(),
            bookmark_interval: config.bookmark_interval,
            requests: requests.clone(),
            writes_by_resource: writes_by_resource.clone(),
            processes: config.workloads.processes.clone(),
        };
        let app = http::router(state);
        let tls = tls::generate()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config.clone());
        let server = tokio::spawn(serve_tls(listener, acceptor, app, stop.clone()));
        let plane =
            controllers::ControlPlane { root_ca: tls.ca_pem.clone(), crd_establish_delay: config.crd_establish_delay };
        let controllers = tokio::spawn(controllers::run(core.clone(), config.workloads.clone(), plane, stop.clone()));
        tracing::info!(%addr, "simulated API server listening");
        Ok(Self {
            addr,
            token,
            core,
            faults,
            requests,
            writes_by_resource,
            ca_pem: tls.ca_pem,
            stop,
            tasks: vec![server, controllers],
        })
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The bearer token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The PEM of the CA the server's certificate chains to (also in every namespace's
    /// `kube-root-ca.crt` ConfigMap).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The store, for in-process scripting and inspection.
    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// Fault injection.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Write requests (POST, PUT, PATCH, DELETE) received, by field manager (or user agent).
    pub fn write_requests(&self) -> HashMap<String, u64> {
        self.requests.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Write requests received, by resource and subresource (`modeldeployments/status`,
    /// `leases`, `deployments`).
    pub fn writes_by_resource(&self) -> HashMap<String, u64> {
        self.writes_by_resource.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// A kubeconfig for the simulated cluster (bearer-token auth).
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: flywheel-sim\n  cluster:\n    server: {url}\n    certificate-authority-data: {ca}\ncontexts:\n- name: flywheel-sim\n  context:\n    cluster: flywheel-sim\n    user: flywheel-sim\n    namespace: default\ncurrent-context: flywheel-sim\nusers:\n- name: flywheel-sim\n  user:\n    token: {token}\n",
            url = self.url(),
            ca = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &self.ca_pem),
            token = self.token
        )
    }

    /// Write [`Self::kubeconfig_yaml`] to `path` (mode 0600).
    pub fn write_kubeconfig(&self, path: &Path) -> Result<(), SimError> {
        let err = |source| SimError::WriteKubeconfig { path: path.display().to_string(), source };
        std::fs::write(path, self.kubeconfig_yaml()).map_err(err)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
        }
        Ok(())
    }

    /// A `kube::Client` for the simulated cluster, built from its kubeconfig as any client would.
    pub async fn client(&self) -> Result<kube::Client, SimError> {
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&self.kubeconfig_yaml())
            .map_err(|e| SimError::Client(e.to_string()))?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
            .await
            .map_err(|e| SimError::Client(e.to_string()))?;
        kube::Client::try_from(config).map_err(|e| SimError::Client(e.to_string()))
    }

    /// Stop the server and the controllers, and wait for them.
    pub async fn shutdown(self) {
        self.stop.cancel();
        for task in self.tasks {
            let _joined = task.await;
        }
    }
}
