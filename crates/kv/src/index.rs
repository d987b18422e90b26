//! An ordered map from key bytes to values, stored as sorted chunks.
//!
//! Why not `BTreeMap<Box<[u8]>, V>` directly: Rust's B-tree leaves nodes about
//! half full under ascending inserts, so a large `V` costs nearly twice its size
//! per key. Here each chunk is a sorted `Vec` whose capacity tracks its length
//! (growth in steps of [`CHUNK_GROWTH`]), so the slack is a few percent whatever
//! the insert order; a small `BTreeMap` from each chunk's first key finds the
//! chunk. Point operations cost one B-tree search plus a binary search and a
//! move of at most [`CHUNK_LENGTH_MAX`] elements.
//!
//! Each chunk sits behind an [`Arc`] and is changed through
//! [`Arc::make_mut`], so cloning the index copies only the chunk directory
//! (one pointer and one first key per chunk, about `len / 48` of them) and
//! shares every chunk; a later write to either copy duplicates just the chunk
//! it touches. This is what lets the store be frozen for a snapshot while
//! writes go on.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

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
    chunks: BTreeMap<Box<[u8]>, Arc<Chunk<V>>>,
    length: usize,
}

/// Shares every chunk with the original (see the module docs).
impl<V> Clone for KeyIndex<V> {
    fn clone(&self) -> Self {
        KeyIndex {
            chunks: self.chunks.clone(),
            length: self.length,
        }
    }
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
}

impl<V: Clone> KeyIndex<V> {
    /// The value of `key`, for changing it; copies its chunk first if a clone
    /// of the index shares it.
    pub(crate) fn get_mut(&mut self, key: &[u8]) -> Option<&mut V> {
        let (_, chunk) = self
            .chunks
            .range_mut::<[u8], _>((Bound::Unbounded, Bound::Included(key)))
            .next_back()?;
        let position = chunk.binary_search_by(|(k, _)| (**k).cmp(key)).ok()?;
        Some(&mut Arc::make_mut(chunk)[position].1)
    }

    /// Inserts a key that must not be present.
    pub(crate) fn insert(&mut self, key: &[u8], value: V) {
        self.length += 1;
        let element = (KeyBytes::new(key), value);
        // The chunk whose first key is at or below `key`; the common case
        // changes it in place without touching the chunk map.
        if let Some((_, shared)) = self
            .chunks
            .range_mut::<[u8], _>((Bound::Unbounded, Bound::Included(key)))
            .next_back()
        {
            let position = match shared.binary_search_by(|(k, _)| (**k).cmp(key)) {
                Ok(_) => panic!("insert of a key already present"),
                Err(position) => position,
            };
            assert!(position > 0, "a chunk's first key is at or below the key");
            let chunk = Arc::make_mut(shared);
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
            self.chunks.insert(Box::from(&*right[0].0), Arc::new(right));
            return;
        }
        // Below every chunk's first key (or no chunk at all): becomes the first
        // element of the first chunk, which is re-keyed.
        match self.chunks.pop_first() {
            Some((_, mut shared)) if shared.len() < CHUNK_LENGTH_MAX => {
                let chunk = Arc::make_mut(&mut shared);
                if chunk.len() == chunk.capacity() {
                    chunk.reserve_exact(CHUNK_GROWTH);
                }
                chunk.insert(0, element);
                self.chunks.insert(Box::from(&*chunk[0].0), shared);
            }
            Some((first, chunk)) => {
                self.chunks.insert(first, chunk);
                let mut new_chunk = Vec::with_capacity(CHUNK_GROWTH);
                new_chunk.push(element);
                self.chunks.insert(Box::from(&*new_chunk[0].0), Arc::new(new_chunk));
            }
            None => {
                let mut chunk = Vec::with_capacity(CHUNK_GROWTH);
                chunk.push(element);
                self.chunks.insert(Box::from(&*chunk[0].0), Arc::new(chunk));
            }
        }
    }

