//! Ballots and instance numbers.

use std::fmt;

/// A replica's identity within one group. Never zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

/// The position of one Basic Paxos instance in the replicated log. Instance 0 is
/// never used: the log starts at instance 1, so `Instance(0)` means "nothing yet".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instance(pub u64);

impl Instance {
    /// "Nothing yet": below the first instance of every log.
    pub const ZERO: Instance = Instance(0);

    /// The instance after this one.
    pub fn next(self) -> Instance {
        Instance(self.0 + 1)
    }

    /// The instance before this one; instance 0 has none (a bug to ask).
    pub fn prev(self) -> Instance {
        assert!(self.0 > 0, "instance 0 has no predecessor");
        Instance(self.0 - 1)
    }
}

impl fmt::Display for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "i{}", self.0)
    }
}

/// A proposal number, in PaxosLease's form: `(round, incarnation, node)`, ordered
/// lexicographically. The node id makes ballots of different proposers distinct;
/// the incarnation (bumped and persisted on every restart) keeps a restarted
/// proposer that forgot its rounds from reusing a ballot it issued before.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Ballot {
    /// Raised past every round seen to outbid the current master.
    pub round: u64,
    /// The proposer's incarnation: how many times it has started from its disk.
    pub incarnation: u64,
    /// The proposer, so that no two proposers issue the same ballot.
    pub node: NodeId,
}

impl Ballot {
    /// Below every ballot a proposer can issue (node ids are never zero).
    pub const ZERO: Ballot = Ballot {
        round: 0,
        incarnation: 0,
        node: NodeId(0),
    };

    /// The ballot `(round, incarnation, node)`.
    pub fn new(round: u64, incarnation: u64, node: NodeId) -> Ballot {
        Ballot {
            round,
            incarnation,
            node,
        }
    }
}

impl fmt::Display for Ballot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.round, self.incarnation, self.node.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ballots_order_by_round_then_incarnation_then_node() {
        let a = Ballot::new(1, 9, NodeId(9));
        let b = Ballot::new(2, 0, NodeId(1));
        assert!(a < b);
        assert!(Ballot::new(2, 1, NodeId(1)) > Ballot::new(2, 0, NodeId(3)));
        assert!(Ballot::new(2, 1, NodeId(3)) > Ballot::new(2, 1, NodeId(2)));
        assert!(Ballot::ZERO < Ballot::new(0, 0, NodeId(1)));
    }
}
