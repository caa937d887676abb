//! Segment files: names, record framing, the recovery scan and a read-ahead cache.

use std::io;
use std::path::{Path, PathBuf};

use crc::{CRC_32_ISCSI, Crc};

use super::fs::Fs;

/// `[len u32 LE][crc32c u32 LE]` before every payload.
pub(crate) const HEADER: u64 = 8;
pub(crate) const CRC: Crc<u32> = Crc::<u32>::new(&CRC_32_ISCSI);
const SUFFIX: &str = ".seg";
/// One read fetches this much, so sequential reads cost one call per many small records.
const READ_AHEAD: u64 = 64 * 1024;

/// `{first_id:020}.seg`: zero padding makes name order id order.
pub(crate) fn file_name(first_id: u64) -> String {
    format!("{first_id:020}{SUFFIX}")
}

/// The first id of a segment file name, or `None` for any other file.
pub(crate) fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Frames `payload` into `out` (cleared first). The caller has checked it fits a `u32`.
pub(crate) fn encode(out: &mut Vec<u8>, payload: &[u8]) {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.clear();
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&CRC.checksum(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// A parsed record header.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Header {
    pub len: u32,
    pub crc: u32,
}

impl Header {
    /// The header at the start of `bytes`, if there are at least [`HEADER`] of them.
    pub(crate) fn parse(bytes: &[u8]) -> Option<Self> {
        let len = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?);
        let crc = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
        Some(Self { len, crc })
    }

    pub(crate) fn matches(self, payload: &[u8]) -> bool {
        CRC.checksum(payload) == self.crc
    }

    /// Header plus payload.
    pub(crate) fn record_len(self) -> u64 {
        HEADER + u64::from(self.len)
    }
}

/// How a segment's content ends after its last whole, valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tail {
    /// Nothing after it.
    Clean,
    /// What an interrupted append leaves: a partial header, a record that runs past the end of
    /// the file, or zeros (space the filesystem allocated but the crash never filled).
    Torn,
    /// Anything else: a CRC mismatch, a length no writer produces, more records than the id
    /// range allows.
    Corrupt,
}

/// The result of [`scan`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scan {
    /// Whole, valid records from the start.
    pub records: u64,
    /// Bytes those records occupy; where the tail starts.
    pub valid_len: u64,
    pub tail: Tail,
}

/// Walks the records of a segment's content. `max_records` is how many ids the segment may
/// hold before the next segment's first id; `max_payload` bounds a plausible torn record.
pub(crate) fn scan(bytes: &[u8], max_records: u64, max_payload: u64) -> Scan {
    let mut offset = 0usize;
    let mut records = 0u64;
    let tail = loop {
        let rest = &bytes[offset..];
        if rest.is_empty() {
            break Tail::Clean;
        }
        if records >= max_records {
            break Tail::Corrupt;
        }
        let Some(header) = Header::parse(rest) else {
            break Tail::Torn;
        };
        if header.len == 0 {
            break if rest.iter().all(|&b| b == 0) {
                Tail::Torn
            } else {
                Tail::Corrupt
            };
        }
        let Some(payload) = payload_of(rest, header) else {
            break if u64::from(header.len) <= max_payload {
                Tail::Torn
            } else {
                Tail::Corrupt
            };
        };
        if !header.matches(payload) {
            break Tail::Corrupt;
        }
        offset += HEADER as usize + payload.len();
        records += 1;
    };
    Scan {
        records,
        valid_len: offset as u64,
        tail,
    }
}

fn payload_of(record: &[u8], header: Header) -> Option<&[u8]> {
    let len = usize::try_from(header.len).ok()?;
    record.get(HEADER as usize..)?.get(..len)
}

/// How many records a damaged region held, as far as [`count_damaged`] can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Damaged {
    pub records: u64,
    /// The walk ended the way a writer's records end (at the end of the file, in a torn record
    /// or in zeros), so only payload bytes were damaged and the count is exact. Otherwise a
    /// damaged header stopped it and the count is a lower bound.
    pub sure: bool,
}

/// Counts the records in the damaged region from `offset` by hopping over headers whose length
/// fits, whether their CRC matches or not.
pub(crate) fn count_damaged(bytes: &[u8], offset: u64, max_payload: u64) -> Damaged {
    let mut offset = usize::try_from(offset).unwrap_or(usize::MAX);
    let mut records = 0;
    loop {
        let Some(rest) = bytes.get(offset..).filter(|r| !r.is_empty()) else {
            return Damaged {
                records,
                sure: true,
            };
        };
        let Some(header) = Header::parse(rest) else {
            return Damaged {
                records: records + 1,
                sure: true,
            };
        };
        if header.len == 0 {
            return Damaged {
                records,
                sure: rest.iter().all(|&b| b == 0),
            };
        }
        records += 1;
        if payload_of(rest, header).is_none() {
            return Damaged {
                records,
                sure: u64::from(header.len) <= max_payload,
            };
        }
        offset += HEADER as usize + header.len as usize;
    }
}

/// What the buffer knows about one segment file. Ids in it are contiguous from `first_id`.
#[derive(Debug)]
pub(crate) struct Segment {
    pub first_id: u64,
    pub records: u64,
    pub bytes: u64,
    /// No more appends: it is full, or it was repaired and its id range no longer ends at the
    /// next id.
    pub sealed: bool,
    pub path: PathBuf,
}

impl Segment {
    pub(crate) fn new(dir: &Path, first_id: u64) -> Self {
        let path = dir.join(file_name(first_id));
        Self {
            first_id,
            records: 0,
            bytes: 0,
            sealed: false,
            path,
        }
    }

