//! How a collector runs: [`CollectorConfig`] and the duration syntax of its flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How the collector runs.
#[derive(Debug, Clone)]
pub struct CollectorConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Data directory: the SQLite store and a generated token (dataset snapshots are stored in
    /// the database, SQLite or PostgreSQL).
    pub data_dir: PathBuf,
    /// Token file (one token per line, optionally followed by `read` or `write`); when unset a
    /// token is generated into `<data-dir>/token`.
    pub token_file: Option<PathBuf>,
    /// PostgreSQL URL; SQLite in the data directory when unset.
    pub database_url: Option<String>,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Requests waiting for a commit before new ones get 429.
    pub queue: usize,
    /// Events in one group commit at most.
    pub max_batch: usize,
    /// Events older than this are purged.
    pub retention: Duration,
    /// How often the purge runs.
    pub purge_interval: Duration,
    /// Longest wait of a change-feed request.
    pub max_watch: Duration,
}

impl CollectorConfig {
    /// Defaults for a data directory, listening on `listen`.
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        Self {
            listen,
            data_dir,
            token_file: None,
            database_url: None,
            max_body_bytes: 8 * 1024 * 1024,
            queue: 4096,
            max_batch: 2048,
            retention: Duration::from_secs(90 * 24 * 3600),
            purge_interval: Duration::from_secs(600),
            max_watch: Duration::from_secs(60),
        }
    }
}

/// Parses `90d`, `12h`, `30m`, `45s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("{s:?}: expected a number and a unit (s, m, h, d)"))?;
    let secs = match unit {
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("{s:?}: the unit must be s, m, h or d")),
    };
    Ok(Duration::from_secs(secs))
}
