//! The filesystem seam: the buffer does all its IO through [`Fs`], so the same code runs on
//! [`RealFs`] in production and on [`MemFs`] in tests, where a power loss can be simulated.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// The file operations the disk buffer needs; nothing more, so a test double stays small.
pub trait Fs {
    /// Creates `dir` and any missing parents.
    fn create_dir_all(&mut self, dir: &Path) -> io::Result<()>;
    /// The regular files directly inside `dir`, in any order.
    fn list(&mut self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    /// The whole content of `path`.
    fn read(&mut self, path: &Path) -> io::Result<Vec<u8>>;
    /// Reads from `offset` until `buf` is full or the file ends; returns how many bytes it read.
    fn read_at(&mut self, path: &Path, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// Appends `data` to `path`, creating the file if it is missing.
    fn append(&mut self, path: &Path, data: &[u8]) -> io::Result<()>;
    /// Replaces the content of `path` with `data`, creating the file if it is missing.
    fn write(&mut self, path: &Path, data: &[u8]) -> io::Result<()>;
    /// Cuts `path` down to `len` bytes.
    fn truncate(&mut self, path: &Path, len: u64) -> io::Result<()>;
    /// Renames `from` to `to`, atomically replacing `to` if it exists.
    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes the file `path`.
    fn remove(&mut self, path: &Path) -> io::Result<()>;
    /// The length of `path` in bytes.
    fn file_len(&mut self, path: &Path) -> io::Result<u64>;
    /// Makes the content of `path` durable (`fdatasync`).
    fn sync(&mut self, path: &Path) -> io::Result<()>;
    /// Makes the entries of `dir` (creations, renames, removals) durable.
    fn sync_dir(&mut self, dir: &Path) -> io::Result<()>;
    /// A [`sync`](Self::sync) of `path` to run later, on another thread, while this filesystem
    /// goes on appending: running it makes at least what `path` holds now durable. The default
    /// syncs at once and returns a job with nothing left to do (test filesystems stay
    /// single-threaded; [`RealFs`] hands out a real `fdatasync`).
    fn sync_job(&mut self, path: &Path) -> io::Result<SyncJob> {
        self.sync(path)?;
        Ok(SyncJob::done())
    }
}

/// An fsync taken out of the filesystem to run elsewhere (see [`Fs::sync_job`]).
pub struct SyncJob(Option<Box<dyn FnOnce() -> io::Result<()> + Send>>);

impl SyncJob {
    /// A job that runs `sync`.
    pub fn new(sync: impl FnOnce() -> io::Result<()> + Send + 'static) -> Self {
        Self(Some(Box::new(sync)))
    }

    /// A job with nothing left to do: the data is durable already.
    pub fn done() -> Self {
        Self(None)
    }

    /// Runs the fsync; blocks until the disk answers.
    pub fn run(self) -> io::Result<()> {
        self.0.map_or(Ok(()), |sync| sync())
    }
}

impl std::fmt::Debug for SyncJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "SyncJob(pending)"
        } else {
            "SyncJob(done)"
        })
    }
}

/// The filesystem a gateway's buffer runs on, chosen at start.
pub type DynFs = Box<dyn Fs + Send>;

/// Makes the filesystem a gateway's buffer runs on: [`RealFs`] by default. The one other use is
/// a test that runs a whole gateway on a [`FaultyFs`](super::FaultyFs) to inject disk errors.
#[derive(Clone)]
pub struct FsFactory(Arc<dyn Fn() -> DynFs + Send + Sync>);

impl FsFactory {
    /// A factory calling `make` once per buffer opened.
    pub fn new(make: impl Fn() -> DynFs + Send + Sync + 'static) -> Self {
        Self(Arc::new(make))
    }

    /// A new filesystem.
    pub fn make(&self) -> DynFs {
        (self.0)()
    }
}

impl Default for FsFactory {
    fn default() -> Self {
        Self::new(|| Box::new(RealFs::new()))
    }
}

impl std::fmt::Debug for FsFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FsFactory")
    }
}

