//! When a FeedbackPolicy fires: a pure function of the statistics, the retrain history and the
//! time. The reconcile fetches the inputs and carries out the decision.

use k8s_openapi::jiff::{SignedDuration, Timestamp, tz::TimeZone};

use crate::api::common::TriggerReason;
use crate::api::feedback_policy::{FeedbackPolicySpec, SignalStats};

/// What the decision is made from.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    /// The policy.
    pub spec: &'a FeedbackPolicySpec,
    /// Statistics of the target's stable version over the window.
    pub stats: &'a SignalStats,
    /// Signals on the target (every version) since the last retrain.
    pub signals_since_last: i64,
    /// Start times of this policy's retrains (any age; those of the last 24 hours count).
    pub retrains: &'a [Timestamp],
    /// Schedule times after this one are due (the last retrain, or the policy's creation).
    pub schedule_since: Timestamp,
    /// Why a retrain of this policy is still under way, if one is (none fires meanwhile).
    pub in_flight: Option<String>,
    /// Now.
    pub now: Timestamp,
}

/// A trigger whose condition holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Firing {
    /// Which trigger.
    pub reason: TriggerReason,
    /// The numbers behind it, in words.
    pub message: String,
}

/// What the policy does now.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// No trigger holds; look again at `next_check` at the latest (the schedule's next time).
    Quiet {
        /// The schedule's next time, if any.
        next_check: Option<Timestamp>,
    },
    /// A trigger holds and nothing holds it back: retrain.
    Fire(Firing),
    /// A trigger holds but must wait.
    Held {
        /// The trigger.
        firing: Firing,
        /// Why it waits, in words.
        why: String,
        /// When it may fire (none while a retrain is under way).
        until: Option<Timestamp>,
    },
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// The first trigger whose condition holds, in the order quality, corrections, volume,
/// schedule.
pub fn firing(inputs: &Inputs<'_>) -> Result<Option<Firing>, CronError> {
    let t = &inputs.spec.triggers;
    let s = inputs.stats;
    if let (Some(threshold), Some(rate)) = (t.quality_below, s.positive_rate)
        && s.judged >= t.min_samples
        && rate < threshold
    {
        return Ok(Some(Firing {
            reason: TriggerReason::Quality,
            message: format!(
                "positive rate of {} is {} ({} of {} judged), below {}",
                s.version,
                pct(rate),
                s.positive,
                s.judged,
                pct(threshold)
            ),
        }));
    }
    if let (Some(threshold), Some(rate)) = (t.correction_rate_above, s.correction_rate)
        && s.total >= t.min_samples
        && rate > threshold
    {
        return Ok(Some(Firing {
            reason: TriggerReason::Corrections,
            message: format!(
                "correction rate of {} is {} ({} of {} signals), above {}",
                s.version,
                pct(rate),
                s.corrections,
                s.total,
                pct(threshold)
            ),
        }));
    }
    if let Some(n) = t.new_signals
        && inputs.signals_since_last >= n
    {
        return Ok(Some(Firing {
            reason: TriggerReason::Volume,
            message: format!("{} new signals since the last retrain (threshold {n})", inputs.signals_since_last),
        }));
    }
    if let Some(expr) = &t.schedule {
        let cron = Cron::parse(expr)?;
        if let Some(due) = cron.latest_at_or_before(inputs.now)
            && due > inputs.schedule_since
        {
            return Ok(Some(Firing {
                reason: TriggerReason::Schedule,
                message: format!("the schedule {expr:?} came due at {due}"),
            }));
        }
    }
    Ok(None)
}

/// When the cooldown and the daily budget next allow a retrain (`None`: now).
pub fn eligible_at(spec: &FeedbackPolicySpec, retrains: &[Timestamp], now: Timestamp) -> Option<Timestamp> {
    let day = SignedDuration::from_hours(24);
    let mut at: Option<Timestamp> = None;
    if let Some(last) = retrains.iter().max() {
        let end = last.saturating_add(SignedDuration::from_secs(spec.cooldown_seconds)).unwrap_or(*last);
        if end > now {
            at = Some(end);
        }
    }
    let mut today: Vec<Timestamp> =
        retrains.iter().copied().filter(|t| t.saturating_add(day).is_ok_and(|end| end > now)).collect();
    today.sort();
    let cap = usize::try_from(spec.max_retrains_per_day.max(1)).unwrap_or(1);
    if today.len() >= cap {
        // The oldest retrain that keeps the count at the cap must leave the 24 hours.
        let oldest = today[today.len() - cap];
        let end = oldest.saturating_add(day).unwrap_or(oldest);
        at = Some(at.map_or(end, |a| a.max(end)));
    }
    at
}

