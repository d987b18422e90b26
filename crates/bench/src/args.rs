//! The load generator's flags, shared by `synod bench` and anything else that
//! embeds the generator, with every bound in one place.
//!
//! Each flag has a hard bound so that a typo cannot open a million
//! connections or allocate gigabytes: single flags are checked by clap's value
//! parsers (so the error names the flag), and combinations of flags by
//! [`Args::validate`].

use std::path::PathBuf;
use std::time::Duration;

use clap::ValueEnum;

/// The most clients (concurrent request loops) one run may have.
pub const CLIENTS_MAX: u32 = 10_000;
/// The most gRPC connections one run may open.
pub const CONNECTIONS_MAX: u32 = 1_000;
/// The most endpoints `--endpoints` may list.
pub const ENDPOINTS_MAX: usize = 64;
/// The largest value, in bytes: 1 MiB, below etcd's default request limit of 1.5 MiB.
pub const VALUE_SIZE_BYTES_MAX: u64 = 1 << 20;
/// The longest key, in bytes.
pub const KEY_SIZE_BYTES_MAX: u64 = 1_024;
/// The most distinct keys a run may touch (and preload).
pub const KEY_SPACE_MAX: u64 = 1_000_000;
/// The longest run, in seconds (one day).
pub const DURATION_S_MAX: u64 = 86_400;
/// The most operations one run may issue.
pub const TOTAL_MAX: u64 = 1_000_000_000;
/// The highest open-loop rate, in operations per second.
pub const RATE_PER_S_MAX: u64 = 10_000_000;
/// The most watchers the watch workload may open.
pub const WATCHERS_MAX: u32 = 10_000;
/// The prefix of every key the generator writes, so its keys are easy to find and delete.
pub const KEY_PREFIX: &str = "bench/";
/// Bytes at the front of a watch workload's value that carry the send time.
pub const STAMP_BYTES: u64 = 8;

/// What the clients do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Put a random key of the key space.
    Put,
    /// Linearizable single-key range (served through the master's lease).
    Range,
    /// Serializable single-key range (served by whichever member is asked).
    RangeSerializable,
    /// Compare-and-swap: a txn that puts a key only if its mod_revision is the one last seen.
    Txn,
    /// Linearizable ranges and puts, `--read-percent` of them reads.
    Mixed,
    /// Clients put stamped values; `--watchers` watchers on the key prefix measure delivery.
    Watch,
    /// Each client holds one lease and sends keep-alives on a LeaseKeepAlive stream.
    Lease,
}

impl Workload {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Range => "range",
            Workload::RangeSerializable => "range-serializable",
            Workload::Txn => "txn",
            Workload::Mixed => "mixed",
            Workload::Watch => "watch",
            Workload::Lease => "lease",
        }
    }

    /// Whether the key space must hold a value for every key before measuring.
    pub fn needs_preload(self) -> bool {
        matches!(
            self,
            Workload::Range | Workload::RangeSerializable | Workload::Txn | Workload::Mixed
        )
    }
}

