//! Storage tests: one temp database per test, values chosen so float sums are exact.

use redb::{Database, ReadableDatabase};

use super::*;

struct Fixture {
    _dir: tempfile::TempDir,
    db: Database,
    /// Kept across the fixture's journaled commits, as the persister keeps them.
    series_ids: std::cell::RefCell<SeriesIds>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Database::create(dir.path().join("hub.redb")).expect("create db");
    Fixture {
        _dir: dir,
        db,
        series_ids: Default::default(),
    }
}

fn key(machine: &str) -> TwinKey {
    TwinKey {
        lab: "lab-a".parse().expect("valid lab"),
        machine: machine.parse().expect("valid machine"),
    }
}

fn metric(name: &str) -> MetricName {
    name.parse().expect("valid metric")
}

fn row(machine: &str, name: &str, timestamp_ms: u64, value: f64) -> HistoryRow {
    HistoryRow {
        key: key(machine),
        metric: metric(name),
        timestamp_ms,
        seq: 0,
        value,
    }
}

impl Fixture {
    fn append(&self, rows: &[HistoryRow]) -> AppendStats {
        let txn = self.db.begin_write().expect("begin write");
        let stats = append(&txn, rows).expect("append");
        txn.commit().expect("commit");
        stats
    }

    fn query(&self, from_ms: u64, to_ms: u64, step: Option<u64>) -> Vec<Bucket> {
        self.try_query(from_ms, to_ms, step).expect("query")
    }

    fn try_query(
        &self,
        from_ms: u64,
        to_ms: u64,
        step: Option<u64>,
    ) -> Result<Vec<Bucket>, HistoryError> {
        let txn = self.db.begin_read().expect("begin read");
        query(
            &txn,
            &key("m-1"),
            &metric("spindle.power_w"),
            TimeRange { from_ms, to_ms },
            step,
        )
    }

    fn compact(&self, now_ms: u64, retention: &Retention) -> CompactStats {
        let txn = self.db.begin_write().expect("begin write");
        let stats = compact(&txn, now_ms, retention).expect("compact");
        txn.commit().expect("commit");
        stats
    }
}

fn bucket(start_ms: u64, count: u64, min: f64, max: f64, mean: f64, last: f64) -> Bucket {
    Bucket {
        start_ms,
        count,
        min,
        max,
        mean,
        last,
    }
}

/// Start of [`ten_minutes`], on a minute boundary.
const START: u64 = 16_667 * 60_000;

/// Ten minutes of one sample every 250 ms; values are multiples of 0.25, so every sum is exact
/// in f64 whatever the order of addition.
fn ten_minutes() -> Vec<HistoryRow> {
    (0..2400u64)
        .map(|i| {
            let value = ((i * 37) % 101) as f64 * 0.25 - 10.0;
            row("m-1", "spindle.power_w", START + i * 250, value)
        })
        .collect()
}

#[test]
fn aggregated_buckets_have_exact_values() {
    let f = fixture();
    let rows: Vec<_> = (1..=10u64)
        .map(|i| row("m-1", "spindle.power_w", i * 1000 - 1000, i as f64))
        .collect();
    f.append(&rows);
    assert_eq!(
        f.query(0, 10_000, Some(5_000)),
        vec![
            bucket(0, 5, 1.0, 5.0, 3.0, 5.0),
            bucket(5_000, 5, 6.0, 10.0, 8.0, 10.0)
        ]
    );
    // The first bucket is aligned to the epoch, not to `from`; empty buckets are omitted.
    assert_eq!(
        f.query(2_500, 100_000, Some(4_000)),
        vec![
            bucket(0, 1, 4.0, 4.0, 4.0, 4.0),
            bucket(4_000, 4, 5.0, 8.0, 6.5, 8.0),
            bucket(8_000, 2, 9.0, 10.0, 9.5, 10.0),
        ]
    );
}

