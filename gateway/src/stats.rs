//! Counters of everything the gateway takes in, sends on, and drops — by reason.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a message or sample was dropped. Every drop is counted under one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// A node frame failed decoding (any [`protocol::DecodeError`]).
    BadFrame,
    /// A frame arrived on a node topic that names a different node.
    NodeMismatch,
    /// A frame from a node this gateway is not configured for (shared brokers).
    UnconfiguredNode,
    /// Samples from a node that has not said `Hello` yet (a `RequestHello` is sent).
    NoHello,
    /// A `Samples` frame whose `seq` was already forwarded.
    Duplicate,
    /// A reading for a metric index the node's `Hello` did not announce.
    UnknownMetric,
    /// A reading that is NaN or infinite.
    NotFinite,
    /// A reading outside what its unit can physically be (a broken sensor, a unit mix-up).
    OutOfRange,
    /// The uplink client refused the message (its queue closed during shutdown).
    UplinkClosed,
    /// The uplink was down longer than the in-memory offline queue holds (oldest dropped).
    OfflineQueueFull,
    /// A Modbus poll timed out.
    ModbusTimeout,
    /// A Modbus poll failed (connection refused or lost, exception response).
    ModbusError,
    /// The disk buffer hit its size cap and dropped its oldest records.
    BufferFull,
    /// Records lost in a corrupt buffer segment (quarantined).
    BufferCorrupt,
    /// Samples a node dropped from its own ring while its link was down (it reports the count).
    NodeBufferOverflow,
    /// Samples the disk buffer could not store that no source will deliver again: serial and
    /// Modbus samples still held in memory when the gateway stopped while the disk was failing,
    /// or a record the buffer refuses outright (larger than a segment).
    StorageFailed,
    /// An OPC UA value with a Bad status code (the server could not read the machine).
    OpcUaBadStatus,
    /// An OPC UA value that is not a number or a boolean.
    OpcUaNotNumeric,
    /// An OPC UA value not newer (by source timestamp) than the last one taken for its
    /// variable: reported again after a subscription was recreated.
    OpcUaDuplicate,
    /// An OPC UA change that found the source's queue full (the pipeline stalled).
    OpcUaOverflow,
}

impl DropReason {
    /// Every reason, for exposition.
    pub const ALL: [DropReason; 20] = [
        DropReason::BadFrame,
        DropReason::NodeMismatch,
        DropReason::UnconfiguredNode,
        DropReason::NoHello,
        DropReason::Duplicate,
        DropReason::UnknownMetric,
        DropReason::NotFinite,
        DropReason::OutOfRange,
        DropReason::UplinkClosed,
        DropReason::OfflineQueueFull,
        DropReason::ModbusTimeout,
        DropReason::ModbusError,
        DropReason::BufferFull,
        DropReason::BufferCorrupt,
        DropReason::NodeBufferOverflow,
        DropReason::StorageFailed,
        DropReason::OpcUaBadStatus,
        DropReason::OpcUaNotNumeric,
        DropReason::OpcUaDuplicate,
        DropReason::OpcUaOverflow,
    ];

    /// Stable label for metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::BadFrame => "bad_frame",
            DropReason::NodeMismatch => "node_mismatch",
            DropReason::UnconfiguredNode => "unconfigured_node",
            DropReason::NoHello => "no_hello",
            DropReason::Duplicate => "duplicate",
            DropReason::UnknownMetric => "unknown_metric",
            DropReason::NotFinite => "not_finite",
            DropReason::OutOfRange => "out_of_range",
            DropReason::UplinkClosed => "uplink_closed",
            DropReason::OfflineQueueFull => "offline_queue_full",
            DropReason::ModbusTimeout => "modbus_timeout",
            DropReason::ModbusError => "modbus_error",
            DropReason::BufferFull => "buffer_full",
            DropReason::BufferCorrupt => "buffer_corrupt",
            DropReason::NodeBufferOverflow => "node_buffer_overflow",
            DropReason::StorageFailed => "storage_failed",
            DropReason::OpcUaBadStatus => "opcua_bad_status",
            DropReason::OpcUaNotNumeric => "opcua_not_numeric",
            DropReason::OpcUaDuplicate => "opcua_duplicate",
            DropReason::OpcUaOverflow => "opcua_overflow",
        }
    }
}

