//! Fault testing of the running binary.

pub mod workload;
