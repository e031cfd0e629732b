//! Durable storage of events: SQLite (embedded default) and PostgreSQL (several replicas).
//!
//! Both stores keep the same tables and answer the same questions; [`Store`] picks one. Writes
//! come only from the group-commit writer ([`super::writer`]), each batch in one transaction,
//! so one fsync covers every request waiting in it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::OptionalExtension;
use serde_json::Value;

use super::event::{Event, Feedback, Interaction, Kind};

/// A failure of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("sqlite {context}: {source}")]
    Sqlite {
        /// What was being done.
        context: &'static str,
        /// The error.
        #[source]
        source: rusqlite::Error,
    },
    /// PostgreSQL failed or is unreachable.
    #[error("postgres {context}: {source}")]
    Postgres {
        /// What was being done.
        context: &'static str,
        /// The error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The data directory cannot be used.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A stored row cannot be read back.
    #[error("corrupt row {id}: {reason}")]
    Corrupt {
        /// The row.
        id: String,
        /// What is wrong.
        reason: String,
    },
    /// A blocking task panicked or was cancelled.
    #[error("store task: {0}")]
    Task(String),
}

fn sq(context: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sqlite { context, source }
}

fn pg(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
    move |source| StoreError::Postgres { context, source }
}

/// What happened to one event of a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stored now.
    Created,
    /// Stored before with the same payload: nothing to do.
    Duplicate,
    /// Stored before with another payload: refused.
    Conflict,
}

/// One group of a statistics query: a version, a kind, and for thumbs the direction, for labels
/// the label.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregate {
    /// The version.
    pub version: String,
    /// The kind.
    pub kind: Kind,
    /// Thumbs direction.
    pub up: Option<bool>,
    /// Label text.
    pub label: Option<String>,
    /// Events in the group.
    pub count: i64,
    /// Sum of normalized ratings.
    pub rating_sum: f64,
    /// Ratings at or above the positive threshold.
    pub rating_positive: i64,
    /// Earliest event, Unix ms.
    pub first_ms: i64,
    /// Latest event, Unix ms.
    pub last_ms: i64,
}

/// The statistics groups and the interaction count of each version.
pub type StatsRows = (Vec<Aggregate>, Vec<(String, i64)>);

/// A feedback event with its interaction, for datasets.
#[derive(Debug, Clone)]
pub struct JoinedFeedback {
    /// The feedback.
    pub feedback: Feedback,
    /// Its interaction, when one was captured.
    pub interaction: Option<Interaction>,
}

/// A stored feedback event and its position in the store.
#[derive(Debug, Clone)]
pub struct StoredFeedback {
    /// Position (increasing).
    pub seq: i64,
    /// The event.
    pub feedback: Feedback,
}

/// Files are stored in chunks of this many bytes (the last one shorter).
pub const CHUNK_BYTES: usize = 1024 * 1024;

/// A file of a dataset snapshot, to store.
#[derive(Debug, Clone)]
pub struct DatasetFile {
    /// The file name (`sft.jsonl`, `SHA256SUMS`, ...).
    pub name: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// What the store knows of a snapshot's file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFile {
    /// sha256 of the bytes, hex.
    pub sha256: String,
    /// Length in bytes.
    pub size: i64,
}

/// The rows a file becomes: its digest and length, and its chunks numbered from 0.
fn file_rows(file: &DatasetFile) -> (String, i64, impl Iterator<Item = (i64, &[u8])>) {
    let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&file.bytes));
    let chunks = file.bytes.chunks(CHUNK_BYTES).enumerate().map(|(k, c)| (k as i64, c));
    (sha256, file.bytes.len() as i64, chunks)
}

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
                blocking(move || s.delete_where("time_ms < ?1", rusqlite::params![before_ms])).await
            }
            Store::Postgres(p) => p.delete_where("time_ms < $1", &[&before_ms]).await,
        }
    }

    /// Deletes every event of a user or session key; returns how many.
    pub async fn delete_subject(&self, key: &str) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => {
                let (s, key) = (s.clone(), key.to_string());
                blocking(move || s.delete_where("subject = ?1 OR session = ?1", rusqlite::params![key])).await
            }
            Store::Postgres(p) => p.delete_where("subject = $1 OR session = $1", &[&key]).await,
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

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".to_string())
}

/// The stored body of a feedback event: everything but the indexed columns.
fn feedback_body(f: &Feedback) -> String {
    to_json(&serde_json::json!({
        "value": f.value,
        "prompt": f.prompt,
        "answer": f.answer,
        "metadata": f.metadata,
    }))
}

#[allow(clippy::too_many_arguments, reason = "one argument per stored column")]
fn feedback_from_row(
    id: String,
    namespace: Option<String>,
    deployment: Option<String>,
    version: Option<String>,
    interaction_id: Option<String>,
    body: &str,
    subject: Option<String>,
    session: Option<String>,
    time_ms: i64,
) -> Result<Feedback, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt { id: id.clone(), reason };
    let v: Value = serde_json::from_str(body).map_err(|e| corrupt(e.to_string()))?;
    let value =
        serde_json::from_value(v.get("value").cloned().unwrap_or(Value::Null)).map_err(|e| corrupt(e.to_string()))?;
    let prompt =
        serde_json::from_value(v.get("prompt").cloned().unwrap_or(Value::Null)).map_err(|e| corrupt(e.to_string()))?;
    let answer = v.get("answer").and_then(Value::as_str).map(str::to_string);
    let metadata = v.get("metadata").and_then(Value::as_object).cloned();
    Ok(Feedback {
        id,
        namespace,
        deployment,
        version,
        interaction_id,
        value,
        prompt,
        answer,
        subject,
        session,
        metadata,
        time_ms,
        hash: [0; 32],
    })
}

