//! Dataset snapshots: SFT rows and DPO pairs built from a window of feedback, deduplicated,
//! split with the newest rows held out, encoded as JSON Lines with their digests. The layout is
//! the trainer contract's (`docs/trainer-contract.md`); the files are stored in the database
//! ([`Store::put_dataset`]), so every replica serves every snapshot.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::clock::rfc3339;
use super::event::{FeedbackValue, Message, Role};
use super::store::{DatasetFile, JoinedFeedback, Store, StoreError};
use crate::api::common::DatasetCounts;

/// The files of a snapshot, in the order `SHA256SUMS` lists them.
pub const FILES: [&str; 4] = ["dpo.heldout.jsonl", "dpo.jsonl", "sft.heldout.jsonl", "sft.jsonl"];

/// The file listing each file's digest; its own sha256 is the snapshot's.
pub const SUMS: &str = "SHA256SUMS";

/// The snapshot's description (the stored manifest).
pub const MANIFEST: &str = "manifest.json";

/// How a snapshot is built (the FeedbackPolicy's `dataset` recipe).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Recipe {
    /// `SFT`, `DPO` or both.
    pub formats: Vec<String>,
    /// Use corrections (SFT targets, DPO chosen answers).
    pub include_corrections: bool,
    /// Keep positively judged answers as SFT rows.
    pub include_positive: bool,
    /// Use selected alternatives as DPO pairs.
    pub include_alternatives: bool,
    /// Fraction of rows, the newest, held out.
    pub held_out_fraction: f64,
    /// Fewest training rows; fewer is refused with `NotEnoughRows`.
    pub min_rows: usize,
    /// Most rows per format (the newest are kept).
    pub max_rows: usize,
    /// Drop rows whose prompt and target repeat an earlier one.
    pub dedupe: bool,
    /// A normalized rating at or above this is a positive answer.
    pub rating_threshold: f64,
}

impl Default for Recipe {
    fn default() -> Self {
        Self {
            formats: vec!["SFT".into(), "DPO".into()],
            include_corrections: true,
            include_positive: true,
            include_alternatives: true,
            held_out_fraction: 0.1,
            min_rows: 1,
            max_rows: 100_000,
            dedupe: true,
            rating_threshold: 0.75,
        }
    }
}

impl Recipe {
    /// Checks the recipe, naming the field at fault.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |f: &str, m: &str| Err((format!("recipe.{f}"), m.to_string()));
        if self.formats.is_empty() || self.formats.iter().any(|f| f != "SFT" && f != "DPO") {
            return bad("formats", "must list SFT, DPO or both");
        }
        if !(0.0..=0.5).contains(&self.held_out_fraction) {
            return bad("heldOutFraction", "must be between 0 and 0.5");
        }
        if self.max_rows == 0 || self.max_rows > 10_000_000 {
            return bad("maxRows", "must be between 1 and 10000000");
        }
        if self.min_rows > self.max_rows {
            return bad("minRows", "must not exceed maxRows");
        }
        if !(0.0..=1.0).contains(&self.rating_threshold) {
            return bad("ratingThreshold", "must be between 0 and 1");
        }
        Ok(())
    }

    fn wants(&self, format: &str) -> bool {
        self.formats.iter().any(|f| f == format)
    }
}

/// A supervised row: a conversation ending with the answer to learn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SftRow {
    /// The conversation; the last message is the assistant's target.
    pub messages: Vec<Message>,
    /// `correction` or `positive`.
    pub source: String,
    /// The interaction the row comes from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interaction_id: Option<String>,
    /// The version that answered.
    pub version: String,
}

/// A preference pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DpoRow {
    /// The conversation up to the answer.
    pub prompt: Vec<Message>,
    /// The preferred answer (one assistant message).
    pub chosen: Vec<Message>,
    /// The other answer (one assistant message).
    pub rejected: Vec<Message>,
    /// `alternative` or `correction`.
    pub source: String,
    /// The interaction the row comes from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interaction_id: Option<String>,
    /// The version that answered.
    pub version: String,
}

/// The rows of a snapshot, split.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rows {
    /// SFT training rows.
    pub sft: Vec<SftRow>,
    /// SFT held-out rows.
    pub sft_held_out: Vec<SftRow>,
    /// DPO training pairs.
    pub dpo: Vec<DpoRow>,
    /// DPO held-out pairs.
    pub dpo_held_out: Vec<DpoRow>,
}