/// A boxed filesystem is one, so the gateway can run its buffer on whichever [`Fs`] its
/// configuration names ([`RealFs`] unless a test plugs in a [`FaultyFs`](super::FaultyFs)).
impl<T: Fs + ?Sized> Fs for Box<T> {
    fn create_dir_all(&mut self, dir: &Path) -> io::Result<()> {
        (**self).create_dir_all(dir)
    }
    fn list(&mut self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        (**self).list(dir)
    }
    fn read(&mut self, path: &Path) -> io::Result<Vec<u8>> {
        (**self).read(path)
    }
    fn read_at(&mut self, path: &Path, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        (**self).read_at(path, offset, buf)
    }
    fn append(&mut self, path: &Path, data: &[u8]) -> io::Result<()> {
        (**self).append(path, data)
    }
    fn write(&mut self, path: &Path, data: &[u8]) -> io::Result<()> {
        (**self).write(path, data)
    }
    fn truncate(&mut self, path: &Path, len: u64) -> io::Result<()> {
        (**self).truncate(path, len)
    }
    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        (**self).rename(from, to)
    }
    fn remove(&mut self, path: &Path) -> io::Result<()> {
        (**self).remove(path)
    }
    fn file_len(&mut self, path: &Path) -> io::Result<u64> {
        (**self).file_len(path)
    }
    fn sync(&mut self, path: &Path) -> io::Result<()> {
        (**self).sync(path)
    }
    fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
        (**self).sync_dir(dir)
    }
    fn sync_job(&mut self, path: &Path) -> io::Result<SyncJob> {
        (**self).sync_job(path)
    }
}

/// [`Fs`] on `std::fs`. Keeps the last appended-to and the last read file open, because the
/// buffer appends to one segment and reads one segment at a time.
#[derive(Debug, Default)]
pub struct RealFs {
    writer: Option<(PathBuf, File)>,
    reader: Option<(PathBuf, File)>,
}

impl RealFs {
    /// A filesystem with no open files.
    pub fn new() -> Self {
        Self::default()
    }

    /// Drops cached handles of `path`: after a rename, removal or rewrite they would point at
    /// the old file.
    fn forget(&mut self, path: &Path) {
        if self.writer.as_ref().is_some_and(|(p, _)| p == path) {
            self.writer = None;
        }
        if self.reader.as_ref().is_some_and(|(p, _)| p == path) {
            self.reader = None;
        }
    }

    fn reader(&mut self, path: &Path) -> io::Result<&mut File> {
        if self.reader.as_ref().is_none_or(|(p, _)| p != path) {
            self.reader = Some((path.to_path_buf(), File::open(path)?));
        }
        match &mut self.reader {
            Some((_, file)) => Ok(file),
            None => Err(io::Error::other("reader handle vanished")),
        }
    }

    fn writer(&mut self, path: &Path) -> io::Result<&mut File> {
        if self.writer.as_ref().is_none_or(|(p, _)| p != path) {
            let file = OpenOptions::new().create(true).append(true).open(path)?;
            self.writer = Some((path.to_path_buf(), file));
        }
        match &mut self.writer {
            Some((_, file)) => Ok(file),
            None => Err(io::Error::other("writer handle vanished")),
        }
    }
}

impl Fs for RealFs {
    fn create_dir_all(&mut self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn list(&mut self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                files.push(entry.path());
            }
        }
        Ok(files)
    }

    fn read(&mut self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }

    fn read_at(&mut self, path: &Path, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let file = self.reader(path)?;
        file.seek(SeekFrom::Start(offset))?;
        let mut filled = 0;
        while filled < buf.len() {
            match file.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(filled)
    }

    fn append(&mut self, path: &Path, data: &[u8]) -> io::Result<()> {
        self.writer(path)?.write_all(data)
    }

    fn write(&mut self, path: &Path, data: &[u8]) -> io::Result<()> {
        self.forget(path);
        fs::write(path, data)
    }

    fn truncate(&mut self, path: &Path, len: u64) -> io::Result<()> {
        self.forget(path);
        OpenOptions::new().write(true).open(path)?.set_len(len)
    }

    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        self.forget(from);
        self.forget(to);
        fs::rename(from, to)
    }

    fn remove(&mut self, path: &Path) -> io::Result<()> {
        self.forget(path);
        fs::remove_file(path)
    }

    fn file_len(&mut self, path: &Path) -> io::Result<u64> {
        Ok(fs::metadata(path)?.len())
    }

    fn sync(&mut self, path: &Path) -> io::Result<()> {
        match &self.writer {
            Some((p, file)) if p == path => file.sync_data(),
            _ => File::open(path)?.sync_data(),
        }
    }

    fn sync_job(&mut self, path: &Path) -> io::Result<SyncJob> {
        // A second handle on the same open file: its `fdatasync` covers what this one appends.
        let file = match &self.writer {
            Some((p, file)) if p == path => file.try_clone()?,
            _ => File::open(path)?,
        };
        Ok(SyncJob::new(move || file.sync_data()))
    }

    fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
        // Only Unix can open and fsync a directory; elsewhere renames are as durable as they get.
        if cfg!(unix) {
            File::open(dir)?.sync_all()
        } else {
            Ok(())
        }
    }
}

