//! Bearer tokens of the collector: read from a token file (one token per line, optionally
//! followed by its scope, `read` or `write`; `write` also reads), compared in constant time,
//! re-read when the file changes (a rotated Secret), never logged.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use axum::http::HeaderValue;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Statistics, datasets, listings.
    Read,
    /// Everything: ingest, datasets, deletion.
    Write,
}

/// The answer to a request's credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead.
    Allowed,
    /// No bearer token.
    Missing,
    /// A token that is not in the file.
    Invalid,
    /// A read token on a write endpoint.
    Forbidden,
}

/// Failures reading or making tokens.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A line is not `TOKEN [read|write]`.
    #[error("{path} line {line}: {reason}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong (never the token itself).
        reason: String,
    },
    /// The file holds no token.
    #[error("{0}: no token in the file")]
    Empty(PathBuf),
}

/// sha256 digests of tokens and their scopes.
type Digests = Vec<([u8; 32], Scope)>;

#[derive(Default)]
struct Loaded {
    /// sha256 of each token, and its scope.
    digests: Digests,
    modified: Option<SystemTime>,
}

/// The tokens in force.
#[derive(Clone)]
pub struct Tokens {
    path: PathBuf,
    loaded: Arc<RwLock<Loaded>>,
}

fn parse(path: &Path, text: &str) -> Result<Digests, TokenError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let token = parts.next().unwrap_or_default();
        let scope = match parts.next() {
            None | Some("write") => Scope::Write,
            Some("read") => Scope::Read,
            Some(other) => {
                return Err(TokenError::Syntax {
                    path: path.to_path_buf(),
                    line: i + 1,
                    reason: format!("the scope must be read or write, not {other:?}"),
                });
            }
        };
        if parts.next().is_some() {
            return Err(TokenError::Syntax {
                path: path.to_path_buf(),
                line: i + 1,
                reason: "expected TOKEN [read|write]".into(),
            });
        }
        if token.len() < 16 {
            return Err(TokenError::Syntax {
                path: path.to_path_buf(),
                line: i + 1,
                reason: "a token must be at least 16 characters".into(),
            });
        }
        out.push((Sha256::digest(token.as_bytes()).into(), scope));
    }
    if out.is_empty() {
        return Err(TokenError::Empty(path.to_path_buf()));
    }
    Ok(out)
}

fn read(path: &Path) -> Result<(Digests, Option<SystemTime>), TokenError> {
    let io = |source| TokenError::Io { path: path.to_path_buf(), source };
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let text = std::fs::read_to_string(path).map_err(io)?;
    Ok((parse(path, &text)?, modified))
}

/// Equal in time independent of where the inputs differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

impl Tokens {
    /// Reads `file`, or when none is given, reads `<data_dir>/token`, generating it (mode 0600)
    /// the first time. Returns the tokens and the file they come from.
    pub fn load_or_generate(file: Option<&Path>, data_dir: &Path) -> Result<(Tokens, PathBuf), TokenError> {
        let path = match file {
            Some(p) => p.to_path_buf(),
            None => {
                let p = data_dir.join("token");
                if !p.exists() {
                    let token = format!("fwc_{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
                    write_private(&p, &format!("{token} write\n"))
                        .map_err(|source| TokenError::Io { path: p.clone(), source })?;
                    tracing::warn!(path = %p.display(), "no --token-file given; generated a write token into the data directory");
                }
                p
            }
        };
        let (digests, modified) = read(&path)?;
        let tokens = Tokens { path: path.clone(), loaded: Arc::new(RwLock::new(Loaded { digests, modified })) };
        Ok((tokens, path))
    }

    /// Checks an `Authorization` header for a scope.
    pub fn check(&self, header: Option<&HeaderValue>, scope: Scope) -> Verdict {
        let Some(token) = header.and_then(|h| h.to_str().ok()).and_then(|h| {
            let (kind, rest) = h.split_once(' ')?;
            kind.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        }) else {
            return Verdict::Missing;
        };
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let Ok(loaded) = self.loaded.read() else { return Verdict::Invalid };
        // Every token is compared, so the time taken does not tell which one matched.
        let mut found: Option<Scope> = None;
        for (d, s) in &loaded.digests {
            if constant_time_eq(d, &digest) {
                found = Some(*s);
            }
        }
        match found {
            None => Verdict::Invalid,
            Some(have) if have >= scope => Verdict::Allowed,
            Some(_) => Verdict::Forbidden,
        }
    }

    /// Re-reads the file when it changes (a rotated Secret), until `stop`. A file that turns
    /// unreadable or invalid keeps the tokens in force and logs why.
    pub async fn watch(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let modified = std::fs::metadata(&self.path).and_then(|m| m.modified()).ok();
            let current = self.loaded.read().map(|l| l.modified).unwrap_or(None);
            if modified == current {
                continue;
            }
            match read(&self.path) {
                Ok((digests, modified)) => {
                    let n = digests.len();
                    if let Ok(mut l) = self.loaded.write() {
                        *l = Loaded { digests, modified };
                    }
                    tracing::info!(path = %self.path.display(), tokens = n, "token file reloaded");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "token file changed but cannot be used; keeping the tokens in force")
                }
            }
        }
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_and_syntax() {
        let p = Path::new("tokens");
        let parsed = parse(p, "# comment\n\naaaaaaaaaaaaaaaa\nbbbbbbbbbbbbbbbb read\ncccccccccccccccc write\n");
        assert_eq!(
            parsed.map(|v| v.iter().map(|(_, s)| *s).collect::<Vec<_>>()).ok(),
            Some(vec![Scope::Write, Scope::Read, Scope::Write])
        );
        assert!(matches!(parse(p, "short\n"), Err(TokenError::Syntax { line: 1, .. })));
        assert!(matches!(parse(p, "aaaaaaaaaaaaaaaa admin\n"), Err(TokenError::Syntax { .. })));
        assert!(matches!(parse(p, "# nothing\n"), Err(TokenError::Empty(_))));
        let err = parse(p, "x\nsecret-value-123456 bogus\n").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(!err.contains("secret-value"), "errors never show a token: {err}");
    }

    #[test]
    fn verdicts() {
        let dir = std::env::temp_dir().join(format!("fw-tokens-{}", uuid::Uuid::new_v4().simple()));
        let _mk = std::fs::create_dir_all(&dir);
        let file = dir.join("t");
        let _w = std::fs::write(&file, "writer-token-0123456789\nreader-token-0123456789 read\n");
        let Ok((tokens, _)) = Tokens::load_or_generate(Some(&file), &dir) else { panic!("load") };
        let h = |s: &str| HeaderValue::from_str(s).ok();
        assert_eq!(tokens.check(None, Scope::Read), Verdict::Missing);
        assert_eq!(tokens.check(h("Basic abc").as_ref(), Scope::Read), Verdict::Missing);
        assert_eq!(tokens.check(h("Bearer nope-nope-nope-nope").as_ref(), Scope::Read), Verdict::Invalid);
        assert_eq!(tokens.check(h("Bearer reader-token-0123456789").as_ref(), Scope::Read), Verdict::Allowed);
        assert_eq!(tokens.check(h("Bearer reader-token-0123456789").as_ref(), Scope::Write), Verdict::Forbidden);
        assert_eq!(tokens.check(h("bearer writer-token-0123456789").as_ref(), Scope::Write), Verdict::Allowed);
        let _rm = std::fs::remove_dir_all(&dir);
    }
}
