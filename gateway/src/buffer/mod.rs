//! The store-and-forward disk buffer: a crash-safe, ordered queue of opaque records on disk.
//!
//! While the uplink or the primary host is down the gateway appends serialized DDATA payloads
//! here, and replays them in order once it is back: [`DiskBuffer::next_unsent`] hands records
//! out, [`DiskBuffer::ack`] retires them, [`DiskBuffer::rewind`] after a reconnect hands out
//! everything unacknowledged again, [`DiskBuffer::flush`] runs periodically and
//! [`DiskBuffer::close`] at shutdown. Delivery is at least once. The cap and corruption are the
//! only ways a record is lost, and both are counted ([`DiskBuffer::dropped`]) and logged at
//! `ERROR`. What survives a power loss depends on the [`FsyncPolicy`].
//!
//! # On-disk format
//!
//! One directory per buffer, used by one `DiskBuffer` at a time:
//!
//! - **Segments**, `{first_id:020}.seg` (zero-padded, so name order is id order): records with
//!   contiguous ids from `first_id`, back to back, each
//!   `[len: u32 LE][crc: u32 LE][payload: len bytes]`, `crc` being CRC-32C (iSCSI) of the
//!   payload. `len` is never 0, so zeroed space never reads as a record. Appends go to the newest
//!   segment until the next record would take it past `segment_bytes`.
//! - **`ledger`**, 28 bytes: `b"DLBUFLG1"`, `acked_through: u64 LE` (every id up to it is
//!   acknowledged), `next_id: u64 LE` (no id below it is issued again), then CRC-32C of those 24
//!   bytes. Replaced atomically: written to `ledger.tmp`, then renamed over `ledger`.
//! - **`quarantine/`**: damaged data moved aside for inspection,
//!   `{segment file name}.{offset}.bad` holding the segment's bytes from `offset` on.
//!
//! Ids start at 1 and only grow; there may be gaps between segments (ids lost to damage, or
//! reserved but never issued). A segment is deleted once every record in it is acknowledged
//! (acks may arrive out of order; the ledger keeps the contiguous acknowledged prefix), or dropped
//! whole, oldest first, when an append would take the segments past `max_bytes`.
//!
//! # Recovery
//!
//! Opening reads the ledger and scans every segment:
//!
//! - a partial record (or zeros) at the end of the newest segment is what a crash during an
//!   append leaves: it is cut off and reported in [`OpenReport::truncated_tail_bytes`];
//! - anything else that is not a whole record with a matching CRC — in the middle of a segment,
//!   or at the end of an older one — is corruption: the segment's bytes from there on move to
//!   `quarantine/`, and the unacknowledged records they held are counted and logged at `ERROR`.
//!   The count walks the damaged records' headers, which is exact when only payload bytes are
//!   damaged; for an older segment it is bounded by where the next segment's ids begin, and
//!   that bound is used when a damaged header stops the walk. Later segments are read as usual.
//!
//! Damage found later, while reading, is handled the same way. No file content makes the buffer
//! panic or refuse to open.

mod faulty;
mod fs;
mod ledger;
mod read;
mod recover;
mod segment;
mod write;

#[cfg(test)]
mod fault_tests;
#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use tracing::warn;

pub use faulty::{Fault, FaultSwitch, FaultyFs};
pub use fs::{DynFs, Fs, FsFactory, MemFs, RealFs, SyncJob};
use segment::{HEADER, ReadCache, Segment};

/// Default cap on the bytes of all segments.
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// Default size of one segment file.
pub const DEFAULT_SEGMENT_BYTES: u64 = 8 * 1024 * 1024;
/// The first id of a fresh buffer.
const FIRST_ID: u64 = 1;
/// Under [`FsyncPolicy::EveryBatch`] ids are reserved in the ledger this many at a time, so a
/// record lost in a power failure never has its id issued again, at one fsync per block.
const ID_RESERVATION: u64 = 4096;
const QUARANTINE_DIR: &str = "quarantine";

