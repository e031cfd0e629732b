//! Every SQL statement of the store, written once with PostgreSQL's `$n` placeholders. SQLite
//! runs the same text through [`sqlite`], which numbers its parameters `?n`; [`ALL`] lists every
//! statement, and the tests below fail when one is written twice or when a backend holds SQL of
//! its own.
//!
//! Most statements serve both stores as they are. Where the dialects differ the two versions
//! stand side by side in the section "Where the dialects differ", each pair with its reason.

/// The tables and indexes; `{SEQ}` and `{BLOB}` are the two column types the dialects spell
/// differently ([`sqlite_schema`], [`postgres_schema`]).
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
// SQLite through `sqlite_sql` (which makes them `?n`).";

/// Which store a statement is for.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dialect {
    /// Both, as written (SQLite through [`sqlite`]).
    Both,
    /// SQLite only.
    Sqlite,
    /// PostgreSQL only.
    Postgres,
}

// ---------------------------------------------------------------------------------------------
// Statements both stores run.
// ---------------------------------------------------------------------------------------------

/// Statistics groups of a deployment between two times: `$1` namespace, `$2` deployment, `$3`
/// and `$4` the window (Unix ms, inclusive), `$5` the positive rating threshold. The casts give
/// both stores the same column types.
pub(super) const AGGREGATES: &str = "SELECT version, kind, up, label, COUNT(*),
        CAST(COALESCE(SUM(rating), 0.0) AS DOUBLE PRECISION),
        CAST(SUM(CASE WHEN rating >= $5 THEN 1 ELSE 0 END) AS BIGINT), MIN(time_ms), MAX(time_ms)
 FROM feedback
 WHERE namespace = $1 AND deployment = $2 AND time_ms >= $3 AND time_ms <= $4 AND version IS NOT NULL
 GROUP BY version, kind, up, label";

/// Interactions per version of a deployment between two times (parameters as [`AGGREGATES`]).
pub(super) const INTERACTION_COUNTS: &str = "SELECT version, COUNT(*) FROM interactions
 WHERE namespace = $1 AND deployment = $2 AND time_ms >= $3 AND time_ms <= $4 GROUP BY version";

/// A number that grows whenever an event of the deployment (`$1`, `$2`) is stored.
pub(super) const CURSOR: &str =
    "SELECT (SELECT COALESCE(MAX(seq), 0) FROM feedback WHERE namespace = $1 AND deployment = $2)
      + (SELECT COALESCE(MAX(seq), 0) FROM interactions WHERE namespace = $1 AND deployment = $2)";

/// Feedback of a deployment between two times with its interaction, oldest first (parameters
/// as [`AGGREGATES`] without the threshold).
pub(super) const JOINED_FEEDBACK: &str =
    "SELECT f.id, f.namespace, f.deployment, f.version, f.interaction_id, f.body, f.time_ms,
        i.id, i.version, i.prompt, i.answer, i.time_ms
 FROM feedback f LEFT JOIN interactions i ON i.id = f.interaction_id
 WHERE f.namespace = $1 AND f.deployment = $2 AND f.time_ms >= $3 AND f.time_ms <= $4 AND f.version IS NOT NULL
 ORDER BY f.time_ms, f.id";

/// Feedback of a deployment (`$1`, `$2`) stored after position `$3`, at most `$4`.
pub(super) const FEEDBACK_AFTER: &str =
    "SELECT seq, id, namespace, deployment, version, interaction_id, body, subject, session, time_ms
 FROM feedback WHERE namespace = $1 AND deployment = $2 AND seq > $3 ORDER BY seq LIMIT $4";

/// Retention: events older than `$1` (Unix ms), one statement per table.
pub(super) const PURGE: [&str; 2] =
    ["DELETE FROM feedback WHERE time_ms < $1", "DELETE FROM interactions WHERE time_ms < $1"];

