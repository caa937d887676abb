//! Reading history: raw points, aggregated buckets, and the list of a twin's series.

use std::collections::{BTreeMap, HashSet};

use protocol::MetricName;
use redb::{ReadTransaction, ReadableTable};

use super::blocks;
use super::tables::{BLOCKS, JOURNAL, ROLLUP, SERIES, open_read, series_name, twin_prefix};
use super::write::{SeriesRow, decode_rows};
use super::{
    Agg, Bucket, HistoryError, MAX_BUCKETS, MAX_POINTS, TARGET_BUCKETS, TimeRange, align_down, db,
};
use crate::twin::TwinKey;

/// Steps [`default_step`] chooses from, ms. Everything from a minute up is a multiple of the
/// default rollup step, so a rollup row never straddles two buckets.
const NICE_STEPS: [u64; 27] = [
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 15_000, 30_000, 60_000,
    120_000, 300_000, 600_000, 900_000, 1_800_000, 3_600_000, 7_200_000, 10_800_000, 21_600_000,
    43_200_000, 86_400_000,
];

/// The smallest "round" step that splits `range` into at most [`TARGET_BUCKETS`] buckets.
pub fn default_step(range: TimeRange) -> u64 {
    let span = range.span_ms().max(1);
    NICE_STEPS
        .iter()
        .copied()
        .find(|step| span.div_ceil(*step) <= TARGET_BUCKETS)
        // Beyond 500 days: whole days.
        .unwrap_or_else(|| span.div_ceil(TARGET_BUCKETS).div_ceil(86_400_000) * 86_400_000)
}

/// Checks that `range` is a range and `step_ms` splits it into at most [`MAX_BUCKETS`] buckets,
/// before anything is read from either store.
pub fn check_step(range: TimeRange, step_ms: u64) -> Result<(), HistoryError> {
    validate(range, Some(step_ms))
}

/// Checks a query's range and step before touching storage.
fn validate(range: TimeRange, step_ms: Option<u64>) -> Result<(), HistoryError> {
    range.validate()?;
    if let Some(step_ms) = step_ms {
        if step_ms == 0 {
            return Err(HistoryError::BadStep {
                step_ms,
                reason: "must be at least 1 ms".into(),
            });
        }
        // Aligned buckets: the first may start before `from`, so count from its start.
        let buckets = (range.to_ms - align_down(range.from_ms, step_ms)).div_ceil(step_ms);
        if buckets > MAX_BUCKETS {
            return Err(HistoryError::BadStep {
                step_ms,
                reason: format!(
                    "splits the {} ms range into {buckets} buckets, at most {MAX_BUCKETS} allowed",
                    range.span_ms()
                ),
            });
        }
    }
    Ok(())
}

/// History of one metric of one twin within `range`, oldest first.
///
/// Without a step: every stored point as a bucket of count 1, at most [`MAX_POINTS`] (continue
/// from the last `start_ms + 1`). Where the range reaches into compacted history, a rollup row
/// stands for its step and carries its own count. With a step: buckets aligned to multiples
/// of `step_ms` since the epoch; empty buckets are omitted. Rollup rows count in the bucket
/// that holds their start, so aggregates are exact when the step is a multiple of the rollup
/// step (as every [`default_step`] from one minute up is).
///
/// Rows are selected by timestamp (raw) or bucket start (rollup) within `[from_ms, to_ms)`.
pub fn query(
    txn: &ReadTransaction,
    key: &TwinKey,
    metric: &MetricName,
    range: TimeRange,
    step_ms: Option<u64>,
) -> Result<Vec<Bucket>, HistoryError> {
    validate(range, step_ms)?;
    let Some(series) = open_read(txn, SERIES)? else {
        return Ok(Vec::new());
    };
    let Some(id) = series
        .get(series_name(key, metric).as_str())
        .map_err(db)?
        .map(|g| g.value())
    else {
        return Ok(Vec::new());
    };
    let bounds = (id, range.from_ms)..(id, range.to_ms);
    // Without a step nothing past MAX_POINTS is returned, so nothing past it is read.
    let cap = if step_ms.is_some() {
        usize::MAX
    } else {
        MAX_POINTS
    };

    // Rollups hold the older part, raw rows the newer; each sample is in exactly one table,
    // so combining them double counts nothing.
    let mut rollups = Vec::new();
    if let Some(table) = open_read(txn, ROLLUP)? {
        for entry in table.range(bounds.clone()).map_err(db)?.take(cap) {
            let (k, v) = entry.map_err(db)?;
            rollups.push((k.value().1, Agg::from_stored(v.value())));
        }
    }
    let blocks = open_read(txn, BLOCKS)?;
    // Journaled rows are the newest; one with the key of a stored row replaces it (last wins).
    let journaled = journal_rows(txn, id, range)?;
    let superseded: HashSet<(u64, u32)> = journaled
        .iter()
        .map(|row| (row.timestamp_ms, row.seq))
        .collect();
    let mut gathered = match step_ms {
        None => Gather::Points(Vec::new()),
        Some(step) => Gather::Buckets(step, BTreeMap::new()),
    };
    for (t, agg) in &rollups {
        gathered.add(*t, agg);
    }
    if let Some(blocks) = &blocks {
        let mut read = 0;
        blocks::for_each_in(blocks, id, range.from_ms, range.to_ms, |point| {
            read += 1;
            if !superseded.contains(&(point.timestamp_ms, point.seq)) {
                let t = point.timestamp_ms;
                gathered.add(t, &Agg::point(t, point.value));
            }
            Ok(read < cap)
        })?;
    }
    for row in &journaled {
        let t = row.timestamp_ms;
        gathered.add(t, &Agg::point(t, row.value));
    }
    Ok(gathered.finish())
}