    /// Visits the elements with `start <= key`, in key order, at most
    /// `keys_max` of them (at least 1), and keeps only those visited for which
    /// `keep` returns true. Returns the key of the first element not visited,
    /// or `None` once the end of the index was reached. Costs time in
    /// proportion to `keys_max`, not to the index. Only the chunks holding a
    /// visited element for which `affected` returns true are rewritten (`keep`
    /// sees every visited element of those, and no other): the rest stay as
    /// they are, shared with any clone of the index.
    pub(crate) fn retain_from(
        &mut self,
        start: &[u8],
        keys_max: usize,
        affected: impl Fn(&[u8], &V) -> bool,
        mut keep: impl FnMut(&[u8], &mut V) -> bool,
    ) -> Option<Box<[u8]>> {
        assert!(keys_max > 0, "a step visits at least one key");
        // First decide which chunks to rewrite, and which of their elements
        // were visited, without changing anything.
        let mut plan: Vec<(Box<[u8]>, std::ops::Range<usize>)> = Vec::new();
        let mut budget = keys_max;
        let mut next: Option<Box<[u8]>> = None;
        let chunks = self
            .chunk_key_for(start)
            .map(|first| self.chunks.range::<[u8], _>((Bound::Included(first), Bound::Unbounded)));
        for (first, chunk) in chunks.into_iter().flatten() {
            let low = chunk.partition_point(|(key, _)| **key < *start);
            if low == chunk.len() {
                continue;
            }
            if budget == 0 {
                next = Some(Box::from(&*chunk[low].0));
                break;
            }
            let high = low.saturating_add(budget).min(chunk.len());
            budget -= high - low;
            if chunk[low..high].iter().any(|(key, value)| affected(key, value)) {
                plan.push((first.clone(), low..high));
            }
            if high < chunk.len() {
                next = Some(Box::from(&*chunk[high].0));
                break;
            }
        }
        for (first, visited) in plan {
            let mut chunk = self.chunks.remove(&first).expect("a planned chunk is filed");
            let owned = Arc::make_mut(&mut chunk);
            let before = owned.len();
            let mut position = 0;
            owned.retain_mut(|(key, value)| {
                let inside = visited.contains(&position);
                position += 1;
                !inside || keep(key, value)
            });
            self.length -= before - owned.len();
            if owned.is_empty() {
                continue;
            }
            // Merge into the chunk below when both fit in one, so repeated
            // compactions do not leave many nearly empty chunks.
            let below = self
                .chunks
                .range_mut::<[u8], _>((Bound::Unbounded, Bound::Excluded(&*owned[0].0)))
                .next_back();
            if let Some((_, below)) = below.filter(|(_, below)| below.len() + owned.len() <= CHUNK_LENGTH_MAX) {
                let merged = Arc::make_mut(below);
                merged.reserve_exact(owned.len());
                merged.append(owned);
                continue;
            }
            owned.shrink_to(owned.len() + CHUNK_GROWTH);
            let first = if *owned[0].0 == *first {
                first
            } else {
                Box::from(&*owned[0].0)
            };
            self.chunks.insert(first, chunk);
        }
        next
    }