fn assistant(text: &str) -> Vec<Message> {
    vec![Message { role: Role::Assistant, content: text.to_string() }]
}

/// Builds the rows from feedback in time order (oldest first).
pub fn build(feedback: &[JoinedFeedback], recipe: &Recipe) -> Rows {
    // Interactions judged badly somewhere in the window never give a positive row.
    let mut judged_bad: HashSet<&str> = HashSet::new();
    for j in feedback {
        let bad = match &j.feedback.value {
            FeedbackValue::Thumbs { up } => !up,
            FeedbackValue::Rating { .. } => {
                j.feedback.value.normalized_rating().is_some_and(|r| r < recipe.rating_threshold)
            }
            FeedbackValue::Correction { .. } | FeedbackValue::Error { .. } => true,
            _ => false,
        };
        if bad && let Some(id) = &j.feedback.interaction_id {
            judged_bad.insert(id);
        }
    }
    let mut sft: Vec<SftRow> = Vec::new();
    let mut dpo: Vec<DpoRow> = Vec::new();
    let mut positive_seen: HashSet<&str> = HashSet::new();
    for j in feedback {
        let f = &j.feedback;
        let Some(version) = f.version.clone() else { continue };
        let prompt = j.interaction.as_ref().map(|i| i.prompt.clone()).or_else(|| f.prompt.clone());
        let answer = j.interaction.as_ref().map(|i| i.answer.clone()).or_else(|| f.answer.clone());
        let Some(prompt) = prompt else { continue };
        let iid = f.interaction_id.clone();
        match &f.value {
            FeedbackValue::Correction { text } if recipe.include_corrections => {
                if recipe.wants("SFT") {
                    let mut messages = prompt.clone();
                    messages.extend(assistant(text));
                    sft.push(SftRow {
                        messages,
                        source: "correction".into(),
                        interaction_id: iid.clone(),
                        version: version.clone(),
                    });
                }
                if recipe.wants("DPO")
                    && let Some(answer) = answer.as_deref()
                    && answer != text
                {
                    dpo.push(DpoRow {
                        prompt,
                        chosen: assistant(text),
                        rejected: assistant(answer),
                        source: "correction".into(),
                        interaction_id: iid,
                        version,
                    });
                }
            }
            FeedbackValue::Thumbs { up: true } | FeedbackValue::Rating { .. }
                if recipe.include_positive && recipe.wants("SFT") =>
            {
                let positive = match &f.value {
                    FeedbackValue::Rating { .. } => {
                        f.value.normalized_rating().is_some_and(|r| r >= recipe.rating_threshold)
                    }
                    _ => true,
                };
                let Some(answer) = answer else { continue };
                if !positive {
                    continue;
                }
                if let Some(id) = f.interaction_id.as_deref() {
                    // One positive row per interaction, and none for one also judged badly.
                    if judged_bad.contains(id) || !positive_seen.insert(id) {
                        continue;
                    }
                }
                let mut messages = prompt;
                messages.extend(assistant(&answer));
                sft.push(SftRow { messages, source: "positive".into(), interaction_id: iid, version });
            }
            FeedbackValue::Alternative { candidates, chosen } if recipe.include_alternatives && recipe.wants("DPO") => {
                let Some(best) = candidates.get(*chosen) else { continue };
                for (k, other) in candidates.iter().enumerate() {
                    if k == *chosen || other == best {
                        continue;
                    }
                    dpo.push(DpoRow {
                        prompt: prompt.clone(),
                        chosen: assistant(best),
                        rejected: assistant(other),
                        source: "alternative".into(),
                        interaction_id: iid.clone(),
                        version: version.clone(),
                    });
                }
            }
            _ => {}
        }
    }
    if recipe.dedupe {
        let mut seen = HashSet::new();
        sft.retain(|r| seen.insert(serde_json::to_string(&r.messages).unwrap_or_default()));
        let mut seen = HashSet::new();
        dpo.retain(|r| seen.insert(serde_json::to_string(&(&r.prompt, &r.chosen, &r.rejected)).unwrap_or_default()));
    }
    // Keep the newest rows when there are too many.
    if sft.len() > recipe.max_rows {
        sft.drain(..sft.len() - recipe.max_rows);
    }
    if dpo.len() > recipe.max_rows {
        dpo.drain(..dpo.len() - recipe.max_rows);
    }
    let held = |n: usize| -> usize {
        if recipe.held_out_fraction <= 0.0 || n < 2 {
            return 0;
        }
        ((n as f64 * recipe.held_out_fraction).round() as usize).clamp(1, n - 1)
    };
    let sft_held_out = sft.split_off(sft.len() - held(sft.len()));
    let dpo_held_out = dpo.split_off(dpo.len() - held(dpo.len()));
    // No prompt of the held-out rows may be trained on.
    let sft_prompt =
        |r: &SftRow| serde_json::to_string(&r.messages[..r.messages.len().saturating_sub(1)]).unwrap_or_default();
    let dpo_prompt = |r: &DpoRow| serde_json::to_string(&r.prompt).unwrap_or_default();
    let held_prompts: BTreeSet<String> =
        sft_held_out.iter().map(sft_prompt).chain(dpo_held_out.iter().map(dpo_prompt)).collect();
    sft.retain(|r| !held_prompts.contains(&sft_prompt(r)));
    dpo.retain(|r| !held_prompts.contains(&dpo_prompt(r)));
    Rows { sft, sft_held_out, dpo, dpo_held_out }
}

