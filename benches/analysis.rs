//! The canary gate by simulation: how often a canary that is truly worse by the margin is
//! promoted (must stay within α = 1 − confidence), and how often an equal or better one is
//! (power), for Flywheel's sequential test at the default settings, next to a fixed-threshold
//! rule of the kind Argo Rollouts and Flagger analyses use (compare point estimates at each
//! measurement; promote after 5 successful measurements, abort after 3 failed ones), on the same
//! simulated feedback.
//!
//! `cargo bench --bench analysis` (add `-- --runs N`).

#[path = "support/mod.rs"]
mod support;
use support::arg;

use flywheel::api::model_deployment::{AnalysisSpec, Verdict};
use flywheel::rollout::analysis::{Arm, analyze};
use rand::{Rng, SeedableRng};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Promoted,
    RolledBack,
    Deadline,
}

/// One canary step: signals arrive on both arms, the gate looks after every `batch` signals per
/// arm, until a verdict or `deadline` signals per arm.
fn run<R: Rng>(
    rng: &mut R,
    p_stable: f64,
    p_canary: f64,
    batch: i64,
    deadline: i64,
    gate: &mut dyn FnMut(&Arm, &Arm) -> Option<bool>,
) -> Outcome {
    let (mut s, mut c) = (Arm::default(), Arm::default());
    while s.judged < deadline {
        for _ in 0..batch {
            s.judged += 1;
            s.signals += 1;
            s.positive += i64::from(rng.random_bool(p_stable));
            s.corrections += i64::from(rng.random_bool(0.05));
            c.judged += 1;
            c.signals += 1;
            c.positive += i64::from(rng.random_bool(p_canary));
            c.corrections += i64::from(rng.random_bool(0.05));
        }
        match gate(&s, &c) {
            Some(true) => return Outcome::Promoted,
            Some(false) => return Outcome::RolledBack,
            None => {}
        }
    }
    Outcome::Deadline
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let runs = arg("--runs", if benching { 2000 } else { 100 });
    // The defaults a ModelDeployment gets when it names no analysis settings.
    let spec = AnalysisSpec::default();
    let (batch, deadline) = (50, 10_000);
    println!(
        "{runs} runs per row; stable positive rate 0.80; looks every {batch} signals per arm up to {deadline}; margin {}, confidence {}",
        spec.margin, spec.confidence
    );
    println!(
        "{:<28} {:<22} {:>9} {:>12} {:>9} {:>16}",
        "canary", "gate", "promoted", "rolled back", "deadline", "signals/arm (p50)"
    );
    for (label, p_canary) in [("worse by the margin (0.75)", 0.75), ("equal (0.80)", 0.80), ("better (0.85)", 0.85)] {
        for gate_name in ["sequential (Flywheel)", "fixed threshold"] {
            let mut rng = rand::rngs::StdRng::seed_from_u64(42);
            let mut counts = [0usize; 3];
            let mut used = Vec::with_capacity(runs);
            for _ in 0..runs {
                let mut looked = 0i64;
                let outcome = if gate_name.starts_with("sequential") {
                    run(&mut rng, 0.80, p_canary, batch, deadline, &mut |s, c| {
                        looked = s.judged;
                        match analyze(&spec, s, c).verdict {
                            Verdict::Pass => Some(true),
                            Verdict::Fail => Some(false),
                            Verdict::Inconclusive => None,
                        }
                    })
                } else {
                    let (mut ok, mut failed) = (0, 0);
                    run(&mut rng, 0.80, p_canary, batch, deadline, &mut |s, c| {
                        looked = s.judged;
                        if s.judged < spec.min_samples_per_arm {
                            return None;
                        }
                        let rate = |a: &Arm| a.positive as f64 / a.judged as f64;
                        if rate(c) >= rate(s) - spec.margin {
                            ok += 1;
                        } else {
                            failed += 1;
                        }
                        if failed >= 3 {
                            Some(false)
                        } else if ok >= 5 {
                            Some(true)
                        } else {
                            None
                        }
                    })
                };
                used.push(looked);
                counts[match outcome {
                    Outcome::Promoted => 0,
                    Outcome::RolledBack => 1,
                    Outcome::Deadline => 2,
                }] += 1;
            }
            used.sort_unstable();
            let pct = |n: usize| 100.0 * n as f64 / runs as f64;
            println!(
                "{label:<28} {gate_name:<22} {:>8.1}% {:>11.1}% {:>8.1}% {:>16}",
                pct(counts[0]),
                pct(counts[1]),
                pct(counts[2]),
                used.get(used.len() / 2).copied().unwrap_or(0)
            );
            if gate_name.starts_with("sequential") && p_canary < 0.8 && runs >= 1000 {
                assert!(pct(counts[0]) <= 100.0 * (1.0 - spec.confidence) + 1.5, "false promotions above alpha");
            }
        }
    }
}
