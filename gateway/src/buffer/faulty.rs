//! A filesystem that fails on command, for proving that a disk error loses nothing silently.
//!
//! [`FaultyFs`] wraps any [`Fs`] and, while its [`FaultSwitch`] holds a [`Fault`], fails the
//! operations that fault fails on a real Linux system, with the real `errno`. It is a seam for
//! tests (unit, model and end-to-end through a running gateway via
//! [`GatewayConfig::buffer_fs`](crate::GatewayConfig::buffer_fs)), not a mock: every operation
//! it lets through runs on the wrapped filesystem, and the ones it fails may leave the partial
//! effects the real fault leaves (half a record written before `ENOSPC`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::{fmt, io};

use super::fs::Fs;

/// Linux `errno` values of the faults (the gateway targets Linux; elsewhere the messages differ).
const EIO: i32 = 5;
const EMFILE: i32 = 24;
const ENOSPC: i32 = 28;

/// A disk error to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A failing device (`EIO`): every write, sync, rename, truncate and removal fails, and an
    /// append writes half its bytes before failing (a torn record). Reads still work, as they
    /// usually do from the page cache.
    Io,
    /// A full disk (`ENOSPC`): an append writes half its bytes before failing, and a file
    /// rewrite leaves the file empty; truncating, renaming, removing and syncing work (they
    /// free space or need none).
    NoSpace,
    /// The process is out of file descriptors (`EMFILE`): only what needs a new descriptor
    /// fails — opening a file or directory — while the files [`RealFs`](super::RealFs) keeps
    /// open (the last appended-to and the last read) still take appends, syncs and reads.
    TooManyFiles,
}

impl Fault {
    fn code(self) -> u8 {
        match self {
            Fault::Io => 1,
            Fault::NoSpace => 2,
            Fault::TooManyFiles => 3,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Fault::Io),
            2 => Some(Fault::NoSpace),
            3 => Some(Fault::TooManyFiles),
            _ => None,
        }
    }

    fn error(self) -> io::Error {
        io::Error::from_raw_os_error(match self {
            Fault::Io => EIO,
            Fault::NoSpace => ENOSPC,
            Fault::TooManyFiles => EMFILE,
        })
    }
}

/// Turns a [`FaultyFs`]'s fault on and off from another thread; clones share the switch.
#[derive(Debug, Clone, Default)]
pub struct FaultSwitch {
    fault: Arc<AtomicU8>,
    injected: Arc<AtomicU64>,
}

impl FaultSwitch {
    /// A switch with no fault on.
    pub fn new() -> Self {
        Self::default()
    }

    /// Injects `fault` from now on, or nothing with `None`.
    pub fn set(&self, fault: Option<Fault>) {
        self.fault
            .store(fault.map_or(0, Fault::code), Ordering::SeqCst);
    }

    /// The fault being injected.
    pub fn fault(&self) -> Option<Fault> {
        Fault::from_code(self.fault.load(Ordering::SeqCst))
    }

    /// How many operations have failed by injection so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }
}

/// An [`Fs`] that fails as its [`FaultSwitch`] says; [`Fault`] lists what each fault fails.
pub struct FaultyFs<F> {
    inner: F,
    switch: FaultSwitch,
    /// The files `RealFs` would hold open, which `EMFILE` does not touch.
    writer: Option<PathBuf>,
    reader: Option<PathBuf>,
}

impl<F: fmt::Debug> fmt::Debug for FaultyFs<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyFs")
            .field("inner", &self.inner)
            .field("fault", &self.switch.fault())
            .finish_non_exhaustive()
    }
}

impl<F: Fs> FaultyFs<F> {
    /// Wraps `inner`; faults come from `switch`.
    pub fn new(inner: F, switch: FaultSwitch) -> Self {
        Self {
            inner,
            switch,
            writer: None,
            reader: None,
        }
    }

    /// The fault's error if it hits: `io` under [`Fault::Io`], `no_space` under
    /// [`Fault::NoSpace`], `opens` under [`Fault::TooManyFiles`] (the operation needs a new
    /// descriptor).
    fn hit(&self, io: bool, no_space: bool, opens: bool) -> io::Result<()> {
        let Some(fault) = self.switch.fault() else {
            return Ok(());
        };
        let hits = match fault {
            Fault::Io => io,
            Fault::NoSpace => no_space,
            Fault::TooManyFiles => opens,
        };
        if hits {
            self.switch.injected.fetch_add(1, Ordering::SeqCst);
            return Err(fault.error());
        }
        Ok(())
    }

    fn is_writer(&self, path: &Path) -> bool {
        self.writer.as_deref() == Some(path)
    }

    fn is_reader(&self, path: &Path) -> bool {
        self.reader.as_deref() == Some(path)
    }

    fn forget(&mut self, path: &Path) {
        if self.is_writer(path) {
            self.writer = None;
        }
        if self.is_reader(path) {
            self.reader = None;
        }
    }
}

impl<F: Fs> Fs for FaultyFs<F> {
    fn create_dir_all(&mut self, dir: &Path) -> io::Result<()> {
        self.hit(true, false, false)?;
        self.inner.create_dir_all(dir)
    }

    fn list(&mut self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        self.hit(false, false, true)?;
        self.inner.list(dir)
    }

    fn read(&mut self, path: &Path) -> io::Result<Vec<u8>> {
        // `fs::read` opens a new descriptor even for a file held open.
        self.hit(false, false, true)?;
        self.inner.read(path)
    }

