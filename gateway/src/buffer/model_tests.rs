//! Model tests on [`MemFs`]: random operations, crashes included, against a plain queue.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

use super::ledger::Ledger;
use super::*;

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<u8>),
    Next,
    Ack(Index),
    Rewind,
    Flush,
    /// Drop the buffer and open it again: a process crash (the OS keeps what was written).
    Reopen,
    Close,
    /// Drop the buffer, lose unsynced data except this many 255ths of it, open again.
    Crash(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => vec(any::<u8>(), 1..24).prop_map(Op::Append),
        6 => Just(Op::Next),
        5 => any::<Index>().prop_map(Op::Ack),
        1 => Just(Op::Rewind),
        2 => Just(Op::Flush),
        1 => Just(Op::Reopen),
        1 => Just(Op::Close),
        2 => any::<u8>().prop_map(Op::Crash),
    ]
}

fn config(segment_bytes: u64, max_bytes: u64, fsync: FsyncPolicy) -> BufferConfig {
    BufferConfig {
        dir: PathBuf::from("/buffer"),
        max_bytes,
        segment_bytes,
        fsync,
    }
}

fn open(fs: &MemFs, config: &BufferConfig) -> (DiskBuffer<MemFs>, OpenReport) {
    DiskBuffer::open_with(fs.clone(), config.clone()).expect("open")
}

#[derive(Debug, Clone)]
struct Entry {
    id: u64,
    payload: Vec<u8>,
    acked: bool,
}

/// What the buffer should hold: every record neither dropped nor in the acknowledged prefix.
#[derive(Debug, Default)]
struct Model {
    records: VecDeque<Entry>,
    /// The next id `next_unsent` may hand out.
    cursor: u64,
    /// Every id ever issued, oldest first.
    issued: Vec<u64>,
    /// The payload last issued under each id.
    payloads: BTreeMap<u64, Vec<u8>>,
    dropped_full: u64,
}

impl Model {
    fn unacked(&self) -> Vec<(u64, Vec<u8>)> {
        self.records
            .iter()
            .filter(|e| !e.acked)
            .map(|e| (e.id, e.payload.clone()))
            .collect()
    }

    /// Every record above the acknowledged prefix, acknowledged or not: what a reopen that
    /// knows the prefix returns.
    fn above_prefix(&self) -> Vec<(u64, Vec<u8>)> {
        self.records
            .iter()
            .map(|e| (e.id, e.payload.clone()))
            .collect()
    }

    fn next(&mut self) -> Option<(u64, Vec<u8>)> {
        let entry = self
            .records
            .iter()
            .find(|e| !e.acked && e.id >= self.cursor)?;
        self.cursor = entry.id + 1;
        Some((entry.id, entry.payload.clone()))
    }

    fn ack(&mut self, id: u64) {
        if let Some(entry) = self.records.iter_mut().find(|e| e.id == id) {
            entry.acked = true;
        }
        self.trim();
    }

    fn trim(&mut self) {
        while self.records.front().is_some_and(|e| e.acked) {
            self.records.pop_front();
        }
    }

    /// The cap took the `n` oldest unacknowledged records; returns how many it could not find.
    fn drop_oldest(&mut self, mut n: u64) -> u64 {
        while n > 0 {
            let Some(entry) = self.records.pop_front() else {
                break;
            };
            n -= u64::from(!entry.acked);
        }
        self.trim();
        n
    }

    /// A reopened buffer holds `recovered`, none of it handed out.
    fn reopened(&mut self, recovered: &[(u64, Vec<u8>)]) {
        self.records = recovered
            .iter()
            .map(|(id, payload)| Entry {
                id: *id,
                payload: payload.clone(),
                acked: false,
            })
            .collect();
        self.cursor = 0;
        self.dropped_full = 0;
    }

    fn check(&self, buffer: &DiskBuffer<MemFs>) -> Result<(), TestCaseError> {
        let unacked = self.records.iter().filter(|e| !e.acked);
        prop_assert_eq!(buffer.len(), unacked.clone().count() as u64);
        prop_assert_eq!(
            buffer.unsent(),
            unacked.filter(|e| e.id >= self.cursor).count() as u64
        );
        prop_assert!(buffer.bytes_on_disk() <= buffer.config().max_bytes + ledger::LEN as u64);
        prop_assert_eq!(buffer.dropped().full, self.dropped_full);
        Ok(())
    }
}

