//! Counters of the API's access decisions, for `/metrics`, and a throttle for the log lines
//! that attackers can trigger at will.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Something the access layer did that operators want to count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessEvent {
    /// A login succeeded.
    Login,
    /// A login failed: unknown user or wrong password.
    BadCredentials,
    /// A login was refused: its client address made too many attempts.
    RateLimitedAddress,
    /// A login was refused: its address failed too often for that user name.
    RateLimitedUser,
    /// A login was refused: the limiter tracks too many clients.
    RateLimitedTableFull,
    /// A login was refused: every password check was busy for too long.
    HashingBusy,
    /// A stream ended because its token expired.
    StreamTokenExpired,
    /// A stream ended because its token was logged out.
    StreamLoggedOut,
    /// A WebSocket upgrade from a page of a foreign origin was refused.
    ForeignOrigin,
    /// A WebSocket client sent a message over the size limit and was closed.
    MessageTooBig,
}

impl AccessEvent {
    const ALL: [AccessEvent; 10] = [
        AccessEvent::Login,
        AccessEvent::BadCredentials,
        AccessEvent::RateLimitedAddress,
        AccessEvent::RateLimitedUser,
        AccessEvent::RateLimitedTableFull,
        AccessEvent::HashingBusy,
        AccessEvent::StreamTokenExpired,
        AccessEvent::StreamLoggedOut,
        AccessEvent::ForeignOrigin,
        AccessEvent::MessageTooBig,
    ];

    /// Metric name and `reason` label (none for successful logins).
    const fn series(self) -> (&'static str, Option<&'static str>) {
        match self {
            AccessEvent::Login => ("demolab_hub_logins_total", None),
            AccessEvent::BadCredentials => {
                ("demolab_hub_login_refused_total", Some("bad_credentials"))
            }
            AccessEvent::RateLimitedAddress => (
                "demolab_hub_login_refused_total",
                Some("rate_limited_address"),
            ),
            AccessEvent::RateLimitedUser => {
                ("demolab_hub_login_refused_total", Some("rate_limited_user"))
            }
            AccessEvent::RateLimitedTableFull => (
                "demolab_hub_login_refused_total",
                Some("rate_limited_table_full"),
            ),
            AccessEvent::HashingBusy => ("demolab_hub_login_refused_total", Some("hashing_busy")),
            AccessEvent::StreamTokenExpired => {
                ("demolab_hub_streams_ended_total", Some("token_expired"))
            }
            AccessEvent::StreamLoggedOut => ("demolab_hub_streams_ended_total", Some("logged_out")),
            AccessEvent::ForeignOrigin => (
                "demolab_hub_websocket_refused_total",
                Some("foreign_origin"),
            ),
            AccessEvent::MessageTooBig => (
                "demolab_hub_websocket_refused_total",
                Some("message_too_big"),
            ),
        }
    }

    fn slot(self) -> usize {
        Self::ALL.iter().position(|e| *e == self).unwrap_or(0)
    }
}

const HELP: [(&str, &str); 4] = [
    ("demolab_hub_logins_total", "Successful API logins."),
    (
        "demolab_hub_login_refused_total",
        "API logins refused, by reason.",
    ),
    (
        "demolab_hub_streams_ended_total",
        "Streams the hub ended, by reason.",
    ),
    (
        "demolab_hub_websocket_refused_total",
        "WebSocket clients refused or closed, by reason.",
    ),
];

/// The counters.
#[derive(Debug, Default)]
pub struct AccessCounters {
    counts: [AtomicU64; AccessEvent::ALL.len()],
}

impl AccessCounters {
    /// Counts one event.
    pub fn count(&self, event: AccessEvent) {
        self.counts[event.slot()].fetch_add(1, Ordering::Relaxed);
    }

    /// Events counted so far.
    pub fn get(&self, event: AccessEvent) -> u64 {
        self.counts[event.slot()].load(Ordering::Relaxed)
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, help) in HELP {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for event in AccessEvent::ALL {
                match event.series() {
                    (n, None) if n == name => {
                        let _ = writeln!(out, "{name} {}", self.get(event));
                    }
                    (n, Some(reason)) if n == name => {
                        let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {}", self.get(event));
                    }
                    _ => {}
                }
            }
        }
        out
    }
}

/// Lets one log line through per interval and counts the ones held back, so that a flood of
/// bad requests costs a line every few seconds, not a disk.
#[derive(Debug)]
pub struct LogThrottle {
    interval_ms: u64,
    next_ms: AtomicU64,
    held: AtomicU64,
}

impl LogThrottle {
    /// One line per `interval_ms`.
    pub const fn new(interval_ms: u64) -> Self {
        Self {
            interval_ms,
            next_ms: AtomicU64::new(0),
            held: AtomicU64::new(0),
        }
    }

    /// `Some(lines held back since the last one)` when a line may be written now.
    pub fn admit(&self, now_ms: u64) -> Option<u64> {
        let next = self.next_ms.load(Ordering::Relaxed);
        if now_ms >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now_ms + self.interval_ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            Some(self.held.swap(0, Ordering::Relaxed))
        } else {
            self.held.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_is_rendered_under_its_metric_with_its_reason() {
        let counters = AccessCounters::default();
        counters.count(AccessEvent::RateLimitedAddress);
        counters.count(AccessEvent::RateLimitedAddress);
        counters.count(AccessEvent::Login);
        let text = counters.render();
        assert!(
            text.contains("demolab_hub_login_refused_total{reason=\"rate_limited_address\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("demolab_hub_logins_total 1\n"), "{text}");
        assert!(
            text.contains("demolab_hub_streams_ended_total{reason=\"logged_out\"} 0\n"),
            "{text}"
        );
        assert_eq!(
            text.lines().filter(|l| !l.starts_with('#')).count(),
            AccessEvent::ALL.len()
        );
    }

    #[test]
    fn the_throttle_lets_one_line_through_per_interval_and_counts_the_rest() {
        let throttle = LogThrottle::new(1000);
        assert_eq!(throttle.admit(5000), Some(0));
        assert_eq!(throttle.admit(5001), None);
        assert_eq!(throttle.admit(5999), None);
        assert_eq!(throttle.admit(6000), Some(2));
    }
}
