//! An ordered map from key bytes to values, stored as sorted chunks.
//!
//! Why not `BTreeMap<Box<[u8]>, V>` directly: Rust's B-tree leaves nodes about
//! half full under ascending inserts, so a large `V` costs nearly twice its size
//! per key. Here each chunk is a sorted `Vec` whose capacity tracks its length
//! (growth in steps of [`CHUNK_GROWTH`]), so the slack is a few percent whatever
//! the insert order; a small `BTreeMap` from each chunk's first key finds the
//! chunk. Point operations cost one B-tree search plus a binary search and a
//! move of at most [`CHUNK_LENGTH_MAX`] elements.

use std::collections::BTreeMap;
use std::ops::Bound;

/// Elements per chunk before it splits.
const CHUNK_LENGTH_MAX: usize = 64;
/// Spare capacity added when a chunk is full.
const CHUNK_GROWTH: usize = 8;

type Chunk<V> = Vec<(KeyBytes, V)>;

/// Longest key stored inline in its element.
const INLINE_KEY_BYTES_MAX: usize = 22;

/// A key stored inline when short, so binary searches over a chunk compare
/// bytes in the element itself instead of chasing a pointer per probe. Inline
/// keys cost no separate allocation; the element is 8 bytes wider than a
/// `Box<[u8]>`, which the saved allocation (and its allocator header) repays.
#[derive(Clone)]
pub(crate) enum KeyBytes {
    Inline {
        length: u8,
        bytes: [u8; INLINE_KEY_BYTES_MAX],
    },
    Heap(Box<[u8]>),
}

impl KeyBytes {
    fn new(key: &[u8]) -> Self {
        if key.len() <= INLINE_KEY_BYTES_MAX {
            let mut bytes = [0u8; INLINE_KEY_BYTES_MAX];
            bytes[..key.len()].copy_from_slice(key);
            KeyBytes::Inline {
                length: key.len() as u8,
                bytes,
            }
        } else {
            KeyBytes::Heap(Box::from(key))
        }
    }
}

impl std::ops::Deref for KeyBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            KeyBytes::Inline { length, bytes } => &bytes[..usize::from(*length)],
            KeyBytes::Heap(bytes) => bytes,
        }
    }
}

/// See the module docs.
pub(crate) struct KeyIndex<V> {
    /// Chunks keyed by their first element's key; never empty chunks.
    chunks: BTreeMap<Box<[u8]>, Chunk<V>>,
    length: usize,
}

impl<V> Default for KeyIndex<V> {
    fn default() -> Self {
        KeyIndex {
            chunks: BTreeMap::new(),
            length: 0,
        }
    }
}

impl<V> KeyIndex<V> {
    pub(crate) fn len(&self) -> usize {
        self.length
    }

    /// The first key of the chunk that would hold `key`.
    fn chunk_key_for(&self, key: &[u8]) -> Option<&[u8]> {
        self.chunks
            .range::<[u8], _>((Bound::Unbounded, Bound::Included(key)))
            .next_back()
            .map(|(first, _)| &**first)
            .or_else(|| self.chunks.keys().next().map(|first| &**first))
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<&V> {
        let (_, chunk) = self
            .chunks
            .range::<[u8], _>((Bound::Unbounded, Bound::Included(key)))
            .next_back()?;
        let position = chunk.binary_search_by(|(k, _)| (**k).cmp(key)).ok()?;
        Some(&chunk[position].1)
    }

    pub(crate) fn get_mut(&mut self, key: &[u8]) -> Option<&mut V> {
        let (_, chunk) = self
            .chunks
            .range_mut::<[u8], _>((Bound::Unbounded, Bound::Included(key)))
            .next_back()?;
        let position = chunk.binary_search_by(|(k, _)| (**k).cmp(key)).ok()?;
        Some(&mut chunk[position].1)
    }

    /// Inserts a key that must not be present.
    pub(crate) fn insert(&mut self, key: &[u8], value: V) {
        self.length += 1;
        let element = (KeyBytes::new(key), value);
        // The chunk whose first key is at or below `key`; the common case
        // changes it in place without touching the chunk map.
        if let Some((_, chunk)) = self
            .chunks
            .range_mut::<[u8], _>((Bound::Unbounded, Bound::Included(key)))
            .next_back()
        {
            let position = match chunk.binary_search_by(|(k, _)| (**k).cmp(key)) {
                Ok(_) => panic!("insert of a key already present"),
                Err(position) => position,
            };
            assert!(position > 0, "a chunk's first key is at or below the key");
            if chunk.len() < CHUNK_LENGTH_MAX {
                if chunk.len() == chunk.capacity() {
                    chunk.reserve_exact(CHUNK_GROWTH);
                }
                chunk.insert(position, element);
                return;
            }
            // Full: split. Appending at the end starts a new chunk so ascending
            // inserts leave full chunks; otherwise split in halves.
            let right: Chunk<V> = if position == chunk.len() {
                let mut right = Vec::with_capacity(CHUNK_GROWTH);
                right.push(element);
                right
            } else {
                let split_at = chunk.len() / 2;
                let mut right = Vec::with_capacity(chunk.len() - split_at + CHUNK_GROWTH);
                right.extend(chunk.drain(split_at..));
                chunk.shrink_to(chunk.len() + CHUNK_GROWTH);
                if position < split_at {
                    chunk.insert(position, element);
                } else {
                    right.insert(position - split_at, element);
                }
                right
            };
            self.chunks.insert(Box::from(&*right[0].0), right);
            return;
        }
        // Below every chunk's first key (or no chunk at all): becomes the first
        // element of the first chunk, which is re-keyed.
        match self.chunks.pop_first() {
            Some((_, mut chunk)) if chunk.len() < CHUNK_LENGTH_MAX => {
                if chunk.len() == chunk.capacity() {
                    chunk.reserve_exact(CHUNK_GROWTH);
                }
                chunk.insert(0, element);
                self.chunks.insert(Box::from(&*chunk[0].0), chunk);
            }
            Some((first, chunk)) => {
                self.chunks.insert(first, chunk);
                let mut new_chunk = Vec::with_capacity(CHUNK_GROWTH);
                new_chunk.push(element);
                self.chunks.insert(Box::from(&*new_chunk[0].0), new_chunk);
            }
            None => {
                let mut chunk = Vec::with_capacity(CHUNK_GROWTH);
                chunk.push(element);
                self.chunks.insert(Box::from(&*chunk[0].0), chunk);
            }
        }
    }

    /// Keeps only the elements for which `keep` returns true.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&[u8], &mut V) -> bool) {
        let chunks = std::mem::take(&mut self.chunks);
        self.length = 0;
        let mut carry: Option<Chunk<V>> = None;
        for (_, mut chunk) in chunks {
            chunk.retain_mut(|(key, value)| keep(key, value));
            if chunk.is_empty() {
                continue;
            }
            // Merge small neighbours so repeated compactions do not leave
            // many nearly empty chunks.
            if let Some(mut previous) = carry.take() {
                if previous.len() + chunk.len() <= CHUNK_LENGTH_MAX {
                    previous.reserve_exact(chunk.len());
                    previous.append(&mut chunk);
                    carry = Some(previous);
                    continue;
                }
                self.push_chunk(previous);
            }
            carry = Some(chunk);
        }
        if let Some(previous) = carry {
            self.push_chunk(previous);
        }
    }