#[test]
fn raw_points_are_single_sample_buckets_within_the_half_open_range() {
    let f = fixture();
    let rows: Vec<_> = (0..10u64)
        .map(|i| row("m-1", "spindle.power_w", i * 100, i as f64))
        .collect();
    f.append(&rows);
    let points = f.query(200, 500, None);
    assert_eq!(
        points,
        vec![
            bucket(200, 1, 2.0, 2.0, 2.0, 2.0),
            bucket(300, 1, 3.0, 3.0, 3.0, 3.0),
            bucket(400, 1, 4.0, 4.0, 4.0, 4.0),
        ]
    );
}

#[test]
fn raw_queries_stop_at_max_points() {
    let f = fixture();
    let rows: Vec<_> = (0..MAX_POINTS as u64 + 5)
        .map(|i| row("m-1", "spindle.power_w", i, 1.0))
        .collect();
    f.append(&rows);
    let points = f.query(0, u64::MAX, None);
    assert_eq!(points.len(), MAX_POINTS);
    assert_eq!(
        points.last().map(|b| b.start_ms),
        Some(MAX_POINTS as u64 - 1)
    );
}

#[test]
fn samples_sharing_a_millisecond_are_all_kept_by_sequence() {
    let f = fixture();
    let mut second = row("m-1", "spindle.power_w", 1_000, 2.0);
    second.seq = 8;
    let mut first = row("m-1", "spindle.power_w", 1_000, 1.0);
    first.seq = 7;
    let stats = f.append(&[first.clone(), second]);
    assert_eq!(stats.appended, 2);
    assert_eq!(f.append(&[first]).replaced, 1, "a replay of seq 7");
    assert_eq!(
        f.query(0, 2_000, Some(1_000)),
        vec![bucket(1_000, 2, 1.0, 2.0, 1.5, 2.0)]
    );
}

#[test]
fn a_second_sample_with_the_same_timestamp_and_sequence_replaces_the_first() {
    let f = fixture();
    let stats = f.append(&[
        row("m-1", "spindle.power_w", 1_000, 1.0),
        row("m-1", "spindle.power_w", 1_000, 2.0),
    ]);
    assert_eq!(
        stats,
        AppendStats {
            appended: 1,
            replaced: 1,
            skipped_non_finite: 0,
            journaled: 0,
        }
    );
    // A replay in a later transaction is idempotent too.
    let stats = f.append(&[row("m-1", "spindle.power_w", 1_000, 3.0)]);
    assert_eq!(stats.replaced, 1);
    assert_eq!(
        f.query(0, 2_000, None),
        vec![bucket(1_000, 1, 3.0, 3.0, 3.0, 3.0)]
    );
}

#[test]
fn non_finite_values_are_skipped_and_counted() {
    let f = fixture();
    let stats = f.append(&[
        row("m-1", "spindle.power_w", 1, f64::NAN),
        row("m-1", "spindle.power_w", 2, f64::INFINITY),
        row("m-1", "spindle.power_w", 3, 7.0),
    ]);
    assert_eq!(stats.skipped_non_finite, 2);
    assert_eq!(stats.appended, 1);
    assert_eq!(f.query(0, 10, None).len(), 1);
}

#[test]
fn bad_ranges_and_steps_are_named_errors() {
    let f = fixture();
    let err = f.try_query(5, 5, None).expect_err("empty range");
    assert!(matches!(
        err,
        HistoryError::BadTimeRange {
            from_ms: 5,
            to_ms: 5
        }
    ));
    assert_eq!(err.api_code(), Some("bad_time_range"));
    assert!(err.to_string().contains("`from`"), "{err}");
    let err = f.try_query(9, 5, Some(1)).expect_err("reversed range");
    assert!(matches!(err, HistoryError::BadTimeRange { .. }));

    let err = f.try_query(0, 1_000, Some(0)).expect_err("step 0");
    assert!(matches!(err, HistoryError::BadStep { step_ms: 0, .. }));
    assert_eq!(err.api_code(), Some("bad_step"));
    assert!(err.to_string().contains("`step`"), "{err}");
    let err = f
        .try_query(0, 10_001, Some(1))
        .expect_err("too many buckets");
    assert!(
        matches!(err, HistoryError::BadStep { step_ms: 1, .. }),
        "{err}"
    );
    // Exactly the maximum is fine.
    assert!(f.try_query(0, 10_000, Some(1)).is_ok());
}

