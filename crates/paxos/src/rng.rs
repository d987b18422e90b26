//! SplitMix64 (Steele, Lea, Flood, "Fast splittable pseudorandom number
//! generators", 2014): the seeded generator behind every random draw the core
//! makes, so a replica's choices replay exactly from its seed.

use std::time::Duration;

/// The golden-ratio increment SplitMix64 adds to its state before each output.
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// A small, fast, seeded pseudorandom generator (SplitMix64).
///
/// Not cryptographic: it is for back-off jitter and test cases that must replay
/// from a seed. The same seed always gives the same sequence, on every platform.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose whole state is `seed`; any value, zero included, is a
    /// good seed.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    /// The next output: advances the state by the golden gamma and returns the
    /// state put through the finalizer.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        finalize(self.state)
    }

    /// A duration in `[0, max)`, zero if `max` is zero. Taken modulo `max` in
    /// nanoseconds, so slightly biased towards short durations; that is harmless
    /// for jitter, where only the spread matters.
    pub fn duration_below(&mut self, max: Duration) -> Duration {
        let nanos = max.as_nanos() as u64;
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.next_u64() % nanos)
    }
}

/// Hashes one value to a well-spread one: the first output of a generator seeded
/// with `value`, that is `SplitMix64::new(value).next_u64()`.
pub fn mix64(value: u64) -> u64 {
    finalize(value.wrapping_add(GOLDEN_GAMMA))
}

/// SplitMix64's output function (a variant of MurmurHash3's 64-bit finalizer).
fn finalize(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_outputs_for_a_seed_are_pinned() {
        // Changing these changes every replica's back-off draws, hence every
        // simulator seed's outcome.
        let mut random = SplitMix64::new(0);
        assert_eq!(random.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(random.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(random.next_u64(), 0x06C4_5D18_8009_454F);
        let mut random = SplitMix64::new(1234567);
        assert_eq!(random.next_u64(), 6457827717110365317);
        assert_eq!(random.next_u64(), 3203168211198807973);
    }

    #[test]
    fn mix64_is_the_first_output_of_its_seed() {
        for value in [0, 1, 42, u64::MAX, GOLDEN_GAMMA.wrapping_neg()] {
            assert_eq!(mix64(value), SplitMix64::new(value).next_u64());
        }
    }

    #[test]
    fn duration_below_stays_below() {
        let mut random = SplitMix64::new(7);
        assert_eq!(random.duration_below(Duration::ZERO), Duration::ZERO);
        for _ in 0..1_000 {
            assert!(random.duration_below(Duration::from_millis(3)) < Duration::from_millis(3));
        }
    }
}
