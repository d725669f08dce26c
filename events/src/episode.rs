//! Expected, handled conditions (the broker is away, the database is restarting)
//! logged once per episode rather than once per occurrence.
//!
//! A broker blip can fail hundreds of publishes, and each one is already handled
//! (the outbox keeps the event). Logging each at WARN or ERROR buries what needs a
//! person. An [`Episode`] logs one WARN when the condition begins, counts what
//! follows at DEBUG, and logs one INFO with the count when it ends.

use std::fmt::Display;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug)]
pub struct Episode {
    what: &'static str,
    failures: AtomicU64,
}

impl Episode {
    pub const fn new(what: &'static str) -> Self {
        Self {
            what,
            failures: AtomicU64::new(0),
        }
    }

    /// Another occurrence; the first of an episode is a WARN.
    pub fn failed(&self, error: &dyn Display) {
        let before = self.failures.fetch_add(1, Ordering::Relaxed);
        if before == 0 {
            tracing::warn!(condition = self.what, error = %error, "began; handled and retried, logged again when it ends");
        } else {
            tracing::debug!(condition = self.what, error = %error, occurrences = before + 1, "still ongoing");
        }
    }

    /// The condition is over (a success after failures).
    pub fn recovered(&self) {
        let failures = self.failures.swap(0, Ordering::Relaxed);
        if failures > 0 {
            tracing::info!(condition = self.what, occurrences = failures, "ended");
        }
    }

    /// Occurrences in the current episode.
    pub fn ongoing(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::Episode;

    #[test]
    fn an_episode_counts_until_it_ends() {
        let episode = Episode::new("test");
        episode.failed(&"x");
        episode.failed(&"y");
        assert_eq!(episode.ongoing(), 2);
        episode.recovered();
        assert_eq!(episode.ongoing(), 0);
    }
}