/// Erasure: every event of the user or session key `$1`, one statement per table.
pub(super) const ERASE: [&str; 2] = [
    "DELETE FROM feedback WHERE subject = $1 OR session = $1",
    "DELETE FROM interactions WHERE subject = $1 OR session = $1",
];

/// Records a snapshot; does nothing when its id is stored already.
pub(super) const INSERT_DATASET: &str =
    "INSERT INTO datasets (id, namespace, deployment, manifest) VALUES ($1, $2, $3, $4)
 ON CONFLICT (id) DO NOTHING";

/// A snapshot's manifest.
pub(super) const SELECT_DATASET: &str = "SELECT manifest FROM datasets WHERE id = $1";

/// How many files of a snapshot are stored.
pub(super) const COUNT_DATASET_FILES: &str = "SELECT COUNT(*) FROM dataset_files WHERE dataset_id = $1";

/// One file of a snapshot: its digest and length.
pub(super) const INSERT_DATASET_FILE: &str =
    "INSERT INTO dataset_files (dataset_id, name, sha256, size) VALUES ($1, $2, $3, $4)
 ON CONFLICT (dataset_id, name) DO NOTHING";

/// One chunk of a file's bytes.
pub(super) const INSERT_DATASET_CHUNK: &str =
    "INSERT INTO dataset_chunks (dataset_id, name, part, bytes) VALUES ($1, $2, $3, $4)
 ON CONFLICT (dataset_id, name, part) DO NOTHING";

/// A file's digest and length.
pub(super) const SELECT_DATASET_FILE: &str =
    "SELECT sha256, size FROM dataset_files WHERE dataset_id = $1 AND name = $2";

/// One chunk of a file.
pub(super) const SELECT_DATASET_CHUNK: &str =
    "SELECT bytes FROM dataset_chunks WHERE dataset_id = $1 AND name = $2 AND part = $3";

/// Whether the store answers.
pub(super) const PING: &str = "SELECT 1";

// ---------------------------------------------------------------------------------------------
// Where the dialects differ.
//
// Storing events. SQLite is embedded: a statement costs no round trip, so its one writer stores
// a batch one event at a time, each with a prepared statement (an insert, then the stored hash
// of an id that was there already). PostgreSQL is across the network: it stores a whole batch
// with one statement per table, passing the rows as arrays (`UNNEST` to insert, `= ANY($1)` to
// look up), which SQLite has no type for. Both insert with `ON CONFLICT (id) DO NOTHING`; only
// PostgreSQL needs `RETURNING id` to learn which rows of a batch were new (SQLite counts the
// rows one insert changed).
// ---------------------------------------------------------------------------------------------

/// SQLite: one interaction (columns in the order of the parameters).
pub(super) const SQLITE_INSERT_INTERACTION: &str = "INSERT INTO interactions (id, hash, namespace, deployment, version, prompt, answer, latency_ms, subject, session, metadata, time_ms)
 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT (id) DO NOTHING";
/// PostgreSQL: a batch of interactions, one array per column; answers the ids inserted.
pub(super) const POSTGRES_INSERT_INTERACTIONS: &str = "INSERT INTO interactions (id, hash, namespace, deployment, version, prompt, answer, latency_ms, subject, session, metadata, time_ms)
 SELECT * FROM UNNEST($1::text[], $2::bytea[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                      $8::bigint[], $9::text[], $10::text[], $11::text[], $12::bigint[])
 ON CONFLICT (id) DO NOTHING RETURNING id";

/// SQLite: one feedback event.
pub(super) const SQLITE_INSERT_FEEDBACK: &str = "INSERT INTO feedback (id, hash, namespace, deployment, version, interaction_id, kind, up, rating, label, body, subject, session, time_ms)
 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) ON CONFLICT (id) DO NOTHING";
