//! Per-version statistics from the store's aggregates: counts by kind, and each rate with the
//! counts behind it; and [`StatsReport`], the answer of `GET /v1/stats` and of the change feed,
//! which the server serializes and [`super::client`] deserializes (one definition of the shape).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::event::Kind;
use super::store::Aggregate;

/// How signals count as positive or negative (the FeedbackPolicy's `signals` mapping).
#[derive(Debug, Clone, PartialEq)]
pub struct Mapping {
    /// A normalized rating at or above this is positive, below it negative.
    pub rating_threshold: f64,
    /// A correction counts as a negative judgment.
    pub correction_is_negative: bool,
    /// An error counts as a negative judgment.
    pub error_is_negative: bool,
    /// Labels that count as positive.
    pub positive_labels: BTreeSet<String>,
    /// Labels that count as negative.
    pub negative_labels: BTreeSet<String>,
}

impl Default for Mapping {
    fn default() -> Self {
        Self {
            rating_threshold: 0.75,
            correction_is_negative: true,
            error_is_negative: true,
            positive_labels: BTreeSet::new(),
            negative_labels: BTreeSet::new(),
        }
    }
}

/// The statistics of a deployment's versions over a window: the answer of `GET /v1/stats` and
/// of `GET /v1/stats/watch`. A reader takes a missing count as 0, as a missing list of versions
/// as unreadable.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatsReport {
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
    /// A number that grows whenever an event of the deployment is stored, read before the
    /// statistics.
    #[serde(default)]
    pub cursor: i64,
    /// Every version with events in the window, sorted by version.
    pub versions: Vec<VersionStats>,
    /// Change feed only: whether the cursor passed the one asked for (`false` at the timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed: Option<bool>,
}

impl StatsReport {
    /// The statistics of `version`, when it has events in the window.
    pub fn of(&self, version: &str) -> Option<&VersionStats> {
        self.versions.iter().find(|v| v.version == version)
    }

    /// Feedback events over every version.
    pub fn total(&self) -> i64 {
        self.versions.iter().map(|v| v.total).sum()
    }
}

/// A rate and the counts behind it.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Rate {
    /// `numerator / denominator`, absent when the denominator is 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// Events counted in the numerator.
    #[serde(default)]
    pub numerator: i64,
    /// Events counted in the denominator.
    #[serde(default)]
    pub denominator: i64,
}

impl Rate {
    fn of(numerator: i64, denominator: i64) -> Rate {
        let value = (denominator > 0).then(|| numerator as f64 / denominator as f64);
        Rate { value, numerator, denominator }
    }
}

/// The statistics of one version over the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionStats {
    /// The version.
    pub version: String,
    /// Feedback events (all kinds).
    #[serde(default)]
    pub total: i64,
    /// Interactions captured.
    #[serde(default)]
    pub interactions: i64,
    /// Feedback events by kind.
    #[serde(default)]
    pub counts: BTreeMap<String, i64>,
    /// Positive judgments over all judgments (thumbs, ratings, and corrections, errors and
    /// labels as the mapping says).
    #[serde(default)]
    pub positive_rate: Rate,
    /// Mean normalized rating (0 to 1) over ratings; numerator is the number of positive
    /// ratings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_rating: Option<f64>,
    /// Ratings counted in the mean.
    #[serde(default)]
    pub ratings: i64,
    /// Corrections over feedback events.
    #[serde(default)]
    pub correction_rate: Rate,
    /// Errors over feedback events.
    #[serde(default)]
    pub error_rate: Rate,
    /// Earliest event in the window, Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_ms: Option<i64>,
    /// Latest event in the window, Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ms: Option<i64>,
}

