//! Storage health, sans-IO: whether the disk buffer is failing, when the core retries it, and
//! when a failure is worth a log line.
//!
//! Why the core holds and retries instead of dropping: a node's MQTT message is acknowledged
//! to the lab broker only once it is stored, and the broker redelivers an unacknowledged QoS 1
//! message only after a reconnect; forgetting the acknowledgements of a failed flush therefore
//! leaves the broker's in-flight window for the gateway full for good. Serial and Modbus
//! samples have no redelivery at all. So on a disk error the core keeps everything it took in
//! (samples not yet appended in memory, MQTT messages unacknowledged), stops taking more — the
//! frame channels fill and the sources stop reading, which back-pressures the broker over TCP
//! and blocks serial reads — and retries the appends and the flush with backoff. Once a retry
//! succeeds it acknowledges and resumes: a short disk error (full disk, EIO, EMFILE) costs
//! latency, not samples. Memory stays bounded by one batch, since nothing new is taken while
//! failing.

use std::time::{Duration, Instant};

/// The first retry comes soon: most disk errors in a lab (a burst of `EMFILE`) are short, and
/// every source waits meanwhile.
const FIRST_RETRY: Duration = Duration::from_millis(50);
/// Retries back off to this, so a dead disk costs one attempt per interval.
const MAX_RETRY: Duration = Duration::from_secs(2);
/// At most one ERROR line per this while failing (the first failure is always logged).
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The disk buffer's state as the core sees it.
#[derive(Debug, Default)]
pub(crate) struct StorageHealth {
    failing: Option<Failing>,
}

#[derive(Debug)]
struct Failing {
    since: Instant,
    attempts: u32,
    retry_at: Instant,
    log: LogLimit,
}

impl StorageHealth {
    /// Whether the last append or flush worked (the core takes input only then).
    pub(crate) fn is_healthy(&self) -> bool {
        self.failing.is_none()
    }

    /// When to retry, while failing.
    pub(crate) fn retry_at(&self) -> Option<Instant> {
        self.failing.as_ref().map(|f| f.retry_at)
    }

    /// How long storage has been failing.
    pub(crate) fn failing_for(&self, now: Instant) -> Option<Duration> {
        self.failing.as_ref().map(|f| now.duration_since(f.since))
    }

    /// An append or flush failed at `now`: schedules the next retry, and says whether to log
    /// (`Some(failures not logged since the last line)`).
    pub(crate) fn failed(&mut self, now: Instant) -> Option<u64> {
        let failing = self.failing.get_or_insert_with(|| Failing {
            since: now,
            attempts: 0,
            retry_at: now,
            log: LogLimit::new(LOG_EVERY),
        });
        let backoff = FIRST_RETRY
            .saturating_mul(1 << failing.attempts.min(16))
            .min(MAX_RETRY);
        failing.attempts = failing.attempts.saturating_add(1);
        failing.retry_at = now + backoff;
        failing.log.allow(now)
    }

    /// An append and flush worked at `now`; how long storage had been failing, if it was.
    pub(crate) fn recovered(&mut self, now: Instant) -> Option<Duration> {
        self.failing
            .take()
            .map(|failing| now.duration_since(failing.since))
    }
}

/// Lets one event through per interval and counts the rest, for log lines an outside cause
/// (a failing disk, a flood) can trigger at any rate.
#[derive(Debug)]
pub(crate) struct LogLimit {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimit {
    pub(crate) fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(events suppressed since the last one let through)` if this one may be logged.
    pub(crate) fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.duration_since(last) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_from_fifty_milliseconds_to_two_seconds() {
        let start = Instant::now();
        let mut health = StorageHealth::default();
        assert!(health.is_healthy());
        let mut waits = Vec::new();
        let mut now = start;
        for _ in 0..9 {
            health.failed(now);
            let retry = health.retry_at().expect("failing");
            waits.push(retry.duration_since(now).as_millis());
            now = retry;
        }
        assert_eq!(waits, [50, 100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        assert!(!health.is_healthy());
        assert_eq!(health.recovered(now), Some(now.duration_since(start)));
        assert!(health.is_healthy());
        assert_eq!(health.recovered(now), None);
    }

    #[test]
    fn a_failure_after_recovery_starts_the_backoff_again() {
        let now = Instant::now();
        let mut health = StorageHealth::default();
        health.failed(now);
        health.failed(now);
        health.recovered(now);
        health.failed(now);
        assert_eq!(health.retry_at(), Some(now + FIRST_RETRY));
    }

    #[test]
    fn failures_are_logged_once_per_interval_with_the_count_of_the_rest() {
        let start = Instant::now();
        let mut health = StorageHealth::default();
        assert_eq!(health.failed(start), Some(0));
        for ms in 1..=5 {
            assert_eq!(health.failed(start + Duration::from_millis(ms)), None);
        }
        assert_eq!(health.failed(start + LOG_EVERY), Some(5));
        assert_eq!(
            health.failing_for(start + LOG_EVERY),
            Some(LOG_EVERY),
            "failing since the first failure"
        );
    }
}
