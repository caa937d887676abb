//! Retention: folding old raw samples into rollups and expiring old rollups.

use redb::{ReadableTable, ReadableTableMetadata, WriteTransaction};

use super::blocks;
use super::tables::{BLOCKS, JOURNAL, META, ROLLUP, SERIES};
use super::{Agg, CompactStats, HistoryError, Retention, align_down, db};

/// Folds raw samples older than `retention.raw_ms` into rollups of `rollup_step_ms` and
/// deletes them; deletes rollups (and raw samples) older than `rollup_ms`. Works inside the
/// caller's write transaction and touches at most `max_rows_per_call` rows; when
/// [`CompactStats::done`] is false there is more to do.
///
/// The raw cut-off is rounded down to a rollup step, so a rollup bucket is normally folded
/// whole. A bucket folded in two calls (budget ran out, or a late sample arrived) is merged
/// into the existing rollup row: count, min, max and sum add up exactly the same.
///
/// A table whose floor (`history_meta`) is at or past its cut-off has nothing to do and is
/// not visited ([`CompactStats::skipped`]); a pass that went through every series sets the
/// floor to the oldest row it left.
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

    let mut floors = txn.open_table(META).map_err(db)?;
    let floor = |floors: &redb::Table<'_, &str, u64>, name| -> Result<u64, HistoryError> {
        Ok(floors.get(name).map_err(db)?.map_or(0, |v| v.value()))
    };
    let fold_raw = raw_cutoff > floor(&floors, RAW_FLOOR)?;
    let expire_rollups = rollup_cutoff > floor(&floors, ROLLUP_FLOOR)?;
    if !fold_raw && !expire_rollups {
        stats.skipped = true;
        stats.done = true;
        return Ok(stats);
    }
    // Ids are dense from 0 and never deleted (see `write`).
    let series = txn.open_table(SERIES).map_err(db)?.len().map_err(db)?;
    let ids = 0..u32::try_from(series).unwrap_or(u32::MAX);
    let mut raw = txn.open_table(BLOCKS).map_err(db)?;
    let mut rollup = txn.open_table(ROLLUP).map_err(db)?;
    // The oldest row left in each table by a pass that visited every series.
    let mut raw_oldest = u64::MAX;
    let mut rollup_oldest = u64::MAX;
    let mut rollups_written_from = u64::MAX;

    for id in ids.clone().filter(|_| fold_raw) {
        if budget == 0 {
            break;
        }
        let take = usize::try_from(budget).unwrap_or(usize::MAX);
        let old = blocks::take_older(&mut raw, id, raw_cutoff, take)?;
        budget -= old.len() as u64;
        if budget > 0 {
            raw_oldest = raw_oldest.min(blocks::oldest(&raw, id)?);
        }

        // `old` is in timestamp order: fold runs of one bucket, then merge each run once.
        let mut run: Option<(u64, Agg)> = None;
        for point in old {
            let (ts, value) = (point.timestamp_ms, point.value);
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
                        rollups_written_from = rollups_written_from.min(s);
                        stats.rollups_written += 1;
                    }
                }
            }
        }
        if let Some((s, agg)) = run {
            merge_rollup(&mut rollup, id, s, agg)?;
            rollups_written_from = rollups_written_from.min(s);
            stats.rollups_written += 1;
        }
    }
    let raw_visited_all = fold_raw && budget > 0;

    for id in ids.filter(|_| expire_rollups) {
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
        if budget > 0 {
            rollup_oldest = rollup_oldest.min(first_rollup(&rollup, id)?);
        }
    }

    if raw_visited_all {
        // Journaled rows reach the blocks later; they count as raw for the floor.
        let journaled = oldest_journaled(txn)?;
        floors
            .insert(RAW_FLOOR, raw_oldest.min(journaled))
            .map_err(db)?;
    }
    if expire_rollups && budget > 0 {
        // Rollups folded above were visited too (the expiry pass runs after the fold).
        floors.insert(ROLLUP_FLOOR, rollup_oldest).map_err(db)?;
    } else if rollups_written_from != u64::MAX {
        lower(&mut floors, ROLLUP_FLOOR, rollups_written_from)?;
    }
    stats.done = budget > 0;
    Ok(stats)
}

/// The floor keys of `history_floors`.
pub(super) const RAW_FLOOR: &str = "raw_floor";
const ROLLUP_FLOOR: &str = "rollup_floor";

/// Lowers a floor to `oldest` (a row about to be written); an unknown floor stays unknown.
pub(super) fn lower(
    floors: &mut redb::Table<'_, &str, u64>,
    name: &str,
    oldest: u64,
) -> Result<(), HistoryError> {
    let current = floors.get(name).map_err(db)?.map(|v| v.value());
    if current.is_some_and(|floor| oldest < floor) {
        floors.insert(name, oldest).map_err(db)?;
    }
    Ok(())
}

fn first_rollup(
    rollup: &redb::Table<'_, (u32, u64), super::tables::RollupValue>,
    id: u32,
) -> Result<u64, HistoryError> {
    let first = rollup.range((id, 0)..=(id, u64::MAX)).map_err(db)?.next();
    Ok(match first {
        Some(entry) => entry.map_err(db)?.0.value().1,
        None => u64::MAX,
    })
}

fn oldest_journaled(txn: &WriteTransaction) -> Result<u64, HistoryError> {
    let journal = txn.open_table(JOURNAL).map_err(db)?;
    let mut oldest = u64::MAX;
    for entry in journal.iter().map_err(db)? {
        let (_, rows) = entry.map_err(db)?;
        for row in super::write::decode_rows(rows.value()) {
            oldest = oldest.min(row.timestamp_ms);
        }
    }
    Ok(oldest)
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
