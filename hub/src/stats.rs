//! Hub counters, lock-free, rendered as Prometheus text at `/metrics`.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why ingest dropped a message or sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestDrop {
    /// The topic is not a valid Sparkplug topic.
    BadTopic,
    /// The payload is not a Sparkplug protobuf payload.
    BadPayload,
    /// DDATA/NDATA before the birth that announces its aliases (a rebirth is requested).
    DataBeforeBirth,
    /// A metric alias that the birth did not announce.
    UnknownAlias,
    /// A metric whose value is not a number (strings and bytes have no twin property yet).
    NotNumeric,
    /// A DDATA with neither a `node.seq` nor any value.
    MissingSequence,
    /// A sample for a twin that does not exist.
    UnknownTwin,
    /// A message from a gateway the lab's configuration does not list.
    UnregisteredGateway,
    /// A JSON-topic value replaced by a newer one of its metric before it was published (the
    /// topic holds the last value; history keeps them all).
    JsonTopicSuperseded,
    /// A live sample older than one the alarm engine already judged (not evaluated for alarms).
    StaleAlarmSample,
    /// A sample whose sequence is not newer than the twin's (duplicate or late replay).
    StaleSequence,
    /// A stream client fell too far behind and skipped changes.
    StreamLagged,
    /// A topic longer than `limits.max_topic_len` (not parsed).
    TopicTooLong,
    /// A payload larger than `limits.max_payload_bytes` (not decoded).
    PayloadTooLarge,
    /// A message for a lab the directory does not list (`[hub] accept_unknown` is off).
    UnknownLab,
    /// A DBIRTH of a machine the lab does not list (neither `accept_unknown` nor the lab's
    /// `accept_new_machines` is on), or data of such a machine.
    UnknownMachine,
    /// A message of a new edge node while `limits.max_edge_nodes` sessions are tracked.
    TooManyEdgeNodes,
    /// A DBIRTH (or its data) past `limits.max_devices_per_edge` devices of its edge node.
    TooManyDevices,
    /// A birth of a new twin past `limits.max_twins_per_lab` in its lab.
    TooManyTwins,
    /// A metric past `limits.max_metrics_per_device` of its device (one count per metric).
    TooManyMetrics,
    /// A metric name longer than `limits.max_metric_name_len` (one count per metric).
    MetricNameTooLong,
    /// A metric name that is not `feature.property` (one count per metric).
    InvalidMetricName,
    /// A string longer than `limits.max_string_len` (one count per metric).
    StringTooLong,
    /// A sample whose `node.seq` ran further than `limits.seq_window` ahead of its twin (a
    /// rebirth is requested; the twin keeps following the real sequence).
    SeqJump,
    /// An NDEATH whose `bdSeq` is not that of the edge node's current session (an old Will, or
    /// a forged death).
    BdSeqMismatch,
    /// An NBIRTH without a `bdSeq` metric, which its NDEATH could never be matched with.
    MissingBdSeq,
}

impl IngestDrop {
    const ALL: [IngestDrop; 26] = [
        IngestDrop::StaleAlarmSample,
        IngestDrop::UnregisteredGateway,
        IngestDrop::JsonTopicSuperseded,
        IngestDrop::BadTopic,
        IngestDrop::BadPayload,
        IngestDrop::DataBeforeBirth,
        IngestDrop::UnknownAlias,
        IngestDrop::NotNumeric,
        IngestDrop::MissingSequence,
        IngestDrop::UnknownTwin,
        IngestDrop::StaleSequence,
        IngestDrop::StreamLagged,
        IngestDrop::TopicTooLong,
        IngestDrop::PayloadTooLarge,
        IngestDrop::UnknownLab,
        IngestDrop::UnknownMachine,
        IngestDrop::TooManyEdgeNodes,
        IngestDrop::TooManyDevices,
        IngestDrop::TooManyTwins,
        IngestDrop::TooManyMetrics,
        IngestDrop::MetricNameTooLong,
        IngestDrop::InvalidMetricName,
        IngestDrop::StringTooLong,
        IngestDrop::SeqJump,
        IngestDrop::BdSeqMismatch,
        IngestDrop::MissingBdSeq,
    ];

