//! synod-sim.

pub mod linearizability;
