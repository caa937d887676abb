//! Disk errors injected with [`FaultyFs`] on [`MemFs`]: a failed append leaves nothing
//! visible, work a failed flush could not do is done by the next one, and a writer that holds
//! failed records and retries them (as the gateway's core does) loses none, in order.

use std::path::{Path, PathBuf};

use proptest::collection::vec;
use proptest::prelude::*;

use super::*;

fn config(fsync: FsyncPolicy) -> BufferConfig {
    BufferConfig {
        dir: PathBuf::from("/buffer"),
        max_bytes: 1 << 20,
        // Four 11-byte records (19 bytes framed) per segment, so faults hit segment rolls too.
        segment_bytes: 4 * 19,
        fsync,
    }
}

fn open(mem: &MemFs, switch: &FaultSwitch, config: &BufferConfig) -> DiskBuffer<FaultyFs<MemFs>> {
    let fs = FaultyFs::new(mem.clone(), switch.clone());
    DiskBuffer::open_with(fs, config.clone()).expect("open").0
}

fn payload(i: u32) -> Vec<u8> {
    format!("record-{i:04}").into_bytes()
}

fn drain<F: Fs>(buffer: &mut DiskBuffer<F>) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| buffer.next_unsent().expect("read"))
        .map(|(_, p)| p)
        .collect()
}

/// Bytes of every segment file, which must equal what the buffer knows it holds.
fn segment_bytes_on_disk(mem: &MemFs, dir: &Path) -> u64 {
    mem.files()
        .iter()
        .filter(|p| p.parent() == Some(dir) && p.extension().is_some_and(|e| e == "seg"))
        .map(|p| mem.contents(p).map_or(0, |c| c.len() as u64))
        .sum()
}

#[test]
fn an_append_that_fails_on_a_full_disk_is_not_queued_and_leaves_no_bytes() {
    let (mem, switch) = (MemFs::new(), FaultSwitch::new());
    let config = config(FsyncPolicy::EveryBatch);
    let mut buffer = open(&mem, &switch, &config);
    for i in 0..3 {
        buffer.append(&payload(i)).expect("append");
    }
    switch.set(Some(Fault::NoSpace));
    let err = buffer.append(&payload(3)).expect_err("disk full");
    assert!(err.to_string().contains("No space left on device"), "{err}");
    assert_eq!(buffer.len(), 3);
    assert_eq!(buffer.next_id(), RecordId(4), "no id spent on it");
    switch.set(None);
    buffer.append(&payload(3)).expect("space again");
    buffer.flush().expect("flush");
    assert_eq!(segment_bytes_on_disk(&mem, &config.dir), 4 * 19);
    assert_eq!(drain(&mut buffer), (0..4).map(payload).collect::<Vec<_>>());
}

#[test]
fn torn_bytes_that_cannot_be_cut_at_once_stay_invisible_and_the_next_flush_cuts_them() {
    let (mem, switch) = (MemFs::new(), FaultSwitch::new());
    let config = config(FsyncPolicy::EveryBatch);
    let mut buffer = open(&mem, &switch, &config);
    buffer.append(&payload(0)).expect("append");
    buffer.flush().expect("flush");
    // EIO: the append tears half a record and the undo (a truncate) fails too.
    switch.set(Some(Fault::Io));
    buffer.append(&payload(1)).expect_err("EIO");
    assert!(buffer.has_torn_tail());
    buffer.flush().expect_err("still EIO");
    assert!(
        segment_bytes_on_disk(&mem, &config.dir) > 19,
        "the torn bytes are on disk"
    );
    assert_eq!(drain(&mut buffer), [payload(0)], "but never read");
    switch.set(None);
    buffer
        .append(&payload(1))
        .expect("append again, in a new segment");
    buffer.flush().expect("the retry cuts the torn bytes");
    assert!(!buffer.has_torn_tail());
    assert_eq!(segment_bytes_on_disk(&mem, &config.dir), 2 * 19);
    buffer.rewind();
    assert_eq!(drain(&mut buffer), [payload(0), payload(1)]);

    // A reopen sees no damage: nothing quarantined, nothing counted lost.
    drop(buffer);
    let (mut buffer, report) =
        DiskBuffer::open_with(FaultyFs::new(mem.clone(), switch), config).expect("reopen");
    assert_eq!(
        (
            report.recovered,
            report.corrupt_records,
            report.quarantined.len()
        ),
        (2, 0, 0)
    );
    assert_eq!(drain(&mut buffer), [payload(0), payload(1)]);
}

