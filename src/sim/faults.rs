//! Fault injection, off by default: errors on writes, added latency, dropped watch streams.
//! Forced compaction is [`super::core::Core::compact`].

use std::sync::Mutex;
use std::time::Duration;

use rand::Rng;

use super::error::ApiError;

/// What to inject.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultConfig {
    /// Fraction of write requests answered with an error (500, 429 or 409 in turn).
    pub write_error_rate: f64,
    /// Latency added to every request.
    pub latency: Option<Duration>,
    /// Watch streams are closed after this long (clients must re-watch).
    pub drop_watches_after: Option<Duration>,
}

/// The live fault settings of a server.
#[derive(Debug, Default)]
pub struct Faults {
    config: Mutex<FaultConfig>,
    injected: Mutex<u64>,
}

impl Faults {
    /// Replace the settings.
    pub fn set(&self, config: FaultConfig) {
        *self.config.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = config;
    }

    fn get(&self) -> FaultConfig {
        self.config.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// How many errors were injected so far.
    pub fn injected(&self) -> u64 {
        *self.injected.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Latency to add to this request, if any.
    pub fn latency(&self) -> Option<Duration> {
        self.get().latency
    }

    /// When watches are dropped early.
    pub fn watch_drop_after(&self) -> Option<Duration> {
        self.get().drop_watches_after
    }

    /// An error to answer this write with, if one is due.
    pub fn write_error(&self) -> Option<ApiError> {
        let rate = self.get().write_error_rate;
        if rate <= 0.0 || !rand::rng().random_bool(rate.min(1.0)) {
            return None;
        }
        let mut injected = self.injected.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *injected += 1;
        Some(match *injected % 3 {
            0 => ApiError::internal("injected fault"),
            1 => ApiError::too_many_requests(),
            _ => ApiError {
                code: 409,
                reason: "Conflict",
                message: "Operation cannot be fulfilled: injected conflict; please apply your changes to the latest version and try again".into(),
                details: None,
            },
        })
    }
}