#[test]
fn an_empty_database_has_no_history() {
    let f = fixture();
    assert!(f.query(0, 1_000, Some(10)).is_empty());
    let txn = f.db.begin_read().expect("read");
    assert!(series(&txn, &key("m-1")).expect("series").is_empty());
}

#[test]
fn series_lists_only_this_twins_metrics() {
    let f = fixture();
    f.append(&[
        row("m-1", "spindle.power_w", 1, 1.0),
        row("m-1", "axis.temp_c", 1, 1.0),
        row("m-10", "spindle.rpm", 1, 1.0),
        row("m", "spindle.rpm", 1, 1.0),
    ]);
    let txn = f.db.begin_read().expect("read");
    assert_eq!(
        series(&txn, &key("m-1")).expect("series"),
        vec!["axis.temp_c".to_owned(), "spindle.power_w".to_owned()]
    );
    assert_eq!(
        series(&txn, &key("m-10")).expect("series"),
        vec!["spindle.rpm"]
    );
}

#[test]
fn default_steps_are_round_and_give_at_most_500_buckets() {
    let step = |span: u64| {
        default_step(TimeRange {
            from_ms: 0,
            to_ms: span,
        })
    };
    assert_eq!(step(1), 1);
    assert_eq!(step(60_000), 200);
    assert_eq!(step(3_600_000), 10_000);
    assert_eq!(step(86_400_000), 300_000);
    assert_eq!(step(30 * 86_400_000), 7_200_000);
    for span in [
        1,
        999,
        60_000,
        3_600_001,
        86_400_000,
        400 * 86_400_000,
        2000 * 86_400_000,
    ] {
        let range = TimeRange {
            from_ms: 0,
            to_ms: span,
        };
        assert!(
            span.div_ceil(default_step(range)) <= TARGET_BUCKETS,
            "span {span}"
        );
    }
}

fn half_raw_retention() -> Retention {
    Retention {
        raw_ms: 300_000,
        rollup_step_ms: 60_000,
        rollup_ms: 3_600_000,
        max_rows_per_call: 100_000,
    }
}

#[test]
fn compaction_preserves_aggregates_across_the_raw_rollup_boundary() {
    let f = fixture();
    f.append(&ten_minutes());
    let (from, to) = (START - 60_000, START + 700_000);
    let before_1m = f.query(from, to, Some(60_000));
    let before_2m = f.query(from, to, Some(120_000));
    let before_10m = f.query(from, to, Some(600_000));
    assert_eq!(before_1m.iter().map(|b| b.count).sum::<u64>(), 2400);

    // Right after the last sample, with 5 minutes of raw retention: half is old.
    let now = START + 600_000;
    let stats = f.compact(now, &half_raw_retention());
    let cutoff = align_down(now - 300_000, 60_000);
    let folded = (cutoff - START) / 250;
    assert_eq!(folded, 1200);
    assert_eq!(stats.raw_folded, folded);
    assert_eq!(stats.rollups_written, folded / 240);
    assert!(stats.done);

    assert_eq!(f.query(from, to, Some(60_000)), before_1m);
    assert_eq!(f.query(from, to, Some(120_000)), before_2m);
    assert_eq!(f.query(from, to, Some(600_000)), before_10m);

    // Raw view: one row per folded minute, then the raw points.
    let raw = f.query(from, to, None);
    assert_eq!(raw.len() as u64, folded / 240 + (2400 - folded));
    assert_eq!(raw[0].count, 240);
    assert_eq!(raw[0], before_1m[0]);
    assert!(raw[(folded / 240) as usize..].iter().all(|b| b.count == 1));

    // Compacting again does nothing.
    let again = f.compact(now, &half_raw_retention());
    assert_eq!(again.raw_folded + again.rollups_written, 0);
}

