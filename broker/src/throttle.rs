//! Rate limits for log lines that a client can trigger at will.
//!
//! A refused login or publish is worth a line in the log, but a client that repeats it a
//! thousand times a second must not be able to fill the disk or drown everything else: at most
//! one line per interval goes out, carrying how many were held back since the last one.
//! Counters on `/metrics` still see every event.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How much of a client-supplied string (topic, username, client id) a log line repeats.
pub const ECHO_LIMIT: usize = 80;

/// One log line per interval; the rest are counted.
#[derive(Debug)]
pub struct LogThrottle {
    start: Instant,
    interval_ms: u64,
    /// Milliseconds since `start` of the last line let through, plus one (0: none yet).
    last: AtomicU64,
    suppressed: AtomicU64,
}

impl LogThrottle {
    /// At most one line per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            start: Instant::now(),
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a line may go out now, `n` being how many were held back before it;
    /// `None` when this one is held back.
    pub fn allow(&self) -> Option<u64> {
        let now = u64::try_from(self.start.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let last = self.last.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= self.interval_ms;
        if due
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

impl Default for LogThrottle {
    /// One line per 10 s.
    fn default() -> Self {
        Self::new(Duration::from_secs(10))
    }
}

/// `text` cut to [`ECHO_LIMIT`] characters (on a character boundary), marked when cut.
pub fn echo(text: &str) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(ECHO_LIMIT) {
        None => text.into(),
        Some((cut, _)) => format!("{}… ({} bytes)", &text[..cut], text.len()).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_yields_one_line_and_the_next_line_counts_the_rest() {
        let throttle = LogThrottle::new(Duration::from_secs(3600));
        assert_eq!(throttle.allow(), Some(0));
        for _ in 0..499 {
            assert_eq!(throttle.allow(), None);
        }
        let zero = LogThrottle::new(Duration::ZERO);
        assert_eq!(zero.allow(), Some(0));
        assert_eq!(zero.allow(), Some(0));
        assert_eq!(throttle.suppressed.load(Ordering::Relaxed), 499);
    }

    #[test]
    fn long_input_is_cut_on_a_character_boundary() {
        let topic = "æ".repeat(30_000);
        let shown = echo(&topic);
        assert!(shown.chars().count() < 120, "{shown}");
        assert!(shown.ends_with("(60000 bytes)"), "{shown}");
        assert_eq!(echo("short/topic"), "short/topic");
    }
}