/// The decision.
pub fn decide(inputs: &Inputs<'_>) -> Result<Decision, CronError> {
    let next_check = match &inputs.spec.triggers.schedule {
        Some(expr) => Cron::parse(expr)?.next_after(inputs.now),
        None => None,
    };
    let Some(firing) = firing(inputs)? else { return Ok(Decision::Quiet { next_check }) };
    if let Some(why) = &inputs.in_flight {
        return Ok(Decision::Held { firing, why: why.clone(), until: None });
    }
    if let Some(until) = eligible_at(inputs.spec, inputs.retrains, inputs.now) {
        let last = inputs.retrains.iter().max().copied();
        let cooling = last.is_some_and(|l| {
            l.saturating_add(SignedDuration::from_secs(inputs.spec.cooldown_seconds)).is_ok_and(|e| e > inputs.now)
        });
        let why = if cooling {
            format!("cooling down until {until} ({} s after the last retrain)", inputs.spec.cooldown_seconds)
        } else {
            format!("{} retrains in 24 hours already; the next at {until}", inputs.spec.max_retrains_per_day)
        };
        return Ok(Decision::Held { firing, why, until: Some(until) });
    }
    Ok(Decision::Fire(firing))
}

/// A schedule the policy cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("schedule {expr:?}: {reason}")]
pub struct CronError {
    expr: String,
    reason: String,
}

/// A five-field cron expression (minute hour day-of-month month day-of-week), in UTC, with
/// `*`, lists, ranges and steps; day-of-week 0 or 7 is Sunday. When both day fields are
/// restricted a day matches either, as in Vixie cron.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    any_day: bool,
    any_weekday: bool,
}

fn field(expr: &str, text: &str, min: u32, max: u32) -> Result<u64, CronError> {
    let err = |reason: String| CronError { expr: expr.to_string(), reason };
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, s.parse::<u32>().map_err(|_| err(format!("bad step in {part:?}")))?),
            None => (part, 1),
        };
        if step == 0 {
            return Err(err(format!("zero step in {part:?}")));
        }
        let (lo, hi) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let a = a.parse::<u32>().map_err(|_| err(format!("bad range {range:?}")))?;
            let b = b.parse::<u32>().map_err(|_| err(format!("bad range {range:?}")))?;
            (a, b)
        } else {
            let v = range.parse::<u32>().map_err(|_| err(format!("bad value {range:?}")))?;
            (v, if part.contains('/') { max } else { v })
        };
        if lo < min || hi > max || lo > hi {
            return Err(err(format!("{part:?} is outside {min}-{max}")));
        }
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

