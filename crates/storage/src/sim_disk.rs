//! [`SimDisk`]: an in-memory, deterministic [`Disk`] for the simulator.
//!
//! No I/O, no clock, no threads; every random choice comes from a PRNG seeded
//! by the caller, so a run replays exactly from its seed.
//!
//! Model:
//! - each file has a *durable* image (what survives a crash) and a *current*
//!   image (what reads see), plus the list of writes and truncates issued
//!   since the last sync;
//! - [`File::sync`] applies that list to the durable image;
//! - [`SimDisk::crash`] keeps a random prefix of each file's unsynced list,
//!   may tear the first write it drops (a prefix of its bytes survives), and
//!   makes every handle opened before it stale;
//! - directory operations are durable at once, as [`crate::FsDisk`] makes them;
//! - a failed sync drops the unsynced writes from the durable image while
//!   reads still see them, as Linux does after writeback errors: a retried
//!   sync would "succeed" and the data would still be lost on a crash.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use synod_paxos::SplitMix64;

use crate::disk::{validate_name, Disk, File};
use crate::error::{Result, StorageError};

/// The fault injector's deterministic generator: the core's [`SplitMix64`]
/// with the draws fault placement needs. Good enough for fault placement, and
/// it keeps the simulator free of any dependency's idea of randomness.
#[derive(Debug, Clone)]
pub struct SimRng {
    inner: SplitMix64,
}

impl SimRng {
    /// A generator whose whole sequence follows from `seed`.
    pub fn new(seed: u64) -> SimRng {
        SimRng {
            inner: SplitMix64::new(seed),
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.inner.next_u64()
    }

    /// A value in `0..bound`; `bound` must be positive.
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "below(0) has no values");
        self.next_u64() % bound
    }

    /// True with probability `probability` (clamped to 0..=1).
    pub fn chance(&mut self, probability: f64) -> bool {
        if probability <= 0.0 {
            return false;
        }
        if probability >= 1.0 {
            return true;
        }
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        unit < probability
    }
}

/// Per-run fault rates, each a probability per operation. All zero (the
/// default) means a perfect disk that still loses unsynced writes on crash.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultConfig {
    /// A read returns data with one bit flipped (the stored data is intact).
    pub read_bit_flip_probability: f64,
    /// A write stores its data with one bit flipped.
    pub write_bit_flip_probability: f64,
    /// A write lands at a wrong offset of the same file or in another file;
    /// its intended place is left untouched.
    pub misdirected_write_probability: f64,
    /// A read fails with EIO.
    pub read_error_probability: f64,
    /// A write fails with EIO and stores nothing.
    pub write_error_probability: f64,
    /// A sync fails with EIO (and its writes are not made durable).
    pub sync_error_probability: f64,
    /// On crash, the first dropped write of a file leaves a prefix of its
    /// bytes behind.
    pub torn_write_probability: f64,
}

/// How many faults of each kind were injected, randomly or on request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Reads that returned a flipped bit.
    pub read_bit_flips: u64,
    /// Writes stored with a flipped bit.
    pub write_bit_flips: u64,
    /// Bits flipped in stored data by [`SimDisk::flip_bit`].
    pub stored_bit_flips: u64,
    /// Writes that landed at a wrong offset or in a wrong file.
    pub misdirected_writes: u64,
    /// Reads that failed with EIO.
    pub read_errors: u64,
    /// Writes that failed with EIO.
    pub write_errors: u64,
    /// Syncs that failed with EIO.
    pub sync_errors: u64,
    /// Writes of which a crash kept only a prefix.
    pub torn_writes: u64,
    /// Calls to [`SimDisk::crash`].
    pub crashes: u64,
    /// Unsynced writes a crash or a failed sync dropped.
    pub unsynced_writes_lost: u64,
}

/// The operation a scheduled one-shot error applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Operation {
    /// [`File::read_at`].
    Read,
    /// [`File::write_at`].
    Write,
    /// [`File::sync`].
    Sync,
}

#[derive(Debug, Clone)]
enum Pending {
    Write { offset: u64, data: Vec<u8> },
    Truncate { length: u64 },
}

#[derive(Debug, Default)]
struct Inode {
    durable: Vec<u8>,
    current: Vec<u8>,
    unsynced: Vec<Pending>,
}