    /// Stable label.
    pub const fn as_str(self) -> &'static str {
        match self {
            IngestDrop::BadTopic => "bad_topic",
            IngestDrop::BadPayload => "bad_payload",
            IngestDrop::DataBeforeBirth => "data_before_birth",
            IngestDrop::UnknownAlias => "unknown_alias",
            IngestDrop::NotNumeric => "not_numeric",
            IngestDrop::MissingSequence => "missing_sequence",
            IngestDrop::UnknownTwin => "unknown_twin",
            IngestDrop::UnregisteredGateway => "unregistered_gateway",
            IngestDrop::JsonTopicSuperseded => "json_topic_superseded",
            IngestDrop::StaleAlarmSample => "stale_alarm_sample",
            IngestDrop::StaleSequence => "stale_sequence",
            IngestDrop::StreamLagged => "stream_lagged",
            IngestDrop::TopicTooLong => "topic_too_long",
            IngestDrop::PayloadTooLarge => "payload_too_large",
            IngestDrop::UnknownLab => "unknown_lab",
            IngestDrop::UnknownMachine => "unknown_machine",
            IngestDrop::TooManyEdgeNodes => "too_many_edge_nodes",
            IngestDrop::TooManyDevices => "too_many_devices",
            IngestDrop::TooManyTwins => "too_many_twins",
            IngestDrop::TooManyMetrics => "too_many_metrics",
            IngestDrop::MetricNameTooLong => "metric_name_too_long",
            IngestDrop::InvalidMetricName => "invalid_metric_name",
            IngestDrop::StringTooLong => "string_too_long",
            IngestDrop::SeqJump => "seq_jump",
            IngestDrop::BdSeqMismatch => "bd_seq_mismatch",
            IngestDrop::MissingBdSeq => "missing_bd_seq",
        }
    }

    fn slot(self) -> usize {
        Self::ALL.iter().position(|d| *d == self).unwrap_or(0)
    }
}

/// Rate limit of the log line of one drop reason: when the next line may be written, and how
/// many were suppressed since the last one.
#[derive(Debug, Default)]
struct LogSlot {
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

pub use http_guard::{HttpCounters, HttpRefusal, HttpTimeout};

/// The hub's counters.
#[derive(Debug, Default)]
pub struct HubStats {
    messages: AtomicU64,
    samples: AtomicU64,
    births: AtomicU64,
    deaths: AtomicU64,
    seq_gaps: AtomicU64,
    reordered: AtomicU64,
    rebirth_requests: AtomicU64,
    stream_clients: AtomicU64,
    commits: AtomicU64,
    commit_failures: AtomicU64,
    uncommitted_peak: AtomicU64,
    ingest_pauses: AtomicU64,
    memory_releases: AtomicU64,
    memory_release_us: AtomicU64,
    compactions: [AtomicU64; 2],
    compaction_us: AtomicU64,
    replica_slots: AtomicU64,
    replica_members: AtomicU64,
    history_rows: AtomicU64,
    twins_retired: AtomicU64,
    twins_silenced: AtomicU64,
    drops: [AtomicU64; IngestDrop::ALL.len()],
    /// At most one log line per drop reason per this many ms (0 = every one).
    log_interval_ms: u64,
    log_slots: [LogSlot; IngestDrop::ALL.len()],
    event_slots: [LogSlot; WireEvent::ALL.len()],
    http: Arc<HttpCounters>,
}

/// Events on the ingest path that are not drops but that anyone able to publish can repeat at
/// will, so their log lines are rate-limited like those of drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireEvent {
    /// An edge node was born.
    EdgeBirth,
    /// An edge node died.
    EdgeDeath,
    /// A Sparkplug seq gap.
    SeqGap,
    /// A rebirth was requested.
    Rebirth,
}

impl WireEvent {
    const ALL: [WireEvent; 4] = [
        WireEvent::EdgeBirth,
        WireEvent::EdgeDeath,
        WireEvent::SeqGap,
        WireEvent::Rebirth,
    ];

    fn slot(self) -> usize {
        Self::ALL.iter().position(|e| *e == self).unwrap_or(0)
    }
}

impl HubStats {
    /// Counters whose drop log lines are rate-limited to one per reason per `log_interval_ms`.
    pub fn with_log_interval(log_interval_ms: u64) -> Self {
        Self {
            log_interval_ms,
            ..Self::default()
        }
    }