    fn read_at(&mut self, path: &Path, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.hit(false, false, !self.is_reader(path))?;
        let n = self.inner.read_at(path, offset, buf)?;
        self.reader = Some(path.to_path_buf());
        Ok(n)
    }

    fn append(&mut self, path: &Path, data: &[u8]) -> io::Result<()> {
        if let Err(e) = self.hit(true, true, !self.is_writer(path)) {
            if e.raw_os_error() != Some(EMFILE) {
                // A write that runs out of space or hits a bad block stops part way.
                let _ = self.inner.append(path, &data[..data.len() / 2]);
            }
            return Err(e);
        }
        self.inner.append(path, data)?;
        self.writer = Some(path.to_path_buf());
        Ok(())
    }

    fn write(&mut self, path: &Path, data: &[u8]) -> io::Result<()> {
        self.forget(path);
        if let Err(e) = self.hit(true, true, true) {
            if e.raw_os_error() == Some(ENOSPC) {
                // `fs::write` creates (truncates) the file, then finds no room for the bytes.
                let _ = self.inner.write(path, &[]);
            }
            return Err(e);
        }
        self.inner.write(path, data)
    }

    fn truncate(&mut self, path: &Path, len: u64) -> io::Result<()> {
        self.forget(path);
        self.hit(true, false, true)?;
        self.inner.truncate(path, len)
    }

    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        self.forget(from);
        self.forget(to);
        self.hit(true, false, false)?;
        self.inner.rename(from, to)
    }

    fn remove(&mut self, path: &Path) -> io::Result<()> {
        self.forget(path);
        self.hit(true, false, false)?;
        self.inner.remove(path)
    }

    fn file_len(&mut self, path: &Path) -> io::Result<u64> {
        self.inner.file_len(path)
    }

    fn sync(&mut self, path: &Path) -> io::Result<()> {
        // `RealFs` syncs through its writer handle when it has one, else opens the file.
        self.hit(true, false, !self.is_writer(path))?;
        self.inner.sync(path)
    }

    fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
        self.hit(true, false, true)?;
        self.inner.sync_dir(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::super::MemFs;
    use super::*;

    fn setup() -> (FaultyFs<MemFs>, MemFs, FaultSwitch, PathBuf) {
        let mem = MemFs::new();
        let switch = FaultSwitch::new();
        let mut fs = FaultyFs::new(mem.clone(), switch.clone());
        let dir = PathBuf::from("/b");
        fs.create_dir_all(&dir).expect("mkdir");
        (fs, mem, switch, dir)
    }

    #[test]
    fn a_full_disk_tears_an_append_and_leaves_a_rewritten_file_empty() {
        let (mut fs, mem, switch, dir) = setup();
        let (seg, ledger) = (dir.join("seg"), dir.join("ledger"));
        fs.append(&seg, b"abcd").expect("append");
        switch.set(Some(Fault::NoSpace));
        let err = fs.append(&seg, b"efgh").expect_err("no space");
        assert_eq!(err.raw_os_error(), Some(ENOSPC));
        assert_eq!(mem.contents(&seg).expect("exists"), b"abcdef");
        fs.write(&ledger, b"xyz").expect_err("no space");
        assert_eq!(mem.contents(&ledger).expect("created"), b"");
        fs.truncate(&seg, 4).expect("truncating frees space");
        fs.sync(&seg).expect("sync needs no space");
        assert_eq!(switch.injected(), 2);
        switch.set(None);
        fs.append(&seg, b"ef").expect("space again");
        assert_eq!(mem.contents(&seg).expect("exists"), b"abcdef");
    }

    #[test]
    fn out_of_descriptors_only_what_opens_a_file_fails() {
        let (mut fs, _mem, switch, dir) = setup();
        let (seg, other) = (dir.join("seg"), dir.join("other"));
        fs.append(&seg, b"abcd").expect("append");
        let mut buf = [0u8; 2];
        fs.read_at(&seg, 0, &mut buf).expect("read");
        switch.set(Some(Fault::TooManyFiles));
        fs.append(&seg, b"ef").expect("the writer is open");
        fs.sync(&seg).expect("synced through the open writer");
        fs.read_at(&seg, 2, &mut buf).expect("the reader is open");
        let err = fs
            .append(&other, b"x")
            .expect_err("a new file needs a descriptor");
        assert_eq!(err.raw_os_error(), Some(EMFILE));
        fs.write(&other, b"x").expect_err("write opens");
        fs.sync_dir(&dir).expect_err("syncing a directory opens it");
        fs.read(&seg).expect_err("a whole read opens");
        fs.remove(&seg).expect("unlink needs no descriptor");
        assert_eq!(switch.injected(), 4);
    }

    #[test]
    fn an_io_error_fails_writes_and_syncs_but_not_reads() {
        let (mut fs, mem, switch, dir) = setup();
        let seg = dir.join("seg");
        fs.append(&seg, b"abcd").expect("append");
        switch.set(Some(Fault::Io));
        fs.sync(&seg).expect_err("sync fails");
        let err = fs.append(&seg, b"efgh").expect_err("append fails");
        assert_eq!(err.raw_os_error(), Some(EIO));
        fs.truncate(&seg, 4).expect_err("truncate fails");
        assert_eq!(fs.read(&seg).expect("reads work"), b"abcdef");
        assert_eq!(mem.contents(&seg).expect("exists"), b"abcdef");
    }
}