    /// Appends a chunk above every other. `unchanged_first`: the key it was
    /// filed under, if it is the same chunk as before; otherwise it was just
    /// built or rewritten, and its spare capacity is trimmed.
    fn push_chunk(&mut self, mut chunk: Arc<Chunk<V>>, unchanged_first: Option<Box<[u8]>>) {
        debug_assert!(!chunk.is_empty());
        self.length += chunk.len();
        let first = match unchanged_first {
            Some(first) => first,
            None => {
                if let Some(owned) = Arc::get_mut(&mut chunk) {
                    owned.shrink_to(owned.len() + CHUNK_GROWTH);
                }
                Box::from(&*chunk[0].0)
            }
        };
        self.chunks.insert(first, chunk);
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
                index.push_chunk(Arc::new(full), None);
            }
        }
        if !chunk.is_empty() {
            index.push_chunk(Arc::new(chunk), None);
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
            step in 1usize..200,
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
            // Only chunks holding an even value are rewritten; the others must
            // come through untouched.
            // In steps of a few keys, as a compaction goes.
            let mut cursor: Option<Box<[u8]>> = Some(Box::from(&[][..]));
            while let Some(start) = cursor {
                cursor = index.retain_from(&start, step, |_, v| *v % 2 == 0, |_, v| *v % 2 == 1);
            }
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

    /// Chunks of `index` that `other` shares (the same allocation).
    fn shared_chunks<V>(index: &KeyIndex<V>, other: &KeyIndex<V>) -> usize {
        index
            .chunks
            .values()
            .filter(|chunk| other.chunks.values().any(|theirs| Arc::ptr_eq(chunk, theirs)))
            .count()
    }

    fn contents(index: &KeyIndex<u32>) -> Vec<(Vec<u8>, u32)> {
        index.iter().map(|(k, v)| (k.to_vec(), *v)).collect()
    }

    #[test]
    fn a_clone_shares_chunks_and_a_write_copies_only_the_one_it_touches() {
        let keys: Vec<[u8; 4]> = (0u32..1_000).map(|key| (key * 2).to_be_bytes()).collect();
        let mut index = KeyIndex::from_sorted(keys.iter().map(|key| (&key[..], 0u32)));
        let chunk_count = index.chunks.len();
        assert!(chunk_count > 10);
        let frozen = index.clone();
        let before = contents(&frozen);
        assert_eq!(shared_chunks(&index, &frozen), chunk_count);

        // An update copies the chunk it changes; so does an insert into a
        // full chunk (which splits it).
        *index.get_mut(&keys[500]).unwrap() = 7;
        assert_eq!(shared_chunks(&index, &frozen), chunk_count - 1);
        index.insert(&201u32.to_be_bytes(), 1);
        assert_eq!(shared_chunks(&index, &frozen), chunk_count - 2);
        // Below every key, with the first chunk full: a new chunk, no copy.
        index.insert(&[0], 1);
        assert_eq!(shared_chunks(&index, &frozen), chunk_count - 2);
        // A lookup of a missing key copies nothing.
        assert!(index.get_mut(&3u32.to_be_bytes()).is_none());
        assert_eq!(shared_chunks(&index, &frozen), chunk_count - 2);

        // A retain that drops one key rewrites its chunk only (its neighbours
        // are too full to merge with).
        let target = keys[900];
        assert!(index
            .retain_from(&[], usize::MAX, |key, _| key == target, |key, _| key != target)
            .is_none());
        assert_eq!(shared_chunks(&index, &frozen), chunk_count - 3);
        assert!(index.get(&target).is_none());

        assert_eq!(contents(&frozen), before);
        assert_eq!(frozen.len(), keys.len());
        assert_eq!(index.len(), keys.len() + 1);
        assert_eq!(index.get(&keys[500]), Some(&7));
        assert_eq!(frozen.get(&keys[500]), Some(&0));
    }

    proptest! {
        #[test]
        fn a_clone_keeps_its_contents_whatever_the_original_does(
            initial in proptest::collection::btree_set(0u16..600, 0..400),
            operations in proptest::collection::vec((0u16..600, 0u8..3), 0..300),
        ) {
            let keys: Vec<[u8; 2]> = initial.iter().map(|key| key.to_be_bytes()).collect();
            let mut index = KeyIndex::from_sorted(keys.iter().map(|key| (&key[..], 0u32)));
            let mut model: std::collections::BTreeMap<Vec<u8>, u32> =
                keys.iter().map(|key| (key.to_vec(), 0)).collect();
            let frozen = index.clone();
            let before = contents(&frozen);
            for (key, operation) in operations {
                let key = key.to_be_bytes();
                match operation {
                    0 if !model.contains_key(&key[..]) => {
                        index.insert(&key, 1);
                        model.insert(key.to_vec(), 1);
                    }
                    1 => {
                        if let Some(value) = index.get_mut(&key) {
                            *value += 1;
                            *model.get_mut(&key[..]).unwrap() += 1;
                        }
                    }
                    _ => {
                        // A step that starts at the key and visits just it.
                        index.retain_from(&key, 1, |k, _| k == key, |k, _| k != key);
                        model.remove(&key[..]);
                    }
                }
            }
            prop_assert_eq!(contents(&frozen), before);
            let expected: Vec<_> = model.into_iter().collect();
            prop_assert_eq!(contents(&index), expected);
        }
    }
}