fn interaction_from_row(
    id: String,
    namespace: String,
    deployment: String,
    version: String,
    prompt: &str,
    answer: String,
    time_ms: i64,
) -> Result<Interaction, StoreError> {
    let prompt =
        serde_json::from_str(prompt).map_err(|e| StoreError::Corrupt { id: id.clone(), reason: e.to_string() })?;
    Ok(Interaction {
        id,
        namespace,
        deployment,
        version,
        prompt,
        answer,
        latency_ms: None,
        subject: None,
        session: None,
        metadata: None,
        time_ms,
        hash: [0; 32],
    })
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS interactions (
    seq {SEQ},
    id TEXT NOT NULL UNIQUE,
    hash {BLOB} NOT NULL,
    namespace TEXT NOT NULL,
    deployment TEXT NOT NULL,
    version TEXT NOT NULL,
    prompt TEXT NOT NULL,
    answer TEXT NOT NULL,
    latency_ms BIGINT,
    subject TEXT,
    session TEXT,
    metadata TEXT,
    time_ms BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS interactions_by_deployment ON interactions (namespace, deployment, time_ms);
CREATE INDEX IF NOT EXISTS interactions_by_seq ON interactions (namespace, deployment, seq);
CREATE INDEX IF NOT EXISTS interactions_by_subject ON interactions (subject);
CREATE INDEX IF NOT EXISTS interactions_by_session ON interactions (session);
CREATE INDEX IF NOT EXISTS interactions_by_time ON interactions (time_ms);
CREATE TABLE IF NOT EXISTS feedback (
    seq {SEQ},
    id TEXT NOT NULL UNIQUE,
    hash {BLOB} NOT NULL,
    namespace TEXT,
    deployment TEXT,
    version TEXT,
    interaction_id TEXT,
    kind TEXT NOT NULL,
    up BOOLEAN,
    rating DOUBLE PRECISION,
    label TEXT,
    body TEXT NOT NULL,
    subject TEXT,
    session TEXT,
    time_ms BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_by_deployment ON feedback (namespace, deployment, time_ms);
CREATE INDEX IF NOT EXISTS feedback_by_seq ON feedback (namespace, deployment, seq);
CREATE INDEX IF NOT EXISTS feedback_by_interaction ON feedback (interaction_id);
CREATE INDEX IF NOT EXISTS feedback_by_subject ON feedback (subject);
CREATE INDEX IF NOT EXISTS feedback_by_session ON feedback (session);
CREATE INDEX IF NOT EXISTS feedback_by_time ON feedback (time_ms);
CREATE TABLE IF NOT EXISTS datasets (
    id TEXT PRIMARY KEY,
    namespace TEXT NOT NULL,
    deployment TEXT NOT NULL,
    manifest TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS dataset_files (
    dataset_id TEXT NOT NULL,
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size BIGINT NOT NULL,
    PRIMARY KEY (dataset_id, name)
);
CREATE TABLE IF NOT EXISTS dataset_chunks (
    dataset_id TEXT NOT NULL,
    name TEXT NOT NULL,
    part BIGINT NOT NULL,
    bytes {BLOB} NOT NULL,
    PRIMARY KEY (dataset_id, name, part)
);
";

// Dataset snapshots: each query is written once, with PostgreSQL's `$n` placeholders, and run on
// SQLite through `sqlite_sql` (which makes them `?n`).

/// Records a snapshot; does nothing when its id is stored already.
const INSERT_DATASET: &str = "INSERT INTO datasets (id, namespace, deployment, manifest) VALUES ($1, $2, $3, $4)
     ON CONFLICT (id) DO NOTHING";
/// A snapshot's manifest.
const SELECT_DATASET: &str = "SELECT manifest FROM datasets WHERE id = $1";
/// How many files of a snapshot are stored.
const COUNT_DATASET_FILES: &str = "SELECT COUNT(*) FROM dataset_files WHERE dataset_id = $1";
/// One file of a snapshot: its digest and length.
const INSERT_DATASET_FILE: &str = "INSERT INTO dataset_files (dataset_id, name, sha256, size) VALUES ($1, $2, $3, $4)
     ON CONFLICT (dataset_id, name) DO NOTHING";
/// One chunk of a file's bytes.
const INSERT_DATASET_CHUNK: &str = "INSERT INTO dataset_chunks (dataset_id, name, part, bytes) VALUES ($1, $2, $3, $4)
     ON CONFLICT (dataset_id, name, part) DO NOTHING";
/// A file's digest and length.
const SELECT_DATASET_FILE: &str = "SELECT sha256, size FROM dataset_files WHERE dataset_id = $1 AND name = $2";
/// One chunk of a file.
const SELECT_DATASET_CHUNK: &str = "SELECT bytes FROM dataset_chunks WHERE dataset_id = $1 AND name = $2 AND part = $3";

/// A query written for PostgreSQL (`$1`), as SQLite numbers its parameters (`?1`).
fn sqlite_sql(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

/// The embedded store.
pub struct Sqlite {
    path: PathBuf,
    writer: Mutex<rusqlite::Connection>,
    readers: Mutex<Vec<rusqlite::Connection>>,
}

impl Sqlite {
    fn connection(path: &Path) -> Result<rusqlite::Connection, StoreError> {
        let conn = rusqlite::Connection::open(path).map_err(sq("open"))?;
        // WAL lets readers run beside the writer; FULL makes every commit durable (fsync).
        conn.pragma_update(None, "journal_mode", "WAL").map_err(sq("journal_mode"))?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(sq("synchronous"))?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(sq("busy_timeout"))?;
        Ok(conn)
    }

    fn open(path: &Path) -> Result<Sqlite, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Io { path: dir.to_path_buf(), source })?;
        }
        let writer = Self::connection(path)?;
        let schema = SCHEMA.replace("{SEQ}", "INTEGER PRIMARY KEY AUTOINCREMENT").replace("{BLOB}", "BLOB");
        writer.execute_batch(&schema).map_err(sq("create tables"))?;
        Ok(Sqlite { path: path.to_path_buf(), writer: Mutex::new(writer), readers: Mutex::new(Vec::new()) })
    }

    fn read<T>(&self, f: impl FnOnce(&rusqlite::Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let pooled = self.readers.lock().map_err(|_| StoreError::Task("reader pool poisoned".into()))?.pop();
        let conn = match pooled {
            Some(c) => c,
            None => Self::connection(&self.path)?,
        };
        let result = f(&conn);
        if let Ok(mut pool) = self.readers.lock()
            && pool.len() < 8
        {
            pool.push(conn);
        }
        result
    }

    fn commit(&self, events: &[Event]) -> Result<Vec<Outcome>, StoreError> {
        let mut conn = self.writer.lock().map_err(|_| StoreError::Task("writer poisoned".into()))?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(sq("begin"))?;
        let mut outcomes = Vec::with_capacity(events.len());
        for event in events {
            outcomes.push(match event {
                Event::Interaction(i) => Self::insert_interaction(&tx, i)?,
                Event::Feedback(f) => Self::insert_feedback(&tx, f)?,
            });
        }
        tx.commit().map_err(sq("commit"))?;
        Ok(outcomes)
    }

    fn existing(tx: &rusqlite::Transaction<'_>, table: &str, id: &str, hash: &[u8; 32]) -> Result<Outcome, StoreError> {
        let stored: Option<Vec<u8>> = tx
            .query_row(&format!("SELECT hash FROM {table} WHERE id = ?1"), [id], |r| r.get(0))
            .optional()
            .map_err(sq("read hash"))?;
        Ok(if stored.as_deref() == Some(&hash[..]) { Outcome::Duplicate } else { Outcome::Conflict })
    }

    fn insert_interaction(tx: &rusqlite::Transaction<'_>, i: &Interaction) -> Result<Outcome, StoreError> {
        let n = tx
            .execute(
                "INSERT INTO interactions (id, hash, namespace, deployment, version, prompt, answer, latency_ms, subject, session, metadata, time_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) ON CONFLICT (id) DO NOTHING",
                rusqlite::params![
                    i.id,
                    &i.hash[..],
                    i.namespace,
                    i.deployment,
                    i.version,
                    to_json(&i.prompt),
                    i.answer,
                    i.latency_ms.map(|v| v as i64),
                    i.subject,
                    i.session,
                    i.metadata.as_ref().map(to_json),
                    i.time_ms
                ],
            )
            .map_err(sq("insert interaction"))?;
        if n == 0 {
            return Self::existing(tx, "interactions", &i.id, &i.hash);
        }
        // Feedback that arrived before its interaction gets its deployment and version now.
        tx.execute(
            "UPDATE feedback SET namespace = ?2, deployment = ?3, version = ?4
             WHERE interaction_id = ?1 AND (version IS NULL OR deployment IS NULL)",
            rusqlite::params![i.id, i.namespace, i.deployment, i.version],
        )
        .map_err(sq("join early feedback"))?;
        Ok(Outcome::Created)
    }

    fn insert_feedback(tx: &rusqlite::Transaction<'_>, f: &Feedback) -> Result<Outcome, StoreError> {
        let (mut ns, mut dep, mut ver) = (f.namespace.clone(), f.deployment.clone(), f.version.clone());
        if let Some(iid) = &f.interaction_id
            && ver.is_none()
        {
            let found: Option<(String, String, String)> = tx
                .query_row("SELECT namespace, deployment, version FROM interactions WHERE id = ?1", [iid], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()
                .map_err(sq("find interaction"))?;
            if let Some((n, d, v)) = found {
                ns = Some(n);
                dep = Some(d);
                ver = Some(v);
            }
        }
        let n = tx
            .execute(
                "INSERT INTO feedback (id, hash, namespace, deployment, version, interaction_id, kind, up, rating, label, body, subject, session, time_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14) ON CONFLICT (id) DO NOTHING",
                rusqlite::params![
                    f.id,
                    &f.hash[..],
                    ns,
                    dep,
                    ver,
                    f.interaction_id,
                    f.value.kind().as_str(),
                    thumbs_up(f),
                    f.value.normalized_rating(),
                    f.value.label(),
                    feedback_body(f),
                    f.subject,
                    f.session,
                    f.time_ms
                ],
            )
            .map_err(sq("insert feedback"))?;
        if n == 0 {
            return Self::existing(tx, "feedback", &f.id, &f.hash);
        }
        Ok(Outcome::Created)
    }

    fn aggregates(
        &self,
        namespace: &str,
        deployment: &str,
        from_ms: i64,
        to_ms: i64,
        threshold: f64,
    ) -> Result<StatsRows, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT version, kind, up, label, COUNT(*), COALESCE(SUM(rating), 0.0),
                            SUM(CASE WHEN rating >= ?5 THEN 1 ELSE 0 END), MIN(time_ms), MAX(time_ms)
                     FROM feedback
                     WHERE namespace = ?1 AND deployment = ?2 AND time_ms >= ?3 AND time_ms <= ?4 AND version IS NOT NULL
                     GROUP BY version, kind, up, label",
                )
                .map_err(sq("prepare statistics"))?;
            let rows = stmt
                .query_map(rusqlite::params![namespace, deployment, from_ms, to_ms, threshold], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<bool>>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, f64>(5)?,
                        r.get::<_, Option<i64>>(6)?,
                        r.get::<_, i64>(7)?,
                        r.get::<_, i64>(8)?,
                    ))
                })
                .map_err(sq("statistics"))?;
            let mut out = Vec::new();
            for row in rows {
                let (version, kind, up, label, count, rating_sum, pos, first_ms, last_ms) = row.map_err(sq("statistics row"))?;
                let kind = Kind::parse(&kind).ok_or_else(|| StoreError::Corrupt { id: version.clone(), reason: format!("kind {kind}") })?;
                out.push(Aggregate {
                    version,
                    kind,
                    up,
                    label,
                    count,
                    rating_sum,
                    rating_positive: pos.unwrap_or(0),
                    first_ms,
                    last_ms,
                });
            }
            let mut stmt = conn
                .prepare_cached(
                    "SELECT version, COUNT(*) FROM interactions
                     WHERE namespace = ?1 AND deployment = ?2 AND time_ms >= ?3 AND time_ms <= ?4 GROUP BY version",
                )
                .map_err(sq("prepare interaction counts"))?;
            let counts = stmt
                .query_map(rusqlite::params![namespace, deployment, from_ms, to_ms], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(sq("interaction counts"))?
                .collect::<Result<Vec<(String, i64)>, _>>()
                .map_err(sq("interaction counts"))?;
            Ok((out, counts))
        })
    }

    fn cursor(&self, namespace: &str, deployment: &str) -> Result<i64, StoreError> {
        self.read(|conn| {
            conn.query_row(
                "SELECT (SELECT COALESCE(MAX(seq), 0) FROM feedback WHERE namespace = ?1 AND deployment = ?2)
                      + (SELECT COALESCE(MAX(seq), 0) FROM interactions WHERE namespace = ?1 AND deployment = ?2)",
                [namespace, deployment],
                |r| r.get(0),
            )
            .map_err(sq("cursor"))
        })
    }

    fn joined_feedback(
        &self,
        namespace: &str,
        deployment: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<JoinedFeedback>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT f.id, f.namespace, f.deployment, f.version, f.interaction_id, f.body, f.time_ms,
                            i.id, i.version, i.prompt, i.answer, i.time_ms
                     FROM feedback f LEFT JOIN interactions i ON i.id = f.interaction_id
                     WHERE f.namespace = ?1 AND f.deployment = ?2 AND f.time_ms >= ?3 AND f.time_ms <= ?4 AND f.version IS NOT NULL
                     ORDER BY f.time_ms, f.id",
                )
                .map_err(sq("prepare dataset rows"))?;
            let mut rows = stmt.query(rusqlite::params![namespace, deployment, from_ms, to_ms]).map_err(sq("dataset rows"))?;
            let mut out = Vec::new();
            while let Some(r) = rows.next().map_err(sq("dataset row"))? {
                let get = |e| StoreError::Sqlite { context: "dataset column", source: e };
                let body: String = r.get(5).map_err(get)?;
                let feedback = feedback_from_row(
                    r.get(0).map_err(get)?,
                    r.get(1).map_err(get)?,
                    r.get(2).map_err(get)?,
                    r.get(3).map_err(get)?,
                    r.get(4).map_err(get)?,
                    &body,
                    None,
                    None,
                    r.get(6).map_err(get)?,
                )?;
                let interaction = match r.get::<_, Option<String>>(7).map_err(get)? {
                    Some(iid) => {
                        let prompt: String = r.get(9).map_err(get)?;
                        Some(interaction_from_row(
                            iid,
                            namespace.to_string(),
                            deployment.to_string(),
                            r.get(8).map_err(get)?,
                            &prompt,
                            r.get(10).map_err(get)?,
                            r.get(11).map_err(get)?,
                        )?)
                    }
                    None => None,
                };
                out.push(JoinedFeedback { feedback, interaction });
            }
            Ok(out)
        })
    }

    fn feedback_after(
        &self,
        namespace: &str,
        deployment: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<StoredFeedback>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT seq, id, namespace, deployment, version, interaction_id, body, subject, session, time_ms
                     FROM feedback WHERE namespace = ?1 AND deployment = ?2 AND seq > ?3 ORDER BY seq LIMIT ?4",
                )
                .map_err(sq("prepare feedback listing"))?;
            let mut rows =
                stmt.query(rusqlite::params![namespace, deployment, after, limit]).map_err(sq("feedback listing"))?;
            let mut out = Vec::new();
            while let Some(r) = rows.next().map_err(sq("feedback row"))? {
                let get = |e| StoreError::Sqlite { context: "feedback column", source: e };
                let body: String = r.get(6).map_err(get)?;
                let feedback = feedback_from_row(
                    r.get(1).map_err(get)?,
                    r.get(2).map_err(get)?,
                    r.get(3).map_err(get)?,
                    r.get(4).map_err(get)?,
                    r.get(5).map_err(get)?,
                    &body,
                    r.get(7).map_err(get)?,
                    r.get(8).map_err(get)?,
                    r.get(9).map_err(get)?,
                )?;
                out.push(StoredFeedback { seq: r.get(0).map_err(get)?, feedback });
            }
            Ok(out)
        })
    }

    fn delete_where(&self, clause: &str, params: impl rusqlite::Params + Clone) -> Result<u64, StoreError> {
        let mut conn = self.writer.lock().map_err(|_| StoreError::Task("writer poisoned".into()))?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(sq("begin"))?;
        let a = tx
            .execute(&format!("DELETE FROM feedback WHERE {clause}"), params.clone())
            .map_err(sq("delete feedback"))?;
        let b = tx
            .execute(&format!("DELETE FROM interactions WHERE {clause}"), params)
            .map_err(sq("delete interactions"))?;
        tx.commit().map_err(sq("commit"))?;
        Ok((a + b) as u64)
    }

    fn put_dataset(
        &self,
        id: &str,
        namespace: &str,
        deployment: &str,
        manifest: &str,
        files: &[DatasetFile],
    ) -> Result<bool, StoreError> {
        let mut conn = self.writer.lock().map_err(|_| StoreError::Task("writer poisoned".into()))?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(sq("begin"))?;
        let created = tx
            .execute(&sqlite_sql(INSERT_DATASET), rusqlite::params![id, namespace, deployment, manifest])
            .map_err(sq("insert dataset"))?
            > 0;
        let stored: i64 =
            tx.query_row(&sqlite_sql(COUNT_DATASET_FILES), [id], |r| r.get(0)).map_err(sq("count dataset files"))?;
        if stored == 0 {
            let mut file_insert = tx.prepare(&sqlite_sql(INSERT_DATASET_FILE)).map_err(sq("prepare dataset file"))?;
            let mut chunk_insert =
                tx.prepare(&sqlite_sql(INSERT_DATASET_CHUNK)).map_err(sq("prepare dataset chunk"))?;
            for file in files {
                let (sha256, size, chunks) = file_rows(file);
                file_insert
                    .execute(rusqlite::params![id, file.name, sha256, size])
                    .map_err(sq("insert dataset file"))?;
                for (part, bytes) in chunks {
                    chunk_insert
                        .execute(rusqlite::params![id, file.name, part, bytes])
                        .map_err(sq("insert dataset chunk"))?;
                }
            }
        }
        tx.commit().map_err(sq("commit"))?;
        Ok(created)
    }

    fn get_dataset(&self, id: &str) -> Result<Option<String>, StoreError> {
        self.read(|conn| {
            conn.query_row(&sqlite_sql(SELECT_DATASET), [id], |r| r.get(0)).optional().map_err(sq("read dataset"))
        })
    }

    fn dataset_file(&self, id: &str, name: &str) -> Result<Option<StoredFile>, StoreError> {
        self.read(|conn| {
            conn.query_row(&sqlite_sql(SELECT_DATASET_FILE), [id, name], |r| {
                Ok(StoredFile { sha256: r.get(0)?, size: r.get(1)? })
            })
            .optional()
            .map_err(sq("read dataset file"))
        })
    }

    fn dataset_chunk(&self, id: &str, name: &str, part: i64) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|conn| {
            conn.query_row(&sqlite_sql(SELECT_DATASET_CHUNK), rusqlite::params![id, name, part], |r| r.get(0))
                .optional()
                .map_err(sq("read dataset chunk"))
        })
    }

    fn ping(&self) -> Result<(), StoreError> {
        self.read(|conn| conn.query_row("SELECT 1", [], |_| Ok(())).map_err(sq("ping")))
    }

    fn size_bytes(&self) -> Result<i64, StoreError> {
        let mut total = 0i64;
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.path.clone().into_os_string();
            p.push(suffix);
            if let Ok(meta) = std::fs::metadata(&p) {
                total += meta.len() as i64;
            }
        }
        Ok(total)
    }
}

