//! The live view: a compact dashboard redrawn in place on a terminal, log lines otherwise.
//! Plain ASCII and two ANSI sequences (cursor up, clear line), so any terminal shows it.

use std::io::Write;
use std::time::{Duration, Instant};

use super::observe::{Snapshot, TimelineEntry, Tracker, evidence_brief};
use super::resources::{MIN_SAMPLES, QUALITY_BELOW, STEPS, WINDOW_SECONDS};
use super::summary::clock;
use super::users::TrafficStats;
use crate::api::retrain_job::RetrainPhase;
use kube::ResourceExt;

/// How the demo shows its progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViewMode {
    /// A dashboard redrawn in place (a terminal).
    Live,
    /// One line per step, and a status line now and then (a pipe or a file).
    Log,
    /// Nothing (tests, and `--json` without a terminal).
    Quiet,
}

/// What the dashboard shows.
pub struct Frame<'a> {
    /// Since the demo started.
    pub elapsed: Duration,
    /// `improve` or `regression`.
    pub scenario: &'a str,
    /// Cycles asked for.
    pub cycles: u32,
    /// Speed.
    pub speed: f64,
    /// The latest snapshot.
    pub snapshot: &'a Snapshot,
    /// Requests and feedback so far.
    pub traffic: &'a TrafficStats,
    /// Requests and feedback per second, lately.
    pub rates: (f64, f64),
    /// Cycles and timeline.
    pub tracker: &'a Tracker,
    /// A problem worth showing (a failed poll, refused posts).
    pub note: Option<String>,
}

fn pct(x: Option<f64>) -> String {
    x.map_or_else(|| " -- ".to_string(), |v| format!("{:>3.0}%", v * 100.0))
}

fn bar(filled: u32, total: u32) -> String {
    let total = total.max(filled);
    format!("[{}{}]", "#".repeat(filled as usize), "-".repeat((total - filled) as usize))
}

/// The dashboard's lines.
pub fn dashboard(f: &Frame<'_>) -> Vec<String> {
    let s = f.snapshot;
    let mut lines = Vec::new();
    let cycle = f.tracker.open().map_or(f.tracker.finished(), |c| c.index);
    lines.push(format!(
        "flywheel demo | scenario {} | cycle {}/{} | {} | speed {}x",
        f.scenario,
        cycle.max(1),
        f.cycles,
        clock(f.elapsed.as_secs_f64()),
        f.speed
    ));
    lines.push(format!(
        "traffic   {:>5.0} req/s, {:>5.0} feedback/s   ({} requests, {} feedback so far)",
        f.rates.0,
        f.rates.1,
        f.traffic.requests(),
        f.traffic.feedback()
    ));
    let stable = s.stable();
    let canary = s.canary();
    let total_pods: u32 = s.routes.values().sum();
    let mut versions: Vec<&String> = s.routes.keys().collect();
    for v in s.window.keys() {
        if !versions.contains(&v) {
            versions.push(v);
        }
    }
    if versions.is_empty() {
        lines.push("serving   (starting)".to_string());
    }
    for (i, v) in versions.iter().enumerate() {
        let role = if Some(v.as_str()) == stable {
            "stable"
        } else if canary.is_some_and(|c| &c.version == *v) {
            "canary"
        } else {
            "retired"
        };
        let pods = s.routes.get(*v).copied().unwrap_or(0);
        let q = s.window.get(*v);
        lines.push(format!(
            "{}{:<8} {:<7} {} {} pod(s)   quality {} ({} judged, last {WINDOW_SECONDS}s)",
            if i == 0 { "serving   " } else { "          " },
            v,
            role,
            bar(pods, total_pods),
            pods,
            pct(q.and_then(|q| q.positive_rate)),
            q.map_or(0, |q| q.judged)
        ));
    }
    let policy = s.policy.as_ref().and_then(|p| p.status.as_ref());
    let stats = policy.and_then(|p| p.stats.as_ref());
    let fired = policy
        .and_then(|p| p.last_trigger.as_ref())
        .map(|t| format!(" | last fired: {:?} ({})", t.reason, t.retrain_job.as_deref().unwrap_or("-")))
        .unwrap_or_default();
    lines.push(format!(
        "policy    quality of {} {} vs threshold {} (needs {MIN_SAMPLES} judged, has {}){fired}",
        stats.map_or("-", |s| s.version.as_str()),
        pct(stats.and_then(|s| s.positive_rate)),
        pct(Some(QUALITY_BELOW)),
        stats.map_or(0, |s| s.judged),
    ));
    match s.retrain_jobs.last() {
        Some(rtj) => {
            let status = rtj.status.as_ref();
            let phase = status.map(|s| s.phase).unwrap_or_default();
            let job = s
                .jobs
                .iter()
                .rev()
                .find(|j| super::observe::owning_retrain_job(j).as_deref() == Some(rtj.name_any().as_str()));
            let job_state = job.map_or_else(String::new, |j| {
                let state = match super::observe::job_outcome(j) {
                    Some(true) => "complete",
                    Some(false) => "failed",
                    None => "running",
                };
                format!(" | Job {} {state}", j.name_any())
            });
            let result = match (phase, status.and_then(|s| s.result.as_ref())) {
                (RetrainPhase::Succeeded, Some(r)) => format!(" -> {}", r.version),
                _ => String::new(),
            };
            lines.push(format!("retrain   {} {phase:?}{result}{job_state}", rtj.name_any()));
        }
        None => lines.push("retrain   (none yet)".to_string()),
    }
    match canary {
        Some(c) => {
            let evidence = c.evidence.as_ref().map(|e| format!(": {}", evidence_brief(e))).unwrap_or_default();
            lines.push(format!(
                "canary    {} step {}/{} at {}%{evidence}",
                c.version,
                c.step + 1,
                STEPS.len(),
                c.weight
            ));
        }
        None => lines.push("canary    (none)".to_string()),
    }
    let history = s.history();
    if history.is_empty() {
        lines.push("history   (none yet)".to_string());
    }
    for (i, h) in history.iter().rev().take(3).enumerate() {
        lines.push(format!(
            "{}{:?} {} (stable before: {})",
            if i == 0 { "history   " } else { "          " },
            h.type_,
            h.version,
            h.previous_version.as_deref().unwrap_or("-")
        ));
    }
    let recent: Vec<&TimelineEntry> = f.tracker.timeline.iter().rev().take(4).collect();
    for (i, e) in recent.iter().rev().enumerate() {
        lines.push(format!("{}{}  {}", if i == 0 { "recent    " } else { "          " }, clock(e.at), e.text));
    }
    if let Some(note) = &f.note {
        lines.push(format!("note      {note}"));
    }
    lines
}