fn apply(image: &mut Vec<u8>, pending: &Pending) {
    match pending {
        Pending::Write { offset, data } => {
            let start = *offset as usize;
            let end = start + data.len();
            if image.len() < end {
                image.resize(end, 0);
            }
            image[start..end].copy_from_slice(data);
        }
        Pending::Truncate { length } => image.resize(*length as usize, 0),
    }
}

/// An error a test scheduled: see [`SimDisk::schedule_error_where`].
struct ScheduledError {
    name: String,
    operation: Operation,
    skip: u32,
    offset_min: u64,
}

struct State {
    rng: SimRng,
    faults: FaultConfig,
    counts: FaultCounts,
    names: BTreeMap<String, u64>,
    inodes: BTreeMap<u64, Inode>,
    inode_next: u64,
    generation: u64,
    scheduled_errors: Vec<ScheduledError>,
    /// Files whose sync loses power instead of completing, each with how
    /// many of its syncs complete first.
    power_failures: Vec<(String, u32)>,
    /// Latent sector errors: reads overlapping these ranges always fail.
    unreadable: Vec<(String, u64, u64)>,
    syncs: u64,
}

impl State {
    /// Whether an `operation` on `name` at `offset` (0 for a sync) fails
    /// because a test scheduled it.
    fn take_scheduled(&mut self, name: &str, operation: Operation, offset: u64) -> bool {
        let Some(position) = self
            .scheduled_errors
            .iter()
            .position(|e| e.name == name && e.operation == operation && offset >= e.offset_min)
        else {
            return false;
        };
        let scheduled = &mut self.scheduled_errors[position];
        if scheduled.skip > 0 {
            scheduled.skip -= 1;
            return false;
        }
        self.scheduled_errors.remove(position);
        true
    }
}

/// An in-memory deterministic disk shared by the storage code and the
/// simulator (clones share the same files).
#[derive(Clone)]
pub struct SimDisk {
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("SimDisk")
            .field("files", &state.names.len())
            .field("generation", &state.generation)
            .field("counts", &state.counts)
            .finish()
    }
}

fn eio(file: &str, operation: &'static str) -> StorageError {
    StorageError::Io {
        file: file.to_string(),
        operation,
        source: io::Error::other("injected EIO"),
    }
}

