//! Raw history in blocks: the samples of one series in time order, many to a table row.
//!
//! One B-tree insert per sample was a tenth of the hub's CPU at 10,000 msg/s (the journal's
//! fold, profiled): a row cost as much to find its place as to store. A block holds up to
//! [`BLOCK_ROWS`] samples of one series, so a fold writes about one row per series instead of
//! one per sample.
//!
//! A block is keyed by its series and its *newest* sample, so the blocks a new run of samples
//! could overlap are the ones at or after the run's oldest key: in the usual case (new samples
//! are newer than everything stored) that range is empty and the run becomes a block of its
//! own, or joins the series' last block while that has room. A late or replayed sample is
//! merged into the block it falls in, last write winning as before.
//!
//! Invariants: within a block samples are sorted by `(timestamp, sequence)` and unique; the
//! blocks of one series do not overlap, so reading them in key order reads samples in order.

use redb::{ReadOnlyTable, ReadableTable, Table, WriteTransaction};

use super::tables::{BLOCKS, RAW};
use super::write::SeriesRow;
use super::{AppendStats, HistoryError, db};

/// Most samples one block holds (20 bytes each).
pub const BLOCK_ROWS: usize = 128;

/// Bytes of one sample in a block: timestamp ms (u64), sequence (u32), value (f64), LE.
const POINT_BYTES: usize = 20;

/// `(series id, newest timestamp ms, newest sequence)`.
pub(super) type BlockKey = (u32, u64, u32);

/// The blocks table inside a write transaction.
pub(super) type BlockTable<'t> = Table<'t, BlockKey, &'static [u8]>;

/// One sample of a series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Point {
    pub timestamp_ms: u64,
    pub seq: u32,
    pub value: f64,
}

impl Point {
    fn key(&self) -> (u64, u32) {
        (self.timestamp_ms, self.seq)
    }
}

impl From<&SeriesRow> for Point {
    fn from(row: &SeriesRow) -> Self {
        Self {
            timestamp_ms: row.timestamp_ms,
            seq: row.seq,
            value: row.value,
        }
    }
}

fn encode(points: &[Point]) -> Vec<u8> {
    let mut out = Vec::with_capacity(points.len() * POINT_BYTES);
    for point in points {
        out.extend_from_slice(&point.timestamp_ms.to_le_bytes());
        out.extend_from_slice(&point.seq.to_le_bytes());
        out.extend_from_slice(&point.value.to_le_bytes());
    }
    out
}

/// The samples of a block; a trailing partial sample (never written) is ignored.
pub(super) fn decode(bytes: &[u8]) -> impl DoubleEndedIterator<Item = Point> + '_ {
    bytes.chunks_exact(POINT_BYTES).map(|chunk| {
        let mut ts = [0; 8];
        ts.copy_from_slice(&chunk[..8]);
        let mut seq = [0; 4];
        seq.copy_from_slice(&chunk[8..12]);
        let mut value = [0; 8];
        value.copy_from_slice(&chunk[12..]);
        Point {
            timestamp_ms: u64::from_le_bytes(ts),
            seq: u32::from_le_bytes(seq),
            value: f64::from_le_bytes(value),
        }
    })
}

fn rows_in(bytes: &[u8]) -> usize {
    bytes.len() / POINT_BYTES
}

/// Stores `rows` (any series, any order) in the blocks table. Of two rows with one key the
/// later in `rows` wins and the earlier counts as replaced, as a stored row it replaces does.
pub(super) fn store(
    blocks: &mut BlockTable<'_>,
    mut rows: Vec<SeriesRow>,
    stats: &mut AppendStats,
) -> Result<(), HistoryError> {
    // Stable: of two rows with one key, the later write stays last.
    rows.sort_by_key(|row| (row.series, row.timestamp_ms, row.seq));
    let mut run: Vec<Point> = Vec::new();
    let mut start = 0;
    while start < rows.len() {
        let series = rows[start].series;
        let end = start + rows[start..].partition_point(|row| row.series == series);
        run.clear();
        for row in &rows[start..end] {
            match run.last_mut() {
                Some(last) if last.key() == (row.timestamp_ms, row.seq) => {
                    *last = row.into();
                    stats.replaced += 1;
                }
                _ => run.push(row.into()),
            }
        }
        merge_series(blocks, series, &run, stats)?;
        start = end;
    }
    Ok(())
}

