//! The write path: appending (with the cap and segment rolling), flushing and the ledger.

use std::io;

use tracing::{error, warn};

use super::fs::Fs;
use super::ledger::{self, Ledger};
use super::segment::{self, HEADER, Segment};
use super::{
    AppendOutcome, BufferError, DiskBuffer, FsyncPolicy, ID_RESERVATION, RecordId, SyncJob,
    SyncTicket, io_err,
};

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

    /// Writes the acknowledged position to the ledger and, under [`FsyncPolicy::EveryBatch`],
    /// makes everything appended and acknowledged so far durable. Call it periodically, and
    /// again after it failed: what it could not do stays to do (an unsynced segment, a dirty
    /// ledger, the torn bytes of a failed append still to cut off), so a retry after a
    /// transient disk error completes it.
    pub fn flush(&mut self) -> Result<(), BufferError> {
        self.cut_torn()?;
        if self.config.fsync == FsyncPolicy::EveryBatch {
            if let Some(first_id) = self.unsynced {
                if let Some(segment) = self.segments.iter().find(|s| s.first_id == first_id) {
                    self.fs
                        .sync(&segment.path)
                        .map_err(|e| io_err("sync segment", &segment.path, e))?;
                }
                self.unsynced = None;
            }
            self.sync_dir_if_needed()?;
        }
        self.record_acks()
    }

    /// Fsyncs the directory if segment files were created or removed since it last was.
    fn sync_dir_if_needed(&mut self) -> Result<(), BufferError> {
        if self.dir_unsynced {
            let dir = &self.config.dir;
            self.fs
                .sync_dir(dir)
                .map_err(|e| io_err("sync directory", dir, e))?;
            self.dir_unsynced = false;
        }
        Ok(())
    }

    /// Starts making everything appended so far durable without waiting for the disk: the
    /// group commit of a caller that takes in more records meanwhile. Torn tails and directory
    /// entries are dealt with at once (both rare: after a failed append, a new or deleted
    /// segment); the segment's fsync comes back as a job to run on another thread, whose result
    /// goes to [`finish_sync`](Self::finish_sync). `None`: nothing appended awaits a sync (or the
    /// policy is not [`FsyncPolicy::EveryBatch`]), so what was appended is as durable as the
    /// policy makes it. The ledger is not written: see [`record_acks`](Self::record_acks).
    pub fn start_sync(&mut self) -> Result<Option<(SyncTicket, SyncJob)>, BufferError> {
        self.cut_torn()?;
        if self.config.fsync != FsyncPolicy::EveryBatch {
            return Ok(None);
        }
        self.sync_dir_if_needed()?;
        let Some(first_id) = self.unsynced else {
            return Ok(None);
        };
        let Some(segment) = self.segments.iter().find(|s| s.first_id == first_id) else {
            // Deleted meanwhile: every record in it was acknowledged.
            self.unsynced = None;
            return Ok(None);
        };
        let job = self
            .fs
            .sync_job(&segment.path)
            .map_err(|e| io_err("sync segment", &segment.path, e))?;
        let ticket = SyncTicket {
            segment: first_id,
            path: segment.path.clone(),
            appends: self.appends,
        };
        Ok(Some((ticket, job)))
    }

    /// Takes the result of a [`start_sync`](Self::start_sync) job: on success every record
    /// appended before it started is durable. Records appended since still await a sync.
    pub fn finish_sync(
        &mut self,
        ticket: SyncTicket,
        result: io::Result<()>,
    ) -> Result<(), BufferError> {
        result.map_err(|e| io_err("sync segment", &ticket.path, e))?;
        if self.unsynced == Some(ticket.segment) && self.appends == ticket.appends {
            self.unsynced = None;
        }
        Ok(())
    }

    /// Writes the acknowledged position to the ledger if it moved since it was last written
    /// (the part of [`flush`](Self::flush) that is about acknowledgements, not appends).
    pub fn record_acks(&mut self) -> Result<(), BufferError> {
        if self.ledger_dirty {
            self.store_ledger(self.stored_next_id)?;
            // Segments whose deletion waited for this ledger (see `floor_advanced`).
            self.remove_acked_segments();
        }
        Ok(())
    }

    /// Whether the acknowledged position moved since the ledger was written.
    pub fn acks_unrecorded(&self) -> bool {
        self.ledger_dirty
    }

    /// Whether a failed append left bytes that [`flush`](Self::flush) has yet to cut off.
    pub fn has_torn_tail(&self) -> bool {
        !self.torn.is_empty()
    }

    /// Cuts the bytes of failed appends off their (sealed) segments. Until then those bytes are
    /// invisible to reads (a segment is read only up to its known length), but a reopen would
    /// take them for damage.
    fn cut_torn(&mut self) -> Result<(), BufferError> {
        while let Some(torn) = self.torn.last() {
            let (path, len) = (torn.path.clone(), torn.len);
            let cut = match len {
                0 => self.fs.remove(&path),
                len => self.fs.truncate(&path, len).and_then(|()| {
                    if self.config.fsync == FsyncPolicy::Never {
                        Ok(())
                    } else {
                        self.fs.sync(&path)
                    }
                }),
            };
            match cut {
                // Deleted meanwhile: every record in it was acknowledged.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("cut a failed append off", &path, e)),
                Ok(()) => {}
            }
            self.torn.pop();
        }
        Ok(())
    }

    /// Flushes and records the exact next id, so a reopen continues without an id gap.
    pub fn close(mut self) -> Result<(), BufferError> {
        self.flush()?;
        self.store_ledger(0)
    }

    /// Writes the ledger with `next_id` raised to `reserve`; synced unless the policy is Never.
    pub(super) fn store_ledger(&mut self, reserve: u64) -> Result<(), BufferError> {
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
                result = result.and(self.floor_advanced());
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
        self.appends += 1;
        if self.config.fsync == FsyncPolicy::EveryBatch {
            self.unsynced = Some(segment.first_id);
        }
        Ok(())
    }

    /// Cuts the newest segment back to what the buffer knows it holds. If even that fails, the
    /// segment is sealed and an id burnt, so no later segment reuses its name or its ids, and
    /// the cut is left to [`flush`](Self::flush).
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
            self.cache.forget(segment.first_id);
            self.torn.push(super::TornTail {
                path: segment.path.clone(),
                len: segment.bytes,
            });
        }
        if segment.records == 0 {
            self.segments.pop_back();
        }
    }
}
