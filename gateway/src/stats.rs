//! Counters of everything the gateway takes in, sends on, and drops — by reason.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a message or sample was dropped. Every drop is counted under one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// A node frame failed decoding (any [`protocol::DecodeError`]).
    BadFrame,
    /// A frame arrived on a node topic that names a different node.
    NodeMismatch,
    /// Samples from a node that has not said `Hello` yet (a `RequestHello` is sent).
    NoHello,
    /// A `Samples` frame whose `seq` was already forwarded.
    Duplicate,
    /// A reading for a metric index the node's `Hello` did not announce.
    UnknownMetric,
    /// A reading that is NaN or infinite.
    NotFinite,
    /// The uplink client refused the message (its queue closed during shutdown).
    UplinkClosed,
    /// The uplink was down longer than the in-memory offline queue holds (oldest dropped).
    OfflineQueueFull,
}

impl DropReason {
    /// Every reason, for exposition.
    pub const ALL: [DropReason; 8] = [
        DropReason::BadFrame,
        DropReason::NodeMismatch,
        DropReason::NoHello,
        DropReason::Duplicate,
        DropReason::UnknownMetric,
        DropReason::NotFinite,
        DropReason::UplinkClosed,
        DropReason::OfflineQueueFull,
    ];

    /// Stable label for metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::BadFrame => "bad_frame",
            DropReason::NodeMismatch => "node_mismatch",
            DropReason::NoHello => "no_hello",
            DropReason::Duplicate => "duplicate",
            DropReason::UnknownMetric => "unknown_metric",
            DropReason::NotFinite => "not_finite",
            DropReason::UplinkClosed => "uplink_closed",
            DropReason::OfflineQueueFull => "offline_queue_full",
        }
    }
}

/// Lock-free counters shared by the gateway's tasks.
#[derive(Debug, Default)]
pub struct GatewayStats {
    frames_received: AtomicU64,
    samples_forwarded: AtomicU64,
    births_published: AtomicU64,
    uplink_sessions: AtomicU64,
    drops: [AtomicU64; DropReason::ALL.len()],
}

/// A point-in-time copy of [`GatewayStats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Node frames received on any southbound link.
    pub frames_received: u64,
    /// `Samples` frames turned into DDATA and handed to the uplink.
    pub samples_forwarded: u64,
    /// NBIRTH + DBIRTH messages published.
    pub births_published: u64,
    /// Uplink MQTT sessions established.
    pub uplink_sessions: u64,
    /// Drops by reason, in [`DropReason::ALL`] order.
    pub drops: Vec<(DropReason, u64)>,
}

impl StatsSnapshot {
    /// The count for one drop reason.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }
}

impl GatewayStats {
    pub(crate) fn frame_received(&self) {
        self.frames_received.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn sample_forwarded(&self) {
        self.samples_forwarded.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn birth_published(&self) {
        self.births_published.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn uplink_session(&self) {
        self.uplink_sessions.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn dropped(&self, reason: DropReason) {
        let slot = DropReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.drops[slot].fetch_add(1, Ordering::Relaxed);
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            frames_received: self.frames_received.load(Ordering::Relaxed),
            samples_forwarded: self.samples_forwarded.load(Ordering::Relaxed),
            births_published: self.births_published.load(Ordering::Relaxed),
            uplink_sessions: self.uplink_sessions.load(Ordering::Relaxed),
            drops: DropReason::ALL
                .iter()
                .zip(&self.drops)
                .map(|(reason, n)| (*reason, n.load(Ordering::Relaxed)))
                .collect(),
        }
    }
}
