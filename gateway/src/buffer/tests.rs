//! Behaviour of the disk buffer on the real filesystem, with exact counts.

use std::fs;
use std::path::{Path, PathBuf};

use super::*;

/// `record-0042`: 11 bytes, so 19 on disk with the header.
fn payload(i: u64) -> Vec<u8> {
    format!("record-{i:04}").into_bytes()
}

const RECORD: u64 = 19;

/// Five records per segment, no cap in sight, every record synced.
fn config(dir: &Path) -> BufferConfig {
    BufferConfig {
        dir: dir.to_path_buf(),
        max_bytes: 1 << 20,
        segment_bytes: 5 * RECORD,
        fsync: FsyncPolicy::EveryRecord,
    }
}

fn open(config: &BufferConfig) -> (DiskBuffer, OpenReport) {
    DiskBuffer::open(config.clone()).expect("open")
}

fn append_all(buffer: &mut DiskBuffer, range: std::ops::Range<u64>) -> Vec<RecordId> {
    range
        .map(|i| buffer.append(&payload(i)).expect("append").id)
        .collect()
}

fn drain(buffer: &mut DiskBuffer) -> Vec<(u64, Vec<u8>)> {
    std::iter::from_fn(|| buffer.next_unsent().expect("read"))
        .map(|(id, p)| (id.0, p))
        .collect()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

#[test]
fn records_come_back_in_order_and_acking_all_of_them_deletes_every_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut buffer, report) = open(&config(dir.path()));
    assert_eq!(report, OpenReport::default());
    let ids = append_all(&mut buffer, 0..23);
    assert_eq!(ids.first(), Some(&RecordId(1)));
    assert_eq!((buffer.len(), buffer.unsent()), (23, 23));
    assert_eq!(segments(dir.path()).len(), 5);

    let read = drain(&mut buffer);
    let expected: Vec<_> = (0..23).map(|i| (i + 1, payload(i))).collect();
    assert_eq!(read, expected);
    assert_eq!((buffer.len(), buffer.unsent()), (23, 0));

    for id in ids {
        buffer.ack(id).expect("ack");
    }
    assert!(buffer.is_empty());
    assert_eq!(buffer.ack_position(), 23);
    assert!(segments(dir.path()).is_empty());
    assert_eq!(buffer.bytes_on_disk(), ledger::LEN as u64);
    assert_eq!(buffer.next_unsent().expect("read"), None);

    // The next record starts a fresh segment named after its id.
    assert_eq!(buffer.append(b"after").expect("append").id, RecordId(24));
    assert_eq!(
        segments(dir.path()),
        vec![dir.path().join("00000000000000000024.seg")]
    );
}

#[test]
fn a_reopen_returns_only_unacked_records_in_order_and_new_ids_continue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path());
    let (mut buffer, _) = open(&config);
    let ids = append_all(&mut buffer, 0..12);
    for id in &ids[..7] {
        buffer.ack(*id).expect("ack");
    }
    buffer.ack(ids[9]).expect("ack"); // out of order: not part of the persisted prefix
    drop(buffer);

    let (mut buffer, report) = open(&config);
    assert_eq!(report.recovered, 5);
    assert_eq!(
        (report.corrupt_records, report.truncated_tail_bytes),
        (0, 0)
    );
    let read = drain(&mut buffer);
    let expected: Vec<_> = (7..12).map(|i| (i + 1, payload(i))).collect();
    assert_eq!(read, expected);
    assert_eq!(buffer.append(b"next").expect("append").id, RecordId(13));
    // Acking everything then reopening: ids continue after the highest ever issued, even
    // though no segment is left to show it.
    for id in 1..=13 {
        buffer.ack(RecordId(id)).expect("ack");
    }
    drop(buffer);
    let (mut buffer, report) = open(&config);
    assert_eq!(report.recovered, 0);
    assert_eq!(buffer.append(b"again").expect("append").id, RecordId(14));
}

#[test]
fn under_every_batch_a_closed_buffer_continues_ids_exactly_and_a_crashed_one_jumps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = BufferConfig {
        fsync: FsyncPolicy::EveryBatch,
        ..config(dir.path())
    };
    let (mut buffer, _) = open(&config);
    append_all(&mut buffer, 0..3);
    buffer.close().expect("close");
    let (mut buffer, _) = open(&config);
    assert_eq!(buffer.append(b"x").expect("append").id, RecordId(4));
    drop(buffer); // no close: ids reserved for a crash are skipped
    let (mut buffer, report) = open(&config);
    assert_eq!(report.recovered, 4);
    assert_eq!(
        buffer.append(b"y").expect("append").id,
        RecordId(4 + ID_RESERVATION)
    );
}