/// What a query collects: points, or buckets of a step.
enum Gather {
    Points(Vec<Bucket>),
    Buckets(u64, BTreeMap<u64, Agg>),
}

impl Gather {
    fn add(&mut self, t: u64, agg: &Agg) {
        match self {
            Gather::Points(points) => points.push(agg.bucket(t)),
            Gather::Buckets(step, buckets) => {
                buckets
                    .entry(align_down(t, *step))
                    .and_modify(|b| b.merge(agg))
                    .or_insert(*agg);
            }
        }
    }

    fn finish(self) -> Vec<Bucket> {
        match self {
            Gather::Points(mut points) => {
                // Usually already ordered (rollups are older); a partial compaction can
                // interleave.
                points.sort_by_key(|b| b.start_ms);
                points.truncate(MAX_POINTS);
                points
            }
            Gather::Buckets(_, buckets) => buckets.iter().map(|(t, agg)| agg.bucket(*t)).collect(),
        }
    }
}

/// The journaled rows of series `id` within `range`, by timestamp and sequence; of two with one
/// key, the later write.
fn journal_rows(
    txn: &ReadTransaction,
    id: u32,
    range: TimeRange,
) -> Result<Vec<SeriesRow>, HistoryError> {
    let Some(journal) = open_read(txn, JOURNAL)? else {
        return Ok(Vec::new());
    };
    let mut latest: BTreeMap<(u64, u32), SeriesRow> = BTreeMap::new();
    for entry in journal.iter().map_err(db)? {
        let (_, bytes) = entry.map_err(db)?;
        for row in decode_rows(bytes.value()) {
            if row.series == id && (range.from_ms..range.to_ms).contains(&row.timestamp_ms) {
                latest.insert((row.timestamp_ms, row.seq), row);
            }
        }
    }
    Ok(latest.into_values().collect())
}

/// Series ids with rows waiting in the journal.
fn journaled_series(txn: &ReadTransaction) -> Result<HashSet<u32>, HistoryError> {
    let mut ids = HashSet::new();
    if let Some(journal) = open_read(txn, JOURNAL)? {
        for entry in journal.iter().map_err(db)? {
            let (_, bytes) = entry.map_err(db)?;
            ids.extend(decode_rows(bytes.value()).map(|row| row.series));
        }
    }
    Ok(ids)
}

/// The metrics of `key` that have stored history (raw, journaled or rolled up), sorted.
pub fn series(txn: &ReadTransaction, key: &TwinKey) -> Result<Vec<String>, HistoryError> {
    let Some(series) = open_read(txn, SERIES)? else {
        return Ok(Vec::new());
    };
    let blocks = open_read(txn, BLOCKS)?;
    let rollup = open_read(txn, ROLLUP)?;
    let journaled = journaled_series(txn)?;
    let prefix = twin_prefix(key);
    // '0' follows '/' in ASCII: the range holds exactly the names starting with the prefix.
    let end = format!("{}/{}0", key.lab, key.machine);
    let mut out = Vec::new();
    for entry in series
        .range::<&str>(prefix.as_str()..end.as_str())
        .map_err(db)?
    {
        let (name, id) = entry.map_err(db)?;
        let id = id.value();
        let all = (id, 0)..=(id, u64::MAX);
        // A series whose data all expired keeps its id but is no longer listed.
        let has_raw = match &blocks {
            Some(t) => blocks::oldest(t, id)? != u64::MAX,
            None => false,
        };
        let has_rollup = match &rollup {
            Some(t) => t.range(all.clone()).map_err(db)?.next().is_some(),
            None => false,
        };
        if has_raw || has_rollup || journaled.contains(&id) {
            let name = name.value();
            out.push(
                name.strip_prefix(prefix.as_str())
                    .unwrap_or(name)
                    .to_owned(),
            );
        }
    }
    Ok(out)
}