    /// Counts `n` drops for `reason` and says whether a log line about them may be written at
    /// `now_ms`: `Some(suppressed)` with the number of drop events whose line was suppressed
    /// since the last one, or `None` to stay quiet. Every refusal an attacker can trigger logs
    /// through this, so a flood costs a counter, not the disk.
    pub(crate) fn refused(&self, reason: IngestDrop, n: u64, now_ms: u64) -> Option<u64> {
        self.drops[reason.slot()].fetch_add(n, Ordering::Relaxed);
        self.permit(&self.log_slots[reason.slot()], now_ms)
    }

    /// Whether a log line about drops already counted for `reason` may be written at `now_ms`
    /// (see [`HubStats::refused`]).
    pub(crate) fn may_log_drop(&self, reason: IngestDrop, now_ms: u64) -> Option<u64> {
        self.permit(&self.log_slots[reason.slot()], now_ms)
    }

    /// Whether a log line about `event` may be written at `now_ms` (see [`HubStats::refused`]).
    pub(crate) fn may_log(&self, event: WireEvent, now_ms: u64) -> Option<u64> {
        self.permit(&self.event_slots[event.slot()], now_ms)
    }

    fn permit(&self, slot: &LogSlot, now_ms: u64) -> Option<u64> {
        let next = slot.next_ms.load(Ordering::Relaxed);
        if now_ms >= next
            && slot
                .next_ms
                .compare_exchange(
                    next,
                    now_ms.saturating_add(self.log_interval_ms),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(slot.suppressed.swap(0, Ordering::Relaxed));
        }
        slot.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }

