//! synod-paxos: the sans-IO Multi-Paxos core.
//!
//! This crate does no I/O, reads no clock, spawns nothing and draws randomness
//! only from the seed its caller passes in. Hosts (the deterministic simulator
//! and the server) drive the same [`Replica`]:
//!
//! - [`Replica::tick`] with the current reading of the host's monotonic clock,
//! - [`Replica::step`] with each message from a peer,
//! - [`Replica::submit`] with each value to append to the log,
//!
//! and after every call take [`Replica::take_ready`] and act on the [`Ready`]
//! in its documented order: persist durably, then send, then apply.
//!
//! # Layout
//! - `ballot`: ballots `(round, incarnation, node)` and instance numbers.
//! - `encoding`: the binary encoding of messages (wire) and batches (log).
//! - `config`: every tunable with its unit, and [`Config::validate`].
//! - `master_lease`: PaxosLease, the diskless master lease.
//! - `message`: what replicas say to each other; batches and epochs.
//! - `output`: what the host must do ([`Ready`]) and what it hands back on restart.
//! - `replica`: acceptor, learner and master in one state machine.

mod ballot;
mod config;
mod encoding;
mod master_lease;
mod message;
mod output;
mod replica;
mod rng;
mod time;

pub use ballot::{Ballot, Instance, NodeId};
pub use config::{Config, ConfigError};
pub use encoding::{decode_batch, decode_message, encode_batch, encode_message, CodecError, CODEC_VERSION};
pub use message::{Batch, BatchId, Entry, Epoch, Message, PromiseEntry, RefuseReason};
pub use output::{
    Committed, DurableState, Envelope, FreshStart, Meta, Outcome, Persist, Ready, RejectReason, Rejected, StoredSlot,
    SubmitId, SubmitOutcome, Voting,
};
pub use replica::{PlantedBugs, ReadError, Replica};
pub use rng::{mix64, SplitMix64};
pub use time::Time;