#[test]
fn a_small_budget_compacts_over_several_calls_with_the_same_result() {
    let f = fixture();
    f.append(&ten_minutes());
    let (from, to) = (START, START + 600_000);
    let before = f.query(from, to, Some(60_000));
    let retention = Retention {
        max_rows_per_call: 100,
        ..half_raw_retention()
    };
    let now = START + 10 * 60_000 + 300_000;
    let mut calls = 0;
    let mut folded = 0;
    loop {
        calls += 1;
        let stats = f.compact(now, &retention);
        assert!(stats.raw_folded <= 100);
        folded += stats.raw_folded;
        if stats.done {
            break;
        }
        assert!(calls < 100, "compaction does not converge");
    }
    assert_eq!(folded, 2400);
    assert!(calls >= 24);
    assert_eq!(f.query(from, to, Some(60_000)), before);
    assert!(f.query(from, to, None).iter().all(|b| b.count == 240));
}

#[test]
fn late_samples_merge_into_an_existing_rollup() {
    let f = fixture();
    f.append(&[
        row("m-1", "spindle.power_w", 60_000, 4.0),
        row("m-1", "spindle.power_w", 60_500, 2.0),
    ]);
    let retention = Retention {
        raw_ms: 60_000,
        rollup_step_ms: 60_000,
        rollup_ms: 3_600_000,
        max_rows_per_call: 1000,
    };
    f.compact(200_000, &retention);
    // Arrives after its minute was folded, with a timestamp before the rollup's last.
    f.append(&[row("m-1", "spindle.power_w", 60_250, 9.0)]);
    f.compact(200_000, &retention);
    assert_eq!(
        f.query(0, 1_000_000, None),
        vec![bucket(60_000, 3, 2.0, 9.0, 5.0, 2.0)]
    );
}

#[test]
fn retention_deletes_old_rollups_and_expired_raw_rows() {
    let f = fixture();
    f.append(&ten_minutes());
    let retention = half_raw_retention();
    let start = START;
    // Fold everything (its rollups are young enough to keep).
    f.compact(start + 600_000 + 300_000, &retention);
    assert_eq!(f.query(0, u64::MAX, None).len(), 10);
    // 55 minutes later the first 5 rollup minutes are past the one-hour retention.
    let stats = f.compact(start + 3_600_000 + 300_000, &retention);
    assert_eq!(stats.rollups_deleted, 5);
    let left = f.query(0, u64::MAX, None);
    assert_eq!(left.len(), 5);
    assert_eq!(left[0].start_ms, start + 300_000);

    // Raw rows already past rollup retention are deleted without a rollup.
    let g = fixture();
    g.append(&ten_minutes());
    let stats = g.compact(start + 3_600_000 + 300_000, &retention);
    assert_eq!(stats.raw_expired, 1200);
    assert_eq!(stats.raw_folded, 1200);
    assert_eq!(stats.rollups_written, 5);
    assert_eq!(g.query(start, start + 600_000, Some(60_000)).len(), 5);
    let txn = g.db.begin_read().expect("read");
    assert_eq!(
        series(&txn, &key("m-1")).expect("series"),
        vec!["spindle.power_w"]
    );
}

#[test]
fn a_bad_retention_names_its_key() {
    let f = fixture();
    let txn = f.db.begin_write().expect("write");
    let retention = Retention {
        rollup_ms: 1,
        ..Retention::default()
    };
    let err = compact(&txn, 0, &retention).expect_err("rollup_ms < raw_ms");
    assert!(err.to_string().contains("rollup_ms"), "{err}");
}

