//! The per-request part: which arm a request goes to, and its body rewritten for it.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use axum::http::{HeaderMap, HeaderValue};
use bytes::Bytes;
use serde_json::Value;

/// Requests are split in basis points (1/100 of a percent).
const BUCKETS: u64 = 10_000;

/// One version requests can go to: the base model, or an adapter by its name in the runtime.
#[derive(Debug)]
pub struct Arm {
    version: String,
    header: HeaderValue,
    /// The `model` a request is rewritten to; none leaves the request's own (the base).
    model: Option<String>,
    in_flight: AtomicI64,
}

impl Arm {
    /// An arm stamping `version`, rewriting `model` to `model` when given.
    pub fn new(version: &str, model: Option<&str>) -> Result<Self, String> {
        let header = HeaderValue::from_str(version).map_err(|_| format!("{version:?} is not a header value"))?;
        Ok(Self {
            version: version.to_string(),
            header,
            model: model.map(str::to_string),
            in_flight: AtomicI64::new(0),
        })
    }

    /// The version stamped on its answers.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The header value of the version.
    pub fn header(&self) -> &HeaderValue {
        &self.header
    }

    /// An adapter (not the base model).
    pub fn is_adapter(&self) -> bool {
        self.model.is_some()
    }

    /// Requests on it now.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// Counts a request on an arm until dropped (the end of its answer's body).
#[derive(Debug)]
pub struct ArmGuard(Arc<Arm>);

impl ArmGuard {
    fn new(arm: Arc<Arm>) -> Self {
        arm.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(arm)
    }

    /// The arm.
    pub fn arm(&self) -> &Arc<Arm> {
        &self.0
    }
}

impl Drop for ArmGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The split of one moment: the stable arm, and the canary with its share in basis points.
#[derive(Debug)]
pub struct Routing {
    stable: Arc<Arm>,
    canary: Option<(Arc<Arm>, u32)>,
    salt: u64,
}

/// FNV-1a, 64 bits: stable across processes and releases (unlike the standard library's
/// randomly keyed hasher), so every pod sends one subject to the same arm.
fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The final mix of a 64-bit hash (from SplitMix64), so that the low bits the bucket reads
/// depend on every input byte.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

impl Routing {
    /// A routing; the canary's share is in basis points (0 to 10,000).
    pub fn new(stable: Arc<Arm>, canary: Option<(Arc<Arm>, u32)>) -> Self {
        // Salted by the canary's version: each canary draws its own subjects, and a subject
        // in a canary stays in it as the weight rises (its bucket does not change).
        let salt = canary.as_ref().map_or(FNV_OFFSET, |(a, _)| fnv1a(FNV_OFFSET, a.version.as_bytes()));
        Self { stable, canary, salt }
    }

    /// The stable arm.
    pub fn stable(&self) -> &Arc<Arm> {
        &self.stable
    }

    /// The canary arm and its share in basis points.
    pub fn canary(&self) -> Option<(&Arc<Arm>, u32)> {
        self.canary.as_ref().map(|(a, w)| (a, *w))
    }

    /// The arms requests can go to.
    pub fn arms(&self) -> Vec<Arc<Arm>> {
        let mut out = vec![self.stable.clone()];
        out.extend(self.canary.iter().map(|(a, _)| a.clone()));
        out
    }

    /// The same arms and shares.
    pub fn same_as(&self, other: &Routing) -> bool {
        Arc::ptr_eq(&self.stable, &other.stable)
            && match (&self.canary, &other.canary) {
                (None, None) => true,
                (Some((a, w)), Some((b, v))) => Arc::ptr_eq(a, b) && w == v,
                _ => false,
            }
    }

    /// Nothing to rewrite: the base model alone.
    pub fn is_plain(&self) -> bool {
        self.canary.is_none() && !self.stable.is_adapter()
    }

    /// The arm for a subject key (random without one).
    pub fn choose(&self, key: Option<&[u8]>) -> &Arc<Arm> {
        let Some((canary, share)) = &self.canary else {
            return &self.stable;
        };
        let draw = match key {
            Some(k) => mix(fnv1a(self.salt, k)),
            None => rand::random::<u64>(),
        };
        if draw % BUCKETS < u64::from(*share) { canary } else { &self.stable }
    }

    /// Picks the arm of a request and rewrites its JSON body's `model` for it. Returns the
    /// guard of the arm chosen and the body to forward (`None`: unchanged). A body that is not
    /// a JSON object goes to the base model as it is.
    pub fn route(&self, headers: &HeaderMap, body: &Bytes, base: &Arc<Arm>) -> (ArmGuard, Option<Bytes>) {
        let Ok(Value::Object(mut json)) = serde_json::from_slice::<Value>(body) else {
            return (ArmGuard::new(base.clone()), None);
        };
        let key = subject_key(headers, json.get("user").and_then(Value::as_str));
        let arm = self.choose(key.as_deref().map(str::as_bytes)).clone();
        let Some(model) = &arm.model else {
            return (ArmGuard::new(arm), None);
        };
        json.insert("model".into(), Value::String(model.clone()));
        let rewritten = serde_json::to_vec(&json).ok().map(Bytes::from);
        (ArmGuard::new(arm), rewritten)
    }
}

/// Who a request is for: `x-flywheel-subject`, else `x-flywheel-session`, else the OpenAI
/// `user` field.
pub fn subject_key(headers: &HeaderMap, user: Option<&str>) -> Option<String> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty());
    header("x-flywheel-subject")
        .map(|s| format!("subject:{s}"))
        .or_else(|| header("x-flywheel-session").map(|s| format!("session:{s}")))
        .or_else(|| user.filter(|u| !u.is_empty()).map(|u| format!("subject:{u}")))
}
