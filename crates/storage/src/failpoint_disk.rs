//! [`FailpointDisk`]: a [`Disk`] wrapper for fault-testing real processes.
//!
//! A `kill -9` loses nothing a process wrote: the page cache survives it. To
//! test what a power loss does, this wrapper records, per file, what is
//! needed to undo every write and truncate since that file's last successful
//! [`File::sync`], and [`FailpointDisk::power_loss`] rolls every file back to
//! that durable image, fsyncs the rollback and freezes the disk. It can also
//! make [`File::sync`] a no-op that does not advance the durable image
//! ([`FailpointOptions::skip_sync`]), an unsafe mode whose loss a fault
//! harness must detect.
//!
//! The model, per file (shared by every handle opened on it):
//! - a file found on disk when first opened is taken as durable as it is;
//!   a file this wrapper creates starts durable and empty;
//! - bytes beyond the durable length are undone by truncating to it, so an
//!   append costs no copy;
//! - bytes inside the durable region that a write or truncate destroys are
//!   copied first (one read before the write) and restored newest first;
//! - a successful sync makes the current image durable and frees the
//!   copies;
//! - directory operations (create, rename, remove) stay durable at once,
//!   as [`crate::FsDisk`] makes them; a rename carries the file's record to
//!   its new name, a remove (or a rename over it) forgets it.
//!
//! The copies are bounded by [`FailpointOptions::undo_bytes_max`] over all
//! files. A file whose copy would pass the bound *overflows*: its copies are
//! freed and its durable region is from then on taken as written back (as a
//! kernel may write any dirty page back at any time), and its durable length
//! drops to its current length if that is shorter. A power loss still cuts
//! such a file back to its durable length. What it leaves is a state a real
//! power loss can leave, only one that loses less; it never invents bytes.
//!
//! What the power loss does not model: torn writes (an unsynced write is
//! dropped whole, never in part), subsets of unsynced writes reaching the
//! disk (all of them are dropped: the worst case, not every case), lost
//! directory entries, and anything written outside this [`Disk`].

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};

use crate::disk::{Disk, File};
use crate::error::{Result, StorageError};

/// The default bound on bytes kept to undo overwrites, over all files: 64 MiB,
/// well above what the server writes between two syncs of one file.
pub const UNDO_BYTES_MAX_DEFAULT: u64 = 64 << 20;

/// What a [`FailpointDisk`] does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailpointOptions {
    /// Record what every unsynced write and truncate changed, so
    /// [`FailpointDisk::power_loss`] can undo it. Without it the wrapper
    /// records nothing and `power_loss` undoes nothing.
    pub record_unsynced: bool,
    /// [`File::sync`] returns at once without syncing and without advancing
    /// the durable image: acknowledged data is not durable. Unsafe; for
    /// fault testing only.
    pub skip_sync: bool,
    /// Bound on bytes copied to undo overwrites of durable data, over all
    /// files; see the module comment for what happens beyond it.
    pub undo_bytes_max: u64,
}

impl Default for FailpointOptions {
    fn default() -> Self {
        FailpointOptions {
            record_unsynced: false,
            skip_sync: false,
            undo_bytes_max: UNDO_BYTES_MAX_DEFAULT,
        }
    }
}

/// What [`FailpointDisk::power_loss`] undid.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PowerLossReport {
    /// Unsynced bytes dropped: bytes cut beyond durable lengths plus bytes of
    /// durable data restored.
    pub bytes_dropped: u64,
    /// Files whose contents the rollback changed.
    pub files: u64,
}

/// One file's record: what a power loss must undo.
#[derive(Debug, Default)]
struct FileState {
    /// Length of the durable image.
    durable_bytes: u64,
    /// Length of the current image (what reads see).
    current_bytes: u64,
    /// Durable bytes that writes and truncates destroyed, oldest first, each
    /// copied just before the change: restoring them newest first gives the
    /// durable image back.
    undo: Vec<(u64, Vec<u8>)>,
    /// Bytes held in `undo`.
    undo_bytes: u64,
    /// The undo bound was passed since the last sync: the durable region is
    /// taken as written back.
    overflowed: bool,
    /// Removed or replaced: no longer reachable by name, so nothing to undo.
    detached: bool,
}

