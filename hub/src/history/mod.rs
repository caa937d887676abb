//! Recent sample history in the hub's redb database, and the long-term InfluxDB sink.
//!
//! Data path position: beside the twins. Ingest hands every accepted sample (lab, machine,
//! metric, source timestamp, value) to [`append`] inside the same write transaction that
//! persists the twins, so one commit holds both; the API answers chart requests with [`query`];
//! a periodic task calls [`compact`] to fold old raw samples into per-minute rollups and to
//! expire what is past retention. [`influx::InfluxSink`] forwards the same rows to InfluxDB v2
//! for history beyond the embedded window, and [`long_term::LongTermReader`] reads that part
//! back for the API.
//!
//! These functions own no database: they take the caller's transaction.
//!
//! ```
//! # fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use demolab_hub::history::{self, HistoryRow, TimeRange};
//! use demolab_hub::twin::TwinKey;
//! use redb::ReadableDatabase;
//!
//! let dir = tempfile::tempdir()?;
//! let db = redb::Database::create(dir.path().join("hub.redb"))?;
//! let key = TwinKey { lab: "lab-a".parse()?, machine: "lathe-1".parse()? };
//! let metric: protocol::MetricName = "spindle.power_w".parse()?;
//! let rows = [HistoryRow { key: key.clone(), metric: metric.clone(), timestamp_ms: 1_000, seq: 1, value: 2.5 }];
//!
//! let txn = db.begin_write()?;
//! history::append(&txn, &rows)?;
//! txn.commit()?;
//!
//! let range = TimeRange { from_ms: 0, to_ms: 2_000 };
//! let buckets = history::query(&db.begin_read()?, &key, &metric, range, None)?;
//! assert_eq!(buckets[0].last, 2.5);
//! # Ok(()) }
//! ```
//!
//! # On-disk layout
//! Five tables, all in the hub's database file:
//! - `history_series`: `"lab/machine/metric"` → `u32` series id. Ids are handed out densely in
//!   order of first appearance and never reused. Lab and machine ids cannot contain `/` and
//!   metric names cannot either, so the string is unambiguous and a prefix scan of
//!   `"lab/machine/"` lists a twin's series.
//! - `history_blocks`: `(series id, newest timestamp ms, newest sequence)` → up to
//!   [`BLOCK_ROWS`] samples of that series (timestamp, sequence, value; 20 bytes each), sorted
//!   and not overlapping the series' other blocks. The series id leads the key, so one series
//!   between two times is one ordered range; the key is 16 bytes instead of the ~60 a name
//!   would take. A block holds many samples, so storing them costs one B-tree insert per
//!   block instead of one per sample (a tenth of the hub's CPU at 10,000 msg/s). Hubs before
//!   blocks kept `history_raw` (one row per sample); [`migrate_rows_per_sample`] moves it into
//!   blocks when the store opens.
//! - `history_journal`: commit number → that commit's rows (series id, timestamp, sequence,
//!   value; 24 bytes each), written by [`append_journaled`] and folded into `history_blocks`
//!   every [`FOLD_AFTER_ENTRIES`] commits or once it holds [`FOLD_ROWS_PER_SERIES`] rows per
//!   series (at least [`FOLD_AFTER_ROWS`]). One entry per commit instead of one B-tree leaf
//!   copy per series per commit; queries read it beside the blocks. A fold writes about one
//!   block per series, so it waits for several rows per series: with 60,000 series, folding
//!   every 50,000 rows rewrote most of the history about once a second.
//! - `history_rollup`: `(series id, bucket start ms)` →
//!   `(count, min, max, sum, last, last timestamp ms)`, one row per series and rollup step.
//! - `history_meta`: bookkeeping by name. `raw_floor` / `rollup_floor` is a timestamp no row of
//!   that table is older than (the journal counts as raw): writers lower it, and a compaction
//!   that went through every series raises it to the oldest row left, so compaction visits the
//!   series only once its cut-off has passed a floor (with 60,000 series, seeking each one every
//!   10 s to find nothing took about a second of the write lock). `journal_rows` counts the
//!   rows waiting in the journal.
//!
//! # Same timestamp: last write wins
//! A sample is identified by its series, source timestamp and the node's sample sequence. A
//! second sample with the same three replaces the first ([`AppendStats::replaced`] counts it).
//! Gateways replay their buffer after an outage and may resend samples that already arrived;
//! keeping both would count those twice, while last-wins makes a replay idempotent. Samples of
//! one millisecond with different sequences are all kept. The policy
//! holds within the raw window: a replay of samples already folded into a rollup is folded
//! again (rollups keep no per-sample identity).