/// Where the buffer lives and how big and how durable it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferConfig {
    /// The buffer's own directory (created if missing).
    pub dir: PathBuf,
    /// Cap on the bytes of all segments; appending past it drops the oldest segments.
    pub max_bytes: u64,
    /// Size of one segment file; the unit of deletion and of dropping.
    pub segment_bytes: u64,
    /// When data is forced to stable storage.
    pub fsync: FsyncPolicy,
}

impl BufferConfig {
    /// The defaults: 256 MiB cap, 8 MiB segments, [`FsyncPolicy::EveryBatch`].
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            max_bytes: DEFAULT_MAX_BYTES,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            fsync: FsyncPolicy::default(),
        }
    }

    fn validate(&self) -> Result<(), BufferError> {
        let reason = if self.segment_bytes <= HEADER {
            "segment_bytes must exceed the 8-byte record header"
        } else if self.max_bytes <= HEADER {
            "max_bytes must exceed the 8-byte record header"
        } else {
            return Ok(());
        };
        Err(BufferError::InvalidConfig {
            dir: self.dir.clone(),
            reason,
        })
    }
}

/// When the buffer fsyncs, and so what survives a crash.
///
/// Records reach the OS before `append` returns (no user-space buffering), so a *process* crash
/// loses no appended record under any policy. Acknowledgements are at least once: those not yet
/// in the ledger when a crash comes are redelivered, never lost (a segment is only deleted once
/// all its records are acknowledged, so that redelivery is at most about one segment's worth).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// `append` returns after the record is fsynced; `ack` after the ledger is, when the
    /// acknowledged prefix advanced. A power loss loses no appended record and redelivers only
    /// records acknowledged out of order (beyond the contiguous prefix). Two fsyncs per append
    /// or advancing ack: for low rates.
    EveryRecord,
    /// Fsync on [`DiskBuffer::flush`] (and when a segment fills): records appended and
    /// acknowledgements made before the last successful flush survive a power loss. Later records
    /// may be lost — only the newest, never a gap — and later acks are redelivered. Ids are
    /// reserved durably in blocks, so none is issued twice; after a crash they jump. Call
    /// [`DiskBuffer::close`] on shutdown to continue without a jump.
    #[default]
    EveryBatch,
    /// Never fsync; [`DiskBuffer::flush`] writes the ledger without syncing it. A power loss may
    /// lose or damage anything the OS had not written back: damaged segments are quarantined, a
    /// lost ledger means redelivery, and ids of lost records may be issued again.
    Never,
}

/// A record's id: issued in increasing order, monotonic across restarts and never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordId(pub u64);

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What [`DiskBuffer::append`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    /// The new record's id.
    pub id: RecordId,
    /// Unacknowledged records dropped (oldest first) to keep under the cap.
    pub dropped_oldest: u64,
}

/// What a [`SyncJob`] from [`DiskBuffer::start_sync`] covers; hand it back to
/// [`DiskBuffer::finish_sync`] with the job's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncTicket {
    /// The segment being synced.
    segment: u64,
    path: PathBuf,
    /// [`DiskBuffer`]'s append count when the sync started.
    appends: u64,
}

/// Unacknowledged records lost since the buffer was opened, by cause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounts {
    /// Dropped by the cap to make room for newer records.
    pub full: u64,
    /// Lost in quarantined data (at open or while reading).
    pub corrupt: u64,
}

/// What opening found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Unacknowledged records available for replay.
    pub recovered: u64,
    /// Files written to (or moved into) `quarantine/`.
    pub quarantined: Vec<PathBuf>,
    /// Unacknowledged records lost in quarantined data.
    pub corrupt_records: u64,
    /// Bytes of a partly written last record cut off the newest segment.
    pub truncated_tail_bytes: u64,
}