    pub(crate) fn twin_retired(&self) {
        self.twins_retired.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn twin_silenced(&self) {
        self.twins_silenced.fetch_add(1, Ordering::Relaxed);
    }

    /// Twins retired through the API.
    pub fn twins_retired(&self) -> u64 {
        self.twins_retired.load(Ordering::Relaxed)
    }

    /// Twins marked stale because no sample was accepted for the configured silence.
    pub fn twins_silenced(&self) -> u64 {
        self.twins_silenced.load(Ordering::Relaxed)
    }

    pub(crate) fn message_received(&self) {
        self.messages.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn sample_applied(&self) {
        self.samples.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn birth(&self) {
        self.births.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn death(&self) {
        self.deaths.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn seq_gap(&self) {
        self.seq_gaps.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn message_reordered(&self) {
        self.reordered.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn rebirth_requested(&self) {
        self.rebirth_requests.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn stream_client(&self, delta: i64) {
        if delta >= 0 {
            self.stream_clients
                .fetch_add(delta as u64, Ordering::Relaxed);
        } else {
            self.stream_clients
                .fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
        }
    }
    pub(crate) fn committed(&self, rows: usize) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.history_rows.fetch_add(rows as u64, Ordering::Relaxed);
    }
    /// A replica's share of its region: slots it owns, replicas connected.
    pub(crate) fn replica_slots(&self, owned: usize, members: usize) {
        self.replica_slots.store(owned as u64, Ordering::Relaxed);
        self.replica_members
            .store(members as u64, Ordering::Relaxed);
    }
    pub(crate) fn observe_uncommitted(&self, messages: usize) {
        self.uncommitted_peak
            .fetch_max(messages as u64, Ordering::Relaxed);
    }
    /// The most accepted messages that waited for storage at once.
    pub fn uncommitted_peak(&self) -> u64 {
        self.uncommitted_peak.load(Ordering::Relaxed)
    }
    /// Ingest stopped reading the broker: `hub.max_uncommitted` messages waited for storage.
    pub(crate) fn ingest_paused(&self) {
        self.ingest_pauses.fetch_add(1, Ordering::Relaxed);
    }
    /// How often ingest stopped reading because storage was behind.
    pub fn ingest_pauses(&self) -> u64 {
        self.ingest_pauses.load(Ordering::Relaxed)
    }
    /// A round of handing free memory back to the kernel: whether any went back, and its time.
    pub(crate) fn memory_released(&self, released: bool, took: std::time::Duration) {
        if released {
            self.memory_releases.fetch_add(1, Ordering::Relaxed);
        }
        self.memory_release_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }
    /// A history compaction round: whether it found nothing old enough to visit, and its time
    /// (it holds the store's write lock, so commits wait for it).
    pub(crate) fn compacted(&self, skipped: bool, took: std::time::Duration) {
        self.compactions[usize::from(skipped)].fetch_add(1, Ordering::Relaxed);
        self.compaction_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }
    pub(crate) fn commit_failed(&self) {
        self.commit_failures.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn ingest_dropped_many(&self, reason: IngestDrop, count: u64) {
        if count > 0 {
            self.drops[reason.slot()].fetch_add(count, Ordering::Relaxed);
        }
    }
    pub(crate) fn ingest_dropped(&self, reason: IngestDrop) {
        self.drops[reason.slot()].fetch_add(1, Ordering::Relaxed);
    }

    /// The counters the HTTP accept loop keeps.
    pub fn http_counters(&self) -> Arc<HttpCounters> {
        self.http.clone()
    }

    /// HTTP connections open now (upgraded streams included).
    pub fn http_connections_open(&self) -> u64 {
        self.http.open()
    }

    /// HTTPS connections whose TLS handshake failed.
    pub fn http_tls_failures(&self) -> u64 {
        self.http.tls_failures()
    }

    /// HTTP connections refused for `reason`.
    pub fn http_refusals(&self, reason: HttpRefusal) -> u64 {
        self.http.refusals(reason)
    }

    /// HTTP connections closed by the `kind` timeout.
    pub fn http_timeouts(&self, kind: HttpTimeout) -> u64 {
        self.http.timeouts(kind)
    }

    /// Drops counted for `reason`.
    pub fn dropped(&self, reason: IngestDrop) -> u64 {
        self.drops[reason.slot()].load(Ordering::Relaxed)
    }

    /// Samples applied to twins.
    pub fn samples_applied(&self) -> u64 {
        self.samples.load(Ordering::Relaxed)
    }

    /// History values committed to the embedded store.
    pub fn history_rows(&self) -> u64 {
        self.history_rows.load(Ordering::Relaxed)
    }

    /// Sparkplug seq gaps that stayed open past the reorder timeout: messages lost.
    pub fn seq_gaps(&self) -> u64 {
        self.seq_gaps.load(Ordering::Relaxed)
    }

    /// NCMD rebirth requests sent.
    pub fn rebirth_requests(&self) -> u64 {
        self.rebirth_requests.load(Ordering::Relaxed)
    }

    /// Messages that arrived ahead of a seq gap and were handled in order once it filled.
    pub fn reordered(&self) -> u64 {
        self.reordered.load(Ordering::Relaxed)
    }

    /// Storage commits.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Sparkplug messages received.
    pub fn messages_received(&self) -> u64 {
        self.messages.load(Ordering::Relaxed)
    }

    /// Prometheus text exposition.
    pub fn render(&self, twins: usize, online: usize) -> String {
        let mut out = String::with_capacity(2048);
        let mut counter = |name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            "demolab_hub_messages_total",
            "Sparkplug messages received.",
            load(&self.messages),
        );
        counter(
            "demolab_hub_samples_applied_total",
            "Samples applied to twins.",
            load(&self.samples),
        );
        counter(
            "demolab_hub_births_total",
            "NBIRTH and DBIRTH messages handled.",
            load(&self.births),
        );
        counter(
            "demolab_hub_deaths_total",
            "NDEATH and DDEATH messages handled.",
            load(&self.deaths),
        );
        counter(
            "demolab_hub_seq_gaps_total",
            "Sparkplug seq gaps that stayed open past the reorder timeout (messages lost).",
            load(&self.seq_gaps),
        );
        counter(
            "demolab_hub_reordered_total",
            "Sparkplug messages that arrived ahead of a seq gap, held and handled in order once it filled.",
            load(&self.reordered),
        );
        counter(
            "demolab_hub_rebirth_requests_total",
            "NCMD rebirth requests sent.",
            load(&self.rebirth_requests),
        );
        counter(
            "demolab_hub_commits_total",
            "Storage commits (each acknowledges its messages to the broker).",
            load(&self.commits),
        );
        counter(
            "demolab_hub_memory_releases_total",
            "Rounds that gave memory freed inside the allocator back to the kernel (hub.release_memory_every_ms).",
            load(&self.memory_releases),
        );
        counter(
            "demolab_hub_memory_release_microseconds_total",
            "Time spent handing free memory back (it holds the allocator's locks while it runs).",
            load(&self.memory_release_us),
        );
        counter(
            "demolab_hub_ingest_paused_total",
            "Times ingest stopped reading the broker because hub.max_uncommitted messages waited for storage (a broker that holds its window never lets it happen).",
            load(&self.ingest_pauses),
        );
        counter(
            "demolab_hub_commit_failures_total",
            "Storage commits that failed (their messages stay unacknowledged).",
            load(&self.commit_failures),
        );
        counter(
            "demolab_hub_history_rows_total",
            "Values written to the embedded history.",
            load(&self.history_rows),
        );
        counter(
            "demolab_hub_twins_retired_total",
            "Twins retired by an operator (DELETE /api/v1/twins/{lab}/{machine}).",
            load(&self.twins_retired),
        );
        counter(
            "demolab_hub_twins_silenced_total",
            "Twins marked stale because no sample was accepted for the configured silence.",
            load(&self.twins_silenced),
        );

        counter(
            "demolab_hub_history_compaction_microseconds_total",
            "Time history compaction rounds took; a round that visits the series holds the store's write lock, so commits wait behind it.",
            load(&self.compaction_us),
        );
        let _ = writeln!(
            out,
            "# HELP demolab_hub_history_compactions_total History compaction rounds: ran = visited the series, skipped = nothing was old enough.\n# TYPE demolab_hub_history_compactions_total counter"
        );
        for (pass, slot) in [("ran", 0), ("skipped", 1)] {
            let _ = writeln!(
                out,
                "demolab_hub_history_compactions_total{{pass=\"{pass}\"}} {}",
                load(&self.compactions[slot])
            );
        }
        let _ = writeln!(
            out,
            "# HELP demolab_hub_dropped_total Messages or samples dropped, by reason."
        );
        let _ = writeln!(out, "# TYPE demolab_hub_dropped_total counter");
        for reason in IngestDrop::ALL {
            let _ = writeln!(
                out,
                "demolab_hub_dropped_total{{reason=\"{}\"}} {}",
                reason.as_str(),
                self.dropped(reason)
            );
        }
        out.push_str(&self.http.render_prometheus("demolab_hub_http"));
        let gauges = [
            ("demolab_hub_twins", "Twins known.", twins as u64),
            (
                "demolab_hub_uncommitted_peak",
                "The most accepted messages that waited for storage at once: bounded by the broker's window of unacknowledged messages (max_inflight_messages) and by hub.max_uncommitted.",
                load(&self.uncommitted_peak),
            ),
            ("demolab_hub_twins_online", "Twins online.", online as u64),
            (
                "demolab_hub_replica_slots",
                "Slots of the region this replica owns (0 for a hub on its own).",
                load(&self.replica_slots),
            ),
            (
                "demolab_hub_replica_members",
                "Replicas of the region connected to the shared store, this one included.",
                load(&self.replica_members),
            ),
            (
                "demolab_hub_stream_clients",
                "Open stream connections.",
                load(&self.stream_clients),
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_refusals_is_counted_whole_and_logged_once_per_interval() {
        let stats = HubStats::with_log_interval(1_000);
        assert_eq!(stats.refused(IngestDrop::BadTopic, 1, 5_000), Some(0));
        for _ in 0..499 {
            assert_eq!(stats.refused(IngestDrop::BadTopic, 1, 5_500), None);
        }
        // Another reason has its own budget.
        assert_eq!(stats.refused(IngestDrop::SeqJump, 3, 5_500), Some(0));
        assert_eq!(
            stats.refused(IngestDrop::BadTopic, 1, 6_000),
            Some(499),
            "the next line tells how many were suppressed"
        );
        assert_eq!(stats.dropped(IngestDrop::BadTopic), 501);
        assert_eq!(stats.dropped(IngestDrop::SeqJump), 3);
        assert!(
            stats
                .render(0, 0)
                .contains("demolab_hub_dropped_total{reason=\"seq_jump\"} 3")
        );
    }
}
