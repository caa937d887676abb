//! Long-term history: forwards samples to InfluxDB v2 (or anything speaking its write API,
//! e.g. VictoriaMetrics) for Grafana and analysts.
//!
//! Ingest calls [`InfluxSink::offer`] for every stored sample; it never blocks: the point goes
//! into a bounded queue, and when the queue is full it is dropped and counted (`queue_full`).
//! One background task ([`InfluxSink::start`] returns its handle) takes batches of up to
//! `batch_size` points, or whatever arrived within `flush_interval_ms`, and writes them with
//! `POST /api/v2/write?precision=ms`.
//!
//! # Failure policy
//! - Connection errors, timeouts, 5xx, 408 and 429: the same batch is retried with
//!   exponential backoff (`retry_initial_ms` doubling up to `retry_max_ms`), indefinitely while
//!   the hub runs. Meanwhile the queue absorbs new points, then drops them as `queue_full`.
//! - Any other 4xx: the server will never accept that batch; it is dropped and counted as
//!   `rejected` (logged at ERROR: data lost).
//! - Cancellation: what is queued is written within `shutdown_flush_ms`; what is still unwritten
//!   at that deadline is counted as `shutdown`.
//!
//! # Line protocol
//! One line per sample: measurement `machine` (configurable), tags `lab`, `machine` and, when
//! known, `gateway`, one field named after the metric, timestamp in ms:
//! `machine,gateway=gw-1,lab=lab-a,machine=lathe-1 spindle.power_w=812.5 1767225600000`.
//! One line per sample rather than one per instant with every metric as a field: rows arrive
//! one metric at a time, metrics of one machine do not share timestamps, and grouping would
//! need a reorder buffer; InfluxDB and VictoriaMetrics store each field as its own series
//! anyway (VictoriaMetrics names it `machine_spindle.power_w`). Whether a sample was a replay
//! from a gateway's buffer is not a tag, so a replay fills the gap in the same series instead
//! of starting a new one; it is counted in `demolab_influx_points_offered_total{kind}`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use influxdb2::RequestError;
use influxdb2::api::write::TimestampPrecision;
use influxdb2::models::{DataPoint, WriteDataPoint};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use super::RowRef;

/// Where and how to write. Durations in milliseconds.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InfluxConfig {
    /// Server base URL, `http://host:port` (this build has no TLS).
    pub url: String,
    /// Organization (ignored by VictoriaMetrics, required by InfluxDB).
    pub org: String,
    /// Bucket.
    pub bucket: String,
    /// API token. Prefer `token_env` so the token stays out of config files.
    #[serde(default)]
    pub token: Option<String>,
    /// Name of an environment variable holding the token.
    #[serde(default)]
    pub token_env: Option<String>,
    /// Most points per write request.
    #[serde(default = "defaults::batch_size")]
    pub batch_size: usize,
    /// Longest a point waits for its batch to fill.
    #[serde(default = "defaults::flush_interval_ms")]
    pub flush_interval_ms: u64,
    /// Points queued at most; beyond, new points are dropped (`queue_full`).
    #[serde(default = "defaults::queue_capacity")]
    pub queue_capacity: usize,
    /// Measurement name.
    #[serde(default = "defaults::measurement")]
    pub measurement: String,
    /// Longest one write request may take before it counts as failed and is retried.
    #[serde(default = "defaults::request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// First retry delay; doubles per failure.
    #[serde(default = "defaults::retry_initial_ms")]
    pub retry_initial_ms: u64,
    /// Longest retry delay.
    #[serde(default = "defaults::retry_max_ms")]
    pub retry_max_ms: u64,
    /// On shutdown, how long queued points may take to be written.
    #[serde(default = "defaults::shutdown_flush_ms")]
    pub shutdown_flush_ms: u64,
    /// The store's Prometheus-style query API (VictoriaMetrics: the same `http://host:port` as
    /// `url`). When set, history older than the embedded retention is read back from it
    /// ([`super::long_term`]); without it, charts end where the embedded history does.
    #[serde(default)]
    pub query_url: Option<String>,
}

mod defaults {
    pub(super) fn batch_size() -> usize {
        5000
    }
    pub(super) fn flush_interval_ms() -> u64 {
        1000
    }
    pub(super) fn queue_capacity() -> usize {
        100_000
    }
    pub(super) fn measurement() -> String {
        "machine".into()
    }
    pub(super) fn request_timeout_ms() -> u64 {
        10_000
    }
    pub(super) fn retry_initial_ms() -> u64 {
        500
    }
    pub(super) fn retry_max_ms() -> u64 {
        30_000
    }
    pub(super) fn shutdown_flush_ms() -> u64 {
        5_000
    }
}

