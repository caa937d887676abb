//! Appending samples: straight into the blocks table, or through the journal.
//!
//! Blocks are keyed by series first, so one commit of samples from many machines lands on as
//! many B-tree leaves, and redb copies every leaf a transaction touches. A commit every few
//! milliseconds then rewrites the same leaves again and again; measured, that made the history
//! insert most of the hub's CPU. The journal takes one commit's rows as a single entry, and
//! every so many commits they are folded into blocks, one block per series for many rows.
//! Journaled rows are as durable as stored ones (same transaction as the acknowledgement) and
//! queries read both.

use foldhash::{HashMap, HashMapExt};

use redb::{ReadableTable, ReadableTableMetadata, Table, WriteTransaction};

use super::blocks;
use super::compact::RAW_FLOOR;
use super::tables::{BLOCKS, JOURNAL, META, SERIES, series_name};
use super::{AppendStats, HistoryError, HistoryRow, RowRef, db};
use crate::twin::TwinKey;
use protocol::MetricName;

/// Fold the journal once it holds this many commits …
pub const FOLD_AFTER_ENTRIES: u64 = 1024;
/// … or this many rows per series (each fold copies about one raw-table leaf per series) …
pub const FOLD_ROWS_PER_SERIES: u64 = 8;
/// … but never fewer than this many rows.
pub const FOLD_AFTER_ROWS: u64 = 50_000;

/// The `history_meta` key that counts the journal's rows.
const JOURNAL_ROWS: &str = "journal_rows";

/// Series ids [`SeriesIds`] keeps at most; past this it learns no more.
pub const SERIES_IDS_KEPT: usize = 4096;

/// Series ids known to be committed, kept from one commit to the next, so a commit looks a
/// series up in the table (and spells its name) only the first time it writes it: at 1,000
/// msg/s the lookups of every commit were 3.5 % of the hub's CPU. Ids learnt in a transaction
/// count only once it committed ([`SeriesIds::committed`]): one that was rolled back may have
/// created series that no longer exist. At most [`SERIES_IDS_KEPT`] are kept (about 0.6 MB);
/// the series past them are looked up as before. It keeps the first it learnt rather than
/// starting over: with 60,000 series (10,000 twins) starting over churned the allocator every
/// few commits for almost no hits.
#[derive(Debug, Default)]
pub struct SeriesIds {
    known: HashMap<TwinKey, HashMap<MetricName, u32>>,
    count: usize,
    learnt: Vec<(TwinKey, MetricName, u32)>,
}

impl SeriesIds {
    /// The transaction that used these ids committed: what it learnt is known from now on.
    pub fn committed(&mut self) {
        for (key, metric, id) in std::mem::take(&mut self.learnt) {
            if self.count >= SERIES_IDS_KEPT {
                break;
            }
            if self
                .known
                .entry(key)
                .or_default()
                .insert(metric, id)
                .is_none()
            {
                self.count += 1;
            }
        }
    }

    /// The transaction was rolled back: forget what it learnt.
    pub fn abandoned(&mut self) {
        self.learnt.clear();
    }