/// PostgreSQL: a batch of feedback events, one array per column; answers the ids inserted.
pub(super) const POSTGRES_INSERT_FEEDBACK: &str = "INSERT INTO feedback (id, hash, namespace, deployment, version, interaction_id, kind, up, rating, label, body, subject, session, time_ms)
 SELECT * FROM UNNEST($1::text[], $2::bytea[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                      $8::boolean[], $9::float8[], $10::text[], $11::text[], $12::text[], $13::text[], $14::bigint[])
 ON CONFLICT (id) DO NOTHING RETURNING id";

/// SQLite: the stored hash of one interaction id (an insert that changed nothing).
pub(super) const SQLITE_INTERACTION_HASH: &str = "SELECT hash FROM interactions WHERE id = $1";
/// PostgreSQL: the stored hashes of several interaction ids.
pub(super) const POSTGRES_INTERACTION_HASHES: &str = "SELECT id, hash FROM interactions WHERE id = ANY($1)";

/// SQLite: the stored hash of one feedback id.
pub(super) const SQLITE_FEEDBACK_HASH: &str = "SELECT hash FROM feedback WHERE id = $1";
/// PostgreSQL: the stored hashes of several feedback ids.
pub(super) const POSTGRES_FEEDBACK_HASHES: &str = "SELECT id, hash FROM feedback WHERE id = ANY($1)";

/// SQLite: the deployment and version of one interaction, for feedback that names only its id.
pub(super) const SQLITE_FIND_INTERACTION: &str =
    "SELECT namespace, deployment, version FROM interactions WHERE id = $1";
/// PostgreSQL: the same for every interaction a batch of feedback names.
pub(super) const POSTGRES_FIND_INTERACTIONS: &str =
    "SELECT id, namespace, deployment, version FROM interactions WHERE id = ANY($1)";

/// SQLite: feedback that arrived before its interaction (`$1`) gets the deployment and version
/// now (`$2` to `$4`).
pub(super) const SQLITE_JOIN_EARLY_FEEDBACK: &str = "UPDATE feedback SET namespace = $2, deployment = $3, version = $4
 WHERE interaction_id = $1 AND (version IS NULL OR deployment IS NULL)";
/// PostgreSQL: the same for every interaction a batch inserted (`$1`), from the stored rows.
pub(super) const POSTGRES_JOIN_EARLY_FEEDBACK: &str =
    "UPDATE feedback f SET namespace = i.namespace, deployment = i.deployment, version = i.version
 FROM interactions i
 WHERE i.id = ANY($1) AND f.interaction_id = i.id AND (f.version IS NULL OR f.deployment IS NULL)";

/// PostgreSQL: bytes the tables take (SQLite measures its files instead).
pub(super) const POSTGRES_SIZE: &str = "SELECT (pg_total_relation_size('feedback') + pg_total_relation_size('interactions') + pg_total_relation_size('datasets')
         + pg_total_relation_size('dataset_files') + pg_total_relation_size('dataset_chunks'))::BIGINT";

/// PostgreSQL: replicas starting together would race on `CREATE ... IF NOT EXISTS`; this lock
/// (held to the end of the schema's transaction) orders them. SQLite has one writer.
pub(super) const POSTGRES_SCHEMA_LOCK: &str = "SELECT pg_advisory_xact_lock(7326451)";

/// The schema for SQLite: its sequence column and its byte type.
pub(super) fn sqlite_schema() -> String {
    SCHEMA.replace("{SEQ}", "INTEGER PRIMARY KEY AUTOINCREMENT").replace("{BLOB}", "BLOB")
}
/// The tables for PostgreSQL: its sequence column and its byte type.
fn postgres_tables() -> String {
    SCHEMA.replace("{SEQ}", "BIGSERIAL PRIMARY KEY").replace("{BLOB}", "BYTEA")
}
/// The schema for PostgreSQL, in one transaction under [`POSTGRES_SCHEMA_LOCK`].
pub(super) fn postgres_schema() -> String {
    format!("BEGIN; {POSTGRES_SCHEMA_LOCK}; {} COMMIT;", postgres_tables())
}

