//! `flywheel fetch-model URI DIR`: the init container of inference pods.
//!
//! Fetches a model into a directory before the runtime starts:
//! - `s3://bucket/prefix` and `gs://bucket/prefix`: every object under the prefix, kept at its
//!   path relative to the prefix (or the one object the URI names), through `object_store`,
//!   configured from the usual environment (`AWS_*`, `GOOGLE_*`: keys, endpoint, region, web
//!   identity and instance credentials);
//! - `https://host/path`: one file, or a `.tar`, `.tar.gz` or `.tgz` archive unpacked in place;
//! - `hf://org/name[@revision]`: every file of a Hugging Face Hub repository at one commit, from
//!   `HF_ENDPOINT` (default `https://huggingface.co`) with `HF_TOKEN` when set.
//!
//! Downloads land in a staging folder inside DIR and move into place only when all succeeded;
//! a marker file then records what was fetched, so a restarted init container whose DIR already
//! holds the same URI does nothing. Paths that would leave DIR are refused.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

/// The marker written into DIR once a fetch completed.
pub const MARKER: &str = ".flywheel-model.json";
const STAGING: &str = ".flywheel-staging";
const ARCHIVE_SUFFIXES: [&str; 3] = [".tar.gz", ".tgz", ".tar"];

/// What went wrong in a fetch.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URI cannot be parsed or has an unsupported scheme.
    #[error("invalid model URI {uri:?}: {reason}")]
    InvalidUri {
        /// The URI given.
        uri: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Configuring a client failed (bad CA file, bad object store option).
    #[error("configuration: {0}")]
    Config(String),
    /// An object store request failed.
    #[error("object store {uri}: {source}")]
    Store {
        /// The URI fetched.
        uri: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// An HTTP request failed or answered with an error status.
    #[error("GET {url}: {reason}")]
    Http {
        /// The URL requested.
        url: String,
        /// Status or transport error.
        reason: String,
    },
    /// Nothing was found at the URI.
    #[error("nothing to fetch at {0}")]
    Empty(String),
    /// An object or archive entry would be written outside DIR.
    #[error("refusing the path {0:?}: it leaves the target directory")]
    UnsafePath(String),
    /// A download ended with another size than announced.
    #[error("{path}: got {got} bytes, expected {expected}")]
    SizeMismatch {
        /// The file.
        path: String,
        /// Bytes received.
        got: u64,
        /// Bytes announced.
        expected: u64,
    },
    /// A local file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl FetchError {
    /// Whether the failure is the caller's configuration (exit 2) rather than the source's.
    pub fn is_configuration(&self) -> bool {
        matches!(self, Self::InvalidUri { .. } | Self::Config(_))
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io { path: path.to_path_buf(), source }
}

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An S3 (or S3-compatible) bucket and key prefix.
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix, without a leading slash; empty for the whole bucket.
        prefix: String,
    },
    /// A Google Cloud Storage bucket and object prefix.
    Gs {
        /// Bucket name.
        bucket: String,
        /// Object prefix; empty for the whole bucket.
        prefix: String,
    },
    /// One file or archive over HTTPS (HTTP only when allowed).
    Https {
        /// The URL.
        url: reqwest::Url,
    },
    /// A Hugging Face Hub model repository.
    Hf {
        /// `org/name`.
        repo: String,
        /// Branch, tag or commit.
        revision: String,
    },
}

