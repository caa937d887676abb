//! The store-and-forward disk buffer: a crash-safe, ordered queue of opaque records on disk.
//!
//! While the uplink or the primary host is down the gateway appends serialized DDATA payloads
//! here, and replays them in order once it is back. Delivery is at least once: a record is handed
//! out again (after [`DiskBuffer::rewind`] or a reopen) until it is acknowledged. The cap and
//! corruption are the only ways a record is lost, and both are counted ([`DiskBuffer::dropped`])
//! and logged at `ERROR`.
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
//! Ids start at 1 and only grow. A segment is deleted once every record in it is acknowledged
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
//!   `quarantine/`, the unacknowledged records they held are counted (exactly for older segments,
//!   whose id range ends where the next begins; by walking the damaged headers for the newest)
//!   and logged at `ERROR`. Later segments are read as usual.
//!
//! Damage found later, while reading, is handled the same way. No file content makes the buffer
//! panic or refuse to open.

mod fs;
mod ledger;
mod recover;
mod segment;

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use tracing::{error, warn};

pub use fs::{Fs, MemFs, RealFs};
use ledger::Ledger;
use segment::{HEADER, Header, ReadCache, Segment};

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

/// When the buffer fsyncs, and so what survives a crash. Records and ledger updates always reach
/// the OS before the call that made them returns (no user-space buffering), so a *process* crash
/// loses no appended record under any policy; the policies differ on power loss or kernel crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// `append` returns after the record is fsynced, `ack` after the ledger is (when the
    /// acknowledged prefix advanced). A power loss loses no appended record and redelivers only
    /// records acknowledged out of order (beyond the contiguous prefix). An fsync per append.
    EveryRecord,
    /// Fsync on [`DiskBuffer::flush`]: records appended and acknowledgements made before the last
    /// successful flush survive a power loss. Later records may be lost — only the newest, never a
    /// gap — and later acks are redelivered (also after a process crash: the ledger is written at
    /// flush). Ids are reserved durably in blocks, so none is issued twice; after a crash they
    /// jump. Call [`DiskBuffer::close`] on shutdown.
    #[default]
    EveryBatch,
    /// Never fsync; the ledger is rewritten (unsynced) whenever the acknowledged prefix advances.
    /// A power loss may lose or damage anything the OS had not written back: damaged segments are
    /// quarantined, a lost ledger means redelivery, and ids of lost records may be issued again.
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
    /// The floor advanced since the ledger was written (only [`FsyncPolicy::EveryBatch`] defers).
    ledger_dirty: bool,
    /// The segment with appends not yet fsynced ([`FsyncPolicy::EveryBatch`]).
    unsynced: Option<u64>,
    /// Files were created or removed since the directory was fsynced.
    dir_unsynced: bool,
}

impl DiskBuffer<RealFs> {
    /// Opens (or creates) the buffer in `config.dir`, recovering what a crash left.
    pub fn open(config: BufferConfig) -> Result<(Self, OpenReport), BufferError> {
        Self::open_with(RealFs::new(), config)
    }
}

impl<F: Fs> DiskBuffer<F> {
    /// Appends a record, dropping the oldest segments first if it would not fit under the cap.
    /// On an error the record is not queued.
    pub fn append(&mut self, record: &[u8]) -> Result<AppendOutcome, BufferError> {
        if record.is_empty() {
            return Err(BufferError::EmptyRecord {
                dir: self.config.dir.clone(),
            });
        }
        let limit = self
            .config
            .segment_bytes
            .min(self.config.max_bytes)
            .min(HEADER + u64::from(u32::MAX));
        let size = HEADER + record.len() as u64;
        if size > limit {
            let (dir, len) = (self.config.dir.clone(), record.len());
            return Err(BufferError::RecordTooLarge {
                dir,
                len,
                limit: limit - HEADER,
            });
        }
        if self.next_id == u64::MAX {
            return Err(BufferError::IdsExhausted {
                dir: self.config.dir.clone(),
            });
        }
        let dropped_oldest = self.make_room(size)?;
        if self.config.fsync == FsyncPolicy::EveryBatch && self.next_id >= self.stored_next_id {
            self.store_ledger(self.next_id.saturating_add(ID_RESERVATION))?;
        }
        let created = self.roll(size)?;
        self.write(record, created)?;
        let id = RecordId(self.next_id);
        self.next_id += 1;
        Ok(AppendOutcome { id, dropped_oldest })
    }