/// Why a buffer operation failed. Each names the buffer directory or the file involved.
#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    /// A file operation failed.
    #[error("disk buffer: cannot {op} {}: {source}", path.display())]
    Io {
        /// What the buffer was doing.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The record would not fit in one segment or under the cap.
    #[error(
        "disk buffer {}: a record of {len} bytes is larger than the {limit} bytes that fit \
         (segment_bytes and max_bytes less the 8-byte header)",
        dir.display()
    )]
    RecordTooLarge {
        /// The buffer directory.
        dir: PathBuf,
        /// The record's length.
        len: usize,
        /// The largest record that fits.
        limit: u64,
    },
    /// Empty records are not stored (a zero length marks unwritten space on disk).
    #[error("disk buffer {}: empty records cannot be stored", dir.display())]
    EmptyRecord {
        /// The buffer directory.
        dir: PathBuf,
    },
    /// The configuration cannot work.
    #[error("disk buffer {}: {reason}", dir.display())]
    InvalidConfig {
        /// The buffer directory.
        dir: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// Every id up to `u64::MAX` has been issued (only a crafted ledger or file name gets here).
    #[error("disk buffer {}: record ids exhausted", dir.display())]
    IdsExhausted {
        /// The buffer directory.
        dir: PathBuf,
    },
    /// An ack for an id this buffer never issued.
    #[error("disk buffer {}: ack for record {id}, which was never issued (next id {next})", dir.display())]
    UnknownRecord {
        /// The buffer directory.
        dir: PathBuf,
        /// The acknowledged id.
        id: u64,
        /// The id the next append gets.
        next: u64,
    },
}

fn io_err(op: &'static str, path: &Path, source: io::Error) -> BufferError {
    BufferError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Where [`DiskBuffer::next_unsent`] reads next: record `id` at `offset` in the segment starting
/// at `segment`. It may name a segment that is gone; reading then resumes at the next one.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    segment: u64,
    offset: u64,
    id: u64,
}

impl Cursor {
    fn start(segment: &Segment) -> Self {
        Self {
            segment: segment.first_id,
            offset: 0,
            id: segment.first_id,
        }
    }

    /// Before the segment that will start at `id`.
    fn at(id: u64) -> Self {
        Self {
            segment: id,
            offset: 0,
            id,
        }
    }
}

/// A disk-backed, crash-safe FIFO of opaque records; see the [module docs](self) for the format
/// and guarantees. Synchronous: call it from a blocking context.
#[derive(Debug)]
pub struct DiskBuffer<F: Fs = RealFs> {
    fs: F,
    config: BufferConfig,
    /// Oldest first; ids increase across them, with gaps where data was lost.
    segments: VecDeque<Segment>,
    next_id: u64,
    /// Every id below it is acknowledged, dropped or lost.
    floor: u64,
    /// Acknowledged ids at or above `floor` (out-of-order acks), all held by some segment.
    acked: BTreeSet<u64>,
    cursor: Cursor,
    cache: ReadCache,
    scratch: Vec<u8>,
    dropped: DropCounts,
    /// The `next_id` the ledger holds.
    stored_next_id: u64,
    /// The floor advanced since the ledger was written (deferred to `flush` unless EveryRecord).
    ledger_dirty: bool,
    /// The segment with appends not yet fsynced ([`FsyncPolicy::EveryBatch`]).
    unsynced: Option<u64>,
    /// Appends since open: tells [`DiskBuffer::finish_sync`] whether more came after its start.
    appends: u64,
    /// Files were created or removed since the directory was fsynced.
    dir_unsynced: bool,
    /// Segment files holding the bytes of a failed append past their known length, newest last.
    torn: Vec<TornTail>,
}

/// The bytes a failed append left after `len` in `path`, to cut off.
#[derive(Debug)]
struct TornTail {
    path: PathBuf,
    len: u64,
}

impl DiskBuffer<RealFs> {
    /// Opens (or creates) the buffer in `config.dir`, recovering what a crash left.
    pub fn open(config: BufferConfig) -> Result<(Self, OpenReport), BufferError> {
        Self::open_with(RealFs::new(), config)
    }
}

impl<F: Fs> DiskBuffer<F> {
    /// Acknowledges a record, in any order. Acknowledging one twice, or one already dropped, is
    /// fine. When the contiguous acknowledged prefix advances, segments it covers are deleted and
    /// it is written to the ledger: now under [`FsyncPolicy::EveryRecord`], else at the next
    /// [`flush`](Self::flush).
    pub fn ack(&mut self, id: RecordId) -> Result<(), BufferError> {
        let id = id.0;
        if id >= self.next_id {
            let dir = self.config.dir.clone();
            return Err(BufferError::UnknownRecord {
                dir,
                id,
                next: self.next_id,
            });
        }
        if id < self.floor || !self.holds(id) || !self.acked.insert(id) {
            return Ok(());
        }
        if self.settle_floor() {
            self.floor_advanced()?;
        }
        Ok(())
    }

