//! The ledger: the acknowledged position and the id high-water mark, replaced atomically.

use std::io;
use std::path::{Path, PathBuf};

use tracing::warn;

use super::BufferError;
use super::fs::Fs;
use super::segment::CRC;

/// File name of the ledger in the buffer directory.
pub(crate) const FILE: &str = "ledger";
const TMP: &str = "ledger.tmp";
const MAGIC: [u8; 8] = *b"DLBUFLG1";
/// Encoded size: magic, two `u64`s, CRC.
pub(crate) const LEN: usize = 28;

/// What the ledger stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ledger {
    /// Every id up to and including this one is acknowledged (or gone); 0 before any.
    pub acked_through: u64,
    /// No id below this may be issued again.
    pub next_id: u64,
}

impl Ledger {
    pub(crate) fn encode(self) -> [u8; LEN] {
        let mut out = [0u8; LEN];
        out[0..8].copy_from_slice(&MAGIC);
        out[8..16].copy_from_slice(&self.acked_through.to_le_bytes());
        out[16..24].copy_from_slice(&self.next_id.to_le_bytes());
        let crc = CRC.checksum(&out[..24]);
        out[24..28].copy_from_slice(&crc.to_le_bytes());
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; LEN] = bytes.try_into().ok()?;
        let crc = u32::from_le_bytes(bytes[24..28].try_into().ok()?);
        if bytes[0..8] != MAGIC || CRC.checksum(&bytes[..24]) != crc {
            return None;
        }
        Some(Self {
            acked_through: u64::from_le_bytes(bytes[8..16].try_into().ok()?),
            next_id: u64::from_le_bytes(bytes[16..24].try_into().ok()?),
        })
    }
}

pub(crate) fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// The stored ledger; `None` if there is none or it is unreadable. An unreadable ledger only
/// costs redelivery of acknowledged records (the segments still bound what exists), so it is a
/// warning, not an error.
pub(crate) fn load<F: Fs>(fs: &mut F, dir: &Path) -> Result<Option<Ledger>, BufferError> {
    let path = path(dir);
    match fs.read(&path) {
        Ok(bytes) => {
            let ledger = Ledger::decode(&bytes);
            if ledger.is_none() {
                warn!(path = %path.display(), len = bytes.len(),
                    "disk buffer ledger unreadable; acknowledged records may be delivered again");
            }
            Ok(ledger)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(BufferError::Io {
            op: "read ledger",
            path,
            source,
        }),
    }
}

/// Replaces the ledger: write a temporary file, then rename it over the old one, so a crash
/// leaves either ledger whole. With `sync`, both the content and the rename are made durable.
pub(crate) fn store<F: Fs>(
    fs: &mut F,
    dir: &Path,
    ledger: Ledger,
    sync: bool,
) -> Result<(), BufferError> {
    let tmp = dir.join(TMP);
    let io = |op, path: &Path| {
        let path = path.to_path_buf();
        move |source| BufferError::Io { op, path, source }
    };
    fs.write(&tmp, &ledger.encode())
        .map_err(io("write ledger", &tmp))?;
    if sync {
        fs.sync(&tmp).map_err(io("sync ledger", &tmp))?;
    }
    let path = path(dir);
    fs.rename(&tmp, &path)
        .map_err(io("replace ledger", &path))?;
    if sync {
        fs.sync_dir(dir).map_err(io("sync directory", dir))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::fs::MemFs;

    #[test]
    fn the_ledger_round_trips_and_any_damage_is_detected() {
        let ledger = Ledger {
            acked_through: 41,
            next_id: 100,
        };
        let bytes = ledger.encode();
        assert_eq!(Ledger::decode(&bytes), Some(ledger));
        for i in 0..LEN {
            let mut damaged = bytes;
            damaged[i] ^= 0x10;
            assert_eq!(Ledger::decode(&damaged), None, "byte {i}");
        }
        assert_eq!(Ledger::decode(&bytes[..LEN - 1]), None);
    }

    #[test]
    fn a_synced_store_survives_a_crash_and_an_unsynced_one_may_not() {
        let mut fs = MemFs::new();
        let dir = Path::new("/buf");
        fs.create_dir_all(dir).expect("mkdir");
        let first = Ledger {
            acked_through: 1,
            next_id: 2,
        };
        store(&mut fs, dir, first, true).expect("store");
        fs.crash_losing_unsynced();
        assert_eq!(load(&mut fs, dir).expect("load"), Some(first));
        store(
            &mut fs,
            dir,
            Ledger {
                acked_through: 5,
                next_id: 6,
            },
            false,
        )
        .expect("store");
        fs.crash_losing_unsynced();
        assert_eq!(load(&mut fs, dir).expect("load"), None);
    }
}
