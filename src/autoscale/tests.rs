//! The algorithm with a fixed clock: samples every 2 s, as the controller takes them.

use super::*;

fn policy() -> Policy {
    Policy {
        min_replicas: 1,
        max_replicas: 20,
        target: 4.0,
        stable_window_ms: 60_000,
        panic_window_ms: 6_000,
        panic_threshold: 2.0,
        scale_down_delay_ms: 300_000,
        max_scale_up_rate: 1000.0,
        max_scale_down_rate: 2.0,
    }
}

/// Feeds `load` every 2 s from `from_ms` for `secs`, deciding after each sample; returns the
/// replicas after each decision (they take effect at once and are all ready).
fn run(state: &mut TrackState, p: &Policy, replicas: &mut i32, from_ms: i64, secs: i64, load: f64) -> Vec<(i64, i32)> {
    let mut out = Vec::new();
    let mut t = from_ms;
    while t < from_ms + secs * 1000 {
        t += 2000;
        state.observe(Sample { at_ms: t, load, pods: *replicas }, p);
        let d = state.decide(p, *replicas, *replicas, t);
        *replicas = d.desired;
        out.push((t, d.desired));
    }
    out
}

#[test]
fn a_steady_load_settles_on_load_over_target() {
    let p = policy();
    let mut s = TrackState::default();
    let mut replicas = 1;
    let trace = run(&mut s, &p, &mut replicas, 0, 120, 10.0);
    assert_eq!(trace.last().map(|(_, r)| *r), Some(3), "10 in flight at 4 per replica");
}

#[test]
fn a_load_step_scales_up_within_one_panic_window_tick() {
    let p = policy();
    let mut s = TrackState::default();
    let mut replicas = 2;
    run(&mut s, &p, &mut replicas, 0, 60, 4.0);
    assert_eq!(replicas, 1, "4 in flight needs one replica");
    // A step to 40 in flight: 10x the capacity of one replica.
    let t0 = 60_000;
    s.observe(Sample { at_ms: t0 + 2000, load: 40.0, pods: replicas }, &p);
    let d = s.decide(&p, replicas, replicas, t0 + 2000);
    assert!(d.panic, "{d:?}");
    // The panic window (6 s) holds two samples of 4 and the new 40: an average of 16, four
    // replicas' worth, on the very first tick; the stable window alone would ask for one.
    assert_eq!(d.desired, 4, "scaled up on the first tick after the step: {d:?}");
    replicas = d.desired;
    let trace = run(&mut s, &p, &mut replicas, t0 + 2000, 6, 40.0);
    assert_eq!(trace.last().map(|(_, r)| *r), Some(10), "the panic window is all 40s within 6 s");
}

#[test]
fn a_burst_that_ends_does_not_scale_down_before_the_delay() {
    let p = policy();
    let mut s = TrackState::default();
    let mut replicas = 1;
    run(&mut s, &p, &mut replicas, 0, 30, 2.0);
    let burst = run(&mut s, &p, &mut replicas, 30_000, 20, 40.0);
    let peak = burst.iter().map(|(_, r)| *r).max().unwrap_or(0);
    assert_eq!(peak, 10);
    // The burst ends: load back to 2 in flight.
    let after = run(&mut s, &p, &mut replicas, 50_000, 400, 2.0);
    let end_of_burst = 50_000;
    for (t, r) in &after {
        if *t < end_of_burst + p.scale_down_delay_ms - 2_000 {
            assert_eq!(*r, peak, "no scale-down {} s after the burst", (t - end_of_burst) / 1000);
        }
    }
    assert_eq!(after.last().map(|(_, r)| *r), Some(1), "down to one after the delay");
    // ... and down by at most the scale-down rate per decision.
    let mut last = peak;
    for (_, r) in &after {
        assert!(*r * 2 >= last, "from {last} to {r} is faster than the rate allows");
        last = *r;
    }
}

#[test]
fn missing_metrics_hold_the_count() {
    let p = policy();
    let mut s = TrackState::default();
    let d = s.decide(&p, 7, 7, 1_000);
    assert_eq!(d.desired, 7);
    assert!(d.reason.contains("holding"), "{}", d.reason);
    s.observe(Sample { at_ms: 1_000, load: 0.0, pods: 7 }, &p);
    // The only sample ages out of the window: hold again rather than scale to the minimum.
    let d = s.decide(&p, 7, 7, 200_000);
    assert_eq!(d.desired, 7, "{d:?}");
}

#[test]
fn bounds_and_rates_apply() {
    let p = Policy { max_replicas: 6, max_scale_up_rate: 2.0, ..policy() };
    let mut s = TrackState::default();
    s.observe(Sample { at_ms: 2_000, load: 400.0, pods: 1 }, &p);
    let d = s.decide(&p, 1, 1, 2_000);
    assert_eq!(d.desired, 2, "doubling at most: {d:?}");
    assert!(d.reason.contains("scale-up rate"));
    let d = s.decide(&p, 4, 4, 2_000);
    assert_eq!(d.desired, 6, "bounded by max: {d:?}");
    assert!(d.reason.contains("max 6"));
    let zero = Policy { min_replicas: 0, scale_down_delay_ms: 0, ..policy() };
    let mut s = TrackState::default();
    s.observe(Sample { at_ms: 2_000, load: 0.0, pods: 1 }, &zero);
    assert_eq!(s.decide(&zero, 1, 1, 2_000).desired, 0, "min 0 lets an idle track go to zero");
}

#[test]
fn each_track_scales_on_its_own_load() {
    // Stable and canary keep separate states: a canary burst leaves stable's decisions alone.
    let p = policy();
    let (mut stable, mut canary) = (TrackState::default(), TrackState::default());
    let (mut stable_replicas, mut canary_replicas) = (3, 1);
    let mut t = 0;
    for _ in 0..30 {
        t += 2000;
        stable.observe(Sample { at_ms: t, load: 12.0, pods: stable_replicas }, &p);
        canary.observe(Sample { at_ms: t, load: 30.0, pods: canary_replicas }, &p);
        stable_replicas = stable.decide(&p, stable_replicas, stable_replicas, t).desired;
        canary_replicas = canary.decide(&p, canary_replicas, canary_replicas, t).desired;
    }
    assert_eq!(stable_replicas, 3);
    assert_eq!(canary_replicas, 8);
}
