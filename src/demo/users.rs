//! Simulated inference and users. Requests go to the versions in proportion to their ready pods
//! (the replica-ratio traffic of a ModelDeployment's Service); every answer is an interaction
//! captured to the collector, as the agent sidecar would; users then react to it with thumbs,
//! ratings, corrections, a chosen alternative, or an error flag, more happily the better the
//! version truly is.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::collector::MAX_BATCH_ITEMS;
use crate::collector::client::{CollectorClient, Ingest};

use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::scenario::World;

/// Ready pods per version: where traffic can go.
pub type Routes = BTreeMap<String, u32>;

/// Questions users ask, each with a good and a poor answer.
const TOPICS: [(&str, &str, &str); 8] = [
    (
        "How do I reset my password?",
        "Open Settings > Security, choose Reset password, and follow the link we email you.",
        "Passwords cannot be reset.",
    ),
    (
        "Can I change the billing date of my plan?",
        "Yes: Billing > Plan > Change billing date; the next invoice is prorated.",
        "Billing dates are fixed by the bank.",
    ),
    (
        "How do I export my data?",
        "Go to Settings > Data, press Export, and you get a ZIP link by email within minutes.",
        "Export is only available on request by fax.",
    ),
    (
        "Why was my card declined?",
        "Your bank declined the charge; check the card's expiry date or try another card under Billing.",
        "Cards are never declined.",
    ),
    (
        "How do I add a teammate?",
        "Team > Invite, enter their email, and pick a role; they get an invitation link.",
        "Only one user per account is allowed.",
    ),
    (
        "Where can I download my invoices?",
        "Billing > Invoices lists every invoice with a PDF download button.",
        "Invoices are sent by post once a year.",
    ),
    (
        "How do I turn on two-factor authentication?",
        "Settings > Security > Two-factor, scan the QR code with an authenticator app, and confirm a code.",
        "Two-factor authentication is not supported.",
    ),
    (
        "Can I cancel my subscription at any time?",
        "Yes, Billing > Plan > Cancel; you keep access until the end of the paid period.",
        "Subscriptions run for ten years.",
    ),
];

/// Share of answers a user reacts to.
pub const FEEDBACK_PROBABILITY: f64 = 0.8;

/// The version that answers a request: one of the ready pods, picked uniformly (`u` in 0..1).
pub fn route(routes: &Routes, u: f64) -> Option<&str> {
    let total: u32 = routes.values().sum();
    if total == 0 {
        return None;
    }
    let target = (u.clamp(0.0, 1.0) * f64::from(total)).floor() as u32;
    let mut seen = 0;
    for (version, pods) in routes {
        seen += pods;
        if target < seen {
            return Some(version);
        }
    }
    routes.iter().rev().find(|(_, p)| **p > 0).map(|(v, _)| v.as_str())
}

/// One request, the answer, and the user's reaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Exchange {
    /// The interaction, as the collector's `POST /v1/interactions` takes it.
    pub interaction: Value,
    /// The feedback, as `POST /v1/feedback` takes it, when the user reacted.
    pub feedback: Option<Value>,
    /// Whether the answer was good.
    pub good: bool,
}

/// Where the exchanges are recorded.
#[derive(Debug, Clone)]
pub struct Target {
    /// Namespace of the ModelDeployment.
    pub namespace: String,
    /// Its name.
    pub deployment: String,
}

