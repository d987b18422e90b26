//! synod-sim: the deterministic simulator and its checkers.
//!
//! A whole group runs in one thread, in virtual time, from one seed: the same
//! seed replays the same run exactly. The replicas are the very
//! `synod_paxos::Replica` the server runs; only the disk, the network, the
//! clocks and the clients are simulated.
//!
//! Set `SYNOD_SIM_TRACE=1` to print every replica's state every 500 simulated
//! milliseconds while replaying a seed.
//!
//! # Layout
//! - `swarm`: fault rates drawn per seed, and the planted bugs.
//! - `network`: latency, loss, duplication, reordering, partitions.
//! - `hostile`: variants of messages with a counter out of range or a forged
//!   ballot, which the network carries along and every replica must refuse.
//! - `replica_disk`: one replica's log, metadata and snapshots (synod-storage's
//!   own code) on a simulated disk that loses unsynced writes on a crash.
//! - `history`: the clients' operations, for the linearizability check.
//! - `linearizability`: Wing & Gong's search with Lowe's memoization, per key.
//! - `group`: a fault-free group in memory, for throughput and scripted scenarios.
//! - `cluster`: one run: faults, clients, and the checks after every step.

#![deny(missing_docs)]

pub mod cluster;
pub mod group;
pub mod history;
pub mod hostile;
pub mod linearizability;
pub mod network;
pub mod replica_disk;
pub mod swarm;

pub use cluster::{run_seed, RunConfig, RunReport, Simulation, Stats};
pub use swarm::{ChurnMix, FaultMix, SimBugs};