mod blocks;
mod compact;
pub mod influx;
pub mod long_term;
mod query;
mod tables;
mod write;

use protocol::MetricName;
use serde::{Deserialize, Serialize};

use crate::twin::TwinKey;

pub use blocks::{BLOCK_ROWS, migrate_rows_per_sample};
pub use compact::compact;
pub use query::{check_step, default_step, query, series};
pub(crate) use tables::copy_all as copy_tables;
pub use write::{
    FOLD_AFTER_ENTRIES, FOLD_AFTER_ROWS, FOLD_ROWS_PER_SERIES, SERIES_IDS_KEPT, SeriesIds, append,
    append_journaled, fold_journal,
};

/// Most raw points one [`query`] without a step returns (the oldest first).
pub const MAX_POINTS: usize = 10_000;
/// Most buckets one [`query`] with a step may produce; more is [`HistoryError::BadStep`].
pub const MAX_BUCKETS: u64 = 10_000;
/// How many buckets [`default_step`] aims at, at most.
pub const TARGET_BUCKETS: u64 = 500;

/// One sample to keep.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryRow {
    /// The twin.
    pub key: TwinKey,
    /// The metric.
    pub metric: MetricName,
    /// Source timestamp, ms since the epoch.
    pub timestamp_ms: u64,
    /// The node's sample sequence number (0 for values reported outside the sample stream):
    /// samples in the same millisecond are all kept, a replayed sample replaces itself.
    pub seq: u32,
    /// The value.
    pub value: f64,
}

impl HistoryRow {
    /// The row by reference, as [`append_journaled`] takes it.
    pub fn as_ref(&self) -> RowRef<'_> {
        RowRef {
            key: &self.key,
            metric: &self.metric,
            timestamp_ms: self.timestamp_ms,
            seq: self.seq,
            value: self.value,
        }
    }
}

/// One sample to keep, by reference to what already holds its twin and metric (a commit's
/// applied samples), so a batch is not copied into rows first.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowRef<'a> {
    /// The twin.
    pub key: &'a TwinKey,
    /// The metric.
    pub metric: &'a MetricName,
    /// Source timestamp, ms since the epoch.
    pub timestamp_ms: u64,
    /// The node's sample sequence number (see [`HistoryRow::seq`]).
    pub seq: u32,
    /// The value.
    pub value: f64,
}

/// A half-open time range `[from_ms, to_ms)`, ms since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeRange {
    /// First included millisecond.
    pub from_ms: u64,
    /// First excluded millisecond.
    pub to_ms: u64,
}

impl TimeRange {
    /// Rejects an empty or reversed range.
    pub fn validate(&self) -> Result<(), HistoryError> {
        if self.from_ms >= self.to_ms {
            return Err(HistoryError::BadTimeRange {
                from_ms: self.from_ms,
                to_ms: self.to_ms,
            });
        }
        Ok(())
    }

    /// `to_ms - from_ms`.
    pub fn span_ms(&self) -> u64 {
        self.to_ms.saturating_sub(self.from_ms)
    }
}

/// Aggregate of the samples in one time bucket. A raw point is a bucket of count 1.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Bucket {
    /// Bucket start, ms since the epoch (aligned to the step; a raw point's own timestamp).
    pub start_ms: u64,
    /// Samples aggregated.
    pub count: u64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Arithmetic mean.
    pub mean: f64,
    /// Value of the latest sample.
    pub last: f64,
}

/// What one [`append`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppendStats {
    /// New samples stored.
    pub appended: u64,
    /// Samples that replaced one with the same series and timestamp (last write wins).
    pub replaced: u64,
    /// NaN or infinite values, not stored: they would poison min/max/mean of every bucket.
    pub skipped_non_finite: u64,
    /// Samples written to the journal, to be folded into blocks later.
    pub journaled: u64,
}

/// How long history is kept and how finely. Durations in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    /// Raw samples younger than this are kept as they are (default 24 h).
    pub raw_ms: u64,
    /// Older samples are folded into rollups of this step (default 60 s).
    pub rollup_step_ms: u64,
    /// Rollups older than this are deleted (default 30 days).
    pub rollup_ms: u64,
    /// Most rows one [`compact`] call folds or deletes, so a call stays a short transaction
    /// and can run every few seconds (default 20 000).
    pub max_rows_per_call: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            raw_ms: 24 * 3_600_000,
            rollup_step_ms: 60_000,
            rollup_ms: 30 * 24 * 3_600_000,
            max_rows_per_call: 20_000,
        }
    }
}

