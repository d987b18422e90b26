//! The power-loss failpoint (`--failpoint-power-loss`), for fault harnesses.
//!
//! A `kill -9` loses nothing a member wrote: the page cache survives the
//! process. With the failpoint, the member's storage goes through a
//! [`FailpointDisk`] that records what every write and truncate since each
//! file's last successful sync changed. On SIGUSR1 the member, holding the
//! disk's gate so that no write or sync runs meanwhile (and none runs after),
//! rolls every file back to its durable image, fsyncs the rollback, logs
//! `power loss: dropped N unsynced bytes in M files`, and exits at once with
//! [`POWER_LOSS_EXIT_CODE`] (137, as a shell reports a `kill -9`) through
//! `std::process::exit`: no destructor, no flush, no further write.
//!
//! With `--unsafe-bug no-fsync` as well, syncs do nothing and never advance
//! the durable image, so a power loss drops everything written since each
//! file was opened (files found on disk at start are taken as durable).
//!
//! What the failpoint does not cover:
//! - the identity files (`member`, `member.copy`), written once at a first
//!   start with their own fsyncs, outside the storage's `Disk`;
//! - directory entries: creates, renames and removes are durable at once (the
//!   storage fsyncs the directory after each), so they are never undone, and
//!   the `LOCK` file and the directories themselves are not tracked;
//! - partial outcomes: an unsynced write is dropped whole, never torn, and
//!   all unsynced writes are dropped, never a subset of them (the worst case
//!   for loss, not every case a real power loss can leave);
//! - past the undo bound ([`synod_storage::UNDO_BYTES_MAX_DEFAULT`] bytes of
//!   overwritten durable data across files), a file's overwrites since its
//!   last sync are kept, as if written back; see [`FailpointDisk`];
//! - a SIGUSR1 that arrives before the handler is installed, early in start-up,
//!   ends the process with the signal's default action instead.
//!
//! One member's power loss is that member's alone; a harness that wants the
//! whole group to lose power signals every member.

use synod_storage::FailpointDisk;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// The exit code of a member that lost power: 128 + 9, as a shell reports a
/// process killed by SIGKILL.
pub const POWER_LOSS_EXIT_CODE: i32 = 137;

/// Starts catching SIGUSR1, as early in start-up as possible: a signal that
/// arrives before the disk is open waits in the stream.
pub fn listen() -> std::io::Result<Signal> {
    signal(SignalKind::user_defined1())
}

/// On the first SIGUSR1, loses power: see the module comment. Never returns
/// once the signal arrives.
pub fn arm(mut signals: Signal, disk: FailpointDisk) {
    tokio::spawn(async move {
        if signals.recv().await.is_none() {
            return;
        }
        // The rollback blocks on files: off the async threads.
        let _ = tokio::task::spawn_blocking(move || lose_power(&disk)).await;
        std::process::exit(POWER_LOSS_EXIT_CODE);
    });
}

fn lose_power(disk: &FailpointDisk) -> ! {
    match disk.power_loss() {
        Ok(report) => tracing::warn!(
            bytes_dropped = report.bytes_dropped,
            files = report.files,
            "power loss: dropped {} unsynced bytes in {} files",
            report.bytes_dropped,
            report.files
        ),
        Err(error) => tracing::error!(%error, "power loss: the rollback failed part way"),
    }
    std::process::exit(POWER_LOSS_EXIT_CODE)
}