/// A line cut to `width` characters.
pub fn fit(line: &str, width: usize) -> String {
    if line.chars().count() <= width {
        return line.to_string();
    }
    let mut cut: String = line.chars().take(width.saturating_sub(3)).collect();
    cut.push_str("...");
    cut
}

fn terminal_width() -> usize {
    std::env::var("COLUMNS").ok().and_then(|c| c.parse::<usize>().ok()).filter(|w| *w >= 40).unwrap_or(120)
}

/// Draws frames to an output.
pub struct View {
    mode: ViewMode,
    out: Box<dyn Write + Send>,
    drawn: usize,
    logged: usize,
    last_status: Option<Instant>,
    width: usize,
}

impl View {
    /// A view in `mode` writing to `out`.
    pub fn new(mode: ViewMode, out: Box<dyn Write + Send>) -> Self {
        Self { mode, out, drawn: 0, logged: 0, last_status: None, width: terminal_width() }
    }

    /// The mode.
    pub fn mode(&self) -> ViewMode {
        self.mode
    }

    /// Show a frame: redraw the dashboard, or log what is new.
    pub fn show(&mut self, frame: &Frame<'_>) {
        let result = match self.mode {
            ViewMode::Quiet => Ok(()),
            ViewMode::Live => self.redraw(frame),
            ViewMode::Log => self.log(frame),
        };
        // A closed pipe must not stop the demo; it only stops showing.
        if result.is_err() {
            self.mode = ViewMode::Quiet;
        }
    }

    fn redraw(&mut self, frame: &Frame<'_>) -> std::io::Result<()> {
        let lines = dashboard(frame);
        let mut buf = String::new();
        if self.drawn > 0 {
            buf.push_str(&format!("\x1b[{}F", self.drawn));
        }
        for line in &lines {
            buf.push_str("\x1b[2K");
            buf.push_str(&fit(line, self.width));
            buf.push('\n');
        }
        buf.push_str("\x1b[J");
        self.drawn = lines.len();
        self.out.write_all(buf.as_bytes())?;
        self.out.flush()
    }

