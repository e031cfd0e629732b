//! Durable storage of events: SQLite (embedded default) and PostgreSQL (several replicas).
//!
//! Both stores keep the same tables and answer the same questions; [`Store`] picks one. Writes
//! come only from the group-commit writer ([`super::writer`]), each batch in one transaction,
//! so one fsync covers every request waiting in it.
//!
//! Every statement is written once, in [`sql`] (where the dialects differ, the two versions
//! stand side by side there); [`rows`] turns events into columns and rows back into values for
//! both stores; [`sqlite`] and [`postgres`] only connect, bind and run.

mod postgres;
mod rows;
mod sql;
mod sqlite;
mod types;

use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

pub use self::postgres::Postgres;
pub use self::sqlite::Sqlite;
pub use self::types::{
    Aggregate, CHUNK_BYTES, DatasetFile, JoinedFeedback, Outcome, StatsRows, StoreError, StoredFeedback, StoredFile,
};
use super::event::Event;

/// Which database.
#[derive(Clone)]
pub enum Store {
    /// SQLite in a file.
    Sqlite(Arc<Sqlite>),
    /// PostgreSQL.
    Postgres(Arc<Postgres>),
}

impl Store {
    /// Opens SQLite in `data_dir/collector.db`, or PostgreSQL when a URL is given; creates the
    /// tables when missing.
    pub async fn open(data_dir: &Path, database_url: Option<&str>) -> Result<Store, StoreError> {
        match database_url {
            Some(url) => Ok(Store::Postgres(Arc::new(Postgres::connect(url).await?))),
            None => {
                let path = data_dir.join("collector.db");
                let store = tokio::task::spawn_blocking(move || Sqlite::open(&path))
                    .await
                    .map_err(|e| StoreError::Task(e.to_string()))??;
                Ok(Store::Sqlite(Arc::new(store)))
            }
        }
    }

    /// The backend's name, for logs and metrics.
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Stores a batch in one transaction; one outcome per event, in order.
    pub async fn commit(&self, events: Arc<Vec<Event>>) -> Result<Vec<Outcome>, StoreError> {
        match self {
            Store::Sqlite(s) => {
                let s = s.clone();
                blocking(move || s.commit(&events)).await
            }
            Store::Postgres(p) => p.commit(&events).await,
        }
    }

    /// Statistics groups of a deployment between two times (inclusive).
    pub async fn aggregates(
        &self,
        namespace: &str,
        deployment: &str,
        from_ms: i64,
        to_ms: i64,
        rating_threshold: f64,
    ) -> Result<StatsRows, StoreError> {
        match self {
            Store::Sqlite(s) => {
                let (s, ns, d) = (s.clone(), namespace.to_string(), deployment.to_string());
                blocking(move || s.aggregates(&ns, &d, from_ms, to_ms, rating_threshold)).await
            }
            Store::Postgres(p) => p.aggregates(namespace, deployment, from_ms, to_ms, rating_threshold).await,
        }
    }

    /// A number that grows whenever an event of the deployment is stored.
    pub async fn cursor(&self, namespace: &str, deployment: &str) -> Result<i64, StoreError> {
        match self {
            Store::Sqlite(s) => {
                let (s, ns, d) = (s.clone(), namespace.to_string(), deployment.to_string());
                blocking(move || s.cursor(&ns, &d)).await
            }
            Store::Postgres(p) => p.cursor(namespace, deployment).await,
        }
    }

    /// Feedback of a deployment between two times with its interactions, oldest first.
    pub async fn joined_feedback(
        &self,
        namespace: &str,
        deployment: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<JoinedFeedback>, StoreError> {
        match self {
            Store::Sqlite(s) => {
                let (s, ns, d) = (s.clone(), namespace.to_string(), deployment.to_string());
                blocking(move || s.joined_feedback(&ns, &d, from_ms, to_ms)).await
            }
            Store::Postgres(p) => p.joined_feedback(namespace, deployment, from_ms, to_ms).await,
        }
    }

    /// Feedback of a deployment stored after position `after`, at most `limit`.
    pub async fn feedback_after(
        &self,
        namespace: &str,
        deployment: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<StoredFeedback>, StoreError> {
        match self {
            Store::Sqlite(s) => {
                let (s, ns, d) = (s.clone(), namespace.to_string(), deployment.to_string());
                blocking(move || s.feedback_after(&ns, &d, after, limit)).await
            }
            Store::Postgres(p) => p.feedback_after(namespace, deployment, after, limit).await,
        }
    }

    /// Deletes events older than `before_ms`; returns how many.
    pub async fn purge(&self, before_ms: i64) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => {
                let s = s.clone();
                blocking(move || s.delete(sql::PURGE, rusqlite::params![before_ms])).await
            }
            Store::Postgres(p) => p.delete(sql::PURGE, &[&before_ms]).await,
        }
    }

