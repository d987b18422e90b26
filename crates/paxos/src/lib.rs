//! synod-paxos: the sans-IO Multi-Paxos core.
//!
//! This crate does no I/O, reads no clock, spawns nothing and draws randomness
//! only from what its caller passes in.

mod ballot;

pub use ballot::{Ballot, Instance, NodeId};
