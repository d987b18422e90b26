//! Keys of a fixed width in a bounded key space, chosen by a seeded generator.
//!
//! Every key has the same length so that the key size flag means what it
//! says, and the keys sort in numeric order (zero-padded), so a prefix watch
//! or a range sees them in the order they were numbered. The choice of keys is
//! seeded per client: two runs with the same seed send the same keys, which is
//! what makes alternating runs of two systems comparable.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::args::KEY_PREFIX;

/// Builds key number `index` of a key space as `bench/000…index`, `width` bytes long.
#[derive(Clone, Debug)]
pub struct KeySpace {
    space: u64,
    width: usize,
}

impl KeySpace {
    /// A key space of `space` keys of `width` bytes each. `width` must leave room for the
    /// prefix and the digits of `space - 1` (the flags' validation checks this).
    pub fn new(space: u64, width: u64) -> KeySpace {
        KeySpace {
            space: space.max(1),
            width: usize::try_from(width).unwrap_or(usize::MAX),
        }
    }

    /// How many keys there are.
    pub fn len(&self) -> u64 {
        self.space
    }

    /// Whether the key space is empty (never: it holds at least one key).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Key number `index` (taken modulo the key space).
    pub fn key(&self, index: u64) -> Vec<u8> {
        let digits = self.width.saturating_sub(KEY_PREFIX.len());
        let number = index % self.space;
        format!("{KEY_PREFIX}{number:0digits$}").into_bytes()
    }

    /// A generator of uniformly chosen keys for client `client`, determined by `seed`.
    pub fn picker(&self, seed: u64, client: u64) -> KeyPicker {
        KeyPicker {
            keys: self.clone(),
            rng: SmallRng::seed_from_u64(seed ^ client.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        }
    }
}

/// One client's stream of keys.
#[derive(Debug)]
pub struct KeyPicker {
    keys: KeySpace,
    rng: SmallRng,
}

impl KeyPicker {
    /// The next key's number.
    pub fn next_index(&mut self) -> u64 {
        self.rng.random_range(0..self.keys.len())
    }

    /// The next key.
    pub fn next_key(&mut self) -> Vec<u8> {
        let index = self.next_index();
        self.keys.key(index)
    }

    /// A draw in `0..100`, for choosing between reads and writes.
    pub fn percent(&mut self) -> u8 {
        self.rng.random_range(0..100)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_fixed_width_and_sort_numerically() {
        let keys = KeySpace::new(1_000, 16);
        assert_eq!(keys.key(0), b"bench/0000000000");
        assert_eq!(keys.key(42), b"bench/0000000042");
        assert_eq!(keys.key(1_042), keys.key(42), "modulo the key space");
        let all: Vec<Vec<u8>> = (0..keys.len()).map(|index| keys.key(index)).collect();
        assert!(all.iter().all(|key| key.len() == 16));
        assert!(all.windows(2).all(|pair| pair[0] < pair[1]));
    }

    #[test]
    fn picks_stay_in_the_key_space_and_repeat_with_the_seed() {
        let keys = KeySpace::new(10, 8);
        let draw = |seed, client| {
            let mut picker = keys.picker(seed, client);
            (0..200).map(|_| picker.next_index()).collect::<Vec<_>>()
        };
        let first = draw(7, 0);
        assert!(first.iter().all(|index| *index < 10));
        assert_eq!(first, draw(7, 0));
        assert_ne!(first, draw(7, 1), "clients draw different keys");
        assert_ne!(first, draw(8, 0), "seeds draw different keys");
        // Uniform enough that every key comes up.
        for index in 0..10 {
            assert!(first.contains(&index));
        }
    }
}
