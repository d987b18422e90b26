//! Counters and histograms, rendered in the Prometheus text format at `/metrics`.
//!
//! Plain atomics: recording never blocks and never allocates.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use synod_storage::GroupCommitCounters;

/// Upper bounds of the latency buckets, in seconds.
const LATENCY_BUCKETS_SECONDS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
];
/// Upper bounds of the batch size buckets, in values.
const BATCH_BUCKETS_VALUES: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 512.0, 4096.0];

/// A histogram with fixed buckets.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    /// Sum of observations, in millionths of the unit.
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Counts one observation of `value` (seconds, or a count).
    pub fn observe(&self, value: f64) {
        if let Some(index) = self.bounds.iter().position(|bound| value <= *bound) {
            self.buckets[index].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add((value * 1e6) as u64, Ordering::Relaxed);
    }

    /// Counts one observation of `duration`, in seconds.
    pub fn observe_duration(&self, duration: Duration) {
        self.observe(duration.as_secs_f64());
    }

    /// The counts now, for a reader that computes quantiles (the status
    /// page, over the whole run or the difference of two readings). Each
    /// counter is read on its own, so a reading taken while observations
    /// arrive may count one in `count` and not yet in its bucket.
    pub fn read(&self) -> HistogramReading {
        HistogramReading {
            bounds: self.bounds,
            buckets: self
                .buckets
                .iter()
                .map(|bucket| bucket.load(Ordering::Relaxed))
                .collect(),
            count: self.count.load(Ordering::Relaxed),
            sum: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// A [`Histogram`]'s counts at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramReading {
    /// The buckets' upper bounds, ascending.
    pub bounds: &'static [f64],
    /// Observations in each bucket (not cumulative): above the previous
    /// bound, at most this one.
    pub buckets: Vec<u64>,
    /// Every observation, those above the highest bound included.
    pub count: u64,
    /// The sum of the observations.
    pub sum: f64,
}

impl HistogramReading {
    /// The upper bound of the bucket holding the `q`-th quantile (`q` in
    /// 0..=1), or `None` with no observations. A quantile among the
    /// observations above the highest bound answers that bound, as
    /// Prometheus's `histogram_quantile` does: read it as "at least".
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let bucketed: u64 = self.buckets.iter().sum();
        let total = self.count.max(bucketed);
        if total == 0 {
            return None;
        }
        // The rank of the observation wanted, from 1; a `q` out of range or
        // NaN is clamped (`as` saturates), never a panic.
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut cumulative = 0;
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            cumulative += bucket;
            if cumulative >= rank {
                return Some(*bound);
            }
        }
        self.bounds.last().copied()
    }
}

/// Every metric the server exports.
#[derive(Debug)]
pub struct Metrics {
    /// Submit to committed-and-applied at this member, in seconds.
    pub commit_latency: Histogram,
    /// Time for one Ready's records to become durable, in seconds.
    pub fsync_latency: Histogram,
    /// Values per committed batch.
    pub batch_values: Histogram,
    /// Times this member saw the master change.
    pub master_changes: AtomicU64,
    /// Submits that ended committed.
    pub proposals_committed: AtomicU64,
    /// Submits that ended rejected.
    pub proposals_rejected: AtomicU64,
    /// Submits whose outcome could not be known here.
    pub proposals_unknown: AtomicU64,
    /// Submits whose caller gave up waiting.
    pub proposals_timed_out: AtomicU64,
    /// Requests this follower forwarded to the master.
    pub proposals_forwarded: AtomicU64,
    /// The highest instance applied to the store.
    pub applied_instance: AtomicU64,
    /// The target revision of a compaction whose physical part is still
    /// running, 0 if none.
    pub compaction_pending_revision: AtomicI64,
    /// 1 while this member is the master, else 0.
    pub is_master: AtomicU64,
    /// Open watch streams.
    pub watch_streams: AtomicI64,
    /// Watchers across all streams.
    pub watchers: AtomicI64,
    /// Peer messages dropped at a full per-peer queue.
    pub peer_messages_dropped: AtomicU64,
    /// Peer messages the core refused unread (a counter out of range, or a
    /// proposer's ballot not of its sender).
    pub peer_messages_invalid: AtomicU64,
    /// Consistency checks the master closed (see `node/consistency.rs`).
    pub consistency_checks: AtomicU64,
    /// Members the master found with a state hash that differs from the
    /// majority's (each raises that member's CORRUPT alarm).
    pub consistency_mismatches: AtomicU64,
    /// The write-ahead log's group-commit counters, once its writer runs.
    pub wal: OnceLock<Arc<GroupCommitCounters>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            commit_latency: Histogram::new(&LATENCY_BUCKETS_SECONDS),
            fsync_latency: Histogram::new(&LATENCY_BUCKETS_SECONDS),
            batch_values: Histogram::new(&BATCH_BUCKETS_VALUES),
            master_changes: AtomicU64::new(0),
            proposals_committed: AtomicU64::new(0),
            proposals_rejected: AtomicU64::new(0),
            proposals_unknown: AtomicU64::new(0),
            proposals_timed_out: AtomicU64::new(0),
            proposals_forwarded: AtomicU64::new(0),
            applied_instance: AtomicU64::new(0),
            compaction_pending_revision: AtomicI64::new(0),
            is_master: AtomicU64::new(0),
            watch_streams: AtomicI64::new(0),
            watchers: AtomicI64::new(0),
            peer_messages_dropped: AtomicU64::new(0),
            peer_messages_invalid: AtomicU64::new(0),
            consistency_checks: AtomicU64::new(0),
            consistency_mismatches: AtomicU64::new(0),
            wal: OnceLock::new(),
        }
    }
}