/// The reasons a received byte string is not a frame, as `DecodeError::reason` names them.
pub const DECODE_REASONS: [&str; 9] = [
    "truncated",
    "oversize",
    "bad_crc",
    "unsupported_version",
    "malformed",
    "trailing_bytes",
    "invalid_id",
    "invalid_frame",
    "bad_cobs",
];

/// Something that happened to an OPC UA server's session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpcUaLinkEvent {
    /// A connect or reconnect attempt failed.
    ConnectFailed,
    /// An established connection broke.
    ConnectionLost,
    /// A reconnect reactivated the old session: its subscriptions went on.
    Resumed,
    /// A reconnect needed a new session (the server restarted or forgot it); subscriptions
    /// were transferred or recreated.
    NewSession,
}

impl OpcUaLinkEvent {
    /// Every event, for exposition.
    pub const ALL: [OpcUaLinkEvent; 4] = [
        OpcUaLinkEvent::ConnectFailed,
        OpcUaLinkEvent::ConnectionLost,
        OpcUaLinkEvent::Resumed,
        OpcUaLinkEvent::NewSession,
    ];

    /// Stable label for metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            OpcUaLinkEvent::ConnectFailed => "connect_failed",
            OpcUaLinkEvent::ConnectionLost => "connection_lost",
            OpcUaLinkEvent::Resumed => "resumed",
            OpcUaLinkEvent::NewSession => "new_session",
        }
    }
}

/// Lock-free counters shared by the gateway's tasks.
#[derive(Debug, Default)]
pub struct GatewayStats {
    decode_failures: [AtomicU64; DECODE_REASONS.len()],
    frames_received: AtomicU64,
    samples_forwarded: AtomicU64,
    births_published: AtomicU64,
    uplink_sessions: AtomicU64,
    drops: [AtomicU64; DropReason::ALL.len()],
    opcua_links: [AtomicU64; OpcUaLinkEvent::ALL.len()],
    buffer_depth: AtomicU64,
    buffer_unsent: AtomicU64,
    buffer_bytes: AtomicU64,
    storage_failing: AtomicU64,
    storage_held: AtomicU64,
    storage_errors: AtomicU64,
    storage_recoveries: AtomicU64,
    serial_ports_adopted: AtomicU64,
    serial_ports_failed: AtomicU64,
    serial_ports_lost: AtomicU64,
    serial_ports_open: AtomicU64,
    /// The last disk error while storage is failing, for the readiness probe.
    storage_error: std::sync::Mutex<Option<String>>,
    /// Frames per source, published by the core once a second (never locked per frame).
    sources: std::sync::Mutex<Vec<(String, u64)>>,
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
    /// Frames that failed decoding, by [`DECODE_REASONS`] (each also counted as `bad_frame`).
    pub decode_failures: Vec<(&'static str, u64)>,
    /// Samples in the disk buffer not yet acknowledged by the hub's broker.
    pub buffer_depth: u64,
    /// Of those, not yet sent in the current session.
    pub buffer_unsent: u64,
    /// Bytes the disk buffer occupies.
    pub buffer_bytes: u64,
    /// 1 while the disk buffer cannot store or flush (the gateway holds its sources' samples
    /// unacknowledged and retries), else 0.
    pub storage_failing: u64,
    /// Samples held in memory until the disk buffer takes them again.
    pub storage_held: u64,
    /// Disk buffer operations that failed (append, flush, read, acknowledgement).
    pub storage_errors: u64,
    /// Times storage worked again after failing.
    pub storage_recoveries: u64,
    /// The disk error while storage is failing.
    pub storage_error: Option<String>,
    /// Serial ports opened (configured or found by the scan), reopenings after an unplug
    /// included.
    pub serial_ports_adopted: u64,
    /// Serial ports that could not be opened; one per failure, not per retry of it.
    pub serial_ports_failed: u64,
    /// Open serial ports that were lost (unplugged, hung up, IO error).
    pub serial_ports_lost: u64,
    /// Serial ports open right now.
    pub serial_ports_open: u64,
    /// Frames received per source (`mqtt`, `serial:/dev/ttyUSB0`, `modbus:press-plc`).
    pub sources: Vec<(String, u64)>,
    /// OPC UA session events, in [`OpcUaLinkEvent::ALL`] order.
    pub opcua_links: Vec<(OpcUaLinkEvent, u64)>,
}

impl StatsSnapshot {
    /// The count for one drop reason.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }

    /// The count for one OPC UA session event.
    pub fn opcua_link(&self, event: OpcUaLinkEvent) -> u64 {
        self.opcua_links
            .iter()
            .find(|(e, _)| *e == event)
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

    /// Counts a serial port opened; it is open until [`GatewayStats::serial_port_closed`].
    pub(crate) fn serial_port_adopted(&self) {
        self.serial_ports_adopted.fetch_add(1, Ordering::Relaxed);
        self.serial_ports_open.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a serial port that could not be opened.
    pub(crate) fn serial_port_failed(&self) {
        self.serial_ports_failed.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an open serial port closing; `lost` when the device went away.
    pub(crate) fn serial_port_closed(&self, lost: bool) {
        if lost {
            self.serial_ports_lost.fetch_add(1, Ordering::Relaxed);
        }
        // Saturating: a close is only counted after its open, but a gauge must never wrap.
        let _ = self
            .serial_ports_open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(1))
            });
    }

    /// Publishes the disk buffer's gauges.
    pub(crate) fn set_buffer(&self, depth: u64, unsent: u64, bytes: u64) {
        self.buffer_depth.store(depth, Ordering::Relaxed);
        self.buffer_unsent.store(unsent, Ordering::Relaxed);
        self.buffer_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Publishes whether storage is failing, with the error.
    pub(crate) fn set_storage_error(&self, error: Option<String>) {
        self.storage_failing
            .store(u64::from(error.is_some()), Ordering::Relaxed);
        if let Ok(mut slot) = self.storage_error.lock() {
            *slot = error;
        }
    }

    /// Publishes how many samples wait in memory for the disk buffer.
    pub(crate) fn set_storage_held(&self, held: u64) {
        self.storage_held.store(held, Ordering::Relaxed);
    }

    /// Counts a failed disk buffer operation.
    pub(crate) fn storage_error(&self) {
        self.storage_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts storage working again after failing.
    pub(crate) fn storage_recovered(&self) {
        self.storage_recoveries.fetch_add(1, Ordering::Relaxed);
    }

    /// Publishes the per-source frame counts.
    pub(crate) fn set_sources(&self, sources: Vec<(String, u64)>) {
        if let Ok(mut slot) = self.sources.lock() {
            *slot = sources;
        }
    }

    /// Counts a frame that failed decoding, under `bad_frame` and its precise reason.
    pub fn decode_failed(&self, err: &protocol::DecodeError) {
        self.dropped(DropReason::BadFrame);
        if let Some(slot) = DECODE_REASONS.iter().position(|r| *r == err.reason()) {
            self.decode_failures[slot].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one OPC UA session event.
    pub fn opcua_link(&self, event: OpcUaLinkEvent) {
        if let Some(slot) = OpcUaLinkEvent::ALL.iter().position(|e| *e == event) {
            self.opcua_links[slot].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts `count` dropped items.
    pub fn dropped_many(&self, reason: DropReason, count: u64) {
        let slot = DropReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.drops[slot].fetch_add(count, Ordering::Relaxed);
    }

    /// Counts one dropped item.
    pub fn dropped(&self, reason: DropReason) {
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
            buffer_depth: self.buffer_depth.load(Ordering::Relaxed),
            buffer_unsent: self.buffer_unsent.load(Ordering::Relaxed),
            buffer_bytes: self.buffer_bytes.load(Ordering::Relaxed),
            storage_failing: self.storage_failing.load(Ordering::Relaxed),
            storage_held: self.storage_held.load(Ordering::Relaxed),
            storage_errors: self.storage_errors.load(Ordering::Relaxed),
            storage_recoveries: self.storage_recoveries.load(Ordering::Relaxed),
            storage_error: self.storage_error.lock().ok().and_then(|e| e.clone()),
            serial_ports_adopted: self.serial_ports_adopted.load(Ordering::Relaxed),
            serial_ports_failed: self.serial_ports_failed.load(Ordering::Relaxed),
            serial_ports_lost: self.serial_ports_lost.load(Ordering::Relaxed),
            serial_ports_open: self.serial_ports_open.load(Ordering::Relaxed),
            sources: self.sources.lock().map(|s| s.clone()).unwrap_or_default(),
            drops: DropReason::ALL
                .iter()
                .zip(&self.drops)
                .map(|(reason, n)| (*reason, n.load(Ordering::Relaxed)))
                .collect(),
            decode_failures: DECODE_REASONS
                .iter()
                .zip(&self.decode_failures)
                .map(|(reason, n)| (*reason, n.load(Ordering::Relaxed)))
                .collect(),
            opcua_links: OpcUaLinkEvent::ALL
                .iter()
                .zip(&self.opcua_links)
                .map(|(event, n)| (*event, n.load(Ordering::Relaxed)))
                .collect(),
        }
    }
}

/// Prometheus text for several gateways, grouped by metric family as the format requires.
pub fn render_prometheus(
    gateways: &[(&protocol::LabId, &protocol::GatewayId, StatsSnapshot)],
) -> String {
    use std::fmt::Write;
    type Field = fn(&StatsSnapshot) -> u64;
    let families: [(&str, &str, Field); 9] = [
        (
            "demolab_gateway_frames_received_total",
            "Node frames received.",
            |s| s.frames_received,
        ),
        (
            "demolab_gateway_samples_forwarded_total",
            "Samples published as DDATA.",
            |s| s.samples_forwarded,
        ),
        (
            "demolab_gateway_births_published_total",
            "NBIRTH and DBIRTH messages published.",
            |s| s.births_published,
        ),
        (
            "demolab_gateway_uplink_sessions_total",
            "Uplink MQTT sessions established.",
            |s| s.uplink_sessions,
        ),
        (
            "demolab_gateway_storage_errors_total",
            "Disk buffer operations that failed (append, flush, read, acknowledgement).",
            |s| s.storage_errors,
        ),
        (
            "demolab_gateway_storage_recoveries_total",
            "Times the disk buffer worked again after failing.",
            |s| s.storage_recoveries,
        ),
        (
            "demolab_gateway_serial_ports_adopted_total",
            "Serial ports opened, configured or found by the scan (reopened after an unplug included).",
            |s| s.serial_ports_adopted,
        ),
        (
            "demolab_gateway_serial_ports_failed_total",
            "Serial ports that could not be opened (once per failure, not per retry).",
            |s| s.serial_ports_failed,
        ),
        (
            "demolab_gateway_serial_ports_lost_total",
            "Open serial ports lost: unplugged, hung up or failing.",
            |s| s.serial_ports_lost,
        ),
    ];
    let mut out = String::new();
    for (name, help, field) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (lab, gateway, stats) in gateways {
            let _ = writeln!(
                out,
                "{name}{{lab=\"{lab}\",gateway=\"{gateway}\"}} {}",
                field(stats)
            );
        }
    }
    let gauges: [(&str, &str, Field); 6] = [
        (
            "demolab_gateway_serial_ports_open",
            "Serial ports open now.",
            |s| s.serial_ports_open,
        ),
        (
            "demolab_gateway_buffer_depth",
            "Samples on disk not yet acknowledged by the hub's broker.",
            |s| s.buffer_depth,
        ),
        (
            "demolab_gateway_buffer_unsent",
            "Buffered samples not yet sent in this session.",
            |s| s.buffer_unsent,
        ),
        (
            "demolab_gateway_buffer_bytes",
            "Bytes the disk buffer occupies.",
            |s| s.buffer_bytes,
        ),
        (
            "demolab_gateway_storage_failing",
            "1 while the disk buffer fails: sources are paused and their samples held unacknowledged.",
            |s| s.storage_failing,
        ),
        (
            "demolab_gateway_storage_held",
            "Samples held in memory until the disk buffer takes them again.",
            |s| s.storage_held,
        ),
    ];
    for (name, help, field) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (lab, gateway, stats) in gateways {
            let _ = writeln!(
                out,
                "{name}{{lab=\"{lab}\",gateway=\"{gateway}\"}} {}",
                field(stats)
            );
        }
    }
    let name = "demolab_gateway_source_frames_total";
    let _ = writeln!(
        out,
        "# HELP {name} Frames received, by source.\n# TYPE {name} counter"
    );
    for (lab, gateway, stats) in gateways {
        for (source, count) in &stats.sources {
            let _ = writeln!(
                out,
                "{name}{{lab=\"{lab}\",gateway=\"{gateway}\",source=\"{source}\"}} {count}"
            );
        }
    }
    let name = "demolab_gateway_dropped_total";
    let _ = writeln!(
        out,
        "# HELP {name} Frames, samples or readings dropped, by reason.\n# TYPE {name} counter"
    );
    for (lab, gateway, stats) in gateways {
        for (reason, count) in &stats.drops {
            let _ = writeln!(
                out,
                "{name}{{lab=\"{lab}\",gateway=\"{gateway}\",reason=\"{}\"}} {count}",
                reason.as_str()
            );
        }
    }
    let name = "demolab_gateway_opcua_link_events_total";
    let _ = writeln!(
        out,
        "# HELP {name} OPC UA session events (failed connects, lost connections, resumed or new sessions).\n# TYPE {name} counter"
    );
    for (lab, gateway, stats) in gateways {
        for (event, count) in &stats.opcua_links {
            let _ = writeln!(
                out,
                "{name}{{lab=\"{lab}\",gateway=\"{gateway}\",event=\"{}\"}} {count}",
                event.as_str()
            );
        }
    }
    let name = "demolab_gateway_bad_frames_total";
    let _ = writeln!(
        out,
        "# HELP {name} Received bytes that were not a valid frame, by reason.\n# TYPE {name} counter"
    );
    for (lab, gateway, stats) in gateways {
        for (reason, count) in &stats.decode_failures {
            let _ = writeln!(
                out,
                "{name}{{lab=\"{lab}\",gateway=\"{gateway}\",reason=\"{reason}\"}} {count}"
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_lists_each_family_once_with_every_gateway_and_reason() {
        let lab_a = "lab-a".parse().expect("valid");
        let lab_b = "lab-b".parse().expect("valid");
        let gw = "gw".parse().expect("valid");
        let stats = GatewayStats::default();
        stats.dropped(DropReason::BadFrame);
        let text = render_prometheus(&[
            (&lab_a, &gw, stats.snapshot()),
            (&lab_b, &gw, StatsSnapshot::default()),
        ]);
        assert_eq!(
            text.matches("# TYPE demolab_gateway_dropped_total").count(),
            1
        );
        assert!(text.contains(
            "demolab_gateway_dropped_total{lab=\"lab-a\",gateway=\"gw\",reason=\"bad_frame\"} 1"
        ));
        assert!(
            text.contains("demolab_gateway_frames_received_total{lab=\"lab-b\",gateway=\"gw\"} 0")
        );
    }

    #[test]
    fn opcua_session_events_are_counted_by_event() {
        let lab = "lab-a".parse().expect("valid");
        let gw = "gw".parse().expect("valid");
        let stats = GatewayStats::default();
        stats.opcua_link(OpcUaLinkEvent::ConnectionLost);
        stats.opcua_link(OpcUaLinkEvent::NewSession);
        stats.opcua_link(OpcUaLinkEvent::NewSession);
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.opcua_link(OpcUaLinkEvent::NewSession), 2);
        assert_eq!(snapshot.opcua_link(OpcUaLinkEvent::Resumed), 0);
        let text = render_prometheus(&[(&lab, &gw, snapshot)]);
        assert!(text.contains(
            "demolab_gateway_opcua_link_events_total{lab=\"lab-a\",gateway=\"gw\",event=\"connection_lost\"} 1"
        ));
    }
}