/// Applies the operations that keep the buffer open; returns `false` for the others. Ids must
/// increase within a session; `exact_ids` also demands no gap across sessions.
fn apply(
    buffer: &mut DiskBuffer<MemFs>,
    model: &mut Model,
    op: &Op,
    exact_ids: bool,
) -> Result<bool, TestCaseError> {
    match op {
        Op::Append(payload) => {
            let expected = buffer.next_id();
            let outcome = buffer.append(payload).expect("append");
            prop_assert_eq!(outcome.id, expected);
            if exact_ids {
                prop_assert_eq!(outcome.id.0, model.issued.last().map_or(1, |last| last + 1));
            }
            prop_assert_eq!(model.drop_oldest(outcome.dropped_oldest), 0);
            model.dropped_full += outcome.dropped_oldest;
            let id = outcome.id.0;
            model.records.push_back(Entry {
                id,
                payload: payload.clone(),
                acked: false,
            });
            model.issued.push(id);
            model.payloads.insert(id, payload.clone());
        }
        Op::Next => {
            let got = buffer.next_unsent().expect("next").map(|(id, p)| (id.0, p));
            prop_assert_eq!(got, model.next());
        }
        Op::Ack(index) if !model.issued.is_empty() => {
            let id = model.issued[index.index(model.issued.len())];
            let result = buffer.ack(RecordId(id));
            if id >= buffer.next_id().0 {
                // Only after a power loss under `Never`, which may issue lost ids again.
                let unknown = matches!(result, Err(BufferError::UnknownRecord { .. }));
                prop_assert!(
                    unknown,
                    "ack of {} after ids were reissued: {:?}",
                    id,
                    result
                );
            } else {
                result.expect("ack");
                model.ack(id);
            }
        }
        Op::Ack(_) => {}
        Op::Rewind => {
            buffer.rewind();
            model.cursor = 0;
        }
        Op::Flush => buffer.flush().expect("flush"),
        Op::Reopen | Op::Close | Op::Crash(_) => return Ok(false),
    }
    Ok(true)
}

/// Everything a reopened buffer hands out, leaving its cursor at the start again.
fn contents(buffer: &mut DiskBuffer<MemFs>) -> Vec<(u64, Vec<u8>)> {
    let all = std::iter::from_fn(|| buffer.next_unsent().expect("next"))
        .map(|(id, p)| (id.0, p))
        .collect();
    buffer.rewind();
    all
}