fn thumbs_up(f: &Feedback) -> Option<bool> {
    match f.value {
        super::event::FeedbackValue::Thumbs { up } => Some(up),
        _ => None,
    }
}

/// PostgreSQL, shared by several collector replicas.
pub struct Postgres {
    url: String,
    writer: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
    reader: tokio::sync::Mutex<Option<Arc<tokio_postgres::Client>>>,
}

async fn pg_connect(url: &str) -> Result<tokio_postgres::Client, StoreError> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.map_err(pg("connect"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "postgres connection ended");
        }
    });
    Ok(client)
}

impl Postgres {
    async fn connect(url: &str) -> Result<Postgres, StoreError> {
        let client = pg_connect(url).await?;
        let schema = SCHEMA.replace("{SEQ}", "BIGSERIAL PRIMARY KEY").replace("{BLOB}", "BYTEA");
        // Replicas starting together would race on CREATE ... IF NOT EXISTS; a lock orders them.
        client
            .batch_execute(&format!("BEGIN; SELECT pg_advisory_xact_lock(7326451); {schema} COMMIT;"))
            .await
            .map_err(pg("create tables"))?;
        Ok(Postgres {
            url: url.to_string(),
            writer: tokio::sync::Mutex::new(Some(client)),
            reader: tokio::sync::Mutex::new(None),
        })
    }

