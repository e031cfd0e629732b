//! The collector's events: interactions and feedback, decoded from JSON with an error that
//! names the field at fault, bounded field by field.

use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Most messages in a prompt.
pub const MAX_MESSAGES: usize = 256;
/// Most bytes of one text (a message, an answer, a correction, a candidate).
pub const MAX_TEXT: usize = 256 * 1024;
/// Most bytes of all of a prompt's messages together.
pub const MAX_PROMPT: usize = 512 * 1024;
/// Most candidates of an alternative.
pub const MAX_CANDIDATES: usize = 16;
/// Most bytes of serialized metadata.
pub const MAX_METADATA: usize = 16 * 1024;
/// Most keys of metadata.
pub const MAX_METADATA_KEYS: usize = 32;
/// Most bytes of a label, a subject or a session key.
pub const MAX_KEY: usize = 256;
/// Most bytes of an event id.
pub const MAX_ID: usize = 128;

/// A field that is missing, of the wrong type, or out of bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// JSON path of the field, for example `value` or `prompt[2].role`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError { field: field.into(), message: message.into() }
}

/// Who wrote a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions.
    System,
    /// The user.
    User,
    /// The model.
    Assistant,
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// What it says.
    pub content: String,
}

/// The kinds of feedback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Thumbs up (true) or down (false).
    Thumbs,
    /// A rating on a scale.
    Rating,
    /// The answer the user wanted instead.
    Correction,
    /// The candidate the user chose among several.
    Alternative,
    /// The answer was an error.
    Error,
    /// A free-form label.
    Label,
}

impl Kind {
    /// Every kind, in the order statistics list them.
    pub const ALL: [Kind; 6] =
        [Kind::Thumbs, Kind::Rating, Kind::Correction, Kind::Alternative, Kind::Error, Kind::Label];

    /// The kind's name on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Thumbs => "thumbs",
            Kind::Rating => "rating",
            Kind::Correction => "correction",
            Kind::Alternative => "alternative",
            Kind::Error => "error",
            Kind::Label => "label",
        }
    }

    /// The kind named `s`.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// What a feedback event says, by kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum FeedbackValue {
    /// Thumbs up or down.
    Thumbs {
        /// Up.
        up: bool,
    },
    /// A rating and its scale.
    Rating {
        /// The rating given.
        value: f64,
        /// Lowest rating of the scale.
        min: f64,
        /// Highest rating of the scale.
        max: f64,
    },
    /// The text the user wanted.
    Correction {
        /// The corrected answer.
        text: String,
    },
    /// The candidates shown and the one chosen.
    Alternative {
        /// The candidates, in the order shown.
        candidates: Vec<String>,
        /// Index of the chosen candidate.
        chosen: usize,
    },
    /// The answer was an error.
    Error {
        /// What went wrong, when known.
        message: Option<String>,
    },
    /// A label.
    Label {
        /// The label.
        label: String,
    },
}

impl FeedbackValue {
    /// The kind of this value.
    pub fn kind(&self) -> Kind {
        match self {
            FeedbackValue::Thumbs { .. } => Kind::Thumbs,
            FeedbackValue::Rating { .. } => Kind::Rating,
            FeedbackValue::Correction { .. } => Kind::Correction,
            FeedbackValue::Alternative { .. } => Kind::Alternative,
            FeedbackValue::Error { .. } => Kind::Error,
            FeedbackValue::Label { .. } => Kind::Label,
        }
    }

    /// The rating normalized to 0..1, for ratings.
    pub fn normalized_rating(&self) -> Option<f64> {
        match self {
            FeedbackValue::Rating { value, min, max } => Some((value - min) / (max - min)),
            _ => None,
        }
    }

    /// The label, for labels.
    pub fn label(&self) -> Option<&str> {
        match self {
            FeedbackValue::Label { label } => Some(label),
            _ => None,
        }
    }
}