impl FileState {
    fn changed(&self) -> bool {
        !self.undo.is_empty() || self.current_bytes != self.durable_bytes
    }
}

#[derive(Debug, Default)]
struct Files {
    by_name: HashMap<String, Arc<Mutex<FileState>>>,
}

#[derive(Debug)]
struct Registry {
    /// Read-held by every call that changes a file or the directory; held
    /// for writing by the power loss, for good, so nothing is written after
    /// it.
    gate: RwLock<()>,
    files: Mutex<Files>,
    /// Bytes held in every file's `undo`.
    undo_bytes: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock is a test failure already.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Registry {
    fn enter(&self) -> RwLockReadGuard<'_, ()> {
        self.gate.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn release(&self, state: &mut FileState) {
        self.undo_bytes.fetch_sub(state.undo_bytes, Ordering::Relaxed);
        state.undo = Vec::new();
        state.undo_bytes = 0;
    }

    /// Gives up the undo copies of `state`: its durable region is taken as
    /// written back from now on.
    fn overflow(&self, state: &mut FileState) {
        self.release(state);
        state.overflowed = true;
        state.durable_bytes = state.durable_bytes.min(state.current_bytes);
    }
}

/// A [`Disk`] that can lose unsynced writes on request, or never sync; see
/// the module comment. Clones share one record.
#[derive(Clone)]
pub struct FailpointDisk {
    inner: Arc<dyn Disk>,
    options: FailpointOptions,
    registry: Arc<Registry>,
}

impl fmt::Debug for FailpointDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailpointDisk")
            .field("inner", &self.inner)
            .field("options", &self.options)
            .field("undo_bytes", &self.registry.undo_bytes.load(Ordering::Relaxed))
            .finish()
    }
}

impl FailpointDisk {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Disk>, options: FailpointOptions) -> FailpointDisk {
        FailpointDisk {
            inner,
            options,
            registry: Arc::new(Registry {
                gate: RwLock::new(()),
                files: Mutex::new(Files::default()),
                undo_bytes: AtomicU64::new(0),
            }),
        }
    }

    /// The options it was made with.
    pub fn options(&self) -> FailpointOptions {
        self.options
    }

    /// Bytes currently held to undo overwrites, over all files.
    pub fn undo_bytes(&self) -> u64 {
        self.registry.undo_bytes.load(Ordering::Relaxed)
    }

    /// Rolls every file back to its durable image, fsyncs the rollback, and
    /// freezes the disk: every later call that would change a file or the
    /// directory blocks for good, so the process must end next (the server
    /// exits at once). Waits for writes and syncs in progress to finish, and
    /// none starts while it runs. Reads still work.
    ///
    /// An error leaves the disk frozen and the files partly rolled back.
    pub fn power_loss(&self) -> Result<PowerLossReport> {
        let gate = self
            .registry
            .gate
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Held for good: see above.
        std::mem::forget(gate);
        let files = lock(&self.registry.files);
        let mut names: Vec<&String> = files.by_name.keys().collect();
        names.sort();
        let mut report = PowerLossReport::default();
        for name in names {
            let mut state = lock(&files.by_name[name]);
            if !state.changed() {
                continue;
            }
            let mut file = self.inner.open(name)?;
            for (offset, bytes) in state.undo.iter().rev() {
                file.write_at(*offset, bytes)?;
                report.bytes_dropped += bytes.len() as u64;
            }
            report.bytes_dropped += state.current_bytes.saturating_sub(state.durable_bytes);
            file.truncate(state.durable_bytes)?;
            file.sync()?;
            report.files += 1;
            self.registry.release(&mut state);
            state.current_bytes = state.durable_bytes;
        }
        Ok(report)
    }

    /// The record of `name`, made if this is its first open: a file found on
    /// disk is taken as durable as it is.
    fn state_for(&self, name: &str, file: &dyn File, created: bool) -> Result<Arc<Mutex<FileState>>> {
        let mut files = lock(&self.registry.files);
        if let Some(state) = files.by_name.get(name) {
            if !created {
                return Ok(state.clone());
            }
            // Created under a name whose file was removed behind our back.
            lock(state).detached = true;
        }
        let length = if created { 0 } else { file.len()? };
        let state = Arc::new(Mutex::new(FileState {
            durable_bytes: length,
            current_bytes: length,
            ..FileState::default()
        }));
        files.by_name.insert(name.to_string(), state.clone());
        Ok(state)
    }

    fn forget(&self, files: &mut Files, name: &str) {
        if let Some(state) = files.by_name.remove(name) {
            let mut state = lock(&state);
            self.registry.release(&mut state);
            state.detached = true;
        }
    }

    fn wrap(&self, file: Box<dyn File>, created: bool) -> Result<Box<dyn File>> {
        let state = match self.options.record_unsynced {
            true => Some(self.state_for(file.name(), file.as_ref(), created)?),
            false => None,
        };
        Ok(Box::new(FailpointFile {
            inner: file,
            options: self.options,
            registry: self.registry.clone(),
            state,
        }))
    }
}

