//! Opening a buffer: read the ledger, scan the segments, repair what a crash or damage left.

use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

use tracing::{error, info, warn};

use super::fs::Fs;
use super::ledger::{self, Ledger};
use super::segment::{self, HEADER, ReadCache, Scan, Segment, Tail};
use super::{
    BufferConfig, BufferError, Cursor, DiskBuffer, DropCounts, FIRST_ID, FsyncPolicy, OpenReport,
    QUARANTINE_DIR, io_err,
};

impl<F: Fs> DiskBuffer<F> {
    /// Opens (or creates) the buffer in `config.dir` on the filesystem `fs`, recovering what a
    /// crash left; see the [module docs](super) for what recovery does.
    pub fn open_with(mut fs: F, config: BufferConfig) -> Result<(Self, OpenReport), BufferError> {
        config.validate()?;
        let dir = config.dir.clone();
        fs.create_dir_all(&dir)
            .map_err(|e| io_err("create directory", &dir, e))?;
        let loaded = ledger::load(&mut fs, &dir)?;
        let stored = loaded.unwrap_or(Ledger {
            acked_through: 0,
            next_id: FIRST_ID,
        });
        let floor = stored.acked_through.saturating_add(1);
        let mut recovery = Recovery {
            fs: &mut fs,
            dir: &dir,
            floor,
            max_payload: config.segment_bytes - HEADER,
            sync: config.fsync != FsyncPolicy::Never,
            next_id: stored.next_id.max(floor),
            report: OpenReport::default(),
        };
        let mut segments = VecDeque::new();
        let files = segment_files(recovery.fs, &dir)?;
        for (i, (first_id, path)) in files.iter().enumerate() {
            let next_first = files.get(i + 1).map(|(id, _)| *id);
            segments.extend(recovery.segment(*first_id, path, next_first)?);
        }
        let Recovery {
            next_id,
            mut report,
            ..
        } = recovery;

        let mut buffer = DiskBuffer {
            fs,
            config,
            segments,
            next_id,
            floor,
            acked: BTreeSet::new(),
            cursor: Cursor::at(next_id),
            cache: ReadCache::default(),
            scratch: Vec::new(),
            dropped: DropCounts {
                full: 0,
                corrupt: report.corrupt_records,
            },
            stored_next_id: stored.next_id,
            ledger_dirty: false,
            unsynced: None,
            appends: 0,
            dir_unsynced: false,
            torn: Vec::new(),
        };
        if buffer.config.fsync == FsyncPolicy::EveryBatch {
            // A crashed process may have left appends the OS has not written back yet.
            buffer.unsynced = buffer.segments.back().map(|s| s.first_id);
            buffer.dir_unsynced = true;
        }
        buffer.settle_floor();
        buffer.rewind();
        let current = Ledger {
            acked_through: buffer.floor - 1,
            next_id: buffer.next_id,
        };
        if loaded != Some(current) {
            buffer.store_ledger(0)?;
        }
        report.recovered = buffer.len();
        if report.recovered > 0 {
            info!(dir = %dir.display(), records = report.recovered, "disk buffer: records to replay");
        }
        Ok((buffer, report))
    }
}

/// State of one open's scan over the segments.
struct Recovery<'a, F> {
    fs: &'a mut F,
    dir: &'a Path,
    /// Every id below it is acknowledged, per the ledger.
    floor: u64,
    max_payload: u64,
    sync: bool,
    /// Raised past every id the segments show was issued.
    next_id: u64,
    report: OpenReport,
}

