//! What a run measured: a latency histogram, errors by kind and completed
//! operations per second, recorded per client and merged at the end.
//!
//! Each client records into its own [`Recorder`], so the hot path takes no
//! lock; the merged [`Report`] is what the text output, the JSON file and the
//! plot are all made from, so the three never disagree.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// The most kinds of error a report lists one by one, so that messages carrying changing
/// details cannot grow it without bound.
pub const ERROR_KINDS_MAX: usize = 32;

/// The slowest latency the histogram can hold, in microseconds (one minute); slower ones are
/// clamped to it.
pub const LATENCY_US_MAX: u64 = 60_000_000;

/// One client's measurements.
#[derive(Debug, Clone)]
pub struct Recorder {
    latency_us: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    counters: BTreeMap<String, u64>,
    ops_per_second: Vec<u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    /// An empty recorder.
    pub fn new() -> Recorder {
        Recorder {
            // 3 significant figures: 0.1% resolution at every scale.
            latency_us: Histogram::new_with_bounds(1, LATENCY_US_MAX, 3)
                .expect("constant bounds: low 1, high above twice low, 3 figures"),
            errors: BTreeMap::new(),
            counters: BTreeMap::new(),
            ops_per_second: Vec::new(),
        }
    }

    /// A successful operation that took `latency` and ended `at` after the start.
    pub fn success(&mut self, latency: Duration, at: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_us.saturating_record(micros.clamp(1, LATENCY_US_MAX));
        let second = usize::try_from(at.as_secs()).unwrap_or(usize::MAX);
        // A bound on the per-second buckets: a day's worth, like the longest run.
        let second = second.min(crate::args::DURATION_S_MAX as usize);
        if self.ops_per_second.len() <= second {
            self.ops_per_second.resize(second + 1, 0);
        }
        self.ops_per_second[second] += 1;
    }

    /// A failed operation, counted under `kind` (a gRPC status code and message, "timeout",
    /// ...); past [`ERROR_KINDS_MAX`] kinds, new ones are counted as "other".
    pub fn error(&mut self, kind: &str) {
        self.add_error(kind, 1);
    }

    fn add_error(&mut self, kind: &str, count: u64) {
        let kind = if self.errors.len() < ERROR_KINDS_MAX || self.errors.contains_key(kind) {
            kind
        } else {
            "other"
        };
        *self.errors.entry(kind.to_string()).or_default() += count;
    }

    /// Counts `times` an outcome that is neither a success's latency nor an error (e.g. a txn
    /// whose compare failed).
    pub fn count(&mut self, name: &str, times: u64) {
        *self.counters.entry(name.to_string()).or_default() += times;
    }

    /// Adds `other`'s measurements to these.
    pub fn merge(&mut self, other: &Recorder) {
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
        self.merge_errors(other);
        for (name, count) in &other.counters {
            *self.counters.entry(name.clone()).or_default() += count;
        }
        if self.ops_per_second.len() < other.ops_per_second.len() {
            self.ops_per_second.resize(other.ops_per_second.len(), 0);
        }
        for (mine, theirs) in self.ops_per_second.iter_mut().zip(&other.ops_per_second) {
            *mine += theirs;
        }
    }

    /// Adds only `other`'s errors to these (for measurements whose successes are timed
    /// elsewhere, like the watch workload's puts).
    pub fn merge_errors(&mut self, other: &Recorder) {
        for (kind, count) in &other.errors {
            self.add_error(kind, *count);
        }
    }

    /// Successful operations so far.
    pub fn successes(&self) -> u64 {
        self.latency_us.len()
    }

    /// Failed operations so far.
    pub fn errors(&self) -> u64 {
        self.errors.values().sum()
    }