impl Source {
    /// Parses a model URI.
    pub fn parse(uri: &str, allow_http: bool) -> Result<Self, FetchError> {
        let invalid = |reason: &str| FetchError::InvalidUri { uri: uri.to_string(), reason: reason.to_string() };
        let Some((scheme, rest)) = uri.split_once("://") else {
            return Err(invalid("expected scheme://..."));
        };
        match scheme {
            "s3" | "gs" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(invalid("the bucket name is empty"));
                }
                let prefix = prefix.trim_matches('/').to_string();
                if prefix.split('/').any(|s| s == ".." || s == ".") {
                    return Err(invalid("the prefix must not contain . or .. segments"));
                }
                let bucket = bucket.to_string();
                Ok(if scheme == "s3" { Self::S3 { bucket, prefix } } else { Self::Gs { bucket, prefix } })
            }
            "https" | "http" => {
                if scheme == "http" && !allow_http {
                    return Err(invalid("plain http is refused; use https (or --allow-http for a trusted network)"));
                }
                let url = reqwest::Url::parse(uri).map_err(|e| invalid(&e.to_string()))?;
                if url.host_str().is_none_or(str::is_empty) {
                    return Err(invalid("the URL has no host"));
                }
                if file_name_of(&url).is_none() {
                    return Err(invalid("the URL must name a file or an archive (.tar, .tar.gz, .tgz)"));
                }
                Ok(Self::Https { url })
            }
            "hf" => {
                let (repo, revision) = match rest.split_once('@') {
                    Some((repo, rev)) if !rev.is_empty() => (repo, rev),
                    Some(_) => return Err(invalid("the revision after @ is empty")),
                    None => (rest, "main"),
                };
                let parts: Vec<&str> = repo.split('/').collect();
                let valid_part = |p: &&str| {
                    !p.is_empty()
                        && *p != "."
                        && *p != ".."
                        && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                };
                if parts.is_empty() || parts.len() > 2 || !parts.iter().all(valid_part) {
                    return Err(invalid("expected hf://org/name or hf://org/name@revision"));
                }
                if revision.contains("..") || revision.starts_with('/') {
                    return Err(invalid("the revision is not a branch, tag or commit"));
                }
                Ok(Self::Hf { repo: repo.to_string(), revision: revision.to_string() })
            }
            "pvc" => Err(invalid("pvc:// models are mounted by the operator, not fetched")),
            other => Err(invalid(&format!("unsupported scheme {other:?}; use s3, gs, https or hf"))),
        }
    }
}

fn file_name_of(url: &reqwest::Url) -> Option<String> {
    let name = url.path_segments()?.next_back()?.to_string();
    let name = percent_decode(&name);
    let safe = !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\\');
    safe.then_some(name)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(hex) = std::str::from_utf8(&bytes[i + 1..i + 3])
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How to fetch.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Files downloaded at once.
    pub concurrency: usize,
    /// Attempts per HTTP request on transport errors, 429 and 5xx.
    pub attempts: u32,
    /// First retry delay; doubles on each retry.
    pub retry_delay: Duration,
    /// Extra CA certificates (PEM) to trust for HTTPS, besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Allow `http://` URLs and object store endpoints.
    pub allow_http: bool,
    /// The Hugging Face Hub endpoint.
    pub hf_endpoint: String,
    /// The Hugging Face token (never logged).
    pub hf_token: Option<String>,
    /// Object store options (`aws_endpoint`, `aws_region`, `google_service_account`, ...),
    /// applied over what the environment gives.
    pub store_options: Vec<(String, String)>,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            concurrency: 4,
            attempts: 5,
            retry_delay: Duration::from_millis(500),
            ca_file: None,
            allow_http: false,
            hf_endpoint: "https://huggingface.co".to_string(),
            hf_token: None,
            store_options: Vec::new(),
        }
    }
}

impl FetchOptions {
    /// Defaults with the Hugging Face settings from `HF_ENDPOINT`, `HF_TOKEN` and
    /// `HF_TOKEN_PATH`.
    pub fn from_env() -> Self {
        let mut options = Self::default();
        if let Ok(endpoint) = std::env::var("HF_ENDPOINT")
            && !endpoint.is_empty()
        {
            options.hf_endpoint = endpoint;
        }
        options.hf_token = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()).or_else(|| {
            let path = std::env::var("HF_TOKEN_PATH").ok()?;
            let token = std::fs::read_to_string(path).ok()?;
            Some(token.trim().to_string()).filter(|t| !t.is_empty())
        });
        options
    }
}

/// What a fetch did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchReport {
    /// The URI fetched.
    pub uri: String,
    /// Files now in DIR, relative paths.
    pub files: Vec<String>,
    /// Bytes downloaded (0 when skipped).
    pub bytes: u64,
    /// DIR already held this URI; nothing was downloaded.
    #[serde(default)]
    pub skipped: bool,
}