/// Throughput: `cargo test -p demolab-hub --lib history::tests::throughput -- --ignored --nocapture`
#[test]
#[ignore = "measurement, prints rows/s"]
fn throughput() {
    let f = fixture();
    let machines: Vec<String> = (0..20).map(|i| format!("m-{i}")).collect();
    let metrics = [
        "spindle.power_w",
        "spindle.rpm",
        "axis.temp_c",
        "axis.vib_rms",
    ];
    let batches = 200u64;
    let per_batch = 1000u64;
    let mut t = 0u64;
    let mut total = 0u64;
    let started = std::time::Instant::now();
    for _ in 0..batches {
        let mut rows = Vec::with_capacity(per_batch as usize);
        while (rows.len() as u64) < per_batch {
            t += 1;
            for m in &machines {
                for name in metrics {
                    rows.push(row(m, name, 1_000_000 + t * 100, t as f64));
                }
            }
        }
        total += rows.len() as u64;
        f.append(&rows);
    }
    let elapsed = started.elapsed();
    println!(
        "append: {total} rows in {} commits of ~{per_batch}: {:.0} rows/s",
        batches,
        total as f64 / elapsed.as_secs_f64()
    );

    let retention = Retention {
        raw_ms: 1,
        max_rows_per_call: 20_000,
        ..Retention::default()
    };
    let started = std::time::Instant::now();
    let mut calls = 0;
    let mut folded = 0;
    loop {
        calls += 1;
        let stats = f.compact(1_000_000 + t * 100 + 120_000, &retention);
        folded += stats.raw_folded;
        if stats.done {
            break;
        }
    }
    let elapsed = started.elapsed();
    println!(
        "compact: {folded} rows in {calls} calls ({:.1} ms per call of ≤ 20000 rows): {:.0} rows/s",
        elapsed.as_secs_f64() * 1000.0 / calls as f64,
        folded as f64 / elapsed.as_secs_f64()
    );
    let started = std::time::Instant::now();
    let txn = f.db.begin_read().expect("read");
    let day_range = TimeRange {
        from_ms: 1_000_000,
        to_ms: 1_000_000 + 86_400_000,
    };
    let day = query(
        &txn,
        &key("m-0"),
        &metric("spindle.power_w"),
        day_range,
        Some(default_step(day_range)),
    )
    .expect("query");
    println!(
        "query after compaction: {} buckets in {:?}",
        day.len(),
        started.elapsed()
    );

    // The persister's path: many small commits into the journal, then folds of 49,500 rows
    // (500 series, 99 rows each), as at 10,000 msg/s.
    let g = fixture();
    let machines: Vec<String> = (0..100).map(|i| format!("m-{i}")).collect();
    let mut fold_time = std::time::Duration::ZERO;
    let mut folded = 0;
    for round in 0..20u64 {
        for step in 0..99u64 {
            let t = 1_000_000 + (round * 100 + step) * 100;
            let rows: Vec<HistoryRow> = machines
                .iter()
                .flat_map(|m| {
                    metrics
                        .iter()
                        .chain(["spindle.load"].iter())
                        .map(move |name| (m, *name))
                })
                .take(500)
                .map(|(m, name)| row(m, name, t, t as f64))
                .collect();
            let txn = g.db.begin_write().expect("begin write");
            let mut ids = g.series_ids.borrow_mut();
            append_journaled(&txn, rows.iter().map(HistoryRow::as_ref), &mut ids).expect("journal");
            txn.commit().expect("commit");
            ids.committed();
        }
        let started = std::time::Instant::now();
        folded += g.fold().appended;
        fold_time += started.elapsed();
    }
    println!(
        "fold: {folded} rows in 20 folds: {:.0} rows/s",
        folded as f64 / fold_time.as_secs_f64()
    );
}

impl Fixture {
    fn journal(&self, rows: &[HistoryRow]) -> AppendStats {
        let txn = self.db.begin_write().expect("begin write");
        let mut ids = self.series_ids.borrow_mut();
        let stats =
            append_journaled(&txn, rows.iter().map(HistoryRow::as_ref), &mut ids).expect("journal");
        txn.commit().expect("commit");
        ids.committed();
        stats
    }

    fn fold(&self) -> AppendStats {
        let txn = self.db.begin_write().expect("begin write");
        let stats = fold_journal(&txn).expect("fold");
        txn.commit().expect("commit");
        stats
    }
}