fn jsonl<T: Serialize>(rows: &[T]) -> Vec<u8> {
    let mut out = Vec::new();
    for row in rows {
        if let Ok(line) = serde_json::to_vec(row) {
            out.extend(line);
            out.push(b'\n');
        }
    }
    out
}

/// The snapshot's files and digests, ready to write.
pub struct Encoded {
    /// File name → bytes.
    pub files: BTreeMap<&'static str, Vec<u8>>,
    /// The `SHA256SUMS` file.
    pub sums: String,
    /// sha256 of `SHA256SUMS`: the snapshot's digest.
    pub sha256: String,
}

/// Encodes the rows in the contract's layout.
pub fn encode(rows: &Rows) -> Encoded {
    let mut files = BTreeMap::new();
    files.insert("sft.jsonl", jsonl(&rows.sft));
    files.insert("sft.heldout.jsonl", jsonl(&rows.sft_held_out));
    files.insert("dpo.jsonl", jsonl(&rows.dpo));
    files.insert("dpo.heldout.jsonl", jsonl(&rows.dpo_held_out));
    let mut sums = String::new();
    for name in FILES {
        let digest = hex::encode(Sha256::digest(files.get(name).map(Vec::as_slice).unwrap_or_default()));
        sums.push_str(&format!("{digest}  {name}\n"));
    }
    let sha256 = hex::encode(Sha256::digest(sums.as_bytes()));
    Encoded { files, sums, sha256 }
}

/// The snapshot id for a deployment and digest: the same rows give the same id.
pub fn snapshot_id(namespace: &str, deployment: &str, sha256: &str) -> String {
    let digest = hex::encode(Sha256::digest(format!("{namespace}/{deployment}/{sha256}").as_bytes()));
    format!("ds-{}", &digest[..20])
}

/// The files a snapshot stores: the four JSON Lines files and `SHA256SUMS` (`manifest.json` is
/// the stored description).
pub fn stored_files(encoded: Encoded) -> Vec<DatasetFile> {
    let mut out: Vec<DatasetFile> =
        encoded.files.into_iter().map(|(name, bytes)| DatasetFile { name: name.to_string(), bytes }).collect();
    out.push(DatasetFile { name: SUMS.to_string(), bytes: encoded.sums.into_bytes() });
    out
}