/// A prompt and the answer a model version gave, captured by the agent or posted by an
/// application.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interaction {
    /// Client id (idempotency key).
    pub id: String,
    /// Namespace of the ModelDeployment.
    pub namespace: String,
    /// The ModelDeployment.
    pub deployment: String,
    /// The model version that answered.
    pub version: String,
    /// The conversation up to the answer.
    pub prompt: Vec<Message>,
    /// The answer.
    pub answer: String,
    /// Time to answer, milliseconds.
    pub latency_ms: Option<u64>,
    /// User key, for deletion on request.
    pub subject: Option<String>,
    /// Session key.
    pub session: Option<String>,
    /// Free-form metadata.
    pub metadata: Option<Map<String, Value>>,
    /// When it happened, Unix milliseconds.
    pub time_ms: i64,
    /// sha256 of the event as the client sent it.
    #[serde(skip)]
    pub hash: [u8; 32],
}

/// One piece of feedback on an answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Feedback {
    /// Client id (idempotency key).
    pub id: String,
    /// Namespace; from the interaction when only `interactionId` is given.
    pub namespace: Option<String>,
    /// The ModelDeployment; from the interaction when only `interactionId` is given.
    pub deployment: Option<String>,
    /// The version; from the interaction when only `interactionId` is given.
    pub version: Option<String>,
    /// The interaction the feedback is about.
    pub interaction_id: Option<String>,
    /// What the feedback says.
    pub value: FeedbackValue,
    /// The prompt, when the application sends it with the feedback.
    pub prompt: Option<Vec<Message>>,
    /// The answer judged, when the application sends it with the feedback.
    pub answer: Option<String>,
    /// User key.
    pub subject: Option<String>,
    /// Session key.
    pub session: Option<String>,
    /// Free-form metadata.
    pub metadata: Option<Map<String, Value>>,
    /// When it happened, Unix milliseconds.
    pub time_ms: i64,
    /// sha256 of the event as the client sent it.
    #[serde(skip)]
    pub hash: [u8; 32],
}

/// A decoded event of either type.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// An interaction.
    Interaction(Interaction),
    /// Feedback.
    Feedback(Feedback),
}

impl Event {
    /// The client id.
    pub fn id(&self) -> &str {
        match self {
            Event::Interaction(i) => &i.id,
            Event::Feedback(f) => &f.id,
        }
    }
}

/// The sha256 of a JSON value in canonical form (object keys sorted, no spaces), so that the
/// same event sent twice hashes the same whatever its key order.
pub fn canonical_hash(value: &Value) -> [u8; 32] {
    let mut hasher = Sha256::new();
    write_canonical(value, &mut hasher);
    hasher.finalize().into()
}

fn write_canonical(value: &Value, h: &mut Sha256) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            h.update(b"{");
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    h.update(b",");
                }
                h.update(Value::String((*k).clone()).to_string().as_bytes());
                h.update(b":");
                if let Some(v) = map.get(*k) {
                    write_canonical(v, h);
                }
            }
            h.update(b"}");
        }
        Value::Array(items) => {
            h.update(b"[");
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    h.update(b",");
                }
                write_canonical(v, h);
            }
            h.update(b"]");
        }
        other => h.update(other.to_string().as_bytes()),
    }
}

/// Reads the fields of one JSON object, remembering which were read so unknown ones are
/// reported.
struct Fields<'a> {
    map: &'a Map<String, Value>,
    prefix: String,
    known: Vec<&'static str>,
}

impl<'a> Fields<'a> {
    fn new(value: &'a Value, prefix: &str) -> Result<Self, FieldError> {
        match value {
            Value::Object(map) => Ok(Self { map, prefix: prefix.to_string(), known: Vec::new() }),
            _ => Err(err(if prefix.is_empty() { "(body)" } else { prefix }, "must be a JSON object")),
        }
    }

    fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) }
    }

    fn get(&mut self, name: &'static str) -> Option<&'a Value> {
        self.known.push(name);
        self.map.get(name).filter(|v| !v.is_null())
    }

    fn string(&mut self, name: &'static str, max: usize) -> Result<Option<String>, FieldError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => {
                if s.len() > max {
                    Err(err(self.path(name), format!("must be at most {max} bytes, got {}", s.len())))
                } else {
                    Ok(Some(s.clone()))
                }
            }
            Some(_) => Err(err(self.path(name), "must be a string")),
        }
    }

    fn required_string(&mut self, name: &'static str, max: usize) -> Result<String, FieldError> {
        self.string(name, max)?.ok_or_else(|| err(self.path(name), "is required"))
    }

    fn finish(self) -> Result<(), FieldError> {
        let mut unknown: Vec<&String> = self.map.keys().filter(|k| !self.known.contains(&k.as_str())).collect();
        unknown.sort();
        match unknown.first() {
            Some(k) => Err(err(self.path(k), "unknown field")),
            None => Ok(()),
        }
    }
}