#[test]
fn journaled_rows_are_read_before_and_after_their_fold_with_last_write_wins() {
    let f = fixture();
    f.append(&[
        row("m-1", "spindle.power_w", 1_000, 1.0),
        row("m-1", "spindle.power_w", 2_000, 2.0),
    ]);
    // The journal replaces the raw row at 2 000 and adds one at 3 000, then replaces itself.
    let stats = f.journal(&[
        row("m-1", "spindle.power_w", 2_000, 20.0),
        row("m-1", "spindle.power_w", 3_000, 3.0),
    ]);
    assert_eq!((stats.journaled, stats.appended), (2, 0), "not folded yet");
    f.journal(&[row("m-1", "spindle.power_w", 3_000, 30.0)]);
    let expected = vec![
        bucket(1_000, 1, 1.0, 1.0, 1.0, 1.0),
        bucket(2_000, 1, 20.0, 20.0, 20.0, 20.0),
        bucket(3_000, 1, 30.0, 30.0, 30.0, 30.0),
    ];
    assert_eq!(f.query(0, 10_000, None), expected);
    assert_eq!(
        f.query(0, 10_000, Some(10_000)),
        vec![bucket(0, 3, 1.0, 30.0, 17.0, 30.0)]
    );
    let read = f.db.begin_read().expect("read");
    assert_eq!(
        series(&read, &key("m-1")).expect("series"),
        ["spindle.power_w"]
    );
    drop(read);

    let folded = f.fold();
    assert_eq!((folded.appended, folded.replaced), (1, 2));
    assert_eq!(
        f.query(0, 10_000, None),
        expected,
        "the same after the fold"
    );
}

#[test]
fn the_journal_folds_itself_after_so_many_commits_and_loses_nothing() {
    let f = fixture();
    let mut folded = AppendStats::default();
    for n in 0..FOLD_AFTER_ENTRIES {
        let stats = f.journal(&[
            row("m-1", "spindle.power_w", 1_000 + n, n as f64),
            row("m-2", "spindle.power_w", 1_000 + n, n as f64),
        ]);
        folded.appended += stats.appended;
    }
    assert_eq!(
        folded.appended,
        2 * FOLD_AFTER_ENTRIES,
        "every row folded once"
    );
    assert_eq!(f.fold().appended, 0, "the journal is empty");
    let points = f.query(0, 10_000, None);
    assert_eq!(points.len() as u64, FOLD_AFTER_ENTRIES);
    assert!(points.windows(2).all(|w| w[0].start_ms < w[1].start_ms));
}

#[test]
fn a_non_finite_value_never_reaches_the_journal() {
    let f = fixture();
    let stats = f.journal(&[
        row("m-1", "spindle.power_w", 1, f64::NAN),
        row("m-1", "spindle.power_w", 2, 7.0),
    ]);
    assert_eq!((stats.skipped_non_finite, stats.journaled), (1, 1));
    assert_eq!(f.query(0, 10, None).len(), 1);
}

#[test]
fn compaction_visits_the_series_only_once_something_is_old_enough() {
    let f = fixture();
    f.append(&ten_minutes());
    let retention = half_raw_retention();
    let now = START + 600_000;
    let first = f.compact(now, &retention);
    assert!(!first.skipped);
    assert_eq!(first.raw_folded, 1200);

    // The oldest raw row left is at the cut-off, the oldest rollup is younger than its own.
    let again = f.compact(now + 59_999, &retention);
    assert!(again.skipped && again.done, "{again:?}");
    let next_minute = f.compact(now + 60_000, &retention);
    assert!(!next_minute.skipped);
    assert_eq!(next_minute.raw_folded, 240);

    // A replayed sample older than everything lowers the floor, so it is folded at once.
    let (from, to) = (START - 600_000, START + 700_000);
    f.append(&[row("m-1", "spindle.power_w", START - 120_000, 1.0)]);
    let replay = f.compact(now + 60_000, &retention);
    assert_eq!((replay.skipped, replay.raw_folded), (false, 1));
    assert_eq!(f.query(from, to, Some(60_000))[0].start_ms, START - 120_000);
    assert!(f.compact(now + 60_000, &retention).skipped);

    // Journaled rows count as raw until folded into blocks.
    let txn = f.db.begin_write().expect("begin write");
    let replayed = row("m-1", "spindle.power_w", START - 60_000, 3.0);
    let mut ids = SeriesIds::default();
    append_journaled(&txn, [replayed.as_ref()], &mut ids).expect("journal");
    txn.commit().expect("commit");
    let journaled = f.compact(now + 60_000, &retention);
    assert_eq!((journaled.skipped, journaled.raw_folded), (false, 0));
    let txn = f.db.begin_write().expect("begin write");
    fold_journal(&txn).expect("fold");
    txn.commit().expect("commit");
    assert_eq!(f.compact(now + 60_000, &retention).raw_folded, 1);
    assert!(f.compact(now + 60_000, &retention).skipped);
    let minutes: Vec<u64> = f
        .query(from, to, Some(60_000))
        .iter()
        .map(|b| b.count)
        .collect();
    assert_eq!(minutes[..3], [1, 1, 240]);
    assert_eq!(minutes.iter().sum::<u64>(), 2402);
}