/// A snapshot folder an older collector wrote into `<data-dir>/datasets/` that cannot be moved
/// into the store.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A file cannot be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The folder does not hold a whole snapshot whose digests match.
    #[error("{path}: {reason}")]
    Invalid {
        /// The folder or file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The store refused it.
    #[error("storing it: {0}")]
    Store(#[from] StoreError),
    /// The blocking read panicked.
    #[error("reading it: {0}")]
    Task(String),
}

/// A snapshot read back from a folder: its manifest, namespace, deployment and files.
pub struct FolderSnapshot {
    /// The snapshot id (the folder's name).
    pub id: String,
    /// Its namespace.
    pub namespace: String,
    /// Its deployment.
    pub deployment: String,
    /// Its manifest.
    pub manifest: Value,
    /// `SHA256SUMS` and the four JSON Lines files.
    pub files: Vec<DatasetFile>,
}

/// Reads a snapshot folder (`manifest.json`, `SHA256SUMS` and the four JSON Lines files),
/// checking that `SHA256SUMS` is the manifest's sha256 and lists every file with its digest.
pub fn read_folder(dir: &Path) -> Result<FolderSnapshot, ImportError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|source| ImportError::Io { path, source })
    };
    let invalid = |reason: String| ImportError::Invalid { path: dir.to_path_buf(), reason };
    let id = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
    let manifest: Value = serde_json::from_slice(&read(MANIFEST)?)
        .map_err(|e| ImportError::Invalid { path: dir.join(MANIFEST), reason: e.to_string() })?;
    let text = |k: &str| manifest.get(k).and_then(Value::as_str).map(str::to_string);
    if text("id").as_deref() != Some(id.as_str()) {
        return Err(invalid(format!("{MANIFEST} names another snapshot than {id}")));
    }
    let (Some(namespace), Some(deployment)) = (text("namespace"), text("deployment")) else {
        return Err(invalid(format!("{MANIFEST} has no namespace or deployment")));
    };
    let sums = read(SUMS)?;
    if text("sha256").as_deref() != Some(hex::encode(Sha256::digest(&sums)).as_str()) {
        return Err(invalid(format!("{SUMS} does not match the manifest's sha256")));
    }
    let listed: BTreeMap<&str, &str> = std::str::from_utf8(&sums)
        .map_err(|e| invalid(format!("{SUMS}: {e}")))?
        .lines()
        .filter_map(|l| l.split_once("  ").map(|(digest, name)| (name, digest)))
        .collect();
    let mut files = Vec::with_capacity(FILES.len() + 1);
    for name in FILES {
        let bytes = read(name)?;
        if listed.get(name).copied() != Some(hex::encode(Sha256::digest(&bytes)).as_str()) {
            return Err(invalid(format!("{name} does not match its digest in {SUMS}")));
        }
        files.push(DatasetFile { name: name.to_string(), bytes });
    }
    files.push(DatasetFile { name: SUMS.to_string(), bytes: sums });
    Ok(FolderSnapshot { id, namespace, deployment, manifest, files })
}

/// Moves the snapshots an older collector kept in `root` (`<data-dir>/datasets/`) into the
/// store, so that every replica serves them, and removes each folder once it is stored; a
/// folder that cannot be read or does not match its digests is left where it is, with a
/// warning. Returns how many were moved.
pub async fn import_folders(store: &Store, root: &Path) -> usize {
    let listing = match std::fs::read_dir(root) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return 0,
        Err(e) => {
            tracing::warn!(error = %e, path = %root.display(), "listing old dataset snapshots failed");
            return 0;
        }
    };
    let mut moved = 0;
    for entry in listing.flatten() {
        let dir = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            // A folder an interrupted write left behind.
            let _removed = std::fs::remove_dir_all(&dir);
            continue;
        }
        if !name.starts_with("ds-") || !dir.is_dir() {
            continue;
        }
        match import_folder(store, dir.clone()).await {
            Ok(()) => {
                moved += 1;
                tracing::info!(dataset = %name, "dataset snapshot moved from the data directory into the store");
                if let Err(e) = std::fs::remove_dir_all(&dir)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(error = %e, path = %dir.display(), "removing a moved snapshot's folder failed");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, dataset = %name, "an old dataset snapshot was not moved into the store")
            }
        }
    }
    let _removed_if_empty = std::fs::remove_dir(root);
    moved
}

async fn import_folder(store: &Store, dir: PathBuf) -> Result<(), ImportError> {
    let snapshot = tokio::task::spawn_blocking(move || read_folder(&dir))
        .await
        .map_err(|e| ImportError::Task(e.to_string()))??;
    let FolderSnapshot { id, namespace, deployment, manifest, files } = snapshot;
    store.put_dataset(&id, &namespace, &deployment, &manifest, files).await?;
    Ok(())
}