fn check_id(field: &str, id: &str) -> Result<(), FieldError> {
    let ok =
        !id.is_empty() && id.len() <= MAX_ID && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(err(field, format!("must be 1 to {MAX_ID} characters of letters, digits, '-', '_', '.', ':'")))
    }
}

/// Whether `s` is 1 to `max` bytes of lower-case letters, digits and `inner`, starting and
/// ending with a letter or digit (DNS names, version labels).
fn is_name(s: &str, max: usize, inner: &[u8]) -> bool {
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = s.as_bytes();
    !s.is_empty()
        && s.len() <= max
        && bytes.first().is_some_and(alnum)
        && bytes.last().is_some_and(alnum)
        && bytes.iter().all(|b| alnum(b) || inner.contains(b))
}

fn check_dns_label(field: &str, s: &str, max: usize) -> Result<(), FieldError> {
    if is_name(s, max, b"-.") {
        Ok(())
    } else {
        Err(err(field, format!("must be a lower-case DNS name of at most {max} characters")))
    }
}

fn check_version(field: &str, s: &str) -> Result<(), FieldError> {
    if is_name(s, 63, b"._-") {
        Ok(())
    } else {
        Err(err(field, "must be 1 to 63 characters of a-z, 0-9, '.', '_', '-', starting and ending alphanumeric"))
    }
}

fn time_ms(fields: &mut Fields<'_>, now_ms: i64) -> Result<i64, FieldError> {
    match fields.string("timestamp", 64)? {
        None => Ok(now_ms),
        Some(s) => {
            let t: Timestamp = s.parse().map_err(|_| err(fields.path("timestamp"), "must be an RFC 3339 time"))?;
            let ms = t.as_millisecond();
            // A clock far ahead would keep an event out of every window until then.
            if ms > now_ms + 5 * 60 * 1000 {
                return Err(err(fields.path("timestamp"), "is more than 5 minutes in the future"));
            }
            Ok(ms)
        }
    }
}

fn metadata(fields: &mut Fields<'_>) -> Result<Option<Map<String, Value>>, FieldError> {
    match fields.get("metadata") {
        None => Ok(None),
        Some(Value::Object(map)) => {
            if map.len() > MAX_METADATA_KEYS {
                return Err(err(fields.path("metadata"), format!("must have at most {MAX_METADATA_KEYS} keys")));
            }
            let size = Value::Object(map.clone()).to_string().len();
            if size > MAX_METADATA {
                return Err(err(fields.path("metadata"), format!("must be at most {MAX_METADATA} bytes as JSON")));
            }
            Ok(Some(map.clone()))
        }
        Some(_) => Err(err(fields.path("metadata"), "must be a JSON object")),
    }
}

fn messages(value: &Value, field: &str) -> Result<Vec<Message>, FieldError> {
    match value {
        Value::String(text) => {
            if text.len() > MAX_TEXT {
                return Err(err(field, format!("must be at most {MAX_TEXT} bytes")));
            }
            Ok(vec![Message { role: Role::User, content: text.clone() }])
        }
        Value::Array(items) => {
            if items.is_empty() || items.len() > MAX_MESSAGES {
                return Err(err(field, format!("must hold 1 to {MAX_MESSAGES} messages")));
            }
            let mut total = 0;
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let at = format!("{field}[{i}]");
                let mut f = Fields::new(item, &at)?;
                let role = f.required_string("role", 16)?;
                let role = match role.as_str() {
                    "system" => Role::System,
                    "user" => Role::User,
                    "assistant" => Role::Assistant,
                    _ => return Err(err(format!("{at}.role"), "must be system, user or assistant")),
                };
                let content = f.required_string("content", MAX_TEXT)?;
                f.finish()?;
                total += content.len();
                out.push(Message { role, content });
            }
            if total > MAX_PROMPT {
                return Err(err(field, format!("must be at most {MAX_PROMPT} bytes in all")));
            }
            Ok(out)
        }
        _ => Err(err(field, "must be a string or a list of {role, content} messages")),
    }
}