    fn log(&mut self, frame: &Frame<'_>) -> std::io::Result<()> {
        let timeline = &frame.tracker.timeline;
        for e in timeline.iter().skip(self.logged) {
            writeln!(self.out, "[{}] {:<10} {}", clock(e.at), e.kind, e.text)?;
        }
        self.logged = timeline.len();
        let due = self.last_status.is_none_or(|t| t.elapsed() >= Duration::from_secs(5));
        if due {
            self.last_status = Some(Instant::now());
            let s = frame.snapshot;
            let quality: Vec<String> =
                s.window.iter().map(|(v, q)| format!("{v} {} of {}", pct(q.positive_rate).trim(), q.judged)).collect();
            let canary = s.canary().map(|c| format!(", canary {} at {}%", c.version, c.weight)).unwrap_or_default();
            writeln!(
                self.out,
                "[{}] status     {:.0} req/s, {:.0} feedback/s; quality (last {WINDOW_SECONDS}s): {}; stable {}{canary}",
                clock(frame.elapsed.as_secs_f64()),
                frame.rates.0,
                frame.rates.1,
                if quality.is_empty() { "-".to_string() } else { quality.join(", ") },
                s.stable().unwrap_or("-")
            )?;
        }
        self.out.flush()
    }

    /// Write a block of text (the summary) after the live view.
    pub fn text(&mut self, text: &str) {
        if self.mode == ViewMode::Quiet {
            return;
        }
        if self.out.write_all(text.as_bytes()).and_then(|()| self.out.flush()).is_err() {
            self.mode = ViewMode::Quiet;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn frame<'a>(snapshot: &'a Snapshot, tracker: &'a Tracker, traffic: &'a TrafficStats) -> Frame<'a> {
        Frame {
            elapsed: Duration::from_secs(42),
            scenario: "improve",
            cycles: 1,
            speed: 1.0,
            snapshot,
            traffic,
            rates: (50.0, 40.0),
            tracker,
            note: None,
        }
    }

    #[test]
    fn the_dashboard_shows_every_part_of_the_loop() {
        let mut snapshot = Snapshot::default();
        snapshot.routes.insert("v1".into(), 3);
        snapshot.routes.insert("v2".into(), 1);
        snapshot.window.insert(
            "v1".into(),
            super::super::observe::Quality {
                positive: 55,
                judged: 100,
                signals: 110,
                interactions: 130,
                positive_rate: Some(0.55),
            },
        );
        let mut tracker = Tracker::default();
        tracker.begin(true, None);
        tracker.drift(Duration::from_secs(6), &[("v1".into(), 0.86, 0.56)]);
        let traffic = TrafficStats::default();
        let lines = dashboard(&frame(&snapshot, &tracker, &traffic));
        let text = lines.join("\n");
        for part in [
            "scenario improve",
            "00:42.0",
            "v1",
            "[###-] 3 pod(s)",
            "55%",
            "policy",
            "retrain",
            "canary",
            "history",
            "drifts",
        ] {
            assert!(text.contains(part), "{part} in\n{text}");
        }
        assert!(lines.iter().all(|l| l.is_ascii()), "{text}");
    }

    #[test]
    fn a_terminal_gets_redraws_and_a_pipe_gets_lines() {
        let snapshot = Snapshot::default();
        let mut tracker = Tracker::default();
        tracker.begin(true, None);
        let traffic = TrafficStats::default();
        let out = Shared::default();
        let mut live = View::new(ViewMode::Live, Box::new(out.clone()));
        live.show(&frame(&snapshot, &tracker, &traffic));
        live.show(&frame(&snapshot, &tracker, &traffic));
        let text =
            String::from_utf8_lossy(&out.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)).to_string();
        assert!(text.contains("\x1b[2K") && text.contains('F'), "the second frame moves up over the first");

        let out = Shared::default();
        let mut log = View::new(ViewMode::Log, Box::new(out.clone()));
        log.show(&frame(&snapshot, &tracker, &traffic));
        tracker.drift(Duration::from_secs(6), &[("v1".into(), 0.86, 0.56)]);
        log.show(&frame(&snapshot, &tracker, &traffic));
        log.show(&frame(&snapshot, &tracker, &traffic));
        let text =
            String::from_utf8_lossy(&out.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)).to_string();
        assert!(!text.contains('\x1b'), "no escapes in a pipe: {text}");
        assert_eq!(text.matches("] drift").count(), 1, "each step once: {text}");
        assert_eq!(text.matches("status").count(), 1, "a status line at most every 5 s: {text}");
    }

    #[test]
    fn long_lines_are_cut_to_the_width() {
        assert_eq!(fit("abcdefghij", 8), "abcde...");
        assert_eq!(fit("abc", 8), "abc");
    }
}
