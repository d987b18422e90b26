//! Embedding synod-paxos with a real disk: three replicas in one process, each
//! with its own directory opened through `synod-storage`, a value log agreed
//! on, then every replica stopped and restarted from what its disk holds.
//!
//! ```text
//! cargo run -p synod-paxos --example embedded [DIRECTORY]
//! ```
//!
//! The network is an in-memory queue and time a counter moved 5 ms per round,
//! so a run is the same every time; a server passes its monotonic clock's
//! readings and its sockets instead. What is real is the disk: every Ready's
//! records are written and fsynced before its messages leave, which is the
//! rule that makes an acceptor's promise worth anything.

use std::collections::VecDeque;
use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use synod_paxos::{Config, FreshStart, Message, NodeId, Outcome, Replica, Time};
use synod_storage::{AcceptorStore, AcceptorStoreConfig, FsDisk};

type Network = VecDeque<(NodeId, NodeId, Message)>;

/// One member: the core, its store, and the state machine (here, the values
/// in the order applied).
struct Member {
    replica: Replica,
    store: AcceptorStore,
    applied: Vec<Bytes>,
    committed_submits: usize,
}

impl Member {
    /// Opens the member's directory and builds its replica: fresh on an empty
    /// disk, restarted from the disk otherwise.
    fn open(directory: &Path, node: NodeId, members: &[NodeId], now: Time) -> Result<Member, Box<dyn Error>> {
        let disk = Arc::new(FsDisk::open(directory.join(node.to_string()))?);
        let (store, recovered) = AcceptorStore::open(disk, &AcceptorStoreConfig::default())?;
        let config = Config::new(node, members.to_vec());
        let seed = node.0;
        let replica = match recovered.durable {
            None => Replica::fresh(config, FreshStart::NewGroup, now, seed),
            Some(durable) => Replica::restart(config, durable, now, seed),
        };
        let mut member = Member {
            replica,
            store,
            applied: Vec::new(),
            committed_submits: 0,
        };
        // This example takes no snapshots, so a restart applies the log again
        // from its start: the restarted replica delivers every chosen value.
        member.act(&mut Network::new())?;
        Ok(member)
    }

    /// Acts on the replica's Ready in its documented order.
    fn act(&mut self, network: &mut Network) -> Result<(), Box<dyn Error>> {
        let ready = self.replica.take_ready();
        // 1. Persist, and make it durable, before anyone hears of it.
        if !ready.persist.is_empty() {
            self.store.write(&ready.persist)?;
            self.store.sync()?;
        }
        // 2. Send.
        for envelope in ready.messages {
            network.push_back((self.replica.node(), envelope.to, envelope.message));
        }
        // 3. Apply, in instance order, each exactly once.
        for committed in ready.committed {
            self.applied.extend(committed.applied_values().cloned());
        }
        // 4. Answer the submitters.
        for outcome in ready.outcomes {
            if let Outcome::Committed { .. } = outcome.outcome {
                self.committed_submits += 1;
            }
        }
        Ok(())
    }
}

/// A group of three on disk under `directory`, driven round by round.
struct Group {
    members: Vec<Member>,
    network: Network,
    now: Time,
}

impl Group {
    fn open(directory: &Path, now: Time) -> Result<Group, Box<dyn Error>> {
        let ids: Vec<NodeId> = (1..=3).map(NodeId).collect();
        let members = ids
            .iter()
            .map(|&node| Member::open(directory, node, &ids, now))
            .collect::<Result<_, _>>()?;
        Ok(Group {
            members,
            network: Network::new(),
            now,
        })
    }

    /// One round: 5 ms pass, every replica ticks, every message is delivered.
    fn round(&mut self) -> Result<(), Box<dyn Error>> {
        self.now = self.now + Duration::from_millis(5);
        for member in &mut self.members {
            member.replica.tick(self.now);
            member.act(&mut self.network)?;
        }
        while let Some((from, to, message)) = self.network.pop_front() {
            let member = &mut self.members[(to.0 - 1) as usize];
            member.replica.step(self.now, from, message);
            member.act(&mut self.network)?;
        }
        Ok(())
    }

    /// Waits for a master holding the lease, submits `values` to it, and
    /// runs until every member has applied `applied_total` values.
    fn commit(&mut self, values: &[&'static str], applied_total: usize) -> Result<(), Box<dyn Error>> {
        let deadline = self.now + Duration::from_secs(60);
        let mut submitted = false;
        while self.members.iter().any(|member| member.applied.len() < applied_total) {
            if self.now > deadline {
                return Err("no progress in 60 s of simulated time".into());
            }
            self.round()?;
            if submitted {
                continue;
            }
            let now = self.now;
            if let Some(master) = self
                .members
                .iter_mut()
                .find(|member| member.replica.is_master() && member.replica.holds_lease(now))
            {
                for value in values {
                    if let Err(rejected) = master.replica.submit(now, Bytes::from_static(value.as_bytes()), None) {
                        return Err(format!("{value}: {:?}", rejected.reason).into());
                    }
                }
                master.act(&mut self.network)?;
                submitted = true;
            }
        }
        Ok(())
    }
}

/// The whole example: commit, stop everything, restart from disk, commit more.
/// Returns what each member applied after the restart.
fn run(directory: &Path) -> Result<Vec<Vec<Bytes>>, Box<dyn Error>> {
    let mut group = Group::open(directory, Time::ZERO)?;
    group.commit(&["x=1", "y=2", "z=3"], 3)?;
    let master = group.members.iter().position(|m| m.committed_submits > 0);
    println!(
        "committed 3 values through n{}; every member applied {:?}",
        master.map_or(0, |index| index + 1),
        group.members[0].applied
    );
    let stopped_at = group.now;
    drop(group);

    // A new process would start from here: only the disks remain.
    let mut group = Group::open(directory, stopped_at)?;
    for member in &group.members {
        println!(
            "n{} restarted from disk: promise {}, incarnation {}, re-applied {} values",
            member.replica.node().0,
            member.replica.meta().promised,
            member.replica.meta().incarnation,
            member.applied.len()
        );
    }
    group.commit(&["x=4"], 4)?;
    println!("after the restart every member applied {:?}", group.members[0].applied);
    Ok(group.members.into_iter().map(|member| member.applied).collect())
}

fn main() -> Result<(), Box<dyn Error>> {
    let directory = match std::env::args_os().nth(1) {
        Some(directory) => PathBuf::from(directory),
        None => std::env::temp_dir().join(format!("synod-embedded-{}", std::process::id())),
    };
    println!("data in {}", directory.display());
    run(&directory)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_survive_a_restart_of_every_member_from_disk() {
        let directory = std::env::temp_dir().join(format!("synod-embedded-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&directory);
        let applied = run(&directory).expect("the example runs");
        let expected: Vec<Bytes> = ["x=1", "y=2", "z=3", "x=4"]
            .iter()
            .map(|v| Bytes::from_static(v.as_bytes()))
            .collect();
        for values in applied {
            assert_eq!(values, expected);
        }
        std::fs::remove_dir_all(&directory).unwrap();
    }
}
