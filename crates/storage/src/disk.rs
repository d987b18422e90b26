//! The file abstraction: everything this crate persists goes through [`Disk`]
//! and [`File`], so the same log, metadata and snapshot code runs on real files
//! ([`FsDisk`]) and in the deterministic simulator ([`crate::SimDisk`]).
//!
//! A [`Disk`] is one flat directory of plainly named files. Directory changes
//! (create, rename, remove) are durable when the call returns; file contents
//! are durable only after [`File::sync`] returns.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Result, StorageError};

/// One flat directory of files.
pub trait Disk: Send + Sync + fmt::Debug {
    /// Creates a new empty file. Fails with [`StorageError::AlreadyExists`] if
    /// the name is taken. The new directory entry is durable on return.
    fn create(&self, name: &str) -> Result<Box<dyn File>>;

    /// Opens an existing file for reading and writing.
    fn open(&self, name: &str) -> Result<Box<dyn File>>;

    /// Whether a file of that name exists.
    fn exists(&self, name: &str) -> Result<bool>;

    /// Renames `from` to `to`, atomically replacing `to` if it exists. Durable
    /// on return.
    fn rename(&self, from: &str, to: &str) -> Result<()>;

    /// Removes a file. Durable on return.
    fn remove(&self, name: &str) -> Result<()>;

    /// The names of all files, sorted.
    fn list(&self) -> Result<Vec<String>>;

    /// Whether files may be read (and distinct files written) from several
    /// threads at once: recovery then reads and verifies segments on reader
    /// threads. A deterministic disk says no: the order of its reads must
    /// not depend on thread timing.
    fn supports_parallel_reads(&self) -> bool {
        true
    }
}

/// An open file.
pub trait File: Send + fmt::Debug {
    /// The name this file was opened under.
    fn name(&self) -> &str;

    /// Reads up to `buffer.len()` bytes at `offset`; fewer only at the end of
    /// the file. Returns how many bytes were read.
    fn read_at(&self, offset: u64, buffer: &mut [u8]) -> Result<usize>;

    /// Writes all of `data` at `offset`, extending the file if needed. Not
    /// durable until [`File::sync`] returns.
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()>;

    /// Makes every earlier write durable (`fdatasync`). An error here is
    /// [`StorageError::SyncFailed`] and must never be retried.
    fn sync(&mut self) -> Result<()>;

    /// The current length in bytes.
    fn len(&self) -> Result<u64>;

    /// Where the data that runs from `from` ends: the first hole at or after
    /// `from` that the file system reports, or else the file's length.
    /// Nothing but zeros lies between there and the next data, so a reader
    /// that wants only what was written may stop there.
    fn data_end(&self, from: u64) -> Result<u64> {
        let _ = from;
        self.len()
    }

    /// Whether the file is empty.
    fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Cuts the file to `length` bytes. Not durable until [`File::sync`].
    fn truncate(&mut self, length: u64) -> Result<()>;

    /// Reads exactly `buffer.len()` bytes at `offset`, or reports the file as
    /// truncated.
    fn read_exact_at(&self, offset: u64, buffer: &mut [u8], what: &'static str) -> Result<()> {
        let read = self.read_at(offset, buffer)?;
        if read < buffer.len() {
            return Err(StorageError::Truncated {
                file: self.name().to_string(),
                offset: offset + read as u64,
                what,
            });
        }
        Ok(())
    }

    /// Appends `data` at the current end of the file.
    fn append(&mut self, data: &[u8]) -> Result<u64> {
        let offset = self.len()?;
        self.write_at(offset, data)?;
        Ok(offset)
    }

    /// Reads the whole file, refusing files longer than `length_max` bytes so
    /// a corrupt or foreign file cannot make us allocate without bound.
    fn read_all(&self, length_max: u64, what: &'static str) -> Result<Vec<u8>> {
        let length = self.len()?;
        if length > length_max {
            return Err(StorageError::TooLarge {
                file: self.name().to_string(),
                what,
                length,
                limit: length_max,
            });
        }
        let mut buffer = vec![0u8; length as usize];
        self.read_exact_at(0, &mut buffer, what)?;
        Ok(buffer)
    }
}

/// Checks that `name` is a plain file name inside the disk's directory.
pub(crate) fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(StorageError::InvalidName { name: name.to_string() });
    }
    Ok(())
}

/// Real files in one directory, through `std::fs`.
///
/// `sync` is `fdatasync` (`File::sync_data`); after every create, rename and
/// remove the directory itself is fsynced so the entry change survives a crash.
///
/// While any clone of an `FsDisk` lives, its process holds an exclusive lock on
/// the directory's `LOCK` file, so two processes never write one replica's files.
#[derive(Debug, Clone)]
pub struct FsDisk {
    directory: PathBuf,
    _lock: std::sync::Arc<fs::File>,
}

/// The file whose lock marks a directory as in use.
pub const LOCK_FILE: &str = "LOCK";