    /// Under [`FsyncPolicy::EveryBatch`], makes everything appended and acknowledged so far
    /// durable; a no-op under the other policies.
    pub fn flush(&mut self) -> Result<(), BufferError> {
        if self.config.fsync != FsyncPolicy::EveryBatch {
            return Ok(());
        }
        if let Some(first_id) = self.unsynced {
            if let Some(segment) = self.segments.iter().find(|s| s.first_id == first_id) {
                self.fs
                    .sync(&segment.path)
                    .map_err(|e| io_err("sync segment", &segment.path, e))?;
            }
            self.unsynced = None;
        }
        if self.dir_unsynced {
            let dir = &self.config.dir;
            self.fs
                .sync_dir(dir)
                .map_err(|e| io_err("sync directory", dir, e))?;
            self.dir_unsynced = false;
        }
        if self.ledger_dirty {
            self.store_ledger(self.stored_next_id)?;
        }
        Ok(())
    }

    /// Flushes and records the exact next id, so a reopen continues without an id gap.
    pub fn close(mut self) -> Result<(), BufferError> {
        self.flush()?;
        self.store_ledger(0)
    }

    /// The oldest record not yet handed out (and not acknowledged), advancing the send cursor.
    /// After open or [`rewind`](Self::rewind) that is the oldest unacknowledged record.
    pub fn next_unsent(&mut self) -> Result<Option<(RecordId, Vec<u8>)>, BufferError> {
        loop {
            let Some(index) = self.cursor_segment() else {
                return Ok(None);
            };
            let Cursor { offset, id, .. } = self.cursor;
            let segment = &self.segments[index];
            let (first_id, end, bytes) = (segment.first_id, segment.end(), segment.bytes);
            let header = self
                .cache
                .get(&mut self.fs, segment, offset, HEADER)
                .map_err(|e| io_err("read segment", &segment.path, e))?
                .and_then(Header::parse)
                .filter(|h| h.len > 0);
            // The record must end inside the segment, and exactly at its end iff it is the last.
            let next = header
                .map(|h| offset + h.record_len())
                .filter(|&next| next <= bytes && (next == bytes) == (id + 1 == end));
            let (Some(header), Some(next)) = (header, next) else {
                self.quarantine_from(index, offset, id)?;
                continue;
            };
            let advanced = Cursor {
                segment: first_id,
                offset: next,
                id: id + 1,
            };
            if id < self.floor || self.acked.contains(&id) {
                self.cursor = advanced;
                continue;
            }
            let payload = self
                .cache
                .get(
                    &mut self.fs,
                    segment,
                    offset + HEADER,
                    u64::from(header.len),
                )
                .map_err(|e| io_err("read segment", &segment.path, e))?
                .filter(|payload| header.matches(payload))
                .map(<[u8]>::to_vec);
            let Some(payload) = payload else {
                self.quarantine_from(index, offset, id)?;
                continue;
            };
            self.cursor = advanced;
            return Ok(Some((RecordId(id), payload)));
        }
    }

    /// Moves the send cursor back to the oldest unacknowledged record, so everything not yet
    /// acknowledged is handed out again (after a reconnect).
    pub fn rewind(&mut self) {
        self.cursor = self
            .segments
            .front()
            .map_or(Cursor::at(self.next_id), Cursor::start);
    }