/// Stores `run` (one series, sorted, unique keys) with the blocks it overlaps, and with the
/// series' block just before it while the two fit in one block.
fn merge_series(
    blocks: &mut BlockTable<'_>,
    series: u32,
    run: &[Point],
    stats: &mut AppendStats,
) -> Result<(), HistoryError> {
    let (Some(first), Some(last)) = (run.first(), run.last()) else {
        return Ok(());
    };
    let mut stored: Vec<Point> = Vec::new();
    let mut replaced_blocks: Vec<BlockKey> = Vec::new();
    let before = (series, first.timestamp_ms, first.seq);
    if let Some(entry) = blocks
        .range((series, 0, 0)..before)
        .map_err(db)?
        .next_back()
    {
        let (key, bytes) = entry.map_err(db)?;
        let bytes = bytes.value();
        if rows_in(bytes) + run.len() <= BLOCK_ROWS {
            stored.extend(decode(bytes));
            replaced_blocks.push(key.value());
        }
    }
    for entry in blocks
        .range(before..=(series, u64::MAX, u32::MAX))
        .map_err(db)?
    {
        let (key, bytes) = entry.map_err(db)?;
        let bytes = bytes.value();
        match decode(bytes).next() {
            Some(oldest) if oldest.key() <= last.key() => {
                stored.extend(decode(bytes));
                replaced_blocks.push(key.value());
            }
            _ => break,
        }
    }
    for key in &replaced_blocks {
        blocks.remove(key).map_err(db)?;
    }

    let merged = if stored.is_empty() {
        stats.appended += run.len() as u64;
        std::borrow::Cow::Borrowed(run)
    } else {
        std::borrow::Cow::Owned(merge(&stored, run, stats))
    };
    for block in merged.chunks(BLOCK_ROWS) {
        if let Some(newest) = block.last() {
            let key = (series, newest.timestamp_ms, newest.seq);
            blocks.insert(key, encode(block).as_slice()).map_err(db)?;
        }
    }
    Ok(())
}

/// `stored` and `run` (each sorted, unique keys) as one sorted list; `run` wins a shared key.
fn merge(stored: &[Point], run: &[Point], stats: &mut AppendStats) -> Vec<Point> {
    let mut out = Vec::with_capacity(stored.len() + run.len());
    let (mut old, mut new) = (stored.iter().peekable(), run.iter().peekable());
    loop {
        match (old.peek().copied(), new.peek().copied()) {
            (Some(o), Some(n)) if o.key() < n.key() => {
                out.push(*o);
                old.next();
            }
            (Some(o), Some(n)) if o.key() == n.key() => {
                out.push(*n);
                old.next();
                new.next();
                stats.replaced += 1;
            }
            (_, Some(n)) => {
                out.push(*n);
                new.next();
                stats.appended += 1;
            }
            (Some(o), None) => {
                out.push(*o);
                old.next();
            }
            (None, None) => return out,
        }
    }
}

