//! Progress of a long replay: a bar with events/s and an ETA on a terminal, a
//! plain line every few seconds otherwise (CI logs, `docker logs`, a pipe).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use events::projections::shadow::Progress;

/// How often a plain progress line is printed when not on a terminal.
const LINE_EVERY: Duration = Duration::from_secs(2);

pub enum ProgressDisplay {
    Bar(ProgressBar),
    Lines {
        what: &'static str,
        started: Instant,
        last_line: Option<Instant>,
    },
}

impl ProgressDisplay {
    /// `what` names the job in each line ("rebuild", "verify").
    pub fn new(what: &'static str) -> Self {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(0);
            let style = ProgressStyle::with_template(
                "{prefix} [{bar:40}] {human_pos}/{human_len} events, {per_sec}, ETA {eta}",
            )
            .map(|style| style.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_prefix(what);
            ProgressDisplay::Bar(bar)
        } else {
            ProgressDisplay::Lines {
                what,
                started: Instant::now(),
                last_line: None,
            }
        }
    }

    pub fn update(&mut self, progress: Progress) {
        match self {
            ProgressDisplay::Bar(bar) => {
                bar.set_length(progress.head.max(0) as u64);
                bar.set_position(progress.position.max(0) as u64);
            }
            ProgressDisplay::Lines {
                what,
                started,
                last_line,
            } => {
                let done = progress.position >= progress.head;
                if !done && last_line.is_some_and(|at| at.elapsed() < LINE_EVERY) {
                    return;
                }
                *last_line = Some(Instant::now());
                let seconds = started.elapsed().as_secs_f64().max(0.001);
                let rate = progress.events as f64 / seconds;
                let left = (progress.head - progress.position).max(0) as f64;
                let eta = if rate > 0.0 { left / rate } else { 0.0 };
                let percent = match progress.head {
                    0 => 100.0,
                    head => 100.0 * progress.position as f64 / head as f64,
                };
                eprintln!(
                    "{what}: {}/{} events ({percent:.0}%), {rate:.0} events/s, ETA {eta:.0}s",
                    progress.position, progress.head
                );
            }
        }
    }

    pub fn finish(&self) {
        if let ProgressDisplay::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}