#[test]
fn out_of_order_acks_advance_the_position_over_the_contiguous_prefix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut buffer, _) = open(&config(dir.path()));
    append_all(&mut buffer, 0..4);
    buffer.ack(RecordId(3)).expect("ack");
    assert_eq!((buffer.ack_position(), buffer.len()), (0, 3));
    buffer.ack(RecordId(1)).expect("ack");
    assert_eq!((buffer.ack_position(), buffer.len()), (1, 2));
    buffer.ack(RecordId(2)).expect("ack");
    assert_eq!((buffer.ack_position(), buffer.len()), (3, 1));
    buffer.ack(RecordId(2)).expect("a repeated ack is fine");
    assert!(matches!(
        buffer.ack(RecordId(5)),
        Err(BufferError::UnknownRecord { id: 5, next: 5, .. })
    ));
}

#[test]
fn rewind_hands_out_every_unacked_record_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut buffer, _) = open(&config(dir.path()));
    append_all(&mut buffer, 0..12);
    assert_eq!(drain(&mut buffer).len(), 12);
    for id in [1, 2, 3, 6, 11] {
        buffer.ack(RecordId(id)).expect("ack");
    }
    buffer.rewind();
    assert_eq!(buffer.unsent(), 7);
    let ids: Vec<u64> = drain(&mut buffer).into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, vec![4, 5, 7, 8, 9, 10, 12]);
}

#[test]
fn a_torn_tail_is_cut_off_and_every_whole_record_recovered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path());
    let (mut buffer, _) = open(&config);
    append_all(&mut buffer, 0..8);
    drop(buffer);
    let newest = segments(dir.path()).pop().expect("segments");
    let len = fs::metadata(&newest).expect("meta").len();
    // Cut the last record 5 bytes into its payload, as a crash during its append would.
    fs::OpenOptions::new()
        .write(true)
        .open(&newest)
        .expect("open")
        .set_len(len - 6)
        .expect("cut");

    let (mut buffer, report) = open(&config);
    assert_eq!(report.truncated_tail_bytes, RECORD - 6);
    assert_eq!((report.recovered, report.corrupt_records), (7, 0));
    assert!(report.quarantined.is_empty());
    let read = drain(&mut buffer);
    assert_eq!(
        read,
        (0..7).map(|i| (i + 1, payload(i))).collect::<Vec<_>>()
    );
    // The next record goes where the torn one was.
    assert_eq!(buffer.append(b"z").expect("append").id, RecordId(8));
}

#[test]
fn zeros_after_the_last_record_are_a_torn_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path());
    let (mut buffer, _) = open(&config);
    append_all(&mut buffer, 0..3);
    drop(buffer);
    let newest = segments(dir.path()).pop().expect("segments");
    let mut bytes = fs::read(&newest).expect("read");
    bytes.extend_from_slice(&[0; 40]);
    fs::write(&newest, bytes).expect("write");
    let (_, report) = open(&config);
    assert_eq!(
        (
            report.recovered,
            report.truncated_tail_bytes,
            report.corrupt_records
        ),
        (3, 40, 0)
    );
}

#[test]
fn a_flipped_byte_in_an_older_segment_quarantines_the_rest_of_it_and_counts_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path());
    let (mut buffer, _) = open(&config);
    append_all(&mut buffer, 0..15); // segments of ids 1-5, 6-10, 11-15
    buffer.ack(RecordId(1)).expect("ack");
    drop(buffer);
    let middle = segments(dir.path())[1].clone();
    let mut bytes = fs::read(&middle).expect("read");
    // A payload byte of the second record in the segment (id 7): ids 7-10 are lost.
    bytes[(RECORD + HEADER + 2) as usize] ^= 0x40;
    fs::write(&middle, bytes).expect("write");

    let (mut buffer, report) = open(&config);
    assert_eq!(report.corrupt_records, 4);
    assert_eq!(report.recovered, 15 - 1 - 4);
    assert_eq!(
        buffer.dropped(),
        DropCounts {
            full: 0,
            corrupt: 4
        }
    );
    let quarantined = dir
        .path()
        .join("quarantine/00000000000000000006.seg.19.bad");
    assert_eq!(report.quarantined, vec![quarantined.clone()]);
    assert_eq!(
        fs::metadata(&quarantined).expect("quarantined").len(),
        4 * RECORD
    );
    assert_eq!(fs::metadata(&middle).expect("segment").len(), RECORD);
    let ids: Vec<u64> = drain(&mut buffer).into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, vec![2, 3, 4, 5, 6, 11, 12, 13, 14, 15]);

    // The repair holds: a second open finds nothing more, and ids still continue.
    drop(buffer);
    let (mut buffer, report) = open(&config);
    assert_eq!((report.recovered, report.corrupt_records), (10, 0));
    assert_eq!(buffer.append(b"n").expect("append").id, RecordId(16));
}