/// One simulated request to `version` of true quality `quality`, number `seq`.
pub fn exchange(rng: &mut impl Rng, target: &Target, seq: u64, version: &str, quality: f64) -> Exchange {
    let (question, good_answer, poor_answer) = TOPICS[(seq % TOPICS.len() as u64) as usize];
    // Each user asks in their own words: distinct prompts keep the snapshot's dedupe honest.
    let prompt = format!("{question} (ticket #{seq})");
    let good = rng.random_bool(quality.clamp(0.0, 1.0));
    let answer = if good { good_answer } else { poor_answer };
    let interaction_id = format!("i-{seq}");
    let interaction = json!({
        "id": interaction_id,
        "namespace": target.namespace,
        "deployment": target.deployment,
        "version": version,
        "prompt": [{"role": "user", "content": prompt}],
        "answer": answer,
        "latencyMs": rng.random_range(80..900),
        "subject": format!("user-{}", seq % 97),
    });
    let feedback = rng.random_bool(FEEDBACK_PROBABILITY).then(|| {
        let (kind, value) = reaction(rng, good, answer, good_answer, poor_answer);
        let mut f = json!({
            "id": format!("f-{seq}"),
            "kind": kind,
            "value": value,
            "interactionId": interaction_id,
            "namespace": target.namespace,
            "deployment": target.deployment,
            "version": version,
            "subject": format!("user-{}", seq % 97),
        });
        if kind == "rating" {
            f["scale"] = json!({"min": 1, "max": 5});
        }
        f
    });
    Exchange { interaction, feedback, good }
}

/// What a user does about an answer: happy users give thumbs up, high ratings, or pick the
/// answer over an alternative; unhappy ones give thumbs down, low ratings, a correction, pick
/// the alternative, or flag an error.
fn reaction(
    rng: &mut impl Rng,
    good: bool,
    answer: &str,
    good_answer: &str,
    poor_answer: &str,
) -> (&'static str, Value) {
    let r: f64 = rng.random();
    if good {
        if r < 0.50 {
            ("thumbs", json!(true))
        } else if r < 0.85 {
            ("rating", json!(rng.random_range(4..=5)))
        } else {
            ("alternative", json!({"candidates": [answer, poor_answer], "chosen": 0}))
        }
    } else if r < 0.35 {
        ("thumbs", json!(false))
    } else if r < 0.55 {
        ("rating", json!(rng.random_range(1..=2)))
    } else if r < 0.80 {
        ("correction", json!(good_answer))
    } else if r < 0.92 {
        ("alternative", json!({"candidates": [answer, good_answer], "chosen": 1}))
    } else {
        ("error", json!("the answer is wrong"))
    }
}

/// Counters of what the simulated users did, per version.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    /// Requests answered.
    pub requests: u64,
    /// Feedback events sent.
    pub feedback: u64,
    /// Good answers.
    pub good: u64,
}

/// What the traffic task reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrafficStats {
    /// Per version.
    pub by_version: BTreeMap<String, Counts>,
    /// Requests that found no ready pod.
    pub unserved: u64,
    /// Posts the collector refused or did not answer.
    pub failed_posts: u64,
    /// The last such failure, in words.
    pub last_error: Option<String>,
}

impl TrafficStats {
    /// Requests over every version.
    pub fn requests(&self) -> u64 {
        self.by_version.values().map(|c| c.requests).sum()
    }

    /// Feedback over every version.
    pub fn feedback(&self) -> u64 {
        self.by_version.values().map(|c| c.feedback).sum()
    }
}