/// Folds the store's groups into one [`VersionStats`] per version, sorted by version.
pub fn summarize(aggregates: &[Aggregate], interactions: &[(String, i64)], mapping: &Mapping) -> Vec<VersionStats> {
    #[derive(Default)]
    struct Acc {
        total: i64,
        counts: BTreeMap<String, i64>,
        positive: i64,
        negative: i64,
        rating_sum: f64,
        ratings: i64,
        corrections: i64,
        errors: i64,
        first: Option<i64>,
        last: Option<i64>,
    }
    let mut by_version: BTreeMap<String, Acc> = BTreeMap::new();
    for a in aggregates {
        let acc = by_version.entry(a.version.clone()).or_default();
        acc.total += a.count;
        *acc.counts.entry(a.kind.as_str().to_string()).or_default() += a.count;
        acc.first = Some(acc.first.map_or(a.first_ms, |f| f.min(a.first_ms)));
        acc.last = Some(acc.last.map_or(a.last_ms, |l| l.max(a.last_ms)));
        match a.kind {
            Kind::Thumbs => match a.up {
                Some(true) => acc.positive += a.count,
                Some(false) => acc.negative += a.count,
                None => {}
            },
            Kind::Rating => {
                acc.ratings += a.count;
                acc.rating_sum += a.rating_sum;
                acc.positive += a.rating_positive;
                acc.negative += a.count - a.rating_positive;
            }
            Kind::Correction => {
                acc.corrections += a.count;
                if mapping.correction_is_negative {
                    acc.negative += a.count;
                }
            }
            Kind::Error => {
                acc.errors += a.count;
                if mapping.error_is_negative {
                    acc.negative += a.count;
                }
            }
            Kind::Label => {
                if let Some(label) = &a.label {
                    if mapping.positive_labels.contains(label) {
                        acc.positive += a.count;
                    } else if mapping.negative_labels.contains(label) {
                        acc.negative += a.count;
                    }
                }
            }
            Kind::Alternative => {}
        }
    }
    for (version, _) in interactions {
        by_version.entry(version.clone()).or_default();
    }
    by_version
        .into_iter()
        .map(|(version, acc)| {
            let interactions = interactions.iter().find(|(v, _)| *v == version).map_or(0, |(_, n)| *n);
            VersionStats {
                total: acc.total,
                interactions,
                counts: acc.counts,
                positive_rate: Rate::of(acc.positive, acc.positive + acc.negative),
                mean_rating: (acc.ratings > 0).then(|| acc.rating_sum / acc.ratings as f64),
                ratings: acc.ratings,
                correction_rate: Rate::of(acc.corrections, acc.total),
                error_rate: Rate::of(acc.errors, acc.total),
                first_ms: acc.first,
                last_ms: acc.last,
                version,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agg(
        version: &str,
        kind: Kind,
        up: Option<bool>,
        label: Option<&str>,
        count: i64,
        rating_sum: f64,
        pos: i64,
    ) -> Aggregate {
        Aggregate {
            version: version.into(),
            kind,
            up,
            label: label.map(str::to_string),
            count,
            rating_sum,
            rating_positive: pos,
            first_ms: 10,
            last_ms: 20,
        }
    }

    #[test]
    fn rates_carry_their_counts() {
        let aggs = [
            agg("v1", Kind::Thumbs, Some(true), None, 6, 0.0, 0),
            agg("v1", Kind::Thumbs, Some(false), None, 2, 0.0, 0),
            agg("v1", Kind::Rating, None, None, 4, 3.0, 3),
            agg("v1", Kind::Correction, None, None, 1, 0.0, 0),
            agg("v1", Kind::Error, None, None, 1, 0.0, 0),
            agg("v1", Kind::Label, None, Some("great"), 2, 0.0, 0),
            agg("v1", Kind::Alternative, None, None, 3, 0.0, 0),
            agg("v2", Kind::Thumbs, Some(true), None, 1, 0.0, 0),
        ];
        let mapping = Mapping { positive_labels: ["great".to_string()].into(), ..Mapping::default() };
        let stats = summarize(&aggs, &[("v1".into(), 40), ("v3".into(), 5)], &mapping);
        assert_eq!(stats.iter().map(|s| s.version.as_str()).collect::<Vec<_>>(), ["v1", "v2", "v3"]);
        let v1 = &stats[0];
        assert_eq!(v1.total, 19);
        assert_eq!(v1.interactions, 40);
        // positive: 6 thumbs + 3 ratings + 2 labels; negative: 2 thumbs + 1 rating + 1 correction + 1 error
        assert_eq!(v1.positive_rate, Rate { value: Some(11.0 / 16.0), numerator: 11, denominator: 16 });
        assert_eq!(v1.mean_rating, Some(0.75));
        assert_eq!(v1.correction_rate, Rate { value: Some(1.0 / 19.0), numerator: 1, denominator: 19 });
        assert_eq!(v1.counts.get("alternative"), Some(&3));
        assert_eq!(stats[2].positive_rate.value, None, "no judgments, no rate");

        let lenient = Mapping { correction_is_negative: false, error_is_negative: false, ..Mapping::default() };
        let v1 = &summarize(&aggs, &[], &lenient)[0];
        assert_eq!(v1.positive_rate.denominator, 12);
    }
}
