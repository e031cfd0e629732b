//! Events as rows and rows as values, for both stores: what an event's columns hold, and one
//! decoder per query that reads its columns in the order [`super::sql`] selects them, over
//! [`Columns`], which both drivers' rows implement.

use serde_json::Value;

use super::types::{Aggregate, JoinedFeedback, StoreError, StoredFeedback, StoredFile};
use crate::collector::event::{Feedback, FeedbackValue, Interaction, Kind};

/// A column type both drivers read.
pub(super) trait FromColumn: rusqlite::types::FromSql + for<'a> tokio_postgres::types::FromSql<'a> {}

impl<T: rusqlite::types::FromSql + for<'a> tokio_postgres::types::FromSql<'a>> FromColumn for T {}

/// A result row of either driver.
pub(super) trait Columns {
    /// Column `i` (from 0); `context` names the query in the error.
    fn column<T: FromColumn>(&self, i: usize, context: &'static str) -> Result<T, StoreError>;
}

impl Columns for rusqlite::Row<'_> {
    fn column<T: FromColumn>(&self, i: usize, context: &'static str) -> Result<T, StoreError> {
        self.get(i).map_err(|source| StoreError::Sqlite { context, source })
    }
}

impl Columns for tokio_postgres::Row {
    fn column<T: FromColumn>(&self, i: usize, context: &'static str) -> Result<T, StoreError> {
        self.try_get(i).map_err(|source| StoreError::Postgres { context, source })
    }
}

/// JSON text of a value that serializes (`null` if it does not).
pub(super) fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".to_string())
}

/// The stored body of a feedback event: everything but the indexed columns.
pub(super) fn feedback_body(f: &Feedback) -> String {
    to_json(&serde_json::json!({
        "value": f.value,
        "prompt": f.prompt,
        "answer": f.answer,
        "metadata": f.metadata,
    }))
}

/// The `up` column: the direction of a thumbs event.
pub(super) fn thumbs_up(f: &Feedback) -> Option<bool> {
    match f.value {
        FeedbackValue::Thumbs { up } => Some(up),
        _ => None,
    }
}

/// The columns a stored feedback event is read back from.
struct FeedbackColumns {
    id: String,
    namespace: Option<String>,
    deployment: Option<String>,
    version: Option<String>,
    interaction_id: Option<String>,
    body: String,
    subject: Option<String>,
    session: Option<String>,
    time_ms: i64,
}

impl FeedbackColumns {
    fn into_feedback(self) -> Result<Feedback, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt { id: self.id.clone(), reason };
        let v: Value = serde_json::from_str(&self.body).map_err(|e| corrupt(e.to_string()))?;
        let field = |k: &str| v.get(k).cloned().unwrap_or(Value::Null);
        let value = serde_json::from_value(field("value")).map_err(|e| corrupt(e.to_string()))?;
        let prompt = serde_json::from_value(field("prompt")).map_err(|e| corrupt(e.to_string()))?;
        let answer = v.get("answer").and_then(Value::as_str).map(str::to_string);
        let metadata = v.get("metadata").and_then(Value::as_object).cloned();
        Ok(Feedback {
            id: self.id,
            namespace: self.namespace,
            deployment: self.deployment,
            version: self.version,
            interaction_id: self.interaction_id,
            value,
            prompt,
            answer,
            subject: self.subject,
            session: self.session,
            metadata,
            time_ms: self.time_ms,
            hash: [0; 32],
        })
    }
}

/// A row of [`super::sql::AGGREGATES`].
pub(super) fn aggregate(r: &impl Columns) -> Result<Aggregate, StoreError> {
    const C: &str = "statistics column";
    let version: String = r.column(0, C)?;
    let kind: String = r.column(1, C)?;
    let kind = Kind::parse(&kind)
        .ok_or_else(|| StoreError::Corrupt { id: version.clone(), reason: format!("kind {kind}") })?;
    Ok(Aggregate {
        version,
        kind,
        up: r.column(2, C)?,
        label: r.column(3, C)?,
        count: r.column(4, C)?,
        rating_sum: r.column(5, C)?,
        rating_positive: r.column::<Option<i64>>(6, C)?.unwrap_or(0),
        first_ms: r.column(7, C)?,
        last_ms: r.column(8, C)?,
    })
}

/// A row of [`super::sql::INTERACTION_COUNTS`].
pub(super) fn interaction_count(r: &impl Columns) -> Result<(String, i64), StoreError> {
    Ok((r.column(0, "interaction counts")?, r.column(1, "interaction counts")?))
}

/// A row of [`super::sql::JOINED_FEEDBACK`] of the deployment `namespace`/`deployment`.
pub(super) fn joined_feedback(
    r: &impl Columns,
    namespace: &str,
    deployment: &str,
) -> Result<JoinedFeedback, StoreError> {
    const C: &str = "dataset column";
    let feedback = FeedbackColumns {
        id: r.column(0, C)?,
        namespace: r.column(1, C)?,
        deployment: r.column(2, C)?,
        version: r.column(3, C)?,
        interaction_id: r.column(4, C)?,
        body: r.column(5, C)?,
        subject: None,
        session: None,
        time_ms: r.column(6, C)?,
    }
    .into_feedback()?;
    let interaction = match r.column::<Option<String>>(7, C)? {
        Some(id) => {
            let prompt: String = r.column(9, C)?;
            let prompt = serde_json::from_str(&prompt)
                .map_err(|e| StoreError::Corrupt { id: id.clone(), reason: e.to_string() })?;
            Some(Interaction {
                id,
                namespace: namespace.to_string(),
                deployment: deployment.to_string(),
                version: r.column(8, C)?,
                prompt,
                answer: r.column(10, C)?,
                latency_ms: None,
                subject: None,
                session: None,
                metadata: None,
                time_ms: r.column(11, C)?,
                hash: [0; 32],
            })
        }
        None => None,
    };
    Ok(JoinedFeedback { feedback, interaction })
}

/// A row of [`super::sql::FEEDBACK_AFTER`].
pub(super) fn stored_feedback(r: &impl Columns) -> Result<StoredFeedback, StoreError> {
    const C: &str = "feedback column";
    let feedback = FeedbackColumns {
        id: r.column(1, C)?,
        namespace: r.column(2, C)?,
        deployment: r.column(3, C)?,
        version: r.column(4, C)?,
        interaction_id: r.column(5, C)?,
        body: r.column(6, C)?,
        subject: r.column(7, C)?,
        session: r.column(8, C)?,
        time_ms: r.column(9, C)?,
    }
    .into_feedback()?;
    Ok(StoredFeedback { seq: r.column(0, C)?, feedback })
}

/// A row of [`super::sql::SELECT_DATASET_FILE`].
pub(super) fn stored_file(r: &impl Columns) -> Result<StoredFile, StoreError> {
    Ok(StoredFile { sha256: r.column(0, "dataset file column")?, size: r.column(1, "dataset file column")? })
}