/// Ends the session as `op` says and opens the buffer again.
fn end_session(
    buffer: DiskBuffer<MemFs>,
    op: &Op,
    fs: &MemFs,
    config: &BufferConfig,
) -> (DiskBuffer<MemFs>, OpenReport) {
    match op {
        Op::Close => buffer.close().expect("close"),
        Op::Crash(keep) => {
            drop(buffer);
            fs.crash(|_, unsynced| unsynced * usize::from(*keep) / 255);
        }
        _ => drop(buffer),
    }
    open(fs, config)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// With every record synced, a crash is no different from a clean reopen: every appended,
    /// unacknowledged record comes back, and only out-of-order acks are forgotten.
    #[test]
    fn every_record_policy_matches_a_queue_across_crashes(
        segment_bytes in 40u64..120,
        segments in 2u64..6,
        ops in vec(op(), 1..150),
    ) {
        let fs = MemFs::new();
        let config = config(segment_bytes, segment_bytes * segments, FsyncPolicy::EveryRecord);
        let (mut buffer, report) = open(&fs, &config);
        prop_assert_eq!(report, OpenReport::default());
        let mut model = Model::default();
        for op in &ops {
            if !apply(&mut buffer, &mut model, op, true)? {
                let expected = model.above_prefix();
                let report;
                (buffer, report) = end_session(buffer, op, &fs, &config);
                let recovered = expected.len() as u64;
                prop_assert_eq!(report, OpenReport { recovered, ..OpenReport::default() });
                prop_assert_eq!(contents(&mut buffer), expected.clone());
                model.reopened(&expected);
            }
            model.check(&buffer)?;
        }
    }

    /// Weaker policies: a process crash loses no record (acks since the last flush may come
    /// back); a power loss under `EveryBatch` keeps everything flushed, never resurrects what was
    /// acknowledged before the flush and never issues an id twice; under `Never` whatever comes
    /// back is still whole, unchanged and in order.
    #[test]
    fn weaker_policies_keep_their_crash_guarantees(
        every_batch in any::<bool>(),
        segment_bytes in 40u64..120,
        ops in vec(op(), 1..150),
    ) {
        let fsync = if every_batch { FsyncPolicy::EveryBatch } else { FsyncPolicy::Never };
        let fs = MemFs::new();
        let config = config(segment_bytes, 1 << 20, fsync);
        let (mut buffer, _) = open(&fs, &config);
        let mut model = Model::default();
        // Ids below `flushed` were appended before the last flush, and the ack position then.
        let (mut flushed, mut floor_at_flush) = (0, 1);
        // Ids up to this one may not be issued again (under `Never`, only since the last power
        // loss, which may take ids with the records).
        let (mut highest, mut counted) = (0, 0);
        for op in &ops {
            if apply(&mut buffer, &mut model, op, false)? {
                if matches!(op, Op::Flush) {
                    (flushed, floor_at_flush) = (buffer.next_id().0, buffer.ack_position() + 1);
                }
                model.check(&buffer)?;
                continue;
            }
            if matches!(op, Op::Close) {
                (flushed, floor_at_flush) = (buffer.next_id().0, buffer.ack_position() + 1);
            }
            let before = model.unacked();
            let above_prefix = model.above_prefix();
            highest = model.issued[counted..].iter().fold(highest, |h, id| h.max(*id));
            counted = model.issued.len();
            let report;
            (buffer, report) = end_session(buffer, op, &fs, &config);
            let recovered = contents(&mut buffer);
            prop_assert_eq!(report.recovered, recovered.len() as u64);
            prop_assert!(recovered.windows(2).all(|w| w[0].0 < w[1].0), "out of order");
            for (id, payload) in &recovered {
                prop_assert_eq!(Some(payload), model.payloads.get(id), "record {} changed", id);
            }
            let has = |id: u64| recovered.iter().any(|(r, _)| *r == id);
            let power_loss = matches!(op, Op::Crash(_));
            if !power_loss {
                prop_assert_eq!(report.corrupt_records, 0);
                prop_assert_eq!(report.truncated_tail_bytes, 0);
                for (id, _) in &before {
                    prop_assert!(has(*id), "record {} lost without a power loss", id);
                }
            }
            if matches!(op, Op::Close) {
                prop_assert_eq!(&recovered, &above_prefix);
            }
            if every_batch {
                prop_assert_eq!(report.corrupt_records, 0);
                prop_assert!(report.quarantined.is_empty());
                for (id, _) in before.iter().filter(|(id, _)| *id < flushed) {
                    prop_assert!(has(*id), "flushed record {} lost", id);
                }
                prop_assert!(recovered.iter().all(|(id, _)| *id >= floor_at_flush), "acked record back");
            }
            if every_batch || !power_loss {
                prop_assert!(buffer.next_id().0 > highest, "id {} may be issued twice", highest);
            }
            if power_loss && !every_batch {
                highest = buffer.next_id().0 - 1;
            }
            if power_loss {
                // Whatever survived is on stable storage now, and so is the ledger it was read with.
                (flushed, floor_at_flush) = (buffer.next_id().0, buffer.ack_position() + 1);
            }
            model.reopened(&recovered);
            model.check(&buffer)?;
        }
    }

    /// Valid records with damage and garbage in arbitrary segment files, any ledger: opening
    /// never fails or panics, and what it recovers can be read, acknowledged and appended to.
    #[test]
    fn any_directory_content_opens_and_stays_usable(
        files in vec(
            (1u64..60, vec(vec(any::<u8>(), 1..12), 0..6), vec((any::<Index>(), 1u8..), 0..3), vec(any::<u8>(), 0..12)),
            0..5,
        ),
        ledger_content in prop_oneof![
            Just(None),
            vec(any::<u8>(), 0..40).prop_map(Some),
            (0u64..80, 0u64..100).prop_map(|(a, n)| Some(Ledger { acked_through: a, next_id: n }.encode().to_vec())),
        ],
        fsync in prop_oneof![Just(FsyncPolicy::EveryRecord), Just(FsyncPolicy::EveryBatch), Just(FsyncPolicy::Never)],
    ) {
        let fs = MemFs::new();
        let config = config(64, 1 << 20, fsync);
        let mut record = Vec::new();
        for (first_id, payloads, flips, garbage) in &files {
            let mut bytes = Vec::new();
            for payload in payloads {
                segment::encode(&mut record, payload);
                bytes.extend_from_slice(&record);
            }
            if !bytes.is_empty() {
                for (at, mask) in flips {
                    let at = at.index(bytes.len());
                    bytes[at] ^= mask;
                }
            }
            bytes.extend_from_slice(garbage);
            fs.set_contents(&config.dir.join(segment::file_name(*first_id)), bytes);
        }
        if let Some(content) = ledger_content {
            fs.set_contents(&ledger::path(&config.dir), content);
        }
        let (mut buffer, report) = open(&fs, &config);
        let recovered = contents(&mut buffer);
        prop_assert_eq!(report.recovered, recovered.len() as u64);
        prop_assert_eq!(buffer.len(), recovered.len() as u64);
        prop_assert!(recovered.windows(2).all(|w| w[0].0 < w[1].0));
        prop_assert_eq!(buffer.dropped().corrupt, report.corrupt_records);
        let appended = buffer.append(b"new").expect("append").id;
        prop_assert!(recovered.iter().all(|(id, _)| RecordId(*id) < appended));
        for (id, _) in &recovered {
            buffer.ack(RecordId(*id)).expect("ack");
        }
        prop_assert_eq!(buffer.next_unsent().expect("next"), Some((appended, b"new".to_vec())));
        buffer.ack(appended).expect("ack");
        prop_assert!(buffer.is_empty());
        buffer.close().expect("close");
        let (buffer, report) = open(&fs, &config);
        prop_assert_eq!((report.recovered, report.corrupt_records), (0, 0));
        prop_assert!(buffer.next_id() > appended);
    }
}