    fn push_chunk(&mut self, mut chunk: Chunk<V>) {
        debug_assert!(!chunk.is_empty());
        chunk.shrink_to(chunk.len() + CHUNK_GROWTH);
        self.length += chunk.len();
        self.chunks.insert(Box::from(&*chunk[0].0), chunk);
    }

    /// Elements with `start <= key < end` (`end = None`: no upper bound), in key order.
    pub(crate) fn range<'a>(
        &'a self,
        start: &'a [u8],
        end: Option<&'a [u8]>,
    ) -> impl Iterator<Item = (&'a [u8], &'a V)> + 'a {
        let first_chunk: Option<&[u8]> = self.chunk_key_for(start);
        let chunks = first_chunk.map(|first| self.chunks.range::<[u8], _>((Bound::Included(first), Bound::Unbounded)));
        chunks
            .into_iter()
            .flatten()
            .flat_map(|(_, chunk)| chunk.iter())
            .map(|(key, value)| (&**key, value))
            .skip_while(move |(key, _)| *key < start)
            .take_while(move |(key, _)| end.is_none_or(|end| *key < end))
    }

    /// All elements in key order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8], &V)> {
        self.chunks
            .values()
            .flat_map(|chunk| chunk.iter())
            .map(|(key, value)| (&**key, value))
    }

    /// Builds from elements in strictly ascending key order with full chunks.
    pub(crate) fn from_sorted<'a>(elements: impl IntoIterator<Item = (&'a [u8], V)>) -> Self {
        let mut index = KeyIndex::default();
        let mut chunk: Chunk<V> = Vec::with_capacity(CHUNK_LENGTH_MAX);
        for (key, value) in elements {
            debug_assert!(chunk.last().is_none_or(|(last, _)| **last < *key));
            chunk.push((KeyBytes::new(key), value));
            if chunk.len() == CHUNK_LENGTH_MAX {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK_LENGTH_MAX));
                index.push_chunk(full);
            }
        }
        if !chunk.is_empty() {
            index.push_chunk(chunk);
        }
        index
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn behaves_like_a_btreemap(
            operations in proptest::collection::vec((0u16..400, any::<bool>()), 0..600),
            start in 0u16..400,
            end in 0u16..400,
        ) {
            let mut index = KeyIndex::default();
            let mut model = std::collections::BTreeMap::new();
            for (key, keep) in operations {
                // Every third key is long enough to live on the heap.
                let key = if key % 3 == 0 {
                    [&[0x01u8; 30][..], &key.to_be_bytes()].concat()
                } else {
                    key.to_be_bytes().to_vec()
                };
                if !model.contains_key(&key) {
                    index.insert(&key, u32::from(keep));
                    model.insert(key.clone(), u32::from(keep));
                }
                if keep {
                    *index.get_mut(&key).unwrap() += 2;
                    *model.get_mut(&key).unwrap() += 2;
                }
            }
            let all: Vec<_> = index.iter().map(|(k, v)| (k.to_vec(), *v)).collect();
            let expected: Vec<_> = model.iter().map(|(k, v)| (k.clone(), *v)).collect();
            prop_assert_eq!(&all, &expected);
            let (start, end) = (start.to_be_bytes(), end.to_be_bytes());
            let ranged: Vec<_> = index.range(&start, Some(&end)).map(|(k, v)| (k.to_vec(), *v)).collect();
            let expected: Vec<_> = model
                .iter()
                .filter(|(k, _)| k.as_slice() >= &start[..] && k.as_slice() < &end[..])
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            prop_assert_eq!(ranged, expected);
            index.retain(|_, v| *v % 2 == 1);
            model.retain(|_, v| *v % 2 == 1);
            prop_assert_eq!(index.len(), model.len());
            for (key, value) in &model {
                prop_assert_eq!(index.get(key), Some(value));
            }
            let all: Vec<_> = index.iter().map(|(k, v)| (k.to_vec(), *v)).collect();
            let rebuilt = KeyIndex::from_sorted(all.iter().map(|(k, v)| (k.as_slice(), *v)));
            prop_assert_eq!(rebuilt.iter().count(), model.len());
        }
    }
}