    /// Acknowledges a record, in any order. Acknowledging one twice, or one already dropped, is
    /// fine. When the contiguous acknowledged prefix advances it is written to the ledger (per
    /// the fsync policy) and segments it covers are deleted.
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
            self.persist_floor()?;
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

    /// The index of the segment the cursor reads from, moving the cursor past exhausted or
    /// vanished segments; `None` when there is nothing more to read.
    fn cursor_segment(&mut self) -> Option<usize> {
        loop {
            let index = self
                .segments
                .partition_point(|s| s.first_id < self.cursor.segment);
            let segment = self.segments.get(index)?;
            if segment.first_id != self.cursor.segment {
                self.cursor = Cursor::start(segment);
            } else if self.cursor.id < segment.end() {
                return Some(index);
            } else {
                self.cursor = Cursor::start(self.segments.get(index + 1)?);
            }
        }
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

    /// After the floor advanced: write the ledger (per policy), then delete covered segments.
    fn persist_floor(&mut self) -> Result<(), BufferError> {
        if self.config.fsync == FsyncPolicy::EveryBatch {
            self.ledger_dirty = true;
        } else {
            self.store_ledger(self.stored_next_id)?;
        }
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
        Ok(())
    }

    /// Writes the ledger with `next_id` raised to `reserve`; synced unless the policy is Never.
    fn store_ledger(&mut self, reserve: u64) -> Result<(), BufferError> {
        let value = Ledger {
            acked_through: self.floor - 1,
            next_id: self.next_id.max(reserve),
        };
        ledger::store(
            &mut self.fs,
            &self.config.dir,
            value,
            self.config.fsync != FsyncPolicy::Never,
        )?;
        self.stored_next_id = value.next_id;
        self.ledger_dirty = false;
        Ok(())
    }

    /// Drops the oldest segments until `size` more bytes fit under the cap; returns how many
    /// unacknowledged records went with them.
    fn make_room(&mut self, size: u64) -> Result<u64, BufferError> {
        let mut total: u64 = self.segments.iter().map(|s| s.bytes).sum();
        let (mut lost, mut segments) = (0, 0);
        let mut result = Ok(());
        while total + size > self.config.max_bytes {
            let Some(oldest) = self.segments.front() else {
                break;
            };
            if let Err(e) = self.fs.remove(&oldest.path)
                && e.kind() != io::ErrorKind::NotFound
            {
                result = Err(io_err("drop segment", &oldest.path, e));
                break;
            }
            let Some(oldest) = self.segments.pop_front() else {
                break;
            };
            total -= oldest.bytes;
            lost += self.unacked_between(oldest.first_id, oldest.end());
            self.acked = self.acked.split_off(&oldest.end());
            self.cache.forget(oldest.first_id);
            segments += 1;
        }
        if segments > 0 {
            self.dir_unsynced = true;
            self.dropped.full += lost;
            if lost > 0 {
                error!(dir = %self.config.dir.display(), dropped = lost, segments,
                    "disk buffer full: dropped the {lost} oldest unacknowledged records");
            }
            if self.settle_floor() {
                result = result.and(self.persist_floor());
            }
        }
        result.map(|()| lost)
    }

    /// Makes sure the newest segment can take `size` more bytes at `next_id`, starting a new one
    /// if not; true if it did.
    fn roll(&mut self, size: u64) -> Result<bool, BufferError> {
        let next_id = self.next_id;
        let segment_bytes = self.config.segment_bytes;
        if self
            .segments
            .back()
            .is_some_and(|s| !s.sealed && s.end() == next_id && s.bytes + size <= segment_bytes)
        {
            return Ok(false);
        }
        if let Some(last) = self.segments.back_mut()
            && !last.sealed
        {
            // Sync the full segment now, so a power loss can only take the newest records.
            if self.unsynced == Some(last.first_id) {
                self.fs
                    .sync(&last.path)
                    .map_err(|e| io_err("sync segment", &last.path, e))?;
                self.unsynced = None;
            }
            last.sealed = true;
        }
        self.segments
            .push_back(Segment::new(&self.config.dir, next_id));
        self.dir_unsynced = true;
        Ok(true)
    }

    /// Writes the framed record to the newest segment, undoing a partial write on failure.
    fn write(&mut self, record: &[u8], created: bool) -> Result<(), BufferError> {
        segment::encode(&mut self.scratch, record);
        let written = self.write_scratch(created);
        if written.is_err() {
            self.undo_append();
        }
        written
    }

    fn write_scratch(&mut self, created: bool) -> Result<(), BufferError> {
        let dir = &self.config.dir;
        let Some(segment) = self.segments.back_mut() else {
            return Err(io_err("append to", dir, io::Error::other("no segment")));
        };
        let path = &segment.path;
        self.fs
            .append(path, &self.scratch)
            .map_err(|e| io_err("append to", path, e))?;
        if self.config.fsync == FsyncPolicy::EveryRecord {
            self.fs
                .sync(path)
                .map_err(|e| io_err("sync segment", path, e))?;
            if created {
                self.fs
                    .sync_dir(dir)
                    .map_err(|e| io_err("sync directory", dir, e))?;
            }
        }
        segment.records += 1;
        segment.bytes += self.scratch.len() as u64;
        if self.config.fsync == FsyncPolicy::EveryBatch {
            self.unsynced = Some(segment.first_id);
        }
        Ok(())
    }

    /// Cuts the newest segment back to what the buffer knows it holds. If even that fails, the
    /// segment is sealed and an id burnt, so no later segment reuses its name or its ids.
    fn undo_append(&mut self) {
        let Some(segment) = self.segments.back_mut() else {
            return;
        };
        let undone = match segment.bytes {
            0 => self.fs.remove(&segment.path).or_else(|e| match e.kind() {
                io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            }),
            bytes => self.fs.truncate(&segment.path, bytes),
        };
        if let Err(e) = undone {
            warn!(path = %segment.path.display(), error = %e,
                "disk buffer: cannot undo a failed append; sealing the segment");
            segment.sealed = true;
            self.next_id = self.next_id.saturating_add(1);
        }
        if segment.records == 0 {
            self.segments.pop_back();
        }
    }

    /// Moves the damaged rest of segment `index` (from `offset`, where record `id` should be)
    /// to quarantine, and counts the unacknowledged records lost with it.
    fn quarantine_from(&mut self, index: usize, offset: u64, id: u64) -> Result<(), BufferError> {
        let Some(segment) = self.segments.get_mut(index) else {
            return Ok(());
        };
        let path = segment.path.clone();
        self.cache.forget(segment.first_id);
        let content = self
            .fs
            .read(&path)
            .map_err(|e| io_err("read segment", &path, e))?;
        let sync = self.config.fsync != FsyncPolicy::Never;
        let moved = recover::quarantine_tail(
            &mut self.fs,
            &self.config.dir,
            &path,
            segment.first_id,
            &content,
            offset,
            sync,
        )?;
        let lost_end = segment.end();
        segment.records = id - segment.first_id;
        segment.bytes = offset;
        segment.sealed = true;
        if segment.records == 0 {
            self.segments.remove(index);
        }
        let lost = self.unacked_between(id, lost_end);
        self.acked.retain(|&a| a < id || a >= lost_end);
        self.dropped.corrupt += lost;
        if lost > 0 {
            error!(path = %path.display(), offset, lost, quarantined = ?moved,
                "disk buffer: damaged record while reading; lost the rest of the segment");
        } else {
            warn!(path = %path.display(), offset, quarantined = ?moved,
                "disk buffer: damaged acknowledged records while reading; quarantined them");
        }
        self.settle_floor();
        // Also records the next id, which the truncated segment no longer shows.
        self.persist_floor()
    }
}