/// An in-memory [`Fs`] for tests. Clones share the same files, so a test can keep a handle,
/// drop the buffer, [`crash`](MemFs::crash) and reopen.
///
/// Crash model: every file remembers its content as of its last [`Fs::sync`]; a crash reverts
/// to that, optionally keeping a prefix of bytes appended since (a torn write). Directory
/// operations (create, rename, remove) are durable at once, and a file's content written by
/// [`Fs::write`] is not durable until synced — the classic "renamed but empty" outcome.
#[derive(Debug, Clone, Default)]
pub struct MemFs {
    state: Arc<Mutex<MemState>>,
}

#[derive(Debug, Default)]
struct MemState {
    dirs: BTreeSet<PathBuf>,
    files: BTreeMap<PathBuf, MemFile>,
}

#[derive(Debug, Default)]
struct MemFile {
    data: Vec<u8>,
    durable: Vec<u8>,
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file", path.display()),
    )
}

impl MemState {
    fn parent_exists(&self, path: &Path) -> io::Result<()> {
        match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() && !self.dirs.contains(parent) => {
                Err(not_found(parent))
            }
            _ => Ok(()),
        }
    }

    fn file(&mut self, path: &Path) -> io::Result<&mut MemFile> {
        self.files.get_mut(path).ok_or_else(|| not_found(path))
    }
}

impl MemFs {
    /// An empty filesystem.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, MemState> {
        // A panicking test thread must not hide the files from the assertions that follow.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Simulates a power loss: each file reverts to its last synced content, plus
    /// `keep(path, unsynced_len)` bytes of what was appended since (clamped).
    pub fn crash(&self, keep: impl Fn(&Path, usize) -> usize) {
        for (path, file) in &mut self.state().files {
            if file.data.starts_with(&file.durable) {
                let unsynced = file.data.len() - file.durable.len();
                let kept = keep(path, unsynced).min(unsynced);
                file.data.truncate(file.durable.len() + kept);
            } else {
                file.data = file.durable.clone();
            }
            file.durable = file.data.clone();
        }
    }

    /// Simulates a power loss that keeps nothing unsynced.
    pub fn crash_losing_unsynced(&self) {
        self.crash(|_, _| 0);
    }

    /// The current content of `path`, if it exists.
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        self.state().files.get(path).map(|f| f.data.clone())
    }

    /// Overwrites `path` durably (creating it): for injecting corruption.
    pub fn set_contents(&self, path: &Path, data: Vec<u8>) {
        let file = MemFile {
            durable: data.clone(),
            data,
        };
        self.state().files.insert(path.to_path_buf(), file);
    }

    /// Every file, sorted.
    pub fn files(&self) -> Vec<PathBuf> {
        self.state().files.keys().cloned().collect()
    }
}

impl Fs for MemFs {
    fn create_dir_all(&mut self, dir: &Path) -> io::Result<()> {
        let mut state = self.state();
        for ancestor in dir.ancestors().filter(|a| !a.as_os_str().is_empty()) {
            state.dirs.insert(ancestor.to_path_buf());
        }
        Ok(())
    }

    fn list(&mut self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let state = self.state();
        if !state.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        Ok(state
            .files
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .cloned()
            .collect())
    }