    /// The report of a run of `workload` whose measurement lasted `elapsed`.
    pub fn report(&self, workload: &str, elapsed: Duration) -> Report {
        let histogram = &self.latency_us;
        let at = |quantile: f64| {
            if histogram.is_empty() {
                0
            } else {
                histogram.value_at_quantile(quantile)
            }
        };
        let elapsed_s = elapsed.as_secs_f64();
        let ops = histogram.len();
        let latency_us = Percentiles {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
            max: if histogram.is_empty() { 0 } else { histogram.max() },
            mean: if histogram.is_empty() { 0.0 } else { histogram.mean() },
        };
        // The percentile curve in "nines": 0, 90, 99, 99.9, 99.99 % and between.
        let curve = (0..=CURVE_STEPS)
            .map(|step| {
                let nines = f64::from(step) * CURVE_NINES_MAX / f64::from(CURVE_STEPS);
                let percentile = 100.0 * (1.0 - 10f64.powf(-nines));
                CurvePoint {
                    percentile,
                    latency_us: at(percentile / 100.0),
                }
            })
            .collect();
        Report {
            workload: workload.to_string(),
            elapsed_s,
            ops,
            errors_total: self.errors(),
            errors: self.errors.clone(),
            counters: self.counters.clone(),
            throughput_ops_per_s: if elapsed_s > 0.0 { ops as f64 / elapsed_s } else { 0.0 },
            latency_us,
            latency_curve: curve,
            ops_per_second: self.ops_per_second.clone(),
        }
    }
}

/// Points on the percentile curve.
const CURVE_STEPS: u32 = 40;
/// The curve's last point in nines: 99.99 %.
const CURVE_NINES_MAX: f64 = 4.0;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// The slowest operation.
    pub max: u64,
    /// Arithmetic mean.
    pub mean: f64,
}

/// One point of the latency distribution.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CurvePoint {
    /// The percentile, 0 to 100.
    pub percentile: f64,
    /// The latency at it, in microseconds.
    pub latency_us: u64,
}

/// The outcome of one run, as printed and as written with `--json`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    /// The workload's name.
    pub workload: String,
    /// How long the measurement lasted, in seconds.
    pub elapsed_s: f64,
    /// Successful operations (for watch: events delivered to watchers).
    pub ops: u64,
    /// Failed operations.
    pub errors_total: u64,
    /// Failed operations by kind.
    pub errors: BTreeMap<String, u64>,
    /// Other outcomes by name, e.g. txns whose compare failed.
    pub counters: BTreeMap<String, u64>,
    /// Successful operations per second of the measurement.
    pub throughput_ops_per_s: f64,
    /// Latency percentiles, in microseconds.
    pub latency_us: Percentiles,
    /// The latency distribution from the median to 99.99 %.
    pub latency_curve: Vec<CurvePoint>,
    /// Successful operations completed in each second of the run.
    pub ops_per_second: Vec<u64>,
}

impl Report {
    /// The report as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|error| format!("{{\"error\": \"{error}\"}}"))
    }
}

