//! synod-sim.