    async fn reader(&self) -> Result<Arc<tokio_postgres::Client>, StoreError> {
        let mut slot = self.reader.lock().await;
        if let Some(c) = slot.as_ref()
            && !c.is_closed()
        {
            return Ok(c.clone());
        }
        let c = Arc::new(pg_connect(&self.url).await?);
        *slot = Some(c.clone());
        Ok(c)
    }

    async fn commit(&self, events: &[Event]) -> Result<Vec<Outcome>, StoreError> {
        let mut slot = self.writer.lock().await;
        if slot.as_ref().is_none_or(tokio_postgres::Client::is_closed) {
            *slot = Some(pg_connect(&self.url).await?);
        }
        let Some(client) = slot.as_mut() else {
            return Err(StoreError::Task("no writer connection".into()));
        };
        let result = Self::commit_on(client, events).await;
        if result.is_err() && client.is_closed() {
            *slot = None;
        }
        result
    }

    /// One statement per table for the whole batch (rows passed as arrays and `UNNEST`ed), so
    /// a commit of a thousand events costs a handful of round trips, not a thousand.
    async fn commit_on(client: &mut tokio_postgres::Client, events: &[Event]) -> Result<Vec<Outcome>, StoreError> {
        let tx = client.transaction().await.map_err(pg("begin"))?;
        let mut outcomes = vec![Outcome::Conflict; events.len()];
        let interactions: Vec<(usize, &Interaction)> = events
            .iter()
            .enumerate()
            .filter_map(|(k, e)| if let Event::Interaction(i) = e { Some((k, i)) } else { None })
            .collect();
        let feedback: Vec<(usize, &Feedback)> = events
            .iter()
            .enumerate()
            .filter_map(|(k, e)| if let Event::Feedback(f) = e { Some((k, f)) } else { None })
            .collect();

        if !interactions.is_empty() {
            let ids: Vec<&str> = interactions.iter().map(|(_, i)| i.id.as_str()).collect();
            let hashes: Vec<&[u8]> = interactions.iter().map(|(_, i)| &i.hash[..]).collect();
            let namespaces: Vec<&str> = interactions.iter().map(|(_, i)| i.namespace.as_str()).collect();
            let deployments: Vec<&str> = interactions.iter().map(|(_, i)| i.deployment.as_str()).collect();
            let versions: Vec<&str> = interactions.iter().map(|(_, i)| i.version.as_str()).collect();
            let prompts: Vec<String> = interactions.iter().map(|(_, i)| to_json(&i.prompt)).collect();
            let answers: Vec<&str> = interactions.iter().map(|(_, i)| i.answer.as_str()).collect();
            let latencies: Vec<Option<i64>> =
                interactions.iter().map(|(_, i)| i.latency_ms.map(|v| v as i64)).collect();
            let subjects: Vec<Option<&str>> = interactions.iter().map(|(_, i)| i.subject.as_deref()).collect();
            let sessions: Vec<Option<&str>> = interactions.iter().map(|(_, i)| i.session.as_deref()).collect();
            let metadata: Vec<Option<String>> =
                interactions.iter().map(|(_, i)| i.metadata.as_ref().map(to_json)).collect();
            let times: Vec<i64> = interactions.iter().map(|(_, i)| i.time_ms).collect();
            let created = tx
                .query(
                    "INSERT INTO interactions (id, hash, namespace, deployment, version, prompt, answer, latency_ms, subject, session, metadata, time_ms)
                     SELECT * FROM UNNEST($1::text[], $2::bytea[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                                          $8::bigint[], $9::text[], $10::text[], $11::text[], $12::bigint[])
                     ON CONFLICT (id) DO NOTHING RETURNING id",
                    &[&ids, &hashes, &namespaces, &deployments, &versions, &prompts, &answers, &latencies, &subjects, &sessions, &metadata, &times],
                )
                .await
                .map_err(pg("insert interactions"))?;
            let created: Vec<String> =
                created.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>().map_err(pg("created ids"))?;
            let keyed: Vec<(usize, &str, &[u8; 32])> =
                interactions.iter().map(|(k, i)| (*k, i.id.as_str(), &i.hash)).collect();
            Self::settle(&tx, "interactions", &keyed, &created, &mut outcomes).await?;
            if !created.is_empty() {
                // Feedback that arrived before its interaction gets its deployment and version now.
                tx.execute(
                    "UPDATE feedback f SET namespace = i.namespace, deployment = i.deployment, version = i.version
                     FROM interactions i
                     WHERE i.id = ANY($1) AND f.interaction_id = i.id AND (f.version IS NULL OR f.deployment IS NULL)",
                    &[&created],
                )
                .await
                .map_err(pg("join early feedback"))?;
            }
        }

        if !feedback.is_empty() {
            // Deployment and version from the interaction, where only its id is given.
            let wanted: Vec<&str> = feedback
                .iter()
                .filter(|(_, f)| f.version.is_none())
                .filter_map(|(_, f)| f.interaction_id.as_deref())
                .collect();
            let mut known: std::collections::HashMap<String, (String, String, String)> =
                std::collections::HashMap::new();
            if !wanted.is_empty() {
                let rows = tx
                    .query("SELECT id, namespace, deployment, version FROM interactions WHERE id = ANY($1)", &[&wanted])
                    .await
                    .map_err(pg("find interactions"))?;
                for r in rows {
                    let g = || pg("interaction column");
                    known.insert(
                        r.try_get(0).map_err(g())?,
                        (r.try_get(1).map_err(g())?, r.try_get(2).map_err(g())?, r.try_get(3).map_err(g())?),
                    );
                }
            }
            let mut namespaces: Vec<Option<String>> = Vec::with_capacity(feedback.len());
            let mut deployments: Vec<Option<String>> = Vec::with_capacity(feedback.len());
            let mut versions: Vec<Option<String>> = Vec::with_capacity(feedback.len());
            for (_, f) in &feedback {
                let joined =
                    if f.version.is_none() { f.interaction_id.as_ref().and_then(|i| known.get(i)) } else { None };
                match joined {
                    Some((n, d, v)) => {
                        namespaces.push(Some(n.clone()));
                        deployments.push(Some(d.clone()));
                        versions.push(Some(v.clone()));
                    }
                    None => {
                        namespaces.push(f.namespace.clone());
                        deployments.push(f.deployment.clone());
                        versions.push(f.version.clone());
                    }
                }
            }
            let ids: Vec<&str> = feedback.iter().map(|(_, f)| f.id.as_str()).collect();
            let hashes: Vec<&[u8]> = feedback.iter().map(|(_, f)| &f.hash[..]).collect();
            let interaction_ids: Vec<Option<&str>> =
                feedback.iter().map(|(_, f)| f.interaction_id.as_deref()).collect();
            let kinds: Vec<&str> = feedback.iter().map(|(_, f)| f.value.kind().as_str()).collect();
            let ups: Vec<Option<bool>> = feedback.iter().map(|(_, f)| thumbs_up(f)).collect();
            let ratings: Vec<Option<f64>> = feedback.iter().map(|(_, f)| f.value.normalized_rating()).collect();
            let labels: Vec<Option<&str>> = feedback.iter().map(|(_, f)| f.value.label()).collect();
            let bodies: Vec<String> = feedback.iter().map(|(_, f)| feedback_body(f)).collect();
            let subjects: Vec<Option<&str>> = feedback.iter().map(|(_, f)| f.subject.as_deref()).collect();
            let sessions: Vec<Option<&str>> = feedback.iter().map(|(_, f)| f.session.as_deref()).collect();
            let times: Vec<i64> = feedback.iter().map(|(_, f)| f.time_ms).collect();
            let created = tx
                .query(
                    "INSERT INTO feedback (id, hash, namespace, deployment, version, interaction_id, kind, up, rating, label, body, subject, session, time_ms)
                     SELECT * FROM UNNEST($1::text[], $2::bytea[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                                          $8::boolean[], $9::float8[], $10::text[], $11::text[], $12::text[], $13::text[], $14::bigint[])
                     ON CONFLICT (id) DO NOTHING RETURNING id",
                    &[&ids, &hashes, &namespaces, &deployments, &versions, &interaction_ids, &kinds, &ups, &ratings, &labels, &bodies, &subjects, &sessions, &times],
                )
                .await
                .map_err(pg("insert feedback"))?;
            let created: Vec<String> =
                created.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>().map_err(pg("created ids"))?;
            let keyed: Vec<(usize, &str, &[u8; 32])> =
                feedback.iter().map(|(k, f)| (*k, f.id.as_str(), &f.hash)).collect();
            Self::settle(&tx, "feedback", &keyed, &created, &mut outcomes).await?;
        }
        tx.commit().await.map_err(pg("commit"))?;
        Ok(outcomes)
    }

    /// Outcomes of one table's events: the first event of each created id is `Created`; every
    /// other is a `Duplicate` or a `Conflict` by the stored hash.
    async fn settle(
        tx: &tokio_postgres::Transaction<'_>,
        table: &str,
        events: &[(usize, &str, &[u8; 32])],
        created: &[String],
        outcomes: &mut [Outcome],
    ) -> Result<(), StoreError> {
        let mut fresh: std::collections::HashSet<&str> = created.iter().map(String::as_str).collect();
        let mut rest = Vec::new();
        for (k, id, hash) in events {
            if fresh.remove(id) {
                outcomes[*k] = Outcome::Created;
            } else {
                rest.push((*k, *id, *hash));
            }
        }
        if rest.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = rest.iter().map(|(_, id, _)| *id).collect();
        let rows = tx
            .query(&format!("SELECT id, hash FROM {table} WHERE id = ANY($1)"), &[&ids])
            .await
            .map_err(pg("read hashes"))?;
        let mut stored: std::collections::HashMap<String, Vec<u8>> = std::collections::HashMap::new();
        for r in rows {
            stored.insert(r.try_get(0).map_err(pg("hash column"))?, r.try_get(1).map_err(pg("hash column"))?);
        }
        for (k, id, hash) in rest {
            outcomes[k] = if stored.get(id).map(Vec::as_slice) == Some(&hash[..]) {
                Outcome::Duplicate
            } else {
                Outcome::Conflict
            };
        }
        Ok(())
    }

    async fn aggregates(
        &self,
        namespace: &str,
        deployment: &str,
        from_ms: i64,
        to_ms: i64,
        threshold: f64,
    ) -> Result<StatsRows, StoreError> {
        let c = self.reader().await?;
        let rows = c
            .query(
                "SELECT version, kind, up, label, COUNT(*), COALESCE(SUM(rating), 0.0)::DOUBLE PRECISION,
                        SUM(CASE WHEN rating >= $5 THEN 1 ELSE 0 END)::BIGINT, MIN(time_ms), MAX(time_ms)
                 FROM feedback
                 WHERE namespace = $1 AND deployment = $2 AND time_ms >= $3 AND time_ms <= $4 AND version IS NOT NULL
                 GROUP BY version, kind, up, label",
                &[&namespace, &deployment, &from_ms, &to_ms, &threshold],
            )
            .await
            .map_err(pg("statistics"))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let col = pg("statistics column");
            let version: String = r.try_get(0).map_err(col)?;
            let kind: String = r.try_get(1).map_err(pg("statistics column"))?;
            let kind = Kind::parse(&kind)
                .ok_or_else(|| StoreError::Corrupt { id: version.clone(), reason: format!("kind {kind}") })?;
            out.push(Aggregate {
                version,
                kind,
                up: r.try_get(2).map_err(pg("statistics column"))?,
                label: r.try_get(3).map_err(pg("statistics column"))?,
                count: r.try_get(4).map_err(pg("statistics column"))?,
                rating_sum: r.try_get(5).map_err(pg("statistics column"))?,
                rating_positive: r.try_get::<_, Option<i64>>(6).map_err(pg("statistics column"))?.unwrap_or(0),
                first_ms: r.try_get(7).map_err(pg("statistics column"))?,
                last_ms: r.try_get(8).map_err(pg("statistics column"))?,
            });
        }
        let rows = c
            .query(
                "SELECT version, COUNT(*) FROM interactions
                 WHERE namespace = $1 AND deployment = $2 AND time_ms >= $3 AND time_ms <= $4 GROUP BY version",
                &[&namespace, &deployment, &from_ms, &to_ms],
            )
            .await
            .map_err(pg("interaction counts"))?;
        let counts = rows
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<Vec<(String, i64)>, tokio_postgres::Error>>()
            .map_err(pg("interaction counts"))?;
        Ok((out, counts))
    }

    async fn cursor(&self, namespace: &str, deployment: &str) -> Result<i64, StoreError> {
        let c = self.reader().await?;
        let row = c
            .query_one(
                "SELECT (SELECT COALESCE(MAX(seq), 0) FROM feedback WHERE namespace = $1 AND deployment = $2)
                      + (SELECT COALESCE(MAX(seq), 0) FROM interactions WHERE namespace = $1 AND deployment = $2)",
                &[&namespace, &deployment],
            )
            .await
            .map_err(pg("cursor"))?;
        row.try_get(0).map_err(pg("cursor"))
    }

    async fn joined_feedback(
        &self,
        namespace: &str,
        deployment: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<JoinedFeedback>, StoreError> {
        let c = self.reader().await?;
        let rows = c
            .query(
                "SELECT f.id, f.namespace, f.deployment, f.version, f.interaction_id, f.body, f.time_ms,
                        i.id, i.version, i.prompt, i.answer, i.time_ms
                 FROM feedback f LEFT JOIN interactions i ON i.id = f.interaction_id
                 WHERE f.namespace = $1 AND f.deployment = $2 AND f.time_ms >= $3 AND f.time_ms <= $4 AND f.version IS NOT NULL
                 ORDER BY f.time_ms, f.id",
                &[&namespace, &deployment, &from_ms, &to_ms],
            )
            .await
            .map_err(pg("dataset rows"))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let get = pg("dataset column");
            let body: String = r.try_get(5).map_err(get)?;
            let g = || pg("dataset column");
            let feedback = feedback_from_row(
                r.try_get(0).map_err(g())?,
                r.try_get(1).map_err(g())?,
                r.try_get(2).map_err(g())?,
                r.try_get(3).map_err(g())?,
                r.try_get(4).map_err(g())?,
                &body,
                None,
                None,
                r.try_get(6).map_err(g())?,
            )?;
            let interaction = match r.try_get::<_, Option<String>>(7).map_err(g())? {
                Some(iid) => {
                    let prompt: String = r.try_get(9).map_err(g())?;
                    Some(interaction_from_row(
                        iid,
                        namespace.to_string(),
                        deployment.to_string(),
                        r.try_get(8).map_err(g())?,
                        &prompt,
                        r.try_get(10).map_err(g())?,
                        r.try_get(11).map_err(g())?,
                    )?)
                }
                None => None,
            };
            out.push(JoinedFeedback { feedback, interaction });
        }
        Ok(out)
    }

    async fn feedback_after(
        &self,
        namespace: &str,
        deployment: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<StoredFeedback>, StoreError> {
        let c = self.reader().await?;
        let rows = c
            .query(
                "SELECT seq, id, namespace, deployment, version, interaction_id, body, subject, session, time_ms
                 FROM feedback WHERE namespace = $1 AND deployment = $2 AND seq > $3 ORDER BY seq LIMIT $4",
                &[&namespace, &deployment, &after, &limit],
            )
            .await
            .map_err(pg("feedback listing"))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let g = || pg("feedback column");
            let body: String = r.try_get(6).map_err(g())?;
            let feedback = feedback_from_row(
                r.try_get(1).map_err(g())?,
                r.try_get(2).map_err(g())?,
                r.try_get(3).map_err(g())?,
                r.try_get(4).map_err(g())?,
                r.try_get(5).map_err(g())?,
                &body,
                r.try_get(7).map_err(g())?,
                r.try_get(8).map_err(g())?,
                r.try_get(9).map_err(g())?,
            )?;
            out.push(StoredFeedback { seq: r.try_get(0).map_err(g())?, feedback });
        }
        Ok(out)
    }

    async fn delete_where(
        &self,
        clause: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let mut slot = self.writer.lock().await;
        if slot.as_ref().is_none_or(tokio_postgres::Client::is_closed) {
            *slot = Some(pg_connect(&self.url).await?);
        }
        let Some(client) = slot.as_mut() else {
            return Err(StoreError::Task("no writer connection".into()));
        };
        let tx = client.transaction().await.map_err(pg("begin"))?;
        let a =
            tx.execute(&format!("DELETE FROM feedback WHERE {clause}"), params).await.map_err(pg("delete feedback"))?;
        let b = tx
            .execute(&format!("DELETE FROM interactions WHERE {clause}"), params)
            .await
            .map_err(pg("delete interactions"))?;
        tx.commit().await.map_err(pg("commit"))?;
        Ok(a + b)
    }

    /// On a connection of its own, so that writing tens of megabytes neither waits for nor
    /// delays the group commit.
    async fn put_dataset(
        &self,
        id: &str,
        namespace: &str,
        deployment: &str,
        manifest: &str,
        files: &[DatasetFile],
    ) -> Result<bool, StoreError> {
        let mut client = pg_connect(&self.url).await?;
        let tx = client.transaction().await.map_err(pg("begin"))?;
        // A concurrent insert of the same id (another replica building the same rows) makes
        // this one wait for its commit, then do nothing: one snapshot, written once.
        let created = tx
            .execute(INSERT_DATASET, &[&id, &namespace, &deployment, &manifest])
            .await
            .map_err(pg("insert dataset"))?
            > 0;
        let stored: i64 = tx
            .query_one(COUNT_DATASET_FILES, &[&id])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(pg("count dataset files"))?;
        if stored == 0 {
            let file_insert = tx.prepare(INSERT_DATASET_FILE).await.map_err(pg("prepare dataset file"))?;
            let chunk_insert = tx.prepare(INSERT_DATASET_CHUNK).await.map_err(pg("prepare dataset chunk"))?;
            for file in files {
                let (sha256, size, chunks) = file_rows(file);
                tx.execute(&file_insert, &[&id, &file.name, &sha256, &size])
                    .await
                    .map_err(pg("insert dataset file"))?;
                for (part, bytes) in chunks {
                    tx.execute(&chunk_insert, &[&id, &file.name, &part, &bytes])
                        .await
                        .map_err(pg("insert dataset chunk"))?;
                }
            }
        }
        tx.commit().await.map_err(pg("commit"))?;
        Ok(created)
    }

    async fn get_dataset(&self, id: &str) -> Result<Option<String>, StoreError> {
        let c = self.reader().await?;
        let row = c.query_opt(SELECT_DATASET, &[&id]).await.map_err(pg("read dataset"))?;
        row.map(|r| r.try_get(0)).transpose().map_err(pg("dataset column"))
    }

    async fn dataset_file(&self, id: &str, name: &str) -> Result<Option<StoredFile>, StoreError> {
        let c = self.reader().await?;
        let row = c.query_opt(SELECT_DATASET_FILE, &[&id, &name]).await.map_err(pg("read dataset file"))?;
        row.map(|r| Ok(StoredFile { sha256: r.try_get(0)?, size: r.try_get(1)? }))
            .transpose()
            .map_err(pg("dataset file column"))
    }

    async fn dataset_chunk(&self, id: &str, name: &str, part: i64) -> Result<Option<Vec<u8>>, StoreError> {
        let c = self.reader().await?;
        let row = c.query_opt(SELECT_DATASET_CHUNK, &[&id, &name, &part]).await.map_err(pg("read dataset chunk"))?;
        row.map(|r| r.try_get(0)).transpose().map_err(pg("dataset chunk column"))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let c = self.reader().await?;
        c.query_one("SELECT 1", &[]).await.map_err(pg("ping"))?;
        Ok(())
    }

    async fn size_bytes(&self) -> Result<i64, StoreError> {
        let c = self.reader().await?;
        let row = c
            .query_one(
                "SELECT (pg_total_relation_size('feedback') + pg_total_relation_size('interactions') + pg_total_relation_size('datasets')
                         + pg_total_relation_size('dataset_files') + pg_total_relation_size('dataset_chunks'))::BIGINT",
                &[],
            )
            .await
            .map_err(pg("size"))?;
        row.try_get(0).map_err(pg("size"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_query_text_serves_both_stores() {
        assert_eq!(
            sqlite_sql("SELECT a FROM t WHERE x = $1 AND y = $12 AND z = '$'"),
            "SELECT a FROM t WHERE x = ?1 AND y = ?12 AND z = '$'"
        );
    }

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