impl SimDisk {
    /// An empty disk whose random faults are drawn from `seed`.
    pub fn new(seed: u64, faults: FaultConfig) -> SimDisk {
        SimDisk {
            state: Arc::new(Mutex::new(State {
                rng: SimRng::new(seed),
                faults,
                counts: FaultCounts::default(),
                names: BTreeMap::new(),
                inodes: BTreeMap::new(),
                inode_next: 1,
                generation: 0,
                scheduled_errors: Vec::new(),
                power_failures: Vec::new(),
                unreadable: Vec::new(),
                syncs: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a test failure already; the data
        // is still consistent enough to report it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the fault rates, e.g. to stop injecting before a liveness phase.
    pub fn set_faults(&self, faults: FaultConfig) {
        self.lock().faults = faults;
    }

    /// The faults injected so far.
    pub fn fault_counts(&self) -> FaultCounts {
        self.lock().counts
    }

    /// How many syncs succeeded.
    pub fn sync_count(&self) -> u64 {
        self.lock().syncs
    }

    /// Loses power: every file keeps a random prefix of its unsynced writes
    /// (the first one dropped may be torn), and every open handle goes stale.
    pub fn crash(&self) {
        let mut guard = self.lock();
        let state = &mut *guard;
        state.generation += 1;
        state.counts.crashes += 1;
        let torn_probability = state.faults.torn_write_probability;
        for inode in state.inodes.values_mut() {
            let unsynced = std::mem::take(&mut inode.unsynced);
            let kept = state.rng.below(unsynced.len() as u64 + 1) as usize;
            for pending in &unsynced[..kept] {
                apply(&mut inode.durable, pending);
            }
            if let Some(Pending::Write { offset, data }) = unsynced.get(kept) {
                if data.len() > 1 && state.rng.chance(torn_probability) {
                    let prefix = 1 + state.rng.below(data.len() as u64 - 1) as usize;
                    apply(
                        &mut inode.durable,
                        &Pending::Write {
                            offset: *offset,
                            data: data[..prefix].to_vec(),
                        },
                    );
                    state.counts.torn_writes += 1;
                }
            }
            state.counts.unsynced_writes_lost += (unsynced.len() - kept) as u64;
            inode.current = inode.durable.clone();
        }
    }

    /// Flips bit `bit` (0..8) of the byte at `offset` of `name`, in both the
    /// durable and the current image: lasting corruption of stored data.
    pub fn flip_bit(&self, name: &str, offset: u64, bit: u8) -> Result<()> {
        let mut state = self.lock();
        let id = *state
            .names
            .get(name)
            .ok_or_else(|| StorageError::NotFound { file: name.to_string() })?;
        let inode = state.inodes.get_mut(&id).expect("named inode exists");
        let mask = 1u8 << (bit % 8);
        let mut flipped = false;
        for image in [&mut inode.durable, &mut inode.current] {
            if let Some(byte) = image.get_mut(offset as usize) {
                *byte ^= mask;
                flipped = true;
            }
        }
        if !flipped {
            return Err(StorageError::Truncated {
                file: name.to_string(),
                offset,
                what: "flip_bit target",
            });
        }
        state.counts.stored_bit_flips += 1;
        Ok(())
    }

    /// Makes the next sync of `name` lose power part-way: the whole disk
    /// [`crash`](SimDisk::crash)es (unsynced writes kept in part, possibly torn)
    /// and the sync returns an error.
    pub fn schedule_power_failure(&self, name: &str) {
        self.schedule_power_failure_after(name, 0);
    }

    /// Like [`SimDisk::schedule_power_failure`], but `completed_syncs` syncs
    /// of `name` complete first: aims the failure at a later sync, such as
    /// the one of a log segment's identifiers, which follows its frames'.
    pub fn schedule_power_failure_after(&self, name: &str, completed_syncs: u32) {
        self.lock().power_failures.push((name.to_string(), completed_syncs));
    }

    /// Makes an `operation` on `name` fail with EIO: the first one at or
    /// past `offset_min` (for reads and writes) after `skip` such operations
    /// succeeded. Aims a fault at a region of a file, or at a later sync.
    pub fn schedule_error_where(&self, name: &str, operation: Operation, skip: u32, offset_min: u64) {
        self.lock().scheduled_errors.push(ScheduledError {
            name: name.to_string(),
            operation,
            skip,
            offset_min,
        });
    }

    /// Makes the next `operation` on `name` fail with EIO.
    pub fn schedule_error(&self, name: &str, operation: Operation) {
        self.schedule_error_where(name, operation, 0, 0);
    }

    /// Drops every scheduled error and power failure that has not happened
    /// yet (latent sector errors stay: the damage is on the medium).
    pub fn cancel_scheduled(&self) {
        let mut state = self.lock();
        state.scheduled_errors.clear();
        state.power_failures.clear();
    }

    /// Makes every read of `name` that overlaps `offset..offset + length`
    /// fail with EIO from now on: a latent sector error.
    pub fn set_unreadable(&self, name: &str, offset: u64, length: u64) {
        self.lock().unreadable.push((name.to_string(), offset, offset + length));
    }

    /// The bytes reads of `name` currently see, without fault injection.
    pub fn contents(&self, name: &str) -> Option<Vec<u8>> {
        let state = self.lock();
        let id = state.names.get(name)?;
        Some(state.inodes[id].current.clone())
    }

    /// Overwrites `name` (durably) with `data`, creating it if needed: for
    /// tests that plant foreign or damaged files.
    pub fn put(&self, name: &str, data: &[u8]) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let id = match state.names.get(name) {
            Some(id) => *id,
            None => {
                let id = state.inode_next;
                state.inode_next += 1;
                state.names.insert(name.to_string(), id);
                state.inodes.insert(id, Inode::default());
                id
            }
        };
        let inode = state.inodes.get_mut(&id).expect("inode exists");
        inode.durable = data.to_vec();
        inode.current = data.to_vec();
        inode.unsynced.clear();
    }

    fn handle(&self, name: &str, id: u64, generation: u64) -> Box<dyn File> {
        Box::new(SimFile {
            disk: self.clone(),
            name: name.to_string(),
            inode: id,
            generation,
        })
    }
}

impl Disk for SimDisk {
    fn create(&self, name: &str) -> Result<Box<dyn File>> {
        validate_name(name)?;
        let mut state = self.lock();
        if state.names.contains_key(name) {
            return Err(StorageError::AlreadyExists { file: name.to_string() });
        }
        let id = state.inode_next;
        state.inode_next += 1;
        state.names.insert(name.to_string(), id);
        state.inodes.insert(id, Inode::default());
        let generation = state.generation;
        drop(state);
        Ok(self.handle(name, id, generation))
    }

    fn open(&self, name: &str) -> Result<Box<dyn File>> {
        validate_name(name)?;
        let state = self.lock();
        let id = *state
            .names
            .get(name)
            .ok_or_else(|| StorageError::NotFound { file: name.to_string() })?;
        let generation = state.generation;
        drop(state);
        Ok(self.handle(name, id, generation))
    }

    fn exists(&self, name: &str) -> Result<bool> {
        validate_name(name)?;
        Ok(self.lock().names.contains_key(name))
    }

    fn rename(&self, from: &str, to: &str) -> Result<()> {
        validate_name(from)?;
        validate_name(to)?;
        let mut state = self.lock();
        let id = state
            .names
            .remove(from)
            .ok_or_else(|| StorageError::NotFound { file: from.to_string() })?;
        if let Some(replaced) = state.names.insert(to.to_string(), id) {
            state.inodes.remove(&replaced);
        }
        Ok(())
    }

    fn remove(&self, name: &str) -> Result<()> {
        validate_name(name)?;
        let mut state = self.lock();
        let id = state
            .names
            .remove(name)
            .ok_or_else(|| StorageError::NotFound { file: name.to_string() })?;
        state.inodes.remove(&id);
        Ok(())
    }

    fn list(&self) -> Result<Vec<String>> {
        Ok(self.lock().names.keys().cloned().collect())
    }

    fn supports_parallel_reads(&self) -> bool {
        // Reads draw faults from the one PRNG: their order must be the
        // program's, not the scheduler's.
        false
    }
}

/// A handle to a file on a [`SimDisk`].
pub struct SimFile {
    disk: SimDisk,
    name: String,
    inode: u64,
    generation: u64,
}

impl fmt::Debug for SimFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimFile")
            .field("name", &self.name)
            .field("inode", &self.inode)
            .finish()
    }
}

impl SimFile {
    fn check(&self, state: &MutexGuard<'_, State>) -> Result<()> {
        if state.generation != self.generation {
            return Err(StorageError::StaleHandle {
                file: self.name.clone(),
            });
        }
        if !state.inodes.contains_key(&self.inode) {
            return Err(StorageError::NotFound {
                file: self.name.clone(),
            });
        }
        Ok(())
    }
}

impl File for SimFile {
    fn name(&self) -> &str {
        &self.name
    }

    fn read_at(&self, offset: u64, buffer: &mut [u8]) -> Result<usize> {
        let mut guard = self.disk.lock();
        self.check(&guard)?;
        let state = &mut *guard;
        let end = offset + buffer.len() as u64;
        let latent = state
            .unreadable
            .iter()
            .any(|(name, start, stop)| *name == self.name && *start < end && offset < *stop);
        if latent
            || state.take_scheduled(&self.name, Operation::Read, offset)
            || state.rng.chance(state.faults.read_error_probability)
        {
            state.counts.read_errors += 1;
            return Err(eio(&self.name, "read"));
        }
        let image = &state.inodes[&self.inode].current;
        let start = (offset as usize).min(image.len());
        let read = (image.len() - start).min(buffer.len());
        buffer[..read].copy_from_slice(&image[start..start + read]);
        if read > 0 && state.rng.chance(state.faults.read_bit_flip_probability) {
            let bit = state.rng.below(read as u64 * 8);
            buffer[(bit / 8) as usize] ^= 1 << (bit % 8);
            state.counts.read_bit_flips += 1;
        }
        Ok(read)
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let mut guard = self.disk.lock();
        self.check(&guard)?;
        let state = &mut *guard;
        if state.take_scheduled(&self.name, Operation::Write, offset)
            || state.rng.chance(state.faults.write_error_probability)
        {
            state.counts.write_errors += 1;
            return Err(eio(&self.name, "write"));
        }
        let mut data = data.to_vec();
        if !data.is_empty() && state.rng.chance(state.faults.write_bit_flip_probability) {
            let bit = state.rng.below(data.len() as u64 * 8);
            data[(bit / 8) as usize] ^= 1 << (bit % 8);
            state.counts.write_bit_flips += 1;
        }
        let mut target = self.inode;
        let mut target_offset = offset;
        if !data.is_empty() && state.rng.chance(state.faults.misdirected_write_probability) {
            state.counts.misdirected_writes += 1;
            let others: Vec<u64> = state.inodes.keys().copied().filter(|id| *id != self.inode).collect();
            if !others.is_empty() && state.rng.chance(0.5) {
                target = others[state.rng.below(others.len() as u64) as usize];
                let length = state.inodes[&target].current.len() as u64;
                target_offset = offset.min(length);
            } else {
                let length = state.inodes[&self.inode].current.len() as u64;
                let wrong = state.rng.below(length + data.len() as u64 + 1);
                // Anywhere but the place asked for, possibly past the end.
                target_offset = if wrong == offset {
                    offset + data.len() as u64
                } else {
                    wrong
                };
            }
        }
        let pending = Pending::Write {
            offset: target_offset,
            data,
        };
        let inode = state.inodes.get_mut(&target).expect("target inode exists");
        apply(&mut inode.current, &pending);
        inode.unsynced.push(pending);
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        let mut guard = self.disk.lock();
        self.check(&guard)?;
        if let Some(position) = guard.power_failures.iter().position(|(name, _)| *name == self.name) {
            if guard.power_failures[position].1 > 0 {
                guard.power_failures[position].1 -= 1;
            } else {
                guard.power_failures.remove(position);
                drop(guard);
                self.disk.crash();
                return Err(StorageError::SyncFailed {
                    file: self.name.clone(),
                    source: io::Error::other("power lost during fdatasync"),
                });
            }
        }
        let state = &mut *guard;
        if state.take_scheduled(&self.name, Operation::Sync, 0) || state.rng.chance(state.faults.sync_error_probability)
        {
            state.counts.sync_errors += 1;
            let inode = state.inodes.get_mut(&self.inode).expect("checked");
            state.counts.unsynced_writes_lost += inode.unsynced.len() as u64;
            inode.unsynced.clear();
            return Err(StorageError::SyncFailed {
                file: self.name.clone(),
                source: io::Error::other("injected EIO on fdatasync"),
            });
        }
        let inode = state.inodes.get_mut(&self.inode).expect("checked");
        for pending in std::mem::take(&mut inode.unsynced) {
            apply(&mut inode.durable, &pending);
        }
        state.syncs += 1;
        Ok(())
    }

    fn len(&self) -> Result<u64> {
        let state = self.disk.lock();
        self.check(&state)?;
        Ok(state.inodes[&self.inode].current.len() as u64)
    }

    fn truncate(&mut self, length: u64) -> Result<()> {
        let mut state = self.disk.lock();
        self.check(&state)?;
        let pending = Pending::Truncate { length };
        let inode = state.inodes.get_mut(&self.inode).expect("checked");
        apply(&mut inode.current, &pending);
        inode.unsynced.push(pending);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsynced_writes_are_lost_on_crash_and_synced_ones_survive() {
        let disk = SimDisk::new(1, FaultConfig::default());
        let mut file = disk.create("a").unwrap();
        file.write_at(0, b"durable").unwrap();
        file.sync().unwrap();
        for _ in 0..50 {
            file.append(b"-volatile").unwrap();
        }
        disk.crash();
        assert!(matches!(file.len(), Err(StorageError::StaleHandle { .. })));
        let file = disk.open("a").unwrap();
        let contents = file.read_all(1 << 20, "test").unwrap();
        assert!(contents.starts_with(b"durable"));
        assert!(contents.len() < 7 + 50 * 9, "some unsynced writes are lost");
        assert_eq!(disk.fault_counts().crashes, 1);
    }

    #[test]
    fn crash_can_tear_a_write() {
        let faults = FaultConfig {
            torn_write_probability: 1.0,
            ..FaultConfig::default()
        };
        let mut torn = 0;
        for seed in 0..20 {
            let disk = SimDisk::new(seed, faults.clone());
            let mut file = disk.create("a").unwrap();
            file.write_at(0, &[7u8; 100]).unwrap();
            disk.crash();
            let length = disk.contents("a").unwrap().len();
            if length > 0 && length < 100 {
                torn += 1;
            }
        }
        assert!(torn > 0);
    }

    #[test]
    fn same_seed_same_faults() {
        let run = |seed| {
            let faults = FaultConfig {
                read_bit_flip_probability: 0.3,
                write_bit_flip_probability: 0.3,
                misdirected_write_probability: 0.2,
                ..FaultConfig::default()
            };
            let disk = SimDisk::new(seed, faults);
            let mut a = disk.create("a").unwrap();
            let mut b = disk.create("b").unwrap();
            let mut reads = Vec::new();
            for i in 0..100u64 {
                a.append(&i.to_le_bytes()).unwrap();
                b.append(&i.to_le_bytes()).unwrap();
                let mut buffer = [0u8; 8];
                a.read_at(i * 4, &mut buffer).unwrap();
                reads.push(buffer);
            }
            (disk.contents("a"), disk.contents("b"), reads, disk.fault_counts())
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42).0, run(43).0);
    }

    #[test]
    fn scheduled_sync_error_loses_the_writes_even_if_a_retry_succeeds() {
        let disk = SimDisk::new(3, FaultConfig::default());
        let mut file = disk.create("a").unwrap();
        file.write_at(0, b"hello").unwrap();
        disk.schedule_error("a", Operation::Sync);
        assert!(file.sync().unwrap_err().is_sync_failure());
        file.sync().expect("the retry reports success");
        disk.crash();
        assert_eq!(disk.contents("a").unwrap(), b"");
        assert_eq!(disk.fault_counts().sync_errors, 1);
    }

    #[test]
    fn every_fault_kind_is_injected_and_counted() {
        let always = |configure: fn(&mut FaultConfig)| {
            let mut faults = FaultConfig::default();
            configure(&mut faults);
            let disk = SimDisk::new(9, faults);
            let mut a = disk.create("a").unwrap();
            let _other = disk.create("b").unwrap();
            let write = a.write_at(0, &[0u8; 64]);
            let mut buffer = [0u8; 64];
            let read = a.read_at(0, &mut buffer).map(|_| buffer);
            let sync = a.sync();
            (disk, write, read, sync)
        };
        let (disk, _, read, _) = always(|f| f.read_bit_flip_probability = 1.0);
        assert_eq!(disk.fault_counts().read_bit_flips, 1);
        assert_eq!(read.unwrap().iter().map(|b| b.count_ones()).sum::<u32>(), 1);
        assert_eq!(disk.contents("a").unwrap(), vec![0u8; 64], "stored data intact");

        let (disk, _, _, _) = always(|f| f.write_bit_flip_probability = 1.0);
        assert_eq!(disk.fault_counts().write_bit_flips, 1);
        let stored = disk.contents("a").unwrap();
        assert_eq!(stored.iter().map(|b| b.count_ones()).sum::<u32>(), 1);

        let (disk, _, _, _) = always(|f| f.misdirected_write_probability = 1.0);
        assert_eq!(disk.fault_counts().misdirected_writes, 1);
        let a = disk.contents("a").unwrap();
        let b = disk.contents("b").unwrap();
        assert!(a.len() != 64 || b.len() == 64, "the write did not land where asked");

        let (disk, write, read, sync) = always(|f| {
            f.write_error_probability = 1.0;
            f.read_error_probability = 1.0;
            f.sync_error_probability = 1.0;
        });
        assert!(matches!(write, Err(StorageError::Io { .. })));
        assert!(matches!(read, Err(StorageError::Io { .. })));
        assert!(sync.unwrap_err().is_sync_failure());
        let counts = disk.fault_counts();
        assert_eq!((counts.write_errors, counts.read_errors, counts.sync_errors), (1, 1, 1));
    }

    #[test]
    fn a_latent_sector_error_fails_every_overlapping_read() {
        let disk = SimDisk::new(1, FaultConfig::default());
        let mut file = disk.create("a").unwrap();
        file.write_at(0, &[1u8; 100]).unwrap();
        disk.set_unreadable("a", 50, 10);
        let mut buffer = [0u8; 10];
        assert!(file.read_at(45, &mut buffer).is_err());
        assert!(file.read_at(55, &mut buffer).is_err());
        assert!(file.read_at(60, &mut buffer).is_ok());
        assert!(file.read_at(40, &mut buffer).is_ok());
        assert_eq!(disk.fault_counts().read_errors, 2);
    }

    #[test]
    fn flip_bit_corrupts_stored_data() {
        let disk = SimDisk::new(3, FaultConfig::default());
        let mut file = disk.create("a").unwrap();
        file.write_at(0, &[0u8; 4]).unwrap();
        file.sync().unwrap();
        disk.flip_bit("a", 2, 1).unwrap();
        disk.crash();
        assert_eq!(disk.contents("a").unwrap(), vec![0, 0, 2, 0]);
        assert!(disk.flip_bit("a", 99, 0).is_err());
    }
}
