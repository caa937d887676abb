//! Retention: folding old raw samples into rollups and expiring old rollups.

use redb::{ReadableTable, WriteTransaction};

use super::tables::{RAW, ROLLUP, SERIES};
use super::{Agg, CompactStats, HistoryError, Retention, align_down, db};

/// Folds raw samples older than `retention.raw_ms` into rollups of `rollup_step_ms` and
/// deletes them; deletes rollups (and raw samples) older than `rollup_ms`. Works inside the
/// caller's write transaction and touches at most `max_rows_per_call` rows; when
/// [`CompactStats::done`] is false there is more to do.
///
/// The raw cut-off is rounded down to a rollup step, so a rollup bucket is normally folded
/// whole. A bucket folded in two calls (budget ran out, or a late sample arrived) is merged
/// into the existing rollup row: count, min, max and sum add up exactly the same.
pub fn compact(
    txn: &WriteTransaction,
    now_ms: u64,
    retention: &Retention,
) -> Result<CompactStats, HistoryError> {
    retention.validate()?;
    let step = retention.rollup_step_ms;
    let raw_cutoff = align_down(now_ms.saturating_sub(retention.raw_ms), step);
    let rollup_cutoff = align_down(now_ms.saturating_sub(retention.rollup_ms), step);
    let mut budget = retention.max_rows_per_call;
    let mut stats = CompactStats::default();

    let ids: Vec<u32> = {
        let series = txn.open_table(SERIES).map_err(db)?;
        let mut ids = Vec::new();
        for entry in series.iter().map_err(db)? {
            ids.push(entry.map_err(db)?.1.value());
        }
        ids
    };
    let mut raw = txn.open_table(RAW).map_err(db)?;
    let mut rollup = txn.open_table(ROLLUP).map_err(db)?;

    for &id in &ids {
        if budget == 0 {
            break;
        }
        // Rows not taken from the iterator stay in the table: the budget bounds the deletion.
        let take = usize::try_from(budget).unwrap_or(usize::MAX);
        let mut old = Vec::new();
        for entry in raw
            .extract_from_if((id, 0, 0)..(id, raw_cutoff, 0), |_, _| true)
            .map_err(db)?
            .take(take)
        {
            let (k, v) = entry.map_err(db)?;
            old.push((k.value().1, v.value()));
        }
        budget -= old.len() as u64;

        // `old` is in timestamp order: fold runs of one bucket, then merge each run once.
        let mut run: Option<(u64, Agg)> = None;
        for (ts, value) in old {
            let start = align_down(ts, step);
            if start < rollup_cutoff {
                // Already past retention: a rollup would be deleted right away.
                stats.raw_expired += 1;
                continue;
            }
            stats.raw_folded += 1;
            let point = Agg::point(ts, value);
            match &mut run {
                Some((s, agg)) if *s == start => agg.merge(&point),
                _ => {
                    if let Some((s, agg)) = run.replace((start, point)) {
                        merge_rollup(&mut rollup, id, s, agg)?;
                        stats.rollups_written += 1;
                    }
                }
            }
        }
        if let Some((s, agg)) = run {
            merge_rollup(&mut rollup, id, s, agg)?;
            stats.rollups_written += 1;
        }
    }

    for &id in &ids {
        if budget == 0 {
            break;
        }
        let take = usize::try_from(budget).unwrap_or(usize::MAX);
        let mut deleted = 0u64;
        for entry in rollup
            .extract_from_if((id, 0)..(id, rollup_cutoff), |_, _| true)
            .map_err(db)?
            .take(take)
        {
            entry.map_err(db)?;
            deleted += 1;
        }
        budget -= deleted;
        stats.rollups_deleted += deleted;
    }

    stats.done = budget > 0;
    Ok(stats)
}

fn merge_rollup(
    rollup: &mut redb::Table<'_, (u32, u64), super::tables::RollupValue>,
    id: u32,
    start: u64,
    agg: Agg,
) -> Result<(), HistoryError> {
    let merged = match rollup.get((id, start)).map_err(db)? {
        Some(existing) => {
            let mut merged = Agg::from_stored(existing.value());
            merged.merge(&agg);
            merged
        }
        None => agg,
    };
    rollup.insert((id, start), merged.to_stored()).map_err(db)?;
    Ok(())
}