/// Every statement with its name and the store it is for.
#[cfg(test)]
pub(super) const ALL: &[(&str, Dialect, &str)] = &[
    ("AGGREGATES", Dialect::Both, AGGREGATES),
    ("INTERACTION_COUNTS", Dialect::Both, INTERACTION_COUNTS),
    ("CURSOR", Dialect::Both, CURSOR),
    ("JOINED_FEEDBACK", Dialect::Both, JOINED_FEEDBACK),
    ("FEEDBACK_AFTER", Dialect::Both, FEEDBACK_AFTER),
    ("PURGE[0]", Dialect::Both, PURGE[0]),
    ("PURGE[1]", Dialect::Both, PURGE[1]),
    ("ERASE[0]", Dialect::Both, ERASE[0]),
    ("ERASE[1]", Dialect::Both, ERASE[1]),
    ("INSERT_DATASET", Dialect::Both, INSERT_DATASET),
    ("SELECT_DATASET", Dialect::Both, SELECT_DATASET),
    ("COUNT_DATASET_FILES", Dialect::Both, COUNT_DATASET_FILES),
    ("INSERT_DATASET_FILE", Dialect::Both, INSERT_DATASET_FILE),
    ("INSERT_DATASET_CHUNK", Dialect::Both, INSERT_DATASET_CHUNK),
    ("SELECT_DATASET_FILE", Dialect::Both, SELECT_DATASET_FILE),
    ("SELECT_DATASET_CHUNK", Dialect::Both, SELECT_DATASET_CHUNK),
    ("PING", Dialect::Both, PING),
    ("SQLITE_INSERT_INTERACTION", Dialect::Sqlite, SQLITE_INSERT_INTERACTION),
    ("POSTGRES_INSERT_INTERACTIONS", Dialect::Postgres, POSTGRES_INSERT_INTERACTIONS),
    ("SQLITE_INSERT_FEEDBACK", Dialect::Sqlite, SQLITE_INSERT_FEEDBACK),
    ("POSTGRES_INSERT_FEEDBACK", Dialect::Postgres, POSTGRES_INSERT_FEEDBACK),
    ("SQLITE_INTERACTION_HASH", Dialect::Sqlite, SQLITE_INTERACTION_HASH),
    ("POSTGRES_INTERACTION_HASHES", Dialect::Postgres, POSTGRES_INTERACTION_HASHES),
    ("SQLITE_FEEDBACK_HASH", Dialect::Sqlite, SQLITE_FEEDBACK_HASH),
    ("POSTGRES_FEEDBACK_HASHES", Dialect::Postgres, POSTGRES_FEEDBACK_HASHES),
    ("SQLITE_FIND_INTERACTION", Dialect::Sqlite, SQLITE_FIND_INTERACTION),
    ("POSTGRES_FIND_INTERACTIONS", Dialect::Postgres, POSTGRES_FIND_INTERACTIONS),
    ("SQLITE_JOIN_EARLY_FEEDBACK", Dialect::Sqlite, SQLITE_JOIN_EARLY_FEEDBACK),
    ("POSTGRES_JOIN_EARLY_FEEDBACK", Dialect::Postgres, POSTGRES_JOIN_EARLY_FEEDBACK),
    ("POSTGRES_SIZE", Dialect::Postgres, POSTGRES_SIZE),
    ("POSTGRES_SCHEMA_LOCK", Dialect::Postgres, POSTGRES_SCHEMA_LOCK),
];