#[test]
fn damage_in_the_newest_segment_is_counted_by_walking_its_headers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path());
    let (mut buffer, _) = open(&config);
    append_all(&mut buffer, 0..9); // newest segment holds ids 6-9
    drop(buffer);
    let newest = segments(dir.path()).pop().expect("segments");
    let mut bytes = fs::read(&newest).expect("read");
    bytes[(HEADER + 1) as usize] ^= 0x01; // id 6: the whole segment is lost
    fs::write(&newest, bytes).expect("write");

    let (mut buffer, report) = open(&config);
    assert_eq!((report.corrupt_records, report.recovered), (4, 5));
    assert_eq!(
        report.quarantined,
        vec![dir.path().join("quarantine/00000000000000000006.seg.0.bad")]
    );
    assert!(!newest.exists());
    assert_eq!(drain(&mut buffer).len(), 5);
    // Ids of the lost records are not issued again.
    assert_eq!(buffer.append(b"n").expect("append").id, RecordId(10));
}

#[test]
fn damage_found_while_reading_is_quarantined_and_reading_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut buffer, _) = open(&config(dir.path()));
    append_all(&mut buffer, 0..12);
    let first = segments(dir.path())[0].clone();
    let mut bytes = fs::read(&first).expect("read");
    bytes[(3 * RECORD + HEADER) as usize] ^= 0xff; // id 4
    fs::write(&first, bytes).expect("write");

    let ids: Vec<u64> = drain(&mut buffer).into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, vec![1, 2, 3, 6, 7, 8, 9, 10, 11, 12]);
    assert_eq!(
        buffer.dropped(),
        DropCounts {
            full: 0,
            corrupt: 2
        }
    );
    assert_eq!(buffer.len(), 10);
    assert!(
        dir.path()
            .join("quarantine/00000000000000000001.seg.57.bad")
            .exists()
    );
}

#[test]
fn a_segment_removed_behind_the_buffers_back_is_counted_as_lost_and_reading_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut buffer, _) = open(&config(dir.path()));
    append_all(&mut buffer, 0..12);
    assert_eq!(
        buffer.next_unsent().expect("read").map(|(id, _)| id),
        Some(RecordId(1))
    );
    fs::remove_file(&segments(dir.path())[1]).expect("remove");
    let ids: Vec<u64> = drain(&mut buffer).into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, vec![2, 3, 4, 5, 11, 12]);
    assert_eq!(
        buffer.dropped(),
        DropCounts {
            full: 0,
            corrupt: 5
        }
    );
    assert_eq!(buffer.len(), 7);
}

#[test]
fn the_cap_drops_the_oldest_segments_and_counts_exactly_what_is_no_longer_readable() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Three segments of five records fit.
    let config = BufferConfig {
        max_bytes: 15 * RECORD,
        ..config(dir.path())
    };
    let (mut buffer, _) = open(&config);
    let mut reported = 0;
    for i in 0..40 {
        reported += buffer.append(&payload(i)).expect("append").dropped_oldest;
    }
    assert!(buffer.bytes_on_disk() <= config.max_bytes + ledger::LEN as u64);
    let read = drain(&mut buffer);
    assert_eq!(buffer.dropped().full, 40 - read.len() as u64);
    assert_eq!(reported, buffer.dropped().full);
    assert_eq!(
        buffer.dropped(),
        DropCounts {
            full: 25,
            corrupt: 0
        }
    );
    // What is left is the newest, in order.
    assert_eq!(
        read,
        (25..40).map(|i| (i + 1, payload(i))).collect::<Vec<_>>()
    );
}

#[test]
fn acked_records_in_a_dropped_segment_are_not_counted_as_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = BufferConfig {
        max_bytes: 10 * RECORD,
        ..config(dir.path())
    };
    let (mut buffer, _) = open(&config);
    append_all(&mut buffer, 0..10);
    for id in [2, 4] {
        buffer.ack(RecordId(id)).expect("ack");
    }
    let outcome = buffer.append(&payload(10)).expect("append");
    assert_eq!(outcome.dropped_oldest, 3);
    assert_eq!(buffer.dropped().full, 3);
    assert_eq!(buffer.len(), 6);
    buffer
        .ack(RecordId(3))
        .expect("an ack of a dropped record is fine");
    assert_eq!(drain(&mut buffer).first().map(|(id, _)| *id), Some(6));
}