impl Disk for FailpointDisk {
    fn create(&self, name: &str) -> Result<Box<dyn File>> {
        let _gate = self.registry.enter();
        let file = self.inner.create(name)?;
        self.wrap(file, true)
    }

    fn open(&self, name: &str) -> Result<Box<dyn File>> {
        let _gate = self.registry.enter();
        let file = self.inner.open(name)?;
        self.wrap(file, false)
    }

    fn exists(&self, name: &str) -> Result<bool> {
        self.inner.exists(name)
    }

    fn rename(&self, from: &str, to: &str) -> Result<()> {
        let _gate = self.registry.enter();
        let mut files = lock(&self.registry.files);
        self.inner.rename(from, to)?;
        if from == to {
            return Ok(());
        }
        self.forget(&mut files, to);
        if let Some(state) = files.by_name.remove(from) {
            files.by_name.insert(to.to_string(), state);
        }
        Ok(())
    }

    fn remove(&self, name: &str) -> Result<()> {
        let _gate = self.registry.enter();
        let mut files = lock(&self.registry.files);
        self.inner.remove(name)?;
        self.forget(&mut files, name);
        Ok(())
    }

    fn list(&self) -> Result<Vec<String>> {
        self.inner.list()
    }

    fn supports_parallel_reads(&self) -> bool {
        self.inner.supports_parallel_reads()
    }
}

/// A file of a [`FailpointDisk`].
struct FailpointFile {
    inner: Box<dyn File>,
    options: FailpointOptions,
    registry: Arc<Registry>,
    /// `None` when nothing is recorded.
    state: Option<Arc<Mutex<FileState>>>,
}

impl fmt::Debug for FailpointFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailpointFile").field("inner", &self.inner).finish()
    }
}

impl FailpointFile {
    /// Copies the durable bytes in `offset..end` that still exist, before a
    /// change destroys them; overflows the file past the bound.
    fn save(&self, state: &mut FileState, offset: u64, end: u64) -> Result<()> {
        if state.overflowed {
            return Ok(());
        }
        let end = end.min(state.durable_bytes).min(state.current_bytes);
        if offset >= end {
            return Ok(());
        }
        let length = end - offset;
        let total = self.registry.undo_bytes.fetch_add(length, Ordering::Relaxed) + length;
        if total > self.options.undo_bytes_max {
            self.registry.undo_bytes.fetch_sub(length, Ordering::Relaxed);
            self.registry.overflow(state);
            return Ok(());
        }
        state.undo_bytes += length;
        let mut bytes = vec![0u8; length as usize];
        let read = match self.inner.read_at(offset, &mut bytes) {
            Ok(read) => read,
            Err(error) => {
                state.undo_bytes -= length;
                self.registry.undo_bytes.fetch_sub(length, Ordering::Relaxed);
                return Err(error);
            }
        };
        // `current_bytes` says the bytes are there; a shorter read means the
        // file changed behind this disk's back.
        if read < bytes.len() {
            let short = (bytes.len() - read) as u64;
            state.undo_bytes -= short;
            self.registry.undo_bytes.fetch_sub(short, Ordering::Relaxed);
            bytes.truncate(read);
        }
        state.undo.push((offset, bytes));
        Ok(())
    }
}