/// One file to download.
struct Item {
    /// Path relative to DIR.
    rel: PathBuf,
    /// Size announced by the listing, when known.
    size: Option<u64>,
    what: ItemSource,
}

enum ItemSource {
    Object(Arc<dyn ObjectStore>, object_store::path::Path),
    Url(reqwest::Url),
}

/// Fetches `uri` into `dir`.
pub async fn fetch(uri: &str, dir: &Path, options: &FetchOptions) -> Result<FetchReport, FetchError> {
    let source = Source::parse(uri, options.allow_http)?;
    if let Some(report) = already_fetched(uri, dir).await {
        tracing::info!(uri, dir = %dir.display(), files = report.files.len(), "model already present; nothing to fetch");
        return Ok(report);
    }
    let http = http_client(options)?;
    tokio::fs::create_dir_all(dir).await.map_err(io_err(dir))?;
    let staging = dir.join(STAGING);
    remove_path(&staging).await?;
    tokio::fs::create_dir_all(&staging).await.map_err(io_err(&staging))?;

    let items = match &source {
        Source::S3 { bucket, prefix } => list_store(uri, store_for(&source, bucket, options)?, prefix).await?,
        Source::Gs { bucket, prefix } => list_store(uri, store_for(&source, bucket, options)?, prefix).await?,
        Source::Https { url } => {
            let name = file_name_of(url).ok_or_else(|| FetchError::Empty(uri.to_string()))?;
            vec![Item { rel: PathBuf::from(name), size: None, what: ItemSource::Url(url.clone()) }]
        }
        Source::Hf { repo, revision } => list_hf(&http, options, repo, revision).await?,
    };
    if items.is_empty() {
        return Err(FetchError::Empty(uri.to_string()));
    }
    tracing::info!(uri, files = items.len(), "fetching model");

    // The futures are built first (none runs until polled): a stream over a closure that
    // borrows each item is not `Send` for every lifetime, and the agent runs this in a task.
    let downloads: Vec<_> = items.iter().map(|item| download(&http, options, item, &staging)).collect();
    let sizes: Vec<u64> =
        futures::stream::iter(downloads).buffer_unordered(options.concurrency.max(1)).try_collect().await?;
    let bytes = sizes.iter().sum();

    if let Source::Https { .. } = source
        && let Some(item) = items.first()
        && let Some(name) = item.rel.to_str()
        && is_archive(name)
    {
        let archive = staging.join(&item.rel);
        let unpack_into = dir.join(format!("{STAGING}-unpacked"));
        remove_path(&unpack_into).await?;
        let target = unpack_into.clone();
        let archive_path = archive.clone();
        tokio::task::spawn_blocking(move || unpack(&archive_path, &target))
            .await
            .map_err(|e| FetchError::Config(format!("unpacking task failed: {e}")))??;
        remove_path(&staging).await?;
        tokio::fs::rename(&unpack_into, &staging).await.map_err(io_err(&staging))?;
    }

    let files = install(&staging, dir).await?;
    let report = FetchReport { uri: uri.to_string(), files, bytes, skipped: false };
    write_marker(dir, &report).await?;
    tracing::info!(uri, dir = %dir.display(), files = report.files.len(), bytes, "model fetched");
    Ok(report)
}

fn is_archive(name: &str) -> bool {
    ARCHIVE_SUFFIXES.iter().any(|s| name.ends_with(s))
}

async fn already_fetched(uri: &str, dir: &Path) -> Option<FetchReport> {
    let text = tokio::fs::read(dir.join(MARKER)).await.ok()?;
    let mut report: FetchReport = serde_json::from_slice(&text).ok()?;
    if report.uri != uri {
        return None;
    }
    for file in &report.files {
        if !tokio::fs::try_exists(dir.join(file)).await.unwrap_or(false) {
            return None;
        }
    }
    report.skipped = true;
    report.bytes = 0;
    Some(report)
}