impl InfluxConfig {
    /// A configuration with every default, for `url`, `org` and `bucket`.
    pub fn new(url: impl Into<String>, org: impl Into<String>, bucket: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            org: org.into(),
            bucket: bucket.into(),
            token: None,
            token_env: None,
            batch_size: defaults::batch_size(),
            flush_interval_ms: defaults::flush_interval_ms(),
            queue_capacity: defaults::queue_capacity(),
            measurement: defaults::measurement(),
            request_timeout_ms: defaults::request_timeout_ms(),
            retry_initial_ms: defaults::retry_initial_ms(),
            retry_max_ms: defaults::retry_max_ms(),
            shutdown_flush_ms: defaults::shutdown_flush_ms(),
            query_url: None,
        }
    }

    /// Checks every value; the error names the key. Also checks that `token_env` is set.
    pub fn validate(&self) -> Result<(), InfluxConfigError> {
        self.resolve_token().map(|_| ())
    }

    /// Validates and returns the token to send (empty: none).
    fn resolve_token(&self) -> Result<String, InfluxConfigError> {
        let bad = |key: &'static str, reason: String| Err(InfluxConfigError { key, reason });
        check_http_url("url", &self.url)?;
        if let Some(query_url) = &self.query_url {
            check_http_url("query_url", query_url)?;
        }
        if self.org.is_empty() {
            return bad("org", "must not be empty".into());
        }
        if self.bucket.is_empty() {
            return bad("bucket", "must not be empty".into());
        }
        if self.measurement.is_empty() {
            return bad("measurement", "must not be empty".into());
        }
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1".into());
        }
        if self.queue_capacity < self.batch_size {
            return bad("queue_capacity", "must be at least batch_size".into());
        }
        for (key, value) in [
            ("flush_interval_ms", self.flush_interval_ms),
            ("request_timeout_ms", self.request_timeout_ms),
            ("retry_initial_ms", self.retry_initial_ms),
        ] {
            if value == 0 {
                return bad(key, "must be at least 1".into());
            }
        }
        if self.retry_max_ms < self.retry_initial_ms {
            return bad("retry_max_ms", "must be at least retry_initial_ms".into());
        }
        match (&self.token, &self.token_env) {
            (Some(_), Some(_)) => bad("token_env", "set either token or token_env".into()),
            (Some(token), None) => Ok(token.clone()),
            (None, Some(var)) => std::env::var(var).or_else(|_| {
                bad(
                    "token_env",
                    format!("environment variable {var} is not set"),
                )
            }),
            (None, None) => Ok(String::new()),
        }
    }
}

impl std::fmt::Debug for InfluxConfig {
    // Hand-written so the token never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InfluxConfig")
            .field("url", &self.url)
            .field("org", &self.org)
            .field("bucket", &self.bucket)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_env", &self.token_env)
            .field("batch_size", &self.batch_size)
            .field("flush_interval_ms", &self.flush_interval_ms)
            .field("queue_capacity", &self.queue_capacity)
            .field("measurement", &self.measurement)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("retry_initial_ms", &self.retry_initial_ms)
            .field("retry_max_ms", &self.retry_max_ms)
            .field("shutdown_flush_ms", &self.shutdown_flush_ms)
            .field("query_url", &self.query_url)
            .finish()
    }
}

/// Accepts `http://host[:port]`; the error names `key`.
fn check_http_url(key: &'static str, text: &str) -> Result<(), InfluxConfigError> {
    let reason = match url::Url::parse(text) {
        Ok(url) if url.scheme() == "http" && url.host().is_some() => return Ok(()),
        Ok(url) if url.scheme() == "https" => {
            "https is not supported by this build (no TLS); use http".to_owned()
        }
        Ok(_) => format!("{text:?} is not an http://host URL"),
        Err(err) => format!("{text:?}: {err}"),
    };
    Err(InfluxConfigError { key, reason })
}

/// A configuration value is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("influx config `{key}`: {reason}")]
pub struct InfluxConfigError {
    /// The offending key.
    pub key: &'static str,
    /// Why.
    pub reason: String,
}

