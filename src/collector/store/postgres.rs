//! PostgreSQL, shared by several collector replicas: a writer connection for the group commit
//! (a whole batch in one statement per table), a reader connection for queries, a connection of
//! its own for each snapshot write; each reconnects when it is closed. Every statement is
//! [`super::sql`]'s.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio_postgres::types::ToSql;

use super::rows::{self, Columns, FromColumn, to_json};
use super::sql;
use super::types::{
    DatasetFile, JoinedFeedback, Outcome, StatsRows, StoreError, StoredFeedback, StoredFile, file_rows,
};
use crate::collector::event::{Event, Feedback, Interaction};

fn pg(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
    move |source| StoreError::Postgres { context, source }
}

type Param<'a> = &'a (dyn ToSql + Sync);

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
    // The collector answers an event as stored only once it is: a server (or database, or role)
    // set to `synchronous_commit = off` would have it answer before the WAL is on disk. Its own
    // sessions ask for `on` then; any other level (`local`, `remote_write`, `on`,
    // `remote_apply`) waits for the local flush and is kept.
    let level: String = client
        .query_one("SHOW synchronous_commit", &[])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(pg("reading synchronous_commit"))?;
    if level == "off" {
        client.batch_execute("SET synchronous_commit = on").await.map_err(pg("setting synchronous_commit"))?;
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            tracing::warn!(
                server = %level,
                "the server's synchronous_commit is off: the collector's sessions set it on, so an acknowledged event is on disk"
            );
        });
    }
    Ok(client)
}

