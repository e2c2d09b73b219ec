//! The claims read back at start, kept in one array sorted by key.
//!
//! A hub restarted with millions of live claims used to put every one into the hash map:
//! 40 bytes of entry in a table whose power-of-two size leaves a third of it empty at
//! 5 M claims (8 M buckets, about 330 MiB). Loaded claims do not change except to expire,
//! so they are kept here instead: exactly 40 bytes each, sorted once at start, found through
//! a directory on the keys' leading bits (the keys are digests, so they spread evenly:
//! a few entries per slot). New claims go to the map; a loaded claim that is claimed again,
//! erased or forgotten is marked dead in place (a tombstone), and the whole array is
//! dropped once none of it is alive. Its memory is not compacted before that: it was
//! allocated once, for claims that all expire within the longest dedup window.

use raccordo_core::DedupKey;

/// A loaded claim. `expires_at == DEAD` marks a claim that no longer counts.
#[derive(Debug, Clone, Copy)]
struct Entry {
    key: [u8; 16],
    event: [u8; 16],
    expires_at: i64,
}

const DEAD: i64 = i64::MIN;

impl Entry {
    /// The key's byte order as one integer (a compare, not a `memcmp` call).
    fn order(&self) -> u128 {
        u128::from_be_bytes(self.key)
    }
}

/// Claims collected while the segments' sidecars are read, in segment order.
#[derive(Debug, Default)]
pub struct ClaimLoader {
    entries: Vec<Entry>,
}

impl ClaimLoader {
    /// Room for `capacity` claims (the sidecars' heads give the count before they are read).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            entries: Vec::with_capacity(capacity),
        }
    }

    pub fn push(&mut self, key: DedupKey, event: u128, expires_at: i64) {
        self.entries.push(Entry {
            key: key.0,
            event: event.to_le_bytes(),
            expires_at,
        });
    }

    /// Sorts the claims by key and keeps one per key: the one that expires last. A key is
    /// claimed again only after its earlier claim expired, so the later claim is also the
    /// one with the later expiry; no order of loading needs to be remembered.
    pub fn finish(mut self) -> SortedClaims {
        // In place: a stable sort would allocate half the array again at the peak.
        self.entries.sort_unstable_by(|a, b| {
            a.order()
                .cmp(&b.order())
                .then_with(|| b.expires_at.cmp(&a.expires_at))
        });
        self.entries.dedup_by(|later, kept| later.key == kept.key);
        if self.entries.len() < self.entries.capacity() / 4 * 3 {
            self.entries.shrink_to_fit();
        }
        SortedClaims::new(self.entries)
    }
}

/// The loaded claims, sorted by key, with a directory of where each key prefix starts.
#[derive(Debug, Default)]
pub struct SortedClaims {
    entries: Vec<Entry>,
    /// `slots[p]` is the first entry whose key's leading `bits` bits are `p` or more.
    slots: Vec<u32>,
    bits: u32,
    live: usize,
}

/// Where a loaded claim sits, to restore it.
#[derive(Debug, Clone, Copy)]
pub struct Tombstone {
    at: usize,
    expires_at: i64,
}

impl SortedClaims {
    fn new(entries: Vec<Entry>) -> Self {
        // About four entries per slot: one or two cache lines to scan after the slot.
        let bits = (entries.len() / 4).max(1).ilog2().min(24);
        let mut slots = vec![0u32; (1usize << bits) + 1];
        let mut at = 0usize;
        for (prefix, slot) in slots.iter_mut().enumerate() {
            while at < entries.len() && (Self::prefix(&entries[at].key, bits) as usize) < prefix {
                at += 1;
            }
            *slot = at as u32;
        }
        let live = entries.len();
        Self {
            entries,
            slots,
            bits,
            live,
        }
    }

    fn prefix(key: &[u8; 16], bits: u32) -> u32 {
        if bits == 0 {
            return 0;
        }
        u32::from_be_bytes([key[0], key[1], key[2], key[3]]) >> (32 - bits)
    }

    /// Claims not yet dead (expired ones included until they are forgotten).
    pub fn live(&self) -> usize {
        self.live
    }