/// Row counts as the manifest and the RetrainJob carry them.
pub fn counts(rows: &Rows) -> DatasetCounts {
    DatasetCounts {
        sft: rows.sft.len() as i64,
        dpo: rows.dpo.len() as i64,
        held_out: (rows.sft_held_out.len() + rows.dpo_held_out.len()) as i64,
    }
}

/// A snapshot's description: the stored manifest, served as `GET /v1/datasets/{id}` and as
/// `manifest.json`, and the answer of `POST /v1/datasets`, which the server serializes and
/// [`super::client`] reads back. A reader needs only the id, the digest and the counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// The snapshot id ([`snapshot_id`]).
    pub id: String,
    /// The deployment's namespace.
    #[serde(default)]
    pub namespace: String,
    /// The deployment.
    #[serde(default)]
    pub deployment: String,
    /// Start of the window (RFC 3339).
    #[serde(default)]
    pub from: String,
    /// End of the window (RFC 3339).
    #[serde(default)]
    pub to: String,
    /// When it was built (RFC 3339).
    #[serde(default)]
    pub created_at: String,
    /// How it was built.
    #[serde(default)]
    pub recipe: Recipe,
    /// The recipe's formats.
    #[serde(default)]
    pub formats: Vec<String>,
    /// Row counts.
    pub counts: DatasetCounts,
    /// sha256 of `SHA256SUMS`.
    pub sha256: String,
    /// The four JSON Lines files by name.
    #[serde(default)]
    pub files: BTreeMap<String, FileSummary>,
    /// Where the files are served: `/v1/datasets/<id>/files`.
    #[serde(default)]
    pub download_path: String,
}

/// One file of a snapshot as its manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSummary {
    /// sha256 of the bytes, hex.
    pub sha256: String,
    /// Lines (rows).
    pub rows: usize,
    /// Length in bytes.
    pub bytes: usize,
}

/// Where and when a snapshot was built, and of which rows.
pub struct Built<'a> {
    /// The deployment's namespace.
    pub namespace: &'a str,
    /// The deployment.
    pub deployment: &'a str,
    /// The window, Unix ms.
    pub from_ms: i64,
    /// The window, Unix ms.
    pub to_ms: i64,
    /// Now, Unix ms.
    pub now_ms: i64,
    /// The recipe.
    pub recipe: &'a Recipe,
    /// Row counts.
    pub counts: DatasetCounts,
}

