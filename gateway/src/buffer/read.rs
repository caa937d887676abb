//! The read path: the send cursor, and what happens when a read finds damage.

use std::io;

use tracing::{error, warn};

use super::fs::Fs;
use super::segment::{HEADER, Header};
use super::{BufferError, Cursor, DiskBuffer, FsyncPolicy, RecordId, io_err, recover};

impl<F: Fs> DiskBuffer<F> {
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
            let header = match self.fetch(index, offset, HEADER)? {
                Fetched::Bytes(header) => Header::parse(header).filter(|h| h.len > 0),
                Fetched::Short => None,
                Fetched::Vanished => {
                    self.segment_vanished(index)?;
                    continue;
                }
            };
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
            let payload = match self.fetch(index, offset + HEADER, u64::from(header.len))? {
                Fetched::Bytes(payload) if header.matches(payload) => payload.to_vec(),
                Fetched::Vanished => {
                    self.segment_vanished(index)?;
                    continue;
                }
                Fetched::Bytes(_) | Fetched::Short => {
                    self.quarantine_from(index, offset, id)?;
                    continue;
                }
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

    /// `len` bytes of segment `index` at `offset`.
    fn fetch(&mut self, index: usize, offset: u64, len: u64) -> Result<Fetched<'_>, BufferError> {
        let segment = &self.segments[index];
        match self.cache.get(&mut self.fs, segment, offset, len) {
            Ok(Some(bytes)) => Ok(Fetched::Bytes(bytes)),
            Ok(None) => Ok(Fetched::Short),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Fetched::Vanished),
            Err(e) => Err(io_err("read segment", &segment.path, e)),
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
        let lost = self.lose(id, lost_end);
        if lost > 0 {
            error!(path = %path.display(), offset, lost, quarantined = ?moved,
                "disk buffer: damaged record while reading; lost the rest of the segment");
        } else {
            warn!(path = %path.display(), offset, quarantined = ?moved,
                "disk buffer: damaged acknowledged records while reading; quarantined them");
        }
        self.after_loss()
    }

    /// A segment file was removed behind the buffer's back: its records are lost. Without this
    /// every read would fail on it forever.
    fn segment_vanished(&mut self, index: usize) -> Result<(), BufferError> {
        let Some(segment) = self.segments.remove(index) else {
            return Ok(());
        };
        self.cache.forget(segment.first_id);
        let lost = self.lose(segment.first_id, segment.end());
        error!(path = %segment.path.display(), lost,
            "disk buffer: segment file vanished; its records are lost");
        self.after_loss()
    }

    /// Counts the unacknowledged ids in `from..to` as lost to corruption and forgets their acks.
    fn lose(&mut self, from: u64, to: u64) -> u64 {
        let lost = self.unacked_between(from, to);
        self.acked.retain(|&a| a < from || a >= to);
        self.dropped.corrupt += lost;
        lost
    }

    fn after_loss(&mut self) -> Result<(), BufferError> {
        self.settle_floor();
        // Now, whatever the policy: the segments may no longer show the highest id issued.
        self.store_ledger(self.stored_next_id)?;
        self.remove_acked_segments();
        Ok(())
    }
}

/// What [`DiskBuffer::fetch`] found.
enum Fetched<'a> {
    Bytes(&'a [u8]),
    /// Beyond what the buffer wrote, or the file is shorter than that.
    Short,
    /// The file is gone.
    Vanished,
}
