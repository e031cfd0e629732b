//! What the stores read and write, shared by both backends and the rest of the collector: the
//! store's error, a commit's outcome per event, statistics groups, joined feedback, dataset files.

use std::path::PathBuf;

use crate::collector::event::{Feedback, Interaction, Kind};

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
pub(super) fn file_rows(file: &DatasetFile) -> (String, i64, impl Iterator<Item = (i64, &[u8])>) {
    let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&file.bytes));
    let chunks = file.bytes.chunks(CHUNK_BYTES).enumerate().map(|(k, c)| (k as i64, c));
    (sha256, file.bytes.len() as i64, chunks)
}