fn optional_key(fields: &mut Fields<'_>, name: &'static str) -> Result<Option<String>, FieldError> {
    let v = fields.string(name, MAX_KEY)?;
    if v.as_deref() == Some("") {
        return Err(err(fields.path(name), "must not be empty"));
    }
    Ok(v)
}

/// Decodes one interaction.
pub fn decode_interaction(value: &Value, now_ms: i64) -> Result<Interaction, FieldError> {
    let mut f = Fields::new(value, "")?;
    let id = f.required_string("id", MAX_ID)?;
    check_id("id", &id)?;
    let namespace = f.required_string("namespace", 63)?;
    check_dns_label("namespace", &namespace, 63)?;
    let deployment = f.required_string("deployment", 253)?;
    check_dns_label("deployment", &deployment, 253)?;
    let version = f.required_string("version", 63)?;
    check_version("version", &version)?;
    let prompt = match f.get("prompt") {
        Some(v) => messages(v, "prompt")?,
        None => return Err(err("prompt", "is required")),
    };
    let answer = f.required_string("answer", MAX_TEXT)?;
    let latency_ms = match f.get("latencyMs") {
        None => None,
        Some(v) => match v.as_u64() {
            Some(ms) if ms <= 3_600_000 => Some(ms),
            _ => return Err(err("latencyMs", "must be a whole number of milliseconds, at most 3600000")),
        },
    };
    let subject = optional_key(&mut f, "subject")?;
    let session = optional_key(&mut f, "session")?;
    let metadata = metadata(&mut f)?;
    let time_ms = time_ms(&mut f, now_ms)?;
    f.finish()?;
    Ok(Interaction {
        id,
        namespace,
        deployment,
        version,
        prompt,
        answer,
        latency_ms,
        subject,
        session,
        metadata,
        time_ms,
        hash: canonical_hash(value),
    })
}

fn finite(field: &str, v: &Value) -> Result<f64, FieldError> {
    v.as_f64().filter(|x| x.is_finite()).ok_or_else(|| err(field, "must be a number"))
}

fn feedback_value(kind: Kind, f: &mut Fields<'_>) -> Result<FeedbackValue, FieldError> {
    let value = f.get("value");
    Ok(match kind {
        Kind::Thumbs => match value {
            Some(Value::Bool(up)) => FeedbackValue::Thumbs { up: *up },
            Some(_) => return Err(err("value", "must be true (up) or false (down)")),
            None => return Err(err("value", "is required")),
        },
        Kind::Rating => {
            let value = finite("value", value.ok_or_else(|| err("value", "is required"))?)?;
            let (min, max) = match f.get("scale") {
                None => (1.0, 5.0),
                Some(scale) => {
                    let mut s = Fields::new(scale, "scale")?;
                    let min = finite("scale.min", s.get("min").ok_or_else(|| err("scale.min", "is required"))?)?;
                    let max = finite("scale.max", s.get("max").ok_or_else(|| err("scale.max", "is required"))?)?;
                    s.finish()?;
                    (min, max)
                }
            };
            if min >= max {
                return Err(err("scale", "min must be below max"));
            }
            if value < min || value > max {
                return Err(err("value", format!("must lie within the scale {min} to {max}")));
            }
            FeedbackValue::Rating { value, min, max }
        }
        Kind::Correction => match value {
            Some(Value::String(text)) if !text.is_empty() && text.len() <= MAX_TEXT => {
                FeedbackValue::Correction { text: text.clone() }
            }
            Some(_) => return Err(err("value", format!("must be the corrected answer, 1 to {MAX_TEXT} bytes"))),
            None => return Err(err("value", "is required")),
        },
        Kind::Alternative => {
            let v = value.ok_or_else(|| err("value", "is required"))?;
            let mut a = Fields::new(v, "value")?;
            let candidates = match a.get("candidates") {
                Some(Value::Array(items)) if (2..=MAX_CANDIDATES).contains(&items.len()) => {
                    let mut out = Vec::with_capacity(items.len());
                    for (i, item) in items.iter().enumerate() {
                        match item {
                            Value::String(s) if s.len() <= MAX_TEXT => out.push(s.clone()),
                            _ => {
                                return Err(err(
                                    format!("value.candidates[{i}]"),
                                    format!("must be a string of at most {MAX_TEXT} bytes"),
                                ));
                            }
                        }
                    }
                    out
                }
                Some(_) => {
                    return Err(err("value.candidates", format!("must be a list of 2 to {MAX_CANDIDATES} strings")));
                }
                None => return Err(err("value.candidates", "is required")),
            };
            let chosen = match a.get("chosen").and_then(Value::as_u64) {
                Some(i) if (i as usize) < candidates.len() => i as usize,
                _ => return Err(err("value.chosen", "must be the index of one of the candidates")),
            };
            a.finish()?;
            FeedbackValue::Alternative { candidates, chosen }
        }
        Kind::Error => match value {
            None | Some(Value::Bool(true)) => FeedbackValue::Error { message: None },
            Some(Value::String(m)) if m.len() <= MAX_TEXT => FeedbackValue::Error { message: Some(m.clone()) },
            Some(_) => return Err(err("value", "must be true or a message")),
        },
        Kind::Label => match value {
            Some(Value::String(label)) if !label.is_empty() && label.len() <= MAX_KEY => {
                FeedbackValue::Label { label: label.clone() }
            }
            Some(_) => return Err(err("value", format!("must be a label of 1 to {MAX_KEY} bytes"))),
            None => return Err(err("value", "is required")),
        },
    })
}