impl File for FailpointFile {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn read_at(&self, offset: u64, buffer: &mut [u8]) -> Result<usize> {
        self.inner.read_at(offset, buffer)
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let Some(state) = &self.state else {
            return self.inner.write_at(offset, data);
        };
        let _gate = self.registry.enter();
        let mut state = lock(state);
        if state.detached {
            drop(state);
            return self.inner.write_at(offset, data);
        }
        let end = offset.checked_add(data.len() as u64).ok_or_else(|| StorageError::Io {
            file: self.inner.name().to_string(),
            operation: "write",
            source: io::Error::other("write past the largest offset"),
        })?;
        self.save(&mut state, offset, end)?;
        // Even a failed write may have changed some bytes: the copy above
        // covers them, and the length is taken as grown.
        let result = self.inner.write_at(offset, data);
        state.current_bytes = state.current_bytes.max(end);
        result
    }

    fn sync(&mut self) -> Result<()> {
        if self.options.skip_sync {
            return Ok(());
        }
        let Some(state) = &self.state else {
            return self.inner.sync();
        };
        let _gate = self.registry.enter();
        let mut state = lock(state);
        self.inner.sync()?;
        if !state.detached {
            self.registry.release(&mut state);
            state.overflowed = false;
            state.durable_bytes = state.current_bytes;
        }
        Ok(())
    }

    fn len(&self) -> Result<u64> {
        self.inner.len()
    }

    fn data_end(&self, from: u64) -> Result<u64> {
        self.inner.data_end(from)
    }

