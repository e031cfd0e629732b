//! How the operator runs: its settings, with production defaults (what `flywheel operator`
//! starts from) and settings for tests and the demo; and the namespaces it watches.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kube::{Api, Client, Resource};

use super::leader;
use super::model_deployment::feedback_analysis::{AnalysisSource, NoAnalysis};

/// How the operator runs.
#[derive(Clone)]
pub struct OperatorConfig {
    /// Base URL of the feedback collector.
    pub collector_url: Option<String>,
    /// Token the operator presents to the collector (statistics and dataset snapshots need
    /// `write` for snapshots).
    pub collector_token: Option<String>,
    /// Address of `/healthz`, `/readyz` and `/metrics` (port 0 picks one).
    pub metrics_listen: SocketAddr,
    /// Leader election, or `None` to reconcile without it.
    pub leader_election: Option<leader::LeaseConfig>,
    /// Reconciles running at once per controller.
    pub concurrency: u16,
    /// Image that runs `flywheel fetch-model` in inference pods (the operator's own).
    pub operator_image: String,
    /// Where the feedback evidence of `Analysis` gates comes from.
    pub analysis: Arc<dyn AnalysisSource>,
    /// Where the autoscaler reads the load of pods (their `/metrics` by default).
    pub load_source: Arc<dyn crate::autoscale::scrape::LoadSource>,
    /// Where the operator reads what each pod's agent holds in `Adapter` rollout mode (their
    /// `/v1/adapters` by default).
    pub adapter_source: Arc<dyn super::model_deployment::adapters::AdapterSource>,
    /// How often a ModelDeployment with `spec.scaling` is re-evaluated.
    pub scale_interval: Duration,
    /// Least time between two status writes of a FeedbackPolicy whose statistics alone changed.
    pub stats_write_interval: Duration,
    /// Secret (in each ModelDeployment's namespace, key `token`) holding the collector token
    /// the injected agents use.
    pub collector_token_secret: String,
    /// The namespaces the operator watches, lists and writes in; empty: every namespace.
    pub watch_namespaces: Vec<String>,
}

impl Default for OperatorConfig {
    /// The production defaults, those of `flywheel operator`'s flags: endpoints on port 8080 of
    /// every interface, eight reconciles at once per controller, statistics-only status writes
    /// at most every 10 s, every namespace; no leader election and no collector (the command
    /// sets them from its flags).
    fn default() -> Self {
        Self {
            collector_url: None,
            collector_token: None,
            metrics_listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            leader_election: None,
            concurrency: 8,
            operator_image: default_image(),
            analysis: Arc::new(NoAnalysis),
            load_source: Arc::new(crate::autoscale::scrape::HttpScraper::default()),
            adapter_source: Arc::new(super::model_deployment::adapters::HttpAdapterSource::default()),
            scale_interval: Duration::from_secs(2),
            stats_write_interval: Duration::from_secs(10),
            collector_token_secret: "flywheel-collector-token".to_string(),
            watch_namespaces: Vec::new(),
        }
    }
}

impl OperatorConfig {
    /// Settings for tests and the demo: the defaults with the endpoints on a free loopback port
    /// and statistics-only status writes at most every second.
    pub fn local() -> Self {
        Self {
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            stats_write_interval: Duration::from_secs(1),
            ..Self::default()
        }
    }

    /// These settings, reconciling only in `namespace` (as every test's operator does, so two
    /// operators on one cluster never reconcile each other's objects).
    #[must_use]
    pub fn scoped_to(mut self, namespace: &str) -> Self {
        self.watch_namespaces = vec![namespace.to_string()];
        self
    }
}

/// Where a set of controllers watches: one namespace, or every namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Every namespace (cluster-wide rights on namespaced resources needed).
    All,
    /// One namespace (a Role in it is enough).
    Namespace(String),
}

impl Scope {
    /// The scopes of a list of namespaces: `All` for an empty list, else one per distinct name.
    pub fn of(namespaces: &[String]) -> Vec<Scope> {
        if namespaces.is_empty() {
            return vec![Scope::All];
        }
        let mut seen = std::collections::BTreeSet::new();
        namespaces.iter().filter(|n| seen.insert(n.as_str())).map(|n| Scope::Namespace(n.clone())).collect()
    }

    /// An API for `K` in this scope.
    pub fn api<K>(&self, client: &Client) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    {
        match self {
            Scope::All => Api::all(client.clone()),
            Scope::Namespace(ns) => Api::namespaced(client.clone(), ns),
        }
    }

    /// Whether an object in `namespace` is in this scope.
    pub fn contains(&self, namespace: Option<&str>) -> bool {
        match self {
            Scope::All => true,
            Scope::Namespace(ns) => namespace == Some(ns.as_str()),
        }
    }
}

/// The image of this build: `ghcr.io/flywheel-dev/flywheel:<version>`.
pub fn default_image() -> String {
    format!("ghcr.io/flywheel-dev/flywheel:{}", env!("CARGO_PKG_VERSION"))
}
