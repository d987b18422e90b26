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
//! # A walk-through
//! Three replicas in one process, the network a queue and the disk a vector:
//! wait for a master, submit a value to it, and watch every replica apply it.
//! A real host does the same with sockets, a clock and fsync (see
//! `examples/embedded.rs` for one on a real disk through `synod-storage`).
//!
//! ```
//! use std::collections::VecDeque;
//! use std::time::Duration;
//!
//! use bytes::Bytes;
//! use synod_paxos::{Config, FreshStart, Message, NodeId, Outcome, Persist, Replica, SubmitOutcome, Time};
//!
//! /// What a host keeps beside its replica.
//! #[derive(Default)]
//! struct Host {
//!     /// Stands in for the disk: a real host writes and fsyncs these.
//!     disk: Vec<Persist>,
//!     /// The state machine: here, the values in the order applied.
//!     applied: Vec<Bytes>,
//!     /// How the submits made here ended.
//!     outcomes: Vec<SubmitOutcome>,
//! }
//!
//! type Network = VecDeque<(NodeId, NodeId, Message)>;
//!
//! /// Acts on the replica's Ready in its documented order.
//! fn act(replica: &mut Replica, host: &mut Host, network: &mut Network) {
//!     let ready = replica.take_ready();
//!     // 1. Persist, durably, before anyone hears of it.
//!     host.disk.extend(ready.persist);
//!     // 2. Send.
//!     for envelope in ready.messages {
//!         network.push_back((replica.node(), envelope.to, envelope.message));
//!     }
//!     // 3. Apply what is chosen: in instance order, each exactly once.
//!     for committed in ready.committed {
//!         host.applied.extend(committed.applied_values().cloned());
//!     }
//!     // 4. Answer the submitters.
//!     host.outcomes.extend(ready.outcomes);
//! }
//!
//! let members: Vec<NodeId> = (1..=3).map(NodeId).collect();
//! let mut replicas: Vec<Replica> = members
//!     .iter()
//!     .map(|&node| {
//!         let config = Config::new(node, members.clone());
//!         // The seed is the replica's only randomness (election back-off).
//!         Replica::fresh(config, FreshStart::NewGroup, Time::ZERO, node.0)
//!     })
//!     .collect();
//! let mut hosts: Vec<Host> = (0..3).map(|_| Host::default()).collect();
//! let mut network = Network::new();
//!
//! let mut now = Time::ZERO;
//! let mut submitted_at = None;
//! while hosts.iter().any(|host| host.applied.is_empty()) {
//!     now = now + Duration::from_millis(5);
//!     assert!(now.as_nanos() < 60_000_000_000, "no progress in a minute");
//!     for (replica, host) in replicas.iter_mut().zip(&mut hosts) {
//!         replica.tick(now);
//!         act(replica, host, &mut network);
//!     }
//!     while let Some((from, to, message)) = network.pop_front() {
//!         let index = (to.0 - 1) as usize;
//!         replicas[index].step(now, from, message);
//!         act(&mut replicas[index], &mut hosts[index], &mut network);
//!     }
//!     // Submit once a master holds the lease.
//!     if submitted_at.is_none() {
//!         if let Some(master) = replicas.iter().position(|r| r.is_master() && r.holds_lease(now)) {
//!             replicas[master].submit(now, Bytes::from_static(b"x=1"), None).expect("the master takes it");
//!             act(&mut replicas[master], &mut hosts[master], &mut network);
//!             submitted_at = Some(master);
//!         }
//!     }
//! }
//! // Every replica applied the one value, and its submitter heard it committed.
//! for host in &hosts {
//!     assert_eq!(host.applied, [Bytes::from_static(b"x=1")]);
//! }
//! let master = submitted_at.expect("a master was elected");
//! assert!(matches!(hosts[master].outcomes[0].outcome, Outcome::Committed { .. }));
//! ```
//!
//! # Layout
//! - `ballot`: ballots `(round, incarnation, node)` and instance numbers.
//! - `encoding`: the binary encoding of messages (wire) and batches (log).
//! - `config`: every tunable with its unit, and [`Config::validate`].
//! - `master_lease`: PaxosLease, the diskless master lease.
//! - `message`: what replicas say to each other; batches and epochs.
//! - `output`: what the host must do ([`Ready`]) and what it hands back on restart.
//! - `replica`: acceptor, learner and master in one state machine.

#![deny(missing_docs)]

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
pub use message::{Batch, BatchId, Entry, Epoch, InvalidMessage, Message, PromiseEntry, RefuseReason, COUNTER_MAX};
pub use output::{
    Committed, DurableState, Envelope, FreshStart, Meta, Outcome, Persist, Ready, RejectReason, Rejected, StoredSlot,
    SubmitId, SubmitOutcome, Voting,
};
pub use replica::{PlantedBugs, ReadError, Replica, TransferError};
pub use rng::{mix64, SplitMix64};
pub use time::Time;