impl FsDisk {
    /// Uses `directory`, creating it (and its parents) if missing, and locks it
    /// for this process; fails if another process holds it.
    pub fn open(directory: impl AsRef<Path>) -> Result<FsDisk> {
        let directory = directory.as_ref().to_path_buf();
        let label = directory.display().to_string();
        fs::create_dir_all(&directory).map_err(|e| StorageError::io(&label, "create_dir", e))?;
        let lock_path = directory.join(LOCK_FILE);
        let lock_label = lock_path.display().to_string();
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StorageError::io(&lock_label, "open", e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(StorageError::io(
                    &lock_label,
                    "lock",
                    std::io::Error::other("another process is using this data directory"),
                ))
            }
            Err(fs::TryLockError::Error(e)) => return Err(StorageError::io(&lock_label, "lock", e)),
        }
        Ok(FsDisk {
            directory,
            _lock: std::sync::Arc::new(lock),
        })
    }

    /// The directory this disk lives in.
    pub fn directory(&self) -> &Path {
        &self.directory
    }

    fn path(&self, name: &str) -> Result<PathBuf> {
        validate_name(name)?;
        Ok(self.directory.join(name))
    }

    fn sync_directory(&self) -> Result<()> {
        let label = self.directory.display().to_string();
        let directory = fs::File::open(&self.directory).map_err(|e| StorageError::io(&label, "open_dir", e))?;
        directory
            .sync_all()
            .map_err(|source| StorageError::SyncFailed { file: label, source })
    }
}

impl Disk for FsDisk {
    fn create(&self, name: &str) -> Result<Box<dyn File>> {
        let path = self.path(name)?;
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| StorageError::io(name, "create", e))?;
        self.sync_directory()?;
        Ok(Box::new(FsFile {
            name: name.to_string(),
            file,
        }))
    }

    fn open(&self, name: &str) -> Result<Box<dyn File>> {
        let path = self.path(name)?;
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| StorageError::io(name, "open", e))?;
        Ok(Box::new(FsFile {
            name: name.to_string(),
            file,
        }))
    }

    fn exists(&self, name: &str) -> Result<bool> {
        let path = self.path(name)?;
        path.try_exists().map_err(|e| StorageError::io(name, "exists", e))
    }

    fn rename(&self, from: &str, to: &str) -> Result<()> {
        let from_path = self.path(from)?;
        let to_path = self.path(to)?;
        fs::rename(&from_path, &to_path).map_err(|e| StorageError::io(from, "rename", e))?;
        self.sync_directory()
    }

    fn remove(&self, name: &str) -> Result<()> {
        let path = self.path(name)?;
        fs::remove_file(&path).map_err(|e| StorageError::io(name, "remove", e))?;
        self.sync_directory()
    }

    fn list(&self) -> Result<Vec<String>> {
        let label = self.directory.display().to_string();
        let mut names = Vec::new();
        let entries = fs::read_dir(&self.directory).map_err(|e| StorageError::io(&label, "list", e))?;
        for entry in entries {
            let entry = entry.map_err(|e| StorageError::io(&label, "list", e))?;
            let is_file = entry
                .file_type()
                .map_err(|e| StorageError::io(&label, "list", e))?
                .is_file();
            if let (true, Some(name)) = (is_file, entry.file_name().to_str()) {
                names.push(name.to_string());
            }
        }
        names.sort();
        Ok(names)
    }
}

/// A real open file.
#[derive(Debug)]
pub struct FsFile {
    name: String,
    file: fs::File,
}

impl File for FsFile {
    fn name(&self) -> &str {
        &self.name
    }

    fn read_at(&self, offset: u64, buffer: &mut [u8]) -> Result<usize> {
        let mut filled = 0;
        while filled < buffer.len() {
            match self.file.read_at(&mut buffer[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(read) => filled += read,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(StorageError::io(&self.name, "read", e)),
            }
        }
        Ok(filled)
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.file
            .write_all_at(data, offset)
            .map_err(|e| StorageError::io(&self.name, "write", e))
    }

    fn sync(&mut self) -> Result<()> {
        self.file.sync_data().map_err(|source| StorageError::SyncFailed {
            file: self.name.clone(),
            source,
        })
    }

    fn len(&self) -> Result<u64> {
        Ok(self
            .file
            .metadata()
            .map_err(|e| StorageError::io(&self.name, "stat", e))?
            .len())
    }

    /// `lseek(SEEK_HOLE)`. A file system without hole reporting answers with
    /// the file's length; an error (none is expected) falls back to it too.
    /// The seek moves the descriptor's offset, which nothing here uses: reads
    /// and writes give their offsets.
    fn data_end(&self, from: u64) -> Result<u64> {
        let length = self.len()?;
        if from >= length {
            return Ok(length);
        }
        Ok(rustix::fs::seek(&self.file, rustix::fs::SeekFrom::Hole(from)).map_or(length, |hole| hole.min(length)))
    }

    fn truncate(&mut self, length: u64) -> Result<()> {
        self.file
            .set_len(length)
            .map_err(|e| StorageError::io(&self.name, "truncate", e))
    }
}