/// Send traffic until `stop`: `rate` requests per second over the ready pods in `routes`, each
/// answered with the quality `world` gives its version, in batches every `tick`.
pub async fn run(
    collector: CollectorClient,
    target: Target,
    world: Arc<Mutex<World>>,
    mut routes: watch::Receiver<Routes>,
    rate: f64,
    stats: Arc<Mutex<TrafficStats>>,
    stop: CancellationToken,
) {
    let tick = Duration::from_millis(100);
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let mut owed = 0.0_f64;
    let mut seq: u64 = 0;
    let mut last = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        let now = tokio::time::Instant::now();
        owed += rate * now.duration_since(last).as_secs_f64();
        last = now;
        let n = owed.floor() as u64;
        owed -= n as f64;
        let current = routes.borrow_and_update().clone();
        let mut interactions = Vec::new();
        let mut feedback = Vec::new();
        let mut counted: BTreeMap<String, Counts> = BTreeMap::new();
        let mut unserved = 0;
        {
            let world = world.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for _ in 0..n {
                let Some(version) = route(&current, rng.random()) else {
                    unserved += 1;
                    continue;
                };
                let quality = world.quality(version).unwrap_or(0.5);
                seq += 1;
                let ex = exchange(&mut rng, &target, seq, version, quality);
                let c = counted.entry(version.to_string()).or_default();
                c.requests += 1;
                c.good += u64::from(ex.good);
                interactions.push(ex.interaction);
                if let Some(f) = ex.feedback {
                    c.feedback += 1;
                    feedback.push(f);
                }
            }
        }
        let mut errors = Vec::new();
        for (kind, batch) in [(Ingest::Interactions, &interactions), (Ingest::Feedback, &feedback)] {
            for chunk in batch.chunks(MAX_BATCH_ITEMS) {
                match collector.ingest(kind, chunk).await {
                    Ok(answer) if answer.rejected > 0 => {
                        let first = answer.results.iter().find_map(|r| r.error.as_ref());
                        errors.push(format!(
                            "{} of {} events refused{}",
                            answer.rejected,
                            chunk.len(),
                            first.map(|e| format!(": {}", e.message)).unwrap_or_default()
                        ));
                    }
                    Ok(_) => {}
                    Err(e) => errors.push(e.to_string()),
                }
            }
        }
        let mut s = stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        s.unserved += unserved;
        for (version, c) in counted {
            let total = s.by_version.entry(version).or_default();
            total.requests += c.requests;
            total.feedback += c.feedback;
            total.good += c.good;
        }
        if !errors.is_empty() {
            s.failed_posts += errors.len() as u64;
            s.last_error = errors.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target { namespace: "default".into(), deployment: "support-chat".into() }
    }

    #[test]
    fn traffic_follows_the_ready_pods() {
        let routes: Routes = [("v1".to_string(), 3), ("v2".to_string(), 1)].into();
        let mut hits: BTreeMap<&str, u32> = BTreeMap::new();
        for i in 0..1000 {
            let u = f64::from(i) / 1000.0;
            *hits.entry(route(&routes, u).unwrap_or("none")).or_default() += 1;
        }
        assert_eq!(hits.get("v1"), Some(&750));
        assert_eq!(hits.get("v2"), Some(&250));
        assert_eq!(route(&routes, 1.0), Some("v2"));
        assert_eq!(route(&Routes::new(), 0.5), None);
        let idle: Routes = [("v1".to_string(), 0)].into();
        assert_eq!(route(&idle, 0.5), None);
    }

    #[test]
    fn users_judge_by_quality_and_leave_training_rows() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        for quality in [0.3, 0.85] {
            let (mut positive, mut judged, mut corrections, mut feedback) = (0, 0, 0, 0);
            let n = 20_000;
            for seq in 0..n {
                let ex = exchange(&mut rng, &target(), seq, "v1", quality);
                assert_eq!(ex.interaction["version"], "v1");
                assert!(ex.interaction["prompt"][0]["content"].as_str().is_some_and(|p| p.contains(&seq.to_string())));
                let Some(f) = ex.feedback else { continue };
                feedback += 1;
                assert_eq!(f["interactionId"], ex.interaction["id"]);
                match f["kind"].as_str().unwrap_or_default() {
                    "thumbs" => {
                        judged += 1;
                        positive += i32::from(f["value"] == json!(true));
                    }
                    "rating" => {
                        judged += 1;
                        positive += i32::from(f["value"].as_i64().unwrap_or(0) >= 4);
                    }
                    "correction" => {
                        judged += 1;
                        corrections += 1;
                        assert!(!ex.good);
                    }
                    "error" => judged += 1,
                    "alternative" => {
                        let chosen = f["value"]["chosen"].as_u64().unwrap_or(9);
                        assert_eq!(chosen == 0, ex.good);
                    }
                    other => panic!("unexpected kind {other}"),
                }
            }
            let rate = f64::from(positive) / f64::from(judged);
            assert!((rate - quality).abs() < 0.03, "quality {quality}: positive rate {rate}");
            let share = f64::from(feedback) / n as f64;
            assert!((share - FEEDBACK_PROBABILITY).abs() < 0.02, "{share}");
            assert!(corrections > 0);
        }
    }
}