/// Decodes one feedback event.
pub fn decode_feedback(value: &Value, now_ms: i64) -> Result<Feedback, FieldError> {
    let mut f = Fields::new(value, "")?;
    let id = f.required_string("id", MAX_ID)?;
    check_id("id", &id)?;
    let kind_name = f.required_string("kind", 32)?;
    let kind = Kind::parse(&kind_name)
        .ok_or_else(|| err("kind", "must be one of thumbs, rating, correction, alternative, error, label"))?;
    let value_of_kind = feedback_value(kind, &mut f)?;
    if kind != Kind::Rating && f.map.contains_key("scale") {
        return Err(err("scale", "only a rating has a scale"));
    }
    let namespace = f.string("namespace", 63)?;
    if let Some(ns) = &namespace {
        check_dns_label("namespace", ns, 63)?;
    }
    let deployment = f.string("deployment", 253)?;
    if let Some(d) = &deployment {
        check_dns_label("deployment", d, 253)?;
    }
    let version = f.string("version", 63)?;
    if let Some(v) = &version {
        check_version("version", v)?;
    }
    let interaction_id = f.string("interactionId", MAX_ID)?;
    if let Some(i) = &interaction_id {
        check_id("interactionId", i)?;
    }
    let named = namespace.is_some() && deployment.is_some() && version.is_some();
    if interaction_id.is_none() && !named {
        return Err(err("interactionId", "is required unless namespace, deployment and version are all given"));
    }
    if interaction_id.is_none() && (namespace.is_none() != deployment.is_none()) {
        return Err(err("deployment", "namespace and deployment go together"));
    }
    let prompt = match f.get("prompt") {
        Some(v) => Some(messages(v, "prompt")?),
        None => None,
    };
    let answer = f.string("answer", MAX_TEXT)?;
    let subject = optional_key(&mut f, "subject")?;
    let session = optional_key(&mut f, "session")?;
    let metadata = metadata(&mut f)?;
    let time_ms = time_ms(&mut f, now_ms)?;
    f.known.push("scale");
    f.finish()?;
    Ok(Feedback {
        id,
        namespace,
        deployment,
        version,
        interaction_id,
        value: value_of_kind,
        prompt,
        answer,
        subject,
        session,
        metadata,
        time_ms,
        hash: canonical_hash(value),
    })
}