    /// How many ids are known.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// Bytes of one journaled row: series id (u32), timestamp ms (u64), sequence (u32), value (f64),
/// little-endian.
pub(super) const JOURNAL_ROW_BYTES: usize = 24;

/// Stores `rows` in the blocks table inside the caller's write transaction (nothing is
/// committed here).
///
/// A row with the same series, timestamp and sequence as a stored one replaces it (last write
/// wins, see the module header). Non-finite values are skipped and counted, not stored.
pub fn append(txn: &WriteTransaction, rows: &[HistoryRow]) -> Result<AppendStats, HistoryError> {
    let mut stats = AppendStats::default();
    if rows.is_empty() {
        return Ok(stats);
    }
    let mut ids = SeriesIds::default();
    let resolved = resolve(
        txn,
        rows.iter().map(HistoryRow::as_ref),
        &mut ids,
        &mut stats,
    )?;
    lower_raw_floor(txn, &resolved)?;
    let mut blocks = txn.open_table(BLOCKS).map_err(db)?;
    blocks::store(&mut blocks, resolved, &mut stats)?;
    Ok(stats)
}

/// Stores `rows` as one journal entry inside the caller's write transaction, and folds the
/// journal into the blocks table when it holds [`FOLD_AFTER_ENTRIES`] commits or
/// [`FOLD_ROWS_PER_SERIES`] rows per series of the history (at least [`FOLD_AFTER_ROWS`]). `appended` and `replaced` count the rows folded by this call (as
/// [`append`] would count them); `journaled` the rows this call added to the journal. `ids`
/// are the series ids committed before; call [`SeriesIds::committed`] or
/// [`SeriesIds::abandoned`] once the transaction's fate is known.
pub fn append_journaled<'a>(
    txn: &WriteTransaction,
    rows: impl IntoIterator<Item = RowRef<'a>>,
    ids: &mut SeriesIds,
) -> Result<AppendStats, HistoryError> {
    let mut stats = AppendStats::default();
    let resolved = resolve(txn, rows, ids, &mut stats)?;
    lower_raw_floor(txn, &resolved)?;
    let mut journal = txn.open_table(JOURNAL).map_err(db)?;
    if !resolved.is_empty() {
        let next = match journal.last().map_err(db)? {
            Some((key, _)) => key.value() + 1,
            None => 0,
        };
        let mut entry = Vec::with_capacity(resolved.len() * JOURNAL_ROW_BYTES);
        for row in &resolved {
            encode_row(row, &mut entry);
        }
        journal.insert(next, entry.as_slice()).map_err(db)?;
        stats.journaled = resolved.len() as u64;
    }
    let entries = journal.len().map_err(db)?;
    if entries == 0 {
        return Ok(stats);
    }
    let mut meta = txn.open_table(META).map_err(db)?;
    let waiting = match meta.get(JOURNAL_ROWS).map_err(db)? {
        Some(counted) => counted.value() + stats.journaled,
        None => {
            let mut rows = 0;
            for entry in journal.iter().map_err(db)? {
                rows += (entry.map_err(db)?.1.value().len() / JOURNAL_ROW_BYTES) as u64;
            }
            rows
        }
    };
    let series = txn.open_table(SERIES).map_err(db)?.len().map_err(db)?;
    let fold_after = FOLD_AFTER_ROWS.max(FOLD_ROWS_PER_SERIES.saturating_mul(series));
    if entries < FOLD_AFTER_ENTRIES && waiting < fold_after {
        meta.insert(JOURNAL_ROWS, waiting).map_err(db)?;
        return Ok(stats);
    }
    drop(meta);
    fold_into(&mut journal, txn, &mut stats)?;
    Ok(stats)
}

/// Moves every journaled row into the blocks table (inside the caller's transaction).
pub fn fold_journal(txn: &WriteTransaction) -> Result<AppendStats, HistoryError> {
    let mut stats = AppendStats::default();
    let mut journal = txn.open_table(JOURNAL).map_err(db)?;
    fold_into(&mut journal, txn, &mut stats)?;
    Ok(stats)
}

fn fold_into(
    journal: &mut Table<'_, u64, &[u8]>,
    txn: &WriteTransaction,
    stats: &mut AppendStats,
) -> Result<(), HistoryError> {
    let mut rows = Vec::new();
    for entry in journal.extract_if(|_, _| true).map_err(db)? {
        let (_, bytes) = entry.map_err(db)?;
        rows.extend(decode_rows(bytes.value()));
    }
    txn.open_table(META)
        .map_err(db)?
        .insert(JOURNAL_ROWS, 0)
        .map_err(db)?;
    let mut blocks = txn.open_table(BLOCKS).map_err(db)?;
    blocks::store(&mut blocks, rows, stats)
}

/// Keeps compaction's raw floor at or below every stored row (see `compact`).
fn lower_raw_floor(txn: &WriteTransaction, rows: &[SeriesRow]) -> Result<(), HistoryError> {
    let Some(oldest) = rows.iter().map(|row| row.timestamp_ms).min() else {
        return Ok(());
    };
    let mut meta = txn.open_table(META).map_err(db)?;
    super::compact::lower(&mut meta, RAW_FLOOR, oldest)
}

