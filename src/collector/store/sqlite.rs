//! The embedded store: SQLite in WAL mode with `synchronous=FULL`, one writer connection (the
//! group commit's, also taken by erasure, retention and snapshot writes) and pooled readers.
//! Every statement is [`super::sql`]'s, run through [`sql::sqlite`].

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Params, TransactionBehavior};

use super::rows::{self, Columns, FromColumn, to_json};
use super::sql;
use super::types::{
    DatasetFile, JoinedFeedback, Outcome, StatsRows, StoreError, StoredFeedback, StoredFile, file_rows,
};
use crate::collector::event::{Event, Feedback, Interaction};

fn sq(context: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sqlite { context, source }
}

/// The embedded store.
pub struct Sqlite {
    path: PathBuf,
    writer: Mutex<rusqlite::Connection>,
    readers: Mutex<Vec<rusqlite::Connection>>,
}

/// Every row `sql` answers, each decoded by `decode`.
fn select<T>(
    conn: &rusqlite::Connection,
    sql: &str,
    params: impl Params,
    context: &'static str,
    decode: impl Fn(&rusqlite::Row<'_>) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut stmt = conn.prepare_cached(&sql::sqlite(sql)).map_err(sq(context))?;
    let mut rows = stmt.query(params).map_err(sq(context))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(sq(context))? {
        out.push(decode(r)?);
    }
    Ok(out)
}

/// The first row `sql` answers, if any, decoded by `decode`.
fn select_one<T>(
    conn: &rusqlite::Connection,
    sql: &str,
    params: impl Params,
    context: &'static str,
    decode: impl FnOnce(&rusqlite::Row<'_>) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    let mut stmt = conn.prepare_cached(&sql::sqlite(sql)).map_err(sq(context))?;
    let mut rows = stmt.query(params).map_err(sq(context))?;
    rows.next().map_err(sq(context))?.map(decode).transpose()
}

/// The one value of a statement that always answers one row (a count, a sum).
fn select_value<T: FromColumn>(
    conn: &rusqlite::Connection,
    sql: &str,
    params: impl Params,
    context: &'static str,
) -> Result<T, StoreError> {
    select_one(conn, sql, params, context, |r| r.column(0, context))?
        .ok_or(StoreError::Sqlite { context, source: rusqlite::Error::QueryReturnedNoRows })
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

    pub(super) fn open(path: &Path) -> Result<Sqlite, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Io { path: dir.to_path_buf(), source })?;
        }
        let writer = Self::connection(path)?;
        writer.execute_batch(&sql::sqlite_schema()).map_err(sq("create tables"))?;
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

    /// Runs `f` in an immediate transaction on the writer connection and commits.
    fn write<T>(&self, f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut conn = self.writer.lock().map_err(|_| StoreError::Task("writer poisoned".into()))?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sq("begin"))?;
        let result = f(&tx)?;
        tx.commit().map_err(sq("commit"))?;
        Ok(result)
    }

    pub(super) fn commit(&self, events: &[Event]) -> Result<Vec<Outcome>, StoreError> {
        self.write(|tx| {
            events
                .iter()
                .map(|event| match event {
                    Event::Interaction(i) => Self::insert_interaction(tx, i),
                    Event::Feedback(f) => Self::insert_feedback(tx, f),
                })
                .collect()
        })
    }

    /// The outcome of an insert that changed nothing: the id is stored with this payload or
    /// another.
    fn existing(
        tx: &rusqlite::Transaction<'_>,
        hash_sql: &str,
        id: &str,
        hash: &[u8; 32],
    ) -> Result<Outcome, StoreError> {
        let stored: Option<Vec<u8>> = select_one(tx, hash_sql, [id], "read hash", |r| r.column(0, "read hash"))?;
        Ok(if stored.as_deref() == Some(&hash[..]) { Outcome::Duplicate } else { Outcome::Conflict })
    }

    fn insert_interaction(tx: &rusqlite::Transaction<'_>, i: &Interaction) -> Result<Outcome, StoreError> {
        let mut insert =
            tx.prepare_cached(&sql::sqlite(sql::SQLITE_INSERT_INTERACTION)).map_err(sq("insert interaction"))?;
        let n = insert
            .execute(rusqlite::params![
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
            ])
            .map_err(sq("insert interaction"))?;
        if n == 0 {
            return Self::existing(tx, sql::SQLITE_INTERACTION_HASH, &i.id, &i.hash);
        }
        // Feedback that arrived before its interaction gets its deployment and version now.
        tx.prepare_cached(&sql::sqlite(sql::SQLITE_JOIN_EARLY_FEEDBACK))
            .and_then(|mut s| s.execute(rusqlite::params![i.id, i.namespace, i.deployment, i.version]))
            .map_err(sq("join early feedback"))?;
        Ok(Outcome::Created)
    }

    fn insert_feedback(tx: &rusqlite::Transaction<'_>, f: &Feedback) -> Result<Outcome, StoreError> {
        let (mut ns, mut dep, mut ver) = (f.namespace.clone(), f.deployment.clone(), f.version.clone());
        if let Some(iid) = &f.interaction_id
            && ver.is_none()
        {
            const C: &str = "find interaction";
            let found: Option<(String, String, String)> =
                select_one(tx, sql::SQLITE_FIND_INTERACTION, [iid], C, |r| {
                    Ok((r.column(0, C)?, r.column(1, C)?, r.column(2, C)?))
                })?;
            if let Some((n, d, v)) = found {
                ns = Some(n);
                dep = Some(d);
                ver = Some(v);
            }
        }
        let mut insert = tx.prepare_cached(&sql::sqlite(sql::SQLITE_INSERT_FEEDBACK)).map_err(sq("insert feedback"))?;
        let n = insert
            .execute(rusqlite::params![
                f.id,
                &f.hash[..],
                ns,
                dep,
                ver,
                f.interaction_id,
                f.value.kind().as_str(),
                rows::thumbs_up(f),
                f.value.normalized_rating(),
                f.value.label(),
                rows::feedback_body(f),
                f.subject,
                f.session,
                f.time_ms
            ])
            .map_err(sq("insert feedback"))?;
        if n == 0 {
            return Self::existing(tx, sql::SQLITE_FEEDBACK_HASH, &f.id, &f.hash);
        }
        Ok(Outcome::Created)
    }

    pub(super) fn aggregates(
        &self,
        namespace: &str,
        deployment: &str,
        from_ms: i64,
        to_ms: i64,
        threshold: f64,
    ) -> Result<StatsRows, StoreError> {
        self.read(|conn| {
            let params = rusqlite::params![namespace, deployment, from_ms, to_ms, threshold];
            let groups = select(conn, sql::AGGREGATES, params, "statistics", |r| rows::aggregate(r))?;
            let params = rusqlite::params![namespace, deployment, from_ms, to_ms];
            let counts =
                select(conn, sql::INTERACTION_COUNTS, params, "interaction counts", |r| rows::interaction_count(r))?;
            Ok((groups, counts))
        })
    }

    pub(super) fn cursor(&self, namespace: &str, deployment: &str) -> Result<i64, StoreError> {
        self.read(|conn| select_value(conn, sql::CURSOR, [namespace, deployment], "cursor"))
    }

    pub(super) fn joined_feedback(
        &self,
        namespace: &str,
        deployment: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<JoinedFeedback>, StoreError> {
        self.read(|conn| {
            let params = rusqlite::params![namespace, deployment, from_ms, to_ms];
            select(conn, sql::JOINED_FEEDBACK, params, "dataset rows", |r| {
                rows::joined_feedback(r, namespace, deployment)
            })
        })
    }

    pub(super) fn feedback_after(
        &self,
        namespace: &str,
        deployment: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<StoredFeedback>, StoreError> {
        self.read(|conn| {
            let params = rusqlite::params![namespace, deployment, after, limit];
            select(conn, sql::FEEDBACK_AFTER, params, "feedback listing", |r| rows::stored_feedback(r))
        })
    }

    /// Runs one delete per table ([`sql::PURGE`], [`sql::ERASE`]) in one transaction.
    pub(super) fn delete(&self, statements: [&str; 2], params: impl Params + Clone) -> Result<u64, StoreError> {
        self.write(|tx| {
            let a = tx.execute(&sql::sqlite(statements[0]), params.clone()).map_err(sq("delete feedback"))?;
            let b = tx.execute(&sql::sqlite(statements[1]), params).map_err(sq("delete interactions"))?;
            Ok((a + b) as u64)
        })
    }

    pub(super) fn put_dataset(
        &self,
        id: &str,
        namespace: &str,
        deployment: &str,
        manifest: &str,
        files: &[DatasetFile],
    ) -> Result<bool, StoreError> {
        self.write(|tx| {
            let created = tx
                .execute(&sql::sqlite(sql::INSERT_DATASET), rusqlite::params![id, namespace, deployment, manifest])
                .map_err(sq("insert dataset"))?
                > 0;
            let stored: i64 = select_value(tx, sql::COUNT_DATASET_FILES, [id], "count dataset files")?;
            if stored == 0 {
                let mut file_insert =
                    tx.prepare(&sql::sqlite(sql::INSERT_DATASET_FILE)).map_err(sq("prepare dataset file"))?;
                let mut chunk_insert =
                    tx.prepare(&sql::sqlite(sql::INSERT_DATASET_CHUNK)).map_err(sq("prepare dataset chunk"))?;
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
            Ok(created)
        })
    }

    pub(super) fn get_dataset(&self, id: &str) -> Result<Option<String>, StoreError> {
        self.read(|conn| select_one(conn, sql::SELECT_DATASET, [id], "read dataset", |r| r.column(0, "dataset column")))
    }

    pub(super) fn dataset_file(&self, id: &str, name: &str) -> Result<Option<StoredFile>, StoreError> {
        self.read(|conn| {
            select_one(conn, sql::SELECT_DATASET_FILE, [id, name], "read dataset file", |r| rows::stored_file(r))
        })
    }

    pub(super) fn dataset_chunk(&self, id: &str, name: &str, part: i64) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|conn| {
            let params = rusqlite::params![id, name, part];
            select_one(conn, sql::SELECT_DATASET_CHUNK, params, "read dataset chunk", |r| {
                r.column(0, "dataset chunk column")
            })
        })
    }

    pub(super) fn ping(&self) -> Result<(), StoreError> {
        self.read(|conn| select_value::<i64>(conn, sql::PING, [], "ping").map(|_| ()))
    }

    /// The database file and its WAL and shared-memory files.
    pub(super) fn size_bytes(&self) -> Result<i64, StoreError> {
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