/// The items of a batch: a JSON array, or NDJSON (one JSON value per non-empty line). A line
/// that is not JSON is an item that fails on its own, so one bad line does not sink the rest.
pub fn split_batch(body: &[u8], ndjson: bool) -> Result<Vec<Result<Value, String>>, String> {
    if ndjson {
        let text = std::str::from_utf8(body).map_err(|e| format!("the body is not UTF-8: {e}"))?;
        Ok(text
            .split('\n')
            .map(|line| line.trim_end_matches('\r'))
            .filter(|line| !line.trim().is_empty())
            .map(|line| serde_json::from_str::<Value>(line).map_err(|e| format!("not JSON: {e}")))
            .collect())
    } else {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Array(items)) => Ok(items.into_iter().map(Ok).collect()),
            Ok(_) => Err("a batch must be a JSON array (or NDJSON with content-type application/x-ndjson)".into()),
            Err(e) => Err(format!("malformed JSON: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn a_thumbs_event_decodes() {
        let v = json!({"id":"e1","namespace":"ns","deployment":"md","version":"v1","kind":"thumbs","value":true});
        let f = decode_feedback(&v, NOW).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(f.value, FeedbackValue::Thumbs { up: true });
        assert_eq!(f.time_ms, NOW);
        assert_eq!(f.deployment.as_deref(), Some("md"));
    }

    #[test]
    fn the_hash_ignores_key_order_but_not_values() {
        let a = json!({"id":"e1","kind":"thumbs","value":true,"interactionId":"i1"});
        let b: Value = serde_json::from_str(r#"{"value":true,"interactionId":"i1","kind":"thumbs","id":"e1"}"#)
            .unwrap_or(Value::Null);
        let c = json!({"id":"e1","kind":"thumbs","value":false,"interactionId":"i1"});
        assert_eq!(canonical_hash(&a), canonical_hash(&b));
        assert_ne!(canonical_hash(&a), canonical_hash(&c));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (json!([1]), "(body)"),
            (json!({"kind":"thumbs","value":true,"interactionId":"i"}), "id"),
            (json!({"id":"e","kind":"smile","value":true,"interactionId":"i"}), "kind"),
            (json!({"id":"e","kind":"thumbs","value":"yes","interactionId":"i"}), "value"),
            (json!({"id":"e","kind":"rating","value":7,"interactionId":"i"}), "value"),
            (json!({"id":"e","kind":"rating","value":1,"scale":{"min":5,"max":1},"interactionId":"i"}), "scale"),
            (
                json!({"id":"e","kind":"alternative","value":{"candidates":["a"],"chosen":0},"interactionId":"i"}),
                "value.candidates",
            ),
            (
                json!({"id":"e","kind":"alternative","value":{"candidates":["a","b"],"chosen":2},"interactionId":"i"}),
                "value.chosen",
            ),
            (json!({"id":"e","kind":"thumbs","value":true}), "interactionId"),
            (json!({"id":"e","kind":"thumbs","value":true,"interactionId":"i","colour":1}), "colour"),
            (
                json!({"id":"e","kind":"thumbs","value":true,"namespace":"NS","deployment":"d","version":"v"}),
                "namespace",
            ),
            (json!({"id":"e","kind":"thumbs","value":true,"interactionId":"i","timestamp":"yesterday"}), "timestamp"),
            (
                json!({"id":"e","kind":"thumbs","value":true,"interactionId":"i","prompt":[{"role":"bot","content":"x"}]}),
                "prompt[0].role",
            ),
            (json!({"id":"a b","kind":"thumbs","value":true,"interactionId":"i"}), "id"),
        ];
        for (v, field) in cases {
            match decode_feedback(&v, NOW) {
                Err(e) => assert_eq!(e.field, field, "{v}: {e}"),
                Ok(f) => panic!("{v} decoded: {f:?}"),
            }
        }
        let long = "x".repeat(MAX_TEXT + 1);
        let v = json!({"id":"i","namespace":"ns","deployment":"d","version":"v1","prompt":"hi","answer":long});
        assert_eq!(decode_interaction(&v, NOW).err().map(|e| e.field), Some("answer".to_string()));
    }

    #[test]
    fn a_text_prompt_is_one_user_message() {
        let v = json!({"id":"i1","namespace":"ns","deployment":"d","version":"v1","prompt":"hi","answer":"hello","latencyMs":12});
        let i = decode_interaction(&v, NOW).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(i.prompt, vec![Message { role: Role::User, content: "hi".into() }]);
        assert_eq!(i.latency_ms, Some(12));
    }

    #[test]
    fn ndjson_lines_fail_one_by_one() {
        let items = split_batch(b"{\"a\":1}\n\nnot json\r\n[2]\n", true).unwrap_or_default();
        assert_eq!(items.len(), 3);
        assert!(items[0].is_ok() && items[1].is_err() && items[2].is_ok());
        assert!(split_batch(b"{\"a\":1}", false).is_err());
        assert!(split_batch(b"[1,", false).is_err());
    }
}