/// Why a point was not written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The queue was full when the point was offered.
    QueueFull,
    /// The server refused its batch with a 4xx.
    Rejected,
    /// NaN or infinite: line protocol has no such float.
    NonFinite,
    /// Still unwritten when the shutdown deadline passed.
    Shutdown,
    /// Offered after the sink stopped.
    Closed,
}

impl DropReason {
    const ALL: [DropReason; 5] = [
        DropReason::QueueFull,
        DropReason::Rejected,
        DropReason::NonFinite,
        DropReason::Shutdown,
        DropReason::Closed,
    ];

    /// Stable label.
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::Rejected => "rejected",
            DropReason::NonFinite => "non_finite",
            DropReason::Shutdown => "shutdown",
            DropReason::Closed => "closed",
        }
    }

    const fn slot(self) -> usize {
        match self {
            DropReason::QueueFull => 0,
            DropReason::Rejected => 1,
            DropReason::NonFinite => 2,
            DropReason::Shutdown => 3,
            DropReason::Closed => 4,
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    offered_live: AtomicU64,
    offered_historical: AtomicU64,
    written: AtomicU64,
    retries: AtomicU64,
    dropped: [AtomicU64; 5],
}

impl Counters {
    fn count_drop(&self, reason: DropReason, n: u64) {
        self.dropped[reason.slot()].fetch_add(n, Ordering::Relaxed);
    }
}

/// One queued sample, owned so the queue does not borrow from ingest.
#[derive(Debug)]
struct Point {
    lab: String,
    machine: String,
    gateway: Option<String>,
    field: String,
    value: f64,
    timestamp_ms: u64,
}

/// The ingest-side handle: cheap to clone, never blocks.
#[derive(Debug, Clone)]
pub struct InfluxSink {
    tx: mpsc::Sender<Point>,
    counters: Arc<Counters>,
}

impl InfluxSink {
    /// Validates `config` and starts the writer task. The task ends after `cancel` fires and
    /// the final flush is done (or its deadline passed); await the handle on shutdown.
    pub fn start(
        config: InfluxConfig,
        cancel: CancellationToken,
    ) -> Result<(InfluxSink, JoinHandle<()>), InfluxConfigError> {
        let token = config.resolve_token()?;
        let client = influxdb2::ClientBuilder::new(&config.url, &config.org, token)
            .build()
            .map_err(|err| InfluxConfigError {
                key: "url",
                reason: format!("cannot build an HTTP client: {err}"),
            })?;
        let (sink, rx) = Self::channel(&config);
        let writer = Writer {
            client,
            config,
            counters: sink.counters.clone(),
        };
        let task = tokio::spawn(writer.run(rx, cancel));
        Ok((sink, task))
    }

    fn channel(config: &InfluxConfig) -> (InfluxSink, mpsc::Receiver<Point>) {
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let sink = InfluxSink {
            tx,
            counters: Arc::new(Counters::default()),
        };
        (sink, rx)
    }

    /// Queues one sample; drops and counts it when the queue is full or the sink stopped.
    /// `historical` marks a replay from a gateway's buffer (counted, not tagged).
    pub fn offer(&self, row: RowRef<'_>, gateway: Option<&str>, historical: bool) {
        let offered = if historical {
            &self.counters.offered_historical
        } else {
            &self.counters.offered_live
        };
        offered.fetch_add(1, Ordering::Relaxed);
        if !row.value.is_finite() {
            self.counters.count_drop(DropReason::NonFinite, 1);
            return;
        }
        let point = Point {
            lab: row.key.lab.to_string(),
            machine: row.key.machine.to_string(),
            gateway: gateway.map(str::to_owned),
            field: row.metric.to_string(),
            value: row.value,
            timestamp_ms: row.timestamp_ms,
        };
        match self.tx.try_send(point) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.counters.count_drop(DropReason::QueueFull, 1)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.counters.count_drop(DropReason::Closed, 1)
            }
        }
    }

    /// Points acknowledged by the server.
    pub fn written(&self) -> u64 {
        self.counters.written.load(Ordering::Relaxed)
    }

    /// Points dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.counters.dropped[reason.slot()].load(Ordering::Relaxed)
    }

    /// Write requests retried.
    pub fn retries(&self) -> u64 {
        self.counters.retries.load(Ordering::Relaxed)
    }

    /// Points waiting in the queue (not counting a batch being written).
    pub fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// The counters as Prometheus text.
    pub fn render_prometheus(&self) -> String {
        let c = &self.counters;
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "# HELP demolab_influx_points_offered_total Samples offered to the InfluxDB sink.\n\
             # TYPE demolab_influx_points_offered_total counter\n\
             demolab_influx_points_offered_total{{kind=\"live\"}} {}\n\
             demolab_influx_points_offered_total{{kind=\"historical\"}} {}",
            c.offered_live.load(Ordering::Relaxed),
            c.offered_historical.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP demolab_influx_points_written_total Points the server acknowledged.\n\
             # TYPE demolab_influx_points_written_total counter\n\
             demolab_influx_points_written_total {}",
            self.written()
        );
        let _ = writeln!(
            out,
            "# HELP demolab_influx_points_dropped_total Points given up on, by reason.\n\
             # TYPE demolab_influx_points_dropped_total counter"
        );
        for reason in DropReason::ALL {
            let _ = writeln!(
                out,
                "demolab_influx_points_dropped_total{{reason=\"{}\"}} {}",
                reason.as_str(),
                self.dropped(reason)
            );
        }
        let _ = writeln!(
            out,
            "# HELP demolab_influx_queue_depth Points waiting to be written.\n\
             # TYPE demolab_influx_queue_depth gauge\n\
             demolab_influx_queue_depth {}",
            self.queue_depth()
        );
        let _ = writeln!(
            out,
            "# HELP demolab_influx_write_retries_total Write requests retried after a failure.\n\
             # TYPE demolab_influx_write_retries_total counter\n\
             demolab_influx_write_retries_total {}",
            self.retries()
        );
        out
    }
}

