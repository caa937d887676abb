//! Table definitions and the series-name encoding (layout documented in the module header).

use protocol::MetricName;
use redb::{ReadOnlyTable, ReadTransaction, TableDefinition, TableError, WriteTransaction};

use super::{Agg, HistoryError, db};
use crate::twin::TwinKey;

/// `"lab/machine/metric"` → series id.
pub(super) const SERIES: TableDefinition<&str, u32> = TableDefinition::new("history_series");
/// `(series id, newest timestamp ms, newest sample sequence)` → up to `BLOCK_ROWS` samples of
/// that series, 20 bytes each (see `blocks`). The sequence tells apart samples that share a
/// millisecond (a fast node); a replay of the same sample lands on the same key.
pub(super) const BLOCKS: TableDefinition<(u32, u64, u32), &[u8]> =
    TableDefinition::new("history_blocks");
/// What hubs before blocks kept instead: one row per sample, `(series id, timestamp ms,
/// sequence)` → value. Only read once, to move its rows into `BLOCKS` (`blocks`).
pub(super) const RAW: TableDefinition<(u32, u64, u32), f64> = TableDefinition::new("history_raw");
/// Commit number → that commit's rows, 24 bytes each (see `write`), until they are folded into
/// `BLOCKS`.
pub(super) const JOURNAL: TableDefinition<u64, &[u8]> = TableDefinition::new("history_journal");
/// `(series id, bucket start ms)` → `(count, min, max, sum, last, last timestamp ms)`.
pub(super) const ROLLUP: TableDefinition<(u32, u64), RollupValue> =
    TableDefinition::new("history_rollup");

/// Bookkeeping of the other tables, by name:
/// - `"raw_floor"` / `"rollup_floor"`: a timestamp (ms) that no row of that table (raw: the
///   journal included; rollup: by bucket start) is older than. Compaction looks at a table only
///   once its cut-off has passed the floor; without a floor it looks. See `compact`.
/// - `"journal_rows"`: rows waiting in the journal, so a commit need not read the journal to
///   know whether to fold it. Without it the journal is counted once.
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("history_meta");

/// The stored form of an [`Agg`]: a fixed-width tuple, 48 bytes.
pub(super) type RollupValue = (u64, f64, f64, f64, f64, u64);

impl Agg {
    pub(super) fn from_stored((count, min, max, sum, last, last_ts): RollupValue) -> Self {
        Self {
            count,
            min,
            max,
            sum,
            last,
            last_ts,
        }
    }

    pub(super) fn to_stored(self) -> RollupValue {
        (
            self.count,
            self.min,
            self.max,
            self.sum,
            self.last,
            self.last_ts,
        )
    }
}

/// The series table key of one metric of a twin.
pub(super) fn series_name(key: &TwinKey, metric: &MetricName) -> String {
    format!("{}/{}/{}", key.lab, key.machine, metric)
}

/// The key prefix shared by every series of a twin.
pub(super) fn twin_prefix(key: &TwinKey) -> String {
    format!("{}/{}/", key.lab, key.machine)
}

/// Opens a table for reading; `None` when no write ever created it (an empty history).
pub(super) fn open_read<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &ReadTransaction,
    def: TableDefinition<K, V>,
) -> Result<Option<ReadOnlyTable<K, V>>, HistoryError> {
    match txn.open_table(def) {
        Ok(table) => Ok(Some(table)),
        Err(TableError::TableDoesNotExist(_)) => Ok(None),
        Err(err) => Err(db(err)),
    }
}

/// Copies every history table from a read snapshot into `to` (a backup); returns
/// `(table name, rows)` per table that exists.
pub(crate) fn copy_all(
    from: &ReadTransaction,
    to: &WriteTransaction,
) -> Result<Vec<(String, u64)>, redb::Error> {
    Ok([
        crate::store::copy_table(from, to, SERIES)?,
        crate::store::copy_table(from, to, BLOCKS)?,
        crate::store::copy_table(from, to, JOURNAL)?,
        crate::store::copy_table(from, to, ROLLUP)?,
        crate::store::copy_table(from, to, META)?,
    ]
    .into_iter()
    .flatten()
    .collect())
}