impl Metrics {
    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.commit_latency.render(
            &mut out,
            "synod_commit_latency_seconds",
            "Time from a write's submit at the master to its applied outcome.",
        );
        self.fsync_latency.render(
            &mut out,
            "synod_fsync_latency_seconds",
            "Time to make one group of acceptor records durable.",
        );
        self.batch_values.render(
            &mut out,
            "synod_batch_values",
            "Client requests per chosen Paxos instance.",
        );
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
        };
        let gauge = |out: &mut String, name: &str, help: &str, value: i64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        };
        counter(
            &mut out,
            "synod_master_changes_total",
            "Times this member saw the master change.",
            self.master_changes.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP synod_proposals_total Client writes submitted here, by outcome.\n# TYPE synod_proposals_total counter"
        );
        for (outcome, value) in [
            ("committed", &self.proposals_committed),
            ("rejected", &self.proposals_rejected),
            ("unknown", &self.proposals_unknown),
            ("timed_out", &self.proposals_timed_out),
            ("forwarded", &self.proposals_forwarded),
        ] {
            let _ = writeln!(
                out,
                "synod_proposals_total{{outcome=\"{outcome}\"}} {}",
                value.load(Ordering::Relaxed)
            );
        }
        gauge(
            &mut out,
            "synod_applied_instance",
            "Highest Paxos instance applied to the state machine.",
            self.applied_instance.load(Ordering::Relaxed) as i64,
        );
        gauge(
            &mut out,
            "synod_compaction_pending_revision",
            "Target revision of a compaction whose history is still being dropped, 0 if none.",
            self.compaction_pending_revision.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "synod_is_master",
            "1 if this member is the Multi-Paxos master.",
            self.is_master.load(Ordering::Relaxed) as i64,
        );
        gauge(
            &mut out,
            "synod_watch_streams",
            "Open client watch streams.",
            self.watch_streams.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "synod_watchers",
            "Watchers across all watch streams.",
            self.watchers.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "synod_peer_messages_dropped_total",
            "Peer messages dropped because a peer's send queue was full.",
            self.peer_messages_dropped.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "synod_peer_messages_invalid_total",
            "Peer messages refused before the core acted on them: a round, incarnation or instance out of range, or a ballot not of its sender.",
            self.peer_messages_invalid.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "synod_consistency_checks_total",
            "Consistency checks of the members' state hashes this member closed as master.",
            self.consistency_checks.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "synod_consistency_mismatches_total",
            "Members found with a state hash that differs from the majority's at a consistency check (each raises a CORRUPT alarm).",
            self.consistency_mismatches.load(Ordering::Relaxed),
        );
        if let Some(wal) = self.wal.get() {
            let stats = wal.snapshot();
            let seconds = |out: &mut String, name: &str, help: &str, micros: u64| {
                let _ = writeln!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                    micros as f64 / 1e6
                );
            };
            counter(
                &mut out,
                "synod_wal_batches_total",
                "Batches of log records the group commit made durable.",
                stats.batches,
            );
            counter(
                &mut out,
                "synod_wal_records_total",
                "Log records the group commit made durable.",
                stats.records,
            );
            counter(
                &mut out,
                "synod_wal_syncs_total",
                "fdatasyncs of the log: one per batch, and one for identifiers no batch followed at once.",
                stats.syncs,
            );
            counter(
                &mut out,
                "synod_wal_metadata_writes_total",
                "Acceptor metadata updates made durable (two copies each).",
                stats.metadata_writes,
            );
            seconds(
                &mut out,
                "synod_wal_sync_seconds_total",
                "Time the log writer spent writing and syncing frames and identifiers.",
                stats.sync_micros,
            );
            seconds(
                &mut out,
                "synod_wal_metadata_sync_seconds_total",
                "Time the log writer spent writing and syncing acceptor metadata.",
                stats.metadata_sync_micros,
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_answer_the_bound_of_the_bucket_that_holds_them() {
        let histogram = Histogram::new(&LATENCY_BUCKETS_SECONDS);
        assert_eq!(histogram.read().quantile(0.5), None);
        for _ in 0..98 {
            histogram.observe(0.0003);
        }
        histogram.observe(0.003);
        histogram.observe(0.1);
        let reading = histogram.read();
        assert_eq!(reading.count, 100);
        assert_eq!(reading.quantile(0.5), Some(0.0005));
        assert_eq!(reading.quantile(0.98), Some(0.0005));
        assert_eq!(reading.quantile(0.99), Some(0.004));
        assert_eq!(reading.quantile(1.0), Some(0.128));
        assert_eq!(reading.quantile(f64::NAN), Some(0.0005));
        // Above the highest bound: that bound, read as "at least".
        for _ in 0..200 {
            histogram.observe(60.0);
        }
        assert_eq!(histogram.read().quantile(0.99), Some(4.096));
    }
}