/// A row with its series id resolved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct SeriesRow {
    pub series: u32,
    pub timestamp_ms: u64,
    pub seq: u32,
    pub value: f64,
}

fn encode_row(row: &SeriesRow, out: &mut Vec<u8>) {
    out.extend_from_slice(&row.series.to_le_bytes());
    out.extend_from_slice(&row.timestamp_ms.to_le_bytes());
    out.extend_from_slice(&row.seq.to_le_bytes());
    out.extend_from_slice(&row.value.to_le_bytes());
}

/// The rows of one journal entry. A trailing partial row (which this code never writes) is
/// ignored rather than misread.
pub(super) fn decode_rows(bytes: &[u8]) -> impl Iterator<Item = SeriesRow> + '_ {
    bytes.chunks_exact(JOURNAL_ROW_BYTES).map(|row| {
        let (series, rest) = row.split_at(4);
        let (timestamp, rest) = rest.split_at(8);
        let (seq, value) = rest.split_at(4);
        let word = |b: &[u8]| {
            let mut a = [0; 8];
            a.copy_from_slice(b);
            a
        };
        let half = |b: &[u8]| {
            let mut a = [0; 4];
            a.copy_from_slice(b);
            a
        };
        SeriesRow {
            series: u32::from_le_bytes(half(series)),
            timestamp_ms: u64::from_le_bytes(word(timestamp)),
            seq: u32::from_le_bytes(half(seq)),
            value: f64::from_le_bytes(word(value)),
        }
    })
}

/// Series ids for `rows`, registering new series; non-finite values are counted and left out.
fn resolve<'a>(
    txn: &WriteTransaction,
    rows: impl IntoIterator<Item = RowRef<'a>>,
    known: &mut SeriesIds,
    stats: &mut AppendStats,
) -> Result<Vec<SeriesRow>, HistoryError> {
    let mut series = txn.open_table(SERIES).map_err(db)?;
    // A batch usually holds a few metrics of a few machines many times over: what is not known
    // from earlier commits is looked up in the table once per call, and its name spelt only then.
    let mut ids: HashMap<(&TwinKey, &MetricName), u32> = HashMap::new();
    let SeriesIds {
        known: committed,
        count,
        learnt,
    } = known;
    // Rows come a sample at a time, several metrics of one machine behind each other: the
    // machine's committed ids are looked up once for all of them (hashing the key per row was
    // 1.8 % of the hub at 10,000 msg/s).
    let mut machine: Option<(&TwinKey, Option<&HashMap<MetricName, u32>>)> = None;
    let rows = rows.into_iter();
    let mut out = Vec::with_capacity(rows.size_hint().0);
    for row in rows {
        if !row.value.is_finite() {
            stats.skipped_non_finite += 1;
            continue;
        }
        let of_machine = match machine {
            Some((key, of_machine)) if std::ptr::eq(key, row.key) => of_machine,
            _ => {
                let of_machine = committed.get(row.key);
                machine = Some((row.key, of_machine));
                of_machine
            }
        };
        let id = match of_machine
            .and_then(|of_machine| of_machine.get(row.metric).copied())
            .or_else(|| ids.get(&(row.key, row.metric)).copied())
        {
            Some(id) => id,
            None => {
                let name = series_name(row.key, row.metric);
                let stored = series.get(name.as_str()).map_err(db)?.map(|g| g.value());
                let id = match stored {
                    Some(id) => id,
                    None => {
                        // Ids are dense and never deleted, so the table's length is the next one.
                        let next = u32::try_from(series.len().map_err(db)?).map_err(|_| {
                            HistoryError::SeriesIdsExhausted {
                                series: name.clone(),
                            }
                        })?;
                        series.insert(name.as_str(), next).map_err(db)?;
                        next
                    }
                };
                ids.insert((row.key, row.metric), id);
                if *count + learnt.len() < SERIES_IDS_KEPT {
                    learnt.push((row.key.clone(), row.metric.clone(), id));
                }
                id
            }
        };
        out.push(SeriesRow {
            series: id,
            timestamp_ms: row.timestamp_ms,
            seq: row.seq,
            value: row.value,
        });
    }
    Ok(out)
}