fn http_client(options: &FetchOptions) -> Result<reqwest::Client, FetchError> {
    let mut builder = crate::http_client::builder()
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(120))
        .user_agent(concat!("flywheel-fetch-model/", env!("CARGO_PKG_VERSION")));
    if !options.allow_http {
        builder = builder.https_only(true);
    }
    if let Some(path) = &options.ca_file {
        let pem = std::fs::read(path).map_err(io_err(path))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| FetchError::Config(format!("{}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(FetchError::Config(format!("{}: no certificate in the file", path.display())));
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(|e| FetchError::Config(format!("HTTP client: {e}")))
}

fn store_for(source: &Source, bucket: &str, options: &FetchOptions) -> Result<Arc<dyn ObjectStore>, FetchError> {
    let bad = |k: &str, e: &dyn std::fmt::Display| FetchError::Config(format!("object store option {k}: {e}"));
    // object_store builds its own reqwest client, which takes the process's rustls provider.
    crate::http_client::install_crypto_provider();
    let retry =
        object_store::RetryConfig { max_retries: options.attempts.saturating_sub(1) as usize, ..Default::default() };
    match source {
        Source::S3 { .. } => {
            let mut builder = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_retry(retry)
                .with_allow_http(options.allow_http);
            for (k, v) in &options.store_options {
                let key = k.parse().map_err(|e| bad(k, &e))?;
                builder = builder.with_config(key, v);
            }
            let store = builder.build().map_err(|e| FetchError::Config(format!("S3 client: {e}")))?;
            Ok(Arc::new(store))
        }
        Source::Gs { .. } => {
            let mut builder =
                object_store::gcp::GoogleCloudStorageBuilder::from_env().with_bucket_name(bucket).with_retry(retry);
            for (k, v) in &options.store_options {
                let key = k.parse().map_err(|e| bad(k, &e))?;
                builder = builder.with_config(key, v);
            }
            let store = builder.build().map_err(|e| FetchError::Config(format!("GCS client: {e}")))?;
            Ok(Arc::new(store))
        }
        _ => Err(FetchError::Config("not an object store URI".to_string())),
    }
}

async fn list_store(uri: &str, store: Arc<dyn ObjectStore>, prefix: &str) -> Result<Vec<Item>, FetchError> {
    let store_err = |source| FetchError::Store { uri: uri.to_string(), source };
    let mut items = Vec::new();
    if !prefix.is_empty() {
        // The URI may name one object rather than a folder.
        let location = object_store::path::Path::from(prefix);
        match store.head(&location).await {
            Ok(meta) => {
                let name = prefix.rsplit('/').next().unwrap_or(prefix);
                items.push(Item {
                    rel: safe_relative(name)?,
                    size: Some(meta.size),
                    what: ItemSource::Object(store.clone(), meta.location),
                });
                return Ok(items);
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(store_err(e)),
        }
    }
    let list_prefix = (!prefix.is_empty()).then(|| object_store::path::Path::from(prefix));
    let mut listing = store.list(list_prefix.as_ref());
    while let Some(meta) = listing.next().await {
        let meta = meta.map_err(store_err)?;
        let key = meta.location.as_ref();
        let rel = if prefix.is_empty() { key } else { key.strip_prefix(prefix).unwrap_or(key).trim_start_matches('/') };
        if rel.is_empty() || rel.ends_with('/') {
            continue; // folder placeholder objects
        }
        items.push(Item {
            rel: safe_relative(rel)?,
            size: Some(meta.size),
            what: ItemSource::Object(store.clone(), meta.location),
        });
    }
    items.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(items)
}

#[derive(Deserialize)]
struct HfModelInfo {
    sha: Option<String>,
    #[serde(default)]
    siblings: Vec<HfSibling>,
}

#[derive(Deserialize)]
struct HfSibling {
    rfilename: String,
}

async fn list_hf(
    http: &reqwest::Client,
    options: &FetchOptions,
    repo: &str,
    revision: &str,
) -> Result<Vec<Item>, FetchError> {
    let endpoint = options.hf_endpoint.trim_end_matches('/');
    let info_url = format!("{endpoint}/api/models/{repo}/revision/{revision}");
    let url = reqwest::Url::parse(&info_url).map_err(|e| FetchError::Config(format!("HF_ENDPOINT: {e}")))?;
    let body = get_with_retries(http, options, &url)
        .await?
        .bytes()
        .await
        .map_err(|e| FetchError::Http { url: info_url.clone(), reason: e.to_string() })?;
    let info: HfModelInfo = serde_json::from_slice(&body)
        .map_err(|e| FetchError::Http { url: info_url.clone(), reason: format!("unexpected answer: {e}") })?;
    // Pin every file to the commit the revision resolved to, so a push mid-fetch cannot mix
    // two versions.
    let commit = info.sha.unwrap_or_else(|| revision.to_string());
    let mut items = Vec::new();
    let mut seen = BTreeSet::new();
    for sibling in info.siblings {
        let rel = safe_relative(&sibling.rfilename)?;
        if !seen.insert(rel.clone()) {
            continue;
        }
        let file_url = format!("{endpoint}/{repo}/resolve/{commit}/{}", sibling.rfilename);
        let url =
            reqwest::Url::parse(&file_url).map_err(|e| FetchError::Http { url: file_url, reason: e.to_string() })?;
        items.push(Item { rel, size: None, what: ItemSource::Url(url) });
    }
    Ok(items)
}

/// A relative path with only normal components, or an error.
fn safe_relative(path: &str) -> Result<PathBuf, FetchError> {
    let p = Path::new(path);
    let mut out = PathBuf::new();
    for component in p.components() {
        match component {
            Component::Normal(c) if c != STAGING && c != MARKER => out.push(c),
            Component::CurDir => {}
            _ => return Err(FetchError::UnsafePath(path.to_string())),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(FetchError::UnsafePath(path.to_string()));
    }
    Ok(out)
}

async fn get_with_retries(
    http: &reqwest::Client,
    options: &FetchOptions,
    url: &reqwest::Url,
) -> Result<reqwest::Response, FetchError> {
    let mut delay = options.retry_delay;
    let attempts = options.attempts.max(1);
    let mut attempt = 1;
    loop {
        let mut request = http.get(url.clone());
        if let Some(token) = &options.hf_token
            && url.as_str().starts_with(options.hf_endpoint.trim_end_matches('/'))
        {
            request = request.bearer_auth(token);
        }
        let outcome = match request.send().await {
            Ok(response) if response.status().is_success() => return Ok(response),
            Ok(response) => {
                let status = response.status();
                let retry = status.as_u16() == 429 || status.is_server_error();
                (retry, format!("HTTP {status}"))
            }
            Err(e) => (true, error_chain(&e)),
        };
        let (retry, reason) = outcome;
        if !retry || attempt >= attempts {
            return Err(FetchError::Http { url: redact(url), reason });
        }
        tracing::warn!(url = %redact(url), attempt, reason, "request failed; retrying");
        tokio::time::sleep(delay).await;
        delay = delay.saturating_mul(2);
        attempt += 1;
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The URL without query or credentials, for logs and errors (pre-signed URLs carry secrets).
fn redact(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    let _user = shown.set_username("");
    let _password = shown.set_password(None);
    shown.to_string()
}

async fn download(
    http: &reqwest::Client,
    options: &FetchOptions,
    item: &Item,
    staging: &Path,
) -> Result<u64, FetchError> {
    let target = staging.join(&item.rel);
    if let Some(parent) = target.parent() {
        tokio::fs::create_dir_all(parent).await.map_err(io_err(parent))?;
    }
    let shown = item.rel.display().to_string();
    // A body that breaks off mid-way is retried as a whole.
    let attempts = options.attempts.max(1);
    let mut delay = options.retry_delay;
    let mut attempt = 1;
    loop {
        match download_once(http, options, item, &target).await {
            Ok(got) => {
                if let Some(expected) = item.size
                    && got != expected
                {
                    return Err(FetchError::SizeMismatch { path: shown, got, expected });
                }
                tracing::debug!(file = %shown, bytes = got, "downloaded");
                return Ok(got);
            }
            Err(DownloadError::Transient(reason)) if attempt < attempts => {
                tracing::warn!(file = %shown, attempt, reason, "download broke off; retrying");
                tokio::time::sleep(delay).await;
                delay = delay.saturating_mul(2);
                attempt += 1;
            }
            Err(DownloadError::Transient(reason)) => {
                return Err(FetchError::Http { url: shown, reason });
            }
            Err(DownloadError::Fatal(e)) => return Err(e),
        }
    }
}

enum DownloadError {
    Transient(String),
    Fatal(FetchError),
}

impl From<FetchError> for DownloadError {
    fn from(e: FetchError) -> Self {
        Self::Fatal(e)
    }
}

async fn download_once(
    http: &reqwest::Client,
    options: &FetchOptions,
    item: &Item,
    target: &Path,
) -> Result<u64, DownloadError> {
    let mut file = tokio::fs::File::create(target).await.map_err(io_err(target))?;
    let mut written = 0u64;
    match &item.what {
        ItemSource::Object(store, location) => {
            let result =
                store.get(location).await.map_err(|source| FetchError::Store { uri: location.to_string(), source })?;
            let mut stream = result.into_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| DownloadError::Transient(e.to_string()))?;
                file.write_all(&chunk).await.map_err(io_err(target))?;
                written += chunk.len() as u64;
            }
        }
        ItemSource::Url(url) => {
            let response = get_with_retries(http, options, url).await?;
            let expected = response.content_length();
            let mut stream = response.bytes_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| DownloadError::Transient(error_chain(&e)))?;
                file.write_all(&chunk).await.map_err(io_err(target))?;
                written += chunk.len() as u64;
            }
            if let Some(expected) = expected
                && expected != written
            {
                return Err(DownloadError::Transient(format!("body ended after {written} of {expected} bytes")));
            }
        }
    }
    file.flush().await.map_err(io_err(target))?;
    file.sync_all().await.map_err(io_err(target))?;
    Ok(written)
}

/// Unpacks a tar archive (gzip-compressed when its name says so) into `into`, refusing links,
/// devices and paths that leave it.
fn unpack(archive: &Path, into: &Path) -> Result<(), FetchError> {
    std::fs::create_dir_all(into).map_err(io_err(into))?;
    let file = std::fs::File::open(archive).map_err(io_err(archive))?;
    let name = archive.to_string_lossy();
    let reader: Box<dyn std::io::Read> = if name.ends_with(".gz") || name.ends_with(".tgz") {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut tar = tar::Archive::new(reader);
    let entries = tar.entries().map_err(io_err(archive))?;
    let mut any = false;
    for entry in entries {
        let mut entry = entry.map_err(io_err(archive))?;
        let raw = entry.path().map_err(io_err(archive))?.to_string_lossy().into_owned();
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            continue;
        }
        if !kind.is_file() {
            return Err(FetchError::UnsafePath(format!("{raw} (only regular files are unpacked)")));
        }
        let rel = safe_relative(&raw)?;
        let target = into.join(&rel);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let mut out = std::fs::File::create(&target).map_err(io_err(&target))?;
        std::io::copy(&mut entry, &mut out).map_err(io_err(&target))?;
        out.sync_all().map_err(io_err(&target))?;
        any = true;
    }
    if !any {
        return Err(FetchError::Empty(format!("archive {}", archive.display())));
    }
    Ok(())
}

/// Moves every entry of `staging` into `dir`, replacing what is there, and lists the files.
async fn install(staging: &Path, dir: &Path) -> Result<Vec<String>, FetchError> {
    let mut files = Vec::new();
    collect_files(staging, staging, &mut files).await?;
    files.sort();
    let mut entries = tokio::fs::read_dir(staging).await.map_err(io_err(staging))?;
    while let Some(entry) = entries.next_entry().await.map_err(io_err(staging))? {
        let to = dir.join(entry.file_name());
        remove_path(&to).await?;
        tokio::fs::rename(entry.path(), &to).await.map_err(io_err(&to))?;
    }
    remove_path(staging).await?;
    Ok(files)
}

fn collect_files<'a>(
    root: &'a Path,
    at: &'a Path,
    out: &'a mut Vec<String>,
) -> futures::future::BoxFuture<'a, Result<(), FetchError>> {
    Box::pin(async move {
        let mut entries = tokio::fs::read_dir(at).await.map_err(io_err(at))?;
        while let Some(entry) = entries.next_entry().await.map_err(io_err(at))? {
            let path = entry.path();
            let kind = entry.file_type().await.map_err(io_err(&path))?;
            if kind.is_dir() {
                collect_files(root, &path, out).await?;
            } else if let Ok(rel) = path.strip_prefix(root) {
                out.push(rel.to_string_lossy().into_owned());
            }
        }
        Ok(())
    })
}