/// `synod bench` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The workload to run.
    #[arg(value_enum)]
    pub workload: Workload,
    /// Client addresses, HOST:PORT, http://HOST:PORT or https://HOST:PORT, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:2379", value_parser = parse_endpoint)]
    pub endpoints: Vec<String>,
    /// gRPC connections (HTTP/2 channels), spread round-robin over the endpoints.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=CONNECTIONS_MAX as i64))]
    pub connections: u32,
    /// Concurrent clients, each with one request in flight, spread over the connections.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=CLIENTS_MAX as i64))]
    pub clients: u32,
    /// How long to measure, in seconds (the default unless --total is given).
    #[arg(long, conflicts_with = "total", value_parser = clap::value_parser!(u64).range(1..=DURATION_S_MAX))]
    pub duration_s: Option<u64>,
    /// Stop after this many operations instead of after a duration.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=TOTAL_MAX))]
    pub total: Option<u64>,
    /// Bytes per key, including the "bench/" prefix; the rest is the zero-padded key number.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(8..=KEY_SIZE_BYTES_MAX))]
    pub key_size_bytes: u64,
    /// Bytes per value (at most 1 MiB; etcd refuses requests above 1.5 MiB).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(0..=VALUE_SIZE_BYTES_MAX))]
    pub value_size_bytes: u64,
    /// Distinct keys, chosen uniformly; range, txn and mixed write each one before measuring.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=KEY_SPACE_MAX))]
    pub key_space: u64,
    /// Open loop: start this many operations per second in total, whatever the latency.
    /// Without it the run is closed-loop (each client sends as soon as its last reply came).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=RATE_PER_S_MAX))]
    pub rate_per_s: Option<u64>,
    /// Mixed workload: percentage of operations that are reads.
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub read_percent: u8,
    /// Watch workload: watchers on the key prefix, spread over the connections.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=WATCHERS_MAX as i64))]
    pub watchers: u32,
    /// How long one request may take before it counts as a timeout error, in milliseconds.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub request_timeout_ms: u64,
    /// Seed of the key choices, so two runs touch the same keys in the same order.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also draw the latency distribution and throughput over time as SVG to this file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// No progress bar (it is also hidden when stderr is not a terminal).
    #[arg(long)]
    pub quiet: bool,
    /// The CA that the members' certificates chain to (PEM), for https:// endpoints.
    #[arg(long)]
    pub cacert: Option<PathBuf>,
    /// A client certificate (PEM) to present, for members run with --client-cert-auth.
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// The private key of --cert (PEM).
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// NAME:PASSWORD to authenticate as once before the run; every request then carries the token.
    #[arg(long)]
    pub user: Option<String>,
}

/// The measurement length when neither --duration-s nor --total is given.
pub const DURATION_S_DEFAULT: u64 = 10;

impl Args {
    /// Checks what clap cannot check flag by flag: flags that bound each other.
    pub fn validate(&self) -> Result<(), String> {
        if self.endpoints.is_empty() {
            return Err("--endpoints: at least one endpoint is needed".into());
        }
        if self.endpoints.len() > ENDPOINTS_MAX {
            return Err(format!(
                "--endpoints: {} endpoints given, at most {ENDPOINTS_MAX} allowed",
                self.endpoints.len()
            ));
        }
        let https = self.endpoints.iter().filter(|url| url.starts_with("https://")).count();
        if https != 0 && https != self.endpoints.len() {
            return Err("--endpoints: all https:// or none".into());
        }
        if https != 0 && self.cacert.is_none() {
            return Err("--endpoints: https:// needs --cacert".into());
        }
        if https == 0 && (self.cacert.is_some() || self.cert.is_some()) {
            return Err("--cacert and --cert are for https:// endpoints".into());
        }
        if self.user.as_ref().is_some_and(|user| !user.contains(':')) {
            return Err("--user: expected NAME:PASSWORD".into());
        }
        let digits = digits(self.key_space - 1);
        let room = self.key_size_bytes - KEY_PREFIX.len() as u64;
        if room < digits {
            return Err(format!(
                "--key-size-bytes {}: keys of a key space of {} need at least {} bytes ({KEY_PREFIX:?} and {digits} digits)",
                self.key_size_bytes,
                self.key_space,
                KEY_PREFIX.len() as u64 + digits
            ));
        }
        if self.workload == Workload::Watch && self.value_size_bytes < STAMP_BYTES {
            return Err(format!(
                "--value-size-bytes {}: the watch workload's values carry an {STAMP_BYTES}-byte send time",
                self.value_size_bytes
            ));
        }
        if self.workload.needs_preload() {
            // The preload writes the whole key space; keep it within a bounded amount of data.
            let bytes = self.key_space * (self.key_size_bytes + self.value_size_bytes);
            if bytes > PRELOAD_BYTES_MAX {
                return Err(format!(
                    "--key-space {} with --value-size-bytes {}: the preload would write {bytes} bytes, at most {PRELOAD_BYTES_MAX} allowed",
                    self.key_space, self.value_size_bytes
                ));
            }
        }
        Ok(())
    }