/// A statement as SQLite numbers its parameters: `$1` becomes `?1` (a `$` not followed by a
/// digit stays).
pub(super) fn sqlite(sql: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The sources that run statements: none may hold SQL text of its own.
    const BACKENDS: [(&str, &str); 4] = [
        ("store/mod.rs", include_str!("mod.rs")),
        ("store/rows.rs", include_str!("rows.rs")),
        ("store/sqlite.rs", include_str!("sqlite.rs")),
        ("store/postgres.rs", include_str!("postgres.rs")),
    ];

    const KEYWORDS: [&str; 9] = ["SELECT", "INSERT", "UPDATE", "DELETE", "CREATE", "BEGIN", "WITH", "DROP", "ALTER"];

    fn normalized(sql: &str) -> String {
        sql.split_whitespace().collect::<Vec<_>>().join(" ").to_ascii_uppercase()
    }

    #[test]
    fn one_query_text_serves_both_stores() {
        assert_eq!(
            sqlite("SELECT a FROM t WHERE x = $1 AND y = $12 AND z = '$'"),
            "SELECT a FROM t WHERE x = ?1 AND y = ?12 AND z = '$'"
        );
    }

    #[test]
    fn no_statement_is_written_twice() {
        for (k, (name, _, text)) in ALL.iter().enumerate() {
            assert!(!text.contains('?'), "{name} numbers its parameters as $n, for both stores");
            for (other, _, other_text) in &ALL[k + 1..] {
                assert_ne!(name, other, "{name} is listed twice");
                assert_ne!(normalized(text), normalized(other_text), "{name} and {other} are the same statement");
            }
        }
    }

    #[test]
    fn the_backends_take_every_statement_from_here() {
        for (file, source) in BACKENDS {
            // Source outside the tests: a test may name SQL to check it.
            let code = source.split("#[cfg(test)]\nmod tests").next().unwrap_or(source);
            for (line, text) in code.lines().enumerate() {
                for quoted in text.split('"').skip(1).step_by(2) {
                    let word = quoted.trim_start().split(|c: char| !c.is_ascii_alphabetic()).next().unwrap_or("");
                    // Statements are written in capitals; error contexts ("delete feedback") are not.
                    assert!(
                        !KEYWORDS.contains(&word),
                        "{file}:{}: SQL written in a backend ({quoted:?}); write it once in store/sql.rs",
                        line + 1
                    );
                }
            }
        }
        for (name, dialect, _) in ALL {
            let constant = format!("sql::{}", name.split('[').next().unwrap_or(name));
            let users: Vec<&str> =
                BACKENDS.iter().filter(|(_, source)| source.contains(&constant)).map(|(file, _)| *file).collect();
            // POSTGRES_SCHEMA_LOCK runs inside `postgres_schema`.
            assert!(!users.is_empty() || *name == "POSTGRES_SCHEMA_LOCK", "{name} ({dialect:?}) is run by no backend");
        }
    }

    #[test]
    fn every_statement_for_sqlite_prepares_on_sqlite() {
        let conn = rusqlite::Connection::open_in_memory().unwrap_or_else(|e| panic!("{e}"));
        conn.execute_batch(&sqlite_schema()).unwrap_or_else(|e| panic!("schema: {e}"));
        for (name, dialect, text) in ALL {
            if *dialect != Dialect::Postgres {
                conn.prepare(&sqlite(text)).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        }
    }

    /// Against the PostgreSQL server the collector tests use (`FLYWHEEL_TEST_DATABASE_URL`),
    /// in a schema of its own that is rolled back; skipped without one unless
    /// `FLYWHEEL_REQUIRE_POSTGRES` is set.
    #[tokio::test]
    async fn every_statement_for_postgres_prepares_on_postgres() {
        let Ok(url) = std::env::var("FLYWHEEL_TEST_DATABASE_URL") else {
            assert!(std::env::var_os("FLYWHEEL_REQUIRE_POSTGRES").is_none(), "FLYWHEEL_TEST_DATABASE_URL is not set");
            return;
        };
        let (mut client, connection) =
            tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(connection);
        let tx = client.transaction().await.unwrap_or_else(|e| panic!("{e}"));
        let schema = format!("flywheel_sql_check_{}", std::process::id());
        tx.batch_execute(&format!("CREATE SCHEMA {schema}; SET LOCAL search_path TO {schema}; {}", postgres_tables()))
            .await
            .unwrap_or_else(|e| panic!("schema: {e}"));
        for (name, dialect, text) in ALL {
            if *dialect != Dialect::Sqlite {
                tx.prepare(text).await.unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        }
        tx.rollback().await.unwrap_or_else(|e| panic!("{e}"));
    }
}