#[test]
fn records_that_cannot_fit_are_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut buffer, _) = open(&config(dir.path()));
    let too_big = vec![7u8; (5 * RECORD - HEADER + 1) as usize];
    let err = buffer.append(&too_big).expect_err("too large");
    assert!(
        matches!(
            err,
            BufferError::RecordTooLarge {
                len: 88,
                limit: 87,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains(&dir.path().display().to_string()));
    buffer
        .append(&too_big[1..])
        .expect("exactly one segment fits");
    assert!(matches!(
        buffer.append(b""),
        Err(BufferError::EmptyRecord { .. })
    ));
    let bad = BufferConfig {
        segment_bytes: 8,
        ..config(dir.path())
    };
    assert!(matches!(
        DiskBuffer::open(bad),
        Err(BufferError::InvalidConfig { .. })
    ));
}

#[test]
fn a_damaged_ledger_means_redelivery_not_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path());
    let (mut buffer, _) = open(&config);
    append_all(&mut buffer, 0..4);
    buffer.ack(RecordId(1)).expect("ack");
    drop(buffer);
    fs::write(dir.path().join("ledger"), b"garbage").expect("write");
    let (mut buffer, report) = open(&config);
    assert_eq!(report.recovered, 4);
    assert_eq!(buffer.append(b"n").expect("append").id, RecordId(5));
}

fn every_batch(dir: &Path) -> BufferConfig {
    BufferConfig {
        fsync: FsyncPolicy::EveryBatch,
        // Large segments: no roll syncs anything behind the test's back.
        segment_bytes: 1 << 16,
        ..config(dir)
    }
}

#[test]
fn a_sync_run_on_another_thread_covers_what_was_appended_before_it_started() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut buffer, _) = open(&every_batch(dir.path()));
    assert!(buffer.start_sync().expect("nothing to sync").is_none());
    append_all(&mut buffer, 0..3);
    let (ticket, job) = buffer
        .start_sync()
        .expect("start")
        .expect("3 records to sync");
    let synced = std::thread::spawn(move || job.run());
    // Appended while the fsync runs: not covered by it.
    append_all(&mut buffer, 3..5);
    let result = synced.join().expect("sync thread");
    buffer.finish_sync(ticket, result).expect("synced");
    let (ticket, job) = buffer
        .start_sync()
        .expect("start")
        .expect("the 2 later records still need a sync");
    buffer.finish_sync(ticket, job.run()).expect("synced");
    assert!(
        buffer.start_sync().expect("start").is_none(),
        "all 5 records are durable"
    );
    let read: Vec<Vec<u8>> = drain(&mut buffer).into_iter().map(|(_, p)| p).collect();
    assert_eq!(read, (0..5).map(payload).collect::<Vec<_>>());
}

#[test]
fn a_failed_sync_leaves_its_records_to_sync_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut buffer, _) = open(&every_batch(dir.path()));
    append_all(&mut buffer, 0..2);
    let (ticket, _job) = buffer.start_sync().expect("start").expect("to sync");
    let err = buffer
        .finish_sync(ticket, Err(io::Error::other("disk gone")))
        .expect_err("the failure is reported");
    assert!(
        matches!(
            err,
            BufferError::Io {
                op: "sync segment",
                ..
            }
        ),
        "{err}"
    );
    assert!(
        buffer.start_sync().expect("start").is_some(),
        "the records still await a sync"
    );
}

#[test]
fn acknowledgements_reach_the_ledger_only_when_recorded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut buffer, _) = open(&every_batch(dir.path()));
    let ids = append_all(&mut buffer, 0..4);
    buffer.flush().expect("flush");
    for id in &ids[..2] {
        buffer.ack(*id).expect("ack");
    }
    assert!(buffer.acks_unrecorded());
    // A sync makes appends durable and leaves the ledger alone.
    assert!(buffer.start_sync().expect("start").is_none());
    assert!(buffer.acks_unrecorded());
    buffer.record_acks().expect("ledger");
    assert!(!buffer.acks_unrecorded());
    drop(buffer);
    let (mut reopened, report) = open(&every_batch(dir.path()));
    assert_eq!(
        report.recovered, 2,
        "the 2 acknowledged records are not redelivered"
    );
    let read: Vec<Vec<u8>> = drain(&mut reopened).into_iter().map(|(_, p)| p).collect();
    assert_eq!(read, [payload(2), payload(3)]);
}
