//! Hub counters, lock-free, rendered as Prometheus text at `/metrics`.

use std::fmt::Write;
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
    /// A JSON-topic value not published because the broker connection was backed up.
    JsonTopicBackpressure,
    /// A live sample older than one the alarm engine already judged (not evaluated for alarms).
    StaleAlarmSample,
    /// A sample whose sequence is not newer than the twin's (duplicate or late replay).
    StaleSequence,
    /// A stream client fell too far behind and skipped changes.
    StreamLagged,
}

impl IngestDrop {
    const ALL: [IngestDrop; 12] = [
        IngestDrop::StaleAlarmSample,
        IngestDrop::UnregisteredGateway,
        IngestDrop::JsonTopicBackpressure,
        IngestDrop::BadTopic,
        IngestDrop::BadPayload,
        IngestDrop::DataBeforeBirth,
        IngestDrop::UnknownAlias,
        IngestDrop::NotNumeric,
        IngestDrop::MissingSequence,
        IngestDrop::UnknownTwin,
        IngestDrop::StaleSequence,
        IngestDrop::StreamLagged,
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
            IngestDrop::JsonTopicBackpressure => "json_topic_backpressure",
            IngestDrop::StaleAlarmSample => "stale_alarm_sample",

            IngestDrop::StaleSequence => "stale_sequence",
            IngestDrop::StreamLagged => "stream_lagged",
        }
    }

    fn slot(self) -> usize {
        Self::ALL.iter().position(|d| *d == self).unwrap_or(0)
    }
}

/// Why the HTTP server refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpRefusal {
    /// `http.max_connections` connections were open.
    Limit,
    /// `http.max_connections_per_client` connections from that address were open.
    ClientLimit,
}

impl HttpRefusal {
    const ALL: [HttpRefusal; 2] = [HttpRefusal::Limit, HttpRefusal::ClientLimit];

    /// Stable label.
    pub const fn as_str(self) -> &'static str {
        match self {
            HttpRefusal::Limit => "connection_limit",
            HttpRefusal::ClientLimit => "client_limit",
        }
    }
}

/// Which HTTP timeout closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpTimeout {
    /// The request header was not complete in `http.header_timeout_ms` (slowloris).
    Header,
    /// No byte moved for two `http.idle_timeout_s` periods.
    Idle,
    /// The TLS handshake was not complete in `http.tls_handshake_timeout_ms`.
    TlsHandshake,
}

impl HttpTimeout {
    const ALL: [HttpTimeout; 3] = [
        HttpTimeout::Header,
        HttpTimeout::Idle,
        HttpTimeout::TlsHandshake,
    ];

    /// Stable label.
    pub const fn as_str(self) -> &'static str {
        match self {
            HttpTimeout::Header => "header",
            HttpTimeout::Idle => "idle",
            HttpTimeout::TlsHandshake => "tls_handshake",
        }
    }
}

/// The hub's counters.
#[derive(Debug, Default)]
pub struct HubStats {
    messages: AtomicU64,
    samples: AtomicU64,
    births: AtomicU64,
    deaths: AtomicU64,
    seq_gaps: AtomicU64,
    rebirth_requests: AtomicU64,
    stream_clients: AtomicU64,
    commits: AtomicU64,
    commit_failures: AtomicU64,
    history_rows: AtomicU64,
    drops: [AtomicU64; IngestDrop::ALL.len()],
    http_open: AtomicU64,
    http_accepted: AtomicU64,
    http_refused: [AtomicU64; HttpRefusal::ALL.len()],
    http_timeouts: [AtomicU64; HttpTimeout::ALL.len()],
    http_tls_failures: AtomicU64,
}

impl HubStats {
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
    pub(crate) fn commit_failed(&self) {
        self.commit_failures.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn ingest_dropped(&self, reason: IngestDrop) {
        self.drops[reason.slot()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn http_connection_opened(&self) {
        self.http_accepted.fetch_add(1, Ordering::Relaxed);
        self.http_open.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn http_connection_closed(&self) {
        self.http_open.fetch_sub(1, Ordering::Relaxed);
    }
    pub(crate) fn http_refused(&self, reason: HttpRefusal) {
        self.http_refused[reason as usize].fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn http_timed_out(&self, kind: HttpTimeout) {
        self.http_timeouts[kind as usize].fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn http_tls_failed(&self) {
        self.http_tls_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// HTTP connections open now (upgraded streams included).
    pub fn http_connections_open(&self) -> u64 {
        self.http_open.load(Ordering::Relaxed)
    }

    /// HTTPS connections whose TLS handshake failed.
    pub fn http_tls_failures(&self) -> u64 {
        self.http_tls_failures.load(Ordering::Relaxed)
    }

    /// HTTP connections refused for `reason`.
    pub fn http_refusals(&self, reason: HttpRefusal) -> u64 {
        self.http_refused[reason as usize].load(Ordering::Relaxed)
    }

    /// HTTP connections closed by the `kind` timeout.
    pub fn http_timeouts(&self, kind: HttpTimeout) -> u64 {
        self.http_timeouts[kind as usize].load(Ordering::Relaxed)
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

    /// Sparkplug seq gaps detected.
    pub fn seq_gaps(&self) -> u64 {
        self.seq_gaps.load(Ordering::Relaxed)
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
            "Sparkplug seq gaps detected.",
            load(&self.seq_gaps),
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
            "demolab_hub_http_connections_total",
            "HTTP connections accepted (refused ones not included).",
            load(&self.http_accepted),
        );
        counter(
            "demolab_hub_http_tls_failures_total",
            "HTTPS connections whose TLS handshake failed.",
            load(&self.http_tls_failures),
        );

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
        let _ = writeln!(
            out,
            "# HELP demolab_hub_http_refused_total HTTP connections refused at a limit, by reason.\n# TYPE demolab_hub_http_refused_total counter"
        );
        for reason in HttpRefusal::ALL {
            let _ = writeln!(
                out,
                "demolab_hub_http_refused_total{{reason=\"{}\"}} {}",
                reason.as_str(),
                self.http_refusals(reason)
            );
        }
        let _ = writeln!(
            out,
            "# HELP demolab_hub_http_timeouts_total HTTP connections closed by a timeout, by kind.\n# TYPE demolab_hub_http_timeouts_total counter"
        );
        for kind in HttpTimeout::ALL {
            let _ = writeln!(
                out,
                "demolab_hub_http_timeouts_total{{kind=\"{}\"}} {}",
                kind.as_str(),
                self.http_timeouts(kind)
            );
        }
        let gauges = [
            (
                "demolab_hub_http_connections_open",
                "HTTP connections open (WebSocket and SSE streams included).",
                load(&self.http_open),
            ),
            ("demolab_hub_twins", "Twins known.", twins as u64),
            ("demolab_hub_twins_online", "Twins online.", online as u64),
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
