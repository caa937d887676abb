//! Appending samples.

use std::collections::HashMap;

use redb::{ReadableTable, ReadableTableMetadata, WriteTransaction};

use super::tables::{RAW, SERIES, series_name};
use super::{AppendStats, HistoryError, HistoryRow, db};

/// Stores `rows` inside the caller's write transaction (nothing is committed here).
///
/// A row with the same series and timestamp as a stored one replaces it (last write wins, see
/// the module header). Non-finite values are skipped and counted, not stored.
pub fn append(txn: &WriteTransaction, rows: &[HistoryRow]) -> Result<AppendStats, HistoryError> {
    let mut stats = AppendStats::default();
    if rows.is_empty() {
        return Ok(stats);
    }
    let mut series = txn.open_table(SERIES).map_err(db)?;
    let mut raw = txn.open_table(RAW).map_err(db)?;
    // A batch usually holds a few metrics of a few machines many times over: look each name
    // up in the table once per call.
    let mut ids: HashMap<String, u32> = HashMap::new();
    for row in rows {
        if !row.value.is_finite() {
            stats.skipped_non_finite += 1;
            continue;
        }
        let name = series_name(&row.key, &row.metric);
        let id = match ids.get(&name) {
            Some(id) => *id,
            None => {
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
                ids.insert(name, id);
                id
            }
        };
        if raw
            .insert((id, row.timestamp_ms, row.seq), row.value)
            .map_err(db)?
            .is_some()
        {
            stats.replaced += 1;
        } else {
            stats.appended += 1;
        }
    }
    Ok(stats)
}
