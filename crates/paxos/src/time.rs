//! Time as the host hands it in. The core never reads a clock.

use std::time::Duration;

/// A reading of the host's monotonic clock, in nanoseconds from an arbitrary origin.
/// Only differences between two readings of the same replica mean anything: no
/// two replicas' clocks are assumed to agree, only to run at rates within
/// [`crate::Config::clock_drift_max_ppm`] of each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Time(pub u64);

impl Time {
    /// The clock's origin.
    pub const ZERO: Time = Time(0);

    /// The reading `nanos` nanoseconds after the origin.
    pub fn from_nanos(nanos: u64) -> Time {
        Time(nanos)
    }

    /// Nanoseconds since the origin.
    pub fn as_nanos(self) -> u64 {
        self.0
    }

    /// Time elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Time) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl std::ops::Add<Duration> for Time {
    type Output = Time;

    /// Saturates rather than wraps: a far-future deadline stays in the future.
    fn add(self, duration: Duration) -> Time {
        Time(self.0.saturating_add(duration.as_nanos() as u64))
    }
}
