//! What to do when a sync fails.

use crate::error::StorageError;

/// Stops the process after a failed `fdatasync` (or a failed write the log
/// cannot undo). Retrying is never safe: Linux may have dropped the dirty
/// pages and marked them clean, so a second sync can succeed with the data
/// gone. Restarting makes recovery read what really is on disk.
pub fn fatal_sync_error(error: &StorageError) -> ! {
    tracing::error!(%error, "storage sync failed; stopping the process without retrying");
    eprintln!("synod-storage: FATAL: {error}; stopping without retrying the sync");
    std::process::abort()
}