impl Postgres {
    pub(super) async fn connect(url: &str) -> Result<Postgres, StoreError> {
        let client = pg_connect(url).await?;
        let schema = sql::postgres_schema();
        client.batch_execute(&schema).await.map_err(pg("create tables"))?;
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

    /// Every row `sql` answers on the reader connection, each decoded by `decode`.
    async fn select<T>(
        &self,
        sql: &str,
        params: &[Param<'_>],
        context: &'static str,
        decode: impl Fn(&tokio_postgres::Row) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let rows = self.reader().await?.query(sql, params).await.map_err(pg(context))?;
        rows.iter().map(decode).collect()
    }

    /// The first row `sql` answers on the reader connection, if any, decoded by `decode`.
    async fn select_one<T>(
        &self,
        sql: &str,
        params: &[Param<'_>],
        context: &'static str,
        decode: impl FnOnce(&tokio_postgres::Row) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        let row = self.reader().await?.query_opt(sql, params).await.map_err(pg(context))?;
        row.as_ref().map(decode).transpose()
    }

    /// The one value of a statement that always answers one row.
    async fn select_value<T: FromColumn>(
        &self,
        sql: &str,
        params: &[Param<'_>],
        context: &'static str,
    ) -> Result<T, StoreError> {
        let row = self.reader().await?.query_one(sql, params).await.map_err(pg(context))?;
        row.column(0, context)
    }

    /// The writer connection, connected again when it was closed.
    async fn writer(&self) -> Result<tokio::sync::MutexGuard<'_, Option<tokio_postgres::Client>>, StoreError> {
        let mut slot = self.writer.lock().await;
        if slot.as_ref().is_none_or(tokio_postgres::Client::is_closed) {
            *slot = Some(pg_connect(&self.url).await?);
        }
        Ok(slot)
    }

    pub(super) async fn commit(&self, events: &[Event]) -> Result<Vec<Outcome>, StoreError> {
        let mut slot = self.writer().await?;
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
            Self::insert_interactions(&tx, &interactions, &mut outcomes).await?;
        }
        if !feedback.is_empty() {
            Self::insert_feedback(&tx, &feedback, &mut outcomes).await?;
        }
        tx.commit().await.map_err(pg("commit"))?;
        Ok(outcomes)
    }

    async fn insert_interactions(
        tx: &tokio_postgres::Transaction<'_>,
        interactions: &[(usize, &Interaction)],
        outcomes: &mut [Outcome],
    ) -> Result<(), StoreError> {
        let ids: Vec<&str> = interactions.iter().map(|(_, i)| i.id.as_str()).collect();
        let hashes: Vec<&[u8]> = interactions.iter().map(|(_, i)| &i.hash[..]).collect();
        let namespaces: Vec<&str> = interactions.iter().map(|(_, i)| i.namespace.as_str()).collect();
        let deployments: Vec<&str> = interactions.iter().map(|(_, i)| i.deployment.as_str()).collect();
        let versions: Vec<&str> = interactions.iter().map(|(_, i)| i.version.as_str()).collect();
        let prompts: Vec<String> = interactions.iter().map(|(_, i)| to_json(&i.prompt)).collect();
        let answers: Vec<&str> = interactions.iter().map(|(_, i)| i.answer.as_str()).collect();
        let latencies: Vec<Option<i64>> = interactions.iter().map(|(_, i)| i.latency_ms.map(|v| v as i64)).collect();
        let subjects: Vec<Option<&str>> = interactions.iter().map(|(_, i)| i.subject.as_deref()).collect();
        let sessions: Vec<Option<&str>> = interactions.iter().map(|(_, i)| i.session.as_deref()).collect();
        let metadata: Vec<Option<String>> =
            interactions.iter().map(|(_, i)| i.metadata.as_ref().map(to_json)).collect();
        let times: Vec<i64> = interactions.iter().map(|(_, i)| i.time_ms).collect();
        let created = tx
            .query(
                sql::POSTGRES_INSERT_INTERACTIONS,
                &[
                    &ids,
                    &hashes,
                    &namespaces,
                    &deployments,
                    &versions,
                    &prompts,
                    &answers,
                    &latencies,
                    &subjects,
                    &sessions,
                    &metadata,
                    &times,
                ],
            )
            .await
            .map_err(pg("insert interactions"))?;
        let created: Vec<String> = created.iter().map(|r| r.column(0, "created ids")).collect::<Result<_, _>>()?;
        let keyed: Vec<(usize, &str, &[u8; 32])> =
            interactions.iter().map(|(k, i)| (*k, i.id.as_str(), &i.hash)).collect();
        Self::settle(tx, sql::POSTGRES_INTERACTION_HASHES, &keyed, &created, outcomes).await?;
        if !created.is_empty() {
            // Feedback that arrived before its interaction gets its deployment and version now.
            tx.execute(sql::POSTGRES_JOIN_EARLY_FEEDBACK, &[&created]).await.map_err(pg("join early feedback"))?;
        }
        Ok(())
    }

    async fn insert_feedback(
        tx: &tokio_postgres::Transaction<'_>,
        feedback: &[(usize, &Feedback)],
        outcomes: &mut [Outcome],
    ) -> Result<(), StoreError> {
        // Deployment and version from the interaction, where only its id is given.
        let known = Self::interactions_named(tx, feedback).await?;
        let mut namespaces: Vec<Option<String>> = Vec::with_capacity(feedback.len());
        let mut deployments: Vec<Option<String>> = Vec::with_capacity(feedback.len());
        let mut versions: Vec<Option<String>> = Vec::with_capacity(feedback.len());
        for (_, f) in feedback {
            let joined = if f.version.is_none() { f.interaction_id.as_ref().and_then(|i| known.get(i)) } else { None };
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
        let interaction_ids: Vec<Option<&str>> = feedback.iter().map(|(_, f)| f.interaction_id.as_deref()).collect();
        let kinds: Vec<&str> = feedback.iter().map(|(_, f)| f.value.kind().as_str()).collect();
        let ups: Vec<Option<bool>> = feedback.iter().map(|(_, f)| rows::thumbs_up(f)).collect();
        let ratings: Vec<Option<f64>> = feedback.iter().map(|(_, f)| f.value.normalized_rating()).collect();
        let labels: Vec<Option<&str>> = feedback.iter().map(|(_, f)| f.value.label()).collect();
        let bodies: Vec<String> = feedback.iter().map(|(_, f)| rows::feedback_body(f)).collect();
        let subjects: Vec<Option<&str>> = feedback.iter().map(|(_, f)| f.subject.as_deref()).collect();
        let sessions: Vec<Option<&str>> = feedback.iter().map(|(_, f)| f.session.as_deref()).collect();
        let times: Vec<i64> = feedback.iter().map(|(_, f)| f.time_ms).collect();
        let created = tx
            .query(
                sql::POSTGRES_INSERT_FEEDBACK,
                &[
                    &ids,
                    &hashes,
                    &namespaces,
                    &deployments,
                    &versions,
                    &interaction_ids,
                    &kinds,
                    &ups,
                    &ratings,
                    &labels,
                    &bodies,
                    &subjects,
                    &sessions,
                    &times,
                ],
            )
            .await
            .map_err(pg("insert feedback"))?;
        let created: Vec<String> = created.iter().map(|r| r.column(0, "created ids")).collect::<Result<_, _>>()?;
        let keyed: Vec<(usize, &str, &[u8; 32])> = feedback.iter().map(|(k, f)| (*k, f.id.as_str(), &f.hash)).collect();
        Self::settle(tx, sql::POSTGRES_FEEDBACK_HASHES, &keyed, &created, outcomes).await
    }

    /// The namespace, deployment and version of each interaction that feedback without a
    /// version names, by id.
    async fn interactions_named(
        tx: &tokio_postgres::Transaction<'_>,
        feedback: &[(usize, &Feedback)],
    ) -> Result<HashMap<String, (String, String, String)>, StoreError> {
        let wanted: Vec<&str> = feedback
            .iter()
            .filter(|(_, f)| f.version.is_none())
            .filter_map(|(_, f)| f.interaction_id.as_deref())
            .collect();
        let mut known = HashMap::new();
        if wanted.is_empty() {
            return Ok(known);
        }
        let rows = tx.query(sql::POSTGRES_FIND_INTERACTIONS, &[&wanted]).await.map_err(pg("find interactions"))?;
        for r in rows {
            const C: &str = "interaction column";
            known.insert(r.column(0, C)?, (r.column(1, C)?, r.column(2, C)?, r.column(3, C)?));
        }
        Ok(known)
    }

    /// Outcomes of one table's events: the first event of each created id is `Created`; every
    /// other is a `Duplicate` or a `Conflict` by the stored hash (`hashes_sql` reads them).
    async fn settle(
        tx: &tokio_postgres::Transaction<'_>,
        hashes_sql: &str,
        events: &[(usize, &str, &[u8; 32])],
        created: &[String],
        outcomes: &mut [Outcome],
    ) -> Result<(), StoreError> {
        let mut fresh: HashSet<&str> = created.iter().map(String::as_str).collect();
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
        let rows = tx.query(hashes_sql, &[&ids]).await.map_err(pg("read hashes"))?;
        let mut stored: HashMap<String, Vec<u8>> = HashMap::new();
        for r in rows {
            stored.insert(r.column(0, "hash column")?, r.column(1, "hash column")?);
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

    pub(super) async fn aggregates(
        &self,
        namespace: &str,
        deployment: &str,
        from_ms: i64,
        to_ms: i64,
        threshold: f64,
    ) -> Result<StatsRows, StoreError> {
        let params: [Param<'_>; 5] = [&namespace, &deployment, &from_ms, &to_ms, &threshold];
        let groups = self.select(sql::AGGREGATES, &params, "statistics", rows::aggregate).await?;
        let counts =
            self.select(sql::INTERACTION_COUNTS, &params[..4], "interaction counts", rows::interaction_count).await?;
        Ok((groups, counts))
    }

    pub(super) async fn cursor(&self, namespace: &str, deployment: &str) -> Result<i64, StoreError> {
        self.select_value(sql::CURSOR, &[&namespace, &deployment], "cursor").await
    }

    pub(super) async fn joined_feedback(
        &self,
        namespace: &str,
        deployment: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<JoinedFeedback>, StoreError> {
        let params: [Param<'_>; 4] = [&namespace, &deployment, &from_ms, &to_ms];
        self.select(sql::JOINED_FEEDBACK, &params, "dataset rows", |r| rows::joined_feedback(r, namespace, deployment))
            .await
    }

    pub(super) async fn feedback_after(
        &self,
        namespace: &str,
        deployment: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<StoredFeedback>, StoreError> {
        let params: [Param<'_>; 4] = [&namespace, &deployment, &after, &limit];
        self.select(sql::FEEDBACK_AFTER, &params, "feedback listing", rows::stored_feedback).await
    }

    /// Runs one delete per table ([`sql::PURGE`], [`sql::ERASE`]) in one transaction, on the
    /// writer connection.
    pub(super) async fn delete(&self, statements: [&str; 2], params: &[Param<'_>]) -> Result<u64, StoreError> {
        let mut slot = self.writer().await?;
        let Some(client) = slot.as_mut() else {
            return Err(StoreError::Task("no writer connection".into()));
        };
        let tx = client.transaction().await.map_err(pg("begin"))?;
        let a = tx.execute(statements[0], params).await.map_err(pg("delete feedback"))?;
        let b = tx.execute(statements[1], params).await.map_err(pg("delete interactions"))?;
        tx.commit().await.map_err(pg("commit"))?;
        Ok(a + b)
    }

    /// On a connection of its own, so that writing tens of megabytes neither waits for nor
    /// delays the group commit.
    pub(super) async fn put_dataset(
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
            .execute(sql::INSERT_DATASET, &[&id, &namespace, &deployment, &manifest])
            .await
            .map_err(pg("insert dataset"))?
            > 0;
        let stored: i64 = tx
            .query_one(sql::COUNT_DATASET_FILES, &[&id])
            .await
            .map_err(pg("count dataset files"))?
            .column(0, "count dataset files")?;
        if stored == 0 {
            let file_insert = tx.prepare(sql::INSERT_DATASET_FILE).await.map_err(pg("prepare dataset file"))?;
            let chunk_insert = tx.prepare(sql::INSERT_DATASET_CHUNK).await.map_err(pg("prepare dataset chunk"))?;
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

    pub(super) async fn get_dataset(&self, id: &str) -> Result<Option<String>, StoreError> {
        self.select_one(sql::SELECT_DATASET, &[&id], "read dataset", |r| r.column(0, "dataset column")).await
    }

    pub(super) async fn dataset_file(&self, id: &str, name: &str) -> Result<Option<StoredFile>, StoreError> {
        self.select_one(sql::SELECT_DATASET_FILE, &[&id, &name], "read dataset file", rows::stored_file).await
    }

    pub(super) async fn dataset_chunk(&self, id: &str, name: &str, part: i64) -> Result<Option<Vec<u8>>, StoreError> {
        let params: [Param<'_>; 3] = [&id, &name, &part];
        self.select_one(sql::SELECT_DATASET_CHUNK, &params, "read dataset chunk", |r| {
            r.column(0, "dataset chunk column")
        })
        .await
    }

    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        self.select_value::<i32>(sql::PING, &[], "ping").await.map(|_| ())
    }

    pub(super) async fn size_bytes(&self) -> Result<i64, StoreError> {
        self.select_value(sql::POSTGRES_SIZE, &[], "size").await
    }
}
