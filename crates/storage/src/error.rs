//! The typed errors of this crate.

use std::io;

/// Every failure this crate reports. Bad input (corrupt, truncated or foreign
/// files) always arrives here as a value, never as a panic.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs, reason = "each variant's message says what its fields hold")]
pub enum StorageError {
    /// A read, write, truncate or directory operation failed.
    #[error("I/O error on {file} during {operation}: {source}")]
    Io {
        file: String,
        operation: &'static str,
        #[source]
        source: io::Error,
    },

    /// `fdatasync` failed. The kernel may already have dropped the dirty pages,
    /// so a retry could report success for data that is gone: the caller must
    /// stop (see [`crate::fatal_sync_error`]), never retry.
    #[error("sync of {file} failed: {source}; earlier writes may be lost, the process must stop")]
    SyncFailed {
        file: String,
        #[source]
        source: io::Error,
    },

    /// A file name with a path separator or a reserved name.
    #[error("invalid file name {name:?}: names are plain, non-empty and without '/'")]
    InvalidName { name: String },

    #[error("file not found: {file}")]
    NotFound { file: String },

    #[error("file already exists: {file}")]
    AlreadyExists { file: String },

    /// A handle opened before a simulated crash was used after it.
    #[error("stale handle to {file}: the disk crashed after it was opened")]
    StaleHandle { file: String },

    #[error("{file}: bad magic number {found:#x}, expected {expected:#x}")]
    BadMagic { file: String, found: u64, expected: u64 },

    #[error("{file}: unsupported format version {found}, this build reads {expected}")]
    UnsupportedVersion { file: String, found: u32, expected: u32 },

    #[error("{file}: truncated at offset {offset}: {what}")]
    Truncated {
        file: String,
        offset: u64,
        what: &'static str,
    },

    #[error("{file}: checksum mismatch in {what} at offset {offset}")]
    ChecksumMismatch {
        file: String,
        offset: u64,
        what: &'static str,
    },

    /// A length read from a file, or asked for by a caller, is over its bound.
    #[error("{file}: {what} of {length} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        file: String,
        what: &'static str,
        length: u64,
        limit: u64,
    },

    /// A structurally valid file whose contents contradict themselves.
    #[error("{file}: malformed: {what}")]
    Malformed { file: String, what: String },

    /// Neither metadata copy is usable. The promise the acceptor made cannot be
    /// recovered locally and must never be taken from peers: the replica
    /// refuses to start until an operator decides.
    #[error(
        "acceptor metadata is lost: {first_file}: {first_reason}; {second_file}: {second_reason}; refusing to start"
    )]
    MetadataUnrecoverable {
        first_file: String,
        first_reason: String,
        second_file: String,
        second_reason: String,
    },

    /// A snapshot failed verification when loaded or read for transfer.
    #[error("snapshot {file}: chunk {index} is corrupt")]
    SnapshotChunkCorrupt { file: String, index: u64 },

    /// A peer sent a chunk the installer did not ask for.
    #[error("snapshot transfer: expected chunk {expected} of instance {instance}, got chunk {got}")]
    UnexpectedChunk { instance: u64, expected: u64, got: u64 },

    /// A transferred chunk did not match the checksum it came with.
    #[error("snapshot transfer: chunk {index} of instance {instance} failed its checksum")]
    TransferChunkCorrupt { instance: u64, index: u64 },

    /// An operation on an installer that has no transfer in progress, or whose
    /// transfer is not complete yet.
    #[error("snapshot transfer: {what}")]
    TransferState { what: &'static str },

    #[error("invalid configuration: {what}")]
    InvalidConfig { what: String },

    /// The log stopped accepting work after an earlier failure.
    #[error("the log stopped after an earlier failure: {reason}")]
    Stopped { reason: String },

    /// The group-commit writer thread reported a failure for this request.
    #[error("group commit failed: {reason}")]
    GroupCommitFailed { reason: String },
}

impl StorageError {
    pub(crate) fn io(file: &str, operation: &'static str, source: io::Error) -> StorageError {
        if source.kind() == io::ErrorKind::NotFound {
            return StorageError::NotFound { file: file.to_string() };
        }
        if source.kind() == io::ErrorKind::AlreadyExists {
            return StorageError::AlreadyExists { file: file.to_string() };
        }
        StorageError::Io {
            file: file.to_string(),
            operation,
            source,
        }
    }

    /// True for errors that mean data may be lost and the process must stop.
    pub fn is_sync_failure(&self) -> bool {
        matches!(self, StorageError::SyncFailed { .. })
    }
}

/// Shorthand used throughout the crate.
pub type Result<T> = std::result::Result<T, StorageError>;