    /// Bytes held (entries and directory).
    #[cfg(test)]
    fn heap_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<Entry>() + self.slots.capacity() * 4
    }

    fn position(&self, key: &DedupKey) -> Option<usize> {
        if self.entries.is_empty() {
            return None;
        }
        let prefix = Self::prefix(&key.0, self.bits) as usize;
        let (from, to) = (self.slots[prefix] as usize, self.slots[prefix + 1] as usize);
        self.entries[from..to]
            .binary_search_by_key(&u128::from_be_bytes(key.0), Entry::order)
            .ok()
            .map(|i| from + i)
            .filter(|&at| self.entries[at].expires_at != DEAD)
    }

    /// The event holding `key` and until when, unless dead.
    pub fn get(&self, key: &DedupKey) -> Option<(u128, i64)> {
        self.position(key).map(|at| {
            let e = &self.entries[at];
            (u128::from_le_bytes(e.event), e.expires_at)
        })
    }

    /// Marks `key`'s claim dead if `kill` says so, given its event and expiry; returns what
    /// restores it.
    pub fn kill_if(
        &mut self,
        key: &DedupKey,
        kill: impl FnOnce(u128, i64) -> bool,
    ) -> Option<Tombstone> {
        let at = self.position(key)?;
        let e = &mut self.entries[at];
        if !kill(u128::from_le_bytes(e.event), e.expires_at) {
            return None;
        }
        let tombstone = Tombstone {
            at,
            expires_at: e.expires_at,
        };
        e.expires_at = DEAD;
        self.live -= 1;
        Some(tombstone)
    }

    /// Undoes a [`Self::kill_if`] made since the last [`Self::release_if_dead`].
    pub fn restore(&mut self, tombstone: Tombstone) {
        if let Some(e) = self.entries.get_mut(tombstone.at) {
            e.expires_at = tombstone.expires_at;
            self.live += 1;
        }
    }

    /// Gives the memory back once no claim is left alive. Only where no tombstone will be
    /// restored (after a commit): a restore needs the array.
    pub fn release_if_dead(&mut self) {
        if self.live == 0 && self.entries.capacity() > 0 {
            *self = Self::default();
        }
    }

    /// Every live claim: key, event, expiry.
    pub fn iter(&self) -> impl Iterator<Item = (DedupKey, u128, i64)> + '_ {
        self.entries
            .iter()
            .filter(|e| e.expires_at != DEAD)
            .map(|e| (DedupKey(e.key), u128::from_le_bytes(e.event), e.expires_at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn key(n: u64) -> DedupKey {
        // Spread like digests: the leading bytes vary.
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&n.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
        k[8..].copy_from_slice(&n.to_le_bytes());
        DedupKey(k)
    }

    #[test]
    fn an_entry_is_forty_bytes() {
        assert_eq!(std::mem::size_of::<Entry>(), 40);
    }

    #[test]
    fn the_later_claim_of_a_key_wins() {
        let mut loader = ClaimLoader::with_capacity(4);
        loader.push(key(1), 10, 100);
        loader.push(key(2), 20, 100);
        loader.push(key(1), 11, 300);
        let claims = loader.finish();
        assert_eq!(claims.live(), 2);
        assert_eq!(claims.get(&key(1)), Some((11, 300)));
        assert_eq!(claims.get(&key(2)), Some((20, 100)));
        assert_eq!(claims.get(&key(3)), None);
    }

    #[test]
    fn the_last_kill_gives_the_memory_back() {
        let mut loader = ClaimLoader::with_capacity(2);
        loader.push(key(1), 10, 100);
        loader.push(key(2), 20, 100);
        let mut claims = loader.finish();
        assert!(claims.kill_if(&key(1), |event, _| event == 99).is_none());
        let first = claims.kill_if(&key(1), |_, _| true).expect("live");
        assert_eq!(claims.get(&key(1)), None);
        claims.restore(first);
        assert_eq!(claims.get(&key(1)), Some((10, 100)));
        claims.kill_if(&key(1), |_, _| true);
        let last = claims.kill_if(&key(2), |_, _| true).expect("live");
        assert_eq!(claims.live(), 0);
        claims.restore(last);
        assert_eq!(
            claims.get(&key(2)),
            Some((20, 100)),
            "restored until released"
        );
        claims.kill_if(&key(2), |_, _| true);
        claims.release_if_dead();
        assert_eq!(claims.heap_bytes(), 0);
        assert_eq!(claims.get(&key(2)), None);
    }

    #[test]
    fn keys_alike_in_their_leading_bytes_are_found() {
        let mut loader = ClaimLoader::with_capacity(64);
        for n in 0..64u8 {
            let mut k = [0u8; 16];
            k[15] = n;
            loader.push(DedupKey(k), u128::from(n), 100);
        }
        let claims = loader.finish();
        for n in 0..64u8 {
            let mut k = [0u8; 16];
            k[15] = n;
            assert_eq!(claims.get(&DedupKey(k)), Some((u128::from(n), 100)));
        }
        assert_eq!(claims.get(&DedupKey([0xff; 16])), None);
    }

    proptest! {
        /// Loading then finding agrees with a map that keeps each key's latest claim.
        #[test]
        fn finds_what_a_map_would(
            claims in proptest::collection::vec((0u64..500, 0u128..1000, 1i64..1000), 0..800),
            absent in proptest::collection::vec(500u64..1000, 0..20),
        ) {
            let mut loader = ClaimLoader::with_capacity(claims.len());
            let mut model: HashMap<u64, (u128, i64)> = HashMap::new();
            for &(k, event, expires_at) in &claims {
                loader.push(key(k), event, expires_at);
                let entry = model.entry(k).or_insert((event, expires_at));
                if expires_at >= entry.1 {
                    *entry = (event, expires_at);
                }
            }
            let sorted = loader.finish();
            prop_assert_eq!(sorted.live(), model.len());
            for (&k, &(_, expires_at)) in &model {
                let found = sorted.get(&key(k));
                prop_assert_eq!(found.map(|f| f.1), Some(expires_at));
            }
            for k in absent {
                prop_assert_eq!(sorted.get(&key(k)), None);
            }
            prop_assert_eq!(sorted.iter().count(), model.len());
        }
    }
}
