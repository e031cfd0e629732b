//! Times as the collector keeps them (Unix milliseconds) and as its API writes them (RFC 3339).

use k8s_openapi::jiff::Timestamp;

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    Timestamp::now().as_millisecond()
}

/// Unix milliseconds as RFC 3339 (empty when out of range).
pub fn rfc3339(ms: i64) -> String {
    Timestamp::from_millisecond(ms).map(|t| t.to_string()).unwrap_or_default()
}

/// RFC 3339 as Unix milliseconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    s.parse::<Timestamp>().ok().map(|t| t.as_millisecond())
}
