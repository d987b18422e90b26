//! `synod bench`: a closed- or open-loop load generator for the etcd v3 API.
//!
//! It talks to the cluster only through the project's generated gRPC client
//! (`synod-proto`), never through anything synod-specific, so the same run
//! can be pointed at synod or at etcd and the two compared like for like
//! (`bench/compare.sh` does exactly that).
//!
//! # Layout
//!
//! - [`args`]: the flags and their bounds.
//! - [`keys`]: fixed-width keys in a key space, chosen by a seeded generator.
//! - [`schedule`]: closed loop or open loop, duration or total operations.
//! - [`report`]: latency histograms, errors by kind, throughput per second; text and JSON.
//! - [`svg`]: the report drawn as an SVG file.
//! - [`run`]: connections, clients, preload, and each workload.

#![deny(missing_docs)]

pub mod args;
pub mod keys;
pub mod report;
pub mod run;
pub mod schedule;
pub mod svg;

pub use args::{Args, Workload};
pub use report::Report;

/// Runs the benchmark the flags describe, prints its report on stdout and writes the
/// `--json` and `--plot` files.
pub async fn run_cli(args: Args) -> Result<(), String> {
    let report = run::run(&args).await?;
    print!("{report}");
    if let Some(path) = &args.json {
        std::fs::write(path, report.to_json() + "\n")
            .map_err(|error| format!("cannot write {}: {error}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        std::fs::write(path, svg::render(&report))
            .map_err(|error| format!("cannot write {}: {error}", path.display()))?;
    }
    Ok(())
}