/// How one write attempt ended.
#[derive(Debug)]
enum Attempt {
    Written,
    /// Worth retrying (connection, timeout, 5xx, 408, 429).
    Retry(String),
    /// The server refuses this batch for good.
    Rejected(String),
}

/// How a batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Written,
    Rejected,
    /// The deadline passed (shutdown) before the batch could be written.
    GaveUp,
}

/// The background task's state.
struct Writer {
    client: influxdb2::Client,
    config: InfluxConfig,
    counters: Arc<Counters>,
}

impl Writer {
    async fn run(self, mut rx: mpsc::Receiver<Point>, cancel: CancellationToken) {
        let batch_size = self.config.batch_size;
        let flush_interval = Duration::from_millis(self.config.flush_interval_ms);
        let mut batch: Vec<Point> = Vec::with_capacity(batch_size);
        let mut pending = None;
        loop {
            // Wait for the first point of a batch.
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                n = rx.recv_many(&mut batch, batch_size) => if n == 0 { break },
            }
            // Then fill it until it is full or the oldest point has waited long enough.
            let flush_at = Instant::now() + flush_interval;
            while batch.len() < batch_size {
                let room = batch_size - batch.len();
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep_until(flush_at) => break,
                    n = rx.recv_many(&mut batch, room) => if n == 0 { break },
                }
            }
            let n = batch.len() as u64;
            let body = self.encode(&batch);
            batch.clear();
            if self.write_with_retry(body.clone(), n, &cancel, None).await == Outcome::GaveUp {
                // Cancelled while retrying: the final flush tries it again, with a deadline.
                pending = Some((body, n));
                break;
            }
        }
        self.final_flush(rx, pending).await;
    }

    /// Writes what is left after cancellation, within `shutdown_flush_ms`; counts the rest.
    async fn final_flush(&self, mut rx: mpsc::Receiver<Point>, pending: Option<(Bytes, u64)>) {
        let deadline = Instant::now() + Duration::from_millis(self.config.shutdown_flush_ms);
        // No new points from here on: later offers count as `closed`.
        rx.close();
        // Nothing cancels the final flush but its deadline.
        let never = CancellationToken::new();
        let mut next = pending;
        let mut batch = Vec::with_capacity(self.config.batch_size);
        loop {
            let (body, n) = match next.take() {
                Some(pending) => pending,
                None => {
                    // Closed: returns at once with what is left, 0 when drained.
                    if rx.recv_many(&mut batch, self.config.batch_size).await == 0 {
                        return;
                    }
                    let n = batch.len() as u64;
                    let body = self.encode(&batch);
                    batch.clear();
                    (body, n)
                }
            };
            if self.write_with_retry(body, n, &never, Some(deadline)).await == Outcome::GaveUp {
                let lost = n + rx.len() as u64;
                self.counters.count_drop(DropReason::Shutdown, lost);
                error!(
                    points = lost,
                    "InfluxDB sink: shutdown deadline passed, points lost"
                );
                return;
            }
        }
    }

    /// Line protocol for `batch`, encoded once so retries resend the same bytes.
    fn encode(&self, batch: &[Point]) -> Bytes {
        let mut buf = Vec::with_capacity(batch.len() * 96);
        for p in batch {
            let mut builder = DataPoint::builder(self.config.measurement.as_str())
                .tag("lab", p.lab.as_str())
                .tag("machine", p.machine.as_str())
                .field(p.field.as_str(), p.value)
                .timestamp(i64::try_from(p.timestamp_ms).unwrap_or(i64::MAX));
            if let Some(gateway) = &p.gateway {
                builder = builder.tag("gateway", gateway.as_str());
            }
            // Cannot fail: the point has a field, and a Vec accepts every write.
            if let Ok(point) = builder.build() {
                let _ = point.write_data_point_to(&mut buf);
            }
        }
        Bytes::from(buf)
    }

    /// One request, classified.
    async fn attempt(&self, body: Bytes) -> Attempt {
        let request = self.client.write_line_protocol_with_precision(
            &self.config.org,
            &self.config.bucket,
            body,
            TimestampPrecision::Milliseconds,
        );
        let timeout = Duration::from_millis(self.config.request_timeout_ms);
        match tokio::time::timeout(timeout, request).await {
            Ok(Ok(())) => Attempt::Written,
            Err(_) => Attempt::Retry(format!("no answer within {timeout:?}")),
            Ok(Err(RequestError::Http { status, text })) => {
                let code = status.as_u16();
                let detail = format!("HTTP {status}: {}", text.trim());
                if status.is_client_error() && code != 408 && code != 429 {
                    Attempt::Rejected(detail)
                } else {
                    Attempt::Retry(detail)
                }
            }
            Ok(Err(err)) => Attempt::Retry(err.to_string()),
        }
    }

    /// Writes one batch of `n` points, retrying with backoff until it is written, rejected,
    /// `cancel` fires, or `deadline` passes.
    async fn write_with_retry(
        &self,
        body: Bytes,
        n: u64,
        cancel: &CancellationToken,
        deadline: Option<Instant>,
    ) -> Outcome {
        let mut delay = Duration::from_millis(self.config.retry_initial_ms);
        let max_delay = Duration::from_millis(self.config.retry_max_ms);
        loop {
            let attempt = match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, self.attempt(body.clone()))
                    .await
                    .unwrap_or_else(|_| Attempt::Retry("shutdown deadline".into())),
                None => self.attempt(body.clone()).await,
            };
            match attempt {
                Attempt::Written => {
                    self.counters.written.fetch_add(n, Ordering::Relaxed);
                    return Outcome::Written;
                }
                Attempt::Rejected(detail) => {
                    self.counters.count_drop(DropReason::Rejected, n);
                    error!(points = n, %detail, "InfluxDB rejected a batch, points lost");
                    return Outcome::Rejected;
                }
                Attempt::Retry(detail) => {
                    warn!(points = n, %detail, retry_in = ?delay, "InfluxDB write failed, will retry");
                }
            }
            let wake = Instant::now() + delay;
            if deadline.is_some_and(|d| wake >= d) {
                return Outcome::GaveUp;
            }
            tokio::select! {
                () = cancel.cancelled() => return Outcome::GaveUp,
                () = tokio::time::sleep_until(wake) => {}
            }
            self.counters.retries.fetch_add(1, Ordering::Relaxed);
            delay = (delay * 2).min(max_delay);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::super::HistoryRow;
    use axum::extract::{Query, State};
    use axum::http::StatusCode;
    use axum::routing::post;

    use super::*;
    use crate::twin::TwinKey;

    /// A write endpoint that answers from a script (then 204) and records what it got.
    #[derive(Default)]
    struct Server {
        script: Mutex<Vec<u16>>,
        requests: Mutex<Vec<(String, String)>>,
    }

    async fn write(
        State(server): State<Arc<Server>>,
        Query(query): Query<Vec<(String, String)>>,
        body: String,
    ) -> StatusCode {
        let query = query
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        server.requests.lock().expect("lock").push((query, body));
        let mut script = server.script.lock().expect("lock");
        let code = if script.is_empty() {
            204
        } else {
            script.remove(0)
        };
        StatusCode::from_u16(code).expect("valid status")
    }

    async fn serve(script: Vec<u16>) -> (Arc<Server>, String, CancellationToken) {
        let server = Arc::new(Server {
            script: Mutex::new(script),
            requests: Mutex::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let app = axum::Router::new()
            .route("/api/v2/write", post(write))
            .with_state(server.clone());
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await
                .expect("serve");
        });
        (server, url, stop)
    }

    fn config(url: &str) -> InfluxConfig {
        InfluxConfig {
            flush_interval_ms: 10,
            retry_initial_ms: 5,
            retry_max_ms: 20,
            batch_size: 100,
            queue_capacity: 1000,
            ..InfluxConfig::new(url, "demolab", "history")
        }
    }

    fn row(i: u64) -> HistoryRow {
        HistoryRow {
            key: TwinKey {
                lab: "lab-a".parse().expect("valid"),
                machine: "lathe-1".parse().expect("valid"),
            },
            metric: "spindle.power_w".parse().expect("valid"),
            timestamp_ms: 1_767_225_600_000 + i,
            seq: 0,
            value: i as f64 + 0.5,
        }
    }

    /// Polls `cond` until it holds; fails after 10 s.
    async fn wait_for(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn unavailable_servers_are_retried_until_the_batch_is_written() {
        let (server, url, stop) = serve(vec![503, 503]).await;
        let cancel = CancellationToken::new();
        let (sink, task) = InfluxSink::start(config(&url), cancel.clone()).expect("start");
        for i in 0..10 {
            sink.offer(row(i).as_ref(), Some("gw-1"), i % 2 == 0);
        }
        wait_for("10 written points", || sink.written() == 10).await;
        assert_eq!(sink.retries(), 2);
        assert_eq!(sink.dropped(DropReason::Rejected), 0);
        {
            let requests = server.requests.lock().expect("lock");
            assert_eq!(requests.len(), 3);
            // Each retry resends the same batch.
            assert!(requests.iter().all(|r| r.1 == requests[0].1));
            let (query, body) = &requests[2];
            assert_eq!(query, "bucket=history&org=demolab&precision=ms");
            let lines: Vec<&str> = body.lines().collect();
            assert_eq!(lines.len(), 10);
            assert_eq!(
                lines[3],
                "machine,gateway=gw-1,lab=lab-a,machine=lathe-1 spindle.power_w=3.5 1767225600003"
            );
        }
        let metrics = sink.render_prometheus();
        for line in [
            "demolab_influx_points_written_total 10",
            "demolab_influx_write_retries_total 2",
            "demolab_influx_points_dropped_total{reason=\"queue_full\"} 0",
            "demolab_influx_queue_depth 0",
            "demolab_influx_points_offered_total{kind=\"historical\"} 5",
        ] {
            assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
        }
        cancel.cancel();
        task.await.expect("sink task");
        stop.cancel();
    }

    #[tokio::test]
    async fn a_client_error_drops_the_batch_as_rejected() {
        let (server, url, stop) = serve(vec![400]).await;
        let cancel = CancellationToken::new();
        let (sink, task) = InfluxSink::start(config(&url), cancel.clone()).expect("start");
        for i in 0..7 {
            sink.offer(row(i).as_ref(), None, false);
        }
        wait_for("7 rejected points", || {
            sink.dropped(DropReason::Rejected) == 7
        })
        .await;
        assert_eq!(sink.written(), 0);
        assert_eq!(sink.retries(), 0);
        // The next batch is written normally.
        sink.offer(row(7).as_ref(), None, false);
        wait_for("1 written point", || sink.written() == 1).await;
        assert_eq!(server.requests.lock().expect("lock").len(), 2);
        assert!(
            sink.render_prometheus()
                .contains("demolab_influx_points_dropped_total{reason=\"rejected\"} 7")
        );
        cancel.cancel();
        task.await.expect("sink task");
        stop.cancel();
    }

    #[tokio::test]
    async fn cancelling_flushes_what_is_queued() {
        let (server, url, stop) = serve(vec![]).await;
        let cancel = CancellationToken::new();
        let config = InfluxConfig {
            // Only the final flush can write these.
            flush_interval_ms: 3_600_000,
            ..config(&url)
        };
        let (sink, task) = InfluxSink::start(config, cancel.clone()).expect("start");
        for i in 0..5 {
            sink.offer(row(i).as_ref(), None, false);
        }
        cancel.cancel();
        task.await.expect("sink task");
        assert_eq!(sink.written(), 5);
        assert_eq!(server.requests.lock().expect("lock").len(), 1);
        sink.offer(row(9).as_ref(), None, false);
        assert_eq!(sink.dropped(DropReason::Closed), 1);
        stop.cancel();
    }

    #[tokio::test]
    async fn an_unreachable_server_loses_points_only_at_the_shutdown_deadline() {
        // A port that was just free: connections are refused.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        drop(listener);
        let cancel = CancellationToken::new();
        let config = InfluxConfig {
            shutdown_flush_ms: 50,
            ..config(&url)
        };
        let (sink, task) = InfluxSink::start(config, cancel.clone()).expect("start");
        for i in 0..4 {
            sink.offer(row(i).as_ref(), None, false);
        }
        wait_for("a retry", || sink.retries() >= 1).await;
        cancel.cancel();
        task.await.expect("sink task");
        assert_eq!(sink.written(), 0);
        assert_eq!(sink.dropped(DropReason::Shutdown), 4);
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_blocking() {
        let config = InfluxConfig {
            queue_capacity: 2,
            batch_size: 1,
            ..InfluxConfig::new("http://127.0.0.1:1", "o", "b")
        };
        let (sink, _rx) = InfluxSink::channel(&config);
        for i in 0..5 {
            sink.offer(row(i).as_ref(), None, false);
        }
        let not_a_number = HistoryRow {
            value: f64::NAN,
            ..row(9)
        };
        sink.offer(not_a_number.as_ref(), None, false);
        assert_eq!(sink.queue_depth(), 2);
        assert_eq!(sink.dropped(DropReason::QueueFull), 3);
        assert_eq!(sink.dropped(DropReason::NonFinite), 1);
        assert!(
            sink.render_prometheus()
                .contains("demolab_influx_queue_depth 2\n")
        );
    }

    #[test]
    fn toml_config_takes_defaults_and_validates() {
        let config: InfluxConfig = toml::from_str(
            r#"
            url = "http://127.0.0.1:8086"
            org = "demolab"
            bucket = "history"
            token = "secret"
            "#,
        )
        .expect("parse");
        assert_eq!(config.batch_size, 5000);
        assert_eq!(config.flush_interval_ms, 1000);
        assert_eq!(config.queue_capacity, 100_000);
        assert_eq!(config.measurement, "machine");
        config.validate().expect("valid");
        assert!(!format!("{config:?}").contains("secret"));
        assert!(
            toml::from_str::<InfluxConfig>("url = \"x\"\norg = \"o\"\nbucket = \"b\"\nbatch = 1")
                .is_err()
        );
    }

    #[test]
    fn bad_config_values_name_their_key() {
        let base = InfluxConfig::new("http://127.0.0.1:8086", "o", "b");
        let key = |config: InfluxConfig| config.validate().expect_err("invalid").key;
        assert_eq!(
            key(InfluxConfig {
                url: "not a url".into(),
                ..base.clone()
            }),
            "url"
        );
        assert_eq!(
            key(InfluxConfig {
                url: "https://influx:8086".into(),
                ..base.clone()
            }),
            "url"
        );
        assert_eq!(
            key(InfluxConfig {
                query_url: Some("victoria:8428".into()),
                ..base.clone()
            }),
            "query_url"
        );
        assert_eq!(
            key(InfluxConfig {
                org: String::new(),
                ..base.clone()
            }),
            "org"
        );
        assert_eq!(
            key(InfluxConfig {
                batch_size: 0,
                ..base.clone()
            }),
            "batch_size"
        );
        assert_eq!(
            key(InfluxConfig {
                queue_capacity: 10,
                batch_size: 20,
                ..base.clone()
            }),
            "queue_capacity"
        );
        assert_eq!(
            key(InfluxConfig {
                flush_interval_ms: 0,
                ..base.clone()
            }),
            "flush_interval_ms"
        );
        assert_eq!(
            key(InfluxConfig {
                token_env: Some("DEMOLAB_TEST_SURELY_UNSET_TOKEN".into()),
                ..base.clone()
            }),
            "token_env"
        );
        assert_eq!(
            key(InfluxConfig {
                token: Some("t".into()),
                token_env: Some("PATH".into()),
                ..base
            }),
            "token_env"
        );
    }
}