    /// One past the last id in it.
    pub(crate) fn end(&self) -> u64 {
        self.first_id.saturating_add(self.records)
    }

    pub(crate) fn holds(&self, id: u64) -> bool {
        self.first_id <= id && id < self.end()
    }
}

/// A window of one segment's bytes, so a reader walking records (or skipping acknowledged
/// ones after a rewind) reads the file in large pieces.
#[derive(Debug, Default)]
pub(crate) struct ReadCache {
    segment: Option<u64>,
    start: u64,
    buf: Vec<u8>,
}

impl ReadCache {
    /// Forgets the window if it belongs to the segment starting at `first_id`, whose file was
    /// cut, renamed or removed.
    pub(crate) fn forget(&mut self, first_id: u64) {
        if self.segment == Some(first_id) {
            self.segment = None;
        }
    }

    /// `len` bytes of `segment` at `offset`; `Ok(None)` if they lie beyond the bytes the buffer
    /// wrote or the file is shorter than that (cut behind the buffer's back).
    pub(crate) fn get<F: Fs>(
        &mut self,
        fs: &mut F,
        segment: &Segment,
        offset: u64,
        len: u64,
    ) -> io::Result<Option<&[u8]>> {
        let Some(end) = offset.checked_add(len).filter(|&end| end <= segment.bytes) else {
            return Ok(None);
        };
        let window_end = self.start + self.buf.len() as u64;
        let cached =
            self.segment == Some(segment.first_id) && self.start <= offset && end <= window_end;
        if !cached {
            self.segment = None;
            let want = len.max(READ_AHEAD).min(segment.bytes - offset);
            self.buf
                .resize(usize::try_from(want).unwrap_or(usize::MAX), 0);
            let got = fs.read_at(&segment.path, offset, &mut self.buf)?;
            self.buf.truncate(got);
            self.segment = Some(segment.first_id);
            self.start = offset;
            if (got as u64) < len {
                return Ok(None);
            }
        }
        let from = usize::try_from(offset - self.start).unwrap_or(usize::MAX);
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        Ok(self.buf.get(from..).and_then(|b| b.get(..len)))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn framed(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut record = Vec::new();
        for payload in payloads {
            encode(&mut record, payload);
            out.extend_from_slice(&record);
        }
        out
    }

    #[test]
    fn names_round_trip_and_other_files_are_not_segments() {
        assert_eq!(file_name(42), "00000000000000000042.seg");
        assert_eq!(parse_file_name(&file_name(42)), Some(42));
        assert_eq!(parse_file_name(&file_name(u64::MAX)), Some(u64::MAX));
        for other in [
            "ledger",
            "42.seg",
            "0000000000000000004x.seg",
            "99999999999999999999.seg",
        ] {
            assert_eq!(parse_file_name(other), None, "{other}");
        }
    }

    #[test]
    fn a_clean_segment_scans_to_its_end() {
        let bytes = framed(&[b"one", b"two", b"three"]);
        let scan = scan(&bytes, u64::MAX, 100);
        assert_eq!(
            (scan.records, scan.valid_len, scan.tail),
            (3, bytes.len() as u64, Tail::Clean)
        );
    }

    #[test]
    fn interrupted_appends_are_torn_tails() {
        let whole = framed(&[b"one", b"two"]);
        let first = HEADER + 3;
        for cut in first + 1..whole.len() as u64 {
            let scan = scan(&whole[..cut as usize], u64::MAX, 100);
            assert_eq!(
                (scan.records, scan.valid_len, scan.tail),
                (1, first, Tail::Torn),
                "{cut}"
            );
        }
        let mut zero_filled = whole.clone();
        zero_filled.extend_from_slice(&[0; 100]);
        let zeros = scan(&zero_filled, u64::MAX, 100);
        assert_eq!((zeros.records, zeros.tail), (2, Tail::Torn));
    }

    #[test]
    fn damage_before_the_end_is_corruption_and_its_records_are_counted() {
        let mut bytes = framed(&[b"one", b"two", b"three", b"four"]);
        let second = HEADER + 3;
        bytes[second as usize + HEADER as usize] ^= 0x01;
        let damaged = scan(&bytes, u64::MAX, 100);
        let found = (damaged.records, damaged.valid_len, damaged.tail);
        assert_eq!(found, (1, second, Tail::Corrupt));
        let counted = count_damaged(&bytes, damaged.valid_len, 100);
        assert_eq!(
            counted,
            Damaged {
                records: 3,
                sure: true
            }
        );
        // A damaged length stops the count early, and says so.
        let third = second + HEADER + 3;
        bytes[third as usize + 2] = 0xff;
        let counted = count_damaged(&bytes, damaged.valid_len, 100);
        assert_eq!(
            counted,
            Damaged {
                records: 2,
                sure: false
            }
        );
        // A length no writer produces cannot be a torn append.
        let mut bytes = framed(&[b"one", b"two"]);
        bytes[second as usize..second as usize + 4].copy_from_slice(&1000u32.to_le_bytes());
        assert_eq!(scan_tail(&bytes, 100), Tail::Corrupt);
        // More records than the ids up to the next segment.
        assert_eq!(scan(&framed(&[b"a", b"b"]), 1, 100).tail, Tail::Corrupt);
    }

    fn scan_tail(bytes: &[u8], max_payload: u64) -> Tail {
        scan(bytes, u64::MAX, max_payload).tail
    }

    proptest! {
        #[test]
        fn any_bytes_scan_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let scanned = scan(&bytes, u64::MAX, 64);
            prop_assert!(scanned.valid_len <= bytes.len() as u64);
            let damaged = count_damaged(&bytes, scanned.valid_len, 64);
            prop_assert!(damaged.records <= bytes.len() as u64);
        }
    }
}