    /// The measurement length, if the run is bounded by time.
    pub fn duration(&self) -> Option<Duration> {
        match (self.total, self.duration_s) {
            (Some(_), _) => None,
            (None, duration_s) => Some(Duration::from_secs(duration_s.unwrap_or(DURATION_S_DEFAULT))),
        }
    }

    /// The per-request time limit.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// The most bytes of keys and values the preload may write (1 GiB).
pub const PRELOAD_BYTES_MAX: u64 = 1 << 30;

/// Decimal digits needed to write `number`.
pub fn digits(number: u64) -> u64 {
    number.checked_ilog10().map_or(1, |log| u64::from(log) + 1)
}

/// Accepts `HOST:PORT` or `http://HOST:PORT`, returning the URL form tonic wants.
fn parse_endpoint(text: &str) -> Result<String, String> {
    let text = text.trim();
    let (scheme, rest) = match text.strip_prefix("https://") {
        Some(rest) => ("https", rest),
        None => ("http", text.strip_prefix("http://").unwrap_or(text)),
    };
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("{text:?}: expected HOST:PORT"))?;
    if host.is_empty() || host.contains('/') {
        return Err(format!("{text:?}: expected HOST:PORT"));
    }
    port.parse::<u16>()
        .map_err(|_| format!("{text:?}: {port:?} is not a port number"))?;
    Ok(format!("{scheme}://{rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        args: Args,
    }

    fn parse(line: &[&str]) -> Result<Args, String> {
        let mut argv = vec!["bench"];
        argv.extend_from_slice(line);
        let args = Command::try_parse_from(argv).map_err(|error| error.to_string())?.args;
        args.validate()?;
        Ok(args)
    }

    #[test]
    fn defaults_are_valid() {
        let args = parse(&["put"]).expect("defaults");
        assert_eq!(args.endpoints, ["http://127.0.0.1:2379"]);
        assert_eq!(args.duration(), Some(Duration::from_secs(DURATION_S_DEFAULT)));
        let args = parse(&["range", "--total", "5", "--endpoints", "http://a:1,b:2"]).expect("total");
        assert_eq!(args.duration(), None);
        assert_eq!(args.endpoints, ["http://a:1", "http://b:2"]);
    }

    #[test]
    fn bad_flags_are_refused() {
        for line in [
            &["put", "--clients", "0"][..],
            &["put", "--connections", "0"],
            &["put", "--value-size-bytes", "1048577"],
            &["put", "--key-space", "0"],
            &["put", "--duration-s", "1", "--total", "1"],
            &["put", "--endpoints", "nohost"],
            &["put", "--endpoints", "https://a:1"],
            &["put", "--endpoints", "https://a:1,http://b:2", "--cacert", "ca.pem"],
            &["put", "--endpoints", "a:1", "--cacert", "ca.pem"],
            &["put", "--cert", "c.pem"],
            &["put", "--user", "nopassword"],
            &["put", "--endpoints", "a:99999"],
            &["put", "--key-size-bytes", "8", "--key-space", "1000"],
            &["watch", "--value-size-bytes", "4"],
            &["range", "--key-space", "1000000", "--value-size-bytes", "1048576"],
            &["put", "--read-percent", "101"],
            &["nonsense"],
        ] {
            assert!(parse(line).is_err(), "{line:?} accepted");
        }
    }

    #[test]
    fn digits_counts() {
        assert_eq!(digits(0), 1);
        assert_eq!(digits(9), 1);
        assert_eq!(digits(10), 2);
        assert_eq!(digits(999_999), 6);
    }
}