impl Cron {
    /// Parse five fields.
    pub fn parse(expr: &str) -> Result<Self, CronError> {
        let fields: Vec<&str> = expr.split_whitespace().collect();
        let [m, h, dom, mon, dow] = fields.as_slice() else {
            return Err(CronError { expr: expr.to_string(), reason: "needs five fields".into() });
        };
        let mut weekdays = field(expr, dow, 0, 7)?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1;
        }
        Ok(Self {
            minutes: field(expr, m, 0, 59)?,
            hours: field(expr, h, 0, 23)?,
            days: field(expr, dom, 1, 31)?,
            months: field(expr, mon, 1, 12)?,
            weekdays,
            any_day: *dom == "*",
            any_weekday: *dow == "*",
        })
    }

    fn day_matches(&self, z: &k8s_openapi::jiff::Zoned) -> bool {
        let month = self.months & (1 << z.month()) != 0;
        let dom = self.days & (1 << z.day()) != 0;
        let dow = self.weekdays & (1 << z.weekday().to_sunday_zero_offset()) != 0;
        let day = match (self.any_day, self.any_weekday) {
            (true, true) => true,
            (true, false) => dow,
            (false, true) => dom,
            (false, false) => dom || dow,
        };
        month && day
    }

    /// The latest time at or before `t` that the schedule names (within the past 366 days).
    pub fn latest_at_or_before(&self, t: Timestamp) -> Option<Timestamp> {
        let mut t = Timestamp::from_second(t.as_second() - t.as_second().rem_euclid(60)).ok()?;
        let limit = t.as_second() - 367 * 86_400;
        while t.as_second() >= limit {
            let z = t.to_zoned(TimeZone::UTC);
            let (hour, minute) = (i64::from(z.hour()), i64::from(z.minute()));
            let back = if !self.day_matches(&z) {
                hour * 60 + minute + 1
            } else if self.hours & (1 << hour) == 0 {
                minute + 1
            } else if self.minutes & (1 << minute) == 0 {
                1
            } else {
                return Some(t);
            };
            t = Timestamp::from_second(t.as_second() - back * 60).ok()?;
        }
        None
    }

    /// The first time after `t` that the schedule names (within the next 366 days).
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let mut t = Timestamp::from_second(t.as_second() - t.as_second().rem_euclid(60) + 60).ok()?;
        let limit = t.as_second() + 367 * 86_400;
        while t.as_second() <= limit {
            let z = t.to_zoned(TimeZone::UTC);
            let (hour, minute) = (i64::from(z.hour()), i64::from(z.minute()));
            let forward = if !self.day_matches(&z) {
                (24 - hour) * 60 - minute
            } else if self.hours & (1 << hour) == 0 {
                60 - minute
            } else if self.minutes & (1 << minute) == 0 {
                1
            } else {
                return Some(t);
            };
            t = Timestamp::from_second(t.as_second() + forward * 60).ok()?;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::common::TrainerTemplate;
    use crate::api::feedback_policy::Triggers;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn spec(triggers: Triggers) -> FeedbackPolicySpec {
        FeedbackPolicySpec {
            target_ref: crate::api::common::LocalRef { name: "chat".into() },
            mode: Default::default(),
            signals: Default::default(),
            window_seconds: 3600,
            triggers,
            cooldown_seconds: 3600,
            max_retrains_per_day: 2,
            dataset: Default::default(),
            trainer: TrainerTemplate::with_image("trainer"),
            evaluation: None,
            output_uri_prefix: "s3://models/".into(),
            promotion: Default::default(),
        }
    }

    fn stats(positive: i64, judged: i64, corrections: i64, total: i64) -> SignalStats {
        SignalStats {
            version: "v1".into(),
            total,
            positive,
            judged,
            positive_rate: (judged > 0).then(|| positive as f64 / judged as f64),
            corrections,
            correction_rate: (total > 0).then(|| corrections as f64 / total as f64),
            ..SignalStats::default()
        }
    }

    fn inputs<'a>(spec: &'a FeedbackPolicySpec, s: &'a SignalStats, retrains: &'a [Timestamp]) -> Inputs<'a> {
        Inputs {
            spec,
            stats: s,
            signals_since_last: 0,
            retrains,
            schedule_since: at("2026-11-01T00:00:00Z"),
            in_flight: None,
            now: at("2026-11-27T12:00:00Z"),
        }
    }

    #[test]
    fn quality_fires_only_with_enough_judgments() {
        let p = spec(Triggers { min_samples: 100, quality_below: Some(0.7), ..Triggers::default() });
        let thin = stats(30, 99, 0, 99);
        assert_eq!(decide(&inputs(&p, &thin, &[])), Ok(Decision::Quiet { next_check: None }));
        let enough = stats(60, 100, 0, 100);
        let Ok(Decision::Fire(f)) = decide(&inputs(&p, &enough, &[])) else { panic!("should fire") };
        assert_eq!(f.reason, TriggerReason::Quality);
        assert!(f.message.contains("60.0%") && f.message.contains("60 of 100"), "{}", f.message);
        let good = stats(80, 100, 0, 100);
        assert!(matches!(decide(&inputs(&p, &good, &[])), Ok(Decision::Quiet { .. })));
    }

    #[test]
    fn corrections_and_volume_fire_on_their_thresholds() {
        let p = spec(Triggers {
            min_samples: 10,
            correction_rate_above: Some(0.2),
            new_signals: Some(500),
            ..Triggers::default()
        });
        let s = stats(0, 0, 3, 10);
        let Ok(Decision::Fire(f)) = decide(&inputs(&p, &s, &[])) else { panic!("should fire") };
        assert_eq!(f.reason, TriggerReason::Corrections);
        let calm = stats(0, 0, 1, 10);
        let mut i = inputs(&p, &calm, &[]);
        i.signals_since_last = 499;
        assert!(matches!(decide(&i), Ok(Decision::Quiet { .. })));
        i.signals_since_last = 500;
        let Ok(Decision::Fire(f)) = decide(&i) else { panic!("should fire") };
        assert_eq!(f.reason, TriggerReason::Volume);
    }

    #[test]
    fn cooldown_daily_cap_and_a_retrain_in_flight_hold_a_trigger() {
        let p = spec(Triggers { min_samples: 1, quality_below: Some(0.9), ..Triggers::default() });
        let s = stats(1, 10, 0, 10);
        // Cooldown: 30 min after a retrain, one hour of cooldown.
        let recent = [at("2026-11-27T11:30:00Z")];
        let Ok(Decision::Held { until, why, .. }) = decide(&inputs(&p, &s, &recent)) else { panic!("held") };
        assert_eq!(until, Some(at("2026-11-27T12:30:00Z")));
        assert!(why.contains("cooling down"), "{why}");
        // Daily cap: two retrains in 24 h, the older one at 02:00 frees a slot at 02:00 tomorrow.
        let two = [at("2026-11-27T02:00:00Z"), at("2026-11-27T08:00:00Z")];
        let Ok(Decision::Held { until, why, .. }) = decide(&inputs(&p, &s, &two)) else { panic!("held") };
        assert_eq!(until, Some(at("2026-11-28T02:00:00Z")));
        assert!(why.contains("2 retrains"), "{why}");
        // Retrains older than a day do not count.
        let old = [at("2026-11-25T02:00:00Z"), at("2026-11-26T08:00:00Z")];
        assert!(matches!(decide(&inputs(&p, &s, &old)), Ok(Decision::Fire(_))));
        let mut i = inputs(&p, &s, &[]);
        i.in_flight = Some("RetrainJob chat-1 is Running".into());
        assert!(matches!(decide(&i), Ok(Decision::Held { until: None, .. })));
    }

    #[test]
    fn a_schedule_fires_once_per_due_time() {
        let p = spec(Triggers { schedule: Some("0 3 * * 1".into()), ..Triggers::default() });
        let s = stats(0, 0, 0, 0);
        // 2026-11-23 is a Monday; now is Friday the 27th.
        let mut i = inputs(&p, &s, &[]);
        i.schedule_since = at("2026-11-20T00:00:00Z");
        let Ok(Decision::Fire(f)) = decide(&i) else { panic!("due") };
        assert!(f.message.contains("2026-11-23T03:00:00Z"), "{}", f.message);
        i.schedule_since = at("2026-11-23T03:00:00Z");
        assert_eq!(decide(&i), Ok(Decision::Quiet { next_check: Some(at("2026-11-30T03:00:00Z")) }));
    }

    #[test]
    fn cron_fields() {
        let c = Cron::parse("*/15 9-17 * * 1-5").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.next_after(at("2026-11-27T17:50:00Z")), Some(at("2026-11-30T09:00:00Z")));
        assert_eq!(c.latest_at_or_before(at("2026-11-28T10:00:00Z")), Some(at("2026-11-27T17:45:00Z")));
        let both = Cron::parse("0 0 1 * 0").unwrap_or_else(|e| panic!("{e}"));
        // The 1st of a month or any Sunday: Sunday the 29th comes first.
        assert_eq!(both.next_after(at("2026-11-27T00:00:00Z")), Some(at("2026-11-29T00:00:00Z")));
        let sunday7 = Cron::parse("30 6 * * 7").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sunday7.next_after(at("2026-11-27T00:00:00Z")), Some(at("2026-11-29T06:30:00Z")));
        for bad in ["* * * *", "60 * * * *", "* 24 * * *", "*/0 * * * *", "a * * * *", "5-1 * * * *"] {
            assert!(Cron::parse(bad).is_err(), "{bad}");
        }
    }
}