/// Microseconds as milliseconds with three decimals.
fn ms(micros: u64) -> String {
    format!("{:.3} ms", micros as f64 / 1_000.0)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "workload     {}", self.workload)?;
        writeln!(f, "elapsed      {:.2} s", self.elapsed_s)?;
        writeln!(f, "ops          {}", self.ops)?;
        writeln!(f, "throughput   {:.1} ops/s", self.throughput_ops_per_s)?;
        writeln!(f, "errors       {}", self.errors_total)?;
        for (kind, count) in &self.errors {
            writeln!(f, "  {count:>10}  {kind}")?;
        }
        for (name, count) in &self.counters {
            writeln!(f, "{name:<12} {count}")?;
        }
        let latency = &self.latency_us;
        writeln!(
            f,
            "latency      p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            ms(latency.p50),
            ms(latency.p90),
            ms(latency.p99),
            ms(latency.p999),
            ms(latency.max)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut recorder = Recorder::new();
        for micros in 1..=1_000u64 {
            recorder.success(Duration::from_micros(micros), Duration::from_millis(micros * 2));
        }
        recorder.error("Unavailable");
        recorder.error("timeout");
        recorder.error("Unavailable");
        let report = recorder.report("put", Duration::from_secs(2));
        assert_eq!(report.ops, 1_000);
        assert_eq!(report.errors_total, 3);
        assert_eq!(report.errors["Unavailable"], 2);
        assert_eq!(report.latency_us.p50, 500);
        assert_eq!(report.latency_us.p90, 900);
        assert_eq!(report.latency_us.p99, 990);
        assert_eq!(report.latency_us.p999, 999);
        assert_eq!(report.latency_us.max, 1_000);
        assert!((report.throughput_ops_per_s - 500.0).abs() < 1e-9);
        // Completions at 2 ms .. 2 s: 499 in second 0, 500 in second 1, 1 in second 2.
        assert_eq!(report.ops_per_second, [499, 500, 1]);
        assert!(report
            .latency_curve
            .windows(2)
            .all(|pair| pair[0].latency_us <= pair[1].latency_us));
        assert_eq!(report.latency_curve[0].percentile, 0.0);
    }

    #[test]
    fn merging_adds_everything() {
        let mut first = Recorder::new();
        first.success(Duration::from_millis(1), Duration::ZERO);
        first.count("compare_failed", 1);
        let mut second = Recorder::new();
        second.success(Duration::from_millis(3), Duration::from_secs(3));
        second.error("timeout");
        second.count("compare_failed", 1);
        first.merge(&second);
        let report = first.report("txn", Duration::from_secs(4));
        assert_eq!(report.ops, 2);
        assert_eq!(report.errors_total, 1);
        assert_eq!(report.counters["compare_failed"], 2);
        assert_eq!(report.ops_per_second, [1, 0, 0, 1]);
    }

    #[test]
    fn error_kinds_are_bounded() {
        let mut recorder = Recorder::new();
        for index in 0..100 {
            recorder.error(&format!("Unknown (revision {index})"));
        }
        recorder.error("Unknown (revision 3)");
        let report = recorder.report("put", Duration::from_secs(1));
        assert_eq!(report.errors.len(), ERROR_KINDS_MAX + 1);
        assert_eq!(report.errors["Unknown (revision 3)"], 2);
        assert_eq!(report.errors["other"], 100 - ERROR_KINDS_MAX as u64);
        assert_eq!(report.errors_total, 101);
    }

    #[test]
    fn an_empty_run_reports_zeros_and_valid_json() {
        let report = Recorder::new().report("range", Duration::ZERO);
        assert_eq!(report.ops, 0);
        assert_eq!(report.latency_us.max, 0);
        assert_eq!(report.throughput_ops_per_s, 0.0);
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).expect("valid JSON");
        assert_eq!(json["workload"], "range");
        assert_eq!(json["errors_total"], 0);
        assert!(report.to_string().contains("throughput"));
    }

    #[test]
    fn json_carries_every_field() {
        let mut recorder = Recorder::new();
        recorder.success(Duration::from_micros(1_500), Duration::ZERO);
        let json: serde_json::Value =
            serde_json::from_str(&recorder.report("put", Duration::from_secs(1)).to_json()).expect("valid JSON");
        for field in [
            "workload",
            "elapsed_s",
            "ops",
            "errors_total",
            "errors",
            "counters",
            "throughput_ops_per_s",
            "latency_us",
            "latency_curve",
            "ops_per_second",
        ] {
            assert!(json.get(field).is_some(), "{field} missing");
        }
        for field in ["p50", "p90", "p99", "p999", "max", "mean"] {
            assert!(json["latency_us"].get(field).is_some(), "latency_us.{field} missing");
        }
        // 3 significant figures.
        assert!(json["latency_us"]["p50"]
            .as_u64()
            .is_some_and(|p50| (1_499..=1_501).contains(&p50)));
    }
}