/// Calls `visit` with the stored samples of `series` within `[from_ms, to_ms)`, oldest first,
/// for at most `cap` of them; stops early when `visit` returns `false`.
pub(super) fn for_each_in(
    blocks: &ReadOnlyTable<BlockKey, &'static [u8]>,
    series: u32,
    from_ms: u64,
    to_ms: u64,
    mut visit: impl FnMut(Point) -> Result<bool, HistoryError>,
) -> Result<(), HistoryError> {
    for entry in blocks
        .range((series, from_ms, 0)..=(series, u64::MAX, u32::MAX))
        .map_err(db)?
    {
        let (_, bytes) = entry.map_err(db)?;
        for point in decode(bytes.value()) {
            if point.timestamp_ms < from_ms {
                continue;
            }
            if point.timestamp_ms >= to_ms || !visit(point)? {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Removes the oldest samples of `series` older than `cutoff_ms`, at most `budget` of them,
/// and returns them oldest first.
pub(super) fn take_older(
    blocks: &mut BlockTable<'_>,
    series: u32,
    cutoff_ms: u64,
    budget: usize,
) -> Result<Vec<Point>, HistoryError> {
    // Read first, then change: a table cannot be written while a range over it is open.
    let mut visited: Vec<(BlockKey, Vec<Point>)> = Vec::new();
    let mut old_rows = 0;
    for entry in blocks
        .range((series, 0, 0)..=(series, u64::MAX, u32::MAX))
        .map_err(db)?
    {
        if old_rows >= budget {
            break;
        }
        let (key, bytes) = entry.map_err(db)?;
        let points: Vec<Point> = decode(bytes.value()).collect();
        let old = points.partition_point(|p| p.timestamp_ms < cutoff_ms);
        if old == 0 {
            break;
        }
        old_rows += old;
        let whole = old == points.len();
        visited.push((key.value(), points));
        if !whole {
            break;
        }
    }
    let mut taken = Vec::new();
    for (key, points) in visited {
        let old = points.partition_point(|p| p.timestamp_ms < cutoff_ms);
        let take = old.min(budget - taken.len());
        taken.extend_from_slice(&points[..take]);
        if take == points.len() {
            blocks.remove(&key).map_err(db)?;
        } else {
            // The newest sample stays, so the key does too.
            blocks
                .insert(&key, encode(&points[take..]).as_slice())
                .map_err(db)?;
        }
        if taken.len() == budget {
            break;
        }
    }
    Ok(taken)
}

/// The timestamp of the oldest stored sample of `series`, `u64::MAX` without one.
pub(super) fn oldest<T: ReadableTable<BlockKey, &'static [u8]>>(
    blocks: &T,
    series: u32,
) -> Result<u64, HistoryError> {
    let first = blocks
        .range((series, 0, 0)..=(series, u64::MAX, u32::MAX))
        .map_err(db)?
        .next();
    Ok(match first {
        Some(entry) => decode(entry.map_err(db)?.1.value())
            .next()
            .map_or(u64::MAX, |p| p.timestamp_ms),
        None => u64::MAX,
    })
}

/// Moves the rows of the one-row-per-sample table that hubs before blocks wrote into blocks
/// and deletes that table. Returns how many samples moved (0 on every later start).
pub fn migrate_rows_per_sample(txn: &WriteTransaction) -> Result<u64, HistoryError> {
    let mut moved = 0;
    {
        let raw = txn.open_table(RAW).map_err(db)?;
        let mut blocks = txn.open_table(BLOCKS).map_err(db)?;
        let mut stats = AppendStats::default();
        let mut batch: Vec<SeriesRow> = Vec::new();
        for entry in raw.iter().map_err(db)? {
            let (key, value) = entry.map_err(db)?;
            let (series, timestamp_ms, seq) = key.value();
            // One series at a time bounds the memory to the longest series.
            if batch.last().is_some_and(|row| row.series != series) {
                moved += batch.len() as u64;
                store(&mut blocks, std::mem::take(&mut batch), &mut stats)?;
            }
            batch.push(SeriesRow {
                series,
                timestamp_ms,
                seq,
                value: value.value(),
            });
        }
        moved += batch.len() as u64;
        store(&mut blocks, batch, &mut stats)?;
    }
    txn.delete_table(RAW).map_err(db)?;
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use redb::{Database, ReadableDatabase, ReadableTableMetadata};

    use super::*;

    fn database() -> (tempfile::TempDir, Database) {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Database::create(dir.path().join("hub.redb")).expect("create db");
        (dir, db)
    }

    fn row(series: u32, timestamp_ms: u64, seq: u32, value: f64) -> SeriesRow {
        SeriesRow {
            series,
            timestamp_ms,
            seq,
            value,
        }
    }

    fn store_rows(db: &Database, rows: Vec<SeriesRow>) -> AppendStats {
        let txn = db.begin_write().expect("begin write");
        let mut stats = AppendStats::default();
        {
            let mut blocks = txn.open_table(BLOCKS).expect("open");
            store(&mut blocks, rows, &mut stats).expect("store");
        }
        txn.commit().expect("commit");
        stats
    }

    /// Every block of every series, checking the invariants on the way.
    fn blocks_of(db: &Database) -> BTreeMap<u32, Vec<Vec<Point>>> {
        let txn = db.begin_read().expect("read");
        let table = txn.open_table(BLOCKS).expect("open");
        let mut out: BTreeMap<u32, Vec<Vec<Point>>> = BTreeMap::new();
        for entry in table.iter().expect("iter") {
            let (key, bytes) = entry.expect("entry");
            let (series, ts, seq) = key.value();
            let points: Vec<Point> = decode(bytes.value()).collect();
            assert!(
                !points.is_empty() && points.len() <= BLOCK_ROWS,
                "{points:?}"
            );
            assert!(
                points.windows(2).all(|w| w[0].key() < w[1].key()),
                "sorted, unique"
            );
            assert_eq!(
                points.last().map(Point::key),
                Some((ts, seq)),
                "keyed by newest"
            );
            let series_blocks = out.entry(series).or_default();
            if let Some(previous) = series_blocks.last() {
                assert!(previous.last().map(Point::key) < points.first().map(Point::key));
            }
            series_blocks.push(points);
        }
        out
    }

    fn points_of(db: &Database, series: u32) -> Vec<(u64, u32, f64)> {
        let txn = db.begin_read().expect("read");
        let table = txn.open_table(BLOCKS).expect("open");
        let mut out = Vec::new();
        for_each_in(&table, series, 0, u64::MAX, |p| {
            out.push((p.timestamp_ms, p.seq, p.value));
            Ok(true)
        })
        .expect("read");
        out
    }

    #[test]
    fn samples_one_at_a_time_fill_blocks_instead_of_making_one_each() {
        let (_dir, db) = database();
        for t in 0..1000u64 {
            let stats = store_rows(&db, vec![row(3, t, 0, t as f64)]);
            assert_eq!((stats.appended, stats.replaced), (1, 0));
        }
        let blocks = blocks_of(&db);
        assert_eq!(blocks[&3].len(), 1000_usize.div_ceil(BLOCK_ROWS));
        let points = points_of(&db, 3);
        assert_eq!(points.len(), 1000);
        assert!(points.iter().enumerate().all(|(i, p)| p.0 == i as u64));
    }

    #[test]
    fn late_and_replayed_samples_land_inside_the_blocks_they_belong_to() {
        let (_dir, db) = database();
        let even: Vec<SeriesRow> = (0..600u64).map(|t| row(1, 2 * t, 0, 1.0)).collect();
        assert_eq!(store_rows(&db, even).appended, 600);
        // A replay of some stored samples, with the odd ones in between that came late.
        let mut late: Vec<SeriesRow> = (100..300u64).map(|t| row(1, 2 * t + 1, 0, 2.0)).collect();
        late.extend((150..160u64).map(|t| row(1, 2 * t, 0, 3.0)));
        let stats = store_rows(&db, late);
        assert_eq!((stats.appended, stats.replaced), (200, 10));
        let points = points_of(&db, 1);
        assert_eq!(points.len(), 800);
        assert!(points.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(points.iter().filter(|p| p.2 == 3.0).count(), 10);
        blocks_of(&db);
    }

    #[test]
    fn the_later_of_two_rows_with_one_key_in_a_batch_wins() {
        let (_dir, db) = database();
        let stats = store_rows(
            &db,
            vec![row(1, 5, 7, 1.0), row(1, 5, 8, 2.0), row(1, 5, 7, 3.0)],
        );
        assert_eq!((stats.appended, stats.replaced), (2, 1));
        assert_eq!(points_of(&db, 1), [(5, 7, 3.0), (5, 8, 2.0)]);
    }

    /// Random batches of several series, in and out of order with replays, against a map.
    #[test]
    fn any_order_of_writes_reads_back_as_a_map_of_last_writes() {
        let (_dir, db) = database();
        let mut model: BTreeMap<(u32, u64, u32), f64> = BTreeMap::new();
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |below: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % below
        };
        for batch in 0..60u64 {
            let mut rows = Vec::new();
            for _ in 0..next(400) {
                // Mostly new samples, some far back in time.
                let t = if next(5) == 0 {
                    next(batch * 50 + 1)
                } else {
                    batch * 50 + next(50)
                };
                let r = row(next(3) as u32, t, next(2) as u32, next(1000) as f64);
                rows.push(r);
            }
            let mut expected = AppendStats::default();
            for r in &rows {
                match model.insert((r.series, r.timestamp_ms, r.seq), r.value) {
                    Some(_) => expected.replaced += 1,
                    None => expected.appended += 1,
                }
            }
            assert_eq!(store_rows(&db, rows), expected, "batch {batch}");
        }
        blocks_of(&db);
        for series in 0..3 {
            let want: Vec<(u64, u32, f64)> = model
                .range((series, 0, 0)..=(series, u64::MAX, u32::MAX))
                .map(|(k, v)| (k.1, k.2, *v))
                .collect();
            assert_eq!(points_of(&db, series), want, "series {series}");
        }
    }

    #[test]
    fn taking_old_samples_splits_a_block_and_keeps_its_newest() {
        let (_dir, db) = database();
        store_rows(&db, (0..300u64).map(|t| row(2, t, 0, t as f64)).collect());
        let txn = db.begin_write().expect("begin write");
        {
            let mut blocks = txn.open_table(BLOCKS).expect("open");
            let taken = take_older(&mut blocks, 2, 200, 150).expect("take");
            assert_eq!(taken.len(), 150, "the budget bounds it");
            assert!(
                taken
                    .iter()
                    .enumerate()
                    .all(|(i, p)| p.timestamp_ms == i as u64)
            );
            let rest = take_older(&mut blocks, 2, 200, 1000).expect("take");
            assert_eq!(rest.first().map(|p| p.timestamp_ms), Some(150));
            assert_eq!(rest.len(), 50, "only what is older than the cut-off");
            assert_eq!(oldest(&blocks, 2).expect("oldest"), 200);
            assert_eq!(oldest(&blocks, 9).expect("oldest"), u64::MAX);
        }
        txn.commit().expect("commit");
        assert_eq!(points_of(&db, 2).len(), 100);
        blocks_of(&db);
    }

    #[test]
    fn rows_per_sample_from_an_older_hub_move_into_blocks_once() {
        let (_dir, db) = database();
        let txn = db.begin_write().expect("begin write");
        {
            let mut raw = txn.open_table(RAW).expect("open");
            for series in 0..3u32 {
                for t in 0..500u64 {
                    raw.insert((series, t, 1), t as f64 + f64::from(series))
                        .expect("insert");
                }
            }
        }
        txn.commit().expect("commit");

        let txn = db.begin_write().expect("begin write");
        assert_eq!(migrate_rows_per_sample(&txn).expect("migrate"), 1500);
        txn.commit().expect("commit");
        for series in 0..3u32 {
            let points = points_of(&db, series);
            assert_eq!(points.len(), 500);
            assert_eq!(points[499], (499, 1, 499.0 + f64::from(series)));
        }
        let txn = db.begin_read().expect("read");
        assert!(matches!(
            txn.open_table(RAW),
            Err(redb::TableError::TableDoesNotExist(_))
        ));
        drop(txn);

        let txn = db.begin_write().expect("begin write");
        assert_eq!(migrate_rows_per_sample(&txn).expect("again"), 0);
        txn.commit().expect("commit");
        let txn = db.begin_read().expect("read");
        assert_eq!(
            txn.open_table(BLOCKS).expect("open").len().expect("len"),
            12
        );
    }
}