    /// Unacknowledged records.
    pub fn len(&self) -> u64 {
        self.records_from(self.floor)
            .saturating_sub(self.acked.len() as u64)
    }

    /// Whether every record is acknowledged (or gone).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Unacknowledged records not yet handed out by [`next_unsent`](Self::next_unsent).
    pub fn unsent(&self) -> u64 {
        let from = self.cursor.id.max(self.floor);
        let acked = self.acked.range(from..).count() as u64;
        self.records_from(from).saturating_sub(acked)
    }

    /// Bytes of the segments and the ledger (not of quarantined files).
    pub fn bytes_on_disk(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum::<u64>() + ledger::LEN as u64
    }

    /// Records lost since open.
    pub fn dropped(&self) -> DropCounts {
        self.dropped
    }

    /// Every id up to this one is acknowledged (or gone); 0 before the first.
    pub fn ack_position(&self) -> u64 {
        self.floor - 1
    }

    /// The id the next append gets.
    pub fn next_id(&self) -> RecordId {
        RecordId(self.next_id)
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &BufferConfig {
        &self.config
    }

    /// Records with ids at or above `from`, acknowledged or not.
    fn records_from(&self, from: u64) -> u64 {
        self.segments
            .iter()
            .map(|s| s.end().saturating_sub(s.first_id.max(from)))
            .sum()
    }

    fn unacked_between(&self, from: u64, to: u64) -> u64 {
        let from = from.max(self.floor);
        if to <= from {
            return 0;
        }
        (to - from) - self.acked.range(from..to).count() as u64
    }

    fn holds(&self, id: u64) -> bool {
        let after = self.segments.partition_point(|s| s.first_id <= id);
        after > 0 && self.segments[after - 1].holds(id)
    }

    /// Advances the floor over acknowledged ids and over ids no segment holds; true if it moved.
    fn settle_floor(&mut self) -> bool {
        let before = self.floor;
        loop {
            if self.acked.first() == Some(&self.floor) {
                self.acked.pop_first();
                self.floor += 1;
                continue;
            }
            let floor = self.floor;
            let next_held = self
                .segments
                .iter()
                .find(|s| s.end() > floor)
                .map_or(self.next_id, |s| s.first_id.max(floor));
            if next_held <= floor {
                break;
            }
            self.floor = next_held;
            self.acked = self.acked.split_off(&next_held);
        }
        self.floor != before
    }

    /// After the floor advanced: write the ledger now (EveryRecord) or at the next flush, then
    /// delete covered segments. Deleting before the ledger is written is safe — a deleted segment
    /// held only acknowledged records, and a stale ledger only means redelivery — except for the
    /// newest segment, the only other record of the next id (unless ids are reserved ahead).
    fn floor_advanced(&mut self) -> Result<(), BufferError> {
        let newest_goes = self.segments.back().is_none_or(|s| s.end() <= self.floor);
        let next_id_unrecorded = newest_goes && self.stored_next_id < self.next_id;
        if self.config.fsync == FsyncPolicy::EveryRecord || next_id_unrecorded {
            if let Err(err) = self.store_ledger(self.stored_next_id) {
                // Keep the segments (the newest may be the only record of the next id) until a
                // flush gets the ledger written.
                self.ledger_dirty = true;
                return Err(err);
            }
        } else {
            self.ledger_dirty = true;
        }
        self.remove_acked_segments();
        Ok(())
    }

    fn remove_acked_segments(&mut self) {
        while self.segments.front().is_some_and(|s| s.end() <= self.floor) {
            let Some(segment) = self.segments.pop_front() else {
                break;
            };
            self.cache.forget(segment.first_id);
            self.dir_unsynced = true;
            match self.fs.remove(&segment.path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => warn!(
                    path = %segment.path.display(), error = %e,
                    "disk buffer: cannot delete an acknowledged segment; the next open will"
                ),
                _ => {}
            }
        }
    }
}
