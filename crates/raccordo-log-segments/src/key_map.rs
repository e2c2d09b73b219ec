//! A hash map of dedup keys that never grows all at once.
//!
//! A single hash table doubles when it fills: at 7 million claims that is one allocation of
//! about 650 MiB and a rehash of every entry, on the writer thread, in the middle of a
//! commit — measured as a 1.4 s stall of every acknowledgement (`benches/longrun.sh`). Split
//! into [`SHARDS`] tables chosen by a byte of the key the tables do not hash on, each one
//! grows on its own, at its own moment: the longest pause is 1/256 of the whole table's,
//! and the peak memory of a resize is one table's old and new copy, not the whole map twice.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use raccordo_core::DedupKey;

/// Dedup keys are SHA-256 digests (truncated): already uniform, so their first eight bytes
/// are the hash. Several times cheaper than hashing them again with SipHash, and no one
/// can aim collisions at digests they cannot invert.
#[derive(Default, Clone, Copy)]
pub struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // A `[u8; 16]` hashes as its length, then its bytes: keep the first 8 bytes of data.
        if bytes.len() >= 8 {
            self.0 = u64::from_le_bytes(bytes[..8].try_into().unwrap_or([0; 8]));
        }
    }
    fn write_usize(&mut self, _len: usize) {}
}

type Shard<V> = HashMap<DedupKey, V, std::hash::BuildHasherDefault<DigestHasher>>;

/// Tables per map: enough that one table's resize stays in milliseconds at hundreds of
/// millions of keys, few enough that an empty map costs nothing worth counting (12 KiB).
pub const SHARDS: usize = 256;

/// Which table holds `key`: its last byte, which the tables' hash (the first eight bytes)
/// does not use, so keys stay spread within each table.
fn shard_of(key: &DedupKey) -> usize {
    usize::from(key.0[15])
}

pub struct KeyMap<V> {
    shards: Box<[Shard<V>]>,
    len: usize,
}

impl<V> Default for KeyMap<V> {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl<V> KeyMap<V> {
    /// Room for about `capacity` keys before any table grows.
    pub fn with_capacity(capacity: usize) -> Self {
        // A little over the even share, since keys do not split exactly evenly.
        let per_shard = match capacity {
            0 => 0,
            n => n / SHARDS + n / SHARDS / 16 + 16,
        };
        Self {
            shards: (0..SHARDS)
                .map(|_| Shard::with_capacity_and_hasher(per_shard, Default::default()))
                .collect(),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn get(&self, key: &DedupKey) -> Option<&V> {
        self.shards[shard_of(key)].get(key)
    }

    /// Sets `key`'s value; the one it replaces, if any.
    pub fn insert(&mut self, key: DedupKey, value: V) -> Option<V> {
        match self.shards[shard_of(&key)].entry(key) {
            Entry::Occupied(mut e) => Some(e.insert(value)),
            Entry::Vacant(e) => {
                e.insert(value);
                self.len += 1;
                None
            }
        }
    }

    pub fn remove(&mut self, key: &DedupKey) -> Option<V> {
        let removed = self.shards[shard_of(key)].remove(key);
        self.len -= usize::from(removed.is_some());
        removed
    }

    pub fn iter(&self) -> impl Iterator<Item = (&DedupKey, &V)> {
        self.shards.iter().flat_map(|s| s.iter())
    }

    /// The number of entries the largest table holds room for (for tests of the spread).
    #[cfg(test)]
    fn largest_capacity(&self) -> usize {
        self.shards.iter().map(Shard::capacity).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    fn key(n: u64) -> DedupKey {
        // Uniform bytes, like the digests dedup keys are.
        let mut k = [0u8; 16];
        let a = n.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17) ^ n;
        let b = a.wrapping_mul(0xBF58_476D_1CE4_E5B9) ^ (a >> 31);
        k[..8].copy_from_slice(&a.to_le_bytes());
        k[8..].copy_from_slice(&b.to_le_bytes());
        DedupKey(k)
    }

    #[test]
    fn the_digest_hasher_keeps_the_first_eight_bytes() {
        let build = std::hash::BuildHasherDefault::<DigestHasher>::default();
        let a = build.hash_one(DedupKey([1; 16]));
        let b = build.hash_one(DedupKey([2; 16]));
        assert_ne!(a, b);
        assert_eq!(a, u64::from_le_bytes([1; 8]));
    }

    #[test]
    fn it_behaves_like_one_map() {
        let mut sharded = KeyMap::default();
        let mut plain = std::collections::HashMap::new();
        for n in 0..20_000u64 {
            let k = key(n % 7_000);
            match n % 5 {
                0 => assert_eq!(sharded.remove(&k), plain.remove(&k)),
                _ => assert_eq!(sharded.insert(k, n), plain.insert(k, n)),
            }
            assert_eq!(sharded.len(), plain.len());
        }
        for n in 0..7_000u64 {
            assert_eq!(sharded.get(&key(n)), plain.get(&key(n)));
        }
        let mut listed: Vec<_> = sharded.iter().map(|(k, v)| (k.0, *v)).collect();
        let mut expected: Vec<_> = plain.iter().map(|(k, v)| (k.0, *v)).collect();
        listed.sort_unstable();
        expected.sort_unstable();
        assert_eq!(listed, expected);
    }

    #[test]
    fn no_table_holds_much_more_than_its_share() {
        let n = 200_000;
        let mut map = KeyMap::default();
        for i in 0..n as u64 {
            map.insert(key(i), ());
        }
        // A table's capacity is a power of two's 7/8; the even share is n / SHARDS (781):
        // every table grew to the same size, none to the one above.
        let share = n / SHARDS;
        assert!(
            map.largest_capacity() < 4 * share,
            "largest table {} for an even share of {share}",
            map.largest_capacity()
        );
    }

    #[test]
    fn a_map_made_with_room_does_not_grow_while_filled_to_it() {
        let n = 100_000;
        let mut map = KeyMap::with_capacity(n);
        let before = map.largest_capacity();
        for i in 0..n as u64 {
            map.insert(key(i), 0u8);
        }
        assert_eq!(map.largest_capacity(), before);
    }
}
