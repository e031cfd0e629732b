//! Group commit: requests hand their events to one writer task, which takes everything that is
//! waiting, stores it in one transaction (one fsync), and answers each request. Under load a
//! commit carries many requests; a request is acknowledged only after its commit.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot, watch};

use super::event::Event;
use super::metrics::Metrics;
use super::store::{Outcome, Store, StoreError};

/// Why events were not stored.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// Too many requests are waiting; try again later.
    #[error("the collector is overloaded; retry later")]
    Overloaded,
    /// The store failed; nothing of this request was stored.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// The collector is shutting down.
    #[error("the collector is shutting down")]
    Closed,
}

struct Job {
    events: Vec<Event>,
    reply: oneshot::Sender<Result<Vec<Outcome>, String>>,
}

/// The handle requests submit through.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
    healthy: Arc<AtomicBool>,
    committed: watch::Receiver<u64>,
}

impl Writer {
    /// Starts the writer task; `queue` bounds the requests waiting for a commit, `max_batch`
    /// the events in one transaction.
    pub fn start(
        store: Store,
        metrics: Arc<Metrics>,
        queue: usize,
        max_batch: usize,
    ) -> (Writer, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let healthy = Arc::new(AtomicBool::new(true));
        let (commit_tx, committed) = watch::channel(0u64);
        let task = tokio::spawn(run(store, metrics, rx, max_batch.max(1), healthy.clone(), commit_tx));
        (Writer { tx, healthy, committed }, task)
    }

    /// Stores `events` durably; one outcome per event.
    pub async fn submit(&self, events: Vec<Event>) -> Result<Vec<Outcome>, SubmitError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        self.tx.try_send(Job { events, reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SubmitError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => SubmitError::Closed,
        })?;
        match answer.await {
            Ok(Ok(outcomes)) => Ok(outcomes),
            Ok(Err(e)) => Err(SubmitError::Unavailable(e)),
            Err(_) => Err(SubmitError::Closed),
        }
    }

    /// False after a failed commit, until one succeeds again.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Marks the store healthy again after a successful probe.
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    /// Counts commits; changes after each one that stored something.
    pub fn commits(&self) -> watch::Receiver<u64> {
        self.committed.clone()
    }
}

async fn run(
    store: Store,
    metrics: Arc<Metrics>,
    mut rx: mpsc::Receiver<Job>,
    max_batch: usize,
    healthy: Arc<AtomicBool>,
    committed: watch::Sender<u64>,
) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        let mut count = jobs[0].events.len();
        while count < max_batch {
            match rx.try_recv() {
                Ok(job) => {
                    count += job.events.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let mut sizes = Vec::with_capacity(jobs.len());
        let mut events = Vec::with_capacity(count);
        let mut replies = Vec::with_capacity(jobs.len());
        for job in jobs {
            sizes.push(job.events.len());
            events.extend(job.events);
            replies.push(job.reply);
        }
        let started = Instant::now();
        let result = commit_with_retry(&store, Arc::new(events)).await;
        metrics.commit_seconds.observe(started.elapsed().as_secs_f64());
        metrics.batch_events.observe(count as f64);
        match result {
            Ok(outcomes) => {
                healthy.store(true, Ordering::Relaxed);
                let created = outcomes.contains(&Outcome::Created);
                let mut rest = outcomes.into_iter();
                for (size, reply) in sizes.into_iter().zip(replies) {
                    let mine: Vec<Outcome> = rest.by_ref().take(size).collect();
                    let _gone = reply.send(Ok(mine));
                }
                if created {
                    committed.send_modify(|n| *n += 1);
                }
            }
            Err(e) => {
                healthy.store(false, Ordering::Relaxed);
                tracing::error!(backend = store.backend(), error = %e, events = count, "commit failed; answering 503");
                let message = e.to_string();
                for reply in replies {
                    let _gone = reply.send(Err(message.clone()));
                }
            }
        }
    }
}

/// SQLite may report a busy database under a concurrent purge; a short retry hides it.
async fn commit_with_retry(store: &Store, events: Arc<Vec<super::event::Event>>) -> Result<Vec<Outcome>, StoreError> {
    let mut attempt = 0;
    loop {
        match store.commit(events.clone()).await {
            Err(StoreError::Sqlite { source, .. })
                if attempt < 3
                    && matches!(
                        source.sqlite_error_code(),
                        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
                    ) =>
            {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(20 * attempt)).await;
            }
            other => return other,
        }
    }
}