impl Manifest {
    /// The description of the snapshot `encoded` holds.
    pub fn new(built: &Built<'_>, encoded: &Encoded) -> Self {
        let id = snapshot_id(built.namespace, built.deployment, &encoded.sha256);
        let files = encoded
            .files
            .iter()
            .map(|(name, bytes)| {
                let rows = bytes.iter().filter(|b| **b == b'\n').count();
                let sha256 = hex::encode(Sha256::digest(bytes));
                ((*name).to_string(), FileSummary { sha256, rows, bytes: bytes.len() })
            })
            .collect();
        Manifest {
            download_path: format!("/v1/datasets/{id}/files"),
            id,
            namespace: built.namespace.to_string(),
            deployment: built.deployment.to_string(),
            from: rfc3339(built.from_ms),
            to: rfc3339(built.to_ms),
            created_at: rfc3339(built.now_ms),
            recipe: built.recipe.clone(),
            formats: built.recipe.formats.clone(),
            counts: built.counts,
            sha256: encoded.sha256.clone(),
            files,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::event::{Feedback, Interaction};

    fn interaction(id: &str, prompt: &str, answer: &str) -> Interaction {
        Interaction {
            id: id.into(),
            namespace: "ns".into(),
            deployment: "md".into(),
            version: "v1".into(),
            prompt: vec![Message { role: Role::User, content: prompt.into() }],
            answer: answer.into(),
            latency_ms: None,
            subject: None,
            session: None,
            metadata: None,
            time_ms: 0,
            hash: [0; 32],
        }
    }

    fn fb(id: &str, i: &Interaction, value: FeedbackValue, t: i64) -> JoinedFeedback {
        JoinedFeedback {
            feedback: Feedback {
                id: id.into(),
                namespace: Some("ns".into()),
                deployment: Some("md".into()),
                version: Some("v1".into()),
                interaction_id: Some(i.id.clone()),
                value,
                prompt: None,
                answer: None,
                subject: None,
                session: None,
                metadata: None,
                time_ms: t,
                hash: [0; 32],
            },
            interaction: Some(i.clone()),
        }
    }

    #[test]
    fn rows_follow_the_recipe() {
        let a = interaction("a", "2+2?", "5");
        let b = interaction("b", "capital of France?", "Paris");
        let c = interaction("c", "colour of the sky?", "blue");
        let d = interaction("d", "best editor?", "ed");
        let events = vec![
            fb("f1", &a, FeedbackValue::Correction { text: "4".into() }, 1),
            fb("f2", &b, FeedbackValue::Thumbs { up: true }, 2),
            fb("f3", &b, FeedbackValue::Rating { value: 5.0, min: 1.0, max: 5.0 }, 3),
            fb("f4", &a, FeedbackValue::Thumbs { up: true }, 4),
            fb(
                "f5",
                &c,
                FeedbackValue::Alternative {
                    candidates: vec!["blue".into(), "green".into(), "blue".into()],
                    chosen: 0,
                },
                5,
            ),
            fb("f6", &d, FeedbackValue::Rating { value: 2.0, min: 1.0, max: 5.0 }, 6),
        ];
        let recipe = Recipe { held_out_fraction: 0.0, ..Recipe::default() };
        let rows = build(&events, &recipe);
        let targets: Vec<(&str, &str)> = rows
            .sft
            .iter()
            .map(|r| (r.source.as_str(), r.messages.last().map_or("", |m| m.content.as_str())))
            .collect();
        // a's thumbs up is ignored (a was corrected), b gives one positive row, d's low rating none.
        assert_eq!(targets, [("correction", "4"), ("positive", "Paris")]);
        let pairs: Vec<(&str, &str, &str)> = rows
            .dpo
            .iter()
            .map(|r| (r.source.as_str(), r.chosen[0].content.as_str(), r.rejected[0].content.as_str()))
            .collect();
        assert_eq!(pairs, [("correction", "4", "5"), ("alternative", "blue", "green")]);

        let only_sft = Recipe { formats: vec!["SFT".into()], held_out_fraction: 0.0, ..Recipe::default() };
        assert!(build(&events, &only_sft).dpo.is_empty());
        let no_positive = Recipe { include_positive: false, held_out_fraction: 0.0, ..Recipe::default() };
        assert_eq!(build(&events, &no_positive).sft.len(), 1);
    }

    #[test]
    fn the_newest_rows_are_held_out_and_their_prompts_not_trained_on() {
        let mut events = Vec::new();
        for n in 0..10 {
            let i = interaction(&format!("i{n}"), &format!("q{}", n % 8), &format!("a{n}"));
            events.push(fb(&format!("f{n}"), &i, FeedbackValue::Correction { text: format!("c{n}") }, n));
        }
        let recipe = Recipe { formats: vec!["SFT".into()], held_out_fraction: 0.2, dedupe: false, ..Recipe::default() };
        let rows = build(&events, &recipe);
        let held: Vec<&str> = rows.sft_held_out.iter().map(|r| r.messages[1].content.as_str()).collect();
        assert_eq!(held, ["c8", "c9"]);
        // q0 and q1 are the held-out prompts, so rows 0 and 1 leave the training split.
        let trained: Vec<&str> = rows.sft.iter().map(|r| r.messages[1].content.as_str()).collect();
        assert_eq!(trained, ["c2", "c3", "c4", "c5", "c6", "c7"]);
    }

    #[test]
    fn the_digest_depends_on_the_rows_only() {
        let i = interaction("i", "q", "a");
        let events = vec![fb("f", &i, FeedbackValue::Correction { text: "b".into() }, 1)];
        let one = encode(&build(&events, &Recipe::default()));
        let two = encode(&build(&events, &Recipe::default()));
        assert_eq!(one.sha256, two.sha256);
        assert_eq!(one.sums.lines().count(), 4);
        let other = encode(&build(&events, &Recipe { formats: vec!["SFT".into()], ..Recipe::default() }));
        assert_ne!(one.sha256, other.sha256);
    }
}