    fn read(&mut self, path: &Path) -> io::Result<Vec<u8>> {
        Ok(self.state().file(path)?.data.clone())
    }

    fn read_at(&mut self, path: &Path, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut state = self.state();
        let data = &state.file(path)?.data;
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let n = buf.len().min(data.len() - start);
        buf[..n].copy_from_slice(&data[start..start + n]);
        Ok(n)
    }

    fn append(&mut self, path: &Path, data: &[u8]) -> io::Result<()> {
        let mut state = self.state();
        state.parent_exists(path)?;
        state
            .files
            .entry(path.to_path_buf())
            .or_default()
            .data
            .extend_from_slice(data);
        Ok(())
    }

    fn write(&mut self, path: &Path, data: &[u8]) -> io::Result<()> {
        let mut state = self.state();
        state.parent_exists(path)?;
        let file = MemFile {
            data: data.to_vec(),
            durable: Vec::new(),
        };
        state.files.insert(path.to_path_buf(), file);
        Ok(())
    }

    fn truncate(&mut self, path: &Path, len: u64) -> io::Result<()> {
        let mut state = self.state();
        let file = state.file(path)?;
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        file.data.truncate(len);
        file.durable.truncate(len);
        Ok(())
    }

    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.state();
        state.parent_exists(to)?;
        let file = state.files.remove(from).ok_or_else(|| not_found(from))?;
        state.files.insert(to.to_path_buf(), file);
        Ok(())
    }

    fn remove(&mut self, path: &Path) -> io::Result<()> {
        self.state()
            .files
            .remove(path)
            .map(drop)
            .ok_or_else(|| not_found(path))
    }

    fn file_len(&mut self, path: &Path) -> io::Result<u64> {
        Ok(self.state().file(path)?.data.len() as u64)
    }

    fn sync(&mut self, path: &Path) -> io::Result<()> {
        let mut state = self.state();
        let file = state.file(path)?;
        file.durable = file.data.clone();
        Ok(())
    }

    fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
        if self.state().dirs.contains(dir) {
            Ok(())
        } else {
            Err(not_found(dir))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_keeps_synced_bytes_and_the_chosen_prefix_of_unsynced_ones() {
        let mut fs = MemFs::new();
        let dir = Path::new("/b");
        let file = dir.join("f");
        fs.create_dir_all(dir).expect("mkdir");
        fs.append(&file, b"abc").expect("append");
        fs.sync(&file).expect("sync");
        fs.append(&file, b"defg").expect("append");
        fs.crash(|_, unsynced| unsynced / 2);
        assert_eq!(fs.contents(&file).expect("exists"), b"abcde");
        fs.crash_losing_unsynced();
        assert_eq!(fs.contents(&file).expect("exists"), b"abcde");
    }

    #[test]
    fn a_rewritten_file_renamed_without_sync_is_empty_after_a_crash() {
        let mut fs = MemFs::new();
        let dir = Path::new("/b");
        fs.create_dir_all(dir).expect("mkdir");
        fs.write(&dir.join("tmp"), b"new").expect("write");
        fs.rename(&dir.join("tmp"), &dir.join("ledger"))
            .expect("rename");
        fs.crash_losing_unsynced();
        assert_eq!(fs.contents(&dir.join("ledger")).expect("exists"), b"");
        assert_eq!(fs.list(dir).expect("list"), vec![dir.join("ledger")]);
    }

    #[test]
    fn real_fs_reads_at_offsets_and_appends_through_its_cached_handles() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let mut fs = RealFs::new();
        fs.append(&path, b"hello ").expect("append");
        fs.append(&path, b"world").expect("append");
        fs.sync(&path).expect("sync");
        let mut buf = [0u8; 8];
        assert_eq!(fs.read_at(&path, 6, &mut buf).expect("read"), 5);
        assert_eq!(&buf[..5], b"world");
        fs.truncate(&path, 5).expect("truncate");
        fs.append(&path, b"!").expect("append");
        assert_eq!(fs.read(&path).expect("read"), b"hello!");
        assert_eq!(fs.file_len(&path).expect("len"), 6);
        fs.sync_dir(dir.path()).expect("sync dir");
    }
}
