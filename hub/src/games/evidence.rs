//! What the hub's history says about a game's machine: meter readings at the periods' edges
//! and the extremes an alarm limit is judged on.

use protocol::MetricName;
use redb::ReadableDatabase;

use super::model::{Game, Periods};
use super::template::Direction;
use super::{GameError, Games, Result, scoring};
use crate::history::{self, TimeRange};
use crate::twin::TwinKey;

/// How far back a meter reading is looked for at a period's edge.
const READING_LOOKBACK_MS: u64 = 120_000;

impl Games {
    fn readings(
        &self,
        game: &Game,
        metric: &str,
        range: TimeRange,
        step_ms: Option<u64>,
    ) -> Result<Vec<history::Bucket>> {
        let key = TwinKey::parse(&game.fault.twin)
            .ok_or_else(|| GameError::Invalid(format!("bad twin {}", game.fault.twin)))?;
        let metric: MetricName = metric
            .parse()
            .map_err(|err| GameError::Invalid(format!("metric {metric}: {err}")))?;
        let storage = |err: String| GameError::Storage(err);
        let txn = self
            .store
            .database()
            .begin_read()
            .map_err(|e| storage(e.to_string()))?;
        history::query(&txn, &key, &metric, range, step_ms).map_err(|e| storage(e.to_string()))
    }

    /// The meter's rise over the measured period less its rise over the reference period.
    pub(super) fn energy_wasted(&self, game: &Game, metric: &str, periods: Periods) -> Result<f64> {
        let rise = |[from, to]: [u64; 2]| -> Result<f64> {
            // Readings near the two edges only: a long game has more samples than one raw
            // query returns.
            let mut samples = Vec::new();
            for (edge, inside) in [(from, true), (to, false)] {
                let range = TimeRange {
                    from_ms: edge.saturating_sub(READING_LOOKBACK_MS),
                    to_ms: edge + 1 + if inside { READING_LOOKBACK_MS } else { 0 },
                };
                samples.extend(
                    self.readings(game, metric, range, None)?
                        .into_iter()
                        .map(|b| (b.start_ms, b.last)),
                );
            }
            samples.sort_by_key(|(at, _)| *at);
            samples.dedup_by_key(|(at, _)| *at);
            scoring::meter_rise(&samples, from, to).ok_or_else(|| {
                GameError::Invalid(format!(
                    "the hub has no {metric} readings of {} around {from}..{to}",
                    game.fault.twin
                ))
            })
        };
        Ok(rise(periods.measured)? - rise(periods.reference)?)
    }

    /// The metric from `from_ms` to `to_ms` as `(time, value)`: the raw samples with their
    /// exact times where they fit in one query (so a sample just after the fault's start is
    /// never taken for one before it), else at most a few thousand buckets, each its maximum
    /// for an upper limit and its minimum for a lower one, so no excursion is averaged away.
    pub(super) fn extremes(
        &self,
        game: &Game,
        metric: &str,
        from_ms: u64,
        to_ms: u64,
        direction: Direction,
    ) -> Result<Vec<(u64, f64)>> {
        let range = TimeRange { from_ms, to_ms };
        let raw = self.readings(game, metric, range, None)?;
        let buckets = if raw.len() < history::MAX_POINTS {
            raw
        } else {
            let step = (range.span_ms() / 5_000).max(1);
            self.readings(game, metric, range, Some(step))?
        };
        Ok(buckets
            .into_iter()
            .map(|b| {
                let value = match direction {
                    Direction::Above => b.max,
                    Direction::Below => b.min,
                };
                (b.start_ms, value)
            })
            .collect())
    }
}