impl<F: Fs> Recovery<'_, F> {
    /// Scans and repairs one segment file; `None` if nothing unacknowledged is left in it (the
    /// file is then removed). `next_first` is the next segment's first id, if there is one.
    fn segment(
        &mut self,
        first_id: u64,
        path: &Path,
        next_first: Option<u64>,
    ) -> Result<Option<Segment>, BufferError> {
        let bytes = self
            .fs
            .read(path)
            .map_err(|e| io_err("read segment", path, e))?;
        // Ids stop at the next segment's first, and at u64::MAX.
        let max_records = next_first.unwrap_or(u64::MAX) - first_id;
        let scan = segment::scan(&bytes, max_records, self.max_payload);
        let mut sealed = next_first.is_some();
        match (scan.tail, next_first) {
            (Tail::Clean, _) => {}
            (Tail::Torn, None) => {
                let cut = bytes.len() as u64 - scan.valid_len;
                self.fs
                    .truncate(path, scan.valid_len)
                    .map_err(|e| io_err("truncate segment", path, e))?;
                if self.sync {
                    self.fs
                        .sync(path)
                        .map_err(|e| io_err("sync segment", path, e))?;
                }
                warn!(path = %path.display(), bytes = cut,
                    "disk buffer: cut a partly written record off the newest segment");
                self.report.truncated_tail_bytes += cut;
            }
            (Tail::Torn | Tail::Corrupt, _) => {
                self.quarantine(first_id, path, next_first, &bytes, scan)?;
                sealed = true;
            }
        }
        let segment = Segment {
            first_id,
            records: scan.records,
            bytes: scan.valid_len,
            sealed,
            path: path.to_path_buf(),
        };
        self.next_id = self.next_id.max(segment.end()).max(first_id);
        if segment.records > 0 && segment.end() > self.floor {
            return Ok(Some(segment));
        }
        // Empty, or every record acknowledged (a crash came between ledger and delete).
        match self.fs.remove(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io_err("remove segment", path, e))
            }
            _ => Ok(None),
        }
    }

    /// Moves the damaged rest of a segment to quarantine and counts what was lost with it.
    fn quarantine(
        &mut self,
        first_id: u64,
        path: &Path,
        next_first: Option<u64>,
        bytes: &[u8],
        scan: Scan,
    ) -> Result<(), BufferError> {
        let bad_id = first_id.saturating_add(scan.records);
        // An older segment's ids end at most where the next one's begin (before, if ids jumped
        // there); the newest's can only be counted from its headers.
        let damaged = segment::count_damaged(bytes, scan.valid_len, self.max_payload);
        let counted = bad_id.saturating_add(damaged.records);
        let lost_end = match next_first {
            Some(next) if damaged.sure => counted.min(next),
            Some(next) => next,
            None => counted,
        }
        .max(bad_id);
        let moved = quarantine_tail(
            self.fs,
            self.dir,
            path,
            first_id,
            bytes,
            scan.valid_len,
            self.sync,
        )?;
        let lost = lost_end.saturating_sub(bad_id.max(self.floor));
        if lost > 0 {
            error!(path = %path.display(), offset = scan.valid_len, lost, quarantined = ?moved,
                "disk buffer: damaged segment; lost the rest of it");
        } else {
            warn!(path = %path.display(), offset = scan.valid_len, quarantined = ?moved,
                "disk buffer: damaged segment holding only acknowledged records");
        }
        self.report.corrupt_records += lost;
        self.report.quarantined.extend(moved);
        // The lost ids were issued; they must not be again.
        self.next_id = self.next_id.max(lost_end);
        Ok(())
    }
}

/// The segment files in `dir`, by first id; other files are not the buffer's business.
fn segment_files<F: Fs>(fs: &mut F, dir: &Path) -> Result<Vec<(u64, PathBuf)>, BufferError> {
    let mut files: Vec<(u64, PathBuf)> = fs
        .list(dir)
        .map_err(|e| io_err("list directory", dir, e))?
        .into_iter()
        .filter_map(|path| {
            let first_id = segment::parse_file_name(path.file_name()?.to_str()?)?;
            Some((first_id, path))
        })
        .collect();
    files.sort_unstable_by_key(|(first_id, _)| *first_id);
    Ok(files)
}

/// Moves `content[offset..]` of the segment at `path` to `quarantine/` and cuts the segment at
/// `offset` (moving the whole file when `offset` is 0). Copy before cut, so a crash in between
/// leaves the damage in place to be found and quarantined again under the same name.
pub(super) fn quarantine_tail<F: Fs>(
    fs: &mut F,
    dir: &Path,
    path: &Path,
    first_id: u64,
    content: &[u8],
    offset: u64,
    sync: bool,
) -> Result<Option<PathBuf>, BufferError> {
    let quarantine = dir.join(QUARANTINE_DIR);
    fs.create_dir_all(&quarantine)
        .map_err(|e| io_err("create directory", &quarantine, e))?;
    let target = quarantine.join(format!("{}.{offset}.bad", segment::file_name(first_id)));
    let sync_dir = |fs: &mut F, dir: &Path| {
        if sync {
            fs.sync_dir(dir)
                .map_err(|e| io_err("sync directory", dir, e))
        } else {
            Ok(())
        }
    };
    if offset == 0 {
        fs.rename(path, &target)
            .map_err(|e| io_err("move to quarantine", path, e))?;
        sync_dir(fs, &quarantine)?;
        sync_dir(fs, dir)?;
        return Ok(Some(target));
    }
    let tail = usize::try_from(offset)
        .ok()
        .and_then(|offset| content.get(offset..))
        .unwrap_or_default();
    let moved = if tail.is_empty() {
        None
    } else {
        fs.write(&target, tail)
            .map_err(|e| io_err("write quarantine file", &target, e))?;
        if sync {
            fs.sync(&target)
                .map_err(|e| io_err("sync quarantine file", &target, e))?;
        }
        sync_dir(fs, &quarantine)?;
        Some(target)
    };
    // A file already cut shorter than `offset` is left alone: setting its length would pad it.
    if content.len() as u64 > offset {
        fs.truncate(path, offset)
            .map_err(|e| io_err("truncate segment", path, e))?;
    }
    if sync {
        fs.sync(path).map_err(|e| io_err("sync segment", path, e))?;
    }
    Ok(moved)
}