impl Retention {
    /// Checks the values; the error names the offending key.
    pub fn validate(&self) -> Result<(), HistoryError> {
        let bad = |key: &'static str, reason: &'static str| {
            Err(HistoryError::BadRetention { key, reason })
        };
        if self.raw_ms == 0 {
            return bad("raw_ms", "must be at least 1");
        }
        if self.rollup_step_ms == 0 {
            return bad("rollup_step_ms", "must be at least 1");
        }
        if self.rollup_ms < self.raw_ms {
            return bad("rollup_ms", "must be at least raw_ms");
        }
        if self.max_rows_per_call == 0 {
            return bad("max_rows_per_call", "must be at least 1");
        }
        Ok(())
    }
}

/// What one [`compact`] call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactStats {
    /// Raw samples folded into rollups and deleted.
    pub raw_folded: u64,
    /// Raw samples deleted without a rollup because they were already past `rollup_ms`.
    pub raw_expired: u64,
    /// Rollup rows created or merged into.
    pub rollups_written: u64,
    /// Rollup rows deleted past `rollup_ms`.
    pub rollups_deleted: u64,
    /// False when the per-call budget ran out: call again soon.
    pub done: bool,
    /// Nothing was old enough to look at: no series was visited.
    pub skipped: bool,
}

/// Why a history operation failed.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// `from` is not before `to`.
    #[error("bad time range: `from` ({from_ms}) must be before `to` ({to_ms})")]
    BadTimeRange {
        /// The requested start.
        from_ms: u64,
        /// The requested end.
        to_ms: u64,
    },
    /// `step` is 0 or splits the range into too many buckets.
    #[error("bad `step` ({step_ms} ms): {reason}")]
    BadStep {
        /// The requested step.
        step_ms: u64,
        /// Why it is refused.
        reason: String,
    },
    /// A retention setting is out of range.
    #[error("bad retention `{key}`: {reason}")]
    BadRetention {
        /// The setting.
        key: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// Every `u32` series id is taken.
    #[error("no series id left for {series}")]
    SeriesIdsExhausted {
        /// The series that could not be registered.
        series: String,
    },
    /// The database failed.
    #[error("history storage: {0}")]
    Database(#[from] Box<redb::Error>),
}

impl HistoryError {
    /// The stable API error code of a request error (`bad_time_range`, `bad_step`), `None` for
    /// a server-side failure.
    pub fn api_code(&self) -> Option<&'static str> {
        match self {
            HistoryError::BadTimeRange { .. } => Some("bad_time_range"),
            HistoryError::BadStep { .. } => Some("bad_step"),
            HistoryError::BadRetention { .. }
            | HistoryError::SeriesIdsExhausted { .. }
            | HistoryError::Database(_) => None,
        }
    }
}

/// Wraps any redb error (they all convert into `redb::Error`).
fn db(err: impl Into<redb::Error>) -> HistoryError {
    HistoryError::Database(Box::new(err.into()))
}

/// Running aggregate shared by queries and rollups.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Agg {
    count: u64,
    min: f64,
    max: f64,
    sum: f64,
    last: f64,
    last_ts: u64,
}

impl Agg {
    fn point(ts: u64, value: f64) -> Self {
        Self {
            count: 1,
            min: value,
            max: value,
            sum: value,
            last: value,
            last_ts: ts,
        }
    }

    fn merge(&mut self, other: &Agg) {
        self.count += other.count;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
        // `>=`: of two parts ending at the same millisecond, the one merged later is the
        // newer write (rollup first, then raw), matching last-wins.
        if other.last_ts >= self.last_ts {
            self.last = other.last;
            self.last_ts = other.last_ts;
        }
    }

    fn bucket(&self, start_ms: u64) -> Bucket {
        Bucket {
            start_ms,
            count: self.count,
            min: self.min,
            max: self.max,
            // count is never 0: every Agg starts from a point or a stored rollup of ≥ 1 point.
            mean: self.sum / self.count.max(1) as f64,
            last: self.last,
        }
    }
}

/// `t` rounded down to a multiple of `step` (`step` > 0).
fn align_down(t: u64, step: u64) -> u64 {
    t - t % step.max(1)
}

#[cfg(test)]
mod tests;