async fn remove_path(path: &Path) -> Result<(), FetchError> {
    match tokio::fs::symlink_metadata(path).await {
        Ok(meta) if meta.is_dir() => tokio::fs::remove_dir_all(path).await.map_err(io_err(path)),
        Ok(_) => tokio::fs::remove_file(path).await.map_err(io_err(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(FetchError::Io { path: path.to_path_buf(), source: e }),
    }
}

async fn write_marker(dir: &Path, report: &FetchReport) -> Result<(), FetchError> {
    let path = dir.join(MARKER);
    let tmp = dir.join(format!("{MARKER}.tmp"));
    let body = serde_json::to_vec_pretty(report).map_err(|e| FetchError::Config(format!("marker: {e}")))?;
    tokio::fs::write(&tmp, body).await.map_err(io_err(&tmp))?;
    tokio::fs::rename(&tmp, &path).await.map_err(io_err(&path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_supported_schemes() {
        assert_eq!(
            Source::parse("s3://models/llama/v2/", false).ok(),
            Some(Source::S3 { bucket: "models".into(), prefix: "llama/v2".into() })
        );
        assert_eq!(Source::parse("gs://b", false).ok(), Some(Source::Gs { bucket: "b".into(), prefix: String::new() }));
        assert_eq!(
            Source::parse("hf://Qwen/Qwen2.5-0.5B-Instruct", false).ok(),
            Some(Source::Hf { repo: "Qwen/Qwen2.5-0.5B-Instruct".into(), revision: "main".into() })
        );
        assert_eq!(
            Source::parse("hf://gpt2@v1.0", false).ok(),
            Some(Source::Hf { repo: "gpt2".into(), revision: "v1.0".into() })
        );
        assert!(matches!(Source::parse("https://h.example/m/model.tar.gz", false), Ok(Source::Https { .. })));
    }

    #[test]
    fn refuses_what_it_cannot_or_must_not_fetch() {
        for uri in [
            "model",
            "ftp://h/m",
            "pvc://claim/m",
            "http://h/m.bin",
            "https://h.example/",
            "s3:///prefix",
            "s3://b/../etc",
            "hf://a/b/c",
            "hf://../x",
            "hf://a/b@",
        ] {
            let err = Source::parse(uri, false).err();
            assert!(matches!(err, Some(FetchError::InvalidUri { .. })), "{uri}: {err:?}");
        }
        assert!(Source::parse("http://h/m.bin", true).is_ok());
    }

    #[test]
    fn relative_paths_stay_inside() {
        assert_eq!(safe_relative("a/b/c.json").ok(), Some(PathBuf::from("a/b/c.json")));
        assert_eq!(safe_relative("./a").ok(), Some(PathBuf::from("a")));
        for bad in ["../x", "/etc/passwd", "a/../../x", "", ".", STAGING, MARKER] {
            assert!(matches!(safe_relative(bad), Err(FetchError::UnsafePath(_))), "{bad}");
        }
    }

    #[test]
    fn names_come_from_the_last_segment_decoded() {
        let url = reqwest::Url::parse("https://h/a/model%20v1.tar.gz?sig=secret").ok();
        assert_eq!(url.as_ref().and_then(file_name_of), Some("model v1.tar.gz".to_string()));
        let shown = url.as_ref().map(redact);
        assert_eq!(shown.as_deref(), Some("https://h/a/model%20v1.tar.gz"));
        assert!(is_archive("m.tgz") && is_archive("m.tar") && !is_archive("m.safetensors"));
    }
}