#[test]
fn a_flush_that_failed_is_completed_by_the_next_one_so_a_power_loss_keeps_the_batch() {
    for fault in [Fault::Io, Fault::TooManyFiles] {
        let (mem, switch) = (MemFs::new(), FaultSwitch::new());
        let config = config(FsyncPolicy::EveryBatch);
        let mut buffer = open(&mem, &switch, &config);
        // Six records: the second segment (a new file, a directory entry) is not yet synced.
        for i in 0..6 {
            buffer.append(&payload(i)).expect("append");
        }
        switch.set(Some(fault));
        buffer.flush().expect_err("the fault hits the flush");
        switch.set(None);
        buffer.flush().expect("the retry");
        drop(buffer);
        mem.crash_losing_unsynced();
        let (mut buffer, report) =
            DiskBuffer::open_with(FaultyFs::new(mem.clone(), switch), config).expect("reopen");
        assert_eq!(
            (report.recovered, report.corrupt_records),
            (6, 0),
            "{fault:?}"
        );
        assert_eq!(drain(&mut buffer), (0..6).map(payload).collect::<Vec<_>>());
    }
}

#[test]
fn an_ack_whose_ledger_write_fails_is_stored_by_the_next_flush() {
    let (mem, switch) = (MemFs::new(), FaultSwitch::new());
    let config = config(FsyncPolicy::EveryRecord);
    let mut buffer = open(&mem, &switch, &config);
    let ids: Vec<RecordId> = (0..3)
        .map(|i| buffer.append(&payload(i)).expect("append").id)
        .collect();
    switch.set(Some(Fault::NoSpace));
    buffer
        .ack(ids[0])
        .expect_err("the ledger cannot be written");
    buffer.ack(ids[1]).expect_err("still full");
    switch.set(None);
    buffer.flush().expect("flush writes the ledger");
    drop(buffer);
    let (buffer, report) =
        DiskBuffer::open_with(FaultyFs::new(mem.clone(), switch), config).expect("reopen");
    assert_eq!((report.recovered, buffer.ack_position()), (1, 2));
}

#[derive(Debug, Clone)]
enum Step {
    /// A sample arrives: appended, or held behind earlier held ones.
    Sample,
    /// The sender takes the next record and the hub acknowledges it.
    Forward,
    /// The group commit: append what is held, then flush; on success the batch counts as
    /// stored.
    Commit,
    /// The disk starts or stops failing.
    Fault(Option<Fault>),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => Just(Step::Sample),
        3 => Just(Step::Forward),
        3 => Just(Step::Commit),
        1 => Just(Step::Fault(None)),
        1 => Just(Step::Fault(Some(Fault::Io))),
        1 => Just(Step::Fault(Some(Fault::NoSpace))),
        1 => Just(Step::Fault(Some(Fault::TooManyFiles))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The core's protocol on a failing disk: whatever fails when, every sample is forwarded
    /// exactly once and in order once the disk works again, and a reopen finds no damage.
    #[test]
    fn holding_and_retrying_loses_no_sample_and_keeps_their_order(
        steps in vec(step(), 1..120),
        fsync in prop_oneof![Just(FsyncPolicy::EveryBatch), Just(FsyncPolicy::EveryRecord)],
    ) {
        let (mem, switch) = (MemFs::new(), FaultSwitch::new());
        let config = config(fsync);
        let mut buffer = open(&mem, &switch, &config);
        let mut held: std::collections::VecDeque<u32> = Default::default();
        let (mut sent, mut forwarded) = (0u32, Vec::new());
        let store_held = |buffer: &mut DiskBuffer<FaultyFs<MemFs>>,
                          held: &mut std::collections::VecDeque<u32>| {
            while let Some(&i) = held.front() {
                buffer.append(&payload(i))?;
                held.pop_front();
            }
            Ok::<(), BufferError>(())
        };
        for step in steps {
            match step {
                Step::Sample => {
                    held.push_back(sent);
                    sent += 1;
                    let _ = store_held(&mut buffer, &mut held);
                }
                Step::Forward => {
                    if let Ok(Some((id, bytes))) = buffer.next_unsent() {
                        forwarded.push(bytes);
                        // An ack that cannot reach the ledger yet is kept for the next flush.
                        let _ = buffer.ack(id);
                    }
                }
                Step::Commit => {
                    let _ = store_held(&mut buffer, &mut held).and_then(|()| buffer.flush());
                }
                Step::Fault(fault) => switch.set(fault),
            }
        }
        switch.set(None);
        store_held(&mut buffer, &mut held).expect("store once the disk works");
        buffer.flush().expect("flush once the disk works");
        forwarded.extend(drain(&mut buffer));
        prop_assert_eq!(&forwarded, &(0..sent).map(payload).collect::<Vec<_>>());

        // What is on disk is exactly what the buffer knows: a reopen quarantines nothing.
        let unacked = buffer.len();
        drop(buffer);
        let (_, report) = DiskBuffer::open_with(FaultyFs::new(mem.clone(), switch), config)
            .expect("reopen");
        prop_assert_eq!(report.corrupt_records, 0);
        prop_assert!(report.quarantined.is_empty());
        prop_assert_eq!(report.truncated_tail_bytes, 0);
        prop_assert_eq!(report.recovered, unacked);
    }
}