    fn truncate(&mut self, length: u64) -> Result<()> {
        let Some(state) = &self.state else {
            return self.inner.truncate(length);
        };
        let _gate = self.registry.enter();
        let mut state = lock(state);
        if state.detached {
            drop(state);
            return self.inner.truncate(length);
        }
        let current = state.current_bytes;
        self.save(&mut state, length, current)?;
        if state.overflowed {
            // Taken as reaching the disk, like the overwrites before it.
            state.durable_bytes = state.durable_bytes.min(length);
        }
        let result = self.inner.truncate(length);
        if result.is_ok() {
            state.current_bytes = length;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::FsDisk;
    use crate::sim_disk::SimRng;

    /// A fresh directory; removed when dropped.
    struct Directory(std::path::PathBuf);

    impl Directory {
        fn new(tag: &str) -> Directory {
            let path = std::env::temp_dir().join(format!("synod-failpoint-{}-{tag}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            Directory(path)
        }

        fn disk(&self, options: FailpointOptions) -> FailpointDisk {
            FailpointDisk::new(Arc::new(FsDisk::open(&self.0).unwrap()), options)
        }

        /// The file's bytes as a fresh process would find them.
        fn read(&self, name: &str) -> Vec<u8> {
            std::fs::read(self.0.join(name)).unwrap()
        }
    }

    impl Drop for Directory {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn recording() -> FailpointOptions {
        FailpointOptions {
            record_unsynced: true,
            ..FailpointOptions::default()
        }
    }

    #[test]
    fn power_loss_drops_what_was_not_synced() {
        let directory = Directory::new("append");
        let disk = directory.disk(recording());
        let mut file = disk.create("a").unwrap();
        file.write_at(0, b"durable").unwrap();
        file.sync().unwrap();
        file.append(b" lost").unwrap();
        assert_eq!(file.len().unwrap(), 12);
        let report = disk.power_loss().unwrap();
        assert_eq!(
            report,
            PowerLossReport {
                bytes_dropped: 5,
                files: 1
            }
        );
        drop((file, disk));
        assert_eq!(directory.read("a"), b"durable");
    }

    #[test]
    fn power_loss_restores_overwritten_and_truncated_durable_bytes() {
        let directory = Directory::new("overwrite");
        {
            let disk = directory.disk(FailpointOptions::default());
            let mut file = disk.create("a").unwrap();
            file.write_at(0, b"0123456789").unwrap();
            file.sync().unwrap();
        }
        let disk = directory.disk(recording());
        // Found on disk: taken as durable.
        let mut file = disk.open("a").unwrap();
        let mut other = disk.open("a").unwrap();
        file.write_at(2, b"ab").unwrap();
        other.write_at(3, b"XYZ").unwrap();
        file.truncate(4).unwrap();
        file.write_at(8, b"tail-after-the-end").unwrap();
        other.truncate(1).unwrap();
        file.write_at(0, b"q").unwrap();
        assert!(disk.undo_bytes() > 0);
        let report = disk.power_loss().unwrap();
        assert_eq!(report.files, 1);
        assert_eq!(disk.undo_bytes(), 0);
        drop((file, other, disk));
        assert_eq!(directory.read("a"), b"0123456789");
    }

    #[test]
    fn a_sync_from_any_handle_makes_the_file_durable() {
        let directory = Directory::new("handles");
        let disk = directory.disk(recording());
        let mut writer = disk.create("a").unwrap();
        let mut syncer = disk.open("a").unwrap();
        writer.write_at(0, b"kept").unwrap();
        syncer.sync().unwrap();
        writer.write_at(0, b"LOST, and longer").unwrap();
        assert_eq!(disk.undo_bytes(), 4);
        disk.power_loss().unwrap();
        drop((writer, syncer, disk));
        assert_eq!(directory.read("a"), b"kept");
    }

    #[test]
    fn renames_carry_the_record_and_removes_forget_it() {
        let directory = Directory::new("rename");
        let disk = directory.disk(recording());
        let mut file = disk.create("x.tmp").unwrap();
        file.write_at(0, b"synced").unwrap();
        file.sync().unwrap();
        file.append(b" unsynced").unwrap();
        let mut old = disk.create("x.snap").unwrap();
        old.write_at(0, b"old snapshot, unsynced").unwrap();
        disk.rename("x.tmp", "x.snap").unwrap();
        let mut gone = disk.create("gone").unwrap();
        gone.write_at(0, b"unsynced").unwrap();
        disk.remove("gone").unwrap();
        // Writes to the replaced or removed file are nobody's to undo.
        old.write_at(0, b"more").unwrap();
        gone.write_at(0, b"more").unwrap();
        let report = disk.power_loss().unwrap();
        assert_eq!(
            report,
            PowerLossReport {
                bytes_dropped: 9,
                files: 1
            }
        );
        drop((file, old, gone, disk));
        assert_eq!(directory.read("x.snap"), b"synced");
        assert!(!directory.0.join("gone").exists());
        assert!(!directory.0.join("x.tmp").exists());
    }

    #[test]
    fn skipping_syncs_loses_everything_since_the_open() {
        let directory = Directory::new("no-fsync");
        {
            let disk = directory.disk(FailpointOptions::default());
            let mut file = disk.create("old").unwrap();
            file.write_at(0, b"from before").unwrap();
            file.sync().unwrap();
        }
        let disk = directory.disk(FailpointOptions {
            skip_sync: true,
            ..recording()
        });
        let mut new = disk.create("new").unwrap();
        new.write_at(0, b"acknowledged").unwrap();
        new.sync().unwrap();
        let mut old = disk.open("old").unwrap();
        old.write_at(0, b"FROM").unwrap();
        old.sync().unwrap();
        old.append(b" and after").unwrap();
        old.sync().unwrap();
        let report = disk.power_loss().unwrap();
        assert_eq!(
            report,
            PowerLossReport {
                bytes_dropped: 12 + 4 + 10,
                files: 2
            }
        );
        drop((new, old, disk));
        assert_eq!(directory.read("new"), b"");
        assert_eq!(directory.read("old"), b"from before");
    }

    #[test]
    fn past_the_undo_bound_the_durable_region_is_taken_as_written_back() {
        let directory = Directory::new("bound");
        let disk = directory.disk(FailpointOptions {
            undo_bytes_max: 8,
            ..recording()
        });
        let mut file = disk.create("a").unwrap();
        file.write_at(0, b"0123456789").unwrap();
        file.sync().unwrap();
        file.write_at(0, b"abcd").unwrap();
        assert_eq!(disk.undo_bytes(), 4);
        // Eight more would pass the bound: the copies are given up.
        file.write_at(2, b"EFGHIJKL").unwrap();
        assert_eq!(disk.undo_bytes(), 0);
        file.truncate(6).unwrap();
        file.append(b"tail").unwrap();
        disk.power_loss().unwrap();
        drop((file, disk));
        // The overwrites and the truncate stay, the bytes past them go: a
        // state a power loss can leave, and no byte was invented.
        assert_eq!(directory.read("a"), b"abEFGH");
    }

    #[test]
    fn a_sync_after_overflowing_records_again() {
        let directory = Directory::new("bound-sync");
        let disk = directory.disk(FailpointOptions {
            undo_bytes_max: 4,
            ..recording()
        });
        let mut file = disk.create("a").unwrap();
        file.write_at(0, b"0123456789").unwrap();
        file.sync().unwrap();
        file.write_at(0, b"abcdefgh").unwrap();
        file.sync().unwrap();
        file.write_at(0, b"WXYZ").unwrap();
        disk.power_loss().unwrap();
        drop((file, disk));
        assert_eq!(directory.read("a"), b"abcdefgh89");
    }

    /// Random writes, truncates and syncs over a few files and handles,
    /// against a model of each file's durable image: the power loss leaves
    /// exactly the model.
    #[test]
    fn power_loss_restores_exactly_the_synced_images() {
        for seed in 0..40 {
            let directory = Directory::new(&format!("random-{seed}"));
            let mut rng = SimRng::new(seed);
            let skip_sync = seed % 4 == 3;
            let names = ["a", "b", "c"];
            let mut durable: HashMap<&str, Vec<u8>> = HashMap::new();
            // Some files exist before the disk is wrapped.
            {
                let disk = directory.disk(FailpointOptions::default());
                for name in &names[..2] {
                    let mut file = disk.create(name).unwrap();
                    let bytes: Vec<u8> = (0..rng.below(300)).map(|_| rng.next_u64() as u8).collect();
                    file.write_at(0, &bytes).unwrap();
                    file.sync().unwrap();
                    durable.insert(name, bytes);
                }
            }
            let disk = directory.disk(FailpointOptions {
                skip_sync,
                ..recording()
            });
            let mut current = durable.clone();
            let mut handles: Vec<(usize, Box<dyn File>)> = Vec::new();
            for (index, name) in names.iter().enumerate() {
                let file = match durable.contains_key(name) {
                    true => disk.open(name).unwrap(),
                    false => {
                        durable.insert(name, Vec::new());
                        current.insert(name, Vec::new());
                        disk.create(name).unwrap()
                    }
                };
                handles.push((index, file));
                handles.push((index, disk.open(name).unwrap()));
            }
            for _ in 0..200 {
                let (index, file) = &mut handles[rng.below(6) as usize];
                let name = names[*index];
                let image = current.get_mut(name).unwrap();
                match rng.below(10) {
                    0..=5 => {
                        let offset = rng.below(image.len() as u64 + 64);
                        let bytes: Vec<u8> = (0..1 + rng.below(64)).map(|_| rng.next_u64() as u8).collect();
                        file.write_at(offset, &bytes).unwrap();
                        let end = offset as usize + bytes.len();
                        if image.len() < end {
                            image.resize(end, 0);
                        }
                        image[offset as usize..end].copy_from_slice(&bytes);
                    }
                    6..=7 => {
                        let length = rng.below(image.len() as u64 + 32);
                        file.truncate(length).unwrap();
                        image.resize(length as usize, 0);
                    }
                    _ => {
                        file.sync().unwrap();
                        if !skip_sync {
                            durable.insert(name, image.clone());
                        }
                    }
                }
            }
            for (name, image) in &current {
                assert_eq!(
                    &directory.read(name),
                    image,
                    "seed {seed}: file {name} before the power loss"
                );
            }
            disk.power_loss().unwrap();
            drop((handles, disk));
            for (name, image) in &durable {
                assert_eq!(
                    &directory.read(name),
                    image,
                    "seed {seed}: file {name} after the power loss"
                );
            }
        }
    }
}