#[test]
fn with_many_series_the_journal_waits_for_several_rows_of_each() {
    let f = fixture();
    // More series than FOLD_AFTER_ROWS / FOLD_ROWS_PER_SERIES, one row of each per commit.
    let machines = (FOLD_AFTER_ROWS / FOLD_ROWS_PER_SERIES) as usize * 2;
    let commit = |n: u64| -> Vec<HistoryRow> {
        (0..machines)
            .map(|m| row(&format!("m-{m}"), "spindle.power_w", 1_000 * n, n as f64))
            .collect()
    };
    let folds_at = FOLD_ROWS_PER_SERIES;
    for n in 1..folds_at {
        let stats = f.journal(&commit(n));
        assert_eq!(stats.appended, 0, "commit {n} of {folds_at} folded");
        assert_eq!(stats.journaled, machines as u64);
    }
    let stats = f.journal(&commit(folds_at));
    assert_eq!(
        stats.appended,
        folds_at * machines as u64,
        "every row folded once"
    );
    assert_eq!(f.fold().appended, 0, "the journal is empty");
    let points = f.query(0, u64::MAX, None);
    assert_eq!(points.len() as u64, folds_at, "m-1 has a point per commit");
}

#[test]
fn series_ids_outlive_a_commit_only_once_it_committed_and_stay_bounded() {
    let f = fixture();
    let journal_with = |rows: &[HistoryRow], ids: &mut SeriesIds, commit: bool| {
        let txn = f.db.begin_write().expect("begin write");
        append_journaled(&txn, rows.iter().map(HistoryRow::as_ref), ids).expect("journal");
        if commit {
            txn.commit().expect("commit");
            ids.committed();
        } else {
            txn.abort().expect("abort");
            ids.abandoned();
        }
    };
    let mut ids = SeriesIds::default();
    // A rolled-back commit created series 0 and 1: they must not be remembered, or the next
    // commit would write rows under ids no series has.
    journal_with(
        &[
            row("m-1", "spindle.power_w", START, 1.0),
            row("m-2", "spindle.power_w", START, 2.0),
        ],
        &mut ids,
        false,
    );
    assert!(ids.is_empty());
    journal_with(&[row("m-2", "spindle.power_w", START, 2.0)], &mut ids, true);
    assert_eq!(ids.len(), 1);
    // m-2 took id 0 for real now. Had the rolled-back m-1 → 0 been kept, this row would land
    // in m-2's series.
    journal_with(
        &[row("m-1", "spindle.power_w", START + 1_000, 3.0)],
        &mut ids,
        true,
    );
    journal_with(
        &[row("m-1", "spindle.power_w", START + 2_000, 4.0)],
        &mut ids,
        true,
    );
    assert_eq!(ids.len(), 2);
    let txn = f.db.begin_write().expect("begin write");
    fold_journal(&txn).expect("fold");
    txn.commit().expect("commit");
    let values: Vec<f64> = f
        .query(START, START + 3_000, None)
        .iter()
        .map(|b| b.last)
        .collect();
    assert_eq!(values, [3.0, 4.0], "m-1's rows, in order");

    // Past the bound it learns no more, and keeps what it has.
    let many: Vec<HistoryRow> = (0..SERIES_IDS_KEPT + 10)
        .map(|i| row(&format!("m-{i}"), "spindle.speed_rpm", START, 1.0))
        .collect();
    journal_with(&many, &mut ids, true);
    assert_eq!(ids.len(), SERIES_IDS_KEPT);
    journal_with(&many, &mut ids, true);
    assert_eq!(ids.len(), SERIES_IDS_KEPT);
}
