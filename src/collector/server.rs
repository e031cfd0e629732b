//! A running collector: [`Collector::start`] opens the store, starts the group-commit writer,
//! binds and serves; [`Collector::shutdown`] drains. Also the background tasks beside the
//! server: the store probe (readiness, the size gauge) and the retention purge.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::auth::{self, Tokens};
use super::clock::{now_ms, rfc3339};
use super::config::CollectorConfig;
use super::dataset;
use super::metrics::Metrics;
use super::routes::router;
use super::state::AppState;
use super::store::{Store, StoreError};
use super::writer::Writer;

/// Failures starting the collector.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store could not be opened.
    #[error("opening the store: {0}")]
    Store(#[from] StoreError),
    /// The tokens could not be read or made.
    #[error("tokens: {0}")]
    Tokens(#[from] auth::TokenError),
    /// The address cannot be bound.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// A running collector.
pub struct Collector {
    addr: SocketAddr,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<()>,
    writer: tokio::task::JoinHandle<()>,
    token_path: PathBuf,
}

impl Collector {
    /// Opens the store, binds, and serves until [`Collector::shutdown`].
    pub async fn start(config: CollectorConfig) -> Result<Collector, StartError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|source| StoreError::Io { path: config.data_dir.clone(), source })?;
        let (tokens, token_path) = Tokens::load_or_generate(config.token_file.as_deref(), &config.data_dir)?;
        let store = Store::open(&config.data_dir, config.database_url.as_deref()).await?;
        dataset::import_folders(&store, &config.data_dir.join("datasets")).await;
        let metrics = Arc::new(Metrics::default());
        let (writer, writer_task) = Writer::start(store.clone(), metrics.clone(), config.queue, config.max_batch);
        let listen = |source| StartError::Listen { addr: config.listen, source };
        let listener = TcpListener::bind(config.listen).await.map_err(listen)?;
        let addr = listener.local_addr().map_err(listen)?;
        let stop = CancellationToken::new();
        let state = AppState {
            store: store.clone(),
            writer,
            tokens: tokens.clone(),
            metrics,
            config: Arc::new(config),
            ready: Arc::new(AtomicBool::new(true)),
        };
        tokio::spawn(probe(state.clone(), stop.clone()));
        tokio::spawn(purge(state.clone(), stop.clone()));
        tokio::spawn(tokens.watch(stop.clone()));
        let server = tokio::spawn(serve(listener, state, stop.clone()));
        tracing::info!(%addr, backend = store.backend(), token_file = %token_path.display(), "collector listening");
        Ok(Collector { addr, stop, server, writer: writer_task, token_path })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The token file in use (generated when none was given).
    pub fn token_path(&self) -> &Path {
        &self.token_path
    }

    /// Stops accepting requests, lets those in flight finish, and commits what is queued.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _server = self.server.await;
        // The server's state held the last writer handles; the writer drains and ends.
        let _writer = tokio::time::timeout(Duration::from_secs(30), self.writer).await;
    }
}

/// Serves until `stop`, then lets the requests in flight finish.
async fn serve(listener: TcpListener, state: AppState, stop: CancellationToken) {
    let shutdown = async move { stop.cancelled().await };
    if let Err(e) = axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await {
        tracing::error!(error = %e, "collector server failed");
    }
}

/// Probes the store every two seconds: readiness, and the store size gauge.
async fn probe(state: AppState, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let ok = tokio::time::timeout(Duration::from_secs(5), state.store.ping()).await;
        let healthy = matches!(ok, Ok(Ok(())));
        if healthy != state.ready.swap(healthy, Ordering::Relaxed) {
            tracing::warn!(healthy, backend = state.store.backend(), "store health changed");
        }
        if healthy {
            state.writer.set_healthy(true);
            if let Ok(bytes) = state.store.size_bytes().await {
                state.metrics.store_bytes.set(bytes);
            }
        }
    }
}

/// Purges events past the retention period.
async fn purge(state: AppState, stop: CancellationToken) {
    let mut tick = tokio::time::interval(state.config.purge_interval);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let before = now_ms() - state.config.retention.as_millis() as i64;
        match state.store.purge(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, before = %rfc3339(before), "purged events past retention"),
            Err(e) => tracing::warn!(error = %e, "purge failed"),
        }
    }
}