    /// Deletes every event of a user or session key; returns how many.
    pub async fn delete_subject(&self, key: &str) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => {
                let (s, key) = (s.clone(), key.to_string());
                blocking(move || s.delete(sql::ERASE, rusqlite::params![key])).await
            }
            Store::Postgres(p) => p.delete(sql::ERASE, &[&key]).await,
        }
    }

    /// Records a dataset snapshot, its manifest and its files, in one transaction: a snapshot
    /// is visible with all its files or not at all. Idempotent by id: when the id is stored
    /// already (another request or replica built the same rows), nothing is written and the
    /// answer is `false`; the stored manifest stays. A stored snapshot without files (one an
    /// older collector kept on a data directory) gets these files.
    pub async fn put_dataset(
        &self,
        id: &str,
        namespace: &str,
        deployment: &str,
        manifest: &Value,
        files: Vec<DatasetFile>,
    ) -> Result<bool, StoreError> {
        let body = manifest.to_string();
        match self {
            Store::Sqlite(s) => {
                let (s, id, ns, d) = (s.clone(), id.to_string(), namespace.to_string(), deployment.to_string());
                blocking(move || s.put_dataset(&id, &ns, &d, &body, &files)).await
            }
            Store::Postgres(p) => p.put_dataset(id, namespace, deployment, &body, &files).await,
        }
    }

    /// A dataset snapshot's manifest.
    pub async fn get_dataset(&self, id: &str) -> Result<Option<Value>, StoreError> {
        let text = match self {
            Store::Sqlite(s) => {
                let (s, id) = (s.clone(), id.to_string());
                blocking(move || s.get_dataset(&id)).await?
            }
            Store::Postgres(p) => p.get_dataset(id).await?,
        };
        text.map(|t| {
            serde_json::from_str(&t).map_err(|e| StoreError::Corrupt { id: id.to_string(), reason: e.to_string() })
        })
        .transpose()
    }

    /// The digest and length of one file of a snapshot; `None` when it is not stored.
    pub async fn dataset_file(&self, id: &str, name: &str) -> Result<Option<StoredFile>, StoreError> {
        match self {
            Store::Sqlite(s) => {
                let (s, id, name) = (s.clone(), id.to_string(), name.to_string());
                blocking(move || s.dataset_file(&id, &name)).await
            }
            Store::Postgres(p) => p.dataset_file(id, name).await,
        }
    }

    /// Chunk `part` (from 0) of a snapshot's file: at most [`CHUNK_BYTES`]; `None` past the end.
    /// A download reads one chunk at a time, so it holds one chunk in memory and no database
    /// connection between chunks.
    pub async fn dataset_chunk(&self, id: &str, name: &str, part: i64) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Store::Sqlite(s) => {
                let (s, id, name) = (s.clone(), id.to_string(), name.to_string());
                blocking(move || s.dataset_chunk(&id, &name, part)).await
            }
            Store::Postgres(p) => p.dataset_chunk(id, name, part).await,
        }
    }

    /// Whether the store answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => {
                let s = s.clone();
                blocking(move || s.ping()).await
            }
            Store::Postgres(p) => p.ping().await,
        }
    }

    /// Bytes the store takes.
    pub async fn size_bytes(&self) -> Result<i64, StoreError> {
        match self {
            Store::Sqlite(s) => {
                let s = s.clone();
                blocking(move || s.size_bytes()).await
            }
            Store::Postgres(p) => p.size_bytes().await,
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| StoreError::Task(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::types::file_rows;
    use super::*;

    #[test]
    fn files_are_stored_in_chunks_with_their_digest() {
        let file = DatasetFile { name: "sft.jsonl".into(), bytes: vec![b'x'; 2 * CHUNK_BYTES + 3] };
        let (sha256, size, chunks) = file_rows(&file);
        assert_eq!(sha256, hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&file.bytes)));
        assert_eq!(size, (2 * CHUNK_BYTES + 3) as i64);
        let parts: Vec<(i64, usize)> = chunks.map(|(k, c)| (k, c.len())).collect();
        assert_eq!(parts, [(0, CHUNK_BYTES), (1, CHUNK_BYTES), (2, 3)]);
        let empty = DatasetFile { name: "dpo.jsonl".into(), bytes: Vec::new() };
        assert_eq!(file_rows(&empty).2.count(), 0, "an empty file has no chunk");
    }
}
